// Drives an in-process CPU world: N comms, one thread per rank.
#pragma once

#include <gtest/gtest.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <thread>
#include <vector>

#include "gradcomp.h"

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

// savedState without GRADCOMP_AUTO's figures record (plugin/state.cc, tag
// 2), re-sealed: the buffers' states alone, for tests that compare those
// between comms that did and did not time.
inline std::vector<uint8_t> savedBufferState(gradcompComm_t c) {
  const std::vector<uint8_t> s = savedState(c);
  const size_t header = 48 + 4 * 16;
  if (s.size() < header) return s;
  std::vector<uint8_t> out(s.begin(), s.begin() + header);
  uint64_t records = 0, kept = 0;
  memcpy(&records, s.data() + 40, 8);
  size_t at = header;
  for (uint64_t i = 0; i < records && at + 16 <= s.size(); ++i) {
    uint32_t tag = 0;
    uint64_t bytes = 0;
    memcpy(&tag, s.data() + at, 4);
    memcpy(&bytes, s.data() + at + 8, 8);
    if (bytes < 16 || bytes > s.size() - at) return s;
    if (tag != 2) out.insert(out.end(), s.begin() + at, s.begin() + at + bytes), ++kept;
    at += bytes;
  }
  const uint64_t total = out.size();
  memcpy(out.data() + 16, &total, 8);
  memcpy(out.data() + 40, &kept, 8);
  uint32_t crc = ~0u;  // CRC32C with its own field (bytes 12..15) as zero
  for (size_t i = 0; i < out.size(); ++i) {
    crc ^= (i >= 12 && i < 16) ? 0u : out[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  crc = ~crc;
  memcpy(out.data() + 12, &crc, 4);
  return out;
}

}  // namespace gctest
