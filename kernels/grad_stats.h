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

// The kernels' launch shape, which fixes the order of the sums: warp w of
// block k takes buckets k*W + w, k*W + w + B*W, ...; lane l of a warp the
// elements l, l + 32, ... of a bucket. hostGradStats follows the same order,
// so the CPU backend and the GPU choose the same widths bit for bit.
constexpr int kGradStatsBlocks = 132;
constexpr int kGradStatsWarps = 8;

namespace cuda {
// Device scratch of gradStatsScratchBytes; *result (device) gets the stats.
size_t gradStatsScratchBytes();
cudaError_t gradStats(const void* x, DType t, size_t n, int bucket, void* scratch,
                      GradStats* result, cudaStream_t stream);
}  // namespace cuda

}  // namespace gc
