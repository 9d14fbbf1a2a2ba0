/*
 * Elias-coded QSGD: QSGD levels with the zero runs and levels written in
 * Elias gamma or omega codes, as in the QSGD paper. Variable size: an
 * encoder writes at most gradcompEliasMaxEncodedBytes and the size it wrote
 * is in the encoding's header.
 *
 * Layout (32-bit little-endian words, nb = ceil(count/bucketSize)):
 *   scales[nb]     fp32 (max|x| per bucket, or the bucket's L2 norm)
 *   offsets[nb+1]  start of each bucket's stream in words from the stream
 *                  start; offsets[nb] is the stream length in words. Bucket
 *                  0 starts at word 0, so offsets[0] holds the levels the
 *                  encoder used (nb >= 1): a decode with other levels is
 *                  refused (host) or decodes to NaN (GPU), since it would
 *                  scale every value by the encoder's levels / its own.
 *   stream         per bucket, word-aligned: for each nonzero level,
 *                  Elias(zeros before it + 1), sign bit, Elias(level); then
 *                  Elias(trailing zeros + 1) if the bucket ends in zeros.
 *                  Bits LSB-first within words.
 * Encoded size = gradcompEliasHeaderBytes(count, bucketSize) + 4 * offsets[nb].
 *
 * With scale max and levels = 2^(b-1)-1 the levels, scales and decoded
 * values are those of gradcompQsgdEncode* with b bits and the same seed.
 */
#ifndef GRADCOMP_ELIAS_H_
#define GRADCOMP_ELIAS_H_

#include "gradcomp.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  gradcompEliasGamma = 0, /* 2*floor(log2 n) + 1 bits: shortest for small levels */
  gradcompEliasOmega = 1, /* recursive; the QSGD paper's analysis */
  gradcompEliasCodeEnumMax = GRADCOMP_ENUM_MAX
} gradcompEliasCode_t;

typedef enum {
  gradcompEliasScaleMax = 0, /* max|x| per bucket: QSGD's fixed-width levels */
  gradcompEliasScaleL2 = 1,  /* L2 norm per bucket: the QSGD paper's */
  gradcompEliasScaleEnumMax = GRADCOMP_ENUM_MAX
} gradcompEliasScale_t;

typedef struct {
  int levels;     /* s, 1..65535 */
  int bucketSize; /* 32..8192, a multiple of 32 */
  gradcompEliasCode_t code;
  gradcompEliasScale_t scale;
} gradcompEliasParams_t;

/* Worst-case size: allocate this much for one encoding. 0 for bad params or
 * a count too large for the stream's 32-bit word offsets. */
size_t gradcompEliasMaxEncodedBytes(size_t count, const gradcompEliasParams_t* params);
/* Bytes before the stream; the uint32 at byte HeaderBytes-4 is offsets[nb]. */
size_t gradcompEliasHeaderBytes(size_t count, int bucketSize);
/* Size of an encoding from its header, in host memory (at least
 * gradcompEliasHeaderBytes of it). */
gradcompResult_t gradcompEliasEncodedBytes(const void* encoded, size_t count, int bucketSize,
                                           size_t* bytes);

/* Host reference. x is ncclFloat32, ncclFloat16 or ncclBfloat16; residual
 * (may be NULL) is fused error feedback as gradcompQsgdEncodeEF. out holds
 * outBytes >= gradcompEliasMaxEncodedBytes; *encodedBytes (may be NULL) gets
 * the size. No two of x, residual, out and *encodedBytes may overlap
 * (gradcompInvalidArgument naming both). */
gradcompResult_t gradcompEliasEncodeHost(const void* x, ncclDataType_t datatype, float* residual,
                                         size_t count, const gradcompEliasParams_t* params,
                                         uint64_t seed, void* out, size_t outBytes,
                                         size_t* encodedBytes);
/* Checks the whole encoding against inBytes before writing out: a malformed
 * or truncated one, or one made with other levels than params' (naming
 * both), is gradcompInvalidArgument, out untouched. */
gradcompResult_t gradcompEliasDecodeHost(const void* in, size_t inBytes, size_t count,
                                         const gradcompEliasParams_t* params, float* out,
                                         int accumulate);

/* GPU: device pointers, on the stream, no host sync, no allocation. The
 * encoder runs a sizes pass, a prefix sum over buckets and a write pass in a
 * caller-owned workspace of gradcompEliasWorkspaceBytes; the size it wrote is
 * in the header on the device (copy 4 bytes at HeaderBytes-4 to read it).
 * Bytes equal the host reference's for the same seed. x at a multiple of
 * its element size, the other pointers at a multiple of 4; anything else is
 * gradcompInvalidArgument. */
gradcompResult_t gradcompEliasWorkspaceBytes(size_t count, int bucketSize, size_t* bytes);
gradcompResult_t gradcompEliasEncode(const void* x, ncclDataType_t datatype, float* residual,
                                     size_t count, const gradcompEliasParams_t* params,
                                     uint64_t seed, void* out, void* workspace,
                                     size_t workspaceBytes, cudaStream_t stream);
/* Decodes the inBytes bytes at in (device memory: the bytes as received).
 * No bucket reads past inBytes or past the stream length in the header,
 * whichever is shorter, and a malformed bucket decodes to NaN from where it
 * goes wrong (the decoder does not sync to report it); an encoding made with
 * other levels than params' decodes to NaN whole. inBytes shorter than
 * gradcompEliasHeaderBytes is gradcompInvalidArgument. */
gradcompResult_t gradcompEliasDecodeBounded(const void* in, size_t inBytes, size_t count,
                                            const gradcompEliasParams_t* params, float* out,
                                            int accumulate, cudaStream_t stream);
/* As gradcompEliasDecodeBounded without a length: trusts the header's stream
 * length, so bytes from elsewhere must be checked first (their size against
 * gradcompEliasEncodedBytes). Prefer gradcompEliasDecodeBounded. */
gradcompResult_t gradcompEliasDecode(const void* in, size_t count,
                                     const gradcompEliasParams_t* params, float* out,
                                     int accumulate, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* GRADCOMP_ELIAS_H_ */
