#!/usr/bin/env python3
"""CTest check of tools/ncu_limits.py on Nsight Compute CSV written here in the shape of
`ncu --csv --page details` (==PROF== lines before the table, quoted fields, thousands
separators, several units): every launch parsed in order, the limiter of each rule, a
table without the header or columns refused with the file's label, the refusal reason kept.
Usage: ncu_check.py SOURCE_DIR WORKDIR
"""
import json
import os
import subprocess
import sys

src, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
tool = os.path.join(src, "tools", "ncu_limits.py")
HEAD = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream",'
        '"Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit",'
        '"Metric Value"')


def rows(kid, name, metrics):
    return ['"%d","77","gradcomp_kernels_perf","127.0.0.1","%s","1","13","(128, 1, 1)",'
            '"(131072, 1, 1)","0","9.0","%s","%s","%s","%s"' % (kid, name, sec, m, u, v)
            for sec, m, u, v in metrics]


def launch(dram, mem, sm, issue, dur=("usecond", "312.45"), regs="55"):
    return [("GPU Speed Of Light Throughput", "DRAM Throughput", "%", dram),
            ("GPU Speed Of Light Throughput", "Memory Throughput", "%", mem),
            ("GPU Speed Of Light Throughput", "Duration", dur[0], dur[1]),
            ("GPU Speed Of Light Throughput", "Compute (SM) Throughput", "%", sm),
            ("Launch Statistics", "Registers Per Thread", "register/thread", regs),
            ("Occupancy", "Achieved Occupancy", "%", "54.90"),
            ("Scheduler Statistics", "One or More Eligible", "%", issue)]


enc = os.path.join(work, "encode.csv")
with open(enc, "w") as f:
    f.write("==PROF== Connected to process 77\n==PROF== Profiling \"qsgdEncodeWarpKernel\"\n")
    f.write("\n".join([HEAD] + rows(0, "qsgdEncodeWarpKernel", launch("81.20", "83.00", "41.5", "38.0"))))
    f.write("\n")
topk = os.path.join(work, "topk.csv")
with open(topk, "w") as f:
    f.write("\n".join(
        [HEAD]
        + rows(3, "void gc::cuda::(anonymous namespace)::sampleKernel<1>(const float *, unsigned long)",
               launch("12.0", "20.0", "30.0", "25.0", ("nsecond", "9,870.00")))
        + rows(2, "countKernel", launch("55.0", "58.0", "70.5", "66.0", ("msecond", "1.25")))
        + rows(1, "fillKernel", launch("90.0", "90.0", "10.0", "10.0"))))
    f.write("\n")
bad = os.path.join(work, "bad.csv")
with open(bad, "w") as f:
    f.write("==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access NVIDIA GPU "
            "Performance Counters\n")

fails = []


def expect(cond, what):
    if not cond:
        fails.append(what)
        print("FAIL:", what)


out = os.path.join(work, "profile.json")
rc = subprocess.call([sys.executable, tool, "--out", out, "--skip", "fillKernel",
                      "qsgd_encode_ef float 4=" + enc, "topk_threshold 0.001=" + topk])
doc = json.load(open(out))
expect(rc == 0, "two good tables: exit 0 (got %d)" % rc)
ks = doc.get("kernels") or []
expect([k["kernel"] for k in ks] == ["qsgdEncodeWarpKernel", "countKernel", "sampleKernel<1>"],
       "kernels in file order, then launch ID order, names cut to the function, the skipped "
       "fill kernel left out (got %s)"
       % [k["kernel"] for k in ks])
if len(ks) == 3:
    e, c, s = ks
    expect(e["launch"] == "qsgd_encode_ef float 4" and c["launch"] == "topk_threshold 0.001",
           "labels from LABEL=path")
    expect(abs(e["duration_us"] - 312.45) < 1e-9, "usecond duration")
    expect(abs(s["duration_us"] - 9.87) < 1e-9, "nsecond duration with a thousands separator")
    expect(abs(c["duration_us"] - 1250.0) < 1e-9, "msecond duration")
    expect(e["dram_pct"] == 81.2 and e["memory_pct"] == 83.0 and e["sm_pct"] == 41.5 and
           e["issue_pct"] == 38.0 and e["occupancy_pct"] == 54.9 and e["registers"] == 55,
           "the encode's metrics")
    expect(e["limiter"] == "memory", "83% memory above a 41.5% SM: memory")
    expect(c["limiter"] == "issue", "70.5% SM with memory at 58%: issue")
    expect(s["limiter"] == "latency", "all below 60%: latency")
expect(doc.get("unavailable_reason") is None, "no reason when profiled")

