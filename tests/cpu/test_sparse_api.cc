// Public top-k selector (include/gradcomp/sparse.h), host entry point: exact
// against a sort, threshold within its documented count bounds and one
// threshold, slots and workspace sizes, and argument errors.
#include <gtest/gtest.h>
#include <math.h>
#include <string.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "gradcomp.h"
#include "gradcomp/sparse.h"
#include "tests/common/test_util.h"

namespace {

constexpr uint32_t kEmpty = 0xffffffffu;

uint32_t magKey(float x) {
  uint32_t b;
  memcpy(&b, &x, 4);
  return b & 0x7fffffffu;
}

// Largest |v| (by bit pattern: NaN > Inf > finite), ties by lower index.
std::vector<uint32_t> sortTopk(const std::vector<float>& v, size_t k) {
  std::vector<uint32_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t a, uint32_t b) { return magKey(v[a]) > magKey(v[b]); });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

size_t slotsOf(size_t n, float density, float oversample, int exact) {
  size_t s = 0;
  EXPECT_EQ(gradcompTopkSlots(n, density, oversample, exact, &s), gradcompSuccess)
      << gradcompGetLastError();
  return s;
}

std::vector<float> withTies(size_t n) {
  auto v = gctest::normal(n, 4);
  for (auto& x : v) x = roundf(x * 2) / 2;
  return v;
}

TEST(TopkApi, SlotsFollowTheDocumentedFormulas) {
  EXPECT_EQ(slotsOf(1000, 0.01f, 2.0f, 1), 10u);
  EXPECT_EQ(slotsOf(1000, 0.01f, 2.0f, 0), 20u);
  EXPECT_EQ(slotsOf(1001, 0.01f, 2.0f, 1), 11u);  // ceil
  EXPECT_EQ(slotsOf(1000, 1e-7f, 2.0f, 1), 1u);   // at least one
  EXPECT_EQ(slotsOf(10, 1.0f, 16.0f, 0), 10u);    // at most n
  EXPECT_EQ(slotsOf(0, 0.01f, 2.0f, 0), 0u);
  size_t b = 1;
  ASSERT_EQ(gradcompTopkWorkspaceBytes(0, 0.01f, 2.0f, 0.01f, 0, &b), gradcompSuccess);
  EXPECT_EQ(b, 0u);
  ASSERT_EQ(gradcompTopkWorkspaceBytes(1 << 20, 0.01f, 2.0f, 0.01f, 0, &b), gradcompSuccess);
  EXPECT_GE(b, (size_t)(1 << 20) / 1000);  // per-tile counts at least
}

TEST(TopkApi, HostExactEqualsSortReference) {
  for (size_t n : {1, 3, 1000, 4097, 30000}) {
    std::vector<std::vector<float>> data = {gctest::normal(n, 1 + n), withTies(n),
                                            std::vector<float>(n, -0.25f)};
    auto special = gctest::normal(n, 9);
    special[n / 2] = std::numeric_limits<float>::quiet_NaN();
    special[n / 3] = -std::numeric_limits<float>::infinity();
    data.push_back(special);
    for (const auto& v : data) {
      // k = ceil(density * n), the float density read as its decimal.
      for (const auto& [density, decimal] : {std::pair<float, double>{1e-6f, 1e-6},
                                             {0.001f, 0.001},
                                             {0.01f, 0.01},
                                             {0.25f, 0.25},
                                             {1.0f, 1.0}}) {
        const size_t k = slotsOf(n, density, 4.0f, 1);
        ASSERT_EQ(k, std::max<size_t>(1, (size_t)ceil(decimal * n)));
        std::vector<uint32_t> idx(k + 1, 0xABABABABu);
        uint64_t sel = 0;
        ASSERT_EQ(gradcompTopkSelectHost(v.data(), n, density, 4.0f, 0.01f, 1, 7, idx.data(), &sel),
                  gradcompSuccess)
            << gradcompGetLastError();
        EXPECT_EQ(sel, k);
        EXPECT_EQ(idx[k], 0xABABABABu) << "wrote past the slots";
        idx.resize(k);
        ASSERT_EQ(idx, sortTopk(v, k)) << "n=" << n << " density=" << density;
      }
    }
  }
}

