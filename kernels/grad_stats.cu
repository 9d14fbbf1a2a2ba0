// DQ-SGD statistics kernels. Warp w of block k takes buckets k*W + w,
// k*W + w + G*W, ... in turn (a fixed assignment); within a bucket the lanes
// take strided elements and reduce with the shuffle-down tree. A second
// kernel adds the per-warp partials in a fixed order. No atomics, so the
// result depends only on the data and the launch shape.
#include <cuda_runtime.h>

#include "grad_stats.h"

namespace gc {
namespace cuda {
namespace {

constexpr int kBlocks = kGradStatsBlocks;
constexpr int kWarps = kGradStatsWarps;
constexpr int kPartials = kBlocks * kWarps;
constexpr unsigned kFull = 0xffffffffu;

__global__ void __launch_bounds__(kWarps * 32)
    bucketStatsKernel(const void* __restrict__ x, DType t, size_t n, int bucket,
                      GradStats* __restrict__ partials) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const size_t nb = (n + bucket - 1) / bucket;
  double a = 0.0, g = 0.0;
  for (size_t b = (size_t)blockIdx.x * kWarps + warp; b < nb; b += (size_t)gridDim.x * kWarps) {
    const size_t base = b * (size_t)bucket;
    const size_t len = min((size_t)bucket, n - base);
    uint32_t maxBits = 0;
    double ss = 0.0;
    for (size_t i = lane; i < len; i += 32) {
      const float v = loadAsFloat(x, t, base + i);
      maxBits = max(maxBits, floatToBits(v) & 0x7fffffffu);
      ss = dadd(ss, dmul((double)v, (double)v));
    }
    maxBits = __reduce_max_sync(kFull, maxBits);
    for (int o = 16; o > 0; o >>= 1) ss = dadd(ss, __shfl_down_sync(kFull, ss, o));
    if (lane == 0) {
      const double m = (double)bitsToFloat(maxBits);
      a = dadd(a, dmul((double)len, dmul(m, m)));
      g = dadd(g, ss);
    }
  }
  if (lane == 0) partials[blockIdx.x * kWarps + warp] = GradStats{a, g};
}

__global__ void sumPartialsKernel(const GradStats* __restrict__ partials, int count,
                                  GradStats* __restrict__ result) {
  const int lane = threadIdx.x;
  double a = 0.0, g = 0.0;
  for (int i = lane; i < count; i += 32) {
    a = dadd(a, partials[i].sumLenMaxSq);
    g = dadd(g, partials[i].sumSq);
  }
  for (int o = 16; o > 0; o >>= 1) {
    a = dadd(a, __shfl_down_sync(kFull, a, o));
    g = dadd(g, __shfl_down_sync(kFull, g, o));
  }
  if (lane == 0) *result = GradStats{a, g};
}

}  // namespace

size_t gradStatsScratchBytes() {
  return sizeof(GradStats) * kPartials;
}

cudaError_t gradStats(const void* x, DType t, size_t n, int bucket, void* scratch,
                      GradStats* result, cudaStream_t stream) {
  GradStats* partials = static_cast<GradStats*>(scratch);
  bucketStatsKernel<<<kBlocks, kWarps * 32, 0, stream>>>(x, t, n, bucket, partials);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  sumPartialsKernel<<<1, 32, 0, stream>>>(partials, kPartials, result);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gc
