// CUDA backend: one process per rank, each with a GPU (or a share of one),
// an NCCL communicator and a stream. The NCCL column is ncclAllReduce on the
// same buffers and stream.
//
// Ranks are forked here (-N), or started by mpirun/srun, which this reads
// from the environment; NCCL_COMM_ID then names the bootstrap root. Forked
// ranks pass the ncclUniqueId of rank 0 through a pipe. No CUDA call happens
// in the parent: a CUDA context does not survive fork.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "backends.h"
#include "data_ops.h"
#include "gradcomp/reference.h"
#include "gradcomp/sparse.h"
#include "harness.h"
#include "methods.h"

namespace gcbench {
namespace {

#define BENCH_CUDA(call)                                                                 \
  do {                                                                                   \
    cudaError_t e_ = (call);                                                             \
    if (e_ != cudaSuccess) fatal(rank_, "%s failed: %s", #call, cudaGetErrorString(e_)); \
  } while (0)
#define BENCH_NCCL(call)                                                                 \
  do {                                                                                   \
    ncclResult_t e_ = (call);                                                            \
    if (e_ != ncclSuccess) fatal(rank_, "%s failed: %s", #call, ncclGetErrorString(e_)); \
  } while (0)

ncclDataType_t toNccl(gc::DType t) {
  return t == gc::DType::F16 ? ncclFloat16 : (t == gc::DType::BF16 ? ncclBfloat16 : ncclFloat32);
}

// Median of batches timed with events: robust to a stray slow launch.
template <typename F>
double timeKernel(int rank_, cudaStream_t stream, F&& launch) {
  cudaEvent_t a, b;
  BENCH_CUDA(cudaEventCreate(&a));
  BENCH_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) launch(i);
  std::vector<float> ms;
  for (int batch = 0; batch < 5; ++batch) {
    BENCH_CUDA(cudaEventRecord(a, stream));
    for (int i = 0; i < 5; ++i) launch(i);
    BENCH_CUDA(cudaEventRecord(b, stream));
    BENCH_CUDA(cudaEventSynchronize(b));
    float t = 0;
    BENCH_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t / 5);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2] * 1e3;
}

// Microseconds per byte moved (read + written) by a device copy of count
// floats: the rate the model charges the elementwise passes at.
double copyUsPerByte(int rank_, cudaStream_t stream, const float* src, float* dst, size_t count) {
  return timeKernel(
             rank_, stream,
             [&](int) {
               BENCH_CUDA(cudaMemcpyAsync(dst, src, count * 4, cudaMemcpyDeviceToDevice, stream));
             }) /
         (8.0 * (double)count);
}

// The row's kernels' costs per element (Rank::qsgdKernelTimes) through the
// public entry points: its QSGD encode of x, decode overwrite and accumulate
// of the result, the fp32 encodes of the decoded values, and a device copy
// for the elementwise passes (one read, one write per element, as the
// library's toFloat, fromFloat and copy; add reads one more). The fused
// owner's sum (Backend::qsgdSum) has no public entry point to time it
// through: costs->sumPerByte stays 0 and the model estimates it from the
// decode and copy rates (model.cc ownerSum); the CPU backend takes its rate
// from a GPU report's qsgd_sum8 rows (KernelRates::lookup).
bool timeQsgdKernels(int rank_, cudaStream_t stream, const void* x, ncclDataType_t t, size_t count,
                     const QsgdKernels& k, KernelCosts* costs) {
  const int bits = k.bits, bucket = k.bucket;
  const size_t encBytes = gradcompQsgdEncodedBytes(count, bits, bucket);
  float* residual = nullptr;
  float* out = nullptr;
  float* copy = nullptr;
  void* enc = nullptr;
  if (cudaMalloc(&residual, count * 4) != cudaSuccess ||
      cudaMalloc(&out, count * 4) != cudaSuccess || cudaMalloc(&copy, count * 4) != cudaSuccess ||
      cudaMalloc(&enc, encBytes) != cudaSuccess) {
    (void)cudaGetLastError();
    cudaFree(residual);
    cudaFree(out);
    cudaFree(copy);
    return false;
  }
  BENCH_CUDA(cudaMemsetAsync(residual, 0, count * 4, stream));
  BENCH_CUDA(cudaMemsetAsync(out, 0, count * 4, stream));
  bool ok = true;
  const double n = (double)count;
  auto encode = [&](const void* in, ncclDataType_t type, const QsgdKernels& q) {
    return timeKernel(rank_, stream,
                      [&](int i) {
                        ok = ok && gradcompQsgdEncodeEFLevels(
                                       in, type, q.errorFeedback ? residual : nullptr, count, bits,
                                       bucket, 7 + i, q.rounding, q.levels, enc,
                                       stream) == gradcompSuccess;
                      }) /
           n;
  };
  auto decode = [&](int acc) {
    return timeKernel(rank_, stream,
                      [&](int) {
                        ok = ok && gradcompQsgdDecode(enc, count, bits, bucket, out, acc, stream) ==
                                       gradcompSuccess;
                      }) /
           n;
  };
  costs->encode = encode(x, t, k);
  costs->decodeAcc = decode(1);
  costs->decode = decode(0);
  // fp32 input: the decoded values (the partial sums the ring and the owners encode).
  costs->encodeF32 = t == ncclFloat32 ? costs->encode : encode(out, ncclFloat32, k);
  costs->ownerEncode = encode(out, ncclFloat32, k.owner());
  costs->elementwisePerByte = copyUsPerByte(rank_, stream, out, copy, count);
  cudaFree(residual);
  cudaFree(out);
  cudaFree(copy);
  cudaFree(enc);
  return ok;
}

// The sparse exchange's costs (Rank::sparseKernelTimes): the selector through
// its public entry point on the benchmark's fp32 data (rank 0's values, as
// gradcomp_kernels_perf selects from), and a device copy.
bool timeSparseKernels(int rank_, cudaStream_t stream, size_t count, const gradcompConfig_t& cfg,
                       bool noSelect, KernelCosts* costs) {
  const int exact = cfg.select == gradcompSelectExact ? 1 : 0;
  size_t slots = 0, wsBytes = 0;
  if (gradcompTopkSlots(count, cfg.density, cfg.oversample, exact, &slots) != gradcompSuccess ||
      gradcompTopkWorkspaceBytes(count, cfg.density, cfg.oversample, cfg.sampleRate, exact,
                                 &wsBytes) != gradcompSuccess)
    return false;
  float* v = nullptr;
  float* copy = nullptr;
  uint32_t* idx = nullptr;
  void* ws = nullptr;
  if (cudaMalloc(&v, count * 4) != cudaSuccess || cudaMalloc(&copy, count * 4) != cudaSuccess ||
      cudaMalloc(&idx, std::max<size_t>(slots, 1) * 4) != cudaSuccess ||
      cudaMalloc(&ws, std::max<size_t>(wsBytes, 1)) != cudaSuccess) {
    (void)cudaGetLastError();
    cudaFree(v);
    cudaFree(copy);
    cudaFree(idx);
    return false;
  }
  BENCH_CUDA(fillDevice(v, gc::DType::F32, count, 1, 0, stream));
  bool ok = true;
  const double n = (double)count;
  *costs = KernelCosts{};
  if (!noSelect) {
    costs->select =
        timeKernel(rank_, stream,
                   [&](int i) {
                     ok = ok && gradcompTopkSelect(v, count, cfg.density, cfg.oversample,
                                                   cfg.sampleRate, exact, 1 + i, idx, nullptr, ws,
                                                   wsBytes, stream) == gradcompSuccess;
                   }) /
        n;
  }
  costs->elementwisePerByte = copyUsPerByte(rank_, stream, v, copy, count);
  BENCH_CUDA(cudaStreamSynchronize(stream));
  cudaFree(v);
  cudaFree(copy);
  cudaFree(idx);
  cudaFree(ws);
  return ok;
}

// (dtype, count, the row's kernels) -> their costs
using KernelKey = std::tuple<int, size_t, QsgdKernels>;
using KernelTable = std::map<KernelKey, KernelCosts>;

// (count, the selector's settings) -> the sparse exchange's costs; a row
// that times no selector (rand-k, the dense fallback) has the key of
// noSelect, whatever its settings.
using SparseKey = std::tuple<size_t, int, float, float, float>;
using SparseTable = std::map<SparseKey, KernelCosts>;

SparseKey sparseKeyOf(size_t count, const gradcompConfig_t& cfg, bool noSelect) {
  if (noSelect) return SparseKey{count, -1, 0.0f, 0.0f, 0.0f};
  return SparseKey{count, cfg.select == gradcompSelectExact ? 1 : 0, cfg.density, cfg.oversample,
                   cfg.sampleRate};
}

bool isSparse(gradcompMethod_t m) {
  return m == gradcompMethodTopk || m == gradcompMethodDgc || m == gradcompMethodRandk;
}

// Rank 0 measures every kernel the link model will need while the other
// ranks still wait for the NCCL id: on a shared GPU that is the only time
// the kernels run alone (later, waiting ranks spin NCCL kernels, and the
// GPU time-slices between the processes).
void measureKernelTable(const Options& o, int device, KernelTable* table, SparseTable* sparse) {
  const int rank_ = 0;
  std::vector<QsgdKernels> configs;
  std::vector<gradcompConfig_t> sparseConfigs;
  for (gradcompMethod_t m : o.methods) {
    gradcompConfig_t cfg;
    QsgdKernels k;
    std::string why;
    if (methodConfig(o, m, &cfg) != gradcompSuccess) continue;
    if (isSparse(m)) sparseConfigs.push_back(cfg);
    if (!methodSpec(m).qsgdKernels || !qsgdKernelsOf(cfg, &k, &why)) continue;
    configs.push_back(k);
  }
  if (configs.empty() && sparseConfigs.empty()) return;
  BENCH_CUDA(cudaSetDevice(device));
  cudaStream_t stream;
  BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  void* x = nullptr;
  BENCH_CUDA(cudaMalloc(&x, o.maxBytes ? o.maxBytes : 1));
  for (ncclDataType_t dt : o.dtypes) {
    const gc::DType t = dt == ncclFloat16 ? gc::DType::F16
                                          : (dt == ncclBfloat16 ? gc::DType::BF16 : gc::DType::F32);
    BENCH_CUDA(fillDevice(x, t, o.maxBytes / dtypeSize(dt), o.seed, 0, stream));
    // The QSGD kernels at the rows' counts and at launches of 2^12, 2^14, ...
    // elements below the largest: the library launches them per chunk and
    // per piece (KernelCurve), a small launch dearer per element.
    std::vector<size_t> counts;
    for (size_t size : sizeList(o)) counts.push_back(size / dtypeSize(dt));
    const size_t most = o.maxBytes / dtypeSize(dt);
    for (size_t n = size_t(1) << 12; n < most; n *= 4) counts.push_back(n);
    std::sort(counts.begin(), counts.end());
    counts.erase(std::unique(counts.begin(), counts.end()), counts.end());
    for (size_t count : counts) {
      for (const QsgdKernels& k : configs) {
        KernelCosts costs;
        if (count && timeQsgdKernels(0, stream, x, dt, count, k, &costs))
          (*table)[KernelKey{(int)t, count, k}] = costs;
      }
    }
    for (size_t size : sizeList(o)) {
      const size_t count = size / dtypeSize(dt);
      // The sparse rows' costs (Rank::sparseKernelTimes), at the counts of
      // every type's rows; the dense fallback's rows use the copy alone.
      for (const gradcompConfig_t& cfg : sparseConfigs) {
        const bool noSelect = cfg.method == gradcompMethodRandk;
        const SparseKey key = sparseKeyOf(count, cfg, noSelect);
        KernelCosts costs;
        if (count == 0 || sparse->count(key) ||
            !timeSparseKernels(0, stream, count, cfg, noSelect, &costs))
          continue;
        (*sparse)[key] = costs;
        costs.select = 0;
        sparse->emplace(sparseKeyOf(count, cfg, true), costs);
      }
    }
  }
  BENCH_CUDA(cudaStreamSynchronize(stream));
  cudaFree(x);
  cudaStreamDestroy(stream);
}

class CudaRank : public Rank {
 public:
  // told: GC_PERF_GPUS (perfGpus), 0 when unset.
  CudaRank(int rank, int nranks, int device, bool shared, int gpus, int told,
           const ncclUniqueId& id)
      : device_(device), shared_(shared), gpus_(gpus), told_(told) {
    rank_ = rank;
    nranks_ = nranks;
    BENCH_CUDA(cudaSetDevice(device_));
    BENCH_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    BENCH_NCCL(ncclCommInitRank(&nccl_, nranks_, id, rank_));
    BENCH_CUDA(cudaMalloc(&scratch_, 64 * sizeof(double)));
    cudaDeviceProp prop;
    BENCH_CUDA(cudaGetDeviceProperties(&prop, device_));
    name_ = prop.name;
  }
  ~CudaRank() override {
    cudaStreamSynchronize(stream_);
    cudaFree(send_);
    cudaFree(recv_);
    cudaFree(scratch_);
    cudaFree(bucketMax_);
    ncclCommDestroy(nccl_);
    cudaStreamDestroy(stream_);
  }

