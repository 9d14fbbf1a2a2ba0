// gradcompCommAbort on the CPU backend: NULL is a no-op; a healthy comm is
// freed; a call waiting in a collective on another thread for a rank that
// never comes (in-process world, TCP, hierarchical TCP) returns an error
// naming the abort, and abort returns, both long before the transport's
// timeout; a TCP peer that is gone does not hold abort; a comm stopped
// by gc::commStop (the LD_PRELOAD library's ncclCommAbort) fails every
// later call before it is freed; and a comm destroyed in an in-process world
// fails its peers' waits and later collectives at once, as an abort does.
#include <gtest/gtest.h>

#include <string.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "autotune.h"
#include "backends/transport.h"
#include "comm.h"
#include "gradcomp.h"
#include "tests/common/forwarding_transport.h"
#include "tests/common/loopback.h"

namespace {

// Far longer than any wait the tests allow: a call that returns did so
// because of the abort, never because a rank timed out.
constexpr float kTimeoutSec = 120;
constexpr double kPromptSec = 30;
constexpr size_t kCount = 1 << 15;

gradcompConfig_t config(int localSize = 0) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = gradcompMethodQsgd;
  cfg.autoTune = 0;
  cfg.cpuTimeoutSec = kTimeoutSec;
  cfg.localSize = localSize;
  return cfg;
}

double seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// One rank's allreduce, on its own thread, with what it returned.
struct Caller {
  gradcompResult_t res = gradcompInternalError;
  std::string why;
  std::vector<float> buf = std::vector<float>(kCount, 1.0f);
  std::thread thread;

  void start(gradcompComm_t c) {
    thread = std::thread([this, c] {
      res = gradcompAllReduce(buf.data(), buf.data(), kCount, ncclFloat32, ncclSum, c, nullptr);
      why = gradcompGetLastError();
    });
  }
};

