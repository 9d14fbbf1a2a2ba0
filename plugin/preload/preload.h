// Internal state of the LD_PRELOAD interposer, shared by its files:
// settings (GRADCOMP_* read once), the table of NCCL communicators seen,
// and the call paths (forward to NCCL, compress, fuse a group's calls).
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdint.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "backends/cuda/device_guard.h"
#include "backends/cuda/nccl_api.h"
#include "gradcomp.h"
#include "late_key.h"

namespace gc {
namespace preload {

// GRADCOMP_GROUP: what happens to eligible calls inside a user group.
enum class GroupMode : int {
  Defer,  // taken out of the group, compressed one by one after the outer ncclGroupEnd
  Fuse,   // taken out, one fused compressed allreduce per comm/stream/type/op there
  Pass    // left to NCCL inside the group (once the ranks compared their settings)
};

struct Settings {
  bool ok = false;  // the configuration is valid: compression is possible
  std::string why;  // when not ok: the sentence naming the bad variable
  gradcompConfig_t config;
  GroupMode group = GroupMode::Defer;
  uint64_t hash = 0;  // of config and group mode: every rank must have the same
};
// Read once, on the first call that needs it (thread-safe).
const Settings& settings();

// True for the calls DESIGN.md "Interposer rules" compress (the comm's size
// is checked when its entry is decided). `count` is the input count: the
// reduce-scatter's nranks * recvcount, or recvcount alone where that already
// reaches minElements (interpose.cc's inputCount asks NCCL nothing then).
bool eligible(size_t count, ncclDataType_t type, ncclRedOp_t op);

// A call that some rank's GRADCOMP_METHOD and GRADCOMP_MIN_ELEMENTS could make
// eligible (a float type, Sum or Avg, count > 0), whatever this rank's own
// settings say: a communicator's first such call runs the agreement on the
// settings that decide eligibility (agreeEligibility) on every rank alike.
// Deciding on the rank's own eligibility instead made a rank whose settings
// differ hand the call to NCCL while its peers waited in the set-up.
bool opensAgreement(size_t count, ncclDataType_t type, ncclRedOp_t op);

// The settings that decide which calls a rank hands to gradcomp, two words
// each (the value and its complement): after an ncclMin allreduce of every
// rank's words, each pair holds the least value and the complement of the
// greatest, the same on every rank.
constexpr size_t kEligibilityWords = 6;
void eligibilityWords(const gradcompConfig_t& config, GroupMode group,
                      uint64_t words[kEligibilityWords]);
// The reduced words' verdict, the same on every rank: "" when every rank has
// the same values, else a sentence naming the first setting that differs
// with its least and greatest values.
std::string eligibilityDisagreement(const uint64_t least[kEligibilityWords]);

enum class Mode { Undecided, Compress, PassThrough };

// The fused keys a communicator's sets were compressed under. The key derives
// from the members' addresses, so gradients that move between steps (set to
// None and allocated again) give a set a new key, and the library a new
// residual, each time: the old one is never sent and stays allocated. The
// library warns about unkeyed buffers new after a comm's first steps
// (docs/reliability.md, "Known limits"); a keyed call's key is the caller's
// and never warned about, so the fused path watches its own keys by the same
// rule: a key new after kLateFusedMinCalls sets, and four times the sets it
// took to come back to a key (or four sets per key held), most likely means
// moved gradients; so does one new after kLateFusedNoReuseCalls sets none of
// which came back (every gradient moving every step). Counted in fused sets,
// one or a few a step, where the library's rule counts calls. A warning only:
// nothing sent depends on it.
constexpr uint64_t kLateFusedMinCalls = 8;
constexpr uint64_t kLateFusedNoReuseCalls = 256;
struct FusedKeyWatch {
  std::unordered_set<uint64_t> keys;
  uint64_t calls = 0;       // fused sets counted
  uint64_t firstReuse = 0;  // the set (1-based) that first found a key again; 0: none yet
  bool warned = false;
};
// Notes a fused set's key; true once per watch, for the key to warn about.
inline bool fusedKeyIsLate(FusedKeyWatch& w, uint64_t key) {
  if (w.warned) return false;  // said once: the keys need not grow on
  const uint64_t calls = w.calls++;
  const size_t held = w.keys.size();
  if (!w.keys.insert(key).second) {
    if (w.firstReuse == 0) w.firstReuse = w.calls;
    return false;
  }
  if (w.warned || !isLateKey(calls, w.firstReuse, held, kLateFusedMinCalls, kLateFusedNoReuseCalls))
    return false;
  w.warned = true;
  return true;
}

// One NCCL communicator as the interposer sees it. Shared: a call in flight
// keeps it (and its gradcomp state) alive while another thread destroys the
// communicator.
struct CommEntry {
  ncclComm_t nccl = nullptr;
  std::atomic<Mode> mode{Mode::Undecided};
  // Its ranks found their eligibility settings alike (agreeEligibility): an
  // Undecided entry is set up at its first eligible call, which is then the
  // same call on every rank. Set under callMu, before any call relies on it.
  std::atomic<bool> agreed{false};
  bool nonBlocking = false;
  std::string reason;  // why calls pass through (summary line)
  int rank = -1, nranks = 0, device = -1;
  // The size NCCL gave for an undecided entry's reduce-scatter (0: not yet
  // asked) and its device for a user group's check (-1: not yet asked), so
  // that NCCL is asked once, not at every call.
  std::atomic<int> sizeSeen{0}, deviceSeen{-1};
  gradcompComm_t gc = nullptr;
  // One compressed call (or decision) at a time: gradcomp comms are not
  // thread-safe, and NCCL needs the same call order on every rank anyway.
  std::mutex callMu;
  std::atomic<uint64_t> callsCompressed{0}, callsPassed{0};
  std::atomic<uint64_t> rsCompressed{0}, rsPassed{0};  // the reduce-scatter calls among them
  std::atomic<uint64_t> callsAutoPassed{0};  // eligible user calls GRADCOMP_AUTO gave to NCCL
  std::atomic<uint64_t> rsAutoPassed{0};     // the reduce-scatter calls among them
  void* fusion = nullptr;                    // GRADCOMP_GROUP=fuse buffer (device)
  size_t fusionBytes = 0;
  // The least fusionBytes of all ranks at the last vote (fusionStep): the same
  // on every rank, unlike fusionBytes, and never above it.
  size_t fusionAgreed = 0;
  // A captured fused set used the fusion buffer: a CUDA graph may replay it,
  // so growing the buffer keeps the old one (fusionRetired) until the end.
  bool fusionCaptured = false;
  std::vector<void*> fusionRetired;
  // The keys of the fused sets compressed (fusedKeyIsLate). Under callMu.
  FusedKeyWatch fusedKeys;
  // Recorded after the last eager copy out of the fusion buffer, on that
  // set's stream: the next eager fused set waits for it before its copy in,
  // whatever its stream handle.
  cudaEvent_t fusionDone = nullptr;
  // Stopped by ncclCommAbort: the entry's end aborts the gradcomp comm
  // instead of destroying it (no waiting on kernels that may be stuck on a
  // dead peer), and a set-up's wait on a non-blocking communicator ends.
  NcclStop aborted;
  // Forgotten by release (ncclCommDestroy, ncclCommAbort, a new communicator
  // at its address): a call deferred before that must not reach NCCL.
  std::atomic<bool> released{false};
  // The program's ncclCommFinalize of the communicator, after which NCCL
  // refuses a second finalize and a revoke (init.cc: comm->finalizeCalled).
  // NCCL 2.22 and later set it at the finalize's call, in a group too, and
  // keep it when the group's end fails and frees the finalize's job; before
  // 2.22 the job sets it as it ends (commDestroySync), so a finalize dropped
  // with a failed group never counted (finalizeCountsAtCall).
  // finalizeMade: NCCL took one (it refuses those itself). finalizeHeld: one
  // NCCL has not seen: held behind a user group's deferred calls
  // (runCommCall hands it on), or dropped with that group, whose end failed
  // (kept with NCCL 2.22 and later only); the preload refuses those calls
  // itself, as NCCL alone would have.
  std::atomic<bool> finalizeMade{false};
  std::atomic<bool> finalizeHeld{false};
  // An ncclCommDestroy of the communicator NCCL has not seen: held behind a
  // user group's deferred calls, or dropped with that group. NCCL sets its
  // destroyFlag at the destroy's call and then refuses a revoke
  // (ncclInvalidArgument), which the preload does for it (ncclCommRevoke).
  std::atomic<bool> destroyHeld{false};
  ~CommEntry();
};
using EntryPtr = std::shared_ptr<CommEntry>;

// The entry of `comm`, made on first sight.
EntryPtr entryFor(ncclComm_t comm);
// The entry of `comm` if it has one (null if not), making none: for a
// communicator a call names that NCCL may have refused (not one, or one
// destroyed).
EntryPtr existingEntry(ncclComm_t comm);
// The first step of an Undecided entry's set-up, at its first call that
// opensAgreement: every rank's GRADCOMP_METHOD, GRADCOMP_MIN_ELEMENTS and
// GRADCOMP_GROUP compared (one 48-byte NCCL allreduce on `stream`,
// synchronized). Alike: the entry is agreed, and stays Undecided until its
// first eligible call (passing through for good where every rank has GRADCOMP_METHOD=none).
// Different: every rank passes through, with a warning naming the setting and
// its values. Never while `stream` is captured.
void agreeEligibility(CommEntry& e, cudaStream_t stream);
// agreeEligibility() for a call of `comm` on `stream`, unless the stream is
// being captured (as decideUnlessCapturing).
void agreeUnlessCapturing(CommEntry& e, ncclComm_t comm, cudaStream_t stream);
// Decides an Undecided entry: agrees on the eligibility settings first where
// that has not run, then creates the gradcomp comm and agrees with the
// other ranks (one tiny NCCL allreduce on `stream`, synchronized) that every
// rank compresses, or else all pass through. Never while `stream` is captured.
void decide(CommEntry& e, cudaStream_t stream);
// decide() for a call of `comm` on `stream`, unless the stream is being
// captured: then the entry stays Undecided (its calls pass through until an
// eager one), which is said once.
void decideUnlessCapturing(CommEntry& e, ncclComm_t comm, cudaStream_t stream);
// Forgets `comm` (destroyed or aborted), printing its summary at INFO; its
// gradcomp state goes when the last call using it returns. With `abort`
// (ncclCommAbort, after NCCL's own) the gradcomp comm is stopped at once
// (gc::commStop: its sub-communicators aborted, so a call still holding it
// waits on no peer) and aborted rather than destroyed at the end.
// With `revoked` (ncclCommRevoke, a shrink with NCCL_SHRINK_ABORT: the reason
// its summary gives) the communicator is marked revoked in the same step (see
// noteRevoked).
void release(ncclComm_t comm, bool abort = false, const char* revoked = nullptr);
// ncclCommAbort under the preload: NCCL's abort of `comm`, then release(comm,
// abort); when the gradcomp comm on it has NCCL sub-communicators of its own
// (the hierarchy), NCCL's abort and theirs run in one NCCL group.
ncclResult_t abortComm(ncclComm_t comm);
// After NCCL revoked `comm` (ncclCommRevoke): its gradcomp comm is stopped
// and released as at an abort, and the communicator's later calls pass
// through to NCCL (which refuses them) until it is destroyed.
void noteRevoked(ncclComm_t comm);
// ncclCommShrink with NCCL_SHRINK_ABORT under the preload: NCCL ends the
// parent's work in flight and shrinks it (`shrink`, the real call), as a
// revoke and a shrink; gradcomp's comm on the parent is stopped first, its
// sub-communicators' aborts in one NCCL group with the shrink, and released
// as at a revoke (later calls on the parent pass through to NCCL).
ncclResult_t shrinkAborting(ncclComm_t comm, const std::function<ncclResult_t()>& shrink);
// Whether the gradcomp comm's last call failed on every rank alike after
// they compared it (gradcompComm::failedTogether): not one to hand to NCCL.
bool failedTogether(gradcompComm_t gc);
// Makes an Undecided entry pass through from now on, saying why in its summary.
void passAlways(CommEntry& e, const std::string& why);
// The least of every rank's `mine` on e's communicator, into *least: one
// 8-byte ncclAllReduce (ncclMin) on `stream`, waited for, as the set-up's
// agreement. False (why said) where this rank could not take part: its peers
// then wait in it, as in the agreement.
bool voteMin(CommEntry& e, cudaStream_t stream, uint64_t mine, uint64_t* least, std::string* why);
// Records a new communicator (an entry left at its address goes) and, at
// INFO, that it is non-blocking: gradcomp then waits for NCCL's enqueue of
// each call it makes on it (ncclAwait), as a blocking one returns after it.
void noteCreated(ncclComm_t comm, bool nonBlocking);
// A communicator a split or shrink with a non-blocking config is still making:
// NCCL writes it into *slot only when its creation ends, after the call
// returned ncclInProgress. It is noted as non-blocking once *slot is set (read
// when the program's poll first answers other than ncclInProgress, notePolled,
// or else when a communicator not seen before turns up, is asked about, or
// ends).
// `parent` (NULL for a constructor without one): a slot still empty when the
// parent ends is forgotten, never read again (the program may free it).
void notePendingChild(ncclComm_t parent, ncclComm_t* slot);
// The program polled a communicator's state (ncclCommGetAsyncError) and NCCL
// answered other than ncclInProgress: the pending children NCCL has written
// by now are read, while their slots still hold them (the program learns of
// a child from this very poll, and may let its slot go right after).
void notePolled();
// A communicator whose ncclCommDestroy the preload is running (destroyComm,
// at the program's call or held behind a user group's calls): marked before
// its entry goes (release) until NCCL's destroy returned, so that a revoke
// on another thread meanwhile is refused (ncclCommRevoke) as NCCL, which sets
// destroyFlag at the destroy's call, refuses it. A new communicator at its
// address (noteCreated) is not marked.
void markDestroying(ncclComm_t comm, bool on);
bool destroying(ncclComm_t comm);
// Non-blocking by NCCL's rules: NCCL_COMM_BLOCKING overrides; a null config
// inherits `parentNonBlocking`; otherwise config->blocking == 0.
bool nonBlockingFrom(const void* config, int blockingField, bool parentNonBlocking);
bool isNonBlocking(ncclComm_t comm);

// Prints `msg` now, whatever GRADCOMP_DEBUG says: a warning its caller
// already says once (once per communicator).
void warn(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Prints `msg` once per distinct key, whatever GRADCOMP_DEBUG says.
void warnOnce(const std::string& key, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
// The same, keyed on the kind of the formatted sentence (warningKind): a
// reason given in the sentence (a CUDA error, why a communicator passes
// through, the library's refusal of a call) is said once per distinct reason,
// whatever buffers, counts or ranks it names.
void warnOncePerSentence(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// The sentence with each number and 0x pointer that stands alone (not inside
// a name such as fp16) replaced by '#': the values of one call, which would
// make every call's refusal a new warning.
std::string warningKind(const char* sentence);
// A call the preload itself failed (not NCCL: a deferred call whose
// communicator went, a compressed or fused call gradcomp could not complete):
// the sentence, prefixed "gradcomp: ", is what ncclGetLastError answers from
// now until NCCL fails a call the preload passed on (ncclAnswered) or NCCL's
// own last error changes (ownLastError: a call that never reached the
// preload, such as ncclBroadcast), so that a program
// building its message from it (PyTorch's) says why. NCCL's last error is
// process-wide; so is this.
void noteOwnError(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// The sentence noteOwnError kept, while NCCL's last error (`theirs`) is still
// the one it had then; null otherwise.
const char* ownLastError(const char* theirs);
// The sentence noteOwnError kept (without its "gradcomp: "), while it is
// still what ncclGetLastError answers (ownLastError); "" otherwise.
std::string ownErrorStanding();
// NCCL's result `r` for a program's call the preload passed on to it (a data
// call, a group's end, an op's destroy, a communicator's call), returned
// unchanged. An error is NCCL's own: its last error is the answer again, and
// noteOwnError's sentence goes. (NCCL's text alone cannot tell: refusing the
// same call twice, NCCL says the same sentence both times.)
ncclResult_t ncclAnswered(ncclResult_t r);
// A call the preload failed itself, said both ways: warned about once per
// kind of sentence (warnOncePerSentence) and noted as what ncclGetLastError
// answers next (noteOwnError).
void warnOwnError(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// ncclAwait of a call whose result goes back to the program: an error the
// wait reads (a non-blocking communicator's ncclInProgress that ended in its
// error) is NCCL's answer, as at the program's own poll (ncclAnswered); a wait
// an abort ended (`stop`) is the preload's refusal, not NCCL's.
ncclResult_t awaitAnswered(ncclComm_t comm, ncclResult_t r, NcclStop* stop);
// warnOwnError for a deferred call refused (ncclInvalidUsage) because its
// communicator was aborted, destroyed or revoked (ncclCommRevoke, a shrink
// with NCCL_SHRINK_ABORT: the sentence says so) after the call was made
// (once per process and kind: the sentences differ in the communicator
// alone).
void warnDeferredReleased(ncclComm_t comm);
// The most warning keys recorded (warnOnce and warnOncePerSentence together).
constexpr size_t kMaxWarningKinds = 256;

enum class Collective { AllReduce, ReduceScatter };

// The communicator calls that keep their place among a user group's deferred
// calls: a finalize or destroy made in a group after calls of its
// communicator flushes their work (NCCL takes both in a group, 2.14 and
// later), and the preload runs those calls after the group's end. (An abort
// does not wait: it ends the communicator's work at the call, and its
// deferred calls are refused.)
enum class CommCall { None, Finalize, Destroy };

// One call as the application made it (count: the allreduce's count or the
// reduce-scatter's recvcount); also an eligible call deferred inside a user
// group (GRADCOMP_GROUP=defer|fuse).
struct Deferred {
  const void* send;
  void* recv;
  size_t count;
  ncclDataType_t type;
  ncclRedOp_t op;
  ncclComm_t comm;
  cudaStream_t stream;
  Collective coll = Collective::AllReduce;
  // The entry the call was deferred with (route): at the group's end the
  // communicator may have been aborted or destroyed (its address then names
  // nothing, or another communicator), and the call must not reach NCCL. A
  // weak reference, so that release() still ends the entry, and gradcomp's
  // comm with it, before NCCL destroys the communicator. Untracked (a
  // Deferred made elsewhere): the address's current entry.
  std::weak_ptr<CommEntry> entry{};
  bool tracked = false;
  // A call NCCL gets as it is (once its communicator's ranks agree: until
  // then this rank's own settings decided it), deferred only to keep its
  // place after the calls of its communicator deferred before it, or for
  // that agreement (route).
  bool pass = false;
  // Not a data call: the communicator's ncclCommFinalize or ncclCommDestroy,
  // made in the group after calls of it were deferred, which runs in its
  // place behind them (runCommCall); of the fields above only comm and the
  // entry count.
  CommCall commCall = CommCall::None;
};
// A deferred call's entry at the group's end (deferredEntry): null when its
// communicator was aborted or destroyed since the call was made.
EntryPtr deferredEntry(const Deferred& d);

// The residual key of a fused set (GRADCOMP_GROUP=fuse): its members'
// receive buffers and counts in order, and its op. Unfused calls are keyed by
// their receive buffers too; a key of the counts alone gave every group of
// the same shape (the layers of a model) one residual between them.
inline uint64_t fusedStateKey(const std::vector<const Deferred*>& members) {
  uint64_t key = 0xcbf29ce484222325ull;
  auto mix = [&](uint64_t v) { key = (key ^ v) * 0x100000001b3ull; };
  for (const Deferred* d : members) {
    mix((uint64_t)(uintptr_t)d->recv);
    mix(d->count);
  }
  if (!members.empty()) mix((uint64_t)members[0]->op);
  return key;
}

// The order runDeferred runs a group's deferred calls in: steps of call
// indexes, each one call or one fused set (fusable[i]: call i may join a set,
// the allreduces of compressing communicators under GRADCOMP_GROUP=fuse). A
// set is the calls of one communicator, stream, type and op. NCCL runs a
// communicator's calls in program order, so a communicator's pending sets run
// before its next call that is not fused (a reduce-scatter or a call passed
// through may read an in-place allreduce's result); the rest at the end, each
// set where its first call was. Depends on the calls' communicators, kinds,
// types and ops alone, never on their buffers' addresses, which differ between
// ranks: every rank makes the same sets, so the same NCCL calls. (So a set
// still copies all its inputs in before any result comes out: a group where an
// allreduce reads an earlier one's output is for GRADCOMP_GROUP=defer.)
inline std::vector<std::vector<size_t>> planDeferred(const std::vector<Deferred>& calls,
                                                     const std::vector<bool>& fusable) {
  std::vector<std::vector<size_t>> steps;
  std::vector<size_t> pending;  // fusable calls not yet in a step, in order
  auto runSets = [&](ncclComm_t comm, bool all) {
    std::vector<size_t> kept;
    std::vector<bool> done(pending.size(), false);
    for (size_t i = 0; i < pending.size(); ++i) {
      const Deferred& a = calls[pending[i]];
      if (done[i]) continue;
      if (!all && a.comm != comm) {
        kept.push_back(pending[i]);
        continue;
      }
      std::vector<size_t> set;
      for (size_t j = i; j < pending.size(); ++j) {
        const Deferred& b = calls[pending[j]];
        if (done[j] || b.comm != a.comm || b.stream != a.stream || b.type != a.type ||
            b.op != a.op) {
          continue;
        }
        set.push_back(pending[j]);
        done[j] = true;
      }
      steps.push_back(set);
    }
    pending.swap(kept);
  };
  for (size_t i = 0; i < calls.size(); ++i) {
    const Deferred& d = calls[i];
    if (fusable[i]) {
      pending.push_back(i);
      continue;
    }
    runSets(d.comm, false);
    steps.push_back({i});
  }
  runSets(nullptr, true);
  return steps;
}

// What a fused set of `bytes` does before its copy in (runFusedSet). Every
// rank makes the same sets, so it is decided on what every rank voted it can
// hold (`agreed`, CommEntry::fusionAgreed), never on this rank's own buffer:
// after a growth that failed on one rank, that rank's buffer is smaller than
// its peers', and had it grown (and failed) alone, its peers would have waited
// in the fused call. Run: every rank's buffer holds the set. Vote: every rank
// grows its buffer where it must, then all take the least buffer size
// (voteMin) as the new agreement; the set is compressed if that holds it,
// else every rank passes its calls to NCCL (and the next such set votes
// again). Pass: a set being captured that outgrows the agreement (the
// growth's allocation and vote cannot run under capture), on every rank
// alike.
enum class FusionStep { Run, Vote, Pass };
inline FusionStep fusionStep(size_t bytes, size_t agreed, bool capturing) {
  if (bytes <= agreed) return FusionStep::Run;
  return capturing ? FusionStep::Pass : FusionStep::Vote;
}

// The real ncclAllReduce / ncclReduceScatter with the caller's arguments,
// counted as passed through.
ncclResult_t forward(CommEntry* e, const Deferred& d);
// gradcompAllReduce / gradcompReduceScatter on a Compress entry; a call
// gradcomp refuses before enqueuing anything (first call of a buffer under
// capture, say) is forwarded.
ncclResult_t compress(CommEntry& e, const Deferred& d, bool keyed, uint64_t key,
                      uint64_t userCalls);
// The whole path of one call outside a user group (decide, compress or pass).
ncclResult_t route(const Deferred& d);

// Runs the deferred calls of a user group after its outer ncclGroupEnd: one by
// one (defer) or fused (fuse; reduce-scatters run one by one, as their
// blocks interleave and cannot be concatenated).
ncclResult_t runDeferred(std::vector<Deferred>& calls);
// The finalize or destroy a Deferred stands for (d.commCall), made now on
// e's communicator: NCCL's ncclCommFinalize (a non-blocking communicator's
// waited for, as a deferred call's enqueue is), or the preload's
// ncclCommDestroy (gradcomp's comm released, then NCCL's destroy).
ncclResult_t runCommCall(const Deferred& d, CommEntry& e);

using ::gc::DeviceGuard;

}  // namespace preload
}  // namespace gc
