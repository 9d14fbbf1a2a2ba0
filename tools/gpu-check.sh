#!/usr/bin/env bash
# The GPU suite on a GPU machine, in named groups that each fit one device call
# of ~9 minutes including the build (docs/benchmark.md, "Running the GPU suite
# in 15-minute sessions"). Run them in this order, the next group right after
# the last (the machine is kept only while calls follow each other; the build
# in build-gpu/ is then reused):
#
#   GC_STEPS=core      build, tests (GRADCOMP_TEST_GPU=1), multirank, memcheck  ~5 min
#   GC_STEPS=perf      the goal rows: gradcomp_perf N=1/8 and pipelined, kernels,
#                      torch.topk, Nsight Compute's kernel limiters, plots      ~6 min
#   GC_STEPS=perf_more pipelined ring and hierarchy, auto's regret (allreduce,
#                      reduce-scatter), sparse and reduce-scatter rows, plots
#                      again (now with the sparse rows)                         ~5 min
#   GC_STEPS=hooks     gradcomp.torch's DDP and FSDP2 hooks (torch_hooks)         ~8 min
#   GC_STEPS=ddp       PyTorch DDP under LD_PRELOAD, flat and hierarchical      ~7 min
#   GC_STEPS=fsdp      gradcomp.torch's HSDP hook (torch_hooks_hsdp), then FSDP2
#                      under LD_PRELOAD (fsdp)                                   ~5 min
#   GC_STEPS=lm        the GPT head-to-head against PowerSGD (lm_compare, its 5 minutes) ~7 min
#   GC_STEPS=link      gradcomp_perf over tc-shaped links (tc_link, root)       ~6 min
#
# (minutes with a bare build; each group's limits fit 540 s.) With 15 minutes
# of device time per session: perf, then core with GC_MULTIRANK_RUNS="2:0 4:2"
# and GC_CHECK_BUDGET_S (the device time left less 60 s) in the first,
# perf_more + hooks in the second, link + ddp in the third, fsdp + lm in the
# fourth (docs/benchmark.md, "Sessions", says why and when). GC_STEPS also
# takes step names (tests multirank memcheck perf kernels torch_topk profile
# perf_more tc_probe tc_link ddp torch_hooks_hsdp fsdp torch_hooks lm_compare plots) and several groups;
# unset, everything runs (about 45 minutes). The build always runs first
# (seconds when build-gpu/ is built).
#
# Writes bench/results/<name>.md and .json (+ PNGs, raw outputs in
# bench/results/<name>/, <name> = <date>-<gpu> or GC_RUN_NAME), and copies the
# report, the JSON and tarballs of the PNGs and raw outputs to $OUT when set.
# Each call adds its steps to <name>/steps.tsv and makes the report from every
# raw output there, so the groups of one session (or of several sessions, with
# the raw folder committed and the same GC_RUN_NAME) fill one report. Before a
# step runs (or is skipped), what it writes there is removed, so that a step
# that dies early leaves no earlier call's output to be reported as its own;
# steps.tsv records each step's commit (GC_COMMIT, else HEAD), and the report
# leaves out a benchmark's output whose step's last record is not ok (unless
# the output is partial, or complete from a step that failed or timed out
# after writing it: its writer's own, named in the report). A failing step is
# recorded and the next one runs.
#
# GC_CHECK_BUDGET_S bounds the call (default 540 when GC_STEPS is set, else
# 3000): each step's limit is cut to what is left, and the PyTorch checks get
# their step's limit as their own budget, so they skip their last runs rather
# than being killed. GC_PLAN=1 prints the selected steps and limits and exits
# (no GPU needed); with GC_PLAN_ARGS=1 too, it runs each benchmark command with no GPU
# visible and fails if one refuses its arguments (check_args). GC_BUILD_DIR and GRADCOMP_CUDA_ARCHS override the build,
# GC_RESULTS_DIR the results folder (a dry run without a GPU: a temporary one).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# Groups of steps, in the order a session runs them; each fits one call.
declare -A groups=(
  [core]="tests multirank memcheck"
  [perf]="perf kernels torch_topk profile plots"
  [perf_more]="perf_more tc_probe plots"
  [hooks]="torch_hooks"
  [ddp]="ddp"
  [fsdp]="torch_hooks_hsdp fsdp"
  [lm]="lm_compare"
  [link]="tc_link"
)
all_steps="tests multirank memcheck perf kernels torch_topk profile perf_more tc_probe tc_link ddp torch_hooks_hsdp fsdp torch_hooks lm_compare plots"
steps_sel=" "
for s in ${GC_STEPS:-$all_steps}; do
  if [ -n "${groups[$s]:-}" ]; then
    # Each step once ("perf" names a group and a step): the banner lists the steps as they run.
    for g in ${groups[$s]}; do [[ "$steps_sel" == *" $g "* ]] || steps_sel+="$g "; done
  elif [[ " $all_steps " == *" $s "* ]]; then
    [[ "$steps_sel" == *" $s "* ]] || steps_sel+="$s "
  else
    echo "gpu-check: GC_STEPS names '$s', not a group (core perf perf_more hooks link ddp fsdp lm) or a step ($all_steps)" >&2
    exit 2
  fi
