"""PyTorch comm hooks on gradcomp: DDP (register_comm_hook) and FSDP2 (set_custom_reduce_scatter,
set_all_reduce_hook for the replicas of HSDP).

    state = gradcomp.torch.GradcompState(module=model, method="qsgd", bits=4)
    gradcomp.torch.register_ddp_hook(ddp, state)    # wrap=fp16_compress_wrapper: torch's wrappers
    # or ddp.register_comm_hook(state, gradcomp.torch.gradcomp_hook): the same hook, but the
    # state then finds its DDP (for the check of its ranks) among the interpreter's objects

gradcomp makes its own NCCL communicator from the process group (the unique
id travels through the group's store; the libnccl is the one torch loaded)
and runs on the stream the hook is called on. With GradcompState(...,
backend="cpu"), CPU tensors of a gloo group go through gradcomp's CPU backend,
its ranks connected by TCP (rank 0's "host:port" through the group's store).
"""
try:
    import torch  # noqa: F401
    import torch.distributed  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the machine
    raise ImportError(f"gradcomp.torch needs PyTorch with torch.distributed ({e}); install torch, "
                      "or use gradcomp's C API / LD_PRELOAD instead") from e

from .ddp import GradcompState, gradcomp_hook, register_ddp_hook
from .fsdp import (GradcompReduceScatter, GradcompReplicaAllReduce,
                   register_fsdp_reduce_scatter, register_fsdp_replica_all_reduce)
from .optim import DGCSGD

__all__ = ["DGCSGD", "GradcompReduceScatter", "GradcompReplicaAllReduce", "GradcompState",
           "gradcomp_hook", "register_ddp_hook", "register_fsdp_reduce_scatter",
           "register_fsdp_replica_all_reduce"]
