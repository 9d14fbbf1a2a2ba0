// CPU backend: host memory and the host reference codecs.
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "checks.h"
#include "codecs/qsgd.h"

namespace gc {
namespace {

class CpuBackend final : public Backend {
 public:
  bool onDevice() const override { return false; }
  float* agreeScratch() override { return agree_; }
  float* flagScratch() override { return &flag_; }

  gradcompResult_t alloc(size_t bytes, void** p) override {
    *p = bytes ? calloc(1, bytes) : nullptr;
    if (bytes && *p == nullptr) {
      return setError(gradcompSystemError, "out of host memory allocating %zu bytes", bytes);
    }
    return gradcompSuccess;
  }
  void release(void* p) override { free(p); }
  gradcompResult_t zero(void* p, size_t bytes) override {
    if (bytes) memset(p, 0, bytes);
    return gradcompSuccess;
  }
  gradcompResult_t copy(void* dst, const void* src, size_t bytes) override {
    if (bytes && dst != src) memmove(dst, src, bytes);
    return gradcompSuccess;
  }
  gradcompResult_t toHost(void* dst, const void* src, size_t bytes) override {
    return copy(dst, src, bytes);
  }
  gradcompResult_t fromHost(void* dst, const void* src, size_t bytes) override {
    return copy(dst, src, bytes);
  }
  gradcompResult_t sync() override { return gradcompSuccess; }

  gradcompResult_t qsgdEncode(const void* x, DType t, float* residual, size_t n, int bits,
                              int bucket, const KeySpec& key, void* out) override {
    host::qsgdEncode(x, t, residual, n, bits, bucket, resolveKey(key), key.nearest, key.square,
                     out);
    return gradcompSuccess;
  }
  gradcompResult_t qsgdDecode(const void* in, size_t n, int bits, int bucket, float* out,
                              bool accumulate) override {
    host::qsgdDecode(in, n, bits, bucket, out, accumulate);
    return gradcompSuccess;
  }
  gradcompResult_t toFloat(const void* x, DType t, const float* addend, size_t n,
                           float* out) override {
    for (size_t i = 0; i < n; ++i) {
      float v = loadAsFloat(x, t, i);
      out[i] = addend ? fadd(v, addend[i]) : v;
    }
    return gradcompSuccess;
  }
  gradcompResult_t fromFloat(const float* x, size_t n, float divisor, DType t, void* out) override {
    for (size_t i = 0; i < n; ++i) {
      storeFromFloat(out, t, i, divisor == 1.0f ? x[i] : fdiv(x[i], divisor));
    }
    return gradcompSuccess;
  }
  gradcompResult_t add(float* acc, const float* x, size_t n) override {
    for (size_t i = 0; i < n; ++i) acc[i] = fadd(acc[i], x[i]);
    return gradcompSuccess;
  }
  gradcompResult_t flagNonFinite(const void* x, DType t, size_t n, float* flag) override {
    *flag = 0.0f;
    return markNonFinite(x, t, n, flag);
  }
  gradcompResult_t markNonFinite(const void* x, DType t, size_t n, float* flag) override {
    for (size_t i = 0; i < n; ++i) {
      if (!isFiniteBits(floatToBits(loadAsFloat(x, t, i)) & 0x7fffffffu)) {
        *flag = 1.0f;
        break;
      }
    }
    return gradcompSuccess;
  }
  gradcompResult_t zeroIfFlagged(float* x, size_t n, const float* flag) override {
    if (*flag != 0.0f && n) memset(x, 0, n * sizeof(float));
    return gradcompSuccess;
  }

 private:
  float agree_[4] = {};
  float flag_ = 0.0f;
};

}  // namespace

std::unique_ptr<Backend> makeCpuBackend() {
  return std::unique_ptr<Backend>(new CpuBackend());
}

}  // namespace gc
