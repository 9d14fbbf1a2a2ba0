// gradcompComm: wraps (never owns) an NCCL communicator, or one rank of an
// in-process CPU world. Holds the config, backend, transport, workspace,
// per-buffer state (residuals, momentum) and stats.
#pragma once

#include <stdint.h>

#include <atomic>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "autotune.h"
#include "backends/backend.h"
#include "backends/cuda/device_guard.h"
#include "backends/sparse_ops.h"
#include "gradcomp.h"
#include "backends/transport.h"
#include "topology.h"

namespace gc {

struct BitsHistory;  // DQ-SGD statistics and history (bits_policy.cc)
struct CallScratch;  // the algorithms' per-call arrays (algorithms/algorithms.h)

// Per-buffer state, keyed by (recvbuff, count, dtype) or by an explicit key.
// All arrays live in backend memory and are zero at creation.
struct BufferState {
  size_t count = 0;
  DType dtype = DType::F32;
  float* residual = nullptr;       // error feedback (DGC: the accumulated velocity v)
  float* ownerResidual = nullptr;  // two-shot: residual of the owner's re-encode (chunk)
  size_t ownerResidualCount = 0;
  float* momentum = nullptr;  // DGC momentum u
  uint64_t calls = 0;         // compressed calls on this buffer (warm-up, DQ-SGD)
  int bitsNext = 0;           // DQ-SGD: bit width chosen for the next call (0: config bits)
  std::shared_ptr<BitsHistory> bitsHistory;  // DQ-SGD modes only
  bool captured = false;                     // a captured call used it: a CUDA graph may replay it
  // A passed call sent the residual (residualPassThrough) and no call that
  // may compress has found this state since: later passes have none to send.
  bool residualSent = false;
  // A DGC momentum pass on a hierarchical comm (collective.h,
  // momentumPassThrough) kept this rank's velocity u and v over the whole
  // buffer, of its own gradients, where a compressed call keeps them on this
  // rank's shard only, of the node's sums: the next compressed call first sums
  // them within the node into the shards' ranks (hierFoldState), or what the
  // node's other ranks held on a rank's shard would stay there, frozen.
  bool unsharded = false;
};

using StateKey = std::tuple<int, uint64_t, size_t, int>;  // (kind, ptr-or-key, count, dtype)

// The sparse plan's float settings as the decimals they were given as
// (sparse::planSettings), with the config values they came from.
struct SparseDecimals {
  float density = -1, oversample = -1, sampleRate = -1;
  sparse::PlanSettings s{};
  static SparseDecimals of(const gradcompConfig_t& cfg);
  bool cameFrom(const gradcompConfig_t& cfg) const {
    return density == cfg.density && oversample == cfg.oversample && sampleRate == cfg.sampleRate;
  }
};

}  // namespace gc

struct gradcompComm {
  // Every comm is registered while it exists (gc::CommPin): the C API
  // refuses a pointer that is not one before it reads it.
  gradcompComm();
  ~gradcompComm();
  gradcompComm(const gradcompComm&) = delete;
  gradcompComm& operator=(const gradcompComm&) = delete;

