"""Single-process simulation of the CPU LM study (bench/results/2026-12-01-cpu-lm) with the
two-shot QSGD exchange written in torch, to try level tables the codec does not have yet.
Usage: python3 sim.py NAME [round=stoch|near] [d=512] [bits=4] [levels=uni|exp|powP] [clip=C] [ef=1]
A research tool, not gradcomp: the product codec is the C library (README.md here)."""
import math, os, sys, json, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../tools"))
os.environ.setdefault("GC_LM_DEVICE", "cpu")
import lm_compare as L
import torch, torch.nn as nn
torch.set_num_threads(int(os.environ.get("SIM_THREADS", "1")))
W = 4
variant = sys.argv[1]
cfg = dict(kv.split("=") for kv in sys.argv[2:])
bits = int(cfg.get("bits", 4)); d = int(cfg.get("d", 512)); rnd = cfg.get("round", "stoch")
clip = float(cfg.get("clip", 0)); ef = int(cfg.get("ef", 1)); s = (1 << (bits - 1)) - 1
gen_q = torch.Generator().manual_seed(7)
lev = cfg.get("levels", "uni")
if lev == "uni": table = torch.arange(s + 1, dtype=torch.float32) / s
elif lev == "exp": table = torch.tensor([0.0] + [2.0 ** -(s - 1 - k) for k in range(s)])
else: table = (torch.arange(s + 1, dtype=torch.float32) / s) ** float(lev[3:])  # powP


def quant(x):
    n = x.numel(); pad = (-n) % d
    xb = torch.cat([x, x.new_zeros(pad)]).view(-1, d)
    scale = xb.abs().amax(1, keepdim=True)
    if clip > 0:
        rms = xb.pow(2).mean(1, keepdim=True).sqrt()
        scale = torch.minimum(scale, clip * rms)
    sc = torch.where(scale > 0, scale, torch.ones_like(scale))
    r = (xb.abs() / sc).clamp(max=1.0)
    hi = torch.searchsorted(table, r.contiguous()).clamp(1, s)
    lo_v, hi_v = table[hi - 1], table[hi]
    frac = (r - lo_v) / (hi_v - lo_v)
    if rnd == "stoch":
        u = torch.rand(r.shape, generator=gen_q)
        val = torch.where(u < frac, hi_v, lo_v)
    else:
        val = torch.where(frac > 0.5, hi_v, lo_v)
    q = torch.sign(xb) * val * sc
    q = torch.where(scale > 0, q, torch.zeros_like(q))
    return q.view(-1)[:n]

tr, va, _ = L.corpus()
train = torch.frombuffer(bytearray(tr), dtype=torch.uint8).long()
val = torch.frombuffer(bytearray(va), dtype=torch.uint8).long()
torch.manual_seed(L.SEED)
model = L.build_model(torch, nn)
params = list(model.parameters())
comp = [p for p in params if p.dim() > 1 and p.numel() >= 1024]
full = [p for p in params if not (p.dim() > 1 and p.numel() >= 1024)]
ncomp = sum(p.numel() for p in comp)
res = [torch.zeros(ncomp) for _ in range(W)]; ores = torch.zeros(ncomp)
opt = torch.optim.AdamW(params, lr=L.LR, weight_decay=0.0)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda st: min(1.0, (st + 1) / L.WARMUP))
lossf = nn.CrossEntropyLoss()
gens = [torch.Generator().manual_seed(L.DATA_SEED * 1000 + r) for r in range(W)]
vgen = torch.Generator().manual_seed(L.SEED)
vb = [L.batch(torch, val, vgen, L.BATCH) for _ in range(L.EVAL_BATCHES)]
def evaluate():
    model.eval()
    with torch.no_grad():
        t = sum(lossf(model(x).flatten(0, 1), y.flatten()).item() for x, y in vb)
    model.train(); return t / len(vb)
curve = []; t0 = time.time()
for step in range(L.STEPS):
    gc = []; gf = [torch.zeros_like(p) for p in full]
    for r in range(W):
        x, y = L.batch(torch, train, gens[r], L.BATCH)
        model.zero_grad(set_to_none=True)
        lossf(model(x).flatten(0, 1), y.flatten()).backward()
        gc.append(torch.cat([p.grad.reshape(-1) for p in comp]))
        for a, p in zip(gf, full): a += p.grad
    if variant == "none" or step < L.START_ITER:
        avg = sum(gc) / W
    else:
        S = torch.zeros(ncomp)
        for r in range(W):
            xr = gc[r] + res[r]; q = quant(xr)
            if ef: res[r] = xr - q
            S += q
        xs = S + ores; Q = quant(xs)
        if ef: ores = xs - Q
        avg = Q / W
    off = 0
    for p in comp:
        p.grad = avg[off:off + p.numel()].view_as(p).clone(); off += p.numel()
    for a, p in zip(gf, full): p.grad = a / W
    opt.step(); sched.step()
    if (step + 1) % L.EVAL_EVERY == 0 or step == L.STEPS - 1:
        curve.append((step + 1, evaluate()))
out = {"variant": variant, "cfg": cfg, "final": curve[-1][1], "curve": curve, "secs": time.time() - t0}
print(json.dumps(out))
open(os.path.join(os.environ.get("SIM_OUT", "."), variant + ".json"), "w").write(json.dumps(out))
