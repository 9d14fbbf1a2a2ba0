#include "report.h"

#include <math.h>
#include <stdio.h>
#include <time.h>

#include <string>

#include "../../kernels/sparse_math.cuh"
#include "model.h"

namespace gcbench {
namespace {

// nccl-tests' habit: fewer decimals as times grow, fixed width.
std::string timeStr(double us) {
  char b[32];
  if (us >= 1e7)
    snprintf(b, sizeof b, "%.3g", us);
  else if (us >= 10000)
    snprintf(b, sizeof b, "%.0f", us);
  else if (us >= 100)
    snprintf(b, sizeof b, "%.1f", us);
  else
    snprintf(b, sizeof b, "%.2f", us);
  return b;
}

std::string wrongStr(long w) {
  return w < 0 ? "N/A" : std::to_string(w);
}

std::string errStr(const Row& r, double v) {
  char b[32];
  if (r.gradcompWrong < 0) return "N/A";
  snprintf(b, sizeof b, "%.2e", v);
  return b;
}

std::string jsonNum(double v) {
  if (!isfinite(v)) return "null";
  char b[40];
  snprintf(b, sizeof b, "%.12g", v);
  return b;
}

std::string jsonStr(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\')
      out += '\\', out += c;
    else if ((unsigned char)c < 0x20)
      out += ' ';
    else
      out += c;
  }
  return out + "\"";
}

double modelSpeedup(const ModelPoint& m) {
  return m.gradcompUs > 0 ? m.ncclUs / m.gradcompUs : 0;
}

double ratioOrNan(double a, double b) {
  return b > 0 && isfinite(a) && isfinite(b) ? a / b : NAN;
}

// The worst auto regret over the rows that ran auto; NaN when none did.
double worstAutoRegret(const std::vector<Row>& rows) {
  double worst = NAN;
  for (const Row& r : rows)
    if (r.autoRan && !r.failed && !(r.autoRegret() <= worst)) worst = r.autoRegret();
  return worst;
}

// A CSV cell: quoted (quotes doubled) when it holds a comma, a quote or a
// line break, which becomes a space.
std::string csvStr(const std::string& s) {
  bool quote = false;
  std::string out;
  for (char c : s) {
    if (c == ',' || c == '"' || c == '\n' || c == '\r') quote = true;
    if (c == '"') out += '"';
    out += c == '\n' || c == '\r' ? ' ' : c;
  }
  return quote ? "\"" + out + "\"" : out;
}

// A CSV number; empty where the JSON has null.
std::string csvNum(double v, const char* fmt = "%g") {
  if (!isfinite(v)) return "";
  char b[40];
  snprintf(b, sizeof b, fmt, v);
  return b;
}

// The table's, JSON's and CSV's algo: the algorithm's name, the hierarchical
// reduce-scatter's its own (until 2026-12-05 both reduce-scatters were
// "reducescatter"); passed through: the caller's word.
const char* rowAlgoName(const Row& r, const char* passed) {
  if (r.algoUsed == 0) return passed;
  return r.hierReduceScatter ? "hier_reducescatter" : algoName(r.algoUsed);
}

const char* kernelSourceName(KernelSource k) {
  return k == KernelSource::Measured ? "measured"
                                     : (k == KernelSource::Report ? "gpu_report" : "none");
}

}  // namespace

