/* A stand-in libnccl.so.2 for the LD_PRELOAD tests: like the real library it
 * exports every function twice, a strong pnccl* and a weak nccl* alias, and it
 * records every call it receives (one line each) to $FAKE_NCCL_LOG. */
#include <nccl.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nccl_newer.h"

static void record(const char* fmt, ...) {
  const char* path = getenv("FAKE_NCCL_LOG");
  if (!path) return;
  FILE* f = fopen(path, "a");
  if (!f) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fputc('\n', f);
  fclose(f);
}

/* FAKE_NCCL_FAIL=1 makes every data call fail, to test error paths. */
static ncclResult_t result(void) {
  const char* v = getenv("FAKE_NCCL_FAIL");
  return v && v[0] == '1' ? ncclRemoteError : ncclSuccess;
}

#define ALIAS(name) __attribute__((weak, alias("p" #name)))

/* The version it stands for: its header's, or, built as an NCCL older than
 * 2.22 (FAKE_NCCL_NO_SIMULATE), 2.21.5, whose finalize counts only once its
 * job ran (init.cc, commDestroySync), never where a failed group's end
 * freed the job. */
ncclResult_t pncclGetVersion(int* version) {
  if (version == NULL) return ncclInvalidArgument;
#ifdef FAKE_NCCL_NO_SIMULATE
  *version = NCCL_VERSION(2, 21, 5);
#else
  *version = NCCL_VERSION_CODE;
#endif
  return ncclSuccess;
}
ncclResult_t ncclGetVersion(int*) ALIAS(ncclGetVersion);

/* NCCL's last error (ncclGetLastError): the sentence of the stand-in's last
 * refusal of a call's arguments, as NCCL's thread keeps its last warning. */
static char lastError[256] = "";
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
const char* pncclGetLastError(ncclComm_t c) {
  (void)c;
  return lastError;
}
const char* ncclGetLastError(ncclComm_t) ALIAS(ncclGetLastError);
#endif

/* The open group's nesting level and the data calls it holds, so that
 * ncclGroupSimulateEnd can say what it simulated (the tests are one thread). */
static int groupDepth = 0, groupCalls = 0;
static void held(void) {
  if (groupDepth > 0) ++groupCalls;
}

/* As NCCL's ncclGroupErrCheck (group.h, every version with groups): a call
 * the stand-in refuses inside a group (its argument check, a second
 * finalize) makes the refusal the group's error, and the group's outermost
 * end fails with it before it runs anything of the group (group.cc,
 * ncclGroupEndInternal). */
static ncclResult_t groupError = ncclSuccess;
static ncclResult_t refuseInGroup(ncclResult_t r) {
  if (groupDepth > 0 && groupError == ncclSuccess) groupError = r;
  return r;
}

static int isNonBlocking(ncclComm_t c);

/* A non-blocking communicator's work as NCCL enqueues it: a data call
 * outside a group (or the end of a group holding one) answers ncclInProgress,
 * and the communicator's state, read with ncclCommGetAsyncError, stays
 * ncclInProgress for FAKE_NCCL_POLLS reads (default 2), then becomes
 * ncclSuccess (FAKE_NCCL_ASYNC_FAIL=1: ncclRemoteError, an error NCCL's
 * thread met). Until then NCCL refuses the communicator's next call with
 * ncclInvalidArgument ("Attempt to use communicator before the previous
 * operation returned ncclSuccess"), which the stand-in records.
 * FAKE_NCCL_LOG_POLLS=1 records every read. */
static struct {
  ncclComm_t comm;
  int polls;
  ncclResult_t end;
} busy[64];
static int numBusy = 0;
static ncclComm_t groupComms[64];
static int numGroupComms = 0;

static int busyIndex(ncclComm_t c) {
  for (int i = 0; i < numBusy; ++i) {
    if (busy[i].comm == c) return i;
  }
  return -1;
}

static void startAsync(ncclComm_t c) {
  const char* v = getenv("FAKE_NCCL_POLLS");
  const char* f = getenv("FAKE_NCCL_ASYNC_FAIL");
  int i = busyIndex(c);
  if (i < 0) {
    if (numBusy == 64) return;
    i = numBusy++;
  }
  busy[i].comm = c;
  busy[i].polls = v ? atoi(v) : 2;
  busy[i].end = f && f[0] == '1' ? ncclRemoteError : ncclSuccess;
}

/* What NCCL's ncclCommEnsureReady answers for c before the call `what`
 * (recorded unless ncclSuccess): ncclInvalidArgument while it is in
 * progress, then the error its thread met, which sticks, as in NCCL. */
static ncclResult_t readiness(const char* what, ncclComm_t c) {
  const int i = busyIndex(c);
  if (i < 0) return ncclSuccess;
  if (busy[i].polls > 0) {
    record("%s refused: comm=%p is still in progress", what, (void*)c);
    return ncclInvalidArgument;
  }
  if (busy[i].end != ncclSuccess) {
    record("%s refused: comm=%p has error %d", what, (void*)c, (int)busy[i].end);
    return busy[i].end;
  }
  return ncclSuccess;
}

