// GPU Elias-coded QSGD: the sizes/scan/write kernels give the host
// reference's bytes and residual, and the decoder its values, for every code,
// scale, level count, input type and awkward count; misaligned pointers;
// corrupt input stays in bounds.
#include <gtest/gtest.h>
#include <math.h>
#include <string.h>

#include <vector>

#include "gradcomp.h"
#include "gradcomp/elias.h"
#include "codecs/elias.h"
#include "codecs/qsgd.h"
#include "kernels/common_math.cuh"
#include "kernels/elias_math.cuh"
#include "tests/common/test_util.h"
#include "tests/gpu/gpu_util.h"

namespace {

using gctest::DeviceBuffer;

class EliasGpu : public gctest::GpuTest {};

gradcompEliasParams_t params(int s, int d, gradcompEliasCode_t c, gradcompEliasScale_t sc) {
  gradcompEliasParams_t p;
  p.levels = s;
  p.bucketSize = d;
  p.code = c;
  p.scale = sc;
  return p;
}

std::vector<uint16_t> narrow(const std::vector<float>& x, ncclDataType_t t) {
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    h[i] = t == ncclFloat16 ? gc::floatToHalf(x[i]) : gc::floatToBf16(x[i]);
  }
  return h;
}

// The host encoding of fp32 x without a residual, cut to its length.
std::vector<uint8_t> encodeOnHost(const std::vector<float>& x, const gradcompEliasParams_t& p,
                                  uint64_t seed) {
  const size_t maxBytes = gradcompEliasMaxEncodedBytes(x.size(), &p);
  std::vector<uint8_t> enc(maxBytes);
  size_t bytes = 0;
  EXPECT_EQ(gradcompEliasEncodeHost(x.data(), ncclFloat32, nullptr, x.size(), &p, seed, enc.data(),
                                    maxBytes, &bytes),
            gradcompSuccess)
      << gradcompGetLastError();
  enc.resize(bytes);
  return enc;
}

// Encodes on host and device, compares bytes, residuals and decodes.
void checkOne(cudaStream_t stream, ncclDataType_t t, size_t n, const gradcompEliasParams_t& p,
              bool withResidual, std::vector<float> x, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "type=" << t << " n=" << n << " s=" << p.levels
                                  << " d=" << p.bucketSize << " code=" << p.code
                                  << " scale=" << p.scale << " ef=" << withResidual);
  std::vector<uint16_t> h = narrow(x, t);
  const void* hostIn = t == ncclFloat32 ? (const void*)x.data() : (const void*)h.data();
  const size_t esz = t == ncclFloat32 ? 4 : 2;
  std::vector<float> r = gctest::normal(n, 99, 0.1f), rHost = r;
  const size_t maxBytes = gradcompEliasMaxEncodedBytes(n, &p);
  ASSERT_GT(maxBytes, 0u);
  std::vector<uint8_t> encHost(maxBytes);
  size_t hostBytes = 0;
  ASSERT_EQ(gradcompEliasEncodeHost(hostIn, t, withResidual ? rHost.data() : nullptr, n, &p, seed,
                                    encHost.data(), maxBytes, &hostBytes),
            gradcompSuccess)
      << gradcompGetLastError();

  size_t wsBytes = 0;
  ASSERT_EQ(gradcompEliasWorkspaceBytes(n, p.bucketSize, &wsBytes), gradcompSuccess);
  DeviceBuffer<uint8_t> dx(n * esz), denc(maxBytes), dws(wsBytes + 1);
  DeviceBuffer<float> dr(n), dout(n);
  ASSERT_EQ(cudaMemset(denc.get(), 0xA5, maxBytes), cudaSuccess);  // stale bytes must not leak
  if (n) ASSERT_EQ(cudaMemcpy(dx.get(), hostIn, n * esz, cudaMemcpyHostToDevice), cudaSuccess);
  dr.upload(r);
  ASSERT_EQ(gradcompEliasEncode(dx.get(), t, withResidual ? dr.get() : nullptr, n, &p, seed,
                                denc.get(), dws.get(), wsBytes, stream),
            gradcompSuccess)
      << gradcompGetLastError();
  ASSERT_EQ(gradcompEliasDecode(denc.get(), n, &p, dout.get(), 0, stream), gradcompSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);

  auto encDev = denc.download(maxBytes);
  size_t devBytes = 0;
  ASSERT_EQ(gradcompEliasEncodedBytes(encDev.data(), n, p.bucketSize, &devBytes), gradcompSuccess);
  ASSERT_EQ(devBytes, hostBytes);
  ASSERT_EQ(memcmp(encDev.data(), encHost.data(), hostBytes), 0) << "encodings differ";
  if (withResidual) {
    auto rDev = dr.download(n);
    ASSERT_EQ(memcmp(rDev.data(), rHost.data(), n * 4), 0) << "residuals differ";
  }
  std::vector<float> decHost(n);
  ASSERT_EQ(gradcompEliasDecodeHost(encHost.data(), hostBytes, n, &p, decHost.data(), 0),
            gradcompSuccess);
  auto decDev = dout.download(n);
  ASSERT_EQ(memcmp(decDev.data(), decHost.data(), n * 4), 0) << "decodes differ";
}

