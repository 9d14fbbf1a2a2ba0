// Multi-process NCCL test of gradcompAllReduce on the CUDA backend. Launched
// as N processes by tools/multirank_check.sh (all on one GPU with a distinct
// NCCL_HOSTID each, or one GPU per rank). Every rank checks its results bit
// for bit against the serial host reference of the same algorithm (which
// also makes them identical across ranks), then the sparse methods (top-k,
// DGC, rand-k) against tests/common/ref_sparse.h, then CUDA-graph capture
// against eager calls, then pass-through. Prints "N passed, M failed".
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "gradcomp.h"
#include "tests/common/ref_algos.h"
#include "tests/common/ref_sparse.h"

using namespace gctest::ref;

namespace {

int passed = 0, failed = 0, rank = 0, nranks = 1;

void report(bool ok, const std::string& what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    fprintf(stderr, "rank %d FAILED: %s (%s)\n", rank, what.c_str(), gradcompGetLastError());
  }
}

#define CK(x)                                                                                \
  do {                                                                                       \
    auto rc_ = (x);                                                                          \
    if ((int)rc_ != 0) {                                                                     \
      fprintf(stderr, "rank %d: %s failed (%d) at line %d\n", rank, #x, (int)rc_, __LINE__); \
      exit(2);                                                                               \
    }                                                                                        \
  } while (0)

ncclUniqueId exchangeId(const char* path) {
  ncclUniqueId id;
  if (rank == 0) {
    CK(ncclGetUniqueId(&id));
    std::string tmp = std::string(path) + ".tmp";
    FILE* f = fopen(tmp.c_str(), "wb");
    fwrite(&id, sizeof(id), 1, f);
    fclose(f);
    rename(tmp.c_str(), path);
    return id;
  }
  for (int i = 0; i < 1200; ++i) {
    FILE* f = fopen(path, "rb");
    if (f && fread(&id, sizeof(id), 1, f) == 1) {
      fclose(f);
      return id;
    }
    if (f) fclose(f);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  fprintf(stderr, "rank %d: no NCCL id at %s after 120 s\n", rank, path);
  exit(2);
}

void checkAlgo(ncclComm_t nc, cudaStream_t st, gradcompAlgo_t algo, DType t, bool avg, size_t n) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.algo = algo;
  cfg.minElements = 0;
  cfg.bucketSize = 64;
  gradcompComm_t gc;
  CK(gradcompCommCreate(nc, &cfg, &gc));
  const size_t esz = t == DType::F32 ? 4 : 2;
  void* dbuf;
  CK(cudaMalloc(&dbuf, n * esz + 16));
  std::vector<Rank> refState = makeInputs(nranks, n, t, 1);
  for (int step = 0; step < 3; ++step) {
    std::vector<Rank> in = makeInputs(nranks, n, t, 100 * step + n + algo);
    for (int i = 0; i < nranks; ++i) {
      in[i].residual = refState[i].residual, in[i].ownerRes = refState[i].ownerRes;
    }
    // On the call's stream: a pageable cudaMemcpy may return before its DMA
    // lands, and the non-blocking stream would not wait for it.
    CK(cudaMemcpyAsync(dbuf, data(in[rank], t), n * esz, cudaMemcpyHostToDevice, st));
    gradcompResult_t res =
        gradcompAllReduce(dbuf, dbuf, n, nccl(t), avg ? ncclAvg : ncclSum, gc, st);
    CK(cudaStreamSynchronize(st));
    std::vector<Rank> out = in;
    CK(cudaMemcpy(t == DType::F32 ? (void*)out[rank].f32.data() : (void*)out[rank].half.data(),
                  dbuf, n * esz, cudaMemcpyDeviceToHost));
    refState = in;
    std::vector<float> expect = algo == gradcompAlgoRing ? refRing(refState, t, n, cfg, step, avg)
                                : algo == gradcompAlgoAllgather
                                    ? refAllgather(refState, t, n, cfg, step, avg)
                                    : refTwoShot(refState, t, n, cfg, step, avg);
    std::vector<float> got = widen(out[rank], t, n);
    char what[160];
    snprintf(what, sizeof(what), "algo=%d dtype=%d avg=%d n=%zu step=%d", (int)algo, (int)t, avg, n,
             step);
    report(res == gradcompSuccess && memcmp(got.data(), expect.data(), n * 4) == 0, what);
  }
  cudaFree(dbuf);
  gradcompCommDestroy(gc);
}

// Hash of a result's bits, gathered from every rank: equal everywhere.
bool sameOnAllRanks(ncclComm_t nc, cudaStream_t st, const std::vector<float>& x) {
  uint64_t h = 1469598103934665603ull;
  const unsigned char* b = reinterpret_cast<const unsigned char*>(x.data());
  for (size_t i = 0; i < x.size() * 4; ++i) h = (h ^ b[i]) * 1099511628211ull;
  uint64_t* d;
  CK(cudaMalloc(&d, 8 * (nranks + 1)));
  CK(cudaMemcpy(d + nranks, &h, 8, cudaMemcpyHostToDevice));
  CK(ncclAllGather(d + nranks, d, 1, ncclUint64, nc, st));
  CK(cudaStreamSynchronize(st));
  std::vector<uint64_t> all(nranks);
  CK(cudaMemcpy(all.data(), d, 8 * nranks, cudaMemcpyDeviceToHost));
  cudaFree(d);
  for (uint64_t a : all) {
    if (a != h) return false;
  }
  return true;
}

// Output element check. The sparse exchange sums in rank order, bit for bit
// with the reference. Rand-k and the dense fallback sum through NCCL's fp32
// allreduce, whose order is NCCL's: one addition (N = 2) is still exact (up
// to the sign of a zero); for N > 2 two orders differ by at most
// 2(N-1) 2^-24 sum|terms|, then one rounding to t may differ by an ulp.
bool sparseClose(float got, float want, const SparseCall& call, size_t i, DType t, bool avg) {
  if (memcmp(&got, &want, 4) == 0 || (got == 0.0f && want == 0.0f)) return true;
  if (!call.rsum || nranks <= 2) return false;
  const double div = avg ? nranks : 1;
  double tol = 2.0 * (nranks - 1) * ldexp(call.absSum[i], -24) / div * 1.001;
  if (t != DType::F32) tol += ldexp(fabs((double)want) + tol, t == DType::F16 ? -10 : -7);
  return fabs((double)got - (double)want) <= tol;
}

struct SparseCase {
  const char* name;
  gradcompMethod_t method;
  gradcompSelect_t select;
  ncclDataType_t valueType;
  bool dgcExtras;  // momentum correction, masking, warm-up, clipping
};

// Three calls on one buffer of a fresh comm: every rank computes all ranks'
// inputs and the serial reference, and checks its own output.
void checkSparse(ncclComm_t nc, cudaStream_t st, const SparseCase& sc, DType t, bool avg,
                 size_t n) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = sc.method;
  cfg.select = sc.select;
  cfg.valueType = sc.valueType;
  cfg.minElements = 0;
  cfg.seed = 4321;
  cfg.density = 0.01f;
  cfg.errorFeedback = 1;
  if (sc.dgcExtras) {
    cfg.momentum = 0.9f;
    cfg.momentumCorrection = 1;
    cfg.momentumMasking = 1;
    cfg.warmupSteps = 4;  // densities 25%, 6.25%, 1.5625% on calls 0..2
    cfg.clipNorm = 50.0f;
  } else if (sc.method == gradcompMethodDgc) {
    cfg.momentumCorrection = 0;
  }
  gradcompComm_t gc;
  CK(gradcompCommCreate(nc, &cfg, &gc));
  const size_t esz = t == DType::F32 ? 4 : 2;
  void* dbuf;
  CK(cudaMalloc(&dbuf, n * esz + 16));
  std::vector<SparseState> state(nranks);
  for (int step = 0; step < 3; ++step) {
    std::vector<Rank> in = makeInputs(nranks, n, t, 1000 * step + n + 7 * sc.method);
    std::vector<std::vector<float>> g(nranks);
    for (int r = 0; r < nranks; ++r) g[r] = widen(in[r], t, n);
    SparseCall call;
    const std::vector<float> expect = refSparse(cfg, t, avg, (uint64_t)step, g, state, &call);
    // On the call's stream: a pageable cudaMemcpy may return before its DMA
    // lands, and the non-blocking stream would not wait for it.
    CK(cudaMemcpyAsync(dbuf, data(in[rank], t), n * esz, cudaMemcpyHostToDevice, st));
    gradcompResult_t res =
        gradcompAllReduce(dbuf, dbuf, n, nccl(t), avg ? ncclAvg : ncclSum, gc, st);
    CK(cudaStreamSynchronize(st));
    Rank out = in[rank];
    CK(cudaMemcpy(t == DType::F32 ? (void*)out.f32.data() : (void*)out.half.data(), dbuf, n * esz,
                  cudaMemcpyDeviceToHost));
    const std::vector<float> got = widen(out, t, n);
    size_t bad = 0, first = n;
    for (size_t i = 0; i < n; ++i) {
      if (!sparseClose(got[i], expect[i], call, i, t, avg)) {
        if (!bad++) first = i;
      }
    }
    gradcompStats_t stats;
    gradcompGetStats(gc, &stats);
    // selectedLast is not checked: on the CUDA backend it arrives
    // asynchronously and may describe the previous call (docs/sparse.md).
    const bool statsOk = stats.targetLast == call.k;
    char what[256];
    snprintf(what, sizeof(what),
             "sparse %s dtype=%d avg=%d n=%zu step=%d: %zu mismatches (first i=%zu got %.9g want "
             "%.9g), target %llu/%zu",
             sc.name, (int)t, avg, n, step, bad, first, first < n ? got[first] : 0.0,
             first < n ? expect[first] : 0.0, (unsigned long long)stats.targetLast, call.k);
    report(res == gradcompSuccess && bad == 0 && statsOk, what);
    report(sameOnAllRanks(nc, st, got), std::string(what) + ": same on all ranks");
  }
  cudaFree(dbuf);
  gradcompCommDestroy(gc);
}

