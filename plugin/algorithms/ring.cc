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
//   sum_{s} E(n_{(r-s) mod N}) + (N-1) * E(n_{(r+1) mod N}).
#include <algorithm>
#include <vector>

#include "kernels/qsgd_math.cuh"
#include "algorithms/algorithms.h"
#include "checks.h"
#include "nvtx.h"

namespace gc {
namespace {

// The chunks and the allgather region are references: run() fills the
// comm's CallScratch, workspaceBytes local ones of sizes alone (no
// offsets), so that neither allocates.
struct Layout {
  Chunks& ch;
  Pieces pieces;
  PieceGather& gathered;
  size_t sendEnc = 0, recvEnc = 0, gather = 0, acc = 0, total = 0;
};

void layout(const gradcompComm& c, size_t count, int bits, Layout& L, bool offsets) {
  splitChunks(c, count, bits, &L.ch, offsets);
  L.pieces = splitPieces(c, L.ch);
  pieceGather(c, L.ch, L.pieces, bits, &L.gathered, offsets);
  size_t p = 0;
  L.sendEnc = p, p += alignUp(L.ch.slot);
  L.recvEnc = p, p += alignUp(L.ch.slot);
  L.gather = p, p += alignUp(L.gathered.bytes);
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

// The last hop makes this rank the final owner of chunk (r+1) mod N.
OwnerSpan ownedChunk(const gradcompComm& c, size_t count) {
  return chunkSpan(c, count, (c.rank + 1) % c.nranks);
}

// Bytes to every peer, or to the peers on other nodes only: the ring steps
// all go to the next rank, the allgather to every peer (the sum of chunk
// (r+1) mod N, which this rank owns last). Pieces are whole buckets, so
// their encodings add up to the chunk's: the same bytes pipelined.
size_t wire(const gradcompComm& c, size_t count, int bits, bool remoteOnly) {
  const int n = c.nranks;
  size_t bytes = 0;
  if (!remoteOnly || c.topo.remote((c.rank + 1) % n, c.rank)) {
    for (int s = 0; s < n - 1; ++s) {
      int j = ((c.rank - s) % n + n) % n;
      bytes += qsgd::encodedBytes(chunkSpan(c, count, j).len, bits, c.cfg.bucketSize);
    }
  }
  const size_t peers = remoteOnly ? c.remotePeers() : n - 1;
  return bytes + peers * qsgd::encodedBytes(chunkSpan(c, count, (c.rank + 1) % n).len, bits,
                                            c.cfg.bucketSize);
}

size_t wireBytes(const gradcompComm& c, size_t count, int bits) {
  return wire(c, count, bits, false);
}

size_t interNodeBytes(const gradcompComm& c, size_t count, int bits) {
  return wire(c, count, bits, true);
}

// Pipelined (more than one piece): every hop runs piece by piece, the
// transfers on the comm lane, so that on the CUDA backend the
// decode-add-encode of piece q overlaps the transfer of piece q+1, and in
// the last hop the decode of piece q-1 the allgather of piece q:
//   compute lane: E0 E1 R0 E2 R1 .. | R0 R1 R2 .. | .. | R0 R1 D0 R2 D1 ..
//   comm lane:       X0 X1 X2 ..    | X0 X1 X2 .. | .. | X0 X1 G0 X2 G1 ..
// (E encode our chunk, X the hop's send/recv, R decode-add-encode, in the
// last hop into the allgather block, G allgather, D decode). A hop's first
// transfer waits for all of the previous hop's kernels, its other transfers
// follow it on the comm lane: one wait per hop, as waiting per piece across
// hops would need an event slot per piece and hop in flight. Every element
// meets the same operations as in the one-piece call: pieces are whole
// buckets of its chunk (same scales), its RNG draw follows its index in the
// chunk (KeySpec::offset), partial sums add in the same order. So results,
// residuals and wire bytes are the one-piece call's, bit for bit.
gradcompResult_t run(const CallArgs& a, void* workspace) {
  GC_NVTX_RANGE("gradcomp ring");
  gradcompComm& c = *a.comm;
  Backend& be = *c.backend;
  const int n = c.nranks, r = c.rank, d = c.cfg.bucketSize, bits = a.bits;
  CallScratch& scratch = callScratch(c);
  Layout L{scratch.chunks, {}, scratch.gathered};
  layout(c, a.count, bits, L, true);
  const Chunks& ch = L.ch;
  const Pieces& P = L.pieces;
  char* ws = static_cast<char*>(workspace);
  char* sendEnc = ws + L.sendEnc;
  char* recvEnc = ws + L.recvEnc;
  float* acc = reinterpret_cast<float*>(ws + L.acc);
  const size_t esz = dtypeBytes(a.dtype);
  const char* send = static_cast<const char*>(a.send);
  float* residual = a.state->residual;
  float* ownerResidual = c.cfg.ownerResidual ? a.state->ownerResidual : nullptr;
  auto enc = [&](size_t m) { return qsgd::encodedBytes(m, bits, d); };
  auto mod = [&](int x) { return ((x % n) + n) % n; };
  // Piece q of chunk j: its length, first element in the chunk, and where
  // its encoding sits in a chunk slot (earlier pieces are whole buckets, so
  // their encodings are exactly enc(start) bytes).
  auto len = [&](int j, size_t q) { return P.len(ch.len(j), q); };
  auto start = [&](size_t q) { return q * P.piece; };
  auto at = [&](char* slot, size_t q) { return slot + enc(start(q)); };
  auto key = [&](uint64_t stream, size_t q) {
    KeySpec k = c.key(a.step, stream);
    k.offset = start(q);
    return k;
  };
  // G (allgather) and D (decode) are two-shot's; rank i's block holds the
  // sum of chunk (i+1) mod N.
  GatherDecode gd(a, ch, P, L.gathered, ws + L.gather, 1);
  const int next = mod(r + 1), prev = mod(r - 1);

  // E: step 0 sends our own chunk r, encoded with error feedback.
  auto encodePiece = [&](size_t q) -> gradcompResult_t {
    GC_NVTX_RANGE("gradcomp encode");
    const size_t m = len(r, q), o = ch.off[r] + start(q);
    if (m == 0) return gradcompSuccess;
    return be.qsgdEncode(send + o * esz, a.dtype, residual ? residual + o : nullptr, m, bits, d,
                         key(0, q), at(sendEnc, q));
  };
  // X: hop s sends chunk (r-s) mod N on and receives chunk (r-s-1) mod N.
  auto hopPiece = [&](int s, size_t q) -> gradcompResult_t {
    GC_NVTX_RANGE("gradcomp exchange");
    return c.transport->sendRecv(at(sendEnc, q), enc(len(mod(r - s), q)), next, at(recvEnc, q),
                                 enc(len(mod(r - s - 1), q)), prev);
  };
  // R: y = decode(received partial sum) + g (+ residual, fused in the
  // encode); the last hop makes us the final owner of the chunk.
  auto reducePiece = [&](int s, size_t q) -> gradcompResult_t {
    GC_NVTX_RANGE("gradcomp reduce+encode");
    const int cr = mod(r - s - 1);
    const size_t m = len(cr, q), o = ch.off[cr] + start(q);
    if (m == 0) return gradcompSuccess;
    float* y = acc + start(q);
    GC_CHECK(be.qsgdDecode(at(recvEnc, q), m, bits, d, y, false));
    GC_CHECK(be.toFloat(send + o * esz, a.dtype, y, m, y));
    float* res = residual ? residual + o : nullptr;
    if (s < n - 2)
      return be.qsgdEncode(y, DType::F32, res, m, bits, d, key(s + 1, q), at(sendEnc, q));
    // Final owner of chunk cr: our whole contribution goes in at full precision.
    if (res) {
      GC_CHECK(be.add(y, res, m));
      GC_CHECK(be.zero(res, m * sizeof(float)));
    }
    return be.qsgdEncode(y, DType::F32, ownerResidual ? ownerResidual + start(q) : nullptr, m, bits,
                         d, key(n, q), gd.block(r, q));
  };
  // Event slots: 1+q%2 marks hop transfer q done, 3+q%2 allgather q done
  // (one of each in flight while the next is issued).
  const bool piped = P.count > 1;
  CommLane lane(c, piped);
  const LaneEvents ev{be, piped};
  const size_t K = P.count;
  for (int s = 0; s < n - 1; ++s) {
    const bool last = s == n - 2;
    for (size_t q = 0; q < K + 2; ++q) {
      if (q < K) {
        if (s == 0) GC_CHECK(encodePiece(q));
        // Hop s > 0 sends what hop s-1's kernels made: its first transfer
        // waits for all of them, the others follow it on the comm lane.
        if (s == 0 || q == 0) GC_CHECK(ev.toComm());
        GC_CHECK(hopPiece(s, q));
        GC_CHECK(ev.mark(1 + (int)(q % 2)));
      }
      if (q >= 1 && q - 1 < K) {
        GC_CHECK(ev.await(1 + (int)((q - 1) % 2)));
        GC_CHECK(reducePiece(s, q - 1));
        if (last) {
          GC_CHECK(ev.toComm());
          GC_CHECK(gd.gather(q - 1));
          GC_CHECK(ev.mark(3 + (int)((q - 1) % 2)));
        }
      }
      if (last && q >= 2) {
        GC_CHECK(ev.await(3 + (int)((q - 2) % 2)));
        GC_CHECK(gd.decode(q - 2, acc + start(q - 2)));
      }
    }
  }
  return gradcompSuccess;
}

}  // namespace

const Algorithm& ringAlgorithm() {
  static const Algorithm algo = {gradcompAlgoRing, "ring",      workspaceBytes, wireBytes, run,
                                 interNodeBytes,   chunkPieces, ownedChunk,     true};
  return algo;
}

}  // namespace gc
