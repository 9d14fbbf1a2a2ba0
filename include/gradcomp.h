/*
 * gradcomp: a compressed, drop-in replacement for ncclAllReduce on gradients.
 *
 * C API (C99-clean). Every function returns a gradcompResult_t; on failure
 * gradcompGetLastError() gives a sentence with the numbers that explain it.
 * Nothing here aborts or throws.
 */
#ifndef GRADCOMP_H_
#define GRADCOMP_H_

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GRADCOMP_VERSION_MAJOR 0
#define GRADCOMP_VERSION_MINOR 7
#define GRADCOMP_VERSION_PATCH 0
#define GRADCOMP_VERSION_CODE \
  (GRADCOMP_VERSION_MAJOR * 10000 + GRADCOMP_VERSION_MINOR * 100 + GRADCOMP_VERSION_PATCH)

/* Every enum below ends with a range sentinel (gradcomp...EnumMax), not a
 * value to pass: it makes each enum's range every non-negative value of its
 * size, as nccl.h's ncclMaxRedOp does, so that a C caller's out-of-range value
 * (99, say), which the library refuses naming it, is one a C++ library may
 * hold and test ([dcl.enum]/8: otherwise an enum of 0..4 holds 0..7 only, and
 * reading 99 from it is undefined, which clang's -fsanitize=enum reports).
 * The shift keeps the sentinel within an enum's size where enums are packed
 * (-fshort-enums), so no enum changes size and no existing value changes. */
typedef enum { gradcompEnumDummy = 0 } gradcompEnumDummy_t;
#define GRADCOMP_ENUM_MAX (0x7fffffff >> (32 - 8 * sizeof(gradcompEnumDummy_t)))

typedef enum {
  gradcompSuccess = 0,
  gradcompInvalidArgument = 1, /* a value out of range: the last error names it */
  gradcompInvalidUsage = 2,    /* a call at the wrong time or on the wrong object */
  gradcompCudaError = 3,       /* CUDA failed; the last error carries cudaGetErrorString */
  gradcompNcclError = 4,       /* NCCL failed; the last error carries ncclGetErrorString */
  gradcompSystemError = 5,     /* out of host memory, threads, dlopen */
  gradcompInternalError = 6,   /* a bug in gradcomp */
  gradcompNotSupported = 7,    /* reserved: no call returns it yet (without a GPU the CUDA
                                  entry points return gradcompCudaError, CUDA's sentence) */
  gradcompNumResults = 8,
  gradcompResultEnumMax = GRADCOMP_ENUM_MAX
} gradcompResult_t;

const char* gradcompGetErrorString(gradcompResult_t result);
/* The last error sentence set on the calling thread ("" when none). A
 * successful call does not clear it: read it only after a call failed. */
const char* gradcompGetLastError(void);
int gradcompGetVersion(void);

typedef enum {
  gradcompMethodNone = 0,  /* pass every call to NCCL */
  gradcompMethodQsgd = 1,  /* bucketed max-norm stochastic quantization */
  gradcompMethodTopk = 2,  /* top-k with error feedback, sparse allgather */
  gradcompMethodRandk = 3, /* rand-k with error feedback, shared indices */
  gradcompMethodDgc = 4,   /* top-k + DGC momentum correction, clipping, masking, warm-up */
  gradcompMethodEnumMax = GRADCOMP_ENUM_MAX
} gradcompMethod_t;

typedef enum {
  gradcompAlgoAuto = 0,
  gradcompAlgoTwoShot = 1,   /* scatter-reduce + allgather, two quantizations */
  gradcompAlgoRing = 2,      /* ring reduce-scatter re-encoding per hop + allgather */
  gradcompAlgoAllgather = 3, /* encode all, allgather, decode-sum */
  gradcompAlgoSparseAllgather = 4,
  gradcompAlgoHier = 5, /* reduce-scatter in the node, compressed across nodes, allgather */
  gradcompAlgoEnumMax = GRADCOMP_ENUM_MAX
} gradcompAlgo_t;

typedef enum {
  gradcompSelectThreshold = 0, /* DGC: threshold from a sample of |v| */
  gradcompSelectExact = 1,     /* exact top-k, ties broken by lower index */
  gradcompSelectEnumMax = GRADCOMP_ENUM_MAX
} gradcompSelect_t;

typedef enum {
  gradcompBitsFixed = 0,   /* always `bits` */
  gradcompBitsDynamic = 1, /* DQ-SGD: fewest bits keeping the variance under a target */
  gradcompBitsBudget = 2,  /* DQ-SGD: an average bits budget over a window */
  gradcompBitsModeEnumMax = GRADCOMP_ENUM_MAX
} gradcompBitsMode_t;

