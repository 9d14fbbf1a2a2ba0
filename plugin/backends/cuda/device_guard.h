// Sets the current CUDA device for a scope, then gives the caller its own
// back (no-op when it already is current, or when device < 0). Used where
// gradcomp works on a comm's device on the caller's thread: the collective
// set-up, the C API's entry points (OnCommDevice) and the LD_PRELOAD library.
#pragma once

#include <cuda_runtime_api.h>

#include <optional>

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

// This thread's stream-capture mode relaxed for a scope, then given back
// (as PyTorch's allocator does around cudaMalloc). gradcomp's set-up work
// (allocations, zeroing and host copies synchronized on its own streams)
// is "potentially unsafe" under another thread's capture begun in
// cudaStreamCaptureModeGlobal (PyTorch's default): it would fail and
// invalidate that capture. Calls captured on this thread's own stream never
// allocate or sync (refused before). Without a GPU: nothing, the error
// cleared.
class RelaxedCaptureMode {
 public:
  RelaxedCaptureMode() {
    ok_ = cudaThreadExchangeStreamCaptureMode(&mode_) == cudaSuccess;
    if (!ok_) (void)cudaGetLastError();
  }
  ~RelaxedCaptureMode() {
    if (ok_) (void)cudaThreadExchangeStreamCaptureMode(&mode_);
  }
  RelaxedCaptureMode(const RelaxedCaptureMode&) = delete;
  RelaxedCaptureMode& operator=(const RelaxedCaptureMode&) = delete;

 private:
  cudaStreamCaptureMode mode_ = cudaStreamCaptureModeRelaxed;
  bool ok_ = false;
};

// With a device (>= 0), also relaxes the capture mode (RelaxedCaptureMode)
// for the scope.
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
    // After the device is set: on a thread with no context the exchange
    // would make one on the current device (GPU 0).
    if (err_ == cudaSuccess) relaxed_.emplace();
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
  std::optional<RelaxedCaptureMode> relaxed_;  // destroyed after the device is given back
};

}  // namespace gc
