// A comm of N ranks in one process, seen from rank 0, over a transport where
// every rank sends what rank 0 sends: an allgather (also as direct sends)
// repeats the block, a float sum is N times the input, a max the input
// itself. It works on either backend's memory through the backend's own ops,
// so the same calls run on the CPU and the CUDA backend, on the caller's
// stream (and in a graph). mirrorHierComm makes a hierarchical comm of such
// mirrors.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <utility>

#include "gradcomp.h"
#include "plugin/comm.h"

namespace gctest {

#define GC_TEST_CHECK(x)                  \
  do {                                    \
    gradcompResult_t r_ = (x);            \
    if (r_ != gradcompSuccess) return r_; \
  } while (0)

class MirrorTransport final : public gc::Transport {
 public:
  // passThrough: whether NCCL's own allreduce (fp32 sum and max) is offered;
  // tests of compression leave it out, so a call the library wrongly passes
  // to NCCL fails instead of matching.
  MirrorTransport(int size, gc::Backend* be, size_t maxFloats, bool passThrough)
      : be_(be), maxFloats_(maxFloats), passThrough_(passThrough) {
    rank_ = 0;
    size_ = size;
    void* p = nullptr;
    EXPECT_EQ(be_->alloc(maxFloats * sizeof(float), &p), gradcompSuccess);
    tmp_ = static_cast<float*>(p);
  }
  ~MirrorTransport() override { be_->release(tmp_); }
  // An allgather as direct sends (allGatherDirect: one block to every peer,
  // as the sparse allgather sends its slots): every rank's block is rank
  // 0's. Other all-to-alls have no mirror image (rank j would send rank 0
  // its own part for rank 0, which rank 0 never computes).
  gradcompResult_t allToAll(const void* const* send, const size_t* sendBytes, void* const* recv,
                            const size_t* recvBytes) override {
    const void* block = nullptr;
    size_t bytes = 0;
    for (int j = 0; j < size_; ++j) {
      if (j == rank_) continue;
      if (block == nullptr) block = send[j], bytes = sendBytes[j];
      if (send[j] != block || sendBytes[j] != bytes || recvBytes[j] != bytes) {
        return gradcompNotSupported;
      }
    }
    for (int i = 0; i < size_; ++i) {
      if (i != rank_) GC_TEST_CHECK(be_->copy(recv[i], block, bytes));
    }
    return gradcompSuccess;
  }
  gradcompResult_t sendRecv(const void*, size_t, int, void*, size_t, int) override {
    return gradcompNotSupported;
  }
  gradcompResult_t allGather(const void* send, void* recv, size_t bytes) override {
    for (int i = 0; i < size_; ++i) {
      GC_TEST_CHECK(be_->copy(static_cast<char*>(recv) + i * bytes, send, bytes));
    }
    return gradcompSuccess;
  }
  gradcompResult_t allReduceSumFloat(const float* send, float* recv, size_t n) override {
    if (n > maxFloats_) return gradcompNotSupported;
    GC_TEST_CHECK(be_->copy(tmp_, send, n * sizeof(float)));
    GC_TEST_CHECK(be_->zero(recv, n * sizeof(float)));
    for (int i = 0; i < size_; ++i) GC_TEST_CHECK(be_->add(recv, tmp_, n));
    return gradcompSuccess;
  }
  gradcompResult_t passThrough(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op) override {
    if (!passThrough_ || type != ncclFloat32) return gradcompNotSupported;
    if (op == ncclMax) return be_->copy(recv, send, count * sizeof(float));
    if (op != ncclSum) return gradcompNotSupported;
    return allReduceSumFloat(static_cast<const float*>(send), static_cast<float*>(recv), count);
  }
  // The in-node reduce-scatter of a hierarchical comm (mirrorHierComm), fp32
  // sum alone: every rank holds rank 0's input, so block rank_ summed over
  // the ranks is size times rank 0's block rank_. A world transport refuses
  // it (reduceScatterOk false), as NCCL's reduce-scatter a compressed call
  // must not pass to.
  gradcompResult_t reduceScatter(const void* send, void* recv, size_t count, ncclDataType_t type,
                                 ncclRedOp_t op) override {
    if (!reduceScatterOk || type != ncclFloat32 || op != ncclSum || count > maxFloats_) {
      return gradcompNotSupported;
    }
    const float* block = static_cast<const float*>(send) + (size_t)rank_ * count;
    GC_TEST_CHECK(be_->copy(tmp_, block, count * sizeof(float)));
    GC_TEST_CHECK(be_->zero(recv, count * sizeof(float)));
    for (int i = 0; i < size_; ++i) GC_TEST_CHECK(be_->add(static_cast<float*>(recv), tmp_, count));
    return gradcompSuccess;
  }
  // The agreement on the call (GRADCOMP_CHECK_CALLS, a load or reset):
  // counted, and with peerStepAhead rank 1 stands one step ahead, so it
  // fails as NCCL's agreement fails for ranks whose calls differ.
  gradcompResult_t verifyCall() override {
    ++verifyCalls;
    lastVerified = call_;
    if (!peerStepAhead) return gradcompSuccess;
    gc::CallInfo peer = call_;
    peer.step++;
    return gc::callMismatch(rank_, call_, 1, peer, size_);
  }
  bool reduceScatterOk = false;
  int verifyCalls = 0;
  gc::CallInfo lastVerified;
  bool peerStepAhead = false;

