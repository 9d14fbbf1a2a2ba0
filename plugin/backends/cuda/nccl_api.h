// The NCCL functions gradcomp calls, as a table. libgradcomp.so fills it with
// the linked symbols (nccl_linked.cc); the LD_PRELOAD library fills it with
// the real pnccl* symbols found at run time, so it never calls itself.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <mutex>

#include "checks.h"

namespace gc {

struct NcclApi {
  ncclResult_t (*allReduce)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t,
                            cudaStream_t);
  ncclResult_t (*allGather)(const void*, void*, size_t, ncclDataType_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*send)(const void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*recv)(void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*groupStart)();
  ncclResult_t (*groupEnd)();
  ncclResult_t (*commCount)(const ncclComm_t, int*);
  ncclResult_t (*commUserRank)(const ncclComm_t, int*);
  ncclResult_t (*commCuDevice)(const ncclComm_t, int*);
  const char* (*getErrorString)(ncclResult_t);
  // Hierarchical exchange: the node and local-rank sub-communicators.
  ncclResult_t (*reduceScatter)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t,
                                cudaStream_t);
  ncclResult_t (*commSplit)(ncclComm_t, int, int, ncclComm_t*, ncclConfig_t*);
  ncclResult_t (*commDestroy)(ncclComm_t);
  // gradcompCommAbort: the sub-communicators are aborted, never destroyed.
  ncclResult_t (*commAbort)(ncclComm_t);
  // A communicator's asynchronous state (ncclAwait): polled for non-blocking
  // communicators (NCCL 2.14 and later); null only before NCCL 2.4.
  ncclResult_t (*commGetAsyncError)(ncclComm_t, ncclResult_t*);
};

// The table of the library this code is linked into; never null.
const NcclApi* ncclApi();

// Set by the thread that aborts a communicator another thread may be
// polling (ncclFinish): NCCL frees an aborted communicator, so once stop()
// returns no poll touches it again.
class NcclStop {
 public:
  void stop() {
    stopped_.store(true);
    std::lock_guard<std::mutex> wait(mu_);  // a poll in progress ends first
  }
  bool stopped() const { return stopped_.load(); }

 private:
  friend ncclResult_t ncclAwait(ncclComm_t, ncclResult_t, NcclStop*);
  std::atomic<bool> stopped_{false};
  std::mutex mu_;
};

// What an NCCL call on `comm` that answered `res` gives once NCCL is done
// with it. A non-blocking communicator (ncclConfig_t.blocking = 0, or
// NCCL_COMM_BLOCKING=0) may answer ncclInProgress while a thread of NCCL's
// still enqueues the work (or makes a split's child), and refuses any other
// call until its state, polled with ncclCommGetAsyncError, is no longer
// ncclInProgress: this waits for that (the enqueue, never the GPU work), so
// that the next call on it is allowed, and returns the state it ended in. A
// non-null `stop` stopped by another thread ends the wait: ncclInvalidUsage.
// Any other `res` comes back as it is.
ncclResult_t ncclAwait(ncclComm_t comm, ncclResult_t res, NcclStop* stop);
// ncclAwait as gradcomp's result: anything but ncclSuccess is
// gradcompNcclError with NCCL's sentence and `call` (at file:line), or, for
// a stopped wait, gradcompInvalidUsage.
gradcompResult_t ncclFinish(ncclComm_t comm, ncclResult_t res, NcclStop* stop, const char* call,
                            const char* file, int line);

}  // namespace gc

#define GC_NCCLCHECK(call)                                                                         \
  do {                                                                                             \
    ncclResult_t gc_nres_ = (call);                                                                \
    if (gc_nres_ != ncclSuccess) {                                                                 \
      return ::gc::setError(gradcompNcclError, "NCCL error %d '%s' at %s:%d (%s)", (int)gc_nres_,  \
                            ::gc::ncclApi()->getErrorString(gc_nres_), __FILE__, __LINE__, #call); \
    }                                                                                              \
  } while (0)

// An NCCL call on `comm` that may be non-blocking: returns unless it and
// its enqueue succeeded (ncclFinish).
#define GC_NCCLWAIT(comm, stop, call) \
  GC_CHECK(::gc::ncclFinish((comm), (call), (stop), #call, __FILE__, __LINE__))
