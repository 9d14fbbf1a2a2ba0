// Error paths of the NCCL binding, against the stand-in libnccl: an NCCL
// failure comes back as gradcompNcclError carrying NCCL's own sentence, and
// creating a comm without a GPU is a gradcompCudaError carrying CUDA's; the
// collective set-up splits sub-communicators only when every rank's vote
// agrees (the votes stand in for the allgather's result).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gradcomp.h"
#include "plugin/abi.h"
#include "plugin/backends/transport.h"
#include "plugin/checks.h"
#include "plugin/comm.h"
#include "plugin/preload/preload.h"
#include "plugin/topology.h"

namespace {

ncclComm_t fakeComm() {
  return (ncclComm_t)(uintptr_t)0x1000;
}

TEST(NcclErrors, FailedCallIsNcclErrorWithNcclsSentence) {
  setenv("FAKE_NCCL_FAIL", "1", 1);
  auto t = gc::makeNcclTransport(fakeComm(), 0, 4);
  float x[4] = {0};
  EXPECT_EQ(t->passThrough(x, x, 4, ncclFloat32, ncclSum), gradcompNcclError);
  EXPECT_NE(strstr(gradcompGetLastError(), "fake nccl: remote process failed"), nullptr)
      << gradcompGetLastError();
  const void* sp[4] = {x, x, x, x};
  void* rp[4] = {x, x, x, x};
  size_t sb[4] = {4, 4, 4, 4};
  EXPECT_EQ(t->allToAll(sp, sb, rp, sb), gradcompNcclError);
  EXPECT_EQ(t->allGather(x, x, 4), gradcompNcclError);
  EXPECT_EQ(t->sendRecv(x, 4, 1, x, 4, 3), gradcompNcclError);
  EXPECT_EQ(t->reduceScatter(x, x, 1, ncclFloat32, ncclSum), gradcompNcclError);
  EXPECT_NE(strstr(gradcompGetLastError(), "reduceScatter"), nullptr) << gradcompGetLastError();
  unsetenv("FAKE_NCCL_FAIL");
  EXPECT_EQ(t->passThrough(x, x, 4, ncclFloat32, ncclSum), gradcompSuccess);
  EXPECT_EQ(t->reduceScatter(x, x, 1, ncclFloat32, ncclSum), gradcompSuccess);
}

TEST(NcclErrors, CommCreateWithoutGpuIsCudaErrorWithCudasSentence) {
  int n = 0;
  if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) GTEST_SKIP() << "a GPU is present";
  (void)cudaGetLastError();
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  gradcompComm_t c = (gradcompComm_t)(uintptr_t)1;
  EXPECT_EQ(gradcompCommCreate(fakeComm(), &cfg, &c), gradcompCudaError);
  EXPECT_EQ(c, nullptr);
  EXPECT_NE(strstr(gradcompGetLastError(), "CUDA error"), nullptr) << gradcompGetLastError();
  EXPECT_EQ(gradcompCommCreate(nullptr, &cfg, &c), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), "nccl communicator is NULL");
}

// Runs the collective set-up of rank `rank` of `votes.size()` against the
// stand-in libnccl, with `votes` as what the allgather gave; returns the
// result and the stand-in's log of the calls it received.
struct SetupRun {
  gradcompResult_t res;
  std::string error, log;
  int gathers = 0;
  gc::Topology topo;
  bool split = false;
};

// stop: set while the vote is gathered when abortDuringVote (another
// thread's ncclCommAbort of the communicator, which NCCL then frees).
SetupRun runSetup(int rank, const gradcompConfig_t& cfg, std::vector<gc::SetupVote> votes,
                  bool abortDuringVote = false) {
  gc::NcclStop stop;
  char path[] = "/tmp/gc_fake_nccl_XXXXXX";
  const int fd = mkstemp(path);
  close(fd);
  setenv("FAKE_NCCL_LOG", path, 1);
  gradcompComm c;
  c.cfg = cfg;
  c.rank = rank;
  c.nranks = (int)votes.size();
  c.nccl = fakeComm();
  SetupRun run;
  const gc::SetupVote mine = votes[rank];
  run.res = gc::setupNcclHierarchy(
      &c, mine,
      [&](const gc::SetupVote& v, std::vector<gc::SetupVote>* all) {
        ++run.gathers;
        EXPECT_EQ(memcmp(&v, &mine, sizeof(v)), 0);  // what this rank brought
        *all = votes;
        if (abortDuringVote) stop.stop();
        return gradcompSuccess;
      },
      &stop);
  run.error = run.res == gradcompSuccess ? "" : gradcompGetLastError();
  run.topo = c.topo;
  run.split = c.intraNccl != nullptr && c.interNccl != nullptr && c.intra && c.inter;
  gc::destroyHierarchy(&c);
  unsetenv("FAKE_NCCL_LOG");
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  run.log = ss.str();
  unlink(path);
  return run;
}

// What the stand-in libnccl logged (FAKE_NCCL_LOG) while fn ran.
std::string loggedDuring(const std::function<void()>& fn) {
  char path[] = "/tmp/gc_fake_nccl_XXXXXX";
  const int fd = mkstemp(path);
  close(fd);
  setenv("FAKE_NCCL_LOG", path, 1);
  fn();
  unsetenv("FAKE_NCCL_LOG");
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  unlink(path);
  return ss.str();
}

int count(const std::string& log, const std::string& what) {
  int n = 0;
  for (size_t p = log.find(what); p != std::string::npos; p = log.find(what, p + 1)) ++n;
  return n;
}

std::vector<gc::SetupVote> votesOf(int n, const gradcompConfig_t& cfg,
                                   std::vector<uint64_t> hosts = {}) {
  std::vector<gc::SetupVote> v;
  for (int r = 0; r < n; ++r) {
    v.push_back(gc::makeSetupVote(gradcompSuccess, cfg, hosts.empty() ? 1 : hosts[r], nullptr));
  }
  return v;
}

gradcompConfig_t localSizeConfig(int localSize) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.localSize = localSize;
  return cfg;
}

