// gradcomp_perf: all_reduce_perf for gradcomp. Every size runs ncclAllReduce
// and gradcompAllReduce on the same data, side by side, checks both against
// the exact sum, and (when times cannot speak for a real network) models
// both on a link of given bandwidth. See docs/benchmark.md.
#include <stdio.h>

#include "common/backends.h"
#include "common/methods.h"
#include "common/options.h"

int main(int argc, char** argv) {
  gcbench::Options o;
  int code = 0;
  if (!gcbench::parseOptions(argc, argv, &o, &code)) return code;
  int gpus = 0;
  if (o.backend == gcbench::BackendKind::Cuda || o.backend == gcbench::BackendKind::Auto) {
    gpus = gcbench::probeGpuCount();
    if (o.backend == gcbench::BackendKind::Auto) {
      o.backend = gpus > 0 ? gcbench::BackendKind::Cuda : gcbench::BackendKind::Cpu;
      if (gpus <= 0)
        printf("# no GPU visible: running the CPU reference backend (--backend cpu)\n");
    }
  }
  gcbench::applyDefaults(&o, gpus);
  if (!gcbench::checkOptions(o, &code)) return code;
  // Each row's settings (GRADCOMP_* beneath the flags) as its ranks will validate them: a bad
  // value is said once, here, before any rank starts or looks for its GPU (each rank refused it
  // after its device set-up; without a GPU, "no usable GPU" was all a run said).
  for (gradcompMethod_t m : o.methods) {
    gradcompConfig_t cfg;
    if (gcbench::methodConfig(o, m, &cfg) != gradcompSuccess) {
      fprintf(stderr, "gradcomp_perf: %s\n", gradcompGetLastError());
      return 2;
    }
  }
  if (o.backend == gcbench::BackendKind::Socket) return gcbench::runSocket(o);
  return o.backend == gcbench::BackendKind::Cpu ? gcbench::runCpu(o) : gcbench::runCuda(o);
}
