#include "backends/cuda/device_ptr.h"

#include <cuda_runtime_api.h>

#include "checks.h"

namespace gc {

gradcompResult_t checkDevicePointer(const void* p, const char* name) {
  GC_ARG(p != nullptr, "%s is NULL", name);
  cudaPointerAttributes attr;
  cudaError_t err = cudaPointerGetAttributes(&attr, p);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return setError(gradcompCudaError, "cannot query %s=%p: CUDA error %d '%s'", name, p, (int)err,
                    cudaGetErrorString(err));
  }
  GC_ARG(attr.type != cudaMemoryTypeUnregistered,
         "%s=%p is pageable host memory; a device, managed or pinned pointer is needed", name, p);
  return gradcompSuccess;
}

}  // namespace gc
