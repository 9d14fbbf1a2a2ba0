// Host reference QSGD codec (and the public *Host entry points).
#include <string.h>

#include <vector>

#include "kernels/qsgd_math.cuh"
#include "checks.h"
#include "codecs/qsgd.h"
#include "gradcomp/reference.h"

namespace gc {

gradcompResult_t qsgdCheckParams(int bits, int bucketSize) {
  GC_ARG(bits >= qsgd::kMinBits && bits <= qsgd::kMaxBits, "bits=%d is out of range %d..%d", bits,
         qsgd::kMinBits, qsgd::kMaxBits);
  GC_ARG(bucketSize >= qsgd::kMinBucket && bucketSize <= qsgd::kMaxBucket && bucketSize % 32 == 0,
         "bucketSize=%d is out of range %d..%d or not a multiple of 32", bucketSize,
         qsgd::kMinBucket, qsgd::kMaxBucket);
  return gradcompSuccess;
}

gradcompResult_t qsgdCheckRounding(int rounding) {
  GC_ARG(rounding == gradcompRoundStochastic || rounding == gradcompRoundNearest,
         "rounding=%d is out of range 0..1 (gradcompRoundStochastic=0, gradcompRoundNearest=1)",
         rounding);
  return gradcompSuccess;
}

gradcompResult_t qsgdCheckLevels(int levels) {
  GC_ARG(levels == gradcompLevelsUniform || levels == gradcompLevelsSquare,
         "levels=%d is out of range 0..1 (gradcompLevelsUniform=0, gradcompLevelsSquare=1)",
         levels);
  return gradcompSuccess;
}

gradcompResult_t codecCheckCount(size_t count) {
  GC_ARG(count <= kMaxCodecCount, "count=%zu is out of range 0..%zu", count, kMaxCodecCount);
  return gradcompSuccess;
}

gradcompResult_t codecCheckDisjoint(std::initializer_list<CodecSpan> spans) {
  for (auto a = spans.begin(); a != spans.end(); ++a) {
    for (auto b = a + 1; b != spans.end(); ++b) {
      if (a->p == nullptr || b->p == nullptr || a->bytes == 0 || b->bytes == 0) continue;
      const uintptr_t a0 = (uintptr_t)a->p, b0 = (uintptr_t)b->p;
      GC_ARG(a0 <= b0 ? b0 - a0 >= a->bytes : a0 - b0 >= b->bytes,
             "%s=%p (%zu bytes) and %s=%p (%zu bytes) overlap: the codec reads one while it "
             "writes the other; pass separate buffers",
             a->name, a->p, a->bytes, b->name, b->p, b->bytes);
    }
  }
  return gradcompSuccess;
}

gradcompResult_t qsgdCheckDeviceCount(size_t count, int bucketSize) {
  const size_t limit = kMaxDeviceBuckets * (size_t)bucketSize;
  GC_ARG(count <= limit,
         "count=%zu is out of range 0..%zu for the CUDA QSGD kernels with bucketSize=%d (at most "
         "2^31 - 1 buckets, one grid block each); split the buffer",
         count, limit, bucketSize);
  return gradcompSuccess;
}

gradcompResult_t dtypeArg(int datatype, DType* out) {
  switch (datatype) {
    case (int)ncclFloat32:
      *out = DType::F32;
      return gradcompSuccess;
    case (int)ncclFloat16:
      *out = DType::F16;
      return gradcompSuccess;
    case (int)ncclBfloat16:
      *out = DType::BF16;
      return gradcompSuccess;
    default:
      return setError(gradcompInvalidArgument,
                      "datatype=%d is not compressible: ncclFloat32(7), ncclFloat16(6) or "
                      "ncclBfloat16(9)",
                      datatype);
  }
}

gradcompResult_t dtypeFromNccl(ncclDataType_t t, DType* out) {
  return dtypeArg((int)t, out);
}

namespace host {
namespace {

// One bucket's values and codes, on the heap: up to 40 KiB, which on the
// stack overflowed a caller's thread with a small one (a worker made with a
// 64 KiB pthread stack, musl's 128 KiB default). One per thread (the CPU
// world's ranks encode at once, each on its caller's thread), grown to the
// largest bucket the thread has encoded, so that its later encodes allocate
// nothing. Growing throws std::bad_alloc before the encode writes anything
// (the C entry points run it under guarded).
struct EncodeScratch {
  std::vector<float> values;
  std::vector<uint32_t> words;
};

EncodeScratch& encodeScratch(int bucket) {
  static thread_local EncodeScratch s;
  if (s.values.size() < (size_t)bucket) {
    s.values.resize(bucket);
    s.words.resize((size_t)bucket * qsgd::kMaxBits / 32);
  }
  return s;
}

}  // namespace

void qsgdEncode(const void* x, DType t, float* residual, size_t n, int bits, int bucket,
                uint64_t key, bool nearest, bool square, void* out) {
  const size_t nb = qsgd::numBuckets(n, bucket);
  unsigned char* scalesOut = static_cast<unsigned char*>(out);
  unsigned char* wordsOut = scalesOut + nb * 4;
  EncodeScratch& scratch = encodeScratch(bucket);
  float* v = scratch.values.data();
  uint32_t* words = scratch.words.data();
  for (size_t b = 0; b < nb; ++b) {
    const size_t base = b * bucket;
    const size_t len = n - base < (size_t)bucket ? n - base : (size_t)bucket;
    uint32_t maxBits = 0;
    for (size_t i = 0; i < len; ++i) {
      float xi = loadAsFloat(x, t, base + i);
      v[i] = residual ? fadd(xi, residual[base + i]) : xi;
      uint32_t a = floatToBits(v[i]) & 0x7fffffffu;
      if (a > maxBits) maxBits = a;
    }
    const float scale = qsgd::scaleFromMaxBits(maxBits);
    const float rec = qsgd::reciprocal(scale, qsgd::ratioLevels(qsgd::levels(bits), square));
    const float stored = qsgd::storedScale(scale, square);
    const bool finite = isFiniteBits(maxBits);
    const size_t nw = qsgd::codeWords(len, bits);
    memset(words, 0, nw * 4);
    for (size_t i = 0; i < len; ++i) {
      uint32_t code = qsgd::encodeValue(v[i], scale, rec, bits,
                                        qsgd::roundingDraw(nearest, key, base + i), square);
      size_t bit = i * bits;
      words[bit >> 5] |= code << (bit & 31);
      if ((bit & 31) + bits > 32) words[(bit >> 5) + 1] |= code >> (32 - (bit & 31));
      if (residual && finite)
        residual[base + i] = fsub(v[i], qsgd::decodeValue(code, stored, bits));
    }
    memcpy(scalesOut + b * 4, &stored, 4);
    memcpy(wordsOut + base * bits / 8, words, nw * 4);
  }
}

void qsgdDecode(const void* in, size_t n, int bits, int bucket, float* out, bool accumulate) {
  const size_t nb = qsgd::numBuckets(n, bucket);
  const float* scales = static_cast<const float*>(in);
  const uint32_t* words = reinterpret_cast<const uint32_t*>(scales + nb);
  for (size_t i = 0; i < n; ++i) {
    float v = qsgd::decodeValue(qsgd::getCode(words, i, bits), scales[i / bucket], bits);
    out[i] = accumulate ? fadd(out[i], v) : v;
  }
}

}  // namespace host
}  // namespace gc

