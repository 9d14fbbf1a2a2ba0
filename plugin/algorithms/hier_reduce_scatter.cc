// Hierarchical compressed reduce-scatter, for comms with >= 2 nodes of G >= 2
// ranks (k nodes, N = k*G ranks, m = recvcount). R(n, l) is the global rank
// of local rank l on node n (the topology's mapping; nodes need not be
// contiguous in rank order).
//
//   1. The input, widened to fp32, is copied in the order [local 0's k
//      blocks][local 1's k blocks]..., local l's blocks being those of
//      R(0, l), ..., R(k-1, l); a full-precision reduce-scatter inside the
//      node then leaves local rank l with the node sums of exactly the blocks
//      owned by its inter-node peers, in node order.
//   2. The flat compressed reduce-scatter (QSGD, or the sparse methods per
//      block) of those k blocks across the nodes, on the inter-node child
//      comm (rank = node, seed mixed with the local rank, so every global
//      rank keys its RNG differently). Its error feedback and DGC momentum
//      are the slice [l*k*m, (l+1)*k*m) of the buffer's own state arrays
//      (N*m long), so checkpoints keep their format.
//   3. Node n's result is block R(n, l) of the full sum, i.e. this rank's;
//      it is converted once to the output type, Avg dividing once, by N.
// One quantization, as the flat reduce-scatter. Bytes each rank sends:
// (G-1)*k*m*4 inside the node (NCCL's ring reduce-scatter of k*m floats),
// and across nodes the compressed reduce-scatter's (k-1) encoded blocks of
// m: 1/G of the flat reduce-scatter's (N-G) blocks to other nodes.
// Pipelined (QSGD with GRADCOMP_PIPELINE_BYTES cutting stage 2 into pieces),
// stages 1 and 3 run piece by piece around stage 2's pieces (HierRsPipe), so
// that the in-node reduce-scatter of piece q+1 overlaps the inter-node
// exchange of piece q; every element meets the same operations, so results,
// state and bytes are the unpipelined call's, bit for bit.
#include <algorithm>
#include <vector>

#include "algorithms/algorithms.h"
#include "checks.h"
#include "nvtx.h"

namespace gc {
namespace {

constexpr uint64_t kSteadyState = ~0ull;  // a call number past any DGC warm-up

bool qsgdMethod(const gradcompComm& c) {
  return c.cfg.method == gradcompMethodQsgd;
}

const Algorithm& middleAlgorithm(const gradcompComm& c) {
  return qsgdMethod(c) ? reduceScatterAlgorithm() : sparseReduceScatterAlgorithm();
}

// A pipelined call (QSGD, GRADCOMP_PIPELINE_BYTES cutting the middle stage
// into pieces) runs the in-node stages piece by piece too. Piece q is the
// middle stage's piece q of each of its k blocks (its own pieces, so scales
// and RNG draws are the unpipelined call's): elements [q*P, q*P + len_q) of
// every block of the input. Every block is m long, so every rank of every
// node has the same pieces and no block needs padding.
struct Layout {
  size_t pieces = 1;
  Pieces piece;  // pipelined: the middle stage's cut of its blocks of m
  // Unpipelined, the middle stage's workspace reuses the widened input's,
  // dead by then; pipelined, the two live side by side, and the in-node
  // reduce-scatter's output has a region of its own (piece q from k*q*P).
  size_t perm = 0, reduced = 0, middle = 0, node = 0, out = 0, total = 0;
};

size_t middlePieces(const gradcompComm& c, size_t m, int bits) {
  const Algorithm& mid = middleAlgorithm(c);
  return mid.pieces != nullptr ? mid.pieces(*c.inter, m, bits) : 1;
}

Layout layout(const gradcompComm& c, size_t m, int bits, bool haveResidual, uint64_t calls) {
  Layout L;
  const size_t n = c.nranks, k = c.topo.nodes;
  const size_t mid = qsgdMethod(c) ? reduceScatterAlgorithm().workspaceBytes(*c.inter, m, bits)
                                   : sparseReduceScatterWorkspaceBytes(*c.inter, m, DType::F32,
                                                                       haveResidual, calls);
  L.pieces = middlePieces(c, m, bits);
  size_t p = 0;
  if (L.pieces > 1) {
    Chunks blocks;  // sizes alone: splitPieces reads maxLen
    equalBlocks(*c.inter, m, bits, &blocks, false);
    L.piece = splitPieces(*c.inter, blocks);
    p = alignUp(n * m * sizeof(float));
    L.reduced = p, p += alignUp(k * m * sizeof(float));
    L.middle = p, p += alignUp(mid);
  } else {
    p = std::max(alignUp(n * m * sizeof(float)), alignUp(mid));
  }
  L.node = p, p += alignUp(k * m * sizeof(float));
  L.out = p, p += alignUp(m * sizeof(float));
  L.total = p;
  return L;
}

size_t middleWire(const gradcompComm& c, size_t m, int bits, uint64_t calls) {
  return qsgdMethod(c) ? reduceScatterAlgorithm().wireBytes(*c.inter, m, bits)
                       : sparseReduceScatterWireBytes(*c.inter, m, calls);
}

// The in-node stages of a pipelined call, run by the reduce-scatter's hooks.
// In the in-node reduce-scatter piece q travels packed: local rank l's k
// pieces (of blocks R(0, l), ..., R(k-1, l)) one after the other, a block of
// k*len_q floats, so local rank l receives the node sums of piece q of its
// peers' blocks, node after node, and copies them into the middle stage's
// input (block n at n*m). Lanes as HierPipe's (hier.cc): kernels (widen,
// copies, conversions) on the compute lane, the in-node reduce-scatter on
// the node lane, the middle stage's transfers on the comm lane. Piece q+1's
// reduce-scatter is issued before piece q is copied and encoded, so the
// compute lane waits on none at once. Event slots (the reduce-scatter uses
// 0..2): kToNode hands compute work to the node lane (waited on at once),
// kReduced+q%2 marks reduce-scatter q done, waited on one piece after it is
// recorded, before the slot is recorded again. The last wait joins the node
// lane back into the caller's stream.
class HierRsPipe final : public PieceHooks {
 public:
  static constexpr int kToNode = 5, kReduced = 6;
  static_assert(kReduced + 2 <= Backend::kPipeEvents, "event slots");

