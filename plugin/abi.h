// The caller's header sets the sizes of gradcompConfig_t and gradcompStats_t
// (the Sized entry points; the header's macros pass sizeof). Fields are only
// appended, so every layout the library knows is a prefix of its own: the
// library reads and writes the caller's bytes only, and a config's missing
// trailing fields take their defaults.
#pragma once

#include <stddef.h>

#include "gradcomp.h"

namespace gc {

// What the pre-0.3 symbols gradcompConfigInit, gradcompConfigFromEnv and
// gradcompGetStats write: the struct of the last header that called them
// (they wrote sizeof of the library's struct, and this is that size). Frozen,
// so that appending a field never writes past those binaries' structs.
constexpr size_t kLegacyConfigSize = 144;
constexpr size_t kLegacyStatsSize = 160;

// gradcompInvalidArgument naming `structSize` and the sizes this library
// accepts, unless it is the size of a known layout.
gradcompResult_t checkConfigSize(size_t structSize);
gradcompResult_t checkStatsSize(size_t structSize);

// True when a field at `offset` of `bytes` bytes lies inside a config of
// `structSize` bytes (the caller's header has it).
inline bool configHasField(size_t structSize, size_t offset, size_t bytes) {
  return offset + bytes <= structSize;
}

// The library's defaults for every field (structSize = sizeof).
void configDefaults(gradcompConfig_t* c);

// A caller's config of any known layout as the library's whole struct: the
// caller's fields, then the defaults for those its header lacks; structSize
// becomes sizeof(gradcompConfig_t). Reads nothing past caller->structSize.
gradcompResult_t configFromCaller(const gradcompConfig_t* caller, gradcompConfig_t* full);

// configFromCaller, then every field checked as gradcompConfigValidate does:
// how every entry point that takes a caller's config reads it.
gradcompResult_t validConfigFromCaller(const gradcompConfig_t* caller, gradcompConfig_t* whole);

// The first structSize bytes of `full` (a checked size) into the caller's
// struct, structSize recording the caller's size.
void configToCaller(const gradcompConfig_t& full, gradcompConfig_t* caller, size_t structSize);

}  // namespace gc
