// Math of the sparse methods shared by the CUDA kernels and the host
// reference: the call plan (k, kmax, sample), selection keys, the
// deterministic squared-norm reduction of local clipping, the DGC
// accumulation step, the rand-k permutation, the slot commit and the rule a
// received slot list must follow. Both sides evaluate the same expressions
// in the same order, so results are bitwise identical.
#pragma once

#include <math.h>

#include "common_math.cuh"

namespace gc {
namespace sparse {

constexpr uint32_t kEmptySlot = 0xffffffffu;
// RNG streams of the sparse methods' keys (see KeySpec): the threshold
// sample offset (per rank) and the rand-k indices (rank 0 on every rank).
constexpr uint64_t kSelectStream = 0x53454c4543540000ull;
constexpr uint64_t kRandkStream = 0x52414e444b000000ull;
// Smallest threshold sample: below it the estimate of the quantile is too
// noisy to be worth the saving (vectors this small are sampled whole).
constexpr size_t kMinSample = 1024;
// The sample also keeps at least this many entries above the threshold: the
// selected count is then about k*(1 +- 1/sqrt(kMinKeep)), so [k/2, 2k] is
// four standard deviations wide on either side.
constexpr size_t kMinKeep = 64;
// Squared norm: chunks of kNormLanes * kNormPerLane elements; lane l of a
// chunk sums elements l, l + kNormLanes, ... in order, then a pairwise tree.
constexpr int kNormLanes = 256;
constexpr int kNormPerLane = 16;
constexpr size_t kNormChunk = (size_t)kNormLanes * kNormPerLane;

// Selection key: |v| as its bit pattern. Orders finite values by magnitude,
// then Inf, then NaN (NaN and Inf rank highest so they reach the output and
// a framework's overflow check sees them).
GC_HD uint32_t absKey(float v) {
  return floatToBits(v) & 0x7fffffffu;
}

// Predicate of both selectors: key > gt, or key == eq among the first `need`
// such entries in index order. Threshold sampling uses need = 0.
struct SelectRule {
  uint32_t gt;
  uint32_t eq;
  uint64_t need;
};

GC_HD SelectRule thresholdRule(uint32_t thrKey) {
  // key >= thr, and never exact zeros (nothing to send).
  return SelectRule{thrKey > 0 ? thrKey - 1 : 0, 0, 0};
}

// Threshold selection's rule for a call where more entries qualify than there
// are slots and v holds a non-finite value: the non-finite entries alone
// (keys above the largest finite one).
GC_HD SelectRule nonFiniteRule() {
  return SelectRule{0x7f7fffffu, 0, 0};
}

// Sizes of one call, computed on the host from the config and call number.
struct Plan {
  double density;      // this call's density (after warm-up)
  size_t k;            // target count, >= 1
  size_t kmax;         // slots per rank
  size_t sample;       // threshold sample size m
  size_t keep;         // sample entries above the threshold
  size_t stride;       // sample stratum width: sample j is drawn from its stride (sampleIndex)
  size_t offsetRange;  // per-step offset drawn from [0, offsetRange)
};

// Density of call `calls` (0-based) under the DGC exponential warm-up:
// 25%, 6.25%, 1.5625%, 0.390625% for a quarter of warmupSteps each, never
// below the final density.
inline double warmupDensity(double finalDensity, int warmupSteps, uint64_t calls) {
  if (warmupSteps <= 0 || calls >= (uint64_t)warmupSteps) return finalDensity;
  const uint64_t stage = calls * 4 / (uint64_t)warmupSteps;  // 0..3
  double d = 0.25;
  for (uint64_t s = 0; s < stage; ++s) d *= 0.25;
  return d > finalDensity ? d : finalDensity;
}

// A setting read as a float (GRADCOMP_DENSITY=0.001 is the float
// 0.0010000000475) as the decimal it was written as: the shortest one, of 1
// to 9 significant digits, that rounds to that float. Other values (warm-up's
// powers of 1/4 are floats already and come back as they are; a double that
// is no float) are returned unchanged.
inline double floatDecimal(double v) {
  if (!(v > 0.0) || v != (double)(float)v) return v;
  const float f = (float)v;
  const int e = (int)floor(log10(v));
  for (int digits = 1; digits <= 9; ++digits) {
    const double scale = pow(10.0, digits - 1 - e);
    const double x = v * scale;
    // Halfway (0.126953125 at 8 digits): v is a decimal of one more digit,
    // and neither neighbour is nearer; the next count finds v itself.
    if (x - floor(x) == 0.5) continue;
    const double d = round(x) / scale;
    if ((float)d == f) return d;
  }
  return v;
}

// ceil(a * n), where a is a decimal setting: a product within 1e-12 of its
// own size above a whole number is that number (0.07 * 100 is
// 7.000000000000001 in double, and means 7).
inline size_t ceilMul(double a, size_t n) {
  const double x = a * (double)n;
  const size_t c = (size_t)x;
  return (double)c < x && x - (double)c > x * 1e-12 ? c + 1 : c;
}

// A plan's float settings as the decimals they were given as (floatDecimal),
// worked out once per setting rather than on every plan (a comm keeps them:
// gc::SparseDecimals).
struct PlanSettings {
  double density, oversample, sampleRate;
};

inline PlanSettings planSettings(double density, double oversample, double sampleRate) {
  return {floatDecimal(density), floatDecimal(oversample), floatDecimal(sampleRate)};
}

// k = ceil(density*n) but at least 1: a density so small that k would round
// to 0 still sends the largest entry (documented in docs/sparse.md). The
// float settings count as the decimals they were given as (floatDecimal):
// 0.001 of 100000 is 100 slots, where the float's 100.0000047 made 101.
inline Plan makePlan(size_t n, const PlanSettings& s, bool exact) {
  const double density = s.density, oversample = s.oversample, sampleRate = s.sampleRate;
  Plan p{};
  p.density = density;
  p.k = ceilMul(density, n);
  if (p.k < 1) p.k = 1;
  if (p.k > n) p.k = n;
  if (exact) {
    p.kmax = p.k;
  } else {
    p.kmax = ceilMul(oversample * density, n);
    if (p.kmax < p.k) p.kmax = p.k;
    if (p.kmax > n) p.kmax = n;
  }
  size_t m = ceilMul(sampleRate, n);
  if (m < kMinSample) m = kMinSample;
  // For tiny densities kMinKeep/density exceeds any size_t (converting it
  // would be undefined): compare in double, the sample is capped at n anyway.
  const double keepAll = ceil((double)kMinKeep / density);
  if ((double)m < keepAll) m = keepAll >= (double)n ? n : (size_t)keepAll;
  if (m > n) m = n;
  p.sample = m;
  p.keep = ceilMul(density, m);
  if (p.keep < 1) p.keep = 1;
  if (p.keep > m) p.keep = m;
  p.stride = n / m;
  p.offsetRange = n - m * p.stride + 1;  // offset + m*stride - 1 < n
  return p;
}

inline Plan makePlan(size_t n, double density, bool exact, double oversample, double sampleRate) {
  return makePlan(n, planSettings(density, oversample, sampleRate), exact);
}

// Per-step sample offset from the call's key.
GC_HD size_t sampleOffset(uint64_t key, size_t range) {
  return (size_t)(hashKey(key, 0x5a17ull) % (uint64_t)range);
}

// Sample j of a call: one element of its stratum [off + j*stride, off +
// (j+1)*stride), drawn by the call's key (jittered stratified sampling). A
// fixed stride alone sees the same few columns of a matrix whose row length
// shares a factor with it, and column-scaled gradients (dW = delta x^T)
// then put the selected count far from k.
GC_HD size_t sampleIndex(uint64_t key, size_t off, size_t j, size_t stride) {
  const size_t jitter =
      stride > 1 ? (size_t)(hashKey(key, 0x5a18000000000000ull ^ (uint64_t)j) % (uint64_t)stride)
                 : 0;
  return off + j * stride + jitter;
}

// The squared norm is summed in double (gc::dadd): the square of any finite
// float and any realistic sum of them fit, so a huge but finite gradient is
// still clipped (an fp32 sum overflows to Inf at |g| ~ 2e19, or 2e16 over
// 2^20 entries, and would switch clipping off exactly when it matters).
// g^2, exact in double.
GC_HD double squareD(float g) {
  return dmul((double)g, (double)g);
}

// Clipping scale from the squared norm: ||g|| <= thr after scaling. A norm
// that is not finite leaves g alone (its NaN/Inf must reach the output).
GC_HD float clipScale(double sumsq, float thr) {
#if defined(__CUDA_ARCH__)
  const double norm = __dsqrt_rn(sumsq);
  if (!(norm < 1.0e308) || !(norm > (double)thr)) return 1.0f;
  return __double2float_rn(__ddiv_rn((double)thr, norm));
#else
  const double norm = __builtin_sqrt(sumsq);
  if (!(norm < 1.0e308) || !(norm > (double)thr)) return 1.0f;
  return (float)((double)thr / norm);
#endif
}

// One element of the accumulation: g scaled, then u = m*u + g (momentum
// correction, u may be null), then v += u (or g). vIn null: v starts at 0.
// keep (may be null) receives v as it was before the call. An element whose
// v would not be finite (a NaN/Inf g, or an overflow) gets that value in v,
// so it is selected and reaches the output (AMP's scaler must see it), and
// u is left as it was; settle() then puts the old v back from keep, so the
// step leaves no trace in the element's state (as if it had been skipped).
GC_HD void accumulate(float g, float scale, float m, float* u, float* v, bool vIn, float* keep) {
  const float old = vIn ? *v : 0.0f;
  if (keep) *keep = old;
  float x = scale == 1.0f ? g : fmul(g, scale);
  if (!isFiniteBits(absKey(x))) {
    *v = x;
    return;
  }
  float ux = x;
  if (u) ux = fadd(fmul(m, *u), x);
  const float nv = vIn ? fadd(old, ux) : ux;
  if (u && isFiniteBits(absKey(nv))) *u = ux;
  *v = nv;
}

// After the exchange: an element whose v is not finite takes its old value
// back from keep; a finite one is cleared when all of v was sent (clear),
// with u when momentum masking is on (u not null).
GC_HD void settle(float* v, float keep, float* u, bool clear) {
  if (!isFiniteBits(absKey(*v))) {
    *v = keep;
  } else if (clear) {
    *v = 0.0f;
    if (u) *u = 0.0f;
  }
}

// Value put on the wire for a selected v, and what stays in v. For a finite
// v the wire value w is v rounded to the value type and v - w is exact
// (Sterbenz: w is within a factor 2 of v), so sent + residual == v. A
// finite v that rounds to Inf saturates to the type's largest finite value
// (fp16 above 65520, bf16 from 0x7f7f8000, ~3.3961e38); v - w then stays
// exact for bf16, and for fp16 while |v| < 2^29 (65504 is a multiple of
// fp32's spacing there: docs/sparse.md). A non-finite v is sent as is and
// stays in v until settle() restores the old value.
GC_HD float wireValue(float v, DType vt) {
  if (vt == DType::F32) return v;
  float w, largest;
  if (vt == DType::F16) {
    w = halfToFloat(floatToHalf(v));
    largest = 65504.0f;
  } else {
    w = bf16ToFloat(floatToBf16(v));
    largest = bf16ToFloat(0x7f7fu);
  }
  if (isFiniteBits(absKey(v)) && !isFiniteBits(absKey(w))) w = v > 0 ? largest : -largest;
  return w;
}

GC_HD float residualAfterSend(float v, float w) {
  return isFiniteBits(absKey(v)) ? fsub(v, w) : v;
}

// Momentum masking clears u where v was sent, but not for a non-finite v:
// accumulate() left that element's u as it was before the call.
GC_HD bool masksAfterSend(float v) {
  return isFiniteBits(absKey(v));
}

// Rand-k draws k elements, so a non-finite v elsewhere would not reach the
// output: each rank sends a flag with the k values, 0 or NaN (NaN where its
// v holds a non-finite value), summed with them so NaN propagates; a NaN
// flag makes every drawn value NaN, the same on every rank.
GC_HD float nonFiniteFlag(float v) {
  return isFiniteBits(absKey(v)) ? 0.0f : canonicalNaN();
}

GC_HD float flagged(float x, float flag) {
  return isFiniteBits(absKey(flag)) ? x : flag;
}

// Rand-k: a keyed bijection of [0, n) (a 4-round Feistel network on the
// next even power of two, cycle-walked into range). The first k images are
// k distinct, uniformly drawn indices, the same on every rank for one key.
GC_HD uint32_t feistelRound(uint32_t half, uint64_t key, int round, uint32_t mask) {
  return (uint32_t)hashKey(key, ((uint64_t)round << 32) | half) & mask;
}

GC_HD uint32_t permute(uint64_t key, uint32_t x, uint32_t n) {
  int bits = 2;
  while (bits < 32 && (1ull << bits) < (uint64_t)n) bits += 2;
  const int h = bits / 2;
  const uint32_t mask = (uint32_t)((1ull << h) - 1);
  do {
    uint32_t l = x >> h, r = x & mask;
    for (int round = 0; round < 4; ++round) {
      uint32_t t = l ^ feistelRound(r, key, round, mask);
      l = r;
      r = t;
    }
    x = (l << h) | r;
  } while (x >= n);
  return x;
}

// Wire slots. A rank's received slot list is well-formed iff its filled
// entries are a strictly increasing prefix of indices below n, followed
// only by kEmptySlot: what every selector writes. Scatter-adding a list that
// is not (a duplicate index, say) would depend on the order of the adds, and
// on a GPU on thread timing, so ranks could diverge; such a list is dropped
// whole. The rule holds iff every slot j passes slotPairOk against slot j+1
// (kEmptySlot past the last one): the pairs chain the order and carry the
// bound (a filled successor is checked as the next pair's first entry), so
// the slots can be checked in parallel.
GC_HD bool slotPairOk(uint32_t cur, uint32_t next, size_t n) {
  if (cur == kEmptySlot) return next == kEmptySlot;
  return cur < n && (next == kEmptySlot || next > cur);
}

GC_HD uint32_t slotSuccessor(const uint32_t* idx, size_t slots, size_t j) {
  return j + 1 < slots ? idx[j + 1] : kEmptySlot;
}

// Pairwise tree over kNormLanes lane sums in place (the order of the
// device's shared-memory reduction); a[0] ends as the total.
inline void treeSumHost(double* a) {
  for (int s = kNormLanes / 2; s > 0; s /= 2) {
    for (int l = 0; l < s; ++l) a[l] = dadd(a[l], a[l + s]);
  }
}

}  // namespace sparse
}  // namespace gc
