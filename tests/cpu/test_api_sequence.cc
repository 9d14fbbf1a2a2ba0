// Seeded random sequences of C API calls on the in-process CPU world, each
// call's outcome held to a model of what include/gradcomp.h promises. Several
// worlds live at once, of random configs (QSGD with every exchange, bit mode,
// rounding, levels, Elias and pipelining; top-k, rand-k and DGC; flat and
// hierarchical layouts); between their allreduce and reduce-scatter calls of
// random sizes (0 and under minElements included), types, ops and buffers
// (in place and out of place, keyed and by address) come state saves and
// loads (into the same comms and into new ones), resets, forgets of one key,
// grad scales,
// retunes, refused calls made by every rank or by one alone (under
// GRADCOMP_CHECK_CALLS, a collective one rank gets wrong while its peers make
// it right), refused loads and scales, stops and aborts, and comms destroyed
// and made again.
//
// The model: every compressed call equals the serial reference of its
// exchange bit for bit, the model keeping each buffer's state: QSGD of every
// exchange, width and layout (ref_algos.h, ref_rs.h, ref_hier.h,
// ref_hier_rs.h; pipelined calls against the unpipelined reference, Elias
// against the fixed width's levels, DQ-SGD at the width the call reports),
// the residuals and owner residuals; top-k, rand-k and DGC, flat and
// hierarchical (ref_sparse.h, ref_rs.h, ref_hier.h, ref_hier_rs.h), v and
// DGC's u. A passed call equals the rank-order reduction, of DGC's velocity
// under momentum correction (the model carries u and v through it). Every
// rank's output of an allreduce is the same bytes; the step counter and the
// compressed/passed counts follow the calls; a refused call names why,
// leaves the comm's saved state byte for byte as it was and the comm usable;
// and for error feedback without momentum, over each buffer's whole life
// (loads into new comms included), the inputs equal the outputs plus every
// rank's residuals up to float rounding. ASan and UBSan (tools/sanitize.sh)
// add leaks and undefined behaviour.
//
// CI runs a fixed set of seeds. GRADCOMP_SEQ_SEEDS=N runs N seeds from
// GRADCOMP_SEQ_SEED (default 1) and GRADCOMP_SEQ_OPS=M makes each sequence M
// operations long, for long runs (docs/reliability.md, "Fuzzing").
#include <errno.h>
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "gradcomp.h"
#include "kernels/common_math.cuh"
#include "plugin/algorithms/algorithms.h"
#include "plugin/collective.h"
#include "plugin/comm.h"
#include "tests/common/cpu_world.h"
#include "tests/common/ledger.h"
#include "tests/common/one_rank_refusal.h"
#include "tests/common/ref_algos.h"
#include "tests/common/ref_hier.h"
#include "tests/common/ref_hier_rs.h"
#include "tests/common/ref_rs.h"
#include "tests/common/ref_sparse.h"
#include "tests/common/state_blob.h"
#include "tests/common/env_knob.h"
#include "tests/common/test_util.h"
#include "tests/common/world_checks.h"

