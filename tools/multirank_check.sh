#!/usr/bin/env bash
# Multi-process NCCL tests of the compressed allreduce and reduce-scatter on a GPU machine:
# N = 2 and 4 processes. With one GPU, every process uses it with a distinct
# NCCL_HOSTID (NCCL then uses its socket transport: correct results,
# meaningless timings). Then N = 4 again with GRADCOMP_LOCAL_SIZE=2 (two
# nodes of two ranks: the hierarchical exchange, checked against its host
# reference). Each world writes OUTDIR/multirank_world_<tag>.json and .md
# (its counts and lines, deleted before it runs); OUTDIR/multirank.json and
# multirank.md sum every world's file there, so a later call that reruns some
# worlds (GC_MULTIRANK_RUNS, the same raw folder) keeps the others' results.
# Keys of a kind of world that has no file (hierarchical, abort) are null.
# Usage: tools/multirank_check.sh OUTDIR [BUILD_DIR]
set -uo pipefail
. "$(dirname "$0")/wait_ranks.sh"
out=${1:?usage: multirank_check.sh OUTDIR [BUILD_DIR]}
build=${2:-build}
bin=$build/tests/gradcomp_multirank
# Not under set -e: an OUTDIR that cannot be made would fail every write after it, one by one.
if ! mkdir -p "$out" || [ ! -w "$out" ]; then
  echo "multirank_check: cannot write OUTDIR '$out': give a folder that can be made and written" >&2
  exit 2
fi
if [ ! -x "$bin" ]; then
  echo "multirank: $bin not built" >&2
  echo '{"multirank_tests_passed": 0, "multirank_tests_failed": 1, "multirank_rs_tests_failed": 1, "multirank_error": "not built"}' > "$out/multirank.json"
  echo "- multirank: **not built**" > "$out/multirank.md"
  exit 1
