#!/usr/bin/env bash
# LD_PRELOAD tests without a GPU. Every call a program makes must reach the
# stand-in NCCL with identical arguments and in the expected order (the
# program prints what NCCL must receive; the stand-in records what it got),
# the library must warn once and keep the program running, count what it
# passed through, find NCCL when a framework loaded it privately, and have no
# link-time dependency on libnccl.
# Usage: run_preload_test.sh PRELOAD APP DLOPEN_APP FRAMEWORK FRAMEWORK_ALT NCCL_ALT NOT_NCCL
set -uo pipefail
preload=$1 app=$2 dlopen_app=$3 framework=$4 framework_alt=$5 nccl_alt=$6 not_nccl=$7
# The programs' pointers and streams are made up: hide any GPU so this is the
# no-GPU case on every machine.
export CUDA_VISIBLE_DEVICES=
unset GRADCOMP_DEBUG GRADCOMP_GROUP GRADCOMP_METHOD GRADCOMP_NCCL_LIBRARY NCCL_COMM_BLOCKING \
  GC_TEST_GROUP_CALLS_DEFERRED GC_TEST_UNLOADED
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0
check() { if eval "$2"; then echo "PASS: $1"; else echo "FAIL: $1"; fail=1; fi; }

# run NAME CMD...: runs CMD under the preload with the stand-in's log in
# $work/NAME.log; expected calls in $work/NAME.expected, stderr in $work/NAME.err.
run() {
  local name=$1
  shift
  : > "$work/$name.log"
  if ! env FAKE_NCCL_LOG="$work/$name.log" LD_PRELOAD="$preload" "$@" \
      > "$work/$name.expected" 2> "$work/$name.err"; then
    echo "FAIL: $name: the program failed"
    sed 's/^/  | /' "$work/$name.err"
    fail=1
    return 1
  fi
}
same_calls() {  # same_calls NAME: NCCL received exactly the expected calls, in order
  check "$1: NCCL received exactly the program's calls" \
    "diff -u '$work/$1.expected' '$work/$1.log'"
}
count() { grep -c -- "$1" "$2" || true; }

# 1. No DT_NEEDED on libnccl; exports are the interposed nccl* functions only.
check "no DT_NEEDED on libnccl" "! readelf -d '$preload' | grep -q 'NEEDED.*libnccl'"
exports=$(nm -D --defined-only "$preload" | awk '{print $3}' | sed 's/@.*//' | sort -u)
required="ncclAllReduce ncclReduceScatter ncclCommAbort ncclCommDestroy ncclCommFinalize ncclCommGetAsyncError ncclGroupEnd ncclGroupStart"
optional="ncclCommGrow ncclCommRevoke ncclCommInitRankConfig ncclCommInitRankScalable ncclCommShrink ncclCommSplit ncclGroupSimulateEnd ncclRedOpDestroy ncclGetLastError"
for s in $required; do
  check "exports $s" "grep -qx $s <<< '$exports'"
done
extra=$(echo "$exports" | grep -v -x -F -e "${required// /$'\n'}" -e "${optional// /$'\n'}" | tr '\n' ' ')
check "exports nothing else (extra: '$extra')" "[ -z '$extra' ]"

# 2. Pass-through of every call, identical arguments, in every group mode.
# The eligible calls cannot be compressed without a GPU: one warning, then
# they reach NCCL unchanged (deferred or fused ones right after the group
# they were in; "" is the default, defer). The group holds the
# communicator's first float Sum/Avg calls, which every mode, pass too,
# defers until its ranks agree on their settings after the group's end (that
# agreement fails here, so later groups' calls stay in them in every mode).
for group in "" defer pass fuse; do
  name=basic_${group:-default}
  deferred=1
  run $name env ${group:+GRADCOMP_GROUP=$group} GC_TEST_GROUP_CALLS_DEFERRED=$deferred GRADCOMP_METHOD=qsgd GRADCOMP_DEBUG=INFO "$app" basic || continue
  same_calls $name
  n=$(count "cannot set up compression" "$work/$name.err")
  check "$name: one set-up warning (got $n)" "[ '$n' = 1 ]"
  calls=$(count "^AllReduce\|^ReduceScatter" "$work/$name.expected")
  # Not the call on the null communicator, which has no entry.
  rs=$(($(count "^ReduceScatter" "$work/$name.expected") - 1))
  calls=$((calls - 1))
  check "$name: INFO summary counts all $calls calls as passed through" \
    "grep -q 'summary comm 0x1000 rank 0/4 method qsgd: 0 calls compressed, $calls passed through' '$work/$name.err'"
  check "$name: INFO summary counts the $rs reduce-scatter calls" \
    "grep -q 'summary comm 0x1000 .*reduce-scatter: 0 compressed, $rs passed through' '$work/$name.err'"
  # Every variable that is set is logged at INFO (docs/env.md), the
  # interposer's own knobs too.
  for v in GRADCOMP_DEBUG=INFO GRADCOMP_METHOD=qsgd ${group:+GRADCOMP_GROUP=$group}; do
    n=$(count "INFO ${v%%=*} set by environment to ${v#*=}\$" "$work/$name.err")
    check "$name: INFO logs $v once (got $n)" "[ '$n' = 1 ]"
  done
done

# 2b. A call not compressed, made in a group after an eligible call of its
# communicator was deferred, reaches NCCL after it, in program order; another
# communicator's stays in the group. (Deferred under pass too: the group holds
# the communicators' first float Sum/Avg calls, see 2.)
for group in defer fuse pass; do
  deferred=1
  run group_order_$group env GRADCOMP_GROUP=$group GC_TEST_GROUP_CALLS_DEFERRED=$deferred \
    GRADCOMP_METHOD=qsgd "$app" group_order && same_calls group_order_$group
done

# 2d. Datatypes and ops gradcomp does not compress reach NCCL unchanged:
# ones C++'s enums cannot hold (-1, 99, INT_MIN as the datatype; -1, INT_MIN
# as the op), read as ints and passed on at once, in a group too; an op NCCL
# made (ncclRedOpCreatePreMulSum's handles), int8, uint64, fp8 and a newer
# NCCL's datatype, in program order behind a deferred call. An
# ncclRedOpDestroy of an op of -1 or INT_MIN reaches NCCL at once, in a group
# too, as the int it is.
for group in defer fuse pass; do
  run bad_enums_$group env GRADCOMP_GROUP=$group GC_TEST_GROUP_CALLS_DEFERRED=1 \
    GRADCOMP_METHOD=qsgd "$app" bad_enums && same_calls bad_enums_$group
done

