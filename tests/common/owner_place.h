// Where a rank's owner residual (the re-encode error of the chunk it
// reduced) lies in an allreduce buffer of n elements, worked out from the
// algorithms' descriptions, not from the library's Algorithm::ownerSpan:
// two-shot's owner reduces chunk r of its N parts, the ring's final owner
// chunk r+1 mod N; on a hierarchical comm (nodes >= 2 of localSize >= 2)
// the middle stage runs one of them among the nodes on local rank l's
// shard l. None where the exchange is an allgather (algo auto or hier with
// 2 parts, or allgather) or Elias, or without the owner residual. For the
// CPU tests and the multirank check alike. Returns {offset, length}.
#pragma once

#include <stddef.h>

#include <utility>
#include <vector>

#include "gradcomp.h"
#include "tests/common/ref_algos.h"

namespace gctest {

inline std::pair<size_t, size_t> ownerPlace(const gradcompConfig_t& cfg, size_t n, int nranks,
                                            int rank, int nodes, int localSize, int node,
                                            int localRank) {
  const size_t d = cfg.bucketSize;
  size_t base = 0, len = n;
  int parts = nranks, j = rank;
  if (nodes >= 2 && localSize >= 2) {
    const std::vector<size_t> shard = ref::split(n, localSize, d);
    base = shard[localRank];
    len = shard[localRank + 1] - base;
    parts = nodes;
    j = node;
  }
  const bool allgather =
      cfg.algo == gradcompAlgoAllgather ||
      ((cfg.algo == gradcompAlgoAuto || cfg.algo == gradcompAlgoHier) && parts <= 2);
  if (allgather || cfg.elias || !cfg.ownerResidual) return {0, 0};
  if (cfg.algo == gradcompAlgoRing) j = (j + 1) % parts;
  const std::vector<size_t> off = ref::split(len, parts, d);
  return {base + off[j], off[j + 1] - off[j]};
}

}  // namespace gctest
