"""Finds and loads libgradcomp.so and declares the C API's signatures.

Nothing here reimplements the library: every function is the C symbol with
its ctypes signature. ctypes releases the GIL around each call, so CPU-world
ranks driven from Python threads run in parallel.
"""
import ctypes
import ctypes.util
import glob
import importlib.util
import os
import sys
import threading

from . import _types as T

c_void_p, c_size_t, c_int, c_float = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_float
c_uint64, c_uint32 = ctypes.c_uint64, ctypes.c_uint32
P = ctypes.POINTER
R = ctypes.c_int  # gradcompResult_t
E = T.c_enum

# name: (restype, argtypes). One line per function of include/gradcomp.h and
# include/gradcomp/{reference,sparse,elias}.h.
SIGNATURES = {
    "gradcompGetErrorString": (ctypes.c_char_p, [R]),
    "gradcompGetLastError": (ctypes.c_char_p, []),
    "gradcompGetVersion": (c_int, []),
    "gradcompConfigInitSized": (R, [c_void_p, c_size_t]),
    "gradcompConfigFromEnvSized": (R, [c_void_p, c_size_t]),
    "gradcompConfigInit": (R, [c_void_p]),
    "gradcompConfigFromEnv": (R, [c_void_p]),
    "gradcompConfigValidate": (R, [c_void_p]),
    "gradcompCommCreate": (R, [c_void_p, c_void_p, P(c_void_p)]),
    "gradcompCommCreateCpu": (R, [c_int, c_void_p, P(c_void_p)]),
    "gradcompCommDestroy": (R, [c_void_p]),
    "gradcompCommRank": (R, [c_void_p, P(c_int)]),
    "gradcompCommSize": (R, [c_void_p, P(c_int)]),
    "gradcompAllReduce": (R, [c_void_p, c_void_p, c_size_t, E, E, c_void_p, c_void_p]),
    "gradcompAllReduceKeyed": (R, [c_void_p, c_void_p, c_size_t, E, E, c_void_p, c_void_p,
                                   c_uint64]),
    "gradcompCommResetState": (R, [c_void_p]),
    "gradcompCommRetune": (R, [c_void_p, c_void_p]),
    "gradcompCommStateSize": (R, [c_void_p, P(c_size_t)]),
    "gradcompCommSaveState": (R, [c_void_p, c_void_p, c_size_t]),
    "gradcompCommLoadState": (R, [c_void_p, c_void_p, c_size_t]),
    "gradcompGetStatsSized": (R, [c_void_p, c_void_p, c_size_t]),
    "gradcompGetStats": (R, [c_void_p, c_void_p]),
    "gradcompQsgdEncode": (R, [c_void_p, E, c_size_t, c_int, c_int, c_uint64, c_void_p,
                               c_void_p]),
    "gradcompQsgdEncodeEF": (R, [c_void_p, E, c_void_p, c_size_t, c_int, c_int, c_uint64,
                                 c_void_p, c_void_p]),
    "gradcompQsgdDecode": (R, [c_void_p, c_size_t, c_int, c_int, c_void_p, c_int, c_void_p]),
    # reference.h
    "gradcompQsgdEncodedBytes": (c_size_t, [c_size_t, c_int, c_int]),
    "gradcompQsgdEncodeHost": (R, [c_void_p, c_size_t, c_int, c_int, c_uint64, c_void_p]),
    "gradcompQsgdDecodeHost": (R, [c_void_p, c_size_t, c_int, c_int, c_void_p, c_int]),
    "gradcompQsgdEncodeTypedHost": (R, [c_void_p, E, c_void_p, c_size_t, c_int, c_int, c_uint64,
                                        c_void_p]),
    # sparse.h
    "gradcompTopkSlots": (R, [c_size_t, c_float, c_float, c_int, P(c_size_t)]),
    "gradcompTopkSelectHost": (R, [c_void_p, c_size_t, c_float, c_float, c_float, c_int,
                                   c_uint64, c_void_p, P(c_uint64)]),
    "gradcompTopkWorkspaceBytes": (R, [c_size_t, c_float, c_float, c_float, c_int,
                                       P(c_size_t)]),
    "gradcompTopkSelect": (R, [c_void_p, c_size_t, c_float, c_float, c_float, c_int, c_uint64,
                               c_void_p, c_void_p, c_void_p, c_size_t, c_void_p]),
    # elias.h
    "gradcompEliasMaxEncodedBytes": (c_size_t, [c_size_t, P(T.EliasParams)]),
    "gradcompEliasHeaderBytes": (c_size_t, [c_size_t, c_int]),
    "gradcompEliasEncodedBytes": (R, [c_void_p, c_size_t, c_int, P(c_size_t)]),
    "gradcompEliasEncodeHost": (R, [c_void_p, E, c_void_p, c_size_t, P(T.EliasParams), c_uint64,
                                    c_void_p, c_size_t, P(c_size_t)]),
    "gradcompEliasDecodeHost": (R, [c_void_p, c_size_t, c_size_t, P(T.EliasParams), c_void_p,
                                    c_int]),
    "gradcompEliasWorkspaceBytes": (R, [c_size_t, c_int, P(c_size_t)]),
    "gradcompEliasEncode": (R, [c_void_p, E, c_void_p, c_size_t, P(T.EliasParams), c_uint64,
                                c_void_p, c_void_p, c_size_t, c_void_p]),
    "gradcompEliasDecode": (R, [c_void_p, c_size_t, P(T.EliasParams), c_void_p, c_int,
                                c_void_p]),
}

