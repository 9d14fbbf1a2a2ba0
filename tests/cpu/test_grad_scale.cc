// gradcompCommSetGradScale: a loss scaler's factor on the gradients. With it
// set before each call, gradients scaled by S_t (changing by powers of two,
// as AMP's GradScaler does) give bit for bit S_t times the outputs of the
// unscaled gradients, for every method, algorithm and DQ-SGD mode: the state
// (residual, owner residual, DGC velocity and momentum, DQ-SGD statistics)
// follows the scale, and DGC clips at clipNorm * S. Without it, the state is
// in the old units and the outputs differ. Bad scales are refused with the
// value and range, changing nothing; a saved state records its scale.
#include <gtest/gtest.h>
#include <math.h>
#include <string.h>

#include <limits>
#include <string>
#include <vector>

#include "gradcomp.h"
#include "tests/common/cpu_world.h"
#include "tests/common/test_util.h"

namespace {

constexpr int kRanks = 4;
constexpr int kSteps = 12;
// GradScaler's kind of history: an initial scale, backoffs (x0.5) and a
// growth (x2), with a jump of several powers of two between.
const float kScales[kSteps] = {65536.0f, 65536.0f, 32768.0f, 16384.0f, 16384.0f, 32768.0f,
                               32768.0f, 1.0f,     0.25f,    0.25f,    1024.0f,  512.0f};

struct Case {
  const char* name;
  gradcompMethod_t method;
  gradcompAlgo_t algo;
  gradcompBitsMode_t bitsMode;
  bool reduceScatter;
  ncclDataType_t type;
  int localSize;  // 0: flat; L: nodes of L ranks (the hierarchy)
};

gradcompConfig_t configOf(const Case& k) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = k.method;
  cfg.algo = k.algo;
  cfg.minElements = 0;
  cfg.cpuTimeoutSec = 10.0f;
  cfg.bitsMode = k.bitsMode;
  cfg.bitsMin = 2;
  cfg.bitsMax = 8;
  cfg.bitsBudget = 4.0f;
  cfg.budgetWindow = 3;
  cfg.density = 0.02f;
  cfg.warmupSteps = 4;
  // Active on these gradients (norm ~ sqrt(n) = 64 per rank): DGC clips.
  cfg.clipNorm = 20.0f;
  cfg.localSize = k.localSize;
  return cfg;
}

constexpr size_t kCount = 4096;

// Rank r's unscaled gradient at step t, as floats exactly representable in
// the case's type (so that scaling by a power of two stays exact there).
std::vector<float> gradient(const Case& k, int r, int t) {
  std::vector<float> g = gctest::normal(kCount, 5000 + 37 * t + r);
  if (k.type == ncclBfloat16) {
    for (float& v : g) {
      uint32_t b;
      memcpy(&b, &v, 4);
      b &= 0xffff0000u;
      memcpy(&v, &b, 4);
    }
  }
  return g;
}

// Converts to the case's wire type and back (bf16 keeps the top 16 bits).
std::vector<uint16_t> toBf16(const std::vector<float>& x) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    uint32_t b;
    memcpy(&b, &x[i], 4);
    out[i] = (uint16_t)(b >> 16);
  }
  return out;
}
float fromBf16(uint16_t h) {
  const uint32_t b = (uint32_t)h << 16;
  float v;
  memcpy(&v, &b, 4);
  return v;
}

// One call on every rank with gradients times `scale`; each rank's output as
// floats. setScale: gradcompCommSetGradScale(scale) first.
std::vector<std::vector<float>> call(gctest::CpuWorld& w, const Case& k, int t, float scale,
                                     bool setScale) {
  std::vector<std::vector<float>> out(w.size());
  auto res = w.run([&](int r) {
    gradcompComm_t c = w.comm(r);
    if (setScale) {
      gradcompResult_t rc = gradcompCommSetGradScale(c, scale, nullptr);
      if (rc != gradcompSuccess) return rc;
    }
    std::vector<float> g = gradient(k, r, t);
    for (float& v : g) v *= scale;
    const size_t recv = k.reduceScatter ? kCount / w.size() : kCount;
    gradcompResult_t rc;
    if (k.type == ncclBfloat16) {
      std::vector<uint16_t> in = toBf16(g), o(recv);
      rc = k.reduceScatter ? gradcompReduceScatterKeyed(in.data(), o.data(), recv, ncclBfloat16,
                                                        ncclAvg, c, nullptr, 11)
                           : gradcompAllReduceKeyed(in.data(), o.data(), recv, ncclBfloat16,
                                                    ncclAvg, c, nullptr, 11);
      for (uint16_t h : o) out[r].push_back(fromBf16(h));
    } else {
      out[r].resize(recv);
      rc = k.reduceScatter ? gradcompReduceScatterKeyed(g.data(), out[r].data(), recv, ncclFloat32,
                                                        ncclAvg, c, nullptr, 11)
                           : gradcompAllReduceKeyed(g.data(), out[r].data(), recv, ncclFloat32,
                                                    ncclAvg, c, nullptr, 11);
    }
    return rc;
  });
  for (int r = 0; r < w.size(); ++r) EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r;
  return out;
}

