// The CUDA backend against the CPU backend, operation by operation, bit for
// bit: since an algorithm is the same code over either backend, equal
// backends (plus the transports) give equal allreduce results.
#include <gtest/gtest.h>
#include <string.h>

#include <chrono>
#include <thread>
#include <vector>

#include "plugin/backends/backend.h"
#include "tests/common/test_util.h"
#include "tests/gpu/gpu_util.h"

namespace {

using gc::DType;
using gctest::DeviceBuffer;

class BackendGpu : public gctest::GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    cpu = gc::makeCpuBackend();
    gpu = gc::makeCudaBackend();
    gpu->setStream(stream);
  }
  std::unique_ptr<gc::Backend> cpu, gpu;
};

std::vector<uint16_t> narrow(const std::vector<float>& x, DType t) {
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    h[i] = t == DType::F16 ? gc::floatToHalf(x[i]) : gc::floatToBf16(x[i]);
  }
  return h;
}

// The second count passes the elementwise kernels' 65536-block grid, so
// every thread goes round the grid-stride loop more than once.
TEST_F(BackendGpu, ToFloatFromFloatAddMatchCpu) {
  for (size_t n : {(size_t)100003, (size_t)65536 * 256 + 4099})
    for (DType t : {DType::F32, DType::F16, DType::BF16}) {
      SCOPED_TRACE(testing::Message() << "n=" << n << " dtype=" << (int)t);
      std::vector<float> x = gctest::normal(n, 1, 100.0f), add = gctest::normal(n, 2);
      std::vector<uint16_t> h = narrow(x, t);
      const void* hx = t == DType::F32 ? (const void*)x.data() : (const void*)h.data();
      const size_t esz = gc::dtypeBytes(t);
      DeviceBuffer<uint8_t> dx(n * esz), dout(n * esz);
      DeviceBuffer<float> dadd(n), df(n);
      ASSERT_EQ(cudaMemcpy(dx.get(), hx, n * esz, cudaMemcpyHostToDevice), cudaSuccess);
      dadd.upload(add);

      std::vector<float> fc(n);
      ASSERT_EQ(cpu->toFloat(hx, t, add.data(), n, fc.data()), gradcompSuccess);
      ASSERT_EQ(gpu->toFloat(dx.get(), t, dadd.get(), n, df.get()), gradcompSuccess);
      ASSERT_EQ(gpu->sync(), gradcompSuccess);
      auto fg = df.download(n);
      ASSERT_EQ(memcmp(fc.data(), fg.data(), n * 4), 0);

      for (float divisor : {1.0f, 3.0f, 8.0f}) {
        std::vector<uint8_t> oc(n * esz);
        ASSERT_EQ(cpu->fromFloat(fc.data(), n, divisor, t, oc.data()), gradcompSuccess);
        ASSERT_EQ(gpu->fromFloat(df.get(), n, divisor, t, dout.get()), gradcompSuccess);
        ASSERT_EQ(gpu->sync(), gradcompSuccess);
        EXPECT_EQ(dout.download(n * esz), oc) << "divisor " << divisor;
      }

      ASSERT_EQ(cpu->add(fc.data(), add.data(), n), gradcompSuccess);
      ASSERT_EQ(gpu->add(df.get(), dadd.get(), n), gradcompSuccess);
      ASSERT_EQ(gpu->sync(), gradcompSuccess);
      fg = df.download(n);
      ASSERT_EQ(memcmp(fc.data(), fg.data(), n * 4), 0);
    }
}

// Every fp16 and bf16 bit pattern to fp32 (NaN payloads included): the
// device's conversions give the host's bits.
TEST_F(BackendGpu, EveryHalfAndBf16PatternWidensAsOnTheHost) {
  const size_t n = 65536;
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = (uint16_t)i;
  for (DType t : {DType::F16, DType::BF16}) {
    SCOPED_TRACE(testing::Message() << "dtype=" << (int)t);
    std::vector<float> fc(n);
    ASSERT_EQ(cpu->toFloat(h.data(), t, nullptr, n, fc.data()), gradcompSuccess);
    DeviceBuffer<uint16_t> dx(n);
    DeviceBuffer<float> df(n);
    dx.upload(h);
    ASSERT_EQ(gpu->toFloat(dx.get(), t, nullptr, n, df.get()), gradcompSuccess);
    ASSERT_EQ(gpu->sync(), gradcompSuccess);
    auto fg = df.download(n);
    for (size_t i = 0; i < n; ++i) {
      uint32_t a, b;
      memcpy(&a, &fc[i], 4);
      memcpy(&b, &fg[i], 4);
      ASSERT_EQ(a, b) << "pattern 0x" << std::hex << i;
    }
  }
}

