// Public top-k selector on the GPU: indices and count equal the host entry
// point's bit for bit, a NULL count works, n = 0 writes a zero count, and a
// misaligned workspace is refused.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <math.h>
#include <string.h>

#include <limits>
#include <string>
#include <vector>

#include "gradcomp.h"
#include "gradcomp/sparse.h"
#include "tests/common/test_util.h"
#include "tests/gpu/gpu_util.h"

namespace {

using gctest::DeviceBuffer;

class TopkApiGpu : public gctest::GpuTest {
 protected:
  void compare(const std::vector<float>& v, float density, float oversample, float sampleRate,
               int exact, uint64_t seed, bool withCount) {
    const size_t n = v.size();
    size_t slots = 0, bytes = 0;
    ASSERT_EQ(gradcompTopkSlots(n, density, oversample, exact, &slots), gradcompSuccess);
    ASSERT_EQ(gradcompTopkWorkspaceBytes(n, density, oversample, sampleRate, exact, &bytes),
              gradcompSuccess);
    std::vector<uint32_t> want(slots);
    uint64_t wantSel = 0;
    ASSERT_EQ(gradcompTopkSelectHost(v.data(), n, density, oversample, sampleRate, exact, seed,
                                     want.data(), &wantSel),
              gradcompSuccess)
        << gradcompGetLastError();
    DeviceBuffer<float> dv(n);
    dv.upload(v);
    DeviceBuffer<uint32_t> didx(slots);
    ASSERT_EQ(cudaMemset(didx.get(), 0x5a, slots * 4), cudaSuccess);
    DeviceBuffer<uint64_t> dsel(1);
    ASSERT_EQ(cudaMemset(dsel.get(), 0x5a, 8), cudaSuccess);
    DeviceBuffer<char> ws(bytes);
    gctest::settle();
    ASSERT_EQ(
        gradcompTopkSelect(dv.get(), n, density, oversample, sampleRate, exact, seed, didx.get(),
                           withCount ? dsel.get() : nullptr, ws.get(), bytes, stream),
        gradcompSuccess)
        << gradcompGetLastError();
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const std::string what = "n=" + std::to_string(n) + " density=" + std::to_string(density) +
                             " exact=" + std::to_string(exact) + " seed=" + std::to_string(seed);
    EXPECT_EQ(didx.download(slots), want) << what;
    if (withCount) EXPECT_EQ(dsel.download(1)[0], wantSel) << what;
  }
};

TEST_F(TopkApiGpu, EqualsHostEntryPointBitForBit) {
  for (size_t n : {1, 1000, 4097, 100000, 1 << 20}) {
    auto normal = gctest::normal(n, 3 + n);
    auto ties = normal;
    for (auto& x : ties) x = roundf(x * 2) / 2;
    auto special = gctest::normal(n, 8);
    special[n / 2] = std::numeric_limits<float>::quiet_NaN();
    special[n / 3] = std::numeric_limits<float>::infinity();
    for (const auto* v : {&normal, &ties, &special}) {
      // 1: k = kmax = n, the threshold the sample's smallest key.
      for (float density : {0.001f, 0.01f, 0.3f, 1.0f}) {
        for (int exact : {0, 1}) {
          for (uint64_t seed : {0ull, 12345ull}) {
            compare(*v, density, 2.0f, 0.01f, exact, seed, seed == 0);
          }
        }
      }
    }
  }
}

TEST_F(TopkApiGpu, LargeVectorWithSparseSample) {
  auto v = gctest::uniform((size_t)1 << 24, 77, -1, 1);
  compare(v, 0.001f, 1.5f, 0.001f, 0, 42, true);
  compare(v, 0.001f, 1.5f, 0.001f, 1, 42, true);
}

TEST_F(TopkApiGpu, ZeroLengthWritesZeroCount) {
  DeviceBuffer<uint64_t> dsel(1);
  ASSERT_EQ(cudaMemset(dsel.get(), 0x5a, 8), cudaSuccess);
  gctest::settle();
  ASSERT_EQ(gradcompTopkSelect(nullptr, 0, 0.01f, 2.0f, 0.01f, 0, 0, nullptr, dsel.get(), nullptr,
                               0, stream),
            gradcompSuccess)
      << gradcompGetLastError();
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(dsel.download(1)[0], 0u);
}

TEST_F(TopkApiGpu, RefusesMisalignedWorkspaceAndHostPointers) {
  const size_t n = 4096;
  size_t bytes = 0, slots = 0;
  ASSERT_EQ(gradcompTopkWorkspaceBytes(n, 0.01f, 2.0f, 0.01f, 0, &bytes), gradcompSuccess);
  ASSERT_EQ(gradcompTopkSlots(n, 0.01f, 2.0f, 0, &slots), gradcompSuccess);
  DeviceBuffer<float> dv(n);
  DeviceBuffer<uint32_t> didx(slots);
  DeviceBuffer<char> ws(bytes + 256);
  EXPECT_EQ(gradcompTopkSelect(dv.get(), n, 0.01f, 2.0f, 0.01f, 0, 0, didx.get(), nullptr,
                               ws.get() + 16, bytes, stream),
            gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "must be 256-byte aligned"), nullptr)
      << gradcompGetLastError();
  std::vector<float> host(n);
  EXPECT_EQ(gradcompTopkSelect(host.data(), n, 0.01f, 2.0f, 0.01f, 0, 0, didx.get(), nullptr,
                               ws.get(), bytes, stream),
            gradcompInvalidArgument);
}

}  // namespace
