// Error feedback across the switches a run makes between steps on one buffer
// or key: GRADCOMP_AUTO retuned from compressing to passing and back, DGC's
// warm-up, DQ-SGD's budget widths, one key called with another count, one
// address with another type, Sum and Avg, calls under minElements, the
// reduce-scatter beside the allreduce, the hierarchy, and the state saved and
// loaded into a new comm mid-run. Over the whole run, per element of each
// buffer state: what the outputs received (times N for Avg) plus every
// rank's final residuals (and owner residuals) equals the sum of all inputs,
// up to float rounding.
#include <gtest/gtest.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "gradcomp.h"
#include "kernels/common_math.cuh"
#include "plugin/algorithms/algorithms.h"
#include "plugin/autotune.h"
#include "plugin/collective.h"
#include "plugin/comm.h"
#include "tests/common/cpu_world.h"
#include "tests/common/ledger.h"
#include "tests/common/test_util.h"

namespace {

gc::AutoFigures figures(float n0, float n1, float c0, float c1) {
  gc::AutoFigures f;
  f.smallCount = 1024;
  f.largeCount = 5120;
  f.ncclUs[0] = n0, f.ncclUs[1] = n1, f.compUs[0] = c0, f.compUs[1] = c1;
  return f;
}
const gc::AutoFigures kCompressWins = figures(64, 128, 32, 64);
const gc::AutoFigures kNcclWins = figures(16, 32, 48, 80);

float getT(const void* p, ncclDataType_t t, size_t i) {
  if (t == ncclFloat32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return t == ncclFloat16 ? gc::halfToFloat(h) : gc::bf16ToFloat(h);
}
void setT(void* p, ncclDataType_t t, size_t i, float v) {
  if (t == ncclFloat32) {
    static_cast<float*>(p)[i] = v;
  } else {
    static_cast<uint16_t*>(p)[i] = t == ncclFloat16 ? gc::floatToHalf(v) : gc::floatToBf16(v);
  }
}
double epsOf(ncclDataType_t t) {
  return t == ncclFloat32 ? 0x1p-24 : t == ncclFloat16 ? 0x1p-11 : 0x1p-8;
}

// A buffer state as every rank knows it: (kind, keyed, key or buffer slot,
// input count, type).
using Id = std::tuple<int, bool, uint64_t, size_t, int>;

struct Call {
  bool rs, keyed;
  uint64_t keyOrSlot;
  size_t n;  // input elements (the reduce-scatter's: nranks * recvcount)
  ncclDataType_t type;
  ncclRedOp_t op;
};

constexpr int kSlots = 3;
constexpr size_t kMaxElems = 8192;

class Run {
 public:
  Run(int n, const gradcompConfig_t& cfg) : N(n), cfg_(cfg), send_(n), recv_(n) {
    for (int r = 0; r < N; ++r) {
      send_[r].assign(kSlots, std::vector<float>(kMaxElems));
      recv_[r].assign(kSlots, std::vector<float>(kMaxElems));
    }
    world_.reset(new gctest::CpuWorld(N, cfg_));
    inject(cfg_.autoTune ? &kCompressWins : nullptr);
  }

  void inject(const gc::AutoFigures* f) {
    if (f == nullptr) return;
    for (int r = 0; r < N; ++r) {
      gc::autoInjectFigures(world_->comm(r), gc::AutoCall::AllReduce, *f);
      gc::autoInjectFigures(world_->comm(r), gc::AutoCall::ReduceScatter, *f);
    }
  }

  void retune(bool pass) {
    inject(pass ? &kNcclWins : &kCompressWins);
    auto res = world_->run([&](int r) { return gradcompCommRetune(world_->comm(r), nullptr); });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    passing_ = pass;
  }

  // Every rank's state saved, the world replaced by a new one of the same
  // config, the states loaded into it.
  void saveLoad() {
    std::vector<std::vector<uint8_t>> blobs(N);
    for (int r = 0; r < N; ++r) blobs[r] = gctest::savedState(world_->comm(r));
    world_.reset();
    world_.reset(new gctest::CpuWorld(N, cfg_));
    // The comm's own figures would decide the other way: the loaded ones must rule.
    inject(cfg_.autoTune ? (passing_ ? &kCompressWins : &kNcclWins) : nullptr);
    auto res = world_->run([&](int r) {
      return gradcompCommLoadState(world_->comm(r), blobs[r].data(), blobs[r].size());
    });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  }

  void setScale(float scale) {
    auto res = world_->run(
        [&](int r) { return gradcompCommSetGradScale(world_->comm(r), scale, nullptr); });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    scale_ = scale;
  }

  // DGC's momentum of rank r's state for the call, in input order (zeros
  // when there is none yet).
  std::vector<float> momentumOf(int r, const Call& k, int slot) {
    gradcompComm* c = world_->comm(r);
    std::vector<float> u(k.n, 0.0f);
    const void* recv = k.rs ? recv_[r][slot].data() : send_[r][slot].data();
    const gc::DType t = k.type == ncclFloat32   ? gc::DType::F32
                        : k.type == ncclFloat16 ? gc::DType::F16
                                                : gc::DType::BF16;
    auto it = c->states.find(gc::stateKey(k.rs ? 2 : 0, k.keyed, k.keyOrSlot, recv, k.n, t));
    if (it == c->states.end() || it->second.momentum == nullptr) return u;
    const bool permuted = k.rs && gc::useHierReduceScatter(*c);
    const size_t m = k.n / N;
    for (size_t i = 0; i < k.n; ++i) u[permuted ? inputIndex(c, i, m) : i] = it->second.momentum[i];
    return u;
  }

  static size_t inputIndex(const gradcompComm* c, size_t i, size_t m) {
    const size_t b = i / m, l = b / c->topo.nodes, j = b % c->topo.nodes;
    return (size_t)c->topo.rankAt((int)j, (int)l) * m + i % m;
  }

  void call(const Call& k, uint64_t seed) {
    const size_t m = k.rs ? k.n / N : k.n;
    const Id id{k.rs ? 2 : 0, k.keyed, k.keyOrSlot, k.n, (int)k.type};
    gctest::Ledger& a = acc(id, k.n);
    const int slot = k.keyed ? (int)(seed % kSlots) : (int)k.keyOrSlot;
    const bool mom = cfg_.method == gradcompMethodDgc && cfg_.momentumCorrection;
    for (int r = 0; r < N; ++r) {
      const std::vector<float> g = gctest::normal(k.n, seed * 131 + r);
      const std::vector<float> u = mom ? momentumOf(r, k, slot) : std::vector<float>();
      void* s = send_[r][slot].data();
      for (size_t i = 0; i < k.n; ++i) {
        setT(s, k.type, i, g[i] * scale_);
        // What the call adds to the rank's velocity: u = m*u + g (DGC's
        // momentum correction), in unscaled units.
        const double x = getT(s, k.type, i) / scale_ + (mom ? cfg_.momentum * u[i] / scale_ : 0);
        a.addInput(i, x, k.type != ncclFloat32 ? epsOf(k.type) : 0);
      }
    }
    auto res = world_->run([&](int r) {
      void* s = send_[r][slot].data();
      void* out = k.rs ? recv_[r][slot].data() : s;  // the allreduce in place
      if (k.rs) {
        return k.keyed ? gradcompReduceScatterKeyed(s, out, m, k.type, k.op, world_->comm(r),
                                                    nullptr, k.keyOrSlot)
                       : gradcompReduceScatter(s, out, m, k.type, k.op, world_->comm(r), nullptr);
      }
      return k.keyed ? gradcompAllReduceKeyed(s, out, m, k.type, k.op, world_->comm(r), nullptr,
                                              k.keyOrSlot)
                     : gradcompAllReduce(s, out, m, k.type, k.op, world_->comm(r), nullptr);
    });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    const double f = k.op == ncclAvg ? N : 1;
    for (int r = 0; r < N; ++r) {
      if (!k.rs && r > 0) break;  // every rank holds the same sum
      const void* out = k.rs ? recv_[r][slot].data() : send_[r][slot].data();
      for (size_t i = 0; i < m; ++i) {
        const size_t e = k.rs ? (size_t)r * m + i : i;
        a.addOutput(e, getT(out, k.type, i) * f / scale_, epsOf(k.type) * 2);
      }
    }
  }

  // Every rank's residuals added to their elements; then the check.
  void finish(const std::string& what) {
    for (int r = 0; r < N; ++r) {
      gradcompComm* c = world_->comm(r);
      if (c->inter) {
        EXPECT_TRUE(c->inter->states.empty()) << "rank " << r << ": inter-node states";
      }
      for (const auto& kv : c->states) {
        const gc::BufferState& s = kv.second;
        const int kind = std::get<0>(kv.first);
        const bool keyed = (kind & 1) != 0;
        const bool rs = kind >= 2;
        uint64_t k = std::get<1>(kv.first);
        if (!keyed) {
          int slot = -1;
          for (int q = 0; q < kSlots; ++q) {
            const void* p = rs ? recv_[r][q].data() : send_[r][q].data();
            if ((uint64_t)(uintptr_t)p == k) slot = q;
          }
          ASSERT_GE(slot, 0) << "rank " << r << ": a state of an unknown buffer";
          k = (uint64_t)slot;
        }
        const Id id{rs ? 2 : 0, keyed, k, s.count,
                    (int)s.dtype == 0   ? (int)ncclFloat32
                    : (int)s.dtype == 1 ? (int)ncclFloat16
                                        : (int)ncclBfloat16};
        acc(id, s.count).addResiduals(c, s, rs, scale_);
      }
    }
    for (auto& kv : acc_) {
      const gctest::Ledger& a = kv.second;
      const gctest::Ledger::Check k = a.check(N);
      const size_t bad = k.bad, at = k.at;
      const double worst = k.worst, worstErr = k.err;
      EXPECT_EQ(bad, 0u) << what << ": state (kind " << std::get<0>(kv.first) << ", keyed "
                         << std::get<1>(kv.first) << ", " << std::get<2>(kv.first) << ", n "
                         << std::get<3>(kv.first) << ", type " << std::get<4>(kv.first)
                         << "): " << bad << " elements lost or doubled; worst element " << at
                         << " in " << a.in[at] << " out " << a.out[at] << " residuals " << a.res[at]
                         << " error " << worstErr << " (" << worst << " x the rounding bound)";
    }
  }

  const int N;
  bool passing_ = false;
  float scale_ = 1.0f;

 private:
  gctest::Ledger& acc(const Id& id, size_t n) {
    gctest::Ledger& a = acc_[id];
    a.size(n);
    return a;
  }

  gradcompConfig_t cfg_;
  std::unique_ptr<gctest::CpuWorld> world_;
  std::vector<std::vector<std::vector<float>>> send_, recv_;
  std::map<Id, gctest::Ledger> acc_;
};

struct Switches {
  bool retune = true, saveLoad = true, scale = false, counts = true, types = true, rs = true,
       small = true;
};

// A random run of `steps` calls with switches between them.
void randomRun(const std::string& what, int N, gradcompConfig_t cfg, uint64_t seed, int steps,
               Switches sw = {}) {
  SCOPED_TRACE(what + " seed " + std::to_string(seed));
  Run run(N, cfg);
  std::mt19937_64 rng(seed);
  auto pick = [&](int n) { return (int)(rng() % (uint64_t)n); };
  const size_t counts[] = {4096, 3000};
  for (int t = 0; t < steps; ++t) {
    if (cfg.autoTune && sw.retune && pick(4) == 0) {
      run.retune(!run.passing_);
      if (::testing::Test::HasFatalFailure()) return;
    }
    if (sw.scale && pick(6) == 0) {
      const float scales[] = {1.0f, 2.0f, 0.25f, 3.0f, 1024.0f};
      run.setScale(scales[pick(5)]);
      if (::testing::Test::HasFatalFailure()) return;
    }
    if (sw.saveLoad && pick(8) == 0) {
      run.saveLoad();
      if (::testing::Test::HasFatalFailure()) return;
    }
    Call k;
    k.rs = sw.rs && pick(3) == 0;
    k.keyed = pick(2) == 0;
    k.keyOrSlot = k.keyed ? 7 + (uint64_t)pick(2) : (uint64_t)pick(kSlots);
    size_t n = counts[sw.counts ? pick(2) : 0];
    if (sw.small && pick(10) == 0) n = 256;  // under minElements
    if (k.rs) n = n / (size_t)N * (size_t)N;
    k.n = n;
    k.type = sw.types && pick(3) == 0 ? ncclFloat16 : ncclFloat32;
    k.op = pick(2) == 0 ? ncclAvg : ncclSum;
    run.call(k, seed * 1000 + (uint64_t)t);
    if (::testing::Test::HasFatalFailure()) return;
  }
  run.finish(what);
}

gradcompConfig_t base(gradcompMethod_t m) {
  gradcompConfig_t c;
  gradcompConfigInit(&c);
  c.method = m;
  c.minElements = 1024;
  c.bucketSize = 64;
  c.autoTune = 1;
  c.clipNorm = 0.0f;
  c.momentumCorrection = 0;
  c.cpuTimeoutSec = 20.0f;
  return c;
}

TEST(ConserveSwitch, QsgdTwoShotOwner) {
  gradcompConfig_t c = base(gradcompMethodQsgd);
  c.ownerResidual = 1;
  for (uint64_t s = 1; s <= 3; ++s) randomRun("qsgd two-shot owner", 3, c, s, 40);
}

TEST(ConserveSwitch, QsgdRing) {
  gradcompConfig_t c = base(gradcompMethodQsgd);
  c.algo = gradcompAlgoRing, c.ownerResidual = 1;
  for (uint64_t s = 1; s <= 2; ++s) randomRun("qsgd ring", 4, c, s, 40);
}

TEST(ConserveSwitch, QsgdAllgather) {
  gradcompConfig_t c = base(gradcompMethodQsgd);
  for (uint64_t s = 1; s <= 2; ++s) randomRun("qsgd auto N=2", 2, c, s, 40);
}

TEST(ConserveSwitch, QsgdBudget) {
  gradcompConfig_t c = base(gradcompMethodQsgd);
  c.bitsMode = gradcompBitsBudget, c.ownerResidual = 1;
  for (uint64_t s = 1; s <= 2; ++s) randomRun("qsgd budget", 3, c, s, 40);
}

TEST(ConserveSwitch, QsgdDynamic) {
  gradcompConfig_t c = base(gradcompMethodQsgd);
  c.bitsMode = gradcompBitsDynamic, c.ownerResidual = 1;
  for (uint64_t s = 1; s <= 2; ++s) randomRun("qsgd dynamic", 3, c, s, 40);
}

TEST(ConserveSwitch, QsgdElias) {
  gradcompConfig_t c = base(gradcompMethodQsgd);
  c.elias = 1;
  for (uint64_t s = 1; s <= 2; ++s) randomRun("qsgd elias", 3, c, s, 30);
}

TEST(ConserveSwitch, DgcWarmup) {
  gradcompConfig_t c = base(gradcompMethodDgc);
  c.density = 0.001f, c.warmupSteps = 5;
  for (uint64_t s = 1; s <= 3; ++s) randomRun("dgc warm-up", 3, c, s, 40);
}

TEST(ConserveSwitch, Topk) {
  gradcompConfig_t c = base(gradcompMethodTopk);
  c.density = 0.01f;
  for (uint64_t s = 1; s <= 2; ++s) randomRun("topk", 3, c, s, 30);
}

TEST(ConserveSwitch, Randk) {
  gradcompConfig_t c = base(gradcompMethodRandk);
  c.density = 0.01f;
  for (uint64_t s = 1; s <= 2; ++s) randomRun("randk", 3, c, s, 30);
}

TEST(ConserveSwitch, HierQsgd) {
  gradcompConfig_t c = base(gradcompMethodQsgd);
  c.localSize = 2, c.ownerResidual = 1;
  for (uint64_t s = 1; s <= 2; ++s) randomRun("hier qsgd 4=2x2", 4, c, s, 30);
  for (uint64_t s = 1; s <= 2; ++s) randomRun("hier qsgd 6=3x2", 6, c, s, 30);
}

TEST(ConserveSwitch, HierDgc) {
  gradcompConfig_t c = base(gradcompMethodDgc);
  c.localSize = 2, c.density = 0.01f, c.warmupSteps = 3;
  for (uint64_t s = 1; s <= 2; ++s) randomRun("hier dgc", 4, c, s, 30);
}

TEST(ConserveSwitch, DgcMomentum) {
  gradcompConfig_t c = base(gradcompMethodDgc);
  c.density = 0.01f, c.warmupSteps = 4, c.momentumCorrection = 1;
  for (uint64_t s = 1; s <= 3; ++s) randomRun("dgc momentum", 3, c, s, 40);
  c.localSize = 2;
  for (uint64_t s = 1; s <= 2; ++s) randomRun("hier dgc momentum", 4, c, s, 30);
}

TEST(ConserveSwitch, GradScale) {
  Switches sw;
  sw.scale = true;
  gradcompConfig_t c = base(gradcompMethodQsgd);
  c.ownerResidual = 1, c.bitsMode = gradcompBitsBudget;
  for (uint64_t s = 1; s <= 3; ++s) randomRun("qsgd scaled", 3, c, s, 40, sw);
  c = base(gradcompMethodDgc);
  c.density = 0.01f, c.warmupSteps = 4, c.momentumCorrection = 1;
  for (uint64_t s = 1; s <= 3; ++s) randomRun("dgc scaled", 3, c, s, 40, sw);
}

TEST(ConserveSwitch, AutoOff) {
  gradcompConfig_t c = base(gradcompMethodQsgd);
  c.autoTune = 0, c.ownerResidual = 1;
  for (uint64_t s = 1; s <= 2; ++s) randomRun("qsgd auto off", 3, c, s, 30);
}

}  // namespace
