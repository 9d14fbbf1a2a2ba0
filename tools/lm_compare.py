#!/usr/bin/env python3
"""Head-to-head on a small language model: gradcomp against PowerSGD and fp16 (GPU box).

A byte-level GPT (4 layers, width 256, 4 heads, context 128: about 3.3M
parameters) trained on the Python standard library's own .py files on the
machine that runs it (top-level files of sysconfig's stdlib, sorted; a file
is validation when crc32(name) % 10 == 0), DDP at 4 ranks on one GPU
(tools/gc_ranks.py: one NCCL_HOSTID per process, NCCL over loopback), the same
steps, batches and seeds for every run:

  none            uncompressed DDP
  qsgd4_preload   gradcomp QSGD 4-bit under LD_PRELOAD (whole buckets)
  qsgd4_hook      gradcomp QSGD 4-bit, gradcomp.torch hook, layer-aware
  qsgd2_hook      gradcomp QSGD 2-bit, hook
  qsgd5_hook      gradcomp QSGD 5-bit, hook (one bit more than the goal's: on the CPU study,
                  bench/results/2026-12-01-cpu-lm, 5-bit was +0.6% where 4-bit was +3.1%)
  qsgd4_d128_hook gradcomp QSGD 4-bit, hook, buckets of 128 (4% more bytes than the goal's
                  512: +1.1% on the CPU study, where non-uniform levels did not beat it)
  qsgd4_nearest_d128_hook
                  qsgd4_d128_hook with GRADCOMP_ROUNDING=nearest (levels rounded to the nearest,
                  no random draw, error feedback carries the bias; a contraction at buckets of
                  128 <= 4 s^2 = 196): a prototype gave +0.53% on the CPU study, same bytes
                  (key lm_val_loss_rel_delta_qsgd4_nearest_d128_hook, reported beside the goal's
                  _qsgd4)
  qsgd4_square_hook
                  qsgd4_hook with GRADCOMP_LEVELS=square (level k of s at (k/s)^2 of the bucket's
                  max: fine steps for the many small entries; the same bytes, still unbiased)
  qsgd4_square_nearest_hook
                  qsgd4_square_hook with GRADCOMP_ROUNDING=nearest (buckets of 512, the same
                  bytes as the goal's run)
  dgc_hook        gradcomp DGC 0.1% (threshold top-k, error feedback, density warm-up over the
                  first fifth of the steps; momentum correction off: AdamW keeps its own)
  powersgd        PyTorch's PowerSGD hook, rank 4, warm start, error feedback
  fp16            PyTorch's fp16_compress_hook
  none_reseed     uncompressed again, another data order (GC_LM_DATA_SEED): its difference
                  from `none` is the noise floor the other runs' differences stand on
  none_sgd        uncompressed DDP with momentum SGD (0.9, lr GC_LM_SGD_LR) instead of AdamW
  qsgd4_sgd_hook  qsgd4_hook under momentum SGD, compared with none_sgd (on the CPU study
                  4-bit was +3.1% under AdamW and -0.02% under momentum SGD)
  dgc_sgd_hook    DGC 0.1% in DGC's own setting: momentum SGD with gradcomp's momentum
                  correction (the velocity is accumulated before selection; the optimizer's
                  groups from GradcompState.param_groups: no momentum for what is compressed),
                  masking and the same warm-up; compared with none_sgd, not with AdamW's none
                  (key lm_val_loss_rel_delta_dgc_sgd, reported beside the goal's _dgc)

gradcomp's hook runs start compressing at step 2 (after DDP's bucket rebuild), the preload
at step 0; PowerSGD at PyTorch's advice, after the learning rate's warm-up and at about 10%
of the steps (step 30 of 300; its dense steps count in its bytes). Every run uses one DDP
bucket. AdamW, lr 1e-3 after 20 warm-up steps, 16 sequences of 128 bytes per rank and step,
300 steps (the time per run on an H100/H200 with the socket transport is not yet measured: a
review's estimate from the MLP's per-call times is 45 to 60 s for the uncompressed run and
about 90 s for PowerSGD's; GC_LM_BUDGET_S bounds the study, and a run the longest of its kind
so far would not fit is skipped). dgc_hook, which gives lm_val_loss_rel_delta_dgc, is top-k
at 0.1% with error feedback and DGC's warm-up under AdamW, without momentum correction
(AdamW keeps its own moments); dgc_sgd_hook is DGC in its own setting. Bytes per step are the
ranks' mean; a run whose ranks end with different parameters gets no comparison.

Gradient bytes sent per step and rank: gradcomp's bytes_on_wire (hook stats,
or the preload's INFO summary lines) plus the NCCL ring's 2(N-1)/N for what
went uncompressed (through torch.distributed, or calls gradcomp passed to
NCCL: the hook's and the preload's alike); PowerSGD's and the fp16 hook's
all_reduce payloads counted as they are sent, times the ring's 2(N-1)/N.

The runs are made in PRIORITY order (the goals' runs first), so a spent budget skips the
least needed; a run that the longest one so far would not fit in is skipped, not killed.

Writes OUTDIR/lm.json (keys lm_val_loss_rel_delta_qsgd4, _dgc, _powersgd,
lm_bytes_ratio_qsgd4_vs_powersgd, ...), OUTDIR/lm.md and OUTDIR/lm_loss.png.
Usage: lm_compare.py OUTDIR [BUILD_DIR] [--device cpu] [--smoke] [--keep]; --worker is the
per-rank entry.

`--device cpu`: gloo on the CPU, the gradcomp hook runs on gradcomp's CPU backend over TCP
(GradcompState(backend="cpu"): the same codecs and algorithms, bit for bit); qsgd4_preload is
skipped there (the preload interposes NCCL). Sizes for a 2-core machine: 2 layers, width 128,
context 64, 16 sequences per rank, 4 ranks, one thread per rank, 500 steps (bench/results/
2026-12-01-cpu-lm is such a study). `--device cpu --smoke` (a tiny model, 6 steps) runs every
run but the preload in about a minute (CTest's python.lm_compare_cpu). --keep reuses the
lm_<run>.json of OUTDIR made with the same sizes (a study resumed, or its uncompressed runs
made ahead). GC_LM_SET="GRADCOMP_BITS=8,..." overrides every run's own GRADCOMP_* settings (a
variant of the study, into its own OUTDIR); GC_LM_RUNS picks runs, GC_LM_STEPS the steps;
GC_LM_MODEL=gpu gives `--device cpu` the GPU study's model, steps and SGD rate (a CPU forecast
of the GPU study, bench/results/2026-12-03-cpu-lm-gpu-model; about 10 minutes a run on two cores,
so raise GC_LM_BUDGET_S, the whole study's seconds, 300 by default, to fit the runs wanted).
"""
import argparse
import json
import math
import os
import sys
import sysconfig
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

