// Shared pieces of the entry points (see collective.h).
#include "collective.h"

#include <stdio.h>
#include <string.h>

#include <array>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "algorithms/algorithms.h"
#include "backends/cuda/device_ptr.h"
#include "backends/sparse_ops.h"
#include "checks.h"
#include "codecs/qsgd.h"

namespace gc {

namespace {

const char* const kBuffers = "its send and receive buffers";  // agreePrepared's `what`

// Every rank runs an agreement on the call: one that fails, fails on all of them.
gradcompResult_t agreeOnCall(gradcompComm& c) {
  const gradcompResult_t r = c.transport->verifyCall();
  if (r != gradcompSuccess) c.failedTogether = true;
  return r;
}
}  // namespace

gradcompResult_t agreeBeforeState(gradcompComm& c) {
  if (!c.transport->checksEveryCall() || c.intra || c.backend->capturing() || c.autoState.tuning ||
      c.autoState.reserving)
    return gradcompSuccess;
  return agreeOnCall(c);
}

gradcompResult_t beginCollective(gradcompComm& c, CallKind kind, size_t count, ncclDataType_t type,
                                 ncclRedOp_t op) {
  // The auto timing's reserving pass only makes state and workspace, on each
  // rank alone: it exchanges nothing, so it neither records nor agrees on a call.
  if (c.autoState.reserving) return gradcompSuccess;
  c.failedTogether = false;
  auto agreement = [&c]() { return agreeOnCall(c); };
  c.transport->beginCall(CallInfo{c.step, count, (int)type, (int)op, (int)kind, c.stateDigest});
  // A hierarchical call runs on the node and inter-node sub-worlds alone,
  // which see neither the call nor each other: the CPU world agrees on it
  // first, so that a rank's different op or count fails every rank with its
  // sentence rather than one node, or none.
  const bool agreedHere = c.intra && !c.backend->onDevice();
  if (agreedHere) GC_CHECK(agreement());
  if (c.verifyNext) {
    if (c.backend->capturing()) {
      return setError(gradcompInvalidUsage,
                      "the first call after a state load, reset or forget checks that all ranks "
                      "agree (a host sync) and cannot be captured into a CUDA graph; make one "
                      "eager call first");
    }
    // The CPU backends agree on every call anyway, on the same record (step
    // and state digest), before it touches a buffer's state: above on a
    // hierarchical comm, else agreeBeforeState or a passed call's own
    // exchange. One more agreement here, on a rank that loaded, reset or
    // forgot alone, would meet a peer's next one: the ranks would be an
    // agreement apart, the peer in its exchange (its residual changed) while
    // this rank agreed again, and every rank would fail a call their states
    // agree on (a hierarchical comm's after cpuTimeoutSec, at every call).
    if (!agreedHere && !c.transport->checksEveryCall()) GC_CHECK(agreement());
    c.verifyNext = false;
  } else if (c.cfg.checkCalls && !c.transport->checksEveryCall() && !c.autoState.tuning) {
    // GRADCOMP_CHECK_CALLS: the same agreement before every call. Its host
    // sync cannot be captured, and refusing would make the setting break
    // graphs, so captured calls go unchecked, said once per comm. Not in
    // GRADCOMP_AUTO's timed calls (gradcomp's own, alike on every rank): a
    // host sync in them would bias the timing.
    if (!c.backend->capturing()) {
      GC_CHECK(agreement());
    } else if (!c.warnedCheckCapture) {
      c.warnedCheckCapture = true;
      GC_WARN(
          "rank %d: GRADCOMP_CHECK_CALLS does not check calls captured into a CUDA graph "
          "(its agreement is a host sync); eager calls are still checked",
          c.rank);
    }
  }
  return gradcompSuccess;
}

bool compressible(const gradcompComm& c, size_t count, ncclDataType_t type, ncclRedOp_t op) {
  const bool typeOk = type == ncclFloat32 || type == ncclFloat16 || type == ncclBfloat16;
  return c.cfg.method != gradcompMethodNone && typeOk && (op == ncclSum || op == ncclAvg) &&
         count >= c.cfg.minElements && c.nranks > 1;
}

gradcompResult_t checkCallEnums(const ncclDataType_t* type, const ncclRedOp_t* op) {
  static_assert(sizeof(ncclDataType_t) == sizeof(int) && sizeof(ncclRedOp_t) == sizeof(int),
                "NCCL's enums are ints");
  int t, o;
  memcpy(&t, type, sizeof t);
  memcpy(&o, op, sizeof o);
  GC_ARG(t >= 0 && t < (int)ncclNumTypes, "datatype=%d is not an NCCL data type (0..%d)", t,
         (int)ncclNumTypes - 1);
  GC_ARG(o >= 0,
         "op=%d is not an NCCL reduction (ncclSum..ncclAvg, 0..4, or one from "
         "ncclRedOpCreatePreMulSum)",
         o);
  return gradcompSuccess;
}

bool passesMomentum(const gradcompComm& c, ncclDataType_t type, ncclRedOp_t op) {
  const bool typeOk = type == ncclFloat32 || type == ncclFloat16 || type == ncclBfloat16;
  return c.cfg.method == gradcompMethodDgc && c.cfg.momentumCorrection && c.cfg.momentum > 0.0f &&
         typeOk && (op == ncclSum || op == ncclAvg);
}

namespace {

// Where this rank's owner residual lies in an allreduce buffer of count
// elements: the span of the algorithm a compressed call runs (allreduce.cc);
// empty where it keeps none (allgather, Elias, the sparse methods).
OwnerSpan allReduceOwnerSpan(const gradcompComm& c, size_t count) {
  if (c.cfg.method != gradcompMethodQsgd || c.cfg.elias) return {};
  const Algorithm& algo = pickDenseAlgorithm(c, count);
  return algo.ownerSpan != nullptr ? algo.ownerSpan(c, count) : OwnerSpan{};
}

// The state arrays discardStateIfNonFinite clears, with their lengths.
std::array<std::pair<float*, size_t>, 3> feedbackArrays(const BufferState& s) {
  return {{{s.residual, s.count}, {s.ownerResidual, s.ownerResidualCount}, {s.momentum, s.count}}};
}

// discardStateIfNonFinite in its two halves, which the pass-through below
// runs apart: whether the state holds error feedback at all (else nothing is
// checked); the output's flag in the backend's flag scratch (read off the
// output, or `flagged`: already set by the kernels that wrote it; a
// reduce-scatter's ORed over the ranks: an allreduce of a float); the clear
// of the state where the flag is set.
bool holdsFeedback(const BufferState& s) {
  bool held = false;
  for (const auto& a : feedbackArrays(s)) held |= a.first != nullptr && a.second > 0;
  return held;
}

gradcompResult_t flagNonFiniteOutput(gradcompComm& c, const void* recv, size_t count, DType t,
                                     bool reduceScatter, bool flagged = false) {
  float* flag = c.backend->flagScratch();
  if (!flagged) GC_CHECK(c.backend->flagNonFinite(recv, t, count, flag));
  if (reduceScatter) GC_CHECK(c.transport->passThrough(flag, flag, 1, ncclFloat32, ncclMax));
  return gradcompSuccess;
}

gradcompResult_t clearStateIfFlagged(gradcompComm& c, BufferState& s) {
  const float* flag = c.backend->flagScratch();
  for (const auto& a : feedbackArrays(s)) {
    if (a.first) GC_CHECK(c.backend->zeroIfFlagged(a.first, a.second, flag));
  }
  return gradcompSuccess;
}

// A call sent uncompressed with what the buffer's state carries: with
// `momentum`, DGC's velocity (momentumPassThrough); without, the residual of
// a buffer that earlier calls compressed, and the owner residual of the
// allreduce chunk this rank reduced (residualPassThrough), then only when
// that state exists and the workspace can be had (*done false otherwise:
// the caller passes the call plainly, and where *check is set, then runs
// discardStateIfNonFinite on that state).
gradcompResult_t carriedPassThrough(gradcompComm& c, int kind, bool keyed, uint64_t key,
                                    bool agreed, const void* send, void* recv, size_t count,
                                    ncclDataType_t type, ncclRedOp_t op, bool momentum, bool* done,
                                    BufferState** check) {
  *done = false;
  *check = nullptr;
  const bool rs = kind == kStateReduceScatter;
  const size_t n = rs ? count * (size_t)c.nranks : count;
  DType t;
  GC_CHECK(dtypeFromNccl(type, &t));
  // The velocity is a state of n floats, as a compressed call's residual:
  // the same range (the reduce-scatter's recvcount was bounded before).
  GC_CHECK(refuseCall(c, count, (int)type, (int)op, rs ? kRefusedRecvCount : kRefusedCount,
                      codecCheckCount(n)));
  if (!agreed) {
    GC_CHECK(agreeBuffers(c, send, n, recv, count, rs ? (size_t)c.rank * count : 0, t));
    GC_CHECK(agreeBeforeState(c));
  }
  // A hierarchical comm's compressed reduce-scatter keeps u and v in its
  // stage-1 order (hier_reduce_scatter.cc): state block l*k + j holds input
  // block R(j, l). The pass-through keeps them in that order too, so a
  // retune between the two leaves every element's u and v on its own block
  // (summed over the ranks, as the allreduce's, which needs no order).
  const bool permuted = rs && useHierReduceScatter(c);
  // permuted: state block -> its input offset, and every block's length
  // (the comm's CallScratch, refilled by every call).
  std::vector<size_t>& blockAt = callScratch(c).passBlockAt;
  std::vector<size_t>& lens = callScratch(c).passLens;
  if (permuted) {
    const Topology& topo = c.topo;
    blockAt.resize((size_t)c.nranks);
    lens.assign((size_t)c.nranks, count);
    for (int l = 0; l < topo.localSize; ++l) {
      for (int j = 0; j < topo.nodes; ++j)
        blockAt[(size_t)l * topo.nodes + j] = (size_t)topo.rankAt(j, l) * count;
    }
  }
  // Workspace: the old v (settle's keep), v itself when there is no error
  // feedback, the reduce-scatter's input in the buffer type (the caller's
  // send buffer is read only; the flush's allreduce input too, below),
  // permuted: the input widened into the state's order, the owner
  // residual's settle, the clipping's scratch.
  BufferState* st = nullptr;
  OwnerSpan owner;  // the flush's owner residual, in the buffer
  size_t keepAt = 0, vAt = 0, typedAt = 0, permAt = 0, ownerAt = 0, scratchAt = 0;
  auto layoutWorkspace = [&]() {
    size_t p = 0;
    if (st->residual) keepAt = p, p += alignUp(n * 4);
    if (!st->residual) vAt = p, p += alignUp(n * 4);
    // The flush stages the allreduce's input too: recv may be the caller's
    // send buffer, which a failed exchange must leave as it was.
    if (rs || !momentum) typedAt = p, p += alignUp(n * dtypeBytes(t));
    if (permuted) permAt = p, p += alignUp(n * 4);
    if (owner.len) ownerAt = p, p += alignUp(owner.len * 4);
    scratchAt = p, p += alignUp(c.sparse->scratchBytes(n, 1, 0));
    return p;
  };
  if (momentum) {
    GC_CHECK(agreePrepared(c, [&]() -> gradcompResult_t {
      GC_CHECK(findState(c, kind, keyed, key, recv, n, t, &st));
      GC_CHECK(c.ensureWorkspace(layoutWorkspace()));
      return c.sparse->reserve();
    }()));
  } else {
    // Never a new state for a passed call; a rank that cannot have the
    // workspace (memory, a capture that would grow it) passes the call
    // plainly and keeps its residual: what the ranks send still sums right.
    // Its peers decide nothing from that (it is this rank's alone), so it
    // still ends as they do, with the check of the output that clears the
    // state where it is non-finite (a reduce-scatter's is a collective): the
    // caller runs it after its plain pass.
    auto it = c.states.find(stateKey(kind, keyed, key, recv, n, t));
    if (it == c.states.end() || it->second.residualSent) return gradcompSuccess;
    st = &it->second;
    if (!rs && st->ownerResidual != nullptr) owner = allReduceOwnerSpan(c, n);
    if (owner.len > st->ownerResidualCount) {
      return setError(gradcompInternalError,
                      "owner residual span of %zu elements at %zu exceeds its %zu-element array",
                      owner.len, owner.off, st->ownerResidualCount);
    }
    if (st->residual == nullptr && owner.len == 0) return gradcompSuccess;
    if (c.ensureWorkspace(layoutWorkspace()) != gradcompSuccess) {
      clearError();
      *check = st;
      return gradcompSuccess;
    }
    if (c.backend->capturing()) st->captured = true;
  }
  if (c.autoState.reserving) return gradcompSuccess;
  const CallEnd end(*c.backend);
  SparseOps& ops = *c.sparse;
  ops.setStream(c.backend->stream());
  char* ws = static_cast<char*>(c.workspace);
  float* v = st->residual ? st->residual : reinterpret_cast<float*>(ws + vAt);
  float* keep = st->residual ? reinterpret_cast<float*>(ws + keepAt) : nullptr;
  GC_TRACE("%s pass through: count=%zu type=%d op=%d reduce-scatter=%d owner=%zu@%zu",
           momentum ? "momentum" : "residual", count, (int)type, (int)op, (int)rs, owner.len,
           owner.off);
  // The owner residual is what the reduced sum of this rank's chunk lacked:
  // added to v there, it joins the sum once. It is cleared only once the
  // call went out (a non-finite output then clears the whole state:
  // discardStateIfNonFinite below).
  // The send buffer is read before recv, which may alias it, is written.
  const void* g = send;
  DType gt = t;
  if (permuted) {
    float* perm = reinterpret_cast<float*>(ws + permAt);
    GC_CHECK(widenBlocks(*c.backend, send, t, blockAt.data(), lens.data(), c.nranks, count, perm));
    g = perm, gt = DType::F32;
  }
  GC_CHECK(ops.accumulate(g, gt, n, momentum ? sparseClipThreshold(c) : 0.0f,
                          momentum ? c.cfg.momentum : 0.0f, momentum ? st->momentum : nullptr, v,
                          st->residual != nullptr, keep, ws + scratchAt));
  if (owner.len) GC_CHECK(c.backend->add(v + owner.off, st->ownerResidual, owner.len));
  void* typed = rs || !momentum ? static_cast<void*>(ws + typedAt) : recv;
  auto sendCarried = [&]() -> gradcompResult_t {
    if (permuted) {
      const size_t esz = dtypeBytes(t);
      for (int b = 0; b < c.nranks; ++b) {
        GC_CHECK(c.backend->fromFloat(v + (size_t)b * count, count, 1.0f, t,
                                      static_cast<char*>(typed) + blockAt[b] * esz));
      }
    } else {
      GC_CHECK(c.backend->fromFloat(v, n, 1.0f, t, typed));
    }
    return rs ? c.transport->reduceScatter(typed, recv, count, type, op)
              : c.transport->passThrough(typed, recv, n, type, op);
  };
  // A flush's output flag is taken before its state is settled: a
  // reduce-scatter's is an allreduce, and one that fails fails the call as a
  // failed send does. Not the momentum pass's: its v is not put back, so once
  // sent it is spent, and its check follows the settle (below).
  const bool held = holdsFeedback(*st);
  gradcompResult_t res = sendCarried();
  if (res == gradcompSuccess && held && !momentum)
    res = flagNonFiniteOutput(c, recv, rs ? count : n, t, rs);
  if (res != gradcompSuccess) {
    // A flush that did not go out, or whose output's check failed, leaves the
    // residual as it was: the caller may retry the call with the same
    // gradient. (The momentum pass's u has advanced; docs/reliability.md.)
    if (!momentum && keep) (void)c.backend->copy(v, keep, n * sizeof(float));
    return res;
  }
  if (owner.len) {
    // ownerKeep = the sum's span, then settled against the owner residual:
    // 0 where the sum is finite, the owner residual where not; copied back.
    float* ownerKeep = reinterpret_cast<float*>(ws + ownerAt);
    GC_CHECK(c.backend->toFloat(static_cast<const char*>(recv) + owner.off * dtypeBytes(t), t,
                                nullptr, owner.len, ownerKeep));
    GC_CHECK(ops.settle(ownerKeep, st->ownerResidual, nullptr, owner.len, true));
    GC_CHECK(c.backend->copy(st->ownerResidual, ownerKeep, owner.len * sizeof(float)));
  }
  if (momentum || st->residual) GC_CHECK(ops.settle(v, keep, nullptr, n, true));
  // Spent: the next passes of this buffer go plainly, at NCCL's cost (a
  // non-finite output clears the rest of the state below: the flag above).
  if (!momentum) st->residualSent = true;
  // u and v now hold this rank's own velocity over the whole buffer; a
  // hierarchical compressed call keeps them on its shard, of the node's sums.
  // Only a call that may compress at a retune (`agreed`: GRADCOMP_AUTO passed
  // it); a count under minElements is never compressed.
  if (momentum && agreed && (rs ? useHierReduceScatter(c) : useHier(c))) st->unsharded = true;
  if (held) {
    GC_CHECK(momentum ? discardStateIfNonFinite(c, *st, recv, rs ? count : n, t, rs)
                      : clearStateIfFlagged(c, *st));
  }
  c.stats.callsPassedThrough++;
  *done = true;
  return gradcompSuccess;
}

}  // namespace

gradcompResult_t momentumPassThrough(gradcompComm& c, int kind, bool keyed, uint64_t key,
                                     bool agreed, const void* send, void* recv, size_t count,
                                     ncclDataType_t type, ncclRedOp_t op) {
  bool done = false;
  BufferState* check = nullptr;  // only a residual pass leaves the check to its caller
  return carriedPassThrough(c, kind, keyed, key, agreed, send, recv, count, type, op, true, &done,
                            &check);
}

gradcompResult_t residualPassThrough(gradcompComm& c, int kind, bool keyed, uint64_t key,
                                     const void* send, void* recv, size_t count,
                                     ncclDataType_t type, ncclRedOp_t op, bool* done,
                                     BufferState** check) {
  *done = false;
  *check = nullptr;
  if (op != ncclSum && op != ncclAvg) return gradcompSuccess;
  // Without error feedback, an allreduce may still hold an owner residual.
  if (!c.keepsResidual() && (kind != kStateAllReduce || !c.cfg.ownerResidual))
    return gradcompSuccess;
  return carriedPassThrough(c, kind, keyed, key, true, send, recv, count, type, op, false, done,
                            check);
}

gradcompResult_t passThroughCall(gradcompComm* c, StateKind kind, bool keyed, uint64_t key,
                                 bool agreed, const void* send, void* recv, size_t count,
                                 ncclDataType_t type, ncclRedOp_t op) {
  const bool reduceScatter = kind == kStateReduceScatter;
  if (passesMomentum(*c, type, op)) {
    return momentumPassThrough(*c, kind, keyed, key, agreed, send, recv, count, type, op);
  }
  BufferState* check = nullptr;
  if (agreed) {
    bool done = false;
    GC_CHECK(residualPassThrough(*c, kind, keyed, key, send, recv, count, type, op, &done, &check));
    if (done) return gradcompSuccess;
  }
  // Counted once it went out (and was checked), as a compressed call: a
  // refused one is not. A state the call could not carry (no workspace) is
  // checked as its peers check theirs.
  GC_CHECK(reduceScatter ? c->transport->reduceScatter(send, recv, count, type, op)
                         : c->transport->passThrough(send, recv, count, type, op));
  if (check) {
    GC_CHECK(discardStateIfNonFinite(*c, *check, recv, count, check->dtype, reduceScatter));
    // Its peers spent theirs: the later passes go plainly on every rank (a
    // reduce-scatter's check is a collective), this residual waiting for the
    // next compressed call.
    check->residualSent = true;
  }
  c->stats.callsPassedThrough++;
  return gradcompSuccess;
}

gradcompResult_t checkBuffers(const gradcompComm& c, const void* send, size_t sendCount,
                              const void* recv, size_t recvCount, size_t inPlaceOffset, DType t) {
  const size_t esz = dtypeBytes(t);
  const uintptr_t s0 = (uintptr_t)send, r0 = (uintptr_t)recv;
  GC_ARG(s0 % esz == 0 && r0 % esz == 0,
         "sendbuff=%p / recvbuff=%p are not aligned to their element size %zu", send, recv, esz);
  const bool inPlace = r0 == s0 + inPlaceOffset * esz;
  GC_ARG(inPlace || s0 + sendCount * esz <= r0 || r0 + recvCount * esz <= s0,
         "sendbuff=%p (%zu elements) and recvbuff=%p (%zu elements) overlap other than in place "
         "(recvbuff == sendbuff + %zu elements)",
         send, sendCount, recv, recvCount, inPlaceOffset);
  if (c.backend->onDevice()) {
    GC_CHECK(checkDevicePointer(send, "sendbuff"));
    GC_CHECK(checkDevicePointer(recv, "recvbuff"));
  }
  return gradcompSuccess;
}

namespace {
// Unkeyed calls find a buffer's state by its address. A training loop hands
// over the same buffers every step, so new addresses come in its first steps
// (two with DDP, which regroups its buckets after the first). One that first
// comes after at least 64 calls since the last reset or load, and four
// times the calls the loop took to come back to a state it held, or four
// calls for every state the comm holds, most likely belongs to a buffer that
// moved: it starts a new residual (the old one is never sent and stays
// allocated), and with DGC's warm-up or DQ-SGD its schedule can differ
// between ranks whose buffers moved differently. (Four calls per state held
// alone misses buffers that move in a quarter or more of the calls: the
// states then grow as fast as the calls; and four times the calls before a
// state came back misses buffers that all move every step, none of which
// ever comes back: a new one after kLateBufferNoReuseCalls calls that never
// found a state again is warned about too.) Warned once per comm, whatever
// GRADCOMP_DEBUG says (as the preload's fall-backs are): it is what explains
// a memory growth or a hang that nothing else names.
void warnIfLateBuffer(gradcompComm& c, const void* recv, size_t count, DType t, size_t held) {
  const uint64_t calls = c.stateCalls;
  if (c.warnedLateBuffer ||
      !isLateKey(calls, c.firstStateReuse, held, kLateBufferMinCalls, kLateBufferNoReuseCalls))
    return;
  c.warnedLateBuffer = true;
  // Only the rule for "no buffer ever came back" fired: as likely a step of
  // more calls than kLateBufferNoReuseCalls as buffers that all move.
  const bool maybeLongStep = c.firstStateReuse == 0 && calls < 4 * (uint64_t)held;
  logMessage(
      LogLevel::Warn, __FILE__, __LINE__,
      "rank %d: recvbuff %p (%zu elements of %s) is new at call %llu of this comm, which "
      "holds the states of %zu other buffers%s: a buffer that moves between steps starts a new "
      "residual each time (the old one is never sent and stays allocated), and with DGC "
      "warm-up or DQ-SGD its schedule can differ between ranks. Give such buffers a key "
      "(gradcompAllReduceKeyed, gradcompReduceScatterKeyed; under LD_PRELOAD, the Python "
      "hooks, which key by parameter)",
      c.rank, recv, count,
      t == DType::F32   ? "float"
      : t == DType::F16 ? "half"
                        : "bfloat16",
      (unsigned long long)calls, held,
      maybeLongStep ? " and has found none of them again (a step of this many calls, or buffers "
                      "that all move: if every step makes the same calls, ignore this)"
                    : "");
}
}  // namespace

StateKey stateKey(int kind, bool keyed, uint64_t key, const void* recv, size_t count, DType t) {
  return keyed ? StateKey{kind + 1, key, count, (int)t}
               : StateKey{kind, (uint64_t)(uintptr_t)recv, count, (int)t};
}

gradcompResult_t findState(gradcompComm& c, int kind, bool keyed, uint64_t key, const void* recv,
                           size_t count, DType t, BufferState** state) {
  const StateKey skey = stateKey(kind, keyed, key, recv, count, t);
  const size_t held = c.states.size();
  GC_CHECK(c.getState(skey, count, t, state));
  (*state)->residualSent = false;
  // Not the auto timing's scratch buffers (new at any step, and set aside).
  if (c.autoState.tuning) return gradcompSuccess;
  const bool made = c.states.size() > held;
  if (!keyed && made) warnIfLateBuffer(c, recv, count, t, held);
  c.stateCalls++;
  // A step's length: the calls until the first of a gradient's size found
  // its state again (a small tensor reused early, a barrier's, is not one;
  // DGC's momentum pass makes states for those too).
  if (!made && c.firstStateReuse == 0 && count >= c.cfg.minElements) {
    c.firstStateReuse = c.stateCalls;
  }
  return gradcompSuccess;
}

gradcompResult_t checkWarmupCapture(const gradcompComm& c, const BufferState& s) {
  // Warm-up follows the buffer's host-side call counter, which graph replays
  // do not advance: a captured warm-up call would replay its stage forever.
  if (c.cfg.method == gradcompMethodDgc && c.cfg.warmupSteps > 0 &&
      s.calls < (uint64_t)c.cfg.warmupSteps && c.backend->capturing()) {
    return setError(gradcompInvalidUsage,
                    "DGC warm-up (warmupSteps=%d; this buffer has made %llu calls) changes the "
                    "density and message size by stage; capture a CUDA graph after the warm-up",
                    c.cfg.warmupSteps, (unsigned long long)s.calls);
  }
  // After DGC momentum passes on a hierarchical comm, the next compressed
  // call first sums the node's velocities into the shards (hierFoldState),
  // once: every replay would sum again, and a capture that is abandoned would
  // leave the sum never run and the state marked done.
  if (s.unsharded && c.backend->capturing()) {
    return setError(gradcompInvalidUsage,
                    "this buffer's last calls passed through with DGC's momentum and its first "
                    "compressed call sums the node's velocities once, which a CUDA graph would "
                    "replay: run one call eagerly before capturing");
  }
  return gradcompSuccess;
}

gradcompResult_t agreeReady(gradcompComm* c, gradcompResult_t local, int* refused) {
  float* ready = c->backend->agreeScratch();
  float v = local == gradcompSuccess ? 0.0f : (float)(c->rank + 1);
  // The exchange carries the current call record (the auto timing's
  // reserving calls leave it alone), so transports that check every call
  // still catch a rank that passed another one.
  GC_CHECK(c->backend->fromHost(ready, &v, sizeof(v)));
  GC_CHECK(c->transport->passThrough(ready, ready, 1, ncclFloat32, ncclMax));
  GC_CHECK(c->backend->toHost(&v, ready, sizeof(v)));
  *refused = (int)v - 1;
  return gradcompSuccess;
}

gradcompResult_t refuseCall(gradcompComm& c, size_t count, int type, int op, CallRefusal why,
                            gradcompResult_t local, bool beforeBegin) {
  // Before the call began nothing has set it yet: a refusal that joins
  // nothing did not fail together (the LD_PRELOAD library hands it to NCCL).
  if (beforeBegin) c.failedTogether = false;
  // NCCL checks nothing at its collectives: only the agreement beginCollective
  // runs under the setting can take the record, so only a refusal made before
  // it joins (after it, every rank agreed on the count and refuses alike).
  // Without the setting, the peers still run that agreement at the first
  // call after a state load or reset (verifyNext, set alike on every rank;
  // on the CPU backends the first collective of their call, which compares
  // the same record): a refusal of that call joins it too. It leaves
  // verifyNext set here, as a failed agreement leaves it on the peers (NCCL),
  // so the next call verifies on every rank. (Once the call began verifyNext
  // is clear: no second join.)
  if (local == gradcompSuccess || count == 0 || !(c.cfg.checkCalls || c.verifyNext) ||
      (!c.transport->checksEveryCall() && !beforeBegin) || c.backend->capturing() ||
      c.autoState.reserving || c.autoState.tuning)
    return local;
  char mine[1024];
  snprintf(mine, sizeof mine, "%s", gradcompGetLastError());
  // The call's own record goes back after: a refused call leaves the comm as it was.
  const CallInfo before = c.transport->currentCall();
  c.transport->beginCall(CallInfo{c.step, count, type, op, kCallRefused, (uint32_t)why});
  // Its sentence names this rank's refusal; ours is `mine`. Where the peers
  // did not refuse alike they fail there, naming it: the call is then one the
  // ranks compared and found apart, which the LD_PRELOAD library must not
  // hand to NCCL on this rank alone (as agreePrepared marks a refused vote).
  c.failedTogether = c.transport->verifyCall() != gradcompSuccess;
  c.transport->beginCall(before);
  return restoreError(local, "%s", mine);
}

gradcompResult_t refuseCallEnums(gradcompComm* c, size_t count, const ncclDataType_t* type,
                                 const ncclRedOp_t* op, cudaStream_t stream,
                                 gradcompResult_t local) {
  char mine[1024];
  snprintf(mine, sizeof mine, "%s", gradcompGetLastError());
  CommCall call(c);  // gradcompCommAbort waits for it
  // No comm, or one aborted or busy: nothing to join.
  if (c == nullptr || !c->backend || !c->transport || call.check() != gradcompSuccess)
    return restoreError(local, "%s", mine);
  // As every call starts: on NCCL the agreement runs on the caller's stream
  // and device, and whether it is captured is that stream's. Only where the
  // refusal may join it: otherwise the comm's stream stays the last call's.
  std::optional<OnCommDevice> onDevice;
  if ((c->cfg.checkCalls || c->verifyNext) && count != 0) {
    onDevice.emplace(c);
    c->backend->setStream(stream);
    c->transport->setStream(stream);
  }
  const int t = enumArg(type), o = enumArg(op);
  const bool typeOk = t >= 0 && t < (int)ncclNumTypes;
  return refuseCall(*c, count, t, o, typeOk ? kRefusedOp : kRefusedDatatype, local, true);
}

gradcompResult_t agreePrepared(gradcompComm& c, gradcompResult_t local, const char* what) {
  // Not in the auto timing's calls either: their buffers are gradcomp's own
  // and their state and workspace were made by the reserving pass, and a
  // vote's host sync in the compressed path's timed calls alone would bias
  // the choice towards NCCL.
  if (!c.cfg.checkCalls || c.autoState.reserving || c.autoState.tuning || c.backend->capturing())
    return local;
  // A failed CUDA call leaves CUDA's last error set for the next launch.
  if (local != gradcompSuccess && c.backend->onDevice()) (void)cudaGetLastError();
  int refused = -1;
  const gradcompResult_t voted = agreeReady(&c, local, &refused);
  if (voted == gradcompSuccess && refused >= 0) c.failedTogether = true;
  if (local != gradcompSuccess) {
    // A vote that ran leaves this rank's own sentence as the last error. One
    // that failed returns its own error: the local one (an argument refused
    // on this rank) would be handed to NCCL by the LD_PRELOAD library while
    // the peers wait in the vote.
    return voted == gradcompSuccess ? local : voted;
  }
  GC_CHECK(voted);
  if (refused >= 0) {
    return setError(
        gradcompInvalidUsage,
        "rank %d could not prepare this call (%s; its own error says why), so rank %d fails it "
        "too instead of waiting in an exchange rank %d will not join (GRADCOMP_CHECK_CALLS)",
        refused, what, c.rank, refused);
  }
  return gradcompSuccess;
}

gradcompResult_t agreeBuffersGiven(gradcompComm& c, const void* send, const void* recv,
                                   size_t count, const char* countName) {
  return agreePrepared(c,
                       send != nullptr && recv != nullptr
                           ? gradcompSuccess
                           : setError(gradcompInvalidArgument,
                                      "sendbuff=%p and recvbuff=%p must not be NULL for %s=%zu",
                                      send, recv, countName, count),
                       kBuffers);
}

gradcompResult_t agreeBuffers(gradcompComm& c, const void* send, size_t sendCount, const void* recv,
                              size_t recvCount, size_t inPlaceOffset, DType t) {
  return agreePrepared(c, checkBuffers(c, send, sendCount, recv, recvCount, inPlaceOffset, t),
                       kBuffers);
}

gradcompResult_t checkRanksAgree(gradcompComm& c, uint64_t value, const char* what) {
  if (c.backend->onDevice() || c.autoState.reserving) return gradcompSuccess;
  std::vector<uint64_t>& all = callScratch(c).agreed;
  all.resize(c.nranks);
  GC_CHECK(c.transport->allGather(&value, all.data(), sizeof(value)));
  for (int i = 0; i < c.nranks; ++i) {
    if (all[i] != value) {
      return setError(gradcompInvalidUsage, "rank %d passed %s=%llu while rank %d passed %llu",
                      c.rank, what, (unsigned long long)value, i, (unsigned long long)all[i]);
    }
  }
  return gradcompSuccess;
}

gradcompResult_t finishCall(gradcompComm& c, BufferState& s, int algoId, size_t bytesIn,
                            size_t bytesOnWire, size_t bytesInterNode) {
  GC_CHECK(c.backend->advanceStep());
  c.step++;
  s.calls++;
  c.stats.callsCompressed++;
  if (algoId >= 0) c.stats.callsPerAlgo[algoId]++;
  c.stats.bytesIn += bytesIn;
  c.stats.bytesOnWire += bytesOnWire;
  c.stats.bytesInterNode += bytesInterNode;
  return gradcompSuccess;
}

gradcompResult_t discardStateIfNonFinite(gradcompComm& c, BufferState& s, const void* recv,
                                         size_t count, DType t, bool reduceScatter, bool flagged) {
  if (!holdsFeedback(s)) return gradcompSuccess;
  GC_CHECK(flagNonFiniteOutput(c, recv, count, t, reduceScatter, flagged));
  return clearStateIfFlagged(c, s);
}

gradcompResult_t outputFlag(gradcompComm& c, const BufferState& s, const Algorithm& algo,
                            float** flag) {
  *flag = nullptr;
  if (!algo.flagsOutput || !holdsFeedback(s)) return gradcompSuccess;
  GC_CHECK(c.backend->zero(c.backend->flagScratch(), sizeof(float)));
  *flag = c.backend->flagScratch();
  return gradcompSuccess;
}

void recordBits(gradcompComm& c, int bits) {
  c.stats.bitsLast = bits;
  // The validator and DQ-SGD's policy keep bits in 2..8; the bound keeps a
  // stats write in the array whatever reaches here.
  if (bits >= 0 && bits < (int)(sizeof(c.stats.callsPerBits) / sizeof(c.stats.callsPerBits[0])))
    c.stats.callsPerBits[bits]++;
}

}  // namespace gc
