#!/bin/bash
# gradcomp_multirank reads GRADCOMP_LOCAL_SIZE and GRADCOMP_PRIVATE_COMM as the
# library does: a value it refuses (atoi took abc, 0 and -1 as a flat world and
# 4x as 4) ends the run at once, exit 2, with the library's sentence naming the
# value and the range; no GPU or NCCL is reached, so this runs anywhere.
# Usage: check_env_refusals.sh PATH_TO_gradcomp_multirank
bin=$1
fail=0
check() {  # VARIABLE VALUE EXPECTED-SENTENCE
  local out rc
  out=$(env "$1=$2" GC_RANK=0 GC_NRANKS=1 "$bin" 2>&1)
  rc=$?
  if [ "$rc" != 2 ] || [[ "$out" != *"$3"* ]]; then
    echo "FAIL: $1='$2': exit $rc (want 2) and no '$3' in: $out"
    fail=1
  fi
}
for v in abc 0 -1 4x " 4" 04; do
  shown=$v
  [[ "$v" == *" "* ]] && shown="\"$v\""
  check GRADCOMP_LOCAL_SIZE "$v" \
    "GRADCOMP_LOCAL_SIZE=$shown is not auto or an integer in 1..65536, in plain decimal digits"
done
check GRADCOMP_PRIVATE_COMM 2 "GRADCOMP_PRIVATE_COMM=2 is not an integer in 0..1"
[ "$fail" = 0 ] && echo "PASS: gradcomp_multirank refuses bad GRADCOMP_LOCAL_SIZE and GRADCOMP_PRIVATE_COMM"
exit "$fail"
