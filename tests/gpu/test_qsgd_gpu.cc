// GPU QSGD kernels: bit-exact against the host reference for every bit width
// and input type, on misaligned pointers, and under CUDA-graph capture.
#include <gtest/gtest.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "gradcomp.h"
#include "gradcomp/reference.h"
#include "backends/backend.h"
#include "codecs/qsgd.h"
#include "kernels/common_math.cuh"
#include "kernels/qsgd_math.cuh"
#include "tests/common/ref_algos.h"
#include "tests/common/test_util.h"
#include "tests/gpu/gpu_util.h"

namespace {

using gctest::DeviceBuffer;

class QsgdGpu : public gctest::GpuTest {};

std::vector<uint16_t> narrow(const std::vector<float>& x, ncclDataType_t t) {
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    h[i] = t == ncclFloat16 ? gc::floatToHalf(x[i]) : gc::floatToBf16(x[i]);
  }
  return h;
}

TEST_F(QsgdGpu, EncodeEFAndDecodeBitExactAllBitsAndTypes) {
  const size_t counts[] = {1, 33, 512, 1000, 100003};
  for (ncclDataType_t t : {ncclFloat32, ncclFloat16, ncclBfloat16}) {
    for (int bits = 2; bits <= 8; ++bits) {
      for (size_t n : counts) {
        for (int withResidual = 0; withResidual <= 1; ++withResidual) {
          SCOPED_TRACE(testing::Message()
                       << "type=" << t << " bits=" << bits << " n=" << n << " ef=" << withResidual);
          // Every encode path: the block path (96) and each warp-path width.
          const int d = bits == 3 ? 96 : bits == 2 ? 128 : bits == 6 ? 1024 : bits == 7 ? 256 : 512;
          std::vector<float> x = gctest::normal(n, n + bits);
          if (n > 600) x[600] = bits == 5 ? NAN : x[600];
          std::vector<uint16_t> h = narrow(x, t);
          const void* hostIn = t == ncclFloat32 ? (const void*)x.data() : (const void*)h.data();
          std::vector<float> r = gctest::normal(n, 99, 0.1f);
          std::vector<float> rHost = r;
          const size_t bytes = gradcompQsgdEncodedBytes(n, bits, d);
          std::vector<uint8_t> encHost(bytes);
          ASSERT_EQ(gradcompQsgdEncodeTypedHost(hostIn, t, withResidual ? rHost.data() : nullptr, n,
                                                bits, d, 1234, encHost.data()),
                    gradcompSuccess);

          const size_t esz = t == ncclFloat32 ? 4 : 2;
          DeviceBuffer<uint8_t> dx(n * esz), denc(bytes);
          DeviceBuffer<float> dr(n), dout(n);
          ASSERT_EQ(cudaMemcpy(dx.get(), hostIn, n * esz, cudaMemcpyHostToDevice), cudaSuccess);
          dr.upload(r);
          ASSERT_EQ(gradcompQsgdEncodeEF(dx.get(), t, withResidual ? dr.get() : nullptr, n, bits, d,
                                         1234, denc.get(), stream),
                    gradcompSuccess)
              << gradcompGetLastError();
          ASSERT_EQ(gradcompQsgdDecode(denc.get(), n, bits, d, dout.get(), 0, stream),
                    gradcompSuccess);
          ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
          ASSERT_EQ(denc.download(bytes), encHost);
          if (withResidual) {
            auto rDev = dr.download(n);
            ASSERT_EQ(memcmp(rDev.data(), rHost.data(), n * 4), 0);
          }
          std::vector<float> decHost(n);
          ASSERT_EQ(gradcompQsgdDecodeHost(encHost.data(), n, bits, d, decHost.data(), 0),
                    gradcompSuccess);
          auto decDev = dout.download(n);
          ASSERT_EQ(memcmp(decDev.data(), decHost.data(), n * 4), 0);
        }
      }
    }
  }
}

// Nearest rounding (KeySpec::nearest, GRADCOMP_ROUNDING=nearest): every
// encode path (block path at 96, each warp-path width) gives the host
// codec's bytes and residual and the serial rule's bytes, whatever the key.
TEST_F(QsgdGpu, NearestEncodeBitExactWithHostEveryPath) {
  const size_t counts[] = {1, 33, 1000, 100003};
  for (ncclDataType_t t : {ncclFloat32, ncclFloat16, ncclBfloat16}) {
    gc::DType dt = gc::DType::F32;
    ASSERT_EQ(gc::dtypeFromNccl(t, &dt), gradcompSuccess);
    for (int bits = 2; bits <= 8; ++bits) {
      for (size_t n : counts) {
        for (int withResidual = 0; withResidual <= 1; ++withResidual) {
          const int d = bits == 3 ? 96 : bits == 2 ? 128 : bits == 6 ? 1024 : bits == 7 ? 256 : 512;
          SCOPED_TRACE(testing::Message() << "type=" << t << " bits=" << bits << " d=" << d
                                          << " n=" << n << " ef=" << withResidual);
          std::vector<float> x = gctest::normal(n, 3 * n + bits);
          // Half-level ties where the bucket max is s (r = |x| there).
          const int s = gc::qsgd::levels(bits);
          for (size_t i = 0; i < n; ++i) x[i] = fmaxf(-(float)s, fminf((float)s, x[i] * s / 3));
          if (n > 40) x[0] = (float)s, x[1] = 0.5f, x[2] = -1.5f, x[3] = (float)s - 0.5f;
          std::vector<uint16_t> h = narrow(x, t);
          const void* hostIn = t == ncclFloat32 ? (const void*)x.data() : (const void*)h.data();
          std::vector<float> r = gctest::normal(n, 98, 0.1f), rHost = r, rRef = r;
          const size_t bytes = gradcompQsgdEncodedBytes(n, bits, d);
          std::vector<uint8_t> encHost(bytes), encRef(bytes);
          gc::host::qsgdEncode(hostIn, dt, withResidual ? rHost.data() : nullptr, n, bits, d, 1234,
                               true, false, encHost.data());
          gctest::ref::encNearest(hostIn, dt, withResidual ? rRef.data() : nullptr, n, bits, d,
                                  encRef.data());
          ASSERT_EQ(encHost, encRef) << "host codec against the rule";

          const size_t esz = t == ncclFloat32 ? 4 : 2;
          DeviceBuffer<uint8_t> dx(n * esz), denc(bytes);
          DeviceBuffer<float> dr(n);
          ASSERT_EQ(cudaMemcpy(dx.get(), hostIn, n * esz, cudaMemcpyHostToDevice), cudaSuccess);
          dr.upload(r);
          gc::KeySpec k = gc::plainKey(987654321);  // another key: nearest draws nothing
          k.nearest = true;
          ASSERT_EQ(gc::cuda::qsgdEncode(dx.get(), dt, withResidual ? dr.get() : nullptr, n, bits,
                                         d, k, denc.get(), stream),
                    cudaSuccess);
          ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
          ASSERT_EQ(denc.download(bytes), encHost);
          if (withResidual) {
            auto rDev = dr.download(n);
            ASSERT_EQ(memcmp(rDev.data(), rHost.data(), n * 4), 0);
          }
        }
      }
    }
  }
}

