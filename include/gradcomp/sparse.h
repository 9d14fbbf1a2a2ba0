/*
 * Top-k selectors of the sparse methods, on their own: the indices of the
 * largest |v[i]| of an fp32 vector, as the allreduce's topk and dgc methods
 * pick them.
 *
 *   exact = 1: exactly k = max(1, ceil(density*n)) indices, the k largest
 *              |v| (NaN, then Inf rank highest; ties go to the lower index).
 *   exact = 0: DGC threshold selection. A strided sample of
 *              m = max(ceil(sampleRate*n), 1024, ceil(64/density)) (at most
 *              n) entries, offset by the seed, gives the threshold: the
 *              ceil(density*m)-th largest |v| of the sample. Every nonzero
 *              entry at or above it is selected, in index order, up to
 *              kmax = max(k, ceil(oversample*density*n)) slots. The count is
 *              about k*(1 +- 1/8) for a sample that represents v, so within
 *              [k/2, 2k] in practice; never above kmax. oversample and
 *              sampleRate are not read when exact = 1.
 *
 * Output: idx[0..slots) with slots = gradcompTopkSlots (k, or kmax), the
 * selected indices in increasing order, then 0xffffffff in the unused slots;
 * *selectedCount (uint64, may be NULL) gets the number selected. v, idx,
 * the workspace and *selectedCount must not overlap (gradcompInvalidArgument
 * naming both).
 * Parameter ranges: density (0, 1], oversample [1, 16], sampleRate (0, 1],
 * exact 0 or 1, n < 2^32 - 1 (indices are uint32).
 *
 * The GPU and host selectors give the same indices and count for the same
 * arguments. The seed is the sample's key as is: the allreduce derives one
 * per step and rank, so its sample offsets differ from these.
 */
#ifndef GRADCOMP_SPARSE_H_
#define GRADCOMP_SPARSE_H_

#include "gradcomp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Slots of idx: k for exact, kmax for threshold; 0 for n = 0. */
gradcompResult_t gradcompTopkSlots(size_t n, float density, float oversample, int exact,
                                   size_t* slots);

/* Host reference. v and idx in host memory; selectedCount may be NULL. */
gradcompResult_t gradcompTopkSelectHost(const float* v, size_t n, float density, float oversample,
                                        float sampleRate, int exact, uint64_t seed, uint32_t* idx,
                                        uint64_t* selectedCount);

/* GPU, CUB style: ask the workspace size, then select. Device pointers, on
 * the stream, no allocation, no host sync (graph-capturable). The workspace
 * must be 256-byte aligned (cudaMalloc's is); it can be reused once the
 * stream has passed the call. */
gradcompResult_t gradcompTopkWorkspaceBytes(size_t n, float density, float oversample,
                                            float sampleRate, int exact, size_t* bytes);
gradcompResult_t gradcompTopkSelect(const float* v, size_t n, float density, float oversample,
                                    float sampleRate, int exact, uint64_t seed, uint32_t* idx,
                                    uint64_t* selectedCount, void* workspace, size_t workspaceBytes,
                                    cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* GRADCOMP_SPARSE_H_ */