# Bound only when the loaded library has them (newer than some builds).
OPTIONAL_SIGNATURES = {
    "gradcompCommForgetBuffer": (R, [c_void_p, c_void_p]),
    "gradcompCommForgetKey": (R, [c_void_p, c_uint64]),
    "gradcompCommAbort": (R, [c_void_p]),
    "gradcompCommStop": (R, [c_void_p]),
    "gradcompCommCreateSocket": (R, [c_int, c_int, ctypes.c_char_p, c_void_p, P(c_void_p)]),
    "gradcompReduceScatter": (R, [c_void_p, c_void_p, c_size_t, E, E, c_void_p, c_void_p]),
    "gradcompReduceScatterKeyed": (R, [c_void_p, c_void_p, c_size_t, E, E, c_void_p, c_void_p,
                                       c_uint64]),
    "gradcompQsgdEncodeEFRounding": (R, [c_void_p, E, c_void_p, c_size_t, c_int, c_int, c_uint64,
                                         E, c_void_p, c_void_p]),
    "gradcompQsgdEncodeEFRoundingHost": (R, [c_void_p, E, c_void_p, c_size_t, c_int, c_int,
                                             c_uint64, E, c_void_p]),
    "gradcompQsgdEncodeEFLevels": (R, [c_void_p, E, c_void_p, c_size_t, c_int, c_int, c_uint64,
                                       E, E, c_void_p, c_void_p]),
    "gradcompQsgdEncodeEFLevelsHost": (R, [c_void_p, E, c_void_p, c_size_t, c_int, c_int,
                                           c_uint64, E, E, c_void_p]),
    "gradcompEliasDecodeBounded": (R, [c_void_p, c_size_t, c_size_t, P(T.EliasParams), c_void_p,
                                       c_int, c_void_p]),
    "gradcompCommLayout": (R, [c_void_p, P(c_int), P(c_int)]),
    "gradcompCommSetGradScale": (R, [c_void_p, c_float, c_void_p]),
    "gradcompCommGetGradScale": (R, [c_void_p, P(c_float)]),
    "gradcompEnvName": (ctypes.c_char_p, [c_int]),
}


class GradcompError(RuntimeError):
    """A gradcomp call failed; the message is the library's last-error sentence."""

    def __init__(self, message, result=None):
        super().__init__(message)
        self.result = result
        self.result_name = T.RESULTS[result] if result is not None and 0 <= result < len(
            T.RESULTS) else None


class InvalidArgumentError(GradcompError, ValueError):
    """gradcompInvalidArgument: a value out of range, named in the message."""


class LibraryNotFoundError(GradcompError):
    """libgradcomp.so could not be found or loaded."""


_lock = threading.Lock()
_lib = None
_path = None


def candidate_paths():
    """Where the library is looked for, in order."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = []
    env = os.environ.get("GRADCOMP_LIBRARY")
    if env:
        return [env]
    paths += sorted(glob.glob(os.path.join(here, "lib", "libgradcomp.so*")))
    # Running from a source checkout: python/gradcomp -> the repository's builds.
    repo = os.path.dirname(os.path.dirname(here))
    for build in ("build", "build-gpu"):
        p = os.path.join(repo, build, "libgradcomp.so")
        if os.path.exists(p):
            paths.append(p)
    found = ctypes.util.find_library("gradcomp")
    paths.append(found or "libgradcomp.so.0")
    return paths


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _loaded_file(cdll, name):
    """The file the dynamic loader mapped for cdll (dladdr of one of its functions), which a
    bare name such as find_library's 'libgradcomp.so.0' does not say; name when unknown."""
    try:
        dladdr = ctypes.CDLL(None).dladdr
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        dladdr.restype = ctypes.c_int
        info = _DlInfo()
        addr = ctypes.cast(cdll.gradcompGetErrorString, ctypes.c_void_p).value
        if dladdr(addr, ctypes.byref(info)) and info.dli_fname:
            return os.path.realpath(os.fsdecode(info.dli_fname))
    except (AttributeError, OSError, ValueError):
        pass
    return name


