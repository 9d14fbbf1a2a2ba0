"""FSDP2's custom reduce-scatter on gradcompReduceScatterKeyed.

Follows the ReduceScatter comm protocol of torch.distributed.fsdp
(torch/distributed/fsdp/_fully_shard/_fsdp_api.py; signatures checked against
PyTorch 2.15, where FSDP passes ReduceOp.AVG for fp32/bf16 gradients, SUM
with pre/post division for fp16, and PREMUL_SUM(1/f) for fp32/bf16 under
set_gradient_divide_factor(f), all compressed here):
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

HSDP by hand, compressed across nodes: GradcompReplicaAllReduce is FSDP2's
all-reduce hook (`FSDPModule.set_all_reduce_hook`) for FSDP over the shard
mesh only (one node's ranks) with the replicas (one per node) reduced by
gradcompAllReduceKeyed over the replicate group: the cross-node collective,
the one that pays to compress, while FSDP's own reduce-scatter stays on the
fast intra-node links. Sent per rank and module: gradcomp's compressed
allreduce (docs/algorithms.md, the algorithm it picks for R replicas) of the
module's reduce-scatter output, n/S elements for S shards, where native HSDP
sends 2(R-1)/R of their full-precision bytes.
"""
import torch
import torch.distributed as dist

from .. import _lib
from .ddp import _DTYPES, GradcompState, _key_of

try:  # the protocol class, where this PyTorch has it
    from torch.distributed.fsdp._fully_shard._fsdp_api import ReduceScatter as _Base
except ImportError:  # pragma: no cover - older PyTorch: duck-typed
    _Base = object