namespace {

using gc::DType;
using gctest::ref::Rank;

using gctest::envKnob;
using gctest::onRanks;

// What the sequences ran, printed at the end: a long run says what it covered.
// (Atomic: two worlds' calls may run at once.)
struct Tally {
  std::atomic<uint64_t> calls{0}, compressed{0}, exact{0}, passed{0}, ledgers{0}, refused{0},
      refusedOnOne{0}, loads{0}, resets{0}, forgets{0}, scales{0}, retunes{0}, worlds{0}, aborts{0},
      pairs{0};
  // Of the compressed calls held to a reference: pipelined hierarchical QSGD,
  // Elias, DQ-SGD, sparse on a hierarchical layout, DGC with momentum
  // correction; and the passed calls that carried DGC's velocity.
  std::atomic<uint64_t> pipedHier{0}, elias{0}, dqsgd{0}, sparseHier{0}, momentum{0},
      momentumPasses{0};
};
Tally gTally;

constexpr int kSlots = 3;
constexpr size_t kMaxCount = 2048;  // elements of one allreduce; a reduce-scatter's input too
constexpr int kMaxRanks = 4;

DType dtypeOf(ncclDataType_t t) {
  return t == ncclFloat32 ? DType::F32 : t == ncclFloat16 ? DType::F16 : DType::BF16;
}
bool isFloat(ncclDataType_t t) {
  return t == ncclFloat32 || t == ncclFloat16 || t == ncclBfloat16;
}
size_t elemSize(ncclDataType_t t) {
  return t == ncclFloat16 || t == ncclBfloat16 ? 2 : 4;
}
float getT(const void* p, ncclDataType_t t, size_t i) {
  if (t == ncclFloat32) return static_cast<const float*>(p)[i];
  if (t == ncclInt32) return (float)static_cast<const int32_t*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return t == ncclFloat16 ? gc::halfToFloat(h) : gc::bf16ToFloat(h);
}
void setT(void* p, ncclDataType_t t, size_t i, float v) {
  if (t == ncclFloat32) {
    static_cast<float*>(p)[i] = v;
  } else if (t == ncclInt32) {
    static_cast<int32_t*>(p)[i] = (int32_t)lrintf(v * 100.0f);
  } else {
    static_cast<uint16_t*>(p)[i] = t == ncclFloat16 ? gc::floatToHalf(v) : gc::floatToBf16(v);
  }
}
// x as a buffer of type t holds it.
float roundTo(ncclDataType_t t, float x) {
  if (t == ncclFloat16) return gc::halfToFloat(gc::floatToHalf(x));
  if (t == ncclBfloat16) return gc::bf16ToFloat(gc::floatToBf16(x));
  return x;
}
double epsOf(ncclDataType_t t) {
  return t == ncclFloat32 ? 0x1p-24 : t == ncclFloat16 ? 0x1p-11 : 0x1p-8;
}

// One call as every rank makes it.
struct Call {
  bool rs = false, keyed = false, inPlace = true;
  int slot = 0;
  uint64_t key = 0;
  size_t m = 0;  // the allreduce's count, the reduce-scatter's recvcount
  ncclDataType_t type = ncclFloat32;
  ncclRedOp_t op = ncclSum;
  size_t inputs(int N) const { return rs ? m * (size_t)N : m; }
};

// A buffer state as every rank knows it: (reduce-scatter, keyed, key or
// slot * 2 + in place, input count, type).
using Id = std::tuple<bool, bool, uint64_t, size_t, int>;

Id idOf(const Call& k, int N) {
  return Id{k.rs, k.keyed, k.keyed ? k.key : (uint64_t)(k.slot * 2 + (k.inPlace ? 1 : 0)),
            k.inputs(N), (int)k.type};
}

// The model's residuals of one buffer state, per rank (the reference's Rank
// residual and owner residual).
struct ModelState {
  std::vector<std::vector<float>> res, own;
  std::vector<gctest::ref::SparseState> sparse;  // the sparse methods' v, u and call count
  // A hierarchical layout's: per shard (allreduce) or local rank
  // (reduce-scatter), per node. DGC's momentum pass keeps each rank's u and v
  // over its whole buffer in `sparse`, on a hierarchical layout too, whose
  // first compressed call after a pass of GRADCOMP_AUTO would move them onto
  // the shards of the node's sums (collective.cc, `unsharded`). The model
  // need not: the in-process CPU world does not time, so GRADCOMP_AUTO passes
  // no call it may compress, and a buffer's Sum/Avg calls are all compressed
  // or all passed (under minElements).
  std::vector<std::vector<gctest::ref::SparseState>> hierSparse;
};

struct Settings {
  gradcompConfig_t cfg;
  int N;
  bool ledger;     // inputs == outputs + residuals holds
  bool plainPass;  // a passed float Sum/Avg call is the plain reduction (else DGC's velocity)
  std::string what;
};

Settings randomSettings(std::mt19937_64& rng) {
  auto pick = [&](int n) { return (int)(rng() % (uint64_t)n); };
  gradcompConfig_t c;
  gradcompConfigInit(&c);
  const int Ns[] = {1, 2, 2, 3, 4, 4};
  const int N = Ns[pick(6)];
  c.cpuTimeoutSec = 20.0f;
  c.autoTune = pick(2);
  c.checkCalls = pick(2);
  const size_t mins[] = {0, 0, 64, 700};
  c.minElements = mins[pick(4)];
  const int buckets[] = {32, 64, 128, 512};
  c.bucketSize = buckets[pick(4)];
  c.seed = rng();
  c.clipNorm = 0.0f;
  c.momentumCorrection = 0;
  if (N % 2 == 0 && N > 2 && pick(3) == 0) c.localSize = 2;
  const int m = pick(10);
  c.method = m < 5   ? gradcompMethodQsgd
             : m < 6 ? gradcompMethodTopk
             : m < 7 ? gradcompMethodRandk
             : m < 9 ? gradcompMethodDgc
                     : gradcompMethodNone;
  if (c.method == gradcompMethodQsgd) {
    const gradcompAlgo_t algos[] = {gradcompAlgoAuto, gradcompAlgoTwoShot, gradcompAlgoRing,
                                    gradcompAlgoAllgather, gradcompAlgoHier};
    c.algo = algos[pick(5)];
    c.bits = 2 + pick(7);
    c.ownerResidual = pick(2);
    c.errorFeedback = pick(5) != 0;
    c.rounding = pick(3) == 0 ? gradcompRoundNearest : gradcompRoundStochastic;
    c.levels = pick(3) == 0 ? gradcompLevelsSquare : gradcompLevelsUniform;
    const size_t pipes[] = {0, 0, 1024, 4096};
    c.pipelineBytes = pipes[pick(4)];
    const int mode = pick(6);
    if (mode == 0) {
      c.elias = 1, c.levels = gradcompLevelsUniform;
      if (c.algo == gradcompAlgoRing) c.algo = gradcompAlgoAuto;
    } else if (mode == 1) {
      c.bitsMode = gradcompBitsDynamic, c.levels = gradcompLevelsUniform;
    } else if (mode == 2) {
      c.bitsMode = gradcompBitsBudget, c.levels = gradcompLevelsUniform, c.budgetWindow = 4;
    }
  } else if (c.method != gradcompMethodNone) {
    const float densities[] = {0.001f, 0.01f, 0.1f, 0.5f};
    c.density = densities[pick(4)];
    c.select = pick(2) ? gradcompSelectExact : gradcompSelectThreshold;
    if (c.method == gradcompMethodDgc) {
      c.warmupSteps = pick(3) * 3;
      c.momentumCorrection = pick(3) == 0;
    }
  }
  if (c.rounding == gradcompRoundNearest) c.errorFeedback = 1;  // its bias needs a residual
  if (gradcompConfigValidate(&c) != gradcompSuccess) {
    // A combination the library refuses (the validator names it): plain QSGD levels instead.
    c.rounding = gradcompRoundStochastic, c.levels = gradcompLevelsUniform;
    c.elias = 0, c.bitsMode = gradcompBitsFixed;
  }
  if (gradcompConfigValidate(&c) != gradcompSuccess) {
    ADD_FAILURE() << "a generated config is refused: " << gradcompGetLastError();
  }
  Settings s;
  s.cfg = c;
  s.N = N;
  const bool momentum = c.method == gradcompMethodDgc && c.momentumCorrection;
  // A second quantization (two-shot, ring, the hierarchy's) keeps its error
  // only in the owner residual.
  const bool once = c.method != gradcompMethodQsgd || c.elias || c.algo == gradcompAlgoAllgather;
  s.ledger =
      c.method != gradcompMethodNone && c.errorFeedback && !momentum && (once || c.ownerResidual);
  s.plainPass = !momentum;
  s.what = "method " + std::to_string((int)c.method) + " algo " + std::to_string((int)c.algo) +
           " N " + std::to_string(N) + " local " + std::to_string(c.localSize) + " bits " +
           std::to_string(c.bits) + " mode " + std::to_string((int)c.bitsMode) + " elias " +
           std::to_string(c.elias) + " ef " + std::to_string(c.errorFeedback) + " owner " +
           std::to_string(c.ownerResidual) + " min " + std::to_string(c.minElements) + " bucket " +
           std::to_string(c.bucketSize) + " pipe " + std::to_string(c.pipelineBytes) +
           " rounding " + std::to_string((int)c.rounding) + " levels " +
           std::to_string((int)c.levels) + " density " + std::to_string(c.density) + " warmup " +
           std::to_string(c.warmupSteps) + " momentum " + std::to_string(c.momentumCorrection) +
           " checkCalls " + std::to_string(c.checkCalls) + " auto " + std::to_string(c.autoTune);
  return s;
}

// One world of the sequence and its model.
class SeqWorld {
 public:
  SeqWorld(const Settings& s, std::string name)
      : S(s), N(s.N), name_(std::move(name)), send_(N), recv_(N) {
    for (int r = 0; r < N; ++r) {
      send_[r].assign(kSlots, std::vector<float>(kMaxCount));
      recv_[r].assign(kSlots, std::vector<float>(kMaxCount));
    }
    create();
  }
  ~SeqWorld() {
    if (!comms_.empty()) destroy(true);
  }

  const Settings S;
  Call last;  // randomCall's last, which a momentum world may make again
  bool hasLast = false;
  const int N;
  uint64_t calls = 0;

  std::string where() const { return name_ + " (" + S.what + ")"; }
  bool alive() const { return !comms_.empty(); }

  void create() {
    comms_.assign(N, nullptr);
    ASSERT_EQ(gradcompCommCreateCpu(N, &S.cfg, comms_.data()), gradcompSuccess)
        << where() << ": " << gradcompGetLastError();
    for (int r = 0; r < N; ++r) {
      int rank = -1, size = -1, nodes = -1, local = -1;
      ASSERT_EQ(gradcompCommRank(comms_[r], &rank), gradcompSuccess);
      ASSERT_EQ(gradcompCommSize(comms_[r], &size), gradcompSuccess);
      ASSERT_EQ(gradcompCommLayout(comms_[r], &nodes, &local), gradcompSuccess);
      EXPECT_EQ(rank, r) << where();
      EXPECT_EQ(size, N) << where();
      EXPECT_EQ(nodes * local, N) << where();
      if (S.cfg.localSize >= 1) EXPECT_EQ(local, S.cfg.localSize) << where();
    }
    scale_ = 1.0f;
    ++gTally.worlds;
  }

  // The world's bookkeeping once its comms are gone (destroyed or aborted).
  void forget() {
    comms_.clear();
    model_.clear();
    acc_.clear();
    ptrs_.assign(N, {});
    step_ = 0;
  }

  // Frees the comms; with `check`, first the ledger of every state they hold.
  void destroy(bool check) {
    if (check) finishLedger("destroy");
    for (int r = 0; r < N; ++r) {
      EXPECT_EQ(gradcompCommDestroy(comms_[r]), gradcompSuccess)
          << where() << ": " << gradcompGetLastError();
    }
    forget();
  }

  // Stop on every rank, then a call on one rank must fail naming why, then abort.
  void stopAndAbort(std::mt19937_64& rng) {
    ++gTally.aborts;
    for (int r = 0; r < N; ++r) EXPECT_EQ(gradcompCommStop(comms_[r]), gradcompSuccess);
    const int r = (int)(rng() % (uint64_t)N);
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    const gradcompResult_t rc =
        gradcompAllReduce(x, x, 8, ncclFloat32, ncclSum, comms_[r], nullptr);
    EXPECT_NE(rc, gradcompSuccess) << where() << ": a call after stop";
    if (rc != gradcompSuccess) EXPECT_STRNE(gradcompGetLastError(), "") << where();
    for (int q = 0; q < N; ++q) {
      EXPECT_EQ(gradcompCommAbort(comms_[q]), gradcompSuccess)
          << where() << ": " << gradcompGetLastError();
    }
    forget();
  }

