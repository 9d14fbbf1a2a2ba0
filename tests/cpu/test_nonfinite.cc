// Non-finite gradients on the sparse methods (issue 16, defect 6), on the
// CPU world against the serial references of tests/common (which model the
// contract from its description): a NaN or Inf gradient element makes the
// call's output non-finite where docs/reliability.md says, and every rank
// then clears the buffer's error feedback (v and u).
//
// "Recovers" is checked as: (1) after the poisoned call every rank's v and u
// are zero, so the step AMP's scaler skips leaves no trace in gradcomp's
// state; (2) every output and every rank's state of that and the following
// calls is bit-identical to the reference; (3) the next calls, with finite
// gradients, give finite outputs on every rank. The same holds for finite
// gradients whose sum overflows (OverflowingSumDoesNotComeBackThroughError-
// Feedback, every method; for QSGD also bit for bit against its references,
// QsgdOverflowingStepEqualsTheReferences).
#include <gtest/gtest.h>
#include <math.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gradcomp.h"
#include "plugin/checks.h"
#include "plugin/comm.h"
#include "tests/common/cpu_world.h"
#include "tests/common/forwarding_backend.h"
#include "tests/common/forwarding_transport.h"
#include "tests/common/ref_hier.h"
#include "tests/common/ref_hier_rs.h"
#include "tests/common/ref_rs.h"
#include "tests/common/ref_sparse.h"
#include "tests/common/test_util.h"
#include "tests/common/world_checks.h"

namespace {

using gc::DType;
using namespace gctest::ref;

struct Case {
  std::string name;
  gradcompConfig_t cfg;
};

std::vector<Case> cases() {
  std::vector<Case> cs;
  auto add = [&](const std::string& name, gradcompMethod_t m, auto&& edit) {
    gradcompConfig_t cfg = gctest::sparseTestConfig(m);
    edit(cfg);
    cs.push_back({name, cfg});
  };
  add("topk-threshold", gradcompMethodTopk, [](gradcompConfig_t&) {});
  add("topk-exact", gradcompMethodTopk,
      [](gradcompConfig_t& c) { c.select = gradcompSelectExact; });
  add("topk-dense", gradcompMethodTopk, [](gradcompConfig_t& c) { c.density = 0.5f; });
  add("dgc-masking", gradcompMethodDgc, [](gradcompConfig_t& c) { c.momentumMasking = 1; });
  add("dgc-no-masking-bf16", gradcompMethodDgc, [](gradcompConfig_t& c) {
    c.momentumMasking = 0;
    c.valueType = ncclBfloat16;
  });
  add("dgc-exact-clip", gradcompMethodDgc, [](gradcompConfig_t& c) {
    c.select = gradcompSelectExact;
    c.momentumMasking = 0;
    c.clipNorm = 50.0f;
  });
  add("dgc-no-correction", gradcompMethodDgc,
      [](gradcompConfig_t& c) { c.momentumCorrection = 0; });
  add("randk", gradcompMethodRandk, [](gradcompConfig_t&) {});
  return cs;
}

const float kBad[] = {std::numeric_limits<float>::quiet_NaN(),
                      -std::numeric_limits<float>::infinity()};
constexpr int kSteps = 4;
constexpr int kPoisoned = 1;  // the call whose gradient holds the bad element
constexpr int kRank = 1;      // the rank whose gradient holds it

std::vector<std::vector<float>> inputs(int N, size_t n, int step) {
  std::vector<std::vector<float>> g(N);
  for (int r = 0; r < N; ++r) g[r] = gctest::normal(n, 1000 * step + 17 * r + n, 2.0f);
  return g;
}

gc::BufferState* stateOf(gradcompComm_t c, bool reduceScatter) {
  for (auto& kv : c->states) {
    if ((std::get<0>(kv.first) >= gc::kStateReduceScatter) == reduceScatter) return &kv.second;
  }
  return nullptr;
}

size_t countNonFinite(const std::vector<float>& x) {
  size_t c = 0;
  for (float f : x) c += !std::isfinite(f);
  return c;
}

// After the poisoned call: rank r's v (and u) are all zero.
void expectCleared(const gc::BufferState& bs, size_t n, bool haveU, int r) {
  size_t held = 0;
  for (size_t i = 0; i < n; ++i)
    held += bs.residual[i] != 0.0f || (haveU && bs.momentum[i] != 0.0f);
  EXPECT_EQ(held, 0u) << "rank " << r << " kept state after a non-finite output";
}

// Flat allreduce: outputs and every rank's v/u bit-equal to refSparse; every
// rank's state cleared by the poisoned call.
void checkAllReduce(const Case& c, float bad) {
  SCOPED_TRACE(c.name + " bad=" + std::to_string(bad));
  const int N = 4;
  const size_t n = 3000, at = 1234;
  gctest::CpuWorld w(N, c.cfg);
  std::vector<SparseState> st(N);
  // One buffer per rank for all calls: gradcomp keys its state by address.
  std::vector<std::vector<float>> buf(N, std::vector<float>(n));
  const RefSparseSetup S = refSparseSetup(c.cfg, n, N, 0);
  for (int step = 0; step < kSteps; ++step) {
    std::vector<std::vector<float>> g = inputs(N, n, step);
    if (step == kPoisoned) g[kRank][at] = bad;
    for (int r = 0; r < N; ++r) std::copy(g[r].begin(), g[r].end(), buf[r].begin());
    auto res = w.run([&](int r) {
      return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                               nullptr);
    });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    SparseCall call;
    const std::vector<float> expect = refSparse(c.cfg, DType::F32, false, step, g, st, &call);
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(memcmp(buf[r].data(), expect.data(), n * 4), 0) << "rank " << r << " step " << step;
      if (step != kPoisoned) {
        ASSERT_EQ(countNonFinite(buf[r]), 0u) << "rank " << r << " step " << step;
      } else if (S.randk) {
        // Every drawn element is NaN, nothing else.
        EXPECT_EQ(countNonFinite(buf[r]), call.k) << "rank " << r;
      } else {
        EXPECT_FALSE(std::isfinite(buf[r][at])) << "rank " << r;
        EXPECT_EQ(countNonFinite(buf[r]), 1u) << "rank " << r;
      }
      if (!S.keepV) continue;
      const gc::BufferState* bs = stateOf(w.comm(r), false);
      ASSERT_EQ(memcmp(bs->residual, st[r].v.data(), n * 4), 0) << "v of rank " << r;
      if (S.haveU) ASSERT_EQ(memcmp(bs->momentum, st[r].u.data(), n * 4), 0) << "u of rank " << r;
      if (step == kPoisoned) expectCleared(*bs, n, S.haveU, r);
    }
  }
}

