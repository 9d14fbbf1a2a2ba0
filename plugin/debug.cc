#include "debug.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

#include "format_args.h"
#include "params.h"

namespace gc {

static LogLevel parseLevel() {
  const char* v = getenv("GRADCOMP_DEBUG");
  if (v == nullptr || *v == '\0') return LogLevel::None;
  if (strcasecmp(v, "WARN") == 0) return LogLevel::Warn;
  // Logged as every other variable that is set (GC_INFO would ask for the
  // level being decided here).
  if (strcasecmp(v, "INFO") == 0 || strcasecmp(v, "TRACE") == 0) {
    fprintf(stderr, "gradcomp %d INFO GRADCOMP_DEBUG set by environment to %s\n", (int)getpid(), v);
  }
  if (strcasecmp(v, "INFO") == 0) return LogLevel::Info;
  if (strcasecmp(v, "TRACE") == 0) return LogLevel::Trace;
  if (strcasecmp(v, "NONE") == 0 || strcasecmp(v, "OFF") == 0) return LogLevel::None;
  fprintf(stderr,
          "gradcomp %d WARN GRADCOMP_DEBUG=%s is not one of NONE|OFF|WARN|INFO|TRACE; using "
          "WARN\n",
          (int)getpid(), shownValue(v).c_str());
  return LogLevel::Warn;
}

LogLevel logLevel() {
  static const LogLevel level = parseLevel();
  return level;
}

// One line at a time. Held across fork() (the handlers are registered with
// the first line): a child forked while another thread printed a line would
// otherwise wait forever at its own first line. Constant-initialized, so that
// no first use is in progress at a fork either (a child would wait for that
// too), and with no destructor to run (lines may come during static
// destruction).
static std::mutex gLogMu;

static void lockLogAcrossFork() {
  static std::atomic<bool> registered{false};
  if (registered.exchange(true)) return;
  pthread_atfork([] { gLogMu.lock(); }, [] { gLogMu.unlock(); }, [] { gLogMu.unlock(); });
}

void logMessage(LogLevel level, const char* file, int line, const char* fmt, ...) {
  lockLogAcrossFork();
  std::mutex& mu = gLogMu;
  char msg[1024];
  GC_FORMAT_ARGS(msg, fmt);
  const char* name = level == LogLevel::Warn ? "WARN" : level == LogLevel::Info ? "INFO" : "TRACE";
  const char* base = strrchr(file, '/');
  std::lock_guard<std::mutex> lock(mu);
  if (level == LogLevel::Trace) {
    fprintf(stderr, "gradcomp %d %s %s:%d %s\n", (int)getpid(), name, base ? base + 1 : file, line,
            msg);
  } else {
    fprintf(stderr, "gradcomp %d %s %s\n", (int)getpid(), name, msg);
  }
}

}  // namespace gc
