#!/usr/bin/env python3
"""Momentum-SGD stability probe of lm_compare's model, on the CPU, without DDP.

Trains lm_compare's model for the sizes of --sizes (cuda: the GPU study's 3.3M-parameter GPT;
cpu: the CPU study's) in one process with one rank's batch, momentum SGD 0.9 at GC_LM_SGD_LR
and lm_compare's warm-up, printing the loss every 10 steps and stopping at a non-finite one.
It is how the GPU study's default SGD learning rate was chosen without spending device time
(bench/results/2026-12-01-cpu-lm/sgd_probe.md). Usage: lm_sgd_probe.py [--sizes cuda|cpu]
[--steps 100]; exits 1 when the loss diverged.
"""
import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_compare as L  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args()
    import torch
    import torch.nn as nn

    L.configure(args.sizes, False)
    torch.set_num_threads(1)
    train_b, _, _ = L.corpus()
    train = torch.frombuffer(bytearray(train_b), dtype=torch.uint8).long()
    torch.manual_seed(L.SEED)
    model = L.build_model(torch, nn)
    print(f"parameters {sum(p.numel() for p in model.parameters())}, lr {L.SGD_LR}", flush=True)
    opt = torch.optim.SGD(model.parameters(), lr=L.SGD_LR, momentum=L.SGD_MOMENTUM)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / L.WARMUP))
    gen = torch.Generator().manual_seed(L.DATA_SEED * 1000)  # rank 0's batches
    lossf = nn.CrossEntropyLoss()
    t0 = time.time()
    for step in range(args.steps):
        x, y = L.batch(torch, train, gen, L.BATCH)
        opt.zero_grad(set_to_none=True)
        loss = lossf(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        sched.step()
        v = loss.item()
        if step % 10 == 0 or not math.isfinite(v):
            print(f"step {step} loss {v:.4f} ({time.time() - t0:.0f} s)", flush=True)
        if not math.isfinite(v):
            print("lm_sgd_probe: diverged", flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
