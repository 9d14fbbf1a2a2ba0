// GRADCOMP_AUTO on the in-process CPU world, with injected figures (its ranks
// share the cores, so it never times; socket comms do: test_socket.cc): the decision
// from the figures against a reference written from the model, the agreement
// of ranks with different figures, the hook in the allreduce, autoTune=0,
// retune on request, and the refusal under CUDA-graph capture.
#include <gtest/gtest.h>
#include <string.h>

#include <algorithm>
#include <memory>
#include <string>
#include <functional>
#include <vector>

#include "bench/common/model.h"
#include "gradcomp.h"
#include "plugin/autotune.h"
#include "plugin/comm.h"
#include "tests/common/alloc_limit_backend.h"
#include "tests/common/auto_checks.h"
#include "tests/common/cpu_world.h"
#include "tests/common/forwarding_backend.h"
#include "tests/common/forwarding_transport.h"
#include "tests/common/owner_place.h"
#include "tests/common/state_blob.h"
#include "tests/common/stats_compare.h"
#include "tests/common/test_util.h"

namespace {

using gc::AutoFigures;
using gc::AutoRange;

AutoFigures figures(size_t small, size_t large, float n0, float n1, float c0, float c1) {
  return gctest::autoFigures(n0, n1, c0, c1, small, large);
}

// The model as docs/algorithms.md states it: each path's time is latency +
// per-element cost * n, a straight line through its two timed fp32 points;
// NCCL's per-element cost scales with the element size (its bytes), its
// latency does not; the compressed path's wire bytes follow the count.
bool refCompresses(const AutoFigures& f, double n, double elementBytes) {
  const double span = (double)f.largeCount - (double)f.smallCount;
  const double ncclPer = (f.ncclUs[1] - f.ncclUs[0]) / span;
  const double compPer = (f.compUs[1] - f.compUs[0]) / span;
  const double ncclLatency = f.ncclUs[0] - ncclPer * (double)f.smallCount;
  const double compLatency = f.compUs[0] - compPer * (double)f.smallCount;
  const auto wins = [&](double x) {
    return compLatency + compPer * x < ncclLatency + ncclPer * elementBytes / 4 * x;
  };
  // Below the smallest timed count a win needs the line to win at that count
  // too, when compression has the steeper slope (docs/algorithms.md).
  if (compPer > ncclPer * elementBytes / 4 && n < (double)f.smallCount)
    return wins(n) && wins((double)f.smallCount);
  return wins(n);
}

// Every count where the decision could turn, and far beyond.
void expectMatchesReference(const AutoFigures& f) {
  for (size_t eb : {2, 4}) {
    const AutoRange r = gc::autoRange(f, eb);
    std::vector<size_t> probes = {
        0, 1, 2, f.smallCount, f.largeCount, size_t(1) << 30, size_t(1) << 40};
    for (size_t edge : {r.lo, r.hi}) {
      if (edge == SIZE_MAX) continue;
      for (size_t d = 0; d < 3; ++d) {
        probes.push_back(edge + d);
        if (edge >= d) probes.push_back(edge - d);
      }
    }
    for (size_t n : probes) {
      EXPECT_EQ(r.contains(n), refCompresses(f, (double)n, (double)eb))
          << "n=" << n << " elementBytes=" << eb << " range [" << r.lo << ", " << r.hi << ")";
    }
  }
}

// Values chosen so every step of the fit is exact in binary floating point.
const AutoFigures kCompressWins = figures(1024, 5120, 64, 128, 32, 64);
const AutoFigures kNcclWins = figures(1024, 5120, 16, 32, 48, 80);
const AutoFigures kCrossover = figures(1024, 5120, 16, 80, 48, 80);  // NCCL 0 + n/64 us
const AutoFigures kUpperBound = figures(1024, 5120, 40, 72, 8, 72);  // NCCL 32 + n/128

TEST(AutoTune, CompressWinsAtEverySize) {
  for (size_t eb : {2, 4}) {
    const AutoRange r = gc::autoRange(kCompressWins, eb);
    EXPECT_EQ(r.lo, 0u) << eb;
    EXPECT_EQ(r.hi, SIZE_MAX) << eb;
  }
  expectMatchesReference(kCompressWins);
}

TEST(AutoTune, NcclWinsAtEverySize) {
  for (size_t eb : {2, 4}) {
    const AutoRange r = gc::autoRange(kNcclWins, eb);
    EXPECT_FALSE(r.contains(0)) << eb;
    EXPECT_FALSE(r.contains(kNcclWins.largeCount)) << eb;
    EXPECT_FALSE(r.contains(SIZE_MAX - 1)) << eb;
  }
  expectMatchesReference(kNcclWins);
}

TEST(AutoTune, CrossoverFromTheFit) {
  // fp32: NCCL n/64 us, compressed 40 + n/128 us: equal at n = 5120.
  AutoRange r = gc::autoRange(kCrossover, 4);
  EXPECT_EQ(r.lo, 5121u);
  EXPECT_EQ(r.hi, SIZE_MAX);
  // fp16/bf16: NCCL's per-element cost halves to n/128, the compressed one
  // stays: compression never catches up with its 40 us of latency.
  r = gc::autoRange(kCrossover, 2);
  EXPECT_FALSE(r.contains(5121));
  EXPECT_FALSE(r.contains(size_t(1) << 40));
  expectMatchesReference(kCrossover);
  // Compressed latency lower but its slope steeper: only small calls gain.
  r = gc::autoRange(kUpperBound, 4);
  EXPECT_EQ(r.lo, 0u);
  EXPECT_EQ(r.hi, 5120u);
  expectMatchesReference(kUpperBound);
}

// Compression slower at both timed sizes, its line steeper and both
// intercepts negative (noisy timings on a loaded machine): the lines cross
// below the smallest timed count, where no timing supports compressing.
TEST(AutoTune, NoWinIsExtrapolatedBelowTheSmallestTimedCount) {
  // fp32: NCCL n/128 - 4 us, compressed n/16 - 48 us: equal at n = 804.6,
  // below smallCount = 1024, where compression is 4x slower (16 against 4 us).
  const AutoFigures f = figures(1024, 5120, 4, 36, 16, 272);
  for (size_t eb : {2, 4}) {
    const AutoRange r = gc::autoRange(f, eb);
    EXPECT_FALSE(r.contains(1)) << eb;
    EXPECT_FALSE(r.contains(600)) << eb;
    EXPECT_FALSE(r.contains(f.smallCount)) << eb;
    EXPECT_FALSE(r.contains(f.largeCount)) << eb;
  }
  expectMatchesReference(f);
  // The same slopes with compression winning at the smallest count keep the
  // range below the crossing (kUpperBound above): small calls do gain.
  EXPECT_TRUE(gc::autoRange(kUpperBound, 4).contains(1));
}

TEST(AutoTune, BadFiguresAreRefused) {
  EXPECT_EQ(gc::autoCheckFigures(kCrossover), gradcompSuccess);
  EXPECT_EQ(gc::autoCheckFigures(figures(5120, 1024, 16, 80, 48, 80)), gradcompInvalidArgument);
  EXPECT_NE(std::string(gradcompGetLastError()).find("smallCount=5120"), std::string::npos)
      << gradcompGetLastError();
  EXPECT_EQ(gc::autoCheckFigures(figures(1024, 5120, 16, 80, -1, 80)), gradcompInvalidArgument);
  EXPECT_NE(std::string(gradcompGetLastError()).find("compressed -1 us"), std::string::npos)
      << gradcompGetLastError();
}

gradcompConfig_t autoConfig(int autoTune) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 0;
  cfg.bucketSize = 64;
  cfg.autoTune = autoTune;
  return cfg;
}

// One in-place fp32 Sum call of n elements per rank, rank-dependent data.
std::vector<std::vector<float>> callAll(gctest::CpuWorld& w, size_t n, uint64_t seed,
                                        std::vector<std::vector<float>>* inputs = nullptr) {
  std::vector<std::vector<float>> buf(w.size());
  for (int r = 0; r < w.size(); ++r) buf[r] = gctest::normal(n, seed + r);
  if (inputs) *inputs = buf;
  auto res = w.run([&](int r) {
    return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                             nullptr);
  });
  for (int r = 0; r < w.size(); ++r) EXPECT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  return buf;
}

// The comm's saved state (gradcompCommSaveState).
std::vector<char> blobOf(gradcompComm_t c) {
  size_t bytes = 0;
  EXPECT_EQ(gradcompCommStateSize(c, &bytes), gradcompSuccess);
  std::vector<char> b(bytes);
  EXPECT_EQ(gradcompCommSaveState(c, b.data(), bytes), gradcompSuccess) << gradcompGetLastError();
  return b;
}

gradcompStats_t stats(gradcompComm_t c) {
  gradcompStats_t s;
  memset(&s, 0, sizeof(s));
  EXPECT_EQ(gradcompGetStats(c, &s), gradcompSuccess);
  return s;
}

// Every comm of w times on the host, as a socket comm does (the in-process
// world otherwise does not time), at counts `small` and `large`.
void timeOnHost(gctest::CpuWorld& w, size_t small = 1024, size_t large = 5120) {
  for (int r = 0; r < w.size(); ++r) {
    gc::AutoState& a = w.comm(r)->autoState;
    a.timeOnHost = true;
    a.timedCounts[0] = small;
    a.timedCounts[1] = large;
  }
}

TEST(AutoTune, RanksAgreeOnTheSlowestFigures) {
  const int N = 4;
  gctest::CpuWorld w(N, autoConfig(1));
  // Each rank measured differently; the slowest figures are the crossover's.
  for (int r = 0; r < N; ++r) {
    const float d = (float)(N - 1 - r);
    gc::autoInjectFigures(w.comm(r), figures(1024, 5120, 16 - d, 80 - 2 * d, 48 - d, 80 - 4 * d));
  }
  // 5000 elements: the agreed (crossover) figures pass it through on every
  // rank, where rank 0's own figures alone would have compressed it.
  EXPECT_TRUE(gc::autoRange(figures(1024, 5120, 13, 74, 45, 68), 4).contains(5000));
  std::vector<std::vector<float>> in;
  auto out = callAll(w, 5000, 11, &in);
  for (int r = 0; r < N; ++r) {
    const gc::AutoDecision& a = w.comm(r)->autoState.allReduce;
    gctest::expectAgreedCrossover(a, r);
    const gradcompStats_t s = stats(w.comm(r));
    EXPECT_EQ(s.callsAutoPassed, 1u) << r;
    EXPECT_EQ(s.callsPassedThrough, 1u) << r;
    EXPECT_EQ(s.callsCompressed, 0u) << r;
    for (size_t k = 0; k < 5000; ++k) {
      float sum = 0.0f;
      for (int i = 0; i < N; ++i) sum += in[i][k];
      ASSERT_EQ(out[r][k], sum) << "rank " << r << " element " << k;
    }
  }
  // 6000 elements: compressed on every rank, identical results.
  out = callAll(w, 6000, 7);
  for (int r = 0; r < N; ++r) {
    const gradcompStats_t s = stats(w.comm(r));
    EXPECT_EQ(s.callsCompressed, 1u) << r;
    EXPECT_EQ(s.callsAutoPassed, 1u) << r;
    EXPECT_EQ(memcmp(out[r].data(), out[0].data(), 6000 * sizeof(float)), 0) << r;
  }
}

TEST(AutoTune, UnusableFiguresCompressAsConfigured) {
  gctest::CpuWorld w(2, autoConfig(1));
  // Not positive even after the agreement: a broken clock, say.
  for (int r = 0; r < 2; ++r) gc::autoInjectFigures(w.comm(r), figures(1024, 5120, 16, 80, -1, 80));
  callAll(w, 8192, 3);
  callAll(w, 8192, 4);
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(w.comm(r)->autoState.allReduce.decided);
    EXPECT_FALSE(w.comm(r)->autoState.allReduce.timed);
    EXPECT_EQ(stats(w.comm(r)).callsCompressed, 2u);
  }
}

