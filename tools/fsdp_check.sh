#!/usr/bin/env bash
# PyTorch FSDP2 under LD_PRELOAD on a GPU machine: the unchanged script
# tools/fsdp_train.py with 2 and 4 ranks sharing ONE GPU (each process its own
# NCCL_HOSTID, NCCL over sockets on loopback), uncompressed, QSGD 4-bit and
# DGC 0.1%. Records final test accuracy and its difference from uncompressed
# in points, whether the full parameters gathered after training are bitwise
# identical on all ranks, the compressed reduce-scatter calls per rank (the
# preload's INFO summary), and the NCCL calls by collective that the program
# made (NCCL_DEBUG_SUBSYS=COLL of the uncompressed run; under the preload the
# same log also shows gradcomp's own send/recv and all-gathers). Writes
# OUTDIR/fsdp.json (keys fsdp_qsgd4_acc_delta_pts, fsdp_dgc_acc_delta_pts, ...)
# and OUTDIR/fsdp.md after every run; logs in OUTDIR/fsdp_*.log.
#
# Usage: tools/fsdp_check.sh OUTDIR [BUILD_DIR]    (BUILD_DIR default build-gpu, else build)
# GC_FSDP_BUDGET_S (560) bounds the whole check, GC_FSDP_RUN_TIMEOUT_S (150)
# one run, GC_FSDP_EPOCHS (40) the training, GC_FSDP_GPU (0) the GPU all ranks
# share, GC_FSDP_WORLDS ("2 4") the world sizes, PYTHON (python3) the
# interpreter with torch (FSDP2: torch >= 2.4) and scikit-learn.
set -uo pipefail
caller=$PWD  # a relative OUTDIR is read against it (check_args), as a shell user expects
cd "$(dirname "$0")/.."
source tools/torch_ranks.sh
check_args fsdp "$@"
deadline=$(($(date +%s) + ${GC_FSDP_BUDGET_S:-560}))
run_limit=${GC_FSDP_RUN_TIMEOUT_S:-150}
epochs=${GC_FSDP_EPOCHS:-40}
gpu=${GC_FSDP_GPU:-0}
: > "$out/fsdp_runs.tsv"  # name, world, status, seconds, note