TEST_F(BackendGpu, AllocZeroCopyAndHostTransfers) {
  void* p = nullptr;
  ASSERT_EQ(gpu->alloc(1 << 20, &p), gradcompSuccess);
  std::vector<uint8_t> host(1 << 20, 0xff);
  ASSERT_EQ(gpu->toHost(host.data(), p, host.size()), gradcompSuccess);
  for (uint8_t v : host) ASSERT_EQ(v, 0);  // alloc zero-fills
  std::vector<uint8_t> pattern(1 << 20);
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = (uint8_t)(i * 7);
  ASSERT_EQ(gpu->fromHost(p, pattern.data(), pattern.size()), gradcompSuccess);
  void* q = nullptr;
  ASSERT_EQ(gpu->alloc(1 << 20, &q), gradcompSuccess);
  ASSERT_EQ(gpu->copy(q, p, 1 << 20), gradcompSuccess);
  ASSERT_EQ(gpu->zero(p, 1 << 19), gradcompSuccess);
  ASSERT_EQ(gpu->toHost(host.data(), q, host.size()), gradcompSuccess);
  EXPECT_EQ(host, pattern);
  ASSERT_EQ(gpu->toHost(host.data(), p, host.size()), gradcompSuccess);
  for (size_t i = 0; i < (1u << 19); ++i) ASSERT_EQ(host[i], 0);
  for (size_t i = 1u << 19; i < host.size(); ++i) ASSERT_EQ(host[i], pattern[i]);
  gpu->release(p);
  gpu->release(q);
  EXPECT_FALSE(gpu->capturing());
}

// A comm's calls share its workspace and device step counter: a call on a
// second stream waits for the last compressed call on the first. Stream A is
// held by a host function until the test opens it; the work of a "call" on
// B (after advanceStep and markCallEnd, the end of a compressed call, on A) must not finish
// while A is held, and sees A's copy and step increment once it does. A
// second switch back to A waits for B's call the same way.
TEST_F(BackendGpu, CallOnAnotherStreamWaitsForTheLastCall) {
  ASSERT_EQ(gpu->init(), gradcompSuccess);
  cudaStream_t other = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking), cudaSuccess);
  const size_t n = 1 << 20;
  const std::vector<float> x = gctest::normal(n, 5);
  DeviceBuffer<float> a(n), b(n), c(n);
  a.upload(x);
  gctest::StreamGate gate;  // whatever fails below, released before the buffers go
  uint64_t* step = nullptr;
  ASSERT_EQ(cudaMallocHost(&step, sizeof(*step)), cudaSuccess);
  // The step kernel once before any stream is held: CUDA loads a kernel at
  // its first launch (lazy loading, the default), which may wait for the
  // whole device, the held stream included, and only this thread opens it.
  ASSERT_EQ(gpu->advanceStep(), gradcompSuccess);
  ASSERT_EQ(gpu->sync(), gradcompSuccess);
  ASSERT_EQ(cudaMemcpy(step, gpu->deviceStep(), sizeof(*step), cudaMemcpyDeviceToHost),
            cudaSuccess);
  const uint64_t base = *step;
  cudaStream_t streams[2] = {stream, other};
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(testing::Message() << "round " << round);
    cudaStream_t first = streams[round], second = streams[1 - round];
    gpu->setStream(first);
    ASSERT_EQ(gate.hold(first), cudaSuccess);
    ASSERT_EQ(gpu->copy(b.get(), a.get(), n * 4), gradcompSuccess);
    ASSERT_EQ(gpu->advanceStep(), gradcompSuccess);
    gpu->markCallEnd();  // as every compressed call ends
    gpu->setStream(second);
    ASSERT_EQ(gpu->copy(c.get(), b.get(), n * 4), gradcompSuccess);
    // Pinned: a copy to pageable memory would block this thread, which
    // alone can release the first stream.
    *step = 0;
    ASSERT_EQ(
        cudaMemcpyAsync(step, gpu->deviceStep(), sizeof(*step), cudaMemcpyDeviceToHost, second),
        cudaSuccess);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    EXPECT_EQ(cudaStreamQuery(second), cudaErrorNotReady)
        << "the second stream ran ahead of the call held on the first";
    gate.open();
    EXPECT_FALSE(gate.expired()) << "a call blocked this thread while the first stream was held";
    ASSERT_EQ(cudaStreamSynchronize(second), cudaSuccess);
    EXPECT_EQ(*step, base + 2 * round + 1);  // each round advances twice
    EXPECT_EQ(c.download(n), x);
    ASSERT_EQ(gpu->advanceStep(), gradcompSuccess);
    gpu->markCallEnd();
    ASSERT_EQ(gpu->sync(), gradcompSuccess);
    ASSERT_EQ(gpu->zero(c.get(), n * 4), gradcompSuccess);
    ASSERT_EQ(gpu->zero(b.get(), n * 4), gradcompSuccess);
    ASSERT_EQ(gpu->sync(), gradcompSuccess);
  }
  gpu->setStream(stream);
  cudaStreamDestroy(other);
  cudaFreeHost(step);
}

