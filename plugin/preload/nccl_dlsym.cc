// NCCL binding of the LD_PRELOAD library: the real library's pnccl* symbols
// (NCCL exports each function twice: weak ncclX and strong pncclX), found
// with dlopen(RTLD_NOLOAD) first because PyTorch loads NCCL with RTLD_LOCAL,
// where RTLD_NEXT cannot see it. GRADCOMP_NCCL_LIBRARY names another path.
#include "nccl_dlsym.h"

#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

#include <mutex>

#include "debug.h"
#include "params.h"

namespace gc {
namespace {

NcclApi gApi;
RealNccl gReal;
bool gResolved = false;
std::once_flag gOnce;

// Whether s lies in this library: GRADCOMP_NCCL_LIBRARY naming the
// interposer itself (or a library that re-exports its ncclX) would bind
// its own ncclX, and every call would then call itself.
bool ownSymbol(void* s) {
  Dl_info mine, theirs;
  return s != nullptr && dladdr(reinterpret_cast<void*>(&ownSymbol), &mine) != 0 &&
         dladdr(s, &theirs) != 0 && mine.dli_fbase == theirs.dli_fbase;
}

// From h, the NCCL named, when it is one: a function it lacks (an older
// NCCL's) is one the program's NCCL lacks, never another NCCL's in the same
// process, which would be handed communicators it never made. Without h, from
// the process.
void* findSymbol(void* h, const char* name) {
  char p[128];
  snprintf(p, sizeof(p), "p%s", name);
  void* s = h ? dlsym(h, p) : nullptr;
  if (!s && h) s = dlsym(h, name);
  if (ownSymbol(s)) s = nullptr;
  if (!s && !h) s = dlsym(RTLD_NEXT, p);
  return ownSymbol(s) ? nullptr : s;
}

void resolve() {
  const char* lib = paramString("GRADCOMP_NCCL_LIBRARY", "libnccl.so.2");
  void* h = dlopen(lib, RTLD_NOLOAD | RTLD_LAZY);
  if (!h) {
    // Not loaded yet under that name or path. Loading it here is right only
    // when it is the NCCL the program uses (a second copy would be handed
    // communicators it never made), hence the warning.
    h = dlopen(lib, RTLD_LAZY | RTLD_LOCAL);
    if (h) {
      fprintf(stderr,
              "gradcomp %d WARN %s was not loaded by the program; loaded it now. If the program "
              "uses another NCCL, set GRADCOMP_NCCL_LIBRARY to that file\n",
              (int)getpid(), shownValue(lib, kShownPath).c_str());
    }
  }
  if (!h) {
    fprintf(stderr,
            "gradcomp %d WARN cannot open %s (%s); looking for pnccl* symbols in the process\n",
            (int)getpid(), shownValue(lib, kShownPath).c_str(), dlerror());
  } else if (ownSymbol(dlsym(h, "ncclAllReduce"))) {
    fprintf(stderr,
            "gradcomp %d WARN GRADCOMP_NCCL_LIBRARY=%s is gradcomp's interposer, not NCCL; looking "
            "for pnccl* symbols in the process\n",
            (int)getpid(), shownValue(lib, kShownPath).c_str());
    // Nothing is taken from a refused library: its reference goes (a library
    // the dlopen above loaded is unloaded again; one the program or the
    // preload loaded stays, held by them).
    dlclose(h);
    h = nullptr;
  } else if (dlsym(h, "pncclAllReduce") == nullptr && dlsym(h, "ncclAllReduce") == nullptr) {
    // Another library altogether (libc, a mistyped path that exists): every
    // symbol would come from the process instead, unsaid.
    fprintf(stderr,
            "gradcomp %d WARN GRADCOMP_NCCL_LIBRARY=%s is not NCCL: it has neither pncclAllReduce "
            "nor ncclAllReduce; looking for pnccl* symbols in the process\n",
            (int)getpid(), shownValue(lib, kShownPath).c_str());
    dlclose(h);
    h = nullptr;
  }
#define GC_SYM(field, name) *reinterpret_cast<void**>(&field) = findSymbol(h, name)
  GC_SYM(gApi.allReduce, "ncclAllReduce");
  GC_SYM(gApi.allGather, "ncclAllGather");
  GC_SYM(gApi.send, "ncclSend");
  GC_SYM(gApi.recv, "ncclRecv");
  GC_SYM(gApi.groupStart, "ncclGroupStart");
  GC_SYM(gApi.groupEnd, "ncclGroupEnd");
  GC_SYM(gApi.commCount, "ncclCommCount");
  GC_SYM(gApi.commUserRank, "ncclCommUserRank");
  GC_SYM(gApi.commCuDevice, "ncclCommCuDevice");
  GC_SYM(gApi.getErrorString, "ncclGetErrorString");
  GC_SYM(gApi.reduceScatter, "ncclReduceScatter");
  GC_SYM(gApi.commSplit, "ncclCommSplit");
  GC_SYM(gApi.commDestroy, "ncclCommDestroy");
  GC_SYM(gApi.commAbort, "ncclCommAbort");
  GC_SYM(gApi.commGetAsyncError, "ncclCommGetAsyncError");
  GC_SYM(gReal.commDestroy, "ncclCommDestroy");
  GC_SYM(gReal.commAbort, "ncclCommAbort");
  GC_SYM(gReal.commFinalize, "ncclCommFinalize");
  GC_SYM(gReal.getVersion, "ncclGetVersion");
#if GC_NCCL_HAS_CONFIG
  GC_SYM(gReal.commInitRankConfig, "ncclCommInitRankConfig");
#endif
#if GC_NCCL_HAS_SPLIT
  GC_SYM(gReal.commSplit, "ncclCommSplit");
#endif
#if GC_NCCL_HAS_SIMULATE
  GC_SYM(gReal.groupSimulateEnd, "ncclGroupSimulateEnd");
#endif
#if GC_NCCL_HAS_SCALABLE
  GC_SYM(gReal.commInitRankScalable, "ncclCommInitRankScalable");
#endif
#if GC_NCCL_HAS_SHRINK
  GC_SYM(gReal.commShrink, "ncclCommShrink");
#endif
#if GC_NCCL_HAS_GROW
  GC_SYM(gReal.commGrow, "ncclCommGrow");
#endif
#if GC_NCCL_HAS_REVOKE
  GC_SYM(gReal.commRevoke, "ncclCommRevoke");
#endif
#if GC_NCCL_HAS_PREMULSUM
  GC_SYM(gReal.redOpDestroy, "ncclRedOpDestroy");
#endif
#if GC_NCCL_HAS_LAST_ERROR
  GC_SYM(gReal.getLastError, "ncclGetLastError");
#endif
#undef GC_SYM
  gResolved = gApi.allReduce && gApi.groupStart && gApi.groupEnd && gApi.commCount &&
              gApi.commUserRank && gApi.getErrorString;
  if (!gResolved) {
    fprintf(stderr,
            "gradcomp %d WARN the real NCCL functions were not found in %s: set "
            "GRADCOMP_NCCL_LIBRARY to the libnccl.so.2 the program uses\n",
            (int)getpid(), shownValue(lib, kShownPath).c_str());
  }
}

}  // namespace

const NcclApi* ncclApi() {
  std::call_once(gOnce, resolve);
  return &gApi;
}

const RealNccl* realNccl() {
  std::call_once(gOnce, resolve);
  return &gReal;
}

bool ncclResolved() {
  std::call_once(gOnce, resolve);
  return gResolved;
}

int loadedNcclVersion() {
  static const int version = [] {
    int v = 0;
    const auto get = realNccl()->getVersion;
    return get != nullptr && get(&v) == ncclSuccess ? v : 0;
  }();
  return version;
}

}  // namespace gc
