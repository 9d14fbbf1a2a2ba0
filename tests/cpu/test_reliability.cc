// Bad input against the public API on the CPU backend (issue 16): every
// case must end in a clear error on every rank, nothing written out of
// bounds, and a comm that keeps working afterwards.
#include <gtest/gtest.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "backends/cpu/host_collective.h"
#include "tests/common/alloc_limit_backend.h"
#include "tests/common/cpu_world.h"
#include "tests/common/forwarding_backend.h"
#include "tests/common/ref_hier.h"
#include "tests/common/ref_hier_rs.h"
#include "tests/common/ref_rs.h"
#include "tests/common/ref_slot_lists.h"
#include "tests/common/ref_sparse.h"
#include "tests/common/guarded.h"
#include "tests/common/test_util.h"
#include "tests/common/forwarding_transport.h"
#include "backends/sparse_ops.h"
#include "autotune.h"
#include "comm.h"
#include "late_key.h"
#include "gradcomp.h"
#include "gradcomp/sparse.h"
#include "gradcomp/elias.h"
#include "gradcomp/reference.h"

namespace {

using gctest::CpuWorld;
using gctest::GuardedBuffer;

#define GC_TEST_RETURN(call)                \
  do {                                      \
    gradcompResult_t rc_ = (call);          \
    if (rc_ != gradcompSuccess) return rc_; \
  } while (0)

gradcompConfig_t quickConfig(gradcompMethod_t method) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = method;
  cfg.minElements = 1024;
  cfg.density = 0.01f;
  // Healthy calls meet in milliseconds; a rank that is expected to wait out a
  // failed peer sets its own shorter timeout. 10 s keeps a loaded machine's
  // late thread from failing a call that is correct.
  cfg.cpuTimeoutSec = 10.0f;
  return cfg;
}

// Every rank's fp32 Sum allreduce of in into out (n elements), or
// reduce-scatter (n per rank), each on its own thread: every rank's result,
// and its error sentence in (*why)[r].
std::vector<gradcompResult_t> sumOnEveryRank(CpuWorld& w, const std::vector<std::vector<float>>& in,
                                             std::vector<std::vector<float>>& out, size_t n,
                                             bool reduceScatter, std::vector<std::string>* why) {
  why->assign(w.size(), "");
  return w.run([&](int r) {
    const gradcompResult_t rc =
        reduceScatter ? gradcompReduceScatter(in[r].data(), out[r].data(), n, ncclFloat32, ncclSum,
                                              w.comm(r), nullptr)
                      : gradcompAllReduce(in[r].data(), out[r].data(), n, ncclFloat32, ncclSum,
                                          w.comm(r), nullptr);
    (*why)[r] = gradcompGetLastError();
    return rc;
  });
}

// Defect 4: rank 1 fails before the collective; rank 0 times out. Every
// later correct call must work on every rank.
TEST(Reliability, CpuWorldRecoversAfterTimeout) {
  for (gradcompMethod_t m : {gradcompMethodNone, gradcompMethodQsgd, gradcompMethodTopk}) {
    gradcompConfig_t cfg = quickConfig(m);
    // Rank 0 waits this long in the failed call; every later call's ranks
    // must meet within it too, however late a loaded machine starts a
    // rank's thread (0.2 s was within reach of such a delay).
    cfg.cpuTimeoutSec = 1.0f;
    CpuWorld w(2, cfg);
    const size_t n = 4096;
    std::vector<std::vector<float>> in(2), out(2, std::vector<float>(n));
    for (int r = 0; r < 2; ++r) in[r] = gctest::normal(n, 10 + r);
    auto res = w.run([&](int r) {
      // Rank 1 passes a NULL recvbuff: refused before any collective.
      return gradcompAllReduce(in[r].data(), r == 1 ? nullptr : out[r].data(), n, ncclFloat32,
                               ncclSum, w.comm(r), nullptr);
    });
    EXPECT_EQ(res[0], gradcompSystemError) << "method " << m;
    EXPECT_EQ(res[1], gradcompInvalidArgument) << "method " << m;
    for (int call = 0; call < 3; ++call) {
      res = w.run([&](int r) {
        return gradcompAllReduce(in[r].data(), out[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                                 nullptr);
      });
      ASSERT_EQ(res[0], gradcompSuccess) << "method " << m << " call " << call;
      ASSERT_EQ(res[1], gradcompSuccess) << "method " << m << " call " << call;
      EXPECT_EQ(memcmp(out[0].data(), out[1].data(), n * 4), 0);
    }
    if (m == gradcompMethodNone) {
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[0][i], in[0][i] + in[1][i]);
    }
  }
}

// Three ranks wait for a fourth that refused its call before the collective:
// each times out saying the same "3 of 4 ranks" (until 2026-12-05 each said
// how many were still waiting when it withdrew: 3, 2 and 1).
TEST(Reliability, CpuWorldTimeoutCountsTheSameOnEveryRank) {
  gradcompConfig_t cfg = quickConfig(gradcompMethodNone);
  cfg.cpuTimeoutSec = 0.5f;
  CpuWorld w(4, cfg);
  const size_t n = 1024;
  std::vector<std::vector<float>> in(4, std::vector<float>(n, 1.0f)), out = in;
  std::vector<std::string> why(4);
  const auto res = w.run([&](int r) {
    const gradcompResult_t got = gradcompAllReduce(in[r].data(), r == 3 ? nullptr : out[r].data(),
                                                   n, ncclFloat32, ncclSum, w.comm(r), nullptr);
    why[r] = gradcompGetLastError();
    return got;
  });
  EXPECT_EQ(res[3], gradcompInvalidArgument);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(res[r], gradcompSystemError) << "rank " << r;
    EXPECT_NE(why[r].find("3 of 4 ranks reached a collective"), std::string::npos)
        << "rank " << r << ": " << why[r];
    EXPECT_NE(why[r].find("this rank waited in the uncompressed allreduce"), std::string::npos)
        << "rank " << r << ": " << why[r];
  }
}

// Two ranks of the in-process world in different collectives of one call
// (what per-buffer states that diverged would do): each fails naming its own
// collective and its peer's, with what they compare, by name.
TEST(Reliability, CpuTransportMismatchNamesBothCollectives) {
  auto world = gc::makeCpuWorld(2, 30);
  gradcompResult_t res[2] = {gradcompSuccess, gradcompSuccess};
  std::string why[2];
  auto both = [&](const std::function<gradcompResult_t()>& call0,
                  const std::function<gradcompResult_t()>& call1) {
    std::thread t1([&] {
      res[1] = call1();
      why[1] = gradcompGetLastError();
    });
    res[0] = call0();
    why[0] = gradcompGetLastError();
    t1.join();
    for (int r = 0; r < 2; ++r) EXPECT_EQ(res[r], gradcompInvalidUsage) << why[r];
  };
  std::vector<float> a(16, 1.0f), b(16, 0.0f), c(16, 1.0f), d(16, 0.0f);
  both([&] { return world[0]->allGather(a.data(), b.data(), 8); },
       [&] { return world[1]->allReduceSumFloat(c.data(), d.data(), 3); });
  EXPECT_NE(why[0].find("rank 0 entered the allgather of 8 bytes per rank while rank 1 entered "
                        "the float sum of 3 elements"),
            std::string::npos)
      << why[0];
  EXPECT_NE(why[1].find("rank 1 entered the float sum of 3 elements while rank 0 entered the "
                        "allgather of 8 bytes per rank"),
            std::string::npos)
      << why[1];
  // The same collective at other sizes: the counts, datatypes and ops named.
  both([&] { return world[0]->reduceScatter(a.data(), b.data(), 4, ncclFloat32, ncclSum); },
       [&] { return world[1]->reduceScatter(c.data(), d.data(), 8, ncclFloat32, ncclSum); });
  EXPECT_NE(why[0].find("rank 0 entered the reduce-scatter (recvcount=4 datatype=7 op=0) while "
                        "rank 1 entered the reduce-scatter (recvcount=8 datatype=7 op=0)"),
            std::string::npos)
      << why[0];
}

// The TCP transport's second phase of a float sum or pass-through (where a
// rank times out when its peer died between the phases) is named by the
// collective it belongs to; it said "gather phase (size 0)" until 2026-12-07.
TEST(Reliability, TheGatherPhaseNamesItsCollective) {
  char text[160];
  gc::hostCollectiveText(text, sizeof text, gc::kHostGatherPhase,
                         gc::gatherPhaseCheck(gc::kHostSumFloat, 3));
  EXPECT_STREQ(text, "gather phase of the float sum of 3 elements");
  gc::hostCollectiveText(text, sizeof text, gc::kHostGatherPhase,
                         gc::gatherPhaseCheck(gc::kHostPassThrough, 0));
  EXPECT_STREQ(text, "gather phase of the uncompressed allreduce");
  // Two ranks in the gather phases of different collectives do not compare equal.
  EXPECT_NE(gc::gatherPhaseCheck(gc::kHostSumFloat, 0),
            gc::gatherPhaseCheck(gc::kHostPassThrough, 0));
  // A peer's check naming a gather phase as the first phase is not followed.
  gc::hostCollectiveText(text, sizeof text, gc::kHostGatherPhase,
                         gc::gatherPhaseCheck(gc::kHostGatherPhase, 5));
  EXPECT_STREQ(text, "gather phase of the gather phase");
}

// GRADCOMP_CHECK_CALLS: a rank that cannot prepare a compressed call (here
// out of memory for the buffer's state) says so before any rank exchanges.
// It returns its own error and its peer an error naming it, at once rather
// than after the peer's timeout; no output is written, and the same call made
// again once the memory is there gives, state included, what a comm that
// never failed gives.
TEST(Reliability, CheckCallsFailsEveryRankWhenOneCannotPrepare) {
  // Three ranks, each in turn the one that cannot prepare: the first, a
  // middle and the last (the vote's "highest failed rank" is 0 for rank 0).
  const int N = 3;
  for (gradcompMethod_t m : {gradcompMethodQsgd, gradcompMethodTopk}) {
    for (const bool rs : {false, true}) {
      for (int bad = 0; bad < N; ++bad) {
        SCOPED_TRACE(testing::Message() << "method " << m << (rs ? " reduce-scatter" : " allreduce")
                                        << " rank " << bad << " cannot prepare");
        gradcompConfig_t cfg = quickConfig(m);
        cfg.autoTune = 0;
        cfg.checkCalls = 1;
        // A rank left waiting would fail after this with the timeout's error.
        cfg.cpuTimeoutSec = 20.0f;
        const size_t n = 8190, out = rs ? n / N : n;
        std::vector<std::vector<float>> in;
        for (int r = 0; r < N; ++r) in.push_back(gctest::normal(n, 31 + r));
        std::vector<std::string> why;
        auto call = [&](CpuWorld& w, std::vector<std::vector<float>>& got) {
          return sumOnEveryRank(w, in, got, rs ? out : n, rs, &why);
        };
        CpuWorld w(N, cfg);
        const std::shared_ptr<gc::Backend> inner = w.comm(bad)->backend;
        w.comm(bad)->backend = std::make_shared<gctest::AllocLimitBackend>(inner, 0);
        const std::vector<float> untouched(out, -7.0f);
        std::vector<std::vector<float>> got(N, untouched);
        auto res = call(w, got);
        const std::string named = "rank " + std::to_string(bad) + " could not prepare this call";
        for (int r = 0; r < N; ++r) {
          if (r == bad) {
            EXPECT_EQ(res[r], gradcompSystemError) << why[r];
            EXPECT_NE(why[r].find("test: an allocation of"), std::string::npos) << why[r];
          } else {
            EXPECT_EQ(res[r], gradcompInvalidUsage) << why[r];
            EXPECT_NE(why[r].find(named), std::string::npos) << why[r];
          }
          EXPECT_EQ(memcmp(got[r].data(), untouched.data(), out * sizeof(float)), 0) << r;
          EXPECT_EQ(w.comm(r)->stats.callsCompressed, 0u) << r;
          // The LD_PRELOAD library must not hand such a call to NCCL on any rank.
          EXPECT_TRUE(w.comm(r)->failedTogether) << r;
        }

        w.comm(bad)->backend = inner;
        res = call(w, got);
        for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << why[r];
        for (int r = 0; r < N; ++r) EXPECT_FALSE(w.comm(r)->failedTogether) << r;
        // The fresh comm writes to the same buffers: a state is keyed by its
        // output's address, which the saved states carry.
        const std::vector<std::vector<float>> retried = got;
        got.assign(N, untouched);
        CpuWorld fresh(N, cfg);
        res = call(fresh, got);
        for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << why[r];
        for (int r = 0; r < N; ++r) {
          EXPECT_EQ(memcmp(retried[r].data(), got[r].data(), out * sizeof(float)), 0) << r;
          EXPECT_EQ(gctest::savedState(w.comm(r)), gctest::savedState(fresh.comm(r))) << r;
        }
      }
    }
  }
}

