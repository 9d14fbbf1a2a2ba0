// CUDA kernels of the sparse methods. Same results as the host reference
// (plugin/codecs/sparse_host.cc): the selection rule is computed on the
// device (sample sort or radix select), then a deterministic compaction
// writes the selected indices in index order: one pass with a decoupled
// look-back for the exact rule, staged runs placed by a scan of the tiles'
// counts for the threshold rule. No host sync, fixed sizes, capturable.
#include <cub/cub.cuh>
#include <cuda/std/functional>

#include "plugin/codecs/sparse.h"
#include "sparse_math.cuh"

namespace gc {
namespace cuda {
namespace {

using sparse::absKey;
using sparse::kEmptySlot;
using sparse::SelectRule;

constexpr int kThreads = 256;
constexpr int kItems = 16;
constexpr size_t kTile = (size_t)kThreads * kItems;
static_assert(sparse::kNormLanes == kThreads && sparse::kNormPerLane == kItems, "norm layout");

int blocksFor(size_t n) {
  size_t b = (n + kThreads - 1) / kThreads;
  return (int)(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

struct RadixState {
  uint32_t prefix;
  uint32_t pad;
  unsigned long long remaining;
  unsigned int hist[256];
};

// The compaction's running counts: (selected above the rule) << 32 | (equal
// to its tie key). Both totals are at most n < 2^32, so the packed sum never
// carries from one half into the other, and one scan gives both prefixes.
using TileState = gradcomp_cub::cub::ScanTileState<unsigned long long>;
using PrefixOp =
    gradcomp_cub::cub::TilePrefixCallbackOp<unsigned long long,
                                            ::cuda::std::plus<unsigned long long>, TileState>;

// Scratch layout (all offsets 256-aligned). `staging`: the staged
// compaction's buffers (stagingLayout), when the layout has kmax > 0.
struct Scratch {
  size_t tiles, chunks;
  size_t tileState, tileStateBytes, selected, radix, rule, keys, sorted, partial, scale, temp,
      tempBytes, staging, stagingBytes, total;
};

// The sample's count for the sort, the same type in the size query and the
// call. A sample may exceed INT_MAX (n < 2^32 - 1 with a sample rate near
// 1); an int count would be negative there.
uint32_t sortCount(size_t m) {
  return (uint32_t)m;
}

size_t up(size_t x) {
  return (x + 255) / 256 * 256;
}

size_t stagingBytes(size_t n, size_t kmax);

Scratch layout(size_t n, size_t m, size_t kmax = 0) {
  Scratch s{};
  s.tiles = (n + kTile - 1) / kTile;
  s.chunks = (n + sparse::kNormChunk - 1) / sparse::kNormChunk;
  size_t sortBytes = 0;
  gradcomp_cub::cub::DeviceRadixSort::SortKeys(nullptr, sortBytes, (const uint32_t*)nullptr,
                                               (uint32_t*)nullptr, sortCount(m > 0 ? m : 1));
  s.tempBytes = sortBytes;
  TileState::AllocationSize((int)(s.tiles > 0 ? s.tiles : 1), s.tileStateBytes);
  size_t p = 0;
  s.tileState = p, p += up(s.tileStateBytes);
  s.selected = p, p += up(sizeof(unsigned long long));
  s.radix = p, p += up(sizeof(RadixState));
  s.rule = p, p += up(sizeof(SelectRule));
  s.keys = p, p += up(m * 4);
  s.sorted = p, p += up(m * 4);
  s.partial = p, p += up(s.chunks * sizeof(double));
  s.scale = p, p += up(4);
  s.temp = p, p += up(s.tempBytes);
  s.stagingBytes = kmax > 0 ? stagingBytes(n, kmax) : 0;
  s.staging = p, p += up(s.stagingBytes);
  s.total = p;
  return s;
}

template <typename T>
T* at(void* base, size_t off) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + off);
}

// The compaction's non-finite flag: the word after the selected count, in the
// same 256-byte slot.
unsigned int* nonFiniteFlag(void* scratch, const Scratch& L) {
  return reinterpret_cast<unsigned int*>(at<unsigned long long>(scratch, L.selected) + 1);
}

// ---------------------------------------------------------------- clipping
__global__ void sumSqChunkKernel(const void* __restrict__ x, DType t, size_t n,
                                 double* __restrict__ partial) {
  __shared__ double a[kThreads];
  const int l = threadIdx.x;
  const size_t base = (size_t)blockIdx.x * kTile;
  double s = 0.0;
  for (int i = 0; i < kItems; ++i) {
    size_t j = base + l + (size_t)i * kThreads;
    if (j < n) s = dadd(s, sparse::squareD(loadAsFloat(x, t, j)));
  }
  a[l] = s;
  __syncthreads();
  for (int st = kThreads / 2; st > 0; st >>= 1) {
    if (l < st) a[l] = dadd(a[l], a[l + st]);
    __syncthreads();
  }
  if (l == 0) partial[blockIdx.x] = a[0];
}

__global__ void sumSqFinalKernel(const double* __restrict__ partial, size_t chunks, float clipThr,
                                 float* __restrict__ scale) {
  __shared__ double a[kThreads];
  const int l = threadIdx.x;
  double s = 0.0;
  for (size_t j = l; j < chunks; j += kThreads) s = dadd(s, partial[j]);
  a[l] = s;
  __syncthreads();
  for (int st = kThreads / 2; st > 0; st >>= 1) {
    if (l < st) a[l] = dadd(a[l], a[l + st]);
    __syncthreads();
  }
  if (l == 0) *scale = sparse::clipScale(a[0], clipThr);
}

__global__ void accumulateKernel(const void* __restrict__ g, DType t, size_t n,
                                 const float* __restrict__ scale, float m, float* __restrict__ u,
                                 float* __restrict__ v, bool vIn, float* __restrict__ keep) {
  const float s = scale ? *scale : 1.0f;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    sparse::accumulate(loadAsFloat(g, t, i), s, m, u ? u + i : nullptr, v + i, vIn,
                       keep ? keep + i : nullptr);
  }
}

__global__ void settleKernel(float* __restrict__ v, const float* __restrict__ keep,
                             float* __restrict__ u, size_t n, bool clear) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    sparse::settle(v + i, keep ? keep[i] : 0.0f, u ? u + i : nullptr, clear);
  }
}

