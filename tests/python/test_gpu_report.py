"""tools/gpu_report.py against steps.tsv, and bench/torch_topk.py's JSON (no GPU, no library).

A raw folder kept across calls (GC_RUN_NAME) holds outputs of several calls: a benchmark's
output counts only when its step's last record in steps.tsv is ok, or when it is partial
("complete": false, the rows its own run wrote before it stopped); the commit of each step
(steps.tsv's fifth column) reaches the report; tc_link.json's shaping reaches the report beside
the measured tc keys. bench/report_check.py checks the values themselves.

  cd tests/python && python3 -m unittest -v test_gpu_report
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REPORT = os.path.join(ROOT, "tools", "gpu_report.py")
N26, MB256 = 1 << 26, 256 << 20
SHA1, SHA2 = "1" * 40, "2" * 40


def krow(kernel, frac, dtype="float", bits=4, n=N26):
    return {"kernel": kernel, "dtype": dtype, "bits": bits, "n": n, "time_us": 100.0,
            "frac_of_copy": frac}


def prow(speedups, pipelined=False, identical=True):
    """The fp32 4-bit 256 MB QSGD row of gradcomp_perf's JSON, one model point per rate."""
    key = "pipelined_speedup" if pipelined else "speedup"
    r = {"method": "qsgd", "bits": 4, "dtype": "float", "size": MB256, "failed": False,
         "identical": identical, "model": [{"link_gbps": g, key: v} for g, v in speedups]}
    if pipelined:
        r.update({"pieces": 6, "piece_bytes": 44739242})
    return r


