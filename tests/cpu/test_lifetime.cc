// Long lives: comms made and freed many times (elastic restarts, test suites,
// processes that rebuild their models) leave nothing of the process behind,
// however each one ended (destroyed, aborted, stopped then aborted, or a
// creation refused or timed out): no file descriptor or thread outlives its
// comm. (The library makes no /dev/shm entries; that directory is the
// machine's, which tests running beside this one write to, so it is not
// counted here.) A comm's buffer states are the one table that grows with
// use, by design: one per distinct (buffer, count, type) or key, until a
// forget frees one buffer's, or a reset or the comm's end frees them all
// (gradcomp.h, docs/reliability.md).
#include <dirent.h>
#include <math.h>
#include <string.h>
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "gradcomp.h"
#include "plugin/comm.h"
#include "tests/common/cpu_world.h"
#include "tests/common/loopback.h"
#include "plugin/collective.h"

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

// The residual (DGC: velocity) of the state a comm holds under `key`, or an
// empty vector when it holds none.
std::vector<float> residualOf(gradcompComm_t c, const gc::StateKey& key) {
  auto it = c->states.find(key);
  if (it == c->states.end() || it->second.residual == nullptr) return {};
  const float* r = it->second.residual;
  return std::vector<float>(r, r + it->second.count);
}

