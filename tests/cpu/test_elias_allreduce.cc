// Elias allgather (GRADCOMP_ELIAS=1) on the CPU backend: equals, bit for
// bit, a serial reference built on the public Elias host codec and also the
// fixed-width allgather (same levels, other wire format); identical on all
// ranks; the bytes it reports are the sizes its encodings really have.
#include <gtest/gtest.h>
#include <string.h>

#include <vector>

#include "gradcomp.h"
#include "gradcomp/elias.h"
#include "kernels/elias_math.cuh"
#include "kernels/qsgd_math.cuh"
#include "plugin/codecs/elias.h"
#include "tests/common/cpu_world.h"
#include "tests/common/ref_algos.h"
#include "tests/common/test_util.h"
#include "tests/common/world_checks.h"

namespace {

using gc::DType;
using namespace gctest::ref;

gradcompEliasParams_t eliasParams(const gradcompConfig_t& c) {
  gradcompEliasParams_t p;
  p.levels = gc::qsgd::levels(c.bits);
  p.bucketSize = c.bucketSize;
  p.code = gradcompEliasGamma;
  p.scale = gradcompEliasScaleMax;
  return p;
}

// Serial reference: rank i encodes with key (seed, step, i, 0), every
// encoding is decoded and summed in rank order. Adds each rank's wire bytes.
// Nearest rounding has no public Elias entry point: the host codec's own
// (its levels are checked against the rule in test_rounding.cc).
std::vector<float> refElias(std::vector<Rank>& R, DType t, size_t n, const gradcompConfig_t& c,
                            uint64_t step, bool avg, std::vector<uint64_t>* wire) {
  const int N = (int)R.size();
  const gradcompEliasParams_t p = eliasParams(c);
  std::vector<float> acc(n, 0.0f);
  std::vector<uint32_t> buf(gradcompEliasMaxEncodedBytes(n, &p) / 4 + 1);
  for (int i = 0; i < N; ++i) {
    size_t bytes = 0;
    const uint64_t key = gc::deriveKey(c.seed, step, i, 0);
    if (nearest(c)) {
      const gc::elias::Params ip{p.levels, p.bucketSize, gc::elias::Code::Gamma,
                                 gc::elias::Norm::Max};
      bytes = gc::host::eliasEncode(data(R[i], t), t, R[i].residual.data(), n, ip, key, true,
                                    buf.data());
    } else {
      EXPECT_EQ(gradcompEliasEncodeHost(data(R[i], t), nccl(t), R[i].residual.data(), n, &p, key,
                                        buf.data(), buf.size() * 4, &bytes),
                gradcompSuccess);
    }
    EXPECT_EQ(gradcompEliasDecodeHost(buf.data(), bytes, n, &p, acc.data(), i != 0),
              gradcompSuccess);
    (*wire)[i] += (uint64_t)(N - 1) * (4 + bytes);
  }
  return finish(acc, t, avg ? (float)N : 1.0f);
}

void checkElias(int N, DType t, bool avg, size_t n, int bits, int steps,
                gradcompRounding_t rounding = gradcompRoundStochastic) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " dtype=" << (int)t << " avg=" << avg
                                  << " n=" << n << " bits=" << bits << " rounding=" << rounding);
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.rounding = rounding;
  cfg.elias = 1;
  cfg.minElements = 0;
  cfg.bucketSize = 64;
  cfg.bits = bits;
  gctest::CpuWorld world(N, cfg);
  std::vector<Rank> ref = makeInputs(N, n, t, n + N), qsgdRef = ref;
  std::vector<Rank> bufs = ref;
  std::vector<uint64_t> wire(N, 0);
  for (int step = 0; step < steps; ++step) {
    std::vector<Rank> in = makeInputs(N, n, t, 1000 * step + n + N);
    std::vector<Rank> inQ = in;
    for (int i = 0; i < N; ++i) {
      in[i].residual = ref[i].residual;
      inQ[i].residual = qsgdRef[i].residual;
      bufs[i].f32 = in[i].f32;
      bufs[i].half = in[i].half;
    }
    auto res = gctest::allReduceInPlace(world, bufs, t, n, avg);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    auto expect = refElias(ref = in, t, n, cfg, step, avg, &wire);
    auto fixedWidth = refAllgather(qsgdRef = inQ, t, n, cfg, step, avg);
    ASSERT_EQ(memcmp(expect.data(), fixedWidth.data(), n * 4), 0)
        << "Elias levels differ from the fixed-width codec's at step " << step;
    for (int r = 0; r < N; ++r) {
      auto got = widen(bufs[r], t, n);
      ASSERT_EQ(memcmp(got.data(), expect.data(), n * 4), 0) << "rank " << r << " step " << step;
      gradcompStats_t st;
      ASSERT_EQ(gradcompGetStats(world.comm(r), &st), gradcompSuccess);
      EXPECT_EQ(st.bytesOnWire, wire[r]) << "rank " << r;
      EXPECT_EQ(st.bitsLast, bits);
      EXPECT_EQ(st.callsPerAlgo[gradcompAlgoAllgather], (uint64_t)step + 1);
    }
  }
}

