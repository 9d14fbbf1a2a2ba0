// Elias-coded QSGD: the element math shared by the CUDA kernels and the host
// reference, so both write the same bytes.
//
// Levels are QSGD's (kernels/qsgd_math.cuh: level = floor(|x|/scale*s + u),
// the same RNG draw per element), but s is any level count, not only
// 2^(b-1)-1: with s = levels(b) and the max-norm scale, decode reproduces the
// fixed-width QSGD decode bit for bit. The L2-norm scale is the QSGD paper's
// (its ~2.8n + 32 bits bound at s = sqrt(n) is stated for it).
//
// Stream of one bucket, as in the paper: for each nonzero level in element
// order, Elias(zeros since the previous nonzero + 1), a sign bit (1 =
// negative), Elias(level); then, when the bucket ends in zeros,
// Elias(trailing zeros + 1), which takes the decoder exactly to the end.
// Bits are LSB-first in little-endian 32-bit words (stream bit k is bit k&31
// of word k>>5), as the fixed-width packing.
//
// Layout of one encoding (nb = ceil(count/d) buckets), all 32-bit words:
//   scales[nb]     fp32
//   offsets[nb+1]  start of bucket b's stream, in words from the stream
//                  start; offsets[nb] is the stream's length. Bucket 0
//                  starts at word 0, so offsets[0] holds the levels s
//                  instead (when nb >= 1): the decoder refuses other levels,
//                  which would decode every value scaled by s_enc / s_dec.
//   stream         each bucket's bits start on a word boundary, padded with 0
// Word-aligned buckets let one GPU block own each bucket's words, and the
// offsets let a decoder start every bucket at once.
#pragma once

#include "qsgd_math.cuh"

