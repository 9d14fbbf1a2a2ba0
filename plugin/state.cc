// Checkpoints of a comm's per-buffer state: gradcompCommStateSize/Save/Load.
//
// A state blob is untrusted bytes (a file, another job): the loader checks
// every field, size and the checksum before it touches the comm, so a
// refused blob leaves the comm exactly as it was. Layout, little-endian:
//
//   header (kHeaderBytes):
//     0  u32 magic "GCST"        4  u32 version (2)
//     8  u32 header bytes       12  u32 CRC32C of the whole blob, this field 0
//    16  u64 total bytes        24  u64 step (the comm's compressed calls,
//                                   replays of captured ones included;
//                                   at most 2^63 - 1)
//    32  i32 rank               36  i32 ranks
//    40  u64 records            48  i32[kShapeFields] settings that shape the state
//   records, each: u32 tag, u32 0, u64 record bytes (prefix included), payload.
//     tag 1, one buffer: i32 key kind, i32 dtype, u64 key, u64 count,
//       u64 owner residual count, u64 calls (at most 2^63 - 1), u32 flags (1 residual, 2 owner
//       residual, 4 momentum, 8 DQ-SGD history, 16 residual sent: a passed
//       call sent the residual and no call that may compress came since, so
//       the next passes go plainly, BufferState::residualSent; a loader
//       before it refuses the flag by name; 32 unsharded: a DGC momentum
//       pass on a hierarchical comm left u and v over the whole buffer,
//       which the next compressed call sums into the shards first,
//       BufferState::unsharded; likewise refused by older loaders), u32 0,
//       then the fp32 arrays
//       in that order, then the history: f64 sumLenMaxSq, f64 sumSq, i32
//       haveStats, i32 lastBits, i32 budget used, i32 budget position, u32 n,
//       u32 0, f64[n] budget history.
//     tag 2, GRADCOMP_AUTO's figures (at most one record; written when a
//       collective's decision came from usable figures): for the allreduce,
//       then the reduce-scatter, u32 present, u32 0, u64 smallCount, u64
//       largeCount, f32 NCCL us at both, f32 compressed us at both. A comm
//       with autoTune=1 that loads it decides from these figures instead of
//       timing again, so a resumed run passes and compresses what the saved
//       one did (bit for bit); autoTune=0 ignores it.
//     tag 3, the gradients' scale the arrays are in (gradcompCommSetGradScale;
//       at most one record, written when it is not 1): f32 scale, u32 0. A
//       blob without it is in unscaled units (1).
//     tag 4, the inter-node group of a hierarchical comm holding a
//       reduce-scatter state (at most one record): u32 k, u32 0, i32[k] the
//       global ranks R(0, l), ..., R(k-1, l) of this rank's local rank l,
//       i32 0 when k is odd. Slot l*k + j of a reduce-scatter state is input
//       block R(j, l): a comm whose group differs (its nodes interleave the
//       ranks otherwise, with this rank at the same node and local rank) is
//       refused. A blob without it loads as before.
// New kinds of state get new tags (an older loader refuses them by name).
// The header's 16 shape fields are all in use (the last three, node, local
// rank and budget, hold 0 in blobs of earlier builds, which load as before):
// a new setting needs a new version.
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <map>
#include <utility>
#include <string>
#include <vector>

#include "algorithms/algorithms.h"
#include "autotune.h"
#include "checks.h"
#include "codecs/bits_policy.h"
#include "codecs/qsgd.h"
#include "collective.h"
#include "comm.h"
#include "format_args.h"
#include "params.h"

