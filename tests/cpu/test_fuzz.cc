// Seeded fuzz drivers for every parser of external bytes: Elias encodings,
// sparse slots from the wire, state blobs, GRADCOMP_* strings and the TCP
// transport's messages. Inputs are
// mutations of valid ones (bit flips, truncations, overwritten words,
// random bytes), each placed so that it ends at a no-access page. Every
// outcome must be success or gradcompInvalidArgument, and a refused state
// blob must leave the comm as it was. The fixed seeds run in CI (in the
// ASan/UBSan build too); GRADCOMP_FUZZ_ITERATIONS=N runs N cases per driver
// and GRADCOMP_FUZZ_SEED another seed (docs/reliability.md).
#include <errno.h>
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "autotune.h"
#include "backends/sparse_ops.h"
#include "gradcomp.h"
#include "gradcomp/elias.h"
#include "gradcomp/reference.h"
#include "plugin/params.h"
#include "tests/common/cpu_world.h"
#include "tests/common/guarded.h"
#include "tests/common/loopback.h"
#include "tests/common/ref_slot_lists.h"
#include "tests/common/env_knob.h"
#include "tests/common/test_util.h"

namespace {

using gctest::GuardedBuffer;

using gctest::envKnob;

int iterations(int fallback) {
  return (int)envKnob("GRADCOMP_FUZZ_ITERATIONS", 1, INT_MAX, (unsigned long long)fallback);
}

uint64_t seed(uint64_t fallback) {
  return envKnob("GRADCOMP_FUZZ_SEED", 0, UINT64_MAX, fallback);
}

// EXPECT_NONFATAL_FAILURE's statement may not name locals.
int gKnobIterations;
uint64_t gKnobSeed;

TEST(FuzzKnobs, BadValuesFailInsteadOfRunningAnotherCount) {
  for (const char* bad : {"2e5", "abc", "", "0", "-5", "010", "99999999999"}) {
    gctest::ScopedEnv e("GRADCOMP_FUZZ_ITERATIONS", bad);
    gKnobIterations = -1;
    EXPECT_NONFATAL_FAILURE(gKnobIterations = iterations(7), "GRADCOMP_FUZZ_ITERATIONS");
    EXPECT_EQ(gKnobIterations, 7) << bad;
  }
  for (const char* bad : {"0x50", "12abc", "18446744073709551616"}) {
    gctest::ScopedEnv e("GRADCOMP_FUZZ_SEED", bad);
    gKnobSeed = 0;
    EXPECT_NONFATAL_FAILURE(gKnobSeed = seed(9), "GRADCOMP_FUZZ_SEED");
    EXPECT_EQ(gKnobSeed, 9u) << bad;
  }
  gctest::ScopedEnv it("GRADCOMP_FUZZ_ITERATIONS", "200000"), sd("GRADCOMP_FUZZ_SEED", "31337");
  EXPECT_EQ(iterations(7), 200000);
  EXPECT_EQ(seed(9), 31337u);
}

// One random mutation of `b` (never empty afterwards unless truncated to 0).
void mutate(std::vector<char>* b, std::mt19937_64& rng) {
  if (b->empty()) return;
  auto pick = [&](size_t n) { return (size_t)(rng() % n); };
  switch (rng() % 5) {
    case 0:  // a few bit flips
      for (int k = 0, flips = 1 + (int)pick(8); k < flips; ++k) {
        (*b)[pick(b->size())] ^= (char)(1u << pick(8));
      }
      break;
    case 1:  // truncation
      b->resize(pick(b->size()));
      break;
    case 2: {  // a 32-bit word overwritten with an interesting value
      const uint32_t values[] = {0u,          1u,          0x7fffffffu,    0x80000000u,
                                 0xffffffffu, 0xfffffffeu, (uint32_t)rng()};
      if (b->size() >= 4) {
        const size_t at = pick(b->size() / 4) * 4;
        memcpy(b->data() + at, &values[pick(7)], 4);
      }
      break;
    }
    case 3:  // a run of random bytes
      for (size_t at = pick(b->size()), k = 0, len = 1 + pick(64); k < len && at + k < b->size();
           ++k) {
        (*b)[at + k] = (char)rng();
      }
      break;
    default:  // trailing garbage
      for (size_t k = 0, len = 1 + pick(16); k < len; ++k) b->push_back((char)rng());
      break;
  }
}

TEST(Fuzz, EliasHostDecoder) {
  std::mt19937_64 rng(seed(16001));
  int refused = 0;
  const int iters = iterations(400);
  for (int it = 0; it < iters; ++it) {
    const size_t n = 1 + rng() % 3000;
    const int bucket = 32 * (1 + (int)(rng() % 16));
    const int levels = 1 + (int)(rng() % 100);
    const gradcompEliasParams_t p = {levels, bucket, (gradcompEliasCode_t)(rng() % 2),
                                     (gradcompEliasScale_t)(rng() % 2)};
    std::vector<float> x = gctest::normal(n, rng());
    if (rng() % 4 == 0) x[rng() % n] = NAN;
    const size_t maxBytes = gradcompEliasMaxEncodedBytes(n, &p);
    ASSERT_GT(maxBytes, 0u);
    std::vector<uint32_t> enc(maxBytes / 4);
    size_t bytes = 0;
    ASSERT_EQ(gradcompEliasEncodeHost(x.data(), ncclFloat32, nullptr, n, &p, rng(), enc.data(),
                                      maxBytes, &bytes),
              gradcompSuccess);
    std::vector<char> b(reinterpret_cast<char*>(enc.data()),
                        reinterpret_cast<char*>(enc.data()) + bytes);
    mutate(&b, rng);
    // The decoder wants 4-byte aligned input: keep the guard page right
    // after the last whole word.
    b.resize(b.size() / 4 * 4);
    GuardedBuffer in(b.data(), b.size());
    GuardedBuffer out(n * 4);
    const gradcompResult_t res =
        gradcompEliasDecodeHost(in.data(), b.size(), n, &p, out.as<float>(), (int)(rng() % 2));
    ASSERT_TRUE(res == gradcompSuccess || res == gradcompInvalidArgument)
        << "case " << it << ": " << res << " " << gradcompGetLastError();
    refused += res != gradcompSuccess;
  }
  // The mutations reach the decoder's checks (not all refused up front).
  EXPECT_GT(refused, iters / 10);
}

// Slots as received from a peer. Half the lists are built as a selector
// writes them (distinct sorted indices below n, then empty slots) and then
// mutated: an index past n, a duplicate, two slots swapped, a filled slot
// after the empty ones, or a random word. They go through the CPU backend's
// SparseOps as a received list does. The verdict is the rule as
// docs/sparse.md states it, checked on the whole list
// (ref::refSlotListWellFormed): the filled slots are a prefix, strictly
// increasing and below n. Every call succeeds; a refused list leaves out
// untouched and is counted (peerSlotsRejected), an accepted one is added
// slot by slot.
// Fixed-width QSGD from arbitrary bytes: the scales are any 32-bit patterns
// (negative ones mark square levels, GRADCOMP_LEVELS=square; -0, NaN and Inf
// of either sign, subnormals), the codes any bits. Every element decodes by
// the rule, computed here from the bytes alone: NaN where the scale's
// magnitude is not finite, else sign * t(level) * |scale| with t the square
// table (k*k / (s*s)) under a set sign bit and the uniform one (k / s) under
// a clear one; accumulate adds it.
TEST(Fuzz, QsgdHostDecoderReadsAnyBytes) {
  std::mt19937_64 rng(seed(16002));
  const int iters = iterations(300);
  const uint32_t special[] = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
                              0xffc00001u, 0x00000001u, 0x80000001u, 0x7f7fffffu, 0xff7fffffu};
  for (int it = 0; it < iters; ++it) {
    const int bits = 2 + (int)(rng() % 7), bucket = 32 * (1 + (int)(rng() % 8));
    const size_t n = 1 + rng() % 2000, nb = (n + bucket - 1) / bucket;
    std::vector<uint8_t> enc(gradcompQsgdEncodedBytes(n, bits, bucket));
    for (uint8_t& b : enc) b = (uint8_t)rng();
    std::vector<uint32_t> scaleBits(nb);
    for (size_t b = 0; b < nb; ++b) {
      if (rng() % 3 == 0) {
        const uint32_t v = special[rng() % (sizeof(special) / sizeof(special[0]))];
        memcpy(enc.data() + 4 * b, &v, 4);
      }
      memcpy(&scaleBits[b], enc.data() + 4 * b, 4);
    }
    const bool acc = rng() % 2 == 0;
    std::vector<float> out(n, 0.5f);
    ASSERT_EQ(gradcompQsgdDecodeHost(enc.data(), n, bits, bucket, out.data(), acc ? 1 : 0),
              gradcompSuccess);
    const uint32_t* words = reinterpret_cast<const uint32_t*>(enc.data() + 4 * nb);
    const int s = (1 << (bits - 1)) - 1;
    for (size_t i = 0; i < n; ++i) {
      const uint32_t sb = scaleBits[i / bucket], mag = sb & 0x7fffffffu;
      size_t bit = i * (size_t)bits;
      uint64_t pair = words[bit / 32];
      if (bit % 32 + bits > 32) pair |= (uint64_t)words[bit / 32 + 1] << 32;
      const uint32_t code = (uint32_t)(pair >> (bit % 32)) & ((1u << bits) - 1u);
      const int k = (int)(code & (uint32_t)s);
      float magnitude;
      memcpy(&magnitude, &mag, 4);
      float want;
      if (mag >= 0x7f800000u) {
        want = NAN;
      } else {
        const float t = sb >> 31 ? (float)(k * k) / (float)(s * s) : (float)k / (float)s;
        want = t * magnitude;
        if (code >> (bits - 1)) want = -want;
      }
      if (acc) want = 0.5f + want;
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(out[i])) << "it " << it << " i " << i;
      } else {
        ASSERT_EQ(out[i], want) << "it " << it << " i " << i << " scale bits " << sb;
      }
    }
  }
}

