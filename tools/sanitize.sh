#!/usr/bin/env bash
# The host sources and every CPU test built with ASan and UBSan
# (-fno-sanitize-recover=all: any report fails), run once; then the same
# tests built with ThreadSanitizer (the CPU world's ranks are threads, so a
# race between ranks, in the library or in a test, fails here rather than
# once in a while); then the Python tests on the ASan/UBSan library. CI runs it after
# tools/test.sh in the same build directory, which reuses the CUDA objects.
# Arguments go to the test binary (e.g. --gtest_filter='Reliability*').
set -euo pipefail
cd "$(dirname "$0")/.."
GC_NEED_GTEST=1
source tools/deps.sh
cmake -S . -B "$GC_BUILD_DIR" -DGRADCOMP_CUDA_ARCHS="$GRADCOMP_CUDA_ARCHS" >/dev/null
cmake --build "$GC_BUILD_DIR" -j "$GC_JOBS" --target gradcomp_cpu_tests_san
# allocator_may_return_null: the bad-input tests ask for terabytes and expect
# an error back, not an abort. Leaks are reported too.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
"$GC_BUILD_DIR/tests/gradcomp_cpu_tests_san" --gtest_brief=1 "$@"
echo "sanitize: ASan/UBSan built and passed ($SECONDS s)"

cmake --build "$GC_BUILD_DIR" -j "$GC_JOBS" --target gradcomp_cpu_tests_tsan
# halt_on_error: the first race fails the run, with both stacks printed.
TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:allocator_may_return_null=1:second_deadlock_stack=1} \
  "$GC_BUILD_DIR/tests/gradcomp_cpu_tests_tsan" --gtest_brief=1 "$@"
echo "sanitize: TSan built and passed ($SECONDS s)"

# The Python binding's tests and gradcomp.torch's (their 2-process DDP and FSDP runs on the
# CPU backend over TCP included) on libgradcomp_san.so: the pointers the binding and the
# hooks hand the library, under the same checks. Skipped when arguments chose C++ tests.
if [ $# -eq 0 ]; then
  cmake --build "$GC_BUILD_DIR" -j "$GC_JOBS" --target gradcomp_san
  cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$GC_BUILD_DIR/CMakeCache.txt")
  runtimes="$("${cxx:-c++}" -print-file-name=libasan.so):$("${cxx:-c++}" -print-file-name=libubsan.so)"
  lib="$(cd "$GC_BUILD_DIR" && pwd)/tests/libgradcomp_san.so"
  pkg="$(pwd)/python"
  # test_torch's CpuBackend* classes each start 2 or 3 fresh processes (about 5 s each here,
  # more under ASan) whose library calls are the in-process classes' over TCP: two of them,
  # DDP's and FSDP's matches with the serial reference, stand for the rest here, which run
  # unsanitized in tools/test.sh (CTest python.torch).
  torch_classes=$(cd tests/python && GRADCOMP_LIBRARY="$lib" PYTHONPATH="$pkg" python3 -c '
import unittest
try:
    import test_torch
except ImportError:
    print("test_torch")
    raise SystemExit
keep = {"CpuBackendDdp", "CpuBackendFsdp"}
print(" ".join(sorted("test_torch." + n for n, c in vars(test_torch).items()
                      if isinstance(c, type) and issubclass(c, unittest.TestCase)
                      and c.__module__ == "test_torch"
                      and (not n.startswith("CpuBackend") or n in keep))))' 2>/dev/null) ||
    torch_classes=test_torch
  # The interpreter's own allocations are not the library's: no leak report.
  # shellcheck disable=SC2086 # one word per class
  (cd tests/python &&
   LD_PRELOAD="$runtimes" ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1 \
   GRADCOMP_LIBRARY="$lib" PYTHONPATH="$pkg" python3 -m unittest test_binding $torch_classes)
fi
echo "sanitize: ASan/UBSan and TSan clean"
