// A transport that forwards every collective to the one it wraps, telling
// it first the call the comm began (so that the CPU world's call check
// still compares the ranks' real calls): the base of the tests' transport
// wrappers, each overriding only what it watches or changes.
#pragma once

#include <memory>
#include <utility>

#include "plugin/backends/transport.h"
#include "plugin/checks.h"

namespace gctest {

class ForwardingTransport : public gc::Transport {
 public:
  explicit ForwardingTransport(std::unique_ptr<gc::Transport> inner) : inner_(std::move(inner)) {
    rank_ = inner_->rank();
    size_ = inner_->size();
  }
  void setStream(cudaStream_t s) override {
    stream_ = s;
    inner_->setStream(s);
  }
  bool checksEveryCall() const override { return inner_->checksEveryCall(); }
  gradcompResult_t verifyCall() override { return in().verifyCall(); }
  void abort() override {
    inner_->abort();
    gc::Transport::abort();
  }
  gradcompResult_t allToAll(const void* const* send, const size_t* sendBytes, void* const* recv,
                            const size_t* recvBytes) override {
    return in().allToAll(send, sendBytes, recv, recvBytes);
  }
  gradcompResult_t sendRecv(const void* send, size_t sendBytes, int to, void* recv,
                            size_t recvBytes, int from) override {
    return in().sendRecv(send, sendBytes, to, recv, recvBytes, from);
  }
  gradcompResult_t allGather(const void* send, void* recv, size_t bytes) override {
    return in().allGather(send, recv, bytes);
  }
  gradcompResult_t allReduceSumFloat(const float* send, float* recv, size_t n) override {
    return in().allReduceSumFloat(send, recv, n);
  }
  gradcompResult_t passThrough(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op) override {
    return in().passThrough(send, recv, count, type, op);
  }
  gradcompResult_t reduceScatter(const void* send, void* recv, size_t recvCount,
                                 ncclDataType_t type, ncclRedOp_t op) override {
    return in().reduceScatter(send, recv, recvCount, type, op);
  }

 protected:
  // The wrapped transport, told the current call.
  gc::Transport& in() {
    inner_->beginCall(call_);
    return *inner_;
  }
  // The wrapped transport as it is, for a wrapper that tells it calls of its own.
  gc::Transport& inner() { return *inner_; }

 private:
  std::unique_ptr<gc::Transport> inner_;
};

// A transport whose allreduce of one float (the output's non-finite flag,
// ncclMax: discardStateIfNonFinite's for a reduce-scatter), on every rank
// alike, fails while armed.
class FailingFlagTransport final : public ForwardingTransport {
 public:
  using ForwardingTransport::ForwardingTransport;
  bool armed = false;
  gradcompResult_t passThrough(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op) override {
    if (armed && count == 1 && op == ncclMax)
      return gc::setError(gradcompSystemError, "test: the flag's allreduce failed");
    return ForwardingTransport::passThrough(send, recv, count, type, op);
  }
};

}  // namespace gctest
