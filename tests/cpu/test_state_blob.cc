// State blobs are untrusted bytes: every corruption, truncation, foreign
// rank or setting is refused and leaves the comm exactly as it was; ranks
// restored at different steps fail together at their next call; DQ-SGD's
// history travels with the state.
#include <gtest/gtest.h>
#include <math.h>
#include <string.h>

#include <string>
#include <vector>

#include "gradcomp.h"
#include "plugin/comm.h"
#include "tests/common/cpu_world.h"
#include "tests/common/forwarding_backend.h"
#include "tests/common/socket_world.h"
#include "tests/common/state_blob.h"
#include "tests/common/test_util.h"

namespace {

using Blob = std::vector<char>;

gradcompConfig_t baseConfig(gradcompMethod_t m) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = m;
  cfg.minElements = 0;
  cfg.cpuTimeoutSec = 10.0f;
  return cfg;
}

Blob save(gradcompComm_t c) {
  size_t bytes = 0;
  EXPECT_EQ(gradcompCommStateSize(c, &bytes), gradcompSuccess);
  Blob b(bytes);
  EXPECT_EQ(gradcompCommSaveState(c, b.data(), bytes), gradcompSuccess) << gradcompGetLastError();
  return b;
}

// One step on every rank with inputs from (seed, step); returns the outputs.
// The error sentences are per thread: `errors` gets each rank's. `w`: a
// gctest::CpuWorld or gctest::SocketWorld.
template <typename World>
std::vector<std::vector<float>> step(World& w, size_t n, int t,
                                     std::vector<gradcompResult_t>* results = nullptr,
                                     std::vector<std::string>* errors = nullptr) {
  std::vector<std::vector<float>> buf(w.size());
  std::vector<std::string> err(w.size());
  for (int r = 0; r < w.size(); ++r) buf[r] = gctest::normal(n, 900 + 10 * t + r);
  auto res = w.run([&](int r) {
    gradcompResult_t rc = gradcompAllReduceKeyed(buf[r].data(), buf[r].data(), n, ncclFloat32,
                                                 ncclSum, w.comm(r), nullptr, 7);
    err[r] = gradcompGetLastError();
    return rc;
  });
  if (errors) *errors = err;
  if (results) {
    *results = res;
  } else {
    for (auto rc : res) EXPECT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
  }
  return buf;
}

// Rank 0 loads run A's blob, rank 1 run B's: the next step (t) fails on every
// rank naming the loaded schedules.
void expectLoadedSchedulesDiffer(gctest::CpuWorld& a, const Blob (&sa)[2], const Blob (&sb)[2],
                                 size_t n, int t) {
  ASSERT_EQ(gradcompCommLoadState(a.comm(0), sa[0].data(), sa[0].size()), gradcompSuccess);
  ASSERT_EQ(gradcompCommLoadState(a.comm(1), sb[1].data(), sb[1].size()), gradcompSuccess);
  std::vector<gradcompResult_t> results;
  std::vector<std::string> err;
  step(a, n, t, &results, &err);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(results[r], gradcompInvalidUsage) << "rank " << r;
    EXPECT_NE(err[r].find("the states they loaded differ in their buffers' schedules"),
              std::string::npos)
        << err[r];
  }
}

TEST(StateBlob, CorruptTruncatedOrPaddedBlobsAreRefusedWithoutTouchingTheComm) {
  for (gradcompMethod_t m : {gradcompMethodQsgd, gradcompMethodDgc}) {
    gradcompConfig_t cfg = baseConfig(m);
    cfg.bitsMode = m == gradcompMethodQsgd ? gradcompBitsBudget : gradcompBitsFixed;
    gctest::CpuWorld w(2, cfg);
    const size_t n = 1000;
    for (int t = 0; t < 3; ++t) step(w, n, t);
    const Blob good = save(w.comm(0));
    ASSERT_GT(good.size(), 2 * n);
    auto refusedAndUnchanged = [&](const Blob& b, const char* what, size_t at) {
      EXPECT_EQ(gradcompCommLoadState(w.comm(0), b.data(), b.size()), gradcompInvalidArgument)
          << what << " at " << at;
      EXPECT_NE(strstr(gradcompGetLastError(), "state blob refused"), nullptr)
          << what << " at " << at << ": " << gradcompGetLastError();
      ASSERT_EQ(save(w.comm(0)), good) << what << " at " << at << " changed the comm";
    };
    // Every byte of the header and the first record's fixed fields; a
    // stride through the arrays.
    for (size_t i = 0; i < good.size(); i += (i < 256 ? 1 : 61)) {
      Blob b = good;
      b[i] ^= (char)(1 << (i % 8));
      refusedAndUnchanged(b, "bit flip", i);
    }
    for (size_t len = 1; len < good.size(); len += (len < 256 ? 1 : 97)) {
      refusedAndUnchanged(Blob(good.begin(), good.begin() + len), "truncation", len);
    }
    Blob longer = good;
    longer.push_back(0);
    refusedAndUnchanged(longer, "trailing byte", good.size());
    // The unchanged blob still loads.
    EXPECT_EQ(gradcompCommLoadState(w.comm(0), good.data(), good.size()), gradcompSuccess);
  }
}

// gradcompCommStateSize is the one way to learn a save's size (gradcomp.h):
// a NULL or short buffer is refused naming that size, nothing written.
TEST(StateBlob, SaveToANullOrShortBufferIsRefusedNamingTheSize) {
  gctest::CpuWorld w(2, baseConfig(gradcompMethodQsgd));
  const size_t n = 1000;
  step(w, n, 0);
  size_t bytes = 0;
  ASSERT_EQ(gradcompCommStateSize(w.comm(0), &bytes), gradcompSuccess);
  ASSERT_GT(bytes, n * 4);
  const std::string size = std::to_string(bytes);
  EXPECT_EQ(gradcompCommSaveState(w.comm(0), nullptr, 0), gradcompInvalidArgument);
  EXPECT_EQ(std::string(gradcompGetLastError()),
            "buffer is NULL (gradcompCommStateSize gives the size, " + size + ")");
  Blob shortBuf(bytes - 1, '\x5a');
  EXPECT_EQ(gradcompCommSaveState(w.comm(0), shortBuf.data(), shortBuf.size()),
            gradcompInvalidArgument);
  EXPECT_EQ(std::string(gradcompGetLastError()),
            "bytes=" + std::to_string(bytes - 1) + " is too small: the state needs " + size);
  EXPECT_EQ(shortBuf, Blob(bytes - 1, '\x5a'));
  EXPECT_EQ(save(w.comm(0)).size(), bytes);
}

