// The LD_PRELOAD interposer: ncclAllReduce with NCCL's exact signature.
// Eligible calls (DESIGN.md "Interposer rules") go through gradcompAllReduce
// on a per-ncclComm_t gradcompComm created lazily from GRADCOMP_*; every
// other call reaches the real NCCL with identical arguments. It never breaks
// the host program: whatever fails to set up is warned about once and passed
// through; a call gradcomp refuses before enqueuing anything (first call of
// a buffer under CUDA-graph capture, say) is passed through too.
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <map>
#include <mutex>
#include <set>
#include <vector>

#include "debug.h"
#include "gradcomp.h"
#include "nccl_dlsym.h"
#include "params.h"

namespace {

using gc::ncclApi;
using gc::realNccl;

struct CommEntry {
  gradcompComm_t gc = nullptr;
  bool disabled = false;  // setup failed or not eligible: pass everything through
  // GRADCOMP_GROUP=fuse: the fusion buffer (device) and its size.
  void* fusion = nullptr;
  size_t fusionBytes = 0;
};

struct Deferred {
  const void* send;
  void* recv;
  size_t count;
  ncclDataType_t type;
  ncclRedOp_t op;
  ncclComm_t comm;
  cudaStream_t stream;
};

std::mutex gMu;
std::map<ncclComm_t, CommEntry> gComms;
std::set<ncclComm_t> gNonBlocking;
gradcompConfig_t gConfig;
int gConfigState = 0;  // 0 unread, 1 ok, -1 bad (pass everything through)
// Calls inside a user ncclGroupStart/End: defer (compress each at the outer
// ncclGroupEnd), fuse (one compressed allreduce per comm/stream/type/op at
// the outer ncclGroupEnd) or pass (always to NCCL, inside the group).
enum class GroupMode { Defer, Fuse, Pass };
GroupMode gGroup = GroupMode::Defer;
thread_local int tGroupDepth = 0;
thread_local std::vector<Deferred> tDeferred;

bool warnOnce(const char* what) {
  static std::set<std::string> seen;
  std::lock_guard<std::mutex> lock(gMu);
  return seen.insert(what).second;
}

bool configOk() {
  if (gConfigState == 0) {
    if (gradcompConfigFromEnv(&gConfig) != gradcompSuccess) {
      fprintf(stderr, "gradcomp WARN bad configuration (%s); passing every call to NCCL\n",
              gradcompGetLastError());
      gConfigState = -1;
    } else {
      gConfigState = 1;
    }
    const char* g = gc::paramString("GRADCOMP_GROUP", "defer");
    if (strcasecmp(g, "fuse") == 0) {
      gGroup = GroupMode::Fuse;
    } else if (strcasecmp(g, "pass") == 0) {
      gGroup = GroupMode::Pass;
    } else if (strcasecmp(g, "defer") != 0) {
      fprintf(stderr, "gradcomp WARN GRADCOMP_GROUP=%s is not defer, fuse or pass; using defer\n",
              g);
    }
  }
  return gConfigState == 1;
}

bool eligible(size_t count, ncclDataType_t type, ncclRedOp_t op) {
  return gConfig.method != gradcompMethodNone &&
         (type == ncclFloat32 || type == ncclFloat16 || type == ncclBfloat16) &&
         (op == ncclSum || op == ncclAvg) && count >= gConfig.minElements;
}

size_t typeBytes(ncclDataType_t t) {
  return t == ncclFloat32 ? 4 : 2;
}

void printSummary(ncclComm_t comm, gradcompComm_t gc) {
  if (gc::logLevel() < gc::LogLevel::Info || gc == nullptr) return;
  gradcompStats_t s;
  if (gradcompGetStats(gc, &s) != gradcompSuccess) return;
  int rank = -1;
  gradcompCommRank(gc, &rank);
  const double ratio = s.bytesOnWire ? (double)s.bytesIn / (double)s.bytesOnWire : 0.0;
  GC_INFO(
      "summary comm %p rank %d: %llu calls compressed, %llu passed through, %llu bytes sent "
      "for %llu dense bytes, compression ratio %.2f",
      (void*)comm, rank, (unsigned long long)s.callsCompressed,
      (unsigned long long)s.callsPassedThrough, (unsigned long long)s.bytesOnWire,
      (unsigned long long)s.bytesIn, ratio);
}

// The gradcomp comm of an NCCL comm, created on first use; null to pass through.
gradcompComm_t commFor(ncclComm_t comm) {
  std::unique_lock<std::mutex> lock(gMu);
  auto it = gComms.find(comm);
  if (it != gComms.end()) return it->second.disabled ? nullptr : it->second.gc;
  CommEntry& e = gComms[comm];
  if (gNonBlocking.count(comm)) {
    e.disabled = true;
    lock.unlock();
    GC_INFO("comm %p is non-blocking: its calls pass through to NCCL", (void*)comm);
    return nullptr;
  }
  int nranks = 0;
  if (ncclApi()->commCount(comm, &nranks) != ncclSuccess || nranks < 2) {
    e.disabled = true;
    return nullptr;
  }
  gradcompComm_t gc = nullptr;
  gradcompResult_t res = gradcompCommCreate(comm, &gConfig, &gc);
  if (res != gradcompSuccess) {
    e.disabled = true;
    lock.unlock();
    if (warnOnce("setup")) {
      fprintf(stderr,
              "gradcomp WARN cannot set up compression for NCCL comm %p (%s: %s); its calls pass "
              "through to NCCL unchanged\n",
              (void*)comm, gradcompGetErrorString(res), gradcompGetLastError());
    }
    return nullptr;
  }
  e.gc = gc;
  return gc;
}

ncclResult_t forwardAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                              ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (ncclApi()->allReduce == nullptr) return ncclSystemError;
  return ncclApi()->allReduce(send, recv, count, type, op, comm, stream);
}

