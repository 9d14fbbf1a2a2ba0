// Pipelined compressed reduce-scatter (GRADCOMP_PIPELINE_BYTES) on the CPU
// backend: the same algorithm code cuts each block into bucket-aligned pieces
// (as two-shot cuts its chunks), and every output, residual and wire byte
// count is bit for bit the unpipelined call's, which in turn is the serial
// reference (ref_rs.h, ref_hier_rs.h), over several steps of error feedback.
#include <gtest/gtest.h>
#include <string.h>

#include <math.h>

#include <algorithm>
#include <memory>
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

// The hierarchical reduce-scatter (k = N/L nodes of L ranks) runs the flat
// one as its inter-node stage on the child comm, which inherits the config:
// that stage is pipelined (a piece covers pipelineBytes/4 elements of its k
// blocks of m), and the in-node fp32 reduce-scatter and the conversion run
// piece by piece around it. Pipelined and unpipelined worlds over three
// steps: outputs equal each other and ref_hier_rs.h bit for bit on every
// rank, residuals the reference's, saved states the same bytes; the wire
// bytes, piece by piece from the description ((L-1) * k * len_q floats in
// the node, (k-1) encodings of len_q across), add up to the unpipelined
// call's; piecesLast is the middle stage's count.
void checkHierPipelined(int N, int L, DType t, bool avg, size_t m, size_t pieceElems, bool inPlace,
                        gradcompRounding_t rounding = gradcompRoundStochastic) {
  const int k = N / L, d = 64, bits = 4, steps = 3;
  const size_t n = N * m, pipelineBytes = pieceElems * 4 * k;
  SCOPED_TRACE(testing::Message() << "N=" << N << " L=" << L << " dtype=" << (int)t
                                  << " avg=" << avg << " m=" << m << " piece=" << pieceElems
                                  << " inPlace=" << inPlace << " rounding=" << (int)rounding);
  const Cut cut = expectedCut(pipelineBytes, k, m, d);
  ASSERT_EQ(cut.piece, pieceElems);
  ASSERT_GT(cut.count, 1u) << "the case must actually pipeline";
  gctest::CpuWorld flat(N, rsConfig(0, L, rounding)),
      piped(N, rsConfig(pipelineBytes, L, rounding));
  ASSERT_NE(piped.comm(0)->inter, nullptr) << "the world must be hierarchical";
  ASSERT_EQ(piped.comm(0)->topo.nodes, k);
  std::vector<Rank> ref = makeInputs(N, n, t, 11 * m + N + L);
  std::vector<Rank> a = ref, b = ref;
  gctest::RsOutputs outA(N, m), outB(N, m);
  const gradcompConfig_t rc = rsConfig(0, L, rounding);
  for (int step = 0; step < steps; ++step) {
    std::vector<Rank> in = makeInputs(N, n, t, 1000 * step + m + N + L);
    gctest::loadStep(in, ref, a);
    gctest::loadStep(in, ref, b);
    auto ra = runKeyed(flat, outA, a, t, m, avg, inPlace);
    auto rb = runKeyed(piped, outB, b, t, m, avg, inPlace);
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(ra[r], gradcompSuccess) << gradcompGetLastError();
      ASSERT_EQ(rb[r], gradcompSuccess) << gradcompGetLastError();
    }
    const std::vector<std::vector<float>> expect =
        refHierReduceScatter(ref = in, t, m, rc, rc.bits, step, avg, L);
    for (int r = 0; r < N; ++r) {
      const std::vector<float> got = outB.read(b[r], r, t, m, inPlace);
      const std::vector<float> base = outA.read(a[r], r, t, m, inPlace);
      ASSERT_EQ(memcmp(got.data(), base.data(), m * 4), 0) << "rank " << r << " step " << step;
      ASSERT_EQ(memcmp(got.data(), expect[r].data(), m * 4), 0) << "rank " << r << " step " << step;
      ASSERT_EQ(memcmp(rsResidual(piped.comm(r)), ref[r].residual.data(), n * 4), 0)
          << "residual of rank " << r << " step " << step;
    }
  }
  size_t inNode = 0, across = 0;
  for (size_t q = 0; q < cut.count; ++q) {
    const size_t len = std::min(cut.piece, m - q * cut.piece);
    inNode += (size_t)(L - 1) * k * len * 4;
    across += (size_t)(k - 1) * gc::qsgd::encodedBytes(len, bits, d);
  }
  for (int r = 0; r < N; ++r) {
    EXPECT_EQ(gctest::savedState(piped.comm(r)), gctest::savedState(flat.comm(r)))
        << "state of rank " << r;
    gradcompStats_t sp, sf;
    ASSERT_EQ(gradcompGetStats(piped.comm(r), &sp), gradcompSuccess);
    ASSERT_EQ(gradcompGetStats(flat.comm(r), &sf), gradcompSuccess);
    EXPECT_EQ(sp.bytesOnWire, sf.bytesOnWire) << "rank " << r;
    EXPECT_EQ(sp.bytesOnWire, steps * (inNode + across)) << "rank " << r;
    EXPECT_EQ(sp.bytesInterNode, sf.bytesInterNode) << "rank " << r;
    EXPECT_EQ(sp.bytesInterNode, steps * across) << "rank " << r;
    EXPECT_EQ(sp.piecesLast, cut.count) << "rank " << r;
    EXPECT_EQ(sf.piecesLast, 1u) << "rank " << r;
  }
}

