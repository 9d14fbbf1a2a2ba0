// Sparse kernels against the host reference, bit for bit: accumulation with
// clipping and momentum correction, both selectors (threshold selection's
// non-finite-only slots when more qualify than fit included), commit, scatter-add and
// rand-k; a captured graph of a selection replays to the eager result.
#include <math.h>
#include <string.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "backends/sparse_ops.h"
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
  // The last count passes the kernels' 65536-block grid (grid-stride loops
  // go round more than once); clipped only, to keep the host side short.
  for (size_t n :
       {(size_t)1, (size_t)1000, (size_t)4097, (size_t)300000, (size_t)65536 * 256 + 4097}) {
    for (float clip : {0.0f, 3.0f}) {
      if (n > (1u << 24) && clip == 0.0f) continue;
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
      DeviceBuffer<char> scratch(gc::cuda::sparseScratchBytes(n, 1, 0));
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

// Rand-k's non-finite flag (16-byte loads of kItems per thread when v is
// aligned, one element at a time otherwise): the host's flag for a NaN or an
// Inf at the first, a middle and the last element, or none, at every
// alignment of v, counts below one load, of whole tiles and with a tail;
// and past the grid's 65536 tiles, where each thread reads a second tile.
TEST_F(SparseGpu, NonFiniteFlagAnyPositionAlignmentAndPass) {
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(),
                            -std::numeric_limits<float>::infinity()};
  for (size_t n : {(size_t)1, (size_t)3, (size_t)4096, (size_t)4096 * 3 + 5, (size_t)70001}) {
    for (size_t off = 0; off < 4; ++off) {
      for (int where = 0; where < 4; ++where) {  // none, first, middle, last
        for (float special : specials) {
          SCOPED_TRACE(testing::Message() << "n=" << n << " offset=" << off << " where=" << where
                                          << " special=" << special);
          std::vector<float> v = gctest::normal(n, 17 + n);
          if (where > 0) v[where == 1 ? 0 : where == 2 ? n / 2 : n - 1] = special;
          DeviceBuffer<float> dv(n + 4), dflag(1);
          dv.upload(v, off);
          float flag = 1.0f;
          gc::host::sparseNonFiniteFlag(v.data(), n, &flag);
          ASSERT_EQ(gc::cuda::sparseNonFiniteFlag(dv.get(off), n, dflag.get(), stream),
                    cudaSuccess);
          ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
          ASSERT_EQ(memcmp(dflag.download(1).data(), &flag, 4), 0);
          if (where == 0) break;  // one special is enough when there is none
        }
      }
    }
  }
  // 2^28 + 4097 zeros (1 GiB, filled on the device) with an Inf only in the
  // last element, which the second pass of the grid-stride loop reads.
  const size_t big = ((size_t)1 << 28) + 4097;
  DeviceBuffer<float> dv(big), dflag(1);  // zeroed and settled by its constructor
  ASSERT_EQ(gc::cuda::sparseNonFiniteFlag(dv.get(), big, dflag.get(), stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(dflag.download(1)[0], 0.0f);
  const float inf = std::numeric_limits<float>::infinity();
  ASSERT_EQ(cudaMemcpy(dv.get(big - 1), &inf, 4, cudaMemcpyHostToDevice), cudaSuccess);
  gctest::settle();  // a pageable copy may land after the non-blocking stream's kernel starts
  ASSERT_EQ(gc::cuda::sparseNonFiniteFlag(dv.get(), big, dflag.get(), stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  std::vector<float> one = {inf};
  float want = 1.0f;
  gc::host::sparseNonFiniteFlag(one.data(), 1, &want);  // the canonical NaN
  EXPECT_EQ(memcmp(dflag.download(1).data(), &want, 4), 0);
}

// AccumulateEqualsHost puts a NaN in every g of more than one element, so its
// squared norm is NaN and its clipping scale 1: the norm's chunk sums, tree
// and final pass over more than 256 chunks (n > 2^20) reach v only through a
// finite g. Here g is finite, in each input type, and its norm is far above
// the threshold, so v = s*g with s < 1 shows the device's norm bit for bit
// (no momentum, no v in: v is s*g itself).
TEST_F(SparseGpu, ClippedAccumulateOfFiniteGradientEqualsHost) {
  for (size_t n : {(size_t)4097, (size_t)300000, (size_t)65536 * 256 + 4097}) {
    const std::vector<float> x = gctest::normal(n, 11 + n, 2.0f);
    for (DType t : {DType::F32, DType::F16, DType::BF16}) {
      std::vector<uint16_t> g(n * 2);  // fp32 bits, or one half per element
      for (size_t i = 0; i < n; ++i) gc::storeFromFloat(g.data(), t, i, x[i]);
      const float clip = 3.0f;
      const float scale = gc::sparse::clipScale(gc::host::sparseSumSq(g.data(), t, n), clip);
      ASSERT_LT(scale, 0.5f) << "n=" << n << ": the case must clip";
      std::vector<float> v(n);
      DeviceBuffer<uint16_t> dg(n * 2);
      DeviceBuffer<float> dv(n);
      DeviceBuffer<char> scratch(gc::cuda::sparseScratchBytes(n, 1, 0));
      dg.upload(g);
      ASSERT_EQ(gc::cuda::sparseAccumulate(dg.get(), t, n, clip, 0.9f, nullptr, dv.get(), false,
                                           nullptr, scratch.get(), stream),
                cudaSuccess);
      gc::host::sparseAccumulate(g.data(), t, n, clip, 0.9f, nullptr, v.data(), false, nullptr);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      ASSERT_EQ(memcmp(dv.download(n).data(), v.data(), n * 4), 0)
          << "n=" << n << " dtype=" << (int)t;
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
          DeviceBuffer<uint64_t> dsel(1), drejected(1);
          DeviceBuffer<uint32_t> dflag(1);
          DeviceBuffer<uint16_t> dval(p.kmax);
          DeviceBuffer<char> scratch(gc::cuda::sparseScratchBytes(n, p.sample, p.kmax));
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
                                               dout.get(), dflag.get(), drejected.get(), stream),
                    cudaSuccess);
          ASSERT_TRUE(gc::host::sparseScatterAdd(idx.data(), val.data(), DType::F16, p.kmax, n,
                                                 out.data()));
          ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
          ASSERT_EQ(dval.download(p.kmax), val);
          ASSERT_EQ(memcmp(dv.download(n).data(), hv.data(), n * 4), 0);
          ASSERT_EQ(memcmp(dout.download(n).data(), out.data(), n * 4), 0);
          // A selector's slots always pass the wire rule.
          ASSERT_EQ(drejected.download(1)[0], 0u);
        }
      }
    }
  }
}

// The compactions' edges (a tile is 256 threads x 16 elements; the exact
// selector's and selectThresholdLookback's tiles get the counts of earlier
// tiles by decoupled look-back, selectThreshold's stage theirs and a prefix
// places them, the look-back its fallback): sizes within one
// thread's run, one tile, at and past tile edges, and 1025 tiles, more than
// an H100/H200 holds resident at once; v aligned (16-byte loads) and one
// float past it (scalar loads); exact selections whose tie cut falls on a
// thread edge, a tile edge and mid-thread (all entries equal), with ties
// left over, and more NaN/Inf (NaN payloads differ) than slots; threshold
// selections exceeding kmax. Indices and count equal the host's.
TEST_F(SparseGpu, CompactionEdgesEqualHost) {
  const size_t tile = 4096;
  for (size_t n : {(size_t)1, (size_t)15, (size_t)16, (size_t)17, tile - 1, tile, tile + 1,
                   3 * tile + 5, ((size_t)1 << 22) + 7}) {
    std::vector<std::vector<float>> cases;
    cases.push_back(std::vector<float>(n, 0.25f));  // every entry a tie
    std::vector<float> someLarger(n, 0.25f);
    for (size_t i = 3; i < n; i += 997) someLarger[i] = -1.0f;
    cases.push_back(someLarger);
    std::vector<float> nonFinite = gctest::normal(n, 31 + n);
    for (size_t i = 0; i < n; ++i) {
      if (i % 3 == 1) {
        uint32_t b = 0x7fc00000u | (uint32_t)(i % 7) | (i % 2 ? 0x80000000u : 0u);
        memcpy(&nonFinite[i], &b, 4);
      } else if (i % 5 == 2) {
        nonFinite[i] = i % 2 ? std::numeric_limits<float>::infinity()
                             : -std::numeric_limits<float>::infinity();
      }
    }
    cases.push_back(nonFinite);
    cases.push_back(gctest::normal(n, 41 + n));
    cases.push_back(std::vector<float>(n, 0.0f));  // nothing to select
    // Ties everywhere (more qualify than kmax) and one NaN at the end: the
    // threshold selector's slots hold the NaN alone (nonFiniteOnlyKernel).
    std::vector<float> lateNan(n, 0.25f);
    lateNan[n - 1] = std::numeric_limits<float>::quiet_NaN();
    cases.push_back(lateNan);
    std::vector<size_t> ks = {1, 16, 17, tile, tile + 17, n / 2 + 1, n};
    for (size_t& k : ks) k = std::min(k, n);
    DeviceBuffer<float> dv(n + 1);
    DeviceBuffer<uint32_t> didx(n);
    DeviceBuffer<uint64_t> dsel(1);
    const size_t scratchBytes = gc::cuda::sparseScratchBytes(n, n, n);
    DeviceBuffer<char> scratch(scratchBytes);
    for (size_t c = 0; c < cases.size(); ++c) {
      const std::vector<float>& v = cases[c];
      for (size_t off : {(size_t)0, (size_t)1}) {
        dv.upload(v, off);
        auto check = [&](const char* what, size_t slots, const std::vector<uint32_t>& idx,
                         uint64_t sel) {
          ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
          ASSERT_EQ(didx.download(slots), idx)
              << what << " n=" << n << " case=" << c << " offset=" << off;
          ASSERT_EQ(dsel.download(1)[0], sel)
              << what << " n=" << n << " case=" << c << " offset=" << off;
        };
        for (size_t k : ks) {
          std::vector<uint32_t> idx(k);
          uint64_t sel = 0;
          gc::host::selectExact(v.data(), n, k, idx.data(), &sel);
          ASSERT_EQ(gc::cuda::selectExact(dv.get(off), n, k, didx.get(), dsel.get(), scratch.get(),
                                          stream),
                    cudaSuccess);
          ASSERT_NO_FATAL_FAILURE(check(("exact k=" + std::to_string(k)).c_str(), k, idx, sel));
        }
        for (double density : {0.001, 0.05}) {
          const Plan p = gc::sparse::makePlan(n, density, false, 2, 0.01);
          std::vector<uint32_t> idx(p.kmax);
          uint64_t sel = 0;
          gc::host::selectThreshold(v.data(), n, p, 99 + n, idx.data(), &sel);
          ASSERT_EQ(gc::cuda::selectThreshold(dv.get(off), n, p, gc::plainKey(99 + n), didx.get(),
                                              dsel.get(), scratch.get(), stream),
                    cudaSuccess);
          ASSERT_NO_FATAL_FAILURE(
              check(("threshold density=" + std::to_string(density)).c_str(), p.kmax, idx, sel));
          // The look-back compaction (gradcomp_kernels_perf's
          // topk_threshold_lookback): the same slots and count. Then the
          // staged one again over slots and a scratch filled with garbage,
          // twice on one scratch: each call starts afresh, its fallback
          // included (every entry a tie, more qualifying than kmax).
          ASSERT_EQ(cudaMemsetAsync(didx.get(), 0x5a, p.kmax * 4, stream), cudaSuccess);
          ASSERT_EQ(
              gc::cuda::selectThresholdLookback(dv.get(off), n, p, gc::plainKey(99 + n), didx.get(),
                                                dsel.get(), scratch.get(), stream),
              cudaSuccess);
          ASSERT_NO_FATAL_FAILURE(
              check(("look-back threshold density=" + std::to_string(density)).c_str(), p.kmax, idx,
                    sel));
          ASSERT_EQ(cudaMemsetAsync(scratch.get(), 0x5a, scratchBytes, stream), cudaSuccess);
          for (int again = 0; again < 2; ++again) {
            ASSERT_EQ(cudaMemsetAsync(didx.get(), 0x5a, p.kmax * 4, stream), cudaSuccess);
            ASSERT_EQ(gc::cuda::selectThreshold(dv.get(off), n, p, gc::plainKey(99 + n), didx.get(),
                                                dsel.get(), scratch.get(), stream),
                      cudaSuccess);
            ASSERT_NO_FATAL_FAILURE(check(("threshold again density=" + std::to_string(density) +
                                           " call=" + std::to_string(again))
                                              .c_str(),
                                          p.kmax, idx, sel));
          }
        }
      }
    }
  }
}

// The compaction over many waves of tiles: 4097 tiles, about eight times
// what an H100/H200 holds resident at once (compactKernel: 60 registers, 4
// blocks of 256 per SM), so most tiles find their predecessors still
// partial or not yet started and look back over many of them. 32 magnitudes
// in a scrambled order: every tile holds ties of every class, so each exact
// cut falls on a tie class spread over all tiles; threshold selections with
// kmax below and at n; v aligned and one float past it.
TEST_F(SparseGpu, CompactionOverManyWavesEqualsHost) {
  const size_t n = ((size_t)1 << 24) + 9;
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t h = (uint32_t)i * 2654435761u;
    v[i] = (float)(h >> 27) * (h & 1 ? 0.125f : -0.125f);
  }
  const Plan lo = gc::sparse::makePlan(n, 0.01, false, 2, 0.01);
  const Plan all = gc::sparse::makePlan(n, 0.6, false, 2, 0.01);
  ASSERT_EQ(all.kmax, n);
  DeviceBuffer<float> dv(n + 1);
  DeviceBuffer<uint32_t> didx(n);
  DeviceBuffer<uint64_t> dsel(1);
  DeviceBuffer<char> scratch(gc::cuda::sparseScratchBytes(n, std::max(lo.sample, all.sample),
                                                          std::max(lo.kmax, all.kmax)));
  for (size_t off : {(size_t)0, (size_t)1}) {
    dv.upload(v, off);
    for (size_t k : {(size_t)1, n / 3 + 1, n - 4097}) {
      std::vector<uint32_t> idx(k);
      uint64_t sel = 0;
      gc::host::selectExact(v.data(), n, k, idx.data(), &sel);
      ASSERT_EQ(
          gc::cuda::selectExact(dv.get(off), n, k, didx.get(), dsel.get(), scratch.get(), stream),
          cudaSuccess);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      ASSERT_EQ(didx.download(k), idx) << "exact k=" << k << " offset=" << off;
      ASSERT_EQ(dsel.download(1)[0], sel) << "exact k=" << k << " offset=" << off;
    }
    for (const Plan& p : {lo, all}) {
      std::vector<uint32_t> idx(p.kmax);
      uint64_t sel = 0;
      gc::host::selectThreshold(v.data(), n, p, 7, idx.data(), &sel);
      ASSERT_EQ(gc::cuda::selectThreshold(dv.get(off), n, p, gc::plainKey(7), didx.get(),
                                          dsel.get(), scratch.get(), stream),
                cudaSuccess);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      ASSERT_EQ(didx.download(p.kmax), idx) << "threshold kmax=" << p.kmax << " offset=" << off
                                            << ": the staged compaction, 4097 tiles staging in "
                                               "whatever order their atomics come";
      ASSERT_EQ(dsel.download(1)[0], sel) << "threshold kmax=" << p.kmax << " offset=" << off;
      // The look-back compaction: 4097 tiles, each waiting on the counts
      // of those before it.
      ASSERT_EQ(cudaMemsetAsync(didx.get(), 0x5a, p.kmax * 4, stream), cudaSuccess);
      ASSERT_EQ(gc::cuda::selectThresholdLookback(dv.get(off), n, p, gc::plainKey(7), didx.get(),
                                                  dsel.get(), scratch.get(), stream),
                cudaSuccess);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      ASSERT_EQ(didx.download(p.kmax), idx) << "look-back kmax=" << p.kmax << " offset=" << off;
      ASSERT_EQ(dsel.download(1)[0], sel) << "look-back kmax=" << p.kmax << " offset=" << off;
    }
  }
}