// A buffer record's flags (plugin/state.cc, payload +40) past the checksum:
// an unknown flag (0x40), and 32 (the velocity over the whole buffer of a
// hierarchical comm) where the comm is flat or the record holds no momentum,
// are refused by name and leave the comm as it was.
TEST(StateBlob, UnknownOrInconsistentBufferFlagsAreRefused) {
  for (gradcompMethod_t m : {gradcompMethodDgc, gradcompMethodQsgd}) {
    gradcompConfig_t cfg = baseConfig(m);
    gctest::CpuWorld w(2, cfg);
    const size_t n = 1000;
    for (int t = 0; t < 2; ++t) step(w, n, t);
    const Blob good = save(w.comm(0));
    // The first buffer record's flags.
    uint64_t records = 0;
    memcpy(&records, good.data() + 40, 8);
    size_t at = 112, flagsAt = 0;
    for (uint64_t i = 0; i < records && at + 16 <= good.size(); ++i) {
      uint32_t tag = 0;
      uint64_t bytes = 0;
      memcpy(&tag, good.data() + at, 4);
      memcpy(&bytes, good.data() + at + 8, 8);
      if (tag == 1) {
        flagsAt = at + 16 + 40;
        break;
      }
      at += bytes;
    }
    ASSERT_NE(flagsAt, 0u);
    uint32_t flags = 0;
    memcpy(&flags, good.data() + flagsAt, 4);
    ASSERT_EQ((flags & 4u) != 0, m == gradcompMethodDgc) << flags;
    struct Case {
      uint32_t add;
      const char* says;
    } cases[] = {
        {0x40u, "flags within 0x3f"},
        {0x20u, m == gradcompMethodDgc ? "and this comm is flat" : "(needs momentum, 0x4)"},
    };
    for (const Case& k : cases) {
      Blob b = good;
      const uint32_t f = flags | k.add;
      memcpy(b.data() + flagsAt, &f, 4);
      gctest::reseal(b);
      EXPECT_EQ(gradcompCommLoadState(w.comm(0), b.data(), b.size()), gradcompInvalidArgument)
          << k.says;
      EXPECT_NE(strstr(gradcompGetLastError(), k.says), nullptr) << gradcompGetLastError();
      EXPECT_EQ(save(w.comm(0)), good) << k.says;
    }
    EXPECT_EQ(gradcompCommLoadState(w.comm(0), good.data(), good.size()), gradcompSuccess);
  }
}

TEST(StateBlob, ForeignRankOrSettingsAreRefused) {
  gradcompConfig_t cfg = baseConfig(gradcompMethodQsgd);
  gctest::CpuWorld w(2, cfg);
  const size_t n = 2000;
  step(w, n, 0);
  const Blob r0 = save(w.comm(0)), r1 = save(w.comm(1));
  EXPECT_EQ(gradcompCommLoadState(w.comm(0), r1.data(), r1.size()), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "saved by rank 1 of 2; this comm is rank 0 of 2"),
            nullptr)
      << gradcompGetLastError();
  struct Other {
    const char* name;
    void (*change)(gradcompConfig_t*);
  } others[] = {
      {"bits=", [](gradcompConfig_t* c) { c->bits = 8; }},
      {"elias=", [](gradcompConfig_t* c) { c->elias = 1; }},
      {"algo=", [](gradcompConfig_t* c) { c->algo = gradcompAlgoRing; }},
      {"method=qsgd (1); this comm has method=topk (2)",
       [](gradcompConfig_t* c) { c->method = gradcompMethodTopk; }},
      {"bucketSize=", [](gradcompConfig_t* c) { c->bucketSize = 256; }},
      {"errorFeedback=", [](gradcompConfig_t* c) { c->errorFeedback = 0; }},
      {"ownerResidual=", [](gradcompConfig_t* c) { c->ownerResidual = 0; }},
      {"bitsMode=fixed (0); this comm has bitsMode=dynamic (1)",
       [](gradcompConfig_t* c) { c->bitsMode = gradcompBitsDynamic; }},
      {"elias=0; this comm has elias=1", [](gradcompConfig_t* c) { c->elias = 1; }},
  };
  for (const Other& o : others) {
    gradcompConfig_t other = cfg;
    o.change(&other);
    gctest::CpuWorld v(2, other);
    const Blob before = save(v.comm(0));
    EXPECT_EQ(gradcompCommLoadState(v.comm(0), r0.data(), r0.size()), gradcompInvalidArgument)
        << o.name;
    EXPECT_NE(strstr(gradcompGetLastError(), o.name), nullptr) << gradcompGetLastError();
    EXPECT_EQ(save(v.comm(0)), before);
  }
  gctest::CpuWorld three(3, cfg);
  EXPECT_EQ(gradcompCommLoadState(three.comm(0), r0.data(), r0.size()), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "rank 0 of 2; this comm is rank 0 of 3"), nullptr);
}

// The QSGD rounding is not part of the state: a residual is v - decode(code)
// under either rule, so a state saved under stochastic rounding loads into a
// nearest-rounding comm, whose next step then rounds to the nearest.
TEST(StateBlob, RoundingIsNotPartOfTheState) {
  const int N = 3;
  const size_t n = 5000;
  const gradcompConfig_t sc = baseConfig(gradcompMethodQsgd);
  gradcompConfig_t nc = sc;
  nc.rounding = gradcompRoundNearest;
  gctest::CpuWorld a(N, sc), b(N, nc), c(N, nc);
  step(a, n, 0);
  step(a, n, 1);
  std::vector<Blob> blobs;
  for (int r = 0; r < N; ++r) blobs.push_back(save(a.comm(r)));
  for (int r = 0; r < N; ++r) {
    ASSERT_EQ(gradcompCommLoadState(b.comm(r), blobs[r].data(), blobs[r].size()), gradcompSuccess)
        << gradcompGetLastError();
    ASSERT_EQ(gradcompCommLoadState(c.comm(r), blobs[r].data(), blobs[r].size()), gradcompSuccess)
        << gradcompGetLastError();
  }
  const auto outA = step(a, n, 2), outB = step(b, n, 2), outC = step(c, n, 2);
  EXPECT_NE(outA[0], outB[0]) << "the loaded comm rounds as its own config says";
  for (int r = 0; r < N; ++r) EXPECT_EQ(outB[r], outC[r]) << "rank " << r;
  for (int r = 0; r < N; ++r) EXPECT_EQ(save(b.comm(r)), save(c.comm(r))) << "rank " << r;
}

