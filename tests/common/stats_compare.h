// Two gradcompStats_t compared field by field. memcmp would compare the
// padding after bitsLast too, which no copy of the struct (the library's
// own, the caller's) is bound to keep: its bytes can differ between builds.
#pragma once

#include <stddef.h>

#include "gradcomp.h"

namespace gctest {

inline bool sameStats(const gradcompStats_t& a, const gradcompStats_t& b) {
  // A field added to the struct must be added here too.
  static_assert(
      offsetof(gradcompStats_t, callsPerBits) + sizeof(a.callsPerBits) == sizeof(gradcompStats_t),
      "gradcompStats_t has a field after callsPerBits: compare it in sameStats");
  bool same =
      a.callsCompressed == b.callsCompressed && a.callsPassedThrough == b.callsPassedThrough &&
      a.bytesIn == b.bytesIn && a.bytesOnWire == b.bytesOnWire &&
      a.denseFallbacks == b.denseFallbacks && a.selectedLast == b.selectedLast &&
      a.targetLast == b.targetLast && a.bitsLast == b.bitsLast && a.steps == b.steps &&
      a.bytesInterNode == b.bytesInterNode && a.callsReduceScatter == b.callsReduceScatter &&
      a.callsAutoPassed == b.callsAutoPassed && a.piecesLast == b.piecesLast &&
      a.peerSlotsRejected == b.peerSlotsRejected;
  for (size_t i = 0; i < sizeof(a.callsPerAlgo) / sizeof(a.callsPerAlgo[0]); ++i)
    same &= a.callsPerAlgo[i] == b.callsPerAlgo[i];
  for (size_t i = 0; i < sizeof(a.callsPerBits) / sizeof(a.callsPerBits[0]); ++i)
    same &= a.callsPerBits[i] == b.callsPerBits[i];
  return same;
}

}  // namespace gctest
