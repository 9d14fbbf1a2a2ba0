// Host QSGD codec: layout, unbiasedness, variance bounds, error feedback,
// special values. Bounds come from the codec's math, not from tuning.
#include <gtest/gtest.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include <memory>
#include <random>
#include <vector>

#include "gradcomp.h"
#include "gradcomp/reference.h"
#include "kernels/qsgd_math.cuh"
#include "plugin/backends/backend.h"
#include "tests/common/test_util.h"

namespace {

using gc::qsgd::levels;

// The test's own bit reader over the byte stream (independent of getCode).
uint32_t readCodeBitwise(const std::vector<uint8_t>& enc, size_t nb, size_t i, int bits) {
  const uint8_t* p = enc.data() + nb * 4;
  uint32_t c = 0;
  for (int k = 0; k < bits; ++k) {
    size_t bit = i * bits + k;
    c |= (uint32_t)((p[bit / 8] >> (bit % 8)) & 1u) << k;
  }
  return c;
}

float bucketMaxAbs(const std::vector<float>& x, size_t b, int d) {
  float m = 0;
  for (size_t i = b * d; i < x.size() && i < (b + 1) * d; ++i) m = fmaxf(m, fabsf(x[i]));
  return m;
}

std::vector<uint8_t> encode(const std::vector<float>& x, int bits, int d, uint64_t seed) {
  std::vector<uint8_t> enc(gradcompQsgdEncodedBytes(x.size(), bits, d) + 1, 0xAB);
  EXPECT_EQ(gradcompQsgdEncodeHost(x.data(), x.size(), bits, d, seed, enc.data()), gradcompSuccess);
  EXPECT_EQ(enc.back(), 0xAB) << "encoder wrote past encodedBytes";
  enc.pop_back();
  return enc;
}

std::vector<float> decode(const std::vector<uint8_t>& enc, size_t n, int bits, int d) {
  std::vector<float> out(n, -1.0f);
  EXPECT_EQ(gradcompQsgdDecodeHost(enc.data(), n, bits, d, out.data(), 0), gradcompSuccess);
  return out;
}

TEST(QsgdHost, EncodedBytesFormula) {
  EXPECT_EQ(gradcompQsgdEncodedBytes(0, 4, 512), 0u);
  EXPECT_EQ(gradcompQsgdEncodedBytes(1, 4, 512), 4u + 4u);
  EXPECT_EQ(gradcompQsgdEncodedBytes(512, 4, 512), 4u + 256u);
  EXPECT_EQ(gradcompQsgdEncodedBytes(513, 3, 512), 8u + ((513 * 3 + 31) / 32) * 4u);
  // 4 bits, d = 512: 4 + 32/512 bits per element.
  size_t n = 1 << 20;
  EXPECT_NEAR(8.0 * gradcompQsgdEncodedBytes(n, 4, 512) / n, 4.0 + 32.0 / 512, 1e-9);
  EXPECT_EQ(gradcompQsgdEncodedBytes(10, 9, 512), 0u);
  EXPECT_EQ(gradcompQsgdEncodedBytes(10, 1, 512), 0u);
  EXPECT_EQ(gradcompQsgdEncodedBytes(10, 4, 500), 0u);
  EXPECT_EQ(gradcompQsgdEncodedBytes(10, 4, 16384), 0u);
}

// Layout: scales then codes at bit i*b; every decoded value is the level of
// its code, and within one level step of the input.
TEST(QsgdHost, PackUnpackEveryBitsAwkwardCounts) {
  const size_t counts[] = {0, 1, 2, 7, 31, 32, 33, 95, 96, 97, 511, 512, 513, 1000, 4097};
  const int buckets[] = {32, 96, 512};
  for (int bits = 2; bits <= 8; ++bits) {
    for (int d : buckets) {
      for (size_t n : counts) {
        SCOPED_TRACE(testing::Message() << "bits=" << bits << " d=" << d << " n=" << n);
        std::vector<float> x = gctest::normal(n, 1000 + n + bits);
        auto enc = encode(x, bits, d, 77);
        auto out = decode(enc, n, bits, d);
        const size_t nb = (n + d - 1) / d;
        const int s = levels(bits);
        for (size_t i = 0; i < n; ++i) {
          float scale;
          memcpy(&scale, enc.data() + (i / d) * 4, 4);
          ASSERT_EQ(scale, bucketMaxAbs(x, i / d, d));
          uint32_t code = readCodeBitwise(enc, nb, i, bits);
          int level = code & s;
          bool neg = (code >> (bits - 1)) & 1;
          float expect = (float)level / (float)s * scale;
          ASSERT_EQ(out[i], neg ? -expect : expect) << "i=" << i;
          ASSERT_LE(fabsf(out[i] - x[i]), scale / s * (1 + 1e-6f)) << "i=" << i;
          if (level != 0) ASSERT_EQ(neg, x[i] < 0) << "i=" << i;
        }
        // Padding bits of the last word are zero.
        size_t usedBits = n * bits, totalBits = ((usedBits + 31) / 32) * 32;
        for (size_t bit = usedBits; bit < totalBits; ++bit) {
          ASSERT_EQ((enc[nb * 4 + bit / 8] >> (bit % 8)) & 1, 0) << "padding bit " << bit;
        }
      }
    }
  }
}

TEST(QsgdHost, DeterministicPerSeedAndSeedMatters) {
  std::vector<float> x = gctest::normal(4096, 5);
  EXPECT_EQ(encode(x, 4, 512, 1), encode(x, 4, 512, 1));
  EXPECT_NE(encode(x, 4, 512, 1), encode(x, 4, 512, 2));
}

// Unbiased: the mean over S seeds of decode(encode(x)) converges to x with
// the exact per-element standard deviation sqrt(p(1-p))*scale/s/sqrt(S),
// p = frac(|x|/scale*s). 5 sigma per element.
// Variance: an element rounds to one of its two adjacent levels, so its
// error is (scale/s)(B - p) with B ~ Bernoulli(p) and E[err^2] =
// (scale/s)^2 p(1-p) exactly. The mean squared error over the S seeds,
// summed over the elements, must be that sum within 5 of its standard
// deviations: Var[(B-p)^2] = p(1-p)((1-p)^3 + p^3) - (p(1-p))^2 per draw.
// (A spread around the sample mean would pass for any rounding to adjacent
// levels, nearest or floor included; this measures the rounding's own
// probability.) The whole vector's then meets QSGD's bound
// min(d/s^2, sqrt(d)/s) * ||x||^2 (max scaling: p(1-p) <= 1/4 and scale <=
// ||x||), which is loose by 13x to 260x here.
TEST(QsgdHost, UnbiasedOverSeeds) {
  const int d = 512, S = 3000;
  const size_t n = 1024;
  std::vector<float> x = gctest::normal(n, 11);
  x[3] = 0.0f;
  for (int bits : {2, 3, 4, 8}) {
    SCOPED_TRACE(testing::Message() << "bits=" << bits);
    const int s = levels(bits);
    std::vector<double> sum(n, 0.0), sqErr(n, 0.0);
    for (int k = 0; k < S; ++k) {
      auto out = decode(encode(x, bits, d, 1000003ull * k + 17), n, bits, d);
      for (size_t i = 0; i < n; ++i) {
        sum[i] += out[i];
        const double e = (double)out[i] - x[i];
        sqErr[i] += e * e;
      }
    }
    double mse = 0, mseWant = 0, mseVar = 0, normSq = 0;
    for (size_t i = 0; i < n; ++i) {
      const float scalef = bucketMaxAbs(x, i / d, d);
      const double scale = scalef;
      // p is the probability of rounding up for the ratio as the codec
      // computes it in fp32 (within a few ulp of |x|/scale*s).
      const float rf =
          gc::qsgd::quantRatio(fabsf(x[i]), scalef, gc::qsgd::reciprocal(scalef, s), s);
      ASSERT_NEAR(rf, fabs(x[i]) / scale * s, 4e-7 * s);
      const double p = rf - floor(rf);
      const double sigma = sqrt(p * (1 - p)) * scale / s / sqrt((double)S);
      const double mean = sum[i] / S;
      ASSERT_LE(fabs(mean - x[i]), 5 * sigma + 4e-7 * scale) << "i=" << i << " x=" << x[i];
      const double c = (scale / s) * (scale / s), q = p * (1 - p);
      mse += sqErr[i] / S;
      mseWant += c * q;
      mseVar += c * c * (q * ((1 - p) * (1 - p) * (1 - p) + p * p * p) - q * q) / S;
      normSq += (double)x[i] * x[i];
    }
    // The codec's fp32 ratio and decode move each error by a few ulp of the
    // scale: 1e-6 of the sum covers them.
    EXPECT_NEAR(mse, mseWant, 5 * sqrt(mseVar) + 1e-6 * mseWant)
        << "sum of mean squared errors against sum (scale/s)^2 p(1-p)";
    const double seedBound = fmin((double)d / (s * s), sqrt((double)d) / s) * normSq;
    EXPECT_LE(mse, seedBound);
  }
}

// A bucket's largest element has ratio s up to the reciprocal's rounding,
// often just above it: the level is capped at s. Level s + 1 would be the
// sign bit with a level of 0, and the element would decode to -0.
TEST(QsgdHost, LevelIsCappedAtS) {
  for (int bits = 2; bits <= 8; ++bits) {
    const int s = levels(bits);
    const float above = std::nextafter((float)s, INFINITY);
    EXPECT_EQ(gc::qsgd::levelFromRatio(above, s, 0.0f), s) << "bits=" << bits;
    EXPECT_EQ(gc::qsgd::codeFromRatio(-1.0f, above, bits, s, 0.0f),
              (1u << (bits - 1)) | (uint32_t)s)
        << "bits=" << bits;
  }
}

// The rounding draw, against numbers that do not come from the library:
// hashKey(key, i) is SplitMix64's output i of the generator seeded with key
// (published vectors for seed 0: 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4,
// 0x06c45d188009454f), and the uniform is its top 24 bits times 2^-24: on
// the 2^-24 grid, in [0, 1), low 40 bits ignored.
TEST(QsgdHost, RoundingDrawIsSplitMix64TopBitsOnTheGrid) {
  EXPECT_EQ(gc::hashKey(0, 0), 0xe220a8397b1dcdafull);
  EXPECT_EQ(gc::hashKey(0, 1), 0x6e789e6aa1b965f4ull);
  EXPECT_EQ(gc::hashKey(0, 2), 0x06c45d188009454full);
  const float ulp = 1.0f / 16777216.0f;  // 2^-24
  EXPECT_EQ(gc::uniform24FromHash(0), 0.0f);
  EXPECT_EQ(gc::uniform24FromHash((1ull << 40) - 1), 0.0f);
  EXPECT_EQ(gc::uniform24FromHash(1ull << 40), ulp);
  EXPECT_EQ(gc::uniform24FromHash(1ull << 63), 0.5f);
  EXPECT_EQ(gc::uniform24FromHash(~0ull), 1.0f - ulp);
  EXPECT_LT(gc::uniform24FromHash(~0ull), 1.0f);
  EXPECT_EQ(gc::uniform24(0, 0), (float)0xe220a8u * ulp);
  EXPECT_EQ(gc::uniform24(0, 2), (float)0x06c45du * ulp);
  // The draw decides the level: a ratio f < 1 on the grid rounds up to
  // level 1 exactly when u < f (scale s makes element 1's ratio x[1]).
  const int bits = 4, s = levels(bits);
  const float u1 = (float)0x6e789eu * ulp;  // element 1's draw under seed 0
  for (float f : {u1 - ulp, u1, u1 + ulp}) {
    std::vector<float> x(32, 0.0f);
    x[0] = (float)s;
    x[1] = f;
    std::vector<uint8_t> enc(gradcompQsgdEncodedBytes(32, bits, 32));
    ASSERT_EQ(gradcompQsgdEncodeHost(x.data(), 32, bits, 32, 0, enc.data()), gradcompSuccess);
    EXPECT_EQ(readCodeBitwise(enc, 1, 1, bits), u1 < f ? 1u : 0u) << "f=" << f;
  }
}

TEST(QsgdHost, DecodeAccumulates) {
  const size_t n = 777;
  std::vector<float> x = gctest::normal(n, 3);
  auto enc = encode(x, 5, 64, 9);
  auto once = decode(enc, n, 5, 64);
  std::vector<float> acc(n);
  for (size_t i = 0; i < n; ++i) acc[i] = 0.25f * i;
  ASSERT_EQ(gradcompQsgdDecodeHost(enc.data(), n, 5, 64, acc.data(), 1), gradcompSuccess);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(acc[i], 0.25f * i + once[i]);
}

TEST(QsgdHost, ZeroBucketDecodesToZeros) {
  std::vector<float> x(1000, 0.0f);
  for (size_t i = 512; i < 1000; ++i) x[i] = (float)i;
  auto out = decode(encode(x, 4, 512, 1), x.size(), 4, 512);
  for (size_t i = 0; i < 512; ++i) {
    ASSERT_EQ(out[i], 0.0f);
    ASSERT_FALSE(signbit(out[i]));
  }
  for (size_t i = 512; i < 1000; ++i) ASSERT_TRUE(isfinite(out[i]));
}

TEST(QsgdHost, NonFiniteBucketStaysNonFiniteOthersUntouched) {
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    std::vector<float> x = gctest::normal(3 * 512, 21);
    x[512 + 100] = bad;
    auto out = decode(encode(x, 4, 512, 3), x.size(), 4, 512);
    for (size_t i = 512; i < 1024; ++i) ASSERT_FALSE(isfinite(out[i])) << i;
    std::vector<float> clean = x;
    clean[512 + 100] = 0.0f;
    auto ref = decode(encode(clean, 4, 512, 3), x.size(), 4, 512);
    for (size_t i = 0; i < 512; ++i) ASSERT_EQ(out[i], ref[i]);
    for (size_t i = 1024; i < x.size(); ++i) ASSERT_EQ(out[i], ref[i]);
  }
}

