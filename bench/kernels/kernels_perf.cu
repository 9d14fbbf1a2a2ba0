// gradcomp_kernels_perf: throughput of gradcomp's GPU kernels, as GB/s of the
// bytes they must move at least (their ideal traffic) and as a fraction of a
// device-to-device copy measured in the same run at the same n.
//
//   QSGD encode + error feedback: reads g (n * type) and r (4n), writes r (4n)
//   (stochastic rounding, and     and the encoding E(n) = 4*ceil(n/d) + 4*ceil(n*b/32)
//   _nearest: GRADCOMP_ROUNDING=nearest's kernel;
//   _square: GRADCOMP_LEVELS=square's)
//   QSGD encode (GRADCOMP_EF=0):  reads g, writes E(n)
//   QSGD encode, batched:         the encode with error feedback of 8 segments
//   (encode_batch)                of n / 8 in one launch (_batch8) and in 8
//                                 (_8_launches), 4 bits
//   QSGD decode, batched:         the decode overwrite of 8 segments of n / 8
//   (decode_batch)                into an fp32 output, one launch and 8; into
//                                 fp16 / bf16, one launch converting as it
//                                 decodes and 8 decodes into fp32 each with
//                                 its conversion; the one launch sets the
//                                 non-finite check's flag as it stores, the
//                                 8 are followed by the check's pass over
//                                 the output (reads 8 E(n/8), writes
//                                 n * sizeof(type); the pass not counted)
//   QSGD owner's sum (sum):       the owner's sum at N = 8 of a buffer of n:
//                                 7 encodings of n/8 and its own fp32 n/8
//                                 into n/8 outputs, one fused launch
//                                 (_sum8, gc::cuda::qsgdSum) and the 8 it
//                                 replaces (_sum8_launches: decode, 6
//                                 decode-accumulates, add; into fp16/bf16
//                                 with fromFloat), 4 bits (reads 7 E(n/8)
//                                 and 4n/8, writes n/8 * sizeof(type))
//   QSGD decode:                  reads E(n), writes 4n (overwrite) or reads
//                                 and writes 4n (accumulate)
//   copy:                         reads and writes 4n
//   fill:                         writes 4n (cudaMemsetAsync: the write-only
//                                 stream a decode's 4n of output is, beside it)
//   top-k select (threshold,      reads 4n (the vector; the sample, counts
//   exact), fp32 input:           and the kmax indices are not counted); the
//                                 threshold selector also at the least sample
//                                 rate (topk_threshold_min_sample) and with
//                                 the look-back compaction, which no call
//                                 runs (topk_threshold_lookback,
//                                 gc::cuda::selectThresholdLookback)
//   sparse_check_lists:           reads L * kmax * 4 (the indices of the L
//                                 received slot lists the sparse allgather
//                                 checks in one launch, after a memset of L flags)
//   nonfinite_flag:               reads 4n (rand-k's non-finite flag of v)
//
// The last two have no public entry point: this benchmark links the
// library's objects, as the tests do, to time gc::cuda::sparseCheckLists and
// gc::cuda::sparseNonFiniteFlag, which every sparse allgather (the lists) and
// every rand-k call (the flag) launches. Their rows carry "lists" and
// "density"/"k" (the slots of each list: the threshold selector's kmax).
//
// The top-k rows select from benchValue(seed 1, rank 0), the data
// bench/torch_topk.py gives torch.topk, with the library's default
// oversample and sample rate; their JSON rows carry "density" and "k" (the
// slots) for tools/gpu_report.py.
#include <cuda_runtime.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../common/data_ops.h"
#include "../common/kernel_rates.h"
#include "codecs/qsgd.h"
#include "codecs/sparse.h"
#include "gradcomp.h"
#include "gradcomp/reference.h"
#include "gradcomp/sparse.h"
#include "kernels/common_math.cuh"
#include "kernels/elementwise.h"
#include "kernels/qsgd_math.cuh"

