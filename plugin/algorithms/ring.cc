// Ring: a reduce-scatter ring that decodes, adds its own contribution and
// re-encodes at every hop, then a compressed allgather.
//
// Step s (0..N-2): rank r sends chunk (r-s) mod N to r+1 and receives chunk
// (r-s-1) mod N from r-1. The partial sum y = decode(received) + own is
// re-encoded with error feedback into this rank's residual of that chunk, so
// every quantization error stays with the rank that made it. After N-1 steps
// rank r holds the whole sum of chunk (r+1) mod N, encodes it once and the
// allgather spreads it. N quantizations on the reduce path (one per hop), the
// same bytes as two-shot, 2(N-1) latency steps. Bytes each rank sends:
//   sum_{s} E(n_{(r-s) mod N}) + (N-1) * E(max_j n_j).
#include <algorithm>
#include <vector>

#include "kernels/qsgd_math.cuh"
#include "algorithms/algorithms.h"
#include "checks.h"
#include "nvtx.h"

namespace gc {
namespace {

struct Layout : Chunks {
  size_t sendEnc = 0, recvEnc = 0, gather = 0, acc = 0, total = 0;
};

Layout layout(const gradcompComm& c, size_t count, int bits) {
  Layout L;
  static_cast<Chunks&>(L) = splitChunks(c, count, bits);
  const int n = c.nranks;
  size_t p = 0;
  L.sendEnc = p, p += alignUp(L.slot);
  L.recvEnc = p, p += alignUp(L.slot);
  L.gather = p, p += alignUp(n * L.slot);
  L.acc = p, p += alignUp(L.maxLen * sizeof(float));
  L.total = p;
  return L;
}

size_t workspaceBytes(const gradcompComm& c, size_t count, int bits) {
  return layout(c, count, bits).total;
}

// Bytes to every peer, or to the peers on other nodes only: the ring steps
// all go to the next rank, the allgather to every peer.
size_t wire(const gradcompComm& c, size_t count, int bits, bool remoteOnly) {
  Layout L = layout(c, count, bits);
  const int n = c.nranks;
  size_t bytes = 0;
  if (!remoteOnly || c.topo.remote((c.rank + 1) % n, c.rank)) {
    for (int s = 0; s < n - 1; ++s) {
      int j = ((c.rank - s) % n + n) % n;
      bytes += qsgd::encodedBytes(L.off[j + 1] - L.off[j], bits, c.cfg.bucketSize);
    }
  }
  const size_t peers = remoteOnly ? c.remotePeers() : n - 1;
  return bytes + peers * qsgd::encodedBytes(L.maxLen, bits, c.cfg.bucketSize);
}

size_t wireBytes(const gradcompComm& c, size_t count, int bits) {
  return wire(c, count, bits, false);
}

size_t interNodeBytes(const gradcompComm& c, size_t count, int bits) {
  return wire(c, count, bits, true);
}

gradcompResult_t run(const CallArgs& a, void* workspace) {
  GC_NVTX_RANGE("gradcomp ring");
  gradcompComm& c = *a.comm;
  Backend& be = *c.backend;
  const int n = c.nranks, r = c.rank, d = c.cfg.bucketSize, bits = a.bits;
  const Layout L = layout(c, a.count, bits);
  char* ws = static_cast<char*>(workspace);
  char* sendEnc = ws + L.sendEnc;
  char* recvEnc = ws + L.recvEnc;
  char* gather = ws + L.gather;
  float* acc = reinterpret_cast<float*>(ws + L.acc);
  const size_t esz = dtypeBytes(a.dtype);
  const char* send = static_cast<const char*>(a.send);
  float* residual = a.state->residual;
  auto len = [&](int j) { return L.off[j + 1] - L.off[j]; };
  auto mod = [&](int x) { return ((x % n) + n) % n; };
  auto key = [&](int s) { return c.key(a.step, (uint64_t)s); };
  const int next = mod(r + 1), prev = mod(r - 1);

  // Step 0 sends our own chunk r, encoded with error feedback.
  GC_CHECK(be.qsgdEncode(send + L.off[r] * esz, a.dtype, residual ? residual + L.off[r] : nullptr,
                         len(r), bits, d, key(0), sendEnc));
  for (int s = 0; s < n - 1; ++s) {
    const int cs = mod(r - s), cr = mod(r - s - 1);
    GC_CHECK(c.transport->sendRecv(sendEnc, qsgd::encodedBytes(len(cs), bits, d), next, recvEnc,
                                   qsgd::encodedBytes(len(cr), bits, d), prev));
    // y = decode(received partial sum) + g (+ residual, fused below).
    GC_CHECK(be.qsgdDecode(recvEnc, len(cr), bits, d, acc, false));
    GC_CHECK(be.toFloat(send + L.off[cr] * esz, a.dtype, acc, len(cr), acc));
    float* res = residual ? residual + L.off[cr] : nullptr;
    if (s < n - 2) {
      GC_CHECK(be.qsgdEncode(acc, DType::F32, res, len(cr), bits, d, key(s + 1), sendEnc));
    } else {
      // Final owner of chunk cr: our whole contribution goes in at full precision.
      if (res) {
        GC_CHECK(be.add(acc, res, len(cr)));
        GC_CHECK(be.zero(res, len(cr) * sizeof(float)));
      }
      GC_CHECK(be.qsgdEncode(acc, DType::F32,
                             c.cfg.ownerResidual ? a.state->ownerResidual : nullptr, len(cr), bits,
                             d, key(n), gather + r * L.slot));
    }
  }

  GC_CHECK(c.transport->allGather(gather + r * L.slot, gather, L.slot));
  // Slot i holds the sum of chunk (i+1) mod N.
  const float divisor = a.average ? (float)n : 1.0f;
  for (int i = 0; i < n; ++i) {
    const int j = mod(i + 1);
    GC_CHECK(decodeToOutput(be, gather + i * L.slot, len(j), bits, d, divisor, a.dtype,
                            static_cast<char*>(a.recv) + L.off[j] * esz, acc));
  }
  return gradcompSuccess;
}

}  // namespace

const Algorithm& ringAlgorithm() {
  static const Algorithm algo = {gradcompAlgoRing, "ring", workspaceBytes,
                                 wireBytes,        run,    interNodeBytes};
  return algo;
}

}  // namespace gc
