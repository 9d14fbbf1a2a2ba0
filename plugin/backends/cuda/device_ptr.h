#pragma once

#include <cuda_runtime_api.h>
#include <stddef.h>

#include "gradcomp.h"

namespace gc {

// A small buffer for an exchange every rank must join (the set-up vote, the
// preload's agreement), on the current device: device memory, or where the
// device has none left, mapped host memory, which NCCL's kernels reach over
// the bus. A rank out of device memory then still takes part, and its peers
// hear that it failed instead of waiting for it. Freed with the object (on
// the device current then).
class ExchangeBuffer {
 public:
  ExchangeBuffer() = default;
  ~ExchangeBuffer();
  ExchangeBuffer(const ExchangeBuffer&) = delete;
  ExchangeBuffer& operator=(const ExchangeBuffer&) = delete;
  // hostOnly: mapped host memory even when device memory is to be had (the
  // GPU test of that path). The error is the mapped allocation's.
  cudaError_t alloc(size_t bytes, bool hostOnly = false);
  // alloc() in stream order on `stream` (cudaMallocAsync), freed there too
  // (cudaFreeAsync, enqueued by the destructor: `stream` must outlive the
  // object): neither waits for the device, so an exchange made at any call
  // (the preload's first float Sum/Avg call of every communicator) adds no
  // device-wide sync. Where the device has no memory pools, or its pool no
  // memory, alloc()'s way (whose cudaFree waits for the whole device).
  cudaError_t allocOnStream(size_t bytes, cudaStream_t stream);
  // The buffer as the device addresses it (NULL before alloc succeeds).
  void* get() const { return dev_; }

 private:
  void* dev_ = nullptr;
  void* host_ = nullptr;  // the host allocation, when the buffer is mapped host memory
  cudaStream_t stream_ = nullptr;
  bool async_ = false;  // dev_ is from cudaMallocAsync on stream_
};

// Copies bytes from host src to device dst (or zeroes dst when src is NULL)
// and waits for it, on the non-blocking stream s, or on a temporary one when
// s is NULL: work issued after it on any stream sees the bytes, and no other
// stream is waited for. A device-wide or legacy-stream sync would also wait
// for other communicators' kernels, e.g. a pipeline-parallel send whose
// receive the peer posts only after its gradcomp call returns: a deadlock.
cudaError_t writeNow(void* dst, const void* src, size_t bytes, cudaStream_t s = nullptr);

// gradcompInvalidArgument when p is NULL, plain host memory the GPU cannot
// read, or device memory of a GPU other than the current one;
// gradcompCudaError when CUDA itself cannot be queried (no GPU).
gradcompResult_t checkDevicePointer(const void* p, const char* name);
}  // namespace gc
