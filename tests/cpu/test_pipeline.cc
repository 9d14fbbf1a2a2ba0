// Pipelined two-shot (GRADCOMP_PIPELINE_BYTES) on the CPU backend: the same
// algorithm code cuts each chunk into bucket-aligned pieces, and every result,
// residual and wire byte count is bit for bit the unpipelined call's, which in
// turn is the serial reference (ref_algos.h). The RNG offset that makes this
// possible is checked on the codec: encoding elements [o, o+len) of a chunk
// with KeySpec::offset = o draws exactly what the whole-chunk encode draws.
#include <gtest/gtest.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "bench/common/model.h"
#include "gradcomp.h"
#include "gradcomp/reference.h"
#include "kernels/common_math.cuh"
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

std::vector<float> decodeAll(const std::vector<uint8_t>& e, size_t n, int bits, int d) {
  std::vector<float> out(n);
  dec(e, n, bits, d, out.data(), false);
  return out;
}

uint64_t pieceKey(uint64_t key, uint64_t offset) {
  gc::KeySpec k = gc::plainKey(key);
  k.offset = offset;
  return gc::resolveKey(k);
}

// The derived key of an algorithm's encode moves the same way.
TEST(PipelineCpu, OffsetFollowsTheElementForDerivedKeys) {
  gc::KeySpec k{24301, 7, nullptr, 3, 5, true};
  const uint64_t whole = gc::resolveKey(k);
  for (uint64_t o : {0ull, 1ull, 512ull, 123456789ull}) {
    k.offset = o;
    for (uint64_t i : {0ull, 1ull, 1000ull}) {
      EXPECT_EQ(gc::uniform24(gc::resolveKey(k), i), gc::uniform24(whole, o + i));
    }
  }
}

// Every piece of whole buckets, encoded on its own with the offset, decodes
// to the whole encode's slice, leaves the same residual, and has the same
// bucket scales; without the offset the draws differ (the test can fail).
TEST(PipelineCpu, OffsetEncodeEqualsSliceOfWholeEncode) {
  const uint64_t key = 0x1234567890abcdefull;
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    for (int bits : {2, 3, 4, 5, 8}) {
      for (int d : {32, 96, 512}) {
        for (bool ef : {false, true}) {
          SCOPED_TRACE(testing::Message()
                       << "dtype=" << (int)t << " bits=" << bits << " d=" << d << " ef=" << ef);
          const size_t n = 7 * (size_t)d + 13;
          std::vector<Rank> in = makeInputs(1, n, t, bits * 100 + d);
          for (size_t k = 0; k < n; ++k) in[0].residual[k] = 0.01f * (float)((k * 7) % 11) - 0.05f;
          std::vector<float> wholeRes = in[0].residual;
          auto whole = enc(data(in[0], t), t, ef ? wholeRes.data() : nullptr, n, bits, d, key);
          const std::vector<float> wholeDec = decodeAll(whole, n, bits, d);
          // Pieces of 1, 2 and 3 buckets, the last one short.
          size_t o = 0;
          bool anyDiffers = false;
          for (size_t q = 0; o < n; ++q) {
            const size_t len = std::min(n - o, (size_t)d * (1 + q % 3));
            std::vector<float> res(in[0].residual.begin() + o, in[0].residual.begin() + o + len);
            const char* x = static_cast<const char*>(data(in[0], t)) + o * gc::dtypeBytes(t);
            auto piece = enc(x, t, ef ? res.data() : nullptr, len, bits, d, pieceKey(key, o));
            const std::vector<float> got = decodeAll(piece, len, bits, d);
            ASSERT_EQ(memcmp(got.data(), wholeDec.data() + o, len * 4), 0) << "piece at " << o;
            ASSERT_EQ(
                memcmp(piece.data(), whole.data() + o / d * 4, gc::qsgd::numBuckets(len, d) * 4), 0)
                << "scales of the piece at " << o;
            if (ef) {
              ASSERT_EQ(memcmp(res.data(), wholeRes.data() + o, len * 4), 0) << "residual at " << o;
            }
            if (o > 0) {
              auto plain = enc(x, t, nullptr, len, bits, d, key);
              anyDiffers |= memcmp(plain.data(), piece.data(), piece.size()) != 0;
            }
            o += len;
          }
          EXPECT_TRUE(anyDiffers) << "pieces without the offset should draw differently";
        }
      }
    }
  }
}