done
want() { [[ "$steps_sel" == *" $1 "* ]]; }
plan=${GC_PLAN:-0}

if [ -n "${GC_STEPS:-}" ]; then budget=${GC_CHECK_BUDGET_S:-540}; else budget=${GC_CHECK_BUDGET_S:-3000}; fi
# Whole seconds: anything else ("540s", "1e3") would fail the arithmetic below and, under set -u,
# end the call at its first step with no report.
if ! [[ "$budget" =~ ^[0-9]+$ ]]; then
  echo "gpu-check: GC_CHECK_BUDGET_S='$budget' is not a whole number of seconds" >&2
  exit 2
fi
start=$(date +%s)
deadline=$((start + budget - 30))  # keep half a minute for the report and the copies to $OUT
date=$(date +%Y-%m-%d)
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
gpu_name=${gpu_name:-unknown-gpu}
gpu_slug=$(echo "$gpu_name" | tr 'A-Z' 'a-z' | sed -E 's/^nvidia //; s/[^a-z0-9]+/-/g; s/^-+|-+$//g')
name=${GC_RUN_NAME:-$date-$gpu_slug}
results=${GC_RESULTS_DIR:-bench/results}
[ "$plan" = 1 ] && [ -z "${GC_RESULTS_DIR:-}" ] && results=$(mktemp -d)
raw=$results/$name
steps=$raw/steps.tsv
# A plan writes nothing there: a whole run's (GC_STEPS unset) fresh steps.tsv would erase the
# records of the steps that earlier calls of this GC_RUN_NAME ran.
if [ "$plan" != 1 ]; then
  mkdir -p "$raw"
  [ -z "${GC_STEPS:-}" ] && : > "$steps"; touch "$steps"
fi
# GC_BUILD_DIR and GRADCOMP_CUDA_ARCHS override the build (a dry run without a GPU);
# GC_COMMIT names the commit in the report when the tree's .git is stale.
build=${GC_BUILD_DIR:-build-gpu}
archs=${GRADCOMP_CUDA_ARCHS:-native}
jobs=$(nproc 2>/dev/null || echo 8)
echo "gpu-check: $gpu_name -> $results/$name.md (steps:$steps_sel budget ${budget}s)"
planned=0
# The commit each step ran, steps.tsv's fifth column: one raw folder filled over several calls
# (GC_RUN_NAME) can hold steps of several commits. GC_COMMIT, else HEAD (+dirty when the tree,
# results aside, differs from it), as tools/gpu_report.py names the report's.
step_commit=${GC_COMMIT:-}
if [ -z "$step_commit" ] && [ "$plan" != 1 ]; then
  if step_commit=$(git rev-parse HEAD 2>/dev/null); then
    git diff --quiet HEAD -- . ':!bench/results' 2>/dev/null || step_commit+="+dirty"
  else
    step_commit=""
  fi
fi

# record STEP STATUS SECONDS NOTE: a line of steps.tsv (name, status, seconds, note, commit).
record() {
  printf '%s\t%s\t%d\t%s\t%s\n' "$1" "$2" "$3" "$4" "$step_commit" >> "$steps"
}

# fresh FILE...: removes what a step writes, before it runs or is skipped. The raw folder is
# kept across calls (GC_RUN_NAME), and a step that dies before writing (gradcomp_perf writes its
# JSON after its first row, tc_link.sh its summary at the end) must leave no earlier call's
# output there, which the report and the plots would take for this call's.
fresh() {
  [ "$plan" = 1 ] || rm -f "$@"
  return 0
}

# run_step NAME LIMIT_S LOG CMD...: runs CMD under a time limit, output to LOG
# (and the console), and records status and seconds in steps.tsv.
run_step() {
  local step=$1 limit=$2 log=$3
  shift 3
  local now left t0 rc status note=""
  if [ "$plan" = 1 ]; then
    # A bare build takes ~90 s (36 s on the last H100, 107 s on the H200), a built tree
    # seconds; its limit (build_limit) is not what the plan counts for it.
    [ "$step" = build ] && limit=90
    planned=$((planned + limit))
    printf 'plan: %-16s %4ds  (sum %4ds of the %ds before the report)\n' "$step" "$limit" \
      "$planned" "$((budget - 30))"
    [ "$plan_args" = 1 ] && check_args "$step" "$@"
    return 0
  fi
  # Its log too: the report shows it as the step's output.
  rm -f "$log"
  now=$(date +%s)
  left=$((deadline - now))
  if [ "$left" -lt 20 ]; then
    record "$step" skipped 0 "time budget spent"
    echo "gpu-check: $step skipped (time budget spent)"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  # The PyTorch checks take this as their own budget: they skip their last
  # runs and still write their summary instead of being killed.
  export GC_STEP_BUDGET_S=$((limit - 15))
  echo "=== gpu-check: $step (limit ${limit}s)"
  t0=$(date +%s)
  timeout -k 20 "$limit" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status=ok ;;
    124 | 137) status="timed out"; note="after ${limit}s" ;;
    *) status="failed"; note="exit $rc" ;;
  esac
  record "$step" "$status" "$(($(date +%s) - t0))" "$note"
  save_out
  return "$rc"
}

