// Communicator lifetime, per-buffer state, checkpointing of state, stats.
#include "comm.h"

#include <pthread.h>
#include <string.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "kernels/qsgd_math.cuh"
#include "abi.h"
#include "algorithms/algorithms.h"
#include "checks.h"
#include "codecs/bits_policy.h"
#include "backends/cuda/nccl_api.h"

namespace gc {

void splitAligned(size_t count, int parts, size_t align, size_t* off) {
  for (int j = 0; j <= parts; ++j) off[j] = alignedOffset(count, parts, align, j);
}

size_t alignedOffset(size_t count, int parts, size_t align, int j) {
  const size_t units = (count + align - 1) / align;
  const size_t per = (units + parts - 1) / parts;
  const size_t o = (size_t)j * per * align;
  return o < count ? o : count;
}

namespace {

// The comms that exist, each with the pins (CommPin) held on it: a comm
// registers itself when made and leaves when freed, so the C API can tell a
// comm from a pointer to freed memory, or to anything else, before it reads
// it. An address a later comm reuses is that comm's: a pointer kept past its
// comm's destroy names the new one.
struct LiveComm {
  std::atomic<int> pins{0};
  bool leaving = false;  // a destroy or abort has begun: no new pin
};

// One plain mutex, held for a hash lookup: calls on different comms meet
// only there. (A shared_mutex cannot be released in a forked child: glibc's
// rwlock takes an unlock by another thread id than the writer's for a
// reader's.)
struct CommRegistry {
  std::mutex mu;
  std::unordered_map<const gradcompComm*, LiveComm> comms;
};

CommRegistry* gRegistry = nullptr;

CommRegistry& registry() {
  // Never destroyed: a comm may be freed during static destruction. Held
  // across fork(), as the log's lock: a child forked while another thread
  // held it would otherwise wait forever at its first comm.
  static CommRegistry* const r = [] {
    gRegistry = new CommRegistry();
    pthread_atfork([] { gRegistry->mu.lock(); }, [] { gRegistry->mu.unlock(); },
                   [] { gRegistry->mu.unlock(); });
    return gRegistry;
  }();
  return *r;
}

// Made, its fork handlers registered, when the library is loaded: no first
// use is then in progress at a fork (a child would wait for it), and the
// handlers come before those of locks registered at their first use (the
// preload's table, the log): a fork takes the registry last, and nothing is
// taken while it is held.
[[maybe_unused]] const bool kRegistryAtLoad = (registry(), true);

gradcompResult_t notLive(const gradcompComm* c) {
  return setError(gradcompInvalidArgument,
                  "comm %p is not a live gradcomp communicator (destroyed, aborted or never "
                  "created): pass a comm gradcompCommCreate, gradcompCommCreateCpu or "
                  "gradcompCommCreateSocket made, before its gradcompCommDestroy or "
                  "gradcompCommAbort",
                  (const void*)c);
}

// Pins held on c (0 once it is gone).
int pinsOf(const gradcompComm* c) {
  CommRegistry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  const auto it = r.comms.find(c);
  return it == r.comms.end() ? 0 : it->second.pins.load();
}

}  // namespace

CommPin::CommPin(const gradcompComm* c) : c_(c) {
  if (c == nullptr) return;
  CommRegistry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  const auto it = r.comms.find(c);
  if (it == r.comms.end() || it->second.leaving) return;
  pins_ = &it->second.pins;
  pins_->fetch_add(1);
}

CommPin::~CommPin() {
  // The entry stays while pinned: a destroy refuses it, an abort waits.
  if (pins_ != nullptr) pins_->fetch_sub(1);
}

gradcompResult_t CommPin::check() const {
  return c_ == nullptr || pins_ != nullptr ? gradcompSuccess : notLive(c_);
}

gradcompResult_t commLeave(const gradcompComm* c, bool abort) {
  int busy = 0;
  {
    CommRegistry& r = registry();
    std::unique_lock<std::mutex> lock(r.mu);
    const auto it = r.comms.find(c);
    if (it == r.comms.end() || it->second.leaving) {
      lock.unlock();
      return notLive(c);
    }
    // Pins are taken under the lock only: none comes while this holds it,
    // and none once it is marked.
    busy = std::max(it->second.pins.load(), c->callsInFlight.load());
    if (abort || busy == 0) it->second.leaving = true;
  }
  if (!abort && busy != 0) {
    // Freeing the comm under a call another thread is making would pull its
    // state out from under it; as with NCCL, destroy comes after the calls.
    return setError(gradcompInvalidUsage,
                    "comm %p has %d call(s) in progress on other threads: destroy it after "
                    "they return (or abort it: gradcompCommAbort waits for them)",
                    (const void*)c, busy);
  }
  return gradcompSuccess;
}

gradcompResult_t CommCall::check() const {
  if (c_ != nullptr && c_->aborted) {
    return setError(gradcompInvalidUsage,
                    "comm %p was aborted (gradcompCommAbort); no call may use it", (void*)c_);
  }
  if (busy_) {
    return setError(gradcompInvalidUsage,
                    "comm %p (rank %d of %d): another call on it is in progress on another "
                    "thread; a comm takes one call at a time (order the calls of several "
                    "threads on one comm, as for an NCCL communicator)",
                    (void*)c_, c_->rank, c_->nranks);
  }
  return gradcompSuccess;
}

}  // namespace gc

