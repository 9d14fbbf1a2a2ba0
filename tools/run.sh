#!/usr/bin/env bash
# Builds gradcomp and runs the main job: the benchmark. Without a GPU it runs
# on the CPU reference backend and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
GC_NEED_GTEST=1
source tools/deps.sh
cmake -S . -B "$GC_BUILD_DIR" -DGRADCOMP_CUDA_ARCHS="$GRADCOMP_CUDA_ARCHS" >/dev/null
main=gradcomp_perf
cmake --build "$GC_BUILD_DIR" -j "$GC_JOBS" --target "$main"
exec "$GC_BUILD_DIR/bench/$main" "$@"