// A step counter of the backend's own that the RNG keys read, as the CUDA
// backend's device counter: a replay of a captured call advances it (and
// only it, not the comm's host step); replay() stands for such replays.
class DeviceStepBackend : public gctest::ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  const uint64_t* deviceStep() const override { return &step_; }
  gradcompResult_t advanceStep() override {
    ++step_;
    return gradcompSuccess;
  }
  gradcompResult_t setStep(uint64_t step) override {
    step_ = step;
    return gradcompSuccess;
  }
  void replay(int times) { step_ += (uint64_t)times; }

 private:
  uint64_t step_ = 0;
};

DeviceStepBackend* withDeviceStep(gradcompComm_t c) {
  auto* b = new DeviceStepBackend(c->backend);
  c->backend.reset(b);
  return b;
}

// The draws of a call follow the device step, which replayed CUDA graphs
// advance past the host's: a state saved after replays records the device
// step, so that the resumed comm draws what the saved one goes on to draw
// (bit for bit), not the draws of the steps the replays already made.
TEST(StateBlob, ASaveAfterReplaysRecordsTheDeviceStep) {
  for (gradcompMethod_t m : {gradcompMethodQsgd, gradcompMethodRandk}) {
    SCOPED_TRACE(m == gradcompMethodQsgd ? "qsgd" : "rand-k");
    const int N = 2;
    const size_t n = 4096;
    gctest::CpuWorld a(N, baseConfig(m)), b(N, baseConfig(m));
    std::vector<DeviceStepBackend*> replayed;
    for (int r = 0; r < N; ++r) replayed.push_back(withDeviceStep(a.comm(r)));
    for (int r = 0; r < N; ++r) withDeviceStep(b.comm(r));
    step(a, n, 0);
    step(a, n, 1);
    for (DeviceStepBackend* d : replayed) d->replay(3);
    std::vector<Blob> blobs;
    for (int r = 0; r < N; ++r) blobs.push_back(save(a.comm(r)));
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(gradcompCommLoadState(b.comm(r), blobs[r].data(), blobs[r].size()), gradcompSuccess)
          << gradcompGetLastError();
      EXPECT_EQ(*b.comm(r)->backend->deviceStep(), 5u) << "rank " << r;
    }
    const auto want = step(a, n, 2), got = step(b, n, 2);
    for (int r = 0; r < N; ++r) EXPECT_EQ(got[r], want[r]) << "rank " << r;
  }
}

// Rand-k draws its coordinates from the step: ranks restored at different
// steps would sum different coordinates. They fail together, and work again
// once restored consistently.
TEST(StateBlob, RanksRestoredAtDifferentStepsFailAtTheNextCall) {
  for (gradcompMethod_t m : {gradcompMethodRandk, gradcompMethodQsgd, gradcompMethodTopk}) {
    gctest::CpuWorld w(2, baseConfig(m));
    const size_t n = 4096;
    step(w, n, 0);
    step(w, n, 1);
    const Blob s2[2] = {save(w.comm(0)), save(w.comm(1))};
    step(w, n, 2);
    const Blob s3[2] = {save(w.comm(0)), save(w.comm(1))};
    ASSERT_EQ(gradcompCommLoadState(w.comm(0), s2[0].data(), s2[0].size()), gradcompSuccess);
    ASSERT_EQ(gradcompCommLoadState(w.comm(1), s3[1].data(), s3[1].size()), gradcompSuccess);
    std::vector<gradcompResult_t> res;
    std::vector<std::string> err;
    step(w, n, 3, &res, &err);
    for (int r = 0; r < 2; ++r) {
      EXPECT_EQ(res[r], gradcompInvalidUsage) << "method " << m;
      EXPECT_NE(err[r].find("is at step 2"), std::string::npos) << err[r];
      EXPECT_NE(err[r].find("is at step 3"), std::string::npos) << err[r];
    }
    ASSERT_EQ(gradcompCommLoadState(w.comm(0), s3[0].data(), s3[0].size()), gradcompSuccess);
    auto a = step(w, n, 3);
    // The same step from the same state again: identical results.
    ASSERT_EQ(gradcompCommLoadState(w.comm(0), s3[0].data(), s3[0].size()), gradcompSuccess);
    ASSERT_EQ(gradcompCommLoadState(w.comm(1), s3[1].data(), s3[1].size()), gradcompSuccess);
    auto b = step(w, n, 3);
    EXPECT_EQ(a, b) << "method " << m;
  }
}

// Two runs at the same step whose buffers had different call counts (run A
// two calls of key 7; run B one of key 7, one of key 8): DGC's warm-up sizes
// key 7's next message by its calls, so ranks restored from A and from B
// would exchange lists of different lengths (on NCCL, a hang). The next call
// fails on every rank naming the loaded schedules; the ranks work again once
// restored from the same run.
TEST(StateBlob, RanksRestoredFromDifferentRunsAtTheSameStepFailAtTheNextCall) {
  gradcompConfig_t cfg = baseConfig(gradcompMethodDgc);
  cfg.warmupSteps = 8;
  const size_t n = 4096;
  gctest::CpuWorld a(2, cfg), b(2, cfg);
  step(a, n, 0);
  step(a, n, 1);
  step(b, n, 0);
  auto res = b.run([&](int r) {
    std::vector<float> x = gctest::normal(n, 40 + r);
    return gradcompAllReduceKeyed(x.data(), x.data(), n, ncclFloat32, ncclSum, b.comm(r), nullptr,
                                  8);
  });
  for (auto rc : res) ASSERT_EQ(rc, gradcompSuccess);
  const Blob sa[2] = {save(a.comm(0)), save(a.comm(1))};
  const Blob sb[2] = {save(b.comm(0)), save(b.comm(1))};
  ASSERT_NO_FATAL_FAILURE(expectLoadedSchedulesDiffer(a, sa, sb, n, 2));
  ASSERT_EQ(gradcompCommLoadState(a.comm(1), sa[1].data(), sa[1].size()), gradcompSuccess);
  step(a, n, 2);  // every rank succeeds
  // Every rank reset: the same (empty) schedule again.
  for (int r = 0; r < 2; ++r) ASSERT_EQ(gradcompCommResetState(b.comm(r)), gradcompSuccess);
  step(b, n, 0);
}

