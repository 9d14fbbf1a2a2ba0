// Received sparse slot lists, for the tests of the wire rule on both
// backends: the rule written out from its description (docs/sparse.md,
// "Received slots"), the serial sum a receiver must produce, and one set of
// lists of 8 ranks, well-formed and malformed, that the CPU and the GPU
// tests both feed to their backend's SparseOps.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <random>
#include <vector>

#include "kernels/sparse_math.cuh"
#include "tests/common/test_util.h"

namespace gctest {
namespace ref {

// A list is well-formed iff its filled slots are a prefix, strictly
// increasing and below n, and every slot after them is empty.
inline bool refSlotListWellFormed(const uint32_t* idx, size_t slots, size_t n) {
  const uint32_t empty = gc::sparse::kEmptySlot;
  size_t filled = 0;
  while (filled < slots && idx[filled] != empty) ++filled;
  for (size_t j = filled; j < slots; ++j) {
    if (idx[j] != empty) return false;
  }
  for (size_t j = 0; j < filled; ++j) {
    if (idx[j] >= n || (j > 0 && idx[j - 1] >= idx[j])) return false;
  }
  return true;
}

// What a receiver adds from the lists (fp32 values), in rank and slot order
// from +0: every well-formed list, nothing of the others. *dropped (when
// not null) receives how many lists were left out.
inline std::vector<float> refSumWellFormedLists(const std::vector<std::vector<uint32_t>>& idx,
                                                const std::vector<std::vector<float>>& val,
                                                size_t n, uint64_t* dropped = nullptr) {
  std::vector<float> out(n, 0.0f);
  uint64_t left = 0;
  for (size_t r = 0; r < idx.size(); ++r) {
    const size_t slots = idx[r].size();
    if (!refSlotListWellFormed(idx[r].data(), slots, n)) {
      ++left;
      continue;
    }
    for (size_t j = 0; j < slots && idx[r][j] != gc::sparse::kEmptySlot; ++j) {
      out[idx[r][j]] += val[r][j];
    }
  }
  if (dropped) *dropped = left;
  return out;
}

// The slot lists of 8 ranks over n = 50000 elements, 4096 slots each, as
// selectors write them (sorted distinct indices, then empty slots; rank 6
// fills every slot), five of them then broken: a duplicate next to its twin
// (rank 1), two distinct slots swapped (2), an index equal to n (4), a filled
// slot after an empty one (5), a duplicate thousands of slots from its twin
// (7). On a GPU the two duplicates fall in one block of threads and in two.
struct RefSlotLists {
  size_t n = 50000, slots = 4096;
  std::vector<std::vector<uint32_t>> idx;
  std::vector<std::vector<float>> val;
  std::vector<bool> wellFormed;  // by construction, for the tests to check the rule against
};

inline RefSlotLists refMalformedSlotLists() {
  RefSlotLists L;
  const size_t ranks = 8, n = L.n, slots = L.slots;
  const uint32_t empty = gc::sparse::kEmptySlot;
  std::mt19937_64 rng(16006);
  L.idx.resize(ranks);
  L.val.resize(ranks);
  for (size_t r = 0; r < ranks; ++r) {
    std::vector<uint32_t> pick(n);
    for (size_t i = 0; i < n; ++i) pick[i] = (uint32_t)i;
    std::shuffle(pick.begin(), pick.end(), rng);
    const size_t filled = r == 6 ? slots : slots - 1 - rng() % 500;
    std::sort(pick.begin(), pick.begin() + filled);
    L.idx[r].assign(slots, empty);
    std::copy(pick.begin(), pick.begin() + filled, L.idx[r].begin());
    L.val[r] = normal(slots, 100 + r);
  }
  L.idx[1][2001] = L.idx[1][2000];
  std::swap(L.idx[2][10], L.idx[2][3000]);
  L.idx[4][100] = (uint32_t)n;
  L.idx[5][0] = empty;
  L.idx[7][4000 - 500] = L.idx[7][3];
  L.wellFormed = {true, false, false, true, false, false, true, false};
  return L;
}

}  // namespace ref
}  // namespace gctest