def _declare(cdll):
    missing = [n for n in SIGNATURES if not hasattr(cdll, n)]
    if len(missing) == len(SIGNATURES):
        raise LibraryNotFoundError(
            f"{_path} has none of gradcomp's C API: it is not libgradcomp.so (gradcomp's "
            "LD_PRELOAD library, libgradcomp_preload.so, exports only the NCCL functions it "
            "interposes); point GRADCOMP_LIBRARY at libgradcomp.so")
    if missing:
        raise LibraryNotFoundError(
            f"{_path} lacks {', '.join(missing)}: it is not a libgradcomp this binding knows; "
            "rebuild it from the same checkout as the Python package")
    for name, (res, args) in list(SIGNATURES.items()) + list(OPTIONAL_SIGNATURES.items()):
        if hasattr(cdll, name):
            fn = getattr(cdll, name)
            fn.restype, fn.argtypes = res, args


def _check_config_size(cdll):
    """The library must know the mirror's layout.

    gradcompConfigInitSized takes the mirror's size as the C header's macro
    passes sizeof: a mirror of this or an earlier header works (the library
    writes only its bytes), and one the library does not know (ahead of the
    loaded library) is refused with the library's sentence naming both sizes.
    """
    mine = ctypes.sizeof(T.ConfigStruct)
    buf = T.ConfigStruct()
    res = cdll.gradcompConfigInitSized(ctypes.byref(buf), mine)
    if res != 0:
        sentence = (cdll.gradcompGetLastError() or b"").decode(errors="replace")
        raise GradcompError(
            f"the Python mirror of gradcompConfig_t (python/gradcomp/_types.py CONFIG_FIELDS, "
            f"{mine} bytes) does not fit {_path}: {sentence}", res)


def _torch_first():
    """Imports an installed PyTorch before libgradcomp.

    libgradcomp needs libnccl.so.2 and the dynamic loader keeps the first
    libnccl.so.2 of a process for everyone: loaded first, gradcomp's would be
    the one torch gets (and a torch built against a newer NCCL then fails to
    import). Loaded second, gradcomp uses torch's, which is also the one its
    NCCL communicators must come from.
    """
    if "torch" in sys.modules:
        return
    try:
        if importlib.util.find_spec("torch") is not None:
            import torch  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken torch must not break the binding
        pass


def lib():
    """The loaded library (loaded once, on first use)."""
    global _lib, _path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        _torch_first()
        if os.environ.get("GRADCOMP_LIBRARY") == "":
            # As the library's own GRADCOMP_* settings: set but empty is an error, not unset.
            raise LibraryNotFoundError("GRADCOMP_LIBRARY is set but empty: point it at a built "
                                       "libgradcomp.so, or unset it to search the package's "
                                       "lib/, the source checkout's builds and the loader's path")
        tried = []
        for p in candidate_paths():
            try:
                cdll = ctypes.CDLL(p)
            except OSError as e:
                tried.append(f"{p} ({e})")
                continue
            _path = _loaded_file(cdll, p)
            _declare(cdll)
            _check_config_size(cdll)
            _lib = cdll
            return _lib
        hint = ("GRADCOMP_LIBRARY is set but cannot be loaded: point it at a built "
                "libgradcomp.so" if os.environ.get("GRADCOMP_LIBRARY") else
                "build the library (cmake --build build --target gradcomp) and set "
                "GRADCOMP_LIBRARY=/path/to/libgradcomp.so, or pip install the package from the "
                "repository")
        raise LibraryNotFoundError(f"libgradcomp.so not found: {hint}. Tried: " + "; ".join(tried))


def library_path():
    lib()
    return _path


def has(name):
    """True when the loaded library exports `name` (optional symbols)."""
    return hasattr(lib(), name)


def last_error():
    return (lib().gradcompGetLastError() or b"").decode(errors="replace")


def check(result, what=None):
    """Raises the library's last-error sentence when result is not gradcompSuccess.

    Call it on the thread that made the call: the last error is per thread.
    """
    if result == 0:
        return
    msg = last_error() or (lib().gradcompGetErrorString(result) or b"").decode()
    if what:
        msg = f"{what}: {msg}"
    cls = InvalidArgumentError if result == 1 else GradcompError
    raise cls(msg, result)
