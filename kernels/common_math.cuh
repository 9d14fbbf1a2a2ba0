// Math shared by the CUDA kernels and the host reference codecs. Everything
// here is __host__ __device__ and written so that both sides round the same
// way: explicit _rn intrinsics on the device (no FMA contraction), plain IEEE
// operations on the host (built with -ffp-contract=off), and our own
// bit-level fp16/bf16 conversions instead of the toolkit's.
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define GC_HD __host__ __device__ __forceinline__
#else
#define GC_HD inline
#endif

namespace gc {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

GC_HD size_t dtypeBytes(DType t) {
  return t == DType::F32 ? 4 : 2;
}

GC_HD float bitsToFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, 4);
  return f;
#endif
}

GC_HD uint32_t floatToBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
#endif
}

// NaN results: the GPU's arithmetic returns the canonical NaN (0x7fffffff)
// whatever the operands, x86 propagates an operand's payload and sign. The
// host side returns the GPU's NaN so that NaN gradients encode, reduce and
// decode to the same bits on both sides.
GC_HD float canonicalNaN() {
  return bitsToFloat(0x7fffffffu);
}
GC_HD float hostResult(float r) {
  return r != r ? canonicalNaN() : r;
}
GC_HD double hostResultD(double r) {
  if (r == r) return r;
  const uint64_t u = 0x7fffffffffffffffull;
  double d;
  memcpy(&d, &u, 8);
  return d;
}

GC_HD float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return hostResult(a * b);
#endif
}
GC_HD float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return hostResult(a + b);
#endif
}
GC_HD float fsub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return hostResult(a - b);
#endif
}
GC_HD float fdiv(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return hostResult(a / b);
#endif
}

// a * b + c with one rounding (IEEE fma on both sides: the host's fmaf is
// correctly rounded, as the device's FFMA).
GC_HD float ffma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return hostResult(__builtin_fmaf(a, b, c));
#endif
}

// The same for double (L2 scales, squared norms).
GC_HD double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return hostResultD(a * b);
#endif
}
GC_HD double dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return hostResultD(a + b);
#endif
}

GC_HD bool isFiniteBits(uint32_t absBits) {
  return absBits < 0x7f800000u;
}

// Exact fp16 -> fp32. On the device one cvt instruction where the bits
// written here follow from the value alone (every non-NaN half: the
// conversion is exact, subnormals included), and the bit formula for NaN so
// that its payload is kept exactly as on the host. The NaN branch costs about
// six instructions per element in the fp16 encode (halfToFloatAnyNaN below
// is the conversion without it).
GC_HD float halfToFloat(uint16_t h) {
#if defined(__CUDA_ARCH__)
  if ((h & 0x7fffu) <= 0x7c00u) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
  }
  return bitsToFloat(((uint32_t)(h & 0x8000u) << 16) | 0x7f800000u |
                     ((uint32_t)(h & 0x3ffu) << 13));
#else
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t out;
  if (exp == 0x1f) {
    out = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    out = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    out = sign;
  } else {  // subnormal half: normalize
    int e = -1;
    do {
      mant <<= 1;
      ++e;
    } while ((mant & 0x400u) == 0);
    out = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  return bitsToFloat(out);
#endif
}

// halfToFloat up to a NaN's payload: the hardware conversion alone. Only for
// loads whose NaNs cannot reach an output bit: in the QSGD encode a NaN makes
// its bucket's scale the canonical NaN and its codes 0, and leaves its
// residual unwritten, whatever the payload. Zeros, subnormals, normals and
// infinities convert exactly as halfToFloat.
GC_HD float halfToFloatAnyNaN(uint16_t h) {
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  return halfToFloat(h);
#endif
}

// fp32 -> fp16, round to nearest even, overflow to Inf, NaN kept quiet.
GC_HD uint16_t floatToHalf(float f) {
  uint32_t x = floatToBits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds past 65504
  if (ax < 0x38800000u) {                                    // half subnormal or zero
    if (ax < 0x33000000u) return sign;                       // below half of min subnormal
    uint32_t e = ax >> 23;
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;  // 14..24
    uint32_t r = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return (uint16_t)(sign | r);
  }
  uint32_t r = ((ax >> 13) - (112u << 10));
  uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return (uint16_t)(sign | r);
}

GC_HD float bf16ToFloat(uint16_t h) {
  return bitsToFloat((uint32_t)h << 16);
}

GC_HD uint16_t floatToBf16(float f) {
  uint32_t x = floatToBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);  // quiet NaN
  uint32_t lsb = (x >> 16) & 1u;
  x += 0x7fffu + lsb;
  return (uint16_t)(x >> 16);
}

