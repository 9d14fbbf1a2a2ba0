// Topology of a comm and its hierarchical split: which ranks share a node,
// the intra-node transport and the inter-node child comm.
#include "topology.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <utility>

#include "backends/cuda/device_guard.h"
#include "backends/cuda/device_ptr.h"
#include "backends/cuda/nccl_api.h"
#include "checks.h"
#include "comm.h"
#include "format_args.h"

namespace gc {
namespace {

uint64_t fnv1a(const char* s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *s; ++s) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return h;
}

// The vote exchange's stream and buffer on the comm's device, made before
// the rank's own set-up so that its running out of memory still leaves
// this rank able to vote; then one small ncclAllGather. A device too full
// for even these still votes: the legacy stream stands in for the stream,
// and mapped host memory (which NCCL's kernels reach over the bus) for the
// buffer, so its peers hear that it failed instead of waiting for it.
class NcclVoteExchange {
 public:
  NcclVoteExchange(ncclComm_t nccl, int rank, int nranks, int device, NcclStop* stop,
                   bool hostBuffer)
      : nccl_(nccl), rank_(rank), nranks_(nranks), device_(device), stop_(stop) {
    ready_ = prepare(hostBuffer);
    if (ready_ != gradcompSuccess) why_ = gradcompGetLastError();
  }
  ~NcclVoteExchange() {
    DeviceGuard g(device_);
    buf_.reset();
    if (stream_ != cudaStreamLegacy) cudaStreamDestroy(stream_);
  }

  gradcompResult_t run(const SetupVote& mine, std::vector<SetupVote>* votes) {
    if (ready_ != gradcompSuccess) return restoreError(ready_, "%s", why_.c_str());
    DeviceGuard g(device_);
    GC_CUDACHECK(g.error());
    const size_t bytes = sizeof(SetupVote);
    votes->assign(nranks_, SetupVote());
    char* buf = static_cast<char*>(buf_->get());
    GC_CUDACHECK(
        cudaMemcpyAsync(buf + rank_ * bytes, &mine, bytes, cudaMemcpyHostToDevice, stream_));
    GC_NCCLWAIT(nccl_, stop_,
                ncclApi()->allGather(buf + rank_ * bytes, buf, bytes, ncclUint8, nccl_, stream_));
    GC_CUDACHECK(
        cudaMemcpyAsync(votes->data(), buf, nranks_ * bytes, cudaMemcpyDeviceToHost, stream_));
    GC_CUDACHECK(cudaStreamSynchronize(stream_));
    return gradcompSuccess;
  }

 private:
  // hostBuffer: mapped host memory even when device memory is to be had
  // (the GPU test of that path).
  gradcompResult_t prepare(bool hostBuffer) {
    DeviceGuard g(device_);
    GC_CUDACHECK(g.error());
    if (cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking) != cudaSuccess) {
      (void)cudaGetLastError();
      stream_ = cudaStreamLegacy;
    }
    buf_.reset(new ExchangeBuffer());
    // In stream order on its own stream where the device can: released
    // without waiting for the device (cudaFree would, and the preload sets up
    // at a training step's first eligible call, where another communicator's
    // pipeline-parallel send may wait for a receive posted after it).
    GC_CUDACHECK(hostBuffer || stream_ == cudaStreamLegacy
                     ? buf_->alloc(nranks_ * sizeof(SetupVote), hostBuffer)
                     : buf_->allocOnStream(nranks_ * sizeof(SetupVote), stream_));
    return gradcompSuccess;
  }

  ncclComm_t nccl_;
  int rank_, nranks_, device_;
  NcclStop* stop_;
  cudaStream_t stream_ = cudaStreamLegacy;
  std::unique_ptr<ExchangeBuffer> buf_;  // freed on the comm's device
  gradcompResult_t ready_;
  std::string why_;
};

