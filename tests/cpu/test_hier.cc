// Hierarchical allreduce on the CPU world (GRADCOMP_LOCAL_SIZE splits it into
// nodes of L consecutive ranks): for N = 2..8 and every L dividing N, bit for
// bit equal to the serial reference of tests/common/ref_hier.h (the flat
// references where the topology is flat: L = 1 or one node), identical on
// every rank, within the error bound of its quantizations, error feedback
// conserving mass; QSGD with each inter-node algorithm and the sparse
// methods; bytesInterNode against the formulas; bad local sizes refused.
#include <gtest/gtest.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "gradcomp.h"
#include "kernels/qsgd_math.cuh"
#include "plugin/algorithms/algorithms.h"
#include "plugin/backends/transport.h"
#include "plugin/checks.h"
#include "plugin/comm.h"
#include "plugin/topology.h"
#include "tests/common/cpu_world.h"
#include "tests/common/forwarding_transport.h"
#include "tests/common/ref_hier.h"
#include "tests/common/socket_world.h"
#include "tests/common/state_blob.h"
#include "tests/common/stats_compare.h"
#include "tests/common/test_util.h"
#include "tests/common/world_checks.h"

namespace {

using gc::DType;
using namespace gctest::ref;

gradcompConfig_t baseConfig(int L) {
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.localSize = L;
  return cfg;
}

// Runs `steps` in-place calls and checks each against the reference, across
// ranks, and (step 0) against the error bound.
void checkQsgd(gradcompAlgo_t algo, int N, int L, DType t, bool avg, size_t n, int steps,
               gradcompRounding_t rounding = gradcompRoundStochastic,
               gradcompLevels_t levels = gradcompLevelsUniform) {
  SCOPED_TRACE(testing::Message() << "algo=" << algo << " N=" << N << " L=" << L
                                  << " dtype=" << (int)t << " avg=" << avg << " n=" << n
                                  << " rounding=" << rounding << " levels=" << levels);
  gradcompConfig_t cfg = baseConfig(L);
  cfg.algo = algo;
  cfg.rounding = rounding;
  cfg.levels = levels;
  gctest::CpuWorld world(N, cfg);
  const int nodes = N / L;
  const bool hier = nodes >= 2 && L >= 2;
  // The inter-node algorithm, as for a flat comm of the nodes.
  const gradcompAlgo_t eff = gctest::effectiveAlgo(algo, hier ? nodes : N);
  std::vector<Rank> ref = makeInputs(N, n, t, n + N + 7 * L);
  std::vector<Rank> bufs = ref;
  for (int step = 0; step < steps; ++step) {
    std::vector<Rank> in = makeInputs(N, n, t, 1000 * step + n + N + 7 * L);
    gctest::loadStep(in, ref, bufs);
    std::vector<double> exact, sumMax;
    gctest::allReduceBoundTerms(in, t, n, cfg.bucketSize, exact, sumMax);
    auto res = gctest::allReduceInPlace(world, bufs, t, n, avg);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();

    ref = in;
    std::vector<float> expect;
    if (N == 1) {
      expect = finish(widen(in[0], t, n), t, 1.0f);
    } else if (hier) {
      expect = refHier(ref, t, n, cfg, step, avg, L, eff);
    } else {
      expect = refDense(ref, t, n, cfg, step, avg, eff);
    }
    for (int r = 0; r < N; ++r) {
      auto got = widen(bufs[r], t, n);
      ASSERT_EQ(memcmp(got.data(), expect.data(), n * 4), 0) << "rank " << r << " step " << step;
    }
    if (N > 1) {
      gradcompStats_t st;
      ASSERT_EQ(gradcompGetStats(world.comm(0), &st), gradcompSuccess);
      EXPECT_EQ(st.callsPerAlgo[hier ? gradcompAlgoHier : eff], (uint64_t)step + 1);
    }
    // Error bound at step 0 (residuals zero): each quantization of a sum errs
    // by at most (sum of the inputs' bucket max)/s per element, the node
    // sums' bucket max being at most the sum of their ranks'. Shards are
    // bucket-aligned, so the buffer's buckets are the shards' buckets.
    if (N > 1 && step == 0) {
      const double s = gctest::boundLevels(cfg);
      const int ranks = hier ? nodes : N;
      const int q = eff == gradcompAlgoTwoShot ? 2 : eff == gradcompAlgoRing ? ranks : 1;
      ASSERT_NO_FATAL_FAILURE(gctest::checkAllReduceBound(widen(bufs[0], t, n), exact, sumMax, q, s,
                                                          N, avg, t, cfg.bucketSize));
    }
  }
}

const size_t kCounts[] = {1, 63, 200, 1000, 3001};

TEST(HierCpu, QsgdEveryLocalSize) {
  for (int N = 2; N <= 8; ++N)
    for (int L = 1; L <= N; ++L) {
      if (N % L) continue;
      for (DType t : {DType::F32, DType::BF16})
        for (bool avg : {false, true})
          for (size_t n : kCounts) checkQsgd(gradcompAlgoAuto, N, L, t, avg, n, 2);
    }
}

TEST(HierCpu, QsgdEachInterNodeAlgorithm) {
  const int shapes[][2] = {{4, 2}, {6, 2}, {6, 3}, {8, 2}, {8, 4}};
  for (auto& s : shapes)
    for (gradcompAlgo_t algo :
         {gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather, gradcompAlgoHier})
      for (size_t n : {(size_t)63, (size_t)1000, (size_t)3001}) {
        checkQsgd(algo, s[0], s[1], DType::F32, false, n, 3);
        checkQsgd(algo, s[0], s[1], DType::BF16, true, n, 2);
      }
}

// The inter-node child comm inherits GRADCOMP_ROUNDING=nearest: every
// middle algorithm's encodes round to the nearest level.
TEST(HierCpu, NearestRoundingEachInterNodeAlgorithm) {
  const int shapes[][2] = {{4, 2}, {6, 2}, {6, 3}, {8, 2}};
  for (auto& s : shapes)
    for (gradcompAlgo_t algo :
         {gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather, gradcompAlgoHier})
      for (size_t n : {(size_t)63, (size_t)3001}) {
        checkQsgd(algo, s[0], s[1], DType::F32, false, n, 3, gradcompRoundNearest);
        checkQsgd(algo, s[0], s[1], DType::BF16, true, n, 2, gradcompRoundNearest);
      }
}

// The inter-node child comm inherits GRADCOMP_LEVELS=square too.
TEST(HierCpu, SquareLevelsEachInterNodeAlgorithm) {
  const int shapes[][2] = {{4, 2}, {6, 3}, {8, 2}};
  for (auto& s : shapes)
    for (gradcompAlgo_t algo :
         {gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather, gradcompAlgoHier})
      for (size_t n : {(size_t)63, (size_t)3001}) {
        checkQsgd(algo, s[0], s[1], DType::F32, false, n, 3, gradcompRoundStochastic,
                  gradcompLevelsSquare);
        checkQsgd(algo, s[0], s[1], DType::BF16, true, n, 2, gradcompRoundNearest,
                  gradcompLevelsSquare);
      }
}

// The CPU transport's reduce-scatter is ncclReduceScatter: block r of the
// same reduction the pass-through allreduce makes (rank order, fp16/bf16
// rounded after every addition as NCCL does), for every type and op.
TEST(HierCpu, TransportReduceScatter) {
  const int N = 3;
  const size_t block = 37;
  for (ncclDataType_t type : {ncclFloat32, ncclFloat16, ncclBfloat16, ncclInt32})
    for (ncclRedOp_t op : {ncclSum, ncclAvg, ncclMax}) {
      auto world = gc::makeCpuWorld(N, 120);
      const size_t esz = type == ncclFloat32 || type == ncclInt32 ? 4 : 2;
      std::vector<std::vector<uint8_t>> in(N), all(N), rs(N);
      for (int r = 0; r < N; ++r) {
        std::vector<float> v = gctest::normal(N * block, 11 + r, 3.0f);
        in[r].resize(N * block * esz);
        for (size_t i = 0; i < N * block; ++i) {
          if (type == ncclInt32) {
            const int32_t x = (int32_t)(v[i] * 100);
            memcpy(&in[r][i * 4], &x, 4);
          } else {
            gc::storeFromFloat(in[r].data(),
                               type == ncclFloat32   ? DType::F32
                               : type == ncclFloat16 ? DType::F16
                                                     : DType::BF16,
                               i, v[i]);
          }
        }
        all[r].resize(N * block * esz);
        rs[r].resize(block * esz);
      }
      std::vector<std::thread> threads;
      std::vector<gradcompResult_t> res(2 * N, gradcompInternalError);
      for (int r = 0; r < N; ++r) {
        threads.emplace_back([&, r] {
          res[r] = world[r]->passThrough(in[r].data(), all[r].data(), N * block, type, op);
          res[N + r] = world[r]->reduceScatter(in[r].data(), rs[r].data(), block, type, op);
        });
      }
      for (auto& t : threads) t.join();
      for (int r = 0; r < N; ++r) {
        ASSERT_EQ(res[r], gradcompSuccess);
        ASSERT_EQ(res[N + r], gradcompSuccess);
        EXPECT_EQ(memcmp(rs[r].data(), all[r].data() + r * block * esz, block * esz), 0)
            << "type " << type << " op " << op << " rank " << r;
      }
    }
}

// DQ-SGD: the bit width is chosen from the previous full result, which every
// rank holds identically, and the hierarchical call quantizes with it.
TEST(HierCpu, DqsgdBits) {
  const int N = 8, L = 2;
  const size_t n = 3001;
  gradcompConfig_t cfg = baseConfig(L);
  cfg.bitsMode = gradcompBitsDynamic;
  cfg.varianceTarget = 0.002f;
  gctest::CpuWorld world(N, cfg);
  std::vector<Rank> ref = makeInputs(N, n, DType::F32, 3);
  std::vector<Rank> bufs = ref;
  for (int step = 0; step < 4; ++step) {
    std::vector<Rank> in = makeInputs(N, n, DType::F32, 40 + step);
    gctest::loadStep(in, ref, bufs);
    auto res = world.run([&](int r) {
      return gradcompAllReduce(bufs[r].f32.data(), bufs[r].f32.data(), n, ncclFloat32, ncclSum,
                               world.comm(r), nullptr);
    });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    gradcompStats_t st0;
    ASSERT_EQ(gradcompGetStats(world.comm(0), &st0), gradcompSuccess);
    for (int r = 1; r < N; ++r) {
      gradcompStats_t st;
      ASSERT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
      ASSERT_EQ(st.bitsLast, st0.bitsLast) << "rank " << r << " step " << step;
    }
    gradcompConfig_t rc = cfg;
    rc.bits = st0.bitsLast;
    ref = in;
    const std::vector<float> expect =
        refHier(ref, DType::F32, n, rc, step, false, L, gradcompAlgoTwoShot);
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(memcmp(bufs[r].f32.data(), expect.data(), n * 4), 0)
          << "rank " << r << " step " << step << " bits " << st0.bitsLast;
    }
  }
}