__global__ void applyFlagKernel(float* __restrict__ val, size_t k, const float* __restrict__ flag) {
  const float f = *flag;
  for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < k;
       j += (size_t)gridDim.x * blockDim.x) {
    val[j] = sparse::flagged(val[j], f);
  }
}

// ---------------------------------------------------------------- rules
__global__ void sampleKernel(const float* __restrict__ v, size_t m, size_t stride,
                             size_t offsetRange, KeySpec key, uint32_t* __restrict__ keys) {
  const uint64_t k = resolveKey(key);
  const size_t off = sparse::sampleOffset(k, offsetRange);
  for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < m;
       j += (size_t)gridDim.x * blockDim.x) {
    keys[j] = absKey(v[sparse::sampleIndex(k, off, j, stride)]);
  }
}

__global__ void thresholdRuleKernel(const uint32_t* __restrict__ sorted, size_t m, size_t keep,
                                    SelectRule* rule) {
  *rule = sparse::thresholdRule(sorted[m - keep]);
}

__global__ void radixInitKernel(RadixState* st, size_t k) {
  st->hist[threadIdx.x] = 0;
  if (threadIdx.x == 0) {
    st->prefix = 0;
    st->remaining = k;
  }
}

__global__ void radixHistKernel(const float* __restrict__ v, size_t n, int shift, RadixState* st) {
  __shared__ unsigned int h[256];
  h[threadIdx.x] = 0;
  __syncthreads();
  const uint32_t high = shift == 24 ? 0u : ~0u << (shift + 8);
  const uint32_t prefix = st->prefix;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const uint32_t key = absKey(v[i]);
    if ((key & high) == prefix) atomicAdd(&h[(key >> shift) & 0xffu], 1u);
  }
  __syncthreads();
  if (h[threadIdx.x]) atomicAdd(&st->hist[threadIdx.x], h[threadIdx.x]);
}

// Picks this pass's digit (the host's loop, one thread) and clears the
// histogram for the next pass; the last pass writes the rule.
__global__ void radixPickKernel(RadixState* st, int shift, SelectRule* rule) {
  if (threadIdx.x == 0) {
    unsigned long long remaining = st->remaining;
    int d = 255;
    for (; d >= 0; --d) {
      if (st->hist[d] >= remaining || d == 0) break;
      remaining -= st->hist[d];
    }
    st->remaining = remaining;
    st->prefix |= (uint32_t)d << shift;
    if (shift == 0) *rule = SelectRule{st->prefix, st->prefix, remaining};
  }
  __syncthreads();
  st->hist[threadIdx.x] = 0;
}

