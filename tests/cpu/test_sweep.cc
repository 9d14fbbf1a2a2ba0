// Differential sweep of the collectives on the CPU backends over edge shapes: every method (none,
// QSGD under each dense algorithm, pipelined, Elias, DQ-SGD, top-k, DGC, rand-k at several
// densities), N = 1..8 with every node layout the in-process world takes and host layouts
// (interleaved, unequal), the socket world, counts 0, 1, around N, the bucket and the chunk
// boundaries, primes and GRADCOMP_MIN_ELEMENTS, fp32/fp16/bf16, Sum/Avg, in place and out of
// place, plain and keyed calls, allreduce and reduce-scatter. Each call against the serial
// references (tests/common/ref_*.h) bit for bit, output and residual; identical on every rank;
// guard bytes around every buffer untouched; an out-of-place send buffer, and an in-place
// reduce-scatter's bytes outside its block, unchanged; every call counted once in the stats; a
// flat QSGD allreduce's error feedback conserved (inputs and residuals before == output and
// residuals after). Over the same shapes, a saved state loaded back repeats the next call, and a
// power-of-two grad scale gives exactly that factor. A sample of the cross product runs in CI;
// GRADCOMP_SWEEP=wide runs all of it (an hour or more).
#include <gtest/gtest.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "gradcomp.h"
#include "kernels/common_math.cuh"
#include "plugin/algorithms/algorithms.h"
#include "plugin/comm.h"
#include "plugin/topology.h"
#include "tests/common/cpu_world.h"
#include "tests/common/env_knob.h"
#include "tests/common/ref_algos.h"
#include "tests/common/ref_hier.h"
#include "tests/common/ref_hier_rs.h"
#include "tests/common/ref_rs.h"
#include "tests/common/ref_sparse.h"
#include "tests/common/socket_world.h"
#include "tests/common/world_checks.h"

namespace {

using gc::DType;
using namespace gctest::ref;

const size_t kGuard = 64;  // guard bytes on each side of every buffer
const uint8_t kCanary = 0xA5;

bool wide() {
  return gctest::envWord("GRADCOMP_SWEEP", {"wide"}) == 0;
}

// Which cases of a cross product run: all of them under GRADCOMP_SWEEP=wide,
// else about one in `stride`, spread by a hash of the case's place in it.
class Sampler {
 public:
  explicit Sampler(int stride) : stride_(wide() ? 1 : stride) {}
  bool pick() {
    uint64_t z = (next_++ + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (z ^ (z >> 31)) % stride_ == 0;
  }

 private:
  uint64_t next_ = 0;
  int stride_;
};

size_t esize(DType t) {
  return t == DType::F32 ? 4 : 2;
}

// A buffer of `bytes` between two guards of kCanary; with `shift`, the data
// starts that many bytes later (aligned to one element only).
struct Guarded {
  std::vector<uint8_t> b;
  size_t shift = 0;
  explicit Guarded(size_t bytes, size_t shift = 0)
      : b(bytes + 2 * kGuard + shift, kCanary), shift(shift) {}
  size_t front() const { return kGuard + shift; }
  uint8_t* data() { return b.data() + front(); }
  bool guardsIntact() const {
    for (size_t i = 0; i < front(); ++i) {
      if (b[i] != kCanary) return false;
    }
    for (size_t i = 0; i < kGuard; ++i) {
      if (b[b.size() - 1 - i] != kCanary) return false;
    }
    return true;
  }
};

void store(const Rank& r, DType t, size_t n, uint8_t* dst) {
  if (n == 0) return;
  memcpy(dst, t == DType::F32 ? (const void*)r.f32.data() : (const void*)r.half.data(),
         n * esize(t));
}

std::vector<float> load(const uint8_t* p, DType t, size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = gc::loadAsFloat(p, t, i);
  return v;
}

// NCCL's reduction as the CPU transports do it: rank order, fp16/bf16
// rounded after every step; Avg is NCCL's PreMulSum: every input times 1/N,
// rounded to the type, before the sum.
std::vector<float> refPassed(const std::vector<std::vector<float>>& x, DType t, bool avg, size_t lo,
                             size_t len) {
  const int N = (int)x.size();
  auto round = [t](float s) {
    if (t == DType::F16) return gc::halfToFloat(gc::floatToHalf(s));
    if (t == DType::BF16) return gc::bf16ToFloat(gc::floatToBf16(s));
    return s;
  };
  const float scalar = round((float)(1.0 / N));
  auto in = [&](int i, size_t k) { return avg ? round(x[i][lo + k] * scalar) : x[i][lo + k]; };
  std::vector<float> out(len);
  for (size_t k = 0; k < len; ++k) {
    float s = in(0, k);
    for (int i = 1; i < N; ++i) s = round(s + in(i, k));
    out[k] = round(s);
  }
  return out;
}

struct Case {
  gradcompConfig_t cfg;
  int N = 1;
  DType t = DType::F32;
  bool avg = false;
  size_t n = 0;  // allreduce: count; reduce-scatter: recvcount
  bool inPlace = true;
  bool rs = false;
  int steps = 2;
  // Node of every rank by host identity (in-process world split as NCCL's
  // topology would); empty: cfg.localSize.
  std::vector<uint64_t> hosts;
  bool socket = false;   // TCP world instead of the in-process one
  bool keyed = false;    // keyed calls on buffers that move every step
  bool shifted = false;  // buffers aligned to one element only
};

// Permutes rank-indexed entries into node-major order: out[i] = v[at[i]].
template <typename T>
std::vector<T> permuted(const std::vector<T>& v, const std::vector<int>& at) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < at.size(); ++i) out[i] = v[at[i]];
  return out;
}
template <typename T>
std::vector<T> unpermuted(const std::vector<T>& v, const std::vector<int>& at) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < at.size(); ++i) out[at[i]] = v[i];
  return out;
}

