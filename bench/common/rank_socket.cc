// Socket backend: this process is one rank of a CPU world over TCP
// (gradcompCommCreateSocket): the host reference codecs, as on the CPU
// backend, but the bytes cross real links, so the times are those of this
// machine's codecs plus its network. The baseline is the uncompressed call
// over the same links (gradcomp's pass-through: the transport's direct
// two-shot), and the harness's own collectives use it too.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <thread>
#include <vector>

#include "../../plugin/backends/cpu/root_address.h"
#include "backends.h"
#include "harness.h"
#include "rank_host.h"

namespace gcbench {
namespace {

// Comm k of a run listens at --root's port + k % kRootPorts (SocketRank::createComm).
constexpr int kRootPorts = 512;

class SocketRank : public HostRank {
 public:
  SocketRank(int rank, int nranks, const std::string& host, int port) : host_(host), port_(port) {
    rank_ = rank;
    nranks_ = nranks;
  }
  ~SocketRank() override {
    if (ctl_) gradcompCommDestroy(ctl_);
  }

  // Collective: the comm of the baseline and the harness's own collectives,
  // method none (every call passes through).
  gradcompResult_t init() {
    gradcompConfig_t cfg;
    gradcompResult_t res = gradcompConfigFromEnv(&cfg);
    if (res != gradcompSuccess) return res;
    cfg.method = gradcompMethodNone;
    cfg.autoTune = 0;
    return createComm(cfg, &ctl_);
  }

  std::string backendName() const override { return "socket"; }
  // Measured times are this machine's: host codecs plus the real links.
  bool representative() const override { return true; }
  std::string describe() const override {
    return std::to_string(nranks_) + " ranks as processes over TCP (root " + host_ + ":" +
           std::to_string(port_) + "; this rank's host has " +
           std::to_string(std::thread::hardware_concurrency()) + " CPU cores)";
  }
  std::string baselineName() const override {
    return "uncompressed over the same TCP links: gradcomp's pass-through on the socket "
           "transport (direct two-shot: each rank sums its 1/N block of all ranks' buffers in "
           "rank order and sends it to every rank; 2(N-1)/N of the buffer each way, 2 latency "
           "steps), not NCCL";
  }

  // Each rank computes its own input's maxima; a sum of zero-padded slots
  // gathers them exactly (x + 0 = x).
  const float* bucketMax(gc::DType t, size_t count, int bucket, uint64_t seed) override {
    const size_t nb = (count + bucket - 1) / bucket;
    std::vector<float> mine(nb * nranks_, 0.0f);
    bucketMaxHost(mine.data() + nb * rank_, t, count, bucket, seed, rank_);
    bucketMax_.assign(nb * nranks_, 0.0f);
    if (gradcompAllReduce(mine.data(), bucketMax_.data(), mine.size(), ncclFloat32, ncclSum, ctl_,
                          nullptr) != gradcompSuccess)
      fatal(rank_, "gathering the bucket maxima: %s", gradcompGetLastError());
    return bucketMax_.data();
  }

  bool baseline(const void* send, void* recv, size_t count, ncclDataType_t t,
                ncclRedOp_t op) override {
    return ok(gradcompAllReduce(send, recv, count, t, op, ctl_, nullptr), "gradcompAllReduce");
  }
  bool baselineReduceScatter(const void* send, void* recv, size_t recvCount, ncclDataType_t t,
                             ncclRedOp_t op) override {
    return ok(gradcompReduceScatter(send, recv, recvCount, t, op, ctl_, nullptr),
              "gradcompReduceScatter");
  }

  // Comm k listens at port + k: a root address that no earlier comm of
  // this run holds, the same on every rank since creations are collective.
  gradcompResult_t createComm(const gradcompConfig_t& cfg, gradcompComm_t* comm) override {
    const std::string root = gc::rootAddress(host_, port_ + created_ % kRootPorts);
    ++created_;
    return gradcompCommCreateSocket(nranks_, rank_, root.c_str(), &cfg, comm);
  }
  void destroyComm(gradcompComm_t comm) override { gradcompCommDestroy(comm); }
  gradcompResult_t allReduce(gradcompComm_t comm, const void* send, void* recv, size_t count,
                             ncclDataType_t t, ncclRedOp_t op) override {
    return gradcompAllReduce(send, recv, count, t, op, comm, nullptr);
  }