// Settings every rank must share: the first shapes the split, the others
// what each call sends (a rank passing a call through or encoding it
// differently would wait forever for peers that do not) or what its values
// are (momentum, clipping: ranks that differ would train different models
// from one sum). Every field of the config but cpuTimeoutSec, a rank's own
// wait, and privateComm, which the vote ORs (wantsPrivate) instead.
enum SettingKind { kInt, kUint, kFloat };
struct SettingSpec {
  const char* name;
  SettingKind kind;
};
const SettingSpec kSettings[kSetupSettings] = {
    {"GRADCOMP_LOCAL_SIZE (localSize)", kInt},
    {"GRADCOMP_METHOD (method)", kInt},
    {"GRADCOMP_ALGO (algo)", kInt},
    {"GRADCOMP_BITS (bits)", kInt},
    {"GRADCOMP_BUCKET (bucketSize)", kInt},
    {"GRADCOMP_MIN_ELEMENTS (minElements)", kUint},
    {"GRADCOMP_EF (errorFeedback)", kInt},
    {"GRADCOMP_OWNER_RESIDUAL (ownerResidual)", kInt},
    {"GRADCOMP_ELIAS (elias)", kInt},
    {"GRADCOMP_BITS_MODE (bitsMode)", kInt},
    {"GRADCOMP_SEED (seed)", kUint},
    {"GRADCOMP_DENSITY (density)", kFloat},
    {"GRADCOMP_VALUE_TYPE (valueType)", kInt},
    {"GRADCOMP_PIPELINE_BYTES (pipelineBytes)", kUint},
    {"GRADCOMP_ROUNDING (rounding)", kInt},
    {"GRADCOMP_LEVELS (levels)", kInt},
    {"GRADCOMP_CHECK_CALLS (checkCalls)", kInt},
    {"GRADCOMP_OVERSAMPLE (oversample)", kFloat},
    {"GRADCOMP_SAMPLE_RATE (sampleRate)", kFloat},
    {"GRADCOMP_SELECT (select)", kInt},
    {"GRADCOMP_MOMENTUM (momentum)", kFloat},
    {"GRADCOMP_MOMENTUM_CORRECTION (momentumCorrection)", kInt},
    {"GRADCOMP_CLIP_NORM (clipNorm)", kFloat},
    {"GRADCOMP_MOMENTUM_MASKING (momentumMasking)", kInt},
    {"GRADCOMP_WARMUP_STEPS (warmupSteps)", kInt},
    {"GRADCOMP_BITS_MIN (bitsMin)", kInt},
    {"GRADCOMP_BITS_MAX (bitsMax)", kInt},
    {"GRADCOMP_VARIANCE_TARGET (varianceTarget)", kFloat},
    {"GRADCOMP_BITS_BUDGET (bitsBudget)", kFloat},
    {"GRADCOMP_BUDGET_WINDOW (budgetWindow)", kInt},
    {"GRADCOMP_AUTO (autoTune)", kInt},
};

uint64_t floatBits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

void formatSetting(int i, uint64_t v, char* out, size_t n) {
  float f;
  const uint32_t u = (uint32_t)v;
  switch (kSettings[i].kind) {
    case kInt:
      snprintf(out, n, "%d", (int)(int64_t)v);
      break;
    case kUint:
      snprintf(out, n, "%llu", (unsigned long long)v);
      break;
    case kFloat:
      memcpy(&f, &u, sizeof(f));
      formatFloat(out, n, f);  // two ranks' values apart past six digits shown apart
      break;
  }
}

