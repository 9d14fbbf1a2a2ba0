// gradcompCommCreateSocket: the CPU backend over TCP gives, call for call,
// the bits, residuals, stats and state of the in-process world (which the
// other tests check against the serial references), flat and hierarchical,
// for every method and both collectives; and bad input, ranks that make
// different calls, a missing rank or a refused world fail with a sentence,
// never a hang.
#include <gtest/gtest.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "gradcomp.h"
#include "plugin/autotune.h"
#include "plugin/comm.h"
#include "plugin/backends/cpu/root_address.h"
#include "tests/common/auto_checks.h"
#include "tests/common/cpu_world.h"
#include "tests/common/loopback.h"
#include "tests/common/socket_world.h"
#include "tests/common/test_util.h"
#include "tests/common/tsan.h"
#include "tests/common/world_checks.h"

namespace {

using gctest::loopbackRoot;
using gctest::SocketWorld;

// What one rank's buffers hold after a run: the output bytes of every step.
struct Trace {
  std::vector<std::vector<uint8_t>> outputs;
  std::vector<uint8_t> state;
  gradcompStats_t stats = {};
};

size_t typeSize(ncclDataType_t t) {
  return t == ncclFloat16 || t == ncclBfloat16 ? 2 : 4;
}

// Rank r's input of a step, in the type t (fp32 values narrowed by the
// library's own rounding is not needed: the bits are arbitrary but the same
// on both worlds).
std::vector<uint8_t> input(int r, int step, size_t count, ncclDataType_t t) {
  const std::vector<float> x = gctest::normal(count, 1000 * step + 17 * r + count, 1.0f);
  std::vector<uint8_t> out(count * typeSize(t));
  if (t == ncclInt32) {
    for (size_t i = 0; i < count; ++i) {
      const int32_t v = (int32_t)(x[i] * 1000);
      memcpy(out.data() + 4 * i, &v, 4);
    }
  } else if (typeSize(t) == 4) {
    if (count) memcpy(out.data(), x.data(), count * 4);
  } else {
    // The top half of the fp32 bits is a valid bf16 and an arbitrary fp16.
    for (size_t i = 0; i < count; ++i) {
      uint32_t b;
      memcpy(&b, &x[i], 4);
      const uint16_t h = (uint16_t)(b >> 16);
      memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

// `steps` calls of the collective (allreduce, or reduce-scatter when rs) on
// every rank of a world, the same buffers every step, and what each rank saw.
template <typename World>
std::vector<Trace> drive(World& world, size_t count, ncclDataType_t t, ncclRedOp_t op, int steps,
                         bool rs) {
  const int N = world.size();
  std::vector<Trace> traces(N);
  std::vector<std::vector<uint8_t>> bufs(N);
  const size_t esz = typeSize(t);
  const size_t outCount = rs ? count / N : count;
  // Residuals follow the output buffer: the same buffers every step.
  std::vector<std::vector<uint8_t>> outs(N, std::vector<uint8_t>(outCount * esz));
  for (int step = 0; step < steps; ++step) {
    for (int r = 0; r < N; ++r) {
      const std::vector<uint8_t> x = input(r, step, count, t);
      bufs[r].resize(x.size());
      if (!x.empty()) memcpy(bufs[r].data(), x.data(), x.size());
    }
    auto res = world.run([&](int r) {
      // An explicit key: saved state names buffers by it, and the two worlds'
      // buffers lie at different addresses.
      return rs ? gradcompReduceScatterKeyed(bufs[r].data(), outs[r].data(), outCount, t, op,
                                             world.comm(r), nullptr, 0x5eed)
                : gradcompAllReduceKeyed(bufs[r].data(), bufs[r].data(), count, t, op,
                                         world.comm(r), nullptr, 0x5eed);
    });
    for (int r = 0; r < N; ++r) {
      EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << gradcompGetLastError();
      traces[r].outputs.push_back(rs ? outs[r] : bufs[r]);
    }
  }
  for (int r = 0; r < N; ++r) {
    traces[r].state = gctest::savedBufferState(world.comm(r));
    EXPECT_EQ(gradcompGetStats(world.comm(r), &traces[r].stats), gradcompSuccess);
  }
  return traces;
}

void expectSameRun(int N, const gradcompConfig_t& cfg, size_t count, ncclDataType_t t,
                   ncclRedOp_t op, int steps, bool rs = false, const std::string& root = "") {
  SCOPED_TRACE(testing::Message() << "N=" << N << " method=" << cfg.method << " algo=" << cfg.algo
                                  << " localSize=" << cfg.localSize << " type=" << t << " op=" << op
                                  << " count=" << count << " rs=" << rs);
  gctest::CpuWorld cpu(N, cfg);
  SocketWorld tcp(N, cfg, root);
  const std::vector<Trace> want = drive(cpu, count, t, op, steps, rs);
  const std::vector<Trace> got = drive(tcp, count, t, op, steps, rs);
  for (int r = 0; r < N; ++r) {
    for (int s = 0; s < steps; ++s) {
      ASSERT_EQ(got[r].outputs[s], want[r].outputs[s]) << "rank " << r << " step " << s;
    }
    EXPECT_EQ(got[r].state, want[r].state) << "saved state of rank " << r;
    EXPECT_EQ(got[r].stats.bytesOnWire, want[r].stats.bytesOnWire) << "rank " << r;
    if (cfg.localSize != 0) {
      EXPECT_EQ(got[r].stats.bytesInterNode, want[r].stats.bytesInterNode) << "rank " << r;
    } else {
      // Auto: ranks of one host are one node over TCP (as on NCCL), while
      // the in-process world counts every rank as its own node.
      EXPECT_EQ(got[r].stats.bytesInterNode, 0u) << "rank " << r;
    }
    EXPECT_EQ(got[r].stats.callsCompressed, want[r].stats.callsCompressed) << "rank " << r;
    EXPECT_EQ(got[r].stats.callsPassedThrough, want[r].stats.callsPassedThrough) << "rank " << r;
  }
  // And it did compress (or pass through) as the world did, not trivially.
  const bool eligible =
      cfg.method != gradcompMethodNone && t != ncclInt32 && N > 1 && count >= cfg.minElements;
  if (count > 0) {  // an empty call is neither (the two worlds agree on that above)
    EXPECT_EQ(eligible ? got[0].stats.callsCompressed : got[0].stats.callsPassedThrough,
              (uint64_t)steps);
  }
}

gradcompConfig_t withMethod(gradcompMethod_t m, gradcompAlgo_t a = gradcompAlgoAuto) {
  gradcompConfig_t cfg = m == gradcompMethodQsgd || m == gradcompMethodNone
                             ? gctest::qsgdTestConfig()
                             : gctest::sparseTestConfig(m);
  cfg.method = m;
  cfg.algo = a;
  cfg.cpuTimeoutSec = 60;
  // Bit for bit against the in-process world, which never times: auto must
  // neither spend time tuning nor pass calls through.
  cfg.autoTune = 0;
  return cfg;
}

TEST(Socket, QsgdAlgorithmsMatchTheInProcessWorld) {
  for (int N : {2, 3, 4}) {
    for (gradcompAlgo_t a : {gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather}) {
      expectSameRun(N, withMethod(gradcompMethodQsgd, a), 5001, ncclFloat32, ncclSum, 3);
    }
    expectSameRun(N, withMethod(gradcompMethodQsgd), 4099, ncclBfloat16, ncclAvg, 2);
    expectSameRun(N, withMethod(gradcompMethodQsgd), 4099, ncclFloat16, ncclSum, 2);
  }
  gradcompConfig_t elias = withMethod(gradcompMethodQsgd);
  elias.elias = 1;
  expectSameRun(3, elias, 6000, ncclFloat32, ncclSum, 2);
  gradcompConfig_t piped = withMethod(gradcompMethodQsgd, gradcompAlgoTwoShot);
  piped.pipelineBytes = 4096;
  expectSameRun(4, piped, 20000, ncclFloat32, ncclAvg, 2);
}

TEST(Socket, SparseMethodsMatchTheInProcessWorld) {
  for (int N : {2, 4}) {
    for (gradcompMethod_t m : {gradcompMethodTopk, gradcompMethodRandk, gradcompMethodDgc}) {
      expectSameRun(N, withMethod(m), 7000, ncclFloat32, ncclSum, 3);
    }
  }
  expectSameRun(3, withMethod(gradcompMethodTopk), 5000, ncclBfloat16, ncclAvg, 2);
}

TEST(Socket, PassThroughMatchesTheInProcessWorld) {
  // Below minElements, method none and integer types go the uncompressed way.
  gradcompConfig_t small = withMethod(gradcompMethodQsgd);
  small.minElements = 1 << 20;
  for (int N : {2, 3, 5}) {
    expectSameRun(N, small, 1001, ncclFloat32, ncclSum, 1);
    expectSameRun(N, withMethod(gradcompMethodNone), 3, ncclFloat16, ncclAvg, 1);
    expectSameRun(N, withMethod(gradcompMethodQsgd), 777, ncclInt32, ncclMax, 1);
  }
  expectSameRun(4, withMethod(gradcompMethodNone), 0, ncclFloat32, ncclSum, 1);
}

TEST(Socket, HierarchyMatchesTheInProcessWorld) {
  for (int L : {2, 3}) {
    gradcompConfig_t q = withMethod(gradcompMethodQsgd);
    q.localSize = L;
    expectSameRun(2 * L, q, 6007, ncclFloat32, ncclSum, 2);
    q.pipelineBytes = 8192;
    expectSameRun(2 * L, q, 30011, ncclBfloat16, ncclAvg, 2);
    gradcompConfig_t s = withMethod(gradcompMethodTopk);
    s.localSize = L;
    expectSameRun(2 * L, s, 6007, ncclFloat32, ncclSum, 2);
  }
}

TEST(Socket, ReduceScatterMatchesTheInProcessWorld) {
  for (int N : {2, 4}) {
    expectSameRun(N, withMethod(gradcompMethodQsgd), N * 3000, ncclFloat32, ncclSum, 2, true);
    expectSameRun(N, withMethod(gradcompMethodTopk), N * 3000, ncclBfloat16, ncclAvg, 2, true);
    expectSameRun(N, withMethod(gradcompMethodNone), N * 301, ncclInt32, ncclSum, 1, true);
  }
  gradcompConfig_t h = withMethod(gradcompMethodQsgd);
  h.localSize = 2;
  expectSameRun(4, h, 4 * 2000, ncclFloat32, ncclSum, 2, true);
}

// World sizes that are not powers of two, a recvcount under one bucket, the
// hierarchy with nodes of 3 (pipelined too), DGC with momentum correction and
// rand-k, and DGC's momentum pass of a count under minElements: each as the
// in-process world, bit for bit, state included.
TEST(Socket, ReduceScatterOddWorldsMatchTheInProcessWorld) {
  for (int N : {3, 5}) {
    expectSameRun(N, withMethod(gradcompMethodQsgd), N * 517, ncclBfloat16, ncclAvg, 2, true);
    expectSameRun(N, withMethod(gradcompMethodQsgd), N * 7, ncclFloat32, ncclSum, 2, true);
    gradcompConfig_t dgc = withMethod(gradcompMethodDgc);
    dgc.momentumCorrection = 1;
    dgc.momentum = 0.9f;
    expectSameRun(N, dgc, N * 3001, ncclFloat32, ncclAvg, 3, true);
    dgc.minElements = 1u << 30;  // every call DGC's momentum pass
    expectSameRun(N, dgc, N * 301, ncclFloat16, ncclSum, 3, true);
    expectSameRun(N, withMethod(gradcompMethodRandk), N * 999, ncclFloat32, ncclSum, 2, true);
  }
  gradcompConfig_t h = withMethod(gradcompMethodQsgd);
  h.localSize = 3;
  expectSameRun(6, h, 6 * 1001, ncclFloat16, ncclAvg, 2, true);
  h.pipelineBytes = 4096;
  expectSameRun(6, h, 6 * 3001, ncclFloat32, ncclSum, 2, true);
  gradcompConfig_t t = withMethod(gradcompMethodTopk);
  t.localSize = 3;
  expectSameRun(6, t, 6 * 2000, ncclBfloat16, ncclSum, 2, true);
}

TEST(Socket, OneRankNeedsNoPeers) {
  expectSameRun(1, withMethod(gradcompMethodQsgd), 5000, ncclFloat32, ncclSum, 1);
}

// Ranks that call with different counts: every rank fails with a sentence
// naming the disagreement (not garbage, not a hang), and the comm refuses
// every later call.
TEST(Socket, DifferentCallsFailOnEveryRank) {
  gradcompConfig_t cfg = withMethod(gradcompMethodQsgd);
  cfg.cpuTimeoutSec = 20;
  SocketWorld world(3, cfg);
  std::vector<std::vector<float>> bufs(3, std::vector<float>(6000, 1.0f));
  std::vector<std::string> why(3);
  auto res = world.run([&](int r) {
    const size_t count = r == 2 ? 5000 : 6000;
    gradcompResult_t x = gradcompAllReduce(bufs[r].data(), bufs[r].data(), count, ncclFloat32,
                                           ncclSum, world.comm(r), nullptr);
    why[r] = gradcompGetLastError();
    return x;
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_NE(res[r], gradcompSuccess) << "rank " << r;
    EXPECT_TRUE(why[r].find("count=") != std::string::npos ||
                why[r].find("lost its connection") != std::string::npos ||
                why[r].find("differ") != std::string::npos)
        << why[r];
  }
  // Whichever rank read a mismatched header first names both counts; the
  // others may only see it close its connections.
  int named = 0;
  for (int r = 0; r < 3; ++r) {
    named += why[r].find("count=5000") != std::string::npos &&
             why[r].find("count=6000") != std::string::npos;
  }
  EXPECT_GE(named, 1) << why[0] << "\n" << why[1] << "\n" << why[2];
  float one[20000] = {};
  EXPECT_NE(gradcompAllReduce(one, one, 20000, ncclFloat32, ncclSum, world.comm(0), nullptr),
            gradcompSuccess);
  EXPECT_NE(std::string(gradcompGetLastError()).find("destroy the comm"), std::string::npos)
      << gradcompGetLastError();
}

// Ranks of one call in different collectives of the transport (per-buffer
// states that diverged): the rank that reads its peer's header first names
// both collectives by name, with their sizes; the other may only see the
// connection close.
TEST(Socket, DifferentCollectivesAreNamed) {
  gradcompConfig_t cfg = withMethod(gradcompMethodQsgd);
  cfg.cpuTimeoutSec = 20;
  SocketWorld world(2, cfg);
  std::vector<std::vector<float>> send(2, std::vector<float>(8, 1.0f)), recv = send;
  std::vector<std::string> why(2);
  auto res = world.run([&](int r) {
    gc::Transport& t = *world.comm(r)->transport;
    const gradcompResult_t x = r == 0 ? t.allGather(send[r].data(), recv[r].data(), 8)
                                      : t.allReduceSumFloat(send[r].data(), recv[r].data(), 3);
    why[r] = gradcompGetLastError();
    return x;
  });
  int named = 0;
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(res[r], gradcompSuccess) << "rank " << r;
    named += why[r].find("the allgather of 8 bytes per rank") != std::string::npos &&
             why[r].find("the float sum of 3 elements") != std::string::npos;
  }
  EXPECT_GE(named, 1) << why[0] << "\n" << why[1];
}

// GRADCOMP_CHECK_CALLS, a rank waiting long (cpuTimeoutSec = 60) for its
// peers.
gradcompConfig_t checkingCalls() {
  gradcompConfig_t cfg = withMethod(gradcompMethodQsgd);
  cfg.checkCalls = 1, cfg.cpuTimeoutSec = 60;
  return cfg;
}

// An in-place allreduce of 6000 ones on every rank of world, rank r's with
// the datatype typeOf(r): each rank's result, and its last error in why[r].
std::vector<gradcompResult_t> allReduceAs(SocketWorld& world,
                                          const std::function<ncclDataType_t(int)>& typeOf,
                                          std::vector<std::string>* why) {
  std::vector<std::vector<float>> bufs(world.size(), std::vector<float>(6000, 1.0f));
  why->assign(world.size(), "");
  return world.run([&](int r) {
    gradcompResult_t x = gradcompAllReduce(bufs[r].data(), bufs[r].data(), 6000, typeOf(r), ncclSum,
                                           world.comm(r), nullptr);
    (*why)[r] = gradcompGetLastError();
    return x;
  });
}

// GRADCOMP_CHECK_CALLS: a datatype one rank alone gets wrong (its peers'
// is right) fails every rank at once, instead of leaving the peers waiting
// until cpuTimeoutSec (long here) and naming nobody (before 2026-12-06). The
// refusing rank returns its own error and its peers name it, at least the
// one that reads its record first: a peer that loses its connection to
// another before the record has reached it says so instead (the late peers
// of PeersLateToARefusedCallNameIt, whose record is there, always name it).
TEST(Socket, ADatatypeRefusedOnOneRankFailsEveryRank) {
  SocketWorld world(3, checkingCalls());
  std::vector<std::string> why;
  const auto res = allReduceAs(
      world, [](int r) { return r == 1 ? ncclNumTypes : ncclFloat32; }, &why);  // no NCCL type
  EXPECT_EQ(res[1], gradcompInvalidArgument) << why[1];
  const std::string badType = "datatype=" + std::to_string((int)ncclNumTypes);
  EXPECT_NE(why[1].find(badType), std::string::npos) << why[1];
  int named = 0;
  for (int r = 0; r < 3; ++r) {
    if (r == 1) continue;
    EXPECT_NE(res[r], gradcompSuccess) << "rank " << r;
    EXPECT_EQ(why[r].find("waited"), std::string::npos) << why[r];
    named +=
        why[r].find("rank 1 refused this call's arguments (its " + badType) != std::string::npos;
  }
  EXPECT_GE(named, 1) << why[0] << "\n" << why[2];
}

// The same refusal seen by peers that come to the call after the refusing
// rank and the first peer failed on each other's records and closed their
// connections: they too name the refusal, not a lost connection. The
// refusing rank sends its record to every peer before it reads any, and a
// rank that loses a connection first reads the headers already waiting on
// the others (before 2026-12-07 the refusing rank could fail on rank 0's
// record before it sent its own to the others, and they said "lost its
// connection"). Several times (the first peer's record reaches the refusing
// rank at another moment in each).
TEST(Socket, PeersLateToARefusedCallNameIt) {
  const std::string badType = "datatype=" + std::to_string((int)ncclNumTypes);
  for (int n : {3, 4}) {
    for (int run = 0; run < 8; ++run) {
      SCOPED_TRACE(testing::Message() << n << " ranks, run " << run);
      SocketWorld world(n, checkingCalls());
      std::vector<std::vector<float>> bufs(n, std::vector<float>(6000, 1.0f));
      std::vector<std::string> why(n);
      auto call = [&](int r) {
        const gradcompResult_t x =
            gradcompAllReduce(bufs[r].data(), bufs[r].data(), 6000,
                              r == 1 ? ncclNumTypes : ncclFloat32, ncclSum, world.comm(r), nullptr);
        why[r] = gradcompGetLastError();
        return x;
      };
      // Ranks 0 and 1 first, to their end; then the others.
      std::vector<gradcompResult_t> res = gctest::runOnThreads(2, call);
      const std::vector<gradcompResult_t> late =
          gctest::runOnThreads(n - 2, [&](int i) { return call(i + 2); });
      res.insert(res.end(), late.begin(), late.end());
      EXPECT_EQ(res[1], gradcompInvalidArgument) << why[1];
      EXPECT_NE(why[1].find(badType), std::string::npos) << why[1];
      for (int r = 0; r < n; ++r) {
        if (r == 1) continue;
        EXPECT_EQ(res[r], gradcompInvalidUsage) << "rank " << r << ": " << why[r];
        EXPECT_NE(why[r].find("rank 1 refused this call's arguments (its " + badType),
                  std::string::npos)
            << "rank " << r << ": " << why[r];
      }
      if (::testing::Test::HasFailure()) return;
    }
  }
}

// GRADCOMP_CHECK_CALLS: a call every rank refuses, each for a value of its
// own (datatypes that are no NCCL type, each rank's another), exchanges
// nothing, so it leaves the comm as it was: the next call on every rank runs.
TEST(Socket, ACallEveryRankRefusesDifferentlyLeavesTheCommUsable) {
  SocketWorld world(3, checkingCalls());
  std::vector<std::string> why;
  auto res = allReduceAs(
      world, [](int r) { return (ncclDataType_t)((int)ncclNumTypes + r); }, &why);  // no NCCL type
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(res[r], gradcompInvalidArgument) << "rank " << r << ": " << why[r];
    const std::string mine = "datatype=" + std::to_string((int)ncclNumTypes + r);
    EXPECT_NE(why[r].find(mine), std::string::npos) << "rank " << r << ": " << why[r];
  }
  res = allReduceAs(
      world, [](int) { return ncclFloat32; }, &why);
  for (int r = 0; r < 3; ++r) EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << why[r];
}

TEST(Socket, AMissingRankTimesOut) {
  gradcompConfig_t cfg = withMethod(gradcompMethodQsgd);
  cfg.cpuTimeoutSec = 0.5f;
  const std::string root = loopbackRoot();
  gradcompComm_t c = nullptr;
  // Rank 0 of 2 alone: nobody connects.
  EXPECT_EQ(gradcompCommCreateSocket(2, 0, root.c_str(), &cfg, &c), gradcompSystemError);
  EXPECT_NE(std::string(gradcompGetLastError()).find("timed out"), std::string::npos)
      << gradcompGetLastError();
  EXPECT_EQ(c, nullptr);
  // Rank 1 of 2 alone: nobody listens.
  EXPECT_EQ(gradcompCommCreateSocket(2, 1, root.c_str(), &cfg, &c), gradcompSystemError);
  EXPECT_NE(std::string(gradcompGetLastError()).find("cannot connect to rank 0"), std::string::npos)
      << gradcompGetLastError();

  // A rank that stops making calls: the other waits cpuTimeoutSec, then fails.
  // The world's set-up is a healthy one (both ranks come): 0.5 s is within
  // reach of a loaded machine's delay in starting a rank's thread, so the
  // world waits 3 s, which the call below then waits out.
  gradcompConfig_t patient = cfg;
  patient.cpuTimeoutSec = 3.0f;
  SocketWorld world(2, patient);
  std::vector<float> x(5000, 1.0f);
  EXPECT_EQ(
      gradcompAllReduce(x.data(), x.data(), x.size(), ncclFloat32, ncclSum, world.comm(0), nullptr),
      gradcompSystemError);
  EXPECT_NE(std::string(gradcompGetLastError()).find("waited"), std::string::npos)
      << gradcompGetLastError();
}

// A rank's process killed (SIGKILL) in the middle of its calls: the kernel
// closes its sockets, so the other ranks, in the same call or the next, fail
// at once with gradcompSystemError naming the rank they lost, not after
// cpuTimeoutSec (120 s here), and their comms then refuse every call
// ("destroy the comm"), as an NCCL comm after an error. Rank 1 is a forked
// process (no thread of the test runs yet at the fork); ranks 0 and 2 are
// threads here.
TEST(Socket, ARankKilledMidCallFailsTheOthersAtOnce) {
#ifdef GC_TEST_TSAN
  GTEST_SKIP() << "ThreadSanitizer does not support fork() in a multi-threaded process";
#endif
  gradcompConfig_t cfg = withMethod(gradcompMethodQsgd);
  cfg.cpuTimeoutSec = 120;
  const std::string root = loopbackRoot();
  const size_t count = size_t(1) << 20;
  const pid_t parent = getpid();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Ends with the test's process, however that ends (a sanitizer's abort
    // skips the reaper below), and once its calls fail: never left spinning
    // on the test's output pipe.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    gradcompComm_t c = nullptr;
    if (gradcompCommCreateSocket(3, 1, root.c_str(), &cfg, &c) != gradcompSuccess) _exit(1);
    std::vector<float> x(count, 1.0f);
    while (gradcompAllReduce(x.data(), x.data(), count, ncclFloat32, ncclSum, c, nullptr) ==
           gradcompSuccess) {
    }
    _exit(0);
  }
  // Killed however the test ends.
  struct Reaper {
    pid_t pid;
    ~Reaper() {
      kill(pid, SIGKILL);
      int status = 0;
      waitpid(pid, &status, 0);
    }
  } reaper{child};
  std::vector<gradcompComm_t> comms(3, nullptr);
  std::vector<gradcompResult_t> res(3, gradcompSuccess);
  std::vector<std::string> why(3);
  std::atomic<int> calls{0}, failed{0};  // res[] is the rank threads' own until joined
  std::vector<std::thread> ranks;
  for (int r : {0, 2}) {
    ranks.emplace_back([&, r] {
      res[r] = gradcompCommCreateSocket(3, r, root.c_str(), &cfg, &comms[r]);
      std::vector<float> x(count, 1.0f);
      while (res[r] == gradcompSuccess) {
        calls++;
        res[r] =
            gradcompAllReduce(x.data(), x.data(), count, ncclFloat32, ncclSum, comms[r], nullptr);
      }
      why[r] = gradcompGetLastError();
      failed++;
    });
  }
  // A few calls made, the next ones under way.
  while (calls.load() < 6 && failed.load() == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const auto t0 = std::chrono::steady_clock::now();
  kill(child, SIGKILL);
  for (auto& t : ranks) t.join();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 60.0);
  std::vector<float> x(count, 1.0f);
  for (int r : {0, 2}) {
    ASSERT_NE(comms[r], nullptr) << "rank " << r << ": " << why[r];
    EXPECT_EQ(res[r], gradcompSystemError) << "rank " << r << ": " << why[r];
    EXPECT_NE(why[r].find("lost its connection to rank"), std::string::npos) << why[r];
    EXPECT_EQ(gradcompAllReduce(x.data(), x.data(), count, ncclFloat32, ncclSum, comms[r], nullptr),
              gradcompInvalidUsage);
    EXPECT_NE(std::string(gradcompGetLastError()).find("destroy the comm"), std::string::npos)
        << gradcompGetLastError();
    EXPECT_EQ(gradcompCommDestroy(comms[r]), gradcompSuccess);
  }
}

// Rank 0's port held by another listener: rank 0 fails at once, naming the
// address and the system's reason, and makes no comm.
TEST(Socket, ARootPortInUseIsNamed) {
  const int port = gctest::freePort();
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((uint16_t)port);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(listen(fd, 8), 0);
  const gradcompConfig_t cfg = withMethod(gradcompMethodQsgd);
  gradcompComm_t c = nullptr;
  EXPECT_EQ(gradcompCommCreateSocket(2, 0, loopbackRoot(port).c_str(), &cfg, &c),
            gradcompSystemError);
  const std::string why = gradcompGetLastError();
  EXPECT_NE(why.find("cannot listen at 127.0.0.1:" + std::to_string(port)), std::string::npos)
      << why;
  EXPECT_NE(why.find("Address already in use"), std::string::npos) << why;
  EXPECT_EQ(c, nullptr);
  close(fd);
}

// IPv6 roots, bracketed or not: the same bits as the in-process world, with
// every rank's listener and connections on IPv6 (a machine without IPv6
// loopback skips, saying so).
bool ipv6Loopback(int port) {
  const int fd = socket(AF_INET6, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in6 a = {};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  a.sin6_port = htons((uint16_t)port);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

TEST(Socket, Ipv6RootsMatchTheInProcessWorld) {
  const int port = gctest::freePort();
  if (!ipv6Loopback(port)) GTEST_SKIP() << "this machine cannot bind [::1]:" << port;
  gradcompConfig_t cfg = withMethod(gradcompMethodQsgd);
  expectSameRun(3, cfg, 5000, ncclFloat32, ncclSum, 2, false, "[::1]:" + std::to_string(port));
  const int port2 = gctest::freePort();
  if (!ipv6Loopback(port2)) GTEST_SKIP() << "this machine cannot bind [::1]:" << port2;
  expectSameRun(3, withMethod(gradcompMethodDgc), 5000, ncclFloat32, ncclSum, 2, false,
                "[::1]:" + std::to_string(port2));
}

TEST(Socket, BadArgumentsAreNamed) {
  gradcompComm_t c = nullptr;
  gradcompConfig_t cfg = withMethod(gradcompMethodQsgd);
  cfg.cpuTimeoutSec = 0.5f;
  struct Case {
    int nranks, rank;
    const char* root;
    const char* says;
  } cases[] = {
      {0, 0, "127.0.0.1:1", "nranks=0"},
      {2, 2, "127.0.0.1:1", "rank=2"},
      {2, -1, "127.0.0.1:1", "rank=-1"},
      {2, 1, nullptr, "root address is NULL"},
      {2, 1, "", "empty"},
      {2, 1, "127.0.0.1", "not \"host:port\""},
      {2, 1, "127.0.0.1:70000", "70000"},
      {2, 1, "127.0.0.1:x1", "\"x1\""},
      {2, 1, "127.0.0.1:+5000", "\"+5000\""},
      {2, 1, "127.0.0.1: 5000", "\" 5000\""},
      {2, 1, "no-such-host.invalid:1234", "no-such-host.invalid"},
      {2, 1, "[::1]", "has no port"},
      {2, 1, "[::1:5000", "unbalanced brackets"},
      {2, 1, "::1]:5000", "unbalanced brackets"},
      // ::1:5000 is an address itself: the port is not guessed.
      {2, 1, "::1:5000", "ambiguous: an IPv6 host goes in brackets, as \"[::1]:5000\""},
      {2, 1, "fe80::1:80", "as \"[fe80::1]:80\""},
      // A control character or a byte past ASCII is written out, never raw
      // in the sentence: a CR (the port from a CRLF environment file) sent
      // the cursor back over it, which then read "port 29500 is out of range".
      {2, 1, "127.0.0.1:29500\r", "port \"29500\\r\" is out of range 1..65535"},
      {2, 1, "127.0.0.1\r:29500", "host \"127.0.0.1\\r\" does not resolve"},
      {2, 1, "no\x1b[2Jhost.invalid:1", "host \"no\\x1b[2Jhost.invalid\""},
      {2, 1, "h\xc3\xa9.invalid:1", "host \"h\\xc3\\xa9.invalid\""},
      {2, 1, "::1:\"5\"", "as \"[::1]:\\\"5\\\"\""},
  };
  for (const Case& k : cases) {
    EXPECT_EQ(gradcompCommCreateSocket(k.nranks, k.rank, k.root, &cfg, &c), gradcompInvalidArgument)
        << (k.root ? k.root : "(null)");
    const std::string why = gradcompGetLastError();
    EXPECT_NE(why.find(k.says), std::string::npos) << why;
    for (char ch : why) EXPECT_TRUE(ch >= 0x20 && ch < 0x7f) << "a raw byte in: " << why;
  }
  EXPECT_EQ(gradcompCommCreateSocket(2, 0, "127.0.0.1:1", &cfg, nullptr), gradcompInvalidArgument);
}

// Rank 0 and rank 1 disagree on the world's size: both refuse it at once.
// Rank 0 listens on a port anyone can reach: a connection that is not a
// rank (a health check, a port scan) sending other bytes is dropped, and the
// world forms from the ranks that come after it. The stray connects and sends
// before rank 1 starts, so rank 0 accepts it first (the backlog is FIFO).
TEST(Socket, AStrayConnectionToTheRootIsDropped) {
  gradcompConfig_t cfg = withMethod(gradcompMethodQsgd);
  cfg.cpuTimeoutSec = 30;
  const int port = gctest::freePort();
  const std::string root = loopbackRoot(port);
  gradcompComm_t c0 = nullptr, c1 = nullptr;
  gradcompResult_t r0 = gradcompInternalError, r1 = gradcompInternalError;
  std::string w0, w1;
  std::thread t0([&] {
    r0 = gradcompCommCreateSocket(2, 0, root.c_str(), &cfg, &c0);
    w0 = gradcompGetLastError();
  });
  const int stray = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(stray, 0);
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((uint16_t)port);
  bool connected = false;
  for (int i = 0; i < 1000 && !connected; ++i) {
    connected = connect(stray, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    if (!connected) usleep(10000);
  }
  EXPECT_TRUE(connected) << "rank 0 never listened on " << root;
  const char junk[32] = "GET / HTTP/1.0\r\n\r\n";
  EXPECT_EQ(send(stray, junk, sizeof junk, MSG_NOSIGNAL), (ssize_t)sizeof junk);
  std::thread t1([&] {
    r1 = gradcompCommCreateSocket(2, 1, root.c_str(), &cfg, &c1);
    w1 = gradcompGetLastError();
  });
  t0.join();
  t1.join();
  close(stray);
  EXPECT_EQ(r0, gradcompSuccess) << w0;
  EXPECT_EQ(r1, gradcompSuccess) << w1;
  gradcompCommDestroy(c0);
  gradcompCommDestroy(c1);
}

TEST(Socket, DisagreementOnTheWorldIsRefused) {
  gradcompConfig_t cfg = withMethod(gradcompMethodQsgd);
  cfg.cpuTimeoutSec = 10;
  const std::string root = loopbackRoot();
  gradcompComm_t c0 = nullptr, c1 = nullptr;
  gradcompResult_t r0, r1;
  std::string w0, w1;
  std::thread t0([&] {
    r0 = gradcompCommCreateSocket(2, 0, root.c_str(), &cfg, &c0);
    w0 = gradcompGetLastError();
  });
  std::thread t1([&] {
    r1 = gradcompCommCreateSocket(3, 1, root.c_str(), &cfg, &c1);
    w1 = gradcompGetLastError();
  });
  t0.join();
  t1.join();
  EXPECT_EQ(r0, gradcompInvalidArgument);
  EXPECT_EQ(r1, gradcompInvalidArgument);
  EXPECT_NE(w0.find("nranks=3"), std::string::npos) << w0;
  EXPECT_NE(w1.find("nranks=3"), std::string::npos) << w1;
  EXPECT_EQ(c0, nullptr);
  EXPECT_EQ(c1, nullptr);

  // Settings that shape the exchange must agree too (the set-up vote).
  const std::string root2 = loopbackRoot();
  gradcompConfig_t other = cfg;
  other.bits = 3;
  std::thread u0([&] {
    r0 = gradcompCommCreateSocket(2, 0, root2.c_str(), &cfg, &c0);
    w0 = gradcompGetLastError();
  });
  std::thread u1([&] {
    r1 = gradcompCommCreateSocket(2, 1, root2.c_str(), &other, &c1);
    w1 = gradcompGetLastError();
  });
  u0.join();
  u1.join();
  EXPECT_EQ(r0, gradcompInvalidArgument) << w0;
  EXPECT_EQ(r1, gradcompInvalidArgument) << w1;
  EXPECT_EQ(w0, w1);
  gradcompCommDestroy(c0);
  gradcompCommDestroy(c1);
}

// Two processes started as the same rank (a launcher's mistake): rank 0
// refuses the world naming the rank given twice, and both of them hear why.
// Until 2026-12-07 the sentence named a disagreement on nranks that was none
// ("rank 1 says nranks=3 while rank 0 has nranks=3").
TEST(Socket, ARankGivenTwiceIsNamed) {
  gradcompConfig_t cfg = withMethod(gradcompMethodQsgd);
  cfg.cpuTimeoutSec = 10;
  const std::string root = loopbackRoot();
  const int ranks[3] = {0, 1, 1};
  gradcompComm_t c[3] = {nullptr, nullptr, nullptr};
  gradcompResult_t res[3];
  std::string why[3];
  std::vector<std::thread> ts;
  for (int i = 0; i < 3; ++i) {
    ts.emplace_back([&, i] {
      res[i] = gradcompCommCreateSocket(3, ranks[i], root.c_str(), &cfg, &c[i]);
      why[i] = gradcompGetLastError();
    });
  }
  for (auto& t : ts) t.join();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(res[i], gradcompInvalidArgument) << "rank " << ranks[i] << ": " << why[i];
    EXPECT_NE(why[i].find("two ranks say they are rank 1"), std::string::npos)
        << "rank " << ranks[i] << ": " << why[i];
    EXPECT_EQ(c[i], nullptr);
  }
}

// Rank 0 refuses a world (here a rank that says nranks=5 of 4) as soon as it
// reads that rank's hello: the ranks whose hellos had come but were not read
// yet (accepted, or still in the listener's queue) hear its verdict too,
// with the reason, rather than a reset connection (until 2026-12-07). The
// ranks are raw connections speaking socket.cc's hello, all connected, the
// refused one first, and its hello sent last, so that rank 0 can refuse
// only once every hello has come. Several times (rank 0 reads a varying
// number of the others' hellos before the refused one).
TEST(Socket, RanksWaitingAtARefusedWorldHearWhy) {
  struct Hello {  // socket.cc's, byte for byte
    uint32_t magic;
    int32_t nranks, rank;
    uint16_t port, pad;
  };
  struct Verdict {
    uint32_t magic;
    int32_t ok, nranks;
    char why[188];
  };
  gradcompConfig_t cfg = withMethod(gradcompMethodQsgd);
  cfg.cpuTimeoutSec = 30;
  for (int run = 0; run < 20; ++run) {
    SCOPED_TRACE(testing::Message() << "run " << run);
    const int port = gctest::freePort();
    const std::string root = loopbackRoot(port);
    gradcompComm_t c0 = nullptr;
    gradcompResult_t r0 = gradcompInternalError;
    std::string w0;
    std::thread t0([&] {
      r0 = gradcompCommCreateSocket(4, 0, root.c_str(), &cfg, &c0);
      w0 = gradcompGetLastError();
    });
    sockaddr_in a = {};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    // fds[0]: rank 3, refused; fds[1], fds[2]: ranks 1 and 2.
    int fds[3];
    for (int i = 0; i < 3; ++i) {
      fds[i] = socket(AF_INET, SOCK_STREAM, 0);
      bool connected = false;
      for (int k = 0; k < 1000 && !connected; ++k) {
        connected = connect(fds[i], reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
        if (!connected) {
          close(fds[i]);
          fds[i] = socket(AF_INET, SOCK_STREAM, 0);
          usleep(10000);
        }
      }
      EXPECT_TRUE(connected) << "rank 0 never listened on " << root;
    }
    for (int i : {1, 2, 0}) {
      const Hello h = {0x47435348, i == 0 ? 5 : 4, i == 0 ? 3 : i, 1, 0};
      EXPECT_EQ(send(fds[i], &h, sizeof h, MSG_NOSIGNAL), (ssize_t)sizeof h);
    }
    for (int i = 0; i < 3; ++i) {
      Verdict v = {};
      size_t got = 0;
      while (got < sizeof v) {
        const ssize_t n = recv(fds[i], reinterpret_cast<char*>(&v) + got, sizeof v - got, 0);
        if (n <= 0) break;
        got += (size_t)n;
      }
      EXPECT_EQ(got, sizeof v) << "connection " << i << " got no verdict";
      EXPECT_EQ(v.ok, 0) << "connection " << i;
      v.why[sizeof v.why - 1] = '\0';
      EXPECT_NE(std::string(v.why).find("rank 3 says nranks=5 while rank 0 has nranks=4"),
                std::string::npos)
          << "connection " << i << ": " << v.why;
      close(fds[i]);
    }
    t0.join();
    EXPECT_EQ(r0, gradcompInvalidArgument) << w0;
    EXPECT_EQ(c0, nullptr);
    if (::testing::Test::HasFailure()) return;
  }
}

// GRADCOMP_AUTO over TCP: a socket comm times on the host clock (one process
// per rank over real links), the ranks agree on the slowest figures over the
// transport, and every rank decides alike. The calls auto passes through are
// the uncompressed call's bits (the in-process world with method none); the
// ones it compresses are the forced compression's (autoTune=0).

using gctest::autoFigures;

gradcompConfig_t autoOn() {
  gradcompConfig_t cfg = withMethod(gradcompMethodQsgd);
  cfg.autoTune = 1;
  return cfg;
}

gradcompConfig_t methodNone() {
  gradcompConfig_t cfg = withMethod(gradcompMethodNone);
  return cfg;
}

// The in-process world a socket auto world's calls must equal: forced
// compression when `compress`, else the uncompressed call.
void expectOutputsOf(const std::vector<Trace>& got, int N, bool compress, size_t count,
                     ncclDataType_t t, int steps, bool rs) {
  gctest::CpuWorld want(N, compress ? withMethod(gradcompMethodQsgd) : methodNone());
  const std::vector<Trace> w = drive(want, count, t, ncclSum, steps, rs);
  for (int r = 0; r < N; ++r) {
    for (int s = 0; s < steps; ++s)
      ASSERT_EQ(got[r].outputs[s], w[r].outputs[s]) << "rank " << r << " step " << s;
    if (compress) EXPECT_EQ(got[r].state, w[r].state) << "saved state of rank " << r;
  }
}

TEST(SocketAuto, SocketCommsTimeTheInProcessWorldDoesNot) {
  SocketWorld tcp(2, autoOn());
  gctest::CpuWorld cpu(2, autoOn());
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(tcp.comm(r)->autoState.timeOnHost) << r;
    EXPECT_FALSE(cpu.comm(r)->autoState.timeOnHost) << r;
  }
}

TEST(SocketAuto, FiguresFavouringTheUncompressedCallPassThrough) {
  const int N = 3;
  for (bool rs : {false, true}) {
    SCOPED_TRACE(rs ? "reduce-scatter" : "allreduce");
    SocketWorld tcp(N, autoOn());
    for (int r = 0; r < N; ++r) gc::autoInjectFigures(tcp.comm(r), autoFigures(16, 32, 48, 80));
    const size_t count = N * 2731;
    const std::vector<Trace> got = drive(tcp, count, ncclFloat32, ncclSum, 2, rs);
    for (int r = 0; r < N; ++r) {
      const gc::AutoDecision& d =
          rs ? tcp.comm(r)->autoState.reduceScatter : tcp.comm(r)->autoState.allReduce;
      EXPECT_TRUE(d.timed) << r;
      EXPECT_EQ(got[r].stats.callsAutoPassed, 2u) << r;
      EXPECT_EQ(got[r].stats.callsPassedThrough, 2u) << r;
      EXPECT_EQ(got[r].stats.callsCompressed, 0u) << r;
      EXPECT_EQ(got[r].stats.bytesOnWire, 0u) << r;
    }
    expectOutputsOf(got, N, false, count, ncclFloat32, 2, rs);
  }
}

TEST(SocketAuto, FiguresFavouringCompressionCompress) {
  const int N = 3;
  for (bool rs : {false, true}) {
    SCOPED_TRACE(rs ? "reduce-scatter" : "allreduce");
    SocketWorld tcp(N, autoOn());
    for (int r = 0; r < N; ++r) gc::autoInjectFigures(tcp.comm(r), autoFigures(64, 128, 32, 64));
    const size_t count = N * 2731;
    const std::vector<Trace> got = drive(tcp, count, ncclFloat32, ncclSum, 2, rs);
    for (int r = 0; r < N; ++r) {
      EXPECT_EQ(got[r].stats.callsAutoPassed, 0u) << r;
      EXPECT_EQ(got[r].stats.callsCompressed, 2u) << r;
    }
    expectOutputsOf(got, N, true, count, ncclFloat32, 2, rs);
  }
}

// Each rank measured differently; the slowest figures (agreed over TCP) are a
// crossover at 5120 fp32 elements that rank 0's own figures alone put below
// 5000: every rank passes 5000 through and compresses 6000.
TEST(SocketAuto, RanksWithDifferentFiguresDecideAlike) {
  const int N = 4;
  SocketWorld tcp(N, autoOn());
  for (int r = 0; r < N; ++r) {
    const float d = (float)(N - 1 - r);
    gc::autoInjectFigures(tcp.comm(r), autoFigures(16 - d, 80 - 2 * d, 48 - d, 80 - 4 * d));
  }
  ASSERT_TRUE(gc::autoRange(autoFigures(13, 74, 45, 68), 4).contains(5000));
  const std::vector<Trace> passed = drive(tcp, 5000, ncclFloat32, ncclSum, 1, false);
  for (int r = 0; r < N; ++r) {
    const gc::AutoDecision& a = tcp.comm(r)->autoState.allReduce;
    gctest::expectAgreedCrossover(a, r);
    EXPECT_EQ(passed[r].stats.callsAutoPassed, 1u) << r;
  }
  expectOutputsOf(passed, N, false, 5000, ncclFloat32, 1, false);
  const std::vector<Trace> compressed = drive(tcp, 6000, ncclFloat32, ncclSum, 1, false);
  for (int r = 0; r < N; ++r) {
    EXPECT_EQ(compressed[r].stats.callsCompressed, 1u) << r;
    EXPECT_EQ(compressed[r].stats.callsAutoPassed, 1u) << r;
  }
  expectOutputsOf(compressed, N, true, 6000, ncclFloat32, 1, false);
}

// The timing itself over loopback (small sizes, to keep the test short; the
// path is the one the default 1 MB and 32 MB take): it completes, every rank
// holds the same agreed figures and ranges, the caller's stats and state are
// untouched, and the call then does what the ranges say, bit for bit. No
// timing is asserted: either decision is right here.
TEST(SocketAuto, RealTimingOnLoopbackAgrees) {
  const int N = 3;
  for (bool rs : {false, true}) {
    SCOPED_TRACE(rs ? "reduce-scatter" : "allreduce");
    SocketWorld tcp(N, autoOn());
    for (int r = 0; r < N; ++r) {
      gc::AutoState& a = tcp.comm(r)->autoState;
      a.timedCounts[0] = 3 << 10;
      a.timedCounts[1] = 3 << 14;
    }
    const size_t count = N * 4000;
    const std::vector<Trace> got = drive(tcp, count, ncclFloat32, ncclSum, 2, rs);
    const gc::AutoDecision& d0 =
        rs ? tcp.comm(0)->autoState.reduceScatter : tcp.comm(0)->autoState.allReduce;
    ASSERT_TRUE(d0.timed);
    EXPECT_EQ(gc::autoCheckFigures(d0.figures), gradcompSuccess) << gradcompGetLastError();
    EXPECT_EQ(d0.timedCompressed, 2u * (gc::kAutoWarmupCalls + gc::kAutoTimedCalls));
    for (int r = 0; r < N; ++r) {
      const gc::AutoDecision& d =
          rs ? tcp.comm(r)->autoState.reduceScatter : tcp.comm(r)->autoState.allReduce;
      ASSERT_TRUE(d.timed) << r;
      EXPECT_EQ(memcmp(&d.figures, &d0.figures, sizeof(d.figures)), 0) << r;
      for (int i = 0; i < 2; ++i) {
        EXPECT_EQ(d.range[i].lo, d0.range[i].lo) << r;
        EXPECT_EQ(d.range[i].hi, d0.range[i].hi) << r;
      }
    }
    const bool compress = d0.range[1].contains(count);
    for (int r = 0; r < N; ++r) {
      EXPECT_EQ(got[r].stats.callsCompressed, compress ? 2u : 0u) << r;
      EXPECT_EQ(got[r].stats.callsAutoPassed, compress ? 0u : 2u) << r;
    }
    expectOutputsOf(got, N, compress, count, ncclFloat32, 2, rs);
    // A retune over TCP agrees again.
    auto res = tcp.run([&](int r) { return gradcompCommRetune(tcp.comm(r), nullptr); });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    const gc::AutoDecision& e0 =
        rs ? tcp.comm(0)->autoState.reduceScatter : tcp.comm(0)->autoState.allReduce;
    for (int r = 1; r < N; ++r) {
      const gc::AutoDecision& e =
          rs ? tcp.comm(r)->autoState.reduceScatter : tcp.comm(r)->autoState.allReduce;
      EXPECT_EQ(memcmp(&e.figures, &e0.figures, sizeof(e.figures)), 0) << r;
      EXPECT_EQ(e.range[1].lo, e0.range[1].lo) << r;
      EXPECT_EQ(e.range[1].hi, e0.range[1].hi) << r;
    }
  }
}

// splitRootAddress at the edges of its rule: the port's range 1..65535 at both
// ends, a bracketed IPv6 host, and rootAddress read back by it.
TEST(Socket, RootAddressPortsAreOneTo65535) {
  std::string host, why;
  int port = -1;
  EXPECT_TRUE(gc::splitRootAddress("127.0.0.1:1", &host, &port, &why)) << why;
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 1);
  EXPECT_TRUE(gc::splitRootAddress("h:65535", &host, &port, &why)) << why;
  EXPECT_EQ(port, 65535);
  EXPECT_TRUE(gc::splitRootAddress("[fe80::1]:80", &host, &port, &why)) << why;
  EXPECT_EQ(host, "fe80::1");
  EXPECT_EQ(port, 80);
  for (const char* bad : {"h:0", "h:00", "h:65536", "h:99999999999999999999"}) {
    port = -1;
    why.clear();
    EXPECT_FALSE(gc::splitRootAddress(bad, &host, &port, &why)) << bad << " gave port " << port;
    EXPECT_NE(why.find("out of range 1..65535"), std::string::npos) << why;
    EXPECT_NE(why.find(std::string(bad).substr(2)), std::string::npos) << why;
  }
  for (const std::string h : {"10.0.0.1", "::1", "node-3"}) {
    const std::string a = gc::rootAddress(h, 65535);
    EXPECT_TRUE(gc::splitRootAddress(a.c_str(), &host, &port, &why)) << a << ": " << why;
    EXPECT_EQ(host, h);
    EXPECT_EQ(port, 65535);
  }
}

}  // namespace
