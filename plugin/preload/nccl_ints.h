/* NCCL's allreduce or reduce-scatter called with its datatype and op as the
 * ints a caller passed (interpose.cc passedAsInts), and its ncclRedOpDestroy
 * with the op so, for C and C++. */
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* NCCL's ncclAllReduce and ncclReduceScatter, one type. */
typedef ncclResult_t (*gcNcclReduction)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t,
                                        ncclComm_t, cudaStream_t);

/* fn(send, recv, count, datatype, op, comm, stream), fn called through its
 * own type with the datatype's and the op's bits as given. */
ncclResult_t gcNcclReductionWithInts(gcNcclReduction fn, const void* send, void* recv, size_t count,
                                     int datatype, int op, ncclComm_t comm, cudaStream_t stream);

/* NCCL's ncclRedOpDestroy. */
typedef ncclResult_t (*gcNcclRedOpDestroy)(ncclRedOp_t, ncclComm_t);

/* fn(op, comm), the op's bits as given. */
ncclResult_t gcNcclRedOpDestroyWithInt(gcNcclRedOpDestroy fn, int op, ncclComm_t comm);

#ifdef __cplusplus
}
#endif