TEST(AutoTune, PassedCallsLeaveStateAndStepAlone) {
  gctest::CpuWorld w(2, autoConfig(1));
  for (int r = 0; r < 2; ++r) gc::autoInjectFigures(w.comm(r), kNcclWins);
  callAll(w, 8192, 3);
  for (int r = 0; r < 2; ++r) {
    const gradcompStats_t s = stats(w.comm(r));
    EXPECT_EQ(s.callsAutoPassed, 1u);
    EXPECT_EQ(s.callsPassedThrough, 1u);
    EXPECT_EQ(s.callsCompressed, 0u);
    EXPECT_EQ(s.steps, 0u);
    EXPECT_EQ(s.bytesOnWire, 0u);
    EXPECT_TRUE(w.comm(r)->states.empty());
  }
}

TEST(AutoTune, AutoOffAlwaysCompresses) {
  gctest::CpuWorld w(2, autoConfig(0));
  for (int r = 0; r < 2; ++r) gc::autoInjectFigures(w.comm(r), kNcclWins);
  callAll(w, 8192, 3);
  for (int r = 0; r < 2; ++r) {
    const gradcompStats_t s = stats(w.comm(r));
    EXPECT_EQ(s.callsCompressed, 1u);
    EXPECT_EQ(s.callsAutoPassed, 0u);
    EXPECT_FALSE(w.comm(r)->autoState.allReduce.decided);
    EXPECT_EQ(gradcompCommRetune(w.comm(r), nullptr), gradcompSuccess);
    EXPECT_FALSE(w.comm(r)->autoState.allReduce.decided);
  }
}

TEST(AutoTune, CpuBackendNeverTimesNorPasses) {
  const gradcompConfig_t cfg = autoConfig(1);
  ASSERT_EQ(cfg.autoTune, 1);  // the default
  gctest::CpuWorld w(3, cfg);
  callAll(w, 8192, 5);
  for (int r = 0; r < 3; ++r) {
    EXPECT_TRUE(w.comm(r)->autoState.allReduce.decided);
    EXPECT_FALSE(w.comm(r)->autoState.allReduce.timed);
    EXPECT_EQ(stats(w.comm(r)).callsCompressed, 1u);
    EXPECT_EQ(stats(w.comm(r)).callsAutoPassed, 0u);
  }
}

TEST(AutoTune, RetuneOnRequest) {
  gctest::CpuWorld w(2, autoConfig(1));
  for (int r = 0; r < 2; ++r) gc::autoInjectFigures(w.comm(r), kCompressWins);
  callAll(w, 8192, 1);
  // The network changed, but the decision holds until a retune.
  for (int r = 0; r < 2; ++r) gc::autoInjectFigures(w.comm(r), kNcclWins);
  callAll(w, 8192, 2);
  for (int r = 0; r < 2; ++r) EXPECT_EQ(stats(w.comm(r)).callsCompressed, 2u);
  auto res = w.run([&](int r) { return gradcompCommRetune(w.comm(r), nullptr); });
  for (int r = 0; r < 2; ++r) EXPECT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  callAll(w, 8192, 3);
  for (int r = 0; r < 2; ++r) {
    const gradcompStats_t s = stats(w.comm(r));
    EXPECT_EQ(s.callsCompressed, 2u);
    EXPECT_EQ(s.callsAutoPassed, 1u);
  }
  EXPECT_EQ(gradcompCommRetune(nullptr, nullptr), gradcompInvalidArgument);
}

TEST(AutoTune, RetuneWithNothingToCompressDoesNothing) {
  gradcompConfig_t none = autoConfig(1);
  none.method = gradcompMethodNone;
  gctest::CpuWorld w(2, none), one(1, autoConfig(1));
  for (gradcompComm_t c : {w.comm(0), w.comm(1), one.comm(0)}) {
    gc::autoInjectFigures(c, kNcclWins);
    EXPECT_EQ(gradcompCommRetune(c, nullptr), gradcompSuccess);
    EXPECT_FALSE(c->autoState.allReduce.decided);
  }
}

namespace {

// The timing path itself (the CUDA backend's, with the host clock here), for
// one collective: `call(world, count, seed)` makes one call on every rank and
// `which` is that collective's decision. The timing compresses at both sizes
// (whole blocks of the input: `small` and `large`) although minElements would
// pass them, agrees, and leaves the caller's residuals, momentum, RNG step,
// stats, workspace and config as they were: calls around a timing equal, bit
// for bit, those of a comm that never timed (`calls` counts them). localSize
// L > 1: hierarchical comms (nodes of L ranks), whose timed calls also run
// the inter-node child comm.
using CallFn = std::function<std::vector<std::vector<float>>(gctest::CpuWorld&, size_t, uint64_t)>;
void checkTimingLeavesTheCommAsItWas(int N, size_t count, const CallFn& call,
                                     gc::AutoDecision gc::AutoState::*which, size_t small,
                                     size_t large, uint64_t gradcompStats_t::*calls,
                                     int localSize = 0) {
  for (gradcompMethod_t method : {gradcompMethodQsgd, gradcompMethodDgc}) {
    SCOPED_TRACE(testing::Message() << "method " << (int)method << " localSize " << localSize);
    gradcompConfig_t cfg = autoConfig(1);
    cfg.localSize = localSize;
    cfg.method = method;
    cfg.density = 0.05f;
    cfg.warmupSteps = method == gradcompMethodDgc ? 3 : 0;
    gradcompConfig_t off = cfg;
    off.autoTune = 0;
    gctest::CpuWorld w(N, cfg), twin(N, off);
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(w.comm(r)->topo.hier(), localSize > 1);
      gc::autoInjectFigures(w.comm(r), kCompressWins);
    }
    std::vector<std::vector<std::vector<float>>> got, want;
    for (int step = 0; step < 2; ++step) {
      got.push_back(call(w, count, 10 + step));
      want.push_back(call(twin, count, 10 + step));
    }
    std::vector<std::vector<uint8_t>> saved(N);
    std::vector<gradcompStats_t> statsBefore(N);
    std::vector<void*> workspace(N);
    for (int r = 0; r < N; ++r) {
      gradcompComm* c = w.comm(r);
      saved[r] = gctest::savedBufferState(c);
      statsBefore[r] = stats(c);
      workspace[r] = c->workspace;
      (c->autoState.*which).injected = false;
      c->autoState.timeOnHost = true;
      c->autoState.timedCounts[0] = 2048;
      c->autoState.timedCounts[1] = 8192;
      c->cfg.minElements = 1 << 20;
    }
    auto res = w.run([&](int r) { return gradcompCommRetune(w.comm(r), nullptr); });
    const gc::AutoDecision& a0 = w.comm(0)->autoState.*which;
    for (int r = 0; r < N; ++r) {
      gradcompComm* c = w.comm(r);
      ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
      const gc::AutoDecision& a = c->autoState.*which;
      EXPECT_TRUE(a.timed);
      EXPECT_EQ(a.timedCompressed, 2u * (gc::kAutoWarmupCalls + gc::kAutoTimedCalls));
      EXPECT_EQ(a.figures.smallCount, small);
      EXPECT_EQ(a.figures.largeCount, large);
      EXPECT_EQ(gc::autoCheckFigures(a.figures), gradcompSuccess);
      EXPECT_EQ(memcmp(&a.figures, &a0.figures, sizeof(a.figures)), 0);
      EXPECT_EQ(a.range[1].lo, a0.range[1].lo);
      EXPECT_EQ(a.range[1].hi, a0.range[1].hi);
      EXPECT_EQ(c->cfg.minElements, size_t(1) << 20);
      EXPECT_EQ(c->workspace, workspace[r]);
      const gradcompStats_t s = stats(c);
      EXPECT_TRUE(gctest::sameStats(s, statsBefore[r])) << "rank " << r;
      EXPECT_TRUE(gctest::savedBufferState(c) == saved[r]) << "the residual state changed";
      c->cfg.minElements = 0;
      gc::autoInjectFigures(c, kCompressWins);
    }
    res = w.run([&](int r) { return gradcompCommRetune(w.comm(r), nullptr); });
    for (int step = 2; step < 4; ++step) {
      got.push_back(call(w, count, 10 + step));
      want.push_back(call(twin, count, 10 + step));
    }
    for (size_t k = 0; k < got.size(); ++k)
      for (int r = 0; r < N; ++r)
        EXPECT_TRUE(got[k][r] == want[k][r]) << "call " << k << " rank " << r;
    EXPECT_EQ(stats(w.comm(0)).*calls, 4u);
  }
}

}  // namespace

TEST(AutoTune, TimingLeavesTheCommAsItWas) {
  checkTimingLeavesTheCommAsItWas(
      2, 6000, [](gctest::CpuWorld& w, size_t n, uint64_t seed) { return callAll(w, n, seed); },
      &gc::AutoState::allReduce, 2048, 8192, &gradcompStats_t::callsCompressed);
}

// The same on hierarchical comms (2 nodes of 2 ranks), which tests/multirank's
// GRADCOMP_LOCAL_SIZE=2 world times on the GPU.
TEST(AutoTune, TimingLeavesAHierarchicalCommAsItWas) {
  checkTimingLeavesTheCommAsItWas(
      4, 6000, [](gctest::CpuWorld& w, size_t n, uint64_t seed) { return callAll(w, n, seed); },
      &gc::AutoState::allReduce, 2048, 8192, &gradcompStats_t::callsCompressed, 2);
}

// The CPU backend, reporting a CUDA-graph capture in progress when told to.
class CapturingBackend final : public gctest::ForwardingBackend {
 public:
  CapturingBackend(std::shared_ptr<gc::Backend> inner, const bool* capture)
      : ForwardingBackend(std::move(inner)), capture_(capture) {}
  bool capturing() const override { return *capture_; }

 private:
  const bool* capture_;
};

// Every comm of w on a CapturingBackend reporting *capture, with figures
// that make compression win.
void onCapturingBackends(gctest::CpuWorld& w, const bool* capture) {
  for (int r = 0; r < w.size(); ++r) {
    gradcompComm* c = w.comm(r);
    c->backend.reset(new CapturingBackend(std::move(c->backend), capture));
    gc::autoInjectFigures(c, kCompressWins);
  }
}

TEST(AutoTune, RefusedUnderCapture) {
  gctest::CpuWorld w(2, autoConfig(1));
  bool capture = true;
  onCapturingBackends(w, &capture);
  std::vector<std::vector<float>> buf(2, std::vector<float>(8192, 1.0f));
  auto call = [&](int r) {
    return gradcompAllReduce(buf[r].data(), buf[r].data(), 8192, ncclFloat32, ncclSum, w.comm(r),
                             nullptr);
  };
  // The first eligible call would time: refused before anything moves.
  auto res = w.run(call);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(res[r], gradcompInvalidUsage);
    EXPECT_FALSE(w.comm(r)->autoState.allReduce.decided);
    const gradcompStats_t s = stats(w.comm(r));
    EXPECT_EQ(s.callsCompressed + s.callsPassedThrough, 0u);
    EXPECT_EQ(buf[r][0], 1.0f);
  }
  std::string msg;
  w.run([&](int r) {
    if (r == 0) {
      gradcompAllReduce(buf[0].data(), buf[0].data(), 8192, ncclFloat32, ncclSum, w.comm(0),
                        nullptr);
      msg = gradcompGetLastError();
    }
    return gradcompSuccess;
  });
  EXPECT_NE(msg.find("captured into a CUDA graph"), std::string::npos) << msg;
  EXPECT_NE(msg.find("GRADCOMP_AUTO=0"), std::string::npos) << msg;
  // Eager: tuned; then a retune under capture is refused and the decision stays.
  capture = false;
  res = w.run(call);
  for (int r = 0; r < 2; ++r) EXPECT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  capture = true;
  for (int r = 0; r < 2; ++r) gc::autoInjectFigures(w.comm(r), kNcclWins);
  res = w.run([&](int r) { return gradcompCommRetune(w.comm(r), nullptr); });
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(res[r], gradcompInvalidUsage);
    EXPECT_TRUE(w.comm(r)->autoState.allReduce.timed);
    EXPECT_EQ(w.comm(r)->autoState.allReduce.range[1].lo, 0u);
  }
}

