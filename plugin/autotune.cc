// GRADCOMP_AUTO: the set-up timing, the agreement of the ranks, the fit and
// the per-call decision (see autotune.h and docs/algorithms.md).
#include "autotune.h"

#include <math.h>
#include <stdio.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "checks.h"
#include "collective.h"
#include "comm.h"

namespace gc {
namespace {

constexpr int kWarmup = kAutoWarmupCalls;
constexpr int kReps = kAutoTimedCalls;

const char* callName(AutoCall k) {
  return k == AutoCall::ReduceScatter ? "reduce-scatter" : "allreduce";
}

size_t toCount(double x) {
  if (!(x > 0.0)) return 0;
  if (x >= 1.8e19) return SIZE_MAX;
  return (size_t)x;
}

void rangeText(const AutoRange& r, char* out, size_t n) {
  if (r.hi <= r.lo) {
    snprintf(out, n, "none");
  } else if (r.lo == 0 && r.hi == SIZE_MAX) {
    snprintf(out, n, "all");
  } else if (r.hi == SIZE_MAX) {
    snprintf(out, n, ">= %zu elements", r.lo);
  } else if (r.lo == 0) {
    snprintf(out, n, "< %zu elements", r.hi);
  } else {
    snprintf(out, n, "%zu <= n < %zu elements", r.lo, r.hi);
  }
}

// The comm's own calls run on scratch during the timing: its buffer states,
// workspace, stats and step counters (host, and device: graph replays
// advance only the device one) are set aside and come back unchanged,
// whatever happens in between. minElements is lifted so both sizes compress.
class SetAside {
 public:
  SetAside(gradcompComm* c, uint64_t deviceStep) : c_(c), deviceStep_(deviceStep) {
    std::swap(states_, c->states);
    std::swap(workspace_, c->workspace);
    std::swap(workspaceBytes_, c->workspaceBytes);
    std::swap(workspaceCaptured_, c->workspaceCaptured);
    stats_ = c->stats;
    step_ = c->step;
    minElements_ = c->cfg.minElements;
    c->cfg.minElements = 0;
    c->autoState.tuning = true;
  }
  ~SetAside() { restore(); }
  uint64_t callsCompressedBefore() const { return stats_.callsCompressed; }
  gradcompResult_t restore() {
    if (done_) return gradcompSuccess;
    done_ = true;
    gradcompResult_t res = c_->backend->sync();
    for (auto& kv : c_->states) c_->releaseState(kv.second);
    c_->backend->release(c_->workspace);
    c_->states = std::move(states_);
    c_->workspace = workspace_;
    c_->workspaceBytes = workspaceBytes_;
    c_->workspaceCaptured = workspaceCaptured_;
    c_->stats = stats_;
    c_->step = step_;
    c_->cfg.minElements = minElements_;
    c_->autoState.tuning = false;
    const gradcompResult_t stepRes = c_->backend->setStep(deviceStep_);
    return res != gradcompSuccess ? res : stepRes;
  }

 private:
  gradcompComm* c_;
  std::map<StateKey, BufferState> states_;
  void* workspace_ = nullptr;
  size_t workspaceBytes_ = 0;
  bool workspaceCaptured_ = false;
  gradcompStats_t stats_{};
  uint64_t step_ = 0, deviceStep_ = 0;
  size_t minElements_ = 0;
  bool done_ = false;
};

// Marks between the timed calls, read after one synchronize: CUDA events on
// the caller's stream, or (the CPU backend, whose calls return when done:
// socket comms, and tests) the host clock.
class CallTimer {
 public:
  virtual ~CallTimer() = default;
  virtual gradcompResult_t init(int marks) = 0;
  virtual gradcompResult_t mark(int i) = 0;
  virtual gradcompResult_t finish() = 0;
  virtual gradcompResult_t elapsedUs(int from, int to, float* us) = 0;
};

class EventTimer final : public CallTimer {
 public:
  explicit EventTimer(cudaStream_t stream) : stream_(stream) {}
  ~EventTimer() override {
    for (cudaEvent_t e : events_)
      if (e != nullptr) cudaEventDestroy(e);
  }
  gradcompResult_t init(int marks) override {
    events_.assign(marks, nullptr);
    for (cudaEvent_t& e : events_) GC_CUDACHECK(cudaEventCreate(&e));
    return gradcompSuccess;
  }
  gradcompResult_t mark(int i) override {
    GC_CUDACHECK(cudaEventRecord(events_[i], stream_));
    return gradcompSuccess;
  }
  gradcompResult_t finish() override {
    GC_CUDACHECK(cudaStreamSynchronize(stream_));
    return gradcompSuccess;
  }
  gradcompResult_t elapsedUs(int from, int to, float* us) override {
    float ms = 0.0f;
    GC_CUDACHECK(cudaEventElapsedTime(&ms, events_[from], events_[to]));
    *us = ms * 1000.0f;
    return gradcompSuccess;
  }