gradcompConfig_t twoShotConfig(size_t pipelineBytes,
                               gradcompRounding_t rounding = gradcompRoundStochastic,
                               gradcompLevels_t levels = gradcompLevelsUniform) {
  gradcompConfig_t cfg = gctest::qsgdTestConfig();
  cfg.algo = gradcompAlgoTwoShot;
  cfg.pipelineBytes = pipelineBytes;
  cfg.rounding = rounding;
  cfg.levels = levels;
  return cfg;
}

TEST(PipelineCpu, PiecesAreWholeBucketsOfEveryChunk) {
  gctest::CpuWorld world(4, twoShotConfig(0));
  gradcompComm& c = *world.comm(0);
  const gc::Chunks ch = gc::splitChunks(c, 10000, 4);  // chunks of 2560, 2560, 2560, 2320
  EXPECT_EQ(gc::splitPieces(c, ch).count, 1u);         // off
  EXPECT_EQ(gc::splitPieces(c, ch).piece, ch.maxLen);
  const struct {
    size_t bytes, piece, count;
  } cases[] = {
      {1, 64, 40},              // at least one bucket
      {4 * 4 * 64, 64, 40},     // exactly one bucket of every chunk
      {4 * 4 * 65, 128, 20},    // rounded up to whole buckets
      {4 * 4 * 1000, 1024, 3},  // does not divide the chunk
      {4 * 4 * 2560, 2560, 1},  // one piece holds the chunk: not pipelined
      {1u << 30, 2560, 1},
  };
  for (const auto& k : cases) {
    c.cfg.pipelineBytes = k.bytes;
    const gc::Pieces p = gc::splitPieces(c, ch);
    EXPECT_EQ(p.piece, k.piece) << k.bytes;
    EXPECT_EQ(p.count, k.count) << k.bytes;
    size_t covered = 0;
    for (size_t q = 0; q < p.count; ++q) covered += p.len(ch.len(3), q);
    EXPECT_EQ(covered, ch.len(3)) << k.bytes;
  }
}

