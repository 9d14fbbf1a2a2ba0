// Heap allocations of steady-state calls: once warm-up calls have sized what
// a call keeps (workspace, state, argument arrays), the pieces of the call
// path tested here allocate nothing on a call of the same shape. Counted, not
// timed: this binary replaces the global operator new and counts the
// allocations a thread makes while it has armed the count (the in-process CPU
// world runs each rank on the thread that calls it, with no helper threads).
// A binary of its own, so that the replacement touches no other test (nor the
// sanitizer builds).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <new>
#include <thread>
#include <vector>

#include "algorithms/algorithms.h"
#include "backends/transport.h"
#include "gradcomp/reference.h"

namespace {

std::atomic<long> gAllocs{0};
thread_local bool tCounting = false;

void* countedAlloc(size_t n) {
  if (tCounting) gAllocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}

}  // namespace

void* operator new(size_t n) {
  return countedAlloc(n);
}
void* operator new[](size_t n) {
  return countedAlloc(n);
}
void* operator new(size_t n, const std::nothrow_t&) noexcept {
  if (tCounting) gAllocs.fetch_add(1, std::memory_order_relaxed);
  return malloc(n ? n : 1);
}
void* operator new[](size_t n, const std::nothrow_t&) noexcept {
  if (tCounting) gAllocs.fetch_add(1, std::memory_order_relaxed);
  return malloc(n ? n : 1);
}
void operator delete(void* p) noexcept {
  free(p);
}
void operator delete[](void* p) noexcept {
  free(p);
}
void operator delete(void* p, size_t) noexcept {
  free(p);
}
void operator delete[](void* p, size_t) noexcept {
  free(p);
}

namespace {

// Runs fn(rank, transport) `warm` times uncounted, then `calls` times counted,
// on one thread per rank of an in-process CPU world of n; returns the
// allocations of the counted calls, all ranks together.
template <typename Fn>
long countSteadyAllocs(int n, int warm, int calls, Fn fn) {
  std::vector<std::unique_ptr<gc::Transport>> world = gc::makeCpuWorld(n, 30.0);
  gAllocs = 0;
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      for (int i = 0; i < warm; ++i) EXPECT_EQ(fn(r, *world[r]), gradcompSuccess);
      tCounting = true;
      for (int i = 0; i < calls; ++i) EXPECT_EQ(fn(r, *world[r]), gradcompSuccess);
      tCounting = false;
    });
  }
  for (auto& t : threads) t.join();
  return gAllocs.load();
}

// The self-check of the count itself: an allocation on an armed thread is seen.
TEST(HotPathAllocs, CountSeesAnAllocation) {
  tCounting = true;
  std::vector<int>* v = new std::vector<int>(3);
  tCounting = false;
  delete v;
  EXPECT_EQ(gAllocs.exchange(0), 2);
}

// The compressed exchanges (QSGD allgather, two-shot and ring's allgather,
// the sparse allgather, the hierarchy's inter-node stage) gather with
// allGatherDirect on every call: its argument arrays are the transport's.
TEST(HotPathAllocs, AllGatherDirectAllocatesNothingPerCall) {
  const int n = 4;
  const size_t stride = 64, bytes = 40;
  std::vector<std::vector<char>> bufs(n, std::vector<char>(n * stride));
  std::vector<std::vector<void*>> blocks(n, std::vector<void*>(n));
  std::vector<std::vector<size_t>> sizes(n, std::vector<size_t>(n));
  for (int r = 0; r < n; ++r) {
    for (int j = 0; j < n; ++j) {
      blocks[r][j] = bufs[r].data() + j * stride;
      sizes[r][j] = bytes - j;  // blocks of their own sizes (two-shot, ring)
    }
  }
  const long strided = countSteadyAllocs(n, 2, 50, [&](int r, gc::Transport& t) {
    memset(bufs[r].data() + r * stride, 'a' + r, bytes);
    return gc::allGatherDirect(t, bufs[r].data(), stride, bytes);
  });
  EXPECT_EQ(strided, 0) << "allocations in 50 steady-state allGatherDirect calls of " << n
                        << " ranks (strided slots)";
  const long sized = countSteadyAllocs(n, 2, 50, [&](int r, gc::Transport& t) {
    return gc::allGatherDirect(t, blocks[r].data(), sizes[r].data());
  });
  EXPECT_EQ(sized, 0) << "allocations in 50 steady-state allGatherDirect calls of " << n
                      << " ranks (blocks of their own sizes)";
  // What the last strided gather brought: every rank's block on every rank.
  for (int r = 0; r < n; ++r) {
    for (int j = 0; j < n; ++j) EXPECT_EQ(bufs[r][j * stride], 'a' + j) << r << " " << j;
  }
}

// The CPU backend's QSGD encode (every compressed exchange of the in-process
// and socket worlds, and the host reference API) keeps a bucket's values
// and codes on the stack: an encode allocates nothing, whatever the bucket.
TEST(HotPathAllocs, HostQsgdEncodeAllocatesNothing) {
  const size_t n = 20000;
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = (float)i * 0.25f - 7.0f;
  for (int bucket : {32, 512, 8192}) {
    std::vector<char> out(gradcompQsgdEncodedBytes(n, 8, bucket));
    gAllocs = 0;
    tCounting = true;
    const gradcompResult_t res = gradcompQsgdEncodeHost(x.data(), n, 8, bucket, 5, out.data());
    tCounting = false;
    EXPECT_EQ(res, gradcompSuccess);
    EXPECT_EQ(gAllocs.exchange(0), 0)
        << "allocations in one host encode of " << n << " elements in buckets of " << bucket;
  }
}

}  // namespace
