// Device versions of data_host.cc: fill, bucket maxima and the check, each a
// grid-stride kernel over the same per-element math.
#include <cuda_runtime.h>

#include <vector>

#include "data_ops.h"

namespace gcbench {
namespace {

constexpr int kThreads = 256;
constexpr int kCheckBlocks = 1024;

unsigned gridFor(size_t n) {
  size_t blocks = (n + kThreads - 1) / kThreads;
  return (unsigned)(blocks < 65536 ? (blocks ? blocks : 1) : 65536);
}

__global__ void fillKernel(void* buf, gc::DType t, size_t count, uint64_t seed, int rank) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride)
    gc::storeFromFloat(buf, t, i, benchValue(seed, rank, i));
}

// One thread per bucket: buckets are short and this runs once per size.
__global__ void bucketMaxKernel(float* out, gc::DType t, size_t count, int bucket, uint64_t seed,
                                int rank, size_t nb) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x; b < nb; b += stride) {
    float m = 0;
    const size_t end = min(count, (b + 1) * (size_t)bucket);
    for (size_t i = b * bucket; i < end; ++i) m = fmaxf(m, fabsf(typedValue(seed, rank, i, t)));
    out[b] = m;
  }
}

struct Partial {
  double sumErr2, sumExact2, maxErr, maxExact, maxErrOverBound, wrong;
};

__global__ void checkKernel(CheckParams p, const float* bucketMax, const void* got, size_t count,
                            Partial* partials) {
  __shared__ Partial sh[kThreads];
  Partial a = {0, 0, 0, 0, 0, 0};
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
    const ElementCheck c = checkElement(p, bucketMax, i, gc::loadAsFloat(got, p.dtype, i));
    a.sumErr2 += c.err * c.err;
    a.sumExact2 += c.exact * c.exact;
    a.maxErr = maxKeepNan(a.maxErr, fabs(c.err));
    a.maxExact = maxKeepNan(a.maxExact, fabs(c.exact));
    a.maxErrOverBound = maxKeepNan(a.maxErrOverBound, c.errOverBound);
    a.wrong += c.wrong ? 1 : 0;
  }
  sh[threadIdx.x] = a;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) {
      Partial& x = sh[threadIdx.x];
      const Partial& y = sh[threadIdx.x + s];
      x.sumErr2 += y.sumErr2;
      x.sumExact2 += y.sumExact2;
      x.maxErr = maxKeepNan(x.maxErr, y.maxErr);
      x.maxExact = maxKeepNan(x.maxExact, y.maxExact);
      x.maxErrOverBound = maxKeepNan(x.maxErrOverBound, y.maxErrOverBound);
      x.wrong += y.wrong;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.x] = sh[0];
}

__global__ void pokeKernel(void* buf, gc::DType t, size_t i, float v) {
  gc::storeFromFloat(buf, t, i, v);
}

}  // namespace

cudaError_t fillDevice(void* buf, gc::DType t, size_t count, uint64_t seed, int rank,
                       cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  fillKernel<<<gridFor(count), kThreads, 0, stream>>>(buf, t, count, seed, rank);
  return cudaGetLastError();
}

cudaError_t bucketMaxDevice(float* out, gc::DType t, size_t count, int bucket, uint64_t seed,
                            int rank, cudaStream_t stream) {
  const size_t nb = (count + bucket - 1) / bucket;
  if (nb == 0) return cudaSuccess;
  bucketMaxKernel<<<gridFor(nb), kThreads, 0, stream>>>(out, t, count, bucket, seed, rank, nb);
  return cudaGetLastError();
}

cudaError_t checkDevice(const CheckParams& p, const float* bucketMax, const void* got, size_t count,
                        CheckTotals* totals, cudaStream_t stream) {
  *totals = CheckTotals();
  if (count == 0) return cudaSuccess;
  Partial* partials = nullptr;
  cudaError_t err = cudaMallocAsync(&partials, kCheckBlocks * sizeof(Partial), stream);
  if (err != cudaSuccess) return err;
  checkKernel<<<kCheckBlocks, kThreads, 0, stream>>>(p, bucketMax, got, count, partials);
  err = cudaGetLastError();
  std::vector<Partial> host(kCheckBlocks);
  if (err == cudaSuccess)
    err = cudaMemcpyAsync(host.data(), partials, kCheckBlocks * sizeof(Partial),
                          cudaMemcpyDeviceToHost, stream);
  cudaFreeAsync(partials, stream);
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
  if (err != cudaSuccess) return err;
  for (const Partial& x : host) {
    totals->sumErr2 += x.sumErr2;
    totals->sumExact2 += x.sumExact2;
    totals->maxErr = maxKeepNan(totals->maxErr, x.maxErr);
    totals->maxExact = maxKeepNan(totals->maxExact, x.maxExact);
    totals->maxErrOverBound = maxKeepNan(totals->maxErrOverBound, x.maxErrOverBound);
    totals->wrong += x.wrong;
  }
  return cudaSuccess;
}

cudaError_t pokeDevice(void* buf, gc::DType t, size_t i, float v, cudaStream_t stream) {
  pokeKernel<<<1, 1, 0, stream>>>(buf, t, i, v);
  return cudaGetLastError();
}

}  // namespace gcbench