void printPreamble(const Options& o, const RunInfo& info) {
  printf("# gradcomp_perf: %s\n", o.commandLine.c_str());
  printf("# backend %s: %s\n", info.backend.c_str(), info.description.c_str());
  printf("# baseline: %s\n", info.baseline.c_str());
  if (!info.representative) {
    if (info.backend == "cpu")
      printf(
          "#  CPU reference backend: times are of the host codecs and threads, not of a GPU "
          "or a network;\n#  so the measured speedup column shows '-' (the JSON keeps the "
          "ratio of the two times)\n");
    else
      printf(
          "#  ranks share one GPU over NCCL's socket transport: measured times are NOT "
          "representative;\n#  read the modeled columns\n");
  }
  if (info.rates) {
    if (info.rates->ok)
      printf(
          "#  modeled with the kernel rates of %s (%s), not with this machine's host codec "
          "times;\n#  elementwise passes estimated at copy bandwidth (a row's JSON kernel_note "
          "names every estimate)\n",
          info.rates->report.c_str(), info.rates->gpu.c_str());
    else
      printf(
          "#  modeled columns left out: %s (host codec times cannot stand in for a GPU's "
          "kernels)\n",
          info.rates->reason.c_str());
  }
  if (o.collective == Collective::ReduceScatter) {
    printf(
        "#  collective: reduce-scatter (gradcompReduceScatter against ncclReduceScatter). size "
        "and count are the per-rank\n#  output (recvcount); algbw = N * size / time, busbw = "
        "algbw * (N-1)/N; NCCL's ring sends (N-1) * size per rank\n#  in N-1 steps (the model "
        "below uses that instead of the allreduce's).\n");
  }
  if (info.backend == "socket") {
    printf(
        "#  socket backend: host codecs over real TCP links; the baseline columns are the "
        "uncompressed call over the same links, not NCCL\n");
  }
  if (info.showModel && info.backend == "socket") {
    printf(
        "#  modeled at L Gb/s (docs/benchmark.md): gradcomp = its host work (the same call in an "
        "in-process world of N threads\n#  here, no link) + bytes each rank sends / L' + latency "
        "steps * %g us; baseline = its host work + 2(N-1)/N * bytes / L'\n#  + 2 * %g us (direct "
        "two-shot); L' = L * 1448/1514, TCP's payload in MTU-1500 frames. Columns m@L give\n#  "
        "baseline / gradcomp modeled time.\n",
        o.linkLatencyUs, o.linkLatencyUs);
  } else if (info.showModel) {
    printf(
        "#  modeled at L Gb/s (docs/benchmark.md): gradcomp = kernels measured alone + bytes "
        "each rank sends / L + latency steps * %g us;\n#  NCCL = 2(N-1)/N * bytes / L + 2(N-1) * "
        "%g us. Columns m@L give NCCL / gradcomp modeled time.\n",
        o.linkLatencyUs, o.linkLatencyUs);
    if (info.localSize > 1) {
      printf(
          "#  nodes of %d ranks (%s): each GPU has its own NIC at L (a node: %d x L); "
          "in-node bytes (wire - inter_wire)\n#  go over --intra-gbps %g: hier = kernels + "
          "in-node / %g + inter-node / L (its stages in turn) + steps * %g us;\n#  a flat "
          "algorithm overlaps the two links (max). NCCL = its ring over both: max(in-node, "
          "NIC) + 2(N-1) * %g us.\n",
          info.localSize, info.localSizeFrom.c_str(), info.localSize, o.intraGbps, o.intraGbps,
          o.linkLatencyUs, o.linkLatencyUs);
      if (o.collective == Collective::ReduceScatter)
        printf(
            "#  reduce-scatter: the hierarchical one (>= 2 nodes) runs its stages in turn (cut "
            "into P pieces: pipelined, JSON only); NCCL's ring sends 1/G of (N-1) * size\n#  "
            "across nodes: max(in-node, NIC) + (N-1) * %g us.\n",
            o.linkLatencyUs);
    }
  }
  if (o.autoRow) {
    printf(
        "#  auto: the same size through a comm with GRADCOMP_AUTO=1 (the rows force compression);"
        " regret = auto / min(gradcomp, NCCL) - 1,\n#  the three timed side by side: a window "
        "of each per round, in all 6 orders,\n#  medians over max(-n, 6) to 36 rounds "
        "(docs/benchmark.md; the JSON's auto_forced_time_us and auto_nccl_time_us, not the "
        "row's\n#  own time columns)%s\n",
        info.backend == "cpu" ? ";\n#  the CPU backend does not time, so auto compresses" : "");
  }
  printf(
      "#  check: results against the exact sum of all ranks' inputs; #wrong counts elements "
      "beyond the bound of one call,\n#  and stochastic QSGD rows weigh each rank's input in "
      "the result (1 expected; docs/benchmark.md).\n#  %s\n",
      o.collective == Collective::ReduceScatter
          ? "algbw and busbw as the collective line above says."
          : "algbw = bytes / time, busbw = algbw * 2(N-1)/N, both from the dense size.");
  printf("#\n");
}

void printHeader(const Options& o, const RunInfo& info, const std::string& label,
                 ncclDataType_t dtype) {
  printf("# gradcomp: %s\n", label.c_str());
  std::string model, units;
  if (info.showModel) {
    for (double g : o.linkGbps) {
      char b[32];
      snprintf(b, sizeof b, "  m@%gG", g);
      char pad[32];
      snprintf(pad, sizeof pad, "%8s", b);
      model += pad;
      units += "        ";
    }
  }
  // Column groups start where the rows put them: 46 and 82 characters in.
  const bool rs = o.collective == Collective::ReduceScatter;
  const char* ncclName = rs ? "ncclReduceScatter" : "ncclAllReduce";
  const std::string hostSum = std::string("exact host sum (for ") + ncclName + ")";
  // One space at least between the groups' names ("exact host sum (for ncclReduceScatter)"
  // is wider than its 36 columns).
  printf("#%45s%-35s %s\n", "",
         info.backend == "cpu"      ? hostSum.c_str()
         : info.backend == "socket" ? "uncompressed over TCP"
                                    : ncclName,
         rs ? "gradcompReduceScatter" : "gradcompAllReduce");
  printf(
      "# %10s  %12s  %8s  %6s  %8s  %7s  %7s  %6s  %8s  %7s  %7s  %6s  %11s  %6s  %8s  %8s  "
      "%7s  %18s%s%s\n",
      "size", "count", "type", "redop", "time", "algbw", "busbw", "#wrong", "time", "algbw",
      "busbw", "#wrong", "wire/rank", "ratio", "maxerr", "rmserr", "speedup", "algo", model.c_str(),
      o.autoRow ? "      auto      auto  regret" : "");
  printf(
      "# %10s  %12s  %8s  %6s  %8s  %7s  %7s  %6s  %8s  %7s  %7s  %6s  %11s  %6s  %8s  %8s  "
      "%7s  %18s%s%s\n",
      "(B)", "(elements)", "", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", "",
      "(B)", "", "(rel)", "(rel)", "", "", units.c_str(),
      o.autoRow ? "      (us)    choice        " : "");
  (void)dtype;
}

