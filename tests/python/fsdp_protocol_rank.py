"""One rank of test_torch.FsdpProtocol (2 processes, gloo, CPU): FSDP2 on this torch calls
the GradcompReduceScatter objects register_fsdp_reduce_scatter installs, and how.

Each rank records the call FSDP makes (keyword names, op, sizes) and the sentence
GradcompReduceScatter refuses CPU tensors with, and writes them to OUT.rank<r>.json.
"""
import json
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import gradcomp.torch as gct
import gc_ranks  # tools/, on the PYTHONPATH the tests give


class Recording(gct.GradcompReduceScatter):
    calls = []

    def __call__(self, *args, **kwargs):
        out, inp = kwargs.get("output_tensor"), kwargs.get("input_tensor")
        self.calls.append({"positional": len(args), "keywords": sorted(kwargs),
                           "op": str(kwargs.get("op")), "key": self.key,
                           "input_numel": inp.numel() if inp is not None else None,
                           "output_numel": out.numel() if out is not None else None,
                           "dtype": str(inp.dtype) if inp is not None else None})
        return super().__call__(*args, **kwargs)


def main():
    out = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    # A CPU mesh: FSDP2's default (the accelerator's) would move the model to a visible GPU.
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    fully_shard(model[0], mesh=mesh)
    fully_shard(model[2], mesh=mesh)
    fully_shard(model, mesh=mesh)
    gct.fsdp.GradcompReduceScatter = Recording  # what register_fsdp_reduce_scatter makes
    n = gct.register_fsdp_reduce_scatter(model, state=None)
    error = None
    try:
        model(torch.randn(4, 16)).sum().backward()
    except TypeError as e:
        error = str(e)
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump({"registered": n, "calls": Recording.calls, "error": error}, f)
    dist.barrier()
    dist.destroy_process_group()
    gc_ranks.leave(0)  # tools/: the process ends here (docs/reliability.md, "Teardown")


if __name__ == "__main__":
    sys.exit(main())
