#!/usr/bin/env python3
"""Assembles tools/gpu-check.sh's outputs into the dated Markdown report and JSON.

  tools/gpu_report.py --dir RAW_DIR --name DATE-GPU --md OUT.md --json OUT.json
                      [--plots-prefix DATE-GPU-]

RAW_DIR holds what the steps wrote: steps.tsv (name, status, seconds, note, commit),
perf_*.json/.txt, kernels.json/.txt, torch_topk.json/.txt, multirank.json/.md,
ddp.json/.md, torch_hooks.json/.md, torch_hooks_hsdp.json/.md, lm.json/.md (+ lm_loss.png), fsdp.json/.md, tests.txt. Anything missing becomes null in the JSON and a line
saying so in the report.

A benchmark's output (perf_*.json, kernels.json, torch_topk.json, profile.json) counts as
missing when its step's last record in steps.tsv is not ok, unless it is partial
("complete": false: rows its own run wrote before it stopped) or complete from a step that
failed or timed out after writing it (gradcomp_perf exits 1 when any row failed, which the row
itself says; gpu-check.sh removes a step's outputs before it runs or is skipped, so the file is
that run's): those are kept and listed (outputs_of_failed_steps). A step without a record
there (a raw folder from elsewhere) is taken as it is. The JSON lists what was left out
(outputs_left_out).
"""
import argparse
import glob
import json
import math
import os
import re
import subprocess
import sys
import time

N26 = 1 << 26
MB256 = 256 << 20
# One launch timed beside the launches it replaced (gradcomp_kernels_perf's kinds encode_batch,
# decode_batch and sum; same bytes and copy, so the fractions' ratio is the speedup): the key's
# stem, the one launch's kernel row, the launches' row, and the report table's words.
LAUNCH_SPEEDUPS = [
    ("encode_batch8", "qsgd_encode_ef_batch8", "qsgd_encode_ef_8_launches",
     "QSGD 4-bit encode+EF of 8 pieces of n/8 in one batched launch, speedup over 8 launches "
     "(what a pipelined two-shot piece ran before)"),
    ("decode_batch8", "qsgd_decode_batch8", "qsgd_decode_8_launches",
     "QSGD 4-bit decode of 8 pieces of n/8 into the output in one batched launch, speedup over 8 "
     "launches (bf16: over 8 decodes into fp32 each with its conversion)"),
    ("sum8", "qsgd_sum8", "qsgd_sum8_launches",
     "QSGD 4-bit owner's sum at N=8 (7 encodings of n/8 and its own block) in one fused launch, "
     "speedup over the 8 launches it replaced (bf16: into fp32 and a conversion)"),
]


def launch_key(stem, dtype, lg):
    """The report key of LAUNCH_SPEEDUPS' stem for dtype (float, bfloat16) at n = 2^lg."""
    return "qsgd4_%s%s_speedup_vs_launches_2p%d" % ("bf16_" if dtype == "bfloat16" else "", stem, lg)


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def kernel_frac(kdoc, kernel, dtype="float", bits=4, n=N26):
    if not kdoc:
        return None
    for r in kdoc.get("rows", []):
        if r["kernel"] == kernel and r["dtype"] == dtype and r["bits"] == bits and r["n"] == n:
            return r["frac_of_copy"]
    return None


def kernel_row(kdoc, kernel, n=N26, density=None, lists=None):
    """A gradcomp_kernels_perf row without bits (the sparse checks), by n, density, lists."""
    for r in (kdoc or {}).get("rows", []):
        if (r["kernel"] == kernel and r["n"] == n and
                (density is None or abs(r.get("density", -1) - density) < 1e-12) and
                (lists is None or r.get("lists") == lists)):
            return r
    return None


def usable(r):
    """A gradcomp_perf row a goal may take: not failed, and its result right (within the
    codec's bounds, the rank weights right, the same bits on every rank where compared)."""
    return (not r.get("failed") and r.get("identical") is not False and not r.get("wrong")
            and not r.get("rank_weights_wrong"))


def sparse_model_time(pdoc, method, gbps=400, size=MB256, dtype="float"):
    """A sparse row's modeled time (us) at gbps: its bytes and latency steps only."""
    for r in (pdoc or {}).get("rows", []):
        if (r["method"] == method and r["dtype"] == dtype and r["size"] == size and usable(r)):
            for m in r.get("model", []):
                if m["link_gbps"] == gbps:
                    return m.get("time_us")
    return None


def qsgd_row(pdoc, size, dtype="float", bits=4, rounding="stochastic"):
    """A QSGD row of gradcomp_perf's JSON by size, type, bits and GRADCOMP_ROUNDING."""
    for r in (pdoc or {}).get("rows", []):
        if (r["method"] == "qsgd" and r["bits"] == bits and r["dtype"] == dtype and
                r["size"] == size and r.get("rounding", "stochastic") == rounding and
                usable(r)):
            return r
    return None


def sweep_regret(doc, first, last):
    """auto_regret_max_frac of a gradcomp_perf --auto sweep that covered every size from first
    to last (factor 4, gpu-check's sweep) with auto run, not failed and right on every rank
    (within the codec's bounds, the same bits, the rank weights right, as usable() asks of a
    row); None otherwise (a run cut short, a failed or wrong row): the goal is the worst size."""
    if not doc or doc.get("complete") is False:
        return None
    ok = {r.get("size") for r in doc.get("rows", [])
          if not r.get("failed") and r.get("auto_regret") is not None
          and not r.get("auto_wrong") and r.get("auto_identical") is not False
          and not r.get("auto_rank_weights_wrong")}
    size = first
    while size <= last:
        if size not in ok:
            return None
        size *= 4
    return doc.get("auto_regret_max_frac")