  bool onDevice() const override { return true; }
  bool representative() const override { return !shared_; }
  std::string describe() const override {
    // Ranks a launcher started each see their own host and cannot tell that
    // they share a GPU (tools/tc_link.sh's, one per network namespace):
    // GC_PERF_GPUS, when set, is how many GPUs they run on (perfGpus).
    const bool told = !shared_ && told_ >= 1 && told_ < nranks_;
    const int used = shared_ ? 1 : told ? told_ : nranks_;
    char b[256];
    snprintf(b, sizeof b, "%d ranks (processes) on %d GPU%s: %s%s", nranks_, used,
             used == 1 ? "" : "s", name_.c_str(),
             shared_ ? " (shared; NCCL socket transport over loopback)"
             : told  ? " (shared by ranks a launcher started, GC_PERF_GPUS)"
                     : "");
    (void)gpus_;
    return b;
  }
  std::string baselineName() const override {
    int v = 0;
    ncclGetVersion(&v);
    return "ncclAllReduce / ncclReduceScatter (NCCL " + std::to_string(v) +
           ") on the same buffers and stream";
  }

  void allocBuffers(size_t sendBytes, size_t recvBytes) override {
    BENCH_CUDA(cudaMalloc(&send_, sendBytes ? sendBytes : 1));
    BENCH_CUDA(cudaMalloc(&recv_, recvBytes ? recvBytes : 1));
  }
  void fill(void* buf, gc::DType t, size_t count, uint64_t seed) override {
    BENCH_CUDA(fillDevice(buf, t, count, seed, rank_, stream_));
  }
  void poison(void* buf, size_t bytes) override {
    BENCH_CUDA(cudaMemsetAsync(buf, 0xff, bytes, stream_));
  }
  void poke(void* buf, gc::DType t, size_t i, float v) override {
    BENCH_CUDA(pokeDevice(buf, t, i, v, stream_));
  }

