// The QSGD warp path's encode kernels for bf16 input (kernels/qsgd_warp_encode.cuh):
// one file per input type, so that their instantiations compile in parallel.
#include "qsgd_warp_encode.cuh"

namespace gc {
namespace cuda {

template <>
void warpEncode<DType::BF16>(const WarpEncodeCall& c) {
  warpEncodeLaunch<DType::BF16>(c);
}

template <>
cudaError_t warpEncodePipelined<DType::BF16>(const WarpEncodeCall& c) {
  return warpEncodePipelinedLaunch<DType::BF16>(c);
}

}  // namespace cuda
}  // namespace gc
