// Serial reference of the compressed reduce-scatter (one call, all ranks),
// written from its description (docs/algorithms.md "Reduce-scatter") on the
// public host codecs and the shared math only, not from the library's code.
// Rank i's input is N blocks of m elements; rank j receives block j.
#pragma once

#include <math.h>
#include <stdint.h>

#include <vector>

#include "tests/common/ref_algos.h"
#include "tests/common/ref_sparse.h"

namespace gctest {
namespace ref {

// QSGD: rank i encodes block j (g + residual, error feedback) with the key
// (seed, step, i, j) for every j != i, keeps block i in full precision (its
// residual there spent); owner j sums in rank order in fp32, converts once.
// R[i].residual holds N*m floats and is advanced. Returns each rank's block.
inline std::vector<std::vector<float>> refReduceScatter(std::vector<Rank>& R, DType t, size_t m,
                                                        const gradcompConfig_t& c, int bits,
                                                        uint64_t step, bool avg) {
  const int N = (int)R.size(), d = c.bucketSize;
  std::vector<std::vector<std::vector<uint8_t>>> e(N, std::vector<std::vector<uint8_t>>(N));
  std::vector<std::vector<float>> own(N, std::vector<float>(m));
  for (int i = 0; i < N; ++i) {
    std::vector<float> x = widen(R[i], t, N * m);
    for (int j = 0; j < N; ++j) {
      float* res = c.errorFeedback ? R[i].residual.data() + j * m : nullptr;
      if (j != i) {
        e[i][j] =
            enc(x.data() + j * m, DType::F32, res, m, bits, d, gc::deriveKey(c.seed, step, i, j));
        continue;
      }
      for (size_t k = 0; k < m; ++k) {
        own[i][k] = res ? gc::fadd(x[j * m + k], res[k]) : x[j * m + k];
        if (res) res[k] = 0.0f;
      }
    }
  }
  std::vector<std::vector<float>> out(N);
  for (int j = 0; j < N; ++j) {
    std::vector<float> acc(m, 0.0f);
    for (int i = 0; i < N; ++i) {
      if (i == j) {
        for (size_t k = 0; k < m; ++k) acc[k] = i == 0 ? own[j][k] : gc::fadd(acc[k], own[j][k]);
      } else {
        dec(e[i][j], m, bits, d, acc.data(), i != 0);
      }
    }
    out[j] = finish(acc, t, avg ? (float)N : 1.0f);
  }
  return out;
}

// Sparse methods: v += g over the whole input (DGC clipping over the whole
// input, momentum correction); for each block j of rank i != j, top-k / DGC
// selects from block j alone with the plan of m elements (threshold key
// (seed, step, i, kSelectStream + j)), rand-k takes the indices of
// (seed, step, 0, kRandkStream + j), and a block whose slots would not be
// smaller than 4m bytes goes whole as fp32; owner j sums from +0 in rank
// order, its own block of v in full precision (v spent there, u kept).
// g[i] holds N*m floats (exact values of type t); st is advanced.
inline std::vector<std::vector<float>> refSparseReduceScatter(
    const gradcompConfig_t& cfg, gc::DType t, bool avg, uint64_t step,
    const std::vector<std::vector<float>>& g, std::vector<SparseState>& st) {
  using namespace gc::sparse;
  const int N = (int)g.size();
  const size_t m = g[0].size() / N;
  const bool dgc = cfg.method == gradcompMethodDgc, randk = cfg.method == gradcompMethodRandk;
  const bool exact = cfg.select == gradcompSelectExact;
  const double density =
      dgc ? warmupDensity(cfg.density, cfg.warmupSteps, st[0].calls) : (double)cfg.density;
  const Plan p = makePlan(m, density, exact, cfg.oversample, cfg.sampleRate);
  const gc::DType vt = refDType(cfg.valueType);
  const size_t vb = vt == gc::DType::F32 ? 4 : 2;
  const bool keepV = cfg.errorFeedback || dgc;
  const bool haveU = dgc && cfg.momentumCorrection;
  const bool masking = haveU && cfg.momentumMasking;
  const bool dense = !randk && p.kmax * (4 + vb) >= m * 4;
  const float clipThr = dgc && cfg.clipNorm > 0.0f ? (float)(cfg.clipNorm / sqrt((double)N)) : 0.0f;

  for (int i = 0; i < N; ++i) {
    SparseState& s = st[i];
    if (s.v.size() != N * m) s.v.assign(N * m, 0.0f);
    if (haveU && s.u.size() != N * m) s.u.assign(N * m, 0.0f);
    const float scale = clipThr > 0.0f ? clipScale(refSumSq(g[i]), clipThr) : 1.0f;
    for (size_t k = 0; k < N * m; ++k) {
      accumulate(g[i][k], scale, cfg.momentum, haveU ? &s.u[k] : nullptr, &s.v[k], keepV);
    }
  }

  std::vector<std::vector<float>> out(N, std::vector<float>(m, 0.0f));
  std::vector<uint16_t> h(1);
  for (int j = 0; j < N; ++j) {
    std::vector<float>& o = out[j];
    for (int i = 0; i < N; ++i) {
      float* v = st[i].v.data() + j * m;
      float* u = haveU ? st[i].u.data() + j * m : nullptr;
      if (i == j) {
        for (size_t k = 0; k < m; ++k) o[k] = gc::fadd(o[k], v[k]), v[k] = 0.0f;
      } else if (randk) {
        const uint64_t key = gc::deriveKey(cfg.seed, step, 0, kRandkStream + j);
        for (size_t q = 0; q < p.k; ++q) {
          const uint32_t idx = permute(key, (uint32_t)q, (uint32_t)m);
          o[idx] = gc::fadd(o[idx], v[idx]);
          v[idx] = 0.0f;
        }
      } else if (dense) {
        for (size_t k = 0; k < m; ++k) {
          o[k] = gc::fadd(o[k], v[k]);
          v[k] = 0.0f;
          if (masking) u[k] = 0.0f;
        }
      } else {
        std::vector<float> blk(v, v + m);
        const std::vector<uint32_t> idx =
            exact ? refTopkExact(blk, p.k)
                  : refTopkThreshold(blk, p, gc::deriveKey(cfg.seed, step, i, kSelectStream + j));
        for (uint32_t q : idx) {
          const float a = v[q];
          const float w = wireValue(a, vt);
          float sent = w;
          if (vt != gc::DType::F32) {
            gc::storeFromFloat(h.data(), vt, 0, w);
            sent = gc::loadAsFloat(h.data(), vt, 0);
          }
          o[q] = gc::fadd(o[q], sent);
          v[q] = residualAfterSend(a, w);
          if (masking) u[q] = 0.0f;
        }
      }
    }
  }
  for (auto& s : st) {
    s.calls++;
    if (!keepV) s.v.clear();
  }
  std::vector<uint16_t> hb(m);
  for (auto& o : out) {
    for (size_t k = 0; k < m; ++k) {
      float x = avg ? gc::fdiv(o[k], (float)N) : o[k];
      if (t != gc::DType::F32) {
        gc::storeFromFloat(hb.data(), t, k, x);
        x = gc::loadAsFloat(hb.data(), t, k);
      }
      o[k] = x;
    }
  }
  return out;
}

}  // namespace ref
}  // namespace gctest
