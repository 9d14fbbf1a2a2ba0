// Elias-coded QSGD kernels.
//
// Encode in three steps on the stream, all deterministic:
//   1. sizes pass: one block per bucket computes its scale and levels and the
//      bucket's stream length in words;
//   2. prefix sum over buckets (CUB, integers: exact in any order) straight
//      into the header's offsets, whose last entry is the stream length;
//   3. write pass: each block recomputes its levels (same RNG draws), zeroes
//      its own words and writes its bits, with the fused error feedback;
//      bucket 0's block then records the levels in offsets[0].
// Within a block thread t owns a contiguous run of elements; two block scans
// give it the index of the previous nonzero (for its first zero run) and its
// starting bit. A thread stores the words its run covers whole and ORs the
// at most two it shares with neighbours, so the words do not depend on
// thread timing (integer OR of disjoint bits).
// Decode: one thread per bucket walks the bucket's stream (the offsets let
// every bucket start at once).
#include <cuda_runtime.h>

#include <cub/device/device_scan.cuh>
#include <type_traits>

#include "plugin/codecs/elias.h"
#include "elias_math.cuh"

namespace gc {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kDecodeThreads = 128;
constexpr unsigned kFull = 0xffffffffu;
// The largest bucket's padded values (dynamic) and the scan slots (static)
// stay within the 48 KiB a launch gets without cudaFuncSetAttribute.
static_assert((qsgd::kMaxBucket + qsgd::kMaxBucket / 32) * 4 + 2 * 32 * 4 + 8 <= 48 * 1024,
              "eliasBucketKernel shared memory");

// Shared index with one pad word per 32, so the contiguous per-thread runs
// (stride = run length) do not all fall in one bank.
__device__ __forceinline__ int padIdx(int i) {
  return i + (i >> 5);
}

struct MaxOp {
  __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};
struct SumOp {
  __device__ uint32_t operator()(uint32_t a, uint32_t b) const { return a + b; }
};

// Exclusive scan over the block's threads (blockDim a multiple of 32); the
// block's aggregate in *total. smem holds 32 entries and is free afterwards.
template <typename T, typename Op>
__device__ T blockExclusiveScan(T v, T identity, Op op, T* smem, T* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  T x = v;
  for (int o = 1; o < 32; o <<= 1) {
    const T y = __shfl_up_sync(kFull, x, o);
    if (lane >= o) x = op(y, x);
  }
  if (lane == 31) smem[warp] = x;
  __syncthreads();
  if (warp == 0) {
    T w = lane < nwarps ? smem[lane] : identity;
    for (int o = 1; o < 32; o <<= 1) {
      const T y = __shfl_up_sync(kFull, w, o);
      if (lane >= o) w = op(y, w);
    }
    smem[lane] = w;
  }
  __syncthreads();
  T excl = __shfl_up_sync(kFull, x, 1);
  if (lane == 0) excl = identity;
  const T result = warp > 0 ? op(smem[warp - 1], excl) : excl;
  *total = smem[nwarps - 1];
  __syncthreads();
  return result;
}

__device__ __forceinline__ uint32_t blockMaxU32(uint32_t v, uint32_t* smem) {
  v = __reduce_max_sync(kFull, v);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    uint32_t w = lane < (int)(blockDim.x >> 5) ? smem[lane] : 0u;
    w = __reduce_max_sync(kFull, w);
    if (lane == 0) smem[0] = w;
  }
  __syncthreads();
  const uint32_t r = smem[0];
  __syncthreads();
  return r;
}

// Writes a run of bits starting at bit `pos` of `words`: whole words are
// stored, the partial first and last words ORed (the region is zero).
class BitWriter {
 public:
  __device__ BitWriter(uint32_t* words, uint32_t pos)
      : words_(words), word_(pos >> 5), fill_((int)(pos & 31)), partialFirst_((pos & 31) != 0) {}
  __device__ void put(elias::Codeword c) { put(c.bits, c.len); }
  __device__ void put(uint32_t bits, int len) {
    acc_ |= (uint64_t)bits << fill_;
    fill_ += len;
    if (fill_ >= 32) {
      if (partialFirst_) {
        atomicOr(&words_[word_], (uint32_t)acc_);
      } else {
        words_[word_] = (uint32_t)acc_;
      }
      partialFirst_ = false;
      acc_ >>= 32;
      fill_ -= 32;
      ++word_;
    }
  }
  __device__ void finish() {
    if ((uint32_t)acc_ != 0) atomicOr(&words_[word_], (uint32_t)acc_);
  }