// Sparse methods: bit-equal to the reference on every rank over a few steps
// (DGC through its warm-up).
void checkSparse(gradcompConfig_t cfg, int N, int L, DType t, bool avg, size_t n, int steps) {
  SCOPED_TRACE(testing::Message() << "method=" << cfg.method << " select=" << cfg.select
                                  << " N=" << N << " L=" << L << " dtype=" << (int)t
                                  << " avg=" << avg << " n=" << n);
  cfg.localSize = L;
  gctest::CpuWorld world(N, cfg);
  const int nodes = N / L;
  const bool hier = nodes >= 2 && L >= 2;
  std::vector<std::vector<SparseState>> hst;
  std::vector<SparseState> fst(N);
  std::vector<Rank> bufs = makeInputs(N, n, t, 77 + n + N);
  for (int step = 0; step < steps; ++step) {
    std::vector<Rank> in = makeInputs(N, n, t, 500 * step + n + N + L);
    std::vector<std::vector<float>> g(N);
    for (int i = 0; i < N; ++i) {
      g[i] = widen(in[i], t, n);
      std::copy(in[i].f32.begin(), in[i].f32.end(), bufs[i].f32.begin());
      std::copy(in[i].half.begin(), in[i].half.end(), bufs[i].half.begin());
    }
    auto res = gctest::allReduceInPlace(world, bufs, t, n, avg);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    const std::vector<float> expect =
        hier ? refHierSparse(cfg, t, avg, step, g, hst, L) : refSparse(cfg, t, avg, step, g, fst);
    for (int r = 0; r < N; ++r) {
      auto got = widen(bufs[r], t, n);
      ASSERT_EQ(memcmp(got.data(), expect.data(), n * 4), 0) << "rank " << r << " step " << step;
    }
  }
}