# 2f. Pre-multiplied sums (ncclRedOpCreatePreMulSum, host and device
# scalars) reach NCCL unchanged, alone and in a group behind the
# communicator's deferred float Sum, each with its own op: destroyed in the
# group right after its call (as NCCL allows, and PyTorch does), the op lives
# until the deferred call has reached NCCL. (Until 2026-12-07 the destroy ran
# at once: NCCL refused the deferred calls for a dead op, or gave them the
# scalar of the op it made next in its place.) Only such an op's destroy
# waits: a builtin op's reaches NCCL at once, which refuses it, and the group
# still ends with ncclSuccess; an op destroyed twice in the group is refused
# at the second destroy (ncclInvalidArgument, ncclGetLastError saying why)
# and reaches NCCL once. (Until 2026-12-07 every destroy of an op a deferred
# call used waited, builtins and doubles included: ncclSuccess at once, and
# the end failed after the group's calls ran.) (NCCL 2.11 and 2.13.)
for mode in premulsum redop_destroys; do
  "$app" $mode > /dev/null 2>&1 < /dev/null || [ $? != 2 ] || continue
  for group in defer fuse pass; do
    run ${mode}_$group env GRADCOMP_GROUP=$group GC_TEST_GROUP_CALLS_DEFERRED=1 \
      GRADCOMP_METHOD=qsgd "$app" $mode && same_calls ${mode}_$group
  done
done

# 2e. Calls NCCL refuses for such a datatype or op, on a communicator no
# other call named: NCCL's answer comes back, and the communicator gets no
# entry (until 2026-12-07 each one refused made one, summarized at exit).
run refused_unknown env FAKE_NCCL_CHECK_ARGS=1 GRADCOMP_METHOD=qsgd GRADCOMP_DEBUG=INFO \
  "$app" refused_unknown && {
  same_calls refused_unknown
  check "refused_unknown: no entry for a communicator only refused calls named" \
    "! grep -q 'summary comm 0x3000' '$work/refused_unknown.err'"
}

