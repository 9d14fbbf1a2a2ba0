#include "rank_host.h"

#include <chrono>
#include <vector>

#include "gradcomp/reference.h"

namespace gcbench {

namespace {

ncclDataType_t ncclTypeOf(gc::DType t) {
  return t == gc::DType::F16 ? ncclFloat16 : (t == gc::DType::BF16 ? ncclBfloat16 : ncclFloat32);
}

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

bool HostRank::resultHash(const void* buf, size_t bytes, double* hash) {
  *hash = hashBytes(buf, bytes);
  return true;
}

bool HostRank::qsgdKernelTimes(gc::DType t, size_t count, const QsgdKernels& k,
                               KernelCosts* costs) {
  const int bits = k.bits, bucket = k.bucket;
  std::vector<unsigned char> enc(gradcompQsgdEncodedBytes(count, bits, bucket));
  std::vector<float> residual(count, 0.0f), out(count, 0.0f), copy(count, 0.0f);
  bool ok = true;
  // Microseconds per element, repeating until 50 ms have passed so that
  // small sizes are timed too.
  auto perElem = [&](auto&& body) {
    int reps = 0;
    const double t0 = seconds();
    double t1 = t0;
    do {
      ok = ok && body(reps);
      ++reps;
      t1 = seconds();
    } while (ok && t1 - t0 < 0.05);
    return (t1 - t0) / reps * 1e6 / (double)count;
  };
  auto encode = [&](const void* x, ncclDataType_t type, const QsgdKernels& q) {
    return perElem([&](int i) {
      return gradcompQsgdEncodeEFLevelsHost(x, type, q.errorFeedback ? residual.data() : nullptr,
                                            count, bits, bucket, 7 + i, q.rounding, q.levels,
                                            enc.data()) == gradcompSuccess;
    });
  };
  auto decode = [&](int acc) {
    return perElem([&](int) {
      return gradcompQsgdDecodeHost(enc.data(), count, bits, bucket, out.data(), acc) ==
             gradcompSuccess;
    });
  };
  costs->encode = encode(send_, ncclTypeOf(t), k);
  costs->decodeAcc = decode(1);
  costs->decode = decode(0);
  // fp32 input: the decoded values.
  costs->encodeF32 = t == gc::DType::F32 ? costs->encode : encode(out.data(), ncclFloat32, k);
  costs->ownerEncode = encode(out.data(), ncclFloat32, k.owner());
  costs->elementwisePerByte = perElem([&](int) {
                                memcpy(copy.data(), out.data(), count * sizeof(float));
                                return true;
                              }) /
                              8.0;
  return ok;
}

}  // namespace gcbench
