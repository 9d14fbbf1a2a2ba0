#!/usr/bin/env python3
"""A plain PyTorch DDP training script: an MLP on scikit-learn's digits.

Nothing in it knows about gradcomp: compression enters only through
LD_PRELOAD=libgradcomp_preload.so and GRADCOMP_* variables. Launched one
process per rank with the usual env:// variables (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, LOCAL_RANK) by torchrun or tools/ddp_check.sh.
Rank 0 writes a JSON result: final test accuracy, loss, and whether the
parameters are bitwise identical on every rank (SHA-256 of their bytes).

With DGC momentum correction (GRADCOMP_METHOD=dgc) pass --momentum 0: gradcomp
accumulates the velocity itself, so the optimizer's momentum must be off.
"""
import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP


def load_data():
    from sklearn.datasets import load_digits  # ships its data: no download

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    perm = np.random.RandomState(0).permutation(len(x))
    cut = int(0.8 * len(x))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch", type=int, default=16, help="per rank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON result file (rank 0)")
    args = p.parse_args()

    dist.init_process_group("nccl")
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
    ddp = DDP(model, device_ids=[dev.index])
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=args.momentum)
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
            loss = lossf(ddp(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            steps += 1
    torch.cuda.synchronize()
    train_s = time.time() - t0

    with torch.no_grad():
        logits = model(xte)
        acc = (logits.argmax(1) == yte).float().mean().item() * 100.0
        test_loss = lossf(logits, yte).item()
    blob = b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())
    digest = hashlib.sha256(blob).hexdigest()
    hashes = [None] * world
    dist.all_gather_object(hashes, digest)
    result = {
        "world": world,
        "epochs": args.epochs,
        "steps": steps,
        "accuracy_pct": acc,
        "test_loss": test_loss,
        "param_hashes": hashes,
        "params_identical": len(set(hashes)) == 1,
        "train_seconds": train_s,
        "gradcomp_method": (os.environ.get("GRADCOMP_METHOD", "qsgd")
                            if "gradcomp" in os.environ.get("LD_PRELOAD", "") else "none"),
    }
    if rank == 0:
        print(json.dumps(result), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