gradcompComm::gradcompComm() {
  gc::CommRegistry& r = gc::registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.comms.try_emplace(this);
}

gradcompComm::~gradcompComm() {
  gc::CommRegistry& r = gc::registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.comms.erase(this);
}

gradcompResult_t gradcompComm::ensureWorkspace(size_t bytes) {
  if (bytes <= workspaceBytes) {
    if (backend->capturing()) workspaceCaptured = true;
    return gradcompSuccess;
  }
  if (backend->capturing()) {
    return gc::setError(gradcompInvalidUsage,
                        "a call needing %zu bytes of workspace (have %zu) is being captured into a "
                        "CUDA graph; make one eager call of this size first",
                        bytes, workspaceBytes);
  }
  // No wait here: release frees the old workspace only after the calls that
  // may still use it (backend.h), and this call has not touched it yet.
  void* p = nullptr;
  GC_CHECK(backend->alloc(bytes, &p));
  if (workspaceCaptured) {
    retiredWorkspaces.push_back(workspace);
  } else {
    backend->release(workspace);
  }
  workspace = p;
  workspaceBytes = bytes;
  workspaceCaptured = false;
  return gradcompSuccess;
}

gradcompResult_t gradcompComm::getState(const gc::StateKey& key, size_t count, gc::DType t,
                                        gc::BufferState** out) {
  auto it = states.find(key);
  if (it != states.end()) {
    if (backend->capturing()) it->second.captured = true;
    *out = &it->second;
    return gradcompSuccess;
  }
  if (backend->capturing()) {
    return gc::setError(gradcompInvalidUsage,
                        "first call for a buffer of %zu elements is being captured into a CUDA "
                        "graph; make one eager call first so its state exists",
                        count);
  }
  gc::BufferState s;
  GC_CHECK(allocState(std::get<0>(key), count, t, &s));
  *out = &states.emplace(key, s).first->second;
  return gradcompSuccess;
}

gc::SparseDecimals gc::SparseDecimals::of(const gradcompConfig_t& cfg) {
  SparseDecimals d;
  d.density = cfg.density, d.oversample = cfg.oversample, d.sampleRate = cfg.sampleRate;
  d.s = sparse::planSettings(cfg.density, cfg.oversample, cfg.sampleRate);
  return d;
}

gradcompComm::StateShape gradcompComm::stateShape(int kind, size_t count) const {
  StateShape sh;
  const bool sparse = cfg.method == gradcompMethodTopk || cfg.method == gradcompMethodRandk ||
                      cfg.method == gradcompMethodDgc;
  sh.residual = keepsResidual();
  sh.momentum = cfg.method == gradcompMethodDgc && cfg.momentumCorrection;
  // The reduce-scatter (kinds >= 2) quantizes once: no owner residual.
  const bool reduceScatter = kind >= 2;
  if (!sparse && !reduceScatter && cfg.ownerResidual) {
    // The largest chunk splitAligned gives this comm.
    const size_t d = cfg.bucketSize, units = (count + d - 1) / d;
    const size_t owner = (units + nranks - 1) / nranks * d;
    // Elias and the allgather quantize once and never read one (earlier
    // builds allocated it anyway, and saved its zeros).
    if (gc::allReduceKeepsOwnerResidual(*this)) {
      sh.ownerResidualCount = owner;
    } else {
      sh.unreadOwnerCount = owner;
    }
  }
  return sh;
}

