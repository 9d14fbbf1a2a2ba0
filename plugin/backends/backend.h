// Backend: memory and codec operations the algorithms are written against.
// CpuBackend runs the host reference codecs on host memory (each rank a
// thread); CudaBackend launches the kernels on the caller's stream. An
// algorithm is the same code on both.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>

#include "kernels/common_math.cuh"
#include "codecs/qsgd.h"
#include "gradcomp.h"

namespace gc {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual bool onDevice() const = 0;
  // The stream later operations are ordered on (ignored by the CPU backend).
  virtual void setStream(cudaStream_t stream) { stream_ = stream; }
  cudaStream_t stream() const { return stream_; }
  // True while the stream is being captured into a CUDA graph.
  virtual bool capturing() const { return false; }

  // One-time setup (the CUDA backend's device step counter).
  virtual gradcompResult_t init() { return gradcompSuccess; }
  // The step counter the RNG keys read (see KeySpec): device memory on the
  // CUDA backend, advanced on the stream after every compressed call.
  virtual const uint64_t* deviceStep() const { return nullptr; }
  // Four floats of backend memory made with the backend (CUDA: in init(),
  // part of the comm's set-up vote), for GRADCOMP_AUTO's agreements: a rank
  // that could not allocate what the timing needs still takes part in them
  // without allocating.
  virtual float* agreeScratch() = 0;
  // One more float of backend memory, made with agreeScratch's: the flag
  // flagNonFinite leaves for zeroIfFlagged (collective.h,
  // discardStateIfNonFinite).
  virtual float* flagScratch() = 0;
  virtual gradcompResult_t advanceStep() { return gradcompSuccess; }
  virtual gradcompResult_t setStep(uint64_t step) { return gradcompSuccess; }
  // Marks the end of what a compressed call enqueued on its stream, on every
  // way out (CallEnd), a call that failed part way included: setStream makes
  // the next call, on whatever stream, wait for it.
  virtual void markCallEnd() {}
  // Points the backend at a stream of its own that waits for the last call,
  // for the work between calls (saving, loading or resetting state, destroy):
  // the last call's stream may be gone by then.
  virtual void useOwnStream() {}

  // Persistent memory, zero-filled, usable on every stream when alloc
  // returns. Never call while capturing (the comm grows workspace only
  // outside capture). release(p) returns at once, without waiting for other
  // streams, and frees p only after the last compressed call (markCallEnd)
  // and what the current stream holds: every call before it may still read
  // p. (CUDA: a stream-ordered pool; cudaFree, which waits for the device,
  // where the device has no pools.)
  virtual gradcompResult_t alloc(size_t bytes, void** p) = 0;
  virtual void release(void* p) = 0;
  // Stream-ordered.
  virtual gradcompResult_t zero(void* p, size_t bytes) = 0;
  virtual gradcompResult_t copy(void* dst, const void* src, size_t bytes) = 0;
  // Synchronous copies between backend memory and host memory (state save).
  virtual gradcompResult_t toHost(void* hostDst, const void* src, size_t bytes) = 0;
  virtual gradcompResult_t fromHost(void* dst, const void* hostSrc, size_t bytes) = 0;
  virtual gradcompResult_t sync() = 0;
  // Whether a compressed call was captured into a CUDA graph: a replay may
  // then run on a stream the comm never sees, so freeing the comm's memory
  // first waits for the whole device (syncDevice), as release alone would
  // not.
  virtual bool usedByGraphs() const { return false; }
  virtual gradcompResult_t syncDevice() { return sync(); }
  // gradcompCommAbort: waits at most timeoutSec, polling, never blocking on
  // it, for the work this backend enqueued to finish; true when it has (then
  // its memory may be freed). The CPU backend runs nothing asynchronously.
  virtual bool drain(double timeoutSec) { return true; }

  // QSGD (residual may be null: no error feedback).
  virtual gradcompResult_t qsgdEncode(const void* x, DType t, float* residual, size_t n, int bits,
                                      int bucket, const KeySpec& key, void* out) = 0;
  virtual gradcompResult_t qsgdDecode(const void* in, size_t n, int bits, int bucket, float* out,
                                      bool accumulate) = 0;
  // count encodes with `key` but each its segment's KeySpec::stream (the
  // pieces a two-shot or reduce-scatter encodes for its peers): each
  // segment's bytes and residual are qsgdEncode's; empty segments are
  // skipped. The CUDA backend covers them in one launch, so that small
  // pieces do not each pay a launch and a partly empty last wave; this
  // default encodes them one by one.
  virtual gradcompResult_t qsgdEncodeBatch(const EncodeSegment* segs, int count, DType t, int bits,
                                           int bucket, const KeySpec& key) {
    for (int i = 0; i < count; ++i) {
      if (segs[i].n == 0) continue;
      KeySpec k = key;
      k.stream = segs[i].stream;
      const gradcompResult_t res =
          qsgdEncode(segs[i].x, t, segs[i].residual, segs[i].n, bits, bucket, k, segs[i].out);
      if (res != gradcompSuccess) return res;
    }
    return gradcompSuccess;
  }