  // Every rank's inputs are a function of the rank: computed here, no exchange.
  const float* bucketMax(gc::DType t, size_t count, int bucket, uint64_t seed) override {
    const size_t nb = (count + bucket - 1) / bucket;
    const size_t bytes = nb * nranks_ * sizeof(float);
    if (bytes > bucketMaxBytes_) {
      cudaFree(bucketMax_);
      BENCH_CUDA(cudaMalloc(&bucketMax_, bytes));
      bucketMaxBytes_ = bytes;
    }
    for (int r = 0; r < nranks_; ++r)
      BENCH_CUDA(bucketMaxDevice(bucketMax_ + nb * r, t, count, bucket, seed, r, stream_));
    return bucketMax_;
  }
  CheckTotals check(const CheckParams& p, const float* bm, const void* got, size_t count) override {
    CheckTotals t;
    BENCH_CUDA(checkDevice(p, bm, got, count, &t, stream_));
    return t;
  }

  bool baseline(const void* send, void* recv, size_t count, ncclDataType_t t,
                ncclRedOp_t op) override {
    return ncclOk(ncclAllReduce(send, recv, count, t, op, nccl_, stream_), "ncclAllReduce");
  }

  bool baselineReduceScatter(const void* send, void* recv, size_t recvCount, ncclDataType_t t,
                             ncclRedOp_t op) override {
    return ncclOk(ncclReduceScatter(send, recv, recvCount, t, op, nccl_, stream_),
                  "ncclReduceScatter");
  }
  cudaStream_t stream() const override { return stream_; }