// The first element (rank, index) where b is not bit for bit scale * a; "" if
// none.
std::string firstMismatch(const std::vector<std::vector<float>>& a,
                          const std::vector<std::vector<float>>& b, float scale) {
  for (size_t r = 0; r < a.size(); ++r) {
    if (a[r].size() != b[r].size()) return "rank " + std::to_string(r) + ": sizes differ";
    for (size_t i = 0; i < a[r].size(); ++i) {
      const float want = a[r][i] * scale;
      if (memcmp(&want, &b[r][i], 4) != 0) {
        return "rank " + std::to_string(r) + " element " + std::to_string(i) + ": " +
               std::to_string(b[r][i]) + " != " + std::to_string(scale) + " * " +
               std::to_string(a[r][i]);
      }
    }
  }
  return "";
}

class GradScale : public ::testing::TestWithParam<Case> {};

TEST_P(GradScale, ScaledGradientsGiveScaledOutputsBitForBit) {
  const Case& k = GetParam();
  const gradcompConfig_t cfg = configOf(k);
  gctest::CpuWorld plain(kRanks, cfg), scaled(kRanks, cfg);
  for (int t = 0; t < kSteps; ++t) {
    auto a = call(plain, k, t, 1.0f, false);
    auto b = call(scaled, k, t, kScales[t], true);
    const std::string bad = firstMismatch(a, b, kScales[t]);
    ASSERT_EQ(bad, "") << "step " << t << " at scale " << kScales[t];
  }
  for (int r = 0; r < kRanks; ++r) {
    float s = 0.0f;
    ASSERT_EQ(gradcompCommGetGradScale(scaled.comm(r), &s), gradcompSuccess);
    EXPECT_EQ(s, kScales[kSteps - 1]);
  }
}

// The same run without gradcompCommSetGradScale: from the first change of
// scale on, what the state carried is weighed by old / new and the outputs
// are no longer the scaled ones (what the test above would see without it).
TEST_P(GradScale, WithoutItAScaleChangeMisweighsTheState) {
  const Case& k = GetParam();
  const gradcompConfig_t cfg = configOf(k);
  gctest::CpuWorld plain(kRanks, cfg), scaled(kRanks, cfg);
  int firstBad = -1;
  for (int t = 0; t < kSteps && firstBad < 0; ++t) {
    auto a = call(plain, k, t, 1.0f, false);
    auto b = call(scaled, k, t, kScales[t], false);
    if (!firstMismatch(a, b, kScales[t]).empty()) firstBad = t;
  }
  // Steps 0 and 1 are at the first scale; the state is empty before step 0
  // (any scale is exact there) and in step 0's units at step 1. DGC clips
  // these gradients: at clipNorm, not clipNorm * S, from step 0.
  EXPECT_EQ(firstBad, k.method == gradcompMethodDgc ? 0 : 2);
}

