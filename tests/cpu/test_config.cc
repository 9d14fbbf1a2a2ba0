// Configuration: defaults, GRADCOMP_* overrides, errors that name the value
// and range, and docs/env.md listing every variable.
#include <gtest/gtest.h>
#include <locale.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "gradcomp.h"
#include "plugin/params.h"
#include "tests/common/reap_child.h"
#include "tests/common/test_util.h"

namespace {

using gctest::ScopedEnv;

TEST(Config, DefaultsAreValid) {
  gradcompConfig_t c;
  ASSERT_EQ(gradcompConfigInit(&c), gradcompSuccess);
  EXPECT_EQ(c.structSize, sizeof(c));
  EXPECT_EQ(c.method, gradcompMethodQsgd);
  EXPECT_EQ(c.bits, 4);
  EXPECT_EQ(c.bucketSize, 512);
  EXPECT_EQ(c.minElements, 16384u);
  EXPECT_EQ(c.errorFeedback, 1);
  EXPECT_EQ(c.pipelineBytes, 0u);  // off until measured on a GPU (docs/env.md)
  // The threshold sample's floor (max(1024, 64/density) entries): measured
  // 12% faster than 0.01 on the H200 at the same contract (docs/sparse.md).
  EXPECT_FLOAT_EQ(c.sampleRate, 1e-4f);
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompSuccess);
}

TEST(Config, EnvironmentOverrides) {
  ScopedEnv a("GRADCOMP_METHOD", "topk"), b("GRADCOMP_BITS", "8"), c("GRADCOMP_DENSITY", "0.001"),
      d("GRADCOMP_MIN_ELEMENTS", "0"), e("GRADCOMP_VALUE_TYPE", "bfloat16"),
      f("GRADCOMP_SEED", "0xffffffffffffffff"), g("GRADCOMP_ALGO", "SPARSE"),
      h("GRADCOMP_PIPELINE_BYTES", "8388608");
  gradcompConfig_t cfg;
  ASSERT_EQ(gradcompConfigFromEnv(&cfg), gradcompSuccess) << gradcompGetLastError();
  EXPECT_EQ(cfg.method, gradcompMethodTopk);
  EXPECT_EQ(cfg.bits, 8);
  EXPECT_FLOAT_EQ(cfg.density, 0.001f);
  EXPECT_EQ(cfg.minElements, 0u);
  EXPECT_EQ(cfg.valueType, ncclBfloat16);
  EXPECT_EQ(cfg.seed, 0xffffffffffffffffull);
  EXPECT_EQ(cfg.algo, gradcompAlgoSparseAllgather);
  EXPECT_EQ(cfg.pipelineBytes, 8388608u);
}

// A program may set a locale whose decimal point is ',' (setlocale(LC_ALL,
// "") under LANG=de_DE.UTF-8) before its first NCCL call, where the
// LD_PRELOAD library reads the environment: GRADCOMP_DENSITY=0.01 must still
// be 0.01, and 0,01 refused. The locale is made for the test with localedef
// (the machine's own locales may not include one with ',').
TEST(Config, FloatsReadTheSameUnderALocaleWithADecimalComma) {
  char dir[] = "/tmp/gradcomp-locale-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string made = std::string(dir) + "/de_DE.UTF-8";
  const std::string cmd = "localedef -i de_DE -f UTF-8 '" + made + "' > /dev/null 2>&1";
  if (system(cmd.c_str()) != 0) {
    GTEST_SKIP() << "cannot make a de_DE locale (" << cmd << " failed): install localedef and "
                 << "the locale sources (Debian: locales)";
  }
  ScopedEnv locpath("LOCPATH", dir);
  struct CLocaleAfter {
    ~CLocaleAfter() { setlocale(LC_NUMERIC, "C"); }
  } restore;
  ASSERT_NE(setlocale(LC_NUMERIC, "de_DE.UTF-8"), nullptr);
  ASSERT_EQ(strtod("0,5", nullptr), 0.5) << "the locale's decimal point is not ','";
  gradcompConfig_t cfg;
  {
    ScopedEnv d("GRADCOMP_DENSITY", "0.01"), m("GRADCOMP_MOMENTUM", "0.875");
    EXPECT_EQ(gradcompConfigFromEnv(&cfg), gradcompSuccess) << gradcompGetLastError();
  }
  {
    ScopedEnv d("GRADCOMP_DENSITY", "0,01");
    gradcompConfig_t other;
    EXPECT_EQ(gradcompConfigFromEnv(&other), gradcompInvalidArgument);
  }
  setlocale(LC_NUMERIC, "C");
  EXPECT_FLOAT_EQ(cfg.density, 0.01f);
  EXPECT_EQ(cfg.momentum, 0.875f);
  EXPECT_EQ(system(("rm -rf '" + std::string(dir) + "'").c_str()), 0);
}

struct BadEnv {
  const char* name;
  const char* value;
  const char* message;
};

// The form a refused number is written in, as every such sentence ends (plugin/params.h).
#define INT_FORM ", in plain decimal digits (no sign, space or leading zero)"
#define SEED_FORM \
  ", in plain decimal digits (no sign, space or leading zero) or 0x and 1 to 16 hex digits"
