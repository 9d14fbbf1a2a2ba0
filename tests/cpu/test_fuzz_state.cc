// Structured, deterministic fuzzing of gradcompCommLoadState: blobs saved by
// real comms (QSGD fixed, ring with owner residual, DQ-SGD budget, DGC with
// momentum, rand-k, the hierarchy's reduce-scatter, a grad scale, fp16 and
// bf16 buffers), then every truncation, every byte set to 0x00, 0xff, 0x7f
// and 0x80 and every bit flipped (the checksum re-sealed, so the loader reads
// past it), records spliced from a blob of a later step, duplicated, dropped
// or reordered, and count fields grown. Each load either succeeds, with
// finite arrays, a state that saves and loads back to itself and (sampled) a
// next call that runs (on the cases without momentum or a second
// quantization: output plus the new residuals equal the inputs plus the
// loaded residuals), or is refused with a sentence that leaves the comm's
// saved state byte for byte as it was. The ASan/UBSan build runs it too
// (docs/reliability.md, "Fuzzing": GRADCOMP_FUZZ_EXHAUSTIVE=1 mutates every
// byte of the arrays as well, GRADCOMP_FUZZ_CASE=<name> runs one case).
#include <gtest/gtest.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "gradcomp.h"
#include "kernels/common_math.cuh"
#include "tests/common/cpu_world.h"
#include "tests/common/env_knob.h"
#include "tests/common/guarded.h"
#include "tests/common/state_blob.h"
#include "tests/common/test_util.h"

namespace {

using Blob = std::vector<uint8_t>;

constexpr size_t kHeader = 112;
constexpr size_t kKeyedCount = 97, kAddrCount = 40, kRsRecv = 13;
constexpr uint64_t kKey = 5;

struct Case {
  const char* name;
  int ranks;
  gradcompConfig_t cfg;
  ncclDataType_t dtype;  // of the keyed allreduce
  bool reduceScatter;    // a keyed reduce-scatter too
  float scale;           // gradcompCommSetGradScale before the steps (1: none)
  bool conserve;         // out + new residuals == inputs + loaded residuals, per element
};

gradcompConfig_t config(gradcompMethod_t m) {
  gradcompConfig_t c;
  gradcompConfigInit(&c);
  c.method = m;
  c.minElements = 0;
  c.cpuTimeoutSec = 5.0f;
  c.clipNorm = 0.0f;
  return c;
}

std::vector<Case> cases() {
  std::vector<Case> v;
  gradcompConfig_t c = config(gradcompMethodQsgd);
  c.algo = gradcompAlgoAllgather, c.bits = 4, c.ownerResidual = 0;
  v.push_back({"qsgd-allgather", 2, c, ncclFloat32, false, 1.0f, true});
  c = config(gradcompMethodQsgd);
  c.algo = gradcompAlgoRing, c.ownerResidual = 1;
  v.push_back({"qsgd-ring-owner-fp16", 3, c, ncclFloat16, false, 1.0f, false});
  c = config(gradcompMethodQsgd);
  c.bitsMode = gradcompBitsBudget;
  v.push_back({"qsgd-budget-bf16-scaled", 2, c, ncclBfloat16, true, 4.0f, false});
  c = config(gradcompMethodDgc);
  c.momentumCorrection = 1, c.warmupSteps = 4, c.density = 0.1f;
  v.push_back({"dgc-momentum", 2, c, ncclFloat32, false, 1.0f, false});
  c = config(gradcompMethodDgc);
  c.momentumCorrection = 0, c.density = 0.1f;
  v.push_back({"dgc-plain", 2, c, ncclFloat32, false, 1.0f, true});
  c = config(gradcompMethodRandk);
  c.density = 0.1f;
  v.push_back({"randk", 2, c, ncclFloat32, false, 1.0f, true});
  c = config(gradcompMethodQsgd);
  c.localSize = 2;
  v.push_back({"qsgd-hier-rs", 4, c, ncclFloat32, true, 1.0f, false});
  return v;
}

Blob save(gradcompComm_t c) {
  size_t bytes = 0;
  EXPECT_EQ(gradcompCommStateSize(c, &bytes), gradcompSuccess) << gradcompGetLastError();
  Blob b(bytes);
  EXPECT_EQ(gradcompCommSaveState(c, b.data(), bytes), gradcompSuccess) << gradcompGetLastError();
  return b;
}

uint64_t get64(const Blob& b, size_t at) {
  uint64_t v = 0;
  memcpy(&v, b.data() + at, 8);
  return v;
}
void put64(Blob& b, size_t at, uint64_t v) {
  memcpy(b.data() + at, &v, 8);
}
uint32_t get32(const Blob& b, size_t at) {
  uint32_t v = 0;
  memcpy(&v, b.data() + at, 4);
  return v;
}
void put32(Blob& b, size_t at, uint32_t v) {
  memcpy(b.data() + at, &v, 4);
}

// The total-bytes field set to the size, then the checksum re-sealed.
Blob sealed(Blob b) {
  if (b.size() >= 24) put64(b, 16, b.size());
  gctest::reseal(b);
  return b;
}

struct Rec {
  size_t at, bytes;
  uint32_t tag;
};

std::vector<Rec> records(const Blob& b) {
  std::vector<Rec> v;
  size_t at = kHeader;
  for (uint64_t i = 0, n = get64(b, 40); i < n && at + 16 <= b.size(); ++i) {
    const size_t bytes = get64(b, at + 8);
    v.push_back({at, bytes, get32(b, at)});
    at += bytes;
  }
  return v;
}

// The blob with its records replaced by `recs` (each a byte range of some blob).
Blob rebuilt(const Blob& head, const std::vector<Blob>& recs) {
  Blob b(head.begin(), head.begin() + kHeader);
  for (const Blob& r : recs) b.insert(b.end(), r.begin(), r.end());
  put64(b, 40, recs.size());
  return sealed(b);
}

Blob recordBytes(const Blob& b, const Rec& r) {
  return Blob(b.begin() + r.at, b.begin() + r.at + r.bytes);
}

// Inputs of one step: per rank, the keyed allreduce's floats (converted to the
// case's type), the address-keyed allreduce's and the reduce-scatter's.
struct World {
  Case cs;
  gctest::CpuWorld w;
  std::vector<std::vector<uint16_t>> half;
  std::vector<std::vector<float>> keyed, addr, rsIn, rsOut;
  World(const Case& c)
      : cs(c),
        w(c.ranks, c.cfg),
        half(c.ranks),
        keyed(c.ranks),
        addr(c.ranks),
        rsIn(c.ranks),
        rsOut(c.ranks, std::vector<float>(kRsRecv)) {
    for (int r = 0; r < c.ranks; ++r) addr[r].resize(kAddrCount);
  }

