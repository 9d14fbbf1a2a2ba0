// The QSGD warp path's encode kernels for fp32 input (kernels/qsgd_warp_encode.cuh):
// one file per input type, so that their instantiations compile in parallel.
#include "qsgd_warp_encode.cuh"

GC_QSGD_WARP_ENCODE_TYPE(F32)