 private:
  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;
};

class HostTimer final : public CallTimer {
 public:
  gradcompResult_t init(int marks) override {
    marks_.assign(marks, std::chrono::steady_clock::time_point());
    return gradcompSuccess;
  }
  gradcompResult_t mark(int i) override {
    marks_[i] = std::chrono::steady_clock::now();
    return gradcompSuccess;
  }
  gradcompResult_t finish() override { return gradcompSuccess; }
  gradcompResult_t elapsedUs(int from, int to, float* us) override {
    *us = std::chrono::duration<float, std::micro>(marks_[to] - marks_[from]).count();
    return gradcompSuccess;
  }

 private:
  std::vector<std::chrono::steady_clock::time_point> marks_;
};

// Scratch buffers, freed on every path out.
struct Scratch {
  explicit Scratch(gradcompComm* comm) : c(comm) {}
  gradcompComm* c;
  float* send = nullptr;
  float* recv = nullptr;
  ~Scratch() {
    c->backend->sync();
    c->backend->release(send);
    c->backend->release(recv);
  }
};

// One timed series from mark `first`: kWarmup untimed calls, then kReps
// calls with a mark after each.
template <typename Call>
gradcompResult_t series(Call call, CallTimer& timer, int first) {
  for (int i = 0; i < kWarmup; ++i) GC_CHECK(call());
  GC_CHECK(timer.mark(first));
  for (int i = 0; i < kReps; ++i) {
    GC_CHECK(call());
    GC_CHECK(timer.mark(first + i + 1));
  }
  return gradcompSuccess;
}

gradcompResult_t medianUs(CallTimer& timer, int first, float* us) {
  float t[kReps];
  for (int i = 0; i < kReps; ++i) GC_CHECK(timer.elapsedUs(first + i, first + i + 1, &t[i]));
  std::sort(t, t + kReps);
  *us = t[kReps / 2];
  return gradcompSuccess;
}

// The input counts a comm times k at: AutoState::timedCounts, the
// reduce-scatter's rounded to a multiple of the ranks.
void timedCounts(const gradcompComm& c, AutoCall k, size_t counts[2]) {
  const size_t ranks = k == AutoCall::ReduceScatter ? (size_t)c.nranks : 1;
  for (int i = 0; i < 2; ++i)
    counts[i] = std::max<size_t>(c.autoState.timedCounts[i] / ranks, 1) * ranks;
}

// Times NCCL and the compressed path of collective k at the two sizes; one
// synchronize at the end. Out of place, so every call reduces the same input.
// A reduce-scatter's sizes are its input's, rounded down to whole blocks.
// Everything the timing needs on a rank (scratch buffers, timer, the timed
// buffers' states and workspace) is made first, and the ranks agree that each
// could before any of them starts a timed call: a rank out of memory would
// otherwise return while its peers wait in a call it never joins. *refused is
// then the highest rank that could not, or -1 when the figures were measured.
gradcompResult_t measure(gradcompComm* c, AutoCall k, CallTimer& timer, AutoFigures* f,
                         int* refused) {
  *refused = -1;
  AutoState& a = c->autoState;
  const bool rs = k == AutoCall::ReduceScatter;
  const size_t ranks = rs ? (size_t)c->nranks : 1;
  size_t counts[2];
  timedCounts(*c, k, counts);
  f->smallCount = counts[0];
  f->largeCount = counts[1];
  const size_t large = std::max(counts[0], counts[1]);
  const cudaStream_t stream = c->backend->stream();
  Scratch s(c);
  constexpr int kMarks = kReps + 1;

  // Read before the readiness vote, but a failure is this rank's vote (its
  // peers are about to wait in the vote), not a return ahead of it.
  uint64_t deviceStep = c->step;
  gradcompResult_t stepRead = gradcompSuccess;
  if (c->backend->deviceStep() != nullptr) {
    stepRead = c->backend->toHost(&deviceStep, c->backend->deviceStep(), sizeof(deviceStep));
    if (stepRead != gradcompSuccess) deviceStep = c->step;
  }
  SetAside aside(c, deviceStep);
  // The collectives behind the C entry points, under the pin of the public
  // call timing them (a retune, or the call whose hook tunes).
  auto compressed = [&](size_t n) {
    return guarded([&] {
      return rs ? reduceScatter(s.send, s.recv, n / ranks, ncclFloat32, ncclSum, c, stream, false,
                                0)
                : allReduce(s.send, s.recv, n, ncclFloat32, ncclSum, c, stream, false, 0);
    });
  };
  // What a call auto passes runs: NCCL's collective, and on a DGC comm with
  // momentum correction the velocity's passes around it (collective.h), on the
  // compressed calls' scratch state.
  const bool momentum = passesMomentum(*c, ncclFloat32, ncclSum);
  auto passed = [&](size_t n) -> gradcompResult_t {
    if (momentum) {
      return momentumPassThrough(*c, rs ? kStateReduceScatter : kStateAllReduce, false, 0, false,
                                 s.send, s.recv, n / ranks, ncclFloat32, ncclSum);
    }
    return rs ? c->transport->reduceScatter(s.send, s.recv, n / ranks, ncclFloat32, ncclSum)
              : c->transport->passThrough(s.send, s.recv, n, ncclFloat32, ncclSum);
  };
  auto prepare = [&]() -> gradcompResult_t {
    GC_CHECK(c->backend->alloc(large * sizeof(float), reinterpret_cast<void**>(&s.send)));
    GC_CHECK(c->backend->alloc(large / ranks * sizeof(float), reinterpret_cast<void**>(&s.recv)));
    {
      // Gradient-like values: every bucket has a spread, none is all zero.
      std::vector<float> host(large);
      uint32_t x = 0x9e3779b9u ^ (uint32_t)c->rank;
      for (float& v : host) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v = ((float)(x >> 8) * (1.0f / 8388608.0f) - 1.0f) * 1e-3f;
      }
      GC_CHECK(c->backend->fromHost(s.send, host.data(), host.size() * sizeof(float)));
    }
    GC_CHECK(timer.init(4 * kMarks));
    if (c->cfg.method == gradcompMethodDgc) {
      // Time the steady state, not the first stage of the warm-up ramp.
      for (size_t n : counts) {
        BufferState* st = nullptr;
        GC_CHECK(findState(*c, rs ? kStateReduceScatter : kStateAllReduce, false, 0, s.recv, n,
                           DType::F32, &st));
        st->calls = (uint64_t)c->cfg.warmupSteps;
      }
    }
    // The timed calls' states and workspace (the larger size last: the
    // workspace only grows), made by calls that return before their exchange.
    a.reserving = true;
    gradcompResult_t res = gradcompSuccess;
    for (size_t n : counts) {
      if (res == gradcompSuccess) res = compressed(n);
    }
    for (size_t n : counts) {
      if (res == gradcompSuccess && momentum) res = passed(n);
    }
    a.reserving = false;
    return res;
  };
  gradcompResult_t local;
  try {
    local = stepRead != gradcompSuccess ? stepRead : prepare();
  } catch (const std::bad_alloc&) {
    // The host copy of the scratch: this rank still votes.
    a.reserving = false;
    local = setError(gradcompSystemError, "out of host memory for the timing's %zu-element input",
                     large);
  } catch (...) {
    a.reserving = false;
    local = setError(gradcompInternalError, "unexpected exception setting up the timing");
  }
  const std::string why = local != gradcompSuccess ? gradcompGetLastError() : "";
  // A failed CUDA call (an event, a copy) leaves CUDA's last error set: the
  // process's next launch, maybe the framework's, would report it.
  if (local != gradcompSuccess && c->backend->onDevice()) (void)cudaGetLastError();
  GC_CHECK(agreeReady(c, local, refused));
  if (*refused >= 0) {
    a.of(k).timedCompressed = 0;
    if (local != gradcompSuccess) {
      GC_WARN("auto (%s): rank %d could not set up the timing: %s", callName(k), c->rank,
              why.c_str());
    }
    clearError();
    return aside.restore();
  }
  for (int i = 0; i < 2; ++i) {
    const size_t n = counts[i];
    GC_CHECK(series([&] { return passed(n); }, timer, (2 * i) * kMarks));
    GC_CHECK(series([&] { return compressed(n); }, timer, (2 * i + 1) * kMarks));
  }
  GC_CHECK(timer.finish());
  a.of(k).timedCompressed = c->stats.callsCompressed - aside.callsCompressedBefore();
  for (int i = 0; i < 2; ++i) {
    GC_CHECK(medianUs(timer, (2 * i) * kMarks, &f->ncclUs[i]));
    GC_CHECK(medianUs(timer, (2 * i + 1) * kMarks, &f->compUs[i]));
  }
  return aside.restore();
}

gradcompResult_t captureRefused() {
  return setError(gradcompInvalidUsage,
                  "GRADCOMP_AUTO=1 times NCCL and compression on the first eligible allreduce "
                  "and reduce-scatter of a comm and on gradcompCommRetune, and this one is being "
                  "captured into a CUDA graph; make one eager call first, or set GRADCOMP_AUTO=0");
}

gradcompResult_t tune(gradcompComm* c, AutoCall k) {
  AutoState& a = c->autoState;
  AutoDecision& d = a.of(k);
  if (!d.injected) {
    if (c->backend->capturing()) return captureRefused();
    // Saved figures are used only where every rank restored them: ranks that
    // loaded different states (one from before the timing, one after, at the
    // same step) would otherwise run different collectives here, the timing's
    // on one and none on another.
    // Figures timed at other counts than this comm times (another build's,
    // a crafted blob) count as none: the counts are not agreed, only the times.
    if (d.restored) {
      size_t counts[2];
      timedCounts(*c, k, counts);
      if (d.restoredFigures.smallCount != counts[0] || d.restoredFigures.largeCount != counts[1]) {
        GC_WARN(
            "auto (%s): the loaded figures were timed at %zu and %zu elements, this comm "
            "times %zu and %zu; it decides anew",
            callName(k), d.restoredFigures.smallCount, d.restoredFigures.largeCount, counts[0],
            counts[1]);
        d.restored = false;
      }
    }
    int without = -1;
    GC_CHECK(agreeReady(c, d.restored ? gradcompSuccess : gradcompInvalidUsage, &without));
    if (without >= 0 && d.restored) {
      GC_WARN("auto (%s): rank %d has no saved figures for comm %p; every rank decides anew",
              callName(k), without, (void*)c);
      d.restored = false;
    }
  }
  if (!d.restored && !d.injected && !c->backend->onDevice() && !a.timeOnHost) {
    static std::atomic<bool> logged{false};
    if (!logged.exchange(true)) {
      GC_INFO(
          "auto: the in-process CPU world does not time (its ranks share the cores; socket "
          "comms do); calls compress as configured");
    }
    d.decided = true;
    d.timed = false;
    return gradcompSuccess;
  }
  if (c->backend->capturing()) return captureRefused();
  AutoFigures f;
  if (d.restored) {
    f = d.restoredFigures;
    d.restored = false;
  } else if (d.injected) {
    f = d.injectedFigures;
  } else {
    int refused = -1;
    if (c->backend->onDevice()) {
      EventTimer timer(c->backend->stream());
      GC_CHECK(measure(c, k, timer, &f, &refused));
    } else {
      HostTimer timer;
      GC_CHECK(measure(c, k, timer, &f, &refused));
    }
    if (refused >= 0) {
      // Every rank got the same rank: every rank passes alike. A rank short
      // of memory for the timing is short of it for compression's state too.
      GC_WARN(
          "auto (%s): rank %d could not allocate what the timing needs (see its warning); comm "
          "%p passes every %s through to NCCL uncompressed until gradcompCommRetune "
          "(GRADCOMP_AUTO=0 compresses without timing)",
          callName(k), refused, (void*)c, callName(k));
      d.figures = AutoFigures();
      d.range[0] = d.range[1] = AutoRange{0, 0};
      d.decided = d.timed = true;
      return gradcompSuccess;
    }
  }
  GC_CHECK(autoAgree(c, &f));
  if (autoCheckFigures(f) != gradcompSuccess) {
    // autoCheckFigures logged why. Every rank holds the same figures, so every
    // rank lands here: compress as configured rather than time on every call.
    GC_WARN("auto (%s): the figures above are unusable; calls compress as configured", callName(k));
    clearError();
    d.decided = true;
    d.timed = false;
    return gradcompSuccess;
  }
  d.figures = f;
  d.range[0] = autoRange(f, 2);
  d.range[1] = autoRange(f, 4);
  d.decided = d.timed = true;
  char r32[64], r16[64];
  rangeText(d.range[1], r32, sizeof(r32));
  rangeText(d.range[0], r16, sizeof(r16));
  GC_INFO(
      "auto (%s): NCCL %.1f us, compressed %.1f us at %zu elements; NCCL %.1f us, compressed "
      "%.1f us at %zu elements (slowest rank, fp32%s); compress calls: fp32 %s, fp16/bf16 %s",
      callName(k), f.ncclUs[0], f.compUs[0], f.smallCount, f.ncclUs[1], f.compUs[1], f.largeCount,
      k == AutoCall::ReduceScatter ? ", input counts" : "", r32, r16);
  return gradcompSuccess;
}

}  // namespace