class GradcompReduceScatter(_Base):
    """A reduce-scatter for one FSDP module (one residual, keyed by `key`).

    state: a GradcompState (its settings, comm and state_dict serve every
    module); key: any string or int naming the module, the same on every rank
    and in a resumed run (register_fsdp_reduce_scatter uses the module's name), one
    module's per state: the last one made for a key reduces under it, an earlier one still
    called raises (two models on one state; make one state per model).
    Inside `with state.paused():` calls go to torch uncompressed, leaving the
    residuals alone. The module's residual follows its flat gradient buffer,
    whose layout FSDP builds from the parameters that got a gradient: where
    some may get none on some steps (alternate heads, experts), call
    module.set_reduce_scatter_unused_params(True) so the layout stays fixed
    (an FSDP2 without it, as PyTorch 2.11's: give every parameter of the
    module a gradient at each step, e.g. add 0 * p.sum() of each parameter to
    the module's output in its forward); otherwise one layout's residual is
    added to another's parameters when their sizes coincide. FSDP leaves frozen
    parameters (requires_grad=False) out of the buffer even then: given `module`
    (the FSDPModule, as register_fsdp_reduce_scatter passes it), each set of the
    module's frozen parameters has a residual of its own, and the first compressed
    call warns where FSDP modules of the model have no gradcomp hook of this state
    (sharded after registering: FSDP reduces them uncompressed).
    The residual keeps the unit of the key's first call: where FSDP's division changes later
    (set_gradient_divide_factor again, fp16's or a forced sum's post-division; known from
    `module`), the call's input is scaled into it and the output back (not an fp16 input,
    whose pre-division keeps the sum finite: the unit follows it, warned). One hook object per
    module: installed on a second one too, its first call (with `module`) refuses.
    Making one marks the state as FSDP's: every parameter is compressed (FSDP's
    whole flat buffer), so state.param_groups() puts every parameter in the
    momentum-0 group under DGC's momentum correction; make it (register) before
    calling state.param_groups().
    """

    def __init__(self, state, key, module=None):
        if not _lib.has("gradcompReduceScatterKeyed"):
            raise RuntimeError(f"{_lib.library_path()} has no gradcompReduceScatterKeyed: "
                               "rebuild libgradcomp from a checkout with the reduce-scatter entry "
                               "point, or leave FSDP's default reduce-scatter in place")
        _check_state(state, "GradcompReduceScatter")
        self.state = state
        self.name = str(key)
        self.key = _key_of(("fsdp", self.name))
        self.module = module
        if state is not None:
            # Every parameter of FSDP's flat buffer goes through gradcomp: param_groups() gives
            # them all gradcomp's DGC velocity (and no optimizer momentum).
            state._serve_fsdp()
            _claim(self)

    _tree_checked = False  # _check_tree_hooked ran
    _claim_token = None  # _claim's, while the hook has a state to claim its key on

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
            _check_claim(self, "reduce-scatter")
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
            # Named by the device it is on (a meta shard's tensors are not CPU tensors).
            off = (inp if inp.device.type != want else out).device.type
            raise TypeError(f"GradcompReduceScatter got {'CPU' if off == 'cpu' else off} "
                            "tensors: gradcomp reduces CUDA tensors; FSDP with CPU offload keeps "
                            "the reduce-scatter on the GPU; for a CPU model on a gloo group, make "
                            "the state with backend='cpu'")
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
        factor = _premul_factor(op)
        if factor is not None:
            # FSDP's division by set_gradient_divide_factor(f), for an f other than the group's
            # size and without force-sum: PREMUL_SUM(1/f). NCCL's PreMulSum multiplies every
            # rank's input by the factor in the buffer's type, then sums; so does gradcomp, on
            # FSDP's scratch input (which FSDP's own pre-division scales in place too), then a
            # Sum, compressed or not: where gradcomp sends the call uncompressed (and inside
            # state.paused()), the result is NCCL's PreMulSum bit for bit (the sum's order
            # aside); gloo, which refuses PREMUL_SUM, gets a Sum. The residuals, DGC's velocity
            # and its clip_norm then see the divided gradients, as they see fp16's pre-division.
            inp.mul_(_premul_scalar(factor, inp))
            op = dist.ReduceOp.SUM
        if op == dist.ReduceOp.SUM:
            opname = "sum"
        elif op == dist.ReduceOp.AVG:
            opname = "avg"
        else:
            # gradcomp compresses Sum, Avg and FSDP's pre-multiplied sum only (FSDP passes no
            # other op), so this call goes to torch uncompressed. Under DGC's momentum
            # correction that would lose the momentum of every parameter (the optimizer has
            # none for them: param_groups()), so every rank refuses alike.
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
            if not self.state._paused:
                self.state._count_fsdp_step(self.key)
            return dist.reduce_scatter_tensor(out, inp, op=op, group=group, async_op=async_op)
        if self.state._agrees_calls():
            self.state._agree_call(out.device, f"the reduce-scatter of FSDP module {self.name!r}")
        if self.state._paused:
            # state.paused(), as the DDP hook: uncompressed, the residuals and DGC's velocity
            # left alone (a throw-away step adds nothing to them).
            return dist.reduce_scatter_tensor(out, inp, op=op, group=group, async_op=async_op)
        theirs = dist.get_process_group_ranks(group)
        mine = dist.get_process_group_ranks(self.state.process_group)
        if theirs != mine:
            raise ValueError(f"FSDP reduces over ranks {theirs}, but the GradcompState over ranks "
                             f"{mine}: make the state with process_group=<FSDP's shard group> "
                             "(mesh['shard'].get_group() of fully_shard's mesh; a 1-D mesh: "
                             "mesh.get_group())")
        _check_tree_hooked(self, "_reduce_scatter_comm", "reduce-scatter",
                           "register_fsdp_reduce_scatter")
        comm, key, unit = _begin_call(self, inp, group, size, opname, stream_handle())
        before = comm.call_counts()
        comm.reduce_scatter_raw(inp.data_ptr(), out.data_ptr(), out.numel(), _DTYPES[inp.dtype],
                                opname, stream_handle(), key)
        self.state._count_call(comm, before, inp.numel() * inp.element_size(),
                               "an FSDP reduce-scatter", inp.numel())
        if unit != 1.0:
            out.div_(unit)
        # Enqueued on the current stream, like a synchronous collective: nothing to wait on.
        return None


