// One rank as the harness sees it: buffers, the NCCL baseline, gradcomp's
// allreduce, small collectives for the harness's own bookkeeping, and the
// kernels the link model needs. CpuRank is a thread of an in-process world;
// CudaRank is a process with a GPU and an NCCL communicator; SocketRank a
// process of a CPU world over TCP.
#pragma once

#include <stddef.h>

#include <memory>
#include <string>

#include "data.h"
#include "methods.h"
#include "model.h"
#include "options.h"
#include "gradcomp.h"

namespace gcbench {

class Rank {
 public:
  virtual ~Rank() = default;
  int rank() const { return rank_; }
  int nranks() const { return nranks_; }

  virtual bool onDevice() const = 0;
  // "cuda", "cpu" or "socket".
  virtual std::string backendName() const { return onDevice() ? "cuda" : "cpu"; }
  // Times mean what they say only with a device per rank.
  virtual bool representative() const = 0;
  virtual std::string describe() const = 0;
  virtual std::string baselineName() const = 0;

  // The send and recv buffers; fatal on failure.
  virtual void allocBuffers(size_t sendBytes, size_t recvBytes) = 0;
  void* send() const { return send_; }
  void* recv() const { return recv_; }
  virtual void fill(void* buf, gc::DType t, size_t count, uint64_t seed) = 0;
  // Fills with all-ones bits: NaN in every float type, so untouched output is wrong.
  virtual void poison(void* buf, size_t bytes) = 0;
  virtual void poke(void* buf, gc::DType t, size_t i, float v) = 0;

  // Collective: bucket maxima of every rank's input (nranks * numBuckets),
  // in memory check() can read.
  virtual const float* bucketMax(gc::DType t, size_t count, int bucket, uint64_t seed) = 0;
  virtual CheckTotals check(const CheckParams& p, const float* bucketMax, const void* got,
                            size_t count) = 0;

  // Collective: ncclAllReduce, or on the CPU backend the exact host sum standing in for it.
  virtual bool baseline(const void* send, void* recv, size_t count, ncclDataType_t t,
                        ncclRedOp_t op) = 0;
  // Collective: ncclReduceScatter, or the exact host reduce-scatter on the CPU backend.
  virtual bool baselineReduceScatter(const void* send, void* recv, size_t recvCount,
                                     ncclDataType_t t, ncclRedOp_t op) = 0;
  // Collective.
  virtual gradcompResult_t createComm(const gradcompConfig_t& cfg, gradcompComm_t* comm) = 0;
  virtual void destroyComm(gradcompComm_t comm) = 0;
  virtual gradcompResult_t allReduce(gradcompComm_t comm, const void* send, void* recv,
                                     size_t count, ncclDataType_t t, ncclRedOp_t op) = 0;
  gradcompResult_t reduceScatter(gradcompComm_t comm, const void* send, void* recv,
                                 size_t recvCount, ncclDataType_t t, ncclRedOp_t op) {
    return gradcompReduceScatter(send, recv, recvCount, t, op, comm, stream());
  }

  // The stream gradcomp's calls are ordered on (null on the CPU backend).
  virtual cudaStream_t stream() const { return nullptr; }
  // Waits for this rank's queued work.
  virtual void sync() = 0;
  virtual void barrier() = 0;
  // Collective, in place: element-wise max (or sum) over ranks.
  virtual void reduce(double* v, int n, bool max) = 0;

  // The costs of the row's kernels (KernelCosts, per element) at `count`
  // elements, measured on this rank alone: its QSGD encode (k: error
  // feedback, rounding), the same of fp32, the owners' re-encode, decode
  // overwrite and accumulate, and a device copy standing for the elementwise
  // passes (toFloat, fromFloat, add, copy, zero: one read and one write per
  // element, as a copy). False when unavailable.
  virtual bool qsgdKernelTimes(gc::DType t, size_t count, const QsgdKernels& k,
                               KernelCosts* costs) = 0;
  // The same costs at every launch size this rank has them for (KernelCurve),
  // `count` among them: the measured table's sizes on a GPU, `count` alone
  // elsewhere. False when unavailable.
  virtual bool qsgdKernelCurve(gc::DType t, size_t count, const QsgdKernels& k,
                               KernelCurve* curve) {
    KernelCosts c;
    if (!qsgdKernelTimes(t, count, k, &c)) return false;
    curve->add((double)count, c);
    return true;
  }
  // The sparse exchange's costs at `count` elements, measured on this rank
  // alone: cfg's selector (gradcompTopkSelect at its density, oversample,
  // sample rate; not timed when noSelect: rand-k, the dense fallback) per
  // element, and a device copy per byte for the passes charged by bytes.
  // False when unavailable.
  virtual bool sparseKernelTimes(size_t count, const gradcompConfig_t& cfg, bool noSelect,
                                 KernelCosts* costs) {
    (void)count, (void)cfg, (void)noSelect, (void)costs;
    return false;
  }
  // Copies `bytes` of buf to host memory once the rank's work on buf ends.
  virtual void toHost(const void* buf, void* host, size_t bytes) = 0;
  // A hash of `bytes` of buf (hashBytes) that a double holds exactly (ranks
  // compare it), after the rank's work on buf ends; false where unavailable.
  virtual bool resultHash(const void* buf, size_t bytes, double* hash) { return false; }
  // Collective. The host work of one call of `count` elements, gradcomp's
  // (cfg) and the baseline's, without a link: where the link is a real one
  // (the socket backend), what the model adds the link's time to. False
  // elsewhere.
  virtual bool hostCallTimes(const Options& o, const gradcompConfig_t& cfg, ncclDataType_t t,
                             size_t count, double* gradcompUs, double* baselineUs) {
    return false;
  }

 protected:
  int rank_ = 0, nranks_ = 1;
  void* send_ = nullptr;
  void* recv_ = nullptr;
};

// Prints "gradcomp_perf: rank R: <message>" and ends the process: the
// harness cannot go on once a rank's buffers or communicator are gone.
// Launched by mpirun or srun (or tools/tc_link.sh, which sets
// OMPI_COMM_WORLD_*): rank, size and local rank from their variables, and 1;
// 0 when no launcher set them; -1, with a sentence on stderr naming the
// variable, its value and the range, when one is no integer in its range
// (size 1..INT_MAX, rank 0..size-1, local size 1..size, local rank
// 0..local size-1).
int launcherRank(int* rank, int* size, int* localRank, int* localSize);
// The environment variable name=v as a plain decimal in lo..hi, lo >= 0
// (digits only, as GRADCOMP_* integers: no sign, space or leading zero; of
// SLURM_STEP_TASKS_PER_NODE's list, this node's count); else a sentence on
// stderr naming the variable, its value and the range (and why, if given),
// and false.
bool envInt(const char* name, const char* v, long lo, long hi, const char* why, int* out);

[[noreturn]] void fatal(int rank, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// FNV-1a of the bytes, cut to 52 bits so that a double holds it exactly.
double hashBytes(const void* buf, size_t bytes);

}  // namespace gcbench
