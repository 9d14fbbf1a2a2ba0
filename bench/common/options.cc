#include "options.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../../plugin/params.h"

namespace gcbench {
namespace {

void usage(const char* prog) {
  printf(
      "Usage: %s [flags]\n"
      "  all_reduce_perf flags:\n"
      "  -b, --minbytes <size>      smallest size (K/M/G suffixes), default cuda 1M, cpu 256K;\n"
      "                             -b alone above the default -e raises -e to it (one size)\n"
      "  -e, --maxbytes <size>      largest size, not below -b, default cuda 256M, cpu 16M;\n"
      "                             -e alone below the default -b lowers -b to it (one size).\n"
      "                             Sizes are positive; sizes below one element of a type are\n"
      "                             skipped for it (refused when no size gives a row)\n"
      "  -i, --stepbytes <size>     additive step (not with -f), default 1M\n"
      "  -f, --stepfactor <f>       multiplicative step, default 4\n"
      "  -n, --iters <n>            timed iterations, default cuda 20, cpu 5\n"
      "  -w, --warmup_iters <n>     warm-up iterations, default cuda 5, cpu 1\n"
      "  -c, --check <0|1>          check results against the exact sum, default 1\n"
      "  -d, --datatype <t>         float|half|bfloat16|all (list with commas), default float\n"
      "  -o, --op <op>              sum|avg, default sum\n"
      "  gradcomp flags:\n"
      "  -m, --method <m>           none|qsgd|topk|randk|dgc (list with commas), default\n"
      "                             $GRADCOMP_METHOD, else qsgd\n"
      "  -q, --bits <b>             QSGD bits 2..8 including the sign (-m with qsgd), default\n"
      "                             $GRADCOMP_BITS, else 4\n"
      "  -B, --bucket <d>           QSGD bucket size, and each compressing method's piece\n"
      "                             alignment in the hierarchy (-m with a method besides\n"
      "                             none), 32..8192, multiple of 32, default\n"
      "                             $GRADCOMP_BUCKET, else 512\n"
      "  -k, --density <p>          sparse methods: share of elements sent, [1e-6, 1]\n"
      "                             (-m with topk, randk or dgc), default $GRADCOMP_DENSITY,\n"
      "                             else 0.01\n"
      "  -a, --algo <a>             auto|twoshot|ring|allgather (-m qsgd)|sparse (-m topk,\n"
      "                             randk or dgc)|hier, the allreduce's (-C all_reduce),\n"
      "                             default $GRADCOMP_ALGO, else auto\n"
      "  -C, --collective <c>       all_reduce (default) | reduce_scatter: sizes are then the\n"
      "                             per-rank output (recvcount), as in reduce_scatter_perf\n"
      "  -N, --nranks <n>           ranks: threads (cpu) or processes (cuda), default cpu 4,\n"
      "                             cuda the number of GPUs, or 4 on one GPU\n"
      "      --backend <b>          cuda|cpu|socket, default cuda when a GPU is visible;\n"
      "                             socket: this process is one rank of a CPU world over\n"
      "                             TCP (rank and size from OMPI_COMM_WORLD_RANK/SIZE, PMI_*\n"
      "                             or SLURM_*); the baseline is the uncompressed call over\n"
      "                             the same links (tools/tc_link.sh --cpu starts the ranks)\n"
      "      --root <host:port>     socket: rank 0's listening address, default $NCCL_COMM_ID;\n"
      "                             comm k of the run listens at port + k\n"
      "      --json <file>          rows as JSON\n"
      "      --csv <file>           rows as CSV\n"
      "      --link-gbps <list>     modeled link bandwidths in Gb/s, default 10,25,100,400\n"
      "      --link-lat-us <us>     modeled per-message latency, default 10\n"
      "      --model-nodes <list>   project onto K nodes (list: every K with every G)\n"
      "      --model-local <list>   ... of G GPUs each, default 8\n"
      "      --node-gbps <list>     NIC bandwidth per node in Gb/s, default 100,400,3200\n"
      "      --intra-gbps <g>       in-node link per GPU in Gb/s, default 3600 (NVLink 4)\n"
      "      --model-pipe <b>       the projection's GRADCOMP_PIPELINE_BYTES (hier|P: the\n"
      "                             path the library runs, cut into pieces), default 8M\n"
      "                             (0: unpipelined)\n"
      "      --kernel-rates <f>     cpu backend: GPU report (.json, or a folder: the newest)\n"
      "                             whose kernel rates the model uses, or none; default\n"
      "                             the newest in bench/results\n"
      "      --seed <n>             input data seed, default 1\n"
      "      --local-size <L|auto>  ranks per node (GRADCOMP_LOCAL_SIZE), L a divisor of -N;\n"
      "                             L > 1 on >= 2 nodes: hierarchical exchange (CPU backend:\n"
      "                             auto is flat); the link model follows the same setting\n"
      "      --debug-corrupt        corrupt one gradcomp output element (checks the checker)\n"
      "      --debug-rank-weight <w>\n"
      "                             weigh rank 0's input w times (0 .. 4) in the rank-weight\n"
      "                             check's copy of the result (checks that check: 0 = a\n"
      "                             lost contribution, 2 = a doubled one)\n"
      "      --auto                 also time each size with GRADCOMP_AUTO's decision (rows\n"
      "                             force compression) and report auto's regret:\n"
      "                             auto time / min(forced, NCCL) - 1\n"
      "Unset gradcomp settings come from GRADCOMP_* variables (docs/env.md).\n",
      prog);
}

// The most sizes a sweep lists (rows per type and method).
constexpr size_t kMaxSizes = 10000;

constexpr double kMaxSizeBytes = 1099511627776.0;  // 1024G (no T suffix: messages say 1024G)

// A number as the flags take it: a digit or '.' first (no sign, space, nan or
// inf) and no hex float (0x10), as GRADCOMP_* floats are read (docs/env.md).
bool plainNumber(const char* s) {
  return (isdigit((unsigned char)s[0]) || s[0] == '.') && strpbrk(s, "xX") == nullptr;
}

// A number (the whole value) that a double does not hold, which strtod reads as 0 or a
// subnormal (1e-400, 1e-310) or inf (1e400), with ERANGE: 1e-400 was taken as 0 where a range
// holds 0 (--link-lat-us, --debug-rank-weight).
bool beyondDouble(const char* s) {
  if (!plainNumber(s)) return false;
  char* end = nullptr;
  errno = 0;
  strtod(s, &end);
  return errno == ERANGE && end != s && *end == '\0';
}

// A whole number of bytes in 0 .. 1024G, with an optional K/M/G (powers of
// 1024) and B: 1.5K is 1536, 1.5 is refused.
bool parseSize(const char* s, size_t* out) {
  if (!plainNumber(s)) return false;
  char* end = nullptr;
  errno = 0;
  double v = strtod(s, &end);
  // ERANGE: beyond a double (1e-400 read as 0, which --model-pipe took).
  if (end == s || errno == ERANGE || !(v >= 0)) return false;  // NaN too
  double mult = 1;
  if (*end == 'K' || *end == 'k')
    mult = 1024.0, ++end;
  else if (*end == 'M' || *end == 'm')
    mult = 1024.0 * 1024, ++end;
  else if (*end == 'G' || *end == 'g')
    mult = 1024.0 * 1024 * 1024, ++end;
  if (*end == 'B' || *end == 'b') ++end;
  if (*end != '\0') return false;
  const double bytes = v * mult;
  if (!(bytes <= kMaxSizeBytes) || bytes != floor(bytes)) return false;
  *out = (size_t)bytes;
  return true;
}

// Integers are plain decimal, as GRADCOMP_* integers are (docs/env.md): digits
// only, no sign, space or leading zero (010 is neither 8 nor 10), in lo .. hi.
bool parseInt(const char* s, long lo, long hi, long* out) {
  const size_t n = strspn(s, "0123456789");
  if (n == 0 || s[n] != '\0' || n > 18 || (s[0] == '0' && n > 1)) return false;
  const long v = strtol(s, nullptr, 10);
  if (v < lo || v > hi) return false;
  *out = v;
  return true;
}

bool parseDouble(const char* s, double lo, double hi, double* out) {
  if (!plainNumber(s) || beyondDouble(s)) return false;
  char* end = nullptr;
  double v = strtod(s, &end);
  if (end == s || *end != '\0' || !(v >= lo && v <= hi)) return false;
  *out = v;
  return true;
}

std::vector<std::string> splitList(const char* s) {
  std::vector<std::string> out;
  std::string cur;
  for (const char* p = s;; ++p) {
    if (*p == ',' || *p == '\0') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
      if (*p == '\0') break;
    } else {
      cur += *p;
    }
  }
  return out;
}

// A list flag's items (splitList). An empty item among others ("float," or "1,,2": a shell
// variable left empty, a comma too many) was dropped without a word, so the run was not the one
// written; it is refused naming the flag and the item's position. A list of no item at all
// ("" or ",") is left to the flag's own "give at least one" refusal.
bool listItems(const char* flag, const char* s, std::vector<std::string>* items, int* exitCode) {
  *items = splitList(s);
  if (items->empty()) return true;
  int position = 1;
  for (const char* p = s;; ++p) {
    const bool end = *p == ',' || *p == '\0';
    if (end && (p == s || p[-1] == ',')) {
      fprintf(stderr,
              "gradcomp_perf: %s '%s': item %d of the list is empty: give the items separated by "
              "single commas, with none before the first or after the last (see --help)\n",
              flag, s, position);
      *exitCode = 2;
      return false;
    }
    if (*p == '\0') break;
    if (*p == ',') ++position;
  }
  return true;
}

// A list flag's item given again (-m qsgd,qsgd, -d float,fp32, --link-gbps 10,1e1): every item
// listed runs (or is modeled), so a repeat ran the same rows again; refused naming the flag and
// the item. x is item's value, added to *list and its item to *from (the items before).
template <typename T>
bool addItem(const char* flag, const char* v, const std::string& item, const T& x,
             std::vector<T>* list, std::vector<std::string>* from, int* exitCode) {
  for (size_t j = 0; j < list->size(); ++j) {
    if (!((*list)[j] == x)) continue;
    fprintf(stderr,
            "gradcomp_perf: %s %s: %s%s%s: each item listed runs (or is modeled) once per "
            "listing, so the same rows would come twice; give each item once (see --help)\n",
            flag, v, item.c_str(), item == (*from)[j] ? " is listed twice" : " repeats ",
            item == (*from)[j] ? "" : (*from)[j].c_str());
    *exitCode = 2;
    return false;
  }
  list->push_back(x);
  from->push_back(item);
  return true;
}

bool fail(int* exitCode, const char* fmt, const char* flag, const char* value) {
  fprintf(stderr, "gradcomp_perf: ");
  fprintf(stderr, fmt, flag, value);
  fprintf(stderr, " (see --help)\n");
  *exitCode = 2;
  return false;
}

// An integer flag's refusal, naming the flag, the value as given and the range.
bool failInt(int* exitCode, const char* flag, const char* value, const char* range) {
  fprintf(stderr, "gradcomp_perf: %s '%s' is not an integer in %s, in %s (see --help)\n", flag,
          value, range, gc::kIntegerForm);
  *exitCode = 2;
  return false;
}

// A float flag's number beyond a double (beyondDouble), said as such with the flag's range:
// "not in [0, 1e7]" would be wrong of 1e-400.
bool failBeyond(int* exitCode, const char* flag, const char* value, const char* item,
                const char* range) {
  char zero[64] = "";
  if (strncmp(range, "[0,", 3) == 0) snprintf(zero, sizeof zero, " (0, or at least %g)", DBL_MIN);
  if (strtod(item, nullptr) < 1)
    fprintf(stderr,
            "gradcomp_perf: %s %s: %s underflows a double (nonzero and below %g, it would be read "
            "as 0 or less precisely): give a number in %s%s (see --help)\n",
            flag, value, item, DBL_MIN, range, zero);
  else
    fprintf(stderr,
            "gradcomp_perf: %s %s: %s overflows a double (above %g, it would be read as inf): "
            "give a number in %s (see --help)\n",
            flag, value, item, DBL_MAX, range);
  *exitCode = 2;
  return false;
}

// A float flag's number: item (the whole value v, or one item of a list flag's v) in [lo, hi]
// into *out. Refused naming the flag and v: a number beyond a double with failBeyond's sentence,
// anything else with fail's of refusal, or, refusal null, "not in" the flag's range.
bool floatFlag(int* exitCode, const char* flag, const char* v, const char* item, double lo,
               double hi, const char* range, const char* refusal, double* out) {
  if (beyondDouble(item)) return failBeyond(exitCode, flag, v, item, range);
  if (parseDouble(item, lo, hi, out)) return true;
  const std::string notIn = std::string("%s %s not in ") + range;
  return fail(exitCode, refusal != nullptr ? refusal : notIn.c_str(), flag, v);
}

// A list flag of bandwidths in [0.001, 1e6] Gb/s (--link-gbps, --node-gbps) into *list, each
// item once (addItem); an empty list is left to the flag's own refusal.
bool bandwidthList(int* exitCode, const char* flag, const char* v, std::vector<double>* list) {
  std::vector<std::string> items, from;
  list->clear();
  if (!listItems(flag, v, &items, exitCode)) return false;
  double dv;
  for (const std::string& s : items) {
    if (!floatFlag(exitCode, flag, v, s.c_str(), 1e-3, 1e6, "[0.001, 1e6] Gb/s",
                   "%s %s: each bandwidth must be in [0.001, 1e6] Gb/s", &dv) ||
        !addItem(flag, v, s, dv, list, &from, exitCode))
      return false;
  }
  return true;
}

// getopt_long's '?' (an unknown, ambiguous or valueless option given a value) or ':' (a
// value missing), said in one line on stderr as getopt-style tools do; exit 2 without the
// usage (--help prints it).
bool badOption(int argc, char** argv, int c, const struct option* longOpts, int* exitCode) {
  *exitCode = 2;
  // The word getopt stopped at: a long option's whole argument, else the short option.
  const char* word = optind > 0 && optind <= argc ? argv[optind - 1] : "";
  const bool isLong = strncmp(word, "--", 2) == 0 && word[2] != '\0';
  char shortName[3] = {'-', (char)optopt, '\0'};
  if (!isLong) {
    if (c == ':')
      fprintf(stderr, "gradcomp_perf: option %s needs a value (see --help)\n", shortName);
    else
      fprintf(stderr, "gradcomp_perf: unknown option %s (see --help)\n",
              optopt > 0 && optopt < 128 && isgraph(optopt) ? shortName : word);
    return false;
  }
  const char* eq = strchr(word, '=');
  const std::string name(word + 2, eq ? (size_t)(eq - word - 2) : strlen(word + 2));
  if (c == ':') {
    fprintf(stderr, "gradcomp_perf: option --%s needs a value (see --help)\n", name.c_str());
    return false;
  }
  std::string matches;
  int count = 0;
  bool exact = false;
  for (const struct option* l = longOpts; l->name; ++l) {
    if (strncmp(l->name, name.c_str(), name.size()) != 0) continue;
    exact = exact || strlen(l->name) == name.size();
    matches += std::string(count++ ? ", --" : "--") + l->name;
  }
  if ((exact || count == 1) && eq)
    fprintf(stderr, "gradcomp_perf: option --%s takes no value: %s (see --help)\n", name.c_str(),
            word);
  else if (count > 1)
    fprintf(stderr, "gradcomp_perf: option --%s is ambiguous: %s (see --help)\n", name.c_str(),
            matches.c_str());
  else
    fprintf(stderr, "gradcomp_perf: unknown option --%s (see --help)\n", name.c_str());
  return false;
}

// A file path as the file it names: its folder resolved (symbolic links, ./ and ../), so
// that two spellings of one file compare equal; the path itself when its folder is unknown.
// A symbolic link is the file it points to, also one not made yet: the CSV is written through
// it (fopen), so a --csv link to the --json file replaced the JSON.
std::string fileKey(const std::string& path, int links = 0) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  char target[4096];
  const ssize_t n = links < 40 ? readlink(path.c_str(), target, sizeof target - 1) : -1;
  if (n > 0) {  // 40: the kernel's own limit on links followed (ELOOP)
    target[n] = '\0';
    // A relative target is relative to the link's folder.
    const std::string folder = slash == std::string::npos ? "" : path.substr(0, slash + 1);
    return fileKey(target[0] == '/' ? std::string(target) : folder + target, links + 1);
  }
  char* real = realpath(dir.c_str(), nullptr);
  if (real == nullptr) return path;
  std::string key =
      std::string(real) + "/" + path.substr(slash == std::string::npos ? 0 : slash + 1);
  free(real);
  return key;
}