// The algo column fits the longest name, "hier_reducescatter" (18).
void printRow(const Options& o, const RunInfo& info, const Row& r) {
  if (r.failed) {
    printf("  %10zu  %12zu  %8s  %6s  FAILED: %s\n", r.bytes, r.count, dtypeName(r.dtype),
           opName(r.op), r.error.c_str());
    return;
  }
  const char* algo = rowAlgoName(r, "passthru");
  char ratio[16], speed[16];
  if (r.ratio() > 0)
    snprintf(ratio, sizeof ratio, "%.2f", r.ratio());
  else
    snprintf(ratio, sizeof ratio, "-");
  // In-process CPU threads against a host sum say nothing of a speed: no ratio
  // that reads as one (the JSON keeps it).
  if (info.backend == "cpu")
    snprintf(speed, sizeof speed, "-");
  else
    snprintf(speed, sizeof speed, "%.2f", r.speedup());
  std::string model;
  for (const ModelPoint& m : r.model) {
    char b[16];
    if (modelSpeedup(m) > 0 && m.ncclUs > 0)
      snprintf(b, sizeof b, "%8.2f", modelSpeedup(m));
    else
      snprintf(b, sizeof b, "%8s", "-");
    model += b;
  }
  if (r.autoRan) {
    char b[64];
    snprintf(b, sizeof b, "  %8s  %8s  %6.3f", timeStr(r.autoUs).c_str(),
             r.autoPassed ? "nccl" : "compress", r.autoRegret());
    model += b;
  }
  printf(
      "  %10zu  %12zu  %8s  %6s  %8s  %7.2f  %7.2f  %6s  %8s  %7.2f  %7.2f  %6s  %11.0f  %6s  "
      "%8s  %8s  %7s  %18s%s\n",
      r.bytes, r.count, dtypeName(r.dtype), opName(r.op), timeStr(r.ncclUs).c_str(), r.ncclAlgbw(),
      r.ncclBusbw(), wrongStr(r.ncclWrong).c_str(), timeStr(r.gradcompUs).c_str(), r.algbw(),
      r.busbw(), wrongStr(r.gradcompWrong).c_str(), r.gradcompWire, ratio,
      errStr(r, r.relErrMax).c_str(), errStr(r, r.relErrRms).c_str(), speed, algo, model.c_str());
  if (r.identical == 0) printf("#  ^ FAILED: the ranks' results differ (hash of each output)\n");
  if (r.rankWeightsWrong > 0)
    printf(
        "#  ^ FAILED: %d rank input(s) enter the result with a wrong weight (weights %.3f .. "
        "%.3f; 1 expected: a lost or repeated contribution)\n",
        r.rankWeightsWrong, r.rankWeightMin, r.rankWeightMax);
  if (r.autoWrong > 0)
    printf("#  ^ FAILED: the auto comm's result has %ld values out of bounds\n", r.autoWrong);
  if (r.autoIdentical == 0)
    printf("#  ^ FAILED: the auto comm's ranks' results differ (hash of each output)\n");
  if (r.autoRankWeightsWrong > 0)
    printf("#  ^ FAILED: the auto comm's result takes %d rank input(s) with a wrong weight\n",
           r.autoRankWeightsWrong);
  if (!r.modelMissing.empty())
    printf("#  ^ modeled columns left out: %s\n", r.modelMissing.c_str());
  // Only the JSON said so before: a reader of the table took these m@L for estimates as good
  // as the large rows'.
  if (!r.modelOptimistic.empty() && !r.model.empty())
    printf("#  ^ modeled speedups are upper bounds: %s\n", r.modelOptimistic.c_str());
  (void)o;
  (void)info;
  fflush(stdout);
}

void printFooter(const RunInfo& info, const std::vector<Row>& rows) {
  long wrong = 0;
  int failed = 0;
  double bus = 0, ncclBus = 0;
  int n = 0;
  for (const Row& r : rows) {
    if (r.failed) {
      ++failed;
      continue;
    }
    wrong += (r.gradcompWrong > 0 ? r.gradcompWrong : 0) + (r.ncclWrong > 0 ? r.ncclWrong : 0) +
             (r.autoWrong > 0 ? r.autoWrong : 0);
    if (r.identical == 0 || r.autoIdentical == 0 || r.rankWeightsWrong > 0 ||
        r.autoRankWeightsWrong > 0)
      ++failed;
    bus += r.busbw();
    ncclBus += r.ncclBusbw();
    ++n;
  }
  printf("# Out of bounds values : %ld %s\n", wrong, wrong == 0 && failed == 0 ? "OK" : "FAILED");
  if (failed) printf("# Failed sizes         : %d\n", failed);
  const bool rs = !rows.empty() && rows[0].reduceScatter;
  if (n == 0)
    printf("# Avg bus bandwidth    : none measured (%s)\n",
           rows.empty() ? "no size ran" : "every size failed");
  else
    printf("# Avg bus bandwidth    : %g (gradcomp)  %g (%s)\n", bus / n, ncclBus / n,
           info.backend == "socket" ? "uncompressed over TCP"
           : info.backend == "cpu"  ? "exact host sum"
           : rs                     ? "ncclReduceScatter"
                                    : "ncclAllReduce");
  const double regret = worstAutoRegret(rows);
  // As the JSON's auto_regret_max_frac: the in-process CPU world does not
  // time, so its auto always compresses and the regret says nothing of auto's
  // choice (the rows keep their side-by-side host times' ratio).
  if (isfinite(regret) && info.backend == "cpu")
    printf(
        "# Auto regret, worst   : not measured on the cpu backend (it does not time, so auto "
        "compresses; the rows' regret compares host times)\n");
  else if (isfinite(regret))
    printf("# Auto regret, worst   : %.3f\n", regret);
  printf("#\n");
  fflush(stdout);
}