/* Communicators finalized (ncclCommFinalize) and not destroyed or aborted
 * since. NCCL itself takes a data call after the finalize (its proxy is
 * stopped by then, so on a network transport the call never completes); the
 * stand-in refuses it (ncclInvalidUsage, recorded, with a last error), so
 * that the tests see a call that came after its communicator's finalize. */
static ncclComm_t finalizedComms[64];
static int numFinalized = 0;

static int finalizedIndex(ncclComm_t c) {
  for (int i = 0; i < numFinalized; ++i) {
    if (finalizedComms[i] == c) return i;
  }
  return -1;
}

/* Communicators revoked (ncclCommRevoke) and not destroyed or aborted since,
 * as NCCL 2.28.7 and later keep them (init.cc: comm->revokedFlag, and
 * finalizeCalled set too, so they are among the finalized ones): a data
 * call is refused (enqueue.cc, ncclEnqueueCheck: ncclInvalidUsage, warning
 * "<op>: communicator was revoked"), in a group too, where the refusal is
 * the group's error. */
static ncclComm_t revokedComms[64];
static int numRevoked = 0;

static int revokedIndex(ncclComm_t c) {
  for (int i = 0; i < numRevoked; ++i) {
    if (revokedComms[i] == c) return i;
  }
  return -1;
}

/* Communicators destroyed in a group that has not run yet, or whose end
 * failed (NCCL then frees the destroy's job unrun, and the communicator
 * lives on): NCCL set their destroyFlag at the destroy's call, and refuses
 * a revoke of them (2.28.7 and later, init.cc). A group that ran forgets
 * them; a later destroy or abort does too. */
static ncclComm_t destroyingComms[64];
static int numDestroying = 0;

static int destroyingIndex(ncclComm_t c) {
  for (int i = 0; i < numDestroying; ++i) {
    if (destroyingComms[i] == c) return i;
  }
  return -1;
}

/* FAKE_NCCL_CHECK_ARGS=1: a data call's arguments are checked as NCCL's
 * own checks do (admit, badArgs). */
static int checkArgs(void) {
  const char* v = getenv("FAKE_NCCL_CHECK_ARGS");
  return v != NULL && v[0] == '1';
}

/* Before a data call of c: 0 to go on, else the refusal to return. In a
 * group, the communicator is noted for the group's end. */
static ncclResult_t admit(const char* what, ncclComm_t c) {
  /* FAKE_NCCL_CHECK_ARGS=1: no communicator is refused, as NCCL's CommCheck
   * does (enqueue.cc, ncclEnqueueCheck), in a group as the group's error. */
  if (c == NULL && checkArgs()) {
    record("%s refused: no comm", what);
    snprintf(lastError, sizeof lastError, "%s : comm argument is NULL", what);
    return refuseInGroup(ncclInvalidArgument);
  }
  if (revokedIndex(c) >= 0) {
    record("%s refused: comm=%p is revoked", what, (void*)c);
    snprintf(lastError, sizeof lastError, "%s: communicator was revoked", what);
    return refuseInGroup(ncclInvalidUsage);
  }
  if (finalizedIndex(c) >= 0) {
    record("%s refused: comm=%p is finalized", what, (void*)c);
    snprintf(lastError, sizeof lastError, "%s: comm %p is finalized", what, (void*)c);
    return ncclInvalidUsage;
  }
  if (!isNonBlocking(c)) return ncclSuccess;
  const ncclResult_t ready = readiness(what, c);
  if (ready != ncclSuccess) return ready;
  if (groupDepth > 0) {
    int seen = 0;
    for (int j = 0; j < numGroupComms; ++j) seen = seen || groupComms[j] == c;
    if (!seen && numGroupComms < 64) groupComms[numGroupComms++] = c;
  }
  return ncclSuccess;
}

/* FAKE_NCCL_CHECK_ARGS=1: a datatype outside 0..ncclNumTypes-1 or a
 * negative op is refused with ncclInvalidArgument before anything runs, as
 * NCCL's own argument check does (recorded as refused). */
static int badArgs(const char* what, ncclDataType_t t, ncclRedOp_t op) {
  if (!checkArgs()) return 0;
  if ((int)t >= 0 && (int)t < (int)ncclNumTypes && (int)op >= 0) return 0;
  record("%s refused: type=%d op=%d", what, (int)t, (int)op);
  snprintf(lastError, sizeof lastError, "%s: invalid type %d or op %d", what, (int)t, (int)op);
  (void)refuseInGroup(ncclInvalidArgument);
  return 1;
}

