// Configuration: defaults, GRADCOMP_* overrides, errors that name the value
// and range, and docs/env.md listing every variable.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <string.h>

#include <fstream>
#include <sstream>
#include <string>

#include "gradcomp.h"
#include "plugin/params.h"
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
  EXPECT_EQ(gradcompConfigValidate(&c), gradcompSuccess);
}

TEST(Config, EnvironmentOverrides) {
  ScopedEnv a("GRADCOMP_METHOD", "topk"), b("GRADCOMP_BITS", "8"), c("GRADCOMP_DENSITY", "0.001"),
      d("GRADCOMP_MIN_ELEMENTS", "0"), e("GRADCOMP_VALUE_TYPE", "bfloat16"),
      f("GRADCOMP_SEED", "0xffffffffffffffff"), g("GRADCOMP_ALGO", "RING"),
      h("GRADCOMP_PIPELINE_BYTES", "8388608");
  gradcompConfig_t cfg;
  ASSERT_EQ(gradcompConfigFromEnv(&cfg), gradcompSuccess) << gradcompGetLastError();
  EXPECT_EQ(cfg.method, gradcompMethodTopk);
  EXPECT_EQ(cfg.bits, 8);
  EXPECT_FLOAT_EQ(cfg.density, 0.001f);
  EXPECT_EQ(cfg.minElements, 0u);
  EXPECT_EQ(cfg.valueType, ncclBfloat16);
  EXPECT_EQ(cfg.seed, 0xffffffffffffffffull);
  EXPECT_EQ(cfg.algo, gradcompAlgoRing);
  EXPECT_EQ(cfg.pipelineBytes, 8388608u);
}

struct BadEnv {
  const char* name;
  const char* value;
  const char* message;
};

TEST(Config, BadEnvironmentValuesNameVariableAndRange) {
  const BadEnv cases[] = {
      {"GRADCOMP_BITS", "9", "GRADCOMP_BITS=9 is not an integer in 2..8"},
      {"GRADCOMP_BITS", "four", "GRADCOMP_BITS=four is not an integer in 2..8"},
      {"GRADCOMP_BITS", "1", "GRADCOMP_BITS=1 is not an integer in 2..8"},
      {"GRADCOMP_BUCKET", "100000", "GRADCOMP_BUCKET=100000 is not an integer in 32..8192"},
      {"GRADCOMP_DENSITY", "0", "GRADCOMP_DENSITY=0 is not a number in [1e-06, 1]"},
      {"GRADCOMP_DENSITY", "nan", "GRADCOMP_DENSITY=nan is not a number in [1e-06, 1]"},
      {"GRADCOMP_METHOD", "zip", "GRADCOMP_METHOD=zip is not one of none|qsgd|topk|randk|dgc"},
      {"GRADCOMP_SEED", "-1", "GRADCOMP_SEED=-1 is not an unsigned 64-bit integer"},
      {"GRADCOMP_EF", "2", "GRADCOMP_EF=2 is not an integer in 0..1"},
      {"GRADCOMP_PIPELINE_BYTES", "-1",
       "GRADCOMP_PIPELINE_BYTES=-1 is not an integer in 0..1000000000000000000"},
  };
  for (const auto& bc : cases) {
    ScopedEnv env(bc.name, bc.value);
    gradcompConfig_t cfg;
    EXPECT_EQ(gradcompConfigFromEnv(&cfg), gradcompInvalidArgument) << bc.name << "=" << bc.value;
    EXPECT_STREQ(gradcompGetLastError(), bc.message);
  }
}

TEST(Config, BucketMustBeMultipleOf32) {
  ScopedEnv env("GRADCOMP_BUCKET", "500");
  gradcompConfig_t cfg;
  EXPECT_EQ(gradcompConfigFromEnv(&cfg), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(),
               "bucketSize=500 is out of range 32..8192 or not a multiple of 32");
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
  EXPECT_STREQ(gradcompGetLastError(), "momentum=1 is out of range [0, 1)");
  EXPECT_EQ(gradcompConfigValidate(nullptr), gradcompInvalidArgument);
  EXPECT_EQ(gradcompConfigInit(nullptr), gradcompInvalidArgument);
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

TEST(Config, DocsListEveryVariable) {
  const char* root = getenv("GRADCOMP_SOURCE_DIR");
  std::string path = std::string(root ? root : ".") + "/docs/env.md";
  std::ifstream f(path);
  ASSERT_TRUE(f.good()) << "cannot read " << path;
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string doc = ss.str();
  size_t n;
  const gc::ParamSpec* t = gc::paramTable(&n);
  ASSERT_GT(n, 20u);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_NE(doc.find(std::string("`") + t[i].env + "`"), std::string::npos)
        << t[i].env << " is not documented in docs/env.md";
  }
}

}  // namespace
