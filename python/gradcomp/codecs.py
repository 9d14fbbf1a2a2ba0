"""The host reference codecs (include/gradcomp/reference.h, sparse.h, elias.h) on numpy arrays.

The same bytes as the GPU kernels for the same seed; handy to inspect what a
compressed call puts on the wire. Thin wrappers: the arithmetic is the library's.
"""
import ctypes
import numbers

from . import _types as T
from ._lib import InvalidArgumentError, check, lib
from .comm import _count, _integer, _rank_int, buffer_info, describe
from .config import _is_bool, _real


def _np():
    import numpy  # only the codec helpers need numpy

    return numpy


def _float32_array(x, name, count, writable):
    """The address of x, a C-contiguous float32 array of exactly count elements (writable when
    the library writes into it); otherwise an error naming x, what it is and what is allowed."""
    p, n, t = buffer_info(x, name, writable=writable, host=True)
    if n != count or t != T.NCCL_TYPES["float32"]:
        raise InvalidArgumentError(f"{name} must be a C-contiguous float32 array of {count} "
                                   f"elements; got {describe(x)}", 1)
    return p


# Bytes per element of the codecs' input types (float16, float32, bfloat16).
_ELEM = {T.NCCL_TYPES["float16"]: 2, T.NCCL_TYPES["float32"]: 4, T.NCCL_TYPES["bfloat16"]: 2}


def _disjoint(a, a_bytes, b, b_bytes, what):
    """Refuses two buffers whose bytes overlap (the codecs read one while writing the other)."""
    if a < b + b_bytes and b < a + a_bytes:
        raise InvalidArgumentError(f"{what} overlap: the codec reads one while it writes the "
                                   "other; pass separate buffers", 1)


def _encoded(encoded):
    """The wire bytes as a contiguous uint8 array: a bytes-like object or a uint8 array; any
    other dtype is refused rather than value-cast."""
    np = _np()
    if isinstance(encoded, memoryview) and not encoded.c_contiguous:
        # A strided view (memoryview(a)[::2]) has no one run of bytes for frombuffer, whose
        # BufferError names no argument: its bytes in order, as bytes() gives them.
        encoded = encoded.tobytes()
    if isinstance(encoded, (bytes, bytearray, memoryview)):
        return np.frombuffer(encoded, np.uint8)
    if hasattr(encoded, "data_ptr") and hasattr(encoded, "numpy"):  # a CPU torch tensor
        encoded = encoded.detach().cpu().numpy()
    if not hasattr(encoded, "dtype"):
        raise InvalidArgumentError(f"encoded is a {type(encoded).__name__}: pass the uint8 array "
                                   "the encoder returned, or bytes", 1)
    if encoded.dtype != np.uint8:
        raise InvalidArgumentError(f"encoded must be uint8 wire bytes; got {describe(encoded)}: "
                                   "pass the uint8 array the encoder returned, or bytes (a "
                                   "view of other bytes is x.view(numpy.uint8))", 1)
    return np.ascontiguousarray(encoded)


# The ranges the codecs take (gradcompQsgdEncodedBytes and the codecs check them; named
# here for the numbers that ctypes could not pass, and the sizes' refusal).
_BITS, _BUCKET, _LEVELS = "2..8", "32..8192", "1..65535"


def _ranged(value, name, allowed):
    return _rank_int(value, name, f" in range {allowed}")


def qsgd_encoded_bytes(count, bits=4, bucket_size=512):
    count = _count(count)
    bits, bucket_size = _ranged(bits, "bits", _BITS), _ranged(bucket_size, "bucket_size", _BUCKET)
    n = lib().gradcompQsgdEncodedBytes(count, bits, bucket_size)
    if count and not n:
        if lib().gradcompQsgdEncodedBytes(1, bits, bucket_size):
            raise InvalidArgumentError(f"count={count} is too large for the codecs (at most "
                                       "2**56 elements)", 1)
        if not 2 <= bits <= 8:
            raise InvalidArgumentError(f"bits={bits} is out of range {_BITS}", 1)
        raise InvalidArgumentError(f"bucket_size={bucket_size} is out of range {_BUCKET} or not "
                                   "a multiple of 32", 1)
    return n