/* ncclRedOpCreatePreMulSum's ops, as NCCL keeps them per communicator: the
 * handle is ncclNumOps + a slot, and a destroyed op's slot is the next one
 * handed out (NCCL's free list), so a call made with a destroyed handle would
 * get another op's scalar. A data call naming an op the stand-in made and
 * destroyed is refused (ncclInvalidArgument, recorded); one naming a live op
 * is recorded with its scalar (" scalar=", the host value read at creation as
 * NCCL does, or "dev:" and the device pointer). Handles it never made pass as
 * before. */
#define FAKE_USER_OPS 8
static struct {
  ncclComm_t comm;
  int live, made;
  char scalar[40];
} userOps[FAKE_USER_OPS];

static int userOpSlot(ncclRedOp_t op) {
  if ((int)op < (int)ncclNumOps) return -1; /* a builtin op, or garbage (INT_MIN) */
  const int i = (int)op - (int)ncclNumOps;
  return i < FAKE_USER_OPS && userOps[i].made ? i : -1;
}

/* 1 (recorded) when `op` is an op the stand-in made and destroyed. */
static int deadOp(const char* what, ncclRedOp_t op, ncclComm_t c) {
  const int i = userOpSlot(op);
  if (i < 0 || (userOps[i].live && userOps[i].comm == c)) return 0;
  record("%s refused: op=%d is not a live op of comm=%p", what, (int)op, (void*)c);
  snprintf(lastError, sizeof lastError, "%s: op %d is not a live op of comm %p", what, (int)op,
           (void*)c);
  return 1;
}

static const char* opSuffix(ncclRedOp_t op) {
  static char buf[64];
  const int i = userOpSlot(op);
  if (i < 0) return "";
  snprintf(buf, sizeof buf, " scalar=%s", userOps[i].scalar);
  return buf;
}

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 11, 0)
ncclResult_t pncclRedOpCreatePreMulSum(ncclRedOp_t* op, void* scalar, ncclDataType_t t,
                                       ncclScalarResidence_t residence, ncclComm_t c) {
  int i = 0;
  while (i < FAKE_USER_OPS && userOps[i].live) ++i;
  if (i == FAKE_USER_OPS || op == NULL || scalar == NULL) return ncclInvalidArgument;
  userOps[i].comm = c;
  userOps[i].live = userOps[i].made = 1;
  if (residence == ncclScalarHostImmediate && t == ncclFloat32) {
    snprintf(userOps[i].scalar, sizeof userOps[i].scalar, "%g", (double)*(const float*)scalar);
  } else {
    snprintf(userOps[i].scalar, sizeof userOps[i].scalar, "dev:%p", scalar);
  }
  *op = (ncclRedOp_t)((int)ncclNumOps + i);
  record("RedOpCreatePreMulSum scalar=%s type=%d comm=%p op=%d", userOps[i].scalar, (int)t,
         (void*)c, (int)*op);
  return ncclSuccess;
}
ncclResult_t ncclRedOpCreatePreMulSum(ncclRedOp_t*, void*, ncclDataType_t, ncclScalarResidence_t,
                                      ncclComm_t) ALIAS(ncclRedOpCreatePreMulSum);

ncclResult_t pncclRedOpDestroy(ncclRedOp_t op, ncclComm_t c) {
  const int i = userOpSlot(op);
  if (i < 0 || !userOps[i].live || userOps[i].comm != c) {
    record("RedOpDestroy refused: op=%d comm=%p", (int)op, (void*)c);
    return ncclInvalidArgument;
  }
  userOps[i].live = 0;
  record("RedOpDestroy op=%d comm=%p", (int)op, (void*)c);
  return ncclSuccess;
}
ncclResult_t ncclRedOpDestroy(ncclRedOp_t, ncclComm_t) ALIAS(ncclRedOpDestroy);
#endif

/* What a data call of c that was admitted answers. */
static ncclResult_t answer(ncclComm_t c, ncclResult_t r) {
  if (r != ncclSuccess || groupDepth > 0 || !isNonBlocking(c)) return r;
  startAsync(c);
  return ncclInProgress;
}

ncclResult_t pncclAllReduce(const void* s, void* r, size_t n, ncclDataType_t t, ncclRedOp_t op,
                            ncclComm_t c, cudaStream_t st) {
  const ncclResult_t refused = admit("AllReduce", c);
  if (refused != ncclSuccess) return refused;
  if (badArgs("AllReduce", t, op) || deadOp("AllReduce", op, c)) return ncclInvalidArgument;
  held();
  record("AllReduce send=%p recv=%p count=%zu type=%d op=%d comm=%p stream=%p%s", s, r, n, (int)t,
         (int)op, (void*)c, (void*)st, opSuffix(op));
  return answer(c, result());
}
ncclResult_t ncclAllReduce(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t,
                           cudaStream_t) ALIAS(ncclAllReduce);

