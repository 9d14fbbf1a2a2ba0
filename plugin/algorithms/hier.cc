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

struct Layout {
  std::vector<size_t> off;  // shard k is [off[k], off[k+1])
  size_t shardMax = 0, myOff = 0, myLen = 0;
  size_t padded = 0, shard = 0, middle = 0, total = 0;
  size_t len(int k) const { return off[k + 1] - off[k]; }
};

Layout layout(const gradcompComm& c, size_t count, int bits, uint64_t calls) {
  Layout L;
  const int G = c.topo.localSize, j = c.topo.localRank;
  L.off.resize(G + 1);
  splitAligned(count, G, c.cfg.bucketSize, L.off.data());
  for (int k = 0; k < G; ++k) L.shardMax = std::max(L.shardMax, L.len(k));
  L.myOff = L.off[j];
  L.myLen = L.len(j);
  size_t p = 0;
  L.padded = p, p += alignUp(G * L.shardMax * sizeof(float));  // also the allgather buffer
  L.shard = p, p += alignUp(L.shardMax * sizeof(float));
  L.middle = p, p += middleWorkspace(c, L.myLen, bits, calls);
  L.total = p;
  return L;
}

gradcompResult_t run(const CallArgs& a, void* workspace) {
  GC_NVTX_RANGE("gradcomp hier");
  gradcompComm& c = *a.comm;
  Backend& be = *c.backend;
  BufferState& st = *a.state;
  const int G = c.topo.localSize, j = c.topo.localRank;
  const Layout L = layout(c, a.count, a.bits, st.calls);
  char* ws = static_cast<char*>(workspace);
  float* padded = reinterpret_cast<float*>(ws + L.padded);
  float* shard = reinterpret_cast<float*>(ws + L.shard);
  const size_t esz = dtypeBytes(a.dtype), m = L.shardMax;
  const char* send = static_cast<const char*>(a.send);
  char* recv = static_cast<char*>(a.recv);
  const bool unpadded = (size_t)G * m == a.count;  // every shard is m long
  gradcompComm& inter = *c.inter;
  hierSetStreams(c);

  // 1. fp32 reduce-scatter inside the node (send is read before recv, which
  // may alias it, is written).
  const void* in = send;
  if (!(unpadded && a.dtype == DType::F32)) {
    std::vector<size_t> len(G);
    for (int k = 0; k < G; ++k) len[k] = L.len(k);
    GC_CHECK(widenBlocks(be, send, a.dtype, L.off.data(), len.data(), G, m, padded));
    in = padded;
  }
  GC_CHECK(c.intra->reduceScatter(in, shard, m, ncclFloat32, ncclSum));

  // 2. Compressed allreduce of the shard across nodes, in place.
  if (L.myLen) {
    BufferState view = hierStateView(st, L.myOff, L.myLen);
    CallArgs mid{&inter, shard, shard, L.myLen, DType::F32, false, &view, a.bits, a.step};
    GC_CHECK(runInterNode(c, middleAlgorithm(c, L.myLen), mid, ws + L.middle));
  }

  // 3. Allgather of the reduced shards in the buffer type.
  const float divisor = a.average ? (float)c.nranks : 1.0f;
  char* gather = unpadded ? recv : reinterpret_cast<char*>(padded);
  char* mine = gather + (size_t)j * m * esz;
  if (L.myLen) GC_CHECK(be.fromFloat(shard, L.myLen, divisor, a.dtype, mine));
  GC_CHECK(c.intra->allGather(mine, gather, m * esz));
  if (!unpadded) {
    for (int k = 0; k < G; ++k) {
      if (L.len(k)) GC_CHECK(be.copy(recv + L.off[k] * esz, gather + k * m * esz, L.len(k) * esz));
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

gradcompResult_t runInterNode(gradcompComm& c, const Algorithm& algo, const CallArgs& mid,
                              void* workspace) {
  gradcompComm& inter = *c.inter;
  const uint64_t fallbacks = inter.stats.denseFallbacks;
  GC_CHECK(algo.run(mid, workspace));
  c.stats.denseFallbacks += inter.stats.denseFallbacks - fallbacks;
  c.stats.selectedLast = inter.stats.selectedLast;
  c.stats.targetLast = inter.stats.targetLast;
  return gradcompSuccess;
}

bool useHier(const gradcompComm& c) {
  // Elias codes QSGD levels: the sparse methods do not read it.
  const bool elias = c.cfg.elias && c.cfg.method == gradcompMethodQsgd;
  return c.topo.hier() && c.inter && c.intra && !elias;
}

size_t hierWorkspaceBytes(const gradcompComm& c, size_t count, int bits, uint64_t calls) {
  return layout(c, count, bits, calls).total;
}

size_t hierWireBytes(const gradcompComm& c, size_t count, DType t, int bits, uint64_t calls) {
  const Layout L = layout(c, count, bits, calls);
  const size_t G = c.topo.localSize;
  return (G - 1) * L.shardMax * (sizeof(float) + dtypeBytes(t)) +
         middleWire(c, L.myLen, bits, calls);
}

size_t hierInterNodeBytes(const gradcompComm& c, size_t count, int bits, uint64_t calls) {
  const Layout L = layout(c, count, bits, calls);
  return middleWire(c, L.myLen, bits, calls);
}

// The middle stage's pieces on this rank's shard.
static size_t hierPieces(const gradcompComm& c, size_t count, int bits) {
  if (sparseMethod(c)) return 1;
  const Layout L = layout(c, count, bits, kSteadyState);
  const Algorithm& mid = middleAlgorithm(c, L.myLen);
  return mid.pieces != nullptr && L.myLen > 0 ? mid.pieces(*c.inter, L.myLen, bits) : 1;
}

const Algorithm& hierAlgorithm() {
  static const Algorithm algo = {gradcompAlgoHier, "hier",    workspaceSteady, wireSteady, run,
                                 interNodeSteady,  hierPieces};
  return algo;
}

}  // namespace gc
