// Hierarchical allreduce (algo hier), for comms whose ranks share nodes
// (>= 2 nodes of G >= 2 ranks each):
//
//   1. Reduce-scatter inside the node in full precision. The buffer, widened
//      to fp32, is cut into G bucket-aligned shards (splitAligned) padded to
//      the largest, so NCCL's equal blocks fit; local rank j receives the
//      fp32 sum of shard j over its node.
//   2. Compressed allreduce (Sum) of that shard across the nodes, among the
//      ranks with the same local rank, by one of the flat algorithms running
//      on the inter-node child comm (rank = node; seed mixed with the local
//      rank, so every global rank keys its RNG differently). Its error
//      feedback, DGC momentum and owner residual are slices of the buffer's
//      own state arrays, so checkpoints keep their format.
//   3. Allgather inside the node of the reduced shards in the buffer type;
//      Avg divides once, by N, just before.
// Every rank of an inter-node group decodes the same bytes in step 2 and
// every rank of a node gathers the same shards in step 3, so results are
// bitwise identical on all N ranks. Bytes each rank sends, m = the padded
// shard: (G-1)*m*4 + (G-1)*m*sizeof(T) inside the node, and across nodes
// the middle algorithm's bytes for this rank's shard among the nodes.
#include <algorithm>
#include <vector>

#include "algorithms/algorithms.h"
#include "checks.h"
#include "nvtx.h"

