#!/usr/bin/env python3
"""FSDP2 training with and without gradcomp's custom reduce-scatter (GPU box).

An MLP (64 -> 512 -> 512 -> 10) sharded per layer with fully_shard, trained on
a fixed synthetic task (inputs N(0,1), labels from a fixed random teacher) with
the same seeds and batches in every run; --gradcomp installs
gradcomp.torch.GradcompReduceScatter on every FSDP module (settings from
GRADCOMP_*). --hsdp: 2 replicas of world/2 shards, native HSDP (fully_shard
over the 2-D mesh), or with --gradcomp FSDP over the shard mesh and
gradcomp.torch.GradcompReplicaAllReduce across the replicas. Rank 0 writes
the final loss, test accuracy and whether the unsharded parameters are
bitwise identical on every rank. Launched one
process per rank with the env:// variables (tools/gc_ranks.py).
"""
import argparse
import sys

import gc_ranks
import torch
import torch.distributed as dist
import torch.nn as nn


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--gradcomp", action="store_true")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--hsdp", action="store_true",
                   help="2 replicas x world/2 shards (--gradcomp: the replica all-reduce hook)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: gloo on the CPU (--gradcomp: gradcomp's CPU backend over TCP, "
                   "GradcompState(backend='cpu'))")
    args = p.parse_args()
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    cpu = args.device == "cpu"
    dist.init_process_group("gloo" if cpu else "nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    if not cpu:
        torch.cuda.set_device(0)
    dev = torch.device("cpu") if cpu else torch.device("cuda", 0)
    g = torch.Generator().manual_seed(7)
    teacher = torch.randn(64, 10, generator=g)
    xte = torch.randn(2048, 64, generator=g)
    yte = (xte @ teacher).argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10)).to(dev)
    # FSDP2's default mesh is the accelerator's: on a machine with a GPU, --device cpu needs a
    # CPU mesh, or FSDP moves the model to the GPU.
    mesh = {"mesh": init_device_mesh("cpu", (world,))} if cpu else {}
    mesh2 = None
    if args.hsdp:
        if world % 2:
            raise SystemExit(f"--hsdp takes an even number of ranks (2 replicas), not {world}")
        mesh2 = init_device_mesh("cpu" if cpu else "cuda", (2, world // 2),
                                 mesh_dim_names=("replicate", "shard"))
        # Native HSDP over the 2-D mesh; gradcomp's replicas: FSDP over the shard mesh only.
        mesh = {"mesh": mesh2["shard"] if args.gradcomp else mesh2}
    for layer in (model[0], model[2], model[4]):
        fully_shard(layer, **mesh)
    fully_shard(model, **mesh)
    state = None
    if args.gradcomp:
        import gradcomp.torch as gct

        backend = "cpu" if cpu else "nccl"
        if args.hsdp:
            state = gct.GradcompState(process_group=mesh2["replicate"].get_group(),
                                      backend=backend)
            gct.register_fsdp_replica_all_reduce(model, state)
        else:
            state = gct.GradcompState(backend=backend)
            gct.register_fsdp_reduce_scatter(model, state)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    lossf = nn.CrossEntropyLoss()
    bg = torch.Generator().manual_seed(100 + rank)  # this rank's batches, the same every run
    for _ in range(args.steps):
        x = torch.randn(32, 64, generator=bg)
        y = (x @ teacher).argmax(1)
        opt.zero_grad(set_to_none=True)
        loss = lossf(model(x.to(dev)), y.to(dev))
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = model(xte.to(dev))
        acc = (logits.argmax(1).cpu() == yte).float().mean().item() * 100
        test_loss = lossf(logits, yte.to(dev)).item()
    full = b"".join(q.full_tensor().detach().cpu().numpy().tobytes() for q in model.parameters())
    _, hashes = gc_ranks.gather_hashes(full)
    res = {"gradcomp": args.gradcomp, "hsdp": args.hsdp, "device": args.device,
           "steps": args.steps, "test_loss": test_loss,
           "accuracy_pct": acc, "params_identical": len(set(hashes)) == 1,
           "stats": state.stats() if state is not None else None}
    return gc_ranks.finish_rank(res, rank, args.out, state)


if __name__ == "__main__":
    gc_ranks.run_rank(main)
