#pragma once

#include "gradcomp.h"

namespace gc {
// gradcompInvalidArgument when p is NULL, plain host memory the GPU cannot
// read, or device memory of a GPU other than the current one;
// gradcompCudaError when CUDA itself cannot be queried (no GPU).
gradcompResult_t checkDevicePointer(const void* p, const char* name);
}  // namespace gc
