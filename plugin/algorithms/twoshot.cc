// Two-shot (scatter-reduce + allgather), the default for N > 2.
//
//   1. Each rank encodes chunk j of (g + residual) for rank j (error feedback
//      fused); its own chunk stays full precision.
//   2. All-to-all of the encoded chunks (grouped send/recv).
//   3. The owner sums the N contributions of its chunk in rank order, in
//      fp32, and encodes the sum once (optionally with its own residual).
//   4. The owner sends its encoded sum to every peer (an allgather of direct
//      sends: one latency step, not a ring's N-1); every rank, owner
//      included, decodes the same bytes, so results are bitwise identical.
// Two quantizations in total, whatever N. Bytes rank r sends:
//   sum_{j != r} E(n_j) + (N-1) * E(n_r),  E(m) = 4*ceil(m/d) + 4*ceil(m*b/32).
#include <algorithm>
#include <vector>

#include "kernels/qsgd_math.cuh"
#include "algorithms/algorithms.h"
#include "checks.h"
#include "nvtx.h"

namespace gc {
namespace {

// The chunks and the allgather region (piece after piece) are references:
// run() fills the comm's CallScratch, the size functions local ones of
// sizes alone (no offsets), so that neither allocates.
struct Layout {
  Chunks& ch;
  Pieces pieces;
  PieceGather& gathered;
  size_t sendEnc = 0, recvEnc = 0, gather = 0, own = 0, acc = 0, total = 0;
};

void layout(const gradcompComm& c, size_t count, int bits, Layout& L, bool offsets) {
  splitChunks(c, count, bits, &L.ch, offsets);
  L.pieces = splitPieces(c, L.ch);
  pieceGather(c, L.ch, L.pieces, bits, &L.gathered, offsets);
  const int n = c.nranks;
  size_t p = 0;
  L.sendEnc = p, p += alignUp(n * L.ch.slot);
  L.recvEnc = p, p += alignUp(n * L.ch.slot);
  L.gather = p, p += alignUp(L.gathered.bytes);
  L.own = p, p += alignUp(L.ch.maxLen * sizeof(float));
  L.acc = p, p += alignUp(L.ch.maxLen * sizeof(float));
  L.total = p;
}

size_t workspaceBytes(const gradcompComm& c, size_t count, int bits) {
  Chunks ch;
  PieceGather gathered;
  Layout L{ch, {}, gathered};
  layout(c, count, bits, L, false);
  return L.total;
}

// The owner residual is of chunk r, the one this rank reduces.
OwnerSpan ownedChunk(const gradcompComm& c, size_t count) {
  return chunkSpan(c, count, c.rank);
}

// Bytes to every peer, or to the peers on other nodes only: chunk j to its
// owner, then the encoded sum of our own chunk to each peer.
size_t wire(const gradcompComm& c, size_t count, int bits, bool remoteOnly) {
  size_t bytes = 0, peers = 0;
  for (int j = 0; j < c.nranks; ++j) {
    if (j == c.rank || (remoteOnly && !c.topo.remote(j, c.rank))) continue;
    bytes += qsgd::encodedBytes(chunkSpan(c, count, j).len, bits, c.cfg.bucketSize);
    ++peers;
  }
  return bytes +
         peers * qsgd::encodedBytes(chunkSpan(c, count, c.rank).len, bits, c.cfg.bucketSize);
}

size_t wireBytes(const gradcompComm& c, size_t count, int bits) {
  return wire(c, count, bits, false);
}

size_t interNodeBytes(const gradcompComm& c, size_t count, int bits) {
  return wire(c, count, bits, true);
}

// Pipelined (more than one piece): every stage runs piece by piece, and the
// transport runs on the comm lane, so that on the CUDA backend the encode of
// piece p+1 and the decode of piece p-1 overlap the exchange of piece p:
//   compute lane: E0 E1 R0 E2 R1 D0 E3 R2 D1 ...
//   comm lane:       X0 X1 G0 X2 G1 X3 G2 ...
// (E encode, X all-to-all, R owner reduce+encode, G allgather, D decode).
// Every element sees the same operations as in the one-piece call: pieces
// are whole buckets of its chunk (same scales), its RNG draw follows its index
// in the chunk (KeySpec::offset), sums stay in rank order. So the results,
// residuals and wire bytes are the one-piece call's, bit for bit.
gradcompResult_t run(const CallArgs& a, void* workspace) {
  gradcompComm& c = *a.comm;
  Backend& be = *c.backend;
  const int r = c.rank, d = c.cfg.bucketSize, bits = a.bits;
  CallScratch& scratch = callScratch(c);
  Layout L{scratch.chunks, {}, scratch.gathered};
  layout(c, a.count, bits, L, true);
  const Chunks& ch = L.ch;
  const Pieces& P = L.pieces;
  char* ws = static_cast<char*>(workspace);
  float* acc = reinterpret_cast<float*>(ws + L.acc);
  float* ownerResidual = c.cfg.ownerResidual ? a.state->ownerResidual : nullptr;
  // E (encode) and X (all-to-all) are the reduce-scatter's, as is the
  // owner's sum in R; G (allgather) and D (decode) the ring's.
  ScatterSum sc(a, ch, P, ws + L.sendEnc, ws + L.recvEnc, reinterpret_cast<float*>(ws + L.own));
  GatherDecode gd(a, ch, P, L.gathered, ws + L.gather, 0);

  // R: the owner sums its piece in rank order and encodes the sum once.
  auto reducePiece = [&](size_t q) -> gradcompResult_t {
    GC_NVTX_RANGE("gradcomp reduce+encode");
    const size_t m = sc.len(r, q);
    if (m == 0) return gradcompSuccess;
    float* sum = acc + sc.start(q);
    GC_CHECK(sc.sum(q, sum, 1.0f, DType::F32, nullptr, nullptr));
    return be.qsgdEncode(sum, DType::F32, ownerResidual ? ownerResidual + sc.start(q) : nullptr, m,
                         bits, d, sc.key(0x100000000ull, q), gd.block(r, q));
  };

  // Event slots: 0 hands compute work to the comm lane (waited on at once);
  // 1+q%2 marks exchange q done, 3+q%2 allgather q done (two in flight).
  // Pieces past this rank's own count are empty: only the hooks run.
  const size_t Q = hookedPieces(a, P.count);
  const LaneEvents ev{be, Q > 1};
  CommLane lane(c, ev.piped);
  for (size_t q = 0; q < Q + 2; ++q) {
    if (q < Q && a.hooks != nullptr) GC_CHECK(a.hooks->before(q));
    if (q < P.count) GC_CHECK(sc.encodeExchange(q, ev));
    if (q >= 1 && q - 1 < P.count) {
      GC_CHECK(sc.awaitExchange(q - 1, ev));
      GC_CHECK(reducePiece(q - 1));
      GC_CHECK(ev.toComm());
      GC_CHECK(gd.gather(q - 1));
      GC_CHECK(ev.mark(3 + (int)((q - 1) % 2)));
    }
    if (q >= 2 && q - 2 < P.count) {
      GC_CHECK(ev.await(3 + (int)((q - 2) % 2)));
      GC_CHECK(gd.decode(q - 2, acc + sc.start(q - 2)));
    }
    if (q >= 2 && a.hooks != nullptr) GC_CHECK(a.hooks->after(q - 2));
  }
  return gradcompSuccess;
}

}  // namespace

const Algorithm& twoShotAlgorithm() {
  static const Algorithm algo = {gradcompAlgoTwoShot, "twoshot",   workspaceBytes, wireBytes, run,
                                 interNodeBytes,      chunkPieces, ownedChunk,     true};
  return algo;
}

}  // namespace gc