summarize() {
  "$py" - "$out" "$epochs" <<'PY'
import collections, glob, json, os, re, sys
out, epochs = sys.argv[1], sys.argv[2]
SUMMARY = re.compile(r"summary comm \S+ rank \S+ method \S+: (\d+) calls compressed, (\d+) passed "
                     r"through(?: \(\d+ by auto\))?, (\d+) bytes sent(?: \(\d+ to other nodes\))? "
                     r"for (\d+) dense bytes.*?; reduce-scatter: (\d+) compressed, (\d+) passed "
                     r"through")
COLL = re.compile(r"NCCL INFO (\w+): opCount")

def load(name):
    """A run's result, only when its status in this call's runs list is ok."""
    if status.get(name, ("missing",))[0] != "ok":
        return None
    try:
        return json.load(open(os.path.join(out, f"fsdp_{name}.json")))
    except (OSError, ValueError):
        return None

def per_rank(name):
    """Per rank: [calls compressed, reduce-scatters compressed, rs passed, bytes sent, dense]."""
    ranks = []
    for log in sorted(glob.glob(os.path.join(out, f"fsdp_{name}_r*.log"))):
        found = [m.groups() for m in SUMMARY.finditer(open(log, errors="replace").read())]
        if found:
            ranks.append([sum(int(g[i]) for g in found) for i in (0, 4, 5, 2, 3)])
    return ranks

def nccl_calls(name):
    """NCCL collectives by name in rank 0's log (NCCL_DEBUG_SUBSYS=COLL)."""
    try:
        text = open(os.path.join(out, f"fsdp_{name}_r0.log"), errors="replace").read()
    except OSError:
        return None
    return dict(collections.Counter(COLL.findall(text)))

status = {}
for line in open(os.path.join(out, "fsdp_runs.tsv")):
    f = line.rstrip("\n").split("\t")
    if len(f) >= 5:
        status[f[0]] = f[2:5]
res, rows = {"epochs": int(epochs)}, []
for world in (2, 4):
    base = load(f"none_n{world}")
    for m in ("none", "qsgd4", "dgc"):
        name = f"{m}_n{world}"
        if name not in status:
            continue
        r, ranks = load(name), per_rank(name)
        key = f"fsdp_{m}_n{world}"
        acc = r["accuracy_pct"] if r else None
        res[f"{key}_status"] = status[name][0]
        res[f"{key}_acc_pct"] = acc
        res[f"{key}_params_identical"] = r["params_identical"] if r else None
        res[f"{key}_nccl_calls_rank0"] = nccl_calls(name)
        if m != "none":
            res[f"{key}_acc_delta_pts"] = acc - base["accuracy_pct"] if (r and base) else None
            res[f"{key}_rs_compressed_per_rank"] = [x[1] for x in ranks]
            res[f"{key}_rs_passed_per_rank"] = [x[2] for x in ranks]
            res[f"{key}_allreduce_compressed_per_rank"] = [x[0] - x[1] for x in ranks]
            sent, dense = sum(x[3] for x in ranks), sum(x[4] for x in ranks)
            res[f"{key}_wire_ratio"] = dense / sent if sent else None
        if r:
            for k in ("torch_version", "nccl_version", "num_params"):
                res.setdefault(k, r.get(k))
        rows.append((world, m, name))
for m in ("qsgd4", "dgc"):
    v = res.get(f"fsdp_{m}_n4_acc_delta_pts")
    res[f"fsdp_{m}_acc_delta_pts"] = v if v is not None else res.get(f"fsdp_{m}_n2_acc_delta_pts")
# tools/fsdp_stream_check.py's lines: "torch VERSION hook MODE: ok | MISMATCH in layers [...]".
try:
    for line in open(os.path.join(out, "fsdp_stream.txt"), errors="replace"):
        m = re.match(r"torch \S+ hook (plain|record_stream): (.*)$", line.strip())
        if m:
            res[f"fsdp_stream_{m.group(1)}"] = m.group(2)
except OSError:
    pass
json.dump(res, open(os.path.join(out, "fsdp.json"), "w"), indent=1, sort_keys=True)

fmt = lambda v, f="{}": "n/a" if v is None else f.format(v)
label = {"none": "uncompressed (no preload)", "qsgd4": "QSGD 4-bit", "dgc": "DGC 0.1%"}
with open(os.path.join(out, "fsdp.md"), "w") as f:
    f.write("### PyTorch FSDP2 under LD_PRELOAD (MLP on scikit-learn digits, fully_shard per layer)\n\n")
    f.write(f"torch {res.get('torch_version')}, NCCL {res.get('nccl_version')}, "
            f"{res.get('num_params')} parameters, {epochs} epochs, all ranks on one GPU.\n\n")
    f.write("| ranks | run | status | test accuracy % | vs uncompressed (pts) | full params identical "
            "| compressed reduce-scatters per rank | passed per rank | compressed allreduces per rank "
            "| NCCL calls seen by rank 0 |\n|---|---|---|---|---|---|---|---|---|---|\n")
    for world, m, name in rows:
        k = f"fsdp_{m}_n{world}"
        st = status[name]
        f.write(f"| {world} | {label[m]} | {st[0]}{' (' + st[2] + ')' if st[2] else ''} | "
                f"{fmt(res.get(k + '_acc_pct'), '{:.2f}')} | "
                f"{'-' if m == 'none' else fmt(res.get(k + '_acc_delta_pts'), '{:+.2f}')} | "
                f"{fmt(res.get(k + '_params_identical'))} | {fmt(res.get(k + '_rs_compressed_per_rank'))} | "
                f"{fmt(res.get(k + '_rs_passed_per_rank'))} | "
                f"{fmt(res.get(k + '_allreduce_compressed_per_rank'))} | "
                f"{fmt(res.get(k + '_nccl_calls_rank0'))} |\n")
    f.write("\nThe uncompressed runs' NCCL calls are what FSDP itself makes; under the preload the "
            "log adds gradcomp's own Send/Recv (the all-to-all) and AllGather calls. Goal: "
            "|difference| <= 1 point, compressed reduce-scatters > 0 on every rank, full "
            "parameters identical on all ranks. DGC runs use --momentum 0.\n")
    if "fsdp_stream_plain" in res or "fsdp_stream_record_stream" in res:
        f.write("\nAll-reduce hook on a tensor FSDP may free early (tools/fsdp_stream_check.py, "
                "param_dtype=bfloat16): plain hook "
                f"{res.get('fsdp_stream_plain', 'n/a')}; hook recording the tensor on its stream "
                f"(as gradcomp's HSDP hook) {res.get('fsdp_stream_record_stream', 'n/a')}.\n")
PY
}

