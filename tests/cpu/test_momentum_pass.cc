// DGC's momentum correction on calls gradcomp does not compress: with
// momentum correction the optimizer adds no momentum of its own to the
// parameters a DGC comm serves (state.param_groups, the preload's
// --momentum 0), so a call passed through (a count under minElements,
// GRADCOMP_AUTO's decision, one rank) must still carry the velocity
// u = m*u + g. Each check compares with momentum SGD computed here: the same
// inputs' velocities through a plain pass-through comm, which sums them as
// the transport does.
#include <gtest/gtest.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autotune.h"
#include "checks.h"
#include "comm.h"
#include "gradcomp.h"
#include "kernels/common_math.cuh"
#include "tests/common/cpu_world.h"
#include "tests/common/forwarding_transport.h"
#include "tests/common/test_util.h"

namespace {

using gctest::CpuWorld;

constexpr float kM = 0.9f;

gradcompConfig_t dgcConfig() {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = gradcompMethodDgc;
  cfg.density = 0.01f;
  cfg.momentum = kM;
  cfg.momentumCorrection = 1;
  cfg.momentumMasking = 1;
  cfg.clipNorm = 0.0f;
  cfg.warmupSteps = 0;
  cfg.minElements = 1 << 20;  // every call below is smaller: passed through
  cfg.autoTune = 0;
  cfg.cpuTimeoutSec = 10.0f;
  return cfg;
}

// A comm that passes everything through unchanged: the reference's sums.
gradcompConfig_t plainConfig() {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = gradcompMethodNone;
  cfg.autoTune = 0;
  cfg.cpuTimeoutSec = 10.0f;
  return cfg;
}

gradcompStats_t statsOf(gradcompComm_t c) {
  gradcompStats_t s;
  memset(&s, 0, sizeof(s));
  EXPECT_EQ(gradcompGetStats(c, &s), gradcompSuccess);
  return s;
}

// Element type of the test's buffers: fp32 as float, fp16 as its bits.
struct Elem {
  ncclDataType_t type;
  size_t bytes;
  float load(const std::vector<uint8_t>& b, size_t i) const {
    if (type == ncclFloat32) {
      float f;
      memcpy(&f, b.data() + 4 * i, 4);
      return f;
    }
    uint16_t h;
    memcpy(&h, b.data() + 2 * i, 2);
    return gc::halfToFloat(h);
  }
  void store(std::vector<uint8_t>* b, size_t i, float f) const {
    if (type == ncclFloat32) {
      memcpy(b->data() + 4 * i, &f, 4);
    } else {
      const uint16_t h = gc::floatToHalf(f);
      memcpy(b->data() + 2 * i, &h, 2);
    }
  }
};

enum class Route { MinElements, Auto };

// `steps` calls of n input elements per rank through a DGC comm that passes
// them through by `route`, against momentum SGD's velocities summed by a plain
// comm; bit for bit, and every call counted as passed through.
void expectMomentumSgd(int N, size_t n, Elem e, ncclRedOp_t op, bool reduceScatter, Route route,
                       int steps) {
  gradcompConfig_t cfg = dgcConfig();
  if (route == Route::Auto) {
    cfg.autoTune = 1;
    cfg.minElements = 0;
  }
  CpuWorld dgc(N, cfg), plain(N, plainConfig());
  if (route == Route::Auto) {
    // NCCL faster at every size: every call passes through by auto's decision.
    gc::AutoFigures f;
    f.smallCount = 1024;
    f.largeCount = 5120;
    f.ncclUs[0] = 16.0f, f.ncclUs[1] = 32.0f, f.compUs[0] = 48.0f, f.compUs[1] = 80.0f;
    for (int r = 0; r < N; ++r) gc::autoInjectFigures(dgc.comm(r), f);
  }
  const size_t outN = reduceScatter ? n / (size_t)N : n;
  std::vector<std::vector<float>> u(N, std::vector<float>(n, 0.0f));
  // Unkeyed state follows the receive buffer: the buffers stay put, as a
  // training loop's do.
  std::vector<std::vector<uint8_t>> g(N, std::vector<uint8_t>(n * e.bytes)), vel = g;
  std::vector<std::vector<uint8_t>> out(N, std::vector<uint8_t>(outN * e.bytes)), ref = out;
  for (int t = 0; t < steps; ++t) {
    for (int r = 0; r < N; ++r) {
      const std::vector<float> x = gctest::normal(n, 1000 + 37 * (uint64_t)t + (uint64_t)r);
      for (size_t i = 0; i < n; ++i) {
        e.store(&g[r], i, x[i]);
        const float p = kM * u[r][i];
        u[r][i] = p + e.load(g[r], i);
        e.store(&vel[r], i, u[r][i]);
      }
    }
    auto call = [&](CpuWorld& w, std::vector<std::vector<uint8_t>>& in,
                    std::vector<std::vector<uint8_t>>& o) {
      return w.run([&](int r) {
        return reduceScatter ? gradcompReduceScatter(in[r].data(), o[r].data(), outN, e.type, op,
                                                     w.comm(r), nullptr)
                             : gradcompAllReduce(in[r].data(), o[r].data(), n, e.type, op,
                                                 w.comm(r), nullptr);
      });
    };
    auto res = call(dgc, g, out);
    auto resRef = call(plain, vel, ref);
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
      ASSERT_EQ(resRef[r], gradcompSuccess) << gradcompGetLastError();
      for (size_t i = 0; i < outN; ++i) {
        ASSERT_EQ(e.load(out[r], i), e.load(ref[r], i))
            << "step " << t << " rank " << r << " element " << i;
      }
    }
  }
  for (int r = 0; r < N; ++r) {
    const gradcompStats_t s = statsOf(dgc.comm(r));
    EXPECT_EQ(s.callsCompressed, 0u) << r;
    EXPECT_EQ(s.callsPassedThrough, (uint64_t)steps) << r;
    EXPECT_EQ(s.callsAutoPassed, route == Route::Auto ? (uint64_t)steps : 0u) << r;
  }
}

