// The collectives of the CPU transports (the in-process world's, transport.cc,
// and the TCP one's, socket.cc): the number a rank tells its peers it
// entered, beside a size every rank must agree on (its check), and how their
// messages name the two.
#pragma once

#include <nccl.h>
#include <stdint.h>
#include <stdio.h>

namespace gc {

enum HostCollective : uint32_t {
  kHostAllToAll = 1,
  kHostSendRecv = 2,
  kHostAllGather = 3,      // check: the bytes of each rank
  kHostSumFloat = 4,       // check: the floats summed
  kHostPassThrough = 5,    // the call record carries its count, datatype and op
  kHostVerify = 6,         // the call record alone (verifyCall)
  kHostReduceScatter = 7,  // check: reduceScatterCheck
  kHostGatherPhase = 8,    // the TCP transport's second phase of kHostSumFloat or
                           // kHostPassThrough: check gatherPhaseCheck
};

// The gather phase's check: the first phase's collective in the top byte
// above that collective's own check (a float sum's count, under 2^48; a
// pass-through's 0), so that a message names the collective it belongs to.
inline uint64_t gatherPhaseCheck(uint32_t collective, uint64_t check) {
  return ((uint64_t)(collective & 0xff) << 56) | (check & ((1ull << 56) - 1));
}

// A reduce-scatter stage's check: its recvcount, datatype and op in one word
// (the recvcount in the low 48 bits, as every host buffer's is).
inline uint64_t reduceScatterCheck(uint64_t recvCount, ncclDataType_t type, ncclRedOp_t op) {
  return recvCount ^ ((uint64_t)type << 56) ^ ((uint64_t)op << 48);
}

inline const char* hostCollectiveName(uint32_t collective) {
  switch (collective) {
    case kHostAllToAll:
      return "all-to-all";
    case kHostSendRecv:
      return "send/receive";
    case kHostAllGather:
      return "allgather";
    case kHostSumFloat:
      return "float sum";
    case kHostPassThrough:
      return "uncompressed allreduce";
    case kHostVerify:
      return "call check";
    case kHostReduceScatter:
      return "reduce-scatter";
    case kHostGatherPhase:
      return "gather phase";
    default:
      return "unknown collective";
  }
}

// The collective with what its ranks compare, for a message: "allgather of 64
// bytes per rank", "reduce-scatter (recvcount=256 datatype=7 op=0)".
inline void hostCollectiveText(char* buf, size_t size, uint32_t collective, uint64_t check) {
  const char* name = hostCollectiveName(collective);
  switch (collective) {
    case kHostAllGather:
      snprintf(buf, size, "%s of %llu bytes per rank", name, (unsigned long long)check);
      break;
    case kHostSumFloat:
      snprintf(buf, size, "%s of %llu elements", name, (unsigned long long)check);
      break;
    case kHostReduceScatter:
      snprintf(buf, size, "%s (recvcount=%llu datatype=%d op=%d)", name,
               (unsigned long long)(check & ((1ull << 48) - 1)), (int)(check >> 56),
               (int)((check >> 48) & 0xff));
      break;
    case kHostGatherPhase: {
      // "gather phase of the float sum of 3 elements"; a first phase that is
      // itself a gather phase (no rank sends that) is not followed.
      const uint32_t first = (uint32_t)(check >> 56);
      char inner[128];
      if (first == kHostGatherPhase) {
        snprintf(inner, sizeof inner, "%s", hostCollectiveName(first));
      } else {
        hostCollectiveText(inner, sizeof inner, first, check & ((1ull << 56) - 1));
      }
      snprintf(buf, size, "%s of the %s", name, inner);
      break;
    }
    default:
      if (collective >= kHostAllToAll && collective <= kHostGatherPhase) {
        snprintf(buf, size, "%s", name);
      } else {
        snprintf(buf, size, "%s %u", name, collective);
      }
      break;
  }
}

}  // namespace gc