TEST(Fuzz, SparseSlotsFromTheWire) {
  std::mt19937_64 rng(seed(16002));
  const uint32_t empty = gc::sparse::kEmptySlot;
  std::unique_ptr<gc::SparseOps> ops = gc::makeCpuSparseOps();
  int refused = 0, accepted = 0;
  const int iters = iterations(600);
  for (int it = 0; it < iters; ++it) {
    const size_t n = 1 + rng() % 5000, slots = rng() % 200;
    std::vector<uint32_t> idx(slots, empty);
    std::vector<float> val(slots);
    for (size_t j = 0; j < slots; ++j) val[j] = (float)(rng() % 1000) * 0.25f;
    if (rng() % 2 && slots > 0) {
      std::vector<uint32_t> pick(n);
      for (size_t i = 0; i < n; ++i) pick[i] = (uint32_t)i;
      std::shuffle(pick.begin(), pick.end(), rng);
      const size_t filled = std::min(n, (size_t)(rng() % (slots + 1)));
      std::sort(pick.begin(), pick.begin() + filled);
      std::copy(pick.begin(), pick.begin() + filled, idx.begin());
      const size_t j = rng() % slots;
      switch (rng() % 6) {
        case 0:
          idx[j] = (uint32_t)(n + rng() % 1000);
          break;
        case 1:  // a duplicate, next to its twin or anywhere
          if (slots > 1) idx[j] = idx[rng() % 2 ? (j + 1) % slots : rng() % slots];
          break;
        case 2:
          std::swap(idx[j], idx[rng() % slots]);
          break;
        case 3:
          idx[slots - 1] = (uint32_t)(rng() % n);
          break;
        case 4:
          idx[j] = (uint32_t)rng();
          break;
        default:  // as selected
          break;
      }
    } else {
      for (size_t j = 0; j < slots; ++j) {
        switch (rng() % 8) {
          case 0:
            idx[j] = empty;
            break;
          case 1:
            idx[j] = (uint32_t)(n + rng() % 1000);
            break;
          case 2:
            idx[j] = (uint32_t)rng();
            break;
          default:
            idx[j] = (uint32_t)(rng() % n);
        }
      }
    }
    size_t filled = 0;
    while (filled < slots && idx[filled] != empty) ++filled;
    const bool good = gctest::ref::refSlotListWellFormed(idx.data(), slots, n);
    GuardedBuffer out(n * 4);
    memset(out.data(), 0, n * 4);
    std::vector<float> want(n, 0.0f);
    if (good) {
      for (size_t j = 0; j < filled; ++j) want[idx[j]] += val[j];
    }
    ASSERT_EQ(ops->scatterAddReceived(idx.data(), val.data(), gc::DType::F32, slots, n,
                                      out.as<float>(), 1),
              gradcompSuccess)
        << "case " << it << ": " << gradcompGetLastError();
    ASSERT_EQ(memcmp(out.data(), want.data(), n * 4), 0) << "case " << it;
    refused += !good;
    accepted += good && filled > 1;
    ASSERT_EQ(ops->peerSlotsRejected(), (uint64_t)refused) << "case " << it;
  }
  // Both verdicts are reached, accepted lists of more than one index too.
  EXPECT_GT(refused, iters / 10);
  EXPECT_GT(accepted, iters / 10);
}

