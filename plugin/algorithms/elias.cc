// Elias allgather (GRADCOMP_ELIAS=1, method qsgd): every rank encodes its
// whole buffer with Elias-coded QSGD levels (error feedback fused), the
// encoded sizes are allgathered (one 4-byte allgather), the host reads them,
// and each rank sends its encoding, at its own size, to every other rank
// (grouped send/recv). Every rank decodes and sums all N in rank order, so
// results are identical on all ranks. Bytes each rank sends:
// (N-1) * (4 + E_elias(n)), E_elias data-dependent.
//
// The host must learn the sizes before it can post the transfers, so the
// call synchronizes the stream once and is refused under CUDA-graph capture.
// Levels are those of the fixed-width codec at this call's bits (s =
// 2^(b-1)-1, max-norm scales), so DQ-SGD's bit choice applies unchanged.
#include <vector>

#include "kernels/qsgd_math.cuh"
#include "algorithms/algorithms.h"
#include "checks.h"
#include "codecs/elias.h"

namespace gc {
namespace {

elias::Params paramsFor(const gradcompComm& c, int bits) {
  // Gamma: shorter than omega for QSGD's small levels (docs/adaptive.md).
  return elias::Params{qsgd::levels(bits), c.cfg.bucketSize, elias::Code::Gamma, elias::Norm::Max};
}

// The stream's offsets are 32-bit word counts.
bool eliasCountFits(size_t count, const elias::Params& p) {
  return elias::maxStreamWords(count, p) < 0xffffffffull;
}

size_t slotBytes(const gradcompComm& c, size_t count, int bits) {
  return alignUp(elias::maxEncodedBytes(count, paramsFor(c, bits)), 16);
}

size_t workspaceBytes(const gradcompComm& c, size_t count, int bits) {
  return alignUp(c.nranks * slotBytes(c, count, bits)) + alignUp(count * sizeof(float)) +
         alignUp(c.nranks * sizeof(uint32_t)) +
         alignUp(eliasWorkspaceBytes(*c.backend, count, c.cfg.bucketSize));
}

// The real bytes are only known after the size exchange: run counts them.
size_t wireBytes(const gradcompComm&, size_t, int) {
  return 0;
}

gradcompResult_t run(const CallArgs& a, void* workspace) {
  gradcompComm& c = *a.comm;
  Backend& be = *c.backend;
  if (be.capturing()) {
    return setError(gradcompInvalidUsage,
                    "GRADCOMP_ELIAS=1 sends variable sizes that the host must read first, which "
                    "a CUDA graph cannot do; capture with GRADCOMP_ELIAS=0");
  }
  const int n = c.nranks, r = c.rank, d = c.cfg.bucketSize;
  const elias::Params p = paramsFor(c, a.bits);
  GC_ARG(eliasCountFits(a.count, p),
         "count=%zu is too large for one Elias encoding (its worst case exceeds 2^32 words); "
         "split the buffer or set GRADCOMP_ELIAS=0",
         a.count);
  const size_t slot = slotBytes(c, a.count, a.bits);
  char* slots = static_cast<char*>(workspace);
  float* acc = reinterpret_cast<float*>(slots + alignUp(n * slot));
  uint32_t* sizes =
      reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(acc) + alignUp(a.count * sizeof(float)));
  char* encWs = reinterpret_cast<char*>(sizes) + alignUp(n * sizeof(uint32_t));
  const size_t encWsBytes = eliasWorkspaceBytes(be, a.count, d);
  char* mine = slots + (size_t)r * slot;

  GC_CHECK(eliasEncode(be, a.send, a.dtype, a.state->residual, a.count, p, c.key(a.step, 0), mine,
                       encWs, encWsBytes));
  GC_CHECK(c.transport->allGather(mine + eliasSizeWordOffset(a.count, d), sizes, sizeof(uint32_t)));
  // The comm's argument arrays (CallScratch): a steady-state call allocates nothing.
  CallScratch& scratch = callScratch(c);
  std::vector<uint32_t>& words = scratch.eliasWords;
  words.resize(n);
  GC_CHECK(be.toHost(words.data(), sizes, n * sizeof(uint32_t)));

  std::vector<size_t>&bytes = scratch.sizes, &sendBytes = scratch.sendBytes;
  std::vector<const void*>& send = scratch.sendPtr;
  std::vector<void*>& recv = scratch.blocks;
  bytes.resize(n);
  sendBytes.resize(n);
  send.resize(n);
  recv.resize(n);
  for (int i = 0; i < n; ++i) {
    bytes[i] = eliasEncodedBytes(a.count, d, words[i]);
    if (bytes[i] > slot) {
      return setError(gradcompInvalidUsage,
                      "Elias allgather: rank %d reports %zu encoded bytes, more than the worst "
                      "case %zu for %zu elements",
                      i, bytes[i], slot, a.count);
    }
    recv[i] = slots + (size_t)i * slot;
  }
  for (int j = 0; j < n; ++j) {
    send[j] = mine;
    sendBytes[j] = bytes[r];
  }
  GC_CHECK(c.transport->allToAll(send.data(), sendBytes.data(), recv.data(), bytes.data()));
  for (int i = 0; i < n; ++i) {
    GC_CHECK(eliasDecode(be, slots + (size_t)i * slot, bytes[i], a.count, p, acc, i != 0));
  }
  c.stats.bytesOnWire += (uint64_t)(n - 1) * (sizeof(uint32_t) + bytes[r]);
  c.stats.bytesInterNode += (uint64_t)c.remotePeers() * (sizeof(uint32_t) + bytes[r]);
  return be.fromFloat(acc, a.count, a.average ? (float)n : 1.0f, a.dtype, a.recv);
}

}  // namespace

gradcompResult_t eliasCheckCount(const gradcompComm& c, size_t count) {
  const int bits = c.cfg.bitsMode == gradcompBitsFixed ? c.cfg.bits : c.cfg.bitsMax;
  const elias::Params p = paramsFor(c, bits);
  if (eliasCountFits(count, p)) return gradcompSuccess;
  // The largest count that fits: the worst case grows with the count.
  size_t lo = 0, hi = count;  // lo fits, hi does not
  while (hi - lo > 1) {
    const size_t mid = lo + (hi - lo) / 2;
    (eliasCountFits(mid, p) ? lo : hi) = mid;
  }
  return setError(
      gradcompInvalidArgument,
      "count=%zu is too large for one Elias encoding at bits=%d (%s) and bucketSize=%d: "
      "at most %zu elements, whose worst case stays below 2^32 words; split the "
      "buffer or set GRADCOMP_ELIAS=0",
      count, bits,
      c.cfg.bitsMode == gradcompBitsFixed ? "GRADCOMP_BITS"
                                          : "GRADCOMP_BITS_MAX, the widest DQ-SGD uses",
      c.cfg.bucketSize, lo);
}

const Algorithm& eliasAlgorithm() {
  // Counted under allgather: the same exchange, with variable sizes.
  static const Algorithm algo = {
      gradcompAlgoAllgather, "elias-allgather", workspaceBytes, wireBytes, run, wireBytes};
  return algo;
}

}  // namespace gc