const Case kCases[] = {
    {"QsgdTwoShot", gradcompMethodQsgd, gradcompAlgoTwoShot, gradcompBitsFixed, false, ncclFloat32,
     0},
    {"QsgdRing", gradcompMethodQsgd, gradcompAlgoRing, gradcompBitsFixed, false, ncclFloat32, 0},
    {"QsgdTwoShotBf16", gradcompMethodQsgd, gradcompAlgoTwoShot, gradcompBitsFixed, false,
     ncclBfloat16, 0},
    {"QsgdDynamicBits", gradcompMethodQsgd, gradcompAlgoTwoShot, gradcompBitsDynamic, false,
     ncclFloat32, 0},
    {"QsgdBudgetBits", gradcompMethodQsgd, gradcompAlgoTwoShot, gradcompBitsBudget, false,
     ncclFloat32, 0},
    {"QsgdReduceScatter", gradcompMethodQsgd, gradcompAlgoAuto, gradcompBitsFixed, true,
     ncclFloat32, 0},
    {"QsgdHier", gradcompMethodQsgd, gradcompAlgoHier, gradcompBitsFixed, false, ncclFloat32, 2},
    {"Topk", gradcompMethodTopk, gradcompAlgoAuto, gradcompBitsFixed, false, ncclFloat32, 0},
    {"Randk", gradcompMethodRandk, gradcompAlgoAuto, gradcompBitsFixed, false, ncclFloat32, 0},
    {"Dgc", gradcompMethodDgc, gradcompAlgoAuto, gradcompBitsFixed, false, ncclFloat32, 0},
    {"DgcReduceScatter", gradcompMethodDgc, gradcompAlgoAuto, gradcompBitsFixed, true, ncclFloat32,
     0},
    {"DgcHier", gradcompMethodDgc, gradcompAlgoHier, gradcompBitsFixed, false, ncclFloat32, 2},
};

