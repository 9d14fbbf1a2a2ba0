#!/usr/bin/env bash
# The LD_PRELOAD library with its interposer built by clang with
# -fsanitize=enum,function, under preload_app's bad_enums calls (calls.c): a
# caller's datatype of -1, 99 or INT_MIN, or op of -1 or INT_MIN, is outside
# C++'s ncclDataType_t / ncclRedOp_t, so reading it as the enum (to route the
# call or to pass it on) is undefined and stops the program here, where the
# regular library passes the call on anyway (GCC's UBSan does not check an
# enum passed by value). So is passing it on to NCCL through a function
# pointer whose type takes ints (C++ calls a function only through its own
# type): the stand-in NCCL is built as C++ with -fsanitize=function too, so
# that each of its functions carries its type for the caller's check (not
# with -fsanitize=enum: it logs the datatype and op it is given by reading
# them as the enums, and the interposer is what is checked). Every call must
# reach the stand-in NCCL unchanged.
# Skips without clang.
# Usage: check_enum_args.sh SOURCE_DIR PRELOAD_APP INCLUDE_DIR... -- LINK_LIBRARY... -- OBJECT...
set -euo pipefail
src=$1 app=$2
shift 2
. "$src/tests/check_enum_args_common.sh"
if ! command -v clang >/dev/null || ! command -v clang++ >/dev/null; then
  echo "SKIPPED: no clang/clang++ (-fsanitize=enum is clang's)"
  exit 0
fi
# The runtime that reports (and stops at) the first invalid load or call,
# loaded by the preload library and the stand-in NCCL: the program is not
# built with it.
san=(-fsanitize=enum -fsanitize=function -fno-sanitize-recover=enum -fno-sanitize-recover=function
  -shared-libsan)
rt=$(clang++ -print-file-name="libclang_rt.ubsan_standalone-$(uname -m).so")
if [ ! -f "$rt" ]; then
  echo "SKIPPED: no shared UBSan runtime for clang ($rt)"
  exit 0
fi
rtdir=$(dirname "$rt")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
defs=(-DCUB_WRAPPED_NAMESPACE=gradcomp_cub -DTHRUST_WRAPPED_NAMESPACE=gradcomp_thrust)
for s in interpose comm_table fusion nccl_dlsym; do
  clang++ -std=c++17 -O1 -fPIC -ffp-contract=off "${san[@]}" "${defs[@]}" "${flags[@]}" \
    -c "$src/plugin/preload/$s.cc" -o "$work/$s.o"
done
clang -std=c99 -O1 -fPIC "${flags[@]}" -c "$src/plugin/preload/nccl_ints.c" -o "$work/nccl_ints.o"
mkdir "$work/nccl"
clang++ -x c++ -std=c++17 -O1 -fPIC -shared -fsanitize=function -fno-sanitize-recover=function \
  -shared-libsan "${flags[@]}" \
  "$src/tests/preload/fake_nccl.c" -Wl,-soname,libnccl.so.2 -Wl,-rpath,"$rtdir" \
  -o "$work/nccl/libnccl.so.2"
clang++ -shared "${san[@]}" "$work"/*.o "$@" "${libs[@]}" -lpthread -ldl -lrt \
  -Wl,--version-script="$src/plugin/preload/exports.map" -Wl,-rpath,"$rtdir" \
  -o "$work/libgradcomp_preload_enum.so"
status=0
for group in defer pass; do
  : > "$work/log"
  env -u GRADCOMP_DEBUG CUDA_VISIBLE_DEVICES= FAKE_NCCL_LOG="$work/log" \
    LD_LIBRARY_PATH="$work/nccl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    LD_PRELOAD="$work/libgradcomp_preload_enum.so" GRADCOMP_GROUP=$group \
    GC_TEST_GROUP_CALLS_DEFERRED=1 GRADCOMP_METHOD=qsgd "$app" bad_enums \
    > "$work/expected" 2> "$work/err" || status=$?
  if grep -q "runtime error" "$work/err" || [ $status != 0 ]; then
    echo "FAIL: GRADCOMP_GROUP=$group: the interposer read a caller's datatype or op as the enum," \
      "or called NCCL through a pointer of another function type:"
    grep -E "runtime error|SUMMARY" "$work/err" || sed 's/^/  | /' "$work/err"
    exit 1
  fi
  if ! diff -u "$work/expected" "$work/log"; then
    echo "FAIL: GRADCOMP_GROUP=$group: NCCL did not receive exactly the program's calls"
    exit 1
  fi
done
echo "PASS: the interposer passed every datatype and op to NCCL unchanged, reading none as the" \
  "enum, through NCCL's own function types"
