/* A datatype or op that C++'s enums cannot hold (-1, 99 or INT_MIN as the
 * datatype, -1 or INT_MIN as the op, of a reduction or of ncclRedOpDestroy)
 * passed on to NCCL as the caller gave it.
 * C++ can neither make such a value of the enum (the conversion is
 * undefined) nor call NCCL through a pointer whose type takes ints instead
 * (a call through another function type is undefined), so the call is made
 * in C: there an enum type is an integer type that may hold any value of its
 * compatible integer type (unsigned int for NCCL's two, with GCC and clang),
 * the conversion keeps an int's bits, and NCCL gets them as the C ABI passes
 * any enum, in its int's register. */
#include "nccl_ints.h"

ncclResult_t gcNcclReductionWithInts(gcNcclReduction fn, const void* send, void* recv, size_t count,
                                     int datatype, int op, ncclComm_t comm, cudaStream_t stream) {
  return fn(send, recv, count, (ncclDataType_t)datatype, (ncclRedOp_t)op, comm, stream);
}

ncclResult_t gcNcclRedOpDestroyWithInt(gcNcclRedOpDestroy fn, int op, ncclComm_t comm) {
  return fn((ncclRedOp_t)op, comm);
}
