// The sparse allreduce on the CUDA backend against the CPU backend, bit for
// bit, in one process on one GPU: both comms see N ranks through a mirroring
// transport (every rank sends what rank 0 sends), so the CUDA path (kernels,
// workspace carving, device step counter) runs whole and its results,
// residuals and momenta are compared after every call, eager calls first,
// then replays of a captured CUDA graph, with NaN/Inf gradients in one eager
// call and one replay. And capture during DGC warm-up is refused.
#include <gtest/gtest.h>
#include <math.h>
#include <string.h>

#include <string>
#include <vector>

#include "gradcomp.h"
#include "kernels/common_math.cuh"
#include "plugin/comm.h"
#include "tests/common/ref_algos.h"
#include "tests/common/test_util.h"
#include "tests/gpu/gpu_util.h"
#include "tests/gpu/mirror_transport.h"

namespace {

using gctest::DeviceBuffer;

class SparseAlgoGpu : public gctest::GpuTest {};

// Bit equality, except that any NaN equals any NaN.
::testing::AssertionResult sameFloats(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) && std::isnan(b[i])) continue;
    if (memcmp(&a[i], &b[i], 4) != 0) {
      return ::testing::AssertionFailure() << "element " << i << ": " << a[i] << " vs " << b[i];
    }
  }
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------- algorithms

struct AlgoCase {
  const char* name;
  gradcompMethod_t method;
  gradcompSelect_t select;
  ncclDataType_t valueType;
  float density;
  gc::DType dtype;
  bool avg;
};

gradcompConfig_t caseConfig(const AlgoCase& a) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.autoTune = 0;  // these check compression: auto must not pass calls to NCCL
  cfg.method = a.method;
  cfg.select = a.select;
  cfg.valueType = a.valueType;
  cfg.density = a.density;
  cfg.minElements = 0;
  cfg.momentumCorrection = a.method == gradcompMethodDgc;
  cfg.momentumMasking = a.method == gradcompMethodDgc;
  cfg.clipNorm = a.method == gradcompMethodDgc ? 100.0f : 0.0f;
  return cfg;
}

const AlgoCase kCases[] = {
    {"topk threshold", gradcompMethodTopk, gradcompSelectThreshold, ncclFloat32, 0.01f,
     gc::DType::F32, false},
    {"topk exact bf16", gradcompMethodTopk, gradcompSelectExact, ncclBfloat16, 0.001f,
     gc::DType::BF16, true},
    {"topk half values", gradcompMethodTopk, gradcompSelectThreshold, ncclFloat16, 0.01f,
     gc::DType::F16, false},
    {"dgc", gradcompMethodDgc, gradcompSelectThreshold, ncclFloat32, 0.01f, gc::DType::F32, true},
    {"dense fallback", gradcompMethodTopk, gradcompSelectThreshold, ncclFloat32, 0.2f,
     gc::DType::F32, false},
    {"randk", gradcompMethodRandk, gradcompSelectThreshold, ncclFloat32, 0.01f, gc::DType::F32,
     true},
};