// Flat reduce-scatter: the element sits in block `blk` of rank kRank, so its
// owner blk sees it (top-k/DGC at the element, rand-k at the k drawn
// elements of a peer's block, the element itself in the owner's own block).
void checkReduceScatter(const Case& c, float bad, int blk) {
  SCOPED_TRACE(c.name + " bad=" + std::to_string(bad) + " block=" + std::to_string(blk));
  const int N = 3;
  const size_t m = 2000, at = blk * m + 77;
  const size_t n = N * m;
  gctest::CpuWorld w(N, c.cfg);
  std::vector<SparseState> st(N);
  std::vector<std::vector<float>> in(N, std::vector<float>(n)), out(N, std::vector<float>(m));
  const RefSparseSetup S = refSparseSetup(c.cfg, m, N, 0);
  for (int step = 0; step < kSteps; ++step) {
    std::vector<std::vector<float>> g = inputs(N, n, step);
    if (step == kPoisoned) g[kRank][at] = bad;
    for (int r = 0; r < N; ++r) std::copy(g[r].begin(), g[r].end(), in[r].begin());
    auto res = gctest::reduceScatterSum(w, in, out, m);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    const auto expect = refSparseReduceScatter(c.cfg, DType::F32, false, step, g, st);
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(memcmp(out[r].data(), expect[r].data(), m * 4), 0)
          << "rank " << r << " step " << step;
      const size_t bad = countNonFinite(out[r]);
      if (step != kPoisoned || r != blk) {
        ASSERT_EQ(bad, 0u) << "rank " << r << " step " << step;
      } else if (S.randk && blk != kRank) {
        EXPECT_EQ(bad, S.p.k) << "rank " << r;
      } else {
        EXPECT_FALSE(std::isfinite(out[r][at - blk * m])) << "rank " << r;
        EXPECT_EQ(bad, 1u) << "rank " << r;
      }
      if (!S.keepV) continue;
      const gc::BufferState* bs = stateOf(w.comm(r), true);
      ASSERT_EQ(memcmp(bs->residual, st[r].v.data(), n * 4), 0) << "v of rank " << r;
      if (S.haveU) ASSERT_EQ(memcmp(bs->momentum, st[r].u.data(), n * 4), 0) << "u of rank " << r;
      // Every rank, the owners of finite blocks too.
      if (step == kPoisoned) expectCleared(*bs, n, S.haveU, r);
    }
  }
}

