// CUDA backend: device memory and kernels on the caller's stream. No host
// synchronization on the data path; allocation only when the comm grows its
// workspace or creates a buffer's state, never while capturing.
#include <cuda_runtime_api.h>

#include <chrono>
#include <thread>
#include <vector>

#include "kernels/elementwise.h"
#include "backends/backend.h"
#include "backends/cuda/device_guard.h"
#include "backends/cuda/device_ptr.h"
#include "checks.h"
#include "codecs/qsgd.h"

namespace gc {
namespace {

class CudaBackend final : public Backend {
 public:
  bool onDevice() const override { return true; }

  bool capturing() const override { return streamCapturing(stream_); }

  // A comm's calls share its workspace, buffer states and device step
  // counter, so a call on another stream than the last compressed call's
  // must not start before that call's work ends (NCCL orders its own calls
  // on one communicator, not gradcomp's kernels around them): without this,
  // the new call's encode could overwrite a workspace the previous call's
  // exchange still reads, and read the step counter before its increment,
  // keying its RNG differently from ranks where the timing fell otherwise.
  // The wait is on an event recorded at the end of the last eager compressed
  // call (markCallEnd, also after a call that failed part way), on a stream
  // that was alive then. Every eager call
  // waits, on the last call's stream too: one handle can name another stream
  // (cudaStreamPerThread from another thread, a handle cudaStreamCreate reused
  // after cudaStreamDestroy), and a wait for work already ordered before the
  // call costs one driver call, no sync. Captures neither record nor wait: an
  // eager wait cannot name work inside a graph, and a graph's launches are
  // ordered by the stream the caller launches it on.
  void setStream(cudaStream_t stream) override {
    if (lastCallRecorded_ && !streamCapturing(stream)) {
      if (cudaStreamWaitEvent(stream, lastCall_, 0) != cudaSuccess) {
        (void)cudaGetLastError();  // the call's first launch on this stream reports it
      }
    }
    stream_ = stream;
  }

  ~CudaBackend() override {
    // Freed first: release orders the frees after the last call's event and
    // the current stream, the own one here (the last call's may be gone).
    useOwnStream();
    release(stepDev_);
    release(agree_);
    if (lastCall_ != nullptr) (void)cudaEventDestroy(lastCall_);
    for (cudaEvent_t e : joined_) {
      if (e != nullptr) (void)cudaEventDestroy(e);
    }
    for (cudaEvent_t e : events_) {
      if (e != nullptr) (void)cudaEventDestroy(e);
    }
    if (commStream_ != nullptr) (void)cudaStreamDestroy(commStream_);
    if (nodeStream_ != nullptr) (void)cudaStreamDestroy(nodeStream_);
    if (ownStream_ != nullptr) (void)cudaStreamDestroy(ownStream_);
    if (freeStream_ != nullptr) (void)cudaStreamDestroy(freeStream_);
    if (freeMark_ != nullptr) (void)cudaEventDestroy(freeMark_);
    // Released by CUDA once the frees still queued have run.
    if (pool_ != nullptr) (void)cudaMemPoolDestroy(pool_);
  }

