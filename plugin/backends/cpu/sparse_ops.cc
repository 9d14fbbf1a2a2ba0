// SparseOps of the CPU backend: the host reference on host memory.
#include <vector>

#include "codecs/sparse.h"
#include "backends/sparse_ops.h"

namespace gc {
namespace {

class CpuSparseOps final : public SparseOps {
 public:
  size_t scratchBytes(size_t, size_t, size_t) const override { return 0; }
  gradcompResult_t accumulate(const void* g, DType t, size_t n, float clipThr, float m, float* u,
                              float* v, bool vIn, float* keep, void*) override {
    host::sparseAccumulate(g, t, n, clipThr, m, u, v, vIn, keep);
    return gradcompSuccess;
  }
  gradcompResult_t settle(float* v, const float* keep, float* u, size_t n, bool clear) override {
    host::sparseSettle(v, keep, u, n, clear);
    return gradcompSuccess;
  }
  gradcompResult_t selectThreshold(const float* v, size_t n, const sparse::Plan& p,
                                   const KeySpec& key, uint32_t* idx, void*) override {
    uint64_t got = 0;
    sample_.resize(p.sample);  // kept for its capacity: a steady-state call allocates nothing
    host::selectThreshold(v, n, p, resolveKey(key), idx, &got, sample_.data());
    selected_ += got;
    return gradcompSuccess;
  }
  gradcompResult_t selectExact(const float* v, size_t n, size_t k, uint32_t* idx, void*) override {
    uint64_t got = 0;
    host::selectExact(v, n, k, idx, &got);
    selected_ += got;
    return gradcompSuccess;
  }
  gradcompResult_t commit(const uint32_t* idx, size_t slots, DType vt, void* val, float* v,
                          float* u) override {
    host::sparseCommit(idx, slots, vt, val, v, u);
    return gradcompSuccess;
  }
  gradcompResult_t scatterAddReceived(const uint32_t* idx, const void* val, DType vt, size_t slots,
                                      size_t n, float* out, int) override {
    // A malformed list is dropped whole, as on CUDA: every rank that
    // receives it drops it alike and the call succeeds on all of them.
    if (!host::sparseScatterAdd(idx, val, vt, slots, n, out)) ++rejected_;
    return gradcompSuccess;
  }
  gradcompResult_t scatterAddDrawn(const uint32_t* idx, const float* val, size_t k,
                                   float* out) override {
    host::sparseScatterAddDrawn(idx, val, k, out);
    return gradcompSuccess;
  }
  gradcompResult_t randkIndices(size_t n, size_t k, const KeySpec& key, uint32_t* idx) override {
    host::randkIndices(n, k, resolveKey(key), idx);
    selected_ += k;
    return gradcompSuccess;
  }
  gradcompResult_t gather(float* v, const uint32_t* idx, size_t k, float* out,
                          bool clear) override {
    host::sparseGather(v, idx, k, out, clear);
    return gradcompSuccess;
  }
  gradcompResult_t nonFiniteFlag(const float* v, size_t n, float* flag) override {
    host::sparseNonFiniteFlag(v, n, flag);
    return gradcompSuccess;
  }
  gradcompResult_t applyFlag(float* val, size_t k, const float* flag) override {
    host::sparseApplyFlag(val, k, flag);
    return gradcompSuccess;
  }
  gradcompResult_t resetSelected() override {
    selected_ = 0;
    return gradcompSuccess;
  }
  gradcompResult_t publishSelected() override { return gradcompSuccess; }
  uint64_t lastSelected() const override { return selected_; }
  uint64_t peerSlotsRejected() const override { return rejected_; }

 private:
  uint64_t selected_ = 0;
  std::vector<uint32_t> sample_;  // selectThreshold's sampled keys
  uint64_t rejected_ = 0;         // received slot lists dropped, since the comm was made
};

}  // namespace

std::unique_ptr<SparseOps> makeCpuSparseOps() {
  return std::unique_ptr<SparseOps>(new CpuSparseOps());
}

}  // namespace gc