// ---------------------------------------------------------------- compaction
// A thread's kItems consecutive keys (|v| bits), 16-byte loads when `vec`
// (v 16-byte aligned; base is a multiple of kItems) and the run is in range.
__device__ __forceinline__ void loadKeys(const float* __restrict__ v, size_t n, size_t base,
                                         bool vec, uint32_t keys[kItems]) {
  if (vec && base + kItems <= n) {
    const float4* p = reinterpret_cast<const float4*>(v + base);
#pragma unroll
    for (int q = 0; q < kItems / 4; ++q) {
      const float4 f = p[q];
      keys[4 * q] = absKey(f.x), keys[4 * q + 1] = absKey(f.y);
      keys[4 * q + 2] = absKey(f.z), keys[4 * q + 3] = absKey(f.w);
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) keys[i] = base + i < n ? absKey(v[base + i]) : 0u;
}

// Every thread that finds a non-finite v writes the same NaN
// (sparse::nonFiniteFlag of any non-finite value): the result does not depend
// on which one writes last. kItems keys a thread per tile, 16-byte loads when
// `vec`, so that each thread has 64 bytes in flight (one 4-byte load at a
// time read v at half a copy's rate on the H200).
__global__ void __launch_bounds__(kThreads)
    nonFiniteFlagKernel(const float* __restrict__ v, size_t n, bool vec, float* flag) {
  bool bad = false;
  const size_t stride = (size_t)gridDim.x * kTile;
  for (size_t base = (size_t)blockIdx.x * kTile + (size_t)threadIdx.x * kItems; base < n;
       base += stride) {
    uint32_t keys[kItems];
    loadKeys(v, n, base, vec, keys);  // 0 past n: finite
    uint32_t top = 0;
#pragma unroll
    for (int i = 0; i < kItems; ++i) top = max(top, keys[i]);
    bad |= top >= 0x7f800000u;
  }
  if (bad) *flag = canonicalNaN();
}

// Counts a thread's keys above the rule and equal to its tie key, up to n,
// and gives their largest (a key's order is |v|'s, NaN above Inf).
__device__ __forceinline__ void ruleCounts(const uint32_t keys[kItems], size_t n, size_t base,
                                           const SelectRule& r, uint32_t* gt, uint32_t* eq,
                                           uint32_t* top) {
  uint32_t g = 0, e = 0, t = 0;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    if (base + i >= n) break;
    const uint32_t key = keys[i];
    t = max(t, key);
    if (key > r.gt) {
      ++g;
    } else if (key == r.eq) {
      ++e;
    }
  }
  *gt = g;
  *eq = e;
  *top = t;
}

// Also clears the compaction's non-finite flag (the word after `selected`)
// and, for the staged compaction, its count of staged entries (`staged`, may
// be null): one launch readies both compactions.
__global__ void tileStateInitKernel(TileState state, int tiles, unsigned int* nonFinite,
                                    unsigned long long* staged = nullptr) {
  state.InitializeStatus(tiles);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *nonFinite = 0;
    if (staged) *staged = 0;
  }
}

// One pass over v: tile t (kTile elements, 16 per thread) counts its keys
// above the rule and equal to its tie key, gets the counts of all earlier
// tiles by decoupled look-back (each tile publishes its counts, then its
// running total, in order of blockIdx, as CUB's single-pass scan does), and
// writes its selections. With gtBefore and eqBefore the counts before a
// thread, the ties taken before it are min(eqBefore, need), so its first
// selection goes to slot gtBefore + min(eqBefore, need): the same slots, in
// index order, as the host's loop. Slots past kmax are not written; the last
// thread of the last tile writes the total selected. A thread that read a
// NaN or Inf sets *nonFinite, so that nonFiniteOnlyKernel need not read v
// again when it has none.
// `onlyOver` (the staged compaction's fallback, below): returns at once
// unless *onlyOver > cap, i.e. unless more entries qualified than the staging
// held.
__global__ void __launch_bounds__(kThreads)
    compactKernel(const float* __restrict__ v, size_t n, bool vec, const SelectRule* rule,
                  TileState state, size_t kmax, uint32_t* __restrict__ idx,
                  unsigned long long* __restrict__ selected, unsigned int* nonFinite,
                  const unsigned long long* onlyOver = nullptr, size_t cap = 0) {
  if (onlyOver != nullptr && *onlyOver <= cap) return;
  using Scan = gradcomp_cub::cub::BlockScan<unsigned long long, kThreads>;
  __shared__ typename Scan::TempStorage scanTmp;
  __shared__ typename PrefixOp::TempStorage prefixTmp;
  const SelectRule r = *rule;
  const int tile = (int)blockIdx.x;
  const size_t base = (size_t)tile * kTile + (size_t)threadIdx.x * kItems;
  uint32_t keys[kItems], g, e, top;
  loadKeys(v, n, base, vec, keys);
  ruleCounts(keys, n, base, r, &g, &e, &top);
  if (top >= 0x7f800000u) atomicOr(nonFinite, 1u);  // |v| is Inf or NaN: rare
  const unsigned long long mine = ((unsigned long long)g << 32) | e;
  unsigned long long before;
  if (tile == 0) {
    unsigned long long aggregate;
    Scan(scanTmp).ExclusiveSum(mine, before, aggregate);
    if (threadIdx.x == 0) state.SetInclusive(0, aggregate);
  } else {
    PrefixOp prefix(state, prefixTmp, ::cuda::std::plus<unsigned long long>(), tile);
    Scan(scanTmp).ExclusiveSum(mine, before, prefix);
  }
  const uint64_t gtBefore = before >> 32, eqBefore = before & 0xffffffffull;
  uint64_t eqRank = eqBefore;
  uint64_t pos = gtBefore + (eqBefore < r.need ? eqBefore : r.need);
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const size_t j = base + i;
    if (j >= n) break;
    bool take = false;
    if (keys[i] > r.gt) {
      take = true;
    } else if (keys[i] == r.eq) {
      take = eqRank++ < r.need;
    }
    if (take) {
      if (pos < kmax) idx[pos] = (uint32_t)j;
      ++pos;
    }
  }
  if (tile == (int)gridDim.x - 1 && threadIdx.x == kThreads - 1) {
    const unsigned long long all = before + mine;
    const uint64_t eqAll = all & 0xffffffffull;
    *selected = (all >> 32) + (eqAll < r.need ? eqAll : r.need);
  }
}

