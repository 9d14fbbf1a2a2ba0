// gradcompReduceScatter on the CPU world: bit-exact against the serial
// reference of tests/common/ref_rs.h for QSGD (fixed and DQ-SGD bits) and the
// sparse methods, the one-quantization error bound, error-feedback
// conservation, convergence of the mean, the in-place form, pass-through and
// bad input.
#include <gtest/gtest.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "gradcomp.h"
#include "kernels/qsgd_math.cuh"
#include "plugin/codecs/bits_policy.h"
#include "plugin/collective.h"
#include "plugin/comm.h"
#include "tests/common/cpu_world.h"
#include "tests/common/ref_rs.h"
#include "tests/common/test_util.h"
#include "tests/common/world_checks.h"

namespace {

using gc::DType;
using namespace gctest::ref;

using gctest::rsResidual;

// `steps` calls with fresh inputs each; each checked bit for bit against the
// reference (out of place, or in place at sendbuff + r*m), and the first
// against the one-quantization bound.
void checkQsgd(int N, DType t, bool avg, size_t m, int steps, bool inPlace,
               gradcompRounding_t rounding = gradcompRoundStochastic,
               gradcompLevels_t levels = gradcompLevelsUniform) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " dtype=" << (int)t << " avg=" << avg
                                  << " m=" << m << " inPlace=" << inPlace
                                  << " rounding=" << rounding << " levels=" << levels);
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.rounding = rounding;
  cfg.levels = levels;
  gctest::CpuWorld world(N, cfg);
  const size_t n = N * m;
  std::vector<Rank> ref = makeInputs(N, n, t, 7 * m + N);
  std::vector<Rank> bufs = ref;  // the same buffers every call: the residual follows them
  gctest::RsOutputs out(N, m);
  for (int step = 0; step < steps; ++step) {
    std::vector<Rank> in = makeInputs(N, n, t, 1000 * step + m + N);
    gctest::loadStep(in, ref, bufs);
    // Bound terms before the reference advances the residuals: per block
    // bucket, the sum over the peers of max|x + residual|.
    const size_t nb = (m + cfg.bucketSize - 1) / cfg.bucketSize;
    std::vector<std::vector<double>> sumMax(N, std::vector<double>(nb, 0.0));
    std::vector<std::vector<double>> exact(N, std::vector<double>(m, 0.0));
    for (int i = 0; i < N; ++i) {
      auto x = widen(in[i], t, n);
      for (int j = 0; j < N; ++j) {
        for (size_t k = 0; k < m; ++k) exact[j][k] += x[j * m + k];
        if (i == j) continue;
        gctest::addBucketMax(x.data() + j * m, in[i].residual.data() + j * m, m, cfg.bucketSize,
                             sumMax[j]);
      }
    }
    auto res = out.run(world, bufs, t, m, avg, inPlace);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();

    std::vector<std::vector<float>> expect;
    if (N == 1) {
      expect = {finish(widen(in[0], t, n), t, 1.0f)};  // one rank: NCCL's reduce-scatter
      ref = in;
    } else {
      expect = refReduceScatter(ref = in, t, m, cfg, cfg.bits, step, avg);
    }
    for (int r = 0; r < N; ++r) {
      const std::vector<float> got = out.read(bufs[r], r, t, m, inPlace);
      ASSERT_EQ(memcmp(got.data(), expect[r].data(), m * 4), 0) << "rank " << r << " step " << step;
      if (N > 1) {
        const float* res = rsResidual(world.comm(r));
        ASSERT_NE(res, nullptr);
        ASSERT_EQ(memcmp(res, ref[r].residual.data(), n * 4), 0) << "residual of rank " << r;
      }
      // One quantization: the error of block r is at most the sum over the
      // peers of their bucket max / s (plus the output type's rounding).
      if (N > 1) {
        const double s = gctest::boundLevels(cfg);
        for (size_t k = 0; k < m; ++k) {
          double ex = exact[r][k];
          for (int i = 0; i < N; ++i) ex += in[i].residual[r * m + k];
          const double bound = sumMax[r][k / cfg.bucketSize] / s;
          const double e = fabs((double)got[k] * (avg ? N : 1) - ex);
          ASSERT_LE(e, gctest::boundWithSlack(bound, ex, t, 1e-6)) << "k=" << k;
        }
      }
    }
    if (N > 1) {
      gradcompStats_t st;
      ASSERT_EQ(gradcompGetStats(world.comm(0), &st), gradcompSuccess);
      EXPECT_EQ(st.callsReduceScatter, (uint64_t)step + 1);
      EXPECT_EQ(st.callsCompressed, (uint64_t)step + 1);
      EXPECT_EQ(st.bytesIn, (step + 1) * n * (t == DType::F32 ? 4 : 2));
      EXPECT_EQ(st.bytesOnWire,
                (step + 1) * (N - 1) * gc::qsgd::encodedBytes(m, cfg.bits, cfg.bucketSize));
    }
  }
}

