/* The NCCL calls a framework makes, for the LD_PRELOAD tests. Each call goes
 * to ncclAllReduce & co. (the interposer under LD_PRELOAD) and, when it
 * returns, the line the real NCCL must have received is printed; the test
 * compares these lines with what the stand-in libnccl recorded. Pointers,
 * communicators and streams are made up: no GPU is used or allowed.
 *
 * Built into preload_app (NCCL linked by the program) and into a stand-in
 * framework library that a program loads with RTLD_LOCAL, as Python loads
 * PyTorch. */
#include <limits.h>
#include <nccl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/nccl_bad_enums.h"
#include "../common/reap_child.h"
#include "nccl_newer.h"

#define EXPECT(...)      \
  do {                   \
    printf(__VA_ARGS__); \
    putchar('\n');       \
  } while (0)

#define LINE_FMT "AllReduce send=%p recv=%p count=%zu type=%d op=%d comm=%p stream=%p"
#define RS_LINE_FMT "ReduceScatter send=%p recv=%p count=%zu type=%d op=%d comm=%p stream=%p"

/* Calls printed after the user's ncclGroupEnd. */
static char deferred[16][256];
static int numDeferred = 0;

static void flushDeferred(void) {
  for (int i = 0; i < numDeferred; ++i) EXPECT("%s", deferred[i]);
  numDeferred = 0;
}

/* The test says whether eligible calls in a group should be deferred. */
static int groupCallsDeferred(void) {
  const char* g = getenv("GC_TEST_GROUP_CALLS_DEFERRED");
  return g != NULL && strcmp(g, "1") == 0;
}

/* As a program polls a non-blocking communicator's call (ncclInProgress)
 * before its next one. */
static ncclResult_t settle(ncclComm_t c, ncclResult_t res) {
  while (res == ncclInProgress) {
    if (ncclCommGetAsyncError(c, &res) != ncclSuccess) return ncclInternalError;
  }
  return res;
}

static int allReduce(int deferIt, const void* s, void* r, size_t n, ncclDataType_t t,
                     ncclRedOp_t op, ncclComm_t c, cudaStream_t st) {
  ncclResult_t res = settle(c, ncclAllReduce(s, r, n, t, op, c, st));
  if (res != ncclSuccess) {
    fprintf(stderr, "ncclAllReduce(count=%zu type=%d op=%d) returned %d\n", n, (int)t, (int)op,
            (int)res);
    return 1;
  }
  if (deferIt) {
    snprintf(deferred[numDeferred++], sizeof(deferred[0]), LINE_FMT, s, r, n, (int)t, (int)op,
             (void*)c, (void*)st);
  } else {
    EXPECT(LINE_FMT, s, r, n, (int)t, (int)op, (void*)c, (void*)st);
  }
  return 0;
}

static int reduceScatter(int deferIt, const void* s, void* r, size_t n, ncclDataType_t t,
                         ncclRedOp_t op, ncclComm_t c, cudaStream_t st) {
  ncclResult_t res = settle(c, ncclReduceScatter(s, r, n, t, op, c, st));
  if (res != ncclSuccess) {
    fprintf(stderr, "ncclReduceScatter(recvcount=%zu type=%d op=%d) returned %d\n", n, (int)t,
            (int)op, (int)res);
    return 1;
  }
  if (deferIt) {
    snprintf(deferred[numDeferred++], sizeof(deferred[0]), RS_LINE_FMT, s, r, n, (int)t, (int)op,
             (void*)c, (void*)st);
  } else {
    EXPECT(RS_LINE_FMT, s, r, n, (int)t, (int)op, (void*)c, (void*)st);
  }
  return 0;
}

typedef enum { COLL_AR, COLL_RS } Collective;

#define CALL(...) \
  if (allReduce(0, __VA_ARGS__)) return 1
#define RS(...) \
  if (reduceScatter(0, __VA_ARGS__)) return 1
#define RS_IN_GROUP(...) \
  if (reduceScatter(deferGroupCalls, __VA_ARGS__)) return 1
/* An eligible call inside a user group: gradcomp takes it out of the group
 * and runs it after the group's end (GRADCOMP_GROUP=defer or fuse; and in
 * every mode while its communicator's ranks have not agreed on their
 * settings), which the test announces with GC_TEST_GROUP_CALLS_DEFERRED=1. */
#define CALL_IN_GROUP(...) \
  if (allReduce(deferGroupCalls, __VA_ARGS__)) return 1
#define CHECK(call)                                             \
  if ((call) != ncclSuccess) {                                  \
    fprintf(stderr, "%s failed at line %d\n", #call, __LINE__); \
    return 1;                                                   \
  }
/* Calls that print, once they return, the line NCCL must have received. */
#define GROUP_START()        \
  do {                       \
    CHECK(ncclGroupStart()); \
    EXPECT("GroupStart");    \
  } while (0)
#define GROUP_END()        \
  do {                     \
    CHECK(ncclGroupEnd()); \
    EXPECT("GroupEnd");    \
  } while (0)
#define DESTROY(comm)                             \
  do {                                            \
    CHECK(ncclCommDestroy(comm));                 \
    EXPECT("CommDestroy comm=%p", (void*)(comm)); \
  } while (0)

/* int32, Max, fp64, a user group, then one element and large fp32/bf16 calls
 * that gradcomp would compress if it could set up (it cannot: no GPU). The
 * group holds the communicator's first float Sum/Avg calls, so they are
 * deferred until its ranks' agreement (in every GRADCOMP_GROUP mode); the
 * one-element fp32 sum, made first, would have run that agreement before the
 * group (which fails here, leaving nothing to defer). */
static int basic(void) {
  const int deferGroupCalls = groupCallsDeferred();
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  CALL(a, b, 1000, ncclInt32, ncclSum, comm, stream);
  CALL(a, a, 1 << 20, ncclFloat32, ncclMax, comm, stream);
  CALL(a, b, 1 << 20, ncclFloat64, ncclSum, comm, stream);
  CALL(a, b, 1 << 20, ncclFloat32, ncclProd, comm, stream);
  GROUP_START();
  CALL(a, a, 1 << 20, ncclInt32, ncclSum, comm, stream);
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream);
  GROUP_START(); /* nested: only the outer end closes the group */
  CALL_IN_GROUP(b, b, 1 << 18, ncclFloat16, ncclAvg, comm, (cudaStream_t)0);
  GROUP_END();
  /* Not eligible, but made after the communicator's deferred calls: NCCL
   * must get it after them (b was just reduced in place), so it is deferred
   * too. */
  CALL_IN_GROUP(b, b, 7, ncclFloat32, ncclSum, comm, stream);
  /* Reduce-scatter eligibility counts the input, nranks (4) * recvcount:
   * 4 * 5000 >= 16384 is eligible, 4 * 3000 is not (deferred behind it all
   * the same, as it writes the same b). */
  RS_IN_GROUP(a, b, 5000, ncclFloat32, ncclSum, comm, stream);
  RS_IN_GROUP(a, b, 3000, ncclFloat32, ncclSum, comm, stream);
  RS_IN_GROUP(a, b, 1 << 20, ncclInt32, ncclSum, comm, stream);
  GROUP_END();
  flushDeferred();
  CALL(a, b, 1, ncclFloat32, ncclSum, comm, stream);
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, comm, stream);
  CALL(b, a, 1 << 22, ncclBfloat16, ncclAvg, comm, stream);
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, comm, stream);
  /* Reduce-scatter: not compressible (type, op), in place at rank 0's block,
   * out of place, Avg in bf16, then bad calls that must reach NCCL unchanged
   * (recvcount * nranks overflowing size_t, a null communicator). */
  RS(a, b, 1 << 20, ncclFloat64, ncclSum, comm, stream);
  RS(a, b, 1 << 20, ncclFloat32, ncclMax, comm, stream);
  RS(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream);
  RS(a, b, 1 << 20, ncclBfloat16, ncclAvg, comm, stream);
  RS(a, b, 1, ncclFloat16, ncclSum, comm, stream);
  RS(a, b, SIZE_MAX / 2, ncclFloat32, ncclSum, comm, stream);
  RS(a, b, 1 << 20, ncclFloat32, ncclSum, (ncclComm_t)0, stream);
  DESTROY(comm);
  return 0;
}

/* One thread driving two GPUs (the stand-in puts 0x3000 and 0x3200 on
 * device 0, 0x3100 on device 1 with FAKE_NCCL_DEVICES=2): a group with
 * eligible calls of communicators on both devices keeps them, uncompressed
 * and in order, whatever GRADCOMP_GROUP says, and those communicators never
 * set up, not even for a later call alone. A group of one device's calls is
 * deferred as usual. */
static int multiDevice(void) {
  const int deferGroupCalls = groupCallsDeferred();
  const ncclComm_t dev0 = (ncclComm_t)(uintptr_t)0x3000, dev1 = (ncclComm_t)(uintptr_t)0x3100,
                   other = (ncclComm_t)(uintptr_t)0x3200;
  cudaStream_t s0 = (cudaStream_t)(uintptr_t)0x2000, s1 = (cudaStream_t)(uintptr_t)0x2100;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  for (int round = 0; round < 2; ++round) {
    GROUP_START();
    CALL(a, a, 1 << 20, ncclFloat32, ncclSum, dev0, s0);
    CALL(b, b, 1 << 20, ncclFloat32, ncclSum, dev1, s1);
    CALL(a, b, 1 << 19, ncclBfloat16, ncclAvg, dev0, s0);
    GROUP_END();
  }
  CALL(a, a, 1 << 20, ncclFloat32, ncclSum, dev1, s1);
  GROUP_START();
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, ncclSum, other, s0);
  CALL_IN_GROUP(b, b, 1 << 20, ncclFloat32, ncclSum, other, s0);
  GROUP_END();
  flushDeferred();
  const ncclComm_t comms[3] = {dev0, dev1, other};
  for (int i = 0; i < 3; ++i) {
    DESTROY(comms[i]);
  }
  return 0;
}

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
/* Whether ncclGetLastError(c) answers a sentence of the preload's own. */
static int preloadsLastError(ncclComm_t c) {
  const char* last = ncclGetLastError(c);
  return last != NULL && strncmp(last, "gradcomp: ", 10) == 0;
}

/* A group the preload fails itself (see abortDeferred): the call of `comm`
 * it deferred to the group's end is refused there, as `comm` was aborted in
 * the group since; the end answers ncclInvalidUsage, and ncclGetLastError the
 * preload's sentence. */
static int preloadFailsAGroup(ncclComm_t comm) {
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  GROUP_START();
  CHECK(ncclAllReduce(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream));
  CHECK(ncclCommAbort(comm));
  EXPECT("CommAbort comm=%p", (void*)comm);
  const ncclResult_t r = ncclGroupEnd();
  EXPECT("GroupEnd");
  if (r != ncclInvalidUsage || !preloadsLastError(comm)) {
    fprintf(stderr, "the aborted group's end returned %d, last error \"%s\"\n", (int)r,
            ncclGetLastError(comm));
    return 1;
  }
  return 0;
}
#endif

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
/* A communicator of 4 ranks made with a config saying `blocking`, and the
 * line NCCL must have received for it. */
