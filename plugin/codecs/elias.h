// Elias-coded QSGD, internal C++ interface (layout in kernels/elias_math.cuh).
// Host and CUDA implementations write the same bytes. The encoded size is
// data-dependent: an encoder writes at most maxEncodedBytes and the real size
// is in the header (offsets[nb]); the GPU encoder needs a workspace
// (a sizes pass, a prefix sum over buckets, a write pass).
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/elias_math.cuh"
#include "gradcomp.h"
#include "gradcomp/elias.h"

namespace gc {

class Backend;

// Validates levels/bucket/code/scale (message names the value and range),
// and that count fits the 32-bit stream offsets.
gradcompResult_t eliasCheckParams(const gradcompEliasParams_t* p, size_t count, elias::Params* out);

// Bytes of an encoding of `count` elements given the stream length in words
// (the header's last word).
inline size_t eliasEncodedBytes(size_t count, int bucket, uint32_t streamWords) {
  return 4 * (elias::headerWords(count, bucket) + (size_t)streamWords);
}
// Byte offset of the stream length (offsets[nb]) in an encoding.
inline size_t eliasSizeWordOffset(size_t count, int bucket) {
  return 4 * (elias::headerWords(count, bucket) - 1);
}
// Byte offset of offsets[0], where an encoding of count >= 1 elements
// records its levels (bucket 0's stream starts at word 0 anyway).
inline size_t eliasLevelsWordOffset(size_t count, int bucket) {
  return 4 * elias::numBuckets(count, bucket);
}
// gradcompInvalidArgument naming both when the encoding at in (at least its
// header) records levels in range other than p's: decoded with p's, every
// value would be silently scaled by theirs / p's. 0, what builds before 0.7.0
// wrote there, is refused naming that version; a word past the range is left
// to the decode's own check (malformed bytes, not an encoding).
gradcompResult_t eliasCheckLevels(const void* in, size_t count, const elias::Params& p);

namespace host {
// Returns the encoded size in bytes (<= maxEncodedBytes). residual may be null.
// nearest: round to the nearest level (KeySpec::nearest) instead of drawing.
size_t eliasEncode(const void* x, DType t, float* residual, size_t n, const elias::Params& p,
                   uint64_t key, bool nearest, void* out);
// False when the bytes are not a well-formed encoding of n elements within
// inBytes; out is then untouched (the whole encoding is checked first).
bool eliasDecode(const void* in, size_t inBytes, size_t n, const elias::Params& p, float* out,
                 bool accumulate);
}  // namespace host

namespace cuda {
cudaError_t eliasWorkspaceBytes(size_t n, int bucket, size_t* bytes);
cudaError_t eliasEncode(const void* x, DType t, float* residual, size_t n, const elias::Params& p,
                        const KeySpec& key, void* out, void* workspace, size_t workspaceBytes,
                        cudaStream_t stream);
// A malformed bucket decodes to NaN from where it goes wrong (never reads or
// writes out of bounds): no bucket reads past the inBytes bytes at in or
// the stream length in the header, whichever is smaller. inBytes shorter
// than the header: cudaErrorInvalidValue, nothing launched.
cudaError_t eliasDecode(const void* in, size_t n, const elias::Params& p, float* out,
                        bool accumulate, cudaStream_t stream, size_t inBytes = SIZE_MAX);
}  // namespace cuda

// The codec on whichever backend a comm runs (for the algorithms).
size_t eliasWorkspaceBytes(const Backend& be, size_t n, int bucket);
gradcompResult_t eliasEncode(Backend& be, const void* x, DType t, float* residual, size_t n,
                             const elias::Params& p, const KeySpec& key, void* out, void* workspace,
                             size_t workspaceBytes);
// inBytes: the encoding's size (checked by the host decoder).
gradcompResult_t eliasDecode(Backend& be, const void* in, size_t inBytes, size_t n,
                             const elias::Params& p, float* out, bool accumulate);

}  // namespace gc