namespace gc {
namespace {

constexpr uint64_t kSteadyState = ~0ull;  // a call number past any DGC warm-up

bool sparseMethod(const gradcompComm& c) {
  return c.cfg.method != gradcompMethodQsgd;
}

const Algorithm& middleAlgorithm(const gradcompComm& c, size_t len) {
  if (c.cfg.method == gradcompMethodRandk) return randkAlgorithm();
  if (sparseMethod(c)) return sparseAllgatherAlgorithm();
  return pickDenseAlgorithm(*c.inter, len);
}

size_t middleWorkspace(const gradcompComm& c, size_t len, int bits, uint64_t calls) {
  if (len == 0) return 0;
  if (sparseMethod(c)) {
    return sparseWorkspaceBytes(*c.inter, len, DType::F32, c.keepsResidual(), calls);
  }
  return middleAlgorithm(c, len).workspaceBytes(*c.inter, len, bits);
}

size_t middleWire(const gradcompComm& c, size_t len, int bits, uint64_t calls) {
  if (len == 0) return 0;
  if (sparseMethod(c)) return sparseWireBytes(*c.inter, len, calls);
  return middleAlgorithm(c, len).wireBytes(*c.inter, len, bits);
}

// A pipelined call (GRADCOMP_PIPELINE_BYTES cuts the two-shot middle stage
// into pieces) moves the in-node stages piece by piece too. Piece q of shard
// k is the middle's piece q of each of its chunks (two-shot's own pieces, so
// scales and RNG draws are the unpipelined call's); in the in-node
// collectives it travels packed, chunk after chunk, in a block of block[q]
// elements (the longest shard's packed piece q).
struct Seg {
  size_t off, len;  // shard-relative
};

// Shard k's offset and its middle chunks' are splitAligned's, worked out
// where they are read (alignedOffset), so that only the pipelined call's
// blocks are arrays: run() fills the comm's CallScratch, the size functions
// leave them empty (`blocks` false), so that neither allocates.
struct Layout {
  const gradcompComm& c;
  std::vector<size_t>&block, &blockOff;  // pipelined: piece q's block and its offset in a row
  size_t count = 0;
  size_t shardMax = 0, myOff = 0, myLen = 0;
  size_t pieces = 1;
  size_t moved = 0;  // elements of one rank's block, all pieces
  size_t padded = 0, reduced = 0, shard = 0, middle = 0, total = 0;
  // Shard k is [off(k), off(k+1)).
  size_t off(int k) const { return alignedOffset(count, c.topo.localSize, c.cfg.bucketSize, k); }
  size_t len(int k) const { return off(k + 1) - off(k); }
  // Pipelined: f(seg) for each segment of piece q of shard k, the middle's
  // piece q of each of the shard's chunks (splitChunks on the child comm,
  // cut by its splitPieces), in chunk order; stops at an error.
  template <typename F>
  gradcompResult_t forSegs(int k, size_t q, F f) const {
    const gradcompComm& inter = *c.inter;
    const size_t shardLen = len(k), d = inter.cfg.bucketSize;
    const int chunks = inter.nranks;
    Chunks ch;  // sizes alone: splitPieces reads maxLen
    ch.maxLen = alignedOffset(shardLen, chunks, d, 1);
    const Pieces piece = splitPieces(inter, ch);
    for (int j = 0; j < chunks; ++j) {
      const size_t o = alignedOffset(shardLen, chunks, d, j);
      const size_t chunkLen = alignedOffset(shardLen, chunks, d, j + 1) - o;
      GC_CHECK(f(Seg{o + q * piece.piece, piece.len(chunkLen, q)}));
    }
    return gradcompSuccess;
  }
};

// Pieces of a call: two-shot's on the longest shard (shard 0, which has the
// most, splitAligned giving the earlier shards the longer chunks); one
// where the middle stage is another algorithm or sparse.
size_t hierPieceCount(const gradcompComm& c, size_t shardMax, int bits) {
  if (sparseMethod(c) || shardMax == 0) return 1;
  if (middleAlgorithm(c, shardMax).id != gradcompAlgoTwoShot) return 1;
  return chunkPieces(*c.inter, shardMax, bits);
}

void layout(size_t count, int bits, uint64_t calls, Layout& L, bool blocks) {
  const gradcompComm& c = L.c;
  const int G = c.topo.localSize, j = c.topo.localRank;
  L.count = count;
  L.block.clear();
  L.blockOff.clear();
  // Shard 0 is the longest: splitAligned gives the earlier shards the longer ones.
  L.shardMax = L.len(0);
  L.myOff = L.off(j);
  L.myLen = L.len(j);
  L.pieces = hierPieceCount(c, L.shardMax, bits);
  L.moved = L.shardMax;
  if (L.pieces > 1) {
    L.moved = 0;
    for (size_t q = 0; q < L.pieces; ++q) {
      size_t b = 0;
      for (int k = 0; k < G; ++k) {
        size_t n = 0;
        (void)L.forSegs(k, q, [&](const Seg& s) {
          n += s.len;
          return gradcompSuccess;
        });
        b = std::max(b, n);
      }
      if (blocks) {
        L.blockOff.push_back(L.moved);
        L.block.push_back(b);
      }
      L.moved += b;
    }
  }
  size_t p = 0;
  // The reduce-scatter's input, then the allgather's buffer (piece q's
  // region: G blocks from G * blockOff[q]).
  L.padded = p, p += alignUp(G * L.moved * sizeof(float));
  if (L.pieces > 1) L.reduced = p, p += alignUp(L.moved * sizeof(float));
  L.shard = p, p += alignUp(L.shardMax * sizeof(float));
  L.middle = p, p += middleWorkspace(c, L.myLen, bits, calls);
  L.total = p;
}

// The layout's sizes alone (no block arrays): what the size functions read.
struct SizeLayout {
  std::vector<size_t> block, blockOff;  // left empty
  Layout L;
  SizeLayout(const gradcompComm& c, size_t count, int bits, uint64_t calls)
      : L{c, block, blockOff} {
    layout(count, bits, calls, L, false);
  }
};

// The in-node stages of a pipelined call, run by two-shot's hooks. Lanes:
// kernels (widen, copies, conversions) on the compute lane, the in-node
// reduce-scatter and allgather on the node lane, the middle stage's
// transfers on the comm lane. Piece q+1's reduce-scatter is issued before
// piece q is encoded; piece q's allgather once it is decoded, and its copy
// to the output one piece later, so the compute lane waits on neither at
// once. Event slots (two-shot uses 0..4): kToNode hands compute work to the
// node lane (waited on at once), kReduced+q%2 marks reduce-scatter q done,
// kGathered+q%2 allgather q done; each is waited on one piece after it is
// recorded, before the slot is recorded again.
class HierPipe final : public PieceHooks {
 public:
  static constexpr int kToNode = 5, kReduced = 6, kGathered = 8;
  static_assert(kGathered + 2 <= Backend::kPipeEvents, "event slots");