// Nearest rounding (KeySpec::nearest): both passes of the device encode
// draw the host codec's levels, so bytes, residual and decode are the host's.
TEST_F(EliasGpu, NearestBitExactWithHost) {
  for (ncclDataType_t t : {ncclFloat32, ncclBfloat16}) {
    gc::DType dt = gc::DType::F32;
    ASSERT_EQ(gc::dtypeFromNccl(t, &dt), gradcompSuccess);
    for (gc::elias::Norm norm : {gc::elias::Norm::Max, gc::elias::Norm::L2}) {
      for (int s : {1, 7, 127}) {
        for (size_t n : {(size_t)1, (size_t)1000, (size_t)100003}) {
          SCOPED_TRACE(testing::Message()
                       << "type=" << t << " norm=" << (int)norm << " s=" << s << " n=" << n);
          const int d = s == 7 ? 96 : 512;
          const gc::elias::Params p{s, d, gc::elias::Code::Gamma, norm};
          const gradcompEliasParams_t pub =
              params(s, d, gradcompEliasGamma,
                     norm == gc::elias::Norm::Max ? gradcompEliasScaleMax : gradcompEliasScaleL2);
          std::vector<float> x = gctest::normal(n, 11 * n + s);
          std::vector<uint16_t> h = narrow(x, t);
          const void* hostIn = t == ncclFloat32 ? (const void*)x.data() : (const void*)h.data();
          const size_t esz = t == ncclFloat32 ? 4 : 2;
          std::vector<float> r = gctest::normal(n, 97, 0.1f), rHost = r;
          const size_t maxBytes = gradcompEliasMaxEncodedBytes(n, &pub);
          std::vector<uint32_t> encHost(maxBytes / 4 + 1);
          const size_t hostBytes =
              gc::host::eliasEncode(hostIn, dt, rHost.data(), n, p, 1, true, encHost.data());
          size_t wsBytes = 0;
          ASSERT_EQ(gradcompEliasWorkspaceBytes(n, d, &wsBytes), gradcompSuccess);
          DeviceBuffer<uint8_t> dx(n * esz), denc(maxBytes), dws(wsBytes + 1);
          DeviceBuffer<float> dr(n);
          ASSERT_EQ(cudaMemcpy(dx.get(), hostIn, n * esz, cudaMemcpyHostToDevice), cudaSuccess);
          dr.upload(r);
          gc::KeySpec k = gc::plainKey(555);  // another key: nearest draws nothing
          k.nearest = true;
          ASSERT_EQ(gc::cuda::eliasEncode(dx.get(), dt, dr.get(), n, p, k, denc.get(), dws.get(),
                                          wsBytes, stream),
                    cudaSuccess);
          ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
          auto encDev = denc.download(maxBytes);
          ASSERT_EQ(memcmp(encDev.data(), encHost.data(), hostBytes), 0) << "encodings differ";
          auto rDev = dr.download(n);
          ASSERT_EQ(memcmp(rDev.data(), rHost.data(), n * 4), 0) << "residuals differ";
        }
      }
    }
  }
}

