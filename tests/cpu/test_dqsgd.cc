// DQ-SGD (GRADCOMP_BITS_MODE=dynamic|budget) on the CPU backend: every rank
// picks the same b_t, and it is the policy's rule applied to the previous
// reduced result as the test computes it; the dynamic choice follows the
// shape of the gradient (max to norm per bucket) and ignores its magnitude;
// the budget choice follows the magnitude within the window budget; on a
// least-squares problem DQ-SGD reaches fixed 8-bit's loss within a stated
// margin while sending fewer bytes.
#include <gtest/gtest.h>
#include <math.h>
#include <string.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gradcomp.h"
#include "kernels/qsgd_math.cuh"
#include "plugin/codecs/bits_policy.h"
#include "tests/common/alloc_limit_backend.h"
#include "tests/common/cpu_world.h"
#include "tests/common/state_blob.h"
#include "tests/common/grad_stats_cases.h"
#include "tests/common/test_util.h"

namespace {

// The test's own statistics of a reduced result: A = sum_b len_b*max_b^2,
// G = ||x||^2.
gc::GradStats stats(const std::vector<float>& x, int d) {
  gc::GradStats st{0.0, 0.0};
  for (size_t b = 0; b * d < x.size(); ++b) {
    double m = 0;
    const size_t end = std::min(x.size(), (b + 1) * (size_t)d);
    for (size_t i = b * d; i < end; ++i) {
      m = std::max(m, (double)fabsf(x[i]));
      st.sumSq += (double)x[i] * x[i];
    }
    st.sumLenMaxSq += (double)(end - b * d) * m * m;
  }
  return st;
}

// The rule, from its statement: the fewest bits whose bound A/(4 s^2) is
// within target * G.
int expectedDynamic(const gc::GradStats& st, double target, int bmin, int bmax) {
  for (int b = bmin; b <= bmax; ++b) {
    const double s = (1 << (b - 1)) - 1;
    if (st.sumLenMaxSq / (4 * s * s) <= target * st.sumSq) return b;
  }
  return bmax;
}

// hostGradStats adds in the kernels' fixed order (kernels/grad_stats.h), not
// the plain one: every bucket and element counted once, so it differs from
// the test's plain sums only by rounding. Both add nonnegative terms, so each
// is within n*u relative (u = 2^-53) of the exact sum, and the two within
// 2*n*u of each other, for every size of the GPU test
// (tests/common/grad_stats_cases.h); an Inf makes both infinite.
TEST(DqsgdPolicy, HostStatisticsCountEveryBucketOnce) {
  for (const gctest::GradStatsCase& cs : gctest::kGradStatsCases) {
    SCOPED_TRACE(testing::Message() << "n=" << cs.n << " bucket=" << cs.bucket);
    std::vector<float> x = gctest::normal(cs.n, cs.n, 3.0f);
    const gc::GradStats got = gc::hostGradStats(x.data(), gc::DType::F32, cs.n, cs.bucket);
    const gc::GradStats want = stats(x, cs.bucket);
    const double tol = 2.0 * (double)cs.n * ldexp(1.0, -53);
    EXPECT_LE(fabs(got.sumSq - want.sumSq), tol * want.sumSq);
    EXPECT_LE(fabs(got.sumLenMaxSq - want.sumLenMaxSq), tol * want.sumLenMaxSq);
    x[cs.n / 2] = -INFINITY;
    const gc::GradStats inf = gc::hostGradStats(x.data(), gc::DType::F32, cs.n, cs.bucket);
    EXPECT_TRUE(isinf(inf.sumSq) && isinf(inf.sumLenMaxSq));
  }
}

// The budget policy's log2 (portableLog2: IEEE +, *, / only, the same bits
// on every machine) against the math library's: exact for powers of two and
// within 8 units in the last place of the result elsewhere (its roundings:
// m + 1, the division, the series' Horner steps on a sum within 2% of 1,
// two products and the exponent's add, each under one unit; the library's
// own log2 may be one off), over the whole range of positive finite doubles,
// denormals and values around 1 included.
TEST(DqsgdPolicy, PortableLog2MatchesLog2) {
  for (int e = -1074; e <= 1023; ++e) {
    const double x = ldexp(1.0, e);
    ASSERT_EQ(gc::portableLog2(x), (double)e) << "2^" << e;
  }
  std::mt19937_64 rng(2026);
  std::vector<double> xs = {nextafter(1.0, 0.0),
                            nextafter(1.0, 2.0),
                            0.70710678118654752,
                            nextafter(0.70710678118654752, 0.0),
                            1.4142135623730951,
                            3.0,
                            10.0,
                            1e-310,
                            1.7976931348623157e308,
                            4.9406564584124654e-324};
  std::uniform_real_distribution<double> frac(0.0, 1.0);
  for (int i = 0; i < 200000; ++i) {
    // Uniform in the exponent and in the mantissa's bits.
    const double m = 1.0 + frac(rng);
    xs.push_back(ldexp(m, (int)(rng() % 2046) - 1022));
  }
  for (int i = 0; i < 2000; ++i) xs.push_back(1.0 + (frac(rng) - 0.5) * 1e-6);
  double worst = 0;
  for (double x : xs) {
    const double want = log2(x), got = gc::portableLog2(x);
    const double ulp = nextafter(fabs(want), INFINITY) - fabs(want);
    const double err = fabs(got - want) / ulp;
    worst = std::max(worst, err);
    ASSERT_LE(err, 8.0) << "x=" << x << " log2=" << want << " portable=" << got;
  }
  RecordProperty("worst_ulps", std::to_string(worst));
}

TEST(DqsgdPolicy, DynamicBitsIsTheFewestMeetingTheBound) {
  for (double ratio : {0.0, 1.0, 3.9, 4.0, 9.5, 10.0, 50.0, 400.0, 1e4, 1e9}) {
    for (double target : {0.01, 0.05, 0.2}) {
      gc::GradStats st{ratio * 7.0, 7.0};
      const int b = gc::dynamicBits(st, target, 2, 8);
      ASSERT_GE(b, 2);
      ASSERT_LE(b, 8);
      const double s = gc::qsgd::levels(b);
      if (b < 8) ASSERT_LE(st.sumLenMaxSq / (4 * s * s), target * st.sumSq) << ratio;
      if (b > 2) {
        const double s1 = gc::qsgd::levels(b - 1);
        ASSERT_GT(st.sumLenMaxSq / (4 * s1 * s1), target * st.sumSq) << ratio;
      }
    }
  }
  EXPECT_EQ(gc::dynamicBits(gc::GradStats{1e9, 1.0}, 0.05, 3, 6), 6);  // none fits: the most
  EXPECT_EQ(gc::dynamicBits(gc::GradStats{1.0, 1.0}, 0.05, 4, 6), 4);  // never below bitsMin
}

// Windows of W calls spend at most B*W bits per element, whatever the
// gradients do; with a steady scale the choice is the budget itself.
TEST(DqsgdPolicy, BudgetWindowsNeverOverspend) {
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> logA(-20, 20);
  for (double budget : {2.0, 3.5, 4.0, 5.25, 8.0}) {
    for (int window : {1, 2, 7, 50}) {
      for (int bmin : {2, 3}) {
        if (budget < bmin) continue;
        gc::BudgetPolicy pol;
        int sum = 0;
        for (int t = 0; t < 20 * window; ++t) {
          gc::GradStats st{exp2(logA(rng)), 1.0};
          const int b = pol.choose(t == 0 ? nullptr : &st, budget, window, bmin, 8);
          ASSERT_GE(b, bmin);
          ASSERT_LE(b, 8);
          sum += b;
          if ((t + 1) % window == 0) {
            ASSERT_LE(sum, budget * window + 1e-9) << "budget=" << budget << " W=" << window;
            sum = 0;
          }
        }
      }
    }
  }
  gc::BudgetPolicy steady;
  const gc::GradStats st{1e6, 1.0};
  int total = 0;
  for (int t = 0; t < 40; ++t) total += steady.choose(&st, 3.5, 4, 2, 8);
  EXPECT_EQ(total, 40 * 3.5);  // the whole budget, no more, no less
}

// The bound is "within" the target (<=): at exact equality A = 4 t G s^2 the
// width is taken. Values exact in double: t = 1/4, G = 1 or t = 1/8, G = 2,
// so 4 t G = 1 and A = s^2, s = 2^(b-1) - 1 written out.
TEST(DqsgdPolicy, DynamicBitsTakesTheWidthAtExactlyTheBound) {
  const double s[9] = {0, 0, 1, 3, 7, 15, 31, 63, 127};
  for (int b = 2; b <= 8; ++b) {
    const double A = s[b] * s[b];
    EXPECT_EQ(gc::dynamicBits(gc::GradStats{A, 1.0}, 0.25, 2, 8), b) << "b=" << b;
    EXPECT_EQ(gc::dynamicBits(gc::GradStats{A, 2.0}, 0.125, 2, 8), b) << "b=" << b;
    // One ulp above the bound needs one bit more (bitsMax has no more).
    const int above = b < 8 ? b + 1 : 8;
    EXPECT_EQ(gc::dynamicBits(gc::GradStats{std::nextafter(A, 1e300), 1.0}, 0.25, 2, 8), above)
        << "b=" << b;
  }
}

// The budget rule from its statement (bits_policy.h), written out: target
// = (B*W - spent) / (calls left, this one included) + log2 sqrt(A_t) - the
// mean of log2 sqrt(A) over the last W statistics (A_t's included); rounded
// to nearest (halves up), clamped to [bitsMin, bitsMax], then capped so that
// every later call of the window can still take bitsMin.
struct RefBudget {
  std::vector<double> logs;  // log2(sqrt(A)) of every usable statistic so far
  int spent = 0, pos = 0;
  int choose(const gc::GradStats* st, double B, int W, int bmin, int bmax) {
    const int left = W - pos;
    const double remaining = B * W - spent;
    double target = remaining / left;
    if (st && std::isfinite(st->sumLenMaxSq) && std::isfinite(st->sumSq) && st->sumLenMaxSq > 0) {
      logs.push_back(0.5 * std::log2(st->sumLenMaxSq));
      const size_t from = logs.size() > (size_t)W ? logs.size() - W : 0;
      double mean = 0;
      for (size_t i = from; i < logs.size(); ++i) mean += logs[i];
      mean /= (double)(logs.size() - from);
      target += logs.back() - mean;
    }
    int b = (int)std::floor(target + 0.5);
    b = std::min(std::max(b, bmin), bmax);
    while (b > bmin && b + bmin * (left - 1) > remaining + 1e-9) --b;
    spent += b;
    if (++pos == W) pos = spent = 0;
    return b;
  }
};

// Known answers worked by hand, then the rule on random statistics.
TEST(DqsgdPolicy, BudgetChoiceFollowsTheStatedRule) {
  {
    // Steady scale, B = 3.5, W = 4: 14/4 = 3.5 rounds up to 4, then 10/3
    // -> 3, 7/2 = 3.5 -> 4, 3/1 -> 3.
    gc::BudgetPolicy pol;
    const gc::GradStats st{1e6, 1.0};
    std::vector<int> got;
    for (int t = 0; t < 8; ++t) got.push_back(pol.choose(t ? &st : nullptr, 3.5, 4, 2, 8));
    EXPECT_EQ(got, (std::vector<int>{4, 3, 4, 3, 4, 3, 4, 3}));
  }
  {
    // sqrt(A_t) doubling each call (A_t = 4^t), B = 4, W = 8: log2 sqrt(A_t)
    // = t. t=0 (no statistics): 32/8 = 4. t=1: 28/7 + (1 - 1) = 4. t=2:
    // 24/6 + (2 - 1.5) = 4.5 -> 5. t=3: 19/5 + (3 - 2) = 4.8 -> 5.
    gc::BudgetPolicy pol;
    std::vector<int> got;
    for (int t = 0; t < 4; ++t) {
      const gc::GradStats st{std::pow(4.0, t), 1.0};
      got.push_back(pol.choose(t ? &st : nullptr, 4.0, 8, 2, 8));
    }
    EXPECT_EQ(got, (std::vector<int>{4, 4, 5, 5}));
  }
  std::mt19937_64 rng(17);
  std::uniform_real_distribution<double> logA(-30, 30);
  for (double budget : {2.0, 3.5, 4.0, 5.25, 7.0}) {
    for (int window : {1, 3, 8, 20}) {
      for (int bmin : {2, 3}) {
        if (budget < bmin) continue;
        gc::BudgetPolicy pol;
        RefBudget ref;
        for (int t = 0; t < 10 * window; ++t) {
          const gc::GradStats st{std::exp2(logA(rng)), 1.0};
          const gc::GradStats* p = t == 0 ? nullptr : &st;
          ASSERT_EQ(pol.choose(p, budget, window, bmin, 8), ref.choose(p, budget, window, bmin, 8))
              << "budget=" << budget << " W=" << window << " bmin=" << bmin << " t=" << t;
        }
      }
    }
  }
}

struct WorldRun {
  std::vector<std::vector<int>> bits;   // [step][rank]
  std::vector<std::vector<float>> out;  // [step] rank 0's result
};

// Runs `steps` in-place Sum calls on N ranks; grad(step, rank) gives inputs.
WorldRun runWorld(const gradcompConfig_t& cfg, int N, size_t n, int steps,
                  const std::function<std::vector<float>(int, int)>& grad) {
  gctest::CpuWorld world(N, cfg);
  WorldRun run;
  // The same buffers every step: the state (and its DQ-SGD history) follows
  // the buffer's address.
  std::vector<std::vector<float>> buf(N, std::vector<float>(n));
  for (int step = 0; step < steps; ++step) {
    for (int r = 0; r < N; ++r) {
      const std::vector<float> g = grad(step, r);
      std::copy(g.begin(), g.end(), buf[r].begin());
    }
    auto res = world.run([&](int r) {
      return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum, world.comm(r),
                               nullptr);
    });
    std::vector<int> bits(N);
    for (int r = 0; r < N; ++r) {
      EXPECT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
      EXPECT_EQ(memcmp(buf[r].data(), buf[0].data(), n * 4), 0) << "rank " << r << " differs";
      gradcompStats_t st;
      EXPECT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
      bits[r] = st.bitsLast;
    }
    run.bits.push_back(bits);
    run.out.push_back(buf[0]);
  }
  // callsPerBits tallies the widths the calls used, as bitsLast gave them.
  for (int r = 0; r < N; ++r) {
    uint64_t tally[9] = {};
    for (const auto& b : run.bits) tally[b[r]]++;
    gradcompStats_t st;
    EXPECT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
    for (int b = 0; b < 9; ++b)
      EXPECT_EQ(st.callsPerBits[b], tally[b]) << "rank " << r << " bits " << b;
  }
  return run;
}