gradcompResult_t autoCheckFigures(const AutoFigures& f) {
  GC_ARG(f.smallCount > 0 && f.smallCount < f.largeCount,
         "auto figures: smallCount=%zu and largeCount=%zu must satisfy 0 < small < large",
         f.smallCount, f.largeCount);
  for (int i = 0; i < 2; ++i) {
    GC_ARG(
        isfinite(f.ncclUs[i]) && f.ncclUs[i] > 0.0f && isfinite(f.compUs[i]) && f.compUs[i] > 0.0f,
        "auto figures: NCCL %g us and compressed %g us at %zu elements must be positive and "
        "finite",
        (double)f.ncclUs[i], (double)f.compUs[i], i ? f.largeCount : f.smallCount);
  }
  return gradcompSuccess;
}

AutoRange autoRange(const AutoFigures& f, size_t elementBytes) {
  const double dn = (double)(f.largeCount - f.smallCount), n0 = (double)f.smallCount;
  const double bN = ((double)f.ncclUs[1] - (double)f.ncclUs[0]) / dn;
  const double aN = (double)f.ncclUs[0] - bN * n0;
  const double bC = ((double)f.compUs[1] - (double)f.compUs[0]) / dn;
  const double aC = (double)f.compUs[0] - bC * n0;
  // Compress where aN + bN' n > aC + bC n, i.e. k + s n > 0.
  const double s = bN * (double)elementBytes / 4.0 - bC, k = aN - aC;
  AutoRange r;
  if (s > 0.0) {
    const double x = -k / s;  // compress for n > x
    r.lo = x < 0.0 ? 0 : toCount(floor(x) + 1.0);
  } else if (s < 0.0) {
    r.hi = toCount(ceil(k / -s));  // compress for n < k / -s
    // Only below the smallest timed count: no timing says compression wins
    // there, and lines through two noisy points can cross at any small n (both
    // intercepts negative). Extrapolating down must not turn a loss into a win.
    if (r.hi <= f.smallCount) r.hi = 0;
  } else if (!(k > 0.0)) {
    r.hi = 0;
  }
  return r;
}