// Square levels (GRADCOMP_LEVELS=square), both roundings: every encode path
// (block path at 96, each warp-path width) gives the
// serial rule's bytes (ref::encSquare) and residual, with buckets that are
// not plain (zero, NaN, subnormal); the decode kernels (warp and block path)
// give the host decode's values of a stream of marked and unmarked buckets.
TEST_F(QsgdGpu, SquareLevelsBitExactWithTheRuleEveryPath) {
  for (ncclDataType_t t : {ncclFloat32, ncclBfloat16}) {
    gc::DType dt = gc::DType::F32;
    ASSERT_EQ(gc::dtypeFromNccl(t, &dt), gradcompSuccess);
    const size_t esz = t == ncclFloat32 ? 4 : 2;
    for (int d : {96, 128, 256, 512, 1024}) {
      for (int bits : {2, 3, 4, 8}) {
        for (size_t n : {(size_t)1, (size_t)1000, (size_t)100003}) {
          for (int nearest = 0; nearest <= 1; ++nearest) {
            for (int ef = 0; ef <= 1; ++ef) {
              SCOPED_TRACE(testing::Message()
                           << "type=" << t << " d=" << d << " bits=" << bits << " n=" << n
                           << " nearest=" << nearest << " ef=" << ef);
              std::vector<float> x = gctest::normal(n, 5 * n + bits + d);
              if (n > 4 * (size_t)d) {
                std::fill(x.begin(), x.begin() + d, 0.0f);
                x[d + 1] = NAN;
                for (size_t i = 2 * (size_t)d; i < 3 * (size_t)d; ++i) x[i] *= 1e-42f;
              }
              std::vector<uint16_t> h = narrow(x, t);
              const void* hostIn = t == ncclFloat32 ? (const void*)x.data() : (const void*)h.data();
              const std::vector<float> r0 = gctest::normal(n, 77, 0.1f);
              std::vector<float> rRef = r0;
              const size_t bytes = gradcompQsgdEncodedBytes(n, bits, d);
              std::vector<uint8_t> want(bytes);
              gctest::ref::encSquare(hostIn, dt, ef ? rRef.data() : nullptr, n, bits, d, 4242,
                                     nearest != 0, want.data());
              DeviceBuffer<uint8_t> dx(n * esz), denc(bytes);
              DeviceBuffer<float> dr(n), dout(n);
              ASSERT_EQ(cudaMemcpy(dx.get(), hostIn, n * esz, cudaMemcpyHostToDevice), cudaSuccess);
              gc::KeySpec k = gc::plainKey(4242);
              k.nearest = nearest != 0;
              k.square = true;
              dr.upload(r0);
              ASSERT_EQ(gc::cuda::qsgdEncode(dx.get(), dt, ef ? dr.get() : nullptr, n, bits, d, k,
                                             denc.get(), stream),
                        cudaSuccess);
              ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
              ASSERT_EQ(denc.download(bytes), want);
              if (ef) {
                const std::vector<float> rDev = dr.download(n);
                ASSERT_EQ(memcmp(rDev.data(), rRef.data(), n * 4), 0);
              }
              std::vector<float> hostOut(n);
              ASSERT_EQ(gradcompQsgdDecodeHost(want.data(), n, bits, d, hostOut.data(), 0),
                        gradcompSuccess);
              ASSERT_EQ(gc::cuda::qsgdDecode(denc.get(), n, bits, d, dout.get(), false, stream),
                        cudaSuccess);
              ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
              const std::vector<float> devOut = dout.download(n);
              ASSERT_EQ(memcmp(devOut.data(), hostOut.data(), n * 4), 0);
            }
          }
        }
      }
    }
  }
}

// The warp paths' plain buckets (a per-warp table of every code's value: the
// decode's whole, aligned, finite buckets and the encode's residual) against
// the host codec, every combination the tests above leave out: every width
// 2..8 at every warp bucket (128 to 1024), uniform and square levels, both
// roundings, decode overwrite and accumulate into an aligned output (the
// plain path) and a misaligned one (the general path), normal data in whole
// buckets and a tail.
TEST_F(QsgdGpu, PlainBucketTablesEveryWidthBucketAndLevelsAsOnTheHost) {
  for (gradcompLevels_t levels : {gradcompLevelsUniform, gradcompLevelsSquare}) {
    for (int d : {128, 256, 512, 1024}) {
      for (int bits = 2; bits <= 8; ++bits) {
        for (int nearest = 0; nearest <= 1; ++nearest) {
          SCOPED_TRACE(testing::Message() << "levels=" << levels << " d=" << d << " bits=" << bits
                                          << " nearest=" << nearest);
          // More buckets than an H200's resident warps at buckets of 128 and
          // 512 (132 SMs x 5 blocks x 4 warps = 2640), so blocks run in waves.
          const size_t n = (size_t)d * (d == 128 || d == 512 ? 6000 : 300) + 37;
          const std::vector<float> x = gctest::normal(n, 3 * d + bits, 2.0f);
          const std::vector<float> r0 = gctest::normal(n, 9 + bits, 0.1f);
          const gradcompRounding_t rounding =
              nearest ? gradcompRoundNearest : gradcompRoundStochastic;
          const size_t bytes = gradcompQsgdEncodedBytes(n, bits, d);
          std::vector<float> rHost = r0;
          std::vector<uint8_t> encHost(bytes);
          ASSERT_EQ(gradcompQsgdEncodeEFLevelsHost(x.data(), ncclFloat32, rHost.data(), n, bits, d,
                                                   777, rounding, levels, encHost.data()),
                    gradcompSuccess)
              << gradcompGetLastError();
          DeviceBuffer<float> dx(n), dr(n), dout(n + 4);
          DeviceBuffer<uint8_t> denc(bytes);
          dx.upload(x);
          gc::KeySpec k = gc::plainKey(777);
          k.nearest = nearest != 0;
          k.square = levels == gradcompLevelsSquare;
          dr.upload(r0);
          ASSERT_EQ(gc::cuda::qsgdEncode(dx.get(), gc::DType::F32, dr.get(), n, bits, d, k,
                                         denc.get(), stream),
                    cudaSuccess);
          ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
          ASSERT_EQ(denc.download(bytes), encHost);
          const std::vector<float> rDev = dr.download(n);
          ASSERT_EQ(memcmp(rDev.data(), rHost.data(), n * 4), 0);
          const std::vector<float> acc0 = gctest::normal(n, 21 + bits);
          for (int accumulate = 0; accumulate <= 1; ++accumulate) {
            std::vector<float> want = acc0;
            ASSERT_EQ(gradcompQsgdDecodeHost(encHost.data(), n, bits, d, want.data(), accumulate),
                      gradcompSuccess);
            for (size_t off : {(size_t)0, (size_t)1}) {  // aligned: plain path; misaligned: general
              dout.upload(acc0, off);
              ASSERT_EQ(
                  gradcompQsgdDecode(denc.get(), n, bits, d, dout.get(off), accumulate, stream),
                  gradcompSuccess);
              ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
              const std::vector<float> got = dout.download(n, off);
              ASSERT_EQ(memcmp(got.data(), want.data(), n * 4), 0)
                  << "accumulate=" << accumulate << " offset=" << off;
            }
          }
        }
      }
    }
  }
}

// The public gradcompQsgdEncodeEFRounding (what gradcomp_perf and
// gradcomp_kernels_perf time for rows run with GRADCOMP_ROUNDING=nearest)
// against its host twin gradcompQsgdEncodeEFRoundingHost: the same bytes and
// residual for both roundings, every encode path, seeds the nearest rule
// does not read.
TEST_F(QsgdGpu, EncodeEFRoundingBitExactWithHostEntryPoint) {
  const size_t counts[] = {1, 1000, 100003};
  for (ncclDataType_t t : {ncclFloat32, ncclFloat16, ncclBfloat16}) {
    for (int bits : {2, 3, 4, 8}) {
      for (size_t n : counts) {
        for (int withResidual = 0; withResidual <= 1; ++withResidual) {
          for (gradcompRounding_t rounding : {gradcompRoundStochastic, gradcompRoundNearest}) {
            const int d = bits == 3 ? 96 : bits == 2 ? 128 : 512;
            SCOPED_TRACE(testing::Message() << "type=" << t << " bits=" << bits << " n=" << n
                                            << " ef=" << withResidual << " rounding=" << rounding);
            std::vector<float> x = gctest::normal(n, 5 * n + bits);
            std::vector<uint16_t> h = narrow(x, t);
            const void* hostIn = t == ncclFloat32 ? (const void*)x.data() : (const void*)h.data();
            std::vector<float> r = gctest::normal(n, 97, 0.1f), rHost = r;
            const size_t bytes = gradcompQsgdEncodedBytes(n, bits, d);
            std::vector<uint8_t> encHost(bytes);
            ASSERT_EQ(
                gradcompQsgdEncodeEFRoundingHost(hostIn, t, withResidual ? rHost.data() : nullptr,
                                                 n, bits, d, 4321, rounding, encHost.data()),
                gradcompSuccess)
                << gradcompGetLastError();
            const size_t esz = t == ncclFloat32 ? 4 : 2;
            DeviceBuffer<uint8_t> dx(n * esz), denc(bytes);
            DeviceBuffer<float> dr(n);
            ASSERT_EQ(cudaMemcpy(dx.get(), hostIn, n * esz, cudaMemcpyHostToDevice), cudaSuccess);
            dr.upload(r);
            ASSERT_EQ(gradcompQsgdEncodeEFRounding(dx.get(), t, withResidual ? dr.get() : nullptr,
                                                   n, bits, d, 4321, rounding, denc.get(), stream),
                      gradcompSuccess)
                << gradcompGetLastError();
            ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
            ASSERT_EQ(denc.download(bytes), encHost);
            if (withResidual) {
              auto rDev = dr.download(n);
              ASSERT_EQ(memcmp(rDev.data(), rHost.data(), n * 4), 0);
            }
          }
        }
      }
    }
  }
}

