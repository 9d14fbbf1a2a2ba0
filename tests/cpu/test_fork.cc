// Under fork(): a process that forks (a trainer's DataLoader workers, a test
// runner's children) while another of its threads is inside the library.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "debug.h"
#include "tests/common/reap_child.h"
#include "tests/common/tsan.h"

// A child forked while another thread prints a log line prints its own
// (GRADCOMP_DEBUG=INFO or TRACE: its comm's set-up, its calls) and must not
// wait forever for the lock that thread held at the fork. Each of 300
// children gets 10 s; one still there is killed and counted (three end the
// test).
TEST(Fork, ChildLogsWhileAnotherThreadLogs) {
#ifdef GC_TEST_TSAN
  GTEST_SKIP() << "ThreadSanitizer does not support fork() in a multi-threaded process";
#endif
  // The lines go to /dev/null: thousands of them.
  fflush(stderr);
  const int saved = dup(2);
  const int devnull = open("/dev/null", O_WRONLY);
  ASSERT_GE(saved, 0);
  ASSERT_GE(devnull, 0);
  dup2(devnull, 2);
  std::atomic<bool> done{false};
  std::thread logger([&] {
    while (!done) gc::logMessage(gc::LogLevel::Info, __FILE__, __LINE__, "a parent's line");
  });
  int stuck = 0, failed = 0;
  for (int i = 0; i < 300; ++i) {
    const pid_t child = fork();
    if (child == 0) {
      gc::logMessage(gc::LogLevel::Info, __FILE__, __LINE__, "a child's line");
      _exit(0);
    }
    if (child < 0) {
      ++failed;
      break;
    }
    if (!gcReapChildWithin10s(child)) {
      if (++stuck == 3) break;  // enough to fail, without 10 s more per child
    }
  }
  done = true;
  logger.join();
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  close(devnull);
  EXPECT_EQ(failed, 0) << "fork() failed";
  EXPECT_EQ(stuck, 0) << stuck << " forked children did not exit";
}