TEST(HierCpu, SparseMethods) {
  const int shapes[][2] = {{4, 2}, {6, 3}, {8, 2}, {8, 4}, {8, 8}, {6, 1}};
  for (auto& s : shapes)
    for (int m = 0; m < 4; ++m)
      for (size_t n : {(size_t)1, (size_t)333, (size_t)5000}) {
        gradcompConfig_t cfg = baseConfig(0);
        cfg.density = 0.05f;
        cfg.method = m == 3 ? gradcompMethodRandk : m == 2 ? gradcompMethodDgc : gradcompMethodTopk;
        cfg.select = m == 1 ? gradcompSelectExact : gradcompSelectThreshold;
        if (m == 2) cfg.warmupSteps = 2;
        checkSparse(cfg, s[0], s[1], DType::F32, false, n, 4);
        checkSparse(cfg, s[0], s[1], DType::BF16, true, n, 2);
      }
}

// GRADCOMP_ELIAS codes QSGD levels only: a sparse method with it set stays
// hierarchical, bit-equal to the hierarchical reference.
TEST(HierCpu, SparseMethodsIgnoreElias) {
  for (gradcompMethod_t m : {gradcompMethodTopk, gradcompMethodDgc, gradcompMethodRandk}) {
    gradcompConfig_t cfg = baseConfig(0);
    cfg.density = 0.05f;
    cfg.method = m;
    cfg.elias = 1;
    checkSparse(cfg, 4, 2, DType::F32, false, 5000, 3);
  }
}

// Error feedback keeps what was not sent: over T calls, the sum of the
// outputs plus what all ranks hold in their residuals equals the sum of all
// inputs (one quantization per element and step: allgather across nodes;
// top-k, where v keeps exactly what was not sent).
TEST(HierCpu, ErrorFeedbackConservesMass) {
  for (int m = 0; m < 2; ++m) {
    const int N = 8, L = 4, T = 5;
    const size_t n = 2000;
    gradcompConfig_t cfg = baseConfig(L);
    cfg.ownerResidual = 0;
    if (m == 1) cfg.method = gradcompMethodTopk, cfg.density = 0.02f;
    gctest::CpuWorld world(N, cfg);
    std::vector<std::vector<float>> bufs(N, std::vector<float>(n));
    std::vector<double> inSum(n, 0.0), outSum(n, 0.0), absSum(n, 0.0);
    for (int step = 0; step < T; ++step) {
      for (int i = 0; i < N; ++i) {
        const std::vector<float> g = gctest::normal(n, 31 * step + i, 1.0f + i);
        std::copy(g.begin(), g.end(), bufs[i].begin());  // same buffer: same state
        for (size_t k = 0; k < n; ++k) inSum[k] += bufs[i][k], absSum[k] += fabs(bufs[i][k]);
      }
      auto res = world.run([&](int r) {
        return gradcompAllReduce(bufs[r].data(), bufs[r].data(), n, ncclFloat32, ncclSum,
                                 world.comm(r), nullptr);
      });
      for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
      for (size_t k = 0; k < n; ++k) outSum[k] += bufs[0][k];
    }
    std::vector<double> held(n, 0.0);
    for (int r = 0; r < N; ++r) {
      gradcompComm_t c = world.comm(r);
      ASSERT_EQ(c->states.size(), 1u);
      const gc::BufferState& s = c->states.begin()->second;
      ASSERT_NE(s.residual, nullptr);
      for (size_t k = 0; k < n; ++k) held[k] += s.residual[k];
    }
    for (size_t k = 0; k < n; ++k) {
      // fp32 sums of up to N*T terms, each rounding by 2^-24 of the running
      // magnitude; the residual carries at most a few of them.
      ASSERT_NEAR(outSum[k] + held[k], inSum[k], 1e-5 * (absSum[k] + 1.0))
          << "method " << m << " k=" << k;
    }
  }
}

