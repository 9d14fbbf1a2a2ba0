// The LD_PRELOAD interposer: ncclAllReduce and ncclReduceScatter with NCCL's
// exact signatures (one path for both), plus
// the group calls (to know when a call is inside a user group), the
// communicator constructors that take a config (to know the non-blocking
// ones, whose enqueues gradcomp waits for; and the poll, ncclCommGetAsyncError,
// that tells when a non-blocking split's child is made and when NCCL's error
// is the last one) and finalize/destroy/abort (to free state, and to keep a
// group's finalize or destroy behind its deferred calls). Eligible calls
// (DESIGN.md "Interposer rules") go through gradcompAllReduce / gradcompReduceScatter on a
// per-communicator gradcomp comm created lazily from GRADCOMP_*; every other call reaches the real
// NCCL with identical arguments. Eligible calls inside a user group are taken out of it and run
// after the outer ncclGroupEnd (GRADCOMP_GROUP=defer, the default, or fuse), or left in it (pass;
// but a communicator's first float Sum/Avg calls are taken out in every mode, for its ranks'
// comparison of the settings that decide eligibility, GRADCOMP_GROUP among them);
// a group ended by ncclGroupSimulateEnd runs nothing, so its eligible calls go back into it
// uncompressed and are dropped. It never breaks the host program: whatever
// fails to set up is warned about once and passed through.
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdint.h>

#include <algorithm>
#include <map>
#include <utility>

#include "checks.h"
#include "collective.h"
#include "debug.h"
#include "nccl_dlsym.h"
#include "nccl_ints.h"
#include "nvtx.h"
#include "preload.h"

