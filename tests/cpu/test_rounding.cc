// QSGD nearest rounding (GRADCOMP_ROUNDING=nearest): the host codecs follow
// the rule level = floor(r) + (frac(r) > 1/2), ties down, draw nothing, err
// by at most scale/(2s) per element, keep the error-feedback invariant, and
// contract (||C(x) - x||^2 <= d/(4s^2) ||x||^2) when d <= 4s^2. The config
// refuses nearest where nothing would carry its bias to later steps.
#include <gtest/gtest.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include <string>
#include <vector>

#include "gradcomp.h"
#include "gradcomp/elias.h"
#include "gradcomp/reference.h"
#include "kernels/elias_math.cuh"
#include "kernels/qsgd_math.cuh"
#include "plugin/codecs/elias.h"
#include "plugin/codecs/qsgd.h"
#include "plugin/comm.h"
#include "tests/common/qsgd_setting_checks.h"
#include "tests/common/ref_algos.h"
#include "tests/common/test_util.h"

namespace {

using gc::DType;
using gctest::ref::dec;
using gctest::ref::encNearest;

// The library's host encode with nearest rounding.
std::vector<uint8_t> encodeNearest(const void* x, DType t, float* res, size_t n, int bits, int d,
                                   uint64_t key) {
  std::vector<uint8_t> out(gradcompQsgdEncodedBytes(n, bits, d) + 1, 0xAB);
  gc::host::qsgdEncode(x, t, res, n, bits, d, key, true, false, out.data());
  EXPECT_EQ(out.back(), 0xAB) << "encoder wrote past encodedBytes";
  out.pop_back();
  return out;
}

std::vector<uint8_t> refNearest(const void* x, DType t, float* res, size_t n, int bits, int d) {
  std::vector<uint8_t> out(gradcompQsgdEncodedBytes(n, bits, d), 0);
  encNearest(x, t, res, n, bits, d, out.data());
  return out;
}

std::vector<float> decodeAll(const std::vector<uint8_t>& e, size_t n, int bits, int d) {
  std::vector<float> out(n);
  dec(e, n, bits, d, out.data(), false);
  return out;
}

// A bucket whose scale is exactly s (rec = 1, r = |x|): levels are the
// rule's on hand-picked ratios, ties (frac exactly 1/2) rounding down.
TEST(RoundingNearest, HandPickedRatiosAndTies) {
  const int bits = 4, s = gc::qsgd::levels(bits), d = 32;
  ASSERT_EQ(s, 7);
  struct Case {
    float x;
    int level;  // floor(|x|) + (frac > 1/2)
  } cases[] = {{7.0f, 7},   {2.5f, 2},
               {-2.5f, 2},  {3.5f, 3},
               {0.5f, 0},   {-0.5f, 0},
               {0.49f, 0},  {0.51f, 1},
               {6.5f, 6},   {6.75f, 7},
               {1.0f, 1},   {0.0f, 0},
               {-1.25f, 1}, {nextafterf(2.5f, 3.0f), 3},
               {5.5f, 5},   {-6.5f, 6}};
  std::vector<float> x(d, 0.0f);
  const size_t nc = sizeof(cases) / sizeof(cases[0]);
  for (size_t i = 0; i < nc; ++i) x[i] = cases[i].x;
  auto e = encodeNearest(x.data(), DType::F32, nullptr, d, bits, d, 99);
  float scale;
  memcpy(&scale, e.data(), 4);
  ASSERT_EQ(scale, 7.0f);
  const uint32_t* words = reinterpret_cast<const uint32_t*>(e.data() + 4);
  for (size_t i = 0; i < nc; ++i) {
    const uint32_t code = gc::qsgd::getCode(words, i, bits);
    EXPECT_EQ((int)(code & (uint32_t)s), cases[i].level) << "x=" << cases[i].x;
    const bool neg = cases[i].level != 0 && cases[i].x < 0;
    EXPECT_EQ((code >> (bits - 1)) & 1u, neg ? 1u : 0u) << "x=" << cases[i].x;
  }
}

// Random inputs of every type, with and without a residual, awkward counts:
// the library's bytes and residual are the serial rule's, whatever the key.
TEST(RoundingNearest, CodesAndResidualFollowTheRuleForAnyKey) {
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (int bits : {2, 3, 4, 5, 8})
      for (int d : {32, 64, 128, 512})
        for (bool ef : {false, true}) {
          SCOPED_TRACE(testing::Message()
                       << "dtype=" << (int)t << " bits=" << bits << " d=" << d << " ef=" << ef);
          const size_t n = 5 * (size_t)d + 17;
          // Every bucket's max is s (so r = |x| exactly there) and its first
          // entries sit on half levels: exact ties without a residual.
          const int s = gc::qsgd::levels(bits);
          std::vector<float> f = gctest::normal(n, bits * 31 + d, 0.4f * s);
          const float c = (float)s - 0.25f;
          for (size_t i = 0; i < n; ++i) {
            const size_t k = i % d;
            if (k == 0)
              f[i] = (float)s;
            else if (k <= (size_t)s)
              f[i] = (k % 2 ? -1.0f : 1.0f) * ((float)(k - 1) + 0.5f);
            else
              f[i] = fmaxf(-c, fminf(c, f[i]));
          }
          std::vector<uint16_t> h(n);
          for (size_t i = 0; i < n; ++i)
            h[i] = t == DType::F16 ? gc::floatToHalf(f[i]) : gc::floatToBf16(f[i]);
          const void* x = t == DType::F32 ? (const void*)f.data() : (const void*)h.data();
          const std::vector<float> r0 =
              ef ? gctest::normal(n, 17 + d, 0.1f) : std::vector<float>(n);
          std::vector<float> rRef = r0;
          auto want = refNearest(x, t, ef ? rRef.data() : nullptr, n, bits, d);
          for (uint64_t key : {0ull, 1ull, 0xdeadbeefcafef00dull}) {
            std::vector<float> r = r0;
            auto got = encodeNearest(x, t, ef ? r.data() : nullptr, n, bits, d, key);
            ASSERT_EQ(got, want) << "key " << key;
            ASSERT_EQ(memcmp(r.data(), rRef.data(), n * 4), 0) << "residual, key " << key;
          }
          // Stochastic rounding of the same input depends on the key: the
          // comparison above can tell the two rules apart.
          auto st1 = gctest::ref::enc(x, t, nullptr, n, bits, d, 1);
          auto st2 = gctest::ref::enc(x, t, nullptr, n, bits, d, 2);
          EXPECT_NE(st1, st2);
        }
}

// |decode(C(v)) - v| <= scale/(2s) per element (to a few fp32 roundings of
// the scale), and v = decode + new residual to fp32 rounding (error
// feedback keeps what was not sent, as for stochastic rounding).
TEST(RoundingNearest, HalfLevelBoundAndErrorFeedbackInvariant) {
  gctest::expectNearestBoundAndErrorFeedback(
      20,
      [](const float* g, float* r, size_t n, int bits, int d, int step) {
        return encodeNearest(g, DType::F32, r, n, bits, d, step);
      },
      decodeAll,
      [](const std::vector<uint8_t>& e, size_t i, float, int s, int d) {
        float scale;
        memcpy(&scale, e.data() + 4 * (i / d), 4);
        return (double)scale / (2.0 * s) + 4e-7 * scale;
      });
}

// Contraction: per bucket sum (C(x)-x)^2 <= len*scale^2/(4s^2) and
// scale^2 <= ||x_b||^2, so ||C(x)-x||^2 <= d/(4s^2) ||x||^2, < ||x||^2 when
// d < 4s^2 (error feedback's condition). Normal, uniform and heavy-tailed
// buckets; the slack covers fp32 rounding of the decode (relative 1e-5).
TEST(RoundingNearest, ContractionWhenBucketAtMostFourSSquared) {
  for (int bits : {3, 4, 5, 8}) {
    const int s = gc::qsgd::levels(bits);
    for (int d : {32, 64, 128, 192, 512, 8192}) {
      if (d > 4 * s * s) continue;
      for (int kind = 0; kind < 3; ++kind) {
        SCOPED_TRACE(testing::Message() << "bits=" << bits << " d=" << d << " kind=" << kind);
        const size_t n = 8 * (size_t)d;
        std::vector<float> x = gctest::normal(n, 1000 * bits + d + kind);
        for (size_t i = 0; i < n; ++i) {
          if (kind == 1) x[i] = fmodf(fabsf(x[i]) * 1000.0f, 2.0f) - 1.0f;  // roughly uniform
          if (kind == 2) x[i] = x[i] * x[i] * x[i];                         // heavy tails
        }
        auto out =
            decodeAll(encodeNearest(x.data(), DType::F32, nullptr, n, bits, d, 5), n, bits, d);
        double err = 0, norm = 0;
        for (size_t i = 0; i < n; ++i) {
          err += ((double)out[i] - x[i]) * ((double)out[i] - x[i]);
          norm += (double)x[i] * x[i];
        }
        const double delta = (double)d / (4.0 * s * s);
        EXPECT_LE(err, delta * norm * (1 + 1e-5)) << "err/norm=" << err / norm;
      }
    }
  }
  EXPECT_EQ(4 * 7 * 7, 196);  // 4 bits: buckets up to 196 contract (128 does)
}

// Elias draws the same levels: with the max scale and s = 2^(b-1)-1 its
// nearest encode decodes to the fixed-width nearest encode's values, with
// the same residual, and the key does not matter.
TEST(RoundingNearest, EliasLevelsAreTheFixedWidthRule) {
  for (int bits : {2, 3, 4, 6})
    for (int d : {32, 96, 512})
      for (size_t n : {(size_t)1, (size_t)95, (size_t)1000, (size_t)4097}) {
        SCOPED_TRACE(testing::Message() << "bits=" << bits << " d=" << d << " n=" << n);
        std::vector<float> x = gctest::normal(n, 40 + n + bits);
        std::vector<float> r0 = gctest::normal(n, 9, 0.3f);
        std::vector<float> rQ = r0;
        auto q = refNearest(x.data(), DType::F32, rQ.data(), n, bits, d);
        const auto want = decodeAll(q, n, bits, d);
        const gc::elias::Params p{gc::qsgd::levels(bits), d, gc::elias::Code::Gamma,
                                  gc::elias::Norm::Max};
        gradcompEliasParams_t pub{p.s, d, gradcompEliasGamma, gradcompEliasScaleMax};
        std::vector<uint32_t> buf(gradcompEliasMaxEncodedBytes(n, &pub) / 4 + 1);
        for (uint64_t key : {3ull, 0x9e3779b97f4a7c15ull}) {
          std::vector<float> rE = r0;
          const size_t bytes =
              gc::host::eliasEncode(x.data(), DType::F32, rE.data(), n, p, key, true, buf.data());
          std::vector<float> got(n);
          ASSERT_EQ(gradcompEliasDecodeHost(buf.data(), bytes, n, &pub, got.data(), 0),
                    gradcompSuccess);
          ASSERT_EQ(memcmp(got.data(), want.data(), n * 4), 0) << "key " << key;
          ASSERT_EQ(memcmp(rE.data(), rQ.data(), n * 4), 0) << "residual, key " << key;
        }
      }
}

// ---- public codec entry points

// gradcompQsgdEncodeEFRoundingHost: nearest gives the serial rule's bytes
// and residual whatever the seed; stochastic gives gradcompQsgdEncodeTypedHost's.
TEST(RoundingNearest, PublicHostEntryPointFollowsTheRoundingItNames) {
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (int bits : {2, 3, 4, 8})
      for (int d : {32, 512})
        for (bool ef : {false, true}) {
          SCOPED_TRACE(testing::Message()
                       << "dtype=" << (int)t << " bits=" << bits << " d=" << d << " ef=" << ef);
          const size_t n = 3 * (size_t)d + 5;
          const std::vector<float> f = gctest::normal(n, 7 * bits + d);
          std::vector<uint16_t> h(n);
          for (size_t i = 0; i < n; ++i)
            h[i] = t == DType::F16 ? gc::floatToHalf(f[i]) : gc::floatToBf16(f[i]);
          const void* x = t == DType::F32 ? (const void*)f.data() : (const void*)h.data();
          const std::vector<float> r0 = gctest::normal(n, 3 + d, 0.1f);
          const size_t bytes = gradcompQsgdEncodedBytes(n, bits, d);
          std::vector<float> rRef = r0;
          const auto want = refNearest(x, t, ef ? rRef.data() : nullptr, n, bits, d);
          for (uint64_t seed : {1ull, 0x123456789abcdefull}) {
            std::vector<float> r = r0;
            std::vector<uint8_t> got(bytes);
            ASSERT_EQ(gradcompQsgdEncodeEFRoundingHost(x, gctest::ref::nccl(t),
                                                       ef ? r.data() : nullptr, n, bits, d, seed,
                                                       gradcompRoundNearest, got.data()),
                      gradcompSuccess)
                << gradcompGetLastError();
            ASSERT_EQ(got, want) << "seed " << seed;
            ASSERT_EQ(memcmp(r.data(), rRef.data(), n * 4), 0) << "residual, seed " << seed;

            std::vector<float> rs = r0, rt = r0;
            std::vector<uint8_t> gs(bytes), gt(bytes);
            ASSERT_EQ(gradcompQsgdEncodeEFRoundingHost(x, gctest::ref::nccl(t),
                                                       ef ? rs.data() : nullptr, n, bits, d, seed,
                                                       gradcompRoundStochastic, gs.data()),
                      gradcompSuccess);
            ASSERT_EQ(gradcompQsgdEncodeTypedHost(x, gctest::ref::nccl(t), ef ? rt.data() : nullptr,
                                                  n, bits, d, seed, gt.data()),
                      gradcompSuccess);
            ASSERT_EQ(gs, gt) << "stochastic, seed " << seed;
            ASSERT_EQ(memcmp(rs.data(), rt.data(), n * 4), 0) << "stochastic residual";
            ASSERT_NE(gs, want) << "stochastic rounding drew nothing";
          }
        }
}

// Both entry points, host and GPU, refuse a rounding outside the enum with
// the same sentence, before reading any pointer (so also for count 0, and
// the GPU one without a GPU). Values the enum holds in C++ (2, its
// sentinel): a negative one cannot be made here without undefined behaviour,
// so a C caller's -1 is tests/capi/enum_args.c's.
TEST(RoundingNearest, EntryPointsRefuseAnUnknownRounding) {
  gctest::expectEncodeRefuses(
      "rounding", "gradcompRoundStochastic=0, gradcompRoundNearest=1",
      {(gradcompRounding_t)2, gradcompRoundingEnumMax},
      [](bool host, const float* x, float* r, size_t n, gradcompRounding_t bad, uint8_t* out) {
        return host ? gradcompQsgdEncodeEFRoundingHost(x, ncclFloat32, r, n, 4, 32, 1, bad, out)
                    : gradcompQsgdEncodeEFRounding(x, ncclFloat32, r, n, 4, 32, 1, bad, out,
                                                   nullptr);
      });
}

// ---- config

TEST(RoundingConfig, EnvParsesAndDefaultsToStochastic) {
  gctest::expectSettingParses(
      gctest::TwoValuedSetting<gradcompRounding_t>{&gradcompConfig_t::rounding, "GRADCOMP_ROUNDING",
                                                   gradcompRoundStochastic, "Stochastic",
                                                   gradcompRoundNearest, "nearest"},
      "round", "GRADCOMP_ROUNDING=round is not one of stochastic|nearest",
      "rounding=2 (GRADCOMP_ROUNDING) is not one of stochastic=0|nearest=1");
}

TEST(RoundingConfig, NearestWithoutErrorFeedbackIsRefused) {
  gctest::ScopedEnv a("GRADCOMP_ROUNDING", "nearest"), b("GRADCOMP_EF", "0");
  gradcompConfig_t c;
  ASSERT_EQ(gradcompConfigInit(&c), gradcompSuccess);
  // Byte for byte, padding included: an assignment need not copy the padding
  // that the memcmp below compares.
  gradcompConfig_t before;
  memcpy(&before, &c, sizeof(c));
  EXPECT_EQ(gradcompConfigFromEnv(&c), gradcompInvalidArgument);
  EXPECT_EQ(memcmp(&c, &before, sizeof(c)), 0) << "a refused parse changes nothing";
  EXPECT_STREQ(gradcompGetLastError(),
               "rounding=nearest (GRADCOMP_ROUNDING) with errorFeedback=0 (GRADCOMP_EF) would "
               "never send entries below half a QSGD level: set GRADCOMP_EF=1 or "
               "GRADCOMP_ROUNDING=stochastic");
  // The sparse methods do not quantize levels: nothing to refuse.
  gctest::ScopedEnv m("GRADCOMP_METHOD", "topk");
  EXPECT_EQ(gradcompConfigFromEnv(&c), gradcompSuccess) << gradcompGetLastError();
}

TEST(RoundingConfig, NearestWithoutOwnerResidualOnlyWhereOneQuantization) {
  gradcompConfig_t c;
  ASSERT_EQ(gradcompConfigInit(&c), gradcompSuccess);
  c.rounding = gradcompRoundNearest;
  c.ownerResidual = 0;
  for (gradcompAlgo_t a :
       {gradcompAlgoAuto, gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoHier}) {
    c.algo = a;
    EXPECT_EQ(gradcompConfigValidate(&c), gradcompInvalidArgument) << a;
    EXPECT_EQ(std::string(gradcompGetLastError()),
              std::string("rounding=nearest (GRADCOMP_ROUNDING) with ownerResidual=0 "
                          "(GRADCOMP_OWNER_RESIDUAL) would bias the second quantization of algo=") +
                  (a == gradcompAlgoAuto      ? "auto"
                   : a == gradcompAlgoTwoShot ? "twoshot"
                   : a == gradcompAlgoRing    ? "ring"
                                              : "hier") +
                  " (GRADCOMP_ALGO; twoshot, ring, hier and auto quantize twice): set "
                  "GRADCOMP_OWNER_RESIDUAL=1, GRADCOMP_ALGO=allgather or "
                  "GRADCOMP_ROUNDING=stochastic");
  }
  c.algo = gradcompAlgoAllgather;  // one quantization
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompSuccess) << gradcompGetLastError();
  c.algo = gradcompAlgoTwoShot;
  c.elias = 1;  // Elias allgather: one quantization
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompSuccess) << gradcompGetLastError();
  c.elias = 0;
  c.rounding = gradcompRoundStochastic;  // unbiased: allowed as before
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompSuccess) << gradcompGetLastError();
}