// gradcomp_perf counts the pieces with its own copy of the rule (it links
// only the public API; bench/common/model.h): a flat two-shot's and ring's
// (flatPieces), the hierarchy's middle two-shot's on the longest shard
// among the K nodes (hierPieces) and the flat reduce-scatter's
// (reduceScatterPieces) are the library's for every count, bucket, rank
// count and piece size tried, pipelining off and pieces of less than a
// bucket among them; and so is the piece a row reports (pieceBytesUsed).
TEST(PipelineCpu, TheModelsPiecesAreTheLibrarys) {
  gradcompComm c;
  ASSERT_EQ(gradcompConfigInit(&c.cfg), gradcompSuccess);
  int cut = 0, whole = 0;
  for (int n : {2, 3, 4, 5, 8, 16}) {
    for (int d : {64, 512, 1000}) {
      for (size_t count : {size_t(1), size_t(777), size_t(10000), size_t(65536), size_t(262147),
                           size_t(1) << 22}) {
        for (size_t bytes : {size_t(0), size_t(1), size_t(4096), size_t(65536), size_t(100000),
                             size_t(1) << 22, size_t(1) << 26}) {
          c.nranks = n;
          c.cfg.bucketSize = d;
          c.cfg.pipelineBytes = bytes;
          const size_t lib = gc::chunkPieces(c, count, 4);
          ASSERT_EQ(gcbench::flatPieces(count, d, n, bytes), (double)lib)
              << "N " << n << " bucket " << d << " count " << count << " bytes " << bytes;
          (lib > 1 ? cut : whole)++;
          // The piece a row reports (pieceBytesUsed): the library's piece of each of the
          // n chunks (blocks, for the reduce-scatter) as fp32; 0 in one piece.
          auto used = [&](const gc::Pieces& p) { return p.count > 1 ? p.piece * n * 4 : 0; };
          for (int algo : {gradcompAlgoTwoShot, gradcompAlgoRing})
            ASSERT_EQ(gcbench::pieceBytesUsed(algo, count, d, n, 1, bytes),
                      used(gc::splitPieces(c, gc::splitChunks(c, count, 4))))
                << "algo " << algo << " N " << n << " bucket " << d << " count " << count
                << " bytes " << bytes;
          const gc::Pieces blocks = gc::splitPieces(c, gc::equalBlocks(c, count, 4));
          ASSERT_EQ(gcbench::reduceScatterPieces(count, d, n, bytes), (double)blocks.count)
              << "N " << n << " bucket " << d << " recvcount " << count << " bytes " << bytes;
          ASSERT_EQ(gcbench::pieceBytesUsed(6, count, d, n, 1, bytes), used(blocks))
              << "N " << n << " bucket " << d << " recvcount " << count << " bytes " << bytes;
          // The hierarchy of K = n nodes of G: two-shot among the nodes on shard 0; the
          // hierarchical reduce-scatter's blocks among the nodes.
          for (int g : {2, 8}) {
            gcbench::Cluster cl;
            cl.nodes = n, cl.local = g;
            const size_t shard = gc::alignedOffset(count, g, d, 1);
            ASSERT_EQ(gcbench::hierPieces(count, d, cl, bytes),
                      (double)gc::chunkPieces(c, shard, 4))
                << n << " x " << g << " bucket " << d << " count " << count << " bytes " << bytes;
            ASSERT_EQ(gcbench::pieceBytesUsed(gradcompAlgoHier, count, d, n * g, g, bytes),
                      used(gc::splitPieces(c, gc::splitChunks(c, shard, 4))))
                << n << " x " << g << " bucket " << d << " count " << count << " bytes " << bytes;
            ASSERT_EQ(gcbench::pieceBytesUsed(6, count, d, n * g, g, bytes), used(blocks))
                << n << " x " << g << " bucket " << d << " recvcount " << count << " bytes "
                << bytes;
          }
        }
      }
    }
  }
  EXPECT_GT(cut, 100);
  EXPECT_GT(whole, 100);
}

// The smallest piece (pipelineBytes=1: one bucket of every chunk) on the
// largest count a codec takes (2^56) would be 2^50 pieces, and sizing the
// call loops over them all: pieces grow so that at most kMaxPieces cover the
// largest chunk, still whole buckets, the last one the only short one.
TEST(PipelineCpu, PieceCountIsBoundedForTheSmallestPiece) {
  gctest::CpuWorld world(4, twoShotConfig(1));
  gradcompComm& c = *world.comm(0);
  const size_t d = (size_t)c.cfg.bucketSize;
  for (size_t count : {(size_t)4 * 64 * gc::kMaxPieces, (size_t)4 * 64 * gc::kMaxPieces + 4 * 64,
                       (size_t)1 << 40, gc::kMaxCodecCount}) {
    SCOPED_TRACE(testing::Message() << "count=" << count);
    const gc::Chunks ch = gc::splitChunks(c, count, 4);
    const gc::Pieces p = gc::splitPieces(c, ch);
    ASSERT_LE(p.count, gc::kMaxPieces);
    EXPECT_GT(p.count, 1u);
    EXPECT_EQ(p.piece % d, 0u);
    EXPECT_GE(p.count * p.piece, ch.maxLen);
    EXPECT_LT((p.count - 1) * p.piece, ch.maxLen);
    // No larger piece of whole buckets gives fewer: the cap grows it no further.
    if (p.piece > d) EXPECT_GT((ch.maxLen + p.piece - d - 1) / (p.piece - d), gc::kMaxPieces);
    EXPECT_EQ(gc::chunkPieces(c, count, 4), p.count);
    // Sizing the call (pieceGather's loop) ends, with a piece table entry
    // per piece.
    EXPECT_GT(gc::twoShotAlgorithm().workspaceBytes(c, count, 4), 0u);
    EXPECT_EQ(gc::pieceGather(c, ch, p, 4).off.size(), p.count);
  }
}

