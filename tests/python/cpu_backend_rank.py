"""One rank of test_torch.CpuBackendDdp / CpuBackendFsdp / CpuBackendAbort /
CpuBackendFsdpReplicas / CpuBackendFsdpCheckpoint: gradcomp.torch with backend="cpu" on real
DDP / FSDP2 over gloo, gradcomp's comm made from the process group (TCP between the ranks).
Usage: cpu_backend_rank.py ddp|excluded|fsdp|fsdp_models|fsdp_factor|fsdp_shared_hook|
fsdp_frozen|fsdp_frozen_resume|fsdp_late_root|fsdp_dcp|dgc|subgroups|
restart|scaler|abort|replicas|ddp_group|ddp_register|overflow|compose|disagree|unused|
unused_nan|unused_join|unused_mixed|unused_rewrapped|unused_rewrapped_gc|
unused_rewrapped_join_gc|unused_rewrapped_join_eval_gc|unused_rewrapped_idle_join|
unused_static|patterns|compiled
OUT (the env:// variables from tools/gc_ranks.py).

Records every call the hook (DDP) or the reduce-scatter (FSDP) gets, its input before and its
result after, in call order, for the test to compare with a serial reference on the in-process
CPU world; writes OUT.rank<r>.pt (records) and OUT.rank<r>.json (stats, parameter hashes,
the resume check).
"""
import contextlib
import hashlib
import json
import warnings
import sys
import threading
import time

import torch
import torch.distributed as dist
import torch.nn as nn

import gradcomp
import gradcomp.torch as gct
import gc_ranks  # tools/, on the PYTHONPATH the tests give
# The unused-parameter case as the GPU box runs it (tools/, as gc_ranks).
from hook_exact_rank import UNUSED_AT, UNUSED_FLUSH, UnusedNet, recording_p, unused_input

STEPS, START, RESUME_AT = 5, 1, 3


def config():
    return gradcomp.Config(from_env=False, method="qsgd", bits=4, min_elements=0, auto_tune=0)


def param_bytes(params):
    return b"".join(p.detach().numpy().tobytes() for p in params)


def batch(step, rank, din):
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(8, din, generator=g), torch.randint(0, 5, (8,), generator=g)


def train(d, opt, steps, rank):
    """SGD steps of a DDP model on this rank's batches (8 samples of 32 features, 5 classes)."""
    for step in steps:
        x, y = batch(step, rank, 32)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(d(x), y).backward()
        opt.step()


def fsdp_mlp(mesh, seed, factor=None):
    """The model of `train` (seeded), each Linear and then the whole sharded by FSDP2 over
    `mesh`; with `factor`, set_gradient_divide_factor(factor) on all three."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 5))
    for m in (model[0], model[2], model):
        fully_shard(m, mesh=mesh)
    if factor is not None:
        for m in (model[0], model[2], model):
            m.set_gradient_divide_factor(factor)
    return model


def fsdp_hooked(mesh, seed, factor=None):
    """fsdp_mlp's model and its GradcompState, registered as its reduce-scatter."""
    model = fsdp_mlp(mesh, seed, factor)
    state = gct.GradcompState(backend="cpu", config=config())
    gct.register_fsdp_reduce_scatter(model, state)
    return model, state


def fsdp_train(model, steps, rank):
    """`train` with plain SGD, made anew: it keeps no state, so a resumed run needs none."""
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), steps, rank)


def full_bytes(model):
    """The bytes of an FSDP2 model's full (unsharded) parameters."""
    return b"".join(p.full_tensor().detach().numpy().tobytes() for p in model.parameters())


def ddp(out, rank):
    from torch.nn.parallel import DistributedDataParallel as DDP

    records = []

    def make(seed):
        torch.manual_seed(seed)
        # 0.weight (2048) and 2.weight (2560) compressed; biases, the 200-element 4.weight
        # and the norm in full precision (layer_min_size 1024, dim() <= 1).
        return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 40, bias=False),
                             nn.ReLU(), nn.Linear(40, 5), nn.LayerNorm(5))

    def recording(st, bucket):
        compressed = st.iter >= st.start_iter
        rec = {"index": bucket.index(), "last": bucket.is_last(), "compressed": compressed,
               "input": bucket.buffer().clone()}
        records.append(rec)
        fut = gct.gradcomp_hook(st, bucket)
        plan = st._plans.get(tuple(id(p) for p in bucket.parameters()))
        if compressed:
            rec.update(comp=plan["comp"], full=plan["full"], key=plan["key"],
                       comp_n=plan["comp_n"])

        def done(f):
            rec["output"] = f.value().clone()
            return f.value()

        return fut.then(done)

    def wrap(model, hook):
        # Small buckets after the rebuild: several buckets, mixed and all-compressed ones.
        d = DDP(model, bucket_cap_mb=0.005)
        st = gct.GradcompState(module=model, start_iter=START, backend="cpu", config=config())
        d.register_comm_hook(st, hook)
        return d, st, torch.optim.SGD(d.parameters(), lr=0.1, momentum=0.9)

    model = make(0)
    d, state, opt = wrap(model, recording)
    steps_of = []
    for step in range(STEPS):
        n = len(records)
        train(d, opt, [step], rank)
        steps_of += [step] * (len(records) - n)
    for rec, step in zip(records, steps_of):
        rec["step"] = step
    stats = state.stats()
    state.close()

    # Checkpoint after RESUME_AT steps, resume in a fresh model, DDP and state.
    m1 = make(0)
    d1, s1, o1 = wrap(m1, gct.gradcomp_hook)
    train(d1, o1, range(RESUME_AT), rank)
    ckpt = {"model": {k: v.clone() for k, v in m1.state_dict().items()},
            "opt": o1.state_dict(), "gradcomp": s1.state_dict()}
    s1.close()
    m2 = make(1)
    d2, s2, o2 = wrap(m2, gct.gradcomp_hook)
    m2.load_state_dict(ckpt["model"])
    o2.load_state_dict(ckpt["opt"])
    with s2.paused():  # DDP rebuilds its buckets after a new process's first step
        x, y = batch(RESUME_AT, rank, 32)
        nn.functional.cross_entropy(d2(x), y).backward()
    o2.zero_grad(set_to_none=True)
    s2.load_state_dict(ckpt["gradcomp"])
    train(d2, o2, range(RESUME_AT, STEPS), rank)
    resumed = param_bytes(m2.parameters()) == param_bytes(model.parameters())
    s2.close()
    return records, {"stats": stats, "resume_bitwise": resumed,
                     "param_hash": hashlib.sha256(param_bytes(model.parameters())).hexdigest()}


def excluded(out, rank):
    """The hook with every parameter in full precision against DDP without a hook: the same
    model, batches and optimizer; the parameters' hashes of both (test_torch compares them at
    3 ranks, where x / 3 and x * (1/3) round differently)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    def run(hooked):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 5))
        d = DDP(model, bucket_cap_mb=0.005)
        st = None
        if hooked:
            st = gct.GradcompState(module=model, start_iter=0, backend="cpu", config=config(),
                                   layer_min_size=10 ** 9)
            d.register_comm_hook(st, gct.gradcomp_hook)
        opt = torch.optim.SGD(d.parameters(), lr=0.1, momentum=0.9)
        for step in range(STEPS):
            x, y = batch(step, rank, 32)
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(d(x), y).backward()
            opt.step()
        if st is not None:
            st.close()
        return hashlib.sha256(param_bytes(model.parameters())).hexdigest()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sent uncompressed", as meant
        return [], {"plain": run(False), "hooked": run(True)}


def fsdp(out, rank):
    from torch.distributed.device_mesh import init_device_mesh

    records, run = [], ["plain"]

    class Recording(gct.GradcompReduceScatter):
        def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
            premul = getattr(op, "op", op) == dist.ReduceOp.PREMUL_SUM
            factor = getattr(op, "factor", None) if premul else None
            rec = {"run": run[0], "key": self.key, "op": "avg" if op == dist.ReduceOp.AVG else
                   "sum" if op == dist.ReduceOp.SUM else "premul_sum" if factor is not None
                   else str(op), "factor": factor, "input": input_tensor.clone()}
            records.append(rec)
            work = super().__call__(output_tensor=output_tensor, input_tensor=input_tensor,
                                    group=group, op=op, async_op=async_op)
            rec["output"] = output_tensor.clone()
            return work

    # FSDP2's default mesh is the accelerator's: where a GPU is visible it would move the model
    # there. The CPU backend reduces CPU tensors: a CPU mesh keeps them on the host.
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))

    plain = gct.fsdp.GradcompReduceScatter
    gct.fsdp.GradcompReduceScatter = Recording  # what register_fsdp_reduce_scatter makes
    model, state = fsdp_hooked(mesh, 0)
    gct.fsdp.GradcompReduceScatter = plain
    fsdp_train(model, range(3), rank)
    stats = state.stats()
    state.close()

    # Checkpoint after 2 steps, resume in a fresh model and state: the step counter and the
    # residuals go on, the last step bit for bit the uninterrupted run's.
    m1, s1 = fsdp_hooked(mesh, 0)
    fsdp_train(m1, range(2), rank)
    ckpt = {"model": {k: v.detach().clone() for k, v in m1.state_dict().items()},
            "gradcomp": s1.state_dict()}
    s1.close()
    m2, s2 = fsdp_hooked(mesh, 1)
    m2.load_state_dict(ckpt["model"])
    s2.load_state_dict(ckpt["gradcomp"])
    fsdp_train(m2, [2], rank)
    iters = {"saved": ckpt["gradcomp"]["iter"], "resumed": s2.iter,
             "resumed_stats": s2.stats()["iter"]}
    s2.close()

    # A gradient divide factor other than the world size: FSDP asks for PREMUL_SUM(1/4), which
    # gloo refuses; gradcomp multiplies and sums (compressed).
    run[0] = "factor"
    gct.fsdp.GradcompReduceScatter = Recording
    fmodel, fstate = fsdp_hooked(mesh, 0, factor=4.0)
    gct.fsdp.GradcompReduceScatter = plain
    fsdp_train(fmodel, range(2), rank)
    fstats = fstate.stats()
    fstate.close()
    return records, {"stats": stats, "param_hash": hashlib.sha256(full_bytes(model)).hexdigest(),
                     "resume_bitwise": full_bytes(m2) == full_bytes(model), "iters": iters,
                     "factor_stats": fstats,
                     "factor_param_hash": hashlib.sha256(full_bytes(fmodel)).hexdigest()}


def fsdp_factor(out, rank):
    """FSDP2's divide factor changed between two steps (set_gradient_divide_factor: an Avg
    become a pre-multiplied Sum, or FSDP's post-division under a forced sum or fp16's
    reduce_dtype): each case's step 2 gradients, "changed" (factor f1 then f2), "resumed" (step
    1 at f1, its state dict loaded into a fresh model and state, step 2 at f2) and "reference"
    (f2 for both steps, step 1's loss times f2/f1: step 1's gradients, the residual's weight in
    them, are the changed run's, and no factor changes). Powers of two: QSGD's results scale
    bit for bit. "replicas_*": the same of GradcompReplicaAllReduce, HSDP by hand over 2
    replicas of one shard (an Avg over the replicas become a Sum). "warned": whether the
    state warned that an fp16 input was not scaled into the residual's unit."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    hsdp = init_device_mesh("cpu", (dist.get_world_size(), 1),
                            mesh_dim_names=("replicate", "shard"))
    world = dist.get_world_size()
    cases = {"avg_to_premul": (None, 4.0, {}), "premul_to_avg": (4.0, 2.0, {}),
             "premul_to_premul": (4.0, 8.0, {}), "forced_sum": (2.0, 8.0, {"force": True}),
             "fp16": (2.0, 8.0, {"dtype": torch.float16}),
             "replicas_avg_to_sum": (None, 4.0, {"replicas": True}),
             "replicas_sum_to_sum": (4.0, 8.0, {"replicas": True})}

    def make(opts, blob=None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 8, bias=False))
        fully_shard(model, mesh=hsdp["shard"] if opts.get("replicas") else mesh,
                    mp_policy=MixedPrecisionPolicy(reduce_dtype=opts.get("dtype")))
        model.set_force_sum_reduction_for_comms(opts.get("force", False))
        if opts.get("replicas"):
            state = gct.GradcompState(process_group=hsdp["replicate"].get_group(),
                                      backend="cpu", config=config())
            gct.register_fsdp_replica_all_reduce(model, state)
        else:
            state = gct.GradcompState(backend="cpu", config=config())
            gct.register_fsdp_reduce_scatter(model, state)
        if blob is not None:
            state.load_state_dict(blob)
        return model, state

    def step(model, s, factor, loss_scale=1.0):
        if factor is not None:
            model.set_gradient_divide_factor(factor)
        g = torch.Generator().manual_seed(10 * s + rank)
        model.zero_grad(set_to_none=True)
        (model(torch.randn(4, 16, generator=g)).pow(2).sum() * loss_scale).backward()
        return model[0].weight.grad.to_local().clone()

    res = {}
    for name, (f1, f2, opts) in cases.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, state = make(opts)
            changed = [step(model, 0, f1), step(model, 1, f2)]
            state.close()
            model, state = make(opts)
            step(model, 0, f1)
            blob = state.state_dict()
            state.close()
            model, state = make(opts, blob)
            resumed = step(model, 1, f2)
            state.close()
            model, state = make(opts)
            reference = [step(model, 0, f2, (f2 or world) / (f1 or world)), step(model, 1, f2)]
            state.close()
        res[name] = {"step1": torch.equal(changed[0], reference[0]),
                     "changed": torch.equal(changed[1], reference[1]),
                     "resumed": torch.equal(resumed, reference[1]),
                     "resumed_as_changed": torch.equal(resumed, changed[1]),
                     "warned": any("under an fp16 reduce" in str(w.message) for w in caught)}
    return [], res