// Rank 1 of 4 with `cfg`, on the stand-in's communicator: its collective
// set-up, with `votes` as what the vote's allgather gave.
gradcompResult_t setUpRank1(gradcompComm* c, const gradcompConfig_t& cfg,
                            const std::vector<gc::SetupVote>& votes) {
  c->cfg = cfg;
  c->rank = 1;
  c->nranks = 4;
  c->nccl = fakeComm();
  return gc::setupNcclHierarchy(c, votes[1],
                                [&](const gc::SetupVote&, std::vector<gc::SetupVote>* all) {
                                  *all = votes;
                                  return gradcompSuccess;
                                });
}

// Agreeing votes: both splits, with the colors and keys of this rank's
// place (rank 1 of 4, nodes of 2: node 0, local rank 1).
TEST(NcclSetup, AgreeingVotesSplitOnce) {
  const gradcompConfig_t cfg = localSizeConfig(2);
  SetupRun run = runSetup(1, cfg, votesOf(4, cfg));
  ASSERT_EQ(run.res, gradcompSuccess) << run.error;
  EXPECT_EQ(run.gathers, 3);  // the set-up vote, then one on each split
  EXPECT_TRUE(run.split);
  EXPECT_EQ(count(run.log, "CommSplit"), 2) << run.log;
  EXPECT_EQ(count(run.log, "color=0 key=1 "), 1) << run.log;  // intra: color node, key rank
  EXPECT_EQ(count(run.log, "color=1 key=0 "), 1) << run.log;  // inter: color local rank, key node
  EXPECT_EQ(count(run.log, "CommDestroy"), 2) << run.log;
}

// gradcompCommAbort's stop aborts both sub-communicators inside one NCCL
// group and destroys neither: ncclCommAbort waits for its communicator's
// queued kernels, which on a GPU can sit behind the other sub-communicator's
// kernel stuck on a dead peer (one rank the node comm's behind the
// inter-node comm's, another the reverse), so one at a time hangs a rank.
TEST(NcclSetup, StopAbortsTheSubCommunicatorsInOneGroup) {
  char path[] = "/tmp/gc_fake_nccl_XXXXXX";
  const int fd = mkstemp(path);
  close(fd);
  setenv("FAKE_NCCL_LOG", path, 1);
  const gradcompConfig_t cfg = localSizeConfig(2);
  gradcompComm c;
  const gradcompResult_t res = setUpRank1(&c, cfg, votesOf(4, cfg));
  char intra[32] = "", inter[32] = "";
  snprintf(intra, sizeof(intra), "%p", (void*)c.intraNccl);
  snprintf(inter, sizeof(inter), "%p", (void*)c.interNccl);
  gc::commStop(&c);
  const bool cleared = c.intraNccl == nullptr && c.interNccl == nullptr;
  gc::destroyHierarchy(&c);
  unsetenv("FAKE_NCCL_LOG");
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  unlink(path);
  const std::string log = ss.str();
  ASSERT_EQ(res, gradcompSuccess) << gradcompGetLastError();
  EXPECT_TRUE(cleared);
  const std::string want = std::string("GroupStart\nCommAbort comm=") + intra +
                           "\nCommAbort comm=" + inter + "\nGroupEnd\n";
  EXPECT_NE(log.find(want), std::string::npos) << log;
  EXPECT_EQ(count(log, "CommAbort"), 2) << log;
  EXPECT_EQ(count(log, "CommDestroy"), 0) << log;
}

// Auto: the hosts in the votes make the nodes (A B A B: nodes of 2 ranks
// that are not contiguous); nodes of different sizes go flat without a split.
TEST(NcclSetup, HostsInVotesMakeTheNodes) {
  const gradcompConfig_t cfg = localSizeConfig(0);
  SetupRun run = runSetup(2, cfg, votesOf(4, cfg, {11, 22, 11, 22}));
  ASSERT_EQ(run.res, gradcompSuccess) << run.error;
  EXPECT_EQ(run.topo.node, 0);
  EXPECT_EQ(run.topo.localRank, 1);
  EXPECT_EQ(count(run.log, "color=0 key=2 "), 1) << run.log;
  EXPECT_EQ(count(run.log, "color=1 key=0 "), 1) << run.log;
  run = runSetup(2, cfg, votesOf(4, cfg, {11, 22, 22, 22}));
  ASSERT_EQ(run.res, gradcompSuccess) << run.error;
  EXPECT_FALSE(run.topo.hier());
  EXPECT_EQ(count(run.log, "CommSplit"), 0) << run.log;
}

// The communicator aborted by another thread while the vote waited (a dead
// peer): the set-up that agreed on a hierarchy splits nothing from it, which
// NCCL frees, and says why; without the abort the same votes split it.
TEST(NcclSetup, AbortDuringTheVoteSplitsNothing) {
  const gradcompConfig_t cfg = localSizeConfig(2);
  SetupRun run = runSetup(1, cfg, votesOf(4, cfg), /*abortDuringVote=*/true);
  EXPECT_EQ(run.res, gradcompInvalidUsage);
  EXPECT_NE(run.error.find("was aborted while gradcomp set it up"), std::string::npos) << run.error;
  EXPECT_EQ(run.gathers, 1);
  EXPECT_FALSE(run.split);
  EXPECT_EQ(count(run.log, "CommSplit"), 0) << run.log;
  run = runSetup(1, cfg, votesOf(4, cfg));
  ASSERT_EQ(run.res, gradcompSuccess) << run.error;
  EXPECT_EQ(count(run.log, "CommSplit"), 2) << run.log;
}