namespace {

// The host encode entry points' body, with datatype, rounding and levels the
// ints the caller passed (gc::enumArg): each entry point reads its enums
// once, as ints.
gradcompResult_t qsgdEncodeHostEntry(const void* x, int datatype, float* residual, size_t count,
                                     int bits, int bucketSize, uint64_t seed, int rounding,
                                     int levels, void* out) {
  GC_CHECK(gc::qsgdCheckParams(bits, bucketSize));
  GC_CHECK(gc::qsgdCheckRounding(rounding));
  GC_CHECK(gc::qsgdCheckLevels(levels));
  GC_CHECK(gc::codecCheckCount(count));
  gc::DType t = gc::DType::F32;
  GC_CHECK(gc::dtypeArg(datatype, &t));
  if (count == 0) return gradcompSuccess;
  GC_ARG(x != nullptr && out != nullptr, "x=%p and out=%p must not be NULL for count=%zu", x, out,
         count);
  GC_ARG(((uintptr_t)out & 3) == 0, "out=%p must be 4-byte aligned (it starts with fp32 scales)",
         out);
  GC_ARG(((uintptr_t)residual & 3) == 0, "residual=%p must be 4-byte aligned (fp32)", residual);
  GC_CHECK(gc::codecCheckDisjoint({{x, count * gc::dtypeBytes(t), "x"},
                                   {residual, count * sizeof(float), "residual"},
                                   {out, gc::qsgd::encodedBytes(count, bits, bucketSize), "out"}}));
  // guarded: the GPU's bits whatever the thread's setting, and the scratch's
  // growth failing as a result.
  return gc::guarded([&] {
    gc::host::qsgdEncode(x, t, residual, count, bits, bucketSize, seed,
                         rounding == gradcompRoundNearest, levels == gradcompLevelsSquare, out);
    return gradcompSuccess;
  });
}

}  // namespace