  std::vector<std::vector<uint8_t>> saveAll() {
    std::vector<std::vector<uint8_t>> b(N);
    for (int r = 0; r < N; ++r) b[r] = gctest::savedState(comms_[r]);
    return b;
  }

  // Saved, loaded back into the same comms: nothing changes.
  void saveLoadSame() {
    ++gTally.loads;
    auto blobs = saveAll();
    std::vector<std::string> err;
    auto res = onRanks(
        N,
        [&](int r) { return gradcompCommLoadState(comms_[r], blobs[r].data(), blobs[r].size()); },
        &err);
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(res[r], gradcompSuccess) << where() << " rank " << r << ": " << err[r];
    }
    auto again = saveAll();
    for (int r = 0; r < N; ++r) EXPECT_EQ(again[r], blobs[r]) << where() << " rank " << r;
  }

  // Saved, the comms destroyed and made again, loaded: the model goes on.
  void saveLoadNew() {
    ++gTally.loads;
    auto blobs = saveAll();
    std::vector<std::map<std::tuple<int, uint64_t, size_t, int>, Id>> ptrs = ptrs_;
    std::map<Id, ModelState> model = model_;
    std::map<Id, gctest::Ledger> acc = acc_;
    const uint64_t step = step_;
    const float scale = scale_;
    destroy(false);
    create();
    if (::testing::Test::HasFatalFailure()) return;
    std::vector<std::string> err;
    auto res = onRanks(
        N,
        [&](int r) { return gradcompCommLoadState(comms_[r], blobs[r].data(), blobs[r].size()); },
        &err);
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(res[r], gradcompSuccess) << where() << " rank " << r << ": " << err[r];
    }
    ptrs_ = ptrs, model_ = model, acc_ = acc, step_ = step, scale_ = scale;
    float got = 0;
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(gradcompCommGetGradScale(comms_[r], &got), gradcompSuccess);
      EXPECT_EQ(got, scale_) << where() << ": the loaded scale";
    }
    auto again = saveAll();
    for (int r = 0; r < N; ++r) EXPECT_EQ(again[r], blobs[r]) << where() << " rank " << r;
    expectSteps("load into new comms");
  }

  void reset() {
    ++gTally.resets;
    finishLedger("reset");
    std::vector<std::string> err;
    auto res = onRanks(
        N, [&](int r) { return gradcompCommResetState(comms_[r]); }, &err);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << where() << ": " << err[r];
    // As a new comm's: no states, step 0.
    model_.clear();
    acc_.clear();
    step_ = 0;
  }

  // gradcompCommForgetKey on every rank: that key's states (allreduce and
  // reduce-scatter, every count and type) leave the library and the model,
  // their ledgers closed with the residuals they held; every other state
  // stays, and the key's next call starts from none, as a new buffer's.
  void forget(uint64_t key) {
    ++gTally.forgets;
    auto ofKey = [key](const Id& id) { return std::get<1>(id) && std::get<2>(id) == key; };
    finishLedger("forget of key " + std::to_string(key), ofKey);
    std::vector<std::string> err;
    auto res = onRanks(
        N, [&](int r) { return gradcompCommForgetKey(comms_[r], key); }, &err);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << where() << ": " << err[r];
    for (auto it = model_.begin(); it != model_.end();)
      it = ofKey(it->first) ? model_.erase(it) : ++it;
    for (auto it = acc_.begin(); it != acc_.end();) it = ofKey(it->first) ? acc_.erase(it) : ++it;
    for (int r = 0; r < N; ++r) {
      for (const auto& kv : comms_[r]->states) {
        auto it = ptrs_[r].find(kv.first);
        EXPECT_FALSE(it != ptrs_[r].end() && ofKey(it->second))
            << where() << " rank " << r << ": a state of forgotten key " << key << " is left";
      }
    }
  }

  void setScale(float scale) {
    ++gTally.scales;
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(gradcompCommSetGradScale(comms_[r], scale, nullptr), gradcompSuccess)
          << where() << ": " << gradcompGetLastError();
    }
    const float ratio = scale / scale_;  // powers of two: exact
    for (auto& kv : model_) {
      for (auto* v : {&kv.second.res, &kv.second.own}) {
        for (auto& rv : *v) {
          for (auto& x : rv) x *= ratio;
        }
      }
      auto scaleSparse = [&](std::vector<gctest::ref::SparseState>& states) {
        for (auto& sp : states) {
          for (auto* v : {&sp.v, &sp.u}) {
            for (auto& x : *v) x *= ratio;
          }
        }
      };
      scaleSparse(kv.second.sparse);
      for (auto& states : kv.second.hierSparse) scaleSparse(states);
    }
    scale_ = scale;
  }

  void retune() {
    ++gTally.retunes;
    auto before = saveAll();
    std::vector<std::string> err;
    auto res = onRanks(
        N, [&](int r) { return gradcompCommRetune(comms_[r], nullptr); }, &err);
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(res[r], gradcompSuccess) << where() << " rank " << r << ": " << err[r];
    }
    auto after = saveAll();
    for (int r = 0; r < N; ++r) {
      EXPECT_EQ(gctest::withoutAutoFigures(after[r]), gctest::withoutAutoFigures(before[r]))
          << where() << ": retune changed the buffers' state on rank " << r;
    }
  }

  // Refused calls: every rank's, or one rank's alone (its peers make no call).
  // Each must name its value and leave the comm's state and counters as they were.
  void refused(std::mt19937_64& rng) {
    auto pick = [&](int n) { return (int)(rng() % (uint64_t)n); };
    ++gTally.refused;
    const int kind = pick(10);
    // Kind 9 overlaps a compressed reduce-scatter's buffers (a passed one
    // goes to the transport as it is).
    Call overlap;
    overlap.rs = true, overlap.m = 512;
    const bool compresses = eligible(overlap);
    const float badScale = pick(2) ? NAN : -2.0f;  // drawn here: the ranks' threads draw nothing
    // A collective every rank must make (kinds 0 to 4) is made by every rank:
    // made by one rank alone, its peers would be waited for (the CPU backend
    // agrees on every call before it reads the arguments).
    const bool one = kind >= 5 && kind <= 7 && pick(2) == 0;
    // Under GRADCOMP_CHECK_CALLS a collective may be refused on one rank
    // alone while its peers make it right: they fail at once, naming it.
    const bool oneOfAll = kind <= 4 && S.cfg.checkCalls && N > 1 && pick(2) == 0;
    gTally.refusedOnOne += oneOfAll;
    const int who = pick(N);
    auto before = saveAll();
    std::vector<gradcompStats_t> st0(N), st1(N);
    for (int r = 0; r < N; ++r) gradcompGetStats(comms_[r], &st0[r]);
    std::vector<std::string> err(N);
    const char* expectIn = nullptr;
    auto res = gctest::runOnThreads(N, [&](int r) -> gradcompResult_t {
      if (one && r != who) return gradcompInvalidArgument;
      float* s = send_[r][0].data();
      float* o = recv_[r][0].data();
      gradcompResult_t rc = gradcompSuccess;
      if (oneOfAll && r != who) {
        // The call the refusing rank got wrong, made right.
        rc = kind == 2 ? gradcompReduceScatter(s, o, 16, ncclFloat32, ncclSum, comms_[r], nullptr)
             : kind == 4
                 ? gradcompReduceScatterKeyed(s, o, 16, ncclFloat32, ncclAvg, comms_[r], nullptr, 3)
                 : gradcompAllReduce(s, o, 64, ncclFloat32, ncclSum, comms_[r], nullptr);
        if (rc != gradcompSuccess) err[r] = gradcompGetLastError();
        return rc;
      }
      switch (kind) {
        case 0:
          rc = gradcompAllReduce(s, o, 64, ncclNumTypes, ncclSum, comms_[r], nullptr);
          break;
        case 1:
          rc = gradcompAllReduce(s, o, 64, ncclFloat32, (ncclRedOp_t)99, comms_[r], nullptr);
          break;
        case 2:
          rc = gradcompReduceScatter(s, o, 16, ncclNumTypes, ncclSum, comms_[r], nullptr);
          break;
        case 3:
          rc = gradcompAllReduce(nullptr, o, 64, ncclFloat32, ncclSum, comms_[r], nullptr);
          break;
        case 4:
          rc = gradcompReduceScatterKeyed(s, nullptr, 16, ncclFloat32, ncclAvg, comms_[r], nullptr,
                                          3);
          break;
        case 5:
          rc = gradcompCommSetGradScale(comms_[r], badScale, nullptr);
          break;
        case 6: {
          // A truncated blob (every rank's own, cut short): refused whole.
          std::vector<uint8_t> b = before[r];
          b.resize(b.size() / 2);
          rc = gradcompCommLoadState(comms_[r], b.data(), b.size());
          break;
        }
        case 7:
          rc = gradcompAllReduceKeyed(s, o, 64, ncclFloat32, ncclSum, nullptr, nullptr, 1);
          break;
        case 9:
          if (!compresses) return gradcompInvalidArgument;
          rc = gradcompReduceScatter(s, s + 1, overlap.m, ncclFloat32, ncclSum, comms_[r], nullptr);
          break;
        default:
          // Ranks that disagree on the count: every rank refuses it.
          if (N == 1) return gradcompInvalidUsage;
          rc = gradcompAllReduceKeyed(s, s, r == who ? 1001 : 1000, ncclFloat32, ncclSum, comms_[r],
                                      nullptr, 2);
          break;
      }
      if (rc != gradcompSuccess) err[r] = gradcompGetLastError();
      return rc;
    });
    // ncclNumTypes is the NCCL's: 12 with its fp8 types, fewer without them.
    const std::string badType = "datatype=" + std::to_string((int)ncclNumTypes);
    expectIn = kind == 1                ? "op=99"
               : kind == 0 || kind == 2 ? badType.c_str()
               : kind == 8              ? "1001"
               : kind == 9              ? "overlap"
                                        : nullptr;
    for (int r = 0; r < N; ++r) {
      if (one && r != who) continue;
      if ((kind == 8 && N == 1) || (kind == 9 && !compresses)) continue;
      if (oneOfAll && r != who) {
        EXPECT_EQ(res[r], gradcompInvalidUsage)
            << where() << ": refused kind " << kind << " on rank " << who << " alone, rank " << r
            << ": " << err[r];
        const std::string named = "rank " + std::to_string(who) + " ";
        EXPECT_NE(err[r].find(named), std::string::npos)
            << where() << ": refused kind " << kind << " does not name rank " << who << ": "
            << err[r];
        continue;
      }
      EXPECT_TRUE(res[r] == gradcompInvalidArgument || res[r] == gradcompInvalidUsage)
          << where() << ": refused kind " << kind << " rank " << r << " gave " << res[r] << " "
          << err[r];
      EXPECT_FALSE(err[r].empty()) << where() << ": refused kind " << kind;
      if (expectIn) {
        EXPECT_NE(err[r].find(expectIn), std::string::npos)
            << where() << ": refused kind " << kind << " does not name " << expectIn << ": "
            << err[r];
      }
    }
    auto after = saveAll();
    for (int r = 0; r < N; ++r) {
      EXPECT_EQ(after[r], before[r])
          << where() << ": refused kind " << kind << " (one " << one << ", on one rank of all "
          << oneOfAll << ") changed rank " << r << "'s state";
      gradcompGetStats(comms_[r], &st1[r]);
      EXPECT_EQ(st1[r].steps, st0[r].steps) << where() << " kind " << kind;
      EXPECT_EQ(st1[r].callsCompressed, st0[r].callsCompressed) << where() << " kind " << kind;
    }
    float scale = 0;
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(gradcompCommGetGradScale(comms_[r], &scale), gradcompSuccess);
      EXPECT_EQ(scale, scale_) << where();
    }
  }

  // The counters every rank must agree on, against the model's step.
  void expectSteps(const char* after) {
    for (int r = 0; r < N; ++r) {
      gradcompStats_t st;
      ASSERT_EQ(gradcompGetStats(comms_[r], &st), gradcompSuccess);
      EXPECT_EQ(st.steps, step_) << where() << " rank " << r << " after " << after;
    }
  }

  bool eligible(const Call& k) const {
    return S.cfg.method != gradcompMethodNone && N > 1 && isFloat(k.type) &&
           (k.op == ncclSum || k.op == ncclAvg) && k.inputs(N) >= S.cfg.minElements &&
           k.inputs(N) > 0;
  }

  void call(const Call& k, uint64_t seed) {
    const size_t n = k.inputs(N), m = k.m;
    const Id id = idOf(k, N);
    const bool elig = eligible(k);
    const bool avg = k.op == ncclAvg;
    // Inputs, kept as the values the buffers hold.
    std::vector<std::vector<float>> in(N);
    std::vector<Rank> R(N);
    for (int r = 0; r < N; ++r) {
      const std::vector<float> g = gctest::normal(n, seed * 131 + (uint64_t)r, 1.0f + r);
      void* s = send_[r][k.slot].data();
      in[r].resize(n);
      for (size_t i = 0; i < n; ++i) {
        setT(s, k.type, i, g[i] * scale_);
        in[r][i] = getT(s, k.type, i);
      }
      if (isFloat(k.type)) {
        R[r].f32 = in[r];
        if (k.type != ncclFloat32) {
          R[r].half.assign(static_cast<uint16_t*>(s), static_cast<uint16_t*>(s) + n);
        }
      }
    }
    // Output buffers poisoned, so a call that writes nothing is seen.
    for (int r = 0; r < N; ++r) {
      if (!k.inPlace) memset(recv_[r][k.slot].data(), 0x5a, kMaxCount * 4);
    }
    std::vector<void*> outp(N);
    for (int r = 0; r < N; ++r) {
      char* s = reinterpret_cast<char*>(send_[r][k.slot].data());
      outp[r] = k.inPlace ? (k.rs ? s + (size_t)r * m * elemSize(k.type) : s)
                          : (void*)recv_[r][k.slot].data();
      const auto sk = gc::stateKey(k.rs ? 2 : 0, k.keyed, k.key, outp[r], n, dtypeOf(k.type));
      if (isFloat(k.type)) ptrs_[r][sk] = id;
    }
    std::vector<gradcompStats_t> st0(N);
    for (int r = 0; r < N; ++r) gradcompGetStats(comms_[r], &st0[r]);
    std::vector<std::string> err(N);
    auto res = gctest::runOnThreads(N, [&](int r) {
      void* s = send_[r][k.slot].data();
      gradcompResult_t rc;
      if (k.rs) {
        rc = k.keyed ? gradcompReduceScatterKeyed(s, outp[r], m, k.type, k.op, comms_[r], nullptr,
                                                  k.key)
                     : gradcompReduceScatter(s, outp[r], m, k.type, k.op, comms_[r], nullptr);
      } else {
        rc = k.keyed
                 ? gradcompAllReduceKeyed(s, outp[r], m, k.type, k.op, comms_[r], nullptr, k.key)
                 : gradcompAllReduce(s, outp[r], m, k.type, k.op, comms_[r], nullptr);
      }
      if (rc != gradcompSuccess) err[r] = gradcompGetLastError();
      return rc;
    });
    ++calls;
    ++gTally.calls;
    const std::string what = where() + " call " + std::to_string(calls) + " (" +
                             (k.rs ? "reduce-scatter" : "allreduce") + " m " + std::to_string(m) +
                             " type " + std::to_string((int)k.type) + " op " +
                             std::to_string((int)k.op) + (k.keyed ? " keyed" : " by address") +
                             (k.inPlace ? " in place" : " out of place") + " slot " +
                             std::to_string(k.slot) + ")";
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(res[r], gradcompSuccess) << what << " rank " << r << ": " << err[r];
    }
    // Counters: one step per compressed call, on every rank alike.
    bool compressed = false;
    int bits = S.cfg.bits;  // the width of a compressed QSGD call, as every rank reports it
    for (int r = 0; r < N; ++r) {
      gradcompStats_t st;
      gradcompGetStats(comms_[r], &st);
      if (r == 0) bits = st.bitsLast;
      EXPECT_EQ(st.bitsLast, bits) << what << " rank " << r << ": ranks differ on the width";
      const uint64_t dc = st.callsCompressed - st0[r].callsCompressed;
      const uint64_t dp = st.callsPassedThrough - st0[r].callsPassedThrough;
      // A call of no elements returns at once, counted nowhere.
      EXPECT_EQ(dc + dp, n > 0 ? 1u : 0u) << what << " rank " << r;
      if (!elig) EXPECT_EQ(dc, 0u) << what << " rank " << r << ": an ineligible call compressed";
      if (r == 0) compressed = dc == 1;
      EXPECT_EQ(dc == 1, compressed) << what << ": ranks differ on compressing";
      EXPECT_EQ(st.steps, st0[r].steps + dc) << what << " rank " << r;
    }
    // Without autoTune's timing (never in this world) every eligible call compresses.
    if (!S.cfg.autoTune) EXPECT_EQ(compressed, elig) << what;
    // Every rank's allreduce output: the same bytes.
    if (!k.rs) {
      for (int r = 1; r < N; ++r) {
        EXPECT_EQ(memcmp(outp[r], outp[0], m * elemSize(k.type)), 0)
            << what << ": rank " << r << " differs from rank 0";
      }
    }
    // Expected outputs: the serial reference of every compressed call, the
    // rank-order reduction of a passed one (of what DGC's momentum pass sent).
    // QSGD (docs/algorithms.md, docs/adaptive.md): a pipelined call is bit
    // for bit the unpipelined one, flat or hierarchical; Elias codes the
    // fixed width's levels and its allreduce is the flat allgather whatever
    // the layout (a reduce-scatter does not read it); DQ-SGD's call is the
    // fixed width's at the width it chose (stats.bitsLast, the same on every
    // rank). The sparse methods: ref_sparse.h and ref_rs.h on a flat layout,
    // ref_hier.h and ref_hier_rs.h on a hierarchical one.
    std::vector<std::vector<float>> expect;  // per rank (allreduce: one)
    bool exactExpect = false;
    // What a passed call reduces: the inputs, or what the momentum pass sent.
    std::vector<std::vector<float>> sent;
    const std::vector<std::vector<float>>* passIn = &in;
    const int L = S.cfg.localSize;
    if (compressed && S.cfg.method != gradcompMethodQsgd && L >= 2) {
      ModelState& ms = model_[id];
      expect = k.rs ? gctest::ref::refHierSparseReduceScatter(S.cfg, dtypeOf(k.type), avg, step_,
                                                              in, ms.hierSparse, L)
                    : std::vector<std::vector<float>>{gctest::ref::refHierSparse(
                          S.cfg, dtypeOf(k.type), avg, step_, in, ms.hierSparse, L)};
      exactExpect = true;
    } else if (compressed && S.cfg.method != gradcompMethodQsgd) {
      ModelState& ms = model_[id];
      if (ms.sparse.empty()) ms.sparse.resize(N);
      expect = k.rs ? gctest::ref::refSparseReduceScatter(S.cfg, dtypeOf(k.type), avg, step_, in,
                                                          ms.sparse)
                    : std::vector<std::vector<float>>{gctest::ref::refSparse(
                          S.cfg, dtypeOf(k.type), avg, step_, in, ms.sparse)};
      exactExpect = true;
    } else if (compressed) {
      ModelState& ms = model_[id];
      if (ms.res.empty()) {
        ms.res.assign(N, std::vector<float>(n, 0.0f));
        ms.own.assign(N, std::vector<float>(n, 0.0f));
      }
      for (int r = 0; r < N; ++r) R[r].residual = ms.res[r], R[r].ownerRes = ms.own[r];
      // The reference runs at the width the call reports, so that width is
      // held to the config: a fixed width's, or one in DQ-SGD's range.
      if (S.cfg.bitsMode == gradcompBitsFixed) {
        EXPECT_EQ(bits, S.cfg.bits) << what << ": a fixed-width call reports another width";
      } else {
        EXPECT_TRUE(bits >= S.cfg.bitsMin && bits <= S.cfg.bitsMax)
            << what << ": DQ-SGD chose " << bits << " bits, outside " << S.cfg.bitsMin << ".."
            << S.cfg.bitsMax;
      }
      gradcompConfig_t c = S.cfg;
      c.bits = bits;
      if (k.rs && L >= 2) {
        expect = gctest::ref::refHierReduceScatter(R, dtypeOf(k.type), m, c, bits, step_, avg, L);
      } else if (k.rs) {
        expect = gctest::ref::refReduceScatter(R, dtypeOf(k.type), m, c, bits, step_, avg);
      } else if (c.elias) {
        // Elias's allreduce: the flat allgather, whatever the layout.
        expect = {gctest::ref::refAllgather(R, dtypeOf(k.type), m, c, step_, avg)};
      } else if (L >= 2) {
        expect = {gctest::ref::refHier(R, dtypeOf(k.type), m, c, step_, avg, L,
                                       gctest::effectiveAlgo(c.algo, N / L))};
      } else {
        expect = {gctest::ref::refDense(R, dtypeOf(k.type), m, c, step_, avg,
                                        gctest::effectiveAlgo(c.algo, N))};
      }
      for (int r = 0; r < N; ++r) ms.res[r] = R[r].residual, ms.own[r] = R[r].ownerRes;
      exactExpect = true;
    } else if (!compressed && !S.plainPass && isFloat(k.type) &&
               (k.op == ncclSum || k.op == ncclAvg)) {
      // DGC's momentum pass (docs/sparse.md): on every rank u = m*u + g and
      // v += u, all of v sent in the buffer type and reduced as a plain call,
      // then spent (u kept); a non-finite output clears every rank's u and v.
      ModelState& ms = model_[id];
      if (ms.sparse.empty()) ms.sparse.resize(N);
      sent.assign(N, std::vector<float>(n));
      for (int r = 0; r < N; ++r) {
        gctest::ref::SparseState& sp = ms.sparse[r];
        if (sp.v.size() != n) sp.v.assign(n, 0.0f);
        if (sp.u.size() != n) sp.u.assign(n, 0.0f);
        for (size_t i = 0; i < n; ++i) {
          const float old = sp.v[i];
          gc::sparse::accumulate(in[r][i], 1.0f, S.cfg.momentum, &sp.u[i], &sp.v[i], true, nullptr);
          sent[r][i] = roundTo(k.type, sp.v[i]);
          gc::sparse::settle(&sp.v[i], old, nullptr, true);
        }
      }
      passIn = &sent;
      expect = passReference(k, sent);
      for (const auto& e : expect) {
        if (gctest::ref::refAnyNonFinite(e)) gctest::ref::refDiscardState(ms.sparse);
      }
      exactExpect = k.op != ncclAvg;
    } else if (!compressed &&
               (S.plainPass || !isFloat(k.type) || (k.op != ncclSum && k.op != ncclAvg))) {
      expect = passReference(k, in);
      exactExpect = k.op != ncclAvg;  // NCCL's PreMulSum rounding: within a tolerance
    }
    if (!compressed && !expect.empty() && k.op == ncclAvg) {
      for (int r = 0; r < (k.rs ? N : 1); ++r) {
        for (size_t i = 0; i < m; ++i) {
          const float got = getT(outp[r], k.type, i), want = expect[r][i];
          // Rounding of the inputs' magnitudes (a sum may cancel to near 0).
          double mag = 0;
          for (int q = 0; q < N; ++q) mag += fabs((*passIn)[q][k.rs ? (size_t)r * m + i : i]);
          const double tol = (N + 2) * 4 * epsOf(k.type) * mag + 1e-30;
          EXPECT_LE(fabs(got - want), tol) << what << " rank " << r << " element " << i;
          if (fabs(got - want) > tol) return;
        }
      }
    }
    gTally.compressed += compressed;
    if (exactExpect || !expect.empty()) ++(compressed ? gTally.exact : gTally.passed);
    if (compressed && exactExpect) {
      const gradcompConfig_t& c = S.cfg;
      const bool qsgd = c.method == gradcompMethodQsgd;
      gTally.pipedHier += qsgd && L >= 2 && c.pipelineBytes > 0;
      gTally.elias += qsgd && c.elias;
      gTally.dqsgd += qsgd && c.bitsMode != gradcompBitsFixed;
      gTally.sparseHier += !qsgd && L >= 2;
      gTally.momentum += c.method == gradcompMethodDgc && c.momentumCorrection;
    }
    gTally.momentumPasses += !sent.empty() && n > 0;  // a call of no elements is none
    if (exactExpect) {
      for (int r = 0; r < (k.rs ? N : 1); ++r) {
        for (size_t i = 0; i < m; ++i) {
          const float got = getT(outp[r], k.type, i);
          const float want = expect[r][i];
          if (memcmp(&got, &want, 4) != 0 && !(isnan(got) && isnan(want))) {
            ADD_FAILURE() << what << " rank " << r << " element " << i << ": got " << got
                          << " expected " << want << (compressed ? " (reference)" : " (passed)");
            return;
          }
        }
      }
    }
    if (compressed) ++step_;
    // The ledger (float Sum/Avg calls, compressed or passed).
    if (S.ledger && isFloat(k.type) && (k.op == ncclSum || k.op == ncclAvg) && n > 0) {
      gctest::Ledger& a = acc(id, n);
      for (int r = 0; r < N; ++r) {
        for (size_t i = 0; i < n; ++i) {
          a.addInput(i, in[r][i] / scale_, k.type != ncclFloat32 ? epsOf(k.type) : 0);
        }
      }
      const double f = avg ? N : 1;
      for (int r = 0; r < (k.rs ? N : 1); ++r) {
        for (size_t i = 0; i < m; ++i) {
          const size_t e = k.rs ? (size_t)r * m + i : i;
          a.addOutput(e, getT(outp[r], k.type, i) * f / scale_, epsOf(k.type) * 2 * f);
        }
      }
    }
  }

  // The rank-order reduction NCCL's CPU stand-in makes (fp16/bf16 rounded
  // after every step; Avg as a sum divided by N, held within a tolerance).
  std::vector<std::vector<float>> passReference(const Call& k,
                                                const std::vector<std::vector<float>>& in) {
    const size_t m = k.m;
    std::vector<std::vector<float>> out(k.rs ? N : 1, std::vector<float>(m));
    for (size_t o = 0; o < out.size(); ++o) {
      for (size_t i = 0; i < m; ++i) {
        const size_t e = k.rs ? o * m + i : i;
        float acc = in[0][e];
        for (int r = 1; r < N; ++r) {
          const float x = in[r][e];
          if (k.op == ncclMax) {
            acc = acc > x ? acc : x;
          } else if (k.op == ncclMin) {
            acc = acc < x ? acc : x;
          } else {
            acc = gc::fadd(acc, x);
            if (k.type == ncclFloat16) acc = gc::halfToFloat(gc::floatToHalf(acc));
            if (k.type == ncclBfloat16) acc = gc::bf16ToFloat(gc::floatToBf16(acc));
          }
        }
        if (k.op == ncclAvg) acc = acc / (float)N;
        out[o][i] = acc;
      }
    }
    return out;
  }

  // Every rank's residuals added to their elements; then the ledger's check
  // (of the states `only` takes, or all).
  void finishLedger(const std::string& why, const std::function<bool(const Id&)>& only = nullptr) {
    if (!S.ledger || comms_.empty()) return;
    for (int r = 0; r < N; ++r) {
      gradcompComm* c = comms_[r];
      for (const auto& kv : c->states) {
        const gc::BufferState& s = kv.second;
        auto it = ptrs_[r].find(kv.first);
        if (it == ptrs_[r].end()) {
          ADD_FAILURE() << where() << " rank " << r << ": a state of no buffer the calls named";
          continue;
        }
        const Id id = it->second;
        if (only && !only(id)) continue;
        acc(id, s.count).addResiduals(c, s, std::get<0>(id), scale_);
      }
    }
    for (auto& kv : acc_) {
      if (only && !only(kv.first)) continue;
      ++gTally.ledgers;
      const gctest::Ledger::Check k = kv.second.check(N);
      const gctest::Ledger& a = kv.second;
      const size_t bad = k.bad, at = k.at;
      const double worstErr = k.err;
      EXPECT_EQ(bad, 0u) << where() << " at " << why << ": state (rs " << std::get<0>(kv.first)
                         << ", keyed " << std::get<1>(kv.first) << ", " << std::get<2>(kv.first)
                         << ", n " << std::get<3>(kv.first) << ", type " << std::get<4>(kv.first)
                         << "): " << bad << " elements lost or doubled; worst element " << at
                         << " in " << a.in[at] << " out " << a.out[at] << " residuals " << a.res[at]
                         << " error " << worstErr;
    }
  }

  std::vector<gradcompComm_t> comms_;

 private:
  gctest::Ledger& acc(const Id& id, size_t n) {
    gctest::Ledger& a = acc_[id];
    a.size(n);
    return a;
  }

  std::string name_;
  std::vector<std::vector<std::vector<float>>> send_, recv_;
  std::map<Id, ModelState> model_;
  std::map<Id, gctest::Ledger> acc_;
  // Per rank: the library's state key of each buffer the calls named -> its Id.
  std::vector<std::map<std::tuple<int, uint64_t, size_t, int>, Id>> ptrs_{
      std::vector<std::map<std::tuple<int, uint64_t, size_t, int>, Id>>(kMaxRanks)};
  uint64_t step_ = 0;
  float scale_ = 1.0f;
};