std::string describe(const Case& c) {
  return std::string(c.rs ? "reduce-scatter" : "allreduce") +
         " method=" + std::to_string(c.cfg.method) + " algo=" + std::to_string(c.cfg.algo) +
         " N=" + std::to_string(c.N) + " L=" + std::to_string(c.cfg.localSize) +
         " t=" + std::to_string((int)c.t) + " avg=" + std::to_string(c.avg) +
         " n=" + std::to_string(c.n) + " inPlace=" + std::to_string(c.inPlace) +
         " bucket=" + std::to_string(c.cfg.bucketSize) + " bits=" + std::to_string(c.cfg.bits) +
         " density=" + std::to_string(c.cfg.density) + " select=" + std::to_string(c.cfg.select) +
         " ef=" + std::to_string(c.cfg.errorFeedback) +
         " minElements=" + std::to_string(c.cfg.minElements) +
         " owner=" + std::to_string(c.cfg.ownerResidual) +
         " pipe=" + std::to_string(c.cfg.pipelineBytes) + " elias=" + std::to_string(c.cfg.elias) +
         " hosts=" + testing::PrintToString(c.hosts) + " socket=" + std::to_string(c.socket);
}

// One case: `steps` calls on the same buffers with fresh inputs.
template <typename World>
void runCaseIn(const Case& c, World& world) {
  SCOPED_TRACE(describe(c));
  const gradcompConfig_t& cfg = c.cfg;
  int L = cfg.localSize <= 0 ? 1 : cfg.localSize;
  const int N = c.N;
  std::vector<int> at;  // at[node * L + local]: the rank there (host layouts)
  if (!c.hosts.empty()) {
    const char* why = nullptr;
    std::vector<gc::Topology> topos(N);
    for (int r = 0; r < N; ++r) topos[r] = gc::hostTopology(r, c.hosts, &why);
    std::vector<gradcompComm_t> comms(N);
    for (int r = 0; r < N; ++r) comms[r] = world.comm(r);
    gc::splitCpuWorld(comms.data(), topos);
    L = topos[0].hier() ? topos[0].localSize : 1;
    if (L > 1) {
      at.assign(N, -1);
      for (int r = 0; r < N; ++r) at[topos[r].node * L + topos[r].localRank] = r;
    }
  }
  const int nodes = N / L;
  // Elias QSGD allreduces run flat (docs/algorithms.md).
  const bool hier =
      nodes >= 2 && L >= 2 && !(cfg.elias && cfg.method == gradcompMethodQsgd && !c.rs);
  const DType t = c.t;
  const size_t es = esize(t), total = c.rs ? c.n * N : c.n, outN = c.n;
  const bool sparse = cfg.method == gradcompMethodTopk || cfg.method == gradcompMethodDgc ||
                      cfg.method == gradcompMethodRandk;
  const bool passed =
      cfg.method == gradcompMethodNone || N == 1 || total == 0 || total < cfg.minElements;

  std::vector<Guarded> send, recv;
  const size_t shift = c.shifted ? es : 0;
  auto allocate = [&]() {
    send.clear(), recv.clear();
    for (int r = 0; r < N; ++r) {
      send.emplace_back(total * es, shift);
      recv.emplace_back(c.inPlace ? 0 : outN * es, shift);
    }
  };
  allocate();
  std::vector<std::vector<Guarded>> kept;  // keyed: earlier steps' buffers, still allocated
  auto recvPtr = [&](int r) -> uint8_t* {
    if (!c.inPlace) return recv[r].data();
    return send[r].data() + (c.rs ? r * c.n * es : 0);
  };
  std::vector<Rank> ref = makeInputs(N, total, t, 3 * total + N);  // residuals carried
  std::vector<SparseState> fst(N);
  std::vector<std::vector<SparseState>> hst;
  for (int step = 0; step < c.steps; ++step) {
    std::vector<Rank> in = makeInputs(N, total, t, 1000 * step + 7 * total + N + L);
    if (c.keyed) {  // new buffers, at other addresses than the last step's
      kept.push_back(std::move(send)), kept.push_back(std::move(recv));
      allocate();
    }
    std::vector<std::vector<float>> g(N);
    for (int r = 0; r < N; ++r) {
      in[r].residual = ref[r].residual, in[r].ownerRes = ref[r].ownerRes;
      store(in[r], t, total, send[r].data());
      if (!c.inPlace) memset(recv[r].data(), 0x5A, outN * es);
      g[r] = widen(in[r], t, total);
    }
    std::vector<Guarded> sendBefore = send;
    // Error feedback conservation (flat QSGD allreduce): every rank's input
    // and residual, and its owner residual over the span it reduces, before
    // the call equal the output and what the residuals hold after it.
    const bool conserve = !c.rs && !hier && !passed && cfg.method == gradcompMethodQsgd &&
                          cfg.errorFeedback && cfg.ownerResidual && !cfg.elias && t == DType::F32;
    auto held = [&](std::vector<double>* sum, std::vector<double>* mag) {
      for (int r = 0; r < N; ++r) {
        gradcompComm_t cm = world.comm(r);
        for (auto& kv : cm->states) {
          const gc::BufferState& bs = kv.second;
          if (bs.residual) {
            for (size_t k = 0; k < total; ++k) (*sum)[k] += bs.residual[k];
            for (size_t k = 0; k < total; ++k) (*mag)[k] += fabs(bs.residual[k]);
          }
          if (bs.ownerResidual) {
            const gc::Algorithm& a = gc::pickDenseAlgorithm(*cm, total);
            if (a.ownerSpan == nullptr) {  // kept none: must hold nothing
              for (size_t k = 0; k < bs.ownerResidualCount; ++k)
                ASSERT_EQ(bs.ownerResidual[k], 0.0f) << "unused owner residual " << k;
              continue;
            }
            const gc::OwnerSpan sp = a.ownerSpan(*cm, total);
            ASSERT_LE(sp.len, bs.ownerResidualCount);
            ASSERT_LE(sp.off + sp.len, total);
            for (size_t k = 0; k < sp.len; ++k) (*sum)[sp.off + k] += bs.ownerResidual[k];
            for (size_t k = 0; k < sp.len; ++k) (*mag)[sp.off + k] += fabs(bs.ownerResidual[k]);
          }
        }
      }
    };
    std::vector<double> before(total, 0.0), after(total, 0.0), mag(total, 0.0);
    if (conserve) {
      ASSERT_NO_FATAL_FAILURE(held(&before, &mag));
      for (int r = 0; r < N; ++r)
        for (size_t k = 0; k < total; ++k) before[k] += g[r][k], mag[k] += fabs(g[r][k]);
    }
    auto res = world.run([&](int r) {
      void* sb = send[r].data();
      void* rb = recvPtr(r);
      const ncclRedOp_t op = c.avg ? ncclAvg : ncclSum;
      if (c.keyed) {
        return c.rs ? gradcompReduceScatterKeyed(sb, rb, c.n, nccl(t), op, world.comm(r), nullptr,
                                                 77)
                    : gradcompAllReduceKeyed(sb, rb, c.n, nccl(t), op, world.comm(r), nullptr, 77);
      }
      return c.rs ? gradcompReduceScatter(sb, rb, c.n, nccl(t), op, world.comm(r), nullptr)
                  : gradcompAllReduce(sb, rb, c.n, nccl(t), op, world.comm(r), nullptr);
    });
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << gradcompGetLastError();
    }

    // The expected output of every rank. DQ-SGD's bit modes: the width the
    // ranks agreed on (stats), the same on every rank.
    gradcompConfig_t rcfg = cfg;
    if (cfg.bitsMode != gradcompBitsFixed && !passed) {
      gradcompStats_t st0;
      ASSERT_EQ(gradcompGetStats(world.comm(0), &st0), gradcompSuccess);
      for (int r = 1; r < N; ++r) {
        gradcompStats_t st;
        ASSERT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
        ASSERT_EQ(st.bitsLast, st0.bitsLast) << "rank " << r << " step " << step;
      }
      ASSERT_GE(st0.bitsLast, cfg.bitsMin);
      ASSERT_LE(st0.bitsLast, cfg.bitsMax);
      rcfg.bits = st0.bitsLast;
    }
    std::vector<std::vector<float>> expect(N);
    // DGC with momentum correction passes its velocity, not the input.
    const bool velocity = passed && cfg.method == gradcompMethodDgc && cfg.momentumCorrection;
    if (velocity) {
      // v += (u = m u + g), all of v passed through, v cleared.
      std::vector<std::vector<float>> vt(N);
      for (int r = 0; r < N; ++r) {
        SparseState& st = fst[r];
        st.u.resize(total, 0.0f);
        st.v.assign(total, 0.0f);
        vt[r].resize(total);
        for (size_t k = 0; k < total; ++k) {
          st.u[k] = cfg.momentum * st.u[k] + g[r][k];
          st.v[k] = st.v[k] + st.u[k];
          float x = st.v[k];
          if (t == DType::F16) x = gc::halfToFloat(gc::floatToHalf(x));
          if (t == DType::BF16) x = gc::bf16ToFloat(gc::floatToBf16(x));
          vt[r][k] = x;
        }
      }
      for (int r = 0; r < N; ++r) expect[r] = refPassed(vt, t, c.avg, c.rs ? r * c.n : 0, outN);
      ref = in;
      if (cfg.clipNorm > 0) {  // clipping not modelled here: agreement and guards only
        const std::vector<float> got = load(recvPtr(0), t, outN);
        for (int r = 0; r < N; ++r) expect[r] = c.rs ? load(recvPtr(r), t, outN) : got;
      }
    } else if (passed) {
      for (int r = 0; r < N; ++r) {
        expect[r] = refPassed(g, t, c.avg, c.rs ? r * c.n : 0, outN);
      }
      ref = in;
    } else if (!c.rs) {
      std::vector<float> e;
      if (sparse) {
        e = hier ? refHierSparse(cfg, t, c.avg, step, at.empty() ? g : permuted(g, at), hst, L)
                 : refSparse(cfg, t, c.avg, step, g, fst);
      } else {
        const gradcompAlgo_t eff =
            cfg.elias ? gradcompAlgoAllgather : gctest::effectiveAlgo(cfg.algo, hier ? nodes : N);
        if (hier && !at.empty()) {
          std::vector<Rank> p = permuted(in, at);
          e = refHier(p, t, total, rcfg, step, c.avg, L, eff);
          ref = unpermuted(p, at);
        } else {
          e = hier ? refHier(ref = in, t, total, rcfg, step, c.avg, L, eff)
                   : refDense(ref = in, t, total, rcfg, step, c.avg, eff);
        }
      }
      for (int r = 0; r < N; ++r) expect[r] = e;
    } else {
      const bool hierRs = L > 1 && L < N;
      if (sparse) {
        if (hierRs) {
          expect = refHierSparseReduceScatter(cfg, t, c.avg, step, g, hst, L, at);
        } else {
          expect = refSparseReduceScatter(cfg, t, c.avg, step, g, fst);
        }
      } else {
        expect = hierRs
                     ? refHierReduceScatter(ref = in, t, c.n, rcfg, rcfg.bits, step, c.avg, L, at)
                     : refReduceScatter(ref = in, t, c.n, rcfg, rcfg.bits, step, c.avg);
      }
    }

    for (int r = 0; r < N; ++r) {
      ASSERT_TRUE(send[r].guardsIntact()) << "send guards of rank " << r << " step " << step;
      if (!c.inPlace) {
        ASSERT_TRUE(recv[r].guardsIntact()) << "recv guards of rank " << r << " step " << step;
        ASSERT_EQ(memcmp(send[r].b.data(), sendBefore[r].b.data(), send[r].b.size()), 0)
            << "out-of-place send buffer of rank " << r << " changed, step " << step;
      } else if (c.rs) {
        // In place: the send buffer outside block r is the caller's.
        const size_t lo = r * c.n * es, hi = lo + c.n * es;
        const size_t f = send[r].front();
        ASSERT_EQ(memcmp(send[r].b.data(), sendBefore[r].b.data(), f + lo), 0)
            << "in-place reduce-scatter: send bytes before block " << r << " changed, step "
            << step;
        ASSERT_EQ(memcmp(send[r].b.data() + f + hi, sendBefore[r].b.data() + f + hi,
                         send[r].b.size() - f - hi),
                  0)
            << "in-place reduce-scatter: send bytes after block " << r << " changed, step " << step;
      }
      const std::vector<float> got = load(recvPtr(r), t, outN);
      ASSERT_EQ(expect[r].size(), outN);
      for (size_t k = 0; k < outN; ++k) {
        ASSERT_EQ(memcmp(&got[k], &expect[r][k], 4), 0)
            << "rank " << r << " step " << step << " k " << k << " got " << got[k] << " want "
            << expect[r][k];
      }
      if (!c.rs && r > 0) {
        ASSERT_EQ(memcmp(recvPtr(r), recvPtr(0), outN * es), 0) << "rank " << r << " differs";
      }
    }
    // Every call counted once, as compressed or passed through; a compressed
    // one with its dense bytes. A call of no elements is neither.
    for (int r = 0; r < N; ++r) {
      gradcompStats_t st;
      ASSERT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
      const uint64_t calls = total == 0 ? 0 : step + 1;
      EXPECT_EQ(st.callsCompressed + st.callsPassedThrough, calls) << "rank " << r;
      EXPECT_EQ(st.callsCompressed, passed ? 0 : calls) << "rank " << r;
      EXPECT_EQ(st.bytesIn, passed ? 0 : calls * total * es) << "rank " << r;
      EXPECT_EQ(st.callsReduceScatter, c.rs && !passed ? calls : 0) << "rank " << r;
    }
    if (passed) continue;
    if (conserve) {
      ASSERT_NO_FATAL_FAILURE(held(&after, &mag));
      const std::vector<float> out = load(recvPtr(0), t, outN);
      for (size_t k = 0; k < total; ++k) {
        const double o = (double)out[k] * (c.avg ? N : 1);
        ASSERT_NEAR(o + after[k], before[k], 2e-6 * (mag[k] + fabs(o)) + 1e-30)
            << "conservation at k " << k << " step " << step;
      }
    }
    // Error feedback: what the library keeps equals the reference's.
    for (int r = 0; r < N && !hier; ++r) {
      const float* lib = nullptr;
      for (auto& kv : world.comm(r)->states) lib = kv.second.residual;
      const std::vector<float>* want = nullptr;
      if (sparse) {
        if (!fst[r].v.empty()) want = &fst[r].v;
      } else if (cfg.errorFeedback) {
        want = &ref[r].residual;
      }
      if (!want) continue;
      ASSERT_NE(lib, nullptr) << "rank " << r;
      ASSERT_EQ(memcmp(lib, want->data(), total * 4), 0) << "residual of rank " << r;
    }
  }
}