// The same buffers at the same step, restored at different stages of DGC's
// warm-up (run A: key 7 twice, then key 8; run B: key 7, then key 8 twice):
// the warm-up sizes each key's next message by its calls, so the ranks would
// exchange lists of different lengths though they hold the same keys. The
// schedule counts each buffer's calls up to warmupSteps, and the next call
// fails on every rank naming the loaded schedules.
TEST(StateBlob, RanksRestoredAtDifferentWarmUpStagesOfTheSameBuffersFail) {
  gradcompConfig_t cfg = baseConfig(gradcompMethodDgc);
  cfg.warmupSteps = 8;
  const size_t n = 4096;
  gctest::CpuWorld a(2, cfg), b(2, cfg);
  auto call = [&](gctest::CpuWorld& w, uint64_t key, int t) {
    auto res = w.run([&](int r) {
      std::vector<float> x = gctest::normal(n, 60 + 10 * t + r);
      return gradcompAllReduceKeyed(x.data(), x.data(), n, ncclFloat32, ncclSum, w.comm(r), nullptr,
                                    key);
    });
    for (auto rc : res) ASSERT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
  };
  call(a, 7, 0), call(a, 7, 1), call(a, 8, 2);
  call(b, 7, 0), call(b, 8, 1), call(b, 8, 2);
  const Blob sa[2] = {save(a.comm(0)), save(a.comm(1))};
  const Blob sb[2] = {save(b.comm(0)), save(b.comm(1))};
  ASSERT_NO_FATAL_FAILURE(expectLoadedSchedulesDiffer(a, sa, sb, n, 3));
  ASSERT_EQ(gradcompCommLoadState(a.comm(0), sa[0].data(), sa[0].size()), gradcompSuccess);
  ASSERT_EQ(gradcompCommLoadState(a.comm(1), sa[1].data(), sa[1].size()), gradcompSuccess);
  step(a, n, 3);  // restored from one run: every rank succeeds
}

// Buffers keyed by address may be laid out differently on different ranks
// of one run: here rank 0's second call comes from a new buffer (a second
// state), rank 1's from the same one. Each rank's own checkpoint still loads
// and the run goes on: the schedule check leaves address-keyed states out.
TEST(StateBlob, RanksWhoseAddressKeyedTablesDifferResume) {
  gradcompConfig_t cfg = baseConfig(gradcompMethodQsgd);
  const size_t n = 4096;
  gctest::CpuWorld w(2, cfg);
  std::vector<std::vector<float>> first(2, std::vector<float>(n)), second(2);
  second[0].resize(n);
  auto call = [&](int t) {
    return w.run([&](int r) {
      std::vector<float>& b = (t == 1 && r == 0) ? second[0] : first[r];
      const std::vector<float> g = gctest::normal(n, 300 + 10 * t + r);
      std::copy(g.begin(), g.end(), b.begin());
      return gradcompAllReduce(b.data(), b.data(), n, ncclFloat32, ncclSum, w.comm(r), nullptr);
    });
  };
  for (int t = 0; t < 2; ++t) {
    for (gradcompResult_t rc : call(t)) ASSERT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
  }
  EXPECT_EQ(w.comm(0)->states.size(), 2u);
  EXPECT_EQ(w.comm(1)->states.size(), 1u);
  const Blob s[2] = {save(w.comm(0)), save(w.comm(1))};
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(gradcompCommLoadState(w.comm(r), s[r].data(), s[r].size()), gradcompSuccess);
  }
  for (gradcompResult_t rc : call(2)) EXPECT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
}

// A reset (or load) on one rank alone, which the others did not make, is
// checked at the next call as every call is on the CPU backends, with one
// agreement per rank: ranks whose states still agree (a rank reset before
// any call) run the call, and ranks that no longer agree (one reset at step
// 1) all fail naming both steps, every rank's state as it was. `w` and
// `clean`: worlds of N ranks of the same config.
template <typename World>
void expectOneRankResetCheckedOnce(World& w, World& clean, int N, size_t n) {
  // Rank 0 resets before any call: the ranks agree and the call runs.
  ASSERT_EQ(gradcompCommResetState(w.comm(0)), gradcompSuccess);
  std::vector<gradcompResult_t> res;
  std::vector<std::string> err;
  const auto got = step(w, n, 0, &res, &err);
  for (int r = 0; r < N; ++r) EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r << ": " << err[r];
  EXPECT_EQ(got, step(clean, n, 0));
  // The last rank resets at step 1: every rank fails naming both steps, and
  // no rank's state changes.
  ASSERT_EQ(gradcompCommResetState(w.comm(N - 1)), gradcompSuccess);
  std::vector<Blob> before;
  for (int r = 0; r < N; ++r) before.push_back(save(w.comm(r)));
  step(w, n, 1, &res, &err);
  for (int r = 0; r < N; ++r) {
    EXPECT_EQ(res[r], gradcompInvalidUsage) << "rank " << r << ": " << err[r];
    EXPECT_NE(err[r].find("is at step 0"), std::string::npos) << "rank " << r << ": " << err[r];
    EXPECT_NE(err[r].find("is at step 1"), std::string::npos) << "rank " << r << ": " << err[r];
    EXPECT_EQ(save(w.comm(r)), before[r]) << "rank " << r;
  }
}

// Flat and hierarchical comms, in-process and over sockets. Until 2026-12-07
// the rank that reset agreed twice, so where the first agreement passed its
// peers went on into the exchange: on a flat in-process comm every rank
// failed naming collective numbers, the peers' residuals advanced; over
// sockets that mismatch closed the connections; on a hierarchical comm
// every call, this one and all later ones, waited out cpuTimeoutSec.
TEST(StateBlob, AResetOnOneRankAloneIsCheckedOnceAtTheNextCall) {
  const size_t n = 4096;
  for (int localSize : {1, 2}) {
    for (int sockets = 0; sockets < 2; ++sockets) {
      SCOPED_TRACE(testing::Message() << "localSize=" << localSize << " sockets=" << sockets);
      gradcompConfig_t cfg = baseConfig(gradcompMethodQsgd);
      cfg.localSize = localSize;
      cfg.autoTune = 0;  // a socket comm would time its links and might pass the calls
      const int N = 2 * localSize;
      if (sockets) {
        gctest::SocketWorld w(N, cfg), clean(N, cfg);
        expectOneRankResetCheckedOnce(w, clean, N, n);
      } else {
        gctest::CpuWorld w(N, cfg), clean(N, cfg);
        int nodes = 0, local = 0;
        ASSERT_EQ(gradcompCommLayout(w.comm(0), &nodes, &local), gradcompSuccess);
        ASSERT_EQ(local, localSize);
        expectOneRankResetCheckedOnce(w, clean, N, n);
      }
    }
  }
}