typedef enum {
  gradcompRoundStochastic = 0, /* QSGD level rounded up with probability frac: unbiased */
  gradcompRoundNearest = 1,    /* nearest level (ties down), no random draw; needs error feedback */
  gradcompRoundingEnumMax = GRADCOMP_ENUM_MAX
} gradcompRounding_t;

typedef enum {
  gradcompLevelsUniform = 0, /* QSGD level k of s stands for k/s of the bucket's max |x| */
  gradcompLevelsSquare = 1,  /* level k stands for (k/s)^2: finer steps near zero */
  gradcompLevelsEnumMax = GRADCOMP_ENUM_MAX
} gradcompLevels_t;

/* Configuration. Always start from gradcompConfigInit (defaults) or
 * gradcompConfigFromEnv (defaults + GRADCOMP_* variables). Both are macros
 * that pass the library sizeof(*config) as the caller's header has it: the
 * library writes only that many bytes and records the size in structSize, and
 * every call that reads a config reads only the caller's fields. Fields are
 * only ever appended, so a program built against an older header (0.3 or
 * later) runs on a newer library, the fields its header lacks at their
 * defaults; a size the library does not know (a newer header's, or not a
 * size any header had) is gradcompInvalidArgument naming it, and nothing is
 * written. A field appended must change sizeof(gradcompConfig_t): the size is
 * all the library knows of the caller's layout. */