#define NUMBER_FORM                                                                               \
  ", in a decimal number with a digit or '.' first (0.01, .5, 1e-3; no sign, space, comma, nan, " \
  "inf or 0x)"

// Each case's variable, set alone, refused with exactly its sentence.
template <size_t N>
void expectRefusedSaying(const BadEnv (&cases)[N]) {
  for (const auto& bc : cases) {
    ScopedEnv env(bc.name, bc.value);
    gradcompConfig_t cfg;
    EXPECT_EQ(gradcompConfigFromEnv(&cfg), gradcompInvalidArgument) << bc.name << "=" << bc.value;
    EXPECT_STREQ(gradcompGetLastError(), bc.message);
  }
}

// A refused number said the range but not how to write one: GRADCOMP_BITS=0x10, 1e3, " 8",
// +8 or a full-width 8 read "is not an integer in 2..8", which 8 is. Each refusal now says the
// form the parser takes, the same words for every setting of the kind.
TEST(Config, NumberRefusalsSayTheFormTheyTake) {
  const BadEnv cases[] = {
      {"GRADCOMP_BITS", "0x10",
       "GRADCOMP_BITS=0x10 is not an integer in 2..8, in plain decimal digits (no sign, space or "
       "leading zero)"},
      {"GRADCOMP_BITS", "1e3", "GRADCOMP_BITS=1e3 is not an integer in 2..8" INT_FORM},
      {"GRADCOMP_BITS", " 8", "GRADCOMP_BITS=\" 8\" is not an integer in 2..8" INT_FORM},
      {"GRADCOMP_BITS", "+8", "GRADCOMP_BITS=+8 is not an integer in 2..8" INT_FORM},
      {"GRADCOMP_BITS", "\xef\xbc\x98",  // U+FF18, a full-width 8
       "GRADCOMP_BITS=\"\\xef\\xbc\\x98\" is not an integer in 2..8" INT_FORM},
      {"GRADCOMP_LOCAL_SIZE", "0",
       "GRADCOMP_LOCAL_SIZE=0 is not auto or an integer in 1..65536" INT_FORM},
      {"GRADCOMP_MIN_ELEMENTS", "1e3",
       "GRADCOMP_MIN_ELEMENTS=1e3 is not an integer in 0..1000000000000000000" INT_FORM},
      {"GRADCOMP_SEED", "+8",
       "GRADCOMP_SEED=+8 is not an unsigned 64-bit integer, in plain decimal digits (no sign, "
       "space or leading zero) or 0x and 1 to 16 hex digits"},
      {"GRADCOMP_SEED", "1e3", "GRADCOMP_SEED=1e3 is not an unsigned 64-bit integer" SEED_FORM},
      {"GRADCOMP_DENSITY", "0x10",
       "GRADCOMP_DENSITY=0x10 is not a number in [1e-06, 1], in a decimal number with a digit or "
       "'.' first (0.01, .5, 1e-3; no sign, space, comma, nan, inf or 0x)"},
      {"GRADCOMP_DENSITY", "+0.5",
       "GRADCOMP_DENSITY=+0.5 is not a number in [1e-06, 1]" NUMBER_FORM},
      {"GRADCOMP_DENSITY", "0,5", "GRADCOMP_DENSITY=0,5 is not a number in [1e-06, 1]" NUMBER_FORM},
      {"GRADCOMP_MOMENTUM", "inf",
       "GRADCOMP_MOMENTUM=inf is not a number in [0, 0.999999]" NUMBER_FORM},
  };
  expectRefusedSaying(cases);
  // What the form allows is taken: 1e-3 and .5 are numbers, 0x10 a seed.
  ScopedEnv a("GRADCOMP_DENSITY", "1e-3"), b("GRADCOMP_MOMENTUM", ".5"), c("GRADCOMP_SEED", "0x10");
  gradcompConfig_t cfg;
  ASSERT_EQ(gradcompConfigFromEnv(&cfg), gradcompSuccess) << gradcompGetLastError();
  EXPECT_FLOAT_EQ(cfg.density, 1e-3f);
  EXPECT_FLOAT_EQ(cfg.momentum, 0.5f);
  EXPECT_EQ(cfg.seed, 16u);
}

// A path (GRADCOMP_NCCL_LIBRARY in the preload's warnings) is shown whole,
// written out as a value is: cut at 64 characters it hid the file name the
// sentence is about.
TEST(Config, APathIsShownWholeAndWrittenOut) {
  const std::string dir(80, 'd');
  const std::string path = "/opt/" + dir + "/j\xc3\xbcrgen/libnccl.so.2";
  EXPECT_EQ(gc::shownValue(path.c_str(), gc::kShownPath),
            "\"/opt/" + dir + "/j\\xc3\\xbcrgen/libnccl.so.2\"");
  EXPECT_EQ(gc::shownValue(("/opt/" + dir + "/libnccl.so.2").c_str(), gc::kShownPath),
            "/opt/" + dir + "/libnccl.so.2");
  // A value is still cut, with its length said.
  EXPECT_EQ(
      gc::shownValue(path.c_str()).find("... (" + std::to_string(path.size()) + " characters)") !=
          std::string::npos,
      true);
}

