// QSGD encode (+ fused error feedback) and decode kernels.
//
// Buckets of 128, 256, 512 or 1024 elements take the warp path: one warp per
// bucket (a kernel per input type; aligned whole buckets, nearly all of
// them, on a path without bounds checks), each lane holding 4 consecutive
// elements of every 128-element row in registers (16-byte loads when the
// pointers allow). g + r is read once,
// the bucket's max |x| is a warp max of the bits (exact, order-free), codes
// and the new residual are computed from registers, and each row's codes
// (128 * bits bits, whole words) are assembled with warp shuffles or OR
// reductions and stored by the lanes that own whole words. A bucket's codes
// start on a word boundary (buckets are multiples of 32), so no two warps
// write the same word: no atomics, deterministic.
// Other bucket sizes take the block path: one block per bucket, the bucket
// staged in shared memory.
// Decode mirrors the encode: one warp per bucket on the warp path, one thread
// per element otherwise.
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "plugin/codecs/qsgd.h"
#include "qsgd_math.cuh"

namespace gc {
namespace cuda {
namespace {

constexpr int kEncodeThreads = 256;
constexpr int kDecodeThreads = 256;
// The largest bucket's values and codes (dynamic) and the max slots (static)
// stay within the 48 KiB a launch gets without cudaFuncSetAttribute.
static_assert(qsgd::kMaxBucket * (4 + 1) + 32 * 4 <= 48 * 1024, "qsgdEncodeKernel shared memory");

__device__ __forceinline__ uint32_t blockMaxU32(uint32_t v, uint32_t* smem) {
  v = __reduce_max_sync(0xffffffffu, v);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    uint32_t w = lane < (int)(blockDim.x >> 5) ? smem[lane] : 0u;
    w = __reduce_max_sync(0xffffffffu, w);
    if (lane == 0) smem[0] = w;
  }
  __syncthreads();
  return smem[0];
}

template <bool kNearest, bool kSquare>
__global__ void __launch_bounds__(kEncodeThreads)
    qsgdEncodeKernel(const void* __restrict__ x, DType t, float* __restrict__ residual, size_t n,
                     int bits, int bucket, KeySpec keySpec, float* __restrict__ scales,
                     uint32_t* __restrict__ words) {
  extern __shared__ float sx[];
  uint8_t* codes = reinterpret_cast<uint8_t*>(sx + bucket);
  __shared__ uint32_t red[32];

  const uint64_t key = resolveKey(keySpec);
  const size_t b = blockIdx.x;
  const size_t base = b * (size_t)bucket;
  const int len = (int)min((size_t)bucket, n - base);

  uint32_t maxBits = 0;
  for (int i = threadIdx.x; i < len; i += blockDim.x) {
    float v = loadAsFloat(x, t, base + i);
    if (residual) v = fadd(v, residual[base + i]);
    sx[i] = v;
    maxBits = max(maxBits, floatToBits(v) & 0x7fffffffu);
  }
  maxBits = blockMaxU32(maxBits, red);

  const float scale = qsgd::scaleFromMaxBits(maxBits);
  const float rec = qsgd::reciprocal(scale, qsgd::ratioLevels(qsgd::levels(bits), kSquare));
  const float stored = qsgd::storedScale(scale, kSquare);
  const bool finite = isFiniteBits(maxBits);
  if (threadIdx.x == 0) scales[b] = stored;
  for (int i = threadIdx.x; i < len; i += blockDim.x) {
    const uint32_t code = qsgd::encodeValue(sx[i], scale, rec, bits,
                                            qsgd::roundingDraw<kNearest>(key, base + i), kSquare);
    codes[i] = (uint8_t)code;
    if (residual && finite) residual[base + i] = fsub(sx[i], qsgd::decodeValue(code, stored, bits));
  }
  __syncthreads();

  const int nw = (len * bits + 31) >> 5;
  uint32_t* out = words + (base * bits >> 5);
  for (int w = threadIdx.x; w < nw; w += blockDim.x) {
    const int firstBit = w << 5;
    const int e0 = firstBit / bits;
    const int e1 = min(len - 1, (firstBit + 31) / bits);
    uint32_t word = 0;
    for (int e = e0; e <= e1; ++e) {
      const int pos = e * bits - firstBit;
      const uint32_t c = codes[e];
      word |= pos < 0 ? (c >> -pos) : (c << pos);
    }
    out[w] = word;
  }
}

// ------------------------------------------------------------- warp path
constexpr int kWarpThreads = 128;
constexpr int kWarpsPerBlock = kWarpThreads / 32;
constexpr int kRow = 128;  // elements of one row: 32 lanes x 4

// The level table of an encode: uniform or square levels.
__device__ __forceinline__ void fillLevelTable(float* table, int s, bool square) {
  for (int l = threadIdx.x; l <= s; l += blockDim.x) table[l] = qsgd::levelValue(l, s, square);
  __syncthreads();
}

// A decode's two tables: uniform levels at [0, kLevelTable), square at
// [kLevelTable, 2 kLevelTable). A bucket's stored scale picks one
// (qsgd::squareScale).
constexpr int kLevelTable = 128;
__device__ __forceinline__ void fillDecodeTables(float* tables, int s) {
  for (int l = threadIdx.x; l <= s; l += blockDim.x) {
    tables[l] = qsgd::levelValue(l, s);
    tables[kLevelTable + l] = qsgd::squareLevelValue(l, s);
  }
  __syncthreads();
}
__device__ __forceinline__ const float* decodeTable(const float* tables, float stored) {
  return tables + (qsgd::squareScale(stored) ? kLevelTable : 0);
}

// The encode's RNG key (resolved once per block: it may read the comm's
// device step) and the level table, for every warp of the block.
__device__ __forceinline__ uint64_t encodeKeyAndLevels(KeySpec keySpec, int bits, bool square,
                                                       float* levelTable) {
  __shared__ uint64_t sharedKey;
  if (threadIdx.x == 0) sharedKey = resolveKey(keySpec);
  fillLevelTable(levelTable, qsgd::levels(bits), square);
  return sharedKey;
}

// Four fp16 or bf16 values, packed as loaded, as floats.
__device__ __forceinline__ void halves4ToFloat(uint2 h, DType t, float v[4]) {
  const uint16_t e[4] = {(uint16_t)(h.x & 0xffffu), (uint16_t)(h.x >> 16),
                         (uint16_t)(h.y & 0xffffu), (uint16_t)(h.y >> 16)};
#pragma unroll
  for (int c = 0; c < 4; ++c) v[c] = t == DType::F16 ? halfToFloatAnyNaN(e[c]) : bf16ToFloat(e[c]);
}

// Four consecutive elements as floats. `vec`: 16-byte (fp32) or 8-byte
// (fp16/bf16) aligned and all four in range. fp16 converts with one cvt and
// no branch for NaN (halfToFloatAnyNaN): the encode writes the same bits for
// any NaN payload.
__device__ __forceinline__ void load4(const void* __restrict__ x, DType t, size_t i, bool vec,
                                      size_t limit, float v[4]) {
  if (vec) {
    if (t == DType::F32) {
      const float4 f = *reinterpret_cast<const float4*>(static_cast<const float*>(x) + i);
      v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
    } else {
      halves4ToFloat(*reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(x) + i), t, v);
    }
    return;
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) v[c] = i + c < limit ? loadAsFloat(x, t, i + c) : 0.0f;
}

__device__ __forceinline__ void loadF32x4(const float* __restrict__ r, size_t i, bool vec,
                                          size_t limit, float v[4]) {
  if (vec) {
    const float4 f = *reinterpret_cast<const float4*>(r + i);
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
    return;
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) v[c] = i + c < limit ? r[i + c] : 0.0f;
}

__device__ __forceinline__ void store4(float* __restrict__ p, size_t i, bool vec, size_t limit,
                                       const float v[4]) {
  if (vec) {
    *reinterpret_cast<float4*>(p + i) = make_float4(v[0], v[1], v[2], v[3]);
    return;
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    if (i + c < limit) p[i + c] = v[c];
  }
}

// Stores one row's packed codes. Lane l's 4 codes form `chunk` (4*bits bits)
// at bit l*4*bits of the row; the row is 4*bits words, of which the first
// `validWords` are stored (a bucket's tail row may be short).
__device__ __forceinline__ void storeRow(uint32_t chunk, int bits, int lane, int validWords,
                                         uint32_t* __restrict__ rowWords) {
  const int cb = 4 * bits;  // bits per lane
  if ((bits & (bits - 1)) == 0) {
    // 2, 4, 8 bits: 32/cb lanes fill one word, no chunk crosses a word.
    const int per = 32 / cb;
    uint32_t w = cb == 32 ? chunk : chunk << (cb * (lane & (per - 1)));
    for (int d = 1; d < per; d <<= 1) w |= __shfl_xor_sync(0xffffffffu, w, d);
    const int k = lane / per;
    if ((lane & (per - 1)) == 0 && k < validWords) rowWords[k] = w;
    return;
  }
  // 3, 5, 6, 7 bits: chunks straddle words; word k is the OR over lanes.
  const int o = lane * cb;
  for (int k = 0; k < cb; ++k) {
    const int sh = o - 32 * k;
    const uint32_t part = (sh >= 32 || sh <= -cb) ? 0u : (sh >= 0 ? chunk << sh : chunk >> -sh);
    const uint32_t w = __reduce_or_sync(0xffffffffu, part);
    if (lane == k && k < validWords) rowWords[k] = w;
  }
}

// The codes and new residuals of one bucket's R rows from its values in
// registers, and the codes' stores. kPlain: the bucket is plain
// (qsgd::plainBucket: finite non-zero scale, usable reciprocal), so each
// element is coded and decoded without encodeValue's and decodeWithLevel's
// checks, which give the same bits for such a bucket.
// On the plain path `codeTable` holds the decoded value of every code
// (decodePlain, filled by codeBucket), so an element's new residual is one
// shared load and a subtraction.
template <int R, bool kNearest, bool kSquare, bool kPlain>
__device__ __forceinline__ void codeRows(const float (&v)[R][4], float* __restrict__ residual,
                                         size_t n, int bits, uint64_t key, const float* levelTable,
                                         const float* codeTable, float scale, float rec,
                                         bool finite, uint32_t* __restrict__ bucketWords,
                                         size_t base, size_t len, int lane, bool full) {
  const int s = qsgd::levels(bits);
  const int rowWords = 4 * bits;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const size_t i = base + r * kRow + lane * 4;
    uint32_t chunk = 0;
    float res[4];
    const uint64_t weyl = weylPoint(key, i);  // uniform24(key, i + c), Weyl steps added
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      uint32_t code = 0;
      const float u =
          kNearest ? qsgd::kNearestDraw : uniform24FromHash(mix64(weyl + (uint64_t)c * kWeyl));
      if (full || i + c < n) {
        code = kPlain ? qsgd::encodePlain(v[r][c], rec, bits, s, u, kSquare)
                      : qsgd::encodeValue(v[r][c], scale, rec, bits, u, kSquare);
      }
      chunk |= code << (c * bits);
      res[c] = fsub(v[r][c], kPlain ? codeTable[code]
                                    : qsgd::decodeWithLevel(code, levelTable[code & (uint32_t)s],
                                                            scale, bits));
    }
    if (residual && (kPlain || finite)) store4(residual, i, full, n, res);
    const size_t rowStart = r * kRow;
    const int validWords =
        full ? rowWords
             : (rowStart >= len ? 0
                                : (int)min((size_t)rowWords, ((len - rowStart) * bits + 31) >> 5));
    storeRow(chunk, bits, lane, validWords, bucketWords + r * rowWords);
  }
}

