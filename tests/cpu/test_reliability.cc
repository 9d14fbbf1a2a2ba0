// Bad input against the public API on the CPU backend (issue 16): every
// case must end in a clear error on every rank, nothing written out of
// bounds, and a comm that keeps working afterwards.
#include <gtest/gtest.h>
#include <stdint.h>
#include <string.h>

#include <vector>

#include "tests/common/cpu_world.h"
#include "tests/common/guarded.h"
#include "tests/common/test_util.h"
#include "gradcomp.h"
#include "gradcomp/elias.h"
#include "gradcomp/reference.h"

namespace {

using gctest::CpuWorld;
using gctest::GuardedBuffer;

gradcompConfig_t quickConfig(gradcompMethod_t method) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = method;
  cfg.minElements = 1024;
  cfg.density = 0.01f;
  cfg.cpuTimeoutSec = 2.0f;
  return cfg;
}

// Defect 4: rank 1 fails before the collective; rank 0 times out. Every
// later correct call must work on every rank.
TEST(Reliability, CpuWorldRecoversAfterTimeout) {
  for (gradcompMethod_t m : {gradcompMethodNone, gradcompMethodQsgd, gradcompMethodTopk}) {
    gradcompConfig_t cfg = quickConfig(m);
    cfg.cpuTimeoutSec = 0.2f;
    CpuWorld w(2, cfg);
    const size_t n = 4096;
    std::vector<std::vector<float>> in(2), out(2, std::vector<float>(n));
    for (int r = 0; r < 2; ++r) in[r] = gctest::normal(n, 10 + r);
    auto res = w.run([&](int r) {
      // Rank 1 passes a NULL recvbuff: refused before any collective.
      return gradcompAllReduce(in[r].data(), r == 1 ? nullptr : out[r].data(), n, ncclFloat32,
                               ncclSum, w.comm(r), nullptr);
    });
    EXPECT_EQ(res[0], gradcompSystemError) << "method " << m;
    EXPECT_EQ(res[1], gradcompInvalidArgument) << "method " << m;
    for (int call = 0; call < 3; ++call) {
      res = w.run([&](int r) {
        return gradcompAllReduce(in[r].data(), out[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                                 nullptr);
      });
      ASSERT_EQ(res[0], gradcompSuccess) << "method " << m << " call " << call;
      ASSERT_EQ(res[1], gradcompSuccess) << "method " << m << " call " << call;
      EXPECT_EQ(memcmp(out[0].data(), out[1].data(), n * 4), 0);
    }
    if (m == gradcompMethodNone) {
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[0][i], in[0][i] + in[1][i]);
    }
  }
}

// Defect 1: counts that differ across ranks (same slots, other indices).
// Every rank fails with a clear error; the receive buffers end at a
// no-access page, so a write past them faults.
TEST(Reliability, SparseCountMismatchFailsOnAllRanks) {
  for (gradcompMethod_t m : {gradcompMethodTopk, gradcompMethodDgc, gradcompMethodRandk}) {
    for (auto sel : {gradcompSelectThreshold, gradcompSelectExact}) {
      gradcompConfig_t cfg = quickConfig(m);
      cfg.select = sel;
      CpuWorld w(2, cfg);
      const size_t counts[2] = {32768, 32769};
      std::vector<std::vector<float>> in(2);
      std::vector<GuardedBuffer*> out;
      for (int r = 0; r < 2; ++r) {
        in[r] = gctest::normal(counts[r], 20 + r);
        // Large values at the tail so the longer rank selects its last index.
        for (size_t i = counts[r] - 64; i < counts[r]; ++i) in[r][i] = 100.0f + (float)i;
        out.push_back(new GuardedBuffer(counts[r] * 4));
      }
      auto res = w.run([&](int r) {
        return gradcompAllReduce(in[r].data(), out[r]->data(), counts[r], ncclFloat32, ncclSum,
                                 w.comm(r), nullptr);
      });
      for (int r = 0; r < 2; ++r) {
        EXPECT_EQ(res[r], gradcompInvalidUsage) << "method " << m << " rank " << r;
      }
      // The same call with agreeing counts works afterwards.
      res = w.run([&](int r) {
        return gradcompAllReduce(in[r].data(), out[r]->data(), counts[0], ncclFloat32, ncclSum,
                                 w.comm(r), nullptr);
      });
      EXPECT_EQ(res[0], gradcompSuccess) << gradcompGetLastError();
      EXPECT_EQ(res[1], gradcompSuccess);
      for (auto* b : out) delete b;
    }
  }
}

