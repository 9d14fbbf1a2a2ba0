/* Loads a framework library with RTLD_LOCAL, as Python loads PyTorch, so the
 * NCCL it depends on is invisible to RTLD_NEXT, then runs its calls:
 * dlopen_app FRAMEWORK.so [mode of calls.c]. */
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s FRAMEWORK.so [mode]\n", argv[0]);
    return 2;
  }
  void* h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) {
    fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
    return 2;
  }
  int (*run)(const char*) = (int (*)(const char*))dlsym(h, "gcTestRunCalls");
  if (run == NULL) {
    fprintf(stderr, "dlsym gcTestRunCalls: %s\n", dlerror());
    return 2;
  }
  return run(argc > 2 ? argv[2] : "basic");
}