// Threshold: the count is within [k/2, kmax] on data the sample represents
// (the header's bound; 2k = kmax at oversample 2), the filled slots are
// increasing then empty, and one threshold separates them: nothing left out
// before the last filled index, nor anywhere when fewer than kmax were
// filled, is as large as the smallest selected.
TEST(TopkApi, HostThresholdCountWithinBoundsAndOneThreshold) {
  for (size_t n : {20000, 300000}) {
    for (float density : {0.001f, 0.01f}) {
      for (int dist = 0; dist < 2; ++dist) {
        const auto v = dist == 0 ? gctest::normal(n, 21 + n) : gctest::uniform(n, 22, -3, 3);
        const size_t k = slotsOf(n, density, 1.0f, 1);
        const size_t kmax = slotsOf(n, density, 2.0f, 0);
        for (uint64_t seed : {0ull, 1ull, 99ull}) {
          std::vector<uint32_t> idx(kmax);
          uint64_t sel = 0;
          ASSERT_EQ(
              gradcompTopkSelectHost(v.data(), n, density, 2.0f, 0.01f, 0, seed, idx.data(), &sel),
              gradcompSuccess)
              << gradcompGetLastError();
          EXPECT_GE(sel, (k + 1) / 2) << "n=" << n << " density=" << density << " seed=" << seed;
          EXPECT_LE(sel, kmax);
          uint32_t minSel = ~0u;
          for (size_t j = 0; j < kmax; ++j) {
            if (j < sel) {
              ASSERT_LT(idx[j], n);
              if (j) ASSERT_LT(idx[j - 1], idx[j]);
              minSel = std::min(minSel, magKey(v[idx[j]]));
            } else {
              ASSERT_EQ(idx[j], kEmpty) << "slot " << j;
            }
          }
          const size_t end = sel < kmax ? n : (sel ? idx[sel - 1] : 0);
          size_t j = 0;
          for (size_t i = 0; i < end; ++i) {
            if (j < sel && idx[j] == i) {
              ++j;
              continue;
            }
            ASSERT_LT(magKey(v[i]), minSel) << "index " << i << " left out";
          }
        }
      }
    }
  }
}

TEST(TopkApi, HostThresholdDependsOnlyOnArguments) {
  const size_t n = 50000;
  const auto v = gctest::normal(n, 5);
  const size_t kmax = slotsOf(n, 0.01f, 2.0f, 0);
  std::vector<uint32_t> a(kmax), b(kmax);
  uint64_t sa = 0, sb = 0;
  ASSERT_EQ(gradcompTopkSelectHost(v.data(), n, 0.01f, 2.0f, 0.01f, 0, 3, a.data(), &sa),
            gradcompSuccess);
  ASSERT_EQ(gradcompTopkSelectHost(v.data(), n, 0.01f, 2.0f, 0.01f, 0, 3, b.data(), nullptr),
            gradcompSuccess);
  ASSERT_EQ(gradcompTopkSelectHost(v.data(), n, 0.01f, 2.0f, 0.01f, 0, 3, b.data(), &sb),
            gradcompSuccess);
  EXPECT_EQ(a, b);
  EXPECT_EQ(sa, sb);
}

TEST(TopkApi, BadArgumentsAreRefusedWithTheRange) {
  std::vector<float> v(100, 1.0f);
  std::vector<uint32_t> idx(100);
  uint64_t sel = 0;
  size_t s = 0;
  EXPECT_EQ(gradcompTopkSelectHost(v.data(), 100, 0.0f, 2.0f, 0.01f, 0, 0, idx.data(), &sel),
            gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), "density=0 is out of range (0, 1]");
  EXPECT_EQ(gradcompTopkSelectHost(v.data(), 100, 1.5f, 2.0f, 0.01f, 1, 0, idx.data(), &sel),
            gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), "density=1.5 is out of range (0, 1]");
  // Every digit the float has: the next float above 1 is not "1".
  EXPECT_EQ(gradcompTopkSelectHost(v.data(), 100, nextafterf(1.0f, 2.0f), 2.0f, 0.01f, 1, 0,
                                   idx.data(), &sel),
            gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), "density=1.00000012 is out of range (0, 1]");
  EXPECT_EQ(gradcompTopkSelectHost(v.data(), 100, 0.01f, 0.5f, 0.01f, 0, 0, idx.data(), &sel),
            gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), "oversample=0.5 is out of range [1, 16]");
  EXPECT_EQ(gradcompTopkSelectHost(v.data(), 100, 0.01f, 2.0f, 2.0f, 0, 0, idx.data(), &sel),
            gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), "sampleRate=2 is out of range (0, 1]");
  EXPECT_EQ(gradcompTopkSelectHost(v.data(), 100, 0.01f, 2.0f, 0.01f, 2, 0, idx.data(), &sel),
            gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), "exact=2 is not 0 (threshold) or 1 (exact)");
  EXPECT_EQ(gradcompTopkSelectHost(nullptr, 100, 0.01f, 2.0f, 0.01f, 0, 0, idx.data(), &sel),
            gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), "v is NULL with n=100");
  EXPECT_EQ(gradcompTopkSlots((size_t)0xffffffffu, 0.01f, 2.0f, 1, &s), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(),
               "n=4294967295 is too large for uint32 indices (at most 4294967294)");
  EXPECT_EQ(gradcompTopkSlots(100, 0.01f, 2.0f, 1, nullptr), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), "slots (output) is NULL");
  // The exact selector does not read oversample and sampleRate.
  EXPECT_EQ(gradcompTopkSelectHost(v.data(), 100, 0.01f, 0.0f, 0.0f, 1, 0, idx.data(), &sel),
            gradcompSuccess)
      << gradcompGetLastError();
  EXPECT_EQ(sel, 1u);
  // The device entry point validates on the host before touching the GPU.
  EXPECT_EQ(gradcompTopkSelect(v.data(), 100, 0.01f, 2.0f, 0.01f, 0, 0, idx.data(), nullptr,
                               nullptr, 0, nullptr),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "is too small: gradcompTopkWorkspaceBytes gives"),
            nullptr)
      << gradcompGetLastError();
}

}  // namespace