static int initWithConfig(int blocking, ncclComm_t* comm) {
  ncclUniqueId id;
  memset(&id, 0, sizeof(id));
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = blocking;
  /* A non-blocking one is made by NCCL's thread: polled until it is. */
  CHECK(settle(*comm, ncclCommInitRankConfig(comm, 4, id, 0, &cfg)));
  EXPECT("CommInitRankConfig nranks=4 rank=0 blocking=%d comm=%p", blocking, (void*)*comm);
  return 0;
}

/* A non-blocking parent's child as NCCL makes it: `made` (a split's or a
 * shrink's result) is ncclSuccess with no child yet (NCCL lets its group's
 * ncclInProgress through); the child is there once the parent's
 * asynchronous state is no longer ncclInProgress. */
static int awaitChild(const char* what, ncclResult_t made, ncclComm_t parent,
                      const ncclComm_t* child) {
  if (made != ncclSuccess || *child != NULL) {
    fprintf(stderr, "%s of a non-blocking comm: %d, child %p (ncclSuccess and none yet)\n", what,
            (int)made, (void*)*child);
    return 1;
  }
  for (ncclResult_t r = ncclInProgress; r == ncclInProgress;) {
    CHECK(ncclCommGetAsyncError(parent, &r));
  }
  return 0;
}

/* Non-blocking communicators (and a split or grown child inheriting that)
 * are set up as a blocking one made with a config is (and fail without a
 * GPU); their calls answer ncclInProgress and are polled (settle). */
static int nonblocking(void) {
  const int deferGroupCalls = groupCallsDeferred();
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  ncclComm_t nb = NULL, child = NULL, grown = NULL, blocking = NULL;
  if (initWithConfig(0, &nb)) return 1;
  /* A group first: NCCL enqueues its ineligible call after the end
   * (ncclInProgress); the eligible ones, taken out, each wait for the
   * communicator's previous enqueue, or NCCL refuses them. */
  GROUP_START();
  CALL(a, a, 1000, ncclInt32, ncclSum, nb, stream);
  CALL_IN_GROUP(a, a, 1 << 22, ncclFloat32, ncclSum, nb, stream);
  CALL_IN_GROUP(b, b, 1 << 22, ncclFloat32, ncclSum, nb, stream);
  CHECK(settle(nb, ncclGroupEnd()));
  EXPECT("GroupEnd");
  flushDeferred();
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, nb, stream);
  if (awaitChild("split", ncclCommSplit(nb, 1, 0, &child, NULL), nb, &child)) return 1;
  EXPECT("CommSplit parent=%p color=1 key=0 blocking=-1 comm=%p", (void*)nb, (void*)child);
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, child, stream);
  /* Grown from the non-blocking parent without a config: non-blocking too. */
  CHECK(ncclCommGrow(nb, 6, NULL, -1, &grown, NULL));
  EXPECT("CommGrow parent=%p nranks=6 rank=-1 blocking=-1 comm=%p", (void*)nb, (void*)grown);
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, grown, stream);
  if (initWithConfig(1, &blocking)) return 1;
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, blocking, stream);
  CHECK(ncclCommAbort(child));
  EXPECT("CommAbort comm=%p", (void*)child);
  CHECK(ncclCommFinalize(nb));
  EXPECT("CommFinalize comm=%p", (void*)nb);
  DESTROY(nb);
  DESTROY(blocking);
  DESTROY(grown);
  return 0;
}

/* NCCL_COMM_BLOCKING changed by the program between two communicators, both
 * made with a config saying blocking = 1: set to 0 where the process got it
 * unset or otherwise, unset where it got 0. NCCL reads the variable at its
 * first communicator and keeps that value (unless NCCL_NO_CACHE names it),
 * so the second is made as the first; the test counts the communicators the
 * preload took for non-blocking ones. An eligible call on each. */
static int envChanged(void) {
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  ncclComm_t first = NULL, second = NULL;
  const char* env = getenv("NCCL_COMM_BLOCKING");
  const int wasZero = env != NULL && strcmp(env, "0") == 0;
  if (initWithConfig(1, &first)) return 1;
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, first, stream);
  if (wasZero) {
    unsetenv("NCCL_COMM_BLOCKING");
  } else {
    setenv("NCCL_COMM_BLOCKING", "0", 1);
  }
  if (initWithConfig(1, &second)) return 1;
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, second, stream);
  DESTROY(second);
  DESTROY(first);
  return 0;
}

/* A non-blocking communicator split with NCCL_SPLIT_NOCOLOR (PyTorch's split
 * for the ranks outside a new group): NCCL makes no child and writes only
 * NULL to the slot, which is the program's to free or reuse once the split
 * is done.
 * Here the same variable holds a blocking communicator next: the preload
 * must not take that one for the split's non-blocking child. */
static int nocolor(void) {
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  ncclComm_t nb = NULL, slot = NULL;
  if (initWithConfig(0, &nb)) return 1;
  CHECK(ncclCommSplit(nb, NCCL_SPLIT_NOCOLOR, 0, &slot, NULL));
  EXPECT("CommSplit parent=%p color=-1 key=0 blocking=-1 comm=(nil)", (void*)nb);
  CHECK(settle(nb, ncclInProgress));
  if (slot != NULL) {
    fprintf(stderr, "a no-color split wrote a child %p\n", (void*)slot);
    return 1;
  }
  slot = (ncclComm_t)(uintptr_t)0x3000; /* the variable, reused */
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, slot, stream);
  DESTROY(slot);
  DESTROY(nb);
  return 0;
}
#endif

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
/* A non-blocking communicator's child, its slot let go once the split is
 * done (a helper's local returned by value, a variable reused): the program
 * polls the parent to its end, copies the child out and the slot holds a
 * blocking communicator next. The preload must take the child, and not that
 * one, for non-blocking. */
static int slotReused(void) {
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  ncclComm_t nb = NULL, slot = NULL;
  if (initWithConfig(0, &nb)) return 1;
  if (awaitChild("split", ncclCommSplit(nb, 1, 0, &slot, NULL), nb, &slot)) return 1;
  EXPECT("CommSplit parent=%p color=1 key=0 blocking=-1 comm=%p", (void*)nb, (void*)slot);
  const ncclComm_t child = slot;
  slot = (ncclComm_t)(uintptr_t)0x3000; /* the variable, reused */
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, child, stream);
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, slot, stream);
  CHECK(ncclCommDestroy(slot));
  EXPECT("CommDestroy comm=%p", (void*)slot);
  CHECK(ncclCommDestroy(child));
  EXPECT("CommDestroy comm=%p", (void*)child);
  CHECK(ncclCommDestroy(nb));
  EXPECT("CommDestroy comm=%p", (void*)nb);
  return 0;
}

/* ncclCommDestroy of a non-blocking communicator whose call NCCL is still
 * enqueueing: NCCL refuses it (ncclInvalidArgument) and the communicator
 * lives on; the program polls it, calls it again and destroys it. The
 * preload keeps one entry for it throughout (the test counts its set-ups
 * and summaries). */
static int destroyRefused(void) {
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  ncclComm_t nb = NULL;
  if (initWithConfig(0, &nb)) return 1;
  ncclResult_t r = ncclAllReduce(a, a, 1 << 22, ncclFloat32, ncclSum, nb, stream);
  if (r != ncclInProgress) {
    fprintf(stderr, "ncclAllReduce on a non-blocking comm returned %d\n", (int)r);
    return 1;
  }
  EXPECT(LINE_FMT, (void*)a, (void*)a, (size_t)1 << 22, (int)ncclFloat32, (int)ncclSum, (void*)nb,
         (void*)stream);
  r = ncclCommDestroy(nb);
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "ncclCommDestroy of a comm in progress returned %d\n", (int)r);
    return 1;
  }
  EXPECT("CommDestroy refused: comm=%p is still in progress", (void*)nb);
  CHECK(settle(nb, ncclInProgress));
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, nb, stream);
  CHECK(ncclCommDestroy(nb));
  EXPECT("CommDestroy comm=%p", (void*)nb);
  return 0;
}

/* NCCL's error after the preload's own: once a non-blocking communicator's
 * call that answered ncclInProgress ends in an error (the test's stand-in
 * meets one in each enqueue from here), ncclGetLastError answers NCCL's last
 * error again, not the preload's older sentence, whether the program's poll
 * (ncclCommGetAsyncError) reads the error or the preload's own wait for a
 * call it deferred to a group's end does. */
static int lastErrorAsync(void) {
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  ncclComm_t nb = NULL, nb2 = NULL;
  if (initWithConfig(0, &nb) || initWithConfig(0, &nb2)) return 1;
  setenv("FAKE_NCCL_ASYNC_FAIL", "1", 1);
  if (preloadFailsAGroup((ncclComm_t)(uintptr_t)0x1000)) return 1;
  ncclResult_t r = ncclAllReduce(a, a, 1000, ncclInt32, ncclSum, nb, stream);
  EXPECT(LINE_FMT, (void*)a, (void*)a, (size_t)1000, (int)ncclInt32, (int)ncclSum, (void*)nb,
         (void*)stream);
  r = r == ncclInProgress ? settle(nb, r) : r;
  if (r != ncclRemoteError || preloadsLastError(nb)) {
    fprintf(stderr, "the program's poll read %d, last error \"%s\"\n", (int)r,
            ncclGetLastError(nb));
    return 1;
  }
  if (preloadFailsAGroup((ncclComm_t)(uintptr_t)0x1100)) return 1;
  GROUP_START();
  CHECK(ncclAllReduce(a, a, 1 << 22, ncclFloat32, ncclSum, nb2, stream));
  r = ncclGroupEnd();
  EXPECT("GroupEnd");
  EXPECT(LINE_FMT, (void*)a, (void*)a, (size_t)1 << 22, (int)ncclFloat32, (int)ncclSum, (void*)nb2,
         (void*)stream);
  if (r != ncclRemoteError || preloadsLastError(nb2)) {
    fprintf(stderr, "the group's end returned %d, last error \"%s\"\n", (int)r,
            ncclGetLastError(nb2));
    return 1;
  }
  CHECK(ncclCommAbort(nb));
  EXPECT("CommAbort comm=%p", (void*)nb);
  CHECK(ncclCommAbort(nb2));
  EXPECT("CommAbort comm=%p", (void*)nb2);
  return 0;
}
#endif

/* GRADCOMP_* variables the program changes after its first allreduce, before
 * a communicator's first call (a method for one process group alone): the
 * preload read its settings at the first call and keeps them for every
 * communicator; the test counts its warnings. GRADCOMP_METHOD changes twice
 * and GRADCOMP_BITS is set (unset before), GRADCOMP_DEBUG is set again to
 * the same value. */
static int settingsChanged(void) {
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, (ncclComm_t)(uintptr_t)0x1000, stream);
  setenv("GRADCOMP_METHOD", "none", 1);
  setenv("GRADCOMP_BITS", "8", 1);
  setenv("GRADCOMP_DEBUG", "INFO", 1);
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, (ncclComm_t)(uintptr_t)0x1100, stream);
  setenv("GRADCOMP_METHOD", "topk", 1);
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, (ncclComm_t)(uintptr_t)0x1200, stream);
  return 0;
}

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0)
/* An eligible allreduce of a revoked communicator: NCCL (2.28.7 and later,
 * enqueue.cc) refuses it with ncclInvalidUsage, its last error saying the
 * communicator was revoked. The preload hands it to NCCL as it is, never to
 * a gradcomp comm of its own (whose peers may be gone). */
