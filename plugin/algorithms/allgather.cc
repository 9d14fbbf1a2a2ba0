// Allgather: every rank encodes its whole buffer (error feedback fused), the
// encodings are allgathered, and every rank decodes and sums all N in rank
// order (one kernel: Backend::qsgdSum). One quantization; best for N <= 2 or
// small buffers. Bytes each rank sends: (N-1) * E(n).
#include "kernels/qsgd_math.cuh"
#include "algorithms/algorithms.h"
#include "checks.h"
#include "nvtx.h"

namespace gc {
namespace {

size_t slotBytes(const gradcompComm& c, size_t count, int bits) {
  return alignUp(qsgd::encodedBytes(count, bits, c.cfg.bucketSize), 16);
}

size_t workspaceBytes(const gradcompComm& c, size_t count, int bits) {
  return alignUp(c.nranks * slotBytes(c, count, bits)) + alignUp(count * sizeof(float));
}

size_t wireBytes(const gradcompComm& c, size_t count, int bits) {
  return (size_t)(c.nranks - 1) * qsgd::encodedBytes(count, bits, c.cfg.bucketSize);
}

size_t interNodeBytes(const gradcompComm& c, size_t count, int bits) {
  return (size_t)c.remotePeers() * qsgd::encodedBytes(count, bits, c.cfg.bucketSize);
}

gradcompResult_t run(const CallArgs& a, void* workspace) {
  GC_NVTX_RANGE("gradcomp allgather");
  gradcompComm& c = *a.comm;
  Backend& be = *c.backend;
  const int n = c.nranks, r = c.rank, d = c.cfg.bucketSize, bits = a.bits;
  const size_t slot = slotBytes(c, a.count, bits);
  char* gather = static_cast<char*>(workspace);
  float* acc = reinterpret_cast<float*>(gather + alignUp(n * slot));

  GC_CHECK(be.qsgdEncode(a.send, a.dtype, a.state->residual, a.count, bits, d, c.key(a.step, 0),
                         gather + r * slot));
  // Each encoding at its own size, in its 16-byte slot.
  GC_CHECK(allGatherDirect(*c.transport, gather, slot, qsgd::encodedBytes(a.count, bits, d)));
  // The N decodes summed in rank order and converted once (Backend::qsgdSum:
  // one kernel on a warp-path bucket; acc the fp32 scratch where it needs
  // one). send, in place recv too, was read by the encode.
  std::vector<SumTerm>& terms = callScratch(c).terms;
  terms.resize(n);
  for (int i = 0; i < n; ++i) terms[i] = SumTerm{gather + i * slot, false};
  return be.qsgdSum(terms.data(), n, a.count, bits, d, a.average ? (float)n : 1.0f, a.dtype, a.recv,
                    acc, a.outputFlag);
}

}  // namespace

const Algorithm& allgatherAlgorithm() {
  static const Algorithm algo = {gradcompAlgoAllgather, "allgather", workspaceBytes, wireBytes, run,
                                 interNodeBytes,        nullptr,     nullptr,        true};
  return algo;
}

const Algorithm& pickDenseAlgorithm(const gradcompComm& c, size_t count) {
  if (useHier(c)) return hierAlgorithm();
  switch (c.cfg.algo) {
    case gradcompAlgoTwoShot:
      return twoShotAlgorithm();
    case gradcompAlgoRing:
      return ringAlgorithm();
    case gradcompAlgoAllgather:
      return allgatherAlgorithm();
    default:
      break;
  }
  // Two ranks: allgather sends the same bytes as two-shot with one
  // quantization instead of two. More ranks: two-shot's bytes per rank stay
  // ~2E(n) while allgather's grow as (N-1)E(n).
  return c.nranks <= 2 ? allgatherAlgorithm() : twoShotAlgorithm();
}

bool allReduceKeepsOwnerResidual(const gradcompComm& c) {
  if (c.cfg.method != gradcompMethodQsgd || c.cfg.elias || !c.cfg.ownerResidual) return false;
  const Algorithm& algo = useHier(c) ? pickDenseAlgorithm(*c.inter, 0) : pickDenseAlgorithm(c, 0);
  return algo.ownerSpan != nullptr;
}

}  // namespace gc