typedef struct {
  size_t structSize;
  gradcompMethod_t method; /* GRADCOMP_METHOD, default qsgd */
  gradcompAlgo_t algo;     /* GRADCOMP_ALGO, default auto */
  int bits;                /* GRADCOMP_BITS 2..8 including sign, default 4 */
  int bucketSize;          /* GRADCOMP_BUCKET 32..8192, multiple of 32, default 512 */
  uint64_t seed;           /* GRADCOMP_SEED, default 24301 */
  size_t minElements; /* GRADCOMP_MIN_ELEMENTS 0..1e18, smaller calls pass through, default 16384 */
  int errorFeedback;  /* GRADCOMP_EF 0/1, default 1 */
  int ownerResidual;  /* GRADCOMP_OWNER_RESIDUAL 0/1: residual for the 2nd quantization, default 1
                         (two-shot, ring, hier; the allgather and Elias quantize once: none) */
  /* sparse methods */
  float density;    /* GRADCOMP_DENSITY [1e-6, 1], default 0.01 */
  float oversample; /* GRADCOMP_OVERSAMPLE c in kmax = ceil(c*density*n), [1, 16], default 2 */
  float sampleRate; /* GRADCOMP_SAMPLE_RATE share of |v| sampled, [1e-4, 1], default 1e-4 */
  gradcompSelect_t select;  /* GRADCOMP_SELECT threshold|exact, default threshold */
  ncclDataType_t valueType; /* GRADCOMP_VALUE_TYPE float|half|bfloat16 on the wire, default float */
  /* DGC extras */
  float momentum;         /* GRADCOMP_MOMENTUM m, [0, 0.999999], default 0.9 */
  int momentumCorrection; /* GRADCOMP_MOMENTUM_CORRECTION 0/1 (dgc default 1) */
  float clipNorm;         /* GRADCOMP_CLIP_NORM, [0, 1e30], 0 = off (default) */
  int momentumMasking;    /* GRADCOMP_MOMENTUM_MASKING 0/1, default 1 */
  int warmupSteps;        /* GRADCOMP_WARMUP_STEPS 0..1e8, 0 = off (default) */
  /* DQ-SGD */
  gradcompBitsMode_t bitsMode; /* GRADCOMP_BITS_MODE fixed|dynamic|budget, default fixed */
  int bitsMin;                 /* GRADCOMP_BITS_MIN 2..8, default 2 (<= bitsMax) */
  int bitsMax;                 /* GRADCOMP_BITS_MAX 2..8, default 8 */
  float varianceTarget; /* GRADCOMP_VARIANCE_TARGET: bound / ||g||^2 allowed, [1e-9, 1e9], 0.05 */
  float bitsBudget;     /* GRADCOMP_BITS_BUDGET average bits/element, [2, 8], default 4 */
  int budgetWindow;     /* GRADCOMP_BUDGET_WINDOW steps, 1..1e6, default 100 */
  int elias;            /* GRADCOMP_ELIAS 0/1: variable-size Elias-coded QSGD, default 0 */
  /* GRADCOMP_LOCAL_SIZE ranks per node: 0 = auto (NCCL: ranks with the same
   * host identity share a node; CPU world: flat), 1 = flat, L = consecutive
   * blocks of L ranks form a node (L divides the comm size; at most 65536). */
  int localSize;
  int autoTune; /* GRADCOMP_AUTO 0/1, default 1: time NCCL and compression (each collective at
                   its first eligible call) and pass through the calls compression would not
                   speed up (CUDA backend, and socket comms on the host clock; the
                   in-process CPU world does not time); a passed call of a buffer that
                   earlier calls compressed sends its residual along, once */
  /* GRADCOMP_PIPELINE_BYTES, 0 = off (default): QSGD allreduce (two-shot,
   * ring, the hierarchy) and reduce-scatter calls larger than this many bytes
   * (of the gradient as fp32) are cut into pieces of about this size whose
   * encode and decode overlap the transfer of the next and previous piece;
   * results are bit for bit the unpipelined call's. At most 1024 pieces a
   * call: where this size would make more, the pieces grow. */
  size_t pipelineBytes;
  float cpuTimeoutSec; /* GRADCOMP_CPU_TIMEOUT: CPU backend, seconds a rank waits for the others,
                          [0.001, 86400], default 120 */
  gradcompRounding_t rounding; /* GRADCOMP_ROUNDING stochastic|nearest (QSGD levels), default
                                  stochastic */
  /* GRADCOMP_CHECK_CALLS 0/1, default 0: before every allreduce and
   * reduce-scatter (compressed or passed through), the ranks agree that they
   * are in the same call (collective, step, count, datatype, op), and a
   * disagreement fails every rank with gradcompInvalidUsage naming both
   * calls instead of hanging or summing unrelated bytes. A compressed call
   * also votes, before any rank exchanges, that every rank could prepare it
   * (the buffer's state, the workspace): a rank that could not (out of
   * memory, say) returns its own error and the others gradcompInvalidUsage
   * naming it, instead of waiting for it. A rank that refuses a call's own
   * arguments (a datatype or op that is not NCCL's, a count out of range)
   * while its peers' pass joins that agreement with a record that says so:
   * it returns its own gradcompInvalidArgument, the peers gradcompInvalidUsage
   * naming it. On NCCL it costs a small allgather and a host sync per call,
   * and one more allreduce of a float per compressed call (a debugging aid,
   * as Horovod's shape check); calls being
   * captured into a CUDA graph are not checked. The CPU backend checks every
   * call's agreement whatever this says; the vote is this setting's. */
  int checkCalls;
  int reserved0; /* padding made explicit (a 0.4 caller's struct ends before levels); unread */
  /* GRADCOMP_LEVELS uniform|square, default uniform: where QSGD's s levels
   * lie in [0, max|x|] (docs/algorithms.md, "QSGD levels"). Square levels
   * put k of s at (k/s)^2, so the many small entries of a bucket are coded
   * with finer steps for the same bits; stochastic rounding stays unbiased.
   * Each square bucket marks its scale (sign bit set), so any decoder reads
   * the stream without being told. Fixed bits only (not DQ-SGD's bit modes,
   * whose variance model is the uniform levels'), and not with Elias. */
  gradcompLevels_t levels;
  int reserved1; /* padding made explicit (a 0.5 caller's struct ends before privateComm); unread */
  /* GRADCOMP_PRIVATE_COMM 0/1, default 0: gradcomp's exchanges run on a
   * private ncclCommSplit of the communicator (one more NCCL communicator,
   * made by gradcompCommCreate, freed by its destroy), so that another thread
   * may poll the program's communicator while a gradcomp call runs: on a
   * non-blocking communicator (ncclConfig_t.blocking = 0) NCCL's
   * ncclCommGetAsyncError, which gradcomp's waits and PyTorch's watchdog
   * call, may not run on two threads at once. If any rank asks, every rank
   * splits. gradcompCommCreate itself still calls the program's communicator
   * (its vote and the split). The LD_PRELOAD library asks by itself for the
   * communicators it knows are non-blocking. */
  int privateComm;
} gradcompConfig_t;

/* Defaults in the first structSize bytes of *config (structSize included). */
gradcompResult_t gradcompConfigInitSized(gradcompConfig_t* config, size_t structSize);
/* Defaults, then every GRADCOMP_* variable that is set (logged at INFO).
 * A bad value is gradcompInvalidArgument naming the variable and range, as
 * is a variable set for a field the caller's struct does not have; *config
 * changes only on success. */
gradcompResult_t gradcompConfigFromEnvSized(gradcompConfig_t* config, size_t structSize);
/* For binaries built against headers before 0.3, where these were functions:
 * they write the struct of the last such header (144 bytes on LP64). */