namespace gc {
namespace {

constexpr uint32_t kMagic = 0x54534347;  // "GCST"
constexpr uint32_t kVersion = 2;
constexpr int kShapeFields = 16;
constexpr size_t kHeaderBytes = 48 + 4 * kShapeFields;
constexpr uint32_t kTagBuffer = 1;
constexpr uint32_t kTagAuto = 2;
constexpr uint32_t kTagScale = 3;
constexpr size_t kScaleRecordBytes = 16 + 8;  // prefix, f32 scale, u32 0
constexpr uint32_t kTagGroup = 4;
constexpr size_t kAutoEntryBytes = 40;  // present, 0, two counts, four times
constexpr size_t kAutoRecordBytes = 16 + 2 * kAutoEntryBytes;
constexpr AutoCall kAutoCalls[2] = {AutoCall::AllReduce, AutoCall::ReduceScatter};
constexpr size_t kRecordPrefix = 16;
constexpr size_t kBufferFixed = 48;  // the buffer payload before its arrays
constexpr size_t kHistoryFixed = 40;
constexpr size_t kCrcOffset = 12;
constexpr uint64_t kMaxStep = (1ull << 63) - 1;  // the largest step, or calls, a blob holds

enum : uint32_t {
  kHasResidual = 1,
  kHasOwner = 2,
  kHasMomentum = 4,
  kHasHistory = 8,
  kResidualSent = 16,
  kUnsharded = 32
};

// The settings a state's meaning depends on, in header order. The QSGD
// rounding and levels are not among them: a residual is v - decode(code)
// under either rule and either table, so a state saved under one loads and
// continues under the other.
const char* const kShapeNames[kShapeFields] = {
    "method",    "algo",     "bits",      "bucketSize", "errorFeedback",      "ownerResidual",
    "elias",     "bitsMode", "bitsMin",   "bitsMax",    "momentumCorrection", "budgetWindow",
    "localSize", "node",     "localRank", "bitsBudget"};
// Shape fields that hold position + 1 under the hierarchy (0 when flat):
// this rank's node and its rank within it. Blobs of builds before they were
// recorded hold 0 there and are taken as they were.
constexpr int kShapeNode = 13, kShapeLocalRank = 14;
// The budget the DQ-SGD windows were spent against (budget mode: the float's
// bits; 0 otherwise, and in blobs of builds before it was recorded). A load
// under another budget starts every window afresh instead of refusing: the
// bits a window spent under the old budget could leave less than bitsMin per
// call under the new one, and it would overspend.
constexpr int kShapeBudget = 15;

// gradcompCommSetGradScale's range: a ratio of two such scales, and its
// inverse, are normal floats.
bool gradScaleInRange(float scale) {
  return scale >= 0x1p-60f && scale <= 0x1p60f;  // false for NaN
}

// The scale a comm's states are in, and its inter-node child's (which
// clips with it).
void setScaleField(gradcompComm* c, float scale) {
  for (; c != nullptr; c = c->inter.get()) c->gradScale = scale;
}

// Every state of c and of its inter-node child, times `factor`: the
// arrays on the backend's stream (in place: x / (1 / factor), exact for a
// power of two), the DQ-SGD statistics on the host. What can fail on the
// host (waiting for the last call's statistics) is done first, so that it
// changes nothing; a failed launch after it is a CUDA error the next call
// meets too.
gradcompResult_t scaleStates(gradcompComm* top, float factor) {
  for (gradcompComm* c = top; c != nullptr; c = c->inter.get()) {
    for (auto& kv : c->states) GC_CHECK(settleBitsHistory(kv.second));
  }
  const float divisor = (float)(1.0 / (double)factor);
  for (gradcompComm* c = top; c != nullptr; c = c->inter.get()) {
    for (auto& kv : c->states) {
      BufferState& s = kv.second;
      const std::pair<float*, size_t> arrays[] = {
          {s.residual, s.count}, {s.ownerResidual, s.ownerResidualCount}, {s.momentum, s.count}};
      for (const auto& a : arrays) {
        if (a.first)
          GC_CHECK(c->backend->fromFloat(a.first, a.second, divisor, DType::F32, a.first));
      }
      scaleBitsHistory(s, (double)factor);
    }
  }
  return gradcompSuccess;
}

int32_t budgetBits(const gradcompConfig_t& c) {
  if (c.bitsMode != gradcompBitsBudget) return 0;
  int32_t b;
  memcpy(&b, &c.bitsBudget, sizeof b);
  return b;
}

// The hierarchy keeps each rank's shard of a buffer's state in a slice of its
// arrays, which shard by its local rank and which inter-node chunk by its
// node: a state saved under one node layout, or by a rank the hosts placed
// elsewhere, means something else under another.
void shapeOf(const gradcompComm& comm, int32_t* out) {
  const gradcompConfig_t& c = comm.cfg;
  const int32_t v[kShapeFields] = {(int32_t)c.method,
                                   (int32_t)c.algo,
                                   c.bits,
                                   c.bucketSize,
                                   c.errorFeedback,
                                   c.ownerResidual,
                                   c.elias,
                                   (int32_t)c.bitsMode,
                                   c.bitsMin,
                                   c.bitsMax,
                                   c.momentumCorrection,
                                   c.budgetWindow,
                                   comm.topo.hier() ? comm.topo.localSize : 1,
                                   comm.topo.hier() ? comm.topo.node + 1 : 0,
                                   comm.topo.hier() ? comm.topo.localRank + 1 : 0,
                                   budgetBits(c)};
  memcpy(out, v, sizeof(v));
}

// CRC32C (Castagnoli, reflected 0x82F63B78): table-driven, or with x86's
// crc32 instruction (the same polynomial), ~10x faster on large states.
uint32_t crc32cTable(uint32_t crc, const void* data, size_t n) {
  static const struct Table {
    uint32_t t[256];
    Table() {
      for (uint32_t i = 0; i < 256; ++i) {
        uint32_t c = i;
        for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        t[i] = c;
      }
    }
  } table;
  const unsigned char* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table.t[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc32cHardware(uint32_t crc, const void* data,
                                                          size_t n) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint64_t c = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    c = __builtin_ia32_crc32di(c, w);
  }
  uint32_t c32 = (uint32_t)c;
  for (; n > 0; --n, ++p) c32 = __builtin_ia32_crc32qi(c32, *p);
  return ~c32;
}
#endif

uint32_t crc32c(uint32_t crc, const void* data, size_t n) {
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  if (hw) return crc32cHardware(crc, data, n);
#endif
  return crc32cTable(crc, data, n);
}

uint32_t blobCrc(const char* blob, size_t bytes) {
  const uint32_t zero = 0;
  uint32_t crc = crc32c(0, blob, kCrcOffset);
  crc = crc32c(crc, &zero, 4);
  return crc32c(crc, blob + kCrcOffset + 4, bytes - kCrcOffset - 4);
}

// Sequential writer and bounds-checked reader of the blob.
class Writer {
 public:
  explicit Writer(char* p) : p_(p) {}
  template <typename T>
  void put(T v) {
    memcpy(p_, &v, sizeof(T));
    p_ += sizeof(T);
  }
  char* take(size_t n) {
    char* q = p_;
    p_ += n;
    return q;
  }

 private:
  char* p_;
};

class Reader {
 public:
  Reader(const char* p, size_t n) : p_(p), end_(p + n) {}
  size_t left() const { return (size_t)(end_ - p_); }
  template <typename T>
  bool get(T* v) {
    if (left() < sizeof(T)) return false;
    memcpy(v, p_, sizeof(T));
    p_ += sizeof(T);
    return true;
  }
  const char* take(size_t n) {
    if (left() < n) return nullptr;
    const char* q = p_;
    p_ += n;
    return q;
  }

