# Sourced by the scripts that start ranks as background jobs of their shell
# (tools/multirank_check.sh, tests/preload/run_preload_gpu_test.sh).
#
# wait_ranks GRACE_S PID...: waits for every PID and sets wait_rcs[i] to the
# exit status of the i-th. A rank that crashed leaves the others waiting for
# it inside NCCL until their own time limit, which would take the time of the
# runs after it: GRACE_S seconds after the first crash, the ranks still
# running are sent TERM (their timeout(1) forwards it and exits 143). What is
# a crash the caller says with a function rank_crashed INDEX STATUS (returns
# 0 for a crash), called for each non-zero status; without one, every
# non-zero status is.
wait_ranks() {
  local grace=$1
  shift
  local pids=("$@") i alive crashed_at=""
  wait_rcs=()
  while :; do
    alive=0
    for i in "${!pids[@]}"; do
      [ -n "${wait_rcs[$i]:-}" ] && continue
      if kill -0 "${pids[$i]}" 2>/dev/null; then
        alive=1
        continue
      fi
      wait "${pids[$i]}"
      wait_rcs[$i]=$?
      if [ -z "$crashed_at" ] && [ "${wait_rcs[$i]}" != 0 ]; then
        if ! declare -F rank_crashed > /dev/null || rank_crashed "$i" "${wait_rcs[$i]}"; then
          crashed_at=$SECONDS
        fi
      fi
    done
    [ "$alive" = 0 ] && break
    if [ -n "$crashed_at" ] && [ $((SECONDS - crashed_at)) -ge "$grace" ]; then
      for i in "${!pids[@]}"; do
        [ -n "${wait_rcs[$i]:-}" ] || kill -TERM "${pids[$i]}" 2>/dev/null
      done
    fi
    sleep 0.2
  done
}
