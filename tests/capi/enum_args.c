/* A C caller may pass any int where the API takes one of gradcomp's enums,
 * or NCCL's datatype and op, by value or in a struct it reads. A negative
 * one (-1) lies outside every public enum's range in C++ (the range
 * sentinels take in the non-negative ints only; ncclDataType_t holds only
 * 0..15), so the library must read it as an int, never as the enum, and
 * refuse it naming the value and the range (gradcompGetErrorString: its
 * string for unknown codes). Each enum gets -1, the first value past its
 * enumerators, its sentinel and the value past the sentinel (INT_MIN as an
 * int); NCCL's datatype and op get -1, 99 and INT_MIN at every entry point
 * that takes them, with the datatypes and ops gradcomp does not compress
 * (int8, uint64, fp8, a ncclRedOpCreatePreMulSum handle). C, not C++: C++
 * cannot even make these values without a cast that is itself undefined.
 * tests/check_enum_args.sh runs it on the library, and again (where clang
 * is installed) with the entry points built with clang's -fsanitize=enum,
 * which reports any read of such a value as the enum. */
#include <gradcomp.h>
#include <gradcomp/elias.h>
#include <gradcomp/reference.h>

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "../common/nccl_bad_enums.h"

#define COUNT 64

static int failures = 0;

/* The int values each enum is passed, with the enum's sentinel and the
 * first value past its enumerators. */
static void badValues(int pastEnumerators, int sentinel, int out[4]) {
  out[0] = -1;
  out[1] = pastEnumerators;
  out[2] = sentinel;
  out[3] = INT_MIN; /* the sentinel + 1 (0x80000000), read as an int */
}

/* An int as the enum a C caller passes: its bytes, as C converts it. */
static gradcompRounding_t asRounding(int v) {
  gradcompRounding_t e;
  memcpy(&e, &v, sizeof e);
  return e;
}
static gradcompLevels_t asLevels(int v) {
  gradcompLevels_t e;
  memcpy(&e, &v, sizeof e);
  return e;
}
static gradcompResult_t asResult(int v) {
  gradcompResult_t e;
  memcpy(&e, &v, sizeof e);
  return e;
}

/* NCCL's enums as a C caller may pass them: -1 and INT_MIN lie outside
 * either enum's range in C++, 99 outside ncclDataType_t's (ncclRedOp_t's
 * ncclMaxRedOp takes in every non-negative int: 99 may be a handle of
 * ncclRedOpCreatePreMulSum). */
static const int kBadNccl[3] = {-1, 99, INT_MIN};

static void expectRefused(const char* call, gradcompResult_t got, const char* want) {
  if (got != gradcompInvalidArgument) {
    printf("FAIL: %s returned %d, not gradcompInvalidArgument\n", call, (int)got);
    ++failures;
  } else if (strcmp(gradcompGetLastError(), want) != 0) {
    printf("FAIL: %s said \"%s\", not \"%s\"\n", call, gradcompGetLastError(), want);
    ++failures;
  }
}

/* The QSGD encode entry points, host and GPU: the GPU ones check their
 * arguments before any device call, so they refuse without a GPU too. */
static void qsgdEncodes(void) {
  static float x[COUNT], residual[COUNT];
  static unsigned char out[1024];
  int bad[4], i, k;
  char want[256];
  for (i = 0; i < COUNT; ++i) x[i] = 1.0f;
  if (gradcompQsgdEncodedBytes(COUNT, 4, 32) > sizeof out) {
    printf("FAIL: %zu encoded bytes do not fit the test's buffer\n",
           gradcompQsgdEncodedBytes(COUNT, 4, 32));
    ++failures;
    return;
  }
  badValues(2, gradcompRoundingEnumMax, bad);
  for (k = 0; k < 4; ++k) {
    const gradcompRounding_t r = asRounding(bad[k]);
    snprintf(want, sizeof want,
             "rounding=%d is out of range 0..1 (gradcompRoundStochastic=0, "
             "gradcompRoundNearest=1)",
             bad[k]);
    expectRefused(
        "gradcompQsgdEncodeEFRoundingHost",
        gradcompQsgdEncodeEFRoundingHost(x, ncclFloat32, residual, COUNT, 4, 32, 1, r, out), want);
    expectRefused("gradcompQsgdEncodeEFLevelsHost (rounding)",
                  gradcompQsgdEncodeEFLevelsHost(x, ncclFloat32, residual, COUNT, 4, 32, 1, r,
                                                 gradcompLevelsUniform, out),
                  want);
    expectRefused("gradcompQsgdEncodeEFRounding",
                  gradcompQsgdEncodeEFRounding(x, ncclFloat32, residual, COUNT, 4, 32, 1, r, out,
                                               (cudaStream_t)0),
                  want);
    expectRefused("gradcompQsgdEncodeEFLevels (rounding)",
                  gradcompQsgdEncodeEFLevels(x, ncclFloat32, residual, COUNT, 4, 32, 1, r,
                                             gradcompLevelsUniform, out, (cudaStream_t)0),
                  want);
  }
  badValues(2, gradcompLevelsEnumMax, bad);
  for (k = 0; k < 4; ++k) {
    const gradcompLevels_t l = asLevels(bad[k]);
    snprintf(want, sizeof want,
             "levels=%d is out of range 0..1 (gradcompLevelsUniform=0, gradcompLevelsSquare=1)",
             bad[k]);
    expectRefused("gradcompQsgdEncodeEFLevelsHost (levels)",
                  gradcompQsgdEncodeEFLevelsHost(x, ncclFloat32, residual, COUNT, 4, 32, 1,
                                                 gradcompRoundStochastic, l, out),
                  want);
    expectRefused("gradcompQsgdEncodeEFLevels (levels)",
                  gradcompQsgdEncodeEFLevels(x, ncclFloat32, residual, COUNT, 4, 32, 1,
                                             gradcompRoundStochastic, l, out, (cudaStream_t)0),
                  want);
  }
  for (i = 0; i < COUNT; ++i) {
    if (residual[i] != 0.0f) {
      printf("FAIL: a refused encode wrote residual[%d] = %g\n", i, (double)residual[i]);
      ++failures;
      return;
    }
  }
}