def fsdp_shared_hook(out, rank):
    """One GradcompReduceScatter (made for the first layer) installed on two FSDP modules of
    one size: both reduce under its key, one residual. Its first step's error, the state's step
    counter after it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    for m in (model[0], model[1], model):
        fully_shard(m, mesh=mesh)
    state = gct.GradcompState(backend="cpu", config=config())
    hook = gct.GradcompReduceScatter(state, "0", module=model[0])
    model[0].set_custom_reduce_scatter(hook)
    model[1].set_custom_reduce_scatter(hook)
    x, _ = batch(0, rank, 16)
    res = {"error": _error(lambda: model(x).sum().backward()), "iter": state.iter}
    state.abort()  # the step may have stopped half-way
    return [], res


def fsdp_models(out, rank):
    """One GradcompState and FSDP2 models of one architecture (their modules named alike, as
    every model's root is "<root>"): "shared", two models registered on the state and trained
    together (their residuals would be keyed alike); "rebuilt", a model built anew and
    registered on the state of a model trained before, the old one still alive: it goes on
    from the old one's residuals and step counter."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))

    def step(models, s):
        x, _ = batch(s, rank, 32)
        sum(m(x).pow(2).mean() for m in models).backward()

    res = {}
    a, b = fsdp_mlp(mesh, 0), fsdp_mlp(mesh, 1)
    state = gct.GradcompState(backend="cpu", config=config())
    gct.register_fsdp_reduce_scatter(a, state)
    gct.register_fsdp_reduce_scatter(b, state)
    res["shared"] = {"error": _error(lambda: step([a, b], 0))}
    state.abort()  # the step stopped half-way: nothing more is sent on this state

    old = fsdp_mlp(mesh, 0)
    state = gct.GradcompState(backend="cpu", config=config())
    gct.register_fsdp_reduce_scatter(old, state)
    step([old], 0)
    new = fsdp_mlp(mesh, 0)
    gct.register_fsdp_reduce_scatter(new, state)
    err = _error(lambda: step([new], 1))
    res["rebuilt"] = {"error": err, "iter": state.iter, "old_alive": old is not None,
                      "calls": state.stats()["compressed_calls"]}
    state.close()
    return [], res


def fsdp_frozen(out, rank):
    """One FSDP module of two 4x4 weights under set_reduce_scatter_unused_params(True), frozen
    by turns: step 0 both train, step 1 "a" is frozen, step 2 "b", step 3 both again. FSDP
    leaves a frozen weight out of the flat buffer, so steps 1 and 2 reduce 16 elements each,
    of other weights. Records each call's input and output."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)

        def forward(self, x):
            return self.b(self.a(x))

    records = []

    class Recording(gct.GradcompReduceScatter):
        def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
            rec = {"op": "avg" if op == dist.ReduceOp.AVG else "sum",
                   "input": input_tensor.clone()}
            records.append(rec)
            work = super().__call__(output_tensor=output_tensor, input_tensor=input_tensor,
                                    group=group, op=op, async_op=async_op)
            rec["output"] = output_tensor.clone()
            return work

    torch.manual_seed(0)
    model = Two()
    fully_shard(model, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
    model.set_reduce_scatter_unused_params(True)
    state = gct.GradcompState(backend="cpu", config=config())
    plain = gct.fsdp.GradcompReduceScatter
    gct.fsdp.GradcompReduceScatter = Recording  # what register_fsdp_reduce_scatter makes
    gct.register_fsdp_reduce_scatter(model, state)
    gct.fsdp.GradcompReduceScatter = plain
    for step, frozen in enumerate((None, "a", "b", None)):
        model.a.weight.requires_grad_(frozen != "a")
        model.b.weight.requires_grad_(frozen != "b")
        model(batch(step, rank, 4)[0]).pow(2).mean().backward()
    res = {"iter": state.iter}
    state.close()
    return records, res


def fsdp_frozen_resume(out, rank):
    """A module with a weight frozen throughout (a fine-tune's frozen base), checkpointed after
    2 steps by a run that kept the module's residual under its name alone, as gradcomp did
    before frozen parameters keyed residuals of their own (a hook made without the module keys
    it so), and resumed for the third step with register_fsdp_reduce_scatter: its parameters
    against the uninterrupted run's, and the warnings of the resumed step."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)

        def forward(self, x):
            return self.b(self.a(x))

    def make(named_only):
        torch.manual_seed(0)
        model = Two()
        model.a.weight.requires_grad_(False)
        fully_shard(model, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
        state = gct.GradcompState(backend="cpu", config=config())
        if named_only:  # the residual under the module's name, whatever is frozen
            model.set_custom_reduce_scatter(gct.GradcompReduceScatter(state, "<root>"))
        else:
            gct.register_fsdp_reduce_scatter(model, state)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        return model, state, opt

    def train(model, opt, steps):
        for step in steps:
            opt.zero_grad(set_to_none=True)
            model(batch(step, rank, 8)[0]).pow(2).mean().backward()
            opt.step()

    m1, s1, o1 = make(True)
    train(m1, o1, range(2))
    ckpt = {"model": {k: v.detach().clone() for k, v in m1.state_dict().items()},
            "gradcomp": s1.state_dict()}
    train(m1, o1, [2])
    s1.close()
    m2, s2, o2 = make(False)
    m2.load_state_dict(ckpt["model"])
    s2.load_state_dict(ckpt["gradcomp"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(m2, o2, [2])
    res = {"resume_bitwise": full_bytes(m2) == full_bytes(m1), "iter": s2.iter,
           "warnings": [str(w.message) for w in caught if "gradcomp" in str(w.message)]}
    s2.close()
    return [], res


def fsdp_late_root(out, rank):
    """A model whose root has parameters of its own (the input layer), registered before and
    after the root's fully_shard: before, FSDP reduces the root's gradients with its own
    reduce-scatter. Records the warnings of one step and the compressed calls."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(32, 64)
            self.layers = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 5))

        def forward(self, x):
            return self.layers(self.inp(x))

    res = {}
    for late in (True, False):
        torch.manual_seed(0)
        model = Net()
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        state = gct.GradcompState(backend="cpu", config=config())
        if late:
            gct.register_fsdp_reduce_scatter(model, state)
        fully_shard(model, mesh=mesh)
        if not late:
            gct.register_fsdp_reduce_scatter(model, state)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model(batch(0, rank, 32)[0]).sum().backward()
        res["late" if late else "last"] = {
            "warnings": [str(w.message) for w in caught if "gradcomp" in str(w.message)],
            "calls": state.stats()["compressed_calls"]}
        state.close()
    return [], res


def fsdp_dcp(out, rank):
    """torch.distributed.checkpoint (DCP) of an FSDP2 model and its GradcompState after 2 of 3
    steps, loaded into a fresh model and state: "keyed", each rank's state dict under a key of
    its own (the loaded state dict against the saved one, the third step's parameters against
    the uninterrupted run's); "shared", every rank's under one key, of which DCP may keep one
    rank's copy (what each rank's load_state_dict says, and whether it got its own)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))

    model, state = fsdp_hooked(mesh, 0)
    fsdp_train(model, range(3), rank)
    state.close()
    res = {}
    for how, key in (("keyed", f"gradcomp.rank{rank}"), ("shared", "gradcomp")):
        m1, s1 = fsdp_hooked(mesh, 0)
        fsdp_train(m1, range(2), rank)
        saved = s1.state_dict()
        dcp.save({"model": m1.state_dict(), key: saved}, checkpoint_id=f"{out}_{how}")
        s1.close()
        m2, s2 = fsdp_hooked(mesh, 1)
        sd = {"model": m2.state_dict(), key: s2.state_dict()}
        dcp.load(sd, checkpoint_id=f"{out}_{how}")
        got = {"own": sd[key] == saved, "error": _error(lambda: s2.load_state_dict(sd[key]))}
        if how == "keyed":
            fsdp_train(m2, [2], rank)
            got.update(resume_bitwise=full_bytes(m2) == full_bytes(model), iter=s2.iter)
        s2.close()
        res[how] = got
    return [], res


def replicas(out, rank):
    """HSDP by hand on 4 ranks, 2 replicas x 2 shards: FSDP2 over mesh["shard"], the replicas
    reduced by GradcompReplicaAllReduce over mesh["replicate"]. Records every hook call (run,
    key, op, paused, input before, output after). Runs: "fp32" (3 compressed steps, then a
    paused one, with the saved residuals before and after it), "fp16" (reduce_dtype float16:
    FSDP's sum with pre/post division, 2 compressed steps), and against native HSDP (FSDP2 over
    the 2-D mesh, the same seeds and batches) the hook paused throughout, for fp32, fp16 and a
    gradient divide factor; then the refusals."""
    import contextlib

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    replicate = mesh["replicate"].get_group()
    records, run = [], [None]

    class Recording(gct.GradcompReplicaAllReduce):
        def __call__(self, reduce_output):
            rec = {"run": run[0], "key": self.key, "op": self._op(),
                   "paused": self.state._paused, "input": reduce_output.clone()}
            records.append(rec)
            super().__call__(reduce_output)
            rec["output"] = reduce_output.clone()

    gct.fsdp.GradcompReplicaAllReduce = Recording  # what register_fsdp_replica_all_reduce makes

    def make(native, reduce_dtype=None, factor=None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 5))
        kw = {"mesh": mesh if native else mesh["shard"]}
        if reduce_dtype is not None:
            kw["mp_policy"] = MixedPrecisionPolicy(reduce_dtype=reduce_dtype)
        for layer in (model[0], model[2]):
            fully_shard(layer, **kw)
        fully_shard(model, **kw)
        if factor is not None:
            for m in (model[0], model[2], model):
                m.set_gradient_divide_factor(factor)
        return model

    def hooked(name, reduce_dtype=None, factor=None):
        run[0] = name
        model = make(False, reduce_dtype, factor)
        state = gct.GradcompState(process_group=replicate, backend="cpu", config=config())
        n = gct.register_fsdp_replica_all_reduce(model, state)
        return model, state, n

    def train(model, steps, pause=None):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in steps:
            x, y = batch(step, rank, 32)
            opt.zero_grad(set_to_none=True)
            with pause.paused() if pause is not None else contextlib.nullcontext():
                nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    def full(model):
        return torch.cat([p.full_tensor().detach().flatten() for p in model.parameters()])

    def local_hash(model):
        return hashlib.sha256(b"".join(p.to_local().detach().numpy().tobytes()
                                       for p in model.parameters())).hexdigest()

    res = {}
    model, state, res["registered"] = hooked("fp32")
    train(model, range(3))
    res["stats"] = state.stats()
    blob = state.state_dict()["gradcomp"]
    train(model, [3], pause=state)
    res["paused_stats"] = state.stats()
    res["paused_kept_residuals"] = state.state_dict()["gradcomp"] == blob
    res["local_hash"] = local_hash(model)
    res["full_hash"] = hashlib.sha256(full(model).numpy().tobytes()).hexdigest()
    res["fp32_keyed_by"] = state.state_dict()["keyed_by"]

    hook = gct.GradcompReplicaAllReduce(state, "refusals")
    shard_state = gct.GradcompState(process_group=mesh["shard"].get_group(), backend="cpu",
                                    config=config())
    native = make(True)
    res["refusals"] = {
        "device": _error(lambda: hook(torch.zeros(8, device="meta"))),
        "dtype": _error(lambda: hook(torch.zeros(8, dtype=torch.float64))),
        "strided": _error(lambda: hook(torch.zeros(16)[::2])),
        "both_roles": _error(lambda: gct.GradcompReduceScatter(state, "0")),
        "shard_group": _error(lambda: gct.register_fsdp_replica_all_reduce(make(False),
                                                                           shard_state)),
        "native_hsdp": _error(lambda: gct.register_fsdp_replica_all_reduce(
            native, gct.GradcompState(process_group=replicate, backend="cpu", config=config()))),
    }
    # Both of a module's collectives through gradcomp, one state per group: DGC's momentum
    # correction on both would apply the velocity twice (refused, in either order); on one
    # of them it is accepted, as on both where one's momentum is 0 (no velocity to apply).
    def dgc_state(group, **kw):
        return gct.GradcompState(process_group=group, backend="cpu", config=gradcomp.Config(
            from_env=False, method="dgc", min_elements=0, auto_tune=0, **kw))

    def both(first, second):
        model = make(False)
        first[0](model, first[1])
        return second[0](model, second[1])

    shard = mesh["shard"].get_group()
    rs, ar = gct.register_fsdp_reduce_scatter, gct.register_fsdp_replica_all_reduce
    res["refusals"]["two_velocities_hook_last"] = _error(
        lambda: both((rs, dgc_state(shard)), (ar, dgc_state(replicate))))
    res["refusals"]["two_velocities_rs_last"] = _error(
        lambda: both((ar, dgc_state(replicate)), (rs, dgc_state(shard))))
    res["one_velocity_registered"] = [
        both((rs, dgc_state(shard)), (ar, dgc_state(replicate, momentum_correction=0))),
        both((ar, dgc_state(replicate)), (rs, gct.GradcompState(
            process_group=shard, backend="cpu", config=config()))),
        both((rs, dgc_state(shard)), (ar, dgc_state(replicate, momentum=0.0)))]
    state.close()

    model, state, _ = hooked("fp16", torch.float16)
    train(model, range(2))
    res["fp16_stats"] = state.stats()
    state.close()

    # The hook paused throughout (torch's all_reduce) against native HSDP: FSDP's division
    # combined with the hook's op must give native HSDP's gradient.
    res["native"] = {}
    for name, dtype, factor in (("fp32", None, None), ("fp16", torch.float16, None),
                                ("factor", None, 2.0)):
        model, state, _ = hooked(f"paused-{name}", dtype, factor)
        train(model, range(3), pause=state)
        ref = make(True, dtype, factor)
        train(ref, range(3))
        a, b = full(model), full(ref)
        res["native"][name] = {"equal": torch.equal(a, b),
                               "max_abs": float((a - b).abs().max()),
                               "max_ref": float(b.abs().max()),
                               "comm_made": state._comm is not None}
        state.close()
    return records, res


def subgroups(out, rank):
    """Two states on overlapping subgroups A=[0,1] and B=[0,2] (3 ranks): rank 0 makes B's comm
    before A's, ranks 1 and 2 only their own. Each group's store key must number its own comms;
    a process-wide number makes rank 0 publish A's root under another key than rank 1 waits
    for (a hang: here, with the timeouts cut, an error after 20 s)."""
    import datetime

    dist.distributed_c10d._get_default_store().set_timeout(datetime.timedelta(seconds=20))
    groups = {"A": dist.new_group([0, 1]), "B": dist.new_group([0, 2])}
    cfg = gradcomp.Config(from_env=False, method="qsgd", bits=4, min_elements=0, auto_tune=0,
                          cpu_timeout_sec=20)
    order = {0: ["B", "A"], 1: ["A"], 2: ["B"]}[rank]
    made, sums = [], {}
    for name in order:
        state = gct.GradcompState(groups[name], backend="cpu", config=cfg)
        comm = state.comm(torch.device("cpu"))
        x = torch.full((4096,), float(rank + 1))
        comm.allreduce(x)
        sums[name] = float(x[0])
        made.append(name)
        state.close()
    return [], {"made": made, "sums": sums}


def ddp_group(out, rank):
    """4 ranks, DDP on the pairs {0,1} and {2,3}, the GradcompState made without module=.
    Phase "world": every state over the world (the default), so the hook averaged over 4 ranks
    where DDP reduces over 2, silently; then the refused state on a new DDP of the model.
    Phase "mixed": rank 1's state over the world, the others' over their DDP's pair: rank 0
    must not wait for rank 1 in a collective after rank 1 refused. Each phase records what its first step said on each rank, and the gradient."""
    import datetime

    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.distributed_c10d._get_default_store().set_timeout(datetime.timedelta(seconds=20))
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    mine = pairs[rank // 2]
    res = {}
    for phase, group in (("world", None), ("mixed", None if rank == 1 else mine)):
        torch.manual_seed(0)
        model = nn.Linear(64, 64, bias=False)
        d = DDP(model, process_group=mine)
        state = gct.GradcompState(group, start_iter=0, layer_min_size=0, backend="cpu",
                                  config=config())
        d.register_comm_hook(state, gct.gradcomp_hook)
        x = torch.full((2, 64), float(rank + 1))
        t0 = time.monotonic()
        err = _error(lambda: d(x).sum().backward())
        res[phase] = {"error": err, "seconds": round(time.monotonic() - t0, 3),
                      "grad": float(model.weight.grad[0, 0]) if err is None else None}
        if phase == "world":
            # The refused state registered again, on a new DDP of the model (as after an
            # error): still refused, not averaged over the state's ranks.
            model.weight.grad = None
            d = DDP(model, process_group=mine)
            d.register_comm_hook(state, gct.gradcomp_hook)
            err = _error(lambda: d(x).sum().backward())
            res["world_again"] = {"error": err, "grad": float(model.weight.grad[0, 0])
                                  if err is None else None}
        state.close()
    return [], res


def ddp_register(out, rank):
    """gct.register_ddp_hook on 2 ranks, each DDP's group recorded on the state. "trained": the
    same model, batches and optimizer through register_comm_hook and through the helper (the
    parameters' hashes). Then states over the world on DDPs of each rank alone (the state's
    calls would average over both ranks, silently), each step recording what it said and the
    gradient: "frozen", registered and then gc.freeze() (which hides the DDP from the
    gc walk register_comm_hook leaves to the state); "moved", a step on a DDP over the world,
    then the state registered on a new DDP of the model over this rank alone; "two", both DDPs
    registered before either steps, stepped in turn; "helper_and_plain", the same with the
    second registered by register_comm_hook; "two_models", one state (module=the first)
    registered on DDPs of two models over the world. Then torch's fp16_compress_wrapper: through
    the helper's wrap= and through register_comm_hook, trained ("trained") and after gc.freeze()
    on a DDP of this rank alone ("wrapped_frozen_*"); a wrapped helper's DDP beside one of
    register_comm_hook; wraps that return no hook or pass another state; and a hook of one's own
    registered with None as DDP's state ("own_hook_other_state")."""
    import datetime
    import gc

    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.distributed_c10d._get_default_store().set_timeout(datetime.timedelta(seconds=20))
    alone = [dist.new_group([0]), dist.new_group([1])][rank]
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import fp16_compress_wrapper

    res = {}
    hashes = {}
    for how in ("register_comm_hook", "register_ddp_hook", "register_comm_hook_fp16",
                "register_ddp_hook_fp16"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 40, bias=False),
                              nn.ReLU(), nn.Linear(40, 5))
        d = DDP(model, bucket_cap_mb=0.005)
        st = gct.GradcompState(module=model, start_iter=START, backend="cpu", config=config())
        if how == "register_ddp_hook":
            gct.register_ddp_hook(d, st)
        elif how == "register_ddp_hook_fp16":
            gct.register_ddp_hook(d, st, wrap=fp16_compress_wrapper)
        elif how == "register_comm_hook_fp16":
            d.register_comm_hook(st, fp16_compress_wrapper(gct.gradcomp_hook))
        else:
            d.register_comm_hook(st, gct.gradcomp_hook)
        train(d, torch.optim.SGD(d.parameters(), lr=0.1, momentum=0.9), range(STEPS), rank)
        hashes[how] = hashlib.sha256(param_bytes(model.parameters())).hexdigest()
        res[how + "_compressed_calls"] = st.counters["compressed_calls"]
        st.close()
    res["trained"] = hashes

    x = torch.full((2, 64), float(rank + 1))

    def step(model, d):
        model.weight.grad = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            err = _error(lambda: d(x).sum().backward())
        got = {"error": err, "grad": float(model.weight.grad[0, 0]) if err is None else None}
        unchecked = [str(w.message) for w in caught if "found no DDP" in str(w.message)]
        return dict(got, unchecked=unchecked) if unchecked else got

    def linear():
        torch.manual_seed(0)
        return nn.Linear(64, 64, bias=False)

    def fresh(module):  # a state over the world
        return gct.GradcompState(None, module=module, start_iter=0, layer_min_size=0,
                                 backend="cpu", config=config())

    model = linear()
    st = fresh(model)
    d = DDP(model, process_group=alone)
    gct.register_ddp_hook(d, st)
    gc.freeze()
    try:
        res["frozen"] = step(model, d)
    finally:
        gc.unfreeze()
    del d  # refused mid-backward, its reducer is done with
    st.close()

    model = linear()
    st = fresh(model)
    d = DDP(model)
    gct.register_ddp_hook(d, st)
    res["moved"] = [step(model, d)]
    d = DDP(model, process_group=alone)
    gct.register_ddp_hook(d, st)
    res["moved"].append(step(model, d))
    del d
    st.close()

    model = linear()
    st = fresh(model)
    a, b = DDP(model), DDP(model, process_group=alone)
    gct.register_ddp_hook(a, st)
    gct.register_ddp_hook(b, st)
    res["two"] = [step(model, a), step(model, b)]
    del a, b
    st.close()

    model = linear()
    st = fresh(model)
    a, b = DDP(model), DDP(model, process_group=alone)
    gct.register_ddp_hook(a, st)
    b.register_comm_hook(st, gct.gradcomp_hook)
    res["helper_and_plain"] = [step(model, a), step(model, b)]
    del a, b
    st.close()

    model, other = linear(), linear()
    st = fresh(model)
    a, b = DDP(model), DDP(other)
    gct.register_ddp_hook(a, st)
    gct.register_ddp_hook(b, st)
    res["two_models"] = [step(model, a), step(other, b)]
    del a, b
    st.close()

    # torch's hook wrappers through the helper (wrap=): the DDP named at each call, so checked
    # after gc.freeze() too, where the gc walk of register_comm_hook(state, wrapper(hook))
    # finds nothing.
    for how in ("helper", "register_comm_hook"):
        model = linear()
        st = fresh(model)
        d = DDP(model, process_group=alone)
        if how == "helper":
            gct.register_ddp_hook(d, st, wrap=fp16_compress_wrapper)
        else:
            d.register_comm_hook(st, fp16_compress_wrapper(gct.gradcomp_hook))
        gc.freeze()
        try:
            res["wrapped_frozen_" + how] = step(model, d)
        finally:
            gc.unfreeze()
        del d
        st.close()
    # A wrapped helper's DDP, then one registered by register_comm_hook: the latter's gc walk
    # passes by the wrapped hook (its calls name their DDP).
    model = linear()
    st = fresh(model)
    a, b = DDP(model), DDP(model, process_group=alone)
    gct.register_ddp_hook(a, st, wrap=fp16_compress_wrapper)
    b.register_comm_hook(st, gct.gradcomp_hook)
    res["wrapped_helper_and_plain"] = [step(model, a), step(model, b)]
    del a, b
    # A wrap that returns no hook, or calls the hook with another state.
    d = DDP(model)
    res["wrap_returns_no_hook"] = _error(lambda: gct.register_ddp_hook(d, st, wrap=lambda h: 5))
    gct.register_ddp_hook(d, st, wrap=lambda h: lambda state, bucket: h({"mine": st}, bucket))
    res["wrap_passes_another_state"] = step(model, d)
    del d
    st.close()
    # A hook of one's own registered with None as DDP's state, calling gradcomp_hook with a
    # state it holds: the state cannot find the DDP to check (it averages over the world where
    # DDP reduces over this rank alone) and says so.
    model = linear()
    st = fresh(model)
    d = DDP(model, process_group=alone)
    d.register_comm_hook(None, lambda state, bucket: gct.gradcomp_hook(st, bucket))
    res["own_hook_other_state"] = step(model, d)
    del d
    st.close()
    return [], res


def compose(out, rank):
    """gradcomp's DDP hook with torch's own tools, as test_torch.CpuBackendTorchCompositions
    checks them. "wrapped": fp16_compress_wrapper and bf16_compress_wrapper through
    register_ddp_hook(wrap=), every hook call recorded inside the wrapper (the half-precision
    bucket before, its result after, the plan) for a serial reference. "zero": the parameters
    after momentum SGD through ZeroRedundancyOptimizer and through torch.optim.SGD. "join":
    uneven inputs (rank 0 five batches, rank 1 three) under Join, DDP without a hook against
    the hook at full precision (layer_min_size above every parameter), and compressed through
    fp16_compress_wrapper: the parameters' hashes, the step counters and the compressed
    calls."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import (
        bf16_compress_wrapper, fp16_compress_wrapper)
    from torch.distributed.algorithms.join import Join
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 40, bias=False),
                             nn.ReLU(), nn.Linear(40, 5))

    def recorded(records):
        def wrap(hook):
            def recording(state, bucket):
                compressed = state.iter >= state.start_iter
                rec = {"compressed": compressed, "input": bucket.buffer().clone()}
                records.append(rec)
                fut = hook(state, bucket)
                if compressed:
                    plan = state._plans[tuple(id(p) for p in bucket.parameters())]
                    rec.update(comp=plan["comp"], key=plan["key"], comp_n=plan["comp_n"])

                def done(f):
                    rec["output"] = f.value().clone()
                    return f.value()

                return fut.then(done)
            return recording
        return wrap

    records, res = {}, {}
    for name, wrapper in (("fp16", fp16_compress_wrapper), ("bf16", bf16_compress_wrapper)):
        records[name] = []
        model = make()
        d = DDP(model, bucket_cap_mb=0.005)
        st = gct.GradcompState(module=model, start_iter=START, backend="cpu", config=config())
        gct.register_ddp_hook(d, st, wrap=lambda h, w=wrapper: w(recorded(records[name])(h)))
        train(d, torch.optim.SGD(d.parameters(), lr=0.1), range(4), rank)
        res[name + "_compressed_calls"] = st.counters["compressed_calls"]
        st.close()

    hashes = {}
    for how in ("sgd", "zero"):
        model = make()
        d = DDP(model, bucket_cap_mb=0.005)
        st = gct.GradcompState(module=model, start_iter=START, backend="cpu", config=config())
        gct.register_ddp_hook(d, st)
        opt = (ZeroRedundancyOptimizer(d.parameters(), optimizer_class=torch.optim.SGD, lr=0.1,
                                       momentum=0.9) if how == "zero"
               else torch.optim.SGD(d.parameters(), lr=0.1, momentum=0.9))
        train(d, opt, range(STEPS), rank)
        hashes[how] = hashlib.sha256(param_bytes(model.parameters())).hexdigest()
        res[how + "_compressed_calls"] = st.counters["compressed_calls"]
        st.close()
    res["zero"] = hashes

    res["join"] = {}
    for how in ("plain", "full_precision", "fp16"):
        model = make()
        d = DDP(model, bucket_cap_mb=0.005)
        st = None
        if how != "plain":
            st = gct.GradcompState(module=model, start_iter=START, backend="cpu", config=config(),
                                   **({"layer_min_size": 10 ** 9} if how == "full_precision"
                                      else {}))
            gct.register_ddp_hook(d, st, wrap=fp16_compress_wrapper if how == "fp16" else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sent uncompressed", as meant at full precision
            with Join([d]):
                train(d, torch.optim.SGD(d.parameters(), lr=0.1), range(5 if rank == 0 else 3),
                      rank)
        got = {"hash": hashlib.sha256(param_bytes(model.parameters())).hexdigest()}
        if st is not None:
            got.update(iter=st.iter, compressed_calls=st.counters["compressed_calls"])
            st.close()
        res["join"][how] = got
    return records, res


def restart(out, rank):
    """An in-process restart: destroy_process_group, then init_process_group again on a new
    prefix of the same store (as in-process restart frameworks do), after a life in which rank
    1 failed before a second state's first compressed call, so that only rank 0 tried to make
    that comm (and timed out). Life 2's fresh state, loaded from life 1's checkpoint, must come
    up on both ranks and train bit for bit as life 1's state went on without the restart. (The
    store keys numbered across lives, rank 0 published life 2's root under another number than
    rank 1 waited for: a hang, here an error after the 10 s store timeout.) Rank 0 deletes the
    key of each comm made (a world restarted on the same store numbers from 0 again and would
    read it), and marks the key of a creation that failed, so that a peer still to read it
    raises at once instead of waiting out the store's timeout."""
    import datetime

    from torch.nn.parallel import DistributedDataParallel as DDP

    from gradcomp.torch import _group

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 5))

    def wrap(model):
        d = DDP(model)
        st = gct.GradcompState(module=model, start_iter=0, backend="cpu", config=gradcomp.Config(
            from_env=False, method="qsgd", bits=4, min_elements=0, auto_tune=0,
            cpu_timeout_sec=10))
        d.register_comm_hook(st, gct.gradcomp_hook)
        return d, st, torch.optim.SGD(d.parameters(), lr=0.1)

    def keys_left():  # the world's comm keys (gradcomp.torch._group.store_key) in the store
        store = dist.distributed_c10d._get_default_store()
        name = dist.group.WORLD.group_name
        return [n for n in range(3) if store.check([f"gradcomp/socket_root/0-1/{name}/{n}"])]

    res = {}
    model = make()
    d, state, opt = wrap(model)
    train(d, opt, range(2), rank)
    ckpt = {"model": {k: v.clone() for k, v in model.state_dict().items()},
            "gradcomp": state.state_dict()}
    train(d, opt, range(2, 4), rank)  # life 1 going on: the reference
    res["ref_hash"] = hashlib.sha256(param_bytes(model.parameters())).hexdigest()
    state.close()
    other = gct.GradcompState(backend="cpu", config=gradcomp.Config(
        from_env=False, method="qsgd", min_elements=0, auto_tune=0, cpu_timeout_sec=1))
    if rank == 0:  # rank 1 failed before this state's first compressed call
        res["life1_error"] = _error(lambda: other.comm(torch.device("cpu")))
        res["life1_keys_left"] = keys_left()
        # A peer reaching that comm's creation late: rank 0's failure, at once.
        store = dist.distributed_c10d._get_default_store()
        key = f"gradcomp/socket_root/0-1/{dist.group.WORLD.group_name}/1"
        t0 = time.monotonic()
        try:
            _group.check_key_value(store.get(key), key)
            res["late_peer_error"] = None
        except RuntimeError as e:
            res["late_peer_error"] = str(e)
        res["late_peer_s"] = time.monotonic() - t0
    other.abort()
    base = dist.distributed_c10d._get_default_store()
    while hasattr(base, "underlying_store"):
        base = base.underlying_store
    dist.destroy_process_group()
    dist.init_process_group("gloo", store=dist.PrefixStore("restart-1", base), rank=rank,
                            world_size=2, timeout=datetime.timedelta(seconds=60))
    # A key no rank writes fails in 10 s (the gloo group's own timeout is for a loaded box).
    dist.distributed_c10d._get_default_store().set_timeout(datetime.timedelta(seconds=10))
    model = make()
    model.load_state_dict(ckpt["model"])
    d, state, opt = wrap(model)
    state.load_state_dict(ckpt["gradcomp"])
    if rank == 0:  # rank 1 reaches the comm's creation first: it reads the key before rank 0
        time.sleep(1)  # writes it
    train(d, opt, range(2, 4), rank)
    res["hash"] = hashlib.sha256(param_bytes(model.parameters())).hexdigest()
    res["compressed_calls"] = state.counters["compressed_calls"]
    if rank == 0:
        res["life2_keys_left"] = keys_left()
    state.close()
    return [], res


