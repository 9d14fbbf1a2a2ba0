"""A DDP comm hook that compresses gradient buckets with gradcomp (PyTorch's ddp_comm_hooks shape).

    state = GradcompState(module=model, method="qsgd", bits=4)   # before DDP's first step
    register_ddp_hook(ddp_model, state)     # or ddp_model.register_comm_hook(state, gradcomp_hook)
    ...
    ckpt["gradcomp"] = state.state_dict()                          # residuals, step counter

What is sent, per bucket and rank: the bucket's large parameters (dim() > 1
and at least layer_min_size elements) go through one gradcompAllReduceKeyed
call on gradcomp's own communicator (NCCL; with backend="cpu", CPU tensors on
a gloo group, the CPU backend's TCP transport), i.e. the compressed bytes of the
method (QSGD 4-bit, two-shot: about 2(N-1)/N * 4.06/32 of the fp32 bytes;
DGC: (N-1) * kmax * 8 bytes), with error feedback keeping what was not sent;
the small and 1-d parameters (biases, norms) of the bucket go through ONE
uncompressed torch.distributed all_reduce (2(N-1)/N of their bytes, ring).
Cost: a gather of each part into a contiguous buffer and a scatter back
(device copies of the bucket's bytes), plus gradcomp's encode/decode kernels.

The state must reduce over the DDP's ranks (otherwise every call would average
over the state's ranks, silently): each DDP's first hook call compares them on
every rank of the DDP's group (one all_gather), and every rank raises alike.
register_ddp_hook(ddp_model, state) registers gradcomp_hook with the DDP and
its group recorded on the state, so each DDP the state serves is checked at its
own first call. ddp_model.register_comm_hook(state, gradcomp_hook) gives the
hook no DDP: the state finds it once, at its first call, among the referrers of
the (hook, state) pair DDP keeps (gc.get_referrers, blind to gc.freeze()), and
a DDP it is registered on later is not checked again, nor its
find_unused_parameters read: the state keeps the settings of the one found,
also once it is gone (each rank frees it at its own time, and a search made on
some ranks only would meet the others' next collective); where it finds none (a
hook of one's own registered with another state), it warns once. torch's hook
wrappers (fp16_compress_wrapper, hook_with_zero_step) go through
register_ddp_hook(ddp_model, state, wrap=...).
"""
import contextlib
import difflib
import functools
import hashlib
import os
import sys
import warnings
import weakref

import torch
import torch.distributed as dist

from .. import _types as T
from .._lib import InvalidArgumentError, has
from ..comm import _integer
from ..config import Config, _is_bool, _setting_named, as_config, settings as config_settings
from ..info import nccl_interposer
from . import _group, _nccl


def _preload_compresses():
    """Whether the interposer compresses anything in this process: it reads the GRADCOMP_*
    variables as the library does (GRADCOMP_METHOD=NONE is none, choices being
    case-insensitive), and passes every call to NCCL under method none or a value it refuses."""
    try:
        return Config().method != "none"
    except InvalidArgumentError:
        return False


_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_STATE_VERSION = 1
# How an FSDP2 state's residuals are keyed, by the collective it serves (_fsdp_role).
_FSDP_KEYED_BY = {"shard": "fsdp", "replicate": "fsdp-replicas"}
# The options of the DDP hook alone, with their defaults: FSDP2's hooks compress every parameter
# (FSDP's whole flat buffer) from the first call, so a state serving them refuses any given.
_DDP_ONLY = {"layer_min_size": 1024, "start_iter": 2, "exclude_1d": True}
# layer_min_size, start_iter and iter travel as int64 in the ranks' agreement on them
# (_agree_options): a larger value could not be sent, and the rank holding it would fail
# alone while its peers waited in the agreement.
_INT64_MAX = 2**63 - 1
_ABORTED = ("gradcomp: the state was aborted (GradcompState.abort()) and its residuals are gone; "
            "make a new GradcompState (and register it again) to go on")
_CLOSED = ("gradcomp: the state was closed (GradcompState.close()): its comm and residuals are "
           "gone. Take state.state_dict() before close() to checkpoint them; to train on, make a "
           "new GradcompState (register it again) and load_state_dict() that checkpoint into it")


# GradcompState's own keyword arguments (the rest are gradcomp's settings, gradcomp.settings()).
_STATE_OPTIONS = ("process_group", "module", "layer_min_size", "start_iter", "exclude_1d",
                  "backend", "grad_scaler", "config")


def _check_keywords(settings_):
    """Refuses keywords that are neither GradcompState's options nor gradcomp's settings, naming
    the nearest of either: a misspelt option (start_iters=) would reach Config, whose sentence
    lists gradcomp's settings only, not the option meant."""
    # from_env is Config's own argument, which as_config passes on (GradcompState(from_env=False)).
    unknown = [k for k in settings_ if k not in config_settings() and k != "from_env"]
    if not unknown:
        return
    names = list(_STATE_OPTIONS) + config_settings()

    def meant(k):
        # Another spelling of a setting (GRADCOMP_METHOD, ef) or of an option (START_ITER)
        # first: the closest name by letters may be another one.
        named = _setting_named(k) or (k.lower() if k.lower() in _STATE_OPTIONS else None)
        return [named] if named else difflib.get_close_matches(k, names, n=1)

    near = [f"{k} (did you mean {m[0]}?)" if m else k for k in unknown for m in [meant(k)]]
    raise InvalidArgumentError(
        f"GradcompState got unknown keyword {', '.join(near)}; its own options are "
        f"{', '.join(_STATE_OPTIONS)}, and gradcomp's settings are "
        f"{', '.join(config_settings())}", 1)


def _shapes(named):
    """(name, shape) of each (name, parameter); shape None for a lazy module's parameter that
    is not materialized yet."""
    return [(n, None if torch.nn.parameter.is_lazy(p) else tuple(p.shape)) for n, p in named]