// GRADCOMP_CHECK_CALLS: a rank whose buffers fail their checks (here a
// receive buffer off its element alignment, or NULL; on NCCL also a pointer
// of another device or of pageable memory) fails on that rank alone, after the
// call's agreement. The ranks vote on it, as on a failed preparation, so
// its peers fail at once naming it rather than waiting in the exchange
// until their timeout (before 2026-12-05 they did); then the same call
// with good buffers goes through. Allreduce and reduce-scatter, and DGC's
// momentum pass-through, which checks its buffers itself.
TEST(Reliability, CheckCallsFailsEveryRankWhenOnesBuffersAreRefused) {
  const int N = 3, bad = 1;
  const struct {
    gradcompMethod_t method;
    bool rs;
    size_t minElements;
  } cases[] = {{gradcompMethodQsgd, false, 0},
               {gradcompMethodQsgd, true, 0},
               {gradcompMethodDgc, false, size_t(1) << 30}};  // every call passed with momentum
  for (const auto& k : cases) {
    for (const bool null : {false, true}) {
      SCOPED_TRACE(testing::Message() << "method " << k.method << (k.rs ? " reduce-scatter" : "")
                                      << (null ? " NULL" : " misaligned"));
      gradcompConfig_t cfg = quickConfig(k.method);
      cfg.autoTune = 0;
      cfg.checkCalls = 1;
      cfg.minElements = k.minElements;
      cfg.cpuTimeoutSec = 20.0f;  // a rank left waiting fails after this
      CpuWorld w(N, cfg);
      const size_t n = 3072, out = k.rs ? n / N : n;
      std::vector<std::vector<float>> in, got(N, std::vector<float>(out + 1, 0.0f));
      for (int r = 0; r < N; ++r) in.push_back(gctest::normal(n, 51 + r));
      std::vector<std::string> why(N);
      auto call = [&](bool misaligned) {
        const auto t0 = std::chrono::steady_clock::now();
        auto res = w.run([&](int r) {
          float* o = got[r].data();
          if (misaligned && r == bad)
            o = null ? nullptr : reinterpret_cast<float*>(reinterpret_cast<char*>(o) + 2);
          const gradcompResult_t x = k.rs ? gradcompReduceScatter(in[r].data(), o, out, ncclFloat32,
                                                                  ncclSum, w.comm(r), nullptr)
                                          : gradcompAllReduce(in[r].data(), o, n, ncclFloat32,
                                                              ncclSum, w.comm(r), nullptr);
          why[r] = gradcompGetLastError();
          return x;
        });
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        EXPECT_LT(s, 10.0) << "a rank waited for its timeout";
        return res;
      };
      auto res = call(true);
      const std::string named = "rank " + std::to_string(bad) + " could not prepare this call";
      for (int r = 0; r < N; ++r) {
        if (r == bad) {
          EXPECT_EQ(res[r], gradcompInvalidArgument) << why[r];
          EXPECT_NE(why[r].find(null ? "must not be NULL" : "not aligned"), std::string::npos)
              << why[r];
        } else {
          EXPECT_EQ(res[r], gradcompInvalidUsage) << why[r];
          EXPECT_NE(why[r].find(named), std::string::npos) << why[r];
          EXPECT_NE(why[r].find("its send and receive buffers"), std::string::npos) << why[r];
        }
        EXPECT_TRUE(w.comm(r)->failedTogether) << r;
      }
      res = call(false);
      for (int r = 0; r < N; ++r) EXPECT_EQ(res[r], gradcompSuccess) << r << ": " << why[r];
    }
  }
}

// What the comms of a world freed. The ranks run on threads of their own, so
// every rank's release goes through one lock.
class ReleaseLog {
 public:
  void add(void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    freed_.push_back(p);
  }
  long count(const void* p) const {
    std::lock_guard<std::mutex> lock(mu_);
    return (long)std::count(freed_.begin(), freed_.end(), p);
  }

 private:
  mutable std::mutex mu_;
  std::vector<void*> freed_;
};

// A backend standing for CUDA's during a graph capture (capturing() as the
// test says) that records what the comm frees.
class CaptureRecordingBackend final : public gctest::ForwardingBackend {
 public:
  CaptureRecordingBackend(std::shared_ptr<gc::Backend> inner, const bool* capture,
                          std::shared_ptr<ReleaseLog> released)
      : ForwardingBackend(std::move(inner)), capture_(capture), released_(std::move(released)) {}
  bool capturing() const override { return *capture_; }
  void release(void* p) override {
    if (p != nullptr) released_->add(p);
    inner_->release(p);
  }

 private:
  const bool* capture_;
  std::shared_ptr<ReleaseLog> released_;
};

// Every rank's backend of w behind a CaptureRecordingBackend.
void recordCapturesAndFrees(CpuWorld& w, const bool* capture,
                            const std::shared_ptr<ReleaseLog>& released) {
  for (int r = 0; r < w.size(); ++r) {
    gradcompComm* c = w.comm(r);
    c->backend = std::make_shared<CaptureRecordingBackend>(c->backend, capture, released);
  }
}

// A hierarchical DGC call after momentum passes first sums the node's
// velocities into the shards (hierFoldState), once: under a CUDA graph
// capture it is refused, on every rank and with the state as it was (a replay
// would sum again, and an abandoned capture would leave the sum never run);
// the same call made eagerly goes through and clears the mark.
TEST(Reliability, AHierarchicalMomentumFoldIsNotCaptured) {
  gradcompConfig_t cfg = quickConfig(gradcompMethodDgc);
  cfg.localSize = 2;
  cfg.momentumCorrection = 1;
  cfg.autoTune = 1;
  const int N = 4;
  const size_t n = 4096;
  bool capture = false;
  auto released = std::make_shared<ReleaseLog>();
  CpuWorld w(N, cfg);
  recordCapturesAndFrees(w, &capture, released);
  gc::AutoFigures f;
  f.smallCount = 1024;
  f.largeCount = 5120;
  f.ncclUs[0] = 16.0f, f.ncclUs[1] = 32.0f, f.compUs[0] = 48.0f, f.compUs[1] = 80.0f;
  for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), f);  // NCCL wins: passed
  std::vector<std::vector<float>> buf(N, std::vector<float>(n));
  for (int r = 0; r < N; ++r) buf[r] = gctest::normal(n, 90 + (uint64_t)r);
  auto call = [&]() {
    return w.run([&](int r) {
      return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                               nullptr);
    });
  };
  for (const gradcompResult_t res : call()) ASSERT_EQ(res, gradcompSuccess);
  for (int r = 0; r < N; ++r) ASSERT_TRUE(w.comm(r)->states.begin()->second.unsharded) << r;
  std::swap(f.ncclUs, f.compUs);  // compression wins now
  for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), f);
  for (const gradcompResult_t res :
       w.run([&](int r) { return gradcompCommRetune(w.comm(r), nullptr); })) {
    ASSERT_EQ(res, gradcompSuccess) << gradcompGetLastError();
  }
  std::vector<std::vector<uint8_t>> before(N);
  for (int r = 0; r < N; ++r) before[r] = gctest::savedState(w.comm(r));
  const std::vector<std::vector<float>> input = buf;
  capture = true;
  std::vector<std::string> why(N);
  const std::vector<gradcompResult_t> refused = w.run([&](int r) {
    const gradcompResult_t res = gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32,
                                                   ncclSum, w.comm(r), nullptr);
    why[r] = gradcompGetLastError();  // each rank's thread has its own
    return res;
  });
  for (int r = 0; r < N; ++r) {
    EXPECT_EQ(refused[r], gradcompInvalidUsage) << r;
    EXPECT_NE(why[r].find("run one call eagerly before capturing"), std::string::npos) << why[r];
  }
  capture = false;
  for (int r = 0; r < N; ++r) {
    EXPECT_TRUE(gctest::savedState(w.comm(r)) == before[r]) << r;
    EXPECT_EQ(buf[r], input[r]) << r;
  }
  for (const gradcompResult_t res : call())
    ASSERT_EQ(res, gradcompSuccess) << gradcompGetLastError();
  for (int r = 0; r < N; ++r) {
    EXPECT_FALSE(w.comm(r)->states.begin()->second.unsharded) << r;
    gradcompStats_t stats;
    ASSERT_EQ(gradcompGetStats(w.comm(r), &stats), gradcompSuccess);
    EXPECT_EQ(stats.callsCompressed, 1u) << r;
  }
}

// A captured call used the workspace: a later eager call that grows it must
// not free the old one while a CUDA graph may still replay it; the comm frees
// it when it goes. A workspace no captured call used is freed when it grows.
TEST(Reliability, GrowingTheWorkspaceKeepsTheOneAGraphUses) {
  gradcompConfig_t cfg = quickConfig(gradcompMethodQsgd);
  cfg.autoTune = 0;
  bool capture = false;
  auto released = std::make_shared<ReleaseLog>();
  void* captured[2] = {nullptr, nullptr};
  void* second[2] = {nullptr, nullptr};
  {
    CpuWorld w(2, cfg);
    recordCapturesAndFrees(w, &capture, released);
    std::vector<std::vector<float>> buf(2, std::vector<float>(size_t(1) << 16, 1.0f));
    auto call = [&](size_t n) {
      return w.run([&](int r) {
        return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                                 nullptr);
      });
    };
    for (const gradcompResult_t res : call(4096)) ASSERT_EQ(res, gradcompSuccess);
    capture = true;  // the same call "captured": its state and workspace exist
    for (const gradcompResult_t res : call(4096)) ASSERT_EQ(res, gradcompSuccess);
    capture = false;
    for (int r = 0; r < 2; ++r) captured[r] = w.comm(r)->workspace;
    for (const gradcompResult_t res : call(16384)) ASSERT_EQ(res, gradcompSuccess);
    for (int r = 0; r < 2; ++r) {
      gradcompComm* c = w.comm(r);
      ASSERT_NE(captured[r], nullptr);
      EXPECT_NE(c->workspace, captured[r]) << r;  // it grew
      EXPECT_EQ(released->count(captured[r]), 0) << r;
      EXPECT_EQ(c->retiredWorkspaces, std::vector<void*>{captured[r]}) << r;
      second[r] = c->workspace;
    }
    // Grown again, eagerly only: the second workspace goes at once.
    for (const gradcompResult_t res : call(size_t(1) << 16)) ASSERT_EQ(res, gradcompSuccess);
    for (int r = 0; r < 2; ++r) {
      EXPECT_EQ(released->count(second[r]), 1) << r;
      EXPECT_EQ(w.comm(r)->retiredWorkspaces.size(), 1u) << r;
    }
  }
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(released->count(captured[r]), 1) << r;
  }
}

