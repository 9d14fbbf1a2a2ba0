"""One rank of test_torch.CpuBackendDdp / CpuBackendFsdp: gradcomp.torch with backend="cpu"
on real DDP / FSDP2 over gloo, gradcomp's comm made from the process group (TCP between the
ranks). Usage: cpu_backend_rank.py ddp|fsdp OUT (the env:// variables from tools/gc_ranks.py).

Records every call the hook (DDP) or the reduce-scatter (FSDP) gets, its input before and its
result after, in call order, for the test to compare with a serial reference on the in-process
CPU world; writes OUT.rank<r>.pt (records) and OUT.rank<r>.json (stats, parameter hashes,
the resume check).
"""
import hashlib
import json
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

import gradcomp
import gradcomp.torch as gct

STEPS, START, RESUME_AT = 5, 1, 3


def config():
    return gradcomp.Config(from_env=False, method="qsgd", bits=4, min_elements=0, auto_tune=0)


def param_bytes(params):
    return b"".join(p.detach().numpy().tobytes() for p in params)


def batch(step, rank, din):
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(8, din, generator=g), torch.randint(0, 5, (8,), generator=g)


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

    def train(d, opt, steps):
        for step in steps:
            x, y = batch(step, rank, 32)
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(d(x), y).backward()
            opt.step()

    model = make(0)
    d, state, opt = wrap(model, recording)
    steps_of = []
    for step in range(STEPS):
        n = len(records)
        train(d, opt, [step])
        steps_of += [step] * (len(records) - n)
    for rec, step in zip(records, steps_of):
        rec["step"] = step
    stats = state.stats()
    state.close()

    # Checkpoint after RESUME_AT steps, resume in a fresh model, DDP and state.
    m1 = make(0)
    d1, s1, o1 = wrap(m1, gct.gradcomp_hook)
    train(d1, o1, range(RESUME_AT))
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
    train(d2, o2, range(RESUME_AT, STEPS))
    resumed = param_bytes(m2.parameters()) == param_bytes(model.parameters())
    s2.close()
    return records, {"stats": stats, "resume_bitwise": resumed,
                     "param_hash": hashlib.sha256(param_bytes(model.parameters())).hexdigest()}


def fsdp(out, rank):
    from torch.distributed.fsdp import fully_shard

    records = []

    class Recording(gct.GradcompReduceScatter):
        def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
            rec = {"key": self.key, "op": "avg" if op == dist.ReduceOp.AVG else
                   "sum" if op == dist.ReduceOp.SUM else str(op), "input": input_tensor.clone()}
            records.append(rec)
            work = super().__call__(output_tensor=output_tensor, input_tensor=input_tensor,
                                    group=group, op=op, async_op=async_op)
            rec["output"] = output_tensor.clone()
            return work

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 5))
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    state = gct.GradcompState(backend="cpu", config=config())
    gct.fsdp.GradcompReduceScatter = Recording  # what register_fsdp_reduce_scatter makes
    gct.register_fsdp_reduce_scatter(model, state)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        x, y = batch(step, rank, 32)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    full = b"".join(p.full_tensor().detach().numpy().tobytes() for p in model.parameters())
    stats = state.stats()
    state.close()
    return records, {"stats": stats, "param_hash": hashlib.sha256(full).hexdigest()}


def main():
    mode, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    records, res = (ddp if mode == "ddp" else fsdp)(out, rank)
    torch.save(records, f"{out}.rank{rank}.pt")
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