// The block-path decode runs a grid of at most 132 * 32 blocks of 256
// threads and strides over the rest, and the block encode one block per
// bucket: a count past 132 * 32 * 256 = 1081344 takes each thread round the
// decode loop more than once (the other tests stay below it). Bucket 96 (an
// odd number of words per bucket at 3 bits), 2048 and the range's ends, 32
// (a one-warp block) and 8192 (the most shared memory), with and without
// accumulation, bit for bit against the host codec.
TEST_F(QsgdGpu, BlockPathPastItsDecodeGrid) {
  const size_t n = 2 * 132 * 32 * 256 + 12345;
  std::vector<float> x = gctest::normal(n, 17), acc0 = gctest::normal(n, 18);
  std::vector<float> r = gctest::normal(n, 19, 0.1f);
  DeviceBuffer<float> dx(n), dr(n), dout(n);
  dx.upload(x);
  for (int d : {32, 96, 2048, 8192}) {
    for (int bits : {3, 8}) {
      SCOPED_TRACE(testing::Message() << "bucket=" << d << " bits=" << bits);
      const size_t bytes = gradcompQsgdEncodedBytes(n, bits, d);
      std::vector<float> rHost = r;
      std::vector<uint8_t> encHost(bytes);
      ASSERT_EQ(gradcompQsgdEncodeTypedHost(x.data(), ncclFloat32, rHost.data(), n, bits, d, 77,
                                            encHost.data()),
                gradcompSuccess);
      DeviceBuffer<uint8_t> denc(bytes);
      dr.upload(r);
      ASSERT_EQ(
          gradcompQsgdEncodeEF(dx.get(), ncclFloat32, dr.get(), n, bits, d, 77, denc.get(), stream),
          gradcompSuccess)
          << gradcompGetLastError();
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      ASSERT_EQ(denc.download(bytes), encHost);
      auto rDev = dr.download(n);
      ASSERT_EQ(memcmp(rDev.data(), rHost.data(), n * 4), 0);
      for (int accumulate = 0; accumulate <= 1; ++accumulate) {
        std::vector<float> decHost = acc0;
        ASSERT_EQ(gradcompQsgdDecodeHost(encHost.data(), n, bits, d, decHost.data(), accumulate),
                  gradcompSuccess);
        dout.upload(acc0);
        ASSERT_EQ(gradcompQsgdDecode(denc.get(), n, bits, d, dout.get(), accumulate, stream),
                  gradcompSuccess);
        ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
        auto decDev = dout.download(n);
        ASSERT_EQ(memcmp(decDev.data(), decHost.data(), n * 4), 0) << "accumulate=" << accumulate;
      }
    }
  }
}

// Pipelined calls encode a chunk piece by piece (whole buckets, the last one
// short) with KeySpec::offset = the piece's first element: every piece, on
// the block path (96) and each warp path, decodes to the slice of the whole
// encode, leaves the same residual, and is the host codec's bytes.
TEST_F(QsgdGpu, OffsetEncodeEqualsSliceOfWholeEncode) {
  const uint64_t key = 0x5eedull;
  for (ncclDataType_t t : {ncclFloat32, ncclFloat16, ncclBfloat16}) {
    for (int d : {96, 128, 256, 512, 1024}) {
      for (int bits : {3, 4, 8}) {
        SCOPED_TRACE(testing::Message() << "type=" << t << " d=" << d << " bits=" << bits);
        const size_t n = 9 * (size_t)d + 77, esz = t == ncclFloat32 ? 4 : 2;
        std::vector<float> x = gctest::normal(n, d + bits);
        std::vector<uint16_t> h = narrow(x, t);
        const char* hostIn = t == ncclFloat32 ? (const char*)x.data() : (const char*)h.data();
        const std::vector<float> r0 = gctest::normal(n, 7, 0.1f);
        const size_t bytes = gradcompQsgdEncodedBytes(n, bits, d);
        DeviceBuffer<uint8_t> dx(n * esz), dwhole(bytes), dpiece(bytes);
        DeviceBuffer<float> drWhole(n), drPiece(n), dout(n);
        ASSERT_EQ(cudaMemcpy(dx.get(), hostIn, n * esz, cudaMemcpyHostToDevice), cudaSuccess);
        drWhole.upload(r0);
        drPiece.upload(r0);
        ASSERT_EQ(
            gradcompQsgdEncodeEF(dx.get(), t, drWhole.get(), n, bits, d, key, dwhole.get(), stream),
            gradcompSuccess)
            << gradcompGetLastError();
        ASSERT_EQ(gradcompQsgdDecode(dwhole.get(), n, bits, d, dout.get(), 0, stream),
                  gradcompSuccess);
        ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
        const std::vector<float> whole = dout.download(n);
        size_t o = 0;
        for (size_t q = 0; o < n; ++q) {
          const size_t len = std::min(n - o, (size_t)d * (1 + q % 3));
          gc::KeySpec k = gc::plainKey(key);
          k.offset = o;
          const uint64_t pieceKey = gc::resolveKey(k);
          const size_t pb = gradcompQsgdEncodedBytes(len, bits, d);
          ASSERT_EQ(gradcompQsgdEncodeEF(dx.get() + o * esz, t, drPiece.get() + o, len, bits, d,
                                         pieceKey, dpiece.get(), stream),
                    gradcompSuccess)
              << gradcompGetLastError();
          ASSERT_EQ(gradcompQsgdDecode(dpiece.get(), len, bits, d, dout.get(), 0, stream),
                    gradcompSuccess);
          ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
          const std::vector<float> got = dout.download(len);
          ASSERT_EQ(memcmp(got.data(), whole.data() + o, len * 4), 0) << "piece at " << o;
          std::vector<float> rHost(r0.begin() + o, r0.begin() + o + len);
          std::vector<uint8_t> encHost(pb);
          ASSERT_EQ(gradcompQsgdEncodeTypedHost(hostIn + o * esz, t, rHost.data(), len, bits, d,
                                                pieceKey, encHost.data()),
                    gradcompSuccess);
          ASSERT_EQ(dpiece.download(pb), encHost) << "piece at " << o;
          o += len;
        }
        const std::vector<float> rw = drWhole.download(n), rp = drPiece.download(n);
        ASSERT_EQ(memcmp(rw.data(), rp.data(), n * 4), 0);
      }
    }
  }
}

// A batch of encodes (cuda::qsgdEncodeBatch, one launch per 16 segments on
// the warp path) gives each segment the host codec's bytes and residual
// under the batch's key with that segment's stream: segments of every length
// kind (empty, one element, a partial bucket, whole buckets, a tail, longer
// than the rest), each input and residual 16-element aligned but every
// third one element off, 21 of them (19 not empty: two launches of 16 and
// 3) and the first 19 (17 not empty: 16, then one single launch), every
// bucket path, widths 2, 3 (codes straddling words), 4 and 8, both
// roundings, both level kinds, with and without error feedback. A segment
// drawing another's stream, or a block reading the wrong segment, changes
// the bytes.
TEST_F(QsgdGpu, BatchedEncodeGivesEachSegmentItsOwnEncode) {
  const size_t lens[] = {0,    1,   300, 1024, 2048 + 77, 4096, 9000, 512,  33,   1536, 0,
                         5000, 128, 700, 2,    4096 + 5,  1023, 257,  6144, 3000, 640};
  const int all = (int)(sizeof(lens) / sizeof(lens[0]));
  for (int count : {all, 19}) {
    for (ncclDataType_t t : {ncclFloat32, ncclFloat16, ncclBfloat16}) {
      gc::DType dt = gc::DType::F32;
      ASSERT_EQ(gc::dtypeFromNccl(t, &dt), gradcompSuccess);
      const size_t esz = gc::dtypeBytes(dt);
      for (int d : {96, 128, 256, 512, 1024}) {
        for (int bits : {2, 3, 4, 8}) {
          for (int variant = 0; variant < 4; ++variant) {
            const bool nearest = variant == 1, square = variant == 2, ef = variant != 3;
            SCOPED_TRACE(testing::Message()
                         << "segments=" << count << " type=" << t << " d=" << d << " bits=" << bits
                         << " nearest=" << nearest << " square=" << square << " ef=" << ef);
            // Segment j's input at in[j], residual at res[j], output at out[j]:
            // 16-element aligned (the vector path), every third one shifted by
            // one element off it.
            std::vector<size_t> in(count), res(count), out(count);
            size_t nIn = 0, nRes = 0, nOut = 0;
            for (int j = 0; j < count; ++j) {
              const size_t shift = j % 3 == 2 ? 1 : 0;
              in[j] = nIn + shift, res[j] = nRes + shift, out[j] = nOut;
              nIn += (lens[j] + 16 + 15) / 16 * 16, nRes = nIn;
              nOut += gradcompQsgdEncodedBytes(lens[j], bits, d) + 16;
            }
            std::vector<float> x = gctest::normal(nIn, 11 * d + bits + variant);
            x[in[6] + 5] = NAN;  // one bucket of segment 6 not finite: its residual kept
            std::vector<uint16_t> h = narrow(x, t);
            const char* hostIn = t == ncclFloat32 ? (const char*)x.data() : (const char*)h.data();
            const std::vector<float> r0 = gctest::normal(nRes, 5 + d, 0.1f);
            DeviceBuffer<uint8_t> dx(nIn * esz), denc(nOut);
            DeviceBuffer<float> dr(nRes);
            ASSERT_EQ(cudaMemcpy(dx.get(), hostIn, nIn * esz, cudaMemcpyHostToDevice), cudaSuccess);
            dr.upload(r0);
            gc::KeySpec key{0xba7cull, 41, nullptr, 3, 0, true};
            key.offset = 1000;
            key.nearest = nearest;
            key.square = square;
            std::vector<gc::EncodeSegment> segs(count);
            for (int j = 0; j < count; ++j) {
              segs[j] = gc::EncodeSegment{dx.get() + in[j] * esz, ef ? dr.get() + res[j] : nullptr,
                                          lens[j], (uint64_t)(7 * j + 1), denc.get() + out[j]};
            }
            ASSERT_EQ(gc::cuda::qsgdEncodeBatch(segs.data(), count, dt, bits, d, key, stream),
                      cudaSuccess);
            ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
            const std::vector<uint8_t> enc = denc.download(nOut);
            const std::vector<float> rDev = dr.download(nRes);
            // Every segment's bytes and residual as the host gives them; the
            // gaps between them untouched (zero, as allocated; r0's values).
            std::vector<uint8_t> want(nOut, 0);
            std::vector<float> rHost = r0;
            for (int j = 0; j < count; ++j) {
              gc::KeySpec k = key;
              k.stream = segs[j].stream;
              if (lens[j] > 0) {
                gc::host::qsgdEncode(hostIn + in[j] * esz, dt, ef ? rHost.data() + res[j] : nullptr,
                                     lens[j], bits, d, gc::resolveKey(k), nearest, square,
                                     want.data() + out[j]);
              }
            }
            for (int j = 0; j < count; ++j) {
              const size_t bytes = gradcompQsgdEncodedBytes(lens[j], bits, d);
              ASSERT_EQ(memcmp(enc.data() + out[j], want.data() + out[j], bytes), 0)
                  << "segment " << j << " of " << lens[j];
            }
            ASSERT_EQ(enc, want);
            ASSERT_EQ(memcmp(rDev.data(), rHost.data(), nRes * 4), 0);
          }
        }
      }
    }
  }
}