// A state reset (and a load, through the same dropState) frees the states no
// captured call used and keeps those a CUDA graph may replay until the comm
// goes.
TEST(Reliability, ResetKeepsTheStatesAGraphUses) {
  gradcompConfig_t cfg = quickConfig(gradcompMethodQsgd);
  cfg.autoTune = 0;
  bool capture = false;
  auto released = std::make_shared<ReleaseLog>();
  const size_t n = 4096;
  std::vector<std::vector<float>> a(2, std::vector<float>(n, 1.0f)), b = a;
  float* residualA[2] = {nullptr, nullptr};
  float* residualB[2] = {nullptr, nullptr};
  {
    CpuWorld w(2, cfg);
    recordCapturesAndFrees(w, &capture, released);
    auto call = [&](std::vector<std::vector<float>>& buf) {
      return w.run([&](int r) {
        return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                                 nullptr);
      });
    };
    for (const gradcompResult_t res : call(a)) ASSERT_EQ(res, gradcompSuccess);
    for (const gradcompResult_t res : call(b)) ASSERT_EQ(res, gradcompSuccess);
    capture = true;  // a's call captured
    for (const gradcompResult_t res : call(a)) ASSERT_EQ(res, gradcompSuccess);
    capture = false;
    for (int r = 0; r < 2; ++r) {
      for (auto& kv : w.comm(r)->states) {
        const bool isA = std::get<1>(kv.first) == (uint64_t)(uintptr_t)a[r].data();
        (isA ? residualA : residualB)[r] = kv.second.residual;
      }
      ASSERT_NE(residualA[r], nullptr);
      ASSERT_NE(residualB[r], nullptr);
      ASSERT_EQ(gradcompCommResetState(w.comm(r)), gradcompSuccess) << gradcompGetLastError();
      EXPECT_EQ(released->count(residualA[r]), 0) << r;
      EXPECT_EQ(released->count(residualB[r]), 1) << r;
      ASSERT_EQ(w.comm(r)->retiredStates.size(), 1u) << r;
      EXPECT_EQ(w.comm(r)->retiredStates[0].residual, residualA[r]) << r;
      EXPECT_TRUE(w.comm(r)->states.empty()) << r;
    }
  }
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(released->count(residualA[r]), 1) << r;
  }
}

// Defect 1: counts that differ across ranks (same slots, other indices).
// Every rank fails with a clear error; the receive buffers end at a
// no-access page, so a write past them faults.
TEST(Reliability, SparseCountMismatchFailsOnAllRanks) {
  for (gradcompMethod_t m : {gradcompMethodTopk, gradcompMethodDgc, gradcompMethodRandk}) {
    for (auto sel : {gradcompSelectThreshold, gradcompSelectExact}) {
      gradcompConfig_t cfg = quickConfig(m);
      cfg.select = sel;
      CpuWorld w(2, cfg);
      const size_t counts[2] = {32768, 32769};
      std::vector<std::vector<float>> in(2);
      std::vector<GuardedBuffer*> out;
      for (int r = 0; r < 2; ++r) {
        in[r] = gctest::normal(counts[r], 20 + r);
        // Large values at the tail so the longer rank selects its last index.
        for (size_t i = counts[r] - 64; i < counts[r]; ++i) in[r][i] = 100.0f + (float)i;
        out.push_back(new GuardedBuffer(counts[r] * 4));
      }
      auto res = w.run([&](int r) {
        return gradcompAllReduce(in[r].data(), out[r]->data(), counts[r], ncclFloat32, ncclSum,
                                 w.comm(r), nullptr);
      });
      for (int r = 0; r < 2; ++r) {
        EXPECT_EQ(res[r], gradcompInvalidUsage) << "method " << m << " rank " << r;
      }
      // The same call with agreeing counts works afterwards.
      res = w.run([&](int r) {
        return gradcompAllReduce(in[r].data(), out[r]->data(), counts[0], ncclFloat32, ncclSum,
                                 w.comm(r), nullptr);
      });
      EXPECT_EQ(res[0], gradcompSuccess) << gradcompGetLastError();
      EXPECT_EQ(res[1], gradcompSuccess);
      for (auto* b : out) delete b;
    }
  }
}

// Defect 2: a bucket offset past the stream, with offsets[b] <= offsets[b+1]
// checked only bucket by bucket. Bucket 0 claims 256 words of a 2-word
// stream whose all-ones bits decode as long runs of level-1 values, so an
// unbounded reader walks into the no-access page.
TEST(Reliability, EliasDecoderBoundsBucketOffsets) {
  const size_t n = 1024;
  const gradcompEliasParams_t params = {7, 512, gradcompEliasGamma, gradcompEliasScaleMax};
  const size_t header = gradcompEliasHeaderBytes(n, 512);
  ASSERT_EQ(header, 4u * 5);
  std::vector<uint32_t> enc(5 + 2);
  const float one = 1.0f;
  memcpy(&enc[0], &one, 4);
  memcpy(&enc[1], &one, 4);
  enc[2] = 7;    // offsets[0]: the levels (bucket 0 starts at stream word 0)
  enc[3] = 256;  // offsets[1]: past the stream
  enc[4] = 2;    // offsets[2] = stream words
  enc[5] = enc[6] = 0xffffffffu;
  GuardedBuffer in(enc.data(), enc.size() * 4);
  std::vector<float> out(n);
  EXPECT_EQ(gradcompEliasDecodeHost(in.data(), in.size(), n, &params, out.data(), 0),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "not a well-formed Elias encoding"), nullptr)
      << gradcompGetLastError();
}

// Defect 3: absurd counts end in an error on every rank, never an abort.
TEST(Reliability, AbsurdCountsAreRefused) {
  gradcompConfig_t cfg = quickConfig(gradcompMethodQsgd);
  cfg.cpuTimeoutSec = 5.0f;
  CpuWorld w(2, cfg);
  GuardedBuffer send0(64), send1(64), recv0(64), recv1(64);
  GuardedBuffer* send[2] = {&send0, &send1};
  GuardedBuffer* recv[2] = {&recv0, &recv1};
  struct Case {
    size_t count;
    ncclDataType_t type;
    gradcompResult_t expect;
  } cases[] = {
      // 4 EiB of scratch, past any address space (47 or 57 bits): no memory on
      // every host. (4 TiB was refused only where the host does not overcommit;
      // one that does gave it, and the reduction then read past the buffers.)
      {(size_t)1 << 60, ncclInt32, gradcompSystemError},
      {SIZE_MAX, ncclInt32, gradcompInvalidArgument},
      {(size_t)1 << 62, ncclInt32, gradcompInvalidArgument},
      {((size_t)1 << 62) + 1, ncclInt32, gradcompInvalidArgument},
      {SIZE_MAX, ncclFloat32, gradcompInvalidArgument},
      {(size_t)1 << 62, ncclBfloat16, gradcompInvalidArgument},
  };
  for (const Case& k : cases) {
    auto res = w.run([&](int r) {
      return gradcompAllReduce(send[r]->data(), recv[r]->data(), k.count, k.type, ncclSum,
                               w.comm(r), nullptr);
    });
    EXPECT_EQ(res[0], k.expect) << "count " << k.count << " type " << k.type;
    EXPECT_EQ(res[1], k.expect) << "count " << k.count << " type " << k.type;
  }
  // DGC's momentum pass-through (every call of a one-rank comm, and calls
  // below minElements) keeps a velocity of `count` floats: the same range,
  // never a wrapped allocation (2^62 + 1 floats were 4 bytes, then overrun).
  {
    gradcompConfig_t dgc = quickConfig(gradcompMethodDgc);
    dgc.momentum = 0.9f;
    dgc.momentumCorrection = 1;
    CpuWorld one(1, dgc);
    for (size_t count : {((size_t)1 << 62) + 1, (size_t)1 << 62, SIZE_MAX}) {
      EXPECT_EQ(gradcompAllReduce(send0.data(), recv0.data(), count, ncclFloat32, ncclSum,
                                  one.comm(0), nullptr),
                gradcompInvalidArgument)
          << count;
      EXPECT_NE(strstr(gradcompGetLastError(), "out of range"), nullptr) << gradcompGetLastError();
    }
  }
  // Size helpers: 0 (invalid) rather than a wrapped size.
  const gradcompEliasParams_t params = {7, 32, gradcompEliasGamma, gradcompEliasScaleMax};
  for (size_t n : {SIZE_MAX, (size_t)1 << 62, SIZE_MAX / 8 + 1}) {
    EXPECT_EQ(gradcompQsgdEncodedBytes(n, 8, 32), 0u) << n;
    EXPECT_EQ(gradcompEliasHeaderBytes(n, 32), 0u) << n;
    EXPECT_EQ(gradcompEliasMaxEncodedBytes(n, &params), 0u) << n;
    size_t ws = 7;  // refused before any device is asked (SIZE_MAX once wrapped to a tiny size)
    EXPECT_EQ(gradcompEliasWorkspaceBytes(n, 32, &ws), gradcompInvalidArgument) << n;
    EXPECT_NE(strstr(gradcompGetLastError(), "out of range"), nullptr) << gradcompGetLastError();
    EXPECT_EQ(ws, 7u) << n;
  }
  // Below the codec's range but with no encoding at any levels.
  size_t ws = 7;
  EXPECT_EQ(gradcompEliasWorkspaceBytes((size_t)1 << 40, 32, &ws), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "too large for one Elias encoding"), nullptr)
      << gradcompGetLastError();
  EXPECT_EQ(gradcompQsgdEncodedBytes(1000, 8, 32), 32u * 4 + 1000u);
}

