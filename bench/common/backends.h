// Entry points of the two backends: each sets up its ranks and runs the
// harness on every one of them.
#pragma once

#include "options.h"

namespace gcbench {

// N threads of one in-process world (gradcompCommCreateCpu).
int runCpu(const Options& o);
// Number of GPUs, asked in a child process so that this one can still fork
// ranks that initialize CUDA themselves. -1 when CUDA cannot tell.
int probeGpuCount();
// One process per rank: forked here, or started by mpirun/srun.
int runCuda(const Options& o);

}  // namespace gcbench