// A batch of decodes gives each segment the host decode of its encoding:
// into fp32, overwrite and accumulate (cuda::qsgdDecodeBatch), and straight
// into the caller's output (cuda::qsgdDecodeToOutput) of every type, divided
// (Avg) or not, as the host's decode into fp32 and conversion give it
// (storeFromFloat of fdiv: what fromFloat does). 21 segments (19 not empty:
// two launches of 16 and 3) and the first 19 (17 not empty: 16, then one
// launch of one) of every length kind, outputs aligned to 4 elements (the
// plain path) but every third one element off (the general path), a bucket
// with a NaN (its scale not finite), uniform and square levels, every warp
// bucket (and 96, the block path, for fp32), widths 2, 3 (codes straddling
// words), 4 and 8; the outputs' gaps untouched. A block decoding another
// segment's codes, writing past its own, converting or dividing otherwise
// than the host changes the output.
TEST_F(QsgdGpu, BatchedDecodeGivesEachSegmentItsOwnDecode) {
  const size_t lens[] = {0,    1,   300, 1024, 2048 + 77, 4096, 9000, 512,  33,   1536, 0,
                         5000, 128, 700, 2,    4096 + 5,  1023, 257,  6144, 3000, 640};
  const int all = (int)(sizeof(lens) / sizeof(lens[0]));
  struct Output {
    gc::DType t;
    float divisor;
    bool accumulate;  // fp32 undivided only (qsgdDecodeBatch)
  };
  const Output outputs[] = {{gc::DType::F32, 1.0f, false}, {gc::DType::F32, 1.0f, true},
                            {gc::DType::F32, 8.0f, false}, {gc::DType::F16, 1.0f, false},
                            {gc::DType::F16, 3.0f, false}, {gc::DType::BF16, 1.0f, false},
                            {gc::DType::BF16, 6.0f, false}};
  for (int count : {all, 19}) {
    for (const Output& o : outputs) {
      const bool plainF32 = o.t == gc::DType::F32 && o.divisor == 1.0f;
      for (int d : {96, 128, 256, 512, 1024}) {
        if (!plainF32 && d == 96) continue;  // the block path decodes into fp32 only
        for (int bits : {2, 3, 4, 8}) {
          for (int square = 0; square <= 1; ++square) {
            SCOPED_TRACE(testing::Message()
                         << "segments=" << count << " type=" << (int)o.t << " divisor=" << o.divisor
                         << " accumulate=" << o.accumulate << " d=" << d << " bits=" << bits
                         << " square=" << square);
            const size_t esz = gc::dtypeBytes(o.t);
            // Segment j's encoding at in[j] (bytes), its output at element
            // out[j]: aligned to 4 elements, every third one element off.
            std::vector<size_t> in(count), out(count);
            size_t nIn = 0, nOut = 0;
            for (int j = 0; j < count; ++j) {
              in[j] = nIn, out[j] = nOut + (j % 3 == 2 ? 1 : 0);
              nIn += gradcompQsgdEncodedBytes(lens[j], bits, d) + 16;
              nOut += (lens[j] + 8 + 3) / 4 * 4;
            }
            std::vector<uint8_t> encs(nIn, 0);
            for (int j = 0; j < count; ++j) {
              if (lens[j] == 0) continue;
              std::vector<float> x = gctest::normal(lens[j], 31 * j + d + bits);
              if (j == 6) x[700] = NAN;
              gc::host::qsgdEncode(x.data(), gc::DType::F32, nullptr, lens[j], bits, d, 1000 + j,
                                   false, square != 0, encs.data() + in[j]);
            }
            // The outputs start as arbitrary bytes (fp32: values to accumulate onto).
            const std::vector<float> init = gctest::normal(nOut, 17 + d, 0.5f);
            std::vector<uint8_t> out0(nOut * esz);
            memcpy(out0.data(), init.data(), out0.size());
            DeviceBuffer<uint8_t> denc(nIn), dout(nOut * esz);
            ASSERT_EQ(cudaMemcpy(denc.get(), encs.data(), nIn, cudaMemcpyHostToDevice),
                      cudaSuccess);
            dout.upload(out0);
            std::vector<gc::DecodeSegment> segs(count);
            for (int j = 0; j < count; ++j) {
              segs[j] = gc::DecodeSegment{denc.get() + in[j], lens[j], dout.get() + out[j] * esz};
            }
            if (plainF32) {
              ASSERT_EQ(
                  gc::cuda::qsgdDecodeBatch(segs.data(), count, bits, d, o.accumulate, stream),
                  cudaSuccess);
            } else {
              ASSERT_EQ(
                  gc::cuda::qsgdDecodeToOutput(segs.data(), count, bits, d, o.divisor, o.t, stream),
                  cudaSuccess);
            }
            ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
            const std::vector<uint8_t> got = dout.download(nOut * esz);
            std::vector<uint8_t> want = out0;
            for (int j = 0; j < count; ++j) {
              if (lens[j] == 0) continue;
              std::vector<float> v(lens[j]);
              memcpy(v.data(), want.data() + out[j] * esz, o.accumulate ? lens[j] * 4 : 0);
              gc::host::qsgdDecode(encs.data() + in[j], lens[j], bits, d, v.data(), o.accumulate);
              for (size_t e = 0; e < lens[j]; ++e) {
                const float w = o.divisor == 1.0f ? v[e] : gc::fdiv(v[e], o.divisor);
                gc::storeFromFloat(want.data() + out[j] * esz, o.t, e, w);
              }
            }
            for (int j = 0; j < count; ++j) {
              ASSERT_EQ(
                  memcmp(got.data() + out[j] * esz, want.data() + out[j] * esz, lens[j] * esz), 0)
                  << "segment " << j << " of " << lens[j];
            }
            ASSERT_EQ(got, want) << "a gap was written";
          }
        }
      }
    }
  }
  // Straight into a non-fp32 output needs a warp path: the block path's
  // bucket (96) is refused, as the backends' callers check before.
  const size_t n = 1000;
  DeviceBuffer<uint8_t> denc(gradcompQsgdEncodedBytes(n, 4, 96)), dout(2 * n);
  const gc::DecodeSegment seg{denc.get(), n, dout.get()};
  EXPECT_FALSE(gc::cuda::qsgdDecodeFuses(96));
  EXPECT_TRUE(gc::cuda::qsgdDecodeFuses(512));
  EXPECT_EQ(gc::cuda::qsgdDecodeToOutput(&seg, 1, 4, 96, 1.0f, gc::DType::BF16, stream),
            cudaErrorInvalidValue);
}