gradcompResult_t autoAgree(gradcompComm* c, AutoFigures* f) {
  float v[4] = {f->ncclUs[0], f->ncclUs[1], f->compUs[0], f->compUs[1]};
  float* d = c->backend->agreeScratch();  // nothing to allocate after the readiness agreement
  GC_CHECK(c->backend->fromHost(d, v, sizeof(v)));
  GC_CHECK(c->transport->passThrough(d, d, 4, ncclFloat32, ncclMax));
  GC_CHECK(c->backend->toHost(v, d, sizeof(v)));
  f->ncclUs[0] = v[0];
  f->ncclUs[1] = v[1];
  f->compUs[0] = v[2];
  f->compUs[1] = v[3];
  return gradcompSuccess;
}

gradcompResult_t autoShouldPass(gradcompComm* c, AutoCall k, size_t count, size_t elementBytes,
                                bool* pass) {
  *pass = false;
  AutoState& a = c->autoState;
  if (!c->cfg.autoTune || a.tuning) return gradcompSuccess;
  AutoDecision& d = a.of(k);
  if (!d.decided) GC_CHECK(tune(c, k));
  if (d.timed) *pass = !d.range[elementBytes == 4 ? 1 : 0].contains(count);
  return gradcompSuccess;
}

gradcompResult_t autoRetune(gradcompComm* c) {
  // Nothing would compress: nothing to decide (no call asks).
  if (!c->cfg.autoTune || c->cfg.method == gradcompMethodNone || c->nranks < 2)
    return gradcompSuccess;
  // Under capture the decisions in force stay.
  if (c->backend->capturing()) return captureRefused();
  // Whether the reduce-scatter was tuned is the same on every rank (every
  // rank made the same calls), so every rank runs the same timings.
  // A retune times afresh: figures loaded and not yet used are dropped too
  // (a run resumed on another cluster retunes for its own network).
  c->autoState.allReduce.restored = false;
  c->autoState.allReduce.decided = false;
  // The exchanges below carry a call record, which the CPU transports compare
  // at each: the retune's own, not that of the last collective, which a
  // collective the ranks disagreed on (refused) or one a rank never reached
  // (timed out) left different on each rank.
  c->transport->beginCall(CallInfo{c->step, 0, -1, -1, kCallRetune, c->stateDigest});
  GC_CHECK(tune(c, AutoCall::AllReduce));
  AutoDecision& rs = c->autoState.reduceScatter;
  rs.restored = false;  // an undecided reduce-scatter then times at its first call
  if (!rs.decided) return gradcompSuccess;
  rs.decided = false;
  return tune(c, AutoCall::ReduceScatter);
}