static int refusedAsRevoked(char* a, ncclComm_t comm, cudaStream_t stream) {
  const ncclResult_t r = ncclAllReduce(a, a, 1 << 22, ncclFloat32, ncclSum, comm, stream);
  EXPECT("AllReduce refused: comm=%p is revoked", (void*)comm);
  const char* why = ncclGetLastError(comm);
  if (r != ncclInvalidUsage || why == NULL || strstr(why, "revoked") == NULL) {
    fprintf(stderr, "ncclAllReduce of revoked comm %p returned %d (last error '%s'), expected %d\n",
            (void*)comm, (int)r, why ? why : "(null)", (int)ncclInvalidUsage);
    return 1;
  }
  return 0;
}

/* A revoked communicator is never set up again: its later calls reach NCCL
 * unchanged without a set-up attempt (NCCL refuses them), until it is destroyed; a communicator
 * shrunk from it is set up as usual (and fails without a GPU). */
static int revoked(void) {
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  ncclComm_t comm = NULL, shrunk = NULL;
  int excluded = 3;
  if (initWithConfig(1, &comm)) return 1;
  CHECK(ncclCommRevoke(comm, 0));
  EXPECT("CommRevoke comm=%p flags=0", (void*)comm);
  if (refusedAsRevoked(a, comm, stream)) return 1;
  CHECK(ncclCommShrink(comm, &excluded, 1, &shrunk, NULL, 0));
  EXPECT("CommShrink parent=%p excluded=1 blocking=-1 flags=0 comm=%p", (void*)comm, (void*)shrunk);
  DESTROY(comm);
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, shrunk, stream);
  DESTROY(shrunk);
  /* A revoked non-blocking communicator stays one: its shrink without a
   * config is non-blocking (made as NCCL makes those) and is set up too. */
  ncclComm_t nb = NULL, nbShrunk = NULL;
  if (initWithConfig(0, &nb)) return 1;
  CHECK(ncclCommRevoke(nb, 0));
  EXPECT("CommRevoke comm=%p flags=0", (void*)nb);
  if (awaitChild("shrink", ncclCommShrink(nb, &excluded, 1, &nbShrunk, NULL, 0), nb, &nbShrunk)) {
    return 1;
  }
  EXPECT("CommShrink parent=%p excluded=1 blocking=-1 flags=0 comm=%p", (void*)nb, (void*)nbShrunk);
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, nbShrunk, stream);
  DESTROY(nb);
  DESTROY(nbShrunk);
  return 0;
}
#endif

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0)
/* What a program may do after ncclCommRevoke, as NCCL 2.28.7 and later
 * answer it (init.cc, enqueue.cc): the revoke stands for the communicator's
 * finalize (it sets finalizeCalled), so a later ncclCommFinalize is refused
 * (ncclInvalidArgument), as is a second revoke; a collective is refused
 * (ncclInvalidUsage, "communicator was revoked"), in a group too, where it
 * fails the group's end; ncclCommDestroy frees it. And a revoke after a
 * finalize, which NCCL refuses (ncclInvalidArgument, at the call, not as the
 * group's error): also where the finalize is one the preload holds back
 * behind a deferred call of the group. Until 2026-12-07 the preload passed
 * that revoke on, NCCL (which had not seen the finalize) took it, and the
 * group's end refused the deferred call and the finalize. */
static int revokeAnswers(void) {
  const ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000, other = (ncclComm_t)(uintptr_t)0x1100;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  CHECK(ncclCommRevoke(comm, 0));
  EXPECT("CommRevoke comm=%p flags=0", (void*)comm);
  if (refusedAsRevoked(a, comm, stream)) return 1;
  GROUP_START();
  if (refusedAsRevoked(a, comm, stream)) return 1;
  ncclResult_t r = ncclGroupEnd();
  EXPECT("GroupEnd");
  if (r != ncclInvalidUsage) {
    fprintf(stderr, "the group of the refused call ended with %d, expected %d\n", (int)r,
            (int)ncclInvalidUsage);
    return 1;
  }
  r = ncclCommFinalize(comm);
  EXPECT("CommFinalize refused: comm=%p is finalized", (void*)comm);
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "ncclCommFinalize after the revoke returned %d, expected %d\n", (int)r,
            (int)ncclInvalidArgument);
    return 1;
  }
  r = ncclCommRevoke(comm, 0);
  EXPECT("CommRevoke refused: comm=%p is revoked", (void*)comm);
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "a second ncclCommRevoke returned %d, expected %d\n", (int)r,
            (int)ncclInvalidArgument);
    return 1;
  }
  DESTROY(comm);
  GROUP_START();
  CHECK(ncclAllReduce(a, a, 1 << 20, ncclFloat32, ncclSum, other, stream));
  CHECK(ncclCommFinalize(other));
  r = ncclCommRevoke(other, 0);
  if (r != ncclInvalidArgument) {
    fprintf(stderr,
            "ncclCommRevoke after the finalize held in the group returned %d, expected %d\n",
            (int)r, (int)ncclInvalidArgument);
    return 1;
  }
  const char* why = ncclGetLastError(other);
  if (why == NULL || strstr(why, "finalized") == NULL) {
    fprintf(stderr, "ncclGetLastError after the refused revoke: '%s'\n", why ? why : "(null)");
    return 1;
  }
  GROUP_END();
  EXPECT(LINE_FMT, (void*)a, (void*)a, (size_t)1 << 20, (int)ncclFloat32, (int)ncclSum,
         (void*)other, (void*)stream);
  EXPECT("CommFinalize comm=%p", (void*)other);
  DESTROY(other);
  /* A call deferred in a group before its communicator's revoke there: the
   * revoke ended the communicator's work, so the group's end refuses the
   * call (ncclInvalidUsage), ncclGetLastError saying it was revoked (until
   * 2026-12-07: "aborted or destroyed"). */
  const ncclComm_t third = (ncclComm_t)(uintptr_t)0x1200;
  GROUP_START();
  CHECK(ncclAllReduce(a, a, 1 << 20, ncclFloat32, ncclSum, third, stream));
  CHECK(ncclCommRevoke(third, 0));
  EXPECT("CommRevoke comm=%p flags=0", (void*)third);
  r = ncclGroupEnd();
  EXPECT("GroupEnd");
  why = ncclGetLastError(third);
  if (r != ncclInvalidUsage || !preloadsLastError(third) || strstr(why, "revoked since") == NULL) {
    fprintf(stderr,
            "the group of the revoked comm's deferred call ended with %d, last error '%s'\n",
            (int)r, why ? why : "(null)");
    return 1;
  }
  DESTROY(third);
  /* A revoke after a destroy the preload holds back behind a deferred call
   * of the group: NCCL set destroyFlag at the destroy's call and refuses the
   * revoke (ncclInvalidArgument, at the call), and the group then runs the
   * call and the destroy. (Until 2026-12-07 the revoke reached NCCL, which
   * took it, and the group's end refused the call and the destroy, which
   * never reached NCCL.) A revoke with flags other than 0 is refused too. */
  const ncclComm_t fourth = (ncclComm_t)(uintptr_t)0x1300;
  r = ncclCommRevoke(fourth, 1);
  EXPECT("CommRevoke refused: comm=%p flags=1", (void*)fourth);
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "ncclCommRevoke with flags 1 returned %d, expected %d\n", (int)r,
            (int)ncclInvalidArgument);
    return 1;
  }
  GROUP_START();
  CHECK(ncclAllReduce(a, a, 1 << 20, ncclFloat32, ncclSum, fourth, stream));
  CHECK(ncclCommDestroy(fourth));
  r = ncclCommRevoke(fourth, 0);
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "ncclCommRevoke after the destroy held in the group returned %d, expected %d\n",
            (int)r, (int)ncclInvalidArgument);
    return 1;
  }
  why = ncclGetLastError(fourth);
  if (why == NULL || strstr(why, "destroyed") == NULL) {
    fprintf(stderr, "ncclGetLastError after the refused revoke: '%s'\n", why ? why : "(null)");
    return 1;
  }
  GROUP_END();
  EXPECT(LINE_FMT, (void*)a, (void*)a, (size_t)1 << 20, (int)ncclFloat32, (int)ncclSum,
         (void*)fourth, (void*)stream);
  EXPECT("CommDestroy comm=%p", (void*)fourth);
  return 0;
}
#endif

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0)
/* A shrink with NCCL_SHRINK_ABORT ends the parent's work in flight first, as
 * a revoke does (NCCL: for a shrink right after a failure, without a revoke
 * before it): the parent is never set up again, and its later calls reach
 * NCCL unchanged without a set-up attempt; the child is set up as usual. */
static int shrinkAbort(void) {
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  ncclComm_t comm = NULL, shrunk = NULL;
  int excluded = 3;
  if (initWithConfig(1, &comm)) return 1;
  CHECK(ncclCommShrink(comm, &excluded, 1, &shrunk, NULL, NCCL_SHRINK_ABORT));
  EXPECT("CommShrink parent=%p excluded=1 blocking=-1 flags=%d comm=%p", (void*)comm,
         NCCL_SHRINK_ABORT, (void*)shrunk);
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, comm, stream);
  CALL(a, a, 1 << 22, ncclFloat32, ncclSum, shrunk, stream);
  DESTROY(comm);
  DESTROY(shrunk);
  return 0;
}
#endif

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 22, 0)
/* A simulated group's calls all reach NCCL inside it, deferred eligible ones
 * too (so that its estimate counts them), and none of them runs afterwards. */
static int simulated(const char* what, const ncclSimInfo_t* info, int calls) {
  flushDeferred();
  EXPECT("GroupSimulateEnd simulated %d calls", calls);
  if (info->estimatedTime != (float)calls) {
    fprintf(stderr, "%s: estimatedTime %g, expected %d (NCCL did not get the simInfo?)\n", what,
            (double)info->estimatedTime, calls);
    return 1;
  }
  return 0;
}

/* ncclGroupSimulateEnd: the outermost end with a simInfo runs nothing; an
 * inner one or a null simInfo ends its level as ncclGroupEnd does. After each
 * group, an eligible call outside any group must reach NCCL at once (a group
 * depth left behind would defer it). Stderr marks where the first such call
 * is made: gradcomp must not set up before it. */