 private:
  uint32_t* words_;
  uint32_t word_;
  int fill_;
  bool partialFirst_;
  uint64_t acc_ = 0;
};

using BitReader = elias::BitReader<uint32_t>;

// kWrite = false: the sizes pass (scales and per-bucket word counts);
// kWrite = true: the write pass (bits at the scanned offsets, residual); it
// writes offsets[0] too (the levels), so offsets is neither const nor
// __restrict__ there: no read of it may go through the read-only cache.
// kNearest: nearest rounding (KeySpec::nearest), no hash computed.
template <bool kWrite, bool kNearest>
__global__ void __launch_bounds__(kThreads)
    eliasBucketKernel(const void* __restrict__ x, DType t, float* __restrict__ residual, size_t n,
                      elias::Params p, KeySpec keySpec, float* __restrict__ scales,
                      uint32_t* __restrict__ counts, uint32_t* offsets,
                      uint32_t* __restrict__ stream) {
  extern __shared__ uint32_t sv[];  // padded: v as float bits, then (level << 1 | sign)
  __shared__ uint32_t ured[32];
  __shared__ int ired[32];
  __shared__ double l2sum;

  const uint64_t key = resolveKey(keySpec);
  const size_t b = blockIdx.x;
  const size_t base = b * (size_t)p.bucket;
  const int len = (int)min((size_t)p.bucket, n - base);
  const int tid = threadIdx.x, T = blockDim.x;

  uint32_t maxBits = 0;
  for (int i = tid; i < len; i += T) {
    float v = loadAsFloat(x, t, base + i);
    if (residual) v = fadd(v, residual[base + i]);
    sv[padIdx(i)] = floatToBits(v);
    maxBits = max(maxBits, floatToBits(v) & 0x7fffffffu);
  }
  maxBits = blockMaxU32(maxBits, ured);

  float scale;
  if (p.norm == elias::Norm::Max) {
    scale = qsgd::scaleFromMaxBits(maxBits);
  } else {
    if (tid < 32) {
      double part = 0.0;
      for (int i = tid; i < len; i += 32) {
        const double v = (double)bitsToFloat(sv[padIdx(i)]);
        part = dadd(part, dmul(v, v));
      }
      for (int o = 16; o > 0; o >>= 1) part = dadd(part, __shfl_down_sync(kFull, part, o));
      if (tid == 0) l2sum = part;
    }
    __syncthreads();
    scale = elias::l2ScaleFromSumSquares(l2sum);
  }
  const float rec = qsgd::reciprocal(scale, p.s);
  const bool finite = isFiniteBits(maxBits);
  if (!kWrite && tid == 0) scales[b] = scale;

  for (int i = tid; i < len; i += T) {
    const float v = bitsToFloat(sv[padIdx(i)]);
    const int lev =
        elias::quantizeLevel(v, scale, rec, p.s, qsgd::roundingDraw<kNearest>(key, base + i));
    const bool neg = elias::negativeCode(v, lev);
    if (kWrite && residual && finite) {
      residual[base + i] = fsub(v, elias::decodeValue(lev, neg, scale, p.s));
    }
    sv[padIdx(i)] = ((uint32_t)lev << 1) | (neg ? 1u : 0u);
  }
  __syncthreads();

  const int run = (len + T - 1) / T;
  const int lo = min(tid * run, len), hi = min(lo + run, len);
  int last = -1;
  for (int i = lo; i < hi; ++i) {
    if (sv[padIdx(i)] >> 1) last = i;
  }
  int lastInBucket;
  const int prev = blockExclusiveScan(last, -1, MaxOp(), ired, &lastInBucket);

  uint32_t nbits = 0;
  for (int i = lo, q = prev; i < hi; ++i) {
    const uint32_t lev = sv[padIdx(i)] >> 1;
    if (lev == 0) continue;
    nbits += elias::codeLength(p.code, (uint32_t)(i - q)) + 1 + elias::codeLength(p.code, lev);
    q = i;
  }
  uint32_t totalBits;
  const uint32_t start = blockExclusiveScan(nbits, 0u, SumOp(), ured, &totalBits);
  const bool terminator = lastInBucket < len - 1;
  const uint32_t termValue = (uint32_t)(len - lastInBucket);

  if (!kWrite) {
    if (tid == 0) {
      const uint32_t bits = totalBits + (terminator ? elias::codeLength(p.code, termValue) : 0);
      counts[b] = (bits + 31) / 32;
      if (b == 0) counts[gridDim.x] = 0;
    }
    return;
  }

  uint32_t* words = stream + offsets[b];
  const uint32_t nw = offsets[b + 1] - offsets[b];
  for (uint32_t w = tid; w < nw; w += T) words[w] = 0;
  __syncthreads();
  // Bucket 0 starts at word 0 (the scan's first output), so offsets[0] holds
  // the levels for the decoder to check; only this block reads it, above.
  if (b == 0 && tid == 0) offsets[0] = (uint32_t)p.s;

  BitWriter out(words, start);
  for (int i = lo, q = prev; i < hi; ++i) {
    const uint32_t code = sv[padIdx(i)];
    const uint32_t lev = code >> 1;
    if (lev == 0) continue;
    out.put(elias::encodeNumber(p.code, (uint32_t)(i - q)));
    out.put(code & 1u, 1);
    out.put(elias::encodeNumber(p.code, lev));
    q = i;
  }
  out.finish();
  if (terminator && tid == T - 1) {
    BitWriter tail(words, totalBits);
    tail.put(elias::encodeNumber(p.code, termValue));
    tail.finish();
  }
}