# 2c. Ranks whose settings that decide eligibility differ (GRADCOMP_METHOD,
# GRADCOMP_MIN_ELEMENTS, GRADCOMP_GROUP) make the same NCCL calls in the same
# order, and start their set-up at the same call: the first float Sum/Avg call
# of each communicator, whatever each rank's own settings, where on a GPU
# their agreement finds the difference and every rank passes through. Two
# runs stand for two ranks; the stand-in records the set-up's queries of
# NCCL's device too (size queries are left out: a rank asks the size of a
# reduce-scatter below its own minimum, a query of its own). (Until 2026-12-06 the rank that found the call
# ineligible handed it to NCCL, or left it in its group, while the other
# entered the set-up: on a GPU, a hang.)
for pair in "GRADCOMP_METHOD=qsgd GRADCOMP_METHOD=none" \
    "GRADCOMP_MIN_ELEMENTS=16384 GRADCOMP_MIN_ELEMENTS=100000000" \
    "GRADCOMP_MIN_ELEMENTS=16384 GRADCOMP_MIN_ELEMENTS=0" \
    "GRADCOMP_GROUP=defer GRADCOMP_GROUP=pass" "GRADCOMP_GROUP=fuse GRADCOMP_GROUP=pass"; do
  for mode in basic group_order small_rs; do
    set -- $pair
    var=${1%%=*}
    name=ranks_${var#GRADCOMP_}_${1#*=}_${2#*=}_$mode
    run ${name}_r0 env FAKE_NCCL_LOG_QUERIES=1 GC_TEST_GROUP_CALLS_DEFERRED=1 "$1" \
      "$app" $mode || continue
    run ${name}_r1 env FAKE_NCCL_LOG_QUERIES=1 GC_TEST_GROUP_CALLS_DEFERRED=1 "$2" \
      "$app" $mode || continue
    check "$name: $1 and $2 make the same NCCL calls and set-up queries" \
      "diff -u <(grep -v '^CommCount' '$work/${name}_r0.log') <(grep -v '^CommCount' '$work/${name}_r1.log')"
  done
done

# 2a. Reduce-scatters too small to compress never set the communicator up
# (the first one runs the ranks' comparison of their settings, which asks NCCL
# the size and keeps it for the later calls' eligibility): the preload asks
# NCCL its size once (the stand-in records each query), not at every call, as
# each query runs NCCL's readiness check on the program's communicator, which
# a watchdog thread may be polling.
run small_rs env FAKE_NCCL_LOG_QUERIES=1 GRADCOMP_METHOD=qsgd "$app" small_rs && {
  check "small_rs: NCCL received exactly the program's calls" \
    "diff -u '$work/small_rs.expected' <(grep -v '^CommCount\|^CommCuDevice' '$work/small_rs.log')"
  n=$(count "^CommCount comm=0x1000" "$work/small_rs.log")
  check "small_rs: one size query for five calls (got $n)" "[ '$n' = 1 ]"
}

# 2b. DGC whose set-up fails: the calls pass through, and the warning says that
# gradcomp's momentum correction does not reach them (the optimizer's is 0).
run dgc_momentum env GRADCOMP_METHOD=dgc GC_TEST_GROUP_CALLS_DEFERRED=1 "$app" basic && {
  same_calls dgc_momentum
  n=$(count "momentum correction (GRADCOMP_MOMENTUM=0.9) does not reach them" "$work/dgc_momentum.err")
  check "dgc: one warning that the momentum is lost (got $n)" "[ '$n' = 1 ]"
}
# One rank (a single-GPU run): nothing to compress, but the calls then miss
# gradcomp's momentum too, and that is said (nothing else warns about one rank).
# The first group's eligible calls are deferred until the comm is decided,
# the later ones not (the app prints one order): NCCL gets every call, each once.
run dgc_one_rank env GRADCOMP_METHOD=dgc FAKE_NCCL_NRANKS=1 GC_TEST_GROUP_CALLS_DEFERRED=0 \
  "$app" basic && {
  check "dgc_one_rank: NCCL received every call of the program" \
    "diff <(sort '$work/dgc_one_rank.expected') <(sort '$work/dgc_one_rank.log')"
  n=$(count "uncompressed (one rank), and gradcomp's momentum correction (GRADCOMP_MOMENTUM=0.9) does not reach them" "$work/dgc_one_rank.err")
  check "dgc on one rank: one warning that the momentum is lost (got $n)" "[ '$n' = 1 ]"
}
run dgc_no_correction env GRADCOMP_METHOD=dgc GRADCOMP_MOMENTUM_CORRECTION=0 \
  GC_TEST_GROUP_CALLS_DEFERRED=1 "$app" basic && {
  n=$(count "does not reach them" "$work/dgc_no_correction.err")
  check "dgc without momentum correction: no momentum warning (got $n)" "[ '$n' = 0 ]"
}

# 3. A bad configuration warns once, naming the variable, and passes all
# through. Its eligible group calls are deferred as a valid configuration's
# are, so that the rank makes the same NCCL calls in the same order as its
# peers and joins their agreement (voting pass-through).
run bad_config env GRADCOMP_BITS=9 GC_TEST_GROUP_CALLS_DEFERRED=1 "$app" basic && {
  same_calls bad_config
  check "bad GRADCOMP_BITS: the warning names the variable and range" \
    "grep -q 'GRADCOMP_BITS=9 is not an integer in 2..8' '$work/bad_config.err'"
}

# 3a. A bad value is said once per process, whatever GRADCOMP_DEBUG says (the
# library's own WARN lines and the set-up's warning named it again, once per
# communicator); the INFO summary still gives it as the reason.
for level in "" WARN INFO; do
  name=bad_config_once_${level:-default}
  run $name env ${level:+GRADCOMP_DEBUG=$level} GRADCOMP_BITS=9 GC_TEST_GROUP_CALLS_DEFERRED=1 \
    "$app" simulate || continue
  n=$(grep -v ' INFO ' "$work/$name.err" | grep -c 'GRADCOMP_BITS=9 is not an integer in 2..8')
  check "$name: the bad value is said once for 4 communicators (got $n)" "[ '$n' = 1 ]"
done
n=$(count "summary comm .*compression off: set-up failed: invalid argument: GRADCOMP_BITS=9 is not an integer in 2..8" \
  "$work/bad_config_once_INFO.err")
check "bad_config_once_INFO: each summary gives the bad value as the reason (got $n)" "[ '$n' = 4 ]"

# 3b. Set-ups that fail for different reasons warn once per reason: 0x1000 and
# 0x1200 for the same one, 0x1100 (NCCL cannot tell its size) for its own.
run setup_reasons env FAKE_NCCL_COUNT_FAIL=0x1100 GRADCOMP_METHOD=qsgd "$app" setup_reasons && {
  same_calls setup_reasons
  n=$(count "cannot set up compression" "$work/setup_reasons.err")
  check "setup_reasons: one warning per reason (got $n)" "[ '$n' = 2 ]"
  check "setup_reasons: 0x1100's warning names its own reason" \
    "grep -q \"cannot set up compression for NCCL comm 0x1100 (NCCL cannot tell the communicator's rank, size or device: fake nccl error)\" '$work/setup_reasons.err'"
}

# 3c. DGC's warning that the momentum is lost names why the communicators pass
# through: said once per reason too, 0x1100's own reason as well as the one
# 0x1000 and 0x1200 share (a second reason was silenced).
run setup_reasons_dgc env FAKE_NCCL_COUNT_FAIL=0x1100 GRADCOMP_METHOD=dgc "$app" setup_reasons && {
  same_calls setup_reasons_dgc
  n=$(count "does not reach them" "$work/setup_reasons_dgc.err")
  check "setup_reasons_dgc: one momentum warning per reason (got $n)" "[ '$n' = 2 ]"
  check "setup_reasons_dgc: a momentum warning names 0x1100's reason" \
    "grep -q \"uncompressed (set-up failed: NCCL cannot tell the communicator's rank, size or device: fake nccl error), and gradcomp's momentum correction\" '$work/setup_reasons_dgc.err'"
}

# 4. Non-blocking communicators (config, inherited by a split or a grow, or
# NCCL_COMM_BLOCKING=0) are recognized and set up as blocking ones are (and
# fail without a GPU): gradcomp waits for their enqueues. The stand-in
# answers their calls ncclInProgress and refuses a call made before the
# previous one's state was polled to an end, which would show in its log.
if "$app" nonblocking > /dev/null 2>&1 < /dev/null || [ $? != 2 ]; then
  run nonblocking env GRADCOMP_DEBUG=INFO GC_TEST_GROUP_CALLS_DEFERRED=1 "$app" nonblocking && {
    same_calls nonblocking
    n=$(count "is non-blocking" "$work/nonblocking.err")
    check "nonblocking: parent, split child and grown comm recognized (got $n)" "[ '$n' = 3 ]"
    n=$(count "compression off: set-up failed" "$work/nonblocking.err")
    check "nonblocking: every comm, non-blocking ones too, tried to set up (got $n)" "[ '$n' = 4 ]"
    n=$(count "compression off: non-blocking communicator" "$work/nonblocking.err")
    check "nonblocking: none passes through for being non-blocking (got $n)" "[ '$n' = 0 ]"
  }
  run nonblocking_env env NCCL_COMM_BLOCKING=0 GRADCOMP_DEBUG=INFO GC_TEST_GROUP_CALLS_DEFERRED=1 \
      "$app" nonblocking && {
    same_calls nonblocking_env
    n=$(count "compression off: set-up failed" "$work/nonblocking_env.err")
    check "NCCL_COMM_BLOCKING=0: every comm tried to set up (got $n)" "[ '$n' = 4 ]"
  }
  # NCCL reads the variable with strtoll in base 0 (ncclLoadParam): 00, 0x0
  # and a word without digits are 0 too, and make every communicator
  # non-blocking, the one made with blocking = 1 as well. Only the string 0
  # was taken for it, so those were set up as blocking ones.
  for v in 00 0x0 false; do
    run nonblocking_env_$v env NCCL_COMM_BLOCKING=$v GRADCOMP_DEBUG=INFO \
        GC_TEST_GROUP_CALLS_DEFERRED=1 "$app" nonblocking && {
      same_calls nonblocking_env_$v
      n=$(count "is non-blocking" "$work/nonblocking_env_$v.err")
      check "NCCL_COMM_BLOCKING=$v: every comm recognized as non-blocking, as NCCL makes it (got $n)" \
        "[ '$n' = 4 ]"
    }
  done
fi

# 4b. NCCL reads NCCL_COMM_BLOCKING at its first communicator and keeps that
# value for the process (its parameter cache), unless NCCL_NO_CACHE names it
# (NCCL 2.29.7 and later): the program below changes it between two
# communicators made with blocking = 1, from 0 to unset or from unset to 0,
# and the preload must take both for what NCCL made them (the stand-in caches
# as NCCL does). Read at each communicator, the second was taken for the
# other kind.
if "$app" env_changed > /dev/null 2>&1 < /dev/null || [ $? != 2 ]; then
  for c in from0:2 unset:0 nocache:1; do
    name=env_changed_${c%%:*}
    case ${c%%:*} in
      from0) vars="NCCL_COMM_BLOCKING=0" ;;
      unset) vars="" ;;
      nocache) vars="NCCL_COMM_BLOCKING=0 NCCL_NO_CACHE=NCCL_COMM_BLOCKING" ;;
    esac
    run $name env $vars GRADCOMP_DEBUG=INFO "$app" env_changed && {
      same_calls $name
      n=$(count "is non-blocking" "$work/$name.err")
      check "$name: the communicators NCCL made non-blocking, and no other, recognized (got $n, want ${c##*:})" \
        "[ '$n' = ${c##*:} ]"
    }
  done
