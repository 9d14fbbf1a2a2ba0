#!/usr/bin/env bash
# PyTorch DDP under LD_PRELOAD on a GPU machine: the unchanged script
# tools/ddp_train.py with 2 and 4 ranks sharing ONE GPU (each process its own
# NCCL_HOSTID, NCCL over sockets on loopback: DESIGN.md's multi-rank set-up),
# uncompressed, QSGD 4-bit and DGC 0.1%, QSGD 4-bit hierarchical at 4 ranks
# (GRADCOMP_LOCAL_SIZE=2: two nodes of two ranks), plus a GRADCOMP_METHOD=none
# run under the preload (pure pass-through). Records final test accuracy, the
# difference from uncompressed in points, whether parameters are bitwise
# identical across ranks, and the compressed-call counts from the preload
# library's INFO summary lines. Writes OUTDIR/ddp.json and OUTDIR/ddp.md after
# every run (so a time limit still leaves a report), logs in OUTDIR/ddp_*.log.
#
# Usage: tools/ddp_check.sh OUTDIR [BUILD_DIR]     (BUILD_DIR default build-gpu, else build)
# GC_DDP_BUDGET_S (560) bounds the whole check, GC_DDP_RUN_TIMEOUT_S (150) one
# run, GC_DDP_EPOCHS (40) the training, GC_DDP_GPU (0) the GPU all ranks share,
# GC_DDP_WORLDS ("2 4") the world sizes, PYTHON (python3) the interpreter with
# torch and scikit-learn.
set -uo pipefail
caller=$PWD  # a relative OUTDIR is read against it (check_args), as a shell user expects
cd "$(dirname "$0")/.."
source tools/torch_ranks.sh
check_args ddp "$@"
start=$(date +%s)
deadline=$((start + ${GC_DDP_BUDGET_S:-560}))
run_limit=${GC_DDP_RUN_TIMEOUT_S:-150}
epochs=${GC_DDP_EPOCHS:-40}
gpu=${GC_DDP_GPU:-0}
: > "$out/ddp_runs.tsv"  # name, world, status, seconds, note

