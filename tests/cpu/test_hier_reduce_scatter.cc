// The hierarchical compressed reduce-scatter on the CPU world (nodes of
// localSize consecutive ranks): bit-exact against the serial reference of
// tests/common/ref_hier_rs.h for N = 2..8 and every local size dividing N
// (1 and N are flat: the flat reference), QSGD (fixed and DQ-SGD bits) and
// the sparse methods, fp32/fp16/bf16, Sum/Avg, awkward counts, in place; the
// one-quantization bound; error-feedback conservation; the byte counts
// against their formulas and the inter-node saving over flat (a factor G);
// checkpoints; nodes not contiguous in rank order (split by host topology).
#include <gtest/gtest.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "gradcomp.h"
#include "kernels/qsgd_math.cuh"
#include "plugin/algorithms/algorithms.h"
#include "plugin/collective.h"
#include "plugin/comm.h"
#include "plugin/hier_layout.h"
#include "tests/common/cpu_world.h"
#include "tests/common/ref_hier_rs.h"
#include "tests/common/test_util.h"
#include "tests/common/world_checks.h"

namespace {

using gc::DType;
using namespace gctest::ref;

using gctest::rsResidual;

gradcompConfig_t qsgdConfig(int L) {
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.localSize = L;
  return cfg;
}

bool hierWorld(int N, int L) {
  return L > 1 && L < N;
}

// `steps` calls on the same buffers, fresh inputs each, bit for bit against
// the reference (hierarchical, or flat for L = 1 and L = N), residuals
// included, stats against their formulas, the first call against the
// one-quantization bound.
void checkQsgd(int N, int L, DType t, bool avg, size_t m, int steps, bool inPlace,
               gradcompRounding_t rounding = gradcompRoundStochastic,
               gradcompLevels_t levels = gradcompLevelsUniform) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " L=" << L << " dtype=" << (int)t
                                  << " avg=" << avg << " m=" << m << " inPlace=" << inPlace
                                  << " rounding=" << rounding << " levels=" << levels);
  gradcompConfig_t cfg = qsgdConfig(L);
  cfg.rounding = rounding;
  cfg.levels = levels;
  gctest::CpuWorld world(N, cfg);
  const bool hier = hierWorld(N, L);
  const int k = N / L;
  const size_t n = N * m, esz = t == DType::F32 ? 4 : 2;
  const size_t E = gc::qsgd::encodedBytes(m, cfg.bits, cfg.bucketSize);
  std::vector<Rank> ref = makeInputs(N, n, t, 5 * m + N + L);
  std::vector<Rank> bufs = ref;
  gctest::RsOutputs out(N, m);
  for (int step = 0; step < steps; ++step) {
    std::vector<Rank> in = makeInputs(N, n, t, 1000 * step + m + N + L);
    gctest::loadStep(in, ref, bufs);
    // Bound terms before the reference advances the residuals: for block
    // R(n, l), per bucket, the sum over the other nodes p of max|node sum of
    // p + residual of R(p, l)| (flat: the sum over the peers of their max).
    const size_t nb = (m + cfg.bucketSize - 1) / cfg.bucketSize;
    std::vector<std::vector<double>> sumMax(N, std::vector<double>(nb, 0.0));
    std::vector<std::vector<double>> exact(N, std::vector<double>(m, 0.0));
    std::vector<std::vector<float>> x(N);
    for (int i = 0; i < N; ++i) x[i] = widen(in[i], t, n);
    // The exact block: the inputs plus the residuals kept for it (hier: slot
    // n of local rank l's slice on every node; flat: block j everywhere).
    for (int j = 0; j < N; ++j) {
      for (size_t e = 0; e < m; ++e) {
        for (int i = 0; i < N; ++i) exact[j][e] += x[i][j * m + e];
        if (!hier) {
          for (int i = 0; i < N; ++i) exact[j][e] += in[i].residual[j * m + e];
          continue;
        }
        const int nj = j / L, l = j % L;
        for (int p = 0; p < k; ++p) {
          exact[j][e] += in[p * L + l].residual[(size_t)(l * k + nj) * m + e];
        }
      }
    }
    for (int i = 0; i < N; ++i) {
      const int n0 = i / L, l = i % L;
      for (int p = 0; p < (hier ? k : N); ++p) {
        if (p == (hier ? n0 : i)) continue;
        std::vector<float> v(m);
        const float* res;
        if (hier) {
          const std::vector<float> s = hierRsNodeSums(x, L, p, l, m, blockRanks(N));
          std::copy(s.begin() + n0 * m, s.begin() + (n0 + 1) * m, v.begin());
          res = in[p * L + l].residual.data() + (size_t)(l * k + n0) * m;
        } else {
          std::copy(x[p].begin() + i * m, x[p].begin() + (i + 1) * m, v.begin());
          res = in[p].residual.data() + i * m;
        }
        gctest::addBucketMax(v.data(), res, m, cfg.bucketSize, sumMax[i]);
      }
    }
    auto res = out.run(world, bufs, t, m, avg, inPlace);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    const std::vector<std::vector<float>> expect =
        hier ? refHierReduceScatter(ref = in, t, m, cfg, cfg.bits, step, avg, L)
             : refReduceScatter(ref = in, t, m, cfg, cfg.bits, step, avg);
    for (int r = 0; r < N; ++r) {
      const std::vector<float> got = out.read(bufs[r], r, t, m, inPlace);
      ASSERT_EQ(memcmp(got.data(), expect[r].data(), m * 4), 0) << "rank " << r << " step " << step;
      const float* rs = rsResidual(world.comm(r));
      ASSERT_NE(rs, nullptr);
      ASSERT_EQ(memcmp(rs, ref[r].residual.data(), n * 4), 0) << "residual of rank " << r;
      // One quantization: per element, the sum over the encoders of their
      // bucket max / s, plus the output type's rounding.
      const double s = gctest::boundLevels(cfg);
      for (size_t e = 0; e < m; ++e) {
        const double ex = exact[r][e], bound = sumMax[r][e / cfg.bucketSize] / s;
        const double err = fabs((double)got[e] * (avg ? N : 1) - ex);
        ASSERT_LE(err, gctest::boundWithSlack(bound, ex, t, 1e-5)) << "e=" << e;
      }
      gradcompStats_t st;
      ASSERT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
      const uint64_t calls = step + 1;
      EXPECT_EQ(st.callsReduceScatter, calls);
      EXPECT_EQ(st.callsCompressed, calls);
      EXPECT_EQ(st.bytesIn, calls * n * esz);
      // Hier: NCCL's ring reduce-scatter of k*m floats inside the node, then
      // (k-1) encoded blocks across nodes. Flat: (N-1) blocks, of which the
      // ones to the N-L ranks on other nodes (L = N: one node) cross.
      const uint64_t wire = hier ? (L - 1) * k * m * 4 + (k - 1) * E : (N - 1) * E;
      const uint64_t inter = hier ? (k - 1) * E : (N - L) * E;
      EXPECT_EQ(st.bytesOnWire, calls * wire) << "rank " << r;
      EXPECT_EQ(st.bytesInterNode, calls * inter) << "rank " << r;
    }
  }
}

