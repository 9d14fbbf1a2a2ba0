// The exchange algorithms, one file each, written against Backend and
// Transport only. Setup (sizes) is separate from run (moving data), so the
// comm can size its workspace before the first call and never allocate again.
#pragma once

#include <algorithm>
#include <vector>

#include "checks.h"
#include "comm.h"

namespace gc {

// Work a wrapping stage runs around the pieces of a pipelined call (the
// hierarchy's in-node stages around two-shot or the reduce-scatter). The
// algorithm runs at least `pieces` pieces (the extra ones empty on this
// rank) and calls, for q in [0, pieces + lag): before(q) if q < pieces, ahead
// of piece q's first read of the input; then after(q - lag) if q >= lag,
// once piece q - lag of the output is written. The lag is the algorithm's
// (two-shot 2, the reduce-scatter 1), so every rank calls them in one order,
// whatever its own chunks' piece count.
struct PieceHooks {
  size_t pieces = 1;
  virtual gradcompResult_t before(size_t q) = 0;
  virtual gradcompResult_t after(size_t q) = 0;

 protected:
  ~PieceHooks() = default;
};

struct CallArgs {
  gradcompComm* comm;
  const void* send;
  void* recv;
  size_t count;
  DType dtype;
  bool average;
  BufferState* state;
  int bits;                     // QSGD bit width for this call
  uint64_t step;                // comm step: RNG keys are (seed, step, rank, stream)
  PieceHooks* hooks = nullptr;  // two-shot and the QSGD reduce-scatter (PieceHooks)
  // The non-finite check folded into the kernels that write the output
  // (Algorithm::flagsOutput): where not null (backend memory, zeroed before
  // run), they set it to 1 where a value they store is a NaN or an
  // infinity, so that discardStateIfNonFinite needs no pass of its own.
  float* outputFlag = nullptr;
};

// The pieces a call runs: its own, or the hooks' count where that is more.
inline size_t hookedPieces(const CallArgs& a, size_t own) {
  return a.hooks != nullptr ? std::max(own, a.hooks->pieces) : own;
}

struct OwnerSpan {
  size_t off = 0, len = 0;
};

struct Algorithm {
  gradcompAlgo_t id;
  const char* name;
  // Workspace in bytes for `count` elements with `bits` on this comm.
  size_t (*workspaceBytes)(const gradcompComm& c, size_t count, int bits);
  // Bytes this rank puts on the wire for one call.
  size_t (*wireBytes)(const gradcompComm& c, size_t count, int bits);
  gradcompResult_t (*run)(const CallArgs& a, void* workspace);
  // Of wireBytes, the bytes this rank sends to ranks on other nodes.
  size_t (*interNodeBytes)(const gradcompComm& c, size_t count, int bits);
  // Pieces a pipelined call is cut into (GRADCOMP_PIPELINE_BYTES); null: the
  // algorithm does not pipeline (one piece).
  size_t (*pieces)(const gradcompComm& c, size_t count, int bits) = nullptr;
  // Where this rank's owner residual (the re-encode error of the chunk it
  // reduces, BufferState::ownerResidual) lies in the buffer: element i of it
  // is buffer element off + i, for i < len. Null: the algorithm keeps none.
  OwnerSpan (*ownerSpan)(const gradcompComm& c, size_t count) = nullptr;
  // Whether run() writes the whole output through kernels that take
  // CallArgs::outputFlag (Backend::qsgdDecodeToOutput, qsgdSum): the last
  // decodes of two-shot and the ring, the allgather's and the flat
  // reduce-scatter's sums. The hierarchies (NCCL's in-node allgather writes
  // most of the output), Elias and the sparse methods do not: their output
  // is checked by a pass of its own.
  bool flagsOutput = false;
};

const Algorithm& twoShotAlgorithm();          // algo_twoshot.cc
const Algorithm& ringAlgorithm();             // algo_ring.cc
const Algorithm& allgatherAlgorithm();        // algo_allgather.cc
const Algorithm& eliasAlgorithm();            // algo_elias.cc: GRADCOMP_ELIAS=1, variable size
const Algorithm& sparseAllgatherAlgorithm();  // algo_sparse.cc: topk, dgc
const Algorithm& randkAlgorithm();            // algo_sparse.cc: randk
// Sparse sizes depend on the buffer's call number (DGC warm-up), on the
// buffer type and on whether it keeps a residual; the Algorithm entries
// above give the steady state.
size_t sparseWorkspaceBytes(const gradcompComm& c, size_t count, DType t, bool haveResidual,
                            uint64_t calls);
size_t sparseWireBytes(const gradcompComm& c, size_t count, uint64_t calls);
// Reduce-scatter: CallArgs::count is the per-rank output count (recvcount);
// send holds nranks blocks of it. Written against the comm's rank, nranks,
// Backend and Transport only, so it runs on any (sub-)communicator.
// Of an all-to-all's `wire` bytes, where every peer receives the same size,
// the bytes sent to ranks on other nodes.
size_t allToAllInterNodeBytes(const gradcompComm& c, size_t wire);
// An allgather of direct sends: block j (bytes[j] bytes at blocks[j]) is rank
// j's; this rank's is in place and goes straight to every peer in one grouped
// send/recv, so the exchange pays one latency step where NCCL's ring
// allgather pays N-1 (the same bytes leave each rank). The compressed
// exchanges gather with it; the full-precision in-node stages keep NCCL's.
gradcompResult_t allGatherDirect(Transport& t, void* const* blocks, const size_t* bytes);
// The same for blocks of `bytes` each, block j at recv + j * stride (a slot
// of stride >= bytes: only the payload goes on the wire, not the padding).
gradcompResult_t allGatherDirect(Transport& t, void* recv, size_t stride, size_t bytes);
const Algorithm& reduceScatterAlgorithm();        // reduce_scatter.cc: qsgd
const Algorithm& sparseReduceScatterAlgorithm();  // sparse_reduce_scatter.cc: topk, dgc, randk
size_t sparseReduceScatterWorkspaceBytes(const gradcompComm& c, size_t recvCount, DType t,
                                         bool haveResidual, uint64_t calls);
size_t sparseReduceScatterWireBytes(const gradcompComm& c, size_t recvCount, uint64_t calls);
size_t sparseInterNodeBytes(const gradcompComm& c, size_t count, uint64_t calls);
// What the sparse allreduce and reduce-scatter share (common.cc): the
// selection plan for `count` elements at a buffer's call number (DGC's
// warm-up density) with the wire value type; whether a buffer keeps a
// residual; DGC's gradient clip threshold clipNorm*N^-1/2 (0: no clipping);
// and one selection from |v| into kmax (index, value) slots, v keeping
// exactly what was not sent (mask, when not null, zeroed where sent).
// sparseScratch: a call's scratch: the selector's where it selects (the
// threshold selector's staging sized by kmax; none for the exact selector),
// else (rand-k, a dense payload) only the clipping's.
sparse::Plan sparsePlan(const gradcompComm& c, size_t count, uint64_t calls, DType* valueType);
float sparseClipThreshold(const gradcompComm& c);
size_t sparseScratch(const gradcompComm& c, size_t count, const sparse::Plan& plan, bool selects);
gradcompResult_t sparseSelect(const gradcompComm& c, float* v, size_t count,
                              const sparse::Plan& plan, const KeySpec& key, DType vt, char* slot,
                              size_t valOff, float* mask, void* scratch);
// After publishSelected: the stats take the published count of received
// slot lists dropped as malformed; the first time it is not zero the comm
// warns (once: the count only grows).
void notePeerSlotsRejected(gradcompComm& c);

// Hierarchical exchange (hier.cc): used for every compressed call of a
// comm with >= 2 nodes of >= 2 ranks (Elias-coded QSGD excepted); the
// configured algo then names its inter-node stage. Sizes depend on the
// buffer type (the allgather) and, for DGC, on the call number.
bool useHier(const gradcompComm& c);
const Algorithm& hierAlgorithm();
size_t hierWorkspaceBytes(const gradcompComm& c, size_t count, int bits, uint64_t calls);
size_t hierWireBytes(const gradcompComm& c, size_t count, DType t, int bits, uint64_t calls);
size_t hierInterNodeBytes(const gradcompComm& c, size_t count, int bits, uint64_t calls);
// Pieces of the hierarchical exchanges (hier.cc), shared with the
// hierarchical reduce-scatter: the sub-communicators follow the call's
// stream; `blocks` blocks of src (block b at element srcOff[b], len[b] long)
// widened to fp32 into dst at a stride of `stride` elements, zero-padded; the
// buffer's state as the inter-node stage sees it (residual and momentum from
// `offset`); and the inter-node stage run on the child comm (*fallbacks: the
// child's dense fallbacks before it), its sparse stats reported as the
// caller's by reportInterNode once the caller's last exchange went through,
// so that a call failing after the inter-node stage counts for none.
void hierSetStreams(gradcompComm& c);
gradcompResult_t widenBlocks(Backend& be, const void* src, DType t, const size_t* srcOff,
                             const size_t* len, int blocks, size_t stride, float* dst);
BufferState hierStateView(const BufferState& st, size_t offset, size_t count);
// BufferState::unsharded: each of st's arrays (the velocity u and v), `blocks`
// blocks of len[b] at srcOff[b], widened into `scratch` at a stride of
// `stride` and reduce-scattered inside the node (`recvCount` floats into
// `shard`), then left holding this rank's part, the node's sums, at
// [ownOff, ownOff + ownLen), zero elsewhere; the flag cleared. Nothing to do
// without the flag.
gradcompResult_t hierFoldState(gradcompComm& c, BufferState& st, const size_t* srcOff,
                               const size_t* len, int blocks, size_t stride, float* scratch,
                               float* shard, size_t recvCount, size_t ownOff, size_t ownLen);
gradcompResult_t runInterNode(gradcompComm& c, const Algorithm& algo, const CallArgs& mid,
                              void* workspace, uint64_t* fallbacks);
void reportInterNode(gradcompComm& c, uint64_t fallbacks);

// Hierarchical reduce-scatter (hier_reduce_scatter.cc): every compressed
// reduce-scatter of a comm with >= 2 nodes of >= 2 ranks. Sizes depend on
// the bit width and, for the sparse methods, on the call number and whether
// the buffer keeps a residual.
bool useHierReduceScatter(const gradcompComm& c);
const Algorithm& hierReduceScatterAlgorithm();
size_t hierReduceScatterWorkspaceBytes(const gradcompComm& c, size_t recvCount, int bits,
                                       bool haveResidual, uint64_t calls);
size_t hierReduceScatterWireBytes(const gradcompComm& c, size_t recvCount, int bits,
                                  uint64_t calls);
size_t hierReduceScatterInterNodeBytes(const gradcompComm& c, size_t recvCount, int bits,
                                       uint64_t calls);

// Dense algorithm for (method, size, ranks, nodes): hier where useHier, else
// the configured one, else by size and ranks.
const Algorithm& pickDenseAlgorithm(const gradcompComm& c, size_t count);
// Whether a QSGD allreduce state of this comm needs an owner residual
// (BufferState::ownerResidual): ownerResidual is set and the algorithm its
// calls run (pickDenseAlgorithm, on a hierarchical comm the inter-node
// stage's) keeps one (Algorithm::ownerSpan). Not Elias, nor the allgather,
// which quantize once and never read it. The pick depends on the comm alone,
// not the count, so every state of a comm has the same shape.
bool allReduceKeepsOwnerResidual(const gradcompComm& c);

// Refuses (gradcompInvalidArgument naming the count and the largest one taken)
// an Elias allreduce (elias.cc) whose worst-case encoding at the widest bits
// the comm's calls may use (bits, or DQ-SGD's bitsMax) exceeds the stream's
// 32-bit word offsets: checked before the call sizes or allocates anything, so
// that no buffer passes at one width and is refused at a wider one later.
gradcompResult_t eliasCheckCount(const gradcompComm& c, size_t count);

// The bucket-aligned chunks of a buffer (chunk j is [off[j], off[j+1])), the
// largest chunk, and the equal slot size of one encoded chunk, as two-shot and
// ring split their work (and the owner residual is sized).
struct Chunks {
  std::vector<size_t> off;
  size_t maxLen = 0;
  size_t slot = 0;
  size_t len(int j) const { return off[j + 1] - off[j]; }
};
Chunks splitChunks(const gradcompComm& c, size_t count, int bits);
// The same into *ch, its offsets reusing the array's capacity; without
// `offsets`, maxLen and slot alone (off left empty, no allocation): what
// splitPieces, pieceGather and the size functions read.
void splitChunks(const gradcompComm& c, size_t count, int bits, Chunks* ch, bool offsets = true);

// Pipelined calls (GRADCOMP_PIPELINE_BYTES): every chunk is cut into pieces
// of `piece` elements, whole buckets, so a piece's bucket scales and RNG draws
// are the whole chunk's; piece p of a chunk is its elements [p*piece, ...).
// A piece covers pipelineBytes/4 elements of the call (its size as fp32,
// whatever the type), each chunk's share rounded up to whole buckets. One
// piece (piece = maxLen) when pipelining is off or the chunks fit in one.
// At most kMaxPieces pieces: a smaller share grows to ceil(maxLen /
// kMaxPieces) elements, rounded up to whole buckets (a piece of one bucket
// on a call of 2^56 elements would make 2^50 pieces, each its own exchange
// and piece table entry, and sizing the call would loop over all of them).
// Pieces are whole buckets either way, so results, states and wire bytes are
// those of any other cut.
constexpr size_t kMaxPieces = 1024;
struct Pieces {
  size_t piece = 0;
  size_t count = 1;
  size_t len(size_t chunkLen, size_t p) const {
    const size_t start = p * piece;
    return chunkLen > start ? std::min(piece, chunkLen - start) : 0;
  }
};
Pieces splitPieces(const gradcompComm& c, const Chunks& ch);

// The allgather region of a pipelined call, piece after piece: piece p's N
// blocks of slot[p] bytes (its largest chunk's encoding, 16-byte aligned)
// start at off[p]; one piece: the N chunk slots. `bytes` in all.
struct PieceGather {
  std::vector<size_t> off, slot;
  size_t bytes = 0;
};
PieceGather pieceGather(const gradcompComm& c, const Chunks& ch, const Pieces& p, int bits);
// The same into *g, reusing its arrays' capacity; without `offsets`, the
// bytes alone (off and slot left empty, no allocation).
void pieceGather(const gradcompComm& c, const Chunks& ch, const Pieces& p, int bits, PieceGather* g,
                 bool offsets = true);

// Puts the comm's transport on the backend's comm stream for a pipelined
// call, and back on the compute stream when the call ends, the comm lane
// joined into it (errors too).
class CommLane {
 public:
  CommLane(gradcompComm& c, bool on) : c_(c), on_(on) {
    if (on_) c_.transport->setStream(c_.backend->commStream());
  }
  ~CommLane() {
    if (!on_) return;
    c_.backend->join(Backend::kCommLane);
    c_.transport->setStream(c_.backend->stream());
  }
  CommLane(const CommLane&) = delete;
  CommLane& operator=(const CommLane&) = delete;

