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
// R[i].residual holds N*m floats and is advanced (every rank's cleared when
// any block is not finite). Returns each rank's block.
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
        e[i][j] = enc(x.data() + j * m, DType::F32, res, m, bits, d,
                      gc::deriveKey(c.seed, step, i, j), nearest(c), square(c));
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
  for (const std::vector<float>& o : out) refDiscardIfNonFinite(R, o);
  return out;
}

// Sparse methods: v += g over the whole input (DGC clipping over the whole
// input, momentum correction); for each block j of rank i != j, top-k / DGC
// selects from block j alone with the plan of m elements (threshold key
// (seed, step, i, kSelectStream + j)), rand-k takes the indices of
// (seed, step, 0, kRandkStream + j), and a block whose slots would not be
// smaller than 4m bytes goes whole as fp32; owner j sums from +0 in rank
// order, its own block of v in full precision (v spent there, u kept).
// g[i] holds N*m floats (exact values of type t); st is advanced. selected
// (optional) receives stats.selectedLast of every rank: the slots it filled
// for its peers (selected, k, or m for a dense block) plus its own m.
// dropped (optional, one flag per rank): ranks whose slot lists arrive
// malformed at every owner, which drops them whole; such a rank's v still
// gives up what it sent, its own block is summed as always.
inline std::vector<std::vector<float>> refSparseReduceScatter(
    const gradcompConfig_t& cfg, gc::DType t, bool avg, uint64_t step,
    const std::vector<std::vector<float>>& g, std::vector<SparseState>& st,
    std::vector<uint64_t>* selected = nullptr, const std::vector<bool>* dropped = nullptr) {
  using namespace gc::sparse;
  const int N = (int)g.size();
  const size_t m = g[0].size() / N;
  const RefSparseSetup S = refSparseSetup(cfg, m, N, st[0].calls);
  const Plan& p = S.p;
  const bool randk = S.randk, haveU = S.haveU, masking = S.masking;
  const bool dense = !randk && p.kmax * (4 + S.vb) >= m * 4;
  const RefNonFinite nf = refAccumulateAll(cfg, S, g, st);

  std::vector<std::vector<float>> out(N, std::vector<float>(m, 0.0f));
  std::vector<uint64_t> filled(N, m);
  for (int j = 0; j < N; ++j) {
    std::vector<float>& o = out[j];
    for (int i = 0; i < N; ++i) {
      float* v = st[i].v.data() + j * m;
      float* u = haveU ? st[i].u.data() + j * m : nullptr;
      if (i != j) filled[i] += randk ? p.k : dense ? m : 0;
      if (i == j) {
        for (size_t k = 0; k < m; ++k) o[k] = gc::fadd(o[k], v[k]), v[k] = 0.0f;
      } else if (randk) {
        // Block j of rank i holding a non-finite v: the k values arrive as NaN.
        bool flag = false;
        for (uint32_t e : nf.at[i]) flag |= e / m == (size_t)j;
        const uint64_t key = gc::deriveKey(cfg.seed, step, 0, kRandkStream + j);
        for (size_t q = 0; q < p.k; ++q) {
          const uint32_t idx = permute(key, (uint32_t)q, (uint32_t)m);
          o[idx] = gc::fadd(o[idx], flag ? refRandkNaN() : v[idx]);
          v[idx] = 0.0f;
        }
      } else if (dense) {
        // A dense block delays nothing: u kept, as for the own block.
        for (size_t k = 0; k < m; ++k) {
          o[k] = gc::fadd(o[k], v[k]);
          v[k] = 0.0f;
        }
      } else {
        std::vector<float> blk(v, v + m);
        const std::vector<uint32_t> idx =
            S.exact ? refTopkExact(blk, p.k)
                    : refTopkThreshold(blk, p, gc::deriveKey(cfg.seed, step, i, kSelectStream + j));
        filled[i] += idx.size();
        float lost = 0.0f;  // what a dropped list would have added
        const bool drop = dropped && (*dropped)[i];
        for (uint32_t q : idx)
          refSendValue(drop ? lost : o[q], v[q], masking ? &u[q] : nullptr, S.vt, masking);
      }
    }
  }
  if (selected) *selected = filled;
  refRestoreNonFinite(nf, S, st);
  for (auto& s : st) {
    s.calls++;
    if (!S.keepV) s.v.clear();
  }
  bool discard = false;
  for (auto& o : out) {
    refRoundOutput(o, t, avg, N);
    discard |= refAnyNonFinite(o);
  }
  if (discard) refDiscardState(st);
  return out;
}

}  // namespace ref
}  // namespace gctest
