// Compressed allreduce on the CPU backend: every algorithm x N = 1..8 x
// fp32/fp16/bf16 x Sum/Avg x awkward counts equals, bit for bit, a serial
// reference of the same decode/sum/encode sequence; is identical on all
// ranks; and is within the error bound of its number of quantizations.
#include <gtest/gtest.h>
#include <math.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "gradcomp.h"
#include "gradcomp/reference.h"
#include "kernels/common_math.cuh"
#include "kernels/qsgd_math.cuh"
#include "plugin/comm.h"
#include "tests/common/cpu_world.h"
#include "tests/common/ref_algos.h"
#include "tests/common/test_util.h"
#include "tests/common/world_checks.h"

namespace {

using gc::DType;
using namespace gctest::ref;

// Runs `steps` calls on the world (in place), checks each against the
// reference, identity across ranks and the error bound.
void checkAlgorithm(gradcompAlgo_t algo, int N, DType t, bool avg, size_t n, int steps,
                    gradcompRounding_t rounding = gradcompRoundStochastic,
                    gradcompLevels_t levels = gradcompLevelsUniform) {
  SCOPED_TRACE(testing::Message() << "algo=" << algo << " N=" << N << " dtype=" << (int)t
                                  << " avg=" << avg << " n=" << n << " rounding=" << rounding
                                  << " levels=" << levels);
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.algo = algo;
  cfg.rounding = rounding;
  cfg.levels = levels;
  gctest::CpuWorld world(N, cfg);
  std::vector<Rank> ref = makeInputs(N, n, t, n + N);
  // What the library reduces in place: the same buffers every step, since
  // residual state follows the buffer's address.
  std::vector<Rank> bufs = ref;
  for (int step = 0; step < steps; ++step) {
    std::vector<Rank> in = makeInputs(N, n, t, 1000 * step + n + N);
    gctest::loadStep(in, ref, bufs);
    std::vector<double> exact, sumMax;
    gctest::allReduceBoundTerms(in, t, n, cfg.bucketSize, exact, sumMax);
    auto res = gctest::allReduceInPlace(world, bufs, t, n, avg);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();

    std::vector<float> expect;
    gradcompConfig_t rc = cfg;
    const gradcompAlgo_t eff = gctest::effectiveAlgo(algo, N);
    if (N == 1) {
      expect = finish(widen(in[0], t, n), t, 1.0f);  // one rank: passed through unchanged
    } else {
      expect = refDense(ref = in, t, n, rc, step, avg, eff);
    }
    if (N == 1) ref = in;
    // Bit for bit equal to the reference and identical on every rank.
    for (int r = 0; r < N; ++r) {
      auto got = widen(bufs[r], t, n);
      ASSERT_EQ(memcmp(got.data(), expect.data(), n * 4), 0) << "rank " << r << " step " << step;
    }
    // Error bound: each quantization of a sum of N inputs errs by at most
    // (sum of the inputs' bucket max)/s per element; two-shot quantizes
    // twice, ring N times, allgather once.
    if (N > 1 && step == 0) {
      const double s = gctest::boundLevels(cfg);
      const int q = eff == gradcompAlgoTwoShot ? 2 : eff == gradcompAlgoRing ? N : 1;
      ASSERT_NO_FATAL_FAILURE(gctest::checkAllReduceBound(widen(bufs[0], t, n), exact, sumMax, q, s,
                                                          N, avg, t, cfg.bucketSize));
    }
  }
}

const size_t kCounts[] = {1, 63, 64, 200, 1000, 3001};

TEST(AllReduceCpu, TwoShotAllRanksTypesOps) {
  for (int N = 1; N <= 8; ++N)
    for (DType t : {DType::F32, DType::F16, DType::BF16})
      for (bool avg : {false, true})
        for (size_t n : kCounts) checkAlgorithm(gradcompAlgoTwoShot, N, t, avg, n, 2);
}

TEST(AllReduceCpu, RingAllRanksTypesOps) {
  for (int N = 1; N <= 8; ++N)
    for (DType t : {DType::F32, DType::F16, DType::BF16})
      for (bool avg : {false, true})
        for (size_t n : kCounts) checkAlgorithm(gradcompAlgoRing, N, t, avg, n, 2);
}

TEST(AllReduceCpu, AllgatherAllRanksTypesOps) {
  for (int N = 1; N <= 8; ++N)
    for (DType t : {DType::F32, DType::F16, DType::BF16})
      for (bool avg : {false, true})
        for (size_t n : kCounts) checkAlgorithm(gradcompAlgoAllgather, N, t, avg, n, 2);
}

// GRADCOMP_ROUNDING=nearest reaches every encode of every algorithm (the
// reference rounds each one to the nearest level; a stochastic encode
// anywhere would differ), bit for bit on every rank, within the bounds.
TEST(AllReduceCpu, NearestRoundingEveryAlgorithm) {
  for (gradcompAlgo_t algo :
       {gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather, gradcompAlgoAuto})
    for (int N : {2, 3, 5, 8})
      for (DType t : {DType::F32, DType::BF16})
        for (size_t n : {(size_t)63, (size_t)1000, (size_t)3001})
          checkAlgorithm(algo, N, t, N % 2 == 1, n, 3, gradcompRoundNearest);
}

// GRADCOMP_LEVELS=square reaches every encode of every algorithm, with
// either rounding (the reference codes square levels from their rule; a
// uniform encode anywhere would differ), within the top step's bound.
TEST(AllReduceCpu, SquareLevelsEveryAlgorithm) {
  for (gradcompRounding_t rounding : {gradcompRoundStochastic, gradcompRoundNearest})
    for (gradcompAlgo_t algo :
         {gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather, gradcompAlgoAuto})
      for (int N : {2, 3, 5, 8})
        for (DType t : {DType::F32, DType::F16, DType::BF16})
          for (size_t n : {(size_t)63, (size_t)1000, (size_t)3001})
            checkAlgorithm(algo, N, t, N % 2 == 1, n, 3, rounding, gradcompLevelsSquare);
}

TEST(AllReduceCpu, AutoPicksAllgatherForTwoRanksTwoShotAbove) {
  for (int N : {2, 3, 5}) checkAlgorithm(gradcompAlgoAuto, N, DType::F32, false, 5000, 3);
}

// Mass conservation: sum over steps of results + all residuals equals the sum
// of all gradients (to fp32 rounding), so the gap to the true sum is bounded
// by the residuals and does not grow with T; without error feedback it does.
double runGap(gradcompAlgo_t algo, int ef, int T, std::vector<double>* gapAt) {
  const int N = 4;
  const size_t n = 4096;
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.algo = algo;
  cfg.minElements = 0;
  cfg.bits = 3;
  cfg.errorFeedback = ef;
  cfg.ownerResidual = ef;
  gctest::CpuWorld world(N, cfg);
  std::vector<double> sumResult(n, 0), sumTrue(n, 0);
  double maxBound = 0;
  const int s = gc::qsgd::levels(cfg.bits);
  // The residual is keyed by the receive buffer's address: the buffers stay
  // put across steps (an allocator need not hand back the same address).
  std::vector<std::vector<float>> g(N, std::vector<float>(n));
  for (int t = 0; t < T; ++t) {
    for (int r = 0; r < N; ++r) {
      const std::vector<float> x = gctest::normal(n, 7000 + t * 13 + r);
      std::copy(x.begin(), x.end(), g[r].begin());
      for (size_t k = 0; k < n; ++k) sumTrue[k] += g[r][k];
    }
    auto res = world.run([&](int r) {
      return gradcompAllReduce(g[r].data(), g[r].data(), n, ncclFloat32, ncclSum, world.comm(r),
                               nullptr);
    });
    for (auto x : res) EXPECT_EQ(x, gradcompSuccess);
    double maxAbs = 0;
    for (size_t k = 0; k < n; ++k) {
      sumResult[k] += g[0][k];
      maxAbs = std::max(maxAbs, (double)fabs(g[0][k]));
    }
    maxBound = std::max(maxBound, maxAbs);
    if (ef) {
      // Exact bookkeeping: results + residuals == gradients.
      std::vector<double> held(n, 0);
      for (int r = 0; r < N; ++r) {
        for (auto& kv : world.comm(r)->states) {
          const gc::BufferState& st = kv.second;
          for (size_t k = 0; k < n; ++k) held[k] += st.residual[k];
        }
      }
      // Owner residuals are chunk-local: map them back through the split.
      // The allgather quantizes once and keeps none.
      auto off = split(n, N, cfg.bucketSize);
      for (int r = 0; r < N; ++r) {
        int chunk = algo == gradcompAlgoRing ? (r + 1) % N : r;
        for (auto& kv : world.comm(r)->states) {
          EXPECT_EQ(kv.second.ownerResidual == nullptr, algo == gradcompAlgoAllgather);
          if (kv.second.ownerResidual == nullptr) continue;
          for (size_t k = off[chunk]; k < off[chunk + 1]; ++k)
            held[k] += kv.second.ownerResidual[k - off[chunk]];
        }
      }
      for (size_t k = 0; k < n; ++k) {
        EXPECT_NEAR(sumResult[k] + held[k], sumTrue[k], 1e-4 * (1 + fabs(sumTrue[k])))
            << "t=" << t << " k=" << k;
      }
    }
    double gap = 0;
    for (size_t k = 0; k < n; ++k) gap = std::max(gap, fabs(sumResult[k] - sumTrue[k]));
    if (gapAt) gapAt->push_back(gap);
  }
  (void)s;
  return maxBound;
}

TEST(AllReduceCpu, ErrorFeedbackKeepsGapBounded) {
  for (gradcompAlgo_t algo : {gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather}) {
    SCOPED_TRACE(testing::Message() << "algo=" << algo);
    std::vector<double> gapEf, gapNoEf;
    const int T = 120;
    runGap(algo, 1, T, &gapEf);
    runGap(algo, 0, T, &gapNoEf);
    // The EF gap is what the residuals hold: each element's residuals are
    // below one level step of the inputs (4 ranks, |x| < ~5 sigma, s = 3),
    // so it stays O(1); it must not grow from the first to the last quarter.
    double early = *std::max_element(gapEf.begin(), gapEf.begin() + T / 4);
    double late = *std::max_element(gapEf.end() - T / 4, gapEf.end());
    EXPECT_LT(late, 2.0 * early + 1.0);
    // Without EF the errors random-walk: the gap grows like sqrt(T).
    EXPECT_GT(gapNoEf.back(), 3.0 * gapEf.back());
  }
}

TEST(AllReduceCpu, PassThroughForOtherTypesOpsSmallCountsAndOneRank) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 100;
  const int N = 3;
  gctest::CpuWorld world(N, cfg);
  std::vector<std::vector<int32_t>> ints(N, std::vector<int32_t>(500));
  std::vector<std::vector<float>> small(N), big(N);
  for (int r = 0; r < N; ++r) {
    for (int k = 0; k < 500; ++k) ints[r][k] = r * 1000 + k;
    small[r] = gctest::normal(99, r);
    big[r] = gctest::normal(1000, 10 + r);
  }
  std::vector<std::vector<float>> bigOut = big;
  auto res = world.run([&](int r) {
    gradcompResult_t a = gradcompAllReduce(ints[r].data(), ints[r].data(), 500, ncclInt32, ncclSum,
                                           world.comm(r), nullptr);
    gradcompResult_t b = gradcompAllReduce(small[r].data(), small[r].data(), 99, ncclFloat32,
                                           ncclSum, world.comm(r), nullptr);
    gradcompResult_t c = gradcompAllReduce(big[r].data(), bigOut[r].data(), 1000, ncclFloat32,
                                           ncclMax, world.comm(r), nullptr);
    return a != gradcompSuccess ? a : b != gradcompSuccess ? b : c;
  });
  for (auto x : res) ASSERT_EQ(x, gradcompSuccess);
  for (int k = 0; k < 500; ++k) ASSERT_EQ(ints[0][k], 3000 + 3 * k);
  for (int r = 0; r < N; ++r) {
    for (int k = 0; k < 1000; ++k) {
      ASSERT_EQ(bigOut[r][k], std::max({big[0][k], big[1][k], big[2][k]}));
    }
    gradcompStats_t st;
    ASSERT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
    EXPECT_EQ(st.callsPassedThrough, 3u);
    EXPECT_EQ(st.callsCompressed, 0u);
  }
  // Exact pass-through sum of the small fp32 call (rank order).
  std::vector<float> s0 = gctest::normal(99, 0), s1 = gctest::normal(99, 1),
                     s2 = gctest::normal(99, 2);
  for (int k = 0; k < 99; ++k) ASSERT_EQ(small[1][k], (s0[k] + s1[k]) + s2[k]);
}