// An Elias allreduce's stream offsets are 32-bit word counts: a count whose
// worst-case encoding exceeds 2^32 words is refused on every rank before the
// call allocates anything (its state, a workspace of nranks worst cases), naming
// the count and the largest one taken, and at the widest bits the comm may use:
// under DQ-SGD (bitsMax 8) a count that fits at 4 bits would otherwise pass its
// first calls and be refused at the first call whose policy chose more bits.
// Until 2026-12-06 the limit was checked inside the exchange at the call's
// width, after the allocations (so this test met "out of memory", or a
// workspace of nranks * 17 GB allocated for nothing, instead).
TEST(Reliability, EliasCountsBeyondTheStreamOffsetsAreRefusedBeforeAllocating) {
  const int N = 2, bucket = 512;
  // The largest count whose worst case at `levels` fits (gradcompEliasMaxEncodedBytes
  // gives 0 past it).
  auto largest = [&](int levels) {
    const gradcompEliasParams_t p = {levels, bucket, gradcompEliasGamma, gradcompEliasScaleMax};
    size_t lo = 1, hi = (size_t)1 << 40;
    while (hi - lo > 1) {
      const size_t mid = lo + (hi - lo) / 2;
      (gradcompEliasMaxEncodedBytes(mid, &p) != 0 ? lo : hi) = mid;
    }
    return lo;
  };
  const size_t at8 = largest(127), at4 = largest(7);
  ASSERT_GT(at8, (size_t)1 << 33);  // 15 bits an element at most: about 9.2e9
  ASSERT_GT(at4, at8 + 1);
  struct Case {
    gradcompBitsMode_t mode;
    int bits;
    size_t count;
  } cases[] = {{gradcompBitsFixed, 8, at8 + 1},
               {gradcompBitsFixed, 8, (size_t)1 << 40},
               {gradcompBitsBudget, 4, at8 + 1},  // fits at 4 bits, not at bitsMax 8
               {gradcompBitsDynamic, 4, at4 - 1}};
  for (const Case& k : cases) {
    SCOPED_TRACE(testing::Message() << "mode=" << k.mode << " count=" << k.count);
    gradcompConfig_t cfg;
    gradcompConfigInit(&cfg);
    cfg.minElements = 0;
    cfg.elias = 1;
    cfg.bucketSize = bucket;
    cfg.bits = k.bits;
    cfg.bitsMode = k.mode;
    cfg.bitsMax = 8;
    cfg.autoTune = 0;
    gctest::CpuWorld w(N, cfg);
    std::vector<std::shared_ptr<gctest::AllocLimitBackend>> limited;
    for (int r = 0; r < N; ++r) {
      limited.push_back(
          std::make_shared<gctest::AllocLimitBackend>(w.comm(r)->backend, size_t(1) << 30));
      w.comm(r)->backend = limited.back();
    }
    // Never read or written: the call must be refused before it touches them.
    void* buf = reinterpret_cast<void*>((uintptr_t)1 << 20);
    std::vector<std::string> said(N);
    const std::vector<gradcompResult_t> res = w.run([&](int r) {
      const gradcompResult_t x =
          gradcompAllReduce(buf, buf, k.count, ncclFloat32, ncclSum, w.comm(r), nullptr);
      said[r] = gradcompGetLastError();
      return x;
    });
    const std::string want =
        "count=" + std::to_string(k.count) + " is too large for one Elias encoding at bits=8";
    const std::string limit = "at most " + std::to_string(at8) + " elements";
    for (int r = 0; r < N; ++r) {
      EXPECT_EQ(res[r], gradcompInvalidArgument) << r << ": " << said[r];
      EXPECT_NE(said[r].find(want), std::string::npos) << said[r];
      EXPECT_NE(said[r].find(limit), std::string::npos) << said[r];
      EXPECT_EQ(limited[r]->refused(), 0u) << r;
      EXPECT_LT(limited[r]->used(), size_t(1) << 20) << r;
    }
    // The comm goes on.
    const size_t n = 4096;
    std::vector<std::vector<float>> x(N, std::vector<float>(n, 1.0f));
    const std::vector<gradcompResult_t> ok = w.run([&](int r) {
      return gradcompAllReduce(x[r].data(), x[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                               nullptr);
    });
    for (int r = 0; r < N; ++r) {
      EXPECT_EQ(ok[r], gradcompSuccess) << r;
      EXPECT_EQ(x[r][0], 2.0f) << r;
    }
  }
}

// A compressed reduce-scatter whose input (nranks * recvcount) is beyond the
// codecs' range is refused naming the recvcount the caller passed, the input
// count and both limits, on every rank (until 2026-12-06 the sentence named the
// product alone, as "count=", which the caller never passed).
TEST(Reliability, ReduceScatterBeyondTheCodecRangeNamesRecvcount) {
  const int N = 2;
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 0;
  cfg.autoTune = 0;
  gctest::CpuWorld w(N, cfg);
  const size_t recvCount = ((size_t)1 << 55) + 1, count = recvCount * N;
  // Never read or written: refused before anything touches them.
  void* send = reinterpret_cast<void*>((uintptr_t)1 << 20);
  void* recv = reinterpret_cast<void*>((uintptr_t)1 << 62);
  std::vector<std::string> said(N);
  const std::vector<gradcompResult_t> res = w.run([&](int r) {
    const gradcompResult_t x =
        gradcompReduceScatter(send, recv, recvCount, ncclFloat32, ncclSum, w.comm(r), nullptr);
    said[r] = gradcompGetLastError();
    return x;
  });
  const std::string want =
      "recvcount=" + std::to_string(recvCount) + " times nranks=2 is " + std::to_string(count) +
      " input elements, out of range 0..72057594037927936 (at most 36028797018963968 per rank)";
  for (int r = 0; r < N; ++r) {
    EXPECT_EQ(res[r], gradcompInvalidArgument) << r;
    EXPECT_NE(said[r].find(want), std::string::npos) << said[r];
  }
}

// A C caller may pass any int as an enum: a datatype outside NCCL's, or a
// negative op, is refused by value and range before anything reads it as the
// enum (the sanitizer build stopped at the load before); the CPU backend
// names the types and ops it serves.
TEST(Reliability, EnumValuesOutsideNcclsAreRefused) {
  CpuWorld w(1, quickConfig(gradcompMethodQsgd));
  std::vector<float> buf(64, 1.0f);
  struct Case {
    int type, op;
    const char* says;
  } cases[] = {
      {99, 0, "datatype=99 is not an NCCL data type (0..11)"},
      {-1, 0, "datatype=-1 is not an NCCL data type (0..11)"},
      {7, -1, "op=-1 is not an NCCL reduction"},
      {10, 0, "datatype=10 / op=0 not supported (it reduces ncclInt8..ncclBfloat16, 0..9"},
  };
  for (const Case& k : cases) {
    // The values in the enums' bytes. Passing them by value loads them as the
    // enums (GCC's UBSan does not check it, clang's -fsanitize=enum would):
    // tests/capi/enum_args.c makes the same calls from C, where they are defined.
    ncclDataType_t t;
    ncclRedOp_t o;
    memcpy(&t, &k.type, sizeof t);
    memcpy(&o, &k.op, sizeof o);
    for (int rs = 0; rs < 2; ++rs) {
      const gradcompResult_t res =
          rs ? gradcompReduceScatter(buf.data(), buf.data(), 8, t, o, w.comm(0), nullptr)
             : gradcompAllReduce(buf.data(), buf.data(), 8, t, o, w.comm(0), nullptr);
      EXPECT_EQ(res, gradcompInvalidArgument) << k.type << " " << k.op << " rs " << rs;
      EXPECT_NE(strstr(gradcompGetLastError(), k.says), nullptr) << gradcompGetLastError();
    }
  }
}

// Defect 6: with momentum masking off, a NaN at step 1 must reach that
// step's output and leave nothing in the state (every rank clears its
// momentum and velocity after a non-finite output), so later steps are finite.
TEST(Reliability, NonFiniteGradientDoesNotPoisonDgcMomentum) {
  for (float bad : {NAN, INFINITY}) {
    gradcompConfig_t cfg = quickConfig(gradcompMethodDgc);
    cfg.momentumMasking = 0;
    cfg.momentumCorrection = 1;
    CpuWorld w(2, cfg);
    const size_t n = 4096, at = 5;
    std::vector<std::vector<float>> buf(2, std::vector<float>(n));
    for (int t = 0; t < 6; ++t) {
      for (int r = 0; r < 2; ++r) {
        const std::vector<float> x = gctest::normal(n, 300 + 10 * t + r);
        std::copy(x.begin(), x.end(), buf[r].begin());
      }
      if (t == 1) buf[0][at] = bad;
      auto res = w.run([&](int r) {
        return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                                 nullptr);
      });
      ASSERT_EQ(res[0], gradcompSuccess);
      ASSERT_EQ(res[1], gradcompSuccess);
      for (int r = 0; r < 2; ++r) {
        for (size_t i = 0; i < n; ++i) {
          if (t == 1 && i == at) {
            EXPECT_FALSE(std::isfinite(buf[r][i])) << "rank " << r;
          } else {
            ASSERT_TRUE(std::isfinite(buf[r][i])) << "step " << t << " rank " << r << " i " << i;
          }
        }
      }
      if (t == 1) {
        for (int r = 0; r < 2; ++r) {
          const gc::BufferState& st = w.comm(r)->states.begin()->second;
          for (size_t i = 0; i < n; ++i) {
            ASSERT_EQ(st.momentum[i], 0.0f) << "rank " << r << " i " << i;
            ASSERT_EQ(st.residual[i], 0.0f) << "rank " << r << " i " << i;
          }
        }
      }
    }
  }
}

// Defect 9: integer pass-through wraps around as NCCL's does (UBSan reports
// the signed overflow of the old code in the sanitizer job).
TEST(Reliability, IntegerPassThroughWrapsAround) {
  CpuWorld w(2, quickConfig(gradcompMethodQsgd));
  int32_t a32[2][3] = {{INT_MAX, INT_MIN, 65536}, {1, -1, 65536}};
  int32_t o32[2][3];
  int64_t a64[2][2] = {{LLONG_MAX, (int64_t)1 << 32}, {1, (int64_t)1 << 32}};
  int64_t o64[2][2];
  auto res = w.run([&](int r) {
    GC_TEST_RETURN(gradcompAllReduce(a32[r], o32[r], 3, ncclInt32, ncclSum, w.comm(r), nullptr));
    return gradcompAllReduce(a64[r], o64[r], 2, ncclInt64, ncclSum, w.comm(r), nullptr);
  });
  ASSERT_EQ(res[0], gradcompSuccess);
  ASSERT_EQ(res[1], gradcompSuccess);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(o32[r][0], INT_MIN);
    EXPECT_EQ(o32[r][1], INT_MAX);
    EXPECT_EQ(o32[r][2], 131072);
    EXPECT_EQ(o64[r][0], LLONG_MIN);
  }
  res = w.run([&](int r) {
    GC_TEST_RETURN(gradcompAllReduce(a32[r], o32[r], 3, ncclInt32, ncclProd, w.comm(r), nullptr));
    return gradcompAllReduce(a64[r], o64[r], 2, ncclInt64, ncclProd, w.comm(r), nullptr);
  });
  ASSERT_EQ(res[0], gradcompSuccess);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(o32[r][0], INT_MAX);
    EXPECT_EQ(o32[r][2], 0);  // 2^32 wraps to 0
    EXPECT_EQ(o64[r][1], 0);  // 2^64 wraps to 0
  }
}

// An 8-bit average over more ranks than the type holds divides by the rank
// count, as NCCL does: the count cast to the element type was 0 at 256 ranks
// (a division by zero) and 44 at 300.
TEST(Reliability, EightBitAverageOverManyRanks) {
  for (int n : {300, 256}) {
    SCOPED_TRACE(testing::Message() << "ranks=" << n);
    CpuWorld w(n, quickConfig(gradcompMethodQsgd));
    std::vector<uint8_t> u(n, 0), uOut(n, 1);
    std::vector<int8_t> s(n, 0), sOut(n, 1);
    u[0] = 255;  // sum 255: no wrap
    s[0] = 127;
    s[1] = -27;  // sum 100
    auto res = w.run([&](int r) {
      GC_TEST_RETURN(gradcompAllReduce(&u[r], &uOut[r], 1, ncclUint8, ncclAvg, w.comm(r), nullptr));
      return gradcompAllReduce(&s[r], &sOut[r], 1, ncclInt8, ncclAvg, w.comm(r), nullptr);
    });
    for (int r = 0; r < n; ++r) {
      ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
      EXPECT_EQ(uOut[r], 255 / n);
      EXPECT_EQ(sOut[r], 100 / n);
    }
  }
}