// Until `c` is inside a public call (the abort then meets a call in flight).
void waitInCall(gradcompComm_t c) {
  while (c->callsInFlight.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

// calls[r], an allreduce of comms[r] on its own thread for each r, while
// `act` runs on this one once they are all inside it: the seconds from
// `act` until every call returned.
template <typename F>
double callWhile(std::vector<Caller>& calls, const std::vector<gradcompComm_t>& comms, F act) {
  for (size_t r = 0; r < calls.size(); ++r) calls[r].start(comms[r]);
  for (size_t r = 0; r < calls.size(); ++r) waitInCall(comms[r]);
  const auto t0 = std::chrono::steady_clock::now();
  act();
  for (auto& c : calls) c.thread.join();
  return seconds(t0);
}

std::vector<gradcompComm_t> socketComms(int n, const gradcompConfig_t& cfg) {
  const std::string root = gctest::loopbackRoot();
  std::vector<gradcompComm_t> comms(n, nullptr);
  std::vector<std::thread> ts;
  for (int r = 0; r < n; ++r) {
    ts.emplace_back([&, r] {
      EXPECT_EQ(gradcompCommCreateSocket(n, r, root.c_str(), &cfg, &comms[r]), gradcompSuccess)
          << gradcompGetLastError();
    });
  }
  for (auto& t : ts) t.join();
  return comms;
}

TEST(Abort, NullIsANoOp) {
  EXPECT_EQ(gradcompCommAbort(nullptr), gradcompSuccess);
}

// After a call on every rank (so buffer state and workspace exist): abort
// frees it all (the sanitizer build, tools/sanitize.sh, sees a leak).
TEST(Abort, HealthyCommsAreFreed) {
  const gradcompConfig_t cfg = config();
  std::vector<gradcompComm_t> comms(3);
  ASSERT_EQ(gradcompCommCreateCpu(3, &cfg, comms.data()), gradcompSuccess);
  std::vector<Caller> calls(3);
  for (int r = 0; r < 3; ++r) calls[r].start(comms[r]);
  for (auto& c : calls) {
    c.thread.join();
    EXPECT_EQ(c.res, gradcompSuccess) << c.why;
  }
  for (gradcompComm_t c : comms) EXPECT_EQ(gradcompCommAbort(c), gradcompSuccess);

  std::vector<gradcompComm_t> sock = socketComms(2, cfg);
  std::vector<Caller> scalls(2);
  for (int r = 0; r < 2; ++r) scalls[r].start(sock[r]);
  for (auto& c : scalls) {
    c.thread.join();
    EXPECT_EQ(c.res, gradcompSuccess) << c.why;
  }
  for (gradcompComm_t c : sock) EXPECT_EQ(gradcompCommAbort(c), gradcompSuccess);
}

// Ranks 0 and 1 of 3 wait in a collective for rank 2, which never calls.
// Aborting rank 0's comm wakes rank 0 (abort waits for its call to return)
// and fails the world, so rank 1 returns too instead of timing out.
TEST(Abort, WakesRanksWaitingInTheInProcessWorld) {
  const gradcompConfig_t cfg = config();
  std::vector<gradcompComm_t> comms(3);
  ASSERT_EQ(gradcompCommCreateCpu(3, &cfg, comms.data()), gradcompSuccess);
  std::vector<Caller> calls(2);
  EXPECT_LT(
      callWhile(calls, comms, [&] { EXPECT_EQ(gradcompCommAbort(comms[0]), gradcompSuccess); }),
      kPromptSec);
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(calls[r].res, gradcompSuccess) << "rank " << r;
    EXPECT_NE(calls[r].why.find("aborted"), std::string::npos) << calls[r].why;
  }
  EXPECT_EQ(gradcompCommAbort(comms[1]), gradcompSuccess);
  EXPECT_EQ(gradcompCommAbort(comms[2]), gradcompSuccess);
}

// An abort that comes while the ranks copy from each other (past a
// collective's opening barrier) fails the collective, but no rank leaves it
// before every rank has left the data phase: the caller of a rank that left
// early could free or refill memory its peers still read (a use after free
// when abort frees that rank's comm). Rank 1 sends rank 0 a large block and
// receives one byte; the abort comes a few ms in, while rank 0 copies. Once
// rank 1's call returns, it overwrites the second half of its block: rank 0
// must never have received an overwritten byte. (On a loaded machine the
// abort may come before the copy, leaving nothing copied, or after it, all
// copied: either passes; a rank that left early fails.)
TEST(Abort, NoRankLeavesACollectiveWhosePeersStillCopy) {
  auto world = gc::makeCpuWorld(2, kTimeoutSec);
  const size_t big = size_t(128) << 20;
  std::vector<unsigned char> send1(big, 0x5a), recv0(big, 0), one0(1, 7), one1(1, 0);
  const void* s0[2] = {nullptr, one0.data()};
  const size_t sb0[2] = {0, 1};
  void* r0[2] = {nullptr, recv0.data()};
  const size_t rb0[2] = {0, big};
  const void* s1[2] = {send1.data(), nullptr};
  const size_t sb1[2] = {big, 0};
  void* r1[2] = {one1.data(), nullptr};
  const size_t rb1[2] = {1, 0};
  gradcompResult_t res0 = gradcompSuccess, res1 = gradcompSuccess;
  std::thread t1([&] {
    res1 = world[1]->allToAll(s1, sb1, r1, rb1);
    memset(send1.data() + big / 2, 0xee, big / 2);
  });
  std::thread t0([&] { res0 = world[0]->allToAll(s0, sb0, r0, rb0); });
  std::this_thread::sleep_for(std::chrono::milliseconds(3));
  world[0]->abort();
  t0.join();
  t1.join();
  EXPECT_EQ(res0 == gradcompSuccess, res1 == gradcompSuccess) << "the ranks' results differ";
  EXPECT_EQ(std::count(recv0.begin(), recv0.end(), (unsigned char)0xee), 0)
      << "rank 1 left the collective while rank 0 was still copying from it";
  if (res0 == gradcompSuccess) {
    EXPECT_EQ((size_t)std::count(recv0.begin(), recv0.end(), (unsigned char)0x5a), big);
    EXPECT_EQ(one1[0], 7);
  }
}

// TCP: rank 0 waits in a collective for rank 1, which stays alive but does
// not call. Abort wakes it; the shut-down connections make rank 1's calls
// fail at once instead of waiting out its timeout.
TEST(Abort, WakesARankWaitingOverTcp) {
  std::vector<gradcompComm_t> comms = socketComms(2, config());
  ASSERT_NE(comms[0], nullptr);
  ASSERT_NE(comms[1], nullptr);
  Caller zero;
  zero.start(comms[0]);
  waitInCall(comms[0]);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(gradcompCommAbort(comms[0]), gradcompSuccess);
  zero.thread.join();
  EXPECT_LT(seconds(t0), kPromptSec);
  EXPECT_NE(zero.res, gradcompSuccess);
  EXPECT_NE(zero.why.find("aborted"), std::string::npos) << zero.why;

  // Rank 1's first call may still complete on what rank 0 sent before the
  // abort; the next finds the connection gone.
  Caller one[2];
  for (Caller& c : one) {
    c.start(comms[1]);
    c.thread.join();
    if (c.res != gradcompSuccess) break;
  }
  EXPECT_LT(seconds(t0), kPromptSec);
  const Caller& failed = one[0].res != gradcompSuccess ? one[0] : one[1];
  EXPECT_EQ(failed.res, gradcompSystemError);
  EXPECT_NE(failed.why.find("lost its connection to rank 0"), std::string::npos) << failed.why;
  EXPECT_EQ(gradcompCommAbort(comms[1]), gradcompSuccess);
}

// A hierarchical TCP comm (2 nodes of 2): three ranks in a call, the fourth
// absent; each is aborted from another thread while waiting in the node
// or inter-node sub-transport.
TEST(Abort, WakesRanksOfAHierarchicalTcpComm) {
  std::vector<gradcompComm_t> comms = socketComms(4, config(2));
  for (gradcompComm_t c : comms) ASSERT_NE(c, nullptr);
  std::vector<Caller> calls(3);
  for (int r = 0; r < 3; ++r) calls[r].start(comms[r]);
  for (int r = 0; r < 3; ++r) waitInCall(comms[r]);
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < 3; ++r) EXPECT_EQ(gradcompCommAbort(comms[r]), gradcompSuccess);
  for (auto& c : calls) c.thread.join();
  EXPECT_LT(seconds(t0), kPromptSec);
  for (int r = 0; r < 3; ++r) EXPECT_NE(calls[r].res, gradcompSuccess) << "rank " << r;
  EXPECT_EQ(gradcompCommAbort(comms[3]), gradcompSuccess);
}

