/* A shared library that is not NCCL (neither pncclAllReduce nor
 * ncclAllReduce), which no test program links: GRADCOMP_NCCL_LIBRARY naming it
 * is refused, and the interposer must not keep it loaded. */
int gcTestNotNccl(void) {
  return 1;
}