TEST(Config, BadEnvironmentValuesNameVariableAndRange) {
  const BadEnv cases[] = {
      {"GRADCOMP_BITS", "9", "GRADCOMP_BITS=9 is not an integer in 2..8" INT_FORM},
      {"GRADCOMP_BITS", "four", "GRADCOMP_BITS=four is not an integer in 2..8" INT_FORM},
      {"GRADCOMP_BITS", "1", "GRADCOMP_BITS=1 is not an integer in 2..8" INT_FORM},
      {"GRADCOMP_BUCKET", "100000",
       "GRADCOMP_BUCKET=100000 is not an integer in 32..8192" INT_FORM},
      {"GRADCOMP_DENSITY", "0", "GRADCOMP_DENSITY=0 is not a number in [1e-06, 1]" NUMBER_FORM},
      {"GRADCOMP_DENSITY", "nan", "GRADCOMP_DENSITY=nan is not a number in [1e-06, 1]" NUMBER_FORM},
      // The whole value is the number: 0.01 followed by more is refused, not read as 0.01.
      {"GRADCOMP_DENSITY", "0.01abc",
       "GRADCOMP_DENSITY=0.01abc is not a number in [1e-06, 1]" NUMBER_FORM},
      {"GRADCOMP_METHOD", "zip", "GRADCOMP_METHOD=zip is not one of none|qsgd|topk|randk|dgc"},
      {"GRADCOMP_SEED", "-1", "GRADCOMP_SEED=-1 is not an unsigned 64-bit integer" SEED_FORM},
      {"GRADCOMP_EF", "2", "GRADCOMP_EF=2 is not an integer in 0..1" INT_FORM},
      {"GRADCOMP_PIPELINE_BYTES", "-1",
       "GRADCOMP_PIPELINE_BYTES=-1 is not an integer in 0..1000000000000000000" INT_FORM},
      // A nonzero value a float flushes to 0 ("off" for the clipping) is refused, not changed.
      {"GRADCOMP_CLIP_NORM", "1e-50",
       "GRADCOMP_CLIP_NORM=1e-50 is not a number in [0, 1e+30] that a float holds: a nonzero "
       "value must be at least 1.17549e-38"},
      // Nor one a double does not hold (an underflow, written either way): refused as that
      // float, not as a number out of [0, 1e+30] or of another form, which it is not.
      {"GRADCOMP_CLIP_NORM", "1e-400",
       "GRADCOMP_CLIP_NORM=1e-400 is not a number in [0, 1e+30] that a float holds: a nonzero "
       "value must be at least 1.17549e-38"},
      {"GRADCOMP_MOMENTUM",
       "0.00000000000000000000000000000000000000000000000000000000000000000"
       "0000000000000000000000000000000000000000000000000000000000000000000"
       "0000000000000000000000000000000000000000000000000000000000000000000"
       "0000000000000000000000000000000000000000000000000000000000000000000"
       "0000000000000000000000000000000000000000000000000000000000000000000"
       "01",
       "GRADCOMP_MOMENTUM=0.00000000000000000000000000000000000000000000000000000000000000... (337 "
       "characters) is not a number in [0, 0.999999] that a float holds: a nonzero value must be "
       "at least 1.17549e-38"},
      {"GRADCOMP_MOMENTUM", "1000e-403",
       "GRADCOMP_MOMENTUM=1000e-403 is not a number in [0, 0.999999] that a float holds: a nonzero "
       "value must be at least 1.17549e-38"},
      // An overflow is past the range.
      {"GRADCOMP_CLIP_NORM", "1e400",
       "GRADCOMP_CLIP_NORM=1e400 is not a number in [0, 1e+30]" NUMBER_FORM},
      {"GRADCOMP_DENSITY", "1e-400",
       "GRADCOMP_DENSITY=1e-400 is not a number in [1e-06, 1]" NUMBER_FORM},
      // A long value is cut at 64 characters, so the range after it is never lost.
      {"GRADCOMP_BITS", "1111111111222222222233333333334444444444555555555566666666667777777777",
       "GRADCOMP_BITS=1111111111222222222233333333334444444444555555555566666666667777... (70 "
       "characters) is not an integer in 2..8" INT_FORM},
      // A blank, a control character or a '"' puts the value in quotes with
      // those written out: "4 " shown bare read as a refused 4, and a CR (a
      // CRLF environment file) sent the cursor back over the variable's name.
      {"GRADCOMP_BITS", "4 ", "GRADCOMP_BITS=\"4 \" is not an integer in 2..8" INT_FORM},
      {"GRADCOMP_BITS", "4\r", "GRADCOMP_BITS=\"4\\r\" is not an integer in 2..8" INT_FORM},
      {"GRADCOMP_DENSITY", "\t0.5\n",
       "GRADCOMP_DENSITY=\"\\t0.5\\n\" is not a number in [1e-06, 1]" NUMBER_FORM},
      {"GRADCOMP_METHOD", "\"qsgd\"",
       "GRADCOMP_METHOD=\"\\\"qsgd\\\"\" is not one of none|qsgd|topk|randk|dgc"},
      {"GRADCOMP_ALGO", "ring\x1b[2J\\",
       "GRADCOMP_ALGO=\"ring\\x1b[2J\\\\\" is not one of auto|twoshot|ring|allgather|sparse|hier"},
      {"GRADCOMP_SEED", "1 ", "GRADCOMP_SEED=\"1 \" is not an unsigned 64-bit integer" SEED_FORM},
      // A byte past ASCII is quoted and written out too: a no-break space
      // (U+00A0, pasted from a web page) shown raw read as a refused 4, and
      // a byte that is no UTF-8 went raw into the sentence.
      {"GRADCOMP_BITS", "4\xc2\xa0",
       "GRADCOMP_BITS=\"4\\xc2\\xa0\" is not an integer in 2..8" INT_FORM},
      {"GRADCOMP_METHOD", "q\xffsgd",
       "GRADCOMP_METHOD=\"q\\xffsgd\" is not one of none|qsgd|topk|randk|dgc"},
      // Cut at 64 characters as a bare value is, the blank past the cut still quoting it.
      {"GRADCOMP_BITS", "1111111111222222222233333333334444444444555555555566666666667777777 ",
       "GRADCOMP_BITS=\"1111111111222222222233333333334444444444555555555566666666667777\"... (68 "
       "characters) is not an integer in 2..8" INT_FORM},
  };
  expectRefusedSaying(cases);
}

