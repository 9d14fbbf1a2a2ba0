// Per-method parts of the benchmark: how a method configures gradcomp and
// which error bound its codec promises for one call from zero state.
#pragma once

#include <string>

#include "data.h"
#include "options.h"

namespace gcbench {

struct MethodSpec {
  gradcompMethod_t id;
  BoundKind bound;   // when the call was compressed
  bool qsgdKernels;  // the link model can time its kernels alone
};

const MethodSpec& methodSpec(gradcompMethod_t m);
// gradcompConfigFromEnv, then the flags the user gave, then the method.
gradcompResult_t methodConfig(const Options& o, gradcompMethod_t m, gradcompConfig_t* cfg);
std::string methodLabel(const gradcompConfig_t& cfg);

}  // namespace gcbench
