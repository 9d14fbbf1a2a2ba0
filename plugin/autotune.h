// GRADCOMP_AUTO: never slower than NCCL. On the first eligible call of each
// collective (allreduce, reduce-scatter) of a comm, and on gradcompCommRetune,
// the comm times NCCL's collective and its own compressed one at two sizes on
// scratch buffers, the ranks agree on the slowest figures, and a latency +
// per-element fit of each path says which call sizes compression speeds up;
// the others pass through to NCCL. Who times: the CUDA backend (CUDA events on
// the caller's stream) and socket comms (gradcompCommCreateSocket: one process
// per rank over real links, the host clock; the uncompressed call is the
// transport's direct two-shot). The in-process CPU world does not: its ranks
// are threads sharing the cores, so its times would say nothing of a network.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "gradcomp.h"

struct gradcompComm;

namespace gc {

// Calls per path and size: untimed warm-up (the first compressed call of a
// size allocates its state), then timed calls whose median counts (one slow
// call does not move it).
constexpr int kAutoWarmupCalls = 2;
constexpr int kAutoTimedCalls = 5;

// Microseconds per call of fp32 elements, NCCL's collective and the
// compressed path, each at smallCount and largeCount elements (of the input:
// the reduce-scatter's nranks * recvcount).
struct AutoFigures {
  size_t smallCount = 0, largeCount = 0;
  float ncclUs[2] = {0.0f, 0.0f};  // [0] at smallCount, [1] at largeCount
  float compUs[2] = {0.0f, 0.0f};
};

// The call sizes that compress: lo <= count < hi.
struct AutoRange {
  size_t lo = 0, hi = SIZE_MAX;
  bool contains(size_t count) const { return count >= lo && count < hi; }
};

// The collectives auto decides for. Each is timed and decided on its own:
// NCCL's reduce-scatter moves half the bytes of its allreduce and gradcomp's
// quantizes once, so one's figures say nothing of the other's.
enum class AutoCall : int { AllReduce = 0, ReduceScatter = 1 };

// One collective's decision. The figures are agreed on every rank, so every
// rank holds the same ranges.
struct AutoDecision {
  bool decided = false;   // tuned (or nothing to time: in-process CPU world) since set-up / retune
  bool timed = false;     // ranges below are in force
  bool injected = false;  // tests: tune with injectedFigures instead of timing
  AutoFigures injectedFigures;
  bool restored = false;  // a loaded state: the next tuning uses restoredFigures, once
  AutoFigures restoredFigures;
  uint64_t timedCompressed = 0;  // compressed calls the last timing made
  AutoFigures figures;           // agreed (slowest rank's) figures
  AutoRange range[2];            // [0] 2-byte types (fp16, bf16), [1] fp32
};

// Per comm: the host-side flags and one decision per collective.
struct AutoState {
  bool tuning = false;  // the set-up's own calls are running: none of them passes
  // The timing's first pass: each compressed call makes its buffer state and
  // workspace and returns before its exchange, so that a rank that cannot
  // (out of memory) says so in an agreement instead of leaving its peers
  // waiting in a timed call it never joins.
  bool reserving = false;
  // Time the CPU backend with the host clock: set by gradcompCommCreateSocket
  // (and by tests of the in-process world, to reach the timing path).
  bool timeOnHost = false;
  // The fp32 sizes timed (the reduce-scatter's input, nranks * recvcount,
  // rounded down to a multiple of nranks). They bracket the calls frameworks
  // make (DDP buckets are 25 MB): 1 MB sits at the latency end, 32 MB is long
  // enough for the per-byte cost to dominate on every link.
  size_t timedCounts[2] = {size_t(1) << 18, size_t(1) << 23};
  AutoDecision allReduce, reduceScatter;
  AutoDecision& of(AutoCall k) { return k == AutoCall::ReduceScatter ? reduceScatter : allReduce; }
};

// Checks figures: positive finite times, 0 < smallCount < largeCount.
gradcompResult_t autoCheckFigures(const AutoFigures& f);
// The decision from agreed figures, for elements of elementBytes (2 or 4):
// each path's time is fitted as a + b * count through its two points; NCCL's
// per-element cost scales with the element size (its bytes), the compressed
// path's does not (its wire bytes follow the count). Compress where the
// predicted compressed time is below NCCL's.
AutoRange autoRange(const AutoFigures& f, size_t elementBytes);
// Replaces f's times on every rank by their maximum over the ranks (one
// allreduce on the comm's transport).
gradcompResult_t autoAgree(gradcompComm* c, AutoFigures* f);

// The hook of a call that would compress (count: the allreduce's count, the
// reduce-scatter's input nranks * recvcount): tunes that collective first when
// the comm has not yet, then sets *pass when the call should go to NCCL
// instead.
gradcompResult_t autoShouldPass(gradcompComm* c, AutoCall k, size_t count, size_t elementBytes,
                                bool* pass);
// Tunes again now (autoTune=1 only): the allreduce always, the reduce-scatter
// if it was tuned before (a comm that never reduce-scatters keeps timing it
// lazily, at its first eligible reduce-scatter).
gradcompResult_t autoRetune(gradcompComm* c);
// Checkpoints (state.cc). Saved: the agreed figures of a collective whose
// decision came from usable figures (false otherwise). Restored: the next
// tuning of that collective uses these figures instead of timing, once (the
// ranks still agree on them), so a resumed comm passes and compresses the
// sizes the saved one did; gradcompCommRetune times afresh.
bool autoSavedFigures(const gradcompComm& c, AutoCall k, AutoFigures* f);
void autoRestoreFigures(gradcompComm* c, AutoCall k, const AutoFigures& f);
// A load without figures for k: the next call of k tunes (times) afresh.
void autoForgetDecision(gradcompComm* c, AutoCall k);
// Tests: every later tuning of this comm (of one collective, or of both) uses
// these local figures instead of timing, on any backend (the agreement still
// runs).
void autoInjectFigures(gradcompComm* c, const AutoFigures& f);
void autoInjectFigures(gradcompComm* c, AutoCall k, const AutoFigures& f);

}  // namespace gc
