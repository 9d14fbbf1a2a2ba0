"""The GPU box's PyTorch scripts proved on the CPU: `torch_smoke.py lm_compare|torch_hooks`.

Runs tools/lm_compare.py or tools/torch_hooks_check.py with `--device cpu --smoke` (2 ranks,
gloo; the gradcomp hooks on gradcomp's CPU backend over TCP) into a fresh folder, checks what
they wrote against what the runs must give (the byte counts from the model's shapes, PowerSGD's
documented rule and docs/algorithms.md's two-shot formula, the corpus split, the preload runs
reported as skipped on CPU, finite losses, identical parameters on all ranks), then feeds the
folder to tools/gpu_report.py and checks the report carries the values through. Exits 77
(CTest: skipped) with the reason when this Python has no torch (or no matplotlib /
scikit-learn), and under GRADCOMP_TEST_GPU=1 (the GPU suite runs the scripts themselves).
"""
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOLS = os.path.join(ROOT, "tools")
SKIP = 77
NEEDS = {"lm_compare": ("torch", "matplotlib"), "torch_hooks": ("torch", "sklearn")}
CPU_SKIP = "skipped on CPU"
HOOK_RUNS = ("qsgd4_hook", "qsgd2_hook", "dgc_hook")
# GRADCOMP_ROUNDING=nearest and GRADCOMP_LEVELS=square reach the hook
NEAREST_RUNS = ("qsgd4_nearest_d128_hook", "qsgd4_square_hook")
SGD_RUNS = ("none_sgd", "qsgd4_sgd_hook", "dgc_sgd_hook")  # DGC in its setting: momentum SGD, momentum correction


def fail(msg):
    print(f"torch_smoke: FAIL: {msg}", flush=True)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