def dgc(out, rank):
    """DGC's momentum correction through state.param_groups: gradcomp keeps u = m*u + g for
    the compressed parameters, the optimizer's group for them has momentum 0. At density 1
    without momentum masking every step sends all of u, so the run must follow momentum SGD
    on plain DDP (up to the order of the sums: sum of u_r against u of the sum)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    def make():
        # One compressed parameter (0.weight, 2048 elements): its key, and so its velocity,
        # survives DDP's bucket rebuild after step 0 (a bucket whose compressed parameters
        # come in another order gets a new key and a fresh state), so compression can start
        # at step 0 and the run follows momentum SGD from the first step.
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 5))

    m = 0.9
    res = {}
    ref = make()
    d_ref = DDP(ref)
    o_ref = torch.optim.SGD(d_ref.parameters(), lr=0.05, momentum=m)
    runs = {"ref": (d_ref, o_ref)}
    # Weight decay large enough that 6 steps tell its momentum apart from wd / (1 - m).
    wd = 0.05
    d_wd = DDP(make())
    runs["ref_wd"] = (d_wd, torch.optim.SGD(d_wd.parameters(), lr=0.05, momentum=m,
                                            weight_decay=wd))
    states = []
    # "groups": as documented; "twice": every parameter with the optimizer's momentum too,
    # the mistake param_groups exists to prevent (the test checks it is told apart);
    # "passed": DGC at 0.1% with masking, but every call under min_elements, so gradcomp
    # passes it through: it must still carry gradcomp's velocity (momentum SGD again).
    # "wd_exact": param_groups(weight_decay=wd) with gct.DGCSGD, momentum SGD with decay
    # exactly; "wd_approx": the same groups with torch.optim.SGD (wd / (1 - m), no momentum).
    for name in ("groups", "twice", "passed", "wd_exact", "wd_approx"):
        model = make()
        d = DDP(model, bucket_cap_mb=100)
        dense = dict(density=1.0, momentum_masking=0, min_elements=0)
        passed = dict(density=0.001, momentum_masking=1, min_elements=1 << 20)
        st = gct.GradcompState(module=model, start_iter=0, backend="cpu",
                               config=gradcomp.Config(from_env=False, method="dgc", momentum=m,
                                                      auto_tune=0,
                                                      **(passed if name == "passed" else dense)))
        d.register_comm_hook(st, gct.gradcomp_hook)
        groups = st.param_groups(d.parameters(),
                                 weight_decay=wd if name.startswith("wd_") else None)
        if name == "groups":
            res["membership"] = [[(n, g["momentum"]) for n, p in model.named_parameters()
                              if any(p is q for q in g["params"])] for g in groups]
        if name == "twice":
            opt = torch.optim.SGD(d.parameters(), lr=0.05, momentum=m)
        elif name == "wd_exact":
            opt = gct.DGCSGD(groups, lr=0.05)
        else:
            opt = torch.optim.SGD(groups, lr=0.05)
        runs[name] = (d, opt)
        states.append(st)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(6):
            x, y = batch(step, rank, 32)
            for d, opt in runs.values():
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(d(x), y).backward()
                opt.step()
    res["passed_warnings"] = [str(w.message) for w in caught if "uncompressed" in str(w.message)]
    for name, (d, _) in runs.items():
        res[name] = [p.detach().clone() for p in d.parameters()]
    res["stats"] = states[0].stats()
    res["passed_stats"] = states[2].stats()
    qsgd = gct.GradcompState(module=ref, backend="cpu", config=config())
    res["qsgd_groups"] = len(qsgd.param_groups(ref.parameters()))
    # Weight decay: the full-precision group's wd, the compressed group's wd / (1 - m).
    res["wd_groups"] = [(len(g["params"]), g["momentum"], g["weight_decay"])
                        for g in states[0].param_groups(ref.parameters(), weight_decay=1e-4)]
    res["qsgd_wd"] = [g["weight_decay"] for g in qsgd.param_groups(ref.parameters(),
                                                                    weight_decay=1e-4)]
    off = gct.GradcompState(module=ref, backend="cpu", method="dgc", momentum_correction=0,
                            min_elements=0, auto_tune=0)
    res["uncorrected_groups"] = len(off.param_groups(ref.parameters()))
    for st in states + [qsgd, off]:
        st.close()
    return [res], {"param_hash": hashlib.sha256(param_bytes(runs["groups"][0].parameters()))
                   .hexdigest()}


def _counting_scaler():
    """A GradScaler("cpu") from 2^10 that grows x2 every 2 steps, its get_scale() counting the
    reads gradcomp makes: (the scaler, its own uncounted get_scale, the count)."""
    sc = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)
    get, count = sc.get_scale, [0]

    def counted():
        count[0] += 1
        return get()
    sc.get_scale = counted
    return sc, get, count


def _scaled_step(loss, opt, sc, get, step):
    """One training step: plain without a scaler; with one, scaled and stepped through it, its
    scale cut to 1/8 after step 5 (update(new_scale)). The scale the step's gradients carried."""
    if sc is None:
        loss.backward()
        opt.step()
        return 1.0
    sc.scale(loss).backward()
    used = get()
    sc.step(opt)
    if step == 5:
        sc.update(new_scale=used / 8)
    else:
        sc.update()
    return used