// The staged compaction past one pass of its prefix block (16384 tiles of
// 4096: n > 2^26), at 0.1% (the staging holds every selection) and at 60%
// (kmax = n), on one scratch: the host's slots and count.
TEST_F(SparseGpu, StagedCompactionPastOnePrefixPassEqualsHost) {
  const size_t n = ((size_t)1 << 26) + 3 * 4096 + 5;
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t h = (uint32_t)i * 2654435761u;
    v[i] = (float)(h >> 20) * (h & 1 ? 1e-3f : -1e-3f);
  }
  const Plan lo = gc::sparse::makePlan(n, 0.001, false, 2, 1e-4);
  const Plan all = gc::sparse::makePlan(n, 0.6, false, 2, 1e-4);
  DeviceBuffer<float> dv(n);
  DeviceBuffer<uint32_t> didx(n);
  DeviceBuffer<uint64_t> dsel(1);
  DeviceBuffer<char> scratch(gc::cuda::sparseScratchBytes(n, std::max(lo.sample, all.sample),
                                                          std::max(lo.kmax, all.kmax)));
  dv.upload(v);
  for (const Plan& p : {lo, all, lo}) {
    std::vector<uint32_t> idx(p.kmax);
    uint64_t sel = 0;
    gc::host::selectThreshold(v.data(), n, p, 11, idx.data(), &sel);
    ASSERT_EQ(cudaMemsetAsync(didx.get(), 0x5a, p.kmax * 4, stream), cudaSuccess);
    ASSERT_EQ(gc::cuda::selectThreshold(dv.get(), n, p, gc::plainKey(11), didx.get(), dsel.get(),
                                        scratch.get(), stream),
              cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    ASSERT_EQ(didx.download(p.kmax), idx) << "kmax=" << p.kmax;
    ASSERT_EQ(dsel.download(1)[0], sel) << "kmax=" << p.kmax;
  }
}

