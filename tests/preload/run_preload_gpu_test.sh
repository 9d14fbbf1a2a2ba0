#!/usr/bin/env bash
# LD_PRELOAD test on a GPU with the real NCCL: ranks are processes sharing
# the GPU(s), each with its own NCCL_HOSTID (NCCL's socket transport).
# Checks that eligible calls are compressed (INFO summary), results are
# identical on all ranks and close to the exact sum, deferred and fused group
# calls too, GRADCOMP_METHOD=none gives NCCL's bits exactly, and ranks with
# different GRADCOMP_* settings agree to pass everything through (no hang),
# also when one rank's value is invalid or differs in a setting that decides
# eligibility (GRADCOMP_METHOD, GRADCOMP_MIN_ELEMENTS, GRADCOMP_GROUP), and on
# non-blocking communicators (NCCL_COMM_BLOCKING=0) as on blocking ones. The
# hierarchy (GRADCOMP_LOCAL_SIZE=2) compresses alike on every rank, and
# ncclCommAbort with a call pending (a rank that stopped calling) ends it,
# NCCL's alone and under the preload with gradcomp's sub-communicators.
# Without a GPU it prints SKIPPED (a failure when GRADCOMP_TEST_GPU=1).
# Usage: run_preload_gpu_test.sh PRELOAD APP
set -uo pipefail
preload=$1 app=$2
. "$(dirname "$0")/../../tools/wait_ranks.sh"
# GRADCOMP_TEST_GPU is 0 or 1, as for tests/gpu (gpu_util.h): another value (yes, true, 2)
# was taken as 0, so a GPU run whose GPU was missing passed by skipping.
case "${GRADCOMP_TEST_GPU-0}" in
  0 | 1) ;;
  *) echo "FAIL: GRADCOMP_TEST_GPU=$GRADCOMP_TEST_GPU is not one of 0, 1"; exit 1 ;;
esac
ngpu=$("$app" probe 2>/dev/null || echo 0)
if [ "${ngpu:-0}" = 0 ]; then
  if [ "${GRADCOMP_TEST_GPU:-0}" = 1 ]; then echo "FAIL: no GPU (GRADCOMP_TEST_GPU=1)"; exit 1; fi
  echo "SKIPPED: no GPU"
  exit 0
fi
unset GRADCOMP_DEBUG GRADCOMP_GROUP GRADCOMP_METHOD GRADCOMP_BITS GRADCOMP_AUTO NCCL_COMM_BLOCKING
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0
check() { if eval "$2"; then echo "PASS: $1"; else echo "FAIL: $1"; fail=1; fi; }

