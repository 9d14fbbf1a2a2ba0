// Host Elias-coded QSGD: the codes against a bit-string reference, the
// stream against the test's own parser, the fixed-width special case against
// the QSGD codec, awkward inputs, unbiasedness for any level count, and the
// size against the QSGD paper's bound at s = sqrt(d).
#include <float.h>
#include <gtest/gtest.h>
#include <math.h>
#include <string.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "gradcomp.h"
#include "gradcomp/elias.h"
#include "gradcomp/reference.h"
#include "kernels/elias_math.cuh"
#include "tests/common/test_util.h"

namespace {

// ---- the test's own Elias codes, as strings of '0'/'1' in stream order
std::string binary(uint32_t n) {
  std::string s;
  for (; n; n >>= 1) s.insert(s.begin(), char('0' + (n & 1)));
  return s;
}
std::string gammaString(uint32_t n) {
  const std::string b = binary(n);
  return std::string(b.size() - 1, '0') + b;
}
std::string omegaString(uint32_t n) {
  std::string out = "0";
  while (n > 1) {
    const std::string b = binary(n);
    out = b + out;
    n = (uint32_t)b.size() - 1;
  }
  return out;
}
std::string codeString(gradcompEliasCode_t c, uint32_t n) {
  return c == gradcompEliasGamma ? gammaString(n) : omegaString(n);
}
std::string codewordString(gc::elias::Codeword w) {
  std::string s;
  for (int j = 0; j < w.len; ++j) s += char('0' + ((w.bits >> j) & 1));
  return s;
}

TEST(EliasCodes, MatchBitStringsAndLengthsAreMonotone) {
  EXPECT_EQ(gammaString(1), "1");
  EXPECT_EQ(gammaString(5), "00101");
  EXPECT_EQ(omegaString(1), "0");
  EXPECT_EQ(omegaString(4), "101000");
  EXPECT_EQ(omegaString(17), "10100100010");
  for (gradcompEliasCode_t c : {gradcompEliasGamma, gradcompEliasOmega}) {
    const gc::elias::Code code = (gc::elias::Code)c;
    int lastLen = 0;
    for (uint32_t n = 1; n <= (uint32_t)gc::elias::kMaxLevels; ++n) {
      const std::string ref = codeString(c, n);
      const gc::elias::Codeword w = gc::elias::encodeNumber(code, n);
      ASSERT_EQ(codewordString(w), ref) << "code=" << c << " n=" << n;
      ASSERT_EQ(gc::elias::codeLength(code, n), (int)ref.size());
      ASSERT_GE(w.len, lastLen) << "lengths must not decrease (the size bound relies on it)";
      ASSERT_LE(w.len, 32);
      lastLen = w.len;
    }
  }
}

// The decode kernel's reader counts bits in uint32_t, over one bucket's
// words from the header: a span of 2^27 words or more (a malformed header)
// must not wrap its bit count, or a read well inside the span reports an
// overrun (the bucket then decodes to NaN) that the host's reader does not.
TEST(EliasCodes, KernelReaderOverrunDoesNotWrap) {
  const uint32_t words[2] = {0u, 0u};
  for (uint32_t nWords : {1u << 27, (1u << 27) + 1u, 0xffffffffu}) {
    gc::elias::BitReader<uint32_t> r(words, nWords);  // skip and overrun read no word
    r.skip(64);
    EXPECT_FALSE(r.overrun()) << "nWords=" << nWords;
  }
  gc::elias::BitReader<uint32_t> r(words, 2);
  r.skip(64);
  EXPECT_FALSE(r.overrun());
  r.skip(1);
  EXPECT_TRUE(r.overrun());
}

// ---- encode/decode helpers
gradcompEliasParams_t params(int s, int d, gradcompEliasCode_t c = gradcompEliasGamma,
                             gradcompEliasScale_t sc = gradcompEliasScaleMax) {
  gradcompEliasParams_t p;
  p.levels = s;
  p.bucketSize = d;
  p.code = c;
  p.scale = sc;
  return p;
}

struct Encoded {
  std::vector<uint8_t> bytes;  // the encoded size exactly
};

Encoded encode(const std::vector<float>& x, const gradcompEliasParams_t& p, uint64_t seed,
               float* residual = nullptr) {
  const size_t maxBytes = gradcompEliasMaxEncodedBytes(x.size(), &p);
  EXPECT_GT(maxBytes, 0u);
  std::vector<uint32_t> buf(maxBytes / 4 + 2, 0xABABABABu);  // a canary word past the end
  size_t bytes = 0;
  EXPECT_EQ(gradcompEliasEncodeHost(x.data(), ncclFloat32, residual, x.size(), &p, seed, buf.data(),
                                    maxBytes, &bytes),
            gradcompSuccess)
      << gradcompGetLastError();
  EXPECT_EQ(buf[maxBytes / 4], 0xABABABABu) << "encoder wrote past gradcompEliasMaxEncodedBytes";
  EXPECT_LE(bytes, maxBytes);
  size_t fromHeader = 0;
  EXPECT_EQ(gradcompEliasEncodedBytes(buf.data(), x.size(), p.bucketSize, &fromHeader),
            gradcompSuccess);
  EXPECT_EQ(fromHeader, bytes);
  Encoded e;
  e.bytes.assign(reinterpret_cast<uint8_t*>(buf.data()),
                 reinterpret_cast<uint8_t*>(buf.data()) + bytes);
  return e;
}

std::vector<float> decode(const Encoded& e, size_t n, const gradcompEliasParams_t& p) {
  std::vector<float> out(n, -7.0f);
  EXPECT_EQ(gradcompEliasDecodeHost(e.bytes.data(), e.bytes.size(), n, &p, out.data(), 0),
            gradcompSuccess)
      << gradcompGetLastError();
  return out;
}

// ---- the test's own parser of the layout
struct Parsed {
  std::vector<float> scales;
  std::vector<int> level;    // signed
  uint64_t payloadBits = 0;  // code bits, without the word padding
};

Parsed parse(const Encoded& e, size_t n, const gradcompEliasParams_t& p) {
  const size_t d = p.bucketSize, nb = (n + d - 1) / d;
  auto word = [&](size_t i) {
    uint32_t w;
    memcpy(&w, e.bytes.data() + 4 * i, 4);
    return w;
  };
  Parsed out;
  out.level.assign(n, 0);
  for (size_t b = 0; b < nb; ++b) {
    float s;
    memcpy(&s, e.bytes.data() + 4 * b, 4);
    out.scales.push_back(s);
  }
  const size_t streamWord = 2 * nb + 1;
  EXPECT_EQ(e.bytes.size(), 4 * (streamWord + word(2 * nb)));
  // Bucket 0 starts at word 0: offsets[0] records the levels.
  if (nb > 0) EXPECT_EQ(word(nb), (uint32_t)p.levels);
  for (size_t b = 0; b < nb; ++b) {
    const size_t w0 = streamWord + (b == 0 ? 0 : word(nb + b)), w1 = streamWord + word(nb + b + 1);
    size_t pos = 0;
    auto bit = [&]() -> int {
      const size_t w = w0 + pos / 32;
      EXPECT_LT(w, w1) << "bucket " << b << " reads past its words";
      const int v = w < w1 ? (int)((word(w) >> (pos % 32)) & 1u) : 0;
      ++pos;
      return v;
    };
    auto number = [&]() -> uint32_t {
      if (p.code == gradcompEliasGamma) {
        int zeros = 0;
        while (bit() == 0 && zeros < 40) ++zeros;
        uint32_t v = 1;
        for (int k = 0; k < zeros; ++k) v = v << 1 | (uint32_t)bit();
        return v;
      }
      uint32_t v = 1;
      while (bit() == 1) {
        uint32_t m = 1;
        for (uint32_t k = 0; k < v; ++k) m = m << 1 | (uint32_t)bit();
        v = m;
        if (v > (1u << 20)) break;
      }
      return v;
    };
    const size_t len = std::min(d, n - b * d);
    size_t i = 0;
    while (i < len) {
      const uint32_t g = number();
      i += g - 1;
      if (i >= len) {
        EXPECT_EQ(i, len) << "terminator overshoots bucket " << b;
        break;
      }
      const int neg = bit();
      const uint32_t lev = number();
      EXPECT_GE(lev, 1u);
      EXPECT_LE(lev, (uint32_t)p.levels);
      out.level[b * d + i] = neg ? -(int)lev : (int)lev;
      ++i;
    }
    out.payloadBits += pos;
    // Padding up to the bucket's last word is zero, and there is no spare word.
    EXPECT_EQ((pos + 31) / 32, w1 - w0) << "bucket " << b;
    for (size_t k = pos; k < (w1 - w0) * 32; ++k) {
      EXPECT_EQ((word(w0 + k / 32) >> (k % 32)) & 1u, 0u) << "padding bit " << k;
    }
  }
  return out;
}

float bucketMax(const std::vector<float>& x, size_t b, int d) {
  float m = 0;
  for (size_t i = b * d; i < x.size() && i < (b + 1) * (size_t)d; ++i) m = fmaxf(m, fabsf(x[i]));
  return m;
}

// With s = 2^(b-1)-1 and the max scale, the Elias codec is the fixed-width
// codec in another wire format: same scales, same levels, same decode, same
// error-feedback residual, bit for bit.
TEST(EliasHost, FixedWidthSpecialCaseEqualsQsgd) {
  const size_t counts[] = {1, 2, 31, 32, 33, 95, 511, 512, 513, 1000, 4097};
  const int buckets[] = {32, 96, 512};
  for (int bits = 2; bits <= 8; ++bits) {
    for (int d : buckets) {
      for (size_t n : counts) {
        SCOPED_TRACE(testing::Message() << "bits=" << bits << " d=" << d << " n=" << n);
        std::vector<float> x = gctest::normal(n, 300 + n + bits);
        std::vector<float> r0 = gctest::normal(n, 7, 0.3f);
        const auto p =
            params(gc::qsgd::levels(bits), d, bits % 2 ? gradcompEliasOmega : gradcompEliasGamma);
        std::vector<float> rE = r0, rQ = r0;
        Encoded e = encode(x, p, 4242, rE.data());
        std::vector<uint8_t> q(gradcompQsgdEncodedBytes(n, bits, d));
        ASSERT_EQ(gradcompQsgdEncodeTypedHost(x.data(), ncclFloat32, rQ.data(), n, bits, d, 4242,
                                              q.data()),
                  gradcompSuccess);
        const size_t nb = (n + d - 1) / d;
        ASSERT_EQ(memcmp(e.bytes.data(), q.data(), nb * 4), 0) << "scales differ";
        ASSERT_EQ(memcmp(rE.data(), rQ.data(), n * 4), 0) << "residuals differ";
        std::vector<float> dq(n);
        ASSERT_EQ(gradcompQsgdDecodeHost(q.data(), n, bits, d, dq.data(), 0), gradcompSuccess);
        auto de = decode(e, n, p);
        ASSERT_EQ(memcmp(de.data(), dq.data(), n * 4), 0) << "decodes differ";
      }
    }
  }
}

// Round trip for any level count, code and scale: the test's parser reads
// the same levels the decoder returns, each within one level step of x with
// x's sign, and the header, offsets and padding are as documented.
TEST(EliasHost, RoundTripAwkwardCountsLevelsCodesScales) {
  const size_t counts[] = {0, 1, 2, 7, 31, 32, 33, 97, 511, 512, 513, 1000, 4097};
  const int levelsList[] = {1, 2, 3, 7, 22, 127, 1000, 65535};
  for (gradcompEliasCode_t c : {gradcompEliasGamma, gradcompEliasOmega}) {
    for (gradcompEliasScale_t sc : {gradcompEliasScaleMax, gradcompEliasScaleL2}) {
      for (int s : levelsList) {
        for (int d : {32, 512}) {
          for (size_t n : counts) {
            SCOPED_TRACE(testing::Message() << "code=" << c << " scale=" << sc << " s=" << s
                                            << " d=" << d << " n=" << n);
            std::vector<float> x = gctest::normal(n, 17 * n + s);
            if (n > 40) std::fill(x.begin() + 3, x.begin() + 40, 0.0f);  // a long zero run
            const auto p = params(s, d, c, sc);
            Encoded e = encode(x, p, 99 + s);
            auto out = decode(e, n, p);
            Parsed parsed = parse(e, n, p);
            for (size_t i = 0; i < n; ++i) {
              const float scale = parsed.scales[i / d];
              if (sc == gradcompEliasScaleMax) {
                ASSERT_EQ(scale, bucketMax(x, i / d, d));
              } else {
                double ss = 0;
                for (size_t k = (i / d) * d; k < std::min(n, (i / d + 1) * d); ++k) {
                  ss += (double)x[k] * x[k];
                }
                ASSERT_NEAR(scale, sqrt(ss), 1e-6 * sqrt(ss));
                ASSERT_GE(scale, bucketMax(x, i / d, d));
              }
              const int lev = parsed.level[i];
              const float expect = (float)abs(lev) / (float)s * scale;
              ASSERT_EQ(out[i], lev < 0 ? -expect : expect) << "i=" << i;
              ASSERT_LE(fabs((double)out[i] - x[i]), (double)scale / s * (1 + 1e-6)) << "i=" << i;
              if (lev != 0) ASSERT_EQ(lev < 0, x[i] < 0) << "i=" << i;
            }
          }
        }
      }
    }
  }
}

TEST(EliasHost, DeterministicSeedMattersAndAccumulates) {
  const auto p = params(22, 512);
  std::vector<float> x = gctest::normal(3000, 5);
  EXPECT_EQ(encode(x, p, 1).bytes, encode(x, p, 1).bytes);
  EXPECT_NE(encode(x, p, 1).bytes, encode(x, p, 2).bytes);
  Encoded e = encode(x, p, 3);
  auto once = decode(e, x.size(), p);
  std::vector<float> acc(x.size());
  for (size_t i = 0; i < acc.size(); ++i) acc[i] = 0.5f * i;
  ASSERT_EQ(gradcompEliasDecodeHost(e.bytes.data(), e.bytes.size(), x.size(), &p, acc.data(), 1),
            gradcompSuccess);
  for (size_t i = 0; i < acc.size(); ++i) ASSERT_EQ(acc[i], 0.5f * i + once[i]);
}

// The worst-case size holds on the inputs that maximize it: every element at
// the top level, alternating zero/top, one nonzero per bucket, all zero.
TEST(EliasHost, WorstCaseSizeBoundHolds) {
  const int d = 512;
  const size_t n = 4 * d + 100;
  for (gradcompEliasCode_t c : {gradcompEliasGamma, gradcompEliasOmega}) {
    for (int s : {1, 3, 127, 65535}) {
      SCOPED_TRACE(testing::Message() << "code=" << c << " s=" << s);
      const auto p = params(s, d, c);
      std::vector<std::vector<float>> inputs;
      inputs.push_back(std::vector<float>(n, -2.5f));
      std::vector<float> alt(n, 0.0f);
      for (size_t i = 0; i < n; i += 2) alt[i] = 1.0f;
      inputs.push_back(alt);
      std::vector<float> one(n, 0.0f);
      for (size_t i = 0; i < n; i += d) one[i + d / 2 < n ? i + d / 2 : i] = 3.0f;
      inputs.push_back(one);
      inputs.push_back(std::vector<float>(n, 0.0f));
      for (auto& x : inputs) {
        Encoded e = encode(x, p, 1);  // encode() checks the canary past the bound
        auto out = decode(e, n, p);
        for (size_t i = 0; i < n; ++i) ASSERT_LE(fabsf(out[i] - x[i]), fabsf(x[i]) / s + 1e-6f);
      }
      // Every element at the top level is the worst case exactly.
      Encoded top = encode(inputs[0], p, 1);
      EXPECT_EQ(top.bytes.size(), gradcompEliasMaxEncodedBytes(n, &p));
    }
  }
}

TEST(EliasHost, ZeroNonFiniteDenormalAndHugeBuckets) {
  const int d = 512;
  const auto pMax = params(7, d), pL2 = params(7, d, gradcompEliasGamma, gradcompEliasScaleL2);
  // Zero bucket: +0.0 everywhere; it costs one terminator.
  std::vector<float> x(2 * d, 0.0f);
  for (size_t i = d; i < x.size(); ++i) x[i] = 0.01f * (float)(i - d) - 2.0f;
  for (const auto& p : {pMax, pL2}) {
    auto out = decode(encode(x, p, 1), x.size(), p);
    for (int i = 0; i < d; ++i) ASSERT_TRUE(out[i] == 0.0f && !signbit(out[i])) << i;
  }
  // A NaN/Inf bucket decodes to NaN, the others as if it were not there.
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    for (const auto& p : {pMax, pL2}) {
      std::vector<float> y = gctest::normal(3 * d, 21);
      std::vector<float> clean = y;
      y[d + 10] = bad;
      clean[d + 10] = 0.0f;
      auto out = decode(encode(y, p, 3), y.size(), p);
      auto ref = decode(encode(clean, p, 3), y.size(), p);
      for (int i = d; i < 2 * d; ++i) ASSERT_TRUE(isnan(out[i])) << i;
      for (int i = 0; i < d; ++i) ASSERT_EQ(out[i], ref[i]);
      for (int i = 2 * d; i < 3 * d; ++i) ASSERT_EQ(out[i], ref[i]);
    }
  }
  // Denormal and huge magnitudes stay finite and within one level step (plus
  // the fp32 grid spacing 2^-149 among denormals, where level/s*scale
  // rounds); an L2 norm past FLT_MAX is clamped to FLT_MAX (>= max|x|).
  for (float mag : {1e-45f, 1e-40f, 1e38f, 3.0e38f}) {
    for (const auto& p : {pMax, pL2}) {
      std::vector<float> y = gctest::normal(d, 8);
      const float m = bucketMax(y, 0, d);
      for (float& v : y) v = v / m * mag;
      Encoded e = encode(y, p, 5);
      Parsed parsed = parse(e, y.size(), p);
      auto out = decode(e, y.size(), p);
      for (int i = 0; i < d; ++i) {
        ASSERT_TRUE(isfinite(out[i])) << "mag=" << mag << " i=" << i;
        ASSERT_LE(fabs((double)out[i] - y[i]),
                  (double)parsed.scales[0] / 7 * (1 + 1e-5) + 1.4013e-45);
      }
      if (p.scale == gradcompEliasScaleL2 && mag > 1e37f) EXPECT_EQ(parsed.scales[0], FLT_MAX);
    }
  }
}