TEST(PipelineRsCpu, HierPipelinedEqualsUnpipelined) {
  const struct { int N, L; } shapes[] = {{4, 2}, {6, 2}, {6, 3}, {8, 2}, {8, 4}};
  for (const auto& sh : shapes) {
    for (DType t : {DType::F32, DType::F16, DType::BF16}) {
      for (bool avg : {false, true}) {
        // Blocks not a multiple of the bucket, pieces of one bucket and of
        // three (not dividing them); a block of whole buckets with pieces
        // of two; in place and not.
        checkHierPipelined(sh.N, sh.L, t, avg, 700, 64, avg);
        if (HasFatalFailure()) return;
        checkHierPipelined(sh.N, sh.L, t, avg, 700, 192, !avg);
        if (HasFatalFailure()) return;
        if (t == DType::F32) checkHierPipelined(sh.N, sh.L, t, avg, 1024, 128, sh.N % 4 == 0);
        if (HasFatalFailure()) return;
      }
    }
  }
}

// Nearest rounding: the middle stage's piece encodes round as the whole
// call's do, whatever the in-node stages around them.
TEST(PipelineRsCpu, HierPipelinedNearestEqualsUnpipelined) {
  checkHierPipelined(6, 3, DType::BF16, true, 700, 192, true, gradcompRoundNearest);
  checkHierPipelined(8, 2, DType::F32, false, 700, 64, false, gradcompRoundNearest);
}

// The hooks' contract on the flat reduce-scatter (PieceHooks): with more
// pieces asked than the call has, every piece q runs before(q) ahead of any
// read of its input and after(q) once its output is written, in the order
// before(0), before(1), after(0), before(2), after(1), ... A hook that loads
// piece q of the input in before(q) (the rest is NaN until then) and copies
// piece q of the output in after(q) sees the result of a call without hooks.
class LoadingHooks final : public gc::PieceHooks {
 public:
  LoadingHooks(size_t n, const std::vector<float>& x, float* in, const float* out, size_t m,
               size_t piece, size_t calls)
      : x_(x), in_(in), out_(out), n_(n), m_(m), piece_(piece), copy(m, -1.0f) {
    pieces = calls;
  }
  gradcompResult_t before(size_t q) override {
    log.push_back(2 * q);
    for (size_t b = 0; b < n_; ++b) {
      for (size_t i = q * piece_; i < std::min(m_, (q + 1) * piece_); ++i) {
        in_[b * m_ + i] = x_[b * m_ + i];
      }
    }
    return gradcompSuccess;
  }
  gradcompResult_t after(size_t q) override {
    log.push_back(2 * q + 1);
    for (size_t i = q * piece_; i < std::min(m_, (q + 1) * piece_); ++i) copy[i] = out_[i];
    return gradcompSuccess;
  }

