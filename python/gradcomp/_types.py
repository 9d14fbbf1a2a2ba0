"""ctypes mirrors of the structs and enums in include/gradcomp.h.

The field lists are the single source of truth on the Python side: a field
added to gradcompConfig_t or gradcompStats_t is one line appended here, in the
header's order. The binding passes ctypes.sizeof of each mirror to the Sized
entry points, as the C header's macros pass sizeof: the library writes only
the mirror's bytes, reads a config of an earlier layout with the missing
fields at their defaults, and refuses a size it does not know (a mirror ahead
of the loaded library) with a sentence naming it. tests/python/test_binding.py
compares the field names with the header.
"""
import ctypes
import re

c_enum = ctypes.c_int  # every enum in gradcomp.h and nccl.h fits an int

# (C name, ctypes type), in the order of gradcompConfig_t.
CONFIG_FIELDS = [
    ("structSize", ctypes.c_size_t),
    ("method", c_enum),
    ("algo", c_enum),
    ("bits", ctypes.c_int),
    ("bucketSize", ctypes.c_int),
    ("seed", ctypes.c_uint64),
    ("minElements", ctypes.c_size_t),
    ("errorFeedback", ctypes.c_int),
    ("ownerResidual", ctypes.c_int),
    ("density", ctypes.c_float),
    ("oversample", ctypes.c_float),
    ("sampleRate", ctypes.c_float),
    ("select", c_enum),
    ("valueType", c_enum),
    ("momentum", ctypes.c_float),
    ("momentumCorrection", ctypes.c_int),
    ("clipNorm", ctypes.c_float),
    ("momentumMasking", ctypes.c_int),
    ("warmupSteps", ctypes.c_int),
    ("bitsMode", c_enum),
    ("bitsMin", ctypes.c_int),
    ("bitsMax", ctypes.c_int),
    ("varianceTarget", ctypes.c_float),
    ("bitsBudget", ctypes.c_float),
    ("budgetWindow", ctypes.c_int),
    ("elias", ctypes.c_int),
    ("localSize", ctypes.c_int),
    ("autoTune", ctypes.c_int),
    ("pipelineBytes", ctypes.c_size_t),
    ("cpuTimeoutSec", ctypes.c_float),
    ("rounding", c_enum),
    ("checkCalls", ctypes.c_int),
    ("reserved0", ctypes.c_int),
    ("levels", c_enum),
    ("reserved1", ctypes.c_int),
    ("privateComm", ctypes.c_int),
]

# (C name, ctypes type), in the order of gradcompStats_t.
STATS_FIELDS = [
    ("callsCompressed", ctypes.c_uint64),
    ("callsPassedThrough", ctypes.c_uint64),
    ("bytesIn", ctypes.c_uint64),
    ("bytesOnWire", ctypes.c_uint64),
    ("callsPerAlgo", ctypes.c_uint64 * 6),
    ("denseFallbacks", ctypes.c_uint64),
    ("selectedLast", ctypes.c_uint64),
    ("targetLast", ctypes.c_uint64),
    ("bitsLast", ctypes.c_int),
    ("steps", ctypes.c_uint64),
    ("bytesInterNode", ctypes.c_uint64),
    ("callsReduceScatter", ctypes.c_uint64),
    ("callsAutoPassed", ctypes.c_uint64),
    ("piecesLast", ctypes.c_uint64),
    ("peerSlotsRejected", ctypes.c_uint64),
    ("callsPerBits", ctypes.c_uint64 * 9),
]

# The on/off fields (range 0..1 in plugin/config.cc's table): the only integer fields that take
# True and False; a bool anywhere else (bits=True) is refused, not read as 1.
FLAG_FIELDS = {"errorFeedback", "ownerResidual", "momentumCorrection", "momentumMasking", "elias",
               "autoTune", "privateComm", "checkCalls"}

# Enum fields take these names (the GRADCOMP_* spellings) or their numbers.
CHOICES = {
    "method": {"none": 0, "qsgd": 1, "topk": 2, "randk": 3, "dgc": 4},
    "algo": {"auto": 0, "twoshot": 1, "ring": 2, "allgather": 3, "sparse": 4, "hier": 5},
    "select": {"threshold": 0, "exact": 1},
    "valueType": {"float": 7, "half": 6, "bfloat16": 9},
    "bitsMode": {"fixed": 0, "dynamic": 1, "budget": 2},
    "rounding": {"stochastic": 0, "nearest": 1},
    "levels": {"uniform": 0, "square": 1},
    "localSize": {"auto": 0},
}

ALGO_NAMES = ["auto", "twoshot", "ring", "allgather", "sparse", "hier"]

# ncclDataType_t and ncclRedOp_t (nccl.h).
NCCL_TYPES = {"int8": 0, "uint8": 1, "int32": 2, "uint32": 3, "int64": 4, "uint64": 5,
              "float16": 6, "float32": 7, "float64": 8, "bfloat16": 9}
NCCL_OPS = {"sum": 0, "prod": 1, "max": 2, "min": 3, "avg": 4}

# gradcompResult_t
RESULTS = ["gradcompSuccess", "gradcompInvalidArgument", "gradcompInvalidUsage",
           "gradcompCudaError", "gradcompNcclError", "gradcompSystemError",
           "gradcompInternalError", "gradcompNotSupported"]


def snake(name):
    """bucketSize -> bucket_size: the Python keyword of a C field."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class ConfigStruct(ctypes.Structure):
    _fields_ = CONFIG_FIELDS


class StatsStruct(ctypes.Structure):
    _fields_ = STATS_FIELDS


class EliasParams(ctypes.Structure):
    _fields_ = [("levels", ctypes.c_int), ("bucketSize", ctypes.c_int), ("code", c_enum),
                ("scale", c_enum)]


class NcclUniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_char * 128)]  # NCCL_UNIQUE_ID_BYTES
