// What the entry points (allreduce.cc, reduce_scatter.cc) share: the
// compress-or-pass decision, buffer checks, the state of a buffer, and the
// stats of a compressed call.
#pragma once

#include <stdint.h>

#include <utility>

#include "checks.h"
#include "comm.h"
#include "late_key.h"

namespace gc {

struct Algorithm;

// Residual state kinds: the allreduce and the reduce-scatter never share a
// buffer's state, even for the same pointer and count.
enum StateKind : int {
  kStateAllReduce = 0,  // + 1 when keyed
  kStateReduceScatter = 2
};

// What every collective does first, once its stream is set: records the call
// for the CPU world's per-collective agreement (kind, step, count, type, op;
// on a hierarchical CPU comm, which calls only sub-worlds, one agreement of
// the whole world) and, after a state load or reset, checks once that all
// ranks are at the same step (a host sync, so refused under capture; on the
// CPU backends the call's own agreement checks it, so that a rank that
// loaded or reset alone agrees as often as its peers). With
// GRADCOMP_CHECK_CALLS, a transport that does not check every collective
// (NCCL) runs that agreement before every call outside capture.
gradcompResult_t beginCollective(gradcompComm& c, CallKind kind, size_t count, ncclDataType_t type,
                                 ncclRedOp_t op);

// Held by a compressed call from its first enqueued work to its return:
// marks the call's end on its stream on every way out, failures included
// (Backend::markCallEnd), so the next call, on any stream, waits for all of it
// before it reuses the workspace or reads the step counter.
class CallEnd {
 public:
  explicit CallEnd(Backend& be) : be_(be) {}
  ~CallEnd() { be_.markCallEnd(); }
  CallEnd(const CallEnd&) = delete;
  CallEnd& operator=(const CallEnd&) = delete;

