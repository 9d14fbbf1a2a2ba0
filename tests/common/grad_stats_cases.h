// Sizes for the DQ-SGD statistics tests (host and GPU): around one bucket,
// one round of the kernels' 1056 warps and several rounds, counts that are
// not a multiple of the bucket.
#pragma once

#include <stddef.h>

namespace gctest {

struct GradStatsCase {
  size_t n;
  int bucket;
};

constexpr GradStatsCase kGradStatsCases[] = {{1, 32},
                                             {31, 32},
                                             {33, 32},
                                             {1056 * 32, 32},
                                             {1056 * 32 + 1, 32},
                                             {3 * 1056 * 32 + 17, 32},
                                             {100000, 512},
                                             {8191, 8192},
                                             {300001, 8192}};

}  // namespace gctest
