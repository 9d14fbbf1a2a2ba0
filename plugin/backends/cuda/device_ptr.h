#pragma once

#include "gradcomp.h"

namespace gc {
// gradcompInvalidArgument when p is NULL or plain host memory the GPU cannot
// read; gradcompCudaError when CUDA itself cannot be queried (no GPU).
gradcompResult_t checkDevicePointer(const void* p, const char* name);
}  // namespace gc