const Elem kF32{ncclFloat32, 4};
const Elem kF16{ncclFloat16, 2};

TEST(DgcMomentumPassThrough, CallsUnderMinElementsAreMomentumSgd) {
  expectMomentumSgd(3, 1000, kF32, ncclSum, false, Route::MinElements, 5);
  expectMomentumSgd(4, 1024, kF32, ncclAvg, false, Route::MinElements, 3);
}

TEST(DgcMomentumPassThrough, CallsAutoPassesAreMomentumSgd) {
  expectMomentumSgd(2, 4096, kF32, ncclSum, false, Route::Auto, 4);
}

TEST(DgcMomentumPassThrough, HalfBuffers) {
  expectMomentumSgd(2, 2048, kF16, ncclSum, false, Route::MinElements, 4);
}

TEST(DgcMomentumPassThrough, ReduceScatter) {
  expectMomentumSgd(4, 4096, kF32, ncclSum, true, Route::MinElements, 4);
  expectMomentumSgd(2, 4096, kF32, ncclAvg, true, Route::Auto, 3);
}

TEST(DgcMomentumPassThrough, OneRankKeepsTheVelocity) {
  expectMomentumSgd(1, 512, kF32, ncclSum, false, Route::MinElements, 3);
}

// A hierarchical comm's compressed reduce-scatter keeps u and v of the node's
// sums in its permuted stage-1 order; a retune that then passes the buffer
// through must send every element's leftover velocity to its own block.
// Compressed steps, a retune to pass-through, passed steps: once the last
// passed step has spent v, every block's outputs summed over the steps are
// the ranks' velocities summed over the steps (u = m*u + g per rank, no
// masking). Small integers and m = 1/2 keep every sum exact.
TEST(DgcMomentumPassThrough, HierReduceScatterRetunedToPassSendsEachBlocksVelocity) {
  const int N = 4, L = 2, compressed = 3, steps = 5;
  const size_t m = 96, n = m * N;
  const float mom = 0.5f;
  gradcompConfig_t cfg = dgcConfig();
  cfg.localSize = L;
  cfg.momentum = mom;
  cfg.momentumMasking = 0;
  cfg.density = 0.05f;
  cfg.minElements = 0;
  cfg.autoTune = 1;
  CpuWorld w(N, cfg);
  gc::AutoFigures f;
  f.smallCount = 1024;
  f.largeCount = 5120;
  f.ncclUs[0] = 64.0f, f.ncclUs[1] = 128.0f, f.compUs[0] = 32.0f, f.compUs[1] = 64.0f;
  for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), f);
  std::vector<std::vector<float>> u(N, std::vector<float>(n, 0.0f)), g(N);
  std::vector<std::vector<float>> out(N, std::vector<float>(m));
  std::vector<double> got(n, 0.0), want(n, 0.0);
  for (int t = 0; t < steps; ++t) {
    if (t == compressed) {
      // NCCL faster at every size from here: the retune passes the buffer.
      std::swap(f.ncclUs, f.compUs);
      for (int r = 0; r < N; ++r) gc::autoInjectFigures(w.comm(r), f);
      auto res = w.run([&](int r) { return gradcompCommRetune(w.comm(r), nullptr); });
      for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    }
    for (int r = 0; r < N; ++r) {
      g[r].resize(n);
      for (size_t i = 0; i < n; ++i) {
        g[r][i] = (float)((int)((i * 7 + (size_t)r * 5 + (size_t)t * 3) % 9) - 4);
        u[r][i] = mom * u[r][i] + g[r][i];
        want[i] += u[r][i];
      }
    }
    auto res = w.run([&](int r) {
      return gradcompReduceScatterKeyed(g[r].data(), out[r].data(), m, ncclFloat32, ncclSum,
                                        w.comm(r), nullptr, 42);
    });
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
      for (size_t e = 0; e < m; ++e) got[(size_t)r * m + e] += out[r][e];
    }
  }
  for (int r = 0; r < N; ++r) {
    const gradcompStats_t s = statsOf(w.comm(r));
    EXPECT_EQ(s.callsCompressed, (uint64_t)compressed) << r;
    EXPECT_EQ(s.callsAutoPassed, (uint64_t)(steps - compressed)) << r;
  }
  for (size_t i = 0; i < n; ++i)
    ASSERT_EQ(got[i], want[i]) << "block " << i / m << " element " << i % m;
}