// Pipelined calls' lanes (a pipelined hierarchical call uses all three): the
// comm and node streams are the backend's own, and a chain compute -> node
// -> comm -> compute ordered by event slots alone sees each copy complete.
TEST_F(BackendGpu, LanesAreOrderedByEventSlots) {
  ASSERT_EQ(gpu->init(), gradcompSuccess);
  ASSERT_NE(gpu->commStream(), gpu->nodeStream());
  ASSERT_NE(gpu->commStream(), stream);
  ASSERT_NE(gpu->nodeStream(), stream);
  const size_t n = 1 << 22;
  const std::vector<float> x = gctest::normal(n, 3);
  DeviceBuffer<float> a(n), b(n), c(n), d(n);
  a.upload(x);
  using B = gc::Backend;
  ASSERT_EQ(gpu->copy(b.get(), a.get(), n * 4), gradcompSuccess);
  ASSERT_EQ(gpu->record(B::kComputeLane, 5), gradcompSuccess);
  ASSERT_EQ(gpu->wait(B::kNodeLane, 5), gradcompSuccess);
  ASSERT_EQ(cudaMemcpyAsync(c.get(), b.get(), n * 4, cudaMemcpyDeviceToDevice, gpu->nodeStream()),
            cudaSuccess);
  ASSERT_EQ(gpu->record(B::kNodeLane, 6), gradcompSuccess);
  ASSERT_EQ(gpu->wait(B::kCommLane, 6), gradcompSuccess);
  ASSERT_EQ(cudaMemcpyAsync(d.get(), c.get(), n * 4, cudaMemcpyDeviceToDevice, gpu->commStream()),
            cudaSuccess);
  ASSERT_EQ(gpu->record(B::kCommLane, B::kPipeEvents - 1), gradcompSuccess);
  ASSERT_EQ(gpu->wait(B::kComputeLane, B::kPipeEvents - 1), gradcompSuccess);
  ASSERT_EQ(gpu->add(d.get(), a.get(), n), gradcompSuccess);
  ASSERT_EQ(gpu->sync(), gradcompSuccess);
  const std::vector<float> got = d.download(n);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], x[i] + x[i]) << i;
}

