// The set-up vote's exchange in mapped host memory: what a rank whose device
// has no memory left for the exchange's buffer votes through, so that its
// peers hear it failed instead of waiting for it. One rank's NCCL comm on the
// GPU gathers a vote through it and through device memory: the same bytes.
// (More ranks over NCCL's kernels: the multirank and preload GPU runs use the
// device buffer; this test is the mapped buffer's.)
#include <gtest/gtest.h>
#include <nccl.h>
#include <string.h>

#include <chrono>
#include <thread>
#include <vector>

#include "backends/cuda/device_ptr.h"
#include "gradcomp.h"
#include "plugin/topology.h"
#include "tests/gpu/gpu_util.h"

namespace {

class VoteGpu : public gctest::GpuTest {};

TEST_F(VoteGpu, MappedHostBufferCarriesTheVote) {
  int dev = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ncclComm_t nccl = nullptr;
  ASSERT_EQ(ncclCommInitAll(&nccl, 1, &dev), ncclSuccess);
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.bits = 5;
  const gc::SetupVote mine =
      gc::makeSetupVote(gradcompInvalidArgument, cfg, 0x0123456789abcdefull, "out of memory");
  for (const bool host : {true, false}) {
    std::vector<gc::SetupVote> votes;
    const gc::VoteGather gather = gc::ncclVoteGather(nccl, 0, 1, dev, nullptr, host);
    ASSERT_EQ(gather(mine, &votes), gradcompSuccess) << gradcompGetLastError();
    ASSERT_EQ(votes.size(), 1u);
    EXPECT_EQ(memcmp(&votes[0], &mine, sizeof(mine)), 0)
        << (host ? "mapped host" : "device") << " buffer: the vote came back changed";
    EXPECT_EQ(gc::agreeOnSetup(votes), gradcompInvalidArgument)
        << "the failed vote is the decision";
  }
  EXPECT_EQ(ncclCommDestroy(nccl), ncclSuccess);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// The preload's eligibility comparison runs at every communicator's first
// float Sum/Avg call: its buffer, made in stream order, carries the bytes and
// is freed without waiting for the device. Another stream held (a
// pipeline-parallel send whose receive the peer posts only after this call
// returns) must not stop the buffer's exchange nor its release; a cudaFree
// would wait for it until the gate's deadline (expired()).
TEST_F(VoteGpu, StreamOrderedBufferWaitsForNoOtherStream) {
  cudaStream_t s = nullptr, other = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking), cudaSuccess);
  {
    gctest::StreamGate gate;  // opened and drained at the end, whatever failed
    ASSERT_EQ(gate.hold(other, 10), cudaSuccess);
    const uint64_t in[6] = {1, 2, 3, ~1ull, ~2ull, ~3ull};
    uint64_t out[6] = {};
    {
      gc::ExchangeBuffer buf;
      ASSERT_EQ(buf.allocOnStream(sizeof(in), s), cudaSuccess);
      ASSERT_NE(buf.get(), nullptr);
      ASSERT_EQ(cudaMemcpyAsync(buf.get(), in, sizeof(in), cudaMemcpyHostToDevice, s), cudaSuccess);
      ASSERT_EQ(cudaMemcpyAsync(out, buf.get(), sizeof(out), cudaMemcpyDeviceToHost, s),
                cudaSuccess);
      ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    }  // released here, in stream order on s
    EXPECT_EQ(memcmp(in, out, sizeof(in)), 0) << "the stream-ordered buffer changed the bytes";
    EXPECT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    EXPECT_EQ(cudaStreamQuery(other), cudaErrorNotReady)
        << "the held stream ran on: the test proves nothing";
    gate.open();
    EXPECT_FALSE(gate.expired())
        << "the buffer's allocation or release waited for another stream (a device-wide sync)";
  }
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(other), cudaSuccess);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

}  // namespace
