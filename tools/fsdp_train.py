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
import sys
import time

import digits_mlp as dm
import gc_ranks
from digits_mlp import fail, torch, nn

try:
    from torch.distributed.fsdp import fully_shard  # torch >= 2.6
except ImportError:
    try:
        from torch.distributed._composable.fsdp import fully_shard  # torch 2.4, 2.5
    except ImportError as e:
        fail(f"needs FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.4): {e}")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    dm.add_args(p)
    args = p.parse_args()

    rank, world, dev, (xtr, ytr, xte, yte) = dm.setup(args, "tools/fsdp_check.sh")

    model = dm.make_model(args.seed, args.hidden, dev)
    # One FSDP unit per linear layer, then the root: one gradient
    # reduce-scatter per layer per step. FSDP2's default mesh is the accelerator's: with
    # --device cpu on a machine with a GPU, a CPU mesh keeps the model on the host.
    mesh = {}
    if dev.type == "cpu":
        from torch.distributed.device_mesh import init_device_mesh

        mesh = {"mesh": init_device_mesh("cpu", (world,))}
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, **mesh)
    fully_shard(model, **mesh)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    lossf = nn.CrossEntropyLoss()

    schedule = dm.batch_schedule(args, len(xtr), world, rank, dev)
    steps = len(schedule)
    t0 = time.time()
    dm.train(model, opt, lossf, xtr, ytr, schedule, range(steps))
    dm.synchronize(dev)
    train_s = time.time() - t0

    with torch.no_grad():
        logits = model(xte)  # FSDP gathers the parameters for the forward
        acc = (logits.argmax(1) == yte).float().mean().item() * 100.0
        test_loss = lossf(logits, yte).item()
        full = [q.full_tensor() if hasattr(q, "full_tensor") else q for q in model.parameters()]
        blob = dm.param_bytes(full)
    res = dm.result(args, world, steps, acc, test_loss, blob, train_s,
                    sum(q.numel() for q in full))
    return dm.finish(res, rank, args.out)


if __name__ == "__main__":
    # An exception ends this rank at once (gc_ranks.run_rank), not after its peers' time limit.
    gc_ranks.run_rank(main)
