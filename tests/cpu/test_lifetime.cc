// Long lives: comms made and freed many times (elastic restarts, test suites,
// processes that rebuild their models) leave nothing of the process behind,
// however each one ended (destroyed, aborted, stopped then aborted, or a
// creation refused or timed out): no file descriptor or thread outlives its
// comm. (The library makes no /dev/shm entries; that directory is the
// machine's, which tests running beside this one write to, so it is not
// counted here.) A comm's buffer states are the one table that grows with
// use, by design: one per distinct (buffer, count, type) or key, until a reset
// or the comm's end frees them all (gradcomp.h, docs/reliability.md).
#include <dirent.h>
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "gradcomp.h"
#include "plugin/comm.h"
#include "tests/common/cpu_world.h"
#include "tests/common/loopback.h"

namespace {

// A rank's call that failed ends its thread's calls with that result.
#define LIFETIME_CHECK(call)                  \
  do {                                        \
    const gradcompResult_t res_ = (call);     \
    if (res_ != gradcompSuccess) return res_; \
  } while (0)

// Entries of a /proc or /dev directory; -1 where it cannot be read.
int entries(const char* dir) {
  DIR* d = opendir(dir);
  if (d == nullptr) return -1;
  int n = 0;
  while (const dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

// What a comm may hold of the process while it lives and must give back.
struct Held {
  int fds = entries("/proc/self/fd");
  int threads = entries("/proc/self/task");
};

void expectSame(const Held& before, const Held& after, const char* what) {
  EXPECT_EQ(after.fds, before.fds) << what << ": open file descriptors";
  EXPECT_EQ(after.threads, before.threads) << what << ": threads";
}

gradcompConfig_t baseConfig() {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 1;
  cfg.autoTune = 0;
  return cfg;
}

// One round of an in-process world: made, three steps of both collectives,
// then ended as `end` says (0 destroy, 1 abort, 2 stop then abort).
void cpuRound(const gradcompConfig_t& cfg, int end, bool retune) {
  constexpr int kRanks = 4;
  constexpr size_t kCount = 4096;
  std::vector<gradcompComm_t> comms(kRanks);
  ASSERT_EQ(gradcompCommCreateCpu(kRanks, &cfg, comms.data()), gradcompSuccess)
      << gradcompGetLastError();
  const std::vector<float> send(kCount * kRanks, 1.0f);
  const auto res = gctest::runOnThreads(kRanks, [&](int r) {
    std::vector<float> out(kCount * kRanks);
    for (int step = 0; step < 3; ++step) {
      LIFETIME_CHECK(gradcompAllReduce(send.data(), out.data(), kCount, ncclFloat32, ncclSum,
                                       comms[r], nullptr));
      LIFETIME_CHECK(gradcompReduceScatter(send.data(), out.data(), kCount / kRanks, ncclFloat32,
                                           ncclSum, comms[r], nullptr));
    }
    return retune ? gradcompCommRetune(comms[r], nullptr) : gradcompSuccess;
  });
  for (int r = 0; r < kRanks; ++r) EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r;
  for (gradcompComm_t c : comms) {
    if (end == 0) {
      EXPECT_EQ(gradcompCommDestroy(c), gradcompSuccess);
    } else {
      if (end == 2) EXPECT_EQ(gradcompCommStop(c), gradcompSuccess);
      EXPECT_EQ(gradcompCommAbort(c), gradcompSuccess);
    }
  }
}

TEST(Lifetime, InProcessWorldsGiveBackEverythingTheyHeld) {
  gradcompConfig_t flat = baseConfig(), hier = baseConfig(), dgc = baseConfig(),
                   tuned = baseConfig(), refused = baseConfig();
  hier.localSize = 2;
  dgc.method = gradcompMethodDgc;
  dgc.momentumCorrection = 1;
  tuned.autoTune = 1;
  refused.bits = 99;
  // Counted after a first world: what a process sets up once is not a comm's.
  cpuRound(flat, 0, false);
  const Held before;
  for (int round = 0; round < 50; ++round) {
    cpuRound(flat, round % 3, false);
    cpuRound(hier, (round + 1) % 3, false);
    cpuRound(dgc, (round + 2) % 3, false);
    if (round % 10 == 0) cpuRound(tuned, 0, true);
    std::vector<gradcompComm_t> comms(4);
    EXPECT_EQ(gradcompCommCreateCpu(4, &refused, comms.data()), gradcompInvalidArgument);
    if (HasFailure()) return;
  }
  expectSame(before, Held(), "after 155 in-process worlds and 50 refused ones");
}

// n socket comms on loopback made on one thread per rank, cfgs[r] each;
// the results by rank (the comms that were made are in `comms`).
std::vector<gradcompResult_t> socketWorld(int n, const std::string& root,
                                          const std::vector<gradcompConfig_t>& cfgs,
                                          std::vector<gradcompComm_t>* comms) {
  comms->assign(n, nullptr);
  return gctest::runOnThreads(n, [&](int r) {
    return gradcompCommCreateSocket(n, r, root.c_str(), &cfgs[r], &(*comms)[r]);
  });
}

TEST(Lifetime, SocketWorldsGiveBackEverythingTheyHeld) {
  gradcompConfig_t cfg = baseConfig();
  cfg.cpuTimeoutSec = 30;
  constexpr size_t kCount = 4096;
  const std::vector<float> send(kCount, 1.0f);
  Held before;
  // Round 0 is not counted: what a process sets up once is not a comm's.
  for (int round = 0; round <= 12; ++round) {
    if (round == 1) before = Held();
    std::vector<gradcompComm_t> comms;
    const auto res = socketWorld(3, gctest::loopbackRoot(), {cfg, cfg, cfg}, &comms);
    for (int r = 0; r < 3; ++r) ASSERT_EQ(res[r], gradcompSuccess) << "rank " << r;
    const auto ran = gctest::runOnThreads(3, [&](int r) {
      std::vector<float> out(kCount);
      return gradcompAllReduce(send.data(), out.data(), kCount, ncclFloat32, ncclSum, comms[r],
                               nullptr);
    });
    for (int r = 0; r < 3; ++r) EXPECT_EQ(ran[r], gradcompSuccess) << "rank " << r;
    for (gradcompComm_t c : comms) {
      EXPECT_EQ(round % 2 ? gradcompCommAbort(c) : gradcompCommDestroy(c), gradcompSuccess);
    }
    // One rank's config refused: every rank fails the set-up vote.
    gradcompConfig_t bad = cfg;
    bad.bits = 99;
    const auto voted = socketWorld(3, gctest::loopbackRoot(), {cfg, cfg, bad}, &comms);
    for (int r = 0; r < 3; ++r) {
      EXPECT_NE(voted[r], gradcompSuccess) << "rank " << r;
      EXPECT_EQ(comms[r], nullptr) << "rank " << r;
    }
    if (HasFailure()) return;
  }
  // A rank that never comes: the others time out.
  gradcompConfig_t quick = cfg;
  quick.cpuTimeoutSec = 0.2f;
  for (int round = 0; round < 3; ++round) {
    std::vector<gradcompComm_t> comms;
    const std::string root = gctest::loopbackRoot();
    const auto res = gctest::runOnThreads(2, [&](int r) {
      gradcompComm_t c = nullptr;
      const gradcompResult_t got = gradcompCommCreateSocket(3, r, root.c_str(), &quick, &c);
      gradcompCommDestroy(c);
      return got;
    });
    for (int r = 0; r < 2; ++r) EXPECT_NE(res[r], gradcompSuccess) << "rank " << r;
  }
  expectSame(before, Held(), "after 12 socket worlds, 12 refused and 3 timed out");
}

// Each distinct unkeyed receive buffer, and each distinct key, keeps a state
// until a reset (collective) or the comm's end frees them all; a buffer that
// comes back finds its own again.
TEST(Lifetime, BufferStatesStayUntilAResetFreesThem) {
  constexpr int kBuffers = 1000;
  constexpr size_t kCount = 256;
  gctest::CpuWorld world(2, baseConfig());
  const std::vector<float> send(kCount, 1.0f);
  // Each rank's own: the ranks' threads write their outputs at once.
  std::vector<std::vector<float>> recv(2, std::vector<float>(kCount * kBuffers));
  auto step = [&](bool keyed) {
    return world.run([&](int r) {
      std::vector<float> out(kCount);
      for (int i = 0; i < kBuffers; ++i) {
        LIFETIME_CHECK(keyed ? gradcompAllReduceKeyed(send.data(), out.data(), kCount, ncclFloat32,
                                                      ncclSum, world.comm(r), nullptr, i)
                             : gradcompAllReduce(send.data(), recv[r].data() + i * kCount, kCount,
                                                 ncclFloat32, ncclSum, world.comm(r), nullptr));
      }
      return gradcompSuccess;
    });
  };
  for (gradcompResult_t r : step(false)) ASSERT_EQ(r, gradcompSuccess);
  EXPECT_EQ(world.comm(0)->states.size(), (size_t)kBuffers);
  for (gradcompResult_t r : step(false)) ASSERT_EQ(r, gradcompSuccess);
  EXPECT_EQ(world.comm(0)->states.size(), (size_t)kBuffers);  // found again, none new
  for (gradcompResult_t r : step(true)) ASSERT_EQ(r, gradcompSuccess);
  EXPECT_EQ(world.comm(0)->states.size(), (size_t)(2 * kBuffers));
  for (gradcompResult_t r : world.run([&](int r) { return gradcompCommResetState(world.comm(r)); }))
    EXPECT_EQ(r, gradcompSuccess);
  EXPECT_EQ(world.comm(0)->states.size(), 0u);
  EXPECT_EQ(world.comm(1)->states.size(), 0u);
}

}  // namespace