TEST(Config, BucketMustBeMultipleOf32) {
  ScopedEnv env("GRADCOMP_BUCKET", "500");
  gradcompConfig_t cfg;
  EXPECT_EQ(gradcompConfigFromEnv(&cfg), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(), "bucketSize=500 (GRADCOMP_BUCKET) is not a multiple of 32");
}

TEST(Config, ValidateCatchesBadFieldsAndUninitializedStruct) {
  gradcompConfig_t c;
  memset(&c, 0, sizeof(c));
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "gradcompConfigInit"), nullptr);
  gradcompConfigInit(&c);
  c.bitsMin = 6;
  c.bitsMax = 3;
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "bitsMin=6..bitsMax=3"), nullptr);
  gradcompConfigInit(&c);
  c.momentum = 1.0f;
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(),
               "momentum=1 (GRADCOMP_MOMENTUM) is out of range [0, 0.999999]");
  // Just past a bound: shown in the digits that tell it from the bound, not
  // rounded to a value in range (%g's six digits showed momentum=1 and
  // bitsBudget=3 below bitsMin=3).
  gradcompConfigInit(&c);
  c.momentum = 0.9999995f;
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(),
               "momentum=0.9999995 (GRADCOMP_MOMENTUM) is out of range [0, 0.999999]");
  // The bounds themselves are in range.
  gradcompConfigInit(&c);
  c.density = 1.0f;
  c.momentum = 0.999999f;
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompSuccess) << gradcompGetLastError();
  gradcompConfigInit(&c);
  c.density = nextafterf(1e-6f, 0.0f);
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(),
               "density=9.999999e-07 (GRADCOMP_DENSITY) is out of range [1e-06, 1]");
  gradcompConfigInit(&c);
  c.bitsMode = gradcompBitsBudget;
  c.bitsMin = 3;
  c.bitsBudget = nextafterf(3.0f, 0.0f);
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(),
               "bitsBudget=2.9999998 (GRADCOMP_BITS_BUDGET) is below bitsMin=3 "
               "(GRADCOMP_BITS_MIN): no bit width keeps the budget");
  EXPECT_EQ(gradcompConfigValidate(nullptr), gradcompInvalidArgument);
  EXPECT_EQ(gradcompConfigInitSized(nullptr, sizeof(gradcompConfig_t)), gradcompInvalidArgument);
  EXPECT_EQ(gradcompConfigFromEnvSized(nullptr, sizeof(gradcompConfig_t)), gradcompInvalidArgument);
}

TEST(Config, ErrorStringsForEveryResult) {
  for (int r = 0; r < gradcompNumResults; ++r) {
    const char* s = gradcompGetErrorString((gradcompResult_t)r);
    ASSERT_NE(s, nullptr);
    EXPECT_STRNE(s, "unknown result code") << r;
  }
  EXPECT_STREQ(gradcompGetErrorString((gradcompResult_t)99), "unknown result code");
  EXPECT_EQ(gradcompGetVersion(), GRADCOMP_VERSION_CODE);
}

#ifndef GRADCOMP_TEST_SOURCE_DIR
#define GRADCOMP_TEST_SOURCE_DIR "."
#endif

// docs/env.md's text (a test failure where it cannot be read). CTest sets
// GRADCOMP_SOURCE_DIR; run by hand from any directory (or by
// tools/sanitize.sh), the binary knows the tree it was built from.
std::string envDoc() {
  const char* root = getenv("GRADCOMP_SOURCE_DIR");
  const std::string path = std::string(root ? root : GRADCOMP_TEST_SOURCE_DIR) + "/docs/env.md";
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << "cannot read " << path;
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(Config, DocsListEveryVariable) {
  const std::string doc = envDoc();
  ASSERT_FALSE(doc.empty());
  size_t n;
  const gc::ParamSpec* t = gc::paramTable(&n);
  ASSERT_GT(n, 20u);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_NE(doc.find(std::string("`") + t[i].env + "`"), std::string::npos)
        << t[i].env << " is not documented in docs/env.md";
  }
}