namespace gc {
namespace preload {

namespace {

ncclResult_t toNccl(gradcompResult_t r) {
  switch (r) {
    case gradcompSuccess:
      return ncclSuccess;
    case gradcompCudaError:
      return ncclUnhandledCudaError;
    case gradcompInvalidArgument:
      return ncclInvalidArgument;
    case gradcompInvalidUsage:
      return ncclInvalidUsage;
    default:
      return ncclSystemError;
  }
}

// Group depth and deferred calls are per thread, as NCCL's own group state is.
thread_local int tGroupDepth = 0;
// The calls of the thread's open group. On the heap, behind a pointer with no
// destructor: exit() destroys the thread's thread_local objects before it
// runs the atexit handlers and static destructors, which may still make a
// group's calls (a framework's teardown); the calls go with the thread's
// owner, and a later call makes them anew (left to the process's end).
struct GroupCalls {
  std::vector<Deferred> deferred;
  // Handed to NCCL inside the open group: counted as passed through when the
  // group runs, not when it is only simulated.
  std::vector<std::pair<EntryPtr, Collective>> forwarded;
  // leaveGroup's copy of their entries, kept so that a group end does not
  // allocate it (emptied before leaveGroup returns, so no entry outlives it).
  std::vector<EntryPtr> ended;
  // ncclRedOpDestroy of an op a deferred call uses (ncclRedOpCreatePreMulSum's),
  // made in the group after that call: NCCL reads the op at the call, so a
  // program may destroy it as soon as the call returns (PyTorch does, inside
  // its group). The deferred call reaches NCCL only after the outer end, so
  // the destroy waits for it (destroyPostponed): run at once, NCCL refused
  // the call for its dead op, or ran it with the scalar of the op it handed
  // out next in its place. Only such an op waits (ncclNumOps and up): NCCL
  // refuses a builtin or garbage op's destroy at once, and no call needs it.
  // The op as the int the program gave.
  struct Destroy {
    int op;
    ncclComm_t comm;
    std::weak_ptr<CommEntry> entry;
  };
  std::vector<Destroy> destroys;
  // A call the preload refused itself in the open group as NCCL refuses it
  // with the group's error (failGroup): the group's end fails with it.
  bool refused = false;
};
thread_local GroupCalls* tCalls = nullptr;
thread_local bool tCallsOwned = false;
struct GroupCallsOwner {
  ~GroupCallsOwner() {
    delete tCalls;
    tCalls = nullptr;
  }
};
GroupCalls& groupCalls() {
  if (tCalls == nullptr) {
    tCalls = new GroupCalls;
    if (!tCallsOwned) {  // once per thread: the owner is never used after its end
      tCallsOwned = true;
      static thread_local GroupCallsOwner owner;
      (void)owner;
    }
  }
  return *tCalls;
}

// A call the preload refuses itself where NCCL refuses it as the group's
// error (group.h, ncclGroupErrCheck; a finalize of a finalized communicator,
// finalizeAgain): inside a user group NCCL then fails the group's outermost
// end with the refusal and runs nothing of the group, neither the calls it
// holds nor its finalize and destroy jobs (group.cc, ncclGroupEndInternal).
// NCCL never sees the refused call, so it is handed one it refuses the same
// way and that touches no communicator: a data call of none (enqueue.cc,
// ncclEnqueueCheck: CommCheck's ncclInvalidArgument made the group's error,
// 2.22 and later, as the finalize's refusal). The group's end then fails, and
// leaveGroup drops the deferred calls with it. Called before the refusal's
// noteOwnError (the sentence is kept against NCCL's last error after this
// call), which ncclGetLastError answers again once the end failed
// (groupRefusal). NCCL refuses a revoke, a destroy and an op's destroy at
// the call alone: the preload's refusals of those leave the group be.
// Whether it did (in a user group): NCCL's warning of that call (NCCL_DEBUG=WARN, "comm
// argument is NULL") names a call the program never made, so the refusal is then warned
// about too, saying so.
bool failGroup() {
  if (tGroupDepth == 0 || ncclApi()->allReduce == nullptr) return false;
  (void)ncclApi()->allReduce(nullptr, nullptr, 0, ncclFloat32, ncclSum, nullptr, nullptr);
  groupCalls().refused = true;
  return true;
}

// At the outermost end of the thread's group, before NCCL's answer to it is
// taken (ncclAnswered): the sentence of the preload's refusal the end fails
// with (failGroup), while it is still the last error (NCCL's group error is
// the last refusal: one NCCL made since, of a call the preload passed on or
// never saw, is the end's answer, and its last error with it); "" where none.
std::string groupRefusal() {
  GroupCalls& g = groupCalls();
  if (!g.refused) return std::string();
  g.refused = false;
  return ownErrorStanding();
}

void countPassed(CommEntry& e, Collective coll) {
  e.callsPassed++;
  if (coll == Collective::ReduceScatter) e.rsPassed++;
}

// The input count eligibility compares with minElements: the reduce-scatter
// reads nranks * recvcount. The size is the entry's once it compresses (set
// before its mode), so that no call asks NCCL again: ncclCommCount runs
// NCCL's readiness check, which completes a non-blocking communicator's
// pending group job, and a program thread polling the same communicator
// (PyTorch's watchdog, ncclCommGetAsyncError) would race it. 0 (never
// eligible unless minElements is 0, and then refused by gradcomp and
// forwarded) when NCCL cannot tell the size or the product overflows.
size_t inputCount(const Deferred& d, CommEntry& e) {
  if (d.coll == Collective::AllReduce) return d.count;
  // nranks >= 1: a recvcount already at minElements is eligible, whatever
  // the size (the set-up reads it, and refuses a comm whose size NCCL cannot
  // tell); only smaller ones of an undecided entry ask NCCL.
  if (d.count >= settings().config.minElements) return d.count;
  int nranks = e.mode == Mode::Compress ? e.nranks : e.sizeSeen.load();
  if (nranks < 1) {
    if (ncclApi()->commCount(d.comm, &nranks) != ncclSuccess || nranks < 1) return 0;
    e.sizeSeen.store(nranks);
  }
  if (d.count > SIZE_MAX / (size_t)nranks) return 0;
  return d.count * (size_t)nranks;
}

}  // namespace

namespace {
// A call of a communicator another thread aborted while gradcomp held it.
ncclResult_t abortedCall(ncclComm_t comm) {
  noteOwnError("NCCL comm %p was aborted (ncclCommAbort) during the call: ncclInvalidUsage",
               (void*)comm);
  return ncclInvalidUsage;
}
}  // namespace

ncclResult_t forward(CommEntry* e, const Deferred& d) {
  const bool rs = d.coll == Collective::ReduceScatter;
  const NcclApi* api = ncclApi();
  if ((rs ? (void*)api->reduceScatter : (void*)api->allReduce) == nullptr) return ncclSystemError;
  // Aborted on another thread (a compressed call's wait ended by it, a
  // deferred or fused call after it): NCCL frees the communicator.
  if (e != nullptr && e->aborted.stopped()) return abortedCall(d.comm);
  if (e != nullptr) countPassed(*e, d.coll);
  return ncclAnswered(
      rs ? api->reduceScatter(d.send, d.recv, d.count, d.type, d.op, d.comm, d.stream)
         : api->allReduce(d.send, d.recv, d.count, d.type, d.op, d.comm, d.stream));
}

ncclResult_t compress(CommEntry& e, const Deferred& d, bool keyed, uint64_t key,
                      uint64_t userCalls) {
  const bool rs = d.coll == Collective::ReduceScatter;
  GC_NVTX_RANGE(rs ? "gradcomp reducescatter" : "gradcomp allreduce");
  std::lock_guard<std::mutex> lock(e.callMu);
  // Its communicator aborted on another thread (NCCL frees it): neither
  // gradcomp nor NCCL may run the call.
  if (e.aborted.stopped()) return abortedCall(d.comm);
  gradcompStats_t before, after;
  gradcompGetStats(e.gc, &before);
  gradcompResult_t r;
  if (rs) {
    r = keyed
            ? gradcompReduceScatterKeyed(d.send, d.recv, d.count, d.type, d.op, e.gc, d.stream, key)
            : gradcompReduceScatter(d.send, d.recv, d.count, d.type, d.op, e.gc, d.stream);
  } else {
    r = keyed ? gradcompAllReduceKeyed(d.send, d.recv, d.count, d.type, d.op, e.gc, d.stream, key)
              : gradcompAllReduce(d.send, d.recv, d.count, d.type, d.op, e.gc, d.stream);
  }
  if (r == gradcompSuccess) {
    gradcompGetStats(e.gc, &after);
    const bool autoPassed = after.callsAutoPassed > before.callsAutoPassed;
    (autoPassed ? e.callsAutoPassed : e.callsCompressed) += userCalls;
    if (rs) (autoPassed ? e.rsAutoPassed : e.rsCompressed) += userCalls;
    return ncclSuccess;
  }
  // These results come from checks made before anything is enqueued (first
  // call of a buffer under capture, a misaligned or host pointer): NCCL can
  // still take the call as it is. Not a call every rank failed after
  // comparing it (ranks at different calls, GRADCOMP_CHECK_CALLS's vote on a
  // rank that could not prepare it): NCCL would get the calls the ranks do
  // not share, or wait for the rank that returned an error.
  // A wait another thread's ncclCommAbort ended: nothing goes to NCCL.
  if (e.aborted.stopped()) return abortedCall(d.comm);
  if ((r == gradcompInvalidUsage || r == gradcompInvalidArgument || r == gradcompNotSupported) &&
      !failedTogether(e.gc)) {
    const std::string why = gradcompGetLastError();
    warnOncePerSentence("passing a call to NCCL: %s", why.c_str());
    e.callsPassed += userCalls - 1;
    if (rs) e.rsPassed += userCalls - 1;
    return forward(&e, d);
  }
  warnOwnError("compressed %s failed: %s", rs ? "reduce-scatter" : "allreduce",
               gradcompGetLastError());
  return toNccl(r);
}

ncclResult_t route(const Deferred& d) {
  if (!ncclResolved() || d.comm == nullptr) return forward(nullptr, d);
  EntryPtr e = entryFor(d.comm);
  // A communicator's first call that some rank's settings could make
  // eligible runs the agreement on those settings, on every rank whatever
  // its own say (opensAgreement): until then no rank knows whether its
  // peers hand the call to gradcomp or to NCCL.
  const bool unagreed =
      e->mode == Mode::Undecided && !e->agreed && opensAgreement(d.count, d.type, d.op);
  if (tGroupDepth > 0) {
    const bool pass = e->mode == Mode::PassThrough || !eligible(inputCount(d, *e), d.type, d.op);
    // NCCL runs a communicator's calls in the order they were made: one made
    // after a call of its communicator was deferred is deferred too, and
    // reaches NCCL after it (an in-place allreduce, then another call on the
    // same buffer), not before it at the group's end. A call of an unagreed
    // communicator is deferred whatever GRADCOMP_GROUP says (the agreement
    // runs after the group's end, outside it), as its peers may defer it.
    GroupCalls& g = groupCalls();
    const bool groupPass = settings().group == GroupMode::Pass;
    if (!unagreed && (pass || groupPass) &&
        std::none_of(g.deferred.begin(), g.deferred.end(),
                     [&](const Deferred& earlier) { return earlier.comm == d.comm; })) {
      g.forwarded.emplace_back(e, d.coll);
      return forward(nullptr, d);
    }
    g.deferred.push_back(d);
    Deferred& deferred = g.deferred.back();
    deferred.entry = e;
    deferred.tracked = true;
    deferred.pass = pass || groupPass;
    return ncclSuccess;
  }
  if (unagreed) {
    agreeUnlessCapturing(*e, d.comm, d.stream);
    if (e->mode != Mode::Undecided || !e->agreed) return forward(e.get(), d);
  }
  if (e->mode == Mode::PassThrough || !eligible(inputCount(d, *e), d.type, d.op)) {
    return forward(e.get(), d);
  }
  if (e->mode == Mode::Undecided) {
    decideUnlessCapturing(*e, d.comm, d.stream);
    if (e->mode != Mode::Compress) return forward(e.get(), d);
  }
  return compress(*e, d, false, 0, 1);
}

namespace {

// Whether the loaded NCCL counts a finalize at its call (init.cc:
// comm->finalizeCalled, which it then refuses a second finalize and a revoke
// for): 2.22 and later set it there, in a group too, and keep it when the
// group's end fails and frees the finalize's job (group.cc, groupCleanup);
// 2.14 to 2.21 set it at the end of that job (commDestroySync), so a
// finalize dropped with a failed group never counted, and NCCL takes a later
// one. An NCCL that cannot tell its version is taken for an older one: the
// later calls then reach it, and it answers them.
bool finalizeCountsAtCall() {
  return loadedNcclVersion() >= NCCL_VERSION(2, 22, 0);
}

// ncclCommFinalize or ncclCommDestroy of `comm` in a user group that deferred
// calls of it: made after those calls, it is to flush their work, and they
// run after the group's end here, so it joins them in its place (true: the
// program's call returns ncclSuccess, as NCCL's in a group does; runDeferred
// makes it). Passed on at once, NCCL finalized the communicator at the
// group's end and the deferred calls reached it finalized, or (a destroy
// released the entry) they were refused. Bound to the entry the calls were
// deferred with: an abort in the group after it ends them all. That entry's
// finalizeHeld or destroyHeld says so (runCommCall clears it), an entry made
// at the same address since left alone.
bool deferBehindCalls(ncclComm_t comm, CommCall call) {
  if (tGroupDepth == 0 || comm == nullptr) return false;
  GroupCalls& g = groupCalls();
  const auto last = std::find_if(g.deferred.rbegin(), g.deferred.rend(),
                                 [&](const Deferred& d) { return d.comm == comm; });
  if (last == g.deferred.rend()) return false;
  Deferred d{nullptr, nullptr, 0, ncclFloat32, ncclSum, comm, nullptr};
  d.entry = last->entry;
  d.tracked = last->tracked;
  d.commCall = call;
  g.deferred.push_back(d);
  if (const EntryPtr e = deferredEntry(d)) {
    (call == CommCall::Finalize ? e->finalizeHeld : e->destroyHeld) = true;
  }
  return true;
}

// The preload's ncclCommDestroy (at the call, or in its place after a user
// group's deferred calls of the communicator). NCCL refuses to destroy a
// communicator that is not ready (its ncclCommEnsureReady): a non-blocking
// one whose work is still in progress, or one holding an error its thread
// met, which the program then aborts. The communicator lives on, so its entry
// and gradcomp comm stay: released here, the next call set up a new comm on
// this rank alone, and the abort found nothing to stop, after gradcomp's
// destroy had waited for kernels that may be stuck on the dead peer.
ncclResult_t destroyCommMarked(ncclComm_t comm) {
  const NcclApi* api = ncclApi();
  ncclResult_t state = ncclSuccess;
  if (comm != nullptr && api->commGetAsyncError != nullptr &&
      api->commGetAsyncError(comm, &state) == ncclSuccess && state != ncclSuccess) {
    const ncclResult_t r = ncclAnswered(realNccl()->commDestroy(comm));
    // Ready by now after all (its work ended in between): destroyed, so
    // its entry goes too.
    if (r == ncclSuccess) release(comm);
    return r;
  }
  // Ours first: freeing it waits for gradcomp's work on the communicator.
  release(comm);
  return ncclAnswered(realNccl()->commDestroy(comm));
}

// destroyCommMarked with the communicator marked destroying (markDestroying)
// from before its entry goes until NCCL's destroy returned: a revoke on
// another thread in between is refused (ncclCommRevoke), as NCCL refuses
// one once the destroy's call set its destroyFlag.
ncclResult_t destroyComm(ncclComm_t comm) {
  if (comm == nullptr) return destroyCommMarked(comm);  // NCCL's answer: nothing to revoke
  markDestroying(comm, true);
  const ncclResult_t r = destroyCommMarked(comm);
  markDestroying(comm, false);
  return r;
}

// The destroys a user group held back behind deferred calls
// (deferBehindCalls), of a group whose end NCCL failed as a whole: dropped
// with the group's calls, the communicator left made, its gradcomp state and
// its entry kept, and the program told so. Whether NCCL alone had destroyed
// it depends on what failed and on NCCL's version, none of which the preload
// can tell: a call NCCL refused in the group (any call, those the preload
// never sees too: a broadcast, a send) makes the end fail before it runs any
// of the group's jobs, so the communicator lives on, while a failure past
// those jobs (a launch) comes after NCCL 2.22 and later ran the destroy job
// (before 2.22 a destroy in a group was not a job: NCCL ran it at the call).
// Running the held destroy here would free a communicator the program may
// still destroy or abort (NCCL's answer to a refused call), a use after free
// in NCCL; dropping it leaks one only where the program, told its destroy
// succeeded, never names it again, which the warning says.
// A held finalize goes with them too, warned alike: NCCL never gets it, and
// the communicator is left for the program's destroy or abort. With NCCL
// 2.22 and later its entry's finalizeHeld stays, so that a later finalize or
// revoke is refused as NCCL alone refuses them after a finalize made in a
// failed group; before 2.22 it goes, and a later finalize reaches NCCL, which
// alone would take it too (finalizeCountsAtCall). A held destroy's
// destroyHeld stays (NCCL's destroyFlag, set at the call, stays too): a
// later revoke is refused (ncclCommRevoke).
void warnDroppedCommCalls(const std::vector<Deferred>& calls) {
  for (const Deferred& d : calls) {
    // Aborted or destroyed since it was held back: NCCL freed it then.
    const EntryPtr e = d.commCall == CommCall::None ? nullptr : deferredEntry(d);
    if (e == nullptr) continue;
    if (d.commCall == CommCall::Finalize) {
      const bool counted = finalizeCountsAtCall();
      if (!counted) e->finalizeHeld = false;
      warnOncePerSentence(
          "ncclCommFinalize of NCCL comm %p, made in a user group after calls of it and held "
          "back behind them, was dropped with the group, whose end failed: the communicator is "
          "not finalized%s",
          (void*)d.comm,
          counted ? ", and a later ncclCommFinalize or ncclCommRevoke of it is refused, as NCCL "
                    "(which counts a finalize at its call) refuses them; destroy it (or abort it)"
                  : "; finalize it again, or destroy it (or abort it)");
      continue;
    }
    warnOncePerSentence(
        "ncclCommDestroy of NCCL comm %p, made in a user group after calls of it and held back "
        "behind them, was dropped with the group, whose end failed: the communicator is still "
        "made; destroy it (or abort it) again after the failed group",
        (void*)d.comm);
  }
}

// NCCL's answer `r` to a finalize of e's communicator the preload handed
// on: NCCL took it (its finalizeCalled set) unless it refused it at once; a
// held one is held no longer either way.
ncclResult_t finalizeAnswered(CommEntry& e, ncclResult_t r) {
  if (r == ncclSuccess || r == ncclInProgress) e.finalizeMade = true;
  e.finalizeHeld = false;
  return r;
}

}  // namespace

ncclResult_t runCommCall(const Deferred& d, CommEntry& e) {
  if (d.commCall == CommCall::Destroy) {
    // Held until NCCL's destroy returned: the entry is released first (on
    // purpose), and destroyComm's mark covers the revoke from then on, so a
    // revoke on another thread meanwhile is refused, as NCCL alone, whose
    // destroyFlag was set at the program's call, refuses it.
    const ncclResult_t r = destroyComm(d.comm);
    e.destroyHeld = false;
    return r;
  }
  const auto finalize = realNccl()->commFinalize;
  if (finalize == nullptr) return ncclSystemError;
  return awaitAnswered(d.comm, finalizeAnswered(e, ncclAnswered(finalize(d.comm))), &e.aborted);
}

namespace {

// Before the outermost end of the thread's group. A group holding eligible
// calls of communicators on different devices is one thread driving several
// GPUs (as nccl-tests -g N): their ranks may be ranks of one communicator,
// whose calls NCCL must get in one group; taken out of it, one comm would set
// up or compress alone and wait forever for a rank this same thread has not
// reached. So they stay in the group, uncompressed, and those communicators
// pass through from then on; every rank of such a communicator is driven the
// same way and decides alike.
ncclResult_t keepMultiDeviceGroup() {
  const NcclApi* api = ncclApi();
  GroupCalls& g = groupCalls();
  if (g.deferred.size() < 2 || api->commCuDevice == nullptr) return ncclSuccess;
  int device0 = -1;
  bool several = false;
  for (const Deferred& d : g.deferred) {
    // A compressing entry's device, as inputCount's size: NCCL is asked once,
    // before the entry is decided.
    const EntryPtr e = deferredEntry(d);
    if (e == nullptr) continue;  // runDeferred refuses it
    int dev = e->mode == Mode::Compress ? e->device : e->deviceSeen.load();
    if (dev < 0) {
      if (api->commCuDevice(d.comm, &dev) != ncclSuccess) continue;
      e->deviceSeen.store(dev);
    }
    if (device0 < 0) device0 = dev;
    several = several || dev != device0;
  }
  if (!several) return ncclSuccess;
  warnOnce("multi-device",
           "a user NCCL group holds eligible calls (or the first float Sum/Avg calls) of "
           "communicators on several devices (one "
           "thread driving several GPUs): they stay in the group uncompressed, and those "
           "communicators pass through");
  std::vector<Deferred> calls;
  calls.swap(g.deferred);
  ncclResult_t failed = ncclSuccess;
  for (const Deferred& d : calls) {
    EntryPtr e = deferredEntry(d);
    if (e == nullptr) {
      warnDeferredReleased(d.comm);
      if (failed == ncclSuccess) failed = ncclInvalidUsage;
      continue;
    }
    passAlways(*e, "one thread drives it in a group with other devices' communicators");
    if (d.commCall != CommCall::None) {
      // Not into NCCL's group: NCCL runs a group's finalize and destroy jobs
      // before it launches the group's calls (group.cc), so there it would
      // finalize or free the communicator ahead of the calls forwarded here.
      // It stays deferred, and leaveGroup runs it after NCCL's end.
      g.deferred.push_back(d);
      continue;
    }
    g.forwarded.emplace_back(e, d.coll);
    const ncclResult_t r = forward(nullptr, d);
    if (r != ncclSuccess && failed == ncclSuccess) failed = r;
  }
  return failed;
}

// After NCCL ended one level of the thread's group (with result `r`): at the
// outermost, the group's calls ran, and its deferred eligible calls run now.
// A group NCCL failed runs none of them.
// A non-blocking communicator's group may still be enqueueing
// (ncclInProgress): the deferred calls' communicators are waited for first,
// as NCCL refuses their next call until then; the others stay the program's
// to poll, so ncclInProgress is what it gets back unless a call failed.
ncclResult_t leaveGroup(ncclResult_t r) {
  const std::string refused = tGroupDepth <= 1 ? groupRefusal() : std::string();
  (void)ncclAnswered(r);  // NCCL's end of the level
  if (tGroupDepth > 0) --tGroupDepth;
  if (tGroupDepth > 0) return r;
  GroupCalls& g = groupCalls();
  if (r != ncclSuccess && r != ncclInProgress) {
    // NCCL's group failed (a call in it was refused, its launch failed): NCCL
    // discards every call of the group, so the deferred ones are dropped too,
    // as NCCL alone would have dropped them, and nothing ran to be counted. A
    // finalize or destroy joined to them goes too (warnDroppedCommCalls).
    // Failed for the preload's refusal (failGroup): ncclGetLastError says it.
    if (!refused.empty()) noteOwnError("%s", refused.c_str());
    g.forwarded.clear();
    std::vector<Deferred> calls;
    calls.swap(g.deferred);
    warnDroppedCommCalls(calls);
    return r;
  }
  std::vector<EntryPtr>& forwarded = g.ended;
  struct Release {
    std::vector<EntryPtr>& v;
    ~Release() { v.clear(); }
  } release{forwarded};
  forwarded.clear();
  for (auto& f : g.forwarded) {
    countPassed(*f.first, f.second);
    forwarded.push_back(f.first);
  }
  g.forwarded.clear();
  if (!g.deferred.empty()) {
    std::vector<Deferred> calls;
    calls.swap(g.deferred);
    ncclResult_t f = ncclSuccess;
    if (r == ncclInProgress) {
      // A communicator whose part of the group failed runs none of its
      // deferred calls (NCCL refuses them); the others' still run. Its
      // finalize or destroy still goes to NCCL, which answers it: the
      // program made it, and an error leaves the communicator to its abort.
      std::map<ncclComm_t, ncclResult_t> waited;
      for (const Deferred& d : calls) {
        if (waited.count(d.comm)) continue;
        const EntryPtr e = deferredEntry(d);
        // Released: runDeferred refuses its calls; NCCL may have freed it.
        waited[d.comm] =
            e == nullptr ? ncclInvalidUsage : awaitAnswered(d.comm, ncclInProgress, &e->aborted);
        if (waited[d.comm] != ncclSuccess && f == ncclSuccess) f = waited[d.comm];
      }
      calls.erase(
          std::remove_if(calls.begin(), calls.end(),
                         [&](const Deferred& d) {
                           return waited[d.comm] != ncclSuccess &&
                                  (d.commCall == CommCall::None || deferredEntry(d) == nullptr);
                         }),
          calls.end());
    }
    const ncclResult_t ran = runDeferred(calls);
    if (f == ncclSuccess) f = ran;
    // NCCL's own error for the group stands; otherwise the deferred calls'.
    // An error ends the group for the program, so the communicators of the
    // calls NCCL still enqueues are waited for first: the program would not
    // poll them after an error, and NCCL would refuse their next call.
    if (r == ncclInProgress && f != ncclSuccess) {
      for (const EntryPtr& e : forwarded) (void)ncclAwait(e->nccl, ncclInProgress, &e->aborted);
    }
    if (r == ncclSuccess || (r == ncclInProgress && f != ncclSuccess)) r = f;
  }
  return r;
}

}  // namespace
}  // namespace preload
}  // namespace gc