__global__ void fillEmptyKernel(const unsigned long long* __restrict__ selected, size_t kmax,
                                uint32_t* __restrict__ idx, uint64_t* selectedDev) {
  uint64_t total = *selected;
  if (total > kmax) total = kmax;
  if (blockIdx.x == 0 && threadIdx.x == 0 && selectedDev) *selectedDev = total;
  for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < kmax;
       j += (size_t)gridDim.x * blockDim.x) {
    if (j >= total) idx[j] = kEmptySlot;
  }
}

// ------------------------------------------------------ staged compaction
// The threshold rule's compaction without the look-back (selectThreshold's;
// gradcomp_kernels_perf times compact() beside it: `topk_threshold_lookback`).
// A threshold rule takes every key above it (need = 0), so a tile's
// selections depend on its own keys alone and only their place in the
// output waits on the other tiles: stageKernel reads v once and never
// waits. Each tile counts its selections, takes a run of the staging array
// by one atomicAdd (tiles in any order), and writes its indices there in
// index order; stagePrefixKernel (one block) scans the tiles' counts in
// tile order; stagePlaceKernel moves each staged index to its tile's place
// plus its rank in the tile, the slots compact() gives. When more entries
// qualify than the staging holds (kmax: ties or non-finite values above the
// threshold), compact() runs after all (its kernels return at once
// otherwise).
struct StageState {
  unsigned long long total;  // entries staged (qualified), the atomicAdd's counter
};

__global__ void __launch_bounds__(kThreads)
    stageKernel(const float* __restrict__ v, size_t n, bool vec, const SelectRule* rule, size_t cap,
                StageState* st, uint32_t* __restrict__ tileStart, uint32_t* __restrict__ tileCount,
                uint32_t* __restrict__ staged, unsigned int* nonFinite) {
  using Scan = gradcomp_cub::cub::BlockScan<uint32_t, kThreads>;
  __shared__ typename Scan::TempStorage scanTmp;
  __shared__ unsigned long long start;
  const uint32_t gt = rule->gt;
  const int tile = (int)blockIdx.x;
  const size_t base = (size_t)tile * kTile + (size_t)threadIdx.x * kItems;
  uint32_t keys[kItems];
  loadKeys(v, n, base, vec, keys);
  uint32_t mine = 0, top = 0;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    top = max(top, keys[i]);  // keys past n are 0
    mine += base + i < n && keys[i] > gt ? 1u : 0u;
  }
  if (top >= 0x7f800000u) atomicOr(nonFinite, 1u);  // |v| is Inf or NaN: rare
  uint32_t before, all;
  Scan(scanTmp).ExclusiveSum(mine, before, all);
  if (threadIdx.x == 0) {
    start = all ? atomicAdd(&st->total, (unsigned long long)all) : 0ull;
    tileStart[tile] = (uint32_t)(start < cap ? start : cap);
    tileCount[tile] = all;
  }
  __syncthreads();
  if (mine == 0) return;
  unsigned long long pos = start + before;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    if (base + i < n && keys[i] > gt) {
      if (pos < cap) staged[pos] = (uint32_t)(base + i);
      ++pos;
    }
  }
}

// Each tile's first slot: the exclusive sum of the counts of the tiles
// before it, in tile order; and the total selected (compact()'s *selected).
// Counts and places are below n < 2^32 (the sparse methods' u32 indices).
// A thread takes kPrefixItems consecutive tiles: 16384 tiles (2^26 elements)
// a pass.
constexpr int kPrefixThreads = 1024;
constexpr int kPrefixItems = 16;
__global__ void __launch_bounds__(kPrefixThreads)
    stagePrefixKernel(const uint32_t* __restrict__ tileCount, size_t tiles,
                      uint32_t* __restrict__ tilePlace, unsigned long long* __restrict__ selected) {
  using Scan = gradcomp_cub::cub::BlockScan<uint32_t, kPrefixThreads>;
  __shared__ typename Scan::TempStorage scanTmp;
  uint32_t running = 0;  // the same in every thread (block aggregates)
  for (size_t first = 0; first < tiles; first += (size_t)kPrefixThreads * kPrefixItems) {
    const size_t t0 = first + (size_t)threadIdx.x * kPrefixItems;
    uint32_t c[kPrefixItems], sum = 0;
#pragma unroll
    for (int i = 0; i < kPrefixItems; ++i) {
      c[i] = t0 + i < tiles ? tileCount[t0 + i] : 0u;
      sum += c[i];
    }
    uint32_t before, all;
    Scan(scanTmp).ExclusiveSum(sum, before, all);
    uint32_t place = running + before;
#pragma unroll
    for (int i = 0; i < kPrefixItems; ++i) {
      if (t0 + i < tiles) tilePlace[t0 + i] = place;
      place += c[i];
    }
    running += all;
    __syncthreads();  // scanTmp is reused
  }
  if (threadIdx.x == 0) *selected = running;
}

