#!/usr/bin/env bash
# Nsight Compute on gradcomp's kernels at n = 2^26 (4-bit, buckets of 512,
# density 0.1%), one gradcomp_kernels_perf --once --only KIND run per kernel
# kind, so that every launch in a CSV belongs to its label; then
# tools/ncu_limits.py names each kernel's limiter (memory, issue, latency)
# into RAW/profile.json. Where ncu is missing or may not read the counters
# (ERR_NVGPUCTRPERM in a container), profile.json says so with ncu's words.
#   tools/ncu_profile.sh RAW_DIR BUILD_DIR
set -uo pipefail
raw=$1
build=$2
cd "$(dirname "$0")/.."
kp=$build/bench/gradcomp_kernels_perf
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /usr/local/cuda/nsight-compute*/ncu \
  /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -z "$ncu" ]; then
  python3 tools/ncu_limits.py --out "$raw/profile.json" \
    --unavailable "ncu not found (PATH, /usr/local/cuda/bin, /usr/local/cuda/nsight-compute*, /opt/nvidia/nsight-compute)"
  exit 0
fi
"$ncu" --version | head -2
common=(--min-log2 26 --max-log2 26 --bits 4 --bucket 512 --densities 0.001 --once 1)
runs=()
# KERNELS: a regex of the kernel names to profile ("" for all): a run that launches another
# of gradcomp's kernels to make its input (the decode's encode) profiles only its own.
profile() {  # LABEL FILE KERNELS gradcomp_kernels_perf-args...
  local label=$1 file=$2 kernels=$3
  shift 3
  local only=()
  [ -n "$kernels" ] && only=(--kernel-name "regex:$kernels")
  echo "=== ncu: $label"
  # --clock-control none: ncu's default locks the GPU's clocks to base while it profiles, a
  # change of the card's settings that the GPU box's rules forbid; the card is measured as found.
  "$ncu" --csv --page details --clock-control none --print-kernel-base function --section SpeedOfLight \
    --section Occupancy --section LaunchStats --section SchedulerStats ${only[@]+"${only[@]}"} \
    "$kp" "${common[@]}" "$@" > "$raw/$file" 2> "$raw/$file.err"
  local rc=$?
  tail -3 "$raw/$file.err"
  # No table is a refusal whatever ncu's exit status (it can run the program unprofiled and
  # exit 0 when it cannot load its library, as on gVisor): the next runs would say the same.
  if ! grep -q '^"ID"' "$raw/$file"; then
    # The first refusal (e.g. ERR_NVGPUCTRPERM) stops the step: the rest would say the same.
    local why
    why=$(grep -h -m1 -E '==ERROR==|ERR_' "$raw/$file" "$raw/$file.err" | head -1)
    python3 tools/ncu_limits.py --out "$raw/profile.json" \
      --unavailable "ncu exit $rc on $label: ${why:-see $file.err}"
    exit 0
  fi
  runs+=("$label=$raw/$file")
}
profile "qsgd_encode_ef float 4" ncu_encode_float.csv "" --only encode --dtypes float
profile "qsgd_encode_ef bfloat16 4" ncu_encode_bf16.csv "" --only encode --dtypes bfloat16
profile "qsgd_encode_ef half 4" ncu_encode_half.csv "" --only encode --dtypes half
# The decode run encodes its input first (gradcompQsgdEncode, no residual): not its label's.
profile "qsgd_decode, then _acc, 4" ncu_decode.csv ".*qsgdDecode.*" --only decode
profile "topk_threshold 0.001" ncu_topk_threshold.csv "" --only topk_threshold
profile "topk_exact 0.001" ncu_topk_exact.csv "" --only topk_exact
# fillKernel writes the benchmark's data; it is not gradcomp's.
python3 tools/ncu_limits.py --out "$raw/profile.json" --skip fillKernel "${runs[@]}"
