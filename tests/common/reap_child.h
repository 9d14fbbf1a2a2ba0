/* For tests that fork: C and C++ (tests/cpu/test_fork.cc, tests/preload/calls.c). */
#ifndef GRADCOMP_TESTS_COMMON_REAP_CHILD_H_
#define GRADCOMP_TESTS_COMMON_REAP_CHILD_H_

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* Waits up to 10 s for a forked child to leave; one still there is killed
 * and reaped. Returns 1 if the child left by itself, 0 if it was killed. */
static inline int gcReapChildWithin10s(pid_t child) {
  int status = 0, t;
  for (t = 0; t < 1000; ++t) {
    if (waitpid(child, &status, WNOHANG) == child) return 1;
    usleep(10000);
  }
  kill(child, SIGKILL);
  waitpid(child, &status, 0);
  return 0;
}

#endif /* GRADCOMP_TESTS_COMMON_REAP_CHILD_H_ */