static int simulate(void) {
  const int deferGroupCalls = groupCallsDeferred();
  /* A new communicator for each group: the call after it is the first
   * outside a group, which gradcomp would defer (not pass through, as on a
   * communicator that already failed to set up) were the group still open. */
  const ncclComm_t comm[4] = {(ncclComm_t)(uintptr_t)0x1000, (ncclComm_t)(uintptr_t)0x1100,
                              (ncclComm_t)(uintptr_t)0x1200, (ncclComm_t)(uintptr_t)0x1300};
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  ncclSimInfo_t info = NCCL_SIM_INFO_INITIALIZER;
  GROUP_START();
  CALL(a, a, 1000, ncclInt32, ncclSum, comm[0], stream);
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, ncclSum, comm[0], stream);
  RS_IN_GROUP(a, b, 1 << 18, ncclBfloat16, ncclAvg, comm[0], stream);
  CHECK(ncclGroupSimulateEnd(&info));
  if (simulated("flat", &info, 3)) return 1;
  fprintf(stderr, "test: first call outside a group\n");
  CALL(b, b, 1 << 20, ncclFloat32, ncclSum, comm[0], stream);

  /* Inner simulate end: the group goes on and the outer ncclGroupEnd runs
   * all of it; the inner simInfo is left as it was. */
  ncclSimInfo_t inner = NCCL_SIM_INFO_INITIALIZER;
  const ncclSimInfo_t fresh = NCCL_SIM_INFO_INITIALIZER;
  GROUP_START();
  GROUP_START();
  CALL_IN_GROUP(a, b, 1 << 20, ncclFloat32, ncclSum, comm[1], stream);
  CHECK(ncclGroupSimulateEnd(&inner));
  EXPECT("GroupSimulateEnd inner");
  /* Field by field: the struct's tail padding is not initialized. */
  if (inner.size != fresh.size || inner.magic != fresh.magic || inner.version != fresh.version ||
      memcmp(&inner.estimatedTime, &fresh.estimatedTime, sizeof(float)) != 0) {
    fprintf(stderr, "inner ncclGroupSimulateEnd changed its simInfo\n");
    return 1;
  }
  CALL_IN_GROUP(b, a, 1 << 19, ncclFloat16, ncclAvg, comm[1], stream);
  GROUP_END();
  flushDeferred();
  CALL(a, a, 1 << 21, ncclFloat32, ncclSum, comm[1], stream);

  /* A real inner group inside a simulated outer one: simulated as a whole. */
  ncclSimInfo_t outer = NCCL_SIM_INFO_INITIALIZER;
  GROUP_START();
  CALL_IN_GROUP(b, b, 1 << 20, ncclFloat32, ncclSum, comm[2], stream);
  GROUP_START();
  CALL_IN_GROUP(a, b, 1 << 20, ncclBfloat16, ncclSum, comm[2], stream);
  GROUP_END();
  CHECK(ncclGroupSimulateEnd(&outer));
  if (simulated("nested", &outer, 2)) return 1;
  CALL(b, a, 1 << 21, ncclFloat32, ncclSum, comm[2], stream);

  /* No simInfo: NCCL ends the group for real. */
  GROUP_START();
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, ncclAvg, comm[3], stream);
  CHECK(ncclGroupSimulateEnd(NULL));
  EXPECT("GroupSimulateEnd simInfo=null");
  flushDeferred();
  CALL(a, b, 1 << 21, ncclFloat32, ncclSum, comm[3], stream);
  for (int i = 0; i < 4; ++i) {
    DESTROY(comm[i]);
  }
  return 0;
}

/* A finalize and a destroy in a simulated group, after deferred calls of
 * their communicators: NCCL gets the calls inside the group to estimate them,
 * and the finalize and destroy after its end (inside it, NCCL would run them
 * before it prepares the calls it simulates: group.cc runs a group's
 * finalize and destroy jobs first). */
static int simulateCommCalls(void) {
  const int deferGroupCalls = groupCallsDeferred();
  const ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000, other = (ncclComm_t)(uintptr_t)0x1100;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  ncclSimInfo_t info = NCCL_SIM_INFO_INITIALIZER;
  GROUP_START();
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream);
  CALL_IN_GROUP(b, b, 1 << 20, ncclFloat32, ncclSum, other, stream);
  CHECK(ncclCommFinalize(comm));
  CHECK(ncclCommDestroy(other));
  CHECK(ncclGroupSimulateEnd(&info));
  if (simulated("comm calls", &info, 2)) return 1;
  EXPECT("CommFinalize comm=%p", (void*)comm);
  EXPECT("CommDestroy comm=%p", (void*)other);
  DESTROY(comm);
  return 0;
}

/* A finalize and a destroy held back behind deferred calls of their
 * communicators in a group whose ncclGroupSimulateEnd NCCL fails (a simInfo
 * not initialized with NCCL_SIM_INFO_INITIALIZER: ncclInvalidArgument, and
 * nothing of the group runs, group.cc): both are dropped with the group, and
 * each drop is warned about (the test finds the warnings before the line
 * this writes to stderr), as at a failed ncclGroupEnd. The communicators
 * stay made: the later destroys reach NCCL, once each. */
static int simulateFails(void) {
  const ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000, other = (ncclComm_t)(uintptr_t)0x1100;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  ncclSimInfo_t info = NCCL_SIM_INFO_INITIALIZER;
  info.magic = 0;
  GROUP_START();
  CHECK(ncclAllReduce(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream));
  CHECK(ncclAllReduce(b, b, 1 << 20, ncclFloat32, ncclSum, other, stream));
  CHECK(ncclCommFinalize(comm));
  CHECK(ncclCommDestroy(other));
  const ncclResult_t r = ncclGroupSimulateEnd(&info);
  EXPECT(LINE_FMT, (void*)a, (void*)a, (size_t)1 << 20, (int)ncclFloat32, (int)ncclSum, (void*)comm,
         (void*)stream);
  EXPECT(LINE_FMT, (void*)b, (void*)b, (size_t)1 << 20, (int)ncclFloat32, (int)ncclSum,
         (void*)other, (void*)stream);
  EXPECT("GroupSimulateEnd uninitialized simInfo");
  fprintf(stderr, "the failed group ended\n");
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "the failed simulated group's end returned %d, expected %d\n", (int)r,
            (int)ncclInvalidArgument);
    return 1;
  }
  DESTROY(comm);
  DESTROY(other);
  return 0;
}

/* With an NCCL that lacks ncclGroupSimulateEnd the call fails and the group
 * stays open: the ncclGroupEnd that follows runs it, deferred calls included. */
static int simulateMissing(void) {
  const int deferGroupCalls = groupCallsDeferred();
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  ncclSimInfo_t info = NCCL_SIM_INFO_INITIALIZER;
  GROUP_START();
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream);
  const ncclResult_t r = ncclGroupSimulateEnd(&info);
  /* NCCL never saw the call: its last error says why, as gradcomp's. */
  const char* last = ncclGetLastError(comm);
  if (r != ncclSystemError || last == NULL ||
      strstr(last, "gradcomp: ncclGroupSimulateEnd is not in the loaded NCCL") != last) {
    fprintf(stderr,
            "ncclGroupSimulateEnd returned %d (expected ncclSystemError), last error \"%s\"\n",
            (int)r, last ? last : "(null)");
    return 1;
  }
  GROUP_END();
  flushDeferred();
  CALL(a, a, 1 << 21, ncclFloat32, ncclSum, comm, stream);
  /* Nor ncclCommRevoke (NCCL 2.28): refused, nothing reaches NCCL. */
  if (ncclCommRevoke(comm, 0) != ncclInvalidUsage ||
      strstr(ncclGetLastError(comm), "gradcomp: ncclCommRevoke is not in the loaded NCCL") ==
          NULL) {
    fprintf(stderr,
            "ncclCommRevoke without the function did not return ncclInvalidUsage and say why "
            "(\"%s\")\n",
            ncclGetLastError(comm));
    return 1;
  }
  DESTROY(comm);
  return 0;
}
#endif

/* ncclCommAbort of a communicator whose eligible call a user group deferred
 * (NCCL 2.22 and later take aborts inside a group; another thread's abort
 * after a dead peer is the same): NCCL frees the communicator, so the deferred
 * call must not reach it, nor a set-up name it, and the group's end answers
 * ncclInvalidUsage (docs/reliability.md). */
static int abortDeferred(int simulate) {
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  GROUP_START();
  CHECK(ncclAllReduce(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream));
  CHECK(ncclCommAbort(comm));
  EXPECT("CommAbort comm=%p", (void*)comm);
  ncclResult_t r;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 22, 0)
  /* The same before a simulated end: nothing forwarded for NCCL to simulate. */
  if (simulate) {
    ncclSimInfo_t info = NCCL_SIM_INFO_INITIALIZER;
    r = ncclGroupSimulateEnd(&info);
    EXPECT("GroupSimulateEnd simulated 0 calls");
  } else
#endif
  {
    r = ncclGroupEnd();
    EXPECT("GroupEnd");
  }
  if (r != ncclInvalidUsage) {
    fprintf(stderr, "the group's %s after the abort returned %d, expected ncclInvalidUsage\n",
            simulate ? "simulated end" : "end", (int)r);
    return 1;
  }
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
  /* NCCL never saw that error: its last error must say it is gradcomp's and
   * why (PyTorch puts it in the exception), until NCCL fails a call of its
   * own (here one with a destroyed op), whose sentence then comes back. */
  const char* last = ncclGetLastError(comm);
  if (last == NULL || strncmp(last, "gradcomp: ", 10) != 0 ||
      strstr(last, "aborted or destroyed") == NULL) {
    fprintf(stderr, "ncclGetLastError after the refused group: \"%s\"\n", last ? last : "(null)");
    return 1;
  }
  const ncclComm_t other = (ncclComm_t)(uintptr_t)0x1100;
  float one = 1.0f;
  ncclRedOp_t op;
  CHECK(ncclRedOpCreatePreMulSum(&op, &one, ncclFloat32, ncclScalarHostImmediate, other));
  EXPECT("RedOpCreatePreMulSum scalar=1 type=%d comm=%p op=%d", (int)ncclFloat32, (void*)other,
         (int)op);
  CHECK(ncclRedOpDestroy(op, other));
  EXPECT("RedOpDestroy op=%d comm=%p", (int)op, (void*)other);
  r = ncclAllReduce(a, a, 1 << 20, ncclFloat32, op, other, stream);
  EXPECT("AllReduce refused: op=%d is not a live op of comm=%p", (int)op, (void*)other);
  last = ncclGetLastError(other);
  if (r != ncclInvalidArgument || last == NULL || strstr(last, "is not a live op") == NULL) {
    fprintf(stderr, "NCCL's refusal (%d) left ncclGetLastError at \"%s\"\n", (int)r,
            last ? last : "(null)");
    return 1;
  }
  /* Once more: the preload fails another group of its own, then NCCL refuses
   * the same call again, with the same sentence as before. NCCL's failure is
   * the last one all the same (until 2026-12-07 the preload's sentence stayed:
   * only a change of NCCL's text ended it). */
  char nccls[256];
  snprintf(nccls, sizeof nccls, "%s", last);
  if (preloadFailsAGroup((ncclComm_t)(uintptr_t)0x1200)) return 1;
  r = ncclAllReduce(a, a, 1 << 20, ncclFloat32, op, other, stream);
  EXPECT("AllReduce refused: op=%d is not a live op of comm=%p", (int)op, (void*)other);
  last = ncclGetLastError(other);
  if (r != ncclInvalidArgument || last == NULL || strcmp(last, nccls) != 0) {
    fprintf(stderr, "NCCL's second refusal (%d) left ncclGetLastError at \"%s\", not \"%s\"\n",
            (int)r, last ? last : "(null)", nccls);
    return 1;
  }
#endif
  return 0;
}

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
/* The line NCCL must receive for a communicator's finalize or destroy made
 * in a group: after the group's end, behind its communicator's deferred
 * calls, where the test says those are deferred. */