  HierRsPipe(const CallArgs& a, const Layout& L, char* ws, float* out)
      : c_(*a.comm),
        be_(*c_.backend),
        a_(a),
        P_(L.piece),
        perm_(reinterpret_cast<float*>(ws + L.perm)),
        reduced_(reinterpret_cast<float*>(ws + L.reduced)),
        node_(reinterpret_cast<float*>(ws + L.node)),
        out_(out),
        divisor_(a.average ? (float)c_.nranks : 1.0f) {
    pieces = L.pieces;
  }

  gradcompResult_t start() { return reducePiece(0); }

  gradcompResult_t before(size_t q) override {
    if (q + 1 < pieces) GC_CHECK(reducePiece(q + 1));
    GC_CHECK(be_.wait(Backend::kComputeLane, kReduced + (int)(q % 2)));
    const size_t len = P_.len(a_.count, q), k = c_.topo.nodes;
    const float* src = reduced_ + k * start(q);
    for (size_t n = 0; n < k && len > 0; ++n) {
      GC_CHECK(be_.copy(node_ + n * a_.count + start(q), src + n * len, len * sizeof(float)));
    }
    return gradcompSuccess;
  }

  // Piece q of the result in the output type (Avg divides once, by N); an
  // fp32 Sum output already holds it.
  gradcompResult_t after(size_t q) override {
    const size_t len = P_.len(a_.count, q);
    if (out_ == a_.recv || len == 0) return gradcompSuccess;
    return be_.fromFloat(out_ + start(q), len, divisor_, a_.dtype,
                         static_cast<char*>(a_.recv) + start(q) * dtypeBytes(a_.dtype));
  }

 private:
  size_t start(size_t q) const { return q * P_.piece; }
  // Widens piece q of every block into its packed place and reduce-scatters
  // them inside the node.
  gradcompResult_t reducePiece(size_t q) {
    const Topology& t = c_.topo;
    const int G = t.localSize, k = t.nodes;
    const size_t len = P_.len(a_.count, q), m = a_.count;
    float* in = perm_ + (size_t)G * k * start(q);
    CallScratch& scratch = callScratch(c_);
    std::vector<size_t>&off = scratch.hierOff, &lens = scratch.hierLen;
    off.resize(c_.nranks);
    lens.assign(c_.nranks, len);
    for (int j = 0; j < G; ++j) {
      for (int n = 0; n < k; ++n) off[j * k + n] = (size_t)t.rankAt(n, j) * m + start(q);
    }
    GC_CHECK(widenBlocks(be_, a_.send, a_.dtype, off.data(), lens.data(), c_.nranks, len, in));
    GC_CHECK(be_.record(Backend::kComputeLane, kToNode));
    GC_CHECK(be_.wait(Backend::kNodeLane, kToNode));
    GC_CHECK(c_.intra->reduceScatter(in, reduced_ + (size_t)k * start(q), (size_t)k * len,
                                     ncclFloat32, ncclSum));
    return be_.record(Backend::kNodeLane, kReduced + (int)(q % 2));
  }

