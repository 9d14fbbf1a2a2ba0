#!/usr/bin/env bash
# gradcomp as a downstream project meets it: `cmake --install` into a temporary
# prefix, then, against that tree only, the installed files (headers, the
# libraries with their SONAME links, the CMake package and pkg-config file), a
# CMake project using find_package(gradcomp) and gradcomp::gradcomp
# (tests/install: the headers as C99, C11 and C++11..20 under -Wall -Wextra
# -pedantic -Werror, and a 2-rank CPU-world allreduce through the C API), and
# the same program built with pkg-config's flags.
#   install_check.sh BUILD_DIR SOURCE_DIR LIBDIR C_COMPILER CXX_COMPILER CUDA_ROOT [CONFIG]
# Exits 77 (skipped, with the reason) when a tool it needs is missing.
set -euo pipefail
build=$1 src=$2 libdir=$3 cc=$4 cxx=$5 cuda_root=$6 config=${7:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
if ! cmake --install "$build" --prefix "$prefix" ${config:+--config "$config"} \
    > "$work/install.log" 2>&1; then
  cat "$work/install.log"
  echo "SKIP: cmake --install failed (build the default targets first)"; exit 77
fi

fail=0
for f in include/gradcomp.h include/gradcomp/reference.h include/gradcomp/sparse.h \
         include/gradcomp/elias.h "$libdir/libgradcomp_preload.so" \
         "$libdir/cmake/gradcomp/gradcompConfig.cmake" \
         "$libdir/cmake/gradcomp/gradcompConfigVersion.cmake" \
         "$libdir/cmake/gradcomp/gradcompTargets.cmake" "$libdir/pkgconfig/gradcomp.pc"; do
  [ -f "$prefix/$f" ] || { echo "FAIL: the install has no $f"; fail=1; }
done
# libgradcomp.so -> libgradcomp.so.0 (the SONAME) -> libgradcomp.so.X.Y.Z
soname=$(readelf -d "$prefix/$libdir/libgradcomp.so" 2>/dev/null |
         sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
if [ "$soname" != libgradcomp.so.0 ] || [ ! -L "$prefix/$libdir/libgradcomp.so" ] ||
   [ ! -L "$prefix/$libdir/libgradcomp.so.0" ]; then
  echo "FAIL: libgradcomp.so's SONAME '$soname' or its links:"; ls -l "$prefix/$libdir"; fail=1
fi
[ $fail = 0 ] || exit 1

echo "install_check: find_package(gradcomp) from $prefix"
if ! cmake -S "$src/tests/install" -B "$work/consumer" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
    -DCUDAToolkit_ROOT="$cuda_root" > "$work/configure.log" 2>&1; then
  cat "$work/configure.log"; echo "FAIL: the consumer project does not configure"; exit 1
fi
if ! cmake --build "$work/consumer" > "$work/build.log" 2>&1; then
  cat "$work/build.log"; echo "FAIL: the consumer project does not build"; exit 1
fi
for exe in consumer_c99 consumer_c11 consumer_cxx11 consumer_cxx14 consumer_cxx17 consumer_cxx20; do
  "$work/consumer/$exe" > "$work/run.log" 2>&1 || {
    cat "$work/run.log"; echo "FAIL: $exe"; exit 1; }
done
cat "$work/run.log"

if ! command -v pkg-config > /dev/null; then
  echo "install_check: no pkg-config: its file was not tried"; exit 0
fi
echo "install_check: pkg-config gradcomp from $prefix"
export PKG_CONFIG_PATH=$prefix/$libdir/pkgconfig
# shellcheck disable=SC2046
"$cc" -std=c99 -Wall -Wextra -pedantic -Werror $(pkg-config --cflags gradcomp) \
  "$src/tests/install/consumer.c" -o "$work/consumer_pc" $(pkg-config --libs gradcomp) -pthread
LD_LIBRARY_PATH=$prefix/$libdir "$work/consumer_pc"