  HierPipe(const CallArgs& a, const Layout& L, char* ws)
      : c_(*a.comm),
        be_(*c_.backend),
        a_(a),
        L_(L),
        esz_(dtypeBytes(a.dtype)),
        padded_(reinterpret_cast<float*>(ws + L.padded)),
        reduced_(reinterpret_cast<float*>(ws + L.reduced)),
        shard_(reinterpret_cast<float*>(ws + L.shard)),
        divisor_(a.average ? (float)c_.nranks : 1.0f) {
    pieces = L.pieces;
  }

  gradcompResult_t start() { return reducePiece(0); }

  gradcompResult_t before(size_t q) override {
    if (q + 1 < pieces) GC_CHECK(reducePiece(q + 1));
    GC_CHECK(be_.wait(Backend::kComputeLane, kReduced + (int)(q % 2)));
    const float* src = reduced_ + L_.blockOff[q];
    return L_.forSegs(j(), q, [&](const Seg& s) -> gradcompResult_t {
      if (s.len) GC_CHECK(be_.copy(shard_ + s.off, src, s.len * sizeof(float)));
      src += s.len;
      return gradcompSuccess;
    });
  }

  gradcompResult_t after(size_t q) override {
    char* mine = region(q) + (size_t)j() * L_.block[q] * esz_;
    GC_CHECK(L_.forSegs(j(), q, [&](const Seg& s) -> gradcompResult_t {
      if (s.len) GC_CHECK(be_.fromFloat(shard_ + s.off, s.len, divisor_, a_.dtype, mine));
      mine += s.len * esz_;
      return gradcompSuccess;
    }));
    GC_CHECK(toNode());
    GC_CHECK(c_.intra->allGather(region(q) + (size_t)j() * L_.block[q] * esz_, region(q),
                                 L_.block[q] * esz_));
    GC_CHECK(be_.record(Backend::kNodeLane, kGathered + (int)(q % 2)));
    return q >= 1 ? unpack(q - 1) : gradcompSuccess;
  }

  gradcompResult_t finish() { return unpack(pieces - 1); }

 private:
  int j() const { return c_.topo.localRank; }
  char* region(size_t q) const {
    return reinterpret_cast<char*>(padded_ + c_.topo.localSize * L_.blockOff[q]);
  }
  gradcompResult_t toNode() {
    GC_CHECK(be_.record(Backend::kComputeLane, kToNode));
    return be_.wait(Backend::kNodeLane, kToNode);
  }
  // Widens piece q of every shard into its block and reduce-scatters them.
  gradcompResult_t reducePiece(size_t q) {
    const int G = c_.topo.localSize;
    const size_t b = L_.block[q];
    float* in = reinterpret_cast<float*>(region(q));
    const char* send = static_cast<const char*>(a_.send);
    for (int k = 0; k < G; ++k) {
      float* dst = in + k * b;
      const size_t shardOff = L_.off(k);
      GC_CHECK(L_.forSegs(k, q, [&](const Seg& s) -> gradcompResult_t {
        const size_t o = shardOff + s.off;
        if (s.len) GC_CHECK(be_.toFloat(send + o * esz_, a_.dtype, nullptr, s.len, dst));
        dst += s.len;
        return gradcompSuccess;
      }));
      if (dst < in + (k + 1) * b) GC_CHECK(be_.zero(dst, (in + (k + 1) * b - dst) * sizeof(float)));
    }
    GC_CHECK(toNode());
    GC_CHECK(c_.intra->reduceScatter(in, reduced_ + L_.blockOff[q], b, ncclFloat32, ncclSum));
    return be_.record(Backend::kNodeLane, kReduced + (int)(q % 2));
  }
  // Copies piece q of every shard from the allgathered blocks to the output.
  gradcompResult_t unpack(size_t q) {
    GC_CHECK(be_.wait(Backend::kComputeLane, kGathered + (int)(q % 2)));
    char* out = static_cast<char*>(a_.recv);
    for (int k = 0; k < c_.topo.localSize; ++k) {
      const char* src = region(q) + (size_t)k * L_.block[q] * esz_;
      const size_t shardOff = L_.off(k);
      GC_CHECK(L_.forSegs(k, q, [&](const Seg& s) -> gradcompResult_t {
        if (s.len) GC_CHECK(be_.copy(out + (shardOff + s.off) * esz_, src, s.len * esz_));
        src += s.len * esz_;
        return gradcompSuccess;
      }));
    }
    return gradcompSuccess;
  }

