#!/usr/bin/env python3
"""gradcomp.torch's hooks bit for bit on the device they serve (tools/torch_hooks_check.py's
run hook_exact; --device cpu: gloo and GradcompState(backend="cpu")).

2 ranks call gradcomp_hook on three buckets (all compressed, mixed, all full precision) for
4 steps (the first uncompressed), and GradcompReduceScatter (FSDP2's protocol, called as FSDP
calls it) with Avg and Sum, on gradients that a late producer writes on a non-default
stream: a NaN fill, a spin of the GPU, then the copy of the gradient, all on that stream,
which is current when the hook is called. The results are read on the default stream
through the hook's futures (FSDP's way for the reduce-scatter: an event recorded on its
stream after the call). Rank 0 compares every result with a serial reference on gradcomp's
in-process CPU world (the host codecs, the same algorithms): the mean of the two ranks' inputs
where the hook sends full precision (x0/2 + x1/2: exact, whatever order NCCL adds in), the
library's keyed Avg allreduce of the gathered compressed parts, its keyed reduce-scatter. A
stream the hooks do not follow (gradcomp reading a bucket before its producer wrote it, a
future ready before gradcomp's kernels or the mixed bucket's copies) shows as differing bits;
so does a kernel that differs from its host twin. Every rank's results must also hash alike.
Then the hook with grad_scaler (GradcompState(grad_scaler=...)) on the same gradients scaled
by 1024, 512, 4096 and 0.5, against a state without it on the unscaled ones: every result
must be the scale times the unscaled one, bit for bit (scaler_bitwise).

Then two of torch's tools around the hook on a real DDP (a small MLP in several buckets):
wrap_*: register_ddp_hook(ddp, state, wrap=fp16_compress_wrapper) for 4 steps, each call's
half-precision bucket and gradcomp's result recorded inside the wrapper; every result must be,
bit for bit, the serial reference of the half-precision buckets the ranks handed on (as above,
in that type: the mean x0/2 + x1/2, one rounding, and the CPU world's keyed Avg allreduce in the
hook's call order), and every gradient DDP leaves the result cast back. zero_overlap_*:
ZeroRedundancyOptimizer(SGD, overlap_with_ddp=True) stepping inside torch's hook_with_zero_step
around gradcomp's hook (wrap=), 6 steps, against plain SGD after the same hook on a second DDP
of the same model. torch's overlap learns DDP's rebuilt buckets over the first two steps
(static_graph=False) and updates from the third, so the reference steps from the third too;
then both apply p - lr * g (foreach=False in both: the same kernel) to the same gradients of the
same parameters, and the owner's update reaches the other rank by broadcast: the parameters
after every step must be the same bits. torch refuses hook_with_zero_step on gloo (it may hang
there), so --device cpu runs the reference alone and reports the overlap "skipped on gloo".

unused_*: DDP(find_unused_parameters=True) with a compressed weight p (top-k, exact select)
used at steps 0-2, unused on every rank at step 3 (DDP gives it no gradient there while its
slice of the hook's result holds what the error feedback released), unused on rank 0 alone at
step 4, then UNUSED_FLUSH steps of zero loss that drain top-k's residual exactly; with
gradient_as_bucket_view off and on. Nothing may be lost: the gradients p got over the steps must
sum to the sum of the ranks' averaged gradients of p (tests/python/test_torch.py's
CpuBackendUnusedParameters on gloo, here on the hook's stream and the GPU's tensors), alike on
both ranks.

Usage: hook_exact_rank.py --out JSON [--device cpu]; launched as 2 ranks with the env://
variables by tools/gc_ranks.py (one NCCL_HOSTID per rank, all on one GPU).
"""
import argparse
import sys
import traceback
import warnings

import gc_ranks
import torch
import torch.distributed as dist

N, START, STEPS = 2, 1, 4
RS_OPS = ("avg", "sum", "avg")
RS_ELEMENTS = 1000  # per rank: two QSGD buckets of 512, the second a tail
SPIN_CYCLES = 20_000_000  # ~10 ms of a GPU clock: the producer is late on its stream
WRAP_STEPS = 4  # DDP steps through register_ddp_hook(wrap=fp16_compress_wrapper)
ZERO_STEPS, ZERO_FIRST_UPDATE = 6, 2  # torch's overlap does not update in its first 2 steps
LR = 0.1
CLASSES = 8  # the last layer's 512-element weight: below layer_min_size, full precision
# The unused-parameter case: p unused on every rank at UNUSED_AT, on rank 0 alone at UNUSED_AT + 1,
# then UNUSED_FLUSH steps of zero loss (1024 elements, 51 selected a step: drained in 21).
UNUSED_AT, UNUSED_FLUSH = 3, 40
UNUSED_TOL = 1e-4  # |sum of p's gradients - sum of its averaged gradients|, fp32 sums of ~1


