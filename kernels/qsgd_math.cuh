// QSGD (bucketed max-norm stochastic quantization): the element math, shared
// by the CUDA kernels and the host reference so both produce the same bytes.
#pragma once

#include "common_math.cuh"

namespace gc {
namespace qsgd {

constexpr int kMinBits = 2;
constexpr int kMaxBits = 8;
constexpr int kMinBucket = 32;
constexpr int kMaxBucket = 8192;

GC_HD int levels(int bits) {
  return (1 << (bits - 1)) - 1;
}

GC_HD size_t numBuckets(size_t count, int bucket) {
  return (count + bucket - 1) / bucket;
}
GC_HD size_t codeWords(size_t count, int bits) {
  return (count * (size_t)bits + 31) / 32;
}
GC_HD size_t encodedBytes(size_t count, int bits, int bucket) {
  return numBuckets(count, bucket) * 4 + codeWords(count, bits) * 4;
}

// Scale of a bucket from the max of |x| as raw bits: for non-negative floats
// the unsigned order of the bits is the float order and NaN sorts above Inf,
// so an integer max is exact, order-free and propagates NaN.
// A NaN bucket's scale is the canonical NaN, whatever the NaN's payload.
GC_HD float scaleFromMaxBits(uint32_t maxAbsBits) {
  return maxAbsBits > 0x7f800000u ? canonicalNaN() : bitsToFloat(maxAbsBits);
}

// s/scale, or 0 to tell quantRatio to divide per element: when s/scale
// overflows (tiny scale) or is subnormal (huge scale) it loses precision.
GC_HD float reciprocal(float scale, int s) {
  uint32_t rb = floatToBits(fdiv((float)s, scale));
  return (isFiniteBits(rb) && (rb & 0x7f800000u) != 0) ? bitsToFloat(rb) : 0.0f;
}

GC_HD float quantRatio(float ax, float scale, float rec, int s) {
  return rec != 0.0f ? fmul(ax, rec) : fmul(fdiv(ax, scale), (float)s);
}

// Level of a ratio r = |x| * s / scale (quantRatio): floor(r) + (u < frac(r)),
// at most s: unbiased up to u's grid of 2^-24 (P(u < frac) rounds frac up to
// it, a bias below 2^-24 of a level step).
GC_HD int levelFromRatio(float r, int s, float u) {
  float lo = (float)(int)r;  // r >= 0: truncation is floor
  float frac = fsub(r, lo);  // exact
  int level = (int)lo + (u < frac ? 1 : 0);
  return level > s ? s : level;
}

// Square levels (GRADCOMP_LEVELS=square): level k stands for (k/s)^2 of the
// scale instead of k/s, so the steps, (2k+1)/s^2 of the scale, are finest near
// zero, where most of a bucket's entries lie, and (2s-1)/s^2 wide at the
// top. The ratio a square
// encode works on is u = |x| s^2 / scale in [0, s^2] (quantRatio with s^2
// levels, ratioLevels): the level below is k = floor(sqrt(u)) (sqrtf, then
// corrected to the exact integer: k*k and s*s are exact in float), and the
// draw rounds up with probability (u - k^2) / (2k + 1), the share of the step
// from k^2 to (k+1)^2 that u has covered, so E[level^2] = u: unbiased up to
// the draw's grid, as levelFromRatio. At draw 1/2 (nearest) that is the
// nearer of k^2 and (k+1)^2, ties down.
// The test draw < (u - k^2) / (2k + 1) is decided exactly, without the
// division: u - k^2 is exact (k^2 <= u < 2^24 are both multiples of u's ulp,
// and the difference is no larger than u), and one fma gives
// draw (2k + 1) - (u - k^2) rounded once, which keeps its sign: the draw
// rounds up when that is negative.
GC_HD int squareLevelFromU(float u, int s, float draw) {
  if (!(u < (float)(s * s))) return s;
#if defined(__CUDA_ARCH__)
  // The approximate root (one MUFU.SQRT; IEEE's __fsqrt_rn is about eight
  // instructions and a branch) errs by a few ulp, far below 1 for roots
  // below 128: its integer part is off by at most one, which the two steps
  // below correct, so k is the host's.
  float root;
  asm("sqrt.approx.f32 %0, %1;" : "=f"(root) : "f"(u));
  int k = (int)root;
#else
  int k = (int)__builtin_sqrtf(u);
#endif
  if ((float)(k * k) > u) --k;
  if ((float)((k + 1) * (k + 1)) <= u) ++k;
  const float covered = fsub(u, (float)(k * k));
  const int level = k + (ffma(draw, (float)(2 * k + 1), -covered) < 0.0f ? 1 : 0);
  return level > s ? s : level;
}

// The ratio's multiplier: s levels of k/s, or s^2 for square levels.
GC_HD int ratioLevels(int s, bool square) {
  return square ? s * s : s;
}

// A square encode marks each bucket whose scale is finite and non-zero by
// setting the scale's sign bit (a max |x| is never negative), so the stream
// says which table decodes it and every decoder reads both kinds. A zero or
// non-finite scale is stored as it is: its codes are all 0 under either table.
GC_HD float storedScale(float scale, bool square) {
  const uint32_t b = floatToBits(scale);
  return square && b != 0 && isFiniteBits(b) ? bitsToFloat(b | 0x80000000u) : scale;
}
GC_HD bool squareScale(float stored) {
  return (floatToBits(stored) >> 31) != 0;
}
GC_HD float scaleMagnitude(float stored) {
  return bitsToFloat(floatToBits(stored) & 0x7fffffffu);
}

GC_HD int levelOf(float r, int s, float u, bool square) {
  return square ? squareLevelFromU(r, s, u) : levelFromRatio(r, s, u);
}

// Code of x from its ratio (quantRatio with ratioLevels(s, square)):
// sign << (b-1) | level.
GC_HD uint32_t codeFromRatio(float x, float r, int bits, int s, float u, bool square = false) {
  const int level = levelOf(r, s, u, square);
  uint32_t sign = (level != 0 && (floatToBits(x) >> 31)) ? 1u : 0u;
  return (sign << (bits - 1)) | (uint32_t)level;
}

// Code of x. Non-finite or zero buckets code to 0 (decode then yields NaN
// resp. 0 from the scale alone). scale is the bucket's max |x| (not the
// stored, marked one) and rec is reciprocal(scale, ratioLevels(s, square)).
GC_HD uint32_t encodeValue(float x, float scale, float rec, int bits, float u,
                           bool square = false) {
  uint32_t scaleBits = floatToBits(scale);
  if (scaleBits == 0 || !isFiniteBits(scaleBits)) return 0;
  const int s = levels(bits);
  float ax = bitsToFloat(floatToBits(x) & 0x7fffffffu);
  return codeFromRatio(x, quantRatio(ax, scale, rec, ratioLevels(s, square)), bits, s, u, square);
}

// A bucket is plain when its scale is finite and non-zero and reciprocal()
// gave a non-zero rec: nearly every bucket. encodeValue of such a bucket is
// encodePlain, and decodeWithLevel is decodePlain: the same arithmetic
// without the per-element checks, so the kernels test once per bucket.
GC_HD bool plainBucket(float scale, float rec) {
  const uint32_t b = floatToBits(scale);
  return b != 0 && isFiniteBits(b) && rec != 0.0f;
}
GC_HD uint32_t encodePlain(float x, float rec, int bits, int s, float u, bool square = false) {
  return codeFromRatio(x, fmul(bitsToFloat(floatToBits(x) & 0x7fffffffu), rec), bits, s, u, square);
}

// Nearest rounding is encodeValue at u = 1/2: level = floor(r) + (frac > 1/2),
// ties rounding down; |decode - x| <= scale / (2s) per element.
constexpr float kNearestDraw = 0.5f;

// The draw of element `index` under key: uniform24 for stochastic rounding,
// kNearestDraw for nearest (a compile-time choice in the kernels, so the
// nearest encode computes no hash at all).
template <bool kNearest>
GC_HD float roundingDraw(uint64_t key, uint64_t index) {
  if (kNearest) return kNearestDraw;
  return uniform24(key, index);
}
GC_HD float roundingDraw(bool nearest, uint64_t key, uint64_t index) {
  return nearest ? kNearestDraw : uniform24(key, index);
}

GC_HD float levelValue(int level, int s) {
  return fdiv((float)level, (float)s);
}
GC_HD float squareLevelValue(int level, int s) {
  return fdiv((float)(level * level), (float)(s * s));
}
GC_HD float levelValue(int level, int s, bool square) {
  return square ? squareLevelValue(level, s) : levelValue(level, s);
}

// Value of `code` given its level's value levelValue(code & s, s, square)
// (kernels look it up in a table instead of dividing), for a finite scale:
// the magnitude of the stored one (scaleMagnitude).
GC_HD float decodePlain(uint32_t code, float level, float scale, int bits) {
  const float v = fmul(level, scale);
  return (code >> (bits - 1)) & 1u ? -v : v;
}

// decodePlain for any scale: a non-finite one (a NaN/Inf bucket, coded all
// zeros) decodes to the canonical NaN on host and device.
GC_HD float decodeWithLevel(uint32_t code, float level, float scale, int bits) {
  if (!isFiniteBits(floatToBits(scale) & 0x7fffffffu)) return canonicalNaN();
  return decodePlain(code, level, scale, bits);
}

// Value of `code` from its bucket's stored scale (marked or not).
GC_HD float decodeValue(uint32_t code, float stored, int bits) {
  const int s = levels(bits);
  return decodeWithLevel(code, levelValue((int)(code & (uint32_t)s), s, squareScale(stored)),
                         scaleMagnitude(stored), bits);
}

// Code i of a packed stream (bit offset i*bits, little-endian 32-bit words).
GC_HD uint32_t getCode(const uint32_t* words, size_t i, int bits) {
  size_t bit = i * (size_t)bits;
  size_t w = bit >> 5;
  uint32_t sh = (uint32_t)(bit & 31);
  uint64_t pair = words[w];
  if (sh + bits > 32) pair |= (uint64_t)words[w + 1] << 32;
  return (uint32_t)(pair >> sh) & ((1u << bits) - 1u);
}

}  // namespace qsgd
}  // namespace gc
