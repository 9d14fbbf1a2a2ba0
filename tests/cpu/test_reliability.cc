// Bad input against the public API on the CPU backend (issue 16): every
// case must end in a clear error on every rank, nothing written out of
// bounds, and a comm that keeps working afterwards.
#include <gtest/gtest.h>
#include <string.h>

#include <vector>

#include "tests/common/cpu_world.h"
#include "tests/common/guarded.h"
#include "tests/common/test_util.h"
#include "gradcomp.h"

namespace {

using gctest::CpuWorld;
using gctest::GuardedBuffer;

gradcompConfig_t quickConfig(gradcompMethod_t method) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = method;
  cfg.minElements = 1024;
  cfg.density = 0.01f;
  cfg.cpuTimeoutSec = 2.0f;
  return cfg;
}

// Defect 4: rank 1 fails before the collective; rank 0 times out. Every
// later correct call must work on every rank.
TEST(Reliability, CpuWorldRecoversAfterTimeout) {
  for (gradcompMethod_t m : {gradcompMethodNone, gradcompMethodQsgd, gradcompMethodTopk}) {
    gradcompConfig_t cfg = quickConfig(m);
    cfg.cpuTimeoutSec = 0.2f;
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

}  // namespace