std::vector<int> divisors(int N) {
  std::vector<int> d;
  for (int L = 1; L <= N; ++L) {
    if (N % L == 0) d.push_back(L);
  }
  return d;
}

TEST(HierReduceScatterCpu, QsgdEveryLocalSizeTypeOpCount) {
  for (int N = 2; N <= 8; ++N)
    for (int L : divisors(N))
      for (DType t : {DType::F32, DType::F16, DType::BF16})
        for (bool avg : {false, true})
          for (size_t m : {(size_t)1, (size_t)7, (size_t)64, (size_t)517})
            checkQsgd(N, L, t, avg, m, 2, false);
}

// gradcomp_perf tells a hierarchical reduce-scatter row from a flat one by
// gc::hierLayout of the comm's public layout (gradcompCommLayout): that is
// the library's own choice on every layout of up to 8 ranks.
TEST(HierReduceScatterCpu, PublicLayoutRuleIsTheLibrarysChoice) {
  for (int N = 1; N <= 8; ++N) {
    for (int L : divisors(N)) {
      gradcompConfig_t cfg;
      ASSERT_EQ(gradcompConfigInit(&cfg), gradcompSuccess);
      cfg.localSize = L;
      gctest::CpuWorld world(N, cfg);
      for (int r = 0; r < N; ++r) {
        int nodes = 0, perNode = 0;
        ASSERT_EQ(gradcompCommLayout(world.comm(r), &nodes, &perNode), gradcompSuccess);
        EXPECT_EQ(gc::hierLayout(nodes, perNode), gc::useHierReduceScatter(*world.comm(r)))
            << "N=" << N << " L=" << L << " rank " << r << ": " << nodes << " nodes of " << perNode;
      }
    }
  }
}

TEST(HierReduceScatterCpu, QsgdInPlace) {
  for (int N : {4, 6, 8})
    for (int L : {2, N / 2})
      for (DType t : {DType::F32, DType::BF16})
        for (bool avg : {false, true}) checkQsgd(N, L, t, avg, 517, 3, true);
}