# launch NAME NRANKS PRELOAD(0/1) MODE [VAR=VALUE... applied to every rank]
# GRADCOMP_AUTO=0 unless a case sets it: these cases check compression itself.
# Rank-specific settings: RANK1_ENV="VAR=VALUE" applies to rank 1 only.
# CASE_TIMEOUT: seconds each rank may take (60: a case takes seconds, and one hung case must
# leave the test inside gpu-check's 175 s tests step, bench/plan_check.sh).
launch() {
  local name=$1 n=$2 use=$3 mode=$4 r pids=() rc=0
  shift 4
  for r in $(seq 0 $((n - 1))); do
    local envs=(GC_RANK=$r GC_NRANKS=$n GC_ID_FILE=$work/$name.id NCCL_HOSTID=gc-host-$r
                NCCL_NET=Socket NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 NCCL_P2P_DISABLE=1
                NCCL_SHM_DISABLE=1 NCCL_NVLS_ENABLE=0 GRADCOMP_DEBUG=INFO GRADCOMP_AUTO=0 "$@")
    [ "$use" = 1 ] && envs+=(LD_PRELOAD=$preload)
    [ "$r" = 1 ] && [ -n "${RANK1_ENV:-}" ] && envs+=($RANK1_ENV)
    env "${envs[@]}" timeout -k 5 "${CASE_TIMEOUT:-60}" "$app" $mode > "$work/${name}_r$r.out" \
      2> "$work/${name}_r$r.err" &
    pids+=($!)
  done
  # A rank that fails ends the others 5 s later instead of at their CASE_TIMEOUT.
  wait_ranks 5 "${pids[@]}"
  for r in "${!pids[@]}"; do
    [ "${wait_rcs[$r]}" = 0 ] && continue
    rc=1
    echo "  | $name rank $r failed (exit ${wait_rcs[$r]}):"
    tail -5 "$work/${name}_r$r.err" | sed 's/^/  | /'
  done
  check "$name: every rank finished" "[ $rc = 0 ]"
}
hashes() { grep -o 'hash [0-9a-f]*' "$work/$1_r$2.out"; }
same_on_all_ranks() {  # NAME NRANKS
  local r ok=1
  [ -s "$work/$1_r0.out" ] || ok=0
  for r in $(seq 1 $(($2 - 1))); do
    [ "$(hashes "$1" 0)" = "$(hashes "$1" "$r")" ] || ok=0
  done
  check "$1: results bitwise identical on all $2 ranks" "[ $ok = 1 ]"
}
compressed_calls() {  # NAME NRANKS EXPECTED
  local r ok=1
  for r in $(seq 0 $(($2 - 1))); do
    grep -q "summary comm .* method [a-z]*: $3 calls compressed" "$work/$1_r$r.err" || ok=0
  done
  check "$1: every rank's summary says $3 calls compressed" "[ $ok = 1 ]"
}
max_error() {  # NAME: the largest rel_error of rank 0
  awk '/rel_error/ {for (i = 1; i < NF; ++i) if ($i == "rel_error" && $(i+1) > m) m = $(i+1)} END {print m + 0}' \
    "$work/$1_r0.out"
}

# 1. QSGD 4-bit (the defaults) on 2 and 4 ranks.
for n in 2 4; do
  launch qsgd_n$n $n 1 "single 3" GRADCOMP_METHOD=qsgd
  same_on_all_ranks qsgd_n$n $n
  compressed_calls qsgd_n$n $n 3
  e=$(max_error qsgd_n$n)
  check "qsgd_n$n: relative error $e is that of 4-bit quantization (0 < e < 0.5)" \
    "awk 'BEGIN {exit !($e > 0 && $e < 0.5)}'"
done

# 2. Calls inside a user group: deferred (default) and fused.
for group in defer fuse; do
  launch group_$group 2 1 "group 2" GRADCOMP_GROUP=$group
  same_on_all_ranks group_$group 2
  compressed_calls group_$group 2 6
done

# 2a. A group ended by ncclGroupSimulateEnd runs nothing (the app checks its
#     buffer and NCCL's estimate) and leaves no group open: the allreduces
#     after it are compressed at once, and nothing simulated is counted. The
#     simulation has a communicator of its own (see preload_gpu_app.cc).
launch simulate 2 1 "simulate 2" GRADCOMP_METHOD=qsgd
same_on_all_ranks simulate 2
compressed_calls simulate 2 2
simulate_counts() {  # both ranks: the simulated comm counts nothing, the other 2 compressed
  local r
  for r in 0 1; do
    grep -q 'method qsgd: 0 calls compressed, 0 passed through' "$work/simulate_r$r.err" &&
      grep -q 'method qsgd: 2 calls compressed, 0 passed through' "$work/simulate_r$r.err" ||
      return 1
  done
}
check "simulate: no rank counts a simulated call as passed through" simulate_counts

# 2b. One communicator on two streams, nothing but gradcomp ordering the
#     calls (buffers reused, no host sync inside a round): deferred calls
#     one by one, and fused sets (one per stream and op) sharing the fusion
#     buffer. Two streams must give the bits of one (same calls, sets, steps).
#     The second stream, where the last compressed call ran, is destroyed
#     before ncclCommDestroy, as NCCL allows: the preload's destroy of the
#     gradcomp comm must not wait on it.
for group in defer fuse; do
  for ns in 1 2; do
    launch streams_${group}_$ns 2 1 "streams 3" GRADCOMP_GROUP=$group GC_STREAMS=$ns
    same_on_all_ranks streams_${group}_$ns 2
  done
  compressed_calls streams_${group}_2 2 12
  check "streams_$group: two streams give the one-stream bits" \
    "[ -s '$work/streams_${group}_1_r0.out' ] && [ \"\$(hashes streams_${group}_1 0)\" = \"\$(hashes streams_${group}_2 0)\" ]"