namespace {

#define CHECK_CUDA(call)                                                                 \
  do {                                                                                   \
    cudaError_t e_ = (call);                                                             \
    if (e_ != cudaSuccess) {                                                             \
      fprintf(stderr, "gradcomp_kernels_perf: %s: %s\n", #call, cudaGetErrorString(e_)); \
      exit(3);                                                                           \
    }                                                                                    \
  } while (0)

struct Args {
  int minLog2 = 14, maxLog2 = 28, stepLog2 = 2;
  int bucket = 512;
  std::vector<int> bits = {2, 4, 8};
  std::vector<ncclDataType_t> dtypes = {ncclFloat32, ncclFloat16, ncclBfloat16};
  std::vector<double> densities = {0.001, 0.01};
  int lists = 8;  // received slot lists the sparse check reads: the ranks of perf_n8_sparse
  std::string json;
  // --only: the kinds of kernel to run (kKinds, comma-separated; empty: all);
  // --skip: kinds not to run. --once: every kernel launched once, untimed
  // batches skipped, for a profiler that replays each launch (the profile
  // step of tools/gpu-check.sh).
  std::vector<std::string> only, skip;
  bool once = false;
  bool runs(const char* kind) const {
    auto has = [kind](const std::vector<std::string>& v) {
      for (const std::string& k : v)
        if (k == kind) return true;
      return false;
    };
    return (only.empty() || has(only)) && !has(skip);
  }
};

const char* const kKinds[] = {"copy",
                              "encode",
                              "encode_nearest",
                              "encode_square",
                              "encode_square_nearest",
                              "encode_no_ef",
                              "encode_batch",
                              "decode",
                              "decode_batch",
                              "sum",
                              "topk_threshold",
                              "topk_threshold_min_sample",
                              "topk_threshold_lookback",
                              "topk_exact",
                              "sparse_checks"};

// The names of a comma-separated list, empty ones included (which no list
// of names accepts).
std::vector<std::string> splitNames(const char* v) {
  std::vector<std::string> names;
  const std::string s = v;
  for (size_t p = 0; p <= s.size();) {
    size_t q = s.find(',', p);
    if (q == std::string::npos) q = s.size();
    names.push_back(s.substr(p, q - p));
    p = q + 1;
  }
  return names;
}

// A comma-separated list of kinds into *out; false (and a message naming the
// value and the kinds) for a name that is not one.
bool parseKinds(const char* flag, const char* v, std::vector<std::string>* out) {
  out->clear();
  for (const std::string& k : splitNames(v)) {
    bool known = false;
    for (const char* kind : kKinds) known = known || k == kind;
    if (!known) {
      std::string all;
      for (const char* kind : kKinds) all += std::string(all.empty() ? "" : ", ") + kind;
      fprintf(stderr, "gradcomp_kernels_perf: %s %s: '%s' is not a kind; kinds are %s\n", flag, v,
              k.c_str(), all.c_str());
      return false;
    }
    out->push_back(k);
  }
  return true;
}

// GRADCOMP_SAMPLE_RATE's least value (plugin/config.cc): the threshold
// selector's sample is then as small as its floor max(1024, 64/density) allows.
constexpr float kMinSampleRate = 1e-4f;

struct Result {
  std::string kernel;
  const char* dtype;
  int bits;
  size_t n;
  double us, bytes, gbps, copyGbps;
  double density = 0;  // top-k and sparse-check rows only
  size_t k = 0;
  const char* rounding = nullptr;  // encode rows: "stochastic" or "nearest"
  int lists = 0;                   // sparse_check_lists rows
  double sampleRate = 0;           // threshold top-k rows
};

const char* typeName(ncclDataType_t t) {
  return t == ncclFloat16 ? "half" : (t == ncclBfloat16 ? "bfloat16" : "float");
}
gc::DType toDType(ncclDataType_t t) {
  return t == ncclFloat16 ? gc::DType::F16 : (t == ncclBfloat16 ? gc::DType::BF16 : gc::DType::F32);
}

void usage() {
  printf(
      "Usage: gradcomp_kernels_perf [--min-log2 14] [--max-log2 28] [--step-log2 2]\n"
      "                             [--bucket 512] [--bits 2,4,8] [--dtypes float,half,bfloat16]\n"
      "                             [--densities 0.001,0.01] [--lists 8] [--json FILE]\n"
      "                             [--only KINDS] [--skip KINDS]\n"
      "                             [--once 1]\n"
      "Sizes n = 2^min .. 2^max elements, capped by free GPU memory. --once 1 launches each\n"
      "kernel once (its time is that one launch), for a profiler. --lists: the received slot\n"
      "lists the sparse check reads (the ranks of a sparse allgather). The JSON is rewritten\n"
      "after every row, so a run that stops keeps what it measured. KINDS: comma-separated\n"
      "from");
  // From kKinds itself, so that the help names every kind --only takes.
  const size_t kinds = sizeof(kKinds) / sizeof(kKinds[0]);
  for (size_t i = 0; i < kinds; ++i) printf(" %s%s", kKinds[i], i + 1 < kinds ? "," : ".\n");
}

// A flag's value (or one element of its comma-separated list) as a whole int in
// plain decimal (a '-' allowed); false, with the flag and the text named, for
// anything else ("abc", "4x", "", " 4"): the ranges are checked after the
// flags, on the numbers.
bool parseInt(const char* flag, const std::string& s, int* out) {
  const char* p = s.c_str();
  char* end = nullptr;
  errno = 0;
  const long x = (*p == '-' || (*p >= '0' && *p <= '9')) ? strtol(p, &end, 10) : 0;
  if (end == nullptr || end == p || *end != '\0' || errno == ERANGE || x < INT_MIN || x > INT_MAX) {
    fprintf(stderr, "gradcomp_kernels_perf: %s '%s' is not an integer\n", flag, s.c_str());
    return false;
  }
  *out = (int)x;
  return true;
}

// The same for a decimal number ("0.001", "1e-3").
bool parseNumber(const char* flag, const std::string& s, double* out) {
  const char* p = s.c_str();
  char* end = nullptr;
  errno = 0;
  const double x = (*p == '-' || *p == '.' || (*p >= '0' && *p <= '9')) ? strtod(p, &end) : 0;
  if (end == nullptr || end == p || *end != '\0' || errno == ERANGE) {
    fprintf(stderr, "gradcomp_kernels_perf: %s '%s' is not a number\n", flag, s.c_str());
    return false;
  }
  *out = x;
  return true;
}

bool parseInts(const char* flag, const char* v, std::vector<int>* out) {
  out->clear();
  for (const std::string& t : splitNames(v)) {
    int x = 0;
    if (!parseInt(flag, t, &x)) return false;
    out->push_back(x);
  }
  return true;
}

bool parseArgs(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (f == "-h" || f == "--help") {
      usage();
      exit(0);
    }
    if (!v) {
      fprintf(stderr, "gradcomp_kernels_perf: %s needs a value\n", f.c_str());
      return false;
    }
    ++i;
    const char* flag = f.c_str();
    if (f == "--min-log2") {
      if (!parseInt(flag, v, &a->minLog2)) return false;
    } else if (f == "--max-log2") {
      if (!parseInt(flag, v, &a->maxLog2)) return false;
    } else if (f == "--step-log2") {
      if (!parseInt(flag, v, &a->stepLog2)) return false;
    } else if (f == "--bucket") {
      if (!parseInt(flag, v, &a->bucket)) return false;
    } else if (f == "--bits") {
      if (!parseInts(flag, v, &a->bits)) return false;
    } else if (f == "--json") {
      a->json = v;
    } else if (f == "--once") {
      int once = 0;
      if (!parseInt(flag, v, &once)) return false;
      if (once != 0 && once != 1) {
        fprintf(stderr, "gradcomp_kernels_perf: --once %d is not 0 or 1\n", once);
        return false;
      }
      a->once = once == 1;
    } else if (f == "--lists") {
      if (!parseInt(flag, v, &a->lists)) return false;
    } else if (f == "--only") {
      if (!parseKinds("--only", v, &a->only)) return false;
    } else if (f == "--skip") {
      if (!parseKinds("--skip", v, &a->skip)) return false;
    } else if (f == "--densities") {
      a->densities.clear();
      for (const std::string& t : splitNames(v)) {
        double d = 0;
        if (!parseNumber(flag, t, &d)) return false;
        a->densities.push_back(d);
      }
    } else if (f == "--dtypes") {
      a->dtypes.clear();
      for (const std::string& t : splitNames(v)) {
        if (t == "float")
          a->dtypes.push_back(ncclFloat32);
        else if (t == "half")
          a->dtypes.push_back(ncclFloat16);
        else if (t == "bfloat16")
          a->dtypes.push_back(ncclBfloat16);
        else {
          fprintf(stderr, "gradcomp_kernels_perf: --dtypes %s: types are float, half, bfloat16\n",
                  v);
          return false;
        }
      }
    } else {
      fprintf(stderr, "gradcomp_kernels_perf: unknown flag %s (see --help)\n", f.c_str());
      return false;
    }
  }
  if (a->minLog2 < 10 || a->maxLog2 > 31 || a->minLog2 > a->maxLog2 || a->stepLog2 < 1) {
    fprintf(
        stderr,
        "gradcomp_kernels_perf: sizes 2^%d..2^%d step %d: need 10 <= min <= max <= 31, step >= 1\n",
        a->minLog2, a->maxLog2, a->stepLog2);
    return false;
  }
  for (double d : a->densities) {
    if (!(d > 0 && d <= 1)) {
      fprintf(stderr, "gradcomp_kernels_perf: --densities %g not in (0, 1]\n", d);
      return false;
    }
  }
  // The library's range (gradcompConfig's bucketSize), refused before any
  // row runs.
  if (a->bucket < gc::qsgd::kMinBucket || a->bucket > gc::qsgd::kMaxBucket || a->bucket % 32 != 0) {
    fprintf(stderr, "gradcomp_kernels_perf: --bucket %d not a multiple of 32 in %d..%d\n",
            a->bucket, gc::qsgd::kMinBucket, gc::qsgd::kMaxBucket);
    return false;
  }
  for (int b : a->bits) {
    if (b < 2 || b > 8) {
      fprintf(stderr, "gradcomp_kernels_perf: --bits %d not in 2..8\n", b);
      return false;
    }
  }
  if (a->lists < 1 || a->lists > 1024) {
    fprintf(stderr, "gradcomp_kernels_perf: --lists %d not in 1..1024\n", a->lists);
    return false;
  }
  return true;
}

// Microseconds per launch of `reps` back-to-back launches.
template <typename F>
double batchUs(cudaStream_t s, cudaEvent_t a, cudaEvent_t b, int reps, F&& launch) {
  CHECK_CUDA(cudaEventRecord(a, s));
  for (int i = 0; i < reps; ++i) launch();
  CHECK_CUDA(cudaEventRecord(b, s));
  CHECK_CUDA(cudaEventSynchronize(b));
  float ms = 0;
  CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
  return ms * 1e3 / reps;
}

// Per-launch time in us: batches long enough to swamp launch gaps, median of 5.
// once: a single launch, timed alone (under a profiler).
template <typename F>
double timeIt(cudaStream_t s, F&& launch, bool once = false) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  std::vector<double> per;
  if (once) {
    per.push_back(batchUs(s, a, b, 1, launch));
  } else {
    launch();
    const double one = batchUs(s, a, b, 1, launch);
    const int reps = std::max(3, std::min(200, (int)(5000.0 / std::max(one, 1.0))));
    for (int batch = 0; batch < 5; ++batch) per.push_back(batchUs(s, a, b, reps, launch));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(per.begin(), per.end());
  return per[per.size() / 2];
}

void gcCheck(gradcompResult_t r, const char* what) {
  if (r != gradcompSuccess) {
    fprintf(stderr, "gradcomp_kernels_perf: %s: %s\n", what, gradcompGetLastError());
    exit(3);
  }
}

// The sparse exchange's per-call checks at n: the received slot lists'
// check (a.lists lists of the threshold selector's kmax slots, laid out as
// the sparse allgather's gather buffer, each a well-formed list the selector
// picked from g, so every slot is read and none is rejected) per density,
// and rand-k's non-finite flag of an all-finite g (the whole vector read).
template <typename Report>
void timeSparseChecks(const Args& a, cudaStream_t s, const float* g, size_t n,
                      const gradcompConfig_t& cfg, double copyGbps, Report&& report) {
  for (double d : a.densities) {
    size_t slots = 0, wsBytes = 0;
    gcCheck(gradcompTopkSlots(n, (float)d, cfg.oversample, 0, &slots), "topk slots");
    gcCheck(gradcompTopkWorkspaceBytes(n, (float)d, cfg.oversample, cfg.sampleRate, 0, &wsBytes),
            "topk workspace");
    // A slot list of kmax indices and fp32 values, 16-byte aligned parts.
    const size_t stride = (slots * 4 + 15) / 16 * 16 + (slots * 4 + 15) / 16 * 16;
    char* gather = nullptr;
    void* ws = nullptr;
    uint32_t* flags = nullptr;
    CHECK_CUDA(cudaMalloc(&gather, stride * a.lists));
    CHECK_CUDA(cudaMalloc(&ws, wsBytes));
    CHECK_CUDA(cudaMalloc(&flags, a.lists * sizeof(uint32_t)));
    gcCheck(gradcompTopkSelect(g, n, (float)d, cfg.oversample, cfg.sampleRate, 0, 1,
                               reinterpret_cast<uint32_t*>(gather), nullptr, ws, wsBytes, s),
            "topk select");
    for (int i = 1; i < a.lists; ++i)
      CHECK_CUDA(
          cudaMemcpyAsync(gather + i * stride, gather, slots * 4, cudaMemcpyDeviceToDevice, s));
    const double us = timeIt(
        s,
        [&] {
          CHECK_CUDA(gc::cuda::sparseCheckLists(gather, stride, a.lists, -1, slots, n, flags, s));
        },
        a.once);
    std::vector<uint32_t> rejected(a.lists);
    CHECK_CUDA(cudaMemcpyAsync(rejected.data(), flags, a.lists * sizeof(uint32_t),
                               cudaMemcpyDeviceToHost, s));
    CHECK_CUDA(cudaStreamSynchronize(s));
    for (int i = 0; i < a.lists; ++i) {
      if (rejected[i] != 0) {
        fprintf(stderr,
                "gradcomp_kernels_perf: sparse_check_lists rejected list %d, a list the selector "
                "made (n=%zu, density %g)\n",
                i, n, d);
        exit(3);
      }
    }
    const double bytes = 4.0 * slots * a.lists;
    Result x{"sparse_check_lists", "float", 0, n, us, bytes, bytes / us / 1e3, copyGbps, d, slots};
    x.lists = a.lists;
    report(x);
    CHECK_CUDA(cudaFree(gather));
    CHECK_CUDA(cudaFree(ws));
    CHECK_CUDA(cudaFree(flags));
  }
  float* flag = nullptr;
  CHECK_CUDA(cudaMalloc(&flag, sizeof(float)));
  const double us = timeIt(
      s, [&] { CHECK_CUDA(gc::cuda::sparseNonFiniteFlag(g, n, flag, s)); }, a.once);
  float got = 1;
  CHECK_CUDA(cudaMemcpyAsync(&got, flag, sizeof got, cudaMemcpyDeviceToHost, s));
  CHECK_CUDA(cudaStreamSynchronize(s));
  if (got != 0.0f) {
    fprintf(stderr, "gradcomp_kernels_perf: nonfinite_flag set on finite data (n=%zu)\n", n);
    exit(3);
  }
  CHECK_CUDA(cudaFree(flag));
  report({"nonfinite_flag", "float", 0, n, us, 4.0 * n, 4.0 * n / us / 1e3, copyGbps});
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (!parseArgs(argc, argv, &a)) return 2;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    fprintf(stderr, "gradcomp_kernels_perf: no GPU visible; this benchmark needs one\n");
    return 2;
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  size_t freeB = 0, totalB = 0;
  CHECK_CUDA(cudaMemGetInfo(&freeB, &totalB));
  // g, r, out (4n each at most) and the encoding (< 1.2n at 8 bits): 13.2n bytes, 20% spare.
  size_t nmax = (size_t)1 << a.maxLog2;
  while (nmax > ((size_t)1 << a.minLog2) && 13.2 * nmax * 1.2 > (double)freeB) nmax >>= 1;
  printf("# gradcomp_kernels_perf: %s (%d SMs), bucket %d, n = 2^%d..2^%d\n", prop.name,
         prop.multiProcessorCount, a.bucket, a.minLog2, 63 - __builtin_clzll(nmax));
  printf(
      "# GB/s by ideal bytes moved; frac = fraction of a device-to-device copy of 4n bytes "
      "(GB/s = 8n / time) in this run\n");
  printf("# %11s  %-22s  %8s  %6s  %10s  %12s  %8s  %9s  %6s\n", "n", "kernel", "type", "bits/d",
         "time(us)", "ideal bytes", "GB/s", "copy GB/s", "frac");

  void *g = nullptr, *enc = nullptr;
  float *r = nullptr, *out = nullptr, *flag = nullptr;
  // The encodings at the widest --bits, and at 4 bits (encode_batch's).
  const int maxBits = std::max(4, *std::max_element(a.bits.begin(), a.bits.end()));
  CHECK_CUDA(cudaMalloc(&g, nmax * 4));
  CHECK_CUDA(cudaMalloc(&r, nmax * 4));
  CHECK_CUDA(cudaMalloc(&out, nmax * 4));
  CHECK_CUDA(cudaMalloc(&flag, sizeof(float)));  // the non-finite check's (decode_batch, sum)
  CHECK_CUDA(cudaMalloc(&enc, gradcompQsgdEncodedBytes(nmax, maxBits, a.bucket) + 256));

  gradcompConfig_t cfg;
  gcCheck(gradcompConfigInit(&cfg), "config");  // top-k oversample and sample rate
  std::vector<Result> results;
  // Rewritten after every row ("complete": false until the last): a later
  // size or kind that exits (CHECK_CUDA, gcCheck, a sparse check) or a step
  // limit keeps the rows already measured.
  auto writeJson = [&](bool complete) -> bool {
    if (a.json.empty()) return true;
    // Written aside and renamed over: a kill mid-write leaves the last whole file.
    const std::string tmp = a.json + ".part";
    FILE* f = fopen(tmp.c_str(), "w");
    if (!f) {
      fprintf(stderr, "gradcomp_kernels_perf: cannot write %s\n", tmp.c_str());
      return false;
    }
    char date[32];
    time_t now = time(nullptr);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", localtime(&now));
    fprintf(f,
            "{\n  \"tool\": \"gradcomp_kernels_perf\",\n  \"date\": \"%s\",\n  \"gpu\": \"%s\",\n"
            "  \"bucket\": %d,\n  \"complete\": %s,\n  \"rows\": [",
            date, prop.name, a.bucket, complete ? "true" : "false");
    // A time of 0 or a copy that failed gives inf or NaN, which JSON has no word for: null
    // (no measurement), not "inf", which would make the whole file unreadable.
    auto num = [](double v, const char* fmt, char(&buf)[32]) -> const char* {
      if (!std::isfinite(v)) return "null";
      snprintf(buf, sizeof buf, fmt, v);
      return buf;
    };
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& x = results[i];
      char us[32], gbps[32], copy[32], frac[32];
      fprintf(f,
              "%s\n    {\"kernel\": \"%s\", \"dtype\": \"%s\", \"bits\": %d, \"n\": %zu, "
              "\"time_us\": %s, \"ideal_bytes\": %.0f, \"gbps\": %s, \"copy_gbps\": %s, "
              "\"frac_of_copy\": %s",
              i ? "," : "", x.kernel.c_str(), x.dtype, x.bits, x.n, num(x.us, "%.4f", us), x.bytes,
              num(x.gbps, "%.3f", gbps), num(x.copyGbps, "%.3f", copy),
              num(x.gbps / x.copyGbps, "%.4f", frac));
      if (x.density > 0) fprintf(f, ", \"density\": %.17g, \"k\": %zu", x.density, x.k);
      if (x.rounding) fprintf(f, ", \"rounding\": \"%s\", \"bucket\": %d", x.rounding, a.bucket);
      if (x.lists) fprintf(f, ", \"lists\": %d", x.lists);
      if (x.sampleRate > 0) fprintf(f, ", \"sample_rate\": %.9g", x.sampleRate);
      fprintf(f, "}");
    }
    fprintf(f, "\n  ]\n}\n");
    if (fclose(f) != 0 || rename(tmp.c_str(), a.json.c_str()) != 0) {
      fprintf(stderr, "gradcomp_kernels_perf: cannot write %s\n", a.json.c_str());
      return false;
    }
    return true;
  };
  auto report = [&](const Result& x) {
    results.push_back(x);
    char col[32] = "-";  // bits, or a top-k row's density
    if (x.bits) snprintf(col, sizeof col, "%d", x.bits);
    if (x.density > 0) snprintf(col, sizeof col, "%g", x.density);
    printf("  %11zu  %-22s  %8s  %6s  %10.2f  %12.0f  %8.1f  %9.1f  %6.3f\n", x.n, x.kernel.c_str(),
           x.dtype, col, x.us, x.bytes, x.gbps, x.copyGbps, x.gbps / x.copyGbps);
    fflush(stdout);
    if (!writeJson(false)) exit(2);
  };
  for (int lg = a.minLog2; lg <= a.maxLog2; lg += a.stepLog2) {
    const size_t n = (size_t)1 << lg;
    if (n > nmax) break;
    CHECK_CUDA(gcbench::fillDevice(out, gc::DType::F32, n, 5, 0, s));
    // The copy is always timed (in batches): every row's frac is against it.
    const double copyUs =
        timeIt(s, [&] { CHECK_CUDA(cudaMemcpyAsync(r, out, n * 4, cudaMemcpyDeviceToDevice, s)); });
    const double copyGbps = 8.0 * n / copyUs / 1e3;
    if (a.runs("copy")) report({"copy", "float", 0, n, copyUs, 8.0 * n, copyGbps, copyGbps});
    // A decode reads E(n) (an eighth of its output at 4 bits) and writes 4n:
    // nearly write-only, which HBM may serve at another rate than a copy's
    // even mix. The fill is that ceiling, measured beside it (not under a
    // profiler's --once).
    if (!a.once && (a.runs("copy") || a.runs("decode"))) {
      const double fillUs = timeIt(s, [&] { CHECK_CUDA(cudaMemsetAsync(r, 0, n * 4, s)); });
      report({"fill", "float", 0, n, fillUs, 4.0 * n, 4.0 * n / fillUs / 1e3, copyGbps});
    }
    // The encodes a call runs, through the public entry point: with error
    // feedback in both roundings (GRADCOMP_ROUNDING), and without it
    // (GRADCOMP_EF=0: g read, no residual), side by side. Square levels (GRADCOMP_LEVELS=square) in
    // both roundings: the same bytes, one square root more per element.
    struct Variant {
      const char *kind, *kernel;
      gradcompRounding_t rounding;
      bool ef;
      gradcompLevels_t levels = gradcompLevelsUniform;
    };
    const Variant variants[] = {
        {"encode", "qsgd_encode_ef", gradcompRoundStochastic, true},
        {"encode_nearest", "qsgd_encode_ef_nearest", gradcompRoundNearest, true},
        {"encode_square", "qsgd_encode_ef_square", gradcompRoundStochastic, true,
         gradcompLevelsSquare},
        {"encode_square_nearest", "qsgd_encode_ef_nearest_square", gradcompRoundNearest, true,
         gradcompLevelsSquare},
        {"encode_no_ef", "qsgd_encode", gradcompRoundStochastic, false}};
    for (const Variant& v : variants) {
      if (!a.runs(v.kind)) continue;
      for (ncclDataType_t t : a.dtypes) {
        const double ts = t == ncclFloat32 ? 4 : 2;
        CHECK_CUDA(gcbench::fillDevice(g, toDType(t), n, 1, 0, s));
        for (int bits : a.bits) {
          const double e = (double)gradcompQsgdEncodedBytes(n, bits, a.bucket);
          CHECK_CUDA(cudaMemsetAsync(r, 0, n * 4, s));
          uint64_t seed = 1;
          const double us = timeIt(
              s,
              [&] {
                gcCheck(gradcompQsgdEncodeEFLevels(g, t, v.ef ? r : nullptr, n, bits, a.bucket,
                                                   seed++, v.rounding, v.levels, enc, s),
                        "encode");
              },
              a.once);
          const double bytes = n * ts + (v.ef ? 8.0 * n : 0.0) + e;
          Result x{v.kernel, typeName(t), bits, n, us, bytes, bytes / us / 1e3, copyGbps};
          x.rounding = v.rounding == gradcompRoundNearest ? "nearest" : "stochastic";
          report(x);
        }
      }
    }
    // The pipelined two-shot's encode of a piece for its peers (N = 8: here 8
    // equal segments of n / 8, as chunks lie in a buffer): one batched launch
    // (gc::cuda::qsgdEncodeBatch, what ScatterSum runs) beside 8 single
    // launches of n / 8 (what it ran before), each row timed for all n
    // elements, 4 bits with error feedback; qsgd_encode_ef is one launch of n.
    if (a.runs("encode_batch") && n >= 8 * (size_t)a.bucket) {
      constexpr int kSegs = 8;
      const size_t m = n / kSegs;
      const int bits = 4;
      const size_t em = gradcompQsgdEncodedBytes(m, bits, a.bucket);
      for (ncclDataType_t t : a.dtypes) {
        const size_t ts = t == ncclFloat32 ? 4 : 2;
        CHECK_CUDA(gcbench::fillDevice(g, toDType(t), n, 1, 0, s));
        CHECK_CUDA(cudaMemsetAsync(r, 0, n * 4, s));
        std::vector<gc::EncodeSegment> segs(kSegs);
        for (int j = 0; j < kSegs; ++j) {
          segs[j] = gc::EncodeSegment{static_cast<const char*>(g) + j * m * ts, r + j * m, m,
                                      (uint64_t)j, static_cast<char*>(enc) + j * em};
        }
        uint64_t seed = 1;
        const double batchedUs = timeIt(
            s,
            [&] {
              CHECK_CUDA(gc::cuda::qsgdEncodeBatch(segs.data(), kSegs, toDType(t), bits, a.bucket,
                                                   gc::plainKey(seed++), s));
            },
            a.once);
        const double launchesUs = timeIt(
            s,
            [&] {
              const gc::KeySpec k = gc::plainKey(seed++);
              for (const gc::EncodeSegment& e : segs) {
                CHECK_CUDA(gc::cuda::qsgdEncode(e.x, toDType(t), e.residual, e.n, bits, a.bucket, k,
                                                e.out, s));
              }
            },
            a.once);
        const double bytes = n * (double)ts + 8.0 * n + kSegs * (double)em;
        for (const auto& row : {std::make_pair("qsgd_encode_ef_batch8", batchedUs),
                                std::make_pair("qsgd_encode_ef_8_launches", launchesUs)}) {
          Result x{row.first, typeName(t), bits, n, row.second, bytes, bytes / row.second / 1e3,
                   copyGbps};
          x.rounding = "stochastic";
          report(x);
        }
      }
    }
    // Decode output is fp32 whatever the input type was.
    for (int bits : a.bits) {
      if (!a.runs("decode")) break;
      const double e = (double)gradcompQsgdEncodedBytes(n, bits, a.bucket);
      CHECK_CUDA(gcbench::fillDevice(g, gc::DType::F32, n, 1, 0, s));
      gcCheck(gradcompQsgdEncode(g, ncclFloat32, n, bits, a.bucket, 1, enc, s), "encode");
      for (int acc = 0; acc < 2; ++acc) {
        const double us = timeIt(
            s, [&] { gcCheck(gradcompQsgdDecode(enc, n, bits, a.bucket, out, acc, s), "decode"); },
            a.once);
        const double bytes = e + (acc ? 8.0 : 4.0) * n;
        report({acc ? "qsgd_decode_acc" : "qsgd_decode", "float", bits, n, us, bytes,
                bytes / us / 1e3, copyGbps});
      }
    }
    // The pipelined two-shot's decode of a piece's chunks into the output
    // (N = 8: here 8 segments of n / 8), 4 bits, each row timed for all n
    // elements: one batched launch as the library runs it
    // (gc::cuda::qsgdDecodeToOutput: converting as it decodes into fp16 and
    // bf16, each --dtypes type but fp32, and setting the non-finite check's
    // flag from the values it stores) beside what it replaces: 8 single
    // launches (qsgd_decode is one launch of n), into fp32 scratch each
    // followed by its conversion (fromFloat) for the half types, then the
    // check's pass over the output (flagNonFinite).
    if (a.runs("decode_batch") && n >= 8 * (size_t)a.bucket) {
      constexpr int kSegs = 8;
      const size_t m = n / kSegs;
      const int bits = 4;
      const size_t em = gradcompQsgdEncodedBytes(m, bits, a.bucket);
      CHECK_CUDA(gcbench::fillDevice(g, gc::DType::F32, n, 1, 0, s));
      std::vector<const char*> encs(kSegs);
      for (int j = 0; j < kSegs; ++j) {
        char* e = static_cast<char*>(enc) + j * em;
        gcCheck(gradcompQsgdEncode(static_cast<const float*>(g) + j * m, ncclFloat32, m, bits,
                                   a.bucket, 1 + j, e, s),
                "encode");
        encs[j] = e;
      }
      // Into fp16/bf16 only where the decode converts (a warp bucket).
      std::vector<ncclDataType_t> outTypes = {ncclFloat32};
      for (ncclDataType_t t : a.dtypes) {
        if (t != ncclFloat32 && gc::cuda::qsgdDecodeFuses(a.bucket)) outTypes.push_back(t);
      }
      for (ncclDataType_t t : outTypes) {
        const gc::DType dt = toDType(t);
        const size_t ts = gc::dtypeBytes(dt);
        // The output in g (its fp32 input is encoded already); fp32 scratch in r.
        std::vector<gc::DecodeSegment> segs(kSegs);
        for (int j = 0; j < kSegs; ++j) {
          segs[j] = gc::DecodeSegment{encs[j], m, static_cast<char*>(g) + j * m * ts};
        }
        const double batchedUs = timeIt(
            s,
            [&] {
              CHECK_CUDA(gc::cuda::qsgdDecodeToOutput(segs.data(), kSegs, bits, a.bucket, 1.0f, dt,
                                                      s, flag));
            },
            a.once);
        const double launchesUs = timeIt(
            s,
            [&] {
              for (const gc::DecodeSegment& d : segs) {
                if (t == ncclFloat32) {
                  CHECK_CUDA(gc::cuda::qsgdDecode(d.in, d.n, bits, a.bucket,
                                                  static_cast<float*>(d.out), false, s));
                } else {
                  CHECK_CUDA(gc::cuda::qsgdDecode(d.in, d.n, bits, a.bucket, r, false, s));
                  CHECK_CUDA(gc::cuda::fromFloat(r, d.n, 1.0f, dt, d.out, s));
                }
              }
              CHECK_CUDA(gc::cuda::flagNonFinite(g, dt, n, flag, s));
            },
            a.once);
        // The least each moves: the encodings read, the output written.
        const double bytes = kSegs * (double)em + (double)ts * n;
        for (const auto& row : {std::make_pair("qsgd_decode_batch8", batchedUs),
                                std::make_pair("qsgd_decode_8_launches", launchesUs)}) {
          report({row.first, typeName(t), bits, n, row.second, bytes, bytes / row.second / 1e3,
                  copyGbps});
        }
      }
    }
    // The owner's sum of its chunk in a call of n elements at N = 8
    // (ScatterSum::sum: two-shot's reduce, the reduce-scatter's sum): 7 peers'
    // encodings of m = n / 8 and its own fp32 block, 4 bits, in term order
    // with the own block fourth. One fused launch (gc::cuda::qsgdSum) beside
    // the launches it replaced: a decode overwrite, 6 decode-accumulates and
    // an add into fp32 (the output itself, or fp32 scratch and fromFloat for
    // each --dtypes type but fp32, the reduce-scatter's conversion). Both
    // unflagged: two-shot's sum is not the output (the reduce-scatter's sets
    // the non-finite check's flag as decode_batch's rows do).
    if (a.runs("sum") && n >= 8 * (size_t)a.bucket && gc::cuda::qsgdDecodeFuses(a.bucket)) {
      constexpr int kTerms = gcbench::kSumTerms, kOwn = 3;
      const size_t m = n / kTerms;
      const int bits = 4;
      const size_t em = gradcompQsgdEncodedBytes(m, bits, a.bucket);
      CHECK_CUDA(gcbench::fillDevice(g, gc::DType::F32, n, 1, 0, s));
      // The peers' encodings in enc; the own block in r (g's first m).
      float* own = r;
      CHECK_CUDA(cudaMemcpyAsync(own, g, m * 4, cudaMemcpyDeviceToDevice, s));
      std::vector<gc::SumTerm> terms(kTerms);
      for (int j = 0; j < kTerms; ++j) {
        if (j == kOwn) {
          terms[j] = gc::SumTerm{own, true};
          continue;
        }
        char* e = static_cast<char*>(enc) + j * em;
        gcCheck(gradcompQsgdEncode(static_cast<const float*>(g) + j * m, ncclFloat32, m, bits,
                                   a.bucket, 1 + j, e, s),
                "encode");
        terms[j] = gc::SumTerm{e, false};
      }
      std::vector<ncclDataType_t> outTypes = {ncclFloat32};
      for (ncclDataType_t t : a.dtypes) {
        if (t != ncclFloat32) outTypes.push_back(t);
      }
      // The output in g (its encodings are made); fp32 scratch in out.
      for (ncclDataType_t t : outTypes) {
        const gc::DType dt = toDType(t);
        const bool f32 = t == ncclFloat32;
        float* acc = f32 ? static_cast<float*>(g) : out;
        const double fusedUs = timeIt(
            s,
            [&] {
              CHECK_CUDA(
                  gc::cuda::qsgdSum(terms.data(), kTerms, m, bits, a.bucket, 1.0f, dt, g, out, s));
            },
            a.once);
        const double launchesUs = timeIt(
            s,
            [&] {
              for (int j = 0; j < kTerms; ++j) {
                if (terms[j].plain) {
                  CHECK_CUDA(gc::cuda::add(acc, own, m, s));
                } else {
                  CHECK_CUDA(gc::cuda::qsgdDecode(terms[j].in, m, bits, a.bucket, acc, j != 0, s));
                }
              }
              if (!f32) CHECK_CUDA(gc::cuda::fromFloat(acc, m, 1.0f, dt, g, s));
            },
            a.once);
        // The least each moves: the encodings and the own block read, the output written.
        const double bytes = (kTerms - 1) * (double)em + 4.0 * m + (double)gc::dtypeBytes(dt) * m;
        for (const auto& row : {std::make_pair("qsgd_sum8", fusedUs),
                                std::make_pair("qsgd_sum8_launches", launchesUs)}) {
          report({row.first, typeName(t), bits, n, row.second, bytes, bytes / row.second / 1e3,
                  copyGbps});
        }
      }
    }
    // Top-k selection on the torch_topk.py data.
    CHECK_CUDA(gcbench::fillDevice(g, gc::DType::F32, n, 1, 0, s));
    // The threshold selector twice: at the default sample rate (the goal's row)
    // and at the least one allowed (kMinSampleRate), whose sample is then
    // max(1024, 64/density) entries at these n: how much of the row is the
    // sample's sort (topk_threshold_min_sample). Beside them the threshold
    // selector with the look-back compaction (the one selectExact uses;
    // gc::cuda::selectThresholdLookback, the same slots) at the default sample
    // rate: beside topk_threshold, whose compaction is staged, it tells
    // whether the library chose the faster one. It has no public entry point:
    // it gets the plan gradcompTopkSelect makes (its density arrives as a
    // float) and the scratch of the sample alone.
    struct Select {
      const char* kernel;
      int exact;
      float sampleRate;
      bool lookback;
    };
    const Select selects[] = {{"topk_threshold", 0, cfg.sampleRate, false},
                              {"topk_threshold_min_sample", 0, kMinSampleRate, false},
                              {"topk_exact", 1, cfg.sampleRate, false},
                              {"topk_threshold_lookback", 0, cfg.sampleRate, true}};
    for (double d : a.densities) {
      for (const Select& sel : selects) {
        const int exact = sel.exact;
        if (!a.runs(sel.kernel)) continue;
        const gc::sparse::Plan p =
            gc::sparse::makePlan(n, (float)d, exact != 0, cfg.oversample, sel.sampleRate);
        size_t slots = p.kmax, wsBytes = gc::cuda::sparseScratchBytes(n, p.sample, 0);
        if (!sel.lookback) {
          gcCheck(gradcompTopkSlots(n, (float)d, cfg.oversample, exact, &slots), "topk slots");
          gcCheck(gradcompTopkWorkspaceBytes(n, (float)d, cfg.oversample, sel.sampleRate, exact,
                                             &wsBytes),
                  "topk workspace");
        }
        uint32_t* idx = nullptr;
        void* ws = nullptr;
        CHECK_CUDA(cudaMalloc(&idx, slots * 4));
        CHECK_CUDA(cudaMalloc(&ws, wsBytes));
        uint64_t seed = 1;
        const float* v = static_cast<const float*>(g);
        const double us = timeIt(
            s,
            [&] {
              if (sel.lookback) {
                CHECK_CUDA(gc::cuda::selectThresholdLookback(v, n, p, gc::plainKey(seed++), idx,
                                                             nullptr, ws, s));
                return;
              }
              gcCheck(gradcompTopkSelect(v, n, (float)d, cfg.oversample, sel.sampleRate, exact,
                                         seed++, idx, nullptr, ws, wsBytes, s),
                      "topk select");
            },
            a.once);
        const double bytes = 4.0 * n;
        Result x{sel.kernel, "float", 0, n, us, bytes, bytes / us / 1e3, copyGbps, d, slots};
        if (!exact) x.sampleRate = sel.sampleRate;
        report(x);
        CHECK_CUDA(cudaStreamSynchronize(s));
        CHECK_CUDA(cudaFree(idx));
        CHECK_CUDA(cudaFree(ws));
      }
    }
    if (a.runs("sparse_checks"))
      timeSparseChecks(a, s, static_cast<const float*>(g), n, cfg, copyGbps, report);
  }
  CHECK_CUDA(cudaStreamSynchronize(s));

  if (!writeJson(true)) return 2;
  cudaFree(g);
  cudaFree(r);
  cudaFree(out);
  cudaFree(flag);
  cudaFree(enc);
  cudaStreamDestroy(s);
  return 0;
}
