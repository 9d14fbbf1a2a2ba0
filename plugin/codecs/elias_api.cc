// Public GPU entry points of the Elias codec: validate on the host, enqueue
// on the stream.
#include <stdint.h>

#include <algorithm>

#include "checks.h"
#include "codecs/elias.h"
#include "codecs/qsgd.h"
#include "backends/cuda/device_ptr.h"

extern "C" {

GC_EXPORT gradcompResult_t gradcompEliasWorkspaceBytes(size_t count, int bucketSize,
                                                       size_t* bytes) {
  GC_ARG(bytes != nullptr, "bytes (output) is NULL");
  GC_ARG(bucketSize >= gc::qsgd::kMinBucket && bucketSize <= gc::qsgd::kMaxBucket &&
             bucketSize % 32 == 0,
         "bucketSize=%d is out of range %d..%d or not a multiple of 32", bucketSize,
         gc::qsgd::kMinBucket, gc::qsgd::kMaxBucket);
  GC_CHECK(gc::codecCheckCount(count));
  // The counts an encode takes (eliasCheckParams) at the fewest levels, with
  // either code: a larger one has no encoding, so no workspace either.
  size_t least = SIZE_MAX;
  for (gc::elias::Code code : {gc::elias::Code::Gamma, gc::elias::Code::Omega}) {
    const gc::elias::Params p{gc::elias::kMinLevels, bucketSize, code, gc::elias::Norm::Max};
    least = std::min(least, gc::elias::maxStreamWords(count, p));
  }
  GC_ARG(least < 0xffffffffull,
         "count=%zu is too large for one Elias encoding at any levels (its worst case exceeds "
         "2^32 words); split the buffer",
         count);
  GC_CUDACHECK(gc::cuda::eliasWorkspaceBytes(count, bucketSize, bytes));
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompEliasEncode(const void* x, ncclDataType_t datatype,
                                               float* residual, size_t count,
                                               const gradcompEliasParams_t* params, uint64_t seed,
                                               void* out, void* workspace, size_t workspaceBytes,
                                               cudaStream_t stream) {
  gc::elias::Params p{};
  GC_CHECK(gc::eliasCheckParams(params, count, &p));
  gc::DType t = gc::DType::F32;
  GC_CHECK(gc::dtypeArg(gc::enumArg(&datatype), &t));
  GC_ARG(((uintptr_t)out & 3) == 0, "out=%p must be 4-byte aligned (it is 32-bit words)", out);
  if (count > 0) {
    GC_ARG(((uintptr_t)x % gc::dtypeBytes(t)) == 0, "x=%p is not aligned to its element size %zu",
           x, gc::dtypeBytes(t));
    GC_ARG(((uintptr_t)residual & 3) == 0, "residual=%p must be 4-byte aligned (fp32)",
           (void*)residual);
    GC_ARG(((uintptr_t)workspace & 3) == 0,
           "workspace=%p must be 4-byte aligned (it starts with 32-bit bucket sizes)", workspace);
    // The workspace's extent is what the encoder uses, not workspaceBytes (a caller may pass
    // the rest of one allocation, out included): its bucket sizes first, known without a
    // device (so the check runs before the device query below), then all of it.
    const size_t counts = (gc::elias::numBuckets(count, p.bucket) + 1) * sizeof(uint32_t);
    auto disjoint = [&](size_t workspaceUsed) {
      return gc::codecCheckDisjoint({{x, count * gc::dtypeBytes(t), "x"},
                                     {residual, count * sizeof(float), "residual"},
                                     {out, gc::elias::maxEncodedBytes(count, p), "out"},
                                     {workspace, workspaceUsed, "workspace"}});
    };
    GC_CHECK(disjoint(std::min(workspaceBytes, counts)));
    size_t need = 0;
    GC_CUDACHECK(gc::cuda::eliasWorkspaceBytes(count, p.bucket, &need));
    GC_ARG(workspace != nullptr && workspaceBytes >= need,
           "workspace=%p with workspaceBytes=%zu is too small: gradcompEliasWorkspaceBytes gives "
           "%zu",
           workspace, workspaceBytes, need);
    GC_CHECK(disjoint(need));
    GC_CHECK(gc::checkDevicePointer(x, "x"));
    GC_CHECK(gc::checkDevicePointer(workspace, "workspace"));
    if (residual != nullptr) GC_CHECK(gc::checkDevicePointer(residual, "residual"));
  }
  GC_CHECK(gc::checkDevicePointer(out, "out"));
  GC_CUDACHECK(gc::cuda::eliasEncode(x, t, residual, count, p, gc::plainKey(seed), out, workspace,
                                     workspaceBytes, stream));
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompEliasDecodeBounded(const void* in, size_t inBytes, size_t count,
                                                      const gradcompEliasParams_t* params,
                                                      float* out, int accumulate,
                                                      cudaStream_t stream) {
  gc::elias::Params p{};
  GC_CHECK(gc::eliasCheckParams(params, count, &p));
  if (count == 0) return gradcompSuccess;
  const size_t header = gradcompEliasHeaderBytes(count, p.bucket);
  GC_ARG(inBytes >= header,
         "inBytes=%zu is smaller than the header of an encoding of count=%zu with bucketSize=%d "
         "(%zu bytes: the scales and offsets)",
         inBytes, count, p.bucket, header);
  GC_ARG(((uintptr_t)in & 3) == 0, "in=%p must be 4-byte aligned (it is 32-bit words)", in);
  GC_ARG(((uintptr_t)out & 3) == 0, "out=%p must be 4-byte aligned (fp32)", (void*)out);
  // gradcompEliasDecode passes no bound: the longest encoding is what it reads.
  GC_CHECK(
      gc::codecCheckDisjoint({{in, std::min(inBytes, gc::elias::maxEncodedBytes(count, p)), "in"},
                              {out, count * sizeof(float), "out"}}));
  GC_CHECK(gc::checkDevicePointer(in, "in"));
  GC_CHECK(gc::checkDevicePointer(out, "out"));
  GC_CUDACHECK(gc::cuda::eliasDecode(in, count, p, out, accumulate != 0, stream, inBytes));
  return gradcompSuccess;
}

// Trusts the header's stream length (no inBytes to bound it by).
GC_EXPORT gradcompResult_t gradcompEliasDecode(const void* in, size_t count,
                                               const gradcompEliasParams_t* params, float* out,
                                               int accumulate, cudaStream_t stream) {
  return gradcompEliasDecodeBounded(in, (size_t)-1, count, params, out, accumulate, stream);
}

}  // extern "C"
