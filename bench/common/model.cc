#include "model.h"

namespace gcbench {

// Latency steps: the sends of an all-to-all leave together (one step);
// ncclAllGather and ncclAllReduce run rings of N-1 and 2(N-1) steps.
AlgoShape algoShape(int algo, int nranks) {
  const double n = nranks;
  switch (algo) {
    case 1:  // two-shot: encode N-1 chunks for their owners and the reduced own chunk (n in
             // all); decode N-1 chunks into the own chunk, then all N chunks of the result.
      return {1.0, (2 * n - 1) / n, 1 + (n - 1)};
    case 2:  // ring: decode-add-encode one chunk per hop, encode the reduced chunk, decode N.
      return {1.0, (2 * n - 1) / n, 2 * (n - 1)};
    case 3:  // allgather: encode everything once, decode-sum all N buffers.
      return {1.0, n, n - 1};
    case 5:  // reduce-scatter, per element of the output: encode and decode N-1 blocks, one
             // all-to-all.
      return {n - 1, n - 1, 1};
    case 4:  // sparse allgather: selection and scatter-add are not yet timed alone.
      return {0.0, 0.0, n - 1};
    default:  // passed through to ncclAllReduce
      return {0.0, 0.0, 2 * (n - 1)};
  }
}

double ncclRingBytes(size_t bytes, int nranks) {
  return nranks > 1 ? 2.0 * (nranks - 1) / nranks * (double)bytes : 0.0;
}

// bytes * 8 / (gbps * 1e9) seconds = bytes * 8 / (gbps * 1e3) microseconds.
double ncclModelUs(size_t bytes, int nranks, double gbps, double latencyUs) {
  if (nranks <= 1) return 0;
  return ncclRingBytes(bytes, nranks) * 8.0 / (gbps * 1e3) + 2.0 * (nranks - 1) * latencyUs;
}

double ncclReduceScatterBytes(size_t outBytes, int nranks) {
  return nranks > 1 ? (nranks - 1.0) * (double)outBytes : 0.0;
}

double ncclReduceScatterModelUs(size_t outBytes, int nranks, double gbps, double latencyUs) {
  if (nranks <= 1) return 0;
  return ncclReduceScatterBytes(outBytes, nranks) * 8.0 / (gbps * 1e3) + (nranks - 1) * latencyUs;
}

double gradcompModelUs(double kernelUs, double wireBytes, double latencySteps, double gbps,
                       double latencyUs) {
  return kernelUs + wireBytes * 8.0 / (gbps * 1e3) + latencySteps * latencyUs;
}

}  // namespace gcbench
