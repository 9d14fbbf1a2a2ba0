// The one table of GRADCOMP_* environment variables: name, type, range,
// default and doc, declared once. Config fields are read from it by
// gradcompConfigFromEnv; docs/env.md lists every entry (a test checks).
#pragma once

#include <stddef.h>

#include "gradcomp.h"

namespace gc {

enum class ParamKind { Int, Size, U64, Float, Choice, String };

struct ParamSpec {
  const char* env;
  ParamKind kind;
  ptrdiff_t offset;     // into gradcompConfig_t, or -1 for process-level knobs
  double min, max;      // inclusive range (Int/Size/Float)
  const char* choices;  // Choice: "name=value|name=value"
  const char* defaultText;
  const char* doc;
};

const ParamSpec* paramTable(size_t* count);

// Process-level string knobs (not part of a config): value or fallback.
const char* paramString(const char* env, const char* fallback);

}  // namespace gc
