#!/usr/bin/env python3
"""What bounds each gradcomp kernel, from Nsight Compute's CSV (tools/gpu-check.sh, step profile).

  tools/ncu_limits.py --out profile.json [--skip KERNEL] LABEL=ncu.csv [LABEL=ncu.csv ...]
  tools/ncu_limits.py --out profile.json --unavailable "why"

Each CSV is `ncu --csv --page details --section SpeedOfLight --section Occupancy
--section LaunchStats --section SchedulerStats` of one gradcomp_kernels_perf
--once --only KIND run, so every kernel in it belongs to LABEL. Per kernel
launch it keeps: duration, DRAM and memory throughput and the SM's (% of
peak), the share of cycles in which the scheduler issued an instruction
("One or More Eligible"), achieved occupancy and registers, and names the
limiter with Nsight Compute's own rule of thumb for its Speed Of Light
section:
  memory   DRAM or memory throughput >= 60% of peak, and not below the SM's;
  issue    SM throughput or issued cycles >= 60% (the pipes or the scheduler
           are the bound: fewer or cheaper instructions help);
  latency  neither: warps wait (memory latency, dependencies, too few warps).
Writes {"unavailable_reason": ..., "kernels": [...]} and prints a table.
"""
import argparse
import csv
import io
import json
import sys

# (key, Nsight Compute's metric name in the details page, unit conversion)
METRICS = {
    "Duration": "duration_us",
    "DRAM Throughput": "dram_pct",
    "Memory Throughput": "memory_pct",
    "Compute (SM) Throughput": "sm_pct",
    "One or More Eligible": "issue_pct",
    "Achieved Occupancy": "occupancy_pct",
    "Registers Per Thread": "registers",
}
TIME_UNITS = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3,
              "second": 1e6, "s": 1e6}


def number(text):
    try:
        return float(text.replace(",", ""))
    except (AttributeError, ValueError):
        return None


def short_name(name):
    """The kernel's function name: ncu runs with --print-kernel-base function, but a
    demangled name (namespaces, template arguments, parameters) is cut down too."""
    base = name.replace("(anonymous namespace)::", "").split("(")[0].strip()
    cut = base.split("<")[0].rfind("::")
    base = base[cut + 2:] if cut >= 0 else base
    return base.split(" ")[-1] if "<" not in base else base


def limiter(k):
    mem = max(v for v in (k.get("dram_pct"), k.get("memory_pct"), 0.0) if v is not None)
    sm = k.get("sm_pct") or 0.0
    issue = k.get("issue_pct") or 0.0
    if mem >= 60 and mem >= sm:
        return "memory"
    if sm >= 60 or issue >= 60:
        return "issue"
    return "latency"


def parse(text, label):
    """Kernel launches of one ncu --csv --page details output, in launch order."""
    lines = text.splitlines()
    # ncu may print ==PROF== lines before the table: start at its header.
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        raise ValueError("no ncu CSV table (a line starting with \"ID\") in the %s output" % label)
    # Only the table's quoted rows: ncu (or the profiled program) may print ==PROF==/==WARNING==
    # lines or other text after it.
    rows = csv.DictReader(io.StringIO("\n".join(
        l for i, l in enumerate(lines[start:]) if i == 0 or l.startswith('"'))))
    need = {"ID", "Kernel Name", "Metric Name", "Metric Unit", "Metric Value"}
    if not need.issubset(rows.fieldnames or []):
        raise ValueError("ncu CSV of %s lacks columns %s" % (label, sorted(need - set(rows.fieldnames))))
    kernels = {}
    for r in rows:
        if any(r.get(f) is None for f in need):
            continue  # a row cut short (a killed ncu): not a measurement
        k = kernels.setdefault(r["ID"], {"kernel": short_name(r["Kernel Name"]), "launch": label})
        key = METRICS.get(r["Metric Name"].strip())
        if key is None or key in k:
            continue
        v = number(r["Metric Value"])
        if v is not None and key == "duration_us":
            v *= TIME_UNITS.get(r["Metric Unit"].strip(), float("nan"))
        if v is not None and key == "registers":
            v = int(v)
        k[key] = v
    out = []
    for _, k in sorted(kernels.items(), key=lambda kv: int(number(kv[0]) or 0)):
        k["limiter"] = limiter(k)
        out.append(k)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--unavailable", help="why nothing was profiled")
    ap.add_argument("--skip", action="append", default=[],
                    help="a kernel that is not gradcomp's (the benchmark's data fill)")
    ap.add_argument("runs", nargs="*", help="LABEL=ncu.csv")
    a = ap.parse_args()
    doc = {"unavailable_reason": a.unavailable, "kernels": [] if not a.unavailable else None}
    errors = []
    for run in a.runs if not a.unavailable else []:
        label, _, path = run.partition("=")
        try:
            with open(path) as f:
                doc["kernels"] += [k for k in parse(f.read(), label) if k["kernel"] not in a.skip]
        except (OSError, ValueError) as e:
            errors.append(str(e))
    if errors:
        doc["errors"] = errors
    if doc["kernels"] == [] and not a.unavailable:
        doc["kernels"] = None
        doc["unavailable_reason"] = "; ".join(errors) or "no kernel in the profiles"
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    if doc["kernels"]:
        print("%-34s %-28s %9s %6s %6s %6s %6s %6s %4s  %s" % (
            "kernel", "launch", "us", "DRAM%", "mem%", "SM%", "issue%", "occ%", "regs", "limiter"))
        f = lambda v: "-" if v is None else "%.1f" % v  # noqa: E731
        for k in doc["kernels"]:
            print("%-34s %-28s %9s %6s %6s %6s %6s %6s %4s  %s" % (
                k["kernel"][:34], k["launch"][:28], f(k.get("duration_us")), f(k.get("dram_pct")),
                f(k.get("memory_pct")), f(k.get("sm_pct")), f(k.get("issue_pct")),
                f(k.get("occupancy_pct")), k.get("registers", "-"), k["limiter"]))
    else:
        print("not profiled: %s" % doc["unavailable_reason"])
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
