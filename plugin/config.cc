#include <ctype.h>
#include <float.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <limits>
#include <string>
#include <system_error>
#include <vector>

#include "abi.h"
#include "checks.h"
#include "format_args.h"
#include "params.h"
#include "shown_text.h"
#include "kernels/qsgd_math.cuh"

namespace gc {

// A config field: its offset and its name (for the validator's sentences).
#define GC_FIELD(f) (ptrdiff_t) offsetof(gradcompConfig_t, f), #f
#define GC_PROCESS_KNOB -1, nullptr

static const char kAlgoChoices[] = "auto=0|twoshot=1|ring=2|allgather=3|sparse=4|hier=5";
static const char kBitsModeChoices[] = "fixed=0|dynamic=1|budget=2";

static const ParamSpec kParams[] = {
    {"GRADCOMP_METHOD", ParamKind::Choice, GC_FIELD(method), 0, 0,
     "none=0|qsgd=1|topk=2|randk=3|dgc=4", "qsgd", "compression method"},
    {"GRADCOMP_ALGO", ParamKind::Choice, GC_FIELD(algo), 0, 0, kAlgoChoices, "auto",
     "exchange algorithm; auto picks by method, ranks, nodes and size"},
    {"GRADCOMP_BITS", ParamKind::Int, GC_FIELD(bits), 2, 8, nullptr, "4",
     "QSGD bits per element including the sign; s = 2^(bits-1)-1 levels"},
    {"GRADCOMP_BUCKET", ParamKind::Int, GC_FIELD(bucketSize), 32, 8192, nullptr, "512",
     "QSGD bucket size d (multiple of 32): one fp32 scale per d elements"},
    {"GRADCOMP_SEED", ParamKind::U64, GC_FIELD(seed), 0, 0, nullptr, "24301",
     "seed of the counter-based RNG (stochastic rounding, rand-k, sampling)"},
    {"GRADCOMP_MIN_ELEMENTS", ParamKind::Size, GC_FIELD(minElements), 0, 1e18, nullptr, "16384",
     "calls with fewer elements (a reduce-scatter's input: nranks * recvcount) pass through to "
     "ncclAllReduce or ncclReduceScatter"},
    {"GRADCOMP_EF", ParamKind::Int, GC_FIELD(errorFeedback), 0, 1, nullptr, "1",
     "error feedback: keep what was not sent in a per-buffer residual"},
    {"GRADCOMP_OWNER_RESIDUAL", ParamKind::Int, GC_FIELD(ownerResidual), 0, 1, nullptr, "1",
     "two-shot, ring and the hierarchy around them: residual of the second quantization on the "
     "chunk owner (the allgather and Elias quantize once and keep none)"},
    {"GRADCOMP_ROUNDING", ParamKind::Choice, GC_FIELD(rounding), 0, 0, "stochastic=0|nearest=1",
     "stochastic",
     "QSGD level rounding: stochastic (unbiased) or nearest (ties down, no random draw; needs "
     "error feedback, and the owner residual where the algorithm quantizes twice)"},
    {"GRADCOMP_LEVELS", ParamKind::Choice, GC_FIELD(levels), 0, 0, "uniform=0|square=1", "uniform",
     "QSGD levels: uniform (level k of s is k/s of the bucket's max |x|) or square ((k/s)^2: "
     "finer steps near zero for the same bits; fixed bits only, not with Elias)"},
    {"GRADCOMP_DENSITY", ParamKind::Float, GC_FIELD(density), 1e-6, 1, nullptr, "0.01",
     "sparse methods: share of elements sent (k = density*n)"},
    {"GRADCOMP_OVERSAMPLE", ParamKind::Float, GC_FIELD(oversample), 1, 16, nullptr, "2",
     "threshold top-k: kmax = ceil(oversample*density*n) fixed slots"},
    {"GRADCOMP_SAMPLE_RATE", ParamKind::Float, GC_FIELD(sampleRate), 1e-4, 1, nullptr, "0.0001",
     "threshold top-k: share of |v| sampled to estimate the threshold (at least 1024 and "
     "64/density entries)"},
    {"GRADCOMP_SELECT", ParamKind::Choice, GC_FIELD(select), 0, 0, "threshold=0|exact=1",
     "threshold", "top-k selector: DGC threshold sampling or exact radix select"},
    {"GRADCOMP_VALUE_TYPE", ParamKind::Choice, GC_FIELD(valueType), 0, 0,
     "float=7|half=6|bfloat16=9", "float",
     "top-k and DGC: type of the values on the wire (rand-k always sends fp32)"},
    {"GRADCOMP_MOMENTUM", ParamKind::Float, GC_FIELD(momentum), 0, 0.999999, nullptr, "0.9",
     "DGC momentum m of the momentum correction"},
    {"GRADCOMP_MOMENTUM_CORRECTION", ParamKind::Int, GC_FIELD(momentumCorrection), 0, 1, nullptr,
     "1", "DGC: accumulate the velocity u = m*u + g instead of g (optimizer momentum off)"},
    {"GRADCOMP_CLIP_NORM", ParamKind::Float, GC_FIELD(clipNorm), 0, 1e30, nullptr, "0",
     "DGC local gradient clipping at clipNorm*N^-1/2 (times the gradients' loss scale, "
     "gradcompCommSetGradScale); 0 is off"},
    {"GRADCOMP_MOMENTUM_MASKING", ParamKind::Int, GC_FIELD(momentumMasking), 0, 1, nullptr, "1",
     "DGC: zero u and v where entries were sent"},
    {"GRADCOMP_WARMUP_STEPS", ParamKind::Int, GC_FIELD(warmupSteps), 0, 100000000, nullptr, "0",
     "DGC: steps of the exponential density ramp 25% -> ... -> density; 0 is off"},
    {"GRADCOMP_BITS_MODE", ParamKind::Choice, GC_FIELD(bitsMode), 0, 0, kBitsModeChoices, "fixed",
     "QSGD bit width: fixed, DQ-SGD dynamic, or budget"},
    {"GRADCOMP_BITS_MIN", ParamKind::Int, GC_FIELD(bitsMin), 2, 8, nullptr, "2",
     "DQ-SGD: smallest bit width"},
    {"GRADCOMP_BITS_MAX", ParamKind::Int, GC_FIELD(bitsMax), 2, 8, nullptr, "8",
     "DQ-SGD: largest bit width"},
    {"GRADCOMP_VARIANCE_TARGET", ParamKind::Float, GC_FIELD(varianceTarget), 1e-9, 1e9, nullptr,
     "0.05", "DQ-SGD: allowed quantization variance bound relative to ||g||^2"},
    {"GRADCOMP_BITS_BUDGET", ParamKind::Float, GC_FIELD(bitsBudget), 2, 8, nullptr, "4",
     "DQ-SGD budget mode: average bits per element over the window"},
    {"GRADCOMP_BUDGET_WINDOW", ParamKind::Int, GC_FIELD(budgetWindow), 1, 1000000, nullptr, "100",
     "DQ-SGD budget mode: window in steps"},
    {"GRADCOMP_ELIAS", ParamKind::Int, GC_FIELD(elias), 0, 1, nullptr, "0",
     "Elias-coded QSGD levels (variable size; not graph-capturable)"},
    {"GRADCOMP_LOCAL_SIZE", ParamKind::Int, GC_FIELD(localSize), 1, 65536, "auto=0", "auto",
     "ranks per node: auto (NCCL host identity; CPU world flat), 1 = flat, L = consecutive "
     "blocks of L ranks"},
    {"GRADCOMP_AUTO", ParamKind::Int, GC_FIELD(autoTune), 0, 1, nullptr, "1",
     "time NCCL and compression (allreduce at the first eligible allreduce, reduce-scatter at "
     "the first eligible reduce-scatter) and pass through the calls compression would not speed "
     "up; 0 always compresses (CUDA backend, and socket comms on the host clock; the "
     "in-process CPU world never times)"},
    {"GRADCOMP_PIPELINE_BYTES", ParamKind::Size, GC_FIELD(pipelineBytes), 0, 1e18, nullptr, "0",
     "two-shot, ring and the QSGD reduce-scatter (flat or as the hierarchy's middle stage; not "
     "allgather or the sparse methods): cut calls into pieces of this many bytes (as fp32) "
     "whose kernels overlap the transfers (CUDA backend), at most 1024 pieces a call (past that "
     "the pieces grow); 0 is off; results are bitwise the same"},
    {"GRADCOMP_CPU_TIMEOUT", ParamKind::Float, GC_FIELD(cpuTimeoutSec), 0.001, 86400, nullptr,
     "120", "CPU backend: seconds a rank waits at a collective for the others before it fails"},
    {"GRADCOMP_PRIVATE_COMM", ParamKind::Int, GC_FIELD(privateComm), 0, 1, nullptr, "0",
     "NCCL backend: exchange on a private split of the communicator (one more NCCL "
     "communicator), so that another thread may poll the program's non-blocking communicator "
     "(ncclCommGetAsyncError, as PyTorch's watchdog) while a gradcomp call runs; any rank's 1 "
     "makes every rank split; the LD_PRELOAD library splits by itself for the communicators it "
     "knows are non-blocking"},
    {"GRADCOMP_CHECK_CALLS", ParamKind::Int, GC_FIELD(checkCalls), 0, 1, nullptr, "0",
     "NCCL backend: before every allreduce and reduce-scatter the ranks agree on the call "
     "(collective, step, count, datatype, op), so that mismatched calls fail on every rank "
     "instead of hanging; costs a small allgather and a host sync per call; not inside CUDA "
     "graph capture (the CPU backend always checks). With it, on both backends, every call "
     "also first votes on its buffers' checks, and a compressed call on its preparation (its "
     "buffer's state, workspace; not under capture), so a rank with a refused buffer or out of "
     "memory fails the call on every rank instead of leaving them waiting"},
    {"GRADCOMP_DEBUG", ParamKind::String, GC_PROCESS_KNOB, 0, 0, nullptr, "(unset)",
     "log level: WARN, INFO or TRACE, to stderr; NONE or OFF: none; another value warns and "
     "uses WARN"},
    {"GRADCOMP_GROUP", ParamKind::String, GC_PROCESS_KNOB, 0, 0, nullptr, "defer",
     "LD_PRELOAD: eligible calls inside a user ncclGroupStart/End: defer (compress each at the "
     "outer GroupEnd), fuse (one fused compressed allreduce there) or pass (to NCCL)"},
    {"GRADCOMP_NCCL_LIBRARY", ParamKind::String, GC_PROCESS_KNOB, 0, 0, nullptr, "libnccl.so.2",
     "LD_PRELOAD: the NCCL library whose pnccl* symbols calls are forwarded to"},
};

#undef GC_FIELD
#undef GC_PROCESS_KNOB

// The other GRADCOMP_* names in the project's sources, so that none of its
// own runs is told that a variable it sets is misspelt. A test greps the tree
// for GRADCOMP_* names and fails on one missing here or from the table.
static const char* const kOtherNames[] = {
    // Read from the environment: the Python package's library path
    // (docs/env.md), the tests' knobs and paths, the build's architectures
    // (tools/*.sh pass it to CMake).
    "GRADCOMP_LIBRARY",
    "GRADCOMP_TEST_GPU",
    "GRADCOMP_FUZZ_CASE",
    "GRADCOMP_FUZZ_EXHAUSTIVE",
    "GRADCOMP_FUZZ_ITERATIONS",
    "GRADCOMP_FUZZ_SEED",
    "GRADCOMP_SEQ_OPS",
    "GRADCOMP_SEQ_SEED",
    "GRADCOMP_SEQ_SEEDS",
    "GRADCOMP_SWEEP",
    "GRADCOMP_SOURCE_DIR",
    "GRADCOMP_CUDA_ARCHS",
    // Not read from the environment, but named in the sources: CMake's
    // options and variables, C macros, Python names, usage placeholders.
    "GRADCOMP_BUILD_TESTS",
    "GRADCOMP_BUILD_BENCH",
    "GRADCOMP_NVCC",
    "GRADCOMP_CMAKE_DIR",
    "GRADCOMP_CORE_SOURCES",
    "GRADCOMP_CPU_TESTS",
    "GRADCOMP_GPU_TESTS",
    "GRADCOMP_GTEST_SOURCE",
    "GRADCOMP_EXPORTS_MAP",
    "GRADCOMP_PRELOAD_MAP",
    "GRADCOMP_INSTALL_LIBDIR",
    "GRADCOMP_NCCL_INCLUDE_DIR",
    "GRADCOMP_NCCL_LINKED",
    "GRADCOMP_PC_PREFIX",
    "GRADCOMP_PC_SYSTEM_INCLUDES",
    "GRADCOMP_SANITIZE_FLAGS",
    "GRADCOMP_TSAN_FLAGS",
    "GRADCOMP_BENCH_COMMON",
    "GRADCOMP_KERNEL_BENCH",
    "GRADCOMP_TEST_SOURCE_DIR",
    "GRADCOMP_TEST_LIBRARY",
    "GRADCOMP_VERSION_MAJOR",
    "GRADCOMP_VERSION_MINOR",
    "GRADCOMP_VERSION_PATCH",
    "GRADCOMP_VERSION_CODE",
    "GRADCOMP_ENUM_MAX",
    "GRADCOMP_FSDP_HOOKS",
    "GRADCOMP_ENV",
    "GRADCOMP_PERF",
    "GRADCOMP_KERNELS_PERF",
};

const ParamSpec* paramTable(size_t* count) {
  *count = sizeof(kParams) / sizeof(kParams[0]);
  return kParams;
}

bool isProjectEnvName(const char* name) {
  for (const ParamSpec& p : kParams) {
    if (strcmp(p.env, name) == 0) return true;
  }
  for (const char* other : kOtherNames) {
    if (strcmp(other, name) == 0) return true;
  }
  return false;
}

// Levenshtein distance, case-insensitive (a setting in lower case is a
// misspelling too).
static size_t editDistance(const char* a, const char* b) {
  const size_t n = strlen(a), m = strlen(b);
  std::vector<size_t> row(m + 1);
  for (size_t j = 0; j <= m; ++j) row[j] = j;
  for (size_t i = 1; i <= n; ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= m; ++j) {
      const size_t up = row[j];
      const bool same = toupper((unsigned char)a[i - 1]) == toupper((unsigned char)b[j - 1]);
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (same ? 0 : 1)});
      diag = up;
    }
  }
  return row[m];
}