// The non-finite check folded into the kernels that store the output
// (CallArgs::outputFlag): a batch of decodes into the output
// (cuda::qsgdDecodeToOutput, one segment of fp32 undivided included, which
// takes the batch kernel when flagged) and the owner's sum (cuda::qsgdSum,
// 3 terms and 17, chained through the scratch, where only the last launch
// stores the output) set the flag exactly where the output they store holds
// a NaN or an infinity in its type: finite inputs leave it as it was (0 stays
// 0, 1 stays 1: never cleared), a NaN input sets it, and so does a finite
// fp32 value past fp16's range stored as fp16 (not as fp32 or bf16), divided
// or not, and a sum of finite terms past fp32's range (every type); outputs
// aligned and one element off (the sum's too); every warp bucket. A flag
// read off the fp32 value instead of the stored one, one lane's store lost,
// or a tail lane past the end counted would show here. Without a warp path
// (96) a flag is refused: the backends make a pass instead.
TEST_F(QsgdGpu, OutputKernelsFlagWhatTheyStore) {
  struct Output {
    gc::DType t;
    float divisor;
  };
  const Output outputs[] = {{gc::DType::F32, 1.0f},
                            {gc::DType::F32, 3.0f},
                            {gc::DType::F16, 1.0f},
                            {gc::DType::F16, 3.0f},
                            {gc::DType::BF16, 1.0f}};
  // kPastHalf: a segment's scale past 3 * 65504; kPastF32: one value of 3e38
  // in a segment and in the sum's own block (their sum overflows fp32).
  enum Kind { kFinite, kNaN, kPastHalf, kPastF32 };
  DeviceBuffer<float> flag(1);
  auto runFlagged = [&](float before, auto&& launch) -> float {
    flag.upload({before});
    EXPECT_EQ(launch(flag.get()), cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    return flag.download(1)[0];
  };
  for (int d : {128, 256, 512, 1024}) {
    const int bits = 4;
    for (const Output& o : outputs) {
      const size_t esz = gc::dtypeBytes(o.t);
      for (Kind kind : {kFinite, kNaN, kPastHalf, kPastF32}) {
        for (int segsUsed : {1, 4}) {
          SCOPED_TRACE(testing::Message()
                       << "d=" << d << " type=" << (int)o.t << " divisor=" << o.divisor
                       << " kind=" << kind << " segments=" << segsUsed);
          const size_t lens[] = {(size_t)2 * d + 5, 1000, 33, 4096};
          std::vector<size_t> in(4), out(4);
          size_t nIn = 0, nOut = 0;
          std::vector<std::vector<float>> xs(4);
          for (int j = 0; j < 4; ++j) {
            in[j] = nIn, out[j] = nOut + (j % 2);  // every other one element off
            nIn += gradcompQsgdEncodedBytes(lens[j], bits, d) + 16;
            nOut += (lens[j] + 8 + 3) / 4 * 4;
            xs[j] = gctest::normal(lens[j], 7 * j + d, 1.0f);
          }
          // The bad value lies in the last segment used.
          const int bad = segsUsed - 1;
          if (kind == kNaN) xs[bad][lens[bad] - 2] = NAN;
          if (kind == kPastHalf) {
            for (float& v : xs[bad]) v *= 4.0e5f;  // the bucket's scale past 3 * 65504
          }
          if (kind == kPastF32) xs[bad][1] = 3.0e38f;
          std::vector<uint8_t> encs(nIn, 0);
          for (int j = 0; j < 4; ++j) {
            gc::host::qsgdEncode(xs[j].data(), gc::DType::F32, nullptr, lens[j], bits, d, 40 + j,
                                 false, false, encs.data() + in[j]);
          }
          // What the output stores, and whether it holds a non-finite value.
          std::vector<uint8_t> want(nOut * esz, 0);
          bool anyBad = false;
          for (int j = 0; j < segsUsed; ++j) {
            std::vector<float> v(lens[j]);
            gc::host::qsgdDecode(encs.data() + in[j], lens[j], bits, d, v.data(), false);
            for (size_t e = 0; e < lens[j]; ++e) {
              const float w = o.divisor == 1.0f ? v[e] : gc::fdiv(v[e], o.divisor);
              gc::storeFromFloat(want.data() + out[j] * esz, o.t, e, w);
              anyBad |= !std::isfinite(gc::loadAsFloat(want.data() + out[j] * esz, o.t, e));
            }
          }
          ASSERT_EQ(anyBad, kind == kNaN ||
                                ((kind == kPastHalf || kind == kPastF32) && o.t == gc::DType::F16))
              << "the case is not the one meant";
          DeviceBuffer<uint8_t> denc(nIn), dout(nOut * esz);
          ASSERT_EQ(cudaMemcpy(denc.get(), encs.data(), nIn, cudaMemcpyHostToDevice), cudaSuccess);
          std::vector<gc::DecodeSegment> segs(segsUsed);
          for (int j = 0; j < segsUsed; ++j) {
            segs[j] = gc::DecodeSegment{denc.get() + in[j], lens[j], dout.get() + out[j] * esz};
          }
          for (float before : {0.0f, 1.0f}) {
            const float got = runFlagged(before, [&](float* f) {
              return gc::cuda::qsgdDecodeToOutput(segs.data(), segsUsed, bits, d, o.divisor, o.t,
                                                  stream, f);
            });
            EXPECT_EQ(got, anyBad || before != 0.0f ? 1.0f : 0.0f) << "decode, flag was " << before;
            const std::vector<uint8_t> stored = dout.download(nOut * esz);
            for (int j = 0; j < segsUsed; ++j) {
              ASSERT_EQ(
                  memcmp(stored.data() + out[j] * esz, want.data() + out[j] * esz, lens[j] * esz),
                  0)
                  << "segment " << j;
            }
          }
          // The owner's sum of the first segment's length: the used
          // segments' encodings of it (the bad one's as it is) with a plain
          // finite block, 3 terms, or 17 (chained).
          const size_t n = lens[0];
          std::vector<std::vector<uint8_t>> sumEnc(4);
          for (int j = 0; j < 4; ++j) {
            sumEnc[j].resize(gradcompQsgdEncodedBytes(n, bits, d));
            std::vector<float> x(xs[j].begin(), xs[j].begin() + std::min(n, lens[j]));
            x.resize(n, 0.5f);
            if (j == bad && kind == kNaN) x[n - 2] = NAN;
            if (j == bad && kind == kPastHalf) x[1] = 4.0e5f * 4.0f;
            gc::host::qsgdEncode(x.data(), gc::DType::F32, nullptr, n, bits, d, 80 + j, false,
                                 false, sumEnc[j].data());
          }
          std::vector<float> own = gctest::normal(n, 5 + d, 1.0f);
          if (kind == kPastF32) own[1] = 3.0e38f;
          DeviceBuffer<float> ownBuf(n), scratch(n);
          ownBuf.upload(own);
          std::vector<std::unique_ptr<DeviceBuffer<uint8_t>>> encBufs;
          for (int j = 0; j < 4; ++j) {
            encBufs.push_back(std::make_unique<DeviceBuffer<uint8_t>>(sumEnc[j].size()));
            ASSERT_EQ(cudaMemcpy(encBufs[j]->get(), sumEnc[j].data(), sumEnc[j].size(),
                                 cudaMemcpyHostToDevice),
                      cudaSuccess);
          }
          for (int count : {3, 17}) {
            // The own block second, the bad segment's term last (in a
            // chained sum, last in the first launch: the last launch's store
            // must still see it), the others the used segments in turn.
            std::vector<gc::SumTerm> terms;
            std::vector<int> order;
            const int badAt = count > 16 ? 15 : count - 1;
            for (int k = 0; k < count; ++k) {
              const int j = k == 1 ? -1 : (k == badAt ? bad : k % (bad + 1));
              order.push_back(j);
              terms.push_back(j < 0 ? gc::SumTerm{ownBuf.get(), true}
                                    : gc::SumTerm{encBufs[j]->get(), false});
            }
            std::vector<float> acc(n, 0.0f);
            for (int k = 0; k < count; ++k) {
              if (order[k] < 0) {
                for (size_t e = 0; e < n; ++e) acc[e] = k == 0 ? own[e] : gc::fadd(acc[e], own[e]);
              } else {
                gc::host::qsgdDecode(sumEnc[order[k]].data(), n, bits, d, acc.data(), k != 0);
              }
            }
            std::vector<uint8_t> sumWant(n * esz);
            bool sumBad = false;
            for (size_t e = 0; e < n; ++e) {
              const float w = o.divisor == 1.0f ? acc[e] : gc::fdiv(acc[e], o.divisor);
              gc::storeFromFloat(sumWant.data(), o.t, e, w);
              sumBad |= !std::isfinite(gc::loadAsFloat(sumWant.data(), o.t, e));
            }
            ASSERT_EQ(sumBad, kind == kNaN || kind == kPastF32 ||
                                  (kind == kPastHalf && o.t == gc::DType::F16))
                << "the case is not the one meant";
            // The chained sum's output one element off (its scalar stores).
            const size_t off = count > 16 ? 1 : 0;
            DeviceBuffer<uint8_t> sout((n + 1) * esz);
            for (float before : {0.0f, 1.0f}) {
              const float got = runFlagged(before, [&](float* f) {
                return gc::cuda::qsgdSum(terms.data(), count, n, bits, d, o.divisor, o.t,
                                         sout.get() + off * esz, scratch.get(), stream, f);
              });
              EXPECT_EQ(got, sumBad || before != 0.0f ? 1.0f : 0.0f)
                  << "sum of " << count << " terms, flag was " << before;
              ASSERT_EQ(sout.download(n * esz, off * esz), sumWant)
                  << "sum of " << count << " terms";
            }
          }
        }
      }
    }
  }
  const size_t n = 1000;
  DeviceBuffer<uint8_t> denc(gradcompQsgdEncodedBytes(n, 4, 96)), dout(4 * n);
  const gc::DecodeSegment seg{denc.get(), n, dout.get()};
  EXPECT_EQ(gc::cuda::qsgdDecodeToOutput(&seg, 1, 4, 96, 1.0f, gc::DType::F32, stream, flag.get()),
            cudaErrorInvalidValue);
}

// The owner's fused sum (cuda::qsgdSum) is the host's decode of the first
// term (a copy where it is plain), decode-accumulates and fp32 adds of the
// rest in term order, and one conversion (storeFromFloat of fdiv for Avg),
// bit for bit: 1 to 33 terms (past 16: chained launches through the fp32
// accumulator, out itself or the scratch), the plain term (the owner's own
// block) first, in the middle or last, encoded terms of uniform and square
// levels side by side (each term picks its own level table), a bucket with
// a NaN (its scale not finite), and in the plain term an Inf, a -0 and a NaN
// with a payload (a lone plain term is copied, not added onto zero), whole
// buckets and a partial last one, every warp bucket, widths 2, 3, 4 and 8, outputs of every type,
// divided or not, aligned or one element off, plain terms aligned or one
// float off (the kernel's scalar paths); the output's tail untouched. A term
// added out of order, a bucket decoded with another term's table or scale,
// or a conversion other than the host's changes the output.
TEST_F(QsgdGpu, FusedSumIsTheDecodesAndAddsInTermOrder) {
  constexpr int kTerms = 33;
  struct Output {
    gc::DType t;
    float divisor;
  };
  const Output outputs[] = {{gc::DType::F32, 1.0f},
                            {gc::DType::F32, 8.0f},
                            {gc::DType::F16, 1.0f},
                            {gc::DType::BF16, 1.0f},
                            {gc::DType::BF16, 6.0f}};
  int variant = 0;
  for (int d : {128, 256, 512, 1024}) {
    for (int bits : {2, 3, 4, 8}) {
      for (size_t n : {(size_t)1, (size_t)300, (size_t)5 * d, (size_t)3 * d + 77}) {
        // kTerms encodings of n values (odd terms with square levels, term 3
        // with a NaN), and the plain block (an Inf in it).
        const size_t encBytes = gradcompQsgdEncodedBytes(n, bits, d);
        const size_t stride = (encBytes + 15) / 16 * 16;
        std::vector<uint8_t> encs(stride * kTerms);
        for (int k = 0; k < kTerms; ++k) {
          std::vector<float> x = gctest::normal(n, 101 * k + d + bits, 1.0f + 0.25f * (k % 5));
          if (k == 3 && n > 200) x[n - 100] = NAN;
          gc::host::qsgdEncode(x.data(), gc::DType::F32, nullptr, n, bits, d, 500 + k, false,
                               k % 2 == 1, encs.data() + stride * k);
        }
        std::vector<float> own = gctest::normal(n + 1, 9 + d + bits, 2.0f);
        // A negative zero and a NaN with a payload: a lone plain term is
        // copied (sign and payload kept), not added onto zero.
        if (n > 10) own[3] = -0.0f, own[5] = gc::bitsToFloat(0xffc01234u), own[7] = INFINITY;
        DeviceBuffer<uint8_t> denc(encs.size());
        ASSERT_EQ(cudaMemcpy(denc.get(), encs.data(), encs.size(), cudaMemcpyHostToDevice),
                  cudaSuccess);
        DeviceBuffer<float> ownBuf(n + 1), scratch(n + 1);
        ownBuf.upload(own);
        for (int count : {1, 2, 5, 8, 16, 17, kTerms}) {
          for (int plainAt : {0, count / 2, count - 1}) {
            // The host's launches, for the plain term aligned and one float
            // off: decode or copy, then decode-accumulate or add.
            std::vector<float> ref[2];
            for (int shift = 0; shift < 2; ++shift) {
              std::vector<float>& acc = ref[shift];
              acc.resize(n);
              for (int k = 0; k < count; ++k) {
                if (k == plainAt) {
                  for (size_t e = 0; e < n; ++e) {
                    acc[e] = k == 0 ? own[e + shift] : gc::fadd(acc[e], own[e + shift]);
                  }
                } else {
                  gc::host::qsgdDecode(encs.data() + stride * k, n, bits, d, acc.data(), k != 0);
                }
              }
            }
            for (const Output& o : outputs) {
              const int align = variant++ % 3;  // 0 aligned, 1 plain one off, 2 out one off
              SCOPED_TRACE(testing::Message()
                           << "d=" << d << " bits=" << bits << " n=" << n << " terms=" << count
                           << " plain at " << plainAt << " type=" << (int)o.t
                           << " divisor=" << o.divisor << " align=" << align);
              const float* ownDev = ownBuf.get() + (align == 1 ? 1 : 0);
              const std::vector<float>& acc = ref[align == 1 ? 1 : 0];
              std::vector<gc::SumTerm> terms(count);
              for (int k = 0; k < count; ++k) {
                terms[k] = k == plainAt ? gc::SumTerm{ownDev, true}
                                        : gc::SumTerm{denc.get() + stride * k, false};
              }
              const size_t esz = gc::dtypeBytes(o.t), off = align == 2 ? 1 : 0;
              const size_t outLen = n + 8;
              const std::vector<float> init = gctest::normal(outLen, 3 + n, 0.5f);
              std::vector<uint8_t> out0(outLen * esz);
              memcpy(out0.data(), init.data(), out0.size());
              std::vector<uint8_t> want = out0;
              for (size_t e = 0; e < n; ++e) {
                const float w = o.divisor == 1.0f ? acc[e] : gc::fdiv(acc[e], o.divisor);
                gc::storeFromFloat(want.data() + off * esz, o.t, e, w);
              }
              DeviceBuffer<uint8_t> dout(outLen * esz);
              dout.upload(out0);
              ASSERT_EQ(gc::cuda::qsgdSum(terms.data(), count, n, bits, d, o.divisor, o.t,
                                          dout.get() + off * esz, scratch.get(), stream),
                        cudaSuccess);
              ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
              const std::vector<uint8_t> got = dout.download(outLen * esz);
              ASSERT_EQ(memcmp(got.data() + off * esz, want.data() + off * esz, n * esz), 0);
              ASSERT_EQ(got, want) << "written outside the output";
            }
          }
        }
      }
    }
  }
  // Refused: no warp path (96), no terms, more than 16 terms with neither an
  // fp32 undivided output nor a scratch.
  const size_t n = 1000;
  DeviceBuffer<uint8_t> denc(gradcompQsgdEncodedBytes(n, 4, 512)), dout(4 * n);
  std::vector<gc::SumTerm> terms(17, gc::SumTerm{denc.get(), false});
  EXPECT_EQ(gc::cuda::qsgdSum(terms.data(), 2, n, 4, 96, 1.0f, gc::DType::F32, dout.get(), nullptr,
                              stream),
            cudaErrorInvalidValue);
  EXPECT_EQ(gc::cuda::qsgdSum(terms.data(), 0, n, 4, 512, 1.0f, gc::DType::F32, dout.get(), nullptr,
                              stream),
            cudaErrorInvalidValue);
  EXPECT_EQ(gc::cuda::qsgdSum(terms.data(), 17, n, 4, 512, 1.0f, gc::DType::BF16, dout.get(),
                              nullptr, stream),
            cudaErrorInvalidValue);
  EXPECT_EQ(gc::cuda::qsgdSum(terms.data(), 17, n, 4, 512, 1.0f, gc::DType::F32, dout.get(),
                              nullptr, stream),
            cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
}

// Every fp16 bit pattern (subnormals, infinities, NaNs with their payloads)
// through the warp-path encode with error feedback, against the host: the
// warp path's aligned loads convert with one cvt whatever the payload
// (halfToFloatAnyNaN), the host keeps NaN payloads, and the bytes and
// residuals must still agree. Buckets of 512 hold 512 consecutive patterns,
// so some are all finite and some hold Inf or NaN (scale NaN, residual kept).
TEST_F(QsgdGpu, EveryHalfPatternEncodesAsOnTheHost) {
  const size_t n = 65536;
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = (uint16_t)i;
  for (int bits : {2, 4, 8}) {
    SCOPED_TRACE(testing::Message() << "bits=" << bits);
    std::vector<float> r = gctest::normal(n, 7, 0.01f), rHost = r;
    const size_t bytes = gradcompQsgdEncodedBytes(n, bits, 512);
    std::vector<uint8_t> encHost(bytes);
    ASSERT_EQ(gradcompQsgdEncodeTypedHost(h.data(), ncclFloat16, rHost.data(), n, bits, 512, 77,
                                          encHost.data()),
              gradcompSuccess);
    DeviceBuffer<uint16_t> dx(n);
    DeviceBuffer<float> dr(n);
    DeviceBuffer<uint8_t> denc(bytes);
    dx.upload(h);
    dr.upload(r);
    ASSERT_EQ(
        gradcompQsgdEncodeEF(dx.get(), ncclFloat16, dr.get(), n, bits, 512, 77, denc.get(), stream),
        gradcompSuccess)
        << gradcompGetLastError();
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(denc.download(bytes), encHost);
    auto rDev = dr.download(n);
    EXPECT_EQ(memcmp(rDev.data(), rHost.data(), n * 4), 0);
  }
}

TEST_F(QsgdGpu, MisalignedPointersAndAccumulate) {
  const size_t n = 70001;
  std::vector<float> x = gctest::normal(n, 5);
  const size_t bytes = gradcompQsgdEncodedBytes(n, 4, 512);
  std::vector<uint8_t> encHost(bytes);
  ASSERT_EQ(gradcompQsgdEncodeHost(x.data(), n, 4, 512, 8, encHost.data()), gradcompSuccess);
  std::vector<float> acc = gctest::normal(n, 6);
  std::vector<float> accHost = acc;
  ASSERT_EQ(gradcompQsgdDecodeHost(encHost.data(), n, 4, 512, accHost.data(), 1), gradcompSuccess);

  DeviceBuffer<float> dx(n + 3), dacc(n + 3);
  DeviceBuffer<uint32_t> denc(bytes / 4 + 3);
  dx.upload(x, 1);  // 4 bytes past a 256-byte boundary: not 16-byte aligned
  dacc.upload(acc, 3);
  ASSERT_EQ(gradcompQsgdEncode(dx.get(1), ncclFloat32, n, 4, 512, 8, denc.get(1), stream),
            gradcompSuccess);
  ASSERT_EQ(gradcompQsgdDecode(denc.get(1), n, 4, 512, dacc.get(3), 1, stream), gradcompSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  std::vector<uint8_t> encDev(bytes);
  ASSERT_EQ(cudaMemcpy(encDev.data(), denc.get(1), bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(encDev, encHost);
  auto accDev = dacc.download(n, 3);
  EXPECT_EQ(memcmp(accDev.data(), accHost.data(), n * 4), 0);
}

// The encode's paths by alignment: x and the residual aligned take the warp
// path's whole-bucket branch without bounds checks (16-byte fp32 / 8-byte
// fp16 and bf16 loads), either one misaligned the checked branch for every
// bucket; the encoded bytes at a misaligned word too. Every bucket size with
// a warp path and the block path (96, 160), every bit width, each input
// type, error feedback on and off, counts below one bucket, of whole buckets
// and with a tail, a bucket of zeros, one with a NaN, one with +-Inf, one of
// subnormals (no reciprocal): the host codec's bytes and residual, and its decode accumulated into
// a misaligned output.
TEST_F(QsgdGpu, EveryBucketBitsTypeAndAlignmentAsOnTheHost) {
  struct Offsets {
    size_t x, r, enc, out;  // elements (of x's type, floats, words, floats) past an aligned base
  };
  const Offsets offsets[] = {{0, 0, 0, 0}, {1, 0, 1, 3}, {0, 1, 0, 1}, {3, 2, 1, 0}};
  for (ncclDataType_t t : {ncclFloat32, ncclFloat16, ncclBfloat16}) {
    const size_t esz = t == ncclFloat32 ? 4 : 2;
    for (int d : {96, 128, 160, 256, 512, 1024}) {
      for (size_t n : {(size_t)d - 32, (size_t)(3 * d), (size_t)(4 * d + 37)}) {
        std::vector<float> x = gctest::normal(n, 11 * n + d);
        // Bucket 0 all zeros, bucket 1 a NaN, bucket 2 +-Inf, bucket 3
        // subnormal (s / scale overflows: no reciprocal, the kernels divide
        // per element). Only bucket 4 and the tail are plain: the warp path
        // codes the others on its checked path (qsgd::plainBucket).
        if (n > 2 * (size_t)d) {
          std::fill(x.begin(), x.begin() + d, 0.0f);
          x[d + 5] = NAN;
          x[2 * d + 1] = INFINITY, x[2 * d + 9] = -INFINITY;
        }
        if (n > 4 * (size_t)d) {
          for (size_t i = 3 * (size_t)d; i < 4 * (size_t)d; ++i) x[i] *= 1e-42f;
        }
        std::vector<uint16_t> h = narrow(x, t);
        const void* hostIn = t == ncclFloat32 ? (const void*)x.data() : (const void*)h.data();
        const std::vector<float> r0 = gctest::normal(n, 5 + n, 0.1f);
        const std::vector<float> acc0 = gctest::normal(n, 6 + n);
        const size_t maxBytes = gradcompQsgdEncodedBytes(n, 8, d);
        DeviceBuffer<uint8_t> dx((n + 4) * esz);
        DeviceBuffer<float> dr(n + 4), dout(n + 4);
        DeviceBuffer<uint32_t> denc(maxBytes / 4 + 4);
        for (const Offsets& o : offsets) {
          ASSERT_EQ(cudaMemcpy(dx.get() + o.x * esz, hostIn, n * esz, cudaMemcpyHostToDevice),
                    cudaSuccess);
          for (int bits = 2; bits <= 8; ++bits) {
            for (int ef = 0; ef <= 1; ++ef) {
              SCOPED_TRACE(testing::Message()
                           << "type=" << t << " d=" << d << " n=" << n << " bits=" << bits
                           << " ef=" << ef << " offsets x=" << o.x << " r=" << o.r
                           << " enc=" << o.enc << " out=" << o.out);
              const size_t bytes = gradcompQsgdEncodedBytes(n, bits, d);
              std::vector<float> rHost = r0;
              std::vector<uint8_t> encHost(bytes);
              ASSERT_EQ(gradcompQsgdEncodeTypedHost(hostIn, t, ef ? rHost.data() : nullptr, n, bits,
                                                    d, 4321 + bits, encHost.data()),
                        gradcompSuccess);
              std::vector<float> accHost = acc0;
              ASSERT_EQ(gradcompQsgdDecodeHost(encHost.data(), n, bits, d, accHost.data(), 1),
                        gradcompSuccess);
              dr.upload(r0, o.r);
              dout.upload(acc0, o.out);
              ASSERT_EQ(gradcompQsgdEncodeEF(dx.get() + o.x * esz, t, ef ? dr.get(o.r) : nullptr, n,
                                             bits, d, 4321 + bits, denc.get(o.enc), stream),
                        gradcompSuccess)
                  << gradcompGetLastError();
              ASSERT_EQ(gradcompQsgdDecode(denc.get(o.enc), n, bits, d, dout.get(o.out), 1, stream),
                        gradcompSuccess);
              ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
              std::vector<uint8_t> encDev(bytes);
              ASSERT_EQ(cudaMemcpy(encDev.data(), denc.get(o.enc), bytes, cudaMemcpyDeviceToHost),
                        cudaSuccess);
              ASSERT_EQ(encDev, encHost);
              if (ef) {
                const std::vector<float> rDev = dr.download(n, o.r);
                ASSERT_EQ(memcmp(rDev.data(), rHost.data(), n * 4), 0);
              }
              const std::vector<float> accDev = dout.download(n, o.out);
              ASSERT_EQ(memcmp(accDev.data(), accHost.data(), n * 4), 0);
            }
          }
        }
      }
    }
  }
}

TEST_F(QsgdGpu, GraphCaptureReplayEqualsEager) {
  const size_t n = 1 << 16;
  std::vector<float> g = gctest::normal(n, 42);
  const size_t bytes = gradcompQsgdEncodedBytes(n, 4, 512);
  DeviceBuffer<float> dg(n), drEager(n), drGraph(n), dout(n);
  DeviceBuffer<uint8_t> denc(bytes);
  dg.upload(g);
  const int steps = 5;
  for (int k = 0; k < steps; ++k) {
    ASSERT_EQ(gradcompQsgdEncodeEF(dg.get(), ncclFloat32, drEager.get(), n, 4, 512, 77, denc.get(),
                                   stream),
              gradcompSuccess);
  }
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  auto encEager = denc.download(bytes);
  auto rEager = drEager.download(n);

  cudaGraph_t graph;
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  ASSERT_EQ(
      gradcompQsgdEncodeEF(dg.get(), ncclFloat32, drGraph.get(), n, 4, 512, 77, denc.get(), stream),
      gradcompSuccess);
  ASSERT_EQ(gradcompQsgdDecode(denc.get(), n, 4, 512, dout.get(), 0, stream), gradcompSuccess);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int k = 0; k < steps; ++k) ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(denc.download(bytes), encEager);
  auto rGraph = drGraph.download(n);
  EXPECT_EQ(memcmp(rGraph.data(), rEager.data(), n * 4), 0);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

// Pointers off their element's alignment are refused, naming the pointer and
// the alignment, before any device call (so this runs without a GPU too).
TEST(QsgdApiArgs, PointersOffTheirElementAlignmentAreRefused) {
  alignas(16) static char buf[4096];
  EXPECT_EQ(gradcompQsgdEncode(buf + 1, ncclFloat32, 64, 4, 32, 1, buf + 256, nullptr),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "is not aligned to its element size 4"), nullptr)
      << gradcompGetLastError();
  EXPECT_EQ(gradcompQsgdEncodeEF(buf + 3, ncclBfloat16, nullptr, 64, 4, 32, 1, buf + 256, nullptr),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "is not aligned to its element size 2"), nullptr)
      << gradcompGetLastError();
  EXPECT_EQ(gradcompQsgdEncode(buf, ncclFloat16, 64, 4, 32, 1, buf + 258, nullptr),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "must be 4-byte aligned"), nullptr)
      << gradcompGetLastError();
  EXPECT_EQ(gradcompQsgdDecode(buf + 2, 64, 4, 32, reinterpret_cast<float*>(buf + 512), 0, nullptr),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "in="), nullptr) << gradcompGetLastError();
  // fp32 arrays off 4 bytes: scalar loads there would be a misaligned-address
  // fault, which ends the CUDA context.
  EXPECT_EQ(gradcompQsgdEncodeEF(buf, ncclFloat32, reinterpret_cast<float*>(buf + 1026), 64, 4, 32,
                                 1, buf + 256, nullptr),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "residual="), nullptr) << gradcompGetLastError();
  EXPECT_NE(strstr(gradcompGetLastError(), "must be 4-byte aligned"), nullptr)
      << gradcompGetLastError();
  EXPECT_EQ(
      gradcompQsgdDecode(buf + 256, 64, 4, 32, reinterpret_cast<float*>(buf + 1025), 0, nullptr),
      gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "out="), nullptr) << gradcompGetLastError();
  EXPECT_NE(strstr(gradcompGetLastError(), "must be 4-byte aligned"), nullptr)
      << gradcompGetLastError();
}