class GradcompReplicaAllReduce:
    """FSDP2's all-reduce hook for one FSDP module: its reduce-scatter output averaged across
    the replicas in place, compressed (one residual per module, keyed by `key`).

    For HSDP made by hand: fully_shard(..., mesh=mesh["shard"]) (1-D: FSDP's reduce-scatter
    over a node's ranks) and a GradcompState(process_group=mesh["replicate"].get_group()), one
    rank per node; register_fsdp_replica_all_reduce(model, state) installs one per module.
    state: that GradcompState (one per process group: a state serving this hook cannot serve
    GradcompReduceScatter, whose group is the shard group); key: the module's name, the same
    on every rank and in a resumed run (the residual's key is distinct from the
    reduce-scatter's); module: the FSDPModule, whose divide factor the call follows (below)
    and whose mesh is checked here (register_fsdp_replica_all_reduce passes it).

    Division: 1-D FSDP divides for its shard group alone. Its reduce-scatter averages (fp32,
    bf16), or sums with a pre- and post-division by the shard size (fp16 reduce_dtype,
    set_force_sum_reduction_for_comms), and it calls the hook between the reduce-scatter and
    the post-division, so the hook gets the shard group's mean times the post-division
    factor. The hook averages that over the replicas (Avg commutes with FSDP's later
    division), and every rank ends with the mean over all shard x replica ranks, as native
    HSDP. With module.set_gradient_divide_factor(f), FSDP divides by f alone and native HSDP
    sums across the replicas: the hook then sums too (sum over all ranks / f, as native HSDP);
    it reads the factor at each call, from `module` (without one: Avg always).

    FSDP calls the hook after every reduce-scatter of the module, on its all-reduce stream
    (gradcomp runs on it), with reduce_dtype tensors: float32, float16 or bfloat16. 1-D FSDP
    has no partial all-reduce, so set_requires_all_reduce(False) does not skip the hook (each
    micro-batch would be sent, correct but at full cost): for gradient accumulation,
    set_requires_gradient_sync(False) skips the reduce-scatter and the hook together.
    Inside `with state.paused():` the call goes to torch.distributed's all_reduce (AVG, or
    SUM under a divide factor) uncompressed, leaving the residuals alone. Every parameter of
    the module goes through gradcomp, as with GradcompReduceScatter: state.param_groups()
    (DGC's momentum correction) puts them all in the momentum-0 group; register first.
    """

    def __init__(self, state, key, module=None):
        _check_state(state, "GradcompReplicaAllReduce")
        self.state = state
        self.name = str(key)
        self.key = _key_of(("fsdp-replicas", self.name))
        self.module = module
        if module is not None and state is not None:
            _check_replica_mesh(module, state)
        if state is not None:
            state._serve_fsdp("replicate")
            _claim(self)

    _tree_checked = False  # _check_tree_hooked ran
    _claim_token = None  # _claim's, while the hook has a state to claim its key on

    def abort(self):
        """GradcompState.abort() of the state the modules' hooks share (see
        GradcompReduceScatter.abort)."""
        if self.state is not None:
            self.state.abort()

    def __call__(self, reduce_output):
        if self.state is not None:
            self.state._check_usable()
            _check_claim(self, "replica all-reduce")
        t = reduce_output
        cpu = self.state is not None and self.state.backend == "cpu"
        want = "cpu" if cpu else "cuda"
        if t.device.type != want:
            if cpu:
                raise TypeError(f"GradcompReplicaAllReduce got a {t.device.type} tensor, but its "
                                "state's backend 'cpu' reduces CPU tensors: make the state with "
                                "backend='nccl' for a model on the GPU; for a CPU model, build "
                                "the mesh on the CPU (init_device_mesh('cpu', (replicas, "
                                "shards), mesh_dim_names=('replicate', 'shard')))")
            raise TypeError(f"GradcompReplicaAllReduce got a {t.device.type} tensor: gradcomp "
                            "reduces CUDA tensors; for a CPU model on gloo groups, make the "
                            "state with backend='cpu'")
        if t.dtype not in _DTYPES:
            raise TypeError(f"GradcompReplicaAllReduce got a {t.dtype} tensor: gradcomp "
                            "compresses float32, float16 and bfloat16; set "
                            "MixedPrecisionPolicy(reduce_dtype=torch.float32)")
        # gradcomp reads and writes by address: a strided view would be read wrongly and
        # written past (into the elements between its own).
        if not t.is_contiguous():
            raise ValueError("GradcompReplicaAllReduce got a non-contiguous tensor (shape "
                             f"{tuple(t.shape)}, stride {t.stride()}): gradcomp reduces whole "
                             "contiguous buffers; pass a .contiguous() tensor")
        if self.state is None:
            raise ValueError("GradcompReplicaAllReduce has no state: make it with a "
                             "GradcompState over the replicate group "
                             "(register_fsdp_replica_all_reduce(model, state))")
        if cpu:
            return self._all_reduce(t, None)
        stream = torch.cuda.current_stream(t.device)
        # FSDP allocates the reduce-scatter output on its reduce-scatter stream and calls the
        # hook on another (its all-reduce stream). PyTorch 2.11's FSDP2 keeps no reference to
        # the output across layers when it casts it to the parameters' dtype (a reduce_dtype
        # other than theirs, as param_dtype=bfloat16 gives by default there) or offloads it to
        # the CPU: freed, its memory would go to the next layer's reduce-scatter while
        # gradcomp's allreduce of it still runs on this stream. Recorded on this stream, the
        # allocator reuses it only after the work queued here (this call, FSDP's cast) ends.
        t.record_stream(stream)
        return self._all_reduce(t, stream.cuda_stream)

    def _op(self):
        """"avg", or "sum" where the module has a gradient divide factor (see the class)."""
        if self.module is None:
            return "avg"
        groups = _param_groups(self.module)
        if not groups:
            return "avg"
        # The first group is the module's only one under a hook (see _division_after); every
        # group of a module has the same divide factor (set_gradient_divide_factor sets all).
        g = groups[0]
        # FSDPParamGroup's own field (PyTorch 2.15). An FSDP2 that keeps a divide factor under
        # another name would be averaged where native HSDP sums (1/R of its gradients): refused.
        if not hasattr(g, "gradient_divide_factor"):
            other = [k for k, v in vars(g).items() if "divide_factor" in k and v is not None]
            if other:
                raise RuntimeError(f"this PyTorch's FSDP2 ({torch.__version__}) keeps a gradient "
                                   f"divide factor as {other[0]}, which GradcompReplicaAllReduce "
                                   "does not read: it would average where native HSDP sums; "
                                   "drop set_gradient_divide_factor, or upgrade PyTorch")
            return "avg"
        return "avg" if g.gradient_divide_factor is None else "sum"

    def _all_reduce(self, t, stream_handle):
        """The call on a checked tensor, in place; stream_handle: the stream gradcomp runs on
        (None on the CPU backend)."""
        opname = self._op()
        if self.state._agrees_calls():
            self.state._agree_call(t.device,
                                   f"the replica all-reduce of FSDP module {self.name!r}")
        if self.state._paused:
            # state.paused(): uncompressed, the residuals and DGC's velocity left alone.
            op = dist.ReduceOp.AVG if opname == "avg" else dist.ReduceOp.SUM
            dist.all_reduce(t, op=op, group=self.state.process_group)
            return None
        _check_tree_hooked(self, "_all_reduce_hook", "replica all-reduce",
                           "register_fsdp_replica_all_reduce")
        comm, key, unit = _begin_call(self, t, None, self.state.world_size, opname, stream_handle)
        before = comm.call_counts()
        comm.allreduce_raw(t.data_ptr(), t.data_ptr(), t.numel(), _DTYPES[t.dtype], opname,
                           stream_handle, key)
        self.state._count_call(comm, before, t.numel() * t.element_size(),
                               "an FSDP replica all-reduce", t.numel())
        if unit != 1.0:
            t.div_(unit)
        return None


