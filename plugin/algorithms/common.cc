// Pieces the dense algorithms share.
#include "algorithms/algorithms.h"
#include "checks.h"

#include <algorithm>

#include "kernels/qsgd_math.cuh"

namespace gc {

Chunks splitChunks(const gradcompComm& c, size_t count, int bits) {
  Chunks ch;
  const int n = c.nranks, d = c.cfg.bucketSize;
  ch.off.resize(n + 1);
  splitAligned(count, n, d, ch.off.data());
  for (int j = 0; j < n; ++j) ch.maxLen = std::max(ch.maxLen, ch.len(j));
  ch.slot = alignUp(qsgd::encodedBytes(ch.maxLen, bits, d), 16);
  return ch;
}

Pieces splitPieces(const gradcompComm& c, const Chunks& ch) {
  Pieces pc;
  pc.piece = ch.maxLen;
  const size_t d = (size_t)c.cfg.bucketSize, bytes = c.cfg.pipelineBytes;
  if (bytes == 0 || ch.maxLen == 0) return pc;
  const size_t share = (bytes / 4 + (size_t)c.nranks - 1) / (size_t)c.nranks;
  const size_t piece = std::max<size_t>(1, (share + d - 1) / d) * d;
  if (piece >= ch.maxLen) return pc;
  pc.piece = piece;
  pc.count = (ch.maxLen + piece - 1) / piece;
  return pc;
}

gradcompResult_t decodeToOutput(Backend& be, const void* enc, size_t len, int bits, int bucket,
                                float divisor, DType t, void* out, float* scratch) {
  if (len == 0) return gradcompSuccess;
  if (t == DType::F32 && divisor == 1.0f) {
    return be.qsgdDecode(enc, len, bits, bucket, static_cast<float*>(out), false);
  }
  GC_CHECK(be.qsgdDecode(enc, len, bits, bucket, scratch, false));
  return be.fromFloat(scratch, len, divisor, t, out);
}

size_t allToAllInterNodeBytes(const gradcompComm& c, size_t wire) {
  return c.nranks > 1 ? wire / (size_t)(c.nranks - 1) * (size_t)c.remotePeers() : 0;
}

}  // namespace gc
