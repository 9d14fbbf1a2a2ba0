// The host math rounds as the GPU's whatever the calling thread's floating-
// point setting (plugin/host_float_env.h): a thread that flushes subnormals
// (FTZ/DAZ, as torch.set_flush_denormal(True) or a library built with
// -ffast-math leaves it) encodes, reduces and decodes to the bits of one that
// does not, so the host codecs stay the GPU kernels' and the ranks of a CPU
// world agree whatever their threads' settings.
#include <gtest/gtest.h>
#include <stdint.h>
#include <string.h>

#include <vector>

#include "gradcomp.h"
#include "gradcomp/elias.h"
#include "gradcomp/reference.h"
#include "tests/common/cpu_world.h"

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

namespace {

#if defined(__SSE2__)
constexpr unsigned kFtzDaz = 0x8040u;  // MXCSR's flush-to-zero and denormals-are-zero

// The calling thread flushes subnormals for the scope of the object.
class ScopedFlushSubnormals {
 public:
  explicit ScopedFlushSubnormals(bool on) : saved_(_mm_getcsr()) {
    if (on) _mm_setcsr(saved_ | kFtzDaz);
  }
  ~ScopedFlushSubnormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
};

// Gradients of a layer whose values underflowed: every bucket holds fp32
// subnormals only, or subnormals beside small normals.
std::vector<float> tinyGradient(size_t n, uint32_t seed) {
  std::vector<float> g(n);
  uint32_t s = seed;
  for (size_t i = 0; i < n; ++i) {
    s = s * 1664525u + 1013904223u;
    const float u = (float)(s >> 8) / 16777216.0f - 0.5f;  // [-0.5, 0.5)
    g[i] = (i / 512) % 2 ? u * 1e-37f : u * 2e-38f;
  }
  return g;
}

struct Codec {
  std::vector<char> bytes;
  std::vector<float> decoded;
};

Codec encodeDecode(const std::vector<float>& x, bool flush) {
  ScopedFlushSubnormals env(flush);
  Codec c;
  c.bytes.resize(gradcompQsgdEncodedBytes(x.size(), 4, 512));
  c.decoded.resize(x.size());
  EXPECT_EQ(gradcompQsgdEncodeHost(x.data(), x.size(), 4, 512, 11, c.bytes.data()),
            gradcompSuccess);
  EXPECT_EQ(gradcompQsgdDecodeHost(c.bytes.data(), x.size(), 4, 512, c.decoded.data(), 0),
            gradcompSuccess);
  // The caller's setting is back.
  EXPECT_EQ(_mm_getcsr() & kFtzDaz, flush ? kFtzDaz : 0u);
  return c;
}

// The Elias host codec the same way: its encoding (with error feedback) and
// its decode, on a thread that flushes subnormals or not.
gradcompEliasParams_t eliasParams() {
  gradcompEliasParams_t p;
  p.levels = 15;
  p.bucketSize = 512;
  p.code = gradcompEliasGamma;
  p.scale = gradcompEliasScaleL2;
  return p;
}

struct EliasCodec {
  std::vector<char> bytes;
  std::vector<float> residual, decoded;
};

EliasCodec eliasEncodeDecode(const std::vector<float>& x, bool flush) {
  EliasCodec c;
  // The residual (tiny too) is made before the thread flushes.
  c.residual.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) c.residual[i] = x[(i * 7) % x.size()];
  ScopedFlushSubnormals env(flush);
  const gradcompEliasParams_t p = eliasParams();
  c.bytes.resize(gradcompEliasMaxEncodedBytes(x.size(), &p));
  c.decoded.resize(x.size());
  size_t used = 0;
  EXPECT_EQ(gradcompEliasEncodeHost(x.data(), ncclFloat32, c.residual.data(), x.size(), &p, 11,
                                    c.bytes.data(), c.bytes.size(), &used),
            gradcompSuccess)
      << gradcompGetLastError();
  c.bytes.resize(used);
  EXPECT_EQ(gradcompEliasDecodeHost(c.bytes.data(), used, x.size(), &p, c.decoded.data(), 0),
            gradcompSuccess)
      << gradcompGetLastError();
  EXPECT_EQ(_mm_getcsr() & kFtzDaz, flush ? kFtzDaz : 0u);
  return c;
}