// Capture one call into a graph and replay it; an identical comm makes the
// same calls eagerly; results and residual state must match bit for bit.
void checkGraph(ncclComm_t nc, cudaStream_t st) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 0;
  gradcompComm_t eager, graphed;
  CK(gradcompCommCreate(nc, &cfg, &eager));
  CK(gradcompCommCreate(nc, &cfg, &graphed));
  const size_t n = 1 << 18;
  std::vector<float> g = gctest::normal(n, 77 + rank);
  float *a, *b;
  CK(cudaMalloc(&a, n * 4));
  CK(cudaMalloc(&b, n * 4));
  const int replays = 4;
  bool ok = true;
  // Warm-up (creates state and workspace), then capture.
  CK(cudaMemcpyAsync(a, g.data(), n * 4, cudaMemcpyHostToDevice, st));
  CK(cudaMemcpyAsync(b, g.data(), n * 4, cudaMemcpyHostToDevice, st));
  ok &= gradcompAllReduceKeyed(a, a, n, ncclFloat32, ncclAvg, eager, st, 7) == gradcompSuccess;
  ok &= gradcompAllReduceKeyed(b, b, n, ncclFloat32, ncclAvg, graphed, st, 7) == gradcompSuccess;
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  gradcompResult_t cap = gradcompAllReduceKeyed(b, b, n, ncclFloat32, ncclAvg, graphed, st, 7);
  CK(cudaStreamEndCapture(st, &graph));
  ok &= cap == gradcompSuccess;
  CK(cudaGraphInstantiate(&exec, graph, 0));
  // Every replay advances the comm's device step counter exactly as an eager
  // call does, so `replays` replays equal `replays` eager calls, bit for bit.
  for (int k = 0; k < replays; ++k) {
    CK(cudaGraphLaunch(exec, st));
    ok &= gradcompAllReduceKeyed(a, a, n, ncclFloat32, ncclAvg, eager, st, 7) == gradcompSuccess;
  }
  CK(cudaStreamSynchronize(st));
  std::vector<float> ra(n), rb(n);
  CK(cudaMemcpy(ra.data(), a, n * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(rb.data(), b, n * 4, cudaMemcpyDeviceToHost));
  report(ok && memcmp(ra.data(), rb.data(), n * 4) == 0, "graph replays equal eager calls");
  // And the residual state is the same too.
  size_t sa = 0, sb = 0;
  gradcompCommStateSize(eager, &sa);
  gradcompCommStateSize(graphed, &sb);
  std::vector<char> bufA(sa), bufB(sb);
  bool saved = sa == sb && gradcompCommSaveState(eager, bufA.data(), sa) == gradcompSuccess &&
               gradcompCommSaveState(graphed, bufB.data(), sb) == gradcompSuccess;
  // Skip the header's checksum and host step and the record's host call
  // count (the graphed comm counted 2 host calls, the eager one 1 +
  // replays); the rest (key, sizes, residuals) must match. Layout
  // (plugin/state.cc): a 112-byte header with the CRC at 12 and the step at
  // 24, then per buffer a 16-byte record prefix and a 48-byte record with the
  // calls at 32, then its arrays.
  if (saved && sa >= 112 + 64) {
    for (std::vector<char>* b : {&bufA, &bufB}) {
      memset(b->data() + 12, 0, 4), memset(b->data() + 24, 0, 8);
      memset(b->data() + 112 + 16 + 32, 0, 8);
    }
  }
  report(saved && sa >= 112 + 64 && memcmp(bufA.data(), bufB.data(), sa) == 0,
         "graph replays leave the same residuals as eager calls");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaFree(a);
  cudaFree(b);
  gradcompCommDestroy(eager);
  gradcompCommDestroy(graphed);
}