def config():
    import gradcomp

    # Flat two-shot on both backends (each rank its own node; no auto pass-through to NCCL,
    # which the CPU world does not time): the same algorithm, so the same bits.
    return gradcomp.Config(from_env=False, method="qsgd", bits=4, min_elements=0, auto_tune=0,
                           algo="twoshot", local_size=1)


def layout():
    """A model whose parameters make bucket 0 all compressed, bucket 1 mixed (2048 and 1600
    compressed; a bias and a 50-element weight in full precision) and bucket 2 all full
    precision (a norm), as tests/python/test_torch.py's HookOnCpuWorld."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(48, 48, bias=False), torch.nn.Linear(32, 64),
        torch.nn.Linear(5, 10, bias=False), torch.nn.Linear(40, 40, bias=False),
        torch.nn.LayerNorm(16))
    p = list(model.parameters())
    return model, [[p[0]], [p[1], p[2], p[3], p[4]], [p[5], p[6]]]


def grads(step, rank, b, buckets):
    g = torch.Generator().manual_seed(1000 * step + 10 * rank + b)
    return torch.randn(sum(q.numel() for q in buckets[b]), generator=g) * (rank + 1)


def rs_input(step, rank):
    g = torch.Generator().manual_seed(5000 + 10 * step + rank)
    return torch.randn(N * RS_ELEMENTS, generator=g) * (rank + 1)


class Bucket:
    """The part of DDP's GradBucket the hook reads."""

    def __init__(self, buf, params, index, last):
        self.buf, self.params, self.i, self.last = buf, params, index, last

    def buffer(self):
        return self.buf

    def parameters(self):
        return self.params

    def index(self):
        return self.i

    def is_last(self):
        return self.last


class Producer:
    """Writes a host tensor into a fresh device buffer late, on a non-default stream that is
    current while the hook runs (on the CPU: the tensor itself, no stream)."""

    def __init__(self, dev):
        self.dev = dev
        self.stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        self.keep = []  # host and device buffers alive until the results are read

    def context(self):
        import contextlib

        return torch.cuda.stream(self.stream) if self.stream else contextlib.nullcontext()

    def make(self, host):
        if self.stream is None:
            return host.clone()
        host = host.pin_memory()
        buf = torch.full(host.shape, float("nan"), device=self.dev)
        torch.cuda._sleep(SPIN_CYCLES)
        buf.copy_(host, non_blocking=True)
        self.keep += [host, buf]
        return buf


def run_hook(state, buckets, producer):
    """Every step's bucket results as the default stream reads them (host tensors)."""
    import gradcomp.torch as gct

    out = []
    for step in range(STEPS):
        with producer.context():
            futs = [gct.gradcomp_hook(state, Bucket(producer.make(grads(step, state.rank, b,
                                                                          buckets)),
                                                    params, b, b == len(buckets) - 1))
                    for b, params in enumerate(buckets)]
        out.append([f.wait().cpu() for f in futs])  # wait(): this stream after the hook's work
    return out


class Scaler:
    """The part of AMP's GradScaler that GradcompState(grad_scaler=...) reads: get_scale() and
    its scale tensor, which update() changes in place (so the state reads it once a step). On
    the host: no stream orders a device tensor's fill against the hook's read."""

    def __init__(self):
        self._scale = torch.ones(1)

    def get_scale(self):
        return float(self._scale.item())

    def update(self, s):
        self._scale.fill_(s)


SCALES = (1024.0, 512.0, 4096.0, 0.5)  # a GradScaler's kind of changes: powers of two


