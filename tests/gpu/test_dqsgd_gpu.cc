// DQ-SGD on the CUDA backend: the statistics kernels + asynchronous copy +
// event give the choice the host rule gives on the same data, for every
// input type; under CUDA-graph capture the DQ-SGD modes and the Elias
// allgather refuse with a clear error before enqueueing anything.
#include <gtest/gtest.h>
#include <math.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "gradcomp.h"
#include "kernels/common_math.cuh"
#include "kernels/grad_stats.h"
#include "plugin/algorithms/algorithms.h"
#include "plugin/codecs/bits_policy.h"
#include "plugin/comm.h"
#include "tests/common/grad_stats_cases.h"
#include "tests/common/test_util.h"
#include "tests/gpu/gpu_util.h"
#include "tests/gpu/mirror_transport.h"

namespace {

using gctest::DeviceBuffer;

class DqsgdGpu : public gctest::GpuTest {
 protected:
  void makeComm(gradcompBitsMode_t mode) {
    gradcompConfigInit(&comm.cfg);
    comm.cfg.autoTune = 0;  // these check compression: auto must not pass calls to NCCL
    comm.cfg.bitsMode = mode;
    comm.cfg.bucketSize = 512;
    comm.backend = gc::makeCudaBackend();
    ASSERT_EQ(comm.backend->init(), gradcompSuccess);
    comm.backend->setStream(stream);
  }
  gradcompComm comm;
};

std::vector<uint16_t> narrow(const std::vector<float>& x, gc::DType t) {
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    h[i] = t == gc::DType::F16 ? gc::floatToHalf(x[i]) : gc::floatToBf16(x[i]);
  }
  return h;
}

