// gradcompCommAbort on the CUDA backend, in one process (a comm over the
// mirroring transport): a comm whose work has finished is freed; a comm
// whose stream cannot drain (a host function holds it, as a kernel stuck on
// a dead peer of a communicator nobody aborted would) is left allocated
// with a warning, and abort still returns. The multi-process case (a peer
// that dies mid-call) is tests/multirank's GC_ABORT_TEST.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "gradcomp.h"
#include "plugin/comm.h"
#include "plugin/debug.h"
#include "tests/gpu/gpu_util.h"
#include "tests/gpu/mirror_transport.h"

namespace {

using gctest::DeviceBuffer;

// Abort reports memory it leaves allocated only as a WARN line, and an unset
// GRADCOMP_DEBUG logs nothing: turn WARN on before main, ahead of the first
// log call, which fixes the level for the process (a value the caller set
// stays).
const bool kWarnLogged = setenv("GRADCOMP_DEBUG", "WARN", 0) == 0;

class AbortGpu : public gctest::GpuTest {};

constexpr size_t kCount = 100000;

gradcompConfig_t qsgdConfig() {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 0;
  cfg.autoTune = 0;
  return cfg;
}

void CUDART_CB holdStream(void* flag) {
  auto* release = static_cast<std::atomic<bool>*>(flag);
  while (!release->load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

TEST_F(AbortGpu, FreesACommWhoseWorkFinished) {
  gradcompComm* c = gctest::mirrorComm(qsgdConfig(), true, 2, kCount, stream, false);
  DeviceBuffer<float> buf(kCount);
  ASSERT_EQ(gradcompAllReduce(buf.get(), buf.get(), kCount, ncclFloat32, ncclSum, c, stream),
            gradcompSuccess)
      << gradcompGetLastError();
  testing::internal::CaptureStderr();
  EXPECT_EQ(gradcompCommAbort(c), gradcompSuccess);
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(log.find("left allocated"), std::string::npos) << log;
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
}

TEST_F(AbortGpu, LeavesTheMemoryOfWorkThatDoesNotDrain) {
  const char* level = getenv("GRADCOMP_DEBUG");
  ASSERT_TRUE(kWarnLogged && gc::logLevel() >= gc::LogLevel::Warn)
      << "GRADCOMP_DEBUG=" << (level ? level : "") << " hides the warning this test reads";
  gradcompComm* c = gctest::mirrorComm(qsgdConfig(), true, 2, kCount, stream, false);
  DeviceBuffer<float> buf(kCount);
  ASSERT_EQ(gradcompAllReduce(buf.get(), buf.get(), kCount, ncclFloat32, ncclSum, c, stream),
            gradcompSuccess)
      << gradcompGetLastError();
  // Held: the comm's own stream, which drain waits for (work the caller's
  // stream takes after the call returned is not the comm's: drain watches the
  // call's end mark, recorded before this).
  std::atomic<bool> release{false};
  ASSERT_EQ(cudaLaunchHostFunc(c->backend->commStream(), holdStream, &release), cudaSuccess);
  testing::internal::CaptureStderr();
  EXPECT_EQ(gradcompCommAbort(c), gradcompSuccess);  // returns though the stream is held
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("left allocated"), std::string::npos) << log;
  release = true;
  // The held stream's handle went with the comm's backend.
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