// The bucket's values g + r in registers, as v[row][c].
template <int R>
__device__ __forceinline__ void loadRows(const void* __restrict__ x, DType t,
                                         const float* __restrict__ residual, size_t n, size_t base,
                                         int lane, bool full, float (&v)[R][4]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const size_t i = base + r * kRow + lane * 4;
    load4(x, t, i, full, n, v[r]);
    if (residual) {
      float q[4];
      loadF32x4(residual, i, full, n, q);
#pragma unroll
      for (int c = 0; c < 4; ++c) v[r][c] = fadd(v[r][c], q[c]);
    }
  }
}

// Codes one bucket whose values v are in registers: the scale, the codes and
// the new residual.
template <int R, bool kNearest, bool kSquare>
__device__ __forceinline__ void codeBucket(const float (&v)[R][4], float* __restrict__ residual,
                                           size_t n, int bits, uint64_t key,
                                           const float* levelTable, float* __restrict__ scales,
                                           uint32_t* __restrict__ words, size_t b, size_t base,
                                           size_t len, int lane, bool full) {
  uint32_t maxBits = 0;
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int c = 0; c < 4; ++c) maxBits = max(maxBits, floatToBits(v[r][c]) & 0x7fffffffu);
  }
  maxBits = __reduce_max_sync(0xffffffffu, maxBits);
  const float scale = qsgd::scaleFromMaxBits(maxBits);
  const float rec = qsgd::reciprocal(scale, qsgd::ratioLevels(qsgd::levels(bits), kSquare));
  const bool finite = isFiniteBits(maxBits);
  if (lane == 0) scales[b] = qsgd::storedScale(scale, kSquare);

  uint32_t* bucketWords = words + (base * bits >> 5);
  // Warp-uniform: the whole warp takes one path. The bounds-checked branch
  // (a tail bucket, or misaligned pointers) codes on the checked path too:
  // rare, and not worth the registers of a third copy.
  if (full && qsgd::plainBucket(scale, rec)) {
    // Every code's value (the warp's own table; the syncs keep a warp that
    // codes several buckets from refilling it while a lane still reads it).
    __shared__ float codeTables[kWarpsPerBlock][2 * kLevelTable];
    float* codeTable = codeTables[threadIdx.x >> 5];
    const uint32_t s = (uint32_t)qsgd::levels(bits);
    __syncwarp();
    for (uint32_t c = lane; c < (1u << bits); c += 32) {
      codeTable[c] = qsgd::decodePlain(c, levelTable[c & s], scale, bits);
    }
    __syncwarp();
    codeRows<R, kNearest, kSquare, true>(v, residual, n, bits, key, levelTable, codeTable, scale,
                                         rec, finite, bucketWords, base, len, lane, full);
  } else {
    codeRows<R, kNearest, kSquare, false>(v, residual, n, bits, key, levelTable, nullptr, scale,
                                          rec, finite, bucketWords, base, len, lane, full);
  }
}