void printProjection(const Options& o, const std::vector<Row>& rows) {
  bool any = false;
  for (const Row& r : rows) any = any || !r.projection.empty();
  if (!any) return;
  const Row* first = nullptr;
  for (const Row& r : rows)
    if (!r.projection.empty()) first = first ? first : &r;
  printf(
      "# projection onto K nodes x G GPUs (docs/benchmark.md): in-node link %g Gb/s per GPU, "
      "NICs L Gb/s per node;\n#  kernel rates: %s; times in us, x = NCCL / gradcomp; inter = "
      "bytes per GPU leaving its node\n",
      o.intraGbps,
      first->kernelSource == KernelSource::Measured
          ? "measured in this run"
          : (first->kernelSource == KernelSource::Report ? "of the GPU report in the preamble"
                                                         : "unknown (times left out)"));
  if (o.collective == Collective::ReduceScatter)
    printf(
        "#  reduce-scatter: flat, the flat compressed one over all K*G ranks; hier, the "
        "hierarchical one (>= 2 nodes of >= 2 GPUs; elsewhere the library runs the flat one: "
        "hier is flat's); hier|P: hier cut into P pieces (--model-pipe %zu), each piece's "
        "NVLink reduce-scatter overlapping the inter-node stage of the one before (flat: each "
        "piece's kernels overlapping the transfer of the one before); auto: GRADCOMP_AUTO's "
        "choice of the compressed time and NCCL's\n",
        o.modelPipelineBytes);
  else
    printf(
        "#  hier: the hierarchy (>= 2 nodes of >= 2 GPUs; elsewhere the library runs the flat "
        "algorithm: hier is flat's); hier|P: hier cut into P pieces (--model-pipe %zu), "
        "pipelined (each piece's NVLink reduce-scatter and allgather in turn on one node "
        "stream; a ring middle: the ring's own pieces between the whole NVLink stages; flat: a "
        "two-shot or ring cut as the library cuts it, two-shot on its two streams, the ring "
        "each piece's kernels overlapping the transfer of the one before); auto: "
        "GRADCOMP_AUTO's choice of the compressed time and NCCL's\n",
        o.modelPipelineBytes);
  // Names, then their units, as nccl-tests labels its columns (the x columns are ratios).
  const char* projectionColumns =
      "# %10s  %8s  %5s  %6s  %9s  %9s  %9s  %6s  %6s  %4s  %8s  %6s  %11s  %11s  %11s  %9s\n";
  printf(projectionColumns, "size", "type", "KxG", "L", "nccl", "flat", "hier", "flat x", "hier x",
         "P", "hier|P x", "auto x", "nccl inter", "flat inter", "hier inter", "flat/hier");
  printf(projectionColumns, "(B)", "", "", "(Gb/s)", "(us)", "(us)", "(us)", "", "", "", "", "",
         "(B)", "(B)", "(B)", "");
  for (const Row& r : rows) {
    for (const ProjectionPoint& p : r.projection) {
      char kg[16];
      snprintf(kg, sizeof kg, "%dx%d", p.nodes, p.local);
      auto us = [](double v) { return isfinite(v) ? timeStr(v) : std::string("-"); };
      auto x = [](double v) {
        char b[16];
        if (isfinite(v))
          snprintf(b, sizeof b, "%.2f", v);
        else
          snprintf(b, sizeof b, "-");
        return std::string(b);
      };
      printf(
          "  %10zu  %8s  %5s  %6g  %9s  %9s  %9s  %6s  %6s  %4.0f  %8s  %6s  %11.0f  %11.0f  "
          "%11.0f  %9s\n",
          r.bytes, dtypeName(r.dtype), kg, p.nodeGbps, us(p.t.ncclUs).c_str(),
          us(p.t.flatUs).c_str(), us(p.t.hierUs).c_str(),
          x(ratioOrNan(p.t.ncclUs, p.t.flatUs)).c_str(),
          x(ratioOrNan(p.t.ncclUs, p.t.hierUs)).c_str(), p.t.hierPieces,
          x(ratioOrNan(p.t.ncclUs, p.t.hierPipedUs)).c_str(),
          x(ratioOrNan(p.t.ncclUs, p.t.autoUs)).c_str(), p.t.nccl.inter, p.t.flat.inter,
          p.t.hier.inter, x(ratioOrNan(p.t.flat.inter, p.t.hier.inter)).c_str());
    }
  }
  printf("#\n");
  fflush(stdout);
}