std::unique_ptr<gradcompComm> makeInterComm(const gradcompComm& c,
                                            std::unique_ptr<Transport> transport) {
  std::unique_ptr<gradcompComm> m(new gradcompComm());
  m->cfg = c.cfg;
  m->cfg.seed = hierSeed(c.cfg.seed, c.topo.localRank);
  m->cfg.localSize = 1;
  if (m->cfg.algo == gradcompAlgoHier) m->cfg.algo = gradcompAlgoAuto;
  m->sparseDecimals = c.sparseDecimals;
  m->rank = c.topo.node;
  m->parentRank = c.rank;
  m->gradScale = c.gradScale;  // it clips with it
  m->nranks = c.topo.nodes;
  m->topo = blockTopology(m->rank, m->nranks, 1);
  m->backend = c.backend;
  m->sparse = c.sparse;
  m->transport = std::move(transport);
  return m;
}

// Keeps the node boundaries for byte counts, exchanges flat.
void flatten(Topology* t) {
  t->localSize = 1;
  t->ranks.clear();
}

}  // namespace

Topology blockTopology(int rank, int nranks, int localSize) {
  Topology t;
  t.localSize = localSize;
  t.nodes = nranks / localSize;
  t.node = rank / localSize;
  t.localRank = rank % localSize;
  if (localSize > 1) {
    t.nodeOf.resize(nranks);
    for (int j = 0; j < nranks; ++j) t.nodeOf[j] = j / localSize;
    indexRanks(&t);
  }
  return t;
}

void indexRanks(Topology* t) {
  t->ranks.clear();
  const size_t L = (size_t)t->localSize, n = t->nodeOf.size();
  if (t->nodes < 1 || L < 1 || n != (size_t)t->nodes * L) return;
  std::vector<int> ranks(n, -1);
  std::vector<size_t> filled((size_t)t->nodes, 0);
  for (size_t r = 0; r < n; ++r) {
    const int k = t->nodeOf[r];
    if (k < 0 || k >= t->nodes || filled[k] == L) return;
    ranks[(size_t)k * L + filled[k]++] = (int)r;
  }
  t->ranks = std::move(ranks);
}

Topology hostTopology(int rank, const std::vector<uint64_t>& hosts, const char** why) {
  const int n = (int)hosts.size();
  *why = nullptr;
  for (uint64_t h : hosts) {
    if (h == 0) {
      *why = "a rank sent no host identity (an identity of 0)";
      return blockTopology(rank, n, 1);
    }
  }
  std::vector<uint64_t> seen;
  std::vector<int> sizes, localRank(n);
  Topology t;
  t.nodeOf.resize(n);
  for (int j = 0; j < n; ++j) {
    size_t k = 0;
    while (k < seen.size() && seen[k] != hosts[j]) ++k;
    if (k == seen.size()) {
      seen.push_back(hosts[j]);
      sizes.push_back(0);
    }
    t.nodeOf[j] = (int)k;
    localRank[j] = sizes[k]++;
  }
  t.node = t.nodeOf[rank];
  t.nodes = (int)seen.size();
  t.localRank = localRank[rank];
  t.localSize = sizes[0];
  for (int s : sizes) {
    if (s != sizes[0]) {
      *why = "the nodes have different numbers of ranks";
      flatten(&t);
      return t;
    }
  }
  indexRanks(&t);
  return t;
}

std::string ncclHostString(const char* hostId, const char* hostName, const char* bootIdPath) {
  // NCCL's string is a char[1024], terminated: 1023 characters at most.
  const size_t most = 1023;
  std::string s;
  if (hostId != nullptr) {
    // Set but empty is the empty string, not the host name: every rank so
    // set is one host to NCCL.
    s.assign(hostId, strnlen(hostId, most));
    return s;
  }
  s.assign(hostName != nullptr ? hostName : "unknown");
  if (s.size() > most) s.resize(most);
  // Containers of different machines may share a host name; the boot id
  // tells them apart. Its first word, as fscanf's %ms reads it.
  FILE* f = fopen(bootIdPath, "r");
  if (f != nullptr) {
    char* word = nullptr;
    if (fscanf(f, "%ms", &word) == 1) {
      s.append(word, strnlen(word, most - s.size()));
      free(word);
    }
    fclose(f);
  }
  return s;
}

