// Sparse kernels against the host reference, bit for bit: accumulation with
// clipping and momentum correction, both selectors, commit, scatter-add and
// rand-k; a captured graph of a selection replays to the eager result.
#include <math.h>
#include <string.h>

#include <limits>
#include <vector>

#include "gpu_util.h"
#include "kernels/sparse_math.cuh"
#include "plugin/codecs/sparse.h"
#include "tests/common/test_util.h"

namespace {

using gc::DType;
using gc::sparse::Plan;
using gctest::DeviceBuffer;

class SparseGpu : public gctest::GpuTest {};

std::vector<std::vector<float>> data(size_t n) {
  std::vector<std::vector<float>> d;
  d.push_back(gctest::normal(n, 1));
  d.push_back(std::vector<float>(n, 0.25f));
  d.push_back(std::vector<float>(n, 0.0f));
  auto nan = gctest::normal(n, 2);
  nan[n / 2] = std::numeric_limits<float>::quiet_NaN();
  nan[n / 3] = 1e30f;
  d.push_back(nan);
  return d;
}

TEST_F(SparseGpu, AccumulateEqualsHost) {
  for (size_t n : {1, 1000, 4097, 300000}) {
    for (float clip : {0.0f, 3.0f}) {
      auto g = gctest::normal(n, 5 + n, 2.0f);
      // Non-finite gradients and an overflow of v: kept back by settle.
      if (n > 1) {
        g[n / 2] = std::numeric_limits<float>::quiet_NaN();
        g[n / 3] = -std::numeric_limits<float>::infinity();
      }
      auto u = gctest::normal(n, 6), v = gctest::normal(n, 7);
      if (n > 4) v[n / 4] = 3e38f, g[n / 4] = 3e38f;
      std::vector<float> keep(n);
      DeviceBuffer<float> dg(n), du(n), dv(n), dkeep(n), dflag(1);
      DeviceBuffer<char> scratch(gc::cuda::sparseScratchBytes(n, 1));
      dg.upload(g), du.upload(u), dv.upload(v);
      ASSERT_EQ(gc::cuda::sparseAccumulate(dg.get(), DType::F32, n, clip, 0.9f, du.get(), dv.get(),
                                           true, dkeep.get(), scratch.get(), stream),
                cudaSuccess);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      gc::host::sparseAccumulate(g.data(), DType::F32, n, clip, 0.9f, u.data(), v.data(), true,
                                 keep.data());
      ASSERT_EQ(memcmp(du.download(n).data(), u.data(), n * 4), 0) << "n=" << n;
      ASSERT_EQ(memcmp(dv.download(n).data(), v.data(), n * 4), 0) << "n=" << n;
      ASSERT_EQ(memcmp(dkeep.download(n).data(), keep.data(), n * 4), 0) << "n=" << n;
      float flag = 1.0f;
      ASSERT_EQ(gc::cuda::sparseNonFiniteFlag(dv.get(), n, dflag.get(), stream), cudaSuccess);
      gc::host::sparseNonFiniteFlag(v.data(), n, &flag);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      ASSERT_EQ(memcmp(dflag.download(1).data(), &flag, 4), 0) << "n=" << n;
      for (bool clear : {false, true}) {
        ASSERT_EQ(gc::cuda::sparseSettle(dv.get(), dkeep.get(), du.get(), n, clear, stream),
                  cudaSuccess);
        gc::host::sparseSettle(v.data(), keep.data(), u.data(), n, clear);
        ASSERT_EQ(gc::cuda::sparseApplyFlag(dg.get(), n, dflag.get(), stream), cudaSuccess);
        gc::host::sparseApplyFlag(g.data(), n, &flag);
        ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
        ASSERT_EQ(memcmp(du.download(n).data(), u.data(), n * 4), 0) << "n=" << n;
        ASSERT_EQ(memcmp(dv.download(n).data(), v.data(), n * 4), 0) << "n=" << n;
        ASSERT_EQ(memcmp(dg.download(n).data(), g.data(), n * 4), 0) << "n=" << n;
      }
    }
  }
}

TEST_F(SparseGpu, SelectorsCommitScatterEqualHost) {
  for (size_t n : {1, 700, 4096, 100003, 1 << 20}) {
    for (const auto& v : data(n)) {
      for (bool exact : {false, true}) {
        for (double density : {0.001, 0.01}) {
          Plan p = gc::sparse::makePlan(n, density, exact, 2, 0.01);
          DeviceBuffer<float> dv(n), dout(n);
          DeviceBuffer<uint32_t> didx(p.kmax);
          DeviceBuffer<uint64_t> dsel(1);
          DeviceBuffer<uint16_t> dval(p.kmax);
          DeviceBuffer<char> scratch(gc::cuda::sparseScratchBytes(n, p.sample));
          dv.upload(v);
          std::vector<uint32_t> idx(p.kmax);
          uint64_t sel = 0;
          const uint64_t key = 1234 + n;
          if (exact) {
            ASSERT_EQ(gc::cuda::selectExact(dv.get(), n, p.k, didx.get(), dsel.get(), scratch.get(),
                                            stream),
                      cudaSuccess);
            gc::host::selectExact(v.data(), n, p.k, idx.data(), &sel);
          } else {
            ASSERT_EQ(gc::cuda::selectThreshold(dv.get(), n, p, gc::plainKey(key), didx.get(),
                                                dsel.get(), scratch.get(), stream),
                      cudaSuccess);
            gc::host::selectThreshold(v.data(), n, p, key, idx.data(), &sel);
          }
          ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
          ASSERT_EQ(didx.download(p.kmax), idx) << "n=" << n << " exact=" << exact;
          ASSERT_EQ(dsel.download(1)[0], sel);
          std::vector<float> hv = v;
          std::vector<uint16_t> val(p.kmax);
          ASSERT_EQ(gc::cuda::sparseCommit(didx.get(), p.kmax, DType::F16, dval.get(), dv.get(),
                                           nullptr, stream),
                    cudaSuccess);
          gc::host::sparseCommit(idx.data(), p.kmax, DType::F16, val.data(), hv.data(), nullptr);
          std::vector<float> out(n, 0.0f);
          cudaMemsetAsync(dout.get(), 0, n * 4, stream);
          ASSERT_EQ(gc::cuda::sparseScatterAdd(didx.get(), dval.get(), DType::F16, p.kmax, n,
                                               dout.get(), stream),
                    cudaSuccess);
          ASSERT_TRUE(gc::host::sparseScatterAdd(idx.data(), val.data(), DType::F16, p.kmax, n,
                                                 out.data()));
          ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
          ASSERT_EQ(dval.download(p.kmax), val);
          ASSERT_EQ(memcmp(dv.download(n).data(), hv.data(), n * 4), 0);
          ASSERT_EQ(memcmp(dout.download(n).data(), out.data(), n * 4), 0);
        }
      }
    }
  }
}

TEST_F(SparseGpu, RandkEqualsHost) {
  for (size_t n : {1, 1000, 1 << 20}) {
    const size_t k = (n + 99) / 100;
    DeviceBuffer<uint32_t> didx(k);
    ASSERT_EQ(gc::cuda::randkIndices(n, k, gc::plainKey(77), didx.get(), stream), cudaSuccess);
    std::vector<uint32_t> idx(k);
    gc::host::randkIndices(n, k, 77, idx.data());
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    ASSERT_EQ(didx.download(k), idx);
  }
}

TEST_F(SparseGpu, CapturedSelectionReplaysToEagerResult) {
  const size_t n = 1 << 20;
  auto v = gctest::normal(n, 9);
  Plan p = gc::sparse::makePlan(n, 0.01, false, 2, 0.01);
  DeviceBuffer<float> dv(n);
  DeviceBuffer<uint32_t> didx(p.kmax);
  DeviceBuffer<uint64_t> dsel(1);
  DeviceBuffer<char> scratch(gc::cuda::sparseScratchBytes(n, p.sample));
  dv.upload(v);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  ASSERT_EQ(gc::cuda::selectThreshold(dv.get(), n, p, gc::plainKey(5), didx.get(), dsel.get(),
                                      scratch.get(), stream),
            cudaSuccess);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  std::vector<uint32_t> idx(p.kmax);
  uint64_t sel = 0;
  gc::host::selectThreshold(v.data(), n, p, 5, idx.data(), &sel);
  EXPECT_EQ(didx.download(p.kmax), idx);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

}  // namespace