// Unbiased for a level count that is not 2^(b-1)-1 (s = sqrt(d)) under both
// scales: the mean over S seeds is within 5 sigma of x, sigma the exact
// per-element standard deviation sqrt(p(1-p))*scale/s/sqrt(S).
TEST(EliasHost, UnbiasedForAnyLevelCount) {
  const int d = 256, s = 16, S = 1500;
  const size_t n = 512;
  std::vector<float> x = gctest::normal(n, 11);
  for (gradcompEliasScale_t sc : {gradcompEliasScaleMax, gradcompEliasScaleL2}) {
    const auto p = params(s, d, gradcompEliasOmega, sc);
    std::vector<double> sum(n, 0.0);
    std::vector<float> scales;
    for (int k = 0; k < S; ++k) {
      Encoded e = encode(x, p, 7919ull * k + 1);
      if (k == 0) scales = parse(e, n, p).scales;
      auto out = decode(e, n, p);
      for (size_t i = 0; i < n; ++i) sum[i] += out[i];
    }
    for (size_t i = 0; i < n; ++i) {
      const float scale = scales[i / d];
      // p from the ratio as the codec computes it in fp32.
      const float r = gc::qsgd::quantRatio(fabsf(x[i]), scale, gc::qsgd::reciprocal(scale, s), s);
      const double pr = r - floor(r);
      const double sigma = sqrt(pr * (1 - pr)) * scale / s / sqrt((double)S);
      ASSERT_LE(fabs(sum[i] / S - x[i]), 5 * sigma + 4e-7 * scale) << "scale=" << sc << " i=" << i;
    }
  }
}