uint64_t hostIdentity() {
  char name[1024] = {0};
  const bool named = gethostname(name, sizeof(name)) == 0;
  name[sizeof(name) - 1] = '\0';
  const std::string id = ncclHostString(getenv("NCCL_HOSTID"), named ? name : nullptr,
                                        "/proc/sys/kernel/random/boot_id");
  const uint64_t h = fnv1a(id.c_str());
  return h == 0 ? 1 : h;
}

gradcompResult_t checkLocalSize(int localSize, int nranks) {
  GC_ARG(localSize >= 1 && localSize <= nranks && nranks % localSize == 0,
         "GRADCOMP_LOCAL_SIZE (localSize) = %d is not valid for %d ranks: use auto (0), 1 (flat) "
         "or a divisor of %d (consecutive blocks of that many ranks form a node)",
         localSize, nranks, nranks);
  return gradcompSuccess;
}

SetupVote makeSetupVote(gradcompResult_t local, const gradcompConfig_t& cfg, uint64_t host,
                        const char* why) {
  SetupVote v;
  v.version = (uint32_t)GRADCOMP_VERSION_CODE;
  v.settingsCount = (uint32_t)kSetupSettings;
  v.host = host;
  v.result = (int32_t)local;
  if (local != gradcompSuccess) {
    snprintf(v.why, sizeof(v.why), "%s", why != nullptr ? why : "");
    return v;
  }
  v.wantsPrivate = cfg.privateComm ? 1 : 0;
  const uint64_t s[kSetupSettings] = {(uint64_t)(int64_t)cfg.localSize,
                                      (uint64_t)(int64_t)cfg.method,
                                      (uint64_t)(int64_t)cfg.algo,
                                      (uint64_t)(int64_t)cfg.bits,
                                      (uint64_t)(int64_t)cfg.bucketSize,
                                      (uint64_t)cfg.minElements,
                                      (uint64_t)(int64_t)cfg.errorFeedback,
                                      (uint64_t)(int64_t)cfg.ownerResidual,
                                      (uint64_t)(int64_t)cfg.elias,
                                      (uint64_t)(int64_t)cfg.bitsMode,
                                      cfg.seed,
                                      floatBits(cfg.density),
                                      (uint64_t)(int64_t)cfg.valueType,
                                      (uint64_t)cfg.pipelineBytes,
                                      (uint64_t)(int64_t)cfg.rounding,
                                      (uint64_t)(int64_t)cfg.levels,
                                      (uint64_t)(int64_t)cfg.checkCalls,
                                      floatBits(cfg.oversample),
                                      floatBits(cfg.sampleRate),
                                      (uint64_t)(int64_t)cfg.select,
                                      floatBits(cfg.momentum),
                                      (uint64_t)(int64_t)cfg.momentumCorrection,
                                      floatBits(cfg.clipNorm),
                                      (uint64_t)(int64_t)cfg.momentumMasking,
                                      (uint64_t)(int64_t)cfg.warmupSteps,
                                      (uint64_t)(int64_t)cfg.bitsMin,
                                      (uint64_t)(int64_t)cfg.bitsMax,
                                      floatBits(cfg.varianceTarget),
                                      floatBits(cfg.bitsBudget),
                                      (uint64_t)(int64_t)cfg.budgetWindow,
                                      (uint64_t)(int64_t)cfg.autoTune};
  memcpy(v.settings, s, sizeof(s));
  return v;
}

const char* setupSettingName(int i) {
  return i >= 0 && i < kSetupSettings ? kSettings[i].name : "?";
}