// Staged entry e of tile t (the tile of its index) goes to slot
// tilePlace[t] + (e - tileStart[t]); slots past kmax are not written. Nothing
// when the staging overflowed (compact() then writes every slot).
__global__ void stagePlaceKernel(const uint32_t* __restrict__ staged, const StageState* st,
                                 size_t cap, const uint32_t* __restrict__ tileStart,
                                 const uint32_t* __restrict__ tilePlace, size_t kmax,
                                 uint32_t* __restrict__ idx) {
  const unsigned long long total = st->total;
  if (total > cap) return;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (size_t)gridDim.x * blockDim.x) {
    const uint32_t j = staged[e];
    const size_t t = j / kTile;
    const size_t slot = tilePlace[t] + (e - tileStart[t]);
    if (slot < kmax) idx[slot] = j;
  }
}

// Threshold selection only, after the compaction: when more entries
// qualified than there are slots (*selected > kmax) and v holds a non-finite
// value, the slots are rewritten with the non-finite entries alone, in index
// order (the host's second selectByRule with nonFiniteRule). One block, so
// the usual call costs one launch that returns at once, also when more
// finite entries qualified than kmax (ties at the threshold): the
// compaction's flag says v has no NaN or Inf. The rare call it works on (a
// step AMP's scaler skips) reads v once more from one block.
__global__ void __launch_bounds__(kThreads)
    nonFiniteOnlyKernel(const float* __restrict__ v, size_t n, size_t kmax,
                        const unsigned long long* __restrict__ selected,
                        const unsigned int* __restrict__ nonFinite, uint32_t* __restrict__ idx,
                        uint64_t* selectedDev) {
  if (*selected <= kmax || *nonFinite == 0) return;
  using Scan = gradcomp_cub::cub::BlockScan<unsigned int, kThreads>;
  __shared__ typename Scan::TempStorage scanTmp;
  const SelectRule r = sparse::nonFiniteRule();
  uint64_t found = 0;  // the same in every thread (block aggregates)
  for (size_t tile = 0; tile < n; tile += kTile) {
    const size_t base = tile + (size_t)threadIdx.x * kItems;
    unsigned int c = 0;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (base + i < n && absKey(v[base + i]) > r.gt) ++c;
    }
    unsigned int before, all;
    Scan(scanTmp).ExclusiveSum(c, before, all);
    uint64_t pos = found + before;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (base + i < n && absKey(v[base + i]) > r.gt) {
        if (pos < kmax) idx[pos] = (uint32_t)(base + i);
        ++pos;
      }
    }
    found += all;
    __syncthreads();  // scanTmp is reused
  }
  if (found == 0) return;  // all finite: the compaction's slots stand
  for (size_t j = threadIdx.x; j < kmax; j += kThreads) {
    if (j >= found) idx[j] = kEmptySlot;
  }
  if (threadIdx.x == 0 && selectedDev) *selectedDev = found < kmax ? found : kmax;
}

cudaError_t compact(const float* v, size_t n, size_t kmax, uint32_t* idx, uint64_t* selectedDev,
                    void* scratch, const Scratch& L, cudaStream_t s) {
  const int tiles = (int)L.tiles;
  TileState state;
  cudaError_t err = state.Init(tiles, at<char>(scratch, L.tileState), L.tileStateBytes);
  if (err != cudaSuccess) return err;
  // Every tile's status to "not yet", and the look-back's padding.
  unsigned long long* selected = at<unsigned long long>(scratch, L.selected);
  unsigned int* nonFinite = nonFiniteFlag(scratch, L);
  tileStateInitKernel<<<(tiles + kThreads - 1) / kThreads, kThreads, 0, s>>>(state, tiles,
                                                                             nonFinite);
  const bool vec = (reinterpret_cast<uintptr_t>(v) & 15) == 0;
  compactKernel<<<tiles, kThreads, 0, s>>>(v, n, vec, at<SelectRule>(scratch, L.rule), state, kmax,
                                           idx, selected, nonFinite);
  fillEmptyKernel<<<blocksFor(kmax), kThreads, 0, s>>>(selected, kmax, idx, selectedDev);
  return cudaGetLastError();
}

// ---------------------------------------------------------------- slots
__global__ void commitKernel(const uint32_t* __restrict__ idx, size_t slots, DType vt,
                             void* __restrict__ val, float* __restrict__ v, float* __restrict__ u) {
  for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < slots;
       j += (size_t)gridDim.x * blockDim.x) {
    const uint32_t i = idx[j];
    if (i == kEmptySlot) {
      storeFromFloat(val, vt, j, 0.0f);
      continue;
    }
    const float a = v[i];
    const float w = sparse::wireValue(a, vt);
    storeFromFloat(val, vt, j, w);
    v[i] = sparse::residualAfterSend(a, w);
    if (u && sparse::masksAfterSend(a)) u[i] = 0.0f;
  }
}