trap stop TERM INT

give_up() {
  echo "fsdp_check: $1" >&2
  printf '{"fsdp_error": "%s"}\n' "$(echo "$1" | tr -d '"\\')" > "$out/fsdp.json"
  printf '### PyTorch FSDP2 under LD_PRELOAD\n\nNot run: %s\n' "$1" > "$out/fsdp.md"
  exit 1
}

need_torch fsdp
if ! "$py" -c '
try:
    from torch.distributed.fsdp import fully_shard
except ImportError:
    from torch.distributed._composable.fsdp import fully_shard' >> "$out/fsdp_prereq.log" 2>&1; then
  give_up "this PyTorch has no FSDP2 fully_shard (torch >= 2.4 needed)"
fi
need_cuda fsdp
need_preload fsdp

# GRADCOMP_AUTO=0: the runs measure compression itself (auto would pass
# reduce-scatters that NCCL does faster on this loopback); NCCL's COLL lines
# count the program's collectives.
train_env=(NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=COLL GRADCOMP_AUTO=0)
for world in ${GC_FSDP_WORLDS:-2 4}; do
  run_training "none_n$world" "$world" 0.9 0
  run_training "qsgd4_n$world" "$world" 0.9 1 GRADCOMP_METHOD=qsgd GRADCOMP_BITS=4
  run_training "dgc_n$world" "$world" 0 1 GRADCOMP_METHOD=dgc GRADCOMP_DENSITY=0.001 \
    GRADCOMP_MOMENTUM=0.9 GRADCOMP_WARMUP_STEPS=100
done

# Whether this FSDP2 frees a reduce-scatter output its all-reduce hook still uses (the HSDP
# hook records the tensor on its stream for it): reported, not a goal; a minute at most.
rm -f "$out/fsdp_stream.txt"
if [ $((deadline - $(date +%s))) -ge 75 ]; then
  CUDA_VISIBLE_DEVICES=$gpu MASTER_PORT=$((29600 + RANDOM % 300)) timeout 60 \
    "$py" tools/fsdp_stream_check.py > "$out/fsdp_stream.txt" 2>&1
  echo "fsdp_check: stream check exit $?: $(grep -h '^torch .* hook ' "$out/fsdp_stream.txt" | tr '\n' ';')"
fi

summarize
cat "$out/fsdp.md"
# Fails when a run failed or timed out, a finished compressed run compressed no reduce-scatter
# on some rank, full parameters differ between ranks, or no run finished. A run skipped for
# the time budget (GC_FSDP_BUDGET_S) is named, not failed: the report carries what it allowed.
"$py" - "$out/fsdp.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
runs = {k[:-len("_status")]: v for k, v in r.items() if k.endswith("_status")}
bad = [k + "_status" for k, v in runs.items() if v not in ("ok", "skipped")]
bad += [k for k in r if k.endswith("_rs_compressed_per_rank")
        and runs.get(k[:-len("_rs_compressed_per_rank")]) == "ok" and (not r[k] or min(r[k]) == 0)]
bad += [k for k in r if k.endswith("_params_identical") and r[k] is False]
for k in bad:
    print(f"fsdp_check: {k}: {r[k]}")
skipped = [k for k, v in runs.items() if v == "skipped"]
if skipped:
    print(f"fsdp_check: skipped (time budget spent): {', '.join(skipped)}")
if "ok" not in runs.values():
    print("fsdp_check: no run finished")
sys.exit(1 if bad or "ok" not in runs.values() else 0)
PY