/* Every codec entry point that takes a datatype: -1, 99 and INT_MIN, and
 * the NCCL types it does not encode (int8, uint64, fp8), are refused naming
 * the value and the three it takes, before any pointer is read (the GPU ones
 * refuse without a GPU too). */
static void codecDatatypes(void) {
  static float x[COUNT], residual[COUNT];
  static unsigned char out[4096];
  size_t k;
  char want[256];
  gradcompEliasParams_t p;
  p.levels = 7;
  p.bucketSize = 32;
  p.code = gradcompEliasGamma;
  p.scale = gradcompEliasScaleMax;
  for (k = 0; k < NUM_BAD_NCCL_TYPES; ++k) {
    const ncclDataType_t t = asType(kBadNcclTypes[k]);
    snprintf(want, sizeof want,
             "datatype=%d is not compressible: ncclFloat32(7), ncclFloat16(6) or "
             "ncclBfloat16(9)",
             kBadNcclTypes[k]);
    expectRefused("gradcompQsgdEncodeTypedHost",
                  gradcompQsgdEncodeTypedHost(x, t, residual, COUNT, 4, 32, 1, out), want);
    expectRefused("gradcompQsgdEncodeEFRoundingHost (datatype)",
                  gradcompQsgdEncodeEFRoundingHost(x, t, residual, COUNT, 4, 32, 1,
                                                   gradcompRoundStochastic, out),
                  want);
    expectRefused(
        "gradcompQsgdEncodeEFLevelsHost (datatype)",
        gradcompQsgdEncodeEFLevelsHost(x, t, residual, COUNT, 4, 32, 1, gradcompRoundStochastic,
                                       gradcompLevelsUniform, out),
        want);
    expectRefused("gradcompQsgdEncode",
                  gradcompQsgdEncode(x, t, COUNT, 4, 32, 1, out, (cudaStream_t)0), want);
    expectRefused("gradcompQsgdEncodeEF",
                  gradcompQsgdEncodeEF(x, t, residual, COUNT, 4, 32, 1, out, (cudaStream_t)0),
                  want);
    expectRefused("gradcompQsgdEncodeEFRounding (datatype)",
                  gradcompQsgdEncodeEFRounding(x, t, residual, COUNT, 4, 32, 1,
                                               gradcompRoundStochastic, out, (cudaStream_t)0),
                  want);
    expectRefused(
        "gradcompQsgdEncodeEFLevels (datatype)",
        gradcompQsgdEncodeEFLevels(x, t, residual, COUNT, 4, 32, 1, gradcompRoundStochastic,
                                   gradcompLevelsUniform, out, (cudaStream_t)0),
        want);
    expectRefused("gradcompEliasEncodeHost (datatype)",
                  gradcompEliasEncodeHost(x, t, residual, COUNT, &p, 1, out, sizeof out, NULL),
                  want);
    expectRefused("gradcompEliasEncode (datatype)",
                  gradcompEliasEncode(x, t, residual, COUNT, &p, 1, out, NULL, 0, (cudaStream_t)0),
                  want);
  }
  for (k = 0; k < COUNT; ++k) {
    if (residual[k] != 0.0f) {
      printf("FAIL: a refused encode wrote residual[%d] = %g\n", (int)k, (double)residual[k]);
      ++failures;
      return;
    }
  }
}

