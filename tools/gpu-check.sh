#!/usr/bin/env bash
# The whole GPU suite on a GPU machine, in about 20 minutes on one H100:
# builds for this GPU (build-gpu/), runs the tests with GRADCOMP_TEST_GPU=1,
# the multi-process NCCL tests and the PyTorch DDP check when their scripts
# exist, gradcomp_perf (1 rank, and 8 ranks sharing the GPU with the link
# model), the kernel benchmarks and torch.topk on the same data, then plots.
# Writes bench/results/<date>-<gpu>.md and .json (+ PNGs, raw outputs in
# bench/results/<date>-<gpu>/), and copies the report to $OUT when set.
# A failing step is recorded and the next one runs.
#
# GC_CHECK_BUDGET_S (default 1200) bounds the whole run: each step's time
# limit is cut to what is left. GC_STEPS (default: all of "tests multirank
# perf kernels torch_topk ddp plots") picks the steps after the build, so the
# suite can be split over several shorter sessions; the raw outputs of each
# part land in the same bench/results/<date>-<gpu>/ folder and the report is
# made from whatever is there.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

budget=${GC_CHECK_BUDGET_S:-1200}
start=$(date +%s)
deadline=$((start + budget - 60))  # keep a minute for plots and the report
date=$(date +%Y-%m-%d)
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
gpu_name=${gpu_name:-unknown-gpu}
gpu_slug=$(echo "$gpu_name" | tr 'A-Z' 'a-z' | sed -E 's/^nvidia //; s/[^a-z0-9]+/-/g; s/^-+|-+$//g')
name="$date-$gpu_slug"
results=bench/results
raw=$results/$name
mkdir -p "$raw"
steps=$raw/steps.tsv
[ -z "${GC_STEPS:-}" ] && : > "$steps"; touch "$steps"
# GC_BUILD_DIR and GRADCOMP_CUDA_ARCHS override the build (a dry run without a GPU);
# GC_COMMIT names the commit in the report when the tree's .git is stale.
build=${GC_BUILD_DIR:-build-gpu}
archs=${GRADCOMP_CUDA_ARCHS:-native}
jobs=$(nproc 2>/dev/null || echo 8)
echo "gpu-check: $gpu_name -> $results/$name.md (budget ${budget}s)"

steps_sel=" ${GC_STEPS:-tests multirank perf kernels torch_topk ddp plots} "
want() { [[ "$steps_sel" == *" $1 "* ]]; }

# run_step NAME LIMIT_S LOG CMD...: runs CMD under a time limit, output to LOG
# (and the console), and records status and seconds in steps.tsv.
run_step() {
  local step=$1 limit=$2 log=$3
  shift 3
  local now left t0 rc status note=""
  now=$(date +%s)
  left=$((deadline - now))
  if [ "$left" -lt 20 ]; then
    printf '%s\tskipped\t0\ttime budget spent\n' "$step" >> "$steps"
    echo "gpu-check: $step skipped (time budget spent)"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== gpu-check: $step (limit ${limit}s)"
  t0=$(date +%s)
  timeout -k 20 "$limit" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status=ok ;;
    124 | 137) status="timed out"; note="after ${limit}s" ;;
    *) status="failed"; note="exit $rc" ;;
  esac
  printf '%s\t%s\t%d\t%s\n' "$step" "$status" "$(($(date +%s) - t0))" "$note" >> "$steps"
  return "$rc"
}

# --- build
run_step build 900 "$raw/build.txt" bash -c \
  "cmake -S . -B $build -DGRADCOMP_CUDA_ARCHS=$archs && cmake --build $build -j $jobs"

# --- tests (GPU tests fail instead of skipping without a usable GPU)
want tests && run_step tests 480 "$raw/tests.txt" bash -c \
  "cd $build && GRADCOMP_TEST_GPU=1 ctest -j 8 --output-on-failure --timeout 180"