// ncclAvg over floating types is NCCL's pre-multiplied sum: every input times
// 1/N rounded to the buffer's type, each product rounded to it, then summed
// in rank order (fp16/bf16 rounded after every step). So an fp16 average whose
// sum exceeds 65504 stays finite, as on NCCL, and fp32 at N = 3 has the bits
// of NCCL's pre-multiplied sum in rank order, not those of a sum divided by 3.
TEST(AllReduceCpu, PassThroughAvgPreMultipliesAsNccl) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = gradcompMethodNone;
  for (DType t : {DType::F16, DType::BF16, DType::F32}) {
    for (int N : {4, 3}) {
      for (int rs = 0; rs < 2; ++rs) {
        SCOPED_TRACE(testing::Message() << "dtype=" << (int)t << " N=" << N << " rs=" << rs);
        gctest::CpuWorld world(N, cfg);
        const size_t n = 64, total = rs ? n * N : n, es = t == DType::F32 ? 4 : 2;
        std::vector<std::vector<uint8_t>> in(N, std::vector<uint8_t>(total * es)),
            out(N, std::vector<uint8_t>(n * es));
        auto round = [t](float x) {
          return t == DType::F32   ? x
                 : t == DType::F16 ? gc::halfToFloat(gc::floatToHalf(x))
                                   : gc::bf16ToFloat(gc::floatToBf16(x));
        };
        for (int r = 0; r < N; ++r) {
          const std::vector<float> g = gctest::normal(total, 40 + r);
          for (size_t k = 0; k < total; ++k) {
            // Element 0: 40000 on every rank, whose sum no fp16 holds.
            gc::storeFromFloat(in[r].data(), t, k, k % n == 0 ? 40000.0f : g[k]);
          }
        }
        auto res = world.run([&](int r) {
          return rs ? gradcompReduceScatter(in[r].data(), out[r].data(), n, nccl(t), ncclAvg,
                                            world.comm(r), nullptr)
                    : gradcompAllReduce(in[r].data(), out[r].data(), n, nccl(t), ncclAvg,
                                        world.comm(r), nullptr);
        });
        for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
        const float scalar = round((float)(1.0 / N));
        bool differsFromDivided = false;
        for (int r = 0; r < N; ++r) {
          const size_t lo = rs ? r * n : 0;
          for (size_t k = 0; k < n; ++k) {
            float acc = 0.0f, sum = 0.0f;
            for (int i = 0; i < N; ++i) {
              const float x = gc::loadAsFloat(in[i].data(), t, lo + k);
              const float p = round(x * scalar);
              acc = i == 0 ? p : round(acc + p);
              sum = i == 0 ? x : round(sum + x);
            }
            const float got = gc::loadAsFloat(out[r].data(), t, k);
            ASSERT_EQ(memcmp(&got, &acc, 4), 0)
                << "rank " << r << " k " << k << " got " << got << " want " << acc;
            if (round(sum / N) != acc) differsFromDivided = true;
          }
          ASSERT_TRUE(isfinite(gc::loadAsFloat(out[r].data(), t, 0))) << "rank " << r;
        }
        // The inputs tell the two rules apart (the fp16 overflow, or bits).
        if (t == DType::F16 || N == 3) EXPECT_TRUE(differsFromDivided);
      }
    }
  }
}