// The setting a misspelt name probably meant: the closest of the table's and
// GRADCOMP_LIBRARY within 2 edits, or one that the name begins (a name cut
// short) or that begins the name (a word added), unless the shorter is too
// short to tell (3 characters after GRADCOMP_); null when none is.
static const char* closestSetting(const char* name) {
  static const size_t kPrefix = strlen("GRADCOMP_");
  const char* best = nullptr;
  size_t bestDistance = 0;
  auto consider = [&](const char* known) {
    const size_t d = editDistance(name, known);
    const size_t shorter = std::min(strlen(name), strlen(known));
    const bool prefix = shorter >= kPrefix + 3 && strncasecmp(name, known, shorter) == 0;
    if ((d <= 2 || prefix) && (best == nullptr || d < bestDistance)) {
      best = known;
      bestDistance = d;
    }
  };
  for (const ParamSpec& p : kParams) consider(p.env);
  consider("GRADCOMP_LIBRARY");
  return best;
}

std::vector<std::string> unknownSettings(const char* const* env) {
  std::vector<std::string> lines;
  for (const char* const* e = env; e != nullptr && *e != nullptr; ++e) {
    const char* eq = strchr(*e, '=');
    if (eq == nullptr || strncmp(*e, "GRADCOMP_", 9) != 0) continue;
    const std::string name(*e, eq - *e);
    if (isProjectEnvName(name.c_str())) continue;
    const char* meant = closestSetting(name.c_str());
    lines.push_back(name + "=" + shownValue(eq + 1) + " is not a gradcomp setting " +
                    (meant ? std::string("(did you mean ") + meant + "?)"
                           : std::string("(docs/env.md lists them)")) +
                    "; it is ignored");
  }
  return lines;
}