// A hierarchical TCP comm names global ranks in its errors, not the ranks'
// places in their node's or the inter-node transport: rank 1 waits in the
// inter-node transport it shares with rank 3 (node 1's local rank 1), whose
// abort closes its connections (until 2026-12-05 it said "rank 0 lost its
// connection to rank 1").
TEST(Abort, AHierarchicalTcpCommNamesGlobalRanks) {
  std::vector<gradcompComm_t> comms = socketComms(4, config(2));
  for (gradcompComm_t c : comms) ASSERT_NE(c, nullptr);
  ASSERT_NE(comms[1]->inter, nullptr);
  gradcompResult_t res = gradcompSuccess;
  std::string why;
  std::thread one([&] {
    uint64_t mine = 1, all[2] = {};
    res = comms[1]->inter->transport->allGather(&mine, all, sizeof mine);
    why = gradcompGetLastError();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(gradcompCommAbort(comms[3]), gradcompSuccess);
  one.join();
  EXPECT_EQ(res, gradcompSystemError);
  EXPECT_NE(why.find("rank 1 lost its connection to rank 3"), std::string::npos) << why;
  for (int r = 0; r < 3; ++r) EXPECT_EQ(gradcompCommAbort(comms[r]), gradcompSuccess);
}

// A stopped hierarchical TCP comm's node transport names the rank by its
// global rank too: rank 2 is index 0 of node 1's transport (until
// 2026-12-05 its sentence said "rank 0: the comm was aborted").
TEST(Abort, AStoppedHierarchicalTcpCommNamesItsGlobalRank) {
  std::vector<gradcompComm_t> comms = socketComms(4, config(2));
  for (gradcompComm_t c : comms) ASSERT_NE(c, nullptr);
  ASSERT_NE(comms[2]->intra, nullptr);
  EXPECT_EQ(gradcompCommStop(comms[2]), gradcompSuccess);
  uint64_t mine = 2, all[2] = {};
  EXPECT_EQ(comms[2]->intra->allGather(&mine, all, sizeof mine), gradcompInvalidUsage);
  EXPECT_NE(std::string(gradcompGetLastError()).find("rank 2: the comm was aborted"),
            std::string::npos)
      << gradcompGetLastError();
  EXPECT_EQ(comms[2]->inter->transport->allGather(&mine, all, sizeof mine), gradcompInvalidUsage);
  EXPECT_NE(std::string(gradcompGetLastError()).find("rank 2: the comm was aborted"),
            std::string::npos)
      << gradcompGetLastError();
  for (gradcompComm_t c : comms) EXPECT_EQ(gradcompCommAbort(c), gradcompSuccess);
}

// `waiter`'s allGather in its node's sub-world, on a thread of its own,
// while `act` runs on this one (once the waiter is in it): what the
// allGather returned, its sentence, and the seconds it took after `act` began.
struct NodeWait {
  gradcompResult_t res = gradcompSuccess;
  std::string why;
  double sec = 0;
};
template <typename F>
NodeWait nodeWaitWhile(gradcompComm_t waiter, F act) {
  NodeWait w;
  std::thread t([&] {
    uint64_t mine = 7, all[2] = {};
    w.res = waiter->intra->allGather(&mine, all, sizeof mine);
    w.why = gradcompGetLastError();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const auto t0 = std::chrono::steady_clock::now();
  act();
  t.join();
  w.sec = seconds(t0);
  return w;
}

// The in-process world split in nodes (2 nodes of 2): rank 3 waits in its
// node's sub-world for rank 2, as it does when an abort made rank 2 leave a
// hierarchical call (its inter-node stage, which rank 0 shares) while rank 3
// went on to the next in-node stage. Rank 0's abort fails every sub-world of
// the world, so rank 3 returns with the abort's error at once (until
// 2026-12-05 only the aborting rank's own node and inter-node sub-worlds
// were aborted, and rank 3 waited out cpuTimeoutSec for a "1 of 2 ranks"
// timeout).
TEST(Abort, WakesRanksWaitingInAnotherNodeOfTheInProcessWorld) {
  const gradcompConfig_t cfg = config(2);
  std::vector<gradcompComm_t> comms(4);
  ASSERT_EQ(gradcompCommCreateCpu(4, &cfg, comms.data()), gradcompSuccess);
  ASSERT_NE(comms[3]->intra, nullptr);
  const NodeWait three =
      nodeWaitWhile(comms[3], [&] { EXPECT_EQ(gradcompCommAbort(comms[0]), gradcompSuccess); });
  EXPECT_LT(three.sec, kPromptSec);
  EXPECT_EQ(three.res, gradcompSystemError);
  EXPECT_NE(three.why.find("aborted"), std::string::npos) << three.why;
  for (int r = 1; r < 4; ++r) EXPECT_EQ(gradcompCommAbort(comms[r]), gradcompSuccess);
}

// Destroy is not abort: a comm with a call in progress on another thread
// (rank 0 waiting for rank 1) is refused, untouched, and the call goes on;
// once it has returned, destroy frees the comm.
TEST(Abort, DestroyRefusesACommWithACallInProgress) {
  std::vector<gradcompComm_t> comms = socketComms(2, config());
  for (gradcompComm_t c : comms) ASSERT_NE(c, nullptr);
  Caller zero;
  zero.start(comms[0]);
  waitInCall(comms[0]);
  EXPECT_EQ(gradcompCommDestroy(comms[0]), gradcompInvalidUsage);
  EXPECT_NE(strstr(gradcompGetLastError(), "call(s) in progress on other threads"), nullptr)
      << gradcompGetLastError();
  Caller one;
  one.start(comms[1]);
  zero.thread.join();
  one.thread.join();
  EXPECT_EQ(zero.res, gradcompSuccess) << zero.why;
  EXPECT_EQ(one.res, gradcompSuccess) << one.why;
  EXPECT_EQ(gradcompCommDestroy(comms[0]), gradcompSuccess);
  EXPECT_EQ(gradcompCommDestroy(comms[1]), gradcompSuccess);
}

// The peer is gone (its comm destroyed, its connections closed): abort
// neither talks to it nor waits for it.
TEST(Abort, APeerThatIsGoneDoesNotHoldAbort) {
  std::vector<gradcompComm_t> comms = socketComms(2, config());
  ASSERT_NE(comms[1], nullptr);
  EXPECT_EQ(gradcompCommDestroy(comms[1]), gradcompSuccess);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(gradcompCommAbort(comms[0]), gradcompSuccess);
  EXPECT_LT(seconds(t0), kPromptSec);
}

// Where a retune stopped (StopBeforeCompressedTiming), owned by the test: the
// comm's abort frees the transport, while rank 0's thread still says its
// retune ended after that.
struct RetuneGate {
  std::mutex mu;
  std::condition_variable cv;
  bool stopped = false, aborted = false, ended = false;
  void set(bool RetuneGate::*flag) {
    std::lock_guard<std::mutex> lock(mu);
    this->*flag = true;
    cv.notify_all();
  }
  // Until the retune stopped, or rank 0's retune ended without (a failure
  // before, or another series): whether it stopped.
  bool waitStopped() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return stopped || ended; });
    return stopped;
  }
};

// A retune's transport that stops after the last untimed and timed NCCL-side
// allreduce of `count` elements (the auto timing's first series), once it
// succeeded, until the comm is aborted: the next step of the retune is its
// first compressed call, made inside the retune's own public call.
class StopBeforeCompressedTiming final : public gctest::ForwardingTransport {
 public:
  StopBeforeCompressedTiming(std::unique_ptr<gc::Transport> inner, size_t count, RetuneGate& gate)
      : ForwardingTransport(std::move(inner)), count_(count), gate_(gate) {}
  gradcompResult_t passThrough(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op) override {
    const gradcompResult_t res = ForwardingTransport::passThrough(send, recv, count, type, op);
    if (count == count_ && ++passes_ == gc::kAutoWarmupCalls + gc::kAutoTimedCalls) {
      gate_.set(&RetuneGate::stopped);
      std::unique_lock<std::mutex> lock(gate_.mu);
      gate_.cv.wait(lock, [&] { return gate_.aborted; });
    }
    return res;
  }
  void abort() override {
    ForwardingTransport::abort();
    gate_.set(&RetuneGate::aborted);
  }

 private:
  const size_t count_;
  int passes_ = 0;
  RetuneGate& gate_;
};

// An abort on another thread while a retune times: the retune's compressed
// calls run inside its public call, under its hold on the comm, so it fails
// as an aborted comm's calls do, not as a comm that was never live (a second
// hold, taken by a nested public call after the abort began, was refused).
TEST(Abort, ARetuneAbortedWhileTimingNamesTheAbort) {
  gradcompConfig_t cfg = config();
  cfg.autoTune = 1;
  std::vector<gradcompComm_t> comms(2);
  ASSERT_EQ(gradcompCommCreateCpu(2, &cfg, comms.data()), gradcompSuccess);
  constexpr size_t kSmall = 1024;
  for (gradcompComm_t c : comms) {
    c->autoState.timeOnHost = true;  // the in-process world times as a socket comm
    c->autoState.timedCounts[0] = kSmall;
    c->autoState.timedCounts[1] = 4 * kSmall;
  }
  RetuneGate gate;
  comms[0]->transport.reset(
      new StopBeforeCompressedTiming(std::move(comms[0]->transport), kSmall, gate));
  gradcompResult_t res[2] = {gradcompSuccess, gradcompSuccess};
  std::string why[2];
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      res[r] = gradcompCommRetune(comms[r], nullptr);
      why[r] = gradcompGetLastError();
      if (r == 0) gate.set(&RetuneGate::ended);
    });
  }
  EXPECT_TRUE(gate.waitStopped()) << "rank 0's retune ended before its compressed timing";
  EXPECT_EQ(gradcompCommAbort(comms[0]), gradcompSuccess) << gradcompGetLastError();
  for (auto& t : ranks) t.join();
  EXPECT_EQ(res[0], gradcompInvalidUsage) << why[0];
  EXPECT_NE(why[0].find("was aborted (gradcompCommAbort)"), std::string::npos) << why[0];
  EXPECT_EQ(why[0].find("not a live"), std::string::npos) << why[0];
  EXPECT_NE(res[1], gradcompSuccess);  // its peer left the world
  EXPECT_NE(why[1].find("aborted"), std::string::npos) << why[1];
  EXPECT_EQ(gradcompCommDestroy(comms[1]), gradcompSuccess) << gradcompGetLastError();
}