// Defect 2: a bucket offset past the stream, with offsets[b] <= offsets[b+1]
// checked only bucket by bucket. Bucket 0 claims 256 words of a 2-word
// stream whose all-ones bits decode as long runs of level-1 values, so an
// unbounded reader walks into the no-access page.
TEST(Reliability, EliasDecoderBoundsBucketOffsets) {
  const size_t n = 1024;
  const gradcompEliasParams_t params = {7, 512, gradcompEliasGamma, gradcompEliasScaleMax};
  const size_t header = gradcompEliasHeaderBytes(n, 512);
  ASSERT_EQ(header, 4u * 5);
  std::vector<uint32_t> enc(5 + 2);
  const float one = 1.0f;
  memcpy(&enc[0], &one, 4);
  memcpy(&enc[1], &one, 4);
  enc[2] = 0;    // offsets[0]
  enc[3] = 256;  // offsets[1]: past the stream
  enc[4] = 2;    // offsets[2] = stream words
  enc[5] = enc[6] = 0xffffffffu;
  GuardedBuffer in(enc.data(), enc.size() * 4);
  std::vector<float> out(n);
  EXPECT_EQ(gradcompEliasDecodeHost(in.data(), in.size(), n, &params, out.data(), 0),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "not a well-formed Elias encoding"), nullptr)
      << gradcompGetLastError();
}

// Defect 3: absurd counts end in an error on every rank, never an abort.
TEST(Reliability, AbsurdCountsAreRefused) {
  gradcompConfig_t cfg = quickConfig(gradcompMethodQsgd);
  cfg.cpuTimeoutSec = 5.0f;
  CpuWorld w(2, cfg);
  GuardedBuffer send0(64), send1(64), recv0(64), recv1(64);
  GuardedBuffer* send[2] = {&send0, &send1};
  GuardedBuffer* recv[2] = {&recv0, &recv1};
  struct Case {
    size_t count;
    ncclDataType_t type;
    gradcompResult_t expect;
  } cases[] = {
      {(size_t)1 << 40, ncclInt32, gradcompSystemError},  // 4 TiB of scratch: no memory
      {SIZE_MAX, ncclInt32, gradcompInvalidArgument},
      {(size_t)1 << 62, ncclInt32, gradcompInvalidArgument},
      {((size_t)1 << 62) + 1, ncclInt32, gradcompInvalidArgument},
      {SIZE_MAX, ncclFloat32, gradcompInvalidArgument},
      {(size_t)1 << 62, ncclBfloat16, gradcompInvalidArgument},
  };
  for (const Case& k : cases) {
    auto res = w.run([&](int r) {
      return gradcompAllReduce(send[r]->data(), recv[r]->data(), k.count, k.type, ncclSum,
                               w.comm(r), nullptr);
    });
    EXPECT_EQ(res[0], k.expect) << "count " << k.count << " type " << k.type;
    EXPECT_EQ(res[1], k.expect) << "count " << k.count << " type " << k.type;
  }
  // Size helpers: 0 (invalid) rather than a wrapped size.
  const gradcompEliasParams_t params = {7, 32, gradcompEliasGamma, gradcompEliasScaleMax};
  for (size_t n : {SIZE_MAX, (size_t)1 << 62, SIZE_MAX / 8 + 1}) {
    EXPECT_EQ(gradcompQsgdEncodedBytes(n, 8, 32), 0u) << n;
    EXPECT_EQ(gradcompEliasHeaderBytes(n, 32), 0u) << n;
    EXPECT_EQ(gradcompEliasMaxEncodedBytes(n, &params), 0u) << n;
  }
  EXPECT_EQ(gradcompQsgdEncodedBytes(1000, 8, 32), 32u * 4 + 1000u);
}

}  // namespace