 private:
  const char* p_;
  const char* end_;
};

size_t historyBytes(const BitsHistoryRecord& h) {
  return kHistoryFixed + 8 * h.halfLog2A.size();
}

size_t recordBytes(const BufferState& s, const BitsHistoryRecord* h) {
  return kRecordPrefix + kBufferFixed + (s.residual ? s.count * 4 : 0) +
         (s.ownerResidual ? s.ownerResidualCount * 4 : 0) + (s.momentum ? s.count * 4 : 0) +
         (h ? historyBytes(*h) : 0);
}

// Every buffer's DQ-SGD history, fetched once per save.
gradcompResult_t histories(gradcompComm& c, std::vector<BitsHistoryRecord>* out,
                           std::vector<bool>* present) {
  out->assign(c.states.size(), BitsHistoryRecord{});
  present->assign(c.states.size(), false);
  size_t i = 0;
  for (auto& kv : c.states) {
    bool p = false;
    GC_CHECK(exportBitsHistory(kv.second, &p, &(*out)[i]));
    (*present)[i++] = p;
  }
  return gradcompSuccess;
}

// GRADCOMP_AUTO's saved figures, per collective; true when there are any.
bool autoFigures(const gradcompComm& c, AutoFigures f[2], bool have[2]) {
  bool any = false;
  for (int k = 0; k < 2; ++k) any |= have[k] = autoSavedFigures(c, kAutoCalls[k], &f[k]);
  return any;
}

// The global ranks of this rank's inter-node group, R(0, l), ..., R(k-1, l),
// where a reduce-scatter state's slots depend on them (hier_reduce_scatter.cc:
// slot l*k + j is input block R(j, l)); empty when the comm is flat or holds
// no reduce-scatter state.
std::vector<int32_t> interNodeGroup(const gradcompComm& c) {
  std::vector<int32_t> g;
  if (!c.topo.hier()) return g;
  bool rs = false;
  for (const auto& kv : c.states) rs = rs || std::get<0>(kv.first) >= kStateReduceScatter;
  if (!rs) return g;
  for (int n = 0; n < c.topo.nodes; ++n) g.push_back(c.topo.rankAt(n, c.topo.localRank));
  return g;
}

size_t groupRecordBytes(size_t k) {
  return k == 0 ? 0 : kRecordPrefix + 8 + (k + 1) / 2 * 8;
}

size_t totalBytes(gradcompComm& c, const std::vector<BitsHistoryRecord>& h,
                  const std::vector<bool>& present) {
  AutoFigures f[2];
  bool have[2];
  size_t total = kHeaderBytes + (autoFigures(c, f, have) ? kAutoRecordBytes : 0) +
                 (c.gradScale != 1.0f ? kScaleRecordBytes : 0) +
                 groupRecordBytes(interNodeGroup(c).size()),
         i = 0;
  for (auto& kv : c.states) {
    total += recordBytes(kv.second, present[i] ? &h[i] : nullptr);
    ++i;
  }
  return total;
}

// One buffer record of a blob, validated, pointing into the blob.
struct Parsed {
  StateKey key;
  size_t count = 0, ownerCount = 0;
  DType dtype = DType::F32;
  uint64_t calls = 0;
  const char *residual = nullptr, *owner = nullptr, *momentum = nullptr;
  bool hasHistory = false;
  bool residualSent = false;
  bool unsharded = false;
  BitsHistoryRecord history;
};

// The blob's GRADCOMP_AUTO record, validated.
struct ParsedAuto {
  bool record = false;
  bool have[2] = {false, false};
  AutoFigures f[2];
};

// The blob's scale record, validated (1 without one).
struct ParsedScale {
  bool record = false;
  float scale = 1.0f;
};

gradcompResult_t refuse(const char* what, ...) __attribute__((format(printf, 1, 2)));
gradcompResult_t refuse(const char* fmt, ...) {
  char msg[512];
  GC_FORMAT_ARGS(msg, fmt);
  return setError(gradcompInvalidArgument, "state blob refused, the comm is unchanged: %s", msg);
}

gradcompResult_t parseBuffer(const gradcompComm& c, Reader& r, uint64_t index, Parsed* out) {
  int32_t kind, dtype;
  uint64_t key, count, ownerCount, calls;
  uint32_t flags, zero;
  if (!r.get(&kind) || !r.get(&dtype) || !r.get(&key) || !r.get(&count) || !r.get(&ownerCount) ||
      !r.get(&calls) || !r.get(&flags) || !r.get(&zero)) {
    return refuse("buffer record %llu is truncated", (unsigned long long)index);
  }
  // Key kinds: allreduce, keyed allreduce, reduce-scatter, keyed reduce-scatter.
  if (kind < 0 || kind > kStateReduceScatter + 1 || dtype < 0 || dtype > 2 || zero != 0 ||
      (flags & ~63u) != 0) {
    return refuse(
        "buffer record %llu has key kind %d, dtype %d, flags 0x%x (expected kind 0..3, "
        "dtype 0..2, flags within 0x3f)",
        (unsigned long long)index, kind, dtype, flags);
  }
  if (count == 0 || count > kMaxCodecCount) {
    return refuse("buffer record %llu has count=%llu, out of range 1..%zu",
                  (unsigned long long)index, (unsigned long long)count, kMaxCodecCount);
  }
  const gradcompComm::StateShape sh = c.stateShape(kind, count);
  const bool wantHistory =
      c.cfg.method == gradcompMethodQsgd && c.cfg.bitsMode != gradcompBitsFixed;
  // An owner residual this comm never reads: a blob of an earlier build
  // holds one (what that build allocated), a later save none.
  const bool unreadOwner = (flags & kHasOwner) != 0 && sh.unreadOwnerCount != 0;
  if (((flags & kHasResidual) != 0) != sh.residual ||
      ((flags & kHasMomentum) != 0) != sh.momentum ||
      (((flags & kHasOwner) != 0) != (sh.ownerResidualCount != 0) && !unreadOwner) ||
      ((flags & kHasOwner) != 0 &&
       ownerCount != (unreadOwner ? sh.unreadOwnerCount : sh.ownerResidualCount)) ||
      ((flags & kHasOwner) == 0 && ownerCount != 0) ||
      ((flags & kHasHistory) != 0 && !wantHistory)) {
    return refuse(
        "buffer record %llu (count=%llu) holds arrays 0x%x with owner count %llu; this "
        "comm's settings and ranks give arrays 0x%x with owner count %zu",
        (unsigned long long)index, (unsigned long long)count, flags & 7u,
        (unsigned long long)ownerCount,
        (sh.residual ? kHasResidual : 0u) | (sh.momentum ? kHasMomentum : 0u) |
            (sh.ownerResidualCount ? kHasOwner : 0u),
        sh.ownerResidualCount);
  }
  // A passed call sends a residual or an owner residual only.
  if ((flags & kResidualSent) != 0 && (flags & (kHasResidual | kHasOwner)) == 0) {
    return refuse(
        "buffer record %llu says its residual was sent (flag 0x10) but holds none (arrays "
        "0x%x)",
        (unsigned long long)index, flags & 7u);
  }
  // Only a momentum pass on a hierarchical comm leaves the velocity over the
  // whole buffer, where a compressed call keeps it on a shard.
  if ((flags & kUnsharded) != 0 &&
      ((flags & kHasMomentum) == 0 ||
       !(kind >= kStateReduceScatter ? useHierReduceScatter(c) : useHier(c)))) {
    return refuse(
        "buffer record %llu says its velocity lies over the whole buffer of a hierarchical "
        "comm (flag 0x20) but holds arrays 0x%x (needs momentum, 0x4) and this comm is %s",
        (unsigned long long)index, flags & 7u,
        kind >= kStateReduceScatter ? (useHierReduceScatter(c) ? "hierarchical" : "flat")
                                    : (useHier(c) ? "hierarchical" : "flat"));
  }
  // As the step (parse): no run makes 2^63 calls on a buffer, and a count at
  // 2^64 - 1 would wrap to 0 at its next call and restart DGC's warm-up. Not
  // bounded by the step: a call captured into a CUDA graph counts on the host
  // at its capture and on the device (the saved step) at its replays, so a
  // capture that was never replayed leaves the calls past the step.
  if (calls > kMaxStep) {
    return refuse("buffer record %llu has calls=%llu, out of range 0..%llu (2^63 - 1)",
                  (unsigned long long)index, (unsigned long long)calls,
                  (unsigned long long)kMaxStep);
  }
  out->key = StateKey{kind, key, (size_t)count, dtype};
  out->count = count;
  out->ownerCount = unreadOwner ? 0 : ownerCount;
  out->dtype = (DType)dtype;
  out->calls = calls;
  out->residualSent = (flags & kResidualSent) != 0;
  out->unsharded = (flags & kUnsharded) != 0;
  const char* unread = nullptr;  // read past and checked, not loaded
  const char** arrays[3] = {&out->residual, unreadOwner ? &unread : &out->owner, &out->momentum};
  const uint32_t bits[3] = {kHasResidual, kHasOwner, kHasMomentum};
  const size_t lens[3] = {count, ownerCount, count};
  for (int a = 0; a < 3; ++a) {
    if (!(flags & bits[a])) continue;
    *arrays[a] = r.take(lens[a] * 4);
    if (*arrays[a] == nullptr) {
      return refuse("buffer record %llu is truncated in its arrays", (unsigned long long)index);
    }
    // Error feedback leaves a residual (and DGC its velocity) unchanged for a
    // non-finite bucket, so no save writes a non-finite value; one loaded
    // would make its bucket non-finite at every later call.
    for (size_t i = 0; i < lens[a]; ++i) {
      float x;
      memcpy(&x, *arrays[a] + 4 * i, 4);
      if (!isfinite(x)) {
        static const char* const names[3] = {"residual", "owner residual", "momentum"};
        return refuse("buffer record %llu: %s[%zu] = %g is not finite (no saved state holds one)",
                      (unsigned long long)index, names[a], i, (double)x);
      }
    }
  }
  out->hasHistory = (flags & kHasHistory) != 0;
  if (out->hasHistory) {
    BitsHistoryRecord& h = out->history;
    uint32_t n, pad;
    if (!r.get(&h.stats.sumLenMaxSq) || !r.get(&h.stats.sumSq) || !r.get(&h.haveStats) ||
        !r.get(&h.lastBits) || !r.get(&h.budgetUsed) || !r.get(&h.budgetPos) || !r.get(&n) ||
        !r.get(&pad) || pad != 0 || r.left() / 8 < n) {
      return refuse("buffer record %llu has a truncated DQ-SGD history", (unsigned long long)index);
    }
    h.halfLog2A.resize(n);
    for (uint32_t i = 0; i < n; ++i) r.get(&h.halfLog2A[i]);
    if (const char* why = checkBitsHistory(h, c.cfg)) {
      return refuse("buffer record %llu: its DQ-SGD history is invalid (%s)",
                    (unsigned long long)index, why);
    }
    // Sums of squares (and of len * max^2) are 0 or more, or not finite
    // where the result was not; -inf and negative values come from no call.
    if (h.stats.sumLenMaxSq < 0.0 || h.stats.sumSq < 0.0) {
      return refuse(
          "buffer record %llu: its DQ-SGD statistics sumLenMaxSq=%g, sumSq=%g are out of range "
          "(sums of squares: 0 or more, or NaN or +inf after a non-finite result)",
          (unsigned long long)index, h.stats.sumLenMaxSq, h.stats.sumSq);
    }
  }
  return gradcompSuccess;
}

gradcompResult_t parseAuto(Reader& r, uint64_t index, ParsedAuto* out) {
  for (int k = 0; k < 2; ++k) {
    uint32_t present, zero;
    uint64_t small, large;
    AutoFigures& f = out->f[k];
    if (!r.get(&present) || !r.get(&zero) || !r.get(&small) || !r.get(&large) ||
        !r.get(&f.ncclUs[0]) || !r.get(&f.ncclUs[1]) || !r.get(&f.compUs[0]) ||
        !r.get(&f.compUs[1])) {
      return refuse("auto record %llu is truncated", (unsigned long long)index);
    }
    if (present > 1 || zero != 0) {
      return refuse("auto record %llu has present=%u, padding %u (expected 0 or 1, 0)",
                    (unsigned long long)index, present, zero);
    }
    f.smallCount = (size_t)small;
    f.largeCount = (size_t)large;
    out->have[k] = present == 1;
    if (out->have[k] && autoCheckFigures(f) != gradcompSuccess) {
      const std::string why = gradcompGetLastError();
      return refuse("auto record %llu: %s", (unsigned long long)index, why.c_str());
    }
  }
  return gradcompSuccess;
}

// The saved inter-node group against this comm's: the reduce-scatter slots
// of the blob name these ranks' blocks.
gradcompResult_t parseGroup(const gradcompComm& c, Reader& r, uint64_t index) {
  uint32_t k = 0, zero = 0;
  if (!r.get(&k) || !r.get(&zero)) {
    return refuse("inter-node group record %llu is truncated", (unsigned long long)index);
  }
  if (zero != 0) {
    return refuse("inter-node group record %llu has padding %u (expected 0)",
                  (unsigned long long)index, zero);
  }
  if (!c.topo.hier() || k != (uint32_t)c.topo.nodes) {
    return refuse(
        "saved with an inter-node group of %u ranks; this comm's has %d (%s): the "
        "reduce-scatter residual slices would land on other blocks",
        k, c.topo.hier() ? c.topo.nodes : 0, c.topo.hier() ? "hierarchical" : "flat");
  }
  std::string saved, mine;
  bool same = true;
  for (uint32_t n = 0; n < k; ++n) {
    int32_t rank = 0;
    if (!r.get(&rank)) {
      return refuse("inter-node group record %llu is truncated", (unsigned long long)index);
    }
    const int32_t here = c.topo.rankAt((int)n, c.topo.localRank);
    same = same && rank == here;
    saved += (n ? "," : "") + std::to_string(rank);
    mine += (n ? "," : "") + std::to_string(here);
  }
  if (k % 2 != 0) {
    int32_t pad = 0;
    if (!r.get(&pad)) {
      return refuse("inter-node group record %llu is truncated", (unsigned long long)index);
    }
    if (pad != 0) {
      return refuse("inter-node group record %llu has padding %d (expected 0)",
                    (unsigned long long)index, pad);
    }
  }
  if (!same) {
    return refuse(
        "saved where this rank's inter-node group (local rank %d on every node) was ranks "
        "%s; on this comm it is ranks %s (the nodes hold other ranks): the reduce-scatter "
        "residual slices would land on other blocks",
        c.topo.localRank, saved.c_str(), mine.c_str());
  }
  return gradcompSuccess;
}

gradcompResult_t parseScale(Reader& r, uint64_t index, ParsedScale* out) {
  uint32_t zero;
  if (!r.get(&out->scale) || !r.get(&zero)) {
    return refuse("scale record %llu is truncated", (unsigned long long)index);
  }
  if (zero != 0) {
    return refuse("scale record %llu has padding %u (expected 0)", (unsigned long long)index, zero);
  }
  if (!gradScaleInRange(out->scale)) {
    return refuse(
        "scale record %llu holds scale=%g, outside 2^-60..2^60 (what "
        "gradcompCommSetGradScale takes)",
        (unsigned long long)index, (double)out->scale);
  }
  return gradcompSuccess;
}

// Checks the whole blob; fills the records and the step.
gradcompResult_t parse(const gradcompComm& c, const char* blob, size_t bytes,
                       std::vector<Parsed>* recs, ParsedAuto* autoRec, ParsedScale* scaleRec,
                       uint64_t* step) {
  if (bytes < kHeaderBytes) {
    return refuse("%zu bytes are fewer than the %zu of a state header", bytes, kHeaderBytes);
  }
  Reader h(blob, kHeaderBytes);
  uint32_t magic = 0, version = 0, headerBytes = 0, crc = 0;
  uint64_t total = 0, numRecords = 0;
  int32_t rank = 0, nranks = 0;
  h.get(&magic), h.get(&version), h.get(&headerBytes), h.get(&crc), h.get(&total), h.get(step);
  h.get(&rank), h.get(&nranks), h.get(&numRecords);
  if (magic != kMagic) return refuse("not a gradcomp state (magic 0x%08x)", magic);
  if (version != kVersion || headerBytes != kHeaderBytes) {
    return refuse(
        "state version %u with a %u-byte header; this gradcomp reads version %u (%zu "
        "bytes)",
        version, headerBytes, kVersion, kHeaderBytes);
  }
  if (total != bytes) {
    return refuse(
        "the state says it is %llu bytes, the buffer is %zu (truncated or with "
        "trailing bytes)",
        (unsigned long long)total, bytes);
  }
  const uint32_t actual = blobCrc(blob, bytes);
  if (actual != crc) {
    return refuse("checksum mismatch (CRC32C 0x%08x, stored 0x%08x): the bytes are corrupt", actual,
                  crc);
  }
  if (rank != c.rank || nranks != c.nranks) {
    return refuse("saved by rank %d of %d; this comm is rank %d of %d", rank, nranks, c.rank,
                  c.nranks);
  }
  // 2^63 compressed calls take some 290,000 years at one a microsecond: a
  // step past it comes from no run, and a step at 2^64 - 1 would wrap to 0 at
  // the next call (the RNG keys of step 0 again). The buffers' call counts
  // are bounded alike (parseBuffer).
  if (*step > kMaxStep) {
    return refuse("its step=%llu is out of range 0..%llu (2^63 - 1)", (unsigned long long)*step,
                  (unsigned long long)kMaxStep);
  }
  int32_t saved[kShapeFields], mine[kShapeFields];
  for (int i = 0; i < kShapeFields; ++i) h.get(&saved[i]);
  shapeOf(c, mine);
  bool newWindows = false;
  for (int i = 0; i < kShapeFields; ++i) {
    if (saved[i] == mine[i]) continue;
    if (i == kShapeBudget) {
      newWindows = saved[i] != 0;  // 0: not recorded (an older build)
      continue;
    }
    if (i == kShapeNode || i == kShapeLocalRank) {
      if (saved[i] == 0) continue;  // not recorded (an older build)
      if (saved[i] < 0) {
        return refuse("its %s field is %d: out of range (0: not recorded, else the position + 1)",
                      kShapeNames[i], saved[i]);
      }
      if (mine[i] == 0) {
        return refuse(
            "saved as node %d, local rank %d of a hierarchy; this comm is flat: the residual "
            "slices would land on other elements",
            saved[kShapeNode] - 1, saved[kShapeLocalRank] - 1);
      }
      return refuse(
          "saved as node %d, local rank %d of the hierarchy; this comm's rank is node %d, "
          "local rank %d (its ranks share hosts otherwise): the residual slices would land on "
          "other elements",
          saved[kShapeNode] - 1, saved[kShapeLocalRank] - 1, mine[kShapeNode] - 1,
          mine[kShapeLocalRank] - 1);
    }
    return refuse("saved with %s=%s; this comm has %s=%s", kShapeNames[i],
                  settingValueName(kShapeNames[i], saved[i]).c_str(), kShapeNames[i],
                  settingValueName(kShapeNames[i], mine[i]).c_str());
  }
  // Each record is at least its prefix: bounds the count before reserving.
  if (numRecords > (bytes - kHeaderBytes) / kRecordPrefix) {
    return refuse("%llu records cannot fit in %zu bytes", (unsigned long long)numRecords, bytes);
  }
  recs->clear();
  Reader r(blob + kHeaderBytes, bytes - kHeaderBytes);
  std::map<StateKey, uint64_t> seen;
  bool groupSeen = false;
  for (uint64_t i = 0; i < numRecords; ++i) {
    uint32_t tag, zero;
    uint64_t recBytes;
    if (!r.get(&tag) || !r.get(&zero) || !r.get(&recBytes)) {
      return refuse("record %llu is truncated", (unsigned long long)i);
    }
    if (zero != 0) {
      return refuse("record %llu has %u in the word after its tag, which is always 0",
                    (unsigned long long)i, zero);
    }
    if (tag != kTagBuffer && tag != kTagAuto && tag != kTagScale && tag != kTagGroup) {
      return refuse(
          "record %llu has tag %u, which this gradcomp does not know (it reads tags %u, "
          "buffer state, %u, GRADCOMP_AUTO's figures, %u, the gradients' scale, and %u, the "
          "inter-node group)",
          (unsigned long long)i, tag, kTagBuffer, kTagAuto, kTagScale, kTagGroup);
    }
    if (recBytes < kRecordPrefix || recBytes - kRecordPrefix > r.left()) {
      return refuse("record %llu says it is %llu bytes; %zu are left", (unsigned long long)i,
                    (unsigned long long)recBytes, r.left() + kRecordPrefix);
    }
    Reader body(r.take(recBytes - kRecordPrefix), recBytes - kRecordPrefix);
    // A kind of record a blob holds at most once, read whole.
    auto once = [&](bool* seen, const char* what, auto&& read) -> gradcompResult_t {
      if (*seen) return refuse("record %llu is a second %s record", (unsigned long long)i, what);
      *seen = true;
      GC_CHECK(read());
      if (body.left() != 0) {
        return refuse("record %llu has %zu bytes past its end", (unsigned long long)i, body.left());
      }
      return gradcompSuccess;
    };
    if (tag == kTagAuto) {
      GC_CHECK(once(&autoRec->record, "auto", [&] { return parseAuto(body, i, autoRec); }));
      continue;
    }
    if (tag == kTagScale) {
      GC_CHECK(once(&scaleRec->record, "scale", [&] { return parseScale(body, i, scaleRec); }));
      continue;
    }
    if (tag == kTagGroup) {
      GC_CHECK(once(&groupSeen, "inter-node group", [&] { return parseGroup(c, body, i); }));
      continue;
    }
    recs->emplace_back();
    GC_CHECK(parseBuffer(c, body, i, &recs->back()));
    if (body.left() != 0) {
      return refuse("record %llu has %zu bytes past its end", (unsigned long long)i, body.left());
    }
    if (!seen.emplace(recs->back().key, i).second) {
      return refuse("records %llu and %llu are for the same buffer",
                    (unsigned long long)seen[recs->back().key], (unsigned long long)i);
    }
  }
  if (r.left() != 0) return refuse("%zu bytes follow the last record", r.left());
  if (newWindows) {
    float was;
    memcpy(&was, &saved[kShapeBudget], sizeof was);
    GC_INFO(
        "state saved under GRADCOMP_BITS_BUDGET=%g loads under %g: every DQ-SGD budget "
        "window starts afresh",
        (double)was, (double)c.cfg.bitsBudget);
    for (Parsed& p : *recs) p.history.budgetUsed = p.history.budgetPos = 0;
  } else if (c.cfg.bitsMode == gradcompBitsBudget) {
    // What the budget itself keeps: every later call of the window still
    // has bitsMin (BudgetPolicy::decide), so the window cannot overspend.
    // A blob from before the budget was recorded (0) may have been saved
    // under another budget: its window starts afresh instead, as that of a
    // blob that says so.
    const bool budgetRecorded = saved[kShapeBudget] != 0;
    for (size_t i = 0; i < recs->size(); ++i) {
      BitsHistoryRecord& h = (*recs)[i].history;
      if (!(*recs)[i].hasHistory) continue;
      if (!budgetRecorded && !budgetWindowFits(h, c.cfg)) {
        GC_INFO(
            "buffer record %zu: its DQ-SGD budget window (%d bits in %d calls) does not fit "
            "GRADCOMP_BITS_BUDGET=%g; the state does not record its own budget (an older "
            "build): the window starts afresh",
            i, h.budgetUsed, h.budgetPos, (double)c.cfg.bitsBudget);
        h.budgetUsed = h.budgetPos = 0;
        continue;
      }
      if (!budgetWindowFits(h, c.cfg)) {
        return refuse(
            "buffer record %zu: its DQ-SGD budget window has spent %d bits in %d calls, leaving "
            "less than bitsMin=%d for each of the window's %d others under "
            "GRADCOMP_BITS_BUDGET=%g",
            i, h.budgetUsed, h.budgetPos, c.cfg.bitsMin, c.cfg.budgetWindow - h.budgetPos,
            (double)c.cfg.bitsBudget);
      }
    }
  }
  return gradcompSuccess;
}

bool validComm(gradcompComm_t c) {
  return c != nullptr && c->backend && c->transport;
}

// The schedule of the loaded buffers where it sizes messages and is alike on
// every rank: buffers the caller keys (gradcompAllReduceKeyed; the torch
// hooks' buckets), which every rank holds by the same key, each with its
// count and type, DGC's warm-up stage (its calls, up to warmupSteps) and
// DQ-SGD's bits, budget and statistics (reduced over the ranks). Not
// residuals (each rank's own), nor buffers keyed by address: a process's
// allocator may move a buffer to the address of an old state on one rank and
// not on another, so their tables may differ between ranks of one run, and
// their calls size nothing outside DGC's warm-up. Nor the log terms DQ-SGD
// derives on the host (libm may round them apart on different CPUs). Summed,
// so the records' order does not count; 0 for none, as after a reset.
uint32_t stateDigest(const gradcompConfig_t& cfg, const std::vector<Parsed>& recs) {
  uint64_t sum = 0;
  bool any = false;
  for (const Parsed& p : recs) {
    const int kind = std::get<0>(p.key);
    if ((kind & 1) == 0) continue;  // keyed by address
    any = true;
    uint64_t h = mix64(0x7363686564756c65ull);
    auto put = [&h](uint64_t v) { h = mix64(h ^ mix64(v)); };
    auto putDouble = [&put](double d) {
      uint64_t b;
      memcpy(&b, &d, sizeof b);
      put(b);
    };
    put((uint64_t)kind);
    put(std::get<1>(p.key));
    put(p.count);
    put((uint64_t)p.dtype);
    if (cfg.method == gradcompMethodDgc && cfg.warmupSteps > 0) {
      put(p.calls < (uint64_t)cfg.warmupSteps ? p.calls : (uint64_t)cfg.warmupSteps);
    }
    put(p.hasHistory);
    if (p.hasHistory) {
      const BitsHistoryRecord& r = p.history;
      putDouble(r.stats.sumLenMaxSq);
      putDouble(r.stats.sumSq);
      put((uint64_t)(uint32_t)r.haveStats);
      put((uint64_t)(uint32_t)r.lastBits);
      put((uint64_t)(uint32_t)r.budgetUsed);
      put((uint64_t)(uint32_t)r.budgetPos);
      put(r.halfLog2A.size());
    }
    sum += h;
  }
  return any ? (uint32_t)(sum ^ (sum >> 32)) | 1u : 0u;
}

}  // namespace
}  // namespace gc