static void commCallLine(int deferIt, const char* what, ncclComm_t c) {
  if (deferIt) {
    snprintf(deferred[numDeferred++], sizeof(deferred[0]), "%s comm=%p", what, (void*)c);
  } else {
    EXPECT("%s comm=%p", what, (void*)c);
  }
}

/* ncclCommFinalize and ncclCommDestroy in a user group, after calls of their
 * communicator the preload deferred to the group's end (NCCL makes a
 * finalize a group job from 2.14, a destroy from 2.22; made after those
 * calls, they flush their work):
 * each reaches NCCL after those calls, in program order, not at once (the
 * stand-in refuses a call on a finalized communicator; a destroy passed on
 * at once left the deferred calls refused). Another communicator's call
 * stays in the group. The test says whether the float calls are deferred
 * (GC_TEST_GROUP_CALLS_DEFERRED=1). */
static int commCallsInGroup(void) {
  const int deferGroupCalls = groupCallsDeferred();
  const ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000, other = (ncclComm_t)(uintptr_t)0x1100,
                   third = (ncclComm_t)(uintptr_t)0x1200;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  GROUP_START();
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream);
  RS_IN_GROUP(a, b, 1 << 20, ncclFloat32, ncclSum, comm, stream);
  CALL(b, b, 1000, ncclInt32, ncclSum, other, stream);
  CHECK(ncclCommFinalize(comm));
  commCallLine(deferGroupCalls, "CommFinalize", comm);
  GROUP_END();
  flushDeferred();
  DESTROY(comm);
  /* A destroy, behind an eligible call and an int32 one deferred after it. */
  GROUP_START();
  CALL_IN_GROUP(a, a, 1 << 20, ncclBfloat16, ncclAvg, third, stream);
  CALL_IN_GROUP(a, a, 1000, ncclInt32, ncclSum, third, stream);
  CHECK(ncclCommDestroy(third));
  commCallLine(deferGroupCalls, "CommDestroy", third);
  GROUP_END();
  flushDeferred();
  DESTROY(other);
  return 0;
}

/* One thread's group over two devices' communicators (FAKE_NCCL_DEVICES=2),
 * their first calls deferred, then a finalize of one and a destroy of the
 * other: the calls stay in NCCL's group (keepMultiDeviceGroup), and the
 * finalize and destroy reach NCCL after its end (inside it, NCCL would run
 * them before it launches the calls: group.cc runs a group's finalize and
 * destroy jobs first). */
static int multiDeviceCommCalls(void) {
  const ncclComm_t dev0 = (ncclComm_t)(uintptr_t)0x3400, dev1 = (ncclComm_t)(uintptr_t)0x3500;
  cudaStream_t s0 = (cudaStream_t)(uintptr_t)0x2000, s1 = (cudaStream_t)(uintptr_t)0x2100;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  GROUP_START();
  CALL(a, a, 1 << 20, ncclFloat32, ncclSum, dev0, s0);
  CALL(b, b, 1 << 20, ncclFloat32, ncclSum, dev1, s1);
  CHECK(ncclCommFinalize(dev0));
  CHECK(ncclCommDestroy(dev1));
  GROUP_END();
  EXPECT("CommFinalize comm=%p", (void*)dev0);
  EXPECT("CommDestroy comm=%p", (void*)dev1);
  DESTROY(dev0);
  return 0;
}

/* A deferred call that fails before its communicator's finalize in the same
 * group (the test makes NCCL fail every data call, FAKE_NCCL_FAIL=1): the
 * finalize still reaches NCCL after it, and the group's end answers the
 * call's error (fusion.cc's runDeferred says why). */
static int finalizeAfterFailure(void) {
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  GROUP_START();
  CHECK(ncclAllReduce(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream));
  CHECK(ncclCommFinalize(comm));
  const ncclResult_t r = ncclGroupEnd();
  EXPECT("GroupEnd");
  EXPECT(LINE_FMT, (void*)a, (void*)a, (size_t)1 << 20, (int)ncclFloat32, (int)ncclSum, (void*)comm,
         (void*)stream);
  EXPECT("CommFinalize comm=%p", (void*)comm);
  if (r != ncclRemoteError) {
    fprintf(stderr, "the group's end returned %d, expected the failed call's ncclRemoteError\n",
            (int)r);
    return 1;
  }
  DESTROY(comm);
  return 0;
}

/* A user group of an allreduce of `comm`, then `commCall(comm)` held behind
 * it, whose end the stand-in fails (FAKE_NCCL_GROUP_FAIL=1): 0 when it failed
 * as NCCL's would, after the line "the failed group ended". */
static int failedGroupWith(ncclComm_t comm, ncclResult_t (*commCall)(ncclComm_t)) {
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  GROUP_START();
  CHECK(ncclAllReduce(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream));
  CHECK(commCall(comm));
  const ncclResult_t r = ncclGroupEnd();
  EXPECT("GroupEnd");
  fprintf(stderr, "the failed group ended\n");
  if (r != ncclInternalError) {
    fprintf(stderr, "the failed group's end returned %d, expected ncclInternalError\n", (int)r);
    return 1;
  }
  return 0;
}

/* ncclCommDestroy in a user group after a call of its communicator the
 * preload deferred, in a group whose end NCCL fails as a whole (the test
 * makes every group's end fail, FAKE_NCCL_GROUP_FAIL=1, and checks the
 * arguments, FAKE_NCCL_CHECK_ARGS=1). The held destroy is dropped with the
 * group: whether NCCL alone had destroyed the communicator depends on what
 * failed (a refused call, of any kind: the end runs none of the group's
 * jobs; a launch: NCCL 2.22 and later ran the destroy job first) and on
 * NCCL's version (before 2.22 a destroy in a group ran at the call), none of
 * which the preload can tell, and destroyed there, a program that destroys
 * or aborts it after the refused group would reach NCCL twice. The
 * communicator stays made and its entry kept, the program is warned, and
 * its own later destroy reaches NCCL once. */
static int destroyAfterFailedGroup(void) {
  const ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000, kept = (ncclComm_t)(uintptr_t)0x1100;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  /* The test finds the warning, and no summary of the communicator (printed
   * as its entry goes), before the group's end is reported. */
  if (failedGroupWith(comm, ncclCommDestroy)) return 1;
  DESTROY(comm);
  ncclResult_t r;
  GROUP_START();
  CHECK(ncclAllReduce(a, a, 1 << 20, ncclFloat32, ncclSum, kept, stream));
  r = ncclAllReduce(a, a, 1 << 20, asType(-1), ncclSum, kept, stream);
  EXPECT("AllReduce refused: type=-1 op=%d", (int)ncclSum);
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "ncclAllReduce(type=-1) returned %d, not NCCL's refusal\n", (int)r);
    return 1;
  }
  CHECK(ncclCommDestroy(kept));
  r = ncclGroupEnd();
  EXPECT("GroupEnd");
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "the refused group's end returned %d, expected ncclInvalidArgument\n", (int)r);
    return 1;
  }
  DESTROY(kept);
  return 0;
}

/* Whether ncclGetLastError(comm) says the communicator was already finalized
 * (after `when`); it says what it answered where not. */
static int saysFinalized(ncclComm_t comm, const char* when) {
  const char* why = ncclGetLastError(comm);
  if (why != NULL && strstr(why, "already finalized") != NULL) return 1;
  fprintf(stderr, "ncclGetLastError after %s: '%s'\n", when, why ? why : "(null)");
  return 0;
}

/* A second ncclCommFinalize of a communicator in the user group that holds
 * its first behind a deferred call. NCCL (2.22 and later, init.cc) refuses
 * it at the call (ncclInvalidArgument), and the refusal fails the group's
 * end (ncclGroupErrCheck), which then runs nothing of the group. NCCL gets
 * the held-back finalize, then this one, and refuses it; ncclGetLastError
 * says why. (Until 2026-12-07 the second was held back too, answered
 * ncclSuccess, and refused only when it reached NCCL after the group's end,
 * which ran the group's calls.) */
static int finalizeTwiceInGroup(void) {
  const ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  GROUP_START();
  CHECK(ncclAllReduce(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream));
  CHECK(ncclCommFinalize(comm));
  ncclResult_t r = ncclCommFinalize(comm);
  EXPECT("CommFinalize comm=%p", (void*)comm);
  EXPECT("CommFinalize refused: comm=%p is finalized", (void*)comm);
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "the second ncclCommFinalize in the group returned %d, expected %d\n", (int)r,
            (int)ncclInvalidArgument);
    return 1;
  }
  if (!saysFinalized(comm, "the refused finalize")) return 1;
  r = ncclGroupEnd();
  EXPECT("GroupEnd");
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "the group's end returned %d, expected the refusal's %d\n", (int)r,
            (int)ncclInvalidArgument);
    return 1;
  }
  if (!saysFinalized(comm, "the failed group's end")) return 1;
  DESTROY(comm);
  return 0;
}

/* ncclCommFinalize in a user group after a call of its communicator the
 * preload deferred, in a group whose end NCCL fails as a whole (the test
 * makes every group's end fail, FAKE_NCCL_GROUP_FAIL=1): the held finalize
 * is dropped with the group (and warned about), and NCCL never gets it. NCCL
 * alone sets finalizeCalled at the finalize's call, in a group too, and a
 * failed group's end (group.cc, groupCleanup) frees its jobs without
 * clearing it: a later ncclCommFinalize is refused (ncclInvalidArgument),
 * and so is an ncclCommRevoke. The preload answers both so, NCCL getting
 * neither, and ncclGetLastError says why. (Until 2026-12-07 it passed the
 * later finalize on, which NCCL took and ran.) The destroy after it reaches
 * NCCL. That is NCCL 2.22 and later: before 2.22 NCCL sets finalizeCalled
 * as the finalize's job ends (commDestroySync), so the dropped one never
 * counted, and NCCL alone takes the later finalize: the preload hands it on
 * (the stand-in for an older NCCL, whose ncclGetVersion says 2.21.5). */
static int finalizeAfterFailedGroup(void) {
  const ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  /* The test finds the warning before the group's end is reported. */
  if (failedGroupWith(comm, ncclCommFinalize)) return 1;
  ncclResult_t r;
  int version = 0;
  CHECK(ncclGetVersion(&version));
  r = ncclCommFinalize(comm);
  if (version < NCCL_VERSION(2, 22, 0)) {
    EXPECT("CommFinalize comm=%p", (void*)comm);
    if (r != ncclSuccess) {
      fprintf(stderr, "ncclCommFinalize after the failed group (NCCL %d) returned %d, expected 0\n",
              version, (int)r);
      return 1;
    }
    DESTROY(comm);
    return 0;
  }
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "ncclCommFinalize after the failed group returned %d, expected %d\n", (int)r,
            (int)ncclInvalidArgument);
    return 1;
  }
  const char* why = ncclGetLastError(comm);
  if (why == NULL || strstr(why, "finalized") == NULL) {
    fprintf(stderr, "ncclGetLastError after the refused finalize: '%s'\n", why ? why : "(null)");
    return 1;
  }
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0)
  r = ncclCommRevoke(comm, 0);
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "ncclCommRevoke after the failed group returned %d, expected %d\n", (int)r,
            (int)ncclInvalidArgument);
    return 1;
  }
#endif
  DESTROY(comm);
  return 0;
}

