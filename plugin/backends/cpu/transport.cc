// In-process transport: each rank is a thread of one world; collectives meet
// at a barrier and copy host memory. Deterministic by construction (rank
// order). A rank that never arrives makes the others fail after a timeout
// rather than hang; one whose comm was destroyed (or aborted) is known to be
// gone, so the others fail at once.
#include <string.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <new>
#include <type_traits>
#include <vector>

#include "kernels/common_math.cuh"
#include "checks.h"
#include "backends/cpu/host_collective.h"
#include "backends/transport.h"
#include "backends/cpu/host_reduce.h"

namespace gc {
namespace {

struct Slot {
  const void* const* sendv = nullptr;
  const size_t* sendBytesv = nullptr;
  const void* send = nullptr;
  size_t bytes = 0;
  int to = -1;
  uint32_t op = 0;                            // which collective this rank entered (HostCollective)
  uint64_t check = 0;                         // its size, which every rank must agree on
  CallInfo call;                              // the gradcompAllReduce it belongs to
  gradcompResult_t status = gradcompSuccess;  // this rank's outcome of the data phase
};

struct CpuWorld {
  CpuWorld(int n, double timeoutSec, std::vector<int> wholeRanks)
      : nranks(n), timeoutSec(timeoutSec), wholeRanks(std::move(wholeRanks)), slots(n) {}
  int nranks;
  double timeoutSec;
  // A hierarchy's node or inter-node sub-world: each of its ranks' rank in
  // the whole world, the one a destroy names (empty: the whole world).
  std::vector<int> wholeRanks;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t generation = 0;
  // The ranks present when the first rank of a generation timed out: every
  // rank that times out in it reports this one count (each withdrawal lowers
  // arrived, so each rank's own count would differ).
  uint64_t timedOutGen = ~0ull;
  int timedOutPresent = 0;
  // A rank aborted its comm, or destroyed it: every wait of the world fails.
  bool aborted = false;
  // The rank (of the whole world) whose destroy closed it; -1: an abort did.
  int goneRank = -1;
  bool closedAborted = false;  // closingBarrier's answer, taken when the last rank came
  std::vector<Slot> slots;
  // A hierarchy's node and inter-node sub-worlds (splitCpuWorld): an abort
  // of this world aborts them too, so that a rank of another node waiting in
  // its node's sub-world for a peer the abort made leave fails at once
  // instead of after timeoutSec.
  std::vector<std::weak_ptr<CpuWorld>> subWorlds;

  // A rank aborted its comm: every wait of the world and of its sub-worlds
  // fails, in progress or later, as a rank of another node may wait in its
  // node's sub-world for a peer the abort made leave.
  void abort() {
    std::vector<std::weak_ptr<CpuWorld>> subs;
    {
      std::lock_guard<std::mutex> lock(mu);
      close(-1);
      subs = subWorlds;
    }
    for (auto& w : subs) {
      if (auto s = w.lock()) s->abort();
    }
  }

  // Rank `rank` of this world was destroyed: every wait of this world fails,
  // in progress or later, where its peers would otherwise wait out
  // timeoutSec for a rank that cannot come. Only the worlds the rank is in
  // (the whole world, its node's, its inter-node one: each transport of it
  // leaves its own): another node's ranks may still be in the end of a call
  // the destroyed rank has finished, which they finish. A world stays
  // allocated for the transports still holding it.
  void leave(int rank) {
    std::lock_guard<std::mutex> lock(mu);
    close(wholeRanks.empty() ? rank : wholeRanks[rank]);
  }

  // Under mu. The first cause is the one every rank names (gone = -1: an
  // abort).
  void close(int gone) {
    if (!aborted) goneRank = gone;
    aborted = true;
    cv.notify_all();
  }

  // Under mu.
  gradcompResult_t abortedError() {
    if (goneRank >= 0) {
      return setError(gradcompSystemError,
                      "CPU transport: rank %d of this in-process world was destroyed "
                      "(gradcompCommDestroy); every collective of the world fails from now on: "
                      "destroy the other comms of the world and create a new one",
                      goneRank);
    }
    return setError(gradcompSystemError,
                    "CPU transport: a rank of this world aborted its comm (gradcompCommAbort); "
                    "every collective of the world fails");
  }

