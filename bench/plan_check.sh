#!/usr/bin/env bash
# CTest: every group of tools/gpu-check.sh fits one device call. A bare build
# (90 s in the plan) and the group's step limits must fit the 510 s the call
# keeps before its report; the hooks steps' budgets must hold every run they plan,
# the goal key's runs first, each run in one group; an unknown group must be
# refused; the plots step must run no earlier than the steps whose JSON it draws.
# With BUILD_DIR (a built tree), every benchmark command's arguments are checked on its binaries.
#   bench/plan_check.sh SOURCE_DIR [BUILD_DIR]
set -uo pipefail
src=$1
build=${2:-}
fail=0
# The plans checked here are a bare call's. Under gpu-check's tests step (CTest inside a call),
# the call's own settings are in the environment (GC_CHECK_BUDGET_S, which a session's second
# call passes, GC_STEPS, GC_HOOK_EPOCHS, GC_STEP_BUDGET_S, ...): each would change the plans and
# fail this check on the GPU box, so none is kept.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^GC_')
# Groups in the order sessions run them; where each step is first planned, and the plots
# step's last group.
order=(core perf perf_more hooks link ddp fsdp lm)
declare -A first_group
plots_group=-1
hook_runs=""
for i in "${!order[@]}"; do
  g=${order[$i]}
  out=$(GC_PLAN=1 GC_STEPS=$g bash "$src/tools/gpu-check.sh" 2>&1)
  # The PyTorch hooks' runs (tools/torch_hooks_check.py --plan, by its estimates from measured
  # step times, and its own skip rule, in the budget its step gives it): none may be planned
  # skipped, or its keys come back null (the HSDP pair once did, after the FSDP2 pair).
  runs=$(echo "$out" | grep '^plan-run:')
  if echo "$runs" | grep -q ' skipped '; then
    echo "FAIL: group $g: the budget of its hooks step does not hold every run:"; echo "$runs"
    fail=1
  elif [ -n "$runs" ]; then
    echo "ok: group $g: its hooks step's budget holds its runs ($(echo "$runs" | awk '{print $3}' | tr '\n' ' '))"
  fi
  hook_runs+=" $(echo "$runs" | awk '{print $3}' | tr '\n' ' ')"
  if [ "$g" = hooks ]; then
    # The goal key's runs first: no budget cut can cost them.
    goal=$(cd "$src/tools" && python3 -c 'import torch_hooks_check as t; print(*t.GOAL_RUNS)')
    first=$(echo "$runs" | awk '{print $3}' | head -n "$(echo "$goal" | wc -w)" | tr '\n' ' ')
    if [ -z "$goal" ] || [ "${first% }" != "$goal" ]; then
      echo "FAIL: the hooks step's first runs are '${first% }', not the goal key's runs '$goal'"
      fail=1
    else
      echo "ok: the hooks step runs the goal key's runs ($goal) first"
    fi
  fi
  for s in $(echo "$out" | awk '/^plan:/ {print $2}'); do
    [ -z "${first_group[$s]:-}" ] && first_group[$s]=$i
    [ "$s" = plots ] && plots_group=$i
  done
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
# The plots step draws the JSON of other steps ("$raw/<step>.json" on its command line): it
# must run in a group no earlier than every step that writes one, or its plots lack them.
inputs=$(awk '/^run_step plots / {on = 1} on {print} on && !/\\$/ {exit}' \
  "$src/tools/gpu-check.sh" | grep -o '"$raw/[a-z0-9_]*\.json"' | sed -E 's/.*raw\/([a-z0-9_]+)\.json"/\1/')
if [ -z "$inputs" ] || [ "$plots_group" -lt 0 ]; then
  echo "FAIL: no plots step or no inputs on its command line"; fail=1