// One bucket of R rows on one warp. Inlined into the kernel with the type
// and `full` (an aligned bucket of kBucket elements, wholly in range) as
// constants, so that the type switches and every bounds check fold away on
// the path nearly every bucket takes.
template <int R, bool kNearest, bool kSquare>
__device__ __forceinline__ void encodeRows(const void* __restrict__ x, DType t,
                                           float* __restrict__ residual, size_t n, int bits,
                                           uint64_t key, const float* levelTable,
                                           float* __restrict__ scales, uint32_t* __restrict__ words,
                                           size_t b, size_t base, size_t len, int lane, bool full) {
  float v[R][4];
  loadRows<R>(x, t, residual, n, base, lane, full, v);
  codeBucket<R, kNearest, kSquare>(v, residual, n, bits, key, levelTable, scales, words, b, base,
                                   len, lane, full);
}

// Buckets of up to 512, every input type: at most 56 registers, so that 9
// blocks (36 warps) fit on an SM. Unbounded, the plain path's code takes 64
// (fp32, bf16: 8 blocks) and 72 (fp16: 7 blocks); bounded, nothing spills
// and the plain path issues about 1% more instructions. The encode waits on
// its loads before it codes, so warps resident are what hide that wait.
template <int R, DType T, bool kNearest, bool kSquare>
__global__ void __launch_bounds__(kWarpThreads, R <= 4 ? 9 : 1)
    qsgdEncodeWarpKernel(const void* __restrict__ x, float* __restrict__ residual, size_t n,
                         int bits, KeySpec keySpec, float* __restrict__ scales,
                         uint32_t* __restrict__ words, bool alignedIn) {
  constexpr int kBucket = kRow * R;
  __shared__ float levelTable[128];
  const uint64_t key = encodeKeyAndLevels(keySpec, bits, kSquare, levelTable);
  const int lane = threadIdx.x & 31;
  const size_t b = (size_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  const size_t base = b * kBucket;
  if (base >= n) return;
  const size_t len = min((size_t)kBucket, n - base);
  if (alignedIn && len == kBucket) {
    encodeRows<R, kNearest, kSquare>(x, T, residual, n, bits, key, levelTable, scales, words, b,
                                     base, kBucket, lane, true);
  } else {
    encodeRows<R, kNearest, kSquare>(x, T, residual, n, bits, key, levelTable, scales, words, b,
                                     base, len, lane, false);
  }
}

// One whole, aligned bucket's loads as they come from memory (x in its own
// type, the residual as floats), not yet waited on: sumRows converts and adds
// them, with load4's and loadRows' arithmetic.
template <DType T>
using RawX4 = std::conditional_t<T == DType::F32, float4, uint2>;

template <int R, DType T>
__device__ __forceinline__ void prefetchRows(const void* __restrict__ x,
                                             const float* __restrict__ residual, size_t base,
                                             int lane, RawX4<T> (&xr)[R], float4 (&rr)[R]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const size_t i = base + r * kRow + lane * 4;
    if constexpr (T == DType::F32) {
      xr[r] = *reinterpret_cast<const float4*>(static_cast<const float*>(x) + i);
    } else {
      xr[r] = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(x) + i);
    }
    if (residual) rr[r] = *reinterpret_cast<const float4*>(residual + i);
  }
}

