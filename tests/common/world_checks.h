// Pieces the CPU-world tests of the compressed collectives share (flat and
// hierarchical allreduce and reduce-scatter): the QSGD config they run, the
// persistent buffers the library reduces in, and the one-quantization error
// bound's terms and check. The references themselves stay in ref_*.h.
#pragma once

#include <gtest/gtest.h>
#include <math.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "gradcomp.h"
#include "plugin/collective.h"
#include "plugin/comm.h"
#include "tests/common/cpu_world.h"
#include "tests/common/ref_algos.h"
#include "tests/common/test_util.h"

namespace gctest {

// QSGD as these tests run it: every size compressed, buckets of 64, 4 bits.
inline gradcompConfig_t qsgdTestConfig() {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 0;
  cfg.bucketSize = 64;
  cfg.bits = 4;
  return cfg;
}

// A sparse method as these tests run it: every size compressed, density 5%.
inline gradcompConfig_t sparseTestConfig(gradcompMethod_t method) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = method;
  cfg.minElements = 0;
  cfg.density = 0.05f;
  return cfg;
}

// s of the one-quantization bound scale/s: the widest level step is
// scale/s for uniform levels and (2s - 1)/s^2 of the scale for square ones
// (GRADCOMP_LEVELS=square: its top step), which is scale/(s^2 / (2s - 1)).
inline double boundLevels(const gradcompConfig_t& c) {
  const double s = gc::qsgd::levels(c.bits);
  return c.levels == gradcompLevelsSquare ? s * s / (2 * s - 1) : s;
}

// The dense algorithm the library runs for a QSGD config over `ranks` ranks
// (auto, and hier between nodes: allgather up to two ranks, else two-shot).
inline gradcompAlgo_t effectiveAlgo(gradcompAlgo_t algo, int ranks) {
  if (algo == gradcompAlgoAuto || algo == gradcompAlgoHier) {
    return ranks <= 2 ? gradcompAlgoAllgather : gradcompAlgoTwoShot;
  }
  return algo;
}

// The buffer of rank r's data for dtype t (fp32, or the 16-bit copy).
inline void* bufferOf(ref::Rank& r, gc::DType t) {
  return t == gc::DType::F32 ? (void*)r.f32.data() : (void*)r.half.data();
}

// A new step: `in` takes the residuals the reference holds, and the values
// are copied into the persistent buffers `bufs` (the library's residual
// state follows a buffer's address, so the buffers must not move).
inline void loadStep(std::vector<ref::Rank>& in, const std::vector<ref::Rank>& refs,
                     std::vector<ref::Rank>& bufs) {
  for (size_t i = 0; i < in.size(); ++i) {
    in[i].residual = refs[i].residual, in[i].ownerRes = refs[i].ownerRes;
    std::copy(in[i].f32.begin(), in[i].f32.end(), bufs[i].f32.begin());
    std::copy(in[i].half.begin(), in[i].half.end(), bufs[i].half.begin());
  }
}

// In-place allreduce of every rank's buffer.
inline std::vector<gradcompResult_t> allReduceInPlace(CpuWorld& world, std::vector<ref::Rank>& bufs,
                                                      gc::DType t, size_t n, bool avg) {
  return world.run([&](int r) {
    void* p = bufferOf(bufs[r], t);
    return gradcompAllReduce(p, p, n, ref::nccl(t), avg ? ncclAvg : ncclSum, world.comm(r),
                             nullptr);
  });
}

// Adds, per bucket of `bucket` elements of v, max|v + res| to sumMax: a
// QSGD encoder's error term for that bucket.
inline void addBucketMax(const float* v, const float* res, size_t count, size_t bucket,
                         std::vector<double>& sumMax) {
  const size_t nb = (count + bucket - 1) / bucket;
  for (size_t b = 0; b < nb; ++b) {
    double mx = 0;
    for (size_t k = b * bucket; k < std::min(count, (b + 1) * bucket); ++k) {
      mx = std::max(mx, fabs((double)v[k] + res[k]));
    }
    sumMax[b] += mx;
  }
}

// The allowed error for a quantization bound: the bound, the output type's
// rounding of the value and of the bound, and an absolute floor.
inline double boundWithSlack(double bound, double exact, gc::DType t, double floor) {
  const double slack = t == gc::DType::F32 ? 1e-5 : t == gc::DType::F16 ? 1e-3 : 8e-3;
  return bound * (1 + 1e-5) + slack * (fabs(exact) + bound) + floor;
}