// Three in-place allreduces on a CPU world whose rank threads flush
// subnormals where flush[rank]; every rank's output of every step.
std::vector<std::vector<float>> allReduces(gradcompConfig_t cfg, const std::vector<bool>& flush) {
  const int N = (int)flush.size();
  const size_t n = 4099;
  gctest::CpuWorld world(N, cfg);
  std::vector<std::vector<float>> out(N), bufs(N, std::vector<float>(n));
  for (int step = 0; step < 3; ++step) {
    // The same buffers every step: their residuals follow their addresses.
    for (int r = 0; r < N; ++r) {
      const std::vector<float> g = tinyGradient(n, 7919u * (uint32_t)step + (uint32_t)r);
      bufs[r].assign(g.begin(), g.end());
    }
    auto res = world.run([&](int r) {
      ScopedFlushSubnormals env(flush[r]);
      return gradcompAllReduce(bufs[r].data(), bufs[r].data(), n, ncclFloat32, ncclSum,
                               world.comm(r), nullptr);
    });
    for (int r = 0; r < N; ++r) {
      EXPECT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
      out[r].insert(out[r].end(), bufs[r].begin(), bufs[r].end());
    }
  }
  return out;
}

bool sameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}
#endif

TEST(HostFloatEnv, ReferenceCodecIgnoresAThreadThatFlushesSubnormals) {
#if defined(__SSE2__)
  const std::vector<float> x = tinyGradient(4096, 3);
  const Codec ieee = encodeDecode(x, false), flushed = encodeDecode(x, true);
  EXPECT_TRUE(ieee.bytes == flushed.bytes) << "the encoding differs";
  EXPECT_TRUE(sameBits(ieee.decoded, flushed.decoded));
#else
  GTEST_SKIP() << "the flush setting tested is SSE's MXCSR";
#endif
}

TEST(HostFloatEnv, EliasHostCodecIgnoresAThreadThatFlushesSubnormals) {
#if defined(__SSE2__)
  const std::vector<float> x = tinyGradient(4096, 5);
  const EliasCodec ieee = eliasEncodeDecode(x, false), flushed = eliasEncodeDecode(x, true);
  EXPECT_TRUE(ieee.bytes == flushed.bytes) << "the encoding differs";
  EXPECT_TRUE(sameBits(ieee.residual, flushed.residual)) << "the residual differs";
  EXPECT_TRUE(sameBits(ieee.decoded, flushed.decoded)) << "the decode differs";
  // The decode alone: the IEEE thread's encoding decoded on a flushing thread.
  std::vector<float> out(x.size());
  {
    ScopedFlushSubnormals env(true);
    const gradcompEliasParams_t p = eliasParams();
    ASSERT_EQ(
        gradcompEliasDecodeHost(ieee.bytes.data(), ieee.bytes.size(), x.size(), &p, out.data(), 0),
        gradcompSuccess);
  }
  EXPECT_TRUE(sameBits(out, ieee.decoded)) << "the decode on a flushing thread differs";
#else
  GTEST_SKIP() << "the flush setting tested is SSE's MXCSR";
#endif
}

TEST(HostFloatEnv, CpuWorldRanksThatFlushSubnormalsGetTheDefaultBits) {
#if defined(__SSE2__)
  for (gradcompMethod_t method : {gradcompMethodQsgd, gradcompMethodRandk}) {
    SCOPED_TRACE(testing::Message() << "method=" << method);
    gradcompConfig_t cfg;
    ASSERT_EQ(gradcompConfigInit(&cfg), gradcompSuccess);
    cfg.method = method;
    cfg.algo = method == gradcompMethodQsgd ? gradcompAlgoAllgather : gradcompAlgoAuto;
    cfg.minElements = 0;
    cfg.autoTune = 0;
    cfg.density = 0.1f;
    const auto want = allReduces(cfg, {false, false, false, false});
    for (const std::vector<bool>& flush : {std::vector<bool>{false, true, false, false},
                                           std::vector<bool>{true, true, true, true}}) {
      const auto got = allReduces(cfg, flush);
      for (int r = 0; r < 4; ++r) {
        EXPECT_TRUE(sameBits(got[r], want[0]))
            << "rank " << r << " (flushing: " << flush[r] << ") differs from a world that "
            << "keeps subnormals";
      }
    }
  }
#else
  GTEST_SKIP() << "the flush setting tested is SSE's MXCSR";
#endif
}

}  // namespace