summarize() {
  "$py" - "$out" <<'PY'
import glob, json, os, re, sys
out = sys.argv[1]
SUMMARY = re.compile(r"summary comm (\S+) rank (\S+) method (\S+): (\d+) calls compressed, "
                     r"(\d+) passed through(?: \(\d+ by auto\))?, (\d+) bytes sent"
                     r"(?: \((\d+) to other nodes\))? for (\d+) dense bytes")

def load(name):
    """A run's result, only when its status in this call's runs list is ok."""
    if status.get(name, ("missing",))[0] != "ok":
        return None
    try:
        with open(os.path.join(out, f"ddp_{name}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def gradcomp_lines(name):
    """Per-rank summary totals and the first gradcomp warning of a run."""
    per_rank, warn = [], None
    for log in sorted(glob.glob(os.path.join(out, f"ddp_{name}_r*.log"))):
        text = open(log, errors="replace").read()
        found = [m.groups() for m in SUMMARY.finditer(text)]
        if found:
            per_rank.append([sum(int(g[i] or 0) for g in found) for i in (3, 4, 5, 7, 6)])
        if warn is None:
            w = re.search(r"^gradcomp \d+ WARN (.*)$", text, re.M)
            warn = w.group(1)[:300] if w else None
    return per_rank, warn

status = {}
try:
    for line in open(os.path.join(out, "ddp_runs.tsv")):
        f = line.rstrip("\n").split("\t")
        if len(f) >= 5:
            status[f[0]] = (f[2], f[3], f[4])
except OSError:
    pass
meta = {}
try:
    meta = json.load(open(os.path.join(out, "ddp_meta.json")))
except (OSError, ValueError):
    pass

res = dict(meta)
rows = []
methods = ("none", "qsgd4", "dgc", "hier_qsgd4", "passthrough")
for world in (2, 4):
    base = load(f"none_n{world}")
    for m in methods:
        name = f"{m}_n{world}"
        if name not in status:
            continue
        r = load(name)
        acc = r["accuracy_pct"] if r else None
        delta = acc - base["accuracy_pct"] if (r and base) else None
        per_rank, warn = gradcomp_lines(name) if m != "none" else ([], None)
        calls = sum(p[0] for p in per_rank) if per_rank else (0 if m == "none" else None)
        passed = sum(p[1] for p in per_rank) if per_rank else None
        sent = sum(p[2] for p in per_rank)
        dense = sum(p[3] for p in per_rank)
        ratio = dense / sent if sent else None
        ident = r["params_identical"] if r else None
        same_as_base = (r["param_hash"] == base["param_hash"]) if (r and base) else None
        key = f"ddp_{m}_n{world}"
        res[f"{key}_status"] = status[name][0]
        res[f"{key}_acc_pct"] = acc
        res[f"{key}_params_identical"] = ident
        res[f"{key}_compressed_calls"] = calls
        res[f"{key}_compressed_calls_per_rank"] = [p[0] for p in per_rank]
        res[f"{key}_passed_calls"] = passed
        res[f"{key}_wire_ratio"] = ratio
        if m == "hier_qsgd4":
            res[f"{key}_inter_node_bytes"] = sum(p[4] for p in per_rank) if per_rank else None
            res[f"{key}_wire_bytes"] = sent
        if m != "none":
            res[f"{key}_acc_delta_pts"] = delta
        if m == "passthrough":
            res[f"{key}_params_equal_uncompressed"] = same_as_base
        if r:
            res.setdefault("torch_version", r.get("torch_version"))
            res.setdefault("nccl_version", r.get("nccl_version"))
            res.setdefault("num_params", r.get("num_params"))
        rows.append((world, m, status[name], acc, delta, ident, calls, ratio, same_as_base, warn,
                     r["steps"] if r else None))
# Headline keys: the 4-rank runs, else the 2-rank ones.
res["ddp_hier_qsgd4_acc_delta_pts"] = res.get("ddp_hier_qsgd4_n4_acc_delta_pts")
for m in ("qsgd4", "dgc"):
    v = res.get(f"ddp_{m}_n4_acc_delta_pts")
    res[f"ddp_{m}_acc_delta_pts"] = v if v is not None else res.get(f"ddp_{m}_n2_acc_delta_pts")
ok_runs = [r for r in rows if r[2][0] == "ok"]
res["ddp_params_identical_all_runs"] = (all(r[5] for r in ok_runs) if ok_runs else None)
res["ddp_runs_ok"] = len(ok_runs)
res["ddp_runs"] = len(rows)
with open(os.path.join(out, "ddp.json"), "w") as f:
    json.dump(res, f, indent=1, sort_keys=True)

fmt = lambda v, f: "n/a" if v is None else f.format(v)
label = {"none": "uncompressed (no preload)", "qsgd4": "QSGD 4-bit", "dgc": "DGC 0.1%",
         "hier_qsgd4": "QSGD 4-bit, hierarchical (GRADCOMP_LOCAL_SIZE=2)",
         "passthrough": "GRADCOMP_METHOD=none (preload, pass-through)"}
with open(os.path.join(out, "ddp.md"), "w") as f:
    f.write("### PyTorch DDP under LD_PRELOAD (MLP on scikit-learn digits)\n\n")
    f.write(f"torch {res.get('torch_version')}, NCCL {res.get('nccl_version')}, "
            f"{res.get('num_params')} parameters, {meta.get('epochs')} epochs, all ranks on one GPU "
            f"(socket transport: times are not meaningful), GRADCOMP_GROUP={meta.get('group')}.\n\n")
    f.write("| ranks | run | status | steps | test accuracy % | vs uncompressed (pts) | "
            "params identical on all ranks | compressed calls (all ranks) | dense/wire bytes |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    for world, m, st, acc, delta, ident, calls, ratio, same, warn, steps in rows:
        state = st[0] + (f" ({st[2]})" if st[2] else "")
        f.write(f"| {world} | {label[m]} | {state} | {fmt(steps, '{}')} | {fmt(acc, '{:.2f}')} | "
                f"{'-' if m == 'none' else fmt(delta, '{:+.2f}')} | {fmt(ident, '{}')} | {fmt(calls, '{}')} | "
                f"{fmt(ratio, '{:.2f}x')} |\n")
    f.write("\nGoal: |difference| <= 1 point, parameters identical on all ranks, compressed calls "
            "> 0. DGC runs use --momentum 0 (gradcomp's momentum correction replaces the "
            "optimizer's).\n")
    same = [r for r in rows if r[1] == "passthrough" and r[8] is not None]
    for r in same:
        f.write(f"\nPass-through run ({r[0]} ranks) ends with parameters "
                f"{'bitwise equal to' if r[8] else 'different from'} the run without the preload.\n")
    warns = [(r[0], r[1], r[9]) for r in rows if r[9]]
    if warns:
        f.write("\ngradcomp warnings (first per run):\n\n")
        for world, m, w in warns:
            f.write(f"- {world} ranks, {label[m]}: `{w}`\n")
    bad = [r for r in rows if r[2][0] != "ok"]
    if bad:
        f.write("\nRuns that did not finish: see ddp_<run>_r<rank>.log in the raw outputs.\n")
PY
}

trap stop TERM INT

give_up() {  # writes the reason as the report and exits
  echo "ddp_check: $1" >&2
  "$py" -c 'import json,sys; json.dump({"ddp_error": sys.argv[2]}, open(sys.argv[1], "w"))' \
    "$out/ddp.json" "$1" 2>/dev/null || echo "{\"ddp_error\": \"see ddp.md\"}" > "$out/ddp.json"
  printf '### PyTorch DDP under LD_PRELOAD\n\nNot run: %s\n' "$1" > "$out/ddp.md"
  exit 1
}

# --- prerequisites, each with a clear message
need_torch ddp
need_cuda ddp
need_preload ddp
torch_version=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null)
# GRADCOMP_GROUP is left at its default (defer), which also compresses the
# single collectives older PyTorch wraps in ncclGroupStart/End.
group=${GRADCOMP_GROUP:-defer}
"$py" -c 'import json, sys; json.dump({"epochs": int(sys.argv[2]), "group": sys.argv[3], "preload": sys.argv[4]}, open(sys.argv[1], "w"))' \
  "$out/ddp_meta.json" "$epochs" "$group" "$preload"
echo "ddp_check: torch $torch_version, GPU $gpu, GRADCOMP_GROUP=$group, results in $out"

# NCCL's warnings only; GRADCOMP_AUTO=0: the runs measure compression itself.
train_env=(NCCL_DEBUG=WARN GRADCOMP_AUTO=0)
for world in ${GC_DDP_WORLDS:-2 4}; do
  run_training "none_n$world" "$world" 0.9 0
  run_training "qsgd4_n$world" "$world" 0.9 1 GRADCOMP_METHOD=qsgd GRADCOMP_BITS=4
  run_training "dgc_n$world" "$world" 0 1 GRADCOMP_METHOD=dgc GRADCOMP_DENSITY=0.001 \
    GRADCOMP_MOMENTUM=0.9 GRADCOMP_WARMUP_STEPS=100
  if [ "$world" = 4 ]; then
    run_training "hier_qsgd4_n$world" "$world" 0.9 1 GRADCOMP_METHOD=qsgd GRADCOMP_BITS=4 \
      GRADCOMP_LOCAL_SIZE=2
  fi
done
run_training passthrough_n2 2 0.9 1 GRADCOMP_METHOD=none

summarize
cat "$out/ddp.md"
# Fails when a run failed or timed out, a finished compressed run compressed nothing, or no
# run finished. A run skipped for the time budget (GC_DDP_BUDGET_S) is named, not failed: the
# report carries what the budget allowed.
"$py" - "$out/ddp.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
runs = {k[:-len("_status")]: v for k, v in r.items() if k.endswith("_status")}
bad = [k for k, v in runs.items() if v not in ("ok", "skipped")]
none = [k for k, v in runs.items() if v == "ok" and ("qsgd4" in k or "dgc" in k)
        and not r.get(k + "_compressed_calls")]
for k in bad:
    print(f"ddp_check: {k} did not finish: {runs[k]}")
for k in none:
    print(f"ddp_check: {k} compressed no call")
skipped = [k for k, v in runs.items() if v == "skipped"]
if skipped:
    print(f"ddp_check: skipped (time budget spent): {', '.join(skipped)}")
if "ok" not in runs.values():
    print("ddp_check: no run finished")
sys.exit(1 if bad or none or "ok" not in runs.values() else 0)
PY