// A timing inside a call runs collectives of its own, under the caller's
// call record: a rank that passed another count on the first eligible call
// (call(w, r), `which`'s collective) makes every rank fail with the sentence
// naming both counts (`counts`), before any figure is agreed (a call passed
// to NCCL would otherwise read past the shorter buffer).
void expectTimingKeepsTheCallsAgreement(
    gc::AutoDecision gc::AutoState::*which, const std::vector<std::string>& counts,
    const std::function<gradcompResult_t(gctest::CpuWorld&, int)>& call) {
  gctest::CpuWorld w(2, autoConfig(1));
  timeOnHost(w, 2048, 8192);
  std::vector<std::string> why(2);
  auto res = w.run([&](int r) {
    const gradcompResult_t x = call(w, r);
    why[r] = gradcompGetLastError();
    return x;
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_FALSE((w.comm(r)->autoState.*which).timed) << r;
    EXPECT_EQ(res[r], gradcompInvalidUsage) << r;
    for (const std::string& c : counts) EXPECT_NE(why[r].find(c), std::string::npos) << why[r];
  }
}

}  // namespace

TEST(AutoTune, TimingKeepsTheCallsAgreement) {
  const size_t n[2] = {4096, 6144};
  std::vector<std::vector<float>> buf = {gctest::normal(n[0], 1), gctest::normal(n[1], 2)};
  expectTimingKeepsTheCallsAgreement(
      &gc::AutoState::allReduce, {"count=4096", "count=6144"}, [&](gctest::CpuWorld& w, int r) {
        return gradcompAllReduce(buf[r].data(), buf[r].data(), n[r], ncclFloat32, ncclSum,
                                 w.comm(r), nullptr);
      });
}

// A rank that cannot allocate what the timing needs (its scratch buffers, or
// the timed buffers' state and workspace) says so in an agreement before any
// timed call: every rank then passes that collective through, and the call
// that started the timing returns NCCL's result on every rank. Before, the
// short rank returned its allocation error while the other waited in the
// first timed call until the world's timeout.
TEST(AutoTune, ARankShortOfMemoryMakesEveryRankPassThrough) {
  // 16 KiB: the 32 KiB send scratch is refused; 80 KiB: the scratch (2 x 32
  // KiB) fits and a timed buffer's state or the workspace is refused.
  for (const size_t budget : {size_t(16) << 10, size_t(80) << 10}) {
    for (const bool rs : {false, true}) {
      SCOPED_TRACE(std::string(rs ? "reduce-scatter" : "allreduce") + ", budget " +
                   std::to_string(budget));
      gradcompConfig_t cfg = autoConfig(1);
      cfg.cpuTimeoutSec = 5;
      gctest::CpuWorld w(2, cfg);
      timeOnHost(w, 2048, 8192);
      auto shortRank = std::make_shared<gctest::AllocLimitBackend>(w.comm(1)->backend, budget);
      w.comm(1)->backend = shortRank;
      const size_t n = 4096, out = rs ? n / 2 : n;
      std::vector<std::vector<float>> in = {gctest::normal(n, 1), gctest::normal(n, 2)};
      std::vector<float> sum(n);
      for (size_t i = 0; i < n; ++i) sum[i] = in[0][i] + in[1][i];
      for (int call = 0; call < 2; ++call) {
        std::vector<std::vector<float>> got(2, std::vector<float>(out));
        auto res = w.run([&](int r) {
          return rs ? gradcompReduceScatter(in[r].data(), got[r].data(), out, ncclFloat32, ncclSum,
                                            w.comm(r), nullptr)
                    : gradcompAllReduce(in[r].data(), got[r].data(), n, ncclFloat32, ncclSum,
                                        w.comm(r), nullptr);
        });
        for (int r = 0; r < 2; ++r) {
          ASSERT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << gradcompGetLastError();
          const float* want = sum.data() + (rs ? r * out : 0);
          EXPECT_EQ(memcmp(got[r].data(), want, out * sizeof(float)), 0) << "rank " << r;
        }
      }
      EXPECT_GE(shortRank->refused(), 1u);
      for (int r = 0; r < 2; ++r) {
        gradcompComm* c = w.comm(r);
        const gc::AutoDecision& d = rs ? c->autoState.reduceScatter : c->autoState.allReduce;
        EXPECT_TRUE(d.decided && d.timed) << r;
        EXPECT_FALSE(d.range[1].contains(n)) << r;
        EXPECT_FALSE(d.range[0].contains(n)) << r;
        EXPECT_EQ(c->stats.callsAutoPassed, 2u) << r;
        EXPECT_EQ(c->stats.callsCompressed, 0u) << r;
        EXPECT_TRUE(c->states.empty()) << r;
        EXPECT_EQ(c->workspace, nullptr) << r;
        EXPECT_FALSE(c->autoState.reserving) << r;
      }
    }
  }
}

// After the readiness agreement the timed calls allocate nothing: the
// reserving pass made every buffer state and the workspace for the widest
// bits a DQ-SGD width may reach (a low variance target moves the timed calls
// from the configured 4 bits to 8 after the first), and the agreements use
// the backend's scratch. An allocation between the two agreements could fail
// on one rank while the others wait in a timed call.
TEST(AutoTune, TimedCallsAllocateNothing) {
  struct Case {
    const char* name;
    gradcompMethod_t method;
    gradcompBitsMode_t bitsMode;
    bool rs;
  };
  for (const Case& k : {Case{"qsgd dynamic", gradcompMethodQsgd, gradcompBitsDynamic, false},
                        Case{"qsgd dynamic rs", gradcompMethodQsgd, gradcompBitsDynamic, true},
                        Case{"qsgd budget", gradcompMethodQsgd, gradcompBitsBudget, false},
                        Case{"topk", gradcompMethodTopk, gradcompBitsFixed, false},
                        Case{"dgc rs", gradcompMethodDgc, gradcompBitsFixed, true}}) {
    SCOPED_TRACE(k.name);
    gradcompConfig_t cfg = autoConfig(1);
    cfg.method = k.method;
    cfg.bitsMode = k.bitsMode;
    cfg.bits = 4;
    cfg.bitsMin = 2;
    cfg.bitsMax = 8;
    cfg.varianceTarget = 1e-4f;
    cfg.bitsBudget = 6;
    cfg.cpuTimeoutSec = 5;
    gctest::CpuWorld w(2, cfg);
    timeOnHost(w, 2048, 8192);
    std::vector<std::shared_ptr<gctest::AllocLimitBackend>> wrapped;
    for (int r = 0; r < 2; ++r) {
      wrapped.push_back(
          std::make_shared<gctest::AllocLimitBackend>(w.comm(r)->backend, size_t(1) << 30));
      w.comm(r)->backend = wrapped.back();
    }
    const size_t n = 4096, out = k.rs ? n / 2 : n;
    std::vector<std::vector<float>> in = {gctest::normal(n, 1), gctest::normal(n, 2)};
    std::vector<std::vector<float>> got(2, std::vector<float>(out));
    auto res = w.run([&](int r) {
      return k.rs ? gradcompReduceScatter(in[r].data(), got[r].data(), out, ncclFloat32, ncclSum,
                                          w.comm(r), nullptr)
                  : gradcompAllReduce(in[r].data(), got[r].data(), n, ncclFloat32, ncclSum,
                                      w.comm(r), nullptr);
    });
    for (int r = 0; r < 2; ++r) {
      ASSERT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << gradcompGetLastError();
      const gc::AutoDecision& d =
          k.rs ? w.comm(r)->autoState.reduceScatter : w.comm(r)->autoState.allReduce;
      EXPECT_TRUE(d.timed) << r;
      EXPECT_GT(d.timedCompressed, 0u) << r;
      EXPECT_EQ(wrapped[r]->agreements(), 3) << r;
      EXPECT_EQ(wrapped[r]->allocsBetweenAgreements(), 0u) << r;
    }
  }
}

// The reduce-scatter: timed and decided on its own (its figures are its
// input counts, nranks * recvcount), at its first eligible call.

namespace {

// One fp32 Sum reduce-scatter of recvcount rc on every rank, out of place,
// rank-dependent inputs of nranks * rc elements; returns each rank's block.
std::vector<std::vector<float>> rsAll(gctest::CpuWorld& w, size_t rc, uint64_t seed,
                                      std::vector<std::vector<float>>* inputs = nullptr,
                                      bool keyed = false) {
  const int N = w.size();
  std::vector<std::vector<float>> in(N), out(N, std::vector<float>(rc));
  for (int r = 0; r < N; ++r) in[r] = gctest::normal((size_t)N * rc, seed + r);
  if (inputs) *inputs = in;
  auto res = w.run([&](int r) {
    return keyed ? gradcompReduceScatterKeyed(in[r].data(), out[r].data(), rc, ncclFloat32, ncclSum,
                                              w.comm(r), nullptr, 42)
                 : gradcompReduceScatter(in[r].data(), out[r].data(), rc, ncclFloat32, ncclSum,
                                         w.comm(r), nullptr);
  });
  for (int r = 0; r < N; ++r) EXPECT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  return out;
}

// NCCL's reduce-scatter on the CPU backend: rank r's block summed in rank order.
void expectExactReduceScatter(const std::vector<std::vector<float>>& in,
                              const std::vector<std::vector<float>>& out, size_t rc) {
  for (size_t r = 0; r < out.size(); ++r) {
    for (size_t k = 0; k < rc; ++k) {
      float sum = 0.0f;
      for (size_t i = 0; i < in.size(); ++i) sum += in[i][r * rc + k];
      ASSERT_EQ(out[r][k], sum) << "rank " << r << " element " << k;
    }
  }
}

}  // namespace

// Each collective decides from its own figures: figures where compression
// wins for the allreduce and loses for the reduce-scatter pass the
// reduce-scatter alone; the reduce-scatter's first call times nothing of the
// allreduce.
TEST(AutoTune, ReduceScatterDecidesFromItsOwnFigures) {
  gctest::CpuWorld w(2, autoConfig(1));
  for (int r = 0; r < 2; ++r) {
    gc::autoInjectFigures(w.comm(r), gc::AutoCall::AllReduce, kCompressWins);
    gc::autoInjectFigures(w.comm(r), gc::AutoCall::ReduceScatter, kNcclWins);
  }
  const size_t rc = 4096;
  std::vector<std::vector<float>> in;
  auto out = rsAll(w, rc, 5, &in);
  expectExactReduceScatter(in, out, rc);
  for (int r = 0; r < 2; ++r) {
    const gc::AutoState& a = w.comm(r)->autoState;
    EXPECT_TRUE(a.reduceScatter.timed) << r;
    EXPECT_FALSE(a.allReduce.decided) << r;
    const gradcompStats_t s = stats(w.comm(r));
    EXPECT_EQ(s.callsAutoPassed, 1u);
    EXPECT_EQ(s.callsPassedThrough, 1u);
    EXPECT_EQ(s.callsReduceScatter, 0u);
    EXPECT_EQ(s.callsCompressed, 0u);
    EXPECT_EQ(s.steps, 0u);
    EXPECT_TRUE(w.comm(r)->states.empty());
  }
  callAll(w, 8192, 3);  // the allreduce's own figures: compressed
  rsAll(w, rc, 6);
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(w.comm(r)->autoState.allReduce.timed) << r;
    const gradcompStats_t s = stats(w.comm(r));
    EXPECT_EQ(s.callsCompressed, 1u);
    EXPECT_EQ(s.callsAutoPassed, 2u);
    EXPECT_EQ(s.callsReduceScatter, 0u);
  }
}

