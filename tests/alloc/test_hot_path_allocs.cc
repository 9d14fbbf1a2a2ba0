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
#include <functional>
#include <new>
#include <thread>
#include <vector>

#include "algorithms/algorithms.h"
#include "autotune.h"
#include "backends/transport.h"
#include "gradcomp/elias.h"
#include "gradcomp/reference.h"
#include "tests/common/auto_checks.h"
#include "tests/common/socket_world.h"
#include "tests/common/test_util.h"
#include "tests/common/world_checks.h"

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
long countSteadyAllocs(std::vector<std::unique_ptr<gc::Transport>>& world, int warm, int calls,
                       Fn fn) {
  const int n = (int)world.size();
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

template <typename Fn>
long countSteadyAllocs(int n, int warm, int calls, Fn fn) {
  std::vector<std::unique_ptr<gc::Transport>> world = gc::makeCpuWorld(n, 30.0);
  return countSteadyAllocs(world, warm, calls, fn);
}

// n transports of one socket world over loopback, each rank's mesh made on a
// thread of its own (as separate processes would).
std::vector<std::unique_ptr<gc::Transport>> makeSocketTransports(int n) {
  const std::string root = gctest::loopbackRoot();
  std::vector<std::shared_ptr<gc::SocketMesh>> meshes(n);
  std::vector<gradcompResult_t> res(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back(
        [&, r] { res[r] = gc::makeSocketMesh(n, r, root.c_str(), 30.0, &meshes[r]); });
  }
  for (auto& t : threads) t.join();
  std::vector<int> members(n);
  for (int r = 0; r < n; ++r) members[r] = r;
  std::vector<std::unique_ptr<gc::Transport>> world;
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    world.push_back(gc::makeSocketTransport(meshes[r], members, r, 0));
  }
  return world;
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

// The CPU backend's QSGD and Elias encodes (every compressed exchange of the
// in-process and socket worlds, and the host reference API) keep a bucket's
// values and codes in the thread's scratch, which the thread's first encode
// of its largest bucket sizes: later encodes allocate nothing, whatever the
// bucket.
TEST(HotPathAllocs, HostQsgdEncodeAllocatesNothing) {
  const size_t n = 20000;
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = (float)i * 0.25f - 7.0f;
  std::vector<char> first(gradcompQsgdEncodedBytes(n, 8, 8192));
  ASSERT_EQ(gradcompQsgdEncodeHost(x.data(), n, 8, 8192, 5, first.data()), gradcompSuccess);
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

TEST(HotPathAllocs, HostEliasEncodeAllocatesNothing) {
  const size_t n = 20000;
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = (float)i * 0.25f - 7.0f;
  gradcompEliasParams_t p{127, 32, gradcompEliasGamma, gradcompEliasScaleMax};
  std::vector<char> out(gradcompEliasMaxEncodedBytes(n, &p));  // the smallest bucket's is largest
  p.bucketSize = 8192;
  ASSERT_EQ(gradcompEliasEncodeHost(x.data(), ncclFloat32, nullptr, n, &p, 5, out.data(),
                                    out.size(), nullptr),
            gradcompSuccess);
  for (int bucket : {32, 512, 8192}) {
    p.bucketSize = bucket;
    ASSERT_LE(gradcompEliasMaxEncodedBytes(n, &p), out.size());
    gAllocs = 0;
    tCounting = true;
    const gradcompResult_t res = gradcompEliasEncodeHost(x.data(), ncclFloat32, nullptr, n, &p, 5,
                                                         out.data(), out.size(), nullptr);
    tCounting = false;
    EXPECT_EQ(res, gradcompSuccess);
    EXPECT_EQ(gAllocs.exchange(0), 0)
        << "allocations in one host Elias encode of " << n << " elements in buckets of " << bucket;
  }
}

// The in-process world's transport (the stand-in for NCCL in the CPU
// world: pass-through, the hierarchy's in-node stages) keeps its reduction's
// sources and sum buffer: a steady-state reduce-scatter or allreduce of a
// size it has seen allocates nothing.
TEST(HotPathAllocs, CpuTransportReductionsAllocateNothingPerCall) {
  const int n = 4;
  const size_t m = 300;
  std::vector<std::vector<float>> in(n, std::vector<float>(n * m, 1.0f)), out(n);
  for (auto& o : out) o.resize(n * m);
  const long rs = countSteadyAllocs(n, 2, 50, [&](int r, gc::Transport& t) {
    return t.reduceScatter(in[r].data(), out[r].data(), m, ncclFloat32, ncclSum);
  });
  EXPECT_EQ(rs, 0) << "allocations in 50 steady-state reduce-scatters of " << n << " ranks";
  const long ar = countSteadyAllocs(n, 2, 50, [&](int r, gc::Transport& t) {
    return t.passThrough(in[r].data(), out[r].data(), n * m, ncclFloat32, ncclSum);
  });
  EXPECT_EQ(ar, 0) << "allocations in 50 steady-state allreduces of " << n << " ranks";
  EXPECT_EQ(out[0][0], (float)n);
  const long sum = countSteadyAllocs(n, 2, 50, [&](int r, gc::Transport& t) {
    return t.allReduceSumFloat(in[r].data(), out[r].data(), n * m);
  });
  EXPECT_EQ(sum, 0) << "allocations in 50 steady-state float sums of " << n << " ranks";
  EXPECT_EQ(out[n - 1][n * m - 1], (float)n);
}

// The socket world's transport (the CPU backend across processes: Python's
// backend="cpu", gradcompCommCreateSocket) keeps its transfer list, the
// blocks it receives, the reduction's sources and sum and its poll arrays:
// a steady-state call of a size it has seen allocates nothing.
TEST(HotPathAllocs, SocketTransportAllocatesNothingPerCall) {
  const int n = 4;
  const size_t m = 300;
  std::vector<std::unique_ptr<gc::Transport>> world = makeSocketTransports(n);
  ASSERT_EQ((int)world.size(), n);
  std::vector<std::vector<float>> in(n, std::vector<float>(n * m, 1.0f)), out(n);
  for (auto& o : out) o.resize(n * m);
  const long rs = countSteadyAllocs(world, 2, 50, [&](int r, gc::Transport& t) {
    return t.reduceScatter(in[r].data(), out[r].data(), m, ncclFloat32, ncclSum);
  });
  EXPECT_EQ(rs, 0) << "allocations in 50 steady-state reduce-scatters of " << n << " ranks";
  EXPECT_EQ(out[1][m - 1], (float)n);
  const long ar = countSteadyAllocs(world, 2, 50, [&](int r, gc::Transport& t) {
    return t.passThrough(in[r].data(), out[r].data(), n * m - 3, ncclFloat32, ncclSum);
  });
  EXPECT_EQ(ar, 0) << "allocations in 50 steady-state allreduces of " << n << " ranks";
  EXPECT_EQ(out[0][n * m - 4], (float)n);
  const long sum = countSteadyAllocs(world, 2, 50, [&](int r, gc::Transport& t) {
    return t.allReduceSumFloat(in[r].data(), out[r].data(), n * m);
  });
  EXPECT_EQ(sum, 0) << "allocations in 50 steady-state float sums of " << n << " ranks";
  EXPECT_EQ(out[n - 1][n * m - 1], (float)n);
  std::vector<std::vector<char>> bufs(n, std::vector<char>(n * 64));
  const long gather = countSteadyAllocs(world, 2, 50, [&](int r, gc::Transport& t) {
    memset(bufs[r].data() + r * 64, 'a' + r, 40);
    return gc::allGatherDirect(t, bufs[r].data(), 64, 40);
  });
  EXPECT_EQ(gather, 0) << "allocations in 50 steady-state gathers of " << n << " ranks";
  const long ag = countSteadyAllocs(world, 2, 50, [&](int r, gc::Transport& t) {
    return t.allGather(bufs[r].data() + r * 64, bufs[r].data(), 64);
  });
  EXPECT_EQ(ag, 0) << "allocations in 50 steady-state allGathers of " << n << " ranks";
  const long sr = countSteadyAllocs(world, 2, 50, [&](int r, gc::Transport& t) {
    return t.sendRecv(in[r].data(), 64, (r + 1) % n, out[r].data(), 64, (r + n - 1) % n);
  });
  EXPECT_EQ(sr, 0) << "allocations in 50 steady-state ring steps of " << n << " ranks";
  for (int r = 0; r < n; ++r) {
    for (int j = 0; j < n; ++j) EXPECT_EQ(bufs[r][j * 64], 'a' + j) << r << " " << j;
  }
}

using gctest::autoFigures;

// One collective call shape: the allreduce's count or the reduce-scatter's
// recvcount, and the type.
struct Shape {
  size_t count;
  ncclDataType_t type;
  bool reduceScatter;
};

// Rank r's buffers of one shape: the input (fp32 values, or the same count
// of 16-bit ones) and the output.
struct RankBuffers {
  std::vector<uint16_t> in16;
  std::vector<float> in, out;
  void* send(const Shape& s) { return s.type == ncclFloat32 ? (void*)in.data() : in16.data(); }
};

RankBuffers makeBuffers(const Shape& s, int n, uint64_t seed) {
  RankBuffers b;
  const size_t total = s.reduceScatter ? s.count * n : s.count;
  b.in = gctest::normal(total, seed);
  b.in16.resize(total);
  // fp16 bits of small normals (1.0 .. 2.0 and their negatives), as bf16
  // too: any finite value does.
  for (size_t i = 0; i < total; ++i) b.in16[i] = (uint16_t)(0x3c00 + (i * 37 + seed) % 1024);
  b.out.assign(s.count, 0.0f);
  return b;
}

gradcompResult_t callOnce(gradcompComm_t c, RankBuffers& b, const Shape& s) {
  if (s.reduceScatter) {
    return gradcompReduceScatter(b.send(s), b.out.data(), s.count, s.type, ncclSum, c, nullptr);
  }
  return gradcompAllReduce(b.send(s), b.out.data(), s.count, s.type, ncclSum, c, nullptr);
}

// The allocations per call and rank of `calls` calls of shape s on a fresh
// in-process world of n comms with cfg, after `warm` uncounted ones.
template <typename World = gctest::CpuWorld>
double steadyCallAllocs(const gradcompConfig_t& cfg, int n, const Shape& s, int warm = 3,
                        int calls = 20, const std::function<void(gradcompComm_t)>& setup = nullptr,
                        uint64_t* autoPassed = nullptr) {
  World world(n, cfg);
  if (setup) {
    for (int r = 0; r < n; ++r) setup(world.comm(r));
  }
  std::vector<RankBuffers> bufs;
  for (int r = 0; r < n; ++r) bufs.push_back(makeBuffers(s, n, 17 + r));
  gAllocs = 0;
  auto res = world.run([&](int r) {
    for (int i = 0; i < warm; ++i) GC_CHECK(callOnce(world.comm(r), bufs[r], s));
    tCounting = true;
    gradcompResult_t out = gradcompSuccess;
    for (int i = 0; i < calls && out == gradcompSuccess; ++i)
      out = callOnce(world.comm(r), bufs[r], s);
    tCounting = false;
    return out;
  });
  for (int r = 0; r < n; ++r) EXPECT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  if (autoPassed) {
    *autoPassed = 0;
    for (int r = 0; r < n; ++r) {
      gradcompStats_t st;
      EXPECT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
      *autoPassed += st.callsAutoPassed;
    }
  }
  return (double)gAllocs.exchange(0) / calls / n;
}

struct AlgoCase {
  const char* name;
  gradcompConfig_t cfg;
  int n;
};

gradcompConfig_t qsgdConfig(gradcompAlgo_t algo, size_t pipelineBytes) {
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.autoTune = 0;
  cfg.algo = algo;
  cfg.pipelineBytes = pipelineBytes;
  return cfg;
}

// QSGD's flat algorithms, pipelined or not (a reduce-scatter runs the
// fixed-size exchange whatever the algo).
std::vector<AlgoCase> qsgdCases() {
  return {
      {"twoshot", qsgdConfig(gradcompAlgoTwoShot, 0), 4},
      {"twoshot-pipelined", qsgdConfig(gradcompAlgoTwoShot, 4096), 4},
      {"ring", qsgdConfig(gradcompAlgoRing, 0), 4},
      {"ring-pipelined", qsgdConfig(gradcompAlgoRing, 4096), 3},
      {"allgather", qsgdConfig(gradcompAlgoAllgather, 0), 4},
  };
}

// Once its first calls sized the comm's arrays (workspace, state, the
// layouts and argument lists of CallScratch), a call of the same shape
// allocates nothing, allreduce and reduce-scatter, fp32 and fp16.
template <typename World = gctest::CpuWorld>
void expectSteadyStateAllocatesNothing(const std::vector<AlgoCase>& cases, int warm = 3) {
  for (const AlgoCase& k : cases) {
    for (bool rs : {false, true}) {
      for (ncclDataType_t t : {ncclFloat32, ncclFloat16}) {
        const Shape s{rs ? 1000u : 4000u, t, rs};
        EXPECT_EQ(steadyCallAllocs<World>(k.cfg, k.n, s, warm), 0.0)
            << k.name << (rs ? " reduce-scatter" : " allreduce") << " type " << (int)t
            << ": allocations per steady-state call and rank";
      }
    }
  }
}

TEST(HotPathAllocs, QsgdSteadyStateCallsAllocateNothing) {
  expectSteadyStateAllocatesNothing(qsgdCases());
}

// The layouts kept between calls are refilled by every call: a call of
// another shape (count up, back down, another type) gets its own. With
// nearest rounding (no random draw) a call's result depends only on its
// input and its buffer's residuals, so each call of a comm that ran every
// shape in turn matches, bit for bit, the same call on a comm that only ever
// ran that shape. grow: a last call of a count well past every earlier one,
// whose chunks and pieces need larger slots than any earlier call's.
void expectLayoutsFollowTheShape(const std::vector<AlgoCase>& cases, bool grow = false) {
  for (AlgoCase k : cases) {
    k.cfg.rounding = gradcompRoundNearest;
    for (bool rs : {false, true}) {
      const size_t m = rs ? 1000 : 4000;
      std::vector<Shape> shapes = {{m, ncclFloat32, rs},       {m + 1, ncclFloat32, rs},
                                   {m, ncclFloat32, rs},       {m, ncclFloat16, rs},
                                   {m - 777, ncclFloat32, rs}, {m + 1, ncclFloat32, rs},
                                   {m, ncclBfloat16, rs},      {m, ncclFloat32, rs}};
      if (grow) shapes.push_back({3 * m + 5, ncclFloat32, rs});
      const int n = k.n;
      gctest::CpuWorld mixed(n, k.cfg);
      // Per distinct shape: a world of its own, and each world's buffers.
      std::vector<std::unique_ptr<gctest::CpuWorld>> alone(shapes.size());
      std::vector<std::vector<RankBuffers>> mixedBufs(shapes.size()), aloneBufs(shapes.size());
      auto first = [&](size_t i) {
        for (size_t j = 0; j < i; ++j) {
          if (shapes[j].count == shapes[i].count && shapes[j].type == shapes[i].type) return j;
        }
        return i;
      };
      for (size_t i = 0; i < shapes.size(); ++i) {
        const size_t f = first(i);
        if (f == i) alone[i] = std::make_unique<gctest::CpuWorld>(n, k.cfg);
        for (int r = 0; r < n; ++r) {
          RankBuffers b = makeBuffers(shapes[i], n, 100 * i + r);
          if (f == i) {
            mixedBufs[i].push_back(b);
            aloneBufs[i].push_back(b);
          } else {
            // The same buffers (and so the same state) as the shape's first call, new input.
            mixedBufs[f][r].in = b.in, mixedBufs[f][r].in16 = b.in16;
            aloneBufs[f][r].in = b.in, aloneBufs[f][r].in16 = b.in16;
          }
        }
        const Shape& s = shapes[i];
        auto a = mixed.run([&](int r) { return callOnce(mixed.comm(r), mixedBufs[f][r], s); });
        auto b =
            alone[f]->run([&](int r) { return callOnce(alone[f]->comm(r), aloneBufs[f][r], s); });
        for (int r = 0; r < n; ++r) {
          ASSERT_EQ(a[r], gradcompSuccess) << gradcompGetLastError();
          ASSERT_EQ(b[r], gradcompSuccess) << gradcompGetLastError();
          const size_t bytes = s.count * (s.type == ncclFloat32 ? 4 : 2);
          EXPECT_EQ(memcmp(mixedBufs[f][r].out.data(), aloneBufs[f][r].out.data(), bytes), 0)
              << k.name << (rs ? " reduce-scatter" : " allreduce") << " call " << i << " (count "
              << s.count << ", type " << (int)s.type << ") rank " << r;
        }
      }
    }
  }
}

TEST(HotPathAllocs, QsgdLayoutsFollowTheShape) {
  expectLayoutsFollowTheShape(qsgdCases());
}

// A call larger than every earlier one on the comm (DDP's first bucket is
// its smallest): the kept layouts must not keep an earlier call's slots.
TEST(HotPathAllocs, QsgdLayoutsFollowAGrowingCount) {
  expectLayoutsFollowTheShape(qsgdCases(), true);
}

// The hierarchy (GRADCOMP_LOCAL_SIZE: nodes of 2 ranks) with QSGD's
// middle stages, pipelined or not: the in-node stages' layout and block
// arrays are the comm's too, its middle stage's the child comm's.
std::vector<AlgoCase> hierCases() {
  std::vector<AlgoCase> cases = {
      {"hier-twoshot", qsgdConfig(gradcompAlgoTwoShot, 0), 6},
      {"hier-twoshot-pipelined", qsgdConfig(gradcompAlgoTwoShot, 4096), 6},
      {"hier-ring", qsgdConfig(gradcompAlgoRing, 0), 6},
      {"hier-allgather", qsgdConfig(gradcompAlgoAllgather, 0), 4},
  };
  for (AlgoCase& k : cases) k.cfg.localSize = 2;
  return cases;
}

TEST(HotPathAllocs, HierSteadyStateCallsAllocateNothing) {
  expectSteadyStateAllocatesNothing(hierCases());
}

TEST(HotPathAllocs, HierLayoutsFollowTheShape) {
  expectLayoutsFollowTheShape(hierCases());
}

TEST(HotPathAllocs, HierLayoutsFollowAGrowingCount) {
  expectLayoutsFollowTheShape(hierCases(), true);
}

// The sparse methods, flat and hierarchical: the CPU backend's threshold
// selector samples into its own kept array, the sparse reduce-scatter's
// all-to-all takes the comm's argument arrays.
std::vector<AlgoCase> sparseCases() {
  std::vector<AlgoCase> cases;
  for (gradcompMethod_t m : {gradcompMethodTopk, gradcompMethodDgc, gradcompMethodRandk}) {
    for (int localSize : {1, 2}) {
      gradcompConfig_t cfg = gctest::sparseTestConfig(m);
      cfg.autoTune = 0;
      cfg.localSize = localSize;
      const char* name = m == gradcompMethodTopk  ? (localSize == 1 ? "topk" : "hier-topk")
                         : m == gradcompMethodDgc ? (localSize == 1 ? "dgc" : "hier-dgc")
                                                  : (localSize == 1 ? "randk" : "hier-randk");
      cases.push_back({name, cfg, 4});
    }
  }
  return cases;
}

TEST(HotPathAllocs, SparseSteadyStateCallsAllocateNothing) {
  expectSteadyStateAllocatesNothing(sparseCases());
}

// QSGD's variable-size Elias allgather (GRADCOMP_ELIAS=1; a reduce-scatter
// runs the fixed-size exchange): its size and argument arrays are the
// comm's, the CPU encode's bucket on the stack.
TEST(HotPathAllocs, EliasSteadyStateCallsAllocateNothing) {
  gradcompConfig_t cfg = qsgdConfig(gradcompAlgoAuto, 0);
  cfg.elias = 1;
  expectSteadyStateAllocatesNothing({{"elias", cfg, 4}});
}

// The socket world (gradcompCommCreateSocket) runs the same algorithms over
// its own transport: QSGD's, the hierarchy's (its node and inter-node
// transports on the shared connections), the sparse methods' and a call
// below minElements, passed through.
TEST(HotPathAllocs, SocketSteadyStateCallsAllocateNothing) {
  std::vector<AlgoCase> cases = qsgdCases();
  for (const AlgoCase& k : hierCases()) cases.push_back(k);
  gradcompConfig_t passed = qsgdConfig(gradcompAlgoAuto, 0);
  passed.minElements = 1u << 20;
  cases.push_back({"passed", passed, 4});
  expectSteadyStateAllocatesNothing<gctest::SocketWorld>(cases);
}

TEST(HotPathAllocs, SocketSparseSteadyStateCallsAllocateNothing) {
  expectSteadyStateAllocatesNothing<gctest::SocketWorld>(sparseCases());
}

// DGC with clipping (clipNorm > 0): the CPU backend's norm of the
// gradient, on compressed calls (flat and hierarchical) and on calls below
// minElements, whose momentum pass-through clips too.
TEST(HotPathAllocs, ClippedDgcSteadyStateCallsAllocateNothing) {
  std::vector<AlgoCase> cases;
  for (int localSize : {1, 2}) {
    gradcompConfig_t cfg = gctest::sparseTestConfig(gradcompMethodDgc);
    cfg.autoTune = 0;
    cfg.localSize = localSize;
    cfg.clipNorm = 0.5f;
    cases.push_back({localSize == 1 ? "dgc-clipped" : "hier-dgc-clipped", cfg, 4});
  }
  gradcompConfig_t passed = cases[0].cfg;
  passed.minElements = 1u << 20;
  cases.push_back({"dgc-clipped-passed", passed, 4});
  expectSteadyStateAllocatesNothing(cases);
}

// DGC's momentum pass-through (a call below minElements carries its
// velocity), flat and hierarchical (whose reduce-scatter keeps the velocity
// in its stage-1 order: its block offsets and lengths are the comm's).
TEST(HotPathAllocs, MomentumPassThroughSteadyStateCallsAllocateNothing) {
  std::vector<AlgoCase> cases;
  for (AlgoCase k : sparseCases()) {
    if (k.cfg.method != gradcompMethodDgc) continue;
    k.cfg.minElements = 1u << 20;
    cases.push_back(k);
  }
  expectSteadyStateAllocatesNothing(cases);
}

// The residual pass-through (a call the auto-tuner passes, of a buffer
// that earlier calls compressed) of the hierarchy's reduce-scatter, whose
// state is in its stage-1 order: once the residual went out, a passed call
// allocates nothing (figures injected: NCCL faster at every size).
TEST(HotPathAllocs, HierAutoPassedReduceScatterAllocatesNothing) {
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.autoTune = 1;
  cfg.localSize = 2;
  const int n = 4;
  const gc::AutoFigures ncclWins = autoFigures(16, 32, 48, 80);
  const Shape s{1000, ncclFloat32, true};
  gctest::CpuWorld world(n, cfg);
  for (int r = 0; r < n; ++r) gc::autoInjectFigures(world.comm(r), ncclWins);
  std::vector<RankBuffers> bufs;
  for (int r = 0; r < n; ++r) bufs.push_back(makeBuffers(s, n, 5 + r));
  gAllocs = 0;
  auto res = world.run([&](int r) {
    for (int i = 0; i < 3; ++i) GC_CHECK(callOnce(world.comm(r), bufs[r], s));
    tCounting = true;
    gradcompResult_t out = gradcompSuccess;
    for (int i = 0; i < 20 && out == gradcompSuccess; ++i)
      out = callOnce(world.comm(r), bufs[r], s);
    tCounting = false;
    return out;
  });
  for (int r = 0; r < n; ++r) EXPECT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  EXPECT_EQ(gAllocs.exchange(0), 0)
      << "allocations in 20 auto-passed reduce-scatters of " << n << " ranks";
  for (int r = 0; r < n; ++r) {
    gradcompStats_t st;
    ASSERT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
    EXPECT_EQ(st.callsAutoPassed, 23u) << "rank " << r;
  }
}

// DQ-SGD: the widths chosen per call (dynamic, budget), flat and
// hierarchical.
TEST(HotPathAllocs, DqsgdSteadyStateCallsAllocateNothing) {
  std::vector<AlgoCase> cases;
  for (gradcompBitsMode_t mode : {gradcompBitsDynamic, gradcompBitsBudget}) {
    for (gradcompAlgo_t algo : {gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather}) {
      gradcompConfig_t cfg = qsgdConfig(algo, 0);
      cfg.bitsMode = mode;
      cases.push_back({mode == gradcompBitsDynamic ? "dynamic" : "budget", cfg, 4});
      cfg.localSize = 2;
      cases.push_back({mode == gradcompBitsDynamic ? "hier-dynamic" : "hier-budget", cfg, 4});
    }
  }
  expectSteadyStateAllocatesNothing(cases);
}

// The auto-tuner's steady state: once a collective's decision is made
// (here from injected figures, as a timing on the host clock would give:
// compress at every size, or pass through at every size), its calls
// allocate nothing, compressed or passed (DGC's passed calls carry the
// velocity), on the socket world the tuner times.
TEST(HotPathAllocs, AutoTunedSteadyStateCallsAllocateNothing) {
  gradcompConfig_t qsgd = gctest::qsgdTestConfig();
  const gradcompConfig_t dgc = gctest::sparseTestConfig(gradcompMethodDgc);
  const gc::AutoFigures compressWins = autoFigures(64, 128, 32, 64);
  const gc::AutoFigures ncclWins = autoFigures(16, 32, 48, 80);
  for (const AlgoCase& k : std::vector<AlgoCase>{{"auto-qsgd", qsgd, 4}, {"auto-dgc", dgc, 4}}) {
    ASSERT_EQ(k.cfg.autoTune, 1);
    for (bool pass : {false, true}) {
      for (bool rs : {false, true}) {
        const Shape s{rs ? 1000u : 4000u, ncclFloat32, rs};
        uint64_t passed = 0;
        const double allocs = steadyCallAllocs<gctest::SocketWorld>(
            k.cfg, k.n, s, 3, 20,
            [&](gradcompComm_t c) { gc::autoInjectFigures(c, pass ? ncclWins : compressWins); },
            &passed);
        EXPECT_EQ(passed, pass ? 23u * k.n : 0u) << k.name << ": calls auto passed";
        EXPECT_EQ(allocs, 0.0) << k.name << (pass ? " passed" : " compressed")
                               << (rs ? " reduce-scatter" : " allreduce")
                               << ": allocations per steady-state call and rank";
      }
    }
  }
}

}  // namespace