bool writeJson(const std::string& path, const Options& o, const RunInfo& info,
               const std::vector<Row>& rows, bool complete) {
  // Written aside and renamed over: a kill mid-write leaves the last whole file.
  const std::string tmp = path + ".part";
  FILE* f = fopen(tmp.c_str(), "w");
  if (!f) {
    fprintf(stderr, "gradcomp_perf: cannot write --json %s\n", tmp.c_str());
    return false;
  }
  char date[32];
  time_t now = time(nullptr);
  strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", localtime(&now));
  fprintf(f, "{\n  \"tool\": \"gradcomp_perf\",\n  \"date\": %s,\n  \"command\": %s,\n",
          jsonStr(date).c_str(), jsonStr(o.commandLine).c_str());
  fprintf(f, "  \"backend\": %s,\n  \"description\": %s,\n  \"baseline\": %s,\n",
          jsonStr(info.backend).c_str(), jsonStr(info.description).c_str(),
          jsonStr(info.baseline).c_str());
  fprintf(f, "  \"representative\": %s,\n  \"link_latency_us\": %s,\n",
          info.representative ? "true" : "false", jsonNum(o.linkLatencyUs).c_str());
  // false while the run goes on: the rows of the sizes measured so far.
  fprintf(f, "  \"complete\": %s,\n", complete ? "true" : "false");
  // The ranks per node the rows were modeled with (1: flat).
  fprintf(f, "  \"local_size\": %d,\n", info.localSize);
  if (info.rates && info.rates->ok)
    fprintf(f, "  \"kernel_rates\": {\"report\": %s, \"gpu\": %s},\n",
            jsonStr(info.rates->report).c_str(), jsonStr(info.rates->gpu).c_str());
  else
    fprintf(f, "  \"kernel_rates\": null,\n");
  // Auto's regret means something only where it times: the CUDA backend and
  // socket comms (the in-process CPU world does not time).
  fprintf(f, "  \"auto_regret_max_frac\": %s,\n",
          info.backend == "cuda" || info.backend == "socket"
              ? jsonNum(worstAutoRegret(rows)).c_str()
              : "null");
  fprintf(f, "  \"kernel_rates_missing\": %s,\n  \"intra_gbps\": %s,\n  \"rows\": [",
          info.rates && !info.rates->ok ? jsonStr(info.rates->reason).c_str() : "null",
          jsonNum(o.intraGbps).c_str());
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    fprintf(f,
            "%s\n    {\"collective\": %s, \"size\": %zu, \"count\": %zu, \"dtype\": %s, "
            "\"redop\": %s, ",
            i ? "," : "", r.reduceScatter ? "\"reduce_scatter\"" : "\"all_reduce\"", r.bytes,
            r.count, jsonStr(dtypeName(r.dtype)).c_str(), jsonStr(opName(r.op)).c_str());
    fprintf(f,
            "\"method\": %s, \"label\": %s, \"bits\": %d, \"bucket\": %d, \"rounding\": %s, "
            "\"levels\": %s, \"density\": %s, ",
            jsonStr(methodName(r.method)).c_str(), jsonStr(r.label).c_str(), r.bits, r.bucket,
            r.rounding == gradcompRoundNearest ? "\"nearest\"" : "\"stochastic\"",
            r.levels == gradcompLevelsSquare ? "\"square\"" : "\"uniform\"",
            jsonNum(gc::sparse::floatDecimal(r.density)).c_str());
    fprintf(f, "\"algo\": %s, \"nranks\": %d, \"failed\": %s, \"error\": %s,\n     ",
            jsonStr(rowAlgoName(r, "passthrough")).c_str(), r.nranks, r.failed ? "true" : "false",
            jsonStr(r.error).c_str());
    fprintf(f, "\"time_us\": %s, \"nccl_time_us\": %s, \"algbw\": %s, \"busbw\": %s, ",
            jsonNum(r.gradcompUs).c_str(), jsonNum(r.ncclUs).c_str(), jsonNum(r.algbw()).c_str(),
            jsonNum(r.busbw()).c_str());
    fprintf(f, "\"nccl_algbw\": %s, \"nccl_busbw\": %s, \"wire_bytes\": %s, ",
            jsonNum(r.ncclAlgbw()).c_str(), jsonNum(r.ncclBusbw()).c_str(),
            jsonNum(r.gradcompWire).c_str());
    fprintf(f, "\"inter_wire_bytes\": %s, ", jsonNum(r.interWire).c_str());
    fprintf(f, "\"nccl_wire_bytes\": %s, \"ratio\": %s, \"speedup\": %s,\n     ",
            jsonNum(r.ncclWire).c_str(), r.ratio() > 0 ? jsonNum(r.ratio()).c_str() : "null",
            jsonNum(r.speedup()).c_str());
    const bool checked = r.gradcompWrong >= 0;
    fprintf(f, "\"rel_err\": %s, \"rel_err_max\": %s, \"wrong\": %s, \"nccl_wrong\": %s, ",
            checked ? jsonNum(r.relErrRms).c_str() : "null",
            checked ? jsonNum(r.relErrMax).c_str() : "null",
            checked ? std::to_string(r.gradcompWrong).c_str() : "null",
            r.ncclWrong >= 0 ? std::to_string(r.ncclWrong).c_str() : "null");
    fprintf(f, "\"err_over_bound\": %s, ", checked ? jsonNum(r.errOverBound).c_str() : "null");
    const bool weighed = r.rankWeightsWrong >= 0;
    fprintf(f, "\"rank_weight_min\": %s, \"rank_weight_max\": %s, \"rank_weights_wrong\": %s, ",
            weighed ? jsonNum(r.rankWeightMin).c_str() : "null",
            weighed ? jsonNum(r.rankWeightMax).c_str() : "null",
            weighed ? std::to_string(r.rankWeightsWrong).c_str() : "null");
    fprintf(f, "\"identical\": %s, \"host_us\": %s, \"baseline_host_us\": %s, ",
            r.identical < 0 ? "null" : (r.identical ? "true" : "false"), jsonNum(r.hostUs).c_str(),
            jsonNum(r.baselineHostUs).c_str());
    fprintf(f, "\"pieces\": %s, \"piece_bytes\": %zu, \"piece_bytes_used\": %zu, ",
            jsonNum(r.pieces).c_str(), r.pieceBytes, r.pieceBytesUsed);
    if (r.autoRan) {
      fprintf(f, "\"auto_time_us\": %s, \"auto_choice\": %s, \"auto_regret\": %s, ",
              jsonNum(r.autoUs).c_str(), jsonStr(r.autoPassed ? "nccl" : "compress").c_str(),
              jsonNum(r.autoRegret()).c_str());
      fprintf(f, "\"auto_forced_time_us\": %s, \"auto_nccl_time_us\": %s, ",
              jsonNum(r.autoForcedUs).c_str(), jsonNum(r.autoNcclUs).c_str());
      fprintf(
          f, "\"auto_wrong\": %s, \"auto_identical\": %s, \"auto_rank_weights_wrong\": %s, ",
          r.autoWrong >= 0 ? std::to_string(r.autoWrong).c_str() : "null",
          r.autoIdentical < 0 ? "null" : (r.autoIdentical ? "true" : "false"),
          r.autoRankWeightsWrong >= 0 ? std::to_string(r.autoRankWeightsWrong).c_str() : "null");
    }
    fprintf(f, "\"model_missing\": %s, ",
            r.modelMissing.empty() ? "null" : jsonStr(r.modelMissing).c_str());
    fprintf(f,
            "\"kernels_measured\": %s, \"kernel_source\": %s, \"encode_us\": %s, "
            "\"decode_us\": %s, \"kernel_us\": %s, \"latency_steps\": %s, ",
            r.kernelsMeasured ? "true" : "false", jsonStr(kernelSourceName(r.kernelSource)).c_str(),
            jsonNum(r.encodeUs).c_str(), jsonNum(r.decodeUs).c_str(), jsonNum(r.kernelUs).c_str(),
            jsonNum(r.latencySteps).c_str());
    // Per element of the buffer: the kernels the algorithm runs (work) and what
    // each costs (microseconds per element; elementwise per byte).
    if (r.kernelsMeasured && r.sparseKernels) {
      // The sparse exchange: its selector and the passes charged by bytes.
      fprintf(f,
              "\"kernel_costs\": {\"select\": %s, \"check_lists\": %s, \"nonfinite_flag\": %s, "
              "\"elementwise_per_byte\": %s}, "
              "\"kernel_work\": {\"select\": %s, \"check_lists\": %s, \"nonfinite_flag\": %s, "
              "\"elementwise_bytes\": %s}, "
              "\"sparse_kind\": {\"slots\": %zu, \"value_bytes\": %g, \"residual\": %s, "
              "\"momentum\": %s, \"clip\": %s, \"mask\": %s, \"dense\": %s}, "
              "\"kernel_note\": %s, ",
              jsonNum(r.costs.select).c_str(), jsonNum(r.costs.checkSlot).c_str(),
              jsonNum(r.costs.flag).c_str(), jsonNum(r.costs.elementwisePerByte).c_str(),
              jsonNum(r.work.select).c_str(), jsonNum(r.work.checkSlots).c_str(),
              jsonNum(r.work.flag).c_str(), jsonNum(r.work.elementwiseBytes).c_str(), r.slots,
              r.kind.valueBytes, r.kind.residual ? "true" : "false",
              r.kind.momentum ? "true" : "false", r.kind.clip ? "true" : "false",
              r.kind.mask ? "true" : "false", r.dense ? "true" : "false",
              r.kernelNote.empty() ? "null" : jsonStr(r.kernelNote).c_str());
    } else if (r.kernelsMeasured) {
      const KernelCosts& c = r.costs;
      const KernelWork& w = r.work;
      fprintf(f,
              "\"kernel_costs\": {\"encode\": %s, \"encode_f32\": %s, \"owner_encode\": %s, "
              "\"decode\": %s, \"decode_acc\": %s, \"decode_out\": %s, "
              "\"elementwise_per_byte\": %s, \"sum_per_byte\": %s}, "
              "\"kernel_launch\": %s, \"kernel_launch_peer_encode\": %s, "
              "\"kernel_launch_out_decode\": %s, ",
              jsonNum(c.encode).c_str(), jsonNum(c.encodeF32).c_str(),
              jsonNum(c.ownerEncode).c_str(), jsonNum(c.decode).c_str(),
              jsonNum(c.decodeAcc).c_str(), jsonNum(c.decodeOut).c_str(),
              jsonNum(c.elementwisePerByte).c_str(), jsonNum(c.sumPerByte).c_str(),
              jsonNum(r.codecLaunch).c_str(), jsonNum(r.peerEncodeLaunch).c_str(),
              jsonNum(r.outDecodeLaunch).c_str());
      fprintf(f,
              "\"kernel_work\": {\"encode\": %s, \"encode_f32\": %s, \"owner_encode\": %s, "
              "\"decode\": %s, \"decode_acc\": %s, \"decode_out\": %s, "
              "\"elementwise_bytes\": %s, \"sum_decode\": %s, \"sum_copy_bytes\": %s, "
              "\"sum_bytes\": %s}, "
              "\"kernel_note\": %s, ",
              jsonNum(w.encode).c_str(), jsonNum(w.encodeF32).c_str(),
              jsonNum(w.ownerEncode).c_str(), jsonNum(w.decode).c_str(),
              jsonNum(w.decodeAcc).c_str(), jsonNum(w.decodeOut).c_str(),
              jsonNum(w.elementwiseBytes).c_str(), jsonNum(w.sumDecode).c_str(),
              jsonNum(w.sumCopyBytes).c_str(), jsonNum(w.sumBytes).c_str(),
              r.kernelNote.empty() ? "null" : jsonStr(r.kernelNote).c_str());
    }
    fprintf(f, "\"model\": [");
    for (size_t k = 0; k < r.model.size(); ++k) {
      const ModelPoint& m = r.model[k];
      fprintf(f, "%s{\"link_gbps\": %s, \"time_us\": %s, \"nccl_time_us\": %s, \"speedup\": %s",
              k ? ", " : "", jsonNum(m.gbps).c_str(), jsonNum(m.gradcompUs).c_str(),
              jsonNum(m.ncclUs).c_str(),
              m.ncclUs > 0 && m.gradcompUs > 0 ? jsonNum(modelSpeedup(m)).c_str() : "null");
      // Pipelined rows: the pipelined model beside the unpipelined one.
      const bool piped = m.pipelinedUs > 0;
      fprintf(f, ", \"pipelined_time_us\": %s, \"pipelined_speedup\": %s",
              piped ? jsonNum(m.pipelinedUs).c_str() : "null",
              piped && m.ncclUs > 0 ? jsonNum(m.ncclUs / m.pipelinedUs).c_str() : "null");
      // Where the link is the real one (socket backend): measured speedup over
      // the modeled one, and each time over its model.
      if (info.backend == "socket")
        fprintf(f, ", \"measured_vs_model\": %s, \"time_vs_model\": %s, \"baseline_vs_model\": %s",
                jsonNum(ratioOrNan(r.speedup(), modelSpeedup(m))).c_str(),
                jsonNum(ratioOrNan(r.gradcompUs, m.gradcompUs)).c_str(),
                jsonNum(ratioOrNan(r.ncclUs, m.ncclUs)).c_str());
      fprintf(f, "}");
    }
    fprintf(f, "],\n     \"projection\": [");
    for (size_t k = 0; k < r.projection.size(); ++k) {
      const ProjectionPoint& p = r.projection[k];
      const ClusterTimes& t = p.t;
      fprintf(f, "%s\n       {\"nodes\": %d, \"local\": %d, \"node_gbps\": %s, ", k ? "," : "",
              p.nodes, p.local, jsonNum(p.nodeGbps).c_str());
      fprintf(f, "\"nccl_time_us\": %s, \"flat_time_us\": %s, \"hier_time_us\": %s, ",
              jsonNum(t.ncclUs).c_str(), jsonNum(t.flatUs).c_str(), jsonNum(t.hierUs).c_str());
      fprintf(f, "\"flat_speedup\": %s, \"hier_speedup\": %s, ",
              jsonNum(ratioOrNan(t.ncclUs, t.flatUs)).c_str(),
              jsonNum(ratioOrNan(t.ncclUs, t.hierUs)).c_str());
      fprintf(f,
              "\"flat_kernel_us\": %s, \"hier_kernel_us\": %s, \"hier_pipelined_kernel_us\": %s, ",
              jsonNum(t.flatKernelUs).c_str(), jsonNum(t.hierKernelUs).c_str(),
              jsonNum(t.hierPipedKernelUs).c_str());
      fprintf(f,
              "\"hier_pipeline_bytes\": %zu, \"hier_pieces\": %s, \"hier_pipelined_time_us\": %s, "
              "\"hier_pipelined_speedup\": %s, \"auto_time_us\": %s, \"auto_speedup\": %s, "
              "\"auto_choice\": %s, ",
              t.hierPipelineBytes, jsonNum(t.hierPieces).c_str(), jsonNum(t.hierPipedUs).c_str(),
              jsonNum(ratioOrNan(t.ncclUs, t.hierPipedUs)).c_str(), jsonNum(t.autoUs).c_str(),
              jsonNum(ratioOrNan(t.ncclUs, t.autoUs)).c_str(),
              jsonStr(t.autoCompresses ? "compress" : "nccl").c_str());
      fprintf(f,
              "\"nccl_intra_bytes\": %s, \"nccl_inter_bytes\": %s, \"flat_intra_bytes\": %s, "
              "\"flat_inter_bytes\": %s, \"hier_intra_bytes\": %s, \"hier_inter_bytes\": %s, ",
              jsonNum(t.nccl.intra).c_str(), jsonNum(t.nccl.inter).c_str(),
              jsonNum(t.flat.intra).c_str(), jsonNum(t.flat.inter).c_str(),
              jsonNum(t.hier.intra).c_str(), jsonNum(t.hier.inter).c_str());
      fprintf(f, "\"inter_bytes_ratio_flat_vs_hier\": %s}",
              jsonNum(ratioOrNan(t.flat.inter, t.hier.inter)).c_str());
    }
    fprintf(f, "]}");
  }
  fprintf(f, "\n  ]\n}\n");
  if (fclose(f) != 0 || rename(tmp.c_str(), path.c_str()) != 0) {
    fprintf(stderr, "gradcomp_perf: cannot write --json %s\n", path.c_str());
    return false;
  }
  return true;
}