// The QSGD paper: at s = sqrt(n) with the L2 norm, a vector of n elements
// costs at most about 2.8n + 32 bits (32 for the norm). Per bucket of d we
// count the scale (32) plus the parsed code bits; the layout adds an offset
// word and at most 31 padding bits per bucket, bounded separately.
TEST(EliasHost, BitsPerElementAtSqrtDWithinThePaperBound) {
  for (int d : {128, 512, 2048, 8192}) {
    const int s = (int)lround(sqrt((double)d));
    const size_t n = (size_t)d * (d >= 2048 ? 16 : 64);
    const size_t nb = n / d;
    std::vector<float> x = gctest::normal(n, 1234 + d);
    for (gradcompEliasCode_t c : {gradcompEliasGamma, gradcompEliasOmega}) {
      const auto p = params(s, d, c, gradcompEliasScaleL2);
      Encoded e = encode(x, p, 77);
      Parsed parsed = parse(e, n, p);
      const double codeBits = (double)parsed.payloadBits + 32.0 * nb;
      const double bound = nb * (2.8 * d + 32);
      printf(
          "[ elias ] d=%5d s=%3d %s L2: %.3f bits/element (scale+codes), %.3f with offsets and "
          "padding; bound 2.8+32/d = %.3f\n",
          d, s, c == gradcompEliasGamma ? "gamma" : "omega", codeBits / n, 8.0 * e.bytes.size() / n,
          2.8 + 32.0 / d);
      EXPECT_LE(codeBits, bound) << "d=" << d << " code=" << c;
      EXPECT_LE(8.0 * e.bytes.size(), bound + nb * (32 + 31) + 32);
    }
  }
}