gradcompResult_t gradcompConfigInit(gradcompConfig_t* config);
gradcompResult_t gradcompConfigFromEnv(gradcompConfig_t* config);
#define gradcompConfigInit(config) gradcompConfigInitSized((config), sizeof(*(config)))
#define gradcompConfigFromEnv(config) gradcompConfigFromEnvSized((config), sizeof(*(config)))
/* Checks every field; the last error names the first bad one. As every call
 * taking a config, it reads structSize first and refuses a size it does not
 * know before reading any other field. */
gradcompResult_t gradcompConfigValidate(const gradcompConfig_t* config);
/* The index-th GRADCOMP_* variable the library reads (docs/env.md's table, in
 * its order, from 0), or NULL past the last: a tool can tell the settings set
 * in the environment from other GRADCOMP_* variables (a build's, a test's). */
const char* gradcompEnvName(int index);

/* ---------------------------------------------------------------- comms */
/* A comm takes one collective, retune or state call at a time, as an NCCL
 * communicator: such calls on one comm from several threads must be ordered
 * by the caller (the same order on every rank). One that comes while a call
 * of another thread is in progress is refused (gradcompInvalidUsage, naming
 * the comm and its rank), the comm and the call in progress untouched.
 * gradcompCommStop and gradcompCommAbort may come from another thread while
 * one is in progress.
 * Every call that takes a comm first looks it up among the live comms: one
 * destroyed, aborted (or being destroyed or aborted) or never made is refused
 * with gradcompInvalidArgument naming the pointer ("comm 0x... is not a live
 * gradcomp communicator"), before anything of it is read; destroy, stop and
 * abort too (a second destroy is refused, not a double free). An address
 * that a later comm reuses is that comm's: a handle kept past its comm's
 * destroy may name the new comm, which no check can tell apart. */
typedef struct gradcompComm* gradcompComm_t;

/* Wraps (never owns) an NCCL communicator. Buffers are device pointers and
 * work is enqueued on the caller's stream. Collective over the NCCL comm:
 * every rank calls it with the same config (it exchanges host identities and,
 * when ranks share nodes, splits node and local-rank sub-communicators).
 * The NCCL comm may be non-blocking (ncclConfig_t.blocking = 0, or
 * NCCL_COMM_BLOCKING=0): each NCCL call gradcomp makes on it, or on the
 * sub-communicators it splits from it, then waits until NCCL's enqueue has
 * ended (ncclCommGetAsyncError no longer ncclInProgress; never the GPU work),
 * so a gradcomp call returns with the comm ready for the program's next call,
 * as on a blocking one; one NCCL is still making (its ncclCommInitRankConfig
 * answered ncclInProgress) is waited for first. NCCL's ncclCommGetAsyncError
 * may not run on two threads at once: do not poll the NCCL comm from another
 * thread while a gradcomp call on it is in progress, or set privateComm
 * (GRADCOMP_PRIVATE_COMM=1) so that gradcomp's exchanges run on a private
 * split of it (the LD_PRELOAD library, which cannot know the program's
 * threads, does so for a comm it knows to be non-blocking). Made with the NCCL comm's
 * device current; the comm's later calls (the collectives, state, retune,
 * destroy, abort) work from any current device, as NCCL's do: each makes the
 * comm's device current for its duration. */
gradcompResult_t gradcompCommCreate(ncclComm_t nccl, const gradcompConfig_t* config,
                                    gradcompComm_t* comm);
/* CPU reference backend: nranks communicators of one in-process world, each
 * to be driven from its own thread with host pointers (stream ignored). Runs
 * the same algorithm code as the CUDA backend, with the host codecs. A rank
 * waits at most cpuTimeoutSec (GRADCOMP_CPU_TIMEOUT) for the others at a
 * collective. Once a comm of the world is destroyed or aborted, the others'
 * collectives, waiting or later, fail at once (naming the destroyed rank),
 * as after a transport error: destroy them. */
gradcompResult_t gradcompCommCreateCpu(int nranks, const gradcompConfig_t* config,
                                       gradcompComm_t* comms);
/* CPU reference backend across processes (or threads): this is rank `rank` of
 * `nranks`, connected to the others by TCP. Rank 0 listens at `root`
 * ("host:port" with an IPv4 address or a name, or "[IPv6]:port"); the others
 * connect to it and then to each other over the root's address family (each
 * rank listens on an ephemeral port of its own). Host
 * pointers, stream ignored; the same algorithm code, and results bit for bit,
 * as gradcompCommCreateCpu's in-process world (with autoTune=0: with 1, the
 * default, a socket comm times its links and passes through the calls
 * compression would not speed up; the in-process world never does). Collective: every rank calls it
 * with the same nranks, root and config; a rank waits at most cpuTimeoutSec
 * (GRADCOMP_CPU_TIMEOUT) for the others, here and at every collective.
 * localSize L > 1 makes consecutive blocks of L ranks nodes; 0 (auto) groups
 * ranks by host identity (NCCL_HOSTID, else the host name and boot id) as on NCCL.
 * After a transport error (a peer gone, ranks making different calls) every
 * later call on the comm fails: destroy it, as an NCCL comm after an error. */