gradcompResult_t agreeOnSetup(const std::vector<SetupVote>& votes) {
  const int n = (int)votes.size();
  for (int r = 1; r < n; ++r) {
    const SetupVote &v = votes[r], &first = votes[0];
    if (v.version == first.version && v.settingsCount == first.settingsCount) continue;
    return setError(gradcompInvalidUsage,
                    "rank %d runs gradcomp %u.%u.%u (%u settings voted) while rank 0 runs "
                    "%u.%u.%u (%u settings): every rank of a comm must run the same gradcomp "
                    "build, so no rank made one",
                    r, v.version / 10000, v.version / 100 % 100, v.version % 100, v.settingsCount,
                    first.version / 10000, first.version / 100 % 100, first.version % 100,
                    first.settingsCount);
  }
  for (int r = 0; r < n; ++r) {
    const SetupVote& v = votes[r];
    if (v.result == gradcompSuccess) continue;
    const gradcompResult_t res = v.result > 0 && v.result <= gradcompInternalError
                                     ? (gradcompResult_t)v.result
                                     : gradcompInternalError;
    char why[sizeof(v.why)];
    memcpy(why, v.why, sizeof(why));
    why[sizeof(why) - 1] = '\0';  // it came over the wire
    return setError(res,
                    "rank %d of %d could not set up its gradcomp comm, so no rank made one: %s", r,
                    n, why);
  }
  for (int r = 1; r < n; ++r) {
    for (int i = 0; i < kSetupSettings; ++i) {
      if (votes[r].settings[i] == votes[0].settings[i]) continue;
      char mine[32], first[32];
      formatSetting(i, votes[r].settings[i], mine, sizeof(mine));
      formatSetting(i, votes[0].settings[i], first, sizeof(first));
      return setError(gradcompInvalidArgument,
                      "rank %d has %s = %s while rank 0 has %s: the ranks of a comm have "
                      "different GRADCOMP_* settings, so no rank made one",
                      r, kSettings[i].name, mine, first);
    }
  }
  return gradcompSuccess;
}

VoteGather ncclVoteGather(ncclComm_t nccl, int rank, int nranks, int device, NcclStop* stop,
                          bool hostBuffer) {
  // A rank whose current device is not the comm's still joins, on the comm's
  // device, to vote that it failed.
  std::shared_ptr<NcclVoteExchange> x(
      new NcclVoteExchange(nccl, rank, nranks, device, stop, hostBuffer));
  return [x](const SetupVote& mine, std::vector<SetupVote>* votes) { return x->run(mine, votes); };
}

gradcompResult_t agreeTopology(gradcompComm* c, const SetupVote& mine, const VoteGather& gather,
                               bool* anyWantsPrivate) {
  std::vector<SetupVote> votes;
  const gradcompResult_t res = gather(mine, &votes);
  if (res != gradcompSuccess) {
    // This rank's own failure says more than the exchange it could not join.
    if (mine.result != gradcompSuccess) {
      return restoreError((gradcompResult_t)mine.result, "%s", mine.why);
    }
    return res;
  }
  if ((int)votes.size() != c->nranks) {
    return setError(gradcompInternalError, "set-up exchange gave %zu votes for %d ranks",
                    votes.size(), c->nranks);
  }
  GC_CHECK(agreeOnSetup(votes));
  if (anyWantsPrivate != nullptr) {
    *anyWantsPrivate = false;
    for (const SetupVote& v : votes) *anyWantsPrivate = *anyWantsPrivate || v.wantsPrivate != 0;
  }
  const int n = c->nranks, L = c->cfg.localSize;
  if (L != 0) {
    // L is the same on every rank, so every rank refuses alike.
    GC_CHECK(checkLocalSize(L, n));
    c->topo = blockTopology(c->rank, n, L);
  } else {
    std::vector<uint64_t> hosts(n);
    for (int r = 0; r < n; ++r) hosts[r] = votes[r].host;
    const char* why = nullptr;
    c->topo = hostTopology(c->rank, hosts, &why);
    if (why != nullptr && c->rank == 0) {
      GC_INFO("comm %p: %s; exchanging flat", (void*)c, why);
    }
  }
  return gradcompSuccess;
}