def run_scaled(buckets, producer, backend):
    """The hook with grad_scaler on gradients times SCALES[step] against a state without it on
    the unscaled ones: every result must be SCALES[step] times the unscaled one, bit for bit
    (gradcomp rescales its residuals on the hook's stream at each change). Mismatch lines."""
    import gradcomp.torch as gct

    plain = gct.GradcompState(module=None, start_iter=START, backend=backend, config=config())
    sc = Scaler()
    scaled = gct.GradcompState(module=None, start_iter=START, backend=backend, grad_scaler=sc,
                               config=config())
    bad, checked = [], 0
    for step, s in enumerate(SCALES):
        sc.update(s)
        outs = []
        for st, k in ((plain, 1.0), (scaled, s)):
            with producer.context():
                futs = [gct.gradcomp_hook(st, Bucket(producer.make(
                    grads(step, st.rank, b, buckets) * k), params, b, b == len(buckets) - 1))
                    for b, params in enumerate(buckets)]
            outs.append([f.wait().cpu() for f in futs])
        for b in range(len(buckets)):
            checked += 1
            n = differ(outs[1][b], outs[0][b] * s)
            if n:
                bad.append(f"scaled step {step} (scale {s}) bucket {b}: {n} of "
                           f"{outs[1][b].numel()} elements are not scale times the unscaled")
    plain.close()
    scaled.close()
    return bad, checked


def run_reduce_scatter(state, producer):
    import gradcomp.torch as gct

    rs = gct.GradcompReduceScatter(state, "layers.0")
    ops = {"avg": dist.ReduceOp.AVG, "sum": dist.ReduceOp.SUM}
    out = []
    for step, op in enumerate(RS_OPS):
        with producer.context():
            inp = producer.make(rs_input(step, state.rank))
            res = producer.make(torch.zeros(RS_ELEMENTS))
            rs(output_tensor=res, input_tensor=inp, group=state.process_group, op=ops[op])
            done = producer.stream.record_event() if producer.stream else None
        if done is not None:  # FSDP waits for its reduce-scatter stream's event
            torch.cuda.current_stream(producer.dev).wait_event(done)
        out.append(res.cpu())
    return out, rs.key


def reference(state, buckets, rs_key):
    """The serial reference on the CPU world, by rank: [step][bucket] and [reduce-scatter
    call]. The hook's own plans (split and key) of the buckets."""
    import gradcomp

    plans = [state._plan(Bucket(None, params, b, False)) for b, params in enumerate(buckets)]

    def hook_rank(comm):
        out = []
        for step in range(STEPS):
            row = []
            for b, plan in enumerate(plans):
                xs = [grads(step, r, b, buckets) for r in range(N)]
                mean = xs[0] * (1.0 / N)
                for x in xs[1:]:
                    mean = mean + x * (1.0 / N)
                if step >= START and plan["comp_n"]:
                    idx = torch.cat([torch.arange(o, o + n) for o, n in plan["comp"]])
                    part = xs[comm.rank][idx].contiguous()
                    comm.allreduce(part, op="avg", key=plan["key"])
                    mean[idx] = part
                row.append(mean)
            out.append(row)
        return out

    def rs_rank(comm):
        out = []
        for step, op in enumerate(RS_OPS):
            res = torch.zeros(RS_ELEMENTS)
            comm.reduce_scatter(rs_input(step, comm.rank), res, op=op, key=rs_key)
            out.append(res)
        return out

    with gradcomp.CpuWorld(N, config()) as w:
        hook = w.run(hook_rank)
    rs = None
    if rs_key is not None:
        with gradcomp.CpuWorld(N, config()) as w:
            rs = w.run(rs_rank)
    return hook, rs


def differ(a, b):
    """Elements whose bits differ (NaN is a value like any other here); all of them where the
    types or shapes differ."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return max(a.numel(), b.numel())
    bits = torch.int16 if a.element_size() == 2 else torch.int32
    return int((a.view(bits) != b.view(bits)).sum())


def ddp_model(dev):
    """A small MLP, the same on every rank, in DDP: one bucket of the whole model in the first
    step, then (rebuilt at 5 KB) two mixed ones, each a compressed weight beside a bias or a
    small weight in full precision. Every parameter's size is a multiple of 64 elements, so
    that each starts 256 bytes into ZeRO's flat buckets (overlap_with_ddp moves the parameters
    there) as into an allocation of its own: the GEMMs pick their kernels by alignment, and the
    reference's must be the same."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64, bias=False),
        torch.nn.ReLU(), torch.nn.Linear(64, CLASSES, bias=False)).to(dev)
    return model, DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None,
                      bucket_cap_mb=0.005)


def backward(ddp, step, rank, dev):
    """One step's forward and backward on this rank's own batch, the gradients set afresh."""
    g = torch.Generator().manual_seed(7000 + 10 * step + rank)
    x, y = torch.randn(16, 32, generator=g), torch.randint(0, CLASSES, (16,), generator=g)
    ddp.module.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(ddp(x.to(dev)), y.to(dev)).backward()