// The size after s in sizeList (not above s when the step overflows).
size_t nextSize(const Options& o, size_t s) {
  return o.stepFactor > 1 ? (size_t)(s * o.stepFactor) : s + o.stepBytes;
}

}  // namespace

const char* dtypeName(ncclDataType_t t) {
  switch (t) {
    case ncclFloat32:
      return "float";
    case ncclFloat16:
      return "half";
    case ncclBfloat16:
      return "bfloat16";
    default:
      return "?";
  }
}

size_t dtypeSize(ncclDataType_t t) {
  return t == ncclFloat32 ? 4 : 2;
}

const char* methodName(gradcompMethod_t m) {
  static const char* names[] = {"none", "qsgd", "topk", "randk", "dgc"};
  return (int)m >= 0 && (int)m < 5 ? names[(int)m] : "?";
}

const char* algoName(int algo) {
  static const char* names[] = {"auto",   "twoshot", "ring",         "allgather",
                                "sparse", "hier",    "reducescatter"};
  return algo >= 0 && algo <= kAlgoReduceScatter ? names[algo] : "?";
}

const char* opName(ncclRedOp_t op) {
  return op == ncclAvg ? "avg" : "sum";
}

bool parseOptions(int argc, char** argv, Options* o, int* exitCode) {
  enum {
    kBackend = 1000,
    kJson,
    kCsv,
    kLink,
    kLat,
    kSeed,
    kCorrupt,
    kRankWeight,
    kModelNodes,
    kModelLocal,
    kNodeGbps,
    kIntraGbps,
    kKernelRates,
    kModelPipe,
    kAuto,
    kHelp,
    kLocalSize,
    kRoot
  };
  static const struct option longOpts[] = {{"minbytes", required_argument, 0, 'b'},
                                           {"maxbytes", required_argument, 0, 'e'},
                                           {"stepbytes", required_argument, 0, 'i'},
                                           {"stepfactor", required_argument, 0, 'f'},
                                           {"iters", required_argument, 0, 'n'},
                                           {"warmup_iters", required_argument, 0, 'w'},
                                           {"check", required_argument, 0, 'c'},
                                           {"datatype", required_argument, 0, 'd'},
                                           {"op", required_argument, 0, 'o'},
                                           {"method", required_argument, 0, 'm'},
                                           {"bits", required_argument, 0, 'q'},
                                           {"bucket", required_argument, 0, 'B'},
                                           {"density", required_argument, 0, 'k'},
                                           {"algo", required_argument, 0, 'a'},
                                           {"collective", required_argument, 0, 'C'},
                                           {"nranks", required_argument, 0, 'N'},
                                           {"backend", required_argument, 0, kBackend},
                                           {"json", required_argument, 0, kJson},
                                           {"csv", required_argument, 0, kCsv},
                                           {"link-gbps", required_argument, 0, kLink},
                                           {"link-lat-us", required_argument, 0, kLat},
                                           {"seed", required_argument, 0, kSeed},
                                           {"debug-corrupt", no_argument, 0, kCorrupt},
                                           {"debug-rank-weight", required_argument, 0, kRankWeight},
                                           {"model-nodes", required_argument, 0, kModelNodes},
                                           {"model-local", required_argument, 0, kModelLocal},
                                           {"node-gbps", required_argument, 0, kNodeGbps},
                                           {"intra-gbps", required_argument, 0, kIntraGbps},
                                           {"kernel-rates", required_argument, 0, kKernelRates},
                                           {"model-pipe", required_argument, 0, kModelPipe},
                                           {"local-size", required_argument, 0, kLocalSize},
                                           {"root", required_argument, 0, kRoot},
                                           {"auto", no_argument, 0, kAuto},
                                           {"help", no_argument, 0, 'h'},
                                           {0, 0, 0, 0}};
  for (int i = 0; i < argc; ++i) {
    if (i) o->commandLine += ' ';
    o->commandLine += argv[i];
  }
  *exitCode = 0;
  bool factorGiven = false, stepGiven = false;
  const char *minArg = "", *maxArg = "", *stepArg = "", *factorArg = "";
  // The projection's own flags, as given (only --model-nodes makes a projection that reads them).
  const char *nodeGbpsArg = nullptr, *modelPipeArg = nullptr;
  int c;
  long lv;
  double dv;
  std::vector<std::string> items;  // a list flag's (listItems)
  // getopt's own messages off (opterr) and ':' first: a missing value is ':', not '?', and
  // badOption says either in one line on stderr.
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":b:e:i:f:n:w:c:d:o:m:q:B:k:a:C:N:h", longOpts, nullptr)) !=
         -1) {
    const char* v = optarg;
    std::vector<std::string> from;  // a list flag's item of each value taken (addItem)
    switch (c) {
      case 'b':
      case 'e': {
        const char* flag = c == 'b' ? "-b" : "-e";
        size_t* bytes = c == 'b' ? &o->minBytes : &o->maxBytes;
        if (!parseSize(v, bytes))
          return fail(exitCode,
                      "%s %s is not a size: a whole number of bytes up to 1024G (K, M, G: "
                      "powers of 1024)",
                      flag, v);
        // 0 is no size (nor "the default": leave the flag out for that).
        if (*bytes == 0)
          return fail(exitCode,
                      "%s %s: sizes must be positive, at least one element of the type (2 bytes "
                      "for half and bfloat16, 4 for float)",
                      flag, v);
        (c == 'b' ? o->minGiven : o->maxGiven) = true;
        (c == 'b' ? minArg : maxArg) = v;
        break;
      }
      case 'i':
        if (!parseSize(v, &o->stepBytes) || o->stepBytes == 0)
          return fail(exitCode, "%s %s is not a size in 1 .. 1024G bytes", "-i", v);
        stepGiven = true;
        stepArg = v;
        break;
      case 'f':
        if (!floatFlag(exitCode, "-f", v, v, 1.0001, 1e6, "[1.0001, 1e6]",
                       "%s %s is not a factor in [1.0001, 1e6] (a plain decimal number)",
                       &o->stepFactor))
          return false;
        factorGiven = true;
        factorArg = v;
        break;
      case 'n':
        if (!parseInt(v, 1, 1000000, &lv)) return failInt(exitCode, "-n", v, "1..1000000");
        o->iters = (int)lv;
        break;
      case 'w':
        if (!parseInt(v, 0, 1000000, &lv)) return failInt(exitCode, "-w", v, "0..1000000");
        o->warmup = (int)lv;
        break;
      case 'c':
        if (!parseInt(v, 0, 1, &lv)) return failInt(exitCode, "-c", v, "0..1");
        o->check = (int)lv;
        break;
      case 'd':
        o->dtypes.clear();
        if (!listItems("-d", v, &items, exitCode)) return false;
        for (const std::string& s : items) {
          std::vector<ncclDataType_t> types;
          if (s == "float" || s == "fp32" || s == "float32")
            types = {ncclFloat32};
          else if (s == "half" || s == "fp16" || s == "float16")
            types = {ncclFloat16};
          else if (s == "bfloat16" || s == "bf16")
            types = {ncclBfloat16};
          else if (s == "all")
            types = {ncclFloat32, ncclFloat16, ncclBfloat16};
          else
            return fail(exitCode, "%s %s: types are float, half, bfloat16 or all", "-d", v);
          // "all" with a type besides it lists that type twice.
          for (ncclDataType_t t : types)
            if (!addItem("-d", v, s, t, &o->dtypes, &from, exitCode)) return false;
        }
        // An empty list is no type (leave -d out for the default), as --link-gbps refuses one.
        if (o->dtypes.empty())
          return fail(exitCode, "%s '%s': give at least one type: float, half, bfloat16 or all",
                      "-d", v);
        break;
      case 'o':
        if (strcasecmp(v, "sum") == 0)
          o->op = ncclSum;
        else if (strcasecmp(v, "avg") == 0)
          o->op = ncclAvg;
        else
          return fail(exitCode, "%s %s: ops are sum or avg (gradcomp compresses only these)", "-o",
                      v);
        break;
      case 'm':
        o->methods.clear();
        if (!listItems("-m", v, &items, exitCode)) return false;
        for (const std::string& s : items) {
          int m = -1;
          for (int k = 0; k < 5; ++k)
            if (s == methodName((gradcompMethod_t)k)) m = k;
          if (m < 0)
            return fail(exitCode, "%s %s: methods are none, qsgd, topk, randk, dgc", "-m", v);
          if (!addItem("-m", v, s, (gradcompMethod_t)m, &o->methods, &from, exitCode)) return false;
        }
        // An empty list is no method (leave -m out for GRADCOMP_METHOD's or the default).
        if (o->methods.empty())
          return fail(exitCode, "%s '%s': give at least one method: none, qsgd, topk, randk, dgc",
                      "-m", v);
        o->methodsGiven = true;
        break;
      case 'q':
        if (!parseInt(v, 2, 8, &lv)) return failInt(exitCode, "-q", v, "2..8");
        o->bits = (int)lv;
        break;
      case 'B':
        if (!parseInt(v, 32, 8192, &lv) || lv % 32)
          return failInt(exitCode, "-B", v, "32..8192 that is a multiple of 32");
        o->bucket = (int)lv;
        break;
      case 'k':
        if (!floatFlag(exitCode, "-k", v, v, 1e-6, 1, "[1e-6, 1]", nullptr, &dv)) return false;
        o->density = (float)dv;
        break;
      case 'a':
        o->algo = -1;
        for (int k = 0; k <= gradcompAlgoHier; ++k)
          if (strcmp(v, algoName(k)) == 0) o->algo = k;
        if (o->algo < 0)
          return fail(exitCode,
                      "%s %s: algorithms are auto, twoshot, ring, allgather, sparse, hier", "-a",
                      v);
        break;
      case 'C':
        if (strcmp(v, "all_reduce") == 0)
          o->collective = Collective::AllReduce;
        else if (strcmp(v, "reduce_scatter") == 0)
          o->collective = Collective::ReduceScatter;
        else
          return fail(exitCode, "%s %s: collectives are all_reduce, reduce_scatter", "-C", v);
        break;
      case 'N':
        if (!parseInt(v, 1, 64, &lv)) return failInt(exitCode, "-N", v, "1..64");
        o->nranks = (int)lv;
        o->nranksGiven = true;
        break;
      case kBackend:
        if (strcmp(v, "cuda") == 0)
          o->backend = BackendKind::Cuda;
        else if (strcmp(v, "cpu") == 0)
          o->backend = BackendKind::Cpu;
        else if (strcmp(v, "socket") == 0)
          o->backend = BackendKind::Socket;
        else
          return fail(exitCode, "%s %s: backends are cuda, cpu or socket", "--backend", v);
        break;
      case kRoot:
      case kJson:
      case kCsv: {
        const char* flag = c == kRoot ? "--root" : c == kJson ? "--json" : "--csv";
        // Empty (a shell variable left empty) was taken as the flag left out: no file
        // written, or NCCL_COMM_ID's address, without a word.
        if (*v == '\0')
          return fail(exitCode,
                      c == kRoot
                          ? "%s '%s': the value is empty: give a host:port, or leave the "
                            "flag out"
                          : "%s '%s': the value is empty: give a file, or leave the flag out",
                      flag, v);
        (c == kRoot ? o->root : c == kJson ? o->jsonPath : o->csvPath) = v;
        break;
      }
      case kLink:
        if (!bandwidthList(exitCode, "--link-gbps", v, &o->linkGbps)) return false;
        if (o->linkGbps.empty())
          return fail(exitCode, "%s %s: give at least one bandwidth in [0.001, 1e6] Gb/s",
                      "--link-gbps", v);
        o->linkGiven = true;
        break;
      case kLat:
        if (!floatFlag(exitCode, "--link-lat-us", v, v, 0, 1e7, "[0, 1e7] us", nullptr,
                       &o->linkLatencyUs))
          return false;
        break;
      case kSeed:
        if (!parseInt(v, 0, 0x7fffffffL, &lv))
          return failInt(exitCode, "--seed", v, "0..2147483647 (2^31-1)");
        o->seed = (uint64_t)lv;
        break;
      case kCorrupt:
        o->corrupt = true;
        break;
      case kRankWeight:
        if (!floatFlag(exitCode, "--debug-rank-weight", v, v, 0, 4, "[0, 4]", nullptr,
                       &o->debugRankWeight))
          return false;
        break;
      case kAuto:
        o->autoRow = true;
        break;
      case kModelNodes:
      case kModelLocal: {
        std::vector<int>& list = c == kModelNodes ? o->modelNodes : o->modelLocal;
        const char* flag = c == kModelNodes ? "--model-nodes" : "--model-local";
        list.clear();
        if (!listItems(flag, v, &items, exitCode)) return false;
        for (const std::string& s : items) {
          if (!parseInt(s.c_str(), 1, 4096, &lv))
            return failInt(exitCode, flag, v, "1..4096 (each of the list)");
          if (!addItem(flag, v, s, (int)lv, &list, &from, exitCode)) return false;
        }
        if (list.empty()) return fail(exitCode, "%s %s: give at least one count", flag, v);
        break;
      }
      case kNodeGbps:
        if (!bandwidthList(exitCode, "--node-gbps", v, &o->nodeGbps)) return false;
        if (o->nodeGbps.empty())
          return fail(exitCode, "%s %s: give at least one bandwidth", "--node-gbps", v);
        nodeGbpsArg = v;
        break;
      case kIntraGbps:
        if (!floatFlag(exitCode, "--intra-gbps", v, v, 1e-3, 1e6, "[0.001, 1e6] Gb/s", nullptr,
                       &o->intraGbps))
          return false;
        o->intraGiven = true;
        break;
      case kModelPipe:
        if (!parseSize(v, &o->modelPipelineBytes) || o->modelPipelineBytes > (1ull << 40))
          return fail(exitCode, "%s %s: a byte count in [0, 1024G] (K/M/G suffixes)",
                      "--model-pipe", v);
        modelPipeArg = v;
        break;
      case kKernelRates:
        // Empty means "the newest report" inside Options; as a value it was a shell variable
        // left empty, taken as the default without a word.
        if (*v == '\0')
          return fail(exitCode,
                      "%s '%s': the value is empty: give a report (.json or a folder) or none, "
                      "or leave the flag out for the newest",
                      "--kernel-rates", v);
        o->kernelRates = v;
        break;
      case kLocalSize:
        if (strcmp(v, "auto") == 0) {
          o->localSize = 0;
        } else if (!parseInt(v, 1, 65536, &lv)) {
          return failInt(exitCode, "--local-size", v, "1..65536, or auto");
        } else {
          o->localSize = (int)lv;
        }
        break;
      case 'h':
        usage(argv[0]);
        *exitCode = 0;
        return false;
      default:
        return badOption(argc, argv, c, longOpts, exitCode);
    }
  }
  if (optind < argc) return fail(exitCode, "%s%s: unexpected argument", "", argv[optind]);
  // As nccl-tests: both sizes given, the smallest above the largest is refused
  // (one of them alone beyond the other's default moves that default).
  if (o->minGiven && o->maxGiven && o->minBytes > o->maxBytes) {
    fprintf(stderr,
            "gradcomp_perf: -b %s is larger than -e %s: the smallest size must not exceed the "
            "largest (see --help)\n",
            minArg, maxArg);
    *exitCode = 2;
    return false;
  }
  // Both written to one file, the CSV (written last) would replace the JSON, which the run
  // would still say it wrote.
  if (!o->jsonPath.empty() && !o->csvPath.empty() && fileKey(o->jsonPath) == fileKey(o->csvPath)) {
    fprintf(stderr,
            "gradcomp_perf: --json %s and --csv %s name the same file: give each its own path "
            "(see --help)\n",
            o->jsonPath.c_str(), o->csvPath.c_str());
    *exitCode = 2;
    return false;
  }
  if (!o->modelLocal.empty() && o->modelNodes.empty())
    return fail(exitCode, "%s %s: the projection needs --model-nodes too", "--model-local",
                "given");
  // Read by the projection alone: without --model-nodes the run went on as if they had been
  // taken, its table and JSON the same as without them.
  if ((nodeGbpsArg || modelPipeArg) && o->modelNodes.empty())
    return fail(exitCode,
                "%s %s is for the projection only, which --model-nodes K asks for: give "
                "--model-nodes too, or leave it out",
                nodeGbpsArg ? "--node-gbps" : "--model-pipe",
                nodeGbpsArg ? nodeGbpsArg : modelPipeArg);
  // Both steps: the factor stepped the sizes and -i went unused without a word (nccl-tests
  // does the same when -f is above 1, and its -f 1 means "use -i", which -f here refuses).
  if (stepGiven && factorGiven) {
    fprintf(stderr,
            "gradcomp_perf: -i %s and -f %s are both given: a sweep steps by one of them, and "
            "-f would leave -i unused; give -i for a step in bytes or -f for a factor (see "
            "--help)\n",
            stepArg, factorArg);
    *exitCode = 2;
    return false;
  }
  if (stepGiven)
    o->stepFactor = 0;
  else if (!factorGiven)
    o->stepFactor = 4;
  return true;
}