template <int R, DType T>
__device__ __forceinline__ void sumRows(const RawX4<T> (&xr)[R], const float4 (&rr)[R], bool ef,
                                        float (&v)[R][4]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if constexpr (T == DType::F32) {
      v[r][0] = xr[r].x, v[r][1] = xr[r].y, v[r][2] = xr[r].z, v[r][3] = xr[r].w;
    } else {
      halves4ToFloat(xr[r], T, v[r]);
    }
    if (ef) {
      v[r][0] = fadd(v[r][0], rr[r].x), v[r][1] = fadd(v[r][1], rr[r].y);
      v[r][2] = fadd(v[r][2], rr[r].z), v[r][3] = fadd(v[r][3], rr[r].w);
    }
  }
}

// The same encode as qsgdEncodeWarpKernel (the same bytes, scales and
// residual: the keys follow the element), on a grid that stays resident:
// each warp codes every stride-th whole bucket and issues the loads of its
// next one before it codes the current one, so a warp's loads are in flight
// while it computes instead of the SM's other warps alone hiding them. The
// partial tail bucket, and every bucket when the pointers are not aligned,
// take the checked path after. An A/B variant for buckets of 128 and 512
// (qsgdEncodePipelined), timed beside the default by gradcomp_kernels_perf.
template <int R, DType T, bool kNearest, bool kSquare>
__global__ void __launch_bounds__(kWarpThreads, 4)
    qsgdEncodeWarpPipelinedKernel(const void* __restrict__ x, float* __restrict__ residual,
                                  size_t n, int bits, KeySpec keySpec, float* __restrict__ scales,
                                  uint32_t* __restrict__ words, bool alignedIn) {
  constexpr int kBucket = kRow * R;
  __shared__ float levelTable[128];
  const uint64_t key = encodeKeyAndLevels(keySpec, bits, kSquare, levelTable);
  const int lane = threadIdx.x & 31;
  const size_t warp0 = (size_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  const size_t stride = (size_t)gridDim.x * kWarpsPerBlock;
  const size_t nb = (n + kBucket - 1) / kBucket;
  const size_t nFull = alignedIn ? n / kBucket : 0;
  RawX4<T> xr[R];
  float4 rr[R];
  if (warp0 < nFull) prefetchRows<R, T>(x, residual, warp0 * kBucket, lane, xr, rr);
  for (size_t b = warp0; b < nFull; b += stride) {
    float v[R][4];
    sumRows<R, T>(xr, rr, residual != nullptr, v);
    const size_t next = b + stride;
    if (next < nFull) prefetchRows<R, T>(x, residual, next * kBucket, lane, xr, rr);
    codeBucket<R, kNearest, kSquare>(v, residual, n, bits, key, levelTable, scales, words, b,
                                     b * kBucket, kBucket, lane, true);
  }
  for (size_t b = nFull + warp0; b < nb; b += stride) {
    const size_t base = b * kBucket;
    encodeRows<R, kNearest, kSquare>(x, T, residual, n, bits, key, levelTable, scales, words, b,
                                     base, min((size_t)kBucket, n - base), lane, false);
  }
}

// A plain bucket's decode (whole, its output 16-byte aligned, its scale
// finite): a table of the value of every code (2^bits of them, sign
// included), which the warp fills from the block's level table (decodePlain:
// the level times the scale, negated when the sign bit is set, so the same
// bits), then one shared-memory load per element instead of the general
// path's level lookup, multiply, negation and per-element finiteness test;
// no bounds checks, and one 32-bit word per lane and row where a lane's
// codes lie in one word (bits 2, 4, 8).
template <int R>
__device__ __forceinline__ void decodePlainBucket(const uint32_t* __restrict__ words,
                                                  size_t bucketWord, size_t totalWords, int bits,
                                                  const float* levelTable, float scale,
                                                  float* codeTable, size_t base,
                                                  float* __restrict__ out, bool accumulate,
                                                  int lane) {
  const int s = qsgd::levels(bits);
  const uint32_t codes = 1u << bits;
  for (uint32_t c = lane; c < codes; c += 32) {
    codeTable[c] = qsgd::decodePlain(c, levelTable[c & (uint32_t)s], scale, bits);
  }
  __syncwarp();
  const int cb = 4 * bits;
  const uint32_t mask = cb == 32 ? 0xffffffffu : (1u << cb) - 1u;
  const uint32_t codeMask = codes - 1u;
  const int bit = lane * cb;
  const int sh = bit & 31;
  uint32_t chunk[R];
  if ((bits & (bits - 1)) == 0) {  // bits 2, 4, 8: cb divides 32
#pragma unroll
    for (int r = 0; r < R; ++r) {
      chunk[r] = (words[bucketWord + (size_t)r * cb + (bit >> 5)] >> sh) & mask;
    }
  } else {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const size_t w0 = bucketWord + (size_t)r * cb + (bit >> 5);
      uint64_t pair = words[w0];
      if (sh + cb > 32 && w0 + 1 < totalWords) pair |= (uint64_t)words[w0 + 1] << 32;
      chunk[r] = (uint32_t)(pair >> sh) & mask;
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const size_t i = base + r * kRow + lane * 4;
    float d[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) d[c] = codeTable[(chunk[r] >> (c * bits)) & codeMask];
    if (accumulate) {
      const float4 o = *reinterpret_cast<const float4*>(out + i);
      d[0] = fadd(o.x, d[0]), d[1] = fadd(o.y, d[1]), d[2] = fadd(o.z, d[2]);
      d[3] = fadd(o.w, d[3]);
    }
    *reinterpret_cast<float4*>(out + i) = make_float4(d[0], d[1], d[2], d[3]);
  }
}

template <int R>
__global__ void __launch_bounds__(kWarpThreads)
    qsgdDecodeWarpKernel(const float* __restrict__ scales, const uint32_t* __restrict__ words,
                         size_t n, int bits, float* __restrict__ out, bool accumulate,
                         bool alignedOut) {
  constexpr int kBucket = kRow * R;
  __shared__ float levelTables[2 * kLevelTable];
  __shared__ float codeTables[kWarpsPerBlock][2 * kLevelTable];
  const int s = qsgd::levels(bits);
  fillDecodeTables(levelTables, s);
  const int lane = threadIdx.x & 31;
  const size_t b = (size_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  const size_t base = b * kBucket;
  if (base >= n) return;
  const size_t len = min((size_t)kBucket, n - base);
  const bool vec = alignedOut && len == kBucket;
  const float stored = scales[b];
  const float* levelTable = decodeTable(levelTables, stored);
  const float scale = qsgd::scaleMagnitude(stored);
  const size_t totalWords = qsgd::codeWords(n, bits);
  const size_t bucketWord = base * bits >> 5;
  if (vec && isFiniteBits(floatToBits(scale))) {
    decodePlainBucket<R>(words, bucketWord, totalWords, bits, levelTable, scale,
                         codeTables[threadIdx.x >> 5], base, out, accumulate, lane);
    return;
  }
  const int cb = 4 * bits;
  const uint32_t mask = cb == 32 ? 0xffffffffu : (1u << cb) - 1u;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const size_t i = base + r * kRow + lane * 4;
    const int bit = lane * cb;
    const size_t w0 = bucketWord + (size_t)r * cb + (bit >> 5);
    const int sh = bit & 31;
    uint64_t pair = w0 < totalWords ? words[w0] : 0u;
    if (sh + cb > 32 && w0 + 1 < totalWords) pair |= (uint64_t)words[w0 + 1] << 32;
    const uint32_t chunk = (uint32_t)(pair >> sh) & mask;
    float d[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const uint32_t code = (chunk >> (c * bits)) & ((1u << bits) - 1u);
      d[c] = qsgd::decodeWithLevel(code, levelTable[code & (uint32_t)s], scale, bits);
    }
    if (accumulate) {
      float o[4];
      loadF32x4(out, i, vec, n, o);
#pragma unroll
      for (int c = 0; c < 4; ++c) d[c] = fadd(o[c], d[c]);
    }
    store4(out, i, vec, n, d);
  }
}

bool aligned(const void* p, size_t a) {
  return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0;
}

unsigned warpBlocks(size_t nb) {
  return (unsigned)((nb + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

// Calls launch(std::integral_constant<int, R>) with R = bucket / 128 when
// the bucket has a warp path; false otherwise.
template <typename F>
bool withWarpRows(int bucket, F&& launch) {
  switch (bucket) {
    case 128:
      launch(std::integral_constant<int, 1>());
      return true;
    case 256:
      launch(std::integral_constant<int, 2>());
      return true;
    case 512:
      launch(std::integral_constant<int, 4>());
      return true;
    case 1024:
      launch(std::integral_constant<int, 8>());
      return true;
    default:
      return false;
  }
}

// ------------------------------------------------------------- block path
__global__ void __launch_bounds__(kDecodeThreads)
    qsgdDecodeKernel(const float* __restrict__ scales, const uint32_t* __restrict__ words, size_t n,
                     int bits, int bucket, float* __restrict__ out, bool accumulate) {
  __shared__ float levelTables[2 * kLevelTable];
  const int s = qsgd::levels(bits);
  fillDecodeTables(levelTables, s);
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint32_t code = qsgd::getCode(words, i, bits);
    const float stored = scales[i / bucket];
    const float v =
        qsgd::decodeWithLevel(code, decodeTable(levelTables, stored)[code & (uint32_t)s],
                              qsgd::scaleMagnitude(stored), bits);
    out[i] = accumulate ? fadd(out[i], v) : v;
  }
}

__global__ void advanceStepKernel(uint64_t* step) {
  *step += 1;
}

int decodeBlocks(size_t n) {
  size_t blocks = (n + kDecodeThreads - 1) / kDecodeThreads;
  return (int)min(blocks, (size_t)132 * 32);
}

// Calls f(std::integral_constant<DType, T>()) for the input type t: each
// input type has its own encode kernel.
template <typename F>
void withInputType(DType t, F&& f) {
  if (t == DType::F32) {
    f(std::integral_constant<DType, DType::F32>());
  } else if (t == DType::F16) {
    f(std::integral_constant<DType, DType::F16>());
  } else {
    f(std::integral_constant<DType, DType::BF16>());
  }
}

// Calls f(std::bool_constant<nearest>(), std::bool_constant<square>()):
// nearest rounding and square levels are template arguments, so the nearest
// kernels compute no hash and the uniform ones no square root.
template <typename F>
void withCoding(const KeySpec& key, F&& f) {
  auto levels = [&](auto nearest) {
    if (key.square) {
      f(nearest, std::true_type());
    } else {
      f(nearest, std::false_type());
    }
  };
  if (key.nearest) {
    levels(std::true_type());
  } else {
    levels(std::false_type());
  }
}

}  // namespace

cudaError_t qsgdEncode(const void* x, DType t, float* residual, size_t n, int bits, int bucket,
                       const KeySpec& key, void* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const size_t nb = qsgd::numBuckets(n, bucket);
  if (nb > kMaxDeviceBuckets) return cudaErrorInvalidValue;  // the callers say why first
  float* scales = static_cast<float*>(out);
  uint32_t* words = reinterpret_cast<uint32_t*>(scales + nb);
  const bool alignedIn = aligned(x, t == DType::F32 ? 16 : 8) && aligned(residual, 16);
  withCoding(key, [&](auto nearest, auto square) {
    constexpr bool kNearest = decltype(nearest)::value;
    constexpr bool kSquare = decltype(square)::value;
    if (withWarpRows(bucket, [&](auto rows) {
          withInputType(t, [&](auto type) {
            qsgdEncodeWarpKernel<decltype(rows)::value, decltype(type)::value, kNearest, kSquare>
                <<<warpBlocks(nb), kWarpThreads, 0, stream>>>(x, residual, n, bits, key, scales,
                                                              words, alignedIn);
          });
        })) {
      return;
    }
    const int threads = bucket < kEncodeThreads ? bucket : kEncodeThreads;
    const size_t smem = (size_t)bucket * (sizeof(float) + 1);
    qsgdEncodeKernel<kNearest, kSquare><<<(unsigned)nb, threads, smem, stream>>>(
        x, t, residual, n, bits, bucket, key, scales, words);
  });
  return cudaGetLastError();
}

namespace {
// Blocks of `kernel` resident on the current device at once (at least one).
template <typename K>
unsigned residentBlocks(K kernel) {
  int dev = 0, sms = 0, perSm = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, kernel, kWarpThreads, 0) !=
          cudaSuccess) {
    return 0;
  }
  return (unsigned)std::max(1, sms * perSm);
}
}  // namespace