namespace {

// ncclCommSplit of `parent` into *child. A non-blocking parent answers
// ncclSuccess (NCCL's split lets its group's ncclInProgress through) with
// *newcomm still NULL: NCCL's own thread makes the child, writes it into
// the slot, and only then sets the parent's state, so the parent is polled
// until it leaves ncclInProgress (a blocking one has already). The slot is
// NCCL's until then: a wait another thread's abort stopped leaves it, and
// the child, to NCCL (leaked), as that thread may still write it.
gradcompResult_t splitNccl(ncclComm_t parent, int color, int key, ncclComm_t* child,
                           NcclStop* stop) {
  const NcclApi* api = ncclApi();
  ncclComm_t* slot = new ncclComm_t(nullptr);
  const ncclResult_t r = api->commSplit(parent, color, key, slot, nullptr);
  const gradcompResult_t res = ncclFinish(parent, r == ncclSuccess ? ncclInProgress : r, stop,
                                          "ncclCommSplit", __FILE__, __LINE__);
  if (res != gradcompSuccess) {
    if (stop == nullptr || !stop->stopped()) {
      // Joined (or never started): whatever NCCL made is this rank's to end.
      // Aborted, not destroyed: it may never have finished its own set-up.
      const ncclComm_t made = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
      if (made != nullptr && api->commAbort != nullptr) api->commAbort(made);
      delete slot;
    }
    return res;
  }
  *child = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
  delete slot;
  if (*child == nullptr) {
    return setError(gradcompNcclError,
                    "ncclCommSplit(color %d, key %d) of NCCL comm %p succeeded without making a "
                    "communicator",
                    color, key, (void*)parent);
  }
  // A child made with an error is reported on the parent (above); its own
  // state is read once more all the same.
  GC_CHECK(ncclFinish(*child, ncclInProgress, stop, "the ncclCommSplit child's state", __FILE__,
                      __LINE__));
  return gradcompSuccess;
}

// The splits made so far, aborted (a peer's split failed: theirs may never
// be finished, and NCCL's destroy of a child whose peers are gone can wait).
void abortSplits(gradcompComm* c) {
  const NcclApi* api = ncclApi();
  for (ncclComm_t* sub : {&c->intraNccl, &c->interNccl, &c->ownNccl}) {
    if (*sub != nullptr && api->commAbort != nullptr) api->commAbort(*sub);
    *sub = nullptr;
  }
}

// A split that failed on some ranks only (one node's child could not be
// made, a child read back NULL) leaves the others going on into the next
// split or their first exchange, waiting for ranks that returned. So every
// rank votes on its split (`local`) over the set-up exchange (one small
// allgather on the program's communicator, set-up only), and all return the
// first failed rank's error, with what they split aborted. Not once another
// thread's abort stopped the wait: NCCL frees the communicator the vote
// would run on.
gradcompResult_t agreeSplit(gradcompComm* c, const SetupVote& mine, const VoteGather& gather,
                            NcclStop* stop, gradcompResult_t local) {
  if (stop != nullptr && stop->stopped()) return local;
  SetupVote v = mine;  // the settings every rank agreed on
  v.result = (int32_t)local;
  if (local != gradcompSuccess) snprintf(v.why, sizeof(v.why), "%s", gradcompGetLastError());
  std::vector<SetupVote> votes;
  gradcompResult_t res = gather(v, &votes);
  if (res != gradcompSuccess) {
    // This rank's own failure says more than the exchange it could not join.
    if (local != gradcompSuccess) res = restoreError(local, "%s", v.why);
  } else if ((int)votes.size() != c->nranks) {
    res = setError(gradcompInternalError, "split exchange gave %zu votes for %d ranks",
                   votes.size(), c->nranks);
  } else {
    res = agreeOnSetup(votes);
  }
  if (res != gradcompSuccess) abortSplits(c);
  return res;
}

}  // namespace