INSTANTIATE_TEST_SUITE_P(Methods, GradScale, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

gradcompConfig_t dgcConfig() {
  return configOf(kCases[9]);
}

// A scale outside 2^-60..2^60, or not a number, is refused naming it; the
// state and the scale stay as they were.
TEST(GradScaleArgs, BadScalesAreRefusedAndChangeNothing) {
  const Case& k = kCases[9];
  gctest::CpuWorld w(kRanks, dgcConfig());
  call(w, k, 0, 8.0f, true);
  const auto before = gctest::savedState(w.comm(0));
  const float bad[] = {0.0f, -1.0f, NAN, INFINITY, -INFINITY, 0x1p61f, 0x1p-61f, 1e-30f};
  for (float s : bad) {
    EXPECT_EQ(gradcompCommSetGradScale(w.comm(0), s, nullptr), gradcompInvalidArgument) << s;
    const std::string err = gradcompGetLastError();
    EXPECT_NE(err.find("scale="), std::string::npos) << err;
    EXPECT_NE(err.find("2^-60..2^60"), std::string::npos) << err;
    float now = 0.0f;
    ASSERT_EQ(gradcompCommGetGradScale(w.comm(0), &now), gradcompSuccess);
    EXPECT_EQ(now, 8.0f);
  }
  EXPECT_EQ(gctest::savedState(w.comm(0)), before);
  // The range's ends are taken.
  EXPECT_EQ(gradcompCommSetGradScale(w.comm(0), 0x1p60f, nullptr), gradcompSuccess);
  EXPECT_EQ(gradcompCommSetGradScale(w.comm(0), 0x1p-60f, nullptr), gradcompSuccess);
  EXPECT_EQ(gradcompCommSetGradScale(nullptr, 2.0f, nullptr), gradcompInvalidArgument);
  EXPECT_EQ(gradcompCommGetGradScale(w.comm(0), nullptr), gradcompInvalidArgument);
  float s = 0.0f;
  EXPECT_EQ(gradcompCommGetGradScale(nullptr, &s), gradcompInvalidArgument);
}

// A saved state records the scale its arrays are in: a comm that loads it
// takes that scale and goes on bit for bit as the comm that saved it, and a
// later change of scale rescales what it loaded.
TEST(GradScaleArgs, ASavedStateCarriesItsScale) {
  const Case& k = kCases[9];
  const gradcompConfig_t cfg = dgcConfig();
  gctest::CpuWorld a(kRanks, cfg), b(kRanks, cfg);
  for (int t = 0; t < 3; ++t) call(a, k, t, kScales[t], true);
  std::vector<std::vector<uint8_t>> blobs;
  for (int r = 0; r < kRanks; ++r) blobs.push_back(gctest::savedState(a.comm(r)));
  auto res = b.run(
      [&](int r) { return gradcompCommLoadState(b.comm(r), blobs[r].data(), blobs[r].size()); });
  for (auto rc : res) ASSERT_EQ(rc, gradcompSuccess);
  float s = 0.0f;
  ASSERT_EQ(gradcompCommGetGradScale(b.comm(1), &s), gradcompSuccess);
  EXPECT_EQ(s, kScales[2]);
  for (int t = 3; t < 7; ++t) {
    auto x = call(a, k, t, kScales[t], true);
    auto y = call(b, k, t, kScales[t], true);
    ASSERT_EQ(firstMismatch(x, y, 1.0f), "") << "step " << t;
  }
  // A reset keeps the scale (it is the gradients', not the state's).
  ASSERT_EQ(gradcompCommResetState(b.comm(0)), gradcompSuccess);
  ASSERT_EQ(gradcompCommGetGradScale(b.comm(0), &s), gradcompSuccess);
  EXPECT_EQ(s, kScales[6]);
}

// A reset keeps the scale: it is the caller's gradients' (a GradScaler keeps
// its scale over a skipped step or a restart from fresh residuals), not the
// state's. The calls after a reset are bit for bit those of a new comm given
// the same scale, with no second gradcompCommSetGradScale; a comm at scale 1
// clips the same scaled gradients at the unscaled bound, and differs.
TEST(GradScaleArgs, AResetKeepsTheScale) {
  const Case& k = kCases[9];
  const gradcompConfig_t cfg = dgcConfig();
  constexpr float kScale = 1024.0f;
  gctest::CpuWorld w(kRanks, cfg), fresh(kRanks, cfg), unscaled(kRanks, cfg);
  for (int t = 0; t < 3; ++t) call(w, k, t, kScale, true);
  auto res = w.run([&](int r) { return gradcompCommResetState(w.comm(r)); });
  for (auto rc : res) ASSERT_EQ(rc, gradcompSuccess);
  for (int r = 0; r < kRanks; ++r) {
    float s = 0.0f;
    ASSERT_EQ(gradcompCommGetGradScale(w.comm(r), &s), gradcompSuccess);
    EXPECT_EQ(s, kScale) << "rank " << r;
  }
  bool clipsOtherwise = false;
  for (int t = 3; t < 8; ++t) {
    const auto x = call(w, k, t, kScale, false);
    const auto y = call(fresh, k, t, kScale, t == 3);
    const auto z = call(unscaled, k, t, kScale, false);
    ASSERT_EQ(firstMismatch(y, x, 1.0f), "") << "step " << t;
    clipsOtherwise = clipsOtherwise || !firstMismatch(y, z, 1.0f).empty();
  }
  EXPECT_TRUE(clipsOtherwise) << "the scale changed nothing: the test would pass either way";
}

// The scale record of a blob is checked as the rest: 0, NaN or a second
// record is refused naming it, and the comm keeps its state and scale.
TEST(GradScaleArgs, ABadScaleRecordIsRefused) {
  const Case& k = kCases[9];
  gctest::CpuWorld w(kRanks, dgcConfig());
  call(w, k, 0, 4.0f, true);
  const std::vector<uint8_t> good = gctest::savedState(w.comm(0));
  // The scale record is the last (24 bytes: tag 3, 0, size 24, f32, u32 0).
  ASSERT_GE(good.size(), 112u + 24u);
  const size_t at = good.size() - 24;
  uint32_t tag = 0;
  memcpy(&tag, good.data() + at, 4);
  ASSERT_EQ(tag, 3u);
  float stored = 0.0f;
  memcpy(&stored, good.data() + at + 16, 4);
  EXPECT_EQ(stored, 4.0f);
  ASSERT_EQ(gradcompCommSetGradScale(w.comm(0), 2.0f, nullptr), gradcompSuccess);
  const std::vector<uint8_t> now = gctest::savedState(w.comm(0));
  for (float v : {0.0f, NAN, 0x1p70f}) {
    std::vector<uint8_t> b = good;
    memcpy(b.data() + at + 16, &v, 4);
    gctest::reseal(b);
    EXPECT_EQ(gradcompCommLoadState(w.comm(0), b.data(), b.size()), gradcompInvalidArgument);
    const std::string err = gradcompGetLastError();
    EXPECT_NE(err.find("scale record"), std::string::npos) << err;
    EXPECT_EQ(gctest::savedState(w.comm(0)), now);
  }
  // Two scale records.
  std::vector<uint8_t> two = good;
  two.insert(two.end(), good.end() - 24, good.end());
  uint64_t records = 0, total = two.size();
  memcpy(&records, two.data() + 40, 8);
  ++records;
  memcpy(two.data() + 40, &records, 8);
  memcpy(two.data() + 16, &total, 8);
  gctest::reseal(two);
  EXPECT_EQ(gradcompCommLoadState(w.comm(0), two.data(), two.size()), gradcompInvalidArgument);
  EXPECT_NE(std::string(gradcompGetLastError()).find("second scale record"), std::string::npos);
  float s = 0.0f;
  ASSERT_EQ(gradcompCommGetGradScale(w.comm(0), &s), gradcompSuccess);
  EXPECT_EQ(s, 2.0f);
  // The good blob loads, with its scale.
  ASSERT_EQ(gradcompCommLoadState(w.comm(0), good.data(), good.size()), gradcompSuccess);
  ASSERT_EQ(gradcompCommGetGradScale(w.comm(0), &s), gradcompSuccess);
  EXPECT_EQ(s, 4.0f);
}

// Unscaled comms write no scale record: their blobs are what builds before
// the record wrote (and read).
// DGC clips at clipNorm * scale / sqrt(nranks) as a float: a threshold that
// rounds below the smallest float (clipNorm=1e-30 under scale 2^-60 on 4
// ranks: 4e-49) clips at that float, not at 0, which is "no clipping". Until
// 2026-12-07 such a comm sent the gradients whole (|out| ~ 6e-18 here).
TEST(GradScaleArgs, AClipThresholdBelowTheSmallestFloatStillClips) {
  for (bool reduceScatter : {false, true}) {
    SCOPED_TRACE(reduceScatter ? "reduce-scatter" : "allreduce");
    gradcompConfig_t cfg;
    gradcompConfigInit(&cfg);
    cfg.method = gradcompMethodDgc;
    cfg.minElements = 0;
    cfg.cpuTimeoutSec = 10.0f;
    cfg.density = 0.5f;
    cfg.clipNorm = 1e-30f;
    const int N = 4;
    const float scale = 0x1p-60f;
    gctest::CpuWorld w(N, cfg);
    std::vector<std::vector<float>> in(N), out(N);
    for (int r = 0; r < N; ++r) {
      in[r] = gctest::normal(kCount, 70 + r);
      for (float& v : in[r]) v *= scale;
      out[r].assign(reduceScatter ? kCount / N : kCount, 0.0f);
    }
    auto res = w.run([&](int r) {
      gradcompResult_t rc = gradcompCommSetGradScale(w.comm(r), scale, nullptr);
      if (rc != gradcompSuccess) return rc;
      return reduceScatter ? gradcompReduceScatter(in[r].data(), out[r].data(), kCount / N,
                                                   ncclFloat32, ncclSum, w.comm(r), nullptr)
                           : gradcompAllReduce(in[r].data(), out[r].data(), kCount, ncclFloat32,
                                               ncclSum, w.comm(r), nullptr);
    });
    for (auto rc : res) ASSERT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
    // Each rank's clipped gradient has norm at most the smallest float, so
    // each of its entries too; the sum of N of them at most N times it.
    const float bound = N * std::numeric_limits<float>::denorm_min();
    for (int r = 0; r < N; ++r) {
      for (size_t i = 0; i < out[r].size(); ++i) {
        ASSERT_LE(fabsf(out[r][i]), bound) << "rank " << r << " element " << i;
      }
    }
  }
}

TEST(GradScaleArgs, NoRecordAtScaleOne) {
  const Case& k = kCases[0];
  gctest::CpuWorld w(kRanks, configOf(k));
  call(w, k, 0, 1.0f, false);
  const auto one = gctest::savedState(w.comm(0));
  ASSERT_EQ(gradcompCommSetGradScale(w.comm(0), 2.0f, nullptr), gradcompSuccess);
  EXPECT_EQ(gctest::savedState(w.comm(0)).size(), one.size() + 24);
  ASSERT_EQ(gradcompCommSetGradScale(w.comm(0), 1.0f, nullptr), gradcompSuccess);
  EXPECT_EQ(gctest::savedState(w.comm(0)), one);
}

}  // namespace
