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

struct Layout {
  // The middle stage's workspace reuses the widened input's, dead by then.
  size_t perm = 0, middle = 0, node = 0, out = 0, total = 0;
};

Layout layout(const gradcompComm& c, size_t m, int bits, bool haveResidual, uint64_t calls) {
  Layout L;
  const size_t n = c.nranks, k = c.topo.nodes;
  const size_t mid = qsgdMethod(c) ? reduceScatterAlgorithm().workspaceBytes(*c.inter, m, bits)
                                   : sparseReduceScatterWorkspaceBytes(*c.inter, m, DType::F32,
                                                                       haveResidual, calls);
  size_t p = std::max(alignUp(n * m * sizeof(float)), alignUp(mid));
  L.node = p, p += alignUp(k * m * sizeof(float));
  L.out = p, p += alignUp(m * sizeof(float));
  L.total = p;
  return L;
}

size_t middleWire(const gradcompComm& c, size_t m, int bits, uint64_t calls) {
  return qsgdMethod(c) ? reduceScatterAlgorithm().wireBytes(*c.inter, m, bits)
                       : sparseReduceScatterWireBytes(*c.inter, m, calls);
}

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

  // 1. Permuting widen (every read of send, before recv, which may alias
  // it, is written), then the fp32 reduce-scatter inside the node.
  {
    GC_NVTX_RANGE("gradcomp intra reduce-scatter");
    std::vector<size_t> off(c.nranks), len(c.nranks, m);
    for (int j = 0; j < G; ++j) {
      for (int n = 0; n < k; ++n) off[j * k + n] = (size_t)t.rankAt(n, j) * m;
    }
    GC_CHECK(widenBlocks(be, a.send, a.dtype, off.data(), len.data(), c.nranks, m, perm));
    GC_CHECK(c.intra->reduceScatter(perm, node, (size_t)k * m, ncclFloat32, ncclSum));
  }

  // 2. Compressed reduce-scatter of the k node sums across nodes: straight
  // into an fp32 Sum output, else into scratch and one conversion.
  const bool direct = a.dtype == DType::F32 && !a.average;
  float* out = direct ? static_cast<float*>(a.recv) : reinterpret_cast<float*>(ws + L.out);
  BufferState view = hierStateView(st, (size_t)l * k * m, (size_t)k * m);
  CallArgs mid{c.inter.get(), node, out, m, DType::F32, false, &view, a.bits, a.step};
  GC_CHECK(runInterNode(c, middleAlgorithm(c), mid, ws + L.middle));

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

// The middle stage's pieces (it pipelines itself, QSGD only); the in-node
// stages run whole.
size_t piecesSteady(const gradcompComm& c, size_t m, int bits) {
  const Algorithm& mid = middleAlgorithm(c);
  return mid.pieces != nullptr ? mid.pieces(*c.inter, m, bits) : 1;
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
