// Communicator lifetime, per-buffer state, checkpointing of state, stats.
#include "comm.h"

#include <string.h>

#include <vector>

#include "kernels/qsgd_math.cuh"
#include "checks.h"
#include "backends/cuda/nccl_api.h"

namespace gc {

void splitAligned(size_t count, int parts, size_t align, size_t* off) {
  const size_t units = (count + align - 1) / align;
  const size_t per = (units + parts - 1) / parts;
  for (int j = 0; j <= parts; ++j) {
    size_t o = (size_t)j * per * align;
    off[j] = o < count ? o : count;
  }
}

}  // namespace gc

gradcompResult_t gradcompComm::ensureWorkspace(size_t bytes) {
  if (bytes <= workspaceBytes) return gradcompSuccess;
  if (backend->capturing()) {
    return gc::setError(gradcompInvalidUsage,
                        "a call needing %zu bytes of workspace (have %zu) is being captured into a "
                        "CUDA graph; make one eager call of this size first",
                        bytes, workspaceBytes);
  }
  void* p = nullptr;
  GC_CHECK(backend->sync());  // the old workspace may still be in use
  GC_CHECK(backend->alloc(bytes, &p));
  backend->release(workspace);
  workspace = p;
  workspaceBytes = bytes;
  return gradcompSuccess;
}