// Wire bytes of rank r's pipelined two-shot, piece by piece from the
// description: each piece of a peer's chunk, and (N-1) copies of each
// piece of our own chunk's encoded sum (sent to every peer).
size_t pieceWireBytes(const gc::Chunks& ch, const gc::Pieces& p, int N, int r, int bits, int d) {
  size_t bytes = 0;
  for (size_t q = 0; q < p.count; ++q) {
    for (int j = 0; j < N; ++j) {
      if (j != r) bytes += gc::qsgd::encodedBytes(p.len(ch.len(j), q), bits, d);
    }
    bytes += (N - 1) * gc::qsgd::encodedBytes(p.len(ch.len(r), q), bits, d);
  }
  return bytes;
}

// Pipelined and unpipelined worlds reduce the same inputs in place over
// several steps (error feedback and owner residual on): outputs equal each
// other and the serial reference bit for bit on every rank, states are the
// same bytes, and the wire bytes are the sum of the pieces' encodings,
// which equals the unpipelined count.
void checkPipelined(int N, DType t, bool avg, size_t n, size_t pieceElems,
                    gradcompRounding_t rounding = gradcompRoundStochastic,
                    gradcompLevels_t levels = gradcompLevelsUniform) {
  const int d = 64, bits = 4, steps = 3;
  // pieceElems per chunk: pipelineBytes is the whole call's share as fp32.
  const size_t pipelineBytes = pieceElems * 4 * N;
  SCOPED_TRACE(testing::Message() << "N=" << N << " dtype=" << (int)t << " avg=" << avg
                                  << " n=" << n << " piece=" << pieceElems
                                  << " rounding=" << rounding << " levels=" << levels);
  gctest::CpuWorld flat(N, twoShotConfig(0, rounding, levels)),
      piped(N, twoShotConfig(pipelineBytes, rounding, levels));
  const gc::Chunks ch = gc::splitChunks(*piped.comm(0), n, bits);
  const gc::Pieces p = gc::splitPieces(*piped.comm(0), ch);
  ASSERT_GT(p.count, 1u) << "the case must actually pipeline";
  gradcompConfig_t rc = twoShotConfig(0, rounding, levels);
  rc.bucketSize = d;
  std::vector<Rank> ref;
  gctest::runPipelinedSteps(
      flat, piped, N, t, avg, n, steps, n + N,
      [&](std::vector<Rank>& in, int step) { return refTwoShot(in, t, n, rc, step, avg); }, &ref);
  if (testing::Test::HasFatalFailure()) return;
  gctest::expectSameStateAndWire(
      flat, piped, N, p.count, [&](int r) { return steps * pieceWireBytes(ch, p, N, r, bits, d); });
}

TEST(PipelineCpu, TwoShotPipelinedEqualsUnpipelined) {
  for (int N = 2; N <= 8; ++N) {
    for (DType t : {DType::F32, DType::F16, DType::BF16}) {
      for (bool avg : {false, true}) {
        // Pieces of one bucket, of three (not dividing the chunks) and of
        // five, smaller than a chunk in every case.
        for (size_t n : {3001ul, 5000ul}) {
          for (size_t piece : {64ul, 192ul, 320ul}) {
            if ((n + N - 1) / N <= piece) continue;
            checkPipelined(N, t, avg, n, piece);
            if (HasFatalFailure()) return;
          }
        }
      }
    }
  }
}

// A call whose one-bucket pieces would exceed kMaxPieces runs in at most
// kMaxPieces larger ones, with the results, state and wire bytes of the
// unpipelined call (and of the reference).
TEST(PipelineCpu, TwoShotPastThePieceCapEqualsUnpipelined) {
  for (int N : {2, 3}) {
    const size_t n = (size_t)N * 64 * (gc::kMaxPieces + 37) + 11;
    gctest::CpuWorld w(N, twoShotConfig(64 * 4 * N));
    const gc::Pieces p = gc::splitPieces(*w.comm(0), gc::splitChunks(*w.comm(0), n, 4));
    EXPECT_LE(p.count, gc::kMaxPieces) << "N=" << N;
    checkPipelined(N, DType::F32, N == 3, n, 64);
    if (HasFatalFailure()) return;
  }
}

