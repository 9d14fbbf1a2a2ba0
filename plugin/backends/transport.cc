// What both transports share.
#include "backends/transport.h"

#include "checks.h"

namespace gc {

static const char* callKindName(int kind) {
  return kind == kCallAllReduce       ? "allreduce"
         : kind == kCallReduceScatter ? "reduce-scatter"
         : kind == kCallRetune        ? "retune"
                                      : "an unknown collective";
}

gradcompResult_t callMismatch(int rank, const CallInfo& mine, int peer, const CallInfo& theirs) {
  CallInfo same = theirs;
  same.state = mine.state;
  if (same == mine) {
    return setError(gradcompInvalidUsage,
                    "rank %d and rank %d are at step %llu of the same call, but the states they "
                    "loaded differ in their buffers' schedules (schedule digest 0x%08x vs "
                    "0x%08x: the buffers, their compressed-call counts, DGC's warm-up or "
                    "DQ-SGD's history): load every rank's state from the same run and step, "
                    "or reset every rank",
                    rank, peer, (unsigned long long)mine.step, mine.state, theirs.state);
  }
  return setError(gradcompInvalidUsage,
                  "rank %d is at step %llu with count=%llu datatype=%d op=%d (%s) while rank %d "
                  "is at step %llu with count=%llu datatype=%d op=%d (%s): every rank must make "
                  "the same calls in the same order from the same state",
                  rank, (unsigned long long)mine.step, (unsigned long long)mine.count, mine.type,
                  mine.op, callKindName(mine.kind), peer, (unsigned long long)theirs.step,
                  (unsigned long long)theirs.count, theirs.type, theirs.op,
                  callKindName(theirs.kind));
}

gradcompResult_t Transport::checkOpen() const {
  if (!aborted_) return gradcompSuccess;
  return setError(gradcompInvalidUsage,
                  "rank %d: the comm was aborted (gradcompCommAbort); no call may use it",
                  namedRank());
}

}  // namespace gc
