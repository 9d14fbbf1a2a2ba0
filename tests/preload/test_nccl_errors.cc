// Error paths of the NCCL binding, against the stand-in libnccl: an NCCL
// failure comes back as gradcompNcclError carrying NCCL's own sentence, and
// creating a comm without a GPU is a gradcompCudaError carrying CUDA's.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gradcomp.h"
#include "plugin/backends/transport.h"

namespace {

ncclComm_t fakeComm() {
  return (ncclComm_t)(uintptr_t)0x1000;
}

TEST(NcclErrors, FailedCallIsNcclErrorWithNcclsSentence) {
  setenv("FAKE_NCCL_FAIL", "1", 1);
  auto t = gc::makeNcclTransport(fakeComm(), 0, 4);
  float x[4] = {0};
  EXPECT_EQ(t->passThrough(x, x, 4, ncclFloat32, ncclSum), gradcompNcclError);
  EXPECT_NE(strstr(gradcompGetLastError(), "fake nccl: remote process failed"), nullptr)
      << gradcompGetLastError();
  const void* sp[4] = {x, x, x, x};
  void* rp[4] = {x, x, x, x};
  size_t sb[4] = {4, 4, 4, 4};
  EXPECT_EQ(t->allToAll(sp, sb, rp, sb), gradcompNcclError);
  EXPECT_EQ(t->allGather(x, x, 4), gradcompNcclError);
  EXPECT_EQ(t->sendRecv(x, 4, 1, x, 4, 3), gradcompNcclError);
  EXPECT_EQ(t->reduceScatter(x, x, 1, ncclFloat32, ncclSum), gradcompNcclError);
  EXPECT_NE(strstr(gradcompGetLastError(), "reduceScatter"), nullptr) << gradcompGetLastError();
  unsetenv("FAKE_NCCL_FAIL");
  EXPECT_EQ(t->passThrough(x, x, 4, ncclFloat32, ncclSum), gradcompSuccess);
  EXPECT_EQ(t->reduceScatter(x, x, 1, ncclFloat32, ncclSum), gradcompSuccess);
}

TEST(NcclErrors, CommCreateWithoutGpuIsCudaErrorWithCudasSentence) {
  int n = 0;
  if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) GTEST_SKIP() << "a GPU is present";
  (void)cudaGetLastError();
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  gradcompComm_t c = (gradcompComm_t)(uintptr_t)1;
  EXPECT_EQ(gradcompCommCreate(fakeComm(), &cfg, &c), gradcompCudaError);
  EXPECT_EQ(c, nullptr);
  EXPECT_NE(strstr(gradcompGetLastError(), "CUDA error"), nullptr) << gradcompGetLastError();
  EXPECT_EQ(gradcompCommCreate(nullptr, &cfg, &c), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), "nccl communicator is NULL");
}

}  // namespace
