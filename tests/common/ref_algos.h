// Serial references of the dense algorithms (one call, all ranks), written
// from their description (docs/algorithms.md) rather than from the library's
// code. Used by the CPU tests and by the multi-process GPU test.
#pragma once

#include <gtest/gtest.h>
#include <math.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "gradcomp.h"
#include "gradcomp/reference.h"
#include "kernels/common_math.cuh"
#include "kernels/qsgd_math.cuh"
#include "tests/common/test_util.h"

namespace gctest {
namespace ref {

using gc::DType;

struct Rank {
  std::vector<uint16_t> half;  // fp16/bf16 storage
  std::vector<float> f32;
  std::vector<float> residual, ownerRes;
};

inline ncclDataType_t nccl(DType t) {
  return t == DType::F32 ? ncclFloat32 : t == DType::F16 ? ncclFloat16 : ncclBfloat16;
}

inline std::vector<float> widen(const Rank& r, DType t, size_t n) {
  if (t == DType::F32) return r.f32;
  std::vector<float> w(n);
  for (size_t i = 0; i < n; ++i) w[i] = gc::loadAsFloat(r.half.data(), t, i);
  return w;
}

inline const void* data(const Rank& r, DType t) {
  return t == DType::F32 ? (const void*)r.f32.data() : (const void*)r.half.data();
}

inline std::vector<size_t> split(size_t count, int parts, size_t d) {
  size_t units = (count + d - 1) / d, per = (units + parts - 1) / parts;
  std::vector<size_t> off(parts + 1);
  for (int j = 0; j <= parts; ++j) off[j] = std::min(count, j * per * d);
  return off;
}

// Code of v under nearest rounding (GRADCOMP_ROUNDING=nearest), from its
// rule: level = floor(r) + (frac(r) > 1/2), ties down, r = |v| s / scale as
// the shared math computes it; zero or non-finite scales code to 0.
inline uint32_t nearestCode(float v, float scale, int bits) {
  const uint32_t sb = gc::floatToBits(scale);
  if (sb == 0 || !gc::isFiniteBits(sb)) return 0;
  const int s = gc::qsgd::levels(bits);
  const float r = gc::qsgd::quantRatio(fabsf(v), scale, gc::qsgd::reciprocal(scale, s), s);
  const float lo = floorf(r);
  int level = (int)lo + (r - lo > 0.5f ? 1 : 0);
  if (level > s) level = s;
  const uint32_t sign = level != 0 && signbit(v) ? 1u : 0u;
  return (sign << (bits - 1)) | (uint32_t)level;
}

// The serial QSGD encode both rules below share: per bucket of d elements the
// values v = x (+ residual) and their max-|v| scale; the stream holds
// stored(scale, maxBits) per bucket and code(v, scale, i) per element, packed
// little-endian at bit i*bits; with a residual, v - value(code, scale) is left
// behind in finite buckets.
template <typename Stored, typename Code, typename Value>
inline void encSerial(const void* x, DType t, float* res, size_t n, int bits, int d, uint8_t* out,
                      Stored stored, Code code, Value value) {
  const size_t nb = (n + d - 1) / d;
  std::vector<uint32_t> words((n * bits + 31) / 32, 0u);
  for (size_t b = 0; b < nb; ++b) {
    const size_t lo = b * d, hi = std::min(n, lo + d);
    std::vector<float> v(hi - lo);
    uint32_t maxBits = 0;
    for (size_t i = lo; i < hi; ++i) {
      const float xi = gc::loadAsFloat(x, t, i);
      v[i - lo] = res ? xi + res[i] : xi;
      maxBits = std::max(maxBits, gc::floatToBits(v[i - lo]) & 0x7fffffffu);
    }
    const float scale = gc::qsgd::scaleFromMaxBits(maxBits);
    const float st = stored(scale, maxBits);
    memcpy(out + b * 4, &st, 4);
    for (size_t i = lo; i < hi; ++i) {
      const uint32_t c = code(v[i - lo], scale, i);
      const size_t bit = i * bits;
      words[bit / 32] |= c << (bit % 32);
      if (bit % 32 + bits > 32) words[bit / 32 + 1] |= c >> (32 - bit % 32);
      if (res && gc::isFiniteBits(maxBits)) res[i] = v[i - lo] - value(c, scale);
    }
  }
  memcpy(out + nb * 4, words.data(), words.size() * 4);
}

// QSGD encode with nearest rounding, serially: encSerial with nearestCode per
// element, the scale stored as it is, decoded by the library's decodeValue.
inline void encNearest(const void* x, DType t, float* res, size_t n, int bits, int d,
                       uint8_t* out) {
  encSerial(
      x, t, res, n, bits, d, out, [](float scale, uint32_t) { return scale; },
      [&](float v, float scale, size_t) { return nearestCode(v, scale, bits); },
      [&](uint32_t c, float scale) { return gc::qsgd::decodeValue(c, scale, bits); });
}

// Square levels (GRADCOMP_LEVELS=square), from their description
// (docs/algorithms.md, "QSGD levels"): level k of s stands for (k/s)^2 of
// the bucket's max |v|. With u = |v| s^2 / scale (the shared math's ratio
// at s^2 levels), the level below is the largest k with k^2 <= u, found by
// counting up; the draw rounds up when it is below (u - k^2) / (2k + 1), the
// share of the step to (k+1)^2 that u covers (nearest: the draw is 1/2),
// compared exactly: draw * (2k + 1) < u - k^2 in double, where both sides
// are exact (at most 32 and 24 significant bits).
inline int squareLevel(float u, int s, float draw) {
  int k = 0;
  while (k < s && (float)((k + 1) * (k + 1)) <= u) ++k;
  if (k == s) return s;
  return k + ((double)draw * (double)(2 * k + 1) < (double)u - (double)(k * k) ? 1 : 0);
}

// Value of a square bucket's code: sign * (k*k / (s*s)) * |scale|.
inline float squareValue(uint32_t code, float scale, int bits) {
  const int s = gc::qsgd::levels(bits);
  const int k = (int)(code & (uint32_t)s);
  const float v = (float)(k * k) / (float)(s * s) * fabsf(scale);
  return (code >> (bits - 1)) & 1u ? -v : v;
}

// QSGD encode with square levels, serially: encSerial with the scale stored
// with its sign bit set when finite and non-zero; each element's level from
// squareLevel with the element's draw (uniform24 of the key at its index, or
// 1/2 for nearest); decoded by squareValue.
inline void encSquare(const void* x, DType t, float* res, size_t n, int bits, int d, uint64_t key,
                      bool nearest, uint8_t* out) {
  const int s = gc::qsgd::levels(bits);
  auto plain = [](uint32_t maxBits) { return maxBits != 0 && gc::isFiniteBits(maxBits); };
  encSerial(
      x, t, res, n, bits, d, out,
      [&](float scale, uint32_t maxBits) { return plain(maxBits) ? -scale : scale; },
      [&](float v, float scale, size_t i) -> uint32_t {
        if (!plain(gc::floatToBits(scale))) return 0;
        const float u =
            gc::qsgd::quantRatio(fabsf(v), scale, gc::qsgd::reciprocal(scale, s * s), s * s);
        const int level = squareLevel(u, s, nearest ? 0.5f : gc::uniform24(key, i));
        return (level != 0 && signbit(v) ? 1u << (bits - 1) : 0u) | (uint32_t)level;
      },
      [&](uint32_t c, float scale) { return squareValue(c, scale, bits); });
}

// One QSGD encode as the algorithms do it: stochastic rounding through the
// C API with `key`, or nearest rounding (key unused) from its rule; square
// levels from their rule (encSquare), either rounding.
inline std::vector<uint8_t> enc(const void* x, DType t, float* res, size_t n, int bits, int d,
                                uint64_t key, bool nearest = false, bool square = false) {
  std::vector<uint8_t> out(gradcompQsgdEncodedBytes(n, bits, d) + 4);
  if (n && square) {
    encSquare(x, t, res, n, bits, d, key, nearest, out.data());
  } else if (n && nearest) {
    encNearest(x, t, res, n, bits, d, out.data());
  } else if (n) {
    EXPECT_EQ(gradcompQsgdEncodeTypedHost(x, nccl(t), res, n, bits, d, key, out.data()), 0);
  }
  return out;
}

inline bool nearest(const gradcompConfig_t& c) {
  return c.rounding == gradcompRoundNearest;
}
inline bool square(const gradcompConfig_t& c) {
  return c.levels == gradcompLevelsSquare;
}

inline void dec(const std::vector<uint8_t>& e, size_t n, int bits, int d, float* out, bool acc) {
  if (n) EXPECT_EQ(gradcompQsgdDecodeHost(e.data(), n, bits, d, out, acc ? 1 : 0), 0);
}

// Output of one call as the reference computes it: fp32 values, then the
// final conversion to the buffer type.
inline std::vector<float> finish(const std::vector<float>& sum, DType t, float divisor) {
  std::vector<float> out(sum.size());
  for (size_t i = 0; i < sum.size(); ++i) {
    float v = divisor == 1.0f ? sum[i] : sum[i] / divisor;
    if (t == DType::F16) v = gc::halfToFloat(gc::floatToHalf(v));
    if (t == DType::BF16) v = gc::bf16ToFloat(gc::floatToBf16(v));
    out[i] = v;
  }
  return out;
}

// A call whose output holds a NaN or an infinity (any rank's, for a
// reduce-scatter) clears every rank's residual and owner residual
// (collective.h, discardStateIfNonFinite; docs/reliability.md, "Non-finite
// gradients"): called with each output of the call, after the call.
inline void refDiscardIfNonFinite(std::vector<Rank>& R, const std::vector<float>& out) {
  if (std::all_of(out.begin(), out.end(), [](float o) { return std::isfinite(o); })) return;
  for (Rank& r : R) {
    std::fill(r.residual.begin(), r.residual.end(), 0.0f);
    std::fill(r.ownerRes.begin(), r.ownerRes.end(), 0.0f);
  }
}

// Serial references of the three algorithms (one call, all ranks), written
// from their description rather than from the library's code; the residuals
// of R are advanced, and cleared after a non-finite output.
inline std::vector<float> refTwoShot(std::vector<Rank>& R, DType t, size_t n,
                                     const gradcompConfig_t& c, uint64_t step, bool avg) {
  const int N = (int)R.size(), d = c.bucketSize, b = c.bits;
  auto off = split(n, N, d);
  std::vector<float> result(n);
  // enc_[i][j]: rank i's encoding of chunk j.
  std::vector<std::vector<std::vector<uint8_t>>> e(N, std::vector<std::vector<uint8_t>>(N));
  std::vector<std::vector<float>> own(N);
  for (int i = 0; i < N; ++i) {
    std::vector<float> x = widen(R[i], t, n);
    for (int j = 0; j < N; ++j) {
      size_t lo = off[j], len = off[j + 1] - off[j];
      float* res = c.errorFeedback ? R[i].residual.data() + lo : nullptr;
      if (j != i) {
        e[i][j] = enc(x.data() + lo, DType::F32, res, len, b, d, gc::deriveKey(c.seed, step, i, j),
                      nearest(c), square(c));
      } else {
        own[i].assign(len, 0.0f);
        for (size_t k = 0; k < len; ++k) {
          own[i][k] = res ? x[lo + k] + res[k] : x[lo + k];
          if (res) res[k] = 0.0f;
        }
      }
    }
  }
  for (int j = 0; j < N; ++j) {
    size_t lo = off[j], len = off[j + 1] - off[j];
    if (!len) continue;
    std::vector<float> acc(len, 0.0f);
    for (int i = 0; i < N; ++i) {
      if (i == j) {
        for (size_t k = 0; k < len; ++k) acc[k] = i == 0 ? own[j][k] : acc[k] + own[j][k];
      } else {
        dec(e[i][j], len, b, d, acc.data(), i != 0);
      }
    }
    auto e2 = enc(acc.data(), DType::F32, c.ownerResidual ? R[j].ownerRes.data() : nullptr, len, b,
                  d, gc::deriveKey(c.seed, step, j, 0x100000000ull), nearest(c), square(c));
    dec(e2, len, b, d, result.data() + lo, false);
  }
  std::vector<float> out = finish(result, t, avg ? (float)N : 1.0f);
  refDiscardIfNonFinite(R, out);
  return out;
}

inline std::vector<float> refRing(std::vector<Rank>& R, DType t, size_t n,
                                  const gradcompConfig_t& c, uint64_t step, bool avg) {
  const int N = (int)R.size(), d = c.bucketSize, b = c.bits;
  auto off = split(n, N, d);
  std::vector<float> result(n);
  for (int j = 0; j < N; ++j) {  // chunk j travels from rank j around the ring
    size_t lo = off[j], len = off[j + 1] - off[j];
    std::vector<float> x = widen(R[j], t, n);
    auto cur = enc(x.data() + lo, DType::F32, c.errorFeedback ? R[j].residual.data() + lo : nullptr,
                   len, b, d, gc::deriveKey(c.seed, step, j, 0), nearest(c), square(c));
    for (int hop = 1; hop < N; ++hop) {
      int r = (j + hop) % N;  // receiver; at its step s = hop-1
      std::vector<float> y(len);
      dec(cur, len, b, d, y.data(), false);
      std::vector<float> xr = widen(R[r], t, n);
      for (size_t k = 0; k < len; ++k) y[k] = xr[lo + k] + y[k];
      float* res = c.errorFeedback ? R[r].residual.data() + lo : nullptr;
      if (hop < N - 1) {
        cur = enc(y.data(), DType::F32, res, len, b, d, gc::deriveKey(c.seed, step, r, hop),
                  nearest(c), square(c));
      } else {
        if (res) {
          for (size_t k = 0; k < len; ++k) y[k] = y[k] + res[k], res[k] = 0.0f;
        }
        auto e2 = enc(y.data(), DType::F32, c.ownerResidual ? R[r].ownerRes.data() : nullptr, len,
                      b, d, gc::deriveKey(c.seed, step, r, N), nearest(c), square(c));
        dec(e2, len, b, d, result.data() + lo, false);
      }
    }
  }
  std::vector<float> out = finish(result, t, avg ? (float)N : 1.0f);
  refDiscardIfNonFinite(R, out);
  return out;
}

inline std::vector<float> refAllgather(std::vector<Rank>& R, DType t, size_t n,
                                       const gradcompConfig_t& c, uint64_t step, bool avg) {
  const int N = (int)R.size();
  std::vector<float> acc(n);
  for (int i = 0; i < N; ++i) {
    auto e = enc(data(R[i], t), t, c.errorFeedback ? R[i].residual.data() : nullptr, n, c.bits,
                 c.bucketSize, gc::deriveKey(c.seed, step, i, 0), nearest(c), square(c));
    dec(e, n, c.bits, c.bucketSize, acc.data(), i != 0);
  }
  std::vector<float> out = finish(acc, t, avg ? (float)N : 1.0f);
  refDiscardIfNonFinite(R, out);
  return out;
}

// The reference of the dense algorithm `algo` (two-shot, ring or allgather).
inline std::vector<float> refDense(std::vector<Rank>& R, DType t, size_t n,
                                   const gradcompConfig_t& c, uint64_t step, bool avg,
                                   gradcompAlgo_t algo) {
  if (algo == gradcompAlgoTwoShot) return refTwoShot(R, t, n, c, step, avg);
  if (algo == gradcompAlgoRing) return refRing(R, t, n, c, step, avg);
  return refAllgather(R, t, n, c, step, avg);
}

inline std::vector<Rank> makeInputs(int N, size_t n, DType t, uint64_t seed) {
  std::vector<Rank> R(N);
  for (int i = 0; i < N; ++i) {
    R[i].f32 = gctest::normal(n, seed * 131 + i, 1.0f + i);
    if (t != DType::F32) {
      R[i].half.resize(n);
      for (size_t k = 0; k < n; ++k) {
        R[i].half[k] =
            t == DType::F16 ? gc::floatToHalf(R[i].f32[k]) : gc::floatToBf16(R[i].f32[k]);
      }
    }
    R[i].residual.assign(n, 0.0f);
    R[i].ownerRes.assign(n, 0.0f);
  }
  return R;
}

}  // namespace ref
}  // namespace gctest
