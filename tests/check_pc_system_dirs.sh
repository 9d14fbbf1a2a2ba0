#!/usr/bin/env bash
# gradcomp.pc's Cflags name CUDA's and NCCL's include directories as system
# headers (-isystem), but never a compiler's own directory: with NCCL's headers
# in /usr/include (NCCL's .deb and .rpm packages put nccl.h there),
# `-isystem /usr/include` comes before libstdc++'s directory, whose
# `#include_next <stdlib.h>` then finds nothing, and no C++ program compiles
# with the file's flags. The project is configured (not built) with
# NCCL_INCLUDE_DIR set to the C++ compiler's /usr/include, and the flags of
# the gradcomp.pc it writes must compile <cstdlib> as C++.
#   check_pc_system_dirs.sh SOURCE_DIR C_COMPILER CXX_COMPILER CUDA_COMPILER NCCL_LIBRARY
# Exits 77 (skipped, with the reason) when a tool it needs is missing.
set -euo pipefail
src=$1 cc=$2 cxx=$3 nvcc=$4 nccl_lib=$5
command -v pkg-config > /dev/null || { echo "SKIP: no pkg-config"; exit 77; }
implicit=$("$cxx" -E -x c++ -v - < /dev/null 2>&1 |
           sed -n '/#include <...> search starts here:/,/End of search list./p')
sysdir=/usr/include
grep -qx " $sysdir" <<< "$implicit" || {
  echo "SKIP: $sysdir is not one of $cxx's include directories"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! cmake -S "$src" -B "$work/b" -DNCCL_INCLUDE_DIR="$sysdir" -DNCCL_LIBRARY="$nccl_lib" \
    -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_CUDA_COMPILER="$nvcc" \
    -DGRADCOMP_BUILD_TESTS=OFF -DGRADCOMP_BUILD_BENCH=OFF > "$work/configure.log" 2>&1; then
  cat "$work/configure.log"; echo "SKIP: the project does not configure here"; exit 77
fi
flags=$(PKG_CONFIG_PATH="$work/b" pkg-config --cflags gradcomp)
echo "gradcomp.pc with NCCL in $sysdir: $flags"
# shellcheck disable=SC2086
if ! "$cxx" -std=c++17 $flags -fsyntax-only -x c++ - <<< '#include <cstdlib>' 2>&1; then
  echo "FAIL: a C++ program does not compile with gradcomp.pc's flags"; exit 1
fi
echo "ok: a C++ program compiles with them"