// The text of cell k (0: the name) of docs/env.md's row of a variable:
// | `NAME` | type | range / values | default | meaning |
std::string envDocCell(const std::string& doc, const char* env, int k) {
  const size_t row = doc.find(std::string("| `") + env + "` |");
  if (row == std::string::npos) return "(no row for " + std::string(env) + ")";
  size_t cell = row;
  for (int j = 0; j < k; ++j) cell = doc.find('|', cell + 1);
  const size_t end = doc.find('|', cell + 1);
  return doc.substr(cell + 2, end - cell - 3);
}

// A default is written three times: configDefaults' assignments, the table's
// default text and docs/env.md's default column. Each variable set to the
// table's text must give configDefaults' value, and the docs must show that
// text, so that none of the three drifts alone.
TEST(Config, TheTableDefaultsAreConfigDefaultsAndTheDocumentedOnes) {
  const std::string doc = envDoc();
  ASSERT_FALSE(doc.empty());
  gradcompConfig_t defaults;
  ASSERT_EQ(gradcompConfigInit(&defaults), gradcompSuccess);
  size_t n;
  const gc::ParamSpec* t = gc::paramTable(&n);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(envDocCell(doc, t[i].env, 3), t[i].defaultText) << t[i].env;
    if (t[i].offset < 0) continue;
    ScopedEnv e(t[i].env, t[i].defaultText);
    gradcompConfig_t cfg;
    ASSERT_EQ(gradcompConfigFromEnv(&cfg), gradcompSuccess)
        << t[i].env << "=" << t[i].defaultText << ": " << gradcompGetLastError();
    EXPECT_EQ(memcmp(&cfg, &defaults, sizeof(cfg)), 0)
        << t[i].env << "=" << t[i].defaultText << " is not configDefaults' " << t[i].field;
  }
}

// docs/env.md's range / values column is the range the parser and
// gradcompConfigValidate enforce: an integer's or size's `min .. max`, a
// float's `[min, max]` (the same numbers, however written) and a choice's
// names, each in backquotes, no more and no fewer.
TEST(Config, TheDocumentedRangesAreTheEnforcedOnes) {
  const std::string doc = envDoc();
  ASSERT_FALSE(doc.empty());
  size_t n;
  const gc::ParamSpec* t = gc::paramTable(&n);
  for (size_t i = 0; i < n; ++i) {
    const gc::ParamSpec& p = t[i];
    const std::string cell = envDocCell(doc, p.env, 2);
    SCOPED_TRACE(std::string(p.env) + ": | " + cell + " |");
    std::smatch m;
    if (p.kind == gc::ParamKind::Int || p.kind == gc::ParamKind::Size) {
      ASSERT_TRUE(
          std::regex_search(cell, m, std::regex("([0-9][0-9.e+]*) \\.\\. ([0-9][0-9.e+]*)")));
      EXPECT_EQ(strtod(m[1].str().c_str(), nullptr), p.min);
      EXPECT_EQ(strtod(m[2].str().c_str(), nullptr), p.max);
    } else if (p.kind == gc::ParamKind::Float) {
      ASSERT_TRUE(std::regex_search(cell, m, std::regex("^\\[([0-9.e+-]+), ([0-9.e+-]+)\\]$")));
      EXPECT_EQ(strtod(m[1].str().c_str(), nullptr), p.min);
      EXPECT_EQ(strtod(m[2].str().c_str(), nullptr), p.max);
    } else if (p.kind == gc::ParamKind::U64) {
      EXPECT_EQ(cell, "unsigned 64-bit");
    }
    // A choice's names (an integer's too, as GRADCOMP_LOCAL_SIZE's auto).
    std::set<std::string> names, documented;
    if (p.choices != nullptr) {
      std::stringstream ss(p.choices);
      for (std::string item; std::getline(ss, item, '|');)
        names.insert(item.substr(0, item.find('=')));
    }
    if (p.kind != gc::ParamKind::String) {
      const std::regex quoted("`([^`]*)`");
      for (std::sregex_iterator it(cell.begin(), cell.end(), quoted), e; it != e; ++it)
        documented.insert((*it)[1].str());
      EXPECT_EQ(documented, names);
    }
  }
}

// gradcompEnvName lists the table (python -m gradcomp.info tells a setting
// from another program's GRADCOMP_* variable by it), and nothing else.
TEST(Config, EnvNameListsTheTable) {
  size_t n;
  const gc::ParamSpec* t = gc::paramTable(&n);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_NE(gradcompEnvName((int)i), nullptr) << i;
    EXPECT_STREQ(gradcompEnvName((int)i), t[i].env);
  }
  EXPECT_EQ(gradcompEnvName((int)n), nullptr);
  EXPECT_EQ(gradcompEnvName(-1), nullptr);
}

}  // namespace