// recvcount 1, odd, a bucket, not a multiple of the bucket (64).
const size_t kRecvCounts[] = {1, 7, 64, 517};

TEST(ReduceScatterCpu, QsgdMatchesReferenceAllRanksTypesOps) {
  for (int N = 1; N <= 8; ++N)
    for (DType t : {DType::F32, DType::F16, DType::BF16})
      for (bool avg : {false, true})
        for (size_t m : kRecvCounts) checkQsgd(N, t, avg, m, 2, false);
}

TEST(ReduceScatterCpu, NearestRoundingMatchesReference) {
  for (int N : {2, 3, 5, 8})
    for (DType t : {DType::F32, DType::BF16})
      for (size_t m : kRecvCounts) checkQsgd(N, t, N % 2 == 0, m, 3, m == 7, gradcompRoundNearest);
}

TEST(ReduceScatterCpu, SquareLevelsMatchReference) {
  for (gradcompRounding_t rounding : {gradcompRoundStochastic, gradcompRoundNearest})
    for (int N : {2, 3, 5, 8})
      for (DType t : {DType::F32, DType::BF16})
        for (size_t m : kRecvCounts)
          checkQsgd(N, t, N % 2 == 0, m, 3, m == 7, rounding, gradcompLevelsSquare);
}

TEST(ReduceScatterCpu, QsgdInPlaceMatchesReference) {
  for (int N : {1, 2, 3, 5, 8})
    for (DType t : {DType::F32, DType::BF16})
      for (bool avg : {false, true}) checkQsgd(N, t, avg, 517, 3, true);
}

// Error feedback loses nothing: per element of block j, the owner's output
// plus every rank's residual there equals every rank's input plus its
// previous residual, up to the fp32 rounding of the residual update and the
// rank-order sum (a few ulps of the terms' magnitudes).
TEST(ReduceScatterCpu, ErrorFeedbackConservesTheSum) {
  const int N = 4;
  const size_t m = 1000, n = N * m;
  gctest::CpuWorld world(N, gctest::qsgdTestConfig());
  std::vector<std::vector<float>> g(N), out(N, std::vector<float>(m)),
      prev(N, std::vector<float>(n, 0.0f));
  for (int step = 0; step < 6; ++step) {
    for (int i = 0; i < N; ++i) g[i] = gctest::normal(n, 100 * step + i, 1.0f + i);
    auto res = gctest::reduceScatterSum(world, g, out, m);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    for (int j = 0; j < N; ++j) {
      for (size_t k = 0; k < m; ++k) {
        double in = 0, kept = out[j][k], mag = fabs(out[j][k]);
        for (int i = 0; i < N; ++i) {
          const float* r = rsResidual(world.comm(i));
          in += (double)g[i][j * m + k] + prev[i][j * m + k];
          kept += r[j * m + k];
          mag += fabs(g[i][j * m + k]) + fabs(prev[i][j * m + k]) + fabs(r[j * m + k]);
        }
        ASSERT_LE(fabs(kept - in), 4 * N * 6e-8 * mag)
            << "step " << step << " j " << j << " k " << k;
      }
    }
    for (int i = 0; i < N; ++i) {
      const float* r = rsResidual(world.comm(i));
      prev[i].assign(r, r + n);
    }
  }
}

