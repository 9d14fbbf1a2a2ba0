// The dense QSGD exchanges on the CUDA backend against the CPU backend, bit
// for bit, in one process on one GPU: both comms see N ranks through the
// mirroring transport (every rank sends what rank 0 sends), so the CUDA path
// (kernels, workspace carving, keys from the device step counter) runs whole.
// The QSGD allgather (two ranks) with both roundings, each input type, the
// block path and two warp-path bucket sizes, eager and in replays of a
// captured graph (each replay's advanceStep must give the next call's draws);
// and the Elias allgather (GRADCOMP_ELIAS=1, three ranks), whose CUDA path
// (sizes pass, scan, write pass, size allgather read back by the host,
// decodes bounded by the slot) no other GPU test runs. Outputs and residuals
// are compared after every call, NaN and Inf gradients included: decodes
// give the canonical NaN on both backends.
#include <gtest/gtest.h>
#include <math.h>
#include <string.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
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

class DenseAlgoGpu : public gctest::GpuTest {};

struct DenseCase {
  const char* name;
  int elias;
  int bits, bucket;
  gradcompRounding_t rounding;
  gc::DType dtype;
  bool avg;
  int ranks;
};

const DenseCase kCases[] = {
    {"qsgd4 fp32 d512", 0, 4, 512, gradcompRoundStochastic, gc::DType::F32, false, 2},
    {"qsgd3 bf16 d96 nearest", 0, 3, 96, gradcompRoundNearest, gc::DType::BF16, true, 2},
    {"qsgd8 fp16 d1024", 0, 8, 1024, gradcompRoundStochastic, gc::DType::F16, true, 2},
    {"elias qsgd4 fp32 d512", 1, 4, 512, gradcompRoundStochastic, gc::DType::F32, false, 3},
    {"elias qsgd2 bf16 d128 nearest", 1, 2, 128, gradcompRoundNearest, gc::DType::BF16, true, 3},
};

gradcompConfig_t caseConfig(const DenseCase& dc) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.autoTune = 0;  // these check compression: auto must not pass calls to NCCL
  cfg.minElements = 0;
  cfg.bits = dc.bits;
  cfg.bucketSize = dc.bucket;
  cfg.rounding = dc.rounding;
  cfg.elias = dc.elias;
  return cfg;
}

// Step 1 holds a NaN and an Inf in different buckets.
std::vector<uint8_t> stepInput(size_t n, gc::DType t, int step) {
  std::vector<float> x = gctest::normal(n, 500 + step, 1.0f + step);
  if (step == 1) {
    x[n / 2] = NAN;
    x[1234] = INFINITY;
  }
  std::vector<uint8_t> b(n * gc::dtypeBytes(t));
  for (size_t i = 0; i < n; ++i) gc::storeFromFloat(b.data(), t, i, x[i]);
  return b;
}

