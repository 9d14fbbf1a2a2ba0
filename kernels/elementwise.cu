// Elementwise kernels of the CUDA backend: type conversion with an optional
// addend, scaled conversion back, accumulation, and the non-finite check of
// a call's output with the clear of its state it decides. The same __host__
// __device__ helpers as the CPU backend, so both round identically.
#include <cuda_runtime.h>

#include <algorithm>

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

// Any block that reads a NaN or an infinity stores 1 (the same value: the
// race is benign); the flag is otherwise left as it was.
__global__ void flagNonFiniteKernel(const void* __restrict__ x, DType t, size_t n, float* flag) {
  bool bad = false;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n && !bad;
       i += (size_t)gridDim.x * blockDim.x) {
    bad = !isFiniteBits(floatToBits(loadAsFloat(x, t, i)) & 0x7fffffffu);
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1.0f;
}

// Every block reads the flag and returns at once in the common case.
__global__ void zeroIfFlaggedKernel(float* __restrict__ x, size_t n, const float* flag) {
  if (*flag == 0.0f) return;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    x[i] = 0.0f;
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

cudaError_t flagNonFinite(const void* x, DType t, size_t n, float* flag, cudaStream_t s) {
  const cudaError_t e = cudaMemsetAsync(flag, 0, sizeof(float), s);
  return e != cudaSuccess ? e : markNonFinite(x, t, n, flag, s);
}

cudaError_t markNonFinite(const void* x, DType t, size_t n, float* flag, cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  flagNonFiniteKernel<<<blocksFor(n), kThreads, 0, s>>>(x, t, n, flag);
  return cudaGetLastError();
}

cudaError_t zeroIfFlagged(float* x, size_t n, const float* flag, cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  // Nearly always the flag is 0 and every block returns at once: a small
  // grid (its loop strides over the rest on the rare clear) keeps that to
  // one wave's cost instead of up to 65536 blocks per state array.
  constexpr int kClearBlocks = 256;
  const int blocks = std::min(blocksFor(n), kClearBlocks);
  zeroIfFlaggedKernel<<<blocks, kThreads, 0, s>>>(x, n, flag);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gc