void checkPassThrough(ncclComm_t nc, cudaStream_t st) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  gradcompComm_t gc;
  CK(gradcompCommCreate(nc, &cfg, &gc));
  const size_t n = 1000;
  std::vector<int32_t> v(n), out(n);
  for (size_t i = 0; i < n; ++i) v[i] = rank * 7 + (int)i;
  int32_t* d;
  CK(cudaMalloc(&d, n * 4));
  CK(cudaMemcpyAsync(d, v.data(), n * 4, cudaMemcpyHostToDevice, st));
  gradcompResult_t r = gradcompAllReduce(d, d, n, ncclInt32, ncclSum, gc, st);
  CK(cudaStreamSynchronize(st));
  CK(cudaMemcpy(out.data(), d, n * 4, cudaMemcpyDeviceToHost));
  bool ok = r == gradcompSuccess;
  for (size_t i = 0; i < n; ++i) ok &= out[i] == 7 * nranks * (nranks - 1) / 2 + nranks * (int)i;
  gradcompStats_t s;
  gradcompGetStats(gc, &s);
  report(ok && s.callsPassedThrough == 1 && s.callsCompressed == 0, "int32 sum passes through");
  cudaFree(d);
  gradcompCommDestroy(gc);
}

// Ranks restored from checkpoints of different steps: the first call after
// the load checks the step on every rank (one allgather) and fails on all of
// them; restored consistently, the next call works and agrees.
void checkRestoredSteps(ncclComm_t nc, cudaStream_t st) {
  if (nranks < 2) return;
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.method = gradcompMethodRandk;
  cfg.minElements = 0;
  gradcompComm_t gc;
  CK(gradcompCommCreate(nc, &cfg, &gc));
  const size_t n = 100003;
  std::vector<float> g = gctest::normal(n, 91 + rank), got(n);
  float* d;
  CK(cudaMalloc(&d, n * 4));
  auto call = [&] {
    CK(cudaMemcpyAsync(d, g.data(), n * 4, cudaMemcpyHostToDevice, st));
    gradcompResult_t r = gradcompAllReduceKeyed(d, d, n, ncclFloat32, ncclSum, gc, st, 3);
    CK(cudaStreamSynchronize(st));
    return r;
  };
  auto save = [&] {
    size_t bytes = 0;
    CK(gradcompCommStateSize(gc, &bytes));
    std::vector<char> b(bytes);
    CK(gradcompCommSaveState(gc, b.data(), bytes));
    return b;
  };
  bool ok = call() == gradcompSuccess;
  const std::vector<char> s1 = save();
  ok &= call() == gradcompSuccess;
  const std::vector<char> s2 = save();
  const std::vector<char>& mine = rank == 0 ? s1 : s2;
  ok &= gradcompCommLoadState(gc, mine.data(), mine.size()) == gradcompSuccess;
  report(ok && call() == gradcompInvalidUsage, "ranks restored at different steps all fail");
  ok = gradcompCommLoadState(gc, s2.data(), s2.size()) == gradcompSuccess;
  ok &= call() == gradcompSuccess;
  CK(cudaMemcpy(got.data(), d, n * 4, cudaMemcpyDeviceToHost));
  report(ok, "restored at the same step: the next call works");
  report(sameOnAllRanks(nc, st, got), "restored at the same step: same on all ranks");
  cudaFree(d);
  gradcompCommDestroy(gc);
}

}  // namespace

