// NVTX ranges so Nsight Systems shows gradcomp's phases (encode, exchange,
// decode). Header-only NVTX3 from the CUDA toolkit; free when no tool is
// attached.
#pragma once

#if __has_include(<nvtx3/nvToolsExt.h>)
#include <nvtx3/nvToolsExt.h>
namespace gc {
// NVTX binds its functions on first use, and a second thread's first use reads
// the pointers the first thread is writing. Every range therefore starts
// behind one initialisation that C++ runs once, whichever thread comes first.
inline void nvtxReady() {
  static const bool ready = (nvtxInitialize(nullptr), true);
  (void)ready;
}
class NvtxRange {
 public:
  explicit NvtxRange(const char* name) {
    nvtxReady();
    nvtxRangePushA(name);
  }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};
}  // namespace gc
#define GC_NVTX_CAT2(a, b) a##b
#define GC_NVTX_CAT(a, b) GC_NVTX_CAT2(a, b)
#define GC_NVTX_RANGE(name) ::gc::NvtxRange GC_NVTX_CAT(gcNvtx_, __LINE__)(name)
#else
#define GC_NVTX_RANGE(name) \
  do {                      \
  } while (0)
#endif
