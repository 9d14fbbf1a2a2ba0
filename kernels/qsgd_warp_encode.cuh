// The QSGD warp path's encode kernels and the helpers they share with the
// decode (kernels/qsgd.cu): included by qsgd.cu and by one file per input
// type, qsgd_encode_{f32,f16,bf16}.cu, each of which instantiates that
// type's warp kernels (4 bucket widths x 2 roundings x 2 level kinds, the
// same 4 at buckets of 512 with the width fixed at 4). The instantiations
// were most of qsgd.cu's compile time; split by type, they compile in
// parallel.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "plugin/codecs/qsgd.h"
#include "qsgd_math.cuh"

namespace gc {
namespace cuda {

// One encode of a batch, as the single launch takes it.
struct WarpEncodeSegment {
  const void* x;
  float* residual;
  size_t n;
  float* scales;
  uint32_t* words;
  uint64_t stream;  // KeySpec::stream of this encode
  bool alignedIn;
};
// At most this many encodes a launch: 16 segments of 56 bytes (about 960
// bytes of parameters with the key) stay far within the 4 KiB a kernel's
// parameters may take; larger batches take several launches.
constexpr int kMaxEncodeSegments = 16;
struct WarpEncodeBatch {
  WarpEncodeSegment seg[kMaxEncodeSegments];
};

// A warp-path encode call: the bucket's width in rows of 128 (1, 2, 4, 8) and
// its arguments.
struct WarpEncodeCall {
  int rows;
  const void* x;
  float* residual;
  size_t n;
  int bits;
  KeySpec key;
  float* scales;
  uint32_t* words;
  bool alignedIn;
  size_t nb;  // buckets (a batch: its longest segment's)
  cudaStream_t stream;
  // A batch (qsgdEncodeBatch): `segments` encodes in one launch, each with
  // its own input, residual, count, output and key stream; the single
  // call's x, residual, n, scales, words and alignedIn are then unused.
  const WarpEncodeBatch* batch = nullptr;
  int segments = 0;
};

// Each defined in its type's file (qsgd_encode_{f32,f16,bf16}.cu).
template <DType T>
void warpEncode(const WarpEncodeCall& c);
template <>
void warpEncode<DType::F32>(const WarpEncodeCall& c);
template <>
void warpEncode<DType::F16>(const WarpEncodeCall& c);
template <>
void warpEncode<DType::BF16>(const WarpEncodeCall& c);

namespace {

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

// A plain bucket's table of the value of every code (2^bits entries, sign
// included: decodePlain of its level's value and the bucket's finite scale,
// so the same bits), filled by the warp for the decode and for the encode's
// residual. The first sync keeps a warp that codes several buckets from
// refilling it while a lane still reads the last bucket's.
__device__ __forceinline__ void fillCodeTable(float* codeTable, const float* levelTable,
                                              float scale, int bits, int lane) {
  const uint32_t s = (uint32_t)qsgd::levels(bits);
  __syncwarp();
  for (uint32_t c = lane; c < (1u << bits); c += 32) {
    codeTable[c] = qsgd::decodePlain(c, levelTable[c & s], scale, bits);
  }
  __syncwarp();
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

// kCoherent: through L2 (ld.global.cg), for memory the same kernel may write
// (a chained fused sum's accumulator), which the read-only path a const
// __restrict__ load may take does not allow.
template <bool kCoherent = false>
__device__ __forceinline__ void loadF32x4(const float* __restrict__ r, size_t i, bool vec,
                                          size_t limit, float v[4]) {
  if (vec) {
    const float4* p = reinterpret_cast<const float4*>(r + i);
    const float4 f = kCoherent ? __ldcg(p) : *p;
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
    return;
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    v[c] = i + c < limit ? (kCoherent ? __ldcg(r + i + c) : r[i + c]) : 0.0f;
  }
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
    __shared__ float codeTables[kWarpsPerBlock][2 * kLevelTable];  // the warp's own
    float* codeTable = codeTables[threadIdx.x >> 5];
    fillCodeTable(codeTable, levelTable, scale, bits, lane);
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

// One block of a warp-path encode: its kWarpsPerBlock buckets from bucket
// block * kWarpsPerBlock on (the single launch's blockIdx.x, or a batch
// segment's).
template <int R, DType T, bool kNearest, bool kSquare, int kBits>
__device__ __forceinline__ void encodeWarpBlock(const void* __restrict__ x,
                                                float* __restrict__ residual, size_t n, int bitsArg,
                                                const KeySpec& keySpec, float* __restrict__ scales,
                                                uint32_t* __restrict__ words, bool alignedIn,
                                                size_t block) {
  constexpr int kBucket = kRow * R;
  const int bits = kBits != 0 ? kBits : bitsArg;
  __shared__ float levelTable[128];
  const int lane = threadIdx.x & 31;
  const size_t b = block * kWarpsPerBlock + (threadIdx.x >> 5);
  const size_t base = b * kBucket;
  const size_t len = base < n ? min((size_t)kBucket, n - base) : 0;
  const bool whole = alignedIn && len == kBucket;
  // With the width a constant (the default rows) and for buckets of 1024, a
  // whole bucket's loads are issued before the block's key and level table
  // (thread 0 may read the comm's device step and hash it four times; then a
  // barrier), so that they are in flight meanwhile instead of after. The
  // runtime-width kernels of 512 load after the barrier: holding the raw
  // loads across it spills in their rows (56 registers at most); those of 128
  // and 256 take 4 to 9 more registers with them (fewer blocks per SM), and
  // those of 1024 (no register bound) 2 to 7 fewer.
  constexpr bool kEarly = kBits != 0 || R == 8;
  RawX4<T> xr[R];
  float4 rr[R];
  if (kEarly && whole) prefetchRows<R, T>(x, residual, base, lane, xr, rr);
  const uint64_t key = encodeKeyAndLevels(keySpec, bits, kSquare, levelTable);
  if (len == 0) return;
  if (kEarly && whole) {
    float v[R][4];
    sumRows<R, T>(xr, rr, residual != nullptr, v);
    codeBucket<R, kNearest, kSquare>(v, residual, n, bits, key, levelTable, scales, words, b, base,
                                     kBucket, lane, true);
  } else if (whole) {
    encodeRows<R, kNearest, kSquare>(x, T, residual, n, bits, key, levelTable, scales, words, b,
                                     base, kBucket, lane, true);
  } else {
    encodeRows<R, kNearest, kSquare>(x, T, residual, n, bits, key, levelTable, scales, words, b,
                                     base, len, lane, false);
  }
}

// Buckets of up to 512, every input type: at most 56 registers, so that 9
// blocks (36 warps) fit on an SM. Unbounded, the plain path's code takes 64
// (fp32, bf16: 8 blocks) and 72 (fp16: 7 blocks); bounded, the plain path
// issues about 1% more instructions, and with nvcc 13.0 for sm_90 a few
// variants spill a little to local memory (ptxas --resource-usage, R=4,
// kBits 4 unless said: bf16 stochastic uniform, the default, 12 bytes
// stored and 20 loaded; bf16 nearest square 8/8; fp32 stochastic square and
// fp16 stochastic square at any width 4/4; the batch kernels none). Whether
// that costs the bf16 encode anything: the H200's fp16 encode, which does
// not spill, ran as slowly (docs/algorithms.md, after the limiter table).
// The encode waits on
// its loads before it codes, so warps resident are what hide that wait.
// kBits: the width as a constant (4, the default, at the default bucket:
// warpEncodeLaunch), so that every shift, mask and row store of the codes
// folds to constants; 0: the width is `bitsArg`, any of 2..8. The same code,
// so the same bytes.
template <int R, DType T, bool kNearest, bool kSquare, int kBits = 0>
__global__ void __launch_bounds__(kWarpThreads, R <= 4 ? 9 : 1)
    qsgdEncodeWarpKernel(const void* __restrict__ x, float* __restrict__ residual, size_t n,
                         int bitsArg, KeySpec keySpec, float* __restrict__ scales,
                         uint32_t* __restrict__ words, bool alignedIn) {
  encodeWarpBlock<R, T, kNearest, kSquare, kBits>(x, residual, n, bitsArg, keySpec, scales, words,
                                                  alignedIn, blockIdx.x);
}

// A batch of encodes in one launch (the pieces a pipelined two-shot or
// reduce-scatter sends its peers): blockIdx.y picks the segment, blockIdx.x
// its block, as the single kernel's. Each segment's bytes are those of its
// own single launch: the same block body, the key with the segment's stream.
// A launch covers as many buckets as all its segments, so small pieces no
// longer each pay a launch and a partial last wave. Blocks past a shorter
// segment's end leave at once (the whole block alike, before any barrier).
template <int R, DType T, bool kNearest, bool kSquare, int kBits = 0>
__global__ void __launch_bounds__(kWarpThreads, R <= 4 ? 9 : 1)
    qsgdEncodeWarpBatchKernel(const WarpEncodeBatch batch, int bitsArg, KeySpec keySpec) {
  const WarpEncodeSegment& s = batch.seg[blockIdx.y];
  if ((size_t)blockIdx.x * kWarpsPerBlock * (kRow * R) >= s.n) return;
  keySpec.stream = s.stream;
  encodeWarpBlock<R, T, kNearest, kSquare, kBits>(s.x, s.residual, s.n, bitsArg, keySpec, s.scales,
                                                  s.words, s.alignedIn, blockIdx.x);
}

inline unsigned warpBlocks(size_t nb) {
  return (unsigned)((nb + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

// Calls f(std::integral_constant<DType, T>()) for the input type t: each
// input type has its own encode kernel.
template <typename F>
inline void withInputType(DType t, F&& f) {
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
inline void withCoding(const KeySpec& key, F&& f) {
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

// The launch behind warpEncode<T>, for the type files to instantiate.
template <DType T>
void warpEncodeLaunch(const WarpEncodeCall& c) {
  withCoding(c.key, [&](auto nearest, auto square) {
    auto go = [&](auto rows, auto bits) {
      constexpr int kR = decltype(rows)::value, kB = decltype(bits)::value;
      constexpr bool kN = decltype(nearest)::value, kS = decltype(square)::value;
      if (c.batch != nullptr) {
        qsgdEncodeWarpBatchKernel<kR, T, kN, kS, kB>
            <<<dim3(warpBlocks(c.nb), (unsigned)c.segments), kWarpThreads, 0, c.stream>>>(
                *c.batch, c.bits, c.key);
      } else {
        qsgdEncodeWarpKernel<kR, T, kN, kS, kB><<<warpBlocks(c.nb), kWarpThreads, 0, c.stream>>>(
            c.x, c.residual, c.n, c.bits, c.key, c.scales, c.words, c.alignedIn);
      }
    };
    const auto anyBits = std::integral_constant<int, 0>();
    switch (c.rows) {
      case 1:
        go(std::integral_constant<int, 1>(), anyBits);
        break;
      case 2:
        go(std::integral_constant<int, 2>(), anyBits);
        break;
      case 4:
        // The default width at the default bucket (512) with its width a constant.
        if (c.bits == 4) {
          go(std::integral_constant<int, 4>(), std::integral_constant<int, 4>());
        } else {
          go(std::integral_constant<int, 4>(), anyBits);
        }
        break;
      default:
        go(std::integral_constant<int, 8>(), anyBits);
        break;
    }
  });
}

}  // namespace
}  // namespace cuda
}  // namespace gc

// What a type's file (qsgd_encode_{f32,f16,bf16}.cu) defines: warpEncode<T>
// for T = DType::TYPE, whose kernels it instantiates.
#define GC_QSGD_WARP_ENCODE_TYPE(TYPE)                    \
  namespace gc {                                          \
  namespace cuda {                                        \
  template <>                                             \
  void warpEncode<DType::TYPE>(const WarpEncodeCall& c) { \
    warpEncodeLaunch<DType::TYPE>(c);                     \
  }                                                       \
  }                                                       \
  }
