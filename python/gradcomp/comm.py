"""gradcompComm_t: an NCCL-backed comm, a CPU comm over TCP or an in-process CPU world."""
import ctypes
import math
import numbers
import sys
import threading
import time
import warnings
import weakref

from . import _types as T
from ._lib import GradcompError, InvalidArgumentError, check, has, lib
from .config import _is_bool, _real, as_config


def _enum(value, table, what):
    if isinstance(value, str):
        v = table.get(value.lower())
        if v is None:
            raise InvalidArgumentError(f"{what}={value!r} is not one of {'|'.join(table)}", 1)
        return v
    return _c_int(_integer(value, what, f"one of {'|'.join(table)} or its NCCL number"), what,
                  f" (one of {'|'.join(table)} or its NCCL number)")


# ctypes wraps an int past its C type silently (2**32 + 7 into 7, -1 into 2**64 - 1): the
# numbers are checked here, the library checks the range of what arrives.
def _integer(value, name, what="an integer"):
    """value as an int: an integer (not a bool, not a float that int() would truncate)."""
    if _is_bool(value):
        # An int to Python, but never a count, a width or a seed meant as 1 (bits=True).
        raise InvalidArgumentError(f"{name}={value!r} is a bool, not {what}", 1)
    if not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(f"{name}={value!r} is not {what}", 1)
    return int(value)


def _c_int(v, name, allowed=""):
    if not -2**31 <= v < 2**31:
        raise InvalidArgumentError(f"{name}={v} is not a C int{allowed}", 1)
    return v


def _rank_int(value, name, allowed=""):
    return _c_int(_integer(value, name, "an integer" + allowed), name, allowed)


def _count(count, name="count"):
    """count as an int in 0..2**64-1 (a size_t)."""
    count = _integer(count, name, f"an integer element count (0 <= {name} < 2**64)")
    if not 0 <= count < 2**64:
        raise InvalidArgumentError(f"{name}={count} is out of range (0 <= {name} < 2**64)", 1)
    return count


def describe(x):
    """shape, dtype and the flags that matter of an array or tensor, for an error message."""
    shape = tuple(getattr(x, "shape", ()))
    dt = getattr(x, "dtype", None)
    dtype = f"{dt.name} ({dt.str})" if hasattr(dt, "str") else str(dt)
    flags = getattr(x, "flags", None)
    if flags is not None:
        return (f"shape {shape}, dtype {dtype}, C_CONTIGUOUS={bool(flags.c_contiguous)}, "
                f"WRITEABLE={bool(flags.writeable)}")
    return f"shape {shape}, dtype {dtype}"