// The same check guards a reduce-scatter that is the first call after the
// load: its per-block encodings are keyed by the step too.
TEST(StateBlob, ReduceScatterAfterLoadsOfDifferentStepsFails) {
  gctest::CpuWorld w(2, baseConfig(gradcompMethodQsgd));
  const size_t m = 4096;
  auto rs = [&](int t, std::vector<gradcompResult_t>* results, std::vector<std::string>* errors) {
    std::vector<std::vector<float>> in(2), out(2, std::vector<float>(m));
    for (int r = 0; r < 2; ++r) in[r] = gctest::normal(2 * m, 500 + 10 * t + r);
    *results = w.run([&](int r) {
      gradcompResult_t rc = gradcompReduceScatterKeyed(in[r].data(), out[r].data(), m, ncclFloat32,
                                                       ncclSum, w.comm(r), nullptr, 9);
      (*errors)[r] = gradcompGetLastError();
      return rc;
    });
    return out;
  };
  std::vector<gradcompResult_t> res;
  std::vector<std::string> err(2);
  rs(0, &res, &err);
  for (auto rc : res) ASSERT_EQ(rc, gradcompSuccess);
  const Blob s1[2] = {save(w.comm(0)), save(w.comm(1))};
  rs(1, &res, &err);
  for (auto rc : res) ASSERT_EQ(rc, gradcompSuccess);
  const Blob s2[2] = {save(w.comm(0)), save(w.comm(1))};
  ASSERT_EQ(gradcompCommLoadState(w.comm(0), s1[0].data(), s1[0].size()), gradcompSuccess);
  ASSERT_EQ(gradcompCommLoadState(w.comm(1), s2[1].data(), s2[1].size()), gradcompSuccess);
  rs(2, &res, &err);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(res[r], gradcompInvalidUsage);
    EXPECT_NE(err[r].find("is at step 1"), std::string::npos) << err[r];
    EXPECT_NE(err[r].find("is at step 2"), std::string::npos) << err[r];
  }
  ASSERT_EQ(gradcompCommLoadState(w.comm(0), s2[0].data(), s2[0].size()), gradcompSuccess);
  rs(2, &res, &err);
  for (auto rc : res) EXPECT_EQ(rc, gradcompSuccess) << gradcompGetLastError();
}

// A resumed DQ-SGD run chooses the bit widths the original run chooses.
TEST(StateBlob, DqsgdHistoryIsPartOfTheState) {
  for (gradcompBitsMode_t mode : {gradcompBitsDynamic, gradcompBitsBudget}) {
    gradcompConfig_t cfg = baseConfig(gradcompMethodQsgd);
    cfg.bitsMode = mode;
    cfg.bits = 4;
    cfg.varianceTarget = 0.002f;  // dynamic: more bits than cfg.bits
    cfg.bitsBudget = 5.0f;
    cfg.budgetWindow = 4;
    const size_t n = 3000;
    gctest::CpuWorld a(2, cfg), b(2, cfg);
    for (int t = 0; t < 5; ++t) step(a, n, t);
    for (int r = 0; r < 2; ++r) {
      const Blob s = save(a.comm(r));
      ASSERT_EQ(gradcompCommLoadState(b.comm(r), s.data(), s.size()), gradcompSuccess)
          << gradcompGetLastError();
    }
    bool differsFromFixed = false;
    for (int t = 5; t < 10; ++t) {
      auto oa = step(a, n, t), ob = step(b, n, t);
      gradcompStats_t sa, sb;
      gradcompGetStats(a.comm(0), &sa);
      gradcompGetStats(b.comm(0), &sb);
      EXPECT_EQ(sa.bitsLast, sb.bitsLast) << "mode " << mode << " step " << t;
      differsFromFixed |= sa.bitsLast != cfg.bits;
      ASSERT_EQ(oa, ob) << "mode " << mode << " step " << t;
    }
    // The comparison could tell a run that starts from cfg.bits apart.
    EXPECT_TRUE(differsFromFixed) << "mode " << mode;
  }
}