def _begin_call(hook, inp, group, size, opname, stream):
    """What a compressed call of an FSDP hook (GradcompReduceScatter, GradcompReplicaAllReduce)
    does first, on its input `inp` (the reduce-scatter's; the all-reduce's, in place): the
    comm, the residual's key (checked, the step counted), the scaler followed on `stream`.
    Returns (comm, key, unit). The residual stays in the unit of the key's first call: where
    FSDP's division (an Avg over `size` ranks, _division_after's over `group`) changed since,
    inp is scaled by unit into it here and the caller scales its output back (exact for powers
    of two). Without the module, FSDP's division after the call is not known: not followed."""
    comm = hook.state.comm(inp.device)
    key = _residual_key(hook, inp.numel())
    hook.state._check_fsdp_key(hook.name, key, inp.numel())
    hook.state._count_fsdp_step(hook.key)
    hook.state._follow_scaler(comm, stream)
    after = _division_after(hook.module, group, inp.dtype, inp.device.type)
    unit = 1.0 if after is None else hook.state._fsdp_unit_factor(
        key, (1.0 / size if opname == "avg" else 1.0) / after, inp.dtype != torch.float16)
    if unit != 1.0:
        inp.mul_(unit)
    return comm, key, unit


def _check_state(state, who):
    """Refuses a state that is not a GradcompState (None is let through: the call then says the
    hook has none), by its type, where it is given; its attributes are read much later, inside
    FSDP's backward, where a wrong object failed with an AttributeError naming none of it."""
    if state is not None and not isinstance(state, GradcompState):
        raise TypeError(f"{who} takes a gradcomp.torch.GradcompState; got {state!r} (a "
                        f"{type(state).__name__}): make one with GradcompState(process_group=..., "
                        "method=...) and pass it")


