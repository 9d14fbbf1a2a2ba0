// Sparse methods on the host reference and the CPU backend: selectors on
// awkward data, exact mass bookkeeping, exact top-k against a sort, rand-k
// agreement and uniformity, DGC extras against a direct per-step model, and
// the sparse allreduce for N = 1..8 against a serial reference.
#include <gtest/gtest.h>
#include <math.h>
#include <string.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gradcomp.h"
#include "kernels/sparse_math.cuh"
#include "plugin/algorithms/algorithms.h"
#include "plugin/codecs/sparse.h"
#include "plugin/comm.h"
#include "tests/common/cpu_world.h"
#include "tests/common/ref_algos.h"
#include "tests/common/ref_sparse.h"
#include "tests/common/test_util.h"

namespace {

using gc::DType;
using gc::sparse::absKey;
using gc::sparse::kEmptySlot;
using gc::sparse::Plan;

// Filled slots come first, strictly increasing, then only empty slots.
void checkSlots(const std::vector<uint32_t>& idx, uint64_t selected, size_t n) {
  ASSERT_LE(selected, idx.size());
  for (size_t j = 0; j < idx.size(); ++j) {
    if (j < selected) {
      ASSERT_LT(idx[j], n);
      if (j) ASSERT_LT(idx[j - 1], idx[j]);
    } else {
      ASSERT_EQ(idx[j], kEmptySlot) << "slot " << j;
    }
  }
}

// Sort-based exact top-k: largest |v| bit keys, ties by lower index.
std::vector<uint32_t> sortTopk(const std::vector<float>& v, size_t k) {
  std::vector<uint32_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t a, uint32_t b) { return absKey(v[a]) > absKey(v[b]); });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

std::vector<std::vector<float>> awkwardData(size_t n) {
  std::vector<std::vector<float>> d;
  d.push_back(gctest::normal(n, 1));
  d.push_back(std::vector<float>(n, 0.5f));  // all equal
  d.push_back(std::vector<float>(n, 0.0f));  // all zeros
  std::mt19937_64 rng(7);
  std::cauchy_distribution<float> cauchy(0.0f, 1.0f);
  std::vector<float> heavy(n);
  for (auto& x : heavy) x = cauchy(rng);
  d.push_back(heavy);  // heavy tails
  auto outlier = gctest::normal(n, 2, 1e-3f);
  outlier[n / 3] = 1e30f;
  d.push_back(outlier);  // one huge outlier
  auto nan = gctest::normal(n, 3);
  nan[n / 2] = std::numeric_limits<float>::quiet_NaN();
  d.push_back(nan);  // NaN present
  auto quant = gctest::normal(n, 4);
  for (auto& x : quant) x = roundf(x * 2) / 2;  // many ties
  d.push_back(quant);
  return d;
}

TEST(SparseSelect, ExactEqualsSortReference) {
  for (size_t n : {1, 2, 7, 500, 4097, 20000}) {
    for (const auto& v : awkwardData(n)) {
      for (double density : {1e-9, 0.001, 0.01, 0.3, 1.0}) {
        Plan p = gc::sparse::makePlan(n, density, true, 2, 0.01);
        std::vector<uint32_t> idx(p.kmax);
        uint64_t sel = 0;
        gc::host::selectExact(v.data(), n, p.k, idx.data(), &sel);
        ASSERT_EQ(sel, p.k) << "n=" << n << " density=" << density;
        ASSERT_EQ(idx, sortTopk(v, p.k)) << "n=" << n << " density=" << density;
      }
    }
  }
}

TEST(SparseSelect, KAtLeastOneWhenDensityRoundsToZero) {
  Plan p = gc::sparse::makePlan(1000, 1e-6, false, 2, 0.01);
  EXPECT_EQ(p.k, 1u);
  EXPECT_GE(p.kmax, 1u);
  p = gc::sparse::makePlan(1, 0.01, true, 2, 0.01);
  EXPECT_EQ(p.k, 1u);
  EXPECT_EQ(p.sample, 1u);
}

// The float settings count as the decimals they were given as: 0.001f is
// 0.0010000000475, whose ceiling times 100000 was 101 slots, not 100; a
// double product a hair above a whole number (0.07 * 100) is that number; a
// density that is no whole share still rounds up; warm-up's powers of 1/4
// are exact. Every result against the count a decimal reading gives.
TEST(SparseSelect, FloatSettingsCountAsTheirDecimals) {
  EXPECT_EQ(gc::sparse::floatDecimal((double)0.001f), 0.001);
  EXPECT_EQ(gc::sparse::floatDecimal((double)0.07f), 0.07);
  EXPECT_EQ(gc::sparse::floatDecimal((double)1.5f), 1.5);
  EXPECT_EQ(gc::sparse::floatDecimal(0.00390625), 0.00390625);
  EXPECT_EQ(gc::sparse::floatDecimal(0.1), 0.1);  // no float: as it is
  // 65/512, a float of 9 digits: its 8-digit neighbours 0.12695312 and
  // 0.12695313 both round to it; it is neither (65 of 512 slots, not 66).
  EXPECT_EQ(gc::sparse::floatDecimal(0.126953125), 0.126953125);
  EXPECT_EQ(gc::sparse::makePlan(512, 0.126953125f, true, 1.0, 1.0).k, 65u);
  struct Case {
    size_t n;
    float density, oversample, sampleRate;
    size_t k, kmax, sample, keep;
  } cases[] = {
      {100000, 0.001f, 2.0f, 0.01f, 100, 200, 64000, 64},
      {1000, 0.07f, 1.5f, 0.01f, 70, 105, 1000, 70},
      {64000000, 0.001f, 2.0f, 0.001f, 64000, 128000, 64000, 64},
      {1001, 0.001f, 2.0f, 0.01f, 2, 3, 1001, 2},
  };
  for (const Case& c : cases) {
    const Plan p = gc::sparse::makePlan(c.n, c.density, false, c.oversample, c.sampleRate);
    EXPECT_EQ(p.k, c.k) << "n=" << c.n << " density=" << c.density;
    EXPECT_EQ(p.kmax, c.kmax) << "n=" << c.n << " density=" << c.density;
    EXPECT_EQ(p.sample, c.sample) << "n=" << c.n << " density=" << c.density;
    EXPECT_EQ(p.keep, c.keep) << "n=" << c.n << " density=" << c.density;
  }
}

