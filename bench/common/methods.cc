#include "methods.h"

#include <stdint.h>
#include <stdio.h>

#include <tuple>

#include "../../kernels/sparse_math.cuh"

namespace gcbench {

const MethodSpec& methodSpec(gradcompMethod_t m) {
  static const MethodSpec specs[] = {
      {gradcompMethodNone, BoundKind::Exact, false},
      {gradcompMethodQsgd, BoundKind::Quantized, true},
      // The sparse methods' kernels are charged by the sparse path of the link model.
      {gradcompMethodTopk, BoundKind::Sparse, false},
      {gradcompMethodRandk, BoundKind::Sparse, false},
      {gradcompMethodDgc, BoundKind::Sparse, false},
  };
  return specs[(int)m];
}

gradcompResult_t methodConfig(const Options& o, gradcompMethod_t m, gradcompConfig_t* cfg) {
  gradcompResult_t res = gradcompConfigFromEnv(cfg);
  if (res != gradcompSuccess) return res;
  cfg->method = m;
  // A row measures compression itself; --auto adds GRADCOMP_AUTO beside it.
  cfg->autoTune = 0;
  if (o.bits > 0) cfg->bits = o.bits;
  if (o.bucket > 0) cfg->bucketSize = o.bucket;
  if (o.density > 0) cfg->density = o.density;
  if (o.algo >= 0) cfg->algo = (gradcompAlgo_t)o.algo;
  if (o.localSize >= 0) cfg->localSize = o.localSize;
  return gradcompConfigValidate(cfg);
}

int modelLocalSize(const gradcompConfig_t& cfg) {
  return cfg.localSize > 1 ? cfg.localSize : 1;
}

std::string methodLabel(const gradcompConfig_t& cfg, uint64_t firstCall, uint64_t lastCall) {
  char buf[200];
  switch (cfg.method) {
    case gradcompMethodQsgd:
      // The label names the rounding and the levels only when they are not
      // the defaults, so the labels of earlier results still match.
      snprintf(buf, sizeof buf, "qsgd bits=%d bucket=%d ef=%d algo=%s%s%s", cfg.bits,
               cfg.bucketSize, cfg.errorFeedback, algoName(cfg.algo),
               cfg.rounding == gradcompRoundNearest ? " rounding=nearest" : "",
               cfg.levels == gradcompLevelsSquare ? " levels=square" : "");
      break;
    case gradcompMethodTopk:
    case gradcompMethodRandk:
    case gradcompMethodDgc: {
      // DGC's warm-up runs the first calls denser (a power of 1/4 above the
      // setting): a row whose calls it reaches says the densities they ran at.
      const int steps = cfg.method == gradcompMethodDgc ? cfg.warmupSteps : 0;
      const double first = gc::sparse::warmupDensity(cfg.density, steps, firstCall);
      const double last = gc::sparse::warmupDensity(cfg.density, steps, lastCall);
      char density[96];
      if (first == (double)cfg.density)
        snprintf(density, sizeof density, "%g", cfg.density);
      else if (first == last)
        snprintf(density, sizeof density, "%g (warm-up; setting %g)", first, cfg.density);
      else
        snprintf(density, sizeof density, "%g..%g (warm-up; setting %g)", first, last, cfg.density);
      snprintf(buf, sizeof buf, "%s density=%s select=%s algo=%s", methodName(cfg.method), density,
               cfg.select == gradcompSelectExact ? "exact" : "threshold", algoName(cfg.algo));
      break;
    }
    default:
      snprintf(buf, sizeof buf, "none (pass-through: the uncompressed call)");
  }
  return buf;
}

std::string QsgdKernels::encodeName() const {
  std::string name = errorFeedback ? "qsgd_encode_ef" : "qsgd_encode";
  if (rounding == gradcompRoundNearest) name += "_nearest";
  return levels == gradcompLevelsSquare ? name + "_square" : name;
}

bool QsgdKernels::operator<(const QsgdKernels& o) const {
  return std::make_tuple(bits, bucket, (int)rounding, (int)levels, errorFeedback, ownerResidual) <
         std::make_tuple(o.bits, o.bucket, (int)o.rounding, (int)o.levels, o.errorFeedback,
                         o.ownerResidual);
}

bool qsgdKernelsOf(const gradcompConfig_t& cfg, QsgdKernels* k, std::string* why) {
  if (cfg.elias) {
    *why =
        "Elias-coded QSGD (GRADCOMP_ELIAS=1): its kernels are not timed alone, and the "
        "fixed-width ones' times would stand in for them";
    return false;
  }
  if (cfg.bitsMode != gradcompBitsFixed) {
    *why =
        "DQ-SGD bits (GRADCOMP_BITS_MODE): the bits change from call to call, and one width's "
        "kernel times would stand in for all";
    return false;
  }
  k->bits = cfg.bits;
  k->bucket = cfg.bucketSize;
  k->rounding = cfg.rounding;
  k->levels = cfg.levels;
  k->errorFeedback = cfg.errorFeedback != 0;
  k->ownerResidual = cfg.ownerResidual != 0;
  return true;
}

}  // namespace gcbench
