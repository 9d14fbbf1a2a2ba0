// Public GPU codec entry points: validate on the host, enqueue on the stream.
#include "checks.h"
#include "codecs/qsgd.h"
#include "backends/cuda/device_ptr.h"
#include "gradcomp/reference.h"

namespace {

// The GPU encode entry points' body, with datatype, rounding and levels the
// ints the caller passed (gc::enumArg): each entry point reads its enums
// once, as ints.
gradcompResult_t qsgdEncodeEntry(const void* g, int datatype, float* residual, size_t count,
                                 int bits, int bucketSize, uint64_t seed, int rounding, int levels,
                                 void* out, cudaStream_t stream) {
  GC_CHECK(gc::qsgdCheckParams(bits, bucketSize));
  GC_CHECK(gc::qsgdCheckRounding(rounding));
  GC_CHECK(gc::qsgdCheckLevels(levels));
  GC_CHECK(gc::codecCheckCount(count));
  GC_CHECK(gc::qsgdCheckDeviceCount(count, bucketSize));
  gc::DType t;
  GC_CHECK(gc::dtypeArg(datatype, &t));
  if (count == 0) return gradcompSuccess;
  GC_ARG(((uintptr_t)out & 3) == 0, "out=%p must be 4-byte aligned (it starts with fp32 scales)",
         out);
  GC_ARG(((uintptr_t)g % gc::dtypeBytes(t)) == 0, "g=%p is not aligned to its element size %zu", g,
         gc::dtypeBytes(t));
  GC_ARG(((uintptr_t)residual & 3) == 0, "residual=%p must be 4-byte aligned (fp32)",
         (void*)residual);
  GC_CHECK(
      gc::codecCheckDisjoint({{g, count * gc::dtypeBytes(t), "g"},
                              {residual, count * sizeof(float), "residual"},
                              {out, gradcompQsgdEncodedBytes(count, bits, bucketSize), "out"}}));
  GC_CHECK(gc::checkDevicePointer(g, "g"));
  GC_CHECK(gc::checkDevicePointer(out, "out"));
  if (residual != nullptr) GC_CHECK(gc::checkDevicePointer(residual, "residual"));
  gc::KeySpec key = gc::plainKey(seed);
  key.nearest = rounding == gradcompRoundNearest;
  key.square = levels == gradcompLevelsSquare;
  GC_CUDACHECK(gc::cuda::qsgdEncode(g, t, residual, count, bits, bucketSize, key, out, stream));
  return gradcompSuccess;
}

}  // namespace

extern "C" {

GC_EXPORT gradcompResult_t gradcompQsgdEncodeEFLevels(const void* g, ncclDataType_t datatype,
                                                      float* residual, size_t count, int bits,
                                                      int bucketSize, uint64_t seed,
                                                      gradcompRounding_t rounding,
                                                      gradcompLevels_t levels, void* out,
                                                      cudaStream_t stream) {
  return qsgdEncodeEntry(g, gc::enumArg(&datatype), residual, count, bits, bucketSize, seed,
                         gc::enumArg(&rounding), gc::enumArg(&levels), out, stream);
}

GC_EXPORT gradcompResult_t gradcompQsgdEncodeEFRounding(const void* g, ncclDataType_t datatype,
                                                        float* residual, size_t count, int bits,
                                                        int bucketSize, uint64_t seed,
                                                        gradcompRounding_t rounding, void* out,
                                                        cudaStream_t stream) {
  return qsgdEncodeEntry(g, gc::enumArg(&datatype), residual, count, bits, bucketSize, seed,
                         gc::enumArg(&rounding), gradcompLevelsUniform, out, stream);
}

GC_EXPORT gradcompResult_t gradcompQsgdEncodeEF(const void* g, ncclDataType_t datatype,
                                                float* residual, size_t count, int bits,
                                                int bucketSize, uint64_t seed, void* out,
                                                cudaStream_t stream) {
  return qsgdEncodeEntry(g, gc::enumArg(&datatype), residual, count, bits, bucketSize, seed,
                         gradcompRoundStochastic, gradcompLevelsUniform, out, stream);
}

GC_EXPORT gradcompResult_t gradcompQsgdEncode(const void* x, ncclDataType_t datatype, size_t count,
                                              int bits, int bucketSize, uint64_t seed, void* out,
                                              cudaStream_t stream) {
  return qsgdEncodeEntry(x, gc::enumArg(&datatype), nullptr, count, bits, bucketSize, seed,
                         gradcompRoundStochastic, gradcompLevelsUniform, out, stream);
}

GC_EXPORT gradcompResult_t gradcompQsgdDecode(const void* in, size_t count, int bits,
                                              int bucketSize, float* out, int accumulate,
                                              cudaStream_t stream) {
  GC_CHECK(gc::qsgdCheckParams(bits, bucketSize));
  GC_CHECK(gc::codecCheckCount(count));
  GC_CHECK(gc::qsgdCheckDeviceCount(count, bucketSize));
  if (count == 0) return gradcompSuccess;
  GC_ARG(((uintptr_t)in & 3) == 0, "in=%p must be 4-byte aligned (it starts with fp32 scales)", in);
  GC_ARG(((uintptr_t)out & 3) == 0, "out=%p must be 4-byte aligned (fp32)", (void*)out);
  GC_CHECK(gc::codecCheckDisjoint({{in, gradcompQsgdEncodedBytes(count, bits, bucketSize), "in"},
                                   {out, count * sizeof(float), "out"}}));
  GC_CHECK(gc::checkDevicePointer(in, "in"));
  GC_CHECK(gc::checkDevicePointer(out, "out"));
  GC_CUDACHECK(gc::cuda::qsgdDecode(in, count, bits, bucketSize, out, accumulate != 0, stream));
  return gradcompSuccess;
}

}  // extern "C"