// On a fixed gradient the mean of T outputs tends to the exact block: the
// sum of T outputs is T*exact minus the residuals left, which stay bounded.
TEST(ReduceScatterCpu, MeanOfCallsConvergesToTheExactBlock) {
  const int N = 3, T = 256;
  const size_t m = 700, n = N * m;
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.bits = 2;
  gctest::CpuWorld world(N, cfg);
  std::vector<std::vector<float>> g(N), out(N, std::vector<float>(m));
  for (int i = 0; i < N; ++i) g[i] = gctest::normal(n, 55 + i);
  std::vector<std::vector<double>> sum(N, std::vector<double>(m, 0.0));
  double firstErr = 0;
  for (int step = 0; step < T; ++step) {
    auto res = gctest::reduceScatterSum(world, g, out, m);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess);
    for (int j = 0; j < N; ++j)
      for (size_t k = 0; k < m; ++k) sum[j][k] += out[j][k];
    if (step == 0) {
      for (int j = 0; j < N; ++j)
        for (size_t k = 0; k < m; ++k) {
          double ex = 0;
          for (int i = 0; i < N; ++i) ex += g[i][j * m + k];
          firstErr = std::max(firstErr, fabs(out[j][k] - ex));
        }
    }
  }
  double meanErr = 0;
  for (int j = 0; j < N; ++j) {
    for (size_t k = 0; k < m; ++k) {
      double ex = 0, left = 0;
      for (int i = 0; i < N; ++i) {
        ex += g[i][j * m + k];
        left += fabs(rsResidual(world.comm(i))[j * m + k]);
      }
      const double e = fabs(sum[j][k] / T - ex);
      meanErr = std::max(meanErr, e);
      ASSERT_LE(e, left / T + 1e-5 * (1 + fabs(ex))) << "j " << j << " k " << k;
    }
  }
  EXPECT_GT(firstErr, 0.05);  // 2 bits: one call is far off
  EXPECT_LT(meanErr, firstErr / 20);
}

// DQ-SGD: the bits come from the previous result's statistics, gathered
// over the blocks so every rank chooses the same; recomputed here from the
// outputs (buckets from each block's start, summed in rank order).
void checkDynamicBits(gradcompRounding_t rounding) {
  SCOPED_TRACE(testing::Message() << "rounding=" << rounding);
  const int N = 3;
  const size_t m = 900, n = N * m;
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.rounding = rounding;
  cfg.bitsMode = gradcompBitsDynamic;
  cfg.bitsMin = 2;
  cfg.bitsMax = 8;
  cfg.varianceTarget = 0.02f;
  gctest::CpuWorld world(N, cfg);
  std::vector<Rank> ref = makeInputs(N, n, DType::F32, 3);
  std::vector<std::vector<float>> out(N, std::vector<float>(m));
  int bits = cfg.bits;
  std::vector<int> seen;
  for (int step = 0; step < 6; ++step) {
    std::vector<Rank> in = makeInputs(N, n, DType::F32, 40 + step);
    for (int i = 0; i < N; ++i) {
      in[i].residual = ref[i].residual;
      // Gradients that shrink then grow: the width must follow.
      const float scale = step < 3 ? 1.0f : 30.0f;
      for (auto& x : in[i].f32) x *= scale;
    }
    std::vector<Rank> bufs = in;
    auto res = world.run([&](int r) {
      return gradcompReduceScatter(bufs[r].f32.data(), out[r].data(), m, ncclFloat32, ncclSum,
                                   world.comm(r), nullptr);
    });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    auto expect = refReduceScatter(ref = in, DType::F32, m, cfg, bits, step, false);
    for (int r = 0; r < N; ++r) {
      gradcompStats_t st;
      gradcompGetStats(world.comm(r), &st);
      ASSERT_EQ(st.bitsLast, bits) << "rank " << r << " step " << step;
      ASSERT_EQ(memcmp(out[r].data(), expect[r].data(), m * 4), 0) << "rank " << r;
    }
    seen.push_back(bits);
    // The next width: the fewest bits whose variance bound
    // sum len*max^2 / (4 s^2) stays under target * ||result||^2.
    double lenMaxSq = 0, sumSq = 0;
    for (int j = 0; j < N; ++j) {
      double blkLen = 0, blkSq = 0;
      for (size_t b = 0; b < m; b += cfg.bucketSize) {
        const size_t len = std::min((size_t)cfg.bucketSize, m - b);
        float mx = 0;
        for (size_t k = b; k < b + len; ++k) {
          mx = std::max(mx, fabsf(out[j][k]));
          blkSq += (double)out[j][k] * out[j][k];
        }
        blkLen += (double)len * ((double)mx * mx);
      }
      lenMaxSq += blkLen;
      sumSq += blkSq;
    }
    bits = cfg.bitsMax;
    for (int b = cfg.bitsMin; b <= cfg.bitsMax; ++b) {
      const double s = gc::qsgd::levels(b);
      if (lenMaxSq <= 4.0 * cfg.varianceTarget * sumSq * s * s) {
        bits = b;
        break;
      }
    }
  }
  EXPECT_GT(*std::max_element(seen.begin(), seen.end()), 2);
  // callsPerBits tallies the widths the reference expected, call by call.
  uint64_t tally[9] = {};
  for (int b : seen) tally[b]++;
  for (int r = 0; r < N; ++r) {
    gradcompStats_t st;
    ASSERT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
    for (int b = 0; b < 9; ++b)
      EXPECT_EQ(st.callsPerBits[b], tally[b]) << "rank " << r << " bits " << b;
  }
}

