#!/usr/bin/env python3
"""torch.topk on the data gradcomp's selectors see, timed on the GPU.

Generates benchValue(seed, rank, i) of bench/common/data.h bit for bit (the
same splitmix64 hash in int64 arithmetic), then times, per size and density,
torch.topk(x.abs(), k) -- the operation a DGC threshold selector replaces --
and a device copy of x for scale. gradcomp's own selector times come from
gradcomp_kernels_perf; tools/gpu-check.sh puts the two side by side.

Usage: torch_topk.py [--min-log2 20] [--max-log2 28] [--step-log2 2]
                     [--densities 0.001,0.01] [--json FILE] [--print-values N]

--json FILE is rewritten after every row ("complete": false until the last, then true).
"""
import argparse
import json
import math
import os
import sys
import time

GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


def signed64(c):
    c &= MASK64
    return c - (1 << 64) if c >= (1 << 63) else c


def mix64_int(z):
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def lsr(z, k):
    """Logical shift right of int64 values (>> is arithmetic on int64)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix64(z):
    # int64 products wrap like uint64 ones: the low 64 bits agree.
    z = (z ^ lsr(z, 30)) * signed64(0xBF58476D1CE4E5B9)
    z = (z ^ lsr(z, 27)) * signed64(0x94D049BB133111EB)
    return z ^ lsr(z, 31)


def bench_values(xp, idx, seed=1, rank=0):
    """benchValue for int64 indices idx; xp is torch or numpy (both wrap int64)."""
    key = signed64(mix64_int(seed + rank * GOLDEN))
    s = None
    for k in range(4):
        z = (idx * 4 + (k + 1)) * signed64(GOLDEN) + key
        u = lsr(mix64(z), 40)
        s = u if s is None else s + u
    s = s - (1 << 25)
    if xp.__name__ == "torch":
        return s.to(xp.float32) * xp.tensor(1.03238106e-7, dtype=xp.float32, device=s.device)
    return s.astype(xp.float32) * xp.float32(1.03238106e-7)


def time_us(torch, fn, min_ms=5.0):
    """Median per-call time of batches long enough to hide launch gaps."""
    fn()
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    reps = max(3, min(200, int(min_ms / max(start.elapsed_time(end), 1e-3))))
    per = []
    for _ in range(5):
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        per.append(start.elapsed_time(end) * 1e3 / reps)
    per.sort()
    return per[len(per) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--min-log2", type=int, default=20)
    ap.add_argument("--max-log2", type=int, default=28)
    ap.add_argument("--step-log2", type=int, default=2)
    ap.add_argument("--densities", default="0.001,0.01")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--print-values", type=int, default=0,
                    help="print the first N values (numpy, no GPU) and exit")
    a = ap.parse_args()

    if a.print_values:
        import numpy as np
        v = bench_values(np, np.arange(a.print_values, dtype=np.int64), a.seed, 0)
        print("\n".join("%d %.9g" % (i, x) for i, x in enumerate(v)))
        return 0

    try:
        import torch
    except ImportError:
        print("torch_topk: PyTorch is not installed", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("torch_topk: no GPU visible to PyTorch", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    densities = [float(d) for d in a.densities.split(",")]
    free, _ = torch.cuda.mem_get_info()
    rows = []
    head = {"tool": "torch_topk", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}

    def write(complete):
        """Rewritten after every row ("complete": false until the sweep's end), written aside
        and renamed over, as gradcomp_kernels_perf does: a step limit during the largest sizes
        keeps the rows measured before it (the goal's 2^26 one), and a kill mid-write leaves
        the last whole file."""
        if not a.json:
            return
        tmp = a.json + ".part"
        with open(tmp, "w") as f:
            json.dump(dict(head, complete=complete, rows=rows), f, indent=1)
            f.write("\n")
        os.replace(tmp, a.json)

    write(False)  # an empty one at once: no earlier run's file stands for this run's
    print("# torch_topk: %s, torch %s" % (torch.cuda.get_device_name(0), torch.__version__))
    print("# %11s  %8s  %10s  %14s  %12s  %10s" % ("n", "density", "k", "topk(|x|) us",
                                                      "topk only us", "copy us"))
    for lg in range(a.min_log2, a.max_log2 + 1, a.step_log2):
        n = 1 << lg
        if 4 * n * 4 > free * 0.8:  # x, |x|, a copy, topk's scratch
            print("# n=2^%d skipped: not enough GPU memory" % lg)
            break
        x = torch.empty(n, dtype=torch.float32, device=dev)
        chunk = 1 << 24
        for lo in range(0, n, chunk):
            idx = torch.arange(lo, min(n, lo + chunk), dtype=torch.int64, device=dev)
            x[lo:lo + idx.numel()] = bench_values(torch, idx, a.seed, 0)
        y = torch.empty_like(x)
        ax = x.abs()
        copy = time_us(torch, lambda: y.copy_(x))
        for d in densities:
            k = max(1, math.ceil(d * n))
            full = time_us(torch, lambda: torch.topk(x.abs(), k, sorted=False))
            only = time_us(torch, lambda: torch.topk(ax, k, sorted=False))
            rows.append({"n": n, "density": d, "k": k, "torch_topk_abs_us": full,
                         "torch_topk_us": only, "copy_us": copy})
            print("  %11d  %8g  %10d  %14.1f  %12.1f  %10.1f" % (n, d, k, full, only, copy))
            sys.stdout.flush()
            write(False)
        del x, y, ax
        torch.cuda.empty_cache()
    write(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