// CRC32C as its definition reads (bit by bit), to re-seal mutated blobs so
// the mutations reach the field checks behind the checksum.
uint32_t crc32cBitwise(const std::vector<char>& b) {
  uint32_t crc = ~0u;
  for (size_t i = 0; i < b.size(); ++i) {
    crc ^= (unsigned char)(i >= 12 && i < 16 ? 0 : b[i]);
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

TEST(Fuzz, StateBlobs) {
  std::mt19937_64 rng(seed(16003));
  // The last case is QSGD whose comm decided GRADCOMP_AUTO from figures: its
  // blob ends with their record (96 bytes), where half its mutations land.
  const gradcompMethod_t cases[] = {gradcompMethodQsgd, gradcompMethodDgc, gradcompMethodRandk,
                                    gradcompMethodQsgd};
  for (int ci = 0; ci < 4; ++ci) {
    const gradcompMethod_t m = cases[ci];
    const bool withAuto = ci == 3;
    gradcompConfig_t cfg;
    gradcompConfigInit(&cfg);
    cfg.method = m;
    cfg.minElements = 0;
    cfg.autoTune = withAuto ? 1 : 0;
    cfg.bitsMode = m == gradcompMethodQsgd && !withAuto ? gradcompBitsBudget : gradcompBitsFixed;
    gctest::CpuWorld w(2, cfg);
    if (withAuto) {
      gc::AutoFigures f;  // compression faster at every size
      f.smallCount = 256, f.largeCount = 1024;
      f.ncclUs[0] = 64.0f, f.ncclUs[1] = 128.0f, f.compUs[0] = 32.0f, f.compUs[1] = 64.0f;
      for (int r = 0; r < 2; ++r) gc::autoInjectFigures(w.comm(r), f);
    }
    for (int t = 0; t < 2; ++t) {
      for (size_t n : {300, 700}) {
        std::vector<std::vector<float>> buf(2);
        for (int r = 0; r < 2; ++r) buf[r] = gctest::normal(n, 40 + t + r + n);
        auto res = w.run([&](int r) {
          return gradcompAllReduceKeyed(buf[r].data(), buf[r].data(), n, ncclFloat32, ncclSum,
                                        w.comm(r), nullptr, n);
        });
        ASSERT_EQ(res[0], gradcompSuccess) << gradcompGetLastError();
      }
    }
    auto save = [&] {
      size_t bytes = 0;
      EXPECT_EQ(gradcompCommStateSize(w.comm(0), &bytes), gradcompSuccess);
      std::vector<char> b(bytes);
      EXPECT_EQ(gradcompCommSaveState(w.comm(0), b.data(), bytes), gradcompSuccess);
      return b;
    };
    std::vector<char> good = save();
    if (withAuto) {
      uint32_t tag = 0;
      memcpy(&tag, good.data() + good.size() - 96, 4);
      ASSERT_EQ(tag, 2u) << "the blob does not end with auto's figures";
    }
    int accepted = 0;
    for (int it = 0, iters = iterations(300); it < iters; ++it) {
      std::vector<char> b = good;
      if (withAuto && rng() % 2) {
        b[good.size() - 96 + (size_t)(rng() % 96)] = (char)rng();  // within the figures' record
      } else {
        for (int k = 0, muts = 1 + (int)(rng() % 3); k < muts; ++k) mutate(&b, rng);
      }
      if (rng() % 2 && b.size() >= 16) {
        const uint32_t crc = crc32cBitwise(b);
        memcpy(b.data() + 12, &crc, 4);
      }
      GuardedBuffer in(b.data(), b.size());
      const gradcompResult_t res = gradcompCommLoadState(w.comm(0), in.data(), b.size());
      ASSERT_TRUE(res == gradcompSuccess || res == gradcompInvalidArgument)
          << "method " << m << " case " << it << ": " << gradcompGetLastError();
      if (res == gradcompSuccess) {
        // A mutation the format cannot tell (array data or a key under a
        // fresh checksum): the comm now holds the blob's state.
        ++accepted;
        EXPECT_EQ(save().size(), b.size());
        ASSERT_EQ(gradcompCommLoadState(w.comm(0), good.data(), good.size()), gradcompSuccess);
      } else {
        ASSERT_EQ(save(), good) << "method " << m << " case " << it << " changed the comm";
      }
    }
    EXPECT_LT(accepted, iterations(300));
  }
}

// Random strings for every GRADCOMP_* variable: success with a valid config,
// or gradcompInvalidArgument naming the variable and leaving the struct alone.
TEST(Fuzz, ConfigStrings) {
  std::mt19937_64 rng(seed(16004));
  const char* names[] = {"GRADCOMP_METHOD",   "GRADCOMP_ALGO",     "GRADCOMP_BITS",
                         "GRADCOMP_BUCKET",   "GRADCOMP_SEED",     "GRADCOMP_MIN_ELEMENTS",
                         "GRADCOMP_DENSITY",  "GRADCOMP_MOMENTUM", "GRADCOMP_WARMUP_STEPS",
                         "GRADCOMP_BITS_MIN", "GRADCOMP_ELIAS",    "GRADCOMP_CPU_TIMEOUT"};
  const char* tokens[] = {"0",
                          "1",
                          "8",
                          "010",
                          "0x8",
                          " 8",
                          "8 ",
                          "-1",
                          "+1",
                          "",
                          "1e3",
                          "nan",
                          "inf",
                          ".5",
                          "1.",
                          "qsgd",
                          "RING",
                          "dgc",
                          "1e-45",
                          "18446744073709551616",
                          "99999999999999999999",
                          "0x",
                          "\t",
                          "4096"};
  for (int it = 0, iters = iterations(500); it < iters; ++it) {
    const char* name = names[rng() % (sizeof(names) / sizeof(names[0]))];
    std::string v;
    if (rng() % 3 == 0) {
      for (size_t k = 0, len = rng() % 12; k < len; ++k) v += (char)(1 + rng() % 255);
    } else {
      v = tokens[rng() % (sizeof(tokens) / sizeof(tokens[0]))];
      if (rng() % 4 == 0) v += tokens[rng() % (sizeof(tokens) / sizeof(tokens[0]))];
    }
    gctest::ScopedEnv env(name, v.c_str());
    gradcompConfig_t cfg, before;
    gradcompConfigInit(&cfg);
    cfg.bits = 7;
    // Byte for byte, padding included: an assignment need not copy the padding
    // that the memcmp below compares.
    memcpy(&before, &cfg, sizeof(cfg));
    const gradcompResult_t res = gradcompConfigFromEnv(&cfg);
    if (res == gradcompSuccess) {
      ASSERT_EQ(gradcompConfigValidate(&cfg), gradcompSuccess) << name << "='" << v << "'";
    } else {
      ASSERT_EQ(res, gradcompInvalidArgument) << name << "='" << v << "'";
      ASSERT_NE(strstr(gradcompGetLastError(), name), nullptr) << gradcompGetLastError();
      ASSERT_EQ(memcmp(&cfg, &before, sizeof(cfg)), 0) << name << "='" << v << "'";
    }
  }
}

// GRADCOMP_* floats a double does not hold, spelt many ways: a power of ten P
// (that of the first nonzero digit) far below or above a double's, written
// with the point anywhere, leading zeros, many digits, and an exponent with or
// without a sign, leading zeros or more digits than any integer. Each is
// refused naming the variable and the value, the struct left alone, never
// taken as 0 or inf; one below 1 (P < 0) gets the float's refusal ("that a
// float holds") where the range holds 0, and one above gets the range's, as
// plugin/config.cc's belowOne tells them apart. Signs, hex floats and the
// spellings of inf and nan around such numbers are refused as not the form.
TEST(Fuzz, ConfigFloatsBeyondADouble) {
  std::mt19937_64 rng(seed(16005));
  size_t n;
  const gc::ParamSpec* table = gc::paramTable(&n);
  std::vector<const gc::ParamSpec*> floats;
  for (size_t i = 0; i < n; ++i)
    if (table[i].kind == gc::ParamKind::Float && table[i].offset >= 0) floats.push_back(&table[i]);
  ASSERT_GE(floats.size(), 2u);
  auto digits = [&](size_t count, bool nonzeroFirst) {
    std::string d;
    for (size_t k = 0; k < count; ++k)
      d += (char)('0' + (k == 0 && nonzeroFirst ? 1 + rng() % 9 : rng() % 10));
    return d;
  };
  const char* notTheForm[] = {"-",   "+",        " ",   "0x",  "0X1p",   "inf",
                              "INF", "infinity", "nan", "NaN", "nan(1)", "-inf"};
  int underflows = 0, overflows = 0, forms = 0;
  for (int it = 0, iters = iterations(2000); it < iters; ++it) {
    const gc::ParamSpec& p = *floats[rng() % floats.size()];
    // P beyond a double's either way (1e-330 .. and 1e+310 ..), some beyond
    // any exponent an integer holds.
    const bool below = rng() % 2 == 0;
    const long long magnitude = rng() % 8 == 0 ? 1000000000000LL + (long long)(rng() % 1000)
                                               : 330 + (long long)(rng() % 5000);
    const long long power = below ? -magnitude : magnitude;
    // The significand: k >= 1 digits before the point with the first nonzero
    // (power k - 1 before the exponent), or "0." and z zeros before the first
    // nonzero digit (power -(z + 1)); leading zeros before either; many digits.
    const size_t tail = rng() % 4 == 0 ? 200 + rng() % 400 : rng() % 6;
    const size_t leadingZeros = rng() % 3 == 0 ? rng() % 5 : 0;
    std::string v(leadingZeros, '0');
    long long written;  // the power the significand gives by itself
    if (rng() % 2 == 0) {
      const size_t k = rng() % 4 == 0 ? 1 + rng() % 700 : 1 + rng() % 4;
      v += digits(k, true);
      written = (long long)k - 1;
      if (tail || rng() % 2) v += "." + digits(tail, false);
    } else {
      const size_t z = rng() % 4 == 0 ? 300 + rng() % 200 : rng() % 5;
      // One draw per statement: the order of a sum's operands is unspecified.
      v += leadingZeros || rng() % 2 ? "0." : ".";
      v += std::string(z, '0');
      v += digits(1 + tail, true);
      written = -(long long)z - 1;
    }
    // The exponent that makes the power P: none where the significand alone
    // is beyond a double (its many digits), else e/E, a sign, leading zeros.
    const long long exponent = power - written;
    // Now and then an exponent of 20 to 40 digits, beyond any integer's (the
    // parser's clamp of a huge exponent), signed as P is: whatever the
    // significand's own power, the value is then beyond a double that way.
    const bool huge = rng() % 6 == 0;
    if (huge || exponent != 0 || rng() % 2) {
      v += rng() % 2 ? "e" : "E";
      if (huge ? below : exponent < 0)
        v += "-";
      else if (rng() % 2)
        v += "+";
      v += std::string(rng() % 3 == 0 ? 1 + rng() % 30 : 0, '0');
      if (huge)
        v += digits(20 + rng() % 21, true);
      else
        v += std::to_string(exponent < 0 ? -exponent : exponent);
    }
    // Now and then a sign, a hex prefix, an inf or nan before or after it: no
    // longer the form, refused as such.
    const bool mangled = rng() % 5 == 0;
    if (mangled) {
      const std::string bad = notTheForm[rng() % (sizeof(notTheForm) / sizeof(notTheForm[0]))];
      v = rng() % 2 ? bad + v : v + bad;
    }
    gctest::ScopedEnv env(p.env, v.c_str());
    gradcompConfig_t cfg, before;
    gradcompConfigInit(&cfg);
    memcpy(&before, &cfg, sizeof(cfg));
    const gradcompResult_t res = gradcompConfigFromEnv(&cfg);
    const std::string said = res == gradcompSuccess ? "" : gradcompGetLastError();
    const std::string value = gc::shownValue(v.c_str());
    ASSERT_EQ(res, gradcompInvalidArgument)
        << p.env << "='" << v << "' taken as "
        << *reinterpret_cast<const float*>(reinterpret_cast<const char*>(&cfg) + p.offset);
    ASSERT_EQ(memcmp(&cfg, &before, sizeof(cfg)), 0) << p.env << "='" << v << "'";
    ASSERT_NE(said.find(std::string(p.env) + "=" + value + " is not a number in ["),
              std::string::npos)
        << p.env << "='" << v << "': " << said;
    const bool floatRefusal = said.find("that a float holds") != std::string::npos;
    if (mangled) {
      ++forms;
      EXPECT_FALSE(floatRefusal) << said;
      EXPECT_NE(said.find(gc::kNumberForm), std::string::npos) << said;
    } else {
      (below ? underflows : overflows)++;
      EXPECT_EQ(floatRefusal, below && p.min <= 0)
          << p.env << "='" << v << "' (a power of ten of " << power << "): " << said;
      EXPECT_EQ(said.find(gc::kNumberForm) != std::string::npos, !floatRefusal) << said;
    }
  }
  // Every kind drawn.
  EXPECT_GT(underflows, 0);
  EXPECT_GT(overflows, 0);
  EXPECT_GT(forms, 0);
}

// The TCP transport's bytes from a peer (plugin/backends/cpu/socket.cc): a
// fake rank 1 speaks to a real rank 0. Odd cases send a mutated hello; even
// ones a valid hello, rank 0's own set-up vote echoed back (so the comm is
// made), then rank 0's allreduce messages echoed back with one of them
// mutated, after which the fake rank closes. Rank 0 must come back with a
// result (success or an error sentence) within its timeout, never crash,
// hang or write outside its buffers (the ASan build runs this too).
namespace wire {

// socket.cc's hello, byte for byte: magic, nranks, rank, listening port.
constexpr uint32_t kHelloMagic = 0x47435348;
struct Hello {
  uint32_t magic;
  int32_t nranks, rank;
  uint16_t port, pad;
};

bool sendAll(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
    if (k <= 0) return false;
    c += k;
    n -= (size_t)k;
  }
  return true;
}

bool recvAll(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n) {
    pollfd q = {fd, POLLIN, 0};
    if (poll(&q, 1, 5000) <= 0) return false;
    const ssize_t k = recv(fd, c, n, 0);
    if (k <= 0) return false;
    c += k;
    n -= (size_t)k;
  }
  return true;
}

// One whole message (the 56-byte header, whose last word is the payload's
// length, then the payload); empty when the peer closed or went quiet.
constexpr size_t kHeaderBytes = 56;
std::vector<char> recvMessage(int fd) {
  std::vector<char> m(kHeaderBytes);
  if (!recvAll(fd, m.data(), kHeaderBytes)) return {};
  uint64_t bytes;
  memcpy(&bytes, m.data() + kHeaderBytes - 8, 8);
  if (bytes > (64u << 20)) return {};
  m.resize(kHeaderBytes + bytes);
  if (bytes && !recvAll(fd, m.data() + kHeaderBytes, bytes)) return {};
  return m;
}

// Retries until the real rank 0 listens: its thread may start late on a
// loaded machine (a fixed number of quick retries ran out after about a
// second). The deadline is a hang check only.
int connectRoot(int port) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  do {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = {};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return fd;
    close(fd);
    usleep(2000);
  } while (std::chrono::steady_clock::now() < deadline);
  return -1;
}

}  // namespace wire

