// Pieces the dense algorithms share.
#include "algorithms.h"
#include "checks.h"

namespace gc {

gradcompResult_t decodeToOutput(Backend& be, const void* enc, size_t len, int bits, int bucket,
                                float divisor, DType t, void* out, float* scratch) {
  if (len == 0) return gradcompSuccess;
  if (t == DType::F32 && divisor == 1.0f) {
    return be.qsgdDecode(enc, len, bits, bucket, static_cast<float*>(out), false);
  }
  GC_CHECK(be.qsgdDecode(enc, len, bits, bucket, scratch, false));
  return be.fromFloat(scratch, len, divisor, t, out);
}

}  // namespace gc
