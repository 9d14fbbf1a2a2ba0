#!/usr/bin/env bash
# CTest: every group of tools/gpu-check.sh fits one device call. A bare build
# (90 s in the plan) and the group's step limits must fit the 510 s the call
# keeps before its report; an unknown group must be refused.
#   bench/plan_check.sh SOURCE_DIR
set -uo pipefail
src=$1
fail=0
for g in core perf perf_more hooks link ddp fsdp lm; do
  out=$(GC_PLAN=1 GC_STEPS=$g bash "$src/tools/gpu-check.sh" 2>&1)
  last=$(echo "$out" | grep '^plan:' | tail -1)
  sum=$(echo "$last" | sed -E 's/.*\(sum +([0-9]+)s of the ([0-9]+)s.*/\1 \2/')
  read -r used avail <<< "$sum"
  steps=$(echo "$out" | grep -c '^plan:')
  if [ -z "${used:-}" ] || [ "$steps" -lt 2 ]; then
    echo "FAIL: group $g: no plan ($out)"; fail=1
  elif [ "$used" -gt "$avail" ]; then
    echo "FAIL: group $g plans ${used}s of ${avail}s:"; echo "$out"; fail=1
  else
    echo "ok: group $g plans ${used}s of ${avail}s ($((steps - 1)) steps after the build)"
  fi
done
if GC_PLAN=1 GC_STEPS=nosuchgroup bash "$src/tools/gpu-check.sh" > /dev/null 2>&1; then
  echo "FAIL: an unknown group was accepted"; fail=1
fi
exit $fail