gradcompResult_t gradcompComm::getState(const gc::StateKey& key, size_t count, gc::DType t,
                                        gc::BufferState** out) {
  auto it = states.find(key);
  if (it != states.end()) {
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
  s.count = count;
  s.dtype = t;
  const bool sparse = cfg.method == gradcompMethodTopk || cfg.method == gradcompMethodRandk ||
                      cfg.method == gradcompMethodDgc;
  gradcompResult_t res = gradcompSuccess;
  if (cfg.errorFeedback || cfg.method == gradcompMethodDgc) {
    res = backend->alloc(count * sizeof(float), reinterpret_cast<void**>(&s.residual));
  }
  if (res == gradcompSuccess && cfg.method == gradcompMethodDgc && cfg.momentumCorrection) {
    res = backend->alloc(count * sizeof(float), reinterpret_cast<void**>(&s.momentum));
  }
  if (res == gradcompSuccess && !sparse && cfg.ownerResidual) {
    // The largest chunk splitAligned gives this comm.
    const size_t d = cfg.bucketSize, units = (count + d - 1) / d;
    s.ownerResidualCount = (units + nranks - 1) / nranks * d;
    res = backend->alloc(s.ownerResidualCount * sizeof(float),
                         reinterpret_cast<void**>(&s.ownerResidual));
  }
  if (res != gradcompSuccess) {
    releaseState(s);
    return res;
  }
  *out = &states.emplace(key, s).first->second;
  return gradcompSuccess;
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

gradcompResult_t initComm(gradcompComm* c, const gradcompConfig_t* config) {
  if (config) {
    GC_CHECK(gradcompConfigValidate(config));
    c->cfg = *config;
  } else {
    GC_CHECK(gradcompConfigFromEnv(&c->cfg));
  }
  if (c->cfg.method == gradcompMethodDgc && c->cfg.momentumCorrection) {
    GC_INFO(
        "DGC momentum correction is on: gradcomp accumulates the velocity, so the "
        "optimizer's own momentum must be off");
  }
  return gradcompSuccess;
}

// State checkpoint format: header, then per state its key, sizes and arrays.
constexpr uint32_t kStateMagic = 0x54534347;  // "GCST"
constexpr uint32_t kStateVersion = 1;

struct StateHeader {
  uint32_t magic, version;
  uint64_t numStates, step;
};
struct StateRecord {
  int32_t kind, dtype;
  uint64_t key, count, ownerCount, calls;
  uint32_t hasResidual, hasOwner, hasMomentum, pad;
};

size_t recordBytes(const gc::BufferState& s) {
  return sizeof(StateRecord) + (s.residual ? s.count * 4 : 0) +
         (s.ownerResidual ? s.ownerResidualCount * 4 : 0) + (s.momentum ? s.count * 4 : 0);
}

}  // namespace

extern "C" {

GC_EXPORT gradcompResult_t gradcompCommCreate(ncclComm_t nccl, const gradcompConfig_t* config,
                                              gradcompComm_t* comm) {
  GC_ARG(comm != nullptr, "comm (output) is NULL");
  *comm = nullptr;
  GC_ARG(nccl != nullptr, "nccl communicator is NULL");
  std::unique_ptr<gradcompComm> c(new gradcompComm());
  GC_CHECK(initComm(c.get(), config));
  const gc::NcclApi* api = gc::ncclApi();
  GC_NCCLCHECK(api->commUserRank(nccl, &c->rank));
  GC_NCCLCHECK(api->commCount(nccl, &c->nranks));
  int ncclDev = -1, dev = -1;
  GC_NCCLCHECK(api->commCuDevice(nccl, &ncclDev));
  GC_CUDACHECK(cudaGetDevice(&dev));
  if (dev != ncclDev) {
    return gc::setError(gradcompInvalidUsage,
                        "current CUDA device %d differs from the NCCL communicator's device %d",
                        dev, ncclDev);
  }
  c->nccl = nccl;
  c->backend = gc::makeCudaBackend();
  c->sparse = gc::makeCudaSparseOps();
  GC_CHECK(c->backend->init());
  c->transport = gc::makeNcclTransport(nccl, c->rank, c->nranks);
  GC_INFO("comm %p rank %d/%d method %d bits %d bucket %d", (void*)c.get(), c->rank, c->nranks,
          (int)c->cfg.method, c->cfg.bits, c->cfg.bucketSize);
  *comm = c.release();
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompCommCreateCpu(int nranks, const gradcompConfig_t* config,
                                                 gradcompComm_t* comms) {
  GC_ARG(comms != nullptr, "comms (output array) is NULL");
  GC_ARG(nranks >= 1 && nranks <= 1024, "nranks=%d is out of range 1..1024", nranks);
  gradcompConfig_t cfg;
  if (config) {
    GC_CHECK(gradcompConfigValidate(config));
    cfg = *config;
  } else {
    GC_CHECK(gradcompConfigFromEnv(&cfg));
  }
  auto transports = gc::makeCpuWorld(nranks, cfg.cpuTimeoutSec);
  for (int r = 0; r < nranks; ++r) {
    gradcompComm* c = new gradcompComm();
    initComm(c, &cfg);
    c->rank = r;
    c->nranks = nranks;
    c->backend = gc::makeCpuBackend();
    c->sparse = gc::makeCpuSparseOps();
    c->transport = std::move(transports[r]);
    comms[r] = c;
  }
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompCommDestroy(gradcompComm_t comm) {
  if (comm == nullptr) return gradcompSuccess;
  if (comm->backend) {
    comm->backend->sync();
    for (auto& kv : comm->states) comm->releaseState(kv.second);
    comm->backend->release(comm->workspace);
  }
  GC_INFO("comm %p destroyed: %llu calls compressed, %llu passed through", (void*)comm,
          (unsigned long long)comm->stats.callsCompressed,
          (unsigned long long)comm->stats.callsPassedThrough);
  delete comm;
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompCommRank(gradcompComm_t comm, int* rank) {
  GC_ARG(validComm(comm) && rank, "comm=%p or rank=%p is NULL", (void*)comm, (void*)rank);
  *rank = comm->rank;
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompCommSize(gradcompComm_t comm, int* size) {
  GC_ARG(validComm(comm) && size, "comm=%p or size=%p is NULL", (void*)comm, (void*)size);
  *size = comm->nranks;
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompCommResetState(gradcompComm_t comm) {
  GC_ARG(validComm(comm), "comm is NULL");
  GC_CHECK(comm->backend->sync());
  for (auto& kv : comm->states) comm->releaseState(kv.second);
  comm->states.clear();
  comm->step = 0;
  return comm->backend->setStep(0);
}

GC_EXPORT gradcompResult_t gradcompCommStateSize(gradcompComm_t comm, size_t* bytes) {
  GC_ARG(validComm(comm) && bytes, "comm or bytes is NULL");
  size_t total = sizeof(StateHeader);
  for (auto& kv : comm->states) total += recordBytes(kv.second);
  *bytes = total;
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompCommSaveState(gradcompComm_t comm, void* buffer, size_t bytes) {
  size_t need = 0;
  GC_CHECK(gradcompCommStateSize(comm, &need));
  GC_ARG(buffer != nullptr, "buffer is NULL (gradcompCommStateSize gives the size, %zu)", need);
  GC_ARG(bytes >= need, "bytes=%zu is too small: the state needs %zu", bytes, need);
  char* p = static_cast<char*>(buffer);
  StateHeader h = {kStateMagic, kStateVersion, comm->states.size(), comm->step};
  memcpy(p, &h, sizeof(h));
  p += sizeof(h);
  for (auto& kv : comm->states) {
    const gc::BufferState& s = kv.second;
    StateRecord rec = {std::get<0>(kv.first), (int32_t)s.dtype,
                       std::get<1>(kv.first), s.count,
                       s.ownerResidualCount,  s.calls,
                       s.residual != nullptr, s.ownerResidual != nullptr,
                       s.momentum != nullptr, 0};
    memcpy(p, &rec, sizeof(rec));
    p += sizeof(rec);
    if (s.residual) {
      GC_CHECK(comm->backend->toHost(p, s.residual, s.count * 4));
      p += s.count * 4;
    }
    if (s.ownerResidual) {
      GC_CHECK(comm->backend->toHost(p, s.ownerResidual, s.ownerResidualCount * 4));
      p += s.ownerResidualCount * 4;
    }
    if (s.momentum) {
      GC_CHECK(comm->backend->toHost(p, s.momentum, s.count * 4));
      p += s.count * 4;
    }
  }
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompCommLoadState(gradcompComm_t comm, const void* buffer,
                                                 size_t bytes) {
  GC_ARG(validComm(comm), "comm is NULL");
  GC_ARG(buffer != nullptr && bytes >= sizeof(StateHeader),
         "buffer=%p with bytes=%zu is not a saved state (header is %zu bytes)", buffer, bytes,
         sizeof(StateHeader));
  const char* p = static_cast<const char*>(buffer);
  const char* end = p + bytes;
  StateHeader h;
  memcpy(&h, p, sizeof(h));
  p += sizeof(h);
  GC_ARG(h.magic == kStateMagic && h.version == kStateVersion,
         "buffer is not a gradcomp state (magic 0x%x version %u, expected 0x%x version %u)",
         h.magic, h.version, kStateMagic, kStateVersion);
  // Validate the whole buffer before touching any state.
  std::vector<StateRecord> recs;
  std::vector<const char*> data;
  for (uint64_t i = 0; i < h.numStates; ++i) {
    GC_ARG((size_t)(end - p) >= sizeof(StateRecord), "state buffer truncated at record %llu",
           (unsigned long long)i);
    StateRecord rec;
    memcpy(&rec, p, sizeof(rec));
    p += sizeof(rec);
    size_t arr = (rec.hasResidual ? rec.count * 4 : 0) + (rec.hasOwner ? rec.ownerCount * 4 : 0) +
                 (rec.hasMomentum ? rec.count * 4 : 0);
    GC_ARG((size_t)(end - p) >= arr && rec.dtype >= 0 && rec.dtype <= 2,
           "state buffer record %llu is truncated or corrupt", (unsigned long long)i);
    recs.push_back(rec);
    data.push_back(p);
    p += arr;
  }
  GC_CHECK(gradcompCommResetState(comm));
  for (size_t i = 0; i < recs.size(); ++i) {
    const StateRecord& rec = recs[i];
    gc::BufferState* s = nullptr;
    gc::StateKey key{rec.kind, rec.key, rec.count, rec.dtype};
    GC_CHECK(comm->getState(key, rec.count, (gc::DType)rec.dtype, &s));
    GC_ARG((rec.hasResidual == 0) == (s->residual == nullptr) &&
               (rec.hasMomentum == 0) == (s->momentum == nullptr) &&
               (!rec.hasOwner || rec.ownerCount == s->ownerResidualCount),
           "saved state record %zu does not match this comm's configuration (method, error "
           "feedback, ranks)",
           i);
    const char* q = data[i];
    if (rec.hasResidual) {
      GC_CHECK(comm->backend->fromHost(s->residual, q, rec.count * 4));
      q += rec.count * 4;
    }
    if (rec.hasOwner && s->ownerResidual) {
      GC_CHECK(comm->backend->fromHost(s->ownerResidual, q, rec.ownerCount * 4));
    }
    if (rec.hasOwner) q += rec.ownerCount * 4;
    if (rec.hasMomentum) GC_CHECK(comm->backend->fromHost(s->momentum, q, rec.count * 4));
    s->calls = rec.calls;
  }
  comm->step = h.step;
  return comm->backend->setStep(h.step);
}

GC_EXPORT gradcompResult_t gradcompGetStats(gradcompComm_t comm, gradcompStats_t* stats) {
  GC_ARG(validComm(comm) && stats, "comm or stats is NULL");
  *stats = comm->stats;
  stats->steps = comm->step;
  return gradcompSuccess;
}

}  // extern "C"