// Passed steps, a retune to compression, compressed steps, a retune back and
// a passed step that spends v: the outputs summed over the steps are the
// ranks' velocities summed over the steps (u = m*u + g per rank, no masking),
// on a hierarchical comm too, whose compressed calls keep the velocity on
// each rank's shard of the node's sums while a passed call keeps each rank's
// own over the whole buffer: the first compressed call sums the node's into
// the shards first (before, what the node's other ranks held on a rank's
// shard stayed there, frozen, out of every later step). Small integers and
// m = 1/2 keep every sum exact.
void expectPassThenCompressKeepsTheVelocity(bool rs, int localSize, bool resume) {
  SCOPED_TRACE(std::string(rs ? "reduce-scatter" : "allreduce") + ", localSize " +
               std::to_string(localSize) + (resume ? ", resumed" : ""));
  const int N = 4, steps = 5;
  const size_t m = 96, n = m * N;
  const float mom = 0.5f;
  gradcompConfig_t cfg = dgcConfig();
  cfg.localSize = localSize;
  cfg.momentum = mom;
  cfg.momentumMasking = 0;
  cfg.density = 0.05f;
  cfg.minElements = 0;
  cfg.autoTune = 1;
  auto w = std::make_unique<CpuWorld>(N, cfg);
  gc::AutoFigures f;
  f.smallCount = 1024;
  f.largeCount = 5120;
  f.ncclUs[0] = 16.0f, f.ncclUs[1] = 32.0f, f.compUs[0] = 48.0f, f.compUs[1] = 80.0f;
  auto decide = [&](bool compress) {
    if (compress != (f.compUs[0] < f.ncclUs[0])) std::swap(f.ncclUs, f.compUs);
    for (int r = 0; r < N; ++r) gc::autoInjectFigures(w->comm(r), f);
    return w->run([&](int r) { return gradcompCommRetune(w->comm(r), nullptr); });
  };
  for (int r = 0; r < N; ++r) gc::autoInjectFigures(w->comm(r), f);  // NCCL wins: passed
  std::vector<std::vector<float>> u(N, std::vector<float>(n, 0.0f)), g(N);
  std::vector<std::vector<float>> out(N, std::vector<float>(rs ? m : n));
  std::vector<double> got(n, 0.0), want(n, 0.0);
  for (int t = 0; t < steps; ++t) {
    if (t == 2 && resume) {
      // The passed steps' state saved and loaded into a new world: it holds
      // the velocity over the whole buffer, which the loaded comm must know.
      std::vector<std::vector<uint8_t>> blobs(N);
      for (int r = 0; r < N; ++r) blobs[r] = gctest::savedState(w->comm(r));
      w = std::make_unique<CpuWorld>(N, cfg);
      auto res = w->run([&](int r) {
        return gradcompCommLoadState(w->comm(r), blobs[r].data(), blobs[r].size());
      });
      for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    }
    if (t == 2 || t == 4) {
      for (gradcompResult_t res : decide(t == 2)) ASSERT_EQ(res, gradcompSuccess);
    }
    for (int r = 0; r < N; ++r) {
      g[r].resize(n);
      for (size_t i = 0; i < n; ++i) {
        g[r][i] = (float)((int)((i * 7 + (size_t)r * 5 + (size_t)t * 3) % 9) - 4);
        u[r][i] = mom * u[r][i] + g[r][i];
        want[i] += u[r][i];
      }
    }
    auto res = w->run([&](int r) {
      return rs ? gradcompReduceScatterKeyed(g[r].data(), out[r].data(), m, ncclFloat32, ncclSum,
                                             w->comm(r), nullptr, 42)
                : gradcompAllReduceKeyed(g[r].data(), out[r].data(), n, ncclFloat32, ncclSum,
                                         w->comm(r), nullptr, 42);
    });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    if (rs) {
      for (int r = 0; r < N; ++r)
        for (size_t e = 0; e < m; ++e) got[(size_t)r * m + e] += out[r][e];
    } else {
      for (size_t i = 0; i < n; ++i) got[i] += out[0][i];
    }
  }
  for (int r = 0; r < N; ++r) {
    const gradcompStats_t s = statsOf(w->comm(r));
    EXPECT_EQ(s.callsCompressed, 2u) << r;
    EXPECT_EQ(s.callsAutoPassed, resume ? 1u : 3u) << r;
  }
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], want[i]) << "element " << i;
}