ncclResult_t pncclReduceScatter(const void* s, void* r, size_t n, ncclDataType_t t, ncclRedOp_t op,
                                ncclComm_t c, cudaStream_t st) {
  const ncclResult_t refused = admit("ReduceScatter", c);
  if (refused != ncclSuccess) return refused;
  if (badArgs("ReduceScatter", t, op) || deadOp("ReduceScatter", op, c)) return ncclInvalidArgument;
  held();
  record("ReduceScatter send=%p recv=%p count=%zu type=%d op=%d comm=%p stream=%p%s", s, r, n,
         (int)t, (int)op, (void*)c, (void*)st, opSuffix(op));
  return answer(c, result());
}
ncclResult_t ncclReduceScatter(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t,
                               cudaStream_t) ALIAS(ncclReduceScatter);

ncclResult_t pncclAllGather(const void* s, void* r, size_t n, ncclDataType_t t, ncclComm_t c,
                            cudaStream_t st) {
  const ncclResult_t refused = admit("AllGather", c);
  if (refused != ncclSuccess) return refused;
  held();
  record("AllGather send=%p recv=%p count=%zu type=%d comm=%p stream=%p", s, r, n, (int)t, (void*)c,
         (void*)st);
  return answer(c, result());
}
ncclResult_t ncclAllGather(const void*, void*, size_t, ncclDataType_t, ncclComm_t, cudaStream_t)
    ALIAS(ncclAllGather);

ncclResult_t pncclSend(const void* s, size_t n, ncclDataType_t t, int peer, ncclComm_t c,
                       cudaStream_t st) {
  const ncclResult_t refused = admit("Send", c);
  if (refused != ncclSuccess) return refused;
  held();
  record("Send count=%zu peer=%d", n, peer);
  return answer(c, result());
}
ncclResult_t ncclSend(const void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t)
    ALIAS(ncclSend);

ncclResult_t pncclRecv(void* r, size_t n, ncclDataType_t t, int peer, ncclComm_t c,
                       cudaStream_t st) {
  const ncclResult_t refused = admit("Recv", c);
  if (refused != ncclSuccess) return refused;
  held();
  record("Recv count=%zu peer=%d", n, peer);
  return answer(c, result());
}
ncclResult_t ncclRecv(void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t) ALIAS(ncclRecv);

ncclResult_t pncclBroadcast(const void* s, void* r, size_t n, ncclDataType_t t, int root,
                            ncclComm_t c, cudaStream_t st) {
  const ncclResult_t refused = admit("Broadcast", c);
  if (refused != ncclSuccess) return refused;
  held();
  record("Broadcast send=%p recv=%p count=%zu type=%d root=%d comm=%p stream=%p", s, r, n, (int)t,
         root, (void*)c, (void*)st);
  return answer(c, result());
}
ncclResult_t ncclBroadcast(const void*, void*, size_t, ncclDataType_t, int, ncclComm_t,
                           cudaStream_t) ALIAS(ncclBroadcast);

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 19, 0)
/* ncclMemAlloc hands out made-up addresses (never dereferenced); the
 * registration calls are recorded. */
ncclResult_t pncclMemAlloc(void** p, size_t n) {
  static uintptr_t next = 0x7e0000000000ull;
  *p = (void*)next;
  next += (n + 0xfffff) & ~(uintptr_t)0xfffff;
  record("MemAlloc size=%zu ptr=%p", n, *p);
  return ncclSuccess;
}
ncclResult_t ncclMemAlloc(void**, size_t) ALIAS(ncclMemAlloc);

ncclResult_t pncclMemFree(void* p) {
  record("MemFree ptr=%p", p);
  return ncclSuccess;
}
ncclResult_t ncclMemFree(void*) ALIAS(ncclMemFree);

ncclResult_t pncclCommRegister(const ncclComm_t c, void* b, size_t n, void** h) {
  *h = (void*)((uintptr_t)b ^ (uintptr_t)c);
  record("CommRegister comm=%p buff=%p size=%zu", (void*)c, b, n);
  return ncclSuccess;
}
ncclResult_t ncclCommRegister(const ncclComm_t, void*, size_t, void**) ALIAS(ncclCommRegister);

ncclResult_t pncclCommDeregister(const ncclComm_t c, void* h) {
  record("CommDeregister comm=%p handle=%p", (void*)c, h);
  return ncclSuccess;
}
ncclResult_t ncclCommDeregister(const ncclComm_t, void*) ALIAS(ncclCommDeregister);
#endif

ncclResult_t pncclGroupStart(void) {
  record("GroupStart");
  if (groupDepth++ == 0) {
    groupCalls = numGroupComms = 0;
    groupError = ncclSuccess;
  }
  return ncclSuccess;
}
ncclResult_t ncclGroupStart(void) ALIAS(ncclGroupStart);

/* The outermost end launches the group: its non-blocking communicators'
 * work is then in progress. A group a call was refused in fails
 * (refuseInGroup). FAKE_NCCL_GROUP_FAIL=1: it fails instead
 * (ncclInternalError), as NCCL's does when a job of the group, or the
 * preparation or launch of its calls, fails: discarding every call of the
 * group, after it ran the group's finalize and destroy jobs (group.cc's
 * groupLaunch runs those first; the stand-in runs them at the call). */
