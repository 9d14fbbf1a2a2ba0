#!/usr/bin/env bash
# LD_PRELOAD test without a GPU: every call the program makes must reach the
# stand-in NCCL with identical arguments and in the same order, the library
# must warn once and keep the program running, and it must not depend on
# libnccl at link time.
set -euo pipefail
app=$1 preload=$2
# The program's pointers and streams are made up: hide any GPU so this is the
# no-GPU case on every machine.
export CUDA_VISIBLE_DEVICES=
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0
check() { if eval "$2"; then echo "PASS: $1"; else echo "FAIL: $1"; fail=1; fi; }

# 1. No DT_NEEDED on libnccl; exports are the interposed nccl* functions only.
check "no DT_NEEDED on libnccl" "! readelf -d '$preload' | grep -q 'NEEDED.*libnccl'"
exports=$(nm -D --defined-only "$preload" | awk '{print $3}' | sed 's/@.*//' | sort -u | tr '\n' ' ')
expected="ncclAllReduce ncclCommAbort ncclCommDestroy ncclCommFinalize ncclCommInitRankConfig ncclGroupEnd ncclGroupStart "
check "exports exactly the interposed functions (got: $exports)" "[ \"$exports\" = \"$expected\" ]"

# 2. Pass-through of every call, identical arguments, with and without fuse.
for group in defer pass fuse; do
  : > "$work/log"
  FAKE_NCCL_LOG=$work/log GRADCOMP_GROUP=$group GRADCOMP_METHOD=qsgd LD_PRELOAD=$preload \
    "$app" > "$work/expected" 2> "$work/stderr" || { echo "FAIL: app exited non-zero ($group)"; cat "$work/stderr"; fail=1; continue; }
  check "GRADCOMP_GROUP=$group: NCCL received exactly the program's calls" \
    "diff -u '$work/expected' '$work/log'"
  nwarn=$(grep -c "cannot set up compression" "$work/stderr" || true)
  check "GRADCOMP_GROUP=$group: one setup warning without a GPU (got $nwarn)" "[ '$nwarn' = 1 ]"
done

# 3. A bad configuration warns once and passes everything through.
: > "$work/log"
FAKE_NCCL_LOG=$work/log GRADCOMP_BITS=9 LD_PRELOAD=$preload "$app" > "$work/expected" 2> "$work/stderr"
check "bad GRADCOMP_BITS: calls still reach NCCL unchanged" "diff -u '$work/expected' '$work/log'"
check "bad GRADCOMP_BITS: the warning names the variable and range" \
  "grep -q 'GRADCOMP_BITS=9 is not an integer in 2..8' '$work/stderr'"

# 4. Without the preload the program talks to the stand-in directly (sanity).
: > "$work/log"
FAKE_NCCL_LOG=$work/log "$app" > "$work/expected"
check "without LD_PRELOAD the stand-in records the same calls" "diff -u '$work/expected' '$work/log'"

[ "$fail" = 0 ] && echo "preload tests: all passed" || echo "preload tests: FAILED"
exit $fail