gradcompResult_t setupNcclHierarchy(gradcompComm* c, const SetupVote& mine,
                                    const VoteGather& gather, NcclStop* stop) {
  bool ownWanted = false;
  GC_CHECK(agreeTopology(c, mine, gather, &ownWanted));
  // The vote (or a split) may have waited on a dead peer until another thread
  // aborted the communicator, which NCCL then frees: nothing may split it.
  auto aborted = [&] {
    if (stop == nullptr || !stop->stopped()) return gradcompSuccess;
    return setError(gradcompInvalidUsage,
                    "NCCL comm %p was aborted while gradcomp set it up; nothing more is made "
                    "from it",
                    (void*)c->nccl);
  };
  GC_CHECK(aborted());
  const NcclApi* api = ncclApi();
  // A non-blocking program communicator, or a rank's privateComm:
  // gradcomp's exchanges (and the hierarchy's splits) go to a private split
  // of it, which nobody else polls. Every rank splits, as the votes decided
  // alike.
  ncclComm_t parent = c->nccl;
  if (ownWanted) {
    if (api->commSplit == nullptr || api->commDestroy == nullptr) {
      if (c->rank == 0) {
        GC_INFO(
            "comm %p: this NCCL has no ncclCommSplit; exchanging on the program's "
            "communicator, not a private split",
            (void*)c);
      }
    } else {
      GC_CHECK(
          agreeSplit(c, mine, gather, stop, splitNccl(c->nccl, 0, c->rank, &c->ownNccl, stop)));
      if (c->transport) c->transport->moveTo(c->ownNccl);
      parent = c->ownNccl;
      GC_INFO(
          "comm %p rank %d: NCCL comm %p (non-blocking, or privateComm), exchanging on its "
          "private split %p",
          (void*)c, c->rank, (void*)c->nccl, (void*)c->ownNccl);
    }
  }
  if (!c->topo.hier()) return gradcompSuccess;
  if (api->commSplit == nullptr || api->reduceScatter == nullptr || api->commDestroy == nullptr) {
    if (c->rank == 0) {
      GC_INFO("comm %p: this NCCL has no ncclCommSplit/ncclReduceScatter; exchanging flat",
              (void*)c);
    }
    flatten(&c->topo);
    return gradcompSuccess;
  }
  const Topology& t = c->topo;
  // Intra: color node, key rank (local rank order). Inter: color local rank,
  // key node, so the child comm's rank is the node index.
  GC_CHECK(aborted());
  GC_CHECK(
      agreeSplit(c, mine, gather, stop, splitNccl(parent, t.node, c->rank, &c->intraNccl, stop)));
  GC_CHECK(aborted());
  GC_CHECK(agreeSplit(c, mine, gather, stop,
                      splitNccl(parent, t.localRank, t.node, &c->interNccl, stop)));
  c->intra = makeNcclTransport(c->intraNccl, t.localRank, t.localSize);
  c->inter = makeInterComm(*c, makeNcclTransport(c->interNccl, t.node, t.nodes));
  c->inter->nccl = c->interNccl;
  GC_INFO("comm %p rank %d: node %d of %d, local rank %d of %d", (void*)c, c->rank, t.node, t.nodes,
          t.localRank, t.localSize);
  return gradcompSuccess;
}

gradcompResult_t setupSocketHierarchy(gradcompComm* c, const SetupVote& mine,
                                      std::shared_ptr<SocketMesh> mesh) {
  Transport* world = c->transport.get();
  const VoteGather gather = [world](const SetupVote& v, std::vector<SetupVote>* votes) {
    votes->resize(world->size());
    return world->allGather(&v, votes->data(), sizeof(SetupVote));
  };
  GC_CHECK(agreeTopology(c, mine, gather));
  if (!c->topo.hier()) return gradcompSuccess;
  const Topology& t = c->topo;
  std::vector<int> intra, inter;
  for (int l = 0; l < t.localSize; ++l) intra.push_back(t.rankAt(t.node, l));
  for (int k = 0; k < t.nodes; ++k) inter.push_back(t.rankAt(k, t.localRank));
  c->intra = makeSocketTransport(mesh, intra, t.localRank, 1);
  c->inter = makeInterComm(*c, makeSocketTransport(mesh, inter, t.node, 2));
  return gradcompSuccess;
}