Call randomCall(std::mt19937_64& rng, SeqWorld& w) {
  auto pick = [&](int n) { return (int)(rng() % (uint64_t)n); };
  // DGC's momentum worlds call one buffer again half the time, as training
  // steps do: the u and v a call leaves (a momentum pass's too) are what the
  // next call on that buffer carries, and the model must follow them.
  const bool momentum = w.S.cfg.method == gradcompMethodDgc && w.S.cfg.momentumCorrection;
  if (momentum && w.hasLast && pick(2) == 0) return w.last;
  Call k;
  k.rs = pick(3) == 0;
  k.keyed = pick(2) == 0;
  k.key = 1 + (uint64_t)pick(3);
  k.slot = pick(kSlots);
  k.inPlace = pick(3) != 0;
  const int t = pick(12);
  k.type = t < 7 ? ncclFloat32 : t < 9 ? ncclFloat16 : t < 11 ? ncclBfloat16 : ncclInt32;
  const int o = pick(10);
  k.op = o < 5 ? ncclSum : o < 9 ? ncclAvg : ncclMax;
  if (k.type == ncclInt32 && k.op == ncclAvg) k.op = ncclSum;  // NCCL's integer Avg truncates
  // A few sizes again and again (the states live on), now and then another.
  const size_t sizes[] = {0, 1, 33, 64, 700, 1000, 2048, 1536};
  size_t n = pick(4) == 0 ? (size_t)pick((int)kMaxCount + 1) : sizes[pick(8)];
  if (k.rs) n /= (size_t)w.N;
  k.m = n;
  w.last = k;
  w.hasLast = true;
  return k;
}