// A caller built against a header before rounding was appended has a
// layout ending at cpuTimeoutSec (0.2.0, rounding then filled its padding) or
// earlier. Here pipelineBytes' layout (136 bytes, before cpuTimeoutSec too):
// the bytes after it say nearest and a 5 s timeout, and the library reads
// neither; the comms round stochastically and wait the default 120 s. A
// structSize ending where rounding begins (140) is no header's layout and is
// refused, naming it, before any field is read.
TEST(RoundingConfig, ConfigOfAnOlderLayoutNeverHasRoundingRead) {
  gradcompConfig_t c;
  ASSERT_EQ(gradcompConfigInit(&c), gradcompSuccess);
  c.rounding = gradcompRoundNearest;
  c.cpuTimeoutSec = 5.0f;
  ASSERT_EQ(gradcompConfigValidate(&c), gradcompSuccess) << gradcompGetLastError();
  c.structSize = offsetof(gradcompConfig_t, cpuTimeoutSec);
  ASSERT_EQ(c.structSize, 136u);
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompSuccess) << gradcompGetLastError();
  gradcompComm_t comms[2] = {nullptr, nullptr};
  ASSERT_EQ(gradcompCommCreateCpu(2, &c, comms), gradcompSuccess) << gradcompGetLastError();
  for (gradcompComm_t comm : comms) {
    EXPECT_EQ(comm->cfg.rounding, gradcompRoundStochastic);
    EXPECT_EQ(comm->cfg.cpuTimeoutSec, 120.0f);
    EXPECT_EQ(comm->cfg.structSize, sizeof(gradcompConfig_t));
    gradcompCommDestroy(comm);
  }

  c.structSize = offsetof(gradcompConfig_t, rounding);
  const std::string expect =
      "config structSize=140 is not the size of a gradcompConfig_t this library (0.7.0) knows "
      "(120, 128, 136, 144, 152, 160 or 168 bytes): start from gradcompConfigInit, which passes "
      "sizeof(gradcompConfig_t)";
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompInvalidArgument);
  EXPECT_EQ(std::string(gradcompGetLastError()), expect);
  comms[0] = comms[1] = nullptr;
  EXPECT_EQ(gradcompCommCreateCpu(2, &c, comms), gradcompInvalidArgument);
  EXPECT_EQ(std::string(gradcompGetLastError()), expect);
  EXPECT_EQ(comms[0], nullptr);
  EXPECT_EQ(comms[1], nullptr);
}

}  // namespace
