// GRADCOMP_AUTO's timing on the CUDA backend, in one process on one GPU: a
// comm of N ranks over a mirroring transport (every rank sends what rank 0
// sends, so NCCL's allreduce is N times the input) runs the real timing with
// CUDA events on the caller's stream. The timing must leave the comm as it
// was (residuals, device step counter, stats, workspace): calls around it
// equal, bit for bit, those of a comm that never timed. The first eligible
// call under capture is refused.
#include <gtest/gtest.h>
#include <string.h>

#include <string>
#include <vector>

#include "gradcomp.h"
#include "plugin/autotune.h"
#include "plugin/comm.h"
#include "tests/common/test_util.h"
#include "tests/gpu/gpu_util.h"

namespace {

using gctest::DeviceBuffer;

class AutoTuneGpu : public gctest::GpuTest {};

#define GC_TEST_CHECK(x)                  \
  do {                                    \
    gradcompResult_t r_ = (x);            \
    if (r_ != gradcompSuccess) return r_; \
  } while (0)

// N ranks seen from rank 0, every rank sending what rank 0 sends: an
// allgather repeats the block, a float sum is N times the input, a max the
// input itself. Through the backend's own ops, so it runs on the stream.
class SumMirror final : public gc::Transport {
 public:
  SumMirror(int size, gc::Backend* be, size_t maxFloats) : be_(be), maxFloats_(maxFloats) {
    rank_ = 0;
    size_ = size;
    void* p = nullptr;
    EXPECT_EQ(be_->alloc(maxFloats * sizeof(float), &p), gradcompSuccess);
    tmp_ = static_cast<float*>(p);
  }
  ~SumMirror() override { be_->release(tmp_); }
  gradcompResult_t allToAll(const void* const*, const size_t*, void* const*,
                            const size_t*) override {
    return gradcompNotSupported;
  }
  gradcompResult_t sendRecv(const void*, size_t, int, void*, size_t, int) override {
    return gradcompNotSupported;
  }
  gradcompResult_t allGather(const void* send, void* recv, size_t bytes) override {
    for (int i = 0; i < size_; ++i)
      GC_TEST_CHECK(be_->copy(static_cast<char*>(recv) + i * bytes, send, bytes));
    return gradcompSuccess;
  }
  gradcompResult_t allReduceSumFloat(const float* send, float* recv, size_t n) override {
    if (n > maxFloats_) return gradcompNotSupported;
    GC_TEST_CHECK(be_->copy(tmp_, send, n * sizeof(float)));
    GC_TEST_CHECK(be_->zero(recv, n * sizeof(float)));
    for (int i = 0; i < size_; ++i) GC_TEST_CHECK(be_->add(recv, tmp_, n));
    return gradcompSuccess;
  }
  gradcompResult_t passThrough(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op) override {
    if (type != ncclFloat32) return gradcompNotSupported;
    if (op == ncclMax) return be_->copy(recv, send, count * sizeof(float));
    if (op != ncclSum) return gradcompNotSupported;
    return allReduceSumFloat(static_cast<const float*>(send), static_cast<float*>(recv), count);
  }
  gradcompResult_t reduceScatter(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t) override {
    return gradcompNotSupported;
  }

 private:
  gc::Backend* be_;
  size_t maxFloats_;
  float* tmp_ = nullptr;
};

gradcompComm* mirrorComm(const gradcompConfig_t& cfg, int nranks, size_t maxFloats,
                         cudaStream_t stream) {
  gradcompComm* c = new gradcompComm();
  c->cfg = cfg;
  c->rank = 0;
  c->nranks = nranks;
  c->backend = gc::makeCudaBackend();
  EXPECT_EQ(c->backend->init(), gradcompSuccess);
  c->backend->setStream(stream);
  c->transport.reset(new SumMirror(nranks, c->backend.get(), maxFloats));
  c->transport->setStream(stream);
  c->sparse = gc::makeCudaSparseOps();
  return c;
}

gc::AutoFigures compressWins() {
  gc::AutoFigures f;
  f.smallCount = 1024;
  f.largeCount = 5120;
  f.ncclUs[0] = 64;
  f.ncclUs[1] = 128;
  f.compUs[0] = 32;
  f.compUs[1] = 64;
  return f;
}

gradcompConfig_t topkConfig(int autoTune) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = gradcompMethodTopk;
  cfg.density = 0.05f;
  cfg.minElements = 0;
  cfg.autoTune = autoTune;
  return cfg;
}

