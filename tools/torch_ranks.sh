# Sourced by tools/ddp_check.sh and tools/fsdp_check.sh, from the repository
# root: their arguments and prerequisites, their runs within the check's time
# budget (run_training), and one PyTorch training as N ranks
# sharing ONE GPU (DESIGN.md's multi-rank set-up; tools/gc_ranks.py is the
# same for the Python drivers). Each rank gets its own NCCL_HOSTID and NCCL
# over loopback sockets, as NCCL refuses two ranks of one host on one GPU
# otherwise.
. "$(dirname "${BASH_SOURCE[0]}")/wait_ranks.sh"

# check_args NAME OUTDIR [BUILD_DIR]: sets check (NAME), root, out (absolute, created; a
# relative OUTDIR is read against $caller, the folder the script was called
# from, as tools/multirank_check.sh reads it), build (BUILD_DIR, relative to
# the repository root; default build-gpu, else build), preload (the
# interposer there) and py (PYTHON, default python3).
check_args() {
  local name=$1
  shift
  check=$name
  root=$(pwd)
  out=${1:?usage: tools/${name}_check.sh OUTDIR [BUILD_DIR]}
  local from=${caller:-$root}
  case $out in
    /*) ;;
    *) out=$from/$out ;;
  esac
  # Only the default falls back to build: a BUILD_DIR given is the one used (another build's
  # interposer would run in its place, unsaid).
  if [ -n "${2:-}" ]; then
    build=$2
    if [ ! -d "$build" ]; then
      echo "${name}_check: BUILD_DIR '$build' is not a directory (relative to $root): give a" \
        "configured build folder, or leave it out for build-gpu, else build" >&2
      exit 2
    fi
  else
    build="build-gpu"
    [ -d "$build" ] || build=build
  fi
  # The scripts are not run under set -e: an OUTDIR that cannot be made would leave out
  # empty, and every report written into / instead.
  local abs
  if ! mkdir -p "$out" || ! abs=$(cd "$out" && pwd); then
    echo "${name}_check: cannot use OUTDIR '$1' (as $out): give a folder that can be made and" \
      "written" >&2
    exit 2
  fi
  out=$abs
  case $build in
    /*) preload=$build/plugin/preload/libgradcomp_preload.so ;;
    *) preload=$root/$build/plugin/preload/libgradcomp_preload.so ;;
  esac
  py=${PYTHON:-python3}
}

# Prerequisites, each ending the check through the caller's give_up with a
# clear message; their output goes to $out/NAME_prereq.log (need_torch
# starts it).
need_torch() {  # need_torch NAME
  if ! "$py" -c 'import torch, sklearn, numpy' > "$out/$1_prereq.log" 2>&1; then
    give_up "$py cannot import torch, sklearn and numpy ($(tail -1 "$out/$1_prereq.log"))"
  fi
}

need_cuda() {  # need_cuda NAME: PyTorch sees the GPU $gpu
  if ! CUDA_VISIBLE_DEVICES=$gpu "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
      >> "$out/$1_prereq.log" 2>&1; then
    give_up "PyTorch sees no CUDA device (CUDA_VISIBLE_DEVICES=$gpu)"
  fi
}

need_preload() {  # need_preload NAME: builds the interposer when missing
  if [ ! -f "$preload" ]; then
    echo "$1_check: building the interposer in $build"
    cmake --build "$build" --target gradcomp_preload -j 8 >> "$out/$1_prereq.log" 2>&1 ||
      give_up "$preload is missing and could not be built (configure $build with CMake first)"
  fi
}

# The training itself: py and gpu (the shared GPU) set by the caller.

free_port() {
  # Below the ephemeral range (gradcomp._ports): a bind(0) port is one a rank's own connects
  # (NCCL's sockets, the store's clients retrying before rank 0 listens) can be given.
  PYTHONPATH="$root/python" "$py" -c \
    'from gradcomp._ports import unused_port; print(unused_port("127.0.0.1"))'
}

ranks_pids=()

# For a caller's TERM/INT trap: the ranks of the run in progress go too.
# Each pid is a `timeout`, which leads a process group of its own: the group is signalled,
# so a rank that outlives its timeout's TERM is not left holding the GPU (wait_ranks.sh does
# the same).
stop_ranks() {
  local p
  for p in "${ranks_pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; done
  sleep 2
  for p in "${ranks_pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; done
}

# run_ranks WORLD LIMIT LOG_PREFIX PRELOAD [VAR=VALUE...] -- SCRIPT [ARG...]
# (GRADCOMP_AUTO=0 unless a VAR=VALUE says otherwise: the trainings measure compression, so
# every eligible call is compressed rather than left to auto's timing.)
# Runs "$py" SCRIPT ARG... as WORLD ranks, each under `timeout LIMIT`, rank r's
# output in LOG_PREFIX_r<r>.log, PRELOAD (empty: none) as LD_PRELOAD and the
# VAR=VALUE pairs on top of the shared environment. Returns the first nonzero
# exit status seen (124 or 137: the time limit), else 0.
run_ranks() {
  local world=$1 limit=$2 logs=$3 lib=$4
  shift 4
  local vars=() r port failed=0
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    vars+=("$1")
    shift
  done
  shift
  port=$(free_port)
  ranks_pids=()
  for r in $(seq 0 $((world - 1))); do
    local envs=(CUDA_VISIBLE_DEVICES=$gpu RANK=$r WORLD_SIZE=$world LOCAL_RANK=0
                MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=2
                NCCL_HOSTID=host-$r NCCL_NET=Socket NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1
                NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_NVLS_ENABLE=0
                TORCH_NCCL_USE_COMM_NONBLOCKING=0 GRADCOMP_DEBUG=INFO GRADCOMP_AUTO=0 "${vars[@]}")
    [ -n "$lib" ] && envs+=(LD_PRELOAD=$lib)
    env "${envs[@]}" timeout -k 5 "$limit" "$py" "$@" > "${logs}_r$r.log" 2>&1 &
    ranks_pids+=($!)
  done
  # One rank failing leaves the others waiting on it: stop them all at once.
  wait_ranks 0 "${ranks_pids[@]}"
  failed=$wait_first_rc
  ranks_pids=()
  return "$failed"
}

# note_run records a run in $out/${check}_runs.tsv and writes the report anew
# (the caller's summarize), so that a time limit still leaves one; stop is
# the caller's TERM/INT trap.
note_run() {  # note_run NAME WORLD STATUS SECONDS NOTE
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$out/${check}_runs.tsv"
  summarize > /dev/null 2>&1 || echo "${check}_check: could not write the summary" >&2
}

stop() {  # the caller's TERM/INT trap
  stop_ranks
  summarize > /dev/null 2>&1
  echo "${check}_check: stopped; partial results in $out/$check.md" >&2
  exit 143
}

# run_training NAME WORLD MOMENTUM PRELOAD(0/1) [VAR=VALUE...]: one training
# of tools/${check}_train.py as WORLD ranks (run_ranks), the VAR=VALUE pairs
# on top of train_env (the caller's), within the check's time: deadline (the
# whole check's end), run_limit (one run's) and epochs set by the caller;
# longest, the seconds of the longest run that finished, kept here. Result
# in $out/${check}_NAME.json, logs in $out/${check}_NAME_r<rank>.log, the run
# recorded by note_run. Returns 0 when the run finished with a result.
longest=0
run_training() {
  local name=$1 world=$2 mom=$3 use_preload=$4
  shift 4
  local now left limit t0 status note="" failed
  now=$(date +%s)
  left=$((deadline - now))
  # What an earlier call left for this run goes first, whether it runs or is skipped: the
  # summary would report it as this call's.
  rm -f "$out/${check}_$name.json" "$out/${check}_${name}"_r*.log
  # Skipped rather than started to time out (a timed-out run fails the step) when the longest
  # run so far would not fit in what is left.
  if [ "$left" -lt 40 ] || [ "$left" -lt $((longest * 11 / 10 + 10)) ]; then
    note_run "$name" "$world" skipped 0 "time budget spent"
    echo "${check}_check: $name skipped (time budget spent)"
    return 1
  fi
  limit=$run_limit
  [ "$limit" -gt $((left - 10)) ] && limit=$((left - 10))
  t0=$(date +%s)
  local preload_lib=""
  [ "$use_preload" = 1 ] && preload_lib=$preload
  run_ranks "$world" "$limit" "$out/${check}_$name" "$preload_lib" "${train_env[@]}" "$@" \
    -- "tools/${check}_train.py" --epochs "$epochs" --momentum "$mom" \
    --out "$out/${check}_$name.json"
  failed=$?
  case $failed in
    0) status=ok ;;
    124 | 137) status="timed out"; note="after ${limit}s" ;;
    *) status=failed; note="exit $failed" ;;
  esac
  [ "$status" = ok ] && [ ! -f "$out/${check}_$name.json" ] && { status=failed; note="no result"; }
  note_run "$name" "$world" "$status" "$(($(date +%s) - t0))" "$note"
  [ "$status" = ok ] && [ $(($(date +%s) - t0)) -gt "$longest" ] && longest=$(($(date +%s) - t0))
  echo "${check}_check: $name ($world ranks): $status $note in $(($(date +%s) - t0))s"
  [ "$status" = ok ]
}
