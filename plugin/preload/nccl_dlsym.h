#pragma once

#include "nccl_api.h"

namespace gc {

// Functions the interposer forwards that the core does not call.
struct RealNccl {
  ncclResult_t (*commDestroy)(ncclComm_t);
  ncclResult_t (*commAbort)(ncclComm_t);
  ncclResult_t (*commFinalize)(ncclComm_t);
  ncclResult_t (*commInitRankConfig)(ncclComm_t*, int, ncclUniqueId, int, ncclConfig_t*);
};

const RealNccl* realNccl();
// True when every function the core needs was found.
bool ncclResolved();

}  // namespace gc