gradcompResult_t gradcompComm::allocState(int kind, size_t count, gc::DType t,
                                          gc::BufferState* out) {
  // Callers bound count first (codecCheckCount); never a wrapped size.
  if (count > SIZE_MAX / sizeof(float))
    return gc::setError(gradcompInvalidArgument, "count=%zu is too large for a state of floats",
                        count);
  gc::BufferState s;
  s.count = count;
  s.dtype = t;
  const StateShape sh = stateShape(kind, count);
  gradcompResult_t res = gradcompSuccess;
  if (sh.residual) {
    res = backend->alloc(count * sizeof(float), reinterpret_cast<void**>(&s.residual));
  }
  if (res == gradcompSuccess && sh.momentum) {
    res = backend->alloc(count * sizeof(float), reinterpret_cast<void**>(&s.momentum));
  }
  if (res == gradcompSuccess && sh.ownerResidualCount) {
    s.ownerResidualCount = sh.ownerResidualCount;
    res = backend->alloc(s.ownerResidualCount * sizeof(float),
                         reinterpret_cast<void**>(&s.ownerResidual));
  }
  if (res != gradcompSuccess) {
    releaseState(s);
    return res;
  }
  *out = s;
  return gradcompSuccess;
}

void gradcompComm::dropState(gc::BufferState& s) {
  if (s.captured) {
    retiredStates.push_back(s);
    s.residual = s.ownerResidual = s.momentum = nullptr;
  } else {
    releaseState(s);
  }
}

void gradcompComm::releaseState(gc::BufferState& s) {
  backend->release(s.residual);
  backend->release(s.ownerResidual);
  backend->release(s.momentum);
  s.residual = s.ownerResidual = s.momentum = nullptr;
}

namespace {

bool validComm(gradcompComm_t c) {
  return c != nullptr && c->backend && c->transport;
}

// The caller's config, checked and filled out to the whole struct, or the
// GRADCOMP_* environment when there is none.
gradcompResult_t configOrEnv(const gradcompConfig_t* config, gradcompConfig_t* whole) {
  return config ? gc::validConfigFromCaller(config, whole) : gradcompConfigFromEnv(whole);
}

gradcompResult_t initComm(gradcompComm* c, const gradcompConfig_t* config) {
  GC_CHECK(configOrEnv(config, &c->cfg));
  c->sparseDecimals = gc::SparseDecimals::of(c->cfg);
  if (c->cfg.method == gradcompMethodDgc && c->cfg.momentumCorrection) {
    GC_INFO(
        "DGC momentum correction is on: gradcomp accumulates the velocity, so the "
        "optimizer's own momentum must be off");
  }
  return gradcompSuccess;
}

// What a rank of an NCCL comm checks and makes on its own, before the
// collective part of the set-up.
gradcompResult_t initNcclComm(gradcompComm* c, ncclComm_t nccl, int ncclDev,
                              const gradcompConfig_t* config) {
  GC_CHECK(initComm(c, config));
  int dev = -1;
  GC_CUDACHECK(cudaGetDevice(&dev));
  if (dev != ncclDev) {
    return gc::setError(gradcompInvalidUsage,
                        "current CUDA device %d differs from the NCCL communicator's device %d",
                        dev, ncclDev);
  }
  c->nccl = nccl;
  c->device = ncclDev;
  c->backend = gc::makeCudaBackend();
  c->sparse = gc::makeCudaSparseOps();
  GC_CHECK(c->backend->init());
  // The sparse counters and the call check's buffer are made now, inside
  // the set-up vote, never by a call (where one rank's failure would leave
  // its peers waiting, and cudaMalloc would wait for the whole device).
  GC_CHECK(c->sparse->reserve());
  c->transport = gc::makeNcclTransport(nccl, c->rank, c->nranks);
  return c->transport->reserve();
}

}  // namespace

