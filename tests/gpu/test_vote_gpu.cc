// The set-up vote's exchange in mapped host memory: what a rank whose device
// has no memory left for the exchange's buffer votes through, so that its
// peers hear it failed instead of waiting for it. One rank's NCCL comm on the
// GPU gathers a vote through it and through device memory: the same bytes.
// (More ranks over NCCL's kernels: the multirank and preload GPU runs use the
// device buffer; this test is the mapped buffer's.)
#include <gtest/gtest.h>
#include <nccl.h>
#include <string.h>

#include <vector>

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

}  // namespace
