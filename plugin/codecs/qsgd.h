// QSGD codec, internal C++ interface used by the public entry points and the
// backends. Host and CUDA implementations produce the same bytes.
#pragma once

#include <cuda_runtime_api.h>

#include <initializer_list>

#include "kernels/common_math.cuh"
#include "gradcomp.h"

namespace gc {

// The largest element count the codecs and the compressed path take: every
// size computed from a count (bits, words, bytes, workspace) then fits a
// size_t with room to spare.
constexpr size_t kMaxCodecCount = (size_t)1 << 56;

// Validates bits/bucket (message names the value and range).
gradcompResult_t qsgdCheckParams(int bits, int bucketSize);
// Validates a public codec entry point's rounding (gradcompRounding_t).
gradcompResult_t qsgdCheckRounding(int rounding);
// Validates a public codec entry point's levels (gradcompLevels_t).
gradcompResult_t qsgdCheckLevels(int levels);
// Validates a codec's element count against kMaxCodecCount.
gradcompResult_t codecCheckCount(size_t count);
// A buffer a codec entry point reads or writes: its start, its bytes and its
// parameter's name. A null or empty one overlaps nothing.
struct CodecSpan {
  const void* p;
  size_t bytes;
  const char* name;
};
// Validates that no two of a codec's buffers overlap (each codec reads its
// inputs while it writes its outputs, so an overlap gives wrong bytes, not
// an in-place result); the message names both and their extents.
gradcompResult_t codecCheckDisjoint(std::initializer_list<CodecSpan> spans);
// The CUDA QSGD kernels launch up to one block per bucket, and a grid holds
// at most 2^31 - 1 blocks: beyond that a launch would fail (or, with the
// block count cast to 32 bits, cover only part of the buffer).
constexpr size_t kMaxDeviceBuckets = 0x7fffffff;
// Validates a count for the CUDA QSGD kernels: at most kMaxDeviceBuckets
// buckets of bucketSize (message names count, bucket and the limit).
gradcompResult_t qsgdCheckDeviceCount(size_t count, int bucketSize);
// Maps an NCCL type to a gradient type, or an error naming it.
gradcompResult_t dtypeFromNccl(ncclDataType_t t, DType* out);

// One encode of a batch (Backend::qsgdEncodeBatch): x[0, n) of the batch's
// type, plus residual (may be null), into out, with the batch's key but
// KeySpec::stream = stream. Its bytes and residual are those of a single
// encode with that key.
struct EncodeSegment {
  const void* x;
  float* residual;
  size_t n;
  uint64_t stream;
  void* out;
};

// One decode of a batch (Backend::qsgdDecodeToOutput): the encoding `in` of
// n elements into out[0, n), of the batch's output type.
struct DecodeSegment {
  const void* in;
  size_t n;
  void* out;
};

// One term of an owner's sum (Backend::qsgdSum): the encoding `in` of the
// sum's n elements, or, when `plain`, n fp32 values at `in` (the owner's own
// block).
struct SumTerm {
  const void* in;
  bool plain;
};

namespace host {
// residual may be null (no error feedback). x may be any of the three types.
// nearest: round to the nearest level (KeySpec::nearest) instead of drawing.
// square: square levels (KeySpec::square), each bucket's scale marked.
void qsgdEncode(const void* x, DType t, float* residual, size_t n, int bits, int bucket,
                uint64_t key, bool nearest, bool square, void* out);
void qsgdDecode(const void* in, size_t n, int bits, int bucket, float* out, bool accumulate);
}  // namespace host

namespace cuda {
cudaError_t qsgdEncode(const void* x, DType t, float* residual, size_t n, int bits, int bucket,
                       const KeySpec& key, void* out, cudaStream_t stream);
// The segments' encodes, as many in one launch as the warp path takes
// (buckets of 128..1024; other buckets launch one encode per segment).
cudaError_t qsgdEncodeBatch(const EncodeSegment* segs, int count, DType t, int bits, int bucket,
                            const KeySpec& key, cudaStream_t stream);
// The segments' decodes into fp32 outputs (overwrite or accumulate), as
// many in one launch as the warp path takes (buckets of 128..1024; other
// buckets: one a segment).
cudaError_t qsgdDecodeBatch(const DecodeSegment* segs, int count, int bits, int bucket,
                            bool accumulate, cudaStream_t stream);
// Whether qsgdDecodeToOutput takes outputs other than fp32 undivided at this
// bucket (the warp path's: 128..1024).
bool qsgdDecodeFuses(int bucket);
// The segments' decodes straight into outputs of type t, each value divided
// by `divisor` unless it is 1 (what a decode into fp32 and fromFloat give, in
// one pass), batched as qsgdDecodeBatch; cudaErrorInvalidValue for an output
// other than fp32 undivided, or a flag, at a bucket that does not fuse.
// flag (device memory, may be null): set to 1 where a value stored is a NaN
// or an infinity in type t, never cleared (the non-finite check folded into
// the decode: Backend::qsgdDecodeToOutput).
cudaError_t qsgdDecodeToOutput(const DecodeSegment* segs, int count, int bits, int bucket,
                               float divisor, DType t, cudaStream_t stream, float* flag = nullptr);
// out = terms[0] + terms[1] + ... in that order, element by element (each
// term decoded, or read when plain; fp32 adds left to right), divided by
// `divisor` unless it is 1 and stored as type t: the bits of a decode of
// terms[0], decode-accumulates and adds of the rest and fromFloat, in one
// kernel that keeps the sum in registers (16 terms a launch; more go through
// `scratch`, fp32, n elements, or through out where it is fp32 undivided).
// Warp-path buckets only (qsgdDecodeFuses); cudaErrorInvalidValue otherwise,
// for count < 1, or for more than 16 terms without an fp32 accumulator.
// flag (device memory, may be null): as qsgdDecodeToOutput's, for the values
// stored in out (the last launch's).
cudaError_t qsgdSum(const SumTerm* terms, int count, size_t n, int bits, int bucket, float divisor,
                    DType t, void* out, float* scratch, cudaStream_t stream, float* flag = nullptr);
// step += 1 on the stream (the comm's device step counter).
cudaError_t advanceStep(uint64_t* step, cudaStream_t stream);
cudaError_t qsgdDecode(const void* in, size_t n, int bits, int bucket, float* out, bool accumulate,
                       cudaStream_t stream);
}  // namespace cuda

}  // namespace gc
