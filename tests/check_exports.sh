#!/usr/bin/env bash
# libgradcomp.so must export gradcomp* symbols only (C++ internals, CUDA
# runtime and CUB stay hidden), and must export the documented C API.
set -euo pipefail
lib=$1
syms=$(nm -D --defined-only "$lib" | awk '{print $3}' | sed 's/@.*//' | sort -u)
bad=$(echo "$syms" | grep -v -E '^gradcomp' | grep -v -E '^$' || true)
if [ -n "$bad" ]; then
  echo "FAIL: $lib exports symbols outside gradcomp*:"; echo "$bad" | head -20; exit 1
fi
for s in gradcompGetErrorString gradcompGetLastError gradcompConfigInit gradcompConfigFromEnv \
         gradcompQsgdEncodedBytes gradcompQsgdEncodeHost gradcompQsgdDecodeHost \
         gradcompQsgdEncode gradcompQsgdEncodeEF gradcompQsgdDecode \
         gradcompQsgdEncodeEFRounding gradcompQsgdEncodeEFRoundingHost gradcompCommCreate \
         gradcompCommCreateCpu gradcompCommDestroy gradcompAllReduce gradcompAllReduceKeyed \
         gradcompReduceScatter gradcompReduceScatterKeyed \
         gradcompGetStats gradcompCommSaveState gradcompCommLoadState gradcompCommResetState \
         gradcompEliasMaxEncodedBytes gradcompEliasHeaderBytes gradcompEliasEncodedBytes \
         gradcompEliasEncodeHost gradcompEliasDecodeHost gradcompEliasWorkspaceBytes \
         gradcompEliasEncode gradcompEliasDecode gradcompTopkSlots gradcompTopkSelectHost \
         gradcompTopkWorkspaceBytes gradcompTopkSelect gradcompCommRetune gradcompCommAbort \
         gradcompConfigInitSized gradcompConfigFromEnvSized gradcompGetStatsSized; do
  grep -qx "$s" <<< "$syms" || { echo "FAIL: $lib does not export $s"; exit 1; }
done
echo "PASS: $(echo "$syms" | wc -l) exported symbols, all gradcomp*"
