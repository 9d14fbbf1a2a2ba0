// The NCCL functions gradcomp calls, as a table. libgradcomp.so fills it with
// the linked symbols (nccl_linked.cc); the LD_PRELOAD library fills it with
// the real pnccl* symbols found at run time, so it never calls itself.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

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
};

// The table of the library this code is linked into; never null.
const NcclApi* ncclApi();

}  // namespace gc

#define GC_NCCLCHECK(call)                                                                         \
  do {                                                                                             \
    ncclResult_t gc_nres_ = (call);                                                                \
    if (gc_nres_ != ncclSuccess) {                                                                 \
      return ::gc::setError(gradcompNcclError, "NCCL error %d '%s' at %s:%d (%s)", (int)gc_nres_,  \
                            ::gc::ncclApi()->getErrorString(gc_nres_), __FILE__, __LINE__, #call); \
    }                                                                                              \
  } while (0)
