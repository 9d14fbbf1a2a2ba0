// Serial reference of the hierarchical compressed reduce-scatter (one call,
// all ranks), written from its description (docs/algorithms.md,
// "Reduce-scatter", hierarchical variant) on top of the flat references of
// ref_rs.h: N ranks in k nodes of L ranks, R(n, l) the rank of local rank l
// on node n (`at[n*L + l]`; empty: consecutive blocks, n*L + l); rank i's input is N blocks of m.
// Local rank l of node n holds the fp32 node sums (local-rank order) of blocks R(0, l), ..., R(k-1,
// l); the ranks of local rank l (one per node, ranked by node) run the flat compressed
// reduce-scatter on those k blocks with the seed mixed with l and the slice
// [l*k*m, (l+1)*k*m) of their residuals; node n's result is block R(n, l),
// converted to the buffer type (Avg divides by N once).
#pragma once

#include <vector>

#include "plugin/topology.h"
#include "tests/common/ref_rs.h"

namespace gctest {
namespace ref {

inline std::vector<int> blockRanks(int N) {
  std::vector<int> at(N);
  for (int i = 0; i < N; ++i) at[i] = i;
  return at;
}

// Node n's fp32 sums of the blocks of local rank l's peers, in node order.
inline std::vector<float> hierRsNodeSums(const std::vector<std::vector<float>>& x, int L, int n,
                                         int l, size_t m, const std::vector<int>& at) {
  const int k = (int)x.size() / L;
  std::vector<float> s((size_t)k * m);
  for (int p = 0; p < k; ++p) {
    const size_t src = (size_t)at[p * L + l] * m;
    for (int i = 0; i < L; ++i) {
      const std::vector<float>& xi = x[at[n * L + i]];
      for (size_t e = 0; e < m; ++e) {
        s[p * m + e] = i == 0 ? xi[src + e] : gc::fadd(s[p * m + e], xi[src + e]);
      }
    }
  }
  return s;
}

// QSGD. R[i].residual holds N*m floats and is advanced (only the slice of
// rank i's local rank is used; all of it cleared when any block is not
// finite). Returns each rank's block.
inline std::vector<std::vector<float>> refHierReduceScatter(std::vector<Rank>& R, DType t, size_t m,
                                                            const gradcompConfig_t& c, int bits,
                                                            uint64_t step, bool avg, int L,
                                                            std::vector<int> at = {}) {
  const int N = (int)R.size(), k = N / L;
  if (at.empty()) at = blockRanks(N);
  std::vector<std::vector<float>> x(N), out(N);
  for (int i = 0; i < N; ++i) x[i] = widen(R[i], t, N * m);
  for (int l = 0; l < L; ++l) {
    std::vector<Rank> S(k);
    for (int n = 0; n < k; ++n) {
      const std::vector<float>& res = R[at[n * L + l]].residual;
      S[n].f32 = hierRsNodeSums(x, L, n, l, m, at);
      S[n].residual.assign(res.begin() + l * k * m, res.begin() + (l + 1) * k * m);
    }
    gradcompConfig_t sc = c;
    sc.seed = gc::hierSeed(c.seed, l);
    const std::vector<std::vector<float>> o =
        refReduceScatter(S, DType::F32, m, sc, bits, step, false);
    for (int n = 0; n < k; ++n) {
      std::copy(S[n].residual.begin(), S[n].residual.end(),
                R[at[n * L + l]].residual.begin() + l * k * m);
      out[at[n * L + l]] = finish(o[n], t, avg ? (float)N : 1.0f);
    }
  }
  // Every rank clears its whole residual (all slices) when any block is not finite.
  for (const std::vector<float>& o : out) refDiscardIfNonFinite(R, o);
  return out;
}

// Sparse methods: g[i] is rank i's input as floats (exact values of type t);
// st[l][n] is the state of rank R(n, l)'s slice (created on first use).
// dropped (optional, one flag per node): the nodes whose slot lists arrive
// malformed in local rank droppedLocal's middle stage, where every owner
// drops them whole (refSparseReduceScatter's dropped).
inline std::vector<std::vector<float>> refHierSparseReduceScatter(
    const gradcompConfig_t& c, DType t, bool avg, uint64_t step,
    const std::vector<std::vector<float>>& g, std::vector<std::vector<SparseState>>& st, int L,
    std::vector<int> at = {}, int droppedLocal = -1, const std::vector<bool>* dropped = nullptr) {
  const int N = (int)g.size(), k = N / L;
  if (at.empty()) at = blockRanks(N);
  const size_t m = g[0].size() / N;
  st.resize(L, std::vector<SparseState>(k));
  std::vector<std::vector<float>> out(N);
  for (int l = 0; l < L; ++l) {
    std::vector<std::vector<float>> sums(k);
    for (int n = 0; n < k; ++n) sums[n] = hierRsNodeSums(g, L, n, l, m, at);
    gradcompConfig_t sc = c;
    sc.seed = gc::hierSeed(c.seed, l);
    const std::vector<std::vector<float>> o = refSparseReduceScatter(
        sc, DType::F32, false, step, sums, st[l], nullptr, l == droppedLocal ? dropped : nullptr);
    for (int n = 0; n < k; ++n) out[at[n * L + l]] = finish(o[n], t, avg ? (float)N : 1.0f);
  }
  // Every rank clears its whole state (all slices) when any block is not finite.
  bool discard = false;
  for (const auto& o : out) discard |= refAnyNonFinite(o);
  if (discard) {
    for (auto& s : st) refDiscardState(s);
  }
  return out;
}

}  // namespace ref
}  // namespace gctest
