// The interposer's own paths against the stand-in libnccl, in one process
// (the interposer's objects linked in, NCCL found through
// GRADCOMP_NCCL_LIBRARY as under LD_PRELOAD): a compressing communicator's
// entry is made by hand, with a gradcomp comm whose sub-communicators the
// stand-in split, since no GPU sets one up here.
#include <gtest/gtest.h>
#include <nccl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gradcomp.h"
#include "plugin/comm.h"
#include "plugin/preload/preload.h"
#include "plugin/topology.h"
#include "tests/common/cpu_world.h"
#include "tests/common/nccl_like_transport.h"

namespace {

// The interposer reads its settings once: a method, so that the calls of a
// compressing entry are eligible (set before any test runs).
const bool kMethodSet = setenv("GRADCOMP_METHOD", "qsgd", 0) == 0;

struct FakeNcclLog {
  char path[32] = "/tmp/gc_fake_nccl_XXXXXX";
  FakeNcclLog() {
    close(mkstemp(path));
    setenv("FAKE_NCCL_LOG", path, 1);
  }
  ~FakeNcclLog() {
    unsetenv("FAKE_NCCL_LOG");
    unlink(path);
  }
  std::string text() const {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
};

// Rank 1 of 4 as 2 nodes of 2 on `parent`: a gradcomp comm made by hand, its
// node and inter-node sub-communicators split by the stand-in; null (with the
// failure recorded) if the hierarchy was not set up.
gradcompComm* hierCommOn(ncclComm_t parent) {
  gradcompConfig_t cfg;
  gradcompConfigInit(&cfg);
  cfg.localSize = 2;
  auto* c = new gradcompComm;
  c->cfg = cfg;
  c->rank = 1;
  c->nranks = 4;
  c->nccl = parent;
  std::vector<gc::SetupVote> votes;
  for (int r = 0; r < 4; ++r) votes.push_back(gc::makeSetupVote(gradcompSuccess, cfg, 1, nullptr));
  const gradcompResult_t r = gc::setupNcclHierarchy(
      c, votes[1], [&](const gc::SetupVote&, std::vector<gc::SetupVote>* all) {
        *all = votes;
        return gradcompSuccess;
      });
  EXPECT_EQ(r, gradcompSuccess) << gradcompGetLastError();
  if (r != gradcompSuccess || c->intraNccl == nullptr || c->interNccl == nullptr) {
    ADD_FAILURE() << "the hierarchy's sub-communicators were not made";
    delete c;
    return nullptr;
  }
  return c;
}

// The preload's entry of `parent`, compressing with the hand-made comm c
// (hierCommOn's rank 1 of 4).
gc::preload::EntryPtr compressingEntry(ncclComm_t parent, gradcompComm* c) {
  gc::preload::EntryPtr e = gc::preload::entryFor(parent);
  e->gc = c;
  e->rank = 1;
  e->nranks = 4;
  e->mode = gc::preload::Mode::Compress;
  return e;
}

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0)
// ncclCommShrink with NCCL_SHRINK_ABORT of a communicator whose gradcomp comm
// has sub-communicators (the hierarchy's node and inter-node comms): NCCL's
// shrink waits, inside the call, for the parent's kernels, which the caller's
// stream can hold behind a sub-communicator's kernel stuck on the dead peer.
// So the sub-communicators' aborts (whose flags NCCL sets at once) come
// first, in one NCCL group with the shrink, and the entry is released as at
// a revoke: the parent's later calls pass through without a set-up.
TEST(PreloadShrink, AbortFlagStopsTheSubCommunicatorsFirstInOneGroup) {
  setenv("GRADCOMP_NCCL_LIBRARY", GC_FAKE_NCCL, 1);
  const ncclComm_t parent = (ncclComm_t)(uintptr_t)0x1000;
  gradcompComm* c = hierCommOn(parent);
  ASSERT_NE(c, nullptr);
  char intra[32], inter[32];
  snprintf(intra, sizeof(intra), "%p", (void*)c->intraNccl);
  snprintf(inter, sizeof(inter), "%p", (void*)c->interNccl);

  gc::preload::EntryPtr e = compressingEntry(parent, c);
  std::string log;
  ncclComm_t child = nullptr;
  int excluded = 3;
  {
    FakeNcclLog fake;
    EXPECT_EQ(ncclCommShrink(parent, &excluded, 1, &child, nullptr, NCCL_SHRINK_ABORT),
              ncclSuccess);
    log = fake.text();
  }
  char shrink[128];
  snprintf(shrink, sizeof(shrink), "CommShrink parent=%p excluded=1 blocking=-1 flags=%d comm=%p",
           (void*)parent, NCCL_SHRINK_ABORT, (void*)child);
  // The stop's own group (gc::commStop) nests inside the shrink's: only the
  // outer end runs the aborts' waits, after the shrink.
  const std::string want = std::string("GroupStart\nGroupStart\n") + "CommAbort comm=" + intra +
                           "\n" + "CommAbort comm=" + inter + "\nGroupEnd\n" + shrink +
                           "\nGroupEnd\n";
  EXPECT_EQ(log, want);
  EXPECT_TRUE(e->released);
  EXPECT_TRUE(e->aborted.stopped());
  EXPECT_EQ(gc::preload::entryFor(parent)->mode.load(), gc::preload::Mode::PassThrough);
  EXPECT_EQ(gc::preload::entryFor(parent)->reason, "shrunk with NCCL_SHRINK_ABORT");
  // The hand-made comm goes here, not through the entry's end.
  e->gc = nullptr;
  gc::destroyHierarchy(c);
  delete c;
  unsetenv("GRADCOMP_NCCL_LIBRARY");
}
#endif

// ncclCommAbort of a communicator whose gradcomp comm has sub-communicators:
// NCCL's abort first, then the sub-communicators' (gradcomp's stop), in one
// NCCL group, which NCCL 2.22 and later abort together; the entry is released.
TEST(PreloadAbort, TheSubCommunicatorsAreAbortedInTheAbortsGroup) {
  setenv("GRADCOMP_NCCL_LIBRARY", GC_FAKE_NCCL, 1);
  const ncclComm_t parent = (ncclComm_t)(uintptr_t)0x2000;
  gradcompComm* c = hierCommOn(parent);
  ASSERT_NE(c, nullptr);
  char intra[32], inter[32], own[32];
  snprintf(intra, sizeof(intra), "%p", (void*)c->intraNccl);
  snprintf(inter, sizeof(inter), "%p", (void*)c->interNccl);
  snprintf(own, sizeof(own), "%p", (void*)parent);

  gc::preload::EntryPtr e = compressingEntry(parent, c);
  std::string log;
  {
    FakeNcclLog fake;
    EXPECT_EQ(ncclCommAbort(parent), ncclSuccess);
    log = fake.text();
  }
  // The stop's own group (gc::commStop) nests inside the abort's.
  const std::string want = std::string("GroupStart\nCommAbort comm=") + own + "\n" +
                           "GroupStart\nCommAbort comm=" + intra + "\nCommAbort comm=" + inter +
                           "\nGroupEnd\nGroupEnd\n";
  EXPECT_EQ(log, want);
  EXPECT_TRUE(e->released);
  EXPECT_TRUE(e->aborted.stopped());
  e->gc = nullptr;
  gc::destroyHierarchy(c);
  delete c;
  unsetenv("GRADCOMP_NCCL_LIBRARY");
}

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
// ncclCommDestroy that NCCL refuses (its ncclCommEnsureReady: a
// non-blocking communicator whose work is still in progress, or one holding
// an error its thread met) leaves the communicator alive, and the preload
// its entry and gradcomp comm: the busy one is destroyed once polled, and
// its entry goes then; the failed one is aborted next, which stops its
// entry. Until 2026-12-07 the entry went before NCCL's refusal: the next
// call set a new gradcomp comm up on this rank alone, and the abort found
// nothing to stop, after gradcomp's destroy had waited for kernels that may
// be stuck on the dead peer.
class PreloadDestroy : public ::testing::Test {
 protected:
  void SetUp() override { setenv("GRADCOMP_NCCL_LIBRARY", GC_FAKE_NCCL, 1); }
  void TearDown() override {
    unsetenv("FAKE_NCCL_ASYNC_FAIL");
    unsetenv("GRADCOMP_NCCL_LIBRARY");
  }
  // The communicator's state once NCCL's work on it ended, as a program polls it.
  static ncclResult_t settled(ncclComm_t comm) {
    ncclResult_t state = ncclInProgress;
    while (state == ncclInProgress) {
      if (gc::ncclApi()->commGetAsyncError(comm, &state) != ncclSuccess) return ncclSystemError;
    }
    return state;
  }
  // A non-blocking communicator of the stand-in's, compressing (its entry
  // made by hand), whose last call NCCL is still enqueueing; with `fails`,
  // that call ends in an error (ncclRemoteError), which sticks.
  static ncclComm_t busyComm(bool fails, gc::preload::EntryPtr* e) {
    ncclUniqueId id;
    memset(&id, 0, sizeof(id));
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclComm_t comm = nullptr;
    EXPECT_EQ(ncclCommInitRankConfig(&comm, 4, id, 0, &cfg), ncclInProgress);
    EXPECT_EQ(settled(comm), ncclSuccess);
    *e = compressingEntry(comm, nullptr);
    if (fails) setenv("FAKE_NCCL_ASYNC_FAIL", "1", 1);
    int x = 0;
    EXPECT_EQ(ncclAllReduce(&x, &x, 1, ncclInt32, ncclSum, comm, nullptr), ncclInProgress);
    unsetenv("FAKE_NCCL_ASYNC_FAIL");
    return comm;
  }
  static std::string refusal(ncclComm_t comm, const char* why) {
    char line[128];
    snprintf(line, sizeof(line), "CommDestroy refused: comm=%p %s\n", (void*)comm, why);
    return line;
  }
};

TEST_F(PreloadDestroy, ABusyCommunicatorKeepsItsEntryUntilADestroySucceeds) {
  gc::preload::EntryPtr e;
  const ncclComm_t comm = busyComm(false, &e);
  std::string log;
  {
    FakeNcclLog fake;
    EXPECT_EQ(ncclCommDestroy(comm), ncclInvalidArgument);
    log = fake.text();
  }
  EXPECT_EQ(log, refusal(comm, "is still in progress"));
  EXPECT_FALSE(e->released);
  EXPECT_EQ(gc::preload::entryFor(comm).get(), e.get());  // its next call finds it, set up
  EXPECT_EQ(settled(comm), ncclSuccess);
  EXPECT_EQ(ncclCommDestroy(comm), ncclSuccess);
  EXPECT_TRUE(e->released);
  EXPECT_FALSE(e->aborted.stopped());
}

TEST_F(PreloadDestroy, AFailedCommunicatorIsLeftToTheAbort) {
  gc::preload::EntryPtr e;
  const ncclComm_t comm = busyComm(true, &e);
  EXPECT_EQ(settled(comm), ncclRemoteError);
  std::string log;
  {
    FakeNcclLog fake;
    EXPECT_EQ(ncclCommDestroy(comm), ncclRemoteError);
    log = fake.text();
  }
  char why[32];
  snprintf(why, sizeof(why), "has error %d", (int)ncclRemoteError);
  EXPECT_EQ(log, refusal(comm, why));
  EXPECT_FALSE(e->released);
  EXPECT_FALSE(e->aborted.stopped());
  EXPECT_EQ(ncclCommAbort(comm), ncclSuccess);
  EXPECT_TRUE(e->released);
  EXPECT_TRUE(e->aborted.stopped());  // the gradcomp comm is aborted, not destroyed
}
#endif

// A warning's kind: the values of one call (pointers, counts, ranks) masked,
// the words that name the failure kept.
TEST(PreloadWarnings, AKindMasksTheCallsValues) {
  using gc::preload::warningKind;
  EXPECT_EQ(warningKind("sendbuff=0x7f12ab00 (1024 elements) on rank 3"),
            warningKind("sendbuff=0x7f12cd04 (4096 elements) on rank 1"));
  EXPECT_EQ(warningKind("sendbuff=0x7f12ab00 is NULL"), "sendbuff=# is NULL");
  // Names keep their digits; other reasons stay apart.
  EXPECT_EQ(warningKind("fp16 or bf16, ncclFloat32: CUDA error 2"),
            "fp16 or bf16, ncclFloat32: CUDA error #");
  EXPECT_NE(warningKind("sendbuff=0x10 is pageable host memory"),
            warningKind("recvbuff=0x10 is pageable host memory"));
}

// Calls the library refuses before enqueueing anything (here: buffers not
// aligned to their element size) pass to NCCL with one warning per kind of
// refusal, though each sentence names the call's own buffers: a program
// whose every call is refused with other pointers is warned once, not at
// every call.
TEST(PreloadWarnings, ARefusalIsWarnedOncePerKindWhateverItsPointers) {
  ASSERT_TRUE(kMethodSet);
  setenv("GRADCOMP_NCCL_LIBRARY", GC_FAKE_NCCL, 1);
  const ncclComm_t parent = (ncclComm_t)(uintptr_t)0x3000;
  // Rank 1 of 2 of a CPU world: the buffers are refused before any exchange.
  auto* c = new gradcompComm;
  gradcompConfigInit(&c->cfg);
  c->rank = 1;
  c->nranks = 2;
  c->backend = gc::makeCpuBackend();
  std::vector<std::unique_ptr<gc::Transport>> world = gc::makeCpuWorld(2, 5.0);
  c->transport = std::move(world[1]);
  gc::preload::EntryPtr e = compressingEntry(parent, c);
  e->nranks = 2;
  std::string log;
  testing::internal::CaptureStderr();
  {
    FakeNcclLog fake;
    for (uintptr_t i = 0; i < 50; ++i) {
      // Misaligned floats, other addresses at every call.
      void* send = (void*)(uintptr_t)(0x100001 + 0x1000 * i);
      void* recv = (void*)(uintptr_t)(0x900001 + 0x1000 * i);
      EXPECT_EQ(ncclAllReduce(send, recv, 1 << 20, ncclFloat, ncclSum, parent, nullptr),
                ncclSuccess);
    }
    log = fake.text();
  }
  const std::string err = testing::internal::GetCapturedStderr();
  size_t warned = 0;
  for (size_t at = err.find("passing a call to NCCL"); at != std::string::npos;
       at = err.find("passing a call to NCCL", at + 1)) {
    ++warned;
  }
  EXPECT_EQ(warned, 1u) << err;
  EXPECT_NE(err.find("are not aligned to their element size 4"), std::string::npos) << err;
  size_t passed = 0;
  for (size_t at = log.find("AllReduce"); at != std::string::npos;
       at = log.find("AllReduce", at + 1)) {
    ++passed;
  }
  EXPECT_EQ(passed, 50u) << log;  // every call still reaches NCCL
  e->gc = nullptr;
  delete c;
  unsetenv("GRADCOMP_NCCL_LIBRARY");
}

// Runs fn(r) on a thread of each of two ranks, until both return.
template <class Fn>
void onBothRanks(Fn fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) threads.emplace_back(fn, r);
  for (auto& t : threads) t.join();
}

