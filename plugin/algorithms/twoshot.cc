// Two-shot (scatter-reduce + allgather), the default for N > 2.
//
//   1. Each rank encodes chunk j of (g + residual) for rank j (error feedback
//      fused); its own chunk stays full precision.
//   2. All-to-all of the encoded chunks (grouped send/recv).
//   3. The owner sums the N contributions of its chunk in rank order, in
//      fp32, and encodes the sum once (optionally with its own residual).
//   4. Allgather of the encoded sums; every rank, owner included, decodes the
//      same bytes, so results are bitwise identical everywhere.
// Two quantizations in total, whatever N. Bytes each rank sends:
//   sum_{j != r} E(n_j) + (N-1) * E(max_j n_j),  E(m) = 4*ceil(m/d) + 4*ceil(m*b/32).
#include <algorithm>
#include <vector>

#include "kernels/qsgd_math.cuh"
#include "algorithms/algorithms.h"
#include "checks.h"
#include "nvtx.h"

namespace gc {
namespace {

struct Layout : Chunks {
  size_t sendEnc = 0, recvEnc = 0, gather = 0, own = 0, acc = 0, total = 0;
};

Layout layout(const gradcompComm& c, size_t count, int bits) {
  Layout L;
  static_cast<Chunks&>(L) = splitChunks(c, count, bits);
  const int n = c.nranks;
  size_t p = 0;
  L.sendEnc = p, p += alignUp(n * L.slot);
  L.recvEnc = p, p += alignUp(n * L.slot);
  L.gather = p, p += alignUp(n * L.slot);
  L.own = p, p += alignUp(L.maxLen * sizeof(float));
  L.acc = p, p += alignUp(L.maxLen * sizeof(float));
  L.total = p;
  return L;
}

size_t workspaceBytes(const gradcompComm& c, size_t count, int bits) {
  return layout(c, count, bits).total;
}

// Bytes to every peer, or to the peers on other nodes only.
size_t wire(const gradcompComm& c, size_t count, int bits, bool remoteOnly) {
  Layout L = layout(c, count, bits);
  size_t bytes = 0, peers = 0;
  for (int j = 0; j < c.nranks; ++j) {
    if (j == c.rank || (remoteOnly && !c.topo.remote(j, c.rank))) continue;
    bytes += qsgd::encodedBytes(L.off[j + 1] - L.off[j], bits, c.cfg.bucketSize);
    ++peers;
  }
  return bytes + peers * qsgd::encodedBytes(L.maxLen, bits, c.cfg.bucketSize);
}

size_t wireBytes(const gradcompComm& c, size_t count, int bits) {
  return wire(c, count, bits, false);
}

size_t interNodeBytes(const gradcompComm& c, size_t count, int bits) {
  return wire(c, count, bits, true);
}

gradcompResult_t run(const CallArgs& a, void* workspace) {
  gradcompComm& c = *a.comm;
  Backend& be = *c.backend;
  const int n = c.nranks, r = c.rank, d = c.cfg.bucketSize, bits = a.bits;
  const Layout L = layout(c, a.count, bits);
  char* ws = static_cast<char*>(workspace);
  char* sendEnc = ws + L.sendEnc;
  char* recvEnc = ws + L.recvEnc;
  char* gather = ws + L.gather;
  float* own = reinterpret_cast<float*>(ws + L.own);
  float* acc = reinterpret_cast<float*>(ws + L.acc);
  const size_t esz = dtypeBytes(a.dtype);
  const char* send = static_cast<const char*>(a.send);
  float* residual = a.state->residual;
  auto len = [&](int j) { return L.off[j + 1] - L.off[j]; };
  auto enc = [&](size_t m) { return qsgd::encodedBytes(m, bits, d); };

  const size_t myLen = len(r);
  char* mySlot = gather + r * L.slot;
  std::vector<const void*> sendPtr(n);
  std::vector<void*> recvPtr(n);
  std::vector<size_t> sendBytes(n), recvBytes(n);
  for (int j = 0; j < n; ++j) {
    sendPtr[j] = sendEnc + j * L.slot;
    recvPtr[j] = recvEnc + j * L.slot;
    sendBytes[j] = j == r ? 0 : enc(len(j));
    recvBytes[j] = j == r ? 0 : enc(len(r));
  }

  // 1. Encode every peer's chunk; keep our own in full precision.
  {
    GC_NVTX_RANGE("gradcomp encode");
    for (int j = 0; j < n; ++j) {
      if (j == r || len(j) == 0) continue;
      GC_CHECK(be.qsgdEncode(send + L.off[j] * esz, a.dtype,
                             residual ? residual + L.off[j] : nullptr, len(j), bits, d,
                             c.key(a.step, j), sendEnc + j * L.slot));
    }
    float* myResidual = residual ? residual + L.off[r] : nullptr;
    GC_CHECK(be.toFloat(send + L.off[r] * esz, a.dtype, myResidual, myLen, own));
    if (myResidual) GC_CHECK(be.zero(myResidual, myLen * sizeof(float)));
  }

  // 2. All-to-all.
  {
    GC_NVTX_RANGE("gradcomp exchange");
    GC_CHECK(
        c.transport->allToAll(sendPtr.data(), sendBytes.data(), recvPtr.data(), recvBytes.data()));
  }

  // 3. Owner: sum in rank order, encode once.
  {
    GC_NVTX_RANGE("gradcomp reduce+encode");
    for (int i = 0; i < n; ++i) {
      if (i == r) {
        GC_CHECK(i == 0 ? be.copy(acc, own, myLen * sizeof(float)) : be.add(acc, own, myLen));
      } else {
        GC_CHECK(be.qsgdDecode(recvEnc + i * L.slot, myLen, bits, d, acc, i != 0));
      }
    }
    GC_CHECK(be.qsgdEncode(acc, DType::F32, c.cfg.ownerResidual ? a.state->ownerResidual : nullptr,
                           myLen, bits, d, c.key(a.step, 0x100000000ull), mySlot));
  }

  // 4. Allgather the encoded sums and decode all of them.
  {
    GC_NVTX_RANGE("gradcomp allgather");
    GC_CHECK(c.transport->allGather(mySlot, gather, L.slot));
  }
  GC_NVTX_RANGE("gradcomp decode");
  const float divisor = a.average ? (float)n : 1.0f;
  for (int j = 0; j < n; ++j) {
    GC_CHECK(decodeToOutput(be, gather + j * L.slot, len(j), bits, d, divisor, a.dtype,
                            static_cast<char*>(a.recv) + L.off[j] * esz, acc));
  }
  return gradcompSuccess;
}

}  // namespace

const Algorithm& twoShotAlgorithm() {
  static const Algorithm algo = {gradcompAlgoTwoShot, "twoshot", workspaceBytes,
                                 wireBytes,           run,       interNodeBytes};
  return algo;
}

}  // namespace gc