gradcompConfig_t dynamicConfig() {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 0;
  cfg.bucketSize = 128;
  cfg.bitsMode = gradcompBitsDynamic;
  cfg.bitsMin = 2;
  cfg.bitsMax = 8;
  cfg.varianceTarget = 0.05f;
  return cfg;
}

gradcompConfig_t budgetConfig(float budget, int window) {
  gradcompConfig_t cfg = dynamicConfig();
  cfg.bitsMode = gradcompBitsBudget;
  cfg.bitsBudget = budget;
  cfg.budgetWindow = window;
  cfg.autoTune = 0;
  return cfg;
}

// Gaussian, except: spiky steps put one element 100x in every bucket, and
// scaled steps multiply everything by 1000.
std::vector<float> shapedGrad(int step, int rank, size_t n, int d, bool spiky, float scale) {
  std::vector<float> g = gctest::normal(n, 1000 * step + rank);
  if (spiky) {
    for (size_t i = 7; i < n; i += d) g[i] = 100.0f * (rank % 2 ? -1.0f : 1.0f) * (1 + rank);
  }
  for (float& v : g) v *= scale;
  return g;
}

// All ranks take the same b_t, and it is the rule applied to the previous
// result: the first call takes cfg.bits. Two-shot, ring and the Elias
// allgather alike.
TEST(DqsgdCpu, AllRanksPickTheRuleOfThePreviousResult) {
  const size_t n = 5000;
  for (int variant = 0; variant < 3; ++variant) {
    SCOPED_TRACE(testing::Message() << "variant=" << variant);
    gradcompConfig_t cfg = dynamicConfig();
    cfg.bits = 3;
    if (variant == 1) cfg.algo = gradcompAlgoRing;
    if (variant == 2) cfg.elias = 1;
    const int N = 4, steps = 12;
    WorldRun run = runWorld(cfg, N, n, steps, [&](int step, int r) {
      return shapedGrad(step, r, n, cfg.bucketSize, step % 4 == 2, step >= 8 ? 1000.0f : 1.0f);
    });
    for (int step = 0; step < steps; ++step) {
      const int expect = step == 0 ? cfg.bits
                                   : expectedDynamic(stats(run.out[step - 1], cfg.bucketSize),
                                                     cfg.varianceTarget, 2, 8);
      for (int r = 0; r < N; ++r) {
        ASSERT_EQ(run.bits[step][r], expect) << "step " << step << " rank " << r;
      }
    }
  }
}