// The set-up exchange of `n` ranks as threads of one process: each
// gather waits for every rank's vote, or for `waitSec` (a rank that never
// joins: the test harness's stand-in for a hang, an error instead of a wait).
class ThreadGather {
 public:
  ThreadGather(int n, double waitSec) : n_(n), waitSec_(waitSec), slots_(n) {}
  gradcompResult_t gather(int rank, const gc::SetupVote& v, std::vector<gc::SetupVote>* all) {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t gen = gen_;
    slots_[rank] = v;
    if (++arrived_ == n_) {
      done_ = slots_;
      arrived_ = 0;
      ++gen_;
      cv_.notify_all();
    } else if (!cv_.wait_for(lock, std::chrono::duration<double>(waitSec_),
                             [&] { return gen_ != gen; })) {
      return gc::setError(gradcompInternalError, "rank %d waited %g s for peers that never joined",
                          rank, waitSec_);
    }
    *all = done_;
    return gradcompSuccess;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const int n_;
  const double waitSec_;
  int arrived_ = 0;
  uint64_t gen_ = 0;
  std::vector<gc::SetupVote> slots_, done_;
};

// One rank's split fails (its node's child, which NCCL could not make):
// every rank returns that rank's error and keeps no sub-communicator. Its
// peers, whose splits succeeded, went on (into the next split, or their
// first exchange, here the harness's gather) and waited for it for good
// before every split was voted on.
TEST(NcclSetup, ASplitFailedOnOneRankFailsEveryRank) {
  const gradcompConfig_t cfg = localSizeConfig(2);
  const std::vector<gc::SetupVote> votes = votesOf(4, cfg);
  // Rank 2: node 1, local rank 0; its intra-node split has color 1, key 2.
  setenv("FAKE_NCCL_SPLIT_FAIL", "1,2", 1);
  ThreadGather exchange(4, 5);
  gradcompResult_t res[4], first[4];
  std::string error[4], firstError[4];
  bool kept[4];
  std::vector<std::thread> ranks;
  for (int r = 0; r < 4; ++r) {
    ranks.emplace_back([&, r] {
      gradcompComm c;
      c.cfg = cfg;
      c.rank = r;
      c.nranks = 4;
      c.nccl = fakeComm();
      const gc::VoteGather gather = [&, r](const gc::SetupVote& v,
                                           std::vector<gc::SetupVote>* all) {
        return exchange.gather(r, v, all);
      };
      res[r] = gc::setupNcclHierarchy(&c, votes[r], gather);
      error[r] = res[r] == gradcompSuccess ? "" : gradcompGetLastError();
      kept[r] = c.intraNccl != nullptr || c.interNccl != nullptr;
      // A rank that set up goes on into its first exchange.
      first[r] = gradcompSuccess;
      if (res[r] == gradcompSuccess) {
        std::vector<gc::SetupVote> all;
        first[r] = gather(votes[r], &all);
        if (first[r] != gradcompSuccess) firstError[r] = gradcompGetLastError();
      }
      gc::destroyHierarchy(&c);
    });
  }
  for (std::thread& t : ranks) t.join();
  unsetenv("FAKE_NCCL_SPLIT_FAIL");
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(first[r], gradcompSuccess) << "rank " << r << ": " << firstError[r];
    EXPECT_EQ(res[r], gradcompNcclError) << "rank " << r << ": " << error[r];
    EXPECT_NE(error[r].find("rank 2 of 4 could not set up"), std::string::npos)
        << "rank " << r << ": " << error[r];
    EXPECT_NE(error[r].find("ncclCommSplit"), std::string::npos)
        << "rank " << r << ": " << error[r];
    EXPECT_FALSE(kept[r]) << "rank " << r;
  }
}

// A peer's split failed (its vote says so): this rank, whose split
// succeeded, aborts the child it made (its peers' may never be finished)
// and splits nothing more.
TEST(NcclSetup, APeersFailedSplitAbortsWhatThisRankSplit) {
  const gradcompConfig_t cfg = localSizeConfig(2);
  const std::vector<gc::SetupVote> votes = votesOf(4, cfg);
  std::vector<gc::SetupVote> failed = votes;
  failed[3].result = gradcompNcclError;
  snprintf(failed[3].why, sizeof(failed[3].why), "ncclCommSplit failed");
  int gathers = 0;
  gradcompComm c;
  c.cfg = cfg;
  c.rank = 1;
  c.nranks = 4;
  c.nccl = fakeComm();
  gradcompResult_t res = gradcompSuccess;
  const std::string log = loggedDuring([&] {
    res = gc::setupNcclHierarchy(&c, votes[1],
                                 [&](const gc::SetupVote& v, std::vector<gc::SetupVote>* all) {
                                   EXPECT_EQ(v.result, gradcompSuccess);
                                   *all = ++gathers == 1 ? votes : failed;
                                   return gradcompSuccess;
                                 });
    gc::destroyHierarchy(&c);
  });
  EXPECT_EQ(res, gradcompNcclError);
  EXPECT_EQ(gathers, 2);
  EXPECT_EQ(count(log, "CommSplit"), 1) << log;
  EXPECT_EQ(count(log, "CommAbort"), 1) << log;
  EXPECT_EQ(count(log, "CommDestroy"), 0) << log;
}

// A peer with another GRADCOMP_LOCAL_SIZE: every rank (the one that differs
// too) returns the same error, and none calls ncclCommSplit.
TEST(NcclSetup, DisagreeingLocalSizeSplitsNothing) {
  std::vector<gc::SetupVote> votes = votesOf(4, localSizeConfig(2));
  votes[3] = gc::makeSetupVote(gradcompSuccess, localSizeConfig(4), 1, nullptr);
  std::string first;
  for (int r = 0; r < 4; ++r) {
    SetupRun run = runSetup(r, localSizeConfig(r == 3 ? 4 : 2), votes);
    EXPECT_EQ(run.res, gradcompInvalidArgument) << r;
    EXPECT_NE(run.error.find("rank 3 has GRADCOMP_LOCAL_SIZE (localSize) = 4 while rank 0 has 2"),
              std::string::npos)
        << run.error;
    if (r == 0) first = run.error;
    EXPECT_EQ(run.error, first);
    EXPECT_EQ(run.gathers, 1);
    EXPECT_FALSE(run.split);
    EXPECT_EQ(count(run.log, "CommSplit"), 0) << run.log;
  }
}