gradcompResult_t gradcompCommCreateSocket(int nranks, int rank, const char* root,
                                          const gradcompConfig_t* config, gradcompComm_t* comm);
/* Waits for the comm's last call to finish, then frees it. The wait is on a
 * stream of the comm's own (as in StateSize, Save, Load and Reset), so the
 * last call's stream may already be destroyed, as NCCL allows. A comm with a
 * call in progress on another thread is refused (gradcompInvalidUsage, the
 * comm untouched): destroy after the calls return, or abort. NULL is a no-op;
 * a comm that is not live (destroyed already, say) is refused, as above. */
gradcompResult_t gradcompCommDestroy(gradcompComm_t comm);
/* As ncclCommAbort: call it after aborting the NCCL communicator the comm was
 * made from (or, on the CPU backend, when a peer is gone); for a non-blocking
 * one, whose enqueue a call on another thread may be waiting for, see
 * gradcompCommStop below. Aborts the comm's
 * own NCCL sub-communicators (ncclCommAbort) and closes its CPU transport, so
 * that nothing of it waits on a peer: a call in progress on another thread
 * returns an error, and abort waits for it to return. Then frees the comm
 * without waiting for its work: CUDA memory is freed once the comm's streams
 * have drained (aborted NCCL kernels exit; gradcomp's own kernels finish by
 * themselves) and left allocated (warning under GRADCOMP_DEBUG=WARN) when
 * they have not within a few seconds; an aborted comm's small buffers whose
 * free would wait for the whole device are left too. Never blocks on a peer; NULL is a no-op, as
 * for destroy. A call that starts on the comm once abort has begun (a second
 * abort among them) is refused, as on a destroyed comm; abort waits for the
 * calls already in progress. */
gradcompResult_t gradcompCommAbort(gradcompComm_t comm);
/* The first step of gradcompCommAbort alone: every later call fails, a call
 * in progress on another thread is woken, and the comm's own NCCL
 * sub-communicators (the hierarchy's) are aborted; nothing is freed, so
 * gradcompCommAbort must follow. For a hierarchical comm, call it between the
 * ncclGroupStart and ncclGroupEnd in which the program aborts the NCCL
 * communicator the comm was made from: NCCL (2.22 and later) then aborts them
 * together, where either order of separate aborts can wait forever (each
 * waits for kernels the other's communicator holds on the stream, stuck on the
 * dead peer). Then gradcompCommAbort, after the group:
 *   ncclGroupStart(); ncclCommAbort(nccl); gradcompCommStop(gc); ncclGroupEnd();
 *   gradcompCommAbort(gc);
 * A non-blocking NCCL comm: a call on another thread may be polling it for
 * its enqueue (ncclCommGetAsyncError), which must not run beside NCCL's
 * abort of it (NCCL joins the same work there, at once, even in a group,
 * then frees the comm). Stop first, in the same group:
 *   ncclGroupStart(); gradcompCommStop(gc); ncclCommAbort(nccl); ncclGroupEnd();
 *   gradcompCommAbort(gc);
 * Once stop has returned no poll of gradcomp's touches the NCCL comm, and
 * the sub-communicators' aborts still wait for the group's end.
 * Never blocks on a peer; a second stop is a no-op; NULL is a no-op. A stop
 * or abort that comes while a stop is in progress on another thread waits
 * for that stop to end (an abort then frees nothing it still uses). A stop
 * that begins once an abort of the comm has begun is refused (the abort frees
 * the comm), as on a destroyed comm. */
gradcompResult_t gradcompCommStop(gradcompComm_t comm);
gradcompResult_t gradcompCommRank(gradcompComm_t comm, int* rank);
gradcompResult_t gradcompCommSize(gradcompComm_t comm, int* size);
/* The node layout the comm runs on: *nodes nodes of *localSize ranks, as
 * localSize (GRADCOMP_LOCAL_SIZE) set it or, for auto (0), as the host
 * identities grouped the ranks (NCCL and socket comms; the in-process CPU
 * world's auto is flat: nranks nodes of 1). The exchange is hierarchical when
 * both are >= 2. Hosts with different numbers of ranks run flat: *localSize
 * is then 1 and *nodes the number of hosts (bytesInterNode still counts
 * those hosts' boundaries). */