fi

# 4c. A non-blocking communicator split with NCCL_SPLIT_NOCOLOR makes no
# child: NCCL writes only NULL to the slot (at the call and at the split's
# end), and the program reuses it once the split is done. The
# preload must not keep reading it (a blocking communicator held there later
# was taken for a non-blocking one; freed, it was read after the free).
if "$app" nocolor > /dev/null 2>&1 < /dev/null || [ $? != 2 ]; then
  run nocolor env GRADCOMP_DEBUG=INFO "$app" nocolor && {
    same_calls nocolor
    n=$(count "is non-blocking" "$work/nocolor.err")
    check "nocolor: only the parent is non-blocking, not the comm later in the split's slot (got $n)" \
      "[ '$n' = 1 ]"
  }
fi

# 4c'. A non-blocking split's child whose slot the program lets go once it
# polled the split to its end (a helper's local returned by value, a
# variable reused; here it holds a blocking communicator, 0x3000, next): the
# preload reads the child at that poll (ncclCommGetAsyncError), while the
# slot holds it. (Until 2026-12-07 it read the slot at its next sight of a
# communicator: the child 0x5200 was set up as a blocking one, and 0x3000
# taken for a non-blocking one.)
if "$app" slot_reused > /dev/null 2>&1 < /dev/null || [ $? != 2 ]; then
  run slot_reused env GRADCOMP_DEBUG=INFO "$app" slot_reused && {
    same_calls slot_reused
    n=$(count "comm 0x5200 is non-blocking" "$work/slot_reused.err")
    check "slot_reused: the child recognized as non-blocking (got $n)" "[ '$n' = 1 ]"
    n=$(count "is non-blocking" "$work/slot_reused.err")
    check "slot_reused: the parent and the child, and no other, non-blocking (got $n)" "[ '$n' = 2 ]"
  }
fi

# 4d'. ncclCommDestroy that NCCL refuses (a non-blocking communicator's call
# still in progress; NCCL's ncclCommEnsureReady) leaves the communicator
# alive: the program polls it, calls it again and destroys it. The preload
# keeps its entry until a destroy succeeds: one set-up attempt, one summary
# counting both calls. (Until 2026-12-07 the entry went before NCCL's
# refusal: the next call set up a second gradcomp comm, on this rank alone,
# taken for a blocking one; and a communicator holding an error, which the
# program aborts after the refusal, had its gradcomp comm destroyed, waiting
# for kernels that may be stuck on the dead peer, instead of aborted.)
if "$app" destroy_refused > /dev/null 2>&1 < /dev/null || [ $? != 2 ]; then
  run destroy_refused env GRADCOMP_METHOD=qsgd GRADCOMP_DEBUG=INFO "$app" destroy_refused && {
    same_calls destroy_refused
    n=$(count "compression off: set-up failed" "$work/destroy_refused.err")
    check "destroy_refused: one set-up attempt for the communicator (got $n)" "[ '$n' = 1 ]"
    n=$(count "summary comm .*: 0 calls compressed, 2 passed through" "$work/destroy_refused.err")
    check "destroy_refused: one summary counting both calls (got $n)" "[ '$n' = 1 ]"
  }
fi

# 4e. Calls of no elements go to NCCL as they are, with no set-up, even where
# GRADCOMP_MIN_ELEMENTS=0 makes every other call eligible.
run empty env GRADCOMP_METHOD=qsgd GRADCOMP_MIN_ELEMENTS=0 GRADCOMP_DEBUG=INFO "$app" empty && {
  same_calls empty
  n=$(count "cannot set up compression" "$work/empty.err")
  check "empty: no set-up for calls of no elements (got $n warnings)" "[ '$n' = 0 ]"
  check "empty: the summary counts both calls as passed through" \
    "grep -q 'summary comm 0x1000 .*: 0 calls compressed, 2 passed through' '$work/empty.err'"
}

# 4f. A group whose end NCCL fails discards all its calls: the eligible ones
# gradcomp deferred never reach NCCL afterwards, in any mode that defers, and
# only the call made after the group counts as passed through.
for group in defer fuse; do
  name=group_fails_$group
  run $name env FAKE_NCCL_GROUP_FAIL=1 GRADCOMP_GROUP=$group GRADCOMP_METHOD=qsgd \
    GRADCOMP_DEBUG=INFO "$app" group_fails || continue
  same_calls $name
  check "$name: the summary counts only the call after the group" \
    "grep -q 'summary comm 0x1000 .*: 0 calls compressed, 1 passed through' '$work/$name.err'"
done

# 4d. A communicator aborted after a user group deferred its eligible call:
# the call never reaches NCCL (which frees the communicator) and the group's
# end answers ncclInvalidUsage, and ncclGetLastError says why, as gradcomp's
# (until NCCL fails a call of its own, one it refused before with the same
# sentence too; the app checks both).
for group in defer fuse; do
  run abort_deferred_$group env GRADCOMP_GROUP=$group GRADCOMP_METHOD=qsgd "$app" abort_deferred &&
    same_calls abort_deferred_$group
done
# The same before ncclGroupSimulateEnd (NCCL 2.22): nothing forwarded to simulate.
if "$app" abort_deferred_simulate > /dev/null 2>&1 < /dev/null || [ $? != 2 ]; then
  run abort_deferred_simulate env GRADCOMP_METHOD=qsgd "$app" abort_deferred_simulate &&
    same_calls abort_deferred_simulate
fi

