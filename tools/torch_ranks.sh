# Sourced by tools/ddp_check.sh and tools/fsdp_check.sh, from the repository
# root: their arguments and prerequisites, and one PyTorch training as N ranks
# sharing ONE GPU (DESIGN.md's multi-rank set-up; tools/gc_ranks.py is the
# same for the Python drivers). Each rank gets its own NCCL_HOSTID and NCCL
# over loopback sockets, as NCCL refuses two ranks of one host on one GPU
# otherwise.
. "$(dirname "${BASH_SOURCE[0]}")/wait_ranks.sh"

# check_args NAME OUTDIR [BUILD_DIR]: sets root, out (absolute, created; a
# relative OUTDIR is read against $caller, the folder the script was called
# from, as tools/multirank_check.sh reads it), build (BUILD_DIR, relative to
# the repository root; default build-gpu, else build), preload (the
# interposer there) and py (PYTHON, default python3).
check_args() {
  local name=$1
  shift
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