// Hierarchical, L = 2 (two nodes of two): the node sums carry the element to
// the shard's inter-node exchange, which is the flat sparse code.
void checkHier(const Case& c, float bad) {
  SCOPED_TRACE(c.name + " hier bad=" + std::to_string(bad));
  const int N = 4, L = 2;
  gradcompConfig_t cfg = c.cfg;
  cfg.localSize = L;
  {
    const size_t n = 5000, at = 4321;
    gctest::CpuWorld w(N, cfg);
    std::vector<std::vector<SparseState>> st;
    std::vector<std::vector<float>> buf(N, std::vector<float>(n));
    for (int step = 0; step < kSteps; ++step) {
      std::vector<std::vector<float>> g = inputs(N, n, step);
      if (step == kPoisoned) g[kRank][at] = bad;
      for (int r = 0; r < N; ++r) std::copy(g[r].begin(), g[r].end(), buf[r].begin());
      auto res = w.run([&](int r) {
        return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                                 nullptr);
      });
      for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
      const std::vector<float> expect = refHierSparse(cfg, DType::F32, false, step, g, st, L);
      for (int r = 0; r < N; ++r) {
        ASSERT_EQ(memcmp(buf[r].data(), expect.data(), n * 4), 0)
            << "rank " << r << " step " << step;
        if (step == kPoisoned) {
          EXPECT_GT(countNonFinite(buf[r]), 0u) << "rank " << r;
          if (c.cfg.method != gradcompMethodRandk) EXPECT_FALSE(std::isfinite(buf[r][at]));
        } else {
          ASSERT_EQ(countNonFinite(buf[r]), 0u) << "rank " << r << " step " << step;
        }
      }
    }
  }
  {
    const size_t m = 1500, n = N * m, at = 2 * m + 5;  // owner: rank 2
    gctest::CpuWorld w(N, cfg);
    std::vector<std::vector<SparseState>> st;
    std::vector<std::vector<float>> in(N, std::vector<float>(n)), out(N, std::vector<float>(m));
    for (int step = 0; step < kSteps; ++step) {
      std::vector<std::vector<float>> g = inputs(N, n, step);
      if (step == kPoisoned) g[kRank][at] = bad;
      for (int r = 0; r < N; ++r) std::copy(g[r].begin(), g[r].end(), in[r].begin());
      auto res = gctest::reduceScatterSum(w, in, out, m);
      for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
      const auto expect = refHierSparseReduceScatter(cfg, DType::F32, false, step, g, st, L);
      for (int r = 0; r < N; ++r) {
        ASSERT_EQ(memcmp(out[r].data(), expect[r].data(), m * 4), 0)
            << "rank " << r << " step " << step;
        if (step == kPoisoned && r == 2) {
          EXPECT_GT(countNonFinite(out[r]), 0u);
        } else {
          ASSERT_EQ(countNonFinite(out[r]), 0u) << "rank " << r << " step " << step;
        }
      }
    }
  }
}

TEST(NonFinite, AllReduceClearsStateAndReachesOutput) {
  for (const Case& c : cases())
    for (float bad : kBad) checkAllReduce(c, bad);
}

TEST(NonFinite, ReduceScatterClearsStateAndReachesOwner) {
  for (const Case& c : cases())
    for (float bad : kBad)
      for (int blk : {2, kRank}) checkReduceScatter(c, bad, blk);
}

TEST(NonFinite, HierarchicalClearsStateAndReachesOutput) {
  for (const Case& c : cases())
    for (float bad : kBad) checkHier(c, bad);
}

// Threshold selection where the poisoned rank's v has more qualifying
// entries than slots (all of the same magnitude, at the first call) and the
// bad element lies past the first kmax: it is still sent, so the output is
// non-finite there on every rank (the reference models it), and every rank's
// state is then cleared.
TEST(NonFinite, ThresholdOverflowStillSendsTheElement) {
  for (const Case& c : cases()) {
    if (c.cfg.select == gradcompSelectExact || c.cfg.method == gradcompMethodRandk) continue;
    for (float bad : kBad) {
      SCOPED_TRACE(c.name + " bad=" + std::to_string(bad));
      const int N = 4;
      const size_t n = 3000, at = n - 2;
      gctest::CpuWorld w(N, c.cfg);
      std::vector<SparseState> st(N);
      std::vector<std::vector<float>> buf(N, std::vector<float>(n));
      const RefSparseSetup S = refSparseSetup(c.cfg, n, N, 0);
      if ((size_t)N * S.p.kmax * (4 + S.vb) >= 4 * n) continue;  // dense: all of v is sent
      ASSERT_LT(S.p.kmax, at);
      for (int step = 0; step < 2; ++step) {
        std::vector<std::vector<float>> g = inputs(N, n, step);
        if (step == 0) {
          for (size_t i = 0; i < n; ++i) g[kRank][i] = i % 2 ? 0.25f : -0.25f;
          g[kRank][at] = bad;
        }
        for (int r = 0; r < N; ++r) std::copy(g[r].begin(), g[r].end(), buf[r].begin());
        auto res = w.run([&](int r) {
          return gradcompAllReduce(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                                   nullptr);
        });
        for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
        const std::vector<float> expect = refSparse(c.cfg, DType::F32, false, step, g, st);
        for (int r = 0; r < N; ++r) {
          ASSERT_EQ(memcmp(buf[r].data(), expect.data(), n * 4), 0)
              << "rank " << r << " step " << step;
          EXPECT_EQ(countNonFinite(buf[r]), step == 0 ? 1u : 0u) << "rank " << r;
          if (step == 0) EXPECT_FALSE(std::isfinite(buf[r][at])) << "rank " << r;
        }
        if (step == 0 && S.keepV) {
          for (int r = 0; r < N; ++r) expectCleared(*stateOf(w.comm(r), false), n, S.haveU, r);
        }
      }
    }
  }
}

