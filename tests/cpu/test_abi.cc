// The caller's header sets the sizes of gradcompConfig_t and gradcompStats_t:
// gradcompConfigInit, gradcompConfigFromEnv and gradcompGetStats (macros over
// the Sized entry points) write only the caller's bytes; every layout of the
// header's history that is a prefix of today's is read with its missing fields
// at their defaults; any other size is refused, naming it, with nothing
// written; the pre-0.3 symbols of those names still work.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <string.h>

#include <string>
#include <vector>

#include "gradcomp.h"
#include "tests/common/cpu_world.h"
#include "tests/common/old_layouts.h"
#include "tests/common/socket_world.h"
#include "tests/common/test_util.h"

namespace {

using gctest::ScopedEnv;
namespace old = gctest::old;

// A caller's buffer: either struct and at least 64 bytes after it, where
// nothing may be written.
constexpr size_t kRoom = 320;
static_assert(kRoom >= sizeof(gradcompConfig_t) + 64 && kRoom >= sizeof(gradcompStats_t) + 64,
              "room for canaries after either struct");

// Two canary bytes, so that a write of either value is still seen.
constexpr uint8_t kCanaries[] = {0xA5, 0x5A};

// A caller's struct: kRoom bytes of canary.
struct Buffer {
  alignas(8) uint8_t bytes[kRoom];
  explicit Buffer(uint8_t canary) { memset(bytes, canary, sizeof(bytes)); }
  gradcompConfig_t* config() { return reinterpret_cast<gradcompConfig_t*>(bytes); }
  gradcompStats_t* stats() { return reinterpret_cast<gradcompStats_t*>(bytes); }
  // The bytes read as the struct of a header (a copy: no aliasing).
  template <typename T>
  T as() const {
    T t;
    memcpy(&t, bytes, sizeof(T));
    return t;
  }
  // The first byte at or after `from` that is not the canary (kRoom if none).
  size_t firstWritten(size_t from, uint8_t canary) const {
    for (size_t i = from; i < kRoom; ++i) {
      if (bytes[i] != canary) return i;
    }
    return kRoom;
  }
};

// Bytes [from, to) of a struct, to compare prefixes.
std::vector<uint8_t> bytesOf(const void* p, size_t from, size_t to) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  return std::vector<uint8_t>(b + from, b + to);
}

TEST(Abi, HistoricalLayoutsHaveTheSizesTheLibraryAccepts) {
  // LP64, as every header was built; the static_asserts in old_layouts.h
  // check that each layout is a prefix of today's.
  EXPECT_EQ(sizeof(old::Config01), 120u);
  EXPECT_EQ(sizeof(old::ConfigHier), 120u);
  EXPECT_EQ(sizeof(old::ConfigAuto), 128u);
  EXPECT_EQ(sizeof(old::ConfigPipe), 136u);
  EXPECT_EQ(sizeof(old::Config020), 144u);
  EXPECT_EQ(sizeof(old::Config030), 144u);
  EXPECT_EQ(sizeof(old::Config040), 152u);
  EXPECT_EQ(sizeof(old::Config050), 160u);
  EXPECT_EQ(sizeof(gradcompConfig_t), 168u);
  EXPECT_EQ(sizeof(old::Stats01), 112u);
  EXPECT_EQ(sizeof(old::StatsHier), 128u);
  EXPECT_EQ(sizeof(old::Stats020), 152u);
  EXPECT_EQ(sizeof(old::StatsSlots), 160u);
  EXPECT_EQ(sizeof(gradcompStats_t), 232u);
}

TEST(Abi, InitWritesOnlyTheCallersLayout) {
  gradcompConfig_t whole;
  ASSERT_EQ(gradcompConfigInit(&whole), gradcompSuccess);
  EXPECT_EQ(whole.structSize, sizeof(whole));
  for (size_t size : old::kConfigSizes) {
    for (uint8_t canary : kCanaries) {
      Buffer b(canary);
      ASSERT_EQ(gradcompConfigInitSized(b.config(), size), gradcompSuccess)
          << size << ": " << gradcompGetLastError();
      EXPECT_EQ(b.firstWritten(size, canary), kRoom) << "wrote past a " << size << "-byte config";
      EXPECT_EQ(b.as<gradcompConfig_t>().structSize, size);
      EXPECT_EQ(bytesOf(b.bytes, sizeof(size_t), size), bytesOf(&whole, sizeof(size_t), size))
          << size;
    }
  }
  // The oldest layout, read as its header had it.
  Buffer b(kCanaries[0]);
  ASSERT_EQ(gradcompConfigInitSized(b.config(), sizeof(old::Config01)), gradcompSuccess);
  const auto c = b.as<old::Config01>();
  EXPECT_EQ(c.method, (int)gradcompMethodQsgd);
  EXPECT_EQ(c.bits, 4);
  EXPECT_EQ(c.bucketSize, 512);
  EXPECT_EQ(c.elias, 0);
}