int main() {
  rank = atoi(getenv("GC_RANK") ? getenv("GC_RANK") : "0");
  nranks = atoi(getenv("GC_NRANKS") ? getenv("GC_NRANKS") : "1");
  const char* idPath = getenv("GC_ID_FILE") ? getenv("GC_ID_FILE") : "/tmp/gradcomp_nccl_id";
  int ndev = 0;
  CK(cudaGetDeviceCount(&ndev));
  CK(cudaSetDevice(rank % ndev));
  ncclUniqueId id = exchangeId(idPath);
  ncclComm_t nc;
  CK(ncclCommInitRank(&nc, nranks, id, rank));
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  for (gradcompAlgo_t algo : {gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather})
    for (DType t : {DType::F32, DType::F16, DType::BF16})
      for (bool avg : {false, true})
        for (size_t n : {(size_t)1, (size_t)100, (size_t)5000, (size_t)100003})
          checkAlgo(nc, st, algo, t, avg, n);
  const SparseCase sparseCases[] = {
      {"topk-threshold", gradcompMethodTopk, gradcompSelectThreshold, ncclFloat32, false},
      {"topk-exact-bf16values", gradcompMethodTopk, gradcompSelectExact, ncclBfloat16, false},
      {"dgc-threshold", gradcompMethodDgc, gradcompSelectThreshold, ncclFloat16, false},
      {"dgc-extras-threshold", gradcompMethodDgc, gradcompSelectThreshold, ncclFloat32, true},
      {"dgc-extras-exact", gradcompMethodDgc, gradcompSelectExact, ncclBfloat16, true},
      {"randk", gradcompMethodRandk, gradcompSelectThreshold, ncclFloat32, false}};
  for (const SparseCase& sc : sparseCases)
    for (DType t : {DType::F32, DType::BF16})
      for (bool avg : {false, true})
        for (size_t n : {(size_t)7, (size_t)5000, (size_t)100003})
          checkSparse(nc, st, sc, t, avg, n);
  checkGraph(nc, st);
  checkPassThrough(nc, st);
  checkRestoredSteps(nc, st);
  ncclCommDestroy(nc);
  printf("multirank rank %d of %d: %d passed, %d failed\n", rank, nranks, passed, failed);
  return failed ? 1 : 0;
}