// Ranks with different figures decide alike from the slowest ones, on both
// sides of the crossover (input counts: fp32 compresses from 5121 elements,
// fp16/bf16 never, kCrossover's), and a compressed call equals, bit for bit,
// the same call on an autoTune=0 world.
TEST(AutoTune, ReduceScatterRanksAgreeOnTheSlowestFigures) {
  const int N = 4;
  gradcompConfig_t off = autoConfig(0);
  gctest::CpuWorld w(N, autoConfig(1)), twin(N, off);
  for (int r = 0; r < N; ++r) {
    const float d = (float)(N - 1 - r);
    gc::autoInjectFigures(w.comm(r), gc::AutoCall::ReduceScatter,
                          figures(1024, 5120, 16 - d, 80 - 2 * d, 48 - d, 80 - 4 * d));
  }
  // recvcount 1250: 5000 input elements, passed on every rank, where rank 0's
  // own figures alone would have compressed it.
  EXPECT_TRUE(gc::autoRange(figures(1024, 5120, 13, 74, 45, 68), 4).contains(5000));
  std::vector<std::vector<float>> in;
  auto out = rsAll(w, 1250, 11, &in);
  expectExactReduceScatter(in, out, 1250);
  for (int r = 0; r < N; ++r) {
    const gc::AutoDecision& a = w.comm(r)->autoState.reduceScatter;
    gctest::expectAgreedCrossover(a, r);
    EXPECT_FALSE(a.range[0].contains(size_t(1) << 30)) << r;
    const gradcompStats_t s = stats(w.comm(r));
    EXPECT_EQ(s.callsAutoPassed, 1u) << r;
    EXPECT_EQ(s.callsCompressed, 0u) << r;
  }
  // recvcount 1281: 5124 input elements, compressed on every rank, as the
  // autoTune=0 twin compresses it.
  out = rsAll(w, 1281, 7);
  auto want = rsAll(twin, 1281, 7);
  for (int r = 0; r < N; ++r) {
    const gradcompStats_t s = stats(w.comm(r));
    EXPECT_EQ(s.callsReduceScatter, 1u) << r;
    EXPECT_EQ(s.callsCompressed, 1u) << r;
    EXPECT_EQ(s.callsAutoPassed, 1u) << r;
    EXPECT_TRUE(out[r] == want[r]) << r;
  }
  // bf16, the same count: NCCL moves half the bytes, and wins.
  std::vector<std::vector<uint16_t>> hin(N, std::vector<uint16_t>(N * 1281, 0x3f80));
  std::vector<std::vector<uint16_t>> hout(N, std::vector<uint16_t>(1281));
  auto res = w.run([&](int r) {
    return gradcompReduceScatter(hin[r].data(), hout[r].data(), 1281, ncclBfloat16, ncclSum,
                                 w.comm(r), nullptr);
  });
  for (int r = 0; r < N; ++r) {
    EXPECT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    EXPECT_EQ(stats(w.comm(r)).callsAutoPassed, 2u) << r;
    EXPECT_EQ(hout[r][0], 0x4080) << r;  // 4.0 in bf16: N ones, exactly
  }
}

// The residual of the one buffer of n elements a comm's state holds (host
// memory on the CPU backend); empty when there is none.
std::vector<float> residualOf(gradcompComm_t c, size_t n) {
  for (const auto& kv : c->states) {
    const gc::BufferState& s = kv.second;
    if (s.count == n && s.residual != nullptr)
      return std::vector<float>(s.residual, s.residual + n);
  }
  return {};
}

// The owner residual of that buffer (empty when there is none).
std::vector<float> ownerResidualOf(gradcompComm_t c, size_t n) {
  for (const auto& kv : c->states) {
    const gc::BufferState& s = kv.second;
    if (s.count == n && s.ownerResidual != nullptr)
      return std::vector<float>(s.ownerResidual, s.ownerResidual + s.ownerResidualCount);
  }
  return {};
}

// Where rank r's owner residual lies in an allreduce buffer of n elements
// (tests/common/owner_place.h: from the algorithms' descriptions, not from
// the library's span). Returns {offset, length}.
std::pair<size_t, size_t> ownerPlaceOf(const gradcompComm* c, size_t n) {
  const gc::Topology& t = c->topo;
  return gctest::ownerPlace(c->cfg, n, c->nranks, c->rank, t.nodes, t.localSize, t.node,
                            t.localRank);
}

// A call that a retune passes, of a buffer earlier calls compressed, sends
// its residual along: NCCL's exact collective of input + residual (summed as
// the transport sums, in rank order), the residual then zero, the step and
// the compressed calls' count alone. Before 2026-12-05 the residual stayed
// until a later retune compressed the buffer again. The hierarchical
// reduce-scatter keeps its residual in its permuted block order (state block
// l*k + j is input block R(j, l)), which the expectation follows. A QSGD
// allreduce's owner residual goes along too, on the chunk its rank reduced
// (before 2026-12-05 it stayed), with or without error feedback. And over
// the three calls nothing is lost: the outputs sum to the inputs.
struct PassCase {
  int N, L;
  bool rs, keyed;
  gradcompMethod_t method;
  gradcompAlgo_t algo = gradcompAlgoAuto;
  int errorFeedback = 1;
};

void expectPassSendsTheResidualAlong(const PassCase& pc) {
  const int N = pc.N;
  const bool rs = pc.rs, keyed = pc.keyed;
  SCOPED_TRACE(testing::Message() << "N=" << N << " L=" << pc.L
                                  << (rs ? " reduce-scatter" : " allreduce")
                                  << (keyed ? " keyed" : " unkeyed") << " method=" << pc.method
                                  << " algo=" << pc.algo << " ef=" << pc.errorFeedback);
  gradcompConfig_t cfg = autoConfig(1);
  cfg.method = pc.method;
  cfg.algo = pc.algo;
  cfg.errorFeedback = pc.errorFeedback;
  cfg.localSize = pc.L;
  cfg.density = 0.05f;
  cfg.momentumCorrection = 0;
  gctest::CpuWorld w(N, cfg);
  const size_t m = 3000, n = rs ? m * (size_t)N : m;
  std::vector<std::vector<float>> in(N), out(N, std::vector<float>(rs ? m : n));
  std::vector<double> sentIn(n, 0.0), gotOut(n, 0.0);
  auto call = [&](uint64_t seed) {
    for (int r = 0; r < N; ++r) in[r] = gctest::normal(n, seed + (uint64_t)r);
    auto res = w.run([&](int r) {
      void* o = out[r].data();
      if (rs) {
        return keyed ? gradcompReduceScatterKeyed(in[r].data(), o, m, ncclFloat32, ncclSum,
                                                  w.comm(r), nullptr, 42)
                     : gradcompReduceScatter(in[r].data(), o, m, ncclFloat32, ncclSum, w.comm(r),
                                             nullptr);
      }
      return keyed
                 ? gradcompAllReduceKeyed(in[r].data(), o, n, ncclFloat32, ncclSum, w.comm(r),
                                          nullptr, 42)
                 : gradcompAllReduce(in[r].data(), o, n, ncclFloat32, ncclSum, w.comm(r), nullptr);
    });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    for (int r = 0; r < N; ++r) {
      for (size_t k = 0; k < n; ++k) sentIn[k] += in[r][k];
      // The reduce-scatter's outputs, rank after rank, are the whole buffer;
      // every allreduce rank holds it all (rank 0's stands for them).
      if (rs || r == 0) {
        for (size_t k = 0; k < out[r].size(); ++k) gotOut[(rs ? r * m : 0) + k] += out[r][k];
      }
    }
  };
  for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), kCompressWins);
  call(21);
  call(22);
  for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), kNcclWins);
  auto res = w.run([&](int r) { return gradcompCommRetune(w.comm(r), nullptr); });
  for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  // Each rank's residual in input positions, and its owner residual.
  std::vector<std::vector<float>> carry(N), owner(N, std::vector<float>(n, 0.0f));
  bool carried = false, owned = false;
  for (int r = 0; r < N; ++r) {
    std::vector<float> state = residualOf(w.comm(r), n);
    if (pc.errorFeedback) {
      ASSERT_EQ(state.size(), n) << "rank " << r;
      // The multirank check reads it from a saved blob (gctest::savedResidual).
      const std::vector<char> blob = blobOf(w.comm(r));
      EXPECT_TRUE(gctest::savedResidual(std::vector<uint8_t>(blob.begin(), blob.end()), n) == state)
          << "rank " << r;
    } else {
      ASSERT_TRUE(state.empty()) << "rank " << r;
      state.assign(n, 0.0f);
    }
    const gc::Topology& t = w.comm(r)->topo;
    if (rs && t.hier()) {
      carry[r].resize(n);
      for (int l = 0; l < t.localSize; ++l) {
        for (int j = 0; j < t.nodes; ++j) {
          const size_t b = (size_t)l * t.nodes + j, at = (size_t)t.rankAt(j, l) * m;
          std::copy(state.begin() + b * m, state.begin() + (b + 1) * m, carry[r].begin() + at);
        }
      }
    } else {
      carry[r] = state;
    }
    for (float x : state) carried = carried || x != 0.0f;
    const std::vector<float> own = ownerResidualOf(w.comm(r), n);
    {
      // The multirank check reads it from a saved blob too.
      const std::vector<char> blob = blobOf(w.comm(r));
      EXPECT_TRUE(gctest::savedOwnerResidual(std::vector<uint8_t>(blob.begin(), blob.end()), n) ==
                  own)
          << "rank " << r;
    }
    if (!rs && pc.method == gradcompMethodQsgd) {
      const auto place = ownerPlaceOf(w.comm(r), n);
      ASSERT_LE(place.second, own.size()) << "rank " << r;
      for (size_t i = 0; i < place.second; ++i) owner[r][place.first + i] = own[i];
      for (size_t i = place.second; i < own.size(); ++i) ASSERT_EQ(own[i], 0.0f) << r << " " << i;
    }
    for (float x : own) owned = owned || x != 0.0f;
  }
  ASSERT_TRUE(carried || owned) << "two compressed calls left nothing to carry";
  call(23);
  for (int r = 0; r < N; ++r) {
    const size_t base = rs ? (size_t)r * m : 0;
    for (size_t k = 0; k < out[r].size(); ++k) {
      float sum = 0.0f;
      for (int q = 0; q < N; ++q)
        sum += (in[q][base + k] + carry[q][base + k]) + owner[q][base + k];
      ASSERT_EQ(out[r][k], sum) << "rank " << r << " element " << k;
    }
    const gradcompStats_t s = stats(w.comm(r));
    EXPECT_EQ(s.callsCompressed, 2u);
    EXPECT_EQ(s.callsAutoPassed, 1u);
    EXPECT_EQ(s.callsPassedThrough, 1u);
    for (float x : residualOf(w.comm(r), n)) ASSERT_EQ(x, 0.0f) << "rank " << r;
    for (float x : ownerResidualOf(w.comm(r), n)) ASSERT_EQ(x, 0.0f) << "rank " << r;
    // Spent once: later passes go plainly, at NCCL's cost.
    for (const auto& kv : w.comm(r)->states) {
      if (kv.second.count == n) EXPECT_TRUE(kv.second.residualSent) << "rank " << r;
    }
  }
  // Nothing lost, only delayed: what the three calls put out is what they
  // were given, but for float rounding (|sums| of a few dozen N(0,1) terms:
  // well under 1e-4), while a chunk's owner residual left behind is a
  // fraction of a quantization level (scale / 7 at 4 bits, ~0.1 here).
  // Without error feedback the ranks' own quantization error is lost by
  // design: then only the exact sum above is checked.
  if (pc.errorFeedback) {
    for (size_t k = 0; k < n; ++k)
      ASSERT_NEAR(gotOut[k], sentIn[k], 1e-4) << "element " << k << ": lost over the calls";
  }
}

// A transport whose pass-through fails, on every rank alike, while armed.
class FailingPassTransport final : public gctest::ForwardingTransport {
 public:
  using ForwardingTransport::ForwardingTransport;
  bool armed = false;
  gradcompResult_t passThrough(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op) override {
    if (armed) return gc::setError(gradcompInternalError, "test: the pass-through failed");
    return ForwardingTransport::passThrough(send, recv, count, type, op);
  }
};

// Every rank of w on a FailingPassTransport, disarmed, with figures where
// compressing wins: the transports, which the comms own.
std::vector<FailingPassTransport*> failingPassWorld(gctest::CpuWorld& w) {
  std::vector<FailingPassTransport*> tr(w.size());
  for (int r = 0; r < w.size(); ++r) {
    gradcompComm_t c = w.comm(r);
    tr[r] = new FailingPassTransport(std::move(c->transport));
    c->transport.reset(tr[r]);
    gc::autoInjectFigures(c, kCompressWins);
  }
  return tr;
}

