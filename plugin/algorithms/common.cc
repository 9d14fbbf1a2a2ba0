// Pieces the algorithms share.
#include "algorithms/algorithms.h"
#include "checks.h"
#include "codecs/qsgd.h"
#include "nvtx.h"

#include <math.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/qsgd_math.cuh"

namespace gc {

Chunks splitChunks(const gradcompComm& c, size_t count, int bits) {
  Chunks ch;
  splitChunks(c, count, bits, &ch);
  return ch;
}

void splitChunks(const gradcompComm& c, size_t count, int bits, Chunks* ch, bool offsets) {
  const int n = c.nranks, d = c.cfg.bucketSize;
  ch->off.clear();
  if (offsets) {
    ch->off.resize(n + 1);
    splitAligned(count, n, d, ch->off.data());
  }
  // Chunk 0 is the longest: splitAligned gives the earlier chunks the longer ones.
  ch->maxLen = alignedOffset(count, n, d, 1);
  ch->slot = alignUp(qsgd::encodedBytes(ch->maxLen, bits, d), 16);
}

Pieces splitPieces(const gradcompComm& c, const Chunks& ch) {
  Pieces pc;
  pc.piece = ch.maxLen;
  const size_t d = (size_t)c.cfg.bucketSize, bytes = c.cfg.pipelineBytes;
  if (bytes == 0 || ch.maxLen == 0) return pc;
  const size_t share = (bytes / 4 + (size_t)c.nranks - 1) / (size_t)c.nranks;
  const size_t least = ((ch.maxLen + kMaxPieces - 1) / kMaxPieces + d - 1) / d * d;
  const size_t piece = std::max(std::max<size_t>(1, (share + d - 1) / d) * d, least);
  if (piece >= ch.maxLen) return pc;
  pc.piece = piece;
  pc.count = (ch.maxLen + piece - 1) / piece;
  return pc;
}

PieceGather pieceGather(const gradcompComm& c, const Chunks& ch, const Pieces& p, int bits) {
  PieceGather g;
  pieceGather(c, ch, p, bits, &g);
  return g;
}

void pieceGather(const gradcompComm& c, const Chunks& ch, const Pieces& p, int bits, PieceGather* g,
                 bool offsets) {
  g->off.clear();
  g->slot.clear();
  g->bytes = 0;
  for (size_t q = 0; q < p.count; ++q) {
    const size_t slot =
        p.count == 1 ? ch.slot
                     : alignUp(qsgd::encodedBytes(p.len(ch.maxLen, q), bits, c.cfg.bucketSize), 16);
    if (offsets) {
      g->off.push_back(g->bytes);
      g->slot.push_back(slot);
    }
    g->bytes += (size_t)c.nranks * slot;
  }
}

size_t chunkPieces(const gradcompComm& c, size_t count, int bits) {
  Chunks ch;
  splitChunks(c, count, bits, &ch, false);
  return splitPieces(c, ch).count;
}

OwnerSpan chunkSpan(const gradcompComm& c, size_t count, int j) {
  const size_t off = alignedOffset(count, c.nranks, c.cfg.bucketSize, j);
  return {off, alignedOffset(count, c.nranks, c.cfg.bucketSize, j + 1) - off};
}

Chunks equalBlocks(const gradcompComm& c, size_t m, int bits) {
  Chunks ch;
  equalBlocks(c, m, bits, &ch);
  return ch;
}

void equalBlocks(const gradcompComm& c, size_t m, int bits, Chunks* ch, bool offsets) {
  ch->off.clear();
  if (offsets) {
    for (int j = 0; j <= c.nranks; ++j) ch->off.push_back((size_t)j * m);
  }
  ch->maxLen = m;
  ch->slot = alignUp(qsgd::encodedBytes(m, bits, c.cfg.bucketSize), 16);
}

CallScratch& callScratch(gradcompComm& c) {
  if (!c.callScratch) c.callScratch = std::make_shared<CallScratch>();
  return *c.callScratch;
}

ScatterSum::ScatterSum(const CallArgs& a, const Chunks& ch, const Pieces& p, char* sendEnc,
                       char* recvEnc, float* own)
    : a_(a),
      ch_(ch),
      p_(p),
      sendEnc_(sendEnc),
      recvEnc_(recvEnc),
      own_(own),
      sendPtr_(callScratch(*a.comm).sendPtr),
      recvPtr_(callScratch(*a.comm).recvPtr),
      sendBytes_(callScratch(*a.comm).sendBytes),
      recvBytes_(callScratch(*a.comm).recvBytes),
      segs_(callScratch(*a.comm).segs),
      terms_(callScratch(*a.comm).terms) {
  const size_t n = (size_t)a.comm->nranks;
  sendPtr_.resize(n);
  recvPtr_.resize(n);
  sendBytes_.resize(n);
  recvBytes_.resize(n);
  segs_.reserve(n);
  terms_.reserve(n);
}

char* ScatterSum::slot(char* base, int j, size_t q) const {
  return base + j * ch_.slot + qsgd::encodedBytes(start(q), a_.bits, a_.comm->cfg.bucketSize);
}

KeySpec ScatterSum::key(uint64_t stream, size_t q) const {
  KeySpec k = a_.comm->key(a_.step, stream);
  k.offset = start(q);
  return k;
}

gradcompResult_t ScatterSum::encode(size_t q) {
  GC_NVTX_RANGE("gradcomp encode");
  const gradcompComm& c = *a_.comm;
  Backend& be = *c.backend;
  const int n = c.nranks, r = c.rank, d = c.cfg.bucketSize;
  const size_t esz = dtypeBytes(a_.dtype);
  const char* send = static_cast<const char*>(a_.send);
  float* residual = a_.state->residual;
  // The peers' pieces in one batch (one launch on the CUDA backend): piece q
  // of chunk j with the key of stream j, as key(j, q).
  segs_.clear();
  for (int j = 0; j < n; ++j) {
    const size_t m = len(j, q), o = ch_.off[j] + start(q);
    if (j == r || m == 0) continue;
    segs_.push_back(EncodeSegment{send + o * esz, residual ? residual + o : nullptr, m, (uint64_t)j,
                                  slot(sendEnc_, j, q)});
  }
  GC_CHECK(be.qsgdEncodeBatch(segs_.data(), (int)segs_.size(), a_.dtype, a_.bits, d, key(0, q)));
  const size_t m = len(r, q), o = ch_.off[r] + start(q);
  if (m == 0) return gradcompSuccess;
  float* myResidual = residual ? residual + o : nullptr;
  GC_CHECK(be.toFloat(send + o * esz, a_.dtype, myResidual, m, own_ + start(q)));
  if (myResidual) GC_CHECK(be.zero(myResidual, m * sizeof(float)));
  return gradcompSuccess;
}

gradcompResult_t ScatterSum::exchange(size_t q) {
  GC_NVTX_RANGE("gradcomp exchange");
  const gradcompComm& c = *a_.comm;
  const int n = c.nranks, r = c.rank, bits = a_.bits, d = c.cfg.bucketSize;
  for (int j = 0; j < n; ++j) {
    sendPtr_[j] = slot(sendEnc_, j, q);
    recvPtr_[j] = slot(recvEnc_, j, q);
    sendBytes_[j] = j == r ? 0 : qsgd::encodedBytes(len(j, q), bits, d);
    recvBytes_[j] = j == r ? 0 : qsgd::encodedBytes(len(r, q), bits, d);
  }
  return c.transport->allToAll(sendPtr_.data(), sendBytes_.data(), recvPtr_.data(),
                               recvBytes_.data());
}

gradcompResult_t ScatterSum::sum(size_t q, void* out, float divisor, DType t, float* scratch,
                                 float* flag) {
  const gradcompComm& c = *a_.comm;
  const int n = c.nranks, r = c.rank;
  const size_t m = len(r, q);
  if (m == 0) return gradcompSuccess;
  terms_.clear();
  for (int i = 0; i < n; ++i) {
    terms_.push_back(i == r ? SumTerm{own_ + start(q), true}
                            : SumTerm{slot(recvEnc_, i, q), false});
  }
  return c.backend->qsgdSum(terms_.data(), n, m, a_.bits, c.cfg.bucketSize, divisor, t, out,
                            scratch, flag);
}

gradcompResult_t ScatterSum::encodeExchange(size_t q, const LaneEvents& ev) {
  GC_CHECK(encode(q));
  GC_CHECK(ev.toComm());
  GC_CHECK(exchange(q));
  return ev.mark(1 + (int)(q % 2));
}

GatherDecode::GatherDecode(const CallArgs& a, const Chunks& ch, const Pieces& p,
                           const PieceGather& g, char* gather, int shift)
    : a_(a), ch_(ch), p_(p), g_(g), gather_(gather), shift_(shift), arrays_(callScratch(*a.comm)) {
  const size_t n = (size_t)a.comm->nranks;
  arrays_.blocks.resize(n);
  arrays_.sizes.resize(n);
  arrays_.decodes.reserve(n);
}

gradcompResult_t GatherDecode::gather(size_t q) {
  GC_NVTX_RANGE("gradcomp allgather");
  const int n = a_.comm->nranks;
  std::vector<void*>& blocks = arrays_.blocks;
  std::vector<size_t>& sizes = arrays_.sizes;
  for (int i = 0; i < n; ++i) {
    blocks[i] = block(i, q);
    sizes[i] = qsgd::encodedBytes(len(chunk(i), q), a_.bits, a_.comm->cfg.bucketSize);
  }
  return allGatherDirect(*a_.comm->transport, blocks.data(), sizes.data());
}

gradcompResult_t GatherDecode::decode(size_t q, float* scratch) {
  GC_NVTX_RANGE("gradcomp decode");
  const gradcompComm& c = *a_.comm;
  const int n = c.nranks;
  const size_t esz = dtypeBytes(a_.dtype), start = q * p_.piece;
  char* recv = static_cast<char*>(a_.recv);
  std::vector<DecodeSegment>& decodes = arrays_.decodes;
  decodes.clear();
  for (int i = 0; i < n; ++i) {
    const int j = chunk(i);
    decodes.push_back(DecodeSegment{block(i, q), len(j, q), recv + (ch_.off[j] + start) * esz});
  }
  return c.backend->qsgdDecodeToOutput(decodes.data(), n, a_.bits, c.cfg.bucketSize,
                                       a_.average ? (float)n : 1.0f, a_.dtype, scratch,
                                       a_.outputFlag);
}

sparse::Plan sparsePlan(const gradcompComm& c, size_t count, uint64_t calls, DType* valueType) {
  // A call sizes its plan several times (workspace, wire bytes, run): the
  // settings' decimals are the comm's, worked out once.
  sparse::PlanSettings s = c.sparsePlanSettings();
  if (c.cfg.method == gradcompMethodDgc) {
    // A warm-up step's density (a power of 1/4, a float already) where it is
    // above the setting.
    const double d = sparse::warmupDensity(c.cfg.density, c.cfg.warmupSteps, calls);
    if (d != (double)c.cfg.density) s.density = sparse::floatDecimal(d);
  }
  const bool exact = c.cfg.select == gradcompSelectExact;
  if (dtypeFromNccl(c.cfg.valueType, valueType) != gradcompSuccess) *valueType = DType::F32;
  return sparse::makePlan(count, s, exact);
}

float sparseClipThreshold(const gradcompComm& c) {
  const bool dgc = c.cfg.method == gradcompMethodDgc;
  if (!dgc || !(c.cfg.clipNorm > 0.0f)) return 0.0f;
  // clipNorm is for unscaled gradients; the scale is exact in double.
  const float thr = (float)((double)c.cfg.clipNorm * c.gradScale / sqrt((double)c.nranks));
  // A threshold below half the smallest float (a tiny clipNorm under a small
  // scale, over many ranks) rounds to 0, which the kernels read as "no
  // clipping": the gradients would go whole where they were to be clipped to
  // next to nothing. The smallest float is as near as a float gets.
  return thr > 0.0f ? thr : std::numeric_limits<float>::denorm_min();
}

size_t sparseScratch(const gradcompComm& c, size_t count, const sparse::Plan& plan, bool selects) {
  if (!selects) return c.sparse->scratchBytes(count, 1, 0);
  const bool exact = c.cfg.select == gradcompSelectExact;
  return c.sparse->scratchBytes(count, exact ? 1 : plan.sample, exact ? 0 : plan.kmax);
}

gradcompResult_t sparseSelect(const gradcompComm& c, float* v, size_t count,
                              const sparse::Plan& plan, const KeySpec& key, DType vt, char* slot,
                              size_t valOff, float* mask, void* scratch) {
  SparseOps& ops = *c.sparse;
  uint32_t* idx = reinterpret_cast<uint32_t*>(slot);
  if (c.cfg.select == gradcompSelectExact) {
    GC_CHECK(ops.selectExact(v, count, plan.k, idx, scratch));
  } else {
    GC_CHECK(ops.selectThreshold(v, count, plan, key, idx, scratch));
  }
  return ops.commit(idx, plan.kmax, vt, slot + valOff, v, mask);
}

void notePeerSlotsRejected(gradcompComm& c) {
  const uint64_t rejected = c.sparse->peerSlotsRejected();
  if (rejected != 0 && c.stats.peerSlotsRejected == 0) {
    GC_WARN(
        "rank %d dropped %llu received sparse slot list(s) as malformed (indices not strictly "
        "increasing, or past the buffer); every rank drops the same ones, the sum lacks those "
        "ranks' contributions (stats.peerSlotsRejected)",
        c.parentRank >= 0 ? c.parentRank : c.rank, (unsigned long long)rejected);
  }
  c.stats.peerSlotsRejected = rejected;
}

gradcompResult_t allGatherDirect(Transport& t, void* const* blocks, const size_t* bytes) {
  const int n = t.size(), r = t.rank();
  // assign() reuses the arrays once they have their size: no allocation per call.
  Transport::GatherArgs& g = t.gatherArgs();
  g.send.assign(n, blocks[r]);
  g.sendBytes.assign(n, bytes[r]);
  g.recvBytes.assign(bytes, bytes + n);
  g.sendBytes[r] = g.recvBytes[r] = 0;
  return t.allToAll(g.send.data(), g.sendBytes.data(), blocks, g.recvBytes.data());
}

gradcompResult_t allGatherDirect(Transport& t, void* recv, size_t stride, size_t bytes) {
  const int n = t.size();
  Transport::GatherArgs& g = t.gatherArgs();
  g.blocks.resize(n);
  for (int j = 0; j < n; ++j) g.blocks[j] = static_cast<char*>(recv) + (size_t)j * stride;
  g.sizes.assign(n, bytes);
  return allGatherDirect(t, g.blocks.data(), g.sizes.data());
}

size_t allToAllInterNodeBytes(const gradcompComm& c, size_t wire) {
  return c.nranks > 1 ? wire / (size_t)(c.nranks - 1) * (size_t)c.remotePeers() : 0;
}

}  // namespace gc