// A rank whose local checks failed (here: the current device is not the
// comm's) still joins the exchange with its vote; every rank returns its
// result and sentence, and none splits.
TEST(NcclSetup, LocalFailureIsEveryRanksError) {
  const gradcompConfig_t cfg = localSizeConfig(2);
  std::vector<gc::SetupVote> votes = votesOf(4, cfg);
  votes[1] =
      gc::makeSetupVote(gradcompInvalidUsage, cfg, 1,
                        "current CUDA device 1 differs from the NCCL communicator's device 0");
  for (int r = 0; r < 4; ++r) {
    SetupRun run = runSetup(r, cfg, votes);
    EXPECT_EQ(run.res, gradcompInvalidUsage) << r;
    EXPECT_EQ(run.error,
              "rank 1 of 4 could not set up its gradcomp comm, so no rank made one: current CUDA "
              "device 1 differs from the NCCL communicator's device 0");
    EXPECT_EQ(run.gathers, 1);
    EXPECT_EQ(count(run.log, "CommSplit"), 0) << run.log;
  }
}

// An exchange this rank could not join: its own failure is the better
// sentence; without one, the exchange's error.
TEST(NcclSetup, FailedExchangeKeepsOwnError) {
  gradcompComm c;
  c.cfg = localSizeConfig(2);
  c.nranks = 4;
  c.nccl = fakeComm();
  const gc::SetupVote bad = gc::makeSetupVote(gradcompCudaError, c.cfg, 1, "CUDA error 100 'x'");
  auto failing = [](const gc::SetupVote&, std::vector<gc::SetupVote>*) {
    return gc::setError(gradcompNcclError, "NCCL error 3 'exchange'");
  };
  EXPECT_EQ(gc::setupNcclHierarchy(&c, bad, failing), gradcompCudaError);
  EXPECT_STREQ(gradcompGetLastError(), "CUDA error 100 'x'");
  const gc::SetupVote ok = gc::makeSetupVote(gradcompSuccess, c.cfg, 1, nullptr);
  EXPECT_EQ(gc::setupNcclHierarchy(&c, ok, failing), gradcompNcclError);
  EXPECT_STREQ(gradcompGetLastError(), "NCCL error 3 'exchange'");
  // A short answer from the exchange is refused, not read past, before any
  // split is made on it.
  auto shortAnswer = [&](const gc::SetupVote& v, std::vector<gc::SetupVote>* all) {
    all->assign(2, v);
    return gradcompSuccess;
  };
  const std::string log = loggedDuring([&] {
    EXPECT_EQ(gc::setupNcclHierarchy(&c, ok, shortAnswer), gradcompInternalError);
    EXPECT_STREQ(gradcompGetLastError(), "set-up exchange gave 2 votes for 4 ranks");
  });
  EXPECT_EQ(count(log, "CommSplit"), 0) << log;
  EXPECT_FALSE(c.intra);
}

// The same at a split's vote: this rank's own failed split (rank 1, node 0:
// its intra-node split has color 0, key 1) says more than the exchange
// that then failed, and it keeps no sub-communicator.
TEST(NcclSetup, FailedSplitVoteKeepsTheSplitsError) {
  gradcompComm c;
  c.cfg = localSizeConfig(2);
  c.rank = 1;
  c.nranks = 4;
  c.nccl = fakeComm();
  const std::vector<gc::SetupVote> votes = votesOf(4, c.cfg);
  int gathers = 0;
  auto splitVoteFails = [&](const gc::SetupVote&, std::vector<gc::SetupVote>* all) {
    if (++gathers == 1) {
      *all = votes;
      return gradcompSuccess;
    }
    return gc::setError(gradcompNcclError, "NCCL error 3 'exchange'");
  };
  setenv("FAKE_NCCL_SPLIT_FAIL", "0,1", 1);
  const gradcompResult_t res = gc::setupNcclHierarchy(&c, votes[1], splitVoteFails);
  const std::string error = gradcompGetLastError();
  unsetenv("FAKE_NCCL_SPLIT_FAIL");
  EXPECT_EQ(res, gradcompNcclError);
  EXPECT_EQ(gathers, 2);
  EXPECT_NE(error.find("ncclCommSplit"), std::string::npos) << error;
  EXPECT_EQ(error.find("'exchange'"), std::string::npos) << error;
  EXPECT_EQ(c.intraNccl, nullptr);
  EXPECT_EQ(c.interNccl, nullptr);
  gc::destroyHierarchy(&c);
}

// A rank whose GRADCOMP_* value the LD_PRELOAD library refused still goes
// through the collective set-up, voting that it failed: its peers wait in
// the exchange for it. Every rank's result is gradcompInvalidArgument with
// the refused sentence. With a GPU the exchange runs (one allgather of the
// votes, rank 0's first); without one it cannot, and the rank's own sentence
// is the result.
TEST(NcclSetup, RefusedConfigurationStillVotes) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  const char* refused = "GRADCOMP_BITS=99 is not an integer in 2..8";
  gradcompComm_t c = (gradcompComm_t)(uintptr_t)1;
  gradcompResult_t res = gradcompSuccess;
  std::string error;
  const std::string log = loggedDuring([&] {
    res = gc::commCreate(fakeComm(), &cfg, refused, &c);
    error = gradcompGetLastError();
  });
  EXPECT_EQ(res, gradcompInvalidArgument);
  EXPECT_EQ(c, nullptr);
  int n = 0;
  const bool gpu = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  (void)cudaGetLastError();
  if (gpu) {
    EXPECT_EQ(count(log, "AllGather"), 1) << log;
    EXPECT_EQ(error, std::string("rank 0 of 4 could not set up its gradcomp comm, so no rank made "
                                 "one: ") +
                         refused);
  } else {
    EXPECT_EQ(error, refused);
  }
  EXPECT_EQ(count(log, "CommSplit"), 0) << log;
}

// So does a rank that passed no place for the comm (comm NULL): before
// 2026-12-05 it returned at once and left its peers in the vote's allgather.
TEST(NcclSetup, NullOutputStillVotes) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  gradcompResult_t res = gradcompSuccess;
  std::string error;
  const std::string log = loggedDuring([&] {
    res = gradcompCommCreate(fakeComm(), &cfg, nullptr);
    error = gradcompGetLastError();
  });
  EXPECT_EQ(res, gradcompInvalidArgument);
  EXPECT_NE(error.find("comm (output) is NULL"), std::string::npos) << error;
  int n = 0;
  const bool gpu = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  (void)cudaGetLastError();
  if (gpu) EXPECT_EQ(count(log, "AllGather"), 1) << log;
  EXPECT_EQ(count(log, "CommSplit"), 0) << log;
}