// At every level, as the other settings' warnings are (a bad GRADCOMP_DEBUG
// or GRADCOMP_GROUP, an empty setting): a misspelt setting leaves the default
// in place with nothing else to show for it. Once per process: a forked child
// says it again, its stderr being perhaps another file.
void warnUnknownSettingsOnce() {
  static std::atomic<pid_t> said{0};
  const pid_t me = getpid();
  if (said.exchange(me) == me) return;
  for (const std::string& line : unknownSettings(environ)) {
    fprintf(stderr, "gradcomp %d WARN %s\n", (int)me, line.c_str());
  }
}

const char* paramString(const char* env, const char* fallback) {
  const char* v = getenv(env);
  if (v != nullptr && *v == '\0') {
    fprintf(stderr, "gradcomp %d WARN %s is set but empty; using %s\n", (int)getpid(), env,
            fallback);
  } else if (v != nullptr) {
    // As the config's variables are.
    GC_INFO("%s set by environment to %s", env, shownValue(v).c_str());
  }
  return (v != nullptr && *v != '\0') ? v : fallback;
}

template <typename T>
static T& field(gradcompConfig_t* c, ptrdiff_t off) {
  return *reinterpret_cast<T*>(reinterpret_cast<char*>(c) + off);
}
template <typename T>
static T field(const gradcompConfig_t* c, ptrdiff_t off) {
  T v;
  memcpy(&v, reinterpret_cast<const char*>(c) + off, sizeof(T));
  return v;
}