TEST(Abi, FromEnvWritesOnlyTheCallersLayout) {
  ScopedEnv bits("GRADCOMP_BITS", "6"), algo("GRADCOMP_ALGO", "ring");
  gradcompConfig_t whole;
  ASSERT_EQ(gradcompConfigFromEnv(&whole), gradcompSuccess) << gradcompGetLastError();
  for (size_t size : old::kConfigSizes) {
    for (uint8_t canary : kCanaries) {
      Buffer b(canary);
      ASSERT_EQ(gradcompConfigFromEnvSized(b.config(), size), gradcompSuccess)
          << size << ": " << gradcompGetLastError();
      EXPECT_EQ(b.firstWritten(size, canary), kRoom) << "wrote past a " << size << "-byte config";
      EXPECT_EQ(b.as<gradcompConfig_t>().structSize, size);
      EXPECT_EQ(b.as<old::ConfigHier>().bits, 6);
      EXPECT_EQ(b.as<old::ConfigHier>().algo, (int)gradcompAlgoRing);
      EXPECT_EQ(bytesOf(b.bytes, sizeof(size_t), size), bytesOf(&whole, sizeof(size_t), size))
          << size;
    }
  }
}

// A variable for a field the caller's struct lacks would be dropped without
// a word; it is refused, naming it, and nothing is written.
TEST(Abi, FromEnvRefusesAVariableForAFieldTheCallerLacks) {
  struct Case {
    const char* env;
    const char* value;
    size_t size;
    const char* field;
  };
  const Case refused[] = {
      {"GRADCOMP_PRIVATE_COMM", "1", sizeof(old::Config050), "privateComm"},
      {"GRADCOMP_LEVELS", "square", sizeof(old::Config040), "levels"},
      {"GRADCOMP_CHECK_CALLS", "1", sizeof(old::Config030), "checkCalls"},
      {"GRADCOMP_ROUNDING", "nearest", sizeof(old::ConfigPipe), "rounding"},
      {"GRADCOMP_CPU_TIMEOUT", "5", sizeof(old::ConfigPipe), "cpuTimeoutSec"},
      {"GRADCOMP_AUTO", "0", sizeof(old::ConfigHier), "autoTune"},
      {"GRADCOMP_PIPELINE_BYTES", "0", sizeof(old::ConfigAuto), "pipelineBytes"},
  };
  for (const Case& c : refused) {
    ScopedEnv e(c.env, c.value);
    Buffer b(kCanaries[0]);
    EXPECT_EQ(gradcompConfigFromEnvSized(b.config(), c.size), gradcompInvalidArgument) << c.env;
    EXPECT_EQ(std::string(gradcompGetLastError()),
              std::string(c.env) + " is set but the caller's gradcompConfig_t (structSize=" +
                  std::to_string(c.size) + ") has no field " + c.field +
                  ": build against this library's gradcomp.h, or unset it");
    EXPECT_EQ(b.firstWritten(0, kCanaries[0]), kRoom) << c.env;
    // The layout that has the field takes it.
    EXPECT_EQ(gradcompConfigFromEnvSized(b.config(), sizeof(gradcompConfig_t)), gradcompSuccess)
        << c.env << ": " << gradcompGetLastError();
  }
  ScopedEnv local("GRADCOMP_LOCAL_SIZE", "2");  // localSize is in the 120-byte layout
  Buffer b(kCanaries[0]);
  ASSERT_EQ(gradcompConfigFromEnvSized(b.config(), sizeof(old::ConfigHier)), gradcompSuccess)
      << gradcompGetLastError();
  EXPECT_EQ(b.as<old::ConfigHier>().localSize, 2);
}

