// Compressed reduce-scatter for the sparse methods (top-k, DGC, rand-k) with
// error feedback. Rank r's input is N blocks of m = recvcount elements; each
// destination block is selected on its own into fixed slots:
//   1. v += g over the whole input (DGC: g clipped to clipNorm*N^-1/2 over
//      the whole input, momentum correction u = m*u + g, v += u).
//   2. For each peer block j: top-k / DGC select from |v| of block j (plan
//      and warm-up density of m elements, threshold key (seed, step, r,
//      kSelectStream + j)) into kmax slots (u32 index in the block + value
//      in the value type), v keeps exactly what was not sent, masking zeroes
//      u where sent; rand-k takes k indices of block j from the key
//      (seed, step, 0, kRandkStream + j), the same on every rank, and sends
//      their fp32 values and the block's non-finite flag (0 or NaN, see
//      sparse::nonFiniteFlag; a NaN flag makes the k values NaN at the
//      owner); a block for which the slots would be no
//      smaller than the block (kmax*(4+value bytes) >= 4m) goes as fp32 values
//      (dense, v cleared there).
//   3. All-to-all of the fixed-size slots.
//   4. Owner r sums in rank order into a zeroed fp32 block: scatter-adds of
//      the peers' slots, and its own block of v in full precision (v there
//      is then spent; u is kept: with nothing delayed, momentum correction is
//      plain momentum). Converted once to the output type, Avg divides once.
//      A peer's list that is not well-formed (sparse::slotPairOk) is dropped
//      whole and counted (stats.peerSlotsRejected).
// A non-finite v reaches its block's owner (selected first, flagged or in
// the owner's own block) and the element's v and u end as they were before
// the call (accumulate saves the old v in `keep`, settle puts it back); the
// entry point then clears the whole state on every rank (collective.h,
// discardStateIfNonFinite).
// Bytes each rank sends: (N-1) * slot bytes.
#include <math.h>

#include <vector>

#include "algorithms/algorithms.h"
#include "backends/sparse_ops.h"
#include "checks.h"
#include "codecs/qsgd.h"
#include "nvtx.h"