def scaler(out, rank):
    """fp16-style loss scaling: GradScaler("cpu") whose scale grows x2 every 2 steps and is
    cut to 1/8 once (update(new_scale)), with GradcompState(grad_scaler=...): the scaled
    gradients' results, unscaled by the scaler, must give parameters bit for bit those of the
    unscaled run, for QSGD and for DGC with clipping; the same scaled run without grad_scaler
    must not. The state reads the scale once per step, not per bucket."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    def make():
        torch.manual_seed(0)
        # The 512x512 layer (1 MB) fills DDP's first bucket alone: several compressed buckets.
        return nn.Sequential(nn.Linear(32, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                             nn.Linear(512, 5))

    methods = {"qsgd": dict(method="qsgd", bits=4),
               "dgc": dict(method="dgc", density=0.05, clip_norm=0.05, momentum_correction=1)}
    res, reads = {}, {}
    for mname, settings in methods.items():
        hashes = {}
        for run in ("plain", "scaled", "unfollowed"):
            model = make()
            d = DDP(model, bucket_cap_mb=0.01)
            sc, get, count = _counting_scaler() if run != "plain" else (None, None, [0])
            used = []
            st = gct.GradcompState(module=model, start_iter=0, backend="cpu",
                                   grad_scaler=sc if run == "scaled" else None,
                                   layer_min_size=256,
                                   config=gradcomp.Config(from_env=False, min_elements=0,
                                                          auto_tune=0, **settings))
            d.register_comm_hook(st, gct.gradcomp_hook)
            opt = torch.optim.SGD(d.parameters(), lr=0.05)
            caught = warnings.catch_warnings(record=True)
            seen = caught.__enter__()
            warnings.simplefilter("always")
            for step in range(8):
                if run == "unfollowed" and step == 6:
                    # The scaler given late: the residuals so far recorded no scale (warned).
                    st.grad_scaler = sc
                x, y = batch(step, rank, 32)
                opt.zero_grad(set_to_none=True)
                used.append(_scaled_step(nn.functional.cross_entropy(d(x), y), opt, sc, get,
                                         step))
            caught.__exit__(None, None, None)
            res[f"{mname}_{run}_unrecorded_warnings"] = sum(
                "record no loss scale" in str(w.message) for w in seen)
            hashes[run] = hashlib.sha256(param_bytes(d.parameters())).hexdigest()
            if run == "scaled":
                reads[mname] = count[0]
                res[mname + "_final_scale"] = st._comm.grad_scale
                res[mname + "_scales"] = used
                res[mname + "_buckets"] = st.stats()["compressed_calls"] // 8
            st.close()
        res[mname + "_scaled_equal"] = hashes["scaled"] == hashes["plain"]
        res[mname + "_unfollowed_equal"] = hashes["unfollowed"] == hashes["plain"]
    res["reads"] = reads
    # FSDP2 (three modules, each a reduce-scatter per step) with the same scaler history.
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    hashes = {}
    for run in ("plain", "scaled", "unfollowed"):
        model = make()
        for layer in (model[0], model[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        sc, get, count = _counting_scaler() if run != "plain" else (None, None, [0])
        st = gct.GradcompState(backend="cpu", grad_scaler=sc if run == "scaled" else None,
                               config=config())
        gct.register_fsdp_reduce_scatter(model, st)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for step in range(8):
            x, y = batch(step, rank, 32)
            opt.zero_grad(set_to_none=True)
            _scaled_step(nn.functional.cross_entropy(model(x), y), opt, sc, get, step)
        hashes[run] = hashlib.sha256(full_bytes(model)).hexdigest()
        if run == "scaled":
            res["fsdp_reads"] = count[0]
            res["fsdp_calls"] = st.stats()["compressed_calls"]
        st.close()
    res["fsdp_scaled_equal"] = hashes["scaled"] == hashes["plain"]
    res["fsdp_unfollowed_equal"] = hashes["unfollowed"] == hashes["plain"]
    return [], res


class _Bucket:
    """Enough of DDP's GradBucket for a hook call that must be refused before it reads it."""

    def __init__(self, t):
        self.t = t

    def buffer(self):
        return self.t


