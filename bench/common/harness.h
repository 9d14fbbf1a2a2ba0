// The harness, as in nccl-tests: it owns the size loop, timing, checking and
// the table. A method only says how to configure gradcomp and what error its
// codec may make (methods.cc).
#pragma once

#include <math.h>

#include <string>
#include <vector>

#include "model.h"
#include "options.h"
#include "rank.h"

namespace gcbench {

struct ModelPoint {
  double gbps;
  // ncclUs: the baseline's modeled time, NCCL's ring or (socket backend) the
  // transport's uncompressed direct two-shot.
  double gradcompUs;  // unpipelined: kernels, then the bytes
  double ncclUs;
  double pipelinedUs = NAN;  // only when the call was cut into pieces (two-shot, hier)
};

// One point of the --model-nodes/--model-local projection; the times are NaN
// when the row's kernel rates are unknown (the bytes still hold).
struct ProjectionPoint {
  int nodes, local;
  double nodeGbps;
  ClusterTimes t;
};

// Where the link model's kernel times come from.
enum class KernelSource { None, Measured, Report };

struct Row {
  size_t bytes = 0, count = 0;
  ncclDataType_t dtype = ncclFloat32;
  ncclRedOp_t op = ncclSum;
  gradcompMethod_t method = gradcompMethodNone;
  std::string label;  // method with its settings
  int bits = 0, bucket = 0;
  gradcompRounding_t rounding = gradcompRoundStochastic;  // GRADCOMP_ROUNDING
  gradcompLevels_t levels = gradcompLevelsUniform;        // GRADCOMP_LEVELS
  float density = 0;
  int algoUsed = 0;  // gradcompAlgo_t that ran; 0 = passed through
  // algoUsed kAlgoReduceScatter on a comm of >= 2 nodes of >= 2 ranks: the
  // hierarchical reduce-scatter (the library's choice), named apart (rowAlgoName).
  bool hierReduceScatter = false;
  // Pipelined calls (GRADCOMP_PIPELINE_BYTES): pieces of the last call (max
  // over ranks; 1 = not pipelined), the setting that cut them and the bytes
  // (as fp32) a piece covers as the library cut it (pieceBytesUsed).
  double pieces = 1;
  size_t pieceBytes = 0;
  size_t pieceBytesUsed = 0;
  int nranks = 1;
  bool reduceScatter = false;  // bytes/count are then the per-rank output
  bool failed = false;
  gradcompResult_t result = gradcompSuccess;  // of the failed call
  std::string error;
  // Measured (max over ranks).
  double ncclUs = 0, gradcompUs = 0;
  double ncclWire = 0, gradcompWire = 0;  // bytes each rank sends per call
  double interWire = NAN;  // of gradcompWire, bytes to other nodes (NaN: passed through)
  // Checked; -1 when -c 0.
  long ncclWrong = -1, gradcompWrong = -1;
  double relErrRms = 0, relErrMax = 0;
  double errOverBound = 0;  // largest |error| / bound over the elements
  // The rank-weight check (data.h; stochastic QSGD rows): the extremes over
  // ranks of each input's weight in the result (1 expected), and how many
  // weights were wrong (-1: not checked).
  double rankWeightMin = NAN, rankWeightMax = NAN;
  int rankWeightsWrong = -1;
  // Link model.
  bool kernelsMeasured = false;  // kernel times known, from kernelSource
  KernelSource kernelSource = KernelSource::None;
  // The row's encode and decode-accumulate of its `count` elements (the
  // costs' encode and decodeAcc), and every kernel the algorithm runs, each
  // charged at its own cost: kernelUs = kernelUs(work, costs, count). A hier
  // call whose ring middle was cut into pieces (ringMiddlePieces) runs only
  // the ring in pieces: its kernels (middleKernelUs, hierMiddleWork) at the
  // costs of the pieces' launches, the rest of its work (elementwise) at the
  // unpipelined launches; kernelUs is the two together.
  double encodeUs = 0, decodeUs = 0, kernelUs = 0, latencySteps = 0;
  bool ringMiddlePieces = false;
  double middleKernelUs = 0;
  KernelCosts costs;  // at the row's launches (codecLaunch elements a codec kernel)
  KernelCurve curve;  // the QSGD kernels' costs over launch sizes
  double codecLaunch = 0;
  double peerEncodeLaunch = 0;  // the peers' encodes of a piece, one batched launch
  double outDecodeLaunch = 0;   // the output's decodes of a piece, one batched launch
  KernelWork work;
  std::string kernelNote;      // which costs are estimates, and from what
  bool sparseKernels = false;  // the sparse exchange's kernels charged (work.select and bytes)
  bool dense = false;          // a sparse method's timed calls went dense (denseFallbacks)
  size_t slots = 0;            // sparse: the slots each rank sends (kmax; rand-k's k)
  CallKind kind;               // what the row's kernel work was read off
  // Why a row that needs the GPU report's rates has no model (empty: it has one).
  std::string modelMissing;
  // Why a modeled row's speedups are upper bounds (its kernels charged below their cost;
  // empty: none known). The table prints it under the row; the JSON has it in kernel_note.
  std::string modelOptimistic;
  std::vector<ModelPoint> model;
  std::vector<ProjectionPoint> projection;
  // --auto: the same size through a comm with autoTune=1 (checked), then it, a
  // forced comm and the baseline timed side by side (medians over rounds).
  bool autoRan = false, autoPassed = false;  // passed: auto gave this size to NCCL
  double autoUs = 0, autoForcedUs = 0, autoNcclUs = 0;
  long autoWrong = -1;
  int autoIdentical = -1;         // the auto comm's result compared, as `identical`
  int autoRankWeightsWrong = -1;  // the auto comm's rank-weight check
  // gradcomp's result hashed on every rank and compared: 1 identical, 0 not,
  // -1 not compared (buffers on a device).
  int identical = -1;
  // Socket backend: the host work of the call and of the baseline (in-process
  // world, no link), which its model adds the link's time to; NaN elsewhere.
  double hostUs = NAN, baselineHostUs = NAN;

  // nccl-tests: a reduce-scatter's algbw counts its whole input (N * bytes),
  // busbw = algbw * (N-1)/N; an allreduce's busbw = algbw * 2(N-1)/N.
  double algBytes() const { return reduceScatter ? (double)bytes * nranks : (double)bytes; }
  double algbw() const { return gradcompUs > 0 ? algBytes() / gradcompUs / 1e3 : 0; }
  double ncclAlgbw() const { return ncclUs > 0 ? algBytes() / ncclUs / 1e3 : 0; }
  double busFactor() const {
    if (nranks <= 1) return 0.0;
    return (reduceScatter ? 1.0 : 2.0) * (nranks - 1) / nranks;
  }
  double busbw() const { return algbw() * busFactor(); }
  double ncclBusbw() const { return ncclAlgbw() * busFactor(); }
  double speedup() const { return gradcompUs > 0 ? ncclUs / gradcompUs : 0; }
  double ratio() const { return gradcompWire > 0 ? ncclWire / gradcompWire : 0; }
  // auto's time over the better of forced compression and NCCL, minus 1, all
  // three timed side by side (autoUs, autoForcedUs, autoNcclUs).
  double autoRegret() const {
    const double best = autoForcedUs < autoNcclUs ? autoForcedUs : autoNcclUs;
    return autoRan && best > 0 ? autoUs / best - 1.0 : 0;
  }
};

// Runs every (type, method, size) on this rank; rank 0 prints and writes the
// files. Returns the exit code: 0, 1 when a result was wrong or a call failed.
int runHarness(const Options& o, Rank& r);

}  // namespace gcbench