def _residual_key(hook, count):
    """The key of the residual a call of `hook` (of `count` elements) reduces under: its
    module's key, or, while some of the module's parameters are frozen (requires_grad=False),
    one per set of frozen ones. FSDP leaves a frozen parameter out of the flat buffer, also under
    set_reduce_scatter_unused_params(True): the buffer then holds the others' gradients, and a
    module whose parameters are frozen by turns (two of one size) gives buffers of one size
    that hold different parameters, which under one key took each other's residuals. Without
    the module (a hook made by hand without it), the module's key."""
    if hook.module is None:
        return hook.key
    frozen = tuple((g, i) for g, group in enumerate(_param_groups(hook.module))
                   for i, p in enumerate(getattr(group, "fsdp_params", ()))
                   if not p.sharded_param.requires_grad)
    if not frozen:
        return hook.key
    return _frozen_key(hook, frozen, _key_of((hook.key, "frozen", frozen)), count)


def _frozen_key(hook, frozen, key, count):
    """`key`, the residual key of the module's frozen set `frozen`, or the module's own key
    where the loaded state dict's run kept that set's residual there: it reduced `count`
    elements under the module's key and nothing under `key`, as gradcomp did before frozen
    parameters keyed residuals of their own (and as a run resumed from such a state dict goes
    on doing), so that such a checkpoint resumes the residual instead of starting it fresh. One
    frozen set per module goes on under the module's key, the first called; the others key
    their own. Read off the loaded state dict and the call alone, as every rank has them."""
    state = hook.state
    loaded = state._loaded_counts or {}
    if state._fsdp_frozen_named is None:
        state._fsdp_frozen_named = {}
    named = state._fsdp_frozen_named  # module key -> the frozen set reducing under it
    if hook.key not in named and loaded.get(hook.key) == count and key not in loaded:
        named[hook.key] = frozen
    return hook.key if named.get(hook.key) == frozen else key


def _check_tree_hooked(hook, attr, what, register):
    """At a hook's first compressed call: warns (once per state) where FSDP modules of its
    model (the FSDP states of the root's tree) have no gradcomp hook of this state (attr: the
    FSDPParamGroup's field holding it): fully_shard() applied after register_fsdp_*, mostly
    the root's, whose own parameters (embeddings, output layer) FSDP then reduces
    uncompressed, which no counter showed."""
    if hook._tree_checked or hook.module is None:
        return
    try:
        states = hook.module._get_fsdp_state()._state_ctx.all_states
    except AttributeError:  # an FSDP2 that keeps its tree otherwise: not checked
        hook._tree_checked = True
        return
    own = {id(g) for g in _param_groups(hook.module)}
    missing, shared = [], []
    for st in states:
        groups = getattr(st, "_fsdp_param_groups", None)
        if groups is None:
            group = getattr(st, "_fsdp_param_group", None)
            groups = [] if group is None else [group]
        for group in groups:
            other = getattr(group, attr, None)
            if not (isinstance(other, _GRADCOMP_FSDP_HOOKS) and other.state is hook.state):
                missing.append(getattr(group, "_module_fqn", "") or "<root>")
            elif other is hook and id(group) not in own:
                shared.append(getattr(group, "_module_fqn", "") or "<root>")
    if shared:
        # Every rank has the same tree: all refuse at the same call.
        raise ValueError(f"the gradcomp {what} made for FSDP module {hook.name!r} is installed "
                         f"on FSDP module(s) {shared} too: they would all reduce under its "
                         "residual key (one residual for modules of one size, each one's error "
                         "feedback added to the others' gradients) and count a step each. Make "
                         f"one per module: {register}(model, state) does")
    hook._tree_checked = True
    if missing:
        hook.state._warn_once("fsdp-unhooked", f"FSDP module(s) {missing} of the model have no "
                              f"gradcomp {what} on this GradcompState: FSDP sends their "
                              "gradients uncompressed, uncounted in state.stats(). "
                              f"fully_shard() applied after {register}(model, state)? Call it "
                              "after the last fully_shard (the root's) (warned once)")