// sparsePlan works the settings' decimals out once per setting: a comm's
// plan is the one makePlan gives from its floats, call after call, when two
// comms of other settings take turns (each setting alone changed), and
// through DGC's warm-up.
TEST(SparseSelect, PlanOfACommIsMakePlansFromItsSettings) {
  struct Settings {
    float density, oversample, sampleRate;
  } settings[] = {{0.001f, 2.0f, 0.01f},   {0.07f, 2.0f, 0.01f}, {0.07f, 1.5f, 0.01f},
                  {0.07f, 1.5f, 1e-4f},    {0.126953125f, 1, 1}, {0.001f, 2.0f, 0.01f},
                  {1e-6f, 16.0f, 0.0001f}, {1.0f, 1.0f, 1.0f},   {0.3f, 3.3f, 0.3f}};
  for (int method : {gradcompMethodTopk, gradcompMethodDgc}) {
    for (int select : {gradcompSelectThreshold, gradcompSelectExact}) {
      for (int round = 0; round < 2; ++round) {
        for (const Settings& st : settings) {
          gradcompComm c;
          ASSERT_EQ(gradcompConfigInit(&c.cfg), gradcompSuccess);
          c.cfg.method = (gradcompMethod_t)method;
          c.cfg.select = (gradcompSelect_t)select;
          c.cfg.density = st.density, c.cfg.oversample = st.oversample;
          c.cfg.sampleRate = st.sampleRate;
          c.cfg.warmupSteps = method == gradcompMethodDgc ? 8 : 0;
          for (uint64_t calls : {0, 2, 4, 6, 8, 100}) {
            for (size_t n : {1, 1000, 100001, 64000000}) {
              const double density =
                  method == gradcompMethodDgc
                      ? gc::sparse::warmupDensity(st.density, c.cfg.warmupSteps, calls)
                      : (double)st.density;
              const Plan want = gc::sparse::makePlan(n, density, select == gradcompSelectExact,
                                                     st.oversample, st.sampleRate);
              DType vt;
              const Plan got = gc::sparsePlan(c, n, calls, &vt);
              EXPECT_EQ(memcmp(&got, &want, sizeof want), 0)
                  << "n=" << n << " density=" << st.density << " oversample=" << st.oversample
                  << " sampleRate=" << st.sampleRate << " calls=" << calls << ": k=" << got.k
                  << " kmax=" << got.kmax << " sample=" << got.sample
                  << " where makePlan has k=" << want.k << " kmax=" << want.kmax
                  << " sample=" << want.sample;
            }
          }
        }
      }
    }
  }
}

// A comm works its sparse settings' decimals out where its config is set
// (comm creation, and the hierarchy's inter-node comm); a cfg set or changed
// afterwards, as a comm built by hand has, is planned from as it is, never
// from the decimals of settings it no longer holds.
TEST(SparseSelect, CommsDecimalsFollowItsConfig) {
  gradcompConfig_t cfg;
  ASSERT_EQ(gradcompConfigInit(&cfg), gradcompSuccess);
  cfg.method = gradcompMethodTopk;
  cfg.density = 0.001f, cfg.oversample = 1.5f, cfg.sampleRate = 0.07f;
  gradcompComm_t comms[1];
  ASSERT_EQ(gradcompCommCreateCpu(1, &cfg, comms), gradcompSuccess);
  EXPECT_TRUE(comms[0]->sparseDecimals.cameFrom(cfg));
  EXPECT_EQ(comms[0]->sparseDecimals.s.density, 0.001);
  EXPECT_EQ(comms[0]->sparseDecimals.s.oversample, 1.5);
  EXPECT_EQ(comms[0]->sparseDecimals.s.sampleRate, 0.07);
  gradcompCommDestroy(comms[0]);

  gradcompComm c;
  c.cfg = cfg;
  c.sparseDecimals = gc::SparseDecimals::of(c.cfg);
  DType vt;
  EXPECT_EQ(gc::sparsePlan(c, 100000, 0, &vt).k, 100u);
  // Each setting changed alone after the decimals were worked out.
  c.cfg.density = 0.07f;
  EXPECT_EQ(gc::sparsePlan(c, 100000, 0, &vt).k, 7000u);
  EXPECT_EQ(gc::sparsePlan(c, 100000, 0, &vt).kmax, 10500u);
  c.cfg.oversample = 2.0f;
  EXPECT_EQ(gc::sparsePlan(c, 100000, 0, &vt).kmax, 14000u);
  c.cfg.sampleRate = 0.01f;
  EXPECT_EQ(gc::sparsePlan(c, 100000, 0, &vt).sample,
            gc::sparse::makePlan(100000, 0.07, false, 2.0, 0.01).sample);
  EXPECT_NE(gc::sparse::makePlan(100000, 0.07, false, 2.0, 0.01).sample,
            gc::sparse::makePlan(100000, 0.07, false, 2.0, 0.07).sample);
  // A comm built by hand with no decimals worked out plans from its cfg.
  gradcompComm bare;
  bare.cfg = cfg;
  EXPECT_EQ(gc::sparsePlan(bare, 100000, 0, &vt).k, 100u);
}

TEST(SparseSelect, ThresholdOnTypicalDataWithinHalfKToKmax) {
  for (size_t n : {50000, 200000}) {
    for (double density : {0.001, 0.01, 0.05}) {
      for (int dist = 0; dist < 3; ++dist) {
        std::vector<float> v = dist == 0   ? gctest::normal(n, 11 + n)
                               : dist == 1 ? gctest::uniform(n, 12, -1, 1)
                                           : awkwardData(n)[3];
        Plan p = gc::sparse::makePlan(n, density, false, 2, 0.01);
        for (uint64_t step = 0; step < 4; ++step) {
          std::vector<uint32_t> idx(p.kmax);
          uint64_t sel = 0;
          gc::host::selectThreshold(v.data(), n, p, gc::deriveKey(5, step, 0, 0), idx.data(), &sel);
          checkSlots(idx, sel, n);
          EXPECT_GE(sel, (p.k + 1) / 2) << "n=" << n << " d=" << density << " dist=" << dist;
          EXPECT_LE(sel, p.kmax);
          // Everything selected is at least as large as everything left out
          // up to the last filled index (one threshold).
          uint32_t minSel = ~0u;
          for (uint64_t j = 0; j < sel; ++j) minSel = std::min(minSel, absKey(v[idx[j]]));
          size_t j = 0;
          for (size_t i = 0; i < (sel ? idx[sel - 1] : 0); ++i) {
            if (j < sel && idx[j] == i) {
              ++j;
              continue;
            }
            ASSERT_LT(absKey(v[i]), minSel);
          }
        }
      }
    }
  }
}