// NcclNonBlocking sets NCCL_COMM_BLOCKING and unsets it again between tests of
// one process, which NCCL (and the stand-in) see only where the variable is
// not cached: NCCL_NO_CACHE, read once per process, so set before any call.
const bool kBlockingUncached = setenv("NCCL_NO_CACHE", "NCCL_COMM_BLOCKING", 1) == 0;

// A non-blocking communicator (NCCL_COMM_BLOCKING=0 makes every one the
// stand-in hands out non-blocking): its calls answer ncclInProgress, and NCCL
// refuses the next call until the state, polled with ncclCommGetAsyncError,
// has ended (the stand-in ends it at the FAKE_NCCL_POLLS-th read). Every
// transport call waits for that: all succeed, none is refused, each is
// polled to its end and no further.
class NcclNonBlocking : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("NCCL_COMM_BLOCKING", "0", 1);
    setenv("FAKE_NCCL_POLLS", "3", 1);
    setenv("FAKE_NCCL_LOG_POLLS", "1", 1);
  }
  void TearDown() override {
    unsetenv("NCCL_COMM_BLOCKING");
    unsetenv("FAKE_NCCL_POLLS");
    unsetenv("FAKE_NCCL_LOG_POLLS");
    unsetenv("FAKE_NCCL_ASYNC_FAIL");
  }
};

TEST_F(NcclNonBlocking, EveryTransportCallWaitsForItsEnqueue) {
  auto t = gc::makeNcclTransport(fakeComm(), 0, 4);
  float x[4] = {0};
  const void* sp[4] = {x, x, x, x};
  void* rp[4] = {x, x, x, x};
  size_t sb[4] = {4, 4, 4, 4};
  const std::string log = loggedDuring([&] {
    EXPECT_EQ(t->passThrough(x, x, 4, ncclFloat32, ncclSum), gradcompSuccess)
        << gradcompGetLastError();
    EXPECT_EQ(t->allGather(x, x, 4), gradcompSuccess) << gradcompGetLastError();
    EXPECT_EQ(t->allReduceSumFloat(x, x, 1), gradcompSuccess) << gradcompGetLastError();
    EXPECT_EQ(t->reduceScatter(x, x, 1, ncclFloat32, ncclSum), gradcompSuccess)
        << gradcompGetLastError();
    EXPECT_EQ(t->allToAll(sp, sb, rp, sb), gradcompSuccess) << gradcompGetLastError();
    EXPECT_EQ(t->sendRecv(x, 4, 1, x, 4, 3), gradcompSuccess) << gradcompGetLastError();
  });
  EXPECT_EQ(count(log, "refused"), 0) << log;
  EXPECT_EQ(count(log, "GetAsyncError"), 6 * 3) << log;
}

// An error NCCL's thread met while enqueueing (the state ends in it, not in
// ncclSuccess) is the call's gradcompNcclError, with NCCL's sentence.
TEST_F(NcclNonBlocking, AnErrorMetWhileEnqueueingIsTheCallsError) {
  setenv("FAKE_NCCL_ASYNC_FAIL", "1", 1);
  // A communicator of its own: the error sticks to it, as in NCCL.
  const ncclComm_t failing = (ncclComm_t)(uintptr_t)0x1800;
  auto t = gc::makeNcclTransport(failing, 0, 4);
  float x[4] = {0};
  EXPECT_EQ(t->passThrough(x, x, 4, ncclFloat32, ncclSum), gradcompNcclError);
  EXPECT_NE(strstr(gradcompGetLastError(), "fake nccl: remote process failed"), nullptr)
      << gradcompGetLastError();
  // And is the next call's error too, before NCCL takes it.
  std::string error;
  const std::string log = loggedDuring([&] {
    EXPECT_EQ(t->allGather(x, x, 4), gradcompNcclError);
    error = gradcompGetLastError();
  });
  EXPECT_NE(error.find("fake nccl: remote process failed"), std::string::npos) << error;
  EXPECT_EQ(count(log, "AllGather refused: comm=0x1800 has error"), 1) << log;
}

// The program aborting the communicator on another thread while a call
// waits for its enqueue (gradcompCommStop, or the preload's ncclCommAbort,
// aborts the transport first): the wait ends with gradcompInvalidUsage, and
// once abort() has returned nothing polls the communicator NCCL frees next.
TEST_F(NcclNonBlocking, AbortEndsAWaitAndNoPollFollowsIt) {
  setenv("FAKE_NCCL_POLLS", "1000000000", 1);
  char path[] = "/tmp/gc_fake_nccl_XXXXXX";
  const int fd = mkstemp(path);
  close(fd);
  setenv("FAKE_NCCL_LOG", path, 1);
  auto polled = [&] {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return count(ss.str(), "GetAsyncError");
  };
  // A communicator of its own: NCCL never finishes its call here.
  auto t = gc::makeNcclTransport((ncclComm_t)(uintptr_t)0x1900, 0, 4);
  float x[4] = {0};
  gradcompResult_t res = gradcompSuccess;
  std::string error;
  std::thread caller([&] {
    res = t->passThrough(x, x, 4, ncclFloat32, ncclSum);
    error = gradcompGetLastError();
  });
  for (int i = 0; i < 10000 && polled() < 10; ++i) usleep(1000);
  t->abort();
  const int atAbort = polled();
  caller.join();
  const int atEnd = polled();
  unsetenv("FAKE_NCCL_LOG");
  unlink(path);
  EXPECT_GE(atAbort, 10);
  EXPECT_EQ(atEnd, atAbort);
  EXPECT_EQ(res, gradcompInvalidUsage);
  EXPECT_NE(error.find("aborted while NCCL still enqueued"), std::string::npos) << error;
}

