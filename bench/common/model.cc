#include "model.h"

#include <math.h>

#include <algorithm>
#include <vector>

#include "../../plugin/hier_layout.h"
#include "gradcomp/reference.h"

namespace gcbench {

namespace {

// The owner's sum of its block of `b` elements over n terms, the n-1
// peers' encodings and its own fp32 block in rank order (ScatterSum::sum).
// Fused (CallKind::fusedSum, Backend::qsgdSum): one kernel a piece, every
// rank alike, charged as a decode overwrite and fusedSumBytes at the copy's
// rate (an estimate), or, where the costs have the kernel's measured rate
// (gradcomp_kernels_perf's qsgd_sum8 rows: KernelCosts::sumPerByte), its
// fusedSumMovedBytes at that rate (KernelWork's sum fields). Else the sum
// of a rank other than rank 0: rank 0's block decoded overwrite, the other
// n-2 peers' accumulated, the own block added (reads two fp32, writes one).
void ownerSum(KernelWork& w, double n, const CallKind& k, double b) {
  if (n < 2) {
    w.elementwiseBytes += 8 * b;  // rank 0 alone: its block copied
    return;
  }
  w.decode += b;
  if (k.fusedSum) {
    const double copy = b * fusedSumBytes(n, k.codeBytes);
    w.elementwiseBytes += copy;
    w.sumDecode += b;
    w.sumCopyBytes += copy;
    w.sumBytes += b * fusedSumMovedBytes(n, k.codeBytes, true);
  } else {
    w.decodeAcc += (n - 2) * b;
    w.elementwiseBytes += 12 * b;
  }
}

// The owner's sum's time (ownerSum's work at the costs c).
double ownerSumUs(double n, const CallKind& k, const KernelCosts& c, double b) {
  KernelWork w;
  ownerSum(w, n, k, b);
  return kernelUs(w, c, 1.0);
}

// The reduce-scatter half every scatter-sum runs (ScatterSum: encode, the
// own block widened, the owner's sum), `b` elements of the buffer per block:
// n-1 blocks encoded for their owners; the own block's toFloat (reads the
// input and the residual, writes fp32) and the residual zeroed; the owner's
// sum (ownerSum).
void scatterSum(KernelWork& w, double n, const CallKind& k, double b) {
  const double e = (double)k.elemBytes, r = k.residual ? 4.0 : 0.0;
  w.encode += (n - 1) * b;
  w.elementwiseBytes += b * (e + r + 4) + b * r;
  ownerSum(w, n, k, b);
}

// Backend::qsgdDecodeToOutput: a decode overwrite of every element; where the output
// is not fp32 or Avg divides, through fp32 scratch and one fromFloat unless
// the decode kernel converts itself (fusedOut; charged at the fp32 decode's
// cost, which writes at least as many bytes).
void decodeOut(KernelWork& w, const CallKind& k) {
  w.decodeOut += 1;
  if (k.convert && !k.fusedOut) w.elementwiseBytes += 4.0 + k.elemBytes;
}

// The flat sparse reduce-scatter (plugin/algorithms/sparse_reduce_scatter.cc)
// per element of the output block m: v += g over all N blocks; for each of
// the N-1 peers' blocks a selection and commit (rand-k: its draw, gather and
// non-finite flag; a dense block: copied whole, settled clearing); the owner
// zeroes its sum, checks the N-1 received lists, adds its own block of v and
// scatter-adds (rand-k: draws its indices, applies the flags; dense: adds)
// the peers', settles its block clearing and converts once.
void sparseReduceScatter(KernelWork& w, double n, const CallKind& k) {
  const double e = (double)k.elemBytes, sl = k.slots, vb = k.valueBytes;
  const double res = k.residual ? 8 : 0, peers = n - 1;
  w.elementwiseBytes += n * (e + 4 + res + (k.momentum ? 8 : 0) + (k.clip ? e : 0));
  if (k.randk) {
    w.flag += peers;
    w.elementwiseBytes += peers * (20 * sl + res) + 4 * sl + peers * 24 * sl;
  } else if (k.dense) {
    w.elementwiseBytes += peers * (8 + (k.residual ? 12 : 8) + (k.mask ? 4 : 0)) + peers * 12;
  } else {
    w.select += peers;
    w.checkSlots += peers * sl;
    w.elementwiseBytes += peers * (sl * (12 + vb + (k.mask ? 4 : 0)) + res);
    w.elementwiseBytes += peers * sl * (12 + vb);
  }
  w.elementwiseBytes += 4 + 12 + (k.residual ? 12 : 8);  // zero, own block added, settle
  if (k.convert) w.elementwiseBytes += 4 + e;
}

KernelWork scaled(KernelWork w, double f) {
  w.encode *= f, w.encodeF32 *= f, w.ownerEncode *= f;
  w.decode *= f, w.decodeAcc *= f, w.decodeOut *= f, w.elementwiseBytes *= f;
  w.select *= f, w.checkSlots *= f, w.flag *= f;
  w.sumDecode *= f, w.sumCopyBytes *= f, w.sumBytes *= f;
  return w;
}

// The middle stage of a hierarchy runs on fp32 node sums: its encodes are
// fp32 ones, whatever the buffer's type.
KernelWork onFp32(KernelWork w) {
  w.encodeF32 += w.encode;
  w.encode = 0;
  return w;
}

}  // namespace

void KernelCurve::add(double n, const KernelCosts& c) {
  auto it = points.begin();
  while (it != points.end() && it->first < n) ++it;
  if (it != points.end() && it->first == n)
    it->second = c;
  else
    points.insert(it, {n, c});
}

KernelCosts KernelCurve::at(double n) const {
  // The output's decodes at this size too: a decode overwrite's cost.
  auto withOut = [](KernelCosts c) {
    c.decodeOut = c.decode;
    return c;
  };
  if (points.empty()) return withOut(KernelCosts{NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN});
  if (n >= points.back().first) return withOut(points.back().second);
  if (n <= points.front().first) {
    if (points.size() == 1) return withOut(points.front().second);
    n = points.front().first;  // held at the smallest, not below the largest (below)
  }
  size_t i = 1;
  while (i + 1 < points.size() && points[i].first < n) ++i;
  const double x0 = log2(points[i - 1].first), x1 = log2(points[i].first);
  const double f = (log2(n) - x0) / (x1 - x0);
  const KernelCosts &a = points[i - 1].second, &b = points[i].second;
  // Never below the largest launch's cost: a timing loop's repeated small
  // launches find their data in L2, a call's chunks mostly come from memory.
  const KernelCosts& z = points.back().second;
  auto mix = [f](double u, double v, double floor) {
    const double m = u + f * (v - u);
    return m < floor ? floor : m;
  };
  return withOut(
      KernelCosts{mix(a.encode, b.encode, z.encode), mix(a.encodeF32, b.encodeF32, z.encodeF32),
                  mix(a.ownerEncode, b.ownerEncode, z.ownerEncode),
                  mix(a.decode, b.decode, z.decode), mix(a.decodeAcc, b.decodeAcc, z.decodeAcc),
                  mix(a.elementwisePerByte, b.elementwisePerByte, z.elementwisePerByte),
                  mix(a.select, b.select, z.select), mix(a.checkSlot, b.checkSlot, z.checkSlot),
                  mix(a.flag, b.flag, z.flag), 0.0, mix(a.sumPerByte, b.sumPerByte, z.sumPerByte)});
}

KernelCurve KernelCurve::fp32() const {
  KernelCurve f = *this;
  for (auto& p : f.points) p.second.encode = p.second.encodeF32;
  return f;
}

KernelCosts KernelCurve::at(double codec, double peerEncode, double outDecode,
                            double elementwise) const {
  KernelCosts c = at(codec);
  const KernelCosts e = at(peerEncode);
  c.encode = e.encode;
  c.encodeF32 = e.encodeF32;
  c.decodeOut = at(outDecode).decode;
  c.elementwisePerByte = at(elementwise).elementwisePerByte;
  return c;
}

double codecLaunch(int algo, size_t count, int nranks, double pieces, int local, int middle) {
  const double n = (double)count, p = pieces > 1 ? pieces : 1;
  switch (algo) {
    case 5:  // hier: the middle's launches on the shard among the nodes; an allgather middle
             // (auto on 2 nodes) codes the whole shard, and is never cut into pieces
      if (middle == 3) return ceil(n / (local > 1 ? local : 1));
      return ceil(n / (nranks > 1 ? nranks : 1) / p);
    case 1:  // two-shot: every chunk, every piece
    case 2:  // ring: the same chunks
      return ceil(n / (nranks > 1 ? nranks : 1) / p);
    case 6:  // reduce-scatter (flat, or the hierarchy's middle): blocks of recvcount
      return ceil(n / p);
    default:  // allgather and the rest: the whole buffer
      return n;
  }
}

double elementwiseLaunch(int algo, size_t count, int nranks, int local, double pieces, int middle) {
  // hier: unpipelined, the widening and conversions run per local block of
  // count / G; pipelined (HierPipe), per segment of a middle chunk's piece.
  if (algo == 5 && !(pieces > 1)) return ceil((double)count / (local > 1 ? local : 1));
  return codecLaunch(algo, count, nranks, pieces, local, middle);
}

namespace {

// Segments of one batched launch: `segments` of them, at most kBatchSegments,
// and one where the bucket has no warp path (one launch a segment).
double batched(int segments, int bucket) {
  if (!warpBucket(bucket) || segments < 1) return 1;
  return segments < kBatchSegments ? segments : kBatchSegments;
}

}  // namespace

bool warpBucket(int bucket) {
  return bucket == 128 || bucket == 256 || bucket == 512 || bucket == 1024;
}

double fusedSumLaunches(double n) {
  return 1 + ceil(std::max(0.0, n - kFusedSumTerms) / (kFusedSumTerms - 1));
}

double fusedSumBytes(double n, double codeBytes) {
  return std::max(0.0, n - 2) * codeBytes + 4 + 8 * (fusedSumLaunches(n) - 1);
}

double fusedSumMovedBytes(double n, double codeBytes, bool ownBlock) {
  return (ownBlock ? (n - 1) * codeBytes + 8 : n * codeBytes + 4) + 8 * (fusedSumLaunches(n) - 1);
}

double qsgdCodeBytes(size_t count, int bits, int bucket) {
  return count > 0 ? (double)gradcompQsgdEncodedBytes(count, bits, bucket) / (double)count : 0.0;
}

double peerEncodeLaunch(int algo, size_t count, int nranks, double pieces, int bucket, int local,
                        int middle) {
  const int g = local > 1 ? local : 1, nodes = nranks / g;
  int peers = 1;
  switch (algo) {
    case 1:  // two-shot: the N-1 peers' chunks
      peers = nranks - 1;
      break;
    case 5:  // hier: a two-shot middle among the nodes (an allgather middle: one launch)
      if (middle == 1) peers = nodes - 1;
      break;
    case 6:  // reduce-scatter: flat, the N-1 peers' blocks; hierarchical, the k-1 nodes'
      peers = gc::hierLayout(nodes, g) ? nodes - 1 : nranks - 1;
      break;
    default:
      break;
  }
  return codecLaunch(algo, count, nranks, pieces, local, middle) * batched(peers, bucket);
}

double outDecodeLaunch(int algo, size_t count, int nranks, double pieces, int bucket, int local,
                       int middle) {
  const int g = local > 1 ? local : 1;
  int chunks = 1;
  switch (algo) {
    case 1:  // two-shot and the ring: the N chunks into the caller's output
    case 2:
      chunks = nranks;
      break;
    case 5:  // hier: a two-shot or ring middle's k chunks into the fp32 shard, whatever
             // the output
      if (middle == 1 || middle == 2) chunks = nranks / g;
      break;
    default:  // the allgather and the reduce-scatter decode into their sums
      break;
  }
  return codecLaunch(algo, count, nranks, pieces, local, middle) * batched(chunks, bucket);
}

double kernelUs(const KernelWork& w, const KernelCosts& c, double count) {
  // The fused sums at their measured rate where the costs have one, in place
  // of their estimate's decodes and copy-rate bytes.
  const bool sumMeasured = c.sumPerByte > 0;
  const double decode = sumMeasured ? w.decode - w.sumDecode : w.decode;
  const double bytes = sumMeasured ? w.elementwiseBytes - w.sumCopyBytes : w.elementwiseBytes;
  return count * (w.encode * c.encode + w.encodeF32 * c.encodeF32 + w.ownerEncode * c.ownerEncode +
                  decode * c.decode + w.decodeAcc * c.decodeAcc + w.decodeOut * c.decodeOut +
                  bytes * c.elementwisePerByte + w.select * c.select + w.checkSlots * c.checkSlot +
                  w.flag * c.flag + (sumMeasured ? w.sumBytes * c.sumPerByte : 0.0));
}

// Kernel work per element of the buffer, as plugin/algorithms/ runs it (the
// comment of each case says which calls). Latency steps: the sends of an
// all-to-all leave together (one step), as do the compressed exchanges'
// allgathers (allGatherDirect: each rank's block straight to every peer);
// the ring's hops follow one another; NCCL's allgather and allreduce run
// rings of N-1 and 2(N-1) steps.
bool hierShardsPadded(size_t count, int bucket, int local) {
  if (local <= 1 || bucket <= 0) return false;
  const size_t d = (size_t)bucket, g = (size_t)local;
  const size_t first = std::min(count, ((count + d - 1) / d + g - 1) / g * d);
  return first * g != count;
}

namespace {

AlgoShape algoShapeOf(int algo, int nranks, int local, int middle, const CallKind& kind) {
  const double n = nranks, e = (double)kind.elemBytes, r = kind.residual ? 4.0 : 0.0;
  AlgoShape s{};
  KernelWork& w = s.work;
  switch (algo) {
    case 5: {  // hier: the middle algorithm on the fp32 shard, between two in-node rings
      const int g = local > 1 ? local : 1;
      CallKind mid = kind;
      mid.elemBytes = 4;
      mid.convert = false;  // the middle sums in place into the fp32 shard
      const AlgoShape m = algoShapeOf(middle, nranks / g, 1, 1, mid);
      w = onFp32(scaled(m.work, 1.0 / g));
      // The buffer widened to fp32 for the in-node reduce-scatter (an fp32
      // buffer of whole shards goes as it is), and this rank's reduced shard
      // converted (Avg divided) into the gathered output.
      if (kind.elemBytes != 4 || kind.piped || kind.paddedShards) w.elementwiseBytes += e + 4;
      w.elementwiseBytes += (4 + e) / g;
      // Pipelined (HierPipe): every piece is widened, even fp32; its reduced
      // shard copied to the middle's buffer; the gathered blocks copied out.
      if (kind.piped) w.elementwiseBytes += 8.0 / g + 2 * e;
      s.latencySteps = 2.0 * (g - 1) + m.latencySteps;
      return s;
    }
    case 1:  // two-shot: ScatterSum on chunks of 1/N; the owner's re-encode of its reduced
             // chunk; every chunk decoded into the output. Two rounds of direct sends: the
             // all-to-all and the owners' sends of the sums.
      scatterSum(w, n, kind, 1.0 / n);
      w.ownerEncode += 1.0 / n;
      decodeOut(w, kind);
      s.latencySteps = 2;
      return s;
    case 2:  // ring: the own chunk encoded; every hop decodes overwrite and adds the local
             // chunk (toFloat with an addend), re-encodes fp32 with EF except at the last,
             // where the residual is added and zeroed and the owner re-encodes; then every
             // chunk decoded into the output. N-1 hops, then one round of direct sends.
      w.encode += 1.0 / n;
      w.decode += (n - 1) / n;
      w.elementwiseBytes += (n - 1) * (e + 8) / n;
      w.encodeF32 += std::max(0.0, n - 2) / n;
      w.elementwiseBytes += (r > 0 ? 16.0 : 0.0) / n;
      w.ownerEncode += 1.0 / n;
      decodeOut(w, kind);
      s.latencySteps = n;
      return s;
    case 4: {  // the sparse exchanges (plugin/algorithms/sparse.cc), bytes per element
      const double sl = kind.slots, vb = kind.valueBytes;
      // Accumulate: reads g (and v with a residual, which keep receives),
      // writes v; DGC reads and writes u; clipping reads g once more first.
      w.elementwiseBytes += e + 4 + (kind.residual ? 8 : 0) + (kind.momentum ? 8 : 0);
      if (kind.clip) w.elementwiseBytes += e;
      if (kind.dense) {
        // All of v through NCCL's fp32 allreduce (its kernel is NCCL's, as
        // in the baseline); settle reads v (and keep) and clears v (and u).
        w.elementwiseBytes += (kind.residual ? 12 : 8) + (kind.mask ? 4 : 0);
        s.latencySteps = 2.0 * (n - 1);
      } else if (kind.randk) {
        // The k indices drawn (written), gathered (index, v read, value
        // written, v cleared), the non-finite flag (one pass over v), the
        // flag applied to the k values, the output zeroed, the k values
        // scatter-added (index, value, out read and written).
        w.flag += 1;
        w.elementwiseBytes += sl * 4 + sl * 16 + sl * 8 + 4 + sl * 16;
        s.latencySteps = 2.0 * (n - 1);  // NCCL's ring allreduce of k + 1 floats
      } else {
        // The selector over v; the commit of the kmax slots (index, v read,
        // value and v written, u with masking); the N received lists'
        // indices checked; the output zeroed; N scatter-adds of kmax slots.
        w.select += 1;
        w.elementwiseBytes += sl * (12 + vb + (kind.mask ? 4 : 0));
        w.checkSlots += n * sl;
        w.elementwiseBytes += 4 + n * sl * (12 + vb);
        s.latencySteps = 1;  // allGatherDirect
      }
      // Settle with error feedback (not the dense path's): reads v and keep,
      // writes only where v is not finite.
      if (kind.residual && !kind.dense) w.elementwiseBytes += 8;
      if (kind.convert) w.elementwiseBytes += 4 + e;
      return s;
    }
    case 3:  // allgather: encode everything once, sum the N decodes in rank order
             // (Backend::qsgdSum) into the output (direct sends). Fused: one kernel, a
             // decode's base, the other N-1 encodings read and the accumulator's passes
             // past 16 terms (estimated as ownerSum's), converting as it stores; else
             // a decode overwrite, N-1 decode-accumulates, one conversion unless the
             // output is an fp32 Sum (decoded into directly).
      w.encode += 1;
      w.decode += 1;
      if (kind.fusedSum) {
        const double copy = (n - 1) * kind.codeBytes + 8 * (fusedSumLaunches(n) - 1);
        w.elementwiseBytes += copy;
        w.sumDecode += 1;
        w.sumCopyBytes += copy;
        w.sumBytes += fusedSumMovedBytes(n, kind.codeBytes, false);
      } else {
        w.decodeAcc += n - 1;
        if (kind.convert) w.elementwiseBytes += 4 + e;
      }
      s.latencySteps = 1;
      return s;
    case 6: {  // reduce-scatter (kAlgoReduceScatter), per element of the output
      // Hierarchical on >= 2 nodes of >= 2 ranks (as the library picks it): the
      // N blocks widened (permuted) to fp32, NCCL's in-node ring reduce-scatter
      // (G-1 steps, no gradcomp kernels), the flat exchange of fp32 node sums
      // among the k nodes into fp32 (the middle's sum stores fp32 there, fused
      // or not), one conversion.
      const int g = local > 1 ? local : 1;
      if (gc::hierLayout(nranks / g, g)) {
        const double k = nranks / g;
        CallKind mid = kind;
        mid.elemBytes = 4;
        scatterSum(w, k, mid, 1.0);
        w = onFp32(w);
        w.elementwiseBytes += n * (e + 4);
        if (kind.convert) w.elementwiseBytes += 4 + e;
        // Pipelined (HierRsPipe): each piece's k node sums copied to the middle's input.
        if (kind.piped) w.elementwiseBytes += 8 * k;
        s.latencySteps = (g - 1) + 1.0;
        return s;
      }
      // Flat: ScatterSum on blocks of the output's size, one conversion unless the
      // output is an fp32 Sum (summed in place) or the fused sum stores the
      // output type (Avg divided) itself; one all-to-all.
      s.latencySteps = 1;
      if (kind.sparse) {
        sparseReduceScatter(w, n, kind);
        return s;
      }
      scatterSum(w, n, kind, 1.0);
      if (kind.convert && !kind.fusedSum) w.elementwiseBytes += 4 + e;
      s.latencySteps = 1;
      return s;
    }
    default:  // passed through to ncclAllReduce
      s.latencySteps = 2 * (n - 1);
      return s;
  }
}

}  // namespace

KernelWork hierMiddleWork(int nranks, int local, int middle, const CallKind& kind) {
  // As algoShapeOf's hier: the middle on the fp32 shard, summed in place.
  const int g = local > 1 ? local : 1;
  CallKind mid = kind;
  mid.elemBytes = 4;
  mid.convert = false;
  return onFp32(scaled(algoShapeOf(middle, nranks / g, 1, 1, mid).work, 1.0 / g));
}

bool holdsState(int algo, int middle, const CallKind& kind) {
  if (algo == 0) return false;
  if (kind.residual) return true;
  // The owner residual: QSGD's allreduce algorithms with an owner's chunk
  // (allReduceKeepsOwnerResidual): two-shot, the ring, a hierarchy with one
  // of them in the middle; not the allgather nor the reduce-scatter.
  const bool owner = algo == 1 || algo == 2 || (algo == 5 && (middle == 1 || middle == 2));
  return kind.ownerResidual && !kind.sparse && owner;
}

bool checkFolded(int algo, int nranks, int local, const CallKind& kind) {
  if (kind.sparse) return false;
  const int g = local > 1 ? local : 1;
  switch (algo) {
    case 1:
    case 2:
      return kind.fusedOut;
    case 3:
      return kind.fusedSum;
    case 6:
      return kind.fusedSum && !gc::hierLayout(nranks / g, g);
    default:
      return false;
  }
}

AlgoShape algoShape(int algo, int nranks, int local, int middle, const CallKind& kind) {
  AlgoShape s = algoShapeOf(algo, nranks, local, middle, kind);
  // The non-finite check (discardStateIfNonFinite) of a call that holds
  // state: the output read once more (the flag's pass; its clears return at
  // once on a finite output) unless the kernels that store the output set
  // the flag as they store (checkFolded), and for a reduce-scatter the
  // flag's allreduce, one more step.
  if (holdsState(algo, middle, kind)) {
    s.checkBytes = checkFolded(algo, nranks, local, kind) ? 0.0 : (double)kind.elemBytes;
    s.checkSteps = algo == 6 ? 1 : 0;
    s.work.elementwiseBytes += s.checkBytes;
    s.latencySteps += s.checkSteps;
  }
  return s;
}

double checkUs(const AlgoShape& s, const KernelCosts& c, double count) {
  // None without state, whatever the costs (unmeasured ones are NaN).
  return s.checkBytes > 0 ? count * s.checkBytes * c.elementwisePerByte : 0.0;
}

double ncclRingBytes(size_t bytes, int nranks) {
  return nranks > 1 ? 2.0 * (nranks - 1) / nranks * (double)bytes : 0.0;
}

// bytes * 8 / (gbps * 1e9) seconds = bytes * 8 / (gbps * 1e3) microseconds.
static double transferUs(double bytes, double gbps) {
  return bytes > 0 ? bytes * 8.0 / (gbps * 1e3) : 0.0;
}

double ncclModelUs(size_t bytes, int nranks, double gbps, double latencyUs) {
  if (nranks <= 1) return 0;
  return transferUs(ncclRingBytes(bytes, nranks), gbps) + 2.0 * (nranks - 1) * latencyUs;
}

double ncclReduceScatterBytes(size_t outBytes, int nranks) {
  return nranks > 1 ? (nranks - 1.0) * (double)outBytes : 0.0;
}

double ncclReduceScatterModelUs(size_t outBytes, int nranks, double gbps, double latencyUs) {
  if (nranks <= 1) return 0;
  return ncclReduceScatterBytes(outBytes, nranks) * 8.0 / (gbps * 1e3) + (nranks - 1) * latencyUs;
}

LinkBytes ncclReduceScatterClusterBytes(double outBytes, const Cluster& c) {
  const double rs = (c.ranks() - 1.0) * outBytes;
  if (c.nodes <= 1) return {rs, 0.0};
  return {rs * (c.local - 1) / c.local, rs / c.local};
}

double ncclReduceScatterClusterUs(double outBytes, const Cluster& c) {
  const int n = c.ranks();
  if (n <= 1) return 0;
  return concurrentLinkUs(ncclReduceScatterClusterBytes(outBytes, c), c) + (n - 1) * c.latencyUs;
}

double gradcompModelUs(double kernelUs, double wireBytes, double latencySteps, double gbps,
                       double latencyUs) {
  return kernelUs + transferUs(wireBytes, gbps) + latencySteps * latencyUs;
}

double pipelinedModelUs(double kernelUs, double wireBytes, double latencySteps, double gbps,
                        double latencyUs, double pieces) {
  const double k = kernelUs / pieces;
  const double w = transferUs(wireBytes / pieces, gbps) + latencySteps * latencyUs;
  return k + w + (pieces - 1) * std::max(k, w);
}

TwoShotStageTimes twoShotStageTimes(size_t count, const CallKind& kind, int nranks,
                                    const KernelCosts& c, double wireBytes, double gbps,
                                    double latencyUs, double pieces) {
  TwoShotStageTimes t;
  const double P = pieces > 1 ? pieces : 1, n = nranks;
  const double e = (double)kind.elemBytes, r = kind.residual ? 4.0 : 0.0;
  const double b = (double)count / n / P;  // one chunk's piece
  const double ew = c.elementwisePerByte;
  // As algoShape's two-shot (scatterSum, the owner's re-encode, decodeOut).
  t.encode = (n - 1) * b * c.encode + b * (e + r + 4 + r) * ew;
  t.reduce = ownerSumUs(n, kind, c, b) + b * c.ownerEncode;
  t.decode = n * b * c.decodeOut + (kind.convert && !kind.fusedOut ? n * b * (4 + e) * ew : 0.0);
  t.exchange = transferUs(wireBytes / 2 / P, gbps) + latencyUs;
  return t;
}

namespace {

// Two-shot's piece loop (twoshot.cc) on the compute and comm streams, with
// the hooks a caller runs around it (the hierarchy's in-node stages):
// before(q) ahead of piece q's encode, after(q) behind its decode.
template <typename Before, typename After>
void twoShotLoop(const TwoShotStageTimes& t, int P, double& compute, double& comm, Before before,
                 After after) {
  std::vector<double> xDone(P), gDone(P);
  for (int q = 0; q < P + 2; ++q) {
    if (q < P) {
      before(q);
      compute += t.encode;
      comm = std::max(comm, compute) + t.exchange;
      xDone[q] = comm;
    }
    if (q >= 1 && q - 1 < P) {
      compute = std::max(compute, xDone[q - 1]) + t.reduce;
      comm = std::max(comm, compute) + t.exchange;
      gDone[q - 1] = comm;
    }
    if (q >= 2 && q - 2 < P) {
      compute = std::max(compute, gDone[q - 2]) + t.decode;
      after(q - 2);
    }
  }
}

}  // namespace

double twoShotPipelineSimUs(const TwoShotStageTimes& t, int pieces) {
  double compute = 0, comm = 0;
  twoShotLoop(
      t, std::max(1, pieces), compute, comm, [](int) {}, [](int) {});
  return compute;
}

LinkBytes ncclClusterBytes(double bytes, const Cluster& c) {
  const double n = c.ranks(), g = c.local;
  const double ring = n > 1 ? 2.0 * (n - 1) / n * bytes : 0.0;
  if (c.nodes <= 1) return {ring, 0.0};
  return {ring * (g - 1) / g, ring / g};
}

LinkBytes flatTwoShotBytes(double encoded, const Cluster& c) {
  const double n = c.ranks(), g = c.local;
  return {2.0 * encoded * (g - 1) / n, 2.0 * encoded * (n - g) / n};
}

LinkBytes flatAllgatherBytes(double encoded, const Cluster& c) {
  const double n = c.ranks(), g = c.local;
  return {encoded * (g - 1), encoded * (n - g)};
}

LinkBytes flatRingBytes(double encoded, const Cluster& c) {
  const double n = c.ranks(), g = c.local;
  if (c.nodes <= 1) return {2.0 * (n - 1) / n * encoded, 0.0};
  return {(g - 1) / n * encoded, (2 * n - 1 - g) / n * encoded};
}

LinkBytes hierBytes(double bytes, double shardEncoded, const Cluster& c, double elemBytes,
                    int middle) {
  const double g = c.local, k = c.nodes;
  const double inter = middle == 3 ? (k - 1) * shardEncoded : 2.0 * (k - 1) / k * shardEncoded;
  return {(g - 1) / g * bytes / elemBytes * (4.0 + elemBytes), inter};
}

// A node's NICs serve its G GPUs: each GPU's share is nodeGbps / G.
double concurrentLinkUs(const LinkBytes& b, const Cluster& c) {
  return std::max(transferUs(b.intra, c.intraGbps), transferUs(b.inter, c.nodeGbps / c.local));
}

double sequentialLinkUs(const LinkBytes& b, const Cluster& c) {
  return transferUs(b.intra, c.intraGbps) + transferUs(b.inter, c.nodeGbps / c.local);
}

double ringLinkUs(double encoded, const Cluster& c) {
  const double n = c.ranks(), g = c.local, hop = encoded / n;
  const double intra = c.local > 1 ? transferUs(hop, c.intraGbps) : 0.0;
  const double inter = c.nodes > 1 ? transferUs(hop, c.nodeGbps / c.local) : 0.0;
  return (n - 1) * std::max(intra, inter) +
         concurrentLinkUs(LinkBytes{(g - 1) * hop, (n - g) * hop}, c);
}

TwoShotStageTimes twoShotClusterStageTimes(size_t count, const CallKind& kind, int nranks,
                                           const KernelCosts& costs, const LinkBytes& b,
                                           const Cluster& c, double pieces) {
  const double P = pieces > 1 ? pieces : 1;
  // The kernels as on one link (no bytes there: its exchange is the latency
  // step alone), the exchange on both link classes.
  TwoShotStageTimes t =
      twoShotStageTimes(count, kind, nranks, costs, 0.0, 1.0, c.latencyUs, pieces);
  t.exchange = concurrentLinkUs(LinkBytes{b.intra / 2 / P, b.inter / 2 / P}, c) + c.latencyUs;
  return t;
}

// The hierarchy's stages per piece: an NVLink collective moving `intra`
// bytes in the node's G-1 ring steps, and the inter-node stage.
static double nodeStageUs(double intra, const Cluster& c, double pieces) {
  return transferUs(intra / pieces, c.intraGbps) + (c.local - 1.0) * c.latencyUs;
}

static double interStageUs(double kernelUs, const LinkBytes& b, double middleSteps,
                           const Cluster& c, double pieces) {
  return kernelUs / pieces + transferUs(b.inter / pieces, c.nodeGbps / c.local) +
         middleSteps * c.latencyUs;
}

double hierPipelineScheduleUs(double rs, double ra, double m, int pieces) {
  double node = 0, middle = 0;  // when each lane is next free
  std::vector<double> middleEnd(pieces > 0 ? pieces : 0);
  const int P = pieces;
  for (int q = 0; q < P + 2; ++q) {
    if (q < P) {  // before(q): S_q on the node stream, then piece q's middle stage
      node += rs;
      middle = std::max(middle, node) + m;
      middleEnd[q] = middle;
    }
    if (q >= 2 && q - 2 < P) node = std::max(node, middleEnd[q - 2]) + ra;  // after(q-2): A
  }
  return node;
}

double hierPipelineSimUs(const HierStageTimes& t, int pieces) {
  const int P = std::max(1, pieces);
  double compute = 0, node = 0, comm = 0;  // when each stream is next free
  std::vector<double> sDone(P), aDone(P);
  auto reducePiece = [&](int q) {  // widen, then the in-node reduce-scatter
    compute += t.widen;
    node = std::max(node, compute) + t.reduceScatter;
    sDone[q] = node;
  };
  auto unpack = [&](int q) { compute = std::max(compute, aDone[q]) + t.unpack; };
  const TwoShotStageTimes middle{t.encode, t.reduce, t.decode, t.exchange};
  reducePiece(0);
  twoShotLoop(
      middle, P, compute, comm,
      [&](int q) {  // the next piece's reduce-scatter, then this one's copy-in
        if (q + 1 < P) reducePiece(q + 1);
        compute = std::max(compute, sDone[q]) + t.copyIn;
      },
      [&](int q) {  // the conversion, the allgather, the previous piece's unpack
        compute += t.convert;
        node = std::max(node, compute) + t.allGather;
        aDone[q] = node;
        if (q >= 1) unpack(q - 1);
      });
  unpack(P - 1);
  return std::max(compute, node);
}

HierStageTimes hierStageTimes(size_t count, const CallKind& kind, int bits, int bucket,
                              const KernelCosts& c, const Cluster& cl, double pieces) {
  HierStageTimes t;
  const double P = pieces > 1 ? pieces : 1, G = cl.local, k = cl.nodes;
  const double e = (double)kind.elemBytes, r = kind.residual ? 4.0 : 0.0;
  const double piece = (double)count / P;  // elements of the buffer per piece
  const double m = piece / G;              // of this rank's shard per piece
  const double b = m / k;                  // of one middle chunk
  const double ew = c.elementwisePerByte;
  t.widen = piece * (e + 4) * ew;  // every block's piece to fp32, even fp32 (packed)
  t.copyIn = m * 8 * ew;           // the reduced shard piece into the middle's buffer
  // The middle two-shot on fp32 node sums (ScatterSum, then the owner, then decode).
  t.encode = (k - 1) * b * c.encodeF32 + b * ((4 + r + 4) + r) * ew;
  t.reduce = ownerSumUs(k, kind, c, b) + b * c.ownerEncode;
  t.decode = k * b * c.decodeOut;
  t.convert = m * (4 + e) * ew;   // this rank's reduced shard piece to the buffer type
  t.unpack = piece * 2 * e * ew;  // the gathered blocks copied out
  const double intraS = (G - 1) / G * piece * 4, intraA = (G - 1) / G * piece * e;
  const double lat = (G - 1) * cl.latencyUs;
  t.reduceScatter = transferUs(intraS, cl.intraGbps) + lat;
  t.allGather = transferUs(intraA, cl.intraGbps) + lat;
  const double shardEnc =
      (double)gradcompQsgdEncodedBytes((count + cl.local - 1) / cl.local, bits, bucket);
  const double inter = 2.0 * (k - 1) / k * shardEnc;  // X and G, each half
  t.exchange = transferUs(inter / 2 / P, cl.nodeGbps / cl.local) + cl.latencyUs;
  return t;
}

double hierPipelinedUs(double kernelUs, const LinkBytes& b, double middleSteps, const Cluster& c,
                       double pieces, double elemBytes) {
  // The reduce-scatter moves fp32, the allgather the buffer's type.
  const double rs = nodeStageUs(b.intra * 4.0 / (4.0 + elemBytes), c, pieces);
  const double ra = nodeStageUs(b.intra * elemBytes / (4.0 + elemBytes), c, pieces);
  const double m = interStageUs(kernelUs, b, middleSteps, c, pieces);
  return hierPipelineScheduleUs(rs, ra, m, std::max(1, (int)llround(pieces)));
}

double hierReduceScatterPipelinedUs(double kernelUs, const LinkBytes& b, double middleSteps,
                                    const Cluster& c, double pieces) {
  const double r = nodeStageUs(b.intra, c, pieces);
  const double m = interStageUs(kernelUs, b, middleSteps, c, pieces);
  return r + m + (pieces - 1) * std::max(r, m);
}

// splitAligned's first (longest) part of n elements in p parts of whole
// buckets of d.
static size_t firstPart(size_t n, size_t p, size_t d) {
  return std::min(n, ((n + d - 1) / d + p - 1) / p * d);
}

double hierPieces(size_t count, int bucket, const Cluster& c, size_t pipelineBytes) {
  if (c.nodes < 2) return 1;
  // The middle two-shot among the K nodes, on the longest shard.
  return flatPieces(firstPart(count, (size_t)c.local, (size_t)bucket), bucket, c.nodes,
                    pipelineBytes);
}

// The library's piece rule (plugin/algorithms/common.cc splitPieces) for a
// longest chunk of `len` elements: the share of pipelineBytes (as fp32)
// among n ranks in whole buckets of d, grown so that at most 1024 pieces
// (gc::kMaxPieces) cover the chunk; 1 where one piece holds it.
// PipelineCpu.TheModelsPiecesAreTheLibrarys holds it to the library's.
// pieceOf: the piece's elements (len where one piece holds the chunk).
static size_t pieceOf(size_t len, size_t d, size_t n, size_t pipelineBytes) {
  constexpr size_t kMaxPieces = 1024;
  if (pipelineBytes == 0 || len == 0) return len;
  const size_t share = (pipelineBytes / 4 + n - 1) / n;
  const size_t least = ((len + kMaxPieces - 1) / kMaxPieces + d - 1) / d * d;
  const size_t piece = std::max(std::max<size_t>(1, (share + d - 1) / d) * d, least);
  return std::min(piece, len);
}

static double piecesOf(size_t len, size_t d, size_t n, size_t pipelineBytes) {
  const size_t piece = pieceOf(len, d, n, pipelineBytes);
  return piece >= len ? 1 : (double)((len + piece - 1) / piece);
}

double flatPieces(size_t count, int bucket, int nranks, size_t pipelineBytes) {
  const size_t d = (size_t)bucket, n = (size_t)(nranks > 1 ? nranks : 1);
  return piecesOf(firstPart(count, n, d), d, n, pipelineBytes);
}

size_t pieceBytesUsed(int algo, size_t count, int bucket, int nranks, int local,
                      size_t pipelineBytes) {
  const size_t d = (size_t)bucket, g = (size_t)(local > 1 ? local : 1);
  const size_t n = (size_t)(nranks > 1 ? nranks : 1), k = std::max<size_t>(n / g, 1);
  size_t len = 0, among = n;
  switch (algo) {
    case 1:  // two-shot and the ring: the longest of the N chunks
    case 2:
      len = firstPart(count, n, d);
      break;
    case 5:  // hier: its middle's, the longest shard's longest chunk among the K nodes
      len = firstPart(firstPart(count, g, d), k, d), among = k;
      break;
    case 6:  // reduce-scatter: blocks of recvcount among the N ranks, or the K nodes
      len = count, among = gc::hierLayout((int)k, (int)g) ? k : n;
      break;
    default:
      return 0;
  }
  const size_t piece = pieceOf(len, d, among, pipelineBytes);
  return piece >= len ? 0 : piece * among * 4;
}

double ncclClusterUs(double bytes, const Cluster& c) {
  const int n = c.ranks();
  if (n <= 1) return 0;
  return concurrentLinkUs(ncclClusterBytes(bytes, c), c) + 2.0 * (n - 1) * c.latencyUs;
}

double gradcompClusterUs(double kernelUs, const LinkBytes& b, bool stages, double latencySteps,
                         const Cluster& c) {
  return kernelUs + (stages ? sequentialLinkUs(b, c) : concurrentLinkUs(b, c)) +
         latencySteps * c.latencyUs;
}

ClusterTimes clusterModel(size_t count, const CallKind& kind, int bits, int bucket,
                          const KernelCurve& curve, const Cluster& c, size_t pipelineBytes,
                          bool decideAuto, int flatAlgo, int middle) {
  ClusterTimes t;
  const double n = c.ranks();
  const double bytes = (double)count * kind.elemBytes;
  const size_t shard = (count + c.local - 1) / c.local;
  // The flat path and the middle: an allgather (auto on 2 ranks or nodes, or
  // named) or the ring (named) where the library runs one, else two-shot.
  const int flat = flatAlgo == 3 || flatAlgo == 2 ? flatAlgo : 1;
  const int mid = middle == 3 || middle == 2 ? middle : 1;
  const double encoded = (double)gradcompQsgdEncodedBytes(count, bits, bucket);
  t.nccl = ncclClusterBytes(bytes, c);
  t.flat = flat == 3   ? flatAllgatherBytes(encoded, c)
           : flat == 2 ? flatRingBytes(encoded, c)
                       : flatTwoShotBytes(encoded, c);
  t.hier = hierBytes(bytes, (double)gradcompQsgdEncodedBytes(shard, bits, bucket), c,
                     (double)kind.elemBytes, mid);
  if (n <= 1) return t;
  t.ncclUs = ncclClusterUs(bytes, c);
  // The flat algorithm over all N ranks.
  const AlgoShape fs = algoShape(flat, c.ranks(), 1, 1, kind);
  t.flatKernelUs = kernelUs(fs.work,
                            curve.at(codecLaunch(flat, count, c.ranks(), 1),
                                     peerEncodeLaunch(flat, count, c.ranks(), 1, bucket),
                                     outDecodeLaunch(flat, count, c.ranks(), 1, bucket),
                                     codecLaunch(flat, count, c.ranks(), 1)),
                            (double)count);
  // The ring's hops follow one another (ringLinkUs); the others' sends go at once.
  t.flatUs = flat == 2 ? t.flatKernelUs + ringLinkUs(encoded, c) + fs.latencySteps * c.latencyUs
                       : gradcompClusterUs(t.flatKernelUs, t.flat, false, fs.latencySteps, c);
  // Hierarchical with the middle algorithm on the shard over the K nodes.
  // GRADCOMP_AUTO between NCCL and the compressed path (comp of t).
  auto decide = [&](ClusterTimes& t, double ClusterTimes::*comp) {
    // A path whose kernels have no cost (not measured) has no time: the
    // schedules' max() would drop a NaN kernel time and keep the links'.
    if (!std::isfinite(t.flatKernelUs)) t.flatUs = NAN;
    if (!std::isfinite(t.hierKernelUs)) t.hierUs = NAN;
    if (!std::isfinite(t.hierPipedKernelUs)) t.hierPipedUs = NAN;
    if (!decideAuto) {
      t.autoCompresses = t.*comp < t.ncclUs;
    } else {
      const size_t timed[2] = {size_t(1) << 18, size_t(1) << 23};  // AutoState::timedCounts
      // The timed calls are fp32 Sums (autotune.cc measure): fp32 encodes,
      // whatever the row's type, and the codes of the timed counts.
      const KernelCurve curve32 = curve.fp32();
      CallKind f32 = kind;
      f32.elemBytes = 4;
      f32.convert = false;
      double ncclUs[2], compUs[2];
      for (int i = 0; i < 2; ++i) {
        f32.codeBytes = qsgdCodeBytes(timed[i], bits, bucket);
        const ClusterTimes ti = clusterModel(timed[i], f32, bits, bucket, curve32, c, pipelineBytes,
                                             false, flatAlgo, middle);
        ncclUs[i] = ti.ncclUs;
        compUs[i] = ti.*comp;
      }
      t.autoCompresses = autoCompresses(timed, ncclUs, compUs, kind.elemBytes, count);
    }
    // Without a finite compressed time (kernels not measured) there is
    // nothing to choose from: auto is unknown, not NCCL's.
    t.autoUs = !std::isfinite(t.*comp) ? NAN : t.autoCompresses ? t.*comp : t.ncclUs;
  };
  // No hierarchy (one node, or nodes of one GPU): the library runs the flat
  // algorithm (gc::hierLayout), and hier's fields are flat's; pipelined, the
  // flat two-shot or ring as the library cuts it (twoshot.cc, ring.cc:
  // splitPieces), its kernels at the pieces' launch sizes: two-shot on its
  // two streams, the ring in its rows' two-stage pipeline (its hops' links
  // are then concurrentLinkUs's); the allgather is never cut.
  if (!gc::hierLayout(c.nodes, c.local)) {
    t.hierKernelUs = t.hierPipedKernelUs = t.flatKernelUs;
    t.hierUs = t.hierPipedUs = t.flatUs;
    t.hier = t.flat;
    t.hierPieces = flat != 3 ? flatPieces(count, bucket, c.ranks(), pipelineBytes) : 1;
    t.hierPipelineBytes =
        t.hierPieces > 1 ? pieceBytesUsed(flat, count, bucket, c.ranks(), c.local, pipelineBytes)
                         : 0;
    if (t.hierPieces > 1) {
      const double P = t.hierPieces;
      const KernelCosts pc = curve.at(codecLaunch(flat, count, c.ranks(), P),
                                      peerEncodeLaunch(flat, count, c.ranks(), P, bucket),
                                      outDecodeLaunch(flat, count, c.ranks(), P, bucket),
                                      codecLaunch(flat, count, c.ranks(), P));
      t.hierPipedKernelUs = kernelUs(fs.work, pc, (double)count);
      // The non-finite check once, after the pieces (an allreduce's: no step).
      const double check = checkUs(fs, pc, (double)count);
      t.hierPipedUs =
          check +
          (flat == 2
               ? pipelinedClusterUs(t.hierPipedKernelUs - check, t.flat, fs.latencySteps, c, P)
               : twoShotPipelineSimUs(
                     twoShotClusterStageTimes(count, kind, c.ranks(), pc, t.flat, c, P),
                     (int)llround(P)));
    }
    // The library's compressed path, pipelined where it is cut.
    decide(t, &ClusterTimes::hierPipedUs);
    return t;
  }
  CallKind hk = kind;
  hk.paddedShards = hierShardsPadded(count, bucket, c.local);
  // Unpipelined here whatever the measured row was (its own pieces are not
  // the projection's): the pipelined path is the one below.
  hk.piped = false;
  const AlgoShape hs = algoShape(5, c.ranks(), c.local, mid, hk);
  auto hierCosts = [&](double pieces) {
    return curve.at(codecLaunch(5, count, c.ranks(), pieces, c.local, mid),
                    peerEncodeLaunch(5, count, c.ranks(), pieces, bucket, c.local, mid),
                    outDecodeLaunch(5, count, c.ranks(), pieces, bucket, c.local, mid),
                    elementwiseLaunch(5, count, c.ranks(), c.local, pieces, mid));
  };
  t.hierKernelUs = kernelUs(hs.work, hierCosts(1), (double)count);
  t.hierUs = gradcompClusterUs(t.hierKernelUs, t.hier, true, hs.latencySteps, c);
  // A two-shot middle pipelines the hierarchy (hier.cc, hierPieceCount); a
  // ring middle is cut into its own pieces on the longest shard (ring.cc on
  // the inter-node comm; hier.cc hierPieces), the same count; an allgather
  // middle is not cut.
  t.hierPieces = mid == 1 || mid == 2 ? hierPieces(count, bucket, c, pipelineBytes) : 1;
  t.hierPipelineBytes =
      t.hierPieces > 1 ? pieceBytesUsed(5, count, bucket, c.ranks(), c.local, pipelineBytes) : 0;
  if (mid == 2 && t.hierPieces > 1) {
    // The ring's pieces inside an unpipelined hierarchy: its kernels at the
    // pieces' launch sizes in the two-stage pipeline of kernels and its
    // inter-node bytes (K steps a piece, as the flat ring's), between the
    // whole NVLink reduce-scatter and allgather; the widening, conversion
    // and non-finite check (the rest of hier's work, elementwise) at the
    // unpipelined launches, in turn with them.
    const double P = t.hierPieces;
    const KernelWork mw = hierMiddleWork(c.ranks(), c.local, mid, hk);
    const double ringUs = kernelUs(mw, hierCosts(P), (double)count);
    const double restUs = t.hierKernelUs - kernelUs(mw, hierCosts(1), (double)count);
    t.hierPipedKernelUs = ringUs + restUs;
    t.hierPipedUs = restUs + transferUs(t.hier.intra, c.intraGbps) +
                    2.0 * (c.local - 1) * c.latencyUs +
                    pipelinedClusterUs(ringUs, LinkBytes{0.0, t.hier.inter}, c.nodes, c, P);
    decide(t, &ClusterTimes::hierPipedUs);
    return t;
  }
  CallKind piped = hk;
  piped.piped = t.hierPieces > 1;
  t.hierPipedKernelUs = kernelUs(algoShape(5, c.ranks(), c.local, mid, piped).work,
                                 hierCosts(t.hierPieces), (double)count);
  // Pipelined: the library's three streams, stage by stage (hierPipelineSimUs),
  // then the non-finite check once (an allreduce's: no step); one piece: its
  // stages in turn, as hierUs.
  t.hierPipedUs =
      t.hierPieces > 1
          ? hierPipelineSimUs(
                hierStageTimes(count, hk, bits, bucket, hierCosts(t.hierPieces), c, t.hierPieces),
                (int)llround(t.hierPieces)) +
                checkUs(hs, hierCosts(t.hierPieces), (double)count)
          : hierPipelinedUs(t.hierPipedKernelUs, t.hier, hs.latencySteps - 2.0 * (c.local - 1), c,
                            t.hierPieces, (double)kind.elemBytes);
  decide(t, &ClusterTimes::hierPipedUs);
  return t;
}

double reduceScatterPieces(size_t recvCount, int bucket, int nranks, size_t pipelineBytes) {
  return piecesOf(recvCount, (size_t)bucket, (size_t)(nranks > 1 ? nranks : 1), pipelineBytes);
}

double hierReduceScatterPieces(size_t recvCount, int bucket, const Cluster& c,
                               size_t pipelineBytes) {
  if (!gc::hierLayout(c.nodes, c.local)) return 1;
  return reduceScatterPieces(recvCount, bucket, c.nodes, pipelineBytes);
}

double pipelinedClusterUs(double kernelUs, const LinkBytes& b, double latencySteps,
                          const Cluster& c, double pieces) {
  const double k = kernelUs / pieces;
  const double w = concurrentLinkUs(LinkBytes{b.intra / pieces, b.inter / pieces}, c) +
                   latencySteps * c.latencyUs;
  return k + w + (pieces - 1) * std::max(k, w);
}

ClusterTimes clusterReduceScatterModel(size_t recvCount, const CallKind& kind, int bits, int bucket,
                                       const KernelCurve& curve, const Cluster& c,
                                       size_t pipelineBytes, bool decideAuto) {
  ClusterTimes t;
  const int n = c.ranks(), g = c.local;
  const double m = (double)recvCount;
  const double encoded = (double)gradcompQsgdEncodedBytes(recvCount, bits, bucket);
  const bool hier = gc::hierLayout(c.nodes, g);
  t.nccl = ncclReduceScatterClusterBytes(m * (double)kind.elemBytes, c);
  // The flat exchange sends one encoded block to each peer, as the allgather
  // sends its whole encoding: G-1 of them in the node, N-G across.
  t.flat = flatAllgatherBytes(encoded, c);
  t.hier = hier ? LinkBytes{(g - 1.0) * c.nodes * m * 4.0, (c.nodes - 1.0) * encoded} : t.flat;
  if (n <= 1) return t;
  t.ncclUs = ncclReduceScatterClusterUs(m * (double)kind.elemBytes, c);
  // Each path's kernels at the launches it makes, `local` ranks a node, cut
  // into `pieces`: their time, latency steps, and the non-finite check's part
  // of both (run once after the pieces).
  struct Kernels {
    double us, steps, checkUs, checkSteps;
  };
  auto kernels = [&](int local, double pieces, bool piped) {
    CallKind k = kind;
    k.piped = piped;
    const AlgoShape s = algoShape(6, n, local, 1, k);
    const KernelCosts costs = curve.at(codecLaunch(6, recvCount, n, pieces, local),
                                       peerEncodeLaunch(6, recvCount, n, pieces, bucket, local),
                                       outDecodeLaunch(6, recvCount, n, pieces, bucket, local),
                                       elementwiseLaunch(6, recvCount, n, local, pieces));
    return Kernels{kernelUs(s.work, costs, m), s.latencySteps, checkUs(s, costs, m), s.checkSteps};
  };
  const auto flat = kernels(1, 1, false);
  t.flatKernelUs = flat.us;
  t.flatUs = gradcompClusterUs(t.flatKernelUs, t.flat, false, flat.steps, c);
  if (hier) {
    const auto h = kernels(g, 1, false);
    t.hierKernelUs = h.us;
    t.hierUs = gradcompClusterUs(t.hierKernelUs, t.hier, true, h.steps, c);
    t.hierPieces = hierReduceScatterPieces(recvCount, bucket, c, pipelineBytes);
    t.hierPipelineBytes =
        t.hierPieces > 1 ? pieceBytesUsed(6, recvCount, bucket, n, g, pipelineBytes) : 0;
    if (t.hierPieces > 1) {
      const auto p = kernels(g, t.hierPieces, true);
      t.hierPipedKernelUs = p.us;
      t.hierPipedUs =
          hierReduceScatterPipelinedUs(t.hierPipedKernelUs - p.checkUs, t.hier,
                                       p.steps - p.checkSteps - (g - 1), c, t.hierPieces) +
          p.checkUs + p.checkSteps * c.latencyUs;
    } else {
      t.hierPipedKernelUs = t.hierKernelUs;
      t.hierPipedUs = t.hierUs;
    }
  } else {
    // The library runs the flat reduce-scatter, cut into pieces as its blocks
    // of recvCount among the N ranks (reduce_scatter.cc, splitPieces): the
    // row model's two-stage pipeline of kernels and wire.
    t.hierKernelUs = t.flatKernelUs;
    t.hierUs = t.flatUs;
    t.hierPieces = reduceScatterPieces(recvCount, bucket, n, pipelineBytes);
    t.hierPipelineBytes =
        t.hierPieces > 1 ? pieceBytesUsed(6, recvCount, bucket, n, g, pipelineBytes) : 0;
    if (t.hierPieces > 1) {
      const auto p = kernels(1, t.hierPieces, false);
      t.hierPipedKernelUs = p.us;
      t.hierPipedUs = pipelinedClusterUs(t.hierPipedKernelUs - p.checkUs, t.flat,
                                         p.steps - p.checkSteps, c, t.hierPieces) +
                      p.checkUs + p.checkSteps * c.latencyUs;
    } else {
      t.hierPipedKernelUs = t.flatKernelUs;
      t.hierPipedUs = t.flatUs;
    }
  }
  // A path whose kernels have no cost (not measured) has no time.
  if (!std::isfinite(t.flatKernelUs)) t.flatUs = NAN;
  if (!std::isfinite(t.hierKernelUs)) t.hierUs = NAN;
  if (!std::isfinite(t.hierPipedKernelUs)) t.hierPipedUs = NAN;
  // GRADCOMP_AUTO: the library's compressed path is the hierarchical one on a
  // hierarchy, else the flat one, pipelined where it is cut (hier|P).
  const double comp = t.hierPipedUs;
  if (!decideAuto) {
    t.autoCompresses = comp < t.ncclUs;
  } else {
    // autotune.cc timedCounts: input counts, whole blocks of N; fp32 Sums,
    // their encodes fp32 ones whatever the row's type.
    const KernelCurve curve32 = curve.fp32();
    size_t timed[2];
    double ncclUs[2], compUs[2];
    for (int i = 0; i < 2; ++i) {
      const size_t block = std::max<size_t>((size_t(1) << (i ? 23 : 18)) / (size_t)n, 1);
      timed[i] = block * (size_t)n;
      CallKind f32 = kind;
      f32.elemBytes = 4;
      f32.convert = false;
      f32.codeBytes = qsgdCodeBytes(block, bits, bucket);
      const ClusterTimes ti =
          clusterReduceScatterModel(block, f32, bits, bucket, curve32, c, pipelineBytes, false);
      ncclUs[i] = ti.ncclUs;
      compUs[i] = ti.hierPipedUs;
    }
    t.autoCompresses = autoCompresses(timed, ncclUs, compUs, kind.elemBytes, recvCount * n);
  }
  t.autoUs = !std::isfinite(comp) ? NAN : t.autoCompresses ? comp : t.ncclUs;
  return t;
}

}  // namespace gcbench