TEST(Fuzz, SocketMessagesFromAPeer) {
  std::mt19937_64 rng(seed(0x50cc));
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 0;
  cfg.autoTune = 0;
  cfg.cpuTimeoutSec = 2;
  const size_t n = 4096;  // two equal chunks: rank 0's messages are valid as rank 1's
  int made = 0, refused = 0;
  for (int it = 0, iters = iterations(48); it < iters; ++it) {
    SCOPED_TRACE(testing::Message() << "case " << it);
    const int port = gctest::freePort();
    const std::string root = gctest::loopbackRoot(port);
    gradcompResult_t created = gradcompInternalError, reduced = gradcompInternalError;
    std::vector<float> x(n, 1.0f);
    std::thread rank0([&] {
      gradcompComm_t c = nullptr;
      created = gradcompCommCreateSocket(2, 0, root.c_str(), &cfg, &c);
      if (created == gradcompSuccess) {
        reduced = gradcompAllReduce(x.data(), x.data(), n, ncclFloat32, ncclSum, c, nullptr);
        gradcompCommDestroy(c);
      }
    });
    const int fd = wire::connectRoot(port);
    if (fd < 0) rank0.join();  // a fatal failure must not leave the thread joinable
    ASSERT_GE(fd, 0);
    // The hello: magic, nranks, rank, listening port (unused with 2 ranks).
    const wire::Hello hello = {wire::kHelloMagic, 2, 1, 1, 0};
    std::vector<char> h(sizeof hello);
    memcpy(h.data(), &hello, sizeof hello);
    if (it % 2) {
      mutate(&h, rng);
      wire::sendAll(fd, h.data(), h.size());
    } else {
      // The verdict (200 bytes), then the address table: 2 entries of 24 bytes.
      std::vector<char> verdict(200 + 2 * 24);
      if (wire::sendAll(fd, h.data(), h.size()) &&
          wire::recvAll(fd, verdict.data(), verdict.size())) {
        const int mutateAt = (int)(rng() % 3);  // 0: the vote; 1, 2: the allreduce's
        for (int k = 0;; ++k) {
          std::vector<char> m = wire::recvMessage(fd);
          if (m.empty()) break;
          if (k == mutateAt) mutate(&m, rng);
          if (!wire::sendAll(fd, m.data(), m.size()) || k == mutateAt) break;
        }
      }
    }
    close(fd);
    rank0.join();
    made += created == gradcompSuccess;
    refused += created != gradcompSuccess || reduced != gradcompSuccess;
    for (gradcompResult_t r : {created, reduced}) {
      EXPECT_TRUE(r == gradcompSuccess || r == gradcompInvalidArgument ||
                  r == gradcompInvalidUsage || r == gradcompSystemError ||
                  (r == gradcompInternalError && created != gradcompSuccess))
          << "result " << r << ": " << gradcompGetLastError();
    }
  }
  // Both sides of the driver were exercised.
  EXPECT_GT(made, 0);
  EXPECT_GT(refused, 0);
}