// A communicator NCCL's thread is still making (ncclCommInitRankConfig with
// blocking = 0 answered ncclInProgress and nobody polled it yet):
// gradcompCommCreate waits for it before asking its rank, size and device,
// which NCCL refuses until then. Without a GPU the set-up then fails at
// CUDA, as it does for a blocking communicator, not at NCCL.
TEST_F(NcclNonBlocking, CreateWaitsForACommNcclIsStillMaking) {
  int n = 0;
  if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) GTEST_SKIP() << "a GPU is present";
  (void)cudaGetLastError();
  ncclConfig_t ncfg = NCCL_CONFIG_INITIALIZER;
  ncfg.blocking = 0;
  ncclUniqueId id;
  memset(&id, 0, sizeof(id));
  ncclComm_t nb = nullptr;
  ASSERT_EQ(ncclCommInitRankConfig(&nb, 4, id, 0, &ncfg), ncclInProgress);
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  gradcompComm_t c = nullptr;
  gradcompResult_t res = gradcompSuccess;
  std::string error;
  const std::string log = loggedDuring([&] {
    res = gradcompCommCreate(nb, &cfg, &c);
    error = gradcompGetLastError();
  });
  EXPECT_EQ(res, gradcompCudaError) << error;
  EXPECT_EQ(c, nullptr);
  EXPECT_EQ(count(log, "refused"), 0) << log;
  EXPECT_EQ(count(log, "GetAsyncError"), 3) << log;
}

// The hierarchy's splits of a non-blocking communicator: each answers
// ncclSuccess with no child yet (NCCL lets its group's ncclInProgress
// through), which NCCL writes when it has made it; the set-up polls the
// parent to its end (NCCL refuses the next split until then), then reads the
// child.
TEST_F(NcclNonBlocking, SplitsAreWaitedFor) {
  const gradcompConfig_t cfg = localSizeConfig(2);
  SetupRun run = runSetup(1, cfg, votesOf(4, cfg));
  ASSERT_EQ(run.res, gradcompSuccess) << run.error;
  EXPECT_TRUE(run.split);
  EXPECT_EQ(count(run.log, "CommSplit"), 2) << run.log;
  EXPECT_EQ(count(run.log, "refused"), 0) << run.log;
  // Each split: the parent polled to its end (3 reads), then the child (1);
  // at the end each child's state is read once more before its destroy.
  EXPECT_EQ(count(run.log, "GetAsyncError"), 2 * (3 + 1) + 2) << run.log;
  EXPECT_EQ(count(run.log, "CommDestroy"), 2) << run.log;
}

// Rank 1's set-up with `votes` (setUpRank1), one exchange on its flat
// transport, then its end (destroyHierarchy), logged: what the private split
// tests read. `own` is the private split's address as the stand-in logs it
// ("(nil)" when none was made).
struct PrivateRun {
  gradcompResult_t res = gradcompSuccess, passed = gradcompSuccess;
  std::string error, own, log;
};

PrivateRun setUpAndExchange(const gradcompConfig_t& cfg, const std::vector<gc::SetupVote>& votes) {
  PrivateRun r;
  gradcompComm c;
  c.transport = gc::makeNcclTransport(fakeComm(), 1, 4);
  float x[4] = {0};
  char own[32] = "";
  r.log = loggedDuring([&] {
    r.res = setUpRank1(&c, cfg, votes);
    if (r.res != gradcompSuccess) r.error = gradcompGetLastError();
    snprintf(own, sizeof(own), "%p", (void*)c.ownNccl);
    if (r.res == gradcompSuccess) {
      r.passed = c.transport->passThrough(x, x, 4, ncclFloat32, ncclSum);
      if (r.passed != gradcompSuccess) r.error = gradcompGetLastError();
    }
    gc::destroyHierarchy(&c);
  });
  r.own = own;
  EXPECT_NE(r.own, "(nil)") << "no private split";
  return r;
}

// A program communicator some rank knows to be non-blocking (its vote says
// so; the LD_PRELOAD library knows how the program made it): every rank
// first splits a private communicator of the same ranks, its transport runs
// there (nobody else polls it: NCCL's ncclCommGetAsyncError may not run on
// two threads at once, and PyTorch's watchdog polls the program's), and the
// hierarchy splits from it. Flat (one host) and hierarchical (nodes of 2).
TEST_F(NcclNonBlocking, AKnownNonBlockingCommExchangesOnAPrivateSplit) {
  for (int localSize : {0, 2}) {
    SCOPED_TRACE(localSize);
    const gradcompConfig_t cfg = localSizeConfig(localSize);
    std::vector<gc::SetupVote> votes = votesOf(4, cfg);
    votes[3].wantsPrivate = 1;  // another rank's: this one (1) did not know
    const PrivateRun r = setUpAndExchange(cfg, votes);
    ASSERT_EQ(r.res, gradcompSuccess) << r.error;
    EXPECT_EQ(r.passed, gradcompSuccess) << r.error;
    EXPECT_NE(r.log.find("CommSplit parent=0x1000 color=0 key=1 blocking=-1 comm=" + r.own),
              std::string::npos)
        << r.log;
    EXPECT_EQ(count(r.log, "CommSplit"), localSize == 2 ? 3 : 1) << r.log;
    if (localSize == 2) EXPECT_EQ(count(r.log, "CommSplit parent=" + r.own), 2) << r.log;
    EXPECT_EQ(count(r.log, "AllReduce"), 1) << r.log;
    EXPECT_NE(r.log.find("comm=" + r.own + " stream"), std::string::npos) << r.log;
    EXPECT_EQ(count(r.log, "CommDestroy comm=" + r.own), 1) << r.log;
    EXPECT_EQ(count(r.log, "refused"), 0) << r.log;
  }
  // No vote says so: no private split (a blocking comm's set-up is unchanged).
  const gradcompConfig_t cfg = localSizeConfig(0);
  SetupRun run = runSetup(1, cfg, votesOf(4, cfg));
  ASSERT_EQ(run.res, gradcompSuccess) << run.error;
  EXPECT_EQ(count(run.log, "CommSplit"), 0) << run.log;
}