# 4d'. ncclCommFinalize and ncclCommDestroy made in a user group after calls of
# their communicator that the preload deferred to the group's end reach NCCL
# after those calls, in program order, in every group mode (the stand-in
# refuses a call on a finalized communicator). Until 2026-12-07 both were
# passed on at once: the deferred calls then reached a finalized communicator,
# or (a destroy) were refused with ncclInvalidUsage. A deferred call that fails
# (FAKE_NCCL_FAIL=1) leaves its finalize to run after it, and the group's end
# answers the call's error.
if "$app" comm_calls_in_group > /dev/null 2>&1 < /dev/null || [ $? != 2 ]; then
  for group in defer fuse pass; do
    run comm_calls_in_group_$group env GRADCOMP_GROUP=$group GC_TEST_GROUP_CALLS_DEFERRED=1 \
      GRADCOMP_METHOD=qsgd "$app" comm_calls_in_group && same_calls comm_calls_in_group_$group
  done
  run finalize_after_failure env FAKE_NCCL_FAIL=1 GRADCOMP_METHOD=qsgd \
    "$app" finalize_after_failure && same_calls finalize_after_failure
  # In a group the preload leaves to NCCL (one thread, two devices), the
  # finalize and destroy reach NCCL after its end, not inside it, where NCCL
  # would run them before the calls.
  run multidevice_comm_calls env FAKE_NCCL_DEVICES=2 GRADCOMP_GROUP=defer \
    GC_TEST_GROUP_CALLS_DEFERRED=1 GRADCOMP_METHOD=qsgd "$app" multidevice_comm_calls &&
    same_calls multidevice_comm_calls
  # A destroy held back so in a group whose end NCCL fails is dropped with the
  # group, and warned: the preload cannot tell whether NCCL alone had run it (a
  # refused call, of any kind, fails the end before its jobs; a launch failure
  # comes after them), and run there, the program's own destroy or abort after
  # a refused group would reach NCCL twice. The entry stays until the
  # program's destroy after the group, which reaches NCCL once.
  run destroy_after_failed_group env FAKE_NCCL_GROUP_FAIL=1 FAKE_NCCL_CHECK_ARGS=1 \
    GRADCOMP_METHOD=qsgd GRADCOMP_DEBUG=INFO "$app" destroy_after_failed_group && {
    same_calls destroy_after_failed_group
    err=$work/destroy_after_failed_group.err
    n=$(count "summary comm 0x1000 " "$err")
    check "destroy_after_failed_group: one summary of the communicator (got $n)" "[ '$n' = 1 ]"
    check "destroy_after_failed_group: its entry kept past the failed group, the drop warned" \
      "sed '/the failed group ended/q' '$err' | grep -q 'was dropped with the group, whose end failed' &&
       ! sed '/the failed group ended/q' '$err' | grep -q 'summary comm 0x1000 '"
  }
  # A second finalize in the group holding the first is refused at the call
  # (ncclInvalidArgument, ncclGetLastError saying why; the app checks both)
  # and fails the group's end, as under NCCL. Until 2026-12-07 it was held
  # back too and refused only after the group's calls ran.
  for group in defer fuse pass; do
    run finalize_twice_in_group_$group env GRADCOMP_GROUP=$group GRADCOMP_METHOD=qsgd \
      "$app" finalize_twice_in_group && same_calls finalize_twice_in_group_$group
  done
  # A finalize held back so in a group whose end NCCL fails is dropped with the
  # group, and warned; NCCL alone counts a finalize at its call, failed group
  # or not (init.cc: finalizeCalled), so a later finalize, or a revoke, is
  # refused (ncclInvalidArgument; the app checks it and ncclGetLastError), and
  # NCCL gets neither. Until 2026-12-07 the later finalize reached NCCL, which
  # took it.
  run finalize_after_failed_group env FAKE_NCCL_GROUP_FAIL=1 GRADCOMP_METHOD=qsgd \
    "$app" finalize_after_failed_group && {
    same_calls finalize_after_failed_group
    check "finalize_after_failed_group: the finalize's drop warned" \
      "sed '/the failed group ended/q' '$work/finalize_after_failed_group.err' |
       grep -q 'ncclCommFinalize of NCCL comm 0x1000, .*was dropped with the group, whose end failed'"
  }
  # Such a finalize made in a later group is refused there as NCCL refuses it,
  # as the group's error: the group's end fails (ncclInvalidArgument) and runs
  # nothing of the group, another communicator's deferred call included; a
  # revoke refused so in a group leaves the group's end to run its calls (the
  # app checks the answers and ncclGetLastError). Until 2026-12-07 the end of
  # the group with the refused finalize succeeded and ran that call.
  # The refusal is warned about, saying that NCCL's warning of a call with no
  # communicator (NCCL_DEBUG=WARN) is the preload's doing.
  run finalize_refused_in_group env FAKE_NCCL_CHECK_ARGS=1 GRADCOMP_METHOD=qsgd \
    GC_TEST_GROUP_CALLS_DEFERRED=1 "$app" finalize_refused_in_group && {
    same_calls finalize_refused_in_group
    check "finalize_refused_in_group: the refusal warned, naming the call of no communicator" \
      "grep -q 'already finalized .*the preload fails the group by handing NCCL a data call of no communicator' '$work/finalize_refused_in_group.err'"
  }
  # The same group ended by ncclGroupSimulateEnd, which NCCL fails as a plain end.
  run finalize_refused_in_simulated_group env FAKE_NCCL_CHECK_ARGS=1 GRADCOMP_METHOD=qsgd \
    GC_TEST_GROUP_CALLS_DEFERRED=1 "$app" finalize_refused_in_simulated_group &&
    same_calls finalize_refused_in_simulated_group
  # That is NCCL 2.22 and later. Before 2.22 NCCL counts a finalize as its job
  # ends, so the dropped one never counted and NCCL alone takes a later one:
  # with the stand-in for an older NCCL (its ncclGetVersion says 2.21.5) the
  # later finalize reaches NCCL and is taken, and the warning says so.
  run finalize_after_failed_group_old env GRADCOMP_NCCL_LIBRARY="$nccl_alt" FAKE_NCCL_GROUP_FAIL=1 \
    GRADCOMP_METHOD=qsgd "$dlopen_app" "$framework_alt" finalize_after_failed_group && {
    same_calls finalize_after_failed_group_old
    check "finalize_after_failed_group_old: the finalize's drop warned, a later one taken" \
      "sed '/the failed group ended/q' '$work/finalize_after_failed_group_old.err' |
       grep -q 'ncclCommFinalize of NCCL comm 0x1000, .*was dropped with the group, whose end failed: the communicator is not finalized; finalize it again'"
  }
fi
# A split (and shrink) in a group after a deferred call of its parent stays
# in NCCL's group, which makes the child before the group's calls run: the
# deferred call reaches NCCL after the group's end, the child made by then.
if "$app" child_in_group > /dev/null 2>&1 < /dev/null || [ $? != 2 ]; then
  run child_in_group env GRADCOMP_METHOD=qsgd "$app" child_in_group && same_calls child_in_group
fi
# The same after a simulated group's end (NCCL >= 2.22).
if "$app" simulate_comm_calls > /dev/null 2>&1 < /dev/null || [ $? != 2 ]; then
  run simulate_comm_calls env GRADCOMP_GROUP=defer GC_TEST_GROUP_CALLS_DEFERRED=1 \
    GRADCOMP_METHOD=qsgd "$app" simulate_comm_calls && same_calls simulate_comm_calls
  # A simulated group whose end NCCL fails drops the finalize and destroy held
  # back behind its calls, each drop warned (as at a failed ncclGroupEnd).
  run simulate_fails env GRADCOMP_METHOD=qsgd "$app" simulate_fails && {
    same_calls simulate_fails
    for what in "ncclCommFinalize of NCCL comm 0x1000" "ncclCommDestroy of NCCL comm 0x1100"; do
      check "simulate_fails: the drop of the $what warned" \
        "sed '/the failed group ended/q' '$work/simulate_fails.err' |
         grep -q '$what, .*was dropped with the group, whose end failed'"
    done
  }
