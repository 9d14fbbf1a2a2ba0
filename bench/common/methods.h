// Per-method parts of the benchmark: how a method configures gradcomp and
// which error bound its codec promises for one call from zero state.
#pragma once

#include <string>

#include "data.h"
#include "options.h"

namespace gcbench {

struct MethodSpec {
  gradcompMethod_t id;
  BoundKind bound;   // when the call was compressed
  bool qsgdKernels;  // the link model can time its kernels alone
};

const MethodSpec& methodSpec(gradcompMethod_t m);
// gradcompConfigFromEnv, then the flags the user gave, then the method.
gradcompResult_t methodConfig(const Options& o, gradcompMethod_t m, gradcompConfig_t* cfg);
// firstCall..lastCall: the calls of one buffer (0-based) a row times; where
// DGC's warm-up reaches them, the label names the densities they ran at.
std::string methodLabel(const gradcompConfig_t& cfg, uint64_t firstCall = UINT64_MAX,
                        uint64_t lastCall = UINT64_MAX);
// The ranks per node the link model takes for comms made from cfg: its
// localSize (--local-size, else GRADCOMP_LOCAL_SIZE) when > 1, else 1 (flat).
// Auto (0) is flat here; the harness reads the layout NCCL and socket comms
// find by host identity back from a comm (gradcompCommLayout).
int modelLocalSize(const gradcompConfig_t& cfg);

// The QSGD kernels a row's calls run, as the link model times them: encode
// (with error feedback unless GRADCOMP_EF=0, in the row's rounding), the
// owners' re-encode, decode overwrite and accumulate at the row's bits and
// bucket.
struct QsgdKernels {
  int bits = 4, bucket = 512;
  gradcompRounding_t rounding = gradcompRoundStochastic;
  gradcompLevels_t levels = gradcompLevelsUniform;  // GRADCOMP_LEVELS
  bool errorFeedback = true;
  // GRADCOMP_OWNER_RESIDUAL: the owners' re-encodes of reduced chunks run
  // with error feedback (else without).
  bool ownerResidual = false;
  // gradcomp_kernels_perf's name of the encode kernel: qsgd_encode_ef,
  // qsgd_encode_ef_nearest, qsgd_encode (no error feedback) or
  // qsgd_encode_nearest (no error feedback, nearest: a config refuses it),
  // with _square appended for square levels (GRADCOMP_LEVELS=square).
  std::string encodeName() const;
  // The owners' re-encode (fp32): the encode with or without error feedback.
  QsgdKernels owner() const {
    QsgdKernels o = *this;
    o.errorFeedback = ownerResidual;
    return o;
  }
  bool operator<(const QsgdKernels& o) const;
};

// cfg's QSGD kernels; false, with why the model cannot time them, for
// Elias-coded levels (variable-size kernels that are not timed alone) and
// DQ-SGD bits (the bits change from call to call).
bool qsgdKernelsOf(const gradcompConfig_t& cfg, QsgdKernels* k, std::string* why);

}  // namespace gcbench
