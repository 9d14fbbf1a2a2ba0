#!/usr/bin/env bash
# CTest: how the GPU box's checks that start ranks (tools/ddp_check.sh, tools/fsdp_check.sh)
# find the interposer (no torch, no GPU): a BUILD_DIR given as an absolute path names the
# interposer inside it (gpu-check passes GC_BUILD_DIR on). Skips (77) under
# GRADCOMP_TEST_GPU=1: it times nothing on the GPU.
#   bench/stop_check.sh SOURCE_DIR
set -uo pipefail
src=$(cd "$1" && pwd)
if [ "${GRADCOMP_TEST_GPU:-0}" = 1 ]; then
  echo "SKIPPED: GRADCOMP_TEST_GPU=1 (no GPU path here)"
  exit 77
fi
work=$(mktemp -d)
fail=0
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/build/plugin/preload"
: > "$work/build/plugin/preload/libgradcomp_preload.so"

# check_args with an absolute BUILD_DIR (it sets preload)
# shellcheck disable=SC1091,SC2154
(
  cd "$src" && source tools/torch_ranks.sh && check_args ddp "$work/args" "$work/build" &&
    [ "$preload" = "$work/build/plugin/preload/libgradcomp_preload.so" ]
) || { echo "FAIL: check_args with an absolute BUILD_DIR names another interposer"; fail=1; }

exit $fail
