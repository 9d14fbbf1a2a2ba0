// Host reference Elias-coded QSGD (and the public *Host entry points), and
// the backend dispatch the algorithms use.
#include <string.h>

#include <algorithm>
#include <vector>

#include "backends/backend.h"
#include "checks.h"
#include "codecs/elias.h"
#include "codecs/qsgd.h"

namespace gc {

gradcompResult_t eliasCheckParams(const gradcompEliasParams_t* p, size_t count,
                                  elias::Params* out) {
  GC_ARG(p != nullptr, "Elias params are NULL");
  GC_ARG(p->levels >= elias::kMinLevels && p->levels <= elias::kMaxLevels,
         "levels=%d is out of range %d..%d", p->levels, elias::kMinLevels, elias::kMaxLevels);
  GC_ARG(p->bucketSize >= qsgd::kMinBucket && p->bucketSize <= qsgd::kMaxBucket &&
             p->bucketSize % 32 == 0,
         "bucketSize=%d is out of range %d..%d or not a multiple of 32", p->bucketSize,
         qsgd::kMinBucket, qsgd::kMaxBucket);
  // The enums are read as ints: a caller's out-of-range value must not be
  // loaded as the enum type (undefined behaviour).
  int code, scale;
  memcpy(&code, &p->code, sizeof(code));
  memcpy(&scale, &p->scale, sizeof(scale));
  GC_ARG(code == gradcompEliasGamma || code == gradcompEliasOmega,
         "code=%d is not gamma(0) or omega(1)", code);
  GC_ARG(scale == gradcompEliasScaleMax || scale == gradcompEliasScaleL2,
         "scale=%d is not max(0) or l2(1)", scale);
  GC_CHECK(codecCheckCount(count));
  elias::Params ep{p->levels, p->bucketSize, (elias::Code)code, (elias::Norm)scale};
  // Offsets are 32-bit word counts.
  GC_ARG(elias::maxStreamWords(count, ep) < 0xffffffffull,
         "count=%zu is too large for one Elias encoding with levels=%d (its worst case exceeds "
         "2^32 words); split the buffer",
         count, p->levels);
  *out = ep;
  return gradcompSuccess;
}

namespace host {
namespace {

class BitWriter {
 public:
  explicit BitWriter(uint32_t* words) : words_(words) {}
  void put(elias::Codeword c) { put(c.bits, c.len); }
  void put(uint32_t bits, int len) {
    acc_ |= (uint64_t)bits << fill_;
    fill_ += len;
    if (fill_ >= 32) {
      words_[word_++] = (uint32_t)acc_;
      acc_ >>= 32;
      fill_ -= 32;
    }
  }
  // Writes the last partial word; returns the words written.
  size_t finish() {
    if (fill_ > 0) words_[word_++] = (uint32_t)acc_;
    return word_;
  }

