/* Functions of NCCLs newer than the nccl.h that may build the stand-in NCCL
 * and the calls made through it, declared as those NCCLs do (an identical
 * redeclaration where the header has them): ncclCommRevoke (2.28) and
 * ncclCommGrow (2.29.2), each with its pnccl* twin. */
#pragma once

#include <nccl.h>

/* C++ too: tests/preload/check_enum_args.sh builds the stand-in as C++. */
#ifdef __cplusplus
extern "C" {
#endif
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0) && NCCL_VERSION_CODE < NCCL_VERSION(2, 30, 0)
ncclResult_t ncclCommGrow(ncclComm_t comm, int nRanks, const ncclUniqueId* uniqueId, int rank,
                          ncclComm_t* newcomm, ncclConfig_t* config);
ncclResult_t pncclCommGrow(ncclComm_t comm, int nRanks, const ncclUniqueId* uniqueId, int rank,
                           ncclComm_t* newcomm, ncclConfig_t* config);
#endif
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0) && NCCL_VERSION_CODE < NCCL_VERSION(2, 28, 0)
ncclResult_t ncclCommRevoke(ncclComm_t comm, int revokeFlags);
ncclResult_t pncclCommRevoke(ncclComm_t comm, int revokeFlags);
#endif
#ifdef __cplusplus
}
#endif
