// The pipelined calls' stream ordering as the CUDA backend runs it, checked
// in the CPU world by LaneCheck (tests/common/lane_check.h): every pair of
// operations on different lanes (the caller's stream, the comm stream, the
// node stream) that touch the same bytes, one writing, is ordered by event
// slots; every call returns with its side lanes joined into the caller's
// stream; every wait names a record of its own call; no slot is recorded
// again before it was waited on; every rank issues the collectives of the
// comm and its node and inter-node sub-comms in one order (NCCL's kernels of
// two communicators on two streams are ordered by nothing else). The CPU backend
// runs every lane at once, so without this a missing hand-off would show
// only on a GPU.
#include <gtest/gtest.h>

#include <vector>

#include "gradcomp.h"
#include "tests/common/cpu_world.h"
#include "tests/common/lane_check.h"
#include "tests/common/world_checks.h"

namespace {

using gc::Backend;
using gctest::LaneCheck;

// The check itself: an unordered write/read pair across lanes, an unjoined
// side lane, a slot recorded twice and a wait on an earlier call's record
// are found; event hand-offs clear them.
TEST(LaneCheck, FindsWhatTheCudaBackendWouldRace) {
  std::vector<float> buf(16);
  const LaneCheck::Range w{buf.data(), 64, true}, r{buf.data() + 8, 8, false};
  {
    LaneCheck lc(nullptr);
    lc.op(Backend::kComputeLane, "write", {w});
    lc.op(Backend::kCommLane, "read", {r});
    EXPECT_EQ(lc.errors().size(), 1u);
  }
  {
    LaneCheck lc(nullptr);
    lc.op(Backend::kComputeLane, "write", {w});
    lc.record(Backend::kComputeLane, 0);
    lc.wait(Backend::kCommLane, 0);
    lc.op(Backend::kCommLane, "read", {r});
    lc.op(Backend::kComputeLane, "read", {r});  // reads do not conflict
    EXPECT_TRUE(lc.errors().empty());
    lc.endCall("call");
    EXPECT_EQ(lc.errors().size(), 1u) << "the comm lane's read is not joined";
    lc.record(Backend::kCommLane, 1);
    lc.wait(Backend::kComputeLane, 1);
    lc.endCall("call");
    lc.op(Backend::kComputeLane, "write", {w});  // after the read, through slot 1
    EXPECT_EQ(lc.errors().size(), 1u);
    lc.record(Backend::kNodeLane, 2);
    lc.record(Backend::kNodeLane, 2);
    EXPECT_EQ(lc.errors().size(), 2u) << "slot 2 recorded twice, not waited on between";
    lc.endCall("call");
    lc.wait(Backend::kCommLane, 2);
    EXPECT_EQ(lc.errors().size(), 3u) << "a wait on the last call's record";
  }
  {
    LaneCheck lc(nullptr);  // write on the comm lane, then an unordered read
    lc.op(Backend::kCommLane, "write", {w});
    lc.op(Backend::kNodeLane, "read", {r});
    EXPECT_EQ(lc.errors().size(), 1u);
  }
}

enum class Call { ReduceScatter, AllReduce };

struct Case {
  const char* name;
  Call call;
  int N, L;
  gradcompAlgo_t algo;
  ncclDataType_t type;
  bool avg, inPlace;
};

// Runs three calls of the case on a pipelined world whose comms are under
// LaneCheck, with waits on slot dropWait ignored (-1: none); returns every
// rank's findings and, in *sideOps, the fewest operations a rank ran on the
// comm lane and on the node lane. In these shapes every rank's chunks or
// shard have the same pieces, so every rank issues the very same
// collectives: their order must be one string.
// failDecode > 0: one call, whose failDecode-th decode fails on every rank
// (so that no rank waits for another at a collective).
std::vector<std::string> runChecked(const Case& k, int dropWait, size_t sideOps[2],
                                    int failDecode = 0) {
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.localSize = k.L;
  cfg.algo = k.algo;
  const int inter = k.L > 1 ? k.N / k.L : k.N;
  cfg.pipelineBytes = 64 * 4 * inter;  // pieces of one bucket
  const size_t m = 700, esz = k.type == ncclFloat32 ? 4 : 2;
  const size_t n = k.call == Call::ReduceScatter ? k.N * m : k.N * m + 5;
  const size_t out = k.call == Call::ReduceScatter ? m : n;
  gctest::CpuWorld world(k.N, cfg);
  std::vector<LaneCheck*> checks(k.N);
  for (int r = 0; r < k.N; ++r) {
    checks[r] = gctest::checkLanes(world.comm(r));
    checks[r]->dropWaitSlot = dropWait;
    checks[r]->failDecode = failDecode;
  }
  std::vector<std::vector<uint16_t>> send(k.N, std::vector<uint16_t>(n * esz / 2));
  std::vector<std::vector<uint16_t>> recv(k.N, std::vector<uint16_t>(out * esz / 2));
  for (int step = 0; step < (failDecode > 0 ? 1 : 3); ++step) {
    for (int r = 0; r < k.N; ++r) {
      for (size_t i = 0; i < n; ++i) {
        const float v = (float)((i * 7 + r * 13 + step * 5) % 29) - 14.0f;
        if (esz == 4) {
          memcpy(reinterpret_cast<char*>(send[r].data()) + i * 4, &v, 4);
        } else {
          uint32_t b;
          memcpy(&b, &v, 4);
          send[r][i] = (uint16_t)(b >> 16);  // exact in bf16 and read as fp16 alike
        }
      }
    }
    auto res = world.run([&](int r) {
      const ncclRedOp_t op = k.avg ? ncclAvg : ncclSum;
      char* s = reinterpret_cast<char*>(send[r].data());
      if (k.call == Call::ReduceScatter) {
        void* o = k.inPlace ? s + r * m * esz : (void*)recv[r].data();
        return gradcompReduceScatter(s, o, m, k.type, op, world.comm(r), nullptr);
      }
      void* o = k.inPlace ? (void*)s : (void*)recv[r].data();
      return gradcompAllReduce(s, o, n, k.type, op, world.comm(r), nullptr);
    });
    for (int r = 0; r < k.N; ++r) {
      EXPECT_EQ(res[r], failDecode > 0 ? gradcompInternalError : gradcompSuccess)
          << gradcompGetLastError();
      checks[r]->endCall(k.name);
    }
  }
  gradcompStats_t st;
  EXPECT_EQ(gradcompGetStats(world.comm(0), &st), gradcompSuccess);
  if (failDecode == 0) EXPECT_GT(st.piecesLast, 1u) << k.name << ": the case must pipeline";
  std::vector<std::string> found;
  sideOps[0] = sideOps[1] = SIZE_MAX;
  for (int r = 0; r < k.N; ++r) {
    if (checks[r]->order != checks[0]->order) {
      found.push_back("rank " + std::to_string(r) + " issues its collectives in another order (" +
                      checks[r]->order + ") than rank 0 (" + checks[0]->order + ")");
    }
    for (const std::string& e : checks[r]->errors()) found.push_back(e);
    sideOps[0] = std::min(sideOps[0], checks[r]->opsOn(Backend::kCommLane));
    sideOps[1] = std::min(sideOps[1], checks[r]->opsOn(Backend::kNodeLane));
  }
  return found;
}

const Case kCases[] = {
    {"reduce-scatter", Call::ReduceScatter, 4, 1, gradcompAlgoAuto, ncclFloat32, false, false},
    {"reduce-scatter bf16 avg in place", Call::ReduceScatter, 5, 1, gradcompAlgoAuto, ncclBfloat16,
     true, true},
    {"hier reduce-scatter", Call::ReduceScatter, 4, 2, gradcompAlgoAuto, ncclFloat32, false, false},
    {"hier reduce-scatter fp16 avg in place", Call::ReduceScatter, 6, 3, gradcompAlgoAuto,
     ncclFloat16, true, true},
    {"hier reduce-scatter fp32 in place", Call::ReduceScatter, 6, 2, gradcompAlgoAuto, ncclFloat32,
     false, true},
    {"two-shot", Call::AllReduce, 4, 1, gradcompAlgoTwoShot, ncclFloat32, false, false},
    {"two-shot bf16 avg in place", Call::AllReduce, 5, 1, gradcompAlgoTwoShot, ncclBfloat16, true,
     true},
    {"ring", Call::AllReduce, 4, 1, gradcompAlgoRing, ncclBfloat16, true, false},
    {"hier two-shot", Call::AllReduce, 6, 2, gradcompAlgoTwoShot, ncclFloat32, false, true},
    {"hier two-shot bf16 avg", Call::AllReduce, 8, 2, gradcompAlgoTwoShot, ncclBfloat16, true,
     false},
};

// Every pipelined call: no race, joined, slots waited on before reuse; the
// transfers do run on the side lanes (hierarchical: the node lane too).
TEST(LanesCpu, PipelinedCallsAreOrderedAndJoined) {
  for (const Case& k : kCases) {
    SCOPED_TRACE(k.name);
    size_t side[2];
    const std::vector<std::string> found = runChecked(k, -1, side);
    EXPECT_TRUE(found.empty()) << found.size() << " findings, first: " << found[0];
    EXPECT_GT(side[0], 0u) << "nothing ran on the comm lane";
    if (k.L > 1) EXPECT_GT(side[1], 0u) << "nothing ran on the node lane";
  }
}

// Without one of its hand-offs each path races: the check sees what a GPU
// would. Slot 0 hands encodes to the comm lane, 1 brings the first
// exchange back; the hierarchical reduce-scatter's 6 brings the in-node
// reduce-scatter of even pieces back, its 5 hands the widened input to the
// node lane.
TEST(LanesCpu, AMissingHandOffIsFound) {
  const struct {
    int kase, slot;
  } drops[] = {{0, 0}, {0, 1}, {2, 5}, {2, 6}, {2, 7}, {5, 1}, {5, 3}, {8, 6}, {8, 8}};
  for (const auto& d : drops) {
    const Case& k = kCases[d.kase];
    SCOPED_TRACE(testing::Message() << k.name << " without waits on slot " << d.slot);
    size_t side[2];
    EXPECT_FALSE(runChecked(k, d.slot, side).empty());
  }
}

// A call that fails half way (a decode of the first piece, with the next
// piece's transfer already issued on the comm lane, and in the hierarchy the
// in-node reduce-scatters on the node lane) still returns with its side
// lanes joined into the caller's stream: a capture must end joined, and the
// next call's kernels must not overwrite what a transfer still reads.
TEST(LanesCpu, AFailedCallReturnsJoined) {
  for (int kase : {0, 2, 5, 7, 8}) {
    const Case& k = kCases[kase];
    SCOPED_TRACE(k.name);
    size_t side[2];
    const std::vector<std::string> found = runChecked(k, -1, side, 1);
    EXPECT_TRUE(found.empty()) << found.size() << " findings, first: " << found[0];
    EXPECT_GT(side[0], 0u) << "the call failed before it used the comm lane";
  }
}

}  // namespace
