// The LD_PRELOAD interposer: ncclAllReduce with NCCL's exact signature, plus
// the group calls (to know when a call is inside a user group), the
// communicator constructors that take a config (to know the non-blocking
// ones) and destroy/abort (to free state). Eligible calls (DESIGN.md
// "Interposer rules") go through gradcompAllReduce on a per-communicator
// gradcomp comm created lazily from GRADCOMP_*; every other call reaches the
// real NCCL with identical arguments. Eligible calls inside a user group are
// taken out of it and run after the outer ncclGroupEnd (GRADCOMP_GROUP=defer,
// the default, or fuse), or left in it (pass). It never breaks the host
// program: whatever fails to set up is warned about once and passed through.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include "debug.h"
#include "nccl_dlsym.h"
#include "nvtx.h"
#include "preload.h"

namespace gc {
namespace preload {

namespace {

ncclResult_t toNccl(gradcompResult_t r) {
  switch (r) {
    case gradcompSuccess:
      return ncclSuccess;
    case gradcompCudaError:
      return ncclUnhandledCudaError;
    case gradcompInvalidArgument:
      return ncclInvalidArgument;
    case gradcompInvalidUsage:
      return ncclInvalidUsage;
    default:
      return ncclSystemError;
  }
}

// Group depth and deferred calls are per thread, as NCCL's own group state is.
thread_local int tGroupDepth = 0;
thread_local std::vector<Deferred> tDeferred;

}  // namespace

ncclResult_t forward(CommEntry* e, const void* send, void* recv, size_t count, ncclDataType_t type,
                     ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (ncclApi()->allReduce == nullptr) return ncclSystemError;
  if (e != nullptr) e->callsPassed++;
  return ncclApi()->allReduce(send, recv, count, type, op, comm, stream);
}

ncclResult_t compress(CommEntry& e, const void* send, void* recv, size_t count, ncclDataType_t type,
                      ncclRedOp_t op, cudaStream_t stream, bool keyed, uint64_t key,
                      uint64_t userCalls) {
  GC_NVTX_RANGE("gradcomp allreduce");
  std::lock_guard<std::mutex> lock(e.callMu);
  DeviceGuard guard(e.device);
  gradcompStats_t before, after;
  gradcompGetStats(e.gc, &before);
  const gradcompResult_t r =
      keyed ? gradcompAllReduceKeyed(send, recv, count, type, op, e.gc, stream, key)
            : gradcompAllReduce(send, recv, count, type, op, e.gc, stream);
  if (r == gradcompSuccess) {
    gradcompGetStats(e.gc, &after);
    (after.callsAutoPassed > before.callsAutoPassed ? e.callsAutoPassed : e.callsCompressed) +=
        userCalls;
    return ncclSuccess;
  }
  // These results come from checks made before anything is enqueued (first
  // call of a buffer under capture, a misaligned or host pointer): NCCL can
  // still take the call as it is.
  if (r == gradcompInvalidUsage || r == gradcompInvalidArgument || r == gradcompNotSupported) {
    const std::string why = gradcompGetLastError();
    warnOnce(why, "passing a call to NCCL: %s", why.c_str());
    e.callsPassed += userCalls - 1;
    return forward(&e, send, recv, count, type, op, e.nccl, stream);
  }
  warnOnce(std::string("failed ") + gradcompGetLastError(), "compressed allreduce failed: %s",
           gradcompGetLastError());
  return toNccl(r);
}

}  // namespace preload
}  // namespace gc

using namespace gc::preload;
using gc::ncclApi;
using gc::realNccl;

#define GC_INTERPOSE extern "C" __attribute__((visibility("default")))

GC_INTERPOSE ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count,
                                        ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                                        cudaStream_t stream) {
  if (!gc::ncclResolved() || comm == nullptr) {
    return forward(nullptr, sendbuff, recvbuff, count, datatype, op, comm, stream);
  }
  EntryPtr e = entryFor(comm);
  if (!eligible(count, datatype, op) || e->mode == Mode::PassThrough) {
    return forward(e.get(), sendbuff, recvbuff, count, datatype, op, comm, stream);
  }
  if (tGroupDepth > 0) {
    if (settings().group == GroupMode::Pass) {
      return forward(e.get(), sendbuff, recvbuff, count, datatype, op, comm, stream);
    }
    tDeferred.push_back({sendbuff, recvbuff, count, datatype, op, comm, stream});
    return ncclSuccess;
  }
  if (e->mode == Mode::Undecided) {
    if (capturing(stream)) {
      warnOnce("capture",
               "NCCL comm %p is used in a CUDA graph capture before gradcomp set it up; calls "
               "pass through until an eager call sets it up",
               (void*)comm);
      return forward(e.get(), sendbuff, recvbuff, count, datatype, op, comm, stream);
    }
    decide(*e, stream);
    if (e->mode != Mode::Compress) {
      return forward(e.get(), sendbuff, recvbuff, count, datatype, op, comm, stream);
    }
  }
  return compress(*e, sendbuff, recvbuff, count, datatype, op, stream, false, 0, 1);
}