def params_now(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu()


def run_wrapped(backend, dev, rank):
    """register_ddp_hook(wrap=fp16_compress_wrapper): the hook's calls as the wrapper makes
    them (a recorder between the wrapper and gradcomp's hook), each with its half-precision
    input, gradcomp's result, the plan and the step; and the elements of the gradients DDP left
    that are not the result cast back. None where this PyTorch has no fp16_compress_wrapper."""
    try:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import \
            fp16_compress_wrapper
    except ImportError as e:
        return None, f"skipped: this PyTorch has no fp16_compress_wrapper ({e})"
    import gradcomp.torch as gct

    model, ddp = ddp_model(dev)
    state = gct.GradcompState(module=model, start_iter=START, backend=backend, config=config())
    calls = []

    def recorded(hook):
        def recording(st, bucket):
            rec = {"step": step, "compressed": st.iter >= st.start_iter,
                   "input": bucket.buffer().clone(), "params": bucket.parameters()}
            fut = hook(st, bucket)
            if rec["compressed"]:
                plan = st._plan(bucket)  # the hook's own, made in the call
                rec.update(comp=plan["comp"], key=plan["key"], comp_n=plan["comp_n"])
            calls.append(rec)

            def done(f):
                rec["output"] = f.value().clone()
                return f.value()

            return fut.then(done)
        return recording

    gct.register_ddp_hook(ddp, state, wrap=lambda hook: fp16_compress_wrapper(recorded(hook)))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    grads_bad = grads_checked = 0
    for step in range(WRAP_STEPS):
        backward(ddp, step, rank, dev)
        for rec in calls:
            if rec["step"] == step:
                got = torch.cat([p.grad.reshape(-1) for p in rec["params"]]).cpu()
                grads_bad += differ(got, rec["output"].cpu().float())
                grads_checked += len(rec["params"])
        opt.step()
    out = {"calls": [{k: (v.cpu() if torch.is_tensor(v) else v) for k, v in rec.items()
                      if k != "params"} for rec in calls],
           "grads_bad": grads_bad, "grads_checked": grads_checked,
           "calls_compressed": state.counters["compressed_calls"]}
    state.close()
    return out, None


def check_wrapped(mine, rank):
    """This rank's wrapped calls against the serial reference of every rank's half-precision
    inputs (the mean in that type; the keyed Avg allreduce of the gathered compressed elements
    on the CPU world, in the hook's call order). Mismatch lines."""
    import gradcomp

    inputs = [None] * N
    dist.all_gather_object(inputs, [c["input"] for c in mine["calls"]])
    if len({len(i) for i in inputs}) != 1:
        return [f"rank {rank}: the ranks made {[len(i) for i in inputs]} hook calls"]
    bad = []
    with gradcomp.CpuWorld(N, config()) as w:
        for k, call in enumerate(mine["calls"]):
            xs = [inputs[r][k] for r in range(N)]
            want = xs[0] * (1.0 / N)
            for x in xs[1:]:
                want = want + x * (1.0 / N)
            if call["compressed"] and call["comp_n"]:
                idx = torch.cat([torch.arange(o, o + n) for o, n in call["comp"]])
                parts = [x[idx].contiguous() for x in xs]
                w.run(lambda c: c.allreduce(parts[c.rank], op="avg", key=call["key"]))
                want[idx] = parts[rank]
            n = differ(call["output"], want)
            if n:
                bad.append(f"rank {rank} wrapped call {k} (step {call['step']}, "
                           f"{call['output'].dtype}): {n} of {want.numel()} elements differ")
    if mine["grads_bad"]:
        bad.append(f"rank {rank}: {mine['grads_bad']} gradient elements DDP left are not the "
                   "wrapped result cast back")
    if not mine["calls_compressed"]:
        bad.append(f"rank {rank}: the wrapped hook compressed no call (nothing checked)")
    return bad


def zero_overlap_unsupported(cpu):
    """Why ZeroRedundancyOptimizer's overlap with DDP cannot run here, or None."""
    try:
        import inspect

        from torch.distributed.algorithms.ddp_comm_hooks.ddp_zero_hook import \
            hook_with_zero_step  # noqa: F401
        from torch.distributed.optim import ZeroRedundancyOptimizer
    except ImportError as e:
        return f"skipped: this PyTorch has no hook_with_zero_step ({e})"
    if "overlap_with_ddp" not in inspect.signature(ZeroRedundancyOptimizer).parameters:
        return "skipped: this PyTorch's ZeroRedundancyOptimizer takes no overlap_with_ddp"
    if cpu:
        return ("skipped on gloo: torch's hook_with_zero_step refuses gloo (it may hang there); "
                "the GPU run checks it on NCCL")
    return None


def run_zero(backend, dev, rank, overlap):
    """ZERO_STEPS steps of SGD after gradcomp's hook: overlap, ZeroRedundancyOptimizer stepping
    inside torch's hook_with_zero_step around the hook (register_ddp_hook's wrap=); otherwise
    torch.optim.SGD after the backward of every step from ZERO_FIRST_UPDATE on (the steps in
    which the overlap updates). The parameters after each step, and the compressed calls."""
    import gradcomp.torch as gct

    model, ddp = ddp_model(dev)
    state = gct.GradcompState(module=model, start_iter=START, backend=backend, config=config())
    if overlap:
        from torch.distributed.algorithms.ddp_comm_hooks.ddp_zero_hook import \
            hook_with_zero_step
        from torch.distributed.optim import ZeroRedundancyOptimizer

        zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.SGD,
                                       overlap_with_ddp=True, lr=LR, foreach=False)
        gct.register_ddp_hook(ddp, state, wrap=lambda hook: hook_with_zero_step(hook, ddp, zero))
    else:
        opt = torch.optim.SGD(model.parameters(), lr=LR, foreach=False)
        gct.register_ddp_hook(ddp, state)
    snaps = [params_now(model)]
    for step in range(ZERO_STEPS):
        backward(ddp, step, rank, dev)
        if not overlap and step >= ZERO_FIRST_UPDATE:
            opt.step()
        snaps.append(params_now(model))
    calls = state.counters["compressed_calls"]
    state.close()
    return snaps, calls


