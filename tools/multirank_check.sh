#!/usr/bin/env bash
# Multi-process NCCL tests of the compressed allreduce on a GPU machine:
# N = 2 and 4 processes. With one GPU, every process uses it with a distinct
# NCCL_HOSTID (NCCL then uses its socket transport: correct results,
# meaningless timings). Writes OUTDIR/multirank.json and OUTDIR/multirank.md.
# Usage: tools/multirank_check.sh OUTDIR [BUILD_DIR]
set -uo pipefail
out=${1:?usage: multirank_check.sh OUTDIR [BUILD_DIR]}
build=${2:-build}
bin=$build/tests/gradcomp_multirank
mkdir -p "$out"
total_pass=0; total_fail=0; lines=""
if [ ! -x "$bin" ]; then
  echo "multirank: $bin not built" >&2
  echo '{"multirank_tests_passed": 0, "multirank_tests_failed": 1, "multirank_error": "not built"}' > "$out/multirank.json"
  echo "- multirank: **not built**" > "$out/multirank.md"
  exit 1
fi
ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
for n in 2 4; do
  idfile=$(mktemp -u /tmp/gc_ncclid.XXXXXX)
  port=$((29500 + RANDOM % 1000))
  pids=()
  for r in $(seq 0 $((n - 1))); do
    env_extra=()
    if [ "$ngpu" -lt "$n" ]; then
      env_extra=(NCCL_HOSTID=host-$r NCCL_NET=Socket NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1
                 NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_NVLS_ENABLE=0)
    fi
    # Each check sets autoTune itself; GRADCOMP_AUTO=0 keeps any config read
    # from the environment compressing.
    env "${env_extra[@]}" GRADCOMP_AUTO=0 GC_RANK=$r GC_NRANKS=$n GC_ID_FILE=$idfile \
      timeout 600 "$bin" > "$out/multirank_n${n}_r${r}.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  rm -f "$idfile"
  for r in $(seq 0 $((n - 1))); do
    log=$out/multirank_n${n}_r${r}.log
    line=$(grep -E "^multirank rank" "$log" | tail -1)
    if [ -n "$line" ]; then
      p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1/')
      f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\2/')
    else
      p=0; f=1; line="rank $r of $n: crashed or timed out ($(tail -2 "$log" | tr '\n' ' '))"
    fi
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
    lines="$lines- N=$n: $line"$'\n'
    grep -E "FAILED" "$log" | head -5 | sed 's/^/    /' >> "$out/multirank_failures.txt" || true
  done
done
cat > "$out/multirank.json" <<J
{"multirank_tests_passed": $total_pass, "multirank_tests_failed": $total_fail}
J
{
  echo "### Multi-process NCCL tests (gradcompAllReduce, CUDA backend)"
  echo
  [ "$ngpu" -lt 4 ] && echo "Ranks share $ngpu GPU(s) with a distinct NCCL_HOSTID each (socket transport)."
  echo
  echo "$lines"
  echo "Total: $total_pass passed, $total_fail failed"
  if [ -s "$out/multirank_failures.txt" ]; then echo; echo '```'; cat "$out/multirank_failures.txt"; echo '```'; fi
} > "$out/multirank.md"
cat "$out/multirank.md"
[ "$total_fail" = 0 ]
