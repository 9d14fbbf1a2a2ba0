// Transport: how compressed bytes move between ranks. NcclTransport uses the
// caller's NCCL communicator on the backend's stream; CpuTransport moves host
// memory between the threads of one in-process world. Every collective here
// is deterministic and gives identical bytes on every rank.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <stdint.h>

#include <atomic>
#include <memory>
#include <vector>

#include "gradcomp.h"

namespace gc {

// The collective a CallInfo belongs to (a retune's exchanges are a call of their own).
// kCallRefused: a call this rank refused for its own arguments, joined only so
// that its peers fail at once (collective.h, refuseCall).
enum CallKind : int {
  kCallAllReduce = 0,
  kCallReduceScatter = 1,
  kCallRetune = 2,
  kCallRefused = 3
};

// What a kCallRefused record refused (its `state`), named in the peers' sentence.
enum CallRefusal : uint32_t {
  kRefusedDatatype = 1,   // its type holds the datatype passed
  kRefusedOp = 2,         // its op holds the op passed
  kRefusedCount = 3,      // an allreduce's count, held in its count
  kRefusedRecvCount = 4,  // a reduce-scatter's recvcount, held in its count
};

// What every rank must agree on for one gradcompAllReduce or
// gradcompReduceScatter: ranks that differ here would exchange unrelated
// bytes (sparse indices past a shorter buffer, rand-k sums of different
// coordinates) or wait for each other in different NCCL collectives.
struct CallInfo {
  uint64_t step = 0;  // the comm's compressed-call counter (every RNG key reads it)
  // Elements (the reduce-scatter's input: nranks * recvcount; a refused
  // call's, the count its caller passed).
  uint64_t count = 0;
  int type = -1;  // ncclDataType_t
  int op = -1;    // ncclRedOp_t
  int kind = kCallAllReduce;
  // The schedule of the last loaded state and the forgets since
  // (gradcompComm::stateDigest): ranks
  // restored from checkpoints of different runs at the same step would size
  // their messages differently (DGC's warm-up, DQ-SGD's bits). A refused
  // call's: what it refused (CallRefusal).
  uint32_t state = 0;
  bool operator==(const CallInfo& o) const {
    return step == o.step && count == o.count && type == o.type && op == o.op && kind == o.kind &&
           state == o.state;
  }
};
static_assert(sizeof(CallInfo) == 32, "CallInfo travels as bytes (NCCL's verifyCall)");

// Whether a peer's call record agrees with this rank's. Two refused calls
// agree whatever each refused: neither rank goes on to an exchange, and each
// returns its own error, so failing them would only cost the socket
// transport its connections (a mismatch closes them) for calls that left the
// comm as it was.
inline bool sameCall(const CallInfo& mine, const CallInfo& theirs) {
  return mine == theirs || (mine.kind == kCallRefused && theirs.kind == kCallRefused);
}

class Transport {
 public:
  virtual ~Transport() = default;
  int rank() const { return rank_; }
  int size() const { return size_; }
  virtual void setStream(cudaStream_t stream) { stream_ = stream; }
  // The call the next collectives belong to. The CPU transport checks it at
  // every collective, for free; NCCL only in verifyCall.
  void beginCall(const CallInfo& call) { call_ = call; }
  const CallInfo& currentCall() const { return call_; }
  // Whether every collective of this transport already checks the call
  // (the CPU world and the socket transport): then GRADCOMP_CHECK_CALLS has
  // nothing to add.
  virtual bool checksEveryCall() const { return false; }
  // An explicit agreement on the current call (one small allgather and a
  // host sync on NCCL): the comm runs it once after its state was loaded or
  // reset, where ranks can disagree on the step. InvalidUsage on every rank
  // when they differ. Both transports override it; the default serves
  // single-process stand-ins, which have nobody to disagree with.
  virtual gradcompResult_t verifyCall() { return gradcompSuccess; }
  // What verifyCall needs, made at comm set-up (inside the set-up vote) so
  // that a call never allocates it: NCCL's device buffer.
  virtual gradcompResult_t reserve() { return gradcompSuccess; }
  // gradcompCommAbort: fails every later collective at once and wakes one in
  // progress on another thread, never waiting for a peer (the CPU transports
  // also release their peers: the in-process world fails every rank's wait,
  // the socket transport shuts its connections down). Any thread, any number
  // of times.
  virtual void abort() { aborted_ = true; }
  // NCCL: runs its collectives on `comm` from now on, a private split of
  // the same ranks in the same order (setupNcclHierarchy). Set-up only.
  virtual void moveTo(ncclComm_t comm) { (void)comm; }

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

  // allGatherDirect's argument arrays (algorithms/common.cc), size() long:
  // kept here so that a steady-state call does not allocate them. A
  // transport runs one call at a time.
  struct GatherArgs {
    std::vector<const void*> send;
    std::vector<size_t> sendBytes, recvBytes, sizes;
    std::vector<void*> blocks;
  };
  GatherArgs& gatherArgs() { return gatherArgs_; }

 protected:
  int rank_ = 0, size_ = 1;
  cudaStream_t stream_ = nullptr;
  CallInfo call_;
  std::atomic<bool> aborted_{false};
  GatherArgs gatherArgs_;
  // InvalidUsage once abort() was called.
  gradcompResult_t checkOpen() const;
  // The rank this transport's sentences name: rank_, unless it runs on a
  // subset of the comm's ranks that knows their global ranks (a hierarchy's
  // node and inter-node socket transports).
  virtual int namedRank() const { return rank_; }
};

// The sentence of a disagreement between this rank's call and rank `peer`'s.
// `nranks`: the world's, by which a reduce-scatter's record (its input count)
// is named in the recvcount its caller passed.
gradcompResult_t callMismatch(int rank, const CallInfo& mine, int peer, const CallInfo& theirs,
                              int nranks);

std::unique_ptr<Transport> makeNcclTransport(ncclComm_t comm, int rank, int size);

// The TCP connections of one process (or thread) to every other rank of a
// CPU-backend world (backends/cpu/socket.cc).
struct SocketMesh;
// Rank `rank` of nranks meets the others through rank 0, which listens at
// root ("host:port"); each waits at most timeoutSec, here and at every
// collective.
gradcompResult_t makeSocketMesh(int nranks, int rank, const char* root, double timeoutSec,
                                std::shared_ptr<SocketMesh>* out);
// A transport over members (global ranks, in member order) of the mesh, this
// rank being members[index]; tag tells the hierarchy's sub-transports apart
// on the connections they share.
std::unique_ptr<Transport> makeSocketTransport(std::shared_ptr<SocketMesh> mesh,
                                               std::vector<int> members, int index, uint32_t tag);
// nranks transports sharing one in-process world; a rank waits at most
// timeoutSec at a collective for the others. A sub-world of a hierarchy
// names a transport of its whole world (abortedWith): an abort of that world
// aborts this one too; wholeRanks[r], its rank r's rank in the whole world, is
// the rank a destroy of r names to its peers.
std::vector<std::unique_ptr<Transport>> makeCpuWorld(int nranks, double timeoutSec,
                                                     Transport* abortedWith = nullptr,
                                                     std::vector<int> wholeRanks = {});

}  // namespace gc
