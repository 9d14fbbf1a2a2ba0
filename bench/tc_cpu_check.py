#!/usr/bin/env python3
"""CTest check of tools/tc_link.sh --cpu: a tiny run over shaped namespaces.

Two ranks of gradcomp_perf --backend socket, each in its own network
namespace behind a tbf-shaped veth at 1 Gb/s, 1 MB, one timed call; then the
structure of tc_link.json: one run per method with the measured and modeled
times, their ratios, the link rate python sockets measured, the ranks' results
identical and exact within bounds, and none of the GPU report's keys (these are
host codecs against our own uncompressed call, not GPU kernels against NCCL);
then the same with GC_TC_AUTO=1 (QSGD with GRADCOMP_AUTO: auto's time, choice
and regret, and the worst-regret keys); then a GC_TC_BUDGET_S too short for the run: recorded
as skipped, the JSON and table still written.
Timings are never asserted. Skips (exit 77) where namespaces cannot be made
and shaped: not root, no ip/tc, or the kernel refuses; and under
GRADCOMP_TEST_GPU=1 (gpu-check's tc_link step runs the real thing).
Usage: tc_cpu_check.py SOURCE_DIR BUILD_DIR WORKDIR
"""
import json
import os
import shutil
import subprocess
import sys

from checklib import expect, verdict

SKIP = 77


def skip_reason(prefix):
    if os.geteuid() != 0:
        return "not root (network namespaces and tc need it)"
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            return "%s not found (iproute2; tools/deps.sh installs it)" % tool
    ns = prefix + "probe"
    # What tools/tc_link.sh's set-up makes: a bridge, a namespace, a veth pair and a tbf qdisc.
    steps = [["ip", "link", "add", "name", prefix + "pbr", "type", "bridge"],
             ["ip", "netns", "add", ns],
             ["ip", "-n", ns, "link", "add", "name", "va", "type", "veth", "peer", "name", "vb"],
             ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "va", "root", "tbf", "rate",
              "1gbit", "burst", "131072", "latency", "100ms"]]
    reason = None
    for cmd in steps:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            reason = "%s refused: %s" % (" ".join(cmd[:4]), p.stdout.strip())
            break
    for cmd in (["ip", "netns", "del", ns], ["ip", "link", "del", prefix + "pbr"]):
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return reason


def run_tc(src, build, work, prefix, auto, budget=None):
    """tools/tc_link.sh --cpu at 1 Gb/s, 2 ranks, 1 MB, one call (GC_TC_AUTO=1 when auto;
    GC_TC_BUDGET_S=budget when given, else no budget, whatever gpu-check's step set) into work;
    checks it exits 0 and returns its tc_link.json."""
    os.makedirs(work, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("GC_TC_BUDGET_S", "GC_STEP_BUDGET_S")}
    # GC_TC_NO_LO: never the fallback of shaping lo, which the tests running beside this one
    # use (the probe above made what the namespaces need).
    env.update(GC_TC_GBPS="1", GC_TC_RANKS="2", GC_TC_SIZE="1M", GC_TC_ITERS="1",
               GC_TC_PREFIX=prefix, GC_TC_NO_LO="1")
    tag = ""
    if auto:
        env["GC_TC_AUTO"] = "1"
        tag = "GC_TC_AUTO=1 "
    if budget is not None:
        env["GC_TC_BUDGET_S"] = str(budget)
        tag += "GC_TC_BUDGET_S=%d " % budget
    cmd = ["bash", os.path.join(src, "tools", "tc_link.sh"), "--cpu", os.path.abspath(work),
           os.path.abspath(build)]
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=150)
    print("$", tag + " ".join(cmd), "-> exit", p.returncode)
    print(p.stdout)
    expect(p.returncode == 0, "%stc_link.sh --cpu exits 0 (got %d)" % (tag, p.returncode))
    with open(os.path.join(work, "tc_link.json")) as f:
        return json.load(f)


def check_auto(src, build, work, prefix):
    """GC_TC_AUTO=1: QSGD with GRADCOMP_AUTO beside it over the shaped link (its
    first call times both paths at 1 MB and 32 MB over the link): auto's time,
    choice and regret per size, and the worst regret as headline keys."""
    doc = run_tc(src, build, work, prefix, auto=True)
    runs = doc.get("runs", [])
    expect([r.get("method", r.get("error")) for r in runs] == ["qsgd"],
           "auto: one QSGD run (got %s)" % [r.get("method", r.get("error")) for r in runs])
    for r in runs:
        expect(not r.get("failed") and r.get("wrong") == 0 and r.get("identical") is True,
               "auto: the forced row not failed, within bounds, identical")
        expect(isinstance(r.get("auto_time_us"), (int, float)) and r["auto_time_us"] > 0,
               "auto: auto_time_us a positive number (%s)" % r.get("auto_time_us"))
        expect(r.get("auto_choice") in ("nccl", "compress"), "auto: choice %s" % r.get("auto_choice"))
        want = None
        if all(isinstance(r.get(k), (int, float)) for k in ("auto_time_us", "auto_forced_time_us",
                                                              "auto_nccl_time_us")):
            want = r["auto_time_us"] / min(r["auto_forced_time_us"], r["auto_nccl_time_us"]) - 1
        expect(want is not None and abs(r.get("auto_regret", float("nan")) - want) <= 1e-6,
               "auto: regret = auto / min(forced, baseline) - 1 of the side-by-side times (%s, "
               "want %s)" % (r.get("auto_regret"), want))
        expect(doc.get("cpu_auto_regret_max_frac_tc_1gbps_n2") == r.get("auto_regret") and
               doc.get("cpu_auto_regret_max_frac") == r.get("auto_regret"),
               "auto: headline keys hold the worst (only) regret")
        took = r.get("auto_forced_time_us" if r.get("auto_choice") == "compress" else
                     "auto_nccl_time_us")
        expect(isinstance(took, (int, float)) and want is not None and abs(
            r.get("auto_choice_regret", float("nan")) -
            (took / min(r["auto_forced_time_us"], r["auto_nccl_time_us"]) - 1)) <= 1e-9,
            "auto: choice regret = the side-by-side time of auto's path / the faster - 1")
        expect(doc.get("cpu_auto_choice_regret_max_frac") == r.get("auto_choice_regret"),
               "auto: the choice's headline key")
    md = os.path.join(work, "tc_link.md")
    expect(os.path.isfile(md) and "auto regret" in open(md).read(), "auto: tc_link.md table")