  gradcompComm& c_;
  Backend& be_;
  const CallArgs& a_;
  const Pieces& P_;
  float* perm_;
  float* reduced_;
  float* node_;
  float* out_;
  const float divisor_;
};

gradcompResult_t run(const CallArgs& a, void* workspace) {
  GC_NVTX_RANGE("gradcomp hier reduce-scatter");
  gradcompComm& c = *a.comm;
  Backend& be = *c.backend;
  BufferState& st = *a.state;
  const Topology& t = c.topo;
  const int G = t.localSize, k = t.nodes, l = t.localRank;
  const size_t m = a.count;
  const Layout L = layout(c, m, a.bits, st.residual != nullptr, st.calls);
  char* ws = static_cast<char*>(workspace);
  float* perm = reinterpret_cast<float*>(ws + L.perm);
  float* node = reinterpret_cast<float*>(ws + L.node);
  hierSetStreams(c);
  // Stage 2's output: straight into an fp32 Sum output, else into scratch
  // and one conversion.
  const bool direct = a.dtype == DType::F32 && !a.average;
  float* out = direct ? static_cast<float*>(a.recv) : reinterpret_cast<float*>(ws + L.out);
  if (st.unsharded) {
    // After momentum passes (their u and v in the state's block order, the
    // order of stage 1's input), the node's velocities summed into local rank
    // l's k blocks first, as stage 1 sums the gradients.
    std::vector<size_t>&off = callScratch(c).hierOff, &len = callScratch(c).hierLen;
    off.resize(c.nranks);
    len.assign(c.nranks, m);
    for (int b = 0; b < c.nranks; ++b) off[b] = (size_t)b * m;
    GC_CHECK(hierFoldState(c, st, off.data(), len.data(), c.nranks, m, perm, node, (size_t)k * m,
                           (size_t)l * k * m, (size_t)k * m));
  }
  BufferState view = hierStateView(st, (size_t)l * k * m, (size_t)k * m);
  CallArgs mid{c.inter.get(), node, out, m, DType::F32, false, &view, a.bits, a.step};

  // Pipelined: the in-node stages run piece by piece around the middle
  // stage's pieces (HierRsPipe), every rank the same pieces.
  if (L.pieces > 1) {
    NodeLane lane(*c.intra, be);
    HierRsPipe pipe(a, L, ws, out);
    GC_CHECK(pipe.start());
    mid.hooks = &pipe;
    uint64_t fallbacks = 0;
    GC_CHECK(runInterNode(c, middleAlgorithm(c), mid, ws + L.middle, &fallbacks));
    reportInterNode(c, fallbacks);
    return gradcompSuccess;
  }

  // 1. Permuting widen (every read of send, before recv, which may alias
  // it, is written), then the fp32 reduce-scatter inside the node.
  {
    GC_NVTX_RANGE("gradcomp intra reduce-scatter");
    std::vector<size_t>&off = callScratch(c).hierOff, &len = callScratch(c).hierLen;
    off.resize(c.nranks);
    len.assign(c.nranks, m);
    for (int j = 0; j < G; ++j) {
      for (int n = 0; n < k; ++n) off[j * k + n] = (size_t)t.rankAt(n, j) * m;
    }
    GC_CHECK(widenBlocks(be, a.send, a.dtype, off.data(), len.data(), c.nranks, m, perm));
    GC_CHECK(c.intra->reduceScatter(perm, node, (size_t)k * m, ncclFloat32, ncclSum));
  }

  // 2. Compressed reduce-scatter of the k node sums across nodes: the last
  // exchange.
  uint64_t fallbacks = 0;
  GC_CHECK(runInterNode(c, middleAlgorithm(c), mid, ws + L.middle, &fallbacks));
  reportInterNode(c, fallbacks);

  // 3. The output type; Avg divides once, by N.
  if (direct) return gradcompSuccess;
  return be.fromFloat(out, m, a.average ? (float)c.nranks : 1.0f, a.dtype, a.recv);
}

size_t workspaceSteady(const gradcompComm& c, size_t m, int bits) {
  return hierReduceScatterWorkspaceBytes(c, m, bits, false, kSteadyState);
}

size_t wireSteady(const gradcompComm& c, size_t m, int bits) {
  return hierReduceScatterWireBytes(c, m, bits, kSteadyState);
}

size_t interNodeSteady(const gradcompComm& c, size_t m, int bits) {
  return hierReduceScatterInterNodeBytes(c, m, bits, kSteadyState);
}

// The middle stage's pieces (QSGD only), which the in-node stages follow.
size_t piecesSteady(const gradcompComm& c, size_t m, int bits) {
  return middlePieces(c, m, bits);
}

}  // namespace

bool useHierReduceScatter(const gradcompComm& c) {
  return c.topo.hier() && c.inter && c.intra;
}

size_t hierReduceScatterWorkspaceBytes(const gradcompComm& c, size_t recvCount, int bits,
                                       bool haveResidual, uint64_t calls) {
  return layout(c, recvCount, bits, haveResidual, calls).total;
}

size_t hierReduceScatterWireBytes(const gradcompComm& c, size_t recvCount, int bits,
                                  uint64_t calls) {
  const size_t G = c.topo.localSize, k = c.topo.nodes;
  return (G - 1) * k * recvCount * sizeof(float) + middleWire(c, recvCount, bits, calls);
}

size_t hierReduceScatterInterNodeBytes(const gradcompComm& c, size_t recvCount, int bits,
                                       uint64_t calls) {
  return middleWire(c, recvCount, bits, calls);
}

const Algorithm& hierReduceScatterAlgorithm() {
  static const Algorithm algo = {
      gradcompAlgoHier, "hier-reducescatter", workspaceSteady, wireSteady, run,
      interNodeSteady,  piecesSteady};
  return algo;
}

}  // namespace gc