// A rank of a gradcomp build from before the set-up vote carried its version
// (before 0.6.0's versioned vote; plugin/topology.h's SetupVote was then
// 8 + 4 + 4 bytes, kSetupSettings settings of 8 bytes and a 256-byte
// sentence: 14, 15, 16, 30 or 31 settings over that history) meets a rank of
// this build on the TCP transport: the vote is the first collective after
// the rendezvous, and its message header carries the old vote's size. Rank 0
// names the rank as another build at once, rather than a generic difference
// of sizes ("the ranks' calls or per-buffer state differ").
TEST(Fuzz, AnOlderBuildsVoteFromAPeerIsNamed) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.cpuTimeoutSec = 30;  // a wait for the fake rank would show as a slow failure
  // 0: a vote of another size that is no older build's (a later layout).
  for (const int settings : {14, 15, 16, 30, 31, 0}) {
    const size_t oldBytes = settings ? 16 + 8 * (size_t)settings + 256 : 856;
    SCOPED_TRACE(testing::Message() << settings << " settings: a vote of " << oldBytes << " bytes");
    const int port = gctest::freePort();
    const std::string root = gctest::loopbackRoot(port);
    gradcompResult_t created = gradcompInternalError;
    std::string why;
    double seconds = 0;
    std::thread rank0([&] {
      const auto t0 = std::chrono::steady_clock::now();
      gradcompComm_t c = nullptr;
      created = gradcompCommCreateSocket(2, 0, root.c_str(), &cfg, &c);
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (created == gradcompSuccess) gradcompCommDestroy(c);
      why = gradcompGetLastError();
    });
    const int fd = wire::connectRoot(port);
    if (fd < 0) rank0.join();
    ASSERT_GE(fd, 0);
    const wire::Hello hello = {wire::kHelloMagic, 2, 1, 1, 0};
    std::vector<char> verdict(200 + 2 * 24);
    std::vector<char> vote;
    if (wire::sendAll(fd, &hello, sizeof hello) &&
        wire::recvAll(fd, verdict.data(), verdict.size())) {
      vote = wire::recvMessage(fd);  // rank 0's vote: its header is the old build's too
    }
    if (!vote.empty()) {
      std::vector<char> old(wire::kHeaderBytes + oldBytes, 0);
      memcpy(old.data(), vote.data(), wire::kHeaderBytes);
      const uint64_t size = oldBytes;
      memcpy(old.data() + 8, &size, 8);                       // check: the all-gather's size
      memcpy(old.data() + wire::kHeaderBytes - 8, &size, 8);  // bytes: the payload's
      wire::sendAll(fd, old.data(), old.size());
    }
    rank0.join();
    close(fd);
    ASSERT_FALSE(vote.empty()) << "rank 0 sent no vote";
    EXPECT_EQ(created, gradcompInvalidUsage) << why;
    EXPECT_NE(why.find(settings ? "rank 1 runs another gradcomp build (an older one, before "
                                  "0.6.0's versioned vote: its set-up vote is " +
                                      std::to_string(oldBytes) + " bytes"
                                : "rank 1 runs another gradcomp build (another vote: its set-up "
                                  "vote is 856 bytes"),
              std::string::npos)
        << why;
    EXPECT_LT(seconds, 10.0) << "rank 0 waited for the fake rank instead of naming its build";
  }
}

