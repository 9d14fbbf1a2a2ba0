#!/usr/bin/env bash
# A first look at a GPU machine in under ten minutes: builds build-gpu/ for
# this GPU, runs every test with GRADCOMP_TEST_GPU=1, the multi-process NCCL
# tests, a short PyTorch DDP check (2 ranks), and each benchmark once on small
# sizes. Meant to find what breaks before tools/gpu-check.sh spends its
# longer runs. Outputs go to OUTDIR (default $OUT, else gpu-smoke/) as one
# tarball plus a summary, so they fit through a device call's file limit.
# GC_SMOKE_BUDGET_S (540) bounds the whole run.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-smoke}}
mkdir -p "$out"
work=$(mktemp -d /tmp/gc-smoke.XXXXXX)
build=${GC_BUILD_DIR:-build-gpu}
start=$(date +%s)
deadline=$((start + ${GC_SMOKE_BUDGET_S:-540} - 15))
summary=$work/summary.txt
: > "$summary"

# step NAME LIMIT_S CMD...: runs CMD with output in $work/NAME.txt, cut to the budget.
step() {
  local name=$1 limit=$2 left rc t0
  shift 2
  left=$((deadline - $(date +%s)))
  if [ "$left" -lt 10 ]; then echo "$name: skipped (budget spent)" >> "$summary"; return 1; fi
  [ "$limit" -gt "$left" ] && limit=$left
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$work/$name.txt" 2>&1
  rc=$?
  echo "$name: rc=$rc in $(($(date +%s) - t0))s (limit ${limit}s)" >> "$summary"
  echo "=== $name rc=$rc"
  tail -n 15 "$work/$name.txt"
  return "$rc"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$summary" 2>&1
nvcc --version | tail -1 >> "$summary"
step build 240 bash -c "cmake -S . -B $build -DGRADCOMP_CUDA_ARCHS=native && \
  cmake --build $build -j $(nproc)"
step tests 200 bash -c "cd $build && GRADCOMP_TEST_GPU=1 ctest -j 8 --output-on-failure --timeout 150"
grep -E "tests passed|FAILED|\(Failed\)|\(Timeout\)|Not Run" "$work/tests.txt" >> "$summary"
step multirank 120 bash tools/multirank_check.sh "$work/multirank" "$build"
step ddp 120 env GC_DDP_WORLDS=2 GC_DDP_EPOCHS=8 GC_DDP_BUDGET_S=110 GC_DDP_RUN_TIMEOUT_S=50 \
  bash tools/ddp_check.sh "$work/ddp" "$build"
step perf_n1 40 "$build/bench/gradcomp_perf" --backend cuda -N 1 -b 1M -e 16M -f 4 -m none,qsgd,topk
step perf_n4 60 "$build/bench/gradcomp_perf" --backend cuda -N 4 -b 1M -e 16M -f 4 -n 3 -w 1 \
  -m qsgd,dgc -k 0.01 --link-gbps 10
step perf_auto 40 "$build/bench/gradcomp_perf" --backend cuda -N 2 -b 1M -e 16M -f 4 -n 3 -w 1 \
  -m qsgd --auto
grep -E "Auto regret" "$work/perf_auto.txt" >> "$summary"
step kernels 40 "$build/bench/gradcomp_kernels_perf" --min-log2 20 --max-log2 24 --step-log2 4
step torch_topk 40 python3 bench/torch_topk.py --min-log2 20 --max-log2 24 --step-log2 4
echo "total $(($(date +%s) - start))s" >> "$summary"
cp "$summary" "$out/summary.txt"
tar -czf "$out/smoke.tar.gz" -C "$work" .
cat "$summary"
