// Bytes from the wire on the GPU (issue 16): the scatter-add drops a slot
// list that breaks the wire rule whole (an index past the buffer, a
// duplicate, an unordered pair), and the Elias decoder never reads past the
// stream or the caller's buffer; a malformed bucket decodes to NaN. Out-of-bounds accesses
// here would show as a CUDA error (run under compute-sanitizer on a GPU
// machine: tools/gpu-check.sh) or as changed guard words. Also: a sum that
// overflows clears the state through the CUDA backend's flag.
#include <math.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "codecs/elias.h"
#include "backends/sparse_ops.h"
#include "codecs/sparse.h"
#include "gradcomp/elias.h"
#include "kernels/common_math.cuh"
#include "tests/common/ref_algos.h"
#include "tests/common/ref_slot_lists.h"
#include "tests/common/test_util.h"
#include "tests/gpu/gpu_util.h"
#include "tests/gpu/mirror_transport.h"

namespace {

using gc::DType;
using gctest::DeviceBuffer;

class ReliabilityGpu : public gctest::GpuTest {};

// A list with indices past the buffer (and unordered ones) breaks the wire
// rule: it is dropped whole, nothing written, and counted once.
TEST_F(ReliabilityGpu, ScatterAddDropsAListWithIndicesPastTheBuffer) {
  const size_t n = 1000, slots = 6;
  const std::vector<uint32_t> idx = {3, 999, 1000, 0xfffffff0u, gc::sparse::kEmptySlot, 5};
  const std::vector<float> val = {1, 2, 3, 4, 5, 6};
  DeviceBuffer<uint32_t> didx(slots), dflag(1);
  DeviceBuffer<uint64_t> drejected(1);
  DeviceBuffer<float> dval(slots), dout(n + 64, 0);  // 64 guard floats after the n
  didx.upload(idx);
  dval.upload(val);
  ASSERT_EQ(gc::cuda::sparseScatterAdd(didx.get(), dval.get(), DType::F32, slots, n, dout.get(),
                                       dflag.get(), drejected.get(), stream),
            cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  const std::vector<float> out = dout.download(n + 64);
  for (size_t i = 0; i < n + 64; ++i) ASSERT_EQ(out[i], 0.0f) << "i " << i;
  EXPECT_EQ(drejected.download(1)[0], 1u);
}

// Received slot lists of 8 ranks through the CUDA backend's SparseOps, as
// the sparse allgather adds them (rank order, one output): the lists of
// ref::refMalformedSlotLists (tests/common/ref_slot_lists.h), which the CPU
// test Reliability.CpuSparseOpsDropMalformedListsWhole feeds to the CPU
// backend. The old kernel added duplicates with two threads racing on one
// element. Every malformed list is dropped whole: the output equals the
// serial sum of the well-formed lists, bit for bit, run after run and in a
// replayed CUDA graph, and the rejected lists are counted (published with
// the selected count).
TEST_F(ReliabilityGpu, MalformedSlotListsAreDroppedWhole) {
  const gctest::ref::RefSlotLists L = gctest::ref::refMalformedSlotLists();
  const size_t n = L.n, slots = L.slots, ranks = L.idx.size();
  const std::vector<std::vector<uint32_t>>& idx = L.idx;
  const std::vector<std::vector<float>>& val = L.val;
  uint64_t rejectedPerRun = 0;
  const std::vector<float> want = gctest::ref::refSumWellFormedLists(idx, val, n, &rejectedPerRun);
  ASSERT_EQ(rejectedPerRun, 5u);

  DeviceBuffer<uint32_t> didx(ranks * slots);
  DeviceBuffer<float> dval(ranks * slots), dout(n + 64, 0);
  for (size_t r = 0; r < ranks; ++r) {
    didx.upload(idx[r], r * slots);
    dval.upload(val[r], r * slots);
  }
  std::unique_ptr<gc::SparseOps> ops = gc::makeCudaSparseOps();
  ops->setStream(stream);
  // batched: the call's lists checked in one launch first (checkReceived, as
  // the sparse algorithms do), then each list's scatter-add uses that check.
  auto run = [&](bool batched) -> gradcompResult_t {
    if (cudaMemsetAsync(dout.get(), 0, n * 4, stream) != cudaSuccess) return gradcompCudaError;
    if (batched) {
      gradcompResult_t res = ops->checkReceived(didx.get(), slots * 4, (int)ranks, -1, slots, n);
      if (res != gradcompSuccess) return res;
    }
    for (size_t r = 0; r < ranks; ++r) {
      gradcompResult_t res = ops->scatterAddReceived(didx.get(r * slots), dval.get(r * slots),
                                                     DType::F32, slots, n, dout.get(), (int)r);
      if (res != gradcompSuccess) return res;
    }
    return ops->publishSelected();
  };
  std::vector<float> first;
  for (int rep = 0; rep < 4; ++rep) {  // list by list twice, then batched twice
    ASSERT_EQ(run(rep >= 2), gradcompSuccess) << gradcompGetLastError();
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const std::vector<float> out = dout.download(n + 64);
    ASSERT_EQ(memcmp(out.data(), want.data(), n * 4), 0) << "run " << rep;
    for (size_t i = n; i < n + 64; ++i) ASSERT_EQ(out[i], 0.0f) << "guard " << i;
    if (rep == 0) first = out;
    ASSERT_EQ(memcmp(out.data(), first.data(), (n + 64) * 4), 0) << "run " << rep;
    EXPECT_EQ(ops->peerSlotsRejected(), rejectedPerRun * (rep + 1)) << "run " << rep;
  }

  // Captured once, replayed twice: the same output, the count still grows.
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  const gradcompResult_t captured = run(true);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_EQ(captured, gradcompSuccess) << gradcompGetLastError();
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int rep = 0; rep < 2; ++rep) {
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    ASSERT_EQ(memcmp(dout.download(n).data(), want.data(), n * 4), 0) << "replay " << rep;
    EXPECT_EQ(ops->peerSlotsRejected(), rejectedPerRun * (rep + 5)) << "replay " << rep;
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

// Bucket 0 claims 256 words of a 2-word stream (as the host test
// Reliability.EliasDecoderBoundsBucketOffsets): the GPU decoder must not
// follow it; the bucket decodes to NaN, bucket 1 (empty, in range) too.
TEST_F(ReliabilityGpu, EliasDecoderBoundsBucketOffsets) {
  const size_t n = 1024;
  const gradcompEliasParams_t params = {7, 512, gradcompEliasGamma, gradcompEliasScaleMax};
  std::vector<uint32_t> enc(5 + 2);
  const float one = 1.0f;
  memcpy(&enc[0], &one, 4);
  memcpy(&enc[1], &one, 4);
  enc[2] = 7;  // offsets[0]: the levels (bucket 0 starts at word 0)
  enc[3] = 256;
  enc[4] = 2;
  enc[5] = enc[6] = 0xffffffffu;
  DeviceBuffer<uint32_t> din(enc.size(), 0);
  DeviceBuffer<float> dout(n);
  din.upload(enc);
  ASSERT_EQ(gradcompEliasDecode(din.get(), n, &params, dout.get(), 0, stream), gradcompSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  const std::vector<float> out = dout.download(n);
  for (size_t i = 0; i < 512; ++i) ASSERT_TRUE(isnan(out[i])) << i;
}

// Random bit flips of valid encodings: the GPU decoder finishes without a
// CUDA error and writes only the n outputs (guard floats stay zero).
TEST_F(ReliabilityGpu, EliasDecoderSurvivesBitFlips) {
  std::mt19937_64 rng(16005);
  for (int it = 0; it < 200; ++it) {
    const size_t n = 1 + rng() % 4000;
    const gradcompEliasParams_t p = {1 + (int)(rng() % 50), 32 * (1 + (int)(rng() % 8)),
                                     (gradcompEliasCode_t)(rng() % 2), gradcompEliasScaleMax};
    const std::vector<float> x = gctest::normal(n, rng());
    const size_t maxBytes = gradcompEliasMaxEncodedBytes(n, &p);
    std::vector<uint32_t> enc(maxBytes / 4);
    size_t bytes = 0;
    ASSERT_EQ(gradcompEliasEncodeHost(x.data(), ncclFloat32, nullptr, n, &p, rng(), enc.data(),
                                      maxBytes, &bytes),
              gradcompSuccess);
    enc.resize(bytes / 4);
    for (int k = 0; k < 4; ++k) enc[rng() % enc.size()] ^= 1u << (rng() % 32);
    // The header's stream length may now point past the buffer: give the
    // decoder only what the buffer holds, as the comm's algorithm does.
    DeviceBuffer<uint32_t> din(enc.size(), 0);
    DeviceBuffer<float> dout(n + 64, 0);
    din.upload(enc);
    gc::elias::Params ep{p.levels, p.bucketSize, (gc::elias::Code)p.code, gc::elias::Norm::Max};
    ASSERT_EQ(gc::cuda::eliasDecode(din.get(), n, ep, dout.get(), false, stream, bytes),
              cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess) << "case " << it;
    const std::vector<float> guard = dout.download(64, n);
    for (float g : guard) ASSERT_EQ(g, 0.0f) << "case " << it;
  }
}

// A finite gradient whose sum over the ranks overflows fp32 (4 mirrored
// ranks of 1.5e38): the call's output is infinite, and the CUDA backend's
// flag and conditional clear (discardStateIfNonFinite) leave every array of
// the buffer's state zero, as the CPU backend does, so the later calls are
// finite. Outputs and states equal the CPU backend's bit for bit; from step
// 1 on the calls are replays of a captured graph (the overflow among them),
// so the decision is taken on the device. The CPU test
// NonFinite.OverflowingSumDoesNotComeBackThroughErrorFeedback covers the
// methods and layouts over a real world.
TEST_F(ReliabilityGpu, OverflowingSumClearsTheState) {
  const int N = 4, steps = 6, overflow = 2;
  const size_t n = 8192, bytes = n * 4;
  struct Case {
    const char* name;
    gradcompMethod_t method;
    float density;
  } cases[] = {{"topk", gradcompMethodTopk, 0.05f},
               {"randk", gradcompMethodRandk, 0.05f},
               {"dgc", gradcompMethodDgc, 0.05f},
               {"dgc-dense", gradcompMethodDgc, 0.5f},
               {"qsgd-2bit-allgather", gradcompMethodQsgd, 0.05f}};
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    gradcompConfig_t cfg;
    gradcompConfigInit(&cfg);
    cfg.method = k.method;
    cfg.minElements = 0;
    cfg.density = k.density;
    cfg.warmupSteps = 0;
    cfg.autoTune = 0;
    cfg.bits = 2;
    cfg.algo = k.method == gradcompMethodQsgd ? gradcompAlgoAllgather : gradcompAlgoAuto;
    gradcompComm* cpu = gctest::mirrorComm(cfg, false, N, n, nullptr, false);
    gradcompComm* gpu = gctest::mirrorComm(cfg, true, N, n, stream, false);
    DeviceBuffer<float> dbuf(n), dsrc(n);
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    for (int step = 0; step < steps; ++step) {
      SCOPED_TRACE(testing::Message() << "step " << step);
      std::vector<float> in = gctest::normal(n, 900 + step);
      if (step == overflow) {
        for (size_t i = 0; i < n; ++i) in[i] = i % 3 ? 1.5e38f : -1.5e38f;
      }
      std::vector<float> host = in;
      ASSERT_EQ(gradcompAllReduce(host.data(), host.data(), n, ncclFloat32, ncclSum, cpu, nullptr),
                gradcompSuccess)
          << gradcompGetLastError();
      dsrc.upload(in);
      ASSERT_NO_FATAL_FAILURE(gctest::copyThenCall(
          stream, dbuf.get(), dsrc.get(), bytes, step >= 1, &graph, &exec, [&] {
            return gradcompAllReduce(dbuf.get(), dbuf.get(), n, ncclFloat32, ncclSum, gpu, stream);
          }));
      const std::vector<float> out = dbuf.download(n);
      ASSERT_EQ(memcmp(out.data(), host.data(), bytes), 0);
      size_t bad = 0;
      for (float x : out) bad += !std::isfinite(x);
      if (step == overflow) {
        EXPECT_GT(bad, 0u);
      } else {
        EXPECT_EQ(bad, 0u);
      }
      const gc::BufferState& sc = cpu->states.begin()->second;
      const gc::BufferState& sg = gpu->states.begin()->second;
      const std::pair<const float*, const float*> arrays[] = {{sc.residual, sg.residual},
                                                              {sc.momentum, sg.momentum}};
      for (const auto& a : arrays) {
        if (a.first == nullptr) continue;
        std::vector<float> onGpu(n);
        ASSERT_EQ(cudaMemcpy(onGpu.data(), a.second, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
        ASSERT_EQ(memcmp(onGpu.data(), a.first, bytes), 0);
        if (step == overflow) {
          for (size_t i = 0; i < n; ++i) ASSERT_EQ(onGpu[i], 0.0f) << "i " << i;
        }
      }
    }
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    gradcompCommDestroy(cpu);
    gradcompCommDestroy(gpu);
  }
}

// The same clear on the paths the test above does not take, each against the
// CPU backend bit for bit (outputs, and residual, owner residual and
// momentum after every call), all eager and, in a second run, from step 1 on
// replays of a captured graph (the overflow among them): pipelined calls
// (GRADCOMP_PIPELINE_BYTES of 512 fp32 elements a rank: 8 pieces a flat
// call, 2 a hierarchical one, checked in piecesLast), whose transport the
// comm lane takes and, hierarchical, the in-node stages the node lane; the
// flat reduce-scatter, whose flag goes through the transport's one-float max
// (on the mirror, rank 0's own flag: the OR over the ranks of real NCCL is
// gradcomp_multirank's checkRsOverflow); hierarchical comms (2 nodes of 2:
// the in-node reduce-scatter and allgather and the inter-node child comm,
// all mirrors), allreduce and reduce-scatter, QSGD with two-shot in the
// middle and top-k; and fp16 and bf16 buffers. The overflow step's gradient
// is finite in the buffer type (fp16 40000..60000, fp32 and bf16
// 2.5e38..3.2e38, all positive, so that the mirror's sums of different
// chunks overflow too) and its sum over the ranks is not: the output holds
// an infinity or NaN, every state array is then zero, and the later calls
// are finite. Flat comms have 2 ranks: the mirror's all-to-all (two-shot's
// and the reduce-scatter's exchange) has one peer only there. The mirror
// runs its copies and sums on the compute stream, not on the comm or node
// lane the call hands it (its ops are the backend's, which run there): what
// runs on those lanes here is the events and joins of the pipelined call.
struct OverflowPath {
  const char* name;
  gradcompMethod_t method;
  gradcompAlgo_t algo;
  DType dtype;
  int nodes, local;  // local 1: flat, `nodes` ranks
  bool pipelined, reduceScatter;
};

std::vector<uint8_t> overflowPathInput(size_t n, DType t, int step, bool overflow) {
  std::vector<float> x = gctest::normal(n, 700 + step);
  if (overflow) {
    const float lo = t == DType::F16 ? 40000.0f : 2.5e38f;
    const float span = t == DType::F16 ? 20000.0f : 0.7e38f;
    for (size_t i = 0; i < n; ++i) x[i] = lo + span * (float)((i * 2654435761u) % 1000) / 1000.0f;
  }
  std::vector<uint8_t> b(n * gc::dtypeBytes(t));
  for (size_t i = 0; i < n; ++i) gc::storeFromFloat(b.data(), t, i, x[i]);
  return b;
}

size_t countNonFiniteTyped(const std::vector<uint8_t>& b, DType t) {
  size_t bad = 0;
  for (size_t i = 0; i < b.size() / gc::dtypeBytes(t); ++i) {
    bad += !std::isfinite(gc::loadAsFloat(b.data(), t, i));
  }
  return bad;
}

TEST_F(ReliabilityGpu, OverflowingSumClearsTheStatePipelinedHierarchicalAndHalf) {
  const int steps = 5, overflow = 2;
  const size_t m = 8192;  // the allreduce's count, the reduce-scatter's input
  const OverflowPath paths[] = {
      {"twoshot pipelined fp32", gradcompMethodQsgd, gradcompAlgoTwoShot, DType::F32, 2, 1, true,
       false},
      {"twoshot pipelined fp16", gradcompMethodQsgd, gradcompAlgoTwoShot, DType::F16, 2, 1, true,
       false},
      {"twoshot pipelined bf16", gradcompMethodQsgd, gradcompAlgoTwoShot, DType::BF16, 2, 1, true,
       false},
      {"reduce-scatter fp32", gradcompMethodQsgd, gradcompAlgoAuto, DType::F32, 2, 1, false, true},
      {"reduce-scatter pipelined fp16", gradcompMethodQsgd, gradcompAlgoAuto, DType::F16, 2, 1,
       true, true},
      {"hier twoshot fp32", gradcompMethodQsgd, gradcompAlgoTwoShot, DType::F32, 2, 2, false,
       false},
      {"hier twoshot pipelined fp16", gradcompMethodQsgd, gradcompAlgoTwoShot, DType::F16, 2, 2,
       true, false},
      {"hier twoshot pipelined bf16", gradcompMethodQsgd, gradcompAlgoTwoShot, DType::BF16, 2, 2,
       true, false},
      {"hier reduce-scatter pipelined fp32", gradcompMethodQsgd, gradcompAlgoAuto, DType::F32, 2, 2,
       true, true},
      {"hier topk fp32", gradcompMethodTopk, gradcompAlgoAuto, DType::F32, 2, 2, false, false},
      {"hier topk reduce-scatter bf16", gradcompMethodTopk, gradcompAlgoAuto, DType::BF16, 2, 2,
       false, true},
  };
  for (const OverflowPath& p : paths) {
    for (bool graphed : {false, true}) {
      SCOPED_TRACE(testing::Message() << p.name << (graphed ? " graphed" : " eager"));
      const int N = p.nodes * p.local;
      const DType t = p.dtype;
      const ncclDataType_t type = gctest::ref::nccl(t);
      const size_t esz = gc::dtypeBytes(t);
      const size_t outCount = p.reduceScatter ? m / N : m;
      gradcompConfig_t cfg;
      gradcompConfigInit(&cfg);
      cfg.method = p.method;
      cfg.algo = p.algo;
      cfg.minElements = 0;
      cfg.autoTune = 0;
      cfg.density = 0.05f;
      cfg.bucketSize = 512;
      cfg.pipelineBytes = p.pipelined ? 512 * 4 * (size_t)N : 0;
      // The reduce-scatter's flag is a max allreduce of one float: the mirror
      // offers NCCL's allreduce there only.
      const bool pass = p.reduceScatter;
      gradcompComm* cpu =
          p.local > 1 ? gctest::mirrorHierComm(cfg, false, p.nodes, p.local, m, nullptr, pass)
                      : gctest::mirrorComm(cfg, false, N, m, nullptr, pass);
      gradcompComm* gpu = p.local > 1
                              ? gctest::mirrorHierComm(cfg, true, p.nodes, p.local, m, stream, pass)
                              : gctest::mirrorComm(cfg, true, N, m, stream, pass);
      std::vector<uint8_t> hostIn(m * esz), hostOut(outCount * esz);
      DeviceBuffer<uint8_t> din(m * esz), dsrc(m * esz), dout(outCount * esz);
      cudaGraph_t graph = nullptr;
      cudaGraphExec_t exec = nullptr;
      for (int step = 0; step < steps; ++step) {
        SCOPED_TRACE(testing::Message() << "step " << step);
        const std::vector<uint8_t> in = overflowPathInput(m, t, step, step == overflow);
        hostIn = in;
        const gradcompResult_t cpuRes =
            p.reduceScatter
                ? gradcompReduceScatter(hostIn.data(), hostOut.data(), outCount, type, ncclSum, cpu,
                                        nullptr)
                : gradcompAllReduce(hostIn.data(), hostIn.data(), m, type, ncclSum, cpu, nullptr);
        ASSERT_EQ(cpuRes, gradcompSuccess) << gradcompGetLastError();
        if (!p.reduceScatter) hostOut = hostIn;
        dsrc.upload(in);
        ASSERT_NO_FATAL_FAILURE(gctest::copyThenCall(
            stream, din.get(), dsrc.get(), m * esz, graphed && step >= 1, &graph, &exec, [&] {
              return p.reduceScatter
                         ? gradcompReduceScatter(din.get(), dout.get(), outCount, type, ncclSum,
                                                 gpu, stream)
                         : gradcompAllReduce(din.get(), din.get(), m, type, ncclSum, gpu, stream);
            }));
        const std::vector<uint8_t> out =
            p.reduceScatter ? dout.download(outCount * esz) : din.download(m * esz);
        ASSERT_EQ(out, hostOut);
        const size_t bad = countNonFiniteTyped(out, t);
        if (step == overflow) {
          EXPECT_GT(bad, 0u);
        } else {
          EXPECT_EQ(bad, 0u);
        }
        ASSERT_EQ(cpu->states.size(), 1u);
        ASSERT_EQ(gpu->states.size(), 1u);
        const gc::BufferState& sc = cpu->states.begin()->second;
        const gc::BufferState& sg = gpu->states.begin()->second;
        ASSERT_NE(sc.residual, nullptr);  // every path holds state: the check runs
        const struct {
          const char* what;
          const float *onCpu, *onGpu;
          size_t n;
        } arrays[] = {{"residual", sc.residual, sg.residual, sc.count},
                      {"owner residual", sc.ownerResidual, sg.ownerResidual, sc.ownerResidualCount},
                      {"momentum", sc.momentum, sg.momentum, sc.count}};
        for (const auto& a : arrays) {
          SCOPED_TRACE(a.what);
          ASSERT_EQ(a.onCpu == nullptr, a.onGpu == nullptr);
          if (a.onCpu == nullptr || a.n == 0) continue;
          std::vector<float> onGpu(a.n);
          ASSERT_EQ(cudaMemcpy(onGpu.data(), a.onGpu, a.n * 4, cudaMemcpyDeviceToHost),
                    cudaSuccess);
          ASSERT_EQ(memcmp(onGpu.data(), a.onCpu, a.n * 4), 0);
          if (step == overflow) {
            for (size_t i = 0; i < a.n; ++i) ASSERT_EQ(onGpu[i], 0.0f) << "i " << i;
          }
        }
        if (!graphed || step == 0) {
          gradcompStats_t stc, stg;
          ASSERT_EQ(gradcompGetStats(cpu, &stc), gradcompSuccess);
          ASSERT_EQ(gradcompGetStats(gpu, &stg), gradcompSuccess);
          EXPECT_EQ(stg.callsCompressed, (uint64_t)step + 1);
          EXPECT_EQ(stg.callsPassedThrough, 0u);
          // piecesLast: QSGD's calls (the sparse allreduce leaves it).
          EXPECT_EQ(stg.piecesLast, stc.piecesLast);
          if (p.method == gradcompMethodQsgd && p.pipelined) {
            EXPECT_GT(stg.piecesLast, 1u);
          } else if (p.method == gradcompMethodQsgd) {
            EXPECT_EQ(stg.piecesLast, 1u);
          }
        }
      }
      if (exec) cudaGraphExecDestroy(exec);
      if (graph) cudaGraphDestroy(graph);
      gradcompCommDestroy(cpu);
      gradcompCommDestroy(gpu);
    }
  }
}

}  // namespace
