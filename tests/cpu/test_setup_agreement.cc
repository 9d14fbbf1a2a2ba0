// The set-up decision every rank of a comm makes from every rank's vote
// (plugin/topology.h): a rank that failed its local checks, or one whose
// settings differ, makes every rank return the same error, before any split.
#include <gtest/gtest.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <string>
#include <vector>

#include "gradcomp.h"
#include "plugin/topology.h"

namespace {

gradcompConfig_t config(int localSize) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.localSize = localSize;
  return cfg;
}

std::vector<gc::SetupVote> uniform(int n, const gradcompConfig_t& cfg) {
  std::vector<gc::SetupVote> v;
  for (int r = 0; r < n; ++r)
    v.push_back(gc::makeSetupVote(gradcompSuccess, cfg, 100 + r, nullptr));
  return v;
}

TEST(SetupAgreement, UniformVotesAgree) {
  for (int n : {1, 2, 4, 8}) {
    EXPECT_EQ(gc::agreeOnSetup(uniform(n, config(0))), gradcompSuccess) << gradcompGetLastError();
    EXPECT_EQ(gc::agreeOnSetup(uniform(n, config(n))), gradcompSuccess);
  }
}

// Host identities are data, not settings: they may (and do) differ.
TEST(SetupAgreement, HostsMayDiffer) {
  std::vector<gc::SetupVote> v = uniform(4, config(0));
  v[2].host = 0;  // unreadable: the topology goes flat, the set-up still agrees
  EXPECT_EQ(gc::agreeOnSetup(v), gradcompSuccess);
}

TEST(SetupAgreement, LocalSizeDiffersNamesBothValues) {
  std::vector<gc::SetupVote> v = uniform(4, config(4));
  v[3] = gc::makeSetupVote(gradcompSuccess, config(2), 7, nullptr);
  EXPECT_EQ(gc::agreeOnSetup(v), gradcompInvalidArgument);
  EXPECT_STREQ(gradcompGetLastError(),
               "rank 3 has GRADCOMP_LOCAL_SIZE (localSize) = 2 while rank 0 has 4: the ranks of a "
               "comm have different GRADCOMP_* settings, so no rank made one");
  // auto on one rank, an override on the others: as bad.
  v = uniform(4, config(2));
  v[1] = gc::makeSetupVote(gradcompSuccess, config(0), 7, nullptr);
  EXPECT_EQ(gc::agreeOnSetup(v), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(), "rank 1 has GRADCOMP_LOCAL_SIZE (localSize) = 0"),
            nullptr)
      << gradcompGetLastError();
}

