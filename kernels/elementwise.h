#pragma once

#include <cuda_runtime_api.h>

#include "common_math.cuh"

namespace gc {
namespace cuda {
cudaError_t toFloat(const void* x, DType t, const float* addend, size_t n, float* out,
                    cudaStream_t s);
cudaError_t fromFloat(const float* x, size_t n, float divisor, DType t, void* out, cudaStream_t s);
cudaError_t add(float* acc, const float* x, size_t n, cudaStream_t s);
// *flag = 1 when x[0..n) of type t holds a NaN or an infinity, else 0.
cudaError_t flagNonFinite(const void* x, DType t, size_t n, float* flag, cudaStream_t s);
// *flag = 1 when x[0..n) of type t holds a NaN or an infinity, else as it was.
cudaError_t markNonFinite(const void* x, DType t, size_t n, float* flag, cudaStream_t s);
// x[0..n) = 0 when *flag is not 0.
cudaError_t zeroIfFlagged(float* x, size_t n, const float* flag, cudaStream_t s);
}  // namespace cuda
}  // namespace gc
