// Bit-level fp16/bf16 conversions shared by host and device.
#include <gtest/gtest.h>
#include <math.h>
#include <string.h>

#include "kernels/common_math.cuh"
#include "tests/common/test_util.h"

namespace {

TEST(HalfConversion, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = gc::halfToFloat((uint16_t)h);
    uint16_t back = gc::floatToHalf(f);
    if (isnan(f)) {
      ASSERT_EQ(back & 0x7c00u, 0x7c00u);
      ASSERT_NE(back & 0x3ffu, 0u);
    } else {
      ASSERT_EQ(back, h) << "h=" << h;
    }
  }
  EXPECT_EQ(gc::halfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(gc::halfToFloat(0x0001), ldexpf(1.0f, -24));
  EXPECT_EQ(gc::halfToFloat(0x7bff), 65504.0f);
}

// Round to nearest even, checked against double arithmetic on the exact grid.
TEST(HalfConversion, RoundsToNearestEven) {
  auto values = gctest::uniform(200000, 3, -70000.0f, 70000.0f);
  auto smalls = gctest::uniform(200000, 4, -1e-4f, 1e-4f);
  values.insert(values.end(), smalls.begin(), smalls.end());
  values.push_back(65520.0f);           // ties up to Inf
  values.push_back(65519.99f);          // stays 65504
  values.push_back(ldexpf(1.0f, -25));  // tie to even: 0
  values.push_back(ldexpf(1.5f, -25));  // above the tie: min subnormal
  for (float f : values) {
    uint16_t h = gc::floatToHalf(f);
    float back = gc::halfToFloat(h);
    // The two neighbours on the half grid must not be closer than `back`.
    uint16_t up = (uint16_t)(h + 1), down = (uint16_t)(h - 1);
    double err = fabs((double)back - f);
    if (isinf(back)) {
      ASSERT_GE(fabs(f), 65520.0f) << f;
      continue;
    }
    for (uint16_t nb : {up, down}) {
      float v = gc::halfToFloat(nb);
      if (isnan(v) || ((nb ^ h) & 0x8000u)) continue;
      double e2 = fabs((double)v - f);
      ASSERT_TRUE(err < e2 || (err == e2 && (h & 1u) == 0)) << "f=" << f << " h=" << h;
    }
  }
  EXPECT_EQ(gc::floatToHalf(65520.0f), 0x7c00u);
  EXPECT_EQ(gc::floatToHalf(ldexpf(1.0f, -25)), 0u);
  EXPECT_EQ(gc::floatToHalf(ldexpf(1.5f, -25)), 1u);
}

TEST(Bf16Conversion, RoundsToNearestEvenAndKeepsNaN) {
  EXPECT_EQ(gc::floatToBf16(1.0f), 0x3f80u);
  uint32_t tieDown = 0x3f808000u, tieUp = 0x3f818000u, above = 0x3f808001u;
  float f;
  memcpy(&f, &tieDown, 4);
  EXPECT_EQ(gc::floatToBf16(f), 0x3f80u);
  memcpy(&f, &tieUp, 4);
  EXPECT_EQ(gc::floatToBf16(f), 0x3f82u);
  memcpy(&f, &above, 4);
  EXPECT_EQ(gc::floatToBf16(f), 0x3f81u);
  EXPECT_TRUE(isnan(gc::bf16ToFloat(gc::floatToBf16(NAN))));
  EXPECT_TRUE(isinf(gc::bf16ToFloat(gc::floatToBf16(INFINITY))));
  for (uint32_t h = 0; h < 65536; ++h) {
    float v = gc::bf16ToFloat((uint16_t)h);
    if (!isnan(v)) ASSERT_EQ(gc::floatToBf16(v), h);
  }
}

}  // namespace