def check_budget(src, build, work, prefix):
    """A budget too short for a run (under a minute left once 20 s are kept for the summary):
    the run is recorded as skipped, and the JSON and the table are still written."""
    doc = run_tc(src, build, work, prefix, auto=False, budget=70)
    runs = doc.get("runs", [])
    expect(runs == [{"link_gbps": 1.0, "nranks": 2, "shaping": "-", "skipped": True,
                     "error": "skipped (time budget spent)"}],
           "budget: the run recorded as skipped (got %s)" % runs)
    md = os.path.join(work, "tc_link.md")
    expect(os.path.isfile(md) and "skipped (time budget spent)" in open(md).read(),
           "budget: tc_link.md names the skipped run")


def main():
    src, build, work = sys.argv[1:4]
    if os.environ.get("GRADCOMP_TEST_GPU") == "1":
        # The GPU suite runs tools/tc_link.sh itself (gpu-check's tc_link step): device time is
        # not spent on its CPU rehearsal.
        print("SKIPPED: GRADCOMP_TEST_GPU=1: the GPU suite runs tools/tc_link.sh on the GPU")
        return SKIP
    os.makedirs(work, exist_ok=True)
    # Unique names: other checkouts on this machine may run the same test.
    prefix = "gcck%d" % (os.getpid() % 100000)
    reason = skip_reason(prefix)
    if reason:
        print("SKIPPED: " + reason)
        return SKIP
    doc = run_tc(src, build, work, prefix, auto=False)
    expect(doc.get("mode") == "cpu", "mode cpu")
    expect(doc.get("tc_unavailable_reason") is None, "shaping worked where namespaces can be made")
    expect(str(doc.get("baseline", "")).startswith("uncompressed over the same TCP links"),
           "the baseline says what it is")
    expect(not any(k.startswith(("measured_speedup_tc_", "measured_vs_model_tc_")) for k in doc),
           "no GPU report keys from a CPU run")
    runs = doc.get("runs", [])
    expect(sorted(r.get("method", "?") for r in runs) == ["dgc", "qsgd"],
           "one run per method (got %s)" % [r.get("method", r.get("error")) for r in runs])
    for r in runs:
        tag = "%s N=%s %s Gb/s" % (r.get("method"), r.get("nranks"), r.get("link_gbps"))
        expect(r.get("shaping") == "netns", "%s: shaped in namespaces" % tag)
        expect(r.get("nranks") == 2 and r.get("link_gbps") == 1.0 and r.get("size") == 1 << 20,
               "%s: the sweep asked for" % tag)
        expect(not r.get("failed") and r.get("exit") == 0, "%s: not failed" % tag)
        expect(r.get("wrong") == 0 and r.get("identical") is True,
               "%s: within bounds and identical on both ranks" % tag)
        expect(isinstance(r.get("link_measured_gbps"), float), "%s: link measured" % tag)
        expect(r.get("tcp_congestion_control") == "reno", "%s: --cpu's TCP is reno" % tag)
        for k in ("time_us", "nccl_time_us", "model_time_us", "nccl_model_time_us", "host_us",
                  "baseline_host_us", "measured_speedup", "model_speedup", "measured_vs_model",
                  "time_vs_model", "baseline_vs_model", "wire_bytes"):
            v = r.get(k)
            expect(isinstance(v, (int, float)) and v > 0, "%s: %s a positive number (%s)" % (
                tag, k, v))
        if all(isinstance(r.get(k), (int, float)) and r.get(k) for k in
               ("measured_speedup", "model_speedup", "measured_vs_model")):
            expect(abs(r["measured_vs_model"] - r["measured_speedup"] / r["model_speedup"])
                   <= 1e-9 * r["measured_vs_model"], "%s: measured_vs_model = measured / model" % tag)
        key = "cpu_%s_measured_speedup_tc_1gbps_n2_1MB" % r.get("method")
        expect(doc.get(key) == r.get("measured_speedup"), "%s: headline key %s" % (tag, key))
    md = os.path.join(work, "tc_link.md")
    expect(os.path.isfile(md) and "baseline (us)" in open(md).read(), "tc_link.md table")
    check_auto(src, build, os.path.join(work, "auto"), prefix)
    check_budget(src, build, os.path.join(work, "budget"), prefix)
    # Nothing left behind.
    left = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, text=True).stdout
    expect(prefix not in left, "namespaces removed")
    return verdict()


if __name__ == "__main__":
    sys.exit(main())