TEST(AllReduceCpu, StatsCountWireBytes) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 0;
  cfg.algo = gradcompAlgoTwoShot;
  const int N = 4;
  const size_t n = 1 << 16;
  gctest::CpuWorld world(N, cfg);
  std::vector<std::vector<float>> g(N);
  for (int r = 0; r < N; ++r) g[r] = gctest::normal(n, r);
  world.run([&](int r) {
    return gradcompAllReduce(g[r].data(), g[r].data(), n, ncclFloat32, ncclAvg, world.comm(r),
                             nullptr);
  });
  gradcompStats_t st;
  ASSERT_EQ(gradcompGetStats(world.comm(1), &st), gradcompSuccess);
  EXPECT_EQ(st.callsCompressed, 1u);
  EXPECT_EQ(st.callsPerAlgo[gradcompAlgoTwoShot], 1u);
  EXPECT_EQ(st.bytesIn, n * 4);
  const size_t chunk = n / N, e = gradcompQsgdEncodedBytes(chunk, 4, 512);
  EXPECT_EQ(st.bytesOnWire, 3 * e + 3 * e);
  // 2(N-1)/N of a 4.06-bit encoding: ~5.3x fewer bytes than fp32 per rank.
  EXPECT_NEAR((double)st.bytesIn / st.bytesOnWire, 4 * 32.0 / (6 * (4 + 32.0 / 512)), 0.01);
  EXPECT_EQ(st.bitsLast, 4);
  EXPECT_EQ(st.steps, 1u);
}

