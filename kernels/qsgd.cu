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
#include "qsgd_warp_encode.cuh"

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

// The cb-bit run of codes that starts at bit sh of word w0, continued in
// word w0 + 1 where it straddles the two: words at or past totalWords read
// as zeros (kWholeBucket: w0 is known to exist, a whole bucket's word).
template <bool kWholeBucket>
__device__ __forceinline__ uint32_t codeRun(const uint32_t* __restrict__ words, size_t w0, int sh,
                                            int cb, uint32_t mask, size_t totalWords) {
  uint64_t pair = kWholeBucket || w0 < totalWords ? words[w0] : 0u;
  if (sh + cb > 32 && w0 + 1 < totalWords) pair |= (uint64_t)words[w0 + 1] << 32;
  return (uint32_t)(pair >> sh) & mask;
}

// The codes of a whole bucket's R rows for lane `lane`: chunk[r] holds the
// lane's 4 codes of row r (4*bits bits, the first in the low bits). One
// 32-bit word per lane and row where a lane's codes lie in one word (bits 2,
// 4, 8), else the word pair they straddle. A whole bucket's words all exist.
template <int R>
__device__ __forceinline__ void loadBucketChunks(const uint32_t* __restrict__ words,
                                                 size_t bucketWord, size_t totalWords, int bits,
                                                 int lane, uint32_t (&chunk)[R]) {
  const int cb = 4 * bits;
  const uint32_t mask = cb == 32 ? 0xffffffffu : (1u << cb) - 1u;
  const int bit = lane * cb;
  const int sh = bit & 31;
  if ((bits & (bits - 1)) == 0) {  // bits 2, 4, 8: cb divides 32
#pragma unroll
    for (int r = 0; r < R; ++r) {
      chunk[r] = (words[bucketWord + (size_t)r * cb + (bit >> 5)] >> sh) & mask;
    }
  } else {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      chunk[r] =
          codeRun<true>(words, bucketWord + (size_t)r * cb + (bit >> 5), sh, cb, mask, totalWords);
    }
  }
}

// Whether any of four fp32 values at element i, those below `limit` unless
// vec, is a NaN or an infinity (a value past the end is never stored).
__device__ __forceinline__ bool anyNonFinite4(const float w[4], size_t i, bool vec, size_t limit) {
  bool bad = false;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    bad |= (vec || i + c < limit) && !isFiniteBits(floatToBits(w[c]) & 0x7fffffffu);
  }
  return bad;
}

// Four decoded values into an output of type kOut at element i, each divided
// by `divisor` first when kDivide: what fromFloat does to a decode's fp32
// scratch (storeFromFloat of fdiv), so the same bits in one pass. `vec`: the
// four are in range and the output aligned to four elements (one 16- or
// 8-byte store); otherwise element by element below `limit`. Returns whether
// a stored value is a NaN or an infinity in kOut (a finite fp32 value past
// the half type's range included): the non-finite check's flag, read off
// the bits stored, so it is what a pass over the output would find.
template <DType kOut, bool kDivide>
__device__ __forceinline__ bool storeOut4(void* __restrict__ out, size_t i, bool vec, size_t limit,
                                          const float d[4], float divisor) {
  float w[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) w[c] = kDivide ? fdiv(d[c], divisor) : d[c];
  if constexpr (kOut == DType::F32) {
    store4(static_cast<float*>(out), i, vec, limit, w);
    return anyNonFinite4(w, i, vec, limit);
  } else {
    uint16_t h[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) h[c] = kOut == DType::F16 ? floatToHalf(w[c]) : floatToBf16(w[c]);
    // An all-ones exponent: fp16's 5 bits, bf16's 8.
    constexpr uint16_t kExp = kOut == DType::F16 ? 0x7c00u : 0x7f80u;
    bool bad = false;
#pragma unroll
    for (int c = 0; c < 4; ++c) bad |= (vec || i + c < limit) && (h[c] & kExp) == kExp;
    uint16_t* o16 = static_cast<uint16_t*>(out);
    if (vec) {
      *reinterpret_cast<uint2*>(o16 + i) = make_uint2((uint32_t)h[0] | ((uint32_t)h[1] << 16),
                                                      (uint32_t)h[2] | ((uint32_t)h[3] << 16));
      return bad;
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      if (i + c < limit) o16[i + c] = h[c];
    }
    return bad;
  }
}