size_t qsgdBytes(size_t m, int bits, int d) {
  return gc::qsgd::encodedBytes(m, bits, d);
}

// bytesInterNode and bytesOnWire of hier against their formulas, flat
// comms counting by topology, and the inter-node saving of hier over flat.
TEST(HierCpu, InterNodeBytes) {
  const int bits = 4, d = 64;
  const size_t n = 3001;
  const int shapes[][2] = {{4, 2}, {6, 2}, {6, 3}, {8, 4}, {8, 2}};
  for (auto& s : shapes) {
    const int N = s[0], L = s[1], nodes = N / L;
    for (DType t : {DType::F32, DType::BF16}) {
      SCOPED_TRACE(testing::Message() << "N=" << N << " L=" << L << " dtype=" << (int)t);
      gradcompConfig_t cfg = baseConfig(L);
      gctest::CpuWorld world(N, cfg);
      std::vector<Rank> in = makeInputs(N, n, t, 5);
      auto res = world.run([&](int r) {
        return gradcompAllReduce(data(in[r], t), (void*)data(in[r], t), n, nccl(t), ncclSum,
                                 world.comm(r), nullptr);
      });
      for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
      const std::vector<size_t> off = split(n, L, d);
      size_t shardMax = 0;
      for (int j = 0; j < L; ++j) shardMax = std::max(shardMax, off[j + 1] - off[j]);
      for (int r = 0; r < N; ++r) {
        const int j = r % L, node = r / L;
        const size_t len = off[j + 1] - off[j];
        // Across nodes: the flat algorithm on the shard among `nodes` ranks.
        size_t inter = 0;
        if (len && nodes <= 2) {
          inter = (nodes - 1) * qsgdBytes(len, bits, d);
        } else if (len) {
          // Chunk k to its owner, then our own encoded sum to every peer.
          const std::vector<size_t> c = split(len, nodes, d);
          for (int k = 0; k < nodes; ++k) {
            if (k != node) inter += qsgdBytes(c[k + 1] - c[k], bits, d);
          }
          inter += (nodes - 1) * qsgdBytes(c[node + 1] - c[node], bits, d);
        }
        const size_t intra = (L - 1) * shardMax * (4 + (t == DType::F32 ? 4 : 2));
        gradcompStats_t st;
        ASSERT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
        EXPECT_EQ(st.bytesInterNode, inter) << "rank " << r;
        EXPECT_EQ(st.bytesOnWire, inter + intra) << "rank " << r;
      }
    }
  }
  // Flat comms: one node (L = N) sends nothing across nodes; one rank per
  // node (L = 1) sends everything across.
  for (int L : {1, 4}) {
    gctest::CpuWorld world(4, baseConfig(L));
    std::vector<Rank> in = makeInputs(4, n, DType::F32, 9);
    auto res = world.run([&](int r) {
      return gradcompAllReduce(in[r].f32.data(), in[r].f32.data(), n, ncclFloat32, ncclSum,
                               world.comm(r), nullptr);
    });
    for (int r = 0; r < 4; ++r) ASSERT_EQ(res[r], gradcompSuccess);
    gradcompStats_t st;
    ASSERT_EQ(gradcompGetStats(world.comm(1), &st), gradcompSuccess);
    EXPECT_GT(st.bytesOnWire, 0u);
    EXPECT_EQ(st.bytesInterNode, L == 1 ? st.bytesOnWire : 0u) << "L=" << L;
  }
}