// The relative bound is scale-free: multiplying every gradient by 1000 keeps
// the choice; making each bucket's max stand out (spikes) raises it, and
// returning to Gaussian gradients lowers it again. Error feedback is off so
// that each step's result reflects that step's gradients only (with it, the
// residual of a 1000x phase spills into the next steps' results).
TEST(DqsgdCpu, DynamicFollowsTheShapeNotTheMagnitude) {
  gradcompConfig_t cfg = dynamicConfig();
  cfg.errorFeedback = 0;
  const size_t n = 8192;
  const int N = 2, steps = 16;
  WorldRun run = runWorld(cfg, N, n, steps, [&](int step, int r) {
    const bool spiky = step >= 8 && step < 12;
    return shapedGrad(step, r, n, cfg.bucketSize, spiky, step >= 4 && step < 8 ? 1000.0f : 1.0f);
  });
  std::vector<int> b(steps);
  for (int s = 0; s < steps; ++s) b[s] = run.bits[s][0];
  // b[s] reflects the result of step s-1.
  EXPECT_EQ(b[3], b[2]);
  EXPECT_EQ(b[5], b[3]) << "a 1000x larger gradient of the same shape must not change bits";
  EXPECT_EQ(b[7], b[3]);
  EXPECT_GT(b[9], b[7]) << "spiky buckets need more levels";
  EXPECT_EQ(b[11], b[9]);
  EXPECT_LT(b[13], b[11]);
  EXPECT_EQ(b[15], b[3]);
  printf("[ dqsgd ] dynamic bits per step:");
  for (int v : b) printf(" %d", v);
  printf("\n");
}

