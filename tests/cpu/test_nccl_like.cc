// The comm's NCCL-only paths on the CPU: a world whose transports stand in
// for NCCL's (tests/common/nccl_like_transport.h: collectives that compare
// no call record, verifyCall as the CUDA transport's), so that
// GRADCOMP_CHECK_CALLS's agreement before every call, the check of the first
// call after a state load or reset, and a refusal's join of that agreement
// run where no GPU is. The multirank program checks the same on NCCL itself.
#include <gtest/gtest.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <string>
#include <vector>

#include "gradcomp.h"
#include "plugin/codecs/qsgd.h"
#include "plugin/comm.h"
#include "tests/common/cpu_world.h"
#include "tests/common/nccl_like_transport.h"
#include "tests/common/one_rank_refusal.h"
#include "tests/common/test_util.h"

namespace {

using gctest::CpuWorld;
using gctest::NcclLikeTransport;

gradcompConfig_t config(int checkCalls, size_t minElements, int localSize = 0) {
  gradcompConfig_t c;
  gradcompConfigInit(&c);
  c.autoTune = 0, c.checkCalls = checkCalls, c.minElements = minElements, c.localSize = localSize;
  // A peer left waiting fails after it, naming nobody.
  c.cpuTimeoutSec = 20.0f;
  return c;
}

// gctest::onRanks on every rank of w.
std::vector<gradcompResult_t> onRanks(CpuWorld& w, const std::function<gradcompResult_t(int)>& fn,
                                      std::vector<std::string>* err) {
  return gctest::onRanks(w.size(), fn, err);
}

bool has(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Every rank's in-place fp32 allreduce of count elements (op) succeeds.
void expectAllReduceRuns(CpuWorld& w, std::vector<std::vector<float>>& b, size_t count,
                         ncclRedOp_t op = ncclSum) {
  std::vector<std::string> err;
  const auto res = onRanks(
      w,
      [&](int r) {
        return gradcompAllReduce(b[r].data(), b[r].data(), count, ncclFloat32, op, w.comm(r),
                                 nullptr);
      },
      &err);
  for (int r = 0; r < w.size(); ++r)
    EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << err[r];
}

// GRADCOMP_CHECK_CALLS on a transport that checks no call: a count or an op
// that differs by rank (compressed on one rank, passed on another: on NCCL
// they would wait in different collectives) fails every rank with
// gradcompInvalidUsage naming both calls, before any exchange of the call
// (the states as they were, failedTogether set), and the comm works on.
// Without the setting such calls are not compared.
TEST(NcclLike, CheckCallsFailsEveryRankWhereACountOrOpDiffers) {
  const int N = 3;
  for (size_t minElements : {(size_t)0, (size_t)1 << 20}) {
    for (int kind = 0; kind < 2; ++kind) {
      SCOPED_TRACE(testing::Message() << (kind ? "op" : "count") << " min " << minElements);
      CpuWorld w(N, config(1, minElements));
      const std::vector<NcclLikeTransport*> tr = gctest::ncclLike(w);
      std::vector<std::vector<float>> b(N, gctest::normal(4000, 3));
      ASSERT_NO_FATAL_FAILURE(expectAllReduceRuns(w, b, 4000));
      std::vector<std::vector<uint8_t>> before(N);
      for (int r = 0; r < N; ++r) before[r] = gctest::savedState(w.comm(r));
      std::vector<std::string> err;
      const auto res = onRanks(
          w,
          [&](int r) {
            const size_t n = kind == 0 && r == 1 ? 3000 : 4000;
            const ncclRedOp_t op = kind == 1 && r == 1 ? ncclMax : ncclSum;
            return gradcompAllReduce(b[r].data(), b[r].data(), n, ncclFloat32, op, w.comm(r),
                                     nullptr);
          },
          &err);
      for (int r = 0; r < N; ++r) {
        EXPECT_EQ(res[r], gradcompInvalidUsage) << "rank " << r << ": " << err[r];
        EXPECT_TRUE(has(err[r], kind ? "op=2" : "count=3000")) << err[r];
        EXPECT_TRUE(has(err[r], kind ? "op=0" : "count=4000")) << err[r];
        EXPECT_TRUE(w.comm(r)->failedTogether) << "rank " << r;
        EXPECT_EQ(gctest::savedState(w.comm(r)), before[r]) << "rank " << r;
        EXPECT_EQ(tr[r]->verifyCalls, 2) << "rank " << r;
      }
      ASSERT_NO_FATAL_FAILURE(expectAllReduceRuns(w, b, 4000));
    }
  }
}

// Without the setting the same calls are not compared, but the stand-in
// still fails them where their sizes differ (in its world's check of each
// collective, as NCCL would not: NCCL waits or reads past the shorter
// buffer) rather than copying past a shorter peer's buffer.
TEST(NcclLike, WithoutCheckCallsDifferentCountsStillFail) {
  const int N = 3;
  for (size_t minElements : {(size_t)0, (size_t)1 << 20}) {
    SCOPED_TRACE(testing::Message() << "min " << minElements);
    gradcompConfig_t cfg = config(0, minElements);
    cfg.cpuTimeoutSec = 2.0f;  // a rank that waits in vain fails after it
    CpuWorld w(N, cfg);
    const std::vector<NcclLikeTransport*> tr = gctest::ncclLike(w);
    std::vector<std::vector<float>> b(N, gctest::normal(4000, 9));
    std::vector<std::string> err;
    const auto res = onRanks(
        w,
        [&](int r) {
          return gradcompAllReduce(b[r].data(), b[r].data(), r == 1 ? 3000 : 4000, ncclFloat32,
                                   ncclSum, w.comm(r), nullptr);
        },
        &err);
    for (int r = 0; r < N; ++r) {
      EXPECT_NE(res[r], gradcompSuccess) << "rank " << r;
      EXPECT_EQ(tr[r]->verifyCalls, 0) << "rank " << r;
    }
  }
}

// What the setting adds on such a transport, per call: one agreement on the
// call and its votes (a passed call: that its buffers are given; a
// compressed one: given, valid, and its state and workspace prepared), one
// allreduce of a float each; without it the call exchanges only its own
// collectives.
TEST(NcclLike, WithoutCheckCallsOnlyTheCollectivesAreExchanged) {
  const int N = 3;
  const size_t n = 4000;
  for (bool compressed : {false, true}) {
    int verifies[2], exchanges[2];
    for (int check : {0, 1}) {
      SCOPED_TRACE(testing::Message() << "compressed " << compressed << " checkCalls " << check);
      CpuWorld w(N, config(check, compressed ? 0 : (size_t)1 << 20));
      const std::vector<NcclLikeTransport*> tr = gctest::ncclLike(w);
      std::vector<std::vector<float>> b(N, gctest::normal(n, 5));
      ASSERT_NO_FATAL_FAILURE(expectAllReduceRuns(w, b, n));
      verifies[check] = tr[0]->verifyCalls;
      exchanges[check] = tr[0]->collectives;
      for (int r = 1; r < N; ++r) {
        EXPECT_EQ(tr[r]->verifyCalls, verifies[check]) << "rank " << r;
        EXPECT_EQ(tr[r]->collectives, exchanges[check]) << "rank " << r;
      }
      gradcompStats_t st;
      ASSERT_EQ(gradcompGetStats(w.comm(0), &st), gradcompSuccess);
      EXPECT_EQ(st.callsCompressed, compressed ? 1u : 0u);
    }
    EXPECT_EQ(verifies[0], 0);
    EXPECT_EQ(verifies[1], 1);
    if (!compressed) EXPECT_EQ(exchanges[0], 1);  // NCCL's allreduce, as it is
    EXPECT_EQ(exchanges[1] - exchanges[0], compressed ? 3 : 1);
  }
}

// The first call after a state load or reset checks that the ranks agree
// (verifyNext), with or without the setting: once, and a rank restored at
// another step fails every rank naming both steps instead of summing under
// other RNG keys.
TEST(NcclLike, TheFirstCallAfterALoadOrResetVerifies) {
  const int N = 2;
  const size_t n = 4000;
  CpuWorld w(N, config(0, 0));
  const std::vector<NcclLikeTransport*> tr = gctest::ncclLike(w);
  std::vector<std::vector<float>> b(N, gctest::normal(n, 7));
  ASSERT_NO_FATAL_FAILURE(expectAllReduceRuns(w, b, n));
  std::vector<std::vector<uint8_t>> atStep1(N);
  for (int r = 0; r < N; ++r) atStep1[r] = gctest::savedState(w.comm(r));
  ASSERT_NO_FATAL_FAILURE(expectAllReduceRuns(w, b, n));
  EXPECT_EQ(tr[0]->verifyCalls, 0);
  std::vector<std::string> err;
  auto res = onRanks(
      w, [&](int r) { return gradcompCommResetState(w.comm(r)); }, &err);
  for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << err[r];
  ASSERT_NO_FATAL_FAILURE(expectAllReduceRuns(w, b, n));
  ASSERT_NO_FATAL_FAILURE(expectAllReduceRuns(w, b, n));
  for (int r = 0; r < N; ++r) EXPECT_EQ(tr[r]->verifyCalls, 1) << "rank " << r;

  // Rank 1 restores step 1, rank 0 the state it holds now (step 2).
  std::vector<std::vector<uint8_t>> load(N);
  load[0] = gctest::savedState(w.comm(0));
  load[1] = atStep1[1];
  res = onRanks(
      w, [&](int r) { return gradcompCommLoadState(w.comm(r), load[r].data(), load[r].size()); },
      &err);
  for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << err[r];
  res = onRanks(
      w,
      [&](int r) {
        return gradcompAllReduce(b[r].data(), b[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                                 nullptr);
      },
      &err);
  for (int r = 0; r < N; ++r) {
    EXPECT_EQ(res[r], gradcompInvalidUsage) << "rank " << r << ": " << err[r];
    EXPECT_TRUE(has(err[r], "step 1 ")) << err[r];
    EXPECT_TRUE(has(err[r], "step 2 ")) << err[r];
    EXPECT_EQ(tr[r]->verifyCalls, 2) << "rank " << r;
  }
  // Still unverified: loaded alike, the next call verifies and runs.
  res = onRanks(
      w,
      [&](int r) { return gradcompCommLoadState(w.comm(r), atStep1[r].data(), atStep1[r].size()); },
      &err);
  for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << err[r];
  ASSERT_NO_FATAL_FAILURE(expectAllReduceRuns(w, b, n));
  ASSERT_NO_FATAL_FAILURE(expectAllReduceRuns(w, b, n));
  for (int r = 0; r < N; ++r) EXPECT_EQ(tr[r]->verifyCalls, 3) << "rank " << r;
}

// A forget (gradcompCommForgetKey, gradcompCommForgetBuffer) is checked as a
// reset is, where no call is compared otherwise (NCCL without
// GRADCOMP_CHECK_CALLS): the next call verifies once and runs when the ranks
// forgot alike (the same keys, in either order, and a buffer each), and
// fails every rank, naming the forget, when they forgot different keys.
TEST(NcclLike, TheFirstCallAfterAForgetVerifies) {
  const int N = 2;
  const size_t n = 4000;
  CpuWorld w(N, config(0, 0));
  const std::vector<NcclLikeTransport*> tr = gctest::ncclLike(w);
  std::vector<std::vector<float>> b(N, gctest::normal(n, 9));
  std::vector<std::string> err;
  auto keyed = [&](uint64_t key) {
    return onRanks(
        w,
        [&](int r) {
          return gradcompAllReduceKeyed(b[r].data(), b[r].data(), n, ncclFloat32, ncclSum,
                                        w.comm(r), nullptr, key);
        },
        &err);
  };
  for (uint64_t key : {1, 2, 3}) {
    for (gradcompResult_t r : keyed(key)) ASSERT_EQ(r, gradcompSuccess) << err[0] << err[1];
  }
  ASSERT_NO_FATAL_FAILURE(expectAllReduceRuns(w, b, n));
  EXPECT_EQ(tr[0]->verifyCalls, 0);
  auto res = onRanks(
      w,
      [&](int r) {
        const uint64_t first = r == 0 ? 1 : 2, second = r == 0 ? 2 : 1;
        gradcompResult_t rc = gradcompCommForgetKey(w.comm(r), first);
        if (rc == gradcompSuccess) rc = gradcompCommForgetKey(w.comm(r), second);
        if (rc == gradcompSuccess) rc = gradcompCommForgetBuffer(w.comm(r), b[r].data());
        return rc;
      },
      &err);
  for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << err[r];
  for (int r = 0; r < N; ++r) EXPECT_EQ(w.comm(r)->states.size(), 1u) << "rank " << r;
  for (gradcompResult_t r : keyed(1)) ASSERT_EQ(r, gradcompSuccess) << err[0] << err[1];
  for (gradcompResult_t r : keyed(3)) ASSERT_EQ(r, gradcompSuccess) << err[0] << err[1];
  for (int r = 0; r < N; ++r) EXPECT_EQ(tr[r]->verifyCalls, 1) << "rank " << r;

  // Rank 0 forgets key 3, rank 1 key 1: the next call fails on both.
  ASSERT_EQ(gradcompCommForgetKey(w.comm(0), 3), gradcompSuccess);
  ASSERT_EQ(gradcompCommForgetKey(w.comm(1), 1), gradcompSuccess);
  res = keyed(3);
  for (int r = 0; r < N; ++r) {
    EXPECT_EQ(res[r], gradcompInvalidUsage) << "rank " << r << ": " << err[r];
    EXPECT_TRUE(has(err[r], "forget the same keys and buffers on every rank")) << err[r];
    EXPECT_EQ(tr[r]->verifyCalls, 2) << "rank " << r;
  }
}

// GRADCOMP_CHECK_CALLS on a transport that checks no call (NCCL): a call
// whose arguments one rank refuses before the call begins (a datatype or op
// that is not NCCL's, a reduce-scatter recvcount whose input overflows)
// while its peers' pass makes that rank join the agreement its peers run
// first, with a record that says it refused and what: it returns its own
// gradcompInvalidArgument and its peers gradcompInvalidUsage naming it, all
// at once, the states as they were, and the call made right works next. On
// flat and hierarchical comms, for calls compressed and passed. Before
// 2026-12-07 the refusing rank returned at once and its peers waited in
// the agreement (on NCCL, for ever).
TEST(NcclLike, ARefusalBeforeTheCallFailsItsPeersNamingIt) {
  struct Case {
    const char* what;
    const char* mine;   // in the refusing rank's sentence
    const char* peers;  // in its peers' sentence
  };
  const std::string badType = "datatype=" + std::to_string((int)ncclNumTypes);
  const Case cases[] = {
      {"datatype ncclNumTypes", badType.c_str(), badType.c_str()},
      {"a negative op", "op=-1", "op=-1"},
      {"a recvcount whose input overflows", "overflows", "recvcount="},
      {"every rank another datatype", "datatype=", "datatype="},
  };
  for (int local : {0, 2}) {
    for (size_t minElements : {(size_t)0, (size_t)1 << 20}) {
      const int N = local ? 4 : 3, who = N - 2;
      CpuWorld w(N, config(1, minElements, local));
      const std::vector<NcclLikeTransport*> tr = gctest::ncclLike(w);
      std::vector<std::vector<float>> b(N, std::vector<float>(2000, 1.0f)), o = b;
      for (int kind = 0; kind < 4; ++kind) {
        const Case& k = cases[kind];
        SCOPED_TRACE(testing::Message() << k.what << ", local " << local << " min " << minElements);
        const bool rs = kind == 1 || kind == 2;
        const size_t m = rs ? 1000 / (size_t)N : 1000;
        std::vector<std::vector<uint8_t>> before(N);
        for (int r = 0; r < N; ++r) before[r] = gctest::savedState(w.comm(r));
        std::vector<std::string> err;
        auto res = onRanks(
            w,
            [&](int r) {
              const bool bad = r == who;
              float* s = b[r].data();
              switch (kind) {
                case 0:
                  return gradcompAllReduce(s, s, m, bad ? ncclNumTypes : ncclFloat32, ncclSum,
                                           w.comm(r), nullptr);
                case 1: {
                  // A C caller's op of -1, put in the enum's bytes (as
                  // ApiSequence.ARefusalOnOneRankFailsItsPeersNamingIt does).
                  ncclRedOp_t op = ncclSum;
                  const int minusOne = -1;
                  if (bad) memcpy(&op, &minusOne, sizeof op);
                  return gradcompReduceScatterKeyed(s, o[r].data(), m, ncclFloat32, op, w.comm(r),
                                                    nullptr, 4);
                }
                case 2:
                  return gradcompReduceScatter(s, o[r].data(), bad ? SIZE_MAX / 4 : m, ncclFloat32,
                                               ncclSum, w.comm(r), nullptr);
                default: {
                  // Refused on every rank, each for another datatype.
                  ncclDataType_t t = ncclFloat32;
                  const int bogus = (int)ncclNumTypes + r;
                  memcpy(&t, &bogus, sizeof t);
                  return gradcompAllReduce(s, s, m, t, ncclSum, w.comm(r), nullptr);
                }
              }
            },
            &err);
        if (kind == 3) {
          // Refused on every rank, each naming its own datatype.
          for (int r = 0; r < N; ++r) {
            EXPECT_EQ(res[r], gradcompInvalidArgument) << "rank " << r << ": " << err[r];
            EXPECT_TRUE(has(err[r], "datatype=" + std::to_string((int)ncclNumTypes + r))) << err[r];
          }
        } else {
          gctest::expectOneRankRefused(res, err, who, k.mine, k.peers);
          // A call its peers failed naming it is one the ranks compared and
          // found apart on the refusing rank too: the LD_PRELOAD library must
          // not hand it to NCCL there alone (interpose.cc, failedTogether).
          for (int r = 0; r < N; ++r) {
            EXPECT_TRUE(w.comm(r)->failedTogether) << "rank " << r;
          }
        }
        gctest::expectStatesKeptAndTheCallMadeRightRuns(w, before, b, o, rs, m);
        // Before the fix a case costs cpuTimeoutSec: stop at the first.
        if (::testing::Test::HasFailure()) return;
      }
      // Every call joined one agreement: the refused ones and the calls after.
      for (int r = 1; r < N; ++r) EXPECT_EQ(tr[r]->verifyCalls, tr[0]->verifyCalls) << r;
    }
  }
}

// Without the setting, the first call after a state load or reset is still
// agreed on (verifyNext): a rank that refuses it before it begins joins that
// agreement with its refusal's record, as under the setting, so its peers
// fail at once naming it instead of waiting in the agreement (on NCCL, for
// ever; before 2026-12-07). The agreement failed, so every rank still
// verifies its next call (the ranks stay in step), and that call runs.
TEST(NcclLike, ARefusalOfTheFirstCallAfterALoadOrResetFailsItsPeersNamingIt) {
  for (int local : {0, 2}) {
    for (size_t minElements : {(size_t)0, (size_t)1 << 20}) {
      const int N = local ? 4 : 2, who = N - 1;
      CpuWorld w(N, config(0, minElements, local));
      const std::vector<NcclLikeTransport*> tr = gctest::ncclLike(w);
      std::vector<std::vector<float>> b(N, std::vector<float>(2000, 1.0f)), o = b;
      for (int kind = 0; kind < 3; ++kind) {
        SCOPED_TRACE(testing::Message()
                     << "kind " << kind << ", local " << local << " min " << minElements);
        const bool rs = kind == 2;
        const size_t m = rs ? 1000 / (size_t)N : 1000;
        std::vector<std::vector<uint8_t>> before;
        gctest::expectTheFirstCallAfterALoadOrResetRefused(w, kind, who, b, o, m, &before);
        if (::testing::Test::HasFatalFailure()) return;
        for (int r = 0; r < N; ++r) {
          // Compared and found apart: not to be handed to NCCL on one rank alone.
          EXPECT_TRUE(w.comm(r)->failedTogether) << "rank " << r;
          EXPECT_TRUE(w.comm(r)->verifyNext) << "rank " << r;
        }
        gctest::expectStatesKeptAndTheCallMadeRightRuns(w, before, b, o, rs, m);
        for (int r = 0; r < N; ++r) {
          EXPECT_FALSE(w.comm(r)->verifyNext) << "rank " << r;
          EXPECT_EQ(tr[r]->verifyCalls, tr[0]->verifyCalls) << "rank " << r;
        }
        // Before the fix a case costs cpuTimeoutSec: stop at the first.
        if (::testing::Test::HasFailure()) return;
      }
    }
  }
}

// A refusal after the call's agreement (a count the codecs cannot size: the
// count was agreed, so every rank refuses it alike) joins no second one: the
// peers' next exchange there is a vote, which on NCCL an allgather would
// meet. Each rank returns its own error, and the comm works on.
TEST(NcclLike, ARefusalAfterTheAgreementJoinsNoOther) {
  const int N = 3;
  for (int local : {0, 2}) {
    SCOPED_TRACE(testing::Message() << "local " << local);
    const int n = local ? 4 : N;
    CpuWorld w(n, config(1, 0, local));
    const std::vector<NcclLikeTransport*> tr = gctest::ncclLike(w);
    std::vector<std::vector<float>> b(n, std::vector<float>(1000, 1.0f));
    std::vector<int> verifies(n);
    for (int r = 0; r < n; ++r) verifies[r] = tr[r]->verifyCalls;
    std::vector<std::string> err;
    const auto res = onRanks(
        w,
        [&](int r) {
          // The buffers are never read: the count is refused first.
          return gradcompAllReduce(b[r].data(), b[r].data(), gc::kMaxCodecCount + 1, ncclFloat32,
                                   ncclSum, w.comm(r), nullptr);
        },
        &err);
    for (int r = 0; r < n; ++r) {
      EXPECT_EQ(res[r], gradcompInvalidArgument) << "rank " << r << ": " << err[r];
      EXPECT_TRUE(has(err[r], std::to_string(gc::kMaxCodecCount + 1))) << err[r];
      // One agreement (and a hierarchical CPU comm's own, of the whole world).
      EXPECT_EQ(tr[r]->verifyCalls - verifies[r], local ? 2 : 1) << "rank " << r;
    }
    ASSERT_NO_FATAL_FAILURE(expectAllReduceRuns(w, b, 1000));
  }
}

// A refusing rank whose peers pass a count of 0 (they return before any
// exchange, as NCCL does for a count of 0) waits in an agreement nobody
// joins: here for cpuTimeoutSec, then it returns its own error; on NCCL it
// meets the peers' next collective on the comm, as NCCL's own collective
// does when the ranks' counts differ (docs/reliability.md). The comm works on.
TEST(NcclLike, ARefusalWhosePeersPassNoElementsReturnsItsOwnError) {
  const int N = 2;
  gradcompConfig_t cfg = config(1, 0);
  cfg.cpuTimeoutSec = 0.5f;
  CpuWorld w(N, cfg);
  const std::vector<NcclLikeTransport*> tr = gctest::ncclLike(w);
  std::vector<std::vector<float>> b(N, std::vector<float>(1000, 1.0f));
  std::vector<std::string> err;
  const auto res = onRanks(
      w,
      [&](int r) {
        return r == 1 ? gradcompAllReduce(b[r].data(), b[r].data(), 1000, ncclNumTypes, ncclSum,
                                          w.comm(r), nullptr)
                      : gradcompAllReduce(b[r].data(), b[r].data(), 0, ncclFloat32, ncclSum,
                                          w.comm(r), nullptr);
      },
      &err);
  EXPECT_EQ(res[0], gradcompSuccess) << err[0];
  EXPECT_EQ(res[1], gradcompInvalidArgument) << err[1];
  EXPECT_TRUE(has(err[1], "datatype=")) << err[1];
  EXPECT_EQ(tr[0]->verifyCalls, 0);
  EXPECT_EQ(tr[1]->verifyCalls, 1);
  ASSERT_NO_FATAL_FAILURE(expectAllReduceRuns(w, b, 1000));
}

}  // namespace
