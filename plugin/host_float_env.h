// The floating-point environment of gradcomp's host math. The host codecs
// and the CPU backend round as the GPU kernels do (IEEE binary32, round to
// nearest, subnormals kept: kernels/common_math.cuh), but on the host that is
// the calling thread's control register's say: a thread that flushes
// subnormals (FTZ/DAZ: torch.set_flush_denormal(True), or a library built with
// -ffast-math, whose start-up code sets them for the process) or rounds
// otherwise would encode, reduce and decode to other bits than the GPU's, and
// than a rank whose thread has the defaults. While one lives, the calling
// thread computes in the IEEE defaults (round to nearest, no flushing, every
// exception masked); the caller's setting comes back at its end.
#pragma once

#include <fenv.h>
#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

namespace gc {

class IeeeHostMath {
 public:
  IeeeHostMath() {
#if defined(__SSE2__)
    saved_ = _mm_getcsr();
    if ((saved_ & ~kFlags) != kIeee) {
      _mm_setcsr(kIeee | (saved_ & kFlags));
      changed_ = true;
    }
#else
    saved_ = (unsigned)fegetround();
    if ((int)saved_ != FE_TONEAREST) changed_ = fesetround(FE_TONEAREST) == 0;
#endif
  }
  ~IeeeHostMath() {
    if (!changed_) return;
#if defined(__SSE2__)
    // The caller's control bits, and the exception flags as they are now.
    _mm_setcsr((saved_ & ~kFlags) | (_mm_getcsr() & kFlags));
#else
    fesetround((int)saved_);
#endif
  }
  IeeeHostMath(const IeeeHostMath&) = delete;
  IeeeHostMath& operator=(const IeeeHostMath&) = delete;

 private:
#if defined(__SSE2__)
  static constexpr unsigned kFlags = 0x3fu;   // MXCSR's sticky exception flags
  static constexpr unsigned kIeee = 0x1f80u;  // every exception masked, nearest, no FTZ/DAZ
#endif
  unsigned saved_ = 0;
  bool changed_ = false;
};

}  // namespace gc