GC_INTERPOSE ncclResult_t ncclGroupStart() {
  if (ncclApi()->groupStart == nullptr) return ncclSystemError;
  const ncclResult_t r = ncclApi()->groupStart();
  if (r == ncclSuccess) ++tGroupDepth;
  return r;
}

GC_INTERPOSE ncclResult_t ncclGroupEnd() {
  if (ncclApi()->groupEnd == nullptr) return ncclSystemError;
  ncclResult_t r = ncclApi()->groupEnd();
  if (tGroupDepth > 0) --tGroupDepth;
  if (tGroupDepth == 0 && !tDeferred.empty()) {
    std::vector<Deferred> calls;
    calls.swap(tDeferred);
    const ncclResult_t f = runDeferred(calls);
    if (r == ncclSuccess) r = f;
  }
  return r;
}

#if GC_NCCL_HAS_CONFIG
GC_INTERPOSE ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId commId,
                                                 int rank, ncclConfig_t* config) {
  if (realNccl()->commInitRankConfig == nullptr) return ncclSystemError;
  const ncclResult_t r = realNccl()->commInitRankConfig(comm, nranks, commId, rank, config);
  if ((r == ncclSuccess || r == ncclInProgress) && comm != nullptr && *comm != nullptr) {
    noteCreated(*comm, nonBlockingFrom(config, config ? config->blocking : 1, false));
  }
  return r;
}
#endif

#if GC_NCCL_HAS_SCALABLE
GC_INTERPOSE ncclResult_t ncclCommInitRankScalable(ncclComm_t* comm, int nranks, int rank, int nId,
                                                   ncclUniqueId* commIds, ncclConfig_t* config) {
  if (realNccl()->commInitRankScalable == nullptr) return ncclSystemError;
  const ncclResult_t r = realNccl()->commInitRankScalable(comm, nranks, rank, nId, commIds, config);
  if ((r == ncclSuccess || r == ncclInProgress) && comm != nullptr && *comm != nullptr) {
    noteCreated(*comm, nonBlockingFrom(config, config ? config->blocking : 1, false));
  }
  return r;
}
#endif

#if GC_NCCL_HAS_SPLIT
// A child with no config inherits its parent's blocking mode.
GC_INTERPOSE ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm,
                                        ncclConfig_t* config) {
  if (realNccl()->commSplit == nullptr) return ncclSystemError;
  const bool parentNonBlocking = isNonBlocking(comm);
  const ncclResult_t r = realNccl()->commSplit(comm, color, key, newcomm, config);
  if ((r == ncclSuccess || r == ncclInProgress) && newcomm != nullptr && *newcomm != nullptr) {
    noteCreated(*newcomm,
                nonBlockingFrom(config, config ? config->blocking : 1, parentNonBlocking));
  }
  return r;
}
#endif

#if GC_NCCL_HAS_SHRINK
GC_INTERPOSE ncclResult_t ncclCommShrink(ncclComm_t comm, int* excludeRanksList,
                                         int excludeRanksCount, ncclComm_t* newcomm,
                                         ncclConfig_t* config, int shrinkFlags) {
  if (realNccl()->commShrink == nullptr) return ncclSystemError;
  const bool parentNonBlocking = isNonBlocking(comm);
  const ncclResult_t r = realNccl()->commShrink(comm, excludeRanksList, excludeRanksCount, newcomm,
                                                config, shrinkFlags);
  if ((r == ncclSuccess || r == ncclInProgress) && newcomm != nullptr && *newcomm != nullptr) {
    noteCreated(*newcomm,
                nonBlockingFrom(config, config ? config->blocking : 1, parentNonBlocking));
  }
  return r;
}
#endif

GC_INTERPOSE ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  // Ours first: freeing it waits for gradcomp's work on the communicator.
  release(comm);
  if (realNccl()->commDestroy == nullptr) return ncclSystemError;
  return realNccl()->commDestroy(comm);
}

GC_INTERPOSE ncclResult_t ncclCommAbort(ncclComm_t comm) {
  // NCCL's first: aborting stops kernels that may be stuck on a dead peer,
  // which freeing our state would otherwise wait for.
  const ncclResult_t r =
      realNccl()->commAbort != nullptr ? realNccl()->commAbort(comm) : ncclSystemError;
  release(comm);
  return r;
}

GC_INTERPOSE ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  // Finalize flushes NCCL's work; our state (and the summary) goes at
  // destroy or abort.
  if (realNccl()->commFinalize == nullptr) return ncclSystemError;
  return realNccl()->commFinalize(comm);
}