// Weight gradients are column-structured (dW = delta x^T: column j scales
// with input feature j). A matrix whose row length shares a large factor
// with the sample stride (3200 columns, stride 100) showed a fixed-stride
// sample only 32 of its columns, and the count strayed from k by factors of
// 0.1 to 6. Each sample is drawn at random within its stratum, so the count
// stays in [k/2, kmax] as on i.i.d. data.
TEST(SparseSelect, ThresholdOnColumnScaledMatricesWithinHalfKToKmax) {
  const size_t rows = 512, cols = 3200, n = rows * cols;
  std::mt19937_64 rng(21);
  std::lognormal_distribution<float> colScale(0.0f, 1.0f);
  std::vector<float> scale(cols);
  for (float& c : scale) c = colScale(rng);
  std::vector<float> v = gctest::normal(n, 22);
  for (size_t i = 0; i < n; ++i) v[i] *= scale[i % cols];
  const Plan p = gc::sparse::makePlan(n, 0.01, false, 2, 0.01);
  ASSERT_EQ(p.stride, 100u);
  std::vector<uint32_t> idx(p.kmax);
  for (uint64_t step = 0; step < 16; ++step) {
    uint64_t sel = 0;
    gc::host::selectThreshold(v.data(), n, p, gc::deriveKey(5, step, 0, 0), idx.data(), &sel);
    EXPECT_GE(sel, (p.k + 1) / 2) << "step " << step;
    EXPECT_LE(sel, p.kmax) << "step " << step;
    // Below kmax, so every qualifying entry went: not the overflow's cut.
    EXPECT_LT(sel, p.kmax) << "step " << step;
  }
}

TEST(SparseSelect, ThresholdAwkwardCases) {
  const size_t n = 30000;
  auto data = awkwardData(n);
  Plan p = gc::sparse::makePlan(n, 0.01, false, 2, 0.01);
  auto run = [&](const std::vector<float>& v, const Plan& pl, std::vector<uint32_t>* idx) {
    idx->assign(pl.kmax, 0);
    uint64_t sel = 0;
    gc::host::selectThreshold(v.data(), v.size(), pl, 99, idx->data(), &sel);
    checkSlots(*idx, sel, v.size());
    return sel;
  };
  std::vector<uint32_t> idx;
  // All equal: everything qualifies, the first kmax in index order go.
  EXPECT_EQ(run(data[1], p, &idx), p.kmax);
  EXPECT_EQ(idx.back(), p.kmax - 1);
  // All zeros: nothing to send.
  EXPECT_EQ(run(data[2], p, &idx), 0u);
  // One huge outlier: selected.
  run(data[4], p, &idx);
  EXPECT_TRUE(std::binary_search(idx.begin(), idx.end(), (uint32_t)(n / 3)));
  // NaN ranks highest: selected, so it reaches the output.
  run(data[5], p, &idx);
  EXPECT_TRUE(std::binary_search(idx.begin(), idx.end(), (uint32_t)(n / 2)));
  // n smaller than the minimum sample: sampled whole, the threshold is exact.
  auto small = gctest::normal(700, 8);
  Plan ps = gc::sparse::makePlan(700, 0.05, false, 2, 0.01);
  EXPECT_EQ(ps.sample, 700u);
  EXPECT_EQ(run(small, ps, &idx), ps.k);
  EXPECT_EQ(std::vector<uint32_t>(idx.begin(), idx.begin() + ps.k), sortTopk(small, ps.k));
  // n = 1.
  Plan p1 = gc::sparse::makePlan(1, 0.01, false, 2, 0.01);
  EXPECT_EQ(run({-3.0f}, p1, &idx), 1u);
  EXPECT_EQ(idx[0], 0u);
}