// gradcompCommForgetKey / gradcompCommForgetBuffer free one buffer's states
// (the allreduce's and the reduce-scatter's of that key or address) and no
// other: the comm holds fewer states and a smaller blob, the other buffers'
// residuals stay bit for bit, and the forgotten buffer's next call gives what
// a buffer new at that call gives (a world that calls a fresh key instead),
// on every rank, as do all later calls.
TEST(Lifetime, ForgetFreesOneBuffersStatesAndItsNextCallStartsAfresh) {
  constexpr int kRanks = 4;
  constexpr size_t kCount = 4096, kBlock = kCount / kRanks;
  constexpr uint64_t kForgotten = 11, kKept = 12, kFresh = 13;
  gradcompConfig_t qsgd = baseConfig(), dgc = baseConfig();
  dgc.method = gradcompMethodDgc;
  dgc.density = 0.05f;
  for (const gradcompConfig_t& cfg : {qsgd, dgc}) {
    SCOPED_TRACE(cfg.method == gradcompMethodDgc ? "dgc" : "qsgd");
    // World 0 forgets; world 1 does not, and calls kFresh where world 0
    // calls the forgotten key again (and the unkeyed buffer at a new place).
    gctest::CpuWorld w0(kRanks, cfg), w1(kRanks, cfg);
    gctest::CpuWorld* worlds[2] = {&w0, &w1};
    // Per world and rank: the unkeyed buffers, each rank's own addresses.
    std::vector<float> bufA[2][kRanks], bufB[2][kRanks], bufA2[2][kRanks];
    std::vector<float> out[2][kRanks];
    for (int w = 0; w < 2; ++w) {
      for (int r = 0; r < kRanks; ++r) {
        bufA[w][r].assign(kCount, 0.0f);
        bufB[w][r].assign(kCount, 0.0f);
        bufA2[w][r].assign(kCount, 0.0f);
        out[w][r].assign(5 * kCount, 0.0f);
      }
    }
    // One step of five calls in world w: the allreduce under kForgotten (or
    // kFresh) and kKept, the reduce-scatter under kForgotten (or kFresh), and
    // the unkeyed allreduces into A (or A2) and B; every output kept.
    auto step = [&](int w, int s, bool fresh) {
      return worlds[w]->run([&, w, s, fresh](int r) {
        gradcompComm_t c = worlds[w]->comm(r);
        std::vector<float> g(kCount);
        for (size_t i = 0; i < kCount; ++i)
          g[i] = sinf(0.37f * (float)(i + 1) + 1.3f * (float)r + 0.71f * (float)s);
        float* o = out[w][r].data();
        const uint64_t k = fresh ? kFresh : kForgotten;
        LIFETIME_CHECK(
            gradcompAllReduceKeyed(g.data(), o, kCount, ncclFloat32, ncclSum, c, nullptr, k));
        LIFETIME_CHECK(gradcompAllReduceKeyed(g.data(), o + kCount, kCount, ncclFloat32, ncclAvg, c,
                                              nullptr, kKept));
        LIFETIME_CHECK(gradcompReduceScatterKeyed(g.data(), o + 2 * kCount, kBlock, ncclFloat32,
                                                  ncclSum, c, nullptr, k));
        float* a = fresh ? bufA2[w][r].data() : bufA[w][r].data();
        LIFETIME_CHECK(gradcompAllReduce(g.data(), a, kCount, ncclFloat32, ncclSum, c, nullptr));
        memcpy(o + 3 * kCount, a, kCount * sizeof(float));
        LIFETIME_CHECK(gradcompAllReduce(g.data(), bufB[w][r].data(), kCount, ncclFloat32, ncclSum,
                                         c, nullptr));
        memcpy(o + 4 * kCount, bufB[w][r].data(), kCount * sizeof(float));
        return gradcompSuccess;
      });
    };
    for (int s = 0; s < 3; ++s) {
      for (int w = 0; w < 2; ++w)
        for (gradcompResult_t res : step(w, s, false)) ASSERT_EQ(res, gradcompSuccess);
    }
    const gc::StateKey kept =
        gc::stateKey(gc::kStateAllReduce, true, kKept, nullptr, kCount, gc::DType::F32);
    const gc::StateKey forgotten =
        gc::stateKey(gc::kStateAllReduce, true, kForgotten, nullptr, kCount, gc::DType::F32);
    const size_t held = w0.comm(0)->states.size();
    ASSERT_EQ(held, 5u);
    std::vector<float> keptBefore[kRanks], bBefore[kRanks];
    size_t bytesBefore[kRanks];
    for (int r = 0; r < kRanks; ++r) {
      keptBefore[r] = residualOf(w0.comm(r), kept);
      ASSERT_EQ(keptBefore[r].size(), kCount);
      ASSERT_FALSE(residualOf(w0.comm(r), forgotten).empty());
      bBefore[r] = residualOf(w0.comm(r), gc::stateKey(gc::kStateAllReduce, false, 0,
                                                       bufB[0][r].data(), kCount, gc::DType::F32));
      ASSERT_EQ(gradcompCommStateSize(w0.comm(r), &bytesBefore[r]), gradcompSuccess);
    }
    for (gradcompResult_t res : w0.run([&](int r) {
           LIFETIME_CHECK(gradcompCommForgetKey(w0.comm(r), kForgotten));
           return gradcompCommForgetBuffer(w0.comm(r), bufA[0][r].data());
         }))
      ASSERT_EQ(res, gradcompSuccess) << gradcompGetLastError();
    for (int r = 0; r < kRanks; ++r) {
      SCOPED_TRACE("rank " + std::to_string(r));
      // The allreduce's and reduce-scatter's states of the key, and A's: gone.
      EXPECT_EQ(w0.comm(r)->states.size(), held - 3);
      EXPECT_TRUE(residualOf(w0.comm(r), forgotten).empty());
      size_t bytes = 0;
      ASSERT_EQ(gradcompCommStateSize(w0.comm(r), &bytes), gradcompSuccess);
      EXPECT_LT(bytes, bytesBefore[r]);
      // The others untouched.
      EXPECT_EQ(residualOf(w0.comm(r), kept), keptBefore[r]);
      EXPECT_EQ(residualOf(w0.comm(r), gc::stateKey(gc::kStateAllReduce, false, 0,
                                                    bufB[0][r].data(), kCount, gc::DType::F32)),
                bBefore[r]);
    }
    // Forgotten key and buffer called again in world 0; fresh ones in world 1.
    for (int s = 3; s < 6; ++s) {
      for (gradcompResult_t res : step(0, s, false)) ASSERT_EQ(res, gradcompSuccess);
      for (gradcompResult_t res : step(1, s, true)) ASSERT_EQ(res, gradcompSuccess);
      for (int r = 0; r < kRanks; ++r) {
        ASSERT_EQ(out[0][r], out[1][r]) << "step " << s << ", rank " << r;
      }
    }
  }
}