void applyDefaults(Options* o, int gpuCount) {
  const bool cpu = o->backend == BackendKind::Cpu || o->backend == BackendKind::Socket;
  if (!o->minGiven) o->minBytes = cpu ? (256 << 10) : (1 << 20);
  if (!o->maxGiven) o->maxBytes = cpu ? (16 << 20) : (256 << 20);
  // One size given beyond the other's default: that one size (both given and
  // crossed were refused by parseOptions).
  if (o->maxBytes < o->minBytes) {
    if (o->maxGiven && !o->minGiven)
      o->minBytes = o->maxBytes;
    else
      o->maxBytes = o->minBytes;
  }
  if (o->iters < 0) o->iters = cpu ? 5 : 20;
  if (o->warmup < 0) o->warmup = cpu ? 1 : 5;
  if (o->dtypes.empty()) o->dtypes = {ncclFloat32};
  if (o->methods.empty()) {
    // GRADCOMP_METHOD as every other unset setting (unset: qsgd); a bad GRADCOMP_* value
    // falls back here, and methodConfig's gradcompConfigFromEnv refuses it (exit 2), so the
    // methods are not known to checkOptions.
    gradcompConfig_t cfg;
    o->methodsKnown = gradcompConfigFromEnv(&cfg) == gradcompSuccess;
    o->methods = {o->methodsKnown ? cfg.method : gradcompMethodQsgd};
  }
  // Socket ranks are the launcher's: -N only checks them.
  if (o->nranks == 0 && o->backend != BackendKind::Socket)
    o->nranks = cpu ? 4 : (gpuCount >= 2 ? gpuCount : 4);
  if (o->linkGbps.empty()) o->linkGbps = {10, 25, 100, 400};
  if (!o->modelNodes.empty() && o->modelLocal.empty()) o->modelLocal = {8};
  if (o->nodeGbps.empty()) o->nodeGbps = {100, 400, 3200};
}