// The stored checksum is CRC32C over the blob with its own field zeroed, as
// the definition computes it bit by bit (check value of "123456789":
// 0xE3069283), whichever implementation the library picked.
uint32_t crc32cReference(const char* p, size_t n, size_t skipFrom, size_t skipTo) {
  uint32_t crc = ~0u;
  for (size_t i = 0; i < n; ++i) {
    crc ^= (unsigned char)(i >= skipFrom && i < skipTo ? 0 : p[i]);
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

TEST(StateBlob, ChecksumIsCrc32c) {
  EXPECT_EQ(crc32cReference("123456789", 9, 0, 0), 0xE3069283u);
  gctest::CpuWorld w(2, baseConfig(gradcompMethodQsgd));
  for (size_t n : {1000, 4099}) step(w, n, (int)n);
  const Blob b = save(w.comm(1));
  uint32_t stored;
  memcpy(&stored, b.data() + 12, 4);
  EXPECT_EQ(stored, crc32cReference(b.data(), b.size(), 12, 16));
}

}  // namespace

namespace {

// A call the ranks disagree on (one passes another op or count) fails on every
// rank and leaves every rank's state as it was (docs/reliability.md): the
// CPU backend's ranks agree on the call before it touches a buffer's state, so
// the next good call gives what a run without the refused one gives.
TEST(StateBlob, ARefusedCallLeavesTheStateAsItWas) {
  for (gradcompMethod_t m : {gradcompMethodQsgd, gradcompMethodTopk, gradcompMethodDgc}) {
    SCOPED_TRACE(m);
    const size_t n = 4096;
    gctest::CpuWorld w(2, baseConfig(m)), clean(2, baseConfig(m));
    for (gctest::CpuWorld* x : {&w, &clean}) step(*x, n, 0);
    std::vector<Blob> before = {save(w.comm(0)), save(w.comm(1))};
    for (int bad = 0; bad < 2; ++bad) {
      std::vector<std::vector<float>> buf(2, gctest::normal(n, 5));
      std::vector<std::string> why(2);
      auto res = w.run([&](int r) {
        const size_t count = bad == 1 && r == 1 ? n - 32 : n;           // a count
        const ncclRedOp_t op = bad == 0 && r == 1 ? ncclAvg : ncclSum;  // or an op
        const gradcompResult_t rc = gradcompAllReduceKeyed(buf[r].data(), buf[r].data(), count,
                                                           ncclFloat32, op, w.comm(r), nullptr, 7);
        why[r] = gradcompGetLastError();
        return rc;
      });
      for (int r = 0; r < 2; ++r) {
        EXPECT_EQ(res[r], gradcompInvalidUsage) << "rank " << r << " case " << bad;
        EXPECT_EQ(save(w.comm(r)), before[r]) << "rank " << r << " case " << bad << ": " << why[r];
      }
    }
    const auto got = step(w, n, 1), want = step(clean, n, 1);
    EXPECT_EQ(got, want);
  }
}

}  // namespace

namespace {

// Where a blob's first buffer record's payload starts.
size_t firstBufferPayload(const Blob& b) {
  size_t at = 112;  // the header: 48 bytes and 16 shape fields
  for (;;) {
    uint32_t tag;
    uint64_t bytes;
    memcpy(&tag, b.data() + at, 4);
    memcpy(&bytes, b.data() + at + 8, 8);
    if (tag == 1) return at + 16;
    at += bytes;
  }
}

// The blob's checksum set to what it holds now.
void reseal(Blob* b) {
  const uint32_t crc = crc32cReference(b->data(), b->size(), 12, 16);
  memcpy(b->data() + 12, &crc, 4);
}

// The first buffer record of a blob: where its payload starts, its counts and
// flags, and where its arrays (residual, owner residual, velocity, as the
// flags say) and its history after them start.
struct FirstBuffer {
  size_t p;
  uint64_t count, owner, calls;
  uint32_t flags;
  size_t arrays, velocity, history;
};

FirstBuffer firstBuffer(const Blob& b) {
  FirstBuffer f;
  f.p = firstBufferPayload(b);
  memcpy(&f.count, b.data() + f.p + 16, 8);
  memcpy(&f.owner, b.data() + f.p + 24, 8);
  memcpy(&f.calls, b.data() + f.p + 32, 8);
  memcpy(&f.flags, b.data() + f.p + 40, 4);
  f.arrays = f.p + 48;
  f.velocity = f.arrays + ((f.flags & 1) ? f.count * 4 : 0) + ((f.flags & 2) ? f.owner * 4 : 0);
  f.history = f.velocity + ((f.flags & 4) ? f.count * 4 : 0);
  return f;
}

// A blob patched as a case says, and what its refusal must name.
struct PatchCase {
  const char* name;
  gradcompMethod_t method;
  gradcompBitsMode_t mode;
  const char* says;
};

// Rank 0's state after three steps of a two-rank world of cfg, patched by
// patch(&blob, firstBuffer(blob)) and resealed: its load is refused naming
// k.says, and the comm is unchanged. Where goodLoads, the blob unpatched and
// resealed the same way then loads (the patch is what is refused).
template <class Patch>
void expectPatchRefused(const PatchCase& k, const gradcompConfig_t& cfg, bool goodLoads,
                        Patch patch) {
  const size_t n = 2000;
  gctest::CpuWorld w(2, cfg);
  for (int t = 0; t < 3; ++t) step(w, n, t);
  const Blob good = save(w.comm(0));
  Blob b = good;
  patch(&b, firstBuffer(b));
  if (::testing::Test::HasFatalFailure()) return;
  reseal(&b);
  EXPECT_EQ(gradcompCommLoadState(w.comm(0), b.data(), b.size()), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), k.says), nullptr) << gradcompGetLastError();
  EXPECT_EQ(save(w.comm(0)), good) << "the refused load changed the comm";
  if (!goodLoads) return;
  Blob same = good;
  reseal(&same);
  EXPECT_EQ(gradcompCommLoadState(w.comm(0), same.data(), same.size()), gradcompSuccess)
      << gradcompGetLastError();
}

// Values a save never writes, in blobs whose checksum is right (a checkpoint
// edited or merged by hand, or memory corrupted before the save summed it):
// refused, naming the field, the comm unchanged. Before, a NaN residual made
// its bucket NaN at every later call, a DQ-SGD history with statistics but
// no width quantized the next call with 0 bits (a crash), a budget history
// of 1e300 overflowed an int, and a key kind past 3 loaded a state no call
// would find (its buffer's residual silently lost).
TEST(StateBlob, ValuesNoSaveWritesAreRefused) {
  const PatchCase cases[] = {
      {"NaN residual", gradcompMethodQsgd, gradcompBitsFixed, "residual[5] = nan is not finite"},
      {"Inf velocity", gradcompMethodDgc, gradcompBitsFixed, "momentum[5] = inf is not finite"},
      {"statistics without a width", gradcompMethodQsgd, gradcompBitsDynamic,
       "statistics are present without the width"},
      {"a budget history of 1e300", gradcompMethodQsgd, gradcompBitsBudget,
       "a value no statistic gives"},
      {"key kind 4", gradcompMethodQsgd, gradcompBitsFixed, "key kind 4"},
      {"the word after a tag", gradcompMethodQsgd, gradcompBitsFixed,
       "has 7 in the word after its tag, which is always 0"},
  };
  for (const PatchCase& k : cases) {
    SCOPED_TRACE(k.name);
    gradcompConfig_t cfg = baseConfig(k.method);
    cfg.bitsMode = k.mode;
    cfg.budgetWindow = 4;
    expectPatchRefused(k, cfg, true, [&](Blob* b, const FirstBuffer& f) {
      if (k.method == gradcompMethodDgc) {
        ASSERT_TRUE(f.flags & 4) << "a DGC state keeps a velocity";
        const float inf = INFINITY;
        memcpy(b->data() + f.velocity + 5 * 4, &inf, 4);
      } else if (k.mode == gradcompBitsDynamic) {
        ASSERT_TRUE(f.flags & 8) << "a DQ-SGD state keeps its history";
        const double nan = NAN;  // a non-finite result: the next call reuses the last width
        const int32_t zero = 0;
        memcpy(b->data() + f.history, &nan, 8);
        memcpy(b->data() + f.history + 20, &zero, 4);
      } else if (k.mode == gradcompBitsBudget) {
        uint32_t entries;
        memcpy(&entries, b->data() + f.history + 32, 4);
        ASSERT_GE(entries, 1u);
        const double huge = 1e300;
        memcpy(b->data() + f.history + 40, &huge, 8);
      } else if (strstr(k.name, "kind")) {
        const int32_t kind = 4;
        memcpy(b->data() + f.p, &kind, 4);
      } else if (strstr(k.name, "tag")) {
        const uint32_t seven = 7;
        memcpy(b->data() + f.p - 16 + 4, &seven, 4);  // the record prefix: tag, 0, bytes
      } else {
        const float nan = NAN;
        memcpy(b->data() + f.arrays + 5 * 4, &nan, 4);
      }
    });
  }
}

