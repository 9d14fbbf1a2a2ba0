// NCCL binding of libgradcomp.so: the symbols it is linked against.
#include "backends/cuda/nccl_api.h"

namespace gc {

const NcclApi* ncclApi() {
  static const NcclApi api = {
      ncclAllReduce,     ncclAllGather, ncclSend,         ncclRecv,         ncclGroupStart,
      ncclGroupEnd,      ncclCommCount, ncclCommUserRank, ncclCommCuDevice, ncclGetErrorString,
      ncclReduceScatter, ncclCommSplit, ncclCommDestroy,  ncclCommAbort};
  return &api;
}

}  // namespace gc
