// DQ-SGD bit-width policy (see bits_policy.h for the rules).
#include "codecs/bits_policy.h"

#include <math.h>

#include <cuda_runtime_api.h>

#include <vector>

#include "kernels/qsgd_math.cuh"
#include "checks.h"

namespace gc {

// DQ-SGD state of one buffer: the statistics of its last reduced result and
// the budget history.
struct BitsHistory {
  bool onDevice = false;
  // The backend scratch came from (its stream-ordered pool: neither the
  // allocation at a buffer's first call nor the free waits for the whole
  // device, as cudaMalloc and cudaFree did).
  std::shared_ptr<Backend> backend;
  void* scratch = nullptr;          // device: per-warp partials, then the result
  GradStats* resultDev = nullptr;   // device
  GradStats* resultHost = nullptr;  // pinned host mirror (one entry per rank when gathered)
  GradStats* gatherDev = nullptr;   // device: every rank's statistics (reduce-scatter)
  // Host: every rank's statistics (reduce-scatter), kept for its capacity.
  std::vector<GradStats> gatherHost;
  int gathered = 0;             // ranks in resultHost of the copy in flight (0: one)
  cudaEvent_t ready = nullptr;  // recorded after the copy to resultHost
  bool pending = false;         // a copy is in flight
  GradStats stats{0.0, 0.0};
  bool haveStats = false;
  int lastBits = 0;
  int chosen = 0;  // chooseBits' width for the call in progress, counted by commitBits
  BudgetPolicy budget;

  bool abandoned = false;  // abandonBitsHistory: the pinned mirror is left