TEST(ReduceScatterCpu, DynamicBitsAgreeAndMatchReference) {
  checkDynamicBits(gradcompRoundStochastic);
}

// DQ-SGD with nearest rounding: the same rule picks the bits (its bound
// holds for nearest rounding's error too, docs/adaptive.md), and every
// encode rounds to the nearest level at the width picked.
TEST(ReduceScatterCpu, DynamicBitsWithNearestRounding) {
  checkDynamicBits(gradcompRoundNearest);
}

// Sparse methods, `steps` calls on the same buffers, bit for bit (out of
// place, or in place at sendbuff + r*m).
void checkSparse(const gradcompConfig_t& cfg, int N, DType t, bool avg, size_t m, int steps,
                 bool inPlace = false) {
  SCOPED_TRACE(testing::Message() << "method=" << cfg.method << " select=" << cfg.select
                                  << " N=" << N << " dtype=" << (int)t << " avg=" << avg
                                  << " m=" << m << " inPlace=" << inPlace);
  gctest::CpuWorld world(N, cfg);
  const size_t n = N * m;
  std::vector<SparseState> st(N);
  gctest::RsOutputs out(N, m);
  // One input buffer per rank for every step: in place its block is the
  // output, whose address keys the buffer's state, so fresh buffers at each
  // step would start fresh states wherever the allocator moved them.
  std::vector<Rank> in(N);
  for (int step = 0; step < steps; ++step) {
    const std::vector<Rank> fresh = makeInputs(N, n, t, 31 * step + m + N);
    for (int i = 0; i < N; ++i) {
      in[i].f32.resize(fresh[i].f32.size());
      in[i].half.resize(fresh[i].half.size());
      std::copy(fresh[i].f32.begin(), fresh[i].f32.end(), in[i].f32.begin());
      std::copy(fresh[i].half.begin(), fresh[i].half.end(), in[i].half.begin());
    }
    std::vector<std::vector<float>> g(N);
    for (int i = 0; i < N; ++i) g[i] = widen(in[i], t, n);
    auto res = out.run(world, in, t, m, avg, inPlace);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    std::vector<uint64_t> selected;
    std::vector<std::vector<float>> expect =
        N == 1 ? std::vector<std::vector<float>>{g[0]}
               : refSparseReduceScatter(cfg, t, avg, step, g, st, &selected);
    for (int r = 0; r < N; ++r) {
      const std::vector<float> got = out.read(in[r], r, t, m, inPlace);
      ASSERT_EQ(memcmp(got.data(), expect[r].data(), m * 4), 0) << "rank " << r << " step " << step;
      if (N > 1) {
        // Every peer's selection counted once (not the last one N-1 times).
        gradcompStats_t stats;
        ASSERT_EQ(gradcompGetStats(world.comm(r), &stats), gradcompSuccess);
        EXPECT_EQ(stats.selectedLast, selected[r]) << "rank " << r << " step " << step;
      }
      if (N > 1 && !st[r].v.empty()) {
        const float* v = rsResidual(world.comm(r));
        ASSERT_NE(v, nullptr);
        ASSERT_EQ(memcmp(v, st[r].v.data(), n * 4), 0) << "residual of rank " << r;
      }
    }
  }
}