namespace gc {
namespace {

constexpr uint64_t kSteadyState = ~0ull;  // a call number past any warm-up
using sparse::kRandkStream;
using sparse::kSelectStream;

enum class Payload { Sparse, Randk, Dense };

struct Layout {
  sparse::Plan plan;
  DType vt = DType::F32;
  Payload payload = Payload::Sparse;
  size_t valOff = 0, slotBytes = 0;
  size_t sendSlots = 0, recvSlots = 0, idx = 0, out = 0, v = 0, keep = 0, scratch = 0, total = 0;
};

Layout layout(const gradcompComm& c, size_t m, DType, bool haveResidual, uint64_t calls) {
  Layout L;
  L.plan = sparsePlan(c, m, calls, &L.vt);
  const size_t vb = dtypeBytes(L.vt), kmax = L.plan.kmax, n = c.nranks;
  if (c.cfg.method == gradcompMethodRandk) {
    L.payload = Payload::Randk;
    L.slotBytes = alignUp((L.plan.k + 1) * 4, 16);  // k values, then the flag
  } else if (kmax * (4 + vb) >= m * 4) {
    L.payload = Payload::Dense;
    L.slotBytes = alignUp(m * 4, 16);
  } else {
    L.valOff = alignUp(kmax * 4, 16);
    L.slotBytes = L.valOff + alignUp(kmax * vb, 16);
  }
  size_t p = 0;
  L.sendSlots = p, p += alignUp(n * L.slotBytes);
  L.recvSlots = p, p += alignUp(n * L.slotBytes);
  if (L.payload == Payload::Randk) L.idx = p, p += alignUp(L.plan.k * 4);
  L.out = p, p += alignUp(m * 4);  // unused for an fp32 Sum, which sums into recv
  if (!haveResidual) L.v = p, p += alignUp(n * m * 4);
  if (haveResidual) L.keep = p, p += alignUp(n * m * 4);
  L.scratch = p, p += alignUp(sparseScratch(c, n * m, L.plan, L.payload == Payload::Sparse));
  L.total = p;
  return L;
}

size_t workspaceBytesSteady(const gradcompComm& c, size_t m, int) {
  return layout(c, m, DType::F16, c.keepsResidual(), kSteadyState).total;
}

size_t wireBytesSteady(const gradcompComm& c, size_t m, int) {
  return (size_t)(c.nranks - 1) * layout(c, m, DType::F32, true, kSteadyState).slotBytes;
}

gradcompResult_t run(const CallArgs& a, void* workspace) {
  gradcompComm& c = *a.comm;
  Backend& be = *c.backend;
  SparseOps& ops = *c.sparse;
  const int n = c.nranks, r = c.rank;
  const size_t m = a.count;
  BufferState& st = *a.state;
  const Layout L = layout(c, m, a.dtype, st.residual != nullptr, st.calls);
  char* ws = static_cast<char*>(workspace);
  void* scratch = ws + L.scratch;
  float* v = st.residual ? st.residual : reinterpret_cast<float*>(ws + L.v);
  float* keep = st.residual ? reinterpret_cast<float*>(ws + L.keep) : nullptr;
  float* u = c.cfg.method == gradcompMethodDgc ? st.momentum : nullptr;
  float* mask = u && c.cfg.momentumMasking ? u : nullptr;
  const float clipThr = sparseClipThreshold(c);
  ops.setStream(be.stream());
  char* sendSlots = ws + L.sendSlots;
  char* recvSlots = ws + L.recvSlots;
  uint32_t* ridx = reinterpret_cast<uint32_t*>(ws + L.idx);
  auto randkKey = [&](int block) {
    return KeySpec{c.cfg.seed, a.step, be.deviceStep(), 0, kRandkStream + (uint64_t)block, true};
  };

  // 1. Accumulate: all of send is read here, before recv (which may alias
  // block r) is written.
  GC_CHECK(ops.accumulate(a.send, a.dtype, n * m, clipThr, c.cfg.momentum, u, v,
                          st.residual != nullptr, keep, scratch));

  // 2. Fill the peers' slots. The selections' count is summed by the sparse
  // ops (on CUDA on the device, where each select leaves it).
  uint64_t selected = 0;
  GC_CHECK(ops.resetSelected());
  {
    GC_NVTX_RANGE("gradcomp select");
    for (int j = 0; j < n; ++j) {
      if (j == r) continue;
      char* slot = sendSlots + j * L.slotBytes;
      float* vj = v + j * m;
      float* keepj = keep ? keep + j * m : nullptr;
      if (L.payload == Payload::Randk) {
        float* val = reinterpret_cast<float*>(slot);
        GC_CHECK(ops.randkIndices(m, L.plan.k, randkKey(j), ridx));
        GC_CHECK(ops.gather(vj, ridx, L.plan.k, val, true));
        GC_CHECK(ops.nonFiniteFlag(vj, m, val + L.plan.k));
        if (keep) GC_CHECK(ops.settle(vj, keepj, nullptr, m, false));
        selected += L.plan.k;
      } else if (L.payload == Payload::Dense) {
        GC_CHECK(be.copy(slot, vj, m * 4));
        // Nothing delayed: u kept, as for the own block (sparse.cc's dense fallback).
        GC_CHECK(ops.settle(vj, keepj, nullptr, m, true));
        selected += m;
      } else {
        GC_CHECK(sparseSelect(c, vj, m, L.plan, c.key(a.step, kSelectStream + j), L.vt, slot,
                              L.valOff, mask ? mask + j * m : nullptr, scratch));
        if (keep) GC_CHECK(ops.settle(vj, keepj, nullptr, m, false));
      }
    }
  }

  // 3. All-to-all.
  {
    GC_NVTX_RANGE("gradcomp exchange");
    // The comm's argument arrays (CallScratch, ScatterSum's: the QSGD
    // exchange never runs in the same call).
    CallScratch& scratch = callScratch(c);
    std::vector<const void*>& sendPtr = scratch.sendPtr;
    std::vector<void*>& recvPtr = scratch.recvPtr;
    std::vector<size_t>& bytes = scratch.sendBytes;
    sendPtr.resize(n);
    recvPtr.resize(n);
    bytes.resize(n);
    for (int j = 0; j < n; ++j) {
      sendPtr[j] = sendSlots + j * L.slotBytes;
      recvPtr[j] = recvSlots + j * L.slotBytes;
      bytes[j] = j == r ? 0 : L.slotBytes;
    }
    GC_CHECK(c.transport->allToAll(sendPtr.data(), bytes.data(), recvPtr.data(), bytes.data()));
  }

  // 4. Owner: sum in rank order from +0.
  GC_NVTX_RANGE("gradcomp reduce");
  const bool direct = a.dtype == DType::F32 && !a.average;
  float* out = direct ? static_cast<float*>(a.recv) : reinterpret_cast<float*>(ws + L.out);
  if (L.payload == Payload::Randk) GC_CHECK(ops.randkIndices(m, L.plan.k, randkKey(r), ridx));
  GC_CHECK(be.zero(out, m * 4));
  if (L.payload == Payload::Sparse) {
    GC_CHECK(ops.checkReceived(recvSlots, L.slotBytes, n, r, L.plan.kmax, m));
  }
  for (int i = 0; i < n; ++i) {
    char* slot = recvSlots + i * L.slotBytes;
    if (i == r) {
      GC_CHECK(be.add(out, v + r * m, m));
    } else if (L.payload == Payload::Randk) {
      float* val = reinterpret_cast<float*>(slot);
      GC_CHECK(ops.applyFlag(val, L.plan.k, val + L.plan.k));
      GC_CHECK(ops.scatterAddDrawn(ridx, val, L.plan.k, out));
    } else if (L.payload == Payload::Dense) {
      GC_CHECK(be.add(out, reinterpret_cast<const float*>(slot), m));
    } else {
      GC_CHECK(ops.scatterAddReceived(reinterpret_cast<const uint32_t*>(slot), slot + L.valOff,
                                      L.vt, L.plan.kmax, m, out, i));
    }
  }
  GC_CHECK(ops.settle(v + r * m, keep ? keep + r * m : nullptr, nullptr, m, true));
  // Published after the scatter-adds, so the count of rejected lists
  // includes this call's.
  GC_CHECK(ops.publishSelected());
  notePeerSlotsRejected(c);
  if (L.payload == Payload::Sparse) selected = ops.lastSelected();
  if (L.payload == Payload::Dense) c.stats.denseFallbacks++;
  c.stats.selectedLast = selected + m;
  c.stats.targetLast = (n - 1) * L.plan.k + m;
  if (direct) return gradcompSuccess;
  return be.fromFloat(out, m, a.average ? (float)n : 1.0f, a.dtype, a.recv);
}

}  // namespace

size_t sparseReduceScatterWorkspaceBytes(const gradcompComm& c, size_t recvCount, DType t,
                                         bool haveResidual, uint64_t calls) {
  return layout(c, recvCount, t, haveResidual, calls).total;
}

size_t sparseReduceScatterWireBytes(const gradcompComm& c, size_t recvCount, uint64_t calls) {
  return (size_t)(c.nranks - 1) * layout(c, recvCount, DType::F32, true, calls).slotBytes;
}

const Algorithm& sparseReduceScatterAlgorithm() {
  static const Algorithm algo = {gradcompAlgoSparseAllgather,
                                 "sparse-reducescatter",
                                 workspaceBytesSteady,
                                 wireBytesSteady,
                                 run,
                                 [](const gradcompComm& c, size_t m, int bits) {
                                   return allToAllInterNodeBytes(c, wireBytesSteady(c, m, bits));
                                 }};
  return algo;
}

}  // namespace gc