// Budget mode: each window of W calls averages at most the budget; a jump of
// the gradient's scale raises b_t at once, a drop lowers it.
TEST(DqsgdCpu, BudgetFollowsTheScaleWithinTheWindowBudget) {
  gradcompConfig_t cfg = dynamicConfig();
  cfg.bitsMode = gradcompBitsBudget;
  cfg.bitsBudget = 4.0f;
  cfg.budgetWindow = 10;
  const size_t n = 4096;
  const int N = 2, steps = 60;
  auto scaleAt = [](int step) { return step < 20 ? 1.0f : step < 40 ? 100.0f : 0.01f; };
  WorldRun run = runWorld(cfg, N, n, steps, [&](int step, int r) {
    return shapedGrad(step, r, n, cfg.bucketSize, false, scaleAt(step));
  });
  std::vector<int> b(steps);
  for (int s = 0; s < steps; ++s) {
    b[s] = run.bits[s][0];
    for (int r = 1; r < N; ++r) ASSERT_EQ(run.bits[s][r], b[s]);
  }
  for (int w = 0; w < steps / 10; ++w) {
    int sum = 0;
    for (int s = 10 * w; s < 10 * w + 10; ++s) sum += b[s];
    EXPECT_LE(sum, 40) << "window " << w;
  }
  EXPECT_EQ(b[19], 4) << "a steady scale spends exactly the budget";
  EXPECT_GT(b[21], b[19]) << "the first call after the jump to 100x";
  EXPECT_LT(b[41], b[39]) << "the first call after the drop to 0.01x";
  printf("[ dqsgd ] budget bits per step:");
  for (int v : b) printf(" %d", v);
  printf("\n");
}

