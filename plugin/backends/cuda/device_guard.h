// Sets the current CUDA device for a scope, then gives the caller its own
// back (no-op when it already is current, or when device < 0). Used where
// gradcomp works on a comm's device on the caller's thread: the collective
// set-up, the C API's entry points (OnCommDevice) and the LD_PRELOAD library.
#pragma once

#include <cuda_runtime_api.h>

namespace gc {

// True while `stream` is being captured into a CUDA graph; false when CUDA
// cannot tell (e.g. without a GPU), with the query's error cleared.
inline bool streamCapturing(cudaStream_t stream) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &st) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return st != cudaStreamCaptureStatusNone;
}

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (device < 0) return;
    int current = -1;
    err_ = cudaGetDevice(&current);
    if (err_ == cudaSuccess && current != device) {
      err_ = cudaSetDevice(device);
      if (err_ == cudaSuccess) prev_ = current;
    }
    if (err_ != cudaSuccess) (void)cudaGetLastError();
  }
  ~DeviceGuard() {
    if (prev_ >= 0) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  // cudaSuccess when the device asked for is current.
  cudaError_t error() const { return err_; }

 private:
  int prev_ = -1;
  cudaError_t err_ = cudaSuccess;
};

}  // namespace gc