def buffer_info(x, name=None, writable=False, host=False):
    """(address, element count, ncclDataType_t) of a contiguous numpy array or dense (strided)
    torch tensor (a sparse, jagged or mkldnn one is refused).

    name: what the argument is called in the error messages. writable=True: the library
    writes into x, so a read-only numpy array is refused. host=True: the library reads x on
    the host (the host codecs, the CPU backend's comms), so a GPU tensor is refused. Numpy
    arrays in the other byte order (dtype '>f4' on a little-endian machine) are refused: the
    library reads native order."""
    if hasattr(x, "data_ptr") and hasattr(x, "numel"):  # torch.Tensor
        what = name or "tensor"
        if host and x.device.type != "cpu":
            raise InvalidArgumentError(f"{what} is on {x.device} ({describe(x)}), but gradcomp "
                                       "reads it on the host here: pass a CPU tensor "
                                       f"({name or 'x'}.cpu())", 1)
        layout = str(getattr(x, "layout", "torch.strided"))
        if layout != "torch.strided":
            # A sparse, jagged or mkldnn tensor has no one dense buffer at data_ptr() (a jagged
            # one's is NULL; a CSR or mkldnn one's is_contiguous() or data_ptr() raises torch's
            # error, which names no argument): refused here by name, saying what to pass.
            raise InvalidArgumentError(f"{what} has layout {layout} ({describe(x)}), but gradcomp "
                                       "reads dense (torch.strided) tensors by address: pass "
                                       f"{name or 'x'}.to_dense() (a sparse tensor) or a dense "
                                       "contiguous tensor of the same values", 1)
        if not x.is_contiguous():
            raise InvalidArgumentError(f"{what} is not contiguous ({describe(x)}): pass "
                                       "x.contiguous()", 1)
        tname = str(x.dtype).replace("torch.", "")
        if tname not in T.NCCL_TYPES:
            raise InvalidArgumentError(f"{what} dtype {x.dtype} has no NCCL type", 1)
        if getattr(x, "is_neg", None) is not None and x.is_neg():
            # A view torch negates lazily (x.conj().imag of a complex x): its memory holds the
            # values unnegated, and gradcomp reads and writes that memory by address, so a sum
            # into another buffer, max or min, or an encode would get the wrong sign. Refused
            # rather than resolved into a temporary: a buffer gradcomp writes must hold the
            # result itself, and the residual is keyed by its address. (A conjugate view, the
            # other lazy bit, is complex: refused above by its dtype.)
            n = name or "x"
            raise InvalidArgumentError(
                f"{what} is a negated view, is_neg() ({describe(x)}): its memory holds the "
                "values unnegated and gradcomp reads and writes that memory: pass "
                f"{n}.resolve_neg() (a new tensor; where gradcomp writes the result, copy it "
                f"back afterwards with {n}.copy_(result))", 1)
        ptr = x.data_ptr()
        if not ptr and x.numel():
            # A tensor subclass without storage of its own (a DTensor: its numel() is the global
            # one, its data_ptr() 0) would reach the library as a NULL address.
            raise InvalidArgumentError(f"{what} is a {type(x).__name__} without storage of its "
                                       f"own ({describe(x)}, data_ptr() 0): pass a plain tensor "
                                       f"(a DTensor's local shard: {name or 'x'}.to_local())", 1)
        return ptr, x.numel(), T.NCCL_TYPES[tname]
    if hasattr(x, "ctypes") and hasattr(x, "flags"):  # numpy.ndarray
        what = name or "array"
        ma = sys.modules.get("numpy.ma")  # loaded wherever a masked array was made
        if ma is not None and isinstance(x, ma.MaskedArray):
            # gradcomp reads and writes the data under the mask too and leaves the mask as it
            # was: a masked element's value (a fill, 1e20) would be summed into the other ranks'
            # unmasked results.
            raise InvalidArgumentError(
                f"{what} is a numpy masked array ({describe(x)}): gradcomp reads and writes its "
                f"data, masked elements included, and ignores the mask: pass {name or 'x'}.filled(0) "
                "(masked elements as 0) or a plain array", 1)
        if not x.flags.c_contiguous:
            raise InvalidArgumentError(f"{what} is not C-contiguous ({describe(x)}): pass "
                                       "numpy.ascontiguousarray(x)", 1)
        dname = x.dtype.name
        if dname not in T.NCCL_TYPES:
            raise InvalidArgumentError(f"{what} dtype {dname} has no NCCL type (use float32, "
                                       "float16 or a bfloat16 dtype)", 1)
        if not x.dtype.isnative:
            native = x.dtype.newbyteorder("=").str
            raise InvalidArgumentError(
                f"{what} has dtype {x.dtype.str} ({describe(x)}), which is not in this machine's "
                f"byte order; gradcomp reads native-order data only: pass "
                f"{name or 'x'}.astype('{native}') "
                "(native byte order)", 1)
        if writable:
            _writable(x, what)
        return x.ctypes.data, x.size, T.NCCL_TYPES[dname]
    raise TypeError(f"{name or 'buffer'}: expected a numpy array or torch tensor, got "
                    f"{type(x).__name__}")


def _writable(x, name="the receive array"):
    if hasattr(x, "flags") and not x.flags.writeable:
        raise InvalidArgumentError(
            f"{name} is read-only ({describe(x)}) and gradcomp writes into it: pass a writable "
            "array (for example x.copy())", 1)


# The Comm that owns each open handle, by address: a Comm frees its handle when closed or (a
# CPU backend comm) collected, so a second Comm of the same handle would free it again, or call
# it after the first freed it (a crash). A closed Comm's entry is stale: its address may come
# back for a new comm.
_owners = weakref.WeakValueDictionary()
_owners_lock = threading.Lock()


