// SparseOps of the CUDA backend: the kernels of kernels/sparse.cu on the
// backend's stream. The selected count and the count of rejected received
// slot lists are copied to pinned host memory asynchronously for the stats
// (no sync on the data path).
#include <cuda_runtime_api.h>

#include "checks.h"
#include "codecs/sparse.h"
#include "backends/sparse_ops.h"
#include "backends/cuda/device_ptr.h"

namespace gc {
namespace {

constexpr size_t kCountBytes = 256;  // the selected count, ahead of the kernels' scratch

class CudaSparseOps final : public SparseOps {
 public:
  ~CudaSparseOps() override {
    if (host_) cudaFreeHost(host_);
    if (dev_) cudaFree(dev_);
  }
  size_t scratchBytes(size_t n, size_t m, size_t kmax) const override {
    return kCountBytes + cuda::sparseScratchBytes(n, m, kmax);
  }
  gradcompResult_t accumulate(const void* g, DType t, size_t n, float clipThr, float m, float* u,
                              float* v, bool vIn, float* keep, void* scratch) override {
    GC_CUDACHECK(cuda::sparseAccumulate(g, t, n, clipThr, m, u, v, vIn, keep,
                                        kernelScratch(scratch), stream_));
    return gradcompSuccess;
  }
  gradcompResult_t settle(float* v, const float* keep, float* u, size_t n, bool clear) override {
    GC_CUDACHECK(cuda::sparseSettle(v, keep, u, n, clear, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t selectThreshold(const float* v, size_t n, const sparse::Plan& p,
                                   const KeySpec& key, uint32_t* idx, void* scratch) override {
    GC_CUDACHECK(
        cuda::selectThreshold(v, n, p, key, idx, count(scratch), kernelScratch(scratch), stream_));
    return record(scratch);
  }
  gradcompResult_t selectExact(const float* v, size_t n, size_t k, uint32_t* idx,
                               void* scratch) override {
    GC_CUDACHECK(cuda::selectExact(v, n, k, idx, count(scratch), kernelScratch(scratch), stream_));
    return record(scratch);
  }
  gradcompResult_t commit(const uint32_t* idx, size_t slots, DType vt, void* val, float* v,
                          float* u) override {
    GC_CUDACHECK(cuda::sparseCommit(idx, slots, vt, val, v, u, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t scatterAddReceived(const uint32_t* idx, const void* val, DType vt, size_t slots,
                                      size_t n, float* out, int peer) override {
    GC_CHECK(ensureCounters());
    if (batch_.base && peer >= 0 && peer < batch_.lists && peer != batch_.skip &&
        reinterpret_cast<const char*>(idx) == batch_.base + (size_t)peer * batch_.stride &&
        slots == batch_.slots && n == batch_.n) {
      GC_CUDACHECK(cuda::sparseScatterAddChecked(idx, val, vt, slots, out, &dev_->listFlags[peer],
                                                 &dev_->counts.rejected, stream_));
      return gradcompSuccess;
    }
    GC_CUDACHECK(cuda::sparseScatterAdd(idx, val, vt, slots, n, out, &dev_->rejectFlag,
                                        &dev_->counts.rejected, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t checkReceived(const void* base, size_t stride, int lists, int skip, size_t slots,
                                 size_t n) override {
    GC_CHECK(ensureCounters());
    batch_ = Batch{};
    if (base == nullptr || lists <= 0 || lists > kMaxBatch) return gradcompSuccess;
    GC_CUDACHECK(
        cuda::sparseCheckLists(base, stride, lists, skip, slots, n, dev_->listFlags, stream_));
    batch_ = Batch{static_cast<const char*>(base), stride, lists, skip, slots, n};
    return gradcompSuccess;
  }
  gradcompResult_t scatterAddDrawn(const uint32_t* idx, const float* val, size_t k,
                                   float* out) override {
    GC_CUDACHECK(cuda::sparseScatterAddDrawn(idx, val, k, out, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t randkIndices(size_t n, size_t k, const KeySpec& key, uint32_t* idx) override {
    GC_CUDACHECK(cuda::randkIndices(n, k, key, idx, stream_));
    randk_ += k;
    return gradcompSuccess;
  }
  gradcompResult_t gather(float* v, const uint32_t* idx, size_t k, float* out,
                          bool clear) override {
    GC_CUDACHECK(cuda::sparseGather(v, idx, k, out, clear, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t nonFiniteFlag(const float* v, size_t n, float* flag) override {
    GC_CUDACHECK(cuda::sparseNonFiniteFlag(v, n, flag, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t applyFlag(float* val, size_t k, const float* flag) override {
    GC_CUDACHECK(cuda::sparseApplyFlag(val, k, flag, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t resetSelected() override {
    GC_CHECK(ensureCounters());
    randk_ = 0;
    batch_ = Batch{};
    GC_CUDACHECK(cudaMemsetAsync(&dev_->counts.selected, 0, sizeof(uint64_t), stream_));
    return gradcompSuccess;
  }
  gradcompResult_t reserve() override { return ensureCounters(); }
  void abandon() override { host_ = nullptr, dev_ = nullptr; }
  gradcompResult_t publishSelected() override {
    GC_CHECK(ensureCounters());
    batch_ = Batch{};  // a call's check serves that call only
    GC_CUDACHECK(
        cudaMemcpyAsync(host_, &dev_->counts, sizeof(Published), cudaMemcpyDeviceToHost, stream_));
    return gradcompSuccess;
  }
  uint64_t lastSelected() const override {
    if (randk_) return randk_;
    return host_ ? host_->selected : 0;
  }
  uint64_t peerSlotsRejected() const override { return host_ ? host_->rejected : 0; }

 private:
  // What publishSelected copies to the host.
  struct Published {
    uint64_t selected;  // the current call's selected sum
    uint64_t rejected;  // received slot lists dropped, since the comm was made
  };
  // On the device, followed by the flag of the list being scatter-added.
  // checkReceived's flags serve up to kMaxBatch lists (ranks) a call; larger
  // worlds check list by list.
  static constexpr int kMaxBatch = 1024;
  struct Counters {
    Published counts;
    uint32_t rejectFlag;
    uint32_t listFlags[kMaxBatch];
  };
  // The lists checkReceived checked in the current call.
  struct Batch {
    const char* base = nullptr;
    size_t stride = 0;
    int lists = 0, skip = -1;
    size_t slots = 0, n = 0;
  };
  static uint64_t* count(void* scratch) { return static_cast<uint64_t*>(scratch); }
  static void* kernelScratch(void* scratch) { return static_cast<char*>(scratch) + kCountBytes; }
  // Made with the comm (initNcclComm's reserve(), inside the set-up vote);
  // the calls below find them made. A failed allocation leaves no error
  // behind for the next kernel launch to report.
  gradcompResult_t ensureCounters() {
    const gradcompResult_t res = makeCounters();
    if (res != gradcompSuccess) (void)cudaGetLastError();
    return res;
  }
  gradcompResult_t makeCounters() {
    if (!host_) {
      void* p = nullptr;
      GC_CUDACHECK(cudaMallocHost(&p, sizeof(Published)));
      host_ = static_cast<Published*>(p);
      *host_ = Published{};
    }
    if (!dev_) {
      void* p = nullptr;
      GC_CUDACHECK(cudaMalloc(&p, sizeof(Counters)));
      // Kept only once zeroed: a later call would count on top of garbage.
      // Zeroed on a stream of its own, not device-wide (writeNow).
      const cudaError_t err = writeNow(p, nullptr, sizeof(Counters));
      if (err != cudaSuccess) {
        (void)cudaFree(p);
        GC_CUDACHECK(err);
      }
      dev_ = static_cast<Counters*>(p);
    }
    return gradcompSuccess;
  }
  gradcompResult_t record(void* scratch) {
    GC_CHECK(ensureCounters());
    GC_CUDACHECK(cuda::addCount(count(scratch), &dev_->counts.selected, stream_));
    return gradcompSuccess;
  }
  Published* host_ = nullptr;  // pinned: the last published counts
  Counters* dev_ = nullptr;
  uint64_t randk_ = 0;  // rand-k fills k slots, known on the host
  Batch batch_;
};

}  // namespace

std::unique_ptr<SparseOps> makeCudaSparseOps() {
  return std::unique_ptr<SparseOps>(new CudaSparseOps());
}

}  // namespace gc