// The TCP transport's set-up bytes from rank 0 (plugin/backends/cpu/socket.cc),
// the other direction: a fake rank 0 listens on loopback, real ranks
// 1..N-1 (threads) connect and say hello, and the fake root answers each
// with the verdict and the table of listening addresses a real root would
// send (made from the hellos and the addresses they came from), changed by
// the case. Then it echoes every collective message a rank sends it back to
// that rank: with N equal chunks each is the size and header the rank
// expects from rank 0, so a valid answer makes comms whose allreduce
// completes.
namespace fakeroot {

// socket.cc's set-up structs, byte for byte.
using wire::Hello;
using wire::kHelloMagic;
struct Entry {
  uint8_t addr[16];  // network order
  uint32_t scope;
  uint16_t family;
  uint16_t port;  // network order
};
static_assert(sizeof(Entry) == 24, "socket.cc's table entry");
// The verdict: magic, ok (1, or 0 and the sentence), the world's nranks, the sentence.
constexpr size_t kVerdictBytes = 200, kOkAt = 4, kNranksAt = 8, kWhyAt = 12;

Entry entryAt(const std::vector<char>& b, int k) {
  Entry e;
  memcpy(&e, b.data() + kVerdictBytes + sizeof(Entry) * k, sizeof e);
  return e;
}
void setEntry(std::vector<char>* b, int k, const Entry& e) {
  memcpy(b->data() + kVerdictBytes + sizeof(Entry) * k, &e, sizeof e);
}
void setWord(std::vector<char>* b, size_t at, int32_t v) {
  memcpy(b->data() + at, &v, 4);
}

Entry entryOf(const sockaddr_storage& ss) {
  Entry e = {};
  e.family = ss.ss_family;
  if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    memcpy(e.addr, &a->sin6_addr, 16);
    e.scope = a->sin6_scope_id;
    e.port = a->sin6_port;
  } else {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    memcpy(e.addr, &a->sin_addr, 4);
    e.port = a->sin_port;
  }
  return e;
}

std::string text(const Entry& e) {
  return (e.family == AF_INET6 ? "[::1]:" : "127.0.0.1:") + std::to_string(ntohs(e.port));
}

// A loopback socket of `family` on a port the kernel picks (held from the
// start, so no concurrent test can take it): listening with `backlog`, or,
// with backlog < 0, bound only, so that every connection to it is refused.
struct Socket {
  int fd = -1;
  Entry entry = {};
  ~Socket() {
    if (fd >= 0) close(fd);
  }
};