// A call that fails on every rank after they chose its width (rank 1 cannot
// allocate its workspace; GRADCOMP_CHECK_CALLS's vote fails the others) is
// no call for the budget: the window, the history and lastBits stay as they
// were, so the retry and every later call choose what a run without the
// failure chose, bit for bit. A float budget (4.1f is 4.0999999) counts as
// the decimal it was given: each steady window of 10 spends 41 bits.
TEST(DqsgdCpu, AFailedCallLeavesTheBudgetWindowAsItWas) {
  gradcompConfig_t cfg = budgetConfig(4.1f, 10);
  cfg.checkCalls = 1;
  const size_t n = 4096;
  const int N = 2, steps = 24;
  auto grad = [&](int step, int r) { return shapedGrad(step, r, n, cfg.bucketSize, false, 1.0f); };
  const WorldRun want = runWorld(cfg, N, n, steps, grad);
  for (int w = 0; w + 10 <= steps; w += 10) {
    int sum = 0;
    for (int s = w; s < w + 10; ++s) sum += want.bits[s][0];
    EXPECT_EQ(sum, 41) << "window from step " << w;
  }

  gctest::CpuWorld world(N, cfg);
  auto shortRank =
      std::make_shared<gctest::AllocLimitBackend>(world.comm(1)->backend, size_t(1) << 40);
  world.comm(1)->backend = shortRank;
  std::vector<std::vector<float>> buf(N, std::vector<float>(n));
  auto call = [&](int step) {
    for (int r = 0; r < N; ++r) {  // into the same buffers: the state follows the address
      const std::vector<float> g = grad(step, r);
      std::copy(g.begin(), g.end(), buf[r].begin());
    }
    return world.run([&](int r) {
      return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum, world.comm(r),
                               nullptr);
    });
  };
  for (int step = 0; step < steps; ++step) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    if (step == 3) {
      // The buffer's state exists; a workspace no larger than n floats
      // would too: the next allocation is refused.
      shortRank->setBudget(shortRank->used());
      world.comm(1)->workspaceBytes = 0;  // so this call grows it
      for (gradcompResult_t rc : call(step)) ASSERT_NE(rc, gradcompSuccess);
      ASSERT_GT(shortRank->refused(), 0u);
      shortRank->setBudget(size_t(1) << 40);
    }
    for (gradcompResult_t rc : call(step)) ASSERT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
    gradcompStats_t st;
    ASSERT_EQ(gradcompGetStats(world.comm(0), &st), gradcompSuccess);
    EXPECT_EQ(st.bitsLast, want.bits[step][0]);
    EXPECT_EQ(buf[0], want.out[step]);
  }
}