std::string shownValue(const char* v, size_t max) {
  const size_t n = strlen(v);
  // Quoted where a byte would not show as itself: "4 " printed bare reads as
  // a refused 4, and a CR (a CRLF environment file) sends the cursor back
  // over the variable's name. Bytes past ASCII too: a no-break space (pasted
  // from a web page) shows as a blank, and a byte that is no UTF-8 (or a
  // character cut at 64 bytes) would go raw into the sentence.
  bool plain = true;
  for (size_t i = 0; i < n && plain; ++i) {
    const unsigned char c = (unsigned char)v[i];
    plain = c > ' ' && c < 0x7f && c != '"';
  }
  std::string out = plain ? "" : "\"";
  for (size_t i = 0; i < n && i < max; ++i) {
    const unsigned char c = (unsigned char)v[i];
    if (plain) {
      out += (char)c;
    } else {
      appendWrittenOut(out, c);
    }
  }
  if (!plain) out += '"';
  // Whole up to `max` characters, so that what is allowed, after it, is
  // never cut off.
  if (n > max) out += "... (" + std::to_string(n) + " characters)";
  return out;
}

// A float field as a sentence shows it (gc::formatFloat): a value just past a
// bound is not shown as a number in range, or as the bound itself.
static std::string shownFloat(float x) {
  char buf[32];
  gc::formatFloat(buf, sizeof(buf), x);
  return buf;
}

static std::string choiceNames(const char* choices) {
  std::string out;
  for (const char* p = choices; *p;) {
    const char* eq = strchr(p, '=');
    const char* bar = strchr(p, '|');
    out.append(p, eq - p);
    if (!bar) break;
    out += '|';
    p = bar + 1;
  }
  return out;
}

