#include "rank.h"

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

namespace gcbench {

// FNV-1a over 64-bit words (the tail byte by byte); 52 bits, so that a double
// holds it exactly and the ranks can compare it with a max.
double hashBytes(const void* buf, size_t bytes) {
  const unsigned char* p = static_cast<const unsigned char*>(buf);
  uint64_t h = 0xcbf29ce484222325ull;
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    h = (h ^ w) * 0x100000001b3ull;
  }
  for (; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return (double)(h >> 12);
}

void fatal(int rank, const char* fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "gradcomp_perf: rank %d: %s\n", rank, msg);
  fflush(stdout);
  fflush(stderr);
  _exit(3);
}

namespace {

// The first of names that is set (its name in *name), or null; set but
// empty is a value that envInt refuses, not a variable to skip.
const char* firstEnv(const char* const* names, const char** name) {
  for (const char* const* n = names; *n; ++n) {
    const char* v = getenv(*n);
    if (v) {
      *name = *n;
      return v;
    }
  }
  return nullptr;
}

// Past SLURM_STEP_TASKS_PER_NODE's list after its first count ("4(x2)",
// "2(x3),1": ["(x" repeats ")"] ["," count ["(x" repeats ")"]]...): where the
// list's form ends (the string's end when it is well formed).
const char* slurmListEnd(const char* p) {
  for (;;) {
    if (p[0] == '(' && p[1] == 'x') {
      const size_t d = strspn(p + 2, "0123456789");
      if (d == 0 || p[2 + d] != ')') return p;
      p += 3 + d;
    }
    const size_t d = *p == ',' ? strspn(p + 1, "0123456789") : 0;
    if (d == 0) return p;
    p += 1 + d;
  }
}

// The launcher's variable name=v as a plain decimal in lo..hi, lo >= 0
// (digits only, as GRADCOMP_* integers: no sign, space or leading zero; of
// SLURM_STEP_TASKS_PER_NODE's list, the first count); else a sentence naming
// the variable, its value and the range (and why, if given), and false.
bool envInt(const char* name, const char* v, long lo, long hi, const char* why, int* out) {
  const size_t n = strspn(v, "0123456789");
  const char* end = v + n;
  if (n > 0 && strcmp(name, "SLURM_STEP_TASKS_PER_NODE") == 0) end = slurmListEnd(end);
  const long x = n == 0 || n > 18 || (v[0] == '0' && n > 1) || *end ? -1 : strtol(v, nullptr, 10);
  if (x < lo || x > hi) {
    fprintf(stderr, "gradcomp_perf: %s=\"%s\" is not an integer in %ld..%ld%s\n", name, v, lo, hi,
            why);
    return false;
  }
  *out = (int)x;
  return true;
}

}  // namespace

int launcherRank(int* rank, int* size, int* localRank, int* localSize) {
  static const char* const rankVars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK",
                                         "SLURM_PROCID", nullptr};
  static const char* const sizeVars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS",
                                         nullptr};
  static const char* const localVars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                                          "SLURM_LOCALID", nullptr};
  static const char* const localSizeVars[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                                              "SLURM_STEP_TASKS_PER_NODE", nullptr};
  // A batch script sees SLURM_PROCID too; only the tasks of an srun step count.
  if (!getenv("OMPI_COMM_WORLD_RANK") && !getenv("PMI_RANK") && !getenv("PMIX_RANK") &&
      !getenv("SLURM_STEP_NUM_TASKS"))
    return 0;
  const char *rn, *sn, *lrn, *lsn;
  const char* r = firstEnv(rankVars, &rn);
  const char* s = firstEnv(sizeVars, &sn);
  if (!r || !s) return 0;
  char why[160];
  if (!envInt(sn, s, 1, INT_MAX, "", size)) return -1;
  snprintf(why, sizeof why, " (%s=%d ranks)", sn, *size);
  if (!envInt(rn, r, 0, *size - 1, why, rank)) return -1;
  const char* ls = firstEnv(localSizeVars, &lsn);
  *localSize = *size;
  if (ls && !envInt(lsn, ls, 1, *size, why, localSize)) return -1;
  const char* lr = firstEnv(localVars, &lrn);
  *localRank = *rank;
  snprintf(why, sizeof why, " (%s%s%d ranks on the node)", ls ? lsn : "", ls ? "=" : "",
           *localSize);
  if (lr && !envInt(lrn, lr, 0, *localSize - 1, why, localRank)) return -1;
  return 1;
}

}  // namespace gcbench