// Received list i (blockIdx.y, strided) at base + i * stride breaks the wire
// rule when any slot fails against its successor. Every failing thread
// stores the same 1: the flag does not depend on which one stores last.
__global__ void checkListsKernel(const char* __restrict__ base, size_t stride, int lists, int skip,
                                 size_t slots, size_t n, uint32_t* __restrict__ rejected) {
  for (int i = blockIdx.y; i < lists; i += gridDim.y) {
    if (i == skip) continue;
    const uint32_t* idx = reinterpret_cast<const uint32_t*>(base + (size_t)i * stride);
    for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < slots;
         j += (size_t)gridDim.x * blockDim.x) {
      if (!sparse::slotPairOk(idx[j], sparse::slotSuccessor(idx, slots, j), n)) rejected[i] = 1;
    }
  }
}

// Indices within one list are distinct and below n (checked by
// checkListsKernel for a received list; rand-k draws a permutation of
// [0, n)), so no two threads touch the same element and none writes out of
// bounds; ranks are added by successive launches, in order. A list flagged
// as rejected is skipped whole and counted once.
__global__ void scatterAddKernel(const uint32_t* __restrict__ idx, const void* __restrict__ val,
                                 DType vt, size_t slots, const uint32_t* rejected,
                                 uint64_t* rejectedCount, float* __restrict__ out) {
  if (rejected && *rejected) {
    if (rejectedCount && blockIdx.x == 0 && threadIdx.x == 0) *rejectedCount += 1;
    return;
  }
  for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < slots;
       j += (size_t)gridDim.x * blockDim.x) {
    const uint32_t i = idx[j];
    if (i != kEmptySlot) out[i] = fadd(out[i], loadAsFloat(val, vt, j));
  }
}

__global__ void randkKernel(size_t n, size_t k, KeySpec key, uint32_t* __restrict__ idx) {
  const uint64_t kk = resolveKey(key);
  for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < k;
       j += (size_t)gridDim.x * blockDim.x) {
    idx[j] = sparse::permute(kk, (uint32_t)j, (uint32_t)n);
  }
}

__global__ void gatherKernel(float* __restrict__ v, const uint32_t* __restrict__ idx, size_t k,
                             float* __restrict__ out, bool clear) {
  for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < k;
       j += (size_t)gridDim.x * blockDim.x) {
    const float a = v[idx[j]];
    out[j] = a;
    if (clear) v[idx[j]] = sparse::residualAfterSend(a, a);
  }
}

__global__ void addCountKernel(const uint64_t* __restrict__ count, uint64_t* __restrict__ sum) {
  *sum += *count;
}

}  // namespace

size_t sparseScratchBytes(size_t n, size_t m, size_t kmax) {
  return layout(n, m, kmax).total;
}

cudaError_t sparseAccumulate(const void* g, DType t, size_t n, float clipThr, float m, float* u,
                             float* v, bool vIn, float* keep, void* scratch, cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  float* scale = nullptr;
  if (clipThr > 0.0f) {
    const Scratch L = layout(n, 1);
    double* partial = at<double>(scratch, L.partial);
    scale = at<float>(scratch, L.scale);
    sumSqChunkKernel<<<(unsigned)L.chunks, kThreads, 0, s>>>(g, t, n, partial);
    sumSqFinalKernel<<<1, kThreads, 0, s>>>(partial, L.chunks, clipThr, scale);
  }
  accumulateKernel<<<blocksFor(n), kThreads, 0, s>>>(g, t, n, scale, m, u, v, vIn, keep);
  return cudaGetLastError();
}

cudaError_t sparseSettle(float* v, const float* keep, float* u, size_t n, bool clear,
                         cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  settleKernel<<<blocksFor(n), kThreads, 0, s>>>(v, keep, u, n, clear);
  return cudaGetLastError();
}

cudaError_t sparseNonFiniteFlag(const float* v, size_t n, float* flag, cudaStream_t s) {
  cudaError_t err = cudaMemsetAsync(flag, 0, sizeof(float), s);
  if (err != cudaSuccess || n == 0) return err;
  const size_t tiles = (n + kTile - 1) / kTile;
  const bool vec = (reinterpret_cast<uintptr_t>(v) & 15) == 0;
  nonFiniteFlagKernel<<<(unsigned)(tiles < 65536 ? tiles : 65536), kThreads, 0, s>>>(v, n, vec,
                                                                                     flag);
  return cudaGetLastError();
}

cudaError_t sparseApplyFlag(float* val, size_t k, const float* flag, cudaStream_t s) {
  if (k == 0) return cudaSuccess;
  applyFlagKernel<<<blocksFor(k), kThreads, 0, s>>>(val, k, flag);
  return cudaGetLastError();
}