// Every setting in the vote, changed on one rank alone, is named with both
// values; the first differing rank is reported.
TEST(SetupAgreement, EachSettingIsNamed) {
  struct Change {
    const char* text;  // what the sentence must contain
    void (*apply)(gradcompConfig_t*);
  };
  const Change changes[] = {
      {"GRADCOMP_METHOD (method) = 2",
       [](gradcompConfig_t* c) { c->method = (gradcompMethod_t)2; }},
      {"GRADCOMP_ALGO (algo) = 2", [](gradcompConfig_t* c) { c->algo = (gradcompAlgo_t)2; }},
      {"GRADCOMP_BITS (bits) = 8 while rank 0 has 4", [](gradcompConfig_t* c) { c->bits = 8; }},
      {"GRADCOMP_BUCKET (bucketSize) = 64", [](gradcompConfig_t* c) { c->bucketSize = 64; }},
      {"GRADCOMP_MIN_ELEMENTS (minElements) = 0", [](gradcompConfig_t* c) { c->minElements = 0; }},
      {"GRADCOMP_EF (errorFeedback) = 0", [](gradcompConfig_t* c) { c->errorFeedback = 0; }},
      {"GRADCOMP_OWNER_RESIDUAL (ownerResidual)",
       [](gradcompConfig_t* c) { c->ownerResidual = !c->ownerResidual; }},
      {"GRADCOMP_ELIAS (elias) = 1", [](gradcompConfig_t* c) { c->elias = 1; }},
      {"GRADCOMP_BITS_MODE (bitsMode) = 1",
       [](gradcompConfig_t* c) { c->bitsMode = (gradcompBitsMode_t)1; }},
      {"GRADCOMP_SEED (seed) = 18446744073709551615", [](gradcompConfig_t* c) { c->seed = ~0ull; }},
      {"GRADCOMP_DENSITY (density) = 0.25", [](gradcompConfig_t* c) { c->density = 0.25f; }},
      {"GRADCOMP_VALUE_TYPE (valueType) = 6",
       [](gradcompConfig_t* c) { c->valueType = (ncclDataType_t)6; }},
      // Ranks cutting calls into different pieces would post mismatched transfers.
      {"GRADCOMP_PIPELINE_BYTES (pipelineBytes) = 4194304 while rank 0 has 0",
       [](gradcompConfig_t* c) { c->pipelineBytes = 4u << 20; }},
      // Ranks rounding differently exchange well-formed bytes: nothing else
      // would catch it.
      {"GRADCOMP_ROUNDING (rounding) = 1 while rank 0 has 0",
       [](gradcompConfig_t* c) { c->rounding = gradcompRoundNearest; }},
      {"GRADCOMP_LEVELS (levels) = 1 while rank 0 has 0",
       [](gradcompConfig_t* c) { c->levels = gradcompLevelsSquare; }},
      // A rank checking its calls runs an agreement before each call that
      // the others would never join.
      {"GRADCOMP_CHECK_CALLS (checkCalls) = 1 while rank 0 has 0",
       [](gradcompConfig_t* c) { c->checkCalls = 1; }},
      // The sparse slots' count (kmax) and how they are filled.
      {"GRADCOMP_OVERSAMPLE (oversample) = 3 while rank 0 has 2",
       [](gradcompConfig_t* c) { c->oversample = 3.0f; }},
      {"GRADCOMP_SAMPLE_RATE (sampleRate) = 0.05",
       [](gradcompConfig_t* c) { c->sampleRate = 0.05f; }},
      {"GRADCOMP_SELECT (select) = 1 while rank 0 has 0",
       [](gradcompConfig_t* c) { c->select = gradcompSelectExact; }},
      // DGC: what a call adds, and (warm-up) each call's density.
      {"GRADCOMP_MOMENTUM (momentum) = 0.5", [](gradcompConfig_t* c) { c->momentum = 0.5f; }},
      {"GRADCOMP_MOMENTUM_CORRECTION (momentumCorrection)",
       [](gradcompConfig_t* c) { c->momentumCorrection = !c->momentumCorrection; }},
      {"GRADCOMP_CLIP_NORM (clipNorm) = 1.5", [](gradcompConfig_t* c) { c->clipNorm = 1.5f; }},
      {"GRADCOMP_MOMENTUM_MASKING (momentumMasking)",
       [](gradcompConfig_t* c) { c->momentumMasking = !c->momentumMasking; }},
      {"GRADCOMP_WARMUP_STEPS (warmupSteps) = 500",
       [](gradcompConfig_t* c) { c->warmupSteps = 500; }},
      // DQ-SGD: each call's bit width.
      {"GRADCOMP_BITS_MIN (bitsMin) = 3", [](gradcompConfig_t* c) { c->bitsMin = 3; }},
      {"GRADCOMP_BITS_MAX (bitsMax) = 7", [](gradcompConfig_t* c) { c->bitsMax = 7; }},
      {"GRADCOMP_VARIANCE_TARGET (varianceTarget) = 0.125",
       [](gradcompConfig_t* c) { c->varianceTarget = 0.125f; }},
      {"GRADCOMP_BITS_BUDGET (bitsBudget) = 3.5",
       [](gradcompConfig_t* c) { c->bitsBudget = 3.5f; }},
      {"GRADCOMP_BUDGET_WINDOW (budgetWindow) = 7",
       [](gradcompConfig_t* c) { c->budgetWindow = 7; }},
      // A rank timing NCCL and compression runs calls the others never join.
      {"GRADCOMP_AUTO (autoTune)", [](gradcompConfig_t* c) { c->autoTune = !c->autoTune; }},
  };
  // Every field of the config is voted on but structSize, cpuTimeoutSec (a
  // rank's own wait), privateComm (a rank's own ask, any of which splits
  // every rank: NcclSetup.PrivateCommSplitsABlockingComm) and reserved0 and
  // reserved1 (unread): a field appended must join the vote and the list
  // above, or be named here as a rank's own.
  static_assert(
      offsetof(gradcompConfig_t, privateComm) + sizeof(int) == sizeof(gradcompConfig_t) ||
          offsetof(gradcompConfig_t, privateComm) + sizeof(int) + 4 == sizeof(gradcompConfig_t),
      "privateComm is no longer the config's last field: vote on the new one");
  EXPECT_EQ(sizeof(changes) / sizeof(changes[0]), (size_t)gc::kSetupSettings - 1)
      << "one change per voted setting (the local size is tested above)";
  const gradcompConfig_t base = config(2);
  ASSERT_NE(base.method, 2);
  ASSERT_NE(base.algo, 2);
  ASSERT_EQ(base.bits, 4);
  ASSERT_NE(base.minElements, 0u);
  ASSERT_EQ(base.errorFeedback, 1);
  ASSERT_EQ(base.elias, 0);
  ASSERT_NE(base.valueType, 6);
  for (const Change& ch : changes) {
    gradcompConfig_t other = base;
    ch.apply(&other);
    std::vector<gc::SetupVote> v = uniform(6, base);
    v[4] = gc::makeSetupVote(gradcompSuccess, other, 1, nullptr);
    v[5] = v[4];
    EXPECT_EQ(gc::agreeOnSetup(v), gradcompInvalidArgument) << ch.text;
    const std::string err = gradcompGetLastError();
    EXPECT_NE(err.find(std::string("rank 4 has ") + ch.text), std::string::npos) << err;
  }
  // The names cover every setting in the vote.
  for (int i = 0; i < gc::kSetupSettings; ++i) {
    EXPECT_EQ(strncmp(gc::setupSettingName(i), "GRADCOMP_", 9), 0) << i;
  }
}