want tests && python3 - "$raw" <<'PY'
import json, re, sys, os
d = sys.argv[1]
text = open(os.path.join(d, "tests.txt")).read() if os.path.exists(os.path.join(d, "tests.txt")) else ""
# CTest: "97% tests passed, 3 tests failed out of 103", or
# "100% tests passed out of 103" when none failed.
m = re.search(r"(\d+)% tests passed, (\d+) tests? failed out of (\d+)", text)
m0 = re.search(r"100% tests passed out of (\d+)", text)
out = {"tests_passed": None, "tests_failed": None}
if m:
    failed, total = int(m.group(2)), int(m.group(3))
    out = {"tests_passed": total - failed, "tests_failed": failed}
elif m0:
    out = {"tests_passed": int(m0.group(1)), "tests_failed": 0}
json.dump(out, open(os.path.join(d, "tests.json"), "w"))
if "The following tests FAILED:" in text:
    open(os.path.join(d, "tests_failed.txt"), "w").write(text.split("The following tests FAILED:")[1])
PY

# --- the GPU parsers of bytes from the wire under compute-sanitizer: an
# out-of-bounds access is a failure (docs/reliability.md)
gc_csan=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
want tests && [ -x "$gc_csan" ] && run_step memcheck 240 "$raw/memcheck.txt" "$gc_csan" \
  --error-exitcode 1 "$build/tests/gradcomp_gpu_tests" --gtest_filter='ReliabilityGpu*'

# --- multi-process NCCL tests and the DDP check, written by their owners
if ! want multirank; then
  :
elif [ -f tools/multirank_check.sh ]; then
  run_step multirank 360 "$raw/multirank.txt" bash tools/multirank_check.sh "$raw" "$build"
else
  printf 'multirank\tmissing\t0\ttools/multirank_check.sh not in this tree\n' >> "$steps"
fi

# --- benchmarks
perf=$build/bench/gradcomp_perf
want perf && run_step perf_n1 90 "$raw/perf_n1.txt" "$perf" --backend cuda -N 1 -b 1M -e 256M -f 4 \
  -m none,qsgd --json "$raw/perf_n1.json"
want perf && run_step perf_n8 200 "$raw/perf_n8.txt" "$perf" --backend cuda -N 8 -b 1M -e 256M -f 4 \
  -n 5 -w 2 -m qsgd -d float,bfloat16 --link-gbps 10,25,100 --json "$raw/perf_n8.json"
want perf && run_step perf_n8_sparse 150 "$raw/perf_n8_sparse.txt" "$perf" --backend cuda -N 8 -b 4M \
  -e 256M -f 4 -n 5 -w 2 -m topk,dgc,randk -k 0.001 --link-gbps 10,25,100 \
  --json "$raw/perf_n8_sparse.json"
want kernels && run_step kernels 300 "$raw/kernels.txt" "$build/bench/gradcomp_kernels_perf" \
  --json "$raw/kernels.json"
want torch_topk && run_step torch_topk 240 "$raw/torch_topk.txt" python3 bench/torch_topk.py \
  --json "$raw/torch_topk.json"

# --- PyTorch DDP under LD_PRELOAD
if ! want ddp; then
  :
elif [ -f tools/ddp_check.sh ]; then
  run_step ddp 600 "$raw/ddp.txt" bash tools/ddp_check.sh "$raw" "$build"
else
  printf 'ddp\tmissing\t0\ttools/ddp_check.sh not in this tree\n' >> "$steps"
fi

# --- plots and the report (the deadline kept time for these)
deadline=$((deadline + 60))
want plots && run_step plots 60 "$raw/plots.txt" python3 tools/plot --perf "$raw/perf_n8.json" \
  --perf "$raw/perf_n8_sparse.json" --perf "$raw/perf_n1.json" --kernels "$raw/kernels.json" \
  --torch "$raw/torch_topk.json" --out "$results" --prefix "$name-"
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