def _key_of(ids):
    """A 64-bit key for a tuple of parameter identities, the same in every process."""
    h = hashlib.blake2b(repr(tuple(ids)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


class GradcompState:
    """Settings and state of gradcomp_hook (one per DDP model).

    Args:
        process_group: the NCCL group DDP reduces over (default: the world);
            with backend="cpu", a gloo group. Models trained at once from several
            threads need a group each: a group's collectives and comms meet in
            call order, which threads may change from rank to rank.
        backend: "nccl" (CUDA tensors, gradcomp's own NCCL communicator) or
            "cpu": CPU tensors of a gloo group, compressed by gradcomp's CPU
            backend with its ranks connected by TCP (gradcompCommCreateSocket;
            rank 0's "host:port" through the group's store). Same codecs and
            algorithms, bit for bit; the opt-in is explicit so that a gloo
            group by mistake is still refused.
        module: the model (or DDP wrapper) whose parameters the buckets hold.
            With it, each bucket's residual is keyed by the indices of its
            parameters in module.parameters(), so the key follows the
            parameters through DDP's bucket rebuild and into a new process;
            without it, by the bucket's index and parameter shapes.
        layer_min_size: parameters with fewer elements, or with dim() <= 1,
            stay in full precision (CGX's rule; DGC compresses only dim() > 1).
        exclude_1d: False compresses dim() <= 1 parameters too (with
            layer_min_size=0: whole buckets, as LD_PRELOAD sees them).
        start_iter: steps before compression starts (uncompressed allreduce
            before). DDP rebuilds its buckets after the first step (with
            static_graph=True, after the second), so the default 2 compresses
            only rebuilt buckets (as PowerSGD's start_powerSGD_iter > 1).
            layer_min_size, exclude_1d and start_iter are the DDP hook's
            (None: the defaults above): FSDP2's reduce-scatter and replica
            all-reduce compress every parameter from the first call, and
            refuse a state made with any of them (for uncompressed steps there,
            run them inside `with state.paused():`).
        grad_scaler: the torch.amp.GradScaler that scales this model's loss
            (fp16 AMP), or None. gradcomp's residuals and DGC's velocity are
            then kept in the units of the scaled gradients it is handed: at
            the first compressed call after the scaler's update() the state
            reads the scaler's scale (get_scale(): one host read per step)
            and gradcomp rescales what it holds (gradcompCommSetGradScale);
            DGC's clip_norm applies to unscaled gradients. Without it, each
            backoff (x0.5) would double what the residuals carry and each
            growth (x2) halve it. Also settable as state.grad_scaler (after
            load_state_dict of a pickled state, which does not hold it).
        config: a gradcomp.Config; keywords override it. Otherwise the
            settings start from the GRADCOMP_* variables (gradcompConfigFromEnv),
            e.g. method="dgc", density=0.001, bits=2, bucket_size=512,
            min_elements=..., algo="twoshot" (gradcomp.settings() lists them).

    Raises ValueError for a group that is not the backend's (gloo without
    backend="cpu"), a process_group that is not a process group (the model
    belongs in module=), a single-rank group, a bad setting (the sentence names
    the value and its range) and a keyword that is neither an option above nor a
    gradcomp setting (naming the nearest); TypeError for a module that is not a
    torch.nn.Module.
    """

    _aborted = False  # set for good by abort()
    _closed = False  # set for good by close()
    # Which FSDP2 collective the state serves (None: DDP's hook): "shard"
    # (GradcompReduceScatter, over the shard group) or "replicate" (GradcompReplicaAllReduce,
    # over the replicate group); one only, since the state's comm spans one process group.
    # FSDP2 compresses every parameter.
    _fsdp_role = None
    _split_given = False  # param_groups() gave a DGC split by is_compressed()
    _ddp_options = {}  # the DDP hook's options given (_DDP_ONLY), by name; set, never changed
    # FSDP2's hooks by residual key: the token of the one made last for each key (fsdp._claim),
    # which alone may reduce under it (a second model's module of the same name would take its
    # residual). None until the first is made.
    _fsdp_hooks = None
    # FSDP2's frozen parameter sets whose residual a loaded state dict kept under their module's
    # key (fsdp._frozen_key), by module key; None until one is looked up, again at each load.
    _fsdp_frozen_named = None

    def __init__(self, process_group=None, module=None, *, layer_min_size=None, start_iter=None,
                 exclude_1d=None, backend="nccl", grad_scaler=None, config=None, **settings):
        if module is not None and not isinstance(module, torch.nn.Module):
            raise TypeError(f"module= takes the model (a torch.nn.Module); got "
                            f"{type(module).__name__}")
        _check_keywords(settings)
        self.process_group, self.rank, self.world_size = _group.check_group(process_group,
                                                                            backend)
        self.backend = backend
        # The DDP hook's options given (FSDP2's hooks refuse them: _serve_fsdp).
        self._ddp_options = {n: v for n, v in (("layer_min_size", layer_min_size),
                                               ("start_iter", start_iter),
                                               ("exclude_1d", exclude_1d)) if v is not None}
        layer_min_size = self._ddp_options.get("layer_min_size", _DDP_ONLY["layer_min_size"])
        start_iter = self._ddp_options.get("start_iter", _DDP_ONLY["start_iter"])
        exclude_1d = self._ddp_options.get("exclude_1d", _DDP_ONLY["exclude_1d"])
        for name, v in (("layer_min_size", layer_min_size), ("start_iter", start_iter)):
            what = f"an integer in 0..{_INT64_MAX} (2**63 - 1)"
            if not 0 <= _integer(v, name, what) <= _INT64_MAX:
                raise ValueError(f"{name}={v!r} is not an integer in 0..{_INT64_MAX} (2**63 - 1)")
        if not _is_bool(exclude_1d):
            raise ValueError(f"exclude_1d={exclude_1d!r} is not True or False")
        if grad_scaler is not None and not callable(getattr(grad_scaler, "get_scale", None)):
            raise ValueError(f"grad_scaler={grad_scaler!r} has no get_scale(): pass the "
                             "torch.amp.GradScaler that scales this model's loss, or None")
        self.grad_scaler = grad_scaler
        self._forget_scale()
        self.config = as_config(config, **settings)
        self.layer_min_size = int(layer_min_size)
        self.exclude_1d = bool(exclude_1d)
        self.start_iter = int(start_iter)
        self.iter = 0
        self._param_ids = None
        self._param_names = None
        # The module's named parameters, in index order: their shapes are saved with residuals
        # keyed by parameter index and checked against the model they are loaded into (read
        # when needed: a lazy module's parameters get theirs at its first forward).
        self._params = None
        self._pending_shapes = None  # those of a pending blob (_check_shapes)
        self._needs_module = False  # restored residuals keyed by parameter indices
        # One DDP model per state (_note_bucket): the parameters of the first step's buckets,
        # the bucket indices of the step in progress.
        self._model_params = set()
        self._model_seen = False
        self._step_buckets = set()
        self._pending_keyed = None  # the keying a pending blob was saved with
        # The residual keys of the compressed calls made (saved in state_dict), and those of a
        # loaded state dict: a compressed call under a key the loaded run never used is a bucket
        # DDP groups otherwise (not yet regrouped after a resume), whose residual starts fresh.
        self._keys = set()
        self._loaded_keys = None
        # FSDP2's residual keys with the element count of their calls (saved in state_dict), and
        # those of a loaded state dict: a module name that reduces another count than in the
        # loaded run is a module whose parameters changed shape (_check_fsdp_key).
        self._key_counts = {}
        self._loaded_counts = None
        # FSDP2's residual keys with the weight of one unit of their residual in the gradient
        # FSDP leaves (saved in state_dict): what the divide factor made it at the key's first
        # call (_fsdp_unit_factor).
        self._key_scales = {}
        # The FSDP2 module keys reduced in the step in progress (_count_fsdp_step).
        self._fsdp_step_keys = set()
        # What a compressed call released for a parameter DDP found unused on every rank
        # (find_unused_parameters=True), which DDP then gave no gradient: by id(parameter),
        # (weakref to it, the slice, its saved identity, the gradients' scale it is in); added
        # to the parameter's slice of the result of its next compressed call, so it is delayed,
        # not lost (_settle_unused). Those of a loaded state dict wait by saved identity (with
        # their scale) until their parameter is seen.
        self._carry = {}
        self._loaded_carry = {}
        # This backward's compressed calls to settle once DDP has finalized it, and the
        # autograd graph task whose end settles them (None: none queued).
        self._watch = []
        self._watch_task = None
        self._found_ddp = None  # the DDP _registering_ddp found, weakly
        self._found_opts = None  # and its settings (_ddp_opts), read when it was found
        self._found_join = False  # and whether it was in Join at its last forward (_in_join)
        self._found_join_hook = None  # the found DDP's forward pre-hook (_FoundJoinNote)
        if module is not None:
            ddp_group = getattr(module, "process_group", None)
            if (isinstance(module, torch.nn.parallel.DistributedDataParallel)
                    and ddp_group is not None
                    and dist.get_process_group_ranks(ddp_group)
                    != dist.get_process_group_ranks(self.process_group)):
                raise ValueError(
                    "the DDP module reduces over ranks "
                    f"{dist.get_process_group_ranks(ddp_group)}, but this GradcompState over "
                    f"ranks {dist.get_process_group_ranks(self.process_group)}: make the state "
                    "with process_group=<the group given to DistributedDataParallel>")
            named = list(module.named_parameters())
            self._param_ids = {id(p): i for i, (_, p) in enumerate(named)}
            self._param_names = {id(p): n for n, p in named}
            self._params = named
        self._comm = None
        self._nccl_handle = None
        self._device = None  # the CUDA device the comm was made on
        self._pending_blob = None
        self._plans = {}
        self._paused = False
        # The DDP hook's options and step counter, compared between the ranks at the hook's
        # first call outside paused() (_agree_options).
        self._options_agreed = False
        self._ddp_group_checked = False  # _check_ddp_group passed (or found no DDP)
        # The DDP modules register_ddp_hook registered this state on, with their process groups,
        # and those whose group _check_ddp_group passed: held weakly, so that a dropped DDP
        # (the model wrapped again) leaves nothing behind.
        self._ddps = weakref.WeakKeyDictionary()
        self._ddps_checked = weakref.WeakSet()
        self._warned = set()
        # compressed_*: calls gradcomp compressed; passed_*: calls handed to gradcomp that it
        # sent uncompressed (GRADCOMP_AUTO, min_elements; a DGC comm still applies its momentum).
        self.counters = {"compressed_calls": 0, "full_precision_calls": 0,
                         "full_precision_bytes": 0, "compressed_dense_bytes": 0,
                         "passed_calls": 0, "passed_dense_bytes": 0,
                         "uncompressed_steps": 0}
        self.full_precision_params = set()
        self.compressed_params = set()
        preload = nccl_interposer() if backend == "nccl" else None
        if preload is not None and _preload_compresses():
            # Two doors: the hooks compress on gradcomp's own communicator, and the interposer
            # compresses what torch.distributed sends on the process group, which includes
            # what this state sends uncompressed on purpose.
            self._warn_once("preload", f"ncclAllReduce in this process is {preload}'s "
                            "(LD_PRELOAD): torch.distributed's allreduces and reduce-scatters "
                            "are compressed by it, this state's uncompressed ones too (the first "
                            "start_iter steps, the small and 1-d parameters, paused() steps, "
                            "FSDP's other reduce ops), with residuals of its own (and under "
                            "GRADCOMP_METHOD=dgc a momentum of its own, on top of the "
                            "optimizer's for the full-precision parameters); use one of the "
                            "two: unset LD_PRELOAD for this job, or register no gradcomp hook")

    # -------------------------------------------------------------- checkpoint
    def __getstate__(self):
        """Settings, step counter, gradcomp's residuals and the slices carried for parameters DDP
        gave no gradient (_carry); not the group or the comm."""
        self._check_usable()
        return {"version": _STATE_VERSION, "settings": self.config.as_dict(),
                "layer_min_size": self.layer_min_size, "start_iter": self.start_iter,
                "exclude_1d": self.exclude_1d, "backend": self.backend,
                "keyed_by": self._keyed_by(), "iter": self.iter, "gradcomp": self._blob(),
                "keys": sorted(self._keys), "param_shapes": self._saved_shapes(),
                "key_counts": sorted([k, n] for k, n in self._key_counts.items()),
                "key_scales": sorted([k, w] for k, w in self._key_scales.items()),
                "carry": self._saved_carry()}

    def _saved_carry(self):
        """The slices held for parameters DDP gave no gradient (_carry), as [identity, tensor]:
        identity ["params", index] (keyed by parameter index) or ["bucket", key, position in the
        bucket's compressed parameters]; those loaded and not yet used are saved again."""
        # Not those of a parameter freed since (its weakref is dead): nothing can take them.
        out = [[list(ident), t.detach().cpu().clone(), sc]
               for ref, t, ident, sc in self._carry.values() if ref() is not None]
        out += [[list(ident), t.detach().cpu().clone(), sc]
                for ident, (t, sc) in self._loaded_carry.items()]
        return sorted(out, key=lambda e: repr(e[0]))

    @staticmethod
    def _parse_carry(d):
        """The saved carry of state dict d as {identity: (tensor, scale)}; ValueError for another
        shape (a state dict saved before the carry was has none)."""
        if d.get("gradcomp") is None:
            return {}  # without residuals, none: the carry goes with them
        carry = d.get("carry", [])
        out = {}
        ok = isinstance(carry, (list, tuple))
        for e in carry if ok else ():
            if not (isinstance(e, (list, tuple)) and len(e) == 3
                    and isinstance(e[0], (list, tuple))
                    and len(e[0]) in (2, 3) and isinstance(e[0][0], str)
                    and len(e[0]) == {"params": 2, "bucket": 3}.get(e[0][0])
                    and all(isinstance(v, int) for v in e[0][1:])
                    and isinstance(e[1], torch.Tensor) and e[1].dim() == 1
                    and e[1].dtype in _DTYPES and isinstance(e[2], float) and e[2] > 0):
                ok = False
                break
            out[tuple(e[0])] = (e[1], e[2])
        if not ok:
            raise ValueError("the state dict's carry is not the list of [[\"params\", index] or "
                             "[\"bucket\", key, position], 1-d float tensor, scale > 0] that "
                             "state_dict() saves")
        return out

    def _saved_shapes(self):
        """The (name, shape) of each parameter of the module whose indices key the residuals
        (keyed by "params"), or None."""
        if self._keyed_by() != "params":
            return None
        if self._params is None:  # restored, waiting for set_module: as loaded
            return self._pending_shapes
        return [[n, None if shape is None else list(shape)] for n, shape in _shapes(self._params)]

    def _check_shapes(self, saved, shapes):
        """Refuses residuals keyed by parameter index that were saved for parameters of other
        shapes than `shapes` ((name, shape) of this state's module) has at those indices: the
        bucket of such a parameter gets the saved key with another size, or its saved residual
        is added to another parameter's gradient (one shape's elements on another's), silently.
        A state dict without the shapes (saved before they were) checks nothing."""
        if saved is None:
            return
        try:
            saved = [(str(n), None if shape is None else tuple(int(d) for d in shape))
                     for n, shape in saved]
        except (TypeError, ValueError) as e:
            raise ValueError(f"the state dict's param_shapes is not the list of [name, shape] "
                             f"that state_dict() saves ({e})") from None
        for i, (name, shape) in enumerate(saved):
            have = shapes[i] if i < len(shapes) else None
            if shape is None or (have is not None and have[1] in (None, shape)):
                continue  # the same, or a lazy parameter not materialized in one of the two
            if not (self._would_compress(shape)
                    or (have is not None and self._would_compress(have[1]))):
                continue  # kept in full precision either way: no residual
            now = (f"this model's parameter {i} is {have[0]!r} of shape {tuple(have[1])}"
                   if have is not None else f"this model has {len(shapes)} parameters")
            raise ValueError(
                f"the state dict's residuals are keyed by parameter index and were saved for a "
                f"model whose parameter {i} is {name!r} of shape {shape}, but {now}: its "
                "residuals would lie unused or be added to another parameter's gradient. Load "
                "the state dict into the model it was saved with, or train on from fresh "
                "residuals (do not load it)")

    def _would_compress(self, shape):
        """is_compressed() for a parameter of this shape."""
        n = 1
        for d in shape:
            n *= int(d)
        return not (n < self.layer_min_size or (self.exclude_1d and len(shape) <= 1))

    def _keyed_by(self):
        """How the residuals are keyed: "fsdp" (FSDP2's reduce-scatter: by module name, with or
        without a module given), "fsdp-replicas" (FSDP2's replica all-reduce: by module name,
        over the replicate group), "params" (indices in the module given to the state, or restored
        so and waiting for set_module) or "bucket" (bucket index and shapes)."""
        if self._fsdp_role is not None:
            return _FSDP_KEYED_BY[self._fsdp_role]
        return "params" if self._param_ids is not None or self._needs_module else "bucket"

    def __setstate__(self, d):
        """Back on the default process group (as PowerSGDState); module keys need set_module()."""
        # A saved default as not given: an FSDP2 state's (which refuses them given) unpickles
        # as it was made.
        self.__init__(None, backend=d.get("backend", "nccl"),
                      config=Config(from_env=False, **d["settings"]),
                      **{n: d[n] for n, v in _DDP_ONLY.items() if d[n] != v})
        self.iter = d["iter"]
        self._pending_blob = d["gradcomp"]
        self._pending_keyed = d.get("keyed_by") if d["gradcomp"] is not None else None
        self._note_loaded_keys(d)
        self._pending_shapes = d.get("param_shapes") if d["gradcomp"] is not None else None
        self._loaded_carry = self._parse_carry(d)
        # Residuals saved under parameter indices match only after set_module(model); the first
        # compressed call refuses to run without it rather than start from fresh residuals.
        self._needs_module = d.get("keyed_by") == "params" and d["gradcomp"] is not None

    def state_dict(self):
        return self.__getstate__()

    def load_state_dict(self, d):
        """Restores the step counter and residuals (settings stay this object's; residuals
        saved under another layer rule, layer_min_size or exclude_1d, are refused: they are
        keyed by the parameters that rule compresses).

        All or nothing: a refused state dict raises and leaves this state (step counter,
        residuals) as it was. With the comm made, the library checks the whole blob here.
        Before it (the usual resume) the blob is kept until the first compressed call makes
        the comm; what can be checked without the comm is checked here: the format, the
        rank and world size, and the method it was saved with. A blob the library refuses
        when the comm is made raises there, at that call and every later one (the comm is
        not kept), until a state dict the library accepts is loaded."""
        if not isinstance(d, dict):
            raise ValueError("load_state_dict takes a dict from GradcompState.state_dict(); got "
                             f"{type(d).__name__}")
        if d.get("version") != _STATE_VERSION:
            raise ValueError(f"state version {d.get('version')} is not {_STATE_VERSION}: saved "
                             "by another gradcomp.torch")
        self._check_usable()
        if "iter" not in d or "gradcomp" not in d:
            raise ValueError("load_state_dict takes a dict from GradcompState.state_dict() "
                             f"(keys version, iter, gradcomp, ...); got keys {sorted(d)}")
        it, blob = _integer(d["iter"], "the state dict's iter", "a step count >= 0"), d["gradcomp"]
        if not 0 <= it <= _INT64_MAX:
            raise ValueError(f"the state dict's iter={it} is not a step count in "
                             f"0..{_INT64_MAX} (2**63 - 1)")
        if blob is not None and not isinstance(blob, (bytes, bytearray, memoryview)):
            raise ValueError(f"the state dict's gradcomp blob is a {type(blob).__name__}, not "
                             "the bytes state_dict() saved")
        if blob is not None:
            # A copy: a bytearray or memoryview kept until the first compressed call would load
            # what its owner wrote there since (the checks below read it now), and state_dict()
            # would hand back the caller's object (a memoryview does not pickle).
            blob = bytes(blob)
        saved, mine = d.get("keyed_by"), self._keyed_by()
        if saved is not None and not isinstance(saved, str):
            # A list or dict here failed the lookup below with "unhashable type" naming nothing.
            raise ValueError(f"the state dict's keyed_by={saved!r} is not one of "
                             f"{', '.join(self._HOW)}: the keying state_dict() saves")
        self._check_keying(blob, saved, mine)
        carry = self._parse_carry(d)
        for name in ("layer_min_size", "exclude_1d"):
            # The layer rule picks the compressed parameters, which key the residuals: under
            # another rule they may match none (FSDP2 compresses every parameter).
            if (blob is not None and not mine.startswith("fsdp") and name in d
                    and d[name] != getattr(self, name)):
                raise ValueError(f"the state dict's residuals were saved with {name}={d[name]!r}, "
                                 f"this state has {name}={getattr(self, name)!r}: it may "
                                 "compress other parameters, whose buckets' keys would match "
                                 "no saved residual, and those would start from fresh "
                                 f"residuals; make this state with {name}={d[name]!r}")
        if blob is not None and mine == "params" and self._params is not None:
            self._check_shapes(d.get("param_shapes"), _shapes(self._params))
        if self._comm is not None:
            with self._on_comm_device():
                if self.backend == "nccl":
                    torch.cuda.current_stream().synchronize()
                if blob is not None:
                    self._precheck_blob(blob, world_only=True)  # saying what to do
                    self._comm.load_state(blob)  # raises, the comm unchanged, if refused
                else:
                    self._comm.reset_state()
            self._forget_scale()  # the loaded state is in its own scale
        elif blob is not None:
            self._precheck_blob(blob)
        if self._comm is None:
            self._pending_blob = blob
            self._pending_keyed = saved if blob is not None else None
        self._pending_shapes = d.get("param_shapes") if blob is not None else None
        self.iter = it
        self._fsdp_step_keys = set()
        self._carry, self._loaded_carry = {}, carry
        self._note_loaded_keys(d)

    def _note_loaded_keys(self, d):
        """The residual keys the loaded run compressed under (a state dict from before they
        were saved, or without residuals, checks none)."""
        keys = d.get("keys") if d.get("gradcomp") is not None else None
        ok = isinstance(keys, (list, tuple)) and all(isinstance(k, int) for k in keys)
        self._loaded_keys = set(keys) if ok else None
        self._keys = set(self._loaded_keys or ())
        counts = d.get("key_counts") if d.get("gradcomp") is not None else None
        ok = isinstance(counts, (list, tuple)) and all(
            isinstance(e, (list, tuple)) and len(e) == 2 and all(isinstance(v, int) for v in e)
            for e in counts)
        self._loaded_counts = {k: n for k, n in counts} if ok else None
        self._fsdp_frozen_named = None
        self._key_counts = dict(self._loaded_counts or {})
        # A state dict from before they were saved: each key's residual taken to be in the
        # units of its first call after the load. Those builds scaled nothing, so a residual
        # was in the unit of its module's last call before the save: the first call's unit is
        # that one where the resumed run divides as the saved run did then, as most runs do.
        scales = d.get("key_scales") if d.get("gradcomp") is not None else None
        ok = isinstance(scales, (list, tuple)) and all(
            isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], int)
            and isinstance(e[1], float) and e[1] > 0 for e in scales)
        self._key_scales = {k: w for k, w in scales} if ok else {}
        if (d.get("keyed_by") in _FSDP_KEYED_BY.values() and d.get("iter") == 0
                and self._loaded_keys):
            # FSDP2's hooks count steps since 2026-12-06; a state dict saved before by a run
            # that reduced under them holds iter 0 whatever its step.
            warnings.warn("gradcomp: the state dict's iter is 0, but its run reduced "
                          f"{len(self._loaded_keys)} FSDP module(s) under FSDP2's hooks: it was "
                          "saved by a gradcomp from before those hooks counted steps, so the "
                          "step counter (state.iter, stats()['iter']) goes on from 0, not from "
                          "the saved run's step; the residuals load as saved. Set state.iter "
                          "to that step after loading to count on from it", stacklevel=3)
        if d.get("keyed_by") in _FSDP_KEYED_BY.values() and self._loaded_keys and not ok:
            # Under another division, each loaded residual would be added off by the ratio of
            # the two, once, when sent (with nothing said).
            warnings.warn("gradcomp: the state dict's FSDP residuals have no unit recorded "
                          "(key_scales, saved from gradcomp 0.7.0 on): each of its "
                          f"{len(self._loaded_keys)} residual(s) is taken to be in the unit of "
                          "its FSDP module's first call after this load, which is right where "
                          "FSDP divides the gradients there as the saved run did when it saved "
                          "(the same set_gradient_divide_factor, reduce_dtype and "
                          "set_force_sum_reduction_for_comms); otherwise what the residual "
                          "carries is added weighed by the ratio of the two divisions, once. "
                          "Run the first step after the load with the saved run's division "
                          "(a change after it is followed), or load the state dict without its "
                          "residuals, state.load_state_dict(dict(d, gradcomp=None))",
                          stacklevel=3)

    _HOW = {"params": "by parameter index (a state made with module=model)",
            "bucket": "by bucket index and shapes (a state made without a module)",
            "fsdp": "by FSDP module name (a state whose FSDP2 reduce-scatter was registered)",
            "fsdp-replicas": "by FSDP module name for the replica all-reduce (a state whose "
                             "register_fsdp_replica_all_reduce was called)"}

    def _check_keying(self, blob, saved, mine):
        """Refuses residuals keyed otherwise than this state keys them: none would match, and
        training would start from fresh residuals with the loaded ones unused."""
        how = self._HOW
        if blob is not None and saved in how and mine in how and saved != mine:
            raise ValueError(f"the state dict's residuals are keyed {how[saved]}, this state's "
                             f"{how[mine]}: none would match, and training would "
                             "start from fresh residuals; make this state as the saved one was "
                             "(GradcompState(..., module=model), set_module(model), "
                             "register_fsdp_reduce_scatter(model, state) or "
                             "register_fsdp_replica_all_reduce(model, state) before loading)")

    def _precheck_blob(self, blob, world_only=False):
        """The checks of gradcompCommLoadState that need no comm (plugin/state.cc's header):
        the magic, this rank and world size, and the method (world_only: the rank and world
        size alone, before the library's own checks, to say what to do)."""
        import struct

        blob = bytes(blob)
        why = None
        if len(blob) < 112 or blob[:4] != b"GCST":  # 112: the header
            if not world_only:
                why = f"{len(blob)} bytes that are not a gradcomp state"
        else:
            rank, nranks = struct.unpack_from("<ii", blob, 32)
            method = struct.unpack_from("<i", blob, 48)[0]
            mine = int(self.config.struct.method)
            if nranks != self.world_size:
                # A rank's residuals hold its error for every rank's block of the buffers
                # (FSDP's whole flat buffer, DDP's buckets): sized and laid out for that world.
                why = (f"saved by rank {rank} of {nranks}; this state is rank {self.rank} of "
                       f"{self.world_size}: residuals do not carry to another world size. "
                       f"Resume at {nranks} ranks, or load the state dict without them, "
                       "state.load_state_dict(dict(d, gradcomp=None)) (the step counter goes "
                       "on, the residuals start fresh)")
            elif rank != self.rank:
                why = (f"saved by rank {rank} of {nranks}; this state is rank {self.rank} of "
                       f"{self.world_size}: load on each rank the state dict that rank saved "
                       "(torch.distributed.checkpoint keeps one rank's copy of a value saved "
                       "under one key on every rank: give each rank's state dict a key of its "
                       "own, f\"gradcomp.rank{rank}\")")
            elif method != mine and not world_only:
                names = {v: k for k, v in T.CHOICES["method"].items()}
                why = (f"saved with method={names.get(method, method)!r}; this state has "
                       f"method={names.get(mine, mine)!r}")
        if why is not None:
            raise InvalidArgumentError(f"state blob refused, this state is unchanged: {why}", 1)

    def set_module(self, module):
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"set_module takes the model (a torch.nn.Module); got "
                            f"{type(module).__name__}")
        # Residuals waiting to be loaded, keyed by bucket (a state made without a module) or by
        # FSDP module name, would match no parameter-keyed bucket: refused, this state unchanged,
        # as load_state_dict refuses them.
        self._check_keying(self._pending_blob, self._pending_keyed, "params")
        named = list(module.named_parameters())
        if self._pending_blob is not None:
            self._check_shapes(self._pending_shapes, _shapes(named))
        self._needs_module = False
        self._param_ids = {id(p): i for i, (_, p) in enumerate(named)}
        self._param_names = {id(p): n for n, p in named}
        self._params = named
        self._plans.clear()

    def _blob(self):
        if self._comm is None:
            return self._pending_blob
        with self._on_comm_device():
            # The comm waits for its last eager call; a replayed CUDA graph's calls are the
            # stream's to wait for (as before a load).
            if self.backend == "nccl":
                torch.cuda.current_stream().synchronize()
            return self._comm.save_state()

    def _on_comm_device(self):
        """The comm's CUDA device made current around gradcomp's calls outside the hook (state
        save, load and reset, destroy): they wait for the comm's last call on a stream of the
        comm's own, and a load allocates the restored states on the current device; the
        caller's thread may have another device current (DDP(device_ids=[k]) without
        torch.cuda.set_device(k))."""
        if self.backend != "nccl" or self._device is None:
            return contextlib.nullcontext()
        return torch.cuda.device(self._device)

    # ------------------------------------------------------------------ stats
    def stats(self):
        """gradcomp's counters (bytes_on_wire, calls_compressed, ...) and the hook's own:
        compressed_calls / compressed_dense_bytes (calls gradcomp compressed, their dense
        bytes), passed_calls / passed_dense_bytes (calls handed to gradcomp that it sent
        uncompressed: GRADCOMP_AUTO, min_elements; warned once),
        full_precision_bytes (dense bytes sent by the uncompressed allreduce), the names of
        the parameters kept in full precision and of the compressed ones, and per bucket
        seen at a compressed step its [compressed, full-precision] element counts (what one
        step sends follows from them and docs/algorithms.md)."""
        out = dict(self.counters)
        out["iter"] = self.iter
        out["gradcomp"] = self._comm.stats() if self._comm is not None else None
        out["full_precision_params"] = sorted(self.full_precision_params)
        out["compressed_params"] = sorted(self.compressed_params)
        out["buckets"] = [[p["comp_n"], p["full_n"]] for p in self._plans.values()]
        return out

    @contextlib.contextmanager
    def paused(self):
        """Inside, the hook (and the FSDP2 reduce-scatter or replica all-reduce) sends
        uncompressed and leaves the state and step counter alone (e.g. a throw-away step that
        lets a resumed DDP rebuild its buckets). Enter it on every rank of the group for the
        same steps: a rank inside while its peers compress would send other calls than they
        (the hooks compare it before each call with backend="cpu" and under
        GRADCOMP_CHECK_CALLS: _agree_call)."""
        old, self._paused = self._paused, True
        try:
            yield self
        finally:
            self._paused = old

    def close(self):
        """Destroys gradcomp's comm and its NCCL communicator if any (all ranks, after the
        last step; may wait for the peers: after a failure, abort() instead). A no-op after
        abort() and on a closed state.

        The residuals (error feedback, DGC velocity) go with the comm, so take the final
        checkpoint's state_dict() BEFORE close(). The state is finished afterwards, like an
        aborted one: a hook or FSDP reduce-scatter call, state_dict() and load_state_dict()
        raise RuntimeError saying so (rather than a checkpoint without residuals, or a hook
        silently starting over from a fresh comm); stats() still reads the hook's counters."""
        self._closed = True
        self._pending_blob = None
        self._carry, self._loaded_carry = {}, {}
        self._drop_comm()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # close() may wait for the peers; leaving on an exception (a peer may be gone, this
        # rank may stop making the calls the others wait on), abort(), which waits on none.
        if exc_type is None:
            self.close()
            return
        try:
            self.abort()
        except Exception as e:  # noqa: BLE001 - the exception leaving the block is the one to see
            warnings.warn(f"GradcompState.abort() while leaving on {exc_type.__name__} failed: "
                          f"{e}", RuntimeWarning)

    def __del__(self):
        # Dropped without close() or abort(): ResourceWarning, as for an unclosed file. A
        # backend="cpu" state's comm is freed by Comm's own finalizer (its destroy waits on no
        # peer); an NCCL state's comm and communicator are left allocated, since their destroy
        # may wait on peers (and at interpreter exit on a CUDA already torn down).
        comm = getattr(self, "_comm", None)
        if comm is None:
            return
        # One warning, naming the state: its comm's finalizer says nothing more.
        comm._owner_warned = True
        try:
            nccl = getattr(self, "backend", None) == "nccl"
            warnings.warn(f"unclosed GradcompState (rank {self.rank} of {self.world_size}, "
                          f"backend={self.backend!r}): close() it after the last step, or "
                          "abort() after a failure" + ("; its NCCL communicator is not freed "
                                                       "when dropped" if nccl else ""),
                          ResourceWarning, source=self)
        except Exception:  # noqa: BLE001
            # Swallowed only at interpreter exit (the warnings machinery may be gone); else
            # re-raised, which Python reports as "Exception ignored in ... __del__" (pytest fails
            # on it under -W error), as for a file.
            if sys is not None and not sys.is_finalizing():
                raise

    def _drop_comm(self):
        """Closes and forgets gradcomp's comm and its NCCL communicator, if any."""
        if self._comm is None:
            return
        comm, handle = self._comm, self._nccl_handle
        with self._on_comm_device():
            # A close refused (a call in progress on another thread) raises with the comm
            # kept, so that abort() can still reach it and its NCCL communicator.
            comm.close()
            self._comm, self._nccl_handle = None, None
            _nccl.destroy_nccl(handle)

    def abort(self):
        """What to call instead of close() when a peer died, after PyTorch's own abort
        (dist.destroy_process_group, or before torchelastic restarts the worker): aborts
        gradcomp's NCCL communicator (ncclCommAbort, so its kernels stop) and, in the same NCCL
        group, gradcomp's own sub-communicators (Comm.stop), then frees gradcomp's comm
        (Comm.abort, docs/reliability.md), waiting on no peer and no stream. The state is
        unusable afterwards: a hook call, state_dict() or load_state_dict() raises, saying to
        make a new GradcompState. Before the first compressed call there is nothing to abort;
        a second abort() and close() are no-ops."""
        if self._aborted:
            return
        self._aborted = True
        self._carry, self._loaded_carry = {}, {}
        comm, handle = self._comm, self._nccl_handle
        self._comm, self._nccl_handle, self._pending_blob = None, None, None
        # gradcomp's sub-communicators (a hierarchical comm) are aborted in NCCL's group.
        stop = comm.stop if comm is not None and has("gradcompCommStop") else None
        try:
            _nccl.abort_nccl(handle, inside=stop)
        finally:  # gradcomp's comm goes whatever NCCL said
            if comm is not None:
                comm.abort()

    def _note_bucket(self, bucket, last):
        """One DDP model per state. Two models sharing one state (without module=) would key
        their buckets alike and take each other's residuals, and count two steps per step,
        silently: a bucket index seen twice in one step (the models' backward passes
        interleaved), or after the first step a bucket of parameters that step did not hold
        (one model's step after the other's), raises."""
        self._check_usable()  # a closed or aborted state says so first
        idx = bucket.index()
        if idx in self._step_buckets:
            raise ValueError(f"gradcomp_hook saw bucket {idx} twice in one step: two DDP models "
                             "share this GradcompState. Make one GradcompState per model (their "
                             "residuals and step counters are per model)")
        ids = [id(p) for p in bucket.parameters()]
        if self._param_ids is not None:
            # The model is known (module=, set_module): its parameters, frozen ones included,
            # may come in a later DDP of it (unfrozen, wrapped again); another model's may not.
            if any(i not in self._param_ids for i in ids):
                raise ValueError("gradcomp_hook got a bucket of parameters that are not in the "
                                 "module given to this GradcompState: two DDP models share this "
                                 "state, or module= is not the model DDP wraps. Make one "
                                 "GradcompState per model, with module=<the model DDP wraps>")
        elif self._model_seen:
            if any(i not in self._model_params for i in ids):
                raise ValueError("gradcomp_hook got a bucket of parameters this GradcompState's "
                                 "model does not have: two DDP models share this state, or its "
                                 "model was wrapped again with parameters unfrozen (a state "
                                 "without module= knows only the parameters of its first "
                                 "step). Make one GradcompState per model, with module=<the "
                                 "model DDP wraps> to follow its parameters through a new DDP")
        else:
            self._model_params.update(ids)
        if last:
            self._step_buckets.clear()
            self._model_seen = True
        else:
            self._step_buckets.add(idx)

    def _serve_fsdp(self, role="shard"):
        """Marks the state as FSDP2's (GradcompReduceScatter: role "shard";
        GradcompReplicaAllReduce: "replicate"): gradcomp then compresses, and with DGC's
        momentum correction applies its velocity to, every parameter."""
        self._check_usable()  # an aborted or closed state says so first
        cfg = self.config
        if self._fsdp_role not in (None, role):
            # The two collectives run over different groups (a rank's shard group and its
            # replicate group): one comm cannot serve both.
            raise ValueError(
                "this GradcompState already serves FSDP2's "
                + ("reduce-scatter (over the shard group); the replica all-reduce runs"
                   if self._fsdp_role == "shard" else
                   "replica all-reduce (over the replicate group); the reduce-scatter runs")
                + " over the other group of the mesh: make one GradcompState per process group "
                "(GradcompState(process_group=mesh['replicate'].get_group()) for "
                "register_fsdp_replica_all_reduce, process_group=mesh['shard'].get_group() for "
                "register_fsdp_reduce_scatter), or leave the intra-node reduce-scatter FSDP's own")
        if self._split_given and cfg.method == "dgc" and cfg.momentum_correction:
            raise ValueError(
                "state.param_groups() was called before this state's FSDP reduce-scatter was "
                "made: it gave the small and 1-d parameters the optimizer's momentum, but FSDP2's "
                "reduce-scatter sends every parameter through gradcomp, which applies DGC's "
                "momentum to all of them (momentum twice). Call register_fsdp_reduce_scatter("
                "model, state) first (register_fsdp_replica_all_reduce likewise), then build "
                "the optimizer from state.param_groups(...)")
        if self._ddp_options:
            given = ", ".join(f"{n}={v!r}" for n, v in self._ddp_options.items())
            raise ValueError(
                f"this GradcompState was made with {given}, which only the DDP hook applies: "
                "FSDP2's " + ("reduce-scatter" if role == "shard" else "replica all-reduce")
                + " compresses every parameter (FSDP's whole flat buffer) from the first call "
                "and would ignore it. Make the state without layer_min_size, start_iter and "
                "exclude_1d; for uncompressed steps, run them inside `with state.paused():`")
        mine = _FSDP_KEYED_BY[role]
        if self._pending_blob is not None and self._pending_keyed not in (None, mine):
            self._check_keying(self._pending_blob, self._pending_keyed, mine)
        self._fsdp_role = role

    def _agree_options(self, device):
        """The DDP hook's options and step counter on every rank, at its first call outside
        paused() (one small all_gather of the group, once per state): they decide which
        parameters each call compresses and from which step, so a rank that differs (a
        keyword, or a state dict loaded on some ranks only) would make other calls than its
        peers, which wait for it (a hang) or sum unrelated bytes. gradcomp's own settings are
        compared by the comm's set-up (gradcompCommCreate). Every rank raises the same
        ValueError, naming the rank, the option and both values."""
        mine = [self.layer_min_size, int(self.exclude_1d), self.start_iter, self.iter]
        on = device if self.backend == "nccl" else "cpu"
        t = torch.tensor(mine, dtype=torch.int64, device=on)
        got = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(got, t, group=self.process_group)
        rows = [g.tolist() for g in got]
        names = ("layer_min_size", "exclude_1d", "start_iter", "iter")
        shown = (int, bool, int, int)
        for r, row in enumerate(rows):
            for name, kind, v, v0 in zip(names, shown, row, rows[0]):
                if v != v0:
                    what = " (the step counter, which load_state_dict restores)" * (name == "iter")
                    raise ValueError(
                        f"gradcomp: rank {r} of the state's group has {name}={kind(v)!r} while "
                        f"rank 0 has {kind(v0)!r}{what}: the ranks would send different calls "
                        "(a hang or wrong sums). Make every rank's GradcompState with the same "
                        "layer_min_size, exclude_1d and start_iter, and load the same state "
                        "dict on every rank (or on none)")
        self._options_agreed = True

    def _agree_call(self, device, what, params=()):
        """Before each call of the DDP hook (what: "bucket <i>", params: its parameters) or of
        FSDP2's hooks (params: none), where the comm already synchronizes the ranks at every
        call (backend "cpu": gradcomp's calls are blocking exchanges) or GRADCOMP_CHECK_CALLS
        asks for it (NCCL: a small all_gather and a host sync per call, for debugging): the ranks
        agree on what decides the call's collectives and its result, which each rank knows of
        itself only. A rank inside paused() while its peers compress (torch's collective against
        gradcomp's exchange: a collective mismatch, which gloo answers by aborting the process,
        or a hang), a step counter moved on some ranks only (load_state_dict on some ranks; DDP
        and FSDP2 alike), or a compressed parameter frozen on some ranks only (the hook zeroes a
        frozen parameter's slice, where DDP averages the gradient of a parameter any rank used:
        the ranks' gradients would differ, silently). Every rank raises the same RuntimeError,
        naming the ranks."""
        frozen = [int(not p.requires_grad and self.is_compressed(p)) for p in params]
        on = device if self.backend == "nccl" else "cpu"
        t = torch.tensor([int(self._paused), self.iter] + frozen, dtype=torch.int64, device=on)
        got = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(got, t, group=self.process_group)
        rows = [g.tolist() for g in got]

        def split(col):
            on_ = [r for r, row in enumerate(rows) if row[col]]
            return on_, [r for r in range(self.world_size) if r not in on_]

        paused, going = split(0)
        if paused and going:
            raise RuntimeError(
                f"gradcomp: rank(s) {paused} of the state's group are inside state.paused() and "
                f"rank(s) {going} are not: those inside would send {what} uncompressed and the "
                "others compressed, or at another step (a hang or wrong sums). Enter `with "
                "state.paused():` on every rank for the same steps, or on none")
        iters = [row[1] for row in rows]
        # Until the DDP hook's first call outside paused(), _agree_options compares the step
        # counter with the options, naming the option. FSDP2's hooks have no such call (no
        # options): from their first call, before it counts its step (_count_fsdp_step), so that
        # a state dict loaded on some ranks only is named here, before any exchange of the call,
        # not as gradcomp's step mismatch inside it.
        if (self._options_agreed or self._fsdp_role is not None) and len(set(iters)) > 1:
            raise RuntimeError(
                f"gradcomp: the ranks of the state's group are at different steps (state.iter by "
                f"rank: {iters}): a state dict loaded (load_state_dict) or a step run inside "
                "paused() on some ranks only; the ranks would compress different steps (a hang "
                "or wrong sums). Load the same checkpoint's state dicts on every rank, and "
                "enter paused() on every rank alike")
        for i, p in enumerate(params):
            off, on_ = split(2 + i)
            if off and on_:
                raise RuntimeError(
                    f"gradcomp: parameter {self._name(p, i)!r} ({what}) requires no gradient on "
                    f"rank(s) {off} of the state's group and requires one on rank(s) {on_}: DDP "
                    "averages the gradient of a parameter that any rank used, while the hook "
                    "gives a frozen one none, so the ranks' gradients would differ. Set "
                    "requires_grad alike on every rank (freeze it on all of them, or on none)")

    def _agrees_calls(self):
        """Whether the hooks run _agree_call before each call."""
        return self.backend == "cpu" or bool(self.config.check_calls)

    def _check_ddp_group(self, device, ddp=None):
        """At a DDP's first hook call: the DDP module this state is registered on must reduce
        over the state's ranks, or every call (compressed or not) would average over other
        ranks than DDP's, silently (a state made over the world, DDP over a subgroup). Every
        rank of the DDP's group reaches that DDP's first hook call (DDP calls the hook on all of
        them), so each rank's finding is gathered there (one all_gather over the DDP's group):
        they raise alike, and none waits in a collective of the state's group for a rank that
        refused. A refused state is checked again at its next call (every rank of the group
        refused it): registered again on a new DDP of the model, it must not go on unchecked.

        ddp: the calling DDP, for a hook registered by register_ddp_hook (its group recorded
        there): checked once per DDP, so a state registered on a second DDP (the model wrapped
        again, another group) is checked again at that DDP's first call. Without it (the hook
        registered by register_comm_hook, which tells the hook no DDP), the DDP is looked for
        once per state (_registering_ddp), and its settings kept (_ddp_opts): not again once it
        is gone (the model wrapped again), since when a process frees it is each process's own
        (a reference cycle goes at its collector's next run), and a search made on some ranks
        only would meet the others' next collective; where none is found, nothing is checked,
        and the state warns once that it could not check."""
        if ddp is None:
            found = _registering_ddp(self)
            if found is None:
                self._ddp_group_checked = True
                # A hook of the user's own that calls gradcomp_hook with a state it holds, while
                # DDP was given another state (or None), averaged over the state's ranks without
                # a word where DDP reduces over others.
                self._warn_once("no-ddp", "gradcomp_hook found no DDP module that has this "
                                "GradcompState as its comm hook's state (a hook of your own "
                                "registered with another state, or None, that calls "
                                "gradcomp_hook with this one; or gc.freeze() before the first "
                                "step, which hides the DDP): it cannot check that the DDP "
                                f"reduces over the state's {self.world_size} ranks, and a DDP "
                                "over other ranks would be averaged over the state's, silently. "
                                "Register with gct.register_ddp_hook(model, state, wrap=...) "
                                "(wrap: torch's hook wrappers, or a function of your own around "
                                "the hook), or give DDP this GradcompState as the hook's state: "
                                "ddp.register_comm_hook(state, hook) (warned once)")
                return
            self._found_ddp = weakref.ref(found)
            self._found_opts = _ddp_opts(found)
            self._found_join = _in_join(found)
            if self._found_join_hook is not None:
                self._found_join_hook.remove()
            # Read again at each of its forwards, which every rank makes alike while it is in
            # use; not at the hook's calls, which a DDP made since (the model wrapped again)
            # makes too: there a rank where the found one waits for the collector would read a
            # Join entered after its last forward, which a rank where it is gone cannot.
            self._found_join_hook = found.register_forward_pre_hook(_FoundJoinNote(self))
            group = found.process_group
        else:
            group = self._ddps.get(ddp, ddp.process_group)
        theirs = dist.get_process_group_ranks(group)
        mine = dist.get_process_group_ranks(self.process_group)
        on = device if self.backend == "nccl" else "cpu"
        t = torch.tensor([int(theirs != mine)], dtype=torch.int32, device=on)
        got = [torch.empty_like(t) for _ in theirs]
        dist.all_gather(got, t, group=group)
        bad = [r for r, g in zip(theirs, got) if int(g.item())]
        if not bad:
            if ddp is None:
                self._ddp_group_checked = True
            else:
                self._ddps_checked.add(ddp)
            return
        do = ("make every rank's GradcompState with process_group=<the group given to "
              "DistributedDataParallel>")
        if theirs != mine:
            raise ValueError(f"gradcomp: the DDP module this GradcompState is registered on "
                             f"reduces over ranks {theirs}, but the state over ranks {mine}: its "
                             f"hook would average over the state's ranks; {do}")
        raise ValueError(f"gradcomp: rank(s) {bad} of the DDP module's group (ranks {theirs}) "
                         "registered a GradcompState made over other ranks (their error names "
                         f"them), so every rank of the group stops here; {do}")

    def _check_usable(self):
        if self._aborted:
            raise RuntimeError(_ABORTED)
        if self._closed:
            raise RuntimeError(_CLOSED)

    # --------------------------------------------------------------- internal
    def _count_call(self, comm, before, dense_bytes, what, count):
        """Counts a call handed to gradcomp as compressed or passed through, from gradcomp's
        counters before (comm.call_counts()) and after it; warns once per reason when gradcomp
        sent it uncompressed, so that no run is silently uncompressed."""
        after = comm.call_counts()
        if after[0] > before[0]:
            self.counters["compressed_calls"] += 1
            self.counters["compressed_dense_bytes"] += dense_bytes
            return
        self.counters["passed_calls"] += 1
        self.counters["passed_dense_bytes"] += dense_bytes
        if self.config.method == "none":
            why = ("the state's method is 'none' (method='none', or GRADCOMP_METHOD=none in the "
                   "environment, which GradcompState reads when no method is given): make the "
                   "state with method='qsgd', 'dgc', 'topk' or 'randk' to compress", "none")
        elif after[2] > before[2]:
            # backend="cpu" has no NCCL: its auto timed gradcomp's own uncompressed exchange.
            plain = "the uncompressed TCP exchange" if self.backend == "cpu" else "NCCL"
            why = (f"GRADCOMP_AUTO timed {plain} faster than compression for calls of this size "
                   "on this link (auto_tune=0 compresses every call; GRADCOMP_DEBUG=INFO shows "
                   "the timings)", "auto")
        elif count < self.config.min_elements:
            why = (f"fewer than min_elements={self.config.min_elements} elements are not worth "
                   "compressing", "min")
        else:
            why = ("gradcomp compresses only between two or more ranks", "one rank")
        extra = (" gradcomp still applies its DGC momentum to it."
                 if self.config.method == "dgc" and self.config.momentum_correction else "")
        self._warn_once(("passed", why[1]), f"gradcomp sent {what} ({count} elements) "
                        f"uncompressed: {why[0]}.{extra} state.stats() counts such calls in "
                        "passed_calls (warned once)")

    def _unloaded_key(self, key):
        """Records a compressed call's residual key (state_dict saves them); True when a loaded
        state dict's run never compressed under it: its residual starts fresh, and the loaded
        ones wait unused. The DDP hook and FSDP2's hooks alike. A state dict that saved no keys
        checks none: one from before they were saved, or one saved by a run that loaded such a
        state dict and made no compressed call since (its residuals, those loaded, saved again
        under no key)."""
        unloaded = bool(self._loaded_keys) and key not in self._loaded_keys
        self._keys.add(key)
        return unloaded

    def _check_key(self, bucket, key):
        """_unloaded_key for the DDP hook: warns (once) when the bucket's compressed parameters
        are grouped otherwise than in the loaded state dict's run."""
        if self._unloaded_key(key):
            self._warn_once("unloaded-key", f"bucket {bucket.index()}'s compressed parameters "
                            "are grouped otherwise than in the run whose state was loaded: its "
                            "residual starts fresh and the loaded ones of those parameters wait "
                            "unused. DDP regroups its buckets after its first step (with "
                            "static_graph=True after its second): run those steps inside "
                            "`with state.paused():`, and keep bucket_cap_mb as it was (warned "
                            "once)")

    def _check_fsdp_key(self, name, key, count):
        """_unloaded_key for FSDP2's hooks (residuals keyed by FSDP module name): warns (once)
        when the loaded state dict's run never reduced under the module's key, and (once per
        module) when it reduced only other element counts under it (count: this call's): the
        module's parameters changed shape since, so its saved residual lies unused while this
        one starts fresh, or its layout varies with the parameters that get a gradient."""
        saved = (self._loaded_counts or {}).get(key)
        if saved is not None and saved != count:
            self._warn_once(("fsdp-size", key), f"FSDP module {name!r} reduces {count} "
                            f"elements, but the run whose state was loaded reduced {saved} under "
                            "its name: its saved residual lies unused and this one starts fresh. "
                            "If the module's parameters changed shape since that checkpoint, load "
                            "the state dict into the model it was saved with, or do not load it; "
                            "if some of its parameters get no gradient on some steps, call "
                            "set_reduce_scatter_unused_params(True) on it (warned once)")
        self._key_counts[key] = count
        if self._unloaded_key(key):
            self._warn_once("unloaded-key", f"FSDP module {name!r} has no residual in the run "
                            "whose state was loaded: its residual starts fresh, and the loaded "
                            "residuals of modules named otherwise there wait unused. The keys "
                            "are the module names in the model registered, and the module's "
                            "frozen parameters (requires_grad=False) if any: register on the "
                            "same model as the saved run (not, in one of the two, on a wrapper "
                            "such as torch.compile's, whose names start with '_orig_mod.'), "
                            "with the same parameters frozen (warned once)")

    def _fsdp_unit_factor(self, key, weight, scalable=True):
        """The factor FSDP2's hooks multiply a call's input under residual key `key` by, and
        divide its output by (1 but where FSDP's division changed): weight, the weight of one
        unit of this call's input in the gradient FSDP leaves, over the weight the key's
        residual (and DGC's velocity) was made in. The residual holds what earlier steps did
        not send in that unit; a divide factor changed since (set_gradient_divide_factor, an
        Avg become a pre-multiplied Sum, FSDP's post-division) would otherwise add it to the
        gradient weighed by the new factor instead of the one it was divided by.
        scalable False (an fp16 input: FSDP divides it before the call so that the sum does not
        overflow, which a multiply by the factor would undo): the key takes the new unit
        instead, its carried residual weighed by the new factor for one step (warned once)."""
        unit = weight / self._key_scales.setdefault(key, weight)
        if unit != 1.0 and not scalable:
            self._key_scales[key] = weight
            self._warn_once("fsdp-unit-fp16", "FSDP's gradient division changed between steps "
                            "under an fp16 reduce: gradcomp does not scale fp16 gradients into "
                            "the residual's unit (the multiply could overflow what FSDP divided "
                            f"to keep finite), so what earlier steps left is weighed by the new "
                            f"division (x{unit:g}) at the next step, once (warned once)")
            return 1.0
        return unit

    def _count_fsdp_step(self, key):
        """The step counter under FSDP2's hooks, as the DDP hook's (iter: steps whose calls went
        through the state, compressed or not; paused ones not; saved in state_dict): FSDP
        reduces each module once per step, so the first call of a step, a call under a key the
        step in progress already reduced, advances it. A step whose modules all differ from the
        previous step's (none of them reduced in both) counts with that one."""
        if not self._fsdp_step_keys or key in self._fsdp_step_keys:
            self.iter += 1
            self._fsdp_step_keys = set()
        self._fsdp_step_keys.add(key)

    def _warn_once(self, what, msg):
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(f"gradcomp: {msg}", stacklevel=3)

    def _make_comm(self, device):
        """(Comm, ncclComm address or None): gradcomp's own communicator (a collective)."""
        if self.backend == "cpu":
            return _group.make_socket_comm(self.process_group, self.config), None
        return _nccl.make_comm(self.process_group, device, self.config)

    def comm(self, device):
        self._check_usable()
        if (self._comm is not None and self.backend == "nccl" and self._device is not None
                and torch.device(device) != torch.device(self._device)):
            raise ValueError(f"this GradcompState's comm is on {self._device}, but a call came "
                             f"with tensors on {device}: make one GradcompState per device (a "
                             "process drives one GPU per state)")
        if self._comm is None:
            comm, handle = self._make_comm(device)
            self._comm, self._nccl_handle, self._device = comm, handle, device
            refused = None
            if self._pending_blob is not None:
                # On the comm's device, as load_state_dict's: the restored states are
                # allocated on the current device (FSDP's final callback may call from a
                # thread with another device current).
                try:
                    self._precheck_blob(self._pending_blob, world_only=True)  # what to do
                    with self._on_comm_device():
                        self._comm.load_state(self._pending_blob)
                except Exception as e:  # noqa: BLE001 - raised below, on every rank
                    refused = e
            # Every rank learns whether one refused its saved state, and how many loaded one
            # (one small allreduce of the group, as the comm's creation, at this first
            # compressed call only): a rank that raised alone would leave its peers waiting in
            # gradcomp's collective, and a rank that loaded while its peers did not runs the
            # load's check of the next call alone (on NCCL its peers never join it: a hang).
            with self._on_comm_device():
                refusals, loads = self._count_ranks(refused is not None,
                                                    self._pending_blob is not None, device=device)
            if refusals or 0 < loads < self.world_size:
                # Refused: the comm is not kept, so every later call raises the same
                # (not a step on fresh residuals with the loaded ones dropped).
                self._drop_comm()
                if refused is not None:
                    raise refused
                if refusals:
                    raise RuntimeError("another rank's gradcomp refused its saved state (its "
                                       "error says why): every rank stops here; load state "
                                       "dicts that gradcomp accepts on every rank")
                raise RuntimeError(f"gradcomp: {loads} of the group's {self.world_size} ranks "
                                   "loaded a state dict with residuals (load_state_dict) and "
                                   "the others did not: every rank stops here; load each "
                                   "rank's own state dict on every rank, or on none")
            self._pending_blob = None
            self._forget_scale()
        return self._comm

    def _forget_scale(self):
        """A new comm, or a loaded state: the scaler's scale is read and set again at the next
        compressed call."""
        # The scaler's scale tensor and its version at the last read: a read happens again only
        # after the scaler changed it in place (update()), so one per step, not per bucket.
        self._scale_mark = None
        self._scale_followed = False  # a scale set on the comm since it was made or loaded

    def _follow_scaler(self, comm, stream_handle):
        """Before a compressed call: the comm's scale set to grad_scaler's when the scaler may
        have changed it since the last read (gradcompCommSetGradScale rescales the state on the
        call's stream)."""
        sc = self.grad_scaler
        if sc is None:
            return
        t = getattr(sc, "_scale", None)
        mark = (id(t), t._version) if isinstance(t, torch.Tensor) else None
        if mark is not None and mark == self._scale_mark:
            return
        scale = float(sc.get_scale())
        if (not self._scale_followed and scale != 1.0 and comm.grad_scale == 1.0
                and comm.stats()["steps"] > 0):
            # A state from calls that recorded no scale: a checkpoint saved without grad_scaler
            # (or by gradcomp before 0.6), or steps run before the scaler was given.
            self._warn_once("scale-unrecorded", "the residuals this state holds record no loss "
                            f"scale, so they are taken as unscaled and multiplied by the "
                            f"GradScaler's {scale} now; if the run that made them handed gradcomp "
                            "scaled gradients (fp16 with a GradScaler), they were in its units "
                            "already and are now too large: give that run grad_scaler too, or "
                            "start from fresh residuals (warned once)")
        try:
            comm.set_grad_scale(scale, stream_handle)
        except ValueError as e:
            raise ValueError(f"gradcomp: the GradScaler's scale {scale} cannot be followed: {e}. "
                             "Keep the scaler's scale within 2^-60..2^60") from e
        self._scale_mark = mark
        self._scale_followed = True

    def _count_ranks(self, *flags, device):
        """How many ranks of the group set each flag (a collective: every rank calls it)."""
        on = device if self.backend == "nccl" else "cpu"
        counts = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=on)
        dist.all_reduce(counts, group=self.process_group)
        return [int(c) for c in counts.tolist()]

    def _name(self, p, i):
        if self._param_names is not None and id(p) in self._param_names:
            return self._param_names[id(p)]
        return f"bucket parameter {i} {tuple(p.shape)}"

    def is_compressed(self, p):
        """True when the hook compresses parameter p: dim() > 1 (unless exclude_1d=False) and
        at least layer_min_size elements; the others go through torch's allreduce."""
        return not (p.numel() < self.layer_min_size or (self.exclude_1d and p.dim() <= 1))

    def param_groups(self, params, weight_decay=None):
        """Optimizer parameter groups that fit the method: with DGC's momentum correction
        (method="dgc", momentum_correction=1, the default) gradcomp applies the momentum
        u = m*u + g itself, before selection, to every parameter it compresses (DGC's rule:
        accumulate the velocity, not the gradient), so the optimizer must apply none to them
        and momentum m to the full-precision rest:

            opt = torch.optim.SGD(state.param_groups(model.parameters()), lr=0.1)

        gives the compressed parameters a group with momentum 0 and the others one with
        momentum m (GRADCOMP_MOMENTUM, the state's momentum setting), so one setting
        rules both. Other methods: one group of all parameters, the optimizer's own momentum
        (pass it to the optimizer as usual). Empty groups are left out. The start_iter steps
        before compression (2 by default) update the compressed parameters without momentum;
        a bucket whose compressed parameters DDP regroups in another order gets a new key and
        so a fresh velocity (the default start_iter compresses only rebuilt buckets).

        Weight decay: pass weight_decay=wd here instead of to the optimizer. With
        gradcomp.torch.DGCSGD the compressed group's decay gets its own momentum buffer
        w = m*w + wd*p, so the run is momentum SGD with decay exactly (the compressed group
        is marked for it: keys "gradcomp_velocity" = m and "gradcomp_weight_decay" = wd).
        torch.optim.SGD cannot keep that buffer: its decay on the momentum-0 group would act
        outside any momentum, about (1 - m) of momentum SGD's, so the group's weight_decay is
        wd / (1 - m), momentum SGD's steady-state decay for a slowly changing p. These groups
        are for momentum SGD: Adam-family optimizers apply their own first moment on top of
        gradcomp's velocity (use momentum_correction=0 with them).

        FSDP2 (a state with a GradcompReduceScatter, register_fsdp_reduce_scatter): the
        reduce-scatter hands FSDP's whole flat gradient buffer to gradcomp, biases and norms
        included, so gradcomp applies the velocity to every parameter, and every parameter
        goes in the momentum-0 group (each parameter gets momentum exactly once). Register
        the reduce-scatter before calling param_groups(): a state that already gave a DGC
        split refuses to serve FSDP (ValueError)."""
        params = list(params)
        cfg = self.config
        wd = {} if weight_decay is None else {"weight_decay": float(weight_decay)}
        if not (cfg.method == "dgc" and cfg.momentum_correction):
            return [dict({"params": params}, **wd)]
        comp, full = [], []
        for p in params:
            (comp if self._fsdp_role is not None or self.is_compressed(p) else full).append(p)
        if full:
            self._split_given = True
        m = float(cfg.momentum)
        comp_wd = {} if weight_decay is None else {
            "weight_decay": float(weight_decay) / (1.0 - m) if m < 1.0 else float(weight_decay)}
        exact = {"gradcomp_velocity": m,
                 "gradcomp_weight_decay": 0.0 if weight_decay is None else float(weight_decay)}
        groups = [dict({"params": full, "momentum": m}, **wd),
                  dict({"params": comp, "momentum": 0.0}, **comp_wd, **exact)]
        return [g for g in groups if g["params"]]

    def _plan(self, bucket):
        if self._needs_module and self._param_ids is None:
            raise RuntimeError("this GradcompState was restored (unpickled) from a state keyed by "
                               "parameter index: call state.set_module(model) before training, "
                               "or its saved residuals would match no bucket")
        # An unpickled state keyed otherwise (an FSDP2 state's residuals) matches no bucket.
        self._check_keying(self._pending_blob, self._pending_keyed, self._keyed_by())
        params = bucket.parameters()
        sig = tuple(id(p) for p in params)
        plan = self._plans.get(sig)
        if plan is not None:
            return plan
        comp, full, off = [], [], 0
        for i, p in enumerate(params):
            # DDP's bucket holds a complex parameter's gradient as its real view
            # (torch.view_as_real): two elements per complex one.
            n = p.numel() * (2 if p.is_complex() else 1)
            (comp if self.is_compressed(p) else full).append((off, n, p, i))
            off += n
        if self._param_ids is not None:
            missing = [i for _, _, p, i in comp if id(p) not in self._param_ids]
            if missing:
                raise ValueError("the bucket holds parameters that are not in the module given "
                                 "to GradcompState: pass the model DDP wraps (module=model)")
            ids = ("params",) + tuple(self._param_ids[id(p)] for _, _, p, _ in comp)
        else:
            ids = ("bucket", bucket.index()) + tuple(tuple(p.shape) for _, _, p, _ in comp)

        def runs(items):  # adjacent slices merged: fewer copies
            out = []
            for o, n, _, _ in items:
                if out and out[-1][0] + out[-1][1] == o:
                    out[-1][1] += n
                else:
                    out.append([o, n])
            return [tuple(r) for r in out]

        plan = {"comp": runs(comp), "full": runs(full), "key": _key_of(ids),
                "comp_n": sum(n for _, n, _, _ in comp), "full_n": sum(n for _, n, _, _ in full),
                "total": off, "comp_params": [(o, n, p) for o, n, p, _ in comp]}
        for _, _, p, i in comp:
            self.compressed_params.add(self._name(p, i))
        for _, _, p, i in full:
            self.full_precision_params.add(self._name(p, i))
        self._plans[sig] = plan
        return plan


