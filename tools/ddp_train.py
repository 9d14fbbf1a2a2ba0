#!/usr/bin/env python3
"""A plain PyTorch DDP training script: an MLP on scikit-learn's digits.

Compression enters through LD_PRELOAD=libgradcomp_preload.so and GRADCOMP_*
variables (the script itself unchanged), or, with --hook gradcomp, through
gradcomp.torch's DDP comm hook (settings from the same GRADCOMP_* variables;
--layer-min-size and --start-iter as GradcompState's). --resume-check K
(with the hook) also trains a second model K steps, checkpoints model,
optimizer and hook state, resumes them in a fresh model, DDP and state, and
reports whether the final parameters are bitwise those of the run without
the break. Launched one
process per rank with the usual env:// variables (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, LOCAL_RANK) by torchrun or tools/ddp_check.sh.
Fixed seeds and a fixed data order, so runs differ only by what the
allreduce does. Rank 0 prints (and with --out writes) a JSON result: final
test accuracy and loss, and whether the parameters are bitwise identical on
every rank (SHA-256 of their bytes, gathered from all ranks).

With DGC momentum correction (GRADCOMP_METHOD=dgc, on by default) pass
--momentum 0: gradcomp accumulates the velocity itself, so the optimizer's
own momentum must be off.
"""
import argparse
import datetime
import hashlib
import json
import os
import sys
import time


def fail(msg):
    print(f"ddp_train.py: {msg}", file=sys.stderr, flush=True)
    sys.exit(3)


try:
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from torch.nn.parallel import DistributedDataParallel as DDP
except ImportError as e:  # pragma: no cover - depends on the machine
    fail(f"needs PyTorch and NumPy ({e})")


