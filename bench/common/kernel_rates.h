// On the CPU backend the host codecs' times say nothing about a GPU, and a
// GPU-network model fed with them would call gradcomp 5 to 25 times slower
// than NCCL. The link model takes the codec kernel rates of the newest
// committed GPU report instead (bench/results/<date>-<gpu>.json, its
// gradcomp_kernels_perf output in bench/results/<date>-<gpu>/kernels.json).
#pragma once

#include <stddef.h>

#include <string>
#include <vector>

#include "methods.h"
#include "model.h"

namespace gcbench {

// The terms of gradcomp_kernels_perf's qsgd_sum8 rows: 7 encodings and the
// own fp32 block.
constexpr int kSumTerms = 8;

struct KernelRates {
  bool ok = false;
  std::string report;  // the report the rates come from, as the preamble names it
  std::string gpu;
  std::string reason;  // why there are none
  struct Entry {
    std::string kernel, dtype;  // an encode kernel (QsgdKernels::encodeName), qsgd_decode,
                                // qsgd_decode_acc, copy (n floats read and written),
                                // qsgd_sum8 (the fused owner's sum of kSumTerms terms)
    int bits, bucket;
    double n, timeUs;
    double density = 0;  // topk_threshold and topk_exact: the density selected at
    // n: elements; for sparse_check_lists the indices checked (lists * k); for
    // qsgd_sum8 the owner's block, the report's n / kSumTerms.
  };
  std::vector<Entry> rows;

  // The costs of the row's kernels at `count` elements (KernelCosts, per
  // element): its encode of `dtype` (k.encodeName(): its error feedback and
  // rounding), the same encode of fp32, the owners' re-encode (k.owner()),
  // decode overwrite and accumulate at k's bits and bucket, each from the
  // report's row of the nearest n (log scale), and the elementwise passes at
  // the copy's bandwidth. False when the report has no row for the encode or
  // the decode-accumulate at these settings: another bucket's or bits' rate
  // never stands in. Older reports lack rows the model now charges; `note`
  // then says which rate stood in for which (the owners' encode without
  // error feedback at the one with it, decode overwrite at accumulate).
  // Where the report has a qsgd_sum8 row of fp32 output at k's bits and
  // bucket, the fused owner's sum's cost per byte moved (sumPerByte) from
  // the row of the nearest owner's block; else sumPerByte = 0 (estimated).
  bool lookup(const char* dtype, const QsgdKernels& k, size_t count, KernelCosts* costs,
              std::string* note) const;
  // The same costs at every n the report has the row's encode at (each
  // other kernel from its nearest row), as a curve over launch sizes
  // (KernelCurve); false as lookup.
  bool curve(const char* dtype, const QsgdKernels& k, size_t count, KernelCurve* curve,
             std::string* note) const;
  // The sparse exchanges' costs: when `select`, the selector (topk_exact
  // when exact, else topk_threshold) from the report's row of the nearest
  // density, then the nearest n (log scale); the received lists' check
  // (`checked` indices a call) and rand-k's non-finite flag (`flagged`) from their rows
  // (sparse_check_lists, nonfinite_flag) where the report has them; the
  // other passes, and those checks where it has not, by bytes at the copy's
  // bandwidth. `note` says which rates stand in for what. False when the
  // report has no copy row, or no row of a selector the row runs (rand-k
  // and the dense fallback run none).
  bool lookupSparse(bool select, bool exact, bool flagged, double density, size_t count,
                    double checked, KernelCosts* costs, std::string* note) const;
};

// `where`: a report's .json, a folder of reports (the newest by name whose
// kernels.json exists), or "none". Never fails: a missing or garbled report
// gives ok = false and a sentence in `reason`.
KernelRates loadKernelRates(const std::string& where);

// Where the source tree's reports are (the default of --kernel-rates).
const char* defaultResultsDir();

}  // namespace gcbench