 private:
  Backend& be_;
};

// The CPU backend's ranks agree on a call (step, count, type, op, kind) once
// its local arguments are checked and before it touches a buffer's state:
// its exchanges check the call too, but a compressed call has changed the
// residual (and DGC's momentum) before its first one, and a refused call must
// leave the comm as it was. Only on transports that check every call (the
// CPU world, sockets; NCCL checks nothing: see GRADCOMP_CHECK_CALLS), not on
// a hierarchical CPU comm (beginCollective agreed), not under capture (a
// host sync), not for the auto timing's own calls (the same on every rank).
gradcompResult_t agreeBeforeState(gradcompComm& c);

// DESIGN.md's eligibility rule: fp32/fp16/bf16, Sum/Avg, count >=
// minElements, more than one rank, a method. `count` is the input count
// (the reduce-scatter's nranks * recvcount).
bool compressible(const gradcompComm& c, size_t count, ncclDataType_t type, ncclRedOp_t op);

// Alignment, device pointers, and overlap: recv may overlap send only at
// send + inPlaceOffset elements (the collective's in-place form).
gradcompResult_t checkBuffers(const gradcompComm& c, const void* send, size_t sendCount,
                              const void* recv, size_t recvCount, size_t inPlaceOffset, DType t);

// The state of the call's buffer: by recvbuff, or by the caller's key. An
// unkeyed buffer new after the comm's first kLateBufferMinCalls calls, and
// after four times the calls it took the comm to find a state again (or
// four calls per state it holds), or after kLateBufferNoReuseCalls calls none
// of which found a state again, is warned about once (it most likely moved:
// docs/reliability.md, "Known limits").
constexpr uint64_t kLateBufferMinCalls = 64;
constexpr uint64_t kLateBufferNoReuseCalls = 1024;
// The key of that state (comm.h StateKey): the caller's key, or recvbuff.
StateKey stateKey(int kind, bool keyed, uint64_t key, const void* recv, size_t count, DType t);
gradcompResult_t findState(gradcompComm& c, int kind, bool keyed, uint64_t key, const void* recv,
                           size_t count, DType t, BufferState** state);

// The workspace a QSGD call of `bits` sizes, bytesFor(bits); in GRADCOMP_AUTO's
// reserving pass with a DQ-SGD width (dynamic, budget), the largest over
// bitsMin..bitsMax: the timed calls choose their widths from the results
// before them and must find their workspace made (autotune.h).
template <typename BytesFor>
size_t qsgdWorkspaceBytes(const gradcompComm& c, int bits, BytesFor bytesFor) {
  size_t ws = bytesFor(bits);
  if (c.autoState.reserving && c.cfg.bitsMode != gradcompBitsFixed) {
    for (int b = c.cfg.bitsMin; b <= c.cfg.bitsMax; ++b) {
      const size_t w = bytesFor(b);
      if (w > ws) ws = w;
    }
  }
  return ws;
}

// DGC with momentum correction keeps the velocity that the optimizer then
// leaves out (momentum 0 on the parameters gradcomp serves), so a call it does
// not compress must still carry it: true for a DGC comm with momentum
// correction and m > 0, on fp32/fp16/bf16 Sum/Avg, whatever the count, rank
// count or GRADCOMP_AUTO decide.
bool passesMomentum(const gradcompComm& c, ncclDataType_t type, ncclRedOp_t op);

// C callers may pass any int as an enum: refuses a datatype that is not one
// of NCCL's (0..ncclNumTypes-1) or a negative op, reading both as ints
// first, so that nothing reads an invalid value as the enum.
gradcompResult_t checkCallEnums(const ncclDataType_t* type, const ncclRedOp_t* op);

// Such a call, uncompressed: v += (u = m*u + s*g) as a compressed call
// accumulates (clipping included), all of v goes to NCCL's collective in the
// buffer type, then v is spent (cleared) and u kept, as in the dense
// fallback without masking: the step is momentum SGD's. A non-finite v
// reaches the output, and a non-finite output clears u and v on every rank
// (discardStateIfNonFinite). Counted as passed through. On a hierarchical
// comm the reduce-scatter's u and v
// are in the compressed call's permuted block order (hier_reduce_scatter.cc),
// so that each element keeps its own across a retune. `kind` is
// kStateAllReduce or kStateReduceScatter;
// `count` is recvcount (the allreduce's count). `agreed`: the caller has
// already checked the buffers and run agreeBeforeState for this call.
gradcompResult_t momentumPassThrough(gradcompComm& c, int kind, bool keyed, uint64_t key,
                                     bool agreed, const void* send, void* recv, size_t count,
                                     ncclDataType_t type, ncclRedOp_t op);

// A call GRADCOMP_AUTO passes (the buffers checked and the call agreed on)
// for a buffer whose state, made by earlier compressed calls, holds a
// residual: v = residual + g goes to NCCL's collective in the buffer type,
// then v is spent (cleared; a non-finite output clears the whole state,
// discardStateIfNonFinite), so a retune from compressed to passed delays the
// residual by nothing. Not for
// a buffer without such a state, nor when the workspace cannot be had (the
// residual then waits, as before 2026-12-05): *done false, the caller passes
// the call plainly, and in the second case then runs discardStateIfNonFinite
// on *check (null in the first), as the peers that sent theirs check theirs
// (a reduce-scatter's check is a collective), and marks it sent as they mark
// theirs, so that the later passes go plainly on every rank (the residual
// waits for the next compressed call). An exchange that fails, or the
// reduce-scatter's flag allreduce after it, leaves the residual and the owner
// residual as they were, for a retry of the call. fp16/bf16: v's rounding to
// the buffer type is not kept.
// An allreduce's owner residual (GRADCOMP_OWNER_RESIDUAL: two-shot, ring and
// the hierarchy's middle stage) goes along too, added to v on the chunk this
// rank reduced (Algorithm::ownerSpan), also without error feedback. Once per
// buffer: later passes, until a call that may compress finds the state again,
// go plainly (BufferState::residualSent). Counted as passed through when done.
gradcompResult_t residualPassThrough(gradcompComm& c, int kind, bool keyed, uint64_t key,
                                     const void* send, void* recv, size_t count,
                                     ncclDataType_t type, ncclRedOp_t op, bool* done,
                                     BufferState** check);

// A call gradcomp does not compress, as `kind`'s collective (kStateAllReduce:
// the transport's passThrough of `count` elements; kStateReduceScatter: its
// reduceScatter of recvcount `count`); on a DGC comm with momentum correction
// it still carries the velocity (momentumPassThrough). `agreed`: the buffers
// are checked and the call agreed on already.
gradcompResult_t passThroughCall(gradcompComm* c, StateKind kind, bool keyed, uint64_t key,
                                 bool agreed, const void* send, void* recv, size_t count,
                                 ncclDataType_t type, ncclRedOp_t op);

// DGC warm-up changes sizes by stage, which a captured graph cannot follow.
gradcompResult_t checkWarmupCapture(const gradcompComm& c, const BufferState& s);

// Whether every rank's `local` step succeeded: *refused is the highest rank
// whose step failed, or -1. One allreduce (max) of a float on the comm's
// transport in the backend's agreement scratch and a host sync: nothing to
// allocate, so a rank short of memory can still vote.
gradcompResult_t agreeReady(gradcompComm* c, gradcompResult_t local, int* refused);

// GRADCOMP_CHECK_CALLS (and verifyNext, below), for a call this rank
// refuses for its own arguments before or between the votes below
// (`local`, its error already set: a datatype or op that is not NCCL's, a
// count out of range) while its peers, whose arguments pass, go on to the
// call's next vote or exchange. On a transport that checks every call (the
// CPU world, sockets) this rank still joins one agreement
// (Transport::verifyCall) with a record that says it
// refused and what (kCallRefused, `why`), so the peers fail there at once
// naming it instead of after cpuTimeoutSec, as they do for a buffer refused
// on one rank (agreeBuffersGiven); a call every rank refuses agrees, whatever
// each refused (sameCall), and leaves the comm usable.
// On NCCL, whose collectives check nothing, it joins only where the peers'
// next exchange is certainly that agreement: `beforeBegin`, a refusal made
// before beginCollective (whose agreement the setting runs before every
// eager call of a nonzero count, also on a hierarchical comm, over the whole
// world's transport). One made after it is not: every rank agreed on the
// count there and refuses alike, and the peers' next collective there is a
// vote (an allreduce of a float) that an allgather would meet. A rank whose
// peers pass a count of 0 (they return before any exchange) then meets
// their next collective on the comm, as a rank of a nonzero count does in
// NCCL when its peers pass 0 (the CPU world fails it after cpuTimeoutSec).
// The caller's stream and device must be set first.
// Only on that path: a call that is not refused exchanges nothing more.
// Without the setting a refusal stays this rank's own, as NCCL's (a rank
// that makes the call alone returns at once, its peers wait), except for
// the first call after a state load or reset (verifyNext): every rank runs
// beginCollective's agreement there anyway, so a refusal made before it
// joins as above. A failed join leaves verifyNext set, as the failed
// agreement leaves it on the peers (and one that every rank refused agrees
// and leaves it set everywhere): the next call verifies on every rank.
// Neither way under capture, in the auto timing's calls, or for a call of
// no elements (its peers return before any exchange). `count`: the count
// the caller passed. Returns `local` with this rank's own sentence.
gradcompResult_t refuseCall(gradcompComm& c, size_t count, int type, int op, CallRefusal why,
                            gradcompResult_t local, bool beforeBegin = false);
// refuseCall for a datatype or op checkCallEnums refused, on any comm the
// caller passed (none when it is NULL, aborted or busy; one that is not live
// never comes here: collectiveEntry refuses it first), before
// the call began; it sets `stream` (and the comm's device) as a call does.
gradcompResult_t refuseCallEnums(gradcompComm* c, size_t count, const ncclDataType_t* type,
                                 const ncclRedOp_t* op, cudaStream_t stream,
                                 gradcompResult_t local);

// The collectives of gradcompAllReduce(Keyed) and gradcompReduceScatter(Keyed)
// once collectiveEntry has pinned the comm and made its device current. A
// call the library makes on its own comm inside a public call (the auto
// timing's) runs them directly, under that call's pin: one public call holds
// one pin, so an abort on another thread meanwhile fails it as an aborted
// comm's calls fail (CommCall), not as a comm that was never live.
gradcompResult_t allReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, gradcompComm* c, cudaStream_t stream, bool keyed,
                           uint64_t key);