TEST(QsgdHost, DenormalsAndHugeValues) {
  for (float mag : {1e-40f, 1e-45f, 1e-38f, 1e38f, 3.0e38f}) {
    SCOPED_TRACE(testing::Message() << "mag=" << mag);
    std::vector<float> x = gctest::normal(1024, 8);
    float m = 0;
    for (float v : x) m = fmaxf(m, fabsf(v));
    for (float& v : x) v = v / m * mag;
    for (int bits : {2, 4, 8}) {
      const int s = levels(bits);
      auto out = decode(encode(x, bits, 512, 5), x.size(), bits, 512);
      for (size_t i = 0; i < x.size(); ++i) {
        float scale = bucketMaxAbs(x, i / 512, 512);
        ASSERT_TRUE(isfinite(out[i])) << i;
        ASSERT_LE(fabsf(out[i]), scale) << i;
        ASSERT_LE(fabs((double)out[i] - x[i]), (double)scale / s * (1 + 1e-5)) << i;
      }
    }
  }
}

// The warp kernels code a plain bucket (finite non-zero scale, non-zero
// reciprocal) with encodePlain and decodePlain, and every other bucket with
// encodeValue and decodeWithLevel; the GPU tests compare the kernels with the
// host codec, which uses the checked pair. The pairs must give the same bits
// wherever a bucket is plain: values across the bucket's range (signed
// zeros, the scale itself, values on and next to every level boundary),
// scales from subnormal to FLT_MAX, every width and draws at the grid's ends.
TEST(QsgdHost, PlainBucketPathGivesTheCheckedPathsBits) {
  std::mt19937 rng(41);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  int plain = 0, notPlain = 0;
  const float scales[] = {1e-45f, 1e-40f, 1.2e-38f, 1e-20f, 1e-3f,   0.7f,
                          1.0f,   3.0f,   1e20f,    1e38f,  3.0e38f, FLT_MAX};
  const float draws[] = {0.0f, 0.5f, 1.0f - 1.0f / 16777216.0f, 0.25f, 0.999f};
  for (int bits = gc::qsgd::kMinBits; bits <= gc::qsgd::kMaxBits; ++bits) {
    const int s = levels(bits);
    for (float scale : scales) {
      const float rec = gc::qsgd::reciprocal(scale, s);
      if (!gc::qsgd::plainBucket(scale, rec)) {
        ++notPlain;
        continue;
      }
      ++plain;
      std::vector<float> xs = {0.0f, -0.0f, scale, -scale};
      for (int l = 0; l <= s; ++l) {
        const float on = gc::qsgd::decodeValue((uint32_t)l, scale, bits);
        xs.insert(xs.end(), {on, -on, nextafterf(on, 0.0f), nextafterf(on, scale)});
      }
      for (int k = 0; k < 64; ++k) xs.push_back((unit(rng) * 2 - 1) * scale);
      for (float x : xs) {
        if (!(fabsf(x) <= scale)) continue;  // a bucket's values never exceed its scale
        for (float u : draws) {
          const uint32_t code = gc::qsgd::encodeValue(x, scale, rec, bits, u);
          ASSERT_EQ(gc::qsgd::encodePlain(x, rec, bits, s, u), code)
              << "bits " << bits << " scale " << scale << " x " << x << " u " << u;
          const float level = gc::qsgd::levelValue((int)(code & (uint32_t)s), s);
          const float a = gc::qsgd::decodePlain(code, level, scale, bits);
          const float b = gc::qsgd::decodeWithLevel(code, level, scale, bits);
          ASSERT_EQ(memcmp(&a, &b, sizeof(a)), 0) << "bits " << bits << " code " << code;
        }
      }
    }
  }
  // Both kinds of bucket occurred: a tiny scale overflows s/scale (no
  // reciprocal), and 1/FLT_MAX at 2 bits is subnormal.
  EXPECT_GT(plain, 50);
  EXPECT_GT(notPlain, 0);
  for (float scale : {0.0f, INFINITY, NAN}) {
    EXPECT_FALSE(gc::qsgd::plainBucket(scale, gc::qsgd::reciprocal(scale, 7))) << scale;
  }
}