// Ranks must forget alike: a rank that forgot another key, or none, fails
// the next call on every rank with a sentence that says so (the CPU world
// compares every call; on NCCL the call after a forget does). A NULL comm or
// recvbuff is refused by name and changes nothing; a key without a state
// frees nothing and is no error.
TEST(Lifetime, ForgetIsCollectiveAndRefusesNullArguments) {
  constexpr size_t kCount = 1024;
  gctest::CpuWorld world(2, baseConfig());
  const std::vector<float> send(kCount, 1.0f);
  auto call = [&](uint64_t key) {
    std::vector<std::string> err;
    auto res = gctest::onRanks(
        2,
        [&](int r) {
          std::vector<float> o(kCount);
          return gradcompAllReduceKeyed(send.data(), o.data(), kCount, ncclFloat32, ncclSum,
                                        world.comm(r), nullptr, key);
        },
        &err);
    return std::make_pair(res, err);
  };
  for (gradcompResult_t r : call(1).first) ASSERT_EQ(r, gradcompSuccess);

  EXPECT_EQ(gradcompCommForgetKey(nullptr, 1), gradcompInvalidArgument);
  EXPECT_NE(std::string(gradcompGetLastError()).find("comm is NULL"), std::string::npos);
  EXPECT_EQ(gradcompCommForgetBuffer(world.comm(0), nullptr), gradcompInvalidArgument);
  EXPECT_NE(std::string(gradcompGetLastError()).find("recvbuff is NULL"), std::string::npos)
      << gradcompGetLastError();
  EXPECT_EQ(world.comm(0)->states.size(), 1u);
  EXPECT_FALSE(world.comm(0)->verifyNext);
  // Nothing held under key 99: nothing freed, no error; alike on both ranks.
  for (gradcompResult_t r :
       world.run([&](int r) { return gradcompCommForgetKey(world.comm(r), 99); }))
    EXPECT_EQ(r, gradcompSuccess);
  EXPECT_EQ(world.comm(0)->states.size(), 1u);
  for (gradcompResult_t r : call(1).first) ASSERT_EQ(r, gradcompSuccess);

  // The same keys in another order on each rank: they agree.
  for (gradcompResult_t r : call(2).first) ASSERT_EQ(r, gradcompSuccess);
  ASSERT_EQ(gradcompCommForgetKey(world.comm(0), 1), gradcompSuccess);
  ASSERT_EQ(gradcompCommForgetKey(world.comm(0), 2), gradcompSuccess);
  ASSERT_EQ(gradcompCommForgetKey(world.comm(1), 2), gradcompSuccess);
  ASSERT_EQ(gradcompCommForgetKey(world.comm(1), 1), gradcompSuccess);
  EXPECT_EQ(world.comm(0)->states.size(), 0u);
  for (gradcompResult_t r : call(1).first) ASSERT_EQ(r, gradcompSuccess) << gradcompGetLastError();

  // Rank 0 forgets key 1, rank 1 key 2: the next call fails on both.
  ASSERT_EQ(gradcompCommForgetKey(world.comm(0), 1), gradcompSuccess);
  ASSERT_EQ(gradcompCommForgetKey(world.comm(1), 2), gradcompSuccess);
  auto mismatched = call(1);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(mismatched.first[r], gradcompInvalidUsage) << "rank " << r;
    EXPECT_NE(mismatched.second[r].find("forget the same keys and buffers on every rank"),
              std::string::npos)
        << mismatched.second[r];
  }
}

// A buffer's address is each rank's own, and so is what its address held
// before: a rank whose allocator put the buffer where an earlier buffer's
// state still is forgets that state with it, its peer does not. Ranks that
// forget the same buffer so must agree: nothing of an address-keyed state
// goes into the schedule digest (the number of buffers forgotten does).
TEST(Lifetime, OneBufferForgottenAtAddressesOfOtherHistoriesAgrees) {
  for (const size_t first : {size_t{1024}, size_t{512}}) {
    SCOPED_TRACE(first == 1024 ? "the earlier buffer of its size (other calls)"
                               : "an earlier buffer of another size (other states)");
    gctest::CpuWorld world(2, baseConfig());
    std::vector<float> x[2], y[2], g(1024, 1.0f);
    for (int r = 0; r < 2; ++r) x[r].assign(1024, 0.0f), y[r].assign(1024, 0.0f);
    // Buffer F at x on both ranks; then G at x again on rank 0, at y on rank 1.
    for (gradcompResult_t res : world.run([&](int r) {
           return gradcompAllReduce(g.data(), x[r].data(), first, ncclFloat32, ncclSum,
                                    world.comm(r), nullptr);
         }))
      ASSERT_EQ(res, gradcompSuccess);
    auto at = [&](int r) { return r == 0 ? x[r].data() : y[r].data(); };
    auto callG = [&](int r) {
      return gradcompAllReduce(g.data(), at(r), 1024, ncclFloat32, ncclSum, world.comm(r), nullptr);
    };
    for (gradcompResult_t res : world.run(callG)) ASSERT_EQ(res, gradcompSuccess);
    for (int r = 0; r < 2; ++r)
      ASSERT_EQ(gradcompCommForgetBuffer(world.comm(r), at(r)), gradcompSuccess);
    std::vector<std::string> err;
    const auto res = gctest::onRanks(2, callG, &err);
    for (int r = 0; r < 2; ++r)
      EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << err[r];
  }
}
}  // namespace
