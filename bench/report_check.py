#!/usr/bin/env python3
"""CTest check of tools/gpu_report.py: from a synthetic set of raw outputs it
must pick the numbers the issue names (2^26 fp32 4-bit kernels, N=8 256 MB
QSGD at 10 Gb/s, the multirank and DDP files), judge the goals, leave what is
missing null, and write the Markdown report.
Usage: report_check.py SOURCE_DIR WORKDIR
"""
import json
import os
import subprocess
import sys

from checklib import expect, verdict

src, work = sys.argv[1], sys.argv[2]
raw = os.path.join(work, "raw")
os.makedirs(raw, exist_ok=True)
N26, MB256 = 1 << 26, 256 << 20


def dump(name, obj):
    with open(os.path.join(raw, name), "w") as f:
        json.dump(obj, f)


def krow(kernel, dtype, bits, n, frac):
    return {"kernel": kernel, "dtype": dtype, "bits": bits, "n": n, "time_us": 1.0,
            "ideal_bytes": 1, "gbps": frac * 3000, "copy_gbps": 3000, "frac_of_copy": frac}


def srow(kernel, n, us, frac=0.5, density=None, lists=None, k=None):
    r = {"kernel": kernel, "dtype": "float", "bits": 0, "n": n, "time_us": us, "ideal_bytes": 1,
         "gbps": 1, "copy_gbps": 3000, "frac_of_copy": frac}
    if density is not None:
        r.update({"density": density, "k": k})
    if lists is not None:
        r["lists"] = lists
    return r


