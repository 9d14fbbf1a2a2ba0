// Sparse methods (top-k, DGC, rand-k) with error feedback.
//
// Top-k / DGC, sparse allgather:
//   1. v += g (DGC: g clipped to clipNorm*N^-1/2, momentum correction
//      u = m*u + g, v += u).
//   2. Select from |v| into kmax fixed slots (DGC threshold sampling or
//      exact top-k), index order; the values go on the wire in the value
//      type and v keeps exactly what was not sent (masking also zeroes u).
//   3. Allgather of the fixed-size slots (direct sends, allGatherDirect);
//      every rank scatter-adds the N ranks' slots into a zeroed fp32 output
//      in rank order, so the result is deterministic and identical
//      everywhere; Avg divides once. A rank's list that is not well-formed
//      (sparse::slotPairOk) is dropped whole, alike on every rank, and
//      counted (stats.peerSlotsRejected).
//   Dense fallback when N*kmax*(4 + value bytes) >= 4*count: all of v goes
//   through an fp32 allreduce (density 1, error feedback still exact).
// Rand-k: k indices from a key shared by all ranks, an fp32 allreduce of the
// k values of v and a non-finite flag (sparse::nonFiniteFlag), scattered
// into a zeroed output; v keeps the rest.
// Non-finite v (a NaN/Inf gradient): it reaches the output (selected first,
// or through rand-k's flag) and the element's v and u end as they were
// before the call: accumulate saves the old v in `keep`, settle puts it back.
// The entry point then clears the whole state on every rank, the output
// being non-finite (collective.h, discardStateIfNonFinite).
#include <math.h>

#include "algorithms/algorithms.h"
#include "checks.h"
#include "codecs/qsgd.h"
#include "backends/sparse_ops.h"

