// The GPU tests' mirroring transport (tests/gpu/mirror_transport.h: every
// rank sends what rank 0 sends) on the CPU backend, where CI runs it: it
// must serve every transport call of the flows the GPU tests drive through
// it (the sparse allgather's direct sends, the float sum of the dense
// fallback and rand-k, QSGD's allgather at two ranks, auto's timing), else
// those tests fail on the GPU box for want of a method, and it must mirror:
// N ranks' sum is N times rank 0's contribution, added in rank order.
#include <gtest/gtest.h>
#include <string.h>

#include <string>
#include <vector>

#include "gradcomp.h"
#include "plugin/autotune.h"
#include "plugin/comm.h"
#include "tests/common/test_util.h"
#include "tests/gpu/mirror_transport.h"

namespace {

constexpr int kRanks = 3;

gradcompConfig_t sparseConfig(gradcompMethod_t method, float density) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.autoTune = 0;
  cfg.method = method;
  cfg.density = density;
  cfg.minElements = 0;
  return cfg;
}

// One fp32 Sum call on a fresh comm of kRanks over the mirror. v starts at
// zero, so an element either went out whole (residual 0, output the kRanks
// copies of it added to a zeroed output in rank order) or stayed (residual
// the gradient, output 0). Returns how many went out.
size_t checkSentOrKept(const gradcompConfig_t& cfg, size_t n, gradcompStats_t* stats) {
  gradcompComm* c = gctest::mirrorComm(cfg, false, kRanks, n, nullptr, false);
  const std::vector<float> g = gctest::normal(n, 7);
  std::vector<float> out = g;
  EXPECT_EQ(gradcompAllReduce(out.data(), out.data(), n, ncclFloat32, ncclSum, c, nullptr),
            gradcompSuccess)
      << gradcompGetLastError();
  EXPECT_EQ(gradcompGetStats(c, stats), gradcompSuccess);
  if (c->states.empty() || c->states.begin()->second.residual == nullptr) {
    ADD_FAILURE() << "the call left no residual";
    gradcompCommDestroy(c);
    return 0;
  }
  const float* r = c->states.begin()->second.residual;
  size_t sent = 0, bad = 0;
  for (size_t i = 0; i < n; ++i) {
    const float a = g[i], sum = (a + a) + a;
    const bool went = r[i] == 0.0f && memcmp(&out[i], &sum, 4) == 0;
    const bool stayed = memcmp(&r[i], &a, 4) == 0 && out[i] == 0.0f;
    sent += went;
    bad += !went && !stayed;
  }
  EXPECT_EQ(bad, 0u);
  gradcompCommDestroy(c);
  return sent;
}

TEST(MirrorTransportCpu, SparseAllgatherAddsRank0sSlotsOncePerRank) {
  gradcompStats_t st;
  const size_t sent = checkSentOrKept(sparseConfig(gradcompMethodTopk, 0.01f), 20000, &st);
  EXPECT_GT(sent, 0u);
  EXPECT_EQ(sent, st.selectedLast);
  EXPECT_EQ(st.denseFallbacks, 0u);
  EXPECT_EQ(st.peerSlotsRejected, 0u);  // rank 0's slots, well-formed, from every rank
}

TEST(MirrorTransportCpu, DenseFallbackAndRandkSumThroughTheFloatAllreduce) {
  gradcompStats_t st;
  const size_t n = 20000;
  EXPECT_EQ(checkSentOrKept(sparseConfig(gradcompMethodTopk, 0.2f), n, &st), n);
  EXPECT_EQ(st.denseFallbacks, 1u);
  EXPECT_EQ(checkSentOrKept(sparseConfig(gradcompMethodRandk, 0.01f), n, &st), st.targetLast);
}

// QSGD at two ranks is the allgather (the abort GPU test's comm); at more,
// two-shot's all-to-all of distinct chunks has no mirror image and is
// refused, never mirrored wrongly.
TEST(MirrorTransportCpu, QsgdAllgatherAtTwoRanksTwoShotRefused) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.autoTune = 0;
  cfg.minElements = 0;
  const size_t n = 10000;
  std::vector<float> x = gctest::normal(n, 3);
  for (int ranks : {2, 3}) {
    gradcompComm* c = gctest::mirrorComm(cfg, false, ranks, n, nullptr, false);
    EXPECT_EQ(gradcompAllReduce(x.data(), x.data(), n, ncclFloat32, ncclSum, c, nullptr),
              ranks == 2 ? gradcompSuccess : gradcompNotSupported)
        << ranks << " ranks: " << gradcompGetLastError();
    gradcompCommDestroy(c);
  }
}