 private:
  uint32_t* words_;
  size_t word_ = 0;
  uint64_t acc_ = 0;
  int fill_ = 0;
};

using BitReader = elias::BitReader<size_t>;

float bucketScale(const float* v, size_t len, elias::Norm norm, uint32_t maxBits) {
  if (norm == elias::Norm::Max) return qsgd::scaleFromMaxBits(maxBits);
  double part[32] = {0};
  for (size_t i = 0; i < len; ++i) {
    part[i & 31] = dadd(part[i & 31], dmul((double)v[i], (double)v[i]));
  }
  for (int off = 16; off > 0; off >>= 1) {
    for (int j = 0; j < off; ++j) part[j] = dadd(part[j], part[j + off]);
  }
  return elias::l2ScaleFromSumSquares(part[0]);
}

}  // namespace

size_t eliasEncode(const void* x, DType t, float* residual, size_t n, const elias::Params& p,
                   uint64_t key, bool nearest, void* out) {
  const size_t nb = elias::numBuckets(n, p.bucket);
  unsigned char* bytes = static_cast<unsigned char*>(out);
  uint32_t* offsets = reinterpret_cast<uint32_t*>(bytes + nb * 4);
  uint32_t* stream = offsets + nb + 1;
  // One bucket's values, on the heap for the reason qsgdEncode's are (up to
  // 32 KiB): one per thread, grown to the largest bucket the thread has
  // encoded, so that its later encodes allocate nothing.
  static thread_local std::vector<float> scratch;
  if (scratch.size() < (size_t)p.bucket) scratch.resize(p.bucket);
  float* v = scratch.data();
  size_t words = 0;
  for (size_t b = 0; b < nb; ++b) {
    const size_t base = b * p.bucket;
    const size_t len = n - base < (size_t)p.bucket ? n - base : (size_t)p.bucket;
    uint32_t maxBits = 0;
    for (size_t i = 0; i < len; ++i) {
      const float xi = loadAsFloat(x, t, base + i);
      v[i] = residual ? fadd(xi, residual[base + i]) : xi;
      const uint32_t a = floatToBits(v[i]) & 0x7fffffffu;
      if (a > maxBits) maxBits = a;
    }
    const float scale = bucketScale(v, len, p.norm, maxBits);
    const float rec = qsgd::reciprocal(scale, p.s);
    const bool finite = isFiniteBits(maxBits);
    memcpy(bytes + b * 4, &scale, 4);
    offsets[b] = (uint32_t)words;

    BitWriter w(stream + words);
    long prev = -1;
    for (size_t i = 0; i < len; ++i) {
      const int lev =
          elias::quantizeLevel(v[i], scale, rec, p.s, qsgd::roundingDraw(nearest, key, base + i));
      const bool neg = elias::negativeCode(v[i], lev);
      if (residual && finite) {
        residual[base + i] = fsub(v[i], elias::decodeValue(lev, neg, scale, p.s));
      }
      if (lev == 0) continue;
      w.put(elias::encodeNumber(p.code, (uint32_t)((long)i - prev)));
      w.put(neg ? 1u : 0u, 1);
      w.put(elias::encodeNumber(p.code, (uint32_t)lev));
      prev = (long)i;
    }
    if (prev < (long)len - 1) w.put(elias::encodeNumber(p.code, (uint32_t)((long)len - prev)));
    words += w.finish();
  }
  offsets[nb] = (uint32_t)words;
  // Bucket 0 starts at word 0: its offset word records the levels instead.
  if (nb > 0) offsets[0] = (uint32_t)p.s;
  return eliasEncodedBytes(n, p.bucket, (uint32_t)words);
}

namespace {

// The decode's walk over every bucket; out written only when `out` is not
// null (eliasDecode's first pass checks the whole encoding that way).
bool decodeBuckets(const unsigned char* bytes, size_t n, const elias::Params& p, float* out,
                   bool accumulate) {
  const size_t nb = elias::numBuckets(n, p.bucket);
  const uint32_t* offsets = reinterpret_cast<const uint32_t*>(bytes + nb * 4);
  const uint32_t* stream = offsets + nb + 1;
  auto store = [&](size_t i, float v) {
    if (out != nullptr) out[i] = accumulate ? fadd(out[i], v) : v;
  };
  // offsets[0] holds the levels (checked by eliasDecode): bucket 0 starts at 0.
  auto start = [&](size_t b) { return b == 0 ? 0u : offsets[b]; };
  for (size_t b = 0; b < nb; ++b) {
    // Bytes from the wire: each bucket must lie inside the stream.
    if (start(b) > offsets[b + 1] || offsets[b + 1] > offsets[nb]) return false;
    const size_t base = b * p.bucket;
    const size_t len = n - base < (size_t)p.bucket ? n - base : (size_t)p.bucket;
    float scale;
    memcpy(&scale, bytes + b * 4, 4);
    // Scales are >= +0 or the positive canonical NaN: a sign bit is not ours.
    if (floatToBits(scale) >> 31) return false;
    const float zero = elias::decodeValue(0, false, scale, p.s);
    BitReader r(stream + start(b), offsets[b + 1] - start(b));
    size_t i = 0;
    while (i < len) {
      const uint32_t g = r.number(p.code);
      if (g == 0 || g > len - i + 1) return false;
      for (uint32_t k = 1; k < g; ++k) store(base + i++, zero);
      if (i == len) break;
      const bool neg = (r.peek() & 1u) != 0;
      r.skip(1);
      const uint32_t lev = r.number(p.code);
      if (lev == 0 || lev > (uint32_t)p.s) return false;
      store(base + i++, elias::decodeValue((int)lev, neg, scale, p.s));
    }
    if (r.overrun()) return false;
  }
  return true;
}

}  // namespace

bool eliasDecode(const void* in, size_t inBytes, size_t n, const elias::Params& p, float* out,
                 bool accumulate) {
  const size_t nb = elias::numBuckets(n, p.bucket);
  const size_t header = 4 * elias::headerWords(n, p.bucket);
  if (inBytes < header) return false;
  const unsigned char* bytes = static_cast<const unsigned char*>(in);
  const uint32_t* offsets = reinterpret_cast<const uint32_t*>(bytes + nb * 4);
  if (eliasEncodedBytes(n, p.bucket, offsets[nb]) > inBytes) return false;
  if (nb > 0 && offsets[0] != (uint32_t)p.s) return false;
  // Bytes from the wire: the whole encoding is checked before out is touched,
  // so a refused one leaves the caller's buffer (an accumulated sum) as it was.
  return decodeBuckets(bytes, n, p, nullptr, false) && decodeBuckets(bytes, n, p, out, accumulate);
}

}  // namespace host

gradcompResult_t eliasCheckLevels(const void* in, size_t count, const elias::Params& p) {
  if (count == 0) return gradcompSuccess;  // no bucket: offsets[0] is the stream length
  uint32_t levels;
  memcpy(&levels, static_cast<const char*>(in) + eliasLevelsWordOffset(count, p.bucket), 4);
  // 0 is what every build before 0.7.0 wrote there (bucket 0's offset): said so, as an
  // encoding kept from such a build otherwise reads as merely malformed.
  GC_ARG(levels != 0,
         "the Elias encoding records no levels (its offsets[0] is 0): it was made by a gradcomp "
         "before 0.7.0, whose encodings this build does not decode (or it is not an Elias "
         "encoding); encode the values again with this build");
  // A word past the range, which no encoder writes: not an encoding at all, which the
  // decode's own check refuses as malformed, rather than one of other levels.
  if (levels < (uint32_t)elias::kMinLevels || levels > (uint32_t)elias::kMaxLevels) {
    return gradcompSuccess;
  }
  GC_ARG(levels == (uint32_t)p.s,
         "the Elias encoding was made with levels=%u but is decoded with levels=%d: decode with "
         "the params it was encoded with",
         levels, p.s);
  return gradcompSuccess;
}

size_t eliasWorkspaceBytes(const Backend& be, size_t n, int bucket) {
  if (!be.onDevice()) return 0;
  size_t bytes = 0;
  // Only fails without a usable device, where no CUDA backend exists.
  if (cuda::eliasWorkspaceBytes(n, bucket, &bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return bytes;
}

gradcompResult_t eliasEncode(Backend& be, const void* x, DType t, float* residual, size_t n,
                             const elias::Params& p, const KeySpec& key, void* out, void* workspace,
                             size_t workspaceBytes) {
  if (!be.onDevice()) {
    host::eliasEncode(x, t, residual, n, p, resolveKey(key), key.nearest, out);
    return gradcompSuccess;
  }
  GC_CUDACHECK(
      cuda::eliasEncode(x, t, residual, n, p, key, out, workspace, workspaceBytes, be.stream()));
  return gradcompSuccess;
}

gradcompResult_t eliasDecode(Backend& be, const void* in, size_t inBytes, size_t n,
                             const elias::Params& p, float* out, bool accumulate) {
  if (be.onDevice()) {
    GC_CUDACHECK(cuda::eliasDecode(in, n, p, out, accumulate, be.stream(), inBytes));
    return gradcompSuccess;
  }
  if (inBytes >= 4 * elias::headerWords(n, p.bucket)) GC_CHECK(eliasCheckLevels(in, n, p));
  if (!host::eliasDecode(in, inBytes, n, p, out, accumulate)) {
    return setError(gradcompInvalidArgument,
                    "Elias decode: %zu bytes are not a well-formed encoding of %zu elements",
                    inBytes, n);
  }
  return gradcompSuccess;
}

}  // namespace gc

extern "C" {

GC_EXPORT size_t gradcompEliasMaxEncodedBytes(size_t count, const gradcompEliasParams_t* params) {
  gc::elias::Params p{};
  if (gc::eliasCheckParams(params, count, &p) != gradcompSuccess) {
    gc::clearError();
    return 0;
  }
  return gc::elias::maxEncodedBytes(count, p);
}

GC_EXPORT size_t gradcompEliasHeaderBytes(size_t count, int bucketSize) {
  if (count > gc::kMaxCodecCount || bucketSize < gc::qsgd::kMinBucket ||
      bucketSize > gc::qsgd::kMaxBucket || bucketSize % 32 != 0) {
    return 0;
  }
  return 4 * gc::elias::headerWords(count, bucketSize);
}

GC_EXPORT gradcompResult_t gradcompEliasEncodedBytes(const void* encoded, size_t count,
                                                     int bucketSize, size_t* bytes) {
  const size_t header = gradcompEliasHeaderBytes(count, bucketSize);
  GC_CHECK(gc::codecCheckCount(count));
  GC_ARG(header != 0, "bucketSize=%d is out of range %d..%d or not a multiple of 32", bucketSize,
         gc::qsgd::kMinBucket, gc::qsgd::kMaxBucket);
  GC_ARG(encoded != nullptr && bytes != nullptr, "encoded=%p and bytes=%p must not be NULL",
         encoded, (void*)bytes);
  uint32_t words;
  memcpy(&words, static_cast<const char*>(encoded) + header - 4, 4);
  *bytes = gc::eliasEncodedBytes(count, bucketSize, words);
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompEliasEncodeHost(const void* x, ncclDataType_t datatype,
                                                   float* residual, size_t count,
                                                   const gradcompEliasParams_t* params,
                                                   uint64_t seed, void* out, size_t outBytes,
                                                   size_t* encodedBytes) {
  gc::elias::Params p{};
  GC_CHECK(gc::eliasCheckParams(params, count, &p));
  gc::DType t = gc::DType::F32;
  GC_CHECK(gc::dtypeArg(gc::enumArg(&datatype), &t));
  const size_t need = gc::elias::maxEncodedBytes(count, p);
  GC_ARG(out != nullptr && outBytes >= need,
         "out=%p with outBytes=%zu is too small: %zu elements need up to %zu bytes", out, outBytes,
         count, need);
  GC_ARG(((uintptr_t)out & 3) == 0, "out=%p must be 4-byte aligned (it is 32-bit words)", out);
  GC_ARG(count == 0 || x != nullptr, "x is NULL for count=%zu", count);
  GC_ARG(((uintptr_t)residual & 3) == 0, "residual=%p must be 4-byte aligned (fp32)", residual);
  GC_CHECK(gc::codecCheckDisjoint(
      {{x, count * gc::dtypeBytes(t), "x"},
       {residual, count * sizeof(float), "residual"},
       {out, std::min(outBytes, gc::elias::maxEncodedBytes(count, p)), "out"},
       {encodedBytes, sizeof(size_t), "encodedBytes"}}));
  // guarded: the GPU's bits whatever the thread's setting, and the scratch's
  // growth failing as a result.
  return gc::guarded([&] {
    const size_t bytes = gc::host::eliasEncode(x, t, residual, count, p, seed, false, out);
    if (encodedBytes) *encodedBytes = bytes;
    return gradcompSuccess;
  });
}

GC_EXPORT gradcompResult_t gradcompEliasDecodeHost(const void* in, size_t inBytes, size_t count,
                                                   const gradcompEliasParams_t* params, float* out,
                                                   int accumulate) {
  gc::elias::Params p{};
  GC_CHECK(gc::eliasCheckParams(params, count, &p));
  if (count == 0) return gradcompSuccess;
  GC_ARG(in != nullptr, "in is NULL");
  GC_ARG(((uintptr_t)in & 3) == 0, "in=%p must be 4-byte aligned (it is 32-bit words)", in);
  GC_ARG(out != nullptr, "out is NULL for count=%zu", count);
  GC_ARG(((uintptr_t)out & 3) == 0, "out=%p must be 4-byte aligned (fp32)", out);
  GC_CHECK(
      gc::codecCheckDisjoint({{in, std::min(inBytes, gc::elias::maxEncodedBytes(count, p)), "in"},
                              {out, count * sizeof(float), "out"}}));
  if (inBytes >= 4 * gc::elias::headerWords(count, p.bucket)) {
    GC_CHECK(gc::eliasCheckLevels(in, count, p));
  }
  gc::IeeeHostMath ieee;
  if (!gc::host::eliasDecode(in, inBytes, count, p, out, accumulate != 0)) {
    return gc::setError(gradcompInvalidArgument,
                        "in (%zu bytes) is not a well-formed Elias encoding of count=%zu with "
                        "levels=%d bucketSize=%d",
                        inBytes, count, p.s, p.bucket);
  }
  return gradcompSuccess;
}

}  // extern "C"