// More entries qualify than there are slots (all equal) and v holds NaN/Inf
// past the first kmax: the slots carry the non-finite entries alone, so the
// call's output is non-finite, as docs/sparse.md promises; the serial
// reference agrees. Without non-finite entries the first kmax stand.
TEST(SparseSelect, ThresholdOverflowSendsTheNonFiniteEntriesAlone) {
  const size_t n = 30000;
  Plan p = gc::sparse::makePlan(n, 0.01, false, 2, 0.01);
  auto run = [&](const std::vector<float>& v, std::vector<uint32_t>* idx) {
    idx->assign(p.kmax, 0);
    uint64_t sel = 0;
    gc::host::selectThreshold(v.data(), v.size(), p, 99, idx->data(), &sel);
    checkSlots(*idx, sel, v.size());
    std::vector<uint32_t> got(idx->begin(), idx->begin() + sel);
    EXPECT_EQ(got, gctest::ref::refTopkThreshold(v, p, 99));
    return sel;
  };
  std::vector<uint32_t> idx;
  std::vector<float> v(n, 0.5f);
  for (size_t i = 0; i < n; i += 3) v[i] = -0.5f;
  v[n - 3] = -INFINITY;
  v[n - 1] = std::numeric_limits<float>::quiet_NaN();
  ASSERT_GT(p.kmax, 2u);
  EXPECT_EQ(run(v, &idx), 2u);
  EXPECT_EQ(idx[0], (uint32_t)(n - 3));
  EXPECT_EQ(idx[1], (uint32_t)(n - 1));
  EXPECT_EQ(idx[2], gc::sparse::kEmptySlot);
  // More non-finite entries than slots: the first kmax of them.
  std::vector<float> infs(n, INFINITY);
  infs[0] = 1.0f;
  EXPECT_EQ(run(infs, &idx), p.kmax);
  EXPECT_EQ(idx[0], 1u);
  EXPECT_EQ(idx.back(), (uint32_t)p.kmax);
  // Overflow without a non-finite entry: the first kmax in index order.
  std::vector<float> flat(n, 0.5f);
  EXPECT_EQ(run(flat, &idx), p.kmax);
  EXPECT_EQ(idx.back(), (uint32_t)(p.kmax - 1));
  // The sample sees only zeros (threshold key 0: every nonzero entry
  // qualifies), more than kmax nonzero entries lie off the sample, and a NaN
  // after them: the NaN alone.
  std::vector<float> sparseV(n, 0.0f);
  {
    const size_t off = gc::sparse::sampleOffset(99, p.offsetRange);
    std::vector<bool> sampled(n, false);
    for (size_t j = 0; j < p.sample; ++j)
      sampled[gc::sparse::sampleIndex(99, off, j, p.stride)] = true;
    size_t placed = 0, last = 0;
    for (size_t i = 0; i < n && placed < p.kmax + 10; ++i) {
      if (!sampled[i]) sparseV[i] = 1.0f, ++placed, last = i;
    }
    ASSERT_EQ(placed, p.kmax + 10);
    size_t at = last + 1;
    while (at < n && sampled[at]) ++at;
    ASSERT_LT(at, n);
    sparseV[at] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_EQ(run(sparseV, &idx), 1u);
    EXPECT_EQ(idx[0], (uint32_t)at);
  }
  // A non-finite entry without overflow is selected by the usual rule.
  auto one = gctest::normal(n, 3);
  one[n - 1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_GT(run(one, &idx), 1u);
  EXPECT_TRUE(std::binary_search(idx.begin(), idx.end(), (uint32_t)(n - 1)));
}

TEST(SparseCommit, SentPlusResidualIsExact) {
  const size_t n = 20000;
  auto v0 = gctest::normal(n, 21, 1e3f);
  v0[5] = 1e6f;     // fp16 overflow: saturated, the rest stays
  v0[6] = 3e-9f;    // below fp16's range
  v0[7] = 3.4e38f;  // finite, but rounds to bf16's Inf: saturated too
  v0[8] = -3.4e38f;
  for (DType vt : {DType::F32, DType::F16, DType::BF16}) {
    std::vector<float> v = v0;
    std::vector<float> u(n, 1.0f);
    std::vector<uint32_t> idx(n / 10);
    uint64_t sel = 0;
    gc::host::selectExact(v.data(), n, idx.size(), idx.data(), &sel);
    idx[0] = 5, idx[1] = 6, idx[2] = 7, idx[3] = 8;
    std::sort(idx.begin(), idx.end());
    idx.erase(std::unique(idx.begin(), idx.end()), idx.end());
    std::vector<uint16_t> val(idx.size() * 2);
    gc::host::sparseCommit(idx.data(), idx.size(), vt, val.data(), v.data(), u.data());
    std::vector<bool> sent(n, false);
    for (size_t j = 0; j < idx.size(); ++j) {
      const uint32_t i = idx[j];
      sent[i] = true;
      const float w = gc::loadAsFloat(val.data(), vt, j);
      ASSERT_TRUE(std::isfinite(w)) << "vt=" << (int)vt << " i=" << i << " sent " << w;
      ASSERT_EQ((double)w + (double)v[i], (double)v0[i]) << "vt=" << (int)vt << " i=" << i;
      ASSERT_EQ(u[i], 0.0f);
      if (vt == DType::F32) ASSERT_EQ(v[i], 0.0f);
    }
    for (size_t i = 0; i < n; ++i) {
      if (!sent[i]) ASSERT_EQ(v[i], v0[i]);
      if (!sent[i]) ASSERT_EQ(u[i], 1.0f);
    }
  }
}

// Upper/lower chi-square quantiles (Wilson-Hilferty) for df degrees of
// freedom at standard normal quantile z.
double chi2Quantile(double df, double z) {
  double a = 2.0 / (9.0 * df);
  return df * pow(1.0 - a + z * sqrt(a), 3);
}

// How the threshold selector holds its count near k, against the law of its
// sample (docs/sparse.md): m = max(sampleRate n, 1024, 64/density) entries,
// the threshold the keep = ceil(density m)-th largest of them, every entry at
// or above it taken. Fresh i.i.d. data each call, so the m sampled positions
// (chosen by the key alone) hold a simple random sample of the n values, and
// the count is the population rank of the sample's keep-th largest:
//   E[C] = keep (n+1)/(m+1),  Var[C] = keep (m-keep+1)(n+1)(n-m) / ((m+1)^2 (m+2))
// (order statistics of a sample without replacement from ranks 1..n), about
// k (1 +- 1/sqrt(keep)): k (1 +- 1/8) at the least keep. Over S calls the
// mean is within 5 standard errors and the sample variance within the
// chi-square bounds at z = +-5. A threshold taken from another order
// statistic moves the mean; one from a smaller (larger) sample widens
// (narrows) the spread. The slots (oversample 4) never cap the count here.
TEST(SparseSelect, ThresholdCountFollowsItsSampleLaw) {
  const size_t n = 100000;
  const double density = 0.01;
  const Plan p = gc::sparse::makePlan(n, density, false, 4.0, 1e-4);
  ASSERT_EQ(p.k, 1000u);
  ASSERT_EQ(p.sample, 6400u);  // 64/density: above 1024 and 1e-4 n
  ASSERT_EQ(p.keep, 64u);
  ASSERT_EQ(p.kmax, 4000u);
  const double m = (double)p.sample, keep = (double)p.keep, N = (double)n;
  const double mean = keep * (N + 1) / (m + 1);
  const double var = keep * (m - keep + 1) * (N + 1) * (N - m) / ((m + 1) * (m + 1) * (m + 2));
  EXPECT_LE(sqrt(var) / p.k, 1.0 / 8);
  const int S = 400;
  std::vector<uint32_t> idx(p.kmax);
  double sum = 0, sumSq = 0;
  for (int step = 0; step < S; ++step) {
    const std::vector<float> v = gctest::normal(n, 7000 + step);
    uint64_t sel = 0;
    gc::host::selectThreshold(v.data(), n, p, gc::deriveKey(9, step, 0, 0), idx.data(), &sel);
    ASSERT_LT(sel, p.kmax) << "step " << step << ": the count was capped";
    sum += (double)sel;
    sumSq += (double)sel * sel;
  }
  const double got = sum / S, gotVar = (sumSq - S * got * got) / (S - 1);
  printf("[ sparse ] threshold count over %d calls: mean %.1f (law %.1f), sd %.1f (law %.1f)\n", S,
         got, mean, sqrt(gotVar), sqrt(var));
  EXPECT_NEAR(got, mean, 5 * sqrt(var / S)) << "mean count against keep (n+1)/(m+1)";
  EXPECT_LT((S - 1) * gotVar / var, chi2Quantile(S - 1, 5.0)) << "count spread";
  EXPECT_GT((S - 1) * gotVar / var, chi2Quantile(S - 1, -5.0)) << "count spread";
}

TEST(SparseRandk, DistinctAndUniform) {
  const size_t n = 1000, k = 10, T = 5000;
  std::vector<double> count(n, 0);
  std::vector<uint32_t> idx(k);
  for (uint64_t step = 0; step < T; ++step) {
    gc::host::randkIndices(n, k, gc::deriveKey(77, step, 0, gc::sparse::kRandkStream), idx.data());
    std::vector<uint32_t> s = idx;
    std::sort(s.begin(), s.end());
    ASSERT_TRUE(std::adjacent_find(s.begin(), s.end()) == s.end()) << "step " << step;
    for (uint32_t i : idx) {
      ASSERT_LT(i, n);
      count[i] += 1;
    }
  }
  // Each step draws k distinct indices, so a cell's count has variance
  // T*p*(1-p)*(n-k)/(n-1)... close to T*p(1-p); Pearson's statistic with the
  // multinomial expectation E = T*k/n is then chi-square with n-1 degrees of
  // freedom scaled by (1 - k/n). Bounds at z = +-3.29 (p = 0.0005 each side).
  const double E = (double)T * k / n;
  double chi2 = 0;
  for (double c : count) chi2 += (c - E) * (c - E) / E;
  chi2 /= 1.0 - (double)k / n;
  EXPECT_LT(chi2, chi2Quantile(n - 1, 3.29));
  EXPECT_GT(chi2, chi2Quantile(n - 1, -3.29));
}

// The index map from its documented construction, written out with the
// test's own SplitMix64 (anchored to the generator's published first output
// for seed 0): a 4-round Feistel network on the smallest even power of two
// 2^(2h) >= n (h >= 1), halves of h bits, round function F_j(r) = the low h
// bits of SplitMix64 output (j << 32 | r) under the key; cycle-walked into
// [0, n). Every image is then the library's, and for small n the map is a
// bijection of [0, n).
uint64_t testSplitMix(uint64_t key, uint64_t i) {
  uint64_t z = key + (i + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint32_t testFeistel(uint64_t key, uint32_t x, uint32_t n) {
  int h = 1;
  while ((1ull << (2 * h)) < n) ++h;
  const uint32_t mask = (uint32_t)((1ull << h) - 1);
  do {
    uint32_t l = x >> h, r = x & mask;
    for (uint64_t j = 0; j < 4; ++j) {
      const uint32_t t = l ^ ((uint32_t)testSplitMix(key, j << 32 | r) & mask);
      l = r;
      r = t;
    }
    x = l << h | r;
  } while (x >= n);
  return x;
}

TEST(SparseRandk, IndicesFollowTheDocumentedFeistelNetwork) {
  ASSERT_EQ(testSplitMix(0, 0), 0xe220a8397b1dcdafull);
  for (uint32_t n : {1u, 2u, 3u, 4u, 5u, 16u, 17u, 1000u, 4096u, 4097u, 1000003u}) {
    const uint64_t keys[] = {0, 1, 0x5eed, gc::deriveKey(77, 3, 0, gc::sparse::kRandkStream)};
    for (uint64_t key : keys) {
      const size_t k = std::min<size_t>(n, 3000);
      std::vector<uint32_t> idx(k);
      gc::host::randkIndices(n, k, key, idx.data());
      std::vector<bool> seen(n, false);
      for (size_t j = 0; j < k; ++j) {
        ASSERT_EQ(idx[j], testFeistel(key, (uint32_t)j, n))
            << "n=" << n << " key=" << key << " j=" << j;
        ASSERT_LT(idx[j], n);
        ASSERT_FALSE(seen[idx[j]]) << "n=" << n << " j=" << j;
        seen[idx[j]] = true;
      }
    }
  }
}

// ------------------------------------------------------------ the comm path
gradcompConfig_t sparseConfig(gradcompMethod_t method) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = method;
  cfg.minElements = 0;
  cfg.seed = 1234;
  return cfg;
}

std::vector<float> toType(const std::vector<float>& x, DType t, std::vector<uint16_t>* half) {
  std::vector<float> out(x.size());
  half->resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    if (t == DType::F32) {
      out[i] = x[i];
    } else {
      gc::storeFromFloat(half->data(), t, i, x[i]);
      out[i] = gc::loadAsFloat(half->data(), t, i);
    }
  }
  return out;
}

void checkTopkAllReduce(int N, DType t, ncclDataType_t vtype, gradcompSelect_t select, bool avg,
                        size_t n, double density, int ef) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " t=" << (int)t << " vt=" << vtype
                                  << " sel=" << select << " avg=" << avg << " n=" << n
                                  << " d=" << density << " ef=" << ef);
  gradcompConfig_t cfg = sparseConfig(gradcompMethodTopk);
  cfg.select = select;
  cfg.valueType = vtype;
  cfg.density = (float)density;
  cfg.errorFeedback = ef;
  gctest::CpuWorld world(N, cfg);
  std::vector<gctest::ref::SparseState> ref(N);
  std::vector<std::vector<float>> f32(N, std::vector<float>(n));
  std::vector<std::vector<uint16_t>> h16(N);
  for (int step = 0; step < 3; ++step) {
    std::vector<std::vector<float>> g(N);
    for (int r = 0; r < N; ++r) {
      g[r] = toType(gctest::normal(n, 100 * step + r + n, 1.0f + r), t, &h16[r]);
      f32[r] = g[r];
    }
    // Serial reference.
    gctest::ref::SparseCall call;
    const std::vector<float> expect =
        gctest::ref::refSparse(cfg, t, avg, (uint64_t)step, g, ref, &call);
    const bool dense = call.dense;
    auto rc = world.run([&](int r) {
      void* buf = t == DType::F32 ? (void*)f32[r].data() : (void*)h16[r].data();
      return gradcompAllReduce(buf, buf, n, gctest::ref::nccl(t), avg ? ncclAvg : ncclSum,
                               world.comm(r), nullptr);
    });
    for (int r = 0; r < N; ++r) ASSERT_EQ(rc[r], gradcompSuccess) << gradcompGetLastError();
    for (int r = 0; r < N; ++r) {
      for (size_t i = 0; i < n; ++i) {
        float got = t == DType::F32 ? f32[r][i] : gc::loadAsFloat(h16[r].data(), t, i);
        ASSERT_EQ(memcmp(&got, &expect[i], 4), 0) << "rank " << r << " step " << step << " i " << i
                                                  << " got " << got << " want " << expect[i];
      }
    }
    if (N > 1) {
      gradcompStats_t st;
      ASSERT_EQ(gradcompGetStats(world.comm(0), &st), gradcompSuccess);
      EXPECT_EQ(st.targetLast, call.k);
      EXPECT_EQ(st.denseFallbacks, dense ? (uint64_t)step + 1 : 0u);
      // Residuals follow the reference exactly.
      for (int r = 0; r < N && ef; ++r) {
        const gc::BufferState& s = world.comm(r)->states.begin()->second;
        ASSERT_EQ(memcmp(s.residual, ref[r].v.data(), n * 4), 0) << "rank " << r;
      }
    }
  }
}