namespace {

// The threshold rule of a call (into scratch's rule): the sample, its sort
// and the key `keep` from its top.
cudaError_t thresholdRule(const float* v, const sparse::Plan& p, const KeySpec& key, void* scratch,
                          const Scratch& L, cudaStream_t s) {
  uint32_t* keys = at<uint32_t>(scratch, L.keys);
  uint32_t* sorted = at<uint32_t>(scratch, L.sorted);
  sampleKernel<<<blocksFor(p.sample), kThreads, 0, s>>>(v, p.sample, p.stride, p.offsetRange, key,
                                                        keys);
  size_t tempBytes = L.tempBytes;
  cudaError_t err = gradcomp_cub::cub::DeviceRadixSort::SortKeys(
      at<char>(scratch, L.temp), tempBytes, keys, sorted, sortCount(p.sample), 0, 32, s);
  if (err != cudaSuccess) return err;
  thresholdRuleKernel<<<1, 1, 0, s>>>(sorted, p.sample, p.keep, at<SelectRule>(scratch, L.rule));
  return cudaGetLastError();
}

// The staged compaction's buffers (in the scratch: Scratch::staging),
// 256-aligned.
struct Staging {
  size_t state, tileStart, tileCount, tilePlace, staged, total;
};
Staging stagingLayout(size_t n, size_t kmax) {
  const size_t tiles = (n + kTile - 1) / kTile;
  Staging g{};
  size_t p = 0;
  g.state = p, p += up(sizeof(StageState));
  g.tileStart = p, p += up(tiles * 4);
  g.tileCount = p, p += up(tiles * 4);
  g.tilePlace = p, p += up(tiles * 4);
  g.staged = p, p += up(kmax * 4);
  g.total = p;
  return g;
}

size_t stagingBytes(size_t n, size_t kmax) {
  return stagingLayout(n, kmax).total;
}

// compact() for a threshold rule through the staging (above): the same slots
// and count.
cudaError_t compactStaged(const float* v, size_t n, size_t kmax, uint32_t* idx,
                          uint64_t* selectedDev, void* scratch, const Scratch& L, cudaStream_t s) {
  void* staging = at<char>(scratch, L.staging);
  const int tiles = (int)L.tiles;
  const Staging G = stagingLayout(n, kmax);
  TileState state;
  cudaError_t err = state.Init(tiles, at<char>(scratch, L.tileState), L.tileStateBytes);
  if (err != cudaSuccess) return err;
  unsigned long long* selected = at<unsigned long long>(scratch, L.selected);
  unsigned int* nonFinite = nonFiniteFlag(scratch, L);
  const SelectRule* rule = at<SelectRule>(scratch, L.rule);
  StageState* st = at<StageState>(staging, G.state);
  uint32_t* tileStart = at<uint32_t>(staging, G.tileStart);
  uint32_t* tileCount = at<uint32_t>(staging, G.tileCount);
  uint32_t* tilePlace = at<uint32_t>(staging, G.tilePlace);
  uint32_t* staged = at<uint32_t>(staging, G.staged);
  // The fallback's tile states, the non-finite flag and the staged count.
  tileStateInitKernel<<<(tiles + kThreads - 1) / kThreads, kThreads, 0, s>>>(state, tiles,
                                                                             nonFinite, &st->total);
  const bool vec = (reinterpret_cast<uintptr_t>(v) & 15) == 0;
  stageKernel<<<tiles, kThreads, 0, s>>>(v, n, vec, rule, kmax, st, tileStart, tileCount, staged,
                                         nonFinite);
  stagePrefixKernel<<<1, kPrefixThreads, 0, s>>>(tileCount, L.tiles, tilePlace, selected);
  stagePlaceKernel<<<blocksFor(kmax), kThreads, 0, s>>>(staged, st, kmax, tileStart, tilePlace,
                                                        kmax, idx);
  compactKernel<<<tiles, kThreads, 0, s>>>(v, n, vec, rule, state, kmax, idx, selected, nonFinite,
                                           &st->total, kmax);
  fillEmptyKernel<<<blocksFor(kmax), kThreads, 0, s>>>(selected, kmax, idx, selectedDev);
  return cudaGetLastError();
}

// A threshold selection: the rule from the sample, then the staged
// compaction (staged) or compact()'s look-back.
cudaError_t selectThresholdWith(const float* v, size_t n, const sparse::Plan& p, const KeySpec& key,
                                uint32_t* idx, uint64_t* selectedDev, void* scratch, bool staged,
                                cudaStream_t s) {
  // The count is the call's result: zero, not the previous call's.
  if (n == 0)
    return selectedDev ? cudaMemsetAsync(selectedDev, 0, sizeof(uint64_t), s) : cudaSuccess;
  const Scratch L = layout(n, p.sample, staged ? p.kmax : 0);
  cudaError_t err = thresholdRule(v, p, key, scratch, L, s);
  if (err != cudaSuccess) return err;
  err = staged ? compactStaged(v, n, p.kmax, idx, selectedDev, scratch, L, s)
               : compact(v, n, p.kmax, idx, selectedDev, scratch, L, s);
  if (err != cudaSuccess) return err;
  nonFiniteOnlyKernel<<<1, kThreads, 0, s>>>(v, n, p.kmax,
                                             at<unsigned long long>(scratch, L.selected),
                                             nonFiniteFlag(scratch, L), idx, selectedDev);
  return cudaGetLastError();
}

}  // namespace