TEST(AllReduceCpu, SaveLoadStateReproducesTheNextStep) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 0;
  const int N = 3;
  const size_t n = 3000;
  gctest::CpuWorld world(N, cfg);
  // The residuals follow the buffers' addresses: every step reduces in the
  // same buffers (fresh vectors could land elsewhere, and start from zero).
  std::vector<std::vector<float>> g(N, std::vector<float>(n));
  auto step = [&](int t) {
    for (int r = 0; r < N; ++r) {
      const std::vector<float> x = gctest::normal(n, 50 + t * 7 + r);
      g[r].assign(x.begin(), x.end());
    }
    auto res = world.run([&](int r) {
      return gradcompAllReduce(g[r].data(), g[r].data(), n, ncclFloat32, ncclSum, world.comm(r),
                               nullptr);
    });
    for (auto x : res) EXPECT_EQ(x, gradcompSuccess);
    return g[0];
  };
  for (int t = 0; t < 3; ++t) step(t);
  std::vector<std::vector<char>> saved(N);
  for (int r = 0; r < N; ++r) {
    size_t bytes = 0;
    ASSERT_EQ(gradcompCommStateSize(world.comm(r), &bytes), gradcompSuccess);
    EXPECT_GT(bytes, n * 4);
    saved[r].resize(bytes);
    ASSERT_EQ(gradcompCommSaveState(world.comm(r), saved[r].data(), bytes - 1),
              gradcompInvalidArgument);
    ASSERT_EQ(gradcompCommSaveState(world.comm(r), saved[r].data(), bytes), gradcompSuccess);
  }
  auto a = step(3);
  for (int r = 0; r < N; ++r) {
    ASSERT_EQ(gradcompCommLoadState(world.comm(r), saved[r].data(), saved[r].size()),
              gradcompSuccess);
  }
  auto b = step(3);
  EXPECT_EQ(a, b);
  for (int r = 0; r < N; ++r) ASSERT_EQ(gradcompCommResetState(world.comm(r)), gradcompSuccess);
  auto c = step(3);
  EXPECT_NE(a, c);
  // A corrupt buffer is refused without touching the state.
  std::vector<char> junk(saved[0].size(), 0);
  EXPECT_EQ(gradcompCommLoadState(world.comm(0), junk.data(), junk.size()),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "not a gradcomp state"), nullptr);
}