done

# 2b'. A group whose reduce-scatter reads what its allreduce wrote in place:
#      the program's order, deferred and fused (the app checks each result's
#      scale).
for group in defer fuse; do
  launch chained_$group 2 1 chained GRADCOMP_METHOD=qsgd GRADCOMP_GROUP=$group
  same_on_all_ranks chained_$group 2
done

# 2c. Non-blocking communicators (NCCL_COMM_BLOCKING=0; the app polls each of
#     its calls): compressed as blocking ones are, gradcomp waiting for each
#     of its NCCL enqueues, with the blocking runs' bits.
launch nonblocking_n2 2 1 "single 3" GRADCOMP_METHOD=qsgd NCCL_COMM_BLOCKING=0
same_on_all_ranks nonblocking_n2 2
compressed_calls nonblocking_n2 2 3
check "nonblocking_n2: the blocking run's bits" \
  "[ -s '$work/nonblocking_n2_r0.out' ] && [ \"\$(hashes nonblocking_n2 0)\" = \"\$(hashes qsgd_n2 0)\" ]"
for group in defer fuse; do
  launch nonblocking_group_$group 2 1 "group 2" GRADCOMP_GROUP=$group NCCL_COMM_BLOCKING=0
  same_on_all_ranks nonblocking_group_$group 2
  compressed_calls nonblocking_group_$group 2 6
  check "nonblocking_group_$group: the blocking run's bits" \
    "[ -s '$work/nonblocking_group_${group}_r0.out' ] && [ \"\$(hashes nonblocking_group_$group 0)\" = \"\$(hashes group_$group 0)\" ]"
done

# 3. Reduce-scatter (FSDP's collective): QSGD and DGC on 2 and 4 ranks, in
# and out of place, and in a group (deferred, and under fuse one by one).
rs_compressed() {  # NAME NRANKS EXPECTED: reduce-scatters compressed on every rank
  local r ok=1
  for r in $(seq 0 $(($2 - 1))); do
    grep -q "summary comm .*reduce-scatter: $3 compressed" "$work/$1_r$r.err" || ok=0
  done
  check "$1: every rank's summary says $3 reduce-scatters compressed" "[ $ok = 1 ]"
}
for n in 2 4; do
  for method in qsgd dgc; do
    maxrel=0.5
    [ $method = dgc ] && maxrel=2
    launch rs_${method}_n$n $n 1 "rs 4" GRADCOMP_METHOD=$method GC_MAX_REL=$maxrel
    rs_compressed rs_${method}_n$n $n 4
    e=$(max_error rs_${method}_n$n)
    check "rs_${method}_n$n: relative error $e of a compressed block (0 < e < $maxrel)" \
      "awk 'BEGIN {exit !($e > 0 && $e < $maxrel)}'"
  done
done
for group in defer fuse; do
  launch rsgroup_$group 2 1 "rsgroup 2" GRADCOMP_GROUP=$group
  rs_compressed rsgroup_$group 2 4
done
launch rs_none 2 1 "rs 2" GRADCOMP_METHOD=none
launch rs_nccl 2 0 "rs 2"
check "rs_none: same bits as NCCL's reduce-scatter without the preload (both ranks)" \
  "[ -s '$work/rs_nccl_r0.out' ] && [ \"\$(hashes rs_none 0)\" = \"\$(hashes rs_nccl 0)\" ] && [ \"\$(hashes rs_none 1)\" = \"\$(hashes rs_nccl 1)\" ]"