TEST(SparseAllReduceCpu, TopkAllRanksEqualsSerialReference) {
  for (int N = 1; N <= 8; ++N) {
    checkTopkAllReduce(N, DType::F32, ncclFloat32, gradcompSelectThreshold, false, 5000, 0.01, 1);
    checkTopkAllReduce(N, DType::F16, ncclFloat16, gradcompSelectExact, true, 3001, 0.02, 1);
  }
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    for (ncclDataType_t vt : {ncclFloat32, ncclFloat16, ncclBfloat16}) {
      checkTopkAllReduce(3, t, vt, gradcompSelectThreshold, true, 4000, 0.01, 1);
    }
  }
  checkTopkAllReduce(4, DType::BF16, ncclFloat32, gradcompSelectExact, false, 2000, 0.3,
                     1);  // dense
  checkTopkAllReduce(4, DType::F32, ncclFloat32, gradcompSelectThreshold, false, 5000, 0.01, 0);
}

// Any sparse config against tests/common/ref_sparse.h, bit for bit: output,
// residual, momentum, target and selected counts, over `steps` calls (the
// DGC warm-up moves the density, so the dense fallback comes and goes).
void checkSparseBitExact(int N, const gradcompConfig_t& cfg, DType t, bool avg, size_t n,
                         int steps) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " method=" << cfg.method << " sel=" << cfg.select
                                  << " t=" << (int)t << " avg=" << avg << " n=" << n);
  gctest::CpuWorld world(N, cfg);
  std::vector<gctest::ref::SparseState> ref(N);
  std::vector<std::vector<float>> f32(N);
  std::vector<std::vector<uint16_t>> h16(N);
  uint64_t denseCalls = 0;
  for (int step = 0; step < steps; ++step) {
    std::vector<std::vector<float>> g(N);
    for (int r = 0; r < N; ++r) {
      g[r] = toType(gctest::normal(n, 1000 * step + 17 * r + n, 1.0f + 0.5f * r), t, &h16[r]);
      f32[r] = g[r];
    }
    gctest::ref::SparseCall call;
    const auto expect = gctest::ref::refSparse(cfg, t, avg, (uint64_t)step, g, ref, &call);
    auto rc = world.run([&](int r) {
      void* buf = t == DType::F32 ? (void*)f32[r].data() : (void*)h16[r].data();
      return gradcompAllReduce(buf, buf, n, gctest::ref::nccl(t), avg ? ncclAvg : ncclSum,
                               world.comm(r), nullptr);
    });
    for (int r = 0; r < N; ++r) ASSERT_EQ(rc[r], gradcompSuccess) << gradcompGetLastError();
    for (int r = 0; r < N; ++r) {
      for (size_t i = 0; i < n; ++i) {
        float got = t == DType::F32 ? f32[r][i] : gc::loadAsFloat(h16[r].data(), t, i);
        ASSERT_EQ(memcmp(&got, &expect[i], 4), 0) << "rank " << r << " step " << step << " i " << i
                                                  << " got " << got << " want " << expect[i];
      }
      const gc::BufferState& s = world.comm(r)->states.begin()->second;
      if (s.residual) {
        ASSERT_EQ(ref[r].v.size(), n);
        ASSERT_EQ(memcmp(s.residual, ref[r].v.data(), n * 4), 0)
            << "rank " << r << " step " << step;
      }
      ASSERT_EQ(s.momentum != nullptr, !ref[r].u.empty());
      if (s.momentum) {
        ASSERT_EQ(memcmp(s.momentum, ref[r].u.data(), n * 4), 0)
            << "rank " << r << " step " << step;
      }
    }
    gradcompStats_t st;
    ASSERT_EQ(gradcompGetStats(world.comm(0), &st), gradcompSuccess);
    EXPECT_EQ(st.targetLast, call.k) << "step " << step;
    denseCalls += call.dense;
    EXPECT_EQ(st.denseFallbacks, denseCalls) << "step " << step;
    if (!call.selected.empty()) EXPECT_EQ(st.selectedLast, call.selected[0]) << "step " << step;
  }
}