TEST(QsgdHost, HalfAndBf16InputsEncodeAsTheirFloatValues) {
  const size_t n = 3000;
  std::vector<float> x = gctest::normal(n, 31);
  for (ncclDataType_t t : {ncclFloat16, ncclBfloat16}) {
    std::vector<uint16_t> h(n);
    std::vector<float> widened(n);
    for (size_t i = 0; i < n; ++i) {
      h[i] = t == ncclFloat16 ? gc::floatToHalf(x[i]) : gc::floatToBf16(x[i]);
      widened[i] = t == ncclFloat16 ? gc::halfToFloat(h[i]) : gc::bf16ToFloat(h[i]);
    }
    std::vector<uint8_t> enc(gradcompQsgdEncodedBytes(n, 4, 512));
    ASSERT_EQ(gradcompQsgdEncodeTypedHost(h.data(), t, nullptr, n, 4, 512, 7, enc.data()),
              gradcompSuccess);
    EXPECT_EQ(enc, encode(widened, 4, 512, 7));
  }
}

// EF: decoded + new residual == old residual + g to fp32 rounding, and over
// many steps sum(sent) - sum(g) = r0 - rT stays within one level step.
TEST(QsgdHost, ErrorFeedbackInvariantAndBoundedGap) {
  const size_t n = 2000;
  const int d = 512, bits = 3, s = levels(bits), T = 300;
  std::vector<float> r(n, 0.0f);
  std::vector<double> sentSum(n, 0.0), gSum(n, 0.0);
  std::vector<uint8_t> enc(gradcompQsgdEncodedBytes(n, bits, d));
  double maxScaleOverS = 0;
  for (int t = 0; t < T; ++t) {
    std::vector<float> g = gctest::normal(n, 500 + t);
    for (float& v : g) v *= 1.0f + (t % 7);  // varying scale
    std::vector<float> rOld = r;
    ASSERT_EQ(gradcompQsgdEncodeTypedHost(g.data(), ncclFloat32, r.data(), n, bits, d, 900 + t,
                                          enc.data()),
              gradcompSuccess);
    auto dec = decode(enc, n, bits, d);
    for (size_t i = 0; i < n; ++i) {
      const float xeff = rOld[i] + g[i];
      const float tol = 1.2e-7f * (fabsf(xeff) + fabsf(r[i]) + fabsf(dec[i]));
      ASSERT_LE(fabsf(dec[i] + r[i] - xeff), tol) << "t=" << t << " i=" << i;
      sentSum[i] += dec[i];
      gSum[i] += g[i];
    }
    for (size_t b = 0; b < (n + d - 1) / d; ++b) {
      float scale;
      memcpy(&scale, enc.data() + 4 * b, 4);
      maxScaleOverS = fmax(maxScaleOverS, (double)scale / s);
    }
  }
  double worst = 0;
  for (size_t i = 0; i < n; ++i) {
    const double gap = fabs(sentSum[i] - gSum[i]);
    worst = fmax(worst, gap);
    // |r_T| < scale/s; float accumulation of T steps adds a little.
    ASSERT_LE(gap, maxScaleOverS * (1 + 1e-3) + 1e-3) << i;
    ASSERT_NEAR(gap, fabs(r[i]), 1e-3 + 1e-4 * fabs(gSum[i]));
  }
  EXPECT_GT(worst, 0.0);
}