// Defect 9: densities so small that 1/density overflows a size_t.
TEST(Reliability, TinyDensityPlansAreDefined) {
  size_t slots = 0;
  ASSERT_EQ(gradcompTopkSlots(1u << 20, 1e-45f, 2.0f, 0, &slots), gradcompSuccess);
  EXPECT_EQ(slots, 1u);
  std::vector<float> v = gctest::normal(4096, 5);
  v[1234] = 1000.0f;
  std::vector<uint32_t> idx(4096);
  uint64_t selected = 0;
  ASSERT_EQ(
      gradcompTopkSelectHost(v.data(), v.size(), 1e-45f, 2.0f, 1e-4f, 0, 1, idx.data(), &selected),
      gradcompSuccess);
  ASSERT_GE(selected, 1u);
  EXPECT_EQ(idx[0], 1234u);
}

// Defect 9: the host codecs take inputs at any alignment (void* from the
// caller) and give the bytes they give for aligned ones.
TEST(Reliability, HostCodecsTakeMisalignedInputs) {
  const size_t n = 1000;
  const std::vector<float> x = gctest::normal(n, 77);
  for (ncclDataType_t type : {ncclFloat32, ncclFloat16, ncclBfloat16}) {
    const size_t esz = type == ncclFloat32 ? 4 : 2;
    std::vector<char> aligned(n * esz + 8), shifted(n * esz + 8);
    for (size_t i = 0; i < n; ++i) {
      if (type == ncclFloat32) {
        memcpy(aligned.data() + 4 * i, &x[i], 4);
      } else {
        uint32_t b;
        memcpy(&b, &x[i], 4);
        const uint16_t h = (uint16_t)(b >> 16);  // a bf16/fp16 bit pattern: any will do
        memcpy(aligned.data() + 2 * i, &h, 2);
      }
    }
    memcpy(shifted.data() + 1, aligned.data(), n * esz);
    const size_t bytes = gradcompQsgdEncodedBytes(n, 4, 128);
    std::vector<uint32_t> a(bytes / 4 + 1), b(bytes / 4 + 1);
    ASSERT_EQ(gradcompQsgdEncodeTypedHost(aligned.data(), type, nullptr, n, 4, 128, 9, a.data()),
              gradcompSuccess);
    ASSERT_EQ(
        gradcompQsgdEncodeTypedHost(shifted.data() + 1, type, nullptr, n, 4, 128, 9, b.data()),
        gradcompSuccess);
    EXPECT_EQ(a, b) << "type " << type;
    const gradcompEliasParams_t params = {7, 128, gradcompEliasGamma, gradcompEliasScaleMax};
    const size_t maxBytes = gradcompEliasMaxEncodedBytes(n, &params);
    std::vector<uint32_t> ea(maxBytes / 4 + 1), eb(maxBytes / 4 + 1);
    size_t ba = 0, bb = 0;
    ASSERT_EQ(gradcompEliasEncodeHost(aligned.data(), type, nullptr, n, &params, 3, ea.data(),
                                      maxBytes, &ba),
              gradcompSuccess);
    ASSERT_EQ(gradcompEliasEncodeHost(shifted.data() + 1, type, nullptr, n, &params, 3, eb.data(),
                                      maxBytes, &bb),
              gradcompSuccess);
    EXPECT_EQ(ba, bb);
    EXPECT_EQ(ea, eb) << "type " << type;
  }
}

// The fp32 arrays the host codecs read and write as floats (a residual, a
// decode's output) are refused by name when misaligned, as the GPU entry
// points refuse them, instead of being accessed as misaligned floats; the
// caller's buffers are left as they were.
TEST(Reliability, HostCodecsRefuseMisalignedFloatArrays) {
  const size_t n = 1000;
  const std::vector<float> x = gctest::normal(n, 78);
  std::vector<char> store(4 * n + 8, 0x5a);
  float* shifted = reinterpret_cast<float*>(store.data() + 1);
  const std::vector<char> before = store;
  std::vector<uint32_t> enc(gradcompQsgdEncodedBytes(n, 4, 128) / 4 + 1);
  EXPECT_EQ(gradcompQsgdEncodeTypedHost(x.data(), ncclFloat32, shifted, n, 4, 128, 9, enc.data()),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "residual="), nullptr) << gradcompGetLastError();
  ASSERT_EQ(gradcompQsgdEncodeHost(x.data(), n, 4, 128, 9, enc.data()), gradcompSuccess);
  EXPECT_EQ(gradcompQsgdDecodeHost(enc.data(), n, 4, 128, shifted, 1), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "must be 4-byte aligned (fp32)"), nullptr)
      << gradcompGetLastError();
  const gradcompEliasParams_t params = {7, 128, gradcompEliasGamma, gradcompEliasScaleMax};
  const size_t maxBytes = gradcompEliasMaxEncodedBytes(n, &params);
  std::vector<uint32_t> eenc(maxBytes / 4 + 1);
  size_t bytes = 0;
  EXPECT_EQ(gradcompEliasEncodeHost(x.data(), ncclFloat32, shifted, n, &params, 3, eenc.data(),
                                    maxBytes, &bytes),
            gradcompInvalidArgument);
  ASSERT_EQ(gradcompEliasEncodeHost(x.data(), ncclFloat32, nullptr, n, &params, 3, eenc.data(),
                                    maxBytes, &bytes),
            gradcompSuccess);
  EXPECT_EQ(gradcompEliasDecodeHost(eenc.data(), bytes, n, &params, shifted, 0),
            gradcompInvalidArgument);
  EXPECT_EQ(store, before);
}

// No two buffers of a codec call may overlap: each codec reads its inputs
// while it writes its outputs, so an overlap gave wrong bytes with success.
// Every entry point refuses one naming both buffers (the GPU ones before
// they look at the pointers, so host memory shows it here) and leaves the
// memory as it was; buffers that only touch are accepted.
TEST(Reliability, CodecsRefuseOverlappingBuffers) {
  const size_t n = 1000;
  const int bits = 4, d = 128;
  const size_t encBytes = gradcompQsgdEncodedBytes(n, bits, d);
  const gradcompEliasParams_t params = {7, d, gradcompEliasGamma, gradcompEliasScaleMax};
  const size_t eliasBytes = gradcompEliasMaxEncodedBytes(n, &params);
  // One arena: x at 0, then room for an encoding right after it and a
  // decode right after that.
  std::vector<uint32_t> arena((8 * n + std::max(encBytes, eliasBytes)) / 4 + 64);
  const std::vector<float> x0 = gctest::normal(n, 21);
  memcpy(arena.data(), x0.data(), 4 * n);
  char* base = reinterpret_cast<char*>(arena.data());
  float* x = reinterpret_cast<float*>(base);
  const std::vector<uint32_t> before = arena;
  auto refused = [&](gradcompResult_t r, const char* a, const char* b, const char* what) {
    EXPECT_EQ(r, gradcompInvalidArgument) << what;
    const std::string err = gradcompGetLastError();
    EXPECT_NE(err.find(std::string(a) + "="), std::string::npos) << what << ": " << err;
    EXPECT_NE(err.find(std::string(b) + "="), std::string::npos) << what << ": " << err;
    EXPECT_NE(err.find("overlap"), std::string::npos) << what << ": " << err;
    EXPECT_EQ(arena, before) << what;
  };
  float* inside = reinterpret_cast<float*>(base + 4 * (n - 4));  // x's last 4 elements
  refused(gradcompQsgdEncodeTypedHost(x, ncclFloat32, inside, n, bits, d, 1, base + 4 * n), "x",
          "residual", "QSGD host encode, residual in x");
  refused(gradcompQsgdEncodeTypedHost(x, ncclFloat32, nullptr, n, bits, d, 1, inside), "x", "out",
          "QSGD host encode, out in x");
  refused(gradcompQsgdDecodeHost(base + 4 * n, n, bits, d,
                                 reinterpret_cast<float*>(base + 4 * n + encBytes - 4), 0),
          "in", "out", "QSGD host decode, out on in's last word");
  refused(gradcompQsgdEncodeEF(x, ncclFloat32, inside, n, bits, d, 1, base + 4 * n, nullptr), "g",
          "residual", "QSGD GPU encode");
  refused(gradcompQsgdDecode(base, n, bits, d, x + 1, 0, nullptr), "in", "out", "QSGD GPU decode");
  size_t bytes = 0;
  refused(
      gradcompEliasEncodeHost(x, ncclFloat32, nullptr, n, &params, 3, inside, eliasBytes, &bytes),
      "x", "out", "Elias host encode");
  refused(gradcompEliasDecodeHost(base, 4 * n, n, &params, x + 8, 0), "in", "out",
          "Elias host decode");
  // The size is written after the encoding: over x it corrupted the caller's
  // input, over out the encoding's first bytes, both with success.
  refused(gradcompEliasEncodeHost(x, ncclFloat32, nullptr, n, &params, 3, base + 4 * n, eliasBytes,
                                  reinterpret_cast<size_t*>(inside)),
          "x", "encodedBytes", "Elias host encode, size in x");
  refused(gradcompEliasEncodeHost(x, ncclFloat32, nullptr, n, &params, 3, base + 4 * n, eliasBytes,
                                  reinterpret_cast<size_t*>(base + 4 * n + 8)),
          "out", "encodedBytes", "Elias host encode, size in out");
  refused(gradcompEliasEncode(x, ncclFloat32, nullptr, n, &params, 3, base + 4 * n, inside, 1 << 20,
                              nullptr),
          "x", "workspace", "Elias GPU encode");
  refused(gradcompEliasDecodeBounded(base, 4 * n, n, &params, x + 8, 0, nullptr), "in", "out",
          "Elias GPU decode");
  refused(gradcompTopkSelectHost(x, n, 0.01f, 2.0f, 1.0f, 0, 1, reinterpret_cast<uint32_t*>(inside),
                                 nullptr),
          "v", "idx", "top-k host select");
  // The count is written after the selection: over v it corrupted the
  // caller's input, over idx the selection, both with success.
  uint32_t* slots = reinterpret_cast<uint32_t*>(base + 4 * n);
  refused(gradcompTopkSelectHost(x, n, 0.01f, 2.0f, 1.0f, 1, 1, slots,
                                 reinterpret_cast<uint64_t*>(inside)),
          "v", "selectedCount", "top-k host select, count in v");
  refused(gradcompTopkSelectHost(x, n, 0.01f, 2.0f, 1.0f, 1, 1, slots,
                                 reinterpret_cast<uint64_t*>(slots + 2)),
          "idx", "selectedCount", "top-k host select, count in idx");
  // Touching is not overlapping: each output right after the input, then the
  // encoding decoded into the buffer right after it.
  ASSERT_EQ(gradcompQsgdEncodeTypedHost(x, ncclFloat32, nullptr, n, bits, d, 1, base + 4 * n),
            gradcompSuccess)
      << gradcompGetLastError();
  float* after = reinterpret_cast<float*>(base + 4 * n + encBytes);
  ASSERT_EQ(gradcompQsgdDecodeHost(base + 4 * n, n, bits, d, after, 0), gradcompSuccess)
      << gradcompGetLastError();
  ASSERT_EQ(gradcompEliasEncodeHost(x, ncclFloat32, nullptr, n, &params, 3, base + 4 * n,
                                    eliasBytes, &bytes),
            gradcompSuccess)
      << gradcompGetLastError();
}

