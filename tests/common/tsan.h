// GC_TEST_TSAN: defined where the tests are built with ThreadSanitizer
// (clang's __has_feature, GCC's __SANITIZE_THREAD__), so that the tests that
// fork a multi-threaded process, which it does not support, skip there.
#pragma once

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define GC_TEST_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define GC_TEST_TSAN 1
#endif