// The shared math: an element whose v would not be finite (a NaN/Inf g, or
// an overflow of finite v + u) keeps u, leaves its value in v for the
// selectors and its old v in keep; settle puts the old v back and clears
// (with u) only finite elements.
TEST(NonFinite, AccumulateAndSettleKeepTheOldState) {
  using namespace gc::sparse;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct {
    float g, u, v;
  } in[] = {{nan, 0.5f, 2.0f},
            {-INFINITY, 0.5f, 2.0f},
            {3e38f, 0.0f, 3e38f},
            {1.0f, 3e38f, 2.0f},
            {1.0f, 0.5f, 2.0f}};
  for (auto& e : in) {
    for (bool withU : {false, true}) {
      float u = e.u, v = e.v, keep = -1.0f;
      accumulate(e.g, 1.0f, 10.0f, withU ? &u : nullptr, &v, true, &keep);
      EXPECT_EQ(gc::floatToBits(keep), gc::floatToBits(e.v));
      const float ux = withU ? 10.0f * e.u + e.g : e.g;
      const bool finite = std::isfinite(ux) && std::isfinite(e.v + ux);
      EXPECT_EQ(std::isfinite(v), finite) << e.g << " " << e.u << " " << e.v << " " << withU;
      EXPECT_EQ(gc::floatToBits(u), gc::floatToBits(withU && finite ? ux : e.u));
      if (finite) EXPECT_EQ(v, e.v + ux);
      for (bool clear : {false, true}) {
        float vs = v, us = u;
        settle(&vs, keep, &us, clear);
        if (!finite) {
          EXPECT_EQ(gc::floatToBits(vs), gc::floatToBits(e.v));
          EXPECT_EQ(gc::floatToBits(us), gc::floatToBits(u));
        } else {
          EXPECT_EQ(vs, clear ? 0.0f : v);
          EXPECT_EQ(us, clear ? 0.0f : u);
        }
      }
    }
  }
  // The residual of a non-finite sent value stays for settle; masking
  // leaves its u; the flag is NaN exactly when v is not finite.
  EXPECT_TRUE(std::isnan(residualAfterSend(nan, nan)));
  EXPECT_EQ(residualAfterSend(1.5f, 1.5f), 0.0f);
  EXPECT_FALSE(masksAfterSend(INFINITY));
  EXPECT_TRUE(masksAfterSend(-2.0f));
  EXPECT_EQ(nonFiniteFlag(-3.0f), 0.0f);
  EXPECT_TRUE(std::isnan(nonFiniteFlag(INFINITY)));
  EXPECT_EQ(flagged(2.0f, 0.0f), 2.0f);
  EXPECT_TRUE(std::isnan(flagged(2.0f, nonFiniteFlag(nan))));
}

}  // namespace