def _claim(hook):
    """Makes `hook` the one that reduces under its key on its state: the last one made for a
    key wins, so a model rebuilt and registered again takes over its names. By a token, not by
    whether the hooks are alive: FSDP's modules, their param groups and hooks refer to each
    other, so a dropped one goes at each process's own collector run, and a decision made on
    that would differ between the ranks (some raising, the others waiting in the call)."""
    if hook.state._fsdp_hooks is None:
        hook.state._fsdp_hooks = {}
    hook._claim_token = object()
    hook.state._fsdp_hooks[hook.key] = hook._claim_token


def _check_claim(hook, what):
    """Refuses a call of a hook whose key a later hook of the same state took: two FSDP modules
    of one name on one state (every model's root is "<root>"), as two models registered on it
    give. Their residuals are keyed by name, so each module's error feedback would go into the
    other's gradient (and each step be counted twice), silently."""
    if (hook.state._fsdp_hooks or {}).get(hook.key) is not hook._claim_token:
        raise ValueError(f"FSDP module {hook.name!r} has two {what}s on this GradcompState "
                         "under one name: two models (or two modules named alike) were "
                         "registered on it, and their residuals, keyed by module name, would "
                         "go into each other's gradients. Make one GradcompState per model; a "
                         "model built anew and registered again takes over from the old one, "
                         "which is then not to be trained on this state")


