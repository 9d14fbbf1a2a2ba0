#include "abi.h"

#include <string.h>

#include <string>

#include "checks.h"

namespace gc {
namespace {

constexpr size_t alignUp(size_t x, size_t a) {
  return (x + a - 1) / a * a;
}

// sizeof a struct that ends with field f of T: the size of T in the header
// whose last field f was (every layout starts with an 8-byte field, so its
// alignment is T's).
#define GC_LAYOUT_END(T, f) alignUp(offsetof(T, f) + sizeof(((T*)nullptr)->f), alignof(T))

// Every gradcompConfig_t of include/gradcomp.h's history on main, oldest
// first; each is a prefix of the next. 120: 0.1 (its first layout ended at
// elias, localSize filled the padding after it); 128: autoTune; 136:
// pipelineBytes; 144: cpuTimeoutSec (0.2.0), then rounding in its padding
// (0.3); 152: checkCalls (0.4); 160: levels (0.5), after reserved0, which
// makes 0.4's tail padding a field so that levels lies past a 0.4 caller's
// bytes; 168: privateComm (0.6), after reserved1, 0.5's tail padding made a
// field in the same way.
constexpr size_t kConfigSizes[] = {
    GC_LAYOUT_END(gradcompConfig_t, localSize),     GC_LAYOUT_END(gradcompConfig_t, autoTune),
    GC_LAYOUT_END(gradcompConfig_t, pipelineBytes), GC_LAYOUT_END(gradcompConfig_t, rounding),
    GC_LAYOUT_END(gradcompConfig_t, checkCalls),    GC_LAYOUT_END(gradcompConfig_t, levels),
    GC_LAYOUT_END(gradcompConfig_t, privateComm),
};
// Every gradcompStats_t since callsPerAlgo grew to 6 entries (the hierarchy):
// 128: bytesInterNode; 136: callsReduceScatter; 144: callsAutoPassed; 152:
// piecesLast (0.2.0); 160: peerSlotsRejected; 232: callsPerBits (0.3). The 0.1 layout before them
// (callsPerAlgo[5], 112 bytes) is no prefix and is refused.
constexpr size_t kStatsSizes[] = {
    GC_LAYOUT_END(gradcompStats_t, bytesInterNode),
    GC_LAYOUT_END(gradcompStats_t, callsReduceScatter),
    GC_LAYOUT_END(gradcompStats_t, callsAutoPassed),
    GC_LAYOUT_END(gradcompStats_t, piecesLast),
    GC_LAYOUT_END(gradcompStats_t, peerSlotsRejected),
    GC_LAYOUT_END(gradcompStats_t, callsPerBits),
};

#undef GC_LAYOUT_END

template <size_t N>
constexpr bool contains(const size_t (&sizes)[N], size_t x) {
  for (size_t s : sizes) {
    if (s == x) return true;
  }
  return false;
}

template <size_t N>
constexpr bool increasing(const size_t (&sizes)[N]) {
  for (size_t i = 1; i < N; ++i) {
    if (sizes[i] <= sizes[i - 1]) return false;
  }
  return true;
}

static_assert(offsetof(gradcompConfig_t, structSize) == 0, "structSize is read before the layout");
static_assert(kConfigSizes[sizeof(kConfigSizes) / sizeof(kConfigSizes[0]) - 1] ==
                  sizeof(gradcompConfig_t),
              "a field appended to gradcompConfig_t needs its layout in kConfigSizes");
static_assert(kStatsSizes[sizeof(kStatsSizes) / sizeof(kStatsSizes[0]) - 1] ==
                  sizeof(gradcompStats_t),
              "a field appended to gradcompStats_t needs its layout in kStatsSizes");
static_assert(increasing(kConfigSizes) && increasing(kStatsSizes),
              "every appended layout changes the size: the size is all the caller tells");
static_assert(contains(kConfigSizes, kLegacyConfigSize) && contains(kStatsSizes, kLegacyStatsSize),
              "the pre-0.3 symbols write a known layout");

template <size_t N>
gradcompResult_t checkSize(const char* what, const char* type, size_t structSize,
                           const size_t (&sizes)[N], const char* hint) {
  if (contains(sizes, structSize)) return gradcompSuccess;
  std::string known;
  for (size_t i = 0; i < N; ++i) {
    if (i > 0) known += i + 1 < N ? ", " : " or ";
    known += std::to_string(sizes[i]);
  }
  return setError(
      gradcompInvalidArgument,
      "%s structSize=%zu is not the size of a %s this library (%d.%d.%d) knows (%s bytes): %s",
      what, structSize, type, GRADCOMP_VERSION_MAJOR, GRADCOMP_VERSION_MINOR,
      GRADCOMP_VERSION_PATCH, known.c_str(),
      structSize > sizes[N - 1] ? "the caller was built against a newer gradcomp.h than this "
                                  "library's"
                                : hint);
}

}  // namespace

gradcompResult_t checkConfigSize(size_t structSize) {
  return checkSize("config", "gradcompConfig_t", structSize, kConfigSizes,
                   "start from gradcompConfigInit, which passes sizeof(gradcompConfig_t)");
}

gradcompResult_t checkStatsSize(size_t structSize) {
  return checkSize("stats", "gradcompStats_t", structSize, kStatsSizes,
                   "call gradcompGetStats, which passes sizeof(gradcompStats_t)");
}

gradcompResult_t configFromCaller(const gradcompConfig_t* caller, gradcompConfig_t* full) {
  GC_ARG(caller != nullptr, "config is NULL");
  size_t structSize;
  memcpy(&structSize, caller, sizeof(structSize));
  GC_CHECK(checkConfigSize(structSize));
  configDefaults(full);
  memcpy(full, caller, structSize);
  full->structSize = sizeof(*full);
  return gradcompSuccess;
}

void configToCaller(const gradcompConfig_t& full, gradcompConfig_t* caller, size_t structSize) {
  gradcompConfig_t out = full;
  out.structSize = structSize;
  memcpy(caller, &out, structSize);
}

}  // namespace gc
