// A test's knob from the environment (a fuzz run's cases, a random run's
// seeds), read as GRADCOMP_* integers are.
#pragma once

#include <errno.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

namespace gctest {

// The value of env as plain decimal in min..max; unset, the fallback. atoi
// took 2e5 as 2 and abc as 0, so a run asked for 200000 cases ran almost
// none and passed: a bad value fails the test and the fallback runs.
inline unsigned long long envKnob(const char* env, unsigned long long min, unsigned long long max,
                                  unsigned long long fallback) {
  const char* v = getenv(env);
  if (v == nullptr) return fallback;
  const size_t n = strspn(v, "0123456789");
  errno = 0;
  const unsigned long long x = n > 0 && v[n] == '\0' ? strtoull(v, nullptr, 10) : 0;
  if (n == 0 || v[n] != '\0' || (v[0] == '0' && v[1] != '\0') || errno != 0 || x < min || x > max) {
    ADD_FAILURE() << env << "=" << v << " is not an integer in " << min << ".." << max
                  << " (plain decimal); running " << fallback;
    return fallback;
  }
  return x;
}

// The index in `words` of env's value, spelt exactly as the docs give it; unset, -1. Another
// value ran the default without a word (GRADCOMP_SWEEP=WIDE a sample, a misspelt
// GRADCOMP_FUZZ_CASE no case at all, and passed): it fails the test naming the words, and the
// default (-1) runs.
inline int envWord(const char* env, const std::vector<std::string>& words) {
  const char* v = getenv(env);
  if (v == nullptr) return -1;
  std::string list;
  for (size_t i = 0; i < words.size(); ++i) {
    if (words[i] == v) return (int)i;
    list += (i ? ", " : "") + words[i];
  }
  ADD_FAILURE() << env << "=" << v << " is not one of " << list << "; running the default";
  return -1;
}

}  // namespace gctest