bool autoSavedFigures(const gradcompComm& c, AutoCall k, AutoFigures* f) {
  const AutoDecision& d =
      k == AutoCall::ReduceScatter ? c.autoState.reduceScatter : c.autoState.allReduce;
  // Loaded and not yet used: a save passes them on unchanged.
  if (d.restored) {
    *f = d.restoredFigures;
    return true;
  }
  if (!d.decided || !d.timed || autoCheckFigures(d.figures) != gradcompSuccess) {
    clearError();
    return false;
  }
  *f = d.figures;
  return true;
}

void autoForgetDecision(gradcompComm* c, AutoCall k) {
  AutoDecision& d = c->autoState.of(k);
  d.restored = false;
  d.decided = false;
}

void autoRestoreFigures(gradcompComm* c, AutoCall k, const AutoFigures& f) {
  AutoDecision& d = c->autoState.of(k);
  d.restored = true;
  d.restoredFigures = f;
  d.decided = false;
}

void autoInjectFigures(gradcompComm* c, AutoCall k, const AutoFigures& f) {
  AutoDecision& d = c->autoState.of(k);
  d.injected = true;
  d.injectedFigures = f;
}

void autoInjectFigures(gradcompComm* c, const AutoFigures& f) {
  autoInjectFigures(c, AutoCall::AllReduce, f);
  autoInjectFigures(c, AutoCall::ReduceScatter, f);
}

}  // namespace gc