namespace gc {

gradcompResult_t commCreate(ncclComm_t nccl, const gradcompConfig_t* config, const char* refused,
                            gradcompComm_t* comm, NcclStop* stop, bool nonBlocking) {
  // A NULL output on one rank is refused after this rank has joined the
  // set-up vote (below), as a refused setting is: returning at once would
  // leave its peers in the vote's allgather.
  if (comm != nullptr) *comm = nullptr;
  GC_ARG(nccl != nullptr, "nccl communicator is NULL");
  if (comm == nullptr && refused == nullptr) refused = "comm (output) is NULL";
  // Set-up allocates and syncs its own streams: allowed under another
  // thread's global-mode capture (device_guard.h).
  const RelaxedCaptureMode relaxed;
  std::unique_ptr<gradcompComm> c(new gradcompComm());
  const gc::NcclApi* api = gc::ncclApi();
  // A non-blocking communicator NCCL's thread is still making (or still
  // enqueueing the program's last call on) refuses every call until then.
  GC_CHECK(gc::ncclFinish(nccl, ncclInProgress, stop,
                          "the communicator's initialization or last call", __FILE__, __LINE__));
  // Without its rank, size and device a rank cannot join the set-up exchange.
  int ncclDev = -1;
  GC_NCCLCHECK(api->commUserRank(nccl, &c->rank));
  GC_NCCLCHECK(api->commCount(nccl, &c->nranks));
  GC_NCCLCHECK(api->commCuDevice(nccl, &ncclDev));
  // The exchange's buffer first; then, whatever the rank's own set-up gives,
  // it joins the exchange and votes with it.
  const gc::VoteGather gather = gc::ncclVoteGather(nccl, c->rank, c->nranks, ncclDev, stop);
  const gradcompResult_t local = refused != nullptr
                                     ? setError(gradcompInvalidArgument, "%s", refused)
                                     : initNcclComm(c.get(), nccl, ncclDev, config);
  gc::SetupVote mine =
      gc::makeSetupVote(local, c->cfg, gc::hostIdentity(),
                        local != gradcompSuccess ? gradcompGetLastError() : nullptr);
  if (nonBlocking) mine.wantsPrivate = 1;  // else as the config's privateComm
  const gradcompResult_t res = gc::setupNcclHierarchy(c.get(), mine, gather, stop);
  if (res != gradcompSuccess || comm == nullptr) {
    gc::destroyHierarchy(c.get());
    // (A vote this rank failed fails on every rank: never a comm to drop here.)
    return res != gradcompSuccess ? res
                                  : setError(gradcompInvalidArgument, "comm (output) is NULL");
  }
  GC_INFO("comm %p rank %d/%d method %d bits %d bucket %d", (void*)c.get(), c->rank, c->nranks,
          (int)c->cfg.method, c->cfg.bits, c->cfg.bucketSize);
  *comm = c.release();
  return gradcompSuccess;
}

namespace {

using Clock = std::chrono::steady_clock;

// gradcompCommAbort's bounds: the whole wait for calls in progress and the
// device work, and the part of it before the sub-communicators are aborted.
constexpr double kAbortWaitSec = 10;
constexpr double kAbortEnqueueSec = 1;

Clock::time_point after(Clock::time_point t, double sec) {
  return t + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(sec));
}

// True when no public call is in progress on c before the deadline (and,
// with `pins`, no entry point holds it: gradcompCommStop, say, which commStop
// itself runs under).
bool waitCalls(gradcompComm* c, Clock::time_point deadline, bool pins = false) {
  while (c->callsInFlight > 0 || (pins && pinsOf(c) > 0)) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Frees what destroy and abort both free, once nothing uses it. An aborted
// comm's sparse counters and DQ-SGD pinned mirrors are left (SparseOps::
// abandon, abandonBitsHistory; the transports skip their buffers once
// aborted): their frees would wait for the whole device.
void freeComm(gradcompComm* comm, const char* how, bool aborted) {
  if (aborted && comm->sparse) comm->sparse->abandon();
  if (aborted) {
    for (auto& kv : comm->states) gc::abandonBitsHistory(kv.second);
    for (auto& s : comm->retiredStates) gc::abandonBitsHistory(s);
  }
  if (comm->backend) {
    for (auto& kv : comm->states) comm->releaseState(kv.second);
    comm->backend->release(comm->workspace);
    for (void* w : comm->retiredWorkspaces) comm->backend->release(w);
    for (auto& s : comm->retiredStates) comm->releaseState(s);
  }
  gc::destroyHierarchy(comm);
  GC_INFO("comm %p %s: %llu calls compressed, %llu passed through", (void*)comm, how,
          (unsigned long long)comm->stats.callsCompressed,
          (unsigned long long)comm->stats.callsPassedThrough);
  delete comm;
}

}  // namespace

void commStop(gradcompComm* c) {
  if (c->aborted.exchange(true)) {
    // A stop in progress on another thread (gradcompCommStop beside a
    // gradcompCommAbort): wait for its end, so that the abort frees nothing
    // it still uses and its sub-communicators are aborted before the free.
    // Bounded: that stop waits at most kAbortEnqueueSec for the calls, then
    // on no peer.
    while (!c->stopped) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return;
  }
  for (Transport* t :
       {c->transport.get(), c->intra.get(), c->inter ? c->inter->transport.get() : nullptr}) {
    if (t != nullptr) t->abort();
  }
  // A call that is only enqueueing NCCL work finishes it before the
  // sub-communicators go; one stuck in a host sync on them is what the abort
  // below releases.
  waitCalls(c, after(Clock::now(), kAbortEnqueueSec));
  const NcclApi* api = ncclApi();
  // In one NCCL group (NCCL 2.22 and later abort a group's communicators
  // together): ncclCommAbort waits for the kernels enqueued on its
  // communicator, and the two sub-communicators' kernels share the caller's
  // stream, so aborting one alone can wait forever for its kernel queued
  // behind the other's, stuck on the dead peer (the node comm's behind the
  // inter-node comm's on one rank, the reverse on another).
  const bool group =
      (c->intraNccl != nullptr || c->interNccl != nullptr || c->ownNccl != nullptr) &&
      api->groupStart != nullptr && api->groupEnd != nullptr;
  if (group) api->groupStart();
  for (ncclComm_t* sub : {&c->intraNccl, &c->interNccl, &c->ownNccl}) {
    if (*sub != nullptr && api->commAbort != nullptr) api->commAbort(*sub);
    *sub = nullptr;
  }
  if (group) api->groupEnd();
  c->stopped = true;  // the last use of c here: an abort waiting for it may free it
}

void commStopPolls(gradcompComm* c) {
  if (c->transport) c->transport->abort();
}

namespace {

// gradcompCommAbort once commLeave has let it begin.
bool abortLeaving(gradcompComm* comm) {
  const auto deadline = after(Clock::now(), kAbortWaitSec);
  commStop(comm);
  // Calls in progress now wait on nothing but their own work.
  if (!waitCalls(comm, deadline, true)) {
    GC_WARN(
        "comm %p aborted while %d call(s) on other threads had not returned after %g s: its "
        "memory is left allocated",
        (void*)comm, std::max((int)comm->callsInFlight, pinsOf(comm)), kAbortWaitSec);
    return false;
  }
  // NCCL's abort frees once its kernels have exited; freeing memory a kernel
  // may still touch is undefined, so a comm whose work has not drained (a
  // kernel behind one of a communicator nobody aborted) is left allocated.
  // The drain waits on the comm's own stream, ordered after the last call's
  // end: that call's stream may be gone (NCCL lets the program destroy it).
  const double left = std::chrono::duration<double>(deadline - Clock::now()).count();
  if (comm->backend) comm->backend->useOwnStream();
  if (comm->backend && !comm->backend->drain(left > 0 ? left : 0)) {
    GC_WARN(
        "comm %p aborted while its device work had not finished after %g s: its memory is "
        "left allocated (abort every NCCL communicator with a dead peer first)",
        (void*)comm, kAbortWaitSec);
    return false;
  }
  // A CUDA graph's replay of a captured call runs on a stream the drain
  // cannot see, and waiting for the whole device could wait on a dead peer.
  if (comm->backend && comm->backend->usedByGraphs()) {
    GC_WARN(
        "comm %p aborted after calls of it were captured into CUDA graphs: its memory is "
        "left allocated (a replay may still read it)",
        (void*)comm);
    return false;
  }
  freeComm(comm, "aborted", true);
  return true;
}

}  // namespace

bool commAbort(gradcompComm* comm) {
  if (comm == nullptr) return true;
  return commLeave(comm, true) == gradcompSuccess && abortLeaving(comm);
}

}  // namespace gc