fi
for f in $inputs; do
  gi=${first_group[$f]:-}
  if [ -z "$gi" ]; then
    echo "FAIL: the plots step reads $f.json, which no group's step $f writes"; fail=1
  elif [ "$gi" -gt "$plots_group" ]; then
    echo "FAIL: the plots step (last in group ${order[$plots_group]}) reads $f.json, written in" \
      "the later group ${order[$gi]}"; fail=1
  else
    echo "ok: plots reads $f.json (group ${order[$gi]}), drawn last in group ${order[$plots_group]}"
  fi
done
# Every run of tools/torch_hooks_check.py is planned in exactly one group.
all_runs=$(cd "$src/tools" && python3 -c 'import torch_hooks_check as t; print(*[r for f in t.FAMILIES.values() for r in f])')
for r in $all_runs; do
  n=$(echo "$hook_runs" | tr ' ' '\n' | grep -cx "$r")
  if [ "$n" != 1 ]; then
    echo "FAIL: the hooks run $r is planned in $n groups, not 1"; fail=1
  fi
done
[ -n "$all_runs" ] || { echo "FAIL: could not list tools/torch_hooks_check.py's runs"; fail=1; }
# The tests step must hold CTest's longest test, preload.gpu_real_nccl (it starts first, beside
# the rest): its multi-process runs one after the other (81 s for 26 on the H200, 2026-12-04:
# 3.2 s each) and one hung case (CASE_TIMEOUT 60 s, then wait_ranks' 5 s). A tests step cut by
# its limit loses CTest's summary: every test's count is null. The runs are counted by running
# the test with a stand-in for its app (probe: one GPU; a case: records itself, exits 0).
work=$(mktemp -d)
printf '#!/usr/bin/env bash\n[ "$1" = probe ] && { echo 1; exit 0; }\n[ "${GC_RANK:-0}" = 0 ] && echo run >> "%s/runs"\nexit 0\n' \
  "$work" > "$work/app"
chmod +x "$work/app"
: > "$work/runs"
bash "$src/tests/preload/run_preload_gpu_test.sh" /dev/null "$work/app" > /dev/null 2>&1
runs=$(wc -l < "$work/runs")
tests_limit=$(GC_PLAN=1 GC_STEPS=tests bash "$src/tools/gpu-check.sh" 2>&1 |
  awk '$1 == "plan:" && $2 == "tests" {print $3 + 0}')
need=$(((runs * 32 + 9) / 10 + 65))
if [ "$runs" -lt 10 ] || [ -z "$tests_limit" ]; then
  echo "FAIL: could not count the preload GPU test's runs ($runs) or plan the tests step ('$tests_limit')"
  fail=1
elif [ "$tests_limit" -lt "$need" ]; then
  echo "FAIL: the tests step's ${tests_limit}s cannot hold preload.gpu_real_nccl: $runs runs at 3.2 s" \
    "and one hung case (65 s) need ${need}s"
  fail=1
else
  echo "ok: the tests step's ${tests_limit}s hold preload.gpu_real_nccl's $runs runs and a hung case (${need}s)"
fi
rm -rf "$work"
if GC_PLAN=1 GC_STEPS=nosuchgroup bash "$src/tools/gpu-check.sh" > /dev/null 2>&1; then
  echo "FAIL: an unknown group was accepted"; fail=1
fi
# Two groups in one call overrun its budget, and the plan says so; one group does not.
if ! GC_PLAN=1 GC_STEPS="perf_more hooks" bash "$src/tools/gpu-check.sh" 2>&1 | grep -q "WARNING"; then
  echo "FAIL: the plan of two groups in one call does not warn that it overruns"; fail=1
fi
if GC_PLAN=1 GC_STEPS=hooks bash "$src/tools/gpu-check.sh" 2>&1 | grep -q "WARNING"; then
  echo "FAIL: the plan of one group warns"; fail=1