def _gather(buf, runs, n):
    if len(runs) == 1 and runs[0][1] == n:
        o, _ = runs[0]
        return buf[o:o + n].clone()
    return torch.cat([buf[o:o + k] for o, k in runs])


def _scatter(src, buf, runs):
    at = 0
    for o, k in runs:
        buf[o:o + k].copy_(src[at:at + k])
        at += k


def _zero_frozen(buf, frozen):
    """Zeroes the frozen parameters' slices of a compressed result: their error feedback (and
    DGC's velocity) still sends what it holds, which plain DDP's zero-filled slice does not
    have; under gradient_as_bucket_view=True the slice is the parameter's .grad, so a frozen
    parameter would get a gradient (and an optimizer step) after it was frozen."""
    for o, n in frozen:
        buf[o:o + n].zero_()


def _allreduce_avg(buf, state):
    """torch.distributed's own allreduce of the mean, as DDP without a hook computes it by
    default: each gradient multiplied by 1/N (its reducer's mul_out as it copies into the
    bucket), then the sum (x / N rounds otherwise than x * (1/N) where N is not a power of two).
    Not bit for bit DDP's own under gradient_as_bucket_view=True where a gradient is still its
    bucket's view when the backward accumulates into it (zero_grad(set_to_none=False), or no
    zero_grad between steps, from the second step on): DDP's reducer divides that one in place
    (x / N), which a hook cannot tell from one it copied into the bucket."""
    buf.mul_(1.0 / state.world_size)
    fut = dist.all_reduce(buf, group=state.process_group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


class _HostStream:
    """_CudaStream's part on the host (backend "cpu"): gradcomp's calls return with the result
    in place, so there is no stream, nothing to wait for, and plain futures."""

    handle = None

    def done(self, buf):
        fut = torch.futures.Future()
        fut.set_result(buf)
        return fut

    def mark(self):
        return None

    def wait(self, ev):
        pass


class _CudaStream:
    """The stream DDP calls the hook on: gradcomp's kernels, the hook's copies and the
    returned future all follow it."""

    def __init__(self, device):
        self.device = device
        self.stream = torch.cuda.current_stream(device)
        self.handle = self.stream.cuda_stream

    def done(self, buf):
        """A future already holding buf; CUDA-aware, so DDP's consumers wait for the work
        enqueued on this stream (gradcomp's kernels and copies)."""
        fut = torch.futures.Future(devices=[buf.device])
        fut.set_result(buf)
        return fut

    def mark(self):
        ev = torch.cuda.Event()
        ev.record(self.stream)
        return ev

    def wait(self, ev):
        """On the stream a future's callback runs on: wait for the work before mark()."""
        torch.cuda.current_stream(self.device).wait_event(ev)


def gradcomp_hook(state, bucket):
    """DDP comm hook: the bucket's large parameters through gradcompAllReduceKeyed (Avg) on
    the current stream, the rest through one torch.distributed all_reduce; returns the
    future of the averaged bucket. See the module docstring for the bytes it sends.
    register_ddp_hook(ddp_model, state) registers it so that the state knows its DDP."""
    if not isinstance(state, GradcompState):
        # register_comm_hook takes any state: refused here by its type, not with an
        # AttributeError from inside the hook.
        raise TypeError(f"gradcomp_hook takes a GradcompState as its state; got {state!r} (a "
                        f"{type(state).__name__}): register it with "
                        "ddp_model.register_comm_hook(GradcompState(...), gradcomp_hook), or "
                        "register_ddp_hook(ddp_model, state)")
    return _hook(state, bucket, None)


def register_ddp_hook(model, state, wrap=None):
    """Registers gradcomp_hook on the DistributedDataParallel module `model` with the
    GradcompState `state` (model.register_comm_hook, through a wrapper of gradcomp_hook that
    tells the state which DDP calls), and records the DDP (weakly) and its process group on
    the state. Each DDP the state is registered on this way is checked at its own first
    hook call (a state over other ranks than the DDP's is refused on every rank of the DDP's
    group, ValueError naming both), where register_comm_hook leaves the state to find its DDP
    among the interpreter's objects once (gc.get_referrers: not after gc.freeze(), and not a
    DDP it is registered on later). Call it on every rank of the DDP's group alike (before
    the first step, as register_comm_hook).

    wrap: None, or a function that takes the hook and returns the hook to register, for
    torch's hook wrappers: wrap=fp16_compress_wrapper (or bf16_compress_wrapper), or
    wrap=lambda hook: hook_with_zero_step(hook, model, zero) with ZeroRedundancyOptimizer(...,
    overlap_with_ddp=True). The hook it is given must be called with `state` (torch's wrappers
    pass DDP's state on). Raises TypeError for another module or state, a wrap that is not
    callable or returns no callable and a wrapped call with another state, and what
    register_comm_hook raises (a DDP takes one comm hook)."""
    DDP = torch.nn.parallel.DistributedDataParallel
    if not isinstance(model, DDP):
        raise TypeError(f"register_ddp_hook takes the DistributedDataParallel module; got "
                        f"{type(model).__name__}: wrap the model first (DDP(model, ...)), or for "
                        "FSDP2 use register_fsdp_reduce_scatter(model, state)")
    if not isinstance(state, GradcompState):
        raise TypeError(f"register_ddp_hook takes a GradcompState; got {type(state).__name__}")
    if wrap is not None and not callable(wrap):
        raise TypeError(f"register_ddp_hook's wrap={wrap!r} is not callable: pass None, or a "
                        "function that takes the hook and returns the hook to register (as "
                        "torch's fp16_compress_wrapper does)")
    state._check_usable()  # an aborted or closed state says so now, not at the first step
    ref = weakref.ref(model)  # the DDP keeps the hook: no cycle through it
    mine = state

    @functools.wraps(gradcomp_hook)  # DDP logs the hook's name and reads its signature
    def hook(state, bucket):
        if state is not mine:
            raise TypeError(f"the hook register_ddp_hook registered was called with a "
                            f"{type(state).__name__}, not the GradcompState it was registered "
                            "with: a wrap= must call the hook it is given with the state DDP "
                            "passes (as torch's fp16_compress_wrapper does)")
        return _hook(state, bucket, ref())

    registered = hook
    if wrap is not None:
        inner = wrap(hook)
        if not callable(inner):
            raise TypeError(f"register_ddp_hook's wrap returned {inner!r}, not a hook: wrap "
                            "takes the hook and returns the hook to register (as torch's "
                            "fp16_compress_wrapper does)")

        # A function of its own to mark: what wrap returns may be shared with other DDPs (a
        # module-level hook) or take no attributes. DDP logs the wrapper's name and reads its
        # signature.
        @functools.wraps(inner)
        def registered(state, bucket):
            return inner(state, bucket)

    registered._gradcomp_ddp = ref  # its calls name their DDP: _registering_ddp passes it by
    model.register_comm_hook(state, registered)
    state._ddps[model] = model.process_group


def _hook(state, bucket, ddp):
    """gradcomp_hook's call; ddp: the calling DDP where register_ddp_hook registered it."""
    state._check_usable()
    if isinstance(bucket, tuple):
        # DDP under compiled autograd (torch._dynamo.config.optimize_ddp = "python_reducer")
        # calls each hook per parameter with (grad, param) inside the traced backward and
        # ignores what it returns: no bucket, no future, nothing gradcomp's C calls can run in.
        raise TypeError("gradcomp_hook got a (grad, param) tuple, not a GradBucket: DDP calls "
                        "its hooks that way under compiled autograd (optimize_ddp="
                        "'python_reducer'), where gradcomp cannot run; compile the model "
                        "without compiled autograd (the default optimize_ddp='ddp_optimizer' "
                        "keeps DDP's buckets and this hook), or use LD_PRELOAD=libgradcomp_preload.so")
    buf = bucket.buffer()
    want = "cpu" if state.backend == "cpu" else "cuda"
    if buf.device.type != want:
        if want == "cuda":
            raise TypeError(f"gradcomp_hook got a {buf.device.type} gradient bucket: the state's "
                            "backend 'nccl' compresses CUDA tensors; move the model to the GPU "
                            "before wrapping it in DDP, or, for a CPU model on a gloo group, make "
                            "the state with backend='cpu'")
        raise TypeError(f"gradcomp_hook got a {buf.device.type} gradient bucket: the state's "
                        "backend 'cpu' compresses CPU tensors; make the state with "
                        "backend='nccl' (an NCCL group) for a model on the GPU")
    if buf.dtype not in _DTYPES:
        raise TypeError(f"gradcomp_hook got a {buf.dtype} gradient bucket: gradcomp compresses "
                        "float32, float16 and bfloat16; cast the model, or register DDP's "
                        "default hook for this model")
    if buf.layout != torch.strided:
        # DDP gives a sparse gradient (nn.Embedding(sparse=True)) a bucket of its own, as a
        # sparse tensor: gradcomp reads dense buffers by address (a sparse one has none).
        raise TypeError(f"gradcomp_hook got a {buf.layout} gradient bucket (a parameter with "
                        "sparse gradients, e.g. nn.Embedding(sparse=True)): gradcomp compresses "
                        "dense buckets; make the embedding dense (sparse=False), or register "
                        "DDP's default hook for this model")
    stream = _HostStream() if want == "cpu" else _CudaStream(buf.device)
    return _reduce_bucket(state, bucket, buf, stream, ddp)


def _registering_ddp(state):
    """The DDP module `state` is registered on as its comm hook's state, or None: DDP keeps
    (hook, state) in its _comm_hooks (register_comm_hook). Found among the referrers of that
    pair (each step a walk of the interpreter's objects, once per state); None where this torch
    keeps no such list, or the hook is called otherwise (not by a DDP). gc.get_referrers does
    not see objects frozen by gc.freeze(): a program that freezes after register_comm_hook must
    do so on every rank of the DDP's group alike (README), or the ranks that find no DDP skip
    the check's all_gather that the others enter. Pairs of register_ddp_hook's hooks are passed
    by: their calls name their own DDP, and the call looking here came through another."""
    import gc

    DDP = torch.nn.parallel.DistributedDataParallel
    for pair in gc.get_referrers(state):
        if (type(pair) is not tuple or len(pair) != 2 or pair[1] is not state
                or getattr(pair[0], "_gradcomp_ddp", None) is not None):
            continue
        for hooks in gc.get_referrers(pair):
            if type(hooks) is not list:
                continue
            for owner in gc.get_referrers(hooks):
                # A module's attributes live in its __dict__, which the module refers to.
                found = [owner] if isinstance(owner, DDP) else (
                    gc.get_referrers(owner) if type(owner) is dict else [])
                for ddp in found:
                    if isinstance(ddp, DDP) and getattr(ddp, "_comm_hooks", None) is hooks:
                        return ddp
    return None


def _reduce_bucket(state, bucket, buf, stream, ddp=None):
    last = bucket.is_last()
    state._note_bucket(bucket, last)
    try:
        if ddp is not None:  # register_ddp_hook's: each DDP checked at its first call
            if ddp not in state._ddps_checked:
                state._check_ddp_group(buf.device, ddp)
        else:
            if not state._ddp_group_checked:
                state._check_ddp_group(buf.device)
            current = getattr(torch._C, "_current_graph_task_id", None)
            if state._found_ddp is not None and current is not None and current() == -1:
                # A joined rank's shadow call (Join; before start_iter too): that rank makes no
                # forward, so the found DDP's pre-hook (_FoundJoinNote) does not see the Join
                # there, while the ranks still training do. Noted here, both keep nothing from
                # then on, also after a wrap again (where neither reads that DDP any more).
                state._found_join = True
        return _reduce_noted(state, bucket, buf, stream, last, ddp)
    except BaseException:
        # The step is abandoned (DDP's backward raises): the next bucket 0, of this model's
        # next step or of a new DDP of it once the error is dealt with (set_module, a good
        # load_state_dict), starts a step, not a second model's bucket seen twice.
        state._step_buckets.clear()
        raise


def _reduce_noted(state, bucket, buf, stream, last, ddp=None):
    if state._agrees_calls():
        state._agree_call(buf.device, f"bucket {bucket.index()}", bucket.parameters())
    if state._paused:
        return _allreduce_avg(buf, state)
    if not state._options_agreed:
        state._agree_options(buf.device)
    if state.iter < state.start_iter:
        if last:
            state.iter += 1
            state.counters["uncompressed_steps"] += 1
        return _allreduce_avg(buf, state)

    plan = state._plan(bucket)
    if plan["total"] != buf.numel():
        # The runs would reduce part of the buffer and leave the rest this rank's own gradient.
        raise RuntimeError(f"gradcomp_hook: bucket {bucket.index()}'s parameters take "
                           f"{plan['total']} elements, but its buffer holds {buf.numel()}: a "
                           "parameter laid out in the bucket otherwise than gradcomp reads it; "
                           "register DDP's default hook for this model")
    if last:
        state.iter += 1
    elem = buf.element_size()
    if plan["comp_n"] == 0:
        state._warn_once(("full", bucket.index()),
                         f"bucket {bucket.index()} holds only parameters with dim() <= 1 or "
                         f"fewer than layer_min_size={state.layer_min_size} elements: it is sent "
                         "uncompressed by torch.distributed (warned once)")
        state.counters["full_precision_calls"] += 1
        state.counters["full_precision_bytes"] += plan["full_n"] * elem
        return _allreduce_avg(buf, state)

    comm = state.comm(buf.device)
    state._follow_scaler(comm, stream.handle)
    state._check_key(bucket, plan["key"])
    dtype = _DTYPES[buf.dtype]
    what = f"bucket {bucket.index()}'s compressed part"
    before = comm.call_counts()
    # Compressed parameters frozen since the plan was made (requires_grad=False: DDP with
    # find_unused_parameters zero-fills their slices and leaves their gradients alone).
    frozen = [(o, n) for o, n, p in plan["comp_params"] if not p.requires_grad]
    watched = _watch_unused(state, ddp, plan, buf)  # the inputs, before the call
    if plan["full_n"] == 0:
        comm.allreduce_raw(buf.data_ptr(), buf.data_ptr(), buf.numel(), dtype, "avg",
                           stream.handle, plan["key"])
        state._count_call(comm, before, plan["comp_n"] * elem, what, plan["comp_n"])
        _zero_frozen(buf, frozen)
        _add_carry(state, plan, buf, comm)
        if watched is not None:
            state._watch.append((buf, plan, *watched, stream, stream.mark()))
        return stream.done(buf)

    # Mixed bucket: the full-precision part starts first on torch's NCCL stream,
    # the compressed part runs meanwhile on the current stream.
    full = _gather(buf, plan["full"], plan["full_n"])
    full.mul_(1.0 / state.world_size)  # as _allreduce_avg
    state.counters["full_precision_calls"] += 1
    state.counters["full_precision_bytes"] += plan["full_n"] * elem
    fut = dist.all_reduce(full, group=state.process_group, async_op=True).get_future()
    comp = _gather(buf, plan["comp"], plan["comp_n"])
    comm.allreduce_raw(comp.data_ptr(), comp.data_ptr(), comp.numel(), dtype, "avg",
                       stream.handle, plan["key"])
    state._count_call(comm, before, plan["comp_n"] * elem, what, plan["comp_n"])
    _scatter(comp, buf, plan["comp"])
    _zero_frozen(buf, frozen)
    _add_carry(state, plan, buf, comm)
    comp_done = stream.mark()
    if watched is not None:
        state._watch.append((buf, plan, *watched, stream, comp_done))

    def finish(f):
        # Runs on streams that waited for the allreduce; also wait for gradcomp's part.
        stream.wait(comp_done)
        _scatter(f.value()[0], buf, plan["full"])
        return buf

    return fut.then(finish)


def _carry_ident(state, plan, p, j):
    """How a carried slice is saved: by the parameter's index in the state's module, or by the
    bucket's key and the parameter's position among the bucket's compressed ones (as the
    residuals are keyed)."""
    if state._param_ids is not None:
        return ("params", state._param_ids[id(p)])
    return ("bucket", plan["key"], j)


def _watch_unused(state, ddp, plan, buf):
    """Under DDP(find_unused_parameters=True): notes which compressed parameters of this call
    have an all-zero input slice on this rank (a parameter unused on every rank has one on
    every rank), and queues _settle_unused for the end of the backward; returns those flags
    (a tensor on the bucket's device, read there) and whether DDP's gradients are views of its
    buckets (gradient_as_bucket_view), or None: nothing otherwise."""
    found = ddp is None
    if not found:  # register_ddp_hook's
        opts = _ddp_opts(ddp)
    elif state._found_opts is not None:
        # register_comm_hook's: the settings of the DDP found at the first call, whether it is
        # still alive or not, so that every rank decides alike (each frees it at its own time).
        opts, ddp = state._found_opts, state._found_ddp()
        if ddp is None:
            state._warn_once("found-gone", "the DDP this GradcompState was registered on by "
                             "register_comm_hook is gone (the model wrapped again?); the state "
                             "keeps that DDP's settings (find_unused_parameters="
                             f"{opts['find_unused']}): where the new DDP's differ, what the error "
                             "feedback releases for a parameter unused on every rank is lost or "
                             "kept where it should not be; register with "
                             "gct.register_ddp_hook(ddp, state) to have each DDP's own (warned "
                             "once)")
    else:
        return None
    if not opts["find_unused"]:
        return None
    if opts["static_graph"]:
        # A parameter unused at one step is unused at every step: a kept slice could never reach
        # it. And DDP regroups its buckets only here under find_unused_parameters, which is what
        # starts ZeRO's overlap (hook_with_zero_step): that steps the parameters from
        # bucket.gradients(), a slice DDP drops included, which the carry would add again.
        return None
    if opts["manual"]:
        # DDP writes the gradients when the program calls ddp.finalize_backward(), after the
        # backward's callbacks: whether a slice reached its parameter cannot be read there.
        state._warn_once("manual-finalize", "with require_manual_backward_finalization, what "
                         "the hook's error feedback releases for a parameter unused on every "
                         "rank is not carried to its next step (DDP gives such a parameter no "
                         "gradient); leave manual finalization off to keep it (warned once)")
        return None
    # The DDP found keeps the Join it was in at its last forward (_FoundJoinNote), also once
    # it is gone: torch never turns a DDP's Join off after its block (Join sets it when made),
    # so a rank where that DDP still waits for the collector reads it in Join, and one where it
    # is gone must decide alike.
    if state._found_join if found else _in_join(ddp):
        # Inside Join (every rank of the DDP is): a joined rank's shadow calls run outside any
        # backward and keep nothing, so a rank still training that kept a slice would add it,
        # alone, to a result after the Join.
        return None
    current = getattr(torch._C, "_current_graph_task_id", None)
    if current is None:
        state._warn_once("no-task-id", "this torch cannot tell the hook which backward calls "
                         "it (no torch._C._current_graph_task_id): what the error feedback "
                         "releases for a parameter unused on every rank is not carried to its "
                         "next step; use a newer torch to keep it (warned once)")
        return None
    task = current()
    if task == -1:
        return None  # a joined rank's shadow call (Join): no backward, no gradient written
    zero = _zero_slices(buf, plan["comp_params"])
    if state._watch_task != task:
        # The first call of this backward (the entries of a backward that failed go).
        state._watch, state._watch_task = [], task
        engine = torch.autograd.Variable._execution_engine
        settle = functools.partial(_settle_unused, weakref.ref(state))
        # DDP queues its finalize (the gradients written) after its last bucket's hook, so
        # after this call; a callback queued by a callback runs after all of those.
        engine.queue_callback(lambda: engine.queue_callback(settle))
    return zero, opts["view"]


class _FoundJoinNote:
    """A forward pre-hook of the DDP a state found (_check_ddp_group): notes whether that DDP is
    in Join for _watch_unused. It holds the state weakly (the DDP must not keep it alive), and
    a copy or a pickle of the DDP (torch.save) gets one that notes nothing: a weak reference
    does not pickle, and the copy is not the DDP the state found."""

    def __init__(self, state=None):
        self._state = weakref.ref(state) if state is not None else None

    def __call__(self, ddp, args):
        state = self._state() if self._state is not None else None
        if state is not None and state._found_ddp is not None and state._found_ddp() is ddp:
            # Kept once set, as torch keeps a DDP's Join (and as a joined rank's shadow call
            # sets it, _watch_unused, where that rank makes no forward).
            state._found_join = state._found_join or _in_join(ddp)

    def __reduce__(self):
        return (_FoundJoinNote, ())


def _in_join(ddp):
    """Whether `ddp` is in Join (its _join_config enabled)."""
    return bool(getattr(getattr(ddp, "_join_config", None), "enable", False))


def _ddp_opts(ddp):
    """The DDP settings _watch_unused decides by, read from `ddp`."""
    return {"find_unused": bool(getattr(ddp, "find_unused_parameters", False)),
            "static_graph": bool(getattr(ddp, "static_graph", False)),
            "manual": bool(getattr(ddp, "_require_manual_backward_finalization", False)),
            "view": bool(getattr(ddp, "gradient_as_bucket_view", False))}


def _zero_slices(buf, params):
    """Whether each (offset, count, parameter) slice of buf is all zero, as one bool tensor on
    buf's device: one fused max-norm over the slices (torch's multi-tensor kernel), not two ops
    per parameter; a NaN slice is not zero."""
    slices = [buf[o:o + n] for o, n, _ in params]
    foreach_norm = getattr(torch, "_foreach_norm", None)
    if foreach_norm is not None:
        try:
            return torch.stack(foreach_norm(slices, float("inf"))).eq(0)
        except (RuntimeError, TypeError):
            pass  # a dtype or torch it does not take: the slices one by one
    return torch.stack([t.eq(0).all() for t in slices])


def _delivered(p, out):
    """Whether DDP gave parameter p the slice `out` of the result as its gradient."""
    g = p.grad
    if g is None:
        return False
    if g.is_complex():
        g = torch.view_as_real(g)
    g = g.reshape(-1)
    return g.numel() == out.numel() and torch.equal(g, out.to(g.dtype))


def _settle_unused(ref):
    """After DDP finalized the backward: a compressed parameter whose input slice was zero on
    this rank and whose slice of the result is not, and whose gradient DDP did not set to it (a
    parameter unused on every rank: DDP leaves its gradient alone, dropping the result, or under
    gradient_as_bucket_view leaves it None), keeps the slice for its next compressed call.

    Under gradient_as_bucket_view a gradient that is not None is the parameter's slice of the
    bucket, so it holds the result whether DDP used it or not: such a rank cannot tell, and
    would apply the slice now where a rank with other settings (a copy, or zero_grad(
    set_to_none=True)) keeps it for the next step, so the ranks' gradients would differ. The
    ranks therefore agree (one small all-reduce of the group per backward): where any rank
    found the parameter unused, those that could not tell keep the slice too and zero their
    gradient (DDP's own allreduce gives such a parameter 0 there). The result and DDP's unused
    set are alike on every rank, so every rank keeps the same."""
    state = ref()
    if state is None:
        return
    watch, state._watch, state._watch_task = state._watch, [], None
    if state._aborted or state._closed or state._comm is None:
        return
    scale = state._comm.grad_scale
    # One entry per compressed parameter of the calls, in the same order on every rank (by
    # residual key; the calls of one backward are alike on every rank): None, or (found unused
    # here, parameter, its slice of the result, its identity).
    found = []
    for buf, plan, zero, view, stream, done in sorted(watch, key=lambda e: e[1]["key"]):
        stream.wait(done)  # the call's kernels and copies, on the stream the hook ran on
        for j, ((o, n, p), z) in enumerate(zip(plan["comp_params"], zero.tolist())):
            out = buf[o:o + n]
            # A slice that is not finite is not kept: its step is skipped (GradScaler) and the
            # call cleared the buffer's residuals, so it would spoil the next step; and a NaN
            # differs from the gradient DDP gave, so a rank whose input was zero, of a
            # parameter used on another rank, would keep it alone.
            if (not z or not p.requires_grad or not bool(out.any())
                    or not bool(out.isfinite().all())):
                found.append(None)
            elif view and p.grad is not None:
                found.append((False, p, out, _carry_ident(state, plan, p, j)))
            elif _delivered(p, out):
                found.append(None)
            else:
                found.append((True, p, out, _carry_ident(state, plan, p, j)))
    if not found:
        return
    unused = state._count_ranks(*[f is not None and f[0] for f in found],
                                device=watch[0][0].device)
    for f, anywhere in zip(found, unused):
        if f is None or not anywhere:
            continue
        here, p, out, ident = f
        state._carry[id(p)] = (weakref.ref(p), out.clone(), ident, scale)
        if not here:
            with torch.no_grad():
                p.grad.zero_()


def _add_carry(state, plan, buf, comm):
    """Adds what _settle_unused kept for the call's compressed parameters to their slices of the
    result (in the comm's current gradient scale); a frozen parameter's waits until it is not."""
    if not (state._carry or state._loaded_carry):
        return
    now = None
    for j, (o, n, p) in enumerate(plan["comp_params"]):
        if not p.requires_grad:
            continue
        e = state._carry.pop(id(p), None)
        if e is not None and e[0]() is p:
            t, sc = e[1], e[3]
        elif state._loaded_carry:
            t, sc = state._loaded_carry.pop(_carry_ident(state, plan, p, j), (None, None))
        else:
            continue
        if t is None:
            continue
        if t.numel() != n:
            raise ValueError(f"gradcomp: the carried slice of {state._name(p, j)!r} holds "
                             f"{t.numel()} elements, the parameter {n}: the state dict was saved "
                             "for another model; load it into the model it was saved with")
        now = comm.grad_scale if now is None else now
        t = t.to(device=buf.device, dtype=buf.dtype)
        buf[o:o + n].add_(t if sc == now else t * (now / sc))
