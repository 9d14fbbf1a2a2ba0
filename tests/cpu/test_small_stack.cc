// The host codecs and the CPU backend's calls on a caller's thread with a
// small stack (a worker made with a 64 KiB pthread stack, musl's 128 KiB
// default): the host QSGD and Elias encoders kept a bucket (40 and 32 KiB at
// the largest) on the stack, and such a thread overflowed it.
#include <gtest/gtest.h>
#include <pthread.h>
#include <string.h>

#include <functional>
#include <vector>

#include "gradcomp.h"
#include "gradcomp/elias.h"
#include "gradcomp/reference.h"
#include "tests/common/cpu_world.h"
#include "tests/common/test_util.h"
#include "tests/common/world_checks.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define GC_TEST_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define GC_TEST_SANITIZED 1
#endif

namespace {

// The stack of the callers' threads here, less than a 64 KiB worker's, of
// which the thread's static TLS and guard page take their part. With this
// binary's TLS the old QSGD encoder (a 41 KiB frame) needed a 72 KiB stack
// and the old Elias encoder (33 KiB) a 64 KiB one, where these calls now run
// in 32 KiB: 48 KiB overflowed either old frame with room to spare. The
// sanitizers' builds (tools/sanitize.sh) pad every frame and run their own
// code on the thread (these calls need about 44 KiB under ASan): there the
// thread gets 128 KiB, which still bounds the calls' stack but no longer
// shows a frame of the old size.
#ifdef GC_TEST_SANITIZED
constexpr size_t kSmallStack = 128 * 1024;
#else
constexpr size_t kSmallStack = 48 * 1024;
#endif

// Runs each of fns on a thread of its own, all at once, each with a stack of
// kSmallStack bytes; false (and the reason) if one could not be made.
bool runOnSmallStacks(const std::vector<std::function<void()>>& fns, std::string* why) {
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0 || pthread_attr_setstacksize(&attr, kSmallStack) != 0) {
    *why = "pthread_attr_setstacksize(" + std::to_string(kSmallStack) + ") failed";
    return false;
  }
  std::vector<pthread_t> threads(fns.size());
  size_t made = 0;
  for (; made < fns.size(); ++made) {
    void* arg = const_cast<std::function<void()>*>(&fns[made]);
    auto body = [](void* f) -> void* {
      (*static_cast<std::function<void()>*>(f))();
      return nullptr;
    };
    if (pthread_create(&threads[made], &attr, body, arg) != 0) break;
  }
  for (size_t i = 0; i < made; ++i) pthread_join(threads[i], nullptr);
  pthread_attr_destroy(&attr);
  if (made < fns.size()) *why = "pthread_create failed";
  return made == fns.size();
}

// The host entry points at the largest bucket, on a small stack: the bytes
// and residual of the same encode on this thread.
TEST(SmallStack, HostEncodesMatchTheReference) {
  const size_t n = 3 * 8192 + 100;
  const std::vector<float> x = gctest::normal(n, 11);
  const size_t qsgdBytes = gradcompQsgdEncodedBytes(n, 8, 8192);
  gradcompEliasParams_t ep{127, 8192, gradcompEliasGamma, gradcompEliasScaleMax};
  const size_t eliasBytes = gradcompEliasMaxEncodedBytes(n, &ep);
  ASSERT_GT(qsgdBytes, 0u);
  ASSERT_GT(eliasBytes, 0u);
  struct Run {
    std::vector<float> qsgdResidual, eliasResidual;
    std::vector<uint8_t> qsgd, elias;
    size_t eliasSize = 0;
    gradcompResult_t qsgdRes = gradcompInternalError, eliasRes = gradcompInternalError;
  };
  // The buffers are made here: only the calls run on the small stack.
  auto prepare = [&](Run* r) {
    r->qsgdResidual = gctest::normal(n, 12, 0.01f);
    r->eliasResidual = r->qsgdResidual;
    r->qsgd.assign(qsgdBytes, 0);
    r->elias.assign(eliasBytes, 0);
  };
  auto encode = [&](Run* r) {
    r->qsgdRes = gradcompQsgdEncodeEFLevelsHost(x.data(), ncclFloat32, r->qsgdResidual.data(), n, 8,
                                                8192, 7, gradcompRoundStochastic,
                                                gradcompLevelsUniform, r->qsgd.data());
    r->eliasRes = gradcompEliasEncodeHost(x.data(), ncclFloat32, r->eliasResidual.data(), n, &ep, 7,
                                          r->elias.data(), eliasBytes, &r->eliasSize);
  };
  Run want, got;
  prepare(&want);
  prepare(&got);
  encode(&want);
  ASSERT_EQ(want.qsgdRes, gradcompSuccess) << gradcompGetLastError();
  ASSERT_EQ(want.eliasRes, gradcompSuccess) << gradcompGetLastError();
  std::string why;
  ASSERT_TRUE(runOnSmallStacks({[&] { encode(&got); }}, &why)) << why;
  EXPECT_EQ(got.qsgdRes, gradcompSuccess);
  EXPECT_EQ(got.eliasRes, gradcompSuccess);
  EXPECT_TRUE(got.qsgd == want.qsgd) << "QSGD bytes";
  EXPECT_TRUE(got.qsgdResidual == want.qsgdResidual) << "QSGD residual";
  EXPECT_EQ(got.eliasSize, want.eliasSize);
  EXPECT_TRUE(got.elias == want.elias) << "Elias bytes";
  EXPECT_TRUE(got.eliasResidual == want.eliasResidual) << "Elias residual";
}

// Compressed allreduces of an in-process CPU world whose ranks call from
// small-stack threads (QSGD and Elias, at the largest bucket): every rank's
// output is, bit for bit, that of the same calls from ordinary threads.
TEST(SmallStack, CpuWorldAllReduceMatchesOrdinaryThreads) {
  const int nranks = 2;
  const size_t n = 2 * 8192 + 300;
  for (int elias : {0, 1}) {
    gradcompConfig_t cfg = gctest::qsgdTestConfig();
    cfg.bucketSize = 8192;
    cfg.autoTune = 0;
    cfg.elias = elias;
    std::vector<std::vector<float>> want(nranks), got(nranks);
    for (int r = 0; r < nranks; ++r) want[r] = got[r] = gctest::normal(n, 100 + r);
    std::vector<gradcompResult_t> gotRes(nranks, gradcompInternalError);
    gctest::CpuWorld reference(nranks, cfg), small(nranks, cfg);
    // Two calls: the second carries the first's residuals.
    for (int call = 0; call < 2; ++call) {
      const std::vector<gradcompResult_t> wantRes = reference.run([&](int r) {
        return gradcompAllReduce(want[r].data(), want[r].data(), n, ncclFloat32, ncclSum,
                                 reference.comm(r), nullptr);
      });
      std::vector<std::function<void()>> ranks;
      for (int r = 0; r < nranks; ++r) {
        ranks.push_back([&, r] {
          gotRes[r] = gradcompAllReduce(got[r].data(), got[r].data(), n, ncclFloat32, ncclSum,
                                        small.comm(r), nullptr);
        });
      }
      std::string why;
      ASSERT_TRUE(runOnSmallStacks(ranks, &why)) << why;
      for (int r = 0; r < nranks; ++r) {
        ASSERT_EQ(wantRes[r], gradcompSuccess) << "elias " << elias << " rank " << r;
        ASSERT_EQ(gotRes[r], gradcompSuccess) << "elias " << elias << " rank " << r;
        EXPECT_TRUE(got[r] == want[r]) << "elias " << elias << " call " << call << " rank " << r;
      }
    }
  }
}

}  // namespace