gradcompResult_t gradcompCommLayout(gradcompComm_t comm, int* nodes, int* localSize);

/* Same contract as ncclAllReduce; in place allowed. fp32/fp16/bf16 with
 * Sum or Avg and count >= minElements on more than one rank are compressed;
 * everything else goes to ncclAllReduce unchanged, except on a DGC comm with
 * momentum correction: its fp32/fp16/bf16 Sum/Avg calls that are not
 * compressed (minElements, autoTune, one rank) still carry its velocity
 * (v += (u = m*u + g), all of v to ncclAllReduce, v cleared), since the
 * optimizer adds no momentum then. Residual state is keyed by
 * (recvbuff, count, datatype). */
gradcompResult_t gradcompAllReduce(const void* sendbuff, void* recvbuff, size_t count,
                                   ncclDataType_t datatype, ncclRedOp_t op, gradcompComm_t comm,
                                   cudaStream_t stream);
/* As above, with an explicit identity for the residual (for buffers that move). */
gradcompResult_t gradcompAllReduceKeyed(const void* sendbuff, void* recvbuff, size_t count,
                                        ncclDataType_t datatype, ncclRedOp_t op,
                                        gradcompComm_t comm, cudaStream_t stream, uint64_t key);

/* Same contract as ncclReduceScatter: sendbuff holds nranks * recvcount
 * elements, rank r receives block r of the reduction in recvbuff; in place
 * when recvbuff == sendbuff + r * recvcount. Eligible as the allreduce, with
 * the input count nranks * recvcount compared against minElements; every
 * other call goes to ncclReduceScatter unchanged. One quantization: each
 * rank encodes block j for rank j (error feedback fused), the owner sums the
 * decodes and its own block in full precision in rank order. Residual state
 * (nranks * recvcount floats) is keyed by (recvbuff, recvcount, datatype) and
 * never shared with the allreduce's. */
gradcompResult_t gradcompReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount,
                                       ncclDataType_t datatype, ncclRedOp_t op, gradcompComm_t comm,
                                       cudaStream_t stream);
gradcompResult_t gradcompReduceScatterKeyed(const void* sendbuff, void* recvbuff, size_t recvcount,
                                            ncclDataType_t datatype, ncclRedOp_t op,
                                            gradcompComm_t comm, cudaStream_t stream, uint64_t key);

/* Residual / momentum state. A comm keeps one state per distinct buffer
 * (unkeyed: recvbuff, count, datatype; keyed: key, count, datatype) from the
 * buffer's first compressed call on, until a forget, reset, load or the
 * comm's end. Forget frees one buffer's: every state of the unkeyed calls
 * that received into recvbuff, or of the keyed calls with key (allreduce and
 * reduce-scatter, every count and datatype); that buffer's next call starts
 * afresh, from a zero residual, and every other buffer keeps its own. Reset
 * frees them all (every buffer's next call then starts afresh), as the comm's
 * destroy or abort does, but keeps the grad scale (gradcompCommSetGradScale):
 * that is the factor of the gradients the caller passes, not of the state,
 * and a loss scaler keeps its scale over a reset (a skipped step, a restart
 * from fresh residuals), so the calls after it are those of a new comm given
 * that scale, DGC clipping at clipNorm * scale; a caller whose gradients are
 * no longer scaled sets 1. A load replaces every state with the blob's;
 * without these, buffers that move and keys never used again grow the comm
 * (docs/reliability.md, "Buffers that move"). Save writes every buffer's
 * state to a caller buffer (host memory) so a training checkpoint can hold
 * it; StateSize gives the bytes it needs (a NULL buffer, or fewer bytes, is
 * gradcompInvalidArgument naming that size). Size, save and load wait for the
 * comm's last eager call; not for a replayed CUDA graph: synchronize (or order) the stream a
 * graph was launched on before a save, load, reset, retune or destroy.
 * A CUDA graph captured before a forget, reset or load still uses the states
 * they replaced: capture it again. (Their memory, and a workspace an eager
 * call outgrew after a capture, stays allocated until the comm is freed, so
 * an old graph's replays corrupt nothing.) Forget, reset and load are
 * collective: every rank calls them, between the same two collectives; a
 * forget with the same key (or its own address of the same buffer; several
 * forgets in any order). The comm's next call then checks that the ranks
 * agree on it (one small allgather and a host sync on NCCL; ranks that forgot
 * different keys, or different numbers of buffers, fail it with
 * gradcompInvalidUsage), which a rank that did not forget, reset or load
 * skips: on NCCL without GRADCOMP_CHECK_CALLS its peers would wait for it
 * (the CPU backends check every call and fail instead). Forgetting a buffer
 * or key that has no state frees nothing and succeeds; a NULL recvbuff is
 * gradcompInvalidArgument. */