 private:
  gc::Backend* be_;
  size_t maxFloats_;
  bool passThrough_;
  float* tmp_ = nullptr;
};

#undef GC_TEST_CHECK

// A comm of nranks over the mirror on the CUDA backend (device) or the CPU
// one; free it with gradcompCommDestroy.
inline gradcompComm* mirrorComm(const gradcompConfig_t& cfg, bool device, int nranks,
                                size_t maxFloats, cudaStream_t stream, bool passThrough) {
  gradcompComm* c = new gradcompComm();
  c->cfg = cfg;
  c->rank = 0;
  c->nranks = nranks;
  c->backend = device ? gc::makeCudaBackend() : gc::makeCpuBackend();
  EXPECT_EQ(c->backend->init(), gradcompSuccess);
  c->backend->setStream(stream);
  c->transport.reset(new MirrorTransport(nranks, c->backend.get(), maxFloats, passThrough));
  c->transport->setStream(stream);
  c->sparse = device ? gc::makeCudaSparseOps() : gc::makeCpuSparseOps();
  return c;
}

// A hierarchical comm of `nodes` nodes of `local` ranks (consecutive blocks,
// as GRADCOMP_LOCAL_SIZE makes them), seen from rank 0 (node 0, local rank
// 0), on the CUDA backend or the CPU one: the world, the node's ranks (whose
// reduce-scatter is the mirror's) and the inter-node child comm are all
// mirrors, the child made as the comm's set-up makes it (topology.cc,
// makeInterComm). Free it with gradcompCommDestroy.
inline gradcompComm* mirrorHierComm(const gradcompConfig_t& cfg, bool device, int nodes, int local,
                                    size_t maxFloats, cudaStream_t stream, bool passThrough) {
  gradcompComm* c = mirrorComm(cfg, device, nodes * local, maxFloats, stream, passThrough);
  c->topo = gc::blockTopology(0, nodes * local, local);
  MirrorTransport* intra = new MirrorTransport(local, c->backend.get(), maxFloats, false);
  intra->reduceScatterOk = true;
  intra->setStream(stream);
  c->intra.reset(intra);
  std::unique_ptr<gradcompComm> m(new gradcompComm());
  m->cfg = cfg;
  m->cfg.seed = gc::hierSeed(cfg.seed, c->topo.localRank);
  m->cfg.localSize = 1;
  if (m->cfg.algo == gradcompAlgoHier) m->cfg.algo = gradcompAlgoAuto;
  m->sparseDecimals = c->sparseDecimals;
  m->rank = c->topo.node;
  m->parentRank = c->rank;
  m->gradScale = c->gradScale;
  m->nranks = nodes;
  m->topo = gc::blockTopology(m->rank, nodes, 1);
  m->backend = c->backend;
  m->sparse = c->sparse;
  m->transport.reset(new MirrorTransport(nodes, c->backend.get(), maxFloats, passThrough));
  m->transport->setStream(stream);
  c->inter = std::move(m);
  return c;
}

}  // namespace gctest