/* A finalize the preload refuses itself, in a later user group: NCCL (2.22
 * and later) counts a finalize at its call, and one made in a group whose
 * end failed still counts (finalizeAfterFailedGroup), so NCCL refuses a
 * later one (init.cc, ncclCommFinalize: ncclInvalidArgument), and, made in
 * a group, the refusal is the group's error (ncclGroupErrCheck): the
 * group's end fails with it and runs nothing of the group. NCCL never got
 * the first, so the preload answers the second and hands NCCL a call it
 * refuses as the group's error, of no communicator ("AllReduce refused: no
 * comm"): the end fails, and the other communicator's call deferred in the
 * group is dropped with it; ncclGetLastError says why, after the call and
 * after the end. (Until 2026-12-07 the end succeeded and ran that call.) A
 * revoke the preload refuses so in a group is the call's refusal alone, as
 * NCCL's (it refuses a revoke before it joins the group): the group's end
 * runs the group's calls. The first group fails for a datatype NCCL
 * refuses (FAKE_NCCL_CHECK_ARGS=1); the test says the float calls are
 * deferred (GC_TEST_GROUP_CALLS_DEFERRED=1). */
static int finalizeRefusedInGroup(int simulate) {
  const int deferGroupCalls = groupCallsDeferred();
  const ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000, other = (ncclComm_t)(uintptr_t)0x1100;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  int version = 0;
  CHECK(ncclGetVersion(&version));
  if (version < NCCL_VERSION(2, 22, 0)) {
    fprintf(stderr, "finalize_refused_in_group needs NCCL 2.22 (got %d)\n", version);
    return 2;
  }
  GROUP_START();
  CHECK(ncclAllReduce(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream));
  CHECK(ncclCommFinalize(comm));
  ncclResult_t r = ncclAllReduce(b, b, 1 << 20, asType(-1), ncclSum, other, stream);
  EXPECT("AllReduce refused: type=-1 op=%d", (int)ncclSum);
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "ncclAllReduce(type=-1) returned %d, not NCCL's refusal\n", (int)r);
    return 1;
  }
  r = ncclGroupEnd();
  EXPECT("GroupEnd");
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "the refused group's end returned %d, expected %d\n", (int)r,
            (int)ncclInvalidArgument);
    return 1;
  }
  GROUP_START();
  CHECK(ncclAllReduce(b, b, 1 << 20, ncclFloat32, ncclSum, other, stream));
  r = ncclCommFinalize(comm);
  EXPECT("AllReduce refused: no comm");
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "ncclCommFinalize in the later group returned %d, expected %d\n", (int)r,
            (int)ncclInvalidArgument);
    return 1;
  }
  if (!saysFinalized(comm, "the refused finalize")) return 1;
  if (simulate) {
    /* A simulated end fails with the group's error as a plain end does. The
     * preload hands NCCL the group's deferred calls to simulate, and NCCL's
     * failed end drops them with the group. */
    ncclSimInfo_t info = NCCL_SIM_INFO_INITIALIZER;
    r = ncclGroupSimulateEnd(&info);
    EXPECT(LINE_FMT, (void*)b, (void*)b, (size_t)1 << 20, (int)ncclFloat32, (int)ncclSum,
           (void*)other, (void*)stream);
    EXPECT("GroupSimulateEnd refused: the group's error %d", (int)ncclInvalidArgument);
  } else {
    r = ncclGroupEnd();
    EXPECT("GroupEnd");
  }
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "the end of the group with the refused finalize returned %d, expected %d\n",
            (int)r, (int)ncclInvalidArgument);
    return 1;
  }
  if (!saysFinalized(comm, "the failed group's end")) return 1;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0)
  GROUP_START();
  CALL_IN_GROUP(b, b, 1 << 20, ncclFloat32, ncclSum, other, stream);
  r = ncclCommRevoke(comm, 0);
  if (r != ncclInvalidArgument) {
    fprintf(stderr, "ncclCommRevoke in the group returned %d, expected %d\n", (int)r,
            (int)ncclInvalidArgument);
    return 1;
  }
  GROUP_END();
  flushDeferred();
#endif
  DESTROY(comm);
  DESTROY(other);
  return 0;
}

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0)
/* The stand-in's hook (fake_nccl.c), run as its ncclCommDestroy begins. */
void fakeNcclOnDestroy(void (*hook)(ncclComm_t));

/* What the revoke made as NCCL's destroy began answered. */
static ncclResult_t revokeAtDestroyAnswer = ncclSuccess;
static void revokeAtDestroy(ncclComm_t c) {
  revokeAtDestroyAnswer = ncclCommRevoke(c, 0);
}

/* A revoke in the instant between the preload's release of a communicator
 * whose destroy it held behind a user group's deferred call, at the group's
 * end, and NCCL's destroy of it (made then every time by the stand-in's
 * hook, as another thread's would be): NCCL alone set destroyFlag at the
 * program's destroy, long returned, and refuses the revoke
 * (ncclInvalidArgument), so the preload refuses it and NCCL never gets it.
 * (Until 2026-12-07 the released entry left nothing to refuse it: NCCL took
 * the revoke, "CommRevoke comm=0x1000 flags=0", and answered ncclSuccess.) */
static int revokeInHeldDestroy(void) {
  const int deferGroupCalls = groupCallsDeferred();
  const ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  GROUP_START();
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream);
  CHECK(ncclCommDestroy(comm));
  commCallLine(deferGroupCalls, "CommDestroy", comm);
  fakeNcclOnDestroy(revokeAtDestroy);
  const ncclResult_t r = ncclGroupEnd();
  fakeNcclOnDestroy(NULL);
  if (r != ncclSuccess) {
    fprintf(stderr, "the group's end returned %d\n", (int)r);
    return 1;
  }
  EXPECT("GroupEnd");
  flushDeferred();
  if (revokeAtDestroyAnswer != ncclInvalidArgument) {
    fprintf(stderr, "ncclCommRevoke as NCCL's held destroy began returned %d, expected %d\n",
            (int)revokeAtDestroyAnswer, (int)ncclInvalidArgument);
    return 1;
  }
  return 0;
}
#endif
#endif

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
/* ncclCommSplit (and, NCCL 2.27 and later, ncclCommShrink) of a communicator
 * in a user group after a call of it the preload deferred. NCCL (2.18 and
 * later) makes the child in a job of the group, and its end runs the
 * group's jobs before it prepares and launches the group's calls (group.cc,
 * groupLaunch: asyncJobLaunch first): the child is made before the parent's
 * allreduce starts, whatever their order in the group. The preload leaves
 * the split in NCCL's group, at the call, and runs the deferred call after
 * NCCL's end: the same order. (Held back behind the call, the split would
 * run after it, outside the group, and the child would be made later than
 * the program's end of the group.) */
static int childInGroup(void) {
  const ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  ncclComm_t child = NULL;
  GROUP_START();
  CHECK(ncclAllReduce(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream));
  CHECK(ncclCommSplit(comm, 0, 0, &child, NULL));
  EXPECT("CommSplit parent=%p color=0 key=0 blocking=-1 comm=%p", (void*)comm, (void*)child);
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0)
  ncclComm_t shrunk = NULL;
  int excluded = 1;
  CHECK(ncclCommShrink(comm, &excluded, 1, &shrunk, NULL, NCCL_SHRINK_DEFAULT));
  EXPECT("CommShrink parent=%p excluded=1 blocking=-1 flags=%d comm=%p", (void*)comm,
         NCCL_SHRINK_DEFAULT, (void*)shrunk);
#endif
  GROUP_END();
  EXPECT(LINE_FMT, (void*)a, (void*)a, (size_t)1 << 20, (int)ncclFloat32, (int)ncclSum, (void*)comm,
         (void*)stream);
  if (child == NULL) {
    fprintf(stderr, "the split's child was not made by the group's end\n");
    return 1;
  }
  CALL(a, a, 1000, ncclInt32, ncclSum, child, stream);
  DESTROY(child);
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0)
  DESTROY(shrunk);
#endif
  DESTROY(comm);
  return 0;
}
#endif

/* Reduce-scatters too small to be eligible (4 * 1000 < 16384): the
 * communicator never sets up (the first call only runs the ranks' comparison
 * of their settings), and the preload asks NCCL its size once, not at every
 * call (a watchdog may poll the communicator meanwhile). */
static int smallReduceScatters(void) {
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  for (int i = 0; i < 5; ++i) RS(a, b, 1000, ncclFloat32, ncclSum, comm, stream);
  DESTROY(comm);
  return 0;
}

/* Calls of no elements, every rank's alike (NCCL takes them as no-ops): they
 * reach NCCL as they are, even where GRADCOMP_MIN_ELEMENTS=0 makes every
 * other call eligible, so they never start a set-up. */
static int empty(void) {
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  CALL(a, b, 0, ncclFloat32, ncclSum, comm, stream);
  RS(a, b, 0, ncclBfloat16, ncclAvg, comm, stream);
  DESTROY(comm);
  return 0;
}

/* Three communicators whose set-ups fail: 0x1000 and 0x1200 for the same
 * reason (no GPU), 0x1100 for another (the test makes NCCL unable to tell its
 * size). Each call reaches NCCL unchanged; a warning per reason. */
static int setupReasons(void) {
  const ncclComm_t comm[3] = {(ncclComm_t)(uintptr_t)0x1000, (ncclComm_t)(uintptr_t)0x1100,
                              (ncclComm_t)(uintptr_t)0x1200};
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  for (int i = 0; i < 3; ++i) CALL(a, a, 1 << 20, ncclFloat32, ncclSum, comm[i], stream);
  for (int i = 0; i < 3; ++i) {
    DESTROY(comm[i]);
  }
  return 0;
}

/* NCCL calls made at exit, from an atexit handler (as a framework's teardown
 * in a static destructor), after exit() destroyed the thread's thread_local
 * objects: a group with an eligible call, which gradcomp defers. The heap
 * blocks the allocator hands out at that point (all small sizes, the ones
 * freed last first) are taken and filled with a pattern before the calls: a
 * block changed after them was written through a freed pointer. */
#define AT_EXIT_BLOCKS 64
#define AT_EXIT_SIZES 32
static void atExitCalls(void) {
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1200; /* not yet set up: its call is deferred */
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  unsigned char* blocks[AT_EXIT_SIZES][AT_EXIT_BLOCKS];
  for (int s = 0; s < AT_EXIT_SIZES; ++s) {
    for (int i = 0; i < AT_EXIT_BLOCKS; ++i) {
      blocks[s][i] = malloc(16 * (size_t)(s + 1));
      if (blocks[s][i] != NULL) memset(blocks[s][i], 0xA5, 16 * (size_t)(s + 1));
    }
  }
  const int deferGroupCalls = 1;
  int failed = 0;
  do {
    if (ncclGroupStart() != ncclSuccess) {
      failed = 1;
      break;
    }
    EXPECT("GroupStart");
    if (allReduce(deferGroupCalls, a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream) ||
        allReduce(0, a, a, 1000, ncclInt32, ncclSum, (ncclComm_t)(uintptr_t)0x1100, stream)) {
      failed = 1;
      break;
    }
    if (ncclGroupEnd() != ncclSuccess) {
      failed = 1;
      break;
    }
    EXPECT("GroupEnd");
    flushDeferred();
  } while (0);
  for (int s = 0; s < AT_EXIT_SIZES; ++s) {
    for (int i = 0; i < AT_EXIT_BLOCKS; ++i) {
      if (blocks[s][i] == NULL) continue;
      for (size_t b = 0; b < 16 * (size_t)(s + 1); ++b) {
        if (blocks[s][i][b] != 0xA5) {
          fprintf(stderr, "a heap block of %d bytes the program owns was overwritten at exit\n",
                  16 * (s + 1));
          failed = 1;
          break;
        }
      }
    }
  }
  if (!failed) {
    for (int s = 0; s < AT_EXIT_SIZES; ++s) {
      for (int i = 0; i < AT_EXIT_BLOCKS; ++i) free(blocks[s][i]);
    }
  }
  if (failed) {
    fprintf(stderr, "the calls at exit failed\n");
    fflush(stdout);
    _Exit(1);
  }
}

