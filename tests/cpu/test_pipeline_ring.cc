// Pipelined ring (GRADCOMP_PIPELINE_BYTES) on the CPU backend: every hop
// runs piece by piece, and every result, residual (error feedback and owner
// residual) and wire byte count is bit for bit the unpipelined ring's, which
// in turn is the serial reference (refRing in ref_algos.h). The offset encode
// the pieces rely on is checked in test_pipeline.cc.
#include <gtest/gtest.h>
#include <string.h>

#include <vector>

#include "gradcomp.h"
#include "kernels/qsgd_math.cuh"
#include "plugin/algorithms/algorithms.h"
#include "plugin/comm.h"
#include "tests/common/cpu_world.h"
#include "tests/common/pipeline_checks.h"
#include "tests/common/ref_algos.h"
#include "tests/common/test_util.h"
#include "tests/common/world_checks.h"

namespace {

using gc::DType;
using namespace gctest::ref;

gradcompConfig_t ringConfig(size_t pipelineBytes, bool ownerResidual,
                            gradcompRounding_t rounding = gradcompRoundStochastic) {
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.algo = gradcompAlgoRing;
  cfg.pipelineBytes = pipelineBytes;
  cfg.ownerResidual = ownerResidual ? 1 : 0;
  cfg.rounding = rounding;
  return cfg;
}

// Wire bytes of rank r's pipelined ring, piece by piece from the
// description: at hop s it sends piece q of chunk (r-s) mod N to r+1, and
// the allgather sends (N-1) copies of each reduced piece (of chunk
// (r+1) mod N, which rank r owns last).
size_t pieceWireBytes(const gc::Chunks& ch, const gc::Pieces& p, int N, int r, int bits, int d) {
  size_t bytes = 0;
  for (size_t q = 0; q < p.count; ++q) {
    for (int s = 0; s < N - 1; ++s) {
      bytes += gc::qsgd::encodedBytes(p.len(ch.len(((r - s) % N + N) % N), q), bits, d);
    }
    bytes += (N - 1) * gc::qsgd::encodedBytes(p.len(ch.len((r + 1) % N), q), bits, d);
  }
  return bytes;
}

// Pipelined and unpipelined ring worlds reduce the same inputs in place over
// several steps with error feedback: outputs equal each other and the serial
// reference bit for bit on every rank, the saved states (residuals, owner
// residuals) are the same bytes, and the wire bytes are the sum of the
// pieces' encodings, which equals the unpipelined count.
void checkPipelinedRing(int N, DType t, bool avg, bool ownerRes, size_t n, size_t pieceElems,
                        gradcompRounding_t rounding = gradcompRoundStochastic) {
  const int d = 64, bits = 4, steps = 3;
  // pieceElems per chunk: pipelineBytes is the whole call's share as fp32.
  const size_t pipelineBytes = pieceElems * 4 * N;
  SCOPED_TRACE(testing::Message() << "N=" << N << " dtype=" << (int)t << " avg=" << avg
                                  << " ownerRes=" << ownerRes << " n=" << n
                                  << " piece=" << pieceElems << " rounding=" << rounding);
  gctest::CpuWorld flat(N, ringConfig(0, ownerRes, rounding)),
      piped(N, ringConfig(pipelineBytes, ownerRes, rounding));
  const gc::Chunks ch = gc::splitChunks(*piped.comm(0), n, bits);
  const gc::Pieces p = gc::splitPieces(*piped.comm(0), ch);
  ASSERT_GT(p.count, 1u) << "the case must actually pipeline";
  ASSERT_EQ(p.piece, pieceElems);
  gradcompConfig_t rc = ringConfig(0, ownerRes, rounding);
  rc.bucketSize = d;
  std::vector<Rank> ref;
  gctest::runPipelinedSteps(
      flat, piped, N, t, avg, n, steps, 3 * n + N,
      [&](std::vector<Rank>& in, int step) { return refRing(in, t, n, rc, step, avg); }, &ref);
  if (testing::Test::HasFatalFailure()) return;
  gctest::expectSameStateAndWire(
      flat, piped, N, p.count, [&](int r) { return steps * pieceWireBytes(ch, p, N, r, bits, d); },
      [&](int r, const gradcompStats_t& sp) {
        EXPECT_EQ(sp.callsPerAlgo[gradcompAlgoRing], (uint64_t)steps) << "rank " << r;
      });
  // The residuals the reference kept are the ones the comms saved: a
  // nonzero residual shows error feedback ran (the test can fail).
  bool anyResidual = false;
  for (int r = 0; r < N; ++r)
    for (float x : ref[r].residual) anyResidual |= x != 0.0f;
  EXPECT_TRUE(anyResidual);
}

TEST(PipelineCpu, RingPipelinedEqualsUnpipelined) {
  for (int N = 2; N <= 8; ++N) {
    for (DType t : {DType::F32, DType::F16, DType::BF16}) {
      for (bool avg : {false, true}) {
        // Owner residual on and off, each with one awkward count; pieces of
        // one bucket, of three (not dividing the chunks) and of five.
        for (bool ownerRes : {true, false}) {
          const size_t n = ownerRes ? 3001 : 5000 + 13 * N;
          for (size_t piece : {64ul, 192ul, 320ul}) {
            if ((n + N - 1) / N <= piece) continue;
            checkPipelinedRing(N, t, avg, ownerRes, n, piece);
            if (HasFatalFailure()) return;
          }
        }
      }
    }
  }
}

// Nearest rounding (owner residual on, as it requires): every hop's and the
// owner's piece encodes round as the whole call's do.
TEST(PipelineCpu, RingPipelinedNearestEqualsUnpipelined) {
  for (int N : {2, 3, 5, 8})
    for (DType t : {DType::F32, DType::BF16})
      for (size_t piece : {64ul, 192ul}) {
        if ((3001 + N - 1) / N <= piece) continue;
        checkPipelinedRing(N, t, N % 2 == 0, true, 3001, piece, gradcompRoundNearest);
        if (HasFatalFailure()) return;
      }
}

// Chunks of different lengths and an empty one (splitAligned gives the
// first chunks ceil(buckets/N) buckets): the short chunks run out of pieces
// before the largest does, and the empty chunk sends nothing.
TEST(PipelineCpu, RingPipelinedUnevenAndEmptyChunks) {
  const struct {
    int N;
    size_t n, shortest;
  } cases[] = {
      {4, 64 * 4 + 5, 0},    // 128, 128, 5, 0
      {4, 64 * 6 + 10, 10},  // 128, 128, 128, 10
      {3, 64 * 7 + 5, 69},   // 192, 192, 69
  };
  for (const auto& k : cases) {
    gctest::CpuWorld w(k.N, ringConfig(0, true));
    const gc::Chunks ch = gc::splitChunks(*w.comm(0), k.n, 4);
    EXPECT_EQ(ch.len(k.N - 1), k.shortest) << "n=" << k.n;
    for (DType t : {DType::F32, DType::BF16}) {
      checkPipelinedRing(k.N, t, true, true, k.n, 64);
      if (HasFatalFailure()) return;
    }
  }
}

// The hierarchy's middle stage runs the configured ring on the inter-node
// child comm, which inherits the setting: pipelined there too, same bits,
// state and wire bytes, and the child's pieces reported.
TEST(PipelineCpu, HierMiddleRingPipelinedEqualsUnpipelined) {
  const size_t n = 20000;
  const int L = 2;
  for (int N : {4, 6, 8}) {
    for (DType t : {DType::F32, DType::BF16}) {
      SCOPED_TRACE(testing::Message() << "N=" << N << " dtype=" << (int)t);
      gradcompConfig_t base = ringConfig(0, true);
      base.localSize = L;
      gradcompConfig_t pc = base;
      pc.pipelineBytes = 2048;
      gctest::CpuWorld flat(N, base), piped(N, pc);
      std::vector<Rank> a = makeInputs(N, n, t, 91 + N), b = a;
      for (int step = 0; step < 3; ++step) {
        for (auto* w : {&flat, &piped}) {
          std::vector<Rank>& bufs = w == &flat ? a : b;
          auto res = w->run([&](int r) {
            void* ptr = t == DType::F32 ? (void*)bufs[r].f32.data() : (void*)bufs[r].half.data();
            return gradcompAllReduceKeyed(ptr, ptr, n, nccl(t), step % 2 ? ncclAvg : ncclSum,
                                          w->comm(r), nullptr, 7);
          });
          for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
        }
        for (int r = 0; r < N; ++r) {
          auto got = widen(b[r], t, n), want = widen(a[r], t, n);
          ASSERT_EQ(memcmp(got.data(), want.data(), n * 4), 0) << "rank " << r << " step " << step;
        }
      }
      for (int r = 0; r < N; ++r) {
        gradcompStats_t sp, sf;
        ASSERT_EQ(gradcompGetStats(piped.comm(r), &sp), gradcompSuccess);
        ASSERT_EQ(gradcompGetStats(flat.comm(r), &sf), gradcompSuccess);
        EXPECT_EQ(sp.callsPerAlgo[gradcompAlgoHier], 3u);
        EXPECT_EQ(sp.bytesOnWire, sf.bytesOnWire);
        EXPECT_EQ(gctest::savedState(piped.comm(r)), gctest::savedState(flat.comm(r)))
            << "state of rank " << r;
        gradcompComm& inter = *piped.comm(r)->inter;
        EXPECT_GT(sp.piecesLast, 1u) << "rank " << r;
        EXPECT_EQ(sf.piecesLast, 1u) << "rank " << r;
        EXPECT_EQ(gc::pickDenseAlgorithm(inter, n / L).id, gradcompAlgoRing);
      }
    }
  }
}

// Pieces that hold the largest chunk: one piece, the serial reference.
TEST(PipelineCpu, RingOnePieceWhenAPieceHoldsTheChunk) {
  const int N = 4;
  const size_t n = 4000;  // chunks of 1024, 1024, 1024, 928
  gctest::CpuWorld w(N, ringConfig(1024 * 4 * N, true));
  const gc::Chunks ch = gc::splitChunks(*w.comm(0), n, 4);
  ASSERT_EQ(ch.maxLen, 1024u);
  EXPECT_EQ(gc::splitPieces(*w.comm(0), ch).count, 1u);
  std::vector<Rank> in = makeInputs(N, n, DType::F32, 11), ref = in;
  auto res = w.run([&](int r) {
    return gradcompAllReduceKeyed(in[r].f32.data(), in[r].f32.data(), n, ncclFloat32, ncclSum,
                                  w.comm(r), nullptr, 7);
  });
  for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
  const std::vector<float> expect = refRing(ref, DType::F32, n, ringConfig(0, true), 0, false);
  for (int r = 0; r < N; ++r) {
    ASSERT_EQ(memcmp(in[r].f32.data(), expect.data(), n * 4), 0) << "rank " << r;
    gradcompStats_t s;
    ASSERT_EQ(gradcompGetStats(w.comm(r), &s), gradcompSuccess);
    EXPECT_EQ(s.piecesLast, 1u);
  }
}

}  // namespace
