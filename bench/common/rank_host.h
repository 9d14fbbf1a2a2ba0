// Ranks whose buffers live in host memory (the in-process CPU world and the
// socket processes): allocation, the data generators, the checker and the
// host codec timing they share.
#pragma once

#include <stdlib.h>
#include <string.h>

#include "data_ops.h"
#include "rank.h"

namespace gcbench {

class HostRank : public Rank {
 public:
  ~HostRank() override {
    free(send_);
    free(recv_);
  }
  bool onDevice() const override { return false; }
  void allocBuffers(size_t sendBytes, size_t recvBytes) override {
    send_ = malloc(sendBytes ? sendBytes : 1);
    recv_ = malloc(recvBytes ? recvBytes : 1);
    if (!send_ || !recv_)
      fatal(rank_, "out of host memory for %zu + %zu bytes", sendBytes, recvBytes);
  }
  void fill(void* buf, gc::DType t, size_t count, uint64_t seed) override {
    fillHost(buf, t, count, seed, rank_);
  }
  void poison(void* buf, size_t bytes) override { memset(buf, 0xff, bytes); }
  void poke(void* buf, gc::DType t, size_t i, float v) override {
    gc::storeFromFloat(buf, t, i, v);
  }
  CheckTotals check(const CheckParams& p, const float* bm, const void* got, size_t count) override {
    return checkHost(p, bm, got, count);
  }
  void toHost(const void* buf, void* host, size_t bytes) override { memcpy(host, buf, bytes); }
  bool resultHash(const void* buf, size_t bytes, double* hash) override;
  void sync() override {}
  // The host reference codecs on this rank's input, repeated for 50 ms.
  bool qsgdKernelTimes(gc::DType t, size_t count, const QsgdKernels& k,
                       KernelCosts* costs) override;
};

}  // namespace gcbench