TEST(ReduceScatterCpu, TopkThresholdAndExactMatchReference) {
  for (gradcompSelect_t sel : {gradcompSelectThreshold, gradcompSelectExact}) {
    gradcompConfig_t cfg = gctest::sparseTestConfig(gradcompMethodTopk);
    cfg.select = sel;
    for (int N : {1, 2, 3, 5, 8})
      for (DType t : {DType::F32, DType::BF16})
        for (size_t m : {(size_t)1, (size_t)300, (size_t)2051})
          checkSparse(cfg, N, t, N == 3, m, 3);
  }
  gradcompConfig_t half = gctest::sparseTestConfig(gradcompMethodTopk);
  half.valueType = ncclFloat16;
  half.errorFeedback = 0;
  checkSparse(half, 4, DType::F16, true, 4000, 3);
}

TEST(ReduceScatterCpu, DgcMatchesReference) {
  gradcompConfig_t cfg = gctest::sparseTestConfig(gradcompMethodDgc);
  cfg.density = 0.01f;
  cfg.clipNorm = 5.0f;
  cfg.momentumMasking = 1;
  cfg.warmupSteps = 4;
  for (int N : {2, 3, 6})
    for (DType t : {DType::F32, DType::F16}) checkSparse(cfg, N, t, t == DType::F16, 3000, 6);
}

TEST(ReduceScatterCpu, RandkMatchesReference) {
  gradcompConfig_t cfg = gctest::sparseTestConfig(gradcompMethodRandk);
  for (int N : {1, 2, 4, 7})
    for (DType t : {DType::F32, DType::BF16})
      for (size_t m : {(size_t)1, (size_t)999}) checkSparse(cfg, N, t, N == 4, m, 3);
}

// In place (recvbuff == sendbuff + r*m): the whole input is accumulated
// before the owner's block is written.
TEST(ReduceScatterCpu, SparseInPlaceMatchesReference) {
  gradcompConfig_t dgc = gctest::sparseTestConfig(gradcompMethodDgc);
  dgc.density = 0.01f;
  dgc.momentumMasking = 1;
  dgc.warmupSteps = 2;
  for (gradcompMethod_t method : {gradcompMethodTopk, gradcompMethodRandk})
    for (int N : {3, 5})
      checkSparse(gctest::sparseTestConfig(method), N, DType::BF16, N == 3, 2051, 3, true);
  for (int N : {2, 6}) checkSparse(dgc, N, DType::F16, N == 6, 3000, 4, true);
}

TEST(ReduceScatterCpu, DenseBlocksWhenSlotsWouldNotBeSmaller) {
  gradcompConfig_t cfg = gctest::sparseTestConfig(gradcompMethodDgc);
  cfg.density = 0.5f;  // kmax = m: slots of 8m bytes against 4m dense
  cfg.momentumMasking = 1;
  checkSparse(cfg, 3, DType::F32, false, 500, 3);
  gradcompStats_t st;
  gctest::CpuWorld world(2, cfg);
  std::vector<std::vector<float>> g(2, gctest::normal(1000, 9)), out(2, std::vector<float>(500));
  gctest::reduceScatterSum(world, g, out, 500);
  gradcompGetStats(world.comm(0), &st);
  EXPECT_EQ(st.denseFallbacks, 1u);
}

