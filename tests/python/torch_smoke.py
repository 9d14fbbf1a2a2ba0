"""The GPU box's PyTorch scripts proved on the CPU: `torch_smoke.py lm_compare|torch_hooks`.

Runs tools/lm_compare.py or tools/torch_hooks_check.py with `--device cpu --smoke` (2 ranks,
gloo) into a fresh folder, checks what they wrote against what the runs must give (the byte
counts from the model's shapes and PowerSGD's documented rule, the corpus split, the gradcomp
runs reported as skipped on CPU, identical parameters on all ranks), then feeds the folder to
tools/gpu_report.py and checks the report carries the values through. Exits 77 (CTest: skipped)
with the reason when this Python has no torch (or no matplotlib / scikit-learn), and under
GRADCOMP_TEST_GPU=1 (the GPU suite runs the scripts themselves).
"""
import importlib.util
import json
import math
import os
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
    rc = run([os.path.join(TOOLS, "lm_compare.py"), out, build, "--device", "cpu", "--smoke"],
             240)
    expect(rc == 0, f"lm_compare.py exited {rc}")
    lm = load(os.path.join(out, "lm.json"))
    expect(lm["lm_device"] == "cpu" and lm["lm_smoke"] is True, f"device/smoke: {lm}")
    runs = lm["lm_runs"]
    for name in ("none", "powersgd", "fp16"):
        expect(runs.get(name) == "ok", f"run {name}: {runs.get(name)}")
        expect(lm[f"lm_params_identical_{name}"] is True, f"{name}: ranks' parameters differ")
        expect(math.isfinite(lm[f"lm_val_loss_{name}"]), f"{name}: loss not finite")
    for name in ("qsgd4_preload", "qsgd4_hook", "qsgd2_hook", "dgc_hook"):
        expect(runs.get(name, "").startswith(CPU_SKIP), f"run {name}: {runs.get(name)}")
        expect(f"lm_val_loss_{name}" not in lm, f"{name} has a loss though it did not run")
    for key in ("qsgd4", "dgc"):
        expect(f"lm_val_loss_rel_delta_{key}" not in lm, f"{key}: a delta without a run")
    expect(lm["lm_bytes_ratio_qsgd4_vs_powersgd"] is None, "bytes ratio without a gradcomp run")

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
    psgd = ring * (start * 4 * nparams + (steps - start) * powersgd_bytes_per_compressed_step(
        model)) / steps
    got = {k: lm[f"lm_bytes_per_step_{k}"] for k in ("none", "fp16", "powersgd")}
    expect(got["none"] == dense, f"uncompressed bytes/step {got['none']} != {dense}")
    expect(got["fp16"] == dense / 2, f"fp16 bytes/step {got['fp16']} != {dense / 2}")
    expect(abs(got["powersgd"] - psgd) <= 1e-9 * psgd,
           f"PowerSGD bytes/step {got['powersgd']} != {psgd}")
    expect(got["powersgd"] < dense, "PowerSGD sent no fewer bytes than uncompressed")
    # Every run trained: the loss after the steps is below the first evaluation's.
    for name in ("none", "powersgd", "fp16"):
        r = load(os.path.join(out, f"lm_{name}.json"))
        expect(r["val_curve"][-1][1] < r["val_curve"][0][1], f"{name}: loss did not fall")
        expect(r["val_curve"][-1][0] == steps, f"{name}: curve ends at {r['val_curve'][-1]}")
    with open(os.path.join(out, "lm_loss.png"), "rb") as f:
        expect(f.read(8) == b"\x89PNG\r\n\x1a\n", "lm_loss.png is not a PNG")
    with open(os.path.join(out, "lm.md")) as f:
        md = f.read()
    expect(md.count(CPU_SKIP) == 4 and "on the CPU (gloo)" in md, "lm.md: " + md)

    summary, rep_md = report(out)
    expect(summary["lm_val_loss_rel_delta_powersgd"] == lm["lm_val_loss_rel_delta_powersgd"],
           "the report lost lm_val_loss_rel_delta_powersgd")
    for key in ("lm_val_loss_rel_delta_qsgd4", "lm_val_loss_rel_delta_dgc",
                "lm_bytes_ratio_qsgd4_vs_powersgd"):
        expect(summary[key] is None, f"report {key} = {summary[key]} without a gradcomp run")
    expect("](smoke/lm_loss.png)" in rep_md and "Language model head-to-head" in rep_md,
           "the report does not carry lm.md and its PNG link")


def check_hooks(out_root, build):
    out = os.path.join(out_root, "raw")
    rc = run([os.path.join(TOOLS, "torch_hooks_check.py"), out, build, "--device", "cpu",
              "--smoke"], 240)
    expect(rc == 0, f"torch_hooks_check.py exited {rc}")
    res = load(os.path.join(out, "torch_hooks.json"))
    runs = res["torch_hooks_runs"]
    for name in ("none", "fsdp_none"):
        expect(runs[name]["status"] == "ok", f"run {name}: {runs[name]}")
    for name in ("hook_qsgd4", "hook_whole", "preload", "resume", "fsdp_qsgd4"):
        expect(runs[name]["status"].startswith(CPU_SKIP), f"run {name}: {runs[name]}")
    expect(res["torch_hooks_params_identical_all_runs"] is True, "ranks' parameters differ")
    for key in ("ddp_hook_qsgd4_acc_delta_pts", "torch_hook_vs_preload_bytes_equal",
                "torch_hook_resume_bitwise"):
        expect(key not in res, f"{key} without a gradcomp run")
    ddp = load(os.path.join(out, "hook_none.json"))
    expect(ddp["device"] == "cpu" and ddp["backend"] == "gloo" and ddp["world"] == 2,
           f"DDP run: {ddp}")
    expect(len(set(ddp["param_hashes"])) == 1, "DDP: parameter hashes differ")
    # 10 classes: chance is 10%; one epoch of the MLP reaches far above it.
    expect(ddp["accuracy_pct"] > 50, f"DDP accuracy {ddp['accuracy_pct']}")
    fsdp = load(os.path.join(out, "hook_fsdp_none.json"))
    expect(fsdp["device"] == "cpu" and fsdp["params_identical"] is True, f"FSDP run: {fsdp}")
    expect(fsdp["accuracy_pct"] > 10, f"FSDP accuracy {fsdp['accuracy_pct']}")

    summary, rep_md = report(out)
    expect(summary["torch_hooks_params_identical_all_runs"] is True,
           "the report lost torch_hooks_params_identical_all_runs")
    expect(summary["ddp_hook_qsgd4_acc_delta_pts"] is None, "a hook delta without a run")
    expect("gradcomp.torch DDP hook" in rep_md, "the report does not carry torch_hooks.md")


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
    with tempfile.TemporaryDirectory(prefix=f"gc_{which}_smoke_") as tmp:
        (check_lm if which == "lm_compare" else check_hooks)(tmp, build)
    print(f"torch_smoke: {which}: OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
