/* NCCL datatypes and ops as a C caller may pass them, for the C tests that
 * pass them to gradcomp (tests/capi/enum_args.c) and through the interposer
 * (tests/preload/calls.c). C, not C++: C++ cannot even make the values its
 * enums cannot hold without a cast that is itself undefined. */
#ifndef GRADCOMP_TESTS_COMMON_NCCL_BAD_ENUMS_H_
#define GRADCOMP_TESTS_COMMON_NCCL_BAD_ENUMS_H_

#include <limits.h>
#include <nccl.h>
#include <string.h>

/* An int as NCCL's enum, as a C caller passes it: its bytes. */
static inline ncclDataType_t asType(int v) {
  ncclDataType_t e;
  memcpy(&e, &v, sizeof e);
  return e;
}
static inline ncclRedOp_t asOp(int v) {
  ncclRedOp_t e;
  memcpy(&e, &v, sizeof e);
  return e;
}

/* The datatypes gradcomp does not compress: -1, 99 and INT_MIN, which C++'s
 * ncclDataType_t cannot hold (it holds only 0..15), then NCCL's int8 and
 * uint64, 10 and 11 (ncclFloat8e4m3 and ncclFloat8e5m2, where nccl.h has
 * them) and ncclNumTypes (a newer NCCL's next type). */
static const int kBadNcclTypes[] = {-1, 99, INT_MIN, ncclInt8, ncclUint64, 10, 11, ncclNumTypes};
#define NUM_BAD_NCCL_TYPES (sizeof kBadNcclTypes / sizeof kBadNcclTypes[0])

#endif /* GRADCOMP_TESTS_COMMON_NCCL_BAD_ENUMS_H_ */
