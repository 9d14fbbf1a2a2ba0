#!/usr/bin/env python3
"""A plain PyTorch FSDP2 training script: the MLP of tools/ddp_train.py on
scikit-learn's digits, sharded with torch.distributed.fsdp.fully_shard.

Nothing in it knows about gradcomp: compression enters only through
LD_PRELOAD=libgradcomp_preload.so and GRADCOMP_* variables, on the
ncclReduceScatter calls FSDP makes for gradients (its parameter all-gathers
stay NCCL's). Launched one process per rank with the usual env:// variables
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK) by torchrun or
tools/fsdp_check.sh. Fixed seeds and a fixed data order, so runs differ only
by what the reduce-scatter does. Rank 0 prints (and with --out writes) a JSON
result: final test accuracy and loss, and whether the full parameters,
gathered from their shards after training, are bitwise identical on every
rank (SHA-256 of their bytes, gathered from all ranks).

With DGC momentum correction (GRADCOMP_METHOD=dgc, on by default) pass
--momentum 0: gradcomp accumulates the velocity itself.
"""
import argparse
import datetime
import hashlib
import json
import os
import sys
import time


def fail(msg):
    print(f"fsdp_train.py: {msg}", file=sys.stderr, flush=True)
    sys.exit(3)


try:
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn as nn
except ImportError as e:  # pragma: no cover - depends on the machine
    fail(f"needs PyTorch and NumPy ({e})")

try:
    from torch.distributed.fsdp import fully_shard  # torch >= 2.6
except ImportError:
    try:
        from torch.distributed._composable.fsdp import fully_shard  # torch 2.4, 2.5
    except ImportError as e:
        fail(f"needs FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.4): {e}")


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
    p.add_argument("--timeout", type=float, default=180)
    p.add_argument("--out", default=None, help="JSON result file (written by rank 0)")
    args = p.parse_args()

    if not torch.cuda.is_available():
        fail("no CUDA device visible: this script trains with the NCCL backend on a GPU")
    for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if v not in os.environ:
            fail(f"{v} is not set: launch with torchrun or tools/fsdp_check.sh")

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
    model = nn.Sequential(nn.Linear(64, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                          nn.Linear(h, 10)).to(dev)
    # One FSDP unit per linear layer, then the root: one gradient
    # reduce-scatter per layer per step.
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    lossf = nn.CrossEntropyLoss()

    n = len(xtr)
    per_rank = n // world
    steps = 0
    t0 = time.time()
    for epoch in range(args.epochs):
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)  # same order on every rank
        order = torch.randperm(n, generator=g)[: per_rank * world].view(world, per_rank)[rank]
        for i in range(0, per_rank - args.batch + 1, args.batch):
            idx = order[i: i + args.batch].to(dev)
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            steps += 1
    torch.cuda.synchronize()
    train_s = time.time() - t0

    with torch.no_grad():
        logits = model(xte)  # FSDP gathers the parameters for the forward
        acc = (logits.argmax(1) == yte).float().mean().item() * 100.0
        test_loss = lossf(logits, yte).item()
        full = [q.full_tensor() if hasattr(q, "full_tensor") else q for q in model.parameters()]
        blob = b"".join(q.detach().cpu().numpy().tobytes() for q in full)
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
        "num_params": sum(q.numel() for q in full),
    }
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