// Issue 16, defect 8: strict parsing, one range for the environment and the
// struct, combinations refused up front, a failed parse changes nothing.
namespace {

TEST(ConfigStrict, IntegersAreDecimalWithoutSignSpaceOrLeadingZero) {
  const char* bad[] = {"010", "0x8", " 8", "8 ", "+8", "-8", "08", "8.0", "1e1"};
  for (const char* v : bad) {
    ScopedEnv env("GRADCOMP_BITS", v);
    gradcompConfig_t cfg;
    EXPECT_EQ(gradcompConfigFromEnv(&cfg), gradcompInvalidArgument) << "'" << v << "'";
    // A value with a blank is shown in quotes.
    const std::string shown = strchr(v, ' ') ? std::string("\"") + v + "\"" : v;
    EXPECT_EQ(std::string(gradcompGetLastError()),
              "GRADCOMP_BITS=" + shown + " is not an integer in 2..8" INT_FORM);
  }
  const char* badSeed[] = {" -1",
                           "-1",
                           "+1",
                           "010",
                           "0x",
                           "0x1g",
                           " 1",
                           "0x0x1F",
                           "0x0X10",
                           "0x-1",
                           "0x00000000000000001",
                           "1 ",
                           "0x10000000000000000"};
  for (const char* v : badSeed) {
    ScopedEnv env("GRADCOMP_SEED", v);
    gradcompConfig_t cfg;
    EXPECT_EQ(gradcompConfigFromEnv(&cfg), gradcompInvalidArgument) << "'" << v << "'";
    EXPECT_NE(strstr(gradcompGetLastError(), "GRADCOMP_SEED="), nullptr);
  }
  {
    ScopedEnv env("GRADCOMP_SEED", "0x000000000000001F");  // 16 digits: the most
    gradcompConfig_t cfg;
    ASSERT_EQ(gradcompConfigFromEnv(&cfg), gradcompSuccess) << gradcompGetLastError();
    EXPECT_EQ(cfg.seed, 31u);
  }
  ScopedEnv a("GRADCOMP_SEED", "0x10"), b("GRADCOMP_BITS", "8"), c("GRADCOMP_MIN_ELEMENTS", "0");
  gradcompConfig_t cfg;
  ASSERT_EQ(gradcompConfigFromEnv(&cfg), gradcompSuccess) << gradcompGetLastError();
  EXPECT_EQ(cfg.seed, 16u);
  EXPECT_EQ(cfg.bits, 8);
  EXPECT_EQ(cfg.minElements, 0u);
}

// The 64-bit sizes compare as integers: 1e18 + 1 is 1e18 as a double, and
// was let through.
TEST(ConfigStrict, SizesJustPastTheirMaximumAreRefused) {
  for (const char* env : {"GRADCOMP_MIN_ELEMENTS", "GRADCOMP_PIPELINE_BYTES"}) {
    {
      ScopedEnv e(env, "1000000000000000001");
      gradcompConfig_t cfg;
      EXPECT_EQ(gradcompConfigFromEnv(&cfg), gradcompInvalidArgument) << env;
      EXPECT_EQ(std::string(gradcompGetLastError()),
                std::string(env) +
                    "=1000000000000000001 is not an integer in 0..1000000000000000000" INT_FORM);
    }
    ScopedEnv e(env, "1000000000000000000");
    gradcompConfig_t cfg;
    EXPECT_EQ(gradcompConfigFromEnv(&cfg), gradcompSuccess)
        << env << ": " << gradcompGetLastError();
  }
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.minElements = (size_t)1000000000000000001ull;
  EXPECT_EQ(gradcompConfigValidate(&cfg), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "GRADCOMP_MIN_ELEMENTS"), nullptr);
  gradcompConfigInit(&cfg);
  cfg.pipelineBytes = (size_t)1000000000000000001ull;
  EXPECT_EQ(gradcompConfigValidate(&cfg), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "GRADCOMP_PIPELINE_BYTES"), nullptr);
}

TEST(ConfigStrict, EmptyValueIsAnErrorNamingTheVariable) {
  ScopedEnv env("GRADCOMP_DENSITY", "");
  gradcompConfig_t cfg;
  EXPECT_EQ(gradcompConfigFromEnv(&cfg), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(),
               "GRADCOMP_DENSITY is set but empty: unset it or give a value");
}

TEST(ConfigStrict, FailedFromEnvLeavesTheStructUntouched) {
  gradcompConfig_t cfg, before;
  gradcompConfigInit(&cfg);
  cfg.bits = 7;
  cfg.density = 0.25f;
  // Byte for byte, padding included: an assignment need not copy the padding
  // that the memcmp below compares.
  memcpy(&before, &cfg, sizeof(cfg));
  // A good variable ahead of a bad one: nothing of either lands.
  ScopedEnv a("GRADCOMP_BITS", "3"), b("GRADCOMP_DENSITY", "2");
  EXPECT_EQ(gradcompConfigFromEnv(&cfg), gradcompInvalidArgument);
  EXPECT_EQ(memcmp(&cfg, &before, sizeof(cfg)), 0);
}

