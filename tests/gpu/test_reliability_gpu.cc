// Bytes from the wire on the GPU (issue 16): the scatter-add drops indices
// past the buffer, and the Elias decoder never reads past the stream or the
// caller's buffer; a malformed bucket decodes to NaN. Out-of-bounds accesses
// here would show as a CUDA error (run under compute-sanitizer on a GPU
// machine: tools/gpu-check.sh) or as changed guard words.
#include <math.h>
#include <string.h>

#include <vector>

#include "codecs/elias.h"
#include "codecs/sparse.h"
#include "gradcomp/elias.h"
#include "tests/common/test_util.h"
#include "tests/gpu/gpu_util.h"

namespace {

using gc::DType;
using gctest::DeviceBuffer;

class ReliabilityGpu : public gctest::GpuTest {};

TEST_F(ReliabilityGpu, ScatterAddDropsIndicesPastTheBuffer) {
  const size_t n = 1000, slots = 6;
  const std::vector<uint32_t> idx = {3, 999, 1000, 0xfffffff0u, gc::sparse::kEmptySlot, 5};
  const std::vector<float> val = {1, 2, 3, 4, 5, 6};
  DeviceBuffer<uint32_t> didx(slots);
  DeviceBuffer<float> dval(slots), dout(n + 64, 0);  // 64 guard floats after the n
  didx.upload(idx);
  dval.upload(val);
  ASSERT_EQ(
      gc::cuda::sparseScatterAdd(didx.get(), dval.get(), DType::F32, slots, n, dout.get(), stream),
      cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  const std::vector<float> out = dout.download(n + 64);
  for (size_t i = 0; i < n + 64; ++i) {
    const float want = i == 3 ? 1.0f : i == 999 ? 2.0f : i == 5 ? 6.0f : 0.0f;
    ASSERT_EQ(out[i], want) << "i " << i;
  }
}

// Bucket 0 claims 256 words of a 2-word stream (as the host test
// Reliability.EliasDecoderBoundsBucketOffsets): the GPU decoder must not
// follow it; the bucket decodes to NaN, bucket 1 (empty, in range) too.
TEST_F(ReliabilityGpu, EliasDecoderBoundsBucketOffsets) {
  const size_t n = 1024;
  const gradcompEliasParams_t params = {7, 512, gradcompEliasGamma, gradcompEliasScaleMax};
  std::vector<uint32_t> enc(5 + 2);
  const float one = 1.0f;
  memcpy(&enc[0], &one, 4);
  memcpy(&enc[1], &one, 4);
  enc[2] = 0;
  enc[3] = 256;
  enc[4] = 2;
  enc[5] = enc[6] = 0xffffffffu;
  DeviceBuffer<uint32_t> din(enc.size(), 0);
  DeviceBuffer<float> dout(n);
  din.upload(enc);
  ASSERT_EQ(gradcompEliasDecode(din.get(), n, &params, dout.get(), 0, stream), gradcompSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  const std::vector<float> out = dout.download(n);
  for (size_t i = 0; i < 512; ++i) ASSERT_TRUE(isnan(out[i])) << i;
}

// Random bit flips of valid encodings: the GPU decoder finishes without a
// CUDA error and writes only the n outputs (guard floats stay zero).
TEST_F(ReliabilityGpu, EliasDecoderSurvivesBitFlips) {
  std::mt19937_64 rng(16005);
  for (int it = 0; it < 200; ++it) {
    const size_t n = 1 + rng() % 4000;
    const gradcompEliasParams_t p = {1 + (int)(rng() % 50), 32 * (1 + (int)(rng() % 8)),
                                     (gradcompEliasCode_t)(rng() % 2), gradcompEliasScaleMax};
    const std::vector<float> x = gctest::normal(n, rng());
    const size_t maxBytes = gradcompEliasMaxEncodedBytes(n, &p);
    std::vector<uint32_t> enc(maxBytes / 4);
    size_t bytes = 0;
    ASSERT_EQ(gradcompEliasEncodeHost(x.data(), ncclFloat32, nullptr, n, &p, rng(), enc.data(),
                                      maxBytes, &bytes),
              gradcompSuccess);
    enc.resize(bytes / 4);
    for (int k = 0; k < 4; ++k) enc[rng() % enc.size()] ^= 1u << (rng() % 32);
    // The header's stream length may now point past the buffer: give the
    // decoder only what the buffer holds, as the comm's algorithm does.
    DeviceBuffer<uint32_t> din(enc.size(), 0);
    DeviceBuffer<float> dout(n + 64, 0);
    din.upload(enc);
    const size_t header = gradcompEliasHeaderBytes(n, p.bucketSize);
    gc::elias::Params ep{p.levels, p.bucketSize, (gc::elias::Code)p.code, gc::elias::Norm::Max};
    ASSERT_EQ(gc::cuda::eliasDecode(din.get(), n, ep, dout.get(), false, stream,
                                    (uint32_t)((bytes - header) / 4)),
              cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess) << "case " << it;
    const std::vector<float> guard = dout.download(64, n);
    for (float g : guard) ASSERT_EQ(g, 0.0f) << "case " << it;
  }
}

}  // namespace