static bool parseChoice(const char* choices, const char* v, int* out) {
  for (const char* p = choices; *p;) {
    const char* eq = strchr(p, '=');
    if (strlen(v) == (size_t)(eq - p) && strncasecmp(p, v, eq - p) == 0) {
      *out = atoi(eq + 1);
      return true;
    }
    const char* bar = strchr(p, '|');
    if (!bar) break;
    p = bar + 1;
  }
  return false;
}

static bool choiceHasValue(const char* choices, int x) {
  for (const char* p = choices; *p;) {
    const char* eq = strchr(p, '=');
    if (atoi(eq + 1) == x) return true;
    const char* bar = strchr(p, '|');
    if (!bar) break;
    p = bar + 1;
  }
  return false;
}

// The name of value x in a choice list ("auto=0|twoshot=1|..."), for
// sentences that name a setting as GRADCOMP_* spells it; the number if none.
static std::string choiceName(const char* choices, int x) {
  for (const char* p = choices; *p;) {
    const char* eq = strchr(p, '=');
    if (atoi(eq + 1) == x) return std::string(p, eq - p);
    const char* bar = strchr(p, '|');
    if (!bar) break;
    p = bar + 1;
  }
  return std::to_string(x);
}

std::string settingValueName(const char* field, int value) {
  for (const ParamSpec& p : kParams) {
    if (p.field != nullptr && p.kind == ParamKind::Choice && strcmp(p.field, field) == 0) {
      const std::string name = choiceName(p.choices, value);
      return name == std::to_string(value) ? name : name + " (" + std::to_string(value) + ")";
    }
  }
  return std::to_string(value);
}

// Integers in the environment are plain decimal: digits only, no sign, no
// space, no leading zero (so 010 is neither octal 8 nor a typo of 10) and no
// 0x. hexOk (the seed) also takes 0x followed by 1..16 hex digits.
static bool parseUnsigned(const char* v, bool hexOk, unsigned long long* out) {
  const bool hex = hexOk && v[0] == '0' && (v[1] == 'x' || v[1] == 'X');
  const char* digits = hex ? v + 2 : v;
  // Digits only: strtoull alone would also take a sign, space, or (base 16)
  // a second 0x.
  const size_t n = strspn(digits, hex ? "0123456789abcdefABCDEF" : "0123456789");
  if (n == 0 || digits[n] != '\0' || (hex && n > 16)) return false;
  if (!hex && digits[0] == '0' && digits[1] != '\0') return false;
  char* end = nullptr;
  errno = 0;
  const unsigned long long x = strtoull(digits, &end, hex ? 16 : 10);
  if (errno || *end != '\0') return false;
  *out = x;
  return true;
}

// Whether a number as parseFloat takes it (digits, a '.', an exponent) is
// below 1: the power of ten of its first nonzero digit is negative (0.05: -2,
// 1e-400: -400, 120: 2). Tells a number no double holds that underflows from
// one that overflows.
static bool belowOne(const char* v) {
  long long power = 0;
  bool point = false, nonzero = false;
  const char* p = v;
  for (; isdigit((unsigned char)*p) || *p == '.'; ++p) {
    if (*p == '.') {
      point = true;
    } else if (nonzero) {
      if (!point) ++power;
    } else if (*p != '0') {
      nonzero = true;
      if (point) --power;
    } else if (point) {
      --power;
    }
  }
  if (*p == 'e' || *p == 'E') {
    const bool negative = *++p == '-';
    if (*p == '-' || *p == '+') ++p;
    long long exponent = 0;
    for (; isdigit((unsigned char)*p); ++p)
      exponent = std::min(exponent * 10 + (*p - '0'), 1LL << 40);
    power += negative ? -exponent : exponent;
  }
  return power < 0;
}

// Floats: a digit or '.' first (no sign, space, nan, inf), no hex floats,
// '.' as the decimal point whatever locale the program set: strtod reads
// LC_NUMERIC, so under de_DE it refused 0.01 and took 0,01 (from_chars
// ignores the locale). A number no double holds is read as the nearest that
// is not 0: 1e-400 as the smallest subnormal, which the float check refuses
// as it does 1e-50 (the form's refusal said 1e-400 was not in [0, 1e+30]),
// 1e400 as inf, past every range.
static bool parseFloat(const char* v, double* out) {
  if (!(isdigit((unsigned char)v[0]) || v[0] == '.') || strpbrk(v, "xX") != nullptr) return false;
  const char* end = v + strlen(v);
  double x = 0;
  const std::from_chars_result r = std::from_chars(v, end, x, std::chars_format::general);
  if (r.ptr != end) return false;
  if (r.ec == std::errc::result_out_of_range) {
    x = belowOne(v) ? std::numeric_limits<double>::denorm_min() : HUGE_VAL;
  } else if (r.ec != std::errc()) {
    return false;
  }
  *out = x;
  return true;
}

