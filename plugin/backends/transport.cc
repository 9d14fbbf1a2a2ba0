// What both transports share.
#include "backends/transport.h"

#include <stdio.h>

#include "checks.h"

namespace gc {

static const char* callKindName(int kind) {
  return kind == kCallAllReduce       ? "allreduce"
         : kind == kCallReduceScatter ? "reduce-scatter"
         : kind == kCallRetune        ? "retune"
                                      : "an unknown collective";
}

// A record's count as its caller passed it: a reduce-scatter's holds its input,
// nranks * recvcount, and a caller who passed recvcount looks for that.
static void countText(char* buf, size_t size, const CallInfo& call, int nranks) {
  if (call.kind == kCallReduceScatter && nranks > 0) {
    snprintf(buf, size, "recvcount=%llu", (unsigned long long)(call.count / (uint64_t)nranks));
  } else {
    snprintf(buf, size, "count=%llu", (unsigned long long)call.count);
  }
}

// What a refused call's record says it refused (CallRefusal).
static void refusalText(char* buf, size_t size, const CallInfo& call) {
  switch (call.state) {
    case kRefusedDatatype:
      snprintf(buf, size, "its datatype=%d", call.type);
      break;
    case kRefusedOp:
      snprintf(buf, size, "its op=%d", call.op);
      break;
    case kRefusedRecvCount:
      snprintf(buf, size, "its recvcount=%llu", (unsigned long long)call.count);
      break;
    default:
      snprintf(buf, size, "its count=%llu", (unsigned long long)call.count);
      break;
  }
}

gradcompResult_t callMismatch(int rank, const CallInfo& mine, int peer, const CallInfo& theirs,
                              int nranks) {
  if (theirs.kind == kCallRefused || mine.kind == kCallRefused) {
    // The refusing rank returns its own sentence (refuseCall); its peers name it.
    const bool theirsRefused = theirs.kind == kCallRefused;
    const int who = theirsRefused ? peer : rank;
    char why[96];
    refusalText(why, sizeof why, theirsRefused ? theirs : mine);
    return setError(gradcompInvalidUsage,
                    "rank %d refused this call's arguments (%s; its own error says why), so rank "
                    "%d fails it too instead of waiting in an exchange rank %d will not join",
                    who, why, theirsRefused ? rank : peer, who);
  }
  CallInfo same = theirs;
  same.state = mine.state;
  if (same == mine) {
    return setError(gradcompInvalidUsage,
                    "rank %d and rank %d are at step %llu of the same call, but the states they "
                    "loaded differ in their buffers' schedules (schedule digest 0x%08x vs "
                    "0x%08x: the buffers, their compressed-call counts, DGC's warm-up or "
                    "DQ-SGD's history, or the keys and buffers forgotten since): load every "
                    "rank's state from the same run and step, forget the same keys and buffers "
                    "on every rank, or reset every rank",
                    rank, peer, (unsigned long long)mine.step, mine.state, theirs.state);
  }
  char myCount[48], theirCount[48];
  countText(myCount, sizeof myCount, mine, nranks);
  countText(theirCount, sizeof theirCount, theirs, nranks);
  return setError(gradcompInvalidUsage,
                  "rank %d is at step %llu with %s datatype=%d op=%d (%s) while rank %d "
                  "is at step %llu with %s datatype=%d op=%d (%s): every rank must make "
                  "the same calls in the same order from the same state",
                  rank, (unsigned long long)mine.step, myCount, mine.type, mine.op,
                  callKindName(mine.kind), peer, (unsigned long long)theirs.step, theirCount,
                  theirs.type, theirs.op, callKindName(theirs.kind));
}

gradcompResult_t Transport::checkOpen() const {
  if (!aborted_) return gradcompSuccess;
  return setError(gradcompInvalidUsage,
                  "rank %d: the comm was aborted (gradcompCommAbort); no call may use it",
                  namedRank());
}

}  // namespace gc
