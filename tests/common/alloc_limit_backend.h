// A backend that refuses an allocation taking what it allocated past `budget`
// bytes and forwards everything else to the backend it wraps: one rank short
// of memory, for the tests of what its peers do meanwhile. It also counts the
// allocations made between the last two of GRADCOMP_AUTO's three agreements
// per tuning (whether every rank has saved figures, readiness, the figures;
// each begins with a copy into agreeScratch()): the timed calls, which must
// make none.
#pragma once

#include <memory>
#include <utility>

#include "plugin/checks.h"
#include "tests/common/forwarding_backend.h"

namespace gctest {

class AllocLimitBackend final : public ForwardingBackend {
 public:
  AllocLimitBackend(std::shared_ptr<gc::Backend> inner, size_t budget)
      : ForwardingBackend(std::move(inner)), budget_(budget) {}
  size_t refused() const { return refused_; }
  size_t used() const { return used_; }
  // At least used(): the rank's memory ran out (used()) or came back.
  void setBudget(size_t budget) { budget_ = budget < used_ ? used_ : budget; }
  int agreements() const { return agreements_; }
  size_t allocsBetweenAgreements() const { return between_; }

  gradcompResult_t alloc(size_t bytes, void** p) override {
    if (bytes > budget_ - used_) {
      *p = nullptr;
      ++refused_;
      return gc::setError(gradcompSystemError,
                          "test: an allocation of %zu bytes refused (%zu of %zu bytes used)", bytes,
                          used_, budget_);
    }
    if (agreements_ % 3 == 2) ++between_;
    const gradcompResult_t res = inner_->alloc(bytes, p);
    if (res == gradcompSuccess) used_ += bytes;
    return res;
  }
  gradcompResult_t fromHost(void* dst, const void* src, size_t bytes) override {
    if (dst == inner_->agreeScratch()) ++agreements_;
    return inner_->fromHost(dst, src, bytes);
  }

 private:
  size_t budget_, used_ = 0;  // bytes released are not given back to the budget
  size_t refused_ = 0;
  int agreements_ = 0;
  size_t between_ = 0;
};

}  // namespace gctest