  gradcompConfig_t cfg;
  // cfg's sparse settings as decimals, worked out where cfg is set (initComm,
  // makeInterComm); sparsePlanSettings() reads them.
  gc::SparseDecimals sparseDecimals;
  int rank = 0;
  int nranks = 1;
  // A hierarchy's inter-node child comm (rank = node): its parent's rank,
  // which its warnings name; -1 otherwise.
  int parentRank = -1;
  ncclComm_t nccl = nullptr;  // null for the CPU backend
  // The NCCL comm's CUDA device (-1: the CPU backend). The C API's entry
  // points make it current for their scope (OnCommDevice): NCCL's calls work
  // from any current device, and so must gradcomp's (its allocations, kernels
  // and events go to the current device).
  int device = -1;
  // Shared with the inter-node child comm of a hierarchical comm.
  std::shared_ptr<gc::Backend> backend;
  std::unique_ptr<gc::Transport> transport;
  std::shared_ptr<gc::SparseOps> sparse;
  gc::Topology topo;
  // Hierarchical comms: the ranks of this node, and a child comm over the
  // ranks of this local rank on every node (rank = node) that runs the
  // compressed middle stage. The NCCL sub-communicators are owned here.
  std::unique_ptr<gc::Transport> intra;
  std::unique_ptr<gradcompComm> inter;
  ncclComm_t intraNccl = nullptr, interNccl = nullptr;
  // The program communicator's private split, made when a rank asked for it
  // (privateComm, or a communicator known to be non-blocking;
  // setupNcclHierarchy), on which the flat transport runs; owned here.
  ncclComm_t ownNccl = nullptr;
  std::map<gc::StateKey, gc::BufferState> states;
  // The algorithms' per-call arrays (layouts, argument lists;
  // gc::callScratch), refilled by every call and kept for their capacity, so
  // that a steady-state call allocates nothing. A comm takes one call at a
  // time (gc::CommCall); a hierarchy's child comm has its own. Made at the
  // first call that needs it.
  std::shared_ptr<gc::CallScratch> callScratch;
  void* workspace = nullptr;
  size_t workspaceBytes = 0;
  // A captured call used the workspace: a CUDA graph may replay it, so
  // growing it keeps the old one allocated (retiredWorkspaces) until the comm
  // is freed instead of leaving the graph with freed memory.
  bool workspaceCaptured = false;
  std::vector<void*> retiredWorkspaces;
  // States a reset or load replaced that a captured call used, kept allocated
  // for the same reason until the comm is freed.
  std::vector<gc::BufferState> retiredStates;
  gradcompStats_t stats{};
  uint64_t step = 0;  // compressed calls so far: part of every RNG key
  // Since creation, the last reset or load: the calls that found or made a
  // buffer's state (compressed ones, and those DGC's momentum passes
  // through), and how many had been made when one first found a state it
  // held (0: none yet; the length of the program's step); and whether a
  // buffer new after many calls was warned about (gc::findState).
  uint64_t stateCalls = 0;
  uint64_t firstStateReuse = 0;
  bool warnedLateBuffer = false;
  gc::AutoState autoState;  // GRADCOMP_AUTO decision (autotune.h)
  // gradcompCommSetGradScale: the factor the caller's gradients carry, whose
  // units the states are in (1 at creation; kept by a reset, restored by a
  // load). DGC clips at clipNorm times it.
  float gradScale = 1.0f;
  // Set by a state load, reset or forget: the next call first checks that
  // every rank is at the same step (Transport::verifyCall).
  bool verifyNext = false;
  // The schedule of the states the last load restored (gc::stateDigest in
  // state.cc; 0 at creation and after a reset), plus a record of each key
  // or buffer forgotten since (forgetStates), part of every call's agreement
  // (CallInfo::state).
  uint32_t stateDigest = 0;
  bool warnedCheckCapture = false;  // GRADCOMP_CHECK_CALLS skipped a captured call
  // The current call failed on every rank alike, after the ranks compared it
  // (a call agreement that found them different, GRADCOMP_CHECK_CALLS's
  // vote): no rank may then hand the call to NCCL as it is, which the
  // preload does with other calls refused before anything was enqueued.
  bool failedTogether = false;
  // gradcompCommAbort: set once abort begins (every later call fails), and
  // the public calls in progress, which abort waits for before it frees.
  std::atomic<bool> aborted{false};
  std::atomic<int> callsInFlight{0};
  // The thread whose public call (gc::CommCall) holds the comm, as its
  // gc::threadToken(), or null: a call from another thread meanwhile is
  // refused (a comm takes one call at a time, gradcomp.h).
  std::atomic<const void*> callOwner{nullptr};
  // gc::commStop has finished: a stop or abort on another thread that found
  // the comm already stopping waits for this before it returns (or frees).
  std::atomic<bool> stopped{false};