// The refusals' cases: two ranks of a CPU world whose transports stand in
// for NCCL's, each with a compressing entry made by hand on its communicator
// (commBase + 0x100 * rank + 0x10 * checkCalls) and a buffer of 2 * n floats
// of 1; the stand-in NCCL checks its arguments as NCCL does.
// runCase(kind, comms, b) runs for each kind below `kinds`, under
// GRADCOMP_CHECK_CALLS and then without it.
template <class Case>
void forEachRefusalCase(uintptr_t commBase, size_t n, int kinds, Case runCase) {
  ASSERT_TRUE(kMethodSet);
  setenv("GRADCOMP_NCCL_LIBRARY", GC_FAKE_NCCL, 1);
  setenv("FAKE_NCCL_CHECK_ARGS", "1", 1);
  for (int checkCalls : {1, 0}) {
    gradcompConfig_t cfg;
    gradcompConfigInit(&cfg);
    cfg.checkCalls = checkCalls;
    cfg.cpuTimeoutSec = 10.0f;  // a rank left waiting fails after it (naming nobody)
    gctest::CpuWorld w(2, cfg);
    gctest::ncclLike(w);
    ncclComm_t comms[2];
    std::vector<gc::preload::EntryPtr> entries;
    for (int r = 0; r < 2; ++r) {
      comms[r] = (ncclComm_t)(commBase + 0x100 * r + 0x10 * checkCalls);
      entries.push_back(compressingEntry(comms[r], w.comm(r)));
      entries.back()->rank = r;
      entries.back()->nranks = 2;
    }
    std::vector<std::vector<float>> b(2, std::vector<float>(2 * n, 1.0f));
    for (int kind = 0; kind < kinds; ++kind) {
      SCOPED_TRACE(testing::Message() << "kind " << kind << " checkCalls " << checkCalls);
      if (!checkCalls) {
        // Without the setting only the call after a reset is agreed on.
        for (int r = 0; r < 2; ++r) ASSERT_EQ(gradcompCommResetState(w.comm(r)), gradcompSuccess);
      }
      runCase(kind, comms, b);
      // Before the fix a case costs cpuTimeoutSec: stop at the first.
      if (::testing::Test::HasFailure()) break;
    }
    for (auto& e : entries) e->gc = nullptr;  // the world destroys its comms
    if (::testing::Test::HasFailure()) break;
  }
  unsetenv("FAKE_NCCL_CHECK_ARGS");
  unsetenv("GRADCOMP_NCCL_LIBRARY");
}