  gradcompResult_t createComm(const gradcompConfig_t& cfg, gradcompComm_t* comm) override {
    return gradcompCommCreate(nccl_, &cfg, comm);
  }
  void destroyComm(gradcompComm_t comm) override {
    BENCH_CUDA(cudaStreamSynchronize(stream_));
    gradcompCommDestroy(comm);
  }
  gradcompResult_t allReduce(gradcompComm_t comm, const void* send, void* recv, size_t count,
                             ncclDataType_t t, ncclRedOp_t op) override {
    return gradcompAllReduce(send, recv, count, t, op, comm, stream_);
  }

  void sync() override { BENCH_CUDA(cudaStreamSynchronize(stream_)); }
  void toHost(const void* buf, void* host, size_t bytes) override {
    sync();
    BENCH_CUDA(cudaMemcpy(host, buf, bytes, cudaMemcpyDeviceToHost));
  }
  // The result copied to the host once the stream is idle: the report's
  // identical column on the GPU too.
  bool resultHash(const void* buf, size_t bytes, double* hash) override {
    std::vector<unsigned char> host(bytes);
    sync();
    BENCH_CUDA(cudaMemcpy(host.data(), buf, bytes, cudaMemcpyDeviceToHost));
    *hash = hashBytes(host.data(), bytes);
    return true;
  }
  void barrier() override {
    double v = 0;
    reduce(&v, 1, false);
  }
  void reduce(double* v, int n, bool max) override {
    for (int k = 0; k < n; k += 64) {
      const int m = n - k < 64 ? n - k : 64;
      BENCH_CUDA(
          cudaMemcpyAsync(scratch_, v + k, m * sizeof(double), cudaMemcpyHostToDevice, stream_));
      BENCH_NCCL(ncclAllReduce(scratch_, scratch_, m, ncclFloat64, max ? ncclMax : ncclSum, nccl_,
                               stream_));
      BENCH_CUDA(
          cudaMemcpyAsync(v + k, scratch_, m * sizeof(double), cudaMemcpyDeviceToHost, stream_));
      BENCH_CUDA(cudaStreamSynchronize(stream_));
    }
  }