fi

# 4d''. After the preload's own error, a non-blocking communicator's call that
# answered ncclInProgress and ended in NCCL's error, read by the program's
# poll or by the preload's wait for a deferred call: ncclGetLastError answers
# NCCL's error, not the preload's older sentence (until 2026-12-07 it kept
# that sentence; the app checks both).
if "$app" last_error_async > /dev/null 2>&1 < /dev/null || [ $? != 2 ]; then
  run last_error_async env GRADCOMP_METHOD=qsgd "$app" last_error_async &&
    same_calls last_error_async
fi

# 4b. A revoked communicator (ncclCommRevoke, NCCL 2.28) is never set up
# again; one shrunk from it is set up as usual, a non-blocking one's too.
if "$app" revoked > /dev/null 2>&1 < /dev/null || [ $? != 2 ]; then
  run revoked env GRADCOMP_DEBUG=INFO "$app" revoked && {
    same_calls revoked
    n=$(count "compression off: revoked communicator" "$work/revoked.err")
    check "revoked: its later call passed through without a set-up attempt (got $n)" "[ '$n' = 1 ]"
    n=$(count "compression off: set-up failed" "$work/revoked.err")
    check "revoked: both shrunk comms tried to set up (got $n)" "[ '$n' = 2 ]"
  }
fi
# 4b'. After a revoke, NCCL (2.28.7 and later) refuses a collective (ncclInvalidUsage,
# "communicator was revoked"; the preload hands it to NCCL, never to a
# gradcomp comm), a finalize and a second revoke (ncclInvalidArgument: the
# revoke counts as the finalize), and takes the destroy; a revoke after a
# finalize held back in a group is refused as NCCL refuses one after a
# finalize (until 2026-12-07 it reached NCCL, which took it, and the group's
# deferred call and finalize were refused at its end).
if "$app" revoke_answers > /dev/null 2>&1 < /dev/null || [ $? != 2 ]; then
  run revoke_answers env GRADCOMP_METHOD=qsgd GRADCOMP_DEBUG=INFO "$app" revoke_answers && {
    same_calls revoke_answers
    check "revoke_answers: no set-up of the revoked communicator" \
      "grep -q 'summary comm 0x1000 .*compression off: revoked communicator' '$work/revoke_answers.err'"
  }
fi

# A revoke in the instant between the preload's release of a communicator
# whose destroy it held behind a group's deferred call and NCCL's destroy of
# it (the stand-in's hook makes it then) is refused, as NCCL refuses a revoke
# after the destroy's call (the app checks the answer); NCCL never gets it.
# Until 2026-12-07 NCCL got it and took it.
if "$app" revoke_in_held_destroy > /dev/null 2>&1 < /dev/null || [ $? != 2 ]; then
  run revoke_in_held_destroy env GRADCOMP_METHOD=qsgd GC_TEST_GROUP_CALLS_DEFERRED=1 \
    "$app" revoke_in_held_destroy && same_calls revoke_in_held_destroy
fi

# 4c. A shrink with NCCL_SHRINK_ABORT (NCCL 2.27) ends the parent's work in
# flight, gradcomp's too, as a revoke: the parent is never set up again (its
# later call reaches NCCL unchanged, without a set-up attempt), the child is.
if "$app" shrink_abort > /dev/null 2>&1 < /dev/null || [ $? != 2 ]; then
  run shrink_abort env GRADCOMP_DEBUG=INFO "$app" shrink_abort && {
    same_calls shrink_abort
    n=$(count "compression off: shrunk with NCCL_SHRINK_ABORT" "$work/shrink_abort.err")
    check "shrink_abort: the parent's later call passed through without a set-up attempt (got $n)" \
      "[ '$n' = 1 ]"
    n=$(count "compression off: set-up failed" "$work/shrink_abort.err")
    check "shrink_abort: only the shrunk comm tried to set up (got $n)" "[ '$n' = 1 ]"
  }
fi

# 4a. One thread driving two devices (FAKE_NCCL_DEVICES=2): a group with
# eligible calls of communicators on both keeps them in it, uncompressed
# (taken out, one comm would set up alone and wait for a rank the same thread
# drives); those comms pass through from then on, without a set-up, and say
# why in their summary; another comm's one-device group is deferred and set
# up as usual. (GRADCOMP_GROUP=pass leaves every group call in its group.)
for group in defer fuse; do
  name=multidevice_$group
  run $name env FAKE_NCCL_DEVICES=2 GRADCOMP_GROUP=$group GC_TEST_GROUP_CALLS_DEFERRED=1 \
    GRADCOMP_METHOD=qsgd GRADCOMP_DEBUG=INFO "$app" multidevice || continue
  same_calls $name
  n=$(count "communicators on several devices" "$work/$name.err")
  check "$name: one warning for the multi-device group (got $n)" "[ '$n' = 1 ]"
  for c in "0x3000 .* 4 passed through" "0x3100 .* 3 passed through"; do
    check "$name: summary comm ${c%% *} counts its calls and says why it passes" \
      "grep -q 'summary comm $c.*compression off: one thread drives it in a group with other devices' '$work/$name.err'"
  done
  check "$name: summary comm 0x3200 says it tried to set up" \
    "grep -q 'summary comm 0x3200 .* 2 passed through.*compression off: set-up failed' '$work/$name.err'"
done
# The group's device check asks NCCL a communicator's device once: 0x3000 has two calls in the
# first group and never sets up.
run multidevice_queries env FAKE_NCCL_LOG_QUERIES=1 FAKE_NCCL_DEVICES=2 GRADCOMP_GROUP=defer \
  GC_TEST_GROUP_CALLS_DEFERRED=1 GRADCOMP_METHOD=qsgd "$app" multidevice && {
  n=$(count "^CommCuDevice comm=0x3000" "$work/multidevice_queries.log")
  check "multidevice: one device query for 0x3000's two group calls (got $n)" "[ '$n' = 1 ]"
}