gradcompResult_t setupCpuHierarchy(gradcompComm** comms, int nranks) {
  // One config for all ranks, so this always agrees; it is the NCCL path's decision.
  std::vector<SetupVote> votes;
  for (int r = 0; r < nranks; ++r) {
    votes.push_back(makeSetupVote(gradcompSuccess, comms[r]->cfg, 0, nullptr));
  }
  GC_CHECK(agreeOnSetup(votes));
  const int L = comms[0]->cfg.localSize;  // auto (0) is flat on the CPU world
  if (L != 0) GC_CHECK(checkLocalSize(L, nranks));
  const int local = L == 0 ? 1 : L;
  std::vector<Topology> topos(nranks);
  for (int r = 0; r < nranks; ++r) topos[r] = blockTopology(r, nranks, local);
  splitCpuWorld(comms, topos);
  return gradcompSuccess;
}

void splitCpuWorld(gradcompComm** comms, const std::vector<Topology>& topos) {
  const int nranks = (int)topos.size();
  for (int r = 0; r < nranks; ++r) comms[r]->topo = topos[r];
  if (!topos[0].hier()) return;
  const int nodes = topos[0].nodes, local = topos[0].localSize;
  std::vector<std::vector<std::unique_ptr<Transport>>> intra(nodes), inter(local);
  const double timeout = comms[0]->cfg.cpuTimeoutSec;
  // An abort of the whole world (any rank's gradcompCommAbort) ends the waits
  // of every node's and every inter-node sub-world, not only the aborting
  // rank's own: a rank of another node may wait there for a peer it made leave.
  Transport* world = comms[0]->transport.get();
  // Each sub-world's ranks by their rank in the whole world, which a destroy
  // names.
  std::vector<std::vector<int>> intraRanks(nodes, std::vector<int>(local)),
      interRanks(local, std::vector<int>(nodes));
  for (int r = 0; r < nranks; ++r) {
    intraRanks[topos[r].node][topos[r].localRank] = r;
    interRanks[topos[r].localRank][topos[r].node] = r;
  }
  for (int k = 0; k < nodes; ++k) intra[k] = makeCpuWorld(local, timeout, world, intraRanks[k]);
  for (int j = 0; j < local; ++j) inter[j] = makeCpuWorld(nodes, timeout, world, interRanks[j]);
  for (int r = 0; r < nranks; ++r) {
    const Topology& t = comms[r]->topo;
    comms[r]->intra = std::move(intra[t.node][t.localRank]);
    comms[r]->inter = makeInterComm(*comms[r], std::move(inter[t.localRank][t.node]));
  }
}

void destroyHierarchy(gradcompComm* c) {
  c->inter.reset();
  c->intra.reset();
  const NcclApi* api = ncclApi();
  for (ncclComm_t* sub : {&c->intraNccl, &c->interNccl, &c->ownNccl}) {
    if (*sub == nullptr) continue;
    // One holding an error (a split of it failed, an exchange met a dead
    // peer) is aborted: NCCL's destroy returns that error without freeing
    // it, and leaves the calling thread inside a group of its own.
    ncclResult_t state = ncclSuccess;
    if (api->commGetAsyncError != nullptr && api->commGetAsyncError(*sub, &state) != ncclSuccess) {
      state = ncclInternalError;
    }
    if (state != ncclSuccess && api->commAbort != nullptr) {
      api->commAbort(*sub);
    } else if (api->commDestroy != nullptr) {
      api->commDestroy(*sub);
    }
    *sub = nullptr;
  }
}

}  // namespace gc
