// The bytes a comm's stats count (bytesOnWire, bytesInterNode) are the
// bytes its transports carried to other ranks: every QSGD algorithm, flat
// and as the hierarchy's middle stage, pipelined or not, at sizes whose
// encodings are not whole 16-byte slots. The stats are what gradcomp_perf's
// wire column and the link model read, so a block padded to its slot on the
// wire but counted at its encoding's size would make every ratio a lie.
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <vector>

#include "gradcomp.h"
#include "plugin/backends/transport.h"
#include "plugin/comm.h"
#include "tests/common/cpu_world.h"
#include "tests/common/forwarding_transport.h"
#include "tests/common/test_util.h"
#include "tests/common/world_checks.h"

namespace {

struct Carried {
  uint64_t all = 0, remote = 0;
};

// Counts what the comm's exchanges send to other ranks. The QSGD
// algorithms' bytes go by allToAll and sendRecv; allGather carries only the
// CPU backend's own agreement on a call's arguments (checkRanksAgree), which
// the CUDA backend does not send, and the uncompressed collectives are not
// compressed bytes (no call here passes through).
class CountingTransport final : public gctest::ForwardingTransport {
 public:
  CountingTransport(std::unique_ptr<gc::Transport> inner, Carried* out,
                    std::function<bool(int)> remote)
      : ForwardingTransport(std::move(inner)), out_(out), remote_(std::move(remote)) {}
  gradcompResult_t allToAll(const void* const* send, const size_t* sendBytes, void* const* recv,
                            const size_t* recvBytes) override {
    for (int j = 0; j < size_; ++j)
      if (j != rank_) count(j, sendBytes[j]);
    return ForwardingTransport::allToAll(send, sendBytes, recv, recvBytes);
  }
  gradcompResult_t sendRecv(const void* send, size_t sendBytes, int to, void* recv,
                            size_t recvBytes, int from) override {
    if (to != rank_) count(to, sendBytes);
    return ForwardingTransport::sendRecv(send, sendBytes, to, recv, recvBytes, from);
  }

 private:
  void count(int peer, size_t bytes) {
    out_->all += bytes;
    if (remote_(peer)) out_->remote += bytes;
  }
  Carried* out_;
  std::function<bool(int)> remote_;
};

struct Case {
  gradcompAlgo_t algo;
  int N, L, bits, bucket;
  size_t n, pipelineBytes;
  bool reduceScatter;
};

void checkCase(const Case& k) {
  SCOPED_TRACE(testing::Message() << "algo=" << k.algo << " N=" << k.N << " L=" << k.L
                                  << " bits=" << k.bits << " bucket=" << k.bucket << " n=" << k.n
                                  << " pipelineBytes=" << k.pipelineBytes
                                  << " reduceScatter=" << k.reduceScatter);
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.algo = k.algo;
  cfg.localSize = k.L;
  cfg.bits = k.bits;
  cfg.bucketSize = k.bucket;
  cfg.pipelineBytes = k.pipelineBytes;
  cfg.minElements = 0;
  std::vector<gradcompComm_t> comms(k.N);
  ASSERT_EQ(gradcompCommCreateCpu(k.N, &cfg, comms.data()), gradcompSuccess)
      << gradcompGetLastError();
  // The flat exchange's transport, or the hierarchy's inter-node one (its
  // in-node stages are NCCL's uncompressed collectives, counted apart).
  std::vector<Carried> carried(k.N);
  for (int r = 0; r < k.N; ++r) {
    gradcompComm* c = comms[r];
    if (c->inter) {
      c->inter->transport = std::make_unique<CountingTransport>(
          std::move(c->inter->transport), &carried[r], [](int) { return true; });
    } else {
      c->transport = std::make_unique<CountingTransport>(
          std::move(c->transport), &carried[r], [c](int j) { return c->topo.remote(j, c->rank); });
    }
  }
  const size_t recvCount = k.reduceScatter ? k.n / (size_t)k.N : k.n;
  std::vector<std::vector<float>> in(k.N), out(k.N, std::vector<float>(recvCount));
  for (int r = 0; r < k.N; ++r) in[r] = gctest::normal(k.n, 100 + r);
  for (int step = 0; step < 2; ++step) {
    const auto res = gctest::runOnThreads(k.N, [&](int r) {
      return k.reduceScatter ? gradcompReduceScatter(in[r].data(), out[r].data(), recvCount,
                                                     ncclFloat32, ncclSum, comms[r], nullptr)
                             : gradcompAllReduce(in[r].data(), out[r].data(), k.n, ncclFloat32,
                                                 ncclSum, comms[r], nullptr);
    });
    for (int r = 0; r < k.N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << "rank " << r;
  }
  for (int r = 0; r < k.N; ++r) {
    gradcompStats_t st;
    ASSERT_EQ(gradcompGetStats(comms[r], &st), gradcompSuccess);
    ASSERT_EQ(st.callsCompressed, 2u);
    if (k.L > 1) {
      EXPECT_EQ(st.bytesInterNode, carried[r].all) << "rank " << r;
    } else {
      EXPECT_EQ(st.bytesOnWire, carried[r].all) << "rank " << r;
      EXPECT_EQ(st.bytesInterNode, carried[r].remote) << "rank " << r;
    }
  }
  for (gradcompComm_t c : comms) gradcompCommDestroy(c);
}

TEST(WireBytes, StatsCountWhatTheTransportsCarried) {
  // Buckets of 32 at 4 and 8 bits: 20- and 36-byte encodings per bucket,
  // so slots of 16 are padded unless a block is counted exactly.
  for (gradcompAlgo_t algo : {gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather}) {
    for (int N : {2, 3, 5}) {
      for (int bits : {4, 8}) {
        for (size_t n : {(size_t)32, (size_t)1000, (size_t)4099}) {
          for (size_t pipe : {(size_t)0, (size_t)512}) {
            checkCase({algo, N, 1, bits, 32, n, pipe, false});
          }
        }
      }
    }
  }
  for (gradcompAlgo_t middle : {gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather}) {
    for (size_t pipe : {(size_t)0, (size_t)512}) {
      checkCase({middle, 4, 2, 4, 32, 4099, pipe, false});
      checkCase({middle, 6, 2, 8, 32, 1000, pipe, false});
    }
  }
  for (int N : {2, 3}) {
    for (size_t pipe : {(size_t)0, (size_t)512}) {
      checkCase({gradcompAlgoAuto, N, 1, 4, 32, (size_t)N * 1000, pipe, true});
      checkCase({gradcompAlgoAuto, 2 * N, 2, 8, 32, (size_t)2 * N * 999, pipe, true});
    }
  }
}

}  // namespace
