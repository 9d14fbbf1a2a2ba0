// Multi-process NCCL test of gradcompAllReduce on the CUDA backend. Launched
// as N processes by tools/multirank_check.sh (all on one GPU with a distinct
// NCCL_HOSTID each, or one GPU per rank). Every rank checks its results bit
// for bit against the serial host reference of the same algorithm (which
// also makes them identical across ranks), then the sparse methods (top-k,
// DGC, rand-k) against tests/common/ref_sparse.h, then CUDA-graph capture
// against eager calls, then calls of one comm on two streams, then set-ups
// that every rank must refuse alike, then
// pass-through; then gradcompReduceScatter (QSGD fixed and DQ-SGD bits, the
// sparse methods, in place, a graph, pass-through) against tests/common/ref_rs.h
// (ref_hier_rs.h when hierarchical) and a sum that overflows in one rank's
// block (every rank clears its state: checkRsOverflow), then GRADCOMP_CHECK_CALLS, then
// GRADCOMP_AUTO, then GRADCOMP_CHECK_CALLS's refusal on one rank. Prints "N passed, M
// failed" and, for the reduce-scatter checks alone, "multirank rs ...: N passed,
// M failed"; after each section, a "multirank progress" line with the counts
// so far, which the script reads when its time limit cuts a run short.
// With GRADCOMP_LOCAL_SIZE=L > 1 (tools/multirank_check.sh runs N = 4, L = 2)
// the comms are hierarchical (nodes of L consecutive ranks) and the
// references those of tests/common/ref_hier.h and ref_hier_rs.h; L = 2 keeps
// the in-node sums exact whatever order NCCL adds in.
//
// With GC_ABORT_TEST=1 it runs the abort check alone (abortMain): after one
// healthy call the last rank exits while the others are in a compressed
// call (two-shot, or hierarchical with GRADCOMP_LOCAL_SIZE=2), whose NCCL
// kernels then wait for it forever; each survivor aborts its NCCL comm
// (ncclCommAbort; hierarchical: in one NCCL group with gradcompCommStop) and
// then gradcompCommAbort, which must return within
// kAbortBoundSec (a watchdog fails the rank instead of letting it hang).
// Prints "multirank abort rank R of N: P passed, F failed".
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gradcomp.h"
#include "tests/common/ref_algos.h"
#include "tests/common/ref_hier.h"
#include "tests/common/ref_hier_rs.h"
#include "tests/common/ref_rs.h"
#include "tests/common/ref_sparse.h"
#include "tests/common/owner_place.h"
#include "tests/common/state_blob.h"
#include "tests/common/stats_compare.h"

using namespace gctest::ref;

namespace {

int passed = 0, failed = 0, rank = 0, nranks = 1;
int localSize = 0;  // GRADCOMP_LOCAL_SIZE > 1: the hierarchical suite
// GRADCOMP_PRIVATE_COMM=1 (tools/multirank_check.sh's N:L:nbp worlds): every
// comm exchanges on a private split of the NCCL communicator.
int privateComm = 0;
bool inRs = false;  // counting reduce-scatter checks
int rsPassed = 0, rsFailed = 0;

void report(bool ok, const std::string& what) {
  if (inRs) ++(ok ? rsPassed : rsFailed);
  if (ok) {
    ++passed;
  } else {
    ++failed;
    fprintf(stderr, "rank %d FAILED: %s (%s)\n", rank, what.c_str(), gradcompGetLastError());
  }
}

// A line per finished section, flushed (stdout is a file): a run that the
// script's time limit cuts short still shows how far it got and what passed.
void progress(const char* section) {
  printf("multirank progress rank %d of %d: %s done: %d passed, %d failed\n", rank, nranks, section,
         passed, failed);
  fflush(stdout);
}

#define CK(x)                                                                                \
  do {                                                                                       \
    auto rc_ = (x);                                                                          \
    if ((int)rc_ != 0) {                                                                     \
      fprintf(stderr, "rank %d: %s failed (%d) at line %d\n", rank, #x, (int)rc_, __LINE__); \
      exit(2);                                                                               \
    }                                                                                        \
  } while (0)

// The test's own NCCL calls on a non-blocking communicator (the worlds
// tools/multirank_check.sh runs with NCCL_COMM_BLOCKING=0): NCCL answers
// ncclInProgress until its thread has enqueued the call, and refuses the
// next call until then, so each is polled to its end, as a program does.
ncclResult_t settled(ncclComm_t nc, ncclResult_t r) {
  while (r == ncclInProgress) {
    if (ncclCommGetAsyncError(nc, &r) != ncclSuccess) return ncclInternalError;
  }
  return r;
}

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

// `count` elements of type t at device address d, as fp32.
std::vector<float> downloadAsFloat(const void* d, DType t, size_t count) {
  Rank out;
  out.f32.resize(count);
  out.half.resize(count);
  CK(cudaMemcpy(t == DType::F32 ? (void*)out.f32.data() : (void*)out.half.data(), d,
                count * (t == DType::F32 ? 4 : 2), cudaMemcpyDeviceToHost));
  return widen(out, t, count);
}

// The config a check's comm starts from: gradcompConfigInit's, exchanging on
// a private split of the NCCL communicator where the world asks
// (GRADCOMP_PRIVATE_COMM=1).
gradcompConfig_t worldConfig() {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.privateComm = privateComm;
  return cfg;
}

// worldConfig with the suite's nodes (GRADCOMP_LOCAL_SIZE).
gradcompConfig_t nodesConfig() {
  gradcompConfig_t cfg = worldConfig();
  cfg.localSize = localSize;
  return cfg;
}

// `cfg` for a check of compression: auto must not pass calls to NCCL
// (autoTune=0), nor minElements the small ones.
gradcompConfig_t compressing(gradcompConfig_t cfg) {
  cfg.autoTune = 0;
  cfg.minElements = 0;
  return cfg;
}

// pipelineBytes > 0: the pipelined two-shot or ring (comm stream + events on
// the CUDA backend) must give the unpipelined reference's bits.
void checkAlgo(ncclComm_t nc, cudaStream_t st, gradcompAlgo_t algo, DType t, bool avg, size_t n,
               size_t pipelineBytes = 0, gradcompRounding_t rounding = gradcompRoundStochastic) {
  gradcompConfig_t cfg = compressing(nodesConfig());
  cfg.algo = algo;
  cfg.rounding = rounding;
  cfg.pipelineBytes = pipelineBytes;
  cfg.bucketSize = 64;
  const int nodes = localSize > 1 ? nranks / localSize : nranks;
  const gradcompAlgo_t mid = algo != gradcompAlgoAuto ? algo
                             : nodes <= 2             ? gradcompAlgoAllgather
                                                      : gradcompAlgoTwoShot;
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
    refState = in;
    std::vector<float> expect =
        localSize > 1                   ? refHier(refState, t, n, cfg, step, avg, localSize, mid)
        : algo == gradcompAlgoRing      ? refRing(refState, t, n, cfg, step, avg)
        : algo == gradcompAlgoAllgather ? refAllgather(refState, t, n, cfg, step, avg)
                                        : refTwoShot(refState, t, n, cfg, step, avg);
    std::vector<float> got = downloadAsFloat(dbuf, t, n);
    char what[160];
    snprintf(what, sizeof(what),
             "algo=%d dtype=%d avg=%d n=%zu step=%d pipelineBytes=%zu rounding=%d", (int)algo,
             (int)t, avg, n, step, pipelineBytes, (int)rounding);
    report(res == gradcompSuccess && memcmp(got.data(), expect.data(), n * 4) == 0, what);
    if (localSize > 1) {
      gradcompStats_t stats;
      gradcompGetStats(gc, &stats);
      // Only a rank whose bucket-aligned shard is not empty crosses nodes
      // (n = 1: local rank 1's shard is).
      const std::vector<size_t> shard = split(n, localSize, cfg.bucketSize);
      const int j = rank % localSize;
      const bool crosses = shard[j + 1] > shard[j];
      report(stats.callsPerAlgo[gradcompAlgoHier] == (uint64_t)step + 1 &&
                 (crosses ? stats.bytesInterNode > 0 : stats.bytesInterNode == 0) &&
                 stats.bytesInterNode < stats.bytesOnWire,
             std::string(what) + ": hier counted, inter-node bytes below the total");
      // Pipelined: the in-node stages run piece by piece around two-shot's pieces.
      if (pipelineBytes > 0) report(stats.piecesLast > 1, std::string(what) + ": hier pipelined");
    }
  }
  cudaFree(dbuf);
  gradcompCommDestroy(gc);
}

// Words gathered from every rank (one ncclAllGather): equal everywhere.
bool sameWordsOnAllRanks(ncclComm_t nc, cudaStream_t st, const std::vector<uint64_t>& w) {
  const size_t k = w.size();
  uint64_t* d;
  CK(cudaMalloc(&d, 8 * k * (nranks + 1)));
  // On the gather's stream: a pageable cudaMemcpy may return before its DMA
  // lands, and the non-blocking stream would not wait for it.
  CK(cudaMemcpyAsync(d + k * nranks, w.data(), 8 * k, cudaMemcpyHostToDevice, st));
  CK(settled(nc, ncclAllGather(d + k * nranks, d, k, ncclUint64, nc, st)));
  CK(cudaStreamSynchronize(st));
  std::vector<uint64_t> all(k * nranks);
  CK(cudaMemcpy(all.data(), d, 8 * k * nranks, cudaMemcpyDeviceToHost));
  cudaFree(d);
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i] != w[i % k]) return false;
  }
  return true;
}