  // RNG key of one encode of this call (see gc::KeySpec); it carries the
  // QSGD rounding and levels, so every algorithm's QSGD encode follows
  // GRADCOMP_ROUNDING and GRADCOMP_LEVELS.
  gc::KeySpec key(uint64_t callStep, uint64_t stream) const {
    gc::KeySpec k{cfg.seed, callStep, backend->deviceStep(), (uint64_t)rank, stream, true};
    k.nearest = cfg.rounding == gradcompRoundNearest;
    k.square = cfg.levels == gradcompLevelsSquare;
    return k;
  }
  // Grows the workspace to at least `bytes` (never while capturing).
  gradcompResult_t ensureWorkspace(size_t bytes);
  // Finds or creates the state of a buffer; arrays allocated as the method needs.
  gradcompResult_t getState(const gc::StateKey& key, size_t count, gc::DType t,
                            gc::BufferState** out);
  // The arrays a buffer of `count` elements of state kind `kind` (StateKey's
  // first member) has under this comm's config (what getState allocates and a
  // loaded state must match).
  struct StateShape {
    bool residual = false, momentum = false;
    size_t ownerResidualCount = 0;  // 0: none
    // The owner residual a comm whose algorithm never reads one (Elias, the
    // allgather) does not allocate, but that blobs of earlier builds hold
    // (zeros, as allocated): a load skips it. 0 where there is none.
    size_t unreadOwnerCount = 0;
  };
  StateShape stateShape(int kind, size_t count) const;
  // Whether a buffer keeps a residual (error feedback, or DGC's velocity):
  // what stateShape allocates and the algorithms size their workspace by.
  bool keepsResidual() const { return cfg.errorFeedback || cfg.method == gradcompMethodDgc; }
  // The sparse plan's settings as decimals: sparseDecimals where cfg still
  // holds the values they came from, else worked out from cfg (a comm built
  // by hand, whose cfg is set directly).
  gc::sparse::PlanSettings sparsePlanSettings() const {
    return sparseDecimals.cameFrom(cfg) ? sparseDecimals.s : gc::SparseDecimals::of(cfg).s;
  }
  // A state a reset or load replaces: freed, or retired when a captured call
  // used it.
  void dropState(gc::BufferState& s);
  // A new state (zeroed arrays of stateShape(kind, count)), not yet in `states`.
  gradcompResult_t allocState(int kind, size_t count, gc::DType t, gc::BufferState* out);
  void releaseState(gc::BufferState& s);
  // Ranks on other nodes than this one.
  int remotePeers() const {
    int n = 0;
    for (int j = 0; j < nranks; ++j) n += topo.remote(j, rank);
    return n;
  }
};