namespace {

// A finite gradient whose sum over the ranks overflows the buffer type (a
// loss scale too large, as AMP's GradScaler meets at each growth): that
// call's output is non-finite on every rank and the scaler skips the step.
// What error feedback kept of it (the leftovers a sparse call did not send,
// DGC's velocity, what quantization lost) must not come back: every later
// call, with ordinary gradients, is finite on every rank.
struct OverflowCase {
  std::string name;
  gradcompConfig_t cfg;
};

std::vector<OverflowCase> overflowCases() {
  std::vector<OverflowCase> cs;
  for (int L : {0, 2}) {
    const std::string lay = L ? "-hier" : "";
    auto add = [&](const std::string& name, gradcompConfig_t cfg) {
      cfg.localSize = L;
      cfg.cpuTimeoutSec = 10.0f;
      cs.push_back({name + lay, cfg});
    };
    gradcompConfig_t q = gctest::qsgdTestConfig();
    add("qsgd", q);
    q.algo = gradcompAlgoRing;
    add("qsgd-ring", q);
    q.algo = gradcompAlgoAllgather;
    add("qsgd-allgather", q);
    q = gctest::qsgdTestConfig();
    q.bits = 2;
    add("qsgd-2bit", q);
    q.algo = gradcompAlgoRing;
    add("qsgd-2bit-ring", q);
    q.algo = gradcompAlgoAllgather;
    add("qsgd-2bit-allgather", q);
    q = gctest::qsgdTestConfig();
    q.elias = 1;
    add("qsgd-elias", q);
    add("topk", gctest::sparseTestConfig(gradcompMethodTopk));
    gradcompConfig_t e = gctest::sparseTestConfig(gradcompMethodTopk);
    e.select = gradcompSelectExact;
    add("topk-exact", e);
    add("randk", gctest::sparseTestConfig(gradcompMethodRandk));
    add("dgc", gctest::sparseTestConfig(gradcompMethodDgc));
    gradcompConfig_t d = gctest::sparseTestConfig(gradcompMethodDgc);
    d.density = 0.5f;  // the dense fallback
    add("dgc-dense", d);
  }
  return cs;
}

constexpr int kOverflowStep = 2;
constexpr int kOverflowSteps = 8;

// Rank r's gradient at `step`: ordinary values (|g| of a few units), but at
// kOverflowStep, where every element is finite in type t and N of them sum
// past its largest value (fp32: 1.5e38 over 4 ranks; fp16: 30000).
void overflowGradient(int N, int r, int step, gc::DType t, size_t n, std::vector<float>* g) {
  *g = gctest::normal(n, 700 * step + 13 * r + n, 0.5f);
  if (step == kOverflowStep) {
    const float big = t == gc::DType::F32 ? 3.0e38f / (float)N * 2.0f : 60000.0f / N * 2.0f;
    for (size_t i = 0; i < n; ++i) (*g)[i] = i % 3 ? big : -big * 0.75f;
  }
}

// Calls after the overflowing one whose output held a non-finite value, or a
// finite one of the overflow's magnitude (its leftovers delivered later), on
// any rank (-1 when a call failed; -2 when the overflowing call's output was
// finite, which would make the case test nothing).
int laterNonFiniteCalls(const gradcompConfig_t& cfg, gc::DType t, bool reduceScatter) {
  const int N = 4;
  const size_t m = 1536, n = reduceScatter ? N * m : 4096, outN = reduceScatter ? m : n;
  const ncclDataType_t nt = t == gc::DType::F32 ? ncclFloat32 : ncclFloat16;
  const size_t esz = t == gc::DType::F32 ? 4 : 2;
  gctest::CpuWorld w(N, cfg);
  std::vector<std::vector<char>> in(N, std::vector<char>(n * esz)),
      out(N, std::vector<char>(outN * esz));
  int later = 0;
  for (int step = 0; step < kOverflowSteps; ++step) {
    for (int r = 0; r < N; ++r) {
      std::vector<float> g;
      overflowGradient(N, r, step, t, n, &g);
      if (t == gc::DType::F32) {
        memcpy(in[r].data(), g.data(), n * 4);
      } else {
        uint16_t* h = reinterpret_cast<uint16_t*>(in[r].data());
        for (size_t i = 0; i < n; ++i) h[i] = gc::floatToHalf(g[i]);
      }
    }
    auto res = w.run([&](int r) {
      return reduceScatter ? gradcompReduceScatter(in[r].data(), out[r].data(), m, nt, ncclSum,
                                                   w.comm(r), nullptr)
                           : gradcompAllReduce(in[r].data(), out[r].data(), n, nt, ncclSum,
                                               w.comm(r), nullptr);
    });
    for (int r = 0; r < N; ++r) {
      if (res[r] != gradcompSuccess) {
        ADD_FAILURE() << "rank " << r << " step " << step << ": " << gradcompGetLastError();
        return -1;
      }
    }
    bool anyBad = false;
    for (int r = 0; r < N; ++r) {
      for (size_t i = 0; i < outN; ++i) {
        const float x = t == gc::DType::F32
                            ? reinterpret_cast<const float*>(out[r].data())[i]
                            : gc::halfToFloat(reinterpret_cast<const uint16_t*>(out[r].data())[i]);
        // Ordinary sums stay far below 1e4 (4 ranks of |g| < 5, and what
        // error feedback delays of them).
        anyBad |= !std::isfinite(x) || (step > kOverflowStep && fabsf(x) > 1e4f);
      }
    }
    if (step == kOverflowStep && !anyBad) return -2;
    if (step < kOverflowStep && anyBad) {
      ADD_FAILURE() << "step " << step << " (before the overflow) is not finite";
      return -1;
    }
    if (step > kOverflowStep) later += anyBad;
  }
  return later;
}

TEST(NonFinite, OverflowingSumDoesNotComeBackThroughErrorFeedback) {
  for (const OverflowCase& c : overflowCases()) {
    for (gc::DType t : {gc::DType::F32, gc::DType::F16}) {
      for (bool rs : {false, true}) {
        // The count of later calls that were not ordinary (-1: a call failed; -2:
        // the overflowing call was finite, so the case would test nothing).
        EXPECT_EQ(laterNonFiniteCalls(c.cfg, t, rs), 0)
            << c.name << (t == gc::DType::F32 ? " fp32" : " fp16")
            << (rs ? " reduce-scatter" : " allreduce");
      }
    }
  }
}

}  // namespace