__global__ void __launch_bounds__(kDecodeThreads)
    eliasDecodeKernel(const float* __restrict__ scales, const uint32_t* __restrict__ offsets,
                      const uint32_t* __restrict__ stream, size_t n, elias::Params p,
                      float* __restrict__ out, bool accumulate, uint32_t maxStreamWords) {
  const size_t nb = elias::numBuckets(n, p.bucket);
  const size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= nb) return;
  const size_t base = b * (size_t)p.bucket;
  const uint32_t len = (uint32_t)min((size_t)p.bucket, n - base);
  const float scale = scales[b];
  const float zero = elias::decodeValue(0, false, scale, p.s);
  // The offsets come from the wire: a bucket must lie inside the stream
  // (offsets[nb] words) and inside the buffer the caller has. offsets[0]
  // holds the encoder's levels (bucket 0 starts at word 0): other levels
  // would scale every value by the encoder's over the decoder's: all NaN.
  const uint32_t o0 = b == 0 ? 0u : offsets[b], o1 = offsets[b + 1];
  const uint32_t total = min(offsets[nb], maxStreamWords);
  // Scales are >= +0 or the positive canonical NaN: a sign bit is not ours.
  bool bad =
      o1 < o0 || o1 > total || (floatToBits(scale) >> 31) != 0 || offsets[0] != (uint32_t)p.s;
  BitReader r(stream + (bad ? 0u : o0), bad ? 0u : o1 - o0);
  float* o = out + base;
  uint32_t i = 0;
  while (!bad && i < len) {
    // A gap read past the bucket's span is malformed too: a last code (the
    // trailing zeros' terminator) cut off by the span would otherwise read
    // zeros past it as its own bits and decode without a NaN.
    const uint32_t g = r.number(p.code);
    if (g == 0 || g > len - i + 1 || r.overrun()) {
      bad = true;
      break;
    }
    for (uint32_t k = 1; k < g; ++k, ++i) o[i] = accumulate ? fadd(o[i], zero) : zero;
    if (i == len) break;
    const bool neg = (r.peek() & 1u) != 0;
    r.skip(1);
    const uint32_t lev = r.number(p.code);
    if (lev == 0 || lev > (uint32_t)p.s || r.overrun()) {
      bad = true;
      break;
    }
    const float v = elias::decodeValue((int)lev, neg, scale, p.s);
    o[i] = accumulate ? fadd(o[i], v) : v;
    ++i;
  }
  if (bad || r.overrun()) {
    for (; i < len; ++i) o[i] = __int_as_float(0x7fc00000);
  }
}

struct EncodeWorkspace {
  uint32_t* counts;
  void* scanTemp;
  size_t scanBytes;
};

size_t alignUp256(size_t x) {
  return (x + 255) / 256 * 256;
}

