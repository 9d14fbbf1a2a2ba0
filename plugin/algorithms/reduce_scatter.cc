// Compressed reduce-scatter (QSGD), the first half of two-shot with ONE
// quantization. Rank r's input is N blocks of m = recvcount elements.
//
//   1. Rank r encodes block j of (g + residual) for rank j (error feedback
//      fused, RNG key (seed, step, r, j)); its own block stays full precision
//      and its residual there is spent.
//   2. All-to-all of the encoded blocks (grouped send/recv), E(m) bytes each.
//   3. Owner r sums in rank order, in fp32: decodes of the peers' blocks and
//      its own block; the sum is converted once to the output type (Avg
//      divides there, once).
// Bytes each rank sends: (N-1) * E(m), E(m) = 4*ceil(m/d) + 4*ceil(m*b/32);
// NCCL's ring reduce-scatter sends (N-1) * m * sizeof(T).
#include <vector>

#include "algorithms/algorithms.h"
#include "checks.h"
#include "kernels/qsgd_math.cuh"
#include "nvtx.h"

namespace gc {
namespace {

struct Layout {
  size_t slot = 0, sendEnc = 0, recvEnc = 0, own = 0, acc = 0, total = 0;
};

Layout layout(const gradcompComm& c, size_t m, int bits) {
  Layout L;
  const size_t n = c.nranks;
  L.slot = alignUp(qsgd::encodedBytes(m, bits, c.cfg.bucketSize), 16);
  size_t p = 0;
  L.sendEnc = p, p += alignUp(n * L.slot);
  L.recvEnc = p, p += alignUp(n * L.slot);
  L.own = p, p += alignUp(m * sizeof(float));
  L.acc = p, p += alignUp(m * sizeof(float));
  L.total = p;
  return L;
}

size_t workspaceBytes(const gradcompComm& c, size_t m, int bits) {
  return layout(c, m, bits).total;
}

size_t wireBytes(const gradcompComm& c, size_t m, int bits) {
  return (size_t)(c.nranks - 1) * qsgd::encodedBytes(m, bits, c.cfg.bucketSize);
}

gradcompResult_t run(const CallArgs& a, void* workspace) {
  gradcompComm& c = *a.comm;
  Backend& be = *c.backend;
  const int n = c.nranks, r = c.rank, d = c.cfg.bucketSize, bits = a.bits;
  const size_t m = a.count, esz = dtypeBytes(a.dtype);
  const Layout L = layout(c, m, bits);
  char* ws = static_cast<char*>(workspace);
  char* sendEnc = ws + L.sendEnc;
  char* recvEnc = ws + L.recvEnc;
  float* own = reinterpret_cast<float*>(ws + L.own);
  const char* send = static_cast<const char*>(a.send);
  float* residual = a.state->residual;
  const size_t encBytes = qsgd::encodedBytes(m, bits, d);

  std::vector<const void*> sendPtr(n);
  std::vector<void*> recvPtr(n);
  std::vector<size_t> bytes(n);
  for (int j = 0; j < n; ++j) {
    sendPtr[j] = sendEnc + j * L.slot;
    recvPtr[j] = recvEnc + j * L.slot;
    bytes[j] = j == r ? 0 : encBytes;
  }

  // 1. Encode the peers' blocks; our own block stays full precision. Every
  // read of send happens here, before recv (which may alias block r) is
  // written.
  {
    GC_NVTX_RANGE("gradcomp encode");
    for (int j = 0; j < n; ++j) {
      if (j == r) continue;
      GC_CHECK(be.qsgdEncode(send + j * m * esz, a.dtype, residual ? residual + j * m : nullptr, m,
                             bits, d, c.key(a.step, j), sendEnc + j * L.slot));
    }
    float* myResidual = residual ? residual + r * m : nullptr;
    GC_CHECK(be.toFloat(send + r * m * esz, a.dtype, myResidual, m, own));
    if (myResidual) GC_CHECK(be.zero(myResidual, m * sizeof(float)));
  }

  // 2. All-to-all.
  {
    GC_NVTX_RANGE("gradcomp exchange");
    GC_CHECK(c.transport->allToAll(sendPtr.data(), bytes.data(), recvPtr.data(), bytes.data()));
  }

  // 3. Sum in rank order in fp32: straight into an fp32 Sum output, else into
  // scratch and one conversion.
  GC_NVTX_RANGE("gradcomp reduce");
  const bool direct = a.dtype == DType::F32 && !a.average;
  float* acc = direct ? static_cast<float*>(a.recv) : reinterpret_cast<float*>(ws + L.acc);
  for (int i = 0; i < n; ++i) {
    if (i == r) {
      GC_CHECK(i == 0 ? be.copy(acc, own, m * sizeof(float)) : be.add(acc, own, m));
    } else {
      GC_CHECK(be.qsgdDecode(recvEnc + i * L.slot, m, bits, d, acc, i != 0));
    }
  }
  if (direct) return gradcompSuccess;
  return be.fromFloat(acc, m, a.average ? (float)n : 1.0f, a.dtype, a.recv);
}

size_t interNodeBytes(const gradcompComm& c, size_t m, int bits) {
  return allToAllInterNodeBytes(c, wireBytes(c, m, bits));
}

}  // namespace

const Algorithm& reduceScatterAlgorithm() {
  static const Algorithm algo = {
      gradcompAlgoTwoShot, "reducescatter", workspaceBytes, wireBytes, run, interNodeBytes};
  return algo;
}

}  // namespace gc