TEST(QsgdHost, ErrorFeedbackSkipsNonFiniteBucket) {
  const size_t n = 1024;
  std::vector<float> r(n), g = gctest::normal(n, 4);
  for (size_t i = 0; i < n; ++i) r[i] = 0.01f * (float)(i % 13);
  std::vector<float> rOld = r;
  g[700] = NAN;
  std::vector<uint8_t> enc(gradcompQsgdEncodedBytes(n, 4, 512));
  ASSERT_EQ(gradcompQsgdEncodeTypedHost(g.data(), ncclFloat32, r.data(), n, 4, 512, 1, enc.data()),
            gradcompSuccess);
  for (size_t i = 512; i < n; ++i) ASSERT_EQ(r[i], rOld[i]) << "residual poisoned at " << i;
  bool changed = false;
  for (size_t i = 0; i < 512; ++i) changed |= r[i] != rOld[i];
  EXPECT_TRUE(changed);
  for (size_t i = 0; i < 512; ++i) ASSERT_TRUE(isfinite(r[i]));
}

// An infinite bucket (an Inf input, or x + residual overflowing) is not
// finite either: its scale is Inf, its elements decode to NaN, and its
// residual must stay as it was, exactly as for NaN. The other bucket's
// residual moves and stays finite.
TEST(QsgdHost, ErrorFeedbackSkipsInfiniteBucket) {
  const size_t n = 1024;
  for (int kind = 0; kind < 3; ++kind) {
    SCOPED_TRACE(testing::Message() << "kind=" << kind);
    std::vector<float> r(n), g = gctest::normal(n, 4);
    for (size_t i = 0; i < n; ++i) r[i] = 0.01f * (float)(i % 13);
    if (kind == 0) g[700] = INFINITY;
    if (kind == 1) g[700] = -INFINITY;
    if (kind == 2) g[700] = FLT_MAX, r[700] = FLT_MAX;  // fl(g + r) = +Inf
    const std::vector<float> rOld = r;
    std::vector<uint8_t> enc(gradcompQsgdEncodedBytes(n, 4, 512));
    ASSERT_EQ(
        gradcompQsgdEncodeTypedHost(g.data(), ncclFloat32, r.data(), n, 4, 512, 1, enc.data()),
        gradcompSuccess);
    float scale1;
    memcpy(&scale1, enc.data() + 4, 4);
    ASSERT_TRUE(isinf(scale1)) << "bucket 1's scale is the max of |x + r|: Inf";
    for (size_t i = 512; i < n; ++i) ASSERT_EQ(r[i], rOld[i]) << "residual changed at " << i;
    bool changed = false;
    for (size_t i = 0; i < 512; ++i) {
      changed |= r[i] != rOld[i];
      ASSERT_TRUE(isfinite(r[i])) << i;
    }
    EXPECT_TRUE(changed);
  }
}