// gc::commStop, the LD_PRELOAD library's ncclCommAbort: the comm stays
// allocated for the calls that still hold it, each of which fails, and is
// freed by gradcompCommAbort at the end.
TEST(Abort, AStoppedCommFailsEveryCall) {
  const gradcompConfig_t cfg = config();
  std::vector<gradcompComm_t> comms(2);
  ASSERT_EQ(gradcompCommCreateCpu(2, &cfg, comms.data()), gradcompSuccess);
  gc::commStop(comms[0]);
  gc::commStop(comms[0]);  // idempotent
  std::vector<float> buf(kCount, 1.0f);
  EXPECT_EQ(
      gradcompAllReduce(buf.data(), buf.data(), kCount, ncclFloat32, ncclSum, comms[0], nullptr),
      gradcompInvalidUsage);
  EXPECT_NE(std::string(gradcompGetLastError()).find("aborted"), std::string::npos);
  EXPECT_EQ(gradcompReduceScatter(buf.data(), buf.data(), kCount / 2, ncclFloat32, ncclSum,
                                  comms[0], nullptr),
            gradcompInvalidUsage);
  EXPECT_EQ(gradcompCommRetune(comms[0], nullptr), gradcompInvalidUsage);
  // The state calls too (before, load and reset succeeded after a stop, and a
  // save on another thread ran on while abort freed the states under it).
  size_t bytes = 0;
  EXPECT_EQ(gradcompCommStateSize(comms[0], &bytes), gradcompInvalidUsage);
  std::vector<char> blob(4096);
  EXPECT_EQ(gradcompCommSaveState(comms[0], blob.data(), blob.size()), gradcompInvalidUsage);
  EXPECT_EQ(gradcompCommLoadState(comms[0], blob.data(), blob.size()), gradcompInvalidUsage);
  EXPECT_EQ(gradcompCommResetState(comms[0]), gradcompInvalidUsage);
  EXPECT_NE(std::string(gradcompGetLastError()).find("aborted"), std::string::npos);
  // The world is aborted too: rank 1's call fails at once.
  EXPECT_EQ(
      gradcompAllReduce(buf.data(), buf.data(), kCount, ncclFloat32, ncclSum, comms[1], nullptr),
      gradcompSystemError);
  EXPECT_NE(std::string(gradcompGetLastError()).find("aborted"), std::string::npos);
  EXPECT_EQ(gradcompCommAbort(comms[0]), gradcompSuccess);
  EXPECT_EQ(gradcompCommAbort(comms[1]), gradcompSuccess);
}