class Comm:
    """A gradcompComm_t. Make one with Comm.create (NCCL), Comm.socket (the CPU reference
    backend across processes, over TCP) or CpuWorld (the CPU reference backend in-process).

    A Comm owns its handle: close() (or abort()) frees it. Comm(handle) takes a handle from
    the C API that no other Comm holds; one an open Comm holds is refused, and so is one that
    is not a live comm (destroyed, aborted or never made)."""

    def __init__(self, handle, host=False):
        h = ctypes.c_void_p(_addr(handle, "handle"))
        if not h.value:
            raise InvalidArgumentError("handle is NULL: pass a gradcompComm_t the C API made", 1)
        # Asked first, of the library, which knows its live comms: a handle it refuses is
        # neither adopted nor ever freed by this Comm (its __del__ would free it again).
        r, s = ctypes.c_int(), ctypes.c_int()
        res = lib().gradcompCommRank(h, ctypes.byref(r))
        if res == 0:
            res = lib().gradcompCommSize(h, ctypes.byref(s))
        if res != 0:
            sentence = (lib().gradcompGetLastError() or b"").decode(errors="replace")
            raise InvalidArgumentError(
                f"handle 0x{h.value:x} is not a gradcompComm_t this library can use: {sentence}",
                1)
        with _owners_lock:
            owner = _owners.get(h.value)
            if owner is not None and getattr(owner, "_h", None) and owner._h.value == h.value:
                # Raised before self._h is set: __del__ then frees nothing.
                raise InvalidArgumentError(
                    f"handle 0x{h.value:x} is owned by {owner!r}, which frees it when closed: "
                    "use that Comm itself rather than a second one of its handle", 1)
            _owners[h.value] = self
        self._h = h
        self.host = host  # the CPU backend's comm: host buffers, no stream
        self.rank, self.size = r.value, s.value

    @classmethod
    def create(cls, nccl_comm, config=None, **settings):
        """Wraps (never owns) an ncclComm_t given as an address (int or c_void_p)."""
        cfg = as_config(config, **settings)
        out = ctypes.c_void_p()
        nccl = ctypes.c_void_p(_addr(nccl_comm, "nccl_comm"))
        check(lib().gradcompCommCreate(nccl, ctypes.byref(cfg.struct), ctypes.byref(out)),
              "gradcompCommCreate")
        return cls(out.value)

    @classmethod
    def socket(cls, nranks, rank, root, config=None, **settings):
        """gradcompCommCreateSocket: rank `rank` of `nranks` of the CPU reference backend, the
        ranks connected by TCP; rank 0 listens at root ("host:port"). Collective: every rank
        calls it with the same nranks, root and settings, and waits at most cpu_timeout_sec
        (GRADCOMP_CPU_TIMEOUT) for the others. Host buffers; results bit for bit those of a
        CpuWorld of nranks making the same calls."""
        if not has("gradcompCommCreateSocket"):
            raise GradcompError("this libgradcomp has no gradcompCommCreateSocket: rebuild it "
                                "from a checkout that has the CPU backend's TCP transport", 7)
        cfg = as_config(config, **settings)
        if not isinstance(root, (str, bytes)):
            raise InvalidArgumentError(f"root={root!r} is not a \"host:port\" string", 1)
        out = ctypes.c_void_p()
        check(lib().gradcompCommCreateSocket(_rank_int(nranks, "nranks"), _rank_int(rank, "rank"),
                                             _text(root),
                                             ctypes.byref(cfg.struct), ctypes.byref(out)),
              "gradcompCommCreateSocket")
        return cls(out.value, host=True)

    @property
    def handle(self):
        if not self._h:
            raise GradcompError("the comm is closed", 2)
        return self._h

    # ---------------------------------------------------------- collectives
    def _collective(self, name, sendbuff, recvbuff, count, datatype, op, stream, key):
        """gradcomp<name>, or gradcomp<name>Keyed with a key, on addresses."""
        t = _enum(datatype, T.NCCL_TYPES, "datatype")
        o = _enum(op, T.NCCL_OPS, "op")
        s = ctypes.c_void_p(_stream(stream))
        args = (_addr(sendbuff, "sendbuff"), _addr(recvbuff, "recvbuff"), _count(count), t, o,
                self.handle, s)
        if key is None:
            check(getattr(lib(), "gradcomp" + name)(*args))
        else:
            check(getattr(lib(), "gradcomp" + name + "Keyed")(*args, _key(key)))

    def allreduce_raw(self, sendbuff, recvbuff, count, datatype, op="sum", stream=None, key=None):
        """gradcompAllReduce(Keyed) on addresses; key None keys the residual by recvbuff."""
        self._collective("AllReduce", sendbuff, recvbuff, count, datatype, op, stream, key)

    def allreduce(self, sendbuf, recvbuf=None, op="sum", stream=None, key=None):
        """Reduces sendbuf over all ranks into recvbuf (sendbuf itself when None). stream None:
        torch's current stream of a CUDA tensor (as torch.distributed), else the default one.
        On a GPU the call returns once the work is queued on the stream: with a stream other
        than torch's current one, keep both tensors alive (or tensor.record_stream(stream))
        until that stream has run, as for any work queued on a side stream."""
        recvbuf = sendbuf if recvbuf is None else recvbuf
        sp, sn, st = buffer_info(sendbuf, "sendbuf", host=self.host)
        rp, rn, rt = buffer_info(recvbuf, "recvbuf", writable=True, host=self.host)
        if (sn, st) != (rn, rt):
            raise InvalidArgumentError(f"send ({sn} elements of {_type_name(st)}) and receive "
                                       f"({rn} elements of {_type_name(rt)}) buffers differ: pass "
                                       "a recvbuf of sendbuf's size and dtype", 1)
        self.allreduce_raw(sp, rp, sn, st, op, _current_stream(stream, recvbuf), key)
        return recvbuf

    @staticmethod
    def has_reduce_scatter():
        return has("gradcompReduceScatter")

    def reduce_scatter_raw(self, sendbuff, recvbuff, recvcount, datatype, op="sum", stream=None,
                           key=None):
        """gradcompReduceScatter(Keyed): sendbuff holds size*recvcount elements."""
        if not self.has_reduce_scatter():
            raise GradcompError("this libgradcomp has no gradcompReduceScatter: rebuild it from a "
                                "checkout that has the reduce-scatter entry point", 7)
        self._collective("ReduceScatter", sendbuff, recvbuff, recvcount, datatype, op, stream, key)

    def reduce_scatter(self, sendbuf, recvbuf, op="sum", stream=None, key=None):
        """sendbuf (size * recvcount elements) reduced over all ranks, this rank's block into
        recvbuf; stream as allreduce's."""
        sp, sn, st = buffer_info(sendbuf, "sendbuf", host=self.host)
        rp, rn, rt = buffer_info(recvbuf, "recvbuf", writable=True, host=self.host)
        if st != rt or sn != rn * self.size:
            raise InvalidArgumentError(
                f"reduce-scatter needs a send buffer of size*recvcount = {self.size}*{rn} "
                f"elements of the receive type ({_type_name(rt)}); got {sn} elements of "
                f"{_type_name(st)}", 1)
        self.reduce_scatter_raw(sp, rp, rn, st, op, _current_stream(stream, recvbuf), key)
        return recvbuf

    # ---------------------------------------------------------------- state
    def reset_state(self):
        """gradcompCommResetState (collective: every rank, between the same two calls): frees
        every buffer's state (forget frees one buffer's)."""
        check(lib().gradcompCommResetState(self.handle))

    def forget(self, recvbuf=None, key=None):
        """gradcompCommForgetBuffer (recvbuf: the receive buffer of the unkeyed calls, a tensor,
        an array or an address) or gradcompCommForgetKey (key: the keyed calls' key), exactly
        one of them: frees that buffer's state (allreduce and reduce-scatter, every count and
        dtype), so that its next call starts afresh; every other buffer keeps its own.
        Collective as reset_state: every rank, between the same two calls, with the same key (or
        its own address of the same buffer)."""
        if (recvbuf is None) == (key is None):
            given = "neither" if recvbuf is None else "both"
            raise InvalidArgumentError("forget takes exactly one of recvbuf (the unkeyed calls' "
                                       f"receive buffer) and key; got {given}", 1)
        if not has("gradcompCommForgetKey"):
            raise GradcompError("this libgradcomp has no gradcompCommForgetKey: rebuild it "
                                "from a checkout that has it", 7)
        if key is not None:
            check(lib().gradcompCommForgetKey(self.handle, _key(key)))
            return
        if hasattr(recvbuf, "data_ptr") or hasattr(recvbuf, "__array_interface__"):
            addr = buffer_info(recvbuf, "recvbuf", host=self.host)[0]
        else:
            addr = _addr(recvbuf, "recvbuf")
        check(lib().gradcompCommForgetBuffer(self.handle, addr))

    def retune(self, stream=None):
        """gradcompCommRetune: re-time NCCL against compression (GRADCOMP_AUTO); collective.

        On the CPU world it only records that nothing is timed there."""
        check(lib().gradcompCommRetune(self.handle, _stream(stream)))

    def set_grad_scale(self, scale, stream=None):
        """gradcompCommSetGradScale: the factor the gradients of the following calls carry (a
        loss scaler's scale; 1 when the comm is made). The residuals, DGC's velocity and
        momentum and DQ-SGD's statistics are rescaled by new / old on `stream`, and DGC clips
        at clip_norm * scale, so that a scale change by a power of two leaves every later
        result bit for bit `scale` times the unscaled one. scale in 2^-60..2^60."""
        if not has("gradcompCommSetGradScale"):
            raise GradcompError("this libgradcomp has no gradcompCommSetGradScale: rebuild it "
                                "from a checkout that has it", 7)
        check(lib().gradcompCommSetGradScale(self.handle, _real(scale, "scale"), _stream(stream)))

    @property
    def grad_scale(self):
        """The scale set_grad_scale gave (or a loaded state carried); 1.0 otherwise."""
        if not has("gradcompCommGetGradScale"):
            return 1.0
        v = ctypes.c_float()
        check(lib().gradcompCommGetGradScale(self.handle, ctypes.byref(v)))
        return v.value

    def state_size(self):
        n = ctypes.c_size_t()
        check(lib().gradcompCommStateSize(self.handle, ctypes.byref(n)))
        return n.value

    def save_state(self):
        """Every residual/momentum buffer and the step counter, as bytes."""
        n = self.state_size()
        buf = ctypes.create_string_buffer(max(n, 1))
        check(lib().gradcompCommSaveState(self.handle, buf, n))
        return buf.raw[:n]

    def load_state(self, blob):
        what = "pass the bytes save_state() gave (bytes, bytearray or memoryview)"
        if isinstance(blob, dict):
            # bytes() of a dict is the bytes of its keys, or a TypeError about a key.
            raise InvalidArgumentError(f"blob is a dict: {what}; a GradcompState.state_dict() "
                                       "loads with GradcompState.load_state_dict", 1)
        if isinstance(blob, (int, str)) or not hasattr(blob, "__len__"):
            raise InvalidArgumentError(f"blob is a {type(blob).__name__}: {what}", 1)
        try:
            blob = bytes(blob)
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"blob is a {type(blob).__name__} that bytes() refuses "
                                       f"({e}): {what}", 1) from None
        check(lib().gradcompCommLoadState(self.handle, blob, len(blob)))

    def layout(self):
        """gradcompCommLayout: (nodes, ranks per node) the comm runs on, from local_size or, for
        auto, the ranks' host identities (NCCL and TCP comms; the in-process world's auto is
        flat). The exchange is hierarchical when both are >= 2."""
        if not has("gradcompCommLayout"):
            raise GradcompError("this libgradcomp has no gradcompCommLayout: rebuild it from a "
                                "checkout that has it", 7)
        nodes, local = ctypes.c_int(), ctypes.c_int()
        check(lib().gradcompCommLayout(self.handle, ctypes.byref(nodes), ctypes.byref(local)))
        return nodes.value, local.value

    def stats(self):
        """gradcompGetStats as a dict (snake_case keys; calls_per_algo by algorithm name,
        calls_per_bits by bit width 2..8)."""
        s = T.StatsStruct()
        # The mirror's size, as the C header's macro passes sizeof: the
        # library fills its fields and refuses a layout it does not know.
        check(lib().gradcompGetStatsSized(self.handle, ctypes.byref(s), ctypes.sizeof(s)))
        out = {}
        for name, _ in s._fields_:
            v = getattr(s, name)
            if name == "callsPerAlgo":
                v = {T.ALGO_NAMES[i]: v[i] for i in range(1, len(v))}
            elif name == "callsPerBits":
                v = {b: v[b] for b in range(2, len(v))}
            elif isinstance(v, ctypes.Array):
                v = list(v)
            out[T.snake(name)] = v
        return out

    def call_counts(self):
        """(calls_compressed, calls_passed_through, calls_auto_passed): the three counters a
        hook compares around one call to learn whether gradcomp compressed it, in one read."""
        s = T.StatsStruct()
        check(lib().gradcompGetStatsSized(self.handle, ctypes.byref(s), ctypes.sizeof(s)))
        return s.callsCompressed, s.callsPassedThrough, s.callsAutoPassed

    def close(self):
        """gradcompCommDestroy. A comm with a call in progress on another thread is refused
        (GradcompError) and stays open, so abort() can still wake and free it. After stop(),
        the abort that gradcomp.h requires to follow."""
        if self._h and getattr(self, "_stopped", False):
            self.abort()
        elif self._h:
            # Closed before the library frees it (a call starting on another thread meanwhile
            # finds it closed), reopened when the library refuses.
            h, self._h = self._h, ctypes.c_void_p()
            result = lib().gradcompCommDestroy(h)
            if result != 0:
                self._h = h
                check(result)

    def stop(self):
        """gradcompCommStop: abort()'s first step alone (every later call fails, the comm's own
        NCCL sub-communicators are aborted, nothing is freed), for the NCCL group in which the
        communicator the comm was made from is aborted; abort() must follow, after the group."""
        if not has("gradcompCommStop"):
            raise GradcompError("this libgradcomp has no gradcompCommStop: rebuild it from a "
                                "checkout that has it", 7)
        if self._h:
            check(lib().gradcompCommStop(self._h))
            self._stopped = True

    def abort(self):
        """gradcompCommAbort, as ncclCommAbort: after the NCCL communicator the comm was made
        from is aborted (or, on the CPU backend, when a peer is gone). Frees the comm without
        waiting on a peer; a call in progress on another thread raises. Closed afterwards."""
        if not has("gradcompCommAbort"):
            raise GradcompError("this libgradcomp has no gradcompCommAbort: rebuild it from a "
                                "checkout that has it", 7)
        if self._h:
            h, self._h = self._h, ctypes.c_void_p()
            check(lib().gradcompCommAbort(h))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # A close refused (a call still in progress on another thread) leaves the comm open for
        # abort(): gradcomp.h wants an NCCL comm's abort after its NCCL communicator's.
        _close_leaving(self, exc_type, abort_refused=False)

    def __del__(self):
        # A comm dropped without close() or abort(): ResourceWarning, as for an unclosed file
        # or socket. A CPU backend comm (CpuWorld, Comm.socket) is freed too: its destroy (or
        # after stop(), its abort) is local and waits on no peer. An NCCL comm is left
        # allocated: its destroy waits for the comm's stream and its NCCL sub-communicators,
        # which can wait on peers, and at interpreter exit on a CUDA already torn down.
        h = getattr(self, "_h", None)
        if not h:
            return
        host = getattr(self, "host", False)
        if host:
            # Freed first: a warning turned into an error (-W error, pytest's filterwarnings)
            # must not leak the comm.
            try:
                self._h = ctypes.c_void_p()
                L = lib()
                if getattr(self, "_stopped", False) and has("gradcompCommAbort"):
                    L.gradcompCommAbort(h)
                else:
                    L.gradcompCommDestroy(h)  # a refusal (a call on the raw handle) leaves it
            except Exception:  # noqa: BLE001 - interpreter exit; never raise from __del__
                pass
        if getattr(self, "_owner_warned", False):
            return  # the object that held it (a GradcompState) warned, naming itself
        try:
            warnings.warn(f"unclosed {self!r}" + ("" if host else
                          ": an NCCL comm is not freed when dropped (its destroy may wait on "
                          "peers); close() it after the last call, or abort() after a failure"),
                          ResourceWarning, source=self)
        except Exception:  # noqa: BLE001
            # Swallowed only at interpreter exit (the warnings machinery may be gone); else
            # re-raised, which Python reports as "Exception ignored in ... __del__"
            # (sys.unraisablehook; pytest fails on it under -W error), as for a file.
            if sys is not None and not sys.is_finalizing():
                raise

    def __reduce_ex__(self, protocol):
        # copy.copy (and deepcopy, pickle) would make a second Comm of the same handle: the
        # first of the two closed or collected frees the comm under the other, whose next call
        # then reads freed memory (a crash).
        raise TypeError(f"{self!r} cannot be copied or pickled: it owns its gradcompComm_t, "
                        "which one Comm frees; pass the Comm itself")

    def __repr__(self):
        return f"Comm(rank={getattr(self, 'rank', '?')}, size={getattr(self, 'size', '?')})"