// One sequence of `ops` operations over up to three worlds.
void runSequence(uint64_t seed, int ops) {
  SCOPED_TRACE("sequence seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  auto pick = [&](int n) { return (int)(rng() % (uint64_t)n); };
  std::vector<std::unique_ptr<SeqWorld>> worlds;
  int made = 0;
  auto fresh = [&]() {
    Settings s = randomSettings(rng);
    worlds.emplace_back(new SeqWorld(s, "world " + std::to_string(made++)));
  };
  const int live = 1 + pick(3);
  for (int i = 0; i < live; ++i) fresh();
  const float scales[] = {1.0f, 2.0f, 0.5f, 8.0f, 0.25f};
  for (int t = 0; t < ops; ++t) {
    if (::testing::Test::HasFailure()) return;
    const size_t wi = (size_t)pick((int)worlds.size());
    SeqWorld& w = *worlds[wi];
    const int op = pick(100);
    if (op < 62) {
      w.call(randomCall(rng, w), seed * 100003 + (uint64_t)t);
    } else if (op < 70) {
      w.refused(rng);
    } else if (op < 74) {
      w.saveLoadSame();
    } else if (op < 78) {
      w.saveLoadNew();
    } else if (op < 79) {
      w.reset();
    } else if (op < 80) {
      w.forget(1 + (uint64_t)pick(3));
    } else if (op < 85) {
      w.setScale(scales[pick(5)]);
    } else if (op < 87) {
      w.retune();
    } else if (op < 90) {
      w.expectSteps("a check");
    } else if (op < 94) {
      w.destroy(true);
      worlds.erase(worlds.begin() + (long)wi);
      fresh();
    } else if (op < 96) {
      w.stopAndAbort(rng);
      worlds.erase(worlds.begin() + (long)wi);
      fresh();
    } else if (op < 98 && worlds.size() >= 2) {
      // Two worlds' calls at once, each on its ranks' threads.
      SeqWorld& v = *worlds[(wi + 1) % worlds.size()];
      const Call a = randomCall(rng, w), b = randomCall(rng, v);
      ++gTally.pairs;
      std::thread other([&] { v.call(b, seed * 100003 + (uint64_t)t + (1ull << 40)); });
      w.call(a, seed * 100003 + (uint64_t)t);
      other.join();
    } else if (worlds.size() < 3) {
      fresh();
    }
  }
}

// EXPECT_NONFATAL_FAILURE's statement may not name locals.
unsigned long long gKnobValue;

TEST(ApiSequenceKnobs, BadValuesFailInsteadOfRunningAnotherCount) {
  for (const char* bad : {"2e5", "abc", "", "0", "-5", "010", "99999999999999999999"}) {
    gctest::ScopedEnv e("GRADCOMP_SEQ_SEEDS", bad);
    gKnobValue = 0;
    EXPECT_NONFATAL_FAILURE(gKnobValue = envKnob("GRADCOMP_SEQ_SEEDS", 1, INT_MAX, 6),
                            "GRADCOMP_SEQ_SEEDS");
    EXPECT_EQ(gKnobValue, 6u) << bad;
  }
  gctest::ScopedEnv e("GRADCOMP_SEQ_OPS", "5000");
  EXPECT_EQ(envKnob("GRADCOMP_SEQ_OPS", 1, INT_MAX, 120), 5000u);
}

int gWordValue;

// GRADCOMP_SWEEP=WIDE ran the sample and GRADCOMP_FUZZ_CASE=<a misspelt name> ran no case, and
// passed: a word knob's other values fail the test, naming the words, and the default runs.
TEST(ApiSequenceKnobs, AWordKnobFailsOnAnotherValueInsteadOfRunningTheDefault) {
  for (const char* bad : {"WIDE", "wide ", "", "1", "qsgd-ring"}) {
    gctest::ScopedEnv e("GRADCOMP_SWEEP", bad);
    gWordValue = 7;
    EXPECT_NONFATAL_FAILURE(
        gWordValue = gctest::envWord("GRADCOMP_SWEEP", {"wide", "qsgd-ring-x"}),
        "GRADCOMP_SWEEP=" + std::string(bad) + " is not one of wide, qsgd-ring-x");
    EXPECT_EQ(gWordValue, -1) << bad;
  }
  {
    gctest::ScopedEnv e("GRADCOMP_SWEEP", "qsgd-ring-x");
    EXPECT_EQ(gctest::envWord("GRADCOMP_SWEEP", {"wide", "qsgd-ring-x"}), 1);
  }
  gctest::ScopedEnv e("GRADCOMP_SWEEP", nullptr);
  EXPECT_EQ(gctest::envWord("GRADCOMP_SWEEP", {"wide"}), -1);
}

// Found by the sequences (seed 7008): a collective the ranks disagreed on
// leaves each rank's call record at its own call; a retune after it (autoTune
// on, something to compress) exchanged under those records, so the CPU
// transport failed it naming the refused call. A retune is a call of its own:
// it runs, and so do the calls after it.
TEST(ApiSequence, ARetuneAfterARefusedCallRuns) {
  for (int checkCalls : {0, 1}) {
    for (bool rs : {false, true}) {
      SCOPED_TRACE(testing::Message() << "checkCalls " << checkCalls << " rs " << rs);
      gradcompConfig_t c;
      gradcompConfigInit(&c);
      c.autoTune = 1, c.checkCalls = checkCalls, c.minElements = 0, c.cpuTimeoutSec = 20.0f;
      gctest::CpuWorld w(2, c);
      std::vector<std::vector<float>> b(2, std::vector<float>(2002, 1.0f)), o = b;
      std::vector<std::string> err;
      auto collective = [&](int r, size_t n) {
        return rs ? gradcompReduceScatter(b[r].data(), o[r].data(), n, ncclFloat32, ncclSum,
                                          w.comm(r), nullptr)
                  : gradcompAllReduce(b[r].data(), b[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                                      nullptr);
      };
      auto res = onRanks(
          2, [&](int r) { return collective(r, r ? 1001 : 1000); }, &err);
      for (int r = 0; r < 2; ++r) {
        ASSERT_EQ(res[r], gradcompInvalidUsage) << "rank " << r << ": " << err[r];
        // Each rank's count as its caller passed it: the reduce-scatter's
        // record holds its input count, 2 * recvcount, and names recvcount.
        for (const char* want : {"count=1000 ", "count=1001 "}) {
          EXPECT_NE(err[r].find(std::string(rs ? "recv" : " ") + want), std::string::npos)
              << err[r];
        }
      }
      res = onRanks(
          2, [&](int r) { return gradcompCommRetune(w.comm(r), nullptr); }, &err);
      for (int r = 0; r < 2; ++r)
        EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << err[r];
      res = onRanks(
          2, [&](int r) { return collective(r, 1000); }, &err);
      for (int r = 0; r < 2; ++r) {
        EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << err[r];
        gradcompStats_t st;
        ASSERT_EQ(gradcompGetStats(w.comm(r), &st), gradcompSuccess);
        EXPECT_EQ(st.callsCompressed, 1u) << "rank " << r;
      }
    }
  }
}

// GRADCOMP_CHECK_CALLS: a collective whose arguments one rank alone refuses
// (its peers' pass) fails that rank with its own error and its peers, at
// their next vote, with gradcompInvalidUsage naming it and what it refused,
// instead of leaving them waiting for it until cpuTimeoutSec (long here:
// before 2026-12-06 a datatype, op or recvcount refused on one rank made
// them fail only then, naming no rank; its buffers were voted on already).
// The call leaves every rank's state as it was, and the call made right
// works next. Without the setting a refusal stays the rank's own, as NCCL's.
TEST(ApiSequence, ARefusalOnOneRankFailsItsPeersNamingIt) {
  struct Case {
    const char* what;
    const char* mine;   // in the refusing rank's sentence
    const char* peers;  // in its peers' sentence
  };
  // ncclNumTypes: no NCCL type (12 with the fp8 types, fewer in an older nccl.h).
  const std::string badType = "datatype=" + std::to_string((int)ncclNumTypes);
  const Case cases[] = {
      {"a NULL recvbuff", "NULL", "buffer"},
      {"datatype ncclNumTypes", badType.c_str(), badType.c_str()},
      {"a NULL reduce-scatter recvbuff", "NULL", "buffer"},
      {"a recvcount whose input overflows", "overflows", "recvcount="},
      {"overlapping reduce-scatter buffers", "overlap", "buffer"},
      {"a negative op", "op=-1", "op=-1"},
  };
  for (int local : {0, 2}) {
    for (size_t minElements : {(size_t)0, (size_t)1 << 20}) {
      gradcompConfig_t c;
      gradcompConfigInit(&c);
      c.checkCalls = 1, c.localSize = local, c.minElements = minElements;
      c.cpuTimeoutSec = 30.0f;  // a peer left waiting fails after it, naming nobody
      const int N = local ? 4 : 3, who = N - 2;
      gctest::CpuWorld w(N, c);
      std::vector<std::vector<float>> b(N, std::vector<float>(2000, 1.0f)), o = b;
      for (int kind = 0; kind < 6; ++kind) {
        const Case& k = cases[kind];
        SCOPED_TRACE(testing::Message() << k.what << ", local " << local << " min " << minElements);
        // Refused only where the call compresses (a passed one goes to the transport as it is).
        if (kind == 4 && minElements) continue;
        const bool rs = kind >= 2 && kind <= 4;
        const size_t m = rs ? 1000 / (size_t)N : 1000;
        std::vector<std::vector<uint8_t>> before(N);
        for (int r = 0; r < N; ++r) before[r] = gctest::savedState(w.comm(r));
        std::vector<std::string> err;
        auto res = onRanks(
            N,
            [&](int r) {
              const bool bad = r == who;
              float* s = b[r].data();
              float* out = rs ? o[r].data() : s;
              switch (kind) {
                case 0:
                  return gradcompAllReduce(s, bad ? nullptr : out, m, ncclFloat32, ncclSum,
                                           w.comm(r), nullptr);
                case 1:
                  return gradcompAllReduce(s, out, m, bad ? ncclNumTypes : ncclFloat32, ncclSum,
                                           w.comm(r), nullptr);
                case 2:
                  return gradcompReduceScatterKeyed(s, bad ? nullptr : out, m, ncclFloat32, ncclAvg,
                                                    w.comm(r), nullptr, 4);
                case 3:
                  return gradcompReduceScatter(s, out, bad ? SIZE_MAX / 4 : m, ncclFloat32, ncclSum,
                                               w.comm(r), nullptr);
                case 4:
                  return gradcompReduceScatter(s, bad ? s + 1 : out, m, ncclFloat32, ncclSum,
                                               w.comm(r), nullptr);
                default: {
                  // A C caller's op of -1, put in the enum's bytes (as
                  // Reliability.EnumValuesOutsideNcclsAreRefused does). Passing it on
                  // by value still loads it as the enum, which GCC's UBSan does not
                  // check and clang's -fsanitize=enum would; tests/capi/enum_args.c
                  // makes such calls from C, where they are defined.
                  ncclRedOp_t op = ncclSum;
                  const int minusOne = -1;
                  if (bad) memcpy(&op, &minusOne, sizeof op);
                  return gradcompAllReduceKeyed(s, out, m, ncclFloat32, op, w.comm(r), nullptr, 5);
                }
              }
            },
            &err);
        gctest::expectOneRankRefused(res, err, who, k.mine, k.peers);
        gctest::expectStatesKeptAndTheCallMadeRightRuns(w, before, b, o, rs, m);
        // Before the fix a case costs cpuTimeoutSec: stop at the first.
        if (::testing::Test::HasFailure()) return;
      }
    }
  }
}

// The first call after a state load or reset is agreed on by every rank
// with or without GRADCOMP_CHECK_CALLS (verifyNext): a rank that refuses it
// before it begins (a datatype or op that is not NCCL's, a recvcount whose
// input overflows) joins that agreement too, so its peers fail at once naming
// it instead of waiting in it until cpuTimeoutSec (before 2026-12-07, with
// the setting off). The agreement failed on every rank, so the next call
// verifies on every rank again, and runs.
TEST(ApiSequence, ARefusalOfTheFirstCallAfterALoadOrResetFailsItsPeersNamingIt) {
  for (int local : {0, 2}) {
    gradcompConfig_t c;
    gradcompConfigInit(&c);
    c.checkCalls = 0, c.localSize = local, c.minElements = 0;
    c.cpuTimeoutSec = 30.0f;  // a peer left waiting fails after it, naming nobody
    const int N = local ? 4 : 2, who = N - 1;
    gctest::CpuWorld w(N, c);
    std::vector<std::vector<float>> b(N, std::vector<float>(2000, 1.0f)), o = b;
    for (int kind = 0; kind < 3; ++kind) {
      SCOPED_TRACE(testing::Message() << "kind " << kind << ", local " << local);
      const bool rs = kind == 2;
      const size_t m = rs ? 1000 / (size_t)N : 1000;
      std::vector<std::vector<uint8_t>> before;
      gctest::expectTheFirstCallAfterALoadOrResetRefused(w, kind, who, b, o, m, &before);
      if (::testing::Test::HasFatalFailure()) return;
      gctest::expectStatesKeptAndTheCallMadeRightRuns(w, before, b, o, rs, m);
      // Before the fix a case costs cpuTimeoutSec: stop at the first.
      if (::testing::Test::HasFailure()) return;
    }
  }
}

TEST(ApiSequence, RandomSequencesHoldTheModel) {
  const uint64_t first = envKnob("GRADCOMP_SEQ_SEED", 0, UINT64_MAX, 1);
  const int seeds = (int)envKnob("GRADCOMP_SEQ_SEEDS", 1, INT_MAX, 10);
  const int ops = (int)envKnob("GRADCOMP_SEQ_OPS", 1, INT_MAX, 150);
  for (int i = 0; i < seeds && !::testing::Test::HasFailure(); ++i) {
    runSequence(first + (uint64_t)i, ops);
  }
  const Tally& t = gTally;
  printf(
      "api sequences: %d seeds from %llu, %d operations each: %llu calls (%llu compressed, "
      "%llu of them against the serial reference: %llu pipelined hierarchical, %llu Elias, %llu "
      "DQ-SGD, %llu sparse hierarchical, %llu DGC with momentum correction; %llu passed ones "
      "against the reduction, %llu of them DGC's velocity), "
      "%llu ledgers closed, %llu refused calls (%llu on one rank of all), %llu loads, %llu resets, "
      "%llu forgets, %llu scales, "
      "%llu retunes, %llu worlds made, %llu stopped and aborted, %llu pairs of calls at once\n",
      seeds, (unsigned long long)first, ops, (unsigned long long)t.calls,
      (unsigned long long)t.compressed, (unsigned long long)t.exact,
      (unsigned long long)t.pipedHier, (unsigned long long)t.elias, (unsigned long long)t.dqsgd,
      (unsigned long long)t.sparseHier, (unsigned long long)t.momentum,
      (unsigned long long)t.passed, (unsigned long long)t.momentumPasses,
      (unsigned long long)t.ledgers, (unsigned long long)t.refused,
      (unsigned long long)t.refusedOnOne, (unsigned long long)t.loads, (unsigned long long)t.resets,
      (unsigned long long)t.forgets, (unsigned long long)t.scales, (unsigned long long)t.retunes,
      (unsigned long long)t.worlds, (unsigned long long)t.aborts, (unsigned long long)t.pairs);
}

}  // namespace
