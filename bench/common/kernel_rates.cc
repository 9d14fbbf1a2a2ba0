#include "kernel_rates.h"

#include <ctype.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>

#include "gradcomp/reference.h"
#include "json_read.h"

#ifndef GCBENCH_RESULTS_DIR
#define GCBENCH_RESULTS_DIR "bench/results"
#endif
#ifndef GCBENCH_SOURCE_DIR
#define GCBENCH_SOURCE_DIR ""
#endif

namespace gcbench {
namespace {

bool readFile(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return true;
}

bool isDir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool isFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Whether a report row of size n is a better stand-in for a call of `count`
// elements than one of size best: nearer on a log scale, or as near (a
// count halfway between two sizes) and larger, whose per-element time has
// less of the launch in it. Taking the smaller there made the modeled
// speedup dip at those sizes.
bool nearer(double n, double best, double count) {
  const double a = fabs(log(n / count)), b = fabs(log(best / count));
  return a < b || (a == b && n > best);
}

bool endsWith(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Reports are named <yyyy-mm-dd>-<gpu>.json, so the newest sorts last.
std::string newestReport(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string n = e->d_name;
      if (n.size() > 16 && endsWith(n, ".json") && isdigit((unsigned char)n[0]) && n[4] == '-' &&
          n[7] == '-' && n[10] == '-')
        names.push_back(n);
    }
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  for (auto it = names.rbegin(); it != names.rend(); ++it) {
    const std::string stem = it->substr(0, it->size() - 5);
    if (isFile(dir + "/" + stem + "/kernels.json")) return dir + "/" + *it;
  }
  return "";
}

// The report as a reader of this tree would name it.
std::string shortName(const std::string& path) {
  const std::string src = std::string(GCBENCH_SOURCE_DIR) + "/";
  return src.size() > 1 && path.compare(0, src.size(), src) == 0 ? path.substr(src.size()) : path;
}

KernelRates unavailable(const std::string& why) {
  KernelRates k;
  k.reason = why;
  return k;
}

}  // namespace

const char* defaultResultsDir() {
  return GCBENCH_RESULTS_DIR;
}

KernelRates loadKernelRates(const std::string& where) {
  if (where == "none") return unavailable("--kernel-rates none");
  std::string report = where;
  if (!isDir(where) && !isFile(where))
    return unavailable("no GPU report or folder of reports at " + where);
  if (isDir(where)) {
    report = newestReport(where);
    if (report.empty())
      return unavailable(
          "no GPU report with kernel rates (<date>-<gpu>.json and "
          "<date>-<gpu>/kernels.json) in " +
          where);
  }
  if (!endsWith(report, ".json"))
    return unavailable("--kernel-rates " + report + " is not a report's .json");
  const std::string kernelsPath = report.substr(0, report.size() - 5) + "/kernels.json";
  std::string text, error;
  if (!readFile(kernelsPath, &text)) return unavailable("cannot read " + kernelsPath);
  JsonValue doc;
  if (!parseJson(text, &doc, &error))
    return unavailable(shortName(kernelsPath) + " is not valid JSON (" + error + ")");
  const JsonValue* rows = doc.get("rows");
  if (!rows || rows->kind != JsonValue::Array)
    return unavailable(shortName(kernelsPath) + " has no \"rows\" list");
  KernelRates k;
  // The bucket of every row (gradcomp_kernels_perf --bucket), unless a row names its own.
  const JsonValue* docBucket = doc.get("bucket");
  for (const JsonValue& r : rows->items) {
    const JsonValue *kernel = r.get("kernel"), *dtype = r.get("dtype"), *bits = r.get("bits"),
                    *n = r.get("n"), *us = r.get("time_us"), *bucket = r.get("bucket");
    if (!bucket) bucket = docBucket;
    if (!kernel || !dtype || !bits || !n || !us || !bucket || kernel->kind != JsonValue::String ||
        dtype->kind != JsonValue::String || bits->kind != JsonValue::Number ||
        n->kind != JsonValue::Number || us->kind != JsonValue::Number ||
        bucket->kind != JsonValue::Number)
      continue;
    const bool topk = kernel->str == "topk_threshold" || kernel->str == "topk_exact";
    const bool lists = kernel->str == "sparse_check_lists";
    if (kernel->str.compare(0, 11, "qsgd_encode") != 0 && kernel->str != "qsgd_decode_acc" &&
        kernel->str != "qsgd_decode" && kernel->str != "copy" && !topk && !lists &&
        kernel->str != "nonfinite_flag" && kernel->str != "qsgd_sum8")
      continue;
    if (!(n->num >= 1) || !(us->num > 0) || !isfinite(us->num)) continue;
    const JsonValue* density = r.get("density");
    if (topk && (!density || density->kind != JsonValue::Number || !(density->num > 0))) continue;
    // The lists' check is timed over `lists` lists of `k` slots: its n is
    // the indices it checked.
    double items = n->num;
    if (lists) {
      const JsonValue *count = r.get("lists"), *slots = r.get("k");
      if (!count || !slots || count->kind != JsonValue::Number ||
          slots->kind != JsonValue::Number || !(count->num >= 1) || !(slots->num >= 1))
        continue;
      items = count->num * slots->num;
    }
    // The fused sum at N = 8 is timed on a buffer of n elements: one launch
    // over the owner's block of n / 8 (its n here, as a codec launch's).
    if (kernel->str == "qsgd_sum8") {
      items = floor(n->num / kSumTerms);
      if (!(items >= 1)) continue;
    }
    // Only the QSGD kernels' rates depend on bits and bucket: whole numbers
    // an int holds (a report's 1e30 or NaN would convert to no int at all).
    const bool any = kernel->str.compare(0, 4, "qsgd") != 0;
    auto whole = [](double x) { return x >= 0 && x <= 65536 && x == floor(x); };
    if (!any && (!whole(bits->num) || !whole(bucket->num))) continue;
    k.rows.push_back({kernel->str, dtype->str, any ? 0 : (int)bits->num, any ? 0 : (int)bucket->num,
                      items, us->num, topk ? density->num : 0.0});
  }
  const bool anyQsgd = std::any_of(k.rows.begin(), k.rows.end(), [](const KernelRates::Entry& e) {
    return e.kernel.compare(0, 4, "qsgd") == 0;
  });
  if (!anyQsgd)
    return unavailable(shortName(kernelsPath) +
                       " has no qsgd_encode_ef / qsgd_decode_acc rows with times");
  const JsonValue* gpu = doc.get("gpu");
  k.gpu = gpu && gpu->kind == JsonValue::String ? gpu->str : "unknown GPU";
  k.report = shortName(report);
  k.ok = true;
  return k;
}

bool KernelRates::lookup(const char* dtype, const QsgdKernels& k, size_t count, KernelCosts* c,
                         std::string* note) const {
  if (!ok || count == 0) return false;
  auto nearest = [&](const std::string& kernel, const char* type, int bits,
                     int bucket) -> const Entry* {
    const Entry* best = nullptr;
    for (const Entry& e : rows) {
      if (e.kernel != kernel || e.dtype != type || e.bits != bits || e.bucket != bucket) continue;
      if (!best || nearer(e.n, best->n, (double)count)) best = &e;
    }
    return best;
  };
  auto rate = [&](const std::string& kernel, const char* type) {
    const Entry* e = nearest(kernel, type, k.bits, k.bucket);
    return e ? e->timeUs / e->n : 0.0;
  };
  note->clear();
  auto say = [&](const char* what) { *note += (note->empty() ? "" : "; ") + std::string(what); };
  c->encode = rate(k.encodeName(), dtype);
  c->encodeF32 = rate(k.encodeName(), "float");
  c->decodeAcc = rate("qsgd_decode_acc", "float");
  if (c->encode == 0 || c->encodeF32 == 0 || c->decodeAcc == 0) return false;
  c->ownerEncode = rate(k.owner().encodeName(), "float");
  if (c->ownerEncode == 0) {
    c->ownerEncode = c->encodeF32;
    say("owners' encode without error feedback estimated at the encode-with-EF rate");
  }
  c->decode = rate("qsgd_decode", "float");
  if (c->decode == 0) {
    c->decode = c->decodeAcc;
    say("decode overwrite estimated at the decode-accumulate rate");
  }
  // The copy reads and writes n floats: 8n bytes.
  const Entry* copy = nearest("copy", "float", 0, 0);
  if (!copy) return false;
  c->elementwisePerByte = copy->timeUs / (8.0 * copy->n);
  say("elementwise passes estimated at copy bandwidth");
  // The fused owner's sum where the report times it (qsgd_sum8 into fp32 at
  // k's bits and bucket; its n: the owner's block m): per byte it moves,
  // the 7 peers' encodings, the own fp32 block and the fp32 store
  // (fusedSumMovedBytes). 0 without the row: the model's estimate.
  c->sumPerByte = 0;
  if (const Entry* sum = nearest("qsgd_sum8", "float", k.bits, k.bucket)) {
    const size_t m = (size_t)sum->n;
    const double bytes =
        fusedSumMovedBytes(kSumTerms, qsgdCodeBytes(m, k.bits, k.bucket), true) * (double)m;
    c->sumPerByte = sum->timeUs / bytes;
  }
  return true;
}

bool KernelRates::curve(const char* dtype, const QsgdKernels& k, size_t count, KernelCurve* out,
                        std::string* note) const {
  std::vector<double> ns;
  for (const Entry& e : rows) {
    if (e.kernel == k.encodeName() && e.dtype == dtype && e.bits == k.bits && e.bucket == k.bucket)
      ns.push_back(e.n);
  }
  if (ns.empty()) ns.push_back((double)count);
  for (double n : ns) {
    KernelCosts c;
    if (!lookup(dtype, k, (size_t)n, &c, note)) return false;
    out->add(n, c);
  }
  return true;
}

bool KernelRates::lookupSparse(bool select, bool exact, bool flagged, double density, size_t count,
                               double checked, KernelCosts* c, std::string* note) const {
  if (!ok || count == 0 || !(density > 0)) return false;
  const char* kernel = exact ? "topk_exact" : "topk_threshold";
  const Entry* best = nullptr;
  // Nearest density first, then size (a tie: the larger size).
  auto far = [&](const Entry& e) {
    return std::make_tuple(fabs(log(e.density / density)), fabs(log(e.n / count)), -e.n);
  };
  for (const Entry& e : rows)
    if (select && e.kernel == kernel && e.dtype == "float" && (!best || far(e) < far(*best)))
      best = &e;
  auto nearest = [&](const char* name, double size) -> const Entry* {
    const Entry* e = nullptr;
    for (const Entry& x : rows)
      if (x.kernel == name && x.dtype == "float" && (!e || nearer(x.n, e->n, size))) e = &x;
    return e;
  };
  const Entry* copy = nearest("copy", (double)count);
  if ((select && !best) || !copy) return false;
  *c = KernelCosts{};
  c->elementwisePerByte = copy->timeUs / (8.0 * copy->n);
  // The per-call checks at their own rows where the report has them (the
  // lists' check nearest in indices checked), else their 4-byte reads at
  // the copy's bandwidth; 0 for those the row does not run.
  const Entry* lists = checked > 0 ? nearest("sparse_check_lists", checked) : nullptr;
  const Entry* flag = flagged ? nearest("nonfinite_flag", (double)count) : nullptr;
  if (checked > 0) c->checkSlot = lists ? lists->timeUs / lists->n : 4 * c->elementwisePerByte;
  if (flagged) c->flag = flag ? flag->timeUs / flag->n : 4 * c->elementwisePerByte;
  note->clear();
  if (best) {
    c->select = best->timeUs / best->n;
    char buf[128];
    snprintf(buf, sizeof buf, "selection at the report's %s rate (n = %.0f, density %g); ", kernel,
             best->n, best->density);
    *note = buf;
  }
  *note +=
      std::string("elementwise passes") +
      (lists || checked <= 0 ? "" : ", the received lists' check (no sparse_check_lists row)") +
      (flag || !flagged ? "" : ", the non-finite flag (no nonfinite_flag row)") +
      " and the scatter-adds' random accesses estimated at copy bandwidth";
  return true;
}

}  // namespace gcbench
