// QSGD square levels (GRADCOMP_LEVELS=square): level k of s stands for
// (k/s)^2 of the bucket's max |v|. The host codec follows the serial rule
// (ref::encSquare) for every type, width, bucket and rounding; each finite,
// non-zero bucket's scale is stored with its sign bit set and every decoder
// reads the table from it; stochastic rounding is unbiased with the exact
// per-element variance (t_k+1 - r)(r - t_k) scale^2; nearest rounding errs by
// at most half the local step; error feedback keeps what was not sent. The
// config refuses what does not support it (DQ-SGD bit modes, Elias).
#include <gtest/gtest.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <string>
#include <vector>

#include "gradcomp.h"
#include "gradcomp/reference.h"
#include "kernels/qsgd_math.cuh"
#include "plugin/codecs/qsgd.h"
#include "tests/common/qsgd_setting_checks.h"
#include "tests/common/ref_algos.h"
#include "tests/common/test_util.h"

namespace {

using gc::DType;
using gctest::ref::encSquare;
using gctest::ref::squareValue;

std::vector<uint8_t> encodeSquare(const void* x, DType t, float* res, size_t n, int bits, int d,
                                  uint64_t key, bool nearest) {
  std::vector<uint8_t> out(gradcompQsgdEncodedBytes(n, bits, d) + 1, 0xAB);
  gc::host::qsgdEncode(x, t, res, n, bits, d, key, nearest, true, out.data());
  EXPECT_EQ(out.back(), 0xAB) << "encoder wrote past encodedBytes";
  out.pop_back();
  return out;
}

std::vector<float> decodeAll(const std::vector<uint8_t>& e, size_t n, int bits, int d) {
  std::vector<float> out(n);
  EXPECT_EQ(gradcompQsgdDecodeHost(e.data(), n, bits, d, out.data(), 0), gradcompSuccess);
  return out;
}

float storedScale(const std::vector<uint8_t>& e, size_t b) {
  float f;
  memcpy(&f, e.data() + 4 * b, 4);
  return f;
}

// A bucket whose max is s^2 (so u = |x| exactly): nearest levels on
// hand-picked values, ties (u - k^2 exactly half of 2k + 1) rounding down;
// the stored scale is -s^2 and each value decodes to sign * k^2 / s^2 * s^2.
TEST(SquareLevels, HandPickedNearestLevelsAndTies) {
  const int bits = 4, s = gc::qsgd::levels(bits), d = 32;
  ASSERT_EQ(s, 7);
  struct Case {
    float x;
    int level;
  } cases[] = {{49.0f, 7}, {4.0f, 2},  {6.0f, 2},   {6.5f, 2},   {6.75f, 3}, {0.5f, 0},
               {0.51f, 1}, {48.0f, 7}, {42.5f, 6},  {42.6f, 7},  {-9.0f, 3}, {15.99f, 4},
               {16.0f, 4}, {1.0f, 1},  {0.0f, 0},   {-0.49f, 0}, {-2.5f, 1}, {2.51f, 2},
               {36.0f, 6}, {30.5f, 5}, {30.51f, 6}, {24.9f, 5}};
  std::vector<float> x(d, 0.0f);
  const size_t nc = sizeof(cases) / sizeof(cases[0]);
  for (size_t i = 0; i < nc; ++i) x[i] = cases[i].x;
  auto e = encodeSquare(x.data(), DType::F32, nullptr, d, bits, d, 99, true);
  ASSERT_EQ(storedScale(e, 0), -49.0f);
  const uint32_t* words = reinterpret_cast<const uint32_t*>(e.data() + 4);
  const auto out = decodeAll(e, d, bits, d);
  for (size_t i = 0; i < nc; ++i) {
    const uint32_t code = gc::qsgd::getCode(words, i, bits);
    const int k = (int)(code & (uint32_t)s);
    EXPECT_EQ(k, cases[i].level) << "x=" << cases[i].x;
    const bool neg = cases[i].level != 0 && cases[i].x < 0;
    EXPECT_EQ((code >> (bits - 1)) & 1u, neg ? 1u : 0u) << "x=" << cases[i].x;
    EXPECT_NEAR(out[i], (neg ? -1 : 1) * (float)(k * k), 1e-5f) << "x=" << cases[i].x;
  }
}

// Random inputs of every type, width and bucket (block and warp sizes,
// awkward counts), with and without a residual, both roundings: the
// library's bytes and residual are the serial rule's, and its draws follow
// the key (stochastic) or ignore it (nearest).
TEST(SquareLevels, CodesAndResidualFollowTheRule) {
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (int bits : {2, 3, 4, 5, 6, 7, 8})
      for (int d : {32, 96, 128, 512, 1024})
        for (int nearest = 0; nearest <= 1; ++nearest)
          for (bool ef : {false, true}) {
            SCOPED_TRACE(testing::Message() << "dtype=" << (int)t << " bits=" << bits << " d=" << d
                                            << " nearest=" << nearest << " ef=" << ef);
            const size_t n = 3 * (size_t)d + 17;
            std::vector<float> f = gctest::normal(n, bits * 31 + d + nearest);
            // A bucket of zeros and one with a max of exactly s^2, whose
            // entries sit on levels and between them.
            const int s = gc::qsgd::levels(bits);
            for (size_t i = 0; i < (size_t)d; ++i) f[i] = 0.0f;
            for (size_t i = d; i < 2 * (size_t)d; ++i) {
              const float k = (float)((i - d) % s);
              f[i] = (i % 2 ? -1.0f : 1.0f) * (i % 3 ? k * k : k * k + k + 0.5f);
            }
            f[d] = (float)(s * s);
            std::vector<uint16_t> h(n);
            for (size_t i = 0; i < n; ++i)
              h[i] = t == DType::F16 ? gc::floatToHalf(f[i]) : gc::floatToBf16(f[i]);
            const void* x = t == DType::F32 ? (const void*)f.data() : (const void*)h.data();
            const std::vector<float> r0 =
                ef ? gctest::normal(n, 17 + d, 0.1f) : std::vector<float>(n);
            for (uint64_t key : {1ull, 0xdeadbeefcafef00dull}) {
              std::vector<float> rRef = r0, r = r0;
              std::vector<uint8_t> want(gradcompQsgdEncodedBytes(n, bits, d));
              encSquare(x, t, ef ? rRef.data() : nullptr, n, bits, d, key, nearest != 0,
                        want.data());
              auto got = encodeSquare(x, t, ef ? r.data() : nullptr, n, bits, d, key, nearest);
              ASSERT_EQ(got, want) << "key " << key;
              ASSERT_EQ(memcmp(r.data(), rRef.data(), n * 4), 0) << "residual, key " << key;
              // The public entry point is the same encode.
              std::vector<float> rp = r0;
              std::vector<uint8_t> pub(want.size());
              ASSERT_EQ(gradcompQsgdEncodeEFLevelsHost(
                            x, gctest::ref::nccl(t), ef ? rp.data() : nullptr, n, bits, d, key,
                            nearest ? gradcompRoundNearest : gradcompRoundStochastic,
                            gradcompLevelsSquare, pub.data()),
                        gradcompSuccess)
                  << gradcompGetLastError();
              ASSERT_EQ(pub, want);
              ASSERT_EQ(memcmp(rp.data(), rRef.data(), n * 4), 0);
            }
            // The marks: a zero bucket keeps +0, every other is marked.
            auto e = encodeSquare(x, t, nullptr, n, bits, d, 1, nearest);
            EXPECT_EQ(gc::floatToBits(storedScale(e, 0)), 0u);
            for (size_t b = 1; b < 4; ++b) EXPECT_TRUE(signbit(storedScale(e, b))) << b;
            if (t == DType::F32) EXPECT_EQ(storedScale(e, 1), -(float)(s * s));
            // Stochastic draws follow the key; nearest ignores it.
            auto e2 = encodeSquare(x, t, nullptr, n, bits, d, 2, nearest);
            if (nearest) {
              EXPECT_EQ(e, e2);
            } else {
              EXPECT_NE(e, e2);
            }
          }
}

// The uniform encode of the same input differs (so the comparisons above can
// tell the tables apart), and the decoder picks the table per bucket from
// the mark: flipping one bucket's sign bit turns just that bucket's values
// into the square table's, the others untouched.
TEST(SquareLevels, DecoderReadsTheTableFromEachBucketsMark) {
  const int bits = 4, d = 64;
  const size_t n = 4 * d;
  const std::vector<float> x = gctest::normal(n, 5);
  std::vector<uint8_t> uni(gradcompQsgdEncodedBytes(n, bits, d));
  ASSERT_EQ(gradcompQsgdEncodeEFLevelsHost(x.data(), ncclFloat32, nullptr, n, bits, d, 3,
                                           gradcompRoundNearest, gradcompLevelsUniform, uni.data()),
            gradcompSuccess);
  auto sq = encodeSquare(x.data(), DType::F32, nullptr, n, bits, d, 3, true);
  ASSERT_NE(uni, sq);
  const auto before = decodeAll(uni, n, bits, d);
  std::vector<uint8_t> marked = uni;
  marked[4 * 2 + 3] |= 0x80;  // bucket 2's scale, little-endian: its sign bit
  const auto after = decodeAll(marked, n, bits, d);
  const uint32_t* words = reinterpret_cast<const uint32_t*>(uni.data() + 4 * 4);
  const float scale = storedScale(uni, 2);
  for (size_t i = 0; i < n; ++i) {
    if (i / d != 2) {
      ASSERT_EQ(gc::floatToBits(after[i]), gc::floatToBits(before[i])) << i;
    } else {
      ASSERT_EQ(after[i], squareValue(gc::qsgd::getCode(words, i, bits), scale, bits)) << i;
    }
  }
  // Accumulating decode reads the marks too.
  std::vector<float> acc(n, 1.0f);
  ASSERT_EQ(gradcompQsgdDecodeHost(sq.data(), n, bits, d, acc.data(), 1), gradcompSuccess);
  const auto sqOut = decodeAll(sq, n, bits, d);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(acc[i], 1.0f + sqOut[i]) << i;
}

// Non-finite buckets: the scale stays the canonical NaN (unmarked), every
// value decodes to NaN and the residual keeps its value; finite buckets
// beside them are coded as usual.
TEST(SquareLevels, NonFiniteBucketsStayUnmarkedAndKeepTheirResidual) {
  const int bits = 4, d = 32;
  const size_t n = 3 * d;
  std::vector<float> x = gctest::normal(n, 11);
  x[d + 5] = NAN;
  x[2 * d + 1] = INFINITY;
  std::vector<float> r(n, 0.25f);
  auto e = encodeSquare(x.data(), DType::F32, r.data(), n, bits, d, 7, false);
  EXPECT_TRUE(signbit(storedScale(e, 0)));
  EXPECT_TRUE(isnan(storedScale(e, 1)));
  EXPECT_FALSE(signbit(storedScale(e, 1)));
  EXPECT_TRUE(isinf(storedScale(e, 2)) && !signbit(storedScale(e, 2)));
  const auto out = decodeAll(e, n, bits, d);
  for (size_t i = d; i < n; ++i) {
    EXPECT_TRUE(isnan(out[i])) << i;
    EXPECT_EQ(r[i], 0.25f) << i;
  }
  for (size_t i = 0; i < (size_t)d; ++i) EXPECT_TRUE(isfinite(out[i])) << i;
}

// The two-point law of one element: levels lo <= |v| <= hi (values), the
// draw rounding up with probability p = (|v| - lo) / (hi - lo).
struct TwoPoint {
  double lo, hi, p;
};
TwoPoint bracket(float v, float scale, int s) {
  const double a = fabs((double)v);
  int k = 0;
  while (k < s && (double)gc::qsgd::squareLevelValue(k + 1, s) * scale <= a) ++k;
  const double lo = (double)gc::qsgd::squareLevelValue(k, s) * scale;
  const double hi = k < s ? (double)gc::qsgd::squareLevelValue(k + 1, s) * scale : lo;
  return TwoPoint{lo, hi, hi > lo ? (a - lo) / (hi - lo) : 0.0};
}

// Stochastic rounding is unbiased with the exact per-element variance
// var_i = (hi - |v|)(|v| - lo) (= (t_k+1 - r)(r - t_k) scale^2). Over K keys:
// - unbiased: Z_i = (mean_i - v_i) / sqrt(var_i / K), sum Z_i^2 has mean m
//   (elements with var_i > 0) and variance sum (2 + kappa_i / K), kappa_i the
//   Bernoulli excess kurtosis (1 - 6p(1-p)) / (p(1-p)): within 6 of its sd;
// - the variance: S = sum of squared errors has mean K sum var_i and
//   variance K sum (E e^4 - var_i^2): within 6 of its sd.
// A draw with the uniform table's fractions, or any other fraction, moves
// the mean of each element by a share of a step and fails the first.
TEST(SquareLevels, StochasticIsUnbiasedWithTheExactVariance) {
  const int K = 200;
  for (int bits : {2, 3, 4, 8})
    for (int d : {128, 512})
      for (int kind = 0; kind < 2; ++kind) {
        SCOPED_TRACE(testing::Message() << "bits=" << bits << " d=" << d << " kind=" << kind);
        const int s = gc::qsgd::levels(bits);
        const size_t n = 4 * (size_t)d;
        std::vector<float> x = gctest::normal(n, 100 * bits + d + kind);
        if (kind == 1) {
          for (float& v : x) v = fmodf(fabsf(v) * 1000.0f, 2.0f) - 1.0f;  // roughly uniform
        }
        std::vector<double> sum(n, 0.0), sumSq(n, 0.0);
        std::vector<float> scales(n / d);
        for (int k = 0; k < K; ++k) {
          auto e = encodeSquare(x.data(), DType::F32, nullptr, n, bits, d, 1000 + k, false);
          const auto out = decodeAll(e, n, bits, d);
          for (size_t i = 0; i < n; ++i) {
            const double err = (double)out[i] - x[i];
            sum[i] += out[i];
            sumSq[i] += err * err;
          }
          for (size_t b = 0; b < n / d; ++b) scales[b] = fabsf(storedScale(e, b));
        }
        double chi2 = 0, chi2Var = 0, S = 0, meanS = 0, varS = 0;
        size_t m = 0;
        for (size_t i = 0; i < n; ++i) {
          const TwoPoint tp = bracket(x[i], scales[i / d], s);
          const double a = fabs((double)x[i]);
          const double var = (tp.hi - a) * (a - tp.lo);
          S += sumSq[i];
          // On a level (the bucket's max): no randomness to test.
          if (!(var > 0)) continue;
          const double pq = tp.p * (1 - tp.p);
          const double mean = sum[i] / K;
          chi2 += (mean - x[i]) * (mean - x[i]) / (var / K);
          chi2Var += 2 + (1 - 6 * pq) / pq / K;
          ++m;
          const double e4 = (1 - tp.p) * pow(a - tp.lo, 4) + tp.p * pow(tp.hi - a, 4);
          meanS += K * var;
          varS += K * (e4 - var * var);
        }
        ASSERT_GT(m, n / 2);
        EXPECT_LE(fabs(chi2 - (double)m), 6 * sqrt(chi2Var)) << "chi2=" << chi2 << " m=" << m;
        EXPECT_LE(fabs(S - meanS), 6 * sqrt(varS)) << "S/E[S]=" << S / meanS;
      }
}

// What square levels change: on Gaussian buckets the error relative to each
// entry, sum of var_i / v_i^2 (what a per-coordinate optimizer such as Adam
// sees; from the two laws, no sampling), is several times lower than the
// uniform levels' (7x at 4 bits; asserted: 2x), because the small entries
// get the fine steps. (The total squared error, sum of var_i, stays about
// the same: 0.93 to 1.10 of uniform's here; printed, not asserted.) At
// 2 bits (s = 1) the two tables are the same, and so are the values.
TEST(SquareLevels, SameTotalButLowerRelativeErrorOnGaussianBuckets) {
  for (int bits : {3, 4, 8})
    for (int d : {128, 512}) {
      SCOPED_TRACE(testing::Message() << "bits=" << bits << " d=" << d);
      const int s = gc::qsgd::levels(bits);
      const size_t n = 64 * (size_t)d;
      const std::vector<float> x = gctest::normal(n, 31 + bits + d);
      double vSq = 0, vUni = 0, relSq = 0, relUni = 0;
      for (size_t b = 0; b < n / d; ++b) {
        float scale = 0;
        for (size_t i = b * d; i < (b + 1) * d; ++i) scale = fmaxf(scale, fabsf(x[i]));
        for (size_t i = b * d; i < (b + 1) * d; ++i) {
          const double a = fabs((double)x[i]);
          const TwoPoint tp = bracket(x[i], scale, s);
          const double r = a / scale * s, lo = floor(r);
          const double sq = (tp.hi - a) * (a - tp.lo);
          const double uni = (lo + 1 - r) * (r - lo) * (scale / s) * (scale / s);
          vSq += sq, vUni += uni, relSq += sq / (a * a), relUni += uni / (a * a);
        }
      }
      EXPECT_LT(relSq, 0.5 * relUni) << "relative ratio " << relSq / relUni;
      printf("bits=%d d=%d: square/uniform total squared error %.3f, relative error %.3f\n", bits,
             d, vSq / vUni, relSq / relUni);
    }
  const size_t n = 1000;
  const std::vector<float> x = gctest::normal(n, 8);
  for (int nearest = 0; nearest <= 1; ++nearest) {
    std::vector<uint8_t> uni(gradcompQsgdEncodedBytes(n, 2, 64));
    ASSERT_EQ(
        gradcompQsgdEncodeEFLevelsHost(x.data(), ncclFloat32, nullptr, n, 2, 64, 5,
                                       nearest ? gradcompRoundNearest : gradcompRoundStochastic,
                                       gradcompLevelsUniform, uni.data()),
        gradcompSuccess);
    const auto sq = encodeSquare(x.data(), DType::F32, nullptr, n, 2, 64, 5, nearest != 0);
    ASSERT_NE(uni, sq) << "the square encode marks its scales";
    const auto a = decodeAll(uni, n, 2, 64), b = decodeAll(sq, n, 2, 64);
    ASSERT_EQ(memcmp(a.data(), b.data(), n * 4), 0) << "2 bits: the same levels";
  }
}

// Nearest rounding: |decode - v| <= half the step around |v| (to a few fp32
// roundings of the scale), and v = decode + new residual to fp32 rounding.
TEST(SquareLevels, NearestHalfStepBoundAndErrorFeedbackInvariant) {
  gctest::expectNearestBoundAndErrorFeedback(
      10,
      [](const float* g, float* r, size_t n, int bits, int d, int step) {
        return encodeSquare(g, DType::F32, r, n, bits, d, step, true);
      },
      decodeAll,
      [](const std::vector<uint8_t>& e, size_t i, float v, int s, int d) {
        const float scale = fabsf(storedScale(e, i / d));
        const TwoPoint tp = bracket(v, scale, s);
        return (tp.hi - tp.lo) / 2 + 4e-7 * scale;
      });
}

// ---- the level math alone

// Every level boundary exactly: u = k^2 gives k whatever the draw below 1
// would add (frac 0), just below it gives k - 1 at draw 1; every u between
// brackets its level's square; both widths' extremes.
TEST(SquareLevels, LevelOfUIsExactAtEveryBoundary) {
  for (int bits = 2; bits <= 8; ++bits) {
    const int s = gc::qsgd::levels(bits);
    for (int k = 0; k <= s; ++k) {
      const float u = (float)(k * k);
      ASSERT_EQ(gc::qsgd::squareLevelFromU(u, s, 0.0f), k) << bits << " " << k;
      ASSERT_EQ(gc::qsgd::squareLevelFromU(u, s, 0.5f), k) << bits << " " << k;
      if (k > 0) {
        const float below = nextafterf(u, 0.0f);
        ASSERT_EQ(gc::qsgd::squareLevelFromU(below, s, 1.0f), k - 1) << bits << " " << k;
        ASSERT_EQ(gc::qsgd::squareLevelFromU(below, s, 0.0f), k) << bits << " " << k;
      }
    }
    EXPECT_EQ(gc::qsgd::squareLevelFromU(nextafterf((float)(s * s), 1e9f), s, 0.0f), s);
    EXPECT_EQ(gc::qsgd::squareLevelFromU(NAN, s, 0.0f), s);
    for (int i = 0; i <= 20000; ++i) {
      const float u = (float)(s * s) * (float)i / 20000.0f;
      const int lo = gc::qsgd::squareLevelFromU(u, s, 1.0f);
      ASSERT_LE((float)(lo * lo), u) << u;
      ASSERT_TRUE(lo == s || (float)((lo + 1) * (lo + 1)) > u) << u;
      ASSERT_EQ(lo, gctest::ref::squareLevel(u, s, 1.0f)) << u;
      ASSERT_EQ(gc::qsgd::squareLevelFromU(u, s, 0.5f), gctest::ref::squareLevel(u, s, 0.5f)) << u;
    }
  }
}

// The round-up test draw < (u - k^2) / (2k + 1) is exact: for u across every
// step of every width, the largest float draw whose product with 2k + 1 is
// below u - k^2 (found in double, where both are exact) rounds up, and the
// next float does not. A division rounded to float first decides some of
// these the other way (its quotient rounds onto the draw); the test counts
// them, so it tells the two rules apart.
TEST(SquareLevels, RoundUpIsDecidedExactlyNotByTheRoundedQuotient) {
  size_t quotientWouldDiffer = 0, cases = 0;
  for (int bits = 2; bits <= 8; ++bits) {
    const int s = gc::qsgd::levels(bits);
    for (int k = 0; k < s; ++k) {
      const double b = 2.0 * k + 1.0;
      for (int j = 1; j < 64; ++j) {
        // u in (k^2, (k+1)^2), a = u - k^2 (exact in float, as the library relies on).
        const float u = (float)(k * k + ((2 * j - 1) / 128.0 + j * 1e-5) * b);
        const float a = u - (float)(k * k);
        ASSERT_EQ((double)a, (double)u - (double)(k * k)) << "u - k^2 must be exact";
        ASSERT_GT(a, 0.0f);
        float below = (float)((double)a / b);
        while (!((double)below * b < (double)a)) below = nextafterf(below, 0.0f);
        while ((double)nextafterf(below, 2.0f) * b < (double)a) below = nextafterf(below, 2.0f);
        const float atOrAbove = nextafterf(below, 2.0f);
        ASSERT_EQ(gc::qsgd::squareLevelFromU(u, s, below), k + 1)
            << "bits " << bits << " k " << k << " u " << u << " draw " << below;
        ASSERT_EQ(gc::qsgd::squareLevelFromU(u, s, atOrAbove), k)
            << "bits " << bits << " k " << k << " u " << u << " draw " << atOrAbove;
        ASSERT_EQ(gctest::ref::squareLevel(u, s, below), k + 1);
        ASSERT_EQ(gctest::ref::squareLevel(u, s, atOrAbove), k);
        const float quotient = a / (float)b;
        quotientWouldDiffer += !(below < quotient);
        ++cases;
      }
    }
  }
  EXPECT_GT(quotientWouldDiffer, 0u) << "of " << cases << " cases";
}

// ---- config and entry points

TEST(SquareLevelsConfig, EnvParsesAndDefaultsToUniform) {
  gctest::expectSettingParses(
      gctest::TwoValuedSetting<gradcompLevels_t>{&gradcompConfig_t::levels, "GRADCOMP_LEVELS",
                                                 gradcompLevelsUniform, "Uniform",
                                                 gradcompLevelsSquare, "square"},
      "cubic", "GRADCOMP_LEVELS=cubic is not one of uniform|square",
      "levels=2 (GRADCOMP_LEVELS) is not one of uniform=0|square=1");
}

TEST(SquareLevelsConfig, DqsgdBitModesAndEliasAreRefused) {
  gradcompConfig_t c;
  ASSERT_EQ(gradcompConfigInit(&c), gradcompSuccess);
  c.levels = gradcompLevelsSquare;
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompSuccess) << gradcompGetLastError();
  c.bitsMode = gradcompBitsDynamic;
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(),
               "levels=square (GRADCOMP_LEVELS) with bitsMode=dynamic (GRADCOMP_BITS_MODE): "
               "DQ-SGD's bit choice models uniform levels; set GRADCOMP_BITS_MODE=fixed or "
               "GRADCOMP_LEVELS=uniform");
  c.bitsMode = gradcompBitsBudget;
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompInvalidArgument);
  EXPECT_NE(std::string(gradcompGetLastError()).find("bitsMode=budget"), std::string::npos);
  c.bitsMode = gradcompBitsFixed;
  c.elias = 1;
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(),
               "levels=square (GRADCOMP_LEVELS) with elias=1 (GRADCOMP_ELIAS): the Elias codec "
               "codes uniform levels only; set GRADCOMP_ELIAS=0 or GRADCOMP_LEVELS=uniform");
  // Through the environment, and nothing written on refusal.
  {
    gctest::ScopedEnv a("GRADCOMP_LEVELS", "square"), b("GRADCOMP_BITS_MODE", "budget");
    gradcompConfig_t d;
    ASSERT_EQ(gradcompConfigInit(&d), gradcompSuccess);
    gradcompConfig_t before;
    memcpy(&before, &d, sizeof(d));
    EXPECT_EQ(gradcompConfigFromEnv(&d), gradcompInvalidArgument);
    EXPECT_EQ(memcmp(&d, &before, sizeof(d)), 0);
  }
  // The sparse methods have no levels: nothing to refuse.
  c.elias = 0;
  c.method = gradcompMethodTopk;
  c.bitsMode = gradcompBitsDynamic;
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompSuccess) << gradcompGetLastError();
}

// Both entry points, host and GPU, refuse levels outside the enum with the
// same sentence before reading any pointer (so for count 0 too, and the GPU
// one without a GPU); the residual is untouched. Values the enum holds in
// C++ (2, its sentinel): a negative one cannot be made here without
// undefined behaviour, so a C caller's -1 is tests/capi/enum_args.c's.
TEST(SquareLevelsConfig, EntryPointsRefuseUnknownLevels) {
  gctest::expectEncodeRefuses(
      "levels", "gradcompLevelsUniform=0, gradcompLevelsSquare=1",
      {(gradcompLevels_t)2, gradcompLevelsEnumMax},
      [](bool host, const float* x, float* r, size_t n, gradcompLevels_t bad, uint8_t* out) {
        return host ? gradcompQsgdEncodeEFLevelsHost(x, ncclFloat32, r, n, 4, 32, 1,
                                                     gradcompRoundStochastic, bad, out)
                    : gradcompQsgdEncodeEFLevels(x, ncclFloat32, r, n, 4, 32, 1,
                                                 gradcompRoundStochastic, bad, out, nullptr);
      });
}

}  // namespace