fi
# Whole GPUs only: with MIG on, `nvidia-smi -L` also lists each instance on a
# line of its own, and ranks on one GPU need a host id each whatever its MIG mode.
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
# GC_MULTIRANK_BUDGET_S (default gpu-check's GC_STEP_BUDGET_S; unset or 0: none)
# bounds the script: each run's ranks get what is left of it (the suites less
# what the abort runs need), so a run that is slow or hangs is counted failed
# and the JSON is still written before the step's own limit kills the script.
budget=${GC_MULTIRANK_BUDGET_S:-${GC_STEP_BUDGET_S:-0}}
t_end=$(($(date +%s) + budget))
abort_reserve=40
# run_limit CAP [RESERVE]: seconds for the next run, CAP or less when the budget runs out.
run_limit() {
  local cap=$1 left
  [ "$budget" -gt 0 ] || { echo "$cap"; return; }
  left=$((t_end - $(date +%s) - ${2:-0}))
  [ "$left" -lt 5 ] && left=5
  [ "$left" -lt "$cap" ] && echo "$left" || echo "$cap"
}
# rank_env R N L [NB]: env_extra for rank R of N (L: GRADCOMP_LOCAL_SIZE, 0 =
# flat; NB 1: NCCL_COMM_BLOCKING=0, every NCCL communicator non-blocking; NB 2:
# that and GRADCOMP_PRIVATE_COMM=1, gradcomp's exchanges on a private split):
# with fewer GPUs than ranks, each rank its own NCCL host over loopback sockets.
rank_env() {
  env_extra=()
  if [ "$ngpu" -lt "$2" ]; then
    env_extra=(NCCL_HOSTID=host-$1 NCCL_NET=Socket NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1
               NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_NVLS_ENABLE=0)
  fi
  [ "$3" != 0 ] && env_extra+=(GRADCOMP_LOCAL_SIZE=$3)
  [ "${4:-0}" != 0 ] && env_extra+=(NCCL_COMM_BLOCKING=0)
  [ "${4:-0}" = 2 ] && env_extra+=(GRADCOMP_PRIVATE_COMM=1)
  return 0
}
# parse_run RUN (N:L, N:L:nb for non-blocking communicators, N:L:nbp for those
# with GRADCOMP_PRIVATE_COMM=1): sets n, local_size, nb (0, 1, 2), tag (n<N>,
# hier_n<N>, with _nb or _nbp appended) and label.
parse_run() {
  IFS=: read -r n local_size nb_word <<< "$1"
  case "${nb_word:-}" in
    "") nb=0 ;;
    nb) nb=1 ;;
    nbp) nb=2 ;;
    *) echo "multirank_check: world '$1': '$nb_word' is not nb or nbp (N:L, N:L:nb, N:L:nbp)" >&2
       exit 2 ;;
  esac
  tag=n$n; [ "$local_size" != 0 ] && tag=hier_n$n
  [ "$nb" = 1 ] && tag=${tag}_nb
  [ "$nb" = 2 ] && tag=${tag}_nbp
  label="N=$n$([ "$local_size" != 0 ] && echo " GRADCOMP_LOCAL_SIZE=$local_size")"
  [ "$nb" != 0 ] && label="$label NCCL_COMM_BLOCKING=0"
  [ "$nb" = 2 ] && label="$label GRADCOMP_PRIVATE_COMM=1"
  return 0
}
# Runs: N ranks, and GRADCOMP_LOCAL_SIZE for the hierarchical suite (0: flat).
# The flat N = 4 world runs second: it has never had time on a GPU (the H200's
# first run, 2026-12-04, spent 124 s on the hierarchical world, which passed but
# for test faults since fixed, and cut the flat one). The hierarchical world,
# whose ~230 comms each split two sub-communicators, takes what is left.
# GC_MULTIRANK_RUNS and GC_MULTIRANK_ABORT_RUNS pick the worlds (N:L, as below) for a
# quick rerun of what a fix touched, e.g. GC_MULTIRANK_RUNS=2:0 GC_MULTIRANK_ABORT_RUNS=none.
# N:L:nb runs a suite world with NCCL_COMM_BLOCKING=0 (non-blocking communicators,
# which gradcomp waits on), e.g. GC_MULTIRANK_RUNS="2:0:nb 4:2:nb"; N:L:nbp the same with
# GRADCOMP_PRIVATE_COMM=1 (the C API's private split).
runs=${GC_MULTIRANK_RUNS:-2:0 4:0 4:2}
abort_runs=${GC_MULTIRANK_ABORT_RUNS:-2:0 4:2}
[ "$abort_runs" = none ] && abort_runs=""
# No abort runs: the suites may use their time too.
[ -z "$abort_runs" ] && abort_reserve=0
# world_file TAG KIND N L PASSED FAILED RS_PASSED RS_FAILED LINES: the world's own result
# (with parse_run's nb).
world_file() {
  printf '{"tag": "%s", "kind": "%s", "n": %d, "local_size": %d, "nonblocking": %d, "passed": %d, "failed": %d, "rs_passed": %d, "rs_failed": %d}\n' \
    "$1" "$2" "$3" "$4" "$nb" "$5" "$6" "$7" "$8" > "$out/multirank_world_$1.json"
  printf '%s' "$9" > "$out/multirank_world_$1.md"
}
for run in $runs; do
  parse_run "$run"
  # What an earlier call left for this world goes first: it runs anew.
  rm -f "$out/multirank_world_$tag.json" "$out/multirank_world_$tag.md" \
    "$out/multirank_failures_$tag.txt" "$out"/multirank_${tag}_r*.log
  w_pass=0; w_fail=0; rs_pass=0; rs_fail=0; lines=""
  idfile=$(mktemp -u /tmp/gc_ncclid.XXXXXX)
  port=$((29500 + RANDOM % 1000))
  limit=$(run_limit 600 $abort_reserve)
  pids=()
  for r in $(seq 0 $((n - 1))); do
    rank_env "$r" "$n" "$local_size" "$nb"
    # Each check sets autoTune itself; GRADCOMP_AUTO=0 keeps any config read
    # from the environment compressing.
    env "${env_extra[@]}" GRADCOMP_AUTO=0 GC_RANK=$r GC_NRANKS=$n GC_ID_FILE=$idfile \
      timeout "$limit" "$bin" > "$out/multirank_${tag}_r${r}.log" 2>&1 &
    pids+=($!)
  done
  # A rank that exits without its summary line crashed: the others are ended 10 s later
  # (and counted as cut short) instead of holding the next worlds' time.
  rank_crashed() { ! grep -q "^multirank rank" "$out/multirank_${tag}_r$1.log"; }
  wait_ranks 10 "${pids[@]}"
  rcs=("${wait_rcs[@]}")
  rm -f "$idfile"
  for r in $(seq 0 $((n - 1))); do
    log=$out/multirank_${tag}_r${r}.log
    line=$(grep -E "^multirank rank" "$log" | tail -1)
    rsline=$(grep -E "^multirank rs rank" "$log" | tail -1)
    if [ -n "$rsline" ]; then
      rs_pass=$((rs_pass + $(echo "$rsline" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1/')))
      rs_fail=$((rs_fail + $(echo "$rsline" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\2/')))
    else
      rs_fail=$((rs_fail + 1))
    fi
    if [ -n "$line" ]; then
      p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1/')
      f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\2/')
    else
      # Cut short: what its last finished section had (gradcomp_multirank's progress
      # lines) counts, and the run's end counts as one failure.
      p=0; f=1; where=""
      prog=$(grep -E "^multirank progress rank" "$log" | tail -1)
      if [ -n "$prog" ]; then
        p=$(echo "$prog" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1/')
        f=$(($(echo "$prog" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\2/') + 1))
        where=" after '$(echo "$prog" | sed -E 's/^multirank progress rank [0-9]+ of [0-9]+: (.*) done: .*/\1/')' ($p passed, $((f - 1)) failed by then)"
      fi
      last=$(grep -v '^multirank progress' "$log" | tail -2 | tr '\n' ' ')
      line="rank $r of $n: crashed or timed out$where ($last)"
      [ "${rcs[$r]}" = 124 ] && line="rank $r of $n: timed out after ${limit}s$where ($last)"
    fi
    w_pass=$((w_pass + p)); w_fail=$((w_fail + f))
    lines="$lines- $label: $line"$'\n'
    grep -E "FAILED" "$log" | head -5 | sed 's/^/    /' >> "$out/multirank_failures_$tag.txt" || true
  done
  world_file "$tag" suite "$n" "$local_size" "$w_pass" "$w_fail" "$rs_pass" "$rs_fail" "$lines"
done
# gradcompCommAbort after a peer died mid-call (GC_ABORT_TEST=1): the last rank
# exits while the others are in a two-shot (N=2) or hierarchical (N=4, L=2)
# call; every survivor must come back from ncclCommAbort + gradcompCommAbort.
# The binary's own watchdog fails a hung rank after 60 s; timeout is the backstop.
for run in $abort_runs; do
  parse_run "$run"
  tag=abort_${tag#hier_}
  rm -f "$out/multirank_world_$tag.json" "$out/multirank_world_$tag.md" \
    "$out/multirank_failures_$tag.txt" "$out"/multirank_${tag}_r*.log
  abort_pass=0; abort_fail=0; lines=""
  idfile=$(mktemp -u /tmp/gc_ncclid.XXXXXX)
  limit=$(run_limit 90)
  pids=()
  for r in $(seq 0 $((n - 1))); do
    rank_env "$r" "$n" "$local_size" "$nb"
    env "${env_extra[@]}" GC_ABORT_TEST=1 GRADCOMP_AUTO=0 GC_RANK=$r GC_NRANKS=$n \
      GC_ID_FILE=$idfile timeout "$limit" "$bin" > "$out/multirank_${tag}_r${r}.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  rm -f "$idfile" "$idfile".done*  # the id and the survivors' healthy-call marks
  for r in $(seq 0 $((n - 2))); do  # the last rank is the one that dies
    log=$out/multirank_${tag}_r${r}.log
    line=$(grep -E "^multirank abort rank .*passed" "$log" | tail -1)
    if [ -n "$line" ]; then
      abort_pass=$((abort_pass + $(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1/')))
      abort_fail=$((abort_fail + $(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\2/')))
    else
      abort_fail=$((abort_fail + 1)); line="rank $r of $n: crashed or hung ($(tail -2 "$log" | tr '\n' ' '))"
    fi
    lines="$lines- abort $label: $line"$'\n'
    grep -E "FAILED" "$log" | head -5 | sed 's/^/    /' >> "$out/multirank_failures_$tag.txt" || true
  done
  world_file "$tag" abort "$n" "$local_size" "$abort_pass" "$abort_fail" 0 0 "$lines"
done

# The summary of every world's file in OUTDIR (this call's and earlier calls'); exit status:
# this call's worlds all passed.
python3 - "$out" "$ngpu" "$runs" "${abort_runs:-none}" <<'PY'
import glob, json, os, sys
out, ngpu, runs, aborts = sys.argv[1], int(sys.argv[2] or 0), sys.argv[3], sys.argv[4]
worlds = []
for f in sorted(glob.glob(os.path.join(out, "multirank_world_*.json"))):
    try:
        with open(f) as fh:
            w = json.load(fh)
    except (OSError, ValueError):
        continue
    md = f[:-len(".json")] + ".md"
    w["lines"] = open(md).read() if os.path.exists(md) else ""
    fails = os.path.join(out, "multirank_failures_%s.txt" % w["tag"])
    w["failures"] = open(fails).read() if os.path.exists(fails) else ""
    worlds.append(w)
def total(key, pick):
    sel = [w for w in worlds if pick(w)]
    return sum(w[key] for w in sel) if sel else None
suite = lambda w: w["kind"] == "suite"  # noqa: E731
hier = lambda w: w["kind"] == "suite" and w["local_size"] != 0  # noqa: E731
abort = lambda w: w["kind"] == "abort"  # noqa: E731
nonblocking = lambda w: w.get("nonblocking", 0) in (1, 2)  # noqa: E731
summary = {
    "multirank_tests_passed": total("passed", lambda w: True) or 0,
    "multirank_tests_failed": total("failed", lambda w: True) or 0,
    "multirank_abort_tests_passed": total("passed", abort),
    "multirank_abort_tests_failed": total("failed", abort),
    "multirank_hier_tests_passed": total("passed", hier),
    "multirank_hier_tests_failed": total("failed", hier),
    "multirank_rs_tests_passed": total("rs_passed", suite),
    "multirank_rs_tests_failed": total("rs_failed", suite),
    "multirank_nonblocking_tests_passed": total("passed", nonblocking),
    "multirank_nonblocking_tests_failed": total("failed", nonblocking),
    "multirank_worlds": [w["tag"] for w in worlds],
}
if not worlds:
    summary["multirank_tests_failed"] = 1
    summary["multirank_error"] = "no world ran"
with open(os.path.join(out, "multirank.json"), "w") as fh:
    json.dump(summary, fh, indent=1)
L = ["### Multi-process NCCL tests (gradcompAllReduce, CUDA backend)", ""]
if ngpu < 4:
    L += ["Ranks share %d GPU(s) with a distinct NCCL_HOSTID each (socket transport)." % ngpu, ""]
L += ["This call's worlds (N:GRADCOMP_LOCAL_SIZE[:nb, NCCL_COMM_BLOCKING=0; :nbp, with GRADCOMP_PRIVATE_COMM=1]): %s; abort worlds: %s. Results of every "
      "world in the folder: %s." % (runs, aborts, ", ".join(summary["multirank_worlds"]) or "none"),
      ""]
for w in worlds:
    L.append(w["lines"].rstrip("\n"))
L.append("")
L.append("Total: %d passed, %d failed (of which reduce-scatter: %s passed, %s failed)" % (
    summary["multirank_tests_passed"], summary["multirank_tests_failed"],
    summary["multirank_rs_tests_passed"], summary["multirank_rs_tests_failed"]))
fails = "".join(w["failures"] for w in worlds)
if fails:
    L += ["", "```", fails.rstrip("\n"), "```"]
with open(os.path.join(out, "multirank.md"), "w") as fh:
    fh.write("\n".join(L) + "\n")
PY
cat "$out/multirank.md"
# This call's worlds: their own files.
this_fail=0
for run in $runs; do
  parse_run "$run"
  grep -q '"failed": 0,' "$out/multirank_world_$tag.json" 2>/dev/null || this_fail=1
done
for run in $abort_runs; do
  parse_run "$run"
  grep -q '"failed": 0,' "$out/multirank_world_abort_${tag#hier_}.json" 2>/dev/null || this_fail=1
done
[ "$this_fail" = 0 ]