rc = subprocess.call([sys.executable, tool, "--out", out, "decode=" + bad])
doc = json.load(open(out))
expect(rc == 1, "a file without the table: exit 1")
expect(doc.get("kernels") is None and "decode" in (doc.get("unavailable_reason") or ""),
       "its label in the reason (got %s)" % doc.get("unavailable_reason"))

rc = subprocess.call([sys.executable, tool, "--out", out, "--unavailable",
                      "ncu not found (PATH, /usr/local/cuda/bin)"])
doc = json.load(open(out))
expect(rc == 0 and doc.get("unavailable_reason") == "ncu not found (PATH, /usr/local/cuda/bin)"
       and doc.get("kernels") is None, "the refusal's reason kept")

# tools/ncu_profile.sh with a stand-in ncu on PATH that launches what gradcomp_kernels_perf
# --once --only KIND launches (bench/kernels/kernels_perf.cu: the data fills, and the decode
# run's encode of its input) and profiles those --kernel-name regex:... matches, as ncu does:
# every kernel in the profile is its label's.
fake = os.path.join(work, "fake-bin")
os.makedirs(fake, exist_ok=True)
LAUNCHES = {
    "encode": ["fillKernel", "fillKernel", "qsgdEncodeWarpKernel", "fillKernel"],
    "decode": ["fillKernel", "fillKernel", "qsgdEncodeWarpKernel", "qsgdDecodeWarpKernel",
               "qsgdDecodeWarpKernel", "fillKernel"],
    "topk_threshold": ["fillKernel", "fillKernel", "sampleKernel", "DeviceRadixSortOnesweepKernel",
                       "thresholdRuleKernel", "compactKernel"],
    "topk_exact": ["fillKernel", "fillKernel", "radixInitKernel", "radixHistKernel",
                   "radixPickKernel", "compactKernel"]}
calls = os.path.join(work, "ncu-calls.txt")
cfg = os.path.join(work, "fake-ncu.json")
json.dump({"head": HEAD, "launches": LAUNCHES, "calls": calls,
           "rows": {k: rows(0, k, launch("80", "80", "40", "30"))
                    for ks in LAUNCHES.values() for k in ks}}, open(cfg, "w"))
with open(os.path.join(fake, "ncu"), "w") as f:
    f.write("#!%s\n" % sys.executable + """import json, re, sys
cfg = json.load(open(%r))
a = sys.argv[1:]
if "--version" in a:
    print("NVIDIA (R) Nsight Compute Command Line Profiler (stand-in)")
    sys.exit(0)
open(cfg["calls"], "a").write(" ".join(a) + "\\n")
only = a[a.index("--kernel-name") + 1] if "--kernel-name" in a else None
kp = next(i for i, x in enumerate(a) if x.endswith("gradcomp_kernels_perf"))
kind = a[a.index("--only", kp) + 1]
names = [k for k in cfg["launches"][kind]
         if only is None or re.search(only[len("regex:"):], k)]
print("==PROF== Connected to process 77")
print("\\n".join([cfg["head"]] + [r.replace('"0"', '"%%d"' %% i, 1)
                                  for i, k in enumerate(names) for r in cfg["rows"][k]]))
""" % cfg)
os.chmod(os.path.join(fake, "ncu"), 0o755)
raw = os.path.join(work, "profile-raw")
os.makedirs(raw, exist_ok=True)
if os.path.exists(calls):
    os.remove(calls)
env = dict(os.environ, PATH=fake + os.pathsep + os.environ.get("PATH", ""))
rc = subprocess.call(["bash", os.path.join(src, "tools", "ncu_profile.sh"), raw,
                      os.path.join(work, "no-build")], env=env)
expect(rc == 0, "ncu_profile.sh with the stand-in ncu: exit 0 (got %d)" % rc)
doc = json.load(open(os.path.join(raw, "profile.json")))
ks = doc.get("kernels") or []
by = {}
for k in ks:
    by.setdefault(k["launch"], []).append(k["kernel"])
expect(len(open(calls).read().splitlines()) == 6 if os.path.exists(calls) else False,
       "six profiled runs")
expect(by.get("qsgd_decode, then _acc, 4") == ["qsgdDecodeWarpKernel"] * 2,
       "the decode's label holds its two decodes, not the encode that made its input (got %s)"
       % by.get("qsgd_decode, then _acc, 4"))
expect(all(by.get("qsgd_encode_ef %s 4" % t) == ["qsgdEncodeWarpKernel"]
           for t in ("float", "bfloat16", "half")),
       "each encode label holds its encode (got %s)" % by)
expect(by.get("topk_threshold 0.001") == LAUNCHES["topk_threshold"][2:] and
       by.get("topk_exact 0.001") == LAUNCHES["topk_exact"][2:],
       "the selectors' labels hold all their kernels, the fills left out (got %s)" % by)

if fails:
    print("%d check(s) failed" % len(fails))
    sys.exit(1)
print("all checks passed")
