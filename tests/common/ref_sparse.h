// Serial reference of the sparse allreduce (top-k, DGC, rand-k): one call,
// all ranks, written from the description in plugin/algo_sparse.cc and
// docs/sparse.md on the shared math of kernels/sparse_math.cuh only (no
// library code), so the CPU tests and the multi-process GPU test check the
// library against the same model. Sums run in rank order from +0, as the
// sparse exchange and the CPU transport do; NCCL's fp32 allreduce (rand-k
// and the dense fallback on the GPU) may sum in another order for N > 2.
#pragma once

#include <math.h>
#include <stdint.h>

#include <cmath>
#include <algorithm>
#include <functional>
#include <vector>

#include "gradcomp.h"
#include "kernels/common_math.cuh"
#include "kernels/sparse_math.cuh"

namespace gctest {
namespace ref {

// Per-rank state of one buffer: v (the residual, when the method keeps one)
// and u (DGC momentum correction), plus the buffer's call count.
struct SparseState {
  std::vector<float> v, u;
  uint64_t calls = 0;
};

struct SparseCall {
  size_t k = 0, kmax = 0;
  bool dense = false;              // dense fallback taken
  bool rsum = false;               // the values went through an fp32 allreduce (rand-k, dense)
  std::vector<uint64_t> selected;  // per rank (sparse exchange only)
  // With rsum: sum of |term| over the ranks for each output element (0
  // where nothing was summed), to bound another summation order's error.
  std::vector<float> absSum;
};

inline gc::DType refDType(ncclDataType_t t) {
  return t == ncclFloat16 ? gc::DType::F16 : t == ncclBfloat16 ? gc::DType::BF16 : gc::DType::F32;
}

// Squared norm in double, in the order of sparse_math.cuh: lanes of a
// chunk, the pairwise lane tree, then the chunk partials by lane and the
// tree again.
inline double refSumSq(const std::vector<float>& g) {
  using namespace gc::sparse;
  const size_t n = g.size(), chunks = (n + kNormChunk - 1) / kNormChunk;
  std::vector<double> partial(chunks);
  double lanes[kNormLanes];
  for (size_t c = 0; c < chunks; ++c) {
    for (int l = 0; l < kNormLanes; ++l) {
      double s = 0.0;
      for (int i = 0; i < kNormPerLane; ++i) {
        const size_t j = c * kNormChunk + l + (size_t)i * kNormLanes;
        if (j < n) s = s + (double)g[j] * (double)g[j];
      }
      lanes[l] = s;
    }
    treeSumHost(lanes);
    partial[c] = lanes[0];
  }
  for (int l = 0; l < kNormLanes; ++l) {
    double s = 0.0;
    for (size_t j = l; j < chunks; j += kNormLanes) s = s + partial[j];
    lanes[l] = s;
  }
  treeSumHost(lanes);
  return lanes[0];
}

// Indices of v selected by `rule` in index order, at most `slots`.
inline std::vector<uint32_t> refSelectByRule(const std::vector<float>& v,
                                             const gc::sparse::SelectRule& rule, size_t slots) {
  std::vector<uint32_t> idx;
  uint64_t eqSeen = 0;
  for (size_t i = 0; i < v.size() && idx.size() < slots; ++i) {
    const uint32_t key = gc::sparse::absKey(v[i]);
    if (key > rule.gt || (key == rule.eq && eqSeen++ < rule.need)) idx.push_back((uint32_t)i);
  }
  return idx;
}

// Exact top-k: the k-th largest key, everything above it, and the first
// entries equal to it in index order until there are k.
inline std::vector<uint32_t> refTopkExact(const std::vector<float>& v, size_t k) {
  std::vector<uint32_t> keys(v.size());
  for (size_t i = 0; i < v.size(); ++i) keys[i] = gc::sparse::absKey(v[i]);
  std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), std::greater<uint32_t>());
  const uint32_t kth = keys[k - 1];
  uint64_t above = 0;
  for (float x : v) above += gc::sparse::absKey(x) > kth;
  // gt = kth works for kth = 0 too: nothing is below 0.
  return refSelectByRule(v, gc::sparse::SelectRule{kth, kth, k - above}, k);
}

