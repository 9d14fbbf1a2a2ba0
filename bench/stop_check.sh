#!/usr/bin/env bash
# CTest: the GPU box's checks that start ranks (tools/ddp_check.sh, tools/fsdp_check.sh,
# tools/tc_link.sh) end those ranks when gpu-check's step limit TERMs them. The ranks run
# under timeout(1), each in a process group of its own that the step's TERM does not reach:
# left running, they would hold the GPU through the steps after; tc_link.sh must also leave
# no namespace behind (its clean-up survives timeout's second TERM), and end a run whose rank
# failed instead of waiting for the others' limit. Stand-ins replace the
# interpreter and gradcomp_perf (no torch, no GPU): a rank records its pid and waits. Also:
# a BUILD_DIR given as an absolute path names the interposer inside it (gpu-check passes
# GC_BUILD_DIR on), and an OUTDIR (RAW_DIR) that cannot be made or a BUILD_DIR given that is
# no directory is refused with exit 2. tc_link.sh's part needs root and network namespaces, and is skipped
# without them. Skips (77) under GRADCOMP_TEST_GPU=1: it times nothing on the GPU.
#   bench/stop_check.sh SOURCE_DIR
set -uo pipefail
src=$(cd "$1" && pwd)
if [ "${GRADCOMP_TEST_GPU:-0}" = 1 ]; then
  echo "SKIPPED: GRADCOMP_TEST_GPU=1 (no GPU path here)"
  exit 77
fi
work=$(mktemp -d)
fail=0
all_pids=()
# shellcheck disable=SC2317  # run by the trap
finish() {
  local p
  for p in "${all_pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for p in 0 1; do
    ip netns del "gcsp$p" 2>/dev/null
    ip link del "gcsp${p}h" 2>/dev/null
  done
  ip link del gcspbr 2>/dev/null
  rm -rf "$work"
}
trap finish EXIT

mkdir -p "$work/bin" "$work/build/plugin/preload" "$work/build/bench"
: > "$work/build/plugin/preload/libgradcomp_preload.so"
# The interpreter: PyTorch's prerequisites pass, a training records its pid and waits.
cat > "$work/bin/python" <<'EOF'
#!/usr/bin/env bash
case "${1:-}" in
  *_train.py) echo $$ >> "$GC_STOP_PIDS"; exec sleep 120 ;;
  -c) case "${2:-}" in *torch* | *sklearn* | *fully_shard*) exit 0 ;; esac ;;
esac
exec python3 "$@"
EOF
# gradcomp_perf: a rank records its pid and waits; rank GC_STOP_FAIL_RANK fails at once.
cat > "$work/build/bench/gradcomp_perf" <<'EOF'
#!/usr/bin/env bash
echo $$ >> "$GC_STOP_PIDS"
[ "$OMPI_COMM_WORLD_RANK" = "${GC_STOP_FAIL_RANK:-}" ] && exit 3
exec sleep 120
EOF
chmod +x "$work/bin/python" "$work/build/bench/gradcomp_perf"

# check_args with an absolute BUILD_DIR (it sets preload)
# shellcheck disable=SC1091,SC2154
(
  cd "$src" && source tools/torch_ranks.sh && check_args ddp "$work/args" "$work/build" &&
    [ "$preload" = "$work/build/plugin/preload/libgradcomp_preload.so" ]
) || { echo "FAIL: check_args with an absolute BUILD_DIR names another interposer"; fail=1; }
# check_args refuses (exit 2, naming it) an OUTDIR that cannot be made (the scripts run without
# set -e: it went on with an empty out, writing the reports into /) and a BUILD_DIR given that
# is not a directory (it went on with build's interposer instead).
: > "$work/a-file"
# refused SAYS ARGS...: check_args ddp ARGS exits 2 with a line naming SAYS.
refused() {
  local says=$1 got code
  shift
  # shellcheck disable=SC1091,SC2154
  got=$(cd "$src" && source tools/torch_ranks.sh && check_args ddp "$@" 2>&1 &&
    echo "went on: out '$out' build '$build'")
  code=$?
  if [ "$code" != 2 ] || [[ $got != *"ddp_check: "*"$says"* ]]; then
    echo "FAIL: check_args $*: want exit 2 naming $says, got $code: $got"
    fail=1
  fi
}
refused "OUTDIR '$work/a-file'" "$work/a-file"
refused "OUTDIR '$work/a-file/sub'" "$work/a-file/sub"
refused "BUILD_DIR '$work/no-build' is not a directory" "$work/args" "$work/no-build"
# The same for tools/tc_link.sh's RAW_DIR and tools/multirank_check.sh's OUTDIR (they ran on,
# every write failing, to a Python traceback), before any rank or namespace.
for cmd in "tc_link.sh --cpu|tc_link: cannot write RAW_DIR '$work/a-file/raw'" \
  "multirank_check.sh|multirank_check: cannot write OUTDIR '$work/a-file/raw'"; do
  says=${cmd#*|}
  read -r -a words <<< "${cmd%%|*}"
  got=$(timeout 60 bash "$src/tools/${words[0]}" "${words[@]:1}" "$work/a-file/raw" \
    "$work/build" 2>&1)
  code=$?
  if [ "$code" != 2 ] || [[ $got != *"$says"* ]]; then
    echo "FAIL: tools/${cmd%%|*} $work/a-file/raw: want exit 2 saying $says, got $code: $got"
    fail=1
  fi
done

# stopped NAME RANKS CMD...: runs CMD under timeout(1) as gpu-check does, TERMs it once
# RANKS ranks have started, and checks that none of them is left. Returns 2 when the ranks
# never started.
stopped() {
  local name=$1 ranks=$2 pids=$work/$1.pids tpid n=0 p left=()
  shift 2
  : > "$pids"
  GC_STOP_PIDS=$pids timeout -k 20 100 "$@" > "$work/$name.log" 2>&1 &
  tpid=$!
  for _ in $(seq 1 300); do
    n=$(wc -l < "$pids")
    [ "$n" -ge "$ranks" ] && break
    kill -0 "$tpid" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$n" -lt "$ranks" ]; then
    kill -TERM "$tpid" 2>/dev/null
    wait "$tpid"
    while read -r p; do all_pids+=("$p"); done < "$pids"
    return 2
  fi
  kill -TERM "$tpid"
  wait "$tpid"
  sleep 1
  while read -r p; do
    all_pids+=("$p")
    kill -0 "$p" 2>/dev/null && left+=("$p")
  done < "$pids"
  if [ ${#left[@]} -gt 0 ]; then
    echo "FAIL: $name: ranks ${left[*]} still run after the check was ended"
    sed 's/^/  | /' "$work/$name.log"
    return 1
  fi
  echo "ok: $name ended its $n ranks"
}

for c in ddp fsdp; do
  stopped "${c}_check" 2 env PYTHON="$work/bin/python" GC_DDP_WORLDS=2 GC_FSDP_WORLDS=2 \
    bash "$src/tools/${c}_check.sh" "$work/$c" "$work/build"
  case $? in
    0) ;;
    2) echo "FAIL: ${c}_check: its ranks never started"; sed 's/^/  | /' "$work/${c}_check.log"
       fail=1 ;;
    *) fail=1 ;;
  esac