// An Elias encoding refused in a later bucket leaves out untouched: the
// whole encoding is checked before any bucket is written (the sum a caller
// accumulates into is not partly added to).
TEST(Reliability, RefusedEliasDecodeLeavesOutUntouched) {
  const size_t n = 1024;
  const gradcompEliasParams_t params = {7, 512, gradcompEliasGamma, gradcompEliasScaleMax};
  const std::vector<float> x = gctest::normal(n, 5);
  std::vector<uint32_t> enc(gradcompEliasMaxEncodedBytes(n, &params) / 4);
  size_t bytes = 0;
  ASSERT_EQ(gradcompEliasEncodeHost(x.data(), ncclFloat32, nullptr, n, &params, 1, enc.data(),
                                    enc.size() * 4, &bytes),
            gradcompSuccess);
  const size_t nb = 2, stream = 2 * nb + 1;  // scales, offsets[0..nb], then the stream
  std::vector<float> out(n, 0.0f);
  ASSERT_EQ(gradcompEliasDecodeHost(enc.data(), bytes, n, &params, out.data(), 1),
            gradcompSuccess);  // the intact encoding decodes
  // Bucket 1's first word zero: its first number is 0, which no code gives.
  enc[stream + enc[nb + 1]] = 0;
  for (int accumulate = 0; accumulate <= 1; ++accumulate) {
    std::vector<float> sum = gctest::normal(n, 9);
    const std::vector<float> kept = sum;
    EXPECT_EQ(gradcompEliasDecodeHost(enc.data(), bytes, n, &params, sum.data(), accumulate),
              gradcompInvalidArgument);
    EXPECT_EQ(memcmp(sum.data(), kept.data(), n * 4), 0) << "accumulate " << accumulate;
  }
}

// Defect 8: mismatched calls are the caller's (InvalidUsage, never
// InternalError) and the sentence gives both ranks' counts, not a hash.
TEST(Reliability, MismatchedCallsNameBothCounts) {
  struct Case {
    gradcompMethod_t method;
    gradcompAlgo_t algo;
    int elias;
    ncclDataType_t type;
  } cases[] = {
      {gradcompMethodNone, gradcompAlgoAuto, 0, ncclInt32},
      {gradcompMethodQsgd, gradcompAlgoRing, 0, ncclFloat32},
      {gradcompMethodQsgd, gradcompAlgoTwoShot, 0, ncclFloat32},
      {gradcompMethodQsgd, gradcompAlgoAuto, 1, ncclFloat32},
  };
  for (const Case& k : cases) {
    gradcompConfig_t cfg = quickConfig(k.method);
    cfg.algo = k.algo;
    cfg.elias = k.elias;
    CpuWorld w(3, cfg);
    const size_t counts[3] = {20000, 20001, 20000};
    std::vector<std::vector<float>> buf(3, std::vector<float>(20001, 1.0f));
    std::vector<std::string> err(3);
    auto res = w.run([&](int r) {
      gradcompResult_t rc = gradcompAllReduce(buf[r].data(), buf[r].data(), counts[r], k.type,
                                              ncclSum, w.comm(r), nullptr);
      err[r] = gradcompGetLastError();
      return rc;
    });
    for (int r = 0; r < 3; ++r) {
      EXPECT_EQ(res[r], gradcompInvalidUsage) << "case method " << k.method << " rank " << r;
      EXPECT_NE(err[r].find("count=20000"), std::string::npos) << err[r];
      EXPECT_NE(err[r].find("count=20001"), std::string::npos) << err[r];
    }
  }
}

// A hierarchical call runs only on the node and inter-node sub-worlds: they
// check the caller's call too. A rank passing Avg where the others pass Sum
// (every exchanged size the same) fails on every rank with the sentence
// giving both ops, for the allreduce and the reduce-scatter.
TEST(Reliability, HierarchicalCallsAgreeOnTheOp) {
  for (gradcompMethod_t m : {gradcompMethodQsgd, gradcompMethodTopk}) {
    for (bool rs : {false, true}) {
      SCOPED_TRACE(testing::Message() << "method " << m << (rs ? " reduce-scatter" : ""));
      gradcompConfig_t cfg = quickConfig(m);
      cfg.localSize = 2;
      CpuWorld w(4, cfg);
      const size_t n = 8192;
      std::vector<std::vector<float>> in(4), out(4, std::vector<float>(n));
      for (int r = 0; r < 4; ++r) in[r] = gctest::normal(n, 20 + r);
      std::vector<std::string> err(4);
      auto res = w.run([&](int r) {
        const ncclRedOp_t op = r == 3 ? ncclAvg : ncclSum;
        gradcompResult_t rc = rs ? gradcompReduceScatter(in[r].data(), out[r].data(), n / 4,
                                                         ncclFloat32, op, w.comm(r), nullptr)
                                 : gradcompAllReduce(in[r].data(), out[r].data(), n, ncclFloat32,
                                                     op, w.comm(r), nullptr);
        err[r] = gradcompGetLastError();
        return rc;
      });
      for (int r = 0; r < 4; ++r) {
        EXPECT_EQ(res[r], gradcompInvalidUsage) << "rank " << r;
        EXPECT_NE(err[r].find("op=0"), std::string::npos) << err[r];
        EXPECT_NE(err[r].find("op=4"), std::string::npos) << err[r];
      }
    }
  }
}

// A peer whose sparse slots break the wire rule (docs/sparse.md: the filled
// slots strictly increasing below the count, then only empty ones). Rank
// `bad`'s transport rewrites the first two indices of every slot block it
// sends, in place, as a broken selector would have written them: in the
// allgather its own block is the one it sends, so it adds the same list.
// The other ranks' transports are wrapped too, untouched, so every rank's
// call check sees the same calls.
enum class SlotDefect { Duplicate, Unordered, PastTheBuffer, FilledAfterEmpty };

class HostileSlotsTransport final : public gctest::ForwardingTransport {
 public:
  HostileSlotsTransport(std::unique_ptr<gc::Transport> inner, bool hostile, SlotDefect defect,
                        uint32_t n)
      : ForwardingTransport(std::move(inner)), hostile_(hostile), defect_(defect), n_(n) {
    sent.assign(size_, {0u, 0u});
  }
  gradcompResult_t allToAll(const void* const* send, const size_t* sendBytes, void* const* recv,
                            const size_t* recvBytes) override {
    std::map<const void*, std::pair<uint32_t, uint32_t>> done;
    for (int j = 0; hostile_ && j < size_; ++j) {
      if (j == rank_ || sendBytes[j] < 8) continue;
      if (!done.count(send[j])) {
        uint32_t* idx = static_cast<uint32_t*>(const_cast<void*>(send[j]));
        done[send[j]] = {idx[0], idx[1]};
        switch (defect_) {
          case SlotDefect::Duplicate:
            idx[1] = idx[0];
            break;
          case SlotDefect::Unordered:
            std::swap(idx[0], idx[1]);
            break;
          case SlotDefect::PastTheBuffer:
            idx[1] = n_ + 5;
            break;
          case SlotDefect::FilledAfterEmpty:
            idx[0] = gc::sparse::kEmptySlot;
            break;
        }
      }
      sent[j] = done[send[j]];
    }
    return ForwardingTransport::allToAll(send, sendBytes, recv, recvBytes);
  }
  // The first two indices of the block sent to each rank, as selected
  // (the allgather sends one block to all).
  std::vector<std::pair<uint32_t, uint32_t>> sent;

 private:
  bool hostile_;
  SlotDefect defect_;
  uint32_t n_;
};

// Rank `bad`'s transport breaks its slots with `defect`; the other ranks'
// transports are wrapped untouched. n: the elements the slot indices count.
std::vector<HostileSlotsTransport*> breakSlotsOf(CpuWorld& w, int bad, SlotDefect defect,
                                                 size_t n) {
  std::vector<HostileSlotsTransport*> hostile(w.size());
  for (int r = 0; r < w.size(); ++r) {
    gradcompComm* c = w.comm(r);
    hostile[r] = new HostileSlotsTransport(std::move(c->transport), r == bad, defect, (uint32_t)n);
    c->transport.reset(hostile[r]);
  }
  return hostile;
}

// Every rank's fp32 Sum allreduce (or reduce-scatter of n per rank) of in
// into out succeeds; a failure names the rank and its error sentence.
void expectEveryRankSucceeds(CpuWorld& w, std::vector<std::vector<float>>& in,
                             std::vector<std::vector<float>>& out, size_t n, bool reduceScatter,
                             const std::string& what) {
  std::vector<std::string> err;
  const auto res = sumOnEveryRank(w, in, out, n, reduceScatter, &err);
  for (int r = 0; r < w.size(); ++r) {
    ASSERT_EQ(res[r], gradcompSuccess) << what << " rank " << r << ": " << err[r];
  }
}

// Every rank that receives the malformed slots drops rank `bad`'s list
// whole, as the CUDA backend does, and every rank's call succeeds: in the
// allreduce every rank drops it (the allgather's scatter-add checks every
// rank's list, its own too), in the reduce-scatter every rank but `bad`
// (which adds its own block in full precision). The outputs equal, bit for
// bit, the serial reference with `bad`'s lists left out (its residual gives
// up what it sent all the same, and the residuals equal the reference's
// too), over two calls (the second selects from
// the residuals the first left), and stats.peerSlotsRejected counts the
// lists each rank dropped.
TEST(Reliability, MalformedPeerSlotsAreDroppedOnEveryRank) {
  const int N = 3, bad = 1, calls = 2;
  const char* defects[] = {"duplicate", "unordered", "past the buffer", "filled after empty"};
  std::vector<bool> dropped(N, false);
  dropped[bad] = true;
  for (gradcompMethod_t m : {gradcompMethodTopk, gradcompMethodDgc}) {
    for (auto sel : {gradcompSelectThreshold, gradcompSelectExact}) {
      for (bool reduceScatter : {false, true}) {
        for (int d = 0; d < 4; ++d) {
          const std::string what =
              std::string("method ") + std::to_string(m) + " select " + std::to_string(sel) +
              (reduceScatter ? " reduce-scatter " : " allreduce ") + defects[d];
          gradcompConfig_t cfg = quickConfig(m);
          cfg.select = sel;
          CpuWorld w(N, cfg);
          const size_t n = 8192, total = reduceScatter ? N * n : n;
          std::vector<HostileSlotsTransport*> hostile = breakSlotsOf(w, bad, (SlotDefect)d, n);
          std::vector<gctest::ref::SparseState> st(N);
          // The same buffers every call: the comm keys a buffer's state by
          // recvbuff.
          std::vector<std::vector<float>> in(N, std::vector<float>(total)),
              out(N, std::vector<float>(n));
          for (int step = 0; step < calls; ++step) {
            for (int r = 0; r < N; ++r) {
              const std::vector<float> g = gctest::normal(total, 30 + r + 10 * step);
              std::copy(g.begin(), g.end(), in[r].begin());
            }
            std::vector<std::vector<float>> want;
            if (reduceScatter) {
              want = gctest::ref::refSparseReduceScatter(cfg, gc::DType::F32, false, step, in, st,
                                                         nullptr, &dropped);
            } else {
              gctest::ref::SparseCall call;
              want.assign(N, gctest::ref::refSparse(cfg, gc::DType::F32, false, step, in, st, &call,
                                                    &dropped));
              ASSERT_FALSE(call.dense) << what;
            }
            ASSERT_NO_FATAL_FAILURE(expectEveryRankSucceeds(w, in, out, n, reduceScatter, what));
            for (int r = 0; r < N; ++r) {
              const bool received = !(reduceScatter && r == bad);
              if (received) {
                // The list rank r dropped was broken (in the allgather, the
                // one block sent to all): the selection filled two slots.
                const int to = r == bad ? (bad + 1) % N : r;
                const uint32_t a = hostile[bad]->sent[to].first, b = hostile[bad]->sent[to].second;
                ASSERT_LT(a, b) << what << ": the selection filled fewer than two slots";
              }
              ASSERT_EQ(memcmp(out[r].data(), want[r].data(), n * 4), 0)
                  << what << " rank " << r << " call " << step;
              if (!reduceScatter) {
                ASSERT_EQ(memcmp(out[r].data(), out[0].data(), n * 4), 0) << what << " rank " << r;
              }
              // The residual (DGC keeps one) gave up what was sent,
              // dropped or not: the sender cannot know.
              const float* v = w.comm(r)->states.begin()->second.residual;
              ASSERT_EQ(v != nullptr, !st[r].v.empty()) << what << " rank " << r;
              if (v) {
                ASSERT_EQ(memcmp(v, st[r].v.data(), total * 4), 0)
                    << what << " residual of rank " << r << " call " << step;
              }
              gradcompStats_t stats;
              ASSERT_EQ(gradcompGetStats(w.comm(r), &stats), gradcompSuccess);
              EXPECT_EQ(stats.peerSlotsRejected, received ? (uint64_t)step + 1 : 0u)
                  << what << " rank " << r << " call " << step;
            }
          }
        }
      }
    }
  }
}

