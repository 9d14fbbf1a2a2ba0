// Pipelined hierarchical allreduce (GRADCOMP_PIPELINE_BYTES with a two-shot
// middle stage) on the CPU world: the in-node reduce-scatter and allgather
// run piece by piece around the middle stage's pieces, and every output,
// residual and owner residual is bit for bit the unpipelined call's and the
// serial reference's (ref_hier.h), on every rank, over several steps; the
// compressed (inter-node) bytes are the same, the in-node bytes those of the
// packed piece blocks, derived here from the description.
#include <gtest/gtest.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "gradcomp.h"
#include "tests/common/cpu_world.h"
#include "tests/common/ref_hier.h"
#include "tests/common/test_util.h"
#include "tests/common/world_checks.h"

namespace {

using gc::DType;
using namespace gctest::ref;

// algo two-shot: the hierarchy's middle stage is two-shot at any node count.
gradcompConfig_t hierConfig(int L, size_t pipelineBytes, gradcompAlgo_t algo) {
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.localSize = L;
  cfg.algo = algo;
  cfg.pipelineBytes = pipelineBytes;
  return cfg;
}

// From the description (docs/algorithms.md, "Pipelined hierarchy"): the
// middle stage cuts every chunk of a shard into pieces of
// ceil(bytes/4/nodes) elements rounded up to whole buckets (one piece when
// that holds the shard's largest chunk); piece q of a shard is piece q of
// each of its chunks; the call has as many pieces as the longest shard, and
// the in-node collectives move, per piece, a block as long as the longest
// shard's piece q.
struct PipeShape {
  size_t pieces = 1;
  size_t moved = 0;     // elements per rank's block, all pieces
  size_t shardMax = 0;  // the unpipelined block
};

PipeShape pipeShape(size_t n, int L, int nodes, size_t bytes, size_t d) {
  PipeShape s;
  const std::vector<size_t> shard = split(n, L, d);
  const size_t share = (bytes / 4 + nodes - 1) / nodes;
  const size_t p = std::max<size_t>(1, (share + d - 1) / d) * d;
  std::vector<std::vector<size_t>> chunkLen(L);
  std::vector<size_t> piece(L);
  for (int k = 0; k < L; ++k) {
    const size_t len = shard[k + 1] - shard[k];
    s.shardMax = std::max(s.shardMax, len);
    const std::vector<size_t> ch = split(len, nodes, d);
    size_t maxc = 0;
    for (int c = 0; c < nodes; ++c) {
      chunkLen[k].push_back(ch[c + 1] - ch[c]);
      maxc = std::max(maxc, ch[c + 1] - ch[c]);
    }
    piece[k] = p < maxc ? p : maxc;
    if (piece[k]) s.pieces = std::max(s.pieces, (maxc + piece[k] - 1) / piece[k]);
  }
  for (size_t q = 0; q < s.pieces; ++q) {
    size_t block = 0;
    for (int k = 0; k < L; ++k) {
      size_t m = 0;
      for (size_t len : chunkLen[k]) {
        const size_t start = q * piece[k];
        m += len > start ? std::min(piece[k], len - start) : 0;
      }
      block = std::max(block, m);
    }
    s.moved += block;
  }
  return s;
}

void runKeyed(gctest::CpuWorld& w, std::vector<Rank>& bufs, DType t, size_t n, bool avg) {
  auto res = w.run([&](int r) {
    void* p = gctest::bufferOf(bufs[r], t);
    // Keyed: the saved states then do not differ by the buffers' addresses.
    return gradcompAllReduceKeyed(p, p, n, nccl(t), avg ? ncclAvg : ncclSum, w.comm(r), nullptr, 7);
  });
  for (int r = 0; r < w.size(); ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
}

// Pipelined and unpipelined worlds reduce the same inputs in place over
// three steps (error feedback and owner residual on).
void checkPipelined(int N, int L, DType t, bool avg, size_t n, size_t bytes) {
  const int nodes = N / L, steps = 3;
  const size_t d = 64;
  SCOPED_TRACE(testing::Message() << "N=" << N << " L=" << L << " dtype=" << (int)t
                                  << " avg=" << avg << " n=" << n << " bytes=" << bytes);
  const PipeShape shape = pipeShape(n, L, nodes, bytes, d);
  ASSERT_GT(shape.pieces, 1u) << "the case must actually pipeline";
  const gradcompConfig_t base = hierConfig(L, 0, gradcompAlgoTwoShot);
  gctest::CpuWorld flat(N, base), piped(N, hierConfig(L, bytes, gradcompAlgoTwoShot));
  std::vector<Rank> ref = makeInputs(N, n, t, n + 31 * N + L);
  std::vector<Rank> a = ref, b = ref;
  for (int step = 0; step < steps; ++step) {
    std::vector<Rank> in = makeInputs(N, n, t, 1000 * step + n + N + L);
    gctest::loadStep(in, ref, a);
    gctest::loadStep(in, ref, b);
    ASSERT_NO_FATAL_FAILURE(runKeyed(flat, a, t, n, avg));
    ASSERT_NO_FATAL_FAILURE(runKeyed(piped, b, t, n, avg));
    ref = in;
    const std::vector<float> expect = refHier(ref, t, n, base, step, avg, L, gradcompAlgoTwoShot);
    for (int r = 0; r < N; ++r) {
      auto got = widen(b[r], t, n), unpiped = widen(a[r], t, n);
      ASSERT_EQ(memcmp(got.data(), unpiped.data(), n * 4), 0) << "rank " << r << " step " << step;
      ASSERT_EQ(memcmp(got.data(), expect.data(), n * 4), 0) << "rank " << r << " step " << step;
    }
  }
  const size_t esz = gc::dtypeBytes(t);
  for (int r = 0; r < N; ++r) {
    EXPECT_EQ(gctest::savedState(piped.comm(r)), gctest::savedState(flat.comm(r)))
        << "state of rank " << r;
    gradcompStats_t sp, sf;
    ASSERT_EQ(gradcompGetStats(piped.comm(r), &sp), gradcompSuccess);
    ASSERT_EQ(gradcompGetStats(flat.comm(r), &sf), gradcompSuccess);
    EXPECT_EQ(sp.callsPerAlgo[gradcompAlgoHier], (uint64_t)steps);
    EXPECT_EQ(sp.bytesInterNode, sf.bytesInterNode) << "rank " << r;
    // In-node: (L-1) blocks out in fp32 and (L-1) in the buffer type.
    EXPECT_EQ(sp.bytesOnWire - sf.bytesOnWire,
              steps * (L - 1) * (shape.moved - shape.shardMax) * (4 + esz))
        << "rank " << r;
    EXPECT_EQ(sp.piecesLast, shape.pieces) << "rank " << r;
    EXPECT_EQ(sf.piecesLast, 1u) << "rank " << r;
  }
}

// N = 4, 6, 8, every L giving >= 2 nodes of >= 2 ranks; pieces of one
// bucket per chunk, of three (dividing no chunk here) and of five.
TEST(HierPipelineCpu, PipelinedEqualsUnpipelinedAndReference) {
  const int shapes[][2] = {{4, 2}, {6, 2}, {6, 3}, {8, 2}, {8, 4}};
  for (auto& s : shapes) {
    const int N = s[0], L = s[1], nodes = N / L;
    for (DType t : {DType::F32, DType::BF16})
      for (bool avg : {false, true})
        for (size_t n : {(size_t)5000, (size_t)9001})
          for (size_t pieceElems : {(size_t)64, (size_t)192, (size_t)320}) {
            const size_t bytes = pieceElems * 4 * nodes;
            if (pipeShape(n, L, nodes, bytes, 64).pieces < 2) continue;
            checkPipelined(N, L, t, avg, n, bytes);
            if (HasFatalFailure()) return;
          }
  }
}

// Awkward sizes: a piece size that is not whole buckets; shards whose
// packed pieces outgrow the longest shard's (the blocks pad); a count
// leaving the last shard empty (its ranks run no middle stage but join
// every in-node collective).
TEST(HierPipelineCpu, AwkwardCounts) {
  checkPipelined(8, 2, DType::F32, false, 20000, 2000);
  checkPipelined(8, 2, DType::BF16, true, 20000, 2048);
  const PipeShape padded = pipeShape(20000, 2, 4, 2048, 64);
  EXPECT_GT(padded.moved, padded.shardMax) << "the case must pad";
  // 571 elements, L = 4: shards of 192, 192, 187 and 0 elements.
  const std::vector<size_t> shard = split(571, 4, 64);
  ASSERT_EQ(shard[4] - shard[3], 0u);
  checkPipelined(8, 4, DType::F32, true, 571, 512);
  checkPipelined(8, 4, DType::BF16, false, 571, 512);
  checkPipelined(6, 3, DType::F32, false, 12345, 1000);
}

// The middle stage allgather (auto at two nodes) and the sparse methods do
// not pipeline: one piece, the unpipelined call's results.
TEST(HierPipelineCpu, OtherMiddleStagesStayOnePiece) {
  const size_t n = 9001;
  for (gradcompMethod_t m : {gradcompMethodQsgd, gradcompMethodDgc}) {
    gradcompConfig_t base =
        m == gradcompMethodQsgd ? hierConfig(4, 0, gradcompAlgoAuto) : gctest::sparseTestConfig(m);
    base.localSize = 4;
    gradcompConfig_t pc = base;
    pc.pipelineBytes = 1024;
    gctest::CpuWorld flat(8, base), piped(8, pc);
    std::vector<Rank> a = makeInputs(8, n, DType::F32, 5), b = a;
    for (int step = 0; step < 2; ++step) {
      ASSERT_NO_FATAL_FAILURE(runKeyed(flat, a, DType::F32, n, false));
      ASSERT_NO_FATAL_FAILURE(runKeyed(piped, b, DType::F32, n, false));
      for (int r = 0; r < 8; ++r) ASSERT_EQ(memcmp(a[r].f32.data(), b[r].f32.data(), n * 4), 0);
    }
    gradcompStats_t sp, sf;
    ASSERT_EQ(gradcompGetStats(piped.comm(0), &sp), gradcompSuccess);
    ASSERT_EQ(gradcompGetStats(flat.comm(0), &sf), gradcompSuccess);
    EXPECT_EQ(sp.callsPerAlgo[gradcompAlgoHier], 2u);
    if (m == gradcompMethodQsgd) EXPECT_EQ(sp.piecesLast, 1u);  // the sparse path reports none
    EXPECT_EQ(sp.bytesOnWire, sf.bytesOnWire);
  }
}

}  // namespace
