#!/usr/bin/env python3
"""A plain PyTorch DDP training script: an MLP on scikit-learn's digits.

Compression enters through LD_PRELOAD=libgradcomp_preload.so and GRADCOMP_*
variables (the script itself unchanged), or, with --hook gradcomp, through
gradcomp.torch's DDP comm hook (settings from the same GRADCOMP_* variables;
--layer-min-size and --start-iter as GradcompState's; on --device cpu the
hook runs on gradcomp's CPU backend over TCP, GradcompState(backend="cpu")). --resume-check K
(with the hook) also trains a second model K steps, checkpoints model,
optimizer and hook state, resumes them in a fresh model, DDP and state, and
reports whether the final parameters are bitwise those of the run without
the break. --abort-check (with the hook) ends the hook's state with abort()
instead of close() and reports whether a second abort() and close() were
no-ops and a hook call then refused. Launched one
process per rank with the usual env:// variables (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, LOCAL_RANK) by torchrun or tools/ddp_check.sh.
Fixed seeds and a fixed data order, so runs differ only by what the
allreduce does. Rank 0 prints (and with --out writes) a JSON result: final
test accuracy and loss, and whether the parameters are bitwise identical on
every rank (SHA-256 of their bytes, gathered from all ranks).

With DGC momentum correction (GRADCOMP_METHOD=dgc, on by default) pass
--momentum 0: gradcomp accumulates the velocity itself, so the optimizer's
own momentum must be off.
"""
import argparse
import copy
import sys
import time

import digits_mlp as dm
import gc_ranks
from digits_mlp import fail, torch, nn

try:
    from torch.nn.parallel import DistributedDataParallel as DDP
except ImportError as e:  # pragma: no cover - depends on the machine
    fail(f"needs PyTorch and NumPy ({e})")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    dm.add_args(p)
    p.add_argument("--hook", choices=("none", "gradcomp"), default="none",
                   help="gradcomp: register gradcomp.torch's comm hook (GRADCOMP_* settings)")
    p.add_argument("--layer-min-size", type=int, default=1024)
    p.add_argument("--start-iter", type=int, default=2)
    p.add_argument("--whole-buckets", action="store_true",
                   help="with --hook gradcomp: compress 1-d parameters too (as the preload)")
    p.add_argument("--resume-check", type=int, default=0, metavar="K",
                   help="with --hook gradcomp: also check a checkpoint/resume after K steps")
    p.add_argument("--abort-check", action="store_true",
                   help="with --hook gradcomp: end with state.abort() and check what follows")
    args = p.parse_args()

    rank, world, dev, (xtr, ytr, xte, yte) = dm.setup(args, "tools/ddp_check.sh")

    def make_model(seed):
        return dm.make_model(seed, args.hidden, dev)

    def wrap(model):
        ddp = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        state = None
        if args.hook == "gradcomp":
            import gradcomp.torch as gct

            state = gct.GradcompState(module=model, layer_min_size=args.layer_min_size,
                                      start_iter=args.start_iter,
                                      exclude_1d=not args.whole_buckets,
                                      backend="cpu" if dev.type == "cpu" else "nccl")
            gct.register_ddp_hook(ddp, state)
        return ddp, state, torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=args.momentum)

    lossf = nn.CrossEntropyLoss()
    schedule = dm.batch_schedule(args, len(xtr), world, rank, dev)

    def train(ddp, opt, steps):
        dm.train(ddp, opt, lossf, xtr, ytr, schedule, steps)

    def param_bytes(model):
        return dm.param_bytes(model.parameters())

    model = make_model(args.seed)
    ddp, state, opt = wrap(model)
    steps = len(schedule)
    t0 = time.time()
    train(ddp, opt, range(steps))
    dm.synchronize(dev)
    train_s = time.time() - t0
    hook_stats = state.stats() if state is not None else None

    resume = None
    if args.resume_check and state is not None:
        k = min(args.resume_check, steps - 1)
        m1 = make_model(args.seed)
        d1, s1, o1 = wrap(m1)
        train(d1, o1, range(k))
        ckpt = {"model": copy.deepcopy(m1.state_dict()), "opt": copy.deepcopy(o1.state_dict()),
                "gradcomp": s1.state_dict()}
        s1.close()
        m2 = make_model(args.seed + 1)  # another start: only the checkpoint makes it right
        d2, s2, o2 = wrap(m2)
        m2.load_state_dict(ckpt["model"])
        o2.load_state_dict(ckpt["opt"])
        with s2.paused():  # DDP rebuilds its buckets after a new process's first step
            lossf(d2(xtr[schedule[k]]), ytr[schedule[k]]).backward()
        o2.zero_grad(set_to_none=True)
        s2.load_state_dict(ckpt["gradcomp"])
        train(d2, o2, range(k, steps))
        resume = {"after_steps": k, "bitwise_equal": param_bytes(m2) == param_bytes(model)}
        s2.close()

    with torch.no_grad():
        logits = model(xte)
        acc = (logits.argmax(1) == yte).float().mean().item() * 100.0
        test_loss = lossf(logits, yte).item()
    res = dm.result(args, world, steps, acc, test_loss, param_bytes(model), train_s,
                    sum(q.numel() for q in model.parameters()))
    res.update({"hook": args.hook, "hook_stats": hook_stats, "resume_check": resume})
    if state is not None and args.abort_check:
        res["abort_check"] = abort_check(state, dev)
    elif state is not None:
        state.close()
    return dm.finish(res, rank, args.out)


def abort_check(state, dev):
    """state.abort() (ncclCommAbort of gradcomp's communicator, then gradcompCommAbort; on the
    CPU only the latter) after the last step; then abort() and close() again, which must do
    nothing, and a hook call, which must refuse."""
    import gradcomp.torch as gct

    class Bucket:  # refused before anything but the state is looked at
        def buffer(self):
            return torch.zeros(8, device=dev)

    t0 = time.time()
    state.abort()
    seconds = time.time() - t0
    state.abort()
    state.close()
    try:
        gct.gradcomp_hook(state, Bucket())
        refused = False
    except RuntimeError as e:
        refused = "make a new GradcompState" in str(e)
    return {"seconds": round(seconds, 3), "hook_refused": refused}


if __name__ == "__main__":
    # An exception ends this rank at once (gc_ranks.run_rank), not after its peers' time limit.
    gc_ranks.run_rank(main)