// Rank 1's datatype in a refused float Sum of kind 0: one no C++ enum holds
// (passed to NCCL as an int), 1: the first one past NCCL's (routed), 3: a
// reduce-scatter's; at kind 2 its op is negative instead.
int refusedType(int kind) {
  return kind == 0 ? -1 : kind == 1 ? (int)ncclNumTypes : 99;
}

// Rank r's float Sum of that kind on s (rank 1's refused): an allreduce of
// count in place, or at kind 3 a reduce-scatter of recvcount into s + n.
ncclResult_t refusedFloatSum(int kind, int r, float* s, size_t n, size_t count, size_t recvcount,
                             ncclComm_t comm) {
  ncclDataType_t t = ncclFloat32;
  ncclRedOp_t op = ncclSum;
  const int badType = refusedType(kind), minusOne = -1;
  if (r == 1 && kind != 2) memcpy(&t, &badType, sizeof t);
  if (r == 1 && kind == 2) memcpy(&op, &minusOne, sizeof op);
  return kind == 3 ? ncclReduceScatter(s, s + n, recvcount, t, op, comm, nullptr)
                   : ncclAllReduce(s, s, count, t, op, comm, nullptr);
}

// call(r, s) on each rank's buffer, which NCCL runs on rank 0 and refuses on
// rank 1; then on each rank the call made right, compressed (a float Sum
// allreduce of n), which runs on every rank and sums.
template <class Call>
void expectRefusedThenTheCompressedCallRuns(ncclComm_t* comms, std::vector<std::vector<float>>& b,
                                            size_t n, Call call) {
  ncclResult_t res[2], next[2];
  std::string err[2];
  onBothRanks([&](int r) {
    float* s = b[r].data();
    res[r] = call(r, s);
    b[r].assign(2 * n, 1.0f);
    next[r] = ncclAllReduce(s, s, n, ncclFloat32, ncclSum, comms[r], nullptr);
    err[r] = gradcompGetLastError();
  });
  EXPECT_EQ(res[0], ncclSuccess);          // NCCL ran it (the stand-in)
  EXPECT_EQ(res[1], ncclInvalidArgument);  // NCCL's answer
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(next[r], ncclSuccess) << "rank " << r << ": " << err[r];
    EXPECT_FLOAT_EQ(b[r][0], 2.0f) << "rank " << r;
  }
}

