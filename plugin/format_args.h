// One formatting helper for the library's printf-style functions.
#pragma once

#include <stdarg.h>
#include <stdio.h>

// Inside a printf-style function whose last named parameter is `fmt`: formats
// its arguments into the char array `buf` (truncated to fit, always ended).
#define GC_FORMAT_ARGS(buf, fmt)                        \
  do {                                                  \
    va_list gcFormatArgs;                               \
    va_start(gcFormatArgs, fmt);                        \
    vsnprintf((buf), sizeof(buf), (fmt), gcFormatArgs); \
    va_end(gcFormatArgs);                               \
  } while (0)