ncclResult_t pncclGroupEnd(void) {
  record("GroupEnd");
  if (groupDepth == 1 && groupError != ncclSuccess) {
    groupDepth = numGroupComms = 0;
    return groupError;
  }
  const char* fail = getenv("FAKE_NCCL_GROUP_FAIL");
  if (fail != NULL && fail[0] == '1' && groupDepth > 0 && --groupDepth == 0) {
    numGroupComms = 0;
    return ncclInternalError;
  }
  if (groupDepth > 0 && --groupDepth == 0) {
    numDestroying = 0; /* the group ran: its destroys freed their communicators */
    if (numGroupComms > 0) {
      for (int i = 0; i < numGroupComms; ++i) startAsync(groupComms[i]);
      numGroupComms = 0;
      return ncclInProgress;
    }
  }
  return ncclSuccess;
}
ncclResult_t ncclGroupEnd(void) ALIAS(ncclGroupEnd);

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 22, 0) && !defined(FAKE_NCCL_NO_SIMULATE)
/* As NCCL's: only the outermost end with a simInfo simulates (the group's
 * calls never run); an inner end or a null simInfo is a plain group end. The
 * estimate is one made-up unit per call the group held. */
ncclResult_t pncclGroupSimulateEnd(ncclSimInfo_t* info) {
  if (groupDepth == 0) {
    record("GroupSimulateEnd outside a group");
    return ncclInvalidUsage;
  }
  if (--groupDepth > 0) {
    record("GroupSimulateEnd inner");
    return ncclSuccess;
  }
  /* As a plain end: a group a call was refused in fails with that refusal
   * (group.cc, ncclGroupEndInternal checks ncclGroupError first). */
  if (groupError != ncclSuccess) {
    record("GroupSimulateEnd refused: the group's error %d", (int)groupError);
    numGroupComms = 0;
    return groupError;
  }
  if (info == NULL) {
    record("GroupSimulateEnd simInfo=null");
    return ncclSuccess;
  }
  if (info->magic != 0x74685283) {
    record("GroupSimulateEnd uninitialized simInfo");
    return ncclInvalidArgument;
  }
  info->estimatedTime = (float)groupCalls;
  record("GroupSimulateEnd simulated %d calls", groupCalls);
  return ncclSuccess;
}
ncclResult_t ncclGroupSimulateEnd(ncclSimInfo_t*) ALIAS(ncclGroupSimulateEnd);
#endif

/* FAKE_NCCL_LOG_QUERIES=1 records every size and device query (each runs
 * NCCL's readiness check on the communicator), for the tests that count
 * them. */
static void recordQuery(const char* what, ncclComm_t c) {
  const char* v = getenv("FAKE_NCCL_LOG_QUERIES");
  if (v != NULL && strcmp(v, "1") == 0) record("%s comm=%p", what, (void*)c);
}

/* FAKE_NCCL_COUNT_FAIL=0xADDR: NCCL cannot tell that communicator's size
 * (ncclInternalError), so a set-up of it fails for a reason of its own. */
ncclResult_t pncclCommCount(const ncclComm_t c, int* n) {
  recordQuery("CommCount", c);
  const ncclResult_t ready = readiness("CommCount", c);
  if (ready != ncclSuccess) return ready;
  const char* bad = getenv("FAKE_NCCL_COUNT_FAIL");
  if (bad != NULL && (uintptr_t)strtoull(bad, NULL, 16) == (uintptr_t)c) return ncclInternalError;
  const char* v = getenv("FAKE_NCCL_NRANKS");
  *n = v ? atoi(v) : 4;
  return ncclSuccess;
}
ncclResult_t ncclCommCount(const ncclComm_t, int*) ALIAS(ncclCommCount);

ncclResult_t pncclCommUserRank(const ncclComm_t c, int* r) {
  const ncclResult_t ready = readiness("CommUserRank", c);
  if (ready != ncclSuccess) return ready;
  *r = 0;
  return ncclSuccess;
}
ncclResult_t ncclCommUserRank(const ncclComm_t, int*) ALIAS(ncclCommUserRank);

/* FAKE_NCCL_DEVICES=n spreads the communicators over n devices by address
 * (0x3000 on device 0, 0x3100 on 1, ...), as in a process driving n GPUs. */
ncclResult_t pncclCommCuDevice(const ncclComm_t c, int* d) {
  recordQuery("CommCuDevice", c);
  const ncclResult_t ready = readiness("CommCuDevice", c);
  if (ready != ncclSuccess) return ready;
  const char* v = getenv("FAKE_NCCL_DEVICES");
  const int n = v ? atoi(v) : 1;
  *d = n > 1 ? (int)(((uintptr_t)c >> 8) % (uintptr_t)n) : 0;
  return ncclSuccess;
}
ncclResult_t ncclCommCuDevice(const ncclComm_t, int*) ALIAS(ncclCommCuDevice);