  // The opening barrier of `op` (HostCollective) with its check, which a
  // timeout names.
  gradcompResult_t barrier(uint32_t op, uint64_t check) {
    std::unique_lock<std::mutex> lock(mu);
    if (aborted) return abortedError();
    const uint64_t gen = generation;
    if (++arrived == nranks) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return gradcompSuccess;
    }
    const auto timeout = std::chrono::duration<double>(timeoutSec);
    const bool released = cv.wait_for(lock, timeout, [&] { return generation != gen || aborted; });
    if (released && generation == gen) {
      --arrived;
      return abortedError();
    }
    if (!released) {
      // Withdraw, so the next collective counts only the ranks that are in it.
      if (timedOutGen != gen) timedOutGen = gen, timedOutPresent = arrived;
      const int present = timedOutPresent;
      --arrived;
      char waited[96];
      hostCollectiveText(waited, sizeof waited, op, check);
      return setError(
          gradcompSystemError,
          "CPU transport: %d of %d ranks reached a collective within %g s "
          "(cpuTimeoutSec, GRADCOMP_CPU_TIMEOUT); this rank waited in the %s; every rank "
          "must make the same calls",
          present, nranks, timeoutSec, waited);
    }
    return gradcompSuccess;
  }
  // The barrier that ends a collective's data phase. Every rank that passed
  // the opening barrier reaches it, since the data phase waits on nobody, so
  // it waits for all of them whatever the timeout or an abort says: a rank
  // that left early would let its caller free (or refill) the memory its
  // peers are still copying from. An abort still fails the collective, once
  // everyone has left the data phase.
  gradcompResult_t closingBarrier() {
    std::unique_lock<std::mutex> lock(mu);
    const uint64_t gen = generation;
    if (++arrived == nranks) {
      arrived = 0;
      ++generation;
      closedAborted = aborted;  // one answer for every rank
      cv.notify_all();
    } else {
      cv.wait(lock, [&] { return generation != gen; });
    }
    // Not overwritten before every rank read it: the next closing barrier
    // completes only once this one's ranks reach it.
    return closedAborted ? abortedError() : gradcompSuccess;
  }
};

template <typename T>
T loadT(const void* p, size_t i) {
  T v;
  memcpy(&v, static_cast<const char*>(p) + i * sizeof(T), sizeof(T));
  return v;
}

// Integer Sum and Prod wrap around as NCCL's do: computed in the unsigned
// type, where overflow is defined.
template <typename T>
T wrapAdd(T a, T b) {
  if constexpr (std::is_integral<T>::value) {
    using U = typename std::make_unsigned<T>::type;
    return (T)(U)((U)a + (U)b);
  } else {
    return a + b;
  }
}
template <typename T>
T wrapMul(T a, T b) {
  if constexpr (std::is_integral<T>::value) {
    using U = typename std::make_unsigned<T>::type;
    // Promote past int so that the product of two uint16/uint8 stays unsigned.
    using W = typename std::conditional<(sizeof(U) < sizeof(unsigned)), unsigned, U>::type;
    return (T)(U)((W)(U)a * (W)(U)b);
  } else {
    return a * b;
  }
}

// ncclAvg of an integer type: the wrapped sum divided by the rank count itself,
// as NCCL's SumPostDiv does; (T)n would wrap for the 8-bit types (a divisor of
// 0 at 256 ranks, 44 at 300). Floating types take NCCL's PreMulSum instead
// (avgScalar).
template <typename T>
T averageOf(T sum, int n) {
  using W = typename std::conditional<std::is_signed<T>::value, int64_t, uint64_t>::type;
  return (T)((W)sum / (W)n);
}

// ncclAvg of a floating type is NCCL's PreMulSum: every input is multiplied by
// 1/n, rounded to the buffer's type (NCCL's float(1.0/nRanks), then converted),
// and the products are summed. So an fp16 average whose sum would pass 65504
// stays finite, and every product is rounded as NCCL's (the sum's order is
// rank order here, NCCL's ring or tree order there).
inline float avgScalar(int n) {
  return (float)(1.0 / n);
}

template <typename T>
void reduceTyped(const std::vector<const void*>& src, void* dst, size_t count, ncclRedOp_t op,
                 int n) {
  constexpr bool kFloating = std::is_floating_point<T>::value;
  const bool preMul = kFloating && op == ncclAvg;
  const T scalar = preMul ? (std::is_same<T, double>::value ? (T)(1.0 / n) : (T)avgScalar(n)) : 1;
  for (size_t i = 0; i < count; ++i) {
    T acc = loadT<T>(src[0], i);
    if (preMul) acc = acc * scalar;
    for (int r = 1; r < n; ++r) {
      T v = loadT<T>(src[r], i);
      if (preMul) v = v * scalar;
      switch (op) {
        case ncclProd:
          acc = wrapMul(acc, v);
          break;
        case ncclMax:
          acc = v > acc ? v : acc;
          break;
        case ncclMin:
          acc = v < acc ? v : acc;
          break;
        default:
          acc = wrapAdd(acc, v);
          break;
      }
    }
    if constexpr (!kFloating) {
      if (op == ncclAvg) acc = averageOf(acc, n);
    }
    memcpy(static_cast<char*>(dst) + i * sizeof(T), &acc, sizeof(T));
  }
}

// A float rounded to fp16 or bf16 (t), as a float.
float roundTo(DType t, float x) {
  return t == DType::F16 ? halfToFloat(floatToHalf(x)) : bf16ToFloat(floatToBf16(x));
}

void reduceHalf(const std::vector<const void*>& src, void* dst, size_t count, ncclRedOp_t op, int n,
                DType t) {
  const bool preMul = op == ncclAvg;
  const float scalar = roundTo(t, avgScalar(n));  // 1/n in the buffer's type
  for (size_t i = 0; i < count; ++i) {
    float acc = loadAsFloat(src[0], t, i);
    if (preMul) acc = roundTo(t, acc * scalar);  // exact product, rounded once
    for (int r = 1; r < n; ++r) {
      float v = loadAsFloat(src[r], t, i);
      if (preMul) v = roundTo(t, v * scalar);
      switch (op) {
        case ncclProd:
          acc = acc * v;
          break;
        case ncclMax:
          acc = v > acc ? v : acc;
          break;
        case ncclMin:
          acc = v < acc ? v : acc;
          break;
        default:
          acc = acc + v;
          break;
      }
      // NCCL reduces in the buffer's type: round after every step.
      acc = roundTo(t, acc);
    }
    storeFromFloat(dst, t, i, acc);
  }
}

// Element size and reduction of every NCCL type the CPU transport serves
// (esz 0: not served).
struct TypeOps {
  size_t esz = 0;
  void (*reduce)(const std::vector<const void*>& src, void* dst, size_t count, ncclRedOp_t op,
                 int n) = nullptr;
};

TypeOps typeOps(ncclDataType_t type) {
  switch (type) {
    case ncclInt8:
      return {1, reduceTyped<int8_t>};
    case ncclUint8:
      return {1, reduceTyped<uint8_t>};
    case ncclInt32:
      return {4, reduceTyped<int32_t>};
    case ncclUint32:
      return {4, reduceTyped<uint32_t>};
    case ncclInt64:
      return {8, reduceTyped<int64_t>};
    case ncclUint64:
      return {8, reduceTyped<uint64_t>};
    case ncclFloat32:
      return {4, reduceTyped<float>};
    case ncclFloat64:
      return {8, reduceTyped<double>};
    case ncclFloat16:
      return {2, [](const std::vector<const void*>& src, void* dst, size_t count, ncclRedOp_t op,
                    int n) { reduceHalf(src, dst, count, op, n, DType::F16); }};
    case ncclBfloat16:
      return {2, [](const std::vector<const void*>& src, void* dst, size_t count, ncclRedOp_t op,
                    int n) { reduceHalf(src, dst, count, op, n, DType::BF16); }};
    default:
      return {};
  }
}

class CpuTransport final : public Transport {
 public:
  CpuTransport(std::shared_ptr<CpuWorld> world, int rank) : world_(std::move(world)) {
    rank_ = rank;
    size_ = world_->nranks;
  }
  // The comm is destroyed (or aborted, or its set-up failed): its peers in
  // this world stop waiting for it.
  ~CpuTransport() override { world_->leave(rank_); }