def finite(v):
    """v when it is a finite number (not a bool), else None: a NaN, an infinity or a string in
    an output is no measurement, and a goal on it is unknown, not failed."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v


def share(a, b):
    return a / b if a is not None and b else None


def qsgd_rows(pdoc, size, bits, dtype):
    """The usable QSGD rows of perf.json (None: none) of that size, bit width and type."""
    for r in (pdoc or {}).get("rows", []):
        if (r["method"] == "qsgd" and r["bits"] == bits and r["dtype"] == dtype and
                r["size"] == size and usable(r)):
            yield r


def model_speedup(pdoc, gbps=10, size=MB256, bits=4, dtype="float", key="speedup"):
    """key: "speedup" (unpipelined model) or "pipelined_speedup" (rows cut into pieces)."""
    for r in qsgd_rows(pdoc, size, bits, dtype):
        for m in r.get("model", []):
            if m["link_gbps"] == gbps:
                return m.get(key)
    return None


def piece_bytes(pdoc, size=MB256, bits=4, dtype="float"):
    """GRADCOMP_PIPELINE_BYTES of the pipelined fp32 4-bit 256 MB row, when it was cut."""
    for r in qsgd_rows(pdoc, size, bits, dtype):
        if r.get("pieces", 1) > 1:
            return r.get("piece_bytes")
    return None


def projection(pdoc, nodes, local, node_gbps, key, size=MB256, bits=4, dtype="float"):
    """A --model-nodes/--model-local projection point of the fp32 4-bit row."""
    for r in qsgd_rows(pdoc, size, bits, dtype):
        for p in r.get("projection", []):
            if p["nodes"] == nodes and p["local"] == local and p["node_gbps"] == node_gbps:
                return p.get(key)


def rs_model_speedup(pdoc, gbps=10, input_bytes=MB256, bits=4, dtype="float"):
    """Reduce-scatter of a 256 MB gradient: the row whose per-rank output times N is 256 MB."""
    if not pdoc:
        return None
    for r in pdoc.get("rows", []):
        if (r.get("collective") == "reduce_scatter" and r["method"] == "qsgd" and
                r["bits"] == bits and r["dtype"] == dtype and
                r["size"] * r.get("nranks", 0) == input_bytes and usable(r)):
            for m in r.get("model", []):
                if m["link_gbps"] == gbps:
                    return m.get("speedup")
    return None


def topk_gpus_differ(kdoc, tdoc):
    """Whether kernels.json and torch_topk.json name different GPUs: a raw folder filled over
    several calls (GC_RUN_NAME) can hold one step's file from another machine, and the goal
    sets the two times side by side from one run."""
    k, t = (kdoc or {}).get("gpu"), (tdoc or {}).get("gpu")
    return bool(k and t and k != t)


def topk_speedup(kdoc, tdoc, n=N26, density=0.001, kernel="topk_threshold"):
    """torch.topk(|x|) time over gradcomp's threshold selector on the same data
    (kernel: topk_threshold_min_sample for the selector at the least sample rate); None where
    the two files name different GPUs."""
    if not kdoc or not tdoc or topk_gpus_differ(kdoc, tdoc):
        return None
    ours = [r for r in kdoc.get("rows", []) if r["kernel"] == kernel and r["n"] == n
            and abs(r.get("density", -1) - density) < 1e-12]
    theirs = [r for r in tdoc.get("rows", []) if r["n"] == n and abs(r["density"] - density) < 1e-12]
    mine = finite(ours[0].get("time_us")) if ours else None
    torch_us = finite(theirs[0].get("torch_topk_abs_us")) if theirs else None
    if not mine or not torch_us or mine <= 0 or torch_us <= 0:
        return None
    return torch_us / mine


def fmt(v, digits=3):
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return ("%." + str(digits) + "g") % v
    return str(v)


def goal(v, target):
    return None if finite(v) is None else v >= target


def steps_table(path):
    """steps.tsv's records; commit (the fifth column, tools/gpu-check.sh) null where absent."""
    rows = []
    text = read(path) or ""
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            try:
                seconds = int(float(parts[2]))
            except ValueError:
                if parts[:3] == ["name", "status", "seconds"]:
                    continue  # a header line
                seconds = None  # the record stands; its time is unknown
            rows.append({"name": parts[0], "status": parts[1], "seconds": seconds,
                         "note": parts[3] if len(parts) > 3 else "",
                         "commit": (parts[4] or None) if len(parts) > 4 else None})
    return rows


def ctest_cut(text):
    """CTest's counts from a run cut before its summary (the tests step's limit): each finished
    test's result line ("  7/403 Test  #12: name ....   Passed  0.6 sec", "***Timeout", ...)
    counts, and the tests with no line did not finish. None where no test finished."""
    done = re.findall(r"^\s*\d+/(\d+) Test\s+#\d+: (\S+) \.*\s*(?:\*\*\*)?([A-Za-z]+)",
                      text or "", re.M)
    if not done:
        return None
    res = [s for _, _, s in done]
    return {"tests_passed": res.count("Passed"), "tests_skipped": res.count("Skipped"),
            "tests_failed": len(res) - res.count("Passed") - res.count("Skipped"),
            "tests_unfinished": int(done[-1][0]) - len(done),
            "tests_failed_names": [n for _, n, s in done if s not in ("Passed", "Skipped")]}


def short_commit(c):
    """A commit as the steps table shows it: 12 hex digits, +dirty kept."""
    if not c:
        return ""
    dirty = c.endswith("+dirty")
    return (c[:-len("+dirty")] if dirty else c)[:12] + ("+dirty" if dirty else "")


def tc_shaping(tc):
    """How the run behind measured_speedup_tc_10gbps_n4_256MB was shaped (netns or lo):
    tc_link.json's key, or, in a summary from before it had one, that run's own field."""
    if "tc_shaping_10gbps_n4" in tc:
        return tc["tc_shaping_10gbps_n4"]
    if tc.get("measured_speedup_tc_10gbps_n4_256MB") is None:
        return None
    for r in tc.get("runs", []):
        if (r.get("link_gbps") == 10 and r.get("nranks") == 4 and r.get("method") == "qsgd"
                and r.get("size") == tc.get("size", MB256) and not r.get("failed")):
            return r.get("shaping")
    return None


def git_commit():
    """HEAD, with +dirty when the tree (results aside) differs from it."""
    try:
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], text=True).strip()
        dirty = subprocess.call(["git", "diff", "--quiet", "HEAD", "--", ".", ":!bench/results"]) != 0
        return commit + "+dirty" if dirty else commit
    except (OSError, subprocess.CalledProcessError):
        return None