// A call whose datatype or op gradcomp refuses goes to NCCL, never through
// gradcomp, while its peers' call (a float Sum) is compressed: where they
// agree on it first (GRADCOMP_CHECK_CALLS, or the first call after a state
// load or reset), the refusing rank joins that agreement with the refusal's
// record once NCCL refused the call too, so they fail naming it instead of
// waiting in it (on NCCL for ever; until 2026-12-07), and the refusing rank
// returns NCCL's own answer. The cases of forEachRefusalCase (refusedType's
// kinds); the call made right runs next.
TEST(PreloadRefusal, ABadDatatypeOrOpFailsThePeersNamingIt) {
  const size_t n = 1 << 20;  // eligible under the default GRADCOMP_MIN_ELEMENTS
  forEachRefusalCase(
      0x6000, n, 4, [&](int kind, ncclComm_t* comms, std::vector<std::vector<float>>& b) {
        ncclResult_t res[2];
        std::string err[2];
        onBothRanks([&](int r) {
          res[r] = refusedFloatSum(kind, r, b[r].data(), n, n, n / 2, comms[r]);
          err[r] = gradcompGetLastError();
        });
        EXPECT_EQ(res[1], ncclInvalidArgument);  // NCCL's answer
        EXPECT_EQ(res[0], ncclInvalidUsage) << err[0];
        const std::string named =
            kind == 2 ? "(its op=-1" : "(its datatype=" + std::to_string(refusedType(kind));
        EXPECT_NE(err[0].find("rank 1 refused this call's arguments " + named), std::string::npos)
            << err[0];
        onBothRanks([&](int r) {
          b[r].assign(2 * n, 1.0f);
          res[r] =
              ncclAllReduce(b[r].data(), b[r].data(), n, ncclFloat32, ncclSum, comms[r], nullptr);
          err[r] = gradcompGetLastError();
        });
        for (int r = 0; r < 2; ++r)
          EXPECT_EQ(res[r], ncclSuccess) << "rank " << r << ": " << err[r];
      });
}