// Auto's timing over the mirror (the host clock here, CUDA events in
// AutoTuneGpu): NCCL's sum and max and the compressed calls at both sizes.
TEST(MirrorTransportCpu, AutoTimesOverTheMirror) {
  gradcompConfig_t cfg = sparseConfig(gradcompMethodTopk, 0.05f);
  cfg.autoTune = 1;
  const size_t maxFloats = size_t(1) << 16;
  gradcompComm* c = gctest::mirrorComm(cfg, false, 2, maxFloats, nullptr, true);
  c->autoState.timeOnHost = true;
  c->autoState.timedCounts[0] = size_t(1) << 12;
  c->autoState.timedCounts[1] = maxFloats;
  ASSERT_EQ(gradcompCommRetune(c, nullptr), gradcompSuccess) << gradcompGetLastError();
  const gc::AutoDecision& d = c->autoState.allReduce;
  EXPECT_TRUE(d.timed);
  EXPECT_EQ(d.timedCompressed, 2u * (gc::kAutoWarmupCalls + gc::kAutoTimedCalls));
  EXPECT_EQ(gc::autoCheckFigures(d.figures), gradcompSuccess);
  EXPECT_EQ(c->stats.callsCompressed, 0u);
  gradcompCommDestroy(c);
}

// GRADCOMP_CHECK_CALLS on a transport that does not check every collective
// (the mirror stands for NCCL here): every allreduce and reduce-scatter,
// compressed or passed through, first agrees on its call, and a rank whose
// call differs fails it before a byte moves, its buffer untouched.
TEST(MirrorTransportCpu, CheckCallsAgreesBeforeEveryCall) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.autoTune = 0;
  cfg.minElements = 0;
  const size_t n = 10000;
  const std::vector<float> x = gctest::normal(n, 11);
  for (int check : {0, 1}) {
    SCOPED_TRACE(testing::Message() << "checkCalls=" << check);
    cfg.checkCalls = check;
    gradcompComm* c = gctest::mirrorComm(cfg, false, 2, n, nullptr, true);
    auto* mirror = static_cast<gctest::MirrorTransport*>(c->transport.get());
    std::vector<float> out = x;
    ASSERT_EQ(gradcompAllReduce(out.data(), out.data(), n, ncclFloat32, ncclSum, c, nullptr),
              gradcompSuccess)
        << gradcompGetLastError();
    EXPECT_EQ(mirror->verifyCalls, check);
    // Passed through (Max is not compressed): checked too, at the next step.
    ASSERT_EQ(gradcompAllReduce(x.data(), out.data(), n, ncclFloat32, ncclMax, c, nullptr),
              gradcompSuccess)
        << gradcompGetLastError();
    EXPECT_EQ(mirror->verifyCalls, 2 * check);
    if (check) {
      EXPECT_EQ(mirror->lastVerified.step, 1u);
      EXPECT_EQ(mirror->lastVerified.count, n);
      EXPECT_EQ(mirror->lastVerified.op, (int)ncclMax);
      EXPECT_EQ(mirror->lastVerified.kind, (int)gc::kCallAllReduce);
    }
    // A reduce-scatter agrees as one, on its input count (the mirror has no
    // reduce-scatter of its own, so the call then fails at the transport).
    EXPECT_EQ(gradcompReduceScatter(x.data(), out.data(), n / 2, ncclFloat32, ncclMax, c, nullptr),
              gradcompNotSupported);
    EXPECT_EQ(mirror->verifyCalls, 3 * check);
    if (check) {
      EXPECT_EQ(mirror->lastVerified.kind, (int)gc::kCallReduceScatter);
      EXPECT_EQ(mirror->lastVerified.count, n);
    }

    // Rank 1 one step ahead: detected only with the check, before any byte
    // of the buffer is written.
    mirror->peerStepAhead = true;
    out = x;
    const gradcompResult_t res =
        gradcompAllReduce(out.data(), out.data(), n, ncclFloat32, ncclSum, c, nullptr);
    if (check) {
      EXPECT_EQ(res, gradcompInvalidUsage);
      EXPECT_EQ(std::string(gradcompGetLastError()),
                "rank 0 is at step 1 with count=10000 datatype=7 op=0 (allreduce) while rank 1 "
                "is at step 2 with count=10000 datatype=7 op=0 (allreduce): every rank must make "
                "the same calls in the same order from the same state");
      EXPECT_EQ(memcmp(out.data(), x.data(), n * sizeof(float)), 0);
      EXPECT_EQ(c->stats.callsCompressed, 1u);
      // Every rank failed it after comparing: not a call to hand to NCCL.
      EXPECT_TRUE(c->failedTogether);
    } else {
      EXPECT_EQ(res, gradcompSuccess) << gradcompGetLastError();
      EXPECT_EQ(mirror->verifyCalls, 0);
    }
    gradcompCommDestroy(c);
  }
}

}  // namespace