# Decoys around the right rows: other n, type, bits must not be picked; the
# nearest-rounding rows come first, so a stochastic key that took them fails.
dump("kernels.json", {"gpu": "Test GPU", "rows": [
    krow("qsgd_encode_ef_nearest", "float", 4, N26 * 4, 0.12),
    krow("qsgd_encode_ef_nearest", "float", 8, N26, 0.13),
    krow("qsgd_encode_ef_nearest", "float", 4, N26, 0.91),
    krow("qsgd_encode_ef_nearest", "bfloat16", 4, N26, 0.83),
    krow("qsgd_encode_ef_nearest", "half", 4, N26, 0.79),
    # Square levels' rows (a name that begins as the default's), before the default's.
    krow("qsgd_encode_ef_square", "float", 4, N26 * 4, 0.14),
    krow("qsgd_encode_ef_square", "float", 4, N26, 0.93),
    krow("qsgd_encode_ef_square", "bfloat16", 4, N26, 0.86),
    krow("qsgd_encode_ef_square", "half", 4, N26, 0.84),
    # The sparse checks at 2^26: 8 lists at density 0.1% (decoys: another density, list
    # count, n), and the non-finite flag (decoy: another n).
    srow("sparse_check_lists", N26, 99.0, density=0.01, lists=8, k=1342178),
    srow("sparse_check_lists", N26, 98.0, density=0.001, lists=4, k=134218),
    srow("sparse_check_lists", N26 // 4, 97.0, density=0.001, lists=8, k=33555),
    srow("sparse_check_lists", N26, 6.0, 0.02, density=0.001, lists=8, k=134218),
    srow("nonfinite_flag", N26 * 4, 320.0), srow("nonfinite_flag", N26, 80.0, 0.45),
    krow("qsgd_encode_ef", "float", 4, N26 * 4, 0.11), krow("qsgd_encode_ef", "half", 4, N26, 0.22),
    krow("qsgd_encode_ef", "float", 8, N26, 0.33), krow("qsgd_encode_ef", "float", 4, N26, 0.85),
    krow("qsgd_decode_acc", "float", 4, N26, 0.44), krow("qsgd_decode", "float", 4, N26, 0.75),
    # The write-only fill (decoy first: another n); decode's 2250 GB/s over 2500.
    krow("fill", "float", 0, N26 // 4, 0.5), krow("fill", "float", 0, N26, 2500.0 / 3000),
    krow("qsgd_encode_ef", "bfloat16", 8, N26, 0.99), krow("qsgd_encode_ef", "bfloat16", 4, N26, 0.81),
    # The batched encode of 8 pieces and its 8 launches (decoys: another n, another type).
    krow("qsgd_encode_ef_batch8", "float", 4, 1 << 20, 0.9), krow("qsgd_encode_ef_batch8", "half", 4, 1 << 22, 0.9),
    krow("qsgd_encode_ef_batch8", "float", 4, 1 << 22, 0.6), krow("qsgd_encode_ef_8_launches", "float", 4, 1 << 22, 0.4),
    krow("qsgd_encode_ef_batch8", "float", 4, 1 << 24, 0.8), krow("qsgd_encode_ef_8_launches", "float", 4, 1 << 24, 0.64),
    krow("qsgd_encode_ef_batch8", "bfloat16", 4, 1 << 22, 0.5), krow("qsgd_encode_ef_8_launches", "bfloat16", 4, 1 << 22, 0.25),
    krow("qsgd_decode_batch8", "float", 4, 1 << 20, 0.9), krow("qsgd_decode_batch8", "float", 4, 1 << 22, 0.7),
    krow("qsgd_decode_8_launches", "float", 4, 1 << 22, 0.28),
    krow("qsgd_decode_batch8", "bfloat16", 4, 1 << 24, 0.9), krow("qsgd_decode_8_launches", "bfloat16", 4, 1 << 24, 0.3),
    # The fused owner's sum and its launches (decoys: another n, another type).
    krow("qsgd_sum8", "float", 4, 1 << 20, 0.99), krow("qsgd_sum8", "half", 4, 1 << 22, 0.99),
    krow("qsgd_sum8", "float", 4, 1 << 22, 0.8), krow("qsgd_sum8_launches", "float", 4, 1 << 22, 0.2),
    krow("qsgd_sum8", "bfloat16", 4, 1 << 24, 0.7), krow("qsgd_sum8_launches", "bfloat16", 4, 1 << 24, 0.1)]})
# tools/ncu_limits.py's summary of the profile step.
dump("profile.json", {"unavailable_reason": None, "kernels": [
    {"kernel": "qsgdEncodeWarpKernel<4>", "launch": "qsgd_encode_ef float 4", "duration_us": 310.0,
     "dram_pct": 81.0, "memory_pct": 82.0, "sm_pct": 40.0, "issue_pct": 35.0,
     "occupancy_pct": 55.0, "registers": 55, "limiter": "memory"}]})


def prow(size, bits, dtype, speedups, failed=False):
    return {"size": size, "method": "qsgd", "bits": bits, "dtype": dtype, "failed": failed,
            "model": [{"link_gbps": g, "speedup": s} for g, s in speedups]}


def proj(nodes, local, gbps, hier, flat, ratio, piped=None, auto=None):
    return {"nodes": nodes, "local": local, "node_gbps": gbps, "hier_speedup": hier,
            "flat_speedup": flat, "inter_bytes_ratio_flat_vs_hier": ratio,
            "hier_pipelined_speedup": piped, "auto_speedup": auto,
            "hier_pipeline_bytes": 8 << 20, "hier_pieces": 4}


# Decoy projections on the rows that must not be picked; on the right row,
# other shapes and rates around the 4 x 8 and 2 x 4 points.
decoy = [proj(4, 8, 100, 99.0, 99.0, 99.0)]
right = prow(MB256, 4, "float", [(10, 7.5), (25, 4.0), (100, 1.5), (400, 1.25)])
right["projection"] = [proj(2, 8, 100, 11.0, 12.0, 8.0), proj(4, 4, 100, 13.0, 14.0, 4.0),
                       proj(4, 8, 100, 6.5, 1.1, 8.0), proj(4, 8, 400, 2.5, 1.0, 8.0, 5.2, 5.2),
                       proj(4, 8, 3200, 1.02, 0.9, 8.0, 0.8, 1.0), proj(2, 4, 100, 9.0, 3.0, 4.0),
                       proj(2, 4, 3200, 9.0, 3.0, 4.0, 9.0, 0.5)]
bf16 = prow(MB256, 4, "bfloat16", [(10, 2.0)])
bf16["projection"] = decoy
# The 64 MB rows the nearest-rounding run is compared with (stochastic; a nearest decoy).
mb64 = prow(MB256 // 4, 4, "float", [(10, 1.0)])
mb64["encode_us"] = 100.0
mb64_bf16 = prow(MB256 // 4, 4, "bfloat16", [(10, 1.0)])
mb64_bf16["encode_us"] = 80.0
mb64_near = prow(MB256 // 4, 4, "float", [(10, 1.0)])
mb64_near.update({"encode_us": 1.0, "rounding": "nearest"})
# Each rank's result hashed and compared (identical): counted over every perf_*.json,
# a row without the field (a reduce-scatter's null) in neither count.
mb64["identical"] = mb64_bf16["identical"] = True
dump("perf_n8.json", {"rows": [
    mb64_near, mb64, mb64_bf16, bf16, prow(MB256, 8, "float", [(10, 3.0)]), right]})


def nrow(size, dtype, enc, rounding="nearest", speedup400=None):
    r = prow(size, 4, dtype, [(10, 9.0), (400, speedup400 or 0.1)])
    r.update({"encode_us": enc, "rounding": rounding})
    return r


# GRADCOMP_ROUNDING=nearest at 64 MB (decoys: a stochastic row, another size).
dump("perf_n8_nearest.json", {"rows": [
    nrow(MB256 // 4, "float", 999.0, "stochastic"), nrow(MB256, "float", 5.0),
    nrow(MB256 // 4, "float", 90.0, speedup400=3.3), nrow(MB256 // 4, "bfloat16", 60.0)]})
# The pipelined run: the 256 MB fp32 4-bit row cut into pieces; a decoy row of
# another size, and the unpipelined "speedup" beside the pipelined one.
piped = prow(MB256, 4, "float", [])
piped.update({"pieces": 4, "piece_bytes": 64 << 20, "identical": True})
piped["model"] = [{"link_gbps": g, "speedup": 0.5, "pipelined_speedup": s}
                  for g, s in [(10, 7.8), (100, 7.2), (400, 5.6)]]
other = prow(MB256 // 4, 4, "float", [])
other["model"] = [{"link_gbps": 400, "speedup": 0.5, "pipelined_speedup": 99.0}]
other["identical"] = False  # its ranks' results differ: counted, never a goal's row
dump("perf_n8_pipe.json", {"rows": [other, piped]})
# The sparse rows' modeled times at 400 Gb/s (the checks' denominators); decoys:
# another link, method, size.
def sparse_row(method, size, models):
    return {"size": size, "method": method, "bits": 0, "dtype": "float", "failed": False,
            "model": [{"link_gbps": g, "time_us": t} for g, t in models]}


dump("perf_n8_sparse.json", {"rows": [
    sparse_row("dgc", MB256 // 4, [(400, 11.0)]), sparse_row("topk", MB256, [(400, 999.0)]),
    sparse_row("dgc", MB256, [(100, 500.0), (400, 120.0)]),
    sparse_row("randk", MB256, [(10, 900.0), (400, 40.0)])]})
dump("tc_link.json", {"tc_unavailable_reason": None, "measured_speedup_tc_10gbps_n4_256MB": 5.5,
                      "measured_vs_model_tc_10gbps": 0.8, "runs": []})
dump("multirank.json", {"multirank_tests_passed": 12, "multirank_tests_failed": 1,
                        "multirank_rs_tests_passed": 5, "multirank_rs_tests_failed": 0})


def rsrow(size, nranks, speedup, collective="reduce_scatter"):
    r = prow(size, 4, "float", [(10, speedup)])
    r.update({"collective": collective, "nranks": nranks})
    return r


# 256 MB of input: the N=8 row of 32 MB per rank (decoys: 256 MB output, an allreduce row).
dump("perf_n8_rs.json", {"rows": [rsrow(MB256, 8, 1.0), rsrow(MB256 // 8, 8, 1.5, "all_reduce"),
                                  rsrow(MB256 // 8, 8, 7.4)]})
dump("fsdp.json", {"fsdp_qsgd4_acc_delta_pts": 0.3, "fsdp_dgc_acc_delta_pts": -0.6})
def sweep(first, last, worst):
    """A complete --auto sweep, factor 4, its worst regret `worst`."""
    rows, size = [], first
    while size <= last:
        rows.append({"size": size, "failed": False, "auto_regret": worst if size == last else 0.0,
                     "auto_wrong": 0, "auto_identical": True})
        size *= 4
    return {"complete": True, "auto_regret_max_frac": worst, "rows": rows}


dump("perf_auto.json", sweep(1 << 20, MB256, 0.031))
dump("perf_auto_rs.json", sweep(512 << 10, MB256 // 2, 0.072))
dump("tests.json", {"tests_passed": 40, "tests_failed": 0})
with open(os.path.join(raw, "steps.tsv"), "w") as f:
    f.write("build\tok\t100\t\nddp\tmissing\t0\tnot in this tree\n")
with open(os.path.join(raw, "perf_n8.txt"), "w") as f:
    f.write("# table text\n")

md, js = os.path.join(work, "r.md"), os.path.join(work, "r.json")
subprocess.check_call([sys.executable, os.path.join(src, "tools", "gpu_report.py"), "--dir", raw,
                       "--name", "2030-01-02-test-gpu", "--md", md, "--json", js])
r = json.load(open(js))
for key in ["gpu", "date", "commit", "qsgd4_encode_ef_frac_of_copy", "qsgd4_decode_frac_of_copy",
            "topk_dgc_speedup_vs_torch_topk", "allreduce_qsgd4_model_speedup_10gbps_n8_256MB",
            "ddp_qsgd4_acc_delta_pts", "ddp_dgc_acc_delta_pts", "multirank_tests_passed",
            "multirank_tests_failed"]:
    expect(key in r, "key %s present" % key)
expect(r.get("gpu") == "Test GPU", "gpu from the kernel run")
expect(r.get("perf_rows_identical_on_all_ranks") == 3, "rows identical on all ranks, all files")
expect(r.get("perf_rows_differing_between_ranks") == 1, "rows whose ranks differ, all files")
expect(r.get("date") == "2030-01-02", "date from the name")
expect(r.get("qsgd4_encode_ef_frac_of_copy") == 0.85, "encode: fp32, 4-bit, 2^26 row")
expect(r.get("qsgd4_decode_frac_of_copy") == 0.75, "decode: overwrite, 4-bit, 2^26 row")
expect(abs(r.get("qsgd4_decode_frac_of_fill", 0) - 0.9) < 1e-12, "decode over the 2^26 fill")
expect(abs(r.get("fill_frac_of_copy", 0) - 2500.0 / 3000) < 1e-12, "fill: its 2^26 row")
expect(r.get("qsgd4_bf16_encode_ef_frac_of_copy") == 0.81, "bf16 encode: 4-bit, 2^26 row")
expect(r.get("qsgd4_fp16_encode_ef_frac_of_copy") == 0.22, "fp16 encode: 4-bit, 2^26 row")
# The batched and fused launches over the launches they replace: the ratio of the two rows'
# fractions, or null where a row is missing.
for key, want, why in (
        ("qsgd4_encode_batch8_speedup_vs_launches_2p22", 1.5,
         "batched encode of 8 pieces over 8 launches, fp32 2^22: 0.6 / 0.4"),
        ("qsgd4_encode_batch8_speedup_vs_launches_2p24", 1.25,
         "batched encode over launches, fp32 2^24: 0.8 / 0.64"),
        ("qsgd4_bf16_encode_batch8_speedup_vs_launches_2p22", 2.0,
         "batched encode over launches, bf16 2^22: 0.5 / 0.25"),
        ("qsgd4_bf16_encode_batch8_speedup_vs_launches_2p24", None,
         "batched encode, bf16 2^24: no rows, null"),
        ("qsgd4_decode_batch8_speedup_vs_launches_2p22", 2.5,
         "batched decode over launches, 2^22: 0.7 / 0.28"),
        ("qsgd4_decode_batch8_speedup_vs_launches_2p24", None,
         "batched decode, 2^24: no rows, null"),
        ("qsgd4_bf16_decode_batch8_speedup_vs_launches_2p24", 3.0,
         "batched bf16 decode over decodes with conversions, 2^24: 0.9 / 0.3 (not the fp32 rows)"),
        ("qsgd4_sum8_speedup_vs_launches_2p22", 4.0,
         "fused sum over its launches, fp32 2^22: 0.8 / 0.2"),
        ("qsgd4_sum8_speedup_vs_launches_2p24", None, "fused sum, fp32 2^24: no rows, null"),
        ("qsgd4_bf16_sum8_speedup_vs_launches_2p24", 7.0,
         "fused sum over its launches, bf16 2^24: 0.7 / 0.1")):
    got = r.get(key, "absent")
    expect(got is None if want is None
           else isinstance(got, float) and abs(got - want) < 1e-12, "%s (got %r)" % (why, got))
expect(r.get("qsgd4_nearest_encode_ef_frac_of_copy") == 0.91, "nearest encode: fp32 4-bit 2^26 row")
expect(r.get("qsgd4_bf16_nearest_encode_ef_frac_of_copy") == 0.83, "nearest encode: bf16 row")
expect(r.get("qsgd4_fp16_nearest_encode_ef_frac_of_copy") == 0.79, "nearest encode: fp16 row")
expect(abs(r.get("qsgd4_nearest_vs_stochastic_model_encode_n8_64MB", 0) - 0.9) < 1e-12,
       "nearest / stochastic model encode time, fp32 64 MB: 90 / 100")
expect(abs(r.get("qsgd4_bf16_nearest_vs_stochastic_model_encode_n8_64MB", 0) - 0.75) < 1e-12,
       "nearest / stochastic model encode time, bf16 64 MB: 60 / 80")
expect(r.get("allreduce_qsgd4_nearest_model_speedup_400gbps_n8_64MB") == 3.3,
       "nearest row's modeled speedup at 400 Gb/s")
expect(r.get("sparse_check_lists_us_n8_2p26") == 6.0, "slot lists' check: 8 lists, 0.1%, 2^26")
expect(r.get("sparse_check_lists_slots_2p26") == 134218, "slot lists' check: slots of that row")
expect(abs(r.get("sparse_check_lists_frac_of_dgc_model_400gbps_n8_256MB", 0) - 0.05) < 1e-12,
       "slot lists' check over the 256 MB dgc row's modeled time at 400 Gb/s: 6 / 120")
expect(r.get("nonfinite_flag_us_2p26") == 80.0, "non-finite flag at 2^26")
expect(r.get("nonfinite_flag_frac_of_copy") == 0.45, "non-finite flag: its row's frac_of_copy")
expect(abs(r.get("nonfinite_flag_frac_of_randk_model_400gbps_n8_256MB", 0) - 2.0) < 1e-12,
       "non-finite flag over the 256 MB randk row's modeled time at 400 Gb/s: 80 / 40")
expect((r.get("kernel_limiters") or [{}])[0].get("limiter") == "memory",
       "kernel limiters from profile.json")
expect(r.get("allreduce_qsgd4_model_speedup_10gbps_n8_256MB") == 7.5, "model: fp32 4-bit 256 MB at 10")
expect(r.get("allreduce_qsgd4_model_speedup_n8_256MB", {}).get("100") == 1.5, "model at 100 Gb/s")
expect(r.get("allreduce_qsgd4_model_speedup_400gbps_n8_256MB") == 5.6, "pipelined model at 400 Gb/s")
expect(r.get("allreduce_qsgd4_model_speedup_100gbps_n8_256MB") == 7.2, "pipelined model at 100 Gb/s")
expect(r.get("allreduce_qsgd4_unpipelined_model_speedup_400gbps_n8_256MB") == 1.25,
       "unpipelined model at 400 Gb/s, from perf_n8")
expect(r.get("allreduce_qsgd4_unpipelined_model_speedup_100gbps_n8_256MB") == 1.5,
       "unpipelined model at 100 Gb/s, from perf_n8")
expect(r.get("allreduce_qsgd4_pipeline_bytes_n8_256MB") == 64 << 20, "piece size of the pipelined row")
expect(r.get("goals", {}).get("allreduce_qsgd4_pipelined_model_ge_6.5x_nccl_400gbps_n8_256MB") is False,
       "5.6x misses 6.5x")
expect(r.get("goals", {}).get("allreduce_qsgd4_pipelined_model_ge_7.4x_nccl_100gbps_n8_256MB") is False,
       "7.2x misses 7.4x")
expect(r.get("hier_model_speedup_node100g_4x8_256MB") == 6.5, "hier 4 x 8 at 100 Gb/s per node")
expect(r.get("hier_model_speedup_node400g_4x8_256MB") == 5.2, "hier 4 x 8 at 400 Gb/s, pipelined")
expect(r.get("hier_unpipelined_model_speedup_node400g_4x8_256MB") == 2.5,
       "hier 4 x 8 at 400 Gb/s per node, unpipelined")
expect(r.get("hier_model_pipeline_bytes_4x8_256MB") == 8 << 20, "the projection's piece size")
expect(r.get("hier_model_pieces_4x8_256MB") == 4, "the projection's pieces")
expect(r.get("hier_model_speedup_node3200g_4x8_256MB") == 1.0, "hier 4 x 8 at 3200 Gb/s, auto")
expect(r.get("hier_forced_model_speedup_node3200g_4x8_256MB") == 0.8,
       "hier 4 x 8 at 3200 Gb/s, compression forced")
expect(r.get("flat_model_speedup_node100g_4x8_256MB") == 1.1, "flat 4 x 8 at 100 Gb/s per node")
expect(r.get("hier_inter_bytes_ratio_vs_flat_n8_l4") == 4.0, "inter-node bytes ratio at 2 x 4")
expect(r.get("measured_speedup_tc_10gbps_n4_256MB") == 5.5, "tc: measured speedup from tc_link.json")
expect(r.get("measured_vs_model_tc_10gbps") == 0.8, "tc: measured / model from tc_link.json")
expect("tc_unavailable_reason" in r and r["tc_unavailable_reason"] is None, "tc: shaping worked")
expect(r.get("auto_regret_max_frac") == 0.031, "auto regret from perf_auto.json")
expect(r.get("goals", {}).get("auto_regret_le_0.05") is True, "0.031 meets the 0.05 goal")
expect(r.get("auto_rs_regret_max_frac") == 0.072, "reduce-scatter auto regret from perf_auto_rs.json")
expect(r.get("goals", {}).get("auto_rs_regret_le_0.05") is False, "0.072 misses the 0.05 goal")
expect(r.get("topk_dgc_speedup_vs_torch_topk") is None, "top-k null without selector times")
expect(r.get("ddp_qsgd4_acc_delta_pts") is None, "DDP null without ddp.json")
expect(r.get("multirank_tests_passed") == 12 and r.get("multirank_tests_failed") == 1, "multirank counts")
expect(r.get("multirank_rs_tests_failed") == 0, "multirank reduce-scatter failures")
expect(r.get("reducescatter_qsgd4_model_speedup_10gbps_n8_256MB") == 7.4,
       "reduce-scatter model: N=8 row whose input is 256 MB")
expect(r.get("goals", {}).get("reducescatter_qsgd4_model_ge_7x_nccl_10gbps_n8_256MB") is True,
       "7.4x meets 7x")
expect(r.get("fsdp_qsgd4_acc_delta_pts") == 0.3 and r.get("fsdp_dgc_acc_delta_pts") == -0.6,
       "FSDP deltas from fsdp.json")
g = r.get("goals", {})
expect(g.get("encode_ef_ge_0.9_of_copy") is False, "0.85 misses the 0.9 goal")
expect(g.get("bf16_encode_ef_ge_0.8_of_copy") is True, "0.81 meets the bf16 0.8 goal")
expect(g.get("fp16_encode_ef_ge_0.8_of_copy") is False, "0.22 misses the fp16 0.8 goal")
expect(g.get("decode_ge_0.95_of_copy") is False, "0.75 misses the 0.95 goal")
expect(g.get("allreduce_qsgd4_model_ge_5x_nccl_10gbps_n8_256MB") is True, "7.5x meets 5x")
expect(g.get("topk_ge_8x_torch_topk") is None, "unmeasured goal is null")
expect(g.get("hier_inter_bytes_ratio_ge_3.5_n8_l4") is True, "ratio 4 meets 3.5")
expect(g.get("hier_model_ge_6x_nccl_node100g_4x8_256MB") is True, "6.5x meets 6x")
expect(g.get("hier_model_pipelined_ge_5x_nccl_node400g_4x8_256MB") is True, "5.2x meets 5x")
expect(g.get("hier_model_auto_ge_0.97x_nccl_node3200g_4x8_256MB") is True, "auto's 1.0x meets 0.97x")
expect(g.get("measured_tc_ge_5x_nccl_10gbps_n4_256MB") is True, "5.5x meets 5x")
expect(g.get("measured_vs_model_tc_10gbps_within_15pct") is False, "0.8 is outside 0.85..1.15")
expect([s["name"] for s in r.get("steps", [])] == ["build", "ddp"], "steps from steps.tsv")
text = open(md).read()
expect("| 0.85 | >= 0.9 | no |" in text, "report table shows the encode value and verdict")
expect("| qsgdEncodeWarpKernel<4> | qsgd_encode_ef float 4 | 310 |" in text and "| memory |" in text,
       "report shows the kernel limiters")
expect("# table text" in text, "report includes the benchmark tables")
expect("| 0.91 / 0.83 / 0.79 | reported |" in text, "report shows the nearest encode fractions")
expect("| 0.9 / 0.75 | reported |" in text, "report shows the nearest / stochastic model encode")
expect("| received slot lists' check, 8 lists of 134218 slots (DGC 0.1%) | 6 | 0.02 | 0.05 (dgc) |"
       in text, "report shows the slot lists' check")
expect("| rand-k's non-finite flag (reads v once) | 80 | 0.45 | 2 (randk) |" in text,
       "report shows the non-finite flag")

# With selector rows as gradcomp_kernels_perf writes them and torch_topk.py's
# file, the top-k ratio is torch's 2^26, 0.1% time over the threshold row's
# (decoys: exact rows, other n and density).
def trow(kernel, n, density, us):
    return {"kernel": kernel, "dtype": "float", "bits": 0, "n": n, "time_us": us,
            "ideal_bytes": 4 * n, "gbps": 1, "copy_gbps": 3000, "frac_of_copy": 0.1,
            "density": density, "k": 1}


kdoc = json.load(open(os.path.join(raw, "kernels.json")))
kdoc["rows"] += [trow("topk_exact", N26, 0.001, 50.0), trow("topk_threshold", N26, 0.01, 40.0),
                 trow("topk_threshold", N26 // 4, 0.001, 30.0),
                 trow("topk_threshold_min_sample", N26, 0.01, 20.0),
                 trow("topk_threshold", N26, 0.001, 200.0),
                 trow("topk_threshold_min_sample", N26, 0.001, 125.0),
                 trow("topk_threshold_lookback", N26, 0.001, 100.0)]
dump("kernels.json", kdoc)
dump("torch_topk.json", {"rows": [
    {"n": N26, "density": 0.01, "k": 1, "torch_topk_abs_us": 9999.0, "torch_topk_us": 1, "copy_us": 1},
    {"n": N26, "density": 0.001, "k": 1, "torch_topk_abs_us": 1000.0, "torch_topk_us": 1,
     "copy_us": 1}]})
# Shaping refused: the exact error travels to the report.
dump("tc_link.json", {"tc_unavailable_reason": "RTNETLINK answers: Operation not permitted",
                      "measured_speedup_tc_10gbps_n4_256MB": None, "runs": []})
os.remove(os.path.join(raw, "profile.json"))
# The fp32 nearest row's kernels could not be timed: gradcomp_perf writes encode_us 0, no model.
ndoc = json.load(open(os.path.join(raw, "perf_n8_nearest.json")))
for row in ndoc["rows"]:
    if row["size"] == MB256 // 4 and row["dtype"] == "float" and row["rounding"] == "nearest":
        row.update({"encode_us": 0, "kernels_measured": False, "model": [],
                    "model_missing": "rank 0 could not time the row's kernels alone"})
dump("perf_n8_nearest.json", ndoc)
adoc = json.load(open(os.path.join(raw, "perf_auto.json")))
adoc["rows"][-1]["failed"] = True  # the 256 MB row: the worst size unknown
dump("perf_auto.json", adoc)
rdoc = json.load(open(os.path.join(raw, "perf_auto_rs.json")))
dump("perf_auto_rs.json", dict(rdoc, rows=rdoc["rows"][:-1]))  # no row of the last size
js2 = os.path.join(work, "r2.json")
subprocess.check_call([sys.executable, os.path.join(src, "tools", "gpu_report.py"), "--dir", raw,
                       "--name", "2030-01-02-test-gpu", "--md", os.path.join(work, "r2.md"),
                       "--json", js2])
r2 = json.load(open(js2))
expect(r2.get("auto_regret_max_frac") is None and
       r2.get("goals", {}).get("auto_regret_le_0.05") is None,
       "auto regret: no value and no verdict from a sweep whose 256 MB row failed")
expect(r2.get("auto_rs_regret_max_frac") is None,
       "reduce-scatter auto regret: no value from a sweep without its last size")
dump("perf_auto_rs.json", rdoc)  # whole again for the checks below
# A pipelined row whose ranks' results differ (or out of its bounds) is no goal's row.
pdoc = json.load(open(os.path.join(raw, "perf_n8_pipe.json")))
for bad in ({"identical": False}, {"wrong": 3}):
    dump("perf_n8_pipe.json", {"rows": [dict(row, **bad) if row.get("pieces") == 4 else row
                                        for row in pdoc["rows"]]})
    js4 = os.path.join(work, "r4.json")
    subprocess.check_call([sys.executable, os.path.join(src, "tools", "gpu_report.py"), "--dir",
                           raw, "--name", "2030-01-04-test-gpu", "--md",
                           os.path.join(work, "r4.md"), "--json", js4])
    r4 = json.load(open(js4))
    expect(r4.get("allreduce_qsgd4_model_speedup_400gbps_n8_256MB") is None and
           r4.get("goals", {}).get("allreduce_qsgd4_pipelined_model_ge_6.5x_nccl_400gbps_n8_256MB")
           is None, "no pipelined goal from a row with %s" % bad)
dump("perf_n8_pipe.json", pdoc)
adoc["rows"][-1]["failed"] = False
dump("perf_auto.json", adoc)
expect(r2.get("topk_dgc_speedup_vs_torch_topk") == 5.0, "top-k: 1000 us / 200 us threshold row")
expect(r2.get("topk_dgc_min_sample_speedup_vs_torch_topk") == 8.0,
       "top-k at the least sample rate: 1000 us / 125 us, its own row")
expect(r2.get("topk_dgc_lookback_speedup_vs_torch_topk") == 10.0,
       "top-k with the look-back compaction: 1000 us / 100 us, its own row")
expect(r2.get("goals", {}).get("topk_ge_8x_torch_topk") is False, "5x misses the 8x goal")
expect(r2.get("tc_unavailable_reason") == "RTNETLINK answers: Operation not permitted",
       "tc: the refusal's exact error")
expect(r2.get("measured_speedup_tc_10gbps_n4_256MB") is None, "tc: no measured speedup when refused")
expect("Operation not permitted" in open(os.path.join(work, "r2.md")).read(), "report says so")
expect(r2.get("kernel_limiters") is None, "no limiters without the profile step")
expect(r2.get("qsgd4_nearest_vs_stochastic_model_encode_n8_64MB") is None,
       "no nearest / stochastic encode ratio from a row whose kernels were not timed")
expect(abs(r2.get("qsgd4_bf16_nearest_vs_stochastic_model_encode_n8_64MB", 0) - 0.75) < 1e-12,
       "the bf16 ratio still from its timed rows")
expect("Not profiled: the profile step did not run" in open(os.path.join(work, "r2.md")).read(),
       "report says the kernels were not profiled")

# tools/kernels_merge.py: the kernels step's second process (kinds new to the GPU) joins the
# first's file; rows of the same kernels are replaced, not repeated, when it runs again.
mdir = os.path.join(work, "merge")
os.makedirs(mdir, exist_ok=True)
merge = [sys.executable, os.path.join(src, "tools", "kernels_merge.py"), mdir]
with open(os.path.join(mdir, "kernels.json"), "w") as f:
    json.dump({"gpu": "Test GPU", "bucket": 512, "complete": True,
               "rows": [krow("copy", "float", 0, N26, 1.0), krow("qsgd_encode_ef", "float", 4, N26, 0.9)]}, f)
with open(os.path.join(mdir, "kernels_more.json"), "w") as f:
    json.dump({"gpu": "Test GPU", "bucket": 512, "complete": False,
               "rows": [krow("qsgd_encode_ef_square", "float", 4, N26, 0.93)]}, f)
for _ in range(2):
    subprocess.check_call(merge)
mk = json.load(open(os.path.join(mdir, "kernels.json")))
expect([r["kernel"] for r in mk["rows"]] == ["copy", "qsgd_encode_ef", "qsgd_encode_ef_square"],
       "merge: the second run's rows once, after the first's: %s" % [r["kernel"] for r in mk["rows"]])
expect(mk.get("complete") is False, "merge: incomplete when the second run stopped early")
expect(mk.get("gpu") == "Test GPU", "merge keeps the first file's fields")
os.remove(os.path.join(mdir, "kernels.json"))
subprocess.check_call(merge)
mk = json.load(open(os.path.join(mdir, "kernels.json")))
expect([r["kernel"] for r in mk["rows"]] == ["qsgd_encode_ef_square"] and mk.get("complete") is False,
       "merge without the first file: the second's rows, incomplete")
expect(not os.path.exists(os.path.join(mdir, "kernels.json.part")), "merge leaves no part file")

# A gradcomp_perf output whose run stopped early ("complete": false) is named in the report.
adoc = json.load(open(os.path.join(raw, "perf_n8.json")))
adoc["complete"] = False
dump("perf_n8.json", adoc)
js3, md3 = os.path.join(work, "r3.json"), os.path.join(work, "r3.md")
subprocess.check_call([sys.executable, os.path.join(src, "tools", "gpu_report.py"), "--dir", raw,
                       "--name", "2030-01-03-test-gpu", "--md", md3, "--json", js3])
expect(json.load(open(js3)).get("partial_outputs") == ["perf_n8.json"],
       "partial outputs: %s" % json.load(open(js3)).get("partial_outputs"))
expect("Partial outputs" in open(md3).read() and "`perf_n8.json`" in open(md3).read(),
       "the report names the partial output")
expect(r2.get("partial_outputs") == [], "no partial outputs where every file is complete: %s"
       % r2.get("partial_outputs"))

sys.exit(verdict())
