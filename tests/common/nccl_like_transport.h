// A stand-in for NCCL's transport over the in-process CPU world, so that
// the comm's NCCL-only paths run where no GPU is: its collectives compare
// no call record, as NCCL's do not (checksEveryCall false: the comm then
// runs GRADCOMP_CHECK_CALLS's agreement before every call, the check after
// a state load or reset, and a refusal's join of it, as on NCCL), and its
// verifyCall is the CUDA transport's (backends/cuda/transport.cc): one
// allgather of every rank's 32-byte CallInfo, compared.
// Unlike NCCL it never corrupts memory or hangs on ranks whose collectives
// differ: the CPU world still compares each collective and its size (a
// pass-through's count, datatype and op travel in the record it is given,
// the others' sizes in the world's own check), and a rank it waits for in
// vain fails after cpuTimeoutSec.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "gradcomp.h"
#include "plugin/comm.h"
#include "tests/common/cpu_world.h"
#include "tests/common/forwarding_transport.h"

namespace gctest {

class NcclLikeTransport final : public ForwardingTransport {
 public:
  using ForwardingTransport::ForwardingTransport;
  bool checksEveryCall() const override { return false; }
  gradcompResult_t verifyCall() override {
    ++verifyCalls;
    std::vector<gc::CallInfo> all(size_);
    const gradcompResult_t r = bare().allGather(&call_, all.data(), sizeof(gc::CallInfo));
    if (r != gradcompSuccess) return r;
    for (int i = 0; i < size_; ++i) {
      if (!(all[i] == call_)) return gc::callMismatch(rank_, call_, i, all[i], size_);
    }
    return gradcompSuccess;
  }
  gradcompResult_t allToAll(const void* const* send, const size_t* sendBytes, void* const* recv,
                            const size_t* recvBytes) override {
    ++collectives;
    return bare().allToAll(send, sendBytes, recv, recvBytes);
  }
  gradcompResult_t sendRecv(const void* send, size_t sendBytes, int to, void* recv,
                            size_t recvBytes, int from) override {
    ++collectives;
    return bare().sendRecv(send, sendBytes, to, recv, recvBytes, from);
  }
  gradcompResult_t allGather(const void* send, void* recv, size_t bytes) override {
    ++collectives;
    return bare().allGather(send, recv, bytes);
  }
  gradcompResult_t allReduceSumFloat(const float* send, float* recv, size_t n) override {
    ++collectives;
    return bare().allReduceSumFloat(send, recv, n);
  }
  gradcompResult_t passThrough(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op) override {
    ++collectives;
    // The world's pass-through reads its size from the call record alone:
    // this collective's own, so that ranks of different counts fail there
    // instead of reading past a shorter peer's buffer.
    gc::CallInfo own;
    own.count = count;
    own.type = (int)type;
    own.op = (int)op;
    inner().beginCall(own);
    return inner().passThrough(send, recv, count, type, op);
  }
  gradcompResult_t reduceScatter(const void* send, void* recv, size_t recvCount,
                                 ncclDataType_t type, ncclRedOp_t op) override {
    ++collectives;
    return bare().reduceScatter(send, recv, recvCount, type, op);
  }
  int verifyCalls = 0;  // agreements on the call
  int collectives = 0;  // every other exchange
 private:
  // The wrapped world, told one record for every call: it compares none.
  gc::Transport& bare() {
    inner().beginCall(gc::CallInfo{});
    return inner();
  }
};

// Puts NcclLikeTransport under every rank's comm of w (a hierarchical
// comm's node and inter-node transports too); returns the world's transport
// of each rank.
inline std::vector<NcclLikeTransport*> ncclLike(CpuWorld& w) {
  std::vector<NcclLikeTransport*> out;
  for (int r = 0; r < w.size(); ++r) {
    gradcompComm* c = w.comm(r);
    out.push_back(new NcclLikeTransport(std::move(c->transport)));
    c->transport.reset(out.back());
    if (c->intra) c->intra.reset(new NcclLikeTransport(std::move(c->intra)));
    if (c->inter) c->inter->transport.reset(new NcclLikeTransport(std::move(c->inter->transport)));
  }
  return out;
}

}  // namespace gctest