namespace {

gradcompResult_t stateSize(gradcompComm_t comm, size_t* bytes) {
  GC_ARG(gc::validComm(comm) && bytes, "comm or bytes is NULL");
  comm->backend->useOwnStream();  // the last call's stream may be gone
  std::vector<gc::BitsHistoryRecord> h;
  std::vector<bool> present;
  GC_CHECK(gc::histories(*comm, &h, &present));
  *bytes = gc::totalBytes(*comm, h, present);
  return gradcompSuccess;
}

gradcompResult_t saveState(gradcompComm_t comm, void* buffer, size_t bytes) {
  using namespace gc;
  GC_ARG(validComm(comm), "comm is NULL");
  comm->backend->useOwnStream();  // the last call's stream may be gone
  std::vector<BitsHistoryRecord> hist;
  std::vector<bool> present;
  GC_CHECK(histories(*comm, &hist, &present));
  const size_t need = totalBytes(*comm, hist, present);
  GC_ARG(buffer != nullptr, "buffer is NULL (gradcompCommStateSize gives the size, %zu)", need);
  GC_ARG(bytes >= need, "bytes=%zu is too small: the state needs %zu", bytes, need);
  // The step the RNG keys read: the device counter where there is one, which
  // the replays of captured calls advance past the host's step (the caller
  // has synchronized them, as for the arrays). A load sets both to it, so the
  // resumed comm draws what this one goes on to draw.
  uint64_t step = comm->step;
  if (comm->backend->deviceStep() != nullptr)
    GC_CHECK(comm->backend->toHost(&step, comm->backend->deviceStep(), sizeof(step)));
  char* blob = static_cast<char*>(buffer);
  Writer w(blob);
  w.put<uint32_t>(kMagic), w.put<uint32_t>(kVersion), w.put<uint32_t>(kHeaderBytes);
  w.put<uint32_t>(0);  // CRC, below
  w.put<uint64_t>(need), w.put<uint64_t>(step);
  w.put<int32_t>(comm->rank), w.put<int32_t>(comm->nranks);
  AutoFigures af[2];
  bool have[2];
  const bool autoRec = autoFigures(*comm, af, have);
  const bool scaleRec = comm->gradScale != 1.0f;
  const std::vector<int32_t> group = interNodeGroup(*comm);
  w.put<uint64_t>(comm->states.size() + (autoRec ? 1 : 0) + (scaleRec ? 1 : 0) +
                  (group.empty() ? 0 : 1));
  int32_t shape[kShapeFields];
  shapeOf(*comm, shape);
  for (int i = 0; i < kShapeFields; ++i) w.put<int32_t>(shape[i]);
  size_t i = 0;
  for (auto& kv : comm->states) {
    const BufferState& s = kv.second;
    const BitsHistoryRecord* h = present[i] ? &hist[i] : nullptr;
    ++i;
    w.put<uint32_t>(kTagBuffer), w.put<uint32_t>(0), w.put<uint64_t>(recordBytes(s, h));
    w.put<int32_t>(std::get<0>(kv.first)), w.put<int32_t>((int32_t)s.dtype);
    w.put<uint64_t>(std::get<1>(kv.first)), w.put<uint64_t>(s.count);
    w.put<uint64_t>(s.ownerResidual ? s.ownerResidualCount : 0), w.put<uint64_t>(s.calls);
    w.put<uint32_t>((s.residual ? kHasResidual : 0u) | (s.ownerResidual ? kHasOwner : 0u) |
                    (s.momentum ? kHasMomentum : 0u) | (h ? kHasHistory : 0u) |
                    (s.residualSent ? kResidualSent : 0u) | (s.unsharded ? kUnsharded : 0u));
    w.put<uint32_t>(0);
    if (s.residual) GC_CHECK(comm->backend->toHost(w.take(s.count * 4), s.residual, s.count * 4));
    if (s.ownerResidual) {
      GC_CHECK(comm->backend->toHost(w.take(s.ownerResidualCount * 4), s.ownerResidual,
                                     s.ownerResidualCount * 4));
    }
    if (s.momentum) GC_CHECK(comm->backend->toHost(w.take(s.count * 4), s.momentum, s.count * 4));
    if (h) {
      w.put<double>(h->stats.sumLenMaxSq), w.put<double>(h->stats.sumSq);
      w.put<int32_t>(h->haveStats), w.put<int32_t>(h->lastBits);
      w.put<int32_t>(h->budgetUsed), w.put<int32_t>(h->budgetPos);
      w.put<uint32_t>((uint32_t)h->halfLog2A.size()), w.put<uint32_t>(0);
      for (double v : h->halfLog2A) w.put<double>(v);
    }
  }
  if (autoRec) {
    w.put<uint32_t>(kTagAuto), w.put<uint32_t>(0), w.put<uint64_t>(kAutoRecordBytes);
    for (int k = 0; k < 2; ++k) {
      const AutoFigures f = have[k] ? af[k] : AutoFigures();
      w.put<uint32_t>(have[k] ? 1u : 0u), w.put<uint32_t>(0);
      w.put<uint64_t>(f.smallCount), w.put<uint64_t>(f.largeCount);
      w.put<float>(f.ncclUs[0]), w.put<float>(f.ncclUs[1]);
      w.put<float>(f.compUs[0]), w.put<float>(f.compUs[1]);
    }
  }
  if (scaleRec) {
    w.put<uint32_t>(kTagScale), w.put<uint32_t>(0), w.put<uint64_t>(kScaleRecordBytes);
    w.put<float>(comm->gradScale), w.put<uint32_t>(0);
  }
  if (!group.empty()) {
    w.put<uint32_t>(kTagGroup), w.put<uint32_t>(0);
    w.put<uint64_t>(groupRecordBytes(group.size()));
    w.put<uint32_t>((uint32_t)group.size()), w.put<uint32_t>(0);
    for (int32_t g : group) w.put<int32_t>(g);
    if (group.size() % 2 != 0) w.put<int32_t>(0);
  }
  const uint32_t crc = blobCrc(blob, need);
  memcpy(blob + kCrcOffset, &crc, 4);
  return gradcompSuccess;
}

gradcompResult_t setGradScale(gradcompComm_t comm, float scale, cudaStream_t stream) {
  using namespace gc;
  GC_ARG(validComm(comm), "comm is NULL");
  GC_ARG(gradScaleInRange(scale),
         "scale=%g is outside 2^-60..2^60 (8.7e-19..1.2e18): the factor the gradients carry, "
         "finite and positive",
         (double)scale);
  if (scale == comm->gradScale) return gradcompSuccess;
  comm->backend->setStream(stream);
  if (comm->backend->capturing()) {
    return setError(gradcompInvalidUsage,
                    "gradcompCommSetGradScale rescales the state between calls, on the host's "
                    "order: call it outside CUDA graph capture (the stream is being captured)");
  }
  // A captured DGC call clips at the threshold of the scale it was captured
  // under, which its replays keep: they would clip the new scale's gradients
  // at the old bound.
  if (comm->backend->usedByGraphs() && comm->cfg.method == gradcompMethodDgc &&
      comm->cfg.clipNorm > 0.0f) {
    return setError(gradcompInvalidUsage,
                    "gradcompCommSetGradScale(scale=%g): this comm's DGC calls were captured into "
                    "a CUDA graph, whose replays clip at clipNorm=%g times the old scale %g; "
                    "with clipNorm > 0 the scale cannot change under captured calls (save the "
                    "state, load it into a new comm, set the scale there and capture again; or "
                    "set clipNorm=0)",
                    (double)scale, (double)comm->cfg.clipNorm, (double)comm->gradScale);
  }
  // new / old is within 2^-120..2^120: a normal float, as is its inverse.
  const float factor = (float)((double)scale / (double)comm->gradScale);
  const gradcompResult_t res = scaleStates(comm, factor);
  // The next call, on whatever stream, waits for the rescale as for a call.
  comm->backend->markCallEnd();
  GC_CHECK(res);
  setScaleField(comm, scale);
  return gradcompSuccess;
}

gradcompResult_t loadState(gradcompComm_t comm, const void* buffer, size_t bytes) {
  using namespace gc;
  GC_ARG(validComm(comm), "comm is NULL");
  GC_ARG(buffer != nullptr, "buffer is NULL (bytes=%zu)", bytes);
  comm->backend->useOwnStream();  // the last call's stream may be gone
  std::vector<Parsed> recs;
  ParsedAuto autoRec;
  ParsedScale scaleRec;
  uint64_t step = 0;
  GC_CHECK(
      parse(*comm, static_cast<const char*>(buffer), bytes, &recs, &autoRec, &scaleRec, &step));
  // Build the new states aside; the comm changes only once all of them exist.
  std::map<StateKey, BufferState> fresh;
  auto releaseFresh = [&] {
    for (auto& kv : fresh) comm->releaseState(kv.second);
  };
  for (const Parsed& p : recs) {
    BufferState s;
    gradcompResult_t res = comm->allocState(std::get<0>(p.key), p.count, p.dtype, &s);
    if (res == gradcompSuccess && p.residual)
      res = comm->backend->fromHost(s.residual, p.residual, p.count * 4);
    if (res == gradcompSuccess && p.owner) {
      res = comm->backend->fromHost(s.ownerResidual, p.owner, p.ownerCount * 4);
    }
    if (res == gradcompSuccess && p.momentum)
      res = comm->backend->fromHost(s.momentum, p.momentum, p.count * 4);
    if (res == gradcompSuccess && p.hasHistory) res = importBitsHistory(*comm, s, p.history);
    s.calls = p.calls;
    s.residualSent = p.residualSent;
    s.unsharded = p.unsharded;
    if (res != gradcompSuccess) {
      comm->releaseState(s);
      releaseFresh();
      return res;
    }
    fresh.emplace(p.key, s);
  }
  gradcompResult_t res = comm->backend->sync();
  if (res != gradcompSuccess) {
    releaseFresh();
    return res;
  }
  for (auto& kv : comm->states) comm->dropState(kv.second);
  comm->states.swap(fresh);
  comm->step = step;
  comm->stateCalls = 0;
  comm->firstStateReuse = 0;
  setScaleField(comm, scaleRec.scale);
  // Ranks restored from blobs of different steps, or of different runs at the
  // same step, must not go on: the next call checks that they agree.
  comm->verifyNext = true;
  comm->stateDigest = stateDigest(comm->cfg, recs);
  if (comm->cfg.autoTune) {
    // Every collective decides afresh at its next call, from the loaded
    // figures or by timing, whether or not this comm had decided: a rank
    // whose blob has no figures must meet its peers' agreement there, not
    // keep a decision they drop (tune() agrees on who holds figures).
    for (int k = 0; k < 2; ++k) {
      if (autoRec.have[k]) {
        autoRestoreFigures(comm, kAutoCalls[k], autoRec.f[k]);
      } else {
        autoForgetDecision(comm, kAutoCalls[k]);
      }
    }
  }
  return comm->backend->setStep(step);
}

// Frees every state of one identity: the unkeyed calls' receive buffer
// (kinds kStateAllReduce and kStateReduceScatter) or the keyed calls' key
// (those kinds + 1), whatever the count and datatype. The ranks must forget
// alike, as they reset alike: the identity goes into the schedule digest
// every call's agreement compares (the key itself; for a buffer only that
// one was forgotten, its address being each rank's own, as stateDigest
// leaves address-keyed states out), and the next call checks that agreement
// (verifyNext), so a rank that forgot another key, or none, fails every rank
// there instead of running from a residual its peers dropped.
gradcompResult_t forgetStates(gradcompComm* comm, bool keyed, uint64_t id) {
  // The last eager call may still read the arrays (a reset waits the same way).
  comm->backend->useOwnStream();  // the last call's stream may be gone
  GC_CHECK(comm->backend->sync());
  for (auto it = comm->states.begin(); it != comm->states.end();) {
    const int kind = std::get<0>(it->first);
    if (((kind & 1) != 0) == keyed && std::get<1>(it->first) == id) {
      comm->dropState(it->second);
      it = comm->states.erase(it);
    } else {
      ++it;
    }
  }
  // A buffer forgotten comes again as new by design: the late-buffer warning
  // (findState, unkeyed buffers only) counts from here, as from a reset. A
  // key forgotten makes no unkeyed buffer new: its count goes on.
  if (!keyed) {
    comm->stateCalls = 0;
    comm->firstStateReuse = 0;
  }
  comm->verifyNext = true;
  // Added, as stateDigest's records are: ranks that forget the same keys
  // between two calls agree in whatever order they forgot them.
  uint64_t h = gc::mix64(keyed ? 0x6b6579ull : 0x627566ull);
  if (keyed) h = gc::mix64(h ^ gc::mix64(id));
  comm->stateDigest += (uint32_t)(h ^ (h >> 32));
  return gradcompSuccess;
}

}  // namespace

