// The table (nccl-tests layout, NCCL and gradcomp side by side), its footer,
// and the --json / --csv files. Rank 0 only.
#pragma once

#include <string>
#include <vector>

#include "harness.h"
#include "kernel_rates.h"

namespace gcbench {

struct RunInfo {
  std::string backend;      // "cuda", "cpu" or "socket"
  std::string description;  // ranks and devices
  std::string baseline;     // what the NCCL columns measure
  bool representative = true;
  bool showModel = false;
  bool project = false;  // --model-nodes given
  // Ranks per node of the run's comms as the link model takes them
  // (modelLocalSize: 1 = flat), and the setting it came from.
  int localSize = 1;
  std::string localSizeFrom = "--local-size";
  // CPU backend: the GPU report whose kernel rates the model uses (null on cuda).
  const KernelRates* rates = nullptr;
};

void printPreamble(const Options& o, const RunInfo& info);
void printHeader(const Options& o, const RunInfo& info, const std::string& label,
                 ncclDataType_t dtype);
void printRow(const Options& o, const RunInfo& info, const Row& row);
void printFooter(const RunInfo& info, const std::vector<Row>& rows);
// The --model-nodes projection of a method's rows.
void printProjection(const Options& o, const std::vector<Row>& rows);
// complete = false: the rows so far of a run that goes on (rewritten after
// every row, so a run that stops early keeps what it measured).
bool writeJson(const std::string& path, const Options& o, const RunInfo& info,
               const std::vector<Row>& rows, bool complete = true);
bool writeCsv(const std::string& path, const Options& o, const std::vector<Row>& rows);

}  // namespace gcbench
