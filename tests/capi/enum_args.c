/* A C caller may pass any int where the API takes one of gradcomp's enums,
 * by value or in a struct it reads. A negative one (-1) lies outside every
 * public enum's range in C++ (the range sentinels take in the non-negative
 * ints only), so the library must read it as an int, never as the enum, and
 * refuse it naming the value and the range (gradcompGetErrorString: its
 * string for unknown codes). Each enum gets -1, the first value past its
 * enumerators, its sentinel and the value past the sentinel (INT_MIN as an
 * int). C, not C++: C++ cannot even make these values without a cast that is
 * itself undefined. tests/check_enum_args.sh runs it on the library, and
 * again (where clang is installed) with the entry points built with clang's
 * -fsanitize=enum, which reports any read of such a value as the enum. */
#include <gradcomp.h>
#include <gradcomp/elias.h>
#include <gradcomp/reference.h>

#include <limits.h>
#include <stdio.h>
#include <string.h>

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
