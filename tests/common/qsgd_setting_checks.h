// What the tests of the two-valued QSGD settings (GRADCOMP_ROUNDING in
// test_rounding.cc, GRADCOMP_LEVELS in test_levels.cc) share: the setting's
// parsing and validation, the encode entry points' refusal of a value that
// is neither, and nearest rounding's error bound with error feedback.
#pragma once

#include <gtest/gtest.h>
#include <math.h>

#include <initializer_list>
#include <string>
#include <vector>

#include "gradcomp.h"
#include "kernels/qsgd_math.cuh"
#include "tests/common/test_util.h"

namespace gctest {

// The setting `field` of gradcompConfig_t, read from `var`.
template <typename E>
struct TwoValuedSetting {
  E gradcompConfig_t::*field;
  const char* var;
  E first;                   // gradcompConfigInit's
  const char* firstOddCase;  // its name, in another case: read as first
  E second;
  const char* secondName;
};

// gradcompConfigInit gives s.first; gradcompConfigFromEnv reads s.var naming
// either value, and refuses `bad` with `badSentence`; gradcompConfigValidate
// refuses the field set to 2 with `validateSentence`.
template <typename E>
void expectSettingParses(const TwoValuedSetting<E>& s, const char* bad, const char* badSentence,
                         const char* validateSentence) {
  gradcompConfig_t c;
  ASSERT_EQ(gradcompConfigInit(&c), gradcompSuccess);
  EXPECT_EQ(c.*s.field, s.first);
  {
    ScopedEnv e(s.var, s.secondName);
    ASSERT_EQ(gradcompConfigFromEnv(&c), gradcompSuccess) << gradcompGetLastError();
    EXPECT_EQ(c.*s.field, s.second);
  }
  {
    ScopedEnv e(s.var, s.firstOddCase);
    ASSERT_EQ(gradcompConfigFromEnv(&c), gradcompSuccess) << gradcompGetLastError();
    EXPECT_EQ(c.*s.field, s.first);
  }
  {
    ScopedEnv e(s.var, bad);
    EXPECT_EQ(gradcompConfigFromEnv(&c), gradcompInvalidArgument);
    EXPECT_STREQ(gradcompGetLastError(), badSentence);
  }
  ASSERT_EQ(gradcompConfigInit(&c), gradcompSuccess);
  c.*s.field = (E)2;
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), validateSentence);
}

// The host and the device encode entry points, encode(host, x, r, n, bad,
// out) (4 bits, buckets of 32, error feedback) with 64 and with 0 elements,
// refuse each of `bads` with "<name>=<bad> is out of range 0..1
// (<enumerators>)" and write no residual.
template <typename E, typename Encode>
void expectEncodeRefuses(const char* name, const char* enumerators, std::initializer_list<E> bads,
                         const Encode& encode) {
  std::vector<float> x(64, 1.0f), r(64, 0.0f);
  std::vector<uint8_t> out(gradcompQsgdEncodedBytes(64, 4, 32));
  for (E bad : bads) {
    const std::string want = std::string(name) + "=" + std::to_string((int)bad) +
                             " is out of range 0..1 (" + enumerators + ")";
    for (size_t n : {(size_t)64, (size_t)0}) {
      for (bool host : {true, false}) {
        EXPECT_EQ(encode(host, x.data(), r.data(), n, bad, out.data()), gradcompInvalidArgument);
        EXPECT_EQ(gradcompGetLastError(), want);
      }
    }
  }
  for (float v : r) ASSERT_EQ(v, 0.0f) << "a refused call wrote the residual";
}

// Nearest rounding with error feedback over `steps` calls of 3000 fp32
// elements, for 2, 3, 4 and 8 bits and buckets of 32, 128 and 512:
// |decode - v| <= bound(e, i, v, s, d) for v = g + residual, and v = decode
// + new residual to fp32 rounding; some residual is nonzero.
// encode(g, r, n, bits, d, step) encodes with the residual r (updated);
// decode(e, n, bits, d) decodes it.
template <typename Encode, typename Decode, typename Bound>
void expectNearestBoundAndErrorFeedback(int steps, const Encode& encode, const Decode& decode,
                                        const Bound& bound) {
  const size_t n = 3000;
  for (int bits : {2, 3, 4, 8})
    for (int d : {32, 128, 512}) {
      SCOPED_TRACE(testing::Message() << "bits=" << bits << " d=" << d);
      const int s = gc::qsgd::levels(bits);
      std::vector<float> r(n, 0.0f);
      bool anyResidual = false;
      for (int step = 0; step < steps; ++step) {
        std::vector<float> g = normal(n, 700 + step, 1.0f + step % 5);
        std::vector<float> v(n);
        for (size_t i = 0; i < n; ++i) v[i] = g[i] + r[i];
        const std::vector<uint8_t> e = encode(g.data(), r.data(), n, bits, d, step);
        const std::vector<float> out = decode(e, n, bits, d);
        for (size_t i = 0; i < n; ++i) {
          ASSERT_LE(fabs((double)out[i] - v[i]), bound(e, i, v[i], s, d))
              << "step " << step << " i " << i;
          const float tol = 1.2e-7f * (fabsf(v[i]) + fabsf(r[i]) + fabsf(out[i]));
          ASSERT_LE(fabsf(out[i] + r[i] - v[i]), tol) << "step " << step << " i " << i;
          anyResidual |= r[i] != 0.0f;
        }
      }
      EXPECT_TRUE(anyResidual);
    }
}

}  // namespace gctest