 private:
  gradcompComm& c_;
  bool on_;
};

// Puts a hierarchical comm's in-node transport on the node lane for a
// pipelined call, and back on the compute stream when the call ends, the node
// lane joined into it (errors too).
class NodeLane {
 public:
  NodeLane(Transport& t, Backend& be) : t_(t), be_(be) { t_.setStream(be_.nodeStream()); }
  ~NodeLane() {
    be_.join(Backend::kNodeLane);
    t_.setStream(be_.stream());
  }
  NodeLane(const NodeLane&) = delete;
  NodeLane& operator=(const NodeLane&) = delete;

 private:
  Transport& t_;
  Backend& be_;
};

// The event hand-offs of a pipelined call between the compute lane (the
// kernels) and the comm lane (the transport); all no-ops with one piece, so
// the unpipelined call runs on the caller's stream alone. Slot 0 hands
// compute work to the comm lane and is waited on at once; the caller picks
// the slots >= 1 for the marks, each waited on before it is recorded again.
struct LaneEvents {
  Backend& be;
  bool piped;
  // Transport work issued next waits for the kernels issued so far.
  gradcompResult_t toComm() const {
    if (!piped) return gradcompSuccess;
    GC_CHECK(be.record(Backend::kComputeLane, 0));
    return be.wait(Backend::kCommLane, 0);
  }
  // The comm lane has reached this point (slot ev).
  gradcompResult_t mark(int ev) const {
    return piped ? be.record(Backend::kCommLane, ev) : gradcompSuccess;
  }
  // Kernels issued next wait for the last mark in slot ev.
  gradcompResult_t await(int ev) const {
    return piped ? be.wait(Backend::kComputeLane, ev) : gradcompSuccess;
  }
};

// Pieces of a call to an algorithm that splits it with splitChunks and
// splitPieces (its Algorithm::pieces).
size_t chunkPieces(const gradcompComm& c, size_t count, int bits);
// Chunk j of splitChunks' split, as an owner span (Algorithm::ownerSpan).
OwnerSpan chunkSpan(const gradcompComm& c, size_t count, int j);

// The reduce-scatter's input as Chunks: N blocks of m elements, block j
// rank j's output, each block's encoding in a slot of its own.
Chunks equalBlocks(const gradcompComm& c, size_t m, int bits);
// The same into *ch, as splitChunks' (offsets: none without `offsets`).
void equalBlocks(const gradcompComm& c, size_t m, int bits, Chunks* ch, bool offsets = true);

// What the algorithms' run() keeps in the comm between calls
// (gradcompComm::callScratch): every call fills what it uses anew, so only
// the arrays' capacity carries over, and a call of a new shape grows them
// once. One set per comm (one call at a time holds it); each array is used
// by one algorithm at a time: two-shot, ring and the reduce-scatter run on
// a comm one at a time, the hierarchy's stages on their own comms.
struct CallScratch {
  Chunks chunks;         // two-shot, ring: splitChunks; the reduce-scatter: equalBlocks
  PieceGather gathered;  // two-shot, ring: the allgather region
  // ScatterSum's argument arrays.
  std::vector<const void*> sendPtr;
  std::vector<void*> recvPtr;
  std::vector<size_t> sendBytes, recvBytes;
  std::vector<EncodeSegment> segs;
  std::vector<SumTerm> terms;  // the allgather's too
  // Two-shot's and ring's allgather blocks and decodes.
  std::vector<void*> blocks;
  std::vector<size_t> sizes;
  std::vector<DecodeSegment> decodes;
  // checkRanksAgree's gathered values.
  std::vector<uint64_t> agreed;
  // The Elias allgather's encoded sizes (its other arrays: sizes, sendBytes,
  // sendPtr, blocks).
  std::vector<uint32_t> eliasWords;
  // The hierarchy's (on the parent comm, whose child runs the middle
  // stage): a pipelined allreduce's blocks and their offsets, and the
  // offsets and lengths of the blocks it widens.
  std::vector<size_t> hierBlock, hierBlockOff;
  std::vector<size_t> hierOff, hierLen;
  // A hierarchical reduce-scatter's carried pass-through (collective.cc):
  // where each state block's input lies, and the blocks' lengths.
  std::vector<size_t> passBlockAt, passLens;
};
// The comm's CallScratch, made at its first use.
CallScratch& callScratch(gradcompComm& c);

// The first half of two-shot, which is the whole compressed reduce-scatter,
// one piece at a time: chunk j of (g + residual) is encoded for rank j
// (error feedback fused, RNG draws following the element: KeySpec::offset
// is the piece's start in the chunk), this rank's own chunk stays full
// precision in `own` (its residual there spent), an all-to-all moves piece
// q of every chunk, and the owner sums its piece in rank order in fp32.
// Piece q of a chunk's encoding sits enc(q * piece) bytes into its slot
// (earlier pieces are whole buckets).
class ScatterSum {
 public:
  ScatterSum(const CallArgs& a, const Chunks& ch, const Pieces& p, char* sendEnc, char* recvEnc,
             float* own);
  size_t len(int j, size_t q) const { return p_.len(ch_.len(j), q); }
  size_t start(size_t q) const { return q * p_.piece; }
  // The key of an encode of piece q (from comm.key, so every field of the
  // call's key flows through).
  KeySpec key(uint64_t stream, size_t q) const;
  // E: encodes every peer's piece q; keeps our own in full precision.
  gradcompResult_t encode(size_t q);
  // X: the all-to-all of the encoded pieces q.
  gradcompResult_t exchange(size_t q);
  // The owner's sum of its piece q in rank order (its own block in full
  // precision, the peers' decoded), divided by `divisor` unless it is 1,
  // into out[0, len(rank, q)) of type t: Backend::qsgdSum, one kernel on a
  // warp-path bucket; `scratch` (fp32, as long) where t is not fp32 or the
  // sum is divided. flag: Backend::qsgdSum's (the output's check, or null).
  gradcompResult_t sum(size_t q, void* out, float divisor, DType t, float* scratch, float* flag);
  // E then X of piece q on a call's lanes: the exchange waits for the
  // kernels issued so far and marks slot 1 + q % 2 when done (two in
  // flight); awaitExchange(q) makes the kernels issued next wait for it.
  gradcompResult_t encodeExchange(size_t q, const LaneEvents& ev);
  gradcompResult_t awaitExchange(size_t q, const LaneEvents& ev) const {
    return ev.await(1 + (int)(q % 2));
  }