// Selections through the CUDA backend's SparseOps as the sparse
// reduce-scatter makes them: slices of one v (odd length, so most slices are
// not 16-byte aligned) selected one after another with one scratch, the
// threshold and exact selectors alternating, a slice whose threshold slots
// hold its NaN alone (nonFiniteOnlyKernel writes that slice's count) and one
// whose exact cut falls among ties spread over its 25 tiles.
// The slots equal the CPU backend's, and the count summed on the device
// (each select's count in the scratch, added to the call's sum) equals the
// CPU backend's sum once published; a second round starts again from 0.
TEST_F(SparseGpu, SparseOpsSlicesEqualCpuBackendAndSumTheirCounts) {
  const size_t m = 100003, parts = 5;
  const size_t n = m * parts;
  std::vector<float> v = gctest::normal(n, 77);
  for (size_t i = 2 * m; i < 3 * m; ++i) v[i] = 0.25f;  // slice 2: all qualify, one NaN
  v[2 * m + m / 2] = std::numeric_limits<float>::quiet_NaN();
  // Slice 3 (exact): 1031 ties above the rest for k = 1001, the cut near its end.
  for (size_t i = 3 * m; i < 4 * m; i += 97) v[i] = 8.0f;
  const Plan p = gc::sparse::makePlan(m, 0.01, false, 2, 0.01);
  std::unique_ptr<gc::SparseOps> gpu = gc::makeCudaSparseOps(), cpu = gc::makeCpuSparseOps();
  gpu->setStream(stream);
  ASSERT_EQ(gpu->reserve(), gradcompSuccess);
  DeviceBuffer<float> dv(n);
  DeviceBuffer<uint32_t> didx(parts * p.kmax);
  DeviceBuffer<char> scratch(gpu->scratchBytes(m, p.sample, p.kmax));
  dv.upload(v);
  std::vector<uint32_t> idx(parts * p.kmax, gc::sparse::kEmptySlot);
  for (int round = 0; round < 2; ++round) {
    ASSERT_EQ(gpu->resetSelected(), gradcompSuccess);
    ASSERT_EQ(cpu->resetSelected(), gradcompSuccess);
    for (size_t j = 0; j < parts; ++j) {
      uint32_t* h = idx.data() + j * p.kmax;
      uint32_t* d = didx.get(j * p.kmax);
      if (j % 2 == 1) {
        ASSERT_EQ(cpu->selectExact(v.data() + j * m, m, p.k, h, nullptr), gradcompSuccess);
        ASSERT_EQ(gpu->selectExact(dv.get(j * m), m, p.k, d, scratch.get()), gradcompSuccess);
      } else {
        const gc::KeySpec key = gc::plainKey(500 + j + round);
        ASSERT_EQ(cpu->selectThreshold(v.data() + j * m, m, p, key, h, nullptr), gradcompSuccess);
        ASSERT_EQ(gpu->selectThreshold(dv.get(j * m), m, p, key, d, scratch.get()),
                  gradcompSuccess);
      }
    }
    ASSERT_EQ(gpu->publishSelected(), gradcompSuccess);
    ASSERT_EQ(cpu->publishSelected(), gradcompSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    // The cases are what they claim: slice 2 sends its NaN alone, slice 3 its
    // first k ties.
    ASSERT_EQ(p.k, 1001u);
    ASSERT_EQ(idx[2 * p.kmax], (uint32_t)(m / 2));
    ASSERT_EQ(idx[2 * p.kmax + 1], gc::sparse::kEmptySlot);
    ASSERT_EQ(idx[3 * p.kmax + p.k - 1], (uint32_t)(97 * (p.k - 1)));
    for (size_t j = 0; j < parts; ++j) {
      const size_t slots = j % 2 == 1 ? p.k : p.kmax;
      const std::vector<uint32_t> want(idx.begin() + j * p.kmax, idx.begin() + j * p.kmax + slots);
      ASSERT_EQ(didx.download(slots, j * p.kmax), want) << "round " << round << " slice " << j;
    }
    EXPECT_EQ(gpu->lastSelected(), cpu->lastSelected()) << "round " << round;
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

// Both selectors captured into one graph (sharing one scratch), replayed
// over three different inputs: each replay re-initializes the staging's
// count, the look-back's tile states and the radix state, so the later ones
// equal the host on their inputs too (a stale count or stale tile states
// from an earlier replay would shift their slots). The third input is all
// ties with a NaN last: more entries qualify than kmax, so the threshold
// selector's look-back fallback and its non-finite pass run in the graph.
TEST_F(SparseGpu, CapturedSelectionReplaysToEagerResult) {
  const size_t n = 1 << 20;
  Plan p = gc::sparse::makePlan(n, 0.01, false, 2, 0.01);
  DeviceBuffer<float> dv(n);
  DeviceBuffer<uint32_t> didx(p.kmax), dexact(p.k);
  DeviceBuffer<uint64_t> dsel(2);
  DeviceBuffer<char> scratch(gc::cuda::sparseScratchBytes(n, p.sample, p.kmax));
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  ASSERT_EQ(gc::cuda::selectThreshold(dv.get(), n, p, gc::plainKey(5), didx.get(), dsel.get(),
                                      scratch.get(), stream),
            cudaSuccess);
  ASSERT_EQ(
      gc::cuda::selectExact(dv.get(), n, p.k, dexact.get(), dsel.get(1), scratch.get(), stream),
      cudaSuccess);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int replay = 0; replay < 3; ++replay) {
    std::vector<float> v = gctest::normal(n, 9 + replay);
    if (replay == 1) {
      for (size_t i = 0; i < n; i += 3) v[i] = 4.0f;  // ties at the exact cut
    } else if (replay == 2) {
      v.assign(n, 0.25f);
      v[n - 1] = std::numeric_limits<float>::quiet_NaN();
    }
    dv.upload(v);
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    std::vector<uint32_t> idx(p.kmax), exact(p.k);
    uint64_t sel = 0, selExact = 0;
    gc::host::selectThreshold(v.data(), n, p, 5, idx.data(), &sel);
    gc::host::selectExact(v.data(), n, p.k, exact.data(), &selExact);
    EXPECT_EQ(didx.download(p.kmax), idx) << "replay " << replay;
    EXPECT_EQ(dexact.download(p.k), exact) << "replay " << replay;
    EXPECT_EQ(dsel.download(2), (std::vector<uint64_t>{sel, selExact})) << "replay " << replay;
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

}  // namespace