class RawFolder(unittest.TestCase):
    """A raw folder of gpu-check outputs and the report made from it (no tests of its own)."""

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="gc_report_")
        self.raw = os.path.join(self.work, "raw")
        os.makedirs(self.raw)

    def tearDown(self):
        shutil.rmtree(self.work, ignore_errors=True)

    def dump(self, name, obj):
        with open(os.path.join(self.raw, name), "w") as f:
            json.dump(obj, f)

    def steps(self, *lines):
        with open(os.path.join(self.raw, "steps.tsv"), "w") as f:
            f.write("".join("\t".join(str(c) for c in line) + "\n" for line in lines))

    def report(self):
        md, js = os.path.join(self.work, "r.md"), os.path.join(self.work, "r.json")
        env = dict(os.environ, GC_COMMIT=SHA2)
        subprocess.run([sys.executable, REPORT, "--dir", self.raw, "--name", "2030-01-02-test",
                        "--gpu", "Test GPU", "--md", md, "--json", js], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        with open(js) as f, open(md) as g:
            return json.load(f), g.read()

    def kernels(self, more_complete=True):
        """kernels.json as tools/kernels_merge.py leaves it, and kernels_more.json beside it."""
        more = [krow("qsgd_encode_ef_nearest", 0.91)]
        self.dump("kernels_more.json", {"complete": more_complete, "rows": more})
        self.dump("kernels.json", {"gpu": "Test GPU", "complete": more_complete,
                                   "rows": [krow("qsgd_encode_ef", 0.85),
                                            krow("qsgd_decode", 0.97)] + more})


class GpuReportSteps(RawFolder):
    def test_commit_per_step(self):
        self.steps(("build", "ok", 90, "", SHA1), ("perf_n8", "ok", 51, "", SHA2 + "+dirty"),
                   ("tests", "ok", 20, "old four-column line"))
        r, md = self.report()
        self.assertEqual([s["commit"] for s in r["steps"]], [SHA1, SHA2 + "+dirty", None])
        self.assertIn("| step | status | seconds | note | commit |", md)
        self.assertIn("| build | ok | 90 |  | %s |" % SHA1[:12], md)
        self.assertIn("| perf_n8 | ok | 51 |  | %s+dirty |" % SHA2[:12], md)
        self.assertEqual(r["commit"], SHA2)

    def test_identical_rows_count_only_outputs_that_count(self):
        # A skipped step's file (an earlier call's) is not this report's: its rows' agreement
        # on all ranks is not counted either.
        self.dump("perf_n8.json", {"complete": True, "rows": [prow([(10, 7.5)])]})
        self.dump("perf_n8_rs.json", {"complete": True,
                                      "rows": [prow([(10, 7.5)], identical=False)]})
        self.steps(("perf_n8", "ok", 5, "", SHA2), ("perf_n8_rs", "skipped", 0, "", SHA2))
        r, _ = self.report()
        self.assertEqual(r["perf_rows_identical_on_all_ranks"], 1)
        self.assertEqual(r["perf_rows_differing_between_ranks"], 0)
        self.steps(("perf_n8", "ok", 5, "", SHA2), ("perf_n8_rs", "ok", 5, "", SHA2))
        r, _ = self.report()
        self.assertEqual(r["perf_rows_differing_between_ranks"], 1)

    def test_failed_step_keeps_its_complete_output(self):
        # gradcomp_perf wrote every row, then exited 1 (a row failed: the row says so), or its
        # teardown ran past the limit: gpu-check.sh removed the file before the step ran, so
        # it is this run's; kept, and named.
        self.dump("perf_n8.json", {"complete": True, "rows": [
            prow([(10, 7.5)]), dict(prow([(10, 9.9)]), size=MB256 // 4, failed=True)]})
        for status in ("failed", "timed out"):
            self.steps(("perf_n8", "ok", 51, "", SHA1), ("perf_n8", status, 3, "exit 1", SHA2))
            r, md = self.report()
            self.assertEqual(r["allreduce_qsgd4_model_speedup_10gbps_n8_256MB"], 7.5)
            self.assertEqual(r["outputs_left_out"], [])
            self.assertEqual(r["outputs_of_failed_steps"],
                             [{"file": "perf_n8.json", "step": "perf_n8", "status": status}])
            self.assertIn("`perf_n8.json` (perf_n8: %s)" % status, md)
        # A file without "complete" (not a benchmark's own account of its rows) from a failed
        # step: left out.
        self.dump("perf_n8.json", {"rows": [prow([(10, 7.5)])]})
        self.steps(("perf_n8", "failed", 3, "exit 1", SHA2))
        r, md = self.report()
        self.assertIsNone(r["allreduce_qsgd4_model_speedup_10gbps_n8_256MB"])
        self.assertIsNone(r["goals"]["allreduce_qsgd4_model_ge_5x_nccl_10gbps_n8_256MB"])
        self.assertEqual(r["outputs_left_out"],
                         [{"file": "perf_n8.json", "step": "perf_n8", "status": "failed"}])
        self.assertIn("Left out", md)
        self.assertIn("`perf_n8.json` (perf_n8: failed)", md)
        # Run again and ok: the last record speaks.
        self.steps(("perf_n8", "failed", 3, "exit 1", SHA1), ("perf_n8", "ok", 51, "", SHA2))
        r, _ = self.report()
        self.assertEqual(r["allreduce_qsgd4_model_speedup_10gbps_n8_256MB"], 7.5)
        self.assertIs(r["goals"]["allreduce_qsgd4_model_ge_5x_nccl_10gbps_n8_256MB"], True)
        self.assertEqual(r["outputs_left_out"], [])

    def test_partial_output_of_a_cut_step_kept(self):
        # Cut by its limit after the 256 MB row: "complete": false, its own run's rows.
        self.dump("perf_n8_pipe.json", {"complete": False,
                                        "rows": [prow([(400, 6.6), (100, 7.5)], pipelined=True)]})
        self.steps(("perf_n8_pipe", "timed out", 45, "after 45s", SHA2))
        r, _ = self.report()
        self.assertEqual(r["allreduce_qsgd4_model_speedup_400gbps_n8_256MB"], 6.6)
        self.assertEqual(r["partial_outputs"], ["perf_n8_pipe.json"])
        self.assertEqual(r["outputs_left_out"], [])

    def test_skipped_step_and_no_record(self):
        # A step skipped for time leaves its (older) output out; one without a record is kept.
        self.dump("perf_auto.json", {"complete": True, "auto_regret_max_frac": 0.01, "rows": [
            {"size": s, "failed": False, "auto_regret": 0.01, "auto_wrong": 0,
             "auto_identical": True} for s in (1 << 20, 4 << 20, 16 << 20, 64 << 20, MB256)]})
        self.dump("perf_n8_rs.json", {"rows": [dict(prow([(10, 7.4)]), collective="reduce_scatter",
                                                    nranks=8, size=MB256 // 8)]})
        self.steps(("perf_auto", "skipped", 0, "time budget spent", SHA2))
        r, _ = self.report()
        self.assertIsNone(r["auto_regret_max_frac"])
        self.assertIsNone(r["goals"]["auto_regret_le_0.05"])
        self.assertEqual(r["reducescatter_qsgd4_model_speedup_10gbps_n8_256MB"], 7.4)

    def test_torch_topk_cut_after_the_goal_row(self):
        self.dump("kernels.json", {"complete": True, "rows": [
            {"kernel": "topk_threshold", "dtype": "float", "bits": 0, "n": N26, "density": 0.001,
             "time_us": 100.0, "frac_of_copy": 0.1}]})
        # torch_topk.py's file as it stands when its step limit ends it during 2^28.
        self.dump("torch_topk.json", {"tool": "torch_topk", "complete": False, "rows": [
            {"n": N26, "density": 0.001, "k": 67109, "torch_topk_abs_us": 1000.0,
             "torch_topk_us": 900.0, "copy_us": 50.0}]})
        self.steps(("kernels", "ok", 4, "", SHA2), ("torch_topk", "timed out", 20, "after 20s", SHA2))
        r, _ = self.report()
        self.assertEqual(r["topk_dgc_speedup_vs_torch_topk"], 10.0)
        self.assertIn("torch_topk.json", r["partial_outputs"])
        # The same file complete, from a step that then failed: kept, named.
        self.dump("torch_topk.json", {"tool": "torch_topk", "complete": True, "rows": [
            {"n": N26, "density": 0.001, "k": 67109, "torch_topk_abs_us": 1000.0,
             "torch_topk_us": 900.0, "copy_us": 50.0}]})
        self.steps(("kernels", "ok", 4, "", SHA2), ("torch_topk", "failed", 20, "exit 1", SHA2))
        r, _ = self.report()
        self.assertEqual(r["topk_dgc_speedup_vs_torch_topk"], 10.0)
        self.assertEqual(r["outputs_of_failed_steps"],
                         [{"file": "torch_topk.json", "step": "torch_topk", "status": "failed"}])
        # Skipped (its file removed before): nothing.
        os.remove(os.path.join(self.raw, "torch_topk.json"))
        self.steps(("kernels", "ok", 4, "", SHA2), ("torch_topk", "skipped", 0, "", SHA2))
        r, _ = self.report()
        self.assertIsNone(r["topk_dgc_speedup_vs_torch_topk"])
        self.assertIsNone(r["goals"]["topk_ge_8x_torch_topk"])

    def test_kernels_rows_by_their_own_step(self):
        # kernels_more's record skipped (its rows not this call's): its rows out, the goal
        # rows kept.
        self.kernels()
        self.steps(("kernels", "ok", 4, "", SHA2), ("kernels_more", "skipped", 0, "", SHA2))
        r, md = self.report()
        self.assertEqual(r["qsgd4_encode_ef_frac_of_copy"], 0.85)
        self.assertIs(r["goals"]["decode_ge_0.95_of_copy"], True)
        self.assertIsNone(r["qsgd4_nearest_encode_ef_frac_of_copy"])
        self.assertEqual(r["outputs_left_out"],
                         [{"file": "kernels.json", "step": "kernels_more", "status": "skipped"}])
        self.assertIn("`kernels.json` rows (kernels_more: skipped)", md)
        # The other way round: the goal rows out, kernels_more's kept.
        self.steps(("kernels", "skipped", 0, "", SHA2), ("kernels_more", "ok", 4, "", SHA2))
        r, _ = self.report()
        self.assertIsNone(r["qsgd4_encode_ef_frac_of_copy"])
        self.assertIsNone(r["goals"]["encode_ef_ge_0.9_of_copy"])
        self.assertEqual(r["qsgd4_nearest_encode_ef_frac_of_copy"], 0.91)
        # kernels_more failed at its end (complete, exit 1): its rows kept and named.
        self.steps(("kernels", "ok", 4, "", SHA2), ("kernels_more", "failed", 4, "exit 1", SHA2))
        r, md = self.report()
        self.assertEqual(r["qsgd4_nearest_encode_ef_frac_of_copy"], 0.91)
        self.assertEqual(r["outputs_left_out"], [])
        self.assertEqual(r["outputs_of_failed_steps"],
                         [{"file": "kernels.json", "step": "kernels_more", "status": "failed"}])
        self.assertIn("`kernels.json` rows (kernels_more: failed)", md)
        # kernels_more cut part way: partial, its rows kept.
        self.kernels(more_complete=False)
        self.steps(("kernels", "ok", 4, "", SHA2), ("kernels_more", "timed out", 15, "", SHA2))
        r, _ = self.report()
        self.assertEqual(r["qsgd4_nearest_encode_ef_frac_of_copy"], 0.91)
        self.assertEqual(r["qsgd4_encode_ef_frac_of_copy"], 0.85)

    def test_both_kernels_runs_cut_keep_their_rows(self):
        # Both runs stopped by their step limits, each with the rows it reached ("complete":
        # false, its own), merged by tools/kernels_merge.py: both kept as partial.
        self.dump("kernels.json", {"gpu": "Test GPU", "complete": False,
                                   "rows": [krow("qsgd_encode_ef", 0.85), krow("qsgd_decode", 0.97)]})
        self.dump("kernels_more.json", {"complete": False, "rows": [krow("qsgd_encode_ef_nearest", 0.91)]})
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "kernels_merge.py"), self.raw],
                       check=True)
        self.steps(("kernels", "timed out", 20, "after 20s", SHA2),
                   ("kernels_more", "timed out", 15, "after 15s", SHA2))
        r, md = self.report()
        self.assertEqual(r["qsgd4_encode_ef_frac_of_copy"], 0.85)
        self.assertIs(r["goals"]["decode_ge_0.95_of_copy"], True)
        self.assertEqual(r["qsgd4_nearest_encode_ef_frac_of_copy"], 0.91)
        self.assertEqual(r["outputs_left_out"], [])
        # The first run failed at its end (complete, exit 1), the second cut: both kept.
        self.dump("kernels.json", {"gpu": "Test GPU", "complete": True,
                                   "rows": [krow("qsgd_encode_ef", 0.85), krow("qsgd_decode", 0.97)]})
        self.dump("kernels_more.json", {"complete": False, "rows": [krow("qsgd_encode_ef_nearest", 0.91)]})
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "kernels_merge.py"), self.raw],
                       check=True)
        self.steps(("kernels", "failed", 20, "exit 1", SHA2),
                   ("kernels_more", "timed out", 15, "after 15s", SHA2))
        r, _ = self.report()
        self.assertEqual(r["qsgd4_encode_ef_frac_of_copy"], 0.85)
        self.assertEqual(r["outputs_of_failed_steps"],
                         [{"file": "kernels.json", "step": "kernels", "status": "failed"}])
        self.assertEqual(r["qsgd4_nearest_encode_ef_frac_of_copy"], 0.91)

    def test_unreadable_outputs_and_odd_values(self):
        # A file cut short, a steps.tsv with a header and a record without seconds, a NaN
        # fraction, a null time: the report is written, names what it could not read, and the
        # goals on them are null.
        with open(os.path.join(self.raw, "perf_n8.json"), "w") as f:
            f.write('{"complete": true, "rows": [{"method": "qsgd", "bi')
        with open(os.path.join(self.raw, "steps.tsv"), "w") as f:
            f.write("name\tstatus\tseconds\tnote\tcommit\nperf_n8\tok\t\t\t%s\n" % SHA2)
        self.dump("kernels.json", {"complete": True, "rows": [
            krow("qsgd_encode_ef", float("nan")),
            {"kernel": "topk_threshold", "dtype": "float", "bits": 0, "n": N26, "density": 0.001,
             "time_us": 100.0, "frac_of_copy": 0.1}]})
        self.dump("torch_topk.json", {"complete": True, "rows": [
            {"n": N26, "density": 0.001, "torch_topk_abs_us": None, "copy_us": 50.0}]})
        self.dump("tests.json", [])
        r, md = self.report()
        self.assertEqual([(s["name"], s["seconds"]) for s in r["steps"]], [("perf_n8", None)])
        self.assertEqual(r["unreadable_outputs"], ["perf_n8.json", "tests.json"])
        self.assertIn("Unreadable", md)
        self.assertIsNone(r["allreduce_qsgd4_model_speedup_10gbps_n8_256MB"])
        self.assertIsNone(r["goals"]["encode_ef_ge_0.9_of_copy"])
        self.assertIsNone(r["topk_dgc_speedup_vs_torch_topk"])
        self.assertIsNone(r["goals"]["topk_ge_8x_torch_topk"])
        self.assertIsNone(r["tests_passed"])

    def test_tests_step_cut_before_ctest_summary(self):
        # The tests step's limit ended CTest before its summary: tools/gpu-check.sh's tests.json
        # has null counts, and the finished tests' own lines in tests.txt give them instead.
        self.steps(("tests", "timed out", 170, "after 170s", SHA2))
        self.dump("tests.json", {"tests_passed": None, "tests_failed": None,
                                 "tests_skipped": None})
        with open(os.path.join(self.raw, "tests.txt"), "w") as f:
            f.write("Test project /r/build-gpu\n"
                    "        Start 389: python.torch\n"
                    "  1/6 Test #390: python.lm_compare_cpu ......***Skipped   0.08 sec\n"
                    "  2/6 Test   #4: bench.gpu_report_keys ......   Passed    0.66 sec\n"
                    "  3/6 Test #242: Reliability.AbsurdCounts ...***Failed    0.10 sec\n"
                    "  4/6 Test #331: BackendGpu.CallOnAnotherStream ***Timeout 100.01 sec\n"
                    "        Start 12: QsgdGpu.Encode\n")
        r, md = self.report()
        self.assertEqual((r["tests_passed"], r["tests_failed"], r["tests_skipped"],
                          r["tests_unfinished"]), (1, 2, 1, 2))
        self.assertIn("CTest was cut before its summary (the tests step's limit): 2 tests did not "
                      "finish; failed: Reliability.AbsurdCounts, BackendGpu.CallOnAnotherStream",
                      md)

    def test_tests_with_ctest_summary_taken_as_written(self):
        self.dump("tests.json", {"tests_passed": 394, "tests_failed": 3, "tests_skipped": 6})
        with open(os.path.join(self.raw, "tests.txt"), "w") as f:
            f.write("  1/2 Test #1: a ....   Passed    0.1 sec\n")
        r, md = self.report()
        self.assertEqual((r["tests_passed"], r["tests_failed"], r["tests_skipped"],
                          r["tests_unfinished"]), (394, 3, 6, None))
        self.assertNotIn("cut before its summary", md)

    def test_profile_step_cut_before_its_summary(self):
        # tools/ncu_profile.sh writes profile.json last: cut by its limit, there is none.
        self.steps(("profile", "timed out", 150, "after 150s", SHA2))
        _, md = self.report()
        self.assertIn("Not profiled: the profile step's last record is 'timed out'", md)
        self.assertNotIn("did not run", md)

    def test_tc_shaping_and_a_failed_tc_step(self):
        tc = {"mode": "gpu", "tc_unavailable_reason": None, "size": MB256,
              "measured_speedup_tc_10gbps_n4_256MB": 5.5, "measured_vs_model_tc_10gbps": 0.95,
              "tc_shaping_10gbps_n4": "lo", "tc_link_bound_10gbps_n4": True, "runs": []}
        self.dump("tc_link.json", tc)
        self.steps(("tc_link", "ok", 300, "", SHA2))
        r, md = self.report()
        self.assertEqual(r["tc_shaping_10gbps_n4"], "lo")
        self.assertEqual(r["measured_speedup_tc_10gbps_n4_256MB"], 5.5)
        self.assertIn("shaping: lo at N x L shared by all ranks", md)
        # A summary from before the key: the shaping of the run the measurement came from.
        old = dict(tc, runs=[
            {"link_gbps": 10.0, "nranks": 4, "method": "qsgd", "size": MB256, "failed": False,
             "exit": 0, "shaping": "netns"}])
        del old["tc_shaping_10gbps_n4"]
        self.dump("tc_link.json", old)
        r, md = self.report()
        self.assertEqual(r["tc_shaping_10gbps_n4"], "netns")
        self.assertIn("shaping: netns, each rank's own veth shaped at L", md)
        # One run failed (tc_link.sh exits 1): its summary, which leaves failed runs out, keeps
        # the others' figures.
        self.steps(("tc_link", "failed", 300, "exit 1", SHA2))
        r, md = self.report()
        self.assertEqual(r["measured_speedup_tc_10gbps_n4_256MB"], 5.5)
        # Shaping refused: tc_link.sh writes no measurement, and the refusal's words.
        refused = dict(tc, tc_unavailable_reason="RTNETLINK answers: denied",
                       measured_speedup_tc_10gbps_n4_256MB=None, measured_vs_model_tc_10gbps=None,
                       tc_shaping_10gbps_n4=None, tc_link_bound_10gbps_n4=None)
        self.dump("tc_link.json", refused)
        self.steps(("tc_link", "failed", 5, "exit 1", SHA2))
        r, md = self.report()
        self.assertIsNone(r["measured_speedup_tc_10gbps_n4_256MB"])
        self.assertIsNone(r["measured_vs_model_tc_10gbps"])
        self.assertIsNone(r["tc_shaping_10gbps_n4"])
        self.assertIsNone(r["goals"]["measured_tc_ge_5x_nccl_10gbps_n4_256MB"])
        self.assertEqual(r["tc_unavailable_reason"], "RTNETLINK answers: denied")
        self.assertIn("shaping: n/a", md)


class GpuReportGoals(RawFolder):
    """The goal keys of issues 14 and 15 as the issues state them: each threshold with its own
    comparison (>= / <=, "within 1" both ways, 0.85..1.15 inclusive), and no value where the
    measurement is not one (a sweep size whose auto was wrong, top-k times of two GPUs)."""

    def sweep(self, bad=None):
        """perf_auto.json: a complete 1 MB .. 256 MB sweep, worst regret 0.05 (at 256 MB); bad
        updates its 16 MB row."""
        rows = [{"size": s, "failed": False, "auto_regret": 0.05 if s == MB256 else 0.01,
                 "auto_wrong": 0, "auto_identical": True, "auto_rank_weights_wrong": 0}
                for s in (1 << 20, 4 << 20, 16 << 20, 64 << 20, MB256)]
        rows[2].update(bad or {})
        self.dump("perf_auto.json", {"complete": True, "auto_regret_max_frac": 0.05,
                                     "rows": rows})

    def test_auto_regret_needs_every_size_right(self):
        self.sweep()
        r, md = self.report()
        self.assertEqual(r["auto_regret_max_frac"], 0.05)
        self.assertIs(r["goals"]["auto_regret_le_0.05"], True)  # <= 0.05: the boundary meets it
        self.assertIn("| 0.05 | <= 0.05 | yes |", md)
        # A size whose auto call was out of the codec's bounds, differed between ranks, or
        # weighed the ranks wrongly: its regret is no measurement of auto, and the worst size
        # is unknown.
        for bad in ({"auto_wrong": 3}, {"auto_identical": False}, {"auto_rank_weights_wrong": 1}):
            self.sweep(bad)
            r, _ = self.report()
            self.assertIsNone(r["auto_regret_max_frac"], bad)
            self.assertIsNone(r["goals"]["auto_regret_le_0.05"], bad)

    def topk_files(self, kernels_gpu, torch_gpu):
        self.dump("kernels.json", {"gpu": kernels_gpu, "complete": True, "rows": [
            {"kernel": "topk_threshold", "dtype": "float", "bits": 0, "n": N26, "density": 0.001,
             "time_us": 100.0, "frac_of_copy": 0.1}]})
        self.dump("torch_topk.json", {"gpu": torch_gpu, "complete": True, "rows": [
            {"n": N26, "density": 0.001, "k": 67109, "torch_topk_abs_us": 800.0,
             "torch_topk_us": 700.0, "copy_us": 50.0}]})

    def test_topk_times_of_one_gpu(self):
        self.topk_files("NVIDIA H200", "NVIDIA H200")
        r, md = self.report()
        self.assertEqual(r["topk_dgc_speedup_vs_torch_topk"], 8.0)
        self.assertIs(r["goals"]["topk_ge_8x_torch_topk"], True)  # >= 8: the boundary meets it
        self.assertIn("| 8 | >= 8x | yes |", md)
        # The kernels step run again in a later call of the same GC_RUN_NAME on another GPU:
        # the two times are not side by side.
        self.topk_files("NVIDIA H100 80GB HBM3", "NVIDIA H200")
        r, md = self.report()
        self.assertIsNone(r["topk_dgc_speedup_vs_torch_topk"])
        self.assertIsNone(r["topk_dgc_min_sample_speedup_vs_torch_topk"])
        self.assertIsNone(r["goals"]["topk_ge_8x_torch_topk"])
        self.assertIn("kernels.json was measured on NVIDIA H100 80GB HBM3 and torch_topk.json "
                      "on NVIDIA H200", md)
        # A file without the field (older outputs) is taken as it is.
        self.topk_files(None, "NVIDIA H200")
        r, _ = self.report()
        self.assertEqual(r["topk_dgc_speedup_vs_torch_topk"], 8.0)

    def issue15_outputs(self, eps):
        """Every issue 15 goal's input at its threshold (eps = 0), or eps past it."""
        self.dump("kernels.json", {"gpu": "G", "complete": True, "rows": [
            krow("qsgd_encode_ef", 0.9 - eps), krow("qsgd_encode_ef", 0.8 - eps, "bfloat16"),
            krow("qsgd_encode_ef", 0.8 - eps, "half"), krow("qsgd_decode", 0.95 - eps)]})
        self.dump("perf_n8_pipe.json", {"complete": True, "rows": [
            prow([(400, 6.5 - eps), (100, 7.4 - eps)], pipelined=True)]})
        row = prow([(10, 7.5)])
        row["projection"] = [
            {"nodes": 4, "local": 8, "node_gbps": 400, "hier_pipelined_speedup": 5.0 - eps},
            {"nodes": 4, "local": 8, "node_gbps": 3200, "auto_speedup": 0.97 - eps}]
        self.dump("perf_n8.json", {"complete": True, "rows": [row]})
        self.dump("tc_link.json", {"mode": "gpu", "tc_unavailable_reason": None, "size": MB256,
                                   "measured_speedup_tc_10gbps_n4_256MB": 5.0 - eps,
                                   "measured_vs_model_tc_10gbps": 0.85 - eps, "runs": []})

    def test_issue15_thresholds(self):
        goals = ("encode_ef_ge_0.9_of_copy", "bf16_encode_ef_ge_0.8_of_copy",
                 "fp16_encode_ef_ge_0.8_of_copy", "decode_ge_0.95_of_copy",
                 "allreduce_qsgd4_pipelined_model_ge_6.5x_nccl_400gbps_n8_256MB",
                 "allreduce_qsgd4_pipelined_model_ge_7.4x_nccl_100gbps_n8_256MB",
                 "hier_model_pipelined_ge_5x_nccl_node400g_4x8_256MB",
                 "hier_model_auto_ge_0.97x_nccl_node3200g_4x8_256MB",
                 "measured_tc_ge_5x_nccl_10gbps_n4_256MB",
                 "measured_vs_model_tc_10gbps_within_15pct")
        self.issue15_outputs(0.0)
        r, md = self.report()
        self.assertEqual({g: r["goals"][g] for g in goals}, {g: True for g in goals})
        self.assertEqual((r["hier_model_speedup_node400g_4x8_256MB"],
                          r["hier_model_speedup_node3200g_4x8_256MB"]), (5.0, 0.97))
        for row in ("| 0.9 | >= 0.9 | yes |", "| 0.8 | >= 0.8 | yes |", "| 0.95 | >= 0.95 | yes |",
                    "| 6.5 | >= 6.5x | yes |", "| 7.4 | >= 7.4x | yes |", "| 5 | >= 5x | yes |",
                    "| 0.97 | >= 0.97x | yes |", "| 0.85 | 0.85..1.15 | yes |"):
            self.assertIn(row, md)
        self.issue15_outputs(1e-6)
        r, _ = self.report()
        self.assertEqual({g: r["goals"][g] for g in goals}, {g: False for g in goals})
        # The measured / modeled ratio's upper end: 1.15 in, above it out.
        for vs, met in ((1.15, True), (1.15 + 1e-6, False)):
            self.dump("tc_link.json", {"mode": "gpu", "tc_unavailable_reason": None,
                                       "measured_speedup_tc_10gbps_n4_256MB": 6.0,
                                       "measured_vs_model_tc_10gbps": vs, "runs": []})
            r, _ = self.report()
            self.assertIs(r["goals"]["measured_vs_model_tc_10gbps_within_15pct"], met, vs)

    def test_issue14_goals(self):
        # lm.json (tools/lm_compare.py) and torch_hooks.json (tools/torch_hooks_check.py) absent:
        # every key and goal null.
        r, _ = self.report()
        for k in ("lm_val_loss_rel_delta_qsgd4", "lm_val_loss_rel_delta_dgc",
                  "lm_val_loss_rel_delta_powersgd", "lm_bytes_ratio_qsgd4_vs_powersgd",
                  "ddp_hook_qsgd4_acc_delta_pts"):
            self.assertIsNone(r[k], k)
        for g in ("lm_qsgd4_val_loss_within_1pct", "lm_dgc_val_loss_within_3pct",
                  "ddp_hook_qsgd4_within_1pt"):
            self.assertIsNone(r["goals"][g], g)
        # The loss goals are on the signed relative difference (a compressed run below the
        # uncompressed loss meets them), <= the threshold; the MLP's accuracy within 1 point
        # either way; PowerSGD's delta and the bytes ratio reported, no goal.
        cases = [(0.01, 0.03, 1.0, True), (-0.05, -0.2, -1.0, True),
                 (0.01 + 1e-6, 0.03 + 1e-6, 1.0 + 1e-6, False), (0.5, 0.5, -1.0 - 1e-6, False)]
        for q, dgc, pts, met in cases:
            self.dump("lm.json", {"lm_val_loss_rel_delta_qsgd4": q,
                                  "lm_val_loss_rel_delta_dgc": dgc,
                                  "lm_val_loss_rel_delta_powersgd": 0.2,
                                  "lm_bytes_ratio_qsgd4_vs_powersgd": 2.5})
            self.dump("torch_hooks.json", {"ddp_hook_qsgd4_acc_delta_pts": pts})
            r, md = self.report()
            self.assertEqual((r["lm_val_loss_rel_delta_qsgd4"], r["lm_val_loss_rel_delta_dgc"],
                              r["ddp_hook_qsgd4_acc_delta_pts"]), (q, dgc, pts))
            self.assertEqual(
                (r["goals"]["lm_qsgd4_val_loss_within_1pct"],
                 r["goals"]["lm_dgc_val_loss_within_3pct"],
                 r["goals"]["ddp_hook_qsgd4_within_1pt"]), (met, met, met), (q, dgc, pts))
            self.assertEqual((r["lm_val_loss_rel_delta_powersgd"],
                              r["lm_bytes_ratio_qsgd4_vs_powersgd"]), (0.2, 2.5))
            self.assertFalse([g for g in r["goals"] if "powersgd" in g])
            self.assertIn("relative | 0.2 | reported | |", md)
            self.assertIn("| gradient bytes per step, QSGD 4-bit hook / PowerSGD | 2.5 | "
                          "reported | |", md)
        self.assertIn("| <= 0.01 | no |", md)
        self.assertIn("| <= 0.03 | no |", md)
        self.assertIn("| within 1 | no |", md)


@unittest.skipUnless(importlib.util.find_spec("matplotlib"), "no matplotlib")
class PlotInputs(unittest.TestCase):
    """tools/plot with one input unreadable (empty, cut mid-file): the others still drawn."""

    def test_unreadable_input_costs_only_its_plot(self):
        work = tempfile.mkdtemp(prefix="gc_plot_")
        self.addCleanup(shutil.rmtree, work, True)
        perf = {"backend": "cuda", "rows": [dict(prow([(10, 7.5)]), label="qsgd bits=4", busbw=1.0,
                                                 nccl_busbw=0.5, nranks=8)]}
        with open(os.path.join(work, "perf_n8.json"), "w") as f:
            json.dump(perf, f)
        with open(os.path.join(work, "perf_n8_sparse.json"), "w") as f:
            f.write('{"rows": [{"size": 4')  # cut mid-file
        open(os.path.join(work, "kernels.json"), "w").close()  # empty
        out = os.path.join(work, "out")
        p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "plot"), "--perf",
                            os.path.join(work, "perf_n8.json"), "--perf",
                            os.path.join(work, "perf_n8_sparse.json"), "--kernels",
                            os.path.join(work, "kernels.json"), "--torch",
                            os.path.join(work, "torch_topk.json"), "--out", out, "--prefix", "x-"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertNotIn("Traceback", p.stdout)
        self.assertIn("perf_n8_sparse.json unreadable", p.stdout)
        self.assertEqual(sorted(os.listdir(out)), ["x-busbw.png", "x-model_speedup.png"])


    def test_outputs_the_report_leaves_out_are_not_drawn(self):
        """--raw: an output the report leaves out (its step's last record skipped, the file a
        complete one of an earlier call) is not drawn; kernels.json keeps only the rows of the
        step that counts. gpu-check.sh passes --raw."""
        work = tempfile.mkdtemp(prefix="gc_plot_")
        self.addCleanup(shutil.rmtree, work, True)
        row = dict(prow([(10, 7.5)]), label="qsgd bits=4", busbw=1.0, nccl_busbw=0.5, nranks=8)
        for f in ("perf_n8.json", "perf_n1.json"):
            with open(os.path.join(work, f), "w") as g:
                json.dump({"backend": "cuda", "complete": True, "rows": [row]}, g)
        with open(os.path.join(work, "kernels_more.json"), "w") as g:
            json.dump({"complete": True, "rows": [krow("qsgd_decode", 0.9)]}, g)
        with open(os.path.join(work, "kernels.json"), "w") as g:
            json.dump({"complete": True, "rows": [krow("qsgd_encode_ef", 0.85),
                                                  krow("qsgd_decode", 0.9)]}, g)
        with open(os.path.join(work, "steps.tsv"), "w") as g:
            g.write("perf_n8\tskipped\t0\tbudget\nperf_n1\tok\t5\t\n"
                    "kernels\tok\t5\t\nkernels_more\tskipped\t0\tbudget\n")
        plot = os.path.join(ROOT, "tools", "plot")

        def run(*extra):
            out = os.path.join(work, "out%d" % len(extra))
            p = subprocess.run([sys.executable, plot, "--perf", os.path.join(work, "perf_n8.json"),
                                "--perf", os.path.join(work, "perf_n1.json"), "--kernels",
                                os.path.join(work, "kernels.json"), "--out", out] + list(extra),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            self.assertEqual(p.returncode, 0, p.stdout)
            return p.stdout

        self.assertNotIn("left out", run())
        said = run("--raw", work)
        self.assertIn("perf_n8.json left out, as the report leaves it out (step perf_n8's last "
                      "record is 'skipped')", said)
        self.assertNotIn("perf_n1.json left out", said)
        self.assertIn("kernels.json: rows of a step the report leaves out dropped", said)
        # What the plots got: the report's own reading of the same folder.
        sys.path.insert(0, os.path.join(ROOT, "tools"))
        try:
            import gpu_report
        finally:
            sys.path.pop(0)
        raw = gpu_report.RawOutputs(work)
        self.assertIsNone(raw.bench("perf_n8.json"))
        self.assertEqual([r["kernel"] for r in raw.kernels()["rows"]], ["qsgd_encode_ef"])
        with open(os.path.join(ROOT, "tools", "gpu-check.sh")) as g:
            check = g.read()
        self.assertIn('--raw "$raw"', check)
        # A plot not drawn this call leaves no earlier call's PNG for the report to show.
        self.assertIn('want plots && fresh "$results/$name"-{busbw,model_speedup,kernels,topk}.png',
                      check)


class GpuCheckPlan(unittest.TestCase):
    """tools/gpu-check.sh's plan (GC_PLAN=1, no GPU) refuses a budget it cannot count with."""

    def test_budget_not_a_number_is_refused(self):
        for bad in ("540s", "1e3", "abc"):
            env = dict(os.environ, GC_PLAN="1", GC_STEPS="perf", GC_CHECK_BUDGET_S=bad)
            p = subprocess.run(["bash", os.path.join(ROOT, "tools", "gpu-check.sh")], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            self.assertEqual(p.returncode, 2, p.stdout)
            self.assertIn("is not a whole number of seconds", p.stdout)
        env = dict(os.environ, GC_PLAN="1", GC_STEPS="perf", GC_CHECK_BUDGET_S="300")
        p = subprocess.run(["bash", os.path.join(ROOT, "tools", "gpu-check.sh")], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(p.returncode, 0, p.stdout)


class ToolOutdir(unittest.TestCase):
    """tools/ddp_check.sh, fsdp_check.sh (tools/torch_ranks.sh's check_args) and
    multirank_check.sh read a relative OUTDIR against the folder they are called from, as a shell
    user expects; ddp and fsdp read it against the repository root before. Run here without their
    prerequisites: each writes its "not run" report into OUTDIR and exits 1."""

    def test_a_relative_outdir_is_the_callers(self):
        with tempfile.TemporaryDirectory() as cwd, tempfile.TemporaryDirectory() as build:
            rel = f"gc-outdir-{os.getpid()}-{os.path.basename(cwd)}"
            # The folder the scripts made in the repository root before, removed whatever
            # the outcome.
            self.addCleanup(shutil.rmtree, os.path.join(ROOT, rel), ignore_errors=True)
            # PYTHON=false: no torch, so ddp and fsdp give up at their first prerequisite;
            # BUILD_DIR without the multirank binary: "not built".
            env = dict(os.environ, PYTHON="false")
            for script, report in (("ddp_check.sh", "ddp.json"), ("fsdp_check.sh", "fsdp.json"),
                                   ("multirank_check.sh", "multirank.json")):
                out = os.path.join(rel, script.split("_")[0])
                p = subprocess.run(["bash", os.path.join(ROOT, "tools", script), out, build],
                                   cwd=cwd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, timeout=120)
                self.assertEqual(p.returncode, 1, p.stdout)
                self.assertTrue(os.path.isfile(os.path.join(cwd, out, report)),
                                f"{script}: no {report} in {os.path.join(cwd, out)}: {p.stdout}")
                self.assertFalse(os.path.exists(os.path.join(ROOT, rel)),
                                 f"{script} made {rel} in the repository root")


class NcuLimits(unittest.TestCase):
    """tools/ncu_limits.py on ncu CSVs with text after the table or a row cut short."""

    def test_text_after_the_table_and_a_cut_row(self):
        work = tempfile.mkdtemp(prefix="gc_ncu_")
        self.addCleanup(shutil.rmtree, work, True)
        head = '"ID","Process ID","Kernel Name","Section Name","Metric Name","Metric Unit","Metric Value"'
        rows = ['"0","1","qsgdEncodeWarpKernel","SOL","Duration","usecond","200.5"',
                '"0","1","qsgdEncodeWarpKernel","SOL","DRAM Throughput","%","80.1"']
        csv_path = os.path.join(work, "ncu.csv")
        with open(csv_path, "w") as f:
            f.write("==PROF== Connected to process 1\n" + "\n".join([head] + rows) +
                    "\n==WARNING== Found outstanding GPU clock reset, trying to revert...Success.\n"
                    '"1","1","qsgdDec')
        out = os.path.join(work, "profile.json")
        p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "ncu_limits.py"), "--out",
                            out, "enc=" + csv_path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        self.assertEqual(p.returncode, 0, p.stdout)
        with open(out) as f:
            doc = json.load(f)
        self.assertEqual([(k["kernel"], k["duration_us"], k["limiter"]) for k in doc["kernels"]],
                         [("qsgdEncodeWarpKernel", 200.5, "memory")])


PATCHED_TORCH = r'''
import sys, time
import torch
real_device = torch.device
torch.device = lambda *a, **k: real_device("cpu")
torch.cuda.is_available = lambda: True
torch.cuda.mem_get_info = lambda: (1 << 40, 1 << 40)
torch.cuda.get_device_name = lambda i=0: "Fake GPU"
torch.cuda.empty_cache = lambda: None
class Event:
    def __init__(self, **k): self.t = 0.0
    def record(self): self.t = time.perf_counter()
    def synchronize(self): pass
    def elapsed_time(self, other): return (other.t - self.t) * 1e3
torch.cuda.Event = Event
sys.path.insert(0, sys.argv[1])
import torch_topk
stop = int(sys.argv[3])
if stop:
    # The step's limit, as a kill after the stop-th write of the JSON (the empty first included).
    dump, writes = torch_topk.json.dump, [0]
    def counted(*a, **k):
        writes[0] += 1
        if writes[0] > stop:
            raise SystemExit(124)
        dump(*a, **k)
    torch_topk.json.dump = counted
sys.argv = ["torch_topk.py", "--min-log2", "10", "--max-log2", "14", "--json", sys.argv[2]]
sys.exit(torch_topk.main())
'''


@unittest.skipUnless(importlib.util.find_spec("torch"), "no torch")
class TorchTopkJson(unittest.TestCase):
    """bench/torch_topk.py with torch.cuda stood in by the CPU: its JSON after every row."""

    def run_topk(self, stop):
        work = tempfile.mkdtemp(prefix="gc_topk_")
        self.addCleanup(shutil.rmtree, work, True)
        out = os.path.join(work, "torch_topk.json")
        with open(out, "w") as f:
            json.dump({"rows": [{"n": 1, "stale": True}]}, f)  # an earlier run's file
        p = subprocess.run([sys.executable, "-c", PATCHED_TORCH, os.path.join(ROOT, "bench"),
                            out, str(stop)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=300)
        with open(out) as f:
            return p.returncode, json.load(f), os.listdir(work)

    def test_complete(self):
        rc, doc, files = self.run_topk(0)
        self.assertEqual(rc, 0)
        self.assertIs(doc["complete"], True)
        self.assertEqual([r["n"] for r in doc["rows"]], [1 << 10] * 2 + [1 << 12] * 2 + [1 << 14] * 2)
        self.assertEqual(files, ["torch_topk.json"])

    def test_cut_keeps_the_rows_before(self):
        rc, doc, _ = self.run_topk(4)  # the empty file, then 3 rows
        self.assertEqual(rc, 124)
        self.assertIs(doc["complete"], False)
        self.assertEqual([r["n"] for r in doc["rows"]], [1 << 10, 1 << 10, 1 << 12])

    def test_cut_before_the_first_row(self):
        rc, doc, _ = self.run_topk(1)
        self.assertEqual(rc, 124)
        self.assertEqual(doc["rows"], [])  # not the earlier run's
        self.assertIs(doc["complete"], False)


if __name__ == "__main__":
    unittest.main()