using namespace gc::preload;
using gc::ncclApi;
using gc::realNccl;

#define GC_INTERPOSE extern "C" __attribute__((visibility("default")))

namespace {

// The largest int ncclDataType_t holds in C++: every bit its enumerators
// use set (15 for ncclFloat8e5m2 = 11, ncclNumTypes = 12). C++ gives an enum
// without a fixed type the range of the smallest bit-field that holds them.
constexpr int typeRangeMax() {
  int m = 1;
  while (m <= (int)ncclNumTypes) m <<= 1;
  return m - 1;
}

// A call whose datatype or op C++'s enum cannot hold, as a C caller may make
// it (a datatype of -1 or 99, an op of -1 or INT_MIN): read as the enum, to
// route it or to pass it on, it would be undefined. gradcomp compresses none
// of them and must not refuse them either, so NCCL gets it unchanged, its
// datatype and op passed on as the ints they are (by C, nccl_ints.c: C++
// may call NCCL only through its own function type), and answers it
// (ncclInvalidArgument). A call inside a user group goes to NCCL at once:
// NCCL refuses it as it comes, wherever it stands. The op holds every
// non-negative int (ncclMaxRedOp: ncclRedOpCreatePreMulSum's handles), and a
// datatype up to typeRangeMax (a newer NCCL's) is read as the enum and
// route()d as any call gradcomp does not compress: false for those. (Where
// NCCL refused it, joinRefusal then tells a compressing communicator's peers.)
bool passedAsInts(Collective coll, const void* send, void* recv, size_t count,
                  const ncclDataType_t* datatype, const ncclRedOp_t* op, ncclComm_t comm,
                  cudaStream_t stream, ncclResult_t* res) {
  const int t = gc::enumArg(datatype), o = gc::enumArg(op);
  if (t >= 0 && t <= typeRangeMax() && o >= 0) return false;
  const auto* api = ncclApi();
  const gcNcclReduction fn =
      coll == Collective::ReduceScatter ? api->reduceScatter : api->allReduce;
  *res = fn == nullptr
             ? ncclSystemError
             : ncclAnswered(gcNcclReductionWithInts(fn, send, recv, count, t, o, comm, stream));
  return true;
}

// A call of a compressing communicator whose datatype or op gradcomp
// refuses (checkCallEnums) and NCCL refused too, `nccl` (before it enqueued
// anything, so the call exchanged nothing): its peers, whose call gradcomp
// took, may be in gradcomp's agreement on it (GRADCOMP_CHECK_CALLS, or the
// first call after a state load or reset), where they would wait for this
// rank for ever. It joins that agreement with the refusal's record
// (gc::refuseCallEnums, which joins nothing where the peers run none), so
// they fail naming it; the caller still gets NCCL's answer. Not in a user
// group (its peers' calls wait for the group's end there), nor where NCCL
// ran the call (a newer NCCL's datatype: a call this rank passes while its
// peers compress theirs, as any other mismatch), nor for a call no rank
// compresses (a count under GRADCOMP_MIN_ELEMENTS, or a datatype or op NCCL
// has that gradcomp does not compress: the peers hand the call to NCCL and
// run no agreement, so one joined would take their next call's).
ncclResult_t joinRefusal(Collective coll, ncclComm_t comm, size_t count, const ncclDataType_t* type,
                         const ncclRedOp_t* op, cudaStream_t stream, ncclResult_t nccl) {
  if (nccl == ncclSuccess || nccl == ncclInProgress || tGroupDepth > 0 || comm == nullptr ||
      !gc::ncclResolved())
    return nccl;
  const gradcompResult_t bad = gc::checkCallEnums(type, op);
  if (bad == gradcompSuccess) return nccl;
  // A communicator with no entry compresses nothing (and NCCL may have
  // refused it for not being one): none is made for it here.
  EntryPtr e = existingEntry(comm);
  if (e == nullptr || e->mode != Mode::Compress) return nccl;
  // The peers' count is this rank's, and so are their datatype and op where
  // NCCL has this rank's (only the refused one may differ, as a float Sum at
  // best): an integer call with a refused op, or a Max with a refused
  // datatype, is one the peers hand to NCCL too, with no agreement.
  const int t = gc::enumArg(type), o = gc::enumArg(op);
  const ncclDataType_t peerType = t >= 0 && t < (int)ncclNumTypes ? *type : ncclFloat32;
  const ncclRedOp_t peerOp = o >= 0 ? *op : ncclSum;
  const Deferred d{nullptr, nullptr, count, peerType, peerOp, comm, stream, coll};
  if (!eligible(inputCount(d, *e), peerType, peerOp)) return nccl;
  std::lock_guard<std::mutex> lock(e->callMu);
  if (e->aborted.stopped() || e->released || e->gc == nullptr) return nccl;
  (void)gc::guarded([&] { return gc::refuseCallEnums(e->gc, count, type, op, stream, bad); });
  return nccl;
}

}  // namespace