// The hierarchy's middle stage scatter-adds received lists too (the sparse
// allgather or reduce-scatter among the nodes, on the comm's SparseOps): a
// malformed list there is dropped whole as in the flat call. N = 4 as 2
// nodes of 2; the inter-node transport of rank 2 (node 1, local rank 0)
// breaks its lists, so in local rank 0's middle stage every receiver drops
// node 1's list. The outputs equal, bit for bit, the serial hierarchical
// reference with that list left out, and stats.peerSlotsRejected counts the
// lists each rank dropped: local rank 0's ranks in the allreduce (rank 2
// drops its own, as in the flat allgather), rank 0 alone in the
// reduce-scatter (rank 2 adds its own block in full precision), none on
// local rank 1.
TEST(Reliability, MalformedPeerSlotsAreDroppedInTheHierarchyMiddleStage) {
  const int N = 4, L = 2, nodes = N / L, bad = 2, calls = 2;
  const char* defects[] = {"duplicate", "unordered", "past the buffer", "filled after empty"};
  std::vector<bool> dropped(nodes, false);
  dropped[bad / L] = true;
  for (gradcompMethod_t m : {gradcompMethodTopk, gradcompMethodDgc}) {
    for (bool reduceScatter : {false, true}) {
      for (int d = 0; d < 4; ++d) {
        const std::string what = std::string("method ") + std::to_string(m) +
                                 (reduceScatter ? " reduce-scatter " : " allreduce ") + defects[d];
        gradcompConfig_t cfg = quickConfig(m);
        cfg.localSize = L;
        CpuWorld w(N, cfg);
        const size_t n = 8192, total = reduceScatter ? N * n : n;
        std::vector<HostileSlotsTransport*> hostile(N);
        for (int r = 0; r < N; ++r) {
          gradcompComm* c = w.comm(r);
          ASSERT_TRUE(c->inter && c->topo.hier()) << what << " rank " << r;
          hostile[r] = new HostileSlotsTransport(std::move(c->inter->transport), r == bad,
                                                 (SlotDefect)d, (uint32_t)total);
          c->inter->transport.reset(hostile[r]);
        }
        std::vector<std::vector<gctest::ref::SparseState>> st;
        std::vector<std::vector<float>> in(N, std::vector<float>(total)),
            out(N, std::vector<float>(n));
        for (int step = 0; step < calls; ++step) {
          for (int r = 0; r < N; ++r) {
            const std::vector<float> g = gctest::normal(total, 40 + r + 10 * step);
            std::copy(g.begin(), g.end(), in[r].begin());
          }
          std::vector<std::vector<float>> want;
          if (reduceScatter) {
            want = gctest::ref::refHierSparseReduceScatter(cfg, gc::DType::F32, false, step, in, st,
                                                           L, {}, bad % L, &dropped);
          } else {
            want.assign(N, gctest::ref::refHierSparse(cfg, gc::DType::F32, false, step, in, st, L,
                                                      bad % L, &dropped));
          }
          ASSERT_NO_FATAL_FAILURE(expectEveryRankSucceeds(w, in, out, n, reduceScatter, what));
          // The broken list had two filled slots to break (node 0 is the
          // one peer in the middle stage).
          ASSERT_LT(hostile[bad]->sent[0].first, hostile[bad]->sent[0].second) << what;
          for (int r = 0; r < N; ++r) {
            ASSERT_EQ(memcmp(out[r].data(), want[r].data(), n * 4), 0)
                << what << " rank " << r << " call " << step;
            const bool received = r % L == bad % L && !(reduceScatter && r == bad);
            gradcompStats_t stats;
            ASSERT_EQ(gradcompGetStats(w.comm(r), &stats), gradcompSuccess);
            EXPECT_EQ(stats.peerSlotsRejected, received ? (uint64_t)step + 1 : 0u)
                << what << " rank " << r << " call " << step;
          }
        }
      }
    }
  }
}