def load_data():
    try:
        from sklearn.datasets import load_digits  # ships its data: no download
    except ImportError as e:
        fail(f"needs scikit-learn for the digits data set ({e})")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    perm = np.random.RandomState(0).permutation(len(x))
    cut = int(0.8 * len(x))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def preload_loaded():
    """True when libgradcomp_preload.so is mapped into this process."""
    try:
        with open("/proc/self/maps") as f:
            return "libgradcomp_preload" in f.read()
    except OSError:
        return False


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9,
                   help="SGD momentum; 0 with GRADCOMP_METHOD=dgc (momentum correction)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch", type=int, default=16, help="per rank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=180,
                   help="seconds a collective may hang before PyTorch aborts it")
    p.add_argument("--out", default=None, help="JSON result file (written by rank 0)")
    p.add_argument("--hook", choices=("none", "gradcomp"), default="none",
                   help="gradcomp: register gradcomp.torch's comm hook (GRADCOMP_* settings)")
    p.add_argument("--layer-min-size", type=int, default=1024)
    p.add_argument("--start-iter", type=int, default=2)
    p.add_argument("--whole-buckets", action="store_true",
                   help="with --hook gradcomp: compress 1-d parameters too (as the preload)")
    p.add_argument("--resume-check", type=int, default=0, metavar="K",
                   help="with --hook gradcomp: also check a checkpoint/resume after K steps")
    args = p.parse_args()

    if not torch.cuda.is_available():
        fail("no CUDA device visible: this script trains with the NCCL backend on a GPU")
    for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if v not in os.environ:
            fail(f"{v} is not set: launch with torchrun or tools/ddp_check.sh")

    dist.init_process_group("nccl", timeout=datetime.timedelta(seconds=args.timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    ndev = torch.cuda.device_count()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % ndev)
    dev = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(args.seed)

    xtr, ytr, xte, yte = load_data()
    xtr, ytr = torch.tensor(xtr, device=dev), torch.tensor(ytr, device=dev)
    xte, yte = torch.tensor(xte, device=dev), torch.tensor(yte, device=dev)

    h = args.hidden

    def make_model(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                             nn.Linear(h, 10)).to(dev)

    def wrap(model):
        ddp = DDP(model, device_ids=[dev.index])
        state = None
        if args.hook == "gradcomp":
            import gradcomp.torch as gct

            state = gct.GradcompState(module=model, layer_min_size=args.layer_min_size,
                                      start_iter=args.start_iter,
                                      exclude_1d=not args.whole_buckets)
            ddp.register_comm_hook(state, gct.gradcomp_hook)
        return ddp, state, torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=args.momentum)

    lossf = nn.CrossEntropyLoss()
    n = len(xtr)
    per_rank = n // world
    schedule = []  # the batch of every step, fixed by the seed: the same in every run
    for epoch in range(args.epochs):
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)  # same order on every rank
        order = torch.randperm(n, generator=g)[: per_rank * world].view(world, per_rank)[rank]
        for i in range(0, per_rank - args.batch + 1, args.batch):
            schedule.append(order[i: i + args.batch].to(dev))

    def train(ddp, opt, steps):
        for s in steps:
            idx = schedule[s]
            opt.zero_grad(set_to_none=True)
            loss = lossf(ddp(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()

    def param_bytes(model):
        return b"".join(q.detach().cpu().numpy().tobytes() for q in model.parameters())

    model = make_model(args.seed)
    ddp, state, opt = wrap(model)
    steps = len(schedule)
    t0 = time.time()
    train(ddp, opt, range(steps))
    torch.cuda.synchronize()
    train_s = time.time() - t0
    hook_stats = state.stats() if state is not None else None

    resume = None
    if args.resume_check and state is not None:
        import copy

        k = min(args.resume_check, steps - 1)
        m1 = make_model(args.seed)
        d1, s1, o1 = wrap(m1)
        train(d1, o1, range(k))
        ckpt = {"model": copy.deepcopy(m1.state_dict()), "opt": copy.deepcopy(o1.state_dict()),
                "gradcomp": s1.state_dict()}
        s1.close()
        m2 = make_model(args.seed + 1)  # another start: only the checkpoint makes it right
        d2, s2, o2 = wrap(m2)
        m2.load_state_dict(ckpt["model"])
        o2.load_state_dict(ckpt["opt"])
        with s2.paused():  # DDP rebuilds its buckets after a new process's first step
            lossf(d2(xtr[schedule[k]]), ytr[schedule[k]]).backward()
        o2.zero_grad(set_to_none=True)
        s2.load_state_dict(ckpt["gradcomp"])
        train(d2, o2, range(k, steps))
        resume = {"after_steps": k, "bitwise_equal": param_bytes(m2) == param_bytes(model)}
        s2.close()

    with torch.no_grad():
        logits = model(xte)
        acc = (logits.argmax(1) == yte).float().mean().item() * 100.0
        test_loss = lossf(logits, yte).item()
    blob = param_bytes(model)
    digest = hashlib.sha256(blob).hexdigest()
    hashes = [None] * world
    dist.all_gather_object(hashes, digest)
    try:
        nccl_version = ".".join(str(v) for v in torch.cuda.nccl.version())
    except Exception:  # noqa: BLE001 - only informative
        nccl_version = None
    result = {
        "world": world,
        "epochs": args.epochs,
        "steps": steps,
        "momentum": args.momentum,
        "accuracy_pct": acc,
        "test_loss": test_loss,
        "param_hash": digest,
        "param_hashes": hashes,
        "params_identical": len(set(hashes)) == 1,
        "train_seconds": train_s,
        "preload_loaded": preload_loaded(),
        "gradcomp_method": os.environ.get("GRADCOMP_METHOD", "qsgd") if preload_loaded() else None,
        "torch_version": torch.__version__,
        "nccl_version": nccl_version,
        "num_params": sum(q.numel() for q in model.parameters()),
        "hook": args.hook,
        "hook_stats": hook_stats,
        "resume_check": resume,
    }
    if state is not None:
        state.close()
    if rank == 0:
        print(json.dumps(result), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
