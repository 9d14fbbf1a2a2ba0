// A backend that forwards every call to the one it wraps: the base of the
// tests' wrappers, each overriding only what it changes (an allocation
// budget, a capture in progress). The batched codec calls (qsgdEncodeBatch,
// qsgdDecodeToOutput, qsgdSum) go to the inner backend's whole, not through this
// wrapper's qsgdEncode and qsgdDecode: a wrapper that watches or fails
// encodes or decodes overrides the batched calls too (as LaneCheck does),
// since the two-shot, ring and reduce-scatter reach their codecs through them.
#pragma once

#include <memory>
#include <utility>

#include "plugin/backends/backend.h"

namespace gctest {

class ForwardingBackend : public gc::Backend {
 public:
  // A null inner backend serves tests that call only what a wrapper adds.
  explicit ForwardingBackend(std::shared_ptr<gc::Backend> inner) : inner_(std::move(inner)) {
    if (inner_) stream_ = inner_->stream();
  }

  bool onDevice() const override { return inner_->onDevice(); }
  void setStream(cudaStream_t stream) override {
    inner_->setStream(stream);
    stream_ = stream;
  }
  bool capturing() const override { return inner_->capturing(); }
  gradcompResult_t init() override { return inner_->init(); }
  const uint64_t* deviceStep() const override { return inner_->deviceStep(); }
  float* agreeScratch() override { return inner_->agreeScratch(); }
  float* flagScratch() override { return inner_->flagScratch(); }
  gradcompResult_t advanceStep() override { return inner_->advanceStep(); }
  gradcompResult_t setStep(uint64_t step) override { return inner_->setStep(step); }
  gradcompResult_t alloc(size_t bytes, void** p) override { return inner_->alloc(bytes, p); }
  void release(void* p) override { inner_->release(p); }
  gradcompResult_t zero(void* p, size_t bytes) override { return inner_->zero(p, bytes); }
  gradcompResult_t copy(void* dst, const void* src, size_t bytes) override {
    return inner_->copy(dst, src, bytes);
  }
  gradcompResult_t toHost(void* dst, const void* src, size_t bytes) override {
    return inner_->toHost(dst, src, bytes);
  }
  gradcompResult_t fromHost(void* dst, const void* src, size_t bytes) override {
    return inner_->fromHost(dst, src, bytes);
  }
  gradcompResult_t sync() override { return inner_->sync(); }
  bool usedByGraphs() const override { return inner_->usedByGraphs(); }
  gradcompResult_t syncDevice() override { return inner_->syncDevice(); }
  void markCallEnd() override { inner_->markCallEnd(); }
  void useOwnStream() override {
    inner_->useOwnStream();
    stream_ = inner_->stream();
  }
  bool drain(double timeoutSec) override { return inner_->drain(timeoutSec); }
  gradcompResult_t qsgdEncode(const void* x, gc::DType t, float* residual, size_t n, int bits,
                              int bucket, const gc::KeySpec& key, void* out) override {
    return inner_->qsgdEncode(x, t, residual, n, bits, bucket, key, out);
  }
  gradcompResult_t qsgdEncodeBatch(const gc::EncodeSegment* segs, int count, gc::DType t, int bits,
                                   int bucket, const gc::KeySpec& key) override {
    return inner_->qsgdEncodeBatch(segs, count, t, bits, bucket, key);
  }
  gradcompResult_t qsgdDecode(const void* in, size_t n, int bits, int bucket, float* out,
                              bool accumulate) override {
    return inner_->qsgdDecode(in, n, bits, bucket, out, accumulate);
  }
  gradcompResult_t qsgdDecodeToOutput(const gc::DecodeSegment* segs, int count, int bits,
                                      int bucket, float divisor, gc::DType t, float* scratch,
                                      float* flag) override {
    return inner_->qsgdDecodeToOutput(segs, count, bits, bucket, divisor, t, scratch, flag);
  }
  gradcompResult_t qsgdSum(const gc::SumTerm* terms, int count, size_t n, int bits, int bucket,
                           float divisor, gc::DType t, void* out, float* scratch,
                           float* flag) override {
    return inner_->qsgdSum(terms, count, n, bits, bucket, divisor, t, out, scratch, flag);
  }
  gradcompResult_t toFloat(const void* x, gc::DType t, const float* addend, size_t n,
                           float* out) override {
    return inner_->toFloat(x, t, addend, n, out);
  }
  gradcompResult_t fromFloat(const float* x, size_t n, float divisor, gc::DType t,
                             void* out) override {
    return inner_->fromFloat(x, n, divisor, t, out);
  }
  gradcompResult_t add(float* acc, const float* x, size_t n) override {
    return inner_->add(acc, x, n);
  }
  gradcompResult_t flagNonFinite(const void* x, gc::DType t, size_t n, float* flag) override {
    return inner_->flagNonFinite(x, t, n, flag);
  }
  gradcompResult_t markNonFinite(const void* x, gc::DType t, size_t n, float* flag) override {
    return inner_->markNonFinite(x, t, n, flag);
  }
  gradcompResult_t zeroIfFlagged(float* x, size_t n, const float* flag) override {
    return inner_->zeroIfFlagged(x, n, flag);
  }
  cudaStream_t commStream() const override { return inner_->commStream(); }
  cudaStream_t nodeStream() const override { return inner_->nodeStream(); }
  gradcompResult_t record(int lane, int ev) override { return inner_->record(lane, ev); }
  gradcompResult_t wait(int lane, int ev) override { return inner_->wait(lane, ev); }
  void join(int lane) override { inner_->join(lane); }

 protected:
  std::shared_ptr<gc::Backend> inner_;
};

}  // namespace gctest