// The numbers of docs/adaptive.md: bits per element of the Elias code of the
// fixed-width levels (s = 2^(b-1)-1, max scale, d = 512) against the fixed
// width b + 32/d, on Gaussian and on heavy-tailed (Student t, 3 degrees of
// freedom) data. What must hold whatever the data: at b = 2 the levels are
// 0 or 1 and a zero costs no code of its own, so Elias beats 2 bits, and the
// heavier tail (more near-zero levels) costs fewer bits than the Gaussian.
TEST(EliasHost, BitsPerElementOfTheFixedWidthLevels) {
  const int d = 512;
  const size_t n = 1 << 16;
  std::vector<float> gauss = gctest::normal(n, 31);
  std::vector<float> heavy(n);
  std::mt19937_64 rng(32);
  std::student_t_distribution<float> t3(3.0f);
  for (float& v : heavy) v = t3(rng);
  printf(
      "[ elias ] d=512, n=65536  bits/element (everything on the wire: scales, offsets, codes, "
      "padding)\n");
  printf("[ elias ]  b  fixed  gauss:gamma  omega  t3:gamma  omega\n");
  for (int bits = 2; bits <= 8; ++bits) {
    double per[2][2];
    for (int data = 0; data < 2; ++data) {
      for (gradcompEliasCode_t c : {gradcompEliasGamma, gradcompEliasOmega}) {
        const auto p = params(gc::qsgd::levels(bits), d, c);
        per[data][c] = 8.0 * encode(data ? heavy : gauss, p, 5).bytes.size() / n;
      }
    }
    const double fixed = 8.0 * gradcompQsgdEncodedBytes(n, bits, d) / n;
    printf("[ elias ]  %d  %5.3f  %11.3f  %5.3f  %8.3f  %5.3f\n", bits, fixed, per[0][0], per[0][1],
           per[1][0], per[1][1]);
    EXPECT_LT(per[1][0], per[0][0]) << "bits=" << bits;
    if (bits == 2) EXPECT_LT(per[0][0], fixed);
  }
}