TEST_F(DenseAlgoGpu, QsgdAndEliasAllgatherEqualCpuBackendEagerAndInGraphs) {
  const int steps = 4, eager = 2;
  const size_t n = 100003;
  for (const DenseCase& dc : kCases) {
    SCOPED_TRACE(dc.name);
    const gradcompConfig_t cfg = caseConfig(dc);
    const ncclDataType_t type = gctest::ref::nccl(dc.dtype);
    const ncclRedOp_t op = dc.avg ? ncclAvg : ncclSum;
    const size_t bytes = n * gc::dtypeBytes(dc.dtype);
    gradcompComm* cpu = gctest::mirrorComm(cfg, false, dc.ranks, n, nullptr, false);
    gradcompComm* gpu = gctest::mirrorComm(cfg, true, dc.ranks, n, stream, false);
    std::vector<uint8_t> hostBuf(bytes);
    DeviceBuffer<uint8_t> dbuf(bytes), dsrc(bytes);
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    for (int step = 0; step < steps; ++step) {
      SCOPED_TRACE(testing::Message() << "step " << step);
      const std::vector<uint8_t> in = stepInput(n, dc.dtype, step);
      hostBuf = in;
      ASSERT_EQ(gradcompAllReduce(hostBuf.data(), hostBuf.data(), n, type, op, cpu, nullptr),
                gradcompSuccess)
          << gradcompGetLastError();
      ASSERT_EQ(cudaMemcpy(dsrc.get(), in.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
      gctest::settle();  // the copy from dsrc below runs on the non-blocking stream
      // The Elias allgather reads the sizes on the host: never captured.
      ASSERT_NO_FATAL_FAILURE(gctest::copyThenCall(
          stream, dbuf.get(), dsrc.get(), bytes, step >= eager && !dc.elias, &graph, &exec,
          [&] { return gradcompAllReduce(dbuf.get(), dbuf.get(), n, type, op, gpu, stream); }));
      ASSERT_EQ(dbuf.download(bytes), hostBuf);
      const gc::BufferState& sc = cpu->states.begin()->second;
      const gc::BufferState& sg = gpu->states.begin()->second;
      ASSERT_NE(sc.residual, nullptr);
      std::vector<float> rc(sc.residual, sc.residual + n), rg(n);
      ASSERT_EQ(cudaMemcpy(rg.data(), sg.residual, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
      ASSERT_EQ(memcmp(rg.data(), rc.data(), n * 4), 0) << "residuals differ";
      if (step < eager || dc.elias) {
        gradcompStats_t stc, stg;
        ASSERT_EQ(gradcompGetStats(cpu, &stc), gradcompSuccess);
        ASSERT_EQ(gradcompGetStats(gpu, &stg), gradcompSuccess);
        EXPECT_EQ(stg.callsCompressed, stc.callsCompressed);
        EXPECT_EQ(stg.bytesOnWire, stc.bytesOnWire);  // Elias: the encodings' own sizes
      }
    }
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    gradcompCommDestroy(gpu);
    gradcompCommDestroy(cpu);
  }
}

// A comm's first call of a larger size allocates the buffer's state and grows
// the workspace. With cudaMalloc and cudaFree that waited for the whole
// device, so for a kernel on another stream that waits on this host thread
// (a pipeline-parallel receive whose send the peer posts only after its
// gradcomp call returns): a deadlock. The call must return while another
// stream is held, and still equal the CPU backend's. A watchdog opens the
// held stream after 10 s, so a backend that waits fails instead of hanging.
TEST_F(DenseAlgoGpu, GrowingCallsWaitForNoOtherStream) {
  int dev = 0, pools = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev), cudaSuccess);
  if (pools == 0) GTEST_SKIP() << "device " << dev << " has no memory pools: cudaMalloc waits";
  const DenseCase& dc = kCases[0];
  const gradcompConfig_t cfg = caseConfig(dc);
  const size_t small = 1 << 16, large = 1 << 22;
  // The kernels load at their first launch (lazy loading), which may wait
  // for the device: a comm of its own runs both sizes first.
  DeviceBuffer<float> warmBuf(large);
  gradcompComm* warm = gctest::mirrorComm(cfg, true, dc.ranks, large, stream, false);
  for (size_t n : {small, large}) {
    ASSERT_EQ(
        gradcompAllReduce(warmBuf.get(), warmBuf.get(), n, ncclFloat32, ncclSum, warm, stream),
        gradcompSuccess)
        << gradcompGetLastError();
  }
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  gradcompCommDestroy(warm);

  gradcompComm* cpu = gctest::mirrorComm(cfg, false, dc.ranks, large, nullptr, false);
  gradcompComm* gpu = gctest::mirrorComm(cfg, true, dc.ranks, large, stream, false);
  DeviceBuffer<float> a(small), b(large);
  std::vector<float> xa = gctest::normal(small, 71), xb = gctest::normal(large, 72);
  a.upload(xa);
  b.upload(xb);
  gctest::settle();
  ASSERT_EQ(gradcompAllReduce(a.get(), a.get(), small, ncclFloat32, ncclSum, gpu, stream),
            gradcompSuccess)
      << gradcompGetLastError();
  ASSERT_EQ(gradcompAllReduce(xa.data(), xa.data(), small, ncclFloat32, ncclSum, cpu, nullptr),
            gradcompSuccess);
  const size_t wsBefore = gpu->workspaceBytes;

  cudaStream_t other = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking), cudaSuccess);
  std::atomic<bool> late{false};
  {
    gctest::StreamGate gate;
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    ASSERT_EQ(gate.hold(other), cudaSuccess);
    std::thread watchdog([&] {
      std::unique_lock<std::mutex> lock(m);
      if (!cv.wait_for(lock, std::chrono::seconds(10), [&] { return done; })) {
        late = true;
        gate.open();
      }
    });
    const gradcompResult_t res =
        gradcompAllReduce(b.get(), b.get(), large, ncclFloat32, ncclSum, gpu, stream);
    const cudaError_t held = cudaStreamQuery(other);
    {
      std::lock_guard<std::mutex> lock(m);
      done = true;
    }
    cv.notify_one();
    watchdog.join();
    gate.open();
    EXPECT_EQ(res, gradcompSuccess) << gradcompGetLastError();
    EXPECT_FALSE(late) << "the growing call waited for another stream";
    EXPECT_EQ(held, cudaErrorNotReady) << "the held stream ran before the call returned";
  }
  EXPECT_GT(gpu->workspaceBytes, wsBefore) << "the large call did not grow the workspace";
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  ASSERT_EQ(gradcompAllReduce(xb.data(), xb.data(), large, ncclFloat32, ncclSum, cpu, nullptr),
            gradcompSuccess);
  EXPECT_EQ(a.download(small), xa);
  EXPECT_EQ(b.download(large), xb);
  cudaStreamDestroy(other);
  gradcompCommDestroy(gpu);
  gradcompCommDestroy(cpu);
}