TEST(HierReduceScatterCpu, NearestRounding) {
  for (int N : {4, 6, 8})
    for (int L : {2, N / 2})
      for (DType t : {DType::F32, DType::BF16})
        for (size_t m : {(size_t)7, (size_t)517})
          checkQsgd(N, L, t, N == 6, m, 3, false, gradcompRoundNearest);
}

TEST(HierReduceScatterCpu, SquareLevels) {
  for (int N : {4, 6})
    for (int L : {2, N / 2})
      for (size_t m : {(size_t)7, (size_t)517}) {
        checkQsgd(N, L, DType::F32, N == 6, m, 3, false, gradcompRoundStochastic,
                  gradcompLevelsSquare);
        checkQsgd(N, L, DType::BF16, N == 4, m, 2, true, gradcompRoundNearest,
                  gradcompLevelsSquare);
      }
}

// DQ-SGD: the bits are chosen by the comm as for the flat reduce-scatter
// (the same on every rank); each call then matches the reference at the
// bits the comm reports.
TEST(HierReduceScatterCpu, DynamicBitsMatchReference) {
  const int N = 8, L = 2;
  const size_t m = 1000, n = N * m;
  gradcompConfig_t cfg = qsgdConfig(L);
  cfg.bitsMode = gradcompBitsDynamic;
  cfg.bitsMin = 2;
  cfg.bitsMax = 8;
  cfg.varianceTarget = 0.02f;
  gctest::CpuWorld world(N, cfg);
  std::vector<Rank> ref = makeInputs(N, n, DType::F32, 3);
  std::vector<std::vector<float>> out(N, std::vector<float>(m));
  std::vector<int> seen;
  for (int step = 0; step < 6; ++step) {
    std::vector<Rank> in = makeInputs(N, n, DType::F32, 77 + step);
    for (int i = 0; i < N; ++i) {
      in[i].residual = ref[i].residual;
    }
    auto res = world.run([&](int r) {
      return gradcompReduceScatter(in[r].f32.data(), out[r].data(), m, ncclFloat32, ncclSum,
                                   world.comm(r), nullptr);
    });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    gradcompStats_t st0;
    ASSERT_EQ(gradcompGetStats(world.comm(0), &st0), gradcompSuccess);
    const int bits = st0.bitsLast;
    ASSERT_GE(bits, cfg.bitsMin);
    ASSERT_LE(bits, cfg.bitsMax);
    seen.push_back(bits);
    const auto expect = refHierReduceScatter(ref = in, DType::F32, m, cfg, bits, step, false, L);
    for (int r = 0; r < N; ++r) {
      gradcompStats_t st;
      ASSERT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
      EXPECT_EQ(st.bitsLast, bits) << "rank " << r;
      ASSERT_EQ(memcmp(out[r].data(), expect[r].data(), m * 4), 0)
          << "rank " << r << " step " << step;
    }
  }
  // The statistics moved the width off the configured 4 at least once.
  EXPECT_NE(std::count(seen.begin(), seen.end(), cfg.bits), (long)seen.size());
}

void checkSparse(const gradcompConfig_t& base, int N, int L, DType t, bool avg, size_t m,
                 int steps) {
  SCOPED_TRACE(testing::Message() << "method=" << base.method << " select=" << base.select
                                  << " N=" << N << " L=" << L << " dtype=" << (int)t
                                  << " avg=" << avg << " m=" << m);
  gradcompConfig_t cfg = base;
  cfg.localSize = L;
  gctest::CpuWorld world(N, cfg);
  const int k = N / L;
  const size_t n = N * m;
  std::vector<std::vector<SparseState>> st;
  gctest::RsOutputs out(N, m);
  for (int step = 0; step < steps; ++step) {
    std::vector<Rank> in = makeInputs(N, n, t, 31 * step + m + N);
    std::vector<std::vector<float>> g(N);
    for (int i = 0; i < N; ++i) g[i] = widen(in[i], t, n);
    auto res = out.run(world, in, t, m, avg, false);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    const auto expect = refHierSparseReduceScatter(cfg, t, avg, step, g, st, L);
    for (int r = 0; r < N; ++r) {
      const std::vector<float> got = out.read(in[r], r, t, m, false);
      ASSERT_EQ(memcmp(got.data(), expect[r].data(), m * 4), 0) << "rank " << r << " step " << step;
      const std::vector<float>& v = st[r % L][r / L].v;
      if (!v.empty()) {
        const float* rs = rsResidual(world.comm(r));
        ASSERT_NE(rs, nullptr);
        ASSERT_EQ(memcmp(rs + (size_t)(r % L) * k * m, v.data(), k * m * 4), 0)
            << "residual slice of rank " << r;
      }
    }
  }
}