fi
# A plan writes nothing into the results folder it is pointed at: a plan of the whole run
# (GC_STEPS unset) with a session's GC_RESULTS_DIR and GC_RUN_NAME keeps its steps.tsv.
work=$(mktemp -d)
mkdir -p "$work/results/run"
printf 'build\tok\t5\t\tabc\n' > "$work/results/run/steps.tsv"
cp "$work/results/run/steps.tsv" "$work/steps.before"
GC_PLAN=1 GC_RESULTS_DIR="$work/results" GC_RUN_NAME=run bash "$src/tools/gpu-check.sh" > /dev/null 2>&1
GC_PLAN=1 GC_RESULTS_DIR="$work/results" GC_RUN_NAME=other GC_STEPS=core \
  bash "$src/tools/gpu-check.sh" > /dev/null 2>&1
if ! cmp -s "$work/steps.before" "$work/results/run/steps.tsv"; then
  echo "FAIL: a plan emptied the steps.tsv of the run it names"; fail=1
elif [ -e "$work/results/other" ]; then
  echo "FAIL: a plan made the raw folder of the run it names"; fail=1
else
  echo "ok: a plan leaves the results folder it names as it was"
fi
rm -rf "$work"
# The build's limit holds twice the longest build recorded in the committed reports: a build cut
# by its limit leaves no binaries, and every later step of its call fails.
build_limit=$(GC_PLAN=1 GC_STEPS=hooks bash "$src/tools/gpu-check.sh" 2>&1 |
  sed -nE 's/^plan-build: limit ([0-9]+)s.*/\1/p')
measured=$(cat "$src"/bench/results/*/steps.tsv 2>/dev/null |
  awk -F'\t' '$1 == "build" && $3 > m {m = $3} END {print m + 0}')
if [ -z "$build_limit" ] || [ "$measured" -lt 30 ]; then
  echo "FAIL: no build limit in the plan ('$build_limit') or no build measured in" \
    "bench/results (${measured}s)"
  fail=1
elif [ "$build_limit" -lt $((2 * measured)) ]; then
  echo "FAIL: the build's limit ${build_limit}s is under twice the longest measured build" \
    "(${measured}s)"
  fail=1
else
  echo "ok: the build's limit ${build_limit}s holds twice the longest measured build (${measured}s)"
fi
# Every benchmark command of every group gets past its options on this build's binaries (no GPU
# visible: each stops at its GPU lookup), as many as gpu-check.sh has: an argument, or a
# GRADCOMP_* setting of a step, that the box would refuse costs that step a session's device time.
if [ -n "$build" ]; then
  want_cmds=$(grep -c '"\$perf"\|/bench/gradcomp_kernels_perf"\|tools/tc_link.sh "\$raw"' \
    "$src/tools/gpu-check.sh")
  out=$(GC_PLAN=1 GC_PLAN_ARGS=1 GC_BUILD_DIR="$build" bash "$src/tools/gpu-check.sh" 2>&1)
  rc=$?
  oks=$(grep -c '^plan-args: .*: ok ' <<< "$out")
  if [ "$rc" != 0 ] || grep -q '^plan-args: .*REFUSED' <<< "$out" || [ "$oks" != "$want_cmds" ] ||
    [ "$oks" -lt 16 ]; then
    echo "FAIL: the benchmark commands' arguments (exit $rc, $oks of $want_cmds taken):"
    grep '^plan-args:' <<< "$out"
    fail=1
  else
    echo "ok: the $oks benchmark commands of gpu-check.sh take their arguments (stopped at the GPU lookup)"
  fi
  # The check can fail: a setting every gradcomp_perf row would refuse.
  out=$(GRADCOMP_BITS=9 GC_PLAN=1 GC_PLAN_ARGS=1 GC_BUILD_DIR="$build" GC_STEPS=perf \
    bash "$src/tools/gpu-check.sh" 2>&1)
  rc=$?
  if [ "$rc" = 1 ] && grep -q '^plan-args: perf_n1: REFUSED (exit 2): .*GRADCOMP_BITS=9' <<< "$out"; then
    echo "ok: a refused setting is said (GRADCOMP_BITS=9)"
  else
    echo "FAIL: GRADCOMP_BITS=9 was not said refused by the arguments check"; fail=1
  fi
fi
exit $fail
