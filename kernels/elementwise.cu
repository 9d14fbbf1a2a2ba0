// Elementwise kernels of the CUDA backend: type conversion with an optional
// addend, scaled conversion back, and accumulation. The same __host__
// __device__ helpers as the CPU backend, so both round identically.
#include <cuda_runtime.h>

#include "common_math.cuh"
#include "elementwise.h"

namespace gc {
namespace cuda {
namespace {

constexpr int kThreads = 256;

int blocksFor(size_t n) {
  size_t b = (n + kThreads - 1) / kThreads;
  return (int)(b < 65536 ? b : 65536);
}

// In place is allowed and used (out == addend in the ring's first step,
// out == x for an fp32 average), so those pointers are not __restrict__:
// with it the compiler may read them through the non-coherent cache path,
// which requires memory the kernel does not write.
__global__ void toFloatKernel(const void* __restrict__ x, DType t, const float* addend, size_t n,
                              float* out) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float v = loadAsFloat(x, t, i);
    out[i] = addend ? fadd(v, addend[i]) : v;
  }
}

__global__ void fromFloatKernel(const float* x, size_t n, float divisor, DType t, void* out) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    storeFromFloat(out, t, i, divisor == 1.0f ? x[i] : fdiv(x[i], divisor));
  }
}

__global__ void addKernel(float* __restrict__ acc, const float* __restrict__ x, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    acc[i] = fadd(acc[i], x[i]);
  }
}

}  // namespace

cudaError_t toFloat(const void* x, DType t, const float* addend, size_t n, float* out,
                    cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  toFloatKernel<<<blocksFor(n), kThreads, 0, s>>>(x, t, addend, n, out);
  return cudaGetLastError();
}

cudaError_t fromFloat(const float* x, size_t n, float divisor, DType t, void* out, cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  fromFloatKernel<<<blocksFor(n), kThreads, 0, s>>>(x, n, divisor, t, out);
  return cudaGetLastError();
}

cudaError_t add(float* acc, const float* x, size_t n, cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  addKernel<<<blocksFor(n), kThreads, 0, s>>>(acc, x, n);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gc