def check_zero(got, want, calls, rank):
    """The overlap's parameters after every step against the reference's, and its updates in
    the steps torch's overlap makes them. Mismatch lines."""
    bad = []
    for step in range(ZERO_STEPS):
        moved = differ(got[step + 1], got[step]) > 0
        if moved != (step >= ZERO_FIRST_UPDATE):
            did = "updated" if moved else "did not update"
            bad.append(f"rank {rank} step {step}: the overlap {did} the parameters (torch's "
                       f"overlap updates from step {ZERO_FIRST_UPDATE}, static_graph=False)")
        n = differ(got[step + 1], want[step + 1])
        if n:
            bad.append(f"rank {rank} step {step}: {n} of {got[step + 1].numel()} parameter "
                       "elements differ from SGD after the hook")
    if not calls:
        bad.append(f"rank {rank}: the overlap's hook compressed no call")
    return bad


def unused_unsupported():
    """Why the hook cannot carry an unused parameter's released slice in this torch, or None."""
    if getattr(torch._C, "_current_graph_task_id", None) is None:
        return ("skipped: this PyTorch has no torch._C._current_graph_task_id (the hook does "
                "not carry an unused parameter's slice there, and warns)")
    return None


class UnusedNet(torch.nn.Module):
    """The unused-parameter case's model (here and in tests/python/cpu_backend_rank.py): a
    layer kept in full precision and a weight p the hook compresses, p used where use_p, the
    output zero where zero."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(32, 16)  # 512 + 16 elements: full precision
        self.p = torch.nn.Parameter(torch.randn(16, 64) * 0.1)  # 1024: compressed
        self.use_p, self.zero = True, False

    def forward(self, x):
        h = self.a(x)
        if self.use_p:
            h = h @ self.p
        return h * 0 if self.zero else h


def unused_input(m, s, rank):
    """Step s of the unused-parameter case on this rank: sets whether UnusedNet m uses p (not
    at UNUSED_AT, nor on rank 0 at UNUSED_AT + 1) and whether its loss is zero (after that);
    returns the step's batch, on the host."""
    m.use_p = s != UNUSED_AT and not (s == UNUSED_AT + 1 and rank == 0)
    m.zero = s > UNUSED_AT + 1
    return torch.randn(8, 32, generator=torch.Generator().manual_seed(100 * s + rank))


