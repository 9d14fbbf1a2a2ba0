// One formatting helper for the library's printf-style functions.
#pragma once

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <type_traits>

// Inside a printf-style function whose last named parameter is `fmt`: formats
// its arguments into the char array `buf` (truncated to fit, always ended).
#define GC_FORMAT_ARGS(buf, fmt)                                                                \
  do {                                                                                          \
    static_assert(std::is_array<decltype(buf)>::value, "GC_FORMAT_ARGS formats into an array"); \
    va_list gcFormatArgs;                                                                       \
    va_start(gcFormatArgs, fmt);                                                                \
    vsnprintf((buf), sizeof(buf), (fmt), gcFormatArgs);                                         \
    va_end(gcFormatArgs);                                                                       \
  } while (0)

namespace gc {

// A float as a sentence shows it: in the fewest digits (6 to 9) that read back
// as the same float, so that two values apart past %g's six digits (0.01 and
// the float after it), or a value just past a bound (momentum 0.9999995), are
// not shown alike or as the bound itself.
inline void formatFloat(char* out, size_t n, float f) {
  for (int digits = 6; digits <= 9; ++digits) {
    snprintf(out, n, "%.*g", digits, (double)f);
    if (strtof(out, nullptr) == f) break;
  }
}

}  // namespace gc
