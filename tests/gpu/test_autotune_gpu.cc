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
#include "tests/common/auto_checks.h"
#include "tests/common/cpu_world.h"
#include "tests/common/stats_compare.h"
#include "tests/common/test_util.h"
#include "tests/gpu/gpu_util.h"
#include "tests/gpu/mirror_transport.h"

namespace {

using gctest::DeviceBuffer;

class AutoTuneGpu : public gctest::GpuTest {};

gc::AutoFigures compressWins() {
  return gctest::autoFigures(64, 128, 32, 64);
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

// The buffers' saved states, without auto's figures record (which a timing
// rewrites by design); still a blob that loads.
std::vector<char> savedState(gradcompComm* c) {
  const std::vector<uint8_t> s = gctest::savedBufferState(c);
  return std::vector<char>(s.begin(), s.end());
}

TEST_F(AutoTuneGpu, TimingLeavesTheCommAsItWas) {
  const size_t n = 100000, maxFloats = size_t(1) << 20;
  gradcompComm* a = gctest::mirrorComm(topkConfig(1), true, 2, maxFloats, stream, true);
  gradcompComm* b = gctest::mirrorComm(topkConfig(0), true, 2, maxFloats, stream, true);
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
  a->autoState.allReduce.injected = false;
  a->autoState.timedCounts[0] = size_t(1) << 16;
  a->autoState.timedCounts[1] = size_t(1) << 20;
  a->cfg.minElements = size_t(1) << 22;  // the timing compresses anyway
  ASSERT_EQ(gradcompCommRetune(a, stream), gradcompSuccess) << gradcompGetLastError();
  const gc::AutoDecision& s = a->autoState.allReduce;
  EXPECT_TRUE(s.timed);
  EXPECT_EQ(s.timedCompressed, 2u * (gc::kAutoWarmupCalls + gc::kAutoTimedCalls));
  EXPECT_EQ(gc::autoCheckFigures(s.figures), gradcompSuccess);
  printf("auto on the mirror: NCCL %.1f / %.1f us, compressed %.1f / %.1f us at %zu / %zu\n",
         s.figures.ncclUs[0], s.figures.ncclUs[1], s.figures.compUs[0], s.figures.compUs[1],
         s.figures.smallCount, s.figures.largeCount);
  EXPECT_EQ(a->cfg.minElements, size_t(1) << 22);
  EXPECT_EQ(a->workspace, workspace);
  EXPECT_TRUE(gctest::sameStats(a->stats, statsBefore));
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
  gradcompComm* a = gctest::mirrorComm(topkConfig(1), true, 2, n, stream, true);
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
  EXPECT_FALSE(a->autoState.allReduce.decided);
  EXPECT_EQ(gradcompAllReduce(x.get(), x.get(), n, ncclFloat32, ncclSum, a, stream),
            gradcompSuccess)
      << gradcompGetLastError();
  EXPECT_TRUE(a->autoState.allReduce.timed);
  EXPECT_EQ(a->stats.callsCompressed, 1u);
  gradcompCommDestroy(a);
}

}  // namespace

namespace {

class StateGpu : public gctest::GpuTest {};

// Saving, loading and resetting state run between calls, on the backend's own
// stream after the last call's work: the caller may have destroyed the stream
// of its last call by then. A comm whose last call ran on a stream destroyed
// since saves the same bytes as a twin whose stream lives, loads them, and is
// destroyed cleanly; the calls after the load equal the twin's bit for bit.
// Keyed calls: the saved state names the key, not the buffer's address.
TEST_F(StateGpu, StateOutlivesTheLastCallsStream) {
  const size_t n = 100000, maxFloats = size_t(1) << 20;
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 0;
  cfg.autoTune = 0;  // QSGD 4-bit with its residual
  gradcompComm* a = gctest::mirrorComm(cfg, true, 2, maxFloats, stream, true);
  gradcompComm* b = gctest::mirrorComm(cfg, true, 2, maxFloats, stream, true);
  DeviceBuffer<float> x(n), y(n);
  auto call = [&](gradcompComm* c, DeviceBuffer<float>& buf, cudaStream_t s) {
    return gradcompAllReduceKeyed(buf.get(), buf.get(), n, ncclFloat32, ncclSum, c, s, 7);
  };
  cudaStream_t gone = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&gone, cudaStreamNonBlocking), cudaSuccess);
  const std::vector<float> g = gctest::normal(n, 77);
  x.upload(g);
  y.upload(g);
  ASSERT_EQ(call(a, x, gone), gradcompSuccess) << gradcompGetLastError();
  ASSERT_EQ(call(b, y, stream), gradcompSuccess) << gradcompGetLastError();
  // Destroyed with the call's work possibly still queued: CUDA finishes it.
  ASSERT_EQ(cudaStreamDestroy(gone), cudaSuccess);
  const std::vector<char> saved = savedState(a);
  EXPECT_TRUE(saved == savedState(b)) << "the state saved after the stream went differs";
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  for (gradcompComm* c : {a, b}) {
    ASSERT_EQ(gradcompCommLoadState(c, saved.data(), saved.size()), gradcompSuccess)
        << gradcompGetLastError();
  }
  x.upload(g);
  y.upload(g);
  ASSERT_EQ(call(a, x, stream), gradcompSuccess) << gradcompGetLastError();
  ASSERT_EQ(call(b, y, stream), gradcompSuccess) << gradcompGetLastError();
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_TRUE(x.download(n) == y.download(n)) << "the calls after the load differ";
  // Reset and destroy after another call on a stream that is then destroyed.
  ASSERT_EQ(cudaStreamCreateWithFlags(&gone, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(call(a, x, gone), gradcompSuccess) << gradcompGetLastError();
  ASSERT_EQ(cudaStreamDestroy(gone), cudaSuccess);
  EXPECT_EQ(gradcompCommResetState(a), gradcompSuccess) << gradcompGetLastError();
  EXPECT_EQ(gradcompCommDestroy(a), gradcompSuccess);
  EXPECT_EQ(gradcompCommDestroy(b), gradcompSuccess);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

}  // namespace