  void barrier() override {
    double v = 0;
    reduce(&v, 1, false);
  }
  void reduce(double* v, int n, bool max) override {
    std::vector<double> in(v, v + n);
    if (gradcompAllReduce(in.data(), v, (size_t)n, ncclFloat64, max ? ncclMax : ncclSum, ctl_,
                          nullptr) != gradcompSuccess)
      fatal(rank_, "the harness's allreduce over the socket comm: %s", gradcompGetLastError());
  }

  // Rank 0 times the call in an in-process world of N threads on this
  // machine while the others wait: N ranks' host work shares this machine's
  // cores as it does in the socket run.
  bool hostCallTimes(const Options& o, const gradcompConfig_t& cfg, ncclDataType_t t, size_t count,
                     double* gradcompUs, double* baselineUs) override {
    double v[3] = {0, 0, 0};
    if (rank_ == 0) {
      Options world = o;
      world.nranks = nranks_;
      v[0] = timeInProcess(world, cfg, t, count, &v[1], &v[2]) ? 1 : 0;
    }
    reduce(v, 3, true);
    *gradcompUs = v[1];
    *baselineUs = v[2];
    return v[0] > 0;
  }

 private:
  bool ok(gradcompResult_t res, const char* call) const {
    if (res != gradcompSuccess)
      fprintf(stderr, "gradcomp_perf: rank %d: baseline %s: %s\n", rank_, call,
              gradcompGetLastError());
    return res == gradcompSuccess;
  }

  std::string host_;
  int port_;
  int created_ = 0;
  gradcompComm_t ctl_ = nullptr;
  std::vector<float> bucketMax_;
};

}  // namespace

int runSocket(const Options& o) {
  int rank, size, localRank, localSize;
  const int launched = launcherRank(&rank, &size, &localRank, &localSize);
  if (launched < 0) return 2;
  if (launched == 0) {
    fprintf(stderr,
            "gradcomp_perf: --backend socket runs one process per rank: set "
            "OMPI_COMM_WORLD_RANK and OMPI_COMM_WORLD_SIZE (mpirun, srun, or tools/tc_link.sh "
            "--cpu do)\n");
    return 2;
  }
  if (o.nranks != 0 && o.nranks != size) {
    fprintf(stderr, "gradcomp_perf: -N %d but the launcher started %d ranks\n", o.nranks, size);
    return 2;
  }
  std::string root = o.root;
  if (root.empty() && getenv("NCCL_COMM_ID")) root = getenv("NCCL_COMM_ID");
  // Read as the library reads it (gc::splitRootAddress); comm k of the run
  // listens at port + k, so the port leaves room for them.
  std::string host, why;
  int port = 0;
  if (!gc::splitRootAddress(root.c_str(), &host, &port, &why) || port > 65535 - kRootPorts) {
    if (why.empty())
      why = "port " + std::to_string(port) + " is above " + std::to_string(65535 - kRootPorts);
    fprintf(stderr,
            "gradcomp_perf: --backend socket needs rank 0's address as --root host:port (or "
            "NCCL_COMM_ID), port in 1..%d; got \"%s\": %s\n",
            65535 - kRootPorts, root.c_str(), why.c_str());
    return 2;
  }
  Options mine = o;
  mine.nranks = size;
  SocketRank r(rank, size, host, port);
  if (r.init() != gradcompSuccess) {
    fprintf(stderr, "gradcomp_perf: rank %d: gradcompCommCreateSocket(%s): %s\n", rank,
            root.c_str(), gradcompGetLastError());
    return 3;
  }
  return runHarness(mine, r);
}

}  // namespace gcbench