  ~BitsHistory() {
    if (!onDevice) return;
    if (pending && ready) cudaEventSynchronize(ready);
    if (ready) cudaEventDestroy(ready);
    if (resultHost && !abandoned) cudaFreeHost(resultHost);
    if (scratch && backend) backend->release(scratch);
    (void)cudaGetLastError();
  }
};

void abandonBitsHistory(BufferState& s) {
  if (s.bitsHistory) s.bitsHistory->abandoned = true;
}

namespace {

const char* modeName(gradcompBitsMode_t m) {
  return m == gradcompBitsDynamic ? "dynamic" : m == gradcompBitsBudget ? "budget" : "fixed";
}

gradcompResult_t makeHistory(gradcompComm& c, BufferState& s) {
  auto h = std::make_shared<BitsHistory>();
  h->onDevice = c.backend->onDevice();
  if (h->onDevice) {
    const size_t scratch = cuda::gradStatsScratchBytes(), n = (size_t)c.nranks;
    h->backend = c.backend;
    GC_CHECK(c.backend->alloc(scratch + (1 + n) * sizeof(GradStats), &h->scratch));
    h->resultDev = reinterpret_cast<GradStats*>(static_cast<char*>(h->scratch) + scratch);
    h->gatherDev = h->resultDev + 1;
    GC_CUDACHECK(cudaHostAlloc(reinterpret_cast<void**>(&h->resultHost), n * sizeof(GradStats),
                               cudaHostAllocDefault));
    GC_CUDACHECK(cudaEventCreateWithFlags(&h->ready, cudaEventDisableTiming));
  }
  s.bitsHistory = h;
  return gradcompSuccess;
}

// A failed allocation leaves no error behind for the next kernel launch to
// report on this rank alone.
gradcompResult_t createHistory(gradcompComm& c, BufferState& s) {
  const gradcompResult_t res = makeHistory(c, s);
  if (res != gradcompSuccess && c.backend->onDevice()) (void)cudaGetLastError();
  return res;
}

bool usable(const GradStats& st) {
  return isfinite(st.sumLenMaxSq) && isfinite(st.sumSq);
}

// The statistics of the whole reduced result from every rank's block, summed
// in rank order: the same doubles in the same order on every rank.
GradStats sumInRankOrder(const GradStats* all, int n) {
  GradStats st{0.0, 0.0};
  for (int i = 0; i < n; ++i) {
    st.sumLenMaxSq += all[i].sumLenMaxSq;
    st.sumSq += all[i].sumSq;
  }
  return st;
}

// Takes the statistics of the copy in flight, once it has landed: a
// reduce-scatter's (gathered) are every rank's block, summed.
gradcompResult_t settlePending(BitsHistory& h) {
  if (!h.pending) return gradcompSuccess;
  GC_CUDACHECK(cudaEventSynchronize(h.ready));
  h.stats = h.gathered ? sumInRankOrder(h.resultHost, h.gathered) : *h.resultHost;
  h.haveStats = true;
  h.pending = false;
  return gradcompSuccess;
}

}  // namespace

GradStats hostGradStats(const void* x, DType t, size_t n, int bucket) {
  // The kernels' order (grad_stats.h): per warp w, its buckets in turn; per
  // bucket, 32 lane sums of strided squares added by the shuffle-down tree;
  // then the warps' partials, 32 strided sums and the same tree. dadd/dmul
  // keep the compiler from fusing what the device computes in two roundings.
  constexpr int kPartials = kGradStatsBlocks * kGradStatsWarps;
  auto tree = [](double* s) {
    for (int o = 16; o > 0; o >>= 1) {
      for (int l = 0; l + o < 32; ++l) s[l] = dadd(s[l], s[l + o]);
    }
    return s[0];
  };
  const size_t nb = (n + bucket - 1) / bucket;
  double a[32] = {}, g[32] = {};
  for (int w = 0; w < kPartials; ++w) {
    double wa = 0.0, wg = 0.0;
    for (size_t b = (size_t)w; b < nb; b += kPartials) {
      const size_t base = b * (size_t)bucket;
      const size_t len = n - base < (size_t)bucket ? n - base : (size_t)bucket;
      uint32_t maxBits = 0;
      double ss[32] = {};
      for (size_t i = 0; i < len; ++i) {
        const float v = loadAsFloat(x, t, base + i);
        const uint32_t m = floatToBits(v) & 0x7fffffffu;
        if (m > maxBits) maxBits = m;
        ss[i % 32] = dadd(ss[i % 32], dmul((double)v, (double)v));
      }
      const double m = (double)bitsToFloat(maxBits);
      wa = dadd(wa, dmul((double)len, dmul(m, m)));
      wg = dadd(wg, tree(ss));
    }
    a[w % 32] = dadd(a[w % 32], wa);
    g[w % 32] = dadd(g[w % 32], wg);
  }
  return GradStats{tree(a), tree(g)};
}

int dynamicBits(const GradStats& st, double varianceTarget, int bitsMin, int bitsMax) {
  for (int b = bitsMin; b <= bitsMax; ++b) {
    const double s = qsgd::levels(b);
    if (st.sumLenMaxSq <= 4.0 * varianceTarget * st.sumSq * s * s) return b;
  }
  return bitsMax;
}

double portableLog2(double x) {
  int e;
  double m = frexp(x, &e);  // x = m * 2^e, m in [0.5, 1): exact
  if (m < 0.70710678118654752) {
    m = dmul(m, 2.0);  // exact
    --e;
  }
  // ln m = 2 atanh(z) = 2 (z + z^3/3 + z^5/5 + ...), z = (m-1)/(m+1) in
  // [-0.172, 0.172]: z^2 <= 0.0295, so 14 terms leave under 1e-20.
  const double z = (m - 1.0) / (m + 1.0);  // m - 1 exact (Sterbenz); one rounding each
  const double z2 = dmul(z, z);
  double p = 1.0 / 29.0;
  for (int k = 13; k >= 0; --k) p = dadd(dmul(p, z2), 1.0 / (2 * k + 1));
  const double ln = dmul(dmul(2.0, z), p);
  return dadd((double)e, dmul(ln, 1.4426950408889634074));  // 1/ln 2
}

// The statistic's entry in the history, if it has one.
static bool historyEntry(const GradStats* st, double* v) {
  if (st == nullptr || !usable(*st) || !(st->sumLenMaxSq > 0.0)) return false;
  *v = 0.5 * portableLog2(st->sumLenMaxSq);
  return true;
}

int BudgetPolicy::decide(const GradStats* st, double budget, int window, int bitsMin,
                         int bitsMax) const {
  const int left = window - pos_;  // calls left in this window, this one included
  // The budget as the decimal it was given in: a float such as 4.1f is
  // 4.0999999, whose window of 10 would hold 40 bits where 41 were meant.
  budget = round(budget * 1e6) / 1e6;
  const double remaining = budget * window - used_;
  double target = remaining / left;
  double now;
  if (historyEntry(st, &now)) {
    // The mean over the last `window` entries, this call's included (the
    // history as commit() leaves it).
    const size_t keep = (size_t)window - 1;
    const size_t skip = halfLog2A_.size() > keep ? halfLog2A_.size() - keep : 0;
    double mean = now;
    size_t n = 1;
    for (size_t i = skip; i < halfLog2A_.size(); ++i, ++n) mean += halfLog2A_[i];
    mean /= (double)n;
    target += now - mean;
  }
  // Clamped before the conversion: an int holds every value that is left.
  target =
      target < bitsMin - 1.0 ? bitsMin - 1.0 : (target > bitsMax + 1.0 ? bitsMax + 1.0 : target);
  int b = (int)floor(target + 0.5);
  b = b < bitsMin ? bitsMin : (b > bitsMax ? bitsMax : b);
  // Leave at least bitsMin for every later call of the window; budget >=
  // bitsMin keeps this cap >= bitsMin.
  const int cap = (int)floor(remaining - (double)bitsMin * (left - 1) + 1e-9);
  if (b > cap) b = cap;
  if (b < bitsMin) b = bitsMin;
  return b;
}

void BudgetPolicy::commit(const GradStats* st, int bits, int window) {
  double now;
  if (historyEntry(st, &now)) {
    halfLog2A_.push_back(now);
    while ((int)halfLog2A_.size() > window) halfLog2A_.pop_front();
  }
  used_ += bits;
  if (++pos_ == window) pos_ = used_ = 0;
}

void BudgetPolicy::save(int* used, int* pos, std::vector<double>* halfLog2A) const {
  *used = used_;
  *pos = pos_;
  halfLog2A->assign(halfLog2A_.begin(), halfLog2A_.end());
}

void BudgetPolicy::restore(int used, int pos, const std::vector<double>& halfLog2A) {
  used_ = used;
  pos_ = pos;
  halfLog2A_.assign(halfLog2A.begin(), halfLog2A.end());
}

gradcompResult_t exportBitsHistory(BufferState& s, bool* present, BitsHistoryRecord* out) {
  *present = s.bitsHistory != nullptr;
  if (!*present) return gradcompSuccess;
  BitsHistory& h = *s.bitsHistory;
  GC_CHECK(settlePending(h));
  out->stats = h.stats;
  out->haveStats = h.haveStats ? 1 : 0;
  out->lastBits = h.lastBits;
  h.budget.save(&out->budgetUsed, &out->budgetPos, &out->halfLog2A);
  return gradcompSuccess;
}

gradcompResult_t settleBitsHistory(BufferState& s) {
  return s.bitsHistory ? settlePending(*s.bitsHistory) : gradcompSuccess;
}

void scaleBitsHistory(BufferState& s, double factor) {
  if (!s.bitsHistory) return;
  BitsHistory& h = *s.bitsHistory;
  // Sums of squares of the result: factor^2 (exact for a power of two).
  h.stats.sumLenMaxSq *= factor * factor;
  h.stats.sumSq *= factor * factor;
  h.budget.shift(portableLog2(factor));
}

const char* checkBitsHistory(const BitsHistoryRecord& r, const gradcompConfig_t& cfg) {
  if (r.haveStats != 0 && r.haveStats != 1) return "haveStats is not 0 or 1";
  if (r.lastBits != 0 && (r.lastBits < cfg.bitsMin || r.lastBits > cfg.bitsMax)) {
    return "lastBits is outside bitsMin..bitsMax";
  }
  // A call's statistics exist only after it chose its width.
  if (r.haveStats && r.lastBits == 0)
    return "statistics are present without the width (lastBits 0)";
  if (r.budgetPos < 0 || r.budgetPos >= cfg.budgetWindow)
    return "the budget position is outside the window";
  if (r.budgetUsed < cfg.bitsMin * r.budgetPos || r.budgetUsed > cfg.bitsMax * r.budgetPos) {
    return "the budget spent is outside bitsMin..bitsMax bits per call made";
  }
  if (r.halfLog2A.size() > (size_t)cfg.budgetWindow)
    return "the budget history is longer than the window";
  // Each entry is 0.5 * log2 of a finite positive double: within [-537.5, 512].
  for (double v : r.halfLog2A) {
    if (!(v >= -540.0 && v <= 520.0))
      return "the budget history holds a value no statistic gives (outside -540..520)";
  }
  // Non-finite statistics are legitimate (a non-finite result); NaN payloads
  // are not read for anything but usable().
  return nullptr;
}

bool budgetWindowFits(const BitsHistoryRecord& r, const gradcompConfig_t& cfg) {
  const double budget = round((double)cfg.bitsBudget * 1e6) / 1e6;  // as BudgetPolicy::decide
  const double left = (double)cfg.bitsMin * (cfg.budgetWindow - r.budgetPos);
  return (double)r.budgetUsed + left <= budget * cfg.budgetWindow + 1e-9;
}

gradcompResult_t importBitsHistory(gradcompComm& c, BufferState& s, const BitsHistoryRecord& r) {
  if (!s.bitsHistory) GC_CHECK(createHistory(c, s));
  BitsHistory& h = *s.bitsHistory;
  h.pending = false;
  h.chosen = 0;
  h.stats = r.stats;
  h.haveStats = r.haveStats != 0;
  h.lastBits = r.lastBits;
  h.budget.restore(r.budgetUsed, r.budgetPos, r.halfLog2A);
  return gradcompSuccess;
}

gradcompResult_t chooseBits(gradcompComm& c, BufferState& s, int* bits) {
  const gradcompConfig_t& cfg = c.cfg;
  if (cfg.bitsMode == gradcompBitsFixed) {
    *bits = cfg.bits;
    return gradcompSuccess;
  }
  if (c.backend->capturing()) {
    return setError(gradcompInvalidUsage,
                    "GRADCOMP_BITS_MODE=%s chooses the bit width on the host from the previous "
                    "call's statistics, which a CUDA graph cannot do; capture with "
                    "GRADCOMP_BITS_MODE=fixed",
                    modeName(cfg.bitsMode));
  }
  if (!s.bitsHistory) GC_CHECK(createHistory(c, s));
  BitsHistory& h = *s.bitsHistory;
  // Only the previous call on this buffer must have finished.
  GC_CHECK(settlePending(h));
  int b;
  const int clampedBits = cfg.bits < cfg.bitsMin   ? cfg.bitsMin
                          : cfg.bits > cfg.bitsMax ? cfg.bitsMax
                                                   : cfg.bits;
  if (cfg.bitsMode == gradcompBitsDynamic) {
    if (!h.haveStats) {
      b = clampedBits;
    } else if (!usable(h.stats)) {
      // A non-finite result says nothing about the next one.
      b = h.lastBits != 0 ? h.lastBits : clampedBits;
    } else if (h.stats.sumSq == 0.0) {
      b = cfg.bitsMin;  // a zero gradient quantizes exactly at any width
    } else {
      b = dynamicBits(h.stats, cfg.varianceTarget, cfg.bitsMin, cfg.bitsMax);
    }
  } else {
    b = h.budget.decide(h.haveStats ? &h.stats : nullptr, cfg.bitsBudget, cfg.budgetWindow,
                        cfg.bitsMin, cfg.bitsMax);
  }
  const double ratio =
      h.haveStats && h.stats.sumSq > 0.0 ? h.stats.sumLenMaxSq / h.stats.sumSq : 0.0;
  GC_TRACE(
      "DQ-SGD %s: step %llu call %llu on buffer of %zu: bits=%d (prev. result: "
      "sum len*max^2=%.4g ||g||^2=%.4g ratio=%.4g)",
      modeName(cfg.bitsMode), (unsigned long long)c.step, (unsigned long long)s.calls, s.count, b,
      h.stats.sumLenMaxSq, h.stats.sumSq, ratio);
  h.chosen = b;
  *bits = b;
  return gradcompSuccess;
}

// The chosen width becomes history only once the call went through on this
// rank (its exchange, then its result's statistics are recorded): a call
// that failed changes neither lastBits nor the budget window, so a retry
// chooses what it chose, on every rank. Before the statistics of this call
// replace the ones the choice read.
static void commitBits(gradcompComm& c, BufferState& s, BitsHistory& h) {
  const gradcompConfig_t& cfg = c.cfg;
  if (h.chosen == 0) return;
  if (cfg.bitsMode == gradcompBitsBudget) {
    h.budget.commit(h.haveStats ? &h.stats : nullptr, h.chosen, cfg.budgetWindow);
  }
  if (h.chosen != h.lastBits) {
    GC_INFO("DQ-SGD %s: buffer of %zu elements now at %d bits (was %d) from step %llu",
            modeName(cfg.bitsMode), s.count, h.chosen, h.lastBits, (unsigned long long)c.step);
  }
  h.lastBits = h.chosen;
  h.chosen = 0;
}

gradcompResult_t recordReducedStats(gradcompComm& c, BufferState& s, const void* recv, size_t count,
                                    DType t) {
  if (c.cfg.bitsMode == gradcompBitsFixed || !s.bitsHistory) return gradcompSuccess;
  BitsHistory& h = *s.bitsHistory;
  commitBits(c, s, h);
  if (!h.onDevice) {
    h.stats = hostGradStats(recv, t, count, c.cfg.bucketSize);
    h.haveStats = true;
    return gradcompSuccess;
  }
  cudaStream_t stream = c.backend->stream();
  GC_CUDACHECK(cuda::gradStats(recv, t, count, c.cfg.bucketSize, h.scratch, h.resultDev, stream));
  GC_CUDACHECK(cudaMemcpyAsync(h.resultHost, h.resultDev, sizeof(GradStats), cudaMemcpyDeviceToHost,
                               stream));
  GC_CUDACHECK(cudaEventRecord(h.ready, stream));
  h.pending = true;
  h.gathered = 0;
  return gradcompSuccess;
}

gradcompResult_t recordGatheredStats(gradcompComm& c, BufferState& s, const void* recv,
                                     size_t count, DType t) {
  if (c.cfg.bitsMode == gradcompBitsFixed || !s.bitsHistory) return gradcompSuccess;
  BitsHistory& h = *s.bitsHistory;
  const int n = c.nranks;
  // Committed once the statistics' allgather went through too: a call that
  // fails there fails on every rank and counts for none.
  if (!h.onDevice) {
    const GradStats mine = hostGradStats(recv, t, count, c.cfg.bucketSize);
    std::vector<GradStats>& all = h.gatherHost;
    all.resize(n);
    GC_CHECK(c.transport->allGather(&mine, all.data(), sizeof(GradStats)));
    commitBits(c, s, h);
    h.stats = sumInRankOrder(all.data(), n);
    h.haveStats = true;
    return gradcompSuccess;
  }
  cudaStream_t stream = c.backend->stream();
  GC_CUDACHECK(cuda::gradStats(recv, t, count, c.cfg.bucketSize, h.scratch, h.resultDev, stream));
  GC_CHECK(c.transport->allGather(h.resultDev, h.gatherDev, sizeof(GradStats)));
  commitBits(c, s, h);
  GC_CUDACHECK(cudaMemcpyAsync(h.resultHost, h.gatherDev, n * sizeof(GradStats),
                               cudaMemcpyDeviceToHost, stream));
  GC_CUDACHECK(cudaEventRecord(h.ready, stream));
  h.pending = true;
  h.gathered = n;
  return gradcompSuccess;
}

}  // namespace gc