extern "C" {

GC_EXPORT gradcompResult_t gradcompCommStateSize(gradcompComm_t comm, size_t* bytes) {
  const gc::CommPin pin(comm);  // before anything reads it
  GC_CHECK(pin.check());
  gc::OnCommDevice onDevice(comm);
  gc::CommCall inFlight(comm);  // gradcompCommAbort waits for it
  GC_CHECK(inFlight.check());
  return gc::guarded([&] { return stateSize(comm, bytes); });
}

GC_EXPORT gradcompResult_t gradcompCommSaveState(gradcompComm_t comm, void* buffer, size_t bytes) {
  const gc::CommPin pin(comm);
  GC_CHECK(pin.check());
  gc::OnCommDevice onDevice(comm);
  gc::CommCall inFlight(comm);  // gradcompCommAbort waits for it
  GC_CHECK(inFlight.check());
  return gc::guarded([&] { return saveState(comm, buffer, bytes); });
}

GC_EXPORT gradcompResult_t gradcompCommLoadState(gradcompComm_t comm, const void* buffer,
                                                 size_t bytes) {
  const gc::CommPin pin(comm);
  GC_CHECK(pin.check());
  gc::OnCommDevice onDevice(comm);
  gc::CommCall inFlight(comm);  // gradcompCommAbort waits for it
  GC_CHECK(inFlight.check());
  return gc::guarded([&] { return loadState(comm, buffer, bytes); });
}

GC_EXPORT gradcompResult_t gradcompCommForgetBuffer(gradcompComm_t comm, const void* recvbuff) {
  const gc::CommPin pin(comm);
  GC_CHECK(pin.check());
  GC_ARG(gc::validComm(comm), "comm is NULL");
  GC_ARG(recvbuff != nullptr,
         "recvbuff is NULL: pass the receive buffer the buffer's unkeyed calls passed (keyed "
         "calls: gradcompCommForgetKey)");
  gc::OnCommDevice onDevice(comm);
  gc::CommCall inFlight(comm);  // gradcompCommAbort waits for it
  GC_CHECK(inFlight.check());
  return gc::guarded([&] { return forgetStates(comm, false, (uint64_t)(uintptr_t)recvbuff); });
}

GC_EXPORT gradcompResult_t gradcompCommForgetKey(gradcompComm_t comm, uint64_t key) {
  const gc::CommPin pin(comm);
  GC_CHECK(pin.check());
  GC_ARG(gc::validComm(comm), "comm is NULL");
  gc::OnCommDevice onDevice(comm);
  gc::CommCall inFlight(comm);  // gradcompCommAbort waits for it
  GC_CHECK(inFlight.check());
  return gc::guarded([&] { return forgetStates(comm, true, key); });
}

GC_EXPORT gradcompResult_t gradcompCommSetGradScale(gradcompComm_t comm, float scale,
                                                    cudaStream_t stream) {
  const gc::CommPin pin(comm);
  GC_CHECK(pin.check());
  gc::OnCommDevice onDevice(comm);
  gc::CommCall inFlight(comm);  // gradcompCommAbort waits for it
  GC_CHECK(inFlight.check());
  return gc::guarded([&] { return setGradScale(comm, scale, stream); });
}

GC_EXPORT gradcompResult_t gradcompCommGetGradScale(gradcompComm_t comm, float* scale) {
  const gc::CommPin pin(comm);
  GC_CHECK(pin.check());
  GC_ARG(gc::validComm(comm) && scale != nullptr, "comm or scale is NULL");
  *scale = comm->gradScale;
  return gradcompSuccess;
}

}  // extern "C"