const char* pncclGetErrorString(ncclResult_t r) {
  return r == ncclRemoteError ? "fake nccl: remote process failed" : "fake nccl error";
}
const char* ncclGetErrorString(ncclResult_t) ALIAS(ncclGetErrorString);

/* A communicator destroyed or aborted: its address may be handed out again. */
static void forget(ncclComm_t c) {
  const int i = busyIndex(c);
  if (i >= 0) busy[i] = busy[--numBusy];
  const int f = finalizedIndex(c);
  if (f >= 0) finalizedComms[f] = finalizedComms[--numFinalized];
  const int v = revokedIndex(c);
  if (v >= 0) revokedComms[v] = revokedComms[--numRevoked];
  const int d = destroyingIndex(c);
  if (d >= 0) destroyingComms[d] = destroyingComms[--numDestroying];
}

/* A test's hook, run as ncclCommDestroy begins (NULL: none): a call another
 * thread makes in the instant between the preload's release of the
 * communicator and NCCL's destroy of it, made at that instant every time. */
static void (*destroyHook)(ncclComm_t) = NULL;
void fakeNcclOnDestroy(void (*hook)(ncclComm_t)) {
  destroyHook = hook;
}

/* As NCCL's (ncclCommEnsureReady): refused while the communicator is in
 * progress, or with the error its thread met, which sticks; it stays for a
 * poll and another destroy, or for an abort. */
ncclResult_t pncclCommDestroy(ncclComm_t c) {
  if (destroyHook != NULL) destroyHook(c);
  const ncclResult_t ready = readiness("CommDestroy", c);
  if (ready != ncclSuccess) return ready;
  forget(c);
  if (groupDepth > 0 && numDestroying < 64) destroyingComms[numDestroying++] = c;
  record("CommDestroy comm=%p", (void*)c);
  return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t) ALIAS(ncclCommDestroy);

ncclResult_t pncclCommAbort(ncclComm_t c) {
  forget(c); /* freed, error or not */
  record("CommAbort comm=%p", (void*)c);
  return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t) ALIAS(ncclCommAbort);

/* As NCCL's (2.22 and later, init.cc: comm->finalizeCalled, set at the
 * call; before 2.22 the finalize's job sets it, which the stand-in for an
 * older NCCL does not model): a second finalize is refused at the call (ncclInvalidArgument, with
 * no warning, so no last error), in a group too, where the refusal fails the
 * group (refuseInGroup). */
ncclResult_t pncclCommFinalize(ncclComm_t c) {
  if (finalizedIndex(c) >= 0) {
    record("CommFinalize refused: comm=%p is finalized", (void*)c);
    return refuseInGroup(ncclInvalidArgument);
  }
  if (numFinalized < 64) finalizedComms[numFinalized++] = c;
  record("CommFinalize comm=%p", (void*)c);
  return ncclSuccess;
}
ncclResult_t ncclCommFinalize(ncclComm_t) ALIAS(ncclCommFinalize);

/* Every constructor hands out a new made-up communicator. */
static ncclComm_t __attribute__((unused)) newComm(void) {
  static size_t next = 0x5000;
  next += 0x100;
  return (ncclComm_t)next;
}

static int __attribute__((unused)) blockingOf(const ncclConfig_t* cfg) {
  return cfg ? cfg->blocking : -1;
}

/* Non-blocking communicators, as NCCL decides: NCCL_COMM_BLOCKING=0, else a
 * config's blocking = 0, else (a split's or shrink's child without a config)
 * the parent's. Their split and shrink children come as NCCL's do: the call
 * returns ncclSuccess (NCCL's split and shrink let their group's
 * ncclInProgress through) with *newcomm still NULL and the parent in
 * progress, and NCCL writes the child there when it is made, which the
 * stand-in does when the parent's state, polled, leaves ncclInProgress. */
static ncclComm_t nonBlockingComms[64];
static int numNonBlocking = 0;
static struct { ncclComm_t parent, child, *slot; } pendingChildren[16];
static int numPending = 0;

/* NCCL_COMM_BLOCKING as NCCL reads it (ncclLoadParam): strtoll in base 0,
 * ignored where that sets errno; 0 or 1 overrides a config, any other value
 * none ("00" and "false" are 0, "01" is 1). -1: no override. Read once per
 * process and kept, as NCCL's parameter cache does, unless NCCL_NO_CACHE
 * (read once: full names, comma-separated, or ALL) names it, as NCCL 2.29.7
 * and later allow. */
static int readEnvBlocking(void) {
  const char* env = getenv("NCCL_COMM_BLOCKING");
  if (env == NULL || env[0] == '\0') return -1;
  errno = 0;
  const long long v = strtoll(env, NULL, 0);
  return errno == 0 && (v == 0 || v == 1) ? (int)v : -1;
}

