"""What tools/ddp_train.py and tools/fsdp_train.py share, so both train the
same thing: scikit-learn's digits split, the MLP, the per-rank batch order,
the NCCL process group set-up, and the JSON result (accuracy, loss, SHA-256
of the parameters gathered from every rank). The wrapping (DDP or FSDP2)
stays in each script.
"""
import datetime
import json
import os
import sys

import gc_ranks


def fail(msg):
    print(f"{os.path.basename(sys.argv[0])}: {msg}", file=sys.stderr, flush=True)
    sys.exit(3)


try:
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn as nn
except ImportError as e:  # pragma: no cover - depends on the machine
    fail(f"needs PyTorch and NumPy ({e})")


def load_data():
    try:
        from sklearn.datasets import load_digits  # ships its data: no download
    except ImportError as e:
        fail(f"needs scikit-learn for the digits data set ({e})")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    perm = np.random.RandomState(0).permutation(len(x))
    cut = int(0.8 * len(x))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def add_args(p):
    """The options both scripts take."""
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9,
                   help="SGD momentum; 0 with GRADCOMP_METHOD=dgc (momentum correction)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch", type=int, default=16, help="per rank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=180,
                   help="seconds a collective may hang before PyTorch aborts it")
    p.add_argument("--out", default=None, help="JSON result file (written by rank 0)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: gloo on the CPU, to prove the script without a GPU")


def setup(args, launcher):
    """Joins the NCCL process group on this rank's GPU (gloo on the CPU with --device cpu)
    and puts the data there.

    Returns rank, world, dev and (xtr, ytr, xte, yte) as tensors on dev.
    """
    cpu = args.device == "cpu"
    if not cpu and not torch.cuda.is_available():
        fail("no CUDA device visible: this script trains with the NCCL backend on a GPU "
             "(--device cpu trains with gloo on the CPU)")
    for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if v not in os.environ:
            fail(f"{v} is not set: launch with torchrun or {launcher}")

    dist.init_process_group("gloo" if cpu else "nccl",
                            timeout=datetime.timedelta(seconds=args.timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    if cpu:
        dev = torch.device("cpu")
    else:
        ndev = torch.cuda.device_count()
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % ndev)
        dev = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(args.seed)

    xtr, ytr, xte, yte = load_data()
    xtr, ytr = torch.tensor(xtr, device=dev), torch.tensor(ytr, device=dev)
    xte, yte = torch.tensor(xte, device=dev), torch.tensor(yte, device=dev)
    return rank, world, dev, (xtr, ytr, xte, yte)


def make_model(seed, hidden, dev):
    torch.manual_seed(seed)
    h = hidden
    return nn.Sequential(nn.Linear(64, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                         nn.Linear(h, 10)).to(dev)


def batch_schedule(args, n, world, rank, dev):
    """The batch of every step, fixed by the seed: the same in every run."""
    per_rank = n // world
    schedule = []
    for epoch in range(args.epochs):
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)  # same order on every rank
        order = torch.randperm(n, generator=g)[: per_rank * world].view(world, per_rank)[rank]
        for i in range(0, per_rank - args.batch + 1, args.batch):
            schedule.append(order[i: i + args.batch].to(dev))
    return schedule


def synchronize(dev):
    """Waits for the device's queued work (nothing to wait for on the CPU)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def train(model, opt, lossf, xtr, ytr, schedule, steps):
    for s in steps:
        idx = schedule[s]
        opt.zero_grad(set_to_none=True)
        loss = lossf(model(xtr[idx]), ytr[idx])
        loss.backward()
        opt.step()


def param_bytes(params):
    return b"".join(q.detach().cpu().numpy().tobytes() for q in params)


def result(args, world, steps, acc, test_loss, blob, train_s, num_params):
    """The JSON result; gathers every rank's parameter hash (a collective)."""
    digest, hashes = gc_ranks.gather_hashes(blob)
    try:
        nccl_version = (".".join(str(v) for v in torch.cuda.nccl.version())
                        if args.device == "cuda" else None)
    except Exception:  # noqa: BLE001 - only informative
        nccl_version = None
    preloaded = gc_ranks.preload_loaded()
    return {
        "world": world,
        "device": args.device,
        "backend": dist.get_backend(),
        "epochs": args.epochs,
        "steps": steps,
        "momentum": args.momentum,
        "accuracy_pct": acc,
        "test_loss": test_loss,
        "param_hash": digest,
        "param_hashes": hashes,
        "params_identical": len(set(hashes)) == 1,
        "train_seconds": train_s,
        "preload_loaded": preloaded,
        "gradcomp_method": os.environ.get("GRADCOMP_METHOD", "qsgd") if preloaded else None,
        "torch_version": torch.__version__,
        "nccl_version": nccl_version,
        "num_params": num_params,
    }


def finish(res, rank, out):
    """Rank 0 prints (and with out writes) the result; then all leave the group and end."""
    if rank == 0:
        print(json.dumps(res), flush=True)
        if out:
            with open(out, "w") as f:
                json.dump(res, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
    import gc_ranks  # beside this file

    gc_ranks.leave(0)  # the process ends here: see gc_ranks.leave
