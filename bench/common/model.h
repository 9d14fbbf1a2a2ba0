// The link model (docs/benchmark.md): what an allreduce would take on a
// network of L Gb/s per rank, from quantities measured in this run.
//   gradcomp: kernels measured alone + bytes this rank sends / L + latency steps * latency
//   NCCL:     ring: 2(N-1)/N * bytes / L + 2(N-1) * latency (its reduction hides in the copy)
#pragma once

#include <stddef.h>

namespace gcbench {

// Per-rank kernel work and sequential message steps of one allreduce, for
// the algorithm gradcomp ran (gradcompAlgo_t; 0 = passed through to NCCL).
struct AlgoShape {
  double encodeFactor;  // encoded elements per element of the buffer
  double decodeFactor;  // decoded elements per element of the buffer
  double latencySteps;  // messages that must follow one another
};
AlgoShape algoShape(int algo, int nranks);

double ncclRingBytes(size_t bytes, int nranks);
double ncclModelUs(size_t bytes, int nranks, double gbps, double latencyUs);
// Reduce-scatter: NCCL's ring sends (N-1)/N of the input, (N-1) * outBytes,
// in N-1 steps.
double ncclReduceScatterBytes(size_t outBytes, int nranks);
double ncclReduceScatterModelUs(size_t outBytes, int nranks, double gbps, double latencyUs);
double gradcompModelUs(double kernelUs, double wireBytes, double latencySteps, double gbps,
                       double latencyUs);

}  // namespace gcbench
