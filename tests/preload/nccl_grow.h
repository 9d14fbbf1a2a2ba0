/* ncclCommGrow and pncclCommGrow as NCCL 2.29.2 declares them, for the
 * stand-in NCCL and the calls made through it when the nccl.h that builds
 * them is older (an identical redeclaration where it has them). */
#pragma once

#include <nccl.h>

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0) && NCCL_VERSION_CODE < NCCL_VERSION(2, 30, 0)
ncclResult_t ncclCommGrow(ncclComm_t comm, int nRanks, const ncclUniqueId* uniqueId, int rank,
                          ncclComm_t* newcomm, ncclConfig_t* config);
ncclResult_t pncclCommGrow(ncclComm_t comm, int nRanks, const ncclUniqueId* uniqueId, int rank,
                           ncclComm_t* newcomm, ncclConfig_t* config);
#endif