def _addr(x, name="address"):
    """An address argument: None, a ctypes.c_void_p or an integer. A tensor or array (whose
    int() is its value, not its address) and anything else are refused."""
    if x is None:
        return None
    if isinstance(x, ctypes.c_void_p):
        return x.value
    if hasattr(x, "data_ptr") or hasattr(x, "__array_interface__"):
        raise InvalidArgumentError(f"{name} is a {type(x).__name__}, not an address: pass "
                                   "x.data_ptr() (torch) or x.ctypes.data (numpy), or use the "
                                   "call that takes the tensor or array itself", 1)
    v = _integer(x, name, "an address (an integer or ctypes.c_void_p)")
    if not 0 <= v < 2**64:
        raise InvalidArgumentError(f"{name}={v} is not an address (0 .. 2**64 - 1)", 1)
    return v


def _stream(s):
    """A stream argument as an address: None (the default stream), an int or c_void_p handle, or
    an object that carries one in `cuda_stream` (torch.cuda.Stream, torch.cuda.ExternalStream)."""
    handle = getattr(s, "cuda_stream", s)
    try:
        return _addr(handle)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"stream={s!r} is not a CUDA stream: pass None, an int or ctypes.c_void_p handle, or "
            "an object with a cuda_stream handle such as torch.cuda.Stream", 1) from None


