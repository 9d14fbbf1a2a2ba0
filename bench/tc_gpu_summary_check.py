#!/usr/bin/env python3
"""CTest check of tools/tc_link.sh's GPU mode without a GPU: its namespaces, links, runs and
summary, with a stand-in gradcomp_perf.

The stand-in (written into WORKDIR/build/bench) records the arguments each rank got and, on
rank 0, writes the JSON rows gradcomp_perf writes: fixed NCCL and gradcomp times and one model
point at the --link-gbps it was given. Checked: the model is asked at L' = L x 1448/1514 and its
point is found under L; the unshaped control (rate 0) runs between the rates with no model;
nccl_unshaped_busbw_gbps is 2 (N-1)/N of the buffer over the control's NCCL time; link_bound
says whether that reached 1.5 L (yes at 10 Gb/s, no at 25); the goal keys (N = 4 at 10 Gb/s,
the QSGD row, as tools/gpu_report.py reads them) and the table.
A size given as 256MB is read as 256 MiB. Skips (exit 77) where namespaces cannot be made and
shaped, as tc_cpu_check.py, and under GRADCOMP_TEST_GPU=1.
Usage: tc_gpu_summary_check.py SOURCE_DIR WORKDIR
"""
import json
import os
import shutil
import subprocess
import sys

from checklib import close, expect, verdict
from tc_cpu_check import SKIP, skip_reason

MB256 = 256 << 20
# The stand-in's times (us): NCCL shaped, NCCL on the unshaped control, gradcomp.
NCCL_SHAPED, NCCL_UNSHAPED, QSGD, DGC = 400000.0, 107374.1824, 60000.0, 40000.0

FAKE = r'''#!/usr/bin/env python3
import json, os, sys
a = sys.argv
rank = os.environ.get("OMPI_COMM_WORLD_RANK")
with open(os.path.join(os.environ["GC_FAKE_LOG"], "args_r%%s_%%d.txt" %% (rank, os.getpid())),
          "w") as f:
    f.write(" ".join(a[1:]))
if rank != "0":
    sys.exit(0)
L = float(a[a.index("--link-gbps") + 1])
unshaped = L == 100  # the control's nominal rate (tools/tc_link.sh run_ranks)
rows = [{"method": m, "size": %(size)d, "failed": False, "time_us": t,
         "nccl_time_us": %(unshaped)r if unshaped else %(shaped)r,
         "model": [{"link_gbps": L, "speedup": 5.5, "time_us": 1.0, "nccl_time_us": 5.5}]}
        for m, t in (("qsgd", %(qsgd)r), ("dgc", %(dgc)r))]
json.dump({"baseline": "NCCL", "rows": rows}, open(a[a.index("--json") + 1], "w"))
''' % {"size": MB256, "unshaped": NCCL_UNSHAPED, "shaped": NCCL_SHAPED, "qsgd": QSGD, "dgc": DGC}