def disagree(out, rank):
    """Ranks that disagree on what only each knows of itself, on real DDP (2 ranks), each case
    on a new model, DDP and state over a gloo group whose collectives time out after 20 s (a
    mismatch fails there, not after gloo's 30 minutes): "frozen", a compressed weight frozen on
    rank 0 only after a step (DDP averages the gradient of a parameter any rank used; the
    hook zeroed rank 0's slice, so the ranks' gradients differed); "frozen_all", the same
    weight frozen on both (no gradient, no error); "paused", rank 0 inside paused() at the
    third step while rank 1 compresses (a collective mismatch: gloo aborted rank 1);
    "paused_warmup", the same at the first step, before compression starts; "loaded", rank 0
    loads a state dict of a later step after the first uncompressed step (it compresses while
    rank 1 does not); "fsdp_paused", FSDP2's reduce-scatter inside paused() on rank 0 only;
    "fsdp_loaded", rank 0 alone loads an FSDP2 state dict of a later step after the first step.
    Per case, what the step raised on this rank and the weight's gradient."""
    import datetime

    from torch.nn.parallel import DistributedDataParallel as DDP

    group = dist.new_group(timeout=datetime.timedelta(seconds=20))
    cfg = gradcomp.Config(from_env=False, method="qsgd", bits=4, min_elements=0, auto_tune=0,
                          cpu_timeout_sec=20)

    def make(start_iter):
        torch.manual_seed(0)
        # 2.weight (2560) compressed, the rest in full precision.
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 40, bias=False))
        d = DDP(model, process_group=group, find_unused_parameters=True)
        st = gct.GradcompState(group, module=model, start_iter=start_iter, backend="cpu",
                               config=cfg)
        gct.register_ddp_hook(d, st)
        return model, d, st

    def step(d, s):
        x = batch(s, rank, 32)[0]
        d.zero_grad(set_to_none=True)
        d(x).square().sum().backward()

    res = {}
    ckpt = None
    for case in ("frozen", "frozen_all", "paused", "paused_warmup", "loaded"):
        model, d, st = make(3 if case == "loaded" else 0 if case != "paused_warmup" else 1)
        if case == "loaded":
            _, old_d, old = make(0)
            for s in range(4):
                step(old_d, s)
            ckpt = old.state_dict()
            old.close()
        first = 0 if case == "paused_warmup" else 2 if case == "paused" else 1
        for s in range(first):
            step(d, s)
        if case.startswith("frozen") and (rank == 0 or case == "frozen_all"):
            model[2].weight.requires_grad_(False)
        if case == "loaded" and rank == 0:
            st.load_state_dict(ckpt)
        pause = st.paused() if case.startswith("paused") and rank == 0 else \
            contextlib.nullcontext()
        with pause:
            err = _error(lambda: step(d, first))
        g = model[2].weight.grad
        res[case] = {"error": err, "grad": None if g is None else float(g.abs().sum())}
        st.close()

    # FSDP2's reduce-scatter inside paused() on rank 0 only, at its second step.
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 5))
    fully_shard(model, mesh=DeviceMesh.from_group(group, "cpu"))
    st = gct.GradcompState(group, backend="cpu", config=cfg)
    gct.register_fsdp_reduce_scatter(model, st)
    for s in range(2):
        pause = st.paused() if s == 1 and rank == 0 else contextlib.nullcontext()
        with pause:
            err = _error(lambda: model(batch(s, rank, 32)[0]).sum().backward())
    res["fsdp_paused"] = {"error": err}
    st.close()

    # FSDP2: a state dict of step 3 loaded on rank 0 only, after the first step of a new run.
    def fsdp_run():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 5))
        fully_shard(m, mesh=DeviceMesh.from_group(group, "cpu"))
        s_ = gct.GradcompState(group, backend="cpu", config=cfg)
        gct.register_fsdp_reduce_scatter(m, s_)
        return m, s_

    old_model, old = fsdp_run()
    for s in range(3):
        old_model(batch(s, rank, 32)[0]).sum().backward()
    ckpt = old.state_dict()
    old.close()
    model, st = fsdp_run()
    model(batch(0, rank, 32)[0]).sum().backward()
    if rank == 0:
        st.load_state_dict(ckpt)
    err = _error(lambda: model(batch(1, rank, 32)[0]).sum().backward())
    res["fsdp_loaded"] = {"error": err}
    st.close()
    return [], res