// The C API's ask for the same split (privateComm, GRADCOMP_PRIVATE_COMM=1):
// a blocking communicator whose rank asks (any one rank) exchanges on a
// private split, every rank alike; the vote carries the ask, and a rank that
// failed its own set-up asks nothing.
TEST(NcclSetup, PrivateCommSplitsABlockingComm) {
  gradcompConfig_t cfg = localSizeConfig(0), asking = cfg;
  asking.privateComm = 1;
  EXPECT_EQ(gc::makeSetupVote(gradcompSuccess, asking, 1, nullptr).wantsPrivate, 1);
  EXPECT_EQ(gc::makeSetupVote(gradcompSuccess, cfg, 1, nullptr).wantsPrivate, 0);
  EXPECT_EQ(gc::makeSetupVote(gradcompInvalidArgument, asking, 1, "bad").wantsPrivate, 0);
  for (int asker : {1, 2}) {  // this rank, or another one
    SCOPED_TRACE(asker);
    std::vector<gc::SetupVote> votes = votesOf(4, cfg);
    votes[asker] = gc::makeSetupVote(gradcompSuccess, asking, 1, nullptr);
    const PrivateRun r = setUpAndExchange(asker == 1 ? asking : cfg, votes);
    ASSERT_EQ(r.res, gradcompSuccess) << r.error;
    EXPECT_EQ(r.passed, gradcompSuccess) << r.error;
    EXPECT_EQ(count(r.log, "CommSplit parent=0x1000 color=0 key=1"), 1) << r.log;
    EXPECT_NE(r.log.find("comm=" + r.own + " stream"), std::string::npos) << r.log;
    EXPECT_EQ(count(r.log, "CommDestroy comm=" + r.own), 1) << r.log;
  }
  // A 0.5 caller's 160-byte config ends before privateComm: whatever its
  // padding holds, the copy the comm works on asks for no split.
  gradcompConfig_t older = asking;
  older.structSize = offsetof(gradcompConfig_t, reserved1) + sizeof(int);
  ASSERT_EQ(older.structSize, 160u);
  gradcompConfig_t whole;
  ASSERT_EQ(gc::configFromCaller(&older, &whole), gradcompSuccess) << gradcompGetLastError();
  EXPECT_EQ(whole.privateComm, 0);
  EXPECT_EQ(gc::makeSetupVote(gradcompSuccess, whole, 1, nullptr).wantsPrivate, 0);
}

// A sub-communicator holding an error (an exchange on it met one) is aborted
// at the end, not destroyed: NCCL's destroy would return the error without
// freeing it and leave the thread inside a group of its own.
TEST_F(NcclNonBlocking, ASubCommunicatorHoldingAnErrorIsAbortedNotDestroyed) {
  const gradcompConfig_t cfg = localSizeConfig(2);
  gradcompComm c;
  ASSERT_EQ(setUpRank1(&c, cfg, votesOf(4, cfg)), gradcompSuccess) << gradcompGetLastError();
  char intra[32] = "", inter[32] = "";
  snprintf(intra, sizeof(intra), "%p", (void*)c.intraNccl);
  snprintf(inter, sizeof(inter), "%p", (void*)c.interNccl);
  float x[4] = {0};
  setenv("FAKE_NCCL_ASYNC_FAIL", "1", 1);
  EXPECT_EQ(c.intra->passThrough(x, x, 4, ncclFloat32, ncclSum), gradcompNcclError);
  unsetenv("FAKE_NCCL_ASYNC_FAIL");
  const std::string log = loggedDuring([&] { gc::destroyHierarchy(&c); });
  EXPECT_EQ(count(log, std::string("CommAbort comm=") + intra), 1) << log;
  EXPECT_EQ(count(log, std::string("CommDestroy comm=") + inter), 1) << log;
  EXPECT_EQ(count(log, "CommDestroy"), 1) << log;
}

// GRADCOMP_GROUP=fuse keys a fused set's residual as unfused calls are keyed,
// by their receive buffers: two groups of the same shape (the layers of a
// model) keep their own residuals, and a repeated group finds its own again.
TEST(PreloadFusion, EachSetKeepsItsOwnState) {
  using gc::preload::Deferred;
  using gc::preload::fusedStateKey;
  float a[8], b[8], c[8], d[8];
  auto call = [](float* p, size_t n, ncclRedOp_t op) {
    return Deferred{p, p, n, ncclFloat32, op, fakeComm(), nullptr};
  };
  const Deferred a4 = call(a, 4, ncclSum), b8 = call(b, 8, ncclSum);
  const Deferred c4 = call(c, 4, ncclSum), d8 = call(d, 8, ncclSum);
  const Deferred a4again = call(a, 4, ncclSum), b8again = call(b, 8, ncclSum);
  const Deferred a4avg = call(a, 4, ncclAvg);
  const uint64_t ab = fusedStateKey({&a4, &b8});
  EXPECT_EQ(ab, fusedStateKey({&a4again, &b8again}));
  EXPECT_NE(ab, fusedStateKey({&c4, &d8}));
  EXPECT_NE(ab, fusedStateKey({&b8, &a4}));
  EXPECT_NE(ab, fusedStateKey({&a4avg, &b8}));
}

// A fused set's key derives from its members' addresses, and the library
// never warns about a keyed call's new key: the fused path warns once per
// communicator about a key new after its first steps (gradients that moved,
// each time a new residual), as the library does for unkeyed buffers. Sets
// that keep their buffers, a first step grouped otherwise (DDP-like
// regrouping), and many sets a step are not warned about.
TEST(PreloadFusion, SetsWhoseBuffersMoveAreWarnedAboutOnce) {
  using gc::preload::fusedKeyIsLate;
  using gc::preload::FusedKeyWatch;
  struct Case {
    const char* name;
    int sets;  // fused sets a step
    int steps;
    std::function<uint64_t(int, int)> key;  // (step, set)
    int warnedAt;                           // the set (0-based) warned about; -1: none
  };
  auto fresh = [](int step, int set) { return (uint64_t)(1000 + step * 64 + set); };
  const Case cases[] = {
      {"one set, new buffers every step", 1, 400, fresh, 256},
      {"two sets, new buffers every step", 2, 400, fresh, 256},
      // The allocator hands step 1's blocks back once, at step 2.
      {"one set, new buffers every step but once back", 1, 100,
       [&](int step, int set) { return fresh(step == 2 ? 1 : step, set); }, 12},
      {"one set, buffers moving every tenth step", 1, 100,
       [&](int step, int set) { return fresh(step / 10 * 10, set); }, 10},
      {"two sets, buffers kept", 2, 400, [](int, int set) { return (uint64_t)set; }, -1},
      {"regrouped after the first step", 3, 400,
       [](int step, int set) { return (uint64_t)(step == 0 ? 100 + set : set); }, -1},
      {"200 sets a step, buffers kept", 200, 10, [](int, int set) { return (uint64_t)set; }, -1},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    FusedKeyWatch w;
    std::vector<int> warned;
    int at = 0;
    for (int step = 0; step < k.steps; ++step) {
      for (int set = 0; set < k.sets; ++set, ++at) {
        if (fusedKeyIsLate(w, k.key(step, set))) warned.push_back(at);
      }
    }
    EXPECT_EQ(warned, k.warnedAt < 0 ? std::vector<int>{} : std::vector<int>{k.warnedAt});
  }
}

