// What every rank must hold after the auto tests' agreement on injected
// figures that differ by rank.
#pragma once

#include <gtest/gtest.h>
#include <stdint.h>

#include "plugin/autotune.h"

namespace gctest {

// The slowest of the injected figures (uncompressed 16 / 80 us and
// compressed 48 / 80 us at 1024 / 5120 elements): fp32 calls compress from
// 5121 elements up. Rank r's decision of one collective.
inline void expectAgreedCrossover(const gc::AutoDecision& a, int r) {
  ASSERT_TRUE(a.timed) << r;
  EXPECT_EQ(a.figures.ncclUs[0], 16.0f) << r;
  EXPECT_EQ(a.figures.ncclUs[1], 80.0f) << r;
  EXPECT_EQ(a.figures.compUs[0], 48.0f) << r;
  EXPECT_EQ(a.figures.compUs[1], 80.0f) << r;
  EXPECT_EQ(a.range[1].lo, 5121u) << r;
  EXPECT_EQ(a.range[1].hi, SIZE_MAX) << r;
}

}  // namespace gctest
