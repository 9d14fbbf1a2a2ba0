// Logging to stderr, levels as NCCL_DEBUG: GRADCOMP_DEBUG=WARN|INFO|TRACE.
#pragma once

namespace gc {

enum class LogLevel : int { None = 0, Warn = 1, Info = 2, Trace = 3 };

LogLevel logLevel();
void logMessage(LogLevel level, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));

}  // namespace gc

#define GC_LOG(level, ...)                                        \
  do {                                                            \
    if (::gc::logLevel() >= (level)) {                            \
      ::gc::logMessage((level), __FILE__, __LINE__, __VA_ARGS__); \
    }                                                             \
  } while (0)
#define GC_WARN(...) GC_LOG(::gc::LogLevel::Warn, __VA_ARGS__)
#define GC_INFO(...) GC_LOG(::gc::LogLevel::Info, __VA_ARGS__)
#define GC_TRACE(...) GC_LOG(::gc::LogLevel::Trace, __VA_ARGS__)