  gradcompResult_t init() override {
    // Made once here, never on the data path, so pipelined calls stay
    // capturable: the comm stream joins a capture through the events. The
    // own stream first: alloc zeroes on it.
    GC_CUDACHECK(cudaStreamCreateWithFlags(&ownStream_, cudaStreamNonBlocking));
    GC_CUDACHECK(cudaStreamCreateWithFlags(&commStream_, cudaStreamNonBlocking));
    GC_CUDACHECK(cudaStreamCreateWithFlags(&nodeStream_, cudaStreamNonBlocking));
    GC_CUDACHECK(cudaEventCreateWithFlags(&lastCall_, cudaEventDisableTiming));
    makePool();
    void* p = nullptr;
    GC_CHECK(alloc(sizeof(uint64_t), &p));
    stepDev_ = static_cast<uint64_t*>(p);
    // agreeScratch's four floats, then flagScratch's.
    GC_CHECK(alloc(5 * sizeof(float), &p));
    agree_ = static_cast<float*>(p);
    for (cudaEvent_t& e : events_) {
      GC_CUDACHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
    for (cudaEvent_t& e : joined_) {
      GC_CUDACHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
    return gradcompSuccess;
  }
  cudaStream_t commStream() const override { return commStream_; }
  cudaStream_t nodeStream() const override { return nodeStream_; }
  gradcompResult_t record(int lane, int ev) override {
    GC_CUDACHECK(cudaEventRecord(events_[ev], laneStream(lane)));
    return gradcompSuccess;
  }
  gradcompResult_t wait(int lane, int ev) override {
    GC_CUDACHECK(cudaStreamWaitEvent(laneStream(lane), events_[ev], 0));
    return gradcompSuccess;
  }
  void join(int lane) override {
    const cudaStream_t side = laneStream(lane);
    // Under capture, a lane the call never forked holds none of its work, and
    // a captured wait on its eager record would invalidate the capture.
    if (side == stream_ || streamCapturing(side) != streamCapturing(stream_)) return;
    // Errors are left to the call's own result (this runs on its way out).
    if (cudaEventRecord(joined_[lane], side) == cudaSuccess) {
      (void)cudaStreamWaitEvent(stream_, joined_[lane], 0);
    }
    (void)cudaGetLastError();
  }
  const uint64_t* deviceStep() const override { return stepDev_; }
  float* agreeScratch() override { return agree_; }
  float* flagScratch() override { return agree_ + 4; }
  // The last thing a successful compressed call enqueues (markCallEnd then
  // marks its end).
  gradcompResult_t advanceStep() override {
    GC_CUDACHECK(cuda::advanceStep(stepDev_, stream_));
    return gradcompSuccess;
  }
  void markCallEnd() override {
    if (capturing()) usedByGraphs_ = true;
    if (lastCall_ == nullptr || capturing()) return;
    // A stream that failed to take the record leaves the mark where it was;
    // the error is the next launch's to report.
    if (cudaEventRecord(lastCall_, stream_) == cudaSuccess) lastCallRecorded_ = true;
    (void)cudaGetLastError();
  }
  void useOwnStream() override {
    if (ownStream_ != nullptr) setStream(ownStream_);
  }
  gradcompResult_t setStep(uint64_t step) override {
    // On the backend's own stream, after the last eager call (the caller's
    // last stream may be gone; its callers have synchronized it), and waited
    // for: later work on any stream reads the new step. Not on the legacy
    // stream, whose sync would wait for every blocking stream's kernels
    // (writeNow).
    if (lastCallRecorded_ && ownStream_ != nullptr) {
      GC_CUDACHECK(cudaStreamWaitEvent(ownStream_, lastCall_, 0));
    }
    GC_CUDACHECK(writeNow(stepDev_, &step, sizeof(step), ownStream_));
    return gradcompSuccess;
  }

  // Memory comes from the backend's own stream-ordered pool where the device
  // has pools: neither the allocation nor the free waits for other streams.
  // cudaMalloc and cudaFree synchronize the whole device, so a comm growing
  // its workspace at its first call of a larger size waited for every kernel
  // on the GPU, a pipeline-parallel receive whose send its peer posts only
  // after its own gradcomp call returns included: a deadlock. The pool is
  // the backend's own (not the device's default pool, which a framework may
  // use and tune) and never reuses a block by making the allocating stream
  // wait on another stream (internal dependencies off): a block comes back
  // only once its free is known to have run.
  gradcompResult_t alloc(size_t bytes, void** p) override {
    *p = nullptr;
    if (bytes == 0) return gradcompSuccess;
    cudaError_t err = pool_ != nullptr ? cudaMallocFromPoolAsync(p, bytes, pool_, ownStream_)
                                       : cudaMalloc(p, bytes);
    if (err != cudaSuccess) {
      *p = nullptr;
      (void)cudaGetLastError();
      return setError(gradcompCudaError, "%s of %zu bytes failed: %s",
                      pool_ != nullptr ? "cudaMallocFromPoolAsync" : "cudaMalloc", bytes,
                      cudaGetErrorString(err));
    }
    // Zeroed, and waited for, before any stream may touch it; on the
    // backend's own stream, not device-wide (writeNow). A pool block is then
    // usable on every stream.
    err = writeNow(*p, nullptr, bytes, ownStream_);
    if (err != cudaSuccess) {
      // A failed allocation hands back nothing: callers keep only successes.
      release(*p);
      *p = nullptr;
      (void)cudaGetLastError();
      return setError(gradcompCudaError, "zeroing a new buffer of %zu bytes failed: %s", bytes,
                      cudaGetErrorString(err));
    }
    return gradcompSuccess;
  }
  // Without waiting here: a pool block is freed on a stream of the backend's
  // own once the last compressed call has ended (every call marks its end,
  // and waited for the calls before it: setStream) and once what the current
  // stream holds has run (the own stream between calls, whose work the
  // state calls enqueue there; within a call, nothing of the call uses the
  // block yet). Memory from cudaMalloc goes back with cudaFree, which waits
  // for the whole device.
  void release(void* p) override {
    if (p == nullptr) return;
    if (pool_ == nullptr) {
      (void)cudaFree(p);
      return;
    }
    bool ordered =
        !lastCallRecorded_ || cudaStreamWaitEvent(freeStream_, lastCall_, 0) == cudaSuccess;
    if (ordered && !streamCapturing(stream_)) {
      ordered = cudaEventRecord(freeMark_, stream_) == cudaSuccess &&
                cudaStreamWaitEvent(freeStream_, freeMark_, 0) == cudaSuccess;
    }
    if (ordered && cudaFreeAsync(p, freeStream_) == cudaSuccess) return;
    // A stream that cannot take the order (a sticky device error): the block
    // is left to the pool's destruction rather than freed under a kernel
    // that may still read it.
    (void)cudaGetLastError();
  }
  gradcompResult_t zero(void* p, size_t bytes) override {
    if (bytes) GC_CUDACHECK(cudaMemsetAsync(p, 0, bytes, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t copy(void* dst, const void* src, size_t bytes) override {
    if (bytes && dst != src) {
      GC_CUDACHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
    }
    return gradcompSuccess;
  }
  gradcompResult_t toHost(void* dst, const void* src, size_t bytes) override {
    if (bytes) {
      GC_CUDACHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
      GC_CUDACHECK(cudaStreamSynchronize(stream_));
    }
    return gradcompSuccess;
  }
  gradcompResult_t fromHost(void* dst, const void* src, size_t bytes) override {
    if (bytes) {
      GC_CUDACHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
      GC_CUDACHECK(cudaStreamSynchronize(stream_));
    }
    return gradcompSuccess;
  }
  gradcompResult_t sync() override {
    GC_CUDACHECK(cudaStreamSynchronize(stream_));
    return gradcompSuccess;
  }
  bool usedByGraphs() const override { return usedByGraphs_; }
  gradcompResult_t syncDevice() override {
    GC_CUDACHECK(cudaDeviceSynchronize());
    return gradcompSuccess;
  }
  bool drain(double timeoutSec) override {
    // Every compressed call marks its end (markCallEnd, failed ones too); the
    // side streams are the backend's own.
    auto busy = [](cudaError_t e) { return e == cudaErrorNotReady; };
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(timeoutSec);
    bool pending = true;
    while (pending) {
      pending = (lastCallRecorded_ && busy(cudaEventQuery(lastCall_))) ||
                (commStream_ != nullptr && busy(cudaStreamQuery(commStream_))) ||
                (nodeStream_ != nullptr && busy(cudaStreamQuery(nodeStream_))) ||
                (ownStream_ != nullptr && busy(cudaStreamQuery(ownStream_)));
      (void)cudaGetLastError();
      if (!pending || std::chrono::steady_clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return !pending;
  }

  gradcompResult_t qsgdEncode(const void* x, DType t, float* residual, size_t n, int bits,
                              int bucket, const KeySpec& key, void* out) override {
    GC_CHECK(qsgdCheckDeviceCount(n, bucket));
    GC_CUDACHECK(cuda::qsgdEncode(x, t, residual, n, bits, bucket, key, out, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t qsgdEncodeBatch(const EncodeSegment* segs, int count, DType t, int bits,
                                   int bucket, const KeySpec& key) override {
    for (int i = 0; i < count; ++i) GC_CHECK(qsgdCheckDeviceCount(segs[i].n, bucket));
    GC_CUDACHECK(cuda::qsgdEncodeBatch(segs, count, t, bits, bucket, key, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t qsgdDecode(const void* in, size_t n, int bits, int bucket, float* out,
                              bool accumulate) override {
    GC_CHECK(qsgdCheckDeviceCount(n, bucket));
    GC_CUDACHECK(cuda::qsgdDecode(in, n, bits, bucket, out, accumulate, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t qsgdDecodeToOutput(const DecodeSegment* segs, int count, int bits, int bucket,
                                      float divisor, DType t, float* scratch,
                                      float* flag) override {
    for (int i = 0; i < count; ++i) GC_CHECK(qsgdCheckDeviceCount(segs[i].n, bucket));
    // Without a warp path, only an fp32 undivided output is decoded into
    // directly, and a flag takes a pass over each segment; others go
    // through the scratch.
    if ((!(t == DType::F32 && divisor == 1.0f) || flag != nullptr) &&
        !cuda::qsgdDecodeFuses(bucket)) {
      return Backend::qsgdDecodeToOutput(segs, count, bits, bucket, divisor, t, scratch, flag);
    }
    GC_CUDACHECK(cuda::qsgdDecodeToOutput(segs, count, bits, bucket, divisor, t, stream_, flag));
    return gradcompSuccess;
  }
  gradcompResult_t qsgdSum(const SumTerm* terms, int count, size_t n, int bits, int bucket,
                           float divisor, DType t, void* out, float* scratch,
                           float* flag) override {
    GC_CHECK(qsgdCheckDeviceCount(n, bucket));
    // Without a warp path: the default's launches.
    if (!cuda::qsgdDecodeFuses(bucket)) {
      return Backend::qsgdSum(terms, count, n, bits, bucket, divisor, t, out, scratch, flag);
    }
    GC_CUDACHECK(
        cuda::qsgdSum(terms, count, n, bits, bucket, divisor, t, out, scratch, stream_, flag));
    return gradcompSuccess;
  }
  gradcompResult_t toFloat(const void* x, DType t, const float* addend, size_t n,
                           float* out) override {
    GC_CUDACHECK(cuda::toFloat(x, t, addend, n, out, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t fromFloat(const float* x, size_t n, float divisor, DType t, void* out) override {
    GC_CUDACHECK(cuda::fromFloat(x, n, divisor, t, out, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t add(float* acc, const float* x, size_t n) override {
    GC_CUDACHECK(cuda::add(acc, x, n, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t flagNonFinite(const void* x, DType t, size_t n, float* flag) override {
    GC_CUDACHECK(cuda::flagNonFinite(x, t, n, flag, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t markNonFinite(const void* x, DType t, size_t n, float* flag) override {
    GC_CUDACHECK(cuda::markNonFinite(x, t, n, flag, stream_));
    return gradcompSuccess;
  }
  gradcompResult_t zeroIfFlagged(float* x, size_t n, const float* flag) override {
    GC_CUDACHECK(cuda::zeroIfFlagged(x, n, flag, stream_));
    return gradcompSuccess;
  }

 private:
  // The pool and what release() needs, where the device has memory pools; a
  // device without them (or one refusing a pool) allocates with cudaMalloc.
  void makePool() {
    int dev = 0, pools = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev) != cudaSuccess ||
        pools == 0) {
      (void)cudaGetLastError();
      return;
    }
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = dev;
    int off = 0;
    if (cudaStreamCreateWithFlags(&freeStream_, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&freeMark_, cudaEventDisableTiming) != cudaSuccess ||
        cudaMemPoolCreate(&pool_, &props) != cudaSuccess ||
        cudaMemPoolSetAttribute(pool_, cudaMemPoolReuseAllowInternalDependencies, &off) !=
            cudaSuccess) {
      (void)cudaGetLastError();
      if (pool_ != nullptr) (void)cudaMemPoolDestroy(pool_);
      pool_ = nullptr;
      return;
    }
    // The GPUs that can reach this one may read and write its blocks, as
    // they can cudaMalloc memory once peer access is on: NCCL's same-process
    // P2P transport addresses a peer's user buffers directly (one process
    // driving several GPUs). Without this a peer's access would fault.
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
    std::vector<cudaMemAccessDesc> peers;
    for (int d = 0; d < count; ++d) {
      int can = 0;
      if (d == dev || cudaDeviceCanAccessPeer(&can, d, dev) != cudaSuccess || !can) continue;
      cudaMemAccessDesc a = {};
      a.location.type = cudaMemLocationTypeDevice;
      a.location.id = d;
      a.flags = cudaMemAccessFlagsProtReadWrite;
      peers.push_back(a);
    }
    if (!peers.empty() && cudaMemPoolSetAccess(pool_, peers.data(), peers.size()) != cudaSuccess) {
      // A pool its peers cannot reach would fault under P2P: plain cudaMalloc.
      (void)cudaMemPoolDestroy(pool_);
      pool_ = nullptr;
    }
    (void)cudaGetLastError();
  }
  cudaStream_t laneStream(int lane) const {
    return lane == kCommLane ? commStream_ : lane == kNodeLane ? nodeStream_ : stream_;
  }

  uint64_t* stepDev_ = nullptr;
  float* agree_ = nullptr;          // agreeScratch(), then flagScratch()
  cudaEvent_t lastCall_ = nullptr;  // recorded at the end of each eager compressed call
  bool lastCallRecorded_ = false;
  bool usedByGraphs_ = false;  // usedByGraphs(): markCallEnd saw a capture
  cudaStream_t commStream_ = nullptr, nodeStream_ = nullptr;
  cudaStream_t ownStream_ = nullptr;   // useOwnStream()
  cudaStream_t freeStream_ = nullptr;  // release()'s frees, never waited for by the host
  cudaEvent_t freeMark_ = nullptr;     // release()'s mark on the current stream
  cudaMemPool_t pool_ = nullptr;       // alloc()'s pool; NULL: cudaMalloc
  cudaEvent_t events_[kPipeEvents] = {};
  cudaEvent_t joined_[kNodeLane + 1] = {};  // join's record, per lane
};

}  // namespace

std::unique_ptr<Backend> makeCudaBackend() {
  return std::unique_ptr<Backend>(new CudaBackend());
}

}  // namespace gc
