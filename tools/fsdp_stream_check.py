"""Does FSDP2 free a reduce-scatter output that its all-reduce hook still uses? (GPU only.)

gradcomp's HSDP hook (gradcomp.torch.GradcompReplicaAllReduce) runs its allreduce on the stream
FSDP2 calls the hook on (its all-reduce stream), on a tensor FSDP allocated on its reduce-scatter
stream. Some FSDP2 versions (PyTorch 2.11's, with param_dtype=bfloat16, which reduces in bf16 and
casts to the fp32 parameters) hold no reference to that tensor once the hook returned: its memory
can go to the next layer's reduce-scatter while work queued by the hook still writes it. The
hook therefore records the tensor on its stream (Tensor.record_stream).

One process, one GPU, a one-rank NCCL mesh, 8 fully_shard layers with param_dtype=bfloat16. Each
layer's hook sleeps on the hook's stream (tens of ms, torch.cuda._sleep), then doubles the tensor
in place (a slow in-place allreduce, as gradcomp's). "plain" hooks do only that; "record_stream"
hooks record the tensor first, as gradcomp's does. A layer whose gradient is not exactly twice the
hook-less run's lost its hook's write (or the hook was not called). Prints one line per mode:
    torch VERSION hook MODE: ok | MISMATCH in layers [...]
Expected: "record_stream" ok on every version; "plain" ok where FSDP keeps the tensor itself.
Usage: python tools/fsdp_stream_check.py   (MASTER_PORT from the environment, default 29655)
"""
import os
import sys

import torch
import torch.distributed as dist

try:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
except ImportError:
    from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.device_mesh import init_device_mesh


def grads(mesh, mode):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(1024, 1024, bias=False) for _ in range(8)]
    model = torch.nn.Sequential(*layers).cuda()
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    if mode is not None:
        def hook(t):
            if mode == "record_stream":
                t.record_stream(torch.cuda.current_stream(t.device))
            torch.cuda._sleep(50_000_000)
            t.mul_(2)

        for layer in layers:
            layer.set_all_reduce_hook(hook)
    x = torch.randn(64, 1024, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    model(x).float().pow(2).sum().backward()
    torch.cuda.synchronize()
    return [layer.weight.grad.full_tensor().float().clone() for layer in layers]


def main():
    if not torch.cuda.is_available():
        print("fsdp_stream_check: no GPU; not run")
        return 2
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29655")
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1)
    mesh = init_device_mesh("cuda", (1,))
    ref = grads(mesh, None)
    bad_record = False
    for mode in ("plain", "record_stream"):
        got = grads(mesh, mode)
        bad = [i for i, (g, r) in enumerate(zip(got, ref)) if not torch.equal(g, 2 * r)]
        bad_record |= mode == "record_stream" and bool(bad)
        print(f"torch {torch.__version__} hook {mode}: " + ("ok" if not bad else f"MISMATCH in layers {bad}"),
              flush=True)
    dist.destroy_process_group()
    return 1 if bad_record else 0


if __name__ == "__main__":
    sys.exit(main())