// The same chain captured from the caller's stream, as a pipelined call is
// captured in a CUDA graph: the node and comm streams join the capture
// through the event slots and are joined back before it ends (an unjoined
// lane fails cudaStreamEndCapture), a slot recorded again after its wait
// orders the second use, and each replay gives the eager result.
TEST_F(BackendGpu, LanesJoinACaptureAndReplay) {
  ASSERT_EQ(gpu->init(), gradcompSuccess);
  const size_t n = 1 << 20;
  const std::vector<float> x = gctest::normal(n, 4);
  DeviceBuffer<float> a(n), b(n), c(n), d(n);
  a.upload(x);
  using B = gc::Backend;
  auto chain = [&]() {
    EXPECT_EQ(gpu->copy(b.get(), a.get(), n * 4), gradcompSuccess);
    EXPECT_EQ(gpu->record(B::kComputeLane, 5), gradcompSuccess);
    EXPECT_EQ(gpu->wait(B::kNodeLane, 5), gradcompSuccess);
    EXPECT_EQ(cudaMemcpyAsync(c.get(), b.get(), n * 4, cudaMemcpyDeviceToDevice, gpu->nodeStream()),
              cudaSuccess);
    EXPECT_EQ(gpu->record(B::kNodeLane, 6), gradcompSuccess);
    EXPECT_EQ(gpu->wait(B::kCommLane, 6), gradcompSuccess);
    EXPECT_EQ(cudaMemcpyAsync(d.get(), c.get(), n * 4, cudaMemcpyDeviceToDevice, gpu->commStream()),
              cudaSuccess);
    EXPECT_EQ(gpu->record(B::kCommLane, 1), gradcompSuccess);
    EXPECT_EQ(gpu->wait(B::kComputeLane, 1), gradcompSuccess);
    EXPECT_EQ(gpu->add(d.get(), a.get(), n), gradcompSuccess);
    // Slot 5 again, after its wait: d + a on the node lane, back by slot 1.
    EXPECT_EQ(gpu->record(B::kComputeLane, 5), gradcompSuccess);
    EXPECT_EQ(gpu->wait(B::kNodeLane, 5), gradcompSuccess);
    EXPECT_EQ(cudaMemcpyAsync(c.get(), d.get(), n * 4, cudaMemcpyDeviceToDevice, gpu->nodeStream()),
              cudaSuccess);
    EXPECT_EQ(gpu->record(B::kNodeLane, 1), gradcompSuccess);
    EXPECT_EQ(gpu->wait(B::kComputeLane, 1), gradcompSuccess);
    EXPECT_EQ(gpu->add(c.get(), a.get(), n), gradcompSuccess);
  };
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  ASSERT_TRUE(gpu->capturing());
  chain();
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_FALSE(gpu->capturing());
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int replay = 0; replay < 3; ++replay) {
    ASSERT_EQ(gpu->zero(b.get(), n * 4), gradcompSuccess);
    ASSERT_EQ(gpu->zero(c.get(), n * 4), gradcompSuccess);
    ASSERT_EQ(gpu->zero(d.get(), n * 4), gradcompSuccess);
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(gpu->sync(), gradcompSuccess);
    const std::vector<float> got = c.download(n);
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(got[i], (x[i] + x[i]) + x[i]) << "replay " << replay << " " << i;
    }
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

// Backend::join, with which CommLane and NodeLane end every pipelined call
// (failed ones too): the caller's later work waits for all the comm lane
// issued, with no event slot (eagerly: while a host function holds the comm
// stream, the caller's stream does not finish); under capture the comm lane,
// forked into it, is joined back (cudaStreamEndCapture succeeds) and the node
// lane, never forked, is left alone (a captured wait on its eager record
// would invalidate the capture); each replay gives the eager result.
TEST_F(BackendGpu, JoinOrdersASideLaneBackIntoTheCallersStream) {
  ASSERT_EQ(gpu->init(), gradcompSuccess);
  const size_t n = 1 << 20;
  const std::vector<float> x = gctest::normal(n, 6);
  DeviceBuffer<float> a(n), b(n);
  a.upload(x);
  using B = gc::Backend;
  // The add kernel once before the comm stream is held: its first launch
  // loads it (lazy loading), which may wait for the held stream.
  ASSERT_EQ(gpu->add(b.get(), a.get(), n), gradcompSuccess);
  ASSERT_EQ(gpu->sync(), gradcompSuccess);
  gctest::StreamGate gate;
  auto chain = [&](bool held) {
    EXPECT_EQ(gpu->record(B::kComputeLane, 0), gradcompSuccess);
    EXPECT_EQ(gpu->wait(B::kCommLane, 0), gradcompSuccess);
    if (held) EXPECT_EQ(gate.hold(gpu->commStream()), cudaSuccess);
    EXPECT_EQ(cudaMemcpyAsync(b.get(), a.get(), n * 4, cudaMemcpyDeviceToDevice, gpu->commStream()),
              cudaSuccess);
    gpu->join(B::kCommLane);
    gpu->join(B::kNodeLane);
    EXPECT_EQ(gpu->add(b.get(), a.get(), n), gradcompSuccess);
  };
  auto expectTwice = [&](const char* what) {
    const std::vector<float> got = b.download(n);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], x[i] + x[i]) << what << " " << i;
  };
  chain(true);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(cudaStreamQuery(stream), cudaErrorNotReady)
      << "the caller's stream ran ahead of the held comm lane";
  gate.open();
  EXPECT_FALSE(gate.expired()) << "a call blocked this thread while the comm lane was held";
  ASSERT_EQ(gpu->sync(), gradcompSuccess);
  expectTwice("eager");

  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  chain(false);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int replay = 0; replay < 2; ++replay) {
    ASSERT_EQ(gpu->zero(b.get(), n * 4), gradcompSuccess);
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(gpu->sync(), gradcompSuccess);
    expectTwice("replay");
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

}  // namespace
