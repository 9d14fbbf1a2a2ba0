// CPU backend: each rank is a thread of one process; gradcomp runs its host
// reference codecs over an in-process transport. The NCCL column is an exact
// host sum (reduce-scatter then allgather through shared memory).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "backends.h"
#include "data_ops.h"
#include "gradcomp/reference.h"
#include "harness.h"

namespace gcbench {

namespace {

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const unsigned long gen = gen_;
    if (++waiting_ == n_) {
      waiting_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen != gen_; });
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_, waiting_ = 0;
  unsigned long gen_ = 0;
};

struct CpuWorld {
  explicit CpuWorld(int n) : n(n), barrier(n), send(n), recv(n), slots(n * kSlots), comms(n) {}
  static constexpr int kSlots = 8;
  int n;
  Barrier barrier;
  std::vector<void*> send, recv;
  std::vector<double> slots;
  std::vector<gradcompComm_t> comms;
  gradcompResult_t createResult = gradcompSuccess;
  std::vector<float> bucketMax;
};

class CpuRank : public Rank {
 public:
  CpuRank(CpuWorld* w, int rank) : w_(w) {
    rank_ = rank;
    nranks_ = w->n;
  }
  ~CpuRank() override {
    free(send_);
    free(recv_);
  }

  bool onDevice() const override { return false; }
  bool representative() const override { return false; }
  std::string describe() const override {
    return std::to_string(nranks_) + " ranks as threads of one process (" +
           std::to_string(std::thread::hardware_concurrency()) + " CPU cores)";
  }
  std::string baselineName() const override {
    return "no NCCL on the CPU backend: an exact host sum (reduce-scatter + allgather through "
           "shared memory, fp32 accumulation) stands in for ncclAllReduce, its reduce-scatter "
           "half for ncclReduceScatter";
  }

  void allocBuffers(size_t sendBytes, size_t recvBytes) override {
    send_ = malloc(sendBytes ? sendBytes : 1);
    recv_ = malloc(recvBytes ? recvBytes : 1);
    if (!send_ || !recv_)
      fatal(rank_, "out of host memory for %zu + %zu bytes", sendBytes, recvBytes);
    w_->send[rank_] = send_;
    w_->recv[rank_] = recv_;
    barrier();
  }
  void fill(void* buf, gc::DType t, size_t count, uint64_t seed) override {
    fillHost(buf, t, count, seed, rank_);
  }
  void poison(void* buf, size_t bytes) override { memset(buf, 0xff, bytes); }
  void poke(void* buf, gc::DType t, size_t i, float v) override {
    gc::storeFromFloat(buf, t, i, v);
  }

  const float* bucketMax(gc::DType t, size_t count, int bucket, uint64_t seed) override {
    const size_t nb = (count + bucket - 1) / bucket;
    barrier();
    if (rank_ == 0) w_->bucketMax.assign(nb * nranks_, 0.0f);
    barrier();
    // Each rank fills in its own input's maxima.
    bucketMaxHost(w_->bucketMax.data() + nb * rank_, t, count, bucket, seed, rank_);
    barrier();
    return w_->bucketMax.data();
  }
  CheckTotals check(const CheckParams& p, const float* bm, const void* got, size_t count) override {
    return checkHost(p, bm, got, count);
  }

  bool baseline(const void* send, void* recv, size_t count, ncclDataType_t t,
                ncclRedOp_t op) override {
    const gc::DType dt =
        t == ncclFloat16 ? gc::DType::F16 : (t == ncclBfloat16 ? gc::DType::BF16 : gc::DType::F32);
    const size_t lo = count * rank_ / nranks_, hi = count * (rank_ + 1) / nranks_;
    const size_t tsize = gc::dtypeBytes(dt);
    barrier();
    for (size_t i = lo; i < hi; ++i) {
      float acc = 0;
      for (int q = 0; q < nranks_; ++q) acc += gc::loadAsFloat(w_->send[q], dt, i);
      if (op == ncclAvg) acc /= nranks_;
      gc::storeFromFloat(recv, dt, i, acc);
    }
    barrier();
    for (int q = 0; q < nranks_; ++q) {
      if (q == rank_) continue;
      const size_t qlo = count * q / nranks_, qhi = count * (q + 1) / nranks_;
      memcpy((char*)recv + qlo * tsize, (const char*)w_->recv[q] + qlo * tsize,
             (qhi - qlo) * tsize);
    }
    barrier();
    (void)send;
    return true;
  }

