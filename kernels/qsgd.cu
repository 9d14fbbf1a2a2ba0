// QSGD encode (+ fused error feedback) and decode kernels.
//
// Encode: one block per bucket. The bucket (g + r) is read once into shared
// memory, its max |x| reduced as integer bits (exact, order-free), codes and
// the new residual computed per element, then each thread assembles whole
// 32-bit words of the packed stream from the codes in shared memory. Buckets
// are multiples of 32 elements, so a bucket's codes start on a word boundary
// and no two blocks write the same word: no atomics, deterministic.
// Decode: one thread per element.
#include <cuda_runtime.h>

#include "../plugin/codec_qsgd.h"
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
  const float rec = qsgd::reciprocal(scale, qsgd::levels(bits));
  const bool finite = isFiniteBits(maxBits);
  if (threadIdx.x == 0) scales[b] = scale;
  for (int i = threadIdx.x; i < len; i += blockDim.x) {
    const uint32_t code = qsgd::encodeValue(sx[i], scale, rec, bits, uniform24(key, base + i));
    codes[i] = (uint8_t)code;
    if (residual && finite) residual[base + i] = fsub(sx[i], qsgd::decodeValue(code, scale, bits));
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

__global__ void __launch_bounds__(kDecodeThreads)
    qsgdDecodeKernel(const float* __restrict__ scales, const uint32_t* __restrict__ words, size_t n,
                     int bits, int bucket, float* __restrict__ out, bool accumulate) {
  __shared__ float levelTable[128];
  const int s = qsgd::levels(bits);
  for (int l = threadIdx.x; l <= s; l += blockDim.x) levelTable[l] = qsgd::levelValue(l, s);
  __syncthreads();
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint32_t code = qsgd::getCode(words, i, bits);
    float v = fmul(levelTable[code & (uint32_t)s], scales[i / bucket]);
    if ((code >> (bits - 1)) & 1u) v = -v;
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

cudaError_t qsgdEncode(const void* x, DType t, float* residual, size_t n, int bits, int bucket,
                       const KeySpec& key, void* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const size_t nb = qsgd::numBuckets(n, bucket);
  float* scales = static_cast<float*>(out);
  uint32_t* words = reinterpret_cast<uint32_t*>(scales + nb);
  const int threads = bucket < kEncodeThreads ? bucket : kEncodeThreads;
  const size_t smem = (size_t)bucket * (sizeof(float) + 1);
  qsgdEncodeKernel<<<(unsigned)nb, threads, smem, stream>>>(x, t, residual, n, bits, bucket, key,
                                                            scales, words);
  return cudaGetLastError();
}

cudaError_t qsgdDecode(const void* in, size_t n, int bits, int bucket, float* out, bool accumulate,
                       cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const size_t nb = qsgd::numBuckets(n, bucket);
  const float* scales = static_cast<const float*>(in);
  const uint32_t* words = reinterpret_cast<const uint32_t*>(scales + nb);
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
