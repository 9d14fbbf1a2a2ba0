// A program that calls NCCL as a framework would, run under LD_PRELOAD with
// the stand-in libnccl. It prints, one per line, the calls the real NCCL must
// receive; the test script compares them with what the stand-in recorded.
// No GPU here: the large fp32 Sum cannot be compressed and must pass through.
#include <nccl.h>
#include <stdint.h>
#include <stdio.h>

static void expectAllReduce(const void* s, void* r, size_t n, ncclDataType_t t, ncclRedOp_t op,
                            ncclComm_t c, cudaStream_t st) {
  printf("AllReduce send=%p recv=%p count=%zu type=%d op=%d comm=%p stream=%p\n", s, r, n, (int)t,
         (int)op, (void*)c, (void*)st);
}

#define CALL(s, r, n, t, op, c, st)                                   \
  do {                                                                \
    if (ncclAllReduce(s, r, n, t, op, c, st) != ncclSuccess) {        \
      fprintf(stderr, "ncclAllReduce failed at line %d\n", __LINE__); \
      return 1;                                                       \
    }                                                                 \
    expectAllReduce(s, r, n, t, op, c, st);                           \
  } while (0)

int main() {
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  CALL(a, b, 1000, ncclInt32, ncclSum, comm, stream);       // int32
  CALL(a, a, 1 << 20, ncclFloat32, ncclMax, comm, stream);  // Max
  CALL(a, b, 1, ncclFloat32, ncclSum, comm, stream);        // one element
  CALL(a, b, 1 << 20, ncclFloat64, ncclSum, comm, stream);  // fp64
  // Inside a user group: the group calls reach NCCL around the allreduces.
  if (ncclGroupStart() != ncclSuccess) return 1;
  printf("GroupStart\n");
  CALL(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream);
  CALL(b, b, 1 << 18, ncclFloat16, ncclAvg, comm, (cudaStream_t)0);
  if (ncclGroupEnd() != ncclSuccess) return 1;
  printf("GroupEnd\n");
  // Large fp32 Sum, compressible, but there is no GPU: passed through.
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, comm, stream);
  CALL(b, a, 1 << 22, ncclBfloat16, ncclAvg, comm, stream);
  if (ncclCommDestroy(comm) != ncclSuccess) return 1;
  printf("CommDestroy comm=%p\n", (void*)comm);
  return 0;
}
