// What every rank must hold after the auto tests' agreement on injected
// figures that differ by rank.
#pragma once

#include <gtest/gtest.h>
#include <stddef.h>
#include <stdint.h>

#include "plugin/autotune.h"

namespace gctest {

// GRADCOMP_AUTO's timing figures to inject (gc::autoInjectFigures): NCCL's and
// compression's times (us) at `small` and `large` elements.
inline gc::AutoFigures autoFigures(float nccl0, float nccl1, float comp0, float comp1,
                                   size_t small = 1024, size_t large = 5120) {
  gc::AutoFigures f;
  f.smallCount = small;
  f.largeCount = large;
  f.ncclUs[0] = nccl0;
  f.ncclUs[1] = nccl1;
  f.compUs[0] = comp0;
  f.compUs[1] = comp1;
  return f;
}

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