// Nearest rounding: the pieces' encodes round as the whole call's do.
TEST(PipelineCpu, TwoShotPipelinedNearestEqualsUnpipelined) {
  for (int N : {2, 3, 5, 8})
    for (DType t : {DType::F32, DType::BF16})
      for (size_t piece : {64ul, 192ul}) {
        if ((3001 + N - 1) / N <= piece) continue;
        checkPipelined(N, t, N % 2 == 1, 3001, piece, gradcompRoundNearest);
        if (HasFatalFailure()) return;
      }
}

// Square levels: each piece's encode draws what the whole call's draws at
// the same element (the key's offset), and marks its buckets alike.
TEST(PipelineCpu, TwoShotPipelinedSquareLevelsEqualsUnpipelined) {
  for (gradcompRounding_t rounding : {gradcompRoundStochastic, gradcompRoundNearest})
    for (int N : {2, 3, 5})
      for (size_t piece : {64ul, 192ul}) {
        checkPipelined(N, DType::F32, N % 2 == 1, 3001, piece, rounding, gradcompLevelsSquare);
        if (HasFatalFailure()) return;
      }
}

// The hierarchy's middle stage runs two-shot on the inter-node child comm,
// which inherits the config: pipelined there too, and the in-node stages
// with it (test_hier_pipeline.cc), same results.
TEST(PipelineCpu, HierMiddleStagePipelinedEqualsUnpipelined) {
  const size_t n = 20000;
  const int L = 2;  // 3 and 4 nodes: the child comm runs two-shot
  for (int N : {6, 8}) {
    for (DType t : {DType::F32, DType::BF16}) {
      for (bool avg : {false, true}) {
        SCOPED_TRACE(testing::Message() << "N=" << N << " dtype=" << (int)t << " avg=" << avg);
        gradcompConfig_t base = twoShotConfig(0);
        base.algo = gradcompAlgoAuto;
        base.localSize = L;
        gradcompConfig_t pc = base;
        pc.pipelineBytes = 2048;
        gctest::CpuWorld flat(N, base), piped(N, pc);
        std::vector<Rank> a = makeInputs(N, n, t, 77 + L), b = a;
        for (int step = 0; step < 3; ++step) {
          for (auto* w : {&flat, &piped}) {
            std::vector<Rank>& bufs = w == &flat ? a : b;
            auto res = w->run([&](int r) {
              void* ptr = t == DType::F32 ? (void*)bufs[r].f32.data() : (void*)bufs[r].half.data();
              return gradcompAllReduceKeyed(ptr, ptr, n, nccl(t), avg ? ncclAvg : ncclSum,
                                            w->comm(r), nullptr, 7);
            });
            for (int r = 0; r < N; ++r)
              ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
          }
          for (int r = 0; r < N; ++r) {
            auto got = widen(b[r], t, n), want = widen(a[r], t, n);
            ASSERT_EQ(memcmp(got.data(), want.data(), n * 4), 0)
                << "rank " << r << " step " << step;
          }
        }
        gradcompStats_t sp, sf;
        ASSERT_EQ(gradcompGetStats(piped.comm(0), &sp), gradcompSuccess);
        ASSERT_EQ(gradcompGetStats(flat.comm(0), &sf), gradcompSuccess);
        EXPECT_EQ(sp.callsPerAlgo[gradcompAlgoHier], 3u);
        // The in-node blocks may pad (test_hier_pipeline.cc derives them).
        EXPECT_EQ(sp.bytesInterNode, sf.bytesInterNode);
        EXPECT_EQ(gctest::savedState(piped.comm(0)), gctest::savedState(flat.comm(0)));
        // Rank 0's shard (the first of L bucket-aligned shards), reduced over
        // the N/L nodes by the child comm, is cut into pieces.
        gradcompComm& inter = *piped.comm(0)->inter;
        size_t shards[L + 1];
        gc::splitAligned(n, L, base.bucketSize, shards);
        const gc::Chunks ch = gc::splitChunks(inter, shards[1], 4);
        EXPECT_GT(gc::splitPieces(inter, ch).count, 1u);
        EXPECT_EQ(sp.piecesLast, gc::splitPieces(inter, ch).count);
        EXPECT_EQ(sf.piecesLast, 1u);
      }
    }
  }
}

}  // namespace