def _check_model(model, who):
    """Refuses a model that is not a torch.nn.Module (named_modules() failed deep inside)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{who} takes the model (a torch.nn.Module with fully_shard() applied); "
                        f"got {type(model).__name__}")


def _division_after(module, group, dtype, device_type):
    """What FSDP divides a reduce-scatter's output of `module` (over `group`, None: the
    module's shard group) by after the call, and so after its all-reduce hook: its
    post-division (fp16's, or a sum forced by set_force_sum_reduction_for_comms) times native
    HSDP's averaging over the replicas (1 where there is none), by PyTorch's own rule
    (_get_gradient_divide_factors); None where the module is not known or this FSDP2 does not
    say."""
    groups = _param_groups(module) if module is not None else []
    if not groups:
        return None
    # The module's only group where a gradcomp hook can be installed: FSDP2 makes one
    # FSDPParamGroup per (shard, replicate) process group of a module's parameters, so a module
    # with per-parameter meshes (shard_placement_fn) has groups of different sizes, whose Avg
    # divides differently; but PyTorch 2.15's set_custom_reduce_scatter and set_all_reduce_hook
    # refuse such a module (ValueError, "ambiguous across groups"), and its
    # set_gradient_divide_factor and set_force_sum_reduction_for_comms set every group alike.
    # An FSDP2 that lets one hook serve several groups would call it with each group's
    # process group (`group`) and input size: match the group by those here then.
    g = groups[0]
    try:
        from torch.distributed.fsdp._fully_shard._fsdp_collectives import (
            _get_gradient_divide_factors)
        replicas = getattr(g.mesh_info, "replicate_process_group", None)
        if group is None:
            group = getattr(g.mesh_info, "shard_process_group", None)
        _, post, _, replica_op = _get_gradient_divide_factors(
            group, replicas, dtype, device_type, g.gradient_divide_factor,
            g.force_sum_reduction_for_comms)
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    div = float(post) if post else 1.0
    if replicas is not None and replica_op == dist.ReduceOp.AVG:
        div *= replicas.size()
    return div


def _premul_factor(op):
    """The factor of a PREMUL_SUM reduce op (ReduceOp.PREMUL_SUM(x): a float, or a tensor), or
    None for any other op."""
    if getattr(op, "op", op) != dist.ReduceOp.PREMUL_SUM:
        return None
    return getattr(op, "factor", None)


def _premul_scalar(factor, t):
    """PREMUL_SUM's factor as NCCL's PreMulSum gets it from torch: in t's dtype (a float factor
    rounded as C++'s T(double): to float, then to t's type), a 0-dim tensor (a CPU one for a
    float factor; a tensor factor moved to t's device)."""
    if isinstance(factor, torch.Tensor):
        return factor.to(device=t.device, dtype=t.dtype)
    return torch.tensor(float(factor), dtype=torch.float32).to(t.dtype)


# The hooks as defined here (a subclass of either is one too).
_GRADCOMP_FSDP_HOOKS = (GradcompReduceScatter, GradcompReplicaAllReduce)


def _param_groups(module):
    """The FSDPParamGroups of an FSDP module (none for a module without parameters of its
    own): a list where FSDP2 has per-parameter meshes, one group or None in older PyTorch."""
    st = module._get_fsdp_state()
    groups = getattr(st, "_fsdp_param_groups", None)
    if groups is None:
        group = getattr(st, "_fsdp_param_group", None)
        groups = [] if group is None else [group]
    return list(groups)


def _check_replica_mesh(module, state):
    """Refuses a module FSDP already all-reduces (native HSDP: the hook would come after it)
    and a state whose group is not this rank's replicate group (it shares more ranks than this
    one with FSDP's shard group)."""
    for group in _param_groups(module):
        info = group.mesh_info
        if hasattr(info, "replicate_process_group"):
            raise ValueError("this FSDP module is native HSDP (fully_shard over a 2-D mesh): "
                             "FSDP all-reduces across the replicas itself, and would call the "
                             "hook after it (the replicas averaged twice); shard over the shard "
                             "mesh only, fully_shard(..., mesh=mesh['shard']), and give the "
                             "state mesh['replicate'].get_group()")
        shard = getattr(info, "shard_process_group", None)
        if shard is None:
            continue
        shard_ranks = dist.get_process_group_ranks(shard)
        mine = dist.get_process_group_ranks(state.process_group)
        if set(shard_ranks) & set(mine) != {dist.get_rank()}:
            raise ValueError(f"the GradcompState's group (ranks {mine}) is not the replicate "
                             f"group of FSDP's shard group (ranks {shard_ranks}): they must "
                             "share this rank only; make the state with "
                             "process_group=mesh['replicate'].get_group()")


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


_NO_FSDP2 = ("this PyTorch ({}) has no FSDP2 (fully_shard, PyTorch >= 2.4): upgrade PyTorch to "
             "use FSDP2")


def unsupported_reason():
    """None when this PyTorch and libgradcomp can run GradcompReduceScatter, else the sentence
    saying why not and what to do: FSDP2's set_custom_reduce_scatter came with PyTorch 2.9,
    while FSDP2 itself (and so LD_PRELOAD's compressed reduce-scatter) needs only 2.4."""
    preload = ("compress FSDP2's reduce-scatters with LD_PRELOAD=libgradcomp_preload.so "
               "instead (tools/fsdp_check.sh)")
    cls = _fsdp_module_class()
    if cls is None:
        return _NO_FSDP2.format(torch.__version__)
    if not hasattr(cls, "set_custom_reduce_scatter"):
        return (f"this PyTorch ({torch.__version__}) has FSDP2 without "
                "FSDPModule.set_custom_reduce_scatter (PyTorch >= 2.9): upgrade PyTorch, or "
                + preload)
    if not _lib.has("gradcompReduceScatterKeyed"):
        return (f"{_lib.library_path()} has no gradcompReduceScatterKeyed: rebuild libgradcomp "
                "from a checkout with the reduce-scatter entry point, or " + preload)
    return None


def _applies_velocity(state):
    """Whether the state's comm applies DGC's velocity u = m*u + g to what it is handed."""
    cfg = state.config
    return cfg.method == "dgc" and bool(cfg.momentum_correction) and float(cfg.momentum) > 0.0


def _check_one_velocity(model, state, role):
    """Refuses to install `state` for FSDP2's `role` ("shard": the reduce-scatter, "replicate":
    the replica all-reduce) on a module whose other collective already goes through another
    GradcompState, where both apply DGC's momentum correction: the replica all-reduce would take
    the reduce-scatter's velocity as its gradient and apply the momentum again (about 1/(1-m)
    times the step, silently). Checked for every module before any is installed."""
    if state is None or not _applies_velocity(state):
        return
    FSDPModule = _fsdp_module_class()
    for name, module in model.named_modules():
        if not isinstance(module, FSDPModule):
            continue
        for group in _param_groups(module):
            other = (getattr(group, "_all_reduce_hook", None) if role == "shard"
                     else getattr(group, "_reduce_scatter_comm", None))
            if not isinstance(other, _GRADCOMP_FSDP_HOOKS) or other.state is None:
                continue
            if other.state is not state and _applies_velocity(other.state):
                raise ValueError(
                    f"FSDP module {name or '<root>'!r}: its "
                    + ("replica all-reduce" if role == "shard" else "reduce-scatter")
                    + " already goes through a GradcompState with DGC's momentum correction, "
                    "and this state has it too: the replica all-reduce would apply the momentum "
                    "again to the reduce-scatter's velocity (momentum twice, about 1/(1-m) times "
                    "the step). Keep DGC's momentum correction on one of the two states: make "
                    "the other with momentum_correction=0 or another method (method='qsgd')")


def register_fsdp_reduce_scatter(model, state):
    """set_custom_reduce_scatter on every FSDPModule of `model`, keyed by its name.
    Returns the number of modules. Raises RuntimeError with unsupported_reason() where this
    PyTorch's FSDP2 cannot take a custom reduce-scatter, and ValueError where the modules'
    replica all-reduce already goes through another state applying DGC's momentum correction
    and this one applies it too (see register_fsdp_replica_all_reduce)."""
    FSDPModule = _fsdp_module_class()
    if FSDPModule is None or not hasattr(FSDPModule, "set_custom_reduce_scatter"):
        raise RuntimeError(f"gradcomp: {unsupported_reason()}")
    _check_model(model, "register_fsdp_reduce_scatter")
    _check_state(state, "register_fsdp_reduce_scatter")
    _check_one_velocity(model, state, "shard")
    return _each_fsdp_module(model, lambda name, module: module.set_custom_reduce_scatter(
        GradcompReduceScatter(state, name, module=module)))


def _each_fsdp_module(model, install):
    """install(name, module) for every FSDPModule of `model` (the root named "<root>"); the
    number of modules, or ValueError where there is none."""
    FSDPModule = _fsdp_module_class()
    n = 0
    for name, module in model.named_modules():
        if isinstance(module, FSDPModule):
            install(name or "<root>", module)
            n += 1
    if n == 0:
        raise ValueError("the model has no FSDP module: call fully_shard() on it first")
    return n


def replica_unsupported_reason():
    """None when this PyTorch can run GradcompReplicaAllReduce, else the sentence saying why
    not and what to do (FSDP2 with FSDPModule.set_all_reduce_hook)."""
    cls = _fsdp_module_class()
    if cls is None:
        return _NO_FSDP2.format(torch.__version__)
    if not hasattr(cls, "set_all_reduce_hook"):
        return (f"this PyTorch ({torch.__version__}) has FSDP2 without "
                "FSDPModule.set_all_reduce_hook: upgrade PyTorch, or use native HSDP "
                "(fully_shard over the 2-D mesh) with gradcomp's reduce-scatter or LD_PRELOAD")
    return None


def register_fsdp_replica_all_reduce(model, state):
    """set_all_reduce_hook(GradcompReplicaAllReduce) on every FSDPModule of `model`, keyed by
    its name; `state` over the replicate group, the model sharded over the shard mesh only.
    Returns the number of modules. Raises RuntimeError with replica_unsupported_reason()
    where this PyTorch's FSDP2 has no all-reduce hook. The modules' reduce-scatter may go
    through another GradcompState (over the shard group); DGC's momentum correction then
    belongs to one of the two: both applying it is refused (ValueError), since this hook
    would apply the momentum again to the reduce-scatter's velocity."""
    reason = replica_unsupported_reason()
    if reason is not None:
        raise RuntimeError(f"gradcomp: {reason}")
    _check_model(model, "register_fsdp_replica_all_reduce")
    _check_state(state, "register_fsdp_replica_all_reduce")
    _check_one_velocity(model, state, "replicate")
    return _each_fsdp_module(model, lambda name, module: module.set_all_reduce_hook(
        GradcompReplicaAllReduce(state, name, module=module)))
