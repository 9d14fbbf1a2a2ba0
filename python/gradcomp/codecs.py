"""The host reference codecs (include/gradcomp/reference.h, sparse.h, elias.h) on numpy arrays.

The same bytes as the GPU kernels for the same seed; handy to inspect what a
compressed call puts on the wire. Thin wrappers: the arithmetic is the library's.
"""
import ctypes

from . import _types as T
from ._lib import InvalidArgumentError, check, lib
from .comm import buffer_info


def _np():
    import numpy  # only the codec helpers need numpy

    return numpy


def qsgd_encoded_bytes(count, bits=4, bucket_size=512):
    n = lib().gradcompQsgdEncodedBytes(count, bits, bucket_size)
    if count and not n:
        raise InvalidArgumentError(f"bits={bits} or bucket_size={bucket_size} is invalid "
                                   "(bits 2..8, bucket 32..8192, a multiple of 32)", 1)
    return n


def qsgd_encode(x, bits=4, bucket_size=512, seed=0, residual=None):
    """Encodes x (float32/float16/bfloat16); with residual (float32), fused error feedback
    (residual += x; encode residual; residual -= decode). Returns the wire bytes (uint8)."""
    np = _np()
    xp, n, t = buffer_info(x)
    out = np.zeros(qsgd_encoded_bytes(n, bits, bucket_size), np.uint8)
    rp = None
    if residual is not None:
        rp, rn, rt = buffer_info(residual)
        if rn != n or rt != T.NCCL_TYPES["float32"]:
            raise InvalidArgumentError(f"residual must be float32 with {n} elements", 1)
    check(lib().gradcompQsgdEncodeTypedHost(xp, t, rp, n, bits, bucket_size, seed,
                                            out.ctypes.data))
    return out


def qsgd_decode(encoded, count, bits=4, bucket_size=512, out=None, accumulate=False):
    np = _np()
    need = qsgd_encoded_bytes(count, bits, bucket_size)
    enc = np.ascontiguousarray(encoded, dtype=np.uint8)
    if enc.size < need:
        raise InvalidArgumentError(f"encoded has {enc.size} bytes, {need} needed", 1)
    if out is None:
        out = np.zeros(count, np.float32)
    op, on, ot = buffer_info(out)
    if on != count or ot != T.NCCL_TYPES["float32"]:
        raise InvalidArgumentError(f"out must be float32 with {count} elements", 1)
    check(lib().gradcompQsgdDecodeHost(enc.ctypes.data, count, bits, bucket_size, op,
                                       1 if accumulate else 0))
    return out


def topk_slots(n, density=0.01, oversample=2.0, exact=False):
    """kmax: the fixed number of slots a sparse call sends for n elements."""
    k = ctypes.c_size_t()
    check(lib().gradcompTopkSlots(n, density, oversample, 1 if exact else 0, ctypes.byref(k)))
    return k.value


def topk_select(v, density=0.01, oversample=2.0, sample_rate=0.01, exact=False, seed=0):
    """Indices (uint32) the top-k selector picks on float32 v (threshold or exact)."""
    np = _np()
    vp, n, t = buffer_info(v)
    if t != T.NCCL_TYPES["float32"]:
        raise InvalidArgumentError("topk_select takes float32", 1)
    idx = np.zeros(max(topk_slots(n, density, oversample, exact), 1), np.uint32)
    sel = ctypes.c_uint64()
    check(lib().gradcompTopkSelectHost(vp, n, density, oversample, sample_rate, 1 if exact else 0,
                                       seed, idx.ctypes.data, ctypes.byref(sel)))
    return idx[: min(sel.value, idx.size)]


def elias_params(levels, bucket_size=512, code="gamma", scale="max"):
    codes, scales = {"gamma": 0, "omega": 1}, {"max": 0, "l2": 1}
    return T.EliasParams(levels, bucket_size, codes[code], scales[scale])


def elias_encode(x, params, seed=0, residual=None):
    """Elias-coded QSGD of x; returns the encoded bytes (variable size)."""
    np = _np()
    xp, n, t = buffer_info(x)
    cap = lib().gradcompEliasMaxEncodedBytes(n, ctypes.byref(params))
    out = np.zeros(max(cap, 1), np.uint8)
    used = ctypes.c_size_t()
    rp = buffer_info(residual)[0] if residual is not None else None
    check(lib().gradcompEliasEncodeHost(xp, t, rp, n, ctypes.byref(params), seed,
                                        out.ctypes.data, out.size, ctypes.byref(used)))
    return out[: used.value]


def elias_decode(encoded, count, params, out=None, accumulate=False):
    np = _np()
    enc = np.ascontiguousarray(encoded, dtype=np.uint8)
    if out is None:
        out = np.zeros(count, np.float32)
    check(lib().gradcompEliasDecodeHost(enc.ctypes.data, enc.size, count, ctypes.byref(params),
                                        buffer_info(out)[0], 1 if accumulate else 0))
    return out