// DGC threshold: the keep-th largest key of the stratified sample at the key's
// offset; nonzero entries at or above it, up to kmax. When more than kmax
// qualify and v holds NaN or Inf, the NaN/Inf entries alone, up to kmax
// (so none is left out of a call whose output must be non-finite).
inline std::vector<uint32_t> refTopkThreshold(const std::vector<float>& v,
                                              const gc::sparse::Plan& p, uint64_t key) {
  const size_t off = gc::sparse::sampleOffset(key, p.offsetRange);
  std::vector<uint32_t> s(p.sample);
  for (size_t j = 0; j < p.sample; ++j)
    s[j] = gc::sparse::absKey(v[gc::sparse::sampleIndex(key, off, j, p.stride)]);
  std::nth_element(s.begin(), s.begin() + (p.sample - p.keep), s.end());
  const uint32_t thr = s[p.sample - p.keep];
  size_t qualify = 0;
  std::vector<uint32_t> bad;
  for (size_t i = 0; i < v.size(); ++i) {
    const uint32_t key = gc::sparse::absKey(v[i]);
    qualify += key != 0 && key >= thr;  // nonzero at or above the threshold
    if (!std::isfinite(v[i])) bad.push_back((uint32_t)i);
  }
  if (qualify > p.kmax && !bad.empty()) {
    if (bad.size() > p.kmax) bad.resize(p.kmax);
    return bad;
  }
  return refSelectByRule(v, gc::sparse::thresholdRule(thr), p.kmax);
}

// What the sparse references derive from the config for a buffer of
// `count` elements at its call number: the plan (DGC's warm-up density), the
// wire value type, the state kept, DGC's clip threshold clipNorm*N^-1/2.
struct RefSparseSetup {
  bool dgc, randk, exact;
  gc::sparse::Plan p;
  gc::DType vt;
  size_t vb;
  bool keepV, haveU, masking;
  float clipThr;
};

inline RefSparseSetup refSparseSetup(const gradcompConfig_t& cfg, size_t count, int N,
                                     uint64_t calls) {
  using namespace gc::sparse;
  RefSparseSetup S;
  S.dgc = cfg.method == gradcompMethodDgc, S.randk = cfg.method == gradcompMethodRandk;
  S.exact = cfg.select == gradcompSelectExact;
  const double density =
      S.dgc ? warmupDensity(cfg.density, cfg.warmupSteps, calls) : (double)cfg.density;
  S.p = makePlan(count, density, S.exact, cfg.oversample, cfg.sampleRate);
  S.vt = refDType(cfg.valueType);
  S.vb = S.vt == gc::DType::F32 ? 4 : 2;
  S.keepV = cfg.errorFeedback || S.dgc;
  S.haveU = S.dgc && cfg.momentumCorrection;
  S.masking = S.haveU && cfg.momentumMasking;
  S.clipThr = S.dgc && cfg.clipNorm > 0.0f ? (float)(cfg.clipNorm / sqrt((double)N)) : 0.0f;
  return S;
}

// Elements whose v is not finite after step 1 (a NaN/Inf gradient), per
// rank, with v and u as they were before the call (the references then
// clear the whole state, as a call with a non-finite output does).
struct RefNonFinite {
  std::vector<std::vector<uint32_t>> at;
  std::vector<std::vector<float>> v, u;
  bool any() const {
    for (const auto& a : at)
      if (!a.empty()) return true;
    return false;
  }
};