# check_args STEP CMD...: GC_PLAN_ARGS=1 (with GC_PLAN=1) runs a benchmark step's command with no
# GPU visible. gradcomp_perf checks its options and every row's settings (GRADCOMP_* beneath
# them) before any rank looks for a GPU, and gradcomp_kernels_perf checks its options before
# it does: a command that gets as far as "no usable GPU" / "no GPU visible" would run on the
# box; any other end is an argument the box would refuse, said here before a session spends
# device time on it (bench/plan_check.sh, with the CTest build's binaries in GC_BUILD_DIR).
# The tc_link step's runs are checked the same way by tools/tc_link.sh --args-check; the
# profile step's gradcomp_kernels_perf runs, started by tools/ncu_profile.sh under ncu, are not.
plan_args=${GC_PLAN_ARGS:-0}
args_refused=0
check_args() {
  local step=$1 w bin="" out rc
  shift
  if [ "$step" = tc_link ]; then
    # Its runs' gradcomp_perf commands, rank 0's of each, as tc_link.sh writes them.
    out=$(bash tools/tc_link.sh --args-check "$build" 2>&1)
    rc=$?
    if [ "$rc" = 0 ] && grep -q ': ok ' <<< "$out"; then
      echo "plan-args: $step: ok ($(grep -c ': ok ' <<< "$out") runs: gradcomp_perf took their" \
        "arguments and stopped at the GPU lookup)"
    else
      echo "plan-args: $step: REFUSED (exit $rc): $(grep -v -m1 ': ok ' <<< "$out")"
      args_refused=1
    fi
    return 0
  fi
  for w in "$@"; do
    case ${w##*/} in gradcomp_perf | gradcomp_kernels_perf) bin=$w ;; esac
  done
  [ -n "$bin" ] || return 0
  if [ ! -x "$bin" ]; then
    echo "plan-args: $step: REFUSED: $bin is not built (GC_BUILD_DIR names a built tree)"
    args_refused=1
    return 0
  fi
  out=$(CUDA_VISIBLE_DEVICES="" timeout 20 "$@" 2>&1)
  rc=$?
  # Each program's own end at its GPU lookup, exit code and sentence (a gradcomp_perf without
  # --backend cuda says "no GPU visible" as it falls back to the CPU backend, and runs).
  local stop="no usable GPU.*; use --backend cpu" stop_rc=3
  if [ "${bin##*/}" = gradcomp_kernels_perf ]; then
    stop="no GPU visible; this benchmark needs one"
    stop_rc=2
  fi
  if [ "$rc" = "$stop_rc" ] && grep -q "$stop" <<< "$out"; then
    echo "plan-args: $step: ok (${bin##*/} took its arguments and stopped at the GPU lookup)"
  else
    # The program's own sentence, not a WARN or INFO line before it.
    echo "plan-args: $step: REFUSED (exit $rc):" \
      "$(grep -m1 "^${bin##*/}: " <<< "$out" || grep -m1 . <<< "$out")"
    args_refused=1
  fi
}

# The raw folder into $OUT after every step: the device call can be cut before this script's
# budget (a session's second call gets only the device time left), and what is under $OUT is
# all that comes back from a cut call. The report's own copies below replace it at the end.
save_out() {
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT" && tar -czf "$OUT/$name-raw.tar.gz.part" -C "$results" "$name" 2>/dev/null &&
    mv -f "$OUT/$name-raw.tar.gz.part" "$OUT/$name-raw.tar.gz"
}

# --- build
# Limits: the step's estimate on an H100/H200 (docs/benchmark.md) with a
# margin, chosen so that each group's limits and a bare build (~90 s) fit in
# the 540 s of one call.
# GoogleTest: the GPU box may have none installed, and .gtest/ (git-ignored)
# travels only when the call carries it (docs/benchmark.md, "Starting a
# session"). Without it the library and benchmarks are built all the same, so
# the perf groups run; tests, multirank and memcheck are recorded as missing.
build_tree() {
  mkdir -p "$build"
  cmake -S . -B "$build" -DGRADCOMP_CUDA_ARCHS="$archs" -DGRADCOMP_BUILD_TESTS=ON \
    > "$build/configure.txt" 2>&1
  local rc=$?
  cat "$build/configure.txt"
  rm -f "$build/no_gtest"
  if [ "$rc" != 0 ] && grep -q "GoogleTest not found" "$build/configure.txt"; then
    echo "gpu-check: no GoogleTest on this machine (carry .gtest: cp -a /usr/src/googletest .gtest" \
      "before the call); building without the tests: tests, multirank and memcheck cannot run"
    touch "$build/no_gtest"
    cmake -S . -B "$build" -DGRADCOMP_CUDA_ARCHS="$archs" -DGRADCOMP_BUILD_TESTS=OFF || return 1
  elif [ "$rc" != 0 ]; then
    return 1
  fi
  cmake --build "$build" -j "$jobs"
}
export -f build_tree
export build archs jobs
# 300 s: twice the longest bare build measured (the H200's 107 s at 3e09b0d, 16 cores; the
# kernels and tests have grown since), so that a slow bare build is not cut: a build killed by
# its limit leaves no binaries, and every later step of the call fails. Its time beyond the plan's
# 90 s comes out of the group's last step (bench/plan_check.sh checks the headroom against every
# build in bench/results/*/steps.tsv).
build_limit=300
[ "$plan" = 1 ] && echo "plan-build: limit ${build_limit}s, -j $jobs (nproc)"
run_step build "$build_limit" "$raw/build.txt" bash -c build_tree
# gtest_missing STEP: true (and STEP recorded as missing) when the build had no GoogleTest.
gtest_missing() {
  [ "$plan" != 1 ] && [ -f "$build/no_gtest" ] || return 1
  record "$1" missing 0 "no GoogleTest in the build (carry .gtest)"
  return 0
}

# --- tests (GPU tests fail instead of skipping without a usable GPU)
# 175 s: CTest starts preload.gpu_real_nccl first (the H200's 117 s on 2026-12-04: 81 s for it,
# 79 s for python.torch beside it, and two hung tests cut at 100 s, since fixed); the preload
# test's multi-process runs (3.2 s each there, 34 now) must fit with one hung case (65 s): a
# step cut by its limit loses CTest's summary, every count (bench/plan_check.sh).
# python.torch is left out: its gloo processes on the CPU backend (368 s on a 2-core CPU
# machine since 2026-12-06's classes; no CUDA path but one dtype refusal) are what CI runs,
# and the hooks group runs gradcomp.torch on the GPU.
want tests && fresh "$raw/tests.txt" "$raw/tests.json" "$raw/tests_failed.txt"
want tests && ! gtest_missing tests && run_step tests 175 "$raw/tests.txt" bash -c \
  "cd $build && GRADCOMP_TEST_GPU=1 ctest -j 8 --output-on-failure --timeout 100 -E '^python[.]torch\$'"
want tests && [ "$plan" != 1 ] && python3 - "$raw" <<'PY'
import json, re, sys, os
d = sys.argv[1]
text = open(os.path.join(d, "tests.txt")).read() if os.path.exists(os.path.join(d, "tests.txt")) else ""
# CTest: "97% tests passed, 3 tests failed out of 103", or
# "100% tests passed out of 103" when none failed.
m = re.search(r"(\d+)% tests passed, (\d+) tests? failed out of (\d+)", text)
m0 = re.search(r"100% tests passed out of (\d+)", text)
# Skipped tests count in CTest's "passed": "  377 - preload.gpu_real_nccl (Skipped)".
skipped = len(re.findall(r"^\s*\d+ - \S+ \(Skipped\)", text, re.M))
out = {"tests_passed": None, "tests_failed": None, "tests_skipped": None}
if m:
    failed, total = int(m.group(2)), int(m.group(3))
    out = {"tests_passed": total - failed - skipped, "tests_failed": failed,
           "tests_skipped": skipped}
elif m0:
    out = {"tests_passed": int(m0.group(1)) - skipped, "tests_failed": 0,
           "tests_skipped": skipped}
json.dump(out, open(os.path.join(d, "tests.json"), "w"))
if "The following tests FAILED:" in text:
    open(os.path.join(d, "tests_failed.txt"), "w").write(text.split("The following tests FAILED:")[1])
PY


# --- multi-process NCCL tests and the DDP check, written by their owners
want multirank && fresh "$raw/multirank.json" "$raw/multirank.md" "$raw/multirank_failures.txt"
if ! want multirank || gtest_missing multirank; then
  :
elif [ -f tools/multirank_check.sh ]; then
  # Includes the abort runs (a rank dies mid-call; the survivors must come back); the
  # pipelined checks' small buffers keep their NCCL calls to a few thousand per rank.
  # 235 s: with the build's 90, tests' 175 and memcheck's 10, core's limits fill the 510 s.
  # The H200 took 25 s (N = 2), 124 s (hierarchical N = 4) and 14 s (abort worlds) of 210,
  # and the flat N = 4 world got none: it needs about the hierarchical world's time, so a
  # session's core call runs GC_MULTIRANK_RUNS="2:0 4:2" (the hierarchical world then gets
  # up to 155 s: the budget's 220 less N = 2 and the abort worlds' 40) and the flat world in a
  # later call (docs/benchmark.md); a world cut short still counts what it passed.
  run_step multirank 235 "$raw/multirank.txt" bash tools/multirank_check.sh "$raw" "$build"
else
  record multirank missing 0 "tools/multirank_check.sh not in this tree"
fi

# --- the GPU parsers of bytes from the wire under compute-sanitizer: an
# out-of-bounds access is a failure (docs/reliability.md)
# 10 s: five small tests (about 200 short kernels; 2 s on the H200); the overflow tests, which
# parse no bytes from the wire and make 30 comms, are left out. The plan counts the step
# whether or not this machine has compute-sanitizer, so that the plan made without a GPU is the
# GPU's.
gc_csan=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if ! want memcheck || gtest_missing memcheck; then
  :
elif [ "$plan" = 1 ] || [ -x "$gc_csan" ]; then
  run_step memcheck 10 "$raw/memcheck.txt" "$gc_csan" \
    --error-exitcode 1 "$build/tests/gradcomp_gpu_tests" --gtest_filter='ReliabilityGpu*:EliasGpu.BoundedDecode*:-ReliabilityGpu.OverflowingSum*'
  # The sanitizer refusing the device (gVisor: "Device not supported", then error 999 at the
  # first allocation) is no out-of-bounds access in the parsers: recorded as unavailable.
  if [ "$plan" != 1 ] && grep -q "Device not supported" "$raw/memcheck.txt" 2>/dev/null; then
    # Status and note replaced; the commit column after them kept.
    sed -i '$ s/^memcheck\t[^\t]*\t\([0-9]*\)\t[^\t]*/memcheck\tunavailable\t\1\tcompute-sanitizer: Device not supported/' "$steps"
    save_out
  fi
else
  record memcheck missing 0 "compute-sanitizer not found (PATH, /usr/local/cuda/bin)"
fi

# --- benchmarks
perf=$build/bench/gradcomp_perf
want perf && fresh "$raw/perf_n1.json" "$raw/perf_n1.json.part"
want perf && run_step perf_n1 20 "$raw/perf_n1.txt" "$perf" --backend cuda -N 1 -b 1M -e 256M -f 4 \
  -m none,qsgd --json "$raw/perf_n1.json"
# With the projection onto 2 and 4 nodes of 4 and 8 GPUs (hier_* keys of the report).
want perf && fresh "$raw/perf_n8.json" "$raw/perf_n8.json.part"
want perf && run_step perf_n8 90 "$raw/perf_n8.txt" "$perf" --backend cuda -N 8 -b 1M -e 256M -f 4 \
  -n 5 -w 2 -m qsgd -d float,bfloat16 --link-gbps 10,25,100,400 --model-nodes 2,4 \
  --model-local 4,8 --node-gbps 100,400,3200 --json "$raw/perf_n8.json"
# The pipelined two-shot: 256 MB fp32 in 6 pieces of ~43 MB (GRADCOMP_PIPELINE_BYTES; the
# model's best piece count for this call at 100 and 400 Gb/s, docs/benchmark.md), checked like
# every row; its pipelined model gives the report's
# allreduce_qsgd4_model_speedup_{100,400}gbps_n8_256MB (perf_n8 gives the unpipelined ones).
want perf && fresh "$raw/perf_n8_pipe.json" "$raw/perf_n8_pipe.json.part"
want perf && run_step perf_n8_pipe 45 "$raw/perf_n8_pipe.txt" env GRADCOMP_PIPELINE_BYTES=44739242 \
  "$perf" --backend cuda -N 8 -b 256M -e 256M -n 2 -w 1 -m qsgd -d float \
  --link-gbps 10,25,100,400 --json "$raw/perf_n8_pipe.json"
# GRADCOMP_ROUNDING=nearest: the rows' link model times the nearest encode kernel (gradcomp_perf
# keys its kernel table by rounding); beside perf_n8's stochastic 64 MB rows in the report.
want perf && fresh "$raw/perf_n8_nearest.json" "$raw/perf_n8_nearest.json.part"
want perf && run_step perf_n8_nearest 30 "$raw/perf_n8_nearest.txt" env GRADCOMP_ROUNDING=nearest \
  "$perf" --backend cuda -N 8 -b 64M -e 64M -n 2 -w 1 -m qsgd -d float,bfloat16 \
  --link-gbps 10,25,100,400 --json "$raw/perf_n8_nearest.json"
# The link model's kernel accounting in those rows: each kernel's cost, the work per element,
# kernel_us their sum (bench/model_check.py; decode overwrite / accumulate printed).
want perf && run_step model_check 10 "$raw/model_check.txt" python3 bench/model_check.py \
  "$raw/perf_n8.json" "$raw/perf_n8_pipe.json" "$raw/perf_n8_nearest.json"
# Two processes: the kinds that have run on a GPU before (the goal rows) first, then the
# kinds that have not, so that a failure there (a sticky CUDA error ends its process) cannot
# cost the goal rows; its rows are merged into kernels.json below. Each rewrites its JSON
# after every row.
kernels_new=encode_nearest,encode_square,encode_square_nearest,encode_batch,decode_batch,sum,topk_threshold_min_sample,topk_threshold_lookback,sparse_checks
want kernels && fresh "$raw/kernels.json" "$raw/kernels_more.json" "$raw/kernels.json.part" \
  "$raw/kernels_more.json.part"
want kernels && run_step kernels 20 "$raw/kernels.txt" "$build/bench/gradcomp_kernels_perf" \
  --skip "$kernels_new" --json "$raw/kernels.json"
want kernels && run_step kernels_more 15 "$raw/kernels_more.txt" \
  "$build/bench/gradcomp_kernels_perf" --only "$kernels_new" --json "$raw/kernels_more.json"
# One kernels.json for every reader (the report, the plots, the CPU backend's kernel rates).
want kernels && [ "$plan" != 1 ] && python3 tools/kernels_merge.py "$raw"
want torch_topk && fresh "$raw/torch_topk.json" "$raw/torch_topk.json.part"
want torch_topk && run_step torch_topk 20 "$raw/torch_topk.txt" "${PYTHON:-python3}" bench/torch_topk.py \
  --json "$raw/torch_topk.json"
# Nsight Compute on the kernels at 2^26: which of memory, issue or latency bounds each
# (profile.json; the report's kernel limiters table, docs/algorithms.md's).
want profile && fresh "$raw/profile.json" "$raw"/ncu_*.csv "$raw"/ncu_*.csv.err
want profile && run_step profile 150 "$raw/profile.txt" bash tools/ncu_profile.sh "$raw" "$build"
# --- perf_more: the rows whose keys are not goals of the kernels or the pipelined model
# The pipelined ring, same call and pieces (-a ring): checked like every row, with
# its pipelined model beside the unpipelined one (docs/algorithms.md, "Pipelined ring").
want perf_more && fresh "$raw/perf_n8_ring_pipe.json" "$raw/perf_n8_ring_pipe.json.part"
want perf_more && run_step perf_n8_ring_pipe 40 "$raw/perf_n8_ring_pipe.txt" \
  env GRADCOMP_PIPELINE_BYTES=67108864 "$perf" --backend cuda -N 8 -b 256M -e 256M -n 2 -w 1 \
  -m qsgd -d float -a ring --link-gbps 10,25,100,400 --json "$raw/perf_n8_ring_pipe.json"
# GRADCOMP_AUTO against forced compression and NCCL on one link (2 ranks
# sharing the GPU): auto_regret_max_frac of the report.
want perf_more && fresh "$raw/perf_auto.json" "$raw/perf_auto.json.part"
want perf_more && run_step perf_auto 60 "$raw/perf_auto.txt" "$perf" --backend cuda -N 2 -b 1M -e 256M \
  -f 4 -n 5 -w 2 -m qsgd --auto --json "$raw/perf_auto.json"
# The same for the reduce-scatter, whose auto times its own two paths: inputs
# of 1 MB .. 256 MB (outputs half that), auto_rs_regret_max_frac of the report.
want perf_more && fresh "$raw/perf_auto_rs.json" "$raw/perf_auto_rs.json.part"
want perf_more && run_step perf_auto_rs 30 "$raw/perf_auto_rs.txt" "$perf" --backend cuda -N 2 \
  -C reduce_scatter -b 512K -e 128M -f 4 -n 5 -w 2 -m qsgd --auto --json "$raw/perf_auto_rs.json"
want perf_more && fresh "$raw/perf_n8_sparse.json" "$raw/perf_n8_sparse.json.part"
want perf_more && run_step perf_n8_sparse 50 "$raw/perf_n8_sparse.txt" "$perf" --backend cuda -N 8 -b 4M \
  -e 256M -f 4 -n 5 -w 2 -m topk,dgc,randk -k 0.001 --link-gbps 10,25,100,400 \
  --json "$raw/perf_n8_sparse.json"
# The sparse rows' kernel accounting: the selector timed alone, the bytes at the copy's rate,
# the work read off each row's sparse_kind (bench/model_check.py; docs/benchmark.md, "The
# sparse rows' kernels").
want perf_more && run_step model_check_sparse 10 "$raw/model_check_sparse.txt" \
  python3 bench/model_check.py "$raw/perf_n8_sparse.json"
want perf_more && fresh "$raw/perf_n8_rs.json" "$raw/perf_n8_rs.json.part"
want perf_more && run_step perf_n8_rs 40 "$raw/perf_n8_rs.txt" "$perf" --backend cuda -N 8 \
  -C reduce_scatter -b 128K -e 32M -f 4 -n 5 -w 2 -m qsgd -d float --link-gbps 10,25,100 \
  --json "$raw/perf_n8_rs.json"
# The pipelined reduce-scatter: 256 MB fp32 input (32 MB out per rank) in 4 pieces
# (docs/algorithms.md, "Pipelined reduce-scatter"), checked like every row, with its
# pipelined model beside the unpipelined one.
want perf_more && fresh "$raw/perf_n8_rs_pipe.json" "$raw/perf_n8_rs_pipe.json.part"
want perf_more && run_step perf_n8_rs_pipe 40 "$raw/perf_n8_rs_pipe.txt" \
  env GRADCOMP_PIPELINE_BYTES=67108864 "$perf" --backend cuda -N 8 -C reduce_scatter -b 32M \
  -e 32M -n 2 -w 1 -m qsgd -d float,bfloat16 --link-gbps 10,25,100,400 \
  --json "$raw/perf_n8_rs_pipe.json"
# The hierarchical reduce-scatter: 2 nodes of 4 ranks, two-link-class model.
want perf_more && fresh "$raw/perf_n8_hier_rs.json" "$raw/perf_n8_hier_rs.json.part"
want perf_more && run_step perf_n8_hier_rs 30 "$raw/perf_n8_hier_rs.txt" "$perf" --backend cuda -N 8 \
  -C reduce_scatter --local-size 4 -b 1M -e 32M -f 4 -n 5 -w 2 -m qsgd -d float,bfloat16 \
  --json "$raw/perf_n8_hier_rs.json"
# The pipelined hierarchical reduce-scatter: 8 ranks as 4 nodes of 2, 256 MB fp32 input, its
# in-node stage piece by piece around the inter-node stage's 3 pieces (docs/algorithms.md,
# "Pipelined hierarchical reduce-scatter"), with the row's two-stage pipelined model.
want perf_more && fresh "$raw/perf_n8_hier_rs_pipe.json" "$raw/perf_n8_hier_rs_pipe.json.part"
want perf_more && run_step perf_n8_hier_rs_pipe 40 "$raw/perf_n8_hier_rs_pipe.txt" \
  env GRADCOMP_PIPELINE_BYTES=44739242 "$perf" --backend cuda -N 8 -C reduce_scatter \
  --local-size 2 -b 32M -e 32M -n 2 -w 1 -m qsgd -d float,bfloat16 --link-gbps 10,25,100,400 \
  --json "$raw/perf_n8_hier_rs_pipe.json"
# The pipelined hierarchy: 8 ranks as 4 nodes of 2, 256 MB fp32, the middle two-shot's
# shard cut into 32 MB pieces (docs/algorithms.md, "Pipelined hierarchy"): checked like
# every row, with the row's pipelined three-stage model.
want perf_more && fresh "$raw/perf_n8_hier_pipe.json" "$raw/perf_n8_hier_pipe.json.part"
want perf_more && run_step perf_n8_hier_pipe 45 "$raw/perf_n8_hier_pipe.txt" \
  env GRADCOMP_PIPELINE_BYTES=33554432 "$perf" --backend cuda -N 8 --local-size 2 -b 256M \
  -e 256M -n 3 -w 1 -m qsgd -d float --json "$raw/perf_n8_hier_pipe.json"
# Whether this machine can shape links at all (ip, tc, veth, bridge, tbf; ~5 s), before a
# session spends a call on the link group: a failed probe means the link group would only
# record tc_unavailable_reason.
want tc_probe && run_step tc_probe 15 "$raw/tc_probe.txt" bash tools/tc_link.sh --selftest
# A real slow link: ranks in network namespaces over tc-shaped veths (10, 25 Gb/s; N = 2, 4).
want tc_link && fresh "$raw/tc_link.json" "$raw/tc_link.md" "$raw"/tc_link_*
want tc_link && run_step tc_link 420 "$raw/tc_link.txt" bash tools/tc_link.sh "$raw" "$build"

# --- PyTorch DDP under LD_PRELOAD
want ddp && fresh "$raw/ddp.json" "$raw/ddp.md"
if ! want ddp; then
  :
elif [ -f tools/ddp_check.sh ]; then
  # 30 epochs, as the H100 run (2026-11-25: 7 runs in 246 s): at the script's default 40 the
  # eight runs need ~360-400 s of the 405, and the last one would start with too little left.
  run_step ddp 420 "$raw/ddp.txt" bash -c 'GC_DDP_BUDGET_S=${GC_DDP_BUDGET_S:-$GC_STEP_BUDGET_S} \
    GC_DDP_EPOCHS=${GC_DDP_EPOCHS:-30} exec bash tools/ddp_check.sh "$0" "$1"' "$raw" "$build"
else
  record ddp missing 0 "tools/ddp_check.sh not in this tree"
fi

# plan_hook_runs LIMIT ARGS...: in a plan, tools/torch_hooks_check.py's own plan of a step's
# runs in the budget the step gives it (its limit less 15 s): each run's estimate and "runs" or
# "skipped" (bench/plan_check.sh fails on a skipped run).
plan_hook_runs() {
  local limit=$1
  shift
  [ "$plan" = 1 ] || return 0
  GC_HOOK_BUDGET_S=$((limit - 15)) GC_HOOK_EPOCHS=${GC_HOOK_EPOCHS:-20} \
    python3 tools/torch_hooks_check.py "$raw" --plan "$@"
}

# --- gradcomp.torch's HSDP replica all-reduce hook against native HSDP (2 replicas of 2
# shards): torch_hooks_check.py's hsdp runs, in a step of their own (torch_hooks_hsdp.json and
# .md) because the torch_hooks step's budget holds its DDP and FSDP2 runs and not these (their
# estimates: tools/torch_hooks_check.py's estimate_s, printed by GC_PLAN=1). 120 s: ~36 s
# each, and the second starts only with 1.1 times the first's time and 10 s left. Before fsdp
# in its group: fsdp's runs are the ones that take what a long build left.
want torch_hooks_hsdp && fresh "$raw/torch_hooks_hsdp.json" "$raw/torch_hooks_hsdp.md"
want torch_hooks_hsdp && run_step torch_hooks_hsdp 120 "$raw/torch_hooks_hsdp.txt" bash -c \
  'GC_HOOK_BUDGET_S=${GC_HOOK_BUDGET_S:-$GC_STEP_BUDGET_S} exec "${PYTHON:-python3}" \
    tools/torch_hooks_check.py "$0" "$1" --runs hsdp --name torch_hooks_hsdp' "$raw" "$build"
want torch_hooks_hsdp && plan_hook_runs 120 --runs hsdp --name torch_hooks_hsdp

# --- PyTorch FSDP2 under LD_PRELOAD (reduce-scatter)
want fsdp && fresh "$raw/fsdp.json" "$raw/fsdp.md"
if want fsdp && [ -f tools/fsdp_check.sh ]; then
  # 10 epochs at 4 ranks fit the step (docs/benchmark.md: 40 epochs at 2 and 4 ranks need ~8
  # minutes); GC_FSDP_EPOCHS / GC_FSDP_WORLDS="2 4" ask for more in a session with time.
  run_step fsdp 280 "$raw/fsdp.txt" bash -c 'GC_FSDP_BUDGET_S=${GC_FSDP_BUDGET_S:-$GC_STEP_BUDGET_S} \
    GC_FSDP_EPOCHS=${GC_FSDP_EPOCHS:-10} GC_FSDP_WORLDS="${GC_FSDP_WORLDS:-4}" \
    exec bash tools/fsdp_check.sh "$0" "$1"' "$raw" "$build"
fi
# --- gradcomp.torch: the DDP hook's GPU checks on the MLP, then the GPT head-to-head
# against PowerSGD and fp16 (tools/lm_compare.py says what it runs)
# 20 epochs: by the H100's DDP timings (tools/torch_hooks_check.py's estimate_s) the six DDP
# runs then take ~230 s of the 405 and the FSDP2 pair ~130 s (each judged, before it runs, by
# the longest run of its kind so far); the HSDP pair would not fit after them and runs in the
# fsdp group's torch_hooks_hsdp step. GC_PLAN=1 prints each run's estimate and verdict.
want torch_hooks && fresh "$raw/torch_hooks.json" "$raw/torch_hooks.md"
want torch_hooks && run_step torch_hooks 420 "$raw/torch_hooks.txt" bash -c \
  'GC_HOOK_BUDGET_S=${GC_HOOK_BUDGET_S:-$GC_STEP_BUDGET_S} GC_HOOK_EPOCHS=${GC_HOOK_EPOCHS:-20} \
    exec "${PYTHON:-python3}" \
    tools/torch_hooks_check.py "$0" "$1" --runs ddp,fsdp' "$raw" "$build"
want torch_hooks && plan_hook_runs 420 --runs ddp,fsdp
want lm_compare && fresh "$raw/lm.json" "$raw/lm.md" "$raw/lm_loss.png"
want lm_compare && run_step lm_compare 330 "$raw/lm_compare.txt" bash -c \
  'GC_LM_BUDGET_S=${GC_LM_BUDGET_S:-$GC_STEP_BUDGET_S} exec "${PYTHON:-python3}" \
    tools/lm_compare.py "$0" "$1"' "$raw" "$build"

# --- plots and the report (the deadline kept time for the report)
# An earlier call's PNG of a plot this call does not draw (its input left out) would be copied
# to latest-* and shown by the report beside this call's: gone first, as fresh() does for steps.
want plots && fresh "$results/$name"-{busbw,model_speedup,kernels,topk}.png
# Not without perf's rows: perf_more alone on a fresh box (build-gpu/results not carried) would
# draw its sparse rows over the perf group's plots of the same run name.
if want plots && [ "$plan" != 1 ] && [ ! -f "$raw/perf_n8.json" ]; then
  record plots skipped 0 "no perf_n8.json here (perf has not run on this box, or perf_n8 wrote none)"
elif want plots; then
run_step plots 20 "$raw/plots.txt" python3 tools/plot --perf "$raw/perf_n8.json" \
  --perf "$raw/perf_n8_sparse.json" --perf "$raw/perf_n1.json" --kernels "$raw/kernels.json" \
  --torch "$raw/torch_topk.json" --out "$results" --prefix "$name-" --raw "$raw"
fi
if [ "$plan" = 1 ]; then
  [ -z "${GC_RESULTS_DIR:-}" ] && rm -rf "$results"
  # Several groups in one call, or a small GC_CHECK_BUDGET_S: the last steps would be cut.
  if [ "$planned" -gt "$((budget - 30))" ]; then
    echo "plan: WARNING: the steps' limits sum to ${planned}s, over the $((budget - 30))s the" \
      "${budget}s budget leaves before the report: the last steps get what is left or are skipped"
  fi
  exit "$args_refused"
fi
for p in "$results/$name"-*.png; do
  [ -f "$p" ] && cp "$p" "$results/latest-${p##*/$name-}"
done
python3 tools/gpu_report.py --dir "$raw" --name "$name" --gpu "$gpu_name" \
  --md "$results/$name.md" --json "$results/$name.json" --plots-prefix "$name-"

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$results/$name.md" "$results/$name.json" "$OUT/" 2>/dev/null
  pngs=$(cd "$results" && ls "$name"-*.png 2>/dev/null)
  [ -n "$pngs" ] && tar -czf "$OUT/$name-plots.tar.gz" -C "$results" $pngs
  tar -czf "$OUT/$name-raw.tar.gz" -C "$results" "$name"
fi
echo "gpu-check: done in $(($(date +%s) - start))s: $results/$name.md"
cat "$steps"