// A state saved under one budget and loaded under another starts every
// window afresh: the bits its window spent under budget 6 would leave less
// than bitsMin per call under budget 3 (forcing 2 bits, and overspending the
// window). A steady gradient then gets the new budget at once. Under the
// same budget the window goes on where it was.
TEST(DqsgdCpu, ALoadUnderAnotherBudgetStartsTheWindowAfresh) {
  gradcompConfig_t cfg = budgetConfig(6.0f, 4);
  const size_t n = 4096;
  const int N = 2;
  std::vector<std::vector<float>> buf(N, std::vector<float>(n));
  auto call = [&](gctest::CpuWorld& w, int step) {
    for (int r = 0; r < N; ++r) buf[r] = shapedGrad(step, r, n, cfg.bucketSize, false, 1.0f);
    for (gradcompResult_t rc : w.run([&](int r) {
           return gradcompAllReduceKeyed(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum,
                                         w.comm(r), nullptr, 5);
         })) {
      EXPECT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
    }
    gradcompStats_t st;
    EXPECT_EQ(gradcompGetStats(w.comm(0), &st), gradcompSuccess);
    return st.bitsLast;
  };
  gctest::CpuWorld a(N, cfg);
  for (int step = 0; step < 6; ++step) call(a, step);  // mid-window: 2 calls of 4 made
  std::vector<std::vector<char>> blobs(N);
  for (int r = 0; r < N; ++r) {
    size_t bytes = 0;
    ASSERT_EQ(gradcompCommStateSize(a.comm(r), &bytes), gradcompSuccess);
    blobs[r].resize(bytes);
    ASSERT_EQ(gradcompCommSaveState(a.comm(r), blobs[r].data(), bytes), gradcompSuccess);
  }
  gradcompConfig_t lower = cfg;
  lower.bitsBudget = 3.0f;
  gctest::CpuWorld b(N, lower), same(N, cfg);
  for (int r = 0; r < N; ++r) {
    ASSERT_EQ(gradcompCommLoadState(b.comm(r), blobs[r].data(), blobs[r].size()), gradcompSuccess)
        << gradcompGetLastError();
    ASSERT_EQ(gradcompCommLoadState(same.comm(r), blobs[r].data(), blobs[r].size()),
              gradcompSuccess);
  }
  int spent = 0;
  for (int step = 6; step < 10; ++step) {
    const int bits = call(b, step);
    EXPECT_EQ(bits, 3) << "step " << step << ": a steady gradient gets the new budget";
    spent += bits;
  }
  EXPECT_EQ(spent, 12);
  // The same budget: the run continues bit for bit.
  for (int step = 6; step < 10; ++step) EXPECT_EQ(call(same, step), call(a, step));
}

// A budget-mode blob whose window spent more than the budget leaves for its
// other calls (at least bitsMin each, as the policy keeps it) is refused, as
// is one whose spent bits are outside bitsMin..bitsMax per call; the edge
// loads. The window's (used, pos) pair is found in the blob by its values.
TEST(DqsgdCpu, ALoadedBudgetWindowThatOverspendsIsRefused) {
  gradcompConfig_t cfg = budgetConfig(4.0f, 4);
  const size_t n = 4096;
  std::vector<std::vector<float>> buf(2);
  gctest::CpuWorld a(2, cfg);
  int used = 0;
  for (int step = 0; step < 6; ++step) {  // two calls into the second window
    for (int r = 0; r < 2; ++r) buf[r] = shapedGrad(step, r, n, cfg.bucketSize, false, 1.0f);
    for (gradcompResult_t rc : a.run([&](int r) {
           return gradcompAllReduceKeyed(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum,
                                         a.comm(r), nullptr, 5);
         }))
      ASSERT_EQ(rc, gradcompSuccess);
    gradcompStats_t st;
    ASSERT_EQ(gradcompGetStats(a.comm(0), &st), gradcompSuccess);
    if (step >= 4) used += st.bitsLast;
  }
  size_t bytes = 0;
  ASSERT_EQ(gradcompCommStateSize(a.comm(0), &bytes), gradcompSuccess);
  std::vector<uint8_t> blob(bytes);
  ASSERT_EQ(gradcompCommSaveState(a.comm(0), blob.data(), bytes), gradcompSuccess);
  const int32_t want[2] = {used, 2};
  // The history ends the buffer's record (the blob's last): searched from the
  // end, past the header's shape fields.
  size_t at = 0;
  for (size_t i = blob.size() - 8; i > 112 && at == 0; --i)
    if (memcmp(blob.data() + i, want, 8) == 0) at = i;
  ASSERT_NE(at, 0u) << "the window's (used " << used << ", pos 2) in the blob";
  auto load = [&](int32_t spent) {
    std::vector<uint8_t> b = blob;
    memcpy(b.data() + at, &spent, 4);
    gctest::reseal(b);
    gctest::CpuWorld w(2, cfg);
    return gradcompCommLoadState(w.comm(0), b.data(), b.size());
  };
  // 16 bits a window; two calls made, two left at bitsMin = 2 or more.
  EXPECT_EQ(load(12), gradcompSuccess) << gradcompGetLastError();
  EXPECT_EQ(load(13), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(),
                   "has spent 13 bits in 2 calls, leaving less than "
                   "bitsMin=2 for each of the window's 2 others"),
            nullptr)
      << gradcompGetLastError();
  EXPECT_EQ(load(3), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "outside bitsMin..bitsMax bits per call made"), nullptr)
      << gradcompGetLastError();
  // A blob that does not record its budget (shape field 15 zero: an older
  // build) may come from another budget: its overspent window starts afresh.
  const size_t budgetField = 48 + 15 * 4;
  const int32_t zero = 0;
  memcpy(blob.data() + budgetField, &zero, 4);
  EXPECT_EQ(load(13), gradcompSuccess) << gradcompGetLastError();
  EXPECT_EQ(load(3), gradcompInvalidArgument);
}