TEST_F(EliasGpu, BitExactWithHostAcrossCodesScalesLevelsTypes) {
  const size_t counts[] = {1, 33, 512, 1000, 100003};
  for (gradcompEliasCode_t c : {gradcompEliasGamma, gradcompEliasOmega}) {
    for (gradcompEliasScale_t sc : {gradcompEliasScaleMax, gradcompEliasScaleL2}) {
      for (int s : {1, 3, 7, 22, 127, 65535}) {
        for (size_t n : counts) {
          const int d = s == 22 ? 8192 : (s == 3 ? 96 : 512);
          std::vector<float> x = gctest::normal(n, n + s);
          if (n > 700) std::fill(x.begin() + 100, x.begin() + 700, 0.0f);  // long zero runs
          if (n > 5000 && s == 7) x[5000] = NAN;
          checkOne(stream, ncclFloat32, n, params(s, d, c, sc), n % 2 == 1, x, 1234 + s);
        }
      }
    }
  }
  for (ncclDataType_t t : {ncclFloat16, ncclBfloat16}) {
    checkOne(stream, t, 70001, params(7, 512, gradcompEliasGamma, gradcompEliasScaleMax), true,
             gctest::normal(70001, 3), 5);
  }
}

// Inputs that fill the worst-case size, and all-zero buckets.
TEST_F(EliasGpu, WorstCaseAndZeroBuckets) {
  const size_t n = 3 * 8192 + 17;
  for (int s : {1, 127, 65535}) {
    checkOne(stream, ncclFloat32, n, params(s, 8192, gradcompEliasOmega, gradcompEliasScaleMax),
             false, std::vector<float>(n, -3.0f), 1);
    checkOne(stream, ncclFloat32, n, params(s, 32, gradcompEliasGamma, gradcompEliasScaleMax),
             false, std::vector<float>(n, 0.0f), 1);
    std::vector<float> alt(n, 0.0f);
    for (size_t i = 0; i < n; i += 2) alt[i] = 1.0f;
    checkOne(stream, ncclFloat32, n, params(s, 256, gradcompEliasGamma, gradcompEliasScaleL2), true,
             alt, 2);
  }
}