GC_INTERPOSE ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count,
                                        ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                                        cudaStream_t stream) {
  ncclResult_t r;
  if (!passedAsInts(Collective::AllReduce, sendbuff, recvbuff, count, &datatype, &op, comm, stream,
                    &r))
    r = route({sendbuff, recvbuff, count, datatype, op, comm, stream, Collective::AllReduce});
  return joinRefusal(Collective::AllReduce, comm, count, &datatype, &op, stream, r);
}

GC_INTERPOSE ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount,
                                            ncclDataType_t datatype, ncclRedOp_t op,
                                            ncclComm_t comm, cudaStream_t stream) {
  ncclResult_t r;
  if (!passedAsInts(Collective::ReduceScatter, sendbuff, recvbuff, recvcount, &datatype, &op, comm,
                    stream, &r)) {
    r = route(
        {sendbuff, recvbuff, recvcount, datatype, op, comm, stream, Collective::ReduceScatter});
  }
  return joinRefusal(Collective::ReduceScatter, comm, recvcount, &datatype, &op, stream, r);
}

#if GC_NCCL_HAS_PREMULSUM
// After the outer end of the thread's group (its deferred calls run or
// dropped): the ops destroyed in it that deferred calls used, destroyed now,
// in the order the program did (none of a communicator released since: NCCL
// freed its ops with it). Returns `r`, the end's result, whatever these
// destroys answer: the program's ncclRedOpDestroy already returned
// ncclSuccess, and every call of the group ran; an end that failed for them
// would say its calls failed, with no call to blame. NCCL alone would have
// refused the destroy at once, but one it refuses here named an op NCCL did
// not know for the communicator (builtin, garbage or twice-destroyed ops
// never wait: ncclRedOpDestroy answers them at once), so the deferred call
// with that op was refused too, and the end already answers that. The
// refusal is warned about, and NCCL's last error is its own sentence for it.
static ncclResult_t destroyPostponed(ncclResult_t r) {
  GroupCalls& g = groupCalls();
  if (tGroupDepth > 0 || g.destroys.empty()) return r;
  std::vector<GroupCalls::Destroy> destroys;
  destroys.swap(g.destroys);
  for (const GroupCalls::Destroy& d : destroys) {
    const EntryPtr e = d.entry.lock();
    if (e == nullptr || e->released || e->aborted.stopped()) continue;
    const ncclResult_t done = gcNcclRedOpDestroyWithInt(realNccl()->redOpDestroy, d.op, d.comm);
    if (done != ncclSuccess) {
      warnOncePerSentence(
          "ncclRedOpDestroy of op %d of NCCL comm %p, made in a user group and run at its end "
          "after the calls that use the op, returned %d (%s); the group's end answers its calls",
          d.op, (void*)d.comm, (int)done, ncclApi()->getErrorString(done));
    }
  }
  return r;
}

