#include "bits_policy.h"

namespace gc {

int chooseBits(gradcompComm& c, BufferState& s) {
  if (c.cfg.bitsMode == gradcompBitsFixed || s.bitsNext == 0) return c.cfg.bits;
  return s.bitsNext;
}

}  // namespace gc