TEST(DgcMomentumPassThrough, RetunedFromPassToCompressKeepsEveryRanksVelocity) {
  for (bool rs : {false, true}) {
    for (int localSize : {1, 2}) {
      for (bool resume : {false, true})
        expectPassThenCompressKeepsTheVelocity(rs, localSize, resume);
    }
  }
}

// Without momentum correction the comm keeps no velocity: a passed call is
// NCCL's, unchanged (the optimizer keeps its own momentum then).
TEST(DgcMomentumPassThrough, WithoutCorrectionCallsPassUnchanged) {
  gradcompConfig_t cfg = dgcConfig();
  cfg.momentumCorrection = 0;
  CpuWorld w(2, cfg);
  const size_t n = 1000;
  std::vector<std::vector<float>> in(2), out(2, std::vector<float>(n));
  for (int t = 0; t < 3; ++t) {
    for (int r = 0; r < 2; ++r) in[r] = gctest::normal(n, 50 + 2 * (uint64_t)t + (uint64_t)r);
    auto res = w.run([&](int r) {
      return gradcompAllReduce(in[r].data(), out[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                               nullptr);
    });
    for (int r = 0; r < 2; ++r) {
      ASSERT_EQ(res[r], gradcompSuccess);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[r][i], 0.0f + in[0][i] + in[1][i]);
    }
  }
  EXPECT_TRUE(w.comm(0)->states.empty());
}