TEST(SparseDgcCpu, MomentumMaskingWarmupClipBitExactAgainstSerialReference) {
  for (int masking : {0, 1}) {
    for (gradcompSelect_t sel : {gradcompSelectThreshold, gradcompSelectExact}) {
      gradcompConfig_t cfg = sparseConfig(gradcompMethodDgc);
      cfg.select = sel;
      cfg.density = 0.01f;
      cfg.momentum = 0.9f;
      cfg.momentumCorrection = 1;
      cfg.momentumMasking = masking;
      cfg.clipNorm = masking ? 30.0f : 0.0f;
      cfg.warmupSteps = 4;  // 25% (dense at N=2), 6.25%, 1.5625%, 0.39% -> 1%
      cfg.valueType = ncclBfloat16;
      checkSparseBitExact(2, cfg, DType::F32, false, 20000, 6);
      checkSparseBitExact(3, cfg, DType::BF16, true, 12345, 6);
    }
  }
  gradcompConfig_t cfg = sparseConfig(gradcompMethodDgc);  // no momentum correction
  cfg.momentumCorrection = 0;
  cfg.density = 0.005f;
  checkSparseBitExact(4, cfg, DType::F16, true, 30000, 3);
}

TEST(SparseAllReduceCpu, RandkBitExactAgainstSerialReference) {
  gradcompConfig_t cfg = sparseConfig(gradcompMethodRandk);
  cfg.density = 0.02f;
  checkSparseBitExact(2, cfg, DType::F32, false, 10000, 3);
  checkSparseBitExact(4, cfg, DType::BF16, true, 7777, 3);
  // Without memory its unscaled values would sum to about density times the
  // gradient: refused, naming both settings.
  cfg.errorFeedback = 0;
  EXPECT_EQ(gradcompConfigValidate(&cfg), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "method=randk with errorFeedback=0 (GRADCOMP_EF)"),
            nullptr)
      << gradcompGetLastError();
  gradcompComm_t comms[2];
  EXPECT_EQ(gradcompCommCreateCpu(2, &cfg, comms), gradcompInvalidArgument);
}