# 4b. ncclGroupSimulateEnd (NCCL >= 2.22): NCCL receives a simulated group's
# calls inside it, deferred eligible ones included, and none runs later;
# gradcomp neither sets up nor counts anything for them; the group depth is
# back to 0 after every kind of end (the next eligible call is not deferred).
# The calls that ran, by the rule (a group's calls run unless its outermost
# end simulated it), from what NCCL received:
ran_calls() {  # ran_calls LOG PATTERN
  awk -v pat="$2" '
    /^GroupStart/ { depth++; next }
    /^GroupSimulateEnd simulated/ { depth = 0; pending = 0; next }
    /^GroupEnd|^GroupSimulateEnd/ { if (--depth == 0) { ran += pending; pending = 0 }; next }
    $0 ~ pat { if (depth > 0) pending++; else ran++ }
    END { print ran + 0 }' "$1"
}
if "$app" simulate > /dev/null 2>&1 < /dev/null || [ $? != 2 ]; then
  for group in defer pass fuse; do
    name=simulate_$group
    deferred=1  # each group's calls are its communicator's first (see 2)
    run $name env GRADCOMP_GROUP=$group GC_TEST_GROUP_CALLS_DEFERRED=$deferred GRADCOMP_METHOD=qsgd \
      GRADCOMP_DEBUG=INFO "$app" simulate || continue
    same_calls $name
    n=$(count "GroupSimulateEnd simulated" "$work/$name.log")
    check "$name: NCCL simulated both outer groups (got $n)" "[ '$n' = 2 ]"
    n=$(count "cannot set up compression" "$work/$name.err")
    check "$name: one set-up warning (got $n)" "[ '$n' = 1 ]"
    check "$name: no set-up before the first call outside a group" \
      "awk '/test: first call outside a group/ { m = 1 } /cannot set up compression/ && !m { bad = 1 } END { exit bad }' '$work/$name.err'"
    for c in 0x1000 0x1100 0x1200 0x1300; do
      calls=$(ran_calls "$work/$name.log" "^(AllReduce|ReduceScatter) .*comm=$c ")
      rs=$(ran_calls "$work/$name.log" "^ReduceScatter .*comm=$c ")
      check "$name: comm $c's summary counts the $calls calls that ran, $rs reduce-scatter" \
        "grep -q 'summary comm $c rank 0/4 method qsgd: 0 calls compressed, $calls passed through.*reduce-scatter: 0 compressed, $rs passed through' '$work/$name.err'"
    done
  done
  # An NCCL without ncclGroupSimulateEnd (older than 2.22): an error and a
  # warning, and the group stays open for the ncclGroupEnd that follows;
  # ncclCommRevoke is refused with a warning.
  run simulate_missing env GRADCOMP_NCCL_LIBRARY="$nccl_alt" GC_TEST_GROUP_CALLS_DEFERRED=1 \
    "$dlopen_app" "$framework_alt" simulate_missing && {
    same_calls simulate_missing
    check "simulate_missing: the warning names the missing function" \
      "grep -q 'ncclGroupSimulateEnd is not in the loaded NCCL' '$work/simulate_missing.err'"
    check "simulate_missing: ncclCommRevoke (missing too) refused with a warning" \
      "grep -q 'ncclCommRevoke is not in the loaded NCCL' '$work/simulate_missing.err'"
  }
fi

# 5. NCCL loaded privately (RTLD_LOCAL) by a framework, as PyTorch does:
# found with dlopen(RTLD_NOLOAD), where RTLD_NEXT cannot see it.
run rtld_local env GC_TEST_GROUP_CALLS_DEFERRED=1 "$dlopen_app" "$framework" basic && {
  same_calls rtld_local
  n=$(count "cannot set up compression" "$work/rtld_local.err")
  check "rtld_local: the interposer was in the path (one set-up warning, got $n)" "[ '$n' = 1 ]"
}
# 6. An NCCL under another name, named by GRADCOMP_NCCL_LIBRARY.
run other_name env GRADCOMP_NCCL_LIBRARY="$nccl_alt" GC_TEST_GROUP_CALLS_DEFERRED=1 \
  GRADCOMP_DEBUG=INFO "$dlopen_app" "$framework_alt" basic && {
  same_calls other_name
  n=$(count "cannot set up compression" "$work/other_name.err")
  check "other_name: the interposer was in the path (one set-up warning, got $n)" "[ '$n' = 1 ]"
  n=$(count "INFO GRADCOMP_NCCL_LIBRARY set by environment to $nccl_alt\$" "$work/other_name.err")
  check "other_name: INFO logs GRADCOMP_NCCL_LIBRARY once (got $n)" "[ '$n' = 1 ]"
}

# 6b. GRADCOMP_NCCL_LIBRARY naming the interposer itself: its own ncclX are
# never bound (each call would call itself until the stack ran out); it says
# so and binds the pnccl* of the NCCL in the process.
run self_named env GRADCOMP_NCCL_LIBRARY="$preload" GC_TEST_GROUP_CALLS_DEFERRED=1 \
  "$app" basic && {
  same_calls self_named
  check "self_named: the warning says the library is the interposer" \
    "grep -q \"GRADCOMP_NCCL_LIBRARY=$preload is gradcomp's interposer, not NCCL\" '$work/self_named.err'"
}

# 6d. GRADCOMP_NCCL_LIBRARY naming a library that is not NCCL (one every
# process has loaded): said, naming the path and what it lacks; the calls
# still reach the NCCL in the process.
run not_nccl env GRADCOMP_NCCL_LIBRARY=libc.so.6 GC_TEST_GROUP_CALLS_DEFERRED=1 "$app" basic && {
  same_calls not_nccl
  check "not_nccl: the warning names the library and what it lacks" \
    "grep -q 'GRADCOMP_NCCL_LIBRARY=libc.so.6 is not NCCL: it has neither pncclAllReduce nor ncclAllReduce' '$work/not_nccl.err'"
}

# 6f. The same with a library the program had not loaded: the interposer
# loaded it to look, and unloads it again once refused (the program runs
# without it; it stayed loaded, unused, until exit).
run not_nccl_unloaded env GRADCOMP_NCCL_LIBRARY="$not_nccl" GC_TEST_UNLOADED="$not_nccl" \
  GC_TEST_GROUP_CALLS_DEFERRED=1 "$app" basic && {
  same_calls not_nccl_unloaded
  check "not_nccl_unloaded: the warning names the library and what it lacks" \
    "grep -q 'GRADCOMP_NCCL_LIBRARY=$not_nccl is not NCCL: it has neither' '$work/not_nccl_unloaded.err'"
}

# 6e. The NCCL named lacks a function another NCCL in the process has (the
# program links libnccl.so.2, which has ncclGroupSimulateEnd; the one named
# has not): the function is missing, not taken from the other NCCL, which
# would get a group it never opened.
run mixed_nccl env GRADCOMP_NCCL_LIBRARY="$nccl_alt" GC_TEST_GROUP_CALLS_DEFERRED=1 \
  "$app" simulate_missing && {
  same_calls mixed_nccl
  check "mixed_nccl: the warning names the missing function" \
    "grep -q 'ncclGroupSimulateEnd is not in the loaded NCCL' '$work/mixed_nccl.err'"
}