// Refused by the validator, not at the first call.
TEST(DqsgdCpu, BudgetBelowBitsMinIsRefused) {
  gradcompConfig_t cfg = dynamicConfig();
  cfg.bitsMode = gradcompBitsBudget;
  cfg.bitsMin = 5;
  cfg.bitsBudget = 4.0f;
  EXPECT_EQ(gradcompConfigValidate(&cfg), gradcompInvalidArgument);
  EXPECT_NE(
      strstr(gradcompGetLastError(), "bitsBudget=4 (GRADCOMP_BITS_BUDGET) is below bitsMin=5"),
      nullptr)
      << gradcompGetLastError();
  gradcompComm_t comms[2];
  EXPECT_EQ(gradcompCommCreateCpu(2, &cfg, comms), gradcompInvalidArgument);
}

// The dynamic rule's two special cases, at the comm: a zero result
// quantizes exactly at any width, so the next call takes bitsMin (not
// cfg.bits); a non-finite result says nothing about the next gradient, so
// the next call keeps the width of the call that produced it (not cfg.bits,
// which only the first call takes). cfg.bits = 6 differs from both.
TEST(DqsgdCpu, ZeroResultTakesBitsMinNonFiniteResultKeepsTheLastWidth) {
  gradcompConfig_t cfg = dynamicConfig();
  cfg.bits = 6;
  cfg.errorFeedback = 0;  // each result is that step's gradients alone
  const size_t n = 4096;
  const int N = 2, steps = 5;
  // 0: zeros. 1, 2: Gaussian. 3: Gaussian with a NaN on rank 1. 4: Gaussian.
  WorldRun run = runWorld(cfg, N, n, steps, [&](int step, int r) {
    if (step == 0) return std::vector<float>(n, 0.0f);
    std::vector<float> g = shapedGrad(step, r, n, cfg.bucketSize, false, 1.0f);
    if (step == 3 && r == 1) g[100] = NAN;
    return g;
  });
  for (int s = 0; s < steps; ++s) {
    for (int r = 1; r < N; ++r) ASSERT_EQ(run.bits[s][r], run.bits[s][0]) << "step " << s;
  }
  ASSERT_FALSE(isfinite(run.out[3][100])) << "step 3's result is not finite";
  EXPECT_EQ(run.bits[0][0], 6) << "the first call takes cfg.bits";
  EXPECT_EQ(run.bits[1][0], 2) << "after a zero result: bitsMin";
  const int b2 = expectedDynamic(stats(run.out[1], cfg.bucketSize), cfg.varianceTarget, 2, 8);
  const int b3 = expectedDynamic(stats(run.out[2], cfg.bucketSize), cfg.varianceTarget, 2, 8);
  ASSERT_NE(b3, 6) << "the test needs a width other than cfg.bits before the NaN";
  EXPECT_EQ(run.bits[2][0], b2);
  EXPECT_EQ(run.bits[3][0], b3);
  EXPECT_EQ(run.bits[4][0], b3) << "after a non-finite result: the last width";
}

// ---- convergence: least squares, 4 ranks, plain SGD on full local batches