  bool checksEveryCall() const override { return true; }  // every collective's slots

  const std::shared_ptr<CpuWorld>& world() const { return world_; }

  void abort() override {
    Transport::abort();
    world_->abort();
  }

  // Enters a collective: every rank must be in the same one with the same
  // size, for the same call. A rank whose calls or per-buffer state diverged
  // (NCCL would hang or corrupt memory) makes all ranks fail together here.
  gradcompResult_t meet(HostCollective op, uint64_t check) {
    Slot& me = world_->slots[rank_];
    me.op = op;
    me.check = check;
    me.call = call_;
    GC_CHECK(world_->barrier(op, check));
    gradcompResult_t res = gradcompSuccess;
    for (int i = 0; i < size_ && res == gradcompSuccess; ++i) {
      const Slot& s = world_->slots[i];
      if (!sameCall(call_, s.call)) {
        res = callMismatch(rank_, call_, i, s.call, size_);
      } else if (s.op != op || s.check != check) {
        char mine[96], theirs[96];
        hostCollectiveText(mine, sizeof mine, op, check);
        hostCollectiveText(theirs, sizeof theirs, s.op, s.check);
        res = setError(gradcompInvalidUsage,
                       "CPU transport: rank %d entered the %s while rank %d entered the %s: the "
                       "ranks' calls or per-buffer state differ",
                       rank_, mine, i, theirs);
      }
    }
    if (res != gradcompSuccess) GC_CHECK(world_->closingBarrier());
    return res;
  }