TEST(EliasHost, BadArgumentsNameTheValue) {
  std::vector<float> x(64, 1.0f);
  std::vector<uint32_t> out(1024);
  auto p = params(0, 512);
  size_t bytes;
  EXPECT_EQ(gradcompEliasEncodeHost(x.data(), ncclFloat32, nullptr, 64, &p, 0, out.data(),
                                    4 * out.size(), &bytes),
            gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), "levels=0 is out of range 1..65535");
  EXPECT_EQ(gradcompEliasMaxEncodedBytes(64, &p), 0u);
  p = params(7, 100);
  EXPECT_EQ(gradcompEliasEncodeHost(x.data(), ncclFloat32, nullptr, 64, &p, 0, out.data(),
                                    4 * out.size(), &bytes),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "bucketSize=100"), nullptr);
  p = params(7, 32);
  p.code = (gradcompEliasCode_t)5;
  EXPECT_EQ(gradcompEliasMaxEncodedBytes(64, &p), 0u);
  p = params(7, 32);
  EXPECT_EQ(
      gradcompEliasEncodeHost(x.data(), ncclFloat32, nullptr, 64, &p, 0, out.data(), 8, &bytes),
      gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "too small"), nullptr);
  EXPECT_EQ(gradcompEliasEncodeHost(x.data(), ncclInt32, nullptr, 64, &p, 0, out.data(),
                                    4 * out.size(), &bytes),
            gradcompInvalidArgument);
  // Truncated or corrupt encodings are refused, not read past.
  Encoded e = encode(gctest::normal(1000, 3), p, 9);
  std::vector<float> y(1000);
  EXPECT_EQ(gradcompEliasDecodeHost(e.bytes.data(), e.bytes.size() - 4, 1000, &p, y.data(), 0),
            gradcompInvalidArgument);
  std::vector<uint8_t> bad = e.bytes;
  const size_t nb = (1000 + 31) / 32;
  memset(bad.data() + 4 * (2 * nb + 1), 0, bad.size() - 4 * (2 * nb + 1));  // stream all zero
  EXPECT_EQ(gradcompEliasDecodeHost(bad.data(), bad.size(), 1000, &p, y.data(), 0),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "not a well-formed"), nullptr);
}

