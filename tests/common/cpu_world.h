// Drives an in-process CPU world: N comms, one thread per rank.
#pragma once

#include <gtest/gtest.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "gradcomp.h"
#include "tests/common/state_blob.h"

namespace gctest {

// Runs fn(rank) on one thread per rank of n; returns each rank's result.
inline std::vector<gradcompResult_t> runOnThreads(int n,
                                                  const std::function<gradcompResult_t(int)>& fn) {
  std::vector<gradcompResult_t> res(n, gradcompInternalError);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back([&, r] { res[r] = fn(r); });
  for (auto& t : threads) t.join();
  return res;
}

// fn(rank) on one thread per rank of n; each rank's result and, where it failed,
// its error sentence (the last error is per thread).
inline std::vector<gradcompResult_t> onRanks(int n, const std::function<gradcompResult_t(int)>& fn,
                                             std::vector<std::string>* err) {
  err->assign(n, std::string());
  return runOnThreads(n, [&](int r) {
    const gradcompResult_t rc = fn(r);
    if (rc != gradcompSuccess) (*err)[r] = gradcompGetLastError();
    return rc;
  });
}

class CpuWorld {
 public:
  CpuWorld(int n, const gradcompConfig_t& cfg) : comms_(n) {
    EXPECT_EQ(gradcompCommCreateCpu(n, &cfg, comms_.data()), gradcompSuccess)
        << gradcompGetLastError();
  }
  ~CpuWorld() {
    for (auto c : comms_) gradcompCommDestroy(c);
  }
  int size() const { return (int)comms_.size(); }
  gradcompComm_t comm(int r) const { return comms_[r]; }

  // Runs fn(rank) on one thread per rank; returns each rank's result.
  std::vector<gradcompResult_t> run(const std::function<gradcompResult_t(int)>& fn) {
    return runOnThreads(size(), fn);
  }

 private:
  std::vector<gradcompComm_t> comms_;
};

// A comm's saved state (gradcompCommSaveState), to compare two comms or a
// comm before and after a call.
inline std::vector<uint8_t> savedState(gradcompComm_t c) {
  size_t bytes = 0;
  EXPECT_EQ(gradcompCommStateSize(c, &bytes), gradcompSuccess);
  std::vector<uint8_t> s(bytes);
  EXPECT_EQ(gradcompCommSaveState(c, s.data(), bytes), gradcompSuccess) << gradcompGetLastError();
  return s;
}

// savedState without GRADCOMP_AUTO's figures record (withoutAutoFigures):
// the buffers' states alone.
inline std::vector<uint8_t> savedBufferState(gradcompComm_t c) {
  return withoutAutoFigures(savedState(c));
}

}  // namespace gctest