 private:
  char* slot(char* base, int j, size_t q) const;
  const CallArgs& a_;
  const Chunks& ch_;
  const Pieces& p_;
  char* sendEnc_;
  char* recvEnc_;
  float* own_;
  // The comm's (CallScratch), sized by the constructor.
  std::vector<const void*>& sendPtr_;
  std::vector<void*>& recvPtr_;
  std::vector<size_t>&sendBytes_, &recvBytes_;
  std::vector<EncodeSegment>& segs_;
  std::vector<SumTerm>& terms_;
};

// The second half of two-shot and ring, one piece at a time: block i of piece
// q's allgather region (PieceGather's, from `gather`) holds rank i's encoded
// sum of chunk (i + shift) mod N (two-shot 0: the chunk it owns; ring 1: the
// chunk its last hop leaves it). G sends this rank's block straight to every
// peer (one grouped send/recv, one latency step, where a ring allgather
// takes N-1), exactly enc(len) bytes of each block, not its slot's (the
// padding to 16 bytes, per piece, would be wire bytes too). D: every rank,
// owner included, decodes the same bytes (the N blocks in one launch on a
// warp bucket, converted and divided as they are stored in the output).
class GatherDecode {
 public:
  GatherDecode(const CallArgs& a, const Chunks& ch, const Pieces& p, const PieceGather& g,
               char* gather, int shift);
  // Where rank i's encoding of piece q goes.
  char* block(int i, size_t q) const { return gather_ + g_.off[q] + (size_t)i * g_.slot[q]; }
  // G: the allgather of piece q's blocks.
  gradcompResult_t gather(size_t q);
  // D: piece q of the output from all N blocks; `scratch`: fp32, as long as
  // the longest chunk's piece q (Backend::qsgdDecodeToOutput's).
  gradcompResult_t decode(size_t q, float* scratch);

 private:
  int chunk(int i) const { return (i + shift_) % a_.comm->nranks; }
  size_t len(int j, size_t q) const { return p_.len(ch_.len(j), q); }
  const CallArgs& a_;
  const Chunks& ch_;
  const Pieces& p_;
  const PieceGather& g_;
  char* gather_;
  int shift_;
  // The comm's CallScratch, whose blocks, sizes and decodes it uses (sized by the
  // constructor).
  CallScratch& arrays_;
};

// Workspace offsets aligned to 256 bytes.
inline size_t alignUp(size_t x, size_t a = 256) {
  return (x + a - 1) / a * a;
}

}  // namespace gc