  bool qsgdKernelTimes(gc::DType t, size_t count, const QsgdKernels& k,
                       KernelCosts* costs) override {
    if (kernels_) {
      auto it = kernels_->find(KernelKey{(int)t, count, k});
      if (it != kernels_->end()) {
        *costs = it->second;
        return true;
      }
    }
    return timeQsgdKernels(rank_, stream_, send_, toNccl(t), count, k, costs);
  }
  bool qsgdKernelCurve(gc::DType t, size_t count, const QsgdKernels& k,
                       KernelCurve* curve) override {
    if (!Rank::qsgdKernelCurve(t, count, k, curve)) return false;  // count's point
    if (kernels_) {
      for (const auto& e : *kernels_) {
        if (std::get<0>(e.first) == (int)t && !(std::get<2>(e.first) < k) &&
            !(k < std::get<2>(e.first)))
          curve->add((double)std::get<1>(e.first), e.second);
      }
    }
    return true;
  }
  bool sparseKernelTimes(size_t count, const gradcompConfig_t& cfg, bool noSelect,
                         KernelCosts* costs) override {
    if (sparseKernels_) {
      auto it = sparseKernels_->find(sparseKeyOf(count, cfg, noSelect));
      if (it != sparseKernels_->end()) {
        *costs = it->second;
        return true;
      }
    }
    return timeSparseKernels(rank_, stream_, count, cfg, noSelect, costs);
  }
  // Kernel times measured before the other ranks started any GPU work.
  void setKernelTable(const KernelTable* table, const SparseTable* sparse) {
    kernels_ = table;
    sparseKernels_ = sparse;
  }

