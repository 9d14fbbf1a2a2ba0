// A backend that refuses an allocation taking what it allocated past `budget`
// bytes and forwards everything else to the backend it wraps: one rank short
// of memory, for the tests of what its peers do meanwhile. It also counts the
// allocations made between GRADCOMP_AUTO's two agreements (each begins with a
// copy into agreeScratch()): the timed calls, which must make none.
#pragma once

#include <memory>
#include <utility>

#include "plugin/backends/backend.h"
#include "plugin/checks.h"

namespace gctest {

class AllocLimitBackend final : public gc::Backend {
 public:
  AllocLimitBackend(std::shared_ptr<gc::Backend> inner, size_t budget)
      : inner_(std::move(inner)), budget_(budget) {
    stream_ = inner_->stream();
  }
  size_t refused() const { return refused_; }
  int agreements() const { return agreements_; }
  size_t allocsBetweenAgreements() const { return between_; }

  bool onDevice() const override { return inner_->onDevice(); }
  void setStream(cudaStream_t stream) override {
    inner_->setStream(stream);
    stream_ = stream;
  }
  bool capturing() const override { return inner_->capturing(); }
  gradcompResult_t init() override { return inner_->init(); }
  const uint64_t* deviceStep() const override { return inner_->deviceStep(); }
  float* agreeScratch() override { return inner_->agreeScratch(); }
  gradcompResult_t advanceStep() override { return inner_->advanceStep(); }
  gradcompResult_t setStep(uint64_t step) override { return inner_->setStep(step); }
  gradcompResult_t alloc(size_t bytes, void** p) override {
    if (bytes > budget_ - used_) {
      *p = nullptr;
      ++refused_;
      return gc::setError(gradcompSystemError,
                          "test: an allocation of %zu bytes refused (%zu of %zu bytes used)", bytes,
                          used_, budget_);
    }
    if (agreements_ % 2 == 1) ++between_;
    const gradcompResult_t res = inner_->alloc(bytes, p);
    if (res == gradcompSuccess) used_ += bytes;
    return res;
  }
  void release(void* p) override { inner_->release(p); }
  gradcompResult_t zero(void* p, size_t bytes) override { return inner_->zero(p, bytes); }
  gradcompResult_t copy(void* dst, const void* src, size_t bytes) override {
    return inner_->copy(dst, src, bytes);
  }
  gradcompResult_t toHost(void* dst, const void* src, size_t bytes) override {
    return inner_->toHost(dst, src, bytes);
  }
  gradcompResult_t fromHost(void* dst, const void* src, size_t bytes) override {
    if (dst == inner_->agreeScratch()) ++agreements_;
    return inner_->fromHost(dst, src, bytes);
  }
  gradcompResult_t sync() override { return inner_->sync(); }
  bool drain(double timeoutSec) override { return inner_->drain(timeoutSec); }
  gradcompResult_t qsgdEncode(const void* x, gc::DType t, float* residual, size_t n, int bits,
                              int bucket, const gc::KeySpec& key, void* out) override {
    return inner_->qsgdEncode(x, t, residual, n, bits, bucket, key, out);
  }
  gradcompResult_t qsgdDecode(const void* in, size_t n, int bits, int bucket, float* out,
                              bool accumulate) override {
    return inner_->qsgdDecode(in, n, bits, bucket, out, accumulate);
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
  cudaStream_t commStream() const override { return inner_->commStream(); }
  cudaStream_t nodeStream() const override { return inner_->nodeStream(); }
  gradcompResult_t record(int lane, int ev) override { return inner_->record(lane, ev); }
  gradcompResult_t wait(int lane, int ev) override { return inner_->wait(lane, ev); }
  void join(int lane) override { inner_->join(lane); }

 private:
  std::shared_ptr<gc::Backend> inner_;
  size_t budget_, used_ = 0;  // bytes released are not given back to the budget
  size_t refused_ = 0;
  int agreements_ = 0;
  size_t between_ = 0;
};

}  // namespace gctest
