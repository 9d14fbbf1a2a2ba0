#!/usr/bin/env bash
# CTest: gradcomp_kernels_perf's --only and --skip (comma-separated kinds, as
# tools/gpu-check.sh's kernels steps pass them) and --bucket are checked before
# it looks for a GPU, and so is every number flag's value, read whole. A name that is not a
# kind, or a value that is not a number, is refused by name with exit 2; good lists
# get as far as the GPU: without one, exit 2 saying so; with one, a single
# small size runs and its JSON says the run completed.
#   bench/kinds_check.sh GRADCOMP_KERNELS_PERF WORKDIR
set -uo pipefail
bin=$1 work=$2
mkdir -p "$work"
fail=0
out=$("$bin" --only encode,bogus 2>&1); rc=$?
if [ "$rc" != 2 ] || ! grep -q "'bogus' is not a kind; kinds are copy, encode," <<< "$out"; then
  echo "FAIL: --only encode,bogus: exit $rc: $out"; fail=1
fi
out=$("$bin" --skip sparse_checks, 2>&1); rc=$?
if [ "$rc" != 2 ] || ! grep -q "'' is not a kind" <<< "$out"; then
  echo "FAIL: --skip with an empty name: exit $rc: $out"; fail=1
fi
# The bucket is checked as the library checks it, before any row runs.
for b in 100 16 16384; do
  out=$("$bin" --only encode --bucket "$b" 2>&1); rc=$?
  if [ "$rc" != 2 ] || ! grep -q -- "--bucket $b not a multiple of 32 in 32..8192" <<< "$out"; then
    echo "FAIL: --bucket $b: exit $rc: $out"; fail=1
  fi
done
# A number flag's value is read whole: text that is not a number is refused by name (it was
# read as its leading digits or 0: --bits 4x ran 4 bits, --once 2 ran once).
# Past int's range, a value is refused too (not read modulo 2^32: 4294967312 is not 16).
for args in "--min-log2 abc" "--max-log2 26x" "--bucket 512.5" "--bits 4,x" "--lists 8z" \
            "--densities 0.001,1e-3q" "--once yes" "--step-log2 1x" "--min-log2 4294967312" \
            "--bits 4,-4294967292"; do
  read -r flag value <<< "$args"
  out=$("$bin" "$flag" "$value" 2>&1); rc=$?
  if [ "$rc" != 2 ] || ! grep -q -- "$flag '[^']*' is not" <<< "$out"; then
    echo "FAIL: $flag $value: exit $rc: $out"; fail=1
  fi
done
out=$("$bin" --once 2 2>&1); rc=$?
if [ "$rc" != 2 ] || ! grep -q -- "--once 2 is not 0 or 1" <<< "$out"; then
  echo "FAIL: --once 2: exit $rc: $out"; fail=1
fi
rm -f "$work/k.json"
out=$("$bin" --only copy,encode --skip encode --min-log2 16 --max-log2 16 --bits 4 \
  --dtypes float --json "$work/k.json" 2>&1); rc=$?
if grep -q "no GPU visible" <<< "$out"; then
  [ "$rc" = 2 ] || { echo "FAIL: no GPU but exit $rc"; fail=1; }
elif [ "$rc" != 0 ] || ! python3 - "$work/k.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
kinds = sorted({r["kernel"] for r in doc["rows"]})
# --only copy,encode --skip encode: the copy and its fill, no encode row.
sys.exit(0 if doc.get("complete") is True and kinds == ["copy", "fill"] else 1)
PY
then
  echo "FAIL: --only copy,encode --skip encode on a GPU: exit $rc: $out"; fail=1
fi
[ "$fail" = 0 ] && echo "kinds_check: ok"
exit "$fail"