// Sizes no header had: 0, inside structSize, the end of a field short of
// the struct's padding (elias, rounding, reserved0, reserved1), between layouts, a newer
// header's.
const size_t kUnknownConfigSizes[] = {0, 4, 8, 116, 124, 140, 148, 156, 164, 176, 4096};

TEST(Abi, UnknownConfigSizesAreRefusedNamingThemAndNothingIsWritten) {
  for (size_t size : kUnknownConfigSizes) {
    for (uint8_t canary : kCanaries) {
      Buffer b(canary);
      EXPECT_EQ(gradcompConfigInitSized(b.config(), size), gradcompInvalidArgument) << size;
      EXPECT_EQ(std::string(gradcompGetLastError()), old::refusedConfigSize(size));
      EXPECT_EQ(gradcompConfigFromEnvSized(b.config(), size), gradcompInvalidArgument) << size;
      EXPECT_EQ(std::string(gradcompGetLastError()), old::refusedConfigSize(size));
      EXPECT_EQ(b.firstWritten(0, canary), kRoom) << size;
    }
    // Readers refuse it before any other field: the rest is garbage here.
    Buffer b(kCanaries[0]);
    memcpy(b.bytes, &size, sizeof(size));  // structSize
    EXPECT_EQ(gradcompConfigValidate(b.config()), gradcompInvalidArgument) << size;
    EXPECT_EQ(std::string(gradcompGetLastError()), old::refusedConfigSize(size));
    gradcompComm_t comms[2] = {nullptr, nullptr};
    EXPECT_EQ(gradcompCommCreateCpu(2, b.config(), comms), gradcompInvalidArgument) << size;
    EXPECT_EQ(std::string(gradcompGetLastError()), old::refusedConfigSize(size));
    EXPECT_EQ(comms[0], nullptr);
    EXPECT_EQ(comms[1], nullptr);
  }
}

// Rank r's data at a step, the same for every config compared.
std::vector<float> stepData(int rank, int step, size_t n) {
  return gctest::normal(n, 1000 + 17 * (uint64_t)step + (uint64_t)rank);
}

// Every rank's in-place allreduce result at each of `steps` steps (the
// residuals carry from step to step).
template <typename World>
std::vector<std::vector<float>> allreduceSteps(World&& w, int steps, size_t n) {
  const int nranks = w.size();
  std::vector<std::vector<float>> bufs(nranks, std::vector<float>(n));
  std::vector<std::vector<float>> out;
  for (int s = 0; s < steps; ++s) {
    for (int r = 0; r < nranks; ++r) {
      const std::vector<float> x = stepData(r, s, n);
      bufs[r].assign(x.begin(), x.end());
    }
    const auto res = w.run([&](int r) {
      return gradcompAllReduce(bufs[r].data(), bufs[r].data(), n, ncclFloat32, ncclSum, w.comm(r),
                               nullptr);
    });
    for (int r = 0; r < nranks; ++r) EXPECT_EQ(res[r], gradcompSuccess) << "rank " << r;
    for (int r = 0; r < nranks; ++r) out.push_back(bufs[r]);
  }
  return out;
}

// A config of an older layout runs as the whole config with the fields its
// header lacks at their defaults, bit for bit, in the in-process world and
// over TCP (gradcompCommCreateSocket reads the caller's config where the
// NCCL comm does). The bytes after its structSize hold a whole config's
// nearest rounding: were they read, the results would be the nearest run's,
// which differ.
TEST(Abi, OlderLayoutAllreducesBitForBitAsTheWholeConfigAtDefaults) {
  constexpr int kRanks = 3, kSteps = 2;
  constexpr size_t kCount = 1000;
  gradcompConfig_t atDefaults;
  ASSERT_EQ(gradcompConfigInit(&atDefaults), gradcompSuccess);
  atDefaults.minElements = 0;
  atDefaults.bucketSize = 64;
  atDefaults.bits = 3;
  atDefaults.algo = gradcompAlgoTwoShot;
  atDefaults.seed = 77;
  atDefaults.autoTune = 0;  // over TCP, always compress (the in-process world never times)
  gradcompConfig_t nearest = atDefaults;
  nearest.rounding = gradcompRoundNearest;
  nearest.cpuTimeoutSec = 30.0f;
  ASSERT_EQ(gradcompConfigValidate(&nearest), gradcompSuccess) << gradcompGetLastError();

  const auto expect = allreduceSteps(gctest::CpuWorld(kRanks, atDefaults), kSteps, kCount);
  const auto nearestOut = allreduceSteps(gctest::CpuWorld(kRanks, nearest), kSteps, kCount);
  ASSERT_NE(expect, nearestOut) << "nearest rounding must change these results";
  for (size_t size : {sizeof(old::ConfigHier), sizeof(old::ConfigAuto), sizeof(old::ConfigPipe)}) {
    gradcompConfig_t older = nearest;
    older.structSize = size;
    EXPECT_EQ(allreduceSteps(gctest::CpuWorld(kRanks, older), kSteps, kCount), expect) << size;
  }
  gradcompConfig_t older = nearest;
  older.structSize = sizeof(old::ConfigPipe);  // has autoTune
  EXPECT_EQ(allreduceSteps(gctest::SocketWorld(kRanks, older), kSteps, kCount), expect);
}