// One warp's bucket decoded row by row: row(r, i, d, whole) for each of its
// R rows, i the row's first element of this lane, d its 4 values. `whole`:
// a whole bucket (all four of every row in range) whose codes are already in
// chunk (loadBucketChunks), passed on to row (a constant true on the plain
// path). A whole bucket with a finite scale takes the plain path: a table of
// the value of every code (2^bits of them, sign included), which the warp
// fills from the block's level table (decodePlain: the level times the
// scale, negated when the sign bit is set, so the same bits), then one
// shared-memory load per element instead of the general path's level lookup,
// multiply, negation and per-element finiteness test, and no bounds checks.
// Otherwise each row's codes are read here, those past n as zeros.
template <int R, typename Row>
__device__ __forceinline__ void decodeBucket(const uint32_t (&chunk)[R], bool whole, float stored,
                                             const uint32_t* __restrict__ words, size_t bucketWord,
                                             size_t totalWords, size_t base, int bits,
                                             const float* levelTables, float* codeTable, int lane,
                                             Row&& row) {
  const int s = qsgd::levels(bits);
  const float* levelTable = decodeTable(levelTables, stored);
  const float scale = qsgd::scaleMagnitude(stored);
  if (whole && isFiniteBits(floatToBits(scale))) {
    fillCodeTable(codeTable, levelTable, scale, bits, lane);
    const uint32_t codeMask = (1u << bits) - 1u;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float d[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) d[c] = codeTable[(chunk[r] >> (c * bits)) & codeMask];
      row(r, base + r * kRow + lane * 4, d, true);
    }
    return;
  }
  const int cb = 4 * bits;
  const uint32_t mask = cb == 32 ? 0xffffffffu : (1u << cb) - 1u;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int bit = lane * cb;
    const uint32_t rowChunk = codeRun<false>(words, bucketWord + (size_t)r * cb + (bit >> 5),
                                             bit & 31, cb, mask, totalWords);
    float d[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const uint32_t code = (rowChunk >> (c * bits)) & ((1u << bits) - 1u);
      d[c] = qsgd::decodeWithLevel(code, levelTable[code & (uint32_t)s], scale, bits);
    }
    row(r, base + r * kRow + lane * 4, d, whole);
  }
}