// gradcompCommStop on one thread and gradcompCommAbort on another at once
// (a watchdog stopping the comm while the program aborts it), with a call
// waiting in a collective on a third: the abort, begun while the stop is in
// progress, waits for it to end before it frees the comm. Before, the abort found the comm
// already stopping, took its own stop as done and freed the comm while the
// stop still read and wrote it (a use after free; the sanitizer builds,
// tools/sanitize.sh, report it within a few rounds).
TEST(Abort, AStopOnAnotherThreadEndsBeforeAbortFrees) {
  const gradcompConfig_t cfg = config();
  for (int round = 0; round < 50; ++round) {
    std::vector<gradcompComm_t> comms(2);
    ASSERT_EQ(gradcompCommCreateCpu(2, &cfg, comms.data()), gradcompSuccess);
    Caller zero;
    zero.start(comms[0]);
    waitInCall(comms[0]);
    std::atomic<int> ready{0};
    auto together = [&ready] {
      ready++;
      while (ready.load() < 2) std::this_thread::yield();
    };
    const auto t0 = std::chrono::steady_clock::now();
    std::thread stop([&] {
      together();
      EXPECT_EQ(gradcompCommStop(comms[0]), gradcompSuccess);
    });
    std::thread abort([&] {
      together();
      // The stop first (gradcompCommStop: a stop must not begin once an
      // abort has, which frees the comm): the abort comes while it runs.
      while (!comms[0]->aborted) std::this_thread::yield();
      EXPECT_EQ(gradcompCommAbort(comms[0]), gradcompSuccess);
    });
    stop.join();
    abort.join();
    zero.thread.join();
    EXPECT_LT(seconds(t0), kPromptSec);
    EXPECT_NE(zero.res, gradcompSuccess);
    EXPECT_NE(zero.why.find("aborted"), std::string::npos) << zero.why;
    EXPECT_EQ(gradcompCommAbort(comms[1]), gradcompSuccess);
  }
}

// A rank that destroys its comm (no abort) is gone from the in-process
// world: its peers waiting for it in a collective, and every collective of
// the world after, fail at once naming it, as after a transport error,
// rather than wait out cpuTimeoutSec. Ranks 0 and 1 of 3 wait in an
// allreduce when rank 2's comm is destroyed (2026-12-07: they waited
// cpuTimeoutSec for "2 of 3 ranks reached a collective").
TEST(Abort, ADestroyedRankFailsItsPeersAtOnce) {
  const gradcompConfig_t cfg = config();
  std::vector<gradcompComm_t> comms(3);
  ASSERT_EQ(gradcompCommCreateCpu(3, &cfg, comms.data()), gradcompSuccess);
  std::vector<Caller> calls(2);
  EXPECT_LT(
      callWhile(calls, comms, [&] { EXPECT_EQ(gradcompCommDestroy(comms[2]), gradcompSuccess); }),
      kPromptSec);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(calls[r].res, gradcompSystemError) << "rank " << r;
    EXPECT_NE(calls[r].why.find("rank 2 of this in-process world was destroyed"), std::string::npos)
        << calls[r].why;
  }
  // Every later collective fails too, at once, on both ranks together.
  std::vector<Caller> again(2);
  const auto t1 = std::chrono::steady_clock::now();
  for (int r = 0; r < 2; ++r) again[r].start(comms[r]);
  for (auto& c : again) c.thread.join();
  EXPECT_LT(seconds(t1), kPromptSec);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(again[r].res, gradcompSystemError) << "rank " << r;
    EXPECT_NE(again[r].why.find("rank 2 of this in-process world was destroyed"), std::string::npos)
        << again[r].why;
  }
  EXPECT_EQ(gradcompCommDestroy(comms[0]), gradcompSuccess);
  EXPECT_EQ(gradcompCommDestroy(comms[1]), gradcompSuccess);
}

// A rank destroyed before its peers enter a collective: the first one they
// enter fails at once, naming it; one rank alone calls (no peer would come
// for it either way).
TEST(Abort, ACollectiveAfterAPeerWasDestroyedFailsAtOnce) {
  const gradcompConfig_t cfg = config();
  std::vector<gradcompComm_t> comms(2);
  ASSERT_EQ(gradcompCommCreateCpu(2, &cfg, comms.data()), gradcompSuccess);
  EXPECT_EQ(gradcompCommDestroy(comms[1]), gradcompSuccess);
  Caller zero;
  const auto t0 = std::chrono::steady_clock::now();
  zero.start(comms[0]);
  zero.thread.join();
  EXPECT_LT(seconds(t0), kPromptSec);
  EXPECT_EQ(zero.res, gradcompSystemError);
  EXPECT_NE(zero.why.find("rank 1 of this in-process world was destroyed"), std::string::npos)
      << zero.why;
  EXPECT_EQ(gradcompCommDestroy(comms[0]), gradcompSuccess);
}