bool writeCsv(const std::string& path, const Options& o, const std::vector<Row>& rows) {
  FILE* f = fopen(path.c_str(), "w");
  if (!f) {
    fprintf(stderr, "gradcomp_perf: cannot write --csv %s\n", path.c_str());
    return false;
  }
  fprintf(f,
          "size,count,dtype,redop,method,bits,bucket,density,algo,nranks,failed,time_us,"
          "nccl_time_us,algbw,busbw,nccl_algbw,nccl_busbw,wire_bytes,nccl_wire_bytes,ratio,"
          "speedup,rel_err,rel_err_max,wrong,nccl_wrong,kernel_us,auto_time_us,auto_choice,"
          "auto_regret,collective,label,rounding,error,inter_wire_bytes,err_over_bound,identical,"
          "host_us,baseline_host_us,pieces,piece_bytes,auto_forced_time_us,auto_nccl_time_us,"
          "model_missing,kernels_measured,kernel_source,encode_us,decode_us,latency_steps,"
          "kernel_note,rank_weight_min,rank_weight_max,rank_weights_wrong,auto_wrong,"
          "auto_identical,auto_rank_weights_wrong,levels,kernel_launch,kernel_launch_peer_encode,"
          "kernel_launch_out_decode,piece_bytes_used");
  for (double g : o.linkGbps)
    fprintf(f, ",model_%gg_us,nccl_model_%gg_us,model_%gg_speedup", g, g, g);
  fprintf(f, "\n");
  for (const Row& r : rows) {
    // Unchecked (-c 0) and absent values are empty cells, as the JSON's nulls.
    const bool checked = r.gradcompWrong >= 0;
    const double nan = NAN;
    fprintf(
        f, "%zu,%zu,%s,%s,%s,%d,%d,%g,%s,%d,%d,%g,%g,%g,%g,%g,%g,%.0f,%.0f,%s,%g,%s,%s,%s,%s,%g",
        r.bytes, r.count, dtypeName(r.dtype), opName(r.op), methodName(r.method), r.bits, r.bucket,
        r.density, rowAlgoName(r, "passthrough"), r.nranks, r.failed ? 1 : 0, r.gradcompUs,
        r.ncclUs, r.algbw(), r.busbw(), r.ncclAlgbw(), r.ncclBusbw(), r.gradcompWire, r.ncclWire,
        csvNum(r.ratio() > 0 ? r.ratio() : nan).c_str(), r.speedup(),
        csvNum(checked ? r.relErrRms : nan).c_str(), csvNum(checked ? r.relErrMax : nan).c_str(),
        checked ? std::to_string(r.gradcompWrong).c_str() : "",
        r.ncclWrong >= 0 ? std::to_string(r.ncclWrong).c_str() : "", r.kernelUs);
    if (r.autoRan)
      fprintf(f, ",%g,%s,%g", r.autoUs, r.autoPassed ? "nccl" : "compress", r.autoRegret());
    else
      fprintf(f, ",,,");
    // The JSON row's other scalars, after the earlier columns so that those
    // keep their places (docs/benchmark.md); its objects and lists are left
    // out, but for the model's columns below.
    fprintf(f, ",%s,%s,%s,%s,%s,%s,%s", r.reduceScatter ? "reduce_scatter" : "all_reduce",
            csvStr(r.label).c_str(), r.rounding == gradcompRoundNearest ? "nearest" : "stochastic",
            csvStr(r.error).c_str(), csvNum(r.interWire, "%.0f").c_str(),
            checked ? csvNum(r.errOverBound).c_str() : "",
            r.identical < 0 ? "" : (r.identical ? "1" : "0"));
    fprintf(f, ",%s,%s,%s,%zu", csvNum(r.hostUs).c_str(), csvNum(r.baselineHostUs).c_str(),
            csvNum(r.pieces).c_str(), r.pieceBytes);
    if (r.autoRan)
      fprintf(f, ",%s,%s", csvNum(r.autoForcedUs).c_str(), csvNum(r.autoNcclUs).c_str());
    else
      fprintf(f, ",,");
    fprintf(f, ",%s,%d,%s,%s,%s,%s,%s", csvStr(r.modelMissing).c_str(), r.kernelsMeasured ? 1 : 0,
            kernelSourceName(r.kernelSource), csvNum(r.encodeUs).c_str(),
            csvNum(r.decodeUs).c_str(), csvNum(r.latencySteps).c_str(),
            csvStr(r.kernelsMeasured ? r.kernelNote : "").c_str());
    const bool weighed = r.rankWeightsWrong >= 0;
    auto count = [](long v) { return v >= 0 ? std::to_string(v) : std::string(); };
    fprintf(f, ",%s,%s,%s", weighed ? csvNum(r.rankWeightMin).c_str() : "",
            weighed ? csvNum(r.rankWeightMax).c_str() : "", count(r.rankWeightsWrong).c_str());
    if (r.autoRan)
      fprintf(f, ",%s,%s,%s", count(r.autoWrong).c_str(),
              r.autoIdentical < 0 ? "" : (r.autoIdentical ? "1" : "0"),
              count(r.autoRankWeightsWrong).c_str());
    else
      fprintf(f, ",,,");
    fprintf(f, ",%s", r.levels == gradcompLevelsSquare ? "square" : "uniform");
    fprintf(f, ",%s", r.kernelsMeasured && !r.sparseKernels ? csvNum(r.codecLaunch).c_str() : "");
    fprintf(f, ",%s",
            r.kernelsMeasured && !r.sparseKernels ? csvNum(r.peerEncodeLaunch).c_str() : "");
    fprintf(f, ",%s",
            r.kernelsMeasured && !r.sparseKernels ? csvNum(r.outDecodeLaunch).c_str() : "");
    fprintf(f, ",%zu", r.pieceBytesUsed);
    for (size_t k = 0; k < o.linkGbps.size(); ++k) {
      if (k < r.model.size())
        fprintf(f, ",%g,%g,%g", r.model[k].gradcompUs, r.model[k].ncclUs, modelSpeedup(r.model[k]));
      else
        fprintf(f, ",,,");
    }
    fprintf(f, "\n");
  }
  return fclose(f) == 0;
}

}  // namespace gcbench