// One block of a warp-path decode: its kWarpsPerBlock buckets from bucket
// block * kWarpsPerBlock on (the single launch's blockIdx.x, or a batch
// segment's).
// kOut, kDivide: the output's type, and whether each value is divided by
// `divisor` before it is stored (storeOut4); accumulate: fp32 undivided only.
// kFlag: flag (may be null) is set to 1 where a value stored is a NaN or an
// infinity (never cleared here; qsgdDecodeToOutput); without it (the single
// decode) no value is tested, so that kernel's code is what it was before
// the flag.
template <int R, int kBits, DType kOut = DType::F32, bool kDivide = false, bool kFlag = false>
__device__ __forceinline__ void decodeWarpBlock(const float* __restrict__ scales,
                                                const uint32_t* __restrict__ words, size_t n,
                                                int bitsArg, void* __restrict__ out,
                                                bool accumulate, bool alignedOut, size_t block,
                                                float divisor = 1.0f, float* flag = nullptr) {
  constexpr int kBucket = kRow * R;
  const int bits = kBits != 0 ? kBits : bitsArg;
  __shared__ float levelTables[2 * kLevelTable];
  __shared__ float codeTables[kWarpsPerBlock][2 * kLevelTable];
  const int lane = threadIdx.x & 31;
  const size_t b = block * kWarpsPerBlock + (threadIdx.x >> 5);
  const size_t base = b * kBucket;
  const size_t len = base < n ? min((size_t)kBucket, n - base) : 0;
  const bool vec = alignedOut && len == kBucket;
  const size_t totalWords = qsgd::codeWords(n, bits);
  const size_t bucketWord = base * bits >> 5;
  // The bucket's scale and (whole buckets) its codes are loaded before
  // anything waits: the two loads and the block's table fill overlap,
  // instead of the codes' load waiting for the scale's test.
  float stored = 0.0f;
  uint32_t chunk[R];
  if (len > 0) stored = scales[b];
  if (vec) loadBucketChunks<R>(words, bucketWord, totalWords, bits, lane, chunk);
  fillDecodeTables(levelTables, qsgd::levels(bits));
  if (len == 0) return;
  // The plain path only where the output is aligned too (vec): its stores
  // are then whole vectors.
  bool bad = false;
  decodeBucket<R>(chunk, vec, stored, words, bucketWord, totalWords, base, bits, levelTables,
                  codeTables[threadIdx.x >> 5], lane,
                  [&](int, size_t i, float(&d)[4], bool rowVec) {
                    if constexpr (kOut == DType::F32 && !kDivide) {
                      float* o32 = static_cast<float*>(out);
                      if (accumulate) {
                        float o[4];
                        loadF32x4(o32, i, rowVec, n, o);
#pragma unroll
                        for (int c = 0; c < 4; ++c) d[c] = fadd(o[c], d[c]);
                      }
                      store4(o32, i, rowVec, n, d);
                      if constexpr (kFlag) bad |= anyNonFinite4(d, i, rowVec, n);
                    } else {
                      const bool b = storeOut4<kOut, kDivide>(out, i, rowVec, n, d, divisor);
                      if constexpr (kFlag) bad |= b;
                    }
                  });
  // Any lane that stored one: the same value, so the race is benign.
  if constexpr (kFlag) {
    if (bad && flag != nullptr) *flag = 1.0f;
  }
}

// kBits: the width as a constant (4 at the default bucket: qsgdDecode), so
// that the codes' shifts and masks fold; 0: the width is `bitsArg`.
template <int R, int kBits = 0>
__global__ void __launch_bounds__(kWarpThreads, 12)
    qsgdDecodeWarpKernel(const float* __restrict__ scales, const uint32_t* __restrict__ words,
                         size_t n, int bitsArg, float* __restrict__ out, bool accumulate,
                         bool alignedOut) {
  decodeWarpBlock<R, kBits>(scales, words, n, bitsArg, out, accumulate, alignedOut, blockIdx.x);
}

// One decode of a batch, as the single launch takes it (out: of the batch's
// output type).
struct WarpDecodeSegment {
  const float* scales;
  const uint32_t* words;
  size_t n;
  void* out;
  bool alignedOut;
};
// At most this many decodes a launch (40 bytes each).
constexpr int kMaxDecodeSegments = 16;
struct WarpDecodeBatch {
  WarpDecodeSegment seg[kMaxDecodeSegments];
};

// A batch of decodes in one launch (a pipelined two-shot's or ring's N
// chunks of a piece into the caller's output): blockIdx.y picks the segment,
// blockIdx.x its block, as the single kernel's, so each segment's output is
// its single launch's. Blocks past a shorter segment's end leave at once
// (the whole block alike, before any barrier).
// kOut, kDivide: decodes straight into the caller's output of type kOut,
// each value divided by `divisor` when kDivide (an Avg), as a decode into fp32
// scratch and fromFloat would give (Backend::qsgdDecodeToOutput's default),
// in one pass. flag (may be null): decodeWarpBlock's.
template <int R, int kBits = 0, DType kOut = DType::F32, bool kDivide = false>
__global__ void __launch_bounds__(kWarpThreads, 12)
    qsgdDecodeWarpBatchKernel(const WarpDecodeBatch batch, int bitsArg, bool accumulate,
                              float divisor, float* flag) {
  const WarpDecodeSegment& s = batch.seg[blockIdx.y];
  if ((size_t)blockIdx.x * kWarpsPerBlock * (kRow * R) >= s.n) return;
  decodeWarpBlock<R, kBits, kOut, kDivide, true>(s.scales, s.words, s.n, bitsArg, s.out, accumulate,
                                                 s.alignedOut, blockIdx.x, divisor, flag);
}