void runCase(const Case& c) {
  if (c.socket) {
    gctest::SocketWorld world(c.N, c.cfg);
    if (testing::Test::HasFailure()) return;
    runCaseIn(c, world);
  } else {
    gctest::CpuWorld world(c.N, c.cfg);
    runCaseIn(c, world);
  }
}

gradcompConfig_t base(gradcompMethod_t m) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = m;
  cfg.minElements = 0;
  cfg.bucketSize = 64;
  cfg.bits = 4;
  cfg.density = 0.05f;
  cfg.autoTune = 0;
  return cfg;
}

// Counts around N, the bucket d and the chunks of N ranks, and primes.
std::vector<size_t> edgeCounts(int N, size_t d) {
  std::vector<size_t> v = {
      0,          1,           (size_t)N - 1, (size_t)N, (size_t)N + 1, d - 1,
      d,          d + 1,       N * d - 1,     N * d,     N * d + 1,     (N - 1) * d + 1,
      (size_t)97, (size_t)257, (size_t)1021};
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

std::vector<int> layouts(int N) {
  std::vector<int> d;
  for (int L = 1; L <= N; ++L) {
    if (N % L == 0) d.push_back(L);
  }
  return d;
}

void sweep(const std::vector<gradcompConfig_t>& cfgs, bool rs, int stride) {
  Sampler sample(stride);
  for (const gradcompConfig_t& c0 : cfgs)
    for (int N = 1; N <= 8; ++N)
      for (int L : layouts(N))
        for (size_t n : edgeCounts(N, c0.bucketSize))
          for (DType t : {DType::F32, DType::F16, DType::BF16})
            for (int avg = 0; avg < 2; ++avg)
              for (int ip = 0; ip < 2; ++ip) {
                // The sparse allreduce takes no dense algorithm.
                if (!rs && c0.method != gradcompMethodQsgd && c0.method != gradcompMethodNone &&
                    c0.algo != gradcompAlgoAuto)
                  continue;
                if (!sample.pick()) continue;
                Case c;
                c.cfg = c0;
                c.cfg.localSize = L;
                c.N = N, c.t = t, c.avg = avg, c.n = n, c.inPlace = ip, c.rs = rs;
                c.steps = c0.method == gradcompMethodDgc ? 4 : 2;
                runCase(c);
                if (testing::Test::HasFatalFailure()) return;
              }
}

std::vector<gradcompConfig_t> qsgdConfigs() {
  std::vector<gradcompConfig_t> v;
  for (gradcompAlgo_t a :
       {gradcompAlgoAuto, gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather}) {
    gradcompConfig_t c = base(gradcompMethodQsgd);
    c.algo = a;
    v.push_back(c);
  }
  gradcompConfig_t c = base(gradcompMethodQsgd);
  c.bucketSize = 32, c.bits = 2;
  v.push_back(c);
  c.bucketSize = 96, c.bits = 7;
  v.push_back(c);
  c.bucketSize = 64, c.bits = 8, c.errorFeedback = 0, c.ownerResidual = 0;
  v.push_back(c);
  return v;
}

std::vector<gradcompConfig_t> sparseConfigs() {
  std::vector<gradcompConfig_t> v;
  for (float dens : {1e-6f, 0.05f, 0.5f, 1.0f}) {
    gradcompConfig_t c = base(gradcompMethodTopk);
    c.density = dens;
    v.push_back(c);
    c.select = gradcompSelectExact;
    v.push_back(c);
    c = base(gradcompMethodRandk);
    c.density = dens;
    v.push_back(c);
  }
  gradcompConfig_t d = base(gradcompMethodDgc);
  d.warmupSteps = 2;
  v.push_back(d);
  return v;
}

std::vector<gradcompConfig_t> qsgdVariants() {
  std::vector<gradcompConfig_t> v;
  for (size_t pb : {(size_t)128, (size_t)1000}) {
    for (gradcompAlgo_t a : {gradcompAlgoAuto, gradcompAlgoTwoShot, gradcompAlgoRing}) {
      gradcompConfig_t c = base(gradcompMethodQsgd);
      c.algo = a, c.pipelineBytes = pb;
      v.push_back(c);
    }
  }
  gradcompConfig_t c = base(gradcompMethodQsgd);
  c.rounding = gradcompRoundNearest, c.bits = 3;
  v.push_back(c);
  c = base(gradcompMethodQsgd);
  c.levels = gradcompLevelsSquare, c.bits = 5, c.algo = gradcompAlgoRing;
  v.push_back(c);
  c = base(gradcompMethodQsgd);
  c.elias = 1, c.bits = 6;
  v.push_back(c);
  c = base(gradcompMethodQsgd);
  c.ownerResidual = 0, c.algo = gradcompAlgoTwoShot;
  v.push_back(c);
  c = base(gradcompMethodQsgd);
  c.bucketSize = 8192, c.bits = 5;
  v.push_back(c);
  return v;
}

TEST(SweepCpu, QsgdVariantsAllReduce) {
  sweep(qsgdVariants(), false, 150);
}
TEST(SweepCpu, QsgdVariantsReduceScatter) {
  sweep(qsgdVariants(), true, 500);
}

std::vector<gradcompConfig_t> sparseVariants() {
  std::vector<gradcompConfig_t> v;
  gradcompConfig_t c = base(gradcompMethodTopk);
  c.valueType = ncclFloat16, c.oversample = 1.0f;
  v.push_back(c);
  c = base(gradcompMethodTopk);
  c.valueType = ncclBfloat16, c.errorFeedback = 0, c.sampleRate = 1.0f, c.oversample = 16.0f;
  v.push_back(c);
  c = base(gradcompMethodRandk);
  c.valueType = ncclFloat16, c.density = 0.3f;
  v.push_back(c);
  c = base(gradcompMethodDgc);
  c.clipNorm = 0.5f, c.momentumMasking = 0, c.density = 0.1f;
  v.push_back(c);
  c = base(gradcompMethodDgc);
  c.momentumCorrection = 0, c.select = gradcompSelectExact, c.warmupSteps = 3;
  v.push_back(c);
  return v;
}

TEST(SweepCpu, SparseVariantsAllReduce) {
  sweep(sparseVariants(), false, 150);
}
TEST(SweepCpu, SparseVariantsReduceScatter) {
  sweep(sparseVariants(), true, 150);
}

TEST(SweepCpu, PassThroughAllReduce) {
  gradcompConfig_t none = base(gradcompMethodNone);
  gradcompConfig_t small = base(gradcompMethodQsgd);
  small.minElements = 1000;
  sweep({none, small}, false, 100);
}
TEST(SweepCpu, PassThroughReduceScatter) {
  gradcompConfig_t none = base(gradcompMethodNone);
  gradcompConfig_t small = base(gradcompMethodQsgd);
  small.minElements = 1000;
  sweep({none, small}, true, 100);
}
TEST(SweepCpu, QsgdAllReduce) {
  sweep(qsgdConfigs(), false, 100);
}
TEST(SweepCpu, QsgdReduceScatter) {
  sweep(qsgdConfigs(), true, 100);
}
TEST(SweepCpu, SparseAllReduce) {
  sweep(sparseConfigs(), false, 200);
}
TEST(SweepCpu, SparseReduceScatter) {
  sweep(sparseConfigs(), true, 200);
}

// Every config of the sweeps above: QSGD's and the sparse methods', and their
// variants.
std::vector<gradcompConfig_t> allConfigs() {
  std::vector<gradcompConfig_t> cfgs = qsgdConfigs();
  for (auto& c : sparseConfigs()) cfgs.push_back(c);
  for (auto& c : qsgdVariants()) cfgs.push_back(c);
  for (auto& c : sparseVariants()) cfgs.push_back(c);
  return cfgs;
}

std::vector<std::vector<uint64_t>> hostLayouts() {
  return {{7, 9, 7, 9}, {7, 9, 9, 7, 5, 5}, {1, 2, 3, 1, 2, 3}, {4, 4, 6, 6, 4, 4, 6, 6},
          {7, 7, 7, 9}, {1, 1, 2, 2, 2},    {1, 2, 2, 3, 3, 3}, {3, 1, 2, 1, 2, 3, 1, 2}};
}

TEST(SweepCpu, HostLayouts) {
  std::vector<gradcompConfig_t> cfgs = allConfigs();
  Sampler sample(250);
  for (const auto& hosts : hostLayouts())
    for (const gradcompConfig_t& c0 : cfgs)
      for (int rs = 0; rs < 2; ++rs) {
        const int N = (int)hosts.size();
        for (size_t n : edgeCounts(N, c0.bucketSize))
          for (DType t : {DType::F32, DType::F16, DType::BF16})
            for (int ip = 0; ip < 2; ++ip) {
              if (!rs && c0.method != gradcompMethodQsgd && c0.algo != gradcompAlgoAuto) continue;
              if (!sample.pick()) continue;
              Case c;
              c.cfg = c0;
              c.cfg.localSize = 1;
              c.hosts = hosts;
              c.N = N, c.t = t, c.avg = (n % 2) == 1, c.n = n, c.inPlace = ip, c.rs = rs;
              runCase(c);
              if (testing::Test::HasFatalFailure()) return;
            }
      }
}

TEST(SweepCpu, SocketWorld) {
  std::vector<gradcompConfig_t> cfgs = allConfigs();
  gradcompConfig_t none = base(gradcompMethodNone);
  cfgs.push_back(none);
  Sampler sample(20);
  for (const gradcompConfig_t& c0 : cfgs)
    for (int N : {2, 3, 4, 5, 6})
      for (int L : layouts(N))
        for (int rs = 0; rs < 2; ++rs)
          for (size_t n : {(size_t)0, (size_t)1, (size_t)N + 1, (size_t)65, (size_t)1021}) {
            if (!rs && c0.method != gradcompMethodQsgd && c0.method != gradcompMethodNone &&
                c0.algo != gradcompAlgoAuto)
              continue;
            if (!sample.pick()) continue;
            Case c;
            c.cfg = c0;
            c.cfg.localSize = L;
            c.socket = true;
            c.N = N, c.t = (DType)((n + L) % 3), c.avg = (N + n) % 2, c.n = n;
            c.inPlace = (n + N + rs) % 2, c.rs = rs;
            runCase(c);
            if (testing::Test::HasFatalFailure()) return;
          }
}

// The cases of the state tests below: each config, N of Ns, layout,
// collective (rs: the reduce-scatter) and count n (one element, N + 1, a
// bucket per rank and one more) that the collective takes, sampled; fn(cfg,
// N, rs, n, t), cfg's localSize the layout, t a type by the case, under a
// trace naming them. Stops at a fatal failure.
template <class Fn>
void stateCases(const std::vector<gradcompConfig_t>& cfgs, std::initializer_list<int> Ns, Fn fn) {
  Sampler sample(40);
  for (const gradcompConfig_t& c0 : cfgs)
    for (int N : Ns)
      for (int L : layouts(N))
        for (int rs = 0; rs < 2; ++rs)
          for (size_t n : {(size_t)1, (size_t)N + 1, (size_t)c0.bucketSize * N + 1}) {
            if (!rs && c0.method != gradcompMethodQsgd && c0.algo != gradcompAlgoAuto) continue;
            if (!sample.pick()) continue;
            const DType t = (DType)((n + N + L) % 3);
            gradcompConfig_t cfg = c0;
            cfg.localSize = L;
            SCOPED_TRACE(testing::Message()
                         << "method=" << cfg.method << " algo=" << cfg.algo << " N=" << N
                         << " L=" << L << " rs=" << rs << " n=" << n << " t=" << (int)t);
            fn(cfg, N, rs, n, t);
            if (testing::Test::HasFatalFailure()) return;
          }
}

// One call of every rank of w on its bytes buf[r], in place: an allreduce
// (Sum) of n elements of t, or (rs) a reduce-scatter (Avg) into block r.
void callInPlace(gctest::CpuWorld& w, std::vector<std::vector<uint8_t>>& buf, int rs, size_t n,
                 DType t) {
  const size_t es = esize(t);
  auto res = w.run([&](int r) {
    void* p = buf[r].data();
    return rs ? gradcompReduceScatter(p, (uint8_t*)p + r * n * es, n, nccl(t), ncclAvg, w.comm(r),
                                      nullptr)
              : gradcompAllReduce(p, p, n, nccl(t), ncclSum, w.comm(r), nullptr);
  });
  for (int r = 0; r < w.size(); ++r) EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r;
}

// A saved state, loaded back, repeats the next call bit for bit (output
// and the state after it) over edge shapes of every method and layout.
TEST(SweepCpu, SavedStateRepeatsTheNextCall) {
  stateCases(allConfigs(), {2, 3, 4, 6},
             [](const gradcompConfig_t& cfg, int N, int rs, size_t n, DType t) {
               const size_t es = esize(t), total = rs ? n * N : n;
               gctest::CpuWorld world(N, cfg);
               std::vector<std::vector<uint8_t>> buf(N, std::vector<uint8_t>(total * es + 4));
               auto call = [&](int step) {
                 for (int r = 0; r < N; ++r) {
                   Rank x = makeInputs(1, total, t, 100 * step + r + 1)[0];
                   store(x, t, total, buf[r].data());
                 }
                 callInPlace(world, buf, rs, n, t);
                 return buf;
               };
               call(0), call(1);
               std::vector<std::vector<uint8_t>> saved(N);
               for (int r = 0; r < N; ++r) saved[r] = gctest::savedBufferState(world.comm(r));
               const auto a = call(2);
               std::vector<std::vector<uint8_t>> afterA(N);
               for (int r = 0; r < N; ++r) afterA[r] = gctest::savedBufferState(world.comm(r));
               for (int r = 0; r < N; ++r) {
                 ASSERT_EQ(gradcompCommLoadState(world.comm(r), saved[r].data(), saved[r].size()),
                           gradcompSuccess)
                     << gradcompGetLastError();
               }
               const auto b = call(2);
               for (int r = 0; r < N; ++r) {
                 ASSERT_EQ(a[r], b[r]) << "output of rank " << r;
                 ASSERT_EQ(afterA[r], gctest::savedBufferState(world.comm(r)))
                     << "state of rank " << r;
               }
             });
}

// gradcompCommSetGradScale by a power of two, before the first call or
// between calls (the state then rescaled): every later call gives bit for
// bit that factor times what the unscaled gradients give (include/gradcomp.h).
TEST(SweepCpu, GradScaleIsExactForPowersOfTwo) {
  std::vector<gradcompConfig_t> cfgs = allConfigs();
  gradcompConfig_t dyn = base(gradcompMethodQsgd);
  dyn.bitsMode = gradcompBitsDynamic, dyn.bitsMin = 2, dyn.bitsMax = 7;
  cfgs.push_back(dyn);
  stateCases(
      cfgs, {1, 2, 3, 4, 6}, [](const gradcompConfig_t& cfg, int N, int rs, size_t n, DType t) {
        const size_t es = esize(t), total = rs ? n * N : n;
        const int changeAt = (int)(n + rs) % 2;  // the step before which the scale is set
        gctest::CpuWorld plain(N, cfg), scaled(N, cfg);
        std::vector<std::vector<uint8_t>> a(N, std::vector<uint8_t>(total * es + 4)), b = a;
        for (int step = 0; step < 3; ++step) {
          const float kScale = step >= changeAt ? 8.0f : 1.0f;
          if (step == changeAt) {
            for (int r = 0; r < N; ++r) {
              ASSERT_EQ(gradcompCommSetGradScale(scaled.comm(r), kScale, nullptr), gradcompSuccess);
            }
          }
          for (int r = 0; r < N; ++r) {
            Rank x = makeInputs(1, total, t, 100 * step + r + 1)[0];
            store(x, t, total, a[r].data());
            for (size_t k = 0; k < total; ++k) {
              gc::storeFromFloat(b[r].data(), t, k, kScale * gc::loadAsFloat(a[r].data(), t, k));
            }
          }
          callInPlace(plain, a, rs, n, t), callInPlace(scaled, b, rs, n, t);
          for (int r = 0; r < N; ++r) {
            const size_t lo = rs ? r * n : 0;
            for (size_t k = lo; k < lo + (rs ? n : total); ++k) {
              const float unscaled = gc::loadAsFloat(a[r].data(), t, k);
              // An fp16 output below its normal range was rounded coarser
              // than the scaled one: no exact factor there.
              if (t == DType::F16 && fabsf(unscaled) < 0x1p-14f && kScale != 1.0f) continue;
              const float want = kScale * unscaled;
              const float got = gc::loadAsFloat(b[r].data(), t, k);
              ASSERT_EQ(memcmp(&want, &got, 4), 0) << "rank " << r << " step " << step << " k " << k
                                                   << " got " << got << " want " << want;
            }
          }
        }
      });
}

// Counts around GRADCOMP_MIN_ELEMENTS (its default): below it passed
// through, from it compressed; a reduce-scatter compares nranks * recvcount.
// DGC calls passed through (one rank, or under minElements) carry the
// velocity: v += (u = m u + g), all of v to NCCL's reduction, v cleared.
TEST(SweepCpu, DgcPassedCarriesVelocity) {
  for (int N = 1; N <= 6; ++N)
    for (int rs = 0; rs < 2; ++rs)
      for (size_t n : {(size_t)0, (size_t)1, (size_t)N + 1, (size_t)65, (size_t)300})
        for (DType t : {DType::F32, DType::F16, DType::BF16}) {
          Case c;
          c.cfg = base(gradcompMethodDgc);
          c.cfg.minElements = N == 1 ? 0 : 100000;
          c.cfg.localSize = N == 6 && t == DType::F16 ? 3 : N % 2 == 0 && N > 2 ? 2 : 1;
          c.N = N, c.rs = rs, c.t = t, c.avg = (n + N) % 2, c.n = n, c.inPlace = n % 2;
          c.steps = 3;
          runCase(c);
          if (testing::Test::HasFatalFailure()) return;
        }
}

// Keyed calls whose buffers move every step, and buffers aligned to one
// element only, over a few shapes of each method.
TEST(SweepCpu, KeyedMovingAndShiftedBuffers) {
  Sampler sample(10);
  std::vector<gradcompConfig_t> cfgs = qsgdConfigs();
  for (auto& c : sparseConfigs()) cfgs.push_back(c);
  for (auto& c : qsgdVariants()) cfgs.push_back(c);
  for (int variant = 0; variant < 2; ++variant)
    for (const gradcompConfig_t& c0 : cfgs)
      for (int N : {1, 3, 4})
        for (int rs = 0; rs < 2; ++rs)
          for (size_t n : {(size_t)1, (size_t)N + 1, (size_t)130})
            for (DType t : {DType::F32, DType::F16}) {
              if (!rs && c0.method != gradcompMethodQsgd && c0.algo != gradcompAlgoAuto) continue;
              if (!sample.pick()) continue;
              Case c;
              c.cfg = c0;
              c.cfg.localSize = N == 4 ? 2 : 1;
              c.N = N, c.rs = rs, c.t = t, c.avg = n % 2, c.n = n, c.inPlace = (n + rs) % 2;
              c.keyed = variant == 0, c.shifted = variant == 1;
              c.steps = 3;
              runCase(c);
              if (testing::Test::HasFatalFailure()) return;
            }
}

// DQ-SGD's bit modes over edge shapes: every call at the width the ranks
// agreed on, bit for bit.
TEST(SweepCpu, DqsgdBitModes) {
  for (gradcompBitsMode_t m : {gradcompBitsDynamic, gradcompBitsBudget})
    for (gradcompAlgo_t a : {gradcompAlgoAuto, gradcompAlgoTwoShot, gradcompAlgoRing})
      for (int N : {1, 2, 3, 4, 6})
        for (int rs = 0; rs < 2; ++rs)
          for (size_t n : {(size_t)0, (size_t)1, (size_t)N + 1, (size_t)64 * N + 1, (size_t)1021}) {
            Case c;
            c.cfg = base(gradcompMethodQsgd);
            c.cfg.bitsMode = m, c.cfg.algo = a, c.cfg.bitsMin = 2, c.cfg.bitsMax = 7;
            c.cfg.budgetWindow = 3, c.cfg.bitsBudget = 3.5f;
            c.cfg.localSize = N == 4 || N == 6 ? 2 : 1;
            c.N = N, c.rs = rs, c.t = (DType)(n % 3), c.avg = N % 2, c.n = n;
            c.inPlace = (n + N) % 2, c.steps = 4;
            runCase(c);
            if (testing::Test::HasFatalFailure()) return;
          }
}

// Every bit width under every dense algorithm, both roundings and levels.
TEST(SweepCpu, BitsAlgorithmsRoundingsLevels) {
  Sampler sample(20);
  for (int bits = 2; bits <= 8; ++bits)
    for (gradcompAlgo_t a : {gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather})
      for (int rl = 0; rl < 3; ++rl)
        for (int N : {2, 3, 5, 8}) {
          for (int rs = 0; rs < 2; ++rs)
            for (size_t n : {(size_t)1, (size_t)32 * N - 1, (size_t)32 * N + 1, (size_t)1021}) {
              if (!sample.pick()) continue;
              Case c;
              c.cfg = base(gradcompMethodQsgd);
              c.cfg.bits = bits, c.cfg.algo = a, c.cfg.bucketSize = 32;
              if (rl == 1) c.cfg.rounding = gradcompRoundNearest;
              if (rl == 2) c.cfg.levels = gradcompLevelsSquare;
              c.cfg.localSize = N == 8 && bits % 2 ? 2 : 1;
              c.N = N, c.rs = rs, c.t = (DType)(bits % 3), c.avg = N % 2, c.n = n;
              c.inPlace = (n + bits) % 2;
              runCase(c);
              if (testing::Test::HasFatalFailure()) return;
            }
        }
}

TEST(SweepCpu, AroundMinElements) {
  for (gradcompMethod_t m : {gradcompMethodQsgd, gradcompMethodTopk, gradcompMethodRandk})
    for (int N : {2, 3})
      for (int rs = 0; rs < 2; ++rs)
        for (long delta : {-1L, 0L, 1L}) {
          Case c;
          c.cfg = base(m);
          c.cfg.minElements = 16384;
          c.N = N, c.rs = rs, c.t = N == 2 ? DType::F32 : DType::F16, c.avg = N == 3;
          c.inPlace = delta != 0;
          c.n = rs ? (16384 + delta * N) / N : 16384 + delta;
          runCase(c);
          if (testing::Test::HasFatalFailure()) return;
        }
}

}  // namespace