// Mass: sum over steps of the outputs plus the residuals equals the sum of
// the inputs, up to the fp32 rounding of the output sums.
TEST(SparseAllReduceCpu, RandkSameIndicesOnAllRanksAndNoMassLost) {
  const int N = 4;
  const size_t n = 10000;
  gradcompConfig_t cfg = sparseConfig(gradcompMethodRandk);
  cfg.density = 0.02f;
  gctest::CpuWorld world(N, cfg);
  std::vector<std::vector<float>> buf(N, std::vector<float>(n));
  std::vector<double> inSum(n, 0), outSum(n, 0);
  for (int step = 0; step < 5; ++step) {
    for (int r = 0; r < N; ++r) {
      auto g = gctest::normal(n, 50 * step + r);
      std::copy(g.begin(), g.end(), buf[r].begin());
      for (size_t i = 0; i < n; ++i) inSum[i] += buf[r][i];
    }
    auto rc = world.run([&](int r) {
      return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum, world.comm(r),
                               nullptr);
    });
    for (int r = 0; r < N; ++r) ASSERT_EQ(rc[r], gradcompSuccess) << gradcompGetLastError();
    size_t nonzero = 0;
    for (size_t i = 0; i < n; ++i) {
      for (int r = 1; r < N; ++r) ASSERT_EQ(buf[r][i], buf[0][i]);
      nonzero += buf[0][i] != 0.0f;
      outSum[i] += buf[0][i];
    }
    EXPECT_EQ(nonzero, (size_t)ceil(0.02 * n));
    // The residual was cleared at the same k positions on every rank.
    for (size_t i = 0; i < n; ++i) {
      bool sent = buf[0][i] != 0.0f;
      for (int r = 0; r < N; ++r) {
        const float* res = world.comm(r)->states.begin()->second.residual;
        if (sent) ASSERT_EQ(res[i], 0.0f);
      }
    }
  }
  for (size_t i = 0; i < n; ++i) {
    double left = 0;
    for (int r = 0; r < N; ++r) left += world.comm(r)->states.begin()->second.residual[i];
    ASSERT_NEAR(outSum[i] + left, inSum[i], 1e-4 * (1 + fabs(inSum[i])));
  }
}

// The warm-up's stages, written from the documented schedule: a quarter of
// W calls each at 25%, 6.25%, 1.5625%, 0.390625%, then the final density
// from call W on (0-based), never below the final density. A final density
// of 1e-4 shows the boundary: one more ramp call would run at 0.098%.
TEST(SparseDgcCpu, WarmupStagesEndAtCallW) {
  const int W = 8;
  const double want[] = {0.25,       0.25,       0.0625, 0.0625, 0.015625, 0.015625,
                         0.00390625, 0.00390625, 1e-4,   1e-4,   1e-4};
  for (uint64_t t = 0; t < 11; ++t)
    EXPECT_EQ(gc::sparse::warmupDensity(1e-4, W, t), want[t]) << "call " << t;
  EXPECT_EQ(gc::sparse::warmupDensity(0.3, W, 0), 0.3);  // never below the final density
  EXPECT_EQ(gc::sparse::warmupDensity(1e-4, 0, 0), 1e-4);
  // As a comm runs it: each call's target count.
  gradcompConfig_t cfg = sparseConfig(gradcompMethodDgc);
  cfg.select = gradcompSelectExact;
  cfg.density = 1e-4f;
  cfg.warmupSteps = W;
  const size_t n = 20000;
  gctest::CpuWorld world(2, cfg);
  for (int t = 0; t < 11; ++t) {
    // Keyed: the schedule follows one buffer's calls wherever its memory is
    // (a new vector may get a new address, and an unkeyed call a new state).
    std::vector<std::vector<float>> buf(2);
    for (int r = 0; r < 2; ++r) buf[r] = gctest::normal(n, 500 + 10 * t + r);
    auto rc = world.run([&](int r) {
      return gradcompAllReduceKeyed(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum,
                                    world.comm(r), nullptr, 7);
    });
    for (int r = 0; r < 2; ++r) ASSERT_EQ(rc[r], gradcompSuccess) << gradcompGetLastError();
    gradcompStats_t st;
    ASSERT_EQ(gradcompGetStats(world.comm(0), &st), gradcompSuccess);
    const double d = t < W ? want[t] : (double)1e-4f;
    EXPECT_EQ(st.targetLast, (uint64_t)ceil(d * n)) << "call " << t;
  }
}