gradcompResult_t gradcompCommForgetBuffer(gradcompComm_t comm, const void* recvbuff);
gradcompResult_t gradcompCommForgetKey(gradcompComm_t comm, uint64_t key);
gradcompResult_t gradcompCommResetState(gradcompComm_t comm);
gradcompResult_t gradcompCommStateSize(gradcompComm_t comm, size_t* bytes);
gradcompResult_t gradcompCommSaveState(gradcompComm_t comm, void* buffer, size_t bytes);
gradcompResult_t gradcompCommLoadState(gradcompComm_t comm, const void* buffer, size_t bytes);

/* The factor the gradients of the following calls carry: a loss scaler's
 * scale (AMP's GradScaler with fp16), 1 when the comm is made. The state
 * then stays in the units of the gradients it is added to: a new scale
 * multiplies every buffer's residual (DGC: velocity), owner residual and DGC
 * momentum by new / old on `stream`, and DQ-SGD's statistics with them, and
 * DGC's clipping (clipNorm, which applies to unscaled gradients) clips at
 * clipNorm * scale * N^-1/2. Where new / old is a power of two (GradScaler's
 * growth 2 and backoff 0.5), every later call gives bit for bit `scale` times
 * what the unscaled gradients would give (but for results that fall outside
 * the buffer type's normal range in either run, fp16's below 2^-14 or above
 * 65504, rounded there as that type rounds; DQ-SGD's budget mode: its width
 * history moves by log2 of the ratio, exactly, which may still be a last bit
 * apart from a history made at the new scale, whose entries gradcomp's own
 * log2 rounds at the magnitude the scale moved them to; docs/reliability.md,
 * "Loss scaling"); without this call, a scale change
 * would weigh what the state holds by old / new (a DGC velocity of a
 * thousand steps doubled at a backoff, halved at a growth). A rank's own
 * setting: ranks whose gradients are scaled alike set it alike. The same
 * scale again does nothing. `scale` from 2^-60 to 2^60 (finite, positive),
 * else gradcompInvalidArgument; gradcompInvalidUsage while `stream` is being
 * captured, and on a DGC comm with clipNorm > 0 whose calls were captured
 * into a CUDA graph (its replays keep the old scale's clipping bound). A
 * saved state records the scale it is in, and a load restores it; a reset
 * (gradcompCommResetState) keeps it. */
gradcompResult_t gradcompCommSetGradScale(gradcompComm_t comm, float scale, cudaStream_t stream);
gradcompResult_t gradcompCommGetGradScale(gradcompComm_t comm, float* scale);

/* gradcompGetStats is a macro passing sizeof(*stats): the library fills only
 * the caller's bytes, so a program built against an older header (0.3 or
 * later) gets the fields its header has. Fields are only appended; a size the
 * library does not know is gradcompInvalidArgument and nothing is written.
 * Binaries built against headers before 0.3 call the function of that name,
 * which writes the struct of the last such header (160 bytes on LP64); a
 * program built against 0.1 (5 callsPerAlgo entries) must be rebuilt.
 * The counters are the comm's own, not atomic: read them on the thread that
 * makes its calls, or between its calls, never beside one in progress. */
typedef struct {
  uint64_t callsCompressed;
  uint64_t callsPassedThrough;
  uint64_t bytesIn;         /* dense bytes of compressed calls (count * sizeof(type)) */
  uint64_t bytesOnWire;     /* bytes this rank sent for compressed calls */
  uint64_t callsPerAlgo[6]; /* indexed by gradcompAlgo_t (auto unused) */
  uint64_t denseFallbacks;  /* sparse calls that went dense because N*kmax was too big */
  uint64_t selectedLast;    /* sparse: entries selected in the last call (this rank) */
  uint64_t targetLast;      /* sparse: density*n target of the last call */
  int bitsLast;             /* QSGD: bits used by the last call (DQ-SGD varies it) */
  uint64_t steps;           /* compressed calls on this comm (the step counter) */
  uint64_t bytesInterNode;  /* of bytesOnWire, the bytes sent to ranks on other nodes */
  /* compressed reduce-scatter calls (counted in callsCompressed too) */
  uint64_t callsReduceScatter;
  uint64_t callsAutoPassed; /* eligible calls passed through because auto predicted NCCL faster
                               (also counted in callsPassedThrough) */
  /* QSGD allreduce or reduce-scatter: pieces the last call was cut into
     (GRADCOMP_PIPELINE_BYTES; flat or as the hierarchy's middle stage); 1 = not pipelined */
  uint64_t piecesLast;
  /* sparse: received slot lists dropped whole as malformed (not strictly increasing indices below
     the count, then empty slots), since the comm was made; every rank that receives such a list
     drops it and the call succeeds without it. On the CUDA backend it may lag a call. */
  uint64_t peerSlotsRejected;
  /* QSGD allreduce and reduce-scatter: compressed calls by the bit width they used, at index
     bits (2..8; entries 0 and 1 stay 0). With GRADCOMP_BITS_MODE=fixed every call is at `bits`;
     with DQ-SGD's dynamic and budget modes, the widths its policy chose (bitsLast is the last). */
  uint64_t callsPerBits[9];
} gradcompStats_t;