// A hierarchical world (2 nodes of 2): rank 3's destroy fails rank 2,
// waiting for it on their node's sub-world, at once, naming rank 3 by its
// rank in the whole world (its rank in the node is 1); rank 0's next call,
// which agrees over the whole world first, fails at once too. Node 0's
// sub-world, which rank 3 is not in, stays as it was (below).
TEST(Abort, ADestroyedRankFailsTheWorldsItIsIn) {
  const gradcompConfig_t cfg = config(2);
  std::vector<gradcompComm_t> comms(4);
  ASSERT_EQ(gradcompCommCreateCpu(4, &cfg, comms.data()), gradcompSuccess);
  ASSERT_NE(comms[2]->intra, nullptr);
  const NodeWait two =
      nodeWaitWhile(comms[2], [&] { EXPECT_EQ(gradcompCommDestroy(comms[3]), gradcompSuccess); });
  EXPECT_LT(two.sec, kPromptSec);
  EXPECT_EQ(two.res, gradcompSystemError);
  EXPECT_NE(two.why.find("rank 3 of this in-process world was destroyed"), std::string::npos)
      << two.why;
  Caller zero;
  const auto t1 = std::chrono::steady_clock::now();
  zero.start(comms[0]);
  zero.thread.join();
  EXPECT_LT(seconds(t1), kPromptSec);
  EXPECT_EQ(zero.res, gradcompSystemError);
  EXPECT_NE(zero.why.find("rank 3 of this in-process world was destroyed"), std::string::npos)
      << zero.why;
  for (int r = 0; r < 3; ++r) EXPECT_EQ(gradcompCommDestroy(comms[r]), gradcompSuccess);
}

// Each rank of a hierarchical world destroys its comm as soon as its last
// call returned, as a program's teardown does: a call ends on each node with
// that node's own sub-world, so a rank of node 0 can be destroyed while node
// 1's ranks still finish theirs, which must not fail (2026-12-07: a destroy
// closed every node's sub-world, and node 1's ranks failed a call that node
// 0's had finished, in most rounds).
TEST(Abort, ADestroyAfterTheLastCallFailsNoPeersCall) {
  const gradcompConfig_t cfg = config(2);
  for (int round = 0; round < 20; ++round) {
    std::vector<gradcompComm_t> comms(4);
    ASSERT_EQ(gradcompCommCreateCpu(4, &cfg, comms.data()), gradcompSuccess);
    std::vector<gradcompResult_t> res(4, gradcompInternalError), gone(4, gradcompInternalError);
    std::vector<std::string> why(4);
    std::vector<std::thread> ranks;
    for (int r = 0; r < 4; ++r) {
      ranks.emplace_back([&, r] {
        std::vector<float> buf(kCount, 1.0f + (float)r);
        res[r] = gradcompAllReduce(buf.data(), buf.data(), kCount, ncclFloat32, ncclSum, comms[r],
                                   nullptr);
        why[r] = gradcompGetLastError();
        gone[r] = gradcompCommDestroy(comms[r]);
      });
    }
    for (auto& t : ranks) t.join();
    for (int r = 0; r < 4; ++r) {
      EXPECT_EQ(res[r], gradcompSuccess) << "round " << round << " rank " << r << ": " << why[r];
      EXPECT_EQ(gone[r], gradcompSuccess) << "round " << round << " rank " << r;
    }
  }
}

}  // namespace

// A comm takes one call at a time (gradcomp.h): a second call on it from
// another thread while one is in progress (rank 0 waiting for rank 1, which
// has not called yet) is refused with gradcompInvalidUsage naming the comm
// and the call in progress, before it touches the comm's states, workspace,
// stats or transport; the call in progress then finishes with the right
// sums, and the comm takes calls from any thread again.
class OneCallAtATime : public ::testing::TestWithParam<gradcompMethod_t> {};

TEST_P(OneCallAtATime, ASecondCallFromAnotherThreadIsRefused) {
  gradcompConfig_t cfg = config();
  cfg.method = GetParam();
  std::vector<gradcompComm_t> comms(2);
  ASSERT_EQ(gradcompCommCreateCpu(2, &cfg, comms.data()), gradcompSuccess);
  // A first call on both ranks, so that the comm has buffer states to save,
  // load, reset or corrupt.
  {
    std::vector<Caller> warm(2);
    for (int r = 0; r < 2; ++r) warm[r].start(comms[r]);
    for (auto& w : warm) {
      w.thread.join();
      ASSERT_EQ(w.res, gradcompSuccess) << w.why;
    }
  }
  size_t stateBytes = 0;
  ASSERT_EQ(gradcompCommStateSize(comms[0], &stateBytes), gradcompSuccess);
  std::vector<char> blob(stateBytes);
  ASSERT_EQ(gradcompCommSaveState(comms[0], blob.data(), blob.size()), gradcompSuccess);

  Caller zero;
  zero.start(comms[0]);
  waitInCall(comms[0]);
  auto refused = [&](const char* what, gradcompResult_t res) {
    EXPECT_EQ(res, gradcompInvalidUsage) << what << ": " << gradcompGetLastError();
    const std::string why = gradcompGetLastError();
    EXPECT_NE(why.find("in progress on another thread"), std::string::npos) << what << ": " << why;
    EXPECT_NE(why.find("rank 0"), std::string::npos) << what << ": " << why;
  };
  std::vector<float> other(kCount, 2.0f), out(kCount, 0.0f);
  std::vector<float> same(kCount, 1.0f);
  refused("allreduce, other buffers", gradcompAllReduce(other.data(), out.data(), kCount,
                                                        ncclFloat32, ncclSum, comms[0], nullptr));
  refused("allreduce, the same buffer", gradcompAllReduce(zero.buf.data(), zero.buf.data(), kCount,
                                                          ncclFloat32, ncclSum, comms[0], nullptr));
  refused("keyed allreduce", gradcompAllReduceKeyed(other.data(), other.data(), kCount, ncclFloat32,
                                                    ncclSum, comms[0], nullptr, 7));
  refused("reduce-scatter", gradcompReduceScatter(other.data(), out.data(), kCount / 2, ncclFloat32,
                                                  ncclSum, comms[0], nullptr));
  refused("keyed reduce-scatter",
          gradcompReduceScatterKeyed(other.data(), out.data(), kCount / 2, ncclFloat32, ncclSum,
                                     comms[0], nullptr, 7));
  size_t bytes = 0;
  refused("state size", gradcompCommStateSize(comms[0], &bytes));
  std::vector<char> save(stateBytes);
  refused("save", gradcompCommSaveState(comms[0], save.data(), save.size()));
  refused("load", gradcompCommLoadState(comms[0], blob.data(), blob.size()));
  refused("reset", gradcompCommResetState(comms[0]));
  refused("retune", gradcompCommRetune(comms[0], nullptr));
  refused("grad scale", gradcompCommSetGradScale(comms[0], 0.5f, nullptr));
  EXPECT_EQ(other, std::vector<float>(kCount, 2.0f));
  EXPECT_EQ(out, std::vector<float>(kCount, 0.0f));

  Caller one;
  one.start(comms[1]);
  zero.thread.join();
  one.thread.join();
  ASSERT_EQ(zero.res, gradcompSuccess) << zero.why;
  ASSERT_EQ(one.res, gradcompSuccess) << one.why;
  if (GetParam() == gradcompMethodNone) {
    EXPECT_EQ(zero.buf, std::vector<float>(kCount, 2.0f));
  }
  EXPECT_EQ(zero.buf, one.buf);
  gradcompStats_t stats;
  ASSERT_EQ(gradcompGetStats(comms[0], &stats), gradcompSuccess);
  // Pass-through calls are not steps of the compressed schedule.
  EXPECT_EQ(stats.steps, GetParam() == gradcompMethodNone ? 0u : 2u);
  EXPECT_EQ(stats.callsCompressed + stats.callsPassedThrough, 2u);

  // Returned: the comm takes calls again, from this thread too.
  std::vector<Caller> again(2);
  again[1].start(comms[1]);
  EXPECT_EQ(gradcompAllReduce(again[0].buf.data(), again[0].buf.data(), kCount, ncclFloat32,
                              ncclSum, comms[0], nullptr),
            gradcompSuccess)
      << gradcompGetLastError();
  again[1].thread.join();
  EXPECT_EQ(again[1].res, gradcompSuccess) << again[1].why;
  for (gradcompComm_t c : comms) EXPECT_EQ(gradcompCommDestroy(c), gradcompSuccess);
}