  gradcompComm& c_;
  Backend& be_;
  const CallArgs& a_;
  const Layout& L_;
  const size_t esz_;
  float* padded_;
  float* reduced_;
  float* shard_;
  const float divisor_;
};

// Pipelined: the in-node stages run piece by piece around the middle
// stage's pieces (HierPipe). A rank whose shard is empty runs the hooks in
// the order two-shot would, so that every rank of the node issues the same
// in-node collectives in the same order.
gradcompResult_t runPipelined(const CallArgs& a, const Layout& L, char* ws) {
  gradcompComm& c = *a.comm;
  NodeLane lane(*c.intra, *c.backend);
  HierPipe pipe(a, L, ws);
  GC_CHECK(pipe.start());
  uint64_t fallbacks = 0;
  if (L.myLen) {
    BufferState view = hierStateView(*a.state, L.myOff, L.myLen);
    float* shard = reinterpret_cast<float*>(ws + L.shard);
    CallArgs mid{c.inter.get(), shard, shard, L.myLen, DType::F32, false, &view, a.bits, a.step};
    mid.hooks = &pipe;
    GC_CHECK(runInterNode(c, middleAlgorithm(c, L.myLen), mid, ws + L.middle, &fallbacks));
  } else {
    for (size_t q = 0; q < L.pieces + 2; ++q) {
      if (q < L.pieces) GC_CHECK(pipe.before(q));
      if (q >= 2) GC_CHECK(pipe.after(q - 2));
    }
  }
  GC_CHECK(pipe.finish());
  if (L.myLen) reportInterNode(c, fallbacks);
  return gradcompSuccess;
}

gradcompResult_t run(const CallArgs& a, void* workspace) {
  GC_NVTX_RANGE("gradcomp hier");
  gradcompComm& c = *a.comm;
  Backend& be = *c.backend;
  BufferState& st = *a.state;
  const int G = c.topo.localSize, j = c.topo.localRank;
  CallScratch& scratch = callScratch(c);
  Layout L{c, scratch.hierBlock, scratch.hierBlockOff};
  layout(a.count, a.bits, st.calls, L, true);
  // The shards' offsets and lengths as arrays (widenBlocks, hierFoldState).
  std::vector<size_t>&off = scratch.hierOff, &len = scratch.hierLen;
  off.resize(G);
  len.resize(G);
  for (int k = 0; k < G; ++k) off[k] = L.off(k), len[k] = L.len(k);
  char* ws = static_cast<char*>(workspace);
  hierSetStreams(c);
  float* padded = reinterpret_cast<float*>(ws + L.padded);
  float* shard = reinterpret_cast<float*>(ws + L.shard);
  if (st.unsharded) {
    // After momentum passes, the node's velocities summed into the shards
    // first, as stage 1 sums the gradients (only DGC's: never pipelined).
    GC_CHECK(hierFoldState(c, st, off.data(), len.data(), G, L.shardMax, padded, shard, L.shardMax,
                           L.myOff, L.myLen));
  }
  if (L.pieces > 1) return runPipelined(a, L, ws);
  const size_t esz = dtypeBytes(a.dtype), m = L.shardMax;
  const char* send = static_cast<const char*>(a.send);
  char* recv = static_cast<char*>(a.recv);
  const bool unpadded = (size_t)G * m == a.count;  // every shard is m long
  gradcompComm& inter = *c.inter;

  // 1. fp32 reduce-scatter inside the node (send is read before recv, which
  // may alias it, is written).
  const void* in = send;
  if (!(unpadded && a.dtype == DType::F32)) {
    GC_CHECK(widenBlocks(be, send, a.dtype, off.data(), len.data(), G, m, padded));
    in = padded;
  }
  GC_CHECK(c.intra->reduceScatter(in, shard, m, ncclFloat32, ncclSum));

  // 2. Compressed allreduce of the shard across nodes, in place.
  uint64_t fallbacks = 0;
  if (L.myLen) {
    BufferState view = hierStateView(st, L.myOff, L.myLen);
    CallArgs mid{&inter, shard, shard, L.myLen, DType::F32, false, &view, a.bits, a.step};
    GC_CHECK(runInterNode(c, middleAlgorithm(c, L.myLen), mid, ws + L.middle, &fallbacks));
  }

  // 3. Allgather of the reduced shards in the buffer type.
  const float divisor = a.average ? (float)c.nranks : 1.0f;
  char* gather = unpadded ? recv : reinterpret_cast<char*>(padded);
  char* mine = gather + (size_t)j * m * esz;
  if (L.myLen) GC_CHECK(be.fromFloat(shard, L.myLen, divisor, a.dtype, mine));
  GC_CHECK(c.intra->allGather(mine, gather, m * esz));
  if (L.myLen) reportInterNode(c, fallbacks);
  if (!unpadded) {
    for (int k = 0; k < G; ++k) {
      if (len[k]) GC_CHECK(be.copy(recv + off[k] * esz, gather + k * m * esz, len[k] * esz));
    }
  }
  return gradcompSuccess;
}

size_t workspaceSteady(const gradcompComm& c, size_t count, int bits) {
  return hierWorkspaceBytes(c, count, bits, kSteadyState);
}

size_t wireSteady(const gradcompComm& c, size_t count, int bits) {
  return hierWireBytes(c, count, DType::F32, bits, kSteadyState);
}

size_t interNodeSteady(const gradcompComm& c, size_t count, int bits) {
  return hierInterNodeBytes(c, count, bits, kSteadyState);
}

}  // namespace

void hierSetStreams(gradcompComm& c) {
  c.intra->setStream(c.backend->stream());
  c.inter->transport->setStream(c.backend->stream());
}

gradcompResult_t widenBlocks(Backend& be, const void* src, DType t, const size_t* srcOff,
                             const size_t* len, int blocks, size_t stride, float* dst) {
  const char* s = static_cast<const char*>(src);
  for (int b = 0; b < blocks; ++b) {
    float* d = dst + b * stride;
    if (len[b]) GC_CHECK(be.toFloat(s + srcOff[b] * dtypeBytes(t), t, nullptr, len[b], d));
    if (len[b] < stride) GC_CHECK(be.zero(d + len[b], (stride - len[b]) * sizeof(float)));
  }
  return gradcompSuccess;
}

BufferState hierStateView(const BufferState& st, size_t offset, size_t count) {
  BufferState view;
  view.count = count;
  view.dtype = DType::F32;
  view.residual = st.residual ? st.residual + offset : nullptr;
  view.momentum = st.momentum ? st.momentum + offset : nullptr;
  view.ownerResidual = st.ownerResidual;  // sized for N chunks: fits nodes chunks of a shard
  view.ownerResidualCount = st.ownerResidualCount;
  view.calls = st.calls;
  return view;
}

gradcompResult_t hierFoldState(gradcompComm& c, BufferState& st, const size_t* srcOff,
                               const size_t* len, int blocks, size_t stride, float* scratch,
                               float* shard, size_t recvCount, size_t ownOff, size_t ownLen) {
  if (!st.unsharded) return gradcompSuccess;
  Backend& be = *c.backend;
  for (float* a : {st.momentum, st.residual}) {
    if (a == nullptr) continue;
    GC_CHECK(widenBlocks(be, a, DType::F32, srcOff, len, blocks, stride, scratch));
    GC_CHECK(c.intra->reduceScatter(scratch, shard, recvCount, ncclFloat32, ncclSum));
    GC_CHECK(be.zero(a, st.count * sizeof(float)));
    if (ownLen) GC_CHECK(be.copy(a + ownOff, shard, ownLen * sizeof(float)));
  }
  st.unsharded = false;
  return gradcompSuccess;
}

gradcompResult_t runInterNode(gradcompComm& c, const Algorithm& algo, const CallArgs& mid,
                              void* workspace, uint64_t* fallbacks) {
  *fallbacks = c.inter->stats.denseFallbacks;
  return algo.run(mid, workspace);
}

void reportInterNode(gradcompComm& c, uint64_t fallbacks) {
  const gradcompComm& inter = *c.inter;
  c.stats.denseFallbacks += inter.stats.denseFallbacks - fallbacks;
  c.stats.selectedLast = inter.stats.selectedLast;
  c.stats.targetLast = inter.stats.targetLast;
  c.stats.peerSlotsRejected = inter.stats.peerSlotsRejected;
}

bool useHier(const gradcompComm& c) {
  // Elias codes QSGD levels: the sparse methods do not read it.
  const bool elias = c.cfg.elias && c.cfg.method == gradcompMethodQsgd;
  return c.topo.hier() && c.inter && c.intra && !elias;
}

size_t hierWorkspaceBytes(const gradcompComm& c, size_t count, int bits, uint64_t calls) {
  return SizeLayout(c, count, bits, calls).L.total;
}

size_t hierWireBytes(const gradcompComm& c, size_t count, DType t, int bits, uint64_t calls) {
  const SizeLayout sizes(c, count, bits, calls);
  const Layout& L = sizes.L;
  const size_t G = c.topo.localSize;
  return (G - 1) * L.moved * (sizeof(float) + dtypeBytes(t)) + middleWire(c, L.myLen, bits, calls);
}

size_t hierInterNodeBytes(const gradcompComm& c, size_t count, int bits, uint64_t calls) {
  const SizeLayout sizes(c, count, bits, calls);
  const Layout& L = sizes.L;
  return middleWire(c, L.myLen, bits, calls);
}

// Pipelined (two-shot middle): the call's pieces, the same on every rank.
// Otherwise the middle stage's pieces on this rank's shard.
static size_t hierPieces(const gradcompComm& c, size_t count, int bits) {
  if (sparseMethod(c)) return 1;
  const SizeLayout sizes(c, count, bits, kSteadyState);
  const Layout& L = sizes.L;
  if (L.pieces > 1) return L.pieces;
  const Algorithm& mid = middleAlgorithm(c, L.myLen);
  return mid.pieces != nullptr && L.myLen > 0 ? mid.pieces(*c.inter, L.myLen, bits) : 1;
}

// The middle stage's owner span on this rank's shard, in the buffer.
static OwnerSpan hierOwnerSpan(const gradcompComm& c, size_t count) {
  const SizeLayout sizes(c, count, c.cfg.bits, kSteadyState);
  const Layout& L = sizes.L;
  if (L.myLen == 0 || sparseMethod(c)) return {};
  const Algorithm& mid = middleAlgorithm(c, L.myLen);
  if (mid.ownerSpan == nullptr) return {};
  const OwnerSpan s = mid.ownerSpan(*c.inter, L.myLen);
  return {L.myOff + s.off, s.len};
}

const Algorithm& hierAlgorithm() {
  static const Algorithm algo = {gradcompAlgoHier, "hier",     workspaceSteady, wireSteady, run,
                                 interNodeSteady,  hierPieces, hierOwnerSpan};
  return algo;
}

}  // namespace gc