bool openLoopback(int family, int backlog, Socket* s) {
  s->fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s->fd < 0) return false;
  sockaddr_storage ss = {};
  socklen_t len = sizeof(sockaddr_in);
  if (family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_loopback;
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  }
  if (bind(s->fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) return false;
  if (backlog >= 0 && listen(s->fd, backlog) != 0) return false;
  len = sizeof ss;
  if (getsockname(s->fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return false;
  s->entry = entryOf(ss);
  return true;
}

bool hasIpv6Loopback() {
  Socket s;
  return openLoopback(AF_INET6, -1, &s);
}

struct Outcome {
  gradcompResult_t created = gradcompInternalError, reduced = gradcompInternalError;
  std::string why;  // the rank's error sentence, if any
};

bool allowed(gradcompResult_t r) {
  return r == gradcompSuccess || r == gradcompInvalidArgument || r == gradcompInvalidUsage ||
         r == gradcompSystemError;
}

// What the fake root sends rank r, given the valid verdict and table.
using Answer = std::function<std::vector<char>(int r, std::vector<char> valid)>;

// Ranks 1..nranks-1 against the fake root; every rank's outcome (0 unused).
std::vector<Outcome> run(int family, int nranks, const gradcompConfig_t& cfg,
                         const Answer& answer) {
  std::vector<Outcome> out(nranks);
  Socket root;
  if (!openLoopback(family, 64, &root)) {
    ADD_FAILURE() << "the fake root cannot listen on loopback (family " << family << ")";
    return out;
  }
  const std::string rootText = text(root.entry);
  const size_t n = 1024 * (size_t)nranks;
  std::vector<std::thread> ranks;
  for (int r = 1; r < nranks; ++r) {
    ranks.emplace_back([&, r] {
      Outcome& o = out[r];
      gradcompComm_t c = nullptr;
      o.created = gradcompCommCreateSocket(nranks, r, rootText.c_str(), &cfg, &c);
      if (o.created != gradcompSuccess) {
        o.why = gradcompGetLastError();
        return;
      }
      std::vector<float> x(n, (float)r);
      o.reduced = gradcompAllReduce(x.data(), x.data(), n, ncclFloat32, ncclSum, c, nullptr);
      if (o.reduced != gradcompSuccess) o.why = gradcompGetLastError();
      gradcompCommDestroy(c);
    });
  }
  std::vector<int> fds(nranks, -1);
  std::vector<Entry> table(nranks);
  table[0] = root.entry;
  bool complete = true;
  for (int k = 1; k < nranks && complete; ++k) {
    pollfd p = {root.fd, POLLIN, 0};
    sockaddr_storage peer = {};
    socklen_t len = sizeof peer;
    const int fd = poll(&p, 1, 10000) == 1
                       ? accept4(root.fd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC)
                       : -1;
    Hello h = {};
    complete = fd >= 0 && wire::recvAll(fd, &h, sizeof h) && h.magic == kHelloMagic &&
               h.nranks == nranks && h.rank >= 1 && h.rank < nranks && fds[h.rank] < 0;
    if (!complete) {
      ADD_FAILURE() << "the fake root got no valid hello from a rank";
      if (fd >= 0) close(fd);
      break;
    }
    fds[h.rank] = fd;
    table[h.rank] = entryOf(peer);
    table[h.rank].port = htons(h.port);
  }
  std::vector<char> valid(kVerdictBytes + nranks * sizeof(Entry), 0);
  setWord(&valid, 0, (int32_t)kHelloMagic);
  setWord(&valid, kOkAt, 1);
  setWord(&valid, kNranksAt, nranks);
  for (int r = 0; r < nranks; ++r) setEntry(&valid, r, table[r]);
  std::vector<std::thread> echoes;
  for (int r = 1; r < nranks; ++r) {
    if (fds[r] < 0) continue;
    const std::vector<char> bytes = answer(r, valid);
    wire::sendAll(fds[r], bytes.data(), bytes.size());
    echoes.emplace_back([fd = fds[r]] {
      for (;;) {
        std::vector<char> m = wire::recvMessage(fd);
        if (m.empty() || !wire::sendAll(fd, m.data(), m.size())) break;
      }
    });
  }
  // A rank ends within its timeout and closes its connections, which ends its echo.
  for (auto& t : ranks) t.join();
  for (auto& t : echoes) t.join();
  for (int fd : fds) {
    if (fd >= 0) close(fd);
  }
  return out;
}

gradcompConfig_t config() {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = 0;
  cfg.autoTune = 0;
  cfg.cpuTimeoutSec = 0.5f;
  return cfg;
}

// A mutated table still names no address off this host and no port a
// concurrent test may listen on: an IPv4 address keeps 127/8, an IPv6 one
// becomes ::1, and a changed port other than 0 becomes `closedPort`, where
// nobody listens.
void keepOnHost(std::vector<char>* b, const std::vector<char>& valid, int nranks,
                uint16_t closedPort) {
  for (int k = 0; k < nranks && kVerdictBytes + sizeof(Entry) * (k + 1) <= b->size(); ++k) {
    Entry e = entryAt(*b, k);
    if (e.family == AF_INET6) {
      memcpy(e.addr, &in6addr_loopback, 16);
    } else {
      e.addr[0] = 127;
    }
    if (e.port != entryAt(valid, k).port && e.port != 0) e.port = closedPort;
    setEntry(b, k, e);
  }
}

}  // namespace fakeroot

// Mutated answers from rank 0 to 3 real ranks: every 4th case the valid one
// (which must make working comms, proving the fake root right), the others
// mutated as a whole, in the table only, or differently for each rank.
// Every rank comes back within its timeout with an allowed result; comms
// made by every rank work (a mutation they were made through was one the
// ranks need not read).
TEST(Fuzz, SocketRootMessagesToAPeer) {
  using namespace fakeroot;
  std::mt19937_64 rng(seed(0x50ce));
  // A valid answer takes milliseconds, however long the timeout: a long one
  // keeps a loaded machine from failing it.
  const gradcompConfig_t cfg = config();
  gradcompConfig_t patient = cfg;
  patient.cpuTimeoutSec = 10;
  std::vector<int> families{AF_INET};
  if (hasIpv6Loopback()) {
    families.push_back(AF_INET6);
  } else {
    printf("[   INFO   ] no IPv6 loopback on this machine: the [::1] half is skipped\n");
  }
  int made = 0, refused = 0;
  const int nranks = 3;
  for (int family : families) {
    Socket closed;
    ASSERT_TRUE(openLoopback(family, -1, &closed));
    for (int it = 0, iters = iterations(24); it < iters; ++it) {
      SCOPED_TRACE(testing::Message() << "family " << family << " case " << it);
      const bool valid = it % 4 == 0;
      const int mode = (int)(rng() % 3);  // 0: all the bytes; 1: the table; 2: per rank
      const uint64_t caseSeed = rng();
      std::vector<Outcome> out =
          run(family, nranks, valid ? patient : cfg, [&](int r, std::vector<char> b) {
            if (valid) return b;
            const std::vector<char> good = b;
            std::mt19937_64 local(caseSeed + (mode == 2 ? (uint64_t)r : 0));
            for (int k = 0, muts = 1 + (int)(local() % 3); k < muts; ++k) {
              if (mode == 1) {
                std::vector<char> t(b.begin() + kVerdictBytes, b.end());
                mutate(&t, local);
                b.resize(kVerdictBytes);
                b.insert(b.end(), t.begin(), t.end());
              } else {
                mutate(&b, local);
              }
            }
            keepOnHost(&b, good, nranks, closed.entry.port);
            return b;
          });
      bool all = true;
      for (int r = 1; r < nranks; ++r) {
        const Outcome& o = out[r];
        EXPECT_TRUE(allowed(o.created)) << "rank " << r << ": " << o.created << " " << o.why;
        if (o.created != gradcompSuccess) {
          EXPECT_FALSE(o.why.empty()) << "rank " << r;
        } else {
          EXPECT_TRUE(allowed(o.reduced)) << "rank " << r << ": " << o.reduced << " " << o.why;
        }
        if (valid) {
          EXPECT_EQ(o.created, gradcompSuccess) << "rank " << r << ": " << o.why;
          EXPECT_EQ(o.reduced, gradcompSuccess) << "rank " << r << ": " << o.why;
        }
        all &= o.created == gradcompSuccess;
        made += !valid && o.created == gradcompSuccess;
        refused += o.created != gradcompSuccess;
      }
      for (int r = 1; r < nranks && all; ++r) {
        EXPECT_EQ(out[r].reduced, gradcompSuccess) << "rank " << r << ": " << out[r].why;
      }
    }
  }
  // Both sides of the driver were exercised: mutations the ranks refuse, and
  // mutations of bytes they need not read.
  EXPECT_GT(made, 0);
  EXPECT_GT(refused, 0);
}

// Answers from rank 0 that a broken or hostile root could send, each named:
// no rank makes a comm, and the rank that reads the bad bytes says what was
// wrong with them (the value, or the address it could not use) within its
// timeout.
TEST(Fuzz, SocketRootAnswersNamed) {
  using namespace fakeroot;
  const gradcompConfig_t cfg = config();
  // Bound, not listening: refuses every connection.
  Socket closed;
  ASSERT_TRUE(openLoopback(AF_INET, -1, &closed));
  // Listening with a full queue (backlog 0 and one connection nobody
  // accepts): a connection never completes, as to a host that drops packets.
  Socket silent, filler;
  ASSERT_TRUE(openLoopback(AF_INET, 0, &silent));
  filler.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in s = {};
  s.sin_family = AF_INET;
  s.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  s.sin_port = silent.entry.port;
  ASSERT_EQ(connect(filler.fd, reinterpret_cast<sockaddr*>(&s), sizeof s), 0);
  // Listening, but not a gradcomp rank: the connection completes and nothing answers.
  Socket stranger;
  ASSERT_TRUE(openLoopback(AF_INET, 8, &stranger));

  auto rank1At = [](const Entry& e) {
    return [e](int, std::vector<char> b) {
      Entry x = entryAt(b, 1);
      x.port = e.port;
      setEntry(&b, 1, x);
      return b;
    };
  };
  struct Case {
    const char* name;
    int nranks;
    Answer answer;
    // The rank that reads the bad bytes; 0: every rank reads them after the
    // set-up, and the first to do so names them, while a rank still reading
    // may first find that rank's connections closed (either order is right).
    int reader;
    gradcompResult_t want;
    std::string says;
    // The ranks' cpuTimeoutSec: short where a rank waits out its timeout (a
    // peer that failed never connects); where the reader must first finish a
    // healthy set-up with the other ranks and no rank waits out its timeout,
    // the patient one, which a loaded machine cannot run out.
    bool patient = false;
  };
  gradcompConfig_t patient = cfg;
  patient.cpuTimeoutSec = 10;
  const Case cases[] = {
      {"rank 1's family 7", 3,
       [](int, std::vector<char> b) {
         Entry e = entryAt(b, 1);
         e.family = 7;
         setEntry(&b, 1, e);
         return b;
       },
       2, gradcompSystemError, "family 7"},
      {"rank 1 on IPv6 in an IPv4 world", 3,
       [](int, std::vector<char> b) {
         Entry e = entryAt(b, 1);
         e.family = AF_INET6;
         memcpy(e.addr, &in6addr_loopback, 16);
         setEntry(&b, 1, e);
         return b;
       },
       2, gradcompSystemError, "family " + std::to_string(AF_INET6)},
      {"rank 1 at port 0", 3,
       [](int, std::vector<char> b) {
         Entry e = entryAt(b, 1);
         e.port = 0;
         setEntry(&b, 1, e);
         return b;
       },
       2, gradcompSystemError, "port 0"},
      {"rank 1 where nobody listens", 3, rank1At(closed.entry), 2, gradcompSystemError,
       text(closed.entry)},
      {"rank 1 where nothing answers", 3, rank1At(silent.entry), 2, gradcompSystemError,
       text(silent.entry)},
      {"rank 1 where a stranger listens", 3, rank1At(stranger.entry), 2, gradcompSystemError,
       text(stranger.entry)},
      {"ranks 1 and 2 swapped", 4,
       [](int r, std::vector<char> b) {
         // Only rank 3 hears it: it would reach rank 2 as rank 1 and rank 1 as rank 2.
         if (r == 3) {
           const Entry one = entryAt(b, 1), two = entryAt(b, 2);
           setEntry(&b, 1, two);
           setEntry(&b, 2, one);
         }
         return b;
       },
       3, gradcompSystemError, "rank 2"},
      {"a refusal in unprintable bytes", 3,
       [](int, std::vector<char> b) {
         setWord(&b, kOkAt, 0);
         const char why[] = "bad\x01\x7f\xff\n world";
         memcpy(b.data() + kWhyAt, why, sizeof why);
         b.resize(kVerdictBytes);
         return b;
       },
       2, gradcompInvalidArgument, "rank 0 refused the world: bad"},
      {"a refusal with no end", 3,
       [](int, std::vector<char> b) {
         setWord(&b, kOkAt, 0);
         memset(b.data() + kWhyAt, 'x', kVerdictBytes - kWhyAt);
         b.resize(kVerdictBytes);
         return b;
       },
       1, gradcompInvalidArgument, "refused the world: xxx"},
      {"a table cut short", 3,
       [](int, std::vector<char> b) {
         b.resize(b.size() > 10 ? b.size() - 10 : 0);  // (GCC cannot see the size is > 10)
         return b;
       },
       2, gradcompSystemError, "table of listening addresses"},
      {"a verdict for 4 ranks", 3,
       [](int, std::vector<char> b) {
         setWord(&b, kNranksAt, 4);
         return b;
       },
       1, gradcompSystemError, "4 ranks"},
      {"ok=2", 3,
       [](int, std::vector<char> b) {
         setWord(&b, kOkAt, 2);
         return b;
       },
       1, gradcompSystemError, "not as gradcomp's rank 0"},
      {"a bad magic", 3,
       [](int, std::vector<char> b) {
         b[0] ^= 1;
         return b;
       },
       2, gradcompSystemError, "not as gradcomp's rank 0"},
      {"bytes after the table", 3,
       [](int, std::vector<char> b) {
         b.resize(b.size() + 48, 'z');
         return b;
       },
       0, gradcompSystemError, "corrupt message from rank 0", true},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    const std::vector<Outcome> out = run(AF_INET, k.nranks, k.patient ? patient : cfg, k.answer);
    for (int r = 1; r < k.nranks; ++r) {
      EXPECT_NE(out[r].created, gradcompSuccess) << "rank " << r << " made a comm";
      EXPECT_TRUE(allowed(out[r].created)) << "rank " << r << ": " << out[r].created;
    }
    int reader = k.reader;
    for (int r = 1; r < k.nranks && reader == 0; ++r) {
      if (out[r].why.find(k.says) != std::string::npos) reader = r;
    }
    if (reader == 0) {
      std::string all;
      for (int r = 1; r < k.nranks; ++r) all += "\nrank " + std::to_string(r) + ": " + out[r].why;
      ADD_FAILURE() << "no rank says \"" << k.says << "\"" << all;
      continue;
    }
    const Outcome& o = out[reader];
    EXPECT_EQ(o.created, k.want) << "rank " << reader << ": " << o.why;
    EXPECT_NE(o.why.find(k.says), std::string::npos) << "rank " << reader << ": " << o.why;
    for (int r = 1; r < k.nranks; ++r) {
      EXPECT_FALSE(out[r].why.empty()) << "rank " << r << " failed without a sentence";
      for (char c : out[r].why)
        EXPECT_TRUE(c >= 0x20 && c < 0x7f) << "a raw byte in: " << out[r].why;
    }
  }
}

// Each rank but rank 0 listens on a port of its own for the ranks above it,
// on every address of the host, where a health check or a port scan may
// connect during the set-up as at rank 0's port. Such a connection that
// closes at once or sends other bytes than a rank's number is dropped, and
// the world forms from the ranks that come after it (until 2026-12-07 it
// failed the world: "the peer closed the connection while this rank waited
// for a rank's number", or "reached by a connection claiming rank
// 542393671"). The stray reaches rank 1's listener before rank 1 has its
// table (the fake root answers rank 1 only after it), so rank 1 accepts it
// before rank 2's connection (the backlog is FIFO).
TEST(Fuzz, AStrayConnectionToARanksListenerIsDropped) {
  using namespace fakeroot;
  gradcompConfig_t cfg = config();
  // A healthy set-up; no rank waits it out. Shorter than any wait a rank
  // might give one connection alone: a stray that stays silent must hold
  // nothing up.
  cfg.cpuTimeoutSec = 4;
  struct Case {
    const char* name;
    std::string bytes;  // what the stray sends before it closes
    bool stays;         // or it stays open, silent, until the world is made
    int copies;         // strays of that kind at once (past the 64 a listener keeps)
  };
  const Case cases[] = {
      {"connects and closes", "", false, 1},
      {"sends an HTTP request", "GET / HTTP/1.0\r\n\r\n", false, 1},
      {"sends rank 0's number", std::string(4, '\0'), false, 1},
      {"sends a number past the ranks", std::string("\x07\0\0\0", 4), false, 1},
      {"sends 2 bytes", "ab", false, 1},
      {"sends 2 bytes and stays", "ab", true, 1},
      {"connects and stays silent", "", true, 1},
      {"100 connect and stay silent", "", true, 100},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    bool strayed = true;
    std::vector<int> kept;
    const std::vector<Outcome> out = run(AF_INET, 3, cfg, [&](int r, std::vector<char> b) {
      if (r != 1) return b;
      for (int i = 0; i < k.copies; ++i) {
        const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a = {};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = entryAt(b, 1).port;
        strayed = strayed && fd >= 0 &&
                  connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  wire::sendAll(fd, k.bytes.data(), k.bytes.size());
        if (k.stays) {
          kept.push_back(fd);
        } else if (fd >= 0) {
          close(fd);
        }
      }
      return b;
    });
    for (const int fd : kept) {
      if (fd >= 0) close(fd);
    }
    EXPECT_TRUE(strayed) << "the stray could not reach rank 1's listener";
    for (int r = 1; r < 3; ++r) {
      EXPECT_EQ(out[r].created, gradcompSuccess) << "rank " << r << ": " << out[r].why;
      EXPECT_EQ(out[r].reduced, gradcompSuccess) << "rank " << r << ": " << out[r].why;
    }
  }
}

}  // namespace