cudaError_t selectThreshold(const float* v, size_t n, const sparse::Plan& p, const KeySpec& key,
                            uint32_t* idx, uint64_t* selectedDev, void* scratch, cudaStream_t s) {
  return selectThresholdWith(v, n, p, key, idx, selectedDev, scratch, true, s);
}

cudaError_t selectThresholdLookback(const float* v, size_t n, const sparse::Plan& p,
                                    const KeySpec& key, uint32_t* idx, uint64_t* selectedDev,
                                    void* scratch, cudaStream_t s) {
  return selectThresholdWith(v, n, p, key, idx, selectedDev, scratch, false, s);
}

cudaError_t selectExact(const float* v, size_t n, size_t k, uint32_t* idx, uint64_t* selectedDev,
                        void* scratch, cudaStream_t s) {
  // The count is the call's result: zero, not the previous call's.
  if (n == 0)
    return selectedDev ? cudaMemsetAsync(selectedDev, 0, sizeof(uint64_t), s) : cudaSuccess;
  const Scratch L = layout(n, 1);
  RadixState* st = at<RadixState>(scratch, L.radix);
  SelectRule* rule = at<SelectRule>(scratch, L.rule);
  radixInitKernel<<<1, 256, 0, s>>>(st, k);
  for (int shift = 24; shift >= 0; shift -= 8) {
    radixHistKernel<<<blocksFor(n) < 1024 ? blocksFor(n) : 1024, kThreads, 0, s>>>(v, n, shift, st);
    radixPickKernel<<<1, 256, 0, s>>>(st, shift, rule);
  }
  return compact(v, n, k, idx, selectedDev, scratch, L, s);
}

cudaError_t sparseCommit(const uint32_t* idx, size_t slots, DType vt, void* val, float* v, float* u,
                         cudaStream_t s) {
  if (slots == 0) return cudaSuccess;
  commitKernel<<<blocksFor(slots), kThreads, 0, s>>>(idx, slots, vt, val, v, u);
  return cudaGetLastError();
}

cudaError_t sparseCheckLists(const void* base, size_t stride, int lists, int skip, size_t slots,
                             size_t n, uint32_t* rejected, cudaStream_t s) {
  if (lists <= 0) return cudaSuccess;
  cudaError_t err = cudaMemsetAsync(rejected, 0, (size_t)lists * sizeof(uint32_t), s);
  if (err != cudaSuccess || slots == 0) return err;
  const dim3 grid(blocksFor(slots), lists < 65535 ? lists : 65535);
  checkListsKernel<<<grid, kThreads, 0, s>>>(static_cast<const char*>(base), stride, lists, skip,
                                             slots, n, rejected);
  return cudaGetLastError();
}

cudaError_t sparseScatterAddChecked(const uint32_t* idx, const void* val, DType vt, size_t slots,
                                    float* out, const uint32_t* rejected, uint64_t* rejectedCount,
                                    cudaStream_t s) {
  if (slots == 0) return cudaSuccess;
  scatterAddKernel<<<blocksFor(slots), kThreads, 0, s>>>(idx, val, vt, slots, rejected,
                                                         rejectedCount, out);
  return cudaGetLastError();
}

cudaError_t sparseScatterAdd(const uint32_t* idx, const void* val, DType vt, size_t slots, size_t n,
                             float* out, uint32_t* rejected, uint64_t* rejectedCount,
                             cudaStream_t s) {
  if (slots == 0) return cudaSuccess;
  cudaError_t err = sparseCheckLists(idx, 0, 1, -1, slots, n, rejected, s);
  if (err != cudaSuccess) return err;
  return sparseScatterAddChecked(idx, val, vt, slots, out, rejected, rejectedCount, s);
}

cudaError_t sparseScatterAddDrawn(const uint32_t* idx, const float* val, size_t k, float* out,
                                  cudaStream_t s) {
  if (k == 0) return cudaSuccess;
  scatterAddKernel<<<blocksFor(k), kThreads, 0, s>>>(idx, val, DType::F32, k, nullptr, nullptr,
                                                     out);
  return cudaGetLastError();
}

cudaError_t randkIndices(size_t n, size_t k, const KeySpec& key, uint32_t* idx, cudaStream_t s) {
  if (k == 0) return cudaSuccess;
  randkKernel<<<blocksFor(k), kThreads, 0, s>>>(n, k, key, idx);
  return cudaGetLastError();
}

cudaError_t sparseGather(float* v, const uint32_t* idx, size_t k, float* out, bool clear,
                         cudaStream_t s) {
  if (k == 0) return cudaSuccess;
  gatherKernel<<<blocksFor(k), kThreads, 0, s>>>(v, idx, k, out, clear);
  return cudaGetLastError();
}

cudaError_t addCount(const uint64_t* count, uint64_t* sum, cudaStream_t s) {
  addCountKernel<<<1, 1, 0, s>>>(count, sum);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gc