// Step 1 on every rank, over all of g[r]: v = (v) + (u = m*u + s*g).
inline RefNonFinite refAccumulateAll(const gradcompConfig_t& cfg, const RefSparseSetup& S,
                                     const std::vector<std::vector<float>>& g,
                                     std::vector<SparseState>& st) {
  using namespace gc::sparse;
  RefNonFinite nf;
  nf.at.resize(g.size()), nf.v.resize(g.size()), nf.u.resize(g.size());
  for (size_t r = 0; r < g.size(); ++r) {
    SparseState& s = st[r];
    const size_t n = g[r].size();
    if (s.v.size() != n) s.v.assign(n, 0.0f);
    if (S.haveU && s.u.size() != n) s.u.assign(n, 0.0f);
    const float scale = S.clipThr > 0.0f ? clipScale(refSumSq(g[r]), S.clipThr) : 1.0f;
    for (size_t i = 0; i < n; ++i) {
      const float v0 = S.keepV ? s.v[i] : 0.0f, u0 = S.haveU ? s.u[i] : 0.0f;
      accumulate(g[r][i], scale, cfg.momentum, S.haveU ? &s.u[i] : nullptr, &s.v[i], S.keepV,
                 nullptr);
      if (!std::isfinite(s.v[i])) {
        nf.at[r].push_back((uint32_t)i);
        nf.v[r].push_back(v0);
        nf.u[r].push_back(u0);
      }
    }
  }
  return nf;
}

// After the exchange: the affected elements get their v and u back.
inline void refRestoreNonFinite(const RefNonFinite& nf, const RefSparseSetup& S,
                                std::vector<SparseState>& st) {
  for (size_t r = 0; r < nf.at.size(); ++r) {
    for (size_t q = 0; q < nf.at[r].size(); ++q) {
      st[r].v[nf.at[r][q]] = nf.v[r][q];
      if (S.haveU) st[r].u[nf.at[r][q]] = nf.u[r][q];
    }
  }
}

// Rand-k's flag: NaN at every drawn element when a rank's v held a non-finite
// value.
inline float refRandkNaN() {
  return gc::canonicalNaN();
}

// One selected element: its value travels in the value type, the output
// adds what arrives, v keeps exactly the rest, masking zeroes u there.
inline void refSendValue(float& out, float& v, float* u, gc::DType vt, bool masking) {
  using namespace gc::sparse;
  const float a = v;
  const float w = wireValue(a, vt);
  float sent = w;
  if (vt != gc::DType::F32) {
    uint16_t h;
    gc::storeFromFloat(&h, vt, 0, w);
    sent = gc::loadAsFloat(&h, vt, 0);
  }
  out = gc::fadd(out, sent);
  v = residualAfterSend(a, w);
  if (masking) *u = 0.0f;
}

// After a call whose output (any rank's, for a reduce-scatter) holds a NaN
// or an infinity: every rank's v and u are cleared (collective.h,
// discardStateIfNonFinite), so nothing of the step a loss scaler skips
// comes back.
inline bool refAnyNonFinite(const std::vector<float>& out) {
  for (float o : out)
    if (!std::isfinite(o)) return true;
  return false;
}
inline void refDiscardState(std::vector<SparseState>& st) {
  for (auto& s : st) {
    std::fill(s.v.begin(), s.v.end(), 0.0f);
    std::fill(s.u.begin(), s.u.end(), 0.0f);
  }
}

// The output: divided once for Avg, rounded once to t.
inline void refRoundOutput(std::vector<float>& out, gc::DType t, bool avg, int N) {
  for (float& o : out) {
    float x = avg ? gc::fdiv(o, (float)N) : o;
    if (t != gc::DType::F32) {
      uint16_t h;
      gc::storeFromFloat(&h, t, 0, x);
      x = gc::loadAsFloat(&h, t, 0);
    }
    o = x;
  }
}