TEST(AllReduceCpu, KeyedStateFollowsTheKeyNotThePointer) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 0;
  const int N = 2;
  const size_t n = 2048;
  gctest::CpuWorld world(N, cfg);
  std::vector<std::vector<float>> b1(N), b2(N);
  for (int r = 0; r < N; ++r) b1[r] = gctest::normal(n, r), b2[r] = gctest::normal(n, 9 + r);
  world.run([&](int r) {
    gradcompAllReduceKeyed(b1[r].data(), b1[r].data(), n, ncclFloat32, ncclSum, world.comm(r),
                           nullptr, 42);
    return gradcompAllReduceKeyed(b2[r].data(), b2[r].data(), n, ncclFloat32, ncclSum,
                                  world.comm(r), nullptr, 42);
  });
  EXPECT_EQ(world.comm(0)->states.size(), 1u);
  world.run([&](int r) {
    return gradcompAllReduce(b1[r].data(), b1[r].data(), n, ncclFloat32, ncclSum, world.comm(r),
                             nullptr);
  });
  EXPECT_EQ(world.comm(0)->states.size(), 2u);
}

TEST(AllReduceCpu, SeveralCommunicatorsKeepTheirOwnState) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 0;
  const size_t n = 1500;
  gctest::CpuWorld w1(3, cfg), w2(3, cfg), solo(3, cfg);
  std::vector<std::vector<float>> x(3), y(3), z(3);
  for (int t = 0; t < 3; ++t) {
    for (int r = 0; r < 3; ++r) {
      // Same addresses every step: state is keyed by the buffer's address.
      x[r].resize(n), y[r].resize(n), z[r].resize(n);
      auto g = gctest::normal(n, t * 10 + r);
      std::copy(g.begin(), g.end(), x[r].begin());
      std::copy(g.begin(), g.end(), y[r].begin());
      std::copy(g.begin(), g.end(), z[r].begin());
    }
    // w1 and w2 interleave on the same threads (w2 with an extra buffer of
    // its own); w1 must give what an identical comm gives alone.
    w1.run([&](int r) {
      return gradcompAllReduce(x[r].data(), x[r].data(), n, ncclFloat32, ncclSum, w1.comm(r),
                               nullptr);
    });
    w2.run([&](int r) {
      gradcompAllReduce(y[r].data(), y[r].data(), n, ncclFloat32, ncclSum, w2.comm(r), nullptr);
      std::vector<float> other = gctest::normal(n, 99 + r);
      return gradcompAllReduce(other.data(), other.data(), n, ncclFloat32, ncclSum, w2.comm(r),
                               nullptr);
    });
    solo.run([&](int r) {
      return gradcompAllReduce(z[r].data(), z[r].data(), n, ncclFloat32, ncclSum, solo.comm(r),
                               nullptr);
    });
    EXPECT_EQ(x[0], z[0]) << "step " << t;
  }
}