gradcompResult_t reduceScatter(const void* send, void* recv, size_t recvCount, ncclDataType_t type,
                               ncclRedOp_t op, gradcompComm* c, cudaStream_t stream, bool keyed,
                               uint64_t key);

// The body of a collective's C entry point (gradcompAllReduce,
// gradcompReduceScatter and their keyed forms): a datatype or op that
// checkCallEnums refuses is refused before anything reads it as the enum
// (refuseCallEnums, `count` as the caller passed it); otherwise `call` runs
// on the comm's device. Either guarded. First of all, a comm that is not
// live is refused (CommPin), whatever the other arguments.
template <typename F>
gradcompResult_t collectiveEntry(gradcompComm* comm, size_t count, const ncclDataType_t* type,
                                 const ncclRedOp_t* op, cudaStream_t stream, F&& call) {
  const CommPin pin(comm);
  GC_CHECK(pin.check());
  if (const gradcompResult_t bad = checkCallEnums(type, op); bad != gradcompSuccess) {
    return guarded([&] { return refuseCallEnums(comm, count, type, op, stream, bad); });
  }
  OnCommDevice onDevice(comm);
  return guarded(std::forward<F>(call));
}

// GRADCOMP_CHECK_CALLS, for a compressed call: `local` is how this rank's
// preparation went (the buffer's state and the workspace: what one rank
// alone can fail, out of memory say). The ranks vote on it
// (agreeReady) before any of them exchanges, so a rank that failed returns
// its own error and its peers return gradcompInvalidUsage naming it, instead
// of waiting in an exchange it never joins. Without the setting, while
// capturing (no host sync) or in the auto timing's reserving pass: `local`.
// `what` names what was prepared in the peers' sentence (default: the
// buffer's state and workspace).
gradcompResult_t agreePrepared(gradcompComm& c, gradcompResult_t local,
                               const char* what = "the state or workspace of its buffer");