// Float settings that differ past %g's six digits are shown apart: each value
// in the fewest digits that read back as it.
TEST(SetupAgreement, FloatsDifferingPastSixDigitsAreShownApart) {
  gradcompConfig_t base = config(2);
  base.density = 0.01f;
  gradcompConfig_t other = base;
  other.density = nextafterf(0.01f, 1.0f);
  std::vector<gc::SetupVote> v = uniform(2, base);
  v[1] = gc::makeSetupVote(gradcompSuccess, other, 1, nullptr);
  EXPECT_EQ(gc::agreeOnSetup(v), gradcompInvalidArgument);
  EXPECT_NE(strstr(gradcompGetLastError(),
                   "rank 1 has GRADCOMP_DENSITY (density) = 0.010000001 while rank 0 has 0.01:"),
            nullptr)
      << gradcompGetLastError();
}

// A failed rank outranks any setting difference (its settings are not
// known), and the lowest failed rank's result and sentence go to everyone.
TEST(SetupAgreement, FailedRankGivesItsResultToEveryRank) {
  std::vector<gc::SetupVote> v = uniform(4, config(2));
  v[3] = gc::makeSetupVote(gradcompInvalidArgument, config(2), 1, "GRADCOMP_BITS=99 is bad");
  v[2] = gc::makeSetupVote(gradcompInvalidUsage, config(0), 1,
                           "current CUDA device 1 differs from the NCCL communicator's device 0");
  EXPECT_EQ(gc::agreeOnSetup(v), gradcompInvalidUsage);
  EXPECT_STREQ(gradcompGetLastError(),
               "rank 2 of 4 could not set up its gradcomp comm, so no rank made one: current CUDA "
               "device 1 differs from the NCCL communicator's device 0");
  // What each rank computes from the same votes is the same sentence.
  const std::string first = gradcompGetLastError();
  EXPECT_EQ(gc::agreeOnSetup(v), gradcompInvalidUsage);
  EXPECT_EQ(first, gradcompGetLastError());
}