WARMUP, LR, START_ITER, SEED = 20, 1e-3, 2, 1234
# The *_sgd runs: momentum SGD, DGC's own setting (momentum correction on: gradcomp keeps the
# velocity of what it compresses, GradcompState.param_groups gives those parameters no optimizer
# momentum). Learning rate GC_LM_SGD_LR, by default the best of uncompressed runs at 0.1, 0.3,
# 0.5 and 1 for the CPU model (0.5 and 1 diverge; bench/results/2026-12-01-cpu-lm/README.md) and
# 0.1 for the GPU study's, which diverges at 0.3 (a 100-step CPU probe of its model at one
# rank's batch: bench/results/2026-12-01-cpu-lm/sgd_probe.md).
SGD_MOMENTUM = 0.9
OPT = os.environ.get("GC_LM_OPT", "adamw")
# The data order's seed (the model's initialisation keeps SEED): none_reseed changes it.
DATA_SEED = int(os.environ.get("GC_LM_DATA_SEED", SEED))


# GC_LM_MODEL=gpu: the GPU study's sizes with --device cpu too (see the module's text).
GPU_MODEL = os.environ.get("GC_LM_MODEL", "") == "gpu"


def configure(device, smoke, steps=None):
    """The run's sizes. device "cpu": gloo on the CPU, the hook runs on gradcomp's CPU
    backend, a smaller GPT; smoke: a tiny model and a few steps through the same code. The
    ranks get both through GC_LM_DEVICE, GC_LM_SMOKE and GC_LM_STEPS."""
    global DEVICE, SMOKE, STEPS, BATCH, CTX, WIDTH, LAYERS, HEADS, EVAL_EVERY, EVAL_BATCHES, SGD_LR
    global POWERSGD_START
    DEVICE, SMOKE = device, bool(smoke)
    cpu_sizes = DEVICE == "cpu" and not GPU_MODEL
    if SMOKE:
        BATCH, CTX, WIDTH, LAYERS, HEADS, EVAL_EVERY, EVAL_BATCHES = 4, 32, 32, 1, 2, 2, 2
    elif cpu_sizes:  # the CPU study: a GPT that trains in minutes on two cores
        BATCH, CTX, WIDTH, LAYERS, HEADS, EVAL_EVERY, EVAL_BATCHES = 16, 64, 128, 2, 4, 50, 8
    else:
        BATCH, CTX, WIDTH, LAYERS, HEADS, EVAL_EVERY, EVAL_BATCHES = 16, 128, 256, 4, 4, 25, 8
    STEPS = int(steps) if steps else (6 if SMOKE else 500 if cpu_sizes else 300)
    POWERSGD_START = max(START_ITER, min(WARMUP, STEPS // 2), STEPS // 10)
    SGD_LR = float(os.environ.get("GC_LM_SGD_LR", "0.3" if cpu_sizes else "0.1"))


configure(os.environ.get("GC_LM_DEVICE", "cuda"), os.environ.get("GC_LM_SMOKE") == "1",
          os.environ.get("GC_LM_STEPS"))


def runs():
    """(name, mode, GRADCOMP_* variables, under LD_PRELOAD), in the report's order."""
    qsgd = {"GRADCOMP_METHOD": "qsgd"}
    return [
        ("none", "ddp", {}, False),
        ("qsgd4_preload", "ddp", dict(qsgd, GRADCOMP_BITS="4", GRADCOMP_DEBUG="INFO"), True),
        ("qsgd4_hook", "hook", dict(qsgd, GRADCOMP_BITS="4"), False),
        ("qsgd2_hook", "hook", dict(qsgd, GRADCOMP_BITS="2"), False),
        ("qsgd5_hook", "hook", dict(qsgd, GRADCOMP_BITS="5"), False),
        ("qsgd4_d128_hook", "hook", dict(qsgd, GRADCOMP_BITS="4", GRADCOMP_BUCKET="128"), False),
        ("qsgd4_nearest_d128_hook", "hook",
         dict(qsgd, GRADCOMP_BITS="4", GRADCOMP_BUCKET="128", GRADCOMP_ROUNDING="nearest"), False),
        ("qsgd4_square_hook", "hook", dict(qsgd, GRADCOMP_BITS="4", GRADCOMP_LEVELS="square"),
         False),
        ("qsgd4_square_nearest_hook", "hook",
         dict(qsgd, GRADCOMP_BITS="4", GRADCOMP_LEVELS="square", GRADCOMP_ROUNDING="nearest"),
         False),
        ("dgc_hook", "hook", {"GRADCOMP_METHOD": "dgc", "GRADCOMP_DENSITY": "0.001",
                              "GRADCOMP_WARMUP_STEPS": str(STEPS // 5),
                              "GRADCOMP_MOMENTUM_CORRECTION": "0"}, False),
        ("powersgd", "powersgd", {}, False),
        ("fp16", "fp16", {}, False),
        ("none_reseed", "ddp", {"GC_LM_DATA_SEED": str(SEED + 1)}, False),
        ("none_sgd", "ddp", {"GC_LM_OPT": "sgd"}, False),
        ("qsgd4_sgd_hook", "hook", dict(qsgd, GRADCOMP_BITS="4", GC_LM_OPT="sgd"), False),
        ("dgc_sgd_hook", "hook", {"GRADCOMP_METHOD": "dgc", "GRADCOMP_DENSITY": "0.001",
                                  "GRADCOMP_WARMUP_STEPS": str(STEPS // 5),
                                  "GRADCOMP_MOMENTUM": str(SGD_MOMENTUM),
                                  "GRADCOMP_MOMENTUM_CORRECTION": "1", "GC_LM_OPT": "sgd"}, False),
    ]


def baseline(name):
    """The uncompressed run a run is compared with: the one with the same optimizer."""
    return "none_sgd" if dict((r[0], r[2]) for r in runs())[name].get("GC_LM_OPT") == "sgd" \
        and name != "none_sgd" else "none"


# The order the runs are made in: the seven first (qsgd4_hook, dgc_hook and powersgd
# give the report's goal keys), then none_reseed (the noise floor the 1% goal is read against),
# then qsgd4_nearest_d128_hook, the README's setting for Adam, forecast on the CPU at about +1%
# where the goal's run is about +4.6% (bench/results/2026-12-03-cpu-lm-gpu-model), square levels
# with nearest rounding, forecast at +0.55% at the goal's bytes
# (bench/results/2026-12-04-cpu-lm-square), and the rest. A run is skipped when the longest run
# of its mode so far (of any mode, before one ran) would not fit in what is left.
PRIORITY = ["none", "qsgd4_hook", "dgc_hook", "powersgd", "qsgd4_preload", "fp16", "qsgd2_hook",
            "none_reseed", "qsgd4_nearest_d128_hook", "qsgd4_square_nearest_hook",
            "qsgd4_square_hook", "none_sgd", "qsgd4_sgd_hook", "dgc_sgd_hook",
            "qsgd5_hook", "qsgd4_d128_hook"]
LABELS = {"none": "uncompressed", "qsgd4_preload": "gradcomp QSGD 4-bit (LD_PRELOAD)",
          "qsgd4_hook": "gradcomp QSGD 4-bit (hook, layer-aware)",
          "qsgd2_hook": "gradcomp QSGD 2-bit (hook)", "qsgd5_hook": "gradcomp QSGD 5-bit (hook)",
          "qsgd4_d128_hook": "gradcomp QSGD 4-bit, buckets of 128 (hook)",
          "qsgd4_nearest_d128_hook": "gradcomp QSGD 4-bit, nearest rounding, buckets of 128 (hook)",
          "qsgd4_square_hook": "gradcomp QSGD 4-bit, square levels (hook)",
          "qsgd4_square_nearest_hook": "gradcomp QSGD 4-bit, square levels, nearest rounding (hook)",
          "dgc_hook": "gradcomp DGC 0.1% (hook)",
          "powersgd": "PowerSGD rank 4 (torch hook)", "fp16": "fp16 compress (torch hook)",
          "none_reseed": "uncompressed, another data order (noise floor)",
          "none_sgd": "uncompressed, momentum SGD (vs AdamW)",
          "qsgd4_sgd_hook": "gradcomp QSGD 4-bit (hook), momentum SGD (vs SGD)",
          "dgc_sgd_hook": "gradcomp DGC 0.1%, momentum SGD + correction (vs SGD)"}


# ------------------------------------------------------------------ data, model
def corpus():
    """(train bytes, validation bytes, file count): the stdlib's top-level .py files."""
    lib = sysconfig.get_paths()["stdlib"]
    files = sorted(f for f in os.listdir(lib) if f.endswith(".py"))
    train, val = [], []
    for f in files:
        with open(os.path.join(lib, f), "rb") as fh:
            (val if zlib.crc32(f.encode()) % 10 == 0 else train).append(fh.read())
    return b"\n".join(train), b"\n".join(val), len(files)


def build_model(torch, nn):
    F = torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
            self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
            self.fc, self.out = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)
            self.register_buffer("mask", torch.tril(torch.ones(CTX, CTX, dtype=torch.bool)),
                                 persistent=False)

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, HEADS, c // HEADS).permute(2, 0, 3, 1,
                                                                                     4)
            # Plain attention (no fused kernel): the same arithmetic in every run.
            att = (q @ k.transpose(-2, -1)) / math.sqrt(c // HEADS)
            att = att.masked_fill(~self.mask[:t, :t], float("-inf")).softmax(-1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, c))
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = nn.Embedding(256, WIDTH), nn.Embedding(CTX, WIDTH)
            self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
            self.ln, self.head = nn.LayerNorm(WIDTH), nn.Linear(WIDTH, 256, bias=False)

        def forward(self, idx):
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.ln(x))

    return GPT()


def batch(torch, data, gen, n):
    starts = torch.randint(0, data.numel() - CTX - 1, (n,), generator=gen)
    x = torch.stack([data[s:s + CTX] for s in starts.tolist()])
    y = torch.stack([data[s + 1:s + CTX + 1] for s in starts.tolist()])
    return x, y


def sizes(world):
    """What a run's result depends on besides its mode: --keep reuses a result only if equal."""
    return {"width": WIDTH, "layers": LAYERS, "heads": HEADS, "context": CTX, "batch": BATCH,
            "steps": STEPS, "world": world, "device": DEVICE, "data_seed": DATA_SEED,
            "eval_every": EVAL_EVERY, "eval_batches": EVAL_BATCHES, "sgd_lr": SGD_LR}


# ------------------------------------------------------------------ one rank
def worker(args):
    import gc_ranks  # beside this script, the launcher's module
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.use_deterministic_algorithms(True, warn_only=True)
    dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if DEVICE == "cuda":
        torch.cuda.set_device(0)
    dev = torch.device(DEVICE, 0) if DEVICE == "cuda" else torch.device("cpu")
    train_b, val_b, nfiles = corpus()
    train = torch.frombuffer(bytearray(train_b), dtype=torch.uint8).long()
    val = torch.frombuffer(bytearray(val_b), dtype=torch.uint8).long()
    torch.manual_seed(SEED)
    model = build_model(torch, nn).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    # One bucket for every run (an explicit cap also lifts DDP's 1 MB first bucket), on the GPU
    # as on the CPU, whose forecasts measured it: on gloo, PowerSGD's hook issues collectives
    # from its futures' callbacks, which race with the next bucket's and mismatch across ranks
    # ("Received data size doesn't match"); on the GPU's socket transport every collective
    # pays a per-call floor, and DDP's two default buckets would make 6 of PowerSGD's a step.
    if DEVICE == "cuda":
        ddp = DDP(model, device_ids=[0], bucket_cap_mb=25)
    else:
        ddp = DDP(model, bucket_cap_mb=25)
    real_all_reduce = dist.all_reduce  # before the payload counting below wraps it
    mode = args.mode
    sent = {"bytes": 0}
    state = None
    if mode == "hook":
        import gradcomp.torch as gct

        state = gct.GradcompState(module=model, start_iter=START_ITER,
                                  backend="cpu" if DEVICE == "cpu" else "nccl")
        ddp.register_comm_hook(state, gct.gradcomp_hook)
    elif mode in ("powersgd", "fp16"):
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

        real = dist.all_reduce

        def counting_all_reduce(tensor, *a, **k):  # the payloads the hook allreduces
            sent["bytes"] += tensor.numel() * tensor.element_size()
            return real(tensor, *a, **k)

        dist.all_reduce = counting_all_reduce
        if mode == "powersgd":
            # PyTorch's advice: start after the learning rate's warm-up, at about 10% of the
            # steps (its bytes count those dense steps); gradcomp's runs start at step 2.
            st = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=4,
                                    start_powerSGD_iter=POWERSGD_START, warm_start=True,
                                    use_error_feedback=True, random_seed=SEED)
            ddp.register_comm_hook(st, psgd.powerSGD_hook)
        else:
            ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    if OPT == "sgd":
        # Under DGC's momentum correction gradcomp applies the momentum of what it compresses.
        groups = state.param_groups(ddp.parameters()) if state is not None else \
            [{"params": list(ddp.parameters())}]
        opt = torch.optim.SGD(groups, lr=SGD_LR, momentum=SGD_MOMENTUM)
    else:
        opt = torch.optim.AdamW(ddp.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP))
    lossf = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(DATA_SEED * 1000 + rank)  # rank's batches
    vgen = torch.Generator().manual_seed(SEED)
    vbatches = [batch(torch, val, vgen, BATCH) for _ in range(EVAL_BATCHES)]

    def evaluate():
        model.eval()
        with torch.no_grad():
            tot = sum(lossf(model(x.to(dev)).flatten(0, 1), y.to(dev).flatten()).item()
                      for x, y in vbatches)
        model.train()
        return tot / len(vbatches)

    curve, train_curve = [], []
    t0 = time.time()
    for step in range(STEPS):
        x, y = batch(torch, train, gen, BATCH)
        opt.zero_grad(set_to_none=True)
        loss = lossf(ddp(x.to(dev)).flatten(0, 1), y.to(dev).flatten())
        loss.backward()
        opt.step()
        sched.step()
        if rank == 0:
            train_curve.append(loss.item())
            if (step + 1) % EVAL_EVERY == 0 or step in (0, STEPS - 1):
                curve.append((step + 1, evaluate()))
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    secs = time.time() - t0
    blob = b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())
    _, hashes = gc_ranks.gather_hashes(blob)
    ring = 2.0 * (world - 1) / world
    dense = 4 * nparams
    if mode == "ddp":
        per_step = ring * dense  # the preload's runs are replaced by its summary lines
    elif mode == "hook":
        st = state.stats()
        g = st["gradcomp"] or {}
        # Calls gradcomp passed to NCCL (fewer than min_elements, auto) are dense on the ring too.
        passed = st["passed_dense_bytes"]
        per_step = (g.get("bytes_on_wire", 0) + ring * (st["full_precision_bytes"] + passed)
                    + ring * dense * st["uncompressed_steps"]) / STEPS
    elif sent["bytes"]:
        per_step = ring * sent["bytes"] / STEPS
    elif mode == "fp16":
        per_step = ring * dense / 2  # the hook sent through another call: every byte as fp16
    else:
        per_step = None  # the hook's payloads were not seen
    if per_step is not None and mode != "ddp":
        # The ranks' mean: a two-shot rank sends its own chunk's share.
        t = torch.tensor([float(per_step)], dtype=torch.float64, device=dev)
        real_all_reduce(t)
        per_step = t.item() / world
    res = {"mode": mode, "world": world, "steps": STEPS, "seconds": secs, "num_params": nparams,
           "val_curve": curve, "train_curve": train_curve, "final_val_loss": curve[-1][1]
           if curve else None, "bytes_per_step": per_step, "dense_bytes_per_step": ring * dense,
           "params_identical": len(set(hashes)) == 1, "corpus_files": nfiles,
           "corpus_train_bytes": len(train_b), "corpus_val_bytes": len(val_b),
           "hook_stats": state.stats() if state is not None else None,
           "preload_loaded": gc_ranks.preload_loaded(), "sizes": sizes(world),
           "optimizer": {"name": OPT, "lr": SGD_LR if OPT == "sgd" else LR,
                         "momentum": SGD_MOMENTUM if OPT == "sgd" else None,
                         "groups": [{"n": len(g["params"]), "momentum": g["momentum"]}
                                    for g in opt.param_groups] if OPT == "sgd" else None},
           "torch_version": torch.__version__}
    return gc_ranks.finish_rank(res, rank, args.out, state)


