// gradcompAllReduce: decide compress or pass through, find the buffer's
// state, size the workspace, run the algorithm, count bytes.
#include <stdint.h>

#include "algorithms/algorithms.h"
#include "checks.h"
#include "codecs/bits_policy.h"
#include "codecs/qsgd.h"
#include "collective.h"

namespace gc {
namespace {

// Top-k, DGC (sparse allgather) and rand-k.
gradcompResult_t sparseAllReduce(gradcompComm* c, const void* send, void* recv, size_t count,
                                 DType t, ncclRedOp_t op, bool keyed, uint64_t key) {
  if (count >= (size_t)sparse::kEmptySlot) {
    return refuseCall(
        *c, count, c->transport->currentCall().type, (int)op, kRefusedCount,
        setError(gradcompInvalidArgument,
                 "count=%zu is too large for the u32 indices of the sparse methods (at most %u)",
                 count, sparse::kEmptySlot - 1));
  }
  const bool hier = useHier(*c);
  const Algorithm& algo = hier                                   ? hierAlgorithm()
                          : c->cfg.method == gradcompMethodRandk ? randkAlgorithm()
                                                                 : sparseAllgatherAlgorithm();
  BufferState* state = nullptr;
  GC_CHECK(agreePrepared(*c, [&]() -> gradcompResult_t {
    GC_CHECK(findState(*c, kStateAllReduce, keyed, key, recv, count, t, &state));
    GC_CHECK(checkWarmupCapture(*c, *state));
    GC_CHECK(c->ensureWorkspace(
        hier ? hierWorkspaceBytes(*c, count, 0, state->calls)
             : sparseWorkspaceBytes(*c, count, t, state->residual != nullptr, state->calls)));
    return c->sparse->reserve();
  }()));
  if (c->autoState.reserving) return gradcompSuccess;
  CallArgs args{c, send, recv, count, t, op == ncclAvg, state, 0, c->step};
  GC_TRACE("%s: count=%zu type=%d step=%llu", algo.name, count, (int)t,
           (unsigned long long)c->step);
  GC_CHECK(algo.run(args, c->workspace));
  GC_CHECK(discardStateIfNonFinite(*c, *state, recv, count, t, false));
  return finishCall(*c, *state, algo.id, count * dtypeBytes(t),
                    hier ? hierWireBytes(*c, count, t, 0, state->calls)
                         : sparseWireBytes(*c, count, state->calls),
                    hier ? hierInterNodeBytes(*c, count, 0, state->calls)
                         : sparseInterNodeBytes(*c, count, state->calls));
}

}  // namespace

gradcompResult_t allReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, gradcompComm* c, cudaStream_t stream, bool keyed,
                           uint64_t key) {
  CommCall call(c);  // gradcompCommAbort waits for it
  GC_CHECK(call.check());
  GC_ARG(c != nullptr && c->backend && c->transport, "comm is NULL or destroyed");
  c->backend->setStream(stream);
  c->transport->setStream(stream);
  if (count == 0) return gradcompSuccess;
  GC_CHECK(beginCollective(*c, kCallAllReduce, count, type, op));
  GC_CHECK(agreeBuffersGiven(*c, send, recv, count, "count"));

  if (!compressible(*c, count, type, op)) {
    GC_TRACE("pass through: count=%zu type=%d op=%d ranks=%d", count, (int)type, (int)op,
             c->nranks);
    return passThroughCall(c, kStateAllReduce, keyed, key, false, send, recv, count, type, op);
  }

  DType t;
  GC_CHECK(dtypeFromNccl(type, &t));
  GC_CHECK(refuseCall(*c, count, (int)type, (int)op, kRefusedCount, codecCheckCount(count)));
  GC_CHECK(agreeBuffers(*c, send, count, recv, count, 0, t));
  GC_CHECK(agreeBeforeState(*c));

  bool autoPass = false;
  GC_CHECK(autoShouldPass(c, AutoCall::AllReduce, count, dtypeBytes(t), &autoPass));
  if (autoPass) {
    GC_CHECK(passThroughCall(c, kStateAllReduce, keyed, key, true, send, recv, count, type, op));
    c->stats.callsAutoPassed++;
    return gradcompSuccess;
  }
  const CallEnd end(*c->backend);

  if (c->cfg.method != gradcompMethodQsgd)
    return sparseAllReduce(c, send, recv, count, t, op, keyed, key);

  const Algorithm& algo = c->cfg.elias ? eliasAlgorithm() : pickDenseAlgorithm(*c, count);
  if (c->cfg.elias) {
    GC_CHECK(refuseCall(*c, count, (int)type, (int)op, kRefusedCount, eliasCheckCount(*c, count)));
  }
  if (algo.interNodeBytes == nullptr) {
    return setError(gradcompInternalError, "algorithm %s does not state its inter-node bytes",
                    algo.name);
  }
  BufferState* state = nullptr;
  int bits = 0;
  GC_CHECK(agreePrepared(*c, [&]() -> gradcompResult_t {
    GC_CHECK(findState(*c, kStateAllReduce, keyed, key, recv, count, t, &state));
    GC_CHECK(chooseBits(*c, *state, &bits));
    return c->ensureWorkspace(
        qsgdWorkspaceBytes(*c, bits, [&](int b) { return algo.workspaceBytes(*c, count, b); }));
  }()));
  if (c->autoState.reserving) return gradcompSuccess;

  CallArgs args{c, send, recv, count, t, op == ncclAvg, state, bits, c->step};
  GC_CHECK(outputFlag(*c, *state, algo, &args.outputFlag));
  GC_TRACE("%s: count=%zu type=%d bits=%d step=%llu", algo.name, count, (int)type, bits,
           (unsigned long long)c->step);
  GC_CHECK(algo.run(args, c->workspace));
  GC_CHECK(discardStateIfNonFinite(*c, *state, recv, count, t, false, args.outputFlag != nullptr));
  GC_CHECK(recordReducedStats(*c, *state, recv, count, t));
  recordBits(*c, bits);
  c->stats.piecesLast = algo.pieces != nullptr ? algo.pieces(*c, count, bits) : 1;
  // The hier allgather moves the buffer type: its bytes depend on it.
  const size_t wire = algo.id == gradcompAlgoHier ? hierWireBytes(*c, count, t, bits, state->calls)
                                                  : algo.wireBytes(*c, count, bits);
  return finishCall(*c, *state, algo.id, count * dtypeBytes(t), wire,
                    algo.interNodeBytes(*c, count, bits));
}

}  // namespace gc

extern "C" {

GC_EXPORT gradcompResult_t gradcompAllReduce(const void* sendbuff, void* recvbuff, size_t count,
                                             ncclDataType_t datatype, ncclRedOp_t op,
                                             gradcompComm_t comm, cudaStream_t stream) {
  return gc::collectiveEntry(comm, count, &datatype, &op, stream, [&] {
    return gc::allReduce(sendbuff, recvbuff, count, datatype, op, comm, stream, false, 0);
  });
}

GC_EXPORT gradcompResult_t gradcompAllReduceKeyed(const void* sendbuff, void* recvbuff,
                                                  size_t count, ncclDataType_t datatype,
                                                  ncclRedOp_t op, gradcompComm_t comm,
                                                  cudaStream_t stream, uint64_t key) {
  return gc::collectiveEntry(comm, count, &datatype, &op, stream, [&] {
    return gc::allReduce(sendbuff, recvbuff, count, datatype, op, comm, stream, true, key);
  });
}

}  // extern "C"
