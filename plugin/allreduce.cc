// gradcompAllReduce: decide compress or pass through, find the buffer's
// state, size the workspace, run the algorithm, count bytes.
#include <stdint.h>

#include "algorithms/algorithms.h"
#include "codecs/bits_policy.h"
#include "checks.h"
#include "codecs/qsgd.h"
#include "backends/cuda/device_ptr.h"

namespace gc {
namespace {

bool compressibleType(ncclDataType_t t) {
  return t == ncclFloat32 || t == ncclFloat16 || t == ncclBfloat16;
}

gradcompResult_t passThrough(gradcompComm* c, const void* send, void* recv, size_t count,
                             ncclDataType_t type, ncclRedOp_t op) {
  c->stats.callsPassedThrough++;
  return c->transport->passThrough(send, recv, count, type, op);
}

// Top-k, DGC (sparse allgather) and rand-k.
gradcompResult_t sparseAllReduce(gradcompComm* c, const void* send, void* recv, size_t count,
                                 DType t, ncclRedOp_t op, bool keyed, uint64_t key) {
  GC_ARG(count < (size_t)sparse::kEmptySlot,
         "count=%zu is too large for the u32 indices of the sparse methods (at most %u)", count,
         sparse::kEmptySlot - 1);
  const uintptr_t r0 = (uintptr_t)recv;
  StateKey skey =
      keyed ? StateKey{1, key, count, (int)t} : StateKey{0, (uint64_t)r0, count, (int)t};
  BufferState* state = nullptr;
  GC_CHECK(c->getState(skey, count, t, &state));
  // Warm-up follows the buffer's host-side call counter, which graph replays
  // do not advance: a captured warm-up call would replay its stage forever.
  if (c->cfg.method == gradcompMethodDgc && c->cfg.warmupSteps > 0 &&
      state->calls < (uint64_t)c->cfg.warmupSteps && c->backend->capturing()) {
    return setError(gradcompInvalidUsage,
                    "DGC warm-up (warmupSteps=%d; this buffer has made %llu calls) changes the "
                    "density and message size by stage; capture a CUDA graph after the warm-up",
                    c->cfg.warmupSteps, (unsigned long long)state->calls);
  }
  const Algorithm& algo =
      c->cfg.method == gradcompMethodRandk ? randkAlgorithm() : sparseAllgatherAlgorithm();
  GC_CHECK(c->ensureWorkspace(
      sparseWorkspaceBytes(*c, count, t, state->residual != nullptr, state->calls)));
  CallArgs args{c, send, recv, count, t, op == ncclAvg, state, 0, c->step};
  GC_TRACE("%s: count=%zu type=%d step=%llu", algo.name, count, (int)t,
           (unsigned long long)c->step);
  GC_CHECK(algo.run(args, c->workspace));
  GC_CHECK(c->backend->advanceStep());
  c->stats.bytesOnWire += sparseWireBytes(*c, count, state->calls);
  c->step++;
  state->calls++;
  c->stats.callsCompressed++;
  c->stats.callsPerAlgo[algo.id]++;
  c->stats.bytesIn += count * dtypeBytes(t);
  return gradcompSuccess;
}

gradcompResult_t allReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, gradcompComm* c, cudaStream_t stream, bool keyed,
                           uint64_t key) {
  GC_ARG(c != nullptr && c->backend && c->transport, "comm is NULL or destroyed");
  GC_ARG(count == 0 || (send != nullptr && recv != nullptr),
         "sendbuff=%p and recvbuff=%p must not be NULL for count=%zu", send, recv, count);
  c->backend->setStream(stream);
  c->transport->setStream(stream);
  if (count == 0) return gradcompSuccess;
  c->transport->beginCall(CallInfo{c->step, count, (int)type, (int)op});
  if (c->verifyNext) {
    if (c->backend->capturing()) {
      return setError(gradcompInvalidUsage,
                      "the first call after a state load or reset checks that all ranks agree "
                      "(a host sync) and cannot be captured into a CUDA graph; make one eager "
                      "call first");
    }
    GC_CHECK(c->transport->verifyCall());
    c->verifyNext = false;
  }

  const bool compress = c->cfg.method != gradcompMethodNone && compressibleType(type) &&
                        (op == ncclSum || op == ncclAvg) && count >= c->cfg.minElements &&
                        c->nranks > 1;
  if (!compress) {
    GC_TRACE("pass through: count=%zu type=%d op=%d ranks=%d", count, (int)type, (int)op,
             c->nranks);
    return passThrough(c, send, recv, count, type, op);
  }

  DType t;
  GC_CHECK(dtypeFromNccl(type, &t));
  GC_CHECK(codecCheckCount(count));
  const size_t esz = dtypeBytes(t);
  const uintptr_t s0 = (uintptr_t)send, r0 = (uintptr_t)recv, bytes = count * esz;
  GC_ARG(s0 % esz == 0 && r0 % esz == 0,
         "sendbuff=%p / recvbuff=%p are not aligned to their element size %zu", send, recv, esz);
  GC_ARG(send == recv || s0 + bytes <= r0 || r0 + bytes <= s0,
         "sendbuff=%p and recvbuff=%p overlap without being the same buffer (count=%zu)", send,
         recv, count);
  if (c->backend->onDevice()) {
    GC_CHECK(checkDevicePointer(send, "sendbuff"));
    GC_CHECK(checkDevicePointer(recv, "recvbuff"));
  }

  if (c->cfg.method != gradcompMethodQsgd)
    return sparseAllReduce(c, send, recv, count, t, op, keyed, key);

  StateKey skey =
      keyed ? StateKey{1, key, count, (int)t} : StateKey{0, (uint64_t)r0, count, (int)t};
  BufferState* state = nullptr;
  GC_CHECK(c->getState(skey, count, t, &state));
  int bits = 0;
  GC_CHECK(chooseBits(*c, *state, &bits));
  const Algorithm& algo = c->cfg.elias ? eliasAlgorithm() : pickDenseAlgorithm(*c, count);
  GC_CHECK(c->ensureWorkspace(algo.workspaceBytes(*c, count, bits)));

  CallArgs args{c, send, recv, count, t, op == ncclAvg, state, bits, c->step};
  GC_TRACE("%s: count=%zu type=%d bits=%d step=%llu", algo.name, count, (int)type, bits,
           (unsigned long long)c->step);
  GC_CHECK(algo.run(args, c->workspace));
  GC_CHECK(recordReducedStats(*c, *state, recv, count, t));
  GC_CHECK(c->backend->advanceStep());

  c->step++;
  state->calls++;
  c->stats.callsCompressed++;
  c->stats.callsPerAlgo[algo.id]++;
  c->stats.bytesIn += bytes;
  c->stats.bytesOnWire += algo.wireBytes(*c, count, bits);
  c->stats.bitsLast = bits;
  return gradcompSuccess;
}

}  // namespace
}  // namespace gc

extern "C" {

GC_EXPORT gradcompResult_t gradcompAllReduce(const void* sendbuff, void* recvbuff, size_t count,
                                             ncclDataType_t datatype, ncclRedOp_t op,
                                             gradcompComm_t comm, cudaStream_t stream) {
  return gc::guarded([&] {
    return gc::allReduce(sendbuff, recvbuff, count, datatype, op, comm, stream, false, 0);
  });
}

GC_EXPORT gradcompResult_t gradcompAllReduceKeyed(const void* sendbuff, void* recvbuff,
                                                  size_t count, ncclDataType_t datatype,
                                                  ncclRedOp_t op, gradcompComm_t comm,
                                                  cudaStream_t stream, uint64_t key) {
  return gc::guarded([&] {
    return gc::allReduce(sendbuff, recvbuff, count, datatype, op, comm, stream, true, key);
  });
}

}  // extern "C"
