#pragma once

#include <cuda_runtime_api.h>

#include "common_math.cuh"

namespace gc {
namespace cuda {
cudaError_t toFloat(const void* x, DType t, const float* addend, size_t n, float* out,
                    cudaStream_t s);
cudaError_t fromFloat(const float* x, size_t n, float divisor, DType t, void* out, cudaStream_t s);
cudaError_t add(float* acc, const float* x, size_t n, cudaStream_t s);
}  // namespace cuda
}  // namespace gc