TEST(EliasAllReduceCpu, AllRanksTypesOpsCountsBits) {
  const size_t counts[] = {1, 63, 64, 200, 1000, 3001};
  for (int N = 2; N <= 8; ++N) {
    for (DType t : {DType::F32, DType::F16, DType::BF16}) {
      for (bool avg : {false, true}) {
        for (size_t n : counts) checkElias(N, t, avg, n, t == DType::F32 ? 2 + n % 7 : 4, 2);
      }
    }
  }
}

// Nearest rounding: the Elias allgather equals the fixed-width nearest
// reference (levels from the rule), bit for bit on every rank.
TEST(EliasAllReduceCpu, NearestRoundingEqualsFixedWidthNearest) {
  for (int N : {2, 3, 5})
    for (DType t : {DType::F32, DType::BF16})
      for (size_t n : {(size_t)63, (size_t)3001})
        checkElias(N, t, N == 3, n, t == DType::F32 ? 2 + n % 7 : 4, 3, gradcompRoundNearest);
}

// On Gaussian gradients the Elias code beats the fixed width at 2 and 3 bits
// (docs/adaptive.md): the whole exchange sends fewer bytes than allgather.
TEST(EliasAllReduceCpu, SendsFewerBytesThanFixedWidthAtLowBits) {
  const int N = 3;
  const size_t n = 1 << 15;
  for (int bits : {2, 3}) {
    uint64_t bytes[2];
    for (int elias = 0; elias <= 1; ++elias) {
      gradcompConfig_t cfg;
      gradcompConfigInit(&cfg);
      cfg.elias = elias;
      cfg.algo = gradcompAlgoAllgather;
      cfg.minElements = 0;
      cfg.bits = bits;
      gctest::CpuWorld world(N, cfg);
      std::vector<std::vector<float>> g(N);
      for (int r = 0; r < N; ++r) g[r] = gctest::normal(n, 50 + r);
      auto res = world.run([&](int r) {
        return gradcompAllReduce(g[r].data(), g[r].data(), n, ncclFloat32, ncclSum, world.comm(r),
                                 nullptr);
      });
      for (auto x : res) ASSERT_EQ(x, gradcompSuccess);
      gradcompStats_t st;
      ASSERT_EQ(gradcompGetStats(world.comm(0), &st), gradcompSuccess);
      bytes[elias] = st.bytesOnWire;
    }
    const double perElement = 8.0 * bytes[1] / ((N - 1) * (double)n);
    printf("[ elias ] allreduce bits=%d: %.3f bits/element on the wire vs %.3f fixed width\n", bits,
           perElement, 8.0 * bytes[0] / ((N - 1) * (double)n));
    EXPECT_LT(bytes[1], bytes[0]) << "bits=" << bits;
  }
}

}  // namespace
