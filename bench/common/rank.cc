#include "rank.h"

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

const char* firstEnv(const char* const* names) {
  for (const char* const* n = names; *n; ++n) {
    const char* v = getenv(*n);
    if (v && *v) return v;
  }
  return nullptr;
}

}  // namespace

bool launcherRank(int* rank, int* size, int* localRank, int* localSize) {
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
    return false;
  const char* r = firstEnv(rankVars);
  const char* s = firstEnv(sizeVars);
  if (!r || !s) return false;
  *rank = atoi(r);
  *size = atoi(s);
  const char* lr = firstEnv(localVars);
  const char* ls = firstEnv(localSizeVars);
  *localRank = lr ? atoi(lr) : *rank;
  *localSize = ls ? atoi(ls) : *size;
  return *size >= 1 && *rank >= 0 && *rank < *size;
}

}  // namespace gcbench
