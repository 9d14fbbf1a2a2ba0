// What the pipelined allreduce tests (test_pipeline.cc's two-shot,
// test_pipeline_ring.cc's ring) share: a pipelined and an unpipelined CPU
// world reducing the same inputs step by step against the serial reference,
// then what the two worlds kept and counted.
#pragma once

#include <gtest/gtest.h>
#include <string.h>

#include <functional>
#include <vector>

#include "gradcomp.h"
#include "tests/common/cpu_world.h"
#include "tests/common/ref_algos.h"

namespace gctest {

// `flat` and `piped` reduce the same inputs in place over `steps` steps with
// error feedback: step s's are makeInputs(N, n, t, 1000 s + seed) carrying
// the residuals *ref holds (makeInputs(N, n, t, seed)'s at first). Outputs
// equal each other and expect(*ref, step) bit for bit on every rank: the
// serial reference, which takes the step's inputs in *ref and leaves its
// states there.
template <typename Expect>
void runPipelinedSteps(CpuWorld& flat, CpuWorld& piped, int N, gc::DType t, bool avg, size_t n,
                       int steps, uint64_t seed, const Expect& expect,
                       std::vector<ref::Rank>* ref) {
  *ref = ref::makeInputs(N, n, t, seed);
  std::vector<ref::Rank> a = *ref, b = *ref;
  for (int step = 0; step < steps; ++step) {
    std::vector<ref::Rank> in = ref::makeInputs(N, n, t, 1000 * step + seed);
    for (int i = 0; i < N; ++i) {
      in[i].residual = (*ref)[i].residual, in[i].ownerRes = (*ref)[i].ownerRes;
      a[i].f32 = b[i].f32 = in[i].f32;
      a[i].half = b[i].half = in[i].half;
    }
    auto runOn = [&](CpuWorld& w, std::vector<ref::Rank>& bufs) {
      auto res = w.run([&](int r) {
        void* ptr = t == gc::DType::F32 ? (void*)bufs[r].f32.data() : (void*)bufs[r].half.data();
        // Keyed: the saved states then do not differ by the buffers' addresses.
        return gradcompAllReduceKeyed(ptr, ptr, n, ref::nccl(t), avg ? ncclAvg : ncclSum, w.comm(r),
                                      nullptr, 7);
      });
      for (int r = 0; r < N; ++r) ASSERT_EQ(res[r], gradcompSuccess) << gradcompGetLastError();
    };
    runOn(flat, a);
    runOn(piped, b);
    *ref = in;
    const std::vector<float> want = expect(*ref, step);
    for (int r = 0; r < N; ++r) {
      auto got = ref::widen(b[r], t, n), base = ref::widen(a[r], t, n);
      ASSERT_EQ(memcmp(got.data(), base.data(), n * 4), 0) << "rank " << r << " step " << step;
      ASSERT_EQ(memcmp(got.data(), want.data(), n * 4), 0) << "rank " << r << " step " << step;
    }
  }
}

// After runPipelinedSteps: every rank's saved state is the same bytes in
// both worlds; the piped world's wire bytes are the flat one's and wire(r),
// its calls `pieces` pieces (the flat one's 1). `more` checks a rank's piped
// stats further.
template <typename Wire>
void expectSameStateAndWire(CpuWorld& flat, CpuWorld& piped, int N, size_t pieces, const Wire& wire,
                            const std::function<void(int, const gradcompStats_t&)>& more = {}) {
  for (int r = 0; r < N; ++r) {
    EXPECT_EQ(savedState(piped.comm(r)), savedState(flat.comm(r))) << "state of rank " << r;
    gradcompStats_t sp, sf;
    ASSERT_EQ(gradcompGetStats(piped.comm(r), &sp), gradcompSuccess);
    ASSERT_EQ(gradcompGetStats(flat.comm(r), &sf), gradcompSuccess);
    if (more) more(r, sp);
    EXPECT_EQ(sp.bytesOnWire, sf.bytesOnWire) << "rank " << r;
    EXPECT_EQ(sp.piecesLast, pieces) << "rank " << r;
    EXPECT_EQ(sf.piecesLast, 1u) << "rank " << r;
    EXPECT_EQ(sp.bytesOnWire, wire(r)) << "rank " << r;
  }
}

}  // namespace gctest