TEST(AllReduceCpu, BadArgumentsRefusedBeforeAnythingIsWritten) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 0;
  gctest::CpuWorld world(2, cfg);
  std::vector<float> buf(4096, 1.0f), before = buf;
  EXPECT_EQ(
      gradcompAllReduce(buf.data(), nullptr, 4096, ncclFloat32, ncclSum, world.comm(0), nullptr),
      gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "must not be NULL"), nullptr);
  EXPECT_EQ(gradcompAllReduce(buf.data(), buf.data() + 1, 4000, ncclFloat32, ncclSum, world.comm(0),
                              nullptr),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "overlap"), nullptr);
  EXPECT_EQ(gradcompAllReduce(reinterpret_cast<char*>(buf.data()) + 2, buf.data(), 100, ncclFloat32,
                              ncclSum, world.comm(0), nullptr),
            gradcompInvalidArgument);
  EXPECT_EQ(gradcompAllReduce(buf.data(), buf.data(), 10, ncclFloat32, ncclSum, nullptr, nullptr),
            gradcompInvalidArgument);
  EXPECT_EQ(buf, before);
  gradcompComm_t none[2];
  EXPECT_EQ(gradcompCommCreateCpu(0, &cfg, none), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), "nranks=0 is out of range 1..1024");
  gradcompConfig_t bad = cfg;
  bad.bits = 12;
  EXPECT_EQ(gradcompCommCreateCpu(2, &bad, none), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), "bits=12 (GRADCOMP_BITS) is out of range 2..8");
}