TEST_F(EliasGpu, MisalignedPointersAndAccumulate) {
  const size_t n = 50001;
  const auto p = params(15, 512, gradcompEliasGamma, gradcompEliasScaleMax);
  std::vector<float> x = gctest::normal(n, 5);
  const size_t maxBytes = gradcompEliasMaxEncodedBytes(n, &p);
  const std::vector<uint8_t> encHost = encodeOnHost(x, p, 8);
  const size_t bytes = encHost.size();
  std::vector<float> acc = gctest::normal(n, 6), accHost = acc;
  ASSERT_EQ(gradcompEliasDecodeHost(encHost.data(), bytes, n, &p, accHost.data(), 1),
            gradcompSuccess);
  size_t wsBytes = 0;
  ASSERT_EQ(gradcompEliasWorkspaceBytes(n, 512, &wsBytes), gradcompSuccess);
  DeviceBuffer<float> dx(n + 3), dacc(n + 3);
  DeviceBuffer<uint32_t> denc(maxBytes / 4 + 3);
  DeviceBuffer<uint8_t> dws(wsBytes + 256);
  dx.upload(x, 1);
  dacc.upload(acc, 3);
  ASSERT_EQ(gradcompEliasEncode(dx.get(1), ncclFloat32, nullptr, n, &p, 8, denc.get(1),
                                dws.get(256), wsBytes, stream),
            gradcompSuccess)
      << gradcompGetLastError();
  ASSERT_EQ(gradcompEliasDecode(denc.get(1), n, &p, dacc.get(3), 1, stream), gradcompSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  std::vector<uint8_t> encDev(bytes);
  ASSERT_EQ(cudaMemcpy(encDev.data(), denc.get(1), bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(encDev, encHost);
  auto accDev = dacc.download(n, 3);
  EXPECT_EQ(memcmp(accDev.data(), accHost.data(), n * 4), 0);
}

// A corrupt stream decodes to NaN from where it breaks and touches nothing
// outside the output (guard words around it stay intact).
TEST_F(EliasGpu, CorruptStreamStaysInBounds) {
  const size_t n = 4096;
  const auto p = params(7, 512, gradcompEliasOmega, gradcompEliasScaleMax);
  std::vector<float> x = gctest::normal(n, 12);
  std::vector<uint8_t> enc = encodeOnHost(x, p, 1);
  const size_t bytes = enc.size();
  const size_t header = gradcompEliasHeaderBytes(n, 512);
  for (size_t i = header; i < bytes; ++i) enc[i] = 0xFF;  // every code turns into garbage
  DeviceBuffer<uint8_t> denc(bytes);
  DeviceBuffer<float> dout(n + 64);
  ASSERT_EQ(cudaMemcpy(denc.get(), enc.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
  std::vector<float> guard(n + 64, 5.0f);
  dout.upload(guard);
  ASSERT_EQ(gradcompEliasDecode(denc.get(), n, &p, dout.get(), 0, stream), gradcompSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  auto out = dout.download(n + 64);
  size_t nans = 0;
  for (size_t i = 0; i < n; ++i) nans += isnan(out[i]) ? 1 : 0;
  EXPECT_GT(nans, 0u);
  for (size_t i = n; i < n + 64; ++i) ASSERT_EQ(out[i], 5.0f) << "wrote past the output at " << i;
}

// A scale with its sign bit set (no encoder writes one) makes its bucket NaN,
// where it would decode with every sign flipped; the other buckets decode as
// the host does.
TEST_F(EliasGpu, ScaleWithItsSignBitSetDecodesToNaN) {
  const size_t n = 256;
  const auto p = params(7, 64, gradcompEliasGamma, gradcompEliasScaleMax);
  std::vector<uint8_t> enc = encodeOnHost(gctest::normal(n, 6), p, 1);
  std::vector<float> ref(n);
  ASSERT_EQ(gradcompEliasDecodeHost(enc.data(), enc.size(), n, &p, ref.data(), 0), gradcompSuccess);
  const uint32_t negative = 0xbf800000u;  // -1.0
  memcpy(enc.data() + 4, &negative, 4);   // bucket 1's scale
  DeviceBuffer<uint8_t> denc(enc.size());
  denc.upload(enc);
  DeviceBuffer<float> dout(n);
  ASSERT_EQ(gradcompEliasDecode(denc.get(), n, &p, dout.get(), 0, stream), gradcompSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  const std::vector<float> out = dout.download(n);
  for (size_t i = 0; i < n; ++i) {
    if (i / 64 == 1) {
      EXPECT_TRUE(isnan(out[i])) << i << ": " << out[i];
    } else {
      EXPECT_EQ(out[i], ref[i]) << i;
    }
  }
}

// One bucket of 64 (gamma, 7 levels, max scale 1): 1 at elements 0 and 32,
// zeros after; its stream is 24 bits of codes, then the trailing zeros'
// terminator gamma(32) at bits 24..34, whose '1' (bit 29) lies in the first
// word and whose last three bits (zeros) in the second. The header is then
// cut to one stream word, and the word past it set to ones: the terminator
// runs past its bucket's span, a malformed encoding (its tail read as zeros
// would still give 32).
std::vector<uint8_t> truncatedTerminator(const gradcompEliasParams_t& p, size_t n) {
  std::vector<float> x(n, 0.0f);
  x[0] = x[32] = 1.0f;
  std::vector<uint8_t> enc = encodeOnHost(x, p, 1);
  EXPECT_EQ(enc.size(), 20u);  // scale, offsets {levels, 2}, two stream words
  enc.resize(20);
  uint32_t w[5];
  memcpy(w, enc.data(), sizeof(w));
  EXPECT_EQ(w[1], (uint32_t)p.levels);
  EXPECT_EQ(w[2], 2u);
  EXPECT_EQ(w[4], 0u);  // the terminator's last bits
  w[2] = 1;
  w[4] = 0xffffffffu;
  memcpy(enc.data(), w, sizeof(w));
  return enc;
}

TEST(EliasHost, TerminatorPastItsBucketIsRejected) {
  const auto p = params(7, 64, gradcompEliasGamma, gradcompEliasScaleMax);
  const std::vector<uint8_t> enc = truncatedTerminator(p, 64);
  std::vector<float> out(64);
  EXPECT_EQ(gradcompEliasDecodeHost(enc.data(), enc.size(), 64, &p, out.data(), 0),
            gradcompInvalidArgument);
}

// The GPU decoder on that encoding: the values before the terminator, then
// NaN from where it breaks (its trailing zeros), and nothing read past the
// span (the ones there would make other codes).
TEST_F(EliasGpu, TerminatorPastItsBucketDecodesToNaN) {
  const size_t n = 64;
  const auto p = params(7, 64, gradcompEliasGamma, gradcompEliasScaleMax);
  const std::vector<uint8_t> enc = truncatedTerminator(p, n);
  DeviceBuffer<uint8_t> denc(enc.size());
  denc.upload(enc);
  DeviceBuffer<float> dout(n + 16);
  dout.upload(std::vector<float>(n + 16, 5.0f));
  ASSERT_EQ(gradcompEliasDecode(denc.get(), n, &p, dout.get(), 0, stream), gradcompSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  const std::vector<float> out = dout.download(n + 16);
  for (size_t i = 0; i < 33; ++i) EXPECT_EQ(out[i], i % 32 == 0 ? 1.0f : 0.0f) << i;
  for (size_t i = 33; i < n; ++i) EXPECT_TRUE(isnan(out[i])) << i << ": " << out[i];
  for (size_t i = n; i < n + 16; ++i) ASSERT_EQ(out[i], 5.0f) << "wrote past the output at " << i;
}

// An encoding decoded with other levels than it records (offsets[0]) would
// scale every value by theirs / its: every bucket decodes to NaN (the GPU
// decoder does not sync to report it; the host decoder refuses it).
TEST_F(EliasGpu, OtherLevelsThanTheEncodingsDecodeToNaN) {
  const size_t n = 1000;
  const auto p = params(7, 64, gradcompEliasGamma, gradcompEliasScaleMax);
  const std::vector<uint8_t> enc = encodeOnHost(gctest::normal(n, 8), p, 1);
  DeviceBuffer<uint8_t> denc(enc.size());
  denc.upload(enc);
  for (int s : {7, 3, 15}) {
    const auto q = params(s, 64, gradcompEliasGamma, gradcompEliasScaleMax);
    DeviceBuffer<float> dout(n);
    dout.upload(std::vector<float>(n, 5.0f));
    ASSERT_EQ(gradcompEliasDecodeBounded(denc.get(), enc.size(), n, &q, dout.get(), 0, stream),
              gradcompSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const std::vector<float> out = dout.download(n);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(isnan(out[i]), s != 7) << "s=" << s << " i=" << i;
  }
}

// Pointers off their alignment are refused, naming the pointer, before any
// device call (so this runs without a GPU too): the kernels' fp32 and 32-bit
// accesses there would be a misaligned-address fault, which ends the CUDA
// context.
TEST(EliasApiArgs, PointersOffTheirAlignmentAreRefused) {
  alignas(16) static char buf[4096];
  const gradcompEliasParams_t p = params(7, 512, gradcompEliasGamma, gradcompEliasScaleMax);
  struct Case {
    const char* name;
    const void* x;
    ncclDataType_t t;
    float* residual;
    void* out;
    void* workspace;
  };
  float* aligned = reinterpret_cast<float*>(buf + 1024);
  const Case cases[] = {
      {"x=", buf + 1, ncclFloat16, nullptr, buf + 256, buf + 2048},
      {"residual=", buf, ncclFloat32, reinterpret_cast<float*>(buf + 1026), buf + 256, buf + 2048},
      {"out=", buf, ncclFloat32, aligned, buf + 258, buf + 2048},
      {"workspace=", buf, ncclBfloat16, aligned, buf + 256, buf + 2049},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(
        gradcompEliasEncode(c.x, c.t, c.residual, 64, &p, 1, c.out, c.workspace, 1024, nullptr),
        gradcompInvalidArgument)
        << c.name;
    EXPECT_NE(strstr(gradcompGetLastError(), c.name), nullptr) << gradcompGetLastError();
    EXPECT_NE(strstr(gradcompGetLastError(), "aligned"), nullptr) << gradcompGetLastError();
  }
  EXPECT_EQ(
      gradcompEliasDecode(buf + 256, 64, &p, reinterpret_cast<float*>(buf + 1025), 0, nullptr),
      gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "out="), nullptr) << gradcompGetLastError();
  EXPECT_EQ(gradcompEliasDecode(buf + 258, 64, &p, aligned, 0, nullptr), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "in="), nullptr) << gradcompGetLastError();
}

// The bounded decoder refuses a length shorter than the header (the scales
// and offsets it must read whole), naming both sizes, and misaligned
// pointers, all before any device call.
TEST(EliasApiArgs, BoundedDecodeRefusesALengthShorterThanTheHeader) {
  alignas(16) static char buf[4096];
  const gradcompEliasParams_t p = params(7, 512, gradcompEliasGamma, gradcompEliasScaleMax);
  float* out = reinterpret_cast<float*>(buf + 1024);
  const size_t n = 1000, header = gradcompEliasHeaderBytes(n, 512);  // 2 scales, 3 offsets
  ASSERT_EQ(header, 20u);
  EXPECT_EQ(gradcompEliasDecodeBounded(buf, header - 1, n, &p, out, 0, nullptr),
            gradcompInvalidArgument);
  const std::string why = gradcompGetLastError();
  EXPECT_NE(why.find("inBytes=19"), std::string::npos) << why;
  EXPECT_NE(why.find("20 bytes"), std::string::npos) << why;
  EXPECT_EQ(gradcompEliasDecodeBounded(buf + 2, 64, n, &p, out, 0, nullptr),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "in="), nullptr) << gradcompGetLastError();
  EXPECT_EQ(
      gradcompEliasDecodeBounded(buf, 64, n, &p, reinterpret_cast<float*>(buf + 1025), 0, nullptr),
      gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "out="), nullptr) << gradcompGetLastError();
  EXPECT_EQ(gradcompEliasDecodeBounded(buf, 0, 0, &p, out, 0, nullptr), gradcompSuccess)
      << "count 0 decodes nothing, whatever the length";
}

// The bounded decoder given the bytes as received: whole, it gives the host
// decoder's values; cut at the start of bucket 4's stream (the device buffer
// holding only those bytes), buckets 0..3 still decode exactly, 4..7 are NaN,
// and nothing is read past the cut (compute-sanitizer's memcheck runs this
// test) or written past the output.
TEST_F(EliasGpu, BoundedDecodeStopsAtTheCallersBytes) {
  const size_t n = 4096, d = 512, nb = n / d;
  const auto p = params(7, (int)d, gradcompEliasGamma, gradcompEliasScaleMax);
  const std::vector<float> x = gctest::normal(n, 21);
  const std::vector<uint8_t> enc = encodeOnHost(x, p, 3);
  const size_t header = gradcompEliasHeaderBytes(n, (int)d);
  std::vector<float> want(n);
  ASSERT_EQ(gradcompEliasDecodeHost(enc.data(), enc.size(), n, &p, want.data(), 0),
            gradcompSuccess);
  uint32_t o4 = 0;  // offsets[4], in stream words
  memcpy(&o4, enc.data() + nb * 4 + 4 * 4, 4);
  ASSERT_GT(o4, 0u);
  const size_t cut = header + 4 * (size_t)o4;
  ASSERT_LT(cut, enc.size());
  for (const size_t len : {enc.size(), cut}) {
    // No padding: under compute-sanitizer (gpu-check's memcheck step) a read
    // even one byte past the caller's length is an error.
    DeviceBuffer<uint8_t> denc(len, 0);
    ASSERT_EQ(cudaMemcpy(denc.get(), enc.data(), len, cudaMemcpyHostToDevice), cudaSuccess);
    DeviceBuffer<float> dout(n + 16);
    dout.upload(std::vector<float>(n + 16, 5.0f));
    ASSERT_EQ(gradcompEliasDecodeBounded(denc.get(), len, n, &p, dout.get(), 0, stream),
              gradcompSuccess)
        << gradcompGetLastError();
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const std::vector<float> out = dout.download(n + 16);
    const size_t exact = len == cut ? 4 * d : n;
    EXPECT_EQ(memcmp(out.data(), want.data(), exact * 4), 0) << "len " << len;
    for (size_t i = exact; i < n; ++i) ASSERT_TRUE(isnan(out[i])) << "len " << len << " at " << i;
    for (size_t i = n; i < n + 16; ++i) ASSERT_EQ(out[i], 5.0f) << "wrote past the output at " << i;
  }
}

TEST_F(EliasGpu, SmallWorkspaceIsRefusedWithAClearError) {
  const size_t n = 100000;
  const auto p = params(7, 512, gradcompEliasGamma, gradcompEliasScaleMax);
  DeviceBuffer<float> dx(n);
  DeviceBuffer<uint8_t> denc(gradcompEliasMaxEncodedBytes(n, &p)), dws(16);
  EXPECT_EQ(gradcompEliasEncode(dx.get(), ncclFloat32, nullptr, n, &p, 1, denc.get(), dws.get(), 16,
                                stream),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "gradcompEliasWorkspaceBytes"), nullptr);
}

}  // namespace
