// The communicators the interposer has seen: settings, lazy set-up of the
// gradcomp comm with an agreement among ranks, release on destroy/abort, and
// the INFO summary line per communicator.
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "backends/cuda/device_ptr.h"
#include "checks.h"
#include "comm.h"
#include "debug.h"
#include "format_args.h"
#include "nccl_dlsym.h"
#include "params.h"
#include "preload.h"

namespace gc {
namespace preload {
namespace {

std::map<ncclComm_t, EntryPtr>& table();
void forgetAtFork();

// Heap-allocated and never freed: calls may arrive during static destruction
// (frameworks tear down communicators at exit), so nothing here may go first.
// Held across fork() (the handlers are registered with the first use, so a
// process that never calls NCCL registers nothing): every process a trainer
// starts has the preload, and a child forked while another thread held the
// lock (a call being routed) would wait for it forever, at its exit at the
// latest (SummaryAtExit). Registered outside the mutex's first use, which a
// child forked during it would wait for too.
std::mutex& tableMu() {
  static std::mutex* mu = new std::mutex;
  static std::atomic<bool> forkHandled{false};
  if (!forkHandled.load(std::memory_order_relaxed) && !forkHandled.exchange(true)) {
    pthread_atfork([] { tableMu().lock(); }, [] { tableMu().unlock(); },
                   [] {
                     forgetAtFork();
                     tableMu().unlock();
                   });
  }
  return *mu;
}
std::map<ncclComm_t, EntryPtr>& table() {
  static auto* t = new std::map<ncclComm_t, EntryPtr>;
  return *t;
}
std::set<ncclComm_t>& nonBlockingComms() {
  static auto* s = new std::set<ncclComm_t>;
  return *s;
}
// The slots of non-blocking children NCCL is still making (notePendingChild),
// with their parents: a slot still empty when its parent ends (a split NCCL
// ended before its job wrote the slot; a job that fails still writes its
// half-made child there, NCCL 2.30.7 src/init.cc) goes then, not kept, and
// read, for the rest of the process.
struct PendingChild {
  ncclComm_t parent;
  ncclComm_t* slot;
};
std::vector<PendingChild>& pendingChildren() {
  static auto* v = new std::vector<PendingChild>;
  return *v;
}
// Whether pendingChildren holds any, for notePolled's check without the
// lock (the program's threads poll often). Under tableMu after each change.
std::atomic<bool> gChildrenPending{false};
void pendingChanged() {
  gChildrenPending.store(!pendingChildren().empty(), std::memory_order_release);
}
// Under tableMu: the pending children NCCL has made by now are non-blocking.
void resolvePendingChildren() {
  auto& pending = pendingChildren();
  for (auto it = pending.begin(); it != pending.end();) {
    // NCCL stores the child from its creation thread.
    const ncclComm_t child = __atomic_load_n(it->slot, __ATOMIC_ACQUIRE);
    if (child == nullptr) {
      ++it;
      continue;
    }
    nonBlockingComms().insert(child);
    GC_INFO(
        "comm %p is non-blocking: gradcomp waits for NCCL's enqueue of each call it makes on it",
        (void*)child);
    it = pending.erase(it);
  }
  pendingChanged();
}
// Revoked (ncclCommRevoke, or shrunk with NCCL_SHRINK_ABORT, which NCCL
// describes as a revoke and a shrink in one call) and not yet destroyed, with
// the reason their summary gives: gradcomp never sets them up again.
std::map<ncclComm_t, const char*>& revokedComms() {
  static auto* s = new std::map<ncclComm_t, const char*>;
  return *s;
}

// Those whose ncclCommDestroy the preload is running (markDestroying).
std::set<ncclComm_t>& destroyingComms() {
  static auto* s = new std::set<ncclComm_t>;
  return *s;
}

// In a forked child, under tableMu (which the fork kept for it): the
// communicators seen are the parent's, which the child neither made nor may
// use (NCCL's and gradcomp's state on them lives in the parent's CUDA context
// and threads). They are forgotten without being ended (their entries are
// left allocated: ending one would free the parent's gradcomp comm from the
// child), so that the child prints no summary of the parent's calls and a
// communicator of its own starts afresh.
void forgetAtFork() {
  (void)new std::map<ncclComm_t, EntryPtr>(std::move(table()));
  table().clear();
  nonBlockingComms().clear();
  pendingChildren().clear();
  pendingChanged();
  revokedComms().clear();
  destroyingComms().clear();
}

// NCCL_COMM_BLOCKING as NCCL reads it (ncclLoadParam): strtoll in base 0,
// unset where that sets errno; 0 or 1 overrides every communicator's config,
// any other value none; -1: no override. So "00", " 0", "0x0" and a word
// without digits ("false", "true") make every communicator non-blocking too,
// and "01" or "1 " blocking. Compared with the string "0" alone, a
// communicator NCCL made non-blocking was taken for a blocking one: no
// private split, so gradcomp polled the program's communicator while the
// program's own thread (PyTorch's watchdog) could poll it too.
int readEnvBlocking() {
  const char* env = getenv("NCCL_COMM_BLOCKING");
  if (env == nullptr || *env == '\0') return -1;
  errno = 0;
  const long long v = strtoll(env, nullptr, 0);
  return errno == 0 && (v == 0 || v == 1) ? (int)v : -1;
}

// Whether NCCL reads NCCL_COMM_BLOCKING afresh at each communicator: NCCL
// 2.29.7 and later do where NCCL_NO_CACHE, a comma-separated list of full
// variable names read once per process, names it or holds ALL.
bool envBlockingUncached() {
  static const bool uncached = [] {
    const char* list = getenv("NCCL_NO_CACHE");
    for (const char* p = list; p != nullptr && *p != '\0';) {
      const char* end = strchr(p, ',');
      const std::string name(p, end != nullptr ? end - p : strlen(p));
      if (name == "ALL" || name == "NCCL_COMM_BLOCKING") return true;
      p = end != nullptr ? end + 1 : nullptr;
    }
    return false;
  }();
  return uncached;
}

// NCCL reads the variable once per process, at its first communicator's
// creation, and keeps that value (its parameter cache, NCCL_PARAM) whatever
// the program sets later. So does this, from its own first read, made when
// it first sees a communicator (right after NCCL made it, or at its first
// call): reading it at each communicator, a program that set "0" for its
// first communicator and unset it later had its later communicators, which
// NCCL made non-blocking, taken for blocking ones (and the other way round).
int envBlocking() {
  if (envBlockingUncached()) return readEnvBlocking();
  static const int first = readEnvBlocking();
  return first;
}

// NCCL_COMM_BLOCKING=0 makes every communicator non-blocking, whatever its config.
bool envNonBlocking() {
  return envBlocking() == 0;
}

uint64_t fnv1a(const void* p, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
  const unsigned char* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

const char* methodName(gradcompMethod_t m) {
  switch (m) {
    case gradcompMethodNone:
      return "none";
    case gradcompMethodQsgd:
      return "qsgd";
    case gradcompMethodTopk:
      return "topk";
    case gradcompMethodRandk:
      return "randk";
    case gradcompMethodDgc:
      return "dgc";
    case gradcompMethodEnumMax:  // the range sentinel, not a method
      break;
  }
  return "?";
}

// The GRADCOMP_* variables the settings were read from, as they were then
// (the table's order; unset: not first), set once readSettings has run.
using SettingsEnv = std::vector<std::pair<bool, std::string>>;
std::atomic<const SettingsEnv*> gSettingsEnv{nullptr};

// The settings are read once per process, and every communicator uses them:
// a program that sets a GRADCOMP_* variable between communicators (a method
// for one process group only) had the later ones keep the first value
// without a word. Said once per variable, at the first communicator seen
// after the change.
void warnIfSettingsEnvChanged(ncclComm_t comm) {
  const SettingsEnv* then = gSettingsEnv.load(std::memory_order_acquire);
  if (then == nullptr) return;  // not read yet: this communicator's first call reads them
  size_t n = 0;
  const ParamSpec* table = paramTable(&n);
  for (size_t i = 0; i < n && i < then->size(); ++i) {
    const char* now = getenv(table[i].env);
    const std::pair<bool, std::string>& was = (*then)[i];
    if ((now != nullptr) == was.first && (now == nullptr || was.second == now)) continue;
    warnOnce(std::string("env-changed ") + table[i].env,
             "%s is %s now but was %s when the preload read its settings, at the process's first "
             "allreduce or reduce-scatter: they are read once per process, so NCCL comm %p uses "
             "the earlier value, as every communicator does (set GRADCOMP_* before that call)",
             table[i].env, now != nullptr ? shownValue(now).c_str() : "unset",
             was.first ? shownValue(was.second.c_str()).c_str() : "unset", (void*)comm);
  }
}

Settings* readSettings() {
  Settings* s = new Settings;
  {
    size_t n = 0;
    const ParamSpec* table = paramTable(&n);
    auto* env = new SettingsEnv;
    for (size_t i = 0; i < n; ++i) {
      const char* v = getenv(table[i].env);
      env->emplace_back(v != nullptr, v != nullptr ? v : "");
    }
    gSettingsEnv.store(env, std::memory_order_release);
  }
  // Every valid variable is applied even past a bad one, so this rank finds
  // the same calls eligible as its peers and joins their set-up (voting that
  // it failed, see decide) instead of leaving them waiting in it. A bad value
  // is said once, here, not also by the library at WARN.
  gradcompResult_t parsed;
  {
    ErrorsReportedByCaller quiet;
    parsed = configFromEnvLenient(&s->config);
  }
  if (parsed == gradcompSuccess) {
    s->ok = true;
  } else {
    s->why = gradcompGetLastError();
    fprintf(stderr, "gradcomp %d WARN bad configuration (%s); passing every call to NCCL\n",
            (int)getpid(), s->why.c_str());
  }
  const char* g = paramString("GRADCOMP_GROUP", "defer");
  if (strcasecmp(g, "fuse") == 0) {
    s->group = GroupMode::Fuse;
  } else if (strcasecmp(g, "pass") == 0) {
    s->group = GroupMode::Pass;
  } else if (strcasecmp(g, "defer") != 0) {
    fprintf(stderr, "gradcomp %d WARN GRADCOMP_GROUP=%s is not defer, fuse or pass; using defer\n",
            (int)getpid(), shownValue(g).c_str());
  }
  // gradcompConfigInit zeroes the struct first, so padding bytes hash alike.
  // privateComm is each rank's own ask, ORed by the set-up's vote (any
  // rank's splits every rank): ranks that differ in it still agree.
  gradcompConfig_t hashed = s->config;
  hashed.privateComm = 0;
  s->hash = fnv1a(&hashed, sizeof(hashed));
  s->hash = fnv1a(&s->group, sizeof(s->group), s->hash);
  return s;
}

void printSummary(CommEntry& e, bool waitForCalls) {
  if (logLevel() < LogLevel::Info) return;
  gradcompStats_t st;
  memset(&st, 0, sizeof(st));
  // decide() writes the entry's fields under callMu, and compressed calls
  // hold it. Once decided, the fields stay as they are. A decision in
  // progress may be waiting on a peer (an abort during set-up) and at exit a
  // thread may be stuck in a call: neither is waited for, and a decision in
  // progress is reported as such instead of read while it writes.
  std::unique_lock<std::mutex> lock(e.callMu, std::defer_lock);
  const bool deciding = e.mode == Mode::Undecided;
  const bool locked = waitForCalls && !deciding ? (lock.lock(), true) : lock.try_lock();
  if (!locked && deciding) {
    GC_INFO("summary comm %p: its set-up was still in progress", (void*)e.nccl);
    return;
  }
  if (locked && e.gc != nullptr) gradcompGetStats(e.gc, &st);
  const Settings& s = settings();
  char ratio[32] = "n/a";
  if (st.bytesOnWire > 0) {
    snprintf(ratio, sizeof(ratio), "%.2fx", (double)st.bytesIn / (double)st.bytesOnWire);
  }
  // DQ-SGD picks a width per call: which ones it used, "; bits 3:12 4:30".
  std::string widths;
  if (s.ok && s.config.bitsMode != gradcompBitsFixed) {
    for (int b = 0; b < 9; ++b) {
      if (st.callsPerBits[b] == 0) continue;
      widths += widths.empty() ? "; bits " : " ";
      widths += std::to_string(b) + ":" + std::to_string(st.callsPerBits[b]);
    }
  }
  char ranks[32] = "?";  // rank and size are queried only when a call could compress
  if (e.nranks > 0) snprintf(ranks, sizeof(ranks), "%d/%d", e.rank, e.nranks);
  GC_INFO(
      "summary comm %p rank %s method %s: %llu calls compressed, %llu passed through (%llu by "
      "auto), %llu bytes sent (%llu to other nodes) for %llu dense bytes (ratio %s); "
      "reduce-scatter: %llu compressed, %llu passed through (%llu by auto)%s%s%s",
      (void*)e.nccl, ranks, s.ok ? methodName(s.config.method) : "none",
      (unsigned long long)e.callsCompressed.load(),
      // A fused call gradcomp passed counts once in st and userCalls times in e.
      (unsigned long long)(e.callsPassed.load() + st.callsPassedThrough - st.callsAutoPassed +
                           e.callsAutoPassed.load()),
      (unsigned long long)e.callsAutoPassed.load(), (unsigned long long)st.bytesOnWire,
      (unsigned long long)st.bytesInterNode, (unsigned long long)st.bytesIn, ratio,
      (unsigned long long)e.rsCompressed.load(),
      (unsigned long long)(e.rsPassed.load() + e.rsAutoPassed.load()),
      (unsigned long long)e.rsAutoPassed.load(), widths.c_str(),
      e.reason.empty() ? "" : "; compression off: ", e.reason.c_str());
}

// Communicators still alive at exit get their summary line too.
struct SummaryAtExit {
  ~SummaryAtExit() {
    std::lock_guard<std::mutex> lock(tableMu());
    for (auto& kv : table()) printSummary(*kv.second, false);
  }
} gSummaryAtExit;

enum class Agreement { Agreed, SomeRankFailed, ConfigsDiffer, NotRun };

// Every rank contributes {ok, hash, ~hash}; after an ncclMin allreduce the
// first slot is 0 when any rank failed, and the other two give back this
// rank's hash and its complement only when every rank has the same hash.
// All ranks therefore reach the same verdict.
// Every rank's `n` words, reduced with ncclMin on e's communicator and
// `stream` into `words` on every rank, then waited for; false (why said)
// where this rank could not take part. `what` names the call for an error.
bool exchangeMin(CommEntry& e, cudaStream_t stream, uint64_t* words, size_t n, const char* what,
                 std::string* why) {
  // In mapped host memory where the device has none left: this rank still
  // joins, and a rank out of memory is one that failed, not one awaited. In
  // stream order on `stream` where the device can: the eligibility
  // comparison runs on every communicator, compressing or not, and a
  // cudaFree would wait for the whole device (another communicator's
  // pipeline-parallel send whose receive the peer posts only after this call
  // returns: a deadlock).
  ExchangeBuffer buf;
  cudaError_t err = buf.allocOnStream(n * sizeof(uint64_t), stream);
  if (err != cudaSuccess) {
    *why = std::string("CUDA: ") + cudaGetErrorString(err);
    return false;
  }
  uint64_t* dev = static_cast<uint64_t*>(buf.get());
  ncclResult_t nr = ncclSuccess;
  err = cudaMemcpyAsync(dev, words, n * sizeof(uint64_t), cudaMemcpyHostToDevice, stream);
  if (err == cudaSuccess) {
    nr = ncclApi()->allReduce(dev, dev, n, ncclUint64, ncclMin, e.nccl, stream);
    // A non-blocking communicator: its enqueue first (or its abort).
    if (nr == ncclInProgress) {
      if (ncclFinish(e.nccl, nr, &e.aborted, what, __FILE__, __LINE__) != gradcompSuccess) {
        *why = gradcompGetLastError();
        return false;
      }
      nr = ncclSuccess;
    }
    if (nr == ncclSuccess) {
      err = cudaMemcpyAsync(words, dev, n * sizeof(uint64_t), cudaMemcpyDeviceToHost, stream);
    }
    if (nr == ncclSuccess && err == cudaSuccess) err = cudaStreamSynchronize(stream);
  }
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    *why = std::string("CUDA: ") + cudaGetErrorString(err);
    return false;
  }
  if (nr != ncclSuccess) {
    *why = std::string("NCCL: ") + ncclApi()->getErrorString(nr);
    return false;
  }
  return true;
}

Agreement agree(CommEntry& e, cudaStream_t stream, bool localOk, std::string* why) {
  const uint64_t hash = settings().hash;
  uint64_t words[3] = {localOk ? 1ull : 0ull, hash, ~hash};
  if (!exchangeMin(e, stream, words, 3, "the set-up agreement's ncclAllReduce", why)) {
    return Agreement::NotRun;
  }
  if (words[0] == 0) return Agreement::SomeRankFailed;
  if (words[1] != hash || ~words[2] != hash) return Agreement::ConfigsDiffer;
  return Agreement::Agreed;
}

}  // namespace

bool voteMin(CommEntry& e, cudaStream_t stream, uint64_t mine, uint64_t* least, std::string* why) {
  *least = mine;
  return exchangeMin(e, stream, least, 1, "the fusion buffer's vote (ncclAllReduce)", why);
}

const Settings& settings() {
  static const Settings* s = readSettings();
  return *s;
}

bool eligible(size_t count, ncclDataType_t type, ncclRedOp_t op) {
  const Settings& s = settings();
  // A rank with a bad configuration is eligible as its peers are: it must
  // reach the agreement with them (see decide). A call of no elements goes to
  // NCCL as it is, whatever GRADCOMP_MIN_ELEMENTS (gradcomp would return at
  // once, and the summary count it as compressed).
  return count > 0 && s.config.method != gradcompMethodNone &&
         (type == ncclFloat32 || type == ncclFloat16 || type == ncclBfloat16) &&
         (op == ncclSum || op == ncclAvg) && count >= s.config.minElements;
}

bool opensAgreement(size_t count, ncclDataType_t type, ncclRedOp_t op) {
  return count > 0 && (type == ncclFloat32 || type == ncclFloat16 || type == ncclBfloat16) &&
         (op == ncclSum || op == ncclAvg);
}

void eligibilityWords(const gradcompConfig_t& config, GroupMode group,
                      uint64_t words[kEligibilityWords]) {
  const uint64_t values[kEligibilityWords / 2] = {
      (uint64_t)(int64_t)config.method, (uint64_t)config.minElements, (uint64_t)(int64_t)group};
  for (size_t i = 0; i < kEligibilityWords / 2; ++i) {
    words[2 * i] = values[i];
    words[2 * i + 1] = ~values[i];
  }
}

std::string eligibilityDisagreement(const uint64_t least[kEligibilityWords]) {
  static const char* const kNames[kEligibilityWords / 2] = {
      "GRADCOMP_METHOD", "GRADCOMP_MIN_ELEMENTS", "GRADCOMP_GROUP"};
  auto show = [](size_t i, uint64_t v) -> std::string {
    if (i == 0) return methodName((gradcompMethod_t)(int64_t)v);
    if (i == 1) return std::to_string((unsigned long long)v);
    switch ((GroupMode)(int64_t)v) {
      case GroupMode::Defer:
        return "defer";
      case GroupMode::Fuse:
        return "fuse";
      case GroupMode::Pass:
        return "pass";
    }
    return "?";
  };
  for (size_t i = 0; i < kEligibilityWords / 2; ++i) {
    const uint64_t lo = least[2 * i], hi = ~least[2 * i + 1];
    if (lo == hi) continue;
    return std::string(kNames[i]) + " is " + show(i, lo) + " on some ranks and " + show(i, hi) +
           " on others";
  }
  return "";
}

CommEntry::~CommEntry() {
  if (gc == nullptr && fusion == nullptr && fusionDone == nullptr) return;
  DeviceGuard guard(device);
  if (aborted.stopped()) {
    // The fusion buffers (and their event) stay allocated, drained or not, as
    // gradcomp leaves its own: cudaFree waits for the whole device, where
    // another communicator's kernel may be stuck on the dead peer until the
    // program aborts that one too, which it can do only once this
    // ncclCommAbort has returned.
    (void)gc::commAbort(gc);
    (void)cudaGetLastError();
    return;
  } else if (gc != nullptr) {
    // NCCL lets the program destroy its streams before ncclCommDestroy:
    // gradcompCommDestroy waits for the comm's last call on a stream of its
    // own, not on that call's stream.
    gradcompCommDestroy(gc);
  }
  if (fusion != nullptr) cudaFree(fusion);
  for (void* p : fusionRetired) cudaFree(p);
  if (fusionDone != nullptr) cudaEventDestroy(fusionDone);
}

namespace {
// DGC's momentum correction replaces the optimizer's (which the user set to
// 0): a communicator that passes its calls through keeps no velocity, so the
// training loses its momentum. Said once per reason, beside it (as the
// set-up's warnings are): fixing one cause leaves another's communicators
// without momentum too.
// why: the reason the communicator passes through (e.g. "one rank", which
// nothing else warns about: a single-GPU run under the preload).
void warnIfMomentumLost(const std::string& why) {
  const gradcompConfig_t& c = settings().config;
  if (c.method != gradcompMethodDgc || !c.momentumCorrection || !(c.momentum > 0.0f)) return;
  warnOncePerSentence(
      "GRADCOMP_METHOD=dgc: a communicator passes its calls through uncompressed (%s), and "
      "gradcomp's momentum correction (GRADCOMP_MOMENTUM=%g) does not reach them: if the "
      "optimizer's momentum was set to 0 for DGC, those gradients now train without momentum; "
      "fix the cause, or give the optimizer its momentum back",
      why.c_str(), (double)c.momentum);
}

// Under e.callMu: the entry passes every call through from now on.
void passAll(CommEntry& e, const std::string& why) {
  e.reason = why;
  e.mode = Mode::PassThrough;
  warnIfMomentumLost(why);
}

// A set-up that cannot start is one that failed, and said so (once per reason).
void setupFailed(CommEntry& e, const std::string& why) {
  warnOnce("setup " + why,
           "cannot set up compression for NCCL comm %p (%s); its calls pass through to NCCL "
           "unchanged",
           (void*)e.nccl, why.c_str());
  passAll(e, "set-up failed: " + why);
}

// Under e.callMu: agreeEligibility's work; true when the entry is still
// Undecided and agreed, so that the set-up may go on.
bool agreeLocked(CommEntry& e, cudaStream_t stream) {
  if (e.mode != Mode::Undecided) return false;
  if (e.agreed) return true;
  const Settings& s = settings();
  const NcclApi* api = ncclApi();
  ncclResult_t nr = api->commCount(e.nccl, &e.nranks);
  if (nr == ncclSuccess) nr = api->commUserRank(e.nccl, &e.rank);
  if (nr == ncclSuccess && api->commCuDevice != nullptr) nr = api->commCuDevice(e.nccl, &e.device);
  if (nr != ncclSuccess) {
    setupFailed(e, std::string("NCCL cannot tell the communicator's rank, size or device: ") +
                       api->getErrorString(nr));
    return false;
  }
  if (e.nranks < 2) {
    passAll(e, "one rank");
    return false;
  }
  // The later calls' eligibility and a group's device check ask NCCL nothing more.
  e.sizeSeen.store(e.nranks);
  e.deviceSeen.store(e.device);
  DeviceGuard guard(e.device);
  uint64_t words[kEligibilityWords];
  eligibilityWords(s.config, s.group, words);
  std::string why;
  const bool ran = exchangeMin(e, stream, words, kEligibilityWords,
                               "the eligibility agreement's ncclAllReduce", &why);
  // Aborted by another thread while this one waited in the exchange: NCCL
  // frees the communicator, so no NCCL call may name it again.
  if (e.aborted.stopped()) {
    passAll(e, "aborted during set-up");
    return false;
  }
  if (!ran) {
    // A bad setting of this rank's was said when it was read (settings), and
    // is the reason that counts.
    if (!s.ok) {
      passAll(e, "set-up failed: " + std::string(gradcompGetErrorString(gradcompInvalidArgument)) +
                     ": " + s.why);
    } else {
      setupFailed(e, why);
    }
    return false;
  }
  const std::string differs = eligibilityDisagreement(words);
  if (!differs.empty()) {
    warnOnce("eligibility " + differs,
             "the ranks of NCCL comm %p differ in a setting that decides which calls gradcomp "
             "compresses: %s; every rank passes its calls through to NCCL unchanged (give every "
             "rank the same value)",
             (void*)e.nccl, differs.c_str());
    passAll(e, "GRADCOMP_* settings differ between ranks: " + differs);
    return false;
  }
  if (s.config.method == gradcompMethodNone) {
    passAll(e, "GRADCOMP_METHOD=none");
    return false;
  }
  e.agreed = true;
  return true;
}

// Whether `stream` is being captured, which is said once: the entry's
// set-up waits for an eager call.
bool capturingNow(ncclComm_t comm, cudaStream_t stream) {
  if (!streamCapturing(stream)) return false;
  warnOnce("capture",
           "NCCL comm %p is used in a CUDA graph capture before gradcomp set it up; calls "
           "pass through until an eager call sets it up",
           (void*)comm);
  return true;
}
}  // namespace

EntryPtr deferredEntry(const Deferred& d) {
  if (!d.tracked) return entryFor(d.comm);
  EntryPtr e = d.entry.lock();
  return e && !e->released && !e->aborted.stopped() ? e : nullptr;
}

EntryPtr entryFor(ncclComm_t comm) {
  std::lock_guard<std::mutex> lock(tableMu());
  EntryPtr& e = table()[comm];
  if (!e) {
    resolvePendingChildren();
    e = std::make_shared<CommEntry>();
    e->nccl = comm;
    e->nonBlocking = nonBlockingComms().count(comm) > 0 || envNonBlocking();
    auto revoked = revokedComms().find(comm);
    if (revoked != revokedComms().end()) {
      e->reason = revoked->second;
      e->mode = Mode::PassThrough;
    }
    warnIfSettingsEnvChanged(comm);
  }
  return e;
}

EntryPtr existingEntry(ncclComm_t comm) {
  std::lock_guard<std::mutex> lock(tableMu());
  const auto it = table().find(comm);
  return it != table().end() ? it->second : nullptr;
}

void agreeEligibility(CommEntry& e, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(e.callMu);
  (void)agreeLocked(e, stream);
}

void decide(CommEntry& e, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(e.callMu);
  if (!agreeLocked(e, stream)) return;
  const Settings& s = settings();
  DeviceGuard guard(e.device);
  gradcompComm_t gc = nullptr;
  // A rank with a bad value joins the set-up exchange too, voting that it
  // failed: its peers are already waiting in it. Its errors are not logged
  // at WARN as they happen: the warning below names the one that counts.
  gradcompResult_t res;
  {
    ErrorsReportedByCaller quiet;
    res = commCreate(e.nccl, &s.config, s.ok ? nullptr : s.why.c_str(), &gc, &e.aborted,
                     e.nonBlocking);
  }
  const std::string localError = res == gradcompSuccess ? ""
                                                        : std::string(gradcompGetErrorString(res)) +
                                                              ": " + gradcompGetLastError();
  // Aborted by another thread (ncclCommAbort: a peer died while this thread
  // waited in the set-up's collectives): NCCL frees the communicator, so no
  // NCCL call may name it again; the gradcomp comm goes without waiting.
  auto abortedNow = [&] {
    if (!e.aborted.stopped()) return false;
    if (gc != nullptr) gc::commAbort(gc);
    passAll(e, "aborted during set-up");
    return true;
  };
  if (abortedNow()) return;
  std::string why;
  const Agreement a = agree(e, stream, res == gradcompSuccess, &why);
  if (abortedNow()) return;
  if (res == gradcompSuccess && a == Agreement::Agreed) {
    e.gc = gc;
    e.mode = Mode::Compress;
    GC_INFO("comm %p rank %d/%d: compressing eligible calls with %s", (void*)e.nccl, e.rank,
            e.nranks, methodName(s.config.method));
    return;
  }
  if (gc != nullptr) gradcompCommDestroy(gc);
  if (res != gradcompSuccess) {
    // Once per reason: another communicator's failure for a new one is said
    // too. A bad setting of this rank's was said when it was read (settings).
    if (!s.ok) return passAll(e, "set-up failed: " + localError);
    return setupFailed(e, localError);
  }
  switch (a) {
    case Agreement::SomeRankFailed:
      warnOnce("peer",
               "another rank of NCCL comm %p could not set up compression; every rank passes its "
               "calls through unchanged",
               (void*)e.nccl);
      return passAll(e, "set-up failed on another rank");
    case Agreement::ConfigsDiffer:
      warnOnce("config",
               "the ranks of NCCL comm %p have different GRADCOMP_* settings; every rank passes "
               "its calls through unchanged",
               (void*)e.nccl);
      return passAll(e, "GRADCOMP_* settings differ between ranks");
    default:
      warnOnce("agree " + why,
               "cannot agree with the other ranks of NCCL comm %p on compression (%s); its calls "
               "pass through unchanged",
               (void*)e.nccl, why.c_str());
      return passAll(e, "no agreement between ranks: " + why);
  }
}

void passAlways(CommEntry& e, const std::string& why) {
  std::lock_guard<std::mutex> lock(e.callMu);
  if (e.mode != Mode::Undecided) return;
  passAll(e, why);
}

void decideUnlessCapturing(CommEntry& e, ncclComm_t comm, cudaStream_t stream) {
  if (!capturingNow(comm, stream)) decide(e, stream);
}

void agreeUnlessCapturing(CommEntry& e, ncclComm_t comm, cudaStream_t stream) {
  if (!capturingNow(comm, stream)) agreeEligibility(e, stream);
}

void release(ncclComm_t comm, bool abort, const char* revoked) {
  EntryPtr e;
  {
    std::lock_guard<std::mutex> lock(tableMu());
    resolvePendingChildren();  // a child that ends unused: its mark goes now, not later
    // A slot still empty when its parent ends is one NCCL never writes: the
    // program may free it from now on.
    auto& pending = pendingChildren();
    pending.erase(std::remove_if(pending.begin(), pending.end(),
                                 [&](const PendingChild& c) {
                                   // NULL: ncclCommDestroy(NULL), not a grow's joiner slots.
                                   return comm != nullptr && c.parent == comm;
                                 }),
                  pending.end());
    pendingChanged();
    // Marked in the same step as the entry goes: a call on another thread
    // never finds the communicator unmarked and without its entry. A revoked
    // communicator stays non-blocking: a shrink of it without a config
    // inherits that.
    if (revoked != nullptr) {
      revokedComms()[comm] = revoked;
    } else {
      nonBlockingComms().erase(comm);
      revokedComms().erase(comm);
    }
    auto it = table().find(comm);
    if (it == table().end()) return;
    e = std::move(it->second);
    table().erase(it);
  }
  e->released = true;
  if (abort) {
    e->aborted.stop();
    // decide() publishes gc before the mode; a decision still in progress
    // leaves it to the entry's end, which aborts it too.
    if (e->mode == Mode::Compress && e->gc != nullptr) {
      DeviceGuard guard(e->device);
      commStop(e->gc);
    }
  }
  printSummary(*e, true);
}

bool nonBlockingFrom(const void* config, int blockingField, bool parentNonBlocking) {
  const int env = envBlocking();
  if (env >= 0) return env == 0;
  if (config == nullptr) return parentNonBlocking;
  return blockingField == 0;
}

void notePendingChild(ncclComm_t parent, ncclComm_t* slot) {
  std::lock_guard<std::mutex> lock(tableMu());
  pendingChildren().push_back({parent, slot});
  pendingChanged();
}

void notePolled() {
  if (!gChildrenPending.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> lock(tableMu());
  resolvePendingChildren();
}

void markDestroying(ncclComm_t comm, bool on) {
  std::lock_guard<std::mutex> lock(tableMu());
  if (on) {
    destroyingComms().insert(comm);
  } else {
    destroyingComms().erase(comm);
  }
}

bool destroying(ncclComm_t comm) {
  std::lock_guard<std::mutex> lock(tableMu());
  return destroyingComms().count(comm) > 0;
}

void noteCreated(ncclComm_t comm, bool nonBlocking) {
  // A new communicator may reuse the address of one whose end was not seen.
  release(comm);
  {
    std::lock_guard<std::mutex> lock(tableMu());
    destroyingComms().erase(comm);  // NCCL freed the old one: this one is new
    if (nonBlocking) nonBlockingComms().insert(comm);
  }
  if (!nonBlocking) return;
  GC_INFO("comm %p is non-blocking: gradcomp waits for NCCL's enqueue of each call it makes on it",
          (void*)comm);
}

namespace {
// A communicator whose work in flight an NCCL call is about to end
// (ncclCommAbort, a shrink with NCCL_SHRINK_ABORT): its entry, stopped (a
// set-up in progress on another thread stops at its next step instead of
// naming the communicator NCCL is about to free, decide; so does a
// compressed call's wait on a non-blocking one, commStopPolls); the gradcomp
// comm on it when it compresses; and whether that comm has NCCL
// sub-communicators of its own (the hierarchy's), whose stop must run in one
// NCCL group with NCCL's call: each abort waits for the kernels queued on its
// communicator, and the caller's stream can hold one communicator's kernels
// behind another's stuck on the dead peer, so no order of separate calls is
// safe.
struct Ending {
  EntryPtr e;
  gradcompComm* gc = nullptr;
  bool group = false;
};
Ending beginEnding(ncclComm_t comm) {
  Ending x;
  {
    std::lock_guard<std::mutex> lock(tableMu());
    auto it = table().find(comm);
    if (it != table().end()) x.e = it->second;
  }
  if (x.e) x.e->aborted.stop();
  // decide() publishes gc before the mode.
  x.gc = x.e && x.e->mode == Mode::Compress ? x.e->gc : nullptr;
  if (x.gc != nullptr) commStopPolls(x.gc);
  const NcclApi* api = ncclApi();
  x.group =
      x.gc != nullptr &&
      (x.gc->intraNccl != nullptr || x.gc->interNccl != nullptr || x.gc->ownNccl != nullptr) &&
      api->groupStart != nullptr && api->groupEnd != nullptr;
  return x;
}
// The gradcomp comm's stop (gradcompCommAbort's first half: its
// sub-communicators' aborts), inside the open group.
void stopInGroup(const Ending& x) {
  DeviceGuard guard(x.e->device);
  commStop(x.gc);
}
}  // namespace

ncclResult_t abortComm(ncclComm_t comm) {
  const RealNccl* real = realNccl();
  if (real->commAbort == nullptr) {
    release(comm, /*abort=*/true);
    return ncclSystemError;
  }
  const Ending x = beginEnding(comm);
  const NcclApi* api = ncclApi();
  // NCCL's first: aborting stops kernels that may be stuck on a dead peer;
  // then ours (gradcompCommAbort), which never waits on a peer; with
  // sub-communicators, in one NCCL group, which NCCL 2.22 and later abort
  // together.
  if (x.group) api->groupStart();
  const ncclResult_t r = ncclAnswered(real->commAbort(comm));
  if (x.group) stopInGroup(x);
  const ncclResult_t end = x.group ? api->groupEnd() : ncclSuccess;  // the grouped aborts run here
  release(comm, /*abort=*/true);  // stops the comm (if not above) and forgets the entry
  return r != ncclSuccess ? r : end;
}

bool failedTogether(gradcompComm_t gc) {
  return gc != nullptr && gc->failedTogether;
}

void noteRevoked(ncclComm_t comm) {
  release(comm, /*abort=*/true, "revoked communicator");
}

ncclResult_t shrinkAborting(ncclComm_t comm, const std::function<ncclResult_t()>& shrink) {
  const Ending x = beginEnding(comm);
  const NcclApi* api = ncclApi();
  // NCCL's shrink sets the parent's abort flag and waits, in the call, for
  // its kernels, which the caller's stream can hold behind a kernel of
  // gradcomp's sub-communicators stuck on the dead peer: their aborts come
  // first, in one NCCL group with the shrink (ncclCommAbort sets its flag at
  // once and waits at the group's end), so that no wait is on a kernel whose
  // abort has not begun.
  if (x.group) {
    api->groupStart();
    stopInGroup(x);
  }
  const ncclResult_t r = shrink();
  // The grouped aborts and the child's creation run here. A non-blocking
  // parent's group answers ncclInProgress, which NCCL's own shrink lets
  // through as ncclSuccess.
  const ncclResult_t end = x.group ? api->groupEnd() : ncclSuccess;
  // Even after a refused shrink: NCCL checks its arguments after it ended the
  // parent's work in flight, and gradcomp's comm is stopped.
  release(comm, /*abort=*/true, "shrunk with NCCL_SHRINK_ABORT");
  return r != ncclSuccess || end == ncclInProgress ? r : end;
}

bool isNonBlocking(ncclComm_t comm) {
  std::lock_guard<std::mutex> lock(tableMu());
  resolvePendingChildren();  // a child split again before its first collective
  return nonBlockingComms().count(comm) > 0 || envNonBlocking();
}

std::string warningKind(const char* sentence) {
  std::string kind;
  for (const char* p = sentence; *p != '\0';) {
    const char prev = p == sentence ? ' ' : p[-1];
    const bool inWord = isalnum((unsigned char)prev) || prev == '_';
    if (!inWord && p[0] == '0' && p[1] == 'x' && isxdigit((unsigned char)p[2])) {
      for (p += 2; isxdigit((unsigned char)*p);) ++p;
      kind += '#';
    } else if (!inWord && isdigit((unsigned char)*p)) {
      while (isdigit((unsigned char)*p)) ++p;
      kind += '#';
    } else {
      kind += *p++;
    }
  }
  return kind;
}

namespace {
void printWarning(const char* msg) {
  fprintf(stderr, "gradcomp %d WARN %s\n", (int)getpid(), msg);
}

// Whether `key` is new to this process's warnings (and now recorded). The
// keys are kinds of warnings, a few dozen at most; should one still carry a
// value of its own, the keys stop at kMaxWarningKinds and later new warnings
// are not printed (which is said once), rather than one line per call.
bool firstWarning(const std::string& key) {
  static std::mutex* mu = new std::mutex;
  static auto* seen = new std::set<std::string>;
  std::lock_guard<std::mutex> lock(*mu);
  if (seen->count(key) > 0) return false;
  if (seen->size() >= kMaxWarningKinds) {
    static bool said = false;
    if (!said) {
      said = true;
      printWarning("more distinct warnings than gradcomp records; later ones are not printed");
    }
    return false;
  }
  seen->insert(key);
  return true;
}

void warnSentenceOnce(const char* msg) {
  // Keyed apart from warnOnce's keys: a sentence never silences a keyed warning.
  if (firstWarning("sentence:" + warningKind(msg))) printWarning(msg);
}
}  // namespace

void warn(const char* fmt, ...) {
  char msg[1024];
  GC_FORMAT_ARGS(msg, fmt);
  printWarning(msg);
}

void warnOnce(const std::string& key, const char* fmt, ...) {
  if (!firstWarning(key)) return;
  char msg[1024];
  GC_FORMAT_ARGS(msg, fmt);
  printWarning(msg);
}

void warnOncePerSentence(const char* fmt, ...) {
  char msg[1024];
  GC_FORMAT_ARGS(msg, fmt);
  warnSentenceOnce(msg);
}

namespace {
// noteOwnError's sentence, and NCCL's last error as it was then. Arrays, as
// NCCL's own buffer is: ncclGetLastError's answer stays valid after it returns.
std::mutex gOwnErrorMu;
char gOwnError[1024] = "";
char gNcclErrorThen[1024] = "";
// The longest sentence that fits behind the prefix.
constexpr size_t kOwnSentence = sizeof(gOwnError) - sizeof("gradcomp: ") + 1;

const char* ncclLastError() {
#if GC_NCCL_HAS_LAST_ERROR
  const auto real = realNccl()->getLastError;
  const char* theirs = real != nullptr ? real(nullptr) : nullptr;
  return theirs != nullptr ? theirs : "";
#else
  return "";
#endif
}

void noteOwnSentence(const char* msg) {
  const char* theirs = ncclLastError();
  std::lock_guard<std::mutex> lock(gOwnErrorMu);
  snprintf(gOwnError, sizeof(gOwnError), "gradcomp: %s", msg);
  snprintf(gNcclErrorThen, sizeof(gNcclErrorThen), "%s", theirs);
}
}  // namespace

void noteOwnError(const char* fmt, ...) {
  char msg[kOwnSentence];
  GC_FORMAT_ARGS(msg, fmt);
  noteOwnSentence(msg);
}

void warnOwnError(const char* fmt, ...) {
  char msg[kOwnSentence];
  GC_FORMAT_ARGS(msg, fmt);
  warnSentenceOnce(msg);
  noteOwnSentence(msg);
}

void warnDeferredReleased(ncclComm_t comm) {
  const char* revoked = nullptr;
  {
    std::lock_guard<std::mutex> lock(tableMu());
    const auto it = revokedComms().find(comm);
    if (it != revokedComms().end()) revoked = it->second;
  }
  if (revoked != nullptr) {
    warnOwnError(
        "a call deferred to the end of a user group names a communicator revoked since (%p, %s: "
        "NCCL ended its work in flight): ncclInvalidUsage",
        (void*)comm, revoked);
    return;
  }
  warnOwnError(
      "a call deferred to the end of a user group names a communicator aborted or destroyed "
      "since (%p): ncclInvalidUsage",
      (void*)comm);
}

ncclResult_t ncclAnswered(ncclResult_t r) {
  if (r == ncclSuccess || r == ncclInProgress) return r;
  std::lock_guard<std::mutex> lock(gOwnErrorMu);
  gOwnError[0] = '\0';
  return r;
}

ncclResult_t awaitAnswered(ncclComm_t comm, ncclResult_t r, NcclStop* stop) {
  if (r != ncclInProgress) return r;
  r = ncclAwait(comm, r, stop);
  return stop != nullptr && stop->stopped() ? r : ncclAnswered(r);
}

const char* ownLastError(const char* theirs) {
  // The caller's own copy, read after the lock is gone: another thread's
  // noteOwnError or ncclAnswered rewrites the shared one.
  static thread_local char copy[sizeof(gOwnError)];
  std::lock_guard<std::mutex> lock(gOwnErrorMu);
  if (gOwnError[0] == '\0') return nullptr;
  // NCCL failed a call since: its sentence is the last error now.
  if (strncmp(theirs != nullptr ? theirs : "", gNcclErrorThen, sizeof(gNcclErrorThen) - 1) != 0) {
    gOwnError[0] = '\0';
    return nullptr;
  }
  memcpy(copy, gOwnError, sizeof(copy));
  return copy;
}

std::string ownErrorStanding() {
  const char* ours = ownLastError(ncclLastError());
  return ours != nullptr ? std::string(ours + sizeof("gradcomp: ") - 1) : std::string();
}

}  // namespace preload
}  // namespace gc
