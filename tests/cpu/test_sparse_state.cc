// Checkpointing the sparse methods' state: residuals (and DGC's momentum)
// saved from one CPU world and loaded into a fresh one make the fresh world
// continue exactly as the original, bit for bit.
#include <gtest/gtest.h>

#include <vector>

#include "gradcomp.h"
#include "tests/common/cpu_world.h"
#include "tests/common/test_util.h"

namespace {

// warmupSteps: DGC's warm-up follows each buffer's call count, which the
// blob carries: a resumed comm stays in the ramp's stage (0.25 for calls 0-1,
// 0.0625 for 2-3 at W = 8) instead of starting it again.
void checkContinues(gradcompMethod_t method, int warmupSteps = 0) {
  SCOPED_TRACE(testing::Message() << "method " << method << " warmupSteps " << warmupSteps);
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = method;
  cfg.minElements = 0;
  cfg.density = 0.01f;
  cfg.momentumCorrection = 1;
  cfg.momentumMasking = 1;
  cfg.clipNorm = method == gradcompMethodDgc ? 40.0f : 0.0f;
  cfg.warmupSteps = warmupSteps;
  const int N = 3;
  const size_t n = 5000;
  gctest::CpuWorld a(N, cfg), b(N, cfg);
  std::vector<std::vector<float>> bufA(N), bufB(N);
  auto step = [&](gctest::CpuWorld& w, std::vector<std::vector<float>>& buf, int t) {
    for (int r = 0; r < N; ++r) buf[r] = gctest::normal(n, 70 + 10 * t + r);
    auto res = w.run([&](int r) {
      return gradcompAllReduceKeyed(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum,
                                    w.comm(r), nullptr, 5);
    });
    for (auto rc : res) ASSERT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
  };
  for (int t = 0; t < 3; ++t) step(a, bufA, t);
  for (int r = 0; r < N; ++r) {
    size_t bytes = 0;
    ASSERT_EQ(gradcompCommStateSize(a.comm(r), &bytes), gradcompSuccess);
    // Residual, plus momentum for DGC, of n floats each.
    EXPECT_GE(bytes, (method == gradcompMethodDgc ? 2 : 1) * n * sizeof(float));
    std::vector<char> blob(bytes);
    ASSERT_EQ(gradcompCommSaveState(a.comm(r), blob.data(), bytes), gradcompSuccess);
    ASSERT_EQ(gradcompCommLoadState(b.comm(r), blob.data(), bytes), gradcompSuccess)
        << gradcompGetLastError();
  }
  for (int t = 3; t < 6; ++t) {
    step(a, bufA, t);
    step(b, bufB, t);
    for (int r = 0; r < N; ++r) ASSERT_EQ(bufA[r], bufB[r]) << "rank " << r << " step " << t;
    gradcompStats_t sa, sb;
    ASSERT_EQ(gradcompGetStats(a.comm(0), &sa), gradcompSuccess);
    ASSERT_EQ(gradcompGetStats(b.comm(0), &sb), gradcompSuccess);
    EXPECT_EQ(sb.targetLast, sa.targetLast) << "step " << t;
  }
  // A world that did not load the state diverges: the test can tell.
  gctest::CpuWorld c(N, cfg);
  std::vector<std::vector<float>> bufC(N);
  step(c, bufC, 6);
  step(a, bufA, 6);
  EXPECT_NE(bufA[0], bufC[0]);
}

TEST(SparseStateCpu, SaveLoadContinuesExactly) {
  for (gradcompMethod_t m : {gradcompMethodTopk, gradcompMethodDgc, gradcompMethodRandk}) {
    checkContinues(m);
  }
  checkContinues(gradcompMethodDgc, 8);
}

}  // namespace