def recording_p(m, rec):
    """A wrap for a DDP comm hook (register_ddp_hook's wrap=, or called on the hook): at each
    call on the bucket that holds UnusedNet m's p, appends p's slice of the bucket to
    rec["input"] and p's slice of the hook's result to rec["output"]."""
    def recording(hook):
        def hook_(state, bucket):
            ps = bucket.parameters()
            i = next((i for i, q in enumerate(ps) if q is m.p), None)
            if i is None:
                return hook(state, bucket)
            o = sum(q.numel() for q in ps[:i])
            rec["input"].append(bucket.buffer()[o:o + m.p.numel()].clone())
            fut = hook(state, bucket)

            def done(f):
                rec["output"].append(f.value()[o:o + m.p.numel()].clone())
                return f.value()

            return fut.then(done)
        return hook_
    return recording


def run_unused(backend, dev, rank, bav):
    """DDP(find_unused_parameters=True, gradient_as_bucket_view=bav) with the hook on top-k:
    a compressed weight p used at steps 0 to UNUSED_AT - 1, unused on every rank at UNUSED_AT,
    on rank 0 alone at UNUSED_AT + 1, then UNUSED_FLUSH steps of zero loss. By step: this
    rank's gradient of p as the hook got it, p's slice of the hook's result, p.grad after the
    backward (zeros where None) and whether it was None; host tensors."""
    import gradcomp
    import gradcomp.torch as gct
    from torch.nn.parallel import DistributedDataParallel as DDP

    # Exact top-k: its residual drains exactly under zero gradients, so what is left of it
    # after the flush is nothing, and the sum of p's gradients must be the sum of its inputs'.
    cfg = gradcomp.Config(from_env=False, method="topk", density=0.05, select="exact",
                          min_elements=0, auto_tune=0, local_size=1)

    torch.manual_seed(0)
    m = UnusedNet().to(dev)
    d = DDP(m, device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=True, gradient_as_bucket_view=bav)
    st = gct.GradcompState(module=m, start_iter=START, backend=backend, config=cfg)
    rec = {"input": [], "output": [], "grad": [], "grad_none": []}
    gct.register_ddp_hook(d, st, wrap=recording_p(m, rec))
    for s in range(UNUSED_AT + 2 + UNUSED_FLUSH):
        x = unused_input(m, s, rank)
        d.zero_grad(set_to_none=True)
        d(x.to(dev)).square().sum().backward()
        g = m.p.grad
        # A copy: under gradient_as_bucket_view p.grad is a view of DDP's bucket, which the next
        # step overwrites (.cpu() of a host tensor is the tensor itself).
        rec["grad"].append(torch.zeros(m.p.numel()) if g is None
                           else g.detach().reshape(-1).to("cpu", copy=True))
        rec["grad_none"].append(g is None)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    out = {k: [t.cpu() if torch.is_tensor(t) else t for t in v] for k, v in rec.items()}
    out["compressed_calls"] = st.counters["compressed_calls"]
    st.close()
    return out