gradcompResult_t gradcompGetStatsSized(gradcompComm_t comm, gradcompStats_t* stats,
                                       size_t structSize);
gradcompResult_t gradcompGetStats(gradcompComm_t comm, gradcompStats_t* stats);
#define gradcompGetStats(comm, stats) gradcompGetStatsSized((comm), (stats), sizeof(*(stats)))

/* Re-times NCCL and compression on this comm now (autoTune=1), as at set-up:
 * the allreduce, and the reduce-scatter if the comm has timed it (else it
 * times at its next eligible call). Collective: every rank calls it in the
 * same order as its collectives; not while the stream is being captured.
 * Caller data and residuals are untouched; a buffer whose calls it moves from
 * compressed to passed sends its residual (and an allreduce's owner
 * residual) with its next (passed) call. */
gradcompResult_t gradcompCommRetune(gradcompComm_t comm, cudaStream_t stream);

/* ------------------------------------------------- GPU codec entry points */
/* These mirror the host reference codecs in gradcomp/reference.h with device
 * pointers and a stream; for the same seed they produce the same bytes.
 * x may be ncclFloat32, ncclFloat16 or ncclBfloat16. No host sync, no
 * allocation; capturable in a CUDA graph. Any alignment of whole elements:
 * x at a multiple of its element size, the fp32 arrays (residual, the
 * decode's output) and the encoded bytes at a multiple of 4; anything else
 * is gradcompInvalidArgument. No two of a call's buffers may overlap (an
 * encode's x, residual, out and workspace; a decode's in and out; a
 * selector's v, idx, workspace and count): each reads its inputs while it
 * writes its outputs, so an overlap is gradcompInvalidArgument naming both. */
gradcompResult_t gradcompQsgdEncode(const void* x, ncclDataType_t datatype, size_t count, int bits,
                                    int bucketSize, uint64_t seed, void* out, cudaStream_t stream);
/* Error feedback, fused: r += g; out = encode(r); r -= decode(out). Buckets
 * that are not finite leave r unchanged. */
gradcompResult_t gradcompQsgdEncodeEF(const void* g, ncclDataType_t datatype, float* residual,
                                      size_t count, int bits, int bucketSize, uint64_t seed,
                                      void* out, cudaStream_t stream);
gradcompResult_t gradcompQsgdDecode(const void* in, size_t count, int bits, int bucketSize,
                                    float* out, int accumulate, cudaStream_t stream);
/* gradcompQsgdEncodeEF with the level rounding named: gradcompRoundStochastic
 * (what gradcompQsgdEncodeEF does) or gradcompRoundNearest (GRADCOMP_ROUNDING=
 * nearest: no random draw, the seed is not read; its bias is carried only by
 * a residual). The kernel an allreduce runs under that setting. */
gradcompResult_t gradcompQsgdEncodeEFRounding(const void* g, ncclDataType_t datatype,
                                              float* residual, size_t count, int bits,
                                              int bucketSize, uint64_t seed,
                                              gradcompRounding_t rounding, void* out,
                                              cudaStream_t stream);
/* gradcompQsgdEncodeEFRounding with the levels named: gradcompLevelsUniform
 * (what it does) or gradcompLevelsSquare (GRADCOMP_LEVELS=square: level k of
 * s stands for (k/s)^2 of the bucket's max |x|; the scale of each finite,
 * non-zero bucket is stored with its sign bit set, which gradcompQsgdDecode
 * and every other QSGD decoder read as "square levels"). The same encoded
 * size as uniform levels. */
gradcompResult_t gradcompQsgdEncodeEFLevels(const void* g, ncclDataType_t datatype, float* residual,
                                            size_t count, int bits, int bucketSize, uint64_t seed,
                                            gradcompRounding_t rounding, gradcompLevels_t levels,
                                            void* out, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* GRADCOMP_H_ */