// The encoding records its levels (offsets[0]): a decode with other levels,
// which would scale every value by theirs / its (more levels) or refuse a
// level past its own (fewer), is refused naming both, out left alone. An
// encoding of no element records nothing and decodes with any levels.
TEST(EliasHost, DecodeWithOtherLevelsIsRefusedNamingBoth) {
  const auto p = params(7, 64);
  const Encoded e = encode(gctest::normal(200, 5), p, 2);
  for (int s : {1, 3, 6, 8, 15, 65535}) {
    SCOPED_TRACE(s);
    const auto q = params(s, 64);
    std::vector<float> out(200, 7.0f);
    EXPECT_EQ(gradcompEliasDecodeHost(e.bytes.data(), e.bytes.size(), 200, &q, out.data(), 1),
              gradcompInvalidArgument);
    EXPECT_EQ(std::string(gradcompGetLastError()),
              "the Elias encoding was made with levels=7 but is decoded with levels=" +
                  std::to_string(s) + ": decode with the params it was encoded with");
    for (float v : out) ASSERT_EQ(v, 7.0f);
  }
  // The same values as before the levels were recorded: the level words are
  // unchanged, only the decoder reads offsets[0] as levels.
  std::vector<float> out(200);
  ASSERT_EQ(gradcompEliasDecodeHost(e.bytes.data(), e.bytes.size(), 200, &p, out.data(), 0),
            gradcompSuccess);
  const Parsed parsed = parse(e, 200, p);
  for (size_t i = 0; i < 200; ++i) {
    const float v = (float)abs(parsed.level[i]) / 7.0f * parsed.scales[i / 64];
    ASSERT_EQ(out[i], parsed.level[i] < 0 ? -v : v) << i;
  }
  // A level word no encoder writes (past 65535): malformed bytes, not an
  // encoding of other levels. 0, what builds before 0.7.0 wrote there: an
  // old encoding, said so (a decoder without the word would read it right).
  for (uint32_t bad : {0u, 65536u}) {
    SCOPED_TRACE(bad);
    Encoded w = e;
    memcpy(w.bytes.data() + 4 * 4, &bad, 4);  // offsets[0], after 4 scales
    std::vector<float> kept(200, 7.0f);
    EXPECT_EQ(gradcompEliasDecodeHost(w.bytes.data(), w.bytes.size(), 200, &p, kept.data(), 1),
              gradcompInvalidArgument);
    const char* said = bad == 0 ? "made by a gradcomp before 0.7.0" : "not a well-formed Elias";
    EXPECT_NE(strstr(gradcompGetLastError(), said), nullptr) << gradcompGetLastError();
    for (float v : kept) ASSERT_EQ(v, 7.0f);
  }
  const Encoded none = encode({}, p, 2);
  const auto q = params(15, 64);
  EXPECT_EQ(gradcompEliasDecodeHost(none.bytes.data(), none.bytes.size(), 0, &q, out.data(), 0),
            gradcompSuccess);
}