// Three allreduces in which rank 1's list is malformed, with WARN logging
// on and stderr captured: 0 when every rank logged the drop exactly once
// (at the first call, with its count then: 1), 1 otherwise. The log goes
// back to stderr for the caller to read. hier: 4 ranks as 2 nodes of 2,
// rank 2's list broken in the middle stage of local rank 0, where ranks 0
// and 2 drop it: each names its own rank, not its node (its rank in the
// middle stage's comm).
int malformedSlotsWarnings(bool hier) {
  setenv("GRADCOMP_DEBUG", "WARN", 1);
  const int N = hier ? 4 : 3, bad = hier ? 2 : 1;
  const std::vector<int> dropping = hier ? std::vector<int>{0, 2} : std::vector<int>{0, 1, 2};
  const size_t n = 8192;
  testing::internal::CaptureStderr();
  {
    gradcompConfig_t cfg = quickConfig(gradcompMethodTopk);
    cfg.localSize = hier ? 2 : 1;
    CpuWorld w(N, cfg);
    if (hier) {
      for (int r = 0; r < N; ++r) {
        gradcompComm* c = w.comm(r);
        c->inter->transport.reset(new HostileSlotsTransport(
            std::move(c->inter->transport), r == bad, SlotDefect::Duplicate, (uint32_t)n));
      }
    } else {
      breakSlotsOf(w, bad, SlotDefect::Duplicate, n);
    }
    std::vector<std::vector<float>> in(N), out(N, std::vector<float>(n));
    for (int r = 0; r < N; ++r) in[r] = gctest::normal(n, 50 + r);
    for (int call = 0; call < 3; ++call) {
      auto res = w.run([&](int r) {
        return gradcompAllReduce(in[r].data(), out[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                                 nullptr);
      });
      for (int r = 0; r < N; ++r) {
        if (res[r] != gradcompSuccess) fprintf(stderr, "rank %d call %d failed\n", r, call);
      }
    }
  }
  const std::string log = testing::internal::GetCapturedStderr();
  fprintf(stderr, "%s", log.c_str());
  size_t lines = 0;
  for (size_t at = log.find("as malformed"); at != std::string::npos;
       at = log.find("as malformed", at + 1)) {
    ++lines;
  }
  bool once = lines == dropping.size() && log.find("failed") == std::string::npos;
  for (int r : dropping) {
    once &= log.find("rank " + std::to_string(r) +
                     " dropped 1 received sparse slot list(s) as "
                     "malformed") != std::string::npos;
  }
  return once ? 0 : 1;
}

// The WARN names the rank and the count, once per comm (not once per
// call). The log level is read once per process, so the calls run in a
// fresh one: a death test of the threadsafe style runs this binary again.
TEST(Reliability, MalformedPeerSlotsWarnOncePerComm) {
  const std::string style = GTEST_FLAG_GET(death_test_style);
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(exit(malformedSlotsWarnings(false)), testing::ExitedWithCode(0),
              "rank 1 dropped 1 received sparse slot list");
  EXPECT_EXIT(exit(malformedSlotsWarnings(true)), testing::ExitedWithCode(0),
              "rank 2 dropped 1 received sparse slot list");
  GTEST_FLAG_SET(death_test_style, style);
}

// isLateKey at the edges of each of its rules (minSeen 8, noReuse 256, as
// the preload's fused sets): nothing before minSeen, even with no key held;
// then four calls per key held, four times the first reuse, or noReuse calls
// where no key came back, each true at its bound and false one call before.
TEST(Reliability, LateKeyRuleHoldsAtItsBounds) {
  const uint64_t minSeen = 8, noReuse = 256;
  EXPECT_FALSE(gc::isLateKey(minSeen - 1, 0, 0, minSeen, noReuse));
  EXPECT_FALSE(gc::isLateKey(minSeen - 1, 1, 0, minSeen, noReuse));
  EXPECT_TRUE(gc::isLateKey(minSeen, 0, 0, minSeen, noReuse));
  // Four calls per key held (no key came back, noReuse far off).
  EXPECT_FALSE(gc::isLateKey(39, 0, 10, minSeen, noReuse));
  EXPECT_TRUE(gc::isLateKey(40, 0, 10, minSeen, noReuse));
  // Four times the first reuse (many keys held).
  EXPECT_FALSE(gc::isLateKey(39, 10, 100, minSeen, noReuse));
  EXPECT_TRUE(gc::isLateKey(40, 10, 100, minSeen, noReuse));
  // No key ever came back: noReuse calls.
  EXPECT_FALSE(gc::isLateKey(noReuse - 1, 0, 100, minSeen, noReuse));
  EXPECT_TRUE(gc::isLateKey(noReuse, 0, 100, minSeen, noReuse));
  // A key came back: noReuse no longer applies.
  EXPECT_FALSE(gc::isLateKey(noReuse, 100, 100, minSeen, noReuse));
}

// Unkeyed state is found by the receive buffer's address. A buffer new after
// the comm's first steps most likely moved, so it is warned about, once per
// comm and whatever GRADCOMP_DEBUG says, naming the call and the buffers
// held. Buffers that come in the first steps, keyed buffers, and buffers new
// soon after a reset are not warned about.
TEST(Reliability, ABufferNewAfterManyCallsIsWarnedAboutOnce) {
  const int N = 2;
  const size_t n = 4096;
  using Bufs = std::vector<std::vector<float>>;
  auto bufs = [&] { return Bufs(N, std::vector<float>(n, 1.0f)); };
  std::vector<Bufs> steady = {bufs(), bufs(), bufs()};
  Bufs keyed = bufs(), moved = bufs(), again = bufs(), afterReset = bufs();
  testing::internal::CaptureStderr();
  {
    CpuWorld w(N, quickConfig(gradcompMethodQsgd));
    auto call = [&](Bufs& b, bool byKey) {
      const auto res = w.run([&](int r) {
        return byKey ? gradcompAllReduceKeyed(b[r].data(), b[r].data(), n, ncclFloat32, ncclSum,
                                              w.comm(r), nullptr, 7)
                     : gradcompAllReduce(b[r].data(), b[r].data(), n, ncclFloat32, ncclSum,
                                         w.comm(r), nullptr);
      });
      for (int r = 0; r < N; ++r) EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r;
    };
    // 30 steps of three buffers: all three new in the first step.
    for (int step = 0; step < 30; ++step) {
      for (Bufs& b : steady) call(b, false);
    }
    fprintf(stderr, "-- steady\n");
    call(keyed, true);
    fprintf(stderr, "-- keyed\n");
    // A key forgotten frees its state but makes no unkeyed buffer expected:
    // the count of calls goes on.
    for (int r = 0; r < N; ++r) ASSERT_EQ(gradcompCommForgetKey(w.comm(r), 7), gradcompSuccess);
    call(moved, false);  // call 91 of the comm, which holds 3 states
    call(again, false);  // warned once per comm
    fprintf(stderr, "-- moved\n");
    for (int r = 0; r < N; ++r) ASSERT_EQ(gradcompCommResetState(w.comm(r)), gradcompSuccess);
    for (int k = 0; k < 3; ++k) call(afterReset, false);
  }
  {
    // A fresh comm warns again, but not before 64 calls: 40 calls of a
    // buffer, then a new one.
    CpuWorld w(N, quickConfig(gradcompMethodQsgd));
    for (int k = 0; k < 41; ++k) {
      Bufs& b = k < 40 ? steady[0] : moved;
      const auto res = w.run([&](int r) {
        return gradcompAllReduce(b[r].data(), b[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                                 nullptr);
      });
      for (int r = 0; r < N; ++r) EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r;
    }
  }
  const std::string log = testing::internal::GetCapturedStderr();
  const size_t steadyAt = log.find("-- steady"), keyedAt = log.find("-- keyed"),
               movedAt = log.find("-- moved");
  ASSERT_NE(movedAt, std::string::npos) << log;
  size_t warnings = 0;
  for (size_t at = log.find("is new at call"); at != std::string::npos;
       at = log.find("is new at call", at + 1)) {
    EXPECT_GT(at, keyedAt) << log;
    EXPECT_LT(at, movedAt) << log;
    ++warnings;
  }
  EXPECT_EQ(warnings, (size_t)N) << log;
  for (int r = 0; r < N; ++r) {
    char want[160];
    snprintf(want, sizeof(want),
             "rank %d: recvbuff %p (4096 elements of float) is new at call 91 of this comm, "
             "which holds the states of 3 other buffers",
             r, (void*)moved[r].data());
    EXPECT_NE(log.find(want), std::string::npos) << want << "\n" << log;
  }
  EXPECT_LT(steadyAt, keyedAt);
}

// A buffer that moves every step grows the comm's states by one each step,
// the growth the warning is there to explain: it is warned about however
// many of the step's buffers move (where a quarter or more move, the states
// grow as fast as the calls, and four calls per state held never comes), and
// when every call passes through with DGC's momentum (GRADCOMP_AUTO: states
// but no compressed calls). Not warned about: a run whose buffers all come in
// its first two steps (DDP regroups its buckets after the first), and one
// whose first step reuses a small tensor (a barrier's 1 element, under
// minElements) before its gradients come: that reuse is no step's length.
TEST(Reliability, BuffersMovingEveryStepAreWarnedAbout) {
  const int N = 2;
  const size_t n = 4096;
  const int kSteps = 80;
  using Bufs = std::vector<std::vector<float>>;
  auto bufs = [&](size_t len) { return Bufs(N, std::vector<float>(len, 1.0f)); };
  struct Case {
    const char* name;
    gradcompMethod_t method;
    bool autoPass;       // every call passed by GRADCOMP_AUTO (DGC: with its momentum)
    bool barrier;        // a 1-element tensor called twice before the first step
    int stable, moving;  // buffers per step
    bool warned;
  };
  const Case cases[] = {
      {"qsgd, one of two moves", gradcompMethodQsgd, false, false, 1, 1, true},
      {"qsgd, the only buffer moves, once back", gradcompMethodQsgd, false, false, 0, 1, true},
      {"dgc passed with momentum, one of two moves", gradcompMethodDgc, true, false, 1, 1, true},
      {"qsgd, 40 buffers regrouped after the first step", gradcompMethodQsgd, false, false, 40, 0,
       false},
      {"dgc, a barrier tensor twice, then 100 buffers", gradcompMethodDgc, false, true, 100, 0,
       false},
  };
  gc::AutoFigures ncclWins;
  ncclWins.smallCount = 1024;
  ncclWins.largeCount = 5120;
  ncclWins.ncclUs[0] = 16.0f, ncclWins.ncclUs[1] = 32.0f;
  ncclWins.compUs[0] = 48.0f, ncclWins.compUs[1] = 80.0f;
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    std::vector<Bufs> stable(k.stable, bufs(n)), first(k.stable, bufs(n));
    std::vector<Bufs> moving((size_t)k.moving * kSteps + 1, bufs(n));
    Bufs barrier = bufs(1);
    testing::internal::CaptureStderr();
    {
      gradcompConfig_t cfg = quickConfig(k.method);
      cfg.autoTune = k.autoPass ? 1 : 0;
      CpuWorld w(N, cfg);
      if (k.autoPass) {
        for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), ncclWins);
      }
      auto call = [&](Bufs& b) {
        const size_t len = b[0].size();
        const auto res = w.run([&](int r) {
          return gradcompAllReduce(b[r].data(), b[r].data(), len, ncclFloat32, ncclSum, w.comm(r),
                                   nullptr);
        });
        for (int r = 0; r < N; ++r) EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r;
      };
      if (k.barrier) call(barrier), call(barrier);
      size_t next = 0;
      for (int step = 0; step < kSteps; ++step) {
        // The first step's buffers are not the later steps' (DDP's regrouping).
        for (Bufs& b : step == 0 ? first : stable) call(b);
        for (int m = 0; m < k.moving; ++m) {
          // The only buffer comes back once (the allocator handing back a block).
          call(k.stable == 0 && step == 2 ? moving[0] : moving[next++]);
        }
      }
      if (k.autoPass) {
        for (int r = 0; r < N; ++r) {
          gradcompStats_t stats;
          ASSERT_EQ(gradcompGetStats(w.comm(r), &stats), gradcompSuccess);
          EXPECT_EQ(stats.callsCompressed, 0u) << "rank " << r;
          EXPECT_GT(stats.callsAutoPassed, 0u) << "rank " << r;
        }
      }
    }
    const std::string log = testing::internal::GetCapturedStderr();
    size_t warnings = 0;
    for (size_t at = log.find("is new at call"); at != std::string::npos;
         at = log.find("is new at call", at + 1)) {
      ++warnings;
    }
    // Found again within the run: the sentence for "none found again" is not the one.
    EXPECT_EQ(log.find("has found none of them again"), std::string::npos) << log;
    EXPECT_EQ(warnings, k.warned ? (size_t)N : 0u) << log;
  }
}

// Buffers that all move every step and never come back (gradients set to
// None, an allocator that never hands a block back) never let the comm find
// a state again, so neither four calls per state held nor four times the
// calls before a state came back ever comes: a new buffer after
// kLateBufferNoReuseCalls calls that never found a state again is warned
// about, once. A step of many buffers that then stay is not.
TEST(Reliability, BuffersThatNeverComeBackAreWarnedAbout) {
  const int N = 2;
  const size_t n = 2048;
  using Bufs = std::vector<std::vector<float>>;
  auto bufs = [&] { return Bufs(N, std::vector<float>(n, 1.0f)); };
  struct Case {
    const char* name;
    int perStep, steps;
    bool moving;
    bool warned;
  };
  const Case cases[] = {
      {"two buffers, both new every step", 2, 600, true, true},
      {"300 buffers, kept", 300, 4, false, false},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    std::vector<Bufs> all((size_t)k.perStep * (k.moving ? k.steps : 1), bufs());
    testing::internal::CaptureStderr();
    {
      gradcompConfig_t cfg = quickConfig(gradcompMethodQsgd);
      cfg.minElements = 1024;
      CpuWorld w(N, cfg);
      for (int step = 0; step < k.steps; ++step) {
        for (int b = 0; b < k.perStep; ++b) {
          Bufs& buf = all[(size_t)(k.moving ? step : 0) * k.perStep + b];
          const auto res = w.run([&](int r) {
            return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum,
                                     w.comm(r), nullptr);
          });
          for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << "rank " << r;
        }
      }
    }
    const std::string log = testing::internal::GetCapturedStderr();
    size_t warnings = 0;
    for (size_t at = log.find("is new at call"); at != std::string::npos;
         at = log.find("is new at call", at + 1)) {
      ++warnings;
    }
    EXPECT_EQ(warnings, k.warned ? (size_t)N : 0u) << log;
    if (k.warned) {
      EXPECT_NE(log.find("is new at call 1024 of this comm, which holds the states of 1024 other "
                         "buffers and has found none of them again (a step of this many calls, "
                         "or buffers that all move"),
                std::string::npos)
          << log;
    }
  }
}

// The CPU backend's SparseOps on the lists the GPU test
// ReliabilityGpu.MalformedSlotListsAreDroppedWhole gives the CUDA backend
// (tests/common/ref_slot_lists.h): every malformed list is dropped whole,
// the output equals the serial sum of the well-formed lists bit for bit and
// nothing past it is written, every call succeeds, and the dropped lists are
// counted, list by list and after checkReceived alike.
TEST(Reliability, CpuSparseOpsDropMalformedListsWhole) {
  const gctest::ref::RefSlotLists L = gctest::ref::refMalformedSlotLists();
  const size_t n = L.n, slots = L.slots, ranks = L.idx.size();
  for (size_t r = 0; r < ranks; ++r) {
    ASSERT_EQ(gctest::ref::refSlotListWellFormed(L.idx[r].data(), slots, n), L.wellFormed[r])
        << "rank " << r;
  }
  uint64_t rejectedPerRun = 0;
  const std::vector<float> want =
      gctest::ref::refSumWellFormedLists(L.idx, L.val, n, &rejectedPerRun);
  ASSERT_EQ(rejectedPerRun, 5u);
  // As the allgather receives them: one block of slots after another.
  std::vector<uint32_t> idx(ranks * slots);
  std::vector<float> val(ranks * slots);
  for (size_t r = 0; r < ranks; ++r) {
    std::copy(L.idx[r].begin(), L.idx[r].end(), idx.begin() + r * slots);
    std::copy(L.val[r].begin(), L.val[r].end(), val.begin() + r * slots);
  }
  std::unique_ptr<gc::SparseOps> ops = gc::makeCpuSparseOps();
  std::vector<float> out(n + 64);      // 64 guard floats after the n
  for (int rep = 0; rep < 4; ++rep) {  // list by list twice, then after checkReceived twice
    std::fill(out.begin(), out.end(), 0.0f);
    if (rep >= 2) {
      ASSERT_EQ(ops->checkReceived(idx.data(), slots * 4, (int)ranks, -1, slots, n),
                gradcompSuccess);
    }
    for (size_t r = 0; r < ranks; ++r) {
      ASSERT_EQ(ops->scatterAddReceived(idx.data() + r * slots, val.data() + r * slots,
                                        gc::DType::F32, slots, n, out.data(), (int)r),
                gradcompSuccess)
          << "run " << rep << " rank " << r << ": " << gradcompGetLastError();
    }
    ASSERT_EQ(ops->publishSelected(), gradcompSuccess);
    ASSERT_EQ(memcmp(out.data(), want.data(), n * 4), 0) << "run " << rep;
    for (size_t i = n; i < n + 64; ++i) ASSERT_EQ(out[i], 0.0f) << "guard " << i;
    EXPECT_EQ(ops->peerSlotsRejected(), rejectedPerRun * (rep + 1)) << "run " << rep;
  }
}

}  // namespace