TEST(HierReduceScatterCpu, TopkThresholdAndExact) {
  for (gradcompSelect_t sel : {gradcompSelectThreshold, gradcompSelectExact}) {
    gradcompConfig_t cfg = gctest::sparseTestConfig(gradcompMethodTopk);
    cfg.select = sel;
    for (int N : {4, 6, 8})
      for (int L : {2, N / 2})
        for (DType t : {DType::F32, DType::BF16})
          for (size_t m : {(size_t)1, (size_t)2051}) checkSparse(cfg, N, L, t, N == 6, m, 3);
  }
}

TEST(HierReduceScatterCpu, Dgc) {
  gradcompConfig_t cfg = gctest::sparseTestConfig(gradcompMethodDgc);
  cfg.density = 0.01f;
  cfg.clipNorm = 5.0f;
  cfg.momentumMasking = 1;
  cfg.warmupSteps = 4;
  for (int N : {4, 6})
    for (DType t : {DType::F32, DType::F16}) checkSparse(cfg, N, 2, t, t == DType::F16, 3000, 6);
}

TEST(HierReduceScatterCpu, Randk) {
  gradcompConfig_t cfg = gctest::sparseTestConfig(gradcompMethodRandk);
  for (int N : {4, 8})
    for (DType t : {DType::F32, DType::BF16})
      for (size_t m : {(size_t)1, (size_t)999}) checkSparse(cfg, N, N / 2, t, N == 4, m, 3);
}

// Error feedback loses nothing: for block b = R(n, l), the output plus the
// residuals kept for it (slot n of local rank l's slice, on every node)
// equals the inputs plus the residuals before, up to the fp32 rounding of
// the node sums, the residual update and the rank-order sum.
TEST(HierReduceScatterCpu, ErrorFeedbackConservesTheSum) {
  for (int L : {2, 4}) {
    const int N = 8, k = N / L;
    const size_t m = 1000, n = N * m;
    gctest::CpuWorld world(N, qsgdConfig(L));
    std::vector<std::vector<float>> g(N), out(N, std::vector<float>(m)),
        prev(N, std::vector<float>(n, 0.0f));
    for (int step = 0; step < 5; ++step) {
      for (int i = 0; i < N; ++i) g[i] = gctest::normal(n, 100 * step + i, 1.0f + i);
      auto res = gctest::reduceScatterSum(world, g, out, m);
      for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
      for (int b = 0; b < N; ++b) {
        const int nb = b / L, l = b % L;
        for (size_t e = 0; e < m; ++e) {
          double in = 0, kept = out[b][e], mag = fabs(out[b][e]);
          for (int i = 0; i < N; ++i) {
            in += g[i][b * m + e];
            mag += fabs(g[i][b * m + e]);
          }
          for (int p = 0; p < k; ++p) {
            const size_t at = (size_t)(l * k + nb) * m + e;
            const float* r = rsResidual(world.comm(p * L + l));
            in += prev[p * L + l][at];
            kept += r[at];
            mag += fabs(prev[p * L + l][at]) + fabs(r[at]);
          }
          ASSERT_LE(fabs(kept - in), 4 * N * 6e-8 * mag)
              << "L " << L << " step " << step << " block " << b << " e " << e;
        }
      }
      for (int i = 0; i < N; ++i) {
        const float* r = rsResidual(world.comm(i));
        prev[i].assign(r, r + n);
      }
    }
  }
}

// Inter-node bytes: flat sends (N-G) blocks to other nodes, hier (k-1) =
// (N-G)/G, for QSGD and the sparse methods alike (same block size).
TEST(HierReduceScatterCpu, InterNodeSavingIsTheLocalSize) {
  const int N = 8;
  const size_t m = 4096;
  for (gradcompMethod_t method : {gradcompMethodQsgd, gradcompMethodTopk}) {
    for (int G : {2, 4}) {
      uint64_t bytes[2] = {0, 0};
      for (int hier = 0; hier < 2; ++hier) {
        gradcompConfig_t cfg = method == gradcompMethodQsgd
                                   ? qsgdConfig(1)
                                   : gctest::sparseTestConfig(gradcompMethodTopk);
        cfg.localSize = G;
        gctest::CpuWorld world(N, cfg);
        if (!hier) {
          // The same nodes, exchanged flat: the child comms are dropped.
          for (int r = 0; r < N; ++r) world.comm(r)->intra.reset();
        }
        std::vector<std::vector<float>> g(N), out(N, std::vector<float>(m));
        for (int i = 0; i < N; ++i) g[i] = gctest::normal(N * m, 11 + i, 1.0f);
        auto res = gctest::reduceScatterSum(world, g, out, m);
        for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
        gradcompStats_t st;
        ASSERT_EQ(gradcompGetStats(world.comm(0), &st), gradcompSuccess);
        bytes[hier] = st.bytesInterNode;
      }
      EXPECT_GT(bytes[1], 0u);
      EXPECT_EQ(bytes[0], (uint64_t)G * bytes[1]) << "method " << method << " G " << G;
    }
  }
}