cudaError_t scanTempBytes(size_t items, size_t* bytes) {
  *bytes = 0;
  return CUB_NS_QUALIFIER::DeviceScan::ExclusiveSum(nullptr, *bytes, (const uint32_t*)nullptr,
                                                    (uint32_t*)nullptr, items);
}

}  // namespace

cudaError_t eliasWorkspaceBytes(size_t n, int bucket, size_t* bytes) {
  const size_t items = elias::numBuckets(n, bucket) + 1;
  size_t scan = 0;
  cudaError_t err = scanTempBytes(items, &scan);
  if (err != cudaSuccess) return err;
  *bytes = alignUp256(items * sizeof(uint32_t)) + alignUp256(scan);
  return cudaSuccess;
}

cudaError_t eliasEncode(const void* x, DType t, float* residual, size_t n, const elias::Params& p,
                        const KeySpec& key, void* out, void* workspace, size_t workspaceBytes,
                        cudaStream_t stream) {
  const size_t nb = elias::numBuckets(n, p.bucket);
  float* scales = static_cast<float*>(out);
  uint32_t* offsets = reinterpret_cast<uint32_t*>(scales + nb);
  uint32_t* streamWords = offsets + nb + 1;
  if (nb == 0) return cudaMemsetAsync(offsets, 0, sizeof(uint32_t), stream);

  size_t need = 0;
  cudaError_t err = eliasWorkspaceBytes(n, p.bucket, &need);
  if (err != cudaSuccess) return err;
  if (workspace == nullptr || workspaceBytes < need) return cudaErrorInvalidValue;
  uint32_t* counts = static_cast<uint32_t*>(workspace);
  void* scanTemp = static_cast<char*>(workspace) + alignUp256((nb + 1) * sizeof(uint32_t));
  size_t scanBytes = 0;
  err = scanTempBytes(nb + 1, &scanBytes);
  if (err != cudaSuccess) return err;

  const int threads = p.bucket < kThreads ? p.bucket : kThreads;
  const size_t smem = (size_t)(p.bucket + p.bucket / 32) * sizeof(uint32_t);
  // Both passes must draw the same levels: one rounding for both launches.
  auto launch = [&](auto nearest) -> cudaError_t {
    constexpr bool kNearest = decltype(nearest)::value;
    eliasBucketKernel<false, kNearest><<<(unsigned)nb, threads, smem, stream>>>(
        x, t, residual, n, p, key, scales, counts, nullptr, nullptr);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    e = CUB_NS_QUALIFIER::DeviceScan::ExclusiveSum(scanTemp, scanBytes, counts, offsets, nb + 1,
                                                   stream);
    if (e != cudaSuccess) return e;
    eliasBucketKernel<true, kNearest><<<(unsigned)nb, threads, smem, stream>>>(
        x, t, residual, n, p, key, scales, nullptr, offsets, streamWords);
    return cudaGetLastError();
  };
  return key.nearest ? launch(std::true_type()) : launch(std::false_type());
}

cudaError_t eliasDecode(const void* in, size_t n, const elias::Params& p, float* out,
                        bool accumulate, cudaStream_t stream, size_t inBytes) {
  const size_t nb = elias::numBuckets(n, p.bucket);
  if (nb == 0) return cudaSuccess;
  // The kernel reads the whole header (scales and offsets): a caller holding
  // less has nothing to decode (gradcompEliasDecodeBounded refuses it with a
  // sentence first). Otherwise the stream words it holds past the header, at
  // most what a uint32 offset can name.
  const size_t header = 4 * elias::headerWords(n, p.bucket);
  if (inBytes < header) return cudaErrorInvalidValue;
  const size_t words = (inBytes - header) / 4;
  const uint32_t maxStreamWords = words < 0xffffffffu ? (uint32_t)words : 0xffffffffu;
  const float* scales = static_cast<const float*>(in);
  const uint32_t* offsets = reinterpret_cast<const uint32_t*>(scales + nb);
  const uint32_t* streamWords = offsets + nb + 1;
  const size_t blocks = (nb + kDecodeThreads - 1) / kDecodeThreads;
  eliasDecodeKernel<<<(unsigned)blocks, kDecodeThreads, 0, stream>>>(
      scales, offsets, streamWords, n, p, out, accumulate, maxStreamWords);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gc
