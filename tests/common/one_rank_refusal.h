// GRADCOMP_CHECK_CALLS on the in-process CPU world: the checks of a call
// whose arguments one rank alone refuses before the call begins while its
// peers' pass (tests/cpu/test_api_sequence.cc on the CPU transport,
// tests/cpu/test_nccl_like.cc on one that checks no call, as NCCL).
#pragma once

#include <gtest/gtest.h>
#include <stdint.h>
#include <string.h>

#include <string>
#include <vector>

#include "gradcomp.h"
#include "tests/common/cpu_world.h"

namespace gctest {

// The answers to a call rank `who` alone refused: its own
// gradcompInvalidArgument naming `mine`, and its peers' gradcompInvalidUsage
// naming it ("rank <who> ") and `peers` (what it refused).
inline void expectOneRankRefused(const std::vector<gradcompResult_t>& res,
                                 const std::vector<std::string>& err, int who,
                                 const std::string& mine, const std::string& peers) {
  EXPECT_EQ(res[who], gradcompInvalidArgument) << err[who];
  EXPECT_NE(err[who].find(mine), std::string::npos) << err[who];
  const std::string named = "rank " + std::to_string(who) + " ";
  for (int r = 0; r < (int)res.size(); ++r) {
    if (r == who) continue;
    EXPECT_EQ(res[r], gradcompInvalidUsage) << "rank " << r << ": " << err[r];
    EXPECT_NE(err[r].find(named), std::string::npos) << "rank " << r << ": " << err[r];
    EXPECT_NE(err[r].find(peers), std::string::npos) << "rank " << r << ": " << err[r];
  }
}

// After a refused call: every rank's state is as it was `before` the call,
// and the call made right runs on every rank (fp32 sums of m elements: b[r]
// reduce-scattered into o[r] where rs, else allreduced in place).
inline void expectStatesKeptAndTheCallMadeRightRuns(CpuWorld& w,
                                                    const std::vector<std::vector<uint8_t>>& before,
                                                    std::vector<std::vector<float>>& b,
                                                    std::vector<std::vector<float>>& o, bool rs,
                                                    size_t m) {
  const int N = w.size();
  for (int r = 0; r < N; ++r) {
    EXPECT_EQ(savedState(w.comm(r)), before[r]) << "rank " << r;
  }
  std::vector<std::string> err;
  const std::vector<gradcompResult_t> res = onRanks(
      N,
      [&](int r) {
        float* s = b[r].data();
        return rs ? gradcompReduceScatter(s, o[r].data(), m, ncclFloat32, ncclSum, w.comm(r),
                                          nullptr)
                  : gradcompAllReduce(s, s, m, ncclFloat32, ncclSum, w.comm(r), nullptr);
      },
      &err);
  for (int r = 0; r < N; ++r) {
    EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << err[r];
  }
}

// The first call after a reset (kinds 0 and 2) or a load of the state each
// rank held (kind 1), which the ranks agree on, refused by rank `who` alone
// before it begins: a datatype of ncclNumTypes (kind 0), an op of -1 (kind 1,
// put in the enum's bytes as a C caller's), a reduce-scatter whose input
// overflows (kind 2); the others' call is an fp32 sum of m elements (b[r]
// reduce-scattered into o[r] at kind 2, else allreduced in place). Expects the
// refusal's answers (expectOneRankRefused); `before` holds every rank's state
// after the reset or load.
inline void expectTheFirstCallAfterALoadOrResetRefused(CpuWorld& w, int kind, int who,
                                                       std::vector<std::vector<float>>& b,
                                                       std::vector<std::vector<float>>& o, size_t m,
                                                       std::vector<std::vector<uint8_t>>* before) {
  const int N = w.size();
  const bool rs = kind == 2;
  std::vector<std::string> err;
  before->assign(N, {});
  for (int r = 0; r < N; ++r) (*before)[r] = savedState(w.comm(r));
  auto res = onRanks(
      N,
      [&](int r) {
        return kind == 1
                   ? gradcompCommLoadState(w.comm(r), (*before)[r].data(), (*before)[r].size())
                   : gradcompCommResetState(w.comm(r));
      },
      &err);
  for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << err[r];
  for (int r = 0; r < N; ++r) (*before)[r] = savedState(w.comm(r));
  res = onRanks(
      N,
      [&](int r) {
        const bool bad = r == who;
        float* s = b[r].data();
        if (rs) {
          return gradcompReduceScatter(s, o[r].data(), bad ? SIZE_MAX / 4 : m, ncclFloat32, ncclSum,
                                       w.comm(r), nullptr);
        }
        ncclRedOp_t op = ncclSum;
        const int minusOne = -1;
        if (bad && kind == 1) memcpy(&op, &minusOne, sizeof op);
        return gradcompAllReduce(s, s, m, bad && kind == 0 ? ncclNumTypes : ncclFloat32, op,
                                 w.comm(r), nullptr);
      },
      &err);
  const std::string badType = "datatype=" + std::to_string((int)ncclNumTypes);
  const char* what = kind == 0 ? badType.c_str() : kind == 1 ? "op=-1" : "recvcount=";
  expectOneRankRefused(res, err, who, kind == 2 ? "overflows" : what, what);
}

}  // namespace gctest