// Counters a blob sets that no run reaches, past the checksum: a step or a
// buffer's calls above 2^63 - 1, negative DQ-SGD statistics. Refused by name
// with the range, the comm unchanged. Before, a buffer whose calls were
// 2^64 - 1 loaded, wrapped to 0 at its next call and restarted DGC's warm-up;
// a step of 2^64 - 1 wrapped to step 0's RNG keys.
TEST(StateBlob, CountersNoRunReachesAreRefused) {
  const PatchCase cases[] = {
      {"calls 2^64 - 1", gradcompMethodDgc, gradcompBitsFixed,
       "calls=18446744073709551615, out of range 0..9223372036854775807"},
      {"calls 2^63", gradcompMethodQsgd, gradcompBitsFixed,
       "calls=9223372036854775808, out of range 0..9223372036854775807"},
      {"step 2^64 - 1", gradcompMethodDgc, gradcompBitsFixed,
       "step=18446744073709551615 is out of range 0..9223372036854775807"},
      {"step 2^63", gradcompMethodQsgd, gradcompBitsFixed,
       "step=9223372036854775808 is out of range 0..9223372036854775807"},
      {"negative sumSq", gradcompMethodQsgd, gradcompBitsDynamic,
       "sumLenMaxSq=2, sumSq=-1 are out of range"},
      {"-inf sumLenMaxSq", gradcompMethodQsgd, gradcompBitsDynamic, "sumLenMaxSq=-inf"},
  };
  for (const PatchCase& k : cases) {
    SCOPED_TRACE(k.name);
    gradcompConfig_t cfg = baseConfig(k.method);
    cfg.bitsMode = k.mode;
    cfg.warmupSteps = 8;
    expectPatchRefused(k, cfg, false, [&](Blob* b, const FirstBuffer& f) {
      uint64_t stepField;
      memcpy(&stepField, b->data() + 24, 8);
      ASSERT_EQ(f.calls, 3u);
      ASSERT_EQ(stepField, 3u);
      if (strstr(k.name, "calls")) {
        const uint64_t v = strstr(k.name, "2^64") ? ~0ull : 1ull << 63;
        memcpy(b->data() + f.p + 32, &v, 8);
      } else if (strstr(k.name, "step")) {
        const uint64_t v = strstr(k.name, "2^64") ? ~0ull : 1ull << 63;
        memcpy(b->data() + 24, &v, 8);
      } else {
        ASSERT_TRUE(f.flags & 8) << "a DQ-SGD state keeps its history";
        const double lenMax = strstr(k.name, "inf") ? -INFINITY : 2.0, sq = -1.0;
        memcpy(b->data() + f.history, &lenMax, 8);
        if (!strstr(k.name, "inf")) memcpy(b->data() + f.history + 8, &sq, 8);
      }
    });
  }
}

// The bounds' edges load: a step of 2^63 - 1 with buffers at as many calls
// (past DGC's warm-up), and the next call runs on every rank. So do calls
// past the step, which a CUDA graph captured and never replayed leaves (the
// host counts a captured call, the device step its replays).
TEST(StateBlob, TheLargestStepAndCallsLoadAndRun) {
  gradcompConfig_t cfg = baseConfig(gradcompMethodDgc);
  cfg.warmupSteps = 8;
  gctest::CpuWorld w(2, cfg);
  const size_t n = 2000;
  for (int t = 0; t < 2; ++t) step(w, n, t);
  // Every rank's state loaded back with its step and its first buffer's calls
  // set to these.
  auto loadWith = [&](uint64_t stepValue, uint64_t calls) {
    for (int r = 0; r < 2; ++r) {
      Blob b = save(w.comm(r));
      const size_t p = firstBufferPayload(b);
      memcpy(b.data() + 24, &stepValue, 8);
      memcpy(b.data() + p + 32, &calls, 8);
      reseal(&b);
      ASSERT_EQ(gradcompCommLoadState(w.comm(r), b.data(), b.size()), gradcompSuccess)
          << gradcompGetLastError();
    }
  };
  const uint64_t top = (1ull << 63) - 1;
  ASSERT_NO_FATAL_FAILURE(loadWith(top, top));
  step(w, n, 2);
  gradcompStats_t st;
  ASSERT_EQ(gradcompGetStats(w.comm(0), &st), gradcompSuccess);
  EXPECT_EQ(st.steps, top + 1);
  ASSERT_NO_FATAL_FAILURE(loadWith(1, 2));  // calls past the step
  step(w, n, 3);
}