// A flush whose exchange fails leaves the residual, the owner residual and
// an in-place call's buffer as they were (the caller may retry the call
// with the same gradient), and the retry sends them once.
void expectAFailedPassKeepsTheResidual(bool inPlace) {
  SCOPED_TRACE(inPlace ? "in place" : "out of place");
  const int N = 3;
  const size_t n = 4096;
  gctest::CpuWorld w(N, autoConfig(1));
  const std::vector<FailingPassTransport*> tr = failingPassWorld(w);
  std::vector<std::vector<float>> in(N), out(N, std::vector<float>(n));
  auto call = [&](uint64_t seed) {
    for (int r = 0; r < N; ++r) in[r] = gctest::normal(n, seed + (uint64_t)r);
    if (inPlace) out = in;
    return w.run([&](int r) {
      return gradcompAllReduceKeyed(inPlace ? out[r].data() : in[r].data(), out[r].data(), n,
                                    ncclFloat32, ncclSum, w.comm(r), nullptr, 9);
    });
  };
  for (gradcompResult_t rc : call(31)) ASSERT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
  for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), kNcclWins);
  auto res = w.run([&](int r) { return gradcompCommRetune(w.comm(r), nullptr); });
  for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  std::vector<std::vector<float>> carry(N), own(N), owner(N, std::vector<float>(n, 0.0f));
  bool owned = false;
  for (int r = 0; r < N; ++r) {
    carry[r] = residualOf(w.comm(r), n);
    ASSERT_EQ(carry[r].size(), n);
    own[r] = ownerResidualOf(w.comm(r), n);
    const auto place = ownerPlaceOf(w.comm(r), n);
    ASSERT_LE(place.second, own[r].size());
    for (size_t i = 0; i < place.second; ++i) owned = owned || own[r][i] != 0.0f;
    std::copy(own[r].begin(), own[r].begin() + place.second, owner[r].begin() + place.first);
    tr[r]->armed = true;
  }
  ASSERT_TRUE(owned) << "a compressed two-shot call left no owner residual";
  for (gradcompResult_t rc : call(32)) EXPECT_EQ(rc, gradcompInternalError);
  for (int r = 0; r < N; ++r) {
    EXPECT_TRUE(residualOf(w.comm(r), n) == carry[r]) << "rank " << r << ": the residual moved";
    EXPECT_TRUE(ownerResidualOf(w.comm(r), n) == own[r])
        << "rank " << r << ": the owner residual moved";
    if (inPlace) EXPECT_TRUE(out[r] == in[r]) << "rank " << r << ": the caller's buffer changed";
    tr[r]->armed = false;
  }
  for (gradcompResult_t rc : call(32)) ASSERT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
  for (int r = 0; r < N; ++r) {
    for (size_t i = 0; i < n; ++i) {
      float want = 0.0f;
      for (int q = 0; q < N; ++q) want += (in[q][i] + carry[q][i]) + owner[q][i];
      ASSERT_EQ(out[r][i], want) << "rank " << r << " element " << i;
    }
    for (float x : ownerResidualOf(w.comm(r), n)) ASSERT_EQ(x, 0.0f) << "rank " << r;
  }
}

// One in-place float allreduce on every rank of w: rank r's buf holds
// normal(seed + r), rank 0's element `bad` made infinite (none when bad is
// past the end); every rank must succeed.
void allReduceWithInf(gctest::CpuWorld& w, std::vector<std::vector<float>>& buf, uint64_t seed,
                      size_t bad) {
  const size_t n = buf[0].size();
  for (size_t r = 0; r < buf.size(); ++r) {
    const std::vector<float> g = gctest::normal(n, seed + (uint64_t)r);
    std::copy(g.begin(), g.end(), buf[r].begin());
  }
  if (bad < n) buf[0][bad] = INFINITY;
  auto res = w.run([&](int r) {
    return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                             nullptr);
  });
  for (size_t r = 0; r < buf.size(); ++r)
    ASSERT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << gradcompGetLastError();
}

// A passed call whose gradient is not finite at an element (a skipped
// step) sends the residual along, and its output being non-finite, every
// rank then clears its residual and owner residual (as a compressed call
// does): nothing of that step is sent later.
TEST(AutoTune, APassedCallWithANonFiniteOutputClearsTheState) {
  const int N = 3;
  const size_t n = 4096;
  gctest::CpuWorld w(N, autoConfig(1));
  for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), kCompressWins);
  std::vector<std::vector<float>> buf(N, std::vector<float>(n));  // the state's key: one address
  auto call = [&](uint64_t seed, size_t bad) { allReduceWithInf(w, buf, seed, bad); };
  call(41, n);
  for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), kNcclWins);
  auto res = w.run([&](int r) { return gradcompCommRetune(w.comm(r), nullptr); });
  for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  // Rank 1 reduces chunk 1: the bad element is the first of it.
  const auto place = ownerPlaceOf(w.comm(1), n);
  ASSERT_GT(place.second, 0u);
  const size_t bad = place.first;
  const std::vector<float> res0 = residualOf(w.comm(0), n), own1 = ownerResidualOf(w.comm(1), n);
  ASSERT_NE(own1[0], 0.0f);
  ASSERT_NE(res0[bad], 0.0f);
  call(42, bad);
  for (int r = 0; r < N; ++r) EXPECT_TRUE(std::isinf(buf[r][bad])) << "rank " << r;
  for (int r = 0; r < N; ++r) {
    for (float x : residualOf(w.comm(r), n)) ASSERT_EQ(x, 0.0f) << "rank " << r;
    for (float x : ownerResidualOf(w.comm(r), n)) ASSERT_EQ(x, 0.0f) << "rank " << r;
  }
}

// Takes a comm's memory away from here on: its workspace given back, its
// backend refusing every allocation until the returned one's setBudget.
std::shared_ptr<gctest::AllocLimitBackend> shortOfMemory(gradcompComm* c) {
  auto limited = std::make_shared<gctest::AllocLimitBackend>(c->backend, 0);
  c->backend->release(c->workspace);
  c->workspace = nullptr;
  c->workspaceBytes = 0;
  c->backend = limited;
  return limited;
}

// A rank that cannot have the workspace a passed call needs to send its
// residual along passes the call plainly (its residual waits), but ends it as
// its peers do: with the check of the output, which for a reduce-scatter is
// a one-float allreduce every rank must join (before, the short rank skipped
// it and its peers waited until the world's timeout), and which clears the
// short rank's state too where the output is non-finite.
TEST(AutoTune, ARankShortOfWorkspaceStillChecksThePassedOutput) {
  for (const bool rs : {true, false}) {
    for (const bool overflow : {false, true}) {
      SCOPED_TRACE(std::string(rs ? "reduce-scatter" : "allreduce") +
                   (overflow ? ", overflowing" : ", finite"));
      const int N = 3;
      const size_t m = 2048, n = m * N, out = rs ? m : n;
      gradcompConfig_t cfg = autoConfig(1);
      cfg.cpuTimeoutSec = 5;
      gctest::CpuWorld w(N, cfg);
      for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), kCompressWins);
      std::vector<std::vector<float>> in(N), got(N, std::vector<float>(out));
      auto call = [&] {
        return w.run([&](int r) {
          return rs ? gradcompReduceScatter(in[r].data(), got[r].data(), m, ncclFloat32, ncclSum,
                                            w.comm(r), nullptr)
                    : gradcompAllReduce(in[r].data(), got[r].data(), n, ncclFloat32, ncclSum,
                                        w.comm(r), nullptr);
        });
      };
      for (int r = 0; r < N; ++r) in[r] = gctest::normal(n, 7 + r);
      auto res = call();
      for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
      for (int r = 0; r < N; ++r) ASSERT_EQ(w.comm(r)->stats.callsCompressed, 1u) << r;
      ASSERT_FALSE(residualOf(w.comm(1), n).empty());
      for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), kNcclWins);
      res = w.run([&](int r) { return gradcompCommRetune(w.comm(r), nullptr); });
      for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
      // Rank 1: no memory for a larger workspace than none.
      auto shortRank = shortOfMemory(w.comm(1));
      const std::vector<float> kept1 = residualOf(w.comm(1), n);
      for (int r = 0; r < N; ++r) {
        in[r] = gctest::normal(n, 17 + r);
        // Finite on every rank, the sum past fp32's largest value.
        if (overflow) in[r][0] = 3e38f;
      }
      res = call();
      for (int r = 0; r < N; ++r)
        ASSERT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << gradcompGetLastError();
      EXPECT_GE(shortRank->refused(), 1u);
      for (int r = 0; r < N; ++r) EXPECT_EQ(w.comm(r)->stats.callsPassedThrough, 1u) << r;
      EXPECT_EQ(std::isinf(got[0][0]), overflow);
      for (int r = 0; r < N; ++r) {
        const std::vector<float> resid = residualOf(w.comm(r), n);
        ASSERT_EQ(resid.size(), n) << r;
        if (overflow) {
          for (float x : resid) ASSERT_EQ(x, 0.0f) << "rank " << r;
        } else if (r == 1) {
          // Kept for the next compressed call.
          EXPECT_EQ(memcmp(resid.data(), kept1.data(), n * sizeof(float)), 0);
        }
      }
    }
  }
}

// A rank short of the workspace in a reduce-scatter's first passed call keeps
// its residual for the next compressed call, as its peers, which sent theirs,
// pass the later calls plainly: it passes them plainly too, whether its memory
// came back or not. (Before, it tried to send its residual again at every
// passed call and ran the output's check, a one-float allreduce its peers,
// whose residual was spent, never joined: the call timed out.)
TEST(AutoTune, ARankShortOfWorkspacePassesTheLaterCallsAsItsPeersDo) {
  const int N = 3;
  const size_t m = 2048, n = m * N;
  gradcompConfig_t cfg = autoConfig(1);
  cfg.cpuTimeoutSec = 2;
  gctest::CpuWorld w(N, cfg);
  for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), kCompressWins);
  std::vector<std::vector<float>> in(N), got(N, std::vector<float>(m));
  std::vector<std::string> err(N);
  auto call = [&](uint64_t seed) {
    for (int r = 0; r < N; ++r) in[r] = gctest::normal(n, seed + (uint64_t)r);
    return w.run([&](int r) {
      const gradcompResult_t rc = gradcompReduceScatter(in[r].data(), got[r].data(), m, ncclFloat32,
                                                        ncclSum, w.comm(r), nullptr);
      err[r] = rc == gradcompSuccess ? "" : gradcompGetLastError();
      return rc;
    });
  };
  for (gradcompResult_t rc : call(7)) ASSERT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
  for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), kNcclWins);
  auto res = w.run([&](int r) { return gradcompCommRetune(w.comm(r), nullptr); });
  for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  auto shortRank = shortOfMemory(w.comm(1));
  const std::vector<float> kept1 = residualOf(w.comm(1), n);
  // The first passed call (the peers flush), one more with rank 1 still
  // short, one with its memory back.
  for (int k = 0; k < 3; ++k) {
    if (k == 2) shortRank->setBudget(size_t(1) << 30);
    res = call(17 + 10 * (uint64_t)k);
    for (int r = 0; r < N; ++r)
      ASSERT_EQ(res[r], gradcompSuccess) << "call " << k << " rank " << r << ": " << err[r];
    for (int r = 0; r < N; ++r) {
      EXPECT_EQ(w.comm(r)->stats.callsPassedThrough, (uint64_t)k + 1) << r;
      // After the first call every rank passes plainly: the plain sums.
      for (size_t i = 0; k > 0 && i < m; ++i) {
        float want = 0.0f;
        for (int q = 0; q < N; ++q) want += in[q][(size_t)r * m + i];
        ASSERT_EQ(got[r][i], want) << "call " << k << " rank " << r << " element " << i;
      }
    }
    // Rank 1's residual waits for the next compressed call.
    EXPECT_TRUE(residualOf(w.comm(1), n) == kept1) << "call " << k;
  }
}