static int envBlocking(void) {
  static int uncached = -1, first = -2;
  if (uncached < 0) {
    const char* list = getenv("NCCL_NO_CACHE");
    uncached = 0;
    for (const char* p = list; p != NULL && *p != '\0';) {
      const char* end = strchr(p, ',');
      const size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
      if ((n == 3 && strncmp(p, "ALL", 3) == 0) ||
          (n == 18 && strncmp(p, "NCCL_COMM_BLOCKING", 18) == 0))
        uncached = 1;
      p = end != NULL ? end + 1 : NULL;
    }
  }
  if (uncached) return readEnvBlocking();
  if (first == -2) first = readEnvBlocking();
  return first;
}

static int isNonBlocking(ncclComm_t c) {
  if (envBlocking() == 0) return 1;
  for (int i = 0; i < numNonBlocking; ++i) {
    if (nonBlockingComms[i] == c) return 1;
  }
  return 0;
}

/* c, made with cfg (a child: its parent, else NULL); 1 when non-blocking. */
static int __attribute__((unused))
noteMade(ncclComm_t c, const ncclConfig_t* cfg, ncclComm_t parent) {
  const int env = envBlocking();
  const int nb = env >= 0      ? env == 0
                 : cfg != NULL ? cfg->blocking == 0
                               : parent != NULL && isNonBlocking(parent);
  if (nb && numNonBlocking < 64) nonBlockingComms[numNonBlocking++] = c;
  return nb;
}

/* A child of `parent`: set now, or (non-blocking) left NULL until made. */
static ncclResult_t __attribute__((unused))
handOut(ncclComm_t parent, ncclComm_t child, const ncclConfig_t* cfg, ncclComm_t* slot) {
  if (!noteMade(child, cfg, parent) || numPending == 16) {
    *slot = child;
    return ncclSuccess;
  }
  *slot = NULL;
  pendingChildren[numPending].parent = parent;
  pendingChildren[numPending].child = child;
  pendingChildren[numPending].slot = slot;
  ++numPending;
  startAsync(parent);
  return ncclSuccess;
}

/* A parent's pending children are written when its state leaves
 * ncclInProgress. */
ncclResult_t pncclCommGetAsyncError(ncclComm_t c, ncclResult_t* err) {
  const char* logPolls = getenv("FAKE_NCCL_LOG_POLLS");
  if (logPolls && logPolls[0] == '1') record("GetAsyncError comm=%p", (void*)c);
  const int b = busyIndex(c);
  if (b >= 0 && busy[b].polls > 0) {
    if (--busy[b].polls > 0) {
      *err = ncclInProgress;
      return ncclSuccess;
    }
  }
  for (int i = 0; i < numPending;) {
    if (pendingChildren[i].parent == c) {
      *pendingChildren[i].slot = pendingChildren[i].child;
      pendingChildren[i] = pendingChildren[--numPending];
    } else {
      ++i;
    }
  }
  *err = b >= 0 ? busy[b].end : ncclSuccess;
  return ncclSuccess;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t, ncclResult_t*) ALIAS(ncclCommGetAsyncError);

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
ncclResult_t pncclCommInitRankConfig(ncclComm_t* c, int n, ncclUniqueId id, int r,
                                     ncclConfig_t* cfg) {
  *c = newComm();
  const int nb = noteMade(*c, cfg, NULL);
  record("CommInitRankConfig nranks=%d rank=%d blocking=%d comm=%p", n, r, blockingOf(cfg),
         (void*)*c);
  /* A non-blocking one is made by NCCL's thread, as its work is enqueued. */
  if (nb) startAsync(*c);
  return nb ? ncclInProgress : ncclSuccess;
}
ncclResult_t ncclCommInitRankConfig(ncclComm_t*, int, ncclUniqueId, int, ncclConfig_t*)
    ALIAS(ncclCommInitRankConfig);
#endif

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 23, 0)
ncclResult_t pncclCommInitRankScalable(ncclComm_t* c, int n, int r, int nId, ncclUniqueId* ids,
                                       ncclConfig_t* cfg) {
  *c = newComm();
  record("CommInitRankScalable nranks=%d rank=%d nId=%d blocking=%d comm=%p", n, r, nId,
         blockingOf(cfg), (void*)*c);
  return ncclSuccess;
}
ncclResult_t ncclCommInitRankScalable(ncclComm_t*, int, int, int, ncclUniqueId*, ncclConfig_t*)
    ALIAS(ncclCommInitRankScalable);
#endif

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
/* FAKE_NCCL_SPLIT_FAIL=COLOR,KEY: the split with that color and key fails
 * (ncclSystemError, no child), as one node's child that NCCL could not make:
 * a failure of this rank alone. */
static int splitFails(int color, int key) {
  const char* v = getenv("FAKE_NCCL_SPLIT_FAIL");
  int c, k;
  return v != NULL && sscanf(v, "%d,%d", &c, &k) == 2 && c == color && k == key;
}