extern "C" {

GC_EXPORT gradcompResult_t gradcompCommCreate(ncclComm_t nccl, const gradcompConfig_t* config,
                                              gradcompComm_t* comm) {
  return gc::guarded([&] { return gc::commCreate(nccl, config, nullptr, comm); });
}

namespace {

// The comms are owned here until every one is made and the hierarchy set
// up: a failure, or an exception (out of host memory), frees them all and
// leaves `comms` all NULL.
gradcompResult_t commCreateCpu(int nranks, const gradcompConfig_t* config, gradcompComm_t* comms) {
  GC_ARG(comms != nullptr, "comms (output array) is NULL");
  GC_ARG(nranks >= 1 && nranks <= 1024, "nranks=%d is out of range 1..1024", nranks);
  std::fill(comms, comms + nranks, nullptr);
  gradcompConfig_t cfg;
  GC_CHECK(configOrEnv(config, &cfg));
  auto transports = gc::makeCpuWorld(nranks, cfg.cpuTimeoutSec);
  std::vector<std::unique_ptr<gradcompComm>> made;
  std::vector<gradcompComm_t> raw(nranks);
  for (int r = 0; r < nranks; ++r) {
    made.emplace_back(new gradcompComm());
    gradcompComm* c = made.back().get();
    initComm(c, &cfg);
    c->rank = r;
    c->nranks = nranks;
    c->backend = gc::makeCpuBackend();
    c->sparse = gc::makeCpuSparseOps();
    c->transport = std::move(transports[r]);
    raw[r] = c;
  }
  GC_CHECK(gc::setupCpuHierarchy(raw.data(), nranks));
  for (int r = 0; r < nranks; ++r) comms[r] = made[r].release();
  return gradcompSuccess;
}

}  // namespace

GC_EXPORT gradcompResult_t gradcompCommCreateCpu(int nranks, const gradcompConfig_t* config,
                                                 gradcompComm_t* comms) {
  return gc::guarded([&] { return commCreateCpu(nranks, config, comms); });
}

namespace {

gradcompResult_t commCreateSocket(int nranks, int rank, const char* root,
                                  const gradcompConfig_t* config, gradcompComm_t* comm) {
  GC_ARG(comm != nullptr, "comm (output) is NULL");
  *comm = nullptr;
  GC_ARG(nranks >= 1 && nranks <= 1024, "nranks=%d is out of range 1..1024", nranks);
  GC_ARG(rank >= 0 && rank < nranks, "rank=%d is out of range 0..%d (nranks=%d)", rank, nranks - 1,
         nranks);
  GC_ARG(root != nullptr, "root address is NULL: give rank 0's \"host:port\"");
  std::unique_ptr<gradcompComm> c(new gradcompComm());
  c->rank = rank;
  c->nranks = nranks;
  // A rank whose own config is refused still joins the world, so the others
  // hear its sentence in the set-up vote instead of waiting for it.
  const gradcompResult_t local = initComm(c.get(), config);
  std::string why = local != gradcompSuccess ? gradcompGetLastError() : "";
  gradcompConfig_t fallback;
  gradcompConfigInit(&fallback);
  const double timeout =
      local == gradcompSuccess ? c->cfg.cpuTimeoutSec : (double)fallback.cpuTimeoutSec;
  std::shared_ptr<gc::SocketMesh> mesh;
  GC_CHECK(gc::makeSocketMesh(nranks, rank, root, timeout, &mesh));
  std::vector<int> all(nranks);
  for (int r = 0; r < nranks; ++r) all[r] = r;
  c->backend = gc::makeCpuBackend();
  c->sparse = gc::makeCpuSparseOps();
  c->transport = gc::makeSocketTransport(mesh, all, rank, 0);
  // One process per rank over real links: the host clock measures them (auto).
  c->autoState.timeOnHost = true;
  const gc::SetupVote mine = gc::makeSetupVote(local, c->cfg, gc::hostIdentity(),
                                               local != gradcompSuccess ? why.c_str() : nullptr);
  GC_CHECK(gc::setupSocketHierarchy(c.get(), mine, mesh));
  GC_INFO("comm %p rank %d/%d over TCP (root %s): method %d bits %d bucket %d, %d node(s)",
          (void*)c.get(), rank, nranks, root, (int)c->cfg.method, c->cfg.bits, c->cfg.bucketSize,
          c->topo.nodes);
  *comm = c.release();
  return gradcompSuccess;
}

}  // namespace

GC_EXPORT gradcompResult_t gradcompCommCreateSocket(int nranks, int rank, const char* root,
                                                    const gradcompConfig_t* config,
                                                    gradcompComm_t* comm) {
  return gc::guarded([&] { return commCreateSocket(nranks, rank, root, config, comm); });
}

GC_EXPORT gradcompResult_t gradcompCommDestroy(gradcompComm_t comm) {
  if (comm == nullptr) return gradcompSuccess;
  // A second destroy, or one of a pointer that never was a comm, is refused
  // before anything reads it; so is one while calls are in progress.
  GC_CHECK(gc::commLeave(comm, false));
  gc::OnCommDevice onDevice(comm);
  if (comm->backend) {
    comm->backend->useOwnStream();  // waits for the last call; its stream may be gone
    comm->backend->sync();
    // A graph that captured a call may still be replaying it on a stream
    // gradcomp never saw (the frees wait for eager calls only).
    if (comm->backend->usedByGraphs()) comm->backend->syncDevice();
  }
  gc::freeComm(comm, "destroyed", false);
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompCommStop(gradcompComm_t comm) {
  // Pinned: an abort on another thread waits for this stop before it frees.
  const gc::CommPin pin(comm);
  GC_CHECK(pin.check());
  if (comm != nullptr) gc::commStop(comm);
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompCommAbort(gradcompComm_t comm) {
  if (comm == nullptr) return gradcompSuccess;
  GC_CHECK(gc::commLeave(comm, true));  // a second abort is refused here
  gc::OnCommDevice onDevice(comm);
  gc::abortLeaving(comm);
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompCommRank(gradcompComm_t comm, int* rank) {
  const gc::CommPin pin(comm);
  GC_CHECK(pin.check());
  GC_ARG(validComm(comm) && rank, "comm=%p or rank=%p is NULL", (void*)comm, (void*)rank);
  *rank = comm->rank;
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompCommSize(gradcompComm_t comm, int* size) {
  const gc::CommPin pin(comm);
  GC_CHECK(pin.check());
  GC_ARG(validComm(comm) && size, "comm=%p or size=%p is NULL", (void*)comm, (void*)size);
  *size = comm->nranks;
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompCommLayout(gradcompComm_t comm, int* nodes, int* localSize) {
  const gc::CommPin pin(comm);
  GC_CHECK(pin.check());
  GC_ARG(validComm(comm) && nodes && localSize, "comm=%p, nodes=%p or localSize=%p is NULL",
         (void*)comm, (void*)nodes, (void*)localSize);
  *nodes = comm->topo.nodes;
  *localSize = comm->topo.localSize;
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompCommResetState(gradcompComm_t comm) {
  const gc::CommPin pin(comm);
  GC_CHECK(pin.check());
  GC_ARG(validComm(comm), "comm is NULL");
  gc::OnCommDevice onDevice(comm);
  gc::CommCall call(comm);  // gradcompCommAbort waits for it
  GC_CHECK(call.check());
  comm->backend->useOwnStream();  // the last call's stream may be gone
  GC_CHECK(comm->backend->sync());
  for (auto& kv : comm->states) comm->dropState(kv.second);
  comm->states.clear();
  comm->step = 0;
  comm->stateCalls = 0;
  comm->firstStateReuse = 0;
  // The next call checks that the ranks agree (a rank that did not reset is
  // at another step): every rank that reset runs the check; on NCCL a rank
  // that did not would not join it, hence reset is collective (gradcomp.h).
  comm->verifyNext = true;
  comm->stateDigest = 0;
  return comm->backend->setStep(0);
}

GC_EXPORT gradcompResult_t gradcompCommRetune(gradcompComm_t comm, cudaStream_t stream) {
  const gc::CommPin pin(comm);
  GC_CHECK(pin.check());
  GC_ARG(validComm(comm), "comm is NULL");
  gc::OnCommDevice onDevice(comm);
  gc::IeeeHostMath ieee;  // the timed calls compute on this thread (CPU backend)
  gc::CommCall call(comm);
  GC_CHECK(call.check());
  comm->backend->setStream(stream);
  comm->transport->setStream(stream);
  return gc::autoRetune(comm);
}

GC_EXPORT gradcompResult_t gradcompGetStatsSized(gradcompComm_t comm, gradcompStats_t* stats,
                                                 size_t structSize) {
  const gc::CommPin pin(comm);
  GC_CHECK(pin.check());
  GC_ARG(validComm(comm) && stats, "comm or stats is NULL");
  GC_CHECK(gc::checkStatsSize(structSize));
  gradcompStats_t whole = comm->stats;
  whole.steps = comm->step;
  memcpy(stats, &whole, structSize);
  return gradcompSuccess;
}

// For binaries built against headers before 0.3 (the header's macro of the
// same name calls the Sized form).
#undef gradcompGetStats

GC_EXPORT gradcompResult_t gradcompGetStats(gradcompComm_t comm, gradcompStats_t* stats) {
  return gradcompGetStatsSized(comm, stats, gc::kLegacyStatsSize);
}

}  // extern "C"
