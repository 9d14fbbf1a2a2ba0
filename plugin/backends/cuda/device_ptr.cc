#include "backends/cuda/device_ptr.h"

#include <cuda_runtime_api.h>

#include "checks.h"

namespace gc {

ExchangeBuffer::~ExchangeBuffer() {
  if (async_) {
    if (cudaFreeAsync(dev_, stream_) != cudaSuccess) (void)cudaGetLastError();
  } else if (host_ != nullptr) {
    (void)cudaFreeHost(host_);
  } else if (dev_ != nullptr) {
    (void)cudaFree(dev_);
  }
}

cudaError_t ExchangeBuffer::alloc(size_t bytes, bool hostOnly) {
  if (!hostOnly && cudaMalloc(&dev_, bytes) == cudaSuccess) return cudaSuccess;
  (void)cudaGetLastError();
  dev_ = nullptr;
  cudaError_t err = cudaHostAlloc(&host_, bytes, cudaHostAllocMapped | cudaHostAllocPortable);
  if (err == cudaSuccess) err = cudaHostGetDevicePointer(&dev_, host_, 0);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    dev_ = nullptr;
  }
  return err;
}

cudaError_t ExchangeBuffer::allocOnStream(size_t bytes, cudaStream_t stream) {
  if (cudaMallocAsync(&dev_, bytes, stream) == cudaSuccess) {
    stream_ = stream;
    async_ = true;
    return cudaSuccess;
  }
  (void)cudaGetLastError();  // no memory pools (cudaErrorNotSupported), or no memory
  dev_ = nullptr;
  return alloc(bytes);
}

cudaError_t writeNow(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  if (bytes == 0) return cudaSuccess;
  cudaStream_t own = nullptr;
  cudaError_t err = cudaSuccess;
  if (s == nullptr) {
    err = cudaStreamCreateWithFlags(&own, cudaStreamNonBlocking);
    s = own;
  }
  if (err == cudaSuccess) {
    err = src != nullptr ? cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s)
                         : cudaMemsetAsync(dst, 0, bytes, s);
  }
  if (err == cudaSuccess) err = cudaStreamSynchronize(s);
  if (own != nullptr) (void)cudaStreamDestroy(own);
  return err;
}

gradcompResult_t checkDevicePointer(const void* p, const char* name) {
  GC_ARG(p != nullptr, "%s is NULL", name);
  cudaPointerAttributes attr;
  cudaError_t err = cudaPointerGetAttributes(&attr, p);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return setError(gradcompCudaError, "cannot query %s=%p: CUDA error %d '%s'", name, p, (int)err,
                    cudaGetErrorString(err));
  }
  GC_ARG(attr.type != cudaMemoryTypeUnregistered,
         "%s=%p is pageable host memory; a device, managed or pinned pointer is needed", name, p);
  if (attr.type == cudaMemoryTypeDevice) {
    // The kernels run on the current device (a launch into another device's
    // stream fails): another GPU's memory would be an illegal address there
    // unless peer access happens to be on, and NCCL refuses it as well.
    int dev = -1;
    GC_CUDACHECK(cudaGetDevice(&dev));
    GC_ARG(attr.device == dev,
           "%s=%p is memory of CUDA device %d, not of the current device %d where the work runs",
           name, p, attr.device, dev);
  }
  return gradcompSuccess;
}

}  // namespace gc