// Checkpoints keep their format: the residual slices saved after two calls
// and loaded into fresh hierarchical comms (keyed state, other buffers) make
// the third call bit for bit the same.
TEST(HierReduceScatterCpu, SavedStateReproducesTheNextCall) {
  for (gradcompMethod_t method : {gradcompMethodQsgd, gradcompMethodDgc}) {
    SCOPED_TRACE(testing::Message() << "method=" << method);
    gradcompConfig_t cfg = qsgdConfig(2);
    cfg.method = method;
    cfg.density = 0.05f;
    const int N = 6;
    const size_t m = 600, n = N * m;
    gctest::CpuWorld a(N, cfg), b(N, cfg);
    std::vector<std::vector<float>> outA(N, std::vector<float>(m)), outB = outA;
    std::vector<std::vector<char>> saved(N);
    auto call = [&](gctest::CpuWorld& w, std::vector<std::vector<float>>& g,
                    std::vector<std::vector<float>>& out, bool load) {
      auto res = w.run([&](int r) {
        if (load) {
          gradcompResult_t x = gradcompCommLoadState(w.comm(r), saved[r].data(), saved[r].size());
          if (x != gradcompSuccess) return x;
        }
        return gradcompReduceScatterKeyed(g[r].data(), out[r].data(), m, ncclFloat32, ncclAvg,
                                          w.comm(r), nullptr, 5);
      });
      for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    };
    for (int step = 0; step < 3; ++step) {
      std::vector<std::vector<float>> g(N);
      for (int i = 0; i < N; ++i) g[i] = gctest::normal(n, 10 * step + i);
      if (step == 2) call(b, g, outB, true);
      call(a, g, outA, false);
      if (step == 1) {
        for (int r = 0; r < N; ++r) {
          size_t bytes = 0;
          ASSERT_EQ(gradcompCommStateSize(a.comm(r), &bytes), gradcompSuccess);
          saved[r].resize(bytes);
          ASSERT_EQ(gradcompCommSaveState(a.comm(r), saved[r].data(), bytes), gradcompSuccess);
        }
      }
    }
    for (int r = 0; r < N; ++r) {
      EXPECT_EQ(memcmp(outA[r].data(), outB[r].data(), m * 4), 0) << "rank " << r;
    }
  }
}

// Ranks that disagree on recvcount (both compressing, or one passing
// through) all fail before any sub-communicator is used: no hang.
TEST(HierReduceScatterCpu, RanksDisagreeingOnRecvcountAllFail) {
  for (gradcompMethod_t method : {gradcompMethodQsgd, gradcompMethodTopk}) {
    SCOPED_TRACE(testing::Message() << "method=" << method);
    gradcompConfig_t cfg = qsgdConfig(2);
    cfg.method = method;
    gctest::expectRecvcountDisagreementFails(cfg, 4, 3);
  }
}

