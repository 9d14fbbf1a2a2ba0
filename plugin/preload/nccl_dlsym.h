// The real NCCL, reached through its pnccl* symbols at run time.
#pragma once

#include "backends/cuda/nccl_api.h"

// NCCL versions that added the communicator constructors taking a config
// (whose `blocking` field makes a communicator non-blocking).
#define GC_NCCL_HAS_CONFIG (NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0))
#define GC_NCCL_HAS_SPLIT (NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0))
#define GC_NCCL_HAS_SIMULATE (NCCL_VERSION_CODE >= NCCL_VERSION(2, 22, 0))
#define GC_NCCL_HAS_SCALABLE (NCCL_VERSION_CODE >= NCCL_VERSION(2, 23, 0))
#define GC_NCCL_HAS_SHRINK (NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0))
#define GC_NCCL_HAS_PREMULSUM (NCCL_VERSION_CODE >= NCCL_VERSION(2, 11, 0))
#define GC_NCCL_HAS_LAST_ERROR (NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0))
// ncclCommGrow came with NCCL 2.29.2. It is interposed whatever nccl.h built
// gradcomp (declared here where that header may be older, with its signature;
// an identical redeclaration in a 2.29 header is harmless):
// the NCCL a program loads at run time is often newer than the toolkit's
// header (PyTorch's wheels carry their own), and a communicator it grows with
// a non-blocking config must be known as one. Found at run time like the rest.
#define GC_NCCL_HAS_GROW GC_NCCL_HAS_CONFIG
#if GC_NCCL_HAS_GROW && NCCL_VERSION_CODE < NCCL_VERSION(2, 30, 0)
extern "C" ncclResult_t ncclCommGrow(ncclComm_t comm, int nRanks, const ncclUniqueId* uniqueId,
                                     int rank, ncclComm_t* newcomm, ncclConfig_t* config);
#endif
// ncclCommRevoke (NCCL 2.28) likewise: a program whose NCCL has it may
// revoke a communicator gradcomp runs on, whatever header built gradcomp.
#define GC_NCCL_HAS_REVOKE GC_NCCL_HAS_CONFIG
#if GC_NCCL_HAS_REVOKE && NCCL_VERSION_CODE < NCCL_VERSION(2, 28, 0)
extern "C" ncclResult_t ncclCommRevoke(ncclComm_t comm, int revokeFlags);
#endif

namespace gc {

// Functions the interposer forwards that the core does not call. A null
// entry is a function the loaded NCCL does not have.
struct RealNccl {
  ncclResult_t (*commDestroy)(ncclComm_t);
  ncclResult_t (*commAbort)(ncclComm_t);
  ncclResult_t (*commFinalize)(ncclComm_t);
  ncclResult_t (*getVersion)(int*);
#if GC_NCCL_HAS_CONFIG
  ncclResult_t (*commInitRankConfig)(ncclComm_t*, int, ncclUniqueId, int, ncclConfig_t*);
#endif
#if GC_NCCL_HAS_SPLIT
  ncclResult_t (*commSplit)(ncclComm_t, int, int, ncclComm_t*, ncclConfig_t*);
#endif
#if GC_NCCL_HAS_SIMULATE
  ncclResult_t (*groupSimulateEnd)(ncclSimInfo_t*);
#endif
#if GC_NCCL_HAS_SCALABLE
  ncclResult_t (*commInitRankScalable)(ncclComm_t*, int, int, int, ncclUniqueId*, ncclConfig_t*);
#endif
#if GC_NCCL_HAS_SHRINK
  ncclResult_t (*commShrink)(ncclComm_t, int*, int, ncclComm_t*, ncclConfig_t*, int);
#endif
#if GC_NCCL_HAS_GROW
  ncclResult_t (*commGrow)(ncclComm_t, int, const ncclUniqueId*, int, ncclComm_t*, ncclConfig_t*);
#endif
#if GC_NCCL_HAS_REVOKE
  ncclResult_t (*commRevoke)(ncclComm_t, int);
#endif
#if GC_NCCL_HAS_PREMULSUM
  ncclResult_t (*redOpDestroy)(ncclRedOp_t, ncclComm_t);
#endif
#if GC_NCCL_HAS_LAST_ERROR
  const char* (*getLastError)(ncclComm_t);
#endif
};

const RealNccl* realNccl();
// True when every function the core needs was found.
bool ncclResolved();
// The loaded NCCL's version code (ncclGetVersion, read once; the encoding of
// NCCL_VERSION), 0 where it cannot tell.
int loadedNcclVersion();

}  // namespace gc