// The saving the formula predicts at N = 8, L = 4 (2 nodes), 4-bit: flat
// two-shot sends each of the 4 remote peers its chunk and the reduced chunk
// (8 * E(n/8) ~ E(n)); hier sends one peer its shard (E(n/4)): a factor of
// about 4. Measured from the stats of a moderate call, and from the library's
// own byte formulas at 256 MB.
TEST(HierCpu, InterNodeSavingOverFlat) {
  const int N = 8, L = 4;
  const size_t n = 1 << 18;
  gradcompConfig_t cfg = baseConfig(L);
  cfg.bucketSize = 512;
  gctest::CpuWorld world(N, cfg);
  std::vector<std::vector<float>> x(N);
  for (int i = 0; i < N; ++i) x[i] = gctest::normal(n, i, 1.0f);
  auto res = world.run([&](int r) {
    return gradcompAllReduce(x[r].data(), x[r].data(), n, ncclFloat32, ncclSum, world.comm(r),
                             nullptr);
  });
  for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  const gc::Algorithm& flat = gc::twoShotAlgorithm();
  for (size_t count : {n, (size_t)64 << 20}) {
    double flatBytes = 0, hierBytes = 0;
    for (int r = 0; r < N; ++r) {
      const gradcompComm& c = *world.comm(r);
      flatBytes += flat.interNodeBytes(c, count, cfg.bits);
      if (count == n) {
        gradcompStats_t st;
        ASSERT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
        EXPECT_EQ(st.bytesInterNode, gc::hierInterNodeBytes(c, n, cfg.bits, 0));
        hierBytes += st.bytesInterNode;
      } else {
        hierBytes += gc::hierInterNodeBytes(c, count, cfg.bits, 0);
      }
    }
    const double ratio = flatBytes / hierBytes;
    printf("hier_inter_bytes_ratio_vs_flat_n8_l4 (%zu elements fp32, 4-bit): %.3f\n", count, ratio);
    EXPECT_GE(ratio, 3.5);
    EXPECT_LE(ratio, 4.1);
  }
  // Flat two-shot by this topology: the chunks of the 4 remote peers and 4
  // reduced chunks.
  const gradcompComm& c0 = *world.comm(0);
  const std::vector<size_t> off = split(n, N, cfg.bucketSize);
  size_t expect = 0;
  for (int j = 4; j < 8; ++j) expect += qsgdBytes(off[j + 1] - off[j], 4, cfg.bucketSize);
  expect += 4 * qsgdBytes(off[1] - off[0], 4, cfg.bucketSize);
  EXPECT_EQ(flat.interNodeBytes(c0, n, 4), expect);
}

TEST(HierCpu, BadLocalSize) {
  gradcompComm_t comms[8];
  for (int L : {4, 5, 7, 9}) {
    gradcompConfig_t cfg = baseConfig(L);
    EXPECT_EQ(gradcompCommCreateCpu(6, &cfg, comms), gradcompInvalidArgument) << "L=" << L;
    EXPECT_NE(strstr(gradcompGetLastError(), "GRADCOMP_LOCAL_SIZE"), nullptr)
        << gradcompGetLastError();
    EXPECT_NE(strstr(gradcompGetLastError(), "localSize"), nullptr);
    EXPECT_EQ(comms[0], nullptr);
  }
  gradcompConfig_t cfg = baseConfig(-2);
  EXPECT_EQ(gradcompConfigValidate(&cfg), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "localSize=-2"), nullptr) << gradcompGetLastError();
  EXPECT_EQ(gradcompCommCreateCpu(4, &cfg, comms), gradcompInvalidArgument);

  gradcompConfig_t c;
  {
    gctest::ScopedEnv e("GRADCOMP_LOCAL_SIZE", "0");
    EXPECT_EQ(gradcompConfigFromEnv(&c), gradcompInvalidArgument);
    EXPECT_NE(strstr(gradcompGetLastError(), "GRADCOMP_LOCAL_SIZE=0 is not auto or an integer"),
              nullptr)
        << gradcompGetLastError();
  }
  {
    gctest::ScopedEnv e("GRADCOMP_LOCAL_SIZE", "-1");
    EXPECT_EQ(gradcompConfigFromEnv(&c), gradcompInvalidArgument);
  }
  {
    gctest::ScopedEnv e("GRADCOMP_LOCAL_SIZE", "eight");
    EXPECT_EQ(gradcompConfigFromEnv(&c), gradcompInvalidArgument);
  }
  {
    gctest::ScopedEnv e("GRADCOMP_LOCAL_SIZE", "AUTO");
    ASSERT_EQ(gradcompConfigFromEnv(&c), gradcompSuccess);
    EXPECT_EQ(c.localSize, 0);
  }
  {
    gctest::ScopedEnv e("GRADCOMP_LOCAL_SIZE", "4");
    ASSERT_EQ(gradcompConfigFromEnv(&c), gradcompSuccess);
    EXPECT_EQ(c.localSize, 4);
  }
}

// Host identities: nodes in order of first appearance, local ranks in rank
// order within a host, ranks of a node need not be contiguous; nodes of
// different sizes or an unreadable identity give the flat exchange.
TEST(HierCpu, HostTopology) {
  const char* why = nullptr;
  const std::vector<uint64_t> hosts = {7, 9, 9, 7, 5, 5};  // A B B A C C
  const int node[] = {0, 1, 1, 0, 2, 2}, local[] = {0, 0, 1, 1, 0, 1};
  for (int r = 0; r < 6; ++r) {
    gc::Topology t = gc::hostTopology(r, hosts, &why);
    EXPECT_EQ(why, nullptr);
    EXPECT_EQ(t.nodes, 3);
    EXPECT_EQ(t.localSize, 2);
    EXPECT_EQ(t.node, node[r]);
    EXPECT_EQ(t.localRank, local[r]);
    EXPECT_TRUE(t.hier());
    for (int p = 0; p < 6; ++p) EXPECT_EQ(t.remote(p, r), node[p] != node[r]);
  }
  gc::Topology u = gc::hostTopology(0, {7, 7, 7, 9}, &why);
  ASSERT_NE(why, nullptr);
  EXPECT_NE(strstr(why, "different numbers of ranks"), nullptr);
  EXPECT_FALSE(u.hier());
  EXPECT_TRUE(u.remote(3, 0));  // bytes still counted by the real nodes
  EXPECT_FALSE(u.remote(1, 0));
  gc::Topology z = gc::hostTopology(1, {7, 0, 7, 0}, &why);
  ASSERT_NE(why, nullptr);
  EXPECT_FALSE(z.hier());
  gc::Topology one = gc::hostTopology(2, {7, 7, 7, 7}, &why);
  EXPECT_EQ(why, nullptr);
  EXPECT_EQ(one.nodes, 1);
  EXPECT_FALSE(one.hier());  // one node: flat
  {
    gctest::ScopedEnv e("NCCL_HOSTID", "host-a");
    const uint64_t a = gc::hostIdentity();
    gctest::ScopedEnv f("NCCL_HOSTID", "host-b");
    EXPECT_NE(a, gc::hostIdentity());
    EXPECT_NE(a, 0u);
  }
}