# 4. GRADCOMP_METHOD=none under the preload gives exactly NCCL's result.
launch passthrough 2 1 "single 2" GRADCOMP_METHOD=none
launch nccl_only 2 0 "single 2"
check "passthrough: same bits as NCCL without the preload" \
  "[ -s '$work/nccl_only_r0.out' ] && [ \"\$(hashes passthrough 0)\" = \"\$(hashes nccl_only 0)\" ]"

# 5. Ranks with different settings: all pass through, one warning each
#    (gradcompCommCreate refuses on every rank, naming the setting and both values).
RANK1_ENV="GRADCOMP_BITS=3" launch mismatch 2 1 "single 2"
same_on_all_ranks mismatch 2
compressed_calls mismatch 2 0
e=$(max_error mismatch)
check "mismatch: results are NCCL's exact sums (relative error $e < 1e-5)" \
  "awk 'BEGIN {exit !($e < 1e-5)}'"
# The preload's one warning per rank carries gradcompCommCreate's sentence (the library's own
# WARN log of that sentence, with GRADCOMP_DEBUG=INFO, is not counted).
n=$(cat "$work"/mismatch_r*.err | grep -c "WARN cannot set up compression for NCCL comm .*rank 1 \
has GRADCOMP_BITS (bits) = 3 while rank 0 has 4: the ranks of a comm have different GRADCOMP_\* settings")
check "mismatch: every rank warned once, naming the setting and both values (got $n)" "[ '$n' = 2 ]"

# 5a. Ranks whose settings that decide eligibility differ (rank 1's value
#     below, rank 0 the defaults): they compare them at the first float
#     Sum/Avg call (in "group", after the group's end, where both deferred its
#     calls), all pass through with NCCL's exact sums, and each warns once
#     with the same sentence naming the setting and its values. Until
#     2026-12-06 rank 1 handed the call to NCCL (or left it in its group)
#     while rank 0 waited in the set-up: a hang.
for c in "method GRADCOMP_METHOD=none single none qsgd" \
    "minimum GRADCOMP_MIN_ELEMENTS=100000000 single 16384 100000000" \
    "groupmode GRADCOMP_GROUP=pass group defer pass"; do
  set -- $c
  RANK1_ENV="$2" launch differ_$1 2 1 "$3 2"
  same_on_all_ranks differ_$1 2
  compressed_calls differ_$1 2 0
  e=$(max_error differ_$1)
  check "differ_$1: results are NCCL's exact sums (relative error $e < 1e-5)" \
    "awk 'BEGIN {exit !($e < 1e-5)}'"
  n=$(cat "$work"/differ_$1_r*.err | grep -c "WARN the ranks of NCCL comm .* differ in a setting \
that decides which calls gradcomp compresses: ${2%%=*} is $4 on some ranks and $5 on others")
  check "differ_$1: every rank warned once, naming ${2%%=*} and both values (got $n)" "[ '$n' = 2 ]"
done

# 6. GRADCOMP_AUTO=1: every rank logs the agreed figures, takes the same
# decisions (identical results and summary) and the summary counts auto's
# pass-throughs.
launch auto 2 1 "single 3" GRADCOMP_AUTO=1
same_on_all_ranks auto 2
calls='[0-9]* calls compressed, [0-9]* passed through ([0-9]* by auto)'
a0=$(grep -o "$calls" "$work/auto_r0.err" | tail -1)
a1=$(grep -o "$calls" "$work/auto_r1.err" | tail -1)
check "auto: both ranks' summaries count the same calls, auto's included ('$a0')" "[ -n '$a0' ] && [ '$a0' = '$a1' ]"
check "auto: the figures are logged at INFO" \
  "grep -q 'auto (allreduce): NCCL .* us, compressed .* us at' '$work/auto_r0.err'"