INSTANTIATE_TEST_SUITE_P(Methods, OneCallAtATime,
                         ::testing::Values(gradcompMethodNone, gradcompMethodQsgd,
                                           gradcompMethodTopk, gradcompMethodDgc));

namespace {

// Every entry point of gradcomp.h that takes a comm, called with `c` and
// arguments that are otherwise fine.
struct CommEntryPoint {
  const char* name;
  std::function<gradcompResult_t(gradcompComm_t)> call;
};

std::vector<CommEntryPoint> commEntryPoints() {
  static float buf[64];
  static char blob[256];
  return {
      {"gradcompAllReduce",
       [](gradcompComm_t c) {
         return gradcompAllReduce(buf, buf, 64, ncclFloat32, ncclSum, c, nullptr);
       }},
      {"gradcompAllReduceKeyed",
       [](gradcompComm_t c) {
         return gradcompAllReduceKeyed(buf, buf, 64, ncclFloat32, ncclSum, c, nullptr, 7);
       }},
      {"gradcompReduceScatter",
       [](gradcompComm_t c) {
         return gradcompReduceScatter(buf, buf, 32, ncclFloat32, ncclSum, c, nullptr);
       }},
      {"gradcompReduceScatterKeyed",
       [](gradcompComm_t c) {
         return gradcompReduceScatterKeyed(buf, buf, 32, ncclFloat32, ncclSum, c, nullptr, 7);
       }},
      {"gradcompCommDestroy", [](gradcompComm_t c) { return gradcompCommDestroy(c); }},
      {"gradcompCommAbort", [](gradcompComm_t c) { return gradcompCommAbort(c); }},
      {"gradcompCommStop", [](gradcompComm_t c) { return gradcompCommStop(c); }},
      {"gradcompCommRank",
       [](gradcompComm_t c) {
         int v = 0;
         return gradcompCommRank(c, &v);
       }},
      {"gradcompCommSize",
       [](gradcompComm_t c) {
         int v = 0;
         return gradcompCommSize(c, &v);
       }},
      {"gradcompCommLayout",
       [](gradcompComm_t c) {
         int nodes = 0, local = 0;
         return gradcompCommLayout(c, &nodes, &local);
       }},
      {"gradcompCommForgetBuffer",
       [](gradcompComm_t c) { return gradcompCommForgetBuffer(c, buf); }},
      {"gradcompCommForgetKey", [](gradcompComm_t c) { return gradcompCommForgetKey(c, 7); }},
      {"gradcompCommResetState", [](gradcompComm_t c) { return gradcompCommResetState(c); }},
      {"gradcompCommStateSize",
       [](gradcompComm_t c) {
         size_t bytes = 0;
         return gradcompCommStateSize(c, &bytes);
       }},
      {"gradcompCommSaveState",
       [](gradcompComm_t c) { return gradcompCommSaveState(c, blob, sizeof blob); }},
      {"gradcompCommLoadState",
       [](gradcompComm_t c) { return gradcompCommLoadState(c, blob, sizeof blob); }},
      {"gradcompCommSetGradScale",
       [](gradcompComm_t c) { return gradcompCommSetGradScale(c, 2.0f, nullptr); }},
      {"gradcompCommGetGradScale",
       [](gradcompComm_t c) {
         float scale = 0;
         return gradcompCommGetGradScale(c, &scale);
       }},
      {"gradcompGetStatsSized",
       [](gradcompComm_t c) {
         gradcompStats_t st;
         return gradcompGetStatsSized(c, &st, sizeof st);
       }},
      {"gradcompGetStats",
       [](gradcompComm_t c) {
         gradcompStats_t st;
         return (gradcompGetStats)(c, &st);  // the function, not the header's macro
       }},
      {"gradcompCommRetune", [](gradcompComm_t c) { return gradcompCommRetune(c, nullptr); }},
  };
}

// Each entry point refuses `c` with gradcompInvalidArgument naming it, and
// reads nothing of it (the memory may be freed, or not a comm at all).
void expectRefusedByName(gradcompComm_t c, const std::string& what) {
  char name[96];
  snprintf(name, sizeof name, "comm %p is not a live gradcomp communicator", (void*)c);
  for (const CommEntryPoint& e : commEntryPoints()) {
    EXPECT_EQ(e.call(c), gradcompInvalidArgument) << e.name << " with " << what;
    EXPECT_NE(strstr(gradcompGetLastError(), name), nullptr)
        << e.name << " with " << what << ": " << gradcompGetLastError();
  }
}

// The table above is every function of gradcomp.h with a comm parameter: an
// entry point added there is added here, and tested.
TEST(DeadComm, TheTableHoldsEveryEntryPointTakingAComm) {
#ifndef GRADCOMP_TEST_SOURCE_DIR
#define GRADCOMP_TEST_SOURCE_DIR "."
#endif
  const char* root = getenv("GRADCOMP_SOURCE_DIR");
  const std::string path =
      std::string(root ? root : GRADCOMP_TEST_SOURCE_DIR) + "/include/gradcomp.h";
  std::ifstream f(path);
  ASSERT_TRUE(f.good()) << "cannot read " << path;
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string header = ss.str();
  std::set<std::string> declared, tested;
  const std::regex decl(R"((gradcomp[A-Za-z]+)\(([^()]*)\);)");
  const std::regex commParam(R"(gradcompComm_t\s+comm\s*[,)])");
  for (auto it = std::sregex_iterator(header.begin(), header.end(), decl);
       it != std::sregex_iterator(); ++it) {
    const std::string params = (*it)[2].str() + ")";
    if (std::regex_search(params, commParam)) declared.insert((*it)[1].str());
  }
  for (const CommEntryPoint& e : commEntryPoints()) tested.insert(e.name);
  EXPECT_GE(declared.size(), 20u);
  EXPECT_EQ(declared, tested);
}

// A destroyed or aborted comm (every rank of a flat and of a hierarchical
// world, whose inter-node comms go with them) is refused by every entry
// point, destroy and abort included: before, each read the freed comm (a
// second destroy freed it again).
TEST(DeadComm, EveryEntryPointRefusesADestroyedOrAbortedComm) {
  for (bool abort : {false, true}) {
    for (int localSize : {0, 2}) {
      SCOPED_TRACE(testing::Message()
                   << (abort ? "aborted" : "destroyed") << " localSize=" << localSize);
      const gradcompConfig_t cfg = config(localSize);
      const int n = localSize ? 4 : 2;
      std::vector<gradcompComm_t> comms(n);
      ASSERT_EQ(gradcompCommCreateCpu(n, &cfg, comms.data()), gradcompSuccess);
      for (int r = 0; r < n; ++r) {
        EXPECT_EQ(abort ? gradcompCommAbort(comms[r]) : gradcompCommDestroy(comms[r]),
                  gradcompSuccess);
        expectRefusedByName(comms[r], abort ? "an aborted comm" : "a destroyed comm");
        // The other ranks' comms are still live.
        for (int q = r + 1; q < n; ++q) {
          int rank = -1;
          EXPECT_EQ(gradcompCommRank(comms[q], &rank), gradcompSuccess) << gradcompGetLastError();
          EXPECT_EQ(rank, q);
        }
      }
    }
  }
  // NULL stays what the header says: a no-op for destroy, stop and abort.
  EXPECT_EQ(gradcompCommDestroy(nullptr), gradcompSuccess);
  EXPECT_EQ(gradcompCommStop(nullptr), gradcompSuccess);
  EXPECT_EQ(gradcompCommAbort(nullptr), gradcompSuccess);
}

// A pointer no comm ever had: memory of arbitrary bytes, never read.
TEST(DeadComm, EveryEntryPointRefusesAPointerThatNeverWasAComm) {
  alignas(64) static unsigned char junk[4096];
  memset(junk, 0xa5, sizeof junk);
  expectRefusedByName(reinterpret_cast<gradcompComm_t>(junk), "a pointer to other memory");
}

// A call on one thread while another destroys the comm: the call either
// runs on the live comm (and destroy is refused meanwhile, as for any call
// in progress) or is refused by name once the destroy began; never a read of
// the freed comm.
TEST(DeadComm, ACallBesideADestroyIsServedOrRefused) {
  const gradcompConfig_t cfg = config();
  for (int round = 0; round < 20; ++round) {
    gradcompComm_t c = nullptr;
    ASSERT_EQ(gradcompCommCreateCpu(1, &cfg, &c), gradcompSuccess);
    std::atomic<bool> started{false};
    int served = 0, badRank = 0;
    std::string refusal;
    std::thread caller([&] {
      for (;;) {
        int rank = -1;
        const gradcompResult_t res = gradcompCommRank(c, &rank);
        started = true;
        if (res != gradcompSuccess) {
          refusal = std::string(gradcompGetErrorString(res)) + ": " + gradcompGetLastError();
          return;
        }
        served++;
        badRank += rank != 0;
      }
    });
    while (!started) std::this_thread::yield();
    gradcompResult_t res;
    while ((res = gradcompCommDestroy(c)) != gradcompSuccess) {
      ASSERT_EQ(res, gradcompInvalidUsage) << gradcompGetLastError();
      EXPECT_NE(strstr(gradcompGetLastError(), "call(s) in progress on other threads"), nullptr)
          << gradcompGetLastError();
    }
    caller.join();
    EXPECT_GT(served, 0);
    EXPECT_EQ(badRank, 0);
    char name[96];
    snprintf(name, sizeof name, "comm %p is not a live gradcomp communicator", (void*)c);
    EXPECT_NE(refusal.find(name), std::string::npos) << refusal;
  }
}

}  // namespace