/* The same calls once in main (every thread_local of the path is in use), then at exit. */
static int atExit(void) {
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  const int deferGroupCalls = 1;
  GROUP_START();
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream);
  CALL(a, a, 1000, ncclInt32, ncclSum, (ncclComm_t)(uintptr_t)0x1100, stream);
  GROUP_END();
  flushDeferred();
  if (atexit(atExitCalls) != 0) return 1;
  return 0;
}

/* A group whose end NCCL fails (the test sets FAKE_NCCL_GROUP_FAIL=1): NCCL
 * discards every call of the group, so its eligible calls, deferred by
 * gradcomp, must not run after it either; the end answers NCCL's error. A
 * call after the group runs as usual. */
/* NCCL runs a communicator's calls in program order: a call gradcomp does not
 * compress, made in a group after an eligible call of its communicator was
 * deferred, reaches NCCL after that call, not at the group's end before it
 * (an in-place Sum, then a Max of the same buffer). Another communicator's
 * calls stay in the group. */
static int groupOrder(void) {
  const int deferGroupCalls = groupCallsDeferred();
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  ncclComm_t other = (ncclComm_t)(uintptr_t)0x1100;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  GROUP_START();
  CALL(a, a, 1 << 20, ncclFloat32, ncclMax, comm, stream);
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream);
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, ncclMax, comm, stream);
  CALL(b, b, 1 << 20, ncclInt32, ncclSum, other, stream);
  CALL_IN_GROUP(b, b, 1 << 20, ncclFloat32, ncclSum, other, stream);
  GROUP_END();
  flushDeferred();
  DESTROY(comm);
  DESTROY(other);
  return 0;
}

/* Datatypes and ops gradcomp does not compress reach NCCL unchanged (the
 * stand-in takes them all; the real NCCL refuses those it does not know):
 * values C++'s enums cannot hold, which the interposer reads as ints (a
 * datatype of -1, 99 or INT_MIN, an op of -1 or INT_MIN), an op NCCL may
 * have made (ncclRedOpCreatePreMulSum's handles: ncclNumOps, 99), and the
 * types it leaves alone (int8, uint64, fp8, a newer NCCL's 12). In a group
 * after an eligible call of their communicator was deferred, the values
 * C++ cannot hold reach NCCL at once (it refuses them as they come); the
 * others keep their place behind the deferred call. */
/* ncclRedOpDestroy of an op C++'s enum cannot hold (-1, INT_MIN): NCCL gets
 * it unchanged, at once (in a group too), and refuses it. */
static int destroyBadOps(ncclComm_t comm) {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 11, 0)
  const int ops[] = {-1, INT_MIN};
  size_t i;
  for (i = 0; i < sizeof ops / sizeof ops[0]; ++i) {
    const ncclResult_t r = ncclRedOpDestroy(asOp(ops[i]), comm);
    EXPECT("RedOpDestroy refused: op=%d comm=%p", ops[i], (void*)comm);
    if (r != ncclInvalidArgument) {
      fprintf(stderr, "ncclRedOpDestroy of op %d returned %d, expected ncclInvalidArgument\n",
              ops[i], (int)r);
      return 1;
    }
  }
#else
  (void)comm;
#endif
  return 0;
}

static int badEnums(void) {
  const int deferGroupCalls = groupCallsDeferred();
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  const int badOps[] = {-1, INT_MIN, ncclNumOps, 99};
  size_t i;
  for (i = 0; i < NUM_BAD_NCCL_TYPES; ++i) {
    CALL(a, b, 1 << 20, asType(kBadNcclTypes[i]), ncclSum, comm, stream);
    CALL(a, b, 1 << 20, asType(kBadNcclTypes[i]), ncclAvg, comm, stream);
    RS(a, b, 1 << 20, asType(kBadNcclTypes[i]), ncclSum, comm, stream);
  }
  for (i = 0; i < sizeof badOps / sizeof badOps[0]; ++i) {
    CALL(a, a, 1 << 20, ncclFloat32, asOp(badOps[i]), comm, stream);
    RS(a, b, 1 << 20, ncclBfloat16, asOp(badOps[i]), comm, stream);
  }
  CALL(a, b, 1 << 20, asType(-1), asOp(INT_MIN), comm, stream);
  if (destroyBadOps(comm)) return 1;
  GROUP_START();
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream);
  CALL(a, a, 1 << 20, asType(99), ncclSum, comm, stream);
  CALL(a, a, 1 << 20, ncclFloat32, asOp(-1), comm, stream);
  if (destroyBadOps(comm)) return 1;
  RS(a, b, 1 << 20, asType(INT_MIN), ncclSum, comm, stream);
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, asOp(99), comm, stream);
  CALL_IN_GROUP(a, a, 1 << 20, asType(ncclNumTypes), ncclSum, comm, stream);
  CALL_IN_GROUP(a, a, 1 << 20, ncclInt8, ncclSum, comm, stream);
  GROUP_END();
  flushDeferred();
  DESTROY(comm);
  return 0;
}

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 11, 0)
/* A call with an op ncclRedOpCreatePreMulSum made, and the line NCCL must
 * have received for it (the stand-in adds the op's scalar). */
static int userOpCall(int deferIt, Collective coll, const void* s, void* r, size_t n,
                      ncclDataType_t t, ncclRedOp_t op, ncclComm_t c, cudaStream_t st,
                      const char* scalar) {
  const int rs = coll == COLL_RS;
  ncclResult_t res =
      rs ? ncclReduceScatter(s, r, n, t, op, c, st) : ncclAllReduce(s, r, n, t, op, c, st);
  if (settle(c, res) != ncclSuccess) {
    fprintf(stderr, "%s with a pre-multiplied sum op %d returned %d\n",
            rs ? "ncclReduceScatter" : "ncclAllReduce", (int)op, (int)res);
    return 1;
  }
  char line[256];
  snprintf(line, sizeof line, rs ? RS_LINE_FMT " scalar=%s" : LINE_FMT " scalar=%s", s, r, n,
           (int)t, (int)op, (void*)c, (void*)st, scalar);
  if (deferIt) {
    snprintf(deferred[numDeferred++], sizeof(deferred[0]), "%s", line);
  } else {
    EXPECT("%s", line);
  }
  return 0;
}

/* Pre-multiplied sums (PyTorch's ReduceOp.PREMUL_SUM, and its AVG on older
 * NCCLs): never compressed, they reach NCCL unchanged. NCCL reads the op at
 * the call, so a program may destroy it as soon as the call returns (NCCL's
 * ncclRedOpDestroy), inside its group too, as PyTorch does; a call the
 * preload deferred to the group's end (behind the communicator's deferred
 * float Sum) must still get its own op there, not a destroyed one, nor the
 * one NCCL hands out next in its place. The test says whether the group's
 * float Sum is deferred (GC_TEST_GROUP_CALLS_DEFERRED=1). */
static int preMulSum(void) {
  const int deferGroupCalls = groupCallsDeferred();
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  void* devScalar = (void*)(uintptr_t)0x7f0020000000ull;
  float half = 0.5f, quarter = 0.25f;
  char dev[32];
  snprintf(dev, sizeof dev, "dev:%p", devScalar);
  ncclRedOp_t op, op2;
  /* Outside a group: the call reaches NCCL at once, then the op goes. */
  CHECK(ncclRedOpCreatePreMulSum(&op, &half, ncclFloat32, ncclScalarHostImmediate, comm));
  EXPECT("RedOpCreatePreMulSum scalar=0.5 type=%d comm=%p op=%d", (int)ncclFloat32, (void*)comm,
         (int)op);
  if (userOpCall(0, COLL_AR, a, a, 1 << 20, ncclFloat32, op, comm, stream, "0.5")) return 1;
  if (userOpCall(0, COLL_RS, a, b, 1 << 20, ncclFloat32, op, comm, stream, "0.5")) return 1;
  CHECK(ncclRedOpDestroy(op, comm));
  EXPECT("RedOpDestroy op=%d comm=%p", (int)op, (void*)comm);
  /* In a group, behind the communicator's float Sum: each op is destroyed
   * right after its call, and the next one made may take its handle. */
  GROUP_START();
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream);
  CHECK(ncclRedOpCreatePreMulSum(&op, &quarter, ncclFloat32, ncclScalarHostImmediate, comm));
  EXPECT("RedOpCreatePreMulSum scalar=0.25 type=%d comm=%p op=%d", (int)ncclFloat32, (void*)comm,
         (int)op);
  if (userOpCall(deferGroupCalls, COLL_AR, b, b, 1 << 20, ncclFloat32, op, comm, stream, "0.25"))
    return 1;
  CHECK(ncclRedOpDestroy(op, comm));
  if (!deferGroupCalls) EXPECT("RedOpDestroy op=%d comm=%p", (int)op, (void*)comm);
  CHECK(ncclRedOpCreatePreMulSum(&op2, devScalar, ncclFloat32, ncclScalarDevice, comm));
  EXPECT("RedOpCreatePreMulSum scalar=%s type=%d comm=%p op=%d", dev, (int)ncclFloat32, (void*)comm,
         (int)op2);
  if (userOpCall(deferGroupCalls, COLL_RS, a, b, 1 << 20, ncclFloat32, op2, comm, stream, dev))
    return 1;
  CHECK(ncclRedOpDestroy(op2, comm));
  if (!deferGroupCalls) EXPECT("RedOpDestroy op=%d comm=%p", (int)op2, (void*)comm);
  GROUP_END();
  flushDeferred();
  if (deferGroupCalls) {
    EXPECT("RedOpDestroy op=%d comm=%p", (int)op, (void*)comm);
    EXPECT("RedOpDestroy op=%d comm=%p", (int)op2, (void*)comm);
  }
  DESTROY(comm);
  return 0;
}
#endif

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
/* ncclRedOpDestroy in a group behind the communicator's deferred float Sum,
 * where only the destroy of an op a deferred call uses waits for the group's
 * end (preMulSum). NCCL refuses a builtin op's destroy at once
 * (ncclInvalidArgument), and the group's calls then run and its end answers
 * ncclSuccess; an op destroyed twice is refused at the second destroy, as
 * NCCL refuses a dead op's, saying why, and reaches NCCL once. (Until
 * 2026-12-07 both waited: ncclSuccess at once, and the group's end failed
 * after all its calls ran.) The test says whether the float Sum is deferred
 * (GC_TEST_GROUP_CALLS_DEFERRED=1). */