// A passed call spends the residual once (BufferState::residualSent): a comm
// resumed from a state saved after that call passes the next calls plainly
// too, bit for bit as the saved comm does. A pass leaves no residual (sent,
// or cleared by a non-finite output), so the saved comms first get back the
// residual and owner residual of the ordinary compressed call before it, as
// a state saved by the build of 2026-12-05 held what a non-finite element
// kept: a comm that sent them again (the saved one, or the resumed one that
// lost the flag) puts out other values and leaves another state.
TEST(AutoTune, AResumedCommDoesNotSendASpentResidualAgain) {
  const int N = 3;
  const size_t n = 4096;
  std::vector<std::vector<float>> buf(N, std::vector<float>(n));  // the state's key: one address
  auto call = [&](gctest::CpuWorld& w, uint64_t seed) {
    allReduceWithInf(w, buf, seed, n);
    return buf;
  };
  std::vector<std::vector<char>> blobs(N);
  std::vector<std::vector<float>> want;
  {
    gctest::CpuWorld w(N, autoConfig(1));
    for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), kCompressWins);
    call(w, 41);
    std::vector<std::vector<float>> kept(N), keptOwner(N);
    bool nonzero = false;
    for (int r = 0; r < N; ++r) {
      kept[r] = residualOf(w.comm(r), n);
      keptOwner[r] = ownerResidualOf(w.comm(r), n);
      ASSERT_EQ(kept[r].size(), n) << r;
      for (float x : kept[r]) nonzero = nonzero || x != 0.0f;
    }
    ASSERT_TRUE(nonzero) << "the compressed call left no residual";
    for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), kNcclWins);
    auto res = w.run([&](int r) { return gradcompCommRetune(w.comm(r), nullptr); });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    call(w, 42);  // passed: the residual sent
    for (int r = 0; r < N; ++r) {
      for (auto& kv : w.comm(r)->states) {
        gc::BufferState& s = kv.second;
        if (s.count != n) continue;
        ASSERT_TRUE(s.residualSent) << r;
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(s.residual[i], 0.0f) << "rank " << r;
        std::copy(kept[r].begin(), kept[r].end(), s.residual);
        std::copy(keptOwner[r].begin(), keptOwner[r].end(), s.ownerResidual);
      }
      blobs[r] = blobOf(w.comm(r));
    }
    want = call(w, 43);  // passed plainly
    for (int r = 0; r < N; ++r) EXPECT_EQ(blobOf(w.comm(r)), blobs[r]) << r;
  }
  gctest::CpuWorld resumed(N, autoConfig(1));
  // This comm's own figures would compress; the loaded ones pass.
  for (int r = 0; r < N; ++r) gc::autoInjectFigures(resumed.comm(r), kCompressWins);
  auto res = resumed.run([&](int r) {
    return gradcompCommLoadState(resumed.comm(r), blobs[r].data(), blobs[r].size());
  });
  for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  const auto got = call(resumed, 43);
  for (int r = 0; r < N; ++r) {
    EXPECT_EQ(stats(resumed.comm(r)).callsAutoPassed, 1u) << r;
    size_t differ = 0;
    for (size_t i = 0; i < n; ++i) differ += memcmp(&got[r][i], &want[r][i], sizeof(float)) != 0;
    EXPECT_EQ(differ, 0u) << "rank " << r << ": the resumed call sent the spent residual again";
    EXPECT_EQ(blobOf(resumed.comm(r)), blobs[r]) << "rank " << r << ": the state moved";
  }
}

TEST(AutoTune, AFailedPassKeepsTheResidualForTheRetry) {
  expectAFailedPassKeepsTheResidual(false);
  expectAFailedPassKeepsTheResidual(true);
}

// A reduce-scatter flush whose exchange went out but whose output's check
// failed (the allreduce of its non-finite flag, every rank alike) fails the
// call and leaves the residual as it was, as a failed exchange does: the
// retry sends it once. Before, the residual was spent and marked sent by
// then, so the retry went plainly and what it held was lost.
TEST(AutoTune, AReduceScatterFlushWhoseCheckFailsKeepsTheResidual) {
  const int N = 3;
  const size_t m = 1536, n = N * m;
  gctest::CpuWorld w(N, autoConfig(1));
  const std::vector<FailingPassTransport*> tr = failingPassWorld(w);
  std::vector<std::vector<float>> in(N), out(N, std::vector<float>(m));
  auto call = [&](uint64_t seed) {
    for (int r = 0; r < N; ++r) in[r] = gctest::normal(n, seed + (uint64_t)r);
    return w.run([&](int r) {
      return gradcompReduceScatterKeyed(in[r].data(), out[r].data(), m, ncclFloat32, ncclSum,
                                        w.comm(r), nullptr, 9);
    });
  };
  for (gradcompResult_t rc : call(31)) ASSERT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
  for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), kNcclWins);
  auto res = w.run([&](int r) { return gradcompCommRetune(w.comm(r), nullptr); });
  for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  std::vector<std::vector<float>> carry(N);
  bool carried = false;
  for (int r = 0; r < N; ++r) {
    carry[r] = residualOf(w.comm(r), n);
    ASSERT_EQ(carry[r].size(), n);
    for (float x : carry[r]) carried = carried || x != 0.0f;
    tr[r]->armed = true;
  }
  ASSERT_TRUE(carried) << "a compressed reduce-scatter left no residual";
  for (gradcompResult_t rc : call(32)) EXPECT_EQ(rc, gradcompInternalError);
  for (int r = 0; r < N; ++r) {
    EXPECT_TRUE(residualOf(w.comm(r), n) == carry[r]) << "rank " << r << ": the residual moved";
    EXPECT_EQ(stats(w.comm(r)).callsPassedThrough, 0u) << r;
    tr[r]->armed = false;
  }
  for (gradcompResult_t rc : call(32)) ASSERT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
  for (int r = 0; r < N; ++r) {
    for (size_t k = 0; k < m; ++k) {
      float want = 0.0f;
      for (int q = 0; q < N; ++q) want += in[q][r * m + k] + carry[q][r * m + k];
      ASSERT_EQ(out[r][k], want) << "rank " << r << " element " << k;
    }
    for (float x : residualOf(w.comm(r), n)) ASSERT_EQ(x, 0.0f) << "rank " << r;
    EXPECT_EQ(stats(w.comm(r)).callsPassedThrough, 1u) << r;
  }
}

TEST(AutoTune, APassedCallSendsTheResidualAlong) {
  const gradcompMethod_t qsgd = gradcompMethodQsgd;
  for (bool keyed : {false, true}) {
    expectPassSendsTheResidualAlong({3, 1, true, keyed, qsgd});
    expectPassSendsTheResidualAlong({3, 1, false, keyed, qsgd});  // two-shot: chunk r
  }
  expectPassSendsTheResidualAlong({4, 1, false, true, qsgd, gradcompAlgoRing});      // chunk r+1
  expectPassSendsTheResidualAlong({3, 1, false, false, qsgd, gradcompAlgoAuto, 0});  // owner only
  expectPassSendsTheResidualAlong({4, 2, true, true, qsgd});                         // permuted
  expectPassSendsTheResidualAlong({4, 2, false, true, qsgd});  // shards (allgather among 2 nodes)
  expectPassSendsTheResidualAlong({6, 2, false, true, qsgd});  // shards, two-shot among 3 nodes
  expectPassSendsTheResidualAlong({6, 2, false, false, qsgd, gradcompAlgoRing});
  expectPassSendsTheResidualAlong({3, 1, false, true, gradcompMethodTopk});
  expectPassSendsTheResidualAlong({4, 2, true, false, gradcompMethodDgc});  // no momentum
  expectPassSendsTheResidualAlong({3, 1, false, true, gradcompMethodRandk});
}

// A retune of a comm that never reduce-scattered times the allreduce only;
// the reduce-scatter still times at its first eligible call.
TEST(AutoTune, RetuneLeavesAnUntunedReduceScatterLazy) {
  gctest::CpuWorld w(2, autoConfig(1));
  for (int r = 0; r < 2; ++r) {
    gc::autoInjectFigures(w.comm(r), gc::AutoCall::AllReduce, kCompressWins);
    gc::autoInjectFigures(w.comm(r), gc::AutoCall::ReduceScatter, kNcclWins);
  }
  auto res = w.run([&](int r) { return gradcompCommRetune(w.comm(r), nullptr); });
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    EXPECT_TRUE(w.comm(r)->autoState.allReduce.timed);
    EXPECT_FALSE(w.comm(r)->autoState.reduceScatter.decided);
  }
  rsAll(w, 4096, 1);
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(w.comm(r)->autoState.reduceScatter.timed);
    EXPECT_EQ(stats(w.comm(r)).callsAutoPassed, 1u);
  }
}

TEST(AutoTune, ReduceScatterAutoOffAlwaysCompresses) {
  gctest::CpuWorld w(2, autoConfig(0));
  for (int r = 0; r < 2; ++r) gc::autoInjectFigures(w.comm(r), kNcclWins);
  rsAll(w, 4096, 3);
  for (int r = 0; r < 2; ++r) {
    const gradcompStats_t s = stats(w.comm(r));
    EXPECT_EQ(s.callsReduceScatter, 1u);
    EXPECT_EQ(s.callsAutoPassed, 0u);
    EXPECT_FALSE(w.comm(r)->autoState.reduceScatter.decided);
  }
}

// The CPU backend does not time the reduce-scatter either.
TEST(AutoTune, ReduceScatterCpuBackendNeverTimes) {
  gctest::CpuWorld w(2, autoConfig(1));
  rsAll(w, 4096, 3);
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(w.comm(r)->autoState.reduceScatter.decided);
    EXPECT_FALSE(w.comm(r)->autoState.reduceScatter.timed);
    EXPECT_EQ(stats(w.comm(r)).callsReduceScatter, 1u);
  }
}

// A hierarchical comm (2 nodes of 2 ranks): its reduce-scatter passes to
// the whole world's reduce-scatter, or compresses exactly as autoTune=0 does.
TEST(AutoTune, ReduceScatterOnAHierarchicalComm) {
  gradcompConfig_t cfg = autoConfig(1);
  cfg.localSize = 2;
  gradcompConfig_t off = cfg;
  off.autoTune = 0;
  for (bool nccl : {true, false}) {
    SCOPED_TRACE(nccl ? "NCCL wins" : "compression wins");
    gctest::CpuWorld w(4, cfg), twin(4, off);
    for (int r = 0; r < 4; ++r) gc::autoInjectFigures(w.comm(r), nccl ? kNcclWins : kCompressWins);
    const size_t rc = 2500;
    // Keyed: an unkeyed call's state is its buffers' address, which the
    // heap may or may not give back at the second step (then it would use
    // the first step's residual in one world and not in the other).
    for (int step = 0; step < 2; ++step) {
      std::vector<std::vector<float>> in;
      auto out = rsAll(w, rc, 30 + step, &in, true);
      if (nccl) {
        expectExactReduceScatter(in, out, rc);
      } else {
        auto want = rsAll(twin, rc, 30 + step, nullptr, true);
        for (int r = 0; r < 4; ++r)
          EXPECT_TRUE(out[r] == want[r]) << "step " << step << " rank " << r;
      }
    }
    for (int r = 0; r < 4; ++r) {
      ASSERT_TRUE(w.comm(r)->topo.hier());
      const gradcompStats_t s = stats(w.comm(r));
      EXPECT_EQ(s.callsAutoPassed, nccl ? 2u : 0u);
      EXPECT_EQ(s.callsReduceScatter, nccl ? 0u : 2u);
    }
  }
}

// The same for the reduce-scatter's timing: its sizes are whole blocks of the
// input (3 ranks: 2048 and 8192 round down to 2046 and 8190).
TEST(AutoTune, ReduceScatterTimingLeavesTheCommAsItWas) {
  checkTimingLeavesTheCommAsItWas(
      3, 2000, [](gctest::CpuWorld& w, size_t rc, uint64_t seed) { return rsAll(w, rc, seed); },
      &gc::AutoState::reduceScatter, 2046, 8190, &gradcompStats_t::callsReduceScatter);
}

// And on hierarchical comms (2 nodes of 2 ranks), as tests/multirank's
// checkAutoRs times them in its GRADCOMP_LOCAL_SIZE=2 world.
TEST(AutoTune, ReduceScatterTimingLeavesAHierarchicalCommAsItWas) {
  checkTimingLeavesTheCommAsItWas(
      4, 2000, [](gctest::CpuWorld& w, size_t rc, uint64_t seed) { return rsAll(w, rc, seed); },
      &gc::AutoState::reduceScatter, 2048, 8192, &gradcompStats_t::callsReduceScatter, 2);
}