# ------------------------------------------------------------------ launcher
def verdict(status, results):
    """The exit status: 0 when the uncompressed run and every run made gave a result. A run
    skipped (the preload on the CPU; on the GPU box, the runs past the time budget: the 16 runs
    do not fit its 5 minutes, PRIORITY puts the goals' first) is not a failure; a failed or
    timed-out one is."""
    made = [n for n, st in status.items() if not st.startswith("skipped")]
    return 0 if status.get("none") == "ok" and all(n in results for n in made) else 1


def fits(left, estimate):
    """The skip rule: a run starts when what is left holds 1.1 times the longest run of its
    mode so far (of any mode before one ran) and 10 s, and at least 25 s. Its limit is what is
    left less 5 s: without the 10 s, a run under 50 s could start with a limit below its
    estimate and be killed (a timed-out run fails the study) rather than skipped."""
    return left >= max(25.0, 1.1 * estimate + 10)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", nargs="?")
    p.add_argument("build", nargs="?", default="build-gpu")
    p.add_argument("--device", choices=("cuda", "cpu"), default=DEVICE,
                   help="cpu: gloo on the CPU, the hook runs on gradcomp's CPU backend over TCP, "
                   "the preload run skipped, a smaller GPT")
    p.add_argument("--smoke", action="store_true", default=SMOKE,
                   help="a tiny model and %d steps (GC_LM_STEPS overrides)" % 6)
    p.add_argument("--keep", action="store_true",
                   help="reuse OUTDIR's lm_<run>.json made with the same sizes")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--mode")
    p.add_argument("--out")
    args = p.parse_args()
    if args.worker:
        import gc_ranks  # beside this file: the script's folder is on sys.path

        gc_ranks.run_rank(lambda: worker(args))
    if not args.outdir:
        p.error("OUTDIR is required")
    configure(args.device, args.smoke, os.environ.get("GC_LM_STEPS"))
    sys.path.insert(0, HERE)
    import gc_ranks

    out = os.path.abspath(args.outdir)
    os.makedirs(out, exist_ok=True)
    build = os.path.join(ROOT, args.build if os.path.isdir(os.path.join(ROOT, args.build))
                         else "build")
    world = int(os.environ.get("GC_LM_WORLD", "2" if SMOKE and DEVICE == "cpu" else "4"))
    deadline = time.time() + float(os.environ.get("GC_LM_BUDGET_S", "300"))
    preload = os.path.join(build, "plugin", "preload", "libgradcomp_preload.so")
    env = {"PYTHONPATH": os.path.join(ROOT, "python"),
           "GRADCOMP_LIBRARY": os.path.join(build, "libgradcomp.so"),
           "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "GC_LM_STEPS": str(STEPS), "GC_LM_DEVICE": DEVICE,
           "GC_LM_SMOKE": "1" if SMOKE else "0", "GC_LM_DATA_SEED": str(SEED),
           "GC_LM_MODEL": "gpu" if GPU_MODEL else ""}
    if DEVICE == "cpu":  # one core per rank: the ranks do not fight over the cores
        env["OMP_NUM_THREADS"] = "1"
    # A GPU run takes ~30 s; a CPU study's up to a few minutes on a busy 2-core machine.
    # The GPU study's model on two CPU cores: about 10 minutes a run.
    run_limit = float(os.environ.get("GC_LM_RUN_TIMEOUT_S",
                                     "120" if SMOKE or DEVICE != "cpu" else
                                     "3600" if GPU_MODEL else "600"))
    results, status = {}, {}
    only = os.environ.get("GC_LM_RUNS")  # a comma list picks runs (default: all)
    # GC_LM_SET="GRADCOMP_BITS=8,GRADCOMP_BUCKET=128" overrides every run's own settings: a
    # variant of the study (into its own OUTDIR), e.g. to see what a gap depends on.
    overrides = dict(kv.split("=", 1) for kv in os.environ.get("GC_LM_SET", "").split(",") if kv)
    table = {r[0]: r for r in runs()}
    longest = {}  # mode -> its longest good run so far: a run that cannot finish in what is
    # left is skipped rather than killed
    for name in PRIORITY:
        _, mode, extra, use_preload = table[name]
        if only and name not in only.split(","):
            continue
        if DEVICE == "cpu" and use_preload:
            status[name] = ("skipped on CPU: the preload interposes NCCL, which the CPU runs "
                            "do not use (this run needs the GPU box)")
            print(f"lm_compare: {name}: {status[name]}", flush=True)
            continue
        path = os.path.join(out, f"lm_{name}.json")
        e = dict(env)
        e.update(extra)
        e.update(overrides)
        if args.keep and os.path.exists(path):
            with open(path) as f:
                kept = json.load(f)
            if kept.get("sizes") == dict(sizes(world), data_seed=int(e["GC_LM_DATA_SEED"])):
                results[name], status[name] = kept, "ok"
                print(f"lm_compare: {name}: kept from {path}", flush=True)
                continue
        left = deadline - time.time()
        estimate = longest.get(mode + ("_preload" if use_preload else ""),
                               max(longest.values(), default=0.0))
        if not fits(left, estimate):
            status[name] = "skipped (time budget spent)"
            continue
        if os.path.exists(path):
            os.remove(path)
        st, secs = gc_ranks.launch(world, [os.path.abspath(__file__), "--worker", "--mode", mode,
                                           "--out", path], os.path.join(out, f"lm_{name}"), env=e,
                                   timeout=min(run_limit, left - 5),
                                   preload=preload if use_preload else None)
        if st == "ok":  # a hung run's time says nothing about the next one's
            key = mode + ("_preload" if use_preload else "")
            longest[key] = max(longest.get(key, 0.0), secs)
        status[name] = st
        print(f"lm_compare: {name}: {st} in {secs:.0f}s", flush=True)
        if st == "ok" and os.path.exists(path):
            with open(path) as f:
                results[name] = json.load(f)
            if results[name]["preload_loaded"] != use_preload:
                status[name] = (f"failed (the preload was {'not ' if use_preload else ''}"
                                "loaded in the ranks)")
                del results[name]
                print(f"lm_compare: {name}: {status[name]}", flush=True)
            elif use_preload:
                per_rank = gc_ranks.preload_bytes(os.path.join(out, f"lm_{name}"), world)
                if per_rank and all(per_rank):
                    r = results[name]
                    # The ranks' mean (two-shot ranks send unequal shares).
                    calls, _, sent, dense_compressed = [sum(v) / world for v in zip(*per_rank)]
                    # What the preload passed to NCCL (calls below min_elements) went dense on
                    # the ring, as the hook runs count it.
                    ring = 2.0 * (world - 1) / world
                    passed = max(0.0, r["dense_bytes_per_step"] * r["steps"]
                                 - ring * dense_compressed)
                    r["bytes_per_step"] = (sent + passed) / r["steps"]
                    r["preload_calls_compressed"] = calls
                else:
                    results[name]["bytes_per_step"] = None  # no summary line: not compressed?
    rep = {"lm_runs": status, "lm_world": world, "lm_steps": STEPS, "lm_device": DEVICE,
           "lm_overrides": overrides,
           "lm_smoke": SMOKE, "lm_model": {"width": WIDTH, "layers": LAYERS, "heads": HEADS,
                                           "context": CTX, "batch_per_rank": BATCH}}
    for name, r in results.items():
        base = results.get(baseline(name))
        rep[f"lm_val_loss_{name}"] = r["final_val_loss"]
        rep[f"lm_bytes_per_step_{name}"] = r["bytes_per_step"]
        rep[f"lm_params_identical_{name}"] = r["params_identical"]
        rep[f"lm_seconds_{name}"] = r["seconds"]
        rep.setdefault("lm_num_params", r["num_params"])
        rep.setdefault("lm_corpus_files", r["corpus_files"])
        rep.setdefault("lm_corpus_train_bytes", r["corpus_train_bytes"])
        rep.setdefault("torch_version", r["torch_version"])
        # A run whose ranks ended with different parameters is broken: no comparison.
        if base and name != "none" and r["final_val_loss"] is not None \
                and r["params_identical"] and base["params_identical"]:
            rep[f"lm_val_loss_rel_delta_{name}"] = (r["final_val_loss"] - base["final_val_loss"]) \
                / base["final_val_loss"]
    for key, name in (("qsgd4", "qsgd4_hook"), ("dgc", "dgc_hook"), ("powersgd", "powersgd"),
                      ("qsgd4_sgd", "qsgd4_sgd_hook"), ("dgc_sgd", "dgc_sgd_hook")):
        if f"lm_val_loss_rel_delta_{name}" in rep:
            rep[f"lm_val_loss_rel_delta_{key}"] = rep[f"lm_val_loss_rel_delta_{name}"]
    q, ps = rep.get("lm_bytes_per_step_qsgd4_hook"), rep.get("lm_bytes_per_step_powersgd")
    rep["lm_bytes_ratio_qsgd4_vs_powersgd"] = q / ps if q and ps else None
    with open(os.path.join(out, "lm.json"), "w") as f:
        json.dump(rep, f, indent=1, sort_keys=True)
    fmt = lambda v, f: "n/a" if v is None else f.format(v)  # noqa: E731
    where = "on one GPU" if DEVICE == "cuda" else "on the CPU (gloo)"
    smoke = (f"; SMOKE sizes: width {WIDTH}, {LAYERS} layer(s), context {CTX}, batch {BATCH}"
             if SMOKE else "")
    lines = [f"### Language model head-to-head ({rep.get('lm_num_params')} parameters, byte-level "
             f"GPT on {rep.get('lm_corpus_files')} stdlib files, {world} ranks {where}, "
             f"{STEPS} steps{smoke})", "",
             "| run | status | final val loss | vs uncompressed | gradient bytes sent per step "
             "and rank | params identical on all ranks |", "|---|---|---|---|---|---|"]
    for name, *_ in runs():
        r = results.get(name)
        lines.append(f"| {LABELS[name]} | {status.get(name, 'not run')} | "
                     f"{fmt(r and r['final_val_loss'], '{:.4f}')} | "
                     f"{fmt(rep.get(f'lm_val_loss_rel_delta_{name}'), '{:+.2%}')} | "
                     f"{fmt(r and r['bytes_per_step'], '{:,.0f}')} | "
                     f"{fmt(r and r['params_identical'], '{}')} |")
    lines += ["", "Goals: QSGD 4-bit within 1% of the uncompressed validation loss "
              f"({fmt(rep.get('lm_val_loss_rel_delta_qsgd4'), '{:+.2%}')}; with nearest rounding "
              "and buckets of 128, lm_val_loss_rel_delta_qsgd4_nearest_d128_hook = "
              f"{fmt(rep.get('lm_val_loss_rel_delta_qsgd4_nearest_d128_hook'), '{:+.2%}')}; "
              "with square levels and nearest rounding at the goal's bytes, "
              "lm_val_loss_rel_delta_qsgd4_square_nearest_hook = "
              f"{fmt(rep.get('lm_val_loss_rel_delta_qsgd4_square_nearest_hook'), '{:+.2%}')}), "
              "DGC within 3%; bytes ratio QSGD 4-bit / PowerSGD = "
              f"{fmt(rep['lm_bytes_ratio_qsgd4_vs_powersgd'], '{:.2f}')}."]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, *_ in runs():
            if name in results and results[name]["val_curve"]:
                s, v = zip(*results[name]["val_curve"])
                ax.plot(s, v, label=LABELS[name])
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss (nats/byte)")
        ax.set_title(f"byte-level GPT on the Python stdlib, DDP {world} ranks {where}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "lm_loss.png"), dpi=120)
        lines.append("\n![loss curves](lm_loss.png)")
    except ImportError:
        lines.append("\n(no matplotlib: no loss-curve PNG)")
    with open(os.path.join(out, "lm.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return verdict(status, results)


if __name__ == "__main__":
    sys.exit(main())