  // Leaves a collective: a rank that failed in the data phase makes every
  // rank fail, so no rank goes on to a collective the others will not join.
  gradcompResult_t finish(gradcompResult_t res) {
    world_->slots[rank_].status = res;
    GC_CHECK(world_->closingBarrier());
    if (res != gradcompSuccess) return res;
    for (int i = 0; i < size_; ++i) {
      if (world_->slots[i].status != gradcompSuccess) {
        return setError(gradcompInvalidUsage,
                        "CPU transport: rank %d failed in this collective (%s), so rank %d fails "
                        "too",
                        i, gradcompGetErrorString(world_->slots[i].status), rank_);
      }
    }
    return gradcompSuccess;
  }

  // meet() alone: the closing barrier keeps a fast rank from overwriting
  // its slot before the others have compared it.
  gradcompResult_t verifyCall() override {
    GC_CHECK(meet(kHostVerify, 0));
    return finish(gradcompSuccess);
  }

  gradcompResult_t allToAll(const void* const* send, const size_t* sendBytes, void* const* recv,
                            const size_t* recvBytes) override {
    Slot& me = world_->slots[rank_];
    me.sendv = send;
    me.sendBytesv = sendBytes;
    GC_CHECK(meet(kHostAllToAll, 0));
    gradcompResult_t res = gradcompSuccess;
    for (int i = 0; i < size_; ++i) {
      if (i == rank_) continue;
      const Slot& peer = world_->slots[i];
      if (peer.sendBytesv[rank_] != recvBytes[i]) {
        res = setError(gradcompInvalidUsage,
                       "CPU transport: rank %d sends %zu bytes, rank %d expects %zu: the ranks' "
                       "calls (counts) or per-buffer state differ",
                       i, peer.sendBytesv[rank_], rank_, recvBytes[i]);
        continue;
      }
      if (recvBytes[i]) memcpy(recv[i], peer.sendv[rank_], recvBytes[i]);
    }
    return finish(res);
  }

  gradcompResult_t sendRecv(const void* send, size_t sendBytes, int to, void* recv,
                            size_t recvBytes, int from) override {
    Slot& me = world_->slots[rank_];
    me.send = send;
    me.bytes = sendBytes;
    me.to = to;
    GC_CHECK(meet(kHostSendRecv, 0));
    const Slot& peer = world_->slots[from];
    gradcompResult_t res = gradcompSuccess;
    if (peer.to != rank_ || peer.bytes != recvBytes) {
      res = setError(gradcompInvalidUsage,
                     "CPU transport: rank %d sends %zu bytes to %d, rank %d "
                     "expects %zu from it",
                     from, peer.bytes, peer.to, rank_, recvBytes);
    } else if (recvBytes) {
      memcpy(recv, peer.send, recvBytes);
    }
    return finish(res);
  }

  gradcompResult_t allGather(const void* send, void* recv, size_t bytes) override {
    world_->slots[rank_].send = send;
    GC_CHECK(meet(kHostAllGather, bytes));
    for (int i = 0; i < size_; ++i) {
      char* dst = static_cast<char*>(recv) + (size_t)i * bytes;
      if (bytes && dst != world_->slots[i].send) memcpy(dst, world_->slots[i].send, bytes);
    }
    return world_->closingBarrier();
  }

  gradcompResult_t allReduceSumFloat(const float* send, float* recv, size_t n) override {
    world_->slots[rank_].send = send;
    GC_CHECK(meet(kHostSumFloat, n));
    gradcompResult_t res = gradcompSuccess;
    float* sum = nullptr;
    if (n > SIZE_MAX / sizeof(float) || !growOut(n * sizeof(float))) {
      res = setError(gradcompSystemError, "out of host memory allocating %zu floats", n);
    } else {
      sum = reinterpret_cast<float*>(out_.get());
      for (size_t k = 0; k < n; ++k) sum[k] = 0.0f;
      for (int i = 0; i < size_; ++i) {
        const float* src = static_cast<const float*>(world_->slots[i].send);
        for (size_t k = 0; k < n; ++k) sum[k] = fadd(sum[k], src[k]);
      }
    }
    GC_CHECK(finish(res));
    if (n) memcpy(recv, sum, n * sizeof(float));
    return gradcompSuccess;
  }