/* The collectives: a datatype outside NCCL's (-1, 99, INT_MIN) or a
 * negative op is refused naming it before the comm is read (NULL here); an
 * op NCCL may have made (99, ncclRedOpCreatePreMulSum) is not gradcomp's to
 * refuse: it gets to the comm check, and on a one-rank CPU comm to the CPU
 * backend, which names the ops it reduces (a NCCL comm passes it to NCCL). */
static void collectives(void) {
  static float buf[COUNT];
  gradcompConfig_t cfg;
  gradcompComm_t cpu = NULL;
  char want[256];
  int k, rs, keyed;
  if (gradcompConfigInit(&cfg) != gradcompSuccess ||
      gradcompCommCreateCpu(1, &cfg, &cpu) != gradcompSuccess) {
    printf("FAIL: a one-rank CPU comm: %s\n", gradcompGetLastError());
    ++failures;
    return;
  }
  for (rs = 0; rs < 2; ++rs) {
    for (keyed = 0; keyed < 2; ++keyed) {
      const char* name = rs ? (keyed ? "gradcompReduceScatterKeyed" : "gradcompReduceScatter")
                            : (keyed ? "gradcompAllReduceKeyed" : "gradcompAllReduce");
#define GC_COLL(type, op, comm)                                                              \
  (rs ? (keyed ? gradcompReduceScatterKeyed(buf, buf, 8, type, op, comm, (cudaStream_t)0, 1) \
               : gradcompReduceScatter(buf, buf, 8, type, op, comm, (cudaStream_t)0))        \
      : (keyed ? gradcompAllReduceKeyed(buf, buf, 8, type, op, comm, (cudaStream_t)0, 1)     \
               : gradcompAllReduce(buf, buf, 8, type, op, comm, (cudaStream_t)0)))
      for (k = 0; k < 3; ++k) {
        snprintf(want, sizeof want, "datatype=%d is not an NCCL data type (0..%d)", kBadNccl[k],
                 ncclNumTypes - 1);
        expectRefused(name, GC_COLL(asType(kBadNccl[k]), ncclSum, cpu), want);
        if (kBadNccl[k] < 0) {
          snprintf(want, sizeof want,
                   "op=%d is not an NCCL reduction (ncclSum..ncclAvg, 0..4, or one from "
                   "ncclRedOpCreatePreMulSum)",
                   kBadNccl[k]);
          expectRefused(name, GC_COLL(ncclFloat32, asOp(kBadNccl[k]), cpu), want);
        } else {
          expectRefused(name, GC_COLL(ncclFloat32, asOp(kBadNccl[k]), NULL),
                        "comm is NULL or destroyed");
          snprintf(want, sizeof want,
                   "CPU backend: datatype=7 / op=%d not supported (it reduces "
                   "ncclInt8..ncclBfloat16, 0..9, with ncclSum..ncclAvg, 0..4)",
                   kBadNccl[k]);
          expectRefused(name, GC_COLL(ncclFloat32, asOp(kBadNccl[k]), cpu), want);
        }
      }
      /* What gradcomp does not compress, in NCCL's range: int8 and uint64
       * with Sum and Avg pass through (the CPU backend reduces them as NCCL
       * does), fp8 is refused by the CPU backend naming it. */
      {
        const int passed[] = {ncclInt8, ncclUint64};
        const ncclRedOp_t ops[] = {ncclSum, ncclAvg};
        int i, j;
        for (i = 0; i < 2; ++i) {
          for (j = 0; j < 2; ++j) {
            const gradcompResult_t res = GC_COLL(asType(passed[i]), ops[j], cpu);
            if (res != gradcompSuccess) {
              printf("FAIL: %s datatype=%d op=%d: %s\n", name, passed[i], (int)ops[j],
                     gradcompGetLastError());
              ++failures;
            }
          }
        }
        expectRefused(name, GC_COLL(asType(10), ncclSum, cpu),
                      "CPU backend: datatype=10 / op=0 not supported (it reduces "
                      "ncclInt8..ncclBfloat16, 0..9, with ncclSum..ncclAvg, 0..4)");
      }
      /* Both bad: the datatype is named first. */
      snprintf(want, sizeof want, "datatype=-1 is not an NCCL data type (0..%d)", ncclNumTypes - 1);
      expectRefused(name, GC_COLL(asType(-1), asOp(INT_MIN), cpu), want);
#undef GC_COLL
    }
  }
  if (gradcompCommDestroy(cpu) != gradcompSuccess) {
    printf("FAIL: gradcompCommDestroy: %s\n", gradcompGetLastError());
    ++failures;
  }
}

