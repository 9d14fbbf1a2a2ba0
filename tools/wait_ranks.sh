# shellcheck shell=bash disable=SC2034  # wait_rcs, wait_first_rc: for the caller
# Sourced by the scripts that start ranks as background jobs of their shell
# (tools/multirank_check.sh, tools/torch_ranks.sh, tools/tc_link.sh,
# tests/preload/run_preload_gpu_test.sh).
#
# wait_ranks GRACE_S PID...: waits for every PID; sets wait_rcs[i] to the exit
# status of the i-th and wait_first_rc to that of the first rank to crash (in
# time; 0 when none did). A crashed rank leaves the others waiting for it
# inside NCCL until their own time limit, which would take the time of the
# runs after it: GRACE_S seconds after the first crash the ranks still running
# are sent TERM (their process group's, where they lead one; a timeout(1)
# forwards it and exits 143), and KILL 5 s after that. What is a crash the
# caller says with a function rank_crashed INDEX STATUS (returns 0 for a
# crash), called for each non-zero status; without one, every non-zero status
# is.
wait_ranks() {
  local grace=$1
  shift
  local pids=("$@") i alive sig crashed_at=""
  wait_rcs=()
  wait_first_rc=0
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
          wait_first_rc=${wait_rcs[$i]}
        fi
      fi
    done
    [ "$alive" = 0 ] && break
    if [ -n "$crashed_at" ] && [ $((SECONDS - crashed_at)) -ge "$grace" ]; then
      sig=TERM
      [ $((SECONDS - crashed_at)) -ge $((grace + 5)) ] && sig=KILL
      for i in "${!pids[@]}"; do
        [ -n "${wait_rcs[$i]:-}" ] && continue
        kill -$sig -- "-${pids[$i]}" 2>/dev/null || kill -$sig "${pids[$i]}" 2>/dev/null
      done
    fi
    sleep 0.2
  done
}