 private:
  // The baselines' NCCL result, an error said with the call's name.
  bool ncclOk(ncclResult_t res, const char* call) const {
    if (res != ncclSuccess)
      fprintf(stderr, "gradcomp_perf: rank %d: %s: %s\n", rank_, call, ncclGetErrorString(res));
    return res == ncclSuccess;
  }

  const KernelTable* kernels_ = nullptr;
  const SparseTable* sparseKernels_ = nullptr;
  int device_;
  bool shared_;
  int gpus_;
  int told_;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  ncclComm_t nccl_ = nullptr;
  double* scratch_ = nullptr;
  float* bucketMax_ = nullptr;
  size_t bucketMaxBytes_ = 0;
};

// Ranks that share one GPU: NCCL refuses two ranks of one host on one GPU; a
// distinct host id per process lifts that and forces the socket transport.
void setSharedGpuEnv(int rank) {
  char host[64];
  snprintf(host, sizeof host, "gradcomp-perf-host-%d", rank);
  setenv("NCCL_HOSTID", host, 1);
  setenv("NCCL_NET", "Socket", 1);
  setenv("NCCL_SOCKET_IFNAME", "lo", 1);
  setenv("NCCL_IB_DISABLE", "1", 1);
  setenv("NCCL_P2P_DISABLE", "1", 1);
  setenv("NCCL_SHM_DISABLE", "1", 1);
  setenv("NCCL_NVLS_ENABLE", "0", 1);
}

bool readFull(int fd, void* buf, size_t n) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t k = read(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= (size_t)k;
  }
  return true;
}

bool writeFull(int fd, const void* buf, size_t n) {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t k = write(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= (size_t)k;
  }
  return true;
}

// GC_PERF_GPUS: how many GPUs the nranks ranks run on, for ranks that cannot
// tell (a launcher's, each seeing only its own host: tools/tc_link.sh's), as
// a plain decimal in 1..nranks; 0 when unset; -1, with a sentence naming the
// value and the range, when set to anything else (atoi read "abc" and ""
// as unset, "2x" as 2).
int perfGpus(int nranks) {
  const char* v = getenv("GC_PERF_GPUS");
  if (v == nullptr) return 0;
  char why[64];
  snprintf(why, sizeof why, " (the GPUs the %d ranks run on)", nranks);
  int gpus = 0;
  return envInt("GC_PERF_GPUS", v, 1, nranks, why, &gpus) ? gpus : -1;
}

// The body of one rank process. idPipe: rank 0 writes N-1 copies of its
// ncclUniqueId, the others read one each; -1 when NCCL_COMM_ID serves instead.
// told: perfGpus.
int rankMain(const Options& o, int rank, int nranks, int localRank, int localRanks, int told,
             const int idPipe[2]) {
  const int rank_ = rank;  // for BENCH_* in this function
  int gpus = 0;
  cudaError_t err = cudaGetDeviceCount(&gpus);
  if (err != cudaSuccess || gpus == 0) {
    fprintf(stderr, "gradcomp_perf: rank %d: no usable GPU (%s); use --backend cpu\n", rank,
            err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return 3;
  }
  const bool shared = localRanks > gpus;
  // Loopback only joins the ranks of one host.
  if (shared && localRanks == nranks) setSharedGpuEnv(rank);
  ncclUniqueId id;
  KernelTable kernels;
  SparseTable sparseKernels;
  // Rank 0 measures before NCCL starts. Forked ranks wait for the id it passes on;
  // ranks a launcher started (tools/tc_link.sh's share one GPU, each seeing itself alone
  // on its host) wait in NCCL's connect to the bootstrap root its ncclCommInitRank makes.
  // Either way no other rank has a kernel on the GPU meanwhile.
  if (rank == 0 && (shared || o.linkGiven))
    measureKernelTable(o, localRank % gpus, &kernels, &sparseKernels);
  if (idPipe == nullptr) {
    BENCH_NCCL(ncclGetUniqueId(&id));  // from NCCL_COMM_ID: the same on every rank
  } else if (rank == 0) {
    BENCH_NCCL(ncclGetUniqueId(&id));
    for (int r = 1; r < nranks; ++r)
      if (!writeFull(idPipe[1], &id, sizeof id)) fatal(rank, "cannot pass the NCCL id on");
    close(idPipe[1]);
  } else if (!readFull(idPipe[0], &id, sizeof id)) {
    fatal(rank, "rank 0 ended before passing the NCCL id on");
  }
  if (idPipe) close(idPipe[0]);
  CudaRank r(rank, nranks, localRank % gpus, shared, gpus, told, id);
  r.setKernelTable(&kernels, &sparseKernels);
  return runHarness(o, r);
}

double monotonicSeconds() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

}  // namespace

int probeGpuCount() {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int n = 0;
    _exit(cudaGetDeviceCount(&n) == cudaSuccess ? (n > 100 ? 100 : n) : 101);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) > 100) return -1;
  return WEXITSTATUS(status);
}