 private:
  const std::vector<float>& x_;
  float* in_;
  const float* out_;
  size_t n_, m_, piece_;

 public:
  std::vector<float> copy;
  std::vector<size_t> log;  // 2q: before(q), 2q+1: after(q)
};

TEST(PipelineRsCpu, HooksSeeEveryPieceInOrder) {
  const int N = 4;
  const size_t m = 700, piece = 192, n = N * m;
  for (size_t pipelineBytes : {(size_t)0, piece * 4 * N}) {
    SCOPED_TRACE(testing::Message() << "pipelineBytes=" << pipelineBytes);
    gctest::CpuWorld world(N, rsConfig(pipelineBytes));
    const size_t own = gc::reduceScatterAlgorithm().pieces(*world.comm(0), m, 4);
    ASSERT_EQ(own, pipelineBytes ? 4u : 1u);
    const size_t calls = own + 2;  // two pieces past the call's own
    std::vector<std::vector<float>> x(N), in(N), plain(N), hooked(N), ws(N);
    std::vector<std::vector<float>> res(N, std::vector<float>(n, 0.0f)), res2 = res;
    std::vector<std::unique_ptr<LoadingHooks>> hooks(N);
    const size_t wsBytes = gc::reduceScatterAlgorithm().workspaceBytes(*world.comm(0), m, 4);
    for (int r = 0; r < N; ++r) {
      x[r] = gctest::normal(n, 31 + r, 1.0f);
      in[r].assign(n, std::nanf(""));
      plain[r].assign(m, 0.0f);
      hooked[r].assign(m, 0.0f);
      ws[r].assign(wsBytes / 4 + 1, 0.0f);
      hooks[r].reset(
          new LoadingHooks(N, x[r], in[r].data(), hooked[r].data(), m, own > 1 ? piece : m, calls));
    }
    auto runOnce = [&](bool withHooks) {
      return world.run([&](int r) {
        gc::BufferState st;
        st.count = n;
        st.residual = withHooks ? res2[r].data() : res[r].data();
        gc::CallArgs a{world.comm(r),
                       withHooks ? in[r].data() : x[r].data(),
                       withHooks ? hooked[r].data() : plain[r].data(),
                       m,
                       DType::F32,
                       false,
                       &st,
                       4,
                       1};
        if (withHooks) a.hooks = hooks[r].get();
        return gc::reduceScatterAlgorithm().run(a, ws[r].data());
      });
    };
    for (bool withHooks : {false, true}) {
      auto rc = runOnce(withHooks);
      for (int r = 0; r < N; ++r) ASSERT_EQ(rc[r], gradcompSuccess) << gradcompGetLastError();
    }
    std::vector<size_t> order;
    for (size_t q = 0; q < calls + 1; ++q) {
      if (q < calls) order.push_back(2 * q);
      if (q >= 1) order.push_back(2 * (q - 1) + 1);
    }
    for (int r = 0; r < N; ++r) {
      EXPECT_EQ(hooks[r]->log, order) << "rank " << r;
      ASSERT_EQ(memcmp(hooked[r].data(), plain[r].data(), m * 4), 0) << "rank " << r;
      ASSERT_EQ(memcmp(hooks[r]->copy.data(), plain[r].data(), m * 4), 0) << "rank " << r;
      ASSERT_EQ(memcmp(res2[r].data(), res[r].data(), n * 4), 0) << "residual of rank " << r;
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
