// gradcompConfig_t and gradcompStats_t as include/gradcomp.h had them on main
// (git log --first-parent -p -- include/gradcomp.h), written out field for
// field: the structs of callers built against older headers. Each layout
// after the 0.1 stats is checked here to be a prefix of today's struct.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <string>

#include "gradcomp.h"

namespace gctest {
namespace old {

// Every enum of gradcomp.h and nccl.h is an int in these structs.
// clang-format off
#define GCT_CONFIG_0_1(X)                                                          \
  X(size_t, structSize) X(int, method) X(int, algo) X(int, bits) X(int, bucketSize) \
  X(uint64_t, seed) X(size_t, minElements) X(int, errorFeedback)                    \
  X(int, ownerResidual) X(float, density) X(float, oversample)                      \
  X(float, sampleRate) X(int, select) X(int, valueType) X(float, momentum)          \
  X(int, momentumCorrection) X(float, clipNorm) X(int, momentumMasking)             \
  X(int, warmupSteps) X(int, bitsMode) X(int, bitsMin) X(int, bitsMax)              \
  X(float, varianceTarget) X(float, bitsBudget) X(int, budgetWindow) X(int, elias)
#define GCT_CONFIG_HIER(X) GCT_CONFIG_0_1(X) X(int, localSize)
#define GCT_CONFIG_AUTO(X) GCT_CONFIG_HIER(X) X(int, autoTune)
#define GCT_CONFIG_PIPE(X) GCT_CONFIG_AUTO(X) X(size_t, pipelineBytes)
#define GCT_CONFIG_0_2_0(X) GCT_CONFIG_PIPE(X) X(float, cpuTimeoutSec)
#define GCT_CONFIG_0_3_0(X) GCT_CONFIG_0_2_0(X) X(int, rounding)
#define GCT_CONFIG_0_4_0(X) GCT_CONFIG_0_3_0(X) X(int, checkCalls)
#define GCT_CONFIG_0_5_0(X) GCT_CONFIG_0_4_0(X) X(int, reserved0) X(int, levels)

#define GCT_STATS_HEAD(X)                                        \
  X(uint64_t, callsCompressed) X(uint64_t, callsPassedThrough)   \
  X(uint64_t, bytesIn) X(uint64_t, bytesOnWire)
#define GCT_STATS_TAIL(X)                                        \
  X(uint64_t, denseFallbacks) X(uint64_t, selectedLast)          \
  X(uint64_t, targetLast) X(int, bitsLast) X(uint64_t, steps)
#define GCT_STATS_HIER(X) GCT_STATS_TAIL(X) X(uint64_t, bytesInterNode)
#define GCT_STATS_RS(X) GCT_STATS_HIER(X) X(uint64_t, callsReduceScatter)
#define GCT_STATS_AUTO(X) GCT_STATS_RS(X) X(uint64_t, callsAutoPassed)
#define GCT_STATS_0_2_0(X) GCT_STATS_AUTO(X) X(uint64_t, piecesLast)
#define GCT_STATS_SLOTS(X) GCT_STATS_0_2_0(X) X(uint64_t, peerSlotsRejected)
// clang-format on

#define GCT_DECLARE(type, name) type name;

struct Config01 {  // 972b29a, the first header (0.1)
  GCT_CONFIG_0_1(GCT_DECLARE)
};
struct ConfigHier {  // 45ff2b2 (0.1): localSize, in Config01's padding
  GCT_CONFIG_HIER(GCT_DECLARE)
};
struct ConfigAuto {  // ede9e50 (0.1): autoTune
  GCT_CONFIG_AUTO(GCT_DECLARE)
};
struct ConfigPipe {  // d2d1a3e (0.1): pipelineBytes
  GCT_CONFIG_PIPE(GCT_DECLARE)
};
struct Config020 {  // 138bbbe, released as 0.2.0 (4eafaac): cpuTimeoutSec
  GCT_CONFIG_0_2_0(GCT_DECLARE)
};
struct Config030 {  // 0.3.0: rounding, in Config020's padding
  GCT_CONFIG_0_3_0(GCT_DECLARE)
};
struct Config040 {  // 0.4.0: checkCalls; the last layout before 0.5
  GCT_CONFIG_0_4_0(GCT_DECLARE)
};
struct Config050 {  // 0.5.0: reserved0, levels; the last layout before 0.6
  GCT_CONFIG_0_5_0(GCT_DECLARE)
};

struct Stats01 {  // 972b29a (0.1): 5 callsPerAlgo entries, no prefix of today's
  GCT_STATS_HEAD(GCT_DECLARE)
  uint64_t callsPerAlgo[5];
  GCT_STATS_TAIL(GCT_DECLARE)
};
struct StatsHier {  // 45ff2b2 (0.1): callsPerAlgo[6], bytesInterNode
  GCT_STATS_HEAD(GCT_DECLARE)
  uint64_t callsPerAlgo[6];
  GCT_STATS_HIER(GCT_DECLARE)
};
struct StatsRs {  // c21a4f7 (0.1): callsReduceScatter
  GCT_STATS_HEAD(GCT_DECLARE)
  uint64_t callsPerAlgo[6];
  GCT_STATS_RS(GCT_DECLARE)
};
struct StatsAuto {  // ede9e50 (0.1): callsAutoPassed
  GCT_STATS_HEAD(GCT_DECLARE)
  uint64_t callsPerAlgo[6];
  GCT_STATS_AUTO(GCT_DECLARE)
};
struct Stats020 {  // d2d1a3e, released as 0.2.0: piecesLast
  GCT_STATS_HEAD(GCT_DECLARE)
  uint64_t callsPerAlgo[6];
  GCT_STATS_0_2_0(GCT_DECLARE)
};
struct StatsSlots {  // 36891fb (0.2): peerSlotsRejected, the last layout before 0.3's sizes
  GCT_STATS_HEAD(GCT_DECLARE)
  uint64_t callsPerAlgo[6];
  GCT_STATS_SLOTS(GCT_DECLARE)
};

#undef GCT_DECLARE

// Prefixes: every field of an older layout where today's struct has it.
#define GCT_SAME_OFFSET(Old, New, type, name)                                       \
  static_assert(offsetof(Old, name) == offsetof(New, name) &&                       \
                    sizeof(((Old*)nullptr)->name) == sizeof(((New*)nullptr)->name), \
                #Old "." #name " is not where " #New " has it");
#define GCT_CONFIG_AT(type, name) GCT_SAME_OFFSET(Config050, gradcompConfig_t, type, name)
#define GCT_STATS_AT(type, name) GCT_SAME_OFFSET(StatsSlots, gradcompStats_t, type, name)
GCT_CONFIG_0_5_0(GCT_CONFIG_AT)
static_assert(offsetof(gradcompConfig_t, levels) >= sizeof(Config040),
              "levels lies in a 0.4 caller's bytes");
static_assert(offsetof(gradcompConfig_t, privateComm) >= sizeof(Config050),
              "privateComm lies in a 0.5 caller's bytes");
GCT_STATS_HEAD(GCT_STATS_AT)
GCT_STATS_SLOTS(GCT_STATS_AT)
static_assert(offsetof(StatsSlots, callsPerAlgo) == offsetof(gradcompStats_t, callsPerAlgo) &&
                  sizeof(StatsSlots::callsPerAlgo) == sizeof(gradcompStats_t::callsPerAlgo),
              "callsPerAlgo moved");
#undef GCT_CONFIG_AT
#undef GCT_STATS_AT
#undef GCT_SAME_OFFSET

// The config and stats sizes the library must accept, oldest first; Config01
// has ConfigHier's size (localSize filled its padding), Config030 has
// Config020's (rounding filled its padding).
constexpr size_t kConfigSizes[] = {sizeof(ConfigHier),      sizeof(ConfigAuto), sizeof(ConfigPipe),
                                   sizeof(Config020),       sizeof(Config040),  sizeof(Config050),
                                   sizeof(gradcompConfig_t)};
constexpr size_t kStatsSizes[] = {sizeof(StatsHier), sizeof(StatsRs),    sizeof(StatsAuto),
                                  sizeof(Stats020),  sizeof(StatsSlots), sizeof(gradcompStats_t)};

inline std::string libraryVersion() {
  return std::to_string(GRADCOMP_VERSION_MAJOR) + "." + std::to_string(GRADCOMP_VERSION_MINOR) +
         "." + std::to_string(GRADCOMP_VERSION_PATCH);
}

// The library's sentence for a size it does not know.
inline std::string refusedConfigSize(size_t structSize) {
  return "config structSize=" + std::to_string(structSize) +
         " is not the size of a gradcompConfig_t this library (" + libraryVersion() +
         ") knows (120, 128, 136, 144, 152, 160 or 168 bytes): " +
         (structSize > 168
              ? "the caller was built against a newer gradcomp.h than this library's"
              : "start from gradcompConfigInit, which passes sizeof(gradcompConfig_t)");
}

inline std::string refusedStatsSize(size_t structSize) {
  return "stats structSize=" + std::to_string(structSize) +
         " is not the size of a gradcompStats_t this library (" + libraryVersion() +
         ") knows (128, 136, 144, 152, 160 or 232 bytes): " +
         (structSize > 232 ? "the caller was built against a newer gradcomp.h than this library's"
                           : "call gradcompGetStats, which passes sizeof(gradcompStats_t)");
}

}  // namespace old
}  // namespace gctest
