// Host buffers that end at a no-access page: a read or write one byte past
// the end faults at once, with or without a sanitizer.
#pragma once

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>

namespace gctest {

class GuardedBuffer {
 public:
  explicit GuardedBuffer(size_t bytes) : bytes_(bytes) {
    page_ = (size_t)sysconf(_SC_PAGESIZE);
    const size_t data = (bytes + page_ - 1) / page_ * page_;
    total_ = data + page_;
    void* m = mmap(nullptr, total_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    base_ = m == MAP_FAILED ? nullptr : static_cast<char*>(m);
    if (base_) mprotect(base_ + data, page_, PROT_NONE);
    ptr_ = base_ ? base_ + data - bytes : nullptr;
  }
  GuardedBuffer(const void* src, size_t bytes) : GuardedBuffer(bytes) {
    if (ptr_ && bytes) memcpy(ptr_, src, bytes);
  }
  ~GuardedBuffer() {
    if (base_) munmap(base_, total_);
  }
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;

  // The buffer's last byte is the one before the no-access page (4-byte
  // aligned when bytes is a multiple of 4).
  void* data() const { return ptr_; }
  template <typename T>
  T* as() const {
    return reinterpret_cast<T*>(ptr_);
  }
  size_t size() const { return bytes_; }

 private:
  char* base_ = nullptr;
  char* ptr_ = nullptr;
  size_t bytes_ = 0, page_ = 0, total_ = 0;
};

}  // namespace gctest