// Before an allreduce: the exact sum of the inputs and, per bucket, the sum
// over the ranks of max|x + residual|.
inline void allReduceBoundTerms(const std::vector<ref::Rank>& in, gc::DType t, size_t n,
                                size_t bucket, std::vector<double>& exact,
                                std::vector<double>& sumMax) {
  exact.assign(n, 0.0);
  sumMax.assign((n + bucket - 1) / bucket, 0.0);
  for (const ref::Rank& r : in) {
    auto x = ref::widen(r, t, n);
    for (size_t k = 0; k < n; ++k) exact[k] += x[k];
    addBucketMax(x.data(), r.residual.data(), n, bucket, sumMax);
  }
}

// After it: `got` (the result of N ranks) is within q quantizations of the
// exact sum, each erring by at most (sum of the inputs' bucket max)/s.
inline void checkAllReduceBound(const std::vector<float>& got, const std::vector<double>& exact,
                                const std::vector<double>& sumMax, int q, double s, int N, bool avg,
                                gc::DType t, size_t bucket) {
  for (size_t k = 0; k < got.size(); ++k) {
    double bound = q * sumMax[k / bucket] / s;
    double e = fabs((double)got[k] * (avg ? N : 1) - exact[k]);
    ASSERT_LE(e, boundWithSlack(bound, exact[k], t, 0)) << "k=" << k;
  }
}

// The reduce-scatter residual of a comm's only reduce-scatter buffer.
inline const float* rsResidual(gradcompComm_t c) {
  for (auto& kv : c->states) {
    if (std::get<0>(kv.first) >= gc::kStateReduceScatter) return kv.second.residual;
  }
  return nullptr;
}

// An fp32 Sum reduce-scatter of every rank's g[r] into out[r] (m each).
inline std::vector<gradcompResult_t> reduceScatterSum(CpuWorld& world,
                                                      std::vector<std::vector<float>>& g,
                                                      std::vector<std::vector<float>>& out,
                                                      size_t m) {
  return world.run([&](int r) {
    return gradcompReduceScatter(g[r].data(), out[r].data(), m, ncclFloat32, ncclSum, world.comm(r),
                                 nullptr);
  });
}

// Reduce-scatters whose ranks disagree on recvcount: rank `odd` passes 1001
// or 10, the others 1000, with minElements 1000 (both compressing, or one
// passing through); every rank fails with gradcompInvalidUsage, no hang (and
// no write past the outputs of 1001).
inline void expectRecvcountDisagreementFails(gradcompConfig_t cfg, int N, int odd) {
  cfg.minElements = 1000;
  for (size_t other : {(size_t)1001, (size_t)10}) {
    SCOPED_TRACE(testing::Message() << "other=" << other);
    CpuWorld world(N, cfg);
    std::vector<std::vector<float>> g(N, normal(N * 1001, 2)), out(N, std::vector<float>(1001));
    auto res = world.run([&](int r) {
      return gradcompReduceScatter(g[r].data(), out[r].data(), r == odd ? other : 1000, ncclFloat32,
                                   ncclSum, world.comm(r), nullptr);
    });
    for (int r = 0; r < N; ++r) EXPECT_EQ(res[r], gradcompInvalidUsage) << "rank " << r;
  }
}

// A reduce-scatter's outputs: out of place, a block of m per rank in a
// buffer of the dtype; in place, block r of rank r's send buffer.
struct RsOutputs {
  std::vector<std::vector<float>> f32;
  std::vector<std::vector<uint16_t>> half;
  RsOutputs(int N, size_t m) : f32(N, std::vector<float>(m)), half(N, std::vector<uint16_t>(m)) {}

  void* recv(ref::Rank& buf, int r, gc::DType t, size_t m, bool inPlace) {
    if (inPlace)
      return static_cast<char*>(bufferOf(buf, t)) + r * m * (t == gc::DType::F32 ? 4 : 2);
    return t == gc::DType::F32 ? (void*)f32[r].data() : (void*)half[r].data();
  }
  // One reduce-scatter of every rank's bufs[r] into its output.
  std::vector<gradcompResult_t> run(CpuWorld& world, std::vector<ref::Rank>& bufs, gc::DType t,
                                    size_t m, bool avg, bool inPlace) {
    return world.run([&](int r) {
      return gradcompReduceScatter(bufferOf(bufs[r], t), recv(bufs[r], r, t, m, inPlace), m,
                                   ref::nccl(t), avg ? ncclAvg : ncclSum, world.comm(r), nullptr);
    });
  }
  // Rank r's block as fp32.
  std::vector<float> read(ref::Rank& buf, int r, gc::DType t, size_t m, bool inPlace) {
    const void* base =
        inPlace ? bufferOf(buf, t)
                : (t == gc::DType::F32 ? (const void*)f32[r].data() : (const void*)half[r].data());
    std::vector<float> got(m);
    for (size_t k = 0; k < m; ++k) got[k] = gc::loadAsFloat(base, t, (inPlace ? r * m : 0) + k);
    return got;
  }
};

}  // namespace gctest