namespace gc {
namespace elias {

enum class Code : int { Gamma = 0, Omega = 1 };
enum class Norm : int { Max = 0, L2 = 1 };

constexpr int kMinLevels = 1;
// Levels below 2^16 keep every code (level, gap <= 8193) within 32 bits.
constexpr int kMaxLevels = 65535;

struct Params {
  int s;       // levels
  int bucket;  // d
  Code code;
  Norm norm;
};

GC_HD int floorLog2(uint32_t v) {  // v >= 1
#if defined(__CUDA_ARCH__)
  return 31 - __clz(v);
#else
  return 31 - __builtin_clz(v);
#endif
}

GC_HD int ctz32(uint32_t v) {  // v != 0
#if defined(__CUDA_ARCH__)
  return __ffs(v) - 1;
#else
  return __builtin_ctz(v);
#endif
}

// The low `len` bits of v (1..32) in reverse order.
GC_HD uint32_t reverseBits(uint32_t v, int len) {
#if defined(__CUDA_ARCH__)
  return __brev(v) >> (32 - len);
#else
  v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
  v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
  v = ((v >> 4) & 0x0f0f0f0fu) | ((v & 0x0f0f0f0fu) << 4);
  v = ((v >> 8) & 0x00ff00ffu) | ((v & 0x00ff00ffu) << 8);
  v = (v >> 16) | (v << 16);
  return v >> (32 - len);
#endif
}

GC_HD uint32_t lowMask(int len) {  // len 0..32
  return len >= 32 ? 0xffffffffu : ((1u << len) - 1u);
}

// A code word: bit j is the j-th bit of the code in stream order.
struct Codeword {
  uint32_t bits;
  int len;
};

// Gamma: floor(log2 n) zeros, then n in binary, most significant bit first.
GC_HD int gammaLength(uint32_t n) {
  return 2 * floorLog2(n) + 1;
}
GC_HD Codeword gamma(uint32_t n) {
  const int L = floorLog2(n);
  return Codeword{reverseBits(n, L + 1) << L, 2 * L + 1};
}

// Omega (recursive): groups binary(n), binary(len-1), ... written innermost
// first, then a 0.
GC_HD int omegaLength(uint32_t n) {
  int len = 1;
  while (n > 1) {
    const int L = floorLog2(n) + 1;
    len += L;
    n = (uint32_t)(L - 1);
  }
  return len;
}
GC_HD Codeword omega(uint32_t n) {
  uint32_t bits = 0;
  int len = 1;
  while (n > 1) {
    const int L = floorLog2(n) + 1;
    bits = reverseBits(n, L) | (bits << L);
    len += L;
    n = (uint32_t)(L - 1);
  }
  return Codeword{bits, len};
}

GC_HD int codeLength(Code c, uint32_t n) {
  return c == Code::Gamma ? gammaLength(n) : omegaLength(n);
}
GC_HD Codeword encodeNumber(Code c, uint32_t n) {
  return c == Code::Gamma ? gamma(n) : omega(n);
}

// Bits of one bucket can never exceed len * (2 + codeLength(s)): a nonzero
// costs at most 1 + 1 + codeLength(s) with no zeros before it, and a run of g
// zeros adds codeLength(g+1) - 1 <= 3g bits (both codes), less than the
// 3g bits the same g elements would cost as nonzeros.
GC_HD uint64_t maxBucketBits(int len, int s, Code c) {
  return (uint64_t)len * (uint64_t)(2 + codeLength(c, (uint32_t)s));
}

GC_HD size_t numBuckets(size_t count, int bucket) {
  return qsgd::numBuckets(count, bucket);
}
GC_HD size_t headerWords(size_t count, int bucket) {
  return 2 * numBuckets(count, bucket) + 1;
}
GC_HD size_t maxStreamWords(size_t count, const Params& p) {
  const size_t nb = numBuckets(count, p.bucket);
  if (nb == 0) return 0;
  const size_t lastLen = count - (nb - 1) * (size_t)p.bucket;
  return (nb - 1) * (size_t)((maxBucketBits(p.bucket, p.s, p.code) + 31) / 32) +
         (size_t)((maxBucketBits((int)lastLen, p.s, p.code) + 31) / 32);
}
GC_HD size_t maxEncodedBytes(size_t count, const Params& p) {
  return 4 * (headerWords(count, p.bucket) + maxStreamWords(count, p));
}

// QSGD's level of x (qsgd::encodeValue's arithmetic with s given directly).
// Non-finite or zero scales give level 0.
GC_HD int quantizeLevel(float x, float scale, float rec, int s, float u) {
  const uint32_t scaleBits = floatToBits(scale);
  if (scaleBits == 0 || !isFiniteBits(scaleBits)) return 0;
  const float ax = bitsToFloat(floatToBits(x) & 0x7fffffffu);
  return qsgd::levelFromRatio(qsgd::quantRatio(ax, scale, rec, s), s, u);
}

GC_HD bool negativeCode(float x, int level) {
  return level != 0 && (floatToBits(x) >> 31) != 0;
}

GC_HD float decodeValue(int level, bool negative, float scale, int s) {
  if (!isFiniteBits(floatToBits(scale) & 0x7fffffffu)) return canonicalNaN();
  const float v = fmul(qsgd::levelValue(level, s), scale);
  return negative ? -v : v;
}

// The L2 scale from a bucket's sum of squares. The sum is taken in one fixed
// order (32 strided partial sums, element i into partial i%32 in ascending i,
// then the warp shuffle-down tree 16, 8, 4, 2, 1), in double so that the
// scale stays >= max|x|. A finite bucket whose norm overflows fp32 takes
// FLT_MAX, still >= max|x|, so its levels stay unbiased.
GC_HD float l2ScaleFromSumSquares(double ss) {
#if defined(__CUDA_ARCH__)
  const float f = __double2float_rn(__dsqrt_rn(ss));
#else
  const float f = (float)__builtin_sqrt(ss);
#endif
  const bool finiteSum = ss == ss && ss <= 1.7976931348623157e308;
  if (f != f) return canonicalNaN();
  return finiteSum && !isFiniteBits(floatToBits(f)) ? 3.40282346638528859812e+38f : f;
}

// Reads codes from a stream of 32-bit words, lowest bit first, zeros past
// the end (overrun() then tells). Index is the bit position's type: size_t
// on the host, uint32_t in the kernels. number() returns 0 for a malformed
// code.
template <typename Index>
class BitReader {
 public:
  GC_HD BitReader(const uint32_t* words, Index nWords) : words_(words), nWords_(nWords) {}
  GC_HD uint32_t peek() const {
    const Index w = pos_ >> 5;
    const uint64_t lo = w < nWords_ ? words_[w] : 0u;
    const uint64_t hi = w + 1 < nWords_ ? words_[w + 1] : 0u;
    return (uint32_t)((lo | (hi << 32)) >> (pos_ & 31));
  }
  GC_HD void skip(int k) { pos_ += (Index)k; }
  // In 64 bits: the kernels' uint32_t word count times 32 wraps from 2^27
  // words on (a bucket span only a malformed header gives).
  GC_HD bool overrun() const { return (uint64_t)pos_ > (uint64_t)nWords_ * 32u; }
  GC_HD uint32_t number(Code c) {
    uint32_t p = peek();
    if (c == Code::Gamma) {
      if (p == 0) return 0;
      const int L = ctz32(p);
      if (L > 15) return 0;
      skip(2 * L + 1);
      return reverseBits((p >> L) & lowMask(L + 1), L + 1);
    }
    uint32_t n = 1;
    for (int group = 0; group < 6; ++group) {
      p = peek();
      if ((p & 1u) == 0) {
        skip(1);
        return n;
      }
      if (n > 16) return 0;
      const int len = (int)n + 1;
      n = reverseBits(p & lowMask(len), len);
      skip(len);
    }
    return 0;
  }

 private:
  const uint32_t* words_;
  Index nWords_;
  Index pos_ = 0;
};

}  // namespace elias
}  // namespace gc
