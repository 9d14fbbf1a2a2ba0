// Public top-k selector entry points: validate on the host, then the host
// reference or the kernels of kernels/sparse.cu on the caller's stream.
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "checks.h"
#include "codecs/qsgd.h"
#include "codecs/sparse.h"
#include "backends/cuda/device_ptr.h"
#include "gradcomp/sparse.h"

namespace gc {
namespace {

gradcompResult_t topkPlan(size_t n, float density, float oversample, float sampleRate, int exact,
                          sparse::Plan* p, bool sorts = true) {
  GC_ARG(exact == 0 || exact == 1, "exact=%d is not 0 (threshold) or 1 (exact)", exact);
  GC_ARG(density > 0.0f && density <= 1.0f, "density=%.9g is out of range (0, 1]", (double)density);
  if (!exact) {
    GC_ARG(oversample >= 1.0f && oversample <= 16.0f, "oversample=%.9g is out of range [1, 16]",
           (double)oversample);
    GC_ARG(sampleRate > 0.0f && sampleRate <= 1.0f, "sampleRate=%.9g is out of range (0, 1]",
           (double)sampleRate);
  }
  GC_ARG(n < (size_t)sparse::kEmptySlot, "n=%zu is too large for uint32 indices (at most %u)", n,
         sparse::kEmptySlot - 1);
  if (n == 0) {
    *p = sparse::Plan{};
    p->density = density;
    return gradcompSuccess;
  }
  *p = sparse::makePlan(n, density, exact != 0, exact ? 1.0 : oversample, exact ? 1.0 : sampleRate);
  // The sample is sorted by CUB; keep it within the int range its sort documents.
  GC_ARG(!sorts || exact || p->sample <= (size_t)INT_MAX,
         "sampleRate=%g gives a sample of %zu entries for n=%zu, more than the sort's %d",
         (double)sampleRate, p->sample, n, INT_MAX);
  return gradcompSuccess;
}

size_t slotsOf(const sparse::Plan& p, int exact) {
  return exact ? p.k : p.kmax;
}

// The GPU selector's workspace for plan p: the exact selector's (no sample,
// no staging), or the threshold selector's sample and staged compaction.
size_t workspaceOf(size_t n, const sparse::Plan& p, int exact) {
  return n == 0 ? 0 : cuda::sparseScratchBytes(n, exact ? 1 : p.sample, exact ? 0 : p.kmax);
}

}  // namespace
}  // namespace gc

extern "C" {

GC_EXPORT gradcompResult_t gradcompTopkSlots(size_t n, float density, float oversample, int exact,
                                             size_t* slots) {
  GC_ARG(slots != nullptr, "slots (output) is NULL");
  gc::sparse::Plan p{};
  // The sample rate does not change the slots.
  GC_CHECK(gc::topkPlan(n, density, oversample, 1.0f, exact, &p, false));
  *slots = gc::slotsOf(p, exact);
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompTopkSelectHost(const float* v, size_t n, float density,
                                                  float oversample, float sampleRate, int exact,
                                                  uint64_t seed, uint32_t* idx,
                                                  uint64_t* selectedCount) {
  gc::sparse::Plan p{};
  GC_CHECK(gc::topkPlan(n, density, oversample, sampleRate, exact, &p));
  uint64_t selected = 0;
  if (n > 0) {
    GC_ARG(v != nullptr, "v is NULL with n=%zu", n);
    GC_ARG(idx != nullptr, "idx is NULL with n=%zu", n);
    GC_CHECK(gc::codecCheckDisjoint({{v, n * sizeof(float), "v"},
                                     {idx, gc::slotsOf(p, exact) * sizeof(uint32_t), "idx"},
                                     {selectedCount, sizeof(uint64_t), "selectedCount"}}));
    gc::IeeeHostMath ieee;  // the GPU's selection whatever the thread's setting
    if (exact) {
      gc::host::selectExact(v, n, p.k, idx, &selected);
    } else {
      gc::host::selectThreshold(v, n, p, seed, idx, &selected);
    }
  }
  if (selectedCount) *selectedCount = selected;
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompTopkWorkspaceBytes(size_t n, float density, float oversample,
                                                      float sampleRate, int exact, size_t* bytes) {
  GC_ARG(bytes != nullptr, "bytes (output) is NULL");
  gc::sparse::Plan p{};
  GC_CHECK(gc::topkPlan(n, density, oversample, sampleRate, exact, &p));
  *bytes = gc::workspaceOf(n, p, exact);
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompTopkSelect(const float* v, size_t n, float density,
                                              float oversample, float sampleRate, int exact,
                                              uint64_t seed, uint32_t* idx, uint64_t* selectedCount,
                                              void* workspace, size_t workspaceBytes,
                                              cudaStream_t stream) {
  gc::sparse::Plan p{};
  GC_CHECK(gc::topkPlan(n, density, oversample, sampleRate, exact, &p));
  if (selectedCount != nullptr) {
    GC_ARG(((uintptr_t)selectedCount & 7) == 0, "selectedCount=%p must be 8-byte aligned (uint64)",
           (void*)selectedCount);
    GC_CHECK(gc::checkDevicePointer(selectedCount, "selectedCount"));
  }
  if (n == 0) {
    if (selectedCount) GC_CUDACHECK(cudaMemsetAsync(selectedCount, 0, sizeof(uint64_t), stream));
    return gradcompSuccess;
  }
  const size_t need = gc::workspaceOf(n, p, exact);
  GC_ARG(workspace != nullptr && workspaceBytes >= need,
         "workspace=%p with workspaceBytes=%zu is too small: gradcompTopkWorkspaceBytes gives %zu",
         workspace, workspaceBytes, need);
  GC_ARG(((uintptr_t)workspace & 255) == 0, "workspace=%p must be 256-byte aligned", workspace);
  GC_ARG(((uintptr_t)v & 3) == 0, "v=%p must be 4-byte aligned (fp32)", (const void*)v);
  GC_ARG(((uintptr_t)idx & 3) == 0, "idx=%p must be 4-byte aligned (uint32)", (void*)idx);
  GC_CHECK(gc::codecCheckDisjoint({{v, n * sizeof(float), "v"},
                                   {idx, gc::slotsOf(p, exact) * sizeof(uint32_t), "idx"},
                                   {workspace, need, "workspace"},  // what the selector uses
                                   {selectedCount, sizeof(uint64_t), "selectedCount"}}));
  GC_CHECK(gc::checkDevicePointer(v, "v"));
  GC_CHECK(gc::checkDevicePointer(idx, "idx"));
  GC_CHECK(gc::checkDevicePointer(workspace, "workspace"));
  if (exact) {
    GC_CUDACHECK(gc::cuda::selectExact(v, n, p.k, idx, selectedCount, workspace, stream));
  } else {
    GC_CUDACHECK(gc::cuda::selectThreshold(v, n, p, gc::plainKey(seed), idx, selectedCount,
                                           workspace, stream));
  }
  return gradcompSuccess;
}

}  // extern "C"