namespace {

// Every rank's inputs of overflowGradient at `step` (n elements, in type t),
// as the references take them (gctest::loadStep gives them the residuals).
std::vector<Rank> overflowInputs(int N, size_t n, DType t, int step) {
  std::vector<Rank> in(N);
  for (int r = 0; r < N; ++r) {
    overflowGradient(N, r, step, t, n, &in[r].f32);
    if (t == DType::F16) {
      in[r].half.resize(n);
      for (size_t i = 0; i < n; ++i) in[r].half[i] = gc::floatToHalf(in[r].f32[i]);
    }
  }
  return in;
}

// Every state array of the comm's buffers (residual, owner residual) holds zeros only.
bool stateCleared(gradcompComm_t c) {
  for (const auto& kv : c->states) {
    const gc::BufferState& s = kv.second;
    for (size_t i = 0; s.residual && i < s.count; ++i)
      if (s.residual[i] != 0.0f) return false;
    for (size_t i = 0; s.ownerResidual && i < s.ownerResidualCount; ++i)
      if (s.ownerResidual[i] != 0.0f) return false;
  }
  return true;
}

// QSGD (two-shot, ring, reduce-scatter; flat and L = 2 hierarchical) over
// kOverflowSteps calls, the one at kOverflowStep overflowing the type: every
// output, and the flat calls' residuals, bit for bit the serial references'
// (tests/common/ref_algos.h, ref_rs.h, ref_hier.h, ref_hier_rs.h), which clear
// every rank's residual and owner residual after a non-finite output.
// Without the library's clear the calls after the overflow carry its huge
// leftovers and differ from the references; without the references' clear,
// the other way round.
void checkQsgdOverflowAgainstReference(gradcompAlgo_t algo, bool rs, int L, DType t) {
  SCOPED_TRACE(testing::Message() << (rs                         ? "reduce-scatter"
                                      : algo == gradcompAlgoRing ? "ring"
                                                                 : "two-shot")
                                  << " L=" << L << (t == DType::F32 ? " fp32" : " fp16"));
  const int N = 4;
  const size_t m = 1536, n = rs ? N * m : 4096;
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.algo = algo;
  cfg.localSize = L;
  cfg.cpuTimeoutSec = 10.0f;
  gctest::CpuWorld w(N, cfg);
  std::vector<Rank> held(N);
  for (Rank& r : held) r.residual.assign(n, 0.0f), r.ownerRes.assign(n, 0.0f);
  std::vector<Rank> bufs = overflowInputs(N, n, t, 0);  // the same buffers every call
  gctest::RsOutputs outs(N, m);
  for (int step = 0; step < kOverflowSteps; ++step) {
    std::vector<Rank> in = overflowInputs(N, n, t, step);
    gctest::loadStep(in, held, bufs);
    const auto res =
        rs ? outs.run(w, bufs, t, m, false, false) : gctest::allReduceInPlace(w, bufs, t, n, false);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    std::vector<std::vector<float>> expect;
    if (rs) {
      expect = L > 1 ? refHierReduceScatter(held = in, t, m, cfg, cfg.bits, step, false, L)
                     : refReduceScatter(held = in, t, m, cfg, cfg.bits, step, false);
    } else {
      expect.assign(N, L > 1 ? refHier(held = in, t, n, cfg, step, false, L,
                                       gctest::effectiveAlgo(algo, N / L))
                             : refDense(held = in, t, n, cfg, step, false, algo));
    }
    bool anyBad = false;
    for (int r = 0; r < N; ++r) {
      const std::vector<float> got = rs ? outs.read(bufs[r], r, t, m, false) : widen(bufs[r], t, n);
      ASSERT_EQ(memcmp(got.data(), expect[r].data(), got.size() * 4), 0)
          << "rank " << r << " step " << step;
      anyBad |= countNonFinite(got) > 0;
      if (L == 1) {
        const float* resid =
            rs ? gctest::rsResidual(w.comm(r)) : stateOf(w.comm(r), false)->residual;
        ASSERT_EQ(memcmp(resid, held[r].residual.data(), n * 4), 0)
            << "residual of rank " << r << " step " << step;
      }
      if (step == kOverflowStep) EXPECT_TRUE(stateCleared(w.comm(r))) << "rank " << r;
    }
    // The overflowing call's output is not finite (else this tests nothing), the others are.
    ASSERT_EQ(anyBad, step == kOverflowStep) << "step " << step;
  }
}

TEST(NonFinite, QsgdOverflowingStepEqualsTheReferences) {
  for (int L : {1, 2})
    for (DType t : {DType::F32, DType::F16}) {
      checkQsgdOverflowAgainstReference(gradcompAlgoTwoShot, false, L, t);
      checkQsgdOverflowAgainstReference(gradcompAlgoRing, false, L, t);
      checkQsgdOverflowAgainstReference(gradcompAlgoAuto, true, L, t);
    }
}

// A compressed reduce-scatter whose output's check fails (the allreduce of
// its flag, after the exchange) fails on every rank and takes no step: the
// step counter, the buffer's call count and the stats stay, while the
// residual is advanced as the exchange left it (docs/reliability.md, the
// exception for a failure after the encode), bit for bit the reference's
// advance. The next call, at the same step, goes on from there.
TEST(NonFinite, AReduceScatterWhoseCheckFailsTakesNoStep) {
  const int N = 3;
  const size_t m = 1000, n = N * m;
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.cpuTimeoutSec = 10.0f;
  gctest::CpuWorld w(N, cfg);
  std::vector<gctest::FailingFlagTransport*> tr(N);
  for (int r = 0; r < N; ++r) {
    gradcompComm_t c = w.comm(r);
    tr[r] = new gctest::FailingFlagTransport(std::move(c->transport));
    c->transport.reset(tr[r]);
  }
  std::vector<Rank> held = makeInputs(N, n, DType::F32, 5), bufs = held;
  gctest::RsOutputs outs(N, m);
  // Call `call` at `step` with fresh inputs: the reference advanced alike.
  auto run = [&](int call, uint64_t step, gradcompResult_t want) {
    std::vector<Rank> in = makeInputs(N, n, DType::F32, 100 + call);
    gctest::loadStep(in, held, bufs);
    const auto res = outs.run(w, bufs, DType::F32, m, false, false);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], want) << "rank " << r << " call " << call;
    const auto expect = refReduceScatter(held = in, DType::F32, m, cfg, cfg.bits, step, false);
    for (int r = 0; r < N; ++r) {
      if (want == gradcompSuccess) {
        const std::vector<float> got = outs.read(bufs[r], r, DType::F32, m, false);
        ASSERT_EQ(memcmp(got.data(), expect[r].data(), m * 4), 0)
            << "rank " << r << " call " << call;
      }
      ASSERT_EQ(memcmp(gctest::rsResidual(w.comm(r)), held[r].residual.data(), n * 4), 0)
          << "residual of rank " << r << " call " << call;
    }
  };
  ASSERT_NO_FATAL_FAILURE(run(0, 0, gradcompSuccess));
  for (auto* t : tr) t->armed = true;
  ASSERT_NO_FATAL_FAILURE(run(1, 1, gradcompSystemError));
  for (int r = 0; r < N; ++r) {
    gradcompComm_t c = w.comm(r);
    EXPECT_EQ(c->step, 1u) << r;
    EXPECT_EQ(stateOf(c, true)->calls, 1u) << r;
    gradcompStats_t st;
    ASSERT_EQ(gradcompGetStats(c, &st), gradcompSuccess);
    EXPECT_EQ(st.callsCompressed, 1u) << r;
    EXPECT_EQ(st.callsReduceScatter, 1u) << r;
    tr[r]->armed = false;
  }
  ASSERT_NO_FATAL_FAILURE(run(2, 1, gradcompSuccess));
}

}  // namespace