// Exact host reduce-scatter for what does not compress.
TEST(ReduceScatterCpu, PassThroughForOtherTypesOpsSmallCountsAndOneRank) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 1000;  // compared against nranks * recvcount
  const int N = 3;
  gctest::CpuWorld world(N, cfg);
  struct Case {
    ncclDataType_t type;
    ncclRedOp_t op;
    size_t m;
  } cases[] = {{ncclInt32, ncclSum, 400},
               {ncclFloat32, ncclMax, 400},
               {ncclFloat32, ncclSum, 333},
               {ncclFloat64, ncclAvg, 400},
               {ncclFloat32, ncclProd, 400}};
  for (const Case& cs : cases) {
    SCOPED_TRACE(testing::Message() << "type=" << cs.type << " op=" << cs.op << " m=" << cs.m);
    const size_t n = N * cs.m;
    std::vector<std::vector<double>> in(N, std::vector<double>(n));
    std::vector<std::vector<char>> buf(N, std::vector<char>(n * 8)),
        out(N, std::vector<char>(cs.m * 8));
    for (int i = 0; i < N; ++i) {
      for (size_t k = 0; k < n; ++k) {
        in[i][k] = (double)((k * 7 + i * 3) % 11) - 4.0;
        if (cs.type == ncclInt32) {
          int32_t v = (int32_t)in[i][k];
          memcpy(buf[i].data() + k * 4, &v, 4);
        } else if (cs.type == ncclFloat32) {
          float v = (float)in[i][k];
          memcpy(buf[i].data() + k * 4, &v, 4);
        } else {
          memcpy(buf[i].data() + k * 8, &in[i][k], 8);
        }
      }
    }
    gradcompStats_t before;
    gradcompGetStats(world.comm(0), &before);
    auto res = world.run([&](int r) {
      return gradcompReduceScatter(buf[r].data(), out[r].data(), cs.m, cs.type, cs.op,
                                   world.comm(r), nullptr);
    });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    for (int r = 0; r < N; ++r) {
      for (size_t k = 0; k < cs.m; ++k) {
        // Avg is NCCL's PreMulSum: every input times 1/N, then the sum.
        const double pre = cs.op == ncclAvg ? 1.0 / N : 1.0;
        double e = in[0][r * cs.m + k] * pre;
        for (int i = 1; i < N; ++i) {
          const double x = in[i][r * cs.m + k] * pre;
          e = cs.op == ncclMax ? std::max(e, x) : cs.op == ncclProd ? e * x : e + x;
        }
        double got;
        if (cs.type == ncclInt32) {
          int32_t v;
          memcpy(&v, out[r].data() + k * 4, 4);
          got = v;
        } else if (cs.type == ncclFloat32) {
          float v;
          memcpy(&v, out[r].data() + k * 4, 4);
          got = v;
        } else {
          memcpy(&got, out[r].data() + k * 8, 8);
        }
        ASSERT_EQ(got, e) << "rank " << r << " k " << k;
      }
    }
    gradcompStats_t after;
    gradcompGetStats(world.comm(0), &after);
    EXPECT_EQ(after.callsPassedThrough, before.callsPassedThrough + 1);
    EXPECT_EQ(after.callsCompressed, 0u);
  }
}

TEST(ReduceScatterCpu, StateIsNotSharedWithTheAllReduce) {
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  const int N = 2;
  const size_t m = 256;
  gctest::CpuWorld world(N, cfg);
  std::vector<std::vector<float>> g(N, gctest::normal(N * m, 4)), buf(N, std::vector<float>(N * m));
  auto res = world.run([&](int r) {
    gradcompResult_t a = gradcompReduceScatter(g[r].data(), buf[r].data(), m, ncclFloat32, ncclSum,
                                               world.comm(r), nullptr);
    if (a != gradcompSuccess) return a;
    buf[r] = g[r];
    a = gradcompAllReduce(buf[r].data(), buf[r].data(), N * m, ncclFloat32, ncclSum, world.comm(r),
                          nullptr);
    if (a != gradcompSuccess) return a;
    return gradcompReduceScatterKeyed(g[r].data(), buf[r].data(), m, ncclFloat32, ncclSum,
                                      world.comm(r), nullptr, 77);
  });
  for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  // Pointer-keyed RS, pointer-keyed allreduce (same address and count), keyed RS.
  EXPECT_EQ(world.comm(0)->states.size(), 3u);
  size_t bytes = 0;
  ASSERT_EQ(gradcompCommStateSize(world.comm(0), &bytes), gradcompSuccess);
  std::vector<char> saved(bytes);
  ASSERT_EQ(gradcompCommSaveState(world.comm(0), saved.data(), bytes), gradcompSuccess);
  ASSERT_EQ(gradcompCommLoadState(world.comm(0), saved.data(), bytes), gradcompSuccess);
  EXPECT_EQ(world.comm(0)->states.size(), 3u);
}

