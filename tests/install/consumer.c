/* A program built against an installed gradcomp (tests/install_check.sh): the
 * public headers under -std=c99/c11/c++11..20 -Wall -Wextra -pedantic -Werror,
 * and the C API from libgradcomp.so: error strings, the version, a config and
 * a 2-rank QSGD allreduce on the CPU world. Also compiled as C++ (consumer.cc). */
#include <gradcomp.h>
#include <gradcomp/elias.h>
#include <gradcomp/reference.h>
#include <gradcomp/sparse.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define CONSUMER_RANKS 2
#define CONSUMER_COUNT 4096

typedef struct {
  gradcompComm_t comm;
  float data[CONSUMER_COUNT];
  gradcompResult_t result;
} consumer_rank_t;

static void* consumer_run(void* arg) {
  consumer_rank_t* r = (consumer_rank_t*)arg;
  r->result = gradcompAllReduce(r->data, r->data, CONSUMER_COUNT, ncclFloat32, ncclSum, r->comm,
                                (cudaStream_t)0);
  return NULL;
}

static consumer_rank_t consumer_ranks[CONSUMER_RANKS];

int main(void) {
  gradcompConfig_t config;
  gradcompComm_t comms[CONSUMER_RANKS];
  pthread_t threads[CONSUMER_RANKS];
  gradcompStats_t stats;
  int r;
  size_t i;
  if (strcmp(gradcompGetErrorString(gradcompInvalidArgument), "") == 0) {
    printf("FAIL: empty error string\n");
    return 1;
  }
  if (gradcompGetVersion() != GRADCOMP_VERSION_CODE) {
    printf("FAIL: library version %d, header %d\n", gradcompGetVersion(), GRADCOMP_VERSION_CODE);
    return 1;
  }
  if (gradcompConfigInit(&config) != gradcompSuccess || config.structSize != sizeof(config)) {
    printf("FAIL: gradcompConfigInit: %s\n", gradcompGetLastError());
    return 1;
  }
  config.method = gradcompMethodQsgd;
  config.bits = 8;
  config.minElements = 0;
  if (gradcompCommCreateCpu(CONSUMER_RANKS, &config, comms) != gradcompSuccess) {
    printf("FAIL: gradcompCommCreateCpu: %s\n", gradcompGetLastError());
    return 1;
  }
  /* Rank r's buffer is all r + 1: each bucket's max, so QSGD carries it exactly. */
  for (r = 0; r < CONSUMER_RANKS; ++r) {
    consumer_ranks[r].comm = comms[r];
    for (i = 0; i < CONSUMER_COUNT; ++i) consumer_ranks[r].data[i] = (float)(r + 1);
    if (pthread_create(&threads[r], NULL, consumer_run, &consumer_ranks[r]) != 0) return 1;
  }
  for (r = 0; r < CONSUMER_RANKS; ++r) pthread_join(threads[r], NULL);
  for (r = 0; r < CONSUMER_RANKS; ++r) {
    if (consumer_ranks[r].result != gradcompSuccess) {
      printf("FAIL: rank %d gradcompAllReduce: %s\n", r, gradcompGetLastError());
      return 1;
    }
    for (i = 0; i < CONSUMER_COUNT; ++i) {
      if (consumer_ranks[r].data[i] != 3.0f) {
        printf("FAIL: rank %d element %zu is %g, not 3\n", r, i, (double)consumer_ranks[r].data[i]);
        return 1;
      }
    }
  }
  if (gradcompGetStats(comms[0], &stats) != gradcompSuccess || stats.callsCompressed != 1) {
    printf("FAIL: gradcompGetStats: %s\n", gradcompGetLastError());
    return 1;
  }
  for (r = 0; r < CONSUMER_RANKS; ++r) gradcompCommDestroy(comms[r]);
  printf("consumer: gradcomp %d.%d.%d, 2-rank QSGD allreduce on the CPU world ok\n",
         GRADCOMP_VERSION_MAJOR, GRADCOMP_VERSION_MINOR, GRADCOMP_VERSION_PATCH);
  return 0;
}
