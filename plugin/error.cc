#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "checks.h"
#include "format_args.h"

namespace gc {

static thread_local char tlsLastError[1024];
static thread_local int tlsReportedByCaller = 0;

gradcompResult_t setError(gradcompResult_t result, const char* fmt, ...) {
  GC_FORMAT_ARGS(tlsLastError, fmt);
  if (tlsReportedByCaller == 0) GC_WARN("%s: %s", gradcompGetErrorString(result), tlsLastError);
  return result;
}

gradcompResult_t restoreError(gradcompResult_t result, const char* fmt, ...) {
  // Formatted through a copy: the argument is often tlsLastError's old text.
  char msg[sizeof(tlsLastError)];
  GC_FORMAT_ARGS(msg, fmt);
  memcpy(tlsLastError, msg, sizeof(msg));
  return result;
}

ErrorsReportedByCaller::ErrorsReportedByCaller() {
  ++tlsReportedByCaller;
}

ErrorsReportedByCaller::~ErrorsReportedByCaller() {
  --tlsReportedByCaller;
}

void clearError() {
  tlsLastError[0] = '\0';
}

}  // namespace gc

extern "C" {

GC_EXPORT const char* gradcompGetErrorString(gradcompResult_t r) {
  switch (gc::enumArg(&r)) {  // a C caller's -1 is no gradcompResult_t (enumArg)
    case gradcompSuccess:
      return "no error";
    case gradcompInvalidArgument:
      return "invalid argument";
    case gradcompInvalidUsage:
      return "invalid usage";
    case gradcompCudaError:
      return "CUDA error";
    case gradcompNcclError:
      return "NCCL error";
    case gradcompSystemError:
      return "system error";
    case gradcompInternalError:
      return "internal error";
    case gradcompNotSupported:
      return "not supported";
    default:
      return "unknown result code";
  }
}

GC_EXPORT const char* gradcompGetLastError(void) {
  return gc::tlsLastError;
}

GC_EXPORT int gradcompGetVersion(void) {
  return GRADCOMP_VERSION_CODE;
}

}  // extern "C"