def _current_stream(stream, x):
    """stream, or where it is None and x is a CUDA tensor, torch's current stream on x's device
    (where torch.distributed would run the call)."""
    if stream is not None or getattr(getattr(x, "device", None), "type", None) != "cuda":
        return stream
    import torch  # x is a torch tensor: torch is there
    return torch.cuda.current_stream(x.device)


def _text(s, name="root"):
    """s as the bytes of a C string: refused where a NUL would cut it short (the library would
    name what comes before it) or it has no UTF-8 bytes (a lone surrogate)."""
    try:
        b = s if isinstance(s, bytes) else s.encode()
    except UnicodeEncodeError as e:
        raise InvalidArgumentError(f"{name}={s!r} is not text that UTF-8 encodes ({e.reason})",
                                   1) from None
    if b"\0" in b:
        raise InvalidArgumentError(f"{name}={s!r} holds a NUL character: pass the \"host:port\" "
                                   "alone", 1)
    return b


def _type_name(t):
    """An ncclDataType_t's name (float32, ...), for a message; the number where it has none."""
    return next((k for k, v in T.NCCL_TYPES.items() if v == t), str(t))


def _key(k):
    k = _integer(k, "key", "an unsigned 64-bit integer")
    if not 0 <= k < 2**64:
        raise InvalidArgumentError(f"key={k} is not an unsigned 64-bit integer", 1)
    return k


