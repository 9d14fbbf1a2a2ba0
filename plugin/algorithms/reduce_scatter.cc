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
// NCCL's ring reduce-scatter sends (N-1) * m * sizeof(T). Pipelined with
// GRADCOMP_PIPELINE_BYTES as two-shot's first half (run below).

#include "algorithms/algorithms.h"
#include "checks.h"
#include "kernels/qsgd_math.cuh"
#include "nvtx.h"

namespace gc {
namespace {

// The blocks are a reference: run() fills the comm's CallScratch, the size
// functions local ones of sizes alone (no offsets), so that neither
// allocates.
struct Layout {
  Chunks& ch;
  Pieces pieces;
  size_t sendEnc = 0, recvEnc = 0, own = 0, acc = 0, total = 0;
};

void layout(const gradcompComm& c, size_t m, int bits, Layout& L, bool offsets) {
  equalBlocks(c, m, bits, &L.ch, offsets);
  L.pieces = splitPieces(c, L.ch);
  const size_t n = c.nranks;
  size_t p = 0;
  L.sendEnc = p, p += alignUp(n * L.ch.slot);
  L.recvEnc = p, p += alignUp(n * L.ch.slot);
  L.own = p, p += alignUp(m * sizeof(float));
  L.acc = p, p += alignUp(m * sizeof(float));
  L.total = p;
}

size_t workspaceBytes(const gradcompComm& c, size_t m, int bits) {
  Chunks ch;
  Layout L{ch, {}};
  layout(c, m, bits, L, false);
  return L.total;
}

size_t wireBytes(const gradcompComm& c, size_t m, int bits) {
  return (size_t)(c.nranks - 1) * qsgd::encodedBytes(m, bits, c.cfg.bucketSize);
}

size_t pieces(const gradcompComm& c, size_t m, int bits) {
  Chunks ch;
  equalBlocks(c, m, bits, &ch, false);
  return splitPieces(c, ch).count;
}

// Pipelined (more than one piece, GRADCOMP_PIPELINE_BYTES): the blocks are
// cut into pieces of whole buckets as two-shot cuts its chunks, and the
// transport runs on the comm lane, so that on the CUDA backend the encode of
// piece q+1 and the owner's sum of piece q-1 overlap the all-to-all of
// piece q:
//   compute lane: E0 E1 S0 E2 S1 E3 S2 ...
//   comm lane:       X0    X1    X2 ...
// (E encode, X all-to-all, S sum + conversion to the output type). Every
// element sees the one-piece call's operations (same bucket scales, RNG draw
// by its index in the block, rank-order sums, one conversion, Avg dividing
// there): results, residuals and wire bytes are the one-piece call's, bit for
// bit. In place, piece q of recv overwrites piece q of block r, which E read
// into `own` earlier on the same lane. With hooks (CallArgs::hooks, the
// hierarchical reduce-scatter's in-node stages) before(q) runs ahead of E_q
// and after(q) right after S_q (a lag of one piece), for every piece the
// hooks ask for, on every rank.
gradcompResult_t run(const CallArgs& a, void* workspace) {
  gradcompComm& c = *a.comm;
  Backend& be = *c.backend;
  const int n = c.nranks;
  Layout L{callScratch(c).chunks, {}};
  layout(c, a.count, a.bits, L, true);
  const Pieces& P = L.pieces;
  char* ws = static_cast<char*>(workspace);
  ScatterSum sc(a, L.ch, P, ws + L.sendEnc, ws + L.recvEnc, reinterpret_cast<float*>(ws + L.own));
  const size_t esz = dtypeBytes(a.dtype);
  char* recv = static_cast<char*>(a.recv);
  // The fp32 accumulator the sum may need: an fp32 Sum output itself, else
  // scratch (Backend::qsgdSum's default, and a fused sum past 16 terms).
  const bool direct = a.dtype == DType::F32 && !a.average;
  float* acc = direct ? static_cast<float*>(a.recv) : reinterpret_cast<float*>(ws + L.acc);
  const float divisor = a.average ? (float)n : 1.0f;

  // S: the owner's sum of piece q in the output type (converted and divided
  // as it is stored; through acc where the backend's sum needs fp32 scratch).
  auto sumPiece = [&](size_t q) -> gradcompResult_t {
    GC_NVTX_RANGE("gradcomp reduce");
    const size_t o = sc.start(q);
    return sc.sum(q, recv + o * esz, divisor, a.dtype, acc + o, a.outputFlag);
  };

  // Event slots: 0 hands compute work to the comm lane (waited on at once);
  // 1+q%2 marks all-to-all q done (two in flight). One piece: no events, the
  // caller's stream alone, every read of send before recv is written.
  // Pieces past this rank's own count are empty: only the hooks run.
  const size_t Q = hookedPieces(a, P.count);
  const LaneEvents ev{be, Q > 1};
  CommLane lane(c, ev.piped);
  for (size_t q = 0; q < Q + 1; ++q) {
    if (q < Q && a.hooks != nullptr) GC_CHECK(a.hooks->before(q));
    if (q < P.count) GC_CHECK(sc.encodeExchange(q, ev));
    if (q >= 1 && q - 1 < P.count) {
      GC_CHECK(sc.awaitExchange(q - 1, ev));
      GC_CHECK(sumPiece(q - 1));
    }
    if (q >= 1 && a.hooks != nullptr) GC_CHECK(a.hooks->after(q - 1));
  }
  return gradcompSuccess;
}

size_t interNodeBytes(const gradcompComm& c, size_t m, int bits) {
  return allToAllInterNodeBytes(c, wireBytes(c, m, bits));
}

}  // namespace

const Algorithm& reduceScatterAlgorithm() {
  static const Algorithm algo = {
      gradcompAlgoTwoShot, "reducescatter", workspaceBytes, wireBytes, run,
      interNodeBytes,      pieces,          nullptr,        true};
  return algo;
}

}  // namespace gc