// On the host p is whatever the caller passed (a void*, any alignment):
// memcpy is the defined load/store there and compiles to the same move. The
// GPU entry points require element alignment.
GC_HD float loadAsFloat(const void* p, DType t, size_t i) {
#if defined(__CUDA_ARCH__)
  if (t == DType::F32) return static_cast<const float*>(p)[i];
  uint16_t h = static_cast<const uint16_t*>(p)[i];
#else
  if (t == DType::F32) {
    float f;
    memcpy(&f, static_cast<const char*>(p) + i * 4, 4);
    return f;
  }
  uint16_t h;
  memcpy(&h, static_cast<const char*>(p) + i * 2, 2);
#endif
  return t == DType::F16 ? halfToFloat(h) : bf16ToFloat(h);
}

GC_HD void storeFromFloat(void* p, DType t, size_t i, float v) {
#if defined(__CUDA_ARCH__)
  if (t == DType::F32) {
    static_cast<float*>(p)[i] = v;
  } else {
    static_cast<uint16_t*>(p)[i] = t == DType::F16 ? floatToHalf(v) : floatToBf16(v);
  }
#else
  if (t == DType::F32) {
    memcpy(static_cast<char*>(p) + i * 4, &v, 4);
  } else {
    const uint16_t h = t == DType::F16 ? floatToHalf(v) : floatToBf16(v);
    memcpy(static_cast<char*>(p) + i * 2, &h, 2);
  }
#endif
}

// Counter-based RNG: splitmix64 finalizer over (key, index). Stateless, so any
// thread computes the draw of any element, on host or device.
GC_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The hash input of (key, index) is a Weyl sequence in index: consecutive
// indices differ by kWeyl, so a kernel walking a run adds kWeyl instead of
// multiplying per element (hashKey(key, i + c) = mix64(weylPoint(key, i) + c * kWeyl)).
constexpr uint64_t kWeyl = 0x9e3779b97f4a7c15ull;
GC_HD uint64_t weylPoint(uint64_t key, uint64_t index) {
  return key + (index + 1) * kWeyl;
}
GC_HD uint64_t hashKey(uint64_t key, uint64_t index) {
  return mix64(weylPoint(key, index));
}

// Uniform in [0,1) on the 2^-24 grid, from a hash's top 24 bits.
GC_HD float uniform24FromHash(uint64_t h) {
  return (float)(uint32_t)(h >> 40) * (1.0f / 16777216.0f);
}
GC_HD float uniform24(uint64_t key, uint64_t index) {
  return uniform24FromHash(hashKey(key, index));
}

// Derives the key of one encode from the comm seed and its coordinates.
GC_HD uint64_t deriveKey(uint64_t seed, uint64_t step, uint64_t rank, uint64_t stream) {
  uint64_t k = mix64(seed ^ 0x67726164636f6d70ull);
  k = mix64(k + step * kWeyl);
  k = mix64(k + rank * 0xc2b2ae3d27d4eb4full);
  return mix64(k + stream * 0x165667b19e3779f9ull);
}

// Where an encode's RNG key comes from. The comm's algorithms derive it from
// (seed, step, rank, stream); on the CUDA backend the step is read from a
// device counter that every call advances on the stream, so replays of a
// captured CUDA graph draw fresh random numbers exactly as eager calls would.
// The public codec entry points use the seed as the key (derive = false).
struct KeySpec {
  uint64_t seed;
  uint64_t step;            // host step (CPU backend, or no device counter)
  const uint64_t* stepDev;  // device step counter, or null
  uint64_t rank;
  uint64_t stream;
  bool derive;
  // Element index of the encode's first element within the encode it is a
  // piece of (pipelined calls): element i draws what element offset + i of
  // the whole encode draws, so a piece's bytes are the whole's.
  uint64_t offset = 0;
  // QSGD nearest rounding (GRADCOMP_ROUNDING=nearest): the level's draw is
  // the constant 1/2 instead of uniform24, so the encode draws nothing.
  // Only the comm's QSGD keys set it (Comm::key); rand-k's keys never do.
  bool nearest = false;
  // QSGD square levels (GRADCOMP_LEVELS=square): level k stands for (k/s)^2
  // of the scale, and the encode marks each bucket's scale (qsgd::storedScale).
  // Only the comm's QSGD keys and the codec entry points set it.
  bool square = false;
};

GC_HD KeySpec plainKey(uint64_t key) {
  return KeySpec{key, 0, nullptr, 0, 0, false};
}

// The offset moves the Weyl start: weylPoint(key + o*kWeyl, i) =
// weylPoint(key, o + i), so uniform24 of the piece's index i is exactly the
// whole encode's draw at o + i, at no cost per element.
GC_HD uint64_t resolveKey(const KeySpec& k) {
  const uint64_t key =
      k.derive ? deriveKey(k.seed, k.stepDev ? *k.stepDev : k.step, k.rank, k.stream) : k.seed;
  return key + k.offset * kWeyl;
}

}  // namespace gc