// One term of a fused sum as the kernel reads it (SumTerm): an encoding's
// scales and codes, or fp32 values (plain).
struct WarpSumTerm {
  const float* scales;
  const uint32_t* words;
  const float* plain;
};
// At most this many terms a launch (24 bytes each).
constexpr int kMaxSumTerms = 16;
struct WarpSumBatch {
  WarpSumTerm term[kMaxSumTerms];
};

// The owner's sum of `count` terms of n elements (qsgdSum), one warp a
// bucket: each term decoded (decodeBucket: the decode kernel's values) or
// loaded, added into registers in term order (the first taken as it is, as
// a decode overwrite or copy would store it), then stored once as kOut,
// divided when kDivide (storeOut4), as the decode-accumulate launches and
// fromFloat would leave it. The next encoded term's scale and codes are
// loaded before this one is added (prefetch: the loads of two terms in
// flight). `aligned`: out (4 elements) and every plain term (16 bytes), so
// a whole bucket's loads and stores are vectors. out may be a plain term
// (a chained launch's accumulator): each lane reads its elements before it
// writes them, so neither is __restrict__, and plain terms are read with
// coherent loads (loadF32x4<true>), not the read-only path. flag (may be
// null): set to 1 where a value stored is a NaN or an infinity, as
// decodeWarpBlock's.
template <int R, DType kOut, bool kDivide>
__global__ void __launch_bounds__(kWarpThreads, R <= 2 ? 12 : (R == 4 ? 8 : 4))
    qsgdSumWarpKernel(const WarpSumBatch batch, int count, size_t n, int bits, void* out,
                      bool alignedAll, float divisor, float* flag) {
  constexpr int kBucket = kRow * R;
  __shared__ float levelTables[2 * kLevelTable];
  __shared__ float codeTables[kWarpsPerBlock][2 * kLevelTable];
  const int lane = threadIdx.x & 31;
  const size_t b = (size_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  const size_t base = b * kBucket;
  const size_t len = base < n ? min((size_t)kBucket, n - base) : 0;
  const bool whole = len == kBucket;
  const bool vec = whole && alignedAll;
  const size_t totalWords = qsgd::codeWords(n, bits);
  const size_t bucketWord = base * bits >> 5;
  // Term k's scale and (whole buckets) codes, for an encoded term.
  auto fetch = [&](int k, float& stored, uint32_t(&chunk)[R]) {
    const WarpSumTerm& t = batch.term[k];
    if (t.plain != nullptr) return;
    stored = t.scales[b];
    if (whole) loadBucketChunks<R>(t.words, bucketWord, totalWords, bits, lane, chunk);
  };
  float stored = 0.0f, nextStored = 0.0f;
  uint32_t chunk[R], nextChunk[R];
  if (len > 0) fetch(0, stored, chunk);
  fillDecodeTables(levelTables, qsgd::levels(bits));
  if (len == 0) return;
  float acc[R][4];
  float* codeTable = codeTables[threadIdx.x >> 5];
  for (int k = 0; k < count; ++k) {
    const WarpSumTerm& t = batch.term[k];
    if (k + 1 < count) fetch(k + 1, nextStored, nextChunk);
    auto take = [&](int r, const float(&d)[4]) {
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[r][c] = k == 0 ? d[c] : fadd(acc[r][c], d[c]);
    };
    if (t.plain != nullptr) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float d[4];
        loadF32x4<true>(t.plain, base + r * kRow + lane * 4, vec, n, d);
        take(r, d);
      }
    } else {
      decodeBucket<R>(chunk, whole, stored, t.words, bucketWord, totalWords, base, bits,
                      levelTables, codeTable, lane,
                      [&](int r, size_t, float(&d)[4], bool) { take(r, d); });
    }
    stored = nextStored;
#pragma unroll
    for (int r = 0; r < R; ++r) chunk[r] = nextChunk[r];
  }
  bool bad = false;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const size_t i = base + r * kRow + lane * 4;
    if constexpr (kOut == DType::F32 && !kDivide) {
      store4(static_cast<float*>(out), i, vec, n, acc[r]);
      bad |= anyNonFinite4(acc[r], i, vec, n);
    } else {
      bad |= storeOut4<kOut, kDivide>(out, i, vec, n, acc[r], divisor);
    }
  }
  if (bad && flag != nullptr) *flag = 1.0f;
}