def _seed(seed):
    """seed as an int in 0..2**64-1 (a uint64_t), not wrapped by ctypes."""
    seed = _integer(seed, "seed", "an integer in 0..2**64-1")
    if not 0 <= seed < 2**64:
        raise InvalidArgumentError(f"seed={seed} is out of range (0 <= seed < 2**64)", 1)
    return seed


def _flag(value, name):
    """An on/off argument as 1 or 0: a bool (Python's or numpy's) or the integer 0 or 1. Any
    other value is refused rather than read by its truth: accumulate="False" would be on."""
    if _is_bool(value) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return 1 if value else 0
    raise InvalidArgumentError(f"{name}={value!r} is not a bool: pass True or False", 1)


def _one_of(value, names, name):
    """names[value] for a name of the table; any other value (a number, a list, which a dict
    lookup would refuse with an unhashable-type TypeError naming nothing) refused by name."""
    if not isinstance(value, str) or value not in names:
        raise InvalidArgumentError(f"{name}={value!r} is not one of {'|'.join(names)}", 1)
    return names[value]


def _choice(field, value):
    return _one_of(value, T.CHOICES[field], field)


def qsgd_encode(x, bits=4, bucket_size=512, seed=0, residual=None, rounding="stochastic",
                levels="uniform"):
    """Encodes x (float32/float16/bfloat16); with residual (float32), fused error feedback
    (residual += x; encode residual; residual -= decode). Returns the wire bytes (uint8).
    rounding: "stochastic" or "nearest" (GRADCOMP_ROUNDING); levels: "uniform" or "square"
    (GRADCOMP_LEVELS; qsgd_decode reads either from the bytes)."""
    np = _np()
    r, lv = _choice("rounding", rounding), _choice("levels", levels)
    bits, bucket_size = _ranged(bits, "bits", _BITS), _ranged(bucket_size, "bucket_size", _BUCKET)
    seed = _seed(seed)
    xp, n, t = buffer_info(x, "x", host=True)
    rp = None
    if residual is not None:
        rp = _float32_array(residual, "residual", n, writable=True)
        _disjoint(xp, n * _ELEM.get(t, 8), rp, 4 * n, "x and residual")
    out = np.zeros(qsgd_encoded_bytes(n, bits, bucket_size), np.uint8)
    check(lib().gradcompQsgdEncodeEFLevelsHost(xp, t, rp, n, bits, bucket_size, seed, r, lv,
                                               out.ctypes.data))
    return out


def qsgd_decode(encoded, count, bits=4, bucket_size=512, out=None, accumulate=False):
    np = _np()
    count = _count(count)
    bits, bucket_size = _ranged(bits, "bits", _BITS), _ranged(bucket_size, "bucket_size", _BUCKET)
    need = qsgd_encoded_bytes(count, bits, bucket_size)
    enc = _encoded(encoded)
    if enc.size < need:
        raise InvalidArgumentError(f"encoded has {enc.size} bytes, {need} needed", 1)
    if out is None:
        out = np.zeros(count, np.float32)
    op = _float32_array(out, "out", count, writable=True)
    _disjoint(enc.ctypes.data, enc.size, op, 4 * count, "encoded and out")
    check(lib().gradcompQsgdDecodeHost(enc.ctypes.data, count, bits, bucket_size, op,
                                       _flag(accumulate, "accumulate")))
    return out


def topk_slots(n, density=0.01, oversample=2.0, exact=False):
    """kmax: the fixed number of slots a sparse call sends for n elements."""
    n, exact = _count(n, "n"), _flag(exact, "exact")
    density, oversample = _real(density, "density"), _real(oversample, "oversample")
    k = ctypes.c_size_t()
    check(lib().gradcompTopkSlots(n, density, oversample, exact, ctypes.byref(k)))
    return k.value


