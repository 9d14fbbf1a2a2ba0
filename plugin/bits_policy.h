// QSGD bit width per call. Fixed mode returns the configured bits; DQ-SGD
// modes choose from statistics every rank holds identically.
#pragma once

#include "comm.h"

namespace gc {

int chooseBits(gradcompComm& c, BufferState& s);

}  // namespace gc
