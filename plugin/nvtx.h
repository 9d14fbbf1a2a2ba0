// NVTX ranges so Nsight Systems shows gradcomp's phases (encode, exchange,
// decode). Header-only NVTX3 from the CUDA toolkit; free when no tool is
// attached.
#pragma once

#if __has_include(<nvtx3/nvToolsExt.h>)
#include <nvtx3/nvToolsExt.h>
namespace gc {
class NvtxRange {
 public:
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
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