namespace {

// One rank's backend, counting the non-finite check's passes of their own
// (flagNonFinite) and the output kernels handed the check's flag to set as
// they store (qsgdDecodeToOutput, qsgdSum: CallArgs::outputFlag).
class FlagCountingBackend final : public gctest::ForwardingBackend {
 public:
  explicit FlagCountingBackend(std::shared_ptr<gc::Backend> inner)
      : ForwardingBackend(std::move(inner)) {}
  gradcompResult_t flagNonFinite(const void* x, gc::DType t, size_t n, float* flag) override {
    ++passes;
    return inner_->flagNonFinite(x, t, n, flag);
  }
  gradcompResult_t qsgdDecodeToOutput(const gc::DecodeSegment* segs, int count, int bits,
                                      int bucket, float divisor, gc::DType t, float* scratch,
                                      float* flag) override {
    flagged += flag != nullptr;
    return inner_->qsgdDecodeToOutput(segs, count, bits, bucket, divisor, t, scratch, flag);
  }
  gradcompResult_t qsgdSum(const gc::SumTerm* terms, int count, size_t n, int bits, int bucket,
                           float divisor, gc::DType t, void* out, float* scratch,
                           float* flag) override {
    flagged += flag != nullptr;
    return inner_->qsgdSum(terms, count, n, bits, bucket, divisor, t, out, scratch, flag);
  }
  int passes = 0, flagged = 0;
};

// Whether any of the buffer's state arrays holds a value other than zero.
bool holdsAnything(const gc::BufferState& bs) {
  for (size_t i = 0; i < bs.count; ++i) {
    if ((bs.residual && bs.residual[i] != 0.0f) || (bs.momentum && bs.momentum[i] != 0.0f))
      return true;
  }
  for (size_t i = 0; i < bs.ownerResidualCount; ++i) {
    if (bs.ownerResidual[i] != 0.0f) return true;
  }
  return false;
}

// QSGD's two-shot, ring, allgather and flat reduce-scatter write their whole
// output through kernels that set the non-finite check's flag as they store
// (Algorithm::flagsOutput): the check then reads no output of its own, and
// still clears the state when a sum overflows, on every rank. The others
// (hierarchical, Elias, top-k) keep the check's pass, one a call; a buffer
// without state checks nothing. Without the fold, the flagging algorithms
// make a pass a call and hand no flag; with a flag handed but not set (or
// set and then zeroed), the overflowing call would leave the state as it
// was; with a flag not zeroed before the call, the call after the overflow
// would clear again; without the reduce-scatter's allreduce of the flag, a
// sum overflowing in one rank's block would clear that rank's state alone.
TEST(NonFinite, TheFlaggingAlgorithmsCheckWithoutAPassOfTheirOwn) {
  struct FoldCase {
    const char* name;
    gradcompConfig_t cfg;
    bool rs;
    int passes;  // the check's own passes a call, on every rank
    bool flags;  // the output's kernels given the flag
    bool state;
    bool oneBlock = false;  // a reduce-scatter whose sum overflows in rank 0's block alone
  };
  std::vector<FoldCase> cs;
  gradcompConfig_t q = gctest::qsgdTestConfig();
  q.cpuTimeoutSec = 10.0f;
  for (int b : {64, 512}) {  // a bucket with the CUDA warp path and one without
    q.bucketSize = b;
    q.algo = gradcompAlgoTwoShot;
    cs.push_back({"twoshot", q, false, 0, true, true});
    q.algo = gradcompAlgoRing;
    cs.push_back({"ring", q, false, 0, true, true});
    q.algo = gradcompAlgoAllgather;
    cs.push_back({"allgather", q, false, 0, true, true});
    q.algo = gradcompAlgoAuto;
    cs.push_back({"reduce-scatter", q, true, 0, true, true});
    cs.push_back({"reduce-scatter, one block", q, true, 0, true, true, true});
  }
  q = gctest::qsgdTestConfig();
  q.cpuTimeoutSec = 10.0f;
  gradcompConfig_t h = q;
  h.localSize = 2;
  cs.push_back({"hier", h, false, 1, false, true});
  cs.push_back({"hier reduce-scatter", h, true, 1, false, true});
  gradcompConfig_t e = q;
  e.elias = 1;
  cs.push_back({"elias", e, false, 1, false, true});
  cs.push_back({"topk", gctest::sparseTestConfig(gradcompMethodTopk), false, 1, false, true});
  gradcompConfig_t none = q;
  none.errorFeedback = 0;
  none.ownerResidual = 0;
  cs.push_back({"twoshot without state", none, false, 0, false, false});
  const int N = 4;
  const size_t m = 1024;
  for (const FoldCase& c : cs) {
    SCOPED_TRACE(std::string(c.name) + " bucket " + std::to_string(c.cfg.bucketSize));
    const size_t n = c.rs ? N * m : 4 * m, outN = c.rs ? m : n;
    gctest::CpuWorld w(N, c.cfg);
    std::vector<FlagCountingBackend*> be(N);
    for (int r = 0; r < N; ++r) {
      gradcompComm_t comm = w.comm(r);
      be[r] = new FlagCountingBackend(comm->backend);
      comm->backend.reset(be[r]);
    }
    std::vector<std::vector<float>> in(N), out(N, std::vector<float>(outN));
    for (int step : {0, kOverflowStep, kOverflowStep + 1}) {
      for (int r = 0; r < N; ++r) {
        overflowGradient(N, r, step, gc::DType::F32, n, &in[r]);
        if (c.oneBlock && step == kOverflowStep) {
          for (size_t i = m; i < n; ++i) in[r][i] = 0.25f * (float)((int)(i % 7) - 3);
        }
      }
      for (int r = 0; r < N; ++r) be[r]->passes = be[r]->flagged = 0;
      const auto res = w.run([&](int r) {
        return c.rs ? gradcompReduceScatter(in[r].data(), out[r].data(), m, ncclFloat32, ncclSum,
                                            w.comm(r), nullptr)
                    : gradcompAllReduce(in[r].data(), out[r].data(), n, ncclFloat32, ncclSum,
                                        w.comm(r), nullptr);
      });
      for (int r = 0; r < N; ++r) {
        ASSERT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << gradcompGetLastError();
        EXPECT_EQ(be[r]->passes, c.passes) << "rank " << r << " step " << step;
        EXPECT_EQ(be[r]->flagged > 0, c.flags) << "rank " << r << " step " << step;
        const gc::BufferState* bs = stateOf(w.comm(r), c.rs);
        ASSERT_NE(bs, nullptr);
        const bool overflow = step == kOverflowStep;
        EXPECT_EQ(countNonFinite(out[r]) > 0, overflow && (!c.oneBlock || r == 0))
            << "rank " << r << " step " << step;
        // The ordinary calls leave state (so the clear is seen, and a flag
        // left set would clear it again); the overflowing one clears all of
        // it, on every rank (one block's: the flag's allreduce).
        if (c.state) EXPECT_EQ(holdsAnything(*bs), !overflow) << "rank " << r << " step " << step;
      }
    }
  }
}

}  // namespace