// DGC: direct per-step model (double where it does not matter for ties).
TEST(SparseDgcCpu, ExtrasMatchPerStepReference) {
  const int N = 2;
  const size_t n = 20000;
  for (int masking : {0, 1}) {
    for (float clip : {0.0f, 20.0f}) {
      SCOPED_TRACE(testing::Message() << "masking=" << masking << " clip=" << clip);
      gradcompConfig_t cfg = sparseConfig(gradcompMethodDgc);
      cfg.select = gradcompSelectExact;
      cfg.density = 0.001f;
      cfg.momentum = 0.9f;
      cfg.momentumCorrection = 1;
      cfg.momentumMasking = masking;
      cfg.clipNorm = clip;
      cfg.warmupSteps = 8;
      gctest::CpuWorld world(N, cfg);
      std::vector<std::vector<float>> u(N, std::vector<float>(n, 0)), v = u, buf = u;
      const double stageDensity[] = {
          0.25,     0.25,       0.0625,     0.0625, 0.015625,
          0.015625, 0.00390625, 0.00390625, 0.001,  0.001};  // 0.001f as its decimal
      uint64_t denseCalls = 0;
      for (int step = 0; step < 10; ++step) {
        std::vector<std::vector<float>> g(N);
        for (int r = 0; r < N; ++r) g[r] = gctest::normal(n, 300 * step + r, 1.0f);
        const size_t k = (size_t)ceil(stageDensity[step] * n);
        const bool dense = (size_t)N * k * 8 >= n * 4;
        std::vector<double> out(n, 0.0);
        for (int r = 0; r < N; ++r) {
          double ss = 0;
          for (float x : g[r]) ss += (double)x * x;
          const double thr = clip / sqrt((double)N);
          const double scale = clip > 0 && sqrt(ss) > thr ? thr / sqrt(ss) : 1.0;
          for (size_t i = 0; i < n; ++i) {
            u[r][i] = 0.9f * u[r][i] + (float)(g[r][i] * scale);
            v[r][i] += u[r][i];
          }
          std::vector<uint32_t> sel(n);
          if (dense) {
            std::iota(sel.begin(), sel.end(), 0);
          } else {
            sel = sortTopk(v[r], k);
          }
          // Momentum factor masking clears u where a delayed coordinate went;
          // the dense fallback delays nothing and keeps u (momentum SGD).
          for (uint32_t i : sel) {
            out[i] += v[r][i];
            v[r][i] = 0;
            if (masking && !dense) u[r][i] = 0;
          }
        }
        for (int r = 0; r < N; ++r) std::copy(g[r].begin(), g[r].end(), buf[r].begin());
        auto rc = world.run([&](int r) {
          return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum,
                                   world.comm(r), nullptr);
        });
        for (int r = 0; r < N; ++r) ASSERT_EQ(rc[r], gradcompSuccess) << gradcompGetLastError();
        gradcompStats_t st;
        gradcompGetStats(world.comm(0), &st);
        ASSERT_EQ(st.targetLast, k) << "step " << step;
        denseCalls += dense;
        ASSERT_EQ(st.denseFallbacks, denseCalls) << "step " << step;
        for (int r = 0; r < N; ++r) {
          const gc::BufferState& s = world.comm(r)->states.begin()->second;
          for (size_t i = 0; i < n; ++i) {
            ASSERT_NEAR(buf[r][i], out[i], 1e-4 * (1 + fabs(out[i]))) << "step " << step;
            ASSERT_NEAR(s.residual[i], v[r][i], 1e-4 * (1 + fabs(v[r][i]))) << "step " << step;
            ASSERT_NEAR(s.momentum[i], u[r][i], 1e-4 * (1 + fabs(u[r][i]))) << "step " << step;
          }
        }
      }
    }
  }
}

// Clipping is for exploding gradients: a huge but finite gradient (norm
// 2e19, whose fp32 sum of squares would overflow to Inf) is still scaled to
// ||g|| = clipNorm/sqrt(N), in direction and size (to fp32 rounding).
TEST(SparseDgcCpu, ClippingHoldsForHugeFiniteGradients) {
  const int N = 2;
  const size_t n = (size_t)1 << 20;
  gradcompConfig_t cfg = sparseConfig(gradcompMethodDgc);
  cfg.momentumCorrection = 0;
  cfg.momentumMasking = 0;
  cfg.clipNorm = 4.0f;
  gctest::CpuWorld world(N, cfg);
  std::vector<std::vector<float>> g(N), buf(N);
  for (int r = 0; r < N; ++r) {
    g[r] = gctest::normal(n, 40 + r, 2e16f);
    buf[r] = g[r];
  }
  auto rc = world.run([&](int r) {
    return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum, world.comm(r),
                             nullptr);
  });
  for (int r = 0; r < N; ++r) ASSERT_EQ(rc[r], gradcompSuccess) << gradcompGetLastError();
  const double thr = cfg.clipNorm / sqrt((double)N);
  for (int r = 0; r < N; ++r) {
    double gg = 0;
    for (float x : g[r]) gg += (double)x * x;
    const double scale = thr / sqrt(gg);
    ASSERT_LT(scale, 1e-18);
    // The residual holds every entry rank r did not send, as accumulated:
    // its clipped gradient there; its norm stays below the limit.
    const gc::BufferState& s = world.comm(r)->states.begin()->second;
    double vv = 0;
    size_t unsent = 0;
    for (size_t i = 0; i < n; ++i) {
      if (s.residual[i] == 0.0f) continue;
      ++unsent;
      const double want = g[r][i] * scale;
      ASSERT_NEAR(s.residual[i], want, 1e-6 * fabs(want)) << "rank " << r << " i " << i;
      vv += (double)s.residual[i] * s.residual[i];
    }
    EXPECT_GT(unsent, n / 2);
    EXPECT_LE(sqrt(vv), thr * (1 + 1e-6));
  }
  for (size_t i = 0; i < n; ++i) ASSERT_TRUE(std::isfinite(buf[0][i]));
}

// Refused when the comm is created, not at the first call.
TEST(SparseAllReduceCpu, RefusesDenseAlgorithms) {
  gradcompConfig_t cfg = sparseConfig(gradcompMethodTopk);
  cfg.algo = gradcompAlgoTwoShot;
  gradcompComm_t comms[2];
  EXPECT_EQ(gradcompCommCreateCpu(2, &cfg, comms), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "sparse methods"), nullptr) << gradcompGetLastError();
}

}  // namespace
