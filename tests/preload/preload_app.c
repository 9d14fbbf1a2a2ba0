/* Runs the calls of calls.c with NCCL linked by the program:
 * preload_app [basic|multidevice|nonblocking|revoked|simulate|simulate_missing]. */
int gcTestRunCalls(const char* mode);

int main(int argc, char** argv) {
  return gcTestRunCalls(argc > 1 ? argv[1] : "basic");
}