// GRADCOMP_GROUP=fuse keeps a communicator's calls in program order: a call
// that is not fused runs after the sets pending before it; the allreduces
// around another communicator's call are still fused. The sets never depend
// on buffer addresses (they differ between ranks, and every rank must make
// the same NCCL calls): an in-place chain is still one set.
TEST(PreloadFusion, SetsKeepTheProgramsOrder) {
  using gc::preload::Collective;
  using gc::preload::Deferred;
  using gc::preload::planDeferred;
  using Steps = std::vector<std::vector<size_t>>;
  float a[8], b[8], c[8];
  const ncclComm_t comm = fakeComm(), other = (ncclComm_t)((uintptr_t)comm + 64);
  auto ar = [&](float* s, float* r, ncclComm_t cm = nullptr) {
    return Deferred{s, r, 8, ncclFloat32, ncclSum, cm ? cm : comm, nullptr};
  };
  Deferred rs = ar(a, b);
  rs.coll = Collective::ReduceScatter;
  // Independent allreduces: one set.
  EXPECT_EQ(planDeferred({ar(a, a), ar(b, b), ar(c, c)}, {true, true, true}), (Steps{{0, 1, 2}}));
  // Addresses decide nothing: a buffer reduced twice in place, a chain.
  EXPECT_EQ(planDeferred({ar(a, a), ar(a, a)}, {true, true}), (Steps{{0, 1}}));
  EXPECT_EQ(planDeferred({ar(a, b), ar(b, c)}, {true, true}), (Steps{{0, 1}}));
  // Another communicator's allreduce is its own set.
  EXPECT_EQ(planDeferred({ar(a, a, other), ar(a, a)}, {true, true}), (Steps{{0}, {1}}));
  // A call that is not fusable (a compressing communicator's call passed
  // through) ends its communicator's pending set too.
  EXPECT_EQ(planDeferred({ar(a, a), ar(b, b), ar(c, c)}, {true, false, true}),
            (Steps{{0}, {1}, {2}}));
  // A reduce-scatter (not fused) after an allreduce of its communicator runs
  // after that set; a later allreduce starts a new one.
  EXPECT_EQ(planDeferred({ar(a, a), rs, ar(c, c)}, {true, false, true}), (Steps{{0}, {1}, {2}}));
  // Another communicator's call does not end the set.
  Deferred rsOther = rs;
  rsOther.comm = other;
  EXPECT_EQ(planDeferred({ar(a, a), rsOther, ar(c, c)}, {true, false, true}), (Steps{{1}, {0, 2}}));
}

// GRADCOMP_GROUP=fuse: whether a fused set votes before it grows the fusion
// buffer is decided on the size every rank agreed at the last vote (the least
// of their buffers), never on a rank's own buffer. Two ranks, rank 1 unable
// to allocate 300 bytes or more: every set makes the same step on both (a
// vote, or a run), so neither waits in a collective the other never makes;
// a set that rank 1 cannot hold passes to NCCL on both and votes again next
// time. Deciding on each rank's own buffer (as until 2026-12-06) made rank 1
// grow alone while rank 0 ran the fused call.
TEST(PreloadFusion, GrowthIsDecidedAlikeOnEveryRank) {
  using gc::preload::FusionStep;
  using gc::preload::fusionStep;
  struct Rank {
    size_t buffer = 0, agreed = 0, cannot = SIZE_MAX;
  } ranks[2];
  ranks[1].cannot = 300;
  // Set sizes, and whether the set is compressed (true) or passed to NCCL.
  const std::vector<std::pair<size_t, bool>> sets = {
      {100, true}, {100, true}, {200, true}, {400, false}, {400, false}, {150, true}, {250, true}};
  for (const auto& set : sets) {
    const size_t bytes = set.first;
    const FusionStep step = fusionStep(bytes, ranks[0].agreed, false);
    EXPECT_EQ(fusionStep(bytes, ranks[1].agreed, false), step) << bytes;
    if (step == FusionStep::Vote) {
      // As runFusedSet: grow where the buffer is short, then vote the least.
      size_t least = SIZE_MAX;
      for (Rank& r : ranks) {
        if (r.buffer < bytes) r.buffer = bytes < r.cannot ? bytes : 0;
        least = std::min(least, r.buffer);
      }
      for (Rank& r : ranks) r.agreed = least;
    }
    for (const Rank& r : ranks) {
      EXPECT_LE(r.agreed, r.buffer) << bytes;
      // A set runs on every rank or on none, and never on a short buffer.
      if (step == FusionStep::Run) EXPECT_LE(bytes, r.buffer) << bytes;
      EXPECT_EQ(step == FusionStep::Run || bytes <= r.agreed, set.second) << bytes;
    }
  }
  EXPECT_EQ(fusionStep(400, 0, true), FusionStep::Pass);
  // A set of exactly the agreed size fits: it runs, captured or not, with no
  // vote (a vote is an allreduce and a host wait, each step); one byte more
  // votes, or passes under capture.
  EXPECT_EQ(fusionStep(400, 400, false), FusionStep::Run);
  EXPECT_EQ(fusionStep(400, 400, true), FusionStep::Run);
  EXPECT_EQ(fusionStep(401, 400, false), FusionStep::Vote);
  EXPECT_EQ(fusionStep(401, 400, true), FusionStep::Pass);
}

}  // namespace