namespace gc {
namespace {

constexpr uint64_t kSteadyState = ~0ull;  // a call number past any warm-up
using sparse::kRandkStream;
using sparse::kSelectStream;

struct Layout {
  sparse::Plan plan;
  DType vt = DType::F32;
  bool dense = false;
  size_t valOff = 0, slotBytes = 0;
  size_t gather = 0, out = 0, v = 0, keep = 0, ridx = 0, rval = 0, scratch = 0, total = 0;
};

bool randk(const gradcompComm& c) {
  return c.cfg.method == gradcompMethodRandk;
}

Layout layout(const gradcompComm& c, size_t count, DType t, bool haveResidual, uint64_t calls) {
  Layout L;
  L.plan = sparsePlan(c, count, calls, &L.vt);
  const size_t vb = dtypeBytes(L.vt), kmax = L.plan.kmax, N = c.nranks;
  L.valOff = alignUp(kmax * 4, 16);
  L.slotBytes = L.valOff + alignUp(kmax * vb, 16);
  L.dense = !randk(c) && N * kmax * (4 + vb) >= count * 4;
  size_t p = 0;
  if (randk(c)) {
    L.ridx = p, p += alignUp(L.plan.k * 4);
    L.rval = p, p += alignUp((L.plan.k + 1) * 4);  // k values, then the flag
  } else if (!L.dense) {
    L.gather = p, p += alignUp(N * L.slotBytes);
  }
  if (t != DType::F32) L.out = p, p += alignUp(count * 4);
  if (!haveResidual) L.v = p, p += alignUp(count * 4);
  if (haveResidual) L.keep = p, p += alignUp(count * 4);
  L.scratch = p, p += alignUp(sparseScratch(c, count, L.plan, !randk(c) && !L.dense));
  L.total = p;
  return L;
}

// Bytes to `peers` of the other ranks (all of them: N-1).
size_t wire(const gradcompComm& c, const Layout& L, size_t count, size_t peers) {
  const size_t N = c.nranks;
  if (randk(c)) return 2 * peers * (L.plan.k + 1) * 4 / N;  // ring allreduce of k floats + flag
  if (L.dense) return 2 * peers * count * 4 / N;
  return peers * L.slotBytes;
}

size_t workspaceBytesSteady(const gradcompComm& c, size_t count, int) {
  return layout(c, count, DType::F16, c.keepsResidual(), kSteadyState).total;
}

size_t wireBytesSteady(const gradcompComm& c, size_t count, int) {
  return wire(c, layout(c, count, DType::F32, true, kSteadyState), count, c.nranks - 1);
}

size_t interNodeBytesSteady(const gradcompComm& c, size_t count, int) {
  return sparseInterNodeBytes(c, count, kSteadyState);
}

gradcompResult_t run(const CallArgs& a, void* workspace) {
  gradcompComm& c = *a.comm;
  Backend& be = *c.backend;
  SparseOps& ops = *c.sparse;
  const int N = c.nranks;
  const size_t n = a.count;
  BufferState& st = *a.state;
  const Layout L = layout(c, n, a.dtype, st.residual != nullptr, st.calls);
  char* ws = static_cast<char*>(workspace);
  void* scratch = ws + L.scratch;
  float* v = st.residual ? st.residual : reinterpret_cast<float*>(ws + L.v);
  float* keep = st.residual ? reinterpret_cast<float*>(ws + L.keep) : nullptr;
  float* u = c.cfg.method == gradcompMethodDgc ? st.momentum : nullptr;
  const float clipThr = sparseClipThreshold(c);
  ops.setStream(be.stream());
  GC_CHECK(ops.resetSelected());

  // 1. Accumulate (the send buffer is read before recv, which may alias it,
  // is written).
  GC_CHECK(ops.accumulate(a.send, a.dtype, n, clipThr, c.cfg.momentum, u, v, st.residual != nullptr,
                          keep, scratch));
  float* out =
      a.dtype == DType::F32 ? static_cast<float*>(a.recv) : reinterpret_cast<float*>(ws + L.out);
  float* mask = u && c.cfg.momentumMasking ? u : nullptr;

  if (randk(c)) {
    uint32_t* idx = reinterpret_cast<uint32_t*>(ws + L.ridx);
    float* val = reinterpret_cast<float*>(ws + L.rval);
    // Rank 0's coordinates for every rank: the indices must agree.
    KeySpec key{c.cfg.seed, a.step, be.deviceStep(), 0, kRandkStream, true};
    GC_CHECK(ops.randkIndices(n, L.plan.k, key, idx));
    GC_CHECK(ops.gather(v, idx, L.plan.k, val, true));
    GC_CHECK(ops.nonFiniteFlag(v, n, val + L.plan.k));
    GC_CHECK(c.transport->allReduceSumFloat(val, val, L.plan.k + 1));
    GC_CHECK(ops.applyFlag(val, L.plan.k, val + L.plan.k));
    GC_CHECK(be.zero(out, n * 4));
    GC_CHECK(ops.scatterAddDrawn(idx, val, L.plan.k, out));
    if (keep) GC_CHECK(ops.settle(v, keep, nullptr, n, false));
  } else if (L.dense) {
    // All of v goes, nothing is delayed: u is kept (no masking), so the step
    // is momentum SGD's, as a passed-through call's and the reduce-scatter's
    // own block. Masking every u would make each such call plain SGD.
    GC_CHECK(c.transport->allReduceSumFloat(v, out, n));
    GC_CHECK(ops.settle(v, keep, nullptr, n, true));
    c.stats.denseFallbacks++;
  } else {
    char* gather = ws + L.gather;
    char* slot = gather + (size_t)c.rank * L.slotBytes;  // our block of the gather, in place
    GC_CHECK(sparseSelect(c, v, n, L.plan, c.key(a.step, kSelectStream), L.vt, slot, L.valOff, mask,
                          scratch));
    if (keep) GC_CHECK(ops.settle(v, keep, nullptr, n, false));
    GC_CHECK(allGatherDirect(*c.transport, gather, L.slotBytes, L.slotBytes));
    GC_CHECK(be.zero(out, n * 4));
    GC_CHECK(ops.checkReceived(gather, L.slotBytes, N, -1, L.plan.kmax, n));
    for (int r = 0; r < N; ++r) {
      const char* s = gather + (size_t)r * L.slotBytes;
      GC_CHECK(ops.scatterAddReceived(reinterpret_cast<const uint32_t*>(s), s + L.valOff, L.vt,
                                      L.plan.kmax, n, out, r));
    }
  }
  const float divisor = a.average ? (float)N : 1.0f;
  if (!(a.dtype == DType::F32 && divisor == 1.0f)) {
    GC_CHECK(be.fromFloat(out, n, divisor, a.dtype, a.recv));
  }
  GC_CHECK(ops.publishSelected());
  notePeerSlotsRejected(c);
  c.stats.selectedLast = L.dense ? n : ops.lastSelected();
  c.stats.targetLast = L.plan.k;
  return gradcompSuccess;
}

}  // namespace

size_t sparseWorkspaceBytes(const gradcompComm& c, size_t count, DType t, bool haveResidual,
                            uint64_t calls) {
  return layout(c, count, t, haveResidual, calls).total;
}

size_t sparseWireBytes(const gradcompComm& c, size_t count, uint64_t calls) {
  return wire(c, layout(c, count, DType::F32, true, calls), count, c.nranks - 1);
}

size_t sparseInterNodeBytes(const gradcompComm& c, size_t count, uint64_t calls) {
  return wire(c, layout(c, count, DType::F32, true, calls), count, c.remotePeers());
}

const Algorithm& sparseAllgatherAlgorithm() {
  static const Algorithm algo = {
      gradcompAlgoSparseAllgather, "sparse", workspaceBytesSteady, wireBytesSteady, run,
      interNodeBytesSteady};
  return algo;
}

const Algorithm& randkAlgorithm() {
  static const Algorithm algo = {
      gradcompAlgoSparseAllgather, "randk", workspaceBytesSteady, wireBytesSteady, run,
      interNodeBytesSteady};
  return algo;
}

}  // namespace gc