cudaError_t qsgdEncodePipelined(const void* x, DType t, float* residual, size_t n, int bits,
                                int bucket, const KeySpec& key, void* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (bucket != 128 && bucket != 512) {
    return qsgdEncode(x, t, residual, n, bits, bucket, key, out, stream);
  }
  const size_t nb = qsgd::numBuckets(n, bucket);
  if (nb > kMaxDeviceBuckets) return cudaErrorInvalidValue;  // the callers say why first
  float* scales = static_cast<float*>(out);
  uint32_t* words = reinterpret_cast<uint32_t*>(scales + nb);
  const bool alignedIn = aligned(x, t == DType::F32 ? 16 : 8) && aligned(residual, 16);
  cudaError_t err = cudaSuccess;
  auto launch = [&](auto rows, auto type, auto nearest, auto square) {
    auto* kernel = qsgdEncodeWarpPipelinedKernel<decltype(rows)::value, decltype(type)::value,
                                                 decltype(nearest)::value, decltype(square)::value>;
    const unsigned resident = residentBlocks(kernel);
    if (resident == 0) {
      err = cudaGetLastError();
      if (err == cudaSuccess) err = cudaErrorUnknown;
      return;
    }
    const unsigned grid = std::min(warpBlocks(nb), resident);
    kernel<<<grid, kWarpThreads, 0, stream>>>(x, residual, n, bits, key, scales, words, alignedIn);
  };
  withCoding(key, [&](auto nearest, auto square) {
    withInputType(t, [&](auto type) {
      if (bucket == 128) {
        launch(std::integral_constant<int, 1>(), type, nearest, square);
      } else {
        launch(std::integral_constant<int, 4>(), type, nearest, square);
      }
    });
  });
  return err != cudaSuccess ? err : cudaGetLastError();
}

cudaError_t qsgdDecode(const void* in, size_t n, int bits, int bucket, float* out, bool accumulate,
                       cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const size_t nb = qsgd::numBuckets(n, bucket);
  if (nb > kMaxDeviceBuckets) return cudaErrorInvalidValue;  // the callers say why first
  const float* scales = static_cast<const float*>(in);
  const uint32_t* words = reinterpret_cast<const uint32_t*>(scales + nb);
  const bool alignedOut = aligned(out, 16);
  if (withWarpRows(bucket, [&](auto rows) {
        qsgdDecodeWarpKernel<decltype(rows)::value><<<warpBlocks(nb), kWarpThreads, 0, stream>>>(
            scales, words, n, bits, out, accumulate, alignedOut);
      })) {
    return cudaGetLastError();
  }
  qsgdDecodeKernel<<<decodeBlocks(n), kDecodeThreads, 0, stream>>>(scales, words, n, bits, bucket,
                                                                   out, accumulate);
  return cudaGetLastError();
}

cudaError_t advanceStep(uint64_t* step, cudaStream_t stream) {
  advanceStepKernel<<<1, 1, 0, stream>>>(step);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gc