bool checkOptions(const Options& o, int* exitCode) {
  *exitCode = 0;
  // A flag of another backend would be ignored: the run would not be the one asked for (a
  // --root without --backend socket runs no socket world; only the cpu backend models with a
  // report's kernel rates, the others with their own times).
  const char* backend = o.backend == BackendKind::Cuda  ? "cuda"
                        : o.backend == BackendKind::Cpu ? "cpu"
                                                        : "socket";
  const bool rootMisplaced = !o.root.empty() && o.backend != BackendKind::Socket;
  if (rootMisplaced || (!o.kernelRates.empty() && o.backend != BackendKind::Cpu)) {
    const char* owner = rootMisplaced ? "socket" : "cpu";
    fprintf(stderr,
            "gradcomp_perf: %s %s is for --backend %s only, and this run's backend is %s: leave "
            "it out, or give --backend %s (see --help)\n",
            rootMisplaced ? "--root" : "--kernel-rates",
            rootMisplaced ? o.root.c_str() : o.kernelRates.c_str(), owner, backend, owner);
    *exitCode = 2;
    return false;
  }
  // A method's own flag with no row of that method went unused, the rows those of the run
  // without it (-q 2 -m topk); refused as a flag of another backend is. Only flags given: the
  // unset ones are < 0. -B is also every compressing method's shard alignment in the
  // hierarchy (hier.cc's Layout), so only a run of none leaves it unused. Methods not known (a
  // bad GRADCOMP_* value): methodConfig reports that value instead.
  bool qsgd = false, sparse = false, compress = false;
  std::string methods;
  for (gradcompMethod_t m : o.methods) {
    qsgd = qsgd || m == gradcompMethodQsgd;
    sparse =
        sparse || m == gradcompMethodTopk || m == gradcompMethodRandk || m == gradcompMethodDgc;
    compress = compress || m != gradcompMethodNone;
    methods += std::string(methods.empty() ? "" : ",") + methodName(m);
  }
  if (o.methodsKnown &&
      ((!qsgd && o.bits > 0) || (!compress && o.bucket > 0) || (!sparse && o.density > 0))) {
    char flag[64];
    const char *forMethods = "-m qsgd", *add = "qsgd";
    if (!qsgd && o.bits > 0) {
      snprintf(flag, sizeof flag, "-q %d (QSGD's bits)", o.bits);
    } else if (!compress && o.bucket > 0) {
      snprintf(flag, sizeof flag, "-B %d (QSGD's bucket and the hierarchy's piece size)", o.bucket);
      forMethods = "-m qsgd, topk, randk or dgc";
      add = "a compressing method";
    } else {
      snprintf(flag, sizeof flag, "-k %g (the sparse methods' density)", (double)o.density);
      forMethods = "-m topk, randk or dgc";
      add = "topk, randk or dgc";
    }
    fprintf(stderr,
            "gradcomp_perf: %s is for %s, and this run's methods are %s%s, so no row would use it: "
            "leave it out, or add %s to -m (see --help)\n",
            flag, forMethods, methods.c_str(),
            o.methodsGiven ? "" : " (-m not given: GRADCOMP_METHOD's, else qsgd)", add);
    *exitCode = 2;
    return false;
  }
  // -a names the allreduce's exchange (GRADCOMP_ALGO): a reduce-scatter runs its own whatever
  // it says (plugin/reduce_scatter.cc), a run of none compresses nothing, and an exchange of the
  // other kind of method is refused by methodConfig (gradcomp_perf's main, before any rank),
  // whose sentence names GRADCOMP_ALGO: said here as -a's, with the methods it fits. auto is
  // every run's default, and hier runs the hierarchy where the layout has one, as auto does,
  // for any method.
  if (o.algo > gradcompAlgoAuto && o.algo != gradcompAlgoHier &&
      o.collective == Collective::ReduceScatter) {
    fprintf(stderr,
            "gradcomp_perf: -a %s is for -C all_reduce, and this run's collective is "
            "reduce_scatter, whose exchange does not follow -a: leave it out, or give -a %s (see "
            "--help)\n",
            algoName(o.algo), compress ? "auto or hier" : "auto");
    *exitCode = 2;
    return false;
  }
  const bool denseAlgo = o.algo == gradcompAlgoTwoShot || o.algo == gradcompAlgoRing ||
                         o.algo == gradcompAlgoAllgather;
  const bool sparseAlgo = o.algo == gradcompAlgoSparseAllgather;
  if (o.methodsKnown && o.algo > gradcompAlgoAuto &&
      (!compress || (denseAlgo && sparse) || (sparseAlgo && qsgd))) {
    const char* forMethods = denseAlgo    ? "qsgd"
                             : sparseAlgo ? "topk, randk or dgc"
                                          : "qsgd, topk, randk or dgc";
    // The methods whose rows methodConfig would refuse.
    std::string refused;
    for (gradcompMethod_t m : o.methods)
      if (m != gradcompMethodNone && (m == gradcompMethodQsgd) == sparseAlgo)
        refused += std::string(refused.empty() ? "" : ",") + methodName(m);
    const std::string result =
        !compress ? std::string("no row would use it: leave it out, or add ") +
                        (denseAlgo    ? "qsgd"
                         : sparseAlgo ? "topk, randk or dgc"
                                      : "a compressing method") +
                        " to -m"
                  : "its " + refused + " rows would be refused: leave it out, or give -a " +
                        (qsgd && sparse ? "auto or hier"
                         : qsgd         ? "auto, twoshot, ring, allgather or hier"
                                        : "auto, sparse or hier");
    fprintf(stderr,
            "gradcomp_perf: -a %s is for -m %s, and this run's methods are %s%s, so %s (see "
            "--help)\n",
            algoName(o.algo), forMethods, methods.c_str(),
            o.methodsGiven ? "" : " (-m not given: GRADCOMP_METHOD's, else qsgd)", result.c_str());
    *exitCode = 2;
    return false;
  }
  // GRADCOMP_ELIAS=1: QSGD's allreduce rows run the Elias-coded allgather whatever -a names,
  // and flat (plugin/allreduce.cc, hier.cc's useHier), so with no sparse method beside qsgd -a
  // twoshot, ring or hier went unused, the rows labelled with it. A bad GRADCOMP_* value:
  // methodConfig reports it.
  gradcompConfig_t env;
  if (qsgd && !sparse && o.collective == Collective::AllReduce &&
      (o.algo == gradcompAlgoTwoShot || o.algo == gradcompAlgoRing || o.algo == gradcompAlgoHier) &&
      gradcompConfigFromEnv(&env) == gradcompSuccess && env.elias) {
    fprintf(stderr,
            "gradcomp_perf: -a %s is not run with GRADCOMP_ELIAS=1, whose Elias-coded QSGD is "
            "an allgather whatever -a says, and this run's methods are %s, so no row would use "
            "it: leave it out, give -a auto or allgather, or unset GRADCOMP_ELIAS (see --help)\n",
            algoName(o.algo), methods.c_str());
    *exitCode = 2;
    return false;
  }
  // The comm refuses a local size that does not divide its ranks at creation
  // (checkLocalSize); known here when the ranks are: -N, or the CPU world's count.
  const bool ranksKnown = o.nranksGiven || o.backend == BackendKind::Cpu;
  if (o.localSize > 1 && ranksKnown && o.nranks > 0 &&
      (o.localSize > o.nranks || o.nranks % o.localSize != 0)) {
    std::string divisors;
    for (int d = 1; d <= o.nranks; ++d)
      if (o.nranks % d == 0) divisors += (divisors.empty() ? "" : ", ") + std::to_string(d);
    fprintf(stderr,
            "gradcomp_perf: --local-size %d does not divide -N %d%s: ranks per node must be auto "
            "or a divisor of %d (%s) (see --help)\n",
            o.localSize, o.nranks, o.nranksGiven ? "" : " (the CPU backend's default)", o.nranks,
            divisors.c_str());
    *exitCode = 2;
    return false;
  }
  // A size below one element of a type gives no row of that type (the
  // harness says which it skips); no row at all is refused.
  size_t smallest = 0;
  std::string types;
  for (ncclDataType_t t : o.dtypes) {
    if (smallest == 0 || dtypeSize(t) < smallest) smallest = dtypeSize(t);
    types += std::string(types.empty() ? "" : ", ") + dtypeName(t) + " " +
             std::to_string(dtypeSize(t)) + " B";
  }
  // A factor that cannot grow the first size would end the sweep there.
  if (o.stepFactor > 1 && o.minBytes < o.maxBytes && nextSize(o, o.minBytes) <= o.minBytes) {
    fprintf(stderr,
            "gradcomp_perf: -f %g cannot grow -b %zu (%zu * %g rounds down to %zu bytes), so the "
            "sweep would stop at its first size; give -f of at least %g or a step in bytes with "
            "-i (see --help)\n",
            o.stepFactor, o.minBytes, o.minBytes, o.stepFactor, o.minBytes,
            ceil((double)(o.minBytes + 1) / (double)o.minBytes * 1e4) / 1e4);
    *exitCode = 2;
    return false;
  }
  // A row per size: an additive step far below the range (-b 4 -e 1024G -i 4) would list
  // billions of sizes, more memory than the list can have (the run aborted) and more rows
  // than a run can time.
  size_t sizes = 0;
  for (size_t s = o.minBytes; s <= o.maxBytes && sizes <= kMaxSizes;) {
    ++sizes;
    const size_t next = nextSize(o, s);
    if (next <= s) break;
    s = next;
  }
  if (sizes > kMaxSizes) {
    char step[64];
    if (o.stepFactor > 1)
      snprintf(step, sizeof step, "-f %g", o.stepFactor);
    else
      snprintf(step, sizeof step, "-i %zu", o.stepBytes);
    fprintf(stderr,
            "gradcomp_perf: -b %zu -e %zu in steps of %s gives more than %zu sizes; a sweep has "
            "at most %zu: give a larger step (-i or -f) or a narrower range (see --help)\n",
            o.minBytes, o.maxBytes, step, kMaxSizes, kMaxSizes);
    *exitCode = 2;
    return false;
  }
  bool any = false;
  for (size_t s = o.minBytes; s <= o.maxBytes && !any;) {
    any = s >= smallest;
    const size_t next = nextSize(o, s);
    if (next <= s) break;
    s = next;
  }
  if (!any) {
    fprintf(stderr,
            "gradcomp_perf: -b %zu -e %zu: every size is below one element of the type (%s), "
            "so no row would run; sizes must be at least one element (see --help)\n",
            o.minBytes, o.maxBytes, types.c_str());
    *exitCode = 2;
    return false;
  }
  return true;
}

std::vector<size_t> sizeList(const Options& o) {
  std::vector<size_t> out;
  for (size_t s = o.minBytes; s <= o.maxBytes;) {
    out.push_back(s);
    const size_t next = nextSize(o, s);
    if (next <= s) break;
    s = next;
  }
  return out;
}

}  // namespace gcbench