// Nodes not contiguous in rank order (hosts A B A B, and A B B A C C): the
// permutation follows the topology's mapping, bit-exact against the
// reference given that mapping; residual slices included. Also pipelined
// (pieces of two buckets of the middle stage's blocks: the in-node stage
// piece by piece), where QSGD runs 6 pieces and top-k one.
TEST(HierReduceScatterCpu, NodesNotContiguousInRankOrder) {
  struct Case {
    std::vector<uint64_t> hosts;
    std::vector<int> at;  // at[n*L + l]: rank of local rank l on node n
  } cases[] = {{{7, 9, 7, 9}, {0, 2, 1, 3}}, {{7, 9, 9, 7, 5, 5}, {0, 3, 1, 2, 4, 5}}};
  for (const Case& cs : cases) {
    for (gradcompMethod_t method : {gradcompMethodQsgd, gradcompMethodTopk})
      for (bool piped : {false, true}) {
        const int N = (int)cs.hosts.size(), L = 2, k = N / L;
        SCOPED_TRACE(testing::Message() << "N=" << N << " method=" << method << " piped=" << piped);
        gradcompConfig_t cfg = qsgdConfig(1);
        cfg.method = method;
        cfg.density = 0.05f;
        cfg.pipelineBytes = piped ? 128 * 4 * k : 0;
        gctest::CpuWorld world(N, cfg);
        std::vector<gc::Topology> topos(N);
        const char* why = nullptr;
        for (int r = 0; r < N; ++r) topos[r] = gc::hostTopology(r, cs.hosts, &why);
        ASSERT_EQ(why, nullptr);
        std::vector<gradcompComm_t> comms(N);
        for (int r = 0; r < N; ++r) comms[r] = world.comm(r);
        gc::splitCpuWorld(comms.data(), topos);
        const size_t m = 700, n = N * m;
        std::vector<Rank> ref = makeInputs(N, n, DType::BF16, 9);
        std::vector<std::vector<SparseState>> st;
        std::vector<std::vector<uint16_t>> out(N, std::vector<uint16_t>(m));
        for (int step = 0; step < 3; ++step) {
          std::vector<Rank> in = makeInputs(N, n, DType::BF16, 50 + step);
          std::vector<std::vector<float>> g(N);
          for (int i = 0; i < N; ++i) {
            in[i].residual = ref[i].residual;
            g[i] = widen(in[i], DType::BF16, n);
          }
          auto res = world.run([&](int r) {
            return gradcompReduceScatter(in[r].half.data(), out[r].data(), m, ncclBfloat16, ncclAvg,
                                         world.comm(r), nullptr);
          });
          for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
          const auto expect =
              method == gradcompMethodQsgd
                  ? refHierReduceScatter(ref = in, DType::BF16, m, cfg, cfg.bits, step, true, L,
                                         cs.at)
                  : refHierSparseReduceScatter(cfg, DType::BF16, true, step, g, st, L, cs.at);
          for (int r = 0; r < N; ++r) {
            std::vector<float> got(m);
            for (size_t e = 0; e < m; ++e) got[e] = gc::loadAsFloat(out[r].data(), DType::BF16, e);
            ASSERT_EQ(memcmp(got.data(), expect[r].data(), m * 4), 0) << "rank " << r;
            const float* rs = rsResidual(world.comm(r));
            ASSERT_NE(rs, nullptr);
            gradcompStats_t stats;
            ASSERT_EQ(gradcompGetStats(world.comm(r), &stats), gradcompSuccess);
            const bool qsgd = method == gradcompMethodQsgd;
            EXPECT_EQ(stats.piecesLast, piped && qsgd ? 6u : 1u) << "rank " << r;  // 700 in 128s
            if (qsgd) {
              ASSERT_EQ(memcmp(rs, ref[r].residual.data(), n * 4), 0) << "residual of rank " << r;
            } else {
              const int l = topos[r].localRank;
              ASSERT_EQ(memcmp(rs + (size_t)l * k * m, st[l][topos[r].node].v.data(), k * m * 4), 0)
                  << "residual slice of rank " << r;
            }
          }
        }
      }
  }
}

// The permutation follows the topology's mapping, not rank = node*G + local.
TEST(HierReduceScatterCpu, RankAtFollowsHostTopology) {
  const char* why = nullptr;
  const std::vector<uint64_t> hosts = {7, 9, 9, 7, 5, 5};  // A B B A C C
  const int at[3][2] = {{0, 3}, {1, 2}, {4, 5}};
  for (int r = 0; r < 6; ++r) {
    const gc::Topology t = gc::hostTopology(r, hosts, &why);
    for (int n = 0; n < 3; ++n)
      for (int l = 0; l < 2; ++l) EXPECT_EQ(t.rankAt(n, l), at[n][l]);
  }
  const gc::Topology b = gc::blockTopology(5, 8, 4);
  EXPECT_EQ(b.rankAt(1, 1), 5);
}

// A 1-bit QSGD world of one rank per host id, split into nodes by host as
// NCCL's host hashes would split it.
std::unique_ptr<gctest::CpuWorld> hostWorld(const std::vector<uint64_t>& hosts) {
  const int N = (int)hosts.size();
  std::unique_ptr<gctest::CpuWorld> w(new gctest::CpuWorld(N, qsgdConfig(1)));
  std::vector<gc::Topology> topos(N);
  const char* why = nullptr;
  for (int r = 0; r < N; ++r) topos[r] = gc::hostTopology(r, hosts, &why);
  std::vector<gradcompComm_t> comms(N);
  for (int r = 0; r < N; ++r) comms[r] = w->comm(r);
  gc::splitCpuWorld(comms.data(), topos);
  return w;
}

