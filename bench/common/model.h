// The link model (docs/benchmark.md): what an allreduce would take on a
// network of L Gb/s per rank, from quantities measured in this run.
//   gradcomp: kernels measured alone + bytes this rank sends / L + latency steps * latency
//   NCCL:     ring: 2(N-1)/N * bytes / L + 2(N-1) * latency (its reduction hides in the copy)
// And its projection onto K nodes of G GPUs with two link classes: each GPU's
// in-node link (NVLink) and the NICs of a node, shared by its G GPUs.
#pragma once

#include <math.h>
#include <stddef.h>

#include <utility>
#include <vector>

namespace gcbench {

// What a call's kernels depend on besides the algorithm: the buffer's element
// size, error feedback (a residual per element), whether the output needs a
// conversion pass (not fp32, or Avg) and GRADCOMP_OWNER_RESIDUAL.
struct CallKind {
  size_t elemBytes = 4;
  bool residual = true;
  bool convert = false;
  // The output's decodes convert (and divide) in the decode kernel itself, a
  // bucket with a warp path (warpBucket; cuda::qsgdDecodeToOutput): no
  // conversion pass after them.
  bool fusedOut = false;
  // The owner's sum (ScatterSum::sum: two-shot's R, the reduce-scatter's S,
  // the hierarchy's two-shot middle and its reduce-scatter's exchange among
  // the nodes; and the allgather's sum of all N, flat or as hier's middle) in
  // one kernel a piece (Backend::qsgdSum), where the bucket has a warp path
  // (warpBucket, as fusedOut; a field of its own all the same): the N-1
  // peers' encodings decoded and the own fp32 block read in registers (the
  // allgather: all N encodings), added in rank order and stored once, by
  // every rank alike;
  // more than kFusedSumTerms terms go through an fp32 accumulator
  // (fusedSumLaunches). The flat reduce-scatter's and the allgather's sums
  // are stored straight in the output type, Avg divided: no conversion pass
  // after them (the hierarchical reduce-scatter's middle sums into fp32 and
  // converts after it, as before). Without it: one
  // decode a peer, and the own block added (scatterSum).
  bool fusedSum = false;
  // The encoded bytes an element (bits / 8 + 4 / bucket: the codes and the
  // bucket's fp32 scale; gradcompQsgdEncodedBytes of the row's count over
  // the count), which the fused sum reads for each peer beyond the first.
  double codeBytes = 0;
  bool ownerResidual = false;
  // Cut into pieces (GRADCOMP_PIPELINE_BYTES): the hierarchies' pipelined
  // paths widen, stage and unpack piece by piece, which costs more passes.
  bool piped = false;
  // The hierarchy's shards of different lengths (hierShardsPadded): even an
  // fp32 buffer is widened into equal blocks for the in-node reduce-scatter.
  bool paddedShards = false;
  // The sparse exchanges (algo 4: topk, dgc, randk), per element of the
  // buffer they run on: the slots each rank sends (kmax / n; rand-k's k / n)
  // and their value bytes; DGC's momentum, its clipping's norm pass and
  // momentum masking; a dense fallback (all of v through an fp32 allreduce).
  bool sparse = false, randk = false, dense = false;
  double slots = 0, valueBytes = 4;
  bool momentum = false, clip = false, mask = false;
};

// The kernels one rank runs per element of the buffer (of the output, for a
// reduce-scatter), each kind charged at its own rate (KernelCosts).
struct KernelWork {
  double encode = 0;       // the row's encode of the input type (its EF and rounding)
  double encodeF32 = 0;    // the same encode of fp32 partial sums (ring hops, hier's middle)
  double ownerEncode = 0;  // the owner's re-encode of a reduced chunk (EF only with ownerResidual)
  // decode overwrite (an owner's first chunk, a ring hop's; the fused sum's
  // base: one encoding read, 4 bytes an element written)
  double decode = 0;
  double decodeAcc = 0;  // decode-accumulate
  // decode overwrite of the output's chunks (Backend::qsgdDecodeToOutput): a piece's
  // N of them in one launch on a warp bucket, whatever the output (outDecodeLaunch)
  double decodeOut = 0;
  // read + written by toFloat, fromFloat, add, copy and zero passes, and the
  // fused sum's bytes beyond its base (fusedSumBytes)
  double elementwiseBytes = 0;
  double select = 0;      // the sparse selector (threshold or exact top-k) over v
  double checkSlots = 0;  // received slot lists' indices checked (sparseCheckLists)
  double flag = 0;        // rand-k's non-finite flag passes over v
  // The fused owner's sums (CallKind::fusedSum) within the above: their base
  // decodes (in `decode`), their bytes at the copy's rate (fusedSumBytes and
  // the allgather's, in elementwiseBytes), and the bytes they move
  // (fusedSumMovedBytes). Where the costs have a measured rate for the fused
  // sum (KernelCosts::sumPerByte), kernelUs charges sumBytes at it instead
  // of sumDecode decodes and sumCopyBytes at the copy's rate.
  double sumDecode = 0, sumCopyBytes = 0, sumBytes = 0;
};

// Microseconds per element of each kernel (elementwise: per byte), for the
// row's type, bits, bucket and rounding.
struct KernelCosts {
  double encode = 0, encodeF32 = 0, ownerEncode = 0, decode = 0, decodeAcc = 0;
  double elementwisePerByte = 0;
  double select = 0;
  double checkSlot = 0, flag = 0;  // per index checked; per element flagged
  // The decode overwrite at the output decodes' launch size: KernelCurve's
  // at() sets it (the one-size at(n): decode's own).
  double decodeOut = 0;
  // The fused owner's sum per byte it moves (KernelWork::sumBytes), from a
  // GPU report's qsgd_sum8 row (KernelRates::lookup); 0: not timed, the sum
  // is estimated from the decode and copy rates (the GPU backend's own
  // timing has no public entry point to time it through).
  double sumPerByte = 0;
};
double kernelUs(const KernelWork& w, const KernelCosts& c, double count);

// The costs as a function of the elements one kernel launch covers. The
// library launches its codec kernels per chunk and per piece (two-shot, the
// ring: count / (N * pieces); the reduce-scatter: recvcount / pieces; the
// hierarchy's middle stage: count / (N * pieces)), and a small launch costs
// more per element than one over the whole buffer (its launch and its tail
// weigh more). Points are costs measured (or read from a report) at launches
// of n elements; between two, each cost is interpolated linearly in log2(n);
// past the ends it is held at the end's (`clamped` says so for a launch
// below the smallest point: an underestimate there); and never below the
// largest launch's cost (the timing loop's small launches find their data in
// L2, where a call's chunks mostly come from memory).
struct KernelCurve {
  std::vector<std::pair<double, KernelCosts>> points;  // ascending n
  bool empty() const { return points.empty(); }
  void add(double n, const KernelCosts& c);  // keeps the order; replaces an equal n
  KernelCosts at(double n) const;
  // The codec kernels' costs at `codec` elements a launch, the peers'
  // encodes (encode, encodeF32) at `peerEncode` (peerEncodeLaunch), the
  // output's decodes (decodeOut) at `outDecode` (outDecodeLaunch), the
  // elementwise passes' at `elementwise`.
  KernelCosts at(double codec, double peerEncode, double outDecode, double elementwise) const;
  bool clamped(double n) const { return !points.empty() && n < points.front().first; }
  // The same curve for an fp32 buffer: every point's encode of the input at
  // the fp32 encode's cost (encodeF32: the same kernel on fp32 input). What
  // GRADCOMP_AUTO's timed calls run, whatever the row's type.
  KernelCurve fp32() const;
};
// The elements one codec launch covers in a call of `count` elements (the
// reduce-scatter's recvcount) run by `algo` on `nranks` ranks cut into
// `pieces` (hier: `local` ranks a node, `middle` the algorithm across nodes,
// 1 two-shot or 3 allgather), and one elementwise pass (the unpipelined
// hierarchy's widening and conversions run per local block of count / local,
// the pipelined one's per segment, as its codec kernels).
double codecLaunch(int algo, size_t count, int nranks, double pieces, int local = 1,
                   int middle = 1);
double elementwiseLaunch(int algo, size_t count, int nranks, int local, double pieces,
                         int middle = 1);
// The elements of the one launch that encodes a piece for all peers: the
// two-shot's and the reduce-scatter's encodes (ScatterSum: the N-1 peers'
// chunks, the hierarchy's middle and its reduce-scatter among the k nodes:
// k-1) go out batched (Backend::qsgdEncodeBatch), up to kBatchSegments
// chunks a launch, where the bucket has a warp path (128..1024); the ring's
// and the allgather's encode one chunk a launch (codecLaunch).
double peerEncodeLaunch(int algo, size_t count, int nranks, double pieces, int bucket,
                        int local = 1, int middle = 1);
// The elements of one launch of the output's decodes (Backend::qsgdDecodeToOutput):
// the two-shot's and the ring's N chunks of a piece (a two-shot or ring
// middle's k, into its fp32 shard) in one batched launch (up to
// kBatchSegments) where the bucket has a warp path, whatever the output's
// type; otherwise one chunk a launch.
double outDecodeLaunch(int algo, size_t count, int nranks, double pieces, int bucket, int local = 1,
                       int middle = 1);
// The most segments the library's batched codec launches take (kernels/:
// kMaxEncodeSegments, kMaxDecodeSegments).
constexpr int kBatchSegments = 16;
// Whether a bucket has the CUDA kernels' warp path (128, 256, 512, 1024):
// batched launches, decodes straight into any output type, and the owner's
// sum in one kernel (CallKind::fusedSum).
bool warpBucket(int bucket);
// The most terms one launch of the fused owner's sum adds (Backend::qsgdSum):
// the first launch sums 16 into an fp32 accumulator, each further one the
// accumulator and up to 15 more terms.
constexpr int kFusedSumTerms = 16;
// Launches of the fused sum of n terms: 1 + ceil(max(0, n - 16) / 15).
double fusedSumLaunches(double n);
// The owner's fused sum of n terms (n - 1 peers' encodings, the own fp32
// block), per element of its block: charged as one decode overwrite (its
// base: an encoding read, 4 bytes written, at the decode's rate) plus these
// bytes at the elementwise (copy) rate: the other n - 2 encodings
// (codeBytes each), the own block's 4 and, past 16 terms, the accumulator
// read and rewritten (8) by every launch after the first. An estimate until
// a GPU run times the kernel (gradcomp_kernels_perf's `sum` rows).
double fusedSumBytes(double n, double codeBytes);
// The bytes the fused sum of n terms moves per element of its block, as
// charged at a measured rate (KernelCosts::sumPerByte): with the own fp32
// block (ScatterSum::sum) the n - 1 encodings, the own block's 4 and the
// store's 4; without (the allgather's) the n encodings and the store's 4;
// past 16 terms the accumulator's 8 by every launch after the first. The
// estimate's base decode (an encoding read, 4 bytes written) plus its
// fusedSumBytes (or the allgather's (n - 1) E + 8 (L - 1)).
double fusedSumMovedBytes(double n, double codeBytes, bool ownBlock);
// CallKind::codeBytes of a row: gradcompQsgdEncodedBytes(count, bits,
// bucket) / count (0 for no elements).
double qsgdCodeBytes(size_t count, int bits, int bucket);

// Per-rank kernel work and sequential message steps of one allreduce, for
// the algorithm gradcomp ran (gradcompAlgo_t; 0 = passed through to NCCL).
// The owner's sum: fused (CallKind::fusedSum), every rank's alike; else the
// work is that of a rank other than rank 0 (rank 0's sum starts with its own
// chunk: one decode-accumulate and a copy where the others have a decode
// overwrite and an add).
struct AlgoShape {
  KernelWork work;
  double latencySteps;  // messages that must follow one another
  // The non-finite check's part of them (holdsState): its elementwise bytes
  // an element and steps, run once after the whole call, pieces or not.
  double checkBytes = 0, checkSteps = 0;
};
// The non-finite check's kernel time at the costs c (its bytes at the copy's
// rate): a pipelined schedule runs the rest piece by piece, then this once.
double checkUs(const AlgoShape& s, const KernelCosts& c, double count);
// Hier (algo 5) on nodes of `local` ranks: the `middle` algorithm (as hier
// picks it) on each rank's fp32 1/G shard among the k = N/G nodes, between
// NCCL's in-node reduce-scatter and allgather (no gradcomp kernels, G-1 ring
// steps each), plus the widening to fp32 and the conversion of the shard.
// The same work clusterModel gives hier with a two-shot middle.
// Reduce-scatter (algo 6) on nodes of `local` >= 2 ranks and >= 2 nodes: the
// hierarchical reduce-scatter, NCCL's in-node ring (G-1 steps) then the flat
// exchange among k = N/G nodes (k-1 blocks encoded and decoded, one step).
// Whether a call of `algo` (hier's `middle`) holds a buffer's state that the
// non-finite check guards (collective.h, discardStateIfNonFinite): error
// feedback's or the sparse methods' residual (kind.residual), or QSGD's owner
// residual where the algorithm has an owner's chunk. A passed call: no.
bool holdsState(int algo, int middle, const CallKind& kind);
// Whether the kernels that store the output set the non-finite check's flag
// as they store (Algorithm::flagsOutput, CallArgs::outputFlag): two-shot's
// and the ring's final decodes (fusedOut), the allgather's and the flat
// reduce-scatter's sums (fusedSum), where the bucket has a warp path. Not
// the hierarchies, Elias nor the sparse methods; nor a bucket without a warp
// path, whose decodes are followed by a pass over each segment.
bool checkFolded(int algo, int nranks, int local, const CallKind& kind);
// Either ends with the non-finite check where the call holds state
// (holdsState): the output's elemBytes read once more unless checkFolded,
// and a reduce-scatter's one more step (the flag's allreduce).
AlgoShape algoShape(int algo, int nranks, int local = 1, int middle = 1,
                    const CallKind& kind = CallKind());
// The part of hier's work (algoShape(5)) its `middle` algorithm runs on the
// fp32 shard among the nranks / local nodes: the rest is the widening, the
// conversion and the non-finite check, elementwise passes alone.
KernelWork hierMiddleWork(int nranks, int local, int middle, const CallKind& kind);
// Whether the hierarchy splits `count` elements into `local` shards of
// different lengths (splitAligned: whole buckets, the first ones longer).
bool hierShardsPadded(size_t count, int bucket, int local);

double ncclRingBytes(size_t bytes, int nranks);
double ncclModelUs(size_t bytes, int nranks, double gbps, double latencyUs);
// Reduce-scatter: NCCL's ring sends (N-1)/N of the input, (N-1) * outBytes,
// in N-1 steps.
double ncclReduceScatterBytes(size_t outBytes, int nranks);
double ncclReduceScatterModelUs(size_t outBytes, int nranks, double gbps, double latencyUs);
double gradcompModelUs(double kernelUs, double wireBytes, double latencySteps, double gbps,
                       double latencyUs);
// The share of a shaped Ethernet link's rate that carries TCP payload at MTU
// 1500: 1448 bytes per 1514-byte frame (Ethernet 14, IP 20, TCP 20 with 12 of
// timestamps), which tc's token bucket counts whole. The socket backend's
// model moves its bytes at L times this.
constexpr double kTcpPayloadShare = 1448.0 / 1514.0;
// The same call cut into `pieces` pieces (GRADCOMP_PIPELINE_BYTES): a
// two-stage pipeline of the kernels (k = kernelUs / pieces per piece, on the
// caller's stream) and the transfers (w = wire / pieces / L + steps * a per
// piece, on the comm stream, each piece paying its own latency steps):
//   fill + drain + (pieces - 1) * max(stage) = k + w + (pieces - 1) * max(k, w).
// One piece gives gradcompModelUs.
double pipelinedModelUs(double kernelUs, double wireBytes, double latencySteps, double gbps,
                        double latencyUs, double pieces);
// Pipelined two-shot as the library runs it (plugin/algorithms/twoshot.cc):
// per piece, on the compute stream the encode E (N-1 chunks' encodes and the
// own chunk widened), the owner's reduce R (its sum, fused or not, as
// algoShape charges it; the re-encode) and the decode D of every chunk (and
// the conversion); on the comm stream the all-to-all X and the owners' sends
// G, each half the wire bytes and one latency step. Issue order E_q X_q,
// then R_{q-1} G_{q-1}, then D_{q-2}; X_q after E_q, R after X, G after R, D
// after G. Its kernels sum to kernelUs(algoShape(1).work, costs) less the
// non-finite check (checkUs), which the caller adds once after the pieces.
struct TwoShotStageTimes {
  double encode = 0, reduce = 0, decode = 0;  // compute stream, per piece
  double exchange = 0;                        // comm stream: X and G each, per piece
};
TwoShotStageTimes twoShotStageTimes(size_t count, const CallKind& kind, int nranks,
                                    const KernelCosts& costs, double wireBytes, double gbps,
                                    double latencyUs, double pieces);
double twoShotPipelineSimUs(const TwoShotStageTimes& t, int pieces);

// K nodes of G GPUs. Bandwidths per direction: intraGbps per GPU (NVLink 4:
// 450 GB/s = 3600 Gb/s), nodeGbps for all NICs of a node together.
struct Cluster {
  int nodes = 1, local = 1;
  double intraGbps = 3600, nodeGbps = 400;
  double latencyUs = 10;
  int ranks() const { return nodes * local; }
};

// Bytes one GPU sends per call over each link class.
struct LinkBytes {
  double intra = 0, inter = 0;
};

// NCCL's ring over all K*G ranks: every ring crosses each node boundary once,
// so of each GPU's 2(N-1)/N * S, 1/G leaves the node.
LinkBytes ncclClusterBytes(double bytes, const Cluster& c);
// Flat two-shot: E = encoded bytes of the whole buffer; each rank sends E/N
// to every other rank twice, (N-G) of them on other nodes.
LinkBytes flatTwoShotBytes(double encoded, const Cluster& c);
// Flat allgather (plugin/algorithms/allgather.cc): each rank sends its whole
// encoding E to every other rank, (N-G) of them on other nodes.
LinkBytes flatAllgatherBytes(double encoded, const Cluster& c);
// Flat ring (plugin/algorithms/ring.cc): N-1 hops, each E/N to the next rank,
// then each rank's reduced chunk, E/N, to every other rank (N-G of them on
// other nodes). The bytes of the rank last on its node, whose hops all leave
// it (the ranks' most, as a row's inter_wire_bytes): (G-1)/N E in the node,
// (2N-1-G)/N E across; on one node all 2(N-1)/N E in it.
LinkBytes flatRingBytes(double encoded, const Cluster& c);
// Its links' time: the hops one after another (each waits for the one
// before, so each takes the slowest link a hop crosses: NVLink where nodes
// have G >= 2, the NIC where there are K >= 2 nodes), then the allgather's
// sends over both link classes at once. Without a hierarchy (K = 1 or G = 1)
// this is concurrentLinkUs(flatRingBytes).
double ringLinkUs(double encoded, const Cluster& c);
// Hierarchical: NVLink reduce-scatter of the buffer widened to fp32 and
// allgather of the reduced shards in the buffer's type (elemBytes each),
// (G-1)/G * count * (4 + elemBytes), then the `middle` algorithm on each
// GPU's shard across the K nodes (shardEncoded = E(S/G)): two-shot and the
// ring send 2(K-1)/K of it, an allgather (K-1) times it.
LinkBytes hierBytes(double bytes, double shardEncoded, const Cluster& c, double elemBytes = 4,
                    int middle = 1);

// NCCL's ring reduce-scatter over all K*G ranks, outBytes per rank out: as
// its allreduce ring, 1/G of each GPU's (N-1) * outBytes leaves the node.
LinkBytes ncclReduceScatterClusterBytes(double outBytes, const Cluster& c);

// Microseconds to move b when both classes carry traffic at once (the slower
// class limits) or one after the other (hierarchical stages).
double concurrentLinkUs(const LinkBytes& b, const Cluster& c);
double sequentialLinkUs(const LinkBytes& b, const Cluster& c);
// twoShotStageTimes on c, the row's two link classes or a projection's flat
// two-shot: each exchange (X and G) carries half of b a piece over both
// link classes at once (concurrentLinkUs) and one latency step.
TwoShotStageTimes twoShotClusterStageTimes(size_t count, const CallKind& kind, int nranks,
                                           const KernelCosts& costs, const LinkBytes& b,
                                           const Cluster& c, double pieces);

// The hierarchy cut into `pieces` pieces (GRADCOMP_PIPELINE_BYTES, a
// two-shot middle stage): per piece the NVLink reduce-scatter S (rs), the
// inter-node stage M (m: its kernels and its transfer one after the other)
// and the NVLink allgather A (ra), each piece paying its own latency steps.
// The reduce-scatter moves fp32 and the allgather the buffer's type
// (plugin/algorithms/hier.cc: reduceScatter(ncclFloat32), allGather of
// elemBytes an element), so of b.intra = (G-1)/G n (4 + elemBytes) the
// reduce-scatter carries 4 / (4 + elemBytes), the allgather the rest:
//   rs = b.intra * 4 / (4 + elemBytes) / pieces / intraGbps + (G-1) * latency
//   ra = b.intra * elemBytes / (4 + elemBytes) / pieces / intraGbps + (G-1) * latency
//   m = kernelUs / pieces + b.inter / pieces / (nodeGbps / G) + middleSteps * latency
// S and A share the node stream, in the order the library issues them
// (S0 S1 S2 A0 S3 A1 ... : two-shot's piece loop calls the hooks' before(q)
// then after(q-2)); M_q follows S_q and M_{q-1}; A_q waits for M_q. The call
// ends with the last A (hierPipelineScheduleUs). At least pieces * (rs + ra),
// the node stream's own work; one piece gives rs + m + ra, gradcompClusterUs
// with its stages in turn.
double hierPipelineScheduleUs(double rs, double ra, double m, int pieces);
// The pipelined hierarchy as the library runs it (plugin/algorithms/hier.cc,
// HierPipe around the middle two-shot's piece loop), on three streams: the
// compute stream runs every kernel, the node stream the NVLink collectives,
// the comm stream the middle stage's exchanges. Per piece: widen (compute),
// S (node, after its widen), copy-in (compute, after S), E (compute), X
// (comm), R (compute, after X), G (comm), D (compute, after G), the
// conversion ff (compute), A (node, after ff), unpack (compute, after A).
// Issue order: S_{q+1} before piece q's copy-in; A_q and the unpack of piece
// q-1 after the middle loop's step q+2. Times per piece.
struct HierStageTimes {
  double widen = 0, copyIn = 0, encode = 0, reduce = 0, decode = 0, convert = 0, unpack = 0;
  double reduceScatter = 0, allGather = 0;  // node stream: S and A
  double exchange = 0;                      // comm stream: X and G each
};
double hierPipelineSimUs(const HierStageTimes& t, int pieces);
// The stage times of the pipelined hierarchy on c: `count` elements of
// kind.elemBytes cut into `pieces`, the kernels at `costs` (per element of
// each launch's size, as clusterModel reads them off its curve).
HierStageTimes hierStageTimes(size_t count, const CallKind& kind, int bits, int bucket,
                              const KernelCosts& costs, const Cluster& c, double pieces);
double hierPipelinedUs(double kernelUs, const LinkBytes& b, double middleSteps, const Cluster& c,
                       double pieces, double elemBytes = 4);
// The hierarchical reduce-scatter cut into `pieces` pieces (its middle
// stage's, GRADCOMP_PIPELINE_BYTES): a two-stage pipeline of the NVLink
// reduce-scatter (r, all of b.intra) and the inter-node stage (m as above);
// the conversion to the output type is not timed, as in the unpipelined
// model:
//   r = b.intra / pieces / intraGbps + (G-1) * latency
//   r + m + (pieces - 1) * max(r, m).
// One piece gives gradcompClusterUs with its stages in turn.
double hierReduceScatterPipelinedUs(double kernelUs, const LinkBytes& b, double middleSteps,
                                    const Cluster& c, double pieces);
// The pieces the library cuts a hierarchical call of `count` elements into on
// c at pipelineBytes (0: off): the middle two-shot's (or ring's) pieces of
// the longest shard, whose chunks among the K nodes are cut into pieces of
// ceil(pipelineBytes / 4 / K) elements rounded up to whole buckets.
double hierPieces(size_t count, int bucket, const Cluster& c, size_t pipelineBytes);

// NCCL's ring over the cluster: both link classes at once, 2(N-1) steps.
double ncclClusterUs(double bytes, const Cluster& c);
// Its time: both link classes at once, N-1 steps.
double ncclReduceScatterClusterUs(double outBytes, const Cluster& c);
// A row measured on nodes of c.local ranks, from the bytes it sent over each
// link class: hier's stages follow one another (`stages`), a flat
// algorithm's sends to near and far peers go at once.
double gradcompClusterUs(double kernelUs, const LinkBytes& b, bool stages, double latencySteps,
                         const Cluster& c);

// Modeled times of one allreduce of `count` elements of kind.elemBytes each,
// QSGD at (bits, bucket) with the kernels' costs per element. hierPipedUs: hier cut at
// pipelineBytes (hierPieces; hierUs when one piece). Where c is no hierarchy
// (one node, or nodes of one GPU: gc::hierLayout) the library runs the flat
// algorithm, and hier's fields (bytes, kernels, times) are flat's, its
// pipelined ones the flat algorithm's as the library cuts it at
// pipelineBytes: a two-shot or ring in flatPieces, the kernels at the pieces'
// launch sizes; two-shot on its two streams (twoShotPipelineSimUs of
// twoShotClusterStageTimes), the ring in the two-stage pipeline of its rows'
// model (pipelinedClusterUs, its N steps a piece); an allgather in one
// piece. The flat fields stay unpipelined.
// autoUs: GRADCOMP_AUTO, which passes a call
// through when its predicted compressed time (hier, pipelined, on >= 2 nodes
// of >= 2 GPUs; else flat, pipelined where cut) is not below NCCL's, predicted as the library does
// (plugin/autotune.cc, autoRange): a line through each path's times at the two
// fp32 counts it times, NCCL's slope scaled by the element size
// (autoCompresses: its choice). Those timed calls are fp32 Sums whatever the
// row's type and op: their kernels at the fp32 costs (KernelCurve::fp32),
// their codes' bytes at the timed counts. decideAuto false: the smaller of
// the two (the timed calls' own times).
struct ClusterTimes {
  double ncclUs = 0, flatUs = 0, hierUs = 0;
  double flatKernelUs = 0, hierKernelUs = 0;
  double hierPieces = 1, hierPipedUs = 0, autoUs = 0;
  bool autoCompresses = false;
  double hierPipedKernelUs = 0;  // the pipelined path's kernels (CallKind::piped)
  // The bytes one piece of the pipelined path covers as the library cuts it
  // at pipelineBytes (pieceBytesUsed: above pipelineBytes where the library
  // rounds it up to whole buckets or grows it to at most 1024 pieces); 0
  // where it runs in one piece (hierPieces 1: the pipelined path not taken).
  size_t hierPipelineBytes = 0;
  LinkBytes nccl, flat, hier;
};
// The kernels are charged at the curve's costs at the launch sizes of each
// path on c (codecLaunch, elementwiseLaunch). `flatAlgo` is the algorithm
// the library runs flat over the N ranks and `middle` the hierarchy's across
// the K nodes (gradcompAlgo_t, as pickDenseAlgorithm picks them: on auto an
// allgather on 2 ranks or 2 nodes, two-shot above): 3 (allgather) charges
// the allgather's kernels, bytes and one latency step; 2 (ring) the ring's
// kernels (a decode, add and re-encode at each of its N-1 hops), N steps and
// flatRingBytes at ringLinkUs flat, its kernels and K steps as the middle;
// anything else two-shot's. A two-shot middle pipelines the hierarchy
// (hier.cc, hierPieceCount: hierPipelineSimUs); a ring middle is cut into
// its own pieces (ring.cc on the inter-node comm, the same hierPieces)
// inside an unpipelined hierarchy: the widening, the NVLink reduce-scatter,
// the ring in the two-stage pipeline of pipelinedClusterUs (its kernels at
// the pieces' launch sizes, its inter-node bytes, K steps a piece), the
// NVLink allgather and the conversion, one after another; an allgather
// middle is one piece. Flat, the library cuts two-shot and the ring
// (flatPieces), never the allgather.
ClusterTimes clusterModel(size_t count, const CallKind& kind, int bits, int bucket,
                          const KernelCurve& costs, const Cluster& c, size_t pipelineBytes = 0,
                          bool decideAuto = true, int flatAlgo = 1, int middle = 1);
// The pieces the library cuts a flat two-shot or ring of `count` elements on
// `nranks` ranks into at pipelineBytes (0: off; twoshot.cc and ring.cc,
// splitPieces on splitChunks): the longest chunk (splitAligned's first of N,
// whole buckets) cut into ceil(pipelineBytes / 4 / nranks) elements rounded
// up to whole buckets; one piece where that holds the chunk. hierPieces is
// this on the K nodes with the longest shard for the buffer.
double flatPieces(size_t count, int bucket, int nranks, size_t pipelineBytes);
// The bytes (as fp32, GRADCOMP_PIPELINE_BYTES's unit) one piece of a call
// covers as the library cuts it at pipelineBytes: the piece of each chunk
// (whole buckets, grown so that at most 1024 pieces cover the longest; so
// above pipelineBytes where that grows it) times the chunks it is cut from
// times 4. algo the gradcompAlgo_t that ran (6: the reduce-scatter, count
// its recvcount, hierarchical on >= 2 nodes of >= 2 ranks), on `nranks`
// ranks in nodes of `local`: two-shot and the ring, the N chunks; hier, its
// middle's K chunks of the longest shard; the reduce-scatter, its N blocks
// (hierarchical: K). 0 where the call is one piece or the algorithm is not cut.
size_t pieceBytesUsed(int algo, size_t count, int bucket, int nranks, int local,
                      size_t pipelineBytes);
// The pieces the library cuts a hierarchical reduce-scatter of `recvCount`
// elements a rank into on c at pipelineBytes (0: off): its middle stage's, the
// flat reduce-scatter among the K nodes (splitPieces on the inter-node comm):
// each block of recvCount cut into ceil(pipelineBytes / 4 / K) elements
// rounded up to whole buckets. One piece where c is no hierarchy (fewer than 2
// nodes or 2 GPUs a node: the library runs the flat reduce-scatter).
double hierReduceScatterPieces(size_t recvCount, int bucket, const Cluster& c,
                               size_t pipelineBytes);
// The pieces the library cuts a flat reduce-scatter of `recvCount` elements a
// rank among `nranks` ranks into at pipelineBytes (0: off; reduce_scatter.cc,
// splitPieces): each block of recvCount cut into ceil(pipelineBytes / 4 /
// nranks) elements rounded up to whole buckets; one piece where that holds a
// block. The hierarchy's middle stage is this on its K nodes.
double reduceScatterPieces(size_t recvCount, int bucket, int nranks, size_t pipelineBytes);
// pipelinedModelUs on a cluster: the two-stage pipeline of the kernels (k =
// kernelUs / pieces) and the transfers of b, both link classes at once (w =
// concurrentLinkUs(b / pieces) + latencySteps * latency per piece):
//   k + w + (pieces - 1) * max(k, w).
double pipelinedClusterUs(double kernelUs, const LinkBytes& b, double latencySteps,
                          const Cluster& c, double pieces);
// Modeled times of one reduce-scatter of `recvCount` elements out per rank
// (kind.elemBytes each, N * recvCount in), QSGD at (bits, bucket), as the
// library runs it on c (plugin/reduce_scatter.cc, useHierReduceScatter):
//   nccl: NCCL's ring reduce-scatter (ncclReduceScatterClusterUs);
//   flat: the flat compressed reduce-scatter over all N ranks (algoShape(6)
//     with one rank a node): (N-1) E(m) sent, G-1 of the blocks in the node,
//     N-G across, both link classes at once, one step;
//   hier: on >= 2 nodes of >= 2 GPUs the hierarchical one (algoShape(6) on
//     nodes of G): NCCL's in-node ring of the K*m widened floats, (G-1) K m 4
//     bytes in G-1 steps, then the flat exchange among the K nodes, (K-1)
//     E(m) across in one step, the stages in turn; elsewhere the library runs
//     the flat one, and hier's fields are flat's;
//   hierPipedUs: hier cut into hierReduceScatterPieces at pipelineBytes, the
//     two-stage pipeline of hierReduceScatterPipelinedUs (the row model's);
//     where c is no hierarchy the flat one cut into reduceScatterPieces among
//     the N ranks, the two-stage pipeline of pipelinedClusterUs (the flat row
//     model's, pipelinedModelUs); one piece: hierUs;
//   autoUs: GRADCOMP_AUTO as the library decides a reduce-scatter: lines
//     through both paths' times at the two timed input counts (2^18 and 2^23
//     rounded down to whole blocks of N), fp32 Sum (its kernels at the fp32
//     costs, KernelCurve::fp32), NCCL's slope scaled by the element size; the
//     compressed path is hierPipedUs's (the hierarchy's
//     where c is one, else the flat one's, pipelined where cut). decideAuto
//     false: the smaller of the two.
// The kernels are charged at the curve's costs at the launch sizes of each
// path (codecLaunch, peerEncodeLaunch, outDecodeLaunch, elementwiseLaunch
// with algo 6), as the reduce-scatter row's own.
ClusterTimes clusterReduceScatterModel(size_t recvCount, const CallKind& kind, int bits, int bucket,
                                       const KernelCurve& costs, const Cluster& c,
                                       size_t pipelineBytes = 0, bool decideAuto = true);
// GRADCOMP_AUTO's rule for one call of `count` elements of elemBytes, from
// the times of both paths at the two timed fp32 counts: plugin/autotune.cc's
// autoRange, which gradcomp_perf cannot call (it uses the public API only);
// tests/cpu/test_autotune.cc checks the two agree.
inline bool autoCompresses(const size_t timed[2], const double ncclUs[2], const double compUs[2],
                           size_t elemBytes, size_t count) {
  const double n0 = (double)timed[0], dn = (double)timed[1] - n0;
  const double bN = (ncclUs[1] - ncclUs[0]) / dn, aN = ncclUs[0] - bN * n0;
  const double bC = (compUs[1] - compUs[0]) / dn, aC = compUs[0] - bC * n0;
  // Compress where aN + bN' n > aC + bC n (bN' = bN * elemBytes / 4): k + s n > 0.
  const double s = bN * (double)elemBytes / 4.0 - bC, k = aN - aC, n = (double)count;
  if (s > 0.0) return n > -k / s;
  if (s < 0.0) {
    // Never on a win found only below the smaller timed count.
    const double hi = ceil(k / -s);
    return hi > n0 && n < hi;
  }
  return k > 0.0;
}

}  // namespace gcbench
