// QSGD bit width per call. Fixed mode returns the configured bits. The DQ-SGD
// modes choose b_t from the statistics of the buffer's PREVIOUS reduced
// result (per-bucket max and norm), which every rank holds bit for bit, so
// every rank chooses the same b_t with no extra message:
//  - dynamic: the fewest bits in [bitsMin, bitsMax] whose variance bound
//    sum_b len_b * max_b^2 / (4 s^2) stays under varianceTarget * ||g||^2;
//  - budget: the calls on a buffer form consecutive windows of budgetWindow
//    calls, each spending at most bitsBudget bits per element on average.
//    b_t = (what the window has left / calls left) + log2(sqrt(A_t) / the
//    geometric mean of sqrt(A) over the last window), A = sum_b len_b *
//    max_b^2: DQ-SGD's levels in proportion to the gradient's scale, so
//    large gradients get more bits and small ones fewer. Rounded, clamped to
//    [bitsMin, bitsMax], never leaving less than bitsMin for later calls.
// On the CUDA backend the statistics are computed on the stream after each
// call and copied to pinned host memory; the next call waits on that call's
// event only. Host-side choice: not CUDA-graph capturable (refused).
#pragma once

#include <stdint.h>

#include <deque>
#include <vector>

#include "kernels/grad_stats.h"
#include "comm.h"

namespace gc {

// Chooses this call's bits (see above); an error under graph capture.
gradcompResult_t chooseBits(gradcompComm& c, BufferState& s, int* bits);
// After a call: enqueue (CUDA) or compute (CPU) the statistics of the
// reduced result the next call on this buffer chooses from.
gradcompResult_t recordReducedStats(gradcompComm& c, BufferState& s, const void* recv, size_t count,
                                    DType t);
// The reduce-scatter's form: each rank holds only its block of the result,
// so the blocks' statistics are allgathered (16 bytes per rank) and summed in
// rank order, which gives every rank the same numbers. Blocks are quantized
// with buckets from their own start, so the sum is the statistic of exactly
// the buckets the next call quantizes.
gradcompResult_t recordGatheredStats(gradcompComm& c, BufferState& s, const void* recv,
                                     size_t count, DType t);

// The pure parts, for tests.
// Statistics of host data, in a fixed order.
GradStats hostGradStats(const void* x, DType t, size_t n, int bucket);
// Dynamic mode: the fewest bits meeting the bound; bitsMax when none does.
int dynamicBits(const GradStats& st, double varianceTarget, int bitsMin, int bitsMax);

// log2(x) of a finite x > 0 from IEEE +, *, / alone (frexp's exponent and a
// fixed series), so every rank computes the same bits on any machine: the
// budget policy's choice rounds values made from it, and a math library's
// log2, whose last bit may differ between builds and architectures, could
// make ranks on different nodes choose different widths at a rounding
// boundary (mismatched collectives). Within a few units in the last place
// of log2; exact for powers of two.
double portableLog2(double x);

class BudgetPolicy {
 public:
  // st is null before the first statistics exist. decide() is the width of
  // the next call and changes nothing; commit() counts a call made at that
  // width (its statistic joins the history, its bits the window) once the
  // call has gone through, so a call that fails on any rank leaves every
  // rank's window as it was. choose() is both, for the tests.
  int decide(const GradStats* st, double budget, int window, int bitsMin, int bitsMax) const;
  void commit(const GradStats* st, int bits, int window);
  int choose(const GradStats* st, double budget, int window, int bitsMin, int bitsMax) {
    const int b = decide(st, budget, window, bitsMin, bitsMax);
    commit(st, b, window);
    return b;
  }
  // The gradients' unit changed by 2^d (gradcompCommSetGradScale): every
  // entry of the history moves with it.
  void shift(double d) {
    for (double& v : halfLog2A_) v += d;
  }
  // For checkpoints (see BitsHistoryRecord).
  void save(int* used, int* pos, std::vector<double>* halfLog2A) const;
  void restore(int used, int pos, const std::vector<double>& halfLog2A);

 private:
  std::deque<double> halfLog2A_;  // the last `window` values of log2(sqrt(A))
  int used_ = 0;                  // bits per element spent in the current window
  int pos_ = 0;                   // calls made in the current window
};

// A buffer's DQ-SGD history as a checkpoint holds it: without it a resumed
// run would choose other bit widths than the run it continues.
struct BitsHistoryRecord {
  GradStats stats{0.0, 0.0};
  int32_t haveStats = 0;
  int32_t lastBits = 0;
  int32_t budgetUsed = 0;
  int32_t budgetPos = 0;
  std::vector<double> halfLog2A;
};
// False when the buffer has no history. Waits for the statistics of the
// buffer's last call when they are still on their way (CUDA).
gradcompResult_t exportBitsHistory(BufferState& s, bool* present, BitsHistoryRecord* out);
// The sentence naming the first field of a record outside what cfg allows
// (nullptr when it is valid): checked before anything is restored.
const char* checkBitsHistory(const BitsHistoryRecord& r, const gradcompConfig_t& cfg);
bool budgetWindowFits(const BitsHistoryRecord& r, const gradcompConfig_t& cfg);
// Gives s a history equal to r (allocating what the backend needs).
gradcompResult_t importBitsHistory(gradcompComm& c, BufferState& s, const BitsHistoryRecord& r);
// gradcompCommSetGradScale: waits for the statistics of s's last call
// (the only step that can fail); then scaleBitsHistory makes its statistics
// and history those of results `factor` times larger.
gradcompResult_t settleBitsHistory(BufferState& s);
void scaleBitsHistory(BufferState& s, double factor);
// gradcompCommAbort: s's history frees nothing whose free would wait for the
// whole device (its pinned mirror); that memory is left.
void abandonBitsHistory(BufferState& s);

}  // namespace gc
