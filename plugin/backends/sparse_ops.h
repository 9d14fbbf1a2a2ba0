// SparseOps: the sparse operations the sparse algorithms are written
// against, next to Backend. The CPU implementation runs the host reference
// on host memory; the CUDA one launches the kernels of kernels/sparse.cu on
// the backend's stream (no host sync).
#pragma once

#include <cuda_runtime_api.h>

#include <memory>

#include "kernels/sparse_math.cuh"
#include "gradcomp.h"

namespace gc {

class SparseOps {
 public:
  virtual ~SparseOps() = default;
  void setStream(cudaStream_t s) { stream_ = s; }

  // Scratch the operations below need for n elements, a sample of m and
  // selectThreshold's kmax slots (0 when no threshold selection is made).
  virtual size_t scratchBytes(size_t n, size_t m, size_t kmax) const = 0;
  // v = (vIn ? v : 0) + (u ? (u = m*u + s*g) : s*g); s scales g to norm
  // clipThr when clipThr > 0 and ||g|| is larger. keep (may be null)
  // receives the old v, for settle() to put back where v is not finite.
  virtual gradcompResult_t accumulate(const void* g, DType t, size_t n, float clipThr, float m,
                                      float* u, float* v, bool vIn, float* keep, void* scratch) = 0;
  // After the exchange: a non-finite v takes keep back; a finite one is
  // cleared when clear (and u with it, when u is not null).
  virtual gradcompResult_t settle(float* v, const float* keep, float* u, size_t n, bool clear) = 0;
  // Selectors: idx[0..slots) in index order, kEmptySlot after the last.
  virtual gradcompResult_t selectThreshold(const float* v, size_t n, const sparse::Plan& p,
                                           const KeySpec& key, uint32_t* idx, void* scratch) = 0;
  virtual gradcompResult_t selectExact(const float* v, size_t n, size_t k, uint32_t* idx,
                                       void* scratch) = 0;
  // Wire values of the slots; v keeps what was not sent (a non-finite v
  // stays for settle()); u = 0 where a finite v was sent when u is not null
  // (momentum factor masking).
  virtual gradcompResult_t commit(const uint32_t* idx, size_t slots, DType vt, void* val, float* v,
                                  float* u) = 0;
  // out[idx[j]] += val[j] over a slot list received from rank `peer` (out has
  // n elements). The list must be well-formed (sparse::slotPairOk: strictly
  // increasing indices below n, then kEmptySlot), or it is dropped whole, as
  // every rank does with the same list, and counted in peerSlotsRejected();
  // the call goes on (the CUDA backend checks on the device, no sync).
  virtual gradcompResult_t scatterAddReceived(const uint32_t* idx, const void* val, DType vt,
                                              size_t slots, size_t n, float* out, int peer) = 0;
  // Before the scatter-adds of a call's received lists (list i at base +
  // i * stride bytes, `lists` of them, `skip` not received: -1 for none):
  // the CUDA backend checks them all in one launch, and scatterAddReceived of
  // list `peer` at base + peer * stride in the same call uses that check
  // (other lists are checked one by one). The CPU backend checks each list
  // at its scatter-add, so this does nothing there.
  virtual gradcompResult_t checkReceived(const void* base, size_t stride, int lists, int skip,
                                         size_t slots, size_t n) {
    (void)base, (void)stride, (void)lists, (void)skip, (void)slots, (void)n;
    return gradcompSuccess;
  }
  // out[idx[j]] += val[j], j < k, over indices drawn on this rank
  // (randkIndices: distinct and below n, but not increasing), so the wire
  // rule is not applied.
  virtual gradcompResult_t scatterAddDrawn(const uint32_t* idx, const float* val, size_t k,
                                           float* out) = 0;
  virtual gradcompResult_t randkIndices(size_t n, size_t k, const KeySpec& key, uint32_t* idx) = 0;
  // out[j] = v[idx[j]]; clear: v there is spent (a non-finite v stays for
  // settle()).
  virtual gradcompResult_t gather(float* v, const uint32_t* idx, size_t k, float* out,
                                  bool clear) = 0;
  // *flag (one float, device memory on CUDA) = 0, or NaN when v holds a
  // non-finite value; applyFlag makes val[0..k) NaN when *flag is NaN.
  virtual gradcompResult_t nonFiniteFlag(const float* v, size_t n, float* flag) = 0;
  virtual gradcompResult_t applyFlag(float* val, size_t k, const float* flag) = 0;
  // The slots a call's selects fill (the sparse reduce-scatter selects once
  // per peer): resetSelected() before the first, publishSelected() after the
  // last, then lastSelected() is their sum. On CUDA the sum is kept on the
  // device and copied to the host asynchronously at publish (no sync on the
  // data path), so lastSelected() may give an earlier call's sum, but always
  // a whole call's.
  virtual gradcompResult_t resetSelected() = 0;
  // Makes what the calls above need beyond the workspace (the CUDA counters),
  // outside any exchange: GRADCOMP_AUTO's reserving pass calls it so that its
  // timed sparse calls allocate nothing.
  virtual gradcompResult_t reserve() { return gradcompSuccess; }
  // gradcompCommAbort: the destructor frees nothing whose free waits for the
  // whole device (cudaFree, cudaFreeHost), where a kernel of another
  // communicator may be stuck on the dead peer; that memory is left.
  virtual void abandon() {}
  virtual gradcompResult_t publishSelected() = 0;
  virtual uint64_t lastSelected() const = 0;
  // Received slot lists dropped as malformed since the comm was made. On
  // CUDA counted on the device and published with the selected count, so it
  // may lag a call; the CPU backend counts on the host, at once.
  virtual uint64_t peerSlotsRejected() const = 0;

 protected:
  cudaStream_t stream_ = nullptr;
};

std::unique_ptr<SparseOps> makeCpuSparseOps();
std::unique_ptr<SparseOps> makeCudaSparseOps();

}  // namespace gc
