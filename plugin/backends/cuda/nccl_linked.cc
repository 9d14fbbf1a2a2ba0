// NCCL binding of libgradcomp.so: the symbols it is linked against.
//
// NCCL exports every function twice, a weak ncclX and a strong pncclX alias (its
// profiling interface). The library calls the pncclX names: an interposer of the
// ncclX names (gradcomp's own LD_PRELOAD library, or a profiler's) in the same
// process then never sees gradcomp's internal calls, so the preload cannot compress
// again what the library passes through uncompressed (a hook's full-precision
// layers), nor take the library's NCCL groups for a user's.
#include "backends/cuda/nccl_api.h"

namespace gc {

const NcclApi* ncclApi() {
  static const NcclApi api = {pncclAllReduce,      pncclAllGather,     pncclSend,
                              pncclRecv,           pncclGroupStart,    pncclGroupEnd,
                              pncclCommCount,      pncclCommUserRank,  pncclCommCuDevice,
                              pncclGetErrorString, pncclReduceScatter, pncclCommSplit,
                              pncclCommDestroy,    pncclCommAbort,     pncclCommGetAsyncError};
  return &api;
}

}  // namespace gc
