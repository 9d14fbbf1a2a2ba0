// Serial reference of the hierarchical allreduce (docs/algorithms.md, "hier"),
// one call, all ranks, written from its description on top of the flat
// references: N ranks in nodes of L consecutive ranks; the buffer is cut into
// L bucket-aligned shards; local rank j of node k holds the fp32 sum of shard
// j over its node (local-rank order); the ranks of local rank j (one per node,
// ranked by node) run the flat algorithm on that shard with the seed mixed
// with j and their residual slices; the results are converted to the buffer
// type (Avg divides by N once) and gathered in every node.
#pragma once

#include <vector>

#include "plugin/topology.h"
#include "tests/common/ref_algos.h"
#include "tests/common/ref_sparse.h"

namespace gctest {
namespace ref {

// Node sum of shard [lo, lo+len) for node k, in local-rank order, in fp32.
inline std::vector<float> nodeShardSum(const std::vector<std::vector<float>>& x, int k, int L,
                                       size_t lo, size_t len) {
  std::vector<float> s(len);
  for (int i = 0; i < L; ++i) {
    const std::vector<float>& xi = x[k * L + i];
    for (size_t e = 0; e < len; ++e) s[e] = i == 0 ? xi[lo + e] : s[e] + xi[lo + e];
  }
  return s;
}

// QSGD: `mid` is the flat algorithm across nodes (twoshot, ring or allgather).
// R holds every rank's input and state (residual over the whole buffer,
// owner residual), updated as the library updates them (cleared after a
// non-finite output).
inline std::vector<float> refHier(std::vector<Rank>& R, DType t, size_t n,
                                  const gradcompConfig_t& c, uint64_t step, bool avg, int L,
                                  gradcompAlgo_t mid) {
  const int N = (int)R.size(), nodes = N / L;
  std::vector<std::vector<float>> x(N);
  for (int i = 0; i < N; ++i) x[i] = widen(R[i], t, n);
  const std::vector<size_t> off = split(n, L, c.bucketSize);
  std::vector<float> sum(n);
  for (int j = 0; j < L; ++j) {
    const size_t lo = off[j], len = off[j + 1] - off[j];
    if (len == 0) continue;
    std::vector<Rank> S(nodes);
    for (int k = 0; k < nodes; ++k) {
      const Rank& g = R[k * L + j];
      S[k].f32 = nodeShardSum(x, k, L, lo, len);
      S[k].residual.assign(g.residual.begin() + lo, g.residual.begin() + lo + len);
      S[k].ownerRes = g.ownerRes;
    }
    gradcompConfig_t sc = c;
    sc.seed = gc::hierSeed(c.seed, j);
    const std::vector<float> out =
        mid == gradcompAlgoTwoShot ? refTwoShot(S, DType::F32, len, sc, step, false)
        : mid == gradcompAlgoRing  ? refRing(S, DType::F32, len, sc, step, false)
                                   : refAllgather(S, DType::F32, len, sc, step, false);
    for (int k = 0; k < nodes; ++k) {
      Rank& g = R[k * L + j];
      std::copy(S[k].residual.begin(), S[k].residual.end(), g.residual.begin() + lo);
      g.ownerRes = S[k].ownerRes;
    }
    std::copy(out.begin(), out.end(), sum.begin() + lo);
  }
  // Every rank clears its whole state (all shards) on a non-finite output.
  std::vector<float> res = finish(sum, t, avg ? (float)N : 1.0f);
  refDiscardIfNonFinite(R, res);
  return res;
}

// Sparse methods: g[r] is rank r's input as floats (exact values of type t);
// st[j] holds the per-node states of shard j (created on first use).
// dropped (optional, one flag per node): the nodes whose slot lists arrive
// malformed in shard droppedShard's middle stage, where every node drops
// them whole (refSparse's dropped).
inline std::vector<float> refHierSparse(const gradcompConfig_t& c, DType t, bool avg, uint64_t step,
                                        const std::vector<std::vector<float>>& g,
                                        std::vector<std::vector<SparseState>>& st, int L,
                                        int droppedShard = -1,
                                        const std::vector<bool>* dropped = nullptr) {
  const int N = (int)g.size(), nodes = N / L;
  const size_t n = g[0].size();
  const std::vector<size_t> off = split(n, L, c.bucketSize);
  st.resize(L);
  std::vector<float> sum(n);
  for (int j = 0; j < L; ++j) {
    const size_t lo = off[j], len = off[j + 1] - off[j];
    if (len == 0) continue;
    std::vector<std::vector<float>> S(nodes);
    for (int k = 0; k < nodes; ++k) S[k] = nodeShardSum(g, k, L, lo, len);
    st[j].resize(nodes);
    gradcompConfig_t sc = c;
    sc.seed = gc::hierSeed(c.seed, j);
    const std::vector<float> out = refSparse(sc, DType::F32, false, step, S, st[j], nullptr,
                                             j == droppedShard ? dropped : nullptr);
    std::copy(out.begin(), out.end(), sum.begin() + lo);
  }
  std::vector<float> res = finish(sum, t, avg ? (float)N : 1.0f);
  // Every rank clears its whole state (all shards) on a non-finite output.
  if (refAnyNonFinite(res)) {
    for (auto& s : st) refDiscardState(s);
  }
  return res;
}

}  // namespace ref
}  // namespace gctest
