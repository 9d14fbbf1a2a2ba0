#!/usr/bin/env bash
# tests/capi/enum_args.c (a C caller passing -1, past the values, the
# sentinel and past it for every enum the API reads, and -1, 99 and INT_MIN
# for NCCL's datatype and op) on the library's
# objects, with the sources of the entry points that read those enums built
# by clang with -fsanitize=enum: reading a caller's -1 as the enum is
# undefined in C++ (no public enum's range holds it) and stops the program
# here, where the regular library returns the right error anyway (GCC's
# UBSan, tools/sanitize.sh, does not check an enum passed by value).
# Skips without clang.
# Usage: check_enum_args.sh SOURCE_DIR INCLUDE_DIR... -- LINK_LIBRARY... -- OBJECT...
set -euo pipefail
src=$1
shift
. "$src/tests/check_enum_args_common.sh"
if ! command -v clang >/dev/null || ! command -v clang++ >/dev/null; then
  echo "SKIPPED: no clang/clang++ (-fsanitize=enum is clang's)"
  exit 0
fi
# The sources of every entry point that reads a caller's enum (by value, or
# in a config or Elias parameters it is given; NCCL's datatype and op at the
# codecs and the collectives), and the NCCL binding the library links with
# its objects.
instrumented=(plugin/error.cc plugin/config.cc plugin/abi.cc plugin/codecs/qsgd_host.cc
  plugin/codecs/qsgd_api.cc plugin/codecs/elias_host.cc plugin/codecs/elias_api.cc
  plugin/allreduce.cc plugin/reduce_scatter.cc plugin/collective.cc)
objects=()
for o in "$@"; do
  keep=1
  for s in "${instrumented[@]}"; do
    case "$o" in */"$s".o) keep=0 ;; esac
  done
  [ $keep = 1 ] && objects+=("$o")
done
if [ ${#objects[@]} -ne $(($# - ${#instrumented[@]})) ]; then
  echo "FAIL: the library's objects do not hold each of ${instrumented[*]} once"
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
defs=(-DCUB_WRAPPED_NAMESPACE=gradcomp_cub -DTHRUST_WRAPPED_NAMESPACE=gradcomp_thrust)
san=(-fsanitize=enum -fno-sanitize-recover=enum)
for s in "${instrumented[@]}"; do
  clang++ -std=c++17 -O1 -ffp-contract=off "${san[@]}" "${defs[@]}" "${flags[@]}" -c "$src/$s" \
    -o "$work/$(echo "$s" | tr / _).o"
done
clang++ -std=c++17 -O1 "${defs[@]}" "${flags[@]}" -c "$src/plugin/backends/cuda/nccl_linked.cc" \
  -o "$work/nccl_linked.o"
clang -std=c99 -O1 "${flags[@]}" -c "$src/tests/capi/enum_args.c" -o "$work/enum_args.o"
clang++ "${san[@]}" "$work"/*.o "${objects[@]}" "${libs[@]}" -lpthread -ldl -lrt -o "$work/enum_args"
if ! out=$(GRADCOMP_DEBUG=NONE "$work/enum_args" 2>&1); then
  echo "FAIL: an entry point read a caller's out-of-range value as the enum:"
  echo "$out"
  exit 1
fi
echo "$out"
case "$out" in *PASS:*) ;; *) echo "FAIL: enum_args did not pass"; exit 1 ;; esac
echo "PASS: ${instrumented[*]} read no caller's enum as the enum (-fsanitize=enum)"
