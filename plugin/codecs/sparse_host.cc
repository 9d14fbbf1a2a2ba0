// Host reference of the sparse selectors and slot operations. The CUDA
// kernels (kernels/sparse.cu) give the same slots and the same bits.
#include <algorithm>
#include <vector>

#include "codecs/sparse.h"

namespace gc {
namespace host {

using sparse::absKey;
using sparse::kEmptySlot;
using sparse::SelectRule;

double sparseSumSq(const void* x, DType t, size_t n) {
  const size_t chunks = (n + sparse::kNormChunk - 1) / sparse::kNormChunk;
  // Lane l of the second pass sums the partials of chunks l, l + kNormLanes,
  // ... in that order: each chunk's partial joins its lane as it is made,
  // the same additions in the same order as summing a stored array of the
  // partials, with no array (a clipped DGC call allocates nothing).
  double second[sparse::kNormLanes];
  for (int l = 0; l < sparse::kNormLanes; ++l) second[l] = 0.0;
  double lanes[sparse::kNormLanes];
  for (size_t c = 0; c < chunks; ++c) {
    for (int l = 0; l < sparse::kNormLanes; ++l) {
      double s = 0.0;
      for (int i = 0; i < sparse::kNormPerLane; ++i) {
        size_t j = c * sparse::kNormChunk + l + (size_t)i * sparse::kNormLanes;
        if (j < n) s = dadd(s, sparse::squareD(loadAsFloat(x, t, j)));
      }
      lanes[l] = s;
    }
    sparse::treeSumHost(lanes);
    double& lane = second[c % sparse::kNormLanes];
    lane = dadd(lane, lanes[0]);
  }
  sparse::treeSumHost(second);
  return second[0];
}

void sparseAccumulate(const void* g, DType t, size_t n, float clipThr, float m, float* u, float* v,
                      bool vIn, float* keep) {
  const float scale = clipThr > 0.0f ? sparse::clipScale(sparseSumSq(g, t, n), clipThr) : 1.0f;
  for (size_t i = 0; i < n; ++i) {
    sparse::accumulate(loadAsFloat(g, t, i), scale, m, u ? u + i : nullptr, v + i, vIn,
                       keep ? keep + i : nullptr);
  }
}

void sparseSettle(float* v, const float* keep, float* u, size_t n, bool clear) {
  for (size_t i = 0; i < n; ++i) {
    sparse::settle(v + i, keep ? keep[i] : 0.0f, u ? u + i : nullptr, clear);
  }
}

void sparseNonFiniteFlag(const float* v, size_t n, float* flag) {
  *flag = 0.0f;
  for (size_t i = 0; i < n; ++i) {
    if (!isFiniteBits(absKey(v[i]))) {
      *flag = sparse::nonFiniteFlag(v[i]);
      return;
    }
  }
}

void sparseApplyFlag(float* val, size_t k, const float* flag) {
  for (size_t j = 0; j < k; ++j) val[j] = sparse::flagged(val[j], *flag);
}

namespace {

// Fills at most `slots` in index order; returns how many entries qualify.
uint64_t selectByRule(const float* v, size_t n, const SelectRule& rule, uint32_t* idx, size_t slots,
                      uint64_t* selected) {
  size_t filled = 0;
  uint64_t eqSeen = 0, all = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t key = absKey(v[i]);
    bool take = key > rule.gt;
    if (!take && key == rule.eq) take = eqSeen++ < rule.need;
    if (!take) continue;
    if (filled < slots) idx[filled++] = (uint32_t)i;
    ++all;
  }
  *selected = filled;
  for (size_t j = filled; j < slots; ++j) idx[j] = kEmptySlot;
  return all;
}

}  // namespace

SelectRule exactRule(const float* v, size_t n, size_t k) {
  // Radix select, 8 bits at a time from the top: the k-th largest key T;
  // `remaining` ends as how many entries equal to T are still needed.
  uint32_t prefix = 0;
  uint64_t remaining = k;
  uint64_t hist[256];
  for (int shift = 24; shift >= 0; shift -= 8) {
    const uint32_t high = shift == 24 ? 0u : ~0u << (shift + 8);
    std::fill(hist, hist + 256, 0);
    for (size_t i = 0; i < n; ++i) {
      const uint32_t key = absKey(v[i]);
      if ((key & high) == prefix) hist[(key >> shift) & 0xffu]++;
    }
    for (int d = 255; d >= 0; --d) {
      if (hist[d] >= remaining || d == 0) {
        prefix |= (uint32_t)d << shift;
        break;
      }
      remaining -= hist[d];
    }
  }
  return SelectRule{prefix, prefix, remaining};
}

void selectExact(const float* v, size_t n, size_t k, uint32_t* idx, uint64_t* selected) {
  selectByRule(v, n, exactRule(v, n, k), idx, k, selected);
}

void selectThreshold(const float* v, size_t n, const sparse::Plan& p, uint64_t key, uint32_t* idx,
                     uint64_t* selected) {
  std::vector<uint32_t> sample(p.sample);
  selectThreshold(v, n, p, key, idx, selected, sample.data());
}

void selectThreshold(const float* v, size_t n, const sparse::Plan& p, uint64_t key, uint32_t* idx,
                     uint64_t* selected, uint32_t* s) {
  const size_t off = sparse::sampleOffset(key, p.offsetRange);
  for (size_t j = 0; j < p.sample; ++j)
    s[j] = absKey(v[sparse::sampleIndex(key, off, j, p.stride)]);
  std::nth_element(s, s + (p.sample - p.keep), s + p.sample);
  const uint64_t all =
      selectByRule(v, n, sparse::thresholdRule(s[p.sample - p.keep]), idx, p.kmax, selected);
  // More qualify than there are slots: the first kmax in index order might
  // leave a non-finite element out, and the output would be finite. Then
  // the slots carry the non-finite elements alone (the step is skipped, and
  // the finite ones stay in v for the next call).
  if (all > p.kmax) {
    uint64_t nonFinite = 0;
    for (size_t i = 0; i < n; ++i) nonFinite += !isFiniteBits(absKey(v[i]));
    if (nonFinite > 0) selectByRule(v, n, sparse::nonFiniteRule(), idx, p.kmax, selected);
  }
}

void sparseCommit(const uint32_t* idx, size_t slots, DType vt, void* val, float* v, float* u) {
  for (size_t j = 0; j < slots; ++j) {
    if (idx[j] == kEmptySlot) {
      storeFromFloat(val, vt, j, 0.0f);
      continue;
    }
    const float a = v[idx[j]];
    const float w = sparse::wireValue(a, vt);
    storeFromFloat(val, vt, j, w);
    v[idx[j]] = sparse::residualAfterSend(a, w);
    if (u && sparse::masksAfterSend(a)) u[idx[j]] = 0.0f;
  }
}

bool sparseScatterAdd(const uint32_t* idx, const void* val, DType vt, size_t slots, size_t n,
                      float* out) {
  for (size_t j = 0; j < slots; ++j) {
    if (!sparse::slotPairOk(idx[j], sparse::slotSuccessor(idx, slots, j), n)) return false;
  }
  for (size_t j = 0; j < slots && idx[j] != kEmptySlot; ++j) {
    out[idx[j]] = fadd(out[idx[j]], loadAsFloat(val, vt, j));
  }
  return true;
}

void sparseScatterAddDrawn(const uint32_t* idx, const float* val, size_t k, float* out) {
  for (size_t j = 0; j < k; ++j) out[idx[j]] = fadd(out[idx[j]], val[j]);
}

void randkIndices(size_t n, size_t k, uint64_t key, uint32_t* idx) {
  for (size_t j = 0; j < k; ++j) idx[j] = sparse::permute(key, (uint32_t)j, (uint32_t)n);
}

void sparseGather(float* v, const uint32_t* idx, size_t k, float* out, bool clear) {
  for (size_t j = 0; j < k; ++j) {
    const float a = v[idx[j]];
    out[j] = a;
    if (clear) v[idx[j]] = sparse::residualAfterSend(a, a);
  }
}

}  // namespace host
}  // namespace gc