def check_unused(mine, rank, case):
    """This rank's record of run_unused against every rank's inputs: the step whose result DDP
    drops (p unused on every rank, its slice of the result not zero, p.grad None), and the sum
    of the gradients p got against the sum of its averaged gradients. Mismatch lines, and the
    largest |difference| of those sums."""
    world = dist.get_world_size()
    inputs, grads = [None] * world, [None] * world
    dist.all_gather_object(inputs, mine["input"])
    dist.all_gather_object(grads, mine["grad"])
    at, steps = UNUSED_AT, UNUSED_AT + 2 + UNUSED_FLUSH
    where = f"rank {rank} {case}"
    if any(len(i) != steps for i in inputs):
        return [f"{where}: the hook got p {[len(i) for i in inputs]} times, not {steps}"], None
    bad = []
    if any(bool(i[at].any()) for i in inputs):
        bad.append(f"{where}: p's input at step {at} is not zero on every rank (the case did "
                   "not make p unused)")
    released = float(mine["output"][at].abs().max())
    if released <= 10 * UNUSED_TOL:
        bad.append(f"{where}: p's slice of step {at}'s result is {released}, not above "
                   f"{10 * UNUSED_TOL}: nothing released to lose, the case checks nothing")
    if not mine["grad_none"][at]:
        bad.append(f"{where}: DDP gave p a gradient at step {at}, where no rank used it")
    true = sum(sum(i[s] for i in inputs) * (1.0 / world) for s in range(steps))
    err = float((true - sum(mine["grad"])).abs().max())
    if not err < UNUSED_TOL:
        bad.append(f"{where}: the gradients p got sum to other than its averaged gradients "
                   f"(max |difference| {err}, above {UNUSED_TOL}; step {at}'s released slice "
                   f"{released})")
    for s in range(steps):
        n = differ(grads[0][s], grads[rank][s])
        if n:
            bad.append(f"{where} step {s}: {n} elements of p.grad differ from rank 0's")
    if not mine["compressed_calls"]:
        bad.append(f"{where}: the hook compressed no call")
    return bad, err


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = p.parse_args()
    cpu = args.device == "cpu"
    dist.init_process_group("gloo" if cpu else "nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != N:
        print(f"hook_exact_rank.py: needs {N} ranks (the reference mean is exact for 2), got "
              f"{world}", file=sys.stderr)
        return 2
    if not cpu:
        torch.cuda.set_device(0)
    dev = torch.device("cpu") if cpu else torch.device("cuda", 0)
    import gradcomp
    import gradcomp.torch as gct

    warnings.simplefilter("ignore")  # bucket 2's expected "sent uncompressed" warning
    model, buckets = layout()
    backend = "cpu" if cpu else "nccl"
    state = gct.GradcompState(module=model, start_iter=START, backend=backend, config=config())
    producer = Producer(dev)
    got = run_hook(state, buckets, producer)
    rs_state, got_rs, rs_key = None, None, None
    if gradcomp.has("gradcompReduceScatterKeyed"):
        rs_state = gct.GradcompState(backend=backend, config=config())
        got_rs, rs_key = run_reduce_scatter(rs_state, producer)
    # Every rank checks its own results (the reduce-scatter's differ by rank); the hook's
    # must also be the same bytes on every rank.
    want, want_rs = reference(state, buckets, rs_key)
    bad = [f"rank {rank} step {s} bucket {b}: {differ(got[s][b], want[rank][s][b])} of "
           f"{got[s][b].numel()} elements differ"
           for s in range(STEPS) for b in range(len(buckets))
           if differ(got[s][b], want[rank][s][b])]
    bad += [f"rank {rank} reduce-scatter {k} ({RS_OPS[k]}): {differ(g, want_rs[rank][k])} of "
            f"{g.numel()} elements differ"
            for k, g in enumerate(got_rs or []) if differ(g, want_rs[rank][k])]
    scaler_bad, scaler_checked = None, 0
    if gradcomp.has("gradcompCommSetGradScale"):
        scaler_bad, scaler_checked = run_scaled(buckets, producer, backend)
        scaler_bad = [f"rank {rank} {m}" for m in scaler_bad]
    # torch's tools around the hook. An error that every rank raises alike (torch's API, an
    # assertion in its ZeRO) fails that case, not the run: the checks above still come back.
    wrapped, wrap_skipped, wrap_bad = None, None, None
    try:
        wrapped, wrap_skipped = run_wrapped(backend, dev, rank)
    except Exception as e:
        traceback.print_exc()
        wrap_bad = [f"rank {rank}: {type(e).__name__}: {e}"]
    # check_wrapped's gather is a collective: every rank enters it, or none (a rank whose run
    # raised alone would leave its peers waiting there).
    ran = [None] * world
    dist.all_gather_object(ran, wrapped is not None)
    if all(ran):
        try:
            wrap_bad = check_wrapped(wrapped, rank)
        except Exception as e:
            traceback.print_exc()
            wrap_bad = [f"rank {rank}: {type(e).__name__}: {e}"]
    elif wrapped is not None:
        wrap_bad = [f"rank {rank}: not checked: the wrapped run did not finish on rank(s) "
                    f"{[r for r, ok in enumerate(ran) if not ok]}"]
    zero_skipped, zero_bad = zero_overlap_unsupported(cpu), None
    try:
        if zero_skipped is None:
            got_zero, zero_calls = run_zero(backend, dev, rank, overlap=True)
            want_zero, _ = run_zero(backend, dev, rank, overlap=False)
            zero_bad = check_zero(got_zero, want_zero, zero_calls, rank)
        else:  # the reference alone: its training path runs where the overlap cannot
            run_zero(backend, dev, rank, overlap=False)
    except Exception as e:
        traceback.print_exc()
        zero_bad = [f"rank {rank}: {type(e).__name__}: {e}"]
    # An unused parameter's released slice, with gradient_as_bucket_view off and on. Every rank
    # runs both cases and their checks (collectives) alike; a rank's error fails the case.
    unused_skipped, unused_bad, unused_err = unused_unsupported(), None, None
    if unused_skipped is None:
        unused_bad, errs = [], []
        for bav in (False, True):
            case = f"unused bucket_view={bav}"
            try:
                mine = run_unused(backend, dev, rank, bav)
            except Exception as e:
                traceback.print_exc()
                mine, msg = None, f"rank {rank} {case}: {type(e).__name__}: {e}"
            ran = [None] * world
            dist.all_gather_object(ran, mine is not None)
            if not all(ran):
                unused_bad.append(msg if mine is None else
                                  f"rank {rank} {case}: not checked: the run failed on "
                                  f"rank(s) {[r for r, ok in enumerate(ran) if not ok]}")
                continue
            b, err = check_unused(mine, rank, case)
            unused_bad += b
            if err is not None:
                errs.append(err)
        unused_err = max(errs) if errs else None
    _, hashes = gc_ranks.gather_hashes(b"".join(t.numpy().tobytes() for row in got for t in row))
    all_bad = [None] * world
    dist.all_gather_object(all_bad, bad)
    all_bad = [m for ms in all_bad for m in ms]
    all_scaler = [None] * world
    dist.all_gather_object(all_scaler, scaler_bad or [])
    all_scaler = [m for ms in all_scaler for m in ms]
    all_wrap = [None] * world
    dist.all_gather_object(all_wrap, wrap_bad or [])
    all_wrap = [m for ms in all_wrap for m in ms]
    all_zero = [None] * world
    dist.all_gather_object(all_zero, zero_bad or [])
    all_zero = [m for ms in all_zero for m in ms]
    all_unused = [None] * world
    dist.all_gather_object(all_unused, unused_bad or [])
    all_unused = [m for ms in all_unused for m in ms]
    all_err = [None] * world
    dist.all_gather_object(all_err, unused_err)
    res = None
    if rank == 0:
        st = state.stats()
        res = {"device": args.device, "world": world, "steps": STEPS, "start_iter": START,
               "allreduce_results_checked": world * STEPS * len(buckets),
               "reduce_scatter_results_checked": world * len(got_rs or []),
               "reduce_scatter_skipped": None if got_rs is not None else
               "libgradcomp has no gradcompReduceScatterKeyed",
               "mismatches": all_bad[:8], "mismatch_count": len(all_bad),
               "ranks_identical": len(set(hashes)) == 1,
               "bitwise": not all_bad and len(set(hashes)) == 1,
               "hook_calls_compressed": (st["gradcomp"] or {}).get("calls_compressed"),
               # GradcompState(grad_scaler=...): results of scaled gradients bit for bit the
               # scale times the unscaled ones (None: a library without the loss scale).
               "scaler_results_checked": world * scaler_checked,
               "scaler_bitwise": None if scaler_bad is None else not all_scaler,
               "scaler_mismatches": all_scaler[:8],
               # register_ddp_hook(wrap=fp16_compress_wrapper) on a DDP: each call's result
               # bit for bit (None: skipped, wrap_skipped says why).
               "wrap_results_checked": world * len(wrapped["calls"]) if wrapped else 0,
               "wrap_grads_checked": world * wrapped["grads_checked"] if wrapped else 0,
               "wrap_calls_compressed": wrapped["calls_compressed"] if wrapped else None,
               "wrap_bitwise": None if wrap_bad is None else not all_wrap,
               "wrap_mismatches": all_wrap[:8], "wrap_skipped": wrap_skipped,
               # ZeroRedundancyOptimizer(overlap_with_ddp=True) around the hook: the parameters
               # after every step those of SGD after the hook (None: skipped, and why).
               "zero_overlap_steps": ZERO_STEPS,
               "zero_overlap_params_equal": None if zero_bad is None else not all_zero,
               "zero_overlap_mismatches": all_zero[:8], "zero_overlap_skipped": zero_skipped,
               # DDP(find_unused_parameters=True), p unused on every rank at one step: the
               # gradients p got sum to its averaged gradients (None: skipped, and why).
               "unused_carry_conserved": None if unused_bad is None else not all_unused,
               "unused_carry_max_error": max((e for e in all_err if e is not None),
                                             default=None),
               "unused_carry_cases": 2 if unused_bad is not None else 0,
               "unused_carry_mismatches": all_unused[:8], "unused_carry_skipped": unused_skipped,
               "preload_loaded": gc_ranks.preload_loaded()}
        print(f"hook_exact: {res}", flush=True)
    dist.barrier()
    if rs_state is not None:
        rs_state.close()
    return gc_ranks.finish_rank(res, rank, args.out, state)


if __name__ == "__main__":
    gc_ranks.run_rank(main)
