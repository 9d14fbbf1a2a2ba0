// Entry points of the backends: each sets up its ranks and runs the harness
// on every one of them.
#pragma once

#include "options.h"

namespace gcbench {

// N threads of one in-process world (gradcompCommCreateCpu).
int runCpu(const Options& o);
// The host work of one call of `count` elements without a link: the call in
// an in-process world of o.nranks threads on this machine, gradcomp's (cfg)
// and the exact host sum's; the slowest thread's mean time per call.
bool timeInProcess(const Options& o, const gradcompConfig_t& cfg, ncclDataType_t t, size_t count,
                   double* gradcompUs, double* baselineUs);
// This process is one rank of a CPU world over TCP (gradcompCommCreateSocket):
// rank and size from the launcher's variables, the root from --root.
int runSocket(const Options& o);
// Number of GPUs, asked in a child process so that this one can still fork
// ranks that initialize CUDA themselves. -1 when CUDA cannot tell.
int probeGpuCount();
// One process per rank: forked here, or started by mpirun/srun.
int runCuda(const Options& o);

}  // namespace gcbench