std::vector<char> savedState(gradcompComm* c) {
  size_t bytes = 0;
  EXPECT_EQ(gradcompCommStateSize(c, &bytes), gradcompSuccess);
  std::vector<char> v(bytes);
  EXPECT_EQ(gradcompCommSaveState(c, v.data(), bytes), gradcompSuccess);
  return v;
}

TEST_F(AutoTuneGpu, TimingLeavesTheCommAsItWas) {
  const size_t n = 100000, maxFloats = size_t(1) << 20;
  gradcompComm* a = mirrorComm(topkConfig(1), 2, maxFloats, stream);
  gradcompComm* b = mirrorComm(topkConfig(0), 2, maxFloats, stream);
  gc::autoInjectFigures(a, compressWins());
  DeviceBuffer<float> x(n), y(n);
  auto step = [&](int k) {
    const std::vector<float> g = gctest::normal(n, 50 + k);
    x.upload(g);
    y.upload(g);
    ASSERT_EQ(gradcompAllReduce(x.get(), x.get(), n, ncclFloat32, ncclSum, a, stream),
              gradcompSuccess)
        << gradcompGetLastError();
    ASSERT_EQ(gradcompAllReduce(y.get(), y.get(), n, ncclFloat32, ncclSum, b, stream),
              gradcompSuccess)
        << gradcompGetLastError();
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_TRUE(x.download(n) == y.download(n)) << "call " << k;
  };
  step(0);
  step(1);

  const std::vector<char> before = savedState(a);
  const gradcompStats_t statsBefore = a->stats;
  void* workspace = a->workspace;
  a->autoState.injected = false;
  a->autoState.timedCounts[0] = size_t(1) << 16;
  a->autoState.timedCounts[1] = size_t(1) << 20;
  a->cfg.minElements = size_t(1) << 22;  // the timing compresses anyway
  ASSERT_EQ(gradcompCommRetune(a, stream), gradcompSuccess) << gradcompGetLastError();
  const gc::AutoState& s = a->autoState;
  EXPECT_TRUE(s.timed);
  EXPECT_EQ(s.timedCompressed, 2u * (gc::kAutoWarmupCalls + gc::kAutoTimedCalls));
  EXPECT_EQ(gc::autoCheckFigures(s.figures), gradcompSuccess);
  printf("auto on the mirror: NCCL %.1f / %.1f us, compressed %.1f / %.1f us at %zu / %zu\n",
         s.figures.ncclUs[0], s.figures.ncclUs[1], s.figures.compUs[0], s.figures.compUs[1],
         s.figures.smallCount, s.figures.largeCount);
  EXPECT_EQ(a->cfg.minElements, size_t(1) << 22);
  EXPECT_EQ(a->workspace, workspace);
  EXPECT_EQ(memcmp(&a->stats, &statsBefore, sizeof(statsBefore)), 0);
  EXPECT_TRUE(savedState(a) == before) << "the residual state changed";

  a->cfg.minElements = 0;
  gc::autoInjectFigures(a, compressWins());
  ASSERT_EQ(gradcompCommRetune(a, stream), gradcompSuccess) << gradcompGetLastError();
  step(2);  // the device step counter came back: the same samples, the same bits
  step(3);
  EXPECT_EQ(a->stats.callsCompressed, 4u);
  gradcompCommDestroy(a);
  gradcompCommDestroy(b);
}

TEST_F(AutoTuneGpu, FirstCallUnderCaptureIsRefused) {
  const size_t n = 50000;
  gradcompComm* a = mirrorComm(topkConfig(1), 2, n, stream);
  gc::autoInjectFigures(a, compressWins());
  DeviceBuffer<float> x(n);
  x.upload(gctest::normal(n, 3));
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  const gradcompResult_t res =
      gradcompAllReduce(x.get(), x.get(), n, ncclFloat32, ncclSum, a, stream);
  const std::string msg = gradcompGetLastError();
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  if (graph) cudaGraphDestroy(graph);
  EXPECT_EQ(res, gradcompInvalidUsage);
  EXPECT_NE(msg.find("GRADCOMP_AUTO=0"), std::string::npos) << msg;
  EXPECT_FALSE(a->autoState.decided);
  EXPECT_EQ(gradcompAllReduce(x.get(), x.get(), n, ncclFloat32, ncclSum, a, stream),
            gradcompSuccess)
      << gradcompGetLastError();
  EXPECT_TRUE(a->autoState.timed);
  EXPECT_EQ(a->stats.callsCompressed, 1u);
  gradcompCommDestroy(a);
}

}  // namespace