bool aligned(const void* p, size_t a) {
  return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0;
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

}  // namespace

namespace {
// The warp path's encode of input type t (its kernels are in that type's
// file, qsgd_encode_*.cu).
void warpEncodeOf(DType t, const WarpEncodeCall& c) {
  withInputType(t, [&](auto type) { warpEncode<decltype(type)::value>(c); });
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
  if (withWarpRows(bucket, [&](auto rows) {
        warpEncodeOf(t, WarpEncodeCall{decltype(rows)::value, x, residual, n, bits, key, scales,
                                       words, alignedIn, nb, stream});
      })) {
    return cudaGetLastError();
  }
  withCoding(key, [&](auto nearest, auto square) {
    const int threads = bucket < kEncodeThreads ? bucket : kEncodeThreads;
    const size_t smem = (size_t)bucket * (sizeof(float) + 1);
    qsgdEncodeKernel<decltype(nearest)::value, decltype(square)::value>
        <<<(unsigned)nb, threads, smem, stream>>>(x, t, residual, n, bits, bucket, key, scales,
                                                  words);
  });
  return cudaGetLastError();
}

namespace {

// Walks segs in groups of up to kMax non-empty ones (a batched launch's):
// add(slot, segment, buckets) for each of a group, then flush(m, most
// buckets) for the group; the first error ends the walk. A segment of more
// buckets than a grid takes is refused (the callers say why first).
template <int kMax, typename Segment, typename Add, typename Flush>
cudaError_t inGroups(const Segment* segs, int count, int bucket, Add&& add, Flush&& flush) {
  int i = 0;
  while (i < count) {
    int m = 0;
    size_t maxNb = 0;
    for (; i < count && m < kMax; ++i) {
      if (segs[i].n == 0) continue;
      const size_t nb = qsgd::numBuckets(segs[i].n, bucket);
      if (nb > kMaxDeviceBuckets) return cudaErrorInvalidValue;
      add(m++, segs[i], nb);
      maxNb = std::max(maxNb, nb);
    }
    if (m == 0) break;
    const cudaError_t err = flush(m, maxNb);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t qsgdEncodeBatch(const EncodeSegment* segs, int count, DType t, int bits, int bucket,
                            const KeySpec& key, cudaStream_t stream) {
  WarpEncodeBatch batch;
  const EncodeSegment* group[kMaxEncodeSegments];
  auto add = [&](int slot, const EncodeSegment& s, size_t nb) {
    float* scales = static_cast<float*>(s.out);
    batch.seg[slot] =
        WarpEncodeSegment{s.x,
                          s.residual,
                          s.n,
                          scales,
                          reinterpret_cast<uint32_t*>(scales + nb),
                          s.stream,
                          aligned(s.x, t == DType::F32 ? 16 : 8) && aligned(s.residual, 16)};
    group[slot] = &s;
  };
  auto flush = [&](int m, size_t maxNb) -> cudaError_t {
    // One segment, or a bucket without a warp path: single launches.
    const bool launched = m > 1 && withWarpRows(bucket, [&](auto rows) {
                            WarpEncodeCall c{decltype(rows)::value,
                                             nullptr,
                                             nullptr,
                                             0,
                                             bits,
                                             key,
                                             nullptr,
                                             nullptr,
                                             false,
                                             maxNb,
                                             stream};
                            c.batch = &batch;
                            c.segments = m;
                            warpEncodeOf(t, c);
                          });
    if (launched) return cudaGetLastError();
    for (int k = 0; k < m; ++k) {
      const EncodeSegment& s = *group[k];
      KeySpec sk = key;
      sk.stream = s.stream;
      const cudaError_t err = qsgdEncode(s.x, t, s.residual, s.n, bits, bucket, sk, s.out, stream);
      if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
  };
  return inGroups<kMaxEncodeSegments>(segs, count, bucket, add, flush);
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
        constexpr int R = decltype(rows)::value;
        // The default width at the default bucket (512) with its width a constant.
        if constexpr (R == 4) {
          if (bits == 4) {
            qsgdDecodeWarpKernel<R, 4><<<warpBlocks(nb), kWarpThreads, 0, stream>>>(
                scales, words, n, bits, out, accumulate, alignedOut);
            return;
          }
        }
        qsgdDecodeWarpKernel<R><<<warpBlocks(nb), kWarpThreads, 0, stream>>>(
            scales, words, n, bits, out, accumulate, alignedOut);
      })) {
    return cudaGetLastError();
  }
  qsgdDecodeKernel<<<decodeBlocks(n), kDecodeThreads, 0, stream>>>(scales, words, n, bits, bucket,
                                                                   out, accumulate);
  return cudaGetLastError();
}

namespace {

// Calls f(std::integral_constant<DType, T>(), std::bool_constant<divide>())
// for an output of type t, divided by `divisor` unless it is 1.
template <typename F>
void withOutput(DType t, float divisor, F&& f) {
  auto typed = [&](auto type) {
    if (divisor != 1.0f) {
      f(type, std::true_type());
    } else {
      f(type, std::false_type());
    }
  };
  withInputType(t, typed);
}

// The segments' decodes into outputs of type t (divided by `divisor` unless
// it is 1; accumulate: fp32 undivided only), up to kMaxDecodeSegments a
// launch. An fp32 undivided output of one segment without a flag, or of a
// bucket without a warp path, takes the single kernels; other outputs and a
// flag need the warp path (qsgdDecodeFuses).
cudaError_t decodeSegments(const DecodeSegment* segs, int count, int bits, int bucket,
                           bool accumulate, float divisor, DType t, float* flag,
                           cudaStream_t stream) {
  const bool plainF32 = t == DType::F32 && divisor == 1.0f;
  if ((!plainF32 || flag != nullptr) && !qsgdDecodeFuses(bucket)) return cudaErrorInvalidValue;
  if (!plainF32 && accumulate) return cudaErrorInvalidValue;
  const size_t esz = dtypeBytes(t);
  WarpDecodeBatch batch;
  auto add = [&](int slot, const DecodeSegment& s, size_t nb) {
    const float* scales = static_cast<const float*>(s.in);
    batch.seg[slot] = WarpDecodeSegment{scales, reinterpret_cast<const uint32_t*>(scales + nb), s.n,
                                        s.out, aligned(s.out, 4 * esz)};
  };
  auto flush = [&](int m, size_t maxNb) -> cudaError_t {
    // An fp32 undivided output of one segment without a flag, or a bucket
    // without a warp path: single launches.
    const dim3 grid(warpBlocks(maxNb), (unsigned)m);
    const bool launched =
        (m > 1 || !plainF32 || flag != nullptr) && withWarpRows(bucket, [&](auto rows) {
          constexpr int R = decltype(rows)::value;
          withOutput(t, divisor, [&](auto type, auto divide) {
            constexpr DType kT = decltype(type)::value;
            constexpr bool kDiv = decltype(divide)::value;
            // The default width at the default bucket (512) with its width a constant.
            if constexpr (R == 4) {
              if (bits == 4) {
                qsgdDecodeWarpBatchKernel<R, 4, kT, kDiv>
                    <<<grid, kWarpThreads, 0, stream>>>(batch, bits, accumulate, divisor, flag);
                return;
              }
            }
            qsgdDecodeWarpBatchKernel<R, 0, kT, kDiv>
                <<<grid, kWarpThreads, 0, stream>>>(batch, bits, accumulate, divisor, flag);
          });
        });
    if (launched) return cudaGetLastError();
    for (int k = 0; k < m; ++k) {
      const WarpDecodeSegment& w = batch.seg[k];
      const cudaError_t err =
          qsgdDecode(w.scales, w.n, bits, bucket, static_cast<float*>(w.out), accumulate, stream);
      if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
  };
  return inGroups<kMaxDecodeSegments>(segs, count, bucket, add, flush);
}

}  // namespace

bool qsgdDecodeFuses(int bucket) {
  return withWarpRows(bucket, [](auto) {});
}

cudaError_t qsgdDecodeBatch(const DecodeSegment* segs, int count, int bits, int bucket,
                            bool accumulate, cudaStream_t stream) {
  return decodeSegments(segs, count, bits, bucket, accumulate, 1.0f, DType::F32, nullptr, stream);
}

cudaError_t qsgdDecodeToOutput(const DecodeSegment* segs, int count, int bits, int bucket,
                               float divisor, DType t, cudaStream_t stream, float* flag) {
  return decodeSegments(segs, count, bits, bucket, false, divisor, t, flag, stream);
}

cudaError_t qsgdSum(const SumTerm* terms, int count, size_t n, int bits, int bucket, float divisor,
                    DType t, void* out, float* scratch, cudaStream_t stream, float* flag) {
  if (count < 1 || !qsgdDecodeFuses(bucket)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const size_t nb = qsgd::numBuckets(n, bucket);
  if (nb > kMaxDeviceBuckets) return cudaErrorInvalidValue;  // the callers say why first
  // More terms than a launch takes: the first launch sums into the fp32
  // accumulator, each later one takes it as its first term (the same adds,
  // in the same order), the last stores the output.
  float* acc = t == DType::F32 && divisor == 1.0f ? static_cast<float*>(out) : scratch;
  if (count > kMaxSumTerms && acc == nullptr) return cudaErrorInvalidValue;
  int i = 0;
  while (i < count) {
    WarpSumBatch batch = {};
    int m = 0;
    bool alignedAll = true;
    auto addTerm = [&](const void* in, bool plain) {
      const float* f = static_cast<const float*>(in);
      batch.term[m++] = plain ? WarpSumTerm{nullptr, nullptr, f}
                              : WarpSumTerm{f, reinterpret_cast<const uint32_t*>(f + nb), nullptr};
      alignedAll = alignedAll && (!plain || aligned(in, 16));
    };
    if (i > 0) addTerm(acc, true);
    for (; i < count && m < kMaxSumTerms; ++i) addTerm(terms[i].in, terms[i].plain);
    const bool last = i == count;
    void* to = last ? out : acc;
    const DType tt = last ? t : DType::F32;
    const float div = last ? divisor : 1.0f;
    alignedAll = alignedAll && aligned(to, 4 * dtypeBytes(tt));
    withWarpRows(bucket, [&](auto rows) {
      constexpr int R = decltype(rows)::value;
      withOutput(tt, div, [&](auto type, auto divide) {
        // Only the launch that stores the output sets the flag.
        qsgdSumWarpKernel<R, decltype(type)::value, decltype(divide)::value>
            <<<warpBlocks(nb), kWarpThreads, 0, stream>>>(batch, m, n, bits, to, alignedAll, div,
                                                          last ? flag : nullptr);
      });
    });
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

cudaError_t advanceStep(uint64_t* step, cudaStream_t stream) {
  advanceStepKernel<<<1, 1, 0, stream>>>(step);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gc
