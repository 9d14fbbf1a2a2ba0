// Transport: how compressed bytes move between ranks. NcclTransport uses the
// caller's NCCL communicator on the backend's stream; CpuTransport moves host
// memory between the threads of one in-process world. Every collective here
// is deterministic and gives identical bytes on every rank.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <memory>
#include <vector>

#include "gradcomp.h"

namespace gc {

class Transport {
 public:
  virtual ~Transport() = default;
  int rank() const { return rank_; }
  int size() const { return size_; }
  virtual void setStream(cudaStream_t stream) { stream_ = stream; }

  // send[j] (sendBytes[j] bytes) goes to rank j and recv[i] (recvBytes[i])
  // comes from rank i; the entries of this rank are skipped.
  virtual gradcompResult_t allToAll(const void* const* send, const size_t* sendBytes,
                                    void* const* recv, const size_t* recvBytes) = 0;
  // One grouped send to `to` and receive from `from` (a ring step).
  virtual gradcompResult_t sendRecv(const void* send, size_t sendBytes, int to, void* recv,
                                    size_t recvBytes, int from) = 0;
  // recv holds size() blocks of `bytes`, block i from rank i.
  virtual gradcompResult_t allGather(const void* send, void* recv, size_t bytes) = 0;
  // Elementwise fp32 sum, identical on every rank (in place allowed).
  virtual gradcompResult_t allReduceSumFloat(const float* send, float* recv, size_t n) = 0;
  // The uncompressed path: exactly ncclAllReduce with these arguments.
  virtual gradcompResult_t passThrough(const void* send, void* recv, size_t count,
                                       ncclDataType_t type, ncclRedOp_t op) = 0;
  // Exactly ncclReduceScatter: send holds size() blocks of recvCount, this
  // rank gets block rank() of the reduction.
  virtual gradcompResult_t reduceScatter(const void* send, void* recv, size_t recvCount,
                                         ncclDataType_t type, ncclRedOp_t op) = 0;

 protected:
  int rank_ = 0, size_ = 1;
  cudaStream_t stream_ = nullptr;
};

std::unique_ptr<Transport> makeNcclTransport(ncclComm_t comm, int rank, int size);
// nranks transports sharing one in-process world.
std::vector<std::unique_ptr<Transport>> makeCpuWorld(int nranks);

}  // namespace gc