ncclResult_t toNccl(gradcompResult_t r) {
  switch (r) {
    case gradcompSuccess:
      return ncclSuccess;
    case gradcompCudaError:
      return ncclUnhandledCudaError;
    case gradcompInvalidArgument:
      return ncclInvalidArgument;
    case gradcompInvalidUsage:
      return ncclInvalidUsage;
    default:
      return ncclSystemError;
  }
}

// Compresses one call, or passes it through when gradcomp refuses it before
// enqueuing anything.
ncclResult_t compressOrForward(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream,
                               gradcompComm_t gc, bool keyed, uint64_t key) {
  gradcompStats_t before;
  gradcompGetStats(gc, &before);
  gradcompResult_t r = keyed ? gradcompAllReduceKeyed(send, recv, count, type, op, gc, stream, key)
                             : gradcompAllReduce(send, recv, count, type, op, gc, stream);
  if (r == gradcompSuccess) return ncclSuccess;
  gradcompStats_t after;
  gradcompGetStats(gc, &after);
  const bool refusedBeforeEnqueue =
      (r == gradcompInvalidUsage || r == gradcompInvalidArgument || r == gradcompNotSupported) &&
      after.steps == before.steps;
  if (refusedBeforeEnqueue) {
    if (warnOnce(gradcompGetLastError())) {
      fprintf(stderr, "gradcomp WARN passing a call to NCCL: %s\n", gradcompGetLastError());
    }
    return forwardAllReduce(send, recv, count, type, op, comm, stream);
  }
  fprintf(stderr, "gradcomp WARN compressed allreduce failed: %s\n", gradcompGetLastError());
  return toNccl(r);
}

// GRADCOMP_GROUP=fuse: the eligible calls of one user group, for one comm,
// stream, type and op, become one compressed allreduce over a fusion buffer.
ncclResult_t runFused(std::vector<Deferred>& calls) {
  ncclResult_t firstErr = ncclSuccess;
  std::vector<bool> done(calls.size(), false);
  for (size_t i = 0; i < calls.size(); ++i) {
    if (done[i]) continue;
    const Deferred& d0 = calls[i];
    std::vector<size_t> members;
    size_t total = 0;
    uint64_t key = 0xcbf29ce484222325ull;  // FNV-1a over the member counts: stable per group shape
    for (size_t j = i; j < calls.size(); ++j) {
      const Deferred& d = calls[j];
      if (done[j] || d.comm != d0.comm || d.stream != d0.stream || d.type != d0.type ||
          d.op != d0.op) {
        continue;
      }
      members.push_back(j);
      done[j] = true;
      total += d.count;
      key = (key ^ d.count) * 0x100000001b3ull;
    }
    gradcompComm_t gc = commFor(d0.comm);
    const size_t esz = typeBytes(d0.type);
    CommEntry* e = nullptr;
    {
      std::lock_guard<std::mutex> lock(gMu);
      e = &gComms[d0.comm];
    }
    bool ok = gc != nullptr;
    if (ok && e->fusionBytes < total * esz) {
      cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
      cudaStreamIsCapturing(d0.stream, &st);
      if (st != cudaStreamCaptureStatusNone) {
        ok = false;
      } else {
        cudaStreamSynchronize(d0.stream);
        if (e->fusion) cudaFree(e->fusion);
        e->fusion = nullptr;
        e->fusionBytes = 0;
        if (cudaMalloc(&e->fusion, total * esz) == cudaSuccess) {
          e->fusionBytes = total * esz;
        } else {
          (void)cudaGetLastError();
          ok = false;
        }
      }
    }
    if (!ok) {  // pass the members through one by one
      for (size_t j : members) {
        const Deferred& d = calls[j];
        ncclResult_t r = forwardAllReduce(d.send, d.recv, d.count, d.type, d.op, d.comm, d.stream);
        if (r != ncclSuccess && firstErr == ncclSuccess) firstErr = r;
      }
      continue;
    }
    char* fusion = static_cast<char*>(e->fusion);
    size_t off = 0;
    for (size_t j : members) {
      const Deferred& d = calls[j];
      cudaMemcpyAsync(fusion + off, d.send, d.count * esz, cudaMemcpyDeviceToDevice, d.stream);
      off += d.count * esz;
    }
    ncclResult_t r =
        compressOrForward(fusion, fusion, total, d0.type, d0.op, d0.comm, d0.stream, gc, true, key);
    off = 0;
    for (size_t j : members) {
      const Deferred& d = calls[j];
      cudaMemcpyAsync(d.recv, fusion + off, d.count * esz, cudaMemcpyDeviceToDevice, d.stream);
      off += d.count * esz;
    }
    if (r != ncclSuccess && firstErr == ncclSuccess) firstErr = r;
  }
  return firstErr;
}