// Backend::qsgdSum's default (the CPU backend's, and the CUDA backend's off
// the warp path) is the terms' values added left to right, the first taken
// as it is, then divided (unless by 1) and stored as the output type: against
// each term decoded on its own (the public host decode) and fadd'ed here.
// 1, 3 and 20 terms with the plain block first, in the middle and last, a
// warp bucket and the block path's, widths 3 and 4, outputs fp32 Sum (no
// scratch given), fp32 Avg, fp16 and bf16 Avg; nothing past the output
// written. A term added out of order, a plain term decoded, a divisor
// applied to a Sum or missing from an Avg changes the bytes. The plain block
// holds a value past fp16's range: the non-finite check's flag handed to the
// sum (CallArgs::outputFlag) is set exactly where the stored output holds a
// NaN or an infinity (the fp16 output; not fp32 nor bf16), and never
// cleared.
TEST(QsgdHost, BackendSumIsTheTermsAddedInOrder) {
  std::unique_ptr<gc::Backend> be = gc::makeCpuBackend();
  const size_t n = 3 * 512 + 77;
  struct Output {
    gc::DType t;
    float divisor;
  };
  const Output outputs[] = {{gc::DType::F32, 1.0f},
                            {gc::DType::F32, 8.0f},
                            {gc::DType::F16, 1.0f},
                            {gc::DType::BF16, 6.0f}};
  for (int d : {512, 96}) {
    for (int bits : {3, 4}) {
      std::vector<std::vector<uint8_t>> encs;
      std::vector<std::vector<float>> values;  // each term's decode on its own
      for (int k = 0; k < 20; ++k) {
        encs.push_back(encode(gctest::normal(n, 40 + k + d + bits, 1.0f + k % 3), bits, d, 9 + k));
        values.push_back(decode(encs.back(), n, bits, d));
      }
      std::vector<float> own = gctest::normal(n, 77, 3.0f);
      own[10] = 1.0e6f;
      for (int count : {1, 3, 20}) {
        for (int plainAt : {0, count / 2, count - 1}) {
          std::vector<gc::SumTerm> terms;
          std::vector<float> want(n);
          for (int k = 0; k < count; ++k) {
            const bool plain = k == plainAt;
            terms.push_back(plain ? gc::SumTerm{own.data(), true}
                                  : gc::SumTerm{encs[k].data(), false});
            const std::vector<float>& v = plain ? own : values[k];
            for (size_t i = 0; i < n; ++i) want[i] = k == 0 ? v[i] : gc::fadd(want[i], v[i]);
          }
          for (const Output& o : outputs) {
            SCOPED_TRACE(testing::Message()
                         << "d=" << d << " bits=" << bits << " terms=" << count << " plain at "
                         << plainAt << " type=" << (int)o.t << " divisor=" << o.divisor);
            const size_t esz = gc::dtypeBytes(o.t);
            std::vector<uint8_t> got((n + 4) * esz, 0x5A), expect = got;
            for (size_t i = 0; i < n; ++i) {
              gc::storeFromFloat(expect.data(), o.t, i,
                                 o.divisor == 1.0f ? want[i] : gc::fdiv(want[i], o.divisor));
            }
            bool bad = false;
            for (size_t i = 0; i < n; ++i) bad |= !isfinite(gc::loadAsFloat(expect.data(), o.t, i));
            ASSERT_EQ(bad, o.t == gc::DType::F16) << "the case is not the one meant";
            const bool direct = o.t == gc::DType::F32 && o.divisor == 1.0f;
            std::vector<float> scratch(direct ? 0 : n);
            for (float before : {0.0f, 1.0f}) {
              float flag = before;
              ASSERT_EQ(be->qsgdSum(terms.data(), count, n, bits, d, o.divisor, o.t, got.data(),
                                    direct ? nullptr : scratch.data(), &flag),
                        gradcompSuccess);
              ASSERT_EQ(got, expect);
              EXPECT_EQ(flag, bad || before != 0.0f ? 1.0f : 0.0f) << "flag was " << before;
            }
          }
        }
      }
    }
  }
}