static gradcompResult_t applyParam(const ParamSpec& p, const char* v, gradcompConfig_t* c) {
  switch (p.kind) {
    case ParamKind::Int:
    case ParamKind::Size: {
      int named;  // an Int may also take names (choices), e.g. auto
      if (p.choices != nullptr && parseChoice(p.choices, v, &named)) {
        field<int>(c, p.offset) = named;
        return gradcompSuccess;
      }
      unsigned long long x = 0;
      // Compared as integers: 1e18 + 1 is 1e18 as a double.
      if (!parseUnsigned(v, false, &x) || x < (unsigned long long)p.min ||
          x > (unsigned long long)p.max) {
        return setError(gradcompInvalidArgument, "%s=%s is not %s%san integer in %.0f..%.0f, in %s",
                        p.env, shownValue(v).c_str(),
                        p.choices ? choiceNames(p.choices).c_str() : "", p.choices ? " or " : "",
                        p.min, p.max, kIntegerForm);
      }
      if (p.kind == ParamKind::Int) {
        field<int>(c, p.offset) = (int)x;
      } else {
        field<size_t>(c, p.offset) = (size_t)x;
      }
      return gradcompSuccess;
    }
    case ParamKind::U64: {
      unsigned long long x = 0;
      if (!parseUnsigned(v, true, &x)) {
        return setError(gradcompInvalidArgument,
                        "%s=%s is not an unsigned 64-bit integer, in %s or %s", p.env,
                        shownValue(v).c_str(), kIntegerForm, kHexForm);
      }
      field<uint64_t>(c, p.offset) = x;
      return gradcompSuccess;
    }
    case ParamKind::Float: {
      double x = 0.0;
      if (!parseFloat(v, &x) || !(x >= p.min && x <= p.max)) {
        return setError(gradcompInvalidArgument, "%s=%s is not a number in [%g, %g], in %s", p.env,
                        shownValue(v).c_str(), p.min, p.max, kNumberForm);
      }
      // Stored as a float: a nonzero value it would flush to 0 (for some
      // settings "off") is refused, not changed.
      if (x != 0.0 && !(fabs((double)(float)x) >= FLT_MIN)) {
        return setError(gradcompInvalidArgument,
                        "%s=%s is not a number in [%g, %g] that a float holds: a nonzero value "
                        "must be at least %g",
                        p.env, shownValue(v).c_str(), p.min, p.max, (double)FLT_MIN);
      }
      field<float>(c, p.offset) = (float)x;
      return gradcompSuccess;
    }
    case ParamKind::Choice: {
      int x;
      if (!parseChoice(p.choices, v, &x)) {
        return setError(gradcompInvalidArgument, "%s=%s is not one of %s", p.env,
                        shownValue(v).c_str(), choiceNames(p.choices).c_str());
      }
      field<int>(c, p.offset) = x;
      return gradcompSuccess;
    }
    case ParamKind::String:
      return gradcompSuccess;
  }
  return gradcompSuccess;
}

// A field against its table entry: the one range the environment parser and
// the struct validator share. The sentence names the field and the variable.
static gradcompResult_t checkField(const ParamSpec& p, const gradcompConfig_t* c) {
  const char* name = p.field ? p.field : p.env;
  switch (p.kind) {
    case ParamKind::Int: {
      const int x = field<int>(c, p.offset);
      // An Int that also takes names (auto=0) accepts their values too.
      GC_ARG((x >= p.min && x <= p.max) || (p.choices != nullptr && choiceHasValue(p.choices, x)),
             "%s=%d (%s) is out of range %.0f..%.0f%s%s", name, x, p.env, p.min, p.max,
             p.choices ? " or " : "", p.choices ? p.choices : "");
      return gradcompSuccess;
    }
    case ParamKind::Size: {
      const size_t x = field<size_t>(c, p.offset);
      GC_ARG(x >= (size_t)p.min && x <= (size_t)p.max, "%s=%zu (%s) is out of range %.0f..%.0f",
             name, x, p.env, p.min, p.max);
      return gradcompSuccess;
    }
    case ParamKind::Float: {
      const float x = field<float>(c, p.offset);
      GC_ARG(x >= (float)p.min && x <= (float)p.max, "%s=%s (%s) is out of range [%g, %g]", name,
             shownFloat(x).c_str(), p.env, p.min, p.max);
      return gradcompSuccess;
    }
    case ParamKind::Choice: {
      const int x = field<int>(c, p.offset);
      GC_ARG(choiceHasValue(p.choices, x), "%s=%d (%s) is not one of %s", name, x, p.env,
             p.choices);
      return gradcompSuccess;
    }
    case ParamKind::U64:
    case ParamKind::String:
      return gradcompSuccess;
  }
  return gradcompSuccess;
}

static gradcompResult_t validateWhole(const gradcompConfig_t* c);

