// Pipelined compressed reduce-scatter (GRADCOMP_PIPELINE_BYTES) on the CPU
// backend: the same algorithm code cuts each block into bucket-aligned pieces
// (as two-shot cuts its chunks), and every output, residual and wire byte
// count is bit for bit the unpipelined call's, which in turn is the serial
// reference (ref_rs.h, ref_hier_rs.h), over several steps of error feedback.
#include <gtest/gtest.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "gradcomp.h"
#include "kernels/qsgd_math.cuh"
#include "plugin/algorithms/algorithms.h"
#include "plugin/comm.h"
#include "tests/common/cpu_world.h"
#include "tests/common/ref_hier_rs.h"
#include "tests/common/ref_rs.h"
#include "tests/common/test_util.h"
#include "tests/common/world_checks.h"

namespace {

using gc::DType;
using namespace gctest::ref;

using gctest::rsResidual;

// Every rank's reduce-scatter of bufs[r] into out's block, keyed: the saved
// states then do not differ by the buffers' addresses.
std::vector<gradcompResult_t> runKeyed(gctest::CpuWorld& w, gctest::RsOutputs& out,
                                       std::vector<Rank>& bufs, DType t, size_t m, bool avg,
                                       bool inPlace) {
  return w.run([&](int r) {
    return gradcompReduceScatterKeyed(gctest::bufferOf(bufs[r], t),
                                      out.recv(bufs[r], r, t, m, inPlace), m, nccl(t),
                                      avg ? ncclAvg : ncclSum, w.comm(r), nullptr, 7);
  });
}

gradcompConfig_t rsConfig(size_t pipelineBytes, int localSize = 1,
                          gradcompRounding_t rounding = gradcompRoundStochastic) {
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.pipelineBytes = pipelineBytes;
  cfg.localSize = localSize;
  cfg.rounding = rounding;
  return cfg;
}

// From the description (docs/algorithms.md): a piece covers pipelineBytes/4
// elements of the call's input (N blocks of m), each block's share rounded up
// to whole buckets; one piece when that holds the block.
struct Cut {
  size_t piece, count;
};
Cut expectedCut(size_t pipelineBytes, int N, size_t m, size_t d) {
  if (pipelineBytes == 0) return {m, 1};
  const size_t share = (pipelineBytes / 4 + N - 1) / N;
  const size_t piece = std::max<size_t>(1, (share + d - 1) / d) * d;
  if (piece >= m) return {m, 1};
  return {piece, (m + piece - 1) / piece};
}

TEST(PipelineRsCpu, PiecesAreWholeBucketsOfEveryBlock) {
  gctest::CpuWorld world(4, rsConfig(0));
  gradcompComm& c = *world.comm(0);
  const size_t m = 2500;  // not a multiple of the bucket (64)
  const gc::Chunks ch = gc::equalBlocks(c, m, 4);
  ASSERT_EQ(ch.off.size(), 5u);
  for (int j = 0; j < 4; ++j) EXPECT_EQ(ch.len(j), m) << j;
  EXPECT_EQ(ch.off[2], 2 * m);
  EXPECT_EQ(ch.maxLen, m);
  EXPECT_EQ(gc::splitPieces(c, ch).count, 1u);  // off
  const struct {
    size_t bytes, piece, count;
  } cases[] = {
      {1, 64, 40},              // at least one bucket
      {4 * 4 * 64, 64, 40},     // exactly one bucket of every block
      {4 * 4 * 65, 128, 20},    // rounded up to whole buckets
      {4 * 4 * 1000, 1024, 3},  // does not divide the block
      {4 * 4 * 2500, 2500, 1},  // one piece holds the block: not pipelined
      {1u << 30, 2500, 1},
  };
  for (const auto& k : cases) {
    c.cfg.pipelineBytes = k.bytes;
    const gc::Pieces p = gc::splitPieces(c, ch);
    EXPECT_EQ(p.piece, k.piece) << k.bytes;
    EXPECT_EQ(p.count, k.count) << k.bytes;
    const Cut e = expectedCut(k.bytes, 4, m, 64);
    EXPECT_EQ(p.count, e.count) << k.bytes;
    size_t covered = 0;
    for (size_t q = 0; q < p.count; ++q) covered += p.len(m, q);
    EXPECT_EQ(covered, m) << k.bytes;
    EXPECT_EQ(gc::reduceScatterAlgorithm().pieces(c, m, 4), k.count) << k.bytes;
  }
}

// Wire bytes of one pipelined reduce-scatter, piece by piece from the
// description: each piece of every peer's block, encoded on its own.
size_t pieceWireBytes(const Cut& cut, int N, size_t m, int bits, int d) {
  size_t bytes = 0;
  for (size_t q = 0; q < cut.count; ++q) {
    const size_t len = std::min(cut.piece, m - q * cut.piece);
    bytes += (N - 1) * gc::qsgd::encodedBytes(len, bits, d);
  }
  return bytes;
}

// Pipelined and unpipelined worlds reduce-scatter the same inputs over
// several steps (error feedback carried): outputs equal each other and the
// serial reference bit for bit on every rank, residuals equal the
// reference's, saved states are the same bytes, the wire bytes are the sum
// of the pieces' encodings (the unpipelined count), piecesLast as predicted.
void checkPipelined(int N, DType t, bool avg, size_t m, size_t pieceElems, bool inPlace,
                    gradcompRounding_t rounding = gradcompRoundStochastic) {
  const int d = 64, bits = 4, steps = 3;
  // pieceElems per block: pipelineBytes is the whole input's share as fp32.
  const size_t pipelineBytes = pieceElems * 4 * N, n = N * m;
  SCOPED_TRACE(testing::Message() << "N=" << N << " dtype=" << (int)t << " avg=" << avg
                                  << " m=" << m << " piece=" << pieceElems << " inPlace=" << inPlace
                                  << " rounding=" << (int)rounding);
  const Cut cut = expectedCut(pipelineBytes, N, m, d);
  ASSERT_EQ(cut.piece, pieceElems);
  ASSERT_GT(cut.count, 1u) << "the case must actually pipeline";
  gctest::CpuWorld flat(N, rsConfig(0, 1, rounding)),
      piped(N, rsConfig(pipelineBytes, 1, rounding));
  std::vector<Rank> ref = makeInputs(N, n, t, 3 * m + N);
  std::vector<Rank> a = ref, b = ref;
  gctest::RsOutputs outA(N, m), outB(N, m);
  const gradcompConfig_t rc = rsConfig(0, 1, rounding);
  for (int step = 0; step < steps; ++step) {
    std::vector<Rank> in = makeInputs(N, n, t, 1000 * step + m + N);
    gctest::loadStep(in, ref, a);
    gctest::loadStep(in, ref, b);
    for (auto* w : {&flat, &piped}) {
      auto res = w == &flat ? runKeyed(*w, outA, a, t, m, avg, inPlace)
                            : runKeyed(*w, outB, b, t, m, avg, inPlace);
      for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    }
    const std::vector<std::vector<float>> expect =
        refReduceScatter(ref = in, t, m, rc, bits, step, avg);
    for (int r = 0; r < N; ++r) {
      const std::vector<float> got = outB.read(b[r], r, t, m, inPlace);
      const std::vector<float> base = outA.read(a[r], r, t, m, inPlace);
      ASSERT_EQ(memcmp(got.data(), base.data(), m * 4), 0) << "rank " << r << " step " << step;
      ASSERT_EQ(memcmp(got.data(), expect[r].data(), m * 4), 0) << "rank " << r << " step " << step;
      const float* res = rsResidual(piped.comm(r));
      ASSERT_NE(res, nullptr);
      ASSERT_EQ(memcmp(res, ref[r].residual.data(), n * 4), 0) << "residual of rank " << r;
    }
  }
  for (int r = 0; r < N; ++r) {
    EXPECT_EQ(gctest::savedState(piped.comm(r)), gctest::savedState(flat.comm(r)))
        << "state of rank " << r;
    gradcompStats_t sp, sf;
    ASSERT_EQ(gradcompGetStats(piped.comm(r), &sp), gradcompSuccess);
    ASSERT_EQ(gradcompGetStats(flat.comm(r), &sf), gradcompSuccess);
    EXPECT_EQ(sp.callsReduceScatter, (uint64_t)steps);
    EXPECT_EQ(sp.bytesOnWire, sf.bytesOnWire) << "rank " << r;
    EXPECT_EQ(sp.bytesOnWire, steps * pieceWireBytes(cut, N, m, bits, d)) << "rank " << r;
    EXPECT_EQ(sp.bytesOnWire, steps * (N - 1) * gc::qsgd::encodedBytes(m, bits, d));
    EXPECT_EQ(sp.piecesLast, cut.count) << "rank " << r;
    EXPECT_EQ(sf.piecesLast, 1u) << "rank " << r;
  }
}

TEST(PipelineRsCpu, ReduceScatterPipelinedEqualsUnpipelined) {
  for (int N = 2; N <= 8; ++N) {
    for (DType t : {DType::F32, DType::F16, DType::BF16}) {
      for (bool avg : {false, true}) {
        // Blocks that are and are not a multiple of the bucket; pieces of one
        // bucket, of three (not dividing the blocks) and of five.
        for (size_t m : {517ul, 1024ul}) {
          for (size_t piece : {64ul, 192ul, 320ul}) {
            checkPipelined(N, t, avg, m, piece, N % 2 == 1 && piece == 192);
            if (HasFatalFailure()) return;
          }
        }
      }
    }
  }
}

// Nearest rounding: the pieces' encodes round as the whole call's do.
TEST(PipelineRsCpu, ReduceScatterPipelinedNearestEqualsUnpipelined) {
  for (int N : {2, 3, 5, 8}) {
    for (DType t : {DType::F32, DType::BF16}) {
      checkPipelined(N, t, N % 2 == 1, 517, 192, N == 3, gradcompRoundNearest);
      if (HasFatalFailure()) return;
    }
  }
}

// The hierarchical reduce-scatter runs the flat one as its inter-node stage
// on the child comm, which inherits the config: that stage is pipelined,
// the results are the reference's and the unpipelined call's, and
// piecesLast counts the middle stage's pieces (k nodes' blocks of m).
TEST(PipelineRsCpu, HierMiddleStagePipelinedEqualsUnpipelined) {
  const int L = 2;
  const size_t m = 700;
  for (int N : {4, 6, 8}) {
    for (DType t : {DType::F32, DType::BF16}) {
      for (bool avg : {false, true}) {
        SCOPED_TRACE(testing::Message() << "N=" << N << " dtype=" << (int)t << " avg=" << avg);
        const int k = N / L;
        const size_t n = N * m, pipelineBytes = 4 * 128 * k;  // pieces of two buckets
        const Cut cut = expectedCut(pipelineBytes, k, m, 64);
        ASSERT_EQ(cut.count, 6u);
        gctest::CpuWorld flat(N, rsConfig(0, L)), piped(N, rsConfig(pipelineBytes, L));
        ASSERT_NE(piped.comm(0)->inter, nullptr) << "the world must be hierarchical";
        std::vector<Rank> ref = makeInputs(N, n, t, 11 * m + N);
        std::vector<Rank> a = ref, b = ref;
        gctest::RsOutputs outA(N, m), outB(N, m);
        const gradcompConfig_t rc = rsConfig(0, L);
        for (int step = 0; step < 3; ++step) {
          std::vector<Rank> in = makeInputs(N, n, t, 1000 * step + m + N);
          gctest::loadStep(in, ref, a);
          gctest::loadStep(in, ref, b);
          auto ra = runKeyed(flat, outA, a, t, m, avg, false);
          auto rb = runKeyed(piped, outB, b, t, m, avg, false);
          for (int r = 0; r < N; ++r) {
            ASSERT_EQ(ra[r], gradcompSuccess) << gradcompGetLastError();
            ASSERT_EQ(rb[r], gradcompSuccess) << gradcompGetLastError();
          }
          const std::vector<std::vector<float>> expect =
              refHierReduceScatter(ref = in, t, m, rc, rc.bits, step, avg, L);
          for (int r = 0; r < N; ++r) {
            const std::vector<float> got = outB.read(b[r], r, t, m, false);
            const std::vector<float> base = outA.read(a[r], r, t, m, false);
            ASSERT_EQ(memcmp(got.data(), base.data(), m * 4), 0)
                << "rank " << r << " step " << step;
            ASSERT_EQ(memcmp(got.data(), expect[r].data(), m * 4), 0)
                << "rank " << r << " step " << step;
            ASSERT_EQ(memcmp(rsResidual(piped.comm(r)), ref[r].residual.data(), n * 4), 0)
                << "residual of rank " << r;
          }
        }
        for (int r = 0; r < N; ++r) {
          EXPECT_EQ(gctest::savedState(piped.comm(r)), gctest::savedState(flat.comm(r)));
          gradcompStats_t sp, sf;
          ASSERT_EQ(gradcompGetStats(piped.comm(r), &sp), gradcompSuccess);
          ASSERT_EQ(gradcompGetStats(flat.comm(r), &sf), gradcompSuccess);
          EXPECT_EQ(sp.bytesOnWire, sf.bytesOnWire);
          EXPECT_EQ(sp.bytesInterNode, sf.bytesInterNode);
          EXPECT_EQ(sp.piecesLast, cut.count) << "rank " << r;
          EXPECT_EQ(sf.piecesLast, 1u) << "rank " << r;
        }
      }
    }
  }
}

// A reduce-scatter after a pipelined allreduce on the same comm reports its
// own pieces, not the allreduce's; the sparse methods do not pipeline.
TEST(PipelineRsCpu, PiecesLastIsTheReduceScattersOwn) {
  const int N = 4;
  const size_t m = 256, n = N * m;
  for (bool sparse : {false, true}) {
    gradcompConfig_t cfg = sparse ? gctest::sparseTestConfig(gradcompMethodTopk) : rsConfig(0);
    if (!sparse) cfg.algo = gradcompAlgoTwoShot;
    cfg.pipelineBytes = 4 * 64 * N;  // one bucket of every chunk and block
    gctest::CpuWorld world(N, cfg);
    std::vector<std::vector<float>> g(N), out(N, std::vector<float>(m)), big(N);
    for (int i = 0; i < N; ++i)
      g[i] = gctest::normal(n, 5 + i, 1.0f), big[i] = gctest::normal(4 * n, 9 + i, 1.0f);
    auto res = world.run([&](int r) {
      return gradcompAllReduce(big[r].data(), big[r].data(), 4 * n, ncclFloat32, ncclSum,
                               world.comm(r), nullptr);
    });
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    gradcompStats_t s;
    ASSERT_EQ(gradcompGetStats(world.comm(0), &s), gradcompSuccess);
    if (!sparse) EXPECT_EQ(s.piecesLast, 16u);  // chunks of 1024, pieces of 64
    res = gctest::reduceScatterSum(world, g, out, m);
    for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    ASSERT_EQ(gradcompGetStats(world.comm(0), &s), gradcompSuccess);
    EXPECT_EQ(s.piecesLast, sparse ? 1u : 4u) << "sparse=" << sparse;  // blocks of 256
  }
}

}  // namespace