// An op a call deferred to the group's end uses must live until that call
// reached NCCL, so its destroy in the group waits (GroupCalls::destroys). The
// op is read as the int the program gave (a C caller's -1 is not an
// ncclRedOp_t in C++) and passed on so (nccl_ints.c).
GC_INTERPOSE ncclResult_t ncclRedOpDestroy(ncclRedOp_t op, ncclComm_t comm) {
  const auto real = realNccl()->redOpDestroy;
  if (real == nullptr) return ncclSystemError;
  const int o = gc::enumArg(&op);
  if (tGroupDepth > 0 && o >= (int)ncclNumOps) {
    GroupCalls& g = groupCalls();
    for (const GroupCalls::Destroy& d : g.destroys) {
      if (d.comm != comm || d.op != o) continue;
      // Destroyed already, as far as the program can tell: NCCL answers a
      // dead op's destroy so, at once.
      noteOwnError(
          "ncclRedOpDestroy: op %d of NCCL comm %p was already destroyed in this group (the "
          "destroy runs at the group's end, after the calls that use it): ncclInvalidArgument",
          o, (void*)comm);
      return ncclInvalidArgument;
    }
    for (const Deferred& d : g.deferred) {
      if (d.comm != comm || gc::enumArg(&d.op) != o) continue;
      g.destroys.push_back({o, comm, d.entry});
      return ncclSuccess;
    }
  }
  return ncclAnswered(gcNcclRedOpDestroyWithInt(real, o, comm));
}
#else
static ncclResult_t destroyPostponed(ncclResult_t r) {
  return r;
}
#endif

