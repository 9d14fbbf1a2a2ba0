#!/usr/bin/env python3
"""GPU checks of gradcomp.torch's DDP hook (tools/gpu-check.sh step torch_hooks).

First hook_exact: tools/hook_exact_rank.py on 2 ranks, gradcomp_hook and
GradcompReduceScatter bit for bit against the CPU world's serial reference, their inputs
written late on a non-default stream (key torch_hook_exact_bitwise); in the same run, the hook
on a real DDP through register_ddp_hook(wrap=fp16_compress_wrapper), bit for bit against that
reference in fp16 (torch_hook_wrap_fp16_bitwise), and ZeroRedundancyOptimizer with
overlap_with_ddp=True stepping in torch's hook_with_zero_step around the hook against SGD after
the hook (torch_hook_zero_overlap_params_equal; NCCL only: torch refuses it on gloo), and
DDP(find_unused_parameters=True) with a compressed weight unused on every rank at one step, with
gradient_as_bucket_view off and on: what its error feedback released there reaches its later
gradients, nothing lost (torch_hook_unused_carry_conserved). Then 4
ranks on one GPU (tools/gc_ranks.py), tools/ddp_train.py's MLP:
  none        uncompressed, no hook: the baseline
  hook_qsgd4  the hook, QSGD 4-bit, layer-aware (biases and small layers in fp32)
  hook_whole  the hook on whole buckets (--whole-buckets --layer-min-size 0 --start-iter 0)
  preload     QSGD 4-bit under LD_PRELOAD: the same buckets, so the same compressed bytes
  resume      the hook with --resume-check: checkpoint, resume in a fresh DDP, bit for bit;
              its state ends with abort() (--abort-check: a second abort() and close() do
              nothing, a hook call then refuses)
and, when libgradcomp exports gradcompReduceScatterKeyed and this PyTorch's FSDP2 takes
set_custom_reduce_scatter (PyTorch >= 2.9; otherwise the run "fsdp" is skipped with the
reason), tools/fsdp_hook_train.py's FSDP2 MLP with FSDP's reduce-scatter and with
GradcompReduceScatter (QSGD 4-bit); then, where this FSDP2 has set_all_reduce_hook, the same
MLP as 2 replicas of world/2 shards: native HSDP ("hsdp_none") and FSDP over the shard mesh with
GradcompReplicaAllReduce across the replicas ("hsdp_qsgd4").
The runs go in this order: none and hook_qsgd4 first (the goal key
ddp_hook_qsgd4_acc_delta_pts), then hook_exact, hook_whole, preload, resume, the FSDP2 pair and
the HSDP pair. Writes OUTDIR/torch_hooks.json and .md (--name: another name).
Usage: torch_hooks_check.py OUTDIR [BUILD_DIR] [--device cpu] [--smoke] [--runs ddp,fsdp,hsdp]
                            [--name NAME] [--plan]
`--runs` picks the families of runs (ddp: hook_exact to resume; fsdp; hsdp): tools/gpu-check.sh
runs ddp,fsdp in its torch_hooks step and hsdp in its torch_hooks_hsdp step (--name
torch_hooks_hsdp), whose budgets do not hold all three. `--plan` starts nothing: it prints each
selected run with its estimate (estimate_s) and whether the skip rule below lets it run in
GC_HOOK_BUDGET_S, "skipped" where it would not (bench/plan_check.sh fails on that).
`--device cpu` (2 ranks, gloo): every run but the preload's, the hook and the FSDP2
reduce-scatter on gradcomp's CPU backend over TCP (GradcompState(backend="cpu"): the same
codecs and algorithms); the preload run is reported "skipped on CPU" (it interposes NCCL), so
the hook-vs-preload bytes are the GPU's to compare, and hook_exact's ZeRO overlap "skipped on
gloo" (its SGD reference still runs). --smoke trains 1 epoch (FSDP: 20 steps,
resume after 20 steps of 1 epoch); CTest's python.torch_hooks_cpu runs both.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import gc_ranks  # noqa: E402


# The families of runs (--runs), in the order main() runs them.
FAMILIES = {"ddp": ("none", "hook_qsgd4", "hook_exact", "hook_whole", "preload", "resume"),
            "fsdp": ("fsdp_none", "fsdp_qsgd4"), "hsdp": ("hsdp_none", "hsdp_qsgd4")}
# The runs of the goal key ddp_hook_qsgd4_acc_delta_pts (issue 14): first, before anything the
# budget could cut (bench/plan_check.sh checks the order).
GOAL_RUNS = ("none", "hook_qsgd4")


def estimate_s(name, epochs, world):
    """A run's seconds on an H100/H200 at 4 ranks sharing the GPU, from the H100's DDP runs
    under LD_PRELOAD (bench/results/2026-11-25-h100-80gb-hbm3/ddp_runs.tsv, 30 epochs: 660 steps
    at 4 ranks, 22 a epoch; none_n4 70 s, qsgd4_n4 45 s, none_n2 29 s for 1320 steps): ~14 s to
    start the ranks, 85 ms a step uncompressed and 47 ms under QSGD 4-bit at 4 ranks (the hook's
    compressed calls are the preload's; hook_qsgd4 adds a full-precision allreduce of 1034
    elements, ~3 ms), 11 ms a step at 2 ranks. FSDP2 (300 steps; 3 all-gathers each way and 3
    reduce-scatters a step: 1.5 allreduces' bytes and 9 latencies, ~5 ms each) ~170 ms a step at
    4 ranks; HSDP's collectives are 2-rank ones (2 shards, 2 replicas; 12 a step): ~75 ms a step,
    the FSDP2 bound at 2 ranks doubled. hook_exact: ranks started, no training but three small
    DDPs of 4 to 6 steps at 2 ranks (the fp16 wrapper's, ZeRO's overlap and its SGD reference)
    and two of 45 steps of a 1,568-parameter model (the unused parameter's), each with a
    gradcomp comm of its own (~35 s). Used for
    --plan (bench/plan_check.sh): the skip rule itself judges runs by the ones that finished."""
    start = 14.0
    steps = 22 * int(epochs) * 4 // max(world, 1)
    per_step = {"none": 0.085, "hook_qsgd4": 0.050, "hook_whole": 0.047, "preload": 0.047}
    if name in per_step:
        return start + steps * per_step[name]
    if name == "resume":  # 10 epochs, then the resume check retrains 200 + 1 + 20 steps
        return start + (220 + 221) * 0.050 + 6.0
    if name == "hook_exact":
        return 35.0
    if name in ("fsdp_none", "fsdp_qsgd4"):
        return start + 300 * 0.170
    if name in ("hsdp_none", "hsdp_qsgd4"):
        return start + 300 * 0.075
    raise KeyError(name)


def fits(left, guess):
    """The skip rule: a run starts when what is left holds 1.1 times the longest finished run of
    its kind (of any kind for a kind not yet run) and 10 s, and at least 30 s."""
    return left >= max(30.0, 1.1 * guess + 10)


def summarize(res0, runs, got, world, cpu, out, families=tuple(FAMILIES), name="torch_hooks"):
    """torch_hooks.json and .md from the runs finished so far (written after every run, and at
    the end); the exit status: 1 when a run failed or a check is not true."""
    res = dict(res0)
    exact, base, hq, whole = got.get("hook_exact"), got.get("none"), got.get("hook_qsgd4"), \
        got.get("hook_whole")
    pre, resume = got.get("preload"), got.get("resume")
    fsdp_base, fsdp_gc = got.get("fsdp_none"), got.get("fsdp_qsgd4")
    hsdp_base, hsdp_gc = got.get("hsdp_none"), got.get("hsdp_qsgd4")
    if exact:
        res["torch_hook_exact_bitwise"] = exact["bitwise"]
        res["torch_hook_exact_results_checked"] = (exact["allreduce_results_checked"]
                                                   + exact["reduce_scatter_results_checked"])
        res["torch_hook_exact_mismatches"] = exact["mismatches"]
        res["torch_hook_scaler_bitwise"] = exact.get("scaler_bitwise")
        res["torch_hook_scaler_results_checked"] = exact.get("scaler_results_checked")
        # torch's hook wrappers around the hook (register_ddp_hook's wrap=): None and the reason
        # where this torch lacks the wrapper (or, for ZeRO's overlap, on gloo).
        res["torch_hook_wrap_fp16_bitwise"] = exact.get("wrap_bitwise")
        res["torch_hook_wrap_fp16_results_checked"] = exact.get("wrap_results_checked")
        res["torch_hook_wrap_fp16_mismatches"] = exact.get("wrap_mismatches")
        res["torch_hook_wrap_fp16_skipped"] = exact.get("wrap_skipped")
        res["torch_hook_zero_overlap_params_equal"] = exact.get("zero_overlap_params_equal")
        res["torch_hook_zero_overlap_steps"] = exact.get("zero_overlap_steps")
        res["torch_hook_zero_overlap_mismatches"] = exact.get("zero_overlap_mismatches")
        res["torch_hook_zero_overlap_skipped"] = exact.get("zero_overlap_skipped")
        # DDP(find_unused_parameters=True), a parameter unused on every rank at one step: the
        # gradients it got sum to its averaged gradients (None and why where skipped).
        res["torch_hook_unused_carry_conserved"] = exact.get("unused_carry_conserved")
        res["torch_hook_unused_carry_max_error"] = exact.get("unused_carry_max_error")
        res["torch_hook_unused_carry_mismatches"] = exact.get("unused_carry_mismatches")
        res["torch_hook_unused_carry_skipped"] = exact.get("unused_carry_skipped")
    if fsdp_base and fsdp_gc:
        res["fsdp_hook_qsgd4_acc_delta_pts"] = fsdp_gc["accuracy_pct"] - fsdp_base["accuracy_pct"]
        res["fsdp_hook_qsgd4_test_loss_rel_delta"] = (
            (fsdp_gc["test_loss"] - fsdp_base["test_loss"]) / fsdp_base["test_loss"])
        res["fsdp_hook_qsgd4_params_identical"] = fsdp_gc["params_identical"]
        g = (fsdp_gc["stats"] or {}).get("gradcomp") or {}
        res["fsdp_hook_qsgd4_calls_compressed_rank0"] = g.get("calls_compressed")
    if hsdp_base and hsdp_gc:
        res["hsdp_hook_qsgd4_acc_delta_pts"] = hsdp_gc["accuracy_pct"] - hsdp_base["accuracy_pct"]
    if hsdp_gc:
        g = (hsdp_gc["stats"] or {}).get("gradcomp") or {}
        res["hsdp_hook_qsgd4_calls_compressed_rank0"] = g.get("calls_compressed")
        res["hsdp_hook_qsgd4_params_identical"] = hsdp_gc["params_identical"]
    if base and hq:
        res["ddp_hook_qsgd4_acc_delta_pts"] = hq["accuracy_pct"] - base["accuracy_pct"]
        res["ddp_hook_qsgd4_acc_pct"] = hq["accuracy_pct"]
        res["ddp_hook_none_acc_pct"] = base["accuracy_pct"]
    if hq:
        st = hq["hook_stats"]
        res["ddp_hook_qsgd4_params_identical"] = hq["params_identical"]
        res["ddp_hook_qsgd4_compressed_calls_rank0"] = st.get("compressed_calls")
        res["torch_hook_full_precision_params"] = st["full_precision_params"]
        res["torch_hook_compressed_params"] = st["compressed_params"]
        res["torch_hook_full_precision_bytes_rank0"] = st["full_precision_bytes"]
        g = st["gradcomp"] or {}
        res["torch_hook_layer_aware_wire_bytes_rank0"] = g.get("bytes_on_wire")
        res["torch_hook_layer_aware_dense_bytes_rank0"] = g.get("bytes_in")
    if whole:
        g = whole["hook_stats"]["gradcomp"] or {}
        res["torch_hook_whole_bytes_rank0"] = g.get("bytes_on_wire")
        res["torch_hook_whole_calls_rank0"] = g.get("calls_compressed")
        res["torch_hook_whole_params_identical"] = whole["params_identical"]
    if pre:
        per_rank = gc_ranks.preload_bytes(os.path.join(out, "hook_preload"), world)
        if per_rank and per_rank[0]:
            res["torch_preload_bytes_rank0"] = per_rank[0][2]
            res["torch_preload_calls_rank0"] = per_rank[0][0]
    if "torch_hook_whole_bytes_rank0" in res and "torch_preload_bytes_rank0" in res:
        res["torch_hook_vs_preload_bytes_equal"] = (
            res["torch_hook_whole_bytes_rank0"] == res["torch_preload_bytes_rank0"]
            and res["torch_hook_whole_calls_rank0"] == res["torch_preload_calls_rank0"])
    if resume and resume.get("resume_check"):
        res["torch_hook_resume_bitwise"] = resume["resume_check"]["bitwise_equal"]
        res["torch_hook_resume_after_steps"] = resume["resume_check"]["after_steps"]
    if resume and resume.get("abort_check"):
        res["torch_hook_abort_refuses_after"] = resume["abort_check"]["hook_refused"]
        res["torch_hook_abort_seconds_rank0"] = resume["abort_check"]["seconds"]
    ident = [r["params_identical"] for r in (base, hq, whole, pre, resume, fsdp_base, fsdp_gc,
                                             hsdp_base, hsdp_gc) if r]
    res["torch_hooks_params_identical_all_runs"] = all(ident) if ident else None
    res["torch_hooks_runs"] = runs
    res["torch_hooks_runs_ok"] = sum(1 for r in runs.values() if r["status"] == "ok")
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    fmt = lambda k: res.get(k, "n/a")  # noqa: E731

    def fmt_or_skip(k, why):  # a check's verdict, or why it did not run
        return res[why] if res.get(k) is None and res.get(why) else fmt(k)

    wrap_fp16 = fmt_or_skip("torch_hook_wrap_fp16_bitwise", "torch_hook_wrap_fp16_skipped")
    zero_overlap = fmt_or_skip("torch_hook_zero_overlap_params_equal",
                               "torch_hook_zero_overlap_skipped")
    unused_carry = fmt_or_skip("torch_hook_unused_carry_conserved",
                               "torch_hook_unused_carry_skipped")
    where = ("on the CPU (gloo; gradcomp's CPU backend over TCP, the preload run needs the GPU "
             "box)" if cpu else "on one GPU")
    md = ["### gradcomp.torch DDP hook (MLP on digits, %d ranks %s)" % (world, where), "",
          "| check | result |", "|---|---|",
          f"| hooks bit for bit vs the CPU world's serial reference, 2 ranks, gradients "
          f"written late on another stream (results checked) | "
          f"{fmt('torch_hook_exact_bitwise')} ({fmt('torch_hook_exact_results_checked')}) |",
          f"| hook with grad_scaler: results of gradients scaled 1024, 512, 4096, 0.5 are the "
          f"scale times the unscaled ones, bit for bit (results checked) | "
          f"{fmt('torch_hook_scaler_bitwise')} ({fmt('torch_hook_scaler_results_checked')}) |",
          f"| hook on DDP through register_ddp_hook(wrap=fp16_compress_wrapper): each call's "
          f"fp16 result bit for bit vs the CPU world's serial reference, DDP's gradients that "
          f"result (results checked) | {wrap_fp16} "
          f"({fmt('torch_hook_wrap_fp16_results_checked')}) |",
          f"| ZeroRedundancyOptimizer(overlap_with_ddp=True) in hook_with_zero_step around the "
          f"hook: parameters after each of {fmt('torch_hook_zero_overlap_steps')} steps bit for "
          f"bit SGD's after the hook (both from step 2, as the overlap) | {zero_overlap} |",
          f"| DDP(find_unused_parameters=True), a top-k weight unused on every rank at one step, "
          f"gradient_as_bucket_view off and on: the gradients it got sum to its averaged "
          f"gradients (max abs difference) | {unused_carry} "
          f"({fmt('torch_hook_unused_carry_max_error')}) |",
          f"| accuracy, hook QSGD 4-bit layer-aware vs uncompressed (pts) | "
          f"{fmt('ddp_hook_qsgd4_acc_delta_pts')} |",
          f"| parameters bitwise identical on all ranks (every run) | "
          f"{fmt('torch_hooks_params_identical_all_runs')} |",
          f"| hook (whole buckets) vs LD_PRELOAD: same compressed bytes and calls | "
          f"{fmt('torch_hook_vs_preload_bytes_equal')} ({fmt('torch_hook_whole_bytes_rank0')} vs "
          f"{fmt('torch_preload_bytes_rank0')} bytes, rank 0) |",
          f"| kept in full precision by the layer-aware rule | "
          f"{', '.join(res.get('torch_hook_full_precision_params', [])) or 'n/a'} |",
          f"| compressed | {', '.join(res.get('torch_hook_compressed_params', [])) or 'n/a'} |",
          f"| save / resume in a fresh DDP + state, bit for bit | "
          f"{fmt('torch_hook_resume_bitwise')} |",
          f"| state.abort() (gradcomp's NCCL comm, then its comm; s, rank 0); hook refused "
          f"after | {fmt('torch_hook_abort_seconds_rank0')}, "
          f"{fmt('torch_hook_abort_refuses_after')} |",
          f"| FSDP2 GradcompReduceScatter QSGD 4-bit: accuracy vs FSDP's own (pts), compressed "
          f"calls | {fmt('fsdp_hook_qsgd4_acc_delta_pts')}, {fmt('fsdp_hook_qsgd4_calls_compressed_rank0')} |",
          f"| HSDP (2 replicas) GradcompReplicaAllReduce QSGD 4-bit: accuracy vs native HSDP "
          f"(pts), compressed calls | {fmt('hsdp_hook_qsgd4_acc_delta_pts')}, "
          f"{fmt('hsdp_hook_qsgd4_calls_compressed_rank0')} |",
          ""]
    md += [f"- {k}: {v['status']}" for k, v in runs.items()]
    with open(os.path.join(out, name + ".md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    bad = [k for k, v in runs.items() if v["status"].startswith(("failed", "timed out"))]
    # The compressed runs compressed (gradcomp sending every call uncompressed only warns; an
    # FSDP reduce op the hook does not serve falls back to torch's, warned once).
    def compressed(v):
        return None if v is None else v > 0

    hq_calls = res.get("ddp_hook_qsgd4_compressed_calls_rank0")
    checks = []
    if "ddp" in families:
        checks = [res.get("torch_hook_exact_bitwise"),
                  res.get("torch_hook_vs_preload_bytes_equal"),
                  res.get("torch_hook_resume_bitwise"), res.get("torch_hook_abort_refuses_after"),
                  res.get("torch_hooks_params_identical_all_runs"),
                  compressed(hq_calls), compressed(res.get("torch_hook_whole_calls_rank0"))]
    elif ident:  # the FSDP2 or HSDP runs alone (--runs): their parameters, where any finished
        checks = [res.get("torch_hooks_params_identical_all_runs")]
    if fsdp_gc is not None:
        checks.append(compressed(res.get("fsdp_hook_qsgd4_calls_compressed_rank0")))
    if hsdp_gc is not None:
        checks.append(compressed(res.get("hsdp_hook_qsgd4_calls_compressed_rank0")))
    if exact and exact.get("scaler_bitwise") is not None:
        checks.append(exact["scaler_bitwise"])
    # torch's hook wrappers: checked where they ran (skipped: this torch lacks them, or gloo).
    # The unused parameter's carry likewise (skipped: this torch cannot name the backward).
    for k in ("wrap_bitwise", "zero_overlap_params_equal", "unused_carry_conserved"):
        if exact and exact.get(k) is not None:
            checks.append(exact[k])
    if cpu and "ddp" in families:  # no preload run to compare the hook's bytes with
        checks = [c for i, c in enumerate(checks) if i != 1]
        checks.append(all(r is not None for r in (base, hq, whole)))
    return 1 if bad or not all(c is True for c in checks) else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("build", nargs="?", default="build-gpu")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--smoke", action="store_true", help="1 epoch, FSDP 20 steps")
    ap.add_argument("--runs", default="ddp,fsdp,hsdp",
                    help="families of runs, comma-separated: ddp, fsdp, hsdp (default: all)")
    ap.add_argument("--name", default="torch_hooks", help="OUTDIR/NAME.json and .md")
    ap.add_argument("--plan", action="store_true",
                    help="start nothing: each run's estimate and whether the budget holds it")
    a = ap.parse_args()
    families = [f for f in a.runs.split(",") if f]
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        ap.error(f"--runs '{a.runs}': each of ddp, fsdp, hsdp (comma-separated), not "
                 f"{', '.join(bad) or 'nothing'}")
    out = os.path.abspath(a.outdir)
    build = a.build
    if not os.path.isdir(os.path.join(ROOT, build)):
        build = "build"
    build = os.path.join(ROOT, build)
    if not a.plan:
        os.makedirs(out, exist_ok=True)
    cpu = a.device == "cpu"
    world = int(os.environ.get("GC_HOOK_WORLD", "2" if cpu else "4"))
    epochs = os.environ.get("GC_HOOK_EPOCHS", "1" if a.smoke else "40")
    fsdp_steps = ["--steps", "20"] if a.smoke else []
    budget = float(os.environ.get("GC_HOOK_BUDGET_S", "420"))
    deadline = time.time() + budget
    planned = [0.0]  # --plan: the estimates of the runs planned so far
    # GRADCOMP_AUTO=0: the runs measure compression itself, which auto would
    # skip for the allreduces and reduce-scatters NCCL does faster.
    base_env = {"PYTHONPATH": os.path.join(ROOT, "python"),
                "GRADCOMP_LIBRARY": os.path.join(build, "libgradcomp.so"),
                "GRADCOMP_METHOD": "qsgd", "GRADCOMP_BITS": "4", "GRADCOMP_AUTO": "0"}
    if cpu:  # one core per rank: the ranks do not fight over the cores
        base_env["OMP_NUM_THREADS"] = "1"
    preload = os.path.join(build, "plugin", "preload", "libgradcomp_preload.so")
    res = {"torch_hooks_world": world, "torch_hooks_epochs": int(epochs),
           "torch_hooks_device": a.device, "torch_hooks_smoke": a.smoke}
    runs = {}
    got = {}  # the finished runs' results, by name
    # The longest finished run of each kind (a script and its length): a run that it says cannot
    # finish in what is left is skipped, not started to be killed at the budget (a timed-out run
    # fails the step).
    longest = {}

    def run(name, extra_args, env=None, use_preload=False, script="ddp_train.py", epochs_arg=True,
            kind=None, ranks=None):
        kind = kind or script
        if not any(name in FAMILIES[f] for f in families):
            return None
        if cpu and use_preload:
            runs[name] = {"status": "skipped on CPU: the preload interposes NCCL, which the CPU "
                                    "runs do not use (this run needs the GPU box)"}
            print(f"torch_hooks: {name}: {runs[name]['status']}", flush=True)
            return None
        if cpu:
            extra_args = extra_args + ["--device", "cpu"]
        left = (budget - planned[0]) if a.plan else deadline - time.time()
        # A kind not yet run (the first FSDP run) is judged by the longest run of any kind.
        guess = longest.get(kind, max(longest.values(), default=0.0))
        if a.plan:  # as if every run took its estimate
            est = estimate_s(name, epochs, world)
            if fits(left, guess):
                planned[0] += est
                longest[kind] = max(longest.get(kind, 0.0), est)
            print(f"plan-run: {a.name} {name} ~{est:.0f}s "
                  f"{'runs' if fits(left, guess) else 'skipped'} "
                  f"(sum {planned[0]:.0f}s of {budget:.0f}s)", flush=True)
            return None
        if not fits(left, guess):
            runs[name] = {"status": "skipped (time budget spent)"}
            print(f"torch_hooks: {name}: {runs[name]['status']}", flush=True)
            return None
        path = os.path.join(out, f"hook_{name}.json")
        if os.path.exists(path):
            os.remove(path)
        e = dict(base_env)
        e.update(env or {})
        status, secs = gc_ranks.launch(
            ranks or world, [os.path.join(HERE, script), "--out", path]
            + (["--epochs", epochs] if epochs_arg else []) + extra_args,
            os.path.join(out, f"hook_{name}"), env=e,
            timeout=min(240, left - 10), preload=preload if use_preload else None)
        runs[name] = {"status": status, "seconds": round(secs, 1)}
        print(f"torch_hooks: {name}: {status} in {secs:.0f}s", flush=True)
        if status == "ok":
            longest[kind] = max(longest.get(kind, 0.0), secs)
        r = None
        if status == "ok" and os.path.exists(path):
            with open(path) as f:
                r = json.load(f)
            if r.get("preload_loaded", False) != use_preload:
                runs[name]["status"] = (f"failed (the preload was "
                                        f"{'not ' if use_preload else ''}loaded in the ranks)")
                r = None
        got[name] = r
        # After every run: a step limit that ends this script keeps what finished.
        summarize(res, runs, got, world, cpu, out, families, a.name)
        return r

    # First the goal key's runs (GOAL_RUNS: ddp_hook_qsgd4_acc_delta_pts), so that no budget
    # cut can cost them; then the hooks bit for bit against the CPU world's serial reference on 2
    # ranks, their gradients written late on a non-default stream (tools/hook_exact_rank.py).
    run("none", [])
    run("hook_qsgd4", ["--hook", "gradcomp"])
    run("hook_exact", [], script="hook_exact_rank.py", epochs_arg=False, ranks=2)
    run("hook_whole", ["--hook", "gradcomp", "--whole-buckets", "--layer-min-size", "0",
                       "--start-iter", "0"])
    run("preload", [], env={"GRADCOMP_DEBUG": "INFO"}, use_preload=True)
    run("resume", ["--hook", "gradcomp", "--abort-check"]
        + (["--epochs", "1", "--resume-check", "20"]
           if a.smoke else ["--epochs", "10", "--resume-check", "200"]),
        kind="resume")

    # FSDP2's custom reduce-scatter needs PyTorch >= 2.9 and a libgradcomp with the keyed
    # reduce-scatter: without them the FSDP runs are skipped with the reason, not failed.
    probe = subprocess.run(
        [sys.executable, "-c", "import gradcomp.torch.fsdp as f; print(f.unsupported_reason() "
         "or '')"] if not a.plan and "fsdp" in families else ["true"],
        env=dict(os.environ, **base_env),
        capture_output=True, text=True)
    no_rs = (probe.stdout.strip() if probe.returncode == 0 else
             "failed (could not ask gradcomp.torch.fsdp: %s)"
             % (probe.stderr.strip().splitlines() or ["no output"])[-1])
    if "fsdp" not in families:
        pass
    elif not no_rs:
        run("fsdp_none", fsdp_steps, script="fsdp_hook_train.py", epochs_arg=False)
        run("fsdp_qsgd4", ["--gradcomp"] + fsdp_steps, script="fsdp_hook_train.py",
            epochs_arg=False)
    else:
        runs["fsdp"] = {"status": no_rs if no_rs.startswith("failed") else "skipped: " + no_rs}
        print(f"torch_hooks: fsdp: {runs['fsdp']['status']}", flush=True)

    # HSDP by hand (2 replicas): FSDP2's all-reduce hook needs set_all_reduce_hook.
    probe = subprocess.run(
        [sys.executable, "-c", "import gradcomp.torch.fsdp as f; "
         "print(f.replica_unsupported_reason() or '')"] if not a.plan and "hsdp" in families
        else ["true"],
        env=dict(os.environ, **base_env), capture_output=True, text=True)
    no_ar = (probe.stdout.strip() if probe.returncode == 0 else
             "failed (could not ask gradcomp.torch.fsdp: %s)"
             % (probe.stderr.strip().splitlines() or ["no output"])[-1])
    if "hsdp" not in families:
        pass
    elif not no_ar and world % 2 == 0:
        # gradcomp's hook first: it has never run on a GPU, and its compressed-call and
        # identical-parameter keys need no baseline (only the accuracy delta does), where a
        # budget that holds one run would otherwise spend it on native HSDP.
        run("hsdp_qsgd4", ["--hsdp", "--gradcomp"] + fsdp_steps, script="fsdp_hook_train.py",
            epochs_arg=False)
        run("hsdp_none", ["--hsdp"] + fsdp_steps, script="fsdp_hook_train.py", epochs_arg=False)
    else:
        why = no_ar or f"{world} ranks do not make 2 replicas"
        runs["hsdp"] = {"status": why if why.startswith("failed") else "skipped: " + why}
        print(f"torch_hooks: hsdp: {runs['hsdp']['status']}", flush=True)
    if a.plan:
        return 0
    return summarize(res, runs, got, world, cpu, out, families, a.name)


if __name__ == "__main__":
    sys.exit(main())