// Votes come over the wire: an unterminated sentence or an unknown result
// is neither read past nor passed on as is.
TEST(SetupAgreement, WireVotesAreBounded) {
  std::vector<gc::SetupVote> v = uniform(2, config(0));
  v[1].result = 77;
  memset(v[1].why, 'x', sizeof(v[1].why));
  EXPECT_EQ(gc::agreeOnSetup(v), gradcompInternalError);
  const std::string err = gradcompGetLastError();
  EXPECT_NE(err.find("rank 1 of 2"), std::string::npos) << err;
  EXPECT_EQ(err.find(std::string(sizeof(v[1].why), 'x')), std::string::npos);
  EXPECT_NE(err.find(std::string(sizeof(v[1].why) - 1, 'x')), std::string::npos);
}

// Ranks of different gradcomp builds (a node left on an older install) may
// lay out, encode or choose their exchanges differently: every rank fails
// alike, naming both versions, before any failed rank or setting is read.
// The vote keeps its size as settings are added, so that a later build's
// votes still meet this one's in an exchange of one size.
TEST(SetupAgreement, RanksOfDifferentBuildsFailAlike) {
  const uint32_t now = GRADCOMP_VERSION_CODE;
  char mine[64];
  snprintf(mine, sizeof(mine), "rank 0 runs %u.%u.%u (%d settings)", now / 10000, now / 100 % 100,
           now % 100, gc::kSetupSettings);
  std::vector<gc::SetupVote> v = uniform(3, config(0));
  v[2].version = 500;  // 0.5.0
  EXPECT_EQ(gc::agreeOnSetup(v), gradcompInvalidUsage);
  std::string err = gradcompGetLastError();
  EXPECT_NE(err.find("rank 2 runs gradcomp 0.5.0 (" + std::to_string(gc::kSetupSettings) +
                     " settings voted) while " + mine),
            std::string::npos)
      << err;
  EXPECT_NE(err.find("every rank of a comm must run the same gradcomp build"), std::string::npos)
      << err;
  // Named before a failed rank (whose result a different build may mean
  // otherwise) and before the settings.
  v[1] = gc::makeSetupVote(gradcompInvalidArgument, config(2), 1, "GRADCOMP_BITS=99 is bad");
  EXPECT_EQ(gc::agreeOnSetup(v), gradcompInvalidUsage);
  EXPECT_NE(std::string(gradcompGetLastError()).find("rank 2 runs gradcomp 0.5.0"),
            std::string::npos);
  // The same version with another number of settings (a build between two
  // releases).
  v = uniform(2, config(0));
  v[1].settingsCount = gc::kSetupSettings + 1;
  EXPECT_EQ(gc::agreeOnSetup(v), gradcompInvalidUsage);
  err = gradcompGetLastError();
  EXPECT_NE(
      err.find("(" + std::to_string(gc::kSetupSettings + 1) + " settings voted) while " + mine),
      std::string::npos)
      << err;
  EXPECT_EQ(gc::makeSetupVote(gradcompSuccess, config(0), 1, nullptr).version, now);
  EXPECT_EQ(sizeof(gc::SetupVote), 24 + 8 * (size_t)gc::kSetupSettingsCapacity + 256)
      << "the vote's size must not change with the settings";
  // The size every build exchanges (a capacity of 64 settings): a build whose vote had
  // another size would meet this one's in an exchange of mismatched sizes.
  EXPECT_EQ(gc::kSetupSettingsCapacity, 64);
  EXPECT_EQ(sizeof(gc::SetupVote), 792u);
}

// The CPU world takes one config for all ranks: the same decision, always
// agreeing, so creation succeeds for every valid local size.
TEST(SetupAgreement, CpuWorldAgrees) {
  gradcompComm_t comms[4];
  for (int L : {0, 1, 2, 4}) {
    gradcompConfig_t cfg = config(L);
    ASSERT_EQ(gradcompCommCreateCpu(4, &cfg, comms), gradcompSuccess) << gradcompGetLastError();
    for (gradcompComm_t c : comms) gradcompCommDestroy(c);
  }
}

}  // namespace