TEST(Abi, GetStatsWritesOnlyTheCallersLayout) {
  gctest::CpuWorld w(2, [] {
    gradcompConfig_t c;
    gradcompConfigInit(&c);
    c.minElements = 0;
    return c;
  }());
  std::vector<std::vector<float>> bufs(2, gctest::normal(4096, 5));
  for (int step = 0; step < 2; ++step) {
    const auto res = w.run([&](int r) {
      return gradcompAllReduce(bufs[r].data(), bufs[r].data(), 4096, ncclFloat32, ncclSum,
                               w.comm(r), nullptr);
    });
    ASSERT_EQ(res[0], gradcompSuccess);
    ASSERT_EQ(res[1], gradcompSuccess);
  }
  gradcompStats_t whole;
  ASSERT_EQ(gradcompGetStats(w.comm(0), &whole), gradcompSuccess);
  ASSERT_EQ(whole.callsCompressed, 2u);
  ASSERT_EQ(whole.steps, 2u);
  ASSERT_GT(whole.bytesOnWire, 0u);
  for (size_t size : old::kStatsSizes) {
    for (uint8_t canary : kCanaries) {
      Buffer b(canary);
      ASSERT_EQ(gradcompGetStatsSized(w.comm(0), b.stats(), size), gradcompSuccess)
          << size << ": " << gradcompGetLastError();
      EXPECT_EQ(b.firstWritten(size, canary), kRoom) << "wrote past " << size << "-byte stats";
      const auto s = b.as<gradcompStats_t>();  // compared below size only
#define GCT_SAME(type, name)                                              \
  if (offsetof(gradcompStats_t, name) + sizeof(type) <= size) {           \
    EXPECT_EQ(s.name, whole.name) << #name << " in " << size << " bytes"; \
  }
      GCT_STATS_HEAD(GCT_SAME)
      GCT_STATS_SLOTS(GCT_SAME)
#undef GCT_SAME
      for (int a = 0; a < 6; ++a) EXPECT_EQ(s.callsPerAlgo[a], whole.callsPerAlgo[a]) << a;
      if (size >= offsetof(gradcompStats_t, callsPerBits) + sizeof(whole.callsPerBits)) {
        for (int b = 0; b < 9; ++b) EXPECT_EQ(s.callsPerBits[b], whole.callsPerBits[b]) << b;
      }
    }
  }
  for (size_t size :
       {(size_t)0, (size_t)8, sizeof(old::Stats01), (size_t)156, (size_t)168, (size_t)240}) {
    Buffer b(kCanaries[0]);
    EXPECT_EQ(gradcompGetStatsSized(w.comm(0), b.stats(), size), gradcompInvalidArgument) << size;
    EXPECT_EQ(std::string(gradcompGetLastError()), old::refusedStatsSize(size));
    EXPECT_EQ(b.firstWritten(0, kCanaries[0]), kRoom) << size;
  }
}