def main():
    src, work = sys.argv[1:3]
    if os.environ.get("GRADCOMP_TEST_GPU") == "1":
        print("SKIPPED: GRADCOMP_TEST_GPU=1: the GPU suite runs tools/tc_link.sh on the GPU")
        return SKIP
    prefix = "gcgs%d" % (os.getpid() % 100000)
    reason = skip_reason(prefix)
    if reason:
        print("SKIPPED: " + reason)
        return SKIP
    shutil.rmtree(work, ignore_errors=True)
    build, log, raw = (os.path.join(work, d) for d in ("build", "log", "raw"))
    os.makedirs(os.path.join(build, "bench"))
    os.makedirs(log)
    perf = os.path.join(build, "bench", "gradcomp_perf")
    with open(perf, "w") as f:
        f.write(FAKE)
    os.chmod(perf, 0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("GC_TC_BUDGET_S", "GC_STEP_BUDGET_S")}
    env.update(GC_TC_RANKS="2 4", GC_TC_SIZE="256MB", GC_TC_ITERS="1", GC_TC_PREFIX=prefix,
               GC_TC_NO_LO="1", GC_FAKE_LOG=log)
    cmd = ["bash", os.path.join(src, "tools", "tc_link.sh"), raw, build]
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=150)
    print("$", " ".join(cmd), "-> exit", p.returncode)
    print(p.stdout)
    expect(p.returncode == 0, "tc_link.sh exits 0 (got %d)" % p.returncode)
    doc = json.load(open(os.path.join(raw, "tc_link.json")))
    expect(doc.get("mode") == "gpu" and doc.get("size") == MB256,
           "GPU mode, 256MB read as 256 MiB (%s)" % doc.get("size"))
    runs = doc.get("runs", [])
    got = [(r.get("link_gbps"), r.get("nranks"), r.get("method")) for r in runs]
    expect(got == [(g, n, m) for g in (10.0, 0.0, 25.0) for n in (2, 4) for m in ("qsgd", "dgc")],
           "10 Gb/s, the unshaped control, 25 Gb/s, each at N = 2 and 4 (got %s)" % got)
    # What each rank was asked: the model at L' on the shaped links.
    asked = []
    for name in os.listdir(log):
        a = open(os.path.join(log, name)).read().split()
        asked.append(float(a[a.index("--link-gbps") + 1]))
    want = sorted([10 * 1448 / 1514] * 6 + [100.0] * 6 + [25 * 1448 / 1514] * 6)
    expect(len(asked) == 18 and all(close(x, y, 1e-5) for x, y in zip(sorted(asked), want)),
           "--link-gbps L' on shaped links, 100 on the control (got %s)" % sorted(asked))
    # 2 (N-1)/N of the buffer over the control's NCCL time: 20 Gb/s at N = 2, 30 at N = 4.
    bus = {n: 2 * (n - 1) / n * MB256 * 8 / (NCCL_UNSHAPED * 1e-6) / 1e9 for n in (2, 4)}
    for r in runs:
        tag = "%s at %s Gb/s" % (r.get("method"), r.get("link_gbps"))
        expect(r.get("tcp_congestion_control") == "reno", "%s: reno" % tag)
        if r.get("link_gbps") == 0:
            expect(r.get("shaping") == "netns-unshaped" and r.get("model_speedup") is None and
                   "link_bound" not in r, "%s: the control, no model, no verdict" % tag)
            continue
        expect(r.get("shaping") == "netns", "%s: shaped in namespaces" % tag)
        expect(r.get("model_speedup") == 5.5, "%s: the model's point found under L" % tag)
        t = QSGD if r.get("method") == "qsgd" else DGC
        expect(close(r.get("measured_speedup"), NCCL_SHAPED / t) and
               close(r.get("measured_vs_model"), NCCL_SHAPED / t / 5.5),
               "%s: measured and measured / model" % tag)
        expect(close(r.get("nccl_unshaped_busbw_gbps"), bus[r["nranks"]]), "%s: NCCL's "
               "unshaped bus bandwidth %s, want %s" % (tag, r.get("nccl_unshaped_busbw_gbps"),
                                                      bus[r["nranks"]]))
        expect(r.get("link_bound") is (r["link_gbps"] == 10.0),
               "%s: link_bound %s" % (tag, r.get("link_bound")))
        expect(isinstance(r.get("link_measured_gbps"), float), "%s: link measured" % tag)
    expect(close(doc.get("tc_nccl_unshaped_busbw_gbps_n2"), bus[2]) and
           close(doc.get("tc_nccl_unshaped_busbw_gbps_n4"), bus[4]), "the control's headline keys")
    # The goal keys: QSGD's row (not DGC's) of the N = 4 run at 10 Gb/s, measured NCCL time over
    # gradcomp's on the link, and that over the model's speedup at L'.
    expect(close(doc.get("measured_speedup_tc_10gbps_n4_256MB"), NCCL_SHAPED / QSGD) and
           close(doc.get("measured_vs_model_tc_10gbps"), NCCL_SHAPED / QSGD / 5.5) and
           doc.get("tc_shaping_10gbps_n4") == "netns" and
           doc.get("tc_link_bound_10gbps_n4") is True,
           "goal keys of N = 4 at 10 Gb/s: %s" % {k: v for k, v in doc.items() if "_n4" in k
                                                   or "tc_10gbps" in k})
    md = open(os.path.join(raw, "tc_link.md")).read()
    expect("| unshaped | 2 |" in md and "link-bound" in md, "the table shows the control")
    return verdict()


if __name__ == "__main__":
    sys.exit(main())