TEST(QsgdHost, BadArgumentsNameTheValue) {
  std::vector<float> x(10, 1.0f);
  std::vector<uint8_t> out(64);
  EXPECT_EQ(gradcompQsgdEncodeHost(x.data(), 10, 9, 512, 0, out.data()), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), "bits=9 is out of range 2..8");
  EXPECT_EQ(gradcompQsgdEncodeHost(x.data(), 10, 4, 100, 0, out.data()), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "bucketSize=100"), nullptr);
  EXPECT_EQ(gradcompQsgdEncodeHost(nullptr, 10, 4, 512, 0, out.data()), gradcompInvalidArgument);
  EXPECT_EQ(gradcompQsgdEncodeHost(x.data(), 10, 4, 512, 0, out.data() + 1),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "4-byte aligned"), nullptr);
  EXPECT_EQ(gradcompQsgdEncodeTypedHost(x.data(), ncclInt32, nullptr, 10, 4, 512, 0, out.data()),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "datatype=2"), nullptr);
  EXPECT_EQ(gradcompQsgdDecodeHost(out.data(), 10, 4, 512, nullptr, 0), gradcompInvalidArgument);
  // count 0 is a no-op even with NULL pointers.
  EXPECT_EQ(gradcompQsgdEncodeHost(nullptr, 0, 4, 512, 0, nullptr), gradcompSuccess);
}

}  // namespace