# 6c. Set but empty: the default, with a warning naming the variable.
run empty_knobs env GRADCOMP_GROUP= GRADCOMP_NCCL_LIBRARY= GC_TEST_GROUP_CALLS_DEFERRED=1 \
  "$app" basic && {
  same_calls empty_knobs
  check "empty_knobs: GRADCOMP_GROUP= warns and defers" \
    "grep -q 'GRADCOMP_GROUP is set but empty; using defer' '$work/empty_knobs.err'"
  check "empty_knobs: GRADCOMP_NCCL_LIBRARY= warns and takes libnccl.so.2" \
    "grep -q 'GRADCOMP_NCCL_LIBRARY is set but empty; using libnccl.so.2' '$work/empty_knobs.err'"
}

# 6i. NCCL calls at exit, from an atexit handler (a framework's teardown in a
# static destructor), after exit() destroyed the thread's thread_local
# objects: a group's eligible call is deferred and reaches NCCL after the
# group as usual, and nothing is written through memory freed by then (the
# app fills the heap blocks handed out at exit with a pattern and fails when
# one changed).
run at_exit env GRADCOMP_METHOD=qsgd "$app" at_exit && same_calls at_exit

# 6j. GRADCOMP_* variables changed by the program after its first allreduce
# (a method for one process group alone): the preload read its settings at
# its first allreduce, once per process, and every communicator keeps them; each
# changed variable is said once, naming both values, at the first
# communicator seen after the change (until 2026-12-07 nothing was said);
# one set again to its value is not.
run settings_changed env GRADCOMP_METHOD=qsgd GRADCOMP_DEBUG=INFO "$app" settings_changed && {
  same_calls settings_changed
  n=$(count "WARN GRADCOMP_METHOD is none now but was qsgd when the preload read its settings, at the process's first allreduce or reduce-scatter: they are read once per process, so NCCL comm 0x1100 uses the earlier value" "$work/settings_changed.err")
  check "settings_changed: GRADCOMP_METHOD's change named at the next communicator (got $n)" "[ '$n' = 1 ]"
  n=$(count "WARN GRADCOMP_METHOD is .* now but was" "$work/settings_changed.err")
  check "settings_changed: GRADCOMP_METHOD said once for two changes (got $n)" "[ '$n' = 1 ]"
  n=$(count "WARN GRADCOMP_BITS is 8 now but was unset when" "$work/settings_changed.err")
  check "settings_changed: GRADCOMP_BITS, unset before, said (got $n)" "[ '$n' = 1 ]"
  n=$(count "WARN GRADCOMP_DEBUG is" "$work/settings_changed.err")
  check "settings_changed: GRADCOMP_DEBUG, set to the same value, not said (got $n)" "[ '$n' = 0 ]"
}

# 6g. A GRADCOMP_DEBUG that is no level: WARN is used, and said.
run bad_debug env GRADCOMP_DEBUG=bogus GC_TEST_GROUP_CALLS_DEFERRED=1 "$app" basic && {
  same_calls bad_debug
  check "bad_debug: the warning names the value and the levels" \
    "grep -q 'WARN GRADCOMP_DEBUG=bogus is not one of NONE|OFF|WARN|INFO|TRACE; using WARN' '$work/bad_debug.err'"
}
# 6g'. Values with a trailing blank or a CR (a CRLF environment file): each
# warning shows the value in quotes, the blank and the CR written out, so that
# "4 " is not read as a refused 4 and the CR does not send the cursor back
# over the variable's name.
cr=$(printf '\r')
run blank_values env "GRADCOMP_DEBUG=INFO " "GRADCOMP_GROUP=fuse$cr" "GRADCOMP_BITS=4 " \
    GC_TEST_GROUP_CALLS_DEFERRED=1 "$app" basic && {
  same_calls blank_values
  check "blank_values: GRADCOMP_DEBUG's warning quotes its value" \
    "grep -qF 'WARN GRADCOMP_DEBUG=\"INFO \" is not one of NONE|OFF|WARN|INFO|TRACE; using WARN' '$work/blank_values.err'"
  check "blank_values: GRADCOMP_GROUP's warning quotes its value, the CR written out" \
    "grep -qF 'WARN GRADCOMP_GROUP=\"fuse\\r\" is not defer, fuse or pass; using defer' '$work/blank_values.err'"
  check "blank_values: the bad configuration's warning quotes GRADCOMP_BITS's value" \
    "grep -qF 'bad configuration (GRADCOMP_BITS=\"4 \" is not an integer in 2..8, in plain decimal digits (no sign, space or leading zero))' '$work/blank_values.err'"
  check "blank_values: no CR reaches stderr" "! grep -q \"\$cr\" '$work/blank_values.err'"
}
# 6h. Under LD_PRELOAD every process the trainer forks has the preload too
# (DataLoader workers, subprocesses): a child forked while another thread was
# inside an interposed call, leaving with exit(), must not wait forever for a
# lock that thread held (the app gives each of 200 children 10 s, and fails
# for one still there), and must not print the parent's communicators'
# summaries as its own: one summary line, the parent's. The calls are not
# logged (the stand-in's log is the parent's and its children's alike).
run fork_exit env -u FAKE_NCCL_LOG GRADCOMP_DEBUG=INFO GRADCOMP_METHOD=qsgd "$app" fork_exit && {
  n=$(count "summary comm 0x1000 " "$work/fork_exit.err")
  check "fork_exit: only the parent prints its communicator's summary (got $n lines)" "[ '$n' = 1 ]"
}

# Every line gradcomp printed, in every run above, names the process as the
# README's "gradcomp PID LEVEL" (ranks' lines are told apart by it).
n=$(cat "$work"/*.err | grep '^gradcomp ' | grep -cv '^gradcomp [0-9][0-9]* \(WARN\|INFO\|TRACE\) ' || true)
check "every gradcomp line reads 'gradcomp PID LEVEL' (got $n others)" "[ '$n' = 0 ]"

# 7. Without LD_PRELOAD the program talks to the stand-in directly (sanity).
: > "$work/direct.log"
FAKE_NCCL_LOG=$work/direct.log "$app" basic > "$work/direct.expected"
check "without LD_PRELOAD the stand-in records the same calls" \
  "diff -u '$work/direct.expected' '$work/direct.log'"

if [ "$fail" = 0 ]; then echo "preload tests: all passed"; else echo "preload tests: FAILED"; fi
exit $fail