// The kernels launch up to one block per bucket and a grid holds at most
// 2^31 - 1 blocks: a count past that many buckets (here 2^36 elements in
// buckets of 32, an fp16 gradient of 128 GiB) is refused, naming the count,
// the bucket and the limit, before any device call (so this runs without a
// GPU too). The launch used to cast the block count to 32 bits and encode
// only part of the buffer beyond 2^37 elements.
TEST(QsgdApiArgs, CountsBeyondTheGridLimitAreRefused) {
  alignas(16) static char buf[4096];
  for (int bucket : {32, 128, 1024, 8192}) {
    const size_t limit = gc::kMaxDeviceBuckets * (size_t)bucket;
    EXPECT_EQ(gc::qsgdCheckDeviceCount(limit, bucket), gradcompSuccess);
    ASSERT_EQ(gc::qsgdCheckDeviceCount(limit + 1, bucket), gradcompInvalidArgument);
    char want[128];
    snprintf(want, sizeof(want), "count=%zu is out of range 0..%zu", limit + 1, limit);
    EXPECT_NE(strstr(gradcompGetLastError(), want), nullptr) << gradcompGetLastError();

    EXPECT_EQ(gradcompQsgdEncode(buf, ncclFloat16, limit + 1, 4, bucket, 1, buf + 256, nullptr),
              gradcompInvalidArgument);
    EXPECT_NE(strstr(gradcompGetLastError(), want), nullptr) << gradcompGetLastError();
    EXPECT_EQ(gradcompQsgdEncodeEF(buf, ncclFloat32, reinterpret_cast<float*>(buf + 1024),
                                   limit + 1, 4, bucket, 1, buf + 256, nullptr),
              gradcompInvalidArgument);
    EXPECT_NE(strstr(gradcompGetLastError(), want), nullptr) << gradcompGetLastError();
    EXPECT_EQ(gradcompQsgdDecode(buf, limit + 1, 4, bucket, reinterpret_cast<float*>(buf + 1024), 0,
                                 nullptr),
              gradcompInvalidArgument);
    EXPECT_NE(strstr(gradcompGetLastError(), want), nullptr) << gradcompGetLastError();

    // The comm path reaches the kernels through the backend, chunk by chunk.
    std::unique_ptr<gc::Backend> be = gc::makeCudaBackend();
    EXPECT_EQ(be->qsgdEncode(buf, gc::DType::F32, nullptr, limit + 1, 4, bucket, gc::plainKey(1),
                             buf + 256),
              gradcompInvalidArgument);
    EXPECT_NE(strstr(gradcompGetLastError(), want), nullptr) << gradcompGetLastError();
    EXPECT_EQ(
        be->qsgdDecode(buf, limit + 1, 4, bucket, reinterpret_cast<float*>(buf + 1024), false),
        gradcompInvalidArgument);
    EXPECT_NE(strstr(gradcompGetLastError(), want), nullptr) << gradcompGetLastError();
  }
}

