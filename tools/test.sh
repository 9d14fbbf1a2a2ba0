#!/usr/bin/env bash
# Builds gradcomp and its tests and runs them with CTest. GPU tests skip
# without a GPU (GRADCOMP_TEST_GPU=1 makes that a failure).
set -euo pipefail
cd "$(dirname "$0")/.."
GC_NEED_GTEST=1
source tools/deps.sh
# The Python tests run with the interpreter deps.sh gave numpy to.
cmake -S . -B "$GC_BUILD_DIR" -DGRADCOMP_CUDA_ARCHS="$GRADCOMP_CUDA_ARCHS" \
  -DPython3_EXECUTABLE="$(command -v python3)" >/dev/null
cmake --build "$GC_BUILD_DIR" -j "$GC_JOBS"
cd "$GC_BUILD_DIR"
ctest --output-on-failure -j "$GC_JOBS" --timeout 900 "$@"
