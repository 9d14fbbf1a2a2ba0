// Filling inputs, per-bucket maxima and checking results, on the host (CPU
// backend) and on the device (CUDA backend), both from the math in data.h.
#pragma once

#include <cuda_runtime_api.h>
#include <stddef.h>

#include <vector>

#include "data.h"

namespace gcbench {

void fillHost(void* buf, gc::DType t, size_t count, uint64_t seed, int rank);
// out[b] = max |typedValue(rank, i)| over bucket b (numBuckets(count, bucket) entries).
void bucketMaxHost(float* out, gc::DType t, size_t count, int bucket, uint64_t seed, int rank);
CheckTotals checkHost(const CheckParams& p, const float* bucketMax, const void* got, size_t count);
// The rank-weight sums (data.h) of `count` result elements in host memory:
// (*w)[r] for every rank r of p.
void rankWeightsHost(const CheckParams& p, const void* got, size_t count,
                     std::vector<RankWeightSums>* w);

cudaError_t fillDevice(void* buf, gc::DType t, size_t count, uint64_t seed, int rank,
                       cudaStream_t stream);
cudaError_t bucketMaxDevice(float* out, gc::DType t, size_t count, int bucket, uint64_t seed,
                            int rank, cudaStream_t stream);
// Synchronizes the stream (the totals come back to the host).
cudaError_t checkDevice(const CheckParams& p, const float* bucketMax, const void* got, size_t count,
                        CheckTotals* totals, cudaStream_t stream);
// Overwrites element i of a device buffer with v (the checker's self-test).
cudaError_t pokeDevice(void* buf, gc::DType t, size_t i, float v, cudaStream_t stream);

}  // namespace gcbench