// Rank r's blob of the ranks-interleaved hierarchy ({7, 9, 7, 9}) loaded on
// the grouped one ({7, 7, 9, 9}): refused, naming both inter-node groups on
// rank 0, and the comm's state unchanged.
void expectInterleavingRefused(gradcompComm_t aabb, const std::vector<uint8_t>& blob, int r) {
  const std::vector<uint8_t> before = gctest::savedState(aabb);
  EXPECT_EQ(gradcompCommLoadState(aabb, blob.data(), blob.size()), gradcompInvalidArgument)
      << "rank " << r;
  if (r == 0) {
    EXPECT_NE(strstr(gradcompGetLastError(),
                     "inter-node group (local rank 0 on every node) was ranks 0,1; on this comm "
                     "it is ranks 0,2"),
              nullptr)
        << gradcompGetLastError();
  }
  EXPECT_EQ(gctest::savedState(aabb), before) << "rank " << r;
}

// A reduce-scatter state's slot l*k + j is input block R(j, l): it depends on
// which ranks form this rank's inter-node group, not only on its node and
// local rank. Hosts A B A B and A A B B put ranks 0 and 3 at the same node
// and local rank but give them other groups (0: ranks 0,1 against 0,2): the
// blob records the group, and a comm whose group differs refuses it on every
// rank, leaving the comm unchanged; the same layout loads it.
TEST(HierReduceScatterCpu, StateOfAnotherInterleavingIsRefused) {
  const int N = 4;
  const size_t m = 300;
  auto abab = hostWorld({7, 9, 7, 9}), aabb = hostWorld({7, 7, 9, 9}),
       again = hostWorld({7, 9, 7, 9});
  std::vector<std::vector<float>> g(N), out(N, std::vector<float>(m));
  for (int i = 0; i < N; ++i) g[i] = gctest::normal(N * m, 40 + i, 1.0f);
  auto res = abab->run([&](int r) {
    return gradcompReduceScatterKeyed(g[r].data(), out[r].data(), m, ncclFloat32, ncclSum,
                                      abab->comm(r), nullptr, 9);
  });
  for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  for (int r = 0; r < N; ++r) {
    const std::vector<uint8_t> blob = gctest::savedState(abab->comm(r));
    expectInterleavingRefused(aabb->comm(r), blob, r);
    EXPECT_EQ(gradcompCommLoadState(again->comm(r), blob.data(), blob.size()), gradcompSuccess)
        << "rank " << r << ": " << gradcompGetLastError();
    EXPECT_EQ(gctest::savedState(again->comm(r)), blob) << "rank " << r;
  }
}