def unused(out, rank):
    """DDP(find_unused_parameters=True) with a compressed weight p used at steps 0-2, unused on
    every rank at step 3, unused on rank 0 only at step 4 (used globally), then UNUSED_FLUSH
    steps whose loss is 0 (every gradient 0, every parameter used), which drain top-k's
    (select="exact") residual exactly. Per case (gradient_as_bucket_view and
    zero_grad(set_to_none) both ways; the hook registered with register_comm_hook; a checkpoint
    after step 3 resumed in a new process's state), by step: this rank's gradient of p as the
    hook got it, p.grad after the backward (0 where None) and p's slice of the hook's result."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    cfg = gradcomp.Config(from_env=False, method="topk", density=0.05, select="exact",
                          min_elements=0, auto_tune=0)

    def make(bav, how, rec):
        torch.manual_seed(0)
        m = UnusedNet()
        d = DDP(m, find_unused_parameters=True, gradient_as_bucket_view=bav)
        st = gct.GradcompState(module=m, start_iter=1, backend="cpu", config=cfg)
        recording = recording_p(m, rec)
        if how == "register_comm_hook":
            d.register_comm_hook(st, recording(gct.gradcomp_hook))
        else:
            gct.register_ddp_hook(d, st, wrap=recording)
        return m, d, st

    def step(m, d, s, none, rec, use=True):
        x = unused_input(m, s, rank)
        d.zero_grad(set_to_none=none)
        d(x).square().sum().backward()
        if use:
            g = m.p.grad
            rec["grad"].append(torch.zeros(m.p.numel()) if g is None else g.reshape(-1).clone())
            rec["grad_none"].append(g is None)

    # The settling callbacks that ran (one per backward under find_unused_parameters, none
    # without it).
    import gradcomp.torch.ddp as gddp

    settled = [0]
    settle = getattr(gddp, "_settle_unused", None)

    def counted(ref):
        settled[0] += 1
        return settle(ref)

    if settle is not None:
        gddp._settle_unused = counted
    res = {}
    torch.manual_seed(0)
    m = UnusedNet()
    d = DDP(m)  # every parameter used at every step: no find_unused_parameters
    st = gct.GradcompState(module=m, start_iter=1, backend="cpu", config=cfg)
    gct.register_ddp_hook(d, st)
    for s in range(3):
        d(torch.randn(8, 32)).square().sum().backward()
    res["settled_without_find_unused"] = settled[0]
    st.close()
    steps = UNUSED_AT + 2 + UNUSED_FLUSH
    cases = [(f"bav{int(bav)}_none{int(none)}", bav, none, "wrap")
             for bav in (False, True) for none in (True, False)]
    cases += [("register_comm_hook", False, True, "register_comm_hook"),
              ("resumed", False, True, "wrap")]
    for name, bav, none, how in cases:
        rec = {"input": [], "output": [], "grad": [], "grad_none": []}
        m, d, st = make(bav, how, rec)
        for s in range(steps if name != "resumed" else UNUSED_AT + 1):
            step(m, d, s, none, rec)
        if name == "resumed":
            ckpt = st.state_dict()
            rec["carried"] = len(ckpt.get("carry", []))
            st.close()
            n_in, n_out = len(rec["input"]), len(rec["output"])
            m, d, st = make(bav, how, rec)
            with st.paused():  # DDP regroups its buckets after a new process's first step
                step(m, d, steps, none, rec, use=False)
            del rec["input"][n_in:], rec["output"][n_out:]
            st.load_state_dict(ckpt)
            for s in range(UNUSED_AT + 1, steps):
                step(m, d, s, none, rec)
        st.close()
        rec["settled"], settled[0] = settled[0], 0
        res[name] = rec
    if settle is not None:
        gddp._settle_unused = settle
    return res, {}


def unused_nan(out, rank):
    """DDP(find_unused_parameters=True), a compressed weight p: at step 0 p is unused on rank 0
    only (a zero input there) and rank 1's gradient is not finite, so the averaged result of p
    (which DDP gives p on every rank, p being used globally) is not finite; steps 1 and 2 are
    plain. Per method: by step, p.grad after the backward, for the test to compare across the
    ranks (DDP's replicas must get the same gradients), and the slices kept after step 0."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(32, 16)
            self.p = nn.Parameter(torch.randn(16, 64) * 0.1)  # 1024: compressed
            self.use_p, self.bad = True, False

        def forward(self, x):
            h = self.a(x)
            if self.use_p:
                h = h @ self.p
                if self.bad:
                    h = h * float("nan")
            return h

    res = {}
    for method, kw in (("qsgd", {"bits": 4}), ("topk", {"density": 0.05, "select": "exact"})):
        cfg = gradcomp.Config(from_env=False, method=method, min_elements=0, auto_tune=0, **kw)
        torch.manual_seed(0)
        m = Net()
        d = DDP(m, find_unused_parameters=True)
        st = gct.GradcompState(module=m, backend="cpu", config=cfg, start_iter=0)
        gct.register_ddp_hook(d, st)
        grads = []
        for s in range(3):
            m.use_p = not (s == 0 and rank == 0)
            m.bad = s == 0 and rank == 1
            x = torch.randn(8, 32, generator=torch.Generator().manual_seed(100 * s + rank))
            d.zero_grad(set_to_none=True)
            d(x).square().sum().backward()
            g = m.p.grad
            grads.append(None if g is None else g.reshape(-1).tolist())
            if s == 0:
                carried = len(st._carry)
        res[method] = {"grads": grads, "carried": carried}
        st.close()
    return [], res


def unused_join(out, rank):
    """Join with DDP(find_unused_parameters=True): p used at step 0 only (unused on every rank
    at step 1, what its error feedback releases kept); rank 1 has one batch more than rank 0,
    and in that step (rank 0 joined, its shadow calls outside any backward) p is unused on rank
    1. Then both ranks train 3 more steps using p. The slices kept after the Join, and by step
    after it, p.grad on each rank."""
    from torch.distributed.algorithms.join import Join
    from torch.nn.parallel import DistributedDataParallel as DDP

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(32, 16)
            self.p = nn.Parameter(torch.randn(16, 64) * 0.1)  # 1024: compressed
            self.use_p = True

        def forward(self, x):
            h = self.a(x)
            return h @ self.p if self.use_p else h

    cfg = gradcomp.Config(from_env=False, method="topk", density=0.05, select="exact",
                          min_elements=0, auto_tune=0)
    torch.manual_seed(0)
    m = Net()
    d = DDP(m, find_unused_parameters=True)
    st = gct.GradcompState(module=m, backend="cpu", config=cfg, start_iter=0)
    gct.register_ddp_hook(d, st)

    def step(s):
        x = torch.randn(8, 32, generator=torch.Generator().manual_seed(100 * s + rank))
        d.zero_grad(set_to_none=True)
        d(x).square().sum().backward()

    with Join([d]):
        for s in range(2 + rank):
            m.use_p = s == 0
            step(s)
    carried = len(st._carry)
    m.use_p = True
    grads = []
    for s in range(3, 6):
        step(s)
        grads.append(m.p.grad.reshape(-1).tolist())
    st.close()
    return [], {"grads": grads, "carried": carried}


def unused_mixed(out, rank):
    """DDP(find_unused_parameters=True) as in unused, with settings that differ by rank: rank 0
    with gradient_as_bucket_view=True and zero_grad(set_to_none=False) (p.grad is then its slice
    of the bucket, which holds the hook's result whatever DDP does), rank 1 with
    gradient_as_bucket_view=False, or True, and set_to_none=True. Per case, by step: p's input
    slice and p.grad after the backward (0 where None), for the test to compare across the ranks
    (DDP's replicas must get the same gradients) and to check that nothing was lost."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    cfg = gradcomp.Config(from_env=False, method="topk", density=0.05, select="exact",
                          min_elements=0, auto_tune=0)
    res = {}
    for name, other_bav in (("view_vs_copy", False), ("view_vs_none", True)):
        bav, none = (True, False) if rank == 0 else (other_bav, True)
        rec = {"input": [], "output": [], "grad": []}
        torch.manual_seed(0)
        m = UnusedNet()
        d = DDP(m, find_unused_parameters=True, gradient_as_bucket_view=bav)
        st = gct.GradcompState(module=m, start_iter=1, backend="cpu", config=cfg)
        gct.register_ddp_hook(d, st, wrap=recording_p(m, rec))
        for s in range(UNUSED_AT + 2 + UNUSED_FLUSH):
            x = unused_input(m, s, rank)
            d.zero_grad(set_to_none=none)
            d(x).square().sum().backward()
            g = m.p.grad
            rec["grad"].append(torch.zeros(m.p.numel()) if g is None else g.reshape(-1).clone())
        st.close()
        res[name] = rec
    return res, {}


def _rewrapped_run(rank, collect_at=None, join=False, after_join=None):
    """unused_rewrapped's run. With collect_at, the first DDP in a reference cycle (a forward
    hook that holds it) and the cyclic collector off but where this says: rank 0 collects right
    after dropping it, rank 1 before the new DDP's step collect_at. With join, the first DDP's
    steps inside Join. after_join, a Join after them: "eval", an evaluation pass (forward only)
    on each rank; "idle", rank r makes r steps (rank 0 joins at once: no forward there, only the
    shadow of rank 1's step)."""
    import contextlib
    import gc
    from torch.distributed.algorithms.join import Join
    from torch.nn.parallel import DistributedDataParallel as DDP

    cfg = gradcomp.Config(from_env=False, method="topk", density=0.05, select="exact",
                          min_elements=0, auto_tune=0)
    cycle = collect_at is not None
    if cycle:
        gc.disable()  # the collector runs where this case says, not at allocation counts
    try:
        torch.manual_seed(0)
        m = UnusedNet()
        # Compressing from the new DDP's second step on: no residual from the first DDP's steps.
        st = gct.GradcompState(module=m, start_iter=3, backend="cpu", config=cfg)
        rec = {"input": [], "output": [], "grad": []}
        d = DDP(m, find_unused_parameters=True)
        if cycle:
            d.register_forward_hook(lambda mod, i, o, _d=d: None)  # d -> its hooks -> d
        d.register_comm_hook(st, recording_p(m, rec)(gct.gradcomp_hook))
        with Join([d]) if join else contextlib.nullcontext():
            for s in range(2):
                d(unused_input(m, 0, rank)).square().sum().backward()
        if after_join == "eval":
            with Join([d]), torch.no_grad():
                d(unused_input(m, 0, rank))
        elif after_join == "idle":
            with Join([d]):
                for s in range(rank):
                    d(unused_input(m, 0, rank)).square().sum().backward()
        del d  # the model wrapped again
        if cycle and rank == 0:
            gc.collect()
        rec = {"input": [], "output": [], "grad": []}
        d = DDP(m, find_unused_parameters=True)
        d.register_comm_hook(st, recording_p(m, rec)(gct.gradcomp_hook))
        carried = []
        with st.paused():  # DDP regroups its buckets after its first step
            d(unused_input(m, 0, rank)).square().sum().backward()
        del rec["input"][:], rec["output"][:]
        for s in range(UNUSED_AT + 2 + UNUSED_FLUSH):
            if cycle and s == collect_at and rank == 1:
                gc.collect()
            x = unused_input(m, s, rank)
            d.zero_grad(set_to_none=True)
            d(x).square().sum().backward()
            g = m.p.grad
            rec["grad"].append(torch.zeros(m.p.numel()) if g is None else g.reshape(-1).clone())
            carried.append(len(st._carry))
        st.close()
    finally:
        if cycle:
            gc.enable()
    return {"rec": rec}, {"carried": carried}


def unused_rewrapped(out, rank):
    """A state given to DDP(find_unused_parameters=True) by register_comm_hook, its model
    wrapped again in a new DDP alike (the first one dropped) and registered with the same state;
    p unused on every rank at one step of the new DDP. Whether the state kept p's released
    slice there (it reads the settings of the DDP it found at its first call, gone since), and
    by step p's input slice and p.grad, for the test to check that nothing was lost."""
    return _rewrapped_run(rank)


def unused_rewrapped_gc(out, rank):
    """unused_rewrapped with the first DDP in a reference cycle (a forward hook that holds it),
    so that it goes when the cyclic collector runs, which each process decides for itself: rank 0
    collects right after dropping it, rank 1 only after the new DDP's first steps. The state must
    go on alike on both ranks (the same collectives), keep p's released slice at the step where
    p is unused on every rank, and give both ranks the same p.grad."""
    return _rewrapped_run(rank, collect_at=1)


def unused_rewrapped_join_gc(out, rank):
    """unused_rewrapped_gc with the first DDP's steps inside Join (which leaves the DDP's
    _join_config enabled after its block: torch sets it at Join's construction and never resets
    it). The state must go on alike on both ranks whether the first DDP is gone (rank 0, at once)
    or still waits for the collector (rank 1, until after the step where p is unused): the run
    completes, and both ranks keep alike and get the same p.grad."""
    return _rewrapped_run(rank, collect_at=UNUSED_AT + 1, join=True)


def unused_rewrapped_idle_join(out, rank):
    """unused_rewrapped with a Join after the first DDP's steps in which rank 0 has no input
    (it joins at once: no forward, only the shadow of rank 1's step), the first DDP then freed
    on both ranks at once. The ranks must go on alike after the wrap again: the run completes,
    both keep alike and get the same p.grad."""
    return _rewrapped_run(rank, after_join="idle")


def unused_rewrapped_join_eval_gc(out, rank):
    """unused_rewrapped_join_gc with the first DDP's steps outside Join and an evaluation pass
    (forward only) inside it after them: Join leaves the DDP's _join_config enabled, but no hook
    call reads it while that DDP lives on both ranks. The state must go on alike on both ranks
    whether the first DDP is gone (rank 0, at once) or still waits for the collector (rank 1,
    until after the step where p is unused): the run completes, and both ranks keep alike and
    get the same p.grad."""
    return _rewrapped_run(rank, collect_at=UNUSED_AT + 1, after_join="eval")


def unused_static(out, rank):
    """DDP(static_graph=True, find_unused_parameters=True) with p unused at every step: DDP
    never gives p a gradient (its unused set is fixed), and regroups its buckets (so ZeRO's
    overlap, hook_with_zero_step, would start and step p from bucket.gradients()). The state
    starts from a checkpoint of a run that used p (so p's error feedback has something to
    release). By step, the slices the state keeps for p and whether p.grad is None."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    cfg = gradcomp.Config(from_env=False, method="topk", density=0.05, select="exact",
                          min_elements=0, auto_tune=0)
    torch.manual_seed(0)
    m = UnusedNet()
    d = DDP(m)
    st = gct.GradcompState(module=m, start_iter=0, backend="cpu", config=cfg)
    gct.register_ddp_hook(d, st)
    for s in range(2):
        d(unused_input(m, 0, rank)).square().sum().backward()
    ckpt = st.state_dict()
    st.close()
    del d
    m.use_p = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's: find_unused_parameters is implied
        d = DDP(m, static_graph=True, find_unused_parameters=True)
    st = gct.GradcompState(module=m, start_iter=0, backend="cpu", config=cfg)
    st.load_state_dict(ckpt)
    gct.register_ddp_hook(d, st)
    carried, grad_none = [], []
    for s in range(4):
        d.zero_grad(set_to_none=True)
        d(torch.randn(8, 32, generator=torch.Generator().manual_seed(s))).square().sum().backward()
        carried.append(len(st._carry))
        grad_none.append(m.p.grad is None)
    rebuilt = bool(getattr(d, "_has_rebuilt_buckets", False))
    st.close()
    return [], {"carried": carried, "grad_none": grad_none, "rebuilt": rebuilt}


def _recorded_run(rank, make, micro=1, none=True, compiled=False, **ddp_kw):
    """STEPS optimizer steps of momentum SGD on a DDP model (bucket_cap_mb=0.005 unless given),
    each of `micro` backward passes, all but the last inside ddp.no_sync(). Every hook call is
    recorded as in ddp (its bucket before and its result after, the plan), with the micro-step
    it came in; after each step's backward, the number of the buckets' parameters whose .grad is
    not their slice of the hook's result, and state.iter."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    records, at = [], [0, 0]
    model = make()
    if compiled:
        # The model compiled inside DDP (torch.compile(ddp_model) captured no graph on torch
        # 2.15 with a comm hook: it ran eager); one compile worker, two ranks on 2 cores.
        # Imported under names of their own: "import torch._dynamo" would make torch a local
        # name of this function, unbound where compiled is false.
        import torch._dynamo.utils as dynamo_utils
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = 1
        dynamo_utils.counters.clear()
    d = DDP(torch.compile(model) if compiled else model,
            **dict({"bucket_cap_mb": 0.005}, **ddp_kw))
    st = gct.GradcompState(module=model, start_iter=START, backend="cpu", config=config())

    def recording(hook):
        def hook_(state, bucket):
            compressed = state.iter >= state.start_iter
            rec = {"step": at[0], "micro": at[1], "index": bucket.index(),
                   "compressed": compressed, "input": bucket.buffer().clone()}
            records.append(rec)
            fut = hook(state, bucket)
            if compressed:
                plan = state._plans[tuple(id(p) for p in bucket.parameters())]
                rec.update(comp=plan["comp"], full=plan["full"], key=plan["key"],
                           comp_n=plan["comp_n"])
            rec["params"] = bucket.parameters()

            def done(f):
                rec["output"] = f.value().clone()
                return f.value()

            return fut.then(done)
        return hook_

    gct.register_ddp_hook(d, st, wrap=recording)
    run = d
    opt = torch.optim.SGD(d.parameters(), lr=0.1, momentum=0.9)
    res = {"iter": [], "undelivered": []}
    for step in range(STEPS):
        at[0] = step
        opt.zero_grad(set_to_none=none)
        for k in range(micro):
            at[1] = k
            x, y = batch(10 * step + k, rank, 32)
            with d.no_sync() if k < micro - 1 else contextlib.nullcontext():
                nn.functional.cross_entropy(run(x), y).backward()
        bad = 0
        for rec in records:
            o = 0
            for p in rec.pop("params", ()):
                g = p.grad
                n = p.numel()
                bad += g is None or not torch.equal(g.reshape(-1), rec["output"][o:o + n])
                o += n
        res["undelivered"].append(bad)
        res["iter"].append(st.iter)
        opt.step()
    st.close()
    if compiled:
        res["graphs"] = int(dynamo_utils.counters["stats"]["unique_graphs"])
    return records, res


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 40, bias=False),
                         nn.ReLU(), nn.Linear(40, 5), nn.LayerNorm(5))


