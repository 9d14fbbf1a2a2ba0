// One formatting helper for the library's printf-style functions.
#pragma once

#include <stdarg.h>
#include <stdio.h>

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