class RawOutputs:
    """A gpu-check raw folder's outputs as the report takes them (the module's docstring says
    which count); tools/plot draws what the report used by the same rule. left_out and
    kept_failed list, as they are read, the files left out and those kept from a failed step."""

    def __init__(self, d):
        self.d = d
        self.steps = steps_table(os.path.join(d, "steps.tsv"))
        # Each step's last record: a step run again in a later call (the same GC_RUN_NAME)
        # replaces what it wrote, and its record is the one that speaks for its output.
        self.last = {s["name"]: s["status"] for s in self.steps}
        self.left_out = []
        self.kept_failed = []

    def json(self, f):
        """f's JSON object; anything else (null, a list, a file cut short) is as if missing, and
        named in the report (unreadable_outputs)."""
        doc = load(os.path.join(self.d, f))
        return doc if isinstance(doc, dict) else None

    def counts(self, step, partial, complete):
        """Whether step's output counts: its last record ok, or the output partial, or complete
        from a run that failed or timed out after writing it."""
        status = self.last.get(step, "ok")
        return status == "ok" or partial or (complete and status in ("failed", "timed out"))

    def kept(self, step, partial, complete, f):
        """counts(), listing f in kept_failed where it counts only as complete."""
        if not self.counts(step, partial, complete):
            return False
        if self.last.get(step, "ok") != "ok" and not partial:
            self.kept_failed.append({"file": f, "step": step, "status": self.last[step]})
        return True

    def bench(self, f, step=None):
        """A benchmark's JSON, or None (as if missing) when its step's last record is not ok
        and the file is not partial: a step that failed, timed out or was skipped says nothing
        of when its file was written, and may have left an earlier call's."""
        doc = self.json(f)
        step = step or f[:-len(".json")]
        if doc is None or self.kept(step, doc.get("complete") is False,
                                    doc.get("complete") is True, f):
            return doc
        self.left_out.append({"file": f, "step": step, "status": self.last[step]})
        return None

    def kernels(self):
        """kernels.json with the rows of each of its two steps kept or left out by that step's
        own record: kernels_more's are those of the kernels named in kernels_more.json
        (tools/kernels_merge.py). Its "complete" is both runs': the first's own only when the
        second's was."""
        kdoc = self.json("kernels.json")
        if not isinstance(kdoc, dict):
            return kdoc
        kmore = self.json("kernels_more.json")
        kmore = kmore if isinstance(kmore, dict) else {}
        more = {r.get("kernel") for r in kmore.get("rows", [])}
        more_partial = kmore.get("complete") is False
        # tools/kernels_merge.py keeps the first run's own "complete" beside the merged one; a
        # file merged before it did tells the first run's partial apart only when the second's
        # was complete.
        own_partial = (kdoc["complete_kernels"] is False if "complete_kernels" in kdoc
                       else kdoc.get("complete") is False and not more_partial)
        own_complete = (kdoc["complete_kernels"] is True if "complete_kernels" in kdoc
                        else kdoc.get("complete") is True)
        keep_own = self.kept("kernels", own_partial, own_complete, "kernels.json")
        keep_more = self.kept("kernels_more", more_partial, kmore.get("complete") is True,
                              "kernels.json")
        for step, keep, mine in (("kernels", keep_own, False), ("kernels_more", keep_more, True)):
            if not keep and any((r.get("kernel") in more) == mine for r in kdoc.get("rows", [])):
                self.left_out.append({"file": "kernels.json", "step": step,
                                      "status": self.last[step]})
        return dict(kdoc, rows=[r for r in kdoc.get("rows", [])
                                if (keep_more if r.get("kernel") in more else keep_own)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--gpu", default="")
    ap.add_argument("--plots-prefix", default="")
    a = ap.parse_args()
    d = a.dir
    raw = RawOutputs(d)
    j = raw.json
    t = lambda f: read(os.path.join(d, f))  # noqa: E731
    steps, last = raw.steps, raw.last
    left_out, kept_failed = raw.left_out, raw.kept_failed
    counts, bench = raw.counts, raw.bench
    kdoc = raw.kernels()
    tdoc = bench("torch_topk.json")
    # gradcomp_perf and gradcomp_kernels_perf rewrite their JSON after every
    # row; one whose run stopped early says "complete": false.
    docs = {f: j(f) for f in os.listdir(d) if f.endswith(".json")}
    partial = sorted(f for f, doc in docs.items()
                     if isinstance(doc, dict) and doc.get("complete") is False)
    unreadable = sorted(f for f, doc in docs.items() if doc is None)
    p8, p8s = bench("perf_n8.json"), bench("perf_n8_sparse.json")
    multi, ddp, tests = j("multirank.json") or {}, j("ddp.json") or {}, j("tests.json") or {}
    # A tests step cut by its limit leaves no CTest summary (tests.json's counts null): the
    # results of the tests that finished, and how many did not, from tests.txt itself.
    if tests.get("tests_passed") is None:
        tests = ctest_cut(t("tests.txt")) or tests
    # tc_link.sh's summary: it leaves out the runs that failed (and deletes every run's output
    # before the run), so its step failing for one run (25 Gb/s, say) leaves the others' figures.
    tc_all = j("tc_link.json") or {}
    tc = tc_all
    hooks, lm = j("torch_hooks.json") or {}, j("lm.json") or {}
    # The HSDP runs' keys: their own step, torch_hooks_hsdp (torch_hooks.json in raw folders
    # from before it).
    hsdp = j("torch_hooks_hsdp.json") or {}
    hsdp_key = lambda k: hsdp[k] if k in hsdp else hooks.get(k)  # noqa: E731
    ident_all = [d.get("torch_hooks_params_identical_all_runs") for d in (hooks, hsdp)]
    ident_all = [v for v in ident_all if v is not None]
    at_most = lambda v, thr: None if v is None else bool(v <= thr)  # noqa: E731
    p8rs, fsdp = bench("perf_n8_rs.json"), j("fsdp.json") or {}
    # gradcomp_perf --auto on one link (N = 2 sharing the GPU): auto's worst
    # time / min(forced compression, NCCL) - 1 over the 1 MB .. 256 MB sweep.
    auto_regret = sweep_regret(bench("perf_auto.json"), 1 << 20, MB256)
    # The same for the reduce-scatter (-C reduce_scatter --auto, inputs 1 MB .. 256 MB:
    # its rows' sizes are each rank's output, 512 KB .. 128 MB at N = 2).
    auto_rs_regret = sweep_regret(bench("perf_auto_rs.json"), 512 << 10, MB256 // 2)
    # Every gradcomp_perf allreduce row hashes each rank's result and compares (JSON identical;
    # null for reduce-scatter rows): how many agreed bit for bit on all ranks, and how many not.
    # Only the files that count (as bench() takes them).
    same = differ = 0
    for f in sorted(glob.glob(os.path.join(d, "perf_*.json"))):
        doc = j(os.path.basename(f))
        if doc is None or not counts(os.path.basename(f)[:-len(".json")],
                                     doc.get("complete") is False, doc.get("complete") is True):
            continue
        for r in (doc.get("rows") or []):
            if not isinstance(r, dict):
                continue
            same += r.get("identical") is True
            differ += r.get("identical") is False
    # GC_COMMIT names the commit when the tree's .git is not the one it came
    # from (a copy sent to a GPU machine carries the checkout's older .git).
    commit = os.environ.get("GC_COMMIT") or git_commit()

    enc = kernel_frac(kdoc, "qsgd_encode_ef")
    enc16 = {t: kernel_frac(kdoc, "qsgd_encode_ef", dtype=t) for t in ("bfloat16", "half")}
    dec = kernel_frac(kdoc, "qsgd_decode")
    # The decode against the write-only fill beside it (kernels_perf's fill
    # row): its 4n of output is nearly all it moves, so the fill is its ceiling.
    # Both fractions are of the same copy (same n, same run): their ratio is
    # the decode's GB/s over the fill's.
    fill_row = kernel_row(kdoc, "fill")
    fill = fill_row.get("frac_of_copy") if fill_row else None
    dec_fill = share(dec, fill)
    # GRADCOMP_ROUNDING=nearest's encode kernel, timed beside the stochastic one.
    near = {t: kernel_frac(kdoc, "qsgd_encode_ef_nearest", dtype=t)
            for t in ("float", "bfloat16", "half")}
    # One launch over the launches it replaced (LAUNCH_SPEEDUPS), fp32 and bf16 at 2^22 and 2^24.
    launch_speedups = {(stem, t, lg): share(kernel_frac(kdoc, one, dtype=t, n=1 << lg),
                                            kernel_frac(kdoc, many, dtype=t, n=1 << lg))
                       for stem, one, many, _ in LAUNCH_SPEEDUPS
                       for t in ("float", "bfloat16") for lg in (22, 24)}
    # The sparse exchange's per-call checks at 2^26 (not in the link model,
    # docs/benchmark.md): the 8 received slot lists of a 0.1% DGC call, and
    # rand-k's non-finite flag; beside the modeled time of perf_n8_sparse's
    # 256 MB row at 400 Gb/s (bytes and latency only).
    lists_row = kernel_row(kdoc, "sparse_check_lists", density=0.001, lists=8)
    lists_us = lists_row["time_us"] if lists_row else None
    flag_row = kernel_row(kdoc, "nonfinite_flag")
    flag_us = flag_row["time_us"] if flag_row else None
    dgc400, randk400 = sparse_model_time(p8s, "dgc"), sparse_model_time(p8s, "randk")
    # perf_n8_nearest (GRADCOMP_ROUNDING=nearest, 64 MB): the encode time its model took,
    # over perf_n8's stochastic row of the same size and type, and its modeled speedup.
    p8n = bench("perf_n8_nearest.json")
    MB64 = 64 << 20
    near_rows = {t: qsgd_row(p8n, MB64, t, rounding="nearest") for t in ("float", "bfloat16")}
    stoch_rows = {t: qsgd_row(p8, MB64, t) for t in ("float", "bfloat16")}
    # A row whose kernels were not timed (model_missing) has encode_us 0: no ratio from it.
    enc_us = lambda row: (row or {}).get("encode_us") or None  # noqa: E731
    near_enc = {t: share(enc_us(near_rows[t]), enc_us(stoch_rows[t]))
                for t in ("float", "bfloat16")}
    near400 = None
    for m in (near_rows["float"] or {}).get("model", []):
        if m["link_gbps"] == 400:
            near400 = m.get("speedup")
    # Nsight Compute's view of the same kernels (step profile; tools/ncu_limits.py).
    prof = bench("profile.json") or {}
    topk = topk_speedup(kdoc, tdoc)
    topk_min = topk_speedup(kdoc, tdoc, kernel="topk_threshold_min_sample")
    topk_lookback = topk_speedup(kdoc, tdoc, kernel="topk_threshold_lookback")
    model = model_speedup(p8)
    model400 = model_speedup(p8, gbps=400)
    # The pipelined two-shot's row (perf_n8_pipe: GRADCOMP_PIPELINE_BYTES set).
    p8pipe = bench("perf_n8_pipe.json")
    piped = {g: model_speedup(p8pipe, gbps=g, key="pipelined_speedup") for g in (10, 25, 100, 400)}
    hier = {g: projection(p8, 4, 8, g, "hier_speedup") for g in (100, 400, 3200)}
    # The hierarchy with its stages pipelined (gradcomp_perf --model-pipe), and
    # GRADCOMP_AUTO's modeled time (NCCL's where compression would lose).
    hier_piped = {g: projection(p8, 4, 8, g, "hier_pipelined_speedup") for g in (400, 3200)}
    hier_auto = projection(p8, 4, 8, 3200, "auto_speedup")
    flat100 = projection(p8, 4, 8, 100, "flat_speedup")
    # N = 8 as 2 nodes of 4: bytes only, any NIC rate.
    ratio = projection(p8, 2, 4, 100, "inter_bytes_ratio_flat_vs_hier")
    tc_x = tc.get("measured_speedup_tc_10gbps_n4_256MB")
    tc_vs = tc.get("measured_vs_model_tc_10gbps")
    rs_model = rs_model_speedup(p8rs)
    summary = {
        "gpu": a.gpu or (kdoc or {}).get("gpu") or None,
        # The run name's date (<date>-<gpu>); a name without one (GC_RUN_NAME): today's.
        "date": a.name[:10] if re.match(r"\d{4}-\d{2}-\d{2}", a.name) else time.strftime("%Y-%m-%d"),
        "commit": commit,
        "qsgd4_encode_ef_frac_of_copy": enc,
        "qsgd4_bf16_encode_ef_frac_of_copy": enc16["bfloat16"],
        "qsgd4_fp16_encode_ef_frac_of_copy": enc16["half"],
        "qsgd4_decode_frac_of_copy": dec,
        "qsgd4_decode_frac_of_fill": dec_fill,
        "fill_frac_of_copy": fill,
        "qsgd4_nearest_encode_ef_frac_of_copy": near["float"],
        "qsgd4_bf16_nearest_encode_ef_frac_of_copy": near["bfloat16"],
        "qsgd4_fp16_nearest_encode_ef_frac_of_copy": near["half"],
        **{launch_key(stem, t, lg): v for (stem, t, lg), v in launch_speedups.items()},
        "qsgd4_nearest_vs_stochastic_model_encode_n8_64MB": near_enc["float"],
        "qsgd4_bf16_nearest_vs_stochastic_model_encode_n8_64MB": near_enc["bfloat16"],
        "allreduce_qsgd4_nearest_model_speedup_400gbps_n8_64MB": near400,
        "sparse_check_lists_us_n8_2p26": lists_us,
        "sparse_check_lists_slots_2p26": lists_row.get("k") if lists_row else None,
        "sparse_check_lists_frac_of_dgc_model_400gbps_n8_256MB": share(lists_us, dgc400),
        "nonfinite_flag_us_2p26": flag_us,
        "nonfinite_flag_frac_of_copy": flag_row.get("frac_of_copy") if flag_row else None,
        "nonfinite_flag_frac_of_randk_model_400gbps_n8_256MB": share(flag_us, randk400),
        "kernel_limiters": prof.get("kernels"),
        "profile_unavailable_reason": prof.get("unavailable_reason"),
        "topk_dgc_speedup_vs_torch_topk": topk,
        "topk_dgc_min_sample_speedup_vs_torch_topk": topk_min,
        "topk_dgc_lookback_speedup_vs_torch_topk": topk_lookback,
        "allreduce_qsgd4_model_speedup_10gbps_n8_256MB": model,
        # Pipelined (perf_n8_pipe), with the unpipelined model beside it.
        "allreduce_qsgd4_model_speedup_400gbps_n8_256MB": piped[400],
        "allreduce_qsgd4_model_speedup_100gbps_n8_256MB": piped[100],
        "allreduce_qsgd4_pipeline_bytes_n8_256MB": piece_bytes(p8pipe),
        # Unpipelined: encode, exchange and decode one after the other.
        "allreduce_qsgd4_unpipelined_model_speedup_400gbps_n8_256MB": model400,
        "allreduce_qsgd4_unpipelined_model_speedup_100gbps_n8_256MB": model_speedup(p8, gbps=100),
        "hier_model_speedup_node100g_4x8_256MB": hier[100],
        # Pipelined, at the projection's piece size; the unpipelined beside it.
        "hier_model_speedup_node400g_4x8_256MB": hier_piped[400],
        "hier_unpipelined_model_speedup_node400g_4x8_256MB": hier[400],
        "hier_model_pipeline_bytes_4x8_256MB": projection(p8, 4, 8, 400, "hier_pipeline_bytes"),
        "hier_model_pieces_4x8_256MB": projection(p8, 4, 8, 400, "hier_pieces"),
        # With GRADCOMP_AUTO; compression forced (pipelined) beside it.
        "hier_model_speedup_node3200g_4x8_256MB": hier_auto,
        "hier_forced_model_speedup_node3200g_4x8_256MB": hier_piped[3200],
        "flat_model_speedup_node100g_4x8_256MB": flat100,
        "hier_inter_bytes_ratio_vs_flat_n8_l4": ratio,
        "measured_speedup_tc_10gbps_n4_256MB": tc_x,
        "measured_vs_model_tc_10gbps": tc_vs,
        # The shaping of the run behind those two: netns (each rank's veth at L, the model's
        # link) or lo (namespaces refused: one bucket of N x L shared by all ranks).
        "tc_shaping_10gbps_n4": tc_shaping(tc),
        "tc_unavailable_reason": tc_all.get("tc_unavailable_reason"),
        # Whether NCCL on the shared GPU beat 1.5 x 10 Gb/s unshaped (tc_link.sh's
        # control): if not, the measured speedup is the GPU sharing's, not the link's.
        "tc_link_bound_10gbps_n4": tc.get("tc_link_bound_10gbps_n4") if tc else None,
        "tc_nccl_unshaped_busbw_gbps_n4": tc.get("tc_nccl_unshaped_busbw_gbps_n4") if tc else None,
        "auto_regret_max_frac": auto_regret,
        "auto_rs_regret_max_frac": auto_rs_regret,
        "ddp_qsgd4_acc_delta_pts": ddp.get("ddp_qsgd4_acc_delta_pts"),
        "ddp_dgc_acc_delta_pts": ddp.get("ddp_dgc_acc_delta_pts"),
        "ddp_hier_qsgd4_acc_delta_pts": ddp.get("ddp_hier_qsgd4_acc_delta_pts"),
        "multirank_hier_tests_passed": multi.get("multirank_hier_tests_passed"),
        "multirank_hier_tests_failed": multi.get("multirank_hier_tests_failed"),
        "ddp_hook_qsgd4_acc_delta_pts": hooks.get("ddp_hook_qsgd4_acc_delta_pts"),
        "torch_hook_exact_bitwise": hooks.get("torch_hook_exact_bitwise"),
        "torch_hook_scaler_bitwise": hooks.get("torch_hook_scaler_bitwise"),
        # torch's hook wrappers around the hook (hook_exact): fp16_compress_wrapper through
        # register_ddp_hook(wrap=), and ZeRO's overlap_with_ddp (null and why where skipped).
        "torch_hook_wrap_fp16_bitwise": hooks.get("torch_hook_wrap_fp16_bitwise"),
        "torch_hook_zero_overlap_params_equal": hooks.get("torch_hook_zero_overlap_params_equal"),
        "torch_hook_zero_overlap_skipped": hooks.get("torch_hook_zero_overlap_skipped"),
        # DDP(find_unused_parameters=True): a parameter unused on every rank at one step loses
        # nothing of what its error feedback released there (hook_exact; null where skipped).
        "torch_hook_unused_carry_conserved": hooks.get("torch_hook_unused_carry_conserved"),
        "torch_hook_vs_preload_bytes_equal": hooks.get("torch_hook_vs_preload_bytes_equal"),
        "torch_hook_resume_bitwise": hooks.get("torch_hook_resume_bitwise"),
        "torch_hook_abort_refuses_after": hooks.get("torch_hook_abort_refuses_after"),
        "torch_hook_abort_seconds_rank0": hooks.get("torch_hook_abort_seconds_rank0"),
        "torch_hooks_params_identical_all_runs": all(ident_all) if ident_all else None,
        "torch_hook_full_precision_params": hooks.get("torch_hook_full_precision_params"),
        # FSDP2's GradcompReduceScatter (torch_hooks' fsdp_none / fsdp_qsgd4 runs).
        "fsdp_hook_qsgd4_acc_delta_pts": hooks.get("fsdp_hook_qsgd4_acc_delta_pts"),
        "fsdp_hook_qsgd4_test_loss_rel_delta": hooks.get("fsdp_hook_qsgd4_test_loss_rel_delta"),
        "fsdp_hook_qsgd4_params_identical": hooks.get("fsdp_hook_qsgd4_params_identical"),
        "fsdp_hook_qsgd4_calls_compressed_rank0": hooks.get("fsdp_hook_qsgd4_calls_compressed_rank0"),
        # HSDP's GradcompReplicaAllReduce (torch_hooks' hsdp_none / hsdp_qsgd4 runs).
        "hsdp_hook_qsgd4_acc_delta_pts": hsdp_key("hsdp_hook_qsgd4_acc_delta_pts"),
        "hsdp_hook_qsgd4_params_identical": hsdp_key("hsdp_hook_qsgd4_params_identical"),
        "hsdp_hook_qsgd4_calls_compressed_rank0": hsdp_key("hsdp_hook_qsgd4_calls_compressed_rank0"),
        "lm_val_loss_rel_delta_qsgd4": lm.get("lm_val_loss_rel_delta_qsgd4"),
        "lm_val_loss_rel_delta_dgc": lm.get("lm_val_loss_rel_delta_dgc"),
        "lm_val_loss_rel_delta_powersgd": lm.get("lm_val_loss_rel_delta_powersgd"),
        "lm_val_loss_rel_delta_qsgd5_hook": lm.get("lm_val_loss_rel_delta_qsgd5_hook"),
        "lm_val_loss_rel_delta_qsgd4_d128_hook": lm.get("lm_val_loss_rel_delta_qsgd4_d128_hook"),
        "lm_val_loss_rel_delta_qsgd4_nearest_d128_hook":
            lm.get("lm_val_loss_rel_delta_qsgd4_nearest_d128_hook"),
        "lm_val_loss_rel_delta_qsgd4_square_nearest_hook":
            lm.get("lm_val_loss_rel_delta_qsgd4_square_nearest_hook"),
        "lm_val_loss_rel_delta_qsgd4_square_hook":
            lm.get("lm_val_loss_rel_delta_qsgd4_square_hook"),
        "lm_val_loss_rel_delta_qsgd4_sgd": lm.get("lm_val_loss_rel_delta_qsgd4_sgd"),
        "lm_val_loss_rel_delta_dgc_sgd": lm.get("lm_val_loss_rel_delta_dgc_sgd"),
        "lm_bytes_ratio_qsgd4_vs_powersgd": lm.get("lm_bytes_ratio_qsgd4_vs_powersgd"),
        "multirank_tests_passed": multi.get("multirank_tests_passed"),
        "multirank_tests_failed": multi.get("multirank_tests_failed"),
        "reducescatter_qsgd4_model_speedup_10gbps_n8_256MB": rs_model,
        "multirank_rs_tests_passed": multi.get("multirank_rs_tests_passed"),
        "multirank_rs_tests_failed": multi.get("multirank_rs_tests_failed"),
        # Null unless a world with NCCL_COMM_BLOCKING=0 ran (GC_MULTIRANK_RUNS N:L:nb, or
        # N:L:nbp with GRADCOMP_PRIVATE_COMM=1).
        "multirank_nonblocking_tests_passed": multi.get("multirank_nonblocking_tests_passed"),
        "multirank_nonblocking_tests_failed": multi.get("multirank_nonblocking_tests_failed"),
        "fsdp_qsgd4_acc_delta_pts": fsdp.get("fsdp_qsgd4_acc_delta_pts"),
        "fsdp_dgc_acc_delta_pts": fsdp.get("fsdp_dgc_acc_delta_pts"),
        "tests_passed": tests.get("tests_passed"),
        "tests_failed": tests.get("tests_failed"),
        "tests_skipped": tests.get("tests_skipped"),
        "tests_unfinished": tests.get("tests_unfinished"),
        "perf_rows_identical_on_all_ranks": same if same or differ else None,
        "perf_rows_differing_between_ranks": differ if same or differ else None,
        "goals": {
            "encode_ef_ge_0.9_of_copy": goal(enc, 0.9),
            "bf16_encode_ef_ge_0.8_of_copy": goal(enc16["bfloat16"], 0.8),
            "fp16_encode_ef_ge_0.8_of_copy": goal(enc16["half"], 0.8),
            "decode_ge_0.95_of_copy": goal(dec, 0.95),
            "topk_ge_8x_torch_topk": goal(topk, 8.0),
            "allreduce_qsgd4_model_ge_5x_nccl_10gbps_n8_256MB": goal(model, 5.0),
            "allreduce_qsgd4_pipelined_model_ge_6.5x_nccl_400gbps_n8_256MB": goal(piped[400], 6.5),
            "allreduce_qsgd4_pipelined_model_ge_7.4x_nccl_100gbps_n8_256MB": goal(piped[100], 7.4),
            "hier_inter_bytes_ratio_ge_3.5_n8_l4": goal(ratio, 3.5),
            "hier_model_ge_6x_nccl_node100g_4x8_256MB": goal(hier[100], 6.0),
            "hier_model_pipelined_ge_5x_nccl_node400g_4x8_256MB": goal(hier_piped[400], 5.0),
            "hier_model_auto_ge_0.97x_nccl_node3200g_4x8_256MB": goal(hier_auto, 0.97),
            "measured_tc_ge_5x_nccl_10gbps_n4_256MB": goal(tc_x, 5.0),
            "measured_vs_model_tc_10gbps_within_15pct":
                None if tc_vs is None else 0.85 <= tc_vs <= 1.15,
            # Null unless the hierarchical world ran (tools/multirank_check.sh: null keys then);
            # a world whose tests all went uncounted passed nothing.
            "multirank_hier_tests_failed_eq_0": (
                None if multi.get("multirank_hier_tests_failed") is None
                else multi.get("multirank_hier_tests_failed") == 0
                and (multi.get("multirank_hier_tests_passed") or 0) > 0),
            "ddp_hier_qsgd4_acc_within_1pt": (
                None if ddp.get("ddp_hier_qsgd4_acc_delta_pts") is None
                else abs(ddp.get("ddp_hier_qsgd4_acc_delta_pts")) <= 1.0),
            "ddp_hook_qsgd4_within_1pt": at_most(
                None if hooks.get("ddp_hook_qsgd4_acc_delta_pts") is None
                else abs(hooks["ddp_hook_qsgd4_acc_delta_pts"]), 1.0),
            "lm_qsgd4_val_loss_within_1pct": at_most(lm.get("lm_val_loss_rel_delta_qsgd4"), 0.01),
            "lm_dgc_val_loss_within_3pct": at_most(lm.get("lm_val_loss_rel_delta_dgc"), 0.03),
            "reducescatter_qsgd4_model_ge_7x_nccl_10gbps_n8_256MB": goal(rs_model, 7.0),
            "auto_regret_le_0.05": None if auto_regret is None else auto_regret <= 0.05,
            "auto_rs_regret_le_0.05": None if auto_rs_regret is None else auto_rs_regret <= 0.05,
        },
        "allreduce_qsgd4_model_speedup_n8_256MB": {
            str(g): model_speedup(p8, gbps=g) for g in (10, 25, 100, 400)},
        "allreduce_qsgd4_pipelined_model_speedup_n8_256MB": {str(g): v for g, v in piped.items()},
        "steps": steps,
        "partial_outputs": partial,
        "unreadable_outputs": unreadable,
        "outputs_left_out": left_out,
        "outputs_of_failed_steps": kept_failed,
    }
    with open(a.json, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")

    L = []
    L.append("# GPU check %s" % a.name)
    L.append("")
    L.append("- GPU: %s" % fmt(summary["gpu"]))
    L.append("- commit: `%s`" % fmt(commit))
    L.append("- produced by `tools/gpu-check.sh`; raw outputs in `bench/results/%s/`" % a.name)
    L.append("")
    L.append("## Steps")
    L.append("")
    L.append("| step | status | seconds | note | commit |")
    L.append("|---|---|---|---|---|")
    for s in steps:
        L.append("| %s | %s | %s | %s | %s |" % (s["name"], s["status"], fmt(s["seconds"]), s["note"],
                                                 short_commit(s["commit"])))
    L.append("")
    def outputs(records):
        return ", ".join("`%s`%s (%s: %s)" % (o["file"], " rows" if o["file"] == "kernels.json"
                                              else "", o["step"], o["status"]) for o in records)

    if left_out:
        L.append("Left out (their step's last record above is not ok, and they are not partial: "
                 "null in the JSON, as if missing): %s." % outputs(left_out))
        L.append("")
    if kept_failed:
        L.append("Kept from steps that failed or timed out after their run wrote every row (a "
                 "failed row says so itself, and its values are left out; gradcomp_perf exits 1 "
                 "for any failed row): %s." % outputs(kept_failed))
        L.append("")
    if unreadable:
        L.append("Unreadable (not a whole JSON object: cut short, empty or not JSON; null in the "
                 "JSON, as if missing): %s." % ", ".join("`%s`" % f for f in unreadable))
        L.append("")
    if partial:
        L.append("Partial outputs (their run stopped before its last row; the values from them "
                 "cover only the sizes it reached): %s." % ", ".join("`%s`" % f for f in partial))
        L.append("")
    L.append("## Against the goals")
    L.append("")
    L.append("| measure | value | goal | met |")
    L.append("|---|---|---|---|")
    L.append("| QSGD 4-bit encode+EF, fp32, n=2^26, d=512: fraction of copy bandwidth | %s | >= 0.9 | %s |"
             % (fmt(enc), fmt(summary["goals"]["encode_ef_ge_0.9_of_copy"])))
    L.append("| QSGD 4-bit encode+EF, bf16, n=2^26, d=512: fraction of copy bandwidth | %s | >= 0.8 | %s |"
             % (fmt(enc16["bfloat16"]), fmt(summary["goals"]["bf16_encode_ef_ge_0.8_of_copy"])))
    L.append("| QSGD 4-bit encode+EF, fp16, n=2^26, d=512: fraction of copy bandwidth | %s | >= 0.8 | %s |"
             % (fmt(enc16["half"]), fmt(summary["goals"]["fp16_encode_ef_ge_0.8_of_copy"])))
    L.append("| QSGD 4-bit decode, n=2^26, d=512: fraction of copy bandwidth | %s | >= 0.95 | %s |"
             % (fmt(dec), fmt(summary["goals"]["decode_ge_0.95_of_copy"])))
    L.append("| QSGD 4-bit decode, n=2^26: fraction of a write-only fill's bandwidth (its ceiling: "
             "it writes 4n and reads E(n), about n/2 bytes at 4 bits); the fill's fraction of copy bandwidth | %s; %s | reported | |"
             % (fmt(dec_fill), fmt(summary["fill_frac_of_copy"])))
    L.append("| QSGD 4-bit encode+EF, nearest rounding (GRADCOMP_ROUNDING=nearest), n=2^26, d=512: "
             "fraction of copy bandwidth, fp32 / bf16 / fp16 | %s / %s / %s | reported | |"
             % (fmt(near["float"]), fmt(near["bfloat16"]), fmt(near["half"])))
    for stem, _, _, words in LAUNCH_SPEEDUPS:
        v = [fmt(launch_speedups[(stem, t, lg)]) for lg in (22, 24) for t in ("float", "bfloat16")]
        L.append("| %s, fp32 / bf16, n=2^22 and 2^24 | %s / %s; %s / %s | reported | |"
                 % (words, v[0], v[1], v[2], v[3]))
    L.append("| nearest / stochastic encode time in the link model of gradcomp_perf's rows, N=8, "
             "64 MB, fp32 / bf16 (perf_n8_nearest over perf_n8) | %s / %s | reported | |"
             % (fmt(near_enc["float"]), fmt(near_enc["bfloat16"])))
    L.append("| 4-bit allreduce, nearest rounding, modeled speedup over NCCL fp32, 400 Gb/s, N=8, "
             "64 MB | %s | reported | |" % fmt(near400))
    L.append("| threshold top-k vs torch.topk(\\|x\\|), n=2^26, density 0.1%% | %s | >= 8x | %s |"
             % (fmt(topk), fmt(summary["goals"]["topk_ge_8x_torch_topk"])))
    L.append("| the same selector at the least sample rate (1e-4: a sample of max(1024, 64/density) "
             "entries; the default since 2026-12-04, when the row above is the same selector) "
             "| %s | reported | |" % fmt(topk_min))
    L.append("| the same selector with the look-back compaction (each tile waits for the counts "
             "of those before it; the library's until 2026-12-04, its compaction staged since) "
             "| %s | reported | |" % fmt(topk_lookback))
    L.append("| 4-bit allreduce modeled speedup over NCCL fp32, 10 Gb/s, N=8, 256 MB | %s | >= 5x | %s |"
             % (fmt(model), fmt(summary["goals"]["allreduce_qsgd4_model_ge_5x_nccl_10gbps_n8_256MB"])))
    gl = summary["goals"]
    L.append("| 4-bit allreduce pipelined model over NCCL fp32, 400 Gb/s, N=8, 256 MB (unpipelined: %s) "
             "| %s | >= 6.5x | %s |"
             % (fmt(model400), fmt(piped[400]),
                fmt(gl["allreduce_qsgd4_pipelined_model_ge_6.5x_nccl_400gbps_n8_256MB"])))
    L.append("| 4-bit allreduce pipelined model over NCCL fp32, 100 Gb/s, N=8, 256 MB (unpipelined: %s) "
             "| %s | >= 7.4x | %s |"
             % (fmt(summary["allreduce_qsgd4_unpipelined_model_speedup_100gbps_n8_256MB"]),
                fmt(piped[100]),
                fmt(gl["allreduce_qsgd4_pipelined_model_ge_7.4x_nccl_100gbps_n8_256MB"])))
    L.append("| flat / hier inter-node bytes, N=8 as 2 nodes x 4, 256 MB fp32 4-bit | %s | >= 3.5 | %s |"
             % (fmt(ratio), fmt(gl["hier_inter_bytes_ratio_ge_3.5_n8_l4"])))
    L.append("| hier modeled speedup over NCCL, 4 nodes x 8 GPUs, 100 Gb/s per node, 256 MB | %s | >= 6x | %s |"
             % (fmt(hier[100]), fmt(gl["hier_model_ge_6x_nccl_node100g_4x8_256MB"])))
    L.append("| hier pipelined modeled speedup over NCCL, 4 x 8, 400 Gb/s per node, 256 MB "
             "(%s pieces of %s B; unpipelined: %s) | %s | >= 5x | %s |"
             % (fmt(summary["hier_model_pieces_4x8_256MB"]),
                fmt(summary["hier_model_pipeline_bytes_4x8_256MB"]), fmt(hier[400]),
                fmt(hier_piped[400]), fmt(gl["hier_model_pipelined_ge_5x_nccl_node400g_4x8_256MB"])))
    L.append("| hier with GRADCOMP_AUTO, modeled speedup over NCCL, 4 x 8, 3200 Gb/s per node, "
             "256 MB (forced: %s) | %s | >= 0.97x | %s |"
             % (fmt(hier_piped[3200]), fmt(hier_auto),
                fmt(gl["hier_model_auto_ge_0.97x_nccl_node3200g_4x8_256MB"])))
    shaping = summary["tc_shaping_10gbps_n4"]
    shaping = {"netns": "netns, each rank's own veth shaped at L",
               "lo": "lo at N x L shared by all ranks (namespaces refused): not the model's "
                     "link of L per rank"}.get(shaping, fmt(shaping))
    L.append("| QSGD 4-bit measured speedup over NCCL on a tc-shaped 10 Gb/s link, N=4, 256 MB "
             "(shaping: %s; link-bound, i.e. NCCL unshaped beat 15 Gb/s of bus bandwidth: %s, "
             "at %s Gb/s) | %s | >= 5x | %s |"
             % (shaping, fmt(summary["tc_link_bound_10gbps_n4"]),
                fmt(summary["tc_nccl_unshaped_busbw_gbps_n4"]), fmt(tc_x),
                fmt(gl["measured_tc_ge_5x_nccl_10gbps_n4_256MB"])))
    L.append("| measured / modeled speedup on that link | %s | 0.85..1.15 | %s |"
             % (fmt(tc_vs), fmt(gl["measured_vs_model_tc_10gbps_within_15pct"])))
    L.append("| DDP hook QSGD 4-bit (layer-aware) accuracy vs uncompressed, MLP, points | %s | within 1 | %s |"
             % (fmt(summary["ddp_hook_qsgd4_acc_delta_pts"]),
                fmt(summary["goals"]["ddp_hook_qsgd4_within_1pt"])))
    L.append("| GPT val loss, QSGD 4-bit hook vs uncompressed, relative | %s | <= 0.01 | %s |"
             % (fmt(summary["lm_val_loss_rel_delta_qsgd4"]),
                fmt(summary["goals"]["lm_qsgd4_val_loss_within_1pct"])))
    L.append("| GPT val loss, DGC 0.1%% hook (top-k with error feedback and warm-up under AdamW, "
             "no momentum correction) vs uncompressed, relative | %s | <= 0.03 | %s |"
             % (fmt(summary["lm_val_loss_rel_delta_dgc"]),
                fmt(summary["goals"]["lm_dgc_val_loss_within_3pct"])))
    L.append("| GPT val loss, PowerSGD rank 4 (warm start, from step 30) vs uncompressed, "
             "relative | %s | reported | |"
             % fmt(summary["lm_val_loss_rel_delta_powersgd"]))
    L.append("| GPT val loss, QSGD 5-bit hook vs uncompressed, relative | %s | reported | |"
             % fmt(summary["lm_val_loss_rel_delta_qsgd5_hook"]))
    L.append("| GPT val loss, QSGD 4-bit hook with buckets of 128 vs uncompressed, relative | %s "
             "| reported | |" % fmt(summary["lm_val_loss_rel_delta_qsgd4_d128_hook"]))
    L.append("| GPT val loss, QSGD 4-bit hook, nearest rounding, buckets of 128 vs uncompressed, "
             "relative | %s | reported | |"
             % fmt(summary["lm_val_loss_rel_delta_qsgd4_nearest_d128_hook"]))
    L.append("| GPT val loss, QSGD 4-bit hook, square levels, nearest rounding (the goal's bytes) "
             "vs uncompressed, relative | %s | reported | |"
             % fmt(summary["lm_val_loss_rel_delta_qsgd4_square_nearest_hook"]))
    L.append("| GPT val loss, QSGD 4-bit hook, square levels (stochastic) vs uncompressed, "
             "relative | %s | reported | |"
             % fmt(summary["lm_val_loss_rel_delta_qsgd4_square_hook"]))
    L.append("| GPT val loss, QSGD 4-bit hook under momentum SGD vs uncompressed momentum SGD, "
             "relative | %s | reported | |" % fmt(summary["lm_val_loss_rel_delta_qsgd4_sgd"]))
    L.append("| GPT val loss, DGC 0.1%% in its setting (momentum SGD, momentum correction) vs "
             "uncompressed momentum SGD, relative | %s | reported | |"
             % fmt(summary["lm_val_loss_rel_delta_dgc_sgd"]))
    L.append("| gradient bytes per step, QSGD 4-bit hook / PowerSGD | %s | reported | |"
             % fmt(summary["lm_bytes_ratio_qsgd4_vs_powersgd"]))
    L.append("| 4-bit reduce-scatter modeled speedup over NCCL fp32, 10 Gb/s, N=8, 256 MB input | %s | >= 7x | %s |"
             % (fmt(rs_model), fmt(summary["goals"]["reducescatter_qsgd4_model_ge_7x_nccl_10gbps_n8_256MB"])))
    L.append("| GRADCOMP_AUTO regret: auto / min(forced QSGD 4-bit, NCCL) - 1, worst size 1..256 MB, N=2 | %s | <= 0.05 | %s |"
             % (fmt(auto_regret), fmt(gl["auto_regret_le_0.05"])))
    L.append("| GRADCOMP_AUTO regret, reduce-scatter: auto / min(forced QSGD 4-bit, NCCL) - 1, worst input size 1..256 MB, N=2 | %s | <= 0.05 | %s |"
             % (fmt(auto_rs_regret), fmt(gl["auto_rs_regret_le_0.05"])))
    L.append("")
    L.append("Reported beside the goals: 4-bit allreduce modeled at 400 Gb/s, N=8, 256 MB, "
             "unpipelined: %s; flat modeled speedup, 4 x 8 at 100 Gb/s per node: %s; hier at "
             "3200 Gb/s per node (8x400, where NCCL is as fast as the NICs allow): %s."
             % (fmt(model400), fmt(flat100), fmt(hier[3200])))
    if summary["tc_unavailable_reason"]:
        L.append("")
        L.append("Traffic shaping was refused: `%s`" % summary["tc_unavailable_reason"])
    L.append("")
    L.append("## Per-call checks of the sparse exchange")
    L.append("")
    L.append("Charged in the link model by their bytes at copy bandwidth (docs/benchmark.md, "
             "\"The sparse rows' kernels\"); their own time at n=2^26 beside the modeled time "
             "of perf_n8_sparse's 256 MB row at 400 Gb/s, N=8.")
    L.append("")
    L.append("| kernel | us per call | fraction of copy bandwidth | share of the row's modeled "
             "time at 400 Gb/s |")
    L.append("|---|---|---|---|")
    L.append("| received slot lists' check, 8 lists of %s slots (DGC 0.1%%) | %s | %s | %s (dgc) |"
             % (fmt(summary["sparse_check_lists_slots_2p26"]), fmt(lists_us),
                fmt(lists_row.get("frac_of_copy") if lists_row else None),
                fmt(summary["sparse_check_lists_frac_of_dgc_model_400gbps_n8_256MB"])))
    L.append("| rand-k's non-finite flag (reads v once) | %s | %s | %s (randk) |"
             % (fmt(flag_us), fmt(summary["nonfinite_flag_frac_of_copy"]),
                fmt(summary["nonfinite_flag_frac_of_randk_model_400gbps_n8_256MB"])))
    L.append("")
    if topk is None and topk_gpus_differ(kdoc, tdoc):
        L.append("Top-k: no speedup over torch.topk: kernels.json was measured on %s and "
                 "torch_topk.json on %s (steps of different calls); run the kernels and "
                 "torch_topk steps again in one call." % (kdoc["gpu"], tdoc["gpu"]))
        L.append("")
    elif topk is None:
        L.append("Top-k: no speedup over torch.topk (the kernels step wrote no topk_threshold "
                 "row at n=2^26, density 0.1%, or torch_topk.json has no row to set it against; "
                 "see their raw outputs).")
        L.append("")
    L.append("## Kernel limiters (Nsight Compute)")
    L.append("")
    if prof.get("kernels"):
        L.append("What bounds each kernel at n=2^26 (tools/ncu_limits.py: memory when DRAM or "
                 "memory throughput is >= 60% of peak and above the SM's, issue when the SM "
                 "throughput or the share of cycles with an instruction issued is >= 60%, "
                 "latency otherwise).")
        L.append("")
        L.append("| kernel | launch | us | DRAM % | memory % | SM % | issued % of cycles | "
                 "achieved occupancy % | registers | limiter |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for k in prof["kernels"]:
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |"
                     % (k.get("kernel"), k.get("launch"), fmt(k.get("duration_us")),
                        fmt(k.get("dram_pct")), fmt(k.get("memory_pct")), fmt(k.get("sm_pct")),
                        fmt(k.get("issue_pct")), fmt(k.get("occupancy_pct")),
                        fmt(k.get("registers")), k.get("limiter")))
    else:
        why = prof.get("unavailable_reason")
        if not why and "profile" in {o["step"] for o in left_out}:
            why = "the profile step's last record is '%s'" % last["profile"]
        elif not why and last.get("profile", "ok") != "ok":
            why = "the profile step's last record is '%s', and it wrote no profile.json" % last["profile"]
        L.append("Not profiled: %s" % (why or "the profile step did not run"))
    L.append("")
    L.append("## Tests")
    L.append("")
    L.append("- CTest with `GRADCOMP_TEST_GPU=1`: %s passed, %s failed"
             % (fmt(summary["tests_passed"]), fmt(summary["tests_failed"])))
    if summary["tests_unfinished"] is not None:
        L.append("- CTest was cut before its summary (the tests step's limit): %d tests did not "
                 "finish; failed: %s" % (summary["tests_unfinished"],
                                         ", ".join(tests.get("tests_failed_names", [])) or "none"))
    L.append("- gradcomp_perf allreduce rows with the same result bits on every rank: %s; "
             "differing: %s" % (fmt(summary["perf_rows_identical_on_all_ranks"]),
                                fmt(summary["perf_rows_differing_between_ranks"])))
    L.append("- multi-process NCCL tests: %s passed, %s failed"
             % (fmt(summary["multirank_tests_passed"]), fmt(summary["multirank_tests_failed"])))
    L.append("- of which hierarchical (N=4, GRADCOMP_LOCAL_SIZE=2): %s passed, %s failed"
             % (fmt(summary["multirank_hier_tests_passed"]),
                fmt(summary["multirank_hier_tests_failed"])))
    L.append("- PyTorch DDP accuracy delta (points): QSGD 4-bit %s, DGC %s, QSGD 4-bit "
             "hierarchical (4 ranks, GRADCOMP_LOCAL_SIZE=2) %s"
             % (fmt(summary["ddp_qsgd4_acc_delta_pts"]), fmt(summary["ddp_dgc_acc_delta_pts"]),
                fmt(summary["ddp_hier_qsgd4_acc_delta_pts"])))
    L.append("- multi-process reduce-scatter tests: %s passed, %s failed"
             % (fmt(summary["multirank_rs_tests_passed"]), fmt(summary["multirank_rs_tests_failed"])))
    L.append("- of the multi-process tests, with non-blocking NCCL communicators "
             "(NCCL_COMM_BLOCKING=0): %s passed, %s failed"
             % (fmt(summary["multirank_nonblocking_tests_passed"]),
                fmt(summary["multirank_nonblocking_tests_failed"])))
    L.append("- PyTorch FSDP2 accuracy delta (points): QSGD 4-bit %s, DGC %s"
             % (fmt(summary["fsdp_qsgd4_acc_delta_pts"]), fmt(summary["fsdp_dgc_acc_delta_pts"])))
    L.append("")
    fails = t("tests_failed.txt")
    if fails:
        L += ["Failed tests:", "", "```", fails.strip(), "```", ""]
    for md in ("multirank.md", "ddp.md", "tc_link.md", "fsdp.md", "torch_hooks.md", "torch_hooks_hsdp.md",
               "lm.md"):
        body = t(md)
        if body:
            # lm.md links its PNG beside it, in the raw folder
            L += [body.strip().replace("](lm_loss.png)", "](%s/lm_loss.png)" % a.name), ""]
    plots = [("busbw", "Bus bandwidth"), ("model_speedup", "Modeled speedup over NCCL"),
             ("kernels", "Kernel throughput, fraction of copy"), ("topk", "Top-k selection")]
    shown = [(p, title) for p, title in plots
             if os.path.exists(os.path.join(os.path.dirname(a.md), a.plots_prefix + p + ".png"))]
    if shown:
        L += ["## Plots", ""]
        for p, title in shown:
            L += ["### " + title, "", "![%s](%s%s.png)" % (title, a.plots_prefix, p), ""]
    for name, title in (("perf_n1.txt", "gradcomp_perf, 1 rank"),
                        ("perf_n8.txt", "gradcomp_perf, 8 ranks on one GPU (modeled columns)"),
                        ("perf_n8_nearest.txt",
                         "gradcomp_perf, 8 ranks, GRADCOMP_ROUNDING=nearest, 64 MB"),
                        ("perf_n8_pipe.txt",
                         "gradcomp_perf, 8 ranks, pipelined two-shot (GRADCOMP_PIPELINE_BYTES=44739242, 6 pieces)"),
                        ("perf_n8_ring_pipe.txt",
                         "gradcomp_perf, 8 ranks, pipelined ring (GRADCOMP_PIPELINE_BYTES=64M)"),
                        ("perf_n8_hier_pipe.txt",
                         "gradcomp_perf, 8 ranks as 4 nodes of 2, pipelined hierarchy "
                         "(GRADCOMP_PIPELINE_BYTES=32M)"),
                        ("perf_n8_sparse.txt", "gradcomp_perf, sparse methods, 8 ranks"),
                        ("perf_n8_rs.txt", "gradcomp_perf -C reduce_scatter, 8 ranks (modeled columns)"),
                        ("perf_n8_rs_pipe.txt", "gradcomp_perf -C reduce_scatter, 8 ranks, pipelined "
                         "(GRADCOMP_PIPELINE_BYTES=64M)"),
                        ("perf_n8_hier_rs.txt", "gradcomp_perf -C reduce_scatter --local-size 4, 8 ranks "
                         "(hierarchical, two link classes)"),
                        ("perf_n8_hier_rs_pipe.txt", "gradcomp_perf -C reduce_scatter --local-size 2, "
                         "8 ranks, pipelined hierarchical (GRADCOMP_PIPELINE_BYTES=44739242, 3 pieces)"),
                        ("perf_auto.txt", "gradcomp_perf --auto, 2 ranks (GRADCOMP_AUTO's regret)"),
                        ("perf_auto_rs.txt", "gradcomp_perf -C reduce_scatter --auto, 2 ranks "
                         "(GRADCOMP_AUTO's regret on the reduce-scatter)"),
                        ("kernels.txt", "gradcomp_kernels_perf"),
                        ("profile.txt", "Nsight Compute, tools/ncu_profile.sh"),
                        ("torch_topk.txt", "torch.topk on the same data")):
        body = t(name)
        L += ["## " + title, ""]
        L += (["```", body.rstrip(), "```"] if body else ["(no output: the step failed or was skipped)"])
        L.append("")
    with open(a.md, "w") as f:
        f.write("\n".join(L))
    print(json.dumps({k: v for k, v in summary.items() if k != "steps"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