def run_on_threads(n, body, timeout=300.0, on_error=None):
    """body(r) for r in 0..n-1, each on its own thread; the results by rank, the exception
    raised first re-raised, TimeoutError naming the ranks still running after timeout seconds.

    First in time, not in rank order: a rank whose peer raised fails later in its collective
    (at once where the peer's comm was stopped, else after cpu_timeout_sec, "1 of 2 ranks
    reached a collective"), and that failure says nothing of the peer's exception, which is the
    one to see. on_error(r), where given, runs on rank r's thread once its exception is
    recorded (so that any failure it causes comes later): CpuWorld.run stops the world there."""
    timeout = _run_timeout(timeout)  # before any rank starts: none is left running
    results = [None] * n
    errors = []  # (rank, exception), in the order the ranks raised them

    def run(r):
        try:
            results[r] = body(r)
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            errors.append((r, e))  # list.append is atomic: the order is the raising order
            if on_error is not None:
                on_error(r)

    # Daemon threads: a rank stuck because another failed must not keep the process alive.
    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    if timeout is None:
        deadline = None
    else:
        deadline = time.monotonic() + timeout  # one timeout for all ranks, not one each
    for t in threads:
        t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    stuck = [r for r, t in enumerate(threads) if t.is_alive()]
    if errors:
        raise errors[0][1]
    if stuck:
        raise TimeoutError(f"ranks {stuck} did not finish within {timeout}s: every rank must "
                           "make the same gradcomp calls in the same order")
    return results


