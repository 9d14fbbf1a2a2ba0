"""FSDP2's custom reduce-scatter on gradcompReduceScatterKeyed.

Follows the ReduceScatter comm protocol of torch.distributed.fsdp
(torch/distributed/fsdp/_fully_shard/_fsdp_api.py; signatures checked against
PyTorch 2.15, where FSDP passes ReduceOp.AVG for fp32/bf16 gradients and SUM
with pre/post division for fp16, both compressed here):
`allocate(size, *, dtype, device)` and `__call__(output_tensor, input_tensor,
group, op, async_op=False)`, installed with `FSDPModule.set_custom_reduce_scatter`.
FSDP calls it on its reduce-scatter stream with the flat padded gradients of
one FSDP module (input: world_size * output.numel() elements). With a
GradcompState(backend="cpu") it reduces the CPU tensors of FSDP on a gloo
group over gradcomp's CPU backend (TCP between the ranks).

What is sent, per rank: the first half of two-shot (docs/algorithms.md): block
j of the input encoded for rank j with error feedback, (N-1)/N * E(n) bytes
(QSGD 4-bit: about 4.06/32 of the fp32 bytes); the owner sums the N
full-precision decodes, one quantization. Cost: gradcomp's encode and decode
kernels on FSDP's stream; no extra copies (FSDP allocates the buffers).
"""
import torch
import torch.distributed as dist

from .. import _lib
from .ddp import _DTYPES, _key_of

try:  # the protocol class, where this PyTorch has it
    from torch.distributed.fsdp._fully_shard._fsdp_api import ReduceScatter as _Base
except ImportError:  # pragma: no cover - older PyTorch: duck-typed
    _Base = object


class GradcompReduceScatter(_Base):
    """A reduce-scatter for one FSDP module (one residual, keyed by `key`).

    state: a GradcompState (its settings, comm and state_dict serve every
    module); key: any string or int naming the module, the same on every rank
    and in a resumed run (register_fsdp_reduce_scatter uses the module's name).
    Inside `with state.paused():` calls go to torch uncompressed, leaving the
    residuals alone. The module's residual follows its flat gradient buffer,
    whose layout FSDP builds from the parameters that got a gradient: where
    some may get none on some steps (alternate heads, experts), call
    module.set_reduce_scatter_unused_params(True) so the layout stays fixed;
    otherwise one layout's residual is added to another's parameters when
    their sizes coincide.
    Making one marks the state as FSDP's: every parameter is compressed (FSDP's
    whole flat buffer), so state.param_groups() puts every parameter in the
    momentum-0 group under DGC's momentum correction; make it (register) before
    calling state.param_groups().
    """

    def __init__(self, state, key):
        if not _lib.has("gradcompReduceScatterKeyed"):
            raise RuntimeError(f"{_lib.library_path()} has no gradcompReduceScatterKeyed: "
                               "rebuild libgradcomp from a checkout with the reduce-scatter entry "
                               "point, or leave FSDP's default reduce-scatter in place")
        self.state = state
        self.key = _key_of(("fsdp", str(key)))
        if state is not None:
            # Every parameter of FSDP's flat buffer goes through gradcomp: param_groups() gives
            # them all gradcomp's DGC velocity (and no optimizer momentum).
            state._serve_fsdp()

    def allocate(self, size, *, dtype, device):
        return torch.empty(*size, dtype=dtype, device=device)

    def abort(self):
        """GradcompState.abort() of the state every module's reduce-scatter shares (its comm
        is theirs): after a peer died, instead of the state's close()."""
        if self.state is not None:
            self.state.abort()

    def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
        if self.state is not None:
            self.state._check_usable()
        out, inp = output_tensor, input_tensor
        cpu = self.state is not None and self.state.backend == "cpu"
        want = "cpu" if cpu else "cuda"
        if out.device.type != want or inp.device.type != want:
            if cpu:
                raise TypeError(f"GradcompReduceScatter got {inp.device.type} tensors, but its "
                                "state's backend 'cpu' reduces CPU tensors: make the state with "
                                "backend='nccl' for a model on the GPU; for a CPU model, FSDP2 "
                                "(whose default mesh is the accelerator's) needs fully_shard(..., "
                                "mesh=init_device_mesh('cpu', (world_size,)))")
            raise TypeError("GradcompReduceScatter got CPU tensors: gradcomp reduces CUDA "
                            "tensors; FSDP with CPU offload keeps the reduce-scatter on the GPU; "
                            "for a CPU model on a gloo group, make the state with backend='cpu'")
        if inp.dtype not in _DTYPES or out.dtype != inp.dtype:
            raise TypeError(f"GradcompReduceScatter got {inp.dtype} -> {out.dtype}: gradcomp "
                            "compresses float32, float16 and bfloat16 (same type in and out); "
                            "set MixedPrecisionPolicy(reduce_dtype=torch.float32)")
        # gradcomp reads inp and writes out by address: a strided view would be read wrongly
        # and written past (into the elements between its own).
        for name, t in (("output", out), ("input", inp)):
            if not t.is_contiguous():
                raise ValueError(f"GradcompReduceScatter got a non-contiguous {name} tensor "
                                 f"(shape {tuple(t.shape)}, stride {t.stride()}): gradcomp reads "
                                 "and writes whole contiguous buffers; pass .contiguous() tensors")
        if out.device != inp.device:
            raise ValueError(f"GradcompReduceScatter got input on {inp.device} and output on "
                             f"{out.device}: both must be on the device of the module's shard")
        if self.state is None:
            raise ValueError("GradcompReduceScatter has no state: make it with a GradcompState "
                             "(register_fsdp_reduce_scatter(model, state))")
        stream = (lambda: None) if cpu else (
            lambda: torch.cuda.current_stream(out.device).cuda_stream)
        return self._reduce_scatter(out, inp, group, op, async_op, stream)

    def _reduce_scatter(self, out, inp, group, op, async_op, stream_handle):
        """The call on checked tensors; stream_handle() gives the stream gradcomp runs on (none
        on the CPU backend)."""
        size = group.size()
        if inp.numel() != size * out.numel():
            raise ValueError(f"input has {inp.numel()} elements, not world_size * output = "
                             f"{size} * {out.numel()}")
        if op == dist.ReduceOp.SUM:
            opname = "sum"
        elif op == dist.ReduceOp.AVG:
            opname = "avg"
        else:
            # FSDP passes a pre-multiplied sum when it divides by a factor; gradcomp
            # compresses Sum/Avg only, so this call goes to NCCL uncompressed. Under DGC's
            # momentum correction that would lose the momentum of every parameter (the
            # optimizer has none for them: param_groups()), so every rank refuses alike.
            cfg = self.state.config
            if cfg.method == "dgc" and cfg.momentum_correction:
                raise ValueError(
                    f"FSDP asked for reduce op {op}, which gradcomp does not compress; sent "
                    "uncompressed, it would skip DGC's momentum correction, and the parameters "
                    "(momentum 0 in the optimizer: state.param_groups()) would train without "
                    "momentum. Call set_force_sum_reduction_for_comms(True) on the FSDP modules "
                    "(or drop set_gradient_divide_factor)")
            self.state._warn_once("fsdp-op", f"FSDP asked for reduce op {op}, which gradcomp does "
                                  "not compress: sent uncompressed by torch.distributed; call "
                                  "set_force_sum_reduction_for_comms(True) on the FSDP modules "
                                  "(warned once)")
            return dist.reduce_scatter_tensor(out, inp, op=op, group=group, async_op=async_op)
        if self.state._paused:
            # state.paused(), as the DDP hook: uncompressed, the residuals and DGC's velocity
            # left alone (a throw-away step adds nothing to them).
            return dist.reduce_scatter_tensor(out, inp, op=op, group=group, async_op=async_op)
        if dist.get_process_group_ranks(group) != dist.get_process_group_ranks(
                self.state.process_group):
            raise ValueError("FSDP reduces over another process group than the GradcompState's: "
                             "make the state with process_group=<FSDP's shard group>")
        comm = self.state.comm(out.device)
        self.state._follow_scaler(comm, stream_handle())
        before = comm.call_counts()
        comm.reduce_scatter_raw(inp.data_ptr(), out.data_ptr(), out.numel(), _DTYPES[inp.dtype],
                                opname, stream_handle(), self.key)
        self.state._count_call(comm, before, inp.numel() * inp.element_size(),
                               "an FSDP reduce-scatter", inp.numel())
        # Enqueued on the current stream, like a synchronous collective: nothing to wait on.
        return None


