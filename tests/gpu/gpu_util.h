// GPU test helpers: a fixture that skips without a GPU (fails instead when
// GRADCOMP_TEST_GPU=1), and RAII device buffers.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "gradcomp.h"
#include "tests/common/env_knob.h"

namespace gctest {

// GRADCOMP_TEST_GPU=1: no GPU is a failure; 0 or unset: a skip. Another value
// (yes, true, 2, " 1") was taken as 0 without a word, so a GPU run whose GPU
// was missing passed by skipping every test: it fails the test, naming 0 and 1.
inline bool gpuRequired() {
  return envWord("GRADCOMP_TEST_GPU", {"0", "1"}) == 1;
}

class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Read with a GPU too, so that a bad value is said wherever it is set.
    const bool required = gpuRequired();
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess || n == 0) {
      (void)cudaGetLastError();
      if (required) {
        FAIL() << "GRADCOMP_TEST_GPU=1 but no usable GPU: " << cudaGetErrorString(err);
      }
      GTEST_SKIP() << "no GPU (" << cudaGetErrorString(err)
                   << "); set GRADCOMP_TEST_GPU=1 to make this a failure";
    }
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  }
  void TearDown() override {
    if (stream) cudaStreamDestroy(stream);
  }
  cudaStream_t stream = nullptr;
};

// The tests' streams are non-blocking, so nothing orders them after work on
// the legacy stream: cudaMemset is asynchronous to the host, and a pageable
// cudaMemcpy to the device may return before its last DMA lands. Call this
// after either, before the stream touches the memory.
inline void settle() {
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count, size_t padBytes = 64) : count_(count) {
    EXPECT_EQ(cudaMalloc(&raw_, count * sizeof(T) + padBytes), cudaSuccess);
    cudaMemset(raw_, 0, count * sizeof(T) + padBytes);
    settle();
  }
  ~DeviceBuffer() { cudaFree(raw_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get(size_t offsetElems = 0) { return reinterpret_cast<T*>(raw_) + offsetElems; }
  void upload(const std::vector<T>& v, size_t offsetElems = 0) {
    ASSERT_EQ(cudaMemcpy(get(offsetElems), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
    settle();
  }
  std::vector<T> download(size_t n, size_t offsetElems = 0) {
    std::vector<T> v(n);
    EXPECT_EQ(cudaMemcpy(v.data(), get(offsetElems), n * sizeof(T), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return v;
  }

 private:
  void* raw_ = nullptr;
  size_t count_;
};

// Holds a stream at a host function until open(); at the end of its scope it
// opens and drains the device, whatever failed, so that later tests never
// hang behind a held stream. The host function also gives up by itself after
// a deadline (expired() then says so): a backend call that blocks the only
// thread able to open the gate fails its test instead of hanging it until
// CTest's timeout. Launch every kernel the held section launches once before
// hold(): CUDA loads a kernel at its first launch (lazy loading, the
// default), and the load may wait for the device, held stream included.
class StreamGate {
 public:
  StreamGate() = default;
  StreamGate(const StreamGate&) = delete;
  StreamGate& operator=(const StreamGate&) = delete;
  ~StreamGate() {
    open();
    cudaDeviceSynchronize();
  }
  // Later work on s waits until open(), or for at most `seconds`.
  cudaError_t hold(cudaStream_t s, int seconds = 20) {
    state_.open = false;
    state_.deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    return cudaLaunchHostFunc(s, &StreamGate::wait, &state_);
  }
  void open() { state_.open = true; }
  // Whether a hold ran out its deadline before open().
  bool expired() const { return state_.expired.load(); }

 private:
  struct State {
    std::atomic<bool> open{true};
    std::atomic<bool> expired{false};
    std::chrono::steady_clock::time_point deadline;
  };
  static void wait(void* p) {
    State* st = static_cast<State*>(p);
    while (!st->open.load()) {
      if (std::chrono::steady_clock::now() > st->deadline) {
        st->expired = true;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  State state_;
};

// dst = src (bytes), then `call` (a gradcomp call on stream, on dst): eager,
// or, when graphed, as the replay of a graph that captured the copy and the
// call at its first use (*graph and *exec; the caller destroys them). Returns
// with the stream idle. Wrap in ASSERT_NO_FATAL_FAILURE.
template <typename Call>
void copyThenCall(cudaStream_t stream, void* dst, const void* src, size_t bytes, bool graphed,
                  cudaGraph_t* graph, cudaGraphExec_t* exec, Call call) {
  if (!graphed) {
    ASSERT_EQ(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream), cudaSuccess);
    ASSERT_EQ(call(), gradcompSuccess) << gradcompGetLastError();
  } else {
    if (!*exec) {
      ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream);
      const gradcompResult_t res = call();
      ASSERT_EQ(cudaStreamEndCapture(stream, graph), cudaSuccess);
      ASSERT_EQ(res, gradcompSuccess) << gradcompGetLastError();
      ASSERT_EQ(cudaGraphInstantiate(exec, *graph, 0), cudaSuccess);
    }
    ASSERT_EQ(cudaGraphLaunch(*exec, stream), cudaSuccess);
  }
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
}

}  // namespace gctest