GC_INTERPOSE ncclResult_t ncclGroupStart() {
  if (ncclApi()->groupStart == nullptr) return ncclSystemError;
  const ncclResult_t r = ncclAnswered(ncclApi()->groupStart());
  if (r == ncclSuccess) ++tGroupDepth;
  return r;
}

GC_INTERPOSE ncclResult_t ncclGroupEnd() {
  if (ncclApi()->groupEnd == nullptr) return ncclSystemError;
  const ncclResult_t kept = tGroupDepth == 1 ? keepMultiDeviceGroup() : ncclSuccess;
  const ncclResult_t r = destroyPostponed(leaveGroup(ncclApi()->groupEnd()));
  return r != ncclSuccess ? r : kept;
}

#if GC_NCCL_HAS_SIMULATE
// NCCL simulates only at the outermost end and only with a simInfo: an inner
// end closes its level, and a null simInfo runs the group, both as
// ncclGroupEnd (group.cc, ncclGroupEndInternal).
GC_INTERPOSE ncclResult_t ncclGroupSimulateEnd(ncclSimInfo_t* simInfo) {
  if (realNccl()->groupSimulateEnd == nullptr) {
    // The group stays open in NCCL, so its deferred calls stay with it.
    warnOwnError(
        "ncclGroupSimulateEnd is not in the loaded NCCL (it needs NCCL 2.22 or later); "
        "returning ncclSystemError, the group is still open");
    return ncclSystemError;
  }
  if (tGroupDepth != 1 || simInfo == nullptr) {
    const ncclResult_t kept = tGroupDepth == 1 ? keepMultiDeviceGroup() : ncclSuccess;
    const ncclResult_t r = destroyPostponed(leaveGroup(realNccl()->groupSimulateEnd(simInfo)));
    return r != ncclSuccess ? r : kept;
  }
  // The estimate must cover the eligible calls as NCCL would have seen them:
  // they join the group uncompressed before it ends. Nothing of a simulated
  // group runs, so they are dropped, and nothing counts as passed through.
  std::vector<Deferred> calls, commCalls;
  calls.swap(groupCalls().deferred);
  ncclResult_t f = ncclSuccess;
  for (const Deferred& d : calls) {
    // Aborted or destroyed since it was deferred (as runDeferred): NCCL may
    // have freed the communicator, so the call must not reach it.
    const EntryPtr e = deferredEntry(d);
    if (e == nullptr) {
      warnDeferredReleased(d.comm);
      if (f == ncclSuccess) f = ncclInvalidUsage;
      continue;
    }
    // A finalize or destroy runs after NCCL's end, as the program made it
    // after the calls: NCCL runs a group's finalize and destroy jobs, in a
    // simulated group too, before it prepares the group's calls (group.cc),
    // so in the group it would finalize or free the communicator whose calls
    // NCCL then simulates.
    if (d.commCall != CommCall::None) {
      commCalls.push_back(d);
      continue;
    }
    const ncclResult_t r = forward(nullptr, d);
    if (r != ncclSuccess && f == ncclSuccess) f = r;
  }
  groupCalls().forwarded.clear();
  const std::string refused = groupRefusal();
  const ncclResult_t r = ncclAnswered(realNccl()->groupSimulateEnd(simInfo));
  tGroupDepth = 0;
  // A group NCCL failed drops them with its calls, as leaveGroup does.
  if (r != ncclSuccess) {
    if (!refused.empty()) noteOwnError("%s", refused.c_str());
    warnDroppedCommCalls(commCalls);
  }
  for (const Deferred& d : commCalls) {
    if (r != ncclSuccess) break;
    const EntryPtr e = deferredEntry(d);
    const ncclResult_t c = e == nullptr ? ncclInvalidUsage : runCommCall(d, *e);
    if (e == nullptr) warnDeferredReleased(d.comm);
    if (c != ncclSuccess && f == ncclSuccess) f = c;
  }
  return destroyPostponed(r != ncclSuccess ? r : f);
}
#endif