struct LeastSquares {
  int ranks = 4, rows = 512, dim = 1024;  // rows per rank
  std::vector<std::vector<float>> A, y;   // per rank, row-major
  LeastSquares() {
    std::vector<float> xs = gctest::normal(dim, 1);
    for (int r = 0; r < ranks; ++r) {
      A.push_back(gctest::normal((size_t)rows * dim, 10 + r));
      std::vector<float> noise = gctest::normal(rows, 20 + r, 0.1f);
      std::vector<float> yr(rows);
      for (int i = 0; i < rows; ++i) {
        double v = noise[i];
        for (int k = 0; k < dim; ++k) v += (double)A[r][(size_t)i * dim + k] * xs[k];
        yr[i] = (float)v;
      }
      y.push_back(yr);
    }
  }
  // Local gradient (1/rows) A_r^T (A_r x - y_r).
  void grad(int r, const std::vector<float>& x, std::vector<float>* g) const {
    std::vector<double> acc(dim, 0.0);
    for (int i = 0; i < rows; ++i) {
      const float* a = &A[r][(size_t)i * dim];
      double res = -y[r][i];
      for (int k = 0; k < dim; ++k) res += (double)a[k] * x[k];
      for (int k = 0; k < dim; ++k) acc[k] += res * a[k];
    }
    for (int k = 0; k < dim; ++k) (*g)[k] = (float)(acc[k] / rows);
  }
  double loss(const std::vector<float>& x) const {
    double l = 0;
    for (int r = 0; r < ranks; ++r) {
      for (int i = 0; i < rows; ++i) {
        double res = -y[r][i];
        for (int k = 0; k < dim; ++k) res += (double)A[r][(size_t)i * dim + k] * x[k];
        l += res * res;
      }
    }
    return l / (2.0 * ranks * rows);
  }
};

struct Trained {
  double loss;
  uint64_t bytesOnWire;
  std::vector<int> bits;
};

Trained train(const LeastSquares& p, const gradcompConfig_t& cfg, int steps, float lr) {
  gctest::CpuWorld world(p.ranks, cfg);
  std::vector<std::vector<float>> x(p.ranks, std::vector<float>(p.dim, 0.0f));
  std::vector<int> bits;
  auto res = world.run([&](int r) {
    std::vector<float> g(p.dim);
    for (int t = 0; t < steps; ++t) {
      p.grad(r, x[r], &g);
      gradcompResult_t e = gradcompAllReduce(g.data(), g.data(), p.dim, ncclFloat32, ncclAvg,
                                             world.comm(r), nullptr);
      if (e != gradcompSuccess) return e;
      for (int k = 0; k < p.dim; ++k) x[r][k] -= lr * g[k];
      if (r == 0) {
        gradcompStats_t st;
        gradcompGetStats(world.comm(0), &st);
        bits.push_back(st.bitsLast);
      }
    }
    return gradcompSuccess;
  });
  for (auto e : res) EXPECT_EQ(e, gradcompSuccess) << gradcompGetLastError();
  for (int r = 1; r < p.ranks; ++r) EXPECT_EQ(x[r], x[0]) << "rank " << r << " diverged";
  gradcompStats_t st;
  EXPECT_EQ(gradcompGetStats(world.comm(0), &st), gradcompSuccess);
  return Trained{p.loss(x[0]), st.bytesOnWire, bits};
}

// Margin, stated before running: after the same number of steps DQ-SGD
// (variance target 0.05) is within 1% of fixed 8-bit's loss, L_dq <= 1.01 L_8,
// and sends fewer bytes in total. (The uncompressed run is printed for
// reference; the noise floor of this problem is about 0.0025.)
TEST(DqsgdCpu, LeastSquaresReachesFixed8BitLossWithFewerBytes) {
  const LeastSquares p;
  const int steps = 150;
  const float lr = 1.0f / 3.0f;  // below 2/L, L ~ (1 + sqrt(dim/(ranks*rows)))^2 ~ 2.9
  const double l0 = p.loss(std::vector<float>(p.dim, 0.0f));

  gradcompConfig_t fixed8 = dynamicConfig();
  fixed8.bitsMode = gradcompBitsFixed;
  fixed8.bits = 8;
  gradcompConfig_t dq = dynamicConfig();
  dq.bits = 8;  // the first call, before any statistics
  const Trained a = train(p, fixed8, steps, lr);
  const Trained b = train(p, dq, steps, lr);
  gradcompConfig_t exact = fixed8;
  exact.method = gradcompMethodNone;
  const Trained c = train(p, exact, steps, lr);
  double meanBits = 0;
  for (int v : b.bits) meanBits += v;
  meanBits /= b.bits.size();
  printf(
      "[ dqsgd ] least squares, %d steps: L0=%.5g  uncompressed L=%.6g  fixed-8 L=%.6g "
      "bytes=%llu  DQ-SGD L=%.6g bytes=%llu (mean %.2f bits, %.1f%% of the bytes)\n",
      steps, l0, c.loss, a.loss, (unsigned long long)a.bytesOnWire, b.loss,
      (unsigned long long)b.bytesOnWire, meanBits, 100.0 * b.bytesOnWire / a.bytesOnWire);
  EXPECT_LT(a.loss, 0.01 * l0) << "the problem itself must converge";
  EXPECT_LE(b.loss, 1.01 * a.loss);
  EXPECT_LT(b.bytesOnWire, a.bytesOnWire);
  EXPECT_LT(meanBits, 8.0);
}

}  // namespace