// As for the allreduce: the timing runs under the caller's call record, so
// ranks that passed different recvcounts all fail, naming both input counts.
TEST(AutoTune, ReduceScatterTimingKeepsTheCallsAgreement) {
  const size_t rc[2] = {2048, 3072};
  std::vector<std::vector<float>> in = {gctest::normal(2 * rc[0], 1), gctest::normal(2 * rc[1], 2)};
  std::vector<std::vector<float>> out = {std::vector<float>(rc[0]), std::vector<float>(rc[1])};
  expectTimingKeepsTheCallsAgreement(
      &gc::AutoState::reduceScatter, {"recvcount=2048", "recvcount=3072"},
      [&](gctest::CpuWorld& w, int r) {
        return gradcompReduceScatter(in[r].data(), out[r].data(), rc[r], ncclFloat32, ncclSum,
                                     w.comm(r), nullptr);
      });
}

// The reduce-scatter's first eligible call would time: refused under capture
// before anything moves, and tuned at the first eager call.
TEST(AutoTune, ReduceScatterRefusedUnderCapture) {
  gctest::CpuWorld w(2, autoConfig(1));
  bool capture = true;
  onCapturingBackends(w, &capture);
  std::vector<std::vector<float>> in(2, std::vector<float>(8192, 1.0f));
  std::vector<std::vector<float>> out(2, std::vector<float>(4096, -1.0f));
  std::vector<std::string> why(2);
  auto call = [&](int r) {
    const gradcompResult_t x = gradcompReduceScatter(in[r].data(), out[r].data(), 4096, ncclFloat32,
                                                     ncclSum, w.comm(r), nullptr);
    why[r] = gradcompGetLastError();
    return x;
  };
  auto res = w.run(call);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(res[r], gradcompInvalidUsage);
    EXPECT_NE(why[r].find("GRADCOMP_AUTO=0"), std::string::npos) << why[r];
    EXPECT_FALSE(w.comm(r)->autoState.reduceScatter.decided);
    const gradcompStats_t s = stats(w.comm(r));
    EXPECT_EQ(s.callsCompressed + s.callsPassedThrough, 0u);
    EXPECT_EQ(out[r][0], -1.0f);
  }
  capture = false;
  res = w.run(call);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(res[r], gradcompSuccess) << why[r];
    EXPECT_TRUE(w.comm(r)->autoState.reduceScatter.timed);
    EXPECT_EQ(stats(w.comm(r)).callsReduceScatter, 1u);
  }
}

// A checkpoint carries auto's agreed figures: a comm that loads it decides as
// the saved one did (the resumed run passes and compresses the same calls, bit
// for bit), not from a timing of its own; gradcompCommRetune times afresh, and
// autoTune=0 ignores them.
TEST(AutoTune, ALoadedStateDecidesAsTheSavedComm) {
  std::vector<std::vector<char>> blobs(2), untimed(2);
  {
    gctest::CpuWorld saved(2, autoConfig(1));
    for (int r = 0; r < 2; ++r) untimed[r] = blobOf(saved.comm(r));
    for (int r = 0; r < 2; ++r) gc::autoInjectFigures(saved.comm(r), kNcclWins);
    callAll(saved, 5000, 21);  // tunes: NCCL wins, passed
    for (int r = 0; r < 2; ++r) {
      ASSERT_EQ(stats(saved.comm(r)).callsAutoPassed, 1u);
      blobs[r] = blobOf(saved.comm(r));
      // The figures' record: 96 bytes more than before any tuning.
      EXPECT_EQ(blobs[r].size(), untimed[r].size() + 96) << r;
    }
  }
  // This comm's own figures would compress everything; the loaded ones pass.
  gctest::CpuWorld resumed(2, autoConfig(1));
  for (int r = 0; r < 2; ++r) {
    gc::autoInjectFigures(resumed.comm(r), kCompressWins);
    ASSERT_EQ(gradcompCommLoadState(resumed.comm(r), blobs[r].data(), blobs[r].size()),
              gradcompSuccess)
        << gradcompGetLastError();
    // Saved again before any call: the same bytes, figures included.
    EXPECT_EQ(blobOf(resumed.comm(r)), blobs[r]) << r;
  }
  callAll(resumed, 5000, 22);
  for (int r = 0; r < 2; ++r) {
    const gradcompStats_t s = stats(resumed.comm(r));
    EXPECT_EQ(s.callsAutoPassed, 1u) << r;
    EXPECT_EQ(s.callsCompressed, 0u) << r;
    const gc::AutoDecision& d = resumed.comm(r)->autoState.allReduce;
    EXPECT_EQ(d.figures.ncclUs[1], kNcclWins.ncclUs[1]);
    EXPECT_EQ(d.figures.compUs[1], kNcclWins.compUs[1]);
    EXPECT_FALSE(d.restored);
  }
  // Saved again: the same figures, so a second resume decides alike too.
  for (int r = 0; r < 2; ++r) EXPECT_EQ(blobOf(resumed.comm(r)).size(), blobs[r].size());
  auto res = resumed.run([&](int r) { return gradcompCommRetune(resumed.comm(r), nullptr); });
  for (int r = 0; r < 2; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  callAll(resumed, 5000, 23);
  for (int r = 0; r < 2; ++r) EXPECT_EQ(stats(resumed.comm(r)).callsCompressed, 1u) << r;

  // A retune right after a load times afresh: it does not take the loaded
  // figures (before, it decided from them, for both collectives).
  gctest::CpuWorld moved(2, autoConfig(1));
  for (int r = 0; r < 2; ++r) {
    gc::autoInjectFigures(moved.comm(r), kCompressWins);
    ASSERT_EQ(gradcompCommLoadState(moved.comm(r), blobs[r].data(), blobs[r].size()),
              gradcompSuccess);
  }
  res = moved.run([&](int r) { return gradcompCommRetune(moved.comm(r), nullptr); });
  for (int r = 0; r < 2; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  callAll(moved, 5000, 25);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(stats(moved.comm(r)).callsCompressed, 1u) << r;
    EXPECT_EQ(stats(moved.comm(r)).callsAutoPassed, 0u) << r;
    EXPECT_FALSE(moved.comm(r)->autoState.allReduce.restored) << r;
    EXPECT_FALSE(moved.comm(r)->autoState.reduceScatter.restored) << r;
  }

  gctest::CpuWorld off(2, autoConfig(0));
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(gradcompCommLoadState(off.comm(r), blobs[r].data(), blobs[r].size()),
              gradcompSuccess);
  }
  callAll(off, 5000, 24);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(stats(off.comm(r)).callsCompressed, 1u) << r;
    EXPECT_FALSE(off.comm(r)->autoState.allReduce.restored) << r;
  }
}

// Ranks that loaded different states, one with the saved figures and one
// without (the same step: the saved calls were all passed through), decide
// alike: every rank times anew, instead of one deciding from its figures
// while the other waits in the timing's calls.
TEST(AutoTune, SavedFiguresOnOneRankOnlyAreDroppedByEveryRank) {
  std::vector<char> before, after;  // rank 1's state before the tuning, rank 0's after it
  {
    gctest::CpuWorld saved(2, autoConfig(1));
    for (int r = 0; r < 2; ++r) gc::autoInjectFigures(saved.comm(r), kNcclWins);
    before = blobOf(saved.comm(1));
    callAll(saved, 5000, 41);  // passed through: the step stays where it was
    ASSERT_EQ(stats(saved.comm(0)).callsAutoPassed, 1u);
    after = blobOf(saved.comm(0));
  }
  gradcompConfig_t cfg = autoConfig(1);
  cfg.cpuTimeoutSec = 5;
  gctest::CpuWorld w(2, cfg);
  timeOnHost(w);  // at the saved figures' counts: rank 0's are usable
  ASSERT_EQ(gradcompCommLoadState(w.comm(0), after.data(), after.size()), gradcompSuccess)
      << gradcompGetLastError();
  ASSERT_EQ(gradcompCommLoadState(w.comm(1), before.data(), before.size()), gradcompSuccess)
      << gradcompGetLastError();
  ASSERT_TRUE(w.comm(0)->autoState.allReduce.restored);
  ASSERT_FALSE(w.comm(1)->autoState.allReduce.restored);
  std::vector<std::vector<float>> buf = {gctest::normal(5000, 42), gctest::normal(5000, 43)};
  std::vector<std::string> why(2);
  auto res = w.run([&](int r) {
    const gradcompResult_t x = gradcompAllReduce(buf[r].data(), buf[r].data(), 5000, ncclFloat32,
                                                 ncclSum, w.comm(r), nullptr);
    why[r] = gradcompGetLastError();
    return x;
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << why[r];
    const gc::AutoDecision& d = w.comm(r)->autoState.allReduce;
    EXPECT_TRUE(d.decided && d.timed) << r;
    EXPECT_FALSE(d.restored) << r;
    // Timed here, not the saved figures.
    EXPECT_EQ(d.figures.smallCount, 1024u) << r;
    EXPECT_NE(memcmp(d.figures.ncclUs, kNcclWins.ncclUs, sizeof(d.figures.ncclUs)), 0) << r;
  }
  const gc::AutoDecision &d0 = w.comm(0)->autoState.allReduce, &d1 = w.comm(1)->autoState.allReduce;
  EXPECT_EQ(memcmp(&d0.figures, &d1.figures, sizeof(d0.figures)), 0);
  EXPECT_EQ(memcmp(buf[0].data(), buf[1].data(), 5000 * 4), 0);
}

// Two ranks that decide their next call apart, and must not: a world of host-timed
// comms (the in-process world times as socket comms do) at counts 1024 and 5120.
gradcompConfig_t hostTimedConfig() {
  gradcompConfig_t cfg = autoConfig(1);
  cfg.cpuTimeoutSec = 5;
  return cfg;
}
// One call of n on every rank must succeed, decide alike and give every
// rank the same bits; then so must a retune.
void expectRanksDecideAlike(gctest::CpuWorld& w, size_t n = 5000) {
  std::vector<std::vector<float>> buf = {gctest::normal(n, 62), gctest::normal(n, 63)};
  std::vector<std::string> why(2);
  auto res = w.run([&](int r) {
    const gradcompResult_t x = gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32,
                                                 ncclSum, w.comm(r), nullptr);
    why[r] = gradcompGetLastError();
    return x;
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << why[r];
    EXPECT_TRUE(w.comm(r)->autoState.allReduce.decided) << r;
  }
  const gc::AutoDecision &d0 = w.comm(0)->autoState.allReduce, &d1 = w.comm(1)->autoState.allReduce;
  EXPECT_EQ(memcmp(&d0.figures, &d1.figures, sizeof(d0.figures)), 0);
  EXPECT_EQ(memcmp(buf[0].data(), buf[1].data(), n * 4), 0);
  res = w.run([&](int r) { return gradcompCommRetune(w.comm(r), nullptr); });
  for (int r = 0; r < 2; ++r) EXPECT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
}

// A comm that has decided, then loads a blob with figures on one rank and one
// without on the other (saved before and after the timing, at the same step):
// the load makes every collective decide afresh on every rank, so the vote
// drops the one rank's figures and all time, where the rank without figures
// used to keep its old decision and skip the vote its peer waited in.
TEST(AutoTune, ALoadIntoADecidedCommDecidesAnewOnEveryRank) {
  std::vector<char> before, after;
  {
    gctest::CpuWorld saved(2, autoConfig(1));
    for (int r = 0; r < 2; ++r) gc::autoInjectFigures(saved.comm(r), kNcclWins);
    before = blobOf(saved.comm(1));
    callAll(saved, 5000, 41);
    after = blobOf(saved.comm(0));
  }
  gctest::CpuWorld w(2, hostTimedConfig());
  timeOnHost(w);
  callAll(w, 5000, 61);  // decided, by timing
  for (int r = 0; r < 2; ++r) ASSERT_TRUE(w.comm(r)->autoState.allReduce.decided);
  ASSERT_EQ(gradcompCommLoadState(w.comm(0), after.data(), after.size()), gradcompSuccess)
      << gradcompGetLastError();
  ASSERT_EQ(gradcompCommLoadState(w.comm(1), before.data(), before.size()), gradcompSuccess)
      << gradcompGetLastError();
  for (int r = 0; r < 2; ++r) EXPECT_FALSE(w.comm(r)->autoState.allReduce.decided) << r;
  expectRanksDecideAlike(w);
}

// Saved figures timed at other counts than the comm times count as none: the
// vote agrees on the times, not the counts, so a rank holding figures of other
// counts would draw its crossover elsewhere. Both blobs hold kCrossover's
// times, rank 0's at this comm's counts (compress above 5120 elements),
// rank 1's at 2048 and 8192 (compress above 8192): at 6000 they would split.
// Both were saved after one passed call of 1000 elements (step 0).
TEST(AutoTune, LoadedFiguresOfOtherCountsAreDropped) {
  std::vector<char> mine, other;
  {
    gctest::CpuWorld a(2, autoConfig(1));
    for (int r = 0; r < 2; ++r) gc::autoInjectFigures(a.comm(r), kCrossover);
    callAll(a, 1000, 41);
    mine = blobOf(a.comm(0));
  }
  {
    gctest::CpuWorld b(2, autoConfig(1));
    gc::AutoFigures f = kCrossover;
    f.smallCount = 2048;
    f.largeCount = 8192;
    for (int r = 0; r < 2; ++r) gc::autoInjectFigures(b.comm(r), f);
    callAll(b, 1000, 41);
    other = blobOf(b.comm(1));
  }
  gctest::CpuWorld w(2, hostTimedConfig());
  timeOnHost(w);
  ASSERT_EQ(gradcompCommLoadState(w.comm(0), mine.data(), mine.size()), gradcompSuccess);
  ASSERT_EQ(gradcompCommLoadState(w.comm(1), other.data(), other.size()), gradcompSuccess);
  expectRanksDecideAlike(w, 6000);
  for (int r = 0; r < 2; ++r) EXPECT_EQ(w.comm(r)->autoState.allReduce.figures.smallCount, 1024u);
}

// gradcomp_perf models GRADCOMP_AUTO's choice with its own copy of the rule
// (bench/common/model.h autoCompresses; it links only the public API): the
// same choice as autoRange for figures of every shape (either path steeper,
// crossings above, between and below the timed counts, equal slopes), both
// element sizes, and counts around every crossing.
TEST(AutoTune, TheModelsRuleIsTheLibrarys) {
  uint32_t x = 12345;
  auto rnd = [&x](float lo, float hi) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    return lo + (hi - lo) * (float)(x >> 8) / 16777216.0f;
  };
  const size_t timed[2] = {size_t(1) << 18, size_t(1) << 23};
  int compressed = 0, passed = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    gc::AutoFigures f;
    f.smallCount = timed[0];
    f.largeCount = timed[1];
    f.ncclUs[0] = rnd(1, 400);
    f.ncclUs[1] = f.ncclUs[0] + rnd(0, 20000);
    f.compUs[0] = rnd(1, 400);
    f.compUs[1] = trial % 7 == 0 ? f.compUs[0] + (f.ncclUs[1] - f.ncclUs[0])  // equal slopes
                                 : f.compUs[0] + rnd(0, 20000);
    const double nccl[2] = {f.ncclUs[0], f.ncclUs[1]}, comp[2] = {f.compUs[0], f.compUs[1]};
    for (size_t eb : {size_t(2), size_t(4)}) {
      const gc::AutoRange r = gc::autoRange(f, eb);
      std::vector<size_t> counts = {1, timed[0], timed[1], size_t(1) << 26, size_t(1) << 30};
      for (size_t edge : {r.lo, r.hi}) {
        if (edge == 0 || edge == SIZE_MAX) continue;
        for (size_t d : {size_t(0), size_t(1), size_t(2)}) {
          counts.push_back(edge + d);
          if (edge > d) counts.push_back(edge - d);
        }
      }
      for (size_t n : counts) {
        const bool lib = r.contains(n), model = gcbench::autoCompresses(timed, nccl, comp, eb, n);
        ASSERT_EQ(model, lib) << "trial " << trial << " elemBytes " << eb << " count " << n;
        (lib ? compressed : passed)++;
      }
    }
  }
  EXPECT_GT(compressed, 1000);
  EXPECT_GT(passed, 1000);
}

