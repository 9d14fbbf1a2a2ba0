// The QSGD warp path's encode kernels for fp16 input (kernels/qsgd_warp_encode.cuh):
// one file per input type, so that their instantiations compile in parallel.
#include "qsgd_warp_encode.cuh"

namespace gc {
namespace cuda {

template <>
void warpEncode<DType::F16>(const WarpEncodeCall& c) {
  warpEncodeLaunch<DType::F16>(c);
}

template <>
cudaError_t warpEncodePipelined<DType::F16>(const WarpEncodeCall& c) {
  return warpEncodePipelinedLaunch<DType::F16>(c);
}

}  // namespace cuda
}  // namespace gc