#if GC_NCCL_HAS_CONFIG
// A constructor's communicator, as the call left it (r its result, *newcomm
// its slot): noted with its blocking mode; a non-blocking one NCCL is still
// making (a split's or shrink's child: ncclSuccess or ncclInProgress with
// *newcomm not yet set, NCCL writes it when the child is done) is noted from
// its slot later.
static void noteMade(ncclResult_t r, ncclComm_t* newcomm, bool nonBlocking,
                     ncclComm_t parent = nullptr) {
  if ((r != ncclSuccess && r != ncclInProgress) || newcomm == nullptr) return;
  const ncclComm_t made = __atomic_load_n(newcomm, __ATOMIC_ACQUIRE);
  if (made != nullptr) {
    noteCreated(made, nonBlocking);
  } else if (nonBlocking) {
    notePendingChild(parent, newcomm);
  }
}

GC_INTERPOSE ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId commId,
                                                 int rank, ncclConfig_t* config) {
  if (realNccl()->commInitRankConfig == nullptr) return ncclSystemError;
  const ncclResult_t r =
      ncclAnswered(realNccl()->commInitRankConfig(comm, nranks, commId, rank, config));
  noteMade(r, comm, nonBlockingFrom(config, config ? config->blocking : 1, false));
  return r;
}
#endif

#if GC_NCCL_HAS_SCALABLE
GC_INTERPOSE ncclResult_t ncclCommInitRankScalable(ncclComm_t* comm, int nranks, int rank, int nId,
                                                   ncclUniqueId* commIds, ncclConfig_t* config) {
  if (realNccl()->commInitRankScalable == nullptr) return ncclSystemError;
  const ncclResult_t r =
      ncclAnswered(realNccl()->commInitRankScalable(comm, nranks, rank, nId, commIds, config));
  noteMade(r, comm, nonBlockingFrom(config, config ? config->blocking : 1, false));
  return r;
}
#endif

#if GC_NCCL_HAS_SPLIT
// A child with no config inherits its parent's blocking mode.
GC_INTERPOSE ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm,
                                        ncclConfig_t* config) {
  if (realNccl()->commSplit == nullptr) return ncclSystemError;
  const bool nonBlocking =
      nonBlockingFrom(config, config ? config->blocking : 1, isNonBlocking(comm));
  const ncclResult_t r = ncclAnswered(realNccl()->commSplit(comm, color, key, newcomm, config));
  // NCCL_SPLIT_NOCOLOR makes no child: NCCL stores NULL in the slot as the
  // call starts and again when the split's job ends (NCCL 2.30.7, src/init.cc:
  // ncclCommInitChildComm, then ncclCommInitRankFunc's exit; for a
  // non-blocking parent that is after the call returned), never a
  // communicator. So the slot is not watched; the program may free or reuse
  // it once the split is done (PyTorch's no-color split).
  if (color != NCCL_SPLIT_NOCOLOR) noteMade(r, newcomm, nonBlocking, comm);
  return r;
}
#endif

#if GC_NCCL_HAS_SHRINK
GC_INTERPOSE ncclResult_t ncclCommShrink(ncclComm_t comm, int* excludeRanksList,
                                         int excludeRanksCount, ncclComm_t* newcomm,
                                         ncclConfig_t* config, int shrinkFlags) {
  if (realNccl()->commShrink == nullptr) return ncclSystemError;
  const bool nonBlocking =
      nonBlockingFrom(config, config ? config->blocking : 1, isNonBlocking(comm));
  auto shrink = [&] {
    return ncclAnswered(realNccl()->commShrink(comm, excludeRanksList, excludeRanksCount, newcomm,
                                               config, shrinkFlags));
  };
  // NCCL_SHRINK_ABORT ends the parent's work in flight, gradcomp's on it too:
  // as at a revoke, its gradcomp comm stops (first: see shrinkAborting).
  const ncclResult_t r =
      (shrinkFlags & NCCL_SHRINK_ABORT) != 0 ? shrinkAborting(comm, shrink) : shrink();
  noteMade(r, newcomm, nonBlocking, comm);
  return r;
}
#endif

#if GC_NCCL_HAS_GROW
// An existing rank's new communicator with no config inherits its parent's
// blocking mode (as a split's or a shrink's); a joining rank (comm NULL) gets
// NCCL's default unless its config says otherwise.
GC_INTERPOSE ncclResult_t ncclCommGrow(ncclComm_t comm, int nRanks, const ncclUniqueId* uniqueId,
                                       int rank, ncclComm_t* newcomm, ncclConfig_t* config) {
  if (realNccl()->commGrow == nullptr) {
    warnOwnError(
        "ncclCommGrow is not in the loaded NCCL (it needs NCCL 2.29.2 or later); "
        "returning ncclInvalidUsage");
    return ncclInvalidUsage;
  }
  const bool nonBlocking = nonBlockingFrom(config, config ? config->blocking : 1,
                                           comm != nullptr && isNonBlocking(comm));
  const ncclResult_t r =
      ncclAnswered(realNccl()->commGrow(comm, nRanks, uniqueId, rank, newcomm, config));
  noteMade(r, newcomm, nonBlocking, comm);
  return r;
}
#endif

#if GC_NCCL_HAS_REVOKE
// NCCL's first, as at an abort: revoking stops its in-flight work on the
// communicator, gradcomp's own calls on it included. Then gradcomp's comm
// stops (its sub-communicators aborted, so no call waits on a peer) and is
// released without waiting; the program's next step is a shrink or destroy.
GC_INTERPOSE ncclResult_t ncclCommRevoke(ncclComm_t comm, int revokeFlags) {
  if (realNccl()->commRevoke == nullptr) {
    warnOwnError(
        "ncclCommRevoke is not in the loaded NCCL (it needs NCCL 2.28 or later); "
        "returning ncclInvalidUsage");
    return ncclInvalidUsage;
  }
  // NCCL refuses a revoke after a finalize or a destroy (ncclInvalidArgument,
  // at the call, not as a group's error: 2.28.7 and later, init.cc, check
  // finalizeCalled and destroyFlag, which a finalize and a destroy set at
  // their call): one the preload holds back behind a user group's calls, or
  // dropped with that group, is one NCCL has not seen, and one whose destroy
  // the preload runs (destroying) one NCCL may not have reached yet, so the
  // preload answers for it. Passed on, NCCL took the revoke, and the group's
  // deferred calls and the held finalize or destroy were refused at its end
  // (the destroy lost: the communicator never freed).
  const EntryPtr e = comm != nullptr ? existingEntry(comm) : nullptr;
  if (e != nullptr && e->finalizeHeld && finalizeCountsAtCall()) {
    noteOwnError(
        "ncclCommRevoke: NCCL comm %p was already finalized (ncclCommFinalize, made in a user "
        "group after calls of it; NCCL refuses a revoke after a finalize): ncclInvalidArgument",
        (void*)comm);
    return ncclInvalidArgument;
  }
  if ((e != nullptr && e->destroyHeld) || (comm != nullptr && destroying(comm))) {
    noteOwnError(
        "ncclCommRevoke: NCCL comm %p was already destroyed (ncclCommDestroy, held back behind a "
        "user group's calls of it or still running; NCCL refuses a revoke after a destroy): "
        "ncclInvalidArgument",
        (void*)comm);
    return ncclInvalidArgument;
  }
  const ncclResult_t r = ncclAnswered(realNccl()->commRevoke(comm, revokeFlags));
  if (r == ncclSuccess || r == ncclInProgress) noteRevoked(comm);
  return r;
}
#endif