// A checkpoint of the residuals (and the step counter) taken after two calls
// and loaded into fresh comms makes the third call bit for bit the same. The
// buffers of the fresh comms live elsewhere: keyed state, as after a restart.
TEST(ReduceScatterCpu, SavedStateReproducesTheNextCall) {
  for (gradcompMethod_t method : {gradcompMethodQsgd, gradcompMethodDgc}) {
    SCOPED_TRACE(testing::Message() << "method=" << method);
    gradcompConfig_t cfg = gctest::qsgdTestConfig();
    cfg.method = method;
    cfg.density = 0.05f;
    const int N = 3;
    const size_t m = 600, n = N * m;
    gctest::CpuWorld a(N, cfg), b(N, cfg);
    std::vector<std::vector<float>> outA(N, std::vector<float>(m)), outB = outA;
    std::vector<std::vector<char>> saved(N);
    for (int step = 0; step < 3; ++step) {
      std::vector<std::vector<float>> g(N);
      for (int i = 0; i < N; ++i) g[i] = gctest::normal(n, 10 * step + i);
      if (step == 2) {
        auto res = b.run([&](int r) {
          gradcompResult_t x = gradcompCommLoadState(b.comm(r), saved[r].data(), saved[r].size());
          if (x != gradcompSuccess) return x;
          return gradcompReduceScatterKeyed(g[r].data(), outB[r].data(), m, ncclFloat32, ncclAvg,
                                            b.comm(r), nullptr, 5);
        });
        for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
      }
      auto res = a.run([&](int r) {
        return gradcompReduceScatterKeyed(g[r].data(), outA[r].data(), m, ncclFloat32, ncclAvg,
                                          a.comm(r), nullptr, 5);
      });
      for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
      if (step == 1) {
        for (int r = 0; r < N; ++r) {
          size_t bytes = 0;
          ASSERT_EQ(gradcompCommStateSize(a.comm(r), &bytes), gradcompSuccess);
          EXPECT_GE(bytes, n * 4);  // the residual covers the whole input
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

TEST(ReduceScatterCpu, BadArgumentsRefusedCleanly) {
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  gctest::CpuWorld world(2, cfg);
  const size_t m = 1000;
  std::vector<float> buf(2 * m + 8, 1.0f), out(m, 0.0f), before = buf;
  gradcompComm_t c0 = world.comm(0);
  EXPECT_EQ(gradcompReduceScatter(buf.data(), nullptr, m, ncclFloat32, ncclSum, c0, nullptr),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "must not be NULL"), nullptr);
  // Overlapping other than at sendbuff + rank * recvcount (rank 0: sendbuff).
  EXPECT_EQ(gradcompReduceScatter(buf.data(), buf.data() + 1, m, ncclFloat32, ncclSum, c0, nullptr),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "overlap"), nullptr);
  EXPECT_EQ(gradcompReduceScatter(buf.data(), buf.data() + m, m, ncclFloat32, ncclSum, c0, nullptr),
            gradcompInvalidArgument);
  EXPECT_EQ(gradcompReduceScatter(reinterpret_cast<char*>(buf.data()) + 2, out.data(), m,
                                  ncclFloat32, ncclSum, c0, nullptr),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "aligned"), nullptr);
  EXPECT_EQ(gradcompReduceScatter(buf.data(), out.data(), SIZE_MAX / 2, ncclFloat32, ncclSum, c0,
                                  nullptr),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "overflows"), nullptr);
  EXPECT_EQ(
      gradcompReduceScatter(buf.data(), out.data(), m, ncclFloat32, ncclSum, nullptr, nullptr),
      gradcompInvalidArgument);
  EXPECT_EQ(buf, before);
  // recvcount 0 is a no-op, as in NCCL.
  EXPECT_EQ(gradcompReduceScatter(nullptr, nullptr, 0, ncclFloat32, ncclSum, c0, nullptr),
            gradcompSuccess);
}

// Ranks that disagree on recvcount (both compressing, or one compressing and
// one passing through) all fail, with no hang and no write past a buffer.
TEST(ReduceScatterCpu, RanksDisagreeingOnRecvcountAllFail) {
  for (gradcompMethod_t method : {gradcompMethodQsgd, gradcompMethodTopk, gradcompMethodRandk}) {
    SCOPED_TRACE(testing::Message() << "method=" << method);
    gradcompConfig_t cfg = gctest::qsgdTestConfig();
    cfg.method = method;
    gctest::expectRecvcountDisagreementFails(cfg, 3, 1);
  }
}

}  // namespace
