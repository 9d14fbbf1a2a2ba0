// Benchmark data and the per-element check, shared by the host loops and the
// CUDA kernels so that the CPU and CUDA backends check results the same way.
//
// Every rank's input is a pure function of (seed, rank, index), so any rank
// computes the exact sum of all inputs without communication, as nccl-tests
// does. bench/torch_topk.py reproduces benchValue bit for bit.
#pragma once

#include <math.h>
#include <stdint.h>

#include "../../kernels/common_math.cuh"

namespace gcbench {

// Approximately N(0, 1): the sum of four 24-bit uniforms (Irwin-Hall), summed
// as integers so that host, device and torch get identical floats.
GC_HD float benchValue(uint64_t seed, int rank, uint64_t i) {
  const uint64_t key = gc::mix64(seed + (uint64_t)rank * 0x9e3779b97f4a7c15ull);
  int32_t s = 0;
  for (uint64_t k = 0; k < 4; ++k) s += (int32_t)(gc::hashKey(key, 4 * i + k) >> 40);
  // Var of one 24-bit uniform integer is 2^48/12, so the sum has sd 2^24/sqrt(3).
  return (float)(s - (1 << 25)) * 1.03238106e-7f;  // sqrt(3) / 2^24
}

// The value as the input type holds it (what the exact sum must add).
GC_HD float typedValue(uint64_t seed, int rank, uint64_t i, gc::DType t) {
  float v = benchValue(seed, rank, i);
  if (t == gc::DType::F16) return gc::halfToFloat(gc::floatToHalf(v));
  if (t == gc::DType::BF16) return gc::bf16ToFloat(gc::floatToBf16(v));
  return v;
}

// Machine epsilon of the type results are stored in.
GC_HD double typeEps(gc::DType t) {
  return t == gc::DType::F32 ? 1.1920929e-7 : (t == gc::DType::F16 ? 9.765625e-4 : 7.8125e-3);
}

// What a result may deviate from the exact sum by.
enum class BoundKind : int {
  // Plain allreduce (NCCL, the host stand-in, gradcomp's pass-through): only
  // summation order and the output type's rounding.
  Exact = 0,
  // Q stochastic quantizations of (partial) sums in sequence. Each errs by less
  // than one level step, scale/s, and a bucket scale is at most the sum of the
  // ranks' bucket maxima grown by the errors before it: in all below
  // W*((1+1/s)^Q - 1), W = sum over ranks of the bucket max of |x|.
  Quantized = 1,
  // Each rank sends an element exactly (up to the wire type) or not at all.
  Sparse = 2,
};

struct CheckParams {
  uint64_t seed;
  int nranks;
  gc::DType dtype;
  bool average;
  BoundKind kind;
  int quantizations;  // Q
  int levels;         // s
  int bucket;         // d of bucketMax
  size_t numBuckets;
  double wireEps;  // Sparse: rounding of values on the wire
  // Index of the first checked element in the input (a reduce-scatter's rank
  // r checks elements r*recvcount...); bucketMax covers the whole input.
  uint64_t offset;
  // GRADCOMP_LEVELS=square: the widest step is the top one, (s^2 - (s-1)^2)
  // / s^2 = (2s - 1)/s^2 of the scale, which takes 1/s's place in the bound.
  bool squareLevels = false;
};

// Per-rank maxima of |x| over buckets of d elements: bucketMax[r*nb + b].
// The bound of element i uses buckets b-1..b+1, which hold any d-long window
// around i, so it stays valid however an algorithm aligns its chunks.
GC_HD float windowMax(const float* bucketMax, size_t nb, int r, size_t b) {
  const float* m = bucketMax + (size_t)r * nb;
  float w = m[b];
  if (b > 0) w = fmaxf(w, m[b - 1]);
  if (b + 1 < nb) w = fmaxf(w, m[b + 1]);
  return w;
}

struct ElementCheck {
  double exact;
  double err;
  double errOverBound;  // how much of the bound the error used
  bool wrong;
};

GC_HD ElementCheck checkElement(const CheckParams& p, const float* bucketMax, uint64_t local,
                                float got) {
  const uint64_t i = local + p.offset;
  double exact = 0, absSum = 0, window = 0;
  const size_t b = p.bucket > 0 ? (size_t)(i / (uint64_t)p.bucket) : 0;
  for (int r = 0; r < p.nranks; ++r) {
    const double v = typedValue(p.seed, r, i, p.dtype);
    exact += v;
    absSum += fabs(v);
    if (p.kind == BoundKind::Quantized) window += windowMax(bucketMax, p.numBuckets, r, b);
  }
  if (p.average) {
    exact /= p.nranks;
    absSum /= p.nranks;
    window /= p.nranks;
  }
  const double eps = typeEps(p.dtype);
  double codec = 0;
  if (p.kind == BoundKind::Quantized) {
    const double s = p.levels;
    const double step = p.squareLevels ? (2.0 * s - 1.0) / (s * s) : 1.0 / s;
    codec = window * (pow(1.0 + step, p.quantizations) - 1.0) * (1.0 + 1e-5);
  } else if (p.kind == BoundKind::Sparse) {
    codec = absSum * (1.0 + p.wireEps);
  }
  // Sums of up to N terms and the final store, each rounding by eps relative.
  const double bound = codec + (p.nranks + 2) * eps * (absSum + codec);
  ElementCheck c;
  c.exact = exact;
  c.err = (double)got - exact;
  c.wrong = !(fabs(c.err) <= bound);  // NaN is wrong
  c.errOverBound = bound > 0 ? fabs(c.err) / bound : (c.err == 0 ? 0.0 : (double)INFINITY);
  return c;
}

// max that keeps a NaN (an error that is NaN must show in the table).
GC_HD double maxKeepNan(double a, double b) {
  return (a != a || b != b) ? (double)NAN : (a > b ? a : b);
}

// The rank-weight check (host, on a prefix of the result): the per-element
// bound above is a worst case, about four input standard deviations wide at
// 4 bits, so a result that lost one rank's input, or counted it twice, stays
// inside it. Unbiased codecs (stochastic rounding, zero residual) make the
// error independent in mean of every input: the least-squares coefficient of
// err on rank r's input y_r, beta_r = sum err*y_r / sum y_r^2, is 0 up to
// its standard error se_r = sqrt(sum err^2 y_r^2) / sum y_r^2, where a lost
// input gives -1 and a doubled one +1. Rank r's weight in the result is
// 1 + beta_r.
struct RankWeightSums {
  double num = 0, den = 0, var = 0;
};
// A weight is wrong when its beta is both large (a quarter of an input) and
// far outside its own noise (8 standard errors: no unbiased run gets there).
inline bool rankWeightWrong(const RankWeightSums& w) {
  const double beta = w.num / w.den;
  const double se = sqrt(w.var) / w.den;
  return !(w.den > 0) || !(fabs(beta) <= 0.25 || fabs(beta) <= 8 * se);  // NaN is wrong
}

// Per-rank totals of one check; combined across ranks with max/sum.
struct CheckTotals {
  double sumErr2 = 0, sumExact2 = 0, maxErr = 0, maxExact = 0, maxErrOverBound = 0;
  double wrong = 0;
};

}  // namespace gcbench
