// Error plumbing: set the thread's last-error sentence and return a result.
// Nothing throws or aborts across the C API.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <string.h>

#include <new>

#include "debug.h"
#include "gradcomp.h"
#include "host_float_env.h"

#define GC_EXPORT __attribute__((visibility("default")))

namespace gc {

// Sets the calling thread's last-error sentence (printf-style) and logs it at
// WARN; returns `result` so call sites read `return setError(...)`.
gradcompResult_t setError(gradcompResult_t result, const char* fmt, ...)
    __attribute__((format(printf, 2, 3)));
// Sets it again to a sentence already set (and logged) earlier, as a step
// that ran in between may have replaced it: recorded, not logged again.
gradcompResult_t restoreError(gradcompResult_t result, const char* fmt, ...)
    __attribute__((format(printf, 2, 3)));
void clearError();

// While one lives, the calling thread's errors are recorded but not logged:
// its owner reports the one that counts itself (the LD_PRELOAD library's
// warning names the set-up's last error), and the sentence is said once.
class ErrorsReportedByCaller {
 public:
  ErrorsReportedByCaller();
  ~ErrorsReportedByCaller();
  ErrorsReportedByCaller(const ErrorsReportedByCaller&) = delete;
  ErrorsReportedByCaller& operator=(const ErrorsReportedByCaller&) = delete;
};

// The int a C caller passed for one of the public enums, or for NCCL's
// datatype or op, read from its bytes: C lets a caller pass any int, and a
// negative one (-1) lies outside every public enum's range in C++ (their
// sentinels take in the non-negative ints only; ncclDataType_t holds only
// 0..15), so reading it as the enum, to compare, switch or pass it on, is
// undefined (clang's -fsanitize=enum reports it). Takes the parameter's
// address: passing it by value would read it as the enum.
template <typename E>
int enumArg(const E* e) {
  static_assert(sizeof(E) == sizeof(int), "the public enums are ints");
  int v;
  memcpy(&v, e, sizeof v);
  return v;
}

enum class DType : int;  // kernels/common_math.cuh

// The datatype a codec entry point was given, as the int enumArg read: NCCL's
// enum holds only 0..15 in C++ (its enumerators' bits), so a caller's -1 or
// 99 must not be read as it either. fp32, fp16 or bf16 as *out; anything else
// (another NCCL type, or none) is gradcompInvalidArgument naming the value
// and the three it takes.
gradcompResult_t dtypeArg(int datatype, DType* out);

// Runs the body of a C entry point: an exception (std::bad_alloc from a
// container, say) becomes a result and never crosses the C API, and its host
// math rounds as the GPU's whatever the calling thread's setting
// (IeeeHostMath).
template <typename F>
gradcompResult_t guarded(F&& body) {
  IeeeHostMath ieee;
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return setError(gradcompSystemError, "out of host memory");
  } catch (...) {
    return setError(gradcompInternalError, "unexpected exception inside gradcomp");
  }
}

}  // namespace gc

#define GC_CHECK(call)                              \
  do {                                              \
    gradcompResult_t gc_res_ = (call);              \
    if (gc_res_ != gradcompSuccess) return gc_res_; \
  } while (0)

// A failed CUDA call's error is also taken out of the thread's last-error
// slot: a non-sticky one (an invalid value, out of memory) would otherwise
// fail this rank's next launch check, or the framework's, in a later and
// unrelated call (a sticky one reports itself again anyway).
#define GC_CUDACHECK(call)                                                                       \
  do {                                                                                           \
    cudaError_t gc_err_ = (call);                                                                \
    if (gc_err_ != cudaSuccess) {                                                                \
      (void)cudaGetLastError();                                                                  \
      return ::gc::setError(gradcompCudaError, "CUDA error %d '%s' at %s:%d (%s)", (int)gc_err_, \
                            cudaGetErrorString(gc_err_), __FILE__, __LINE__, #call);             \
    }                                                                                            \
  } while (0)

#define GC_ARG(cond, ...)                                                     \
  do {                                                                        \
    if (!(cond)) return ::gc::setError(gradcompInvalidArgument, __VA_ARGS__); \
  } while (0)