// A NaN gradient reaches that step's output, and every rank then clears its
// velocity (the step a loss scaler skips leaves nothing), so the next steps
// stay finite and are momentum SGD's started afresh.
TEST(DgcMomentumPassThrough, NonFiniteGradientDoesNotPoisonTheVelocity) {
  CpuWorld w(2, dgcConfig());
  const size_t n = 256, at = 7;
  std::vector<std::vector<float>> u(2, std::vector<float>(n, 0.0f));
  std::vector<std::vector<float>> g(2), out(2, std::vector<float>(n));
  for (int t = 0; t < 4; ++t) {
    for (int r = 0; r < 2; ++r) g[r] = gctest::normal(n, 70 + 2 * (uint64_t)t + (uint64_t)r);
    if (t == 1) g[0][at] = NAN;
    auto res = w.run([&](int r) {
      return gradcompAllReduce(g[r].data(), out[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                               nullptr);
    });
    for (int r = 0; r < 2; ++r) {
      ASSERT_EQ(res[r], gradcompSuccess);
      for (size_t i = 0; i < n; ++i) {
        // The step with the NaN leaves rank 0's u of that element alone.
        if (t == 1 && r == 0 && i == at) continue;
        const float p = kM * u[r][i];
        u[r][i] = p + g[r][i];
      }
    }
    for (int r = 0; r < 2; ++r) {
      for (size_t i = 0; i < n; ++i) {
        if (t == 1 && i == at) {
          EXPECT_TRUE(isnan(out[r][i])) << r;
        } else {
          ASSERT_EQ(out[r][i], 0.0f + u[0][i] + u[1][i]) << "step " << t << " element " << i;
        }
      }
    }
    if (t == 1) {
      for (auto& ur : u) std::fill(ur.begin(), ur.end(), 0.0f);
    }
  }
}

// A passed reduce-scatter whose exchange went out (every rank's output holds
// its velocity) but whose output's check failed (the flag's allreduce) fails
// with u advanced, as a failed exchange leaves it, and v spent: the velocity
// reached the output once. The next call sends only its own velocity,
// momentum SGD's with the failed step counted once. (Before, v was left
// unspent and went out a second time with the next call.)
TEST(DgcMomentumPassThrough, AReduceScatterWhoseCheckFailsSendsItsVelocityOnce) {
  const int N = 2;
  const size_t m = 256, n = m * N;
  CpuWorld w(N, dgcConfig());
  std::vector<gctest::FailingFlagTransport*> tr(N);
  for (int r = 0; r < N; ++r) {
    gradcompComm_t c = w.comm(r);
    tr[r] = new gctest::FailingFlagTransport(std::move(c->transport));
    c->transport.reset(tr[r]);
  }
  std::vector<std::vector<float>> u(N, std::vector<float>(n, 0.0f));
  std::vector<std::vector<float>> g(N), out(N, std::vector<float>(m));
  for (int t = 0; t < 3; ++t) {
    for (int r = 0; r < N; ++r) tr[r]->armed = t == 1;
    for (int r = 0; r < N; ++r) {
      g[r] = gctest::normal(n, 90 + 2 * (uint64_t)t + (uint64_t)r);
      for (size_t i = 0; i < n; ++i) {
        const float p = kM * u[r][i];
        u[r][i] = p + g[r][i];
      }
    }
    auto res = w.run([&](int r) {
      return gradcompReduceScatter(g[r].data(), out[r].data(), m, ncclFloat32, ncclSum, w.comm(r),
                                   nullptr);
    });
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(res[r], t == 1 ? gradcompSystemError : gradcompSuccess) << "step " << t;
      for (size_t i = 0; i < m; ++i) {
        ASSERT_EQ(out[r][i], 0.0f + u[0][r * m + i] + u[1][r * m + i])
            << "step " << t << " rank " << r << " element " << i;
      }
    }
  }
}

}  // namespace
