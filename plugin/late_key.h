// The rule by which a key first seen late (a buffer's address, a fused set's
// hash of addresses) most likely belongs to a buffer that moved between steps
// (docs/reliability.md, "Known limits"). Shared by the library's unkeyed calls
// (collective.cc, counted in calls) and the preload's fused sets (preload.h,
// counted in sets), so that the two warn alike.
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace gc {

// A key new after `seen` earlier calls, while `held` keys are held and the
// first call that found a held key again was call `firstReuse` (1-based; 0:
// none yet, the length of the program's step otherwise). Late once `seen`
// reaches `minSeen` and either four calls per key held (the keys stopped
// growing with the calls), four times firstReuse (four steps), or, where no
// key ever came back (every buffer moving every step), `noReuse`.
inline bool isLateKey(uint64_t seen, uint64_t firstReuse, size_t held, uint64_t minSeen,
                      uint64_t noReuse) {
  if (seen < minSeen) return false;
  if (seen >= 4 * (uint64_t)held) return true;
  return firstReuse > 0 ? seen >= 4 * firstReuse : seen >= noReuse;
}

}  // namespace gc
