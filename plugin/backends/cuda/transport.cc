// NCCL transport: the caller's communicator, on the backend's stream. Byte
// exchanges use ncclUint8; the all-to-all and ring steps are grouped
// send/recv. Errors carry ncclGetErrorString. A non-blocking communicator
// works as a blocking one: each call waits for NCCL's enqueue (ncclFinish).
#include <chrono>
#include <thread>
#include <vector>

#include "checks.h"
#include "backends/cuda/nccl_api.h"
#include "backends/transport.h"

namespace gc {

ncclResult_t ncclAwait(ncclComm_t comm, ncclResult_t res, NcclStop* stop) {
  const NcclApi* api = ncclApi();
  // An NCCL without ncclCommGetAsyncError (before 2.4) has no non-blocking
  // communicators: nothing is in progress.
  if (res == ncclInProgress && api->commGetAsyncError == nullptr) return ncclSuccess;
  // NCCL's own enqueue thread runs meanwhile: yield to it, then sleep
  // briefly (a first call's connections can take seconds).
  for (int polls = 0; res == ncclInProgress; ++polls) {
    if (polls > 0) {
      if (polls < 256) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
    std::unique_lock<std::mutex> polling;
    if (stop != nullptr) {
      polling = std::unique_lock<std::mutex>(stop->mu_);
      if (stop->stopped()) return ncclInvalidUsage;
    }
    ncclResult_t state = ncclInProgress;
    const ncclResult_t got = api->commGetAsyncError(comm, &state);
    res = got != ncclSuccess ? got : state;
  }
  return res;
}

gradcompResult_t ncclFinish(ncclComm_t comm, ncclResult_t res, NcclStop* stop, const char* call,
                            const char* file, int line) {
  const bool waited = res == ncclInProgress;
  res = ncclAwait(comm, res, stop);
  if (res == ncclSuccess) return gradcompSuccess;
  if (waited && res == ncclInvalidUsage && stop != nullptr && stop->stopped()) {
    return setError(gradcompInvalidUsage,
                    "NCCL comm %p was aborted while NCCL still enqueued %s (%s:%d); nothing more "
                    "is asked of it",
                    (void*)comm, call, file, line);
  }
  return setError(gradcompNcclError, "NCCL error %d '%s' at %s:%d (%s)", (int)res,
                  ncclApi()->getErrorString(res), file, line, call);
}

namespace {

class NcclTransport final : public Transport {
 public:
  NcclTransport(ncclComm_t comm, int rank, int size) : comm_(comm) {
    rank_ = rank;
    size_ = size;
  }
  // An aborted comm's buffer is left allocated: cudaFree waits for the
  // whole device, where a kernel of another communicator may be stuck on the
  // dead peer.
  ~NcclTransport() override {
    if (agree_ && !aborted_) cudaFree(agree_);
  }

  void moveTo(ncclComm_t comm) override { comm_ = comm; }

  // Also waits for a poll of the communicator in progress on another
  // thread: the program's ncclCommAbort, next, frees it.
  void abort() override {
    Transport::abort();
    polls_.stop();
  }

  // Made with the comm (the set-up votes on it): a lazy cudaMalloc here
  // failed on one rank alone (out of memory after a checkpoint load), which
  // left its peers in the allgather below, and synchronized the device in
  // the middle of a call.
  gradcompResult_t reserve() override {
    if (agree_ == nullptr) GC_CUDACHECK(cudaMalloc(&agree_, sizeof(CallInfo) * size_));
    return gradcompSuccess;
  }

  // One allgather of every rank's CallInfo and a host sync: paid once after
  // a state load or reset, never on the steady path.
  gradcompResult_t verifyCall() override {
    GC_CHECK(checkOpen());
    const size_t bytes = sizeof(CallInfo);
    GC_CHECK(reserve());
    char* mine = static_cast<char*>(agree_) + bytes * rank_;
    GC_CUDACHECK(cudaMemcpyAsync(mine, &call_, bytes, cudaMemcpyHostToDevice, stream_));
    GC_NCCLWAIT(comm_, &polls_,
                ncclApi()->allGather(mine, agree_, bytes, ncclUint8, comm_, stream_));
    std::vector<CallInfo> all(size_);
    GC_CUDACHECK(
        cudaMemcpyAsync(all.data(), agree_, bytes * size_, cudaMemcpyDeviceToHost, stream_));
    GC_CUDACHECK(cudaStreamSynchronize(stream_));
    for (int i = 0; i < size_; ++i) {
      if (!(all[i] == call_)) return callMismatch(rank_, call_, i, all[i], size_);
    }
    return gradcompSuccess;
  }

  gradcompResult_t allToAll(const void* const* send, const size_t* sendBytes, void* const* recv,
                            const size_t* recvBytes) override {
    GC_CHECK(checkOpen());
    const NcclApi* api = ncclApi();
    GC_NCCLCHECK(api->groupStart());
    ncclResult_t res = ncclSuccess;
    for (int peer = 0; peer < size_ && res == ncclSuccess; ++peer) {
      if (peer == rank_) continue;
      if (sendBytes[peer])
        res = api->send(send[peer], sendBytes[peer], ncclUint8, peer, comm_, stream_);
      if (res == ncclSuccess && recvBytes[peer]) {
        res = api->recv(recv[peer], recvBytes[peer], ncclUint8, peer, comm_, stream_);
      }
    }
    ncclResult_t endRes = api->groupEnd();
    GC_NCCLCHECK(res);
    GC_NCCLWAIT(comm_, &polls_, endRes);
    return gradcompSuccess;
  }

  gradcompResult_t sendRecv(const void* send, size_t sendBytes, int to, void* recv,
                            size_t recvBytes, int from) override {
    GC_CHECK(checkOpen());
    const NcclApi* api = ncclApi();
    GC_NCCLCHECK(api->groupStart());
    ncclResult_t res = ncclSuccess;
    if (sendBytes) res = api->send(send, sendBytes, ncclUint8, to, comm_, stream_);
    if (res == ncclSuccess && recvBytes) {
      res = api->recv(recv, recvBytes, ncclUint8, from, comm_, stream_);
    }
    ncclResult_t endRes = api->groupEnd();
    GC_NCCLCHECK(res);
    GC_NCCLWAIT(comm_, &polls_, endRes);
    return gradcompSuccess;
  }

  gradcompResult_t allGather(const void* send, void* recv, size_t bytes) override {
    GC_CHECK(checkOpen());
    GC_NCCLWAIT(comm_, &polls_, ncclApi()->allGather(send, recv, bytes, ncclUint8, comm_, stream_));
    return gradcompSuccess;
  }

  gradcompResult_t allReduceSumFloat(const float* send, float* recv, size_t n) override {
    GC_CHECK(checkOpen());
    GC_NCCLWAIT(comm_, &polls_,
                ncclApi()->allReduce(send, recv, n, ncclFloat32, ncclSum, comm_, stream_));
    return gradcompSuccess;
  }

  gradcompResult_t passThrough(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op) override {
    GC_CHECK(checkOpen());
    GC_NCCLWAIT(comm_, &polls_, ncclApi()->allReduce(send, recv, count, type, op, comm_, stream_));
    return gradcompSuccess;
  }

  gradcompResult_t reduceScatter(const void* send, void* recv, size_t recvCount,
                                 ncclDataType_t type, ncclRedOp_t op) override {
    GC_CHECK(checkOpen());
    if (ncclApi()->reduceScatter == nullptr) {
      return setError(gradcompSystemError, "the loaded NCCL has no ncclReduceScatter");
    }
    GC_NCCLWAIT(comm_, &polls_,
                ncclApi()->reduceScatter(send, recv, recvCount, type, op, comm_, stream_));
    return gradcompSuccess;
  }

 private:
  ncclComm_t comm_;
  NcclStop polls_;
  void* agree_ = nullptr;  // size_ CallInfos, device memory
};

}  // namespace

std::unique_ptr<Transport> makeNcclTransport(ncclComm_t comm, int rank, int size) {
  return std::unique_ptr<Transport>(new NcclTransport(comm, rank, size));
}

}  // namespace gc