int runCuda(const Options& o) {
  int rank, size, localRank, localSize;
  const int launched = launcherRank(&rank, &size, &localRank, &localSize);
  if (launched < 0) return 2;
  if (launched > 0) {
    if (o.nranks != 0 && o.nranks != size) {
      fprintf(stderr, "gradcomp_perf: -N %d but the launcher started %d ranks\n", o.nranks, size);
      return 2;
    }
    if (size > 1 && !getenv("NCCL_COMM_ID")) {
      fprintf(stderr,
              "gradcomp_perf: under mpirun/srun set NCCL_COMM_ID=<host of rank 0>:<free "
              "port> so that every rank finds NCCL's bootstrap root\n");
      return 2;
    }
    const int told = perfGpus(size);
    if (told < 0) return 2;
    Options mine = o;
    mine.nranks = size;
    return rankMain(mine, rank, size, localRank, localSize, told, nullptr);
  }
  const int n = o.nranks;
  const int told = perfGpus(n);
  if (told < 0) return 2;
  int idPipe[2];
  if (pipe(idPipe) != 0) {
    perror("gradcomp_perf: pipe");
    return 3;
  }
  if (n == 1) {
    close(idPipe[0]);
    close(idPipe[1]);
    const int rank_ = 0;
    ncclUniqueId id;
    int gpus = 0;
    if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus == 0) {
      fprintf(stderr, "gradcomp_perf: no usable GPU; use --backend cpu\n");
      return 3;
    }
    BENCH_NCCL(ncclGetUniqueId(&id));
    CudaRank r(0, 1, 0, false, gpus, told, id);
    return runHarness(o, r);
  }
  fflush(stdout);
  fflush(stderr);
  std::vector<pid_t> pids;
  for (int r = 0; r < n; ++r) {
    pid_t pid = fork();
    if (pid < 0) {
      perror("gradcomp_perf: fork");
      for (pid_t p : pids) kill(p, SIGKILL);
      return 3;
    }
    if (pid == 0) {
      // Only rank 0 writes the id; everyone else must see EOF if it dies.
      if (r != 0) close(idPipe[1]);
      int code = rankMain(o, r, n, r, n, told, idPipe);
      fflush(stdout);
      fflush(stderr);
      _exit(code);
    }
    pids.push_back(pid);
  }
  close(idPipe[0]);
  close(idPipe[1]);
  // Wait for all; once one fails, give the rest a grace period (they may be
  // stuck in a collective with it), then end them.
  int code = 0, alive = n;
  double failedAt = -1;
  std::vector<bool> done(n, false);
  while (alive > 0) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, failedAt < 0 ? 0 : WNOHANG);
    if (pid > 0) {
      for (int r = 0; r < n; ++r) {
        if (pids[r] != pid) continue;
        done[r] = true;
        --alive;
        const int c = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (c != 0 && code == 0) {
          fprintf(stderr, "gradcomp_perf: rank %d ended with status %d\n", r, c);
          failedAt = monotonicSeconds();
        }
        code = c > code ? c : code;
      }
    } else if (pid < 0 && errno != EINTR) {
      break;
    } else if (failedAt >= 0) {
      if (monotonicSeconds() - failedAt > 60) {
        for (int r = 0; r < n; ++r)
          if (!done[r]) kill(pids[r], SIGKILL);
        failedAt = 1e300;  // killed: now wait without a deadline
      }
      usleep(100000);
    }
  }
  return code;
}

}  // namespace gcbench