  // One step: every call on every rank; results per rank and call.
  std::vector<gradcompResult_t> step(int t, bool withAddr = true) {
    const int n = cs.ranks;
    for (int r = 0; r < n; ++r) {
      keyed[r] = gctest::normal(kKeyedCount, 100 * t + r);
      if (cs.dtype != ncclFloat32) {
        half[r].resize(kKeyedCount);
        for (size_t i = 0; i < kKeyedCount; ++i) {
          half[r][i] =
              cs.dtype == ncclFloat16 ? gc::floatToHalf(keyed[r][i]) : gc::floatToBf16(keyed[r][i]);
        }
      }
      const std::vector<float> a = gctest::normal(kAddrCount, 100 * t + r + 50);
      std::copy(a.begin(), a.end(), addr[r].begin());
      rsIn[r] = gctest::normal(kRsRecv * n, 100 * t + r + 70);
    }
    std::vector<std::string> err(n);
    auto res = w.run([&](int r) {
      void* kb = cs.dtype == ncclFloat32 ? (void*)keyed[r].data() : (void*)half[r].data();
      gradcompResult_t rc =
          gradcompAllReduceKeyed(kb, kb, kKeyedCount, cs.dtype, ncclSum, w.comm(r), nullptr, kKey);
      if (rc == gradcompSuccess && withAddr) {
        rc = gradcompAllReduce(addr[r].data(), addr[r].data(), kAddrCount, ncclFloat32, ncclSum,
                               w.comm(r), nullptr);
      }
      if (rc == gradcompSuccess && cs.reduceScatter) {
        rc = gradcompReduceScatterKeyed(rsIn[r].data(), rsOut[r].data(), kRsRecv, ncclFloat32,
                                        ncclSum, w.comm(r), nullptr, kKey + 1);
      }
      if (rc != gradcompSuccess) err[r] = gradcompGetLastError();
      return rc;
    });
    for (int r = 0; r < n; ++r) {
      if (res[r] != gradcompSuccess) {
        // A refused call names why: never a bare code.
        EXPECT_FALSE(err[r].empty()) << cs.name << " rank " << r;
        EXPECT_TRUE(res[r] == gradcompInvalidArgument || res[r] == gradcompInvalidUsage ||
                    res[r] == gradcompSystemError)
            << cs.name << " rank " << r << ": " << res[r] << " " << err[r];
      }
    }
    return res;
  }
};

struct Stats {
  size_t loads = 0, accepted = 0, followed = 0;
};

// Loads `b` into rank 0 of a world whose ranks hold `good`; checks the outcome.
void check(World& W, const std::vector<Blob>& good, const Blob& b, const std::string& what,
           bool followUp, Stats* st) {
  gradcompComm_t c0 = W.w.comm(0);
  ++st->loads;
  // Placed to end at a no-access page: a read past the blob faults.
  gctest::GuardedBuffer in(b.data(), b.size());
  const gradcompResult_t res = gradcompCommLoadState(c0, in.data(), b.size());
  if (res != gradcompSuccess) {
    ASSERT_EQ(res, gradcompInvalidArgument)
        << W.cs.name << " " << what << ": " << gradcompGetLastError();
    ASSERT_NE(strstr(gradcompGetLastError(), "state blob refused"), nullptr)
        << W.cs.name << " " << what << ": " << gradcompGetLastError();
    ASSERT_EQ(save(c0), good[0]) << W.cs.name << " " << what << " was refused but changed the comm";
    return;
  }
  ++st->accepted;
  // What the comm now holds saves and loads back to itself, and its arrays
  // are finite (a non-finite residual would spoil its buffer at every call).
  const Blob now = save(c0);
  for (const Rec& r : records(now)) {
    if (r.tag != 1) continue;
    const uint32_t flags = get32(now, r.at + 56);
    const size_t n = get64(now, r.at + 32), owner = get64(now, r.at + 40);
    const size_t floats = ((flags & 1u) ? n : 0) + owner + ((flags & 4u) ? n : 0);
    for (size_t i = 0; i < floats; ++i) {
      float x;
      memcpy(&x, now.data() + r.at + 64 + 4 * i, 4);
      ASSERT_TRUE(isfinite(x)) << W.cs.name << " " << what << ": loaded array value " << i << " is "
                               << x;
    }
  }
  ASSERT_EQ(gradcompCommLoadState(c0, now.data(), now.size()), gradcompSuccess)
      << W.cs.name << " " << what << ": " << gradcompGetLastError();
  ASSERT_EQ(save(c0), now) << W.cs.name << " " << what;
  if (followUp) {
    ++st->followed;
    // Every rank loads (a load is collective): rank 0 the mutated blob.
    for (int r = 1; r < W.cs.ranks; ++r) {
      ASSERT_EQ(gradcompCommLoadState(W.w.comm(r), good[r].data(), good[r].size()), gradcompSuccess)
          << gradcompGetLastError();
    }
    std::vector<std::vector<float>> before(W.cs.ranks);
    for (int r = 0; r < W.cs.ranks; ++r) {
      before[r] = gctest::savedResidual(r == 0 ? now : good[r], kKeyedCount);
    }
    const std::vector<gradcompResult_t> rc = W.step(77);
    bool allOk = true;
    for (auto x : rc) allOk = allOk && x == gradcompSuccess;
    if (allOk && W.cs.conserve && W.cs.dtype == ncclFloat32) {
      bool haveAll = true;
      std::vector<std::vector<float>> after(W.cs.ranks);
      for (int r = 0; r < W.cs.ranks; ++r) {
        after[r] = gctest::savedResidual(gctest::savedState(W.w.comm(r)), kKeyedCount);
        haveAll = haveAll && after[r].size() == kKeyedCount && before[r].size() == kKeyedCount;
      }
      ASSERT_TRUE(haveAll) << W.cs.name << " " << what;
      for (size_t i = 0; i < kKeyedCount; ++i) {
        double lhs = 0, rhs = W.keyed[0][i], mag = fabs(W.keyed[0][i]);
        for (int r = 0; r < W.cs.ranks; ++r) {
          const double x = gctest::normal(kKeyedCount, 100 * 77 + r)[i];
          lhs += x + before[r][i];
          rhs += after[r][i];
          mag += fabs(x) + fabs(before[r][i]) + fabs(after[r][i]);
        }
        if (!(mag < 1e30)) continue;  // a mutated residual beyond what a sum keeps
        ASSERT_LE(fabs(lhs - rhs), 1e-5 * mag + 1e-6)
            << W.cs.name << " " << what << ": element " << i << " inputs+residuals " << lhs
            << ", output+residuals " << rhs;
      }
    }
    for (int r = 0; r < W.cs.ranks; ++r) {
      ASSERT_EQ(gradcompCommLoadState(W.w.comm(r), good[r].data(), good[r].size()), gradcompSuccess)
          << gradcompGetLastError();
    }
  } else {
    ASSERT_EQ(gradcompCommLoadState(c0, good[0].data(), good[0].size()), gradcompSuccess)
        << gradcompGetLastError();
  }
}

TEST(FuzzState, MutatedSavedBlobsLoadWhollyOrNotAtAll) {
  std::vector<std::string> names;
  for (const Case& cs : cases()) names.push_back(cs.name);
  const int only = gctest::envWord("GRADCOMP_FUZZ_CASE", names);
  const bool exhaustive = gctest::envKnob("GRADCOMP_FUZZ_EXHAUSTIVE", 0, 1, 0) == 1;
  for (const Case& cs : cases()) {
    if (only >= 0 && names[only] != cs.name) continue;
    World W(cs);
    if (cs.scale != 1.0f) {
      for (int r = 0; r < cs.ranks; ++r) {
        ASSERT_EQ(gradcompCommSetGradScale(W.w.comm(r), cs.scale, nullptr), gradcompSuccess);
      }
    }
    for (int t = 0; t < 3; ++t) {
      for (auto x : W.step(t))
        ASSERT_EQ(x, gradcompSuccess) << cs.name << ": " << gradcompGetLastError();
    }
    std::vector<Blob> good(cs.ranks);
    for (int r = 0; r < cs.ranks; ++r) good[r] = save(W.w.comm(r));
    // A blob of a later step (the keyed buffer only moved on), for splices.
    for (auto x : W.step(3, false)) ASSERT_EQ(x, gradcompSuccess) << gradcompGetLastError();
    const Blob donor = save(W.w.comm(0));
    for (int r = 0; r < cs.ranks; ++r) {
      ASSERT_EQ(gradcompCommLoadState(W.w.comm(r), good[r].data(), good[r].size()),
                gradcompSuccess);
    }
    const Blob& g = good[0];
    const std::vector<Rec> recs = records(g), donorRecs = records(donor);
    ASSERT_GE(recs.size(), 2u) << cs.name;
    Stats st;
    // The first 8 accepted loads, then one in 64, are followed by a call.
    size_t sampled = 0;
    auto run = [&](const Blob& b, const std::string& what) {
      const bool follow = sampled < 8 || (st.accepted % 64) == 0;
      const size_t before = st.accepted;
      check(W, good, b, what, follow, &st);
      if (st.accepted != before && follow) ++sampled;
    };
    // Every byte but the interiors of the float arrays and the budget history
    // (data the format cannot tell from other data): there, their first and
    // last 8 bytes and one in 61; every byte with GRADCOMP_FUZZ_EXHAUSTIVE=1.
    std::vector<bool> bulk(g.size(), false);
    if (!exhaustive) {
      auto markBulk = [&](size_t from, size_t len) {
        for (size_t i = from + 8; i + 8 < from + len; ++i) bulk[i] = (i - from) % 61 != 0;
      };
      for (const Rec& r : recs) {
        if (r.tag != 1) continue;
        const uint32_t flags = get32(g, r.at + 56);
        const size_t n = get64(g, r.at + 32), owner = get64(g, r.at + 40);
        const size_t arrays = 4 * (((flags & 1u) ? n : 0) + owner + ((flags & 4u) ? n : 0));
        markBulk(r.at + 64, arrays);
        if (flags & 8u)
          markBulk(r.at + 64 + arrays + 40, 8 * (size_t)get32(g, r.at + 64 + arrays + 32));
      }
    }
    for (size_t len = 0; len < g.size(); ++len) {
      if (bulk[len]) continue;
      Blob b(g.begin(), g.begin() + len);
      run(b, "truncated to " + std::to_string(len));
      if (HasFatalFailure()) return;
      if (len >= 24) run(sealed(b), "truncated and sealed to " + std::to_string(len));
      if (HasFatalFailure()) return;
    }
    for (size_t i = 0; i < g.size(); ++i) {
      if (bulk[i] || (i >= 12 && i < 16)) continue;  // 12..15: the checksum itself
      const uint8_t values[] = {0x00, 0xff, 0x7f, 0x80};
      for (uint8_t v : values) {
        if (g[i] == v) continue;
        Blob b = g;
        b[i] = v;
        run(sealed(b), "byte " + std::to_string(i) + " = " + std::to_string(v));
        if (HasFatalFailure()) return;
      }
      for (int k = 0; k < 8; ++k) {
        Blob b = g;
        b[i] ^= (uint8_t)(1u << k);
        // The total (16..23) keeps its flipped value: sealed() would undo it.
        if (i >= 16 && i < 24) {
          gctest::reseal(b);
        } else {
          b = sealed(b);
        }
        run(b, "byte " + std::to_string(i) + " bit " + std::to_string(k));
        if (HasFatalFailure()) return;
      }
    }
    // Record-level edits.
    std::vector<Blob> parts;
    for (const Rec& r : recs) parts.push_back(recordBytes(g, r));
    for (size_t j = 0; j < recs.size(); ++j) {
      std::vector<Blob> p = parts;
      p.push_back(parts[j]);
      run(rebuilt(g, p), "record " + std::to_string(j) + " duplicated");
      p = parts;
      p.erase(p.begin() + j);
      run(rebuilt(g, p), "record " + std::to_string(j) + " dropped");
      p = parts;
      std::swap(p[j], p[(j + 1) % p.size()]);
      run(rebuilt(g, p), "records " + std::to_string(j) + " and next swapped");
      for (size_t d = 0; d < donorRecs.size(); ++d) {
        p = parts;
        p[j] = recordBytes(donor, donorRecs[d]);
        run(rebuilt(g, p),
            "record " + std::to_string(j) + " from the donor's " + std::to_string(d));
        p = parts;
        p.insert(p.begin() + j, recordBytes(donor, donorRecs[d]));
        run(rebuilt(g, p),
            "donor record " + std::to_string(d) + " inserted at " + std::to_string(j));
      }
      if (HasFatalFailure()) return;
    }
    // Count fields grown (or shrunk): the header's record count, each record's
    // bytes, each buffer record's count and owner count, a history's length.
    const uint64_t grow[] = {1, 2, 3, 8, 16, 1ull << 31, 1ull << 32, 1ull << 62, ~0ull, ~0ull - 15};
    for (uint64_t d : grow) {
      Blob b = g;
      put64(b, 40, get64(g, 40) + d);
      run(sealed(b), "records + " + std::to_string(d));
      b = g;
      put64(b, 40, get64(g, 40) - d);
      run(sealed(b), "records - " + std::to_string(d));
      for (size_t j = 0; j < recs.size(); ++j) {
        const size_t at = recs[j].at;
        const std::string rj = "record " + std::to_string(j);
        b = g;
        put64(b, at + 8, recs[j].bytes + d);
        run(sealed(b), rj + " bytes + " + std::to_string(d));
        b = g;
        put64(b, at + 8, recs[j].bytes - d);
        run(sealed(b), rj + " bytes - " + std::to_string(d));
        // Grown with the bytes to match (zeros appended to the record).
        if (d <= 16) {
          std::vector<Blob> p = parts;
          p[j].resize(p[j].size() + 8 * d, 0);
          put64(p[j], 8, p[j].size());
          run(rebuilt(g, p), rj + " padded by " + std::to_string(8 * d));
        }
        if (recs[j].tag == 1) {
          for (size_t field : {32u, 40u, 48u}) {  // count, owner count, calls
            for (int sign : {1, -1}) {
              b = g;
              put64(b, at + field, get64(g, at + field) + sign * d);
              run(sealed(b), rj + " field " + std::to_string(field) + (sign > 0 ? " + " : " - ") +
                                 std::to_string(d));
            }
          }
          const uint32_t flags = get32(g, at + 56);
          if (flags & 8u) {  // the history's n, after the arrays
            const size_t arrays = 4 * (((flags & 1u) ? get64(g, at + 32) : 0) + get64(g, at + 40) +
                                       ((flags & 4u) ? get64(g, at + 32) : 0));
            const size_t nAt = at + 64 + arrays + 32;
            b = g;
            put32(b, nAt, get32(g, nAt) + (uint32_t)d);
            run(sealed(b), rj + " history n + " + std::to_string(d));
          }
        }
        if (recs[j].tag == 4) {
          b = g;
          put32(b, at + 16, get32(g, at + 16) + (uint32_t)d);
          run(sealed(b), rj + " group k + " + std::to_string(d));
        }
        if (HasFatalFailure()) return;
      }
    }
    // The unchanged blob still loads and the comm still runs.
    ASSERT_EQ(gradcompCommLoadState(W.w.comm(0), g.data(), g.size()), gradcompSuccess);
    std::printf("%s: %zu bytes, %zu records, %zu loads, %zu accepted, %zu followed by a call\n",
                cs.name, g.size(), recs.size(), st.loads, st.accepted, st.followed);
  }
}

}  // namespace