extern "C" {

GC_EXPORT size_t gradcompQsgdEncodedBytes(size_t count, int bits, int bucketSize) {
  if (count > gc::kMaxCodecCount || bits < gc::qsgd::kMinBits || bits > gc::qsgd::kMaxBits ||
      bucketSize < gc::qsgd::kMinBucket || bucketSize > gc::qsgd::kMaxBucket ||
      bucketSize % 32 != 0) {
    return 0;
  }
  return gc::qsgd::encodedBytes(count, bits, bucketSize);
}

GC_EXPORT gradcompResult_t gradcompQsgdEncodeEFLevelsHost(const void* x, ncclDataType_t datatype,
                                                          float* residual, size_t count, int bits,
                                                          int bucketSize, uint64_t seed,
                                                          gradcompRounding_t rounding,
                                                          gradcompLevels_t levels, void* out) {
  return qsgdEncodeHostEntry(x, gc::enumArg(&datatype), residual, count, bits, bucketSize, seed,
                             gc::enumArg(&rounding), gc::enumArg(&levels), out);
}

GC_EXPORT gradcompResult_t gradcompQsgdEncodeEFRoundingHost(const void* x, ncclDataType_t datatype,
                                                            float* residual, size_t count, int bits,
                                                            int bucketSize, uint64_t seed,
                                                            gradcompRounding_t rounding,
                                                            void* out) {
  return qsgdEncodeHostEntry(x, gc::enumArg(&datatype), residual, count, bits, bucketSize, seed,
                             gc::enumArg(&rounding), gradcompLevelsUniform, out);
}

GC_EXPORT gradcompResult_t gradcompQsgdEncodeTypedHost(const void* x, ncclDataType_t datatype,
                                                       float* residual, size_t count, int bits,
                                                       int bucketSize, uint64_t seed, void* out) {
  return qsgdEncodeHostEntry(x, gc::enumArg(&datatype), residual, count, bits, bucketSize, seed,
                             gradcompRoundStochastic, gradcompLevelsUniform, out);
}

GC_EXPORT gradcompResult_t gradcompQsgdEncodeHost(const float* x, size_t count, int bits,
                                                  int bucketSize, uint64_t seed, void* out) {
  return gradcompQsgdEncodeTypedHost(x, ncclFloat32, nullptr, count, bits, bucketSize, seed, out);
}

GC_EXPORT gradcompResult_t gradcompQsgdDecodeHost(const void* in, size_t count, int bits,
                                                  int bucketSize, float* out, int accumulate) {
  GC_CHECK(gc::qsgdCheckParams(bits, bucketSize));
  GC_CHECK(gc::codecCheckCount(count));
  if (count == 0) return gradcompSuccess;
  GC_ARG(in != nullptr && out != nullptr, "in=%p and out=%p must not be NULL for count=%zu", in,
         out, count);
  GC_ARG(((uintptr_t)in & 3) == 0, "in=%p must be 4-byte aligned (it starts with fp32 scales)", in);
  GC_ARG(((uintptr_t)out & 3) == 0, "out=%p must be 4-byte aligned (fp32)", out);
  GC_CHECK(gc::codecCheckDisjoint({{in, gc::qsgd::encodedBytes(count, bits, bucketSize), "in"},
                                   {out, count * sizeof(float), "out"}}));
  gc::IeeeHostMath ieee;
  gc::host::qsgdDecode(in, count, bits, bucketSize, out, accumulate != 0);
  return gradcompSuccess;
}

}  // extern "C"