  // count decodes into the caller's output of type t (the N chunks of a
  // piece), each value divided by `divisor` (Avg) unless it is 1: an fp32
  // undivided output decoded straight into, any other through `scratch`
  // (fp32, room for the longest segment) and fromFloat, one segment after
  // the other; empty segments are skipped. The CUDA backend decodes them all
  // in one launch, straight into the output whatever its type where the
  // bucket has a warp path (the same bits: cuda::qsgdDecodeToOutput).
  // flag (backend memory, may be null): set to 1 where a value stored is a
  // NaN or an infinity of type t, never cleared: the non-finite check of the
  // output these decodes write (CallArgs::outputFlag), which the CUDA
  // backend's fused decode reads off the values it stores, no pass of its
  // own; this default marks each segment after it is written.
  virtual gradcompResult_t qsgdDecodeToOutput(const DecodeSegment* segs, int count, int bits,
                                              int bucket, float divisor, DType t, float* scratch,
                                              float* flag) {
    const bool direct = t == DType::F32 && divisor == 1.0f;
    for (int i = 0; i < count; ++i) {
      const DecodeSegment& s = segs[i];
      if (s.n == 0) continue;
      float* to = direct ? static_cast<float*>(s.out) : scratch;
      gradcompResult_t res = qsgdDecode(s.in, s.n, bits, bucket, to, false);
      if (res == gradcompSuccess && !direct) res = fromFloat(scratch, s.n, divisor, t, s.out);
      if (res == gradcompSuccess && flag != nullptr) res = markNonFinite(s.out, t, s.n, flag);
      if (res != gradcompSuccess) return res;
    }
    return gradcompSuccess;
  }

  // The owner's sum of its block (ScatterSum::sum): out = terms[0] +
  // terms[1] + ... (count >= 1 terms of n elements), element by element in
  // that order, each term decoded or, when plain, read as fp32; the sum
  // divided by `divisor` unless it is 1 and stored as type t. This default:
  // terms[0] decoded (copied when plain) into the fp32 accumulator (out
  // itself when fp32 undivided, else `scratch`, n floats), each later term
  // decode-accumulated (added when plain), then one fromFloat. The CUDA
  // backend runs it as one kernel on a warp-path bucket, the sum in
  // registers, the same bits (cuda::qsgdSum).
  // flag: as qsgdDecodeToOutput's, for the values stored in out.
  virtual gradcompResult_t qsgdSum(const SumTerm* terms, int count, size_t n, int bits, int bucket,
                                   float divisor, DType t, void* out, float* scratch, float* flag) {
    if (n == 0) return gradcompSuccess;
    const bool direct = t == DType::F32 && divisor == 1.0f;
    float* acc = direct ? static_cast<float*>(out) : scratch;
    for (int i = 0; i < count; ++i) {
      const SumTerm& s = terms[i];
      const gradcompResult_t res = s.plain ? (i == 0 ? copy(acc, s.in, n * sizeof(float))
                                                     : add(acc, static_cast<const float*>(s.in), n))
                                           : qsgdDecode(s.in, n, bits, bucket, acc, i != 0);
      if (res != gradcompSuccess) return res;
    }
    const gradcompResult_t res = direct ? gradcompSuccess : fromFloat(acc, n, divisor, t, out);
    return res == gradcompSuccess && flag != nullptr ? markNonFinite(out, t, n, flag) : res;
  }

  // out[i] = float(x[i]) (+ addend[i] when addend is not null).
  virtual gradcompResult_t toFloat(const void* x, DType t, const float* addend, size_t n,
                                   float* out) = 0;
  // out[i] = T(x[i] / divisor); divisor 1 for Sum, N for Avg.
  virtual gradcompResult_t fromFloat(const float* x, size_t n, float divisor, DType t,
                                     void* out) = 0;
  // acc[i] += x[i]
  virtual gradcompResult_t add(float* acc, const float* x, size_t n) = 0;
  // *flag = 1 when x[0..n) of type t holds a NaN or an infinity, else 0;
  // zeroIfFlagged clears x[0..n) when *flag is not 0. Both on the stream,
  // flag in backend memory: the decision needs no host sync.
  virtual gradcompResult_t flagNonFinite(const void* x, DType t, size_t n, float* flag) = 0;
  // *flag = 1 when x[0..n) of type t holds a NaN or an infinity, else left
  // as it was (flagNonFinite without its clear: the default decodes' flag).
  virtual gradcompResult_t markNonFinite(const void* x, DType t, size_t n, float* flag) = 0;
  virtual gradcompResult_t zeroIfFlagged(float* x, size_t n, const float* flag) = 0;

  // Pipelined calls (algorithms.h, Pieces): the transport runs on a second
  // lane, the comm stream, while kernels stay on the compute lane (the
  // caller's stream); a pipelined hierarchical call moves its in-node
  // collectives to a third, the node stream, so that they overlap the
  // inter-node ones. Event slots order one lane after another. Each record is
  // waited on before its slot is recorded again. The CPU backend runs every
  // operation in call order, so there these are no-ops.
  enum Lane { kComputeLane = 0, kCommLane = 1, kNodeLane = 2 };
  static constexpr int kPipeEvents = 12;
  virtual cudaStream_t commStream() const { return stream_; }
  virtual cudaStream_t nodeStream() const { return stream_; }
  // Marks the point the lane has reached in event slot `ev`.
  virtual gradcompResult_t record(int lane, int ev) { return gradcompSuccess; }
  // Later work on `lane` waits for the last record of slot `ev`.
  virtual gradcompResult_t wait(int lane, int ev) { return gradcompSuccess; }
  // Later work on the compute lane waits for everything issued on `lane` so
  // far, without a slot and without reporting (CommLane and NodeLane end
  // every pipelined call with it): a call that fails half way returns with
  // its side lanes joined too, as a capture must end, and the next call's
  // kernels cannot overwrite workspace a transfer of this one still reads.
  virtual void join(int lane) {}

 protected:
  cudaStream_t stream_ = nullptr;
};

std::unique_ptr<Backend> makeCpuBackend();
std::unique_ptr<Backend> makeCudaBackend();

}  // namespace gc