def _carry_run(rank, make, use, micro=1, bav=False, none=True):
    """UnusedNet-style training with DDP(find_unused_parameters=True) on top-k (select="exact"):
    use(step, micro_step, rank) says whether p is used; `micro` backward passes a step, all but
    the last inside ddp.no_sync(); after step UNUSED_AT + 1, UNUSED_FLUSH steps of zero loss
    drain the residual. By step: p's slice of each hook call's bucket and result, p.grad after
    the step's backward (0 where None), and the slices the state keeps (state._carry)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    m = make()
    d = DDP(m, find_unused_parameters=True, gradient_as_bucket_view=bav)
    cfg = gradcomp.Config(from_env=False, method="topk", density=0.05, select="exact",
                          min_elements=0, auto_tune=0)
    st = gct.GradcompState(module=m, start_iter=1, backend="cpu", config=cfg)
    rec = {"input": [], "output": [], "grad": [], "carried": []}
    gct.register_ddp_hook(d, st, wrap=recording_p(m, rec))
    for s in range(UNUSED_AT + 2 + UNUSED_FLUSH):
        d.zero_grad(set_to_none=none)
        m.zero = s > UNUSED_AT + 1
        for k in range(micro):
            m.use_p = use(s, k, rank)
            x = torch.randn(8, 32, generator=torch.Generator().manual_seed(100 * s + 10 * k + rank))
            with d.no_sync() if k < micro - 1 else contextlib.nullcontext():
                d(x).square().sum().backward()
        g = m.p.grad
        rec["grad"].append(torch.zeros(m.p.numel()) if g is None else g.reshape(-1).clone())
        rec["carried"].append(len(st._carry))
    st.close()
    return rec


class _CheckpointedUnused(UnusedNet):
    """UnusedNet with p's use under torch.utils.checkpoint (use_reentrant=False)."""

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        h = checkpoint(lambda t: t @ self.p if self.use_p else t, self.a(x), use_reentrant=False)
        return h * 0 if self.zero else h