// A call too small to compress (under GRADCOMP_MIN_ELEMENTS; a
// reduce-scatter's input, nranks * recvcount) goes to NCCL on every rank,
// whatever its datatype: the peers of a rank whose datatype or op NCCL
// refused run no agreement on it, so that rank joins none (one joined would
// wait for the peers' next compressed call's agreement and fail it, naming
// the earlier refusal; on NCCL its allgather would meet the peers' call).
// Under GRADCOMP_CHECK_CALLS and at the first call after a reset alike; the
// next call, compressed, runs on every rank.
TEST(PreloadRefusal, ARefusedCallTooSmallToCompressJoinsNoAgreement) {
  const size_t n = 1 << 20, small = 1000;  // eligible, and not (GRADCOMP_MIN_ELEMENTS 16384)
  // refusedType's kinds; kind 3's reduce-scatter has 2 * 1000 input elements.
  forEachRefusalCase(0x7000, n, 4,
                     [&](int kind, ncclComm_t* comms, std::vector<std::vector<float>>& b) {
                       expectRefusedThenTheCompressedCallRuns(comms, b, n, [&](int r, float* s) {
                         return refusedFloatSum(kind, r, s, n, small, small, comms[r]);
                       });
                     });
}

// A refused call whose valid half no rank compresses: an op NCCL refused on
// an integer allreduce, or a datatype NCCL refused with a Max. The refusing
// rank's datatype (or op) is the one its peers passed, and they hand the call
// to NCCL without an agreement: that rank joins none either (one joined
// would wait for the peers' next compressed call's agreement and fail it,
// naming the earlier refusal). The next call, compressed, runs on every rank.
TEST(PreloadRefusal, ARefusedCallWhoseValidHalfNoRankCompressesJoinsNoAgreement) {
  const size_t n = 1 << 20;  // at GRADCOMP_MIN_ELEMENTS and past it
  // 0: an int32 allreduce, a negative op on rank 1; 1: a Max, a datatype
  // no C++ enum holds on rank 1; 2: an int32 reduce-scatter, a negative op
  // on rank 1.
  forEachRefusalCase(0x9000, n, 3,
                     [&](int kind, ncclComm_t* comms, std::vector<std::vector<float>>& b) {
                       expectRefusedThenTheCompressedCallRuns(comms, b, n, [&](int r, float* s) {
                         ncclDataType_t t = kind == 1 ? ncclFloat32 : ncclInt32;
                         ncclRedOp_t op = kind == 1 ? ncclMax : ncclSum;
                         const int minusOne = -1;
                         if (r == 1 && kind == 1) memcpy(&t, &minusOne, sizeof t);
                         if (r == 1 && kind != 1) memcpy(&op, &minusOne, sizeof op);
                         return kind == 2 ? ncclReduceScatter(s, s + n, n, t, op, comms[r], nullptr)
                                          : ncclAllReduce(s, s, n, t, op, comms[r], nullptr);
                       });
                     });
}