// The buffers' own checks, which also fail on one rank alone, voted on as
// agreePrepared votes: agreeBuffersGiven that neither is NULL (`countName`
// names the count in the sentence), before the call is passed or compressed;
// agreeBuffers checkBuffers' result, before a compressed call.
gradcompResult_t agreeBuffersGiven(gradcompComm& c, const void* send, const void* recv,
                                   size_t count, const char* countName);
gradcompResult_t agreeBuffers(gradcompComm& c, const void* send, size_t sendCount, const void* recv,
                              size_t recvCount, size_t inPlaceOffset, DType t);

// CPU world only: every rank must pass the same `value` (an allgather of 8
// bytes), else all fail with gradcompInvalidUsage. NCCL cannot check this
// without a host sync, so the CUDA backend skips it, as NCCL does.
gradcompResult_t checkRanksAgree(gradcompComm& c, uint64_t value, const char* what);

// Stats and step of one compressed call; `algoId` < 0 counts no algorithm.
// bytesInterNode: of bytesOnWire, the bytes sent to ranks on other nodes.
gradcompResult_t finishCall(gradcompComm& c, BufferState& s, int algoId, size_t bytesIn,
                            size_t bytesOnWire, size_t bytesInterNode);

// A QSGD call's bit width: bitsLast and the per-width call count.
void recordBits(gradcompComm& c, int bits);

// The end of a call that carries the buffer's state (compressed, or passed
// with it): when its output, recv's `count` elements of type t, holds a NaN
// or an infinity, every rank clears the buffer's error feedback (residual,
// owner residual, DGC's velocity and momentum; DQ-SGD's statistics stay).
// Such an output is what AMP's GradScaler skips, and what the state kept of
// the call is the skipped step's: a finite gradient whose sum over the ranks
// overflows the type leaves huge leftovers that would make the next calls
// non-finite too (or, once rescaled, finite and huge). The decision is taken
// from the output, alike on every rank: an allreduce's is the same
// everywhere, a reduce-scatter's blocks are ORed over the ranks (one
// allreduce of a float). On the stream, no host sync; a buffer without state
// checks nothing. docs/reliability.md, "Non-finite gradients".
// `flagged`: the kernels that wrote the output already set the flag
// (outputFlag below), so it is not read again.
gradcompResult_t discardStateIfNonFinite(gradcompComm& c, BufferState& s, const void* recv,
                                         size_t count, DType t, bool reduceScatter,
                                         bool flagged = false);
// The flag an algorithm that flagsOutput is to set as it writes the output
// (CallArgs::outputFlag): the backend's flag scratch, zeroed on the stream,
// where the buffer's state holds what discardStateIfNonFinite guards; null
// otherwise (the algorithm does not flag, or there is nothing to check).
gradcompResult_t outputFlag(gradcompComm& c, const BufferState& s, const Algorithm& algo,
                            float** flag);

}  // namespace gc
