// The one table of GRADCOMP_* environment variables: name, type, range,
// default and doc, declared once. Config fields are read from it by
// gradcompConfigFromEnv; docs/env.md lists every entry (a test checks).
#pragma once

#include <stddef.h>

#include <string>
#include <vector>

#include "gradcomp.h"

namespace gc {

enum class ParamKind { Int, Size, U64, Float, Choice, String };

struct ParamSpec {
  const char* env;
  ParamKind kind;
  ptrdiff_t offset;     // into gradcompConfig_t, or -1 for process-level knobs
  const char* field;    // the gradcompConfig_t field's name (null for process-level knobs)
  double min, max;      // inclusive range (Int/Size/Float)
  const char* choices;  // Choice: "name=value|name=value"
  const char* defaultText;
  const char* doc;
};

const ParamSpec* paramTable(size_t* count);
// Whether the project reads (or builds, or names) a GRADCOMP_* variable of
// this name: the table's and the others in config.cc's list.
bool isProjectEnvName(const char* name);
// For each GRADCOMP_* entry of env (NAME=value, as environ) that the project
// does not read, the sentence that says so and names the setting probably
// meant (within 2 edits, or a prefix) where one is.
std::vector<std::string> unknownSettings(const char* const* env);
// unknownSettings(environ) to stderr at WARN, the first time this process
// reads its settings from the environment (configFromEnvLenient).
void warnUnknownSettingsOnce();
// A config field's value as GRADCOMP_* spells it, for sentences: "qsgd (1)"
// for a choice field (method, algo, bitsMode, ...), else the number.
std::string settingValueName(const char* field, int value);

// gradcompConfigFromEnv's parse into *c (from the defaults), applying every
// valid variable even past a bad one; returns the first error. The LD_PRELOAD
// library uses it so that a rank with one bad value still decides which calls
// are eligible as its peers do.
gradcompResult_t configFromEnvLenient(gradcompConfig_t* c);

// How a GRADCOMP_* number is written (config.cc's parseUnsigned and
// parseFloat), said once here for every refusal of one: "GRADCOMP_BITS=0x8
// is not an integer in 2..8, in plain decimal digits (...)". gradcomp_perf's
// integer flags are read, and refused, the same way.
inline constexpr char kIntegerForm[] = "plain decimal digits (no sign, space or leading zero)";
// GRADCOMP_SEED also takes hex.
inline constexpr char kHexForm[] = "0x and 1 to 16 hex digits";
inline constexpr char kNumberForm[] =
    "a decimal number with a digit or '.' first (0.01, .5, 1e-3; no sign, space, comma, nan, inf "
    "or 0x)";

// A variable's value as a sentence shows it: as it is, or, where it has a
// blank, a control character, a byte past ASCII or a '"', in quotes with
// those written out ("4 ", "4\r", "\xc2\xa0"); cut at `max` characters,
// with the full length said (a path is shown whole: kShownPath).
constexpr size_t kShownPath = 4096;
std::string shownValue(const char* v, size_t max = 64);

// Process-level string knobs (not part of a config): value or fallback (set
// but empty: the fallback, with a warning naming the variable).
const char* paramString(const char* env, const char* fallback);

}  // namespace gc