// The warnings' keys are bounded: past kMaxWarningKinds distinct ones, a
// new warning is not printed (one line says so) and not recorded. Last in
// this file: it fills the process's keys.
TEST(PreloadWarnings, TheKeysAreBounded) {
  testing::internal::CaptureStderr();
  for (size_t i = 0; i < 2 * gc::preload::kMaxWarningKinds; ++i) {
    gc::preload::warnOnce("bound " + std::to_string(i), "bound warning");
  }
  const std::string err = testing::internal::GetCapturedStderr();
  size_t printed = 0;
  for (size_t at = err.find("bound warning"); at != std::string::npos;
       at = err.find("bound warning", at + 1)) {
    ++printed;
  }
  EXPECT_GT(printed, 0u);
  EXPECT_LE(printed, gc::preload::kMaxWarningKinds);
  size_t said = 0;
  for (size_t at = err.find("later ones are not printed"); at != std::string::npos;
       at = err.find("later ones are not printed", at + 1)) {
    ++said;
  }
  EXPECT_EQ(said, 1u) << err;
}

// The settings that decide which calls a rank hands to gradcomp, compared at a
// communicator's first float Sum/Avg call: every rank's words, reduced with
// ncclMin as the exchange reduces them, give every rank the same verdict,
// which names the first setting that differs with its least and greatest
// values. Settings that do not decide eligibility are left to the set-up's
// own vote, which names them.
TEST(PreloadAgreement, DifferingSettingsAreNamedAlikeOnEveryRank) {
  using gc::preload::GroupMode;
  using gc::preload::kEligibilityWords;
  struct Rank {
    gradcompMethod_t method;
    size_t minElements;
    GroupMode group;
    int bits;
  };
  auto verdict = [](const std::vector<Rank>& ranks) {
    uint64_t least[kEligibilityWords];
    for (uint64_t& w : least) w = UINT64_MAX;
    for (const Rank& r : ranks) {
      gradcompConfig_t cfg;
      gradcompConfigInit(&cfg);
      cfg.method = r.method;
      cfg.minElements = r.minElements;
      cfg.bits = r.bits;
      uint64_t words[kEligibilityWords];
      gc::preload::eligibilityWords(cfg, r.group, words);
      for (size_t i = 0; i < kEligibilityWords; ++i) least[i] = std::min(least[i], words[i]);
    }
    return gc::preload::eligibilityDisagreement(least);
  };
  const gradcompMethod_t qsgd = gradcompMethodQsgd;
  const GroupMode defer = GroupMode::Defer;
  EXPECT_EQ(verdict({{qsgd, 16384, defer, 4}, {qsgd, 16384, defer, 4}}), "");
  EXPECT_EQ(verdict({{qsgd, 16384, defer, 4}, {qsgd, 16384, defer, 3}}), "");
  EXPECT_EQ(verdict({{qsgd, 16384, defer, 4}, {gradcompMethodNone, 16384, defer, 4}}),
            "GRADCOMP_METHOD is none on some ranks and qsgd on others");
  EXPECT_EQ(verdict({{gradcompMethodTopk, 0, defer, 4},
                     {gradcompMethodDgc, 0, defer, 4},
                     {qsgd, 0, defer, 4}}),
            "GRADCOMP_METHOD is qsgd on some ranks and dgc on others");
  EXPECT_EQ(verdict({{qsgd, 16384, defer, 4}, {qsgd, 0, defer, 4}, {qsgd, 100000000, defer, 4}}),
            "GRADCOMP_MIN_ELEMENTS is 0 on some ranks and 100000000 on others");
  EXPECT_EQ(verdict({{qsgd, 16384, GroupMode::Pass, 4}, {qsgd, 16384, GroupMode::Fuse, 4}}),
            "GRADCOMP_GROUP is fuse on some ranks and pass on others");
  // The first that differs, in a fixed order: the same sentence on every rank.
  EXPECT_EQ(verdict({{qsgd, 1, GroupMode::Pass, 4}, {gradcompMethodRandk, 2, defer, 4}}),
            "GRADCOMP_METHOD is qsgd on some ranks and randk on others");
}

// The call that runs the comparison depends on nothing a rank's settings say:
// any call of a float type, Sum or Avg, with elements, whatever its count
// against GRADCOMP_MIN_ELEMENTS and whatever GRADCOMP_METHOD.
TEST(PreloadAgreement, AnyFloatSumOrAvgCallWithElementsOpensIt) {
  using gc::preload::opensAgreement;
  for (ncclDataType_t t : {ncclFloat32, ncclFloat16, ncclBfloat16}) {
    EXPECT_TRUE(opensAgreement(1, t, ncclSum)) << t;
    EXPECT_TRUE(opensAgreement((size_t)1 << 40, t, ncclAvg)) << t;
    EXPECT_FALSE(opensAgreement(0, t, ncclSum)) << t;
    EXPECT_FALSE(opensAgreement(1 << 20, t, ncclMax)) << t;
    EXPECT_FALSE(opensAgreement(1 << 20, t, ncclProd)) << t;
  }
  EXPECT_FALSE(opensAgreement(1 << 20, ncclFloat64, ncclSum));
  EXPECT_FALSE(opensAgreement(1 << 20, ncclInt32, ncclSum));
}

}  // namespace