// Without kernel costs (a row whose kernels were not measured) the model
// has no compressed time: its paths' and auto's times are unknown (NaN,
// null in the report), not NCCL's. Before, the NaN lost the comparison and
// auto came out as NCCL's time, an auto speedup of exactly 1, which met the
// 3200 Gb/s goal (>= 0.97) with nothing measured.
TEST(AutoTune, TheModelsAutoIsUnknownWithoutKernelCosts) {
  gcbench::Cluster c;
  c.nodes = 4, c.local = 8, c.nodeGbps = 3200;
  const gcbench::CallKind kind;
  for (bool decide : {true, false}) {
    const gcbench::ClusterTimes t =
        gcbench::clusterModel(size_t(1) << 26, kind, 4, 512, gcbench::KernelCurve{}, c, 0, decide);
    EXPECT_GT(t.ncclUs, 0.0);
    EXPECT_TRUE(std::isnan(t.autoUs)) << "decide " << decide << ": auto " << t.autoUs;
    // The paths too: the hierarchy's schedules take max() of stage times,
    // which dropped the NaN kernel time and kept the links' (hierPipedUs
    // came out finite, below NCCL's).
    EXPECT_TRUE(std::isnan(t.flatUs)) << t.flatUs;
    EXPECT_TRUE(std::isnan(t.hierUs)) << t.hierUs;
    EXPECT_TRUE(std::isnan(t.hierPipedUs)) << t.hierPipedUs;
  }
}

// GRADCOMP_AUTO times fp32 calls whatever the type of the call it then
// decides (autotune.cc measure), so the model's choice for a bf16 call is the
// one the lines through an fp32 call's figures at the two timed counts give,
// whatever the bf16 encode costs: the row's curve with its encode far
// cheaper, or far dearer, than the fp32 one gives the same choice, on the
// flat layouts (where the call's own encode runs) and the hierarchies, for
// the allreduce and the reduce-scatter. Before, the timed calls were charged
// the bf16 encode: a cheap one made auto compress where the fp32 calls the
// library times would pass.
TEST(AutoTune, TheModelsTimedCallsAreFp32Ones) {
  const int bits = 4, bucket = 512;
  auto curveWithEncode = [](double encodeOverF32) {
    gcbench::KernelCurve curve;
    for (double n : {4096.0, 65536.0, 1048576.0, 16777216.0, 268435456.0}) {
      // Microseconds an element (a byte), about a GPU's; a small launch dearer.
      const double small = 1 + 4096.0 / n;
      gcbench::KernelCosts k;
      k.encodeF32 = 5e-6 * small;
      k.encode = encodeOverF32 * k.encodeF32;
      k.ownerEncode = 4e-6 * small;
      k.decode = 2e-6 * small;
      k.decodeAcc = 3e-6 * small;
      k.elementwisePerByte = 4e-7 * small;
      curve.add(n, k);
    }
    return curve;
  };
  const gcbench::KernelCurve cheap = curveWithEncode(0.05), dear = curveWithEncode(20.0);
  gcbench::CallKind bf16;
  bf16.elemBytes = 2;
  bf16.convert = true;
  bf16.fusedOut = bf16.fusedSum = gcbench::warpBucket(bucket);
  // What the library times: fp32 Sums at the timed counts, their encodes fp32.
  const size_t timed[2] = {size_t(1) << 18, size_t(1) << 23};
  auto fp32At = [&](size_t count) {
    gcbench::CallKind k = bf16;
    k.elemBytes = 4;
    k.convert = false;
    k.codeBytes = gcbench::qsgdCodeBytes(count, bits, bucket);
    return k;
  };
  // An fp32 row's curve: its encode of the input is the fp32 one.
  const gcbench::KernelCurve f32 = curveWithEncode(1.0);
  int compressed = 0, passed = 0;
  for (const auto& layout : {std::make_pair(1, 4), std::make_pair(4, 1), std::make_pair(8, 1),
                             std::make_pair(1, 8), std::make_pair(4, 8)}) {
    for (double gbps : {25.0, 100.0, 400.0, 1600.0, 3200.0}) {
      gcbench::Cluster c;
      c.nodes = layout.first, c.local = layout.second, c.nodeGbps = gbps;
      for (size_t pipe : {size_t(0), size_t(8) << 20}) {
        for (size_t count = size_t(1) << 16; count <= size_t(1) << 28; count *= 4) {
          SCOPED_TRACE(testing::Message() << c.nodes << " x " << c.local << " at " << gbps
                                          << " Gb/s, pipe " << pipe << ", count " << count);
          bf16.codeBytes = gcbench::qsgdCodeBytes(count, bits, bucket);
          const gcbench::ClusterTimes a =
              gcbench::clusterModel(count, bf16, bits, bucket, cheap, c, pipe);
          const gcbench::ClusterTimes b =
              gcbench::clusterModel(count, bf16, bits, bucket, dear, c, pipe);
          double nccl[2], comp[2];
          for (int i = 0; i < 2; ++i) {
            const gcbench::ClusterTimes t = gcbench::clusterModel(timed[i], fp32At(timed[i]), bits,
                                                                  bucket, f32, c, pipe, false);
            nccl[i] = t.ncclUs, comp[i] = t.hierPipedUs;
          }
          const bool want = gcbench::autoCompresses(timed, nccl, comp, 2, count);
          ASSERT_EQ(a.autoCompresses, want);
          ASSERT_EQ(b.autoCompresses, want);
          (want ? compressed : passed)++;
          // The reduce-scatter: count elements out per rank, its timed input counts whole
          // blocks of N.
          const int n = c.ranks();
          const gcbench::ClusterTimes ra =
              gcbench::clusterReduceScatterModel(count, bf16, bits, bucket, cheap, c, pipe);
          const gcbench::ClusterTimes rb =
              gcbench::clusterReduceScatterModel(count, bf16, bits, bucket, dear, c, pipe);
          size_t in[2];
          for (int i = 0; i < 2; ++i) {
            const size_t block = std::max<size_t>(timed[i] / n, 1);
            in[i] = block * n;
            const gcbench::ClusterTimes t = gcbench::clusterReduceScatterModel(
                block, fp32At(block), bits, bucket, f32, c, pipe, false);
            nccl[i] = t.ncclUs, comp[i] = t.hierPipedUs;
          }
          const bool rsWant = gcbench::autoCompresses(in, nccl, comp, 2, count * n);
          ASSERT_EQ(ra.autoCompresses, rsWant);
          ASSERT_EQ(rb.autoCompresses, rsWant);
          (rsWant ? compressed : passed)++;
        }
      }
    }
  }
  // Both choices made, so that the bf16 encode's cost could have moved them.
  EXPECT_GT(compressed, 50);
  EXPECT_GT(passed, 50);
}

// A figures record that does not hold usable figures is refused by name.
TEST(AutoTune, ALoadedStateWithBadFiguresIsRefused) {
  std::vector<char> blob;
  {
    gctest::CpuWorld saved(2, autoConfig(1));
    for (int r = 0; r < 2; ++r) gc::autoInjectFigures(saved.comm(r), kNcclWins);
    callAll(saved, 5000, 31);
    size_t bytes = 0;
    ASSERT_EQ(gradcompCommStateSize(saved.comm(0), &bytes), gradcompSuccess);
    blob.resize(bytes);
    ASSERT_EQ(gradcompCommSaveState(saved.comm(0), blob.data(), bytes), gradcompSuccess);
  }
  // The allreduce's first time (NCCL at smallCount), 16 + 8 + 16 bytes into the
  // record at the end; the CRC over the blob with its own field zeroed.
  const size_t at = blob.size() - 80 + 24;
  const float bad = -5.0f;
  memcpy(blob.data() + at, &bad, 4);
  uint32_t crc = ~0u;
  for (size_t i = 0; i < blob.size(); ++i) {
    crc ^= (unsigned char)(i >= 12 && i < 16 ? 0 : blob[i]);
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  crc = ~crc;
  memcpy(blob.data() + 12, &crc, 4);
  gctest::CpuWorld w(2, autoConfig(1));
  EXPECT_EQ(gradcompCommLoadState(w.comm(0), blob.data(), blob.size()), gradcompInvalidArgument);
  const std::string why = gradcompGetLastError();
  EXPECT_NE(why.find("auto record"), std::string::npos) << why;
  EXPECT_NE(why.find("NCCL -5 us"), std::string::npos) << why;
  EXPECT_FALSE(w.comm(0)->autoState.allReduce.restored);
}