// The inter-node group record is written for every reduce-scatter state,
// keyed by the caller or by address (an unkeyed call's slots land on the
// blocks alike), and read whole: a record naming more nodes than the comm
// has (rankAt answers -1 past the last node), or with a padding word that is
// not 0 (an odd count of nodes), is refused, leaving the comm unchanged.
TEST(HierReduceScatterCpu, GroupRecordOfUnkeyedStatesIsWrittenAndReadWhole) {
  const size_t m = 300;
  auto reduceScatter = [&](gctest::CpuWorld& w, bool keyed) {
    const int N = w.size();
    std::vector<std::vector<float>> g(N), out(N, std::vector<float>(m));
    for (int i = 0; i < N; ++i) g[i] = gctest::normal(N * m, 60 + i, 1.0f);
    auto res = w.run([&](int r) {
      return keyed ? gradcompReduceScatterKeyed(g[r].data(), out[r].data(), m, ncclFloat32, ncclSum,
                                                w.comm(r), nullptr, 9)
                   : gradcompReduceScatter(g[r].data(), out[r].data(), m, ncclFloat32, ncclSum,
                                           w.comm(r), nullptr);
    });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  };
  auto abab = hostWorld({7, 9, 7, 9}), aabb = hostWorld({7, 7, 9, 9});
  reduceScatter(*abab, false);
  for (int r = 0; r < 4; ++r) {
    std::vector<uint8_t> blob = gctest::savedState(abab->comm(r));
    expectInterleavingRefused(aabb->comm(r), blob, r);
    // The group record (the last, 32 bytes for 2 nodes) made to name 3 nodes.
    ASSERT_GT(blob.size(), 32u);
    uint32_t tag = 0;
    int32_t ranks[2];
    memcpy(&tag, blob.data() + blob.size() - 32, 4);
    ASSERT_EQ(tag, 4u) << "rank " << r;
    memcpy(ranks, blob.data() + blob.size() - 8, 8);
    blob.resize(blob.size() - 32);
    auto put = [&blob](const void* p, size_t n) {
      blob.insert(blob.end(), (const uint8_t*)p, (const uint8_t*)p + n);
    };
    const uint32_t head[2] = {4, 0}, kz[2] = {3, 0};
    const uint64_t recBytes = 40;
    const int32_t named[4] = {ranks[0], ranks[1], -1, 0};
    put(head, 8), put(&recBytes, 8), put(kz, 8), put(named, 16);
    const uint64_t total = blob.size();
    memcpy(blob.data() + 16, &total, 8);
    gctest::reseal(blob);
    const std::vector<uint8_t> mine = gctest::savedState(abab->comm(r));
    EXPECT_EQ(gradcompCommLoadState(abab->comm(r), blob.data(), blob.size()),
              gradcompInvalidArgument)
        << "rank " << r;
    EXPECT_NE(strstr(gradcompGetLastError(),
                     "saved with an inter-node group of 3 ranks; this comm's has 2 (hierarchical)"),
              nullptr)
        << gradcompGetLastError();
    EXPECT_EQ(gctest::savedState(abab->comm(r)), mine) << "rank " << r;
  }
  // Three nodes of 2: the record ends with a padding word.
  auto three = hostWorld({7, 9, 5, 7, 9, 5});
  reduceScatter(*three, true);
  for (int r = 0; r < 6; ++r) {
    std::vector<uint8_t> blob = gctest::savedState(three->comm(r));
    ASSERT_EQ(gradcompCommLoadState(three->comm(r), blob.data(), blob.size()), gradcompSuccess)
        << "rank " << r << ": " << gradcompGetLastError();
    int32_t pad = -1;
    memcpy(&pad, blob.data() + blob.size() - 4, 4);
    ASSERT_EQ(pad, 0) << "rank " << r;
    pad = 1;
    memcpy(blob.data() + blob.size() - 4, &pad, 4);
    gctest::reseal(blob);
    const std::vector<uint8_t> mine = gctest::savedState(three->comm(r));
    EXPECT_EQ(gradcompCommLoadState(three->comm(r), blob.data(), blob.size()),
              gradcompInvalidArgument)
        << "rank " << r;
    EXPECT_NE(strstr(gradcompGetLastError(), "has padding 1 (expected 0)"), nullptr)
        << gradcompGetLastError();
    EXPECT_EQ(gctest::savedState(three->comm(r)), mine) << "rank " << r;
  }
}

// rankAt answers from a table: the hierarchical reduce-scatter asks for every
// rank's place at every call (and pipelined, at every piece), so a scan of
// the ranks per answer made each call quadratic in them (65536 ranks of 8
// per node: seconds of host time per call). The table is built with the
// topology, for host and block layouts, and every answer matches the scan.
TEST(HierReduceScatterCpu, RankAtIsATableLookUp) {
  const char* why = nullptr;
  auto scanned = [](const gc::Topology& t, int node, int local) {
    for (int j = 0; j < (int)t.nodeOf.size(); ++j) {
      if (t.nodeOf[j] == node && local-- == 0) return j;
    }
    return -1;
  };
  const std::vector<uint64_t> hosts = {7, 9, 9, 7, 5, 5, 9, 5, 7};  // 3 nodes of 3
  for (int r = 0; r < 9; ++r) {
    const gc::Topology t = gc::hostTopology(r, hosts, &why);
    ASSERT_EQ(why, nullptr);
    ASSERT_EQ(t.ranks.size(), 9u);
    for (int n = 0; n < 3; ++n)
      for (int l = 0; l < 3; ++l)
        EXPECT_EQ(t.rankAt(n, l), scanned(t, n, l)) << "node " << n << " local " << l;
  }
  // Nodes of different sizes run flat: no table.
  EXPECT_TRUE(gc::hostTopology(0, {7, 7, 9}, &why).ranks.empty());
  const int N = 4096, G = 8, k = N / G;
  const gc::Topology b = gc::blockTopology(5, N, G);
  ASSERT_EQ(b.ranks.size(), (size_t)N);
  for (int j = 0; j < G; ++j)
    for (int n = 0; n < k; ++n) ASSERT_EQ(b.rankAt(n, j), n * G + j) << "node " << n;
  for (int n = 0; n < k; n += 37) EXPECT_EQ(b.rankAt(n, 3), scanned(b, n, 3)) << "node " << n;
  // The table is for nodes of localSize ranks each: where a node holds more
  // (nodeOf from elsewhere than hostTopology's check), its last ranks would
  // land in the next node's places, or past the table; none is made.
  gc::Topology uneven;
  uneven.nodes = 2, uneven.localSize = 2, uneven.nodeOf = {0, 0, 0, 1};
  gc::indexRanks(&uneven);
  EXPECT_TRUE(uneven.ranks.empty());
}

}  // namespace
