#include "harness.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <map>

#include "../../plugin/hier_layout.h"
#include "gradcomp/sparse.h"
#include "data_ops.h"
#include "kernel_rates.h"
#include "methods.h"
#include "model.h"
#include "report.h"

namespace gcbench {
namespace {

double nowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

gc::DType toDType(ncclDataType_t t) {
  return t == ncclFloat16 ? gc::DType::F16 : (t == ncclBfloat16 ? gc::DType::BF16 : gc::DType::F32);
}

// True on every rank when it is true on every rank.
bool allOk(Rank& r, bool ok) {
  double v = ok ? 0 : 1;
  r.reduce(&v, 1, true);
  return v == 0;
}

// nccl-tests' timing: warm up, line the ranks up, time `iters` calls on the
// host clock up to the stream's completion; the slowest rank's time counts.
template <typename F>
double timeCalls(Rank& r, int warmup, int iters, bool* ok, F&& call) {
  for (int i = 0; i < warmup; ++i) *ok = call() && *ok;
  r.sync();
  r.barrier();
  const double t0 = nowSeconds();
  for (int i = 0; i < iters; ++i) *ok = call() && *ok;
  r.sync();
  double us = (nowSeconds() - t0) / iters * 1e6;
  r.reduce(&us, 1, true);
  return us;
}

// 1 when every rank holds the same bytes, 0 when not, -1 when they cannot
// be hashed here; collective.
int ranksIdentical(Rank& r, const void* buf, size_t bytes) {
  double h[3] = {0, 0, 0};
  const bool hashed = r.resultHash(buf, bytes, &h[0]);
  h[1] = -h[0];
  h[2] = hashed ? 0 : 1;
  r.reduce(h, 3, true);
  if (h[2] > 0) return -1;
  return h[0] == -h[1] ? 1 : 0;
}

struct Checked {
  long wrong;
  double relRms, relMax, errOverBound;
};

Checked combine(Rank& r, const CheckTotals& t) {
  double sums[3] = {t.sumErr2, t.sumExact2, t.wrong};
  double maxes[3] = {t.maxErr, t.maxExact, t.maxErrOverBound};
  r.reduce(sums, 3, false);
  r.reduce(maxes, 3, true);
  Checked c;
  c.wrong = (long)sums[2];
  c.relRms = sums[1] > 0 ? sqrt(sums[0] / sums[1]) : sqrt(sums[0]);
  c.relMax = maxes[1] > 0 ? maxes[0] / maxes[1] : maxes[0];
  c.errOverBound = maxes[2];
  return c;
}

// The rank-weight check (data.h) on the first elements of each rank's
// result: the extremes of the weights over ranks, and how many were wrong
// (the most on one rank).
constexpr size_t kWeightSample = (size_t)1 << 16;

void checkRankWeights(const Options& o, Rank& r, const CheckParams& p, ncclDataType_t dtype,
                      size_t count, Row* row) {
  const size_t m = std::min(count, kWeightSample);
  std::vector<unsigned char> host(m * dtypeSize(dtype));
  r.toHost(r.recv(), host.data(), host.size());
  if (!isnan(o.debugRankWeight)) {  // the self-test: rank 0's input w times
    const double scale = (o.debugRankWeight - 1) / (p.average ? p.nranks : 1);
    for (size_t i = 0; i < m; ++i) {
      const double v = gc::loadAsFloat(host.data(), p.dtype, i) +
                       scale * typedValue(p.seed, 0, i + p.offset, p.dtype);
      gc::storeFromFloat(host.data(), p.dtype, i, (float)v);
    }
  }
  std::vector<RankWeightSums> w;
  rankWeightsHost(p, host.data(), m, &w);
  double v[3] = {-INFINITY, -INFINITY, 0};  // max weight, -(min weight), wrong
  for (const RankWeightSums& s : w) {
    const double weight = 1 + s.num / s.den;
    v[0] = maxKeepNan(v[0], weight);
    v[1] = maxKeepNan(v[1], -weight);
    v[2] += rankWeightWrong(s) ? 1 : 0;
  }
  r.reduce(v, 3, true);
  row->rankWeightMax = v[0];
  row->rankWeightMin = -v[1];
  row->rankWeightsWrong = (int)v[2];
}

// A reduce-scatter's rank r holds elements r*count.. of the input.
CheckParams exactParams(const Options& o, Rank& r, ncclDataType_t dtype, size_t count) {
  const int nranks = r.nranks();
  CheckParams p{};
  if (o.collective == Collective::ReduceScatter) p.offset = (uint64_t)r.rank() * count;
  p.seed = o.seed;
  p.nranks = nranks;
  p.dtype = toDType(dtype);
  p.average = o.op == ncclAvg;
  p.kind = BoundKind::Exact;
  return p;
}

struct Baseline {
  double us = 0;
  long wrong = -1;
  bool ok = true;
};

bool baselineCall(const Options& o, Rank& r, ncclDataType_t dtype, size_t count) {
  return o.collective == Collective::ReduceScatter
             ? r.baselineReduceScatter(r.send(), r.recv(), count, dtype, o.op)
             : r.baseline(r.send(), r.recv(), count, dtype, o.op);
}

// The row's collective through a gradcomp comm.
gradcompResult_t gradcompCall(const Options& o, Rank& r, gradcompComm_t comm, ncclDataType_t dtype,
                              size_t count) {
  return o.collective == Collective::ReduceScatter
             ? r.reduceScatter(comm, r.send(), r.recv(), count, dtype, o.op)
             : r.allReduce(comm, r.send(), r.recv(), count, dtype, o.op);
}

Baseline runBaseline(const Options& o, Rank& r, ncclDataType_t dtype, size_t count) {
  Baseline b;
  const size_t bytes = count * dtypeSize(dtype);
  if (o.check) {
    r.poison(r.recv(), bytes);
    b.ok = allOk(r, baselineCall(o, r, dtype, count));
    if (b.ok) {
      r.sync();
      const CheckParams p = exactParams(o, r, dtype, count);
      b.wrong = combine(r, r.check(p, nullptr, r.recv(), count)).wrong;
    }
  }
  bool ok = true;
  b.us = timeCalls(r, o.warmup, o.iters, &ok, [&] { return baselineCall(o, r, dtype, count); });
  b.ok = allOk(r, ok) && b.ok;
  return b;
}

int algoFromStats(const gradcompStats_t& before, const gradcompStats_t& after) {
  if (after.callsReduceScatter > before.callsReduceScatter) return kAlgoReduceScatter;
  for (int a = 1; a <= gradcompAlgoHier; ++a)
    if (after.callsPerAlgo[a] > before.callsPerAlgo[a]) return a;
  return 0;
}

// The algorithm hier runs across nodes, as plugin/algorithms/hier.cc picks it:
// the sparse exchange for the sparse methods; for QSGD the configured one, or
// on auto allgather for <= 2 nodes and two-shot above.
int hierMiddle(const gradcompConfig_t& cfg, int nodes) {
  if (cfg.method != gradcompMethodQsgd) return gradcompAlgoSparseAllgather;
  if (cfg.algo == gradcompAlgoTwoShot || cfg.algo == gradcompAlgoRing ||
      cfg.algo == gradcompAlgoAllgather)
    return cfg.algo;
  return nodes <= 2 ? gradcompAlgoAllgather : gradcompAlgoTwoShot;
}

// The socket backend's link is real: the model adds the link's time at each
// --link-gbps (its TCP payload share) to the call's host work timed here
// without a link (docs/benchmark.md, "A slow link on a CPU machine"). The
// baseline is the transport's uncompressed direct two-shot: NCCL's ring's
// bytes in 2 steps, its reduce-scatter half (N-1) * size in 1.
void modelSocketRow(const Options& o, Rank& r, const gradcompConfig_t& cfg, Row* row) {
  double hostUs = 0, baseUs = 0;
  if (!r.hostCallTimes(o, cfg, row->dtype, row->count, &hostUs, &baseUs)) return;
  const double baseSteps = row->reduceScatter ? 1 : 2;
  // A call that passed through is the baseline's direct two-shot (the
  // in-process world's pass-through has every rank sum the whole buffer).
  if (row->algoUsed == 0) {
    hostUs = baseUs;
    row->latencySteps = baseSteps;
  } else {
    // A compressed call's ranks first agree on it, headers only, before it
    // touches its state (collective.h, agreeBeforeState): one more step.
    row->latencySteps += 1;
  }
  row->hostUs = hostUs;
  row->baselineHostUs = baseUs;
  for (double g : o.linkGbps) {
    ModelPoint m;
    m.gbps = g;
    const double payload = g * kTcpPayloadShare;
    m.ncclUs = gradcompModelUs(baseUs, row->ncclWire, baseSteps, payload, o.linkLatencyUs);
    m.gradcompUs =
        gradcompModelUs(hostUs, row->gradcompWire, row->latencySteps, payload, o.linkLatencyUs);
    row->model.push_back(m);
  }
}

// keep: not null, the comm is handed back there after its checked first
// call, untimed, for the caller to time (when the row did not fail);
// null, the row's calls are timed and the comm destroyed.
void runGradcomp(const Options& o, const RunInfo& info, Rank& r, const gradcompConfig_t& cfg,
                 Row* row, gradcompComm_t* keep = nullptr) {
  const size_t count = row->count;
  const ncclDataType_t dtype = row->dtype;
  gradcompComm_t comm = nullptr;
  gradcompResult_t res = r.createComm(cfg, &comm);
  if (!allOk(r, res == gradcompSuccess)) {
    row->failed = true;
    row->result = res;
    row->error = std::string("gradcompCommCreate: ") + gradcompGetLastError();
    if (res == gradcompSuccess) r.destroyComm(comm);
    return;
  }
  const bool rs = o.collective == Collective::ReduceScatter;
  auto call = [&] {
    res = gradcompCall(o, r, comm, dtype, count);
    return res == gradcompSuccess;
  };
  gradcompStats_t s0{}, s1{}, s2{};
  // The check is the comm's first call, from zero residual: the codec's
  // one-call bound applies.
  gradcompGetStats(comm, &s0);
  r.poison(r.recv(), row->bytes);
  bool ok = allOk(r, call());
  if (ok) {
    r.sync();
    gradcompGetStats(comm, &s1);
    row->algoUsed = algoFromStats(s0, s1);
    // The library's own rule (useHierReduceScatter): >= 2 nodes of >= 2 ranks.
    int nodes = 1, perNode = 1;
    const bool laidOut = gradcompCommLayout(comm, &nodes, &perNode) == gradcompSuccess;
    row->hierReduceScatter =
        row->algoUsed == kAlgoReduceScatter && laidOut && gc::hierLayout(nodes, perNode);
    double pieces = row->algoUsed != 0 && s1.piecesLast > 1 ? (double)s1.piecesLast : 1;
    r.reduce(&pieces, 1, true);
    row->pieces = pieces;
    row->pieceBytes = pieces > 1 ? cfg.pipelineBytes : 0;
    // The piece the library cut: past 1024 pieces it grows above the setting.
    row->pieceBytesUsed = pieces > 1
                              ? pieceBytesUsed(row->algoUsed, count, cfg.bucketSize, r.nranks(),
                                               laidOut ? perNode : 1, cfg.pipelineBytes)
                              : 0;
    if (o.check) {
      const MethodSpec& spec = methodSpec(cfg.method);
      CheckParams p = exactParams(o, r, dtype, count);
      // The reduce-scatter's input is N outputs long; its blocks' buckets lie
      // inside the input's (power-of-two sizes and buckets) or are windowed.
      const size_t inCount = rs ? count * r.nranks() : count;
      const float* bm = nullptr;
      if (row->algoUsed != 0) {
        p.kind = spec.bound;
        if (p.kind == BoundKind::Quantized) {
          const int bits = s1.bitsLast > 0 ? s1.bitsLast : cfg.bits;
          p.levels = (1 << (bits - 1)) - 1;
          p.squareLevels = cfg.levels == gradcompLevelsSquare;
          // Hier quantizes as its inter-node algorithm does, on fewer ranks:
          // bounded by the flat count of the configured algorithm (auto: two-shot's 2).
          int qAlgo = row->algoUsed;
          if (qAlgo == gradcompAlgoHier) {
            qAlgo = cfg.algo == gradcompAlgoRing || cfg.algo == gradcompAlgoAllgather
                        ? cfg.algo
                        : gradcompAlgoTwoShot;
          }
          p.quantizations = qAlgo == 1 ? 2 : (qAlgo == 2 ? r.nranks() : 1);
          p.bucket = cfg.bucketSize;
          p.numBuckets = (inCount + cfg.bucketSize - 1) / cfg.bucketSize;
          bm = r.bucketMax(p.dtype, inCount, p.bucket, o.seed);
        } else if (p.kind == BoundKind::Sparse) {
          p.wireEps = typeEps(toDType(cfg.valueType));
        }
      }
      if (o.corrupt && r.rank() == 0) r.poke(r.recv(), p.dtype, count / 2, 1e4f);
      const Checked c = combine(r, r.check(p, bm, r.recv(), count));
      row->gradcompWrong = c.wrong;
      row->relErrRms = c.relRms;
      row->relErrMax = c.relMax;
      row->errOverBound = c.errOverBound;
      // Stochastic rounding from a zero residual is unbiased: every rank's
      // input must enter with weight 1. (Nearest rounding is biased per
      // element, the sparse methods by design: their bound alone.)
      if (p.kind == BoundKind::Quantized && cfg.rounding == gradcompRoundStochastic)
        checkRankWeights(o, r, p, dtype, count, row);
    }
    // After the check, so that --debug-corrupt's element on rank 0 shows here
    // too. A reduce-scatter's ranks hold different blocks: nothing to compare.
    if (!rs) row->identical = ranksIdentical(r, r.recv(), row->bytes);
  }
  if (ok && keep == nullptr) {
    bool timedOk = true;
    gradcompGetStats(comm, &s1);
    row->gradcompUs = timeCalls(r, o.warmup, o.iters, &timedOk, call);
    gradcompGetStats(comm, &s2);
    ok = allOk(r, timedOk);
    const double calls = (double)(s2.callsCompressed - s1.callsCompressed);
    double dense = s2.denseFallbacks > s1.denseFallbacks ? 1 : 0;
    r.reduce(&dense, 1, true);
    row->dense = dense > 0;
    double wire = calls > 0 ? (double)(s2.bytesOnWire - s1.bytesOnWire) / calls : row->ncclWire;
    r.reduce(&wire, 1, true);
    row->gradcompWire = wire;
    if (calls > 0) {
      double inter = (double)(s2.bytesInterNode - s1.bytesInterNode) / calls;
      r.reduce(&inter, 1, true);
      row->interWire = inter;
    }
  }
  if (!ok) {
    row->failed = true;
    row->result = res;
    row->error = std::string(rs ? "gradcompReduceScatter: " : "gradcompAllReduce: ") +
                 gradcompGetLastError();
  }
  r.barrier();
  if (keep != nullptr && ok)
    *keep = comm;
  else
    r.destroyComm(comm);

  if (!ok || !(info.showModel || info.project)) return;
  // Nodes of `local` ranks: the run's layout (RunInfo::localSize).
  const int local = info.localSize;
  CallKind kind;
  kind.elemBytes = dtypeSize(dtype);
  // The buffer's residual (keepsResidual): error feedback's, or DGC's velocity.
  kind.residual = cfg.errorFeedback != 0 || cfg.method == gradcompMethodDgc;
  kind.convert = dtype != ncclFloat32 || o.op == ncclAvg;
  kind.fusedOut = warpBucket(cfg.bucketSize);
  // The owner's sum in one kernel a piece (Backend::qsgdSum), on the same
  // buckets as fusedOut; it reads the peers' codes (codeBytes an element).
  kind.fusedSum = warpBucket(cfg.bucketSize);
  kind.codeBytes = qsgdCodeBytes(count, row->bits, row->bucket);
  kind.ownerResidual = cfg.ownerResidual != 0;
  // A ring middle is cut into its own pieces (hier.cc hierPieces, ring.cc on
  // the inter-node comm) inside an unpipelined hierarchy: no piece is
  // widened, staged or copied out, as clusterModel projects it.
  row->ringMiddlePieces = row->algoUsed == gradcompAlgoHier && row->pieces > 1 &&
                          methodSpec(cfg.method).qsgdKernels &&
                          hierMiddle(cfg, r.nranks() / local) == gradcompAlgoRing;
  kind.piped = row->pieces > 1 && !row->ringMiddlePieces;
  kind.paddedShards =
      row->algoUsed == gradcompAlgoHier && hierShardsPadded(count, cfg.bucketSize, local);
  // The sparse exchange, flat or as hier's middle stage.
  const bool sparseMethod = cfg.method == gradcompMethodTopk || cfg.method == gradcompMethodDgc ||
                            cfg.method == gradcompMethodRandk;
  // The flat sparse reduce-scatter too; the hierarchical one (>= 2 nodes of
  // >= 2 ranks) is not charged yet.
  const bool flatRs = row->algoUsed == kAlgoReduceScatter && !row->hierReduceScatter;
  const bool sparseKernels = sparseMethod && (row->algoUsed == gradcompAlgoSparseAllgather ||
                                              row->algoUsed == gradcompAlgoHier || flatRs);
  if (sparseKernels) {
    kind.sparse = true;
    kind.randk = cfg.method == gradcompMethodRandk;
    kind.dense = row->dense;
    const bool exact = kind.randk || cfg.select == gradcompSelectExact;
    size_t slots = 0;
    if (gradcompTopkSlots(count, cfg.density, cfg.oversample, exact ? 1 : 0, &slots) ==
        gradcompSuccess)
      kind.slots = (double)slots / (double)count;
    row->slots = slots;
    kind.valueBytes = kind.randk ? 4 : dtypeSize(cfg.valueType);
    kind.momentum = cfg.method == gradcompMethodDgc;
    kind.clip = kind.momentum && cfg.clipNorm > 0;
    kind.mask = kind.momentum && cfg.momentumMasking != 0;
  }
  const AlgoShape shape =
      algoShape(row->algoUsed, r.nranks(), local, hierMiddle(cfg, r.nranks() / local), kind);
  row->latencySteps = shape.latencySteps;
  const bool qsgdKernels = row->algoUsed != 0 && methodSpec(cfg.method).qsgdKernels;
  // The kernels the row's calls ran; where the model cannot time them
  // (Elias, DQ-SGD bits), no model and no projection rather than another
  // configuration's times and bytes.
  QsgdKernels kernels;
  std::string unmodeled;
  const bool modelable = !qsgdKernels || qsgdKernelsOf(cfg, &kernels, &unmodeled);
  if (qsgdKernels) {
    // The costs over launch sizes (KernelCurve); charged at the row's own.
    KernelCurve& curve = row->curve;
    bool known = false;
    if (!modelable) {
      row->modelMissing = unmodeled;
    } else if (info.rates) {
      // CPU backend: the GPU report's rates; the host codecs' times would
      // model a GPU network with CPU kernels.
      known = info.rates->curve(dtypeName(dtype), kernels, count, &curve, &row->kernelNote);
      if (info.rates->ok && !known) {
        char why[320];
        snprintf(why, sizeof why,
                 "%s has no %s rows for %s and float, bits=%d, bucket=%d (and qsgd_decode_acc at "
                 "those, and copy)",
                 info.rates->report.c_str(), kernels.encodeName().c_str(), dtypeName(dtype),
                 kernels.bits, kernels.bucket);
        row->modelMissing = why;
      }
    } else {
      // Rank 0 alone, the others wait: the kernels' own time, not the shared
      // GPU's. Its points (n, then the costs in KernelCosts' order) go to
      // every rank in one max-reduce. The fused owner's sum is not timed
      // here (sumPerByte 0: estimated; timeQsgdKernels says why).
      constexpr int kPoints = 32, kFields = 7;
      double v[kPoints * kFields + 1] = {};
      r.barrier();
      KernelCurve mine;
      if (r.rank() == 0 && r.qsgdKernelCurve(toDType(dtype), count, kernels, &mine)) {
        // The points nearest the row's count when there are more than fit.
        while (mine.points.size() > (size_t)kPoints) {
          const bool dropLow = count / mine.points.front().first > mine.points.back().first / count;
          mine.points.erase(dropLow ? mine.points.begin() : mine.points.end() - 1);
        }
        for (size_t i = 0; i < mine.points.size(); ++i) {
          const KernelCosts& c = mine.points[i].second;
          const double f[kFields] = {mine.points[i].first, c.encode, c.encodeF32,
                                     c.ownerEncode,        c.decode, c.decodeAcc,
                                     c.elementwisePerByte};
          std::copy(f, f + kFields, v + i * kFields);
        }
        v[kPoints * kFields] = 1;
      }
      r.reduce(v, kPoints * kFields + 1, true);
      known = v[kPoints * kFields] > 0;
      for (int i = 0; known && i < kPoints && v[i * kFields] > 0; ++i) {
        const double* f = v + i * kFields;
        curve.add(f[0], KernelCosts{f[1], f[2], f[3], f[4], f[5], f[6]});
      }
      if (!known) row->modelMissing = "rank 0 could not time the row's kernels alone";
    }
    row->kernelsMeasured = known;
    row->kernelSource = !row->kernelsMeasured ? KernelSource::None
                        : info.rates          ? KernelSource::Report
                                              : KernelSource::Measured;
    // Charged at the launches the row's algorithm makes (per chunk, per piece).
    const int middle = hierMiddle(cfg, r.nranks() / local);
    row->codecLaunch = codecLaunch(row->algoUsed, count, r.nranks(), row->pieces, local, middle);
    row->peerEncodeLaunch = peerEncodeLaunch(row->algoUsed, count, r.nranks(), row->pieces,
                                             cfg.bucketSize, local, middle);
    row->outDecodeLaunch = outDecodeLaunch(row->algoUsed, count, r.nranks(), row->pieces,
                                           cfg.bucketSize, local, middle);
    const double elemLaunch =
        elementwiseLaunch(row->algoUsed, count, r.nranks(), local, row->pieces, middle);
    if (known) {
      row->costs =
          curve.at(row->codecLaunch, row->peerEncodeLaunch, row->outDecodeLaunch, elemLaunch);
      if (curve.clamped(row->codecLaunch) || curve.clamped(elemLaunch)) {
        char why[160];
        snprintf(why, sizeof why,
                 "kernel launches of %.0f elements charged at the smallest measured launch "
                 "(%.0f): an underestimate",
                 std::min(row->codecLaunch, elemLaunch), curve.points.front().first);
        row->kernelNote += (row->kernelNote.empty() ? "" : "; ") + std::string(why);
        row->modelOptimistic = why;
      }
    }
    // Every dense algorithm but the ring (hier: its middle's) sums on its owners (the
    // allgather: on every rank).
    const bool ringSum = row->algoUsed == gradcompAlgoRing ||
                         (row->algoUsed == gradcompAlgoHier && middle == gradcompAlgoRing);
    if (known && kind.fusedSum && !kind.sparse && row->algoUsed != 0 && !ringSum) {
      row->kernelNote += (row->kernelNote.empty() ? "" : "; ") +
                         std::string(row->costs.sumPerByte > 0
                                         ? "the fused owner's sum charged at the measured "
                                           "qsgd_sum8 rate"
                                         : "the fused owner's sum estimated from the decode and "
                                           "copy rates (not yet timed)");
    }
    const KernelCosts& k = row->costs;
    row->work = shape.work;
    row->encodeUs = k.encode * count;
    row->decodeUs = k.decodeAcc * count;
    row->kernelUs = kernelUs(shape.work, k, (double)count);
    if (known && row->ringMiddlePieces) {
      // The ring's kernels at its pieces' launches (the row's costs); the
      // rest of hier's work at the unpipelined launches (clusterModel's).
      const KernelWork mw = hierMiddleWork(r.nranks(), local, middle, kind);
      const KernelCosts whole = curve.at(
          codecLaunch(row->algoUsed, count, r.nranks(), 1, local, middle),
          peerEncodeLaunch(row->algoUsed, count, r.nranks(), 1, cfg.bucketSize, local, middle),
          outDecodeLaunch(row->algoUsed, count, r.nranks(), 1, cfg.bucketSize, local, middle),
          elementwiseLaunch(row->algoUsed, count, r.nranks(), local, 1, middle));
      row->middleKernelUs = kernelUs(mw, k, (double)count);
      row->kernelUs = row->middleKernelUs + kernelUs(shape.work, whole, (double)count) -
                      kernelUs(mw, whole, (double)count);
    }
  }
  if (sparseKernels) {
    KernelCosts& k = row->costs;
    bool known = false;
    const bool exact = cfg.select == gradcompSelectExact;
    if (info.rates) {
      const bool select = !(kind.randk || kind.dense);
      known = info.rates->lookupSparse(select, exact, shape.work.flag > 0, cfg.density, count,
                                       shape.work.checkSlots * (double)count, &k, &row->kernelNote);
      if (info.rates->ok && !known)
        row->modelMissing = info.rates->report + " has no " +
                            (select ? (exact ? "topk_exact rows or no copy rows"
                                             : "topk_threshold rows or no copy rows")
                                    : "copy rows");
    } else {
      double v[3] = {0, 0, 0};
      r.barrier();
      if (r.rank() == 0 && r.sparseKernelTimes(count, cfg, kind.randk || kind.dense, &k)) {
        v[0] = k.select, v[1] = k.elementwisePerByte, v[2] = 1;
      }
      r.reduce(v, 3, true);
      k = KernelCosts{};
      k.select = v[0], k.elementwisePerByte = v[1];
      // The per-call checks have no public entry point: their 4-byte reads
      // at the copy's bandwidth.
      if (shape.work.checkSlots > 0) k.checkSlot = 4 * k.elementwisePerByte;
      if (shape.work.flag > 0) k.flag = 4 * k.elementwisePerByte;
      known = v[2] > 0;
      if (!known)
        row->modelMissing = "rank 0 could not time the row's kernels alone";
      else
        row->kernelNote =
            std::string(shape.work.select > 0 ? "selection timed alone at the row's n and density; "
                                              : "") +
            "elementwise passes" +
            (shape.work.checkSlots > 0 ? ", the received lists' check" : "") +
            (shape.work.flag > 0 ? ", the non-finite flag" : "") +
            " and the scatter-adds' random accesses at the measured copy's bandwidth";
    }
    // A warm-up stage dense enough for the fallback is charged as the fallback
    // (kind.dense), like its bytes; the sparse stages at the final density.
    if (known && cfg.method == gradcompMethodDgc && cfg.warmupSteps > 0)
      row->kernelNote += row->dense ? "; DGC's warm-up calls went to the dense fallback: charged "
                                      "as the fallback, not at the final density"
                                    : "; DGC's warm-up calls (denser) charged at the final density";
    row->sparseKernels = known;
    row->kind = kind;
    row->kernelsMeasured = known;
    row->kernelSource = !known       ? KernelSource::None
                        : info.rates ? KernelSource::Report
                                     : KernelSource::Measured;
    row->work = shape.work;
    row->kernelUs = known ? kernelUs(shape.work, k, (double)count) : 0;
  }
  if (qsgdKernels && modelable && info.project) {
    KernelCurve costs = row->curve;
    if (!row->kernelsMeasured) costs = KernelCurve{};  // NaN at every launch
    for (int k : o.modelNodes)
      for (int g : o.modelLocal)
        for (double gbps : o.nodeGbps) {
          if (k * g < 2) continue;
          const Cluster c{k, g, o.intraGbps, gbps, o.linkLatencyUs};
          // A reduce-scatter as the library runs it there: hierarchical on >= 2
          // nodes of >= 2 GPUs, else flat (useHierReduceScatter).
          if (rs) {
            row->projection.push_back(
                {k, g, gbps,
                 clusterReduceScatterModel(count, kind, row->bits, row->bucket, costs, c,
                                           o.modelPipelineBytes)});
            continue;
          }
          // The algorithms the library runs there (pickDenseAlgorithm): flat over
          // the k*g ranks, and the hierarchy's middle across the k nodes; on
          // `auto` an allgather on 2 of them (hierMiddle), which clusterModel
          // charges as such and, as any middle but two-shot, in one piece.
          const ClusterTimes t =
              clusterModel(count, kind, row->bits, row->bucket, costs, c, o.modelPipelineBytes,
                           true, hierMiddle(cfg, k * g), hierMiddle(cfg, k));
          row->projection.push_back({k, g, gbps, t});
        }
  }
  // The socket backend's model takes the whole call's host work, not the
  // kernel times.
  if (info.backend == "socket") {
    row->modelMissing.clear();
    if (info.showModel) modelSocketRow(o, r, cfg, row);
    return;
  }
  // A row whose kernel times are unknown (no report rates for its settings,
  // kernels the model cannot time): no model rather than one made of host
  // codec times or another configuration's.
  if (!info.showModel || ((qsgdKernels || sparseKernels) && !row->kernelsMeasured)) return;
  // The non-finite check runs once after a call's pieces: the pipelined
  // schedules take the rest, then it (its pass and, a reduce-scatter's, step).
  const double check = checkUs(shape, row->costs, (double)count);
  const double pipedKernelUs = row->kernelUs - check;
  const double pipedSteps = row->latencySteps - shape.checkSteps;
  for (double g : o.linkGbps) {
    ModelPoint m;
    m.gbps = g;
    if (local > 1) {
      // Each GPU has its own NIC at g: a node's NICs give local * g.
      const Cluster c{r.nranks() / local, local, o.intraGbps, local * g, o.linkLatencyUs};
      // The hierarchical allreduce and reduce-scatter run their stages in turn;
      // the library picks the latter on >= 2 nodes (algoShape tells it so too).
      const bool stages = row->algoUsed == gradcompAlgoHier || row->hierReduceScatter;
      m.ncclUs = rs ? ncclReduceScatterClusterUs(row->bytes, c) : ncclClusterUs(row->bytes, c);
      const LinkBytes b{row->gradcompWire - row->interWire, row->interWire};
      m.gradcompUs = row->algoUsed == 0
                         ? m.ncclUs
                         : gradcompClusterUs(row->kernelUs, b, stages, row->latencySteps, c);
      // A hier call that was cut into pieces: a two-shot middle's three stages
      // pipelined, a ring middle alone in its pieces; a hierarchical
      // reduce-scatter's two stages pipelined. A flat call (one node of `local`
      // ranks) as on one link below, its exchanges over both link classes.
      if (row->ringMiddlePieces && qsgdKernels) {
        // The ring's pieces between the whole NVLink reduce-scatter and
        // allgather, the rest of the kernels (the non-finite check too) in
        // turn with them (clusterModel's ring middle).
        m.pipelinedUs = (row->kernelUs - row->middleKernelUs) +
                        (b.intra > 0 ? b.intra * 8.0 / (c.intraGbps * 1e3) : 0.0) +
                        2.0 * (local - 1) * c.latencyUs +
                        pipelinedClusterUs(row->middleKernelUs, LinkBytes{0.0, b.inter}, c.nodes, c,
                                           row->pieces);
      } else if (row->pieces > 1 && row->algoUsed == gradcompAlgoHier) {
        m.pipelinedUs = hierPipelinedUs(pipedKernelUs, b, pipedSteps - 2.0 * (local - 1), c,
                                        row->pieces, (double)kind.elemBytes) +
                        check;
      } else if (row->pieces > 1 && row->hierReduceScatter) {
        m.pipelinedUs = hierReduceScatterPipelinedUs(pipedKernelUs, b, pipedSteps - (local - 1.0),
                                                     c, row->pieces) +
                        check + shape.checkSteps * c.latencyUs;
      } else if (row->pieces > 1 && row->algoUsed == gradcompAlgoTwoShot && qsgdKernels) {
        m.pipelinedUs =
            twoShotPipelineSimUs(
                twoShotClusterStageTimes(count, kind, r.nranks(), row->costs, b, c, row->pieces),
                (int)llround(row->pieces)) +
            check;
      } else if (row->pieces > 1 &&
                 (row->algoUsed == gradcompAlgoTwoShot || row->algoUsed == gradcompAlgoRing ||
                  row->algoUsed == kAlgoReduceScatter)) {
        m.pipelinedUs = pipelinedClusterUs(pipedKernelUs, b, pipedSteps, c, row->pieces) + check +
                        shape.checkSteps * c.latencyUs;
      }
    } else {
      m.ncclUs = rs ? ncclReduceScatterModelUs(row->bytes, r.nranks(), g, o.linkLatencyUs)
                    : ncclModelUs(row->bytes, r.nranks(), g, o.linkLatencyUs);
      // A call passed through is NCCL's own (a reduce-scatter's too: N-1 steps).
      m.gradcompUs = row->algoUsed == 0 ? m.ncclUs
                                        : gradcompModelUs(row->kernelUs, row->gradcompWire,
                                                          row->latencySteps, g, o.linkLatencyUs);
      // Only a call that was cut into pieces is modeled pipelined (two-shot,
      // ring and the reduce-scatter run every stage piece by piece).
      // Two-shot: its two streams stage by stage (twoShotPipelineSimUs); the
      // ring and the reduce-scatter: the two-stage pipeline of kernels and wire.
      if (row->pieces > 1 && row->algoUsed == gradcompAlgoTwoShot && qsgdKernels) {
        m.pipelinedUs = twoShotPipelineSimUs(
                            twoShotStageTimes(count, kind, r.nranks(), row->costs,
                                              row->gradcompWire, g, o.linkLatencyUs, row->pieces),
                            (int)llround(row->pieces)) +
                        check;
      } else if (row->pieces > 1 &&
                 (row->algoUsed == gradcompAlgoTwoShot || row->algoUsed == gradcompAlgoRing ||
                  row->algoUsed == kAlgoReduceScatter)) {
        m.pipelinedUs = pipelinedModelUs(pipedKernelUs, row->gradcompWire, pipedSteps, g,
                                         o.linkLatencyUs, row->pieces) +
                        check + shape.checkSteps * o.linkLatencyUs;
      }
    }
    row->model.push_back(m);
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Auto's regret from times taken side by side: a forced comm (autoTune=0),
// the row's auto comm (autoTune=1, tuned at its first call) and the
// baseline, one window of each path per round (an untimed call, then a
// timed one, so that each timed call follows its own path's, as in
// training), the three in another of their 6 orders every round, so that a
// shared machine's drift and noise, and what a path leaves a shaped link,
// fall on the three alike. Each path's figure is its median over the
// rounds. The row's own windows, one path after the other, would put the
// noise between windows into the regret (a min of two noisy times is
// biased low). Rounds: max(-n, 6) rounded up to a multiple of 6, and more,
// 6 at a time, up to kMostRounds, while the timed calls so far took under a
// second (short calls are the noisy ones).
constexpr int kOrders[6][3] = {{0, 1, 2}, {1, 2, 0}, {2, 0, 1}, {0, 2, 1}, {2, 1, 0}, {1, 0, 2}};
constexpr int kMostRounds = 36;

bool timeAutoPaired(const Options& o, Rank& r, gradcompConfig_t cfg, gradcompComm_t autoComm,
                    Row* row, std::string* err, gradcompResult_t* result) {
  const bool rs = o.collective == Collective::ReduceScatter;
  const size_t count = row->count;
  const ncclDataType_t dtype = row->dtype;
  gradcompComm_t comm[2] = {nullptr, autoComm};  // forced, auto
  cfg.autoTune = 0;
  gradcompResult_t res = r.createComm(cfg, &comm[0]);
  bool ok = allOk(r, res == gradcompSuccess);
  if (!ok) {
    *err = std::string("gradcompCommCreate: ") + gradcompGetLastError();
    if (res == gradcompSuccess) r.destroyComm(comm[0]);
    comm[0] = nullptr;
  }
  auto path = [&](int p) {
    if (p == 2) {
      const bool bok = baselineCall(o, r, dtype, count);
      if (!bok) *err = rs ? "baseline reduce-scatter failed" : "baseline allreduce failed";
      return bok;
    }
    res = gradcompCall(o, r, comm[p], dtype, count);
    if (res != gradcompSuccess) *err = gradcompGetLastError();
    return res == gradcompSuccess;
  };
  std::vector<double> us[3];
  // Warm-up (the auto comm has tuned and run the row's calls already).
  for (int p = 0; p < 3 && ok; ++p) {
    bool wok = true;
    for (int i = 0; i < o.warmup; ++i) wok = path(p) && wok;
    r.sync();
    ok = allOk(r, wok);
  }
  // Every rank sees the same times (the slowest rank's), so all run the same
  // rounds.
  const int least = (std::max(o.iters, 6) + 5) / 6 * 6;
  double spent = 0;
  for (int k = 0; ok && (k < least || (k % 6 != 0) || (k < kMostRounds && spent < 1e6)); ++k) {
    for (int j = 0; j < 3 && ok; ++j) {
      const int p = kOrders[k % 6][j];
      bool cok = true;
      us[p].push_back(timeCalls(r, 1, 1, &cok, [&] { return path(p); }));
      spent += us[p].back();
      ok = allOk(r, cok);
    }
  }
  r.barrier();
  for (gradcompComm_t c : comm)
    if (c != nullptr) r.destroyComm(c);
  *result = res;
  if (!ok) return false;
  row->autoForcedUs = median(us[0]);
  row->autoUs = median(us[1]);
  row->autoNcclUs = median(us[2]);
  return true;
}

// The row's size again through a fresh comm with autoTune=1: its first call
// tunes (and is checked against the bound of what it did); then it, a forced
// comm and the baseline timed side by side (timeAutoPaired), so that the
// choice reported is the one timed.
void runAuto(const Options& o, const RunInfo& info, Rank& r, gradcompConfig_t cfg, Row* row) {
  cfg.autoTune = 1;
  RunInfo plain = info;
  plain.showModel = plain.project = false;
  Row a = *row;
  a.model.clear();
  a.projection.clear();
  gradcompComm_t comm = nullptr;
  runGradcomp(o, plain, r, cfg, &a, &comm);
  row->autoRan = !a.failed;
  row->autoPassed = a.algoUsed == 0;
  row->autoWrong = a.gradcompWrong;
  row->autoIdentical = a.identical;
  row->autoRankWeightsWrong = a.rankWeightsWrong;
  std::string err;
  gradcompResult_t res = gradcompSuccess;
  if (!a.failed && !timeAutoPaired(o, r, cfg, comm, row, &err, &res)) {
    a.failed = true;
    a.result = res;
    a.error = "side-by-side timing: " + err;
  }
  if (a.failed) {
    row->autoRan = false;
    row->failed = true;
    row->result = a.result;
    row->error = "auto: " + a.error;
  }
}

}  // namespace

int runHarness(const Options& o, Rank& r) {
  RunInfo info;
  info.backend = r.backendName();
  info.description = r.describe();
  info.baseline = r.baselineName();
  info.representative = r.representative();
  KernelRates rates;
  // The in-process CPU world models GPUs with the report's rates; the socket
  // backend models its own links with its own host times.
  if (info.backend == "cpu") {
    rates = loadKernelRates(o.kernelRates.empty() ? defaultResultsDir() : o.kernelRates);
    info.rates = &rates;
  }
  info.showModel = (!info.representative || o.linkGiven) && (!info.rates || rates.ok);
  // The projection models the run's collective: allreduce calls with
  // clusterModel, reduce-scatter calls with clusterReduceScatterModel.
  info.project = !o.modelNodes.empty();
  const bool lead = r.rank() == 0;
  // Output files that cannot be written are refused before the run, not
  // found after it (rank 0 writes them; every rank stops alike).
  double unwritable = 0;
  if (lead) {
    // --json is written to PATH.part and renamed over PATH at every row: a
    // directory at PATH cannot be renamed over, and the run would end without
    // its file (and say so at every row).
    struct stat st;
    const bool jsonDir =
        !o.jsonPath.empty() && stat(o.jsonPath.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
    if (jsonDir) {
      fprintf(stderr, "gradcomp_perf: cannot write %s: %s (see --json, --csv)\n",
              o.jsonPath.c_str(), strerror(EISDIR));
      unwritable = 1;
    }
    for (const std::string& path : {o.jsonPath + ".part", o.csvPath}) {
      if (path == ".part" || path.empty() || (jsonDir && path == o.jsonPath + ".part")) continue;
      FILE* f = fopen(path.c_str(), "a");
      if (f == nullptr) {
        fprintf(stderr, "gradcomp_perf: cannot write %s: %s (see --json, --csv)\n", path.c_str(),
                strerror(errno));
        unwritable = 1;
      } else {
        fclose(f);
      }
    }
  }
  r.reduce(&unwritable, 1, true);
  if (unwritable > 0) return 2;
  // The node layout the comms get, from the flag or the environment (every
  // method's config has the same); a bad config is refused below, per method.
  gradcompConfig_t layout;
  if (methodConfig(o, o.methods[0], &layout) == gradcompSuccess) {
    info.localSize = modelLocalSize(layout);
    info.localSizeFrom = o.localSize >= 0 ? "--local-size" : "GRADCOMP_LOCAL_SIZE";
    // Auto: the layout a comm finds from the ranks' host identities (NCCL
    // and socket comms), when it is a hierarchy; one node, or a rank per
    // node, stays modeled flat (each rank on its own link).
    gradcompComm_t probe = nullptr;
    if (layout.localSize == 0 && allOk(r, r.createComm(layout, &probe) == gradcompSuccess)) {
      int nodes = 0, perNode = 0;
      if (gradcompCommLayout(probe, &nodes, &perNode) == gradcompSuccess &&
          gc::hierLayout(nodes, perNode)) {
        info.localSize = perNode;
        info.localSizeFrom = "auto, from the ranks' host identities";
      }
    }
    if (probe != nullptr) r.destroyComm(probe);
    // The comm would refuse it at creation (exit 1); a bad setting is exit 2.
    if (layout.localSize > 1 && r.nranks() % layout.localSize != 0) {
      if (lead)
        fprintf(stderr,
                "gradcomp_perf: %s%s%d does not divide the %d ranks: ranks per node must be "
                "auto or a divisor of %d\n",
                info.localSizeFrom.c_str(), o.localSize >= 0 ? " " : "=", layout.localSize,
                r.nranks(), r.nranks());
      return 2;
    }
    // The in-node link is modeled for the projection and for a run on nodes of several ranks
    // alone: on a flat run without --model-nodes the run went on as if it had been taken, its
    // table and JSON the same as without it (as --node-gbps and --model-pipe were, which
    // parseOptions refuses; this run's layout is known only here).
    if (o.intraGiven && o.modelNodes.empty() && info.localSize <= 1) {
      if (lead)
        fprintf(stderr,
                "gradcomp_perf: --intra-gbps %g is for the projection (--model-nodes K) or a run "
                "on nodes of several ranks (--local-size L > 1, or GRADCOMP_LOCAL_SIZE), and this "
                "run models no in-node link (no --model-nodes, and its ranks on no nodes of "
                "several): give one of those too, or leave it out (see --help)\n",
                o.intraGbps);
      return 2;
    }
  }
  if (lead) printPreamble(o, info);

  const std::vector<size_t> sizes = sizeList(o);
  // Sizes are the output: a reduce-scatter reads N of them.
  const bool rs = o.collective == Collective::ReduceScatter;
  const size_t sendMax = rs ? o.maxBytes * r.nranks() : o.maxBytes;
  r.allocBuffers(sendMax, o.maxBytes);
  std::vector<Row> all;
  int exitCode = 0;
  for (ncclDataType_t dtype : o.dtypes) {
    const size_t tsize = dtypeSize(dtype);
    // Element i has the same value whatever the size: fill once per type.
    r.fill(r.send(), toDType(dtype), sendMax / tsize, o.seed);
    r.sync();
    std::map<size_t, Baseline> baselines;
    for (gradcompMethod_t m : o.methods) {
      gradcompConfig_t cfg;
      if (methodConfig(o, m, &cfg) != gradcompSuccess) {
        if (lead) fprintf(stderr, "gradcomp_perf: %s\n", gradcompGetLastError());
        return 2;
      }
      // A row's comm is new: the check is its buffer's call 0, the timed
      // calls follow the warm-up ones.
      const std::string label =
          methodLabel(cfg, 1 + (uint64_t)o.warmup, (uint64_t)o.warmup + (uint64_t)o.iters);
      if (lead) printHeader(o, info, label, dtype);
      // Sizes below one element of this type give it no row.
      std::string skipped;
      for (size_t size : sizes)
        if (size < tsize) skipped += (skipped.empty() ? "" : ", ") + std::to_string(size);
      if (lead && !skipped.empty())
        printf("#  sizes %s B skipped: below one %s element (%zu B)\n", skipped.c_str(),
               dtypeName(dtype), tsize);
      std::vector<Row> rows;
      for (size_t size : sizes) {
        Row row;
        row.count = size / tsize;
        if (row.count == 0) continue;
        row.bytes = row.count * tsize;
        row.dtype = dtype;
        row.op = o.op;
        row.method = m;
        row.label = label;
        row.bits = cfg.bits;
        row.bucket = cfg.bucketSize;
        row.rounding = cfg.rounding;
        row.levels = cfg.levels;
        row.density = cfg.density;
        row.nranks = r.nranks();
        row.reduceScatter = rs;
        row.ncclWire = rs ? ncclReduceScatterBytes(row.bytes, r.nranks())
                          : ncclRingBytes(row.bytes, r.nranks());
        auto it = baselines.find(row.bytes);
        if (it == baselines.end())
          it = baselines.emplace(row.bytes, runBaseline(o, r, dtype, row.count)).first;
        row.ncclUs = it->second.us;
        row.ncclWrong = it->second.wrong;
        if (!it->second.ok) {
          row.failed = true;
          row.error = rs ? "baseline reduce-scatter failed" : "baseline allreduce failed";
        }
        runGradcomp(o, info, r, cfg, &row);
        if (o.autoRow && m != gradcompMethodNone && !row.failed) runAuto(o, info, r, cfg, &row);
        if (row.failed || row.ncclWrong > 0 || row.gradcompWrong > 0 || row.autoWrong > 0 ||
            row.identical == 0 || row.autoIdentical == 0 || row.rankWeightsWrong > 0 ||
            row.autoRankWeightsWrong > 0)
          exitCode = 1;
        if (lead) printRow(o, info, row);
        rows.push_back(row);
        if (lead && !o.jsonPath.empty()) {  // what is measured survives a later size that dies
          std::vector<Row> sofar = all;
          sofar.insert(sofar.end(), rows.begin(), rows.end());
          writeJson(o.jsonPath, o, info, sofar, false);
        }
        // A method this build lacks fails the same way at every larger size.
        double unsupported = row.failed && row.result == gradcompNotSupported ? 1 : 0;
        r.reduce(&unsupported, 1, true);
        if (unsupported > 0) {
          if (lead)
            printf("# %s is not supported by this build: larger sizes skipped\n", methodName(m));
          break;
        }
      }
      if (lead) printFooter(info, rows);
      if (lead && info.project) printProjection(o, rows);
      all.insert(all.end(), rows.begin(), rows.end());
    }
  }
  if (lead) {
    if (!o.jsonPath.empty() && !writeJson(o.jsonPath, o, info, all))
      exitCode = exitCode ? exitCode : 2;
    if (!o.csvPath.empty() && !writeCsv(o.csvPath, o, all)) exitCode = exitCode ? exitCode : 2;
    fflush(stdout);
  }
  return exitCode;
}

}  // namespace gcbench
