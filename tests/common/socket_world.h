// Drives a CPU-backend world over TCP on loopback (gradcompCommCreateSocket).
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "gradcomp.h"
#include "tests/common/cpu_world.h"
#include "tests/common/loopback.h"

namespace gctest {

// N comms over TCP on loopback, one thread per rank (each made on its own
// thread, as separate processes would).
class SocketWorld {
 public:
  SocketWorld(int n, const gradcompConfig_t& cfg, std::string root = "") : comms_(n, nullptr) {
    if (root.empty()) root = loopbackRoot();
    std::vector<std::thread> ts;
    std::vector<gradcompResult_t> res(n);
    std::vector<std::string> why(n);
    for (int r = 0; r < n; ++r) {
      ts.emplace_back([&, r] {
        res[r] = gradcompCommCreateSocket(n, r, root.c_str(), &cfg, &comms_[r]);
        why[r] = gradcompGetLastError();
      });
    }
    for (auto& t : ts) t.join();
    for (int r = 0; r < n; ++r)
      EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << why[r];
  }
  ~SocketWorld() {
    for (auto c : comms_) gradcompCommDestroy(c);
  }
  gradcompComm_t comm(int r) const { return comms_[r]; }
  int size() const { return (int)comms_.size(); }
  std::vector<gradcompResult_t> run(const std::function<gradcompResult_t(int)>& fn) {
    return gctest::runOnThreads(size(), fn);
  }

 private:
  std::vector<gradcompComm_t> comms_;
};

}  // namespace gctest