def run(argv, timeout):
    print("torch_smoke: " + " ".join(argv), flush=True)
    p = subprocess.run([sys.executable] + argv, cwd=ROOT, timeout=timeout,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(p.stdout, flush=True)
    return p.returncode


def report(out):
    """tools/gpu_report.py on the smoke's folder; returns its JSON and Markdown."""
    rep = os.path.join(os.path.dirname(out), "report")
    rc = run([os.path.join(TOOLS, "gpu_report.py"), "--dir", out, "--name", "smoke",
              "--md", rep + ".md", "--json", rep + ".json"], 60)
    expect(rc == 0, f"gpu_report.py exited {rc}")
    with open(rep + ".json") as f, open(rep + ".md") as g:
        return json.load(f), g.read()


def load(path):
    with open(path) as f:
        return json.load(f)


def qsgd_encoded_bytes(m, bits, d=512):
    """docs/algorithms.md: E(m) = 4*ceil(m/d) + 4*ceil(m*b/32) (fp32 scales, packed codes)."""
    return 4 * -(-m // d) + 4 * -(-m * bits // 32)


def twoshot_bytes(n, world, rank, bits, d=512):
    """Bytes rank `rank` sends in a two-shot call of n elements (docs/algorithms.md):
    sum_{j != rank} E(n_j) + (N-1) * E(n_rank), chunks of whole buckets, ceil(units/N) each."""
    units = -(-n // d)
    per = -(-units // world)
    off = [min(n, j * per * d) for j in range(world + 1)]
    E = [qsgd_encoded_bytes(off[j + 1] - off[j], bits, d) for j in range(world)]
    return sum(E[j] for j in range(world) if j != rank) + (world - 1) * E[rank]


def hook_step_bytes(stats, world, bits, min_elements=16384):
    """(gradcomp's wire bytes, its compressed calls) of one compressed step of rank 0, from the
    hook's buckets ([compressed, full-precision] elements each): a two-shot call per bucket
    whose compressed part reaches min_elements (GRADCOMP_MIN_ELEMENTS' default)."""
    parts = [c for c, _ in stats["buckets"] if c >= min_elements]
    return sum(twoshot_bytes(c, world, 0, bits) for c in parts), len(parts)


def compressed(p, layer_min_size=1024):
    """GradcompState's layer-aware rule, written from its description: dim() > 1 and at least
    layer_min_size elements."""
    return p.dim() > 1 and p.numel() >= layer_min_size


def layer_split(model):
    """(compressed, full-precision) element counts by the layer-aware rule."""
    comp = sum(p.numel() for p in model.parameters() if compressed(p))
    return comp, sum(p.numel() for p in model.parameters()) - comp


def powersgd_bytes_per_compressed_step(model, rank=4, min_compression_rate=2):
    """What PowerSGD's hook allreduces in one compressed step, by its documented rule: each
    gradient viewed as an n x (numel/n) matrix is sent as P (n x r) and Q (m x r), r =
    min(n, m, rank), when (n + m) * r * min_compression_rate < n * m; otherwise whole."""
    elems = 0
    for p in model.parameters():
        n = p.shape[0]
        m = p.numel() // n
        r = min(n, m, rank)
        elems += (n + m) * r if (n + m) * r * min_compression_rate < n * m else n * m
    return 4 * elems


def check_lm(out_root, build):
    out = os.path.join(out_root, "raw")
    # none_reseed (the noise floor) is the full study's: the smoke's numbers would be noise.
    os.environ["GC_LM_RUNS"] = ",".join(("none", "powersgd", "fp16", "qsgd4_preload") + HOOK_RUNS
                                        + SGD_RUNS + NEAREST_RUNS)
    # lm_compare skips the runs its time budget (300 s unless set, the GPU box's figure) has no
    # room for, which fails this check: ten runs of ~10 s each on a busy 2-core machine left it
    # a margin of 3. The budget here is what this check's own limit (500 s) leaves.
    os.environ.setdefault("GC_LM_BUDGET_S", "440")
    rc = run([os.path.join(TOOLS, "lm_compare.py"), out, build, "--device", "cpu", "--smoke"],
             500)
    expect(rc == 0, f"lm_compare.py exited {rc}")
    lm = load(os.path.join(out, "lm.json"))
    expect(lm["lm_device"] == "cpu" and lm["lm_smoke"] is True, f"device/smoke: {lm}")
    runs = lm["lm_runs"]
    made = ("none", "powersgd", "fp16") + HOOK_RUNS + SGD_RUNS + NEAREST_RUNS
    for name in made:
        expect(runs.get(name) == "ok", f"run {name}: {runs.get(name)}")
        expect(lm[f"lm_params_identical_{name}"] is True, f"{name}: ranks' parameters differ")
        expect(math.isfinite(lm[f"lm_val_loss_{name}"]), f"{name}: loss not finite")
    expect(runs.get("qsgd4_preload", "").startswith(CPU_SKIP) and "interposes NCCL" in
           runs["qsgd4_preload"], f"run qsgd4_preload: {runs.get('qsgd4_preload')}")
    expect("lm_val_loss_qsgd4_preload" not in lm, "the preload has a loss though it did not run")
    for key in ("qsgd4", "dgc", "powersgd", "qsgd4_sgd", "dgc_sgd", "qsgd4_nearest_d128_hook",
                "qsgd4_square_hook"):
        expect(math.isfinite(lm[f"lm_val_loss_rel_delta_{key}"]), f"{key}: no finite delta")
    # The SGD runs are compared with each other, not with AdamW's uncompressed run.
    sgd = lm["lm_val_loss_none_sgd"]
    want = (lm["lm_val_loss_dgc_sgd_hook"] - sgd) / sgd
    expect(lm["lm_val_loss_rel_delta_dgc_sgd"] == want,
           f"dgc_sgd delta {lm['lm_val_loss_rel_delta_dgc_sgd']} is not against none_sgd ({want})")

    # The corpus: every top-level .py of this Python's stdlib, 1 in ~10 by crc32 for validation.
    lib = sysconfig.get_paths()["stdlib"]
    files = sorted(f for f in os.listdir(lib) if f.endswith(".py"))
    train = [f for f in files if zlib.crc32(f.encode()) % 10 != 0]
    train_bytes = sum(os.path.getsize(os.path.join(lib, f)) for f in train) + len(train) - 1
    expect(lm["lm_corpus_files"] == len(files), f"corpus files {lm['lm_corpus_files']}")
    expect(lm["lm_corpus_train_bytes"] == train_bytes,
           f"train bytes {lm['lm_corpus_train_bytes']} != {train_bytes}")

    # Bytes per step and rank: the ring's 2(N-1)/N of what each run allreduced.
    sys.path.insert(0, TOOLS)
    import lm_compare
    import torch

    lm_compare.configure("cpu", True)
    torch.manual_seed(lm_compare.SEED)
    model = lm_compare.build_model(torch, torch.nn)
    nparams = sum(p.numel() for p in model.parameters())
    expect(lm["lm_num_params"] == nparams, f"parameters {lm['lm_num_params']} != {nparams}")
    world, steps, start = lm["lm_world"], lm["lm_steps"], lm_compare.START_ITER
    ring = 2.0 * (world - 1) / world
    dense = ring * 4 * nparams
    ps_start = lm_compare.POWERSGD_START  # PyTorch's advice: after the LR warm-up
    psgd = ring * (ps_start * 4 * nparams + (steps - ps_start) *
                   powersgd_bytes_per_compressed_step(model)) / steps
    got = {k: lm[f"lm_bytes_per_step_{k}"] for k in ("none", "fp16", "powersgd") + HOOK_RUNS}
    expect(got["none"] == dense, f"uncompressed bytes/step {got['none']} != {dense}")
    # The hook runs: START_ITER uncompressed steps, then two-shot's bytes for the layer-aware
    # compressed part of each bucket plus the ring's for the rest.
    comp_n, full_n = layer_split(model)
    for name, bits in (("qsgd4_hook", 4), ("qsgd2_hook", 2)):
        r = load(os.path.join(out, f"lm_{name}.json"))
        st = r["hook_stats"]
        expect([sum(b[i] for b in st["buckets"]) for i in (0, 1)] == [comp_n, full_n],
               f"{name} buckets {st['buckets']}: not the model's {comp_n} + {full_n}")
        per_step, calls = hook_step_bytes(st, world, bits)
        expect(calls == len(st["buckets"]), f"{name}: a bucket passed through {st['buckets']}")
        expect(st["gradcomp"]["calls_compressed"] == (steps - start) * calls,
               f"{name}: compressed calls {st['gradcomp']['calls_compressed']}")
        expect(st["gradcomp"]["bytes_in"] == 4 * comp_n * (steps - start),
               f"{name}: dense bytes compressed {st['gradcomp']['bytes_in']}")
        want = (start * dense + (steps - start) * (per_step + ring * 4 * full_n)) / steps
        expect(abs(got[name] - want) <= 1e-9 * want, f"{name} bytes/step {got[name]} != {want}")
    # DGC: warm-up densities fall back to a dense fp32 allreduce (4n bytes at N = 2, at most);
    # every compressed call sends something and never more than that.
    g = load(os.path.join(out, "lm_dgc_hook.json"))["hook_stats"]["gradcomp"]
    expect(g["calls_compressed"] >= steps - start, f"dgc_hook: calls {g['calls_compressed']}")
    expect(0 < g["bytes_on_wire"] <= (steps - start) * ring * 4 * comp_n,
           f"dgc_hook: {g['bytes_on_wire']} bytes on the wire")
    # DGC under momentum SGD: the parameters gradcomp compresses (and keeps the velocity of) get
    # no optimizer momentum, the others SGD's 0.9.
    opt = load(os.path.join(out, "lm_dgc_sgd_hook.json"))["optimizer"]
    n_comp = sum(1 for p in model.parameters() if compressed(p))
    n_all = len(list(model.parameters()))
    expect(opt["name"] == "sgd" and [(g["n"], round(g["momentum"], 6)) for g in opt["groups"]]
           == [(n_all - n_comp, 0.9), (n_comp, 0.0)], f"dgc_sgd_hook optimizer groups {opt}")
    for name in ("none_sgd", "qsgd4_sgd_hook"):  # one group, the optimizer's momentum
        opt = load(os.path.join(out, f"lm_{name}.json"))["optimizer"]
        expect([(g["n"], g["momentum"]) for g in opt["groups"]] == [(n_all, 0.9)],
               f"{name} optimizer groups {opt}")
    expect(got["qsgd2_hook"] < got["qsgd4_hook"] < got["fp16"], f"bytes/step: {got}")
    expect(got["fp16"] == dense / 2, f"fp16 bytes/step {got['fp16']} != {dense / 2}")
    expect(abs(got["powersgd"] - psgd) <= 1e-9 * psgd,
           f"PowerSGD bytes/step {got['powersgd']} != {psgd}")
    expect(got["powersgd"] < dense, "PowerSGD sent no fewer bytes than uncompressed")
    # Every run trained: the loss after the steps is below the first evaluation's.
    for name in made:
        r = load(os.path.join(out, f"lm_{name}.json"))
        expect(r["val_curve"][-1][1] < r["val_curve"][0][1], f"{name}: loss did not fall")
        expect(r["val_curve"][-1][0] == steps, f"{name}: curve ends at {r['val_curve'][-1]}")
    with open(os.path.join(out, "lm_loss.png"), "rb") as f:
        expect(f.read(8) == b"\x89PNG\r\n\x1a\n", "lm_loss.png is not a PNG")
    with open(os.path.join(out, "lm.md")) as f:
        md = f.read()
    expect(md.count(CPU_SKIP) == 1 and "on the CPU (gloo)" in md, "lm.md: " + md)

    summary, rep_md = report(out)
    for key in ("lm_val_loss_rel_delta_powersgd", "lm_val_loss_rel_delta_qsgd4",
                "lm_val_loss_rel_delta_dgc", "lm_val_loss_rel_delta_dgc_sgd",
                "lm_val_loss_rel_delta_qsgd4_sgd",
                "lm_bytes_ratio_qsgd4_vs_powersgd"):
        expect(summary[key] == lm[key], f"the report lost {key}")
    expect("](smoke/lm_loss.png)" in rep_md and "Language model head-to-head" in rep_md,
           "the report does not carry lm.md and its PNG link")


def check_hooks(out_root, build):
    out = os.path.join(out_root, "raw")
    rc = run([os.path.join(TOOLS, "torch_hooks_check.py"), out, build, "--device", "cpu",
              "--smoke"], 500)
    expect(rc == 0, f"torch_hooks_check.py exited {rc}")
    res = load(os.path.join(out, "torch_hooks.json"))
    runs = res["torch_hooks_runs"]
    # Where this PyTorch's FSDP2 takes no custom reduce-scatter (before 2.9), the FSDP runs
    # are skipped with that sentence; everything else still runs.
    import gradcomp.torch.fsdp

    no_fsdp = gradcomp.torch.fsdp.unsupported_reason()
    fsdp_runs = () if no_fsdp else ("fsdp_none", "fsdp_qsgd4")
    if no_fsdp:
        expect(runs["fsdp"]["status"] == "skipped: " + no_fsdp, f"run fsdp: {runs['fsdp']}")
        expect(not any(k.startswith("fsdp_") for k in runs), f"FSDP runs made: {runs}")
    # HSDP by hand (2 replicas of 1 shard here) where FSDP2 has set_all_reduce_hook.
    no_hsdp = gradcomp.torch.fsdp.replica_unsupported_reason()
    hsdp_runs = () if no_hsdp else ("hsdp_none", "hsdp_qsgd4")
    if no_hsdp:
        expect(runs["hsdp"]["status"] == "skipped: " + no_hsdp, f"run hsdp: {runs['hsdp']}")
    for name in ("hook_exact", "none", "hook_qsgd4", "hook_whole", "resume") + fsdp_runs \
            + hsdp_runs:
        expect(runs[name]["status"] == "ok", f"run {name}: {runs[name]}")
    # 2 ranks x (4 steps x 3 buckets + 3 reduce-scatters), every one bit for bit.
    expect(res["torch_hook_exact_bitwise"] is True and
           res["torch_hook_exact_results_checked"] == 2 * (4 * 3 + 3),
           f"hook_exact: {res.get('torch_hook_exact_bitwise')}, "
           f"{res.get('torch_hook_exact_results_checked')} results, "
           f"{res.get('torch_hook_exact_mismatches')}")
    # GradcompState(grad_scaler=...): 4 steps x 3 buckets on each of the 2 ranks.
    expect(res.get("torch_hook_scaler_bitwise") is True and
           res.get("torch_hook_scaler_results_checked") == 2 * 4 * 3,
           f"hook with grad_scaler: {res.get('torch_hook_scaler_bitwise')}, "
           f"{res.get('torch_hook_scaler_results_checked')} results")
    # register_ddp_hook(wrap=fp16_compress_wrapper) on a real DDP: every call's fp16 result bit
    # for bit, at least one call a step on each rank (4 steps); ZeRO's overlap with DDP is
    # NCCL's (torch refuses hook_with_zero_step on gloo): skipped, saying so.
    expect(res.get("torch_hook_wrap_fp16_bitwise") is True and
           (res.get("torch_hook_wrap_fp16_results_checked") or 0) >= 2 * 4,
           f"hook through wrap=fp16_compress_wrapper: {res.get('torch_hook_wrap_fp16_bitwise')}, "
           f"{res.get('torch_hook_wrap_fp16_results_checked')} results, "
           f"{res.get('torch_hook_wrap_fp16_mismatches')}")
    expect(res.get("torch_hook_zero_overlap_params_equal") is None and
           (res.get("torch_hook_zero_overlap_skipped") or "").startswith("skipped on gloo"),
           f"ZeRO overlap on gloo: {res.get('torch_hook_zero_overlap_params_equal')}, "
           f"{res.get('torch_hook_zero_overlap_skipped')}")
    # DDP(find_unused_parameters=True), p unused on every rank at one step, both
    # gradient_as_bucket_view: the gradients p got sum to its averaged gradients (skipped, with
    # the reason, where this PyTorch cannot name the backward a hook call belongs to).
    import torch

    no_carry = not hasattr(torch._C, "_current_graph_task_id")
    expect((res.get("torch_hook_unused_carry_conserved") is True and
            res.get("torch_hook_unused_carry_max_error") is not None) or
           (no_carry and res.get("torch_hook_unused_carry_conserved") is None and
            (res.get("torch_hook_unused_carry_skipped") or "").startswith("skipped: ")),
           f"unused parameter's carry: {res.get('torch_hook_unused_carry_conserved')}, "
           f"{res.get('torch_hook_unused_carry_skipped')}, "
           f"{res.get('torch_hook_unused_carry_mismatches')}")
    expect(runs["preload"]["status"].startswith(CPU_SKIP) and "interposes NCCL" in
           runs["preload"]["status"], f"run preload: {runs['preload']}")
    expect(res["torch_hooks_params_identical_all_runs"] is True, "ranks' parameters differ")
    expect(res["torch_hook_resume_bitwise"] is True, "the resumed hook run is not bit for bit")
    expect(res["torch_hook_abort_refuses_after"] is True,
           "after state.abort() a hook call did not refuse (or abort/close again failed)")
    expect(math.isfinite(res["ddp_hook_qsgd4_acc_delta_pts"]), "no hook accuracy delta")
    expect((res.get("ddp_hook_qsgd4_compressed_calls_rank0") or 0) > 0,
           "the layer-aware hook run compressed no call")
    expect("torch_hook_vs_preload_bytes_equal" not in res, "a preload comparison without a run")

    # The layer-aware hook: the weights compressed (a two-shot call per bucket and step from
    # step 2), the biases in full precision.
    sys.path.insert(0, TOOLS)
    import digits_mlp
    import torch

    model = digits_mlp.make_model(0, 512, torch.device("cpu"))
    comp_n, full_n = layer_split(model)
    hq = load(os.path.join(out, "hook_hook_qsgd4.json"))
    st, world, steps = hq["hook_stats"], hq["world"], hq["steps"]
    g = st["gradcomp"]
    expect(st["full_precision_params"] == ["0.bias", "2.bias", "4.bias"] and
           st["compressed_params"] == ["0.weight", "2.weight", "4.weight"],
           f"layer-aware split: {st['full_precision_params']} / {st['compressed_params']}")
    expect([sum(b[i] for b in st["buckets"]) for i in (0, 1)] == [comp_n, full_n],
           f"hook_qsgd4 buckets {st['buckets']}: not the model's {comp_n} + {full_n}")
    per_step, calls = hook_step_bytes(st, world, 4)
    expect(g["calls_compressed"] == (steps - 2) * calls and
           g["bytes_in"] == 4 * comp_n * (steps - 2),
           f"hook_qsgd4: {g['calls_compressed']} calls, {g['bytes_in']} dense bytes")
    want = (steps - 2) * per_step
    expect(g["bytes_on_wire"] == want, f"hook_qsgd4 wire bytes {g['bytes_on_wire']} != {want}")
    expect(st["full_precision_bytes"] == 4 * full_n * (steps - 2),
           f"hook_qsgd4 full-precision bytes {st['full_precision_bytes']}")
    # Whole buckets from step 0: every parameter byte of every step through gradcomp.
    gw = load(os.path.join(out, "hook_hook_whole.json"))["hook_stats"]["gradcomp"]
    expect(gw["bytes_in"] == 4 * (comp_n + full_n) * steps and gw["calls_compressed"] >= steps,
           f"hook_whole: {gw['calls_compressed']} calls, {gw['bytes_in']} dense bytes")
    if not no_fsdp:
        fq = load(os.path.join(out, "hook_fsdp_qsgd4.json"))
        expect(fq["params_identical"] is True and
               fq["stats"]["gradcomp"]["calls_reduce_scatter"] > 0, f"FSDP2 gradcomp run: {fq}")
    if not no_hsdp:
        hq2 = load(os.path.join(out, "hook_hsdp_qsgd4.json"))
        g2 = hq2["stats"]["gradcomp"]
        # Every step, each of the 3 Linear modules' reduce-scatter output (the root has no
        # parameters of its own; 1 shard here, so whole layers) through gradcomp's allreduce:
        # 64x512 and 512x512 (with biases) compressed, 512x10's 5130 elements passed (below
        # GRADCOMP_MIN_ELEMENTS, 16384).
        big, small, n = 64 * 512 + 512 + 512 * 512 + 512, 512 * 10 + 10, hq2["steps"]
        expect(hq2["hsdp"] is True and hq2["params_identical"] is True and
               g2["calls_compressed"] == 2 * n and g2["calls_passed_through"] == n and
               g2["bytes_in"] == 4 * big * n and hq2["stats"]["passed_dense_bytes"] == 4 * small * n
               and g2["calls_reduce_scatter"] == 0, f"HSDP gradcomp run: {hq2}")
        expect(res.get("hsdp_hook_qsgd4_calls_compressed_rank0") == g2["calls_compressed"],
               "torch_hooks.json lost the HSDP run's compressed calls")
    ddp = load(os.path.join(out, "hook_none.json"))
    expect(ddp["device"] == "cpu" and ddp["backend"] == "gloo" and ddp["world"] == 2,
           f"DDP run: {ddp}")
    expect(len(set(ddp["param_hashes"])) == 1, "DDP: parameter hashes differ")
    # 10 classes: chance is 10%; one epoch of the MLP reaches far above it.
    expect(ddp["accuracy_pct"] > 50, f"DDP accuracy {ddp['accuracy_pct']}")
    if not no_fsdp:
        fsdp = load(os.path.join(out, "hook_fsdp_none.json"))
        expect(fsdp["device"] == "cpu" and fsdp["params_identical"] is True,
               f"FSDP run: {fsdp}")
        expect(fsdp["accuracy_pct"] > 10, f"FSDP accuracy {fsdp['accuracy_pct']}")

    summary, rep_md = report(out)
    expect(summary["torch_hooks_params_identical_all_runs"] is True,
           "the report lost torch_hooks_params_identical_all_runs")
    expect(summary["torch_hook_exact_bitwise"] is True, "the report lost torch_hook_exact_bitwise")
    expect(summary["torch_hook_wrap_fp16_bitwise"] is True,
           "the report lost torch_hook_wrap_fp16_bitwise")
    expect(summary["torch_hook_unused_carry_conserved"] is (None if no_carry else True),
           "the report lost torch_hook_unused_carry_conserved")
    expect(summary["ddp_hook_qsgd4_acc_delta_pts"] == res["ddp_hook_qsgd4_acc_delta_pts"],
           "the report lost ddp_hook_qsgd4_acc_delta_pts")
    expect("gradcomp.torch DDP hook" in rep_md, "the report does not carry torch_hooks.md")
    if not no_hsdp:
        expect(summary["hsdp_hook_qsgd4_calls_compressed_rank0"] ==
               res["hsdp_hook_qsgd4_calls_compressed_rank0"],
               "the report lost hsdp_hook_qsgd4_calls_compressed_rank0")


def main():
    which = sys.argv[1]
    build = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else os.path.join(ROOT, "build")
    if os.environ.get("GRADCOMP_TEST_GPU") == "1":
        # The GPU suite runs the scripts themselves (tools/gpu-check.sh steps torch_hooks and
        # lm_compare): device time is not spent on their CPU rehearsal.
        print("torch_smoke: SKIP: GRADCOMP_TEST_GPU=1: the GPU suite runs these scripts on the "
              "GPU", flush=True)
        return SKIP
    missing = [m for m in NEEDS[which] if importlib.util.find_spec(m) is None]
    if missing:
        print(f"torch_smoke: SKIP: {sys.executable} cannot import {', '.join(missing)}: the "
              f"{which} CPU smoke needs {' and '.join(NEEDS[which])}; configure CMake with "
              "-DPython3_EXECUTABLE=<a Python that has them> to run it", flush=True)
        return SKIP
    tmp = tempfile.mkdtemp(prefix=f"gc_{which}_smoke_")
    try:
        (check_lm if which == "lm_compare" else check_hooks)(tmp, build)
    except BaseException:
        # A failure that does not come back on a rerun is explained by these or not at all:
        # every rank's full log and every run's JSON.
        keep = os.path.join(build, "Testing", "Temporary", os.path.basename(tmp))
        try:
            shutil.move(tmp, keep)
            print(f"torch_smoke: the runs' logs and results are kept in {keep}", flush=True)
        except OSError as e:
            print(f"torch_smoke: could not keep the runs' folder {tmp} in {keep}: {e}", flush=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"torch_smoke: {which}: OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