// The host string is NCCL's (getHostHash), so that auto's nodes are the
// nodes NCCL sees: NCCL_HOSTID when set, even empty; else the host name and
// the boot id's first word (containers of two machines may share a name); at
// most 1023 characters.
TEST(HierCpu, HostIdentityIsNcclsHostString) {
  char path[] = "/tmp/gradcomp-boot-id-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const char boot[] = "  6f1c-22ab\nsecond line\n";
  ASSERT_EQ(write(fd, boot, strlen(boot)), (ssize_t)strlen(boot));
  close(fd);
  EXPECT_EQ(gc::ncclHostString(nullptr, "node7", path), "node76f1c-22ab");
  EXPECT_EQ(gc::ncclHostString(nullptr, nullptr, path), "unknown6f1c-22ab");
  EXPECT_EQ(gc::ncclHostString("rack3", "node7", path), "rack3");
  EXPECT_EQ(gc::ncclHostString("", "node7", path), "");
  const std::string longId(2000, 'h'), longName(1020, 'n');
  EXPECT_EQ(gc::ncclHostString(longId.c_str(), "node7", path), longId.substr(0, 1023));
  EXPECT_EQ(gc::ncclHostString(nullptr, longName.c_str(), path), longName + "6f1");
  unlink(path);
  EXPECT_EQ(gc::ncclHostString(nullptr, "node7", path), "node7");  // no boot id file

  // This process: the same rules on NCCL_HOSTID, gethostname and /proc.
  char name[1024] = {0};
  ASSERT_EQ(gethostname(name, sizeof(name) - 1), 0);
  std::string bootId;
  FILE* f = fopen("/proc/sys/kernel/random/boot_id", "r");
  if (f != nullptr) {
    char word[128] = {0};
    if (fscanf(f, "%127s", word) == 1) bootId = word;
    fclose(f);
  }
  uint64_t unset, empty, spelled, named;
  {
    gctest::ScopedEnv e("NCCL_HOSTID", nullptr);
    unset = gc::hostIdentity();
  }
  {
    gctest::ScopedEnv e("NCCL_HOSTID", "");
    empty = gc::hostIdentity();
  }
  {
    gctest::ScopedEnv e("NCCL_HOSTID", (std::string(name) + bootId).c_str());
    spelled = gc::hostIdentity();
  }
  {
    gctest::ScopedEnv e("NCCL_HOSTID", name);
    named = gc::hostIdentity();
  }
  EXPECT_EQ(unset, spelled);
  EXPECT_NE(unset, empty);
  if (!bootId.empty()) EXPECT_NE(unset, named);
  {
    gctest::ScopedEnv e("NCCL_HOSTID", longId.c_str());
    const uint64_t a = gc::hostIdentity();
    gctest::ScopedEnv g("NCCL_HOSTID", (longId.substr(0, 1023) + "x").c_str());
    EXPECT_EQ(a, gc::hostIdentity());
  }
}

// gradcompCommLayout: the layout the comm runs on, from localSize or (socket
// comms) auto's host identities; the in-process world's auto is flat.
TEST(HierCpu, LayoutIsWhatTheCommRuns) {
  const int N = 8;
  const int want[][3] = {{0, 8, 1}, {1, 8, 1}, {2, 4, 2}, {4, 2, 4}, {8, 1, 8}};
  for (const auto& w : want) {
    SCOPED_TRACE(testing::Message() << "localSize=" << w[0]);
    gradcompConfig_t cfg = baseConfig(w[0]);
    gradcompComm_t comms[N];
    ASSERT_EQ(gradcompCommCreateCpu(N, &cfg, comms), gradcompSuccess) << gradcompGetLastError();
    for (int r = 0; r < N; ++r) {
      int nodes = -1, local = -1;
      ASSERT_EQ(gradcompCommLayout(comms[r], &nodes, &local), gradcompSuccess);
      EXPECT_EQ(nodes, w[1]);
      EXPECT_EQ(local, w[2]);
      EXPECT_EQ(comms[r]->topo.hier(), nodes >= 2 && local >= 2);
    }
    int nodes = 0;
    EXPECT_EQ(gradcompCommLayout(comms[0], &nodes, nullptr), gradcompInvalidArgument);
    EXPECT_NE(strstr(gradcompGetLastError(), "localSize=(nil) is NULL"), nullptr)
        << gradcompGetLastError();
    for (gradcompComm_t c : comms) gradcompCommDestroy(c);
  }
  int nodes = 0, local = 0;
  EXPECT_EQ(gradcompCommLayout(nullptr, &nodes, &local), gradcompInvalidArgument);
  // Socket comms of one process share its host identity: auto makes one
  // node of every rank (flat exchange), an explicit 1 a rank per node.
  for (int L : {0, 1}) {
    gradcompConfig_t cfg = baseConfig(L);
    gctest::SocketWorld w(3, cfg);
    for (int r = 0; r < 3; ++r) {
      ASSERT_EQ(gradcompCommLayout(w.comm(r), &nodes, &local), gradcompSuccess)
          << gradcompGetLastError();
      EXPECT_EQ(nodes, L == 0 ? 1 : 3) << "L=" << L;
      EXPECT_EQ(local, L == 0 ? 3 : 1) << "L=" << L;
    }
  }
}