def topk_select(v, density=0.01, oversample=2.0, sample_rate=1e-4, exact=False, seed=0):
    """Indices (uint32) the top-k selector picks on float32 v (threshold or exact)."""
    np = _np()
    density, oversample = _real(density, "density"), _real(oversample, "oversample")
    sample_rate, seed, exact = _real(sample_rate, "sample_rate"), _seed(seed), _flag(exact, "exact")
    vp, n, t = buffer_info(v, "v", host=True)
    if t != T.NCCL_TYPES["float32"]:
        raise InvalidArgumentError(f"topk_select takes a float32 v; got {describe(v)}", 1)
    idx = np.zeros(max(topk_slots(n, density, oversample, exact), 1), np.uint32)
    sel = ctypes.c_uint64()
    check(lib().gradcompTopkSelectHost(vp, n, density, oversample, sample_rate, exact,
                                       seed, idx.ctypes.data, ctypes.byref(sel)))
    return idx[: min(sel.value, idx.size)]


def elias_params(levels, bucket_size=512, code="gamma", scale="max"):
    code = _one_of(code, {"gamma": 0, "omega": 1}, "code")
    scale = _one_of(scale, {"max": 0, "l2": 1}, "scale")
    levels = _ranged(levels, "levels", _LEVELS)
    bucket_size = _ranged(bucket_size, "bucket_size", _BUCKET)
    return T.EliasParams(levels, bucket_size, code, scale)


def _elias_params(params):
    if not isinstance(params, T.EliasParams):
        raise InvalidArgumentError(f"params={params!r} is not an EliasParams: make it with "
                                   "codecs.elias_params(levels, ...)", 1)
    return params


def elias_encode(x, params, seed=0, residual=None):
    """Elias-coded QSGD of x; returns the encoded bytes (variable size). residual: a writable
    float32 array of x's size (fused error feedback, as qsgd_encode)."""
    np = _np()
    params = _elias_params(params)
    seed = _seed(seed)
    xp, n, t = buffer_info(x, "x", host=True)
    rp = None
    if residual is not None:
        rp = _float32_array(residual, "residual", n, writable=True)
        _disjoint(xp, n * _ELEM.get(t, 8), rp, 4 * n, "x and residual")
    cap = lib().gradcompEliasMaxEncodedBytes(n, ctypes.byref(params))
    out = np.zeros(max(cap, 1), np.uint8)
    used = ctypes.c_size_t()
    check(lib().gradcompEliasEncodeHost(xp, t, rp, n, ctypes.byref(params), seed,
                                        out.ctypes.data, out.size, ctypes.byref(used)))
    return out[: used.value]


def elias_decode(encoded, count, params, out=None, accumulate=False):
    """Decodes count elements into out (a writable C-contiguous float32 array of count
    elements; a new one when None)."""
    np = _np()
    params = _elias_params(params)
    count = _count(count)
    enc = _encoded(encoded)
    if count:
        # Checked before out is made: a count far past what the bytes can hold would make a
        # huge array first (a MemoryError naming nothing, or minutes of zeroing) before the
        # library's refusal.
        header = lib().gradcompEliasHeaderBytes(count, params.bucketSize)
        if not header:
            if lib().gradcompEliasHeaderBytes(1, params.bucketSize):
                raise InvalidArgumentError(f"count={count} is too large for the codecs (at most "
                                           "2**56 elements)", 1)
            raise InvalidArgumentError(f"bucket_size={params.bucketSize} is out of range "
                                       f"{_BUCKET} or not a multiple of 32", 1)
        if enc.size < header:
            raise InvalidArgumentError(
                f"encoded has {enc.size} bytes, fewer than the {header} of the header (scales "
                f"and offsets) of an Elias encoding of count={count} with "
                f"bucket_size={params.bucketSize}: pass the encoding of count elements", 1)
    if out is None:
        out = np.zeros(count, np.float32)
    op = _float32_array(out, "out", count, writable=True)
    _disjoint(enc.ctypes.data, enc.size, op, 4 * count, "encoded and out")
    check(lib().gradcompEliasDecodeHost(enc.ctypes.data, enc.size, count, ctypes.byref(params),
                                        op, _flag(accumulate, "accumulate")))
    return out