// Every numeric table entry: the validator refuses what the environment
// parser refuses, and names the variable.
TEST(ConfigStrict, ValidatorAndEnvironmentShareEveryRange) {
  size_t n = 0;
  const gc::ParamSpec* t = gc::paramTable(&n);
  int checked = 0;
  for (size_t i = 0; i < n; ++i) {
    const gc::ParamSpec& p = t[i];
    if (p.offset < 0 || (p.kind != gc::ParamKind::Int && p.kind != gc::ParamKind::Float)) continue;
    for (double v : {p.min - (p.kind == gc::ParamKind::Int ? 1.0 : p.min * 0.5 + 1e-3),
                     p.max + (p.kind == gc::ParamKind::Int ? 1.0 : p.max * 0.5 + 1.0)}) {
      gradcompConfig_t cfg;
      gradcompConfigInit(&cfg);
      char* f = reinterpret_cast<char*>(&cfg) + p.offset;
      if (p.kind == gc::ParamKind::Int) {
        // An Int that also takes names (GRADCOMP_LOCAL_SIZE's auto=0) accepts
        // their values: step past them, away from the range.
        int x = (int)v;
        auto named = [&](int y) {
          return p.choices && strstr(p.choices, ("=" + std::to_string(y)).c_str()) != nullptr;
        };
        while (named(x)) x += v < p.min ? -1 : 1;
        memcpy(f, &x, sizeof(x));
      } else {
        const float x = (float)v;
        memcpy(f, &x, sizeof(x));
      }
      EXPECT_EQ(gradcompConfigValidate(&cfg), gradcompInvalidArgument) << p.env << " = " << v;
      EXPECT_NE(strstr(gradcompGetLastError(), p.env), nullptr) << gradcompGetLastError();
      ++checked;
    }
  }
  EXPECT_GE(checked, 2 * 18);
  // The two the issue names.
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.density = 1e-45f;
  EXPECT_EQ(gradcompConfigValidate(&cfg), gradcompInvalidArgument);
  gradcompConfigInit(&cfg);
  cfg.momentumCorrection = 7;
  EXPECT_EQ(gradcompConfigValidate(&cfg), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "GRADCOMP_MOMENTUM_CORRECTION"), nullptr);
}

TEST(ConfigStrict, MethodAlgorithmCombinationsAreRefusedUpFront) {
  for (gradcompMethod_t m : {gradcompMethodTopk, gradcompMethodRandk, gradcompMethodDgc}) {
    for (gradcompAlgo_t a : {gradcompAlgoTwoShot, gradcompAlgoRing, gradcompAlgoAllgather}) {
      gradcompConfig_t cfg;
      gradcompConfigInit(&cfg);
      cfg.method = m;
      cfg.algo = a;
      EXPECT_EQ(gradcompConfigValidate(&cfg), gradcompInvalidArgument) << m << " " << a;
      EXPECT_NE(strstr(gradcompGetLastError(), "GRADCOMP_ALGO"), nullptr);
      // The algorithm as GRADCOMP_ALGO spells it, not its number.
      const char* name = a == gradcompAlgoTwoShot ? "algo=twoshot"
                         : a == gradcompAlgoRing  ? "algo=ring"
                                                  : "algo=allgather";
      EXPECT_NE(strstr(gradcompGetLastError(), name), nullptr) << gradcompGetLastError();
    }
  }
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.algo = gradcompAlgoSparseAllgather;
  EXPECT_EQ(gradcompConfigValidate(&cfg), gradcompInvalidArgument);
  ScopedEnv a("GRADCOMP_METHOD", "dgc"), b("GRADCOMP_ALGO", "ring");
  EXPECT_EQ(gradcompConfigFromEnv(&cfg), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "GRADCOMP_ALGO"), nullptr);
}

}  // namespace

