// The CPU transports' reduction of NCCL's types and ops: elements of every
// rank's block combined in rank order, so every transport (in-process world,
// sockets) gives the same bits.
#pragma once

#include <nccl.h>
#include <stddef.h>

#include <vector>

#include "gradcomp.h"

namespace gc {

// Bytes per element of a type the CPU transports reduce; 0 when not served.
size_t hostElementSize(ncclDataType_t type);
// Refuses a type or op hostReduce does not serve, naming what it serves.
gradcompResult_t hostCheckReduction(ncclDataType_t type, ncclRedOp_t op);
// dst[i] = src[0][i] op src[1][i] op ... in rank order, i < count (integer Sum/Prod
// wrap, fp16/bf16 round after every step, and Avg is NCCL's: an integer sum
// divided by the count once at the end, a floating type's inputs each
// multiplied by 1/count in the type before the sum, NCCL's PreMulSum). type
// must be served and op one of Sum..Avg; dst may alias no src.
void hostReduce(ncclDataType_t type, ncclRedOp_t op, const std::vector<const void*>& src, void* dst,
                size_t count);

}  // namespace gc
