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

// A plain decimal of 1..18 digits, no leading zero, at p: its value and
// length in *x and *n; false otherwise.
bool decimalAt(const char* p, long* x, size_t* n) {
  *n = strspn(p, "0123456789");
  if (*n == 0 || *n > 18 || (p[0] == '0' && *n > 1)) return false;
  *x = strtol(p, nullptr, 10);
  return true;
}

// SLURM_STEP_TASKS_PER_NODE, the step's tasks per node in node order
// ("4(x2)", "2(x3),1", "1,2": count ["(x" repeats ")"], comma-separated):
// this node's count, the entry of SLURM_NODEID (nodes differ: "2(x3),1"'s
// last node runs 1 task, "1,2"'s second 2), or, without a SLURM_NODEID the
// list has an entry for, the largest count (never below this node's); -1
// when the list is not of that form.
long slurmTasksOnNode(const char* v) {
  long node = -1;
  size_t n;
  const char* id = getenv("SLURM_NODEID");
  if (id != nullptr && (!decimalAt(id, &node, &n) || id[n] != '\0')) node = -1;
  long mine = -1, largest = -1, first = 0;  // first: the node index of the entry at p
  for (const char* p = v;;) {
    long count, repeats = 1;
    if (!decimalAt(p, &count, &n)) return -1;
    p += n;
    if (p[0] == '(' && p[1] == 'x') {
      if (!decimalAt(p + 2, &repeats, &n) || p[2 + n] != ')' || repeats < 1 || repeats > INT_MAX)
        return -1;
      p += 3 + n;
    }
    if (node >= first && node - first < repeats) mine = count;
    if (count > largest) largest = count;
    first += repeats;
    if (*p == '\0') break;
    if (*p != ',') return -1;
    ++p;
  }
  return mine >= 0 ? mine : largest;
}

}  // namespace

bool envInt(const char* name, const char* v, long lo, long hi, const char* why, int* out) {
  long x = -1;
  size_t n;
  if (strcmp(name, "SLURM_STEP_TASKS_PER_NODE") == 0) {
    x = slurmTasksOnNode(v);
  } else if (!decimalAt(v, &x, &n) || v[n] != '\0') {
    x = -1;
  }
  if (x < lo || x > hi) {
    fprintf(stderr, "gradcomp_perf: %s=\"%s\" is not an integer in %ld..%ld%s\n", name, v, lo, hi,
            why);
    return false;
  }
  *out = (int)x;
  return true;
}

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