static void errorStrings(void) {
  int bad[4], k, r;
  badValues(gradcompNumResults, gradcompResultEnumMax, bad);
  for (k = 0; k < 4; ++k) {
    const char* s = gradcompGetErrorString(asResult(bad[k]));
    if (s == NULL || strcmp(s, "unknown result code") != 0) {
      printf("FAIL: gradcompGetErrorString(%d) is \"%s\", not \"unknown result code\"\n", bad[k],
             s ? s : "(null)");
      ++failures;
    }
  }
  for (r = 0; r < gradcompNumResults; ++r) {
    const char* s = gradcompGetErrorString(asResult(r));
    if (s == NULL || strcmp(s, "unknown result code") == 0) {
      printf("FAIL: gradcompGetErrorString(%d) has no string of its own\n", r);
      ++failures;
    }
  }
}

/* The config's enum fields, each alone out of range in a config that is
 * otherwise the defaults: gradcompConfigValidate names it first. */
static void configFields(void) {
  static const struct {
    const char* name;
    const char* env;
    size_t offset;
    int pastEnumerators;
  } fields[] = {
      {"method", "GRADCOMP_METHOD", offsetof(gradcompConfig_t, method), 5},
      {"algo", "GRADCOMP_ALGO", offsetof(gradcompConfig_t, algo), 6},
      {"select", "GRADCOMP_SELECT", offsetof(gradcompConfig_t, select), 2},
      {"bitsMode", "GRADCOMP_BITS_MODE", offsetof(gradcompConfig_t, bitsMode), 3},
      {"rounding", "GRADCOMP_ROUNDING", offsetof(gradcompConfig_t, rounding), 2},
      {"levels", "GRADCOMP_LEVELS", offsetof(gradcompConfig_t, levels), 2},
      /* NCCL's datatype: the first value past its enumerators is ncclNumTypes. */
      {"valueType", "GRADCOMP_VALUE_TYPE", offsetof(gradcompConfig_t, valueType), ncclNumTypes},
  };
  size_t f;
  int bad[4], k;
  char want[128];
  for (f = 0; f < sizeof fields / sizeof fields[0]; ++f) {
    badValues(fields[f].pastEnumerators, GRADCOMP_ENUM_MAX, bad);
    for (k = 0; k < 4; ++k) {
      gradcompConfig_t c;
      gradcompResult_t res;
      if (gradcompConfigInit(&c) != gradcompSuccess) {
        printf("FAIL: gradcompConfigInit: %s\n", gradcompGetLastError());
        ++failures;
        return;
      }
      memcpy((char*)&c + fields[f].offset, &bad[k], sizeof(int));
      res = gradcompConfigValidate(&c);
      snprintf(want, sizeof want, "%s=%d (%s) is not one of ", fields[f].name, bad[k],
               fields[f].env);
      if (res != gradcompInvalidArgument ||
          strncmp(gradcompGetLastError(), want, strlen(want)) != 0) {
        printf("FAIL: config %s=%d: result %d, \"%s\" (want \"%s...\")\n", fields[f].name, bad[k],
               (int)res, gradcompGetLastError(), want);
        ++failures;
      }
    }
  }
}

/* gradcompEliasParams_t's code and scale, read by the Elias entry points. */
static void eliasParams(void) {
  static float x[COUNT];
  static unsigned char out[4096];
  int bad[4], k, which;
  char want[128];
  for (which = 0; which < 2; ++which) {
    badValues(2, which ? gradcompEliasScaleEnumMax : gradcompEliasCodeEnumMax, bad);
    for (k = 0; k < 4; ++k) {
      gradcompEliasParams_t p;
      p.levels = 7;
      p.bucketSize = 32;
      p.code = gradcompEliasGamma;
      p.scale = gradcompEliasScaleMax;
      memcpy(which ? (void*)&p.scale : (void*)&p.code, &bad[k], sizeof(int));
      snprintf(want, sizeof want,
               which ? "scale=%d is not max(0) or l2(1)" : "code=%d is not gamma(0) or omega(1)",
               bad[k]);
      expectRefused(
          "gradcompEliasEncodeHost",
          gradcompEliasEncodeHost(x, ncclFloat32, NULL, COUNT, &p, 1, out, sizeof out, NULL), want);
      if (gradcompEliasMaxEncodedBytes(COUNT, &p) != 0) {
        printf("FAIL: gradcompEliasMaxEncodedBytes took %s=%d\n", which ? "scale" : "code", bad[k]);
        ++failures;
      }
    }
  }
}

int main(void) {
  qsgdEncodes();
  codecDatatypes();
  collectives();
  errorStrings();
  configFields();
  eliasParams();
  if (failures != 0) {
    printf("FAIL: %d checks of out-of-range enum values failed\n", failures);
    return 1;
  }
  printf("PASS: every enum the API reads refuses -1, past its values, its sentinel and past it\n");
  return 0;
}
