// CPU backend: each rank is a thread of one process; gradcomp runs its host
// reference codecs over an in-process transport. The NCCL column is an exact
// host sum (reduce-scatter then allgather through shared memory).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "backends.h"
#include "harness.h"
#include "rank_host.h"

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

class CpuRank : public HostRank {
 public:
  CpuRank(CpuWorld* w, int rank) : w_(w) {
    rank_ = rank;
    nranks_ = w->n;
  }

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
    HostRank::allocBuffers(sendBytes, recvBytes);
    w_->send[rank_] = send_;
    w_->recv[rank_] = recv_;
    barrier();
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

 private:
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

bool timeInProcess(const Options& o, const gradcompConfig_t& cfg, ncclDataType_t t, size_t count,
                   double* gradcompUs, double* baselineUs) {
  const int n = o.nranks;
  const bool rs = o.collective == Collective::ReduceScatter;
  const size_t tsize = dtypeSize(t);
  const gc::DType dt =
      t == ncclFloat16 ? gc::DType::F16 : (t == ncclBfloat16 ? gc::DType::BF16 : gc::DType::F32);
  CpuWorld world(n);
  std::vector<double> gUs(n, 0), bUs(n, 0);
  std::vector<int> ok(n, 1);
  std::vector<std::thread> threads;
  for (int q = 0; q < n; ++q) {
    threads.emplace_back([&, q] {
      CpuRank r(&world, q);
      const size_t sendCount = rs ? count * n : count;
      r.allocBuffers(sendCount * tsize, count * tsize);
      r.fill(r.send(), dt, sendCount, o.seed);
      // As the harness times: warm-up, the ranks lined up, the calls.
      auto timed = [&](auto&& call) {
        for (int i = 0; i < o.warmup; ++i) ok[q] &= call() ? 1 : 0;
        r.barrier();
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < o.iters; ++i) ok[q] &= call() ? 1 : 0;
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
               o.iters * 1e6;
      };
      bUs[q] = timed([&] {
        return rs ? r.baselineReduceScatter(r.send(), r.recv(), count, t, o.op)
                  : r.baseline(r.send(), r.recv(), count, t, o.op);
      });
      gradcompComm_t comm = nullptr;
      if (r.createComm(cfg, &comm) != gradcompSuccess) {
        ok[q] = 0;
        return;
      }
      gUs[q] = timed([&] {
        const gradcompResult_t res = rs ? r.reduceScatter(comm, r.send(), r.recv(), count, t, o.op)
                                        : r.allReduce(comm, r.send(), r.recv(), count, t, o.op);
        return res == gradcompSuccess;
      });
      r.barrier();
      r.destroyComm(comm);
    });
  }
  for (auto& th : threads) th.join();
  *gradcompUs = *baselineUs = 0;
  for (int q = 0; q < n; ++q) {
    if (!ok[q]) return false;
    *gradcompUs = std::max(*gradcompUs, gUs[q]);
    *baselineUs = std::max(*baselineUs, bUs[q]);
  }
  return true;
}

}  // namespace gcbench