ncclResult_t pncclCommSplit(ncclComm_t p, int color, int key, ncclComm_t* c, ncclConfig_t* cfg) {
  const ncclResult_t ready = readiness("CommSplit", p);
  if (ready != ncclSuccess) return ready;
  if (splitFails(color, key)) {
    record("CommSplit parent=%p color=%d key=%d failed", (void*)p, color, key);
    *c = NULL;
    return ncclSystemError;
  }
  if (color == NCCL_SPLIT_NOCOLOR) {
    /* As NCCL: no child, so the slot stays NULL for good; a non-blocking
     * split is still in progress on the parent (its ranks agree on colors). */
    const int env = envBlocking();
    const int nb = env >= 0 ? env == 0 : cfg != NULL ? cfg->blocking == 0 : isNonBlocking(p);
    record("CommSplit parent=%p color=%d key=%d blocking=%d comm=(nil)", (void*)p, color, key,
           blockingOf(cfg));
    *c = NULL;
    if (nb) startAsync(p);
    return ncclSuccess;
  }
  const ncclComm_t child = newComm();
  record("CommSplit parent=%p color=%d key=%d blocking=%d comm=%p", (void*)p, color, key,
         blockingOf(cfg), (void*)child);
  return handOut(p, child, cfg, c);
}
ncclResult_t ncclCommSplit(ncclComm_t, int, int, ncclComm_t*, ncclConfig_t*) ALIAS(ncclCommSplit);
#endif

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0)
ncclResult_t pncclCommShrink(ncclComm_t p, int* excl, int nexcl, ncclComm_t* c, ncclConfig_t* cfg,
                             int flags) {
  const ncclResult_t ready = readiness("CommShrink", p);
  if (ready != ncclSuccess) return ready;
  const ncclComm_t child = newComm();
  record("CommShrink parent=%p excluded=%d blocking=%d flags=%d comm=%p", (void*)p, nexcl,
         blockingOf(cfg), flags, (void*)child);
  return handOut(p, child, cfg, c);
}
ncclResult_t ncclCommShrink(ncclComm_t, int*, int, ncclComm_t*, ncclConfig_t*, int)
    ALIAS(ncclCommShrink);
#endif

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
/* NCCL 2.29.2's ncclCommGrow, whatever nccl.h built this stand-in. */
ncclResult_t pncclCommGrow(ncclComm_t p, int n, const ncclUniqueId* id, int r, ncclComm_t* c,
                           ncclConfig_t* cfg) {
  *c = newComm();
  record("CommGrow parent=%p nranks=%d rank=%d blocking=%d comm=%p", (void*)p, n, r,
         blockingOf(cfg), (void*)*c);
  return ncclSuccess;
}
ncclResult_t ncclCommGrow(ncclComm_t, int, const ncclUniqueId*, int, ncclComm_t*, ncclConfig_t*)
    ALIAS(ncclCommGrow);
#endif

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0) && !defined(FAKE_NCCL_NO_SIMULATE)
/* NCCL's ncclCommRevoke (2.28.7 and later; not in the stand-in for an NCCL
 * older than 2.22), as NCCL 2.28.9's (init.cc): refused with
 * ncclInvalidArgument, at the call and not as a group's error, for flags
 * other than NCCL_REVOKE_DEFAULT (0), and for a communicator destroyed
 * (destroyFlag, set at the destroy's call), finalized (finalizeCalled,
 * which a finalize sets at its call) or revoked already; otherwise it
 * revokes and counts as the communicator's finalize (finalizeCalled set: a
 * later ncclCommFinalize is refused), and the communicator is left for
 * ncclCommDestroy or ncclCommAbort. */
ncclResult_t pncclCommRevoke(ncclComm_t c, int flags) {
  if (c == NULL) {
    record("CommRevoke comm=%p flags=%d", (void*)c, flags);
    return ncclSuccess;
  }
  if (flags != 0) {
    record("CommRevoke refused: comm=%p flags=%d", (void*)c, flags);
    return ncclInvalidArgument;
  }
  if (destroyingIndex(c) >= 0 || finalizedIndex(c) >= 0 || revokedIndex(c) >= 0) {
    record("CommRevoke refused: comm=%p is %s", (void*)c,
           destroyingIndex(c) >= 0 ? "destroyed"
           : revokedIndex(c) >= 0  ? "revoked"
                                   : "finalized");
    return ncclInvalidArgument;
  }
  record("CommRevoke comm=%p flags=%d", (void*)c, flags);
  if (c != NULL && numRevoked < 64 && numFinalized < 64) {
    revokedComms[numRevoked++] = c;
    finalizedComms[numFinalized++] = c;
  }
  return ncclSuccess;
}
ncclResult_t ncclCommRevoke(ncclComm_t, int) ALIAS(ncclCommRevoke);
#endif
