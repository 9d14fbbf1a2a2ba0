// Sparse selectors and slot operations, internal C++ interface used by the
// sparse algorithms (through SparseOps) and the public selector entry
// points. Host and CUDA implementations give identical slots and values.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/sparse_math.cuh"
#include "gradcomp.h"

namespace gc {

namespace host {
// Squared norm of x in double, in the fixed chunk/lane/tree order of
// sparse_math.cuh.
double sparseSumSq(const void* x, DType t, size_t n);
// v = (vIn ? v : 0) + (u ? (u = m*u + s*g) : s*g), s the clipping scale of
// clipThr (0: off); keep (may be null) receives the old v (see
// sparse::accumulate for a non-finite element).
void sparseAccumulate(const void* g, DType t, size_t n, float clipThr, float m, float* u, float* v,
                      bool vIn, float* keep);
// sparse::settle over n elements (keep null: the old v was 0; u may be null).
void sparseSettle(float* v, const float* keep, float* u, size_t n, bool clear);
// *flag = 0, or NaN when v holds a non-finite value (sparse::nonFiniteFlag).
void sparseNonFiniteFlag(const float* v, size_t n, float* flag);
// val[j] = sparse::flagged(val[j], *flag).
void sparseApplyFlag(float* val, size_t k, const float* flag);
// Both selectors fill idx[0..slots) with the selected indices in index
// order and kEmptySlot after them; *selected is the number filled.
void selectThreshold(const float* v, size_t n, const sparse::Plan& p, uint64_t key, uint32_t* idx,
                     uint64_t* selected);
// The same with the caller's p.sample keys of scratch (no allocation).
void selectThreshold(const float* v, size_t n, const sparse::Plan& p, uint64_t key, uint32_t* idx,
                     uint64_t* selected, uint32_t* sample);
void selectExact(const float* v, size_t n, size_t k, uint32_t* idx, uint64_t* selected);
// The k-th largest key with ties broken by lower index, as a SelectRule.
sparse::SelectRule exactRule(const float* v, size_t n, size_t k);
// Filled slots: val[j] = wire value of v[idx[j]] in type vt, v[idx[j]] keeps
// the remainder, u[idx[j]] = 0 when u is not null and v[idx[j]] finite.
// Empty slots: val 0.
void sparseCommit(const uint32_t* idx, size_t slots, DType vt, void* val, float* v, float* u);
// out[idx[j]] += val[j] for the filled slots, in slot order. The slots come
// from the wire: false (out untouched) when the list is not well-formed
// (sparse::slotPairOk).
bool sparseScatterAdd(const uint32_t* idx, const void* val, DType vt, size_t slots, size_t n,
                      float* out);
// out[idx[j]] += val[j], j < k: indices drawn on this rank (rand-k's, distinct
// and below n by construction, in permutation order), so the wire rule does
// not apply.
void sparseScatterAddDrawn(const uint32_t* idx, const float* val, size_t k, float* out);
void randkIndices(size_t n, size_t k, uint64_t key, uint32_t* idx);
// out[j] = v[idx[j]]; then v[idx[j]] = 0 when clear, but a non-finite v
// stays for sparseSettle.
void sparseGather(float* v, const uint32_t* idx, size_t k, float* out, bool clear);
}  // namespace host

namespace cuda {
// Scratch bytes of the selectors for n elements, a sample of m and, for
// selectThreshold, kmax slots (its staged compaction's buffers, about
// 4 kmax + 12 n / 4096 bytes; 0 for selectExact and selectThresholdLookback,
// which stage nothing).
size_t sparseScratchBytes(size_t n, size_t m, size_t kmax);
cudaError_t sparseAccumulate(const void* g, DType t, size_t n, float clipThr, float m, float* u,
                             float* v, bool vIn, float* keep, void* scratch, cudaStream_t s);
cudaError_t sparseSettle(float* v, const float* keep, float* u, size_t n, bool clear,
                         cudaStream_t s);
cudaError_t sparseNonFiniteFlag(const float* v, size_t n, float* flag, cudaStream_t s);
cudaError_t sparseApplyFlag(float* val, size_t k, const float* flag, cudaStream_t s);
// *selectedDev (device memory) receives the filled count. selectThreshold:
// the rule from the sample, then the staged compaction (kernels/sparse.cu:
// v read once, no tile waits for another), in scratch of
// sparseScratchBytes(n, p.sample, p.kmax).
cudaError_t selectThreshold(const float* v, size_t n, const sparse::Plan& p, const KeySpec& key,
                            uint32_t* idx, uint64_t* selectedDev, void* scratch, cudaStream_t s);
cudaError_t selectExact(const float* v, size_t n, size_t k, uint32_t* idx, uint64_t* selectedDev,
                        void* scratch, cudaStream_t s);
// selectThreshold's slots and count through selectExact's compaction (one
// pass with a decoupled look-back), in scratch of
// sparseScratchBytes(n, p.sample, 0). No call runs it: gradcomp_kernels_perf
// times it (topk_threshold_lookback) beside selectThreshold.
cudaError_t selectThresholdLookback(const float* v, size_t n, const sparse::Plan& p,
                                    const KeySpec& key, uint32_t* idx, uint64_t* selectedDev,
                                    void* scratch, cudaStream_t s);
cudaError_t sparseCommit(const uint32_t* idx, size_t slots, DType vt, void* val, float* v, float* u,
                         cudaStream_t s);
// A received slot list, checked against the wire rule on the device with no
// host sync: *rejected (4 bytes of device memory) is cleared, then set when
// any slot breaks sparse::slotPairOk; the scatter-add then skips the whole
// list (the same list, so the same outcome, on every rank) and adds 1 to
// *rejectedCount (device memory; may be null).
cudaError_t sparseScatterAdd(const uint32_t* idx, const void* val, DType vt, size_t slots, size_t n,
                             float* out, uint32_t* rejected, uint64_t* rejectedCount,
                             cudaStream_t s);
// The same check for all of a call's received lists at once (list i at
// base + i * stride bytes; list `skip` is not checked, -1: none): rejected[i]
// cleared, then set when list i breaks the rule. One memset and one launch
// for the N lists instead of a pair per list.
cudaError_t sparseCheckLists(const void* base, size_t stride, int lists, int skip, size_t slots,
                             size_t n, uint32_t* rejected, cudaStream_t s);
// The scatter-add of a list that sparseCheckLists checked: skipped whole
// (and counted in *rejectedCount) when *rejected is set.
cudaError_t sparseScatterAddChecked(const uint32_t* idx, const void* val, DType vt, size_t slots,
                                    float* out, const uint32_t* rejected, uint64_t* rejectedCount,
                                    cudaStream_t s);
// host::sparseScatterAddDrawn: rand-k's own distinct indices, not checked.
cudaError_t sparseScatterAddDrawn(const uint32_t* idx, const float* val, size_t k, float* out,
                                  cudaStream_t s);
cudaError_t randkIndices(size_t n, size_t k, const KeySpec& key, uint32_t* idx, cudaStream_t s);
cudaError_t sparseGather(float* v, const uint32_t* idx, size_t k, float* out, bool clear,
                         cudaStream_t s);
// *sum += *count, one thread: the selected counts of a call, summed on the device.
cudaError_t addCount(const uint64_t* count, uint64_t* sum, cudaStream_t s);
}  // namespace cuda

}  // namespace gc