def _run_timeout(timeout):
    """run_on_threads' timeout as seconds, or None for no limit (as Thread.join takes it)."""
    if timeout is None:
        return None
    if _is_bool(timeout) or not isinstance(timeout, numbers.Real) or not timeout >= 0:
        # A negative or NaN one would make the join return at once (the ranks' results or a
        # TimeoutError by chance), a string fail after the ranks started.
        raise InvalidArgumentError(f"timeout={timeout!r} is not a number of seconds >= 0 (or "
                                   "None: no limit)", 1)
    # Thread.join refuses an infinite timeout (OverflowError): no limit is None.
    return None if math.isinf(timeout) else timeout


def _close_leaving(obj, exc_type, abort_refused):
    """The end of a `with` block of a Comm or CpuWorld: obj.close(). A close refused (a call
    still in progress on another thread) is aborted first where abort_refused, and raised unless
    an exception is already leaving the block: that one is the exception the caller sees."""
    try:
        obj.close()
    except GradcompError:
        if abort_refused:
            obj.abort()
        if exc_type is None:
            raise


# The most ranks gradcompCommCreateCpu takes (plugin/comm.cc): a library taking more is still
# refused past it here, a library taking fewer refuses by itself.
_CPU_WORLD_MAX_RANKS = 1024


class CpuWorld:
    """gradcompCommCreateCpu: `nranks` comms of one in-process world (host buffers).

    Each comm must be driven from its own thread, every rank making the same
    calls in the same order (as with NCCL); run() does that and re-raises the
    exception a rank raised first (see run for the world's state after it).
    """

    def __init__(self, nranks, config=None, **settings):
        nranks = _rank_int(nranks, "nranks")
        if nranks > _CPU_WORLD_MAX_RANKS:
            # Refused before the output array is made: nranks=2**31-1 would be a 16 GiB array
            # (minutes of zeroing, or MemoryError) before the library's refusal.
            raise InvalidArgumentError(f"gradcompCommCreateCpu: nranks={nranks} is out of range "
                                       f"1..{_CPU_WORLD_MAX_RANKS}", 1)
        cfg = as_config(config, **settings)
        arr = (ctypes.c_void_p * max(nranks, 1))()
        check(lib().gradcompCommCreateCpu(nranks, ctypes.byref(cfg.struct), arr),
              "gradcompCommCreateCpu")
        self._config = cfg
        self._closed_by = None  # why run() closed the world, for its next run's refusal
        self.comms = [Comm(arr[r], host=True) for r in range(nranks)]

    @property
    def config(self):
        """The settings the comms were made with, as a copy: the library copied them when it
        made the comms, so a change to a Config afterwards changes no comm, and must not change
        what this says they run."""
        return self._config.copy()

    @property
    def size(self):
        return len(self.comms)

    # How long run() lets the other ranks of a raising rank finish on their own before it stops
    # the world: ranks that all refuse the same argument return within it, and the world stays
    # usable; a rank still running then waits in (or will reach) a collective the raising rank
    # never makes.
    STOP_GRACE_S = 1.0

    def run(self, fn, timeout=300.0):
        """Calls fn(comm) for every rank on its own thread; returns the results by rank.
        timeout: seconds for all ranks together (None: no limit).

        The exception a rank raised first is re-raised. Where a rank's fn raises and another
        rank is still running STOP_GRACE_S (1 s) later, run stops the world (gradcompCommStop on
        the raising rank's comm): a peer waiting for it in a collective, or entering one later,
        fails at once instead of after cpu_timeout_sec. A stopped world fails every collective,
        so run then aborts every comm and leaves the world closed: its comms raise "the comm is
        closed", and a later run raises at once saying why; make a new CpuWorld to go on. Where
        every rank has returned or raised within the grace (an argument every rank refused),
        nothing is stopped and the world stays usable. A TimeoutError (ranks still running,
        none of them having raised) leaves the world open, those ranks inside their calls:
        abort() it, as leaving a `with` block on the error does."""
        if self._closed_by is not None or not all(c._h for c in self.comms):
            why = self._closed_by or "close() or abort() closed its comms"
            raise GradcompError(f"{self!r} is closed ({why}): make a new CpuWorld", 2)
        n = self.size
        done = set()  # the ranks whose fn returned or raised (set.add is atomic)
        raised = []  # the ranks whose fn raised, in the order they did
        stopped = []
        lock = threading.Lock()
        timers = []

        def body(r):
            try:
                return fn(self.comms[r])
            finally:
                done.add(r)

        def stop_if_running(r):
            # Every wait of the world fails once one rank's comm is stopped (the comms' own
            # transports are one world's). A comm the rank closed itself is gone from the world
            # already, which fails its peers the same way.
            with lock:
                if stopped or len(done) == n:
                    return
                stopped.append(r)
                c = self.comms[r]
                if c._h and has("gradcompCommStop"):
                    c.stop()

        def on_error(r):
            t = threading.Timer(self.STOP_GRACE_S, stop_if_running, (r,))
            t.daemon = True
            with lock:  # started under the lock: run joins only timers that started
                raised.append(r)
                timers.append(t)
                t.start()

        try:
            return run_on_threads(n, body, timeout, on_error)
        except BaseException as e:
            with lock:
                pending = list(timers)
            for t in pending:  # a timer already running finishes its stop first
                t.cancel()
                t.join()
            if raised and len(done) < n:
                # run's timeout ended before the grace did, with a rank still running: that
                # rank would wait out cpu_timeout_sec in its call, the world stays busy.
                stop_if_running(raised[0])
            with lock:
                if stopped:
                    self._closed_by = (f"a rank's function raised {type(e).__name__} in an "
                                       "earlier run() while another rank was still running, "
                                       "which stopped the world so that no rank waited for it")
            raise
        finally:
            if stopped:
                self.abort()

    def close(self):
        """Destroys every comm; the first refusal (a rank still in a call) is raised after
        the others were closed, and the refused comms stay open for abort()."""
        first = None
        for c in self.comms:
            try:
                c.close()
            except GradcompError as e:
                first = first or e
        if first is not None:
            raise first

    def abort(self):
        """Aborts every comm still open: wakes ranks waiting in a call and frees the world."""
        for c in self.comms:
            c.abort()

    def __reduce_ex__(self, protocol):
        # copy.copy would share the comms list (closing either world closes the other's comms),
        # and deepcopy and pickle would copy Comms, which own their handles.
        raise TypeError(f"{self!r} cannot be copied or pickled: its comms own their "
                        "gradcompComm_t handles, which one world frees; pass the CpuWorld itself "
                        "or make a new CpuWorld(nranks, config)")

    def __repr__(self):
        return f"CpuWorld(nranks={len(getattr(self, 'comms', ()))})"

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # Leaving on an exception (a rank failed, run() timed out) may leave ranks inside a
        # call: their comms refuse close, so they are aborted (every rank is in this process).
        _close_leaving(self, exc_type, abort_refused=True)