# The reduce-scatter times its own paths and decides alike on both ranks; its
# 3 calls are compressed or passed by auto, and the summary says which.
launch auto_rs 2 1 "rs 3" GRADCOMP_AUTO=1
rs='reduce-scatter: [0-9]* compressed, [0-9]* passed through ([0-9]* by auto)'
a0=$(grep -o "$rs" "$work/auto_rs_r0.err" | tail -1)
a1=$(grep -o "$rs" "$work/auto_rs_r1.err" | tail -1)
n=$(echo "$a0" | awk '{print $2 + $4}')
check "auto_rs: both ranks' summaries count the same reduce-scatters ('$a0'), 3 in all" \
  "[ -n '$a0' ] && [ '$a0' = '$a1' ] && [ '$n' = 3 ]"
check "auto_rs: the reduce-scatter's figures are logged at INFO" \
  "grep -q 'auto (reduce-scatter): NCCL .* us, compressed .* us at' '$work/auto_rs_r0.err'"

# 5. A rank with an invalid value still joins the set-up exchange, voting
# that it failed, and the agreement: nobody waits for it (before, the other
# ranks hung there), and every rank warns once with its sentence: rank 1 when
# it reads its settings (not again at the set-up, nor in the library's WARN
# lines), rank 0 at the set-up.
RANK1_ENV="GRADCOMP_BITS=99" launch badvalue 2 1 "single 2"
same_on_all_ranks badvalue 2
compressed_calls badvalue 2 0
n=$(grep -v ' INFO ' "$work/badvalue_r1.err" | grep -c 'GRADCOMP_BITS=99 is not an integer in 2..8')
check "badvalue: rank 1 names the variable once (got $n)" "[ '$n' = 1 ]"
n=$(grep -c "WARN cannot set up compression for NCCL comm .*rank 1 \
of 2 could not set up its gradcomp comm, so no rank made one: GRADCOMP_BITS=99 is not an integer in 2..8" \
  "$work/badvalue_r0.err")
check "badvalue: rank 0 learns that rank 1 could not set up, and why (got $n)" "[ '$n' = 1 ]"

# 7. The hierarchy under the preload: two "nodes" of two ranks.
launch hier_n4 4 1 "single 3" GRADCOMP_LOCAL_SIZE=2
same_on_all_ranks hier_n4 4
compressed_calls hier_n4 4 3
e=$(max_error hier_n4)
check "hier_n4: relative error $e is that of 4-bit quantization (0 < e < 0.5)" \
  "awk 'BEGIN {exit !($e > 0 && $e < 0.5)}'"

# 8. A rank stops calling: the others' next allreduce waits for it until every
#    rank calls ncclCommAbort, which must end it. NCCL alone first (what the
#    preload must match), then the preload with the hierarchy, where the
#    pending kernels are also gradcomp's node and inter-node communicators'
#    and the preload aborts them in the program's NCCL group.
pending_aborted() {  # NAME NRANKS: ranks 0..N-2 had the call pending and came back from the abort
  local r
  for r in $(seq 0 $(($2 - 2))); do
    grep -q "rank $r aborted: call pending before the abort" "$work/$1_r$r.out" || return 1
  done
  grep -q "rank $(($2 - 1)) aborted: call not made" "$work/$1_r$(($2 - 1)).out"
}
for name in abort_nccl abort_hier; do
  if [ $name = abort_nccl ]; then
    CASE_TIMEOUT=30 launch $name 4 0 "abort 2"
  else
    CASE_TIMEOUT=30 launch $name 4 1 "abort 2" GRADCOMP_LOCAL_SIZE=2
  fi
  same_on_all_ranks $name 4
  check "$name: the abort ended the call pending on ranks 0..2, every stream drained" \
    "pending_aborted $name 4"
done
check "abort_hier: the calls before the abort were compressed" \
  "grep -q 'summary comm .* method [a-z]*: [1-9][0-9]* calls compressed' '$work/abort_hier_r0.err'"
check "abort_hier: no rank left gradcomp's memory allocated (its device work ended)" \
  "! grep -q 'left allocated' \"$work\"/abort_hier_r*.err"

if [ "$fail" = 0 ]; then echo "preload GPU tests: all passed"; else echo "preload GPU tests: FAILED"; fi
exit $fail