  // Block r of the exact sum, fp32 accumulation in rank order.
  bool baselineReduceScatter(const void* send, void* recv, size_t recvCount, ncclDataType_t t,
                             ncclRedOp_t op) override {
    const gc::DType dt =
        t == ncclFloat16 ? gc::DType::F16 : (t == ncclBfloat16 ? gc::DType::BF16 : gc::DType::F32);
    barrier();
    for (size_t i = 0; i < recvCount; ++i) {
      float acc = 0;
      for (int q = 0; q < nranks_; ++q)
        acc += gc::loadAsFloat(w_->send[q], dt, rank_ * recvCount + i);
      if (op == ncclAvg) acc /= nranks_;
      gc::storeFromFloat(recv, dt, i, acc);
    }
    barrier();
    (void)send;
    return true;
  }

  gradcompResult_t createComm(const gradcompConfig_t& cfg, gradcompComm_t* comm) override {
    barrier();
    if (rank_ == 0) w_->createResult = gradcompCommCreateCpu(nranks_, &cfg, w_->comms.data());
    barrier();
    *comm = w_->comms[rank_];
    return w_->createResult;
  }
  void destroyComm(gradcompComm_t comm) override { gradcompCommDestroy(comm); }
  gradcompResult_t allReduce(gradcompComm_t comm, const void* send, void* recv, size_t count,
                             ncclDataType_t t, ncclRedOp_t op) override {
    return gradcompAllReduce(send, recv, count, t, op, comm, nullptr);
  }

  void sync() override {}
  void barrier() override { w_->barrier.wait(); }
  void reduce(double* v, int n, bool max) override {
    for (int k = 0; k < n; k += CpuWorld::kSlots) {
      const int m = n - k < CpuWorld::kSlots ? n - k : CpuWorld::kSlots;
      for (int j = 0; j < m; ++j) w_->slots[rank_ * CpuWorld::kSlots + j] = v[k + j];
      barrier();
      for (int j = 0; j < m; ++j) {
        double a = w_->slots[j];
        for (int q = 1; q < nranks_; ++q) {
          const double b = w_->slots[q * CpuWorld::kSlots + j];
          a = max ? maxKeepNan(a, b) : a + b;
        }
        v[k + j] = a;
      }
      barrier();
    }
  }

  bool qsgdKernelTimes(gc::DType t, size_t count, int bits, int bucket, double* encUs,
                       double* decUs) override {
    std::vector<unsigned char> enc(gradcompQsgdEncodedBytes(count, bits, bucket));
    std::vector<float> residual(count, 0.0f), out(count, 0.0f);
    auto seconds = [] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
          .count();
    };
    // Repeat until 50 ms have passed so that small sizes are timed too.
    int reps = 0;
    double t0 = seconds(), t1 = t0;
    do {
      if (gradcompQsgdEncodeTypedHost(send_, ncclTypeOf(t), residual.data(), count, bits, bucket,
                                      7 + reps, enc.data()) != gradcompSuccess)
        return false;
      ++reps;
      t1 = seconds();
    } while (t1 - t0 < 0.05);
    *encUs = (t1 - t0) / reps * 1e6;
    reps = 0;
    t0 = t1 = seconds();
    do {
      if (gradcompQsgdDecodeHost(enc.data(), count, bits, bucket, out.data(), 1) != gradcompSuccess)
        return false;
      ++reps;
      t1 = seconds();
    } while (t1 - t0 < 0.05);
    *decUs = (t1 - t0) / reps * 1e6;
    return true;
  }

 private:
  static ncclDataType_t ncclTypeOf(gc::DType t) {
    return t == gc::DType::F16 ? ncclFloat16 : (t == gc::DType::BF16 ? ncclBfloat16 : ncclFloat32);
  }
  CpuWorld* w_;
};

}  // namespace

int runCpu(const Options& o) {
  CpuWorld world(o.nranks);
  std::vector<int> codes(o.nranks, 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < o.nranks; ++r) {
    threads.emplace_back([&, r] {
      CpuRank rank(&world, r);
      codes[r] = runHarness(o, rank);
    });
  }
  for (auto& t : threads) t.join();
  int code = 0;
  for (int c : codes) code = c > code ? c : code;
  return code;
}

}  // namespace gcbench
