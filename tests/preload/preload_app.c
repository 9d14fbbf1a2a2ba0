/* Runs the calls of calls.c with NCCL linked by the program:
 * preload_app [basic|multidevice|nonblocking|revoked|simulate|simulate_missing].
 * With GC_TEST_UNLOADED=LIB set, fails (exit 1, saying so on stderr) if LIB is
 * loaded once the calls are done. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

int gcTestRunCalls(const char* mode);

int main(int argc, char** argv) {
  const int rc = gcTestRunCalls(argc > 1 ? argv[1] : "basic");
  const char* lib = getenv("GC_TEST_UNLOADED");
  if (lib != NULL && *lib != '\0') {
    void* h = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD);
    if (h != NULL) {
      fprintf(stderr, "GC_TEST_UNLOADED: %s is still loaded after the calls\n", lib);
      dlclose(h);
      return 1;
    }
  }
  return rc;
}
