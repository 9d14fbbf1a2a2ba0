// The QSGD warp path's encode kernels for fp32 input (kernels/qsgd_warp_encode.cuh):
// one file per input type, so that their instantiations compile in parallel.
#include "qsgd_warp_encode.cuh"

namespace gc {
namespace cuda {

template <>
void warpEncode<DType::F32>(const WarpEncodeCall& c) {
  warpEncodeLaunch<DType::F32>(c);
}

template <>
cudaError_t warpEncodePipelined<DType::F32>(const WarpEncodeCall& c) {
  return warpEncodePipelinedLaunch<DType::F32>(c);
}

}  // namespace cuda
}  // namespace gc