// The first buffer state's residual and momentum (when it has them) on the
// CUDA comm, bit for bit the CPU comm's.
void expectSameState(const gradcompComm& cpu, const gradcompComm& gpu, size_t n) {
  const gc::BufferState& sc = cpu.states.begin()->second;
  const gc::BufferState& sg = gpu.states.begin()->second;
  for (auto arrays :
       {std::make_pair(sc.residual, sg.residual), std::make_pair(sc.momentum, sg.momentum)}) {
    if (arrays.first == nullptr) continue;
    std::vector<float> onCpu(arrays.first, arrays.first + n), onGpu(n);
    ASSERT_EQ(cudaMemcpy(onGpu.data(), arrays.second, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_TRUE(sameFloats(onGpu, onCpu));
  }
}

std::vector<uint8_t> stepInput(size_t n, gc::DType t, int step) {
  std::vector<float> x = gctest::normal(n, 300 + step, 1.0f + step);
  // Non-finite gradients in an eager call and a replay: their output is
  // non-finite, so the call clears v and u (docs/reliability.md,
  // "Non-finite gradients"; docs/sparse.md for which elements).
  if (step == 1 || step == 3) {
    x[n / 2] = NAN;
    x[777] = -INFINITY;
  }
  std::vector<uint8_t> b(n * gc::dtypeBytes(t));
  for (size_t i = 0; i < n; ++i) gc::storeFromFloat(b.data(), t, i, x[i]);
  return b;
}

TEST_F(SparseAlgoGpu, AlgorithmsEqualCpuBackendEagerAndInGraphs) {
  const int N = 3, steps = 5, eager = 2;
  const size_t n = 200003;
  for (const AlgoCase& ac : kCases) {
    SCOPED_TRACE(ac.name);
    const gradcompConfig_t cfg = caseConfig(ac);
    const ncclDataType_t type = gctest::ref::nccl(ac.dtype);
    const ncclRedOp_t op = ac.avg ? ncclAvg : ncclSum;
    const size_t bytes = n * gc::dtypeBytes(ac.dtype);
    gradcompComm* cpu = gctest::mirrorComm(cfg, false, N, n, nullptr, false);
    gradcompComm* gpu = gctest::mirrorComm(cfg, true, N, n, stream, false);
    std::vector<uint8_t> hostBuf(bytes);
    DeviceBuffer<uint8_t> dbuf(bytes), dsrc(bytes);
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    for (int step = 0; step < steps; ++step) {
      SCOPED_TRACE(testing::Message() << "step " << step);
      const std::vector<uint8_t> in = stepInput(n, ac.dtype, step);
      hostBuf = in;
      ASSERT_EQ(gradcompAllReduce(hostBuf.data(), hostBuf.data(), n, type, op, cpu, nullptr),
                gradcompSuccess)
          << gradcompGetLastError();
      ASSERT_EQ(cudaMemcpy(dsrc.get(), in.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
      gctest::settle();  // the copy from dsrc below runs on the non-blocking stream
      ASSERT_NO_FATAL_FAILURE(gctest::copyThenCall(
          stream, dbuf.get(), dsrc.get(), bytes, step >= eager, &graph, &exec,
          [&] { return gradcompAllReduce(dbuf.get(), dbuf.get(), n, type, op, gpu, stream); }));
      ASSERT_EQ(dbuf.download(bytes), hostBuf);
      // Residual and momentum too.
      ASSERT_NO_FATAL_FAILURE(expectSameState(*cpu, *gpu, n));
      if (step < eager) {
        gradcompStats_t stc, stg;
        ASSERT_EQ(gradcompGetStats(cpu, &stc), gradcompSuccess);
        ASSERT_EQ(gradcompGetStats(gpu, &stg), gradcompSuccess);
        // selectedLast is not compared: on the CUDA backend it arrives
        // asynchronously (docs/sparse.md).
        EXPECT_EQ(stg.targetLast, stc.targetLast);
        EXPECT_EQ(stg.denseFallbacks, stc.denseFallbacks);
        EXPECT_EQ(stg.bytesOnWire, stc.bytesOnWire);
        // Selectors' slots are well-formed: none is ever dropped.
        EXPECT_EQ(stg.peerSlotsRejected, 0u);
        EXPECT_EQ(stc.peerSlotsRejected, 0u);
      }
    }
    // A loss scale change under captured calls: DGC's replays would clip at
    // the old scale's bound (clipNorm 100 here), so it is refused; the other
    // methods' captured calls read the rescaled state in place.
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(gradcompCommSetGradScale(gpu, 2.0f, stream),
              ac.method == gradcompMethodDgc ? gradcompInvalidUsage : gradcompSuccess)
        << gradcompGetLastError();
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    gradcompCommDestroy(gpu);
    gradcompCommDestroy(cpu);
  }
}

TEST_F(SparseAlgoGpu, CaptureDuringDgcWarmupIsRefused) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.autoTune = 0;  // these check compression: auto must not pass calls to NCCL
  cfg.method = gradcompMethodDgc;
  cfg.minElements = 0;
  cfg.warmupSteps = 10;
  const size_t n = 50000;
  gradcompComm* gpu = gctest::mirrorComm(cfg, true, 2, n, stream, false);
  DeviceBuffer<float> d(n);  // warm-up starts at 25%: the dense fallback
  d.upload(gctest::normal(n, 1));
  ASSERT_EQ(gradcompAllReduce(d.get(), d.get(), n, ncclFloat32, ncclSum, gpu, stream),
            gradcompSuccess)
      << gradcompGetLastError();
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  const gradcompResult_t res =
      gradcompAllReduce(d.get(), d.get(), n, ncclFloat32, ncclSum, gpu, stream);
  const std::string msg = gradcompGetLastError();
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  if (graph) cudaGraphDestroy(graph);
  EXPECT_EQ(res, gradcompInvalidUsage);
  EXPECT_NE(msg.find("warm-up"), std::string::npos) << msg;
  gradcompCommDestroy(gpu);
}

}  // namespace

// DGC with momentum correction on calls it does not compress (here: under
// minElements): the velocity, residual and output of the CUDA backend are the
// CPU backend's, bit for bit, eager and replayed in a graph, with clipping
// and non-finite gradients (docs/sparse.md; tests/cpu/test_momentum_pass.cc
// checks the CPU backend against momentum SGD).
TEST_F(SparseAlgoGpu, MomentumPassThroughEqualsCpuBackend) {
  const int N = 3, steps = 5, eager = 2;
  const size_t n = 200003;
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = gradcompMethodDgc;
  cfg.density = 0.001f;
  cfg.clipNorm = 50.0f;
  cfg.warmupSteps = 0;
  cfg.minElements = n + 1;
  cfg.autoTune = 0;
  const size_t bytes = n * 4;
  gradcompComm* cpu = gctest::mirrorComm(cfg, false, N, n, nullptr, true);
  gradcompComm* gpu = gctest::mirrorComm(cfg, true, N, n, stream, true);
  std::vector<uint8_t> hostBuf(bytes);
  DeviceBuffer<uint8_t> dbuf(bytes), dsrc(bytes);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  for (int step = 0; step < steps; ++step) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    const std::vector<uint8_t> in = stepInput(n, gc::DType::F32, step);
    hostBuf = in;
    ASSERT_EQ(
        gradcompAllReduce(hostBuf.data(), hostBuf.data(), n, ncclFloat32, ncclSum, cpu, nullptr),
        gradcompSuccess)
        << gradcompGetLastError();
    ASSERT_EQ(cudaMemcpy(dsrc.get(), in.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
    gctest::settle();
    ASSERT_NO_FATAL_FAILURE(gctest::copyThenCall(
        stream, dbuf.get(), dsrc.get(), bytes, step >= eager, &graph, &exec, [&] {
          return gradcompAllReduce(dbuf.get(), dbuf.get(), n, ncclFloat32, ncclSum, gpu, stream);
        }));
    ASSERT_EQ(dbuf.download(bytes), hostBuf);
    ASSERT_NE(cpu->states.begin()->second.momentum, nullptr);
    ASSERT_NO_FATAL_FAILURE(expectSameState(*cpu, *gpu, n));
    if (step < eager) {
      gradcompStats_t stc, stg;
      ASSERT_EQ(gradcompGetStats(cpu, &stc), gradcompSuccess);
      ASSERT_EQ(gradcompGetStats(gpu, &stg), gradcompSuccess);
      EXPECT_EQ(stg.callsPassedThrough, (uint64_t)step + 1);
      EXPECT_EQ(stc.callsPassedThrough, (uint64_t)step + 1);
      EXPECT_EQ(stg.callsCompressed, 0u);
    }
  }
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  gradcompCommDestroy(gpu);
  gradcompCommDestroy(cpu);
}