// A GRADCOMP_* variable that nothing reads left the defaults in place
// without a word: the first read of the environment names it, and the setting
// it probably meant.
namespace {

// The misspelt names are written GC_UNREAD("METHD"), so that the grep of the
// tree (EveryNameInTheSourceTreeIsKnown) does not take them for names.
#define GC_UNREAD(rest) "GRADCOMP_" rest

TEST(ConfigNames, AMisspeltSettingIsNamedWithTheOneItProbablyMeant) {
  const char* env[] = {GC_UNREAD("METHD=topk"),   "PATH=/bin",
                       GC_UNREAD("BIT=4"),        "GRADCOMP_METHOD=qsgd",
                       "GRADCOMP_TEST_GPU=1",     "GRADCOMP_pipeline_bytes=8",
                       GC_UNREAD("PIPELINE=8"),   GC_UNREAD("ZZZZZZZZ=4 "),
                       GC_UNREAD("LIBRARI=x.so"), nullptr};
  const std::vector<std::string> lines = gc::unknownSettings(env);
  const std::vector<std::string> want = {
      GC_UNREAD("METHD=topk is not a gradcomp setting (did you mean GRADCOMP_METHOD?); it is "
                "ignored"),
      GC_UNREAD("BIT=4 is not a gradcomp setting (did you mean GRADCOMP_BITS?); it is ignored"),
      "GRADCOMP_pipeline_bytes=8 is not a gradcomp setting (did you mean "
      "GRADCOMP_PIPELINE_BYTES?); it is ignored",
      GC_UNREAD("PIPELINE=8 is not a gradcomp setting (did you mean GRADCOMP_PIPELINE_BYTES?); "
                "it is ignored"),
      GC_UNREAD("ZZZZZZZZ=\"4 \" is not a gradcomp setting (docs/env.md lists them); it is "
                "ignored"),
      GC_UNREAD("LIBRARI=x.so is not a gradcomp setting (did you mean GRADCOMP_LIBRARY?); it is "
                "ignored"),
  };
  EXPECT_EQ(lines, want);
  const char* fine[] = {"GRADCOMP_METHOD=topk", "GRADCOMP_LIBRARY=/x/libgradcomp.so",
                        "GRADCOMP_CUDA_ARCHS=90", "HOME=/root", nullptr};
  EXPECT_TRUE(gc::unknownSettings(fine).empty());
}

// What a child process, with only these GRADCOMP_* variables set, prints on
// stderr while it reads its settings from the environment `reads` times.
std::string stderrOfReads(const std::vector<std::pair<const char*, const char*>>& vars, int reads) {
  char path[] = "/tmp/gradcomp-names-XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return "mkstemp failed";
  fflush(stderr);
  const pid_t child = fork();
  if (child == 0) {
    std::vector<std::string> others;
    for (char** e = environ; *e != nullptr; ++e) {
      if (strncmp(*e, "GRADCOMP_", 9) == 0) others.emplace_back(*e, strcspn(*e, "="));
    }
    for (const std::string& name : others) unsetenv(name.c_str());
    for (const auto& v : vars) setenv(v.first, v.second, 1);
    dup2(fd, 2);
    for (int i = 0; i < reads; ++i) {
      gradcompConfig_t c;
      if (gradcompConfigFromEnv(&c) != gradcompSuccess) _exit(2);
    }
    _exit(0);
  }
  close(fd);
  const bool left = gcReapChildWithin10s(child) == 1;
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  unlink(path);
  return left ? ss.str() : "the child did not finish";
}

size_t countOf(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

TEST(ConfigNames, TheFirstReadOfTheEnvironmentWarnsOncePerProcess) {
  const std::string err = stderrOfReads({{GC_UNREAD("METHD"), "topk"}, {"GRADCOMP_BITS", "3"}}, 3);
  EXPECT_EQ(countOf(err, GC_UNREAD("METHD=topk is not a gradcomp setting (did you mean "
                                   "GRADCOMP_METHOD?); it is ignored\n")),
            1u)
      << err;
  EXPECT_EQ(countOf(err, " WARN "), 1u) << err;
  // Right names, the project's own variables among them: nothing said.
  const std::string fine = stderrOfReads(
      {{"GRADCOMP_METHOD", "topk"}, {"GRADCOMP_TEST_GPU", "1"}, {"GRADCOMP_LIBRARY", "x"}}, 2);
  EXPECT_EQ(countOf(fine, "WARN"), 0u) << fine;
}

// Every GRADCOMP_* name in the project's sources is one the library knows
// (the table or config.cc's other names), so that the project's own runs are
// never told a variable is misspelt: a name added to a tool, test or build
// file without adding it there fails here.
TEST(ConfigNames, EveryNameInTheSourceTreeIsKnown) {
  namespace fs = std::filesystem;
  const char* root = getenv("GRADCOMP_SOURCE_DIR");
  const fs::path top(root ? root : GRADCOMP_TEST_SOURCE_DIR);
  ASSERT_TRUE(fs::exists(top / "plugin" / "config.cc")) << top << " is not the source tree";
  const std::vector<std::string> kinds = {".cc", ".h",   ".c",   ".py",    ".sh",
                                          ".cu", ".cuh", ".txt", ".cmake", ".in"};
  const std::regex name("GRADCOMP_[A-Z0-9_]+");
  size_t files = 0;
  std::set<std::string> seen;  // each name checked (and said) once
  for (auto it =
           fs::recursive_directory_iterator(top, fs::directory_options::skip_permission_denied);
       it != fs::recursive_directory_iterator(); ++it) {
    const fs::path& p = it->path();
    if (it->is_directory()) {
      // .git, build trees (this one among them) with their copies, and
      // what Python puts in a tree (a virtual environment, an installed
      // package's build or egg-info, bytecode): not the project's sources.
      const std::string leaf = p.filename().string();
      if (leaf[0] == '.' || fs::exists(p / "CMakeCache.txt") || fs::exists(p / "pyvenv.cfg") ||
          leaf == "site-packages" || leaf == "__pycache__" ||
          (leaf.size() > 9 && leaf.compare(leaf.size() - 9, 9, ".egg-info") == 0)) {
        it.disable_recursion_pending();
      }
      continue;
    }
    if (!it->is_regular_file()) continue;
    if (std::find(kinds.begin(), kinds.end(), p.extension().string()) == kinds.end()) continue;
    ++files;
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string text = ss.str();
    for (std::sregex_iterator m(text.begin(), text.end(), name), end; m != end; ++m) {
      const std::string n = m->str();
      // Header guards (GRADCOMP_H_) and names assembled at run time
      // ("GRADCOMP_VERSION_%s") end in '_'.
      if (n.back() == '_' || !seen.insert(n).second) continue;
      EXPECT_TRUE(gc::isProjectEnvName(n.c_str()))
          << n << " (" << p.string() << ") is not in plugin/config.cc's table or its list of "
          << "other names: add it there, or gradcomp warns that it is not a setting";
    }
  }
  EXPECT_GT(files, 100u);
}

}  // namespace