// Checkpoints: the hier state (residual slices, owner residual) saves and
// loads in the existing format, and a restored world continues bit for bit.
TEST(HierCpu, StateSaveLoad) {
  const int N = 6, L = 3;
  const size_t n = 1500;
  gradcompConfig_t cfg = baseConfig(L);
  gctest::CpuWorld a(N, cfg), b(N, cfg);
  std::vector<std::vector<float>> xa(N), xb(N);
  auto step = [&](gctest::CpuWorld& w, std::vector<std::vector<float>>& x, int s) {
    for (int i = 0; i < N; ++i) x[i] = gctest::normal(n, 10 * s + i, 1.0f);
    auto res = w.run([&](int r) {
      return gradcompAllReduceKeyed(x[r].data(), x[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                                    nullptr, 42);
    });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  };
  step(a, xa, 0);
  step(a, xa, 1);
  for (int r = 0; r < N; ++r) {
    size_t bytes = 0;
    ASSERT_EQ(gradcompCommStateSize(a.comm(r), &bytes), gradcompSuccess);
    std::vector<char> buf(bytes);
    ASSERT_EQ(gradcompCommSaveState(a.comm(r), buf.data(), bytes), gradcompSuccess);
    ASSERT_EQ(gradcompCommLoadState(b.comm(r), buf.data(), bytes), gradcompSuccess)
        << gradcompGetLastError();
  }
  step(a, xa, 2);
  step(b, xb, 2);
  for (int r = 0; r < N; ++r) ASSERT_EQ(memcmp(xa[r].data(), xb[r].data(), n * 4), 0);
}

// Which shard a rank's state slices hold depends on its place in the
// hierarchy, not on its rank alone: hosts that group the ranks otherwise
// (ranks 0 and 2 on one host, 1 and 3 on the other) give rank 1 another node
// and local rank at the same local size. The blob records the place; one
// saved at another place is refused, and one from a build that did not
// record it (zeros) loads as before.
TEST(HierCpu, StateOfAnotherPlaceInTheHierarchyIsRefused) {
  const int N = 4;
  const size_t n = 1500;
  gctest::CpuWorld w(N, baseConfig(2));
  std::vector<std::vector<float>> x(N);
  for (int i = 0; i < N; ++i) x[i] = gctest::normal(n, 90 + i, 1.0f);
  auto res = w.run([&](int r) {
    return gradcompAllReduceKeyed(x[r].data(), x[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                                  nullptr, 7);
  });
  for (gradcompResult_t r : res) ASSERT_EQ(r, gradcompSuccess);
  const int r = 1;  // node 0, local rank 1 in blocks of 2
  size_t bytes = 0;
  ASSERT_EQ(gradcompCommStateSize(w.comm(r), &bytes), gradcompSuccess);
  std::vector<uint8_t> blob(bytes);
  ASSERT_EQ(gradcompCommSaveState(w.comm(r), blob.data(), bytes), gradcompSuccess);
  const size_t nodeAt = 48 + 4 * 13, localAt = 48 + 4 * 14;
  int32_t node = -1, local = -1;
  memcpy(&node, blob.data() + nodeAt, 4);
  memcpy(&local, blob.data() + localAt, 4);
  EXPECT_EQ(node, 0 + 1);
  EXPECT_EQ(local, 1 + 1);
  std::vector<uint8_t> moved = blob;  // as saved by node 1, local rank 0
  const int32_t otherNode = 1 + 1, otherLocal = 0 + 1;
  memcpy(moved.data() + nodeAt, &otherNode, 4);
  memcpy(moved.data() + localAt, &otherLocal, 4);
  gctest::reseal(moved);
  EXPECT_EQ(gradcompCommLoadState(w.comm(r), moved.data(), moved.size()), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(),
                   "saved as node 1, local rank 0 of the hierarchy; this comm's rank is node 0, "
                   "local rank 1"),
            nullptr)
      << gradcompGetLastError();
  std::vector<uint8_t> older = blob;
  const int32_t zero = 0;
  memcpy(older.data() + nodeAt, &zero, 4);
  memcpy(older.data() + localAt, &zero, 4);
  gctest::reseal(older);
  EXPECT_EQ(gradcompCommLoadState(w.comm(r), older.data(), older.size()), gradcompSuccess)
      << gradcompGetLastError();
}

// A state saved under one node layout keeps each rank's shard in a slice of
// its arrays, which another layout would read as something else: loading it
// into a comm of another local size is refused, and the comm is unchanged.
TEST(HierCpu, StateOfAnotherNodeLayoutIsRefused) {
  const int N = 4;
  const size_t n = 1500;
  gctest::CpuWorld hier(N, baseConfig(2)), flat(N, baseConfig(1));
  std::vector<std::vector<float>> x(N), y(N);
  for (int i = 0; i < N; ++i) x[i] = y[i] = gctest::normal(n, 70 + i, 1.0f);
  auto call = [&](gctest::CpuWorld& w, std::vector<std::vector<float>>& v) {
    return w.run([&](int r) {
      return gradcompAllReduceKeyed(v[r].data(), v[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                                    nullptr, 7);
    });
  };
  for (gradcompResult_t r : call(hier, x)) ASSERT_EQ(r, gradcompSuccess);
  for (gradcompResult_t r : call(flat, y)) ASSERT_EQ(r, gradcompSuccess);
  for (int r = 0; r < N; ++r) {
    size_t bytes = 0, before = 0, after = 0;
    ASSERT_EQ(gradcompCommStateSize(hier.comm(r), &bytes), gradcompSuccess);
    std::vector<char> buf(bytes);
    ASSERT_EQ(gradcompCommSaveState(hier.comm(r), buf.data(), bytes), gradcompSuccess);
    ASSERT_EQ(gradcompCommStateSize(flat.comm(r), &before), gradcompSuccess);
    std::vector<char> mine(before), mineAfter(before);
    ASSERT_EQ(gradcompCommSaveState(flat.comm(r), mine.data(), before), gradcompSuccess);
    EXPECT_EQ(gradcompCommLoadState(flat.comm(r), buf.data(), bytes), gradcompInvalidArgument);
    EXPECT_NE(strstr(gradcompGetLastError(), "localSize=2"), nullptr) << gradcompGetLastError();
    ASSERT_EQ(gradcompCommStateSize(flat.comm(r), &after), gradcompSuccess);
    ASSERT_EQ(after, before);
    ASSERT_EQ(gradcompCommSaveState(flat.comm(r), mineAfter.data(), after), gradcompSuccess);
    EXPECT_EQ(mine, mineAfter) << "rank " << r;
  }
}

// A transport whose allgather fails, on every rank alike, while armed: the
// node's allgather of the reduced shards, the hierarchy's last exchange.
class FailingAllGatherTransport final : public gctest::ForwardingTransport {
 public:
  using ForwardingTransport::ForwardingTransport;
  bool armed = false;
  gradcompResult_t allGather(const void* send, void* recv, size_t bytes) override {
    if (armed) return gc::setError(gradcompSystemError, "test: the node's allgather failed");
    return ForwardingTransport::allGather(send, recv, bytes);
  }
};

// A sparse call that fails in the node's allgather, after its inter-node
// stage, counts for none: the stats (dense fallbacks, selected and target
// counts) stay as they were, as a flat call's do.
TEST(HierCpu, ACallFailingAfterTheInterNodeStageCountsForNone) {
  const int N = 4, L = 2;
  const size_t n = 4096;
  for (float density : {0.4f, 0.02f}) {  // dense fallback, sparse
    SCOPED_TRACE(testing::Message() << "density=" << density);
    gradcompConfig_t cfg = baseConfig(L);
    cfg.method = gradcompMethodTopk;
    cfg.density = density;
    gctest::CpuWorld w(N, cfg);
    std::vector<FailingAllGatherTransport*> tr(N);
    for (int r = 0; r < N; ++r) {
      gradcompComm_t c = w.comm(r);
      ASSERT_TRUE(c->intra != nullptr);
      tr[r] = new FailingAllGatherTransport(std::move(c->intra));
      c->intra.reset(tr[r]);
    }
    std::vector<std::vector<float>> buf(N);
    auto call = [&](uint64_t seed) {
      for (int r = 0; r < N; ++r) buf[r] = gctest::normal(n, seed + (uint64_t)r);
      return w.run([&](int r) {
        return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                                 nullptr);
      });
    };
    for (gradcompResult_t rc : call(10)) ASSERT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
    std::vector<gradcompStats_t> before(N);
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(gradcompGetStats(w.comm(r), &before[r]), gradcompSuccess);
      tr[r]->armed = true;
    }
    for (gradcompResult_t rc : call(20)) EXPECT_EQ(rc, gradcompSystemError);
    for (int r = 0; r < N; ++r) {
      tr[r]->armed = false;
      gradcompStats_t s;
      ASSERT_EQ(gradcompGetStats(w.comm(r), &s), gradcompSuccess);
      EXPECT_TRUE(gctest::sameStats(s, before[r]))
          << "rank " << r << ": denseFallbacks " << before[r].denseFallbacks << " -> "
          << s.denseFallbacks << ", selectedLast " << before[r].selectedLast << " -> "
          << s.selectedLast << ", targetLast " << before[r].targetLast << " -> " << s.targetLast;
    }
    for (gradcompResult_t rc : call(30)) ASSERT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
    for (int r = 0; r < N; ++r) {
      gradcompStats_t s;
      ASSERT_EQ(gradcompGetStats(w.comm(r), &s), gradcompSuccess);
      EXPECT_EQ(s.callsCompressed, 2u) << r;
      EXPECT_EQ(s.denseFallbacks, density > 0.1f ? 2u : 0u) << r;
    }
  }
}

}  // namespace
