#!/usr/bin/env bash
# The libgradcomp.so that `cmake --install` puts in a prefix finds libnccl.so.2
# as the build tree's does: through its run path, not only the loader's cache
# (an NCCL from NCCL_ROOT or the nvidia-nccl wheel is in neither the cache nor
# the system directories). Both are loaded with the cache off (ld.so
# --inhibit-cache); skipped (exit 77) where the build tree's library needs the
# cache too (its NCCL then is the system's) or the loader lacks the option.
#   check_install_runpath.sh BUILD_DIR BUILT_LIBRARY [CONFIG]
set -euo pipefail
build=$1 built=$2 config=${3:-}
ldso=$(readelf -l /bin/sh | sed -n 's/.*interpreter: \(.*\)\]/\1/p')
if [ -z "$ldso" ] || ! "$ldso" --help 2>/dev/null | grep -q -- --inhibit-cache; then
  echo "SKIP: no dynamic loader with --inhibit-cache"; exit 77
fi
if ! "$ldso" --inhibit-cache --list "$built" > /dev/null 2>&1; then
  echo "SKIP: the build tree's $built needs the loader's cache as well"; exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! cmake --install "$build" --prefix "$work" ${config:+--config "$config"} \
    > "$work/install.log" 2>&1; then
  cat "$work/install.log"; echo "SKIP: cmake --install failed (build the default targets first)"
  exit 77
fi
lib=$(find "$work" -name libgradcomp.so -print -quit)
if ! out=$("$ldso" --inhibit-cache --list "$lib" 2>&1); then
  echo "FAIL: the installed $lib does not load as the build tree's does:"
  echo "$out"
  readelf -d "$built" "$lib" | grep -E 'File|RUNPATH|RPATH' || true
  exit 1
fi
echo "ok: the installed libgradcomp.so finds $(grep -o 'libnccl[^ ]* => [^ ]*' <<< "$out")"
