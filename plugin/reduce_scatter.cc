// gradcompReduceScatter: ncclReduceScatter's contract. Decide compress or
// pass through (the allreduce's rules on the input count nranks * recvcount,
// GRADCOMP_AUTO from the reduce-scatter's own figures), check the buffers,
// find the buffer's state, run the algorithm, count.
// GRADCOMP_ALGO and GRADCOMP_ELIAS choose among allreduce algorithms only: a
// reduce-scatter always runs the fixed-size exchange of reduce_scatter.cc (or
// its sparse form, or their hierarchical arrangement on comms of >= 2 nodes
// of >= 2 ranks), which keeps it capturable.
#include <stdint.h>

#include "algorithms/algorithms.h"
#include "checks.h"
#include "codecs/bits_policy.h"
#include "codecs/qsgd.h"
#include "codecs/sparse.h"
#include "collective.h"

namespace gc {

gradcompResult_t reduceScatter(const void* send, void* recv, size_t recvCount, ncclDataType_t type,
                               ncclRedOp_t op, gradcompComm* c, cudaStream_t stream, bool keyed,
                               uint64_t key) {
  CommCall call(c);  // gradcompCommAbort waits for it
  GC_CHECK(call.check());
  GC_ARG(c != nullptr && c->backend && c->transport, "comm is NULL or destroyed");
  // The stream first: the refusal below may join its peers' agreement on it.
  c->backend->setStream(stream);
  c->transport->setStream(stream);
  // 8 bytes is the largest NCCL element: the input's byte size must fit too.
  // Refused before the call begins (refuseCall's beforeBegin).
  if (recvCount > SIZE_MAX / 8 / (size_t)c->nranks) {
    return refuseCall(
        *c, recvCount, (int)type, (int)op, kRefusedRecvCount,
        setError(gradcompInvalidArgument,
                 "recvcount=%zu times nranks=%d overflows the input size (at most %zu per rank)",
                 recvCount, c->nranks, SIZE_MAX / 8 / (size_t)c->nranks),
        true);
  }
  if (recvCount == 0) return gradcompSuccess;
  const size_t count = recvCount * (size_t)c->nranks;
  GC_CHECK(beginCollective(*c, kCallReduceScatter, count, type, op));
  GC_CHECK(agreeBuffersGiven(*c, send, recv, recvCount, "recvcount"));

  if (!compressible(*c, count, type, op)) {
    GC_TRACE("reduce-scatter pass through: recvcount=%zu type=%d op=%d ranks=%d", recvCount,
             (int)type, (int)op, c->nranks);
    return passThroughCall(c, kStateReduceScatter, keyed, key, false, send, recv, recvCount, type,
                           op);
  }

  DType t;
  GC_CHECK(dtypeFromNccl(type, &t));
  // The codecs' range is of the input, nranks * recvcount: named as the caller gave it.
  if (count > kMaxCodecCount) {
    return refuseCall(
        *c, recvCount, (int)type, (int)op, kRefusedRecvCount,
        setError(gradcompInvalidArgument,
                 "recvcount=%zu times nranks=%d is %zu input elements, out of range "
                 "0..%zu (at most %zu per rank)",
                 recvCount, c->nranks, count, kMaxCodecCount, kMaxCodecCount / (size_t)c->nranks));
  }
  GC_CHECK(agreeBuffers(*c, send, count, recv, recvCount, (size_t)c->rank * recvCount, t));
  GC_CHECK(agreeBeforeState(*c));

  bool autoPass = false;
  GC_CHECK(autoShouldPass(c, AutoCall::ReduceScatter, count, dtypeBytes(t), &autoPass));
  if (autoPass) {
    GC_CHECK(
        passThroughCall(c, kStateReduceScatter, keyed, key, true, send, recv, recvCount, type, op));
    c->stats.callsAutoPassed++;
    return gradcompSuccess;
  }
  const CallEnd end(*c->backend);

  const bool qsgd = c->cfg.method == gradcompMethodQsgd;
  if (!qsgd) {
    if (recvCount >= (size_t)sparse::kEmptySlot) {
      return refuseCall(*c, recvCount, (int)type, (int)op, kRefusedRecvCount,
                        setError(gradcompInvalidArgument,
                                 "recvcount=%zu is too large for the u32 block indices of the "
                                 "sparse methods (at most %u)",
                                 recvCount, sparse::kEmptySlot - 1));
    }
  }

  // Blocks of different sizes would be exchanged as if they matched.
  GC_CHECK(checkRanksAgree(*c, recvCount, "recvcount"));
  const bool hier = useHierReduceScatter(*c);
  const Algorithm& algo = hier   ? hierReduceScatterAlgorithm()
                          : qsgd ? reduceScatterAlgorithm()
                                 : sparseReduceScatterAlgorithm();
  BufferState* state = nullptr;
  int bits = 0;
  GC_CHECK(agreePrepared(*c, [&]() -> gradcompResult_t {
    GC_CHECK(findState(*c, kStateReduceScatter, keyed, key, recv, count, t, &state));
    GC_CHECK(checkWarmupCapture(*c, *state));
    if (qsgd) GC_CHECK(chooseBits(*c, *state, &bits));
    const bool residual = state->residual != nullptr;
    auto wsFor = [&](int b) {
      return hier   ? hierReduceScatterWorkspaceBytes(*c, recvCount, b, residual, state->calls)
             : qsgd ? algo.workspaceBytes(*c, recvCount, b)
                    : sparseReduceScatterWorkspaceBytes(*c, recvCount, t, residual, state->calls);
    };
    GC_CHECK(c->ensureWorkspace(qsgd ? qsgdWorkspaceBytes(*c, bits, wsFor) : wsFor(bits)));
    return qsgd ? gradcompSuccess : c->sparse->reserve();
  }()));
  if (c->autoState.reserving) return gradcompSuccess;
  const size_t wire = hier   ? hierReduceScatterWireBytes(*c, recvCount, bits, state->calls)
                      : qsgd ? algo.wireBytes(*c, recvCount, bits)
                             : sparseReduceScatterWireBytes(*c, recvCount, state->calls);
  const size_t interNode = hier ? hierReduceScatterInterNodeBytes(*c, recvCount, bits, state->calls)
                                : allToAllInterNodeBytes(*c, wire);

  CallArgs args{c, send, recv, recvCount, t, op == ncclAvg, state, bits, c->step};
  GC_CHECK(outputFlag(*c, *state, algo, &args.outputFlag));
  GC_TRACE("%s: recvcount=%zu type=%d bits=%d step=%llu", algo.name, recvCount, (int)type, bits,
           (unsigned long long)c->step);
  GC_CHECK(algo.run(args, c->workspace));
  GC_CHECK(
      discardStateIfNonFinite(*c, *state, recv, recvCount, t, true, args.outputFlag != nullptr));
  if (qsgd) {
    GC_CHECK(recordGatheredStats(*c, *state, recv, recvCount, t));
    recordBits(*c, bits);
  }
  c->stats.piecesLast = algo.pieces != nullptr ? algo.pieces(*c, recvCount, bits) : 1;
  c->stats.callsReduceScatter++;
  return finishCall(*c, *state, -1, count * dtypeBytes(t), wire, interNode);
}

}  // namespace gc

extern "C" {

GC_EXPORT gradcompResult_t gradcompReduceScatter(const void* sendbuff, void* recvbuff,
                                                 size_t recvcount, ncclDataType_t datatype,
                                                 ncclRedOp_t op, gradcompComm_t comm,
                                                 cudaStream_t stream) {
  return gc::collectiveEntry(comm, recvcount, &datatype, &op, stream, [&] {
    return gc::reduceScatter(sendbuff, recvbuff, recvcount, datatype, op, comm, stream, false, 0);
  });
}

GC_EXPORT gradcompResult_t gradcompReduceScatterKeyed(const void* sendbuff, void* recvbuff,
                                                      size_t recvcount, ncclDataType_t datatype,
                                                      ncclRedOp_t op, gradcompComm_t comm,
                                                      cudaStream_t stream, uint64_t key) {
  return gc::collectiveEntry(comm, recvcount, &datatype, &op, stream, [&] {
    return gc::reduceScatter(sendbuff, recvbuff, recvcount, datatype, op, comm, stream, true, key);
  });
}

}  // extern "C"