gradcompResult_t configFromEnvLenient(gradcompConfig_t* c) {
  warnUnknownSettingsOnce();
  configDefaults(c);
  size_t n;
  const ParamSpec* table = paramTable(&n);
  gradcompResult_t first = gradcompSuccess;
  std::string firstMsg;
  for (size_t i = 0; i < n; ++i) {
    const char* v = getenv(table[i].env);
    if (v == nullptr || table[i].offset < 0) continue;
    gradcompResult_t res;
    if (*v == '\0') {
      res = setError(gradcompInvalidArgument, "%s is set but empty: unset it or give a value",
                     table[i].env);
    } else {
      GC_INFO("%s set by environment to %s", table[i].env, shownValue(v).c_str());
      res = applyParam(table[i], v, c);
    }
    if (res != gradcompSuccess && first == gradcompSuccess) {
      first = res;
      firstMsg = gradcompGetLastError();
    }
  }
  if (first != gradcompSuccess) return restoreError(first, "%s", firstMsg.c_str());
  return validateWhole(c);
}

void configDefaults(gradcompConfig_t* c) {
  memset(c, 0, sizeof(*c));
  c->structSize = sizeof(*c);
  c->method = gradcompMethodQsgd;
  c->algo = gradcompAlgoAuto;
  c->bits = 4;
  c->bucketSize = 512;
  c->seed = 24301;
  c->minElements = 16384;
  c->errorFeedback = 1;
  c->ownerResidual = 1;
  c->density = 0.01f;
  c->oversample = 2.0f;
  c->sampleRate = 1e-4f;  // the sample floor: docs/sparse.md, "the sample"
  c->select = gradcompSelectThreshold;
  c->valueType = ncclFloat32;
  c->momentum = 0.9f;
  c->momentumCorrection = 1;
  c->clipNorm = 0.0f;
  c->momentumMasking = 1;
  c->warmupSteps = 0;
  c->bitsMode = gradcompBitsFixed;
  c->bitsMin = 2;
  c->bitsMax = 8;
  c->varianceTarget = 0.05f;
  c->bitsBudget = 4.0f;
  c->budgetWindow = 100;
  c->elias = 0;
  c->localSize = 0;
  c->autoTune = 1;
  c->pipelineBytes = 0;
  c->cpuTimeoutSec = 120.0f;
  c->rounding = gradcompRoundStochastic;
  c->checkCalls = 0;
  c->reserved0 = 0;
  c->levels = gradcompLevelsUniform;
  c->reserved1 = 0;
  c->privateComm = 0;
}

static size_t fieldBytes(ParamKind kind) {
  return kind == ParamKind::Size || kind == ParamKind::U64 ? 8 : 4;
}

// A variable set for a field the caller's header does not have would be
// dropped without a word: refuse it instead.
static gradcompResult_t checkEnvFitsCaller(size_t structSize) {
  size_t n;
  const ParamSpec* table = paramTable(&n);
  for (size_t i = 0; i < n; ++i) {
    const ParamSpec& p = table[i];
    if (p.offset < 0 || getenv(p.env) == nullptr) continue;
    GC_ARG(configHasField(structSize, (size_t)p.offset, fieldBytes(p.kind)),
           "%s is set but the caller's gradcompConfig_t (structSize=%zu) has no field %s: build "
           "against this library's gradcomp.h, or unset it",
           p.env, structSize, p.field);
  }
  return gradcompSuccess;
}

