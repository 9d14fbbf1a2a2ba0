#!/usr/bin/env bash
# libgradcomp.so must export gradcomp* symbols only (C++ internals, CUDA
# runtime and CUB stay hidden), must export the documented C API, and must
# reach NCCL through its pnccl* names only.
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
         gradcompQsgdEncodeEFRounding gradcompQsgdEncodeEFRoundingHost gradcompQsgdEncodeEFLevels \
         gradcompQsgdEncodeEFLevelsHost gradcompCommCreate \
         gradcompCommCreateCpu gradcompCommDestroy gradcompAllReduce gradcompAllReduceKeyed \
         gradcompReduceScatter gradcompReduceScatterKeyed \
         gradcompGetStats gradcompCommSaveState gradcompCommLoadState gradcompCommResetState \
         gradcompCommForgetBuffer gradcompCommForgetKey \
         gradcompEliasMaxEncodedBytes gradcompEliasHeaderBytes gradcompEliasEncodedBytes \
         gradcompEliasEncodeHost gradcompEliasDecodeHost gradcompEliasWorkspaceBytes \
         gradcompEliasEncode gradcompEliasDecode gradcompEliasDecodeBounded gradcompTopkSlots \
         gradcompTopkSelectHost \
         gradcompTopkWorkspaceBytes gradcompTopkSelect gradcompCommRetune gradcompCommAbort gradcompCommStop gradcompCommLayout \
         gradcompCommSetGradScale gradcompCommGetGradScale \
         gradcompConfigInitSized gradcompConfigFromEnvSized gradcompGetStatsSized gradcompEnvName; do
  grep -qx "$s" <<< "$syms" || { echo "FAIL: $lib does not export $s"; exit 1; }
done
# NCCL is reached through its pnccl* names only: an interposer of the nccl* names
# (libgradcomp_preload.so in the same process) must not see the library's own calls.
direct=$(nm -D --undefined-only "$lib" | awk '{print $2}' | sed 's/@.*//' | grep -E '^nccl' || true)
if [ -n "$direct" ]; then
  echo "FAIL: $lib calls NCCL by names an LD_PRELOAD interposer replaces:"; echo "$direct"; exit 1
fi
# The library's calls between its own gradcomp* functions bind to itself (-Bsymbolic-functions):
# a relocation against one would bind to another libgradcomp loaded first in the process.
self=$(readelf -rW "$lib" | awk '$5 ~ /^gradcomp/ {print $5}' | sed 's/@.*//' | sort -u || true)
if [ -n "$self" ]; then
  echo "FAIL: $lib calls its own exported functions through relocations another copy would take:"
  echo "$self" | head -20; exit 1
fi
pnccl=$(nm -D --undefined-only "$lib" | awk '{print $2}' | grep -c -E '^pnccl' || true)
[ "$pnccl" -ge 10 ] || { echo "FAIL: $lib references $pnccl pnccl* symbols (expected >= 10)"; exit 1; }
echo "PASS: $(echo "$syms" | wc -l) exported symbols, all gradcomp*; NCCL through $pnccl pnccl* names"