// The QSGD allreduce keeps an owner residual only where its algorithm reads
// one (two-shot, ring, the hierarchy around either): Elias and the allgather
// (chosen, or auto's on 2 ranks or as the middle stage across 2 nodes)
// quantize once, and a state of theirs holds none, so it takes the bytes of
// the same comm with ownerResidual=0, saves the same, and reduces the same.
TEST(StateBlob, OwnerResidualOnlyWhereTheAlgorithmReadsIt) {
  struct Case {
    const char* name;
    int N, localSize;
    gradcompAlgo_t algo;
    int elias;
    bool keeps;
  } cases[] = {
      {"allgather", 3, 1, gradcompAlgoAllgather, 0, false},
      {"auto on 2 ranks (allgather)", 2, 1, gradcompAlgoAuto, 0, false},
      {"elias", 3, 1, gradcompAlgoAuto, 1, false},
      {"elias two-shot", 3, 1, gradcompAlgoTwoShot, 1, false},
      {"hier, allgather middle", 4, 2, gradcompAlgoAuto, 0, false},
      {"two-shot", 3, 1, gradcompAlgoTwoShot, 0, true},
      {"ring", 3, 1, gradcompAlgoRing, 0, true},
      {"hier, two-shot middle", 6, 2, gradcompAlgoAuto, 0, true},
  };
  const size_t n = 5000;
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    gradcompConfig_t cfg = baseConfig(gradcompMethodQsgd);
    cfg.algo = k.algo, cfg.elias = k.elias, cfg.localSize = k.localSize, cfg.ownerResidual = 1;
    gradcompConfig_t none = cfg;
    none.ownerResidual = 0;
    gctest::CpuWorld w(k.N, cfg), v(k.N, none);
    std::vector<std::vector<float>> a, b;
    for (int t = 0; t < 3; ++t) a = step(w, n, t), b = step(v, n, t);
    for (int r = 0; r < k.N; ++r) {
      ASSERT_EQ(w.comm(r)->states.size(), 1u);
      const gc::BufferState& st = w.comm(r)->states.begin()->second;
      EXPECT_EQ(st.ownerResidual != nullptr, k.keeps) << "rank " << r;
      EXPECT_EQ(st.ownerResidualCount != 0, k.keeps) << "rank " << r;
      size_t with = 0, without = 0;
      ASSERT_EQ(gradcompCommStateSize(w.comm(r), &with), gradcompSuccess);
      ASSERT_EQ(gradcompCommStateSize(v.comm(r), &without), gradcompSuccess);
      if (!k.keeps) {
        EXPECT_EQ(with, without) << "rank " << r;
        EXPECT_EQ(a[r], b[r]) << "rank " << r;
      } else {
        EXPECT_GT(with, without) << "rank " << r;
      }
    }
  }
}

// Blob b with every buffer record given an owner residual of `owner` zeros
// where it has none, as builds before the owner residual followed the
// algorithm saved an Elias or allgather state (they allocated it and never
// wrote it); `owner` is that build's count, the comm's largest chunk.
Blob withZeroOwner(const Blob& b, uint64_t owner) {
  Blob out(b.begin(), b.begin() + 112);
  uint64_t records = 0;
  memcpy(&records, b.data() + 40, 8);
  size_t at = 112;
  for (uint64_t i = 0; i < records; ++i) {
    uint32_t tag = 0, flags = 0;
    uint64_t bytes = 0, count = 0;
    memcpy(&tag, b.data() + at, 4);
    memcpy(&bytes, b.data() + at + 8, 8);
    Blob rec(b.begin() + at, b.begin() + at + bytes);
    at += bytes;
    memcpy(&count, rec.data() + 16 + 16, 8);
    memcpy(&flags, rec.data() + 16 + 40, 4);
    if (tag == 1 && (flags & 2u) == 0) {
      flags |= 2u;
      bytes += 4 * owner;
      memcpy(rec.data() + 8, &bytes, 8);
      memcpy(rec.data() + 16 + 24, &owner, 8);
      memcpy(rec.data() + 16 + 40, &flags, 4);
      const size_t arrays = 16 + 48 + ((flags & 1u) ? 4 * count : 0);
      rec.insert(rec.begin() + arrays, 4 * owner, 0);
    }
    out.insert(out.end(), rec.begin(), rec.end());
  }
  const uint64_t total = out.size();
  memcpy(out.data() + 16, &total, 8);
  gctest::reseal(out);
  return out;
}

// A blob an earlier build saved for an Elias or allgather comm holds that
// owner residual: it still loads (the zeros skipped), and the comm goes on as
// the saving one and one loaded from this build's blob; an owner count that
// is not the comm's largest chunk is refused, naming it.
TEST(StateBlob, AnEarlierBuildsUnreadOwnerResidualLoads) {
  for (int elias : {0, 1}) {
    SCOPED_TRACE(elias ? "elias" : "allgather");
    gradcompConfig_t cfg = baseConfig(gradcompMethodQsgd);
    cfg.algo = elias ? gradcompAlgoAuto : gradcompAlgoAllgather, cfg.elias = elias;
    const int N = 3;
    const size_t n = 5000, d = (size_t)cfg.bucketSize;
    const uint64_t owner = ((n + d - 1) / d + N - 1) / N * d;
    gctest::CpuWorld w(N, cfg), fresh(N, cfg), earlier(N, cfg);
    for (int t = 0; t < 2; ++t) step(w, n, t);
    std::vector<Blob> saved(N);
    for (int r = 0; r < N; ++r) {
      saved[r] = save(w.comm(r));
      ASSERT_EQ(
          gctest::savedOwnerResidual(std::vector<uint8_t>(saved[r].begin(), saved[r].end()), n),
          std::vector<float>())
          << "this build saves no owner residual for such a comm";
      const Blob old = withZeroOwner(saved[r], owner);
      ASSERT_GT(old.size(), saved[r].size());
      ASSERT_EQ(gradcompCommLoadState(fresh.comm(r), saved[r].data(), saved[r].size()),
                gradcompSuccess)
          << gradcompGetLastError();
      ASSERT_EQ(gradcompCommLoadState(earlier.comm(r), old.data(), old.size()), gradcompSuccess)
          << gradcompGetLastError();
      EXPECT_EQ(save(earlier.comm(r)), saved[r]) << "rank " << r;
      // An owner count no build gave this comm.
      const Blob wrong = withZeroOwner(saved[r], owner + d);
      const Blob before = save(fresh.comm(r));
      EXPECT_EQ(gradcompCommLoadState(fresh.comm(r), wrong.data(), wrong.size()),
                gradcompInvalidArgument);
      EXPECT_NE(strstr(gradcompGetLastError(), "with owner count"), nullptr)
          << gradcompGetLastError();
      EXPECT_EQ(save(fresh.comm(r)), before) << "the refused load changed the comm";
    }
    const auto a = step(w, n, 2), b = step(fresh, n, 2), c = step(earlier, n, 2);
    for (int r = 0; r < N; ++r) {
      EXPECT_EQ(b[r], a[r]) << "rank " << r;
      EXPECT_EQ(c[r], a[r]) << "rank " << r;
      EXPECT_EQ(save(earlier.comm(r)), save(w.comm(r))) << "rank " << r;
    }
  }
}

}  // namespace