// Every field of the library's whole struct; configFromCaller has made it one.
static gradcompResult_t validateWhole(const gradcompConfig_t* c) {
  size_t n;
  const ParamSpec* table = paramTable(&n);
  for (size_t i = 0; i < n; ++i) {
    if (table[i].offset >= 0) GC_CHECK(checkField(table[i], c));
  }
  // What the table's ranges cannot say.
  GC_ARG(c->bucketSize % 32 == 0, "bucketSize=%d (GRADCOMP_BUCKET) is not a multiple of 32",
         c->bucketSize);
  GC_ARG(c->bitsMin <= c->bitsMax,
         "bitsMin=%d..bitsMax=%d (GRADCOMP_BITS_MIN, GRADCOMP_BITS_MAX) must satisfy bitsMin <= "
         "bitsMax",
         c->bitsMin, c->bitsMax);
  GC_ARG(c->bitsMode != gradcompBitsBudget || c->bitsBudget >= (float)c->bitsMin,
         "bitsBudget=%s (GRADCOMP_BITS_BUDGET) is below bitsMin=%d (GRADCOMP_BITS_MIN): no bit "
         "width keeps the budget",
         shownFloat(c->bitsBudget).c_str(), c->bitsMin);
  const bool sparse = c->method == gradcompMethodTopk || c->method == gradcompMethodRandk ||
                      c->method == gradcompMethodDgc;
  GC_ARG(!sparse || c->algo == gradcompAlgoAuto || c->algo == gradcompAlgoSparseAllgather ||
             c->algo == gradcompAlgoHier,
         "algo=%s (GRADCOMP_ALGO) is for method qsgd; the sparse methods (topk, randk, dgc) take "
         "auto, sparse or hier",
         choiceName(kAlgoChoices, (int)c->algo).c_str());
  // Rand-k sends its k drawn values unscaled, which is right with memory
  // (the rest waits in the residual); without it the sum would be about
  // density times the gradient and the undrawn entries lost.
  GC_ARG(c->method != gradcompMethodRandk || c->errorFeedback,
         "method=randk with errorFeedback=0 (GRADCOMP_EF) would send k of n entries unscaled and "
         "drop the rest (a sum of about density=%g times the gradient): set GRADCOMP_EF=1",
         (double)c->density);
  // Nearest rounding is biased per step: an entry below half a level would
  // never be sent unless a residual carries it to later steps.
  const bool nearest = c->method == gradcompMethodQsgd && c->rounding == gradcompRoundNearest;
  GC_ARG(!nearest || c->errorFeedback,
         "rounding=nearest (GRADCOMP_ROUNDING) with errorFeedback=0 (GRADCOMP_EF) would never "
         "send entries below half a QSGD level: set GRADCOMP_EF=1 or GRADCOMP_ROUNDING=stochastic");
  GC_ARG(
      !nearest || c->ownerResidual || c->algo == gradcompAlgoAllgather || c->elias,
      "rounding=nearest (GRADCOMP_ROUNDING) with ownerResidual=0 (GRADCOMP_OWNER_RESIDUAL) would "
      "bias the second quantization of algo=%s (GRADCOMP_ALGO; twoshot, ring, hier and auto "
      "quantize twice): set GRADCOMP_OWNER_RESIDUAL=1, GRADCOMP_ALGO=allgather or "
      "GRADCOMP_ROUNDING=stochastic",
      choiceName(kAlgoChoices, (int)c->algo).c_str());
  GC_ARG(c->method != gradcompMethodQsgd || c->algo != gradcompAlgoSparseAllgather,
         "algo=sparse (GRADCOMP_ALGO) is for the sparse methods; method qsgd takes auto, twoshot, "
         "ring, allgather or hier");
  // Square levels: DQ-SGD's bit choice bounds the variance of uniform levels
  // (a different function of s), and Elias codes level numbers whose sizes
  // suit uniform levels, so both keep uniform levels.
  const bool square = c->method == gradcompMethodQsgd && c->levels == gradcompLevelsSquare;
  GC_ARG(!square || c->bitsMode == gradcompBitsFixed,
         "levels=square (GRADCOMP_LEVELS) with bitsMode=%s (GRADCOMP_BITS_MODE): DQ-SGD's bit "
         "choice models uniform levels; set GRADCOMP_BITS_MODE=fixed or GRADCOMP_LEVELS=uniform",
         choiceName(kBitsModeChoices, (int)c->bitsMode).c_str());
  GC_ARG(!square || !c->elias,
         "levels=square (GRADCOMP_LEVELS) with elias=1 (GRADCOMP_ELIAS): the Elias codec codes "
         "uniform levels only; set GRADCOMP_ELIAS=0 or GRADCOMP_LEVELS=uniform");
  return gradcompSuccess;
}

gradcompResult_t validConfigFromCaller(const gradcompConfig_t* caller, gradcompConfig_t* whole) {
  GC_CHECK(configFromCaller(caller, whole));
  return validateWhole(whole);
}

}  // namespace gc

extern "C" {

GC_EXPORT gradcompResult_t gradcompConfigInitSized(gradcompConfig_t* c, size_t structSize) {
  GC_ARG(c != nullptr, "config is NULL");
  GC_CHECK(gc::checkConfigSize(structSize));
  gradcompConfig_t whole;
  gc::configDefaults(&whole);
  gc::configToCaller(whole, c, structSize);
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompConfigFromEnvSized(gradcompConfig_t* c, size_t structSize) {
  GC_ARG(c != nullptr, "config is NULL");
  GC_CHECK(gc::checkConfigSize(structSize));
  // The caller's struct changes only on success.
  gradcompConfig_t parsed;
  GC_CHECK(gc::configFromEnvLenient(&parsed));
  GC_CHECK(gc::checkEnvFitsCaller(structSize));
  gc::configToCaller(parsed, c, structSize);
  return gradcompSuccess;
}

GC_EXPORT gradcompResult_t gradcompConfigValidate(const gradcompConfig_t* c) {
  gradcompConfig_t whole;
  return gc::validConfigFromCaller(c, &whole);
}

GC_EXPORT const char* gradcompEnvName(int index) {
  size_t n;
  const gc::ParamSpec* table = gc::paramTable(&n);
  return index >= 0 && (size_t)index < n ? table[index].env : nullptr;
}

// The functions binaries built against headers before 0.3 call (the header's
// macros of the same names call the Sized forms).
#undef gradcompConfigInit
#undef gradcompConfigFromEnv

GC_EXPORT gradcompResult_t gradcompConfigInit(gradcompConfig_t* c) {
  return gradcompConfigInitSized(c, gc::kLegacyConfigSize);
}

GC_EXPORT gradcompResult_t gradcompConfigFromEnv(gradcompConfig_t* c) {
  return gradcompConfigFromEnvSized(c, gc::kLegacyConfigSize);
}

}  // extern "C"