namespace gc {
// Splits [0, count) into `parts` chunks aligned to `align` elements; chunk j
// is [off[j], off[j+1]). Chunks may be empty when count is small.
void splitAligned(size_t count, int parts, size_t align, size_t* off);
// off[j] of splitAligned's split, alone (no array).
size_t alignedOffset(size_t count, int parts, size_t align, int j);

// gradcompCommCreate. A non-null `refused` is this rank's configuration
// error found before (the LD_PRELOAD library's bad GRADCOMP_* value): the
// rank still joins the collective set-up, voting that it failed, so that
// its peers, already in the exchange, fail with its sentence instead of
// waiting for it; the result is gradcompInvalidArgument on every rank.
// A non-null `stop` stopped by another thread (the LD_PRELOAD library's
// ncclCommAbort of `nccl`, which frees it) ends the set-up after its vote,
// before it splits `nccl`, or while it waits for a non-blocking `nccl`:
// gradcompInvalidUsage. `nonBlocking`: the caller knows `nccl` is
// non-blocking (the LD_PRELOAD library saw it made), so that the comm
// exchanges on a private split of it (setupNcclHierarchy), as the config's
// privateComm asks too.
gradcompResult_t commCreate(ncclComm_t nccl, const gradcompConfig_t* config, const char* refused,
                            gradcompComm_t* comm, NcclStop* stop = nullptr,
                            bool nonBlocking = false);

// The first half of gradcompCommAbort, which frees nothing: marks the comm
// aborted, aborts its transports and then its NCCL sub-communicators, so that
// no call in progress on another thread waits on a peer. The LD_PRELOAD
// library runs it at ncclCommAbort, when a call may still hold the comm.
// Idempotent.
void commStop(gradcompComm* c);

// Ends a wait of a call in progress on a non-blocking c->nccl (ncclFinish)
// and fails every later call, before the program's ncclCommAbort frees
// c->nccl (the LD_PRELOAD library's abort); commStop must follow.
void commStopPolls(gradcompComm* c);

// gradcompCommAbort: commStop, then frees the comm once the calls on other
// threads have returned and its device work has drained (kAbortWaitSec in
// all). Returns whether it freed it: false leaves its memory allocated (with
// a warning), as a kernel stuck on a dead peer may still touch it, and
// refuses a comm that is not live (commLeave; the last error names it).
bool commAbort(gradcompComm* c);

// The C API's hold on a comm it was given, for the length of a call: a
// pointer that is not a live comm (destroyed, aborted, being destroyed or
// aborted, or never made) is refused by check() before anything reads it,
// and a live one is not freed until the pin goes (a destroy is refused, an
// abort waits for it, as for a call in progress). NULL passes (each entry
// point refuses it, or takes it as a no-op, as it says). A lock held for a
// hash lookup, and an atomic count.
class CommPin {
 public:
  explicit CommPin(const gradcompComm* c);
  ~CommPin();
  CommPin(const CommPin&) = delete;
  CommPin& operator=(const CommPin&) = delete;
  // gradcompInvalidArgument naming the pointer when it is not live.
  gradcompResult_t check() const;

 private:
  const gradcompComm* c_;
  std::atomic<int>* pins_ = nullptr;
};

// The start of a destroy (abort = false) or an abort of c: refuses a comm
// that is not live (gradcompInvalidArgument naming it), and for a destroy one
// pinned or with a call in progress on another thread (gradcompInvalidUsage,
// the comm untouched); otherwise no pin may be taken on c from here on.
gradcompResult_t commLeave(const gradcompComm* c, bool abort);

// An address of the calling thread's own: tells the thread holding a comm
// (gradcompComm::callOwner) from the others.
inline const void* threadToken() {
  static thread_local char token;
  return &token;
}

// Counts a public call on a comm (a collective, a retune) while it runs, so
// that gradcompCommAbort on another thread waits for it; fails the call
// once the comm is aborted, or while a call of another thread holds it (the
// calls a public call makes on its own comm, autotune's timed ones, nest).
// One compare-and-swap on entry and one store on return.
class CommCall {
 public:
  explicit CommCall(gradcompComm* c) : c_(c) {
    if (c_ == nullptr) return;
    c_->callsInFlight++;
    const void* owner = nullptr;
    owns_ = c_->callOwner.compare_exchange_strong(owner, threadToken(), std::memory_order_acquire,
                                                  std::memory_order_relaxed);
    busy_ = !owns_ && owner != threadToken();
  }
  ~CommCall() {
    if (c_ == nullptr) return;
    if (owns_) c_->callOwner.store(nullptr, std::memory_order_release);
    c_->callsInFlight--;
  }
  CommCall(const CommCall&) = delete;
  CommCall& operator=(const CommCall&) = delete;
  gradcompResult_t check() const;

 private:
  gradcompComm* c_;
  bool owns_ = false;
  bool busy_ = false;
};

// The comm's device current for a scope (no-op for the CPU backend or a
// comm without a backend, e.g. NULL).
class OnCommDevice {
 public:
  explicit OnCommDevice(gradcompComm_t c) : guard_(c != nullptr && c->backend ? c->device : -1) {}

 private:
  DeviceGuard guard_;
};
}  // namespace gc
