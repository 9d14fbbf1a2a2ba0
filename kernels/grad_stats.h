// Statistics of a reduced gradient for DQ-SGD's bit-width choice, computed
// in a fixed order so every rank (same data, same launch) gets the same bits.
#pragma once

#include <cuda_runtime_api.h>

#include "common_math.cuh"

namespace gc {

// sumLenMaxSq = sum over buckets of len_b * max|x|_b^2 (the quantization
// variance bound of s levels is sumLenMaxSq / (4 s^2)); sumSq = ||x||^2.
struct GradStats {
  double sumLenMaxSq;
  double sumSq;
};

namespace cuda {
// Device scratch of gradStatsScratchBytes; *result (device) gets the stats.
size_t gradStatsScratchBytes();
cudaError_t gradStats(const void* x, DType t, size_t n, int bucket, void* scratch,
                      GradStats* result, cudaStream_t stream);
}  // namespace cuda

}  // namespace gc