// The functions binaries built against headers before 0.3 call, looked up
// in the built library (the names are macros in today's header): they write
// the struct of the last such header, 144 and 160 bytes, and nothing after.
TEST(Abi, SymbolsOfEarlierHeadersWriteTheLastUnsizedStructs) {
  void* lib = dlopen(GRADCOMP_TEST_LIBRARY, RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(lib, nullptr) << dlerror();
  using ConfigFn = gradcompResult_t (*)(gradcompConfig_t*);
  using StatsFn = gradcompResult_t (*)(gradcompComm_t, gradcompStats_t*);
  using StatsSizedFn = gradcompResult_t (*)(gradcompComm_t, gradcompStats_t*, size_t);
  using CreateCpuFn = gradcompResult_t (*)(int, const gradcompConfig_t*, gradcompComm_t*);
  using AllReduceFn = gradcompResult_t (*)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t,
                                           gradcompComm_t, cudaStream_t);
  using DestroyFn = gradcompResult_t (*)(gradcompComm_t);
  auto init = reinterpret_cast<ConfigFn>(dlsym(lib, "gradcompConfigInit"));
  auto fromEnv = reinterpret_cast<ConfigFn>(dlsym(lib, "gradcompConfigFromEnv"));
  auto getStats = reinterpret_cast<StatsFn>(dlsym(lib, "gradcompGetStats"));
  auto getStatsSized = reinterpret_cast<StatsSizedFn>(dlsym(lib, "gradcompGetStatsSized"));
  auto createCpu = reinterpret_cast<CreateCpuFn>(dlsym(lib, "gradcompCommCreateCpu"));
  auto allReduce = reinterpret_cast<AllReduceFn>(dlsym(lib, "gradcompAllReduce"));
  auto destroy = reinterpret_cast<DestroyFn>(dlsym(lib, "gradcompCommDestroy"));
  ASSERT_TRUE(init && fromEnv && getStats && getStatsSized && createCpu && allReduce && destroy);
  EXPECT_NE(dlsym(lib, "gradcompConfigInitSized"), nullptr);
  EXPECT_NE(dlsym(lib, "gradcompConfigFromEnvSized"), nullptr);

  constexpr size_t kLegacyConfig = 144, kLegacyStats = 160;
  gradcompConfig_t whole;
  ASSERT_EQ(gradcompConfigInit(&whole), gradcompSuccess);
  for (uint8_t canary : kCanaries) {
    Buffer b(canary);
    ASSERT_EQ(init(b.config()), gradcompSuccess);
    EXPECT_EQ(b.firstWritten(kLegacyConfig, canary), kRoom);
    EXPECT_EQ(b.as<gradcompConfig_t>().structSize, kLegacyConfig);
    EXPECT_EQ(bytesOf(b.bytes, sizeof(size_t), kLegacyConfig),
              bytesOf(&whole, sizeof(size_t), kLegacyConfig));
  }
  {
    ScopedEnv bits("GRADCOMP_BITS", "7");
    Buffer b(kCanaries[0]);
    ASSERT_EQ(fromEnv(b.config()), gradcompSuccess);
    EXPECT_EQ(b.firstWritten(kLegacyConfig, kCanaries[0]), kRoom);
    EXPECT_EQ(b.as<gradcompConfig_t>().structSize, kLegacyConfig);
    EXPECT_EQ(b.as<gradcompConfig_t>().bits, 7);
  }

  Buffer cfg(kCanaries[0]);
  ASSERT_EQ(init(cfg.config()), gradcompSuccess);
  gradcompComm_t comm = nullptr;
  ASSERT_EQ(createCpu(1, cfg.config(), &comm), gradcompSuccess);
  std::vector<float> x(64, 1.0f);  // one rank: passed through
  ASSERT_EQ(allReduce(x.data(), x.data(), x.size(), ncclFloat32, ncclSum, comm, nullptr),
            gradcompSuccess);
  gradcompStats_t sized;
  ASSERT_EQ(getStatsSized(comm, &sized, sizeof(sized)), gradcompSuccess);
  EXPECT_EQ(sized.callsPassedThrough, 1u);
  for (uint8_t canary : kCanaries) {
    Buffer b(canary);
    ASSERT_EQ(getStats(comm, b.stats()), gradcompSuccess);
    EXPECT_EQ(b.firstWritten(kLegacyStats, canary), kRoom);
    EXPECT_EQ(b.as<gradcompStats_t>().callsPassedThrough, 1u);
    EXPECT_EQ(b.as<gradcompStats_t>().peerSlotsRejected, sized.peerSlotsRejected);
  }
  EXPECT_EQ(destroy(comm), gradcompSuccess);
  // Not closed: the library's thread-local error sentence of this thread
  // outlives the test.
}

}  // namespace