// No encoder writes a scale with its sign bit set (max |x| and the L2 norm
// are >= +0, a non-finite bucket's is the positive NaN): such a bucket would
// decode with every sign flipped, so the encoding is refused and out left
// alone. -0 and a negative NaN alike.
TEST(EliasHost, ScaleWithItsSignBitSetIsRefused) {
  for (const auto scale : {gradcompEliasScaleMax, gradcompEliasScaleL2}) {
    const auto p = params(7, 64, gradcompEliasGamma, scale);
    const Encoded e = encode(gctest::normal(200, 5), p, 2);
    std::vector<float> y(200, 7.0f);
    ASSERT_EQ(gradcompEliasDecodeHost(e.bytes.data(), e.bytes.size(), 200, &p, y.data(), 0),
              gradcompSuccess);
    for (const uint32_t bits : {0xbf800000u, 0x80000000u, 0xffc00000u}) {
      std::vector<uint8_t> bad = e.bytes;
      memcpy(bad.data() + 4 * 2, &bits, 4);  // bucket 2's scale
      std::vector<float> out(200, 7.0f);
      EXPECT_EQ(gradcompEliasDecodeHost(bad.data(), bad.size(), 200, &p, out.data(), 0),
                gradcompInvalidArgument)
          << std::hex << bits;
      for (float v : out) ASSERT_EQ(v, 7.0f);
    }
  }
}

}  // namespace