// Hash of a result's bits, gathered from every rank: equal everywhere.
bool sameOnAllRanks(ncclComm_t nc, cudaStream_t st, const std::vector<float>& x) {
  uint64_t h = 1469598103934665603ull;
  const unsigned char* b = reinterpret_cast<const unsigned char*>(x.data());
  for (size_t i = 0; i < x.size() * 4; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return sameWordsOnAllRanks(nc, st, {h});
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

// The config of a sparse case, for the allreduce and the reduce-scatter.
gradcompConfig_t sparseCaseConfig(const SparseCase& sc, uint64_t seed) {
  gradcompConfig_t cfg = compressing(nodesConfig());
  cfg.method = sc.method;
  cfg.select = sc.select;
  cfg.valueType = sc.valueType;
  cfg.seed = seed;
  cfg.density = 0.01f;
  if (sc.dgcExtras) {
    cfg.momentumCorrection = 1;
    cfg.momentumMasking = 1;
    cfg.warmupSteps = 4;  // densities 25%, 6.25%, 1.5625% on calls 0..2
    cfg.clipNorm = 50.0f;
  } else if (sc.method == gradcompMethodDgc) {
    cfg.momentumCorrection = 0;
  }
  return cfg;
}

// Three calls on one buffer of a fresh comm: every rank computes all ranks'
// inputs and the serial reference, and checks its own output.
void checkSparse(ncclComm_t nc, cudaStream_t st, const SparseCase& sc, DType t, bool avg,
                 size_t n) {
  gradcompConfig_t cfg = sparseCaseConfig(sc, 4321);
  cfg.errorFeedback = 1;
  if (sc.dgcExtras) cfg.momentum = 0.9f;
  gradcompComm_t gc;
  CK(gradcompCommCreate(nc, &cfg, &gc));
  const size_t esz = t == DType::F32 ? 4 : 2;
  void* dbuf;
  CK(cudaMalloc(&dbuf, n * esz + 16));
  std::vector<SparseState> state(nranks);
  std::vector<std::vector<SparseState>> shardState;  // hier: per shard, per node
  for (int step = 0; step < 3; ++step) {
    std::vector<Rank> in = makeInputs(nranks, n, t, 1000 * step + n + 7 * sc.method);
    std::vector<std::vector<float>> g(nranks);
    for (int r = 0; r < nranks; ++r) g[r] = widen(in[r], t, n);
    SparseCall call;
    // Hier: the node sums and the exchange across 2 nodes are exact, so the
    // whole result is bit for bit (call.rsum stays false).
    const std::vector<float> expect =
        localSize > 1 ? refHierSparse(cfg, t, avg, (uint64_t)step, g, shardState, localSize)
                      : refSparse(cfg, t, avg, (uint64_t)step, g, state, &call);
    // On the call's stream: a pageable cudaMemcpy may return before its DMA
    // lands, and the non-blocking stream would not wait for it.
    CK(cudaMemcpyAsync(dbuf, data(in[rank], t), n * esz, cudaMemcpyHostToDevice, st));
    gradcompResult_t res =
        gradcompAllReduce(dbuf, dbuf, n, nccl(t), avg ? ncclAvg : ncclSum, gc, st);
    CK(cudaStreamSynchronize(st));
    const std::vector<float> got = downloadAsFloat(dbuf, t, n);
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
    const bool statsOk = localSize > 1 || stats.targetLast == call.k;
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
// pipelineBytes > 0: the graphed comm is pipelined (its comm stream joins
// the capture through events), the eager one is not: same bits still.
// One call per comm (creating state and workspace), the graphed comm's next
// call captured, then `replays` rounds of a replay and an eager call; call(c,
// out) writes `count` floats at out. True when every call and the capture
// succeeded and the two outputs are then equal bit for bit: every replay
// advances the comm's device step counter exactly as an eager call does.
bool replaysEqualEager(cudaStream_t st, gradcompComm_t eager, float* a, gradcompComm_t graphed,
                       float* b, size_t count, int replays,
                       const std::function<gradcompResult_t(gradcompComm_t, float*)>& call) {
  bool ok = call(eager, a) == gradcompSuccess;
  ok &= call(graphed, b) == gradcompSuccess;
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  gradcompResult_t cap = call(graphed, b);
  CK(cudaStreamEndCapture(st, &graph));
  ok &= cap == gradcompSuccess;
  CK(cudaGraphInstantiate(&exec, graph, 0));
  for (int k = 0; k < replays; ++k) {
    CK(cudaGraphLaunch(exec, st));
    ok &= call(eager, a) == gradcompSuccess;
  }
  CK(cudaStreamSynchronize(st));
  std::vector<float> ra(count), rb(count);
  CK(cudaMemcpy(ra.data(), a, count * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(rb.data(), b, count * 4, cudaMemcpyDeviceToHost));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return ok && memcmp(ra.data(), rb.data(), count * 4) == 0;
}

void checkGraph(ncclComm_t nc, cudaStream_t st, size_t pipelineBytes,
                gradcompAlgo_t pipeAlgo = gradcompAlgoTwoShot) {
  gradcompConfig_t cfg = compressing(nodesConfig());
  if (pipelineBytes > 0) cfg.algo = pipeAlgo;
  gradcompComm_t eager, graphed;
  CK(gradcompCommCreate(nc, &cfg, &eager));
  cfg.pipelineBytes = pipelineBytes;
  CK(gradcompCommCreate(nc, &cfg, &graphed));
  const std::string pipe = pipelineBytes == 0                ? ""
                           : pipeAlgo == gradcompAlgoTwoShot ? " (pipelined)"
                                                             : " (pipelined ring)";
  const size_t n = 1 << 18;
  std::vector<float> g = gctest::normal(n, 77 + rank);
  float *a, *b;
  CK(cudaMalloc(&a, n * 4));
  CK(cudaMalloc(&b, n * 4));
  CK(cudaMemcpyAsync(a, g.data(), n * 4, cudaMemcpyHostToDevice, st));
  CK(cudaMemcpyAsync(b, g.data(), n * 4, cudaMemcpyHostToDevice, st));
  report(replaysEqualEager(st, eager, a, graphed, b, n, 4,
                           [&](gradcompComm_t c, float* x) {
                             return gradcompAllReduceKeyed(x, x, n, ncclFloat32, ncclAvg, c, st, 7);
                           }),
         "graph replays equal eager calls" + pipe);
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
         "graph replays leave the same residuals as eager calls" + pipe);
  cudaFree(a);
  cudaFree(b);
  gradcompCommDestroy(eager);
  gradcompCommDestroy(graphed);
}

// One comm's calls on two streams, issued back to back with no host sync:
// the comm shares its workspace, residual and device step counter between
// them, so each call must wait for the previous one (the CUDA backend's
// cross-stream join). The same calls on one stream of a second comm give the
// reference bits; pipelined, so the comm stream joins in too.
void checkTwoStreams(ncclComm_t nc, cudaStream_t st) {
  gradcompConfig_t cfg = compressing(nodesConfig());
  cfg.algo = localSize > 1 ? gradcompAlgoAuto : gradcompAlgoTwoShot;
  cfg.pipelineBytes = 64 << 10;
  gradcompComm_t one, two;
  CK(gradcompCommCreate(nc, &cfg, &one));
  CK(gradcompCommCreate(nc, &cfg, &two));
  cudaStream_t st2;
  CK(cudaStreamCreateWithFlags(&st2, cudaStreamNonBlocking));
  const size_t n = (1 << 18) + 77;
  const int calls = 7;
  std::vector<float*> a(calls), b(calls);
  for (int k = 0; k < calls; ++k) {
    std::vector<float> g = gctest::normal(n, 500 + 10 * k + rank);
    CK(cudaMalloc(&a[k], n * 4));
    CK(cudaMalloc(&b[k], n * 4));
    CK(cudaMemcpyAsync(a[k], g.data(), n * 4, cudaMemcpyHostToDevice, st));
    CK(cudaMemcpyAsync(b[k], g.data(), n * 4, cudaMemcpyHostToDevice, st));
  }
  CK(cudaStreamSynchronize(st));
  // One key: one residual across the calls, as a training loop's buffer. The
  // first call makes the state (a host sync); the rest are issued at once.
  bool ok = true;
  for (int k = 0; k < calls; ++k) {
    ok &=
        gradcompAllReduceKeyed(a[k], a[k], n, ncclFloat32, ncclAvg, one, st, 11) == gradcompSuccess;
  }
  for (int k = 0; k < calls; ++k) {
    ok &= gradcompAllReduceKeyed(b[k], b[k], n, ncclFloat32, ncclAvg, two, k % 2 ? st2 : st, 11) ==
          gradcompSuccess;
  }
  CK(cudaDeviceSynchronize());
  std::vector<float> ra(n), rb(n);
  for (int k = 0; k < calls; ++k) {
    CK(cudaMemcpy(ra.data(), a[k], n * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(rb.data(), b[k], n * 4, cudaMemcpyDeviceToHost));
    ok &= memcmp(ra.data(), rb.data(), n * 4) == 0;
  }
  report(ok, "calls alternating between two streams give the one-stream bits");
  report(sameOnAllRanks(nc, st, rb), "two-stream calls: the same bits on every rank");
  for (int k = 0; k < calls; ++k) {
    cudaFree(a[k]);
    cudaFree(b[k]);
  }
  cudaStreamDestroy(st2);
  gradcompCommDestroy(one);
  gradcompCommDestroy(two);
}

void checkPassThrough(ncclComm_t nc, cudaStream_t st) {
  gradcompConfig_t cfg = worldConfig();
  cfg.autoTune = 0;  // these check compression: auto must not pass calls to NCCL
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

// Reduce-scatter: three calls on one buffer of a fresh comm; every rank
// computes all ranks' inputs and the serial reference, and checks its block.
// QSGD uses the width the library reports (DQ-SGD's statistics come from the
// GPU's reduction, whose double sums may round apart from the host's), which
// must be the same on every rank.
// pipelineBytes > 0: the pipelined reduce-scatter (comm stream + events on
// the CUDA backend; hier: its middle stage, with the in-node reduce-scatter
// and the conversion piece by piece around it on the node stream) must give
// the same reference bits.
void checkRsQsgd(ncclComm_t nc, cudaStream_t st, DType t, bool avg, size_t m, bool inPlace,
                 bool dynamic, size_t pipelineBytes = 0) {
  gradcompConfig_t cfg = compressing(nodesConfig());
  cfg.bucketSize = 64;
  cfg.pipelineBytes = pipelineBytes;
  if (dynamic) {
    cfg.bitsMode = gradcompBitsDynamic;
    cfg.bitsMin = 2;
    cfg.bitsMax = 8;
    cfg.varianceTarget = 0.02f;
  }
  gradcompComm_t gc;
  CK(gradcompCommCreate(nc, &cfg, &gc));
  const size_t esz = t == DType::F32 ? 4 : 2, n = nranks * m;
  char *dsend, *drecv;
  CK(cudaMalloc(&dsend, n * esz + 16));
  CK(cudaMalloc(&drecv, m * esz + 16));
  void* recv = inPlace ? dsend + rank * m * esz : drecv;
  std::vector<Rank> refState = makeInputs(nranks, n, t, 1);
  for (int step = 0; step < 3; ++step) {
    std::vector<Rank> in = makeInputs(nranks, n, t, 100 * step + m + 3 * inPlace);
    for (int i = 0; i < nranks; ++i) in[i].residual = refState[i].residual;
    CK(cudaMemcpyAsync(dsend, data(in[rank], t), n * esz, cudaMemcpyHostToDevice, st));
    gradcompResult_t res =
        gradcompReduceScatter(dsend, recv, m, nccl(t), avg ? ncclAvg : ncclSum, gc, st);
    CK(cudaStreamSynchronize(st));
    const std::vector<float> got = downloadAsFloat(recv, t, m);
    gradcompStats_t stats;
    gradcompGetStats(gc, &stats);
    refState = in;
    const std::vector<std::vector<float>> expect =
        localSize > 1
            ? refHierReduceScatter(refState, t, m, cfg, stats.bitsLast, step, avg, localSize)
            : refReduceScatter(refState, t, m, cfg, stats.bitsLast, step, avg);
    char what[240];
    snprintf(what, sizeof(what),
             "rs qsgd%s%s dtype=%d avg=%d m=%zu inPlace=%d step=%d bits=%d pipelineBytes=%zu",
             localSize > 1 ? "-hier" : "", dynamic ? "-dynamic" : "", (int)t, avg, m, inPlace, step,
             stats.bitsLast, pipelineBytes);
    report(res == gradcompSuccess && (dynamic || stats.bitsLast == cfg.bits) &&
               memcmp(got.data(), expect[rank].data(), m * 4) == 0,
           what);
    if (pipelineBytes > 0) report(stats.piecesLast > 1, std::string(what) + ": pipelined");
    if (localSize > 1 && !dynamic) {
      // Across nodes only the (k-1) encoded blocks of the inter-node stage.
      const size_t inter = (size_t)(nranks / localSize - 1) *
                           gc::qsgd::encodedBytes(m, cfg.bits, cfg.bucketSize) * (step + 1);
      report(stats.bytesInterNode == inter, std::string(what) + ": bytesInterNode");
    }
    report(sameOnAllRanks(nc, st, std::vector<float>(1, (float)stats.bitsLast)),
           std::string(what) + ": same bits on all ranks");
  }
  cudaFree(dsend);
  cudaFree(drecv);
  gradcompCommDestroy(gc);
}

void checkRsSparse(ncclComm_t nc, cudaStream_t st, const SparseCase& sc, DType t, bool avg,
                   size_t m) {
  const gradcompConfig_t cfg = sparseCaseConfig(sc, 99);
  gradcompComm_t gc;
  CK(gradcompCommCreate(nc, &cfg, &gc));
  const size_t esz = t == DType::F32 ? 4 : 2, n = nranks * m;
  char *dsend, *drecv;
  CK(cudaMalloc(&dsend, n * esz + 16));
  CK(cudaMalloc(&drecv, m * esz + 16));
  std::vector<SparseState> state(nranks);
  std::vector<std::vector<SparseState>> hierState;
  for (int step = 0; step < 3; ++step) {
    std::vector<Rank> in = makeInputs(nranks, n, t, 1000 * step + m + 7 * sc.method);
    std::vector<std::vector<float>> g(nranks);
    for (int r = 0; r < nranks; ++r) g[r] = widen(in[r], t, n);
    const std::vector<std::vector<float>> expect =
        localSize > 1
            ? refHierSparseReduceScatter(cfg, t, avg, (uint64_t)step, g, hierState, localSize)
            : refSparseReduceScatter(cfg, t, avg, (uint64_t)step, g, state);
    CK(cudaMemcpyAsync(dsend, data(in[rank], t), n * esz, cudaMemcpyHostToDevice, st));
    gradcompResult_t res =
        gradcompReduceScatter(dsend, drecv, m, nccl(t), avg ? ncclAvg : ncclSum, gc, st);
    CK(cudaStreamSynchronize(st));
    const std::vector<float> got = downloadAsFloat(drecv, t, m);
    size_t bad = 0;
    for (size_t i = 0; i < m; ++i) bad += memcmp(&got[i], &expect[rank][i], 4) != 0;
    char what[200];
    snprintf(what, sizeof(what), "rs sparse%s %s dtype=%d avg=%d m=%zu step=%d: %zu mismatches",
             localSize > 1 ? "-hier" : "", sc.name, (int)t, avg, m, step, bad);
    report(res == gradcompSuccess && bad == 0, what);
  }
  cudaFree(dsend);
  cudaFree(drecv);
  gradcompCommDestroy(gc);
}

// One reduce-scatter captured and replayed equals the same calls made eagerly.
// pipelineBytes > 0: the graphed comm is pipelined (its comm stream joins the
// capture through events), the eager one is not: same bits still.
void checkRsGraph(ncclComm_t nc, cudaStream_t st, size_t pipelineBytes = 0) {
  gradcompConfig_t cfg = compressing(nodesConfig());
  gradcompComm_t eager, graphed;
  CK(gradcompCommCreate(nc, &cfg, &eager));
  cfg.pipelineBytes = pipelineBytes;
  CK(gradcompCommCreate(nc, &cfg, &graphed));
  const size_t m = 1 << 16, n = nranks * m;
  std::vector<float> g = gctest::normal(n, 91 + rank);
  float *in, *a, *b;
  CK(cudaMalloc(&in, n * 4));
  CK(cudaMalloc(&a, m * 4));
  CK(cudaMalloc(&b, m * 4));
  CK(cudaMemcpyAsync(in, g.data(), n * 4, cudaMemcpyHostToDevice, st));
  report(replaysEqualEager(st, eager, a, graphed, b, m, 4,
                           [&](gradcompComm_t c, float* out) {
                             return gradcompReduceScatter(in, out, m, ncclFloat32, ncclAvg, c, st);
                           }),
         std::string("rs graph replays equal eager calls") +
             (pipelineBytes > 0 ? " (pipelined)" : ""));
  cudaFree(in);
  cudaFree(a);
  cudaFree(b);
  gradcompCommDestroy(eager);
  gradcompCommDestroy(graphed);
}

void checkRsPassThrough(ncclComm_t nc, cudaStream_t st) {
  gradcompConfig_t cfg = worldConfig();
  cfg.autoTune = 0;
  gradcompComm_t gc;
  CK(gradcompCommCreate(nc, &cfg, &gc));
  const size_t m = 1000, n = nranks * m;
  std::vector<int32_t> v(n), out(m);
  for (size_t i = 0; i < n; ++i) v[i] = rank * 7 + (int)i;
  int32_t *d, *o;
  CK(cudaMalloc(&d, n * 4));
  CK(cudaMalloc(&o, m * 4));
  CK(cudaMemcpyAsync(d, v.data(), n * 4, cudaMemcpyHostToDevice, st));
  gradcompResult_t r = gradcompReduceScatter(d, o, m, ncclInt32, ncclSum, gc, st);
  CK(cudaStreamSynchronize(st));
  CK(cudaMemcpy(out.data(), o, m * 4, cudaMemcpyDeviceToHost));
  bool ok = r == gradcompSuccess;
  for (size_t i = 0; i < m; ++i) {
    ok &= out[i] == 7 * nranks * (nranks - 1) / 2 + nranks * (int)(rank * m + i);
  }
  gradcompStats_t s;
  gradcompGetStats(gc, &s);
  report(ok && s.callsPassedThrough == 1 && s.callsCompressed == 0,
         "rs int32 sum passes through to ncclReduceScatter");
  cudaFree(d);
  cudaFree(o);
  gradcompCommDestroy(gc);
}

// The non-finite check of a reduce-scatter over real NCCL
// (discardStateIfNonFinite): step 1's gradient is ordinary on every rank but
// in block `owner` (the last rank's), which holds 2.5e38..3.2e38 on every
// rank, finite, whose sum over the ranks is not. Only the owner's output is
// then non-finite; its flag, ORed over the ranks by the one-float max
// allreduce, must make every rank clear its state, the senders of the huge
// block (which hold its leftovers) included. Step 0 is ordinary (every state
// holds leftovers before the overflow), step 2 a zero gradient: its output
// is exactly zero on every rank when every state was cleared, while a rank
// that kept its state sends its leftovers into its peers' blocks. A block of
// 4096 elements (whole QSGD buckets of 512) keeps the owner's infinity out
// of the other ranks' blocks. The single-process GPU tests
// (ReliabilityGpu.OverflowingSumClearsTheStatePipelinedHierarchicalAndHalf)
// take the flag through a mirror, where it is rank 0's own.
void checkRsOverflow(ncclComm_t nc, cudaStream_t st, gradcompMethod_t method,
                     size_t pipelineBytes) {
  gradcompConfig_t cfg = compressing(nodesConfig());
  cfg.method = method;
  cfg.density = 0.05f;
  cfg.warmupSteps = 0;
  cfg.bucketSize = 512;
  cfg.pipelineBytes = pipelineBytes;
  gradcompComm_t gc;
  CK(gradcompCommCreate(nc, &cfg, &gc));
  const size_t m = 4096, n = nranks * m;
  const int owner = nranks - 1;
  float *in, *out;
  CK(cudaMalloc(&in, n * 4));
  CK(cudaMalloc(&out, m * 4));
  char name[160];
  snprintf(name, sizeof(name), "rs overflow%s method=%d pipeline=%zu", localSize > 1 ? "-hier" : "",
           (int)method, pipelineBytes);
  for (int step = 0; step < 3; ++step) {
    std::vector<float> g = gctest::normal(n, 300 + 10 * step + rank);
    if (step == 1) {
      for (size_t i = 0; i < m; ++i) {
        g[owner * m + i] = 2.5e38f + 0.7e38f * (float)((i * 2654435761u) % 1000) / 1000.0f;
      }
    }
    if (step == 2) std::fill(g.begin(), g.end(), 0.0f);
    CK(cudaMemcpyAsync(in, g.data(), n * 4, cudaMemcpyHostToDevice, st));
    const gradcompResult_t res = gradcompReduceScatter(in, out, m, ncclFloat32, ncclSum, gc, st);
    CK(cudaStreamSynchronize(st));
    std::vector<float> got(m);
    CK(cudaMemcpy(got.data(), out, m * 4, cudaMemcpyDeviceToHost));
    size_t bad = 0, nonzero = 0;
    for (float x : got) {
      bad += !std::isfinite(x);
      nonzero += x != 0.0f;
    }
    char what[320];
    if (step == 1) {
      const bool ok = rank == owner ? bad > 0 : bad == 0;
      snprintf(what, sizeof(what), "%s step 1: %zu non-finite outputs (%s)", name, bad,
               rank == owner ? "the owner's block: want some" : "a finite block: want none");
      report(res == gradcompSuccess && ok, what);
    } else if (step == 2) {
      snprintf(what, sizeof(what),
               "%s step 2 (zero gradient after the overflow): %zu nonzero outputs, want none "
               "(a rank kept its state)",
               name, nonzero);
      report(res == gradcompSuccess && nonzero == 0, what);
    } else {
      snprintf(what, sizeof(what), "%s step 0: %zu non-finite outputs", name, bad);
      report(res == gradcompSuccess && bad == 0, what);
    }
  }
  cudaFree(in);
  cudaFree(out);
  gradcompCommDestroy(gc);
}

// The set-up is collective: a rank with another local size, a bad config or
// the wrong current device makes every rank return the same error, none
// waits in ncclCommSplit, and the NCCL comm stays usable.
void checkSetupAgreement(ncclComm_t nc, int ndev) {
  if (nranks < 2) return;
  gradcompConfig_t cfg = nodesConfig();
  if (rank == nranks - 1) cfg.localSize = localSize == 1 ? nranks : 1;
  gradcompComm_t gc = nullptr;
  char want[128];
  snprintf(want, sizeof(want), "rank %d has GRADCOMP_LOCAL_SIZE (localSize) = ", nranks - 1);
  gradcompResult_t r = gradcompCommCreate(nc, &cfg, &gc);
  report(r == gradcompInvalidArgument && gc == nullptr && strstr(gradcompGetLastError(), want),
         "a rank with another local size fails the set-up on every rank");
  cfg = nodesConfig();
  if (rank == 1 % nranks) cfg.bits = 99;
  snprintf(want, sizeof(want), "rank %d of %d could not set up its gradcomp comm", 1 % nranks,
           nranks);
  r = gradcompCommCreate(nc, &cfg, &gc);
  report(r == gradcompInvalidArgument && gc == nullptr && strstr(gradcompGetLastError(), want) &&
             strstr(gradcompGetLastError(), "bits"),
         "a rank with a bad config fails the set-up on every rank");
  if (ndev >= 2) {
    cfg.bits = 4;
    const int mine = rank % ndev;
    if (rank == 0) CK(cudaSetDevice((mine + 1) % ndev));
    snprintf(want, sizeof(want), "rank 0 of %d could not set up its gradcomp comm", nranks);
    r = gradcompCommCreate(nc, &cfg, &gc);
    int now = -1;
    CK(cudaGetDevice(&now));
    report(r == gradcompInvalidUsage && gc == nullptr && strstr(gradcompGetLastError(), want) &&
               strstr(gradcompGetLastError(), "differs from the NCCL communicator's device") &&
               now == (rank == 0 ? (mine + 1) % ndev : mine),
           "a rank on the wrong device fails the set-up on every rank, its device restored");
    CK(cudaSetDevice(mine));
  }
}

// Where this rank's owner residual lies in an allreduce buffer of n
// elements on comm c of cfg (tests/common/owner_place.h), its layout from
// gradcompCommLayout, nodes of consecutive ranks as GRADCOMP_LOCAL_SIZE makes
// them. Returns {offset, length}.
std::pair<size_t, size_t> ownerPlace(gradcompComm_t c, const gradcompConfig_t& cfg, size_t n) {
  int nodes = 1, L = 1;
  CK(gradcompCommLayout(c, &nodes, &L));
  return gctest::ownerPlace(cfg, n, nranks, rank, nodes, L, rank / L, rank % L);
}

// GRADCOMP_AUTO on a real NCCL comm (default autoTune=1). The first eligible
// call under capture is refused; a retune leaves no stats and no state; a
// call auto passes equals NCCL's own result bit for bit; a call it compresses
// equals, bit for bit, the same call on an autoTune=0 comm, although a retune
// ran between the calls (the timing sets the caller's residuals and step
// aside); every rank takes the same decisions over a sweep of sizes.
void checkAuto(ncclComm_t nc, cudaStream_t st) {
  gradcompConfig_t cfg = worldConfig();
  gradcompConfig_t off = cfg;
  off.autoTune = 0;
  gradcompComm_t a, b;
  CK(gradcompCommCreate(nc, &cfg, &a));
  CK(gradcompCommCreate(nc, &off, &b));
  const size_t n = 1 << 22;
  float *x, *y, *z;
  CK(cudaMalloc(&x, n * 4));
  CK(cudaMalloc(&y, n * 4));
  CK(cudaMalloc(&z, n * 4));
  std::vector<float> g = gctest::normal(n, 99 + rank);
  CK(cudaMemcpyAsync(x, g.data(), n * 4, cudaMemcpyHostToDevice, st));
  CK(cudaStreamSynchronize(st));
  cudaGraph_t graph;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  gradcompResult_t cap = gradcompAllReduce(x, x, n, ncclFloat32, ncclSum, a, st);
  const std::string capMsg = gradcompGetLastError();
  CK(cudaStreamEndCapture(st, &graph));
  cudaGraphDestroy(graph);
  report(cap == gradcompInvalidUsage && capMsg.find("GRADCOMP_AUTO=0") != std::string::npos,
         "auto: the first eligible call under capture is refused");

  CK(gradcompCommRetune(a, st));
  gradcompStats_t sa;
  gradcompGetStats(a, &sa);
  // No buffer state: a's blob, less the figures record the retune agreed
  // (GRADCOMP_AUTO's, saved so that a resumed run decides alike), is as long
  // as that of b, which never ran a call.
  auto blob = [](gradcompComm_t c) {
    size_t bytes = 0;
    CK(gradcompCommStateSize(c, &bytes));
    std::vector<uint8_t> s(bytes);
    CK(gradcompCommSaveState(c, s.data(), bytes));
    return s;
  };
  uint64_t figures = 0;
  const std::vector<uint8_t> stateA = gctest::withoutAutoFigures(blob(a), &figures);
  const std::vector<uint8_t> stateB = blob(b);
  report(sa.callsCompressed == 0 && sa.callsPassedThrough == 0 && sa.steps == 0 &&
             sa.bytesOnWire == 0 && stateA.size() == stateB.size() && figures <= 1,
         "auto: a retune leaves no stats and no buffer state (calls " +
             std::to_string(sa.callsCompressed) + "+" + std::to_string(sa.callsPassedThrough) +
             ", steps " + std::to_string(sa.steps) + ", wire bytes " +
             std::to_string(sa.bytesOnWire) + ", state " + std::to_string(stateA.size()) + " vs " +
             std::to_string(stateB.size()) + " bytes, " + std::to_string(figures) +
             " figures records)");

  bool ok = true, allCompressed = true, anyCompressed = false;
  for (int step = 0; step < 2; ++step) {
    std::vector<float> in = gctest::normal(n, 1000 * step + rank);
    // A call auto passes after compressed calls of the buffer sends their
    // residual and owner residual along (collective.h residualPassThrough):
    // NCCL's sum of (input + residual) + owner residual on the chunk this
    // rank reduced is what it must equal then.
    std::vector<float> sent = in;
    if (anyCompressed) {
      const std::vector<uint8_t> saved = blob(a);
      const std::vector<float> carry = gctest::savedResidual(saved, n);
      for (size_t i = 0; i < carry.size() && i < n; ++i) sent[i] += carry[i];
      const std::vector<float> owner = gctest::savedOwnerResidual(saved, n);
      const auto place = ownerPlace(a, cfg, n);
      for (size_t i = 0; i < place.second && i < owner.size(); ++i)
        sent[place.first + i] += owner[i];
    }
    CK(cudaMemcpyAsync(x, in.data(), n * 4, cudaMemcpyHostToDevice, st));
    CK(cudaMemcpyAsync(y, in.data(), n * 4, cudaMemcpyHostToDevice, st));
    CK(cudaMemcpyAsync(z, sent.data(), n * 4, cudaMemcpyHostToDevice, st));
    gradcompGetStats(a, &sa);
    const uint64_t before = sa.callsCompressed;
    ok &= gradcompAllReduce(x, x, n, ncclFloat32, ncclSum, a, st) == gradcompSuccess;
    ok &= gradcompAllReduce(y, y, n, ncclFloat32, ncclSum, b, st) == gradcompSuccess;
    CK(settled(nc, ncclAllReduce(z, z, n, ncclFloat32, ncclSum, nc, st)));
    if (step == 0) ok &= gradcompCommRetune(a, st) == gradcompSuccess;
    CK(cudaStreamSynchronize(st));
    gradcompGetStats(a, &sa);
    const bool compressed = sa.callsCompressed > before;
    std::vector<float> rx(n), ry(n), rz(n);
    CK(cudaMemcpy(rx.data(), x, n * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(ry.data(), y, n * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(rz.data(), z, n * 4, cudaMemcpyDeviceToHost));
    if (!compressed) {
      ok &= memcmp(rx.data(), rz.data(), n * 4) == 0;
    } else if (allCompressed) {
      ok &= memcmp(rx.data(), ry.data(), n * 4) == 0;
    }
    allCompressed &= compressed;
    anyCompressed |= compressed;
    printf("rank %d auto step %d at %zu elements: %s\n", rank, step, n,
           compressed ? "compressed" : "passed to NCCL");
  }
  report(ok,
         "auto: passed calls equal NCCL (of input + residual after compressed ones), compressed "
         "calls equal autoTune=0 across a retune");

  // A sweep of sizes: every rank passes the same calls (the decision does not
  // read the data; y holds zeros for the bf16 calls).
  CK(cudaMemsetAsync(y, 0, n * 4, st));
  for (size_t m = size_t(1) << 18; m <= n; m <<= 1) {
    ok &= gradcompAllReduce(x, x, m, ncclFloat32, ncclSum, a, st) == gradcompSuccess;
    ok &= gradcompAllReduce(y, y, m, ncclBfloat16, ncclSum, a, st) == gradcompSuccess;
  }
  gradcompGetStats(a, &sa);
  const std::vector<uint64_t> mine = {sa.callsAutoPassed, sa.callsCompressed};
  ok &= sameWordsOnAllRanks(nc, st, mine);
  printf("rank %d auto sweep: %llu calls passed by auto, %llu compressed\n", rank,
         (unsigned long long)mine[0], (unsigned long long)mine[1]);
  report(ok, "auto: every rank takes the same decisions");
  cudaFree(x);
  cudaFree(y);
  cudaFree(z);
  gradcompCommDestroy(a);
  gradcompCommDestroy(b);
}

// GRADCOMP_AUTO on the reduce-scatter over real NCCL (flat, or hierarchical
// in the GRADCOMP_LOCAL_SIZE world): it times its own two paths at its first
// eligible call; a call auto passes equals ncclReduceScatter bit for bit; a
// call it compresses equals, bit for bit, the same call on an autoTune=0
// comm, although a retune (which re-times the reduce-scatter) ran between the
// calls and left the stats as they were; every rank takes the same decisions
// over a sweep of sizes and types.
void checkAutoRs(ncclComm_t nc, cudaStream_t st) {
  if (nranks < 2) return;
  gradcompConfig_t cfg = nodesConfig();
  gradcompConfig_t off = cfg;
  off.autoTune = 0;
  gradcompComm_t a, b;
  CK(gradcompCommCreate(nc, &cfg, &a));
  CK(gradcompCommCreate(nc, &off, &b));
  const size_t m = size_t(1) << 20, n = m * nranks;  // recvcount, input count
  float *x, *ya, *yb, *yz;
  CK(cudaMalloc(&x, n * 4));
  CK(cudaMalloc(&ya, m * 4));
  CK(cudaMalloc(&yb, m * 4));
  CK(cudaMalloc(&yz, m * 4));
  bool ok = true, allCompressed = true, retuneKeptStats = true, anyCompressed = false;
  gradcompStats_t sa, sr;
  float* xz;  // NCCL's input: the call's, plus the residual a passed call sends along
  CK(cudaMalloc(&xz, n * 4));
  for (int step = 0; step < 2; ++step) {
    std::vector<float> in = gctest::normal(n, 2000 * step + rank);
    // After compressed calls, a passed one sends their residual along; the
    // hierarchical reduce-scatter keeps it in its permuted block order
    // (state block l*k + j is input block R(j, l) = (j*G + l), the ranks
    // grouped by GRADCOMP_LOCAL_SIZE as the suite groups them).
    std::vector<float> sent = in;
    if (anyCompressed) {
      size_t bytes = 0;
      CK(gradcompCommStateSize(a, &bytes));
      std::vector<uint8_t> s(bytes);
      CK(gradcompCommSaveState(a, s.data(), bytes));
      const std::vector<float> carry = gctest::savedResidual(s, n);
      const int G = localSize > 1 && nranks / localSize >= 2 ? localSize : 1, k = nranks / G;
      for (int l = 0; l < G && carry.size() == n; ++l) {
        for (int j = 0; j < k; ++j) {
          const size_t from = ((size_t)l * k + j) * m;
          const size_t to = (G > 1 ? (size_t)(j * G + l) : (size_t)l * k + j) * m;
          for (size_t e = 0; e < m; ++e) sent[to + e] += carry[from + e];
        }
      }
    }
    CK(cudaMemcpyAsync(x, in.data(), n * 4, cudaMemcpyHostToDevice, st));
    CK(cudaMemcpyAsync(xz, sent.data(), n * 4, cudaMemcpyHostToDevice, st));
    gradcompGetStats(a, &sa);
    const uint64_t before = sa.callsCompressed;
    ok &= gradcompReduceScatter(x, ya, m, ncclFloat32, ncclSum, a, st) == gradcompSuccess;
    ok &= gradcompReduceScatter(x, yb, m, ncclFloat32, ncclSum, b, st) == gradcompSuccess;
    CK(settled(nc, ncclReduceScatter(xz, yz, m, ncclFloat32, ncclSum, nc, st)));
    gradcompGetStats(a, &sa);
    if (step == 0) {
      ok &= gradcompCommRetune(a, st) == gradcompSuccess;
      gradcompGetStats(a, &sr);
      retuneKeptStats = gctest::sameStats(sa, sr);
    }
    CK(cudaStreamSynchronize(st));
    const bool compressed = sa.callsCompressed > before;
    std::vector<float> ra(m), rb(m), rz(m);
    CK(cudaMemcpy(ra.data(), ya, m * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(rb.data(), yb, m * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(rz.data(), yz, m * 4, cudaMemcpyDeviceToHost));
    if (!compressed) {
      ok &= memcmp(ra.data(), rz.data(), m * 4) == 0;
    } else if (allCompressed) {
      ok &= memcmp(ra.data(), rb.data(), m * 4) == 0;
    }
    allCompressed &= compressed;
    anyCompressed |= compressed;
    printf("rank %d auto reduce-scatter step %d at recvcount %zu: %s\n", rank, step, m,
           compressed ? "compressed" : "passed to NCCL");
  }
  report(retuneKeptStats, "auto reduce-scatter: a retune leaves the stats as they were");
  report(ok,
         "auto reduce-scatter: passed calls equal NCCL, compressed calls equal autoTune=0 across "
         "a retune");

  // The sweep: the same decisions on every rank (the decision does not read the data).
  CK(cudaMemsetAsync(x, 0, n * 4, st));
  for (size_t k = size_t(1) << 16; k <= m; k <<= 2) {
    ok &= gradcompReduceScatter(x, ya, k, ncclFloat32, ncclSum, a, st) == gradcompSuccess;
    ok &= gradcompReduceScatter(x, yb, k, ncclBfloat16, ncclSum, a, st) == gradcompSuccess;
  }
  gradcompGetStats(a, &sa);
  const std::vector<uint64_t> mine = {sa.callsAutoPassed, sa.callsReduceScatter};
  ok &= sameWordsOnAllRanks(nc, st, mine);
  printf("rank %d auto reduce-scatter sweep: %llu calls passed by auto, %llu compressed\n", rank,
         (unsigned long long)mine[0], (unsigned long long)mine[1]);
  report(ok && sa.callsPassedThrough == sa.callsAutoPassed,
         "auto reduce-scatter: every rank takes the same decisions");
  cudaFree(x);
  cudaFree(xz);
  cudaFree(ya);
  cudaFree(yb);
  cudaFree(yz);
  gradcompCommDestroy(a);
  gradcompCommDestroy(b);
}

// Ranks restored from checkpoints of different steps: the first call after
// the load checks the step on every rank (one allgather) and fails on all of
// them; restored consistently, the next call works and agrees.
void checkRestoredSteps(ncclComm_t nc, cudaStream_t st) {
  if (nranks < 2) return;
  gradcompConfig_t cfg = compressing(worldConfig());
  cfg.method = gradcompMethodRandk;
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

// GRADCOMP_CHECK_CALLS: ranks whose calls differ (count; allreduce against
// reduce-scatter of the same input) fail every rank with InvalidUsage before
// any NCCL collective of the call, where NCCL alone would hang or sum
// unrelated bytes; the comm and the NCCL comm then work on. A captured call
// is left unchecked and still replays.
void checkCallsCheck(ncclComm_t nc, cudaStream_t st) {
  if (nranks < 2) return;
  gradcompConfig_t cfg = compressing(worldConfig());
  cfg.checkCalls = 1;
  gradcompComm_t gc;
  CK(gradcompCommCreate(nc, &cfg, &gc));
  const size_t n = 25000 * (size_t)nranks;
  std::vector<float> g = gctest::normal(n, 131 + rank), got(n);
  float* d;
  CK(cudaMalloc(&d, n * 4));
  auto run = [&](std::function<gradcompResult_t()> call) {
    CK(cudaMemcpyAsync(d, g.data(), n * 4, cudaMemcpyHostToDevice, st));
    gradcompResult_t r = call();
    CK(cudaStreamSynchronize(st));
    return r;
  };
  auto allreduce = [&](size_t count) {
    return [&, count] { return gradcompAllReduce(d, d, count, ncclFloat32, ncclSum, gc, st); };
  };
  report(run(allreduce(n)) == gradcompSuccess, "check calls: matching calls pass");
  const gradcompResult_t differ = run(allreduce(rank == 0 ? n : n - 512));
  std::string why = gradcompGetLastError();
  report(differ == gradcompInvalidUsage && why.find("count=") != std::string::npos,
         "check calls: a different count fails every rank (" + why + ")");
  const gradcompResult_t kinds = run([&] {
    return rank == 0 ? gradcompAllReduce(d, d, n, ncclFloat32, ncclSum, gc, st)
                     : gradcompReduceScatter(d, d + rank * (n / nranks), n / nranks, ncclFloat32,
                                             ncclSum, gc, st);
  });
  why = gradcompGetLastError();
  report(kinds == gradcompInvalidUsage && why.find("(reduce-scatter)") != std::string::npos,
         "check calls: allreduce against reduce-scatter fails every rank (" + why + ")");
  report(run(allreduce(n)) == gradcompSuccess, "check calls: the comm works on after refusals");
  CK(cudaMemcpy(got.data(), d, n * 4, cudaMemcpyDeviceToHost));
  report(sameOnAllRanks(nc, st, got), "check calls: same on all ranks after refusals");
  // Captured: unchecked (the check is a host sync), the graph replays.
  CK(cudaMemcpyAsync(d, g.data(), n * 4, cudaMemcpyHostToDevice, st));
  CK(cudaStreamSynchronize(st));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  const gradcompResult_t captured = gradcompAllReduce(d, d, n, ncclFloat32, ncclSum, gc, st);
  CK(cudaStreamEndCapture(st, &graph));
  bool ok = captured == gradcompSuccess && graph != nullptr;
  if (ok) {
    CK(cudaGraphInstantiate(&exec, graph, 0));
    CK(cudaGraphLaunch(exec, st));
    CK(cudaStreamSynchronize(st));
    CK(cudaMemcpy(got.data(), d, n * 4, cudaMemcpyDeviceToHost));
    ok = sameOnAllRanks(nc, st, got);
  }
  report(ok, "check calls: a captured call is not checked and replays alike on all ranks");
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  cudaFree(d);
  gradcompCommDestroy(gc);
}

// A watchdog for calls that may hang: unless `done` is set within 60 s, it
// fails the rank with "`what` hung for 60 s", prints the counts line
// ("`summary` rank R of N: ...") the script reads, and exits, rather than
// leaving the script's time limit to cut the run. The caller sets `done` and
// joins the thread.
std::thread startWatchdog(const std::atomic<bool>& done, const char* summary, const char* what) {
  return std::thread([&done, summary, what] {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!done && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (!done) {
      fprintf(stderr, "rank %d FAILED: %s hung for 60 s\n", rank, what);
      printf("%s rank %d of %d: %d passed, %d failed\n", summary, rank, nranks, passed, failed + 1);
      fflush(stdout);
      _exit(3);
    }
  });
}

// GRADCOMP_CHECK_CALLS: a call whose arguments the last rank alone refuses
// before the call begins (a datatype or op that is not NCCL's, a
// reduce-scatter recvcount whose input overflows) while its peers' pass,
// compressed or passed through: the refusing rank joins the agreement its
// peers run first (one allgather of the call records), so it returns its own
// gradcompInvalidArgument and the peers gradcompInvalidUsage naming it,
// instead of waiting in NCCL for it for ever; the comm and the NCCL comm
// then work on. A hang fails the rank after 60 s (a watchdog) rather than
// leaving the script's time limit to cut the run.
void checkCallsRefusalCheck(ncclComm_t nc, cudaStream_t st) {
  if (nranks < 2) return;
  gradcompConfig_t cfg = compressing(nodesConfig());
  cfg.checkCalls = 1;
  gradcompComm_t gc;
  CK(gradcompCommCreate(nc, &cfg, &gc));
  const int who = nranks - 1;
  const size_t m = 2500, n = m * (size_t)nranks;
  std::vector<float> g = gctest::normal(n, 171 + rank), got(n);
  float *d, *o;
  CK(cudaMalloc(&d, n * 4));
  CK(cudaMalloc(&o, m * 4));
  std::atomic<bool> done{false};
  std::thread watchdog = startWatchdog(done, "multirank", "check calls refusal: a call");
  auto run = [&](const std::function<gradcompResult_t()>& call) {
    CK(cudaMemcpyAsync(d, g.data(), n * 4, cudaMemcpyHostToDevice, st));
    gradcompResult_t r = call();
    CK(cudaStreamSynchronize(st));
    return r;
  };
  const ncclDataType_t badType = (ncclDataType_t)ncclNumTypes;
  ncclRedOp_t badOp = ncclSum;
  const int minusOne = -1;
  memcpy(&badOp, &minusOne, sizeof badOp);
  const bool bad = rank == who;
  struct Case {
    const char* what;
    const char* mine;  // in the refusing rank's sentence
    std::function<gradcompResult_t()> call;
  };
  const Case cases[] = {
      {"a datatype that is not NCCL's, the peers' call compressed", "datatype=",
       [&] { return gradcompAllReduce(d, d, n, bad ? badType : ncclFloat32, ncclSum, gc, st); }},
      {"a datatype that is not NCCL's, the peers' call passed through (ncclMax)", "datatype=",
       [&] { return gradcompAllReduce(d, d, n, bad ? badType : ncclFloat32, ncclMax, gc, st); }},
      {"an op that is not NCCL's, a reduce-scatter", "op=-1",
       [&] { return gradcompReduceScatter(d, o, m, ncclFloat32, bad ? badOp : ncclSum, gc, st); }},
      {"a recvcount whose input overflows", "overflows",
       [&] {
         return gradcompReduceScatter(d, o, bad ? SIZE_MAX / 4 : m, ncclFloat32, ncclSum, gc, st);
       }},
  };
  auto allreduce = [&] { return gradcompAllReduce(d, d, n, ncclFloat32, ncclSum, gc, st); };
  report(run(allreduce) == gradcompSuccess, "check calls refusal: matching calls pass");
  const std::string named = "rank " + std::to_string(who) + " refused";
  for (const Case& k : cases) {
    const gradcompResult_t r = run(k.call);
    const std::string why = gradcompGetLastError();
    const bool ok = bad ? r == gradcompInvalidArgument && why.find(k.mine) != std::string::npos
                        : r == gradcompInvalidUsage && why.find(named) != std::string::npos;
    report(ok, std::string("check calls refusal: ") + k.what + " on rank " + std::to_string(who) +
                   (bad ? " fails it with its own error (" : " fails its peers naming it (") + why +
                   ")");
    report(run(allreduce) == gradcompSuccess,
           std::string("check calls refusal: the comm works on after ") + k.what);
  }
  done = true;
  watchdog.join();
  CK(cudaMemcpy(got.data(), d, n * 4, cudaMemcpyDeviceToHost));
  report(sameOnAllRanks(nc, st, got), "check calls refusal: same on all ranks after refusals");
  cudaFree(o);
  cudaFree(d);
  gradcompCommDestroy(gc);
}

}  // namespace

// The abort check (GC_ABORT_TEST=1): see the top of the file.
constexpr double kAbortBoundSec = 30;

int abortMain(ncclComm_t nc, cudaStream_t st, const std::string& idPath) {
  const size_t n = 100003;
  gradcompConfig_t cfg = compressing(nodesConfig());
  cfg.algo = localSize > 1 ? gradcompAlgoHier : gradcompAlgoTwoShot;
  gradcompComm_t gc;
  CK(gradcompCommCreate(nc, &cfg, &gc));
  float* dbuf;
  CK(cudaMalloc(&dbuf, n * sizeof(float)));
  CK(cudaMemsetAsync(dbuf, 0, n * sizeof(float), st));
  // A healthy call first: buffer state, workspace and sub-communicators exist.
  report(gradcompAllReduce(dbuf, dbuf, n, ncclFloat32, ncclSum, gc, st) == gradcompSuccess,
         "abort: the healthy call");
  CK(cudaStreamSynchronize(st));
  // The last rank exits only once every other rank's healthy call has ended:
  // its own call can end while its proxy still sends the last bytes another
  // rank waits for, and exiting then would leave that rank stuck in the
  // healthy call. A file per survivor next to the NCCL id says so.
  const std::string healthyDone = idPath + ".done";
  if (rank != nranks - 1) {
    FILE* f = fopen((healthyDone + std::to_string(rank)).c_str(), "w");
    if (f) fclose(f);
  }
  if (rank == nranks - 1) {
    for (int r = 0; r < nranks - 1; ++r) {
      for (int i = 0; i < 300 && access((healthyDone + std::to_string(r)).c_str(), F_OK) != 0;
           ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
    printf("multirank abort rank %d of %d: exits without its second call\n", rank, nranks);
    fflush(stdout);
    _exit(0);
  }
  // Same size: no workspace growth, so the call only enqueues.
  report(gradcompAllReduce(dbuf, dbuf, n, ncclFloat32, ncclSum, gc, st) == gradcompSuccess,
         "abort: the call the dead rank never joins is enqueued");
  std::this_thread::sleep_for(std::chrono::seconds(2));  // its kernels now wait on the dead rank
  // Not counted: NCCL may have failed the call already; the aborts must return either way.
  printf("rank %d: the call the dead rank never joins is %s\n", rank,
         cudaStreamQuery(st) == cudaErrorNotReady ? "stuck, as intended" : "already over");
  std::atomic<bool> done{false};
  std::thread watchdog =
      startWatchdog(done, "multirank abort", "ncclCommAbort + gradcompCommAbort");
  const auto t0 = std::chrono::steady_clock::now();
  ncclResult_t nr;
  gradcompResult_t gr;
  if (localSize > 1) {
    // A hierarchical comm's sub-communicators are aborted in the same NCCL
    // group as the program's communicator (include/gradcomp.h, gradcompCommStop).
    const ncclResult_t gs = ncclGroupStart();
    nr = ncclCommAbort(nc);
    gr = gradcompCommStop(gc);
    const ncclResult_t ge = ncclGroupEnd();
    if (nr == ncclSuccess) nr = gs != ncclSuccess ? gs : ge;
    if (gr == gradcompSuccess) gr = gradcompCommAbort(gc);
  } else {
    nr = ncclCommAbort(nc);
    gr = gradcompCommAbort(gc);
  }
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  done = true;
  watchdog.join();
  printf("rank %d: ncclCommAbort + gradcompCommAbort took %.2f s\n", rank, sec);
  report(nr == ncclSuccess && gr == gradcompSuccess, "abort: both aborts succeed");
  report(sec < kAbortBoundSec, "abort: both aborts return within the bound");
  // Every communicator the call's kernels were on is aborted: the stream drains.
  bool drained = false;
  for (int i = 0; i < 1000 && !drained; ++i) {
    drained = cudaStreamQuery(st) != cudaErrorNotReady;
    if (!drained) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  report(drained, "abort: the stream drains");
  printf("multirank abort rank %d of %d%s: %d passed, %d failed\n", rank, nranks,
         localSize > 1 ? " (hier)" : "", passed, failed);
  fflush(stdout);
  _exit(failed ? 1 : 0);  // dbuf and the stream go with the process
}

int main() {
  rank = atoi(getenv("GC_RANK") ? getenv("GC_RANK") : "0");
  nranks = atoi(getenv("GC_NRANKS") ? getenv("GC_NRANKS") : "1");
  const char* idPath = getenv("GC_ID_FILE") ? getenv("GC_ID_FILE") : "/tmp/gradcomp_nccl_id";
  // GRADCOMP_LOCAL_SIZE (auto, or 1..65536) and GRADCOMP_PRIVATE_COMM (0..1) as the library
  // reads them, refused with its sentence: atoi took abc, 0 and -1 as a flat world and 4x as
  // 4, so the suite checked another layout than the one asked for.
  gradcompConfig_t env;
  if (gradcompConfigFromEnv(&env) != gradcompSuccess) {
    fprintf(stderr, "rank %d: %s\n", rank, gradcompGetLastError());
    return 2;
  }
  localSize = env.localSize;
  privateComm = env.privateComm;
  int ndev = 0;
  CK(cudaGetDeviceCount(&ndev));
  CK(cudaSetDevice(rank % ndev));
  ncclUniqueId id = exchangeId(idPath);
  ncclComm_t nc = nullptr;
  const ncclResult_t made = ncclCommInitRank(&nc, nranks, id, rank);
  CK(made == ncclInProgress ? settled(nc, made) : made);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  if (getenv("GC_ABORT_TEST") && atoi(getenv("GC_ABORT_TEST"))) return abortMain(nc, st, idPath);
  for (gradcompAlgo_t algo :
       {gradcompAlgoAuto, gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather}) {
    if (algo == gradcompAlgoAuto && localSize <= 1) continue;  // flat: auto is one of the three
    for (DType t : {DType::F32, DType::F16, DType::BF16})
      for (bool avg : {false, true})
        for (size_t n : {(size_t)1, (size_t)100, (size_t)5000, (size_t)100003}) {
          // Hier: every comm splits two sub-communicators; fewer cases keep the
          // run short (fp16 takes bf16's paths but for the conversions, which
          // the flat worlds check).
          if (localSize > 1 && (n == 100 || t == DType::F16)) continue;
          checkAlgo(nc, st, algo, t, avg, n);
        }
  }
  progress("dense");
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
        for (size_t n : {(size_t)7, (size_t)5000, (size_t)100003}) {
          if (localSize > 1 && n == 5000) continue;
          checkSparse(nc, st, sc, t, avg, n);
        }
  progress("sparse");
  // Pipelined two-shot (flat, or the hierarchy's middle stage with its
  // in-node stages around it on a third stream): pieces of one and of three
  // buckets of every chunk, the latter not dividing them, 4 to 40 pieces a
  // call. Every piece costs grouped NCCL calls, and over the shared GPU's
  // sockets each waits milliseconds for the other ranks' time slices, so
  // the buffer stays small (at 100003 elements, 66 to 782 pieces a call, the
  // pipelined checks alone would outlast gpu-check's multirank step).
  const size_t pipedN = 5003;  // 78 buckets of 64 and a partial one
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (bool avg : {false, true})
      for (size_t piece : {(size_t)64, (size_t)192}) {
        checkAlgo(nc, st, gradcompAlgoTwoShot, t, avg, pipedN, piece * 4 * nranks);
      }
  // Pipelined ring (flat, or the hierarchy's middle stage): every hop piece
  // by piece on the comm stream.
  for (DType t : {DType::F32, DType::BF16})
    for (bool avg : {false, true})
      for (size_t piece : {(size_t)64, (size_t)192}) {
        checkAlgo(nc, st, gradcompAlgoRing, t, avg, pipedN, piece * 4 * nranks);
      }
  // Nearest rounding (GRADCOMP_ROUNDING=nearest): the CUDA encode kernels
  // of every algorithm, flat or hierarchical, and pipelined, against the
  // serial references rounding every encode to the nearest level.
  for (gradcompAlgo_t algo : {gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather})
    for (DType t : {DType::F32, DType::BF16})
      for (size_t n : {(size_t)5000, (size_t)100003})
        checkAlgo(nc, st, algo, t, n == 5000, n, 0, gradcompRoundNearest);
  for (gradcompAlgo_t algo : {gradcompAlgoTwoShot, gradcompAlgoRing})
    checkAlgo(nc, st, algo, DType::F32, false, pipedN, 192 * 4 * nranks, gradcompRoundNearest);
  progress("pipelined and nearest");
  checkGraph(nc, st, 0);
  checkGraph(nc, st, 64 << 10);
  checkGraph(nc, st, 64 << 10, gradcompAlgoRing);
  checkTwoStreams(nc, st);
  checkSetupAgreement(nc, ndev);
  checkPassThrough(nc, st);  // also: the NCCL comm still works after refused set-ups
  progress("graphs, two streams, set-up, pass-through");
  inRs = true;
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (bool avg : {false, true})
      for (size_t m : {(size_t)1, (size_t)517, (size_t)25001})
        for (bool inPlace : {false, true}) {
          if (localSize > 1 && t == DType::F16) continue;  // as in the dense checks
          checkRsQsgd(nc, st, t, avg, m, inPlace, false);
        }
  for (DType t : {DType::F32, DType::BF16}) checkRsQsgd(nc, st, t, false, 20000, false, true);
  // Pipelined: pieces of one and of three buckets of every block, the blocks
  // not a multiple of either, 7 to 40 pieces a call (small, as pipedN above)
  // (hier: the in-node stage pipelined with the inter-node one, three
  // streams; the graph below captures the same).
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (bool avg : {false, true})
      for (size_t piece : {(size_t)64, (size_t)192})
        for (bool inPlace : {false, true})
          checkRsQsgd(nc, st, t, avg, 2501, inPlace, false, piece * 4 * nranks);
  progress("reduce-scatter qsgd");
  for (const SparseCase& sc : sparseCases)
    for (DType t : {DType::F32, DType::BF16})
      for (size_t m : {(size_t)7, (size_t)30001}) checkRsSparse(nc, st, sc, t, t == DType::BF16, m);
  checkRsGraph(nc, st);
  checkRsGraph(nc, st, 64 << 10);
  checkRsPassThrough(nc, st);
  checkRsOverflow(nc, st, gradcompMethodQsgd, 0);
  checkRsOverflow(nc, st, gradcompMethodQsgd, 512 * 4 * nranks);
  checkRsOverflow(nc, st, gradcompMethodTopk, 0);
  checkRsOverflow(nc, st, gradcompMethodDgc, 0);
  progress("reduce-scatter sparse, graphs, pass-through, overflow");
  inRs = false;
  checkRestoredSteps(nc, st);
  checkCallsCheck(nc, st);
  progress("restored steps, check calls");
  checkAuto(nc, st);
  inRs = true;
  checkAutoRs(nc, st);
  inRs = false;
  progress("auto");
  // Last: on a build where a refusal leaves its peers waiting, only its watchdog fails.
  checkCallsRefusalCheck(nc, st);
  progress("check calls refusal");
  ncclCommDestroy(nc);
  printf("multirank rs rank %d of %d: %d passed, %d failed\n", rank, nranks, rsPassed, rsFailed);
  printf("multirank rank %d of %d%s: %d passed, %d failed\n", rank, nranks,
         localSize > 1 ? " (hier)" : "", passed, failed);
  return failed ? 1 : 0;
}
