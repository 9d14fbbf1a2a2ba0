/*
 * Host reference codecs. Bit-identical to the GPU kernels: both are built
 * from the same __host__ __device__ math (kernels/qsgd_math.cuh).
 *
 * QSGD wire layout for `count` elements, `bits` b (2..8, sign included) and
 * bucket size d: ceil(count/d) fp32 scales, then the b-bit codes packed
 * little-endian into 32-bit words (code i at bit i*b; codes may straddle
 * words). Code = sign << (b-1) | level, level in 0..s, s = 2^(b-1)-1.
 *
 * As the GPU entry points, no two of a call's buffers may overlap (an
 * overlap is gradcompInvalidArgument naming both).
 */
#ifndef GRADCOMP_REFERENCE_H_
#define GRADCOMP_REFERENCE_H_

#include "gradcomp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Exact size of one encoded buffer; 0 for invalid bits/bucketSize or a
 * count too large for the codecs (and for count 0). */
size_t gradcompQsgdEncodedBytes(size_t count, int bits, int bucketSize);

gradcompResult_t gradcompQsgdEncodeHost(const float* x, size_t count, int bits, int bucketSize,
                                        uint64_t seed, void* out);
gradcompResult_t gradcompQsgdDecodeHost(const void* in, size_t count, int bits, int bucketSize,
                                        float* out, int accumulate);

/* Typed input (ncclFloat32/ncclFloat16/ncclBfloat16) and fused error
 * feedback (residual may be NULL for none), as the GPU entry points. */
gradcompResult_t gradcompQsgdEncodeTypedHost(const void* x, ncclDataType_t datatype,
                                             float* residual, size_t count, int bits,
                                             int bucketSize, uint64_t seed, void* out);

/* gradcompQsgdEncodeTypedHost with the level rounding named, as the GPU's
 * gradcompQsgdEncodeEFRounding: the same bytes and residual. */
gradcompResult_t gradcompQsgdEncodeEFRoundingHost(const void* x, ncclDataType_t datatype,
                                                  float* residual, size_t count, int bits,
                                                  int bucketSize, uint64_t seed,
                                                  gradcompRounding_t rounding, void* out);

/* gradcompQsgdEncodeEFRoundingHost with the levels named, as the GPU's
 * gradcompQsgdEncodeEFLevels: the same bytes and residual. */
gradcompResult_t gradcompQsgdEncodeEFLevelsHost(const void* x, ncclDataType_t datatype,
                                                float* residual, size_t count, int bits,
                                                int bucketSize, uint64_t seed,
                                                gradcompRounding_t rounding,
                                                gradcompLevels_t levels, void* out);

#ifdef __cplusplus
}
#endif

#endif /* GRADCOMP_REFERENCE_H_ */