// A passed-through call that fails (an op the CPU backend does not reduce,
// ranks whose counts differ) is not counted, as a compressed call that fails
// is not, and leaves both buffers as they were; the next good call counts
// once. (callsPassedThrough counted every failed one.)
TEST(AllReduceCpu, FailedPassThroughCallsAreNotCounted) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  gctest::CpuWorld world(2, cfg);
  const std::vector<int32_t> ones(64, 1), sevens(64, 7);
  std::vector<std::vector<int32_t>> in(2, ones), out(2, sevens);
  const ncclRedOp_t badOp = (ncclRedOp_t)5;  // a valid NCCL op handle the CPU backend refuses
  auto res = world.run([&](int r) {
    return gradcompAllReduce(in[r].data(), out[r].data(), 64, ncclInt32, badOp, world.comm(r),
                             nullptr);
  });
  for (auto x : res) EXPECT_EQ(x, gradcompInvalidArgument);
  res = world.run([&](int r) {
    return gradcompReduceScatter(in[r].data(), out[r].data(), 32, ncclInt32, badOp, world.comm(r),
                                 nullptr);
  });
  for (auto x : res) EXPECT_EQ(x, gradcompInvalidArgument);
  res = world.run([&](int r) {
    return gradcompAllReduce(in[r].data(), out[r].data(), 60 + r, ncclInt32, ncclSum, world.comm(r),
                             nullptr);
  });
  for (auto x : res) EXPECT_EQ(x, gradcompInvalidUsage);
  for (int r = 0; r < 2; ++r) {
    gradcompStats_t st;
    ASSERT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
    EXPECT_EQ(st.callsPassedThrough, 0u) << "rank " << r;
    EXPECT_EQ(in[r], ones) << "rank " << r;
    EXPECT_EQ(out[r], sevens) << "rank " << r;
  }
  res = world.run([&](int r) {
    return gradcompAllReduce(in[r].data(), out[r].data(), 64, ncclInt32, ncclSum, world.comm(r),
                             nullptr);
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    gradcompStats_t st;
    ASSERT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
    EXPECT_EQ(st.callsPassedThrough, 1u) << "rank " << r;
    EXPECT_EQ(out[r], std::vector<int32_t>(64, 2)) << "rank " << r;
  }
}

}  // namespace

namespace {

// A rank whose per-buffer state diverged from the others' (here: DGC warm-up
// on a buffer that only one rank switched) makes the CPU transport fail
// cleanly on every rank instead of reading past a buffer.
TEST(AllReduceCpu, DivergedSparseStateFailsCleanly) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = gradcompMethodDgc;
  cfg.minElements = 0;
  cfg.density = 0.001f;
  cfg.warmupSteps = 100;
  const size_t n = 1 << 16;
  gctest::CpuWorld world(2, cfg);
  std::vector<std::vector<float>> g(2, gctest::normal(n, 1));
  for (int t = 0; t < 40; ++t) {
    auto res = world.run([&](int r) {
      return gradcompAllReduceKeyed(g[r].data(), g[r].data(), n, ncclFloat32, ncclSum,
                                    world.comm(r), nullptr, 1);
    });
    ASSERT_EQ(res[0], gradcompSuccess);
    ASSERT_EQ(res[1], gradcompSuccess);
  }
  auto res = world.run([&](int r) {
    return gradcompAllReduceKeyed(g[r].data(), g[r].data(), n, ncclFloat32, ncclSum, world.comm(r),
                                  nullptr, r == 0 ? 1 : 2);
  });
  EXPECT_EQ(res[0], gradcompInvalidUsage);
  EXPECT_EQ(res[1], gradcompInvalidUsage);
}

}  // namespace
