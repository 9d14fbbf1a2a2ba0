// GPU test helpers: a fixture that skips without a GPU (fails instead when
// GRADCOMP_TEST_GPU=1), and RAII device buffers.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

namespace gctest {

inline bool gpuRequired() {
  const char* v = getenv("GRADCOMP_TEST_GPU");
  return v != nullptr && strcmp(v, "1") == 0;
}

class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess || n == 0) {
      (void)cudaGetLastError();
      if (gpuRequired()) {
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

}  // namespace gctest