def patterns(out, rank):
    """The DDP hook under training patterns (test_torch.CpuBackendDdpPatterns), 2 ranks.
    Records by case, for a serial reference (as ddp): "no_sync", gradient accumulation (3
    backward passes a step, the first two inside ddp.no_sync()); "no_sync_view", the same with
    gradient_as_bucket_view=True and zero_grad(set_to_none=False) (the passes accumulate in the
    buckets themselves). Results by case: state.iter after each step, and the parameters whose
    .grad is not the hook's result. "carry": the unused-parameter carry (UnusedNet,
    find_unused_parameters=True) under no_sync and under activation checkpointing, by case as
    _carry_run records it."""
    records, res = {}, {}
    for name, kw in (("no_sync", {}),
                     ("no_sync_view", {"none": False, "gradient_as_bucket_view": True})):
        records[name], res[name] = _recorded_run(rank, _mlp, micro=3, **kw)
    at = UNUSED_AT
    records["carry"] = {
        # p used in a no_sync pass only at step UNUSED_AT, on every rank or on rank 0 only:
        # DDP counts it used (it accumulates the passes' use) and gives it its slice of the
        # result (on rank 1 too, whose input slice is zero), which must not be kept as well.
        "used_in_no_sync_only": _carry_run(rank, UnusedNet, lambda s, k, r: s != at or k == 0,
                                           micro=3),
        "used_in_no_sync_only_view": _carry_run(rank, UnusedNet,
                                                lambda s, k, r: s != at or k == 0, micro=3,
                                                bav=True, none=False),
        "used_in_no_sync_on_rank_0": _carry_run(
            rank, UnusedNet, lambda s, k, r: s != at or (k == 0 and r == 0), micro=3),
        # p unused in every pass of step UNUSED_AT on every rank: its released slice is kept.
        "unused_in_every_pass": _carry_run(rank, UnusedNet, lambda s, k, r: s != at, micro=3),
        # Under checkpointing (the backward recomputes p's use): unused on every rank at
        # UNUSED_AT, on rank 0 only at UNUSED_AT + 1.
        "checkpoint": _carry_run(rank, _CheckpointedUnused,
                                 lambda s, k, r: s != at and not (s == at + 1 and r == 0)),
    }
    return records, res


def compiled(out, rank):
    """A model compiled with torch.compile inside DDP (DDP(torch.compile(model))), its hook
    calls recorded as in patterns: "compiled" with one bucket (bucket_cap_mb's default), and
    the graphs dynamo captured."""
    records, res = {}, {}
    records["compiled"], res["compiled"] = _recorded_run(rank, _mlp, compiled=True,
                                                         bucket_cap_mb=25)
    return records, res


def _error(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test reads the sentence
        return f"{type(e).__name__}: {e}"
    return None


def _refusals(state):
    """What a DDP hook call, an FSDP reduce-scatter call and state_dict() say on `state`."""
    def fsdp():
        # Made here: an aborted or closed state refuses to serve FSDP2 from the start.
        rs = gct.GradcompReduceScatter(state, "layers.0")
        rs(output_tensor=torch.zeros(4), input_tensor=torch.zeros(8), group=dist.group.WORLD,
           op=dist.ReduceOp.AVG)

    return {"hook": _error(lambda: gct.gradcomp_hook(state, _Bucket(torch.zeros(8)))),
            "fsdp": _error(fsdp),
            "state_dict": _error(state.state_dict)}


def abort(out, rank):
    """Rank 1 dies after STEPS compressed steps (leaves without a word); rank 0's next step
    meets the dead peer, then rank 0 destroys the process group (PyTorch's abort path) and
    calls state.abort(), which must return (it runs on a thread joined with a generous timeout,
    a hang check only) having aborted gradcomp's comm, never closed it. Then a second abort()
    and close() are no-ops and the hook, the FSDP reduce-scatter and state_dict() refuse with
    the aborted sentence. Also a state aborted before its first use (through the FSDP object's
    abort()): nothing was made, and it refuses the same way."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    res = {}
    early = gct.GradcompState(backend="cpu", config=config())
    rs = gct.GradcompReduceScatter(early, "layers.0")
    res["early_abort_errors"] = [_error(rs.abort), _error(rs.abort), _error(early.close)]
    res["early_comm_made"] = early._comm is not None
    res["early"] = _refusals(early)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 5))
    d = DDP(model)
    state = gct.GradcompState(module=model, start_iter=1, backend="cpu", config=config())
    d.register_comm_hook(state, gct.gradcomp_hook)
    opt = torch.optim.SGD(d.parameters(), lr=0.1)

    def step(s):
        x, y = batch(s, rank, 32)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(d(x), y).backward()
        opt.step()

    for s in range(STEPS):
        step(s)
    res["compressed_calls"] = state.counters["compressed_calls"]
    if rank == 1:
        return [], {"left_after_steps": STEPS, **res}

    res["step_error"] = _error(lambda: step(STEPS))
    comm = state._comm
    used = []
    for name in ("abort", "close"):
        real = getattr(comm, name)
        setattr(comm, name, lambda real=real, name=name: (used.append(name), real())[1])
    _error(dist.destroy_process_group)
    errors = []
    t0 = time.monotonic()
    th = threading.Thread(target=lambda: errors.append(_error(state.abort)), daemon=True)
    th.start()
    th.join(120)
    res["abort_returned"] = not th.is_alive()
    res["abort_seconds"] = round(time.monotonic() - t0, 3)
    res["abort_error"] = errors[0] if errors else "did not return"
    res["comm_calls"] = used
    res["comm_handle_error"] = _error(lambda: comm.handle)
    res["again_errors"] = [_error(state.abort), _error(state.close)]
    res["after"] = _refusals(state)
    return [], res


def overflow(out, rank):
    """A step whose gradients are finite on every rank but whose sum overflows fp32 (2e38
    each, the hook's Avg summing first), then ordinary steps, through DDP's gradcomp_hook:
    with a GradScaler (grad_scaler given) or without one (the step skipped by hand where a
    gradient is not finite), one step is skipped and every later step's gradients are the
    ordinary ones, for top-k, DGC, rand-k and 2-bit QSGD. Per run: which steps were skipped and
    the largest |gradient| of each step taken."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    class Weights(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(64, 64))  # 2-D: compressed

        def forward(self, c):
            return (self.w * c).sum()  # its gradient is c

    methods = {"topk": dict(method="topk", density=0.05),
               "dgc": dict(method="dgc", density=0.05),
               "randk": dict(method="randk", density=0.05),
               "qsgd": dict(method="qsgd", bits=2)}
    res = {}
    for mname, settings in methods.items():
        for scaled in (False, True):
            model = Weights()
            d = DDP(model)
            sc = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=1000) \
                if scaled else None
            st = gct.GradcompState(module=model, start_iter=0, backend="cpu", grad_scaler=sc,
                                   config=gradcomp.Config(from_env=False, min_elements=0,
                                                          auto_tune=0, **settings))
            d.register_comm_hook(st, gct.gradcomp_hook)
            opt = torch.optim.SGD(d.parameters(), lr=0.01)
            skipped, largest = [], []
            for step in range(6):
                torch.manual_seed(100 * step + rank)
                c = torch.randn(64, 64)
                if step == 2:
                    c = torch.where(torch.arange(4096).view(64, 64) % 3 == 0, -2e38, 2e38)
                opt.zero_grad(set_to_none=True)
                loss = d(c)
                if sc is None:
                    loss.backward()
                    bad = not bool(torch.isfinite(model.w.grad).all())
                    if not bad:
                        opt.step()
                else:
                    sc.scale(loss).backward()
                    before = sc.get_scale()
                    sc.step(opt)  # unscales the gradient in place, skips where not finite
                    sc.update()
                    bad = sc.get_scale() < before
                skipped.append(bad)
                largest.append(None if bad else float(model.w.grad.abs().max()))
            res[f"{mname}_{'scaled' if scaled else 'plain'}"] = {"skipped": skipped,
                                                                 "largest": largest}
            st.close()
    return [], res


def main():
    mode, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if mode == "abort":
        records, res = abort(out, rank)
        torch.save(records, f"{out}.rank{rank}.pt")
        with open(f"{out}.rank{rank}.json", "w") as f:
            json.dump(res, f)
        gc_ranks.leave(0)  # rank 1 dies here, rank 0 has no group left
    records, res = {"ddp": ddp, "excluded": excluded, "fsdp": fsdp, "fsdp_models": fsdp_models,
                     "fsdp_factor": fsdp_factor, "fsdp_shared_hook": fsdp_shared_hook,
                     "fsdp_frozen": fsdp_frozen,
                     "fsdp_frozen_resume": fsdp_frozen_resume, "fsdp_late_root": fsdp_late_root,
                     "fsdp_dcp": fsdp_dcp,
                     "dgc": dgc,
                     "subgroups": subgroups, "scaler": scaler, "replicas": replicas,
                     "restart": restart, "ddp_group": ddp_group,
                     "ddp_register": ddp_register, "overflow": overflow,
                     "compose": compose,
                     "disagree": disagree, "unused": unused, "unused_nan": unused_nan,
                     "unused_join": unused_join, "unused_mixed": unused_mixed,
                     "unused_rewrapped": unused_rewrapped,
                     "unused_rewrapped_gc": unused_rewrapped_gc,
                     "unused_rewrapped_join_gc": unused_rewrapped_join_gc,
                     "unused_rewrapped_join_eval_gc": unused_rewrapped_join_eval_gc,
                     "unused_rewrapped_idle_join": unused_rewrapped_idle_join,
                     "unused_static": unused_static,
                     "patterns": patterns, "compiled": compiled}[mode](out, rank)
    torch.save(records, f"{out}.rank{rank}.pt")
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()
    gc_ranks.leave(0)  # tools/: the process ends here (docs/reliability.md, "Teardown")


if __name__ == "__main__":
    sys.exit(main())