def _fsdp_module_class():
    """FSDP2's FSDPModule, or None where this PyTorch has no FSDP2."""
    try:
        from torch.distributed.fsdp import FSDPModule  # PyTorch >= 2.6
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import FSDPModule  # PyTorch 2.4, 2.5
        except ImportError:
            return None
    return FSDPModule


def unsupported_reason():
    """None when this PyTorch and libgradcomp can run GradcompReduceScatter, else the sentence
    saying why not and what to do: FSDP2's set_custom_reduce_scatter came with PyTorch 2.9,
    while FSDP2 itself (and so LD_PRELOAD's compressed reduce-scatter) needs only 2.4."""
    preload = ("compress FSDP2's reduce-scatters with LD_PRELOAD=libgradcomp_preload.so "
               "instead (tools/fsdp_check.sh)")
    cls = _fsdp_module_class()
    if cls is None:
        return (f"this PyTorch ({torch.__version__}) has no FSDP2 (fully_shard, PyTorch >= "
                "2.4): upgrade PyTorch to use FSDP2")
    if not hasattr(cls, "set_custom_reduce_scatter"):
        return (f"this PyTorch ({torch.__version__}) has FSDP2 without "
                "FSDPModule.set_custom_reduce_scatter (PyTorch >= 2.9): upgrade PyTorch, or "
                + preload)
    if not _lib.has("gradcompReduceScatterKeyed"):
        return (f"{_lib.library_path()} has no gradcompReduceScatterKeyed: rebuild libgradcomp "
                "from a checkout with the reduce-scatter entry point, or " + preload)
    return None


def register_fsdp_reduce_scatter(model, state):
    """set_custom_reduce_scatter on every FSDPModule of `model`, keyed by its name.
    Returns the number of modules. Raises RuntimeError with unsupported_reason() where this
    PyTorch's FSDP2 cannot take a custom reduce-scatter."""
    FSDPModule = _fsdp_module_class()
    if FSDPModule is None or not hasattr(FSDPModule, "set_custom_reduce_scatter"):
        raise RuntimeError(f"gradcomp: {unsupported_reason()}")
    n = 0
    for name, module in model.named_modules():
        if isinstance(module, FSDPModule):
            module.set_custom_reduce_scatter(GradcompReduceScatter(state, name or "<root>"))
            n += 1
    if n == 0:
        raise ValueError("the model has no FSDP module: call fully_shard() on it first")
    return n