// One gradcompAllReduce of all N ranks with config cfg (method topk, dgc or
// randk; errorFeedback, momentum..., as the comm has them) at comm step
// `step`: g[r] is rank r's input as floats (exact values of type t). Returns
// the output every rank holds, widened from t, and advances st. dropped
// (optional, one flag per rank): ranks whose slot lists arrive malformed,
// so every rank drops them whole; such a rank's v still gives up what it
// sent, but the output gets none of it.
inline std::vector<float> refSparse(const gradcompConfig_t& cfg, gc::DType t, bool avg,
                                    uint64_t step, const std::vector<std::vector<float>>& g,
                                    std::vector<SparseState>& st, SparseCall* info = nullptr,
                                    const std::vector<bool>* dropped = nullptr) {
  using namespace gc::sparse;
  const int N = (int)g.size();
  const size_t n = g[0].size();
  SparseCall call;
  if (N == 1) {  // one rank: passed through
    if (info) *info = call;
    return g[0];
  }
  const RefSparseSetup S = refSparseSetup(cfg, n, N, st[0].calls);
  const Plan& p = S.p;
  const bool randk = S.randk, masking = S.masking;
  call.k = p.k;
  call.kmax = p.kmax;
  call.dense = !randk && (size_t)N * p.kmax * (4 + S.vb) >= n * 4;
  call.rsum = randk || call.dense;

  const RefNonFinite nf = refAccumulateAll(cfg, S, g, st);

  std::vector<float> out(n, 0.0f);
  if (randk) {
    // Rank 0's key on every rank: the same k indices.
    const uint64_t key = gc::deriveKey(cfg.seed, step, 0, kRandkStream);
    std::vector<uint32_t> idx(p.k);
    for (size_t j = 0; j < p.k; ++j) idx[j] = permute(key, (uint32_t)j, (uint32_t)n);
    std::vector<float> val(p.k, 0.0f);
    call.absSum.assign(n, 0.0f);
    for (int r = 0; r < N; ++r) {
      for (size_t j = 0; j < p.k; ++j) {
        val[j] = gc::fadd(val[j], st[r].v[idx[j]]);
        call.absSum[idx[j]] += fabsf(st[r].v[idx[j]]);
        st[r].v[idx[j]] = 0.0f;
      }
    }
    if (nf.any()) std::fill(val.begin(), val.end(), refRandkNaN());
    for (size_t j = 0; j < p.k; ++j) out[idx[j]] = gc::fadd(out[idx[j]], val[j]);
  } else if (call.dense) {
    call.absSum.assign(n, 0.0f);
    for (int r = 0; r < N; ++r) {
      for (size_t i = 0; i < n; ++i) {
        out[i] = gc::fadd(out[i], st[r].v[i]);
        call.absSum[i] += fabsf(st[r].v[i]);
      }
      // Nothing delayed: u kept (no masking), the step momentum SGD's.
      std::fill(st[r].v.begin(), st[r].v.end(), 0.0f);
    }
  } else {
    for (int r = 0; r < N; ++r) {
      SparseState& s = st[r];
      const std::vector<uint32_t> idx =
          S.exact
              ? refTopkExact(s.v, p.k)
              : refTopkThreshold(s.v, p, gc::deriveKey(cfg.seed, step, (uint64_t)r, kSelectStream));
      call.selected.push_back(idx.size());
      // The value travels in the value type; v keeps exactly the rest.
      float lost = 0.0f;  // what a dropped list would have added
      const bool drop = dropped && (*dropped)[r];
      for (uint32_t i : idx)
        refSendValue(drop ? lost : out[i], s.v[i], masking ? &s.u[i] : nullptr, S.vt, masking);
    }
  }
  refRestoreNonFinite(nf, S, st);
  for (auto& s : st) s.calls++;
  if (!S.keepV) {
    for (auto& s : st) s.v.clear();  // a fresh v next call
  }
  refRoundOutput(out, t, avg, N);
  if (refAnyNonFinite(out)) refDiscardState(st);
  if (info) *info = call;
  return out;
}

}  // namespace ref
}  // namespace gctest