done

if [ "$(id -u)" != 0 ] || ! command -v ip > /dev/null || ! command -v tc > /dev/null; then
  echo "skipped: tc_link.sh (needs root, ip and tc)"
else
  stopped tc_link 2 env GC_TC_PREFIX=gcsp GC_TC_NO_LO=1 GC_TC_GBPS=1 GC_TC_RANKS=2 \
    bash "$src/tools/tc_link.sh" "$work/tc" "$work/build"
  case $? in
    0)
      if ip netns list | grep -q '^gcsp'; then
        echo "FAIL: tc_link: namespaces left behind: $(ip netns list | grep '^gcsp' | tr '\n' ' ')"
        fail=1
      fi ;;
    2) echo "skipped: tc_link.sh: no ranks started (namespaces refused?):"
       sed 's/^/  | /' "$work/tc_link.log" ;;
    *) fail=1 ;;
  esac
  # A rank that fails ends the run: the others, which would wait on it until their own limit
  # (240 s), go 10 s later, and the run records the failure.
  pids=$work/tc_fail.pids
  : > "$pids"
  t0=$(date +%s)
  GC_STOP_PIDS=$pids GC_STOP_FAIL_RANK=1 GC_TC_PREFIX=gcsp GC_TC_NO_LO=1 GC_TC_GBPS=1 \
    GC_TC_RANKS=2 timeout -k 5 90 bash "$src/tools/tc_link.sh" "$work/tcf" "$work/build" \
    > "$work/tc_fail.log" 2>&1
  secs=$(($(date +%s) - t0))
  while read -r p; do all_pids+=("$p"); done < "$pids"
  if [ "$(wc -l < "$pids")" -lt 2 ]; then
    echo "skipped: tc_link.sh with a failing rank: no ranks started"
  elif [ "$(cut -f4 "$work/tcf/tc_link_runs.tsv" 2> /dev/null)" != 3 ] || [ "$secs" -gt 60 ]; then
    echo "FAIL: tc_link: a run with a failing rank took ${secs}s and recorded" \
      "'$(cut -f4 "$work/tcf/tc_link_runs.tsv" 2> /dev/null)' (want its exit 3 within 60 s)"
    sed 's/^/  | /' "$work/tc_fail.log"
    fail=1
  else
    echo "ok: tc_link ended a run with a failing rank in ${secs}s"
  fi
fi

# tools/wait_ranks.sh (multirank_check.sh, the preload GPU test): a crashed rank ends the ranks
# still waiting for it GRACE seconds later (TERM to their timeout: 143), not at their limit;
# a non-zero exit the caller's rank_crashed does not call a crash ends nobody.
(
  . "$src/tools/wait_ranks.sh"
  t0=$SECONDS
  (sleep 0.3; exit 3) & a=$!
  timeout 30 sleep 30 & b=$!
  timeout 30 sleep 30 & c=$!
  wait_ranks 1 "$a" "$b" "$c"
  if [ "${wait_rcs[*]}" != "3 143 143" ] || [ $((SECONDS - t0)) -gt 10 ]; then
    echo "FAIL: wait_ranks after a crash: statuses '${wait_rcs[*]}' in $((SECONDS - t0))s" \
      "(want '3 143 143' within 10 s)"
    exit 1
  fi
  rank_crashed() { [ "$1" != 0 ]; }  # the first rank's exit 3 is a result, not a crash
  (sleep 0.3; exit 3) & a=$!
  timeout 30 sleep 2 & b=$!
  wait_ranks 1 "$a" "$b"
  if [ "${wait_rcs[*]}" != "3 0" ]; then
    echo "FAIL: wait_ranks ended a rank after an exit rank_crashed does not call a crash:" \
      "statuses '${wait_rcs[*]}' (want '3 0')"
    exit 1
  fi
  echo "ok: wait_ranks ends the others after a crash, and only after one"
) || fail=1
exit $fail