// In a user group that deferred calls of the communicator, the destroy runs
// after them, at the group's end (deferBehindCalls).
GC_INTERPOSE ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (realNccl()->commDestroy == nullptr) return ncclSystemError;
  if (deferBehindCalls(comm, CommCall::Destroy)) return ncclSuccess;
  return destroyComm(comm);
}

// NCCL's abort first (it stops kernels that may be stuck on a dead peer),
// then ours (gradcompCommAbort, whose sub-communicators' kernels may be stuck
// too, and which never waits on a peer); in one NCCL group where the gradcomp
// comm has sub-communicators (abortComm). Never deferred behind a user
// group's calls, as a finalize or destroy is: NCCL ends the communicator's
// work at the call, in a group too, and frees it at the group's end, so the
// calls deferred before it are refused (ncclInvalidUsage), never sent there.
GC_INTERPOSE ncclResult_t ncclCommAbort(ncclComm_t comm) {
  return abortComm(comm);
}

// The program's poll of a communicator (PyTorch's NCCLComm and watchdog, a
// C program's loop after a non-blocking split or shrink). NCCL writes such a
// child into the program's slot before it ends the parent's ncclInProgress,
// and the program learns of it from this poll alone: the child is read here,
// while the slot holds it. Read at the preload's next sight of a
// communicator instead, a slot the program had let go by then (a local of a
// function that returned the child, a variable reused) gave whatever it held:
// the child was set up as a blocking communicator, and that value was taken
// for a non-blocking one.
// The error it reads is NCCL's answer to the program as much as a call's
// (a non-blocking call's ncclInProgress that ended in it, an error NCCL's
// thread met): ncclGetLastError answers NCCL's last error again, not a
// sentence the preload noted before (ncclAnswered). The answer is passed on
// unchanged.
GC_INTERPOSE ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError) {
  const auto poll = ncclApi()->commGetAsyncError;
  if (poll == nullptr) return ncclSystemError;
  const ncclResult_t r = ncclAnswered(poll(comm, asyncError));
  if (r == ncclSuccess && asyncError != nullptr) {
    (void)ncclAnswered(*asyncError);
    if (*asyncError != ncclInProgress) notePolled();
  }
  return r;
}

namespace {
// A finalize of a communicator the program finalized already. NCCL refuses
// it at the call (ncclInvalidArgument: init.cc's ncclCommFinalize checks
// comm->finalizeCalled, which 2.22 and later set at the first one's call;
// finalizeCountsAtCall), in a user group too, where the
// refusal is the group's error (ncclGroupErrCheck: the group's end fails and
// runs none of its work). So it is never held back: NCCL answers it at once.
// Where the first is still held back behind this group's deferred calls,
// NCCL has not seen that one: it gets it now, then this one, which it
// refuses; the group then fails at its end as under NCCL alone, and the
// deferred calls never run. NCCL says nothing of the refusal
// (ncclGetLastError): the preload says why.
// A first one NCCL never got and no longer held here (dropped with a user
// group whose end failed, warnDroppedCommCalls; or held in another thread's
// open group) counted all the same under NCCL 2.22 and later, which set
// finalizeCalled at the call and keep it when a failed group's end frees the
// finalize's job (finalizeCountsAtCall): refused here, as NCCL would have,
// NCCL getting nothing; made in a group, as the group's error too (the
// group's end fails and runs nothing of it, failGroup), as under NCCL. An
// older NCCL gets this one and answers it: it counts a finalize once its job
// ran.
ncclResult_t finalizeAgain(ncclComm_t comm, CommEntry& e) {
  const auto finalize = realNccl()->commFinalize;
  if (tGroupDepth > 0) {
    std::vector<Deferred>& calls = groupCalls().deferred;
    const auto held = std::find_if(calls.begin(), calls.end(), [&](const Deferred& d) {
      return d.comm == comm && d.commCall == CommCall::Finalize;
    });
    if (held != calls.end()) {
      calls.erase(held);
      (void)finalizeAnswered(e, ncclAnswered(finalize(comm)));
    }
  }
  if (e.finalizeHeld && finalizeCountsAtCall()) {
    // Warned and noted in one step (warnOwnError): read back after noting it, the process-wide
    // sentence may already be another thread's.
    const bool grouped = failGroup();
    (grouped ? warnOwnError : noteOwnError)(
        "ncclCommFinalize: NCCL comm %p was already finalized (by a finalize made in a user "
        "group, which counts at its call even where the group's end failed and dropped it): "
        "ncclInvalidArgument%s",
        (void*)comm,
        grouped ? "; the end of this call's user group fails with it (the preload fails the "
                  "group by handing NCCL a data call of no communicator, which NCCL refuses, "
                  "warning \"comm argument is NULL\")"
                : "");
    return ncclInvalidArgument;
  }
  const ncclResult_t r = finalizeAnswered(e, ncclAnswered(finalize(comm)));
  if (r == ncclInvalidArgument) {
    noteOwnError(
        "ncclCommFinalize: NCCL comm %p was already finalized (a communicator is finalized "
        "once; in a group, the group's end fails with this refusal): ncclInvalidArgument",
        (void*)comm);
    // NCCL made it the group's error: the end's failure is said so too.
    if (tGroupDepth > 0) groupCalls().refused = true;
  }
  return r;
}
}  // namespace

// Finalize flushes NCCL's work; our state (and the summary) goes at destroy
// or abort. In a user group that deferred calls of the communicator, it runs
// after them, at the group's end (deferBehindCalls); a second one never
// waits (finalizeAgain).
GC_INTERPOSE ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  if (realNccl()->commFinalize == nullptr) return ncclSystemError;
  const EntryPtr e = comm != nullptr ? existingEntry(comm) : nullptr;
  if (e != nullptr && (e->finalizeMade || e->finalizeHeld)) return finalizeAgain(comm, *e);
  if (deferBehindCalls(comm, CommCall::Finalize)) return ncclSuccess;
  const ncclResult_t r = ncclAnswered(realNccl()->commFinalize(comm));
  return e != nullptr ? finalizeAnswered(*e, r) : r;
}

#if GC_NCCL_HAS_LAST_ERROR
// NCCL's last error, unless the preload failed a call itself since NCCL's
// last (noteOwnError): then that sentence. A program that reports a failed
// call with NCCL's message (PyTorch's "Last error:") would otherwise show an
// empty or older, unrelated one for an error NCCL never saw.
GC_INTERPOSE const char* ncclGetLastError(ncclComm_t comm) {
  const auto real = realNccl()->getLastError;
  const char* theirs = real != nullptr ? real(comm) : "";
  const char* ours = ownLastError(theirs);
  return ours != nullptr ? ours : theirs;
}
#endif
