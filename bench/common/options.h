// gradcomp_perf command line: all_reduce_perf's flags plus gradcomp's.
#pragma once

#include <math.h>
#include <nccl.h>
#include <stddef.h>
#include <stdint.h>

#include <string>
#include <vector>

#include "gradcomp.h"

namespace gcbench {

enum class BackendKind { Auto, Cuda, Cpu, Socket };
// -C: the collective measured (nccl-tests' all_reduce_perf / reduce_scatter_perf).
enum class Collective { AllReduce, ReduceScatter };

struct Options {
  // Sizes in bytes; not given (minGiven, maxGiven false): the backend's
  // default (see applyDefaults). A given size is at least 1.
  size_t minBytes = 0, maxBytes = 0;
  bool minGiven = false, maxGiven = false;
  size_t stepBytes = 1 << 20;
  double stepFactor = 0;  // > 1: multiply; else add stepBytes
  int iters = -1, warmup = -1;
  int check = 1;
  std::vector<ncclDataType_t> dtypes;
  ncclRedOp_t op = ncclSum;
  std::vector<gradcompMethod_t> methods;
  bool methodsGiven = false;  // -m given (else GRADCOMP_METHOD's, or qsgd: applyDefaults)
  // false: -m not given and a GRADCOMP_* value is bad (methods is qsgd, and methodConfig
  // refuses that value).
  bool methodsKnown = true;
  // gradcomp settings; < 0 (or auto) keeps gradcompConfigFromEnv's value.
  int bits = -1, bucket = -1;
  float density = -1;
  int algo = -1;
  int localSize = -1;  // --local-size: ranks per node (cfg.localSize)
  int nranks = 0;
  bool nranksGiven = false;  // -N given (else applyDefaults' count, or the launcher's)
  BackendKind backend = BackendKind::Auto;
  Collective collective = Collective::AllReduce;
  std::string jsonPath, csvPath;
  // --backend socket: rank 0's "host:port" (--root, else NCCL_COMM_ID).
  std::string root;
  std::vector<double> linkGbps;
  bool linkGiven = false;
  double linkLatencyUs = 10;
  // Projection onto K nodes of G GPUs (every K with every G), empty = none.
  std::vector<int> modelNodes, modelLocal;
  std::vector<double> nodeGbps;  // all NICs of a node together
  double intraGbps = 3600;       // in-node link per GPU: NVLink 4, 450 GB/s
  bool intraGiven = false;       // --intra-gbps given: refused where no model reads it
  // The projection's GRADCOMP_PIPELINE_BYTES: the hierarchy's middle stage,
  // or the flat algorithm where the library runs no hierarchy
  // (docs/benchmark.md says why 8 MiB).
  size_t modelPipelineBytes = 8u << 20;
  // CPU backend: the GPU report whose kernel rates the model uses; empty =
  // the newest in the source tree's bench/results, "none" = leave the model out.
  std::string kernelRates;
  uint64_t seed = 1;
  // Self-test of the checker: corrupt one output element of gradcomp.
  bool corrupt = false;
  // Self-test of the rank-weight check: rank 0's input weighed this many
  // times in the check's copy of the result (NaN: off).
  double debugRankWeight = NAN;
  // Beside every forced-compression row (autoTune=0), time gradcomp with
  // GRADCOMP_AUTO's decision (autoTune=1) and its regret.
  bool autoRow = false;
  std::string commandLine;
};

// Parses argv; on a bad flag prints a sentence naming it and returns false
// with *exitCode set (0 for --help).
bool parseOptions(int argc, char** argv, Options* o, int* exitCode);
// Fills what the user left unset: defaults differ per backend so that the
// CPU run (CI, tools/run.sh) stays short.
void applyDefaults(Options* o, int gpuCount);
// After applyDefaults: refuses (a sentence, false, *exitCode 2) what can only
// be judged with the defaults in: --local-size against the ranks, a size
// range that gives no row for the chosen types.
bool checkOptions(const Options& o, int* exitCode);

const char* dtypeName(ncclDataType_t t);
size_t dtypeSize(ncclDataType_t t);
const char* methodName(gradcompMethod_t m);
// Row::algoUsed of gradcomp's reduce-scatter, after gradcompAlgo_t's values;
// flat ("reducescatter") or, with Row::hierReduceScatter, hierarchical
// ("hier_reducescatter", rowAlgoName).
constexpr int kAlgoReduceScatter = 6;
const char* algoName(int algo);
const char* opName(ncclRedOp_t op);
std::vector<size_t> sizeList(const Options& o);

}  // namespace gcbench