TEST_F(DqsgdGpu, DeviceStatisticsGiveTheHostRulesChoice) {
  makeComm(gradcompBitsDynamic);
  const size_t n = 300001;
  for (gc::DType t : {gc::DType::F32, gc::DType::F16, gc::DType::BF16}) {
    for (int spiky = 0; spiky <= 1; ++spiky) {
      SCOPED_TRACE(testing::Message() << "type=" << (int)t << " spiky=" << spiky);
      std::vector<float> x = gctest::normal(n, 3 + spiky);
      if (spiky) {
        for (size_t i = 5; i < n; i += 512) x[i] = 80.0f;
      }
      std::vector<uint16_t> h = narrow(x, t);
      const void* host = t == gc::DType::F32 ? (const void*)x.data() : (const void*)h.data();
      const size_t bytes = n * gc::dtypeBytes(t);
      DeviceBuffer<uint8_t> dx(bytes);
      ASSERT_EQ(cudaMemcpy(dx.get(), host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
      gctest::settle();

      gc::BufferState state;
      state.count = n;
      int bits = 0;
      ASSERT_EQ(gc::chooseBits(comm, state, &bits), gradcompSuccess) << gradcompGetLastError();
      EXPECT_EQ(bits, comm.cfg.bits) << "no statistics yet: the configured bits";
      ASSERT_EQ(gc::recordReducedStats(comm, state, dx.get(), n, t), gradcompSuccess)
          << gradcompGetLastError();
      ASSERT_EQ(gc::chooseBits(comm, state, &bits), gradcompSuccess) << gradcompGetLastError();
      const gc::GradStats st = gc::hostGradStats(host, t, n, comm.cfg.bucketSize);
      EXPECT_EQ(bits,
                gc::dynamicBits(st, comm.cfg.varianceTarget, comm.cfg.bitsMin, comm.cfg.bitsMax));
      if (spiky) EXPECT_GE(bits, 6);
    }
  }
}

// The statistics kernels against gc::hostGradStats, the same sums in the same
// order (kernels/grad_stats.h), bit for bit: every rank's choice depends on
// the data alone, and the CPU backend's on the same bits. The sizes of
// tests/common/grad_stats_cases.h, every type, and Inf/NaN elements.
TEST_F(DqsgdGpu, DeviceStatisticsBitExactWithTheHost) {
  DeviceBuffer<uint8_t> scratch(gc::cuda::gradStatsScratchBytes() + sizeof(gc::GradStats));
  gc::GradStats* result =
      reinterpret_cast<gc::GradStats*>(scratch.get(gc::cuda::gradStatsScratchBytes()));
  for (const gctest::GradStatsCase& cs : gctest::kGradStatsCases) {
    for (gc::DType t : {gc::DType::F32, gc::DType::F16, gc::DType::BF16}) {
      for (int special = 0; special <= 2; ++special) {
        SCOPED_TRACE(testing::Message() << "n=" << cs.n << " bucket=" << cs.bucket
                                        << " type=" << (int)t << " special=" << special);
        std::vector<float> x = gctest::normal(cs.n, cs.n + (size_t)t, 3.0f);
        if (special >= 1) x[cs.n / 2] = -INFINITY;
        if (special == 2) x[cs.n - 1] = NAN;
        std::vector<uint16_t> h = narrow(x, t);
        const void* host = t == gc::DType::F32 ? (const void*)x.data() : (const void*)h.data();
        const size_t bytes = cs.n * gc::dtypeBytes(t);
        DeviceBuffer<uint8_t> dx(bytes);
        ASSERT_EQ(cudaMemcpy(dx.get(), host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
        gctest::settle();
        gc::GradStats got[2];
        for (gc::GradStats& st : got) {
          ASSERT_EQ(
              gc::cuda::gradStats(dx.get(), t, cs.n, cs.bucket, scratch.get(), result, stream),
              cudaSuccess);
          ASSERT_EQ(cudaMemcpyAsync(&st, result, sizeof(st), cudaMemcpyDeviceToHost, stream),
                    cudaSuccess);
          ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
        }
        const gc::GradStats want = gc::hostGradStats(host, t, cs.n, cs.bucket);
        // A NaN's payload is the hardware's own; NaN-ness is what must agree.
        auto same = [](double a, double b) {
          return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof(a)) == 0;
        };
        EXPECT_TRUE(same(got[0].sumLenMaxSq, want.sumLenMaxSq) && same(got[0].sumSq, want.sumSq))
            << got[0].sumLenMaxSq << " " << got[0].sumSq << " want " << want.sumLenMaxSq << " "
            << want.sumSq;
        EXPECT_EQ(memcmp(&got[1], &got[0], sizeof(want)), 0) << "run to run";
      }
    }
  }
}

// A reduce-scatter's statistics are every rank's block, gathered and summed
// in rank order. A checkpoint taken while they are in flight
// (gradcompCommStateSize and SaveState settle them) must hold that sum, the
// one the next call's choice uses, not rank 0's block alone.
TEST_F(DqsgdGpu, CheckpointSettlesGatheredStatisticsAsTheNextCallDoes) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.autoTune = 0;
  cfg.bitsMode = gradcompBitsDynamic;
  cfg.bucketSize = 512;
  const int ranks = 4;
  gradcompComm* c = gctest::mirrorComm(cfg, true, ranks, 16, stream, false);
  const size_t n = 100003;
  const std::vector<float> x = gctest::normal(n, 11, 3.0f);
  DeviceBuffer<float> dx(n);
  ASSERT_EQ(cudaMemcpy(dx.get(), x.data(), n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  gctest::settle();
  // The mirror gives every rank rank 0's block.
  const gc::GradStats mine = gc::hostGradStats(x.data(), gc::DType::F32, n, cfg.bucketSize);
  gc::GradStats want{0.0, 0.0};
  for (int i = 0; i < ranks; ++i) {
    want.sumLenMaxSq += mine.sumLenMaxSq;
    want.sumSq += mine.sumSq;
  }

  gc::BufferState state;
  state.count = n * ranks;
  int bits = 0;
  ASSERT_EQ(gc::chooseBits(*c, state, &bits), gradcompSuccess) << gradcompGetLastError();
  ASSERT_EQ(gc::recordGatheredStats(*c, state, dx.get(), n, gc::DType::F32), gradcompSuccess)
      << gradcompGetLastError();
  bool present = false;
  gc::BitsHistoryRecord saved;
  ASSERT_EQ(gc::exportBitsHistory(state, &present, &saved), gradcompSuccess)
      << gradcompGetLastError();
  EXPECT_TRUE(present);
  EXPECT_EQ(saved.haveStats, 1);
  EXPECT_EQ(saved.stats.sumLenMaxSq, want.sumLenMaxSq);
  EXPECT_EQ(saved.stats.sumSq, want.sumSq);
  ASSERT_EQ(gc::chooseBits(*c, state, &bits), gradcompSuccess) << gradcompGetLastError();
  EXPECT_EQ(bits, gc::dynamicBits(want, cfg.varianceTarget, cfg.bitsMin, cfg.bitsMax));
  state.bitsHistory.reset();
  gradcompCommDestroy(c);
}

TEST_F(DqsgdGpu, CaptureIsRefusedForDqsgdAndElias) {
  makeComm(gradcompBitsBudget);
  gc::BufferState state;
  state.count = 4096;
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  int bits = 0;
  const gradcompResult_t res = gc::chooseBits(comm, state, &bits);
  const std::string msg = gradcompGetLastError();

  comm.cfg.bitsMode = gradcompBitsFixed;
  comm.cfg.elias = 1;
  gc::CallArgs args{&comm, nullptr, nullptr, 4096, gc::DType::F32, false, &state, 4, 0};
  const gradcompResult_t eliasRes = gc::eliasAlgorithm().run(args, nullptr);
  const std::string eliasMsg = gradcompGetLastError();
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  if (graph) cudaGraphDestroy(graph);

  EXPECT_EQ(res, gradcompInvalidUsage);
  EXPECT_NE(msg.find("GRADCOMP_BITS_MODE=budget"), std::string::npos) << msg;
  EXPECT_EQ(eliasRes, gradcompInvalidUsage);
  EXPECT_NE(eliasMsg.find("GRADCOMP_ELIAS=1"), std::string::npos) << eliasMsg;
}

}  // namespace
