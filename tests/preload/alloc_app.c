/* Heap allocations of the interposer's steady-state calls, under
 * LD_PRELOAD=libgradcomp_preload.so against the stand-in NCCL: after a few
 * warm-up rounds (the communicator's entry made, its set-up decided), a round
 * of ncclAllReduce and ncclReduceScatter calls, alone and in a group
 * (GRADCOMP_GROUP as set), allocates nothing. Counted, not timed: this
 * program replaces malloc, calloc and realloc (glibc's __libc_* underneath)
 * and counts while the rounds run. Pointers and the communicator are made up,
 * as in calls.c: no GPU is used. Exit 1 when a round allocated. */
#include <nccl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

extern void* __libc_malloc(size_t);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);
extern void __libc_free(void*);

static int counting = 0;
static long allocs = 0;

void* malloc(size_t n) {
  allocs += counting;
  return __libc_malloc(n);
}
void* calloc(size_t a, size_t b) {
  allocs += counting;
  return __libc_calloc(a, b);
}
void* realloc(void* p, size_t n) {
  allocs += counting;
  return __libc_realloc(p, n);
}
void free(void* p) {
  __libc_free(p);
}

#define CHECK(call)                                              \
  do {                                                           \
    ncclResult_t r_ = (call);                                    \
    if (r_ != ncclSuccess) {                                     \
      fprintf(stderr, "FAIL: %s returned %d\n", #call, (int)r_); \
      return 1;                                                  \
    }                                                            \
  } while (0)

/* One round: an eligible allreduce and reduce-scatter and a small allreduce
 * (under GRADCOMP_MIN_ELEMENTS), alone and then together in a group. */
static int runRound(void) {
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  void* a = (void*)(uintptr_t)0x7000000;
  void* b = (void*)(uintptr_t)0x9000000;
  cudaStream_t st = (cudaStream_t)(uintptr_t)0x10;
  const size_t big = 1 << 20, small = 16;
  CHECK(ncclAllReduce(a, b, big, ncclFloat32, ncclSum, comm, st));
  CHECK(ncclReduceScatter(a, b, big, ncclFloat32, ncclSum, comm, st));
  CHECK(ncclAllReduce(a, b, small, ncclFloat32, ncclSum, comm, st));
  CHECK(ncclGroupStart());
  CHECK(ncclAllReduce(a, b, big, ncclFloat32, ncclSum, comm, st));
  CHECK(ncclAllReduce(b, a, small, ncclFloat32, ncclSum, comm, st));
  CHECK(ncclReduceScatter(a, b, big, ncclFloat32, ncclSum, comm, st));
  CHECK(ncclGroupEnd());
  return 0;
}

int main(void) {
  const int warm = 3, rounds = 50;
  for (int i = 0; i < warm; ++i) {
    if (runRound()) return 1;
  }
  counting = 1;
  for (int i = 0; i < rounds; ++i) {
    if (runRound()) return 1;
  }
  counting = 0;
  printf("steady-state allocations: %ld in %d rounds\n", allocs, rounds);
  if (allocs != 0) {
    printf("FAIL: the interposer's steady-state calls allocated\n");
    return 1;
  }
  printf("PASS: no allocation in the steady-state calls\n");
  return 0;
}