TEST_F(QsgdGpu, HostPointerIsRefusedWithAClearError) {
  std::vector<float> x(4096, 1.0f);
  DeviceBuffer<uint8_t> denc(gradcompQsgdEncodedBytes(4096, 4, 512));
  EXPECT_EQ(gradcompQsgdEncode(x.data(), ncclFloat32, 4096, 4, 512, 1, denc.get(), stream),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "pageable host memory"), nullptr);
}

// Memory of another GPU is refused as NCCL refuses it: the kernels run on the
// current device, where it would be an illegal address (a lost context)
// unless peer access happens to be on.
TEST_F(QsgdGpu, AnotherGpusMemoryIsRefused) {
  int devices = 0;
  ASSERT_EQ(cudaGetDeviceCount(&devices), cudaSuccess);
  if (devices < 2) GTEST_SKIP() << "needs two GPUs";
  int current = -1;
  ASSERT_EQ(cudaGetDevice(&current), cudaSuccess);
  const int other = current == 0 ? 1 : 0;
  ASSERT_EQ(cudaSetDevice(other), cudaSuccess);
  void* foreign = nullptr;
  ASSERT_EQ(cudaMalloc(&foreign, 1 << 16), cudaSuccess);
  ASSERT_EQ(cudaSetDevice(current), cudaSuccess);
  DeviceBuffer<float> x(4096);
  DeviceBuffer<uint8_t> enc(gradcompQsgdEncodedBytes(4096, 4, 512));
  char want[64];
  snprintf(want, sizeof(want), "is memory of CUDA device %d", other);
  EXPECT_EQ(gradcompQsgdEncode(foreign, ncclFloat32, 4096, 4, 512, 1, enc.get(), stream),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), want), nullptr) << gradcompGetLastError();
  EXPECT_EQ(gradcompQsgdEncode(x.get(), ncclFloat32, 4096, 4, 512, 1, foreign, stream),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), want), nullptr) << gradcompGetLastError();
  EXPECT_EQ(gradcompQsgdDecode(enc.get(), 4096, 4, 512, static_cast<float*>(foreign), 0, stream),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), want), nullptr) << gradcompGetLastError();
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  cudaFree(foreign);
}

}  // namespace
