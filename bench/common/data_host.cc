#include <math.h>

#include <algorithm>

#include "data_ops.h"

namespace gcbench {

void fillHost(void* buf, gc::DType t, size_t count, uint64_t seed, int rank) {
  for (size_t i = 0; i < count; ++i) gc::storeFromFloat(buf, t, i, benchValue(seed, rank, i));
}

void bucketMaxHost(float* out, gc::DType t, size_t count, int bucket, uint64_t seed, int rank) {
  const size_t nb = (count + bucket - 1) / bucket;
  for (size_t b = 0; b < nb; ++b) {
    float m = 0;
    const size_t end = std::min(count, (b + 1) * (size_t)bucket);
    for (size_t i = b * bucket; i < end; ++i) m = fmaxf(m, fabsf(typedValue(seed, rank, i, t)));
    out[b] = m;
  }
}

CheckTotals checkHost(const CheckParams& p, const float* bucketMax, const void* got, size_t count) {
  CheckTotals t;
  for (size_t i = 0; i < count; ++i) {
    const ElementCheck c = checkElement(p, bucketMax, i, gc::loadAsFloat(got, p.dtype, i));
    t.sumErr2 += c.err * c.err;
    t.sumExact2 += c.exact * c.exact;
    t.maxErr = maxKeepNan(t.maxErr, fabs(c.err));
    t.maxExact = maxKeepNan(t.maxExact, fabs(c.exact));
    t.maxErrOverBound = maxKeepNan(t.maxErrOverBound, c.errOverBound);
    t.wrong += c.wrong ? 1 : 0;
  }
  return t;
}

void rankWeightsHost(const CheckParams& p, const void* got, size_t count,
                     std::vector<RankWeightSums>* w) {
  w->assign(p.nranks, RankWeightSums());
  std::vector<double> y(p.nranks);
  const double scale = p.average ? 1.0 / p.nranks : 1.0;
  for (size_t i = 0; i < count; ++i) {
    double exact = 0;
    for (int r = 0; r < p.nranks; ++r) {
      y[r] = typedValue(p.seed, r, i + p.offset, p.dtype) * scale;
      exact += y[r];
    }
    const double err = (double)gc::loadAsFloat(got, p.dtype, i) - exact;
    for (int r = 0; r < p.nranks; ++r) {
      RankWeightSums& s = (*w)[r];
      s.num += err * y[r];
      s.den += y[r] * y[r];
      s.var += err * err * y[r] * y[r];
    }
  }
}

}  // namespace gcbench