void releaseComm(ncclComm_t comm) {
  CommEntry e;
  {
    std::lock_guard<std::mutex> lock(gMu);
    auto it = gComms.find(comm);
    if (it == gComms.end()) return;
    e = it->second;
    gComms.erase(it);
    gNonBlocking.erase(comm);
  }
  printSummary(comm, e.gc);
  if (e.gc) gradcompCommDestroy(e.gc);
  if (e.fusion) cudaFree(e.fusion);
}

struct AtExit {
  ~AtExit() {
    std::lock_guard<std::mutex> lock(gMu);
    for (auto& kv : gComms) printSummary(kv.first, kv.second.gc);
  }
} gAtExit;

}  // namespace

extern "C" {

__attribute__((visibility("default"))) ncclResult_t ncclAllReduce(const void* sendbuff,
                                                                  void* recvbuff, size_t count,
                                                                  ncclDataType_t datatype,
                                                                  ncclRedOp_t op, ncclComm_t comm,
                                                                  cudaStream_t stream) {
  if (!gc::ncclResolved() || !configOk() || !eligible(count, datatype, op)) {
    return forwardAllReduce(sendbuff, recvbuff, count, datatype, op, comm, stream);
  }
  // Inside a user group, calls of a comm that compresses are deferred to the
  // outer ncclGroupEnd (PyTorch's ProcessGroupNCCL has wrapped even single
  // collectives in a group), or pass through with GRADCOMP_GROUP=pass.
  if (tGroupDepth > 0 && gGroup == GroupMode::Pass) {
    return forwardAllReduce(sendbuff, recvbuff, count, datatype, op, comm, stream);
  }
  gradcompComm_t gc = commFor(comm);
  if (gc == nullptr) return forwardAllReduce(sendbuff, recvbuff, count, datatype, op, comm, stream);
  if (tGroupDepth > 0) {
    tDeferred.push_back({sendbuff, recvbuff, count, datatype, op, comm, stream});
    return ncclSuccess;
  }
  return compressOrForward(sendbuff, recvbuff, count, datatype, op, comm, stream, gc, false, 0);
}

__attribute__((visibility("default"))) ncclResult_t ncclGroupStart() {
  if (ncclApi()->groupStart == nullptr) return ncclSystemError;
  ncclResult_t r = ncclApi()->groupStart();
  if (r == ncclSuccess) ++tGroupDepth;
  return r;
}

__attribute__((visibility("default"))) ncclResult_t ncclGroupEnd() {
  if (ncclApi()->groupEnd == nullptr) return ncclSystemError;
  ncclResult_t r = ncclApi()->groupEnd();
  if (tGroupDepth > 0) --tGroupDepth;
  if (tGroupDepth == 0 && !tDeferred.empty()) {
    std::vector<Deferred> calls;
    calls.swap(tDeferred);
    ncclResult_t f = ncclSuccess;
    if (gGroup == GroupMode::Fuse) {
      f = runFused(calls);
    } else {
      for (const Deferred& d : calls) {
        gradcompComm_t gc = commFor(d.comm);
        ncclResult_t one =
            gc ? compressOrForward(d.send, d.recv, d.count, d.type, d.op, d.comm, d.stream, gc,
                                   false, 0)
               : forwardAllReduce(d.send, d.recv, d.count, d.type, d.op, d.comm, d.stream);
        if (one != ncclSuccess && f == ncclSuccess) f = one;
      }
    }
    if (r == ncclSuccess) r = f;
  }
  return r;
}

__attribute__((visibility("default"))) ncclResult_t ncclCommInitRankConfig(
    ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank, ncclConfig_t* config) {
  if (realNccl()->commInitRankConfig == nullptr) return ncclSystemError;
  ncclResult_t r = realNccl()->commInitRankConfig(comm, nranks, commId, rank, config);
  if (r == ncclSuccess || r == ncclInProgress) {
    if (config != nullptr && config->blocking == 0) {
      std::lock_guard<std::mutex> lock(gMu);
      gNonBlocking.insert(*comm);
    }
  }
  return r;
}

__attribute__((visibility("default"))) ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  releaseComm(comm);
  if (realNccl()->commDestroy == nullptr) return ncclSystemError;
  return realNccl()->commDestroy(comm);
}

__attribute__((visibility("default"))) ncclResult_t ncclCommAbort(ncclComm_t comm) {
  releaseComm(comm);
  if (realNccl()->commAbort == nullptr) return ncclSystemError;
  return realNccl()->commAbort(comm);
}

__attribute__((visibility("default"))) ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  // Finalize flushes NCCL's work; our state (and the summary) goes at
  // destroy or abort.
  if (realNccl()->commFinalize == nullptr) return ncclSystemError;
  return realNccl()->commFinalize(comm);
}

}  // extern "C"