  gradcompResult_t passThrough(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op) override {
    // The call info carries count, type and op.
    return reduce(kHostPassThrough, 0, send, recv, count, 0, type, op);
  }

  gradcompResult_t reduceScatter(const void* send, void* recv, size_t recvCount,
                                 ncclDataType_t type, ncclRedOp_t op) override {
    // A stage of a call (the hierarchy's): its own size, type and op are checked.
    return reduce(kHostReduceScatter, reduceScatterCheck(recvCount, type, op), send, recv,
                  recvCount, (size_t)rank_ * recvCount, type, op);
  }

 private:
  // Elements [first, first + count) of every rank's send buffer, reduced in
  // rank order into recv (the allreduce, and this rank's reduce-scatter block).
  gradcompResult_t reduce(HostCollective collective, uint64_t check, const void* send, void* recv,
                          size_t count, size_t first, ncclDataType_t type, ncclRedOp_t op) {
    world_->slots[rank_].send = send;
    GC_CHECK(meet(collective, check));
    const size_t esz = hostElementSize(type);
    // The sources and the sum's buffer (allReduceSumFloat's too) are this
    // rank's, kept between calls (a call takes the transport alone): a
    // steady-state call allocates nothing.
    src_.resize(size_);
    for (int i = 0; i < size_; ++i) {
      src_[i] = static_cast<const char*>(world_->slots[i].send) + first * esz;
    }
    gradcompResult_t res = gradcompSuccess;
    if ((res = hostCheckReduction(type, op)) != gradcompSuccess) {
    } else if (count > SIZE_MAX / esz) {
      res = setError(gradcompInvalidArgument,
                     "count=%zu elements of %zu bytes overflow the address space", count, esz);
    } else if (!growOut(count * esz)) {
      res = setError(gradcompSystemError, "out of host memory allocating %zu bytes (count=%zu)",
                     count * esz, count);
    } else {
      hostReduce(type, op, src_, out_.get(), count);
    }
    GC_CHECK(finish(res));
    if (count) memcpy(recv, out_.get(), count * esz);
    return gradcompSuccess;
  }

  // The sum's buffer grown to at least `bytes`; false when memory ran out.
  bool growOut(size_t bytes) {
    if (bytes <= outBytes_) return true;
    out_.reset(new (std::nothrow) char[bytes]);
    outBytes_ = out_ ? bytes : 0;
    return out_ != nullptr;
  }

  std::shared_ptr<CpuWorld> world_;
  std::vector<const void*> src_;
  std::unique_ptr<char[]> out_;
  size_t outBytes_ = 0;
};

}  // namespace

size_t hostElementSize(ncclDataType_t type) {
  return typeOps(type).esz;
}

gradcompResult_t hostCheckReduction(ncclDataType_t type, ncclRedOp_t op) {
  GC_ARG(hostElementSize(type) != 0 && op >= ncclSum && op <= ncclAvg,
         "CPU backend: datatype=%d / op=%d not supported (it reduces ncclInt8..ncclBfloat16, "
         "0..%d, with ncclSum..ncclAvg, %d..%d)",
         (int)type, (int)op, (int)ncclBfloat16, (int)ncclSum, (int)ncclAvg);
  return gradcompSuccess;
}

void hostReduce(ncclDataType_t type, ncclRedOp_t op, const std::vector<const void*>& src, void* dst,
                size_t count) {
  typeOps(type).reduce(src, dst, count, op, (int)src.size());
}

std::vector<std::unique_ptr<Transport>> makeCpuWorld(int nranks, double timeoutSec,
                                                     Transport* abortedWith,
                                                     std::vector<int> wholeRanks) {
  auto world = std::make_shared<CpuWorld>(nranks, timeoutSec, std::move(wholeRanks));
  if (auto* parent = dynamic_cast<CpuTransport*>(abortedWith)) {
    std::lock_guard<std::mutex> lock(parent->world()->mu);
    parent->world()->subWorlds.push_back(world);
  }
  std::vector<std::unique_ptr<Transport>> out;
  for (int r = 0; r < nranks; ++r) out.emplace_back(new CpuTransport(world, r));
  return out;
}

}  // namespace gc
