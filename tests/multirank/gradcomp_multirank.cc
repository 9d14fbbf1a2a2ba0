// Multi-process NCCL test of gradcompAllReduce on the CUDA backend. Launched
// as N processes by tools/multirank_check.sh (all on one GPU with a distinct
// NCCL_HOSTID each, or one GPU per rank). Every rank checks its results bit
// for bit against the serial host reference of the same algorithm (which
// also makes them identical across ranks), then CUDA-graph capture against
// eager calls, then pass-through. Prints "N passed, M failed".
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
    CK(cudaMemcpy(dbuf, data(in[rank], t), n * esz, cudaMemcpyHostToDevice));
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
  CK(cudaMemcpy(a, g.data(), n * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(b, g.data(), n * 4, cudaMemcpyHostToDevice));
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
  // Skip the header (its host step differs: the graphed comm counted one
  // captured call); the records must match.
  report(saved && memcmp(bufA.data() + 24, bufB.data() + 24, sa - 24) == 0,
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
  CK(cudaMemcpy(d, v.data(), n * 4, cudaMemcpyHostToDevice));
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
  checkGraph(nc, st);
  checkPassThrough(nc, st);
  ncclCommDestroy(nc);
  printf("multirank rank %d of %d: %d passed, %d failed\n", rank, nranks, passed, failed);
  return failed ? 1 : 0;
}