static int redOpDestroys(void) {
  const int deferGroupCalls = groupCallsDeferred();
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  const ncclRedOp_t builtins[] = {ncclSum, ncclAvg, ncclMax};
  float half = 0.5f;
  ncclRedOp_t op;
  ncclResult_t r;
  size_t i;
  GROUP_START();
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream);
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, ncclAvg, comm, stream);
  for (i = 0; i < sizeof builtins / sizeof builtins[0]; ++i) {
    r = ncclRedOpDestroy(builtins[i], comm);
    EXPECT("RedOpDestroy refused: op=%d comm=%p", (int)builtins[i], (void*)comm);
    if (r != ncclInvalidArgument) {
      fprintf(stderr,
              "ncclRedOpDestroy of builtin op %d in the group returned %d, expected "
              "ncclInvalidArgument\n",
              (int)builtins[i], (int)r);
      return 1;
    }
  }
  CHECK(ncclRedOpCreatePreMulSum(&op, &half, ncclFloat32, ncclScalarHostImmediate, comm));
  EXPECT("RedOpCreatePreMulSum scalar=0.5 type=%d comm=%p op=%d", (int)ncclFloat32, (void*)comm,
         (int)op);
  if (userOpCall(deferGroupCalls, COLL_AR, a, a, 1 << 20, ncclFloat32, op, comm, stream, "0.5"))
    return 1;
  CHECK(ncclRedOpDestroy(op, comm));
  if (!deferGroupCalls) EXPECT("RedOpDestroy op=%d comm=%p", (int)op, (void*)comm);
  r = ncclRedOpDestroy(op, comm);
  if (!deferGroupCalls) EXPECT("RedOpDestroy refused: op=%d comm=%p", (int)op, (void*)comm);
  const char* last = ncclGetLastError(comm);
  if (r != ncclInvalidArgument ||
      (deferGroupCalls && (last == NULL || strncmp(last, "gradcomp: ", 10) != 0 ||
                           strstr(last, "already destroyed") == NULL))) {
    fprintf(stderr,
            "a second ncclRedOpDestroy of op %d returned %d (expected "
            "ncclInvalidArgument), last error \"%s\"\n",
            (int)op, (int)r, last ? last : "(null)");
    return 1;
  }
  /* An op NCCL never made (the stand-in takes it in a call, not in a
   * destroy): its destroy waits behind the call as well, and NCCL's refusal
   * of it at the end leaves the end's ncclSuccess (the program's destroy
   * already returned, and every call of the group ran). */
  CALL_IN_GROUP(a, a, 1 << 20, ncclFloat32, asOp(99), comm, stream);
  CHECK(ncclRedOpDestroy(asOp(99), comm));
  if (!deferGroupCalls) EXPECT("RedOpDestroy refused: op=99 comm=%p", (void*)comm);
  GROUP_END();
  flushDeferred();
  if (deferGroupCalls) {
    EXPECT("RedOpDestroy op=%d comm=%p", (int)op, (void*)comm);
    EXPECT("RedOpDestroy refused: op=99 comm=%p", (void*)comm);
  }
  DESTROY(comm);
  return 0;
}
#endif

/* Calls NCCL refuses (FAKE_NCCL_CHECK_ARGS=1) for a datatype or op C++'s
 * enum cannot hold, on a communicator gradcomp never saw otherwise: they
 * reach NCCL unchanged, and NCCL's answer comes back, without making the
 * communicator an entry (no summary names it at exit). */
static int refusedUnknown(void) {
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x3000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  ncclResult_t res = ncclAllReduce(a, a, 1 << 20, asType(-1), ncclSum, comm, stream);
  if (res != ncclInvalidArgument) {
    fprintf(stderr, "ncclAllReduce(type=-1) returned %d, not NCCL's refusal\n", (int)res);
    return 1;
  }
  EXPECT("AllReduce refused: type=-1 op=%d", (int)ncclSum);
  res = ncclReduceScatter(a, b, 1 << 20, ncclFloat32, asOp(-1), comm, stream);
  if (res != ncclInvalidArgument) {
    fprintf(stderr, "ncclReduceScatter(op=-1) returned %d, not NCCL's refusal\n", (int)res);
    return 1;
  }
  EXPECT("ReduceScatter refused: type=%d op=-1", (int)ncclFloat32);
  return 0;
}

static int groupFails(void) {
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  cudaStream_t stream = (cudaStream_t)(uintptr_t)0x2000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  char* b = (char*)(uintptr_t)0x7f0010000000ull;
  GROUP_START();
  CALL(a, a, 1000, ncclInt32, ncclSum, comm, stream);
  CHECK(ncclAllReduce(b, b, 1 << 20, ncclFloat32, ncclSum, comm, stream));
  const ncclResult_t r = ncclGroupEnd();
  EXPECT("GroupEnd");
  if (r != ncclInternalError) {
    fprintf(stderr, "the failed group's end returned %d, expected ncclInternalError\n", (int)r);
    return 1;
  }
  CALL(a, a, 1 << 20, ncclFloat32, ncclSum, comm, stream);
  DESTROY(comm);
  return 0;
}

/* Children forked while another thread is inside an interposed call, as a
 * trainer's DataLoader workers and subprocesses are, each leaving with exit()
 * (which runs the preload's exit handlers): none may wait forever for a lock
 * the other thread held at the fork, nor report the parent's communicators
 * as its own. Each child gets 10 s; a child still there is killed and counted
 * (three end the test).
 * The calls are not printed: the test runs it without the stand-in's log. */
static volatile int forkDone = 0;
static void* forkCaller(void* arg) {
  ncclComm_t comm = (ncclComm_t)arg;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  while (!forkDone) {
    if (ncclAllReduce(a, a, 1000, ncclInt32, ncclSum, comm, (cudaStream_t)(uintptr_t)0x2000) !=
        ncclSuccess) {
      return (void*)1;
    }
  }
  return NULL;
}

static int forkExit(void) {
  ncclComm_t comm = (ncclComm_t)(uintptr_t)0x1000;
  char* a = (char*)(uintptr_t)0x7f0000000000ull;
  CHECK(ncclAllReduce(a, a, 1 << 20, ncclFloat32, ncclSum, comm, (cudaStream_t)(uintptr_t)0x2000));
  pthread_t caller;
  if (pthread_create(&caller, NULL, forkCaller, comm) != 0) return 1;
  fflush(stdout);
  fflush(stderr);
  int stuck = 0;
  for (int i = 0; i < 200; ++i) {
    const pid_t child = fork();
    if (child < 0) break;
    if (child == 0) exit(0);
    if (!gcReapChildWithin10s(child)) {
      if (++stuck == 3) break; /* enough to fail, without 10 s more per child */
    }
  }
  forkDone = 1;
  void* failed = NULL;
  pthread_join(caller, &failed);
  if (stuck > 0) fprintf(stderr, "%d forked children did not exit\n", stuck);
  if (failed != NULL) fprintf(stderr, "an ncclAllReduce of the calling thread failed\n");
  return stuck > 0 || failed != NULL;
}

__attribute__((visibility("default"))) int gcTestRunCalls(const char* mode) {
  int rc;
  if (strcmp(mode, "basic") == 0) {
    rc = basic();
  } else if (strcmp(mode, "multidevice") == 0) {
    rc = multiDevice();
  } else if (strcmp(mode, "small_rs") == 0) {
    rc = smallReduceScatters();
  } else if (strcmp(mode, "abort_deferred") == 0) {
    rc = abortDeferred(0);
  } else if (strcmp(mode, "group_order") == 0) {
    return groupOrder();
  } else if (strcmp(mode, "bad_enums") == 0) {
    rc = badEnums();
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 11, 0)
  } else if (strcmp(mode, "premulsum") == 0) {
    rc = preMulSum();
#endif
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
  } else if (strcmp(mode, "redop_destroys") == 0) {
    rc = redOpDestroys();
#endif
  } else if (strcmp(mode, "refused_unknown") == 0) {
    rc = refusedUnknown();
  } else if (strcmp(mode, "empty") == 0) {
    rc = empty();
  } else if (strcmp(mode, "setup_reasons") == 0) {
    rc = setupReasons();
  } else if (strcmp(mode, "at_exit") == 0) {
    rc = atExit();
  } else if (strcmp(mode, "group_fails") == 0) {
    rc = groupFails();
  } else if (strcmp(mode, "fork_exit") == 0) {
    rc = forkExit();
  } else if (strcmp(mode, "settings_changed") == 0) {
    rc = settingsChanged();
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
  } else if (strcmp(mode, "nonblocking") == 0) {
    rc = nonblocking();
  } else if (strcmp(mode, "nocolor") == 0) {
    rc = nocolor();
  } else if (strcmp(mode, "env_changed") == 0) {
    rc = envChanged();
  } else if (strcmp(mode, "destroy_refused") == 0) {
    rc = destroyRefused();
  } else if (strcmp(mode, "slot_reused") == 0) {
    rc = slotReused();
  } else if (strcmp(mode, "last_error_async") == 0) {
    rc = lastErrorAsync();
#endif
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
  } else if (strcmp(mode, "comm_calls_in_group") == 0) {
    rc = commCallsInGroup();
  } else if (strcmp(mode, "finalize_after_failure") == 0) {
    rc = finalizeAfterFailure();
  } else if (strcmp(mode, "multidevice_comm_calls") == 0) {
    rc = multiDeviceCommCalls();
  } else if (strcmp(mode, "destroy_after_failed_group") == 0) {
    rc = destroyAfterFailedGroup();
  } else if (strcmp(mode, "finalize_twice_in_group") == 0) {
    rc = finalizeTwiceInGroup();
  } else if (strcmp(mode, "finalize_after_failed_group") == 0) {
    rc = finalizeAfterFailedGroup();
  } else if (strcmp(mode, "finalize_refused_in_group") == 0) {
    rc = finalizeRefusedInGroup(0);
  } else if (strcmp(mode, "finalize_refused_in_simulated_group") == 0) {
    rc = finalizeRefusedInGroup(1);
#endif
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
  } else if (strcmp(mode, "child_in_group") == 0) {
    rc = childInGroup();
#endif
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0)
  } else if (strcmp(mode, "revoke_in_held_destroy") == 0) {
    rc = revokeInHeldDestroy();
  } else if (strcmp(mode, "revoked") == 0) {
    rc = revoked();
  } else if (strcmp(mode, "revoke_answers") == 0) {
    rc = revokeAnswers();
  } else if (strcmp(mode, "shrink_abort") == 0) {
    rc = shrinkAbort();
#endif
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 22, 0)
  } else if (strcmp(mode, "simulate") == 0) {
    rc = simulate();
  } else if (strcmp(mode, "simulate_comm_calls") == 0) {
    rc = simulateCommCalls();
  } else if (strcmp(mode, "simulate_fails") == 0) {
    rc = simulateFails();
  } else if (strcmp(mode, "simulate_missing") == 0) {
    rc = simulateMissing();
  } else if (strcmp(mode, "abort_deferred_simulate") == 0) {
    rc = abortDeferred(1);
#endif
  } else {
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
  }
  fflush(stdout);
  return rc;
}