// gradcompCommSetGradScale on the CUDA backend: the rescale runs on the
// stream it is given and the next call, on another stream, waits for it
// (as for a call): with the rescale's stream held, the call's stream stays
// busy for 2 s; the same scale again enqueues nothing, and the call then
// runs at once. Every output and residual is bit for bit the scale times
// the CPU backend's unscaled ones. Under capture it is refused, enqueueing
// nothing.
TEST_F(DenseAlgoGpu, GradScaleRescalesOnItsStreamBitForBit) {
  const size_t n = (size_t)1 << 22;
  const float scales[] = {1024.0f, 512.0f, 2048.0f, 2048.0f, 65536.0f, 0.5f, 1.0f};
  gradcompConfig_t cfg = caseConfig(kCases[0]);
  cudaStream_t other = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking), cudaSuccess);
  DeviceBuffer<float> d(n);
  {
    // The kernels loaded first, with no stream held: a lazy module load may
    // wait for the device (gpu_util.h, StreamGate).
    gradcompComm* warm = gctest::mirrorComm(cfg, true, 2, n, stream, false);
    ASSERT_EQ(gradcompAllReduce(d.get(), d.get(), n, ncclFloat32, ncclSum, warm, stream),
              gradcompSuccess);
    ASSERT_EQ(gradcompCommSetGradScale(warm, 2.0f, stream), gradcompSuccess);
    ASSERT_EQ(gradcompAllReduce(d.get(), d.get(), n, ncclFloat32, ncclSum, warm, stream),
              gradcompSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    gradcompCommDestroy(warm);
  }
  gradcompComm* cpu = gctest::mirrorComm(cfg, false, 2, n, nullptr, false);
  gradcompComm* gpu = gctest::mirrorComm(cfg, true, 2, n, stream, false);
  float previous = 1.0f;
  for (int step = 0; step < 7; ++step) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    const float s = scales[step];
    std::vector<float> x = gctest::normal(n, 70 + step), xs(n);
    for (size_t i = 0; i < n; ++i) xs[i] = x[i] * s;
    ASSERT_EQ(gradcompAllReduce(x.data(), x.data(), n, ncclFloat32, ncclSum, cpu, nullptr),
              gradcompSuccess);
    d.upload(xs);
    // The rescale on one stream, held, the call on the other, alternating. A
    // watchdog opens the gate after 20 s, so a call that waited on the host
    // fails instead of hanging.
    cudaStream_t scaleOn = step % 2 ? other : stream, callOn = step % 2 ? stream : other;
    gctest::StreamGate gate;
    ASSERT_EQ(gate.hold(scaleOn), cudaSuccess);
    std::atomic<bool> returned{false}, rescued{false};
    std::thread watchdog([&] {
      for (int i = 0; i < 2000 && !returned; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      // Only for a call that has not returned: otherwise the held stream
      // stays held through the 2 s below, which the test reads.
      if (!returned) {
        rescued = true;
        gate.open();
      }
    });
    const gradcompResult_t set = gradcompCommSetGradScale(gpu, s, scaleOn);
    const gradcompResult_t call =
        gradcompAllReduce(d.get(), d.get(), n, ncclFloat32, ncclSum, gpu, callOn);
    returned = true;
    // Busy for 2 s while the rescale's stream is held: the call waits for it.
    bool finished = false;
    for (int i = 0; i < 200 && !finished; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      finished = cudaStreamQuery(callOn) != cudaErrorNotReady;
    }
    gate.open();
    watchdog.join();
    ASSERT_EQ(set, gradcompSuccess);
    ASSERT_EQ(call, gradcompSuccess);
    if (s != previous) {
      EXPECT_FALSE(finished) << "the call ran before the rescale on the other stream";
    } else {
      EXPECT_TRUE(finished) << "the same scale again held the call";
    }
    previous = s;
    ASSERT_EQ(cudaStreamSynchronize(callOn), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(scaleOn), cudaSuccess);
    // A call that waited on the host for the held stream returns only when
    // the watchdog or the hold's own deadline opens it, and would then pass
    // the checks above and below.
    EXPECT_FALSE(rescued || gate.expired()) << "the call waited on the host for the held stream";
    const std::vector<float> out = d.download(n);
    const float* rc = cpu->states.begin()->second.residual;
    std::vector<float> rg(n);
    ASSERT_EQ(
        cudaMemcpy(rg.data(), gpu->states.begin()->second.residual, n * 4, cudaMemcpyDeviceToHost),
        cudaSuccess);
    size_t badOut = 0, badRes = 0;
    for (size_t i = 0; i < n; ++i) {
      const float wo = x[i] * s, wr = rc[i] * s;
      badOut += memcmp(&wo, &out[i], 4) != 0;
      badRes += memcmp(&wr, &rg[i], 4) != 0;
    }
    EXPECT_EQ(badOut, 0u) << "outputs not scale * the CPU backend's";
    EXPECT_EQ(badRes, 0u) << "residuals not scale * the CPU backend's";
  }
  // Under capture: refused, nothing captured.
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  EXPECT_EQ(gradcompCommSetGradScale(gpu, 4.0f, stream), gradcompInvalidUsage);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  size_t nodes = 99;
  ASSERT_EQ(cudaGraphGetNodes(graph, nullptr, &nodes), cudaSuccess);
  EXPECT_EQ(nodes, 0u);
  cudaGraphDestroy(graph);
  float now = 0.0f;
  ASSERT_EQ(gradcompCommGetGradScale(gpu, &now), gradcompSuccess);
  EXPECT_EQ(now, 1.0f);
  cudaStreamDestroy(other);
  gradcompCommDestroy(gpu);
  gradcompCommDestroy(cpu);
}

}  // namespace
