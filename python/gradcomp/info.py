"""python -m gradcomp.info: the library, NCCL and GPU this process finds."""
import argparse
import ctypes
import os
import re
import sys


def nccl_library():
    """Path of the libnccl this process would use: one already mapped (torch's), else the
    loader's libnccl.so.2, else the nvidia-nccl wheel's. None when there is none."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if "/" in line else ""
                if "libnccl.so" in os.path.basename(path):
                    return path
    except OSError:
        pass
    for cand in _wheel_nccl() + ["libnccl.so.2"]:
        try:
            ctypes.CDLL(cand)
            return cand
        except OSError:
            continue
    return None


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def nccl_interposer():
    """Path of gradcomp's LD_PRELOAD library when it is the ncclAllReduce this process's
    libraries call (torch's among them), else None. NCCL's own file defines pncclAllReduce too;
    the interposer does not."""
    try:
        process = ctypes.CDLL(None)
        fn = process.ncclAllReduce  # none: no NCCL in the global scope, nothing interposed
        dladdr = process.dladdr
    except (AttributeError, OSError):
        return None
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    dladdr.restype = ctypes.c_int
    info = _DlInfo()
    if not dladdr(ctypes.cast(fn, ctypes.c_void_p).value, ctypes.byref(info)) or not info.dli_fname:
        return None
    path = os.path.realpath(os.fsdecode(info.dli_fname))
    try:
        if hasattr(ctypes.CDLL(path), "pncclAllReduce"):
            return None  # NCCL itself
    except OSError:
        return None
    return path if "gradcomp" in os.path.basename(path) else None


RTLD_DI_ORIGIN = 6  # <dlfcn.h>


def loaded_origin(path):
    """$ORIGIN of the loaded object at path, as the loader expands it in that object's dlopen
    calls: the object's l_origin (dlinfo RTLD_DI_ORIGIN), the folder it was loaded from. None
    when the object is not loaded or the loader cannot say."""
    try:
        handle = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)._handle
        dlinfo = ctypes.CDLL(None).dlinfo
    except (OSError, AttributeError):
        return None
    dlinfo.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    dlinfo.restype = ctypes.c_int
    origin = ctypes.create_string_buffer(4096)  # PATH_MAX, what RTLD_DI_ORIGIN may fill
    if dlinfo(handle, RTLD_DI_ORIGIN, origin) != 0 or not origin.value:
        return None
    return os.fsdecode(origin.value)


# The dynamic string tokens dlopen expands in a path (ld.so(8)): $NAME ending at a character
# that cannot continue a name (not a letter, digit or '_': glibc's is_dst), or ${NAME}.
_DST = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")


def _wheel_nccl():
    try:
        import nvidia.nccl as m  # the package PyTorch depends on

        return [os.path.join(p, "lib", "libnccl.so.2") for p in m.__path__]
    except ImportError:
        return []


def nccl_version(path):
    try:
        lib = ctypes.CDLL(path)
        v = ctypes.c_int()
        if lib.ncclGetVersion(ctypes.byref(v)) != 0:
            return None
        v = v.value
        # NCCL_VERSION(X,Y,Z): X*10000 + Y*100 + Z since 2.9.
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    except (OSError, AttributeError):
        return None


def gpus():
    try:
        import torch

        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return []
    except Exception:  # noqa: BLE001 - a torch that fails to load (OSError) falls back too
        pass
    try:
        cudart = ctypes.CDLL("libcudart.so")
        n = ctypes.c_int()
        return [f"device {i}" for i in range(n.value)] if cudart.cudaGetDeviceCount(
            ctypes.byref(n)) == 0 else []
    except OSError:
        return None


def _shown(value):
    """A value much as the library's sentences show it: bare, or quoted with a blank, a control
    character, a '"' or a character past ASCII written out ("fuse ")."""
    if value and all(" " < c < "\x7f" and c != '"' for c in value):
        return value
    return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'


def process_settings_taken_otherwise(unchecked=None):
    """The process-level settings set (gradcompConfigFromEnv does not read them) that the
    library or the preload would not take as given: each warns where it is read and uses its
    default, so a Config from the environment cannot tell. One sentence each; one for each
    setting that cannot be checked from this process goes to the list unchecked."""
    out = []
    debug = os.environ.get("GRADCOMP_DEBUG")
    # Unset or empty is off, as an empty NCCL_DEBUG is; the levels are case-insensitive.
    if debug and debug.upper() not in ("NONE", "OFF", "WARN", "INFO", "TRACE"):
        out.append(f"GRADCOMP_DEBUG={_shown(debug)} is not one of NONE|OFF|WARN|INFO|TRACE: the "
                   "library warns and logs at WARN")
    group = os.environ.get("GRADCOMP_GROUP")
    if group == "":
        out.append("GRADCOMP_GROUP is set but empty: the preload warns and uses defer")
    elif group is not None and group.lower() not in ("defer", "fuse", "pass"):
        out.append(f"GRADCOMP_GROUP={_shown(group)} is not defer, fuse or pass: the preload "
                   "warns and uses defer")
    nccl = os.environ.get("GRADCOMP_NCCL_LIBRARY")
    if nccl == "":
        out.append("GRADCOMP_NCCL_LIBRARY is set but empty: the preload warns and uses "
                   "libnccl.so.2")
    elif nccl is not None and "/" in nccl:
        # A path (a name without '/' is the loader's to search): dlopen cannot open a file that
        # is not there, and the preload warns that it cannot open it (nccl_dlsym.cc).
        path, expanded = _nccl_library_path(nccl, unchecked)
        if path is not None and not os.path.exists(path):
            out.append(f"GRADCOMP_NCCL_LIBRARY={_shown(nccl)} does not exist{expanded}: the "
                       "preload warns that it cannot open it and looks for pnccl* symbols in "
                       "the process")
    return out


def _nccl_library_path(nccl, unchecked):
    """The file dlopen opens for a GRADCOMP_NCCL_LIBRARY path, and how its tokens were
    expanded (" ($ORIGIN is ...: file)", or "" with none). The preload's resolve()
    (nccl_dlsym.cc) calls dlopen, so $ORIGIN is the preload's folder: known when this process
    has the preload loaded (under LD_PRELOAD). Otherwise, and for $LIB and $PLATFORM (the
    loader's own), the file is not known here: (None, "") with a sentence in unchecked."""
    tokens = {m.group(1) or m.group(2) for m in _DST.finditer(nccl)}
    if not tokens:
        return nccl, ""
    other = sorted(tokens - {"ORIGIN"})
    preload = nccl_interposer()
    origin = loaded_origin(preload) if preload else None
    if other or origin is None:
        why = (f"${other[0]} is the loader's own, not known here" if other else
               "$ORIGIN is the folder of the preload library that opens it (dlopen in "
               "libgradcomp_preload.so), which this process has not loaded (run this under "
               "the program's LD_PRELOAD to check it)")
        if unchecked is not None:
            unchecked.append(f"GRADCOMP_NCCL_LIBRARY={_shown(nccl)} is not checked: {why}")
        return None, ""
    path = _DST.sub(lambda m: origin, nccl)
    return path, f" ($ORIGIN is {_shown(origin)}, the folder the preload was loaded from: " \
                 f"{_shown(path)})"


def settings_line(gradcomp):
    """Prints the GRADCOMP_* variables set that the library reads and whether it takes them,
    as gradcompConfigFromEnv does for every comm (False when it refuses them: every comm made
    from the environment would fail), then the other GRADCOMP_* variables set, which it does
    not read (a build's or a test's, or a misspelt setting). GRADCOMP_LIBRARY is aside: the
    line above shows it."""
    from gradcomp.config import env_names

    set_ = sorted(k for k in os.environ if k.startswith("GRADCOMP_") and k != "GRADCOMP_LIBRARY")
    known = env_names()
    if known is None:  # a library without gradcompEnvName: it cannot say which it reads
        names, unread = set_, []
    else:
        names = [k for k in set_ if k in known]
        unread = [k for k in set_ if k not in known]
    shown = ", ".join(f"{k}={os.environ[k]}" for k in names)
    ok = True
    unchecked = []
    otherwise = "".join(f"; {why}" for why in process_settings_taken_otherwise(unchecked))
    try:
        gradcomp.Config()
    except gradcomp.GradcompError as e:
        print(f"settings: {shown}: refused: {e}{otherwise}")
        ok = False
    else:
        if otherwise:
            print(f"settings: {shown}: not taken as given{otherwise}")
            ok = False
        else:
            print(f"settings: {shown}: accepted" if names else
                  "settings: the defaults (no GRADCOMP_* set)" if not set_ else
                  "settings: the defaults (none of the library's GRADCOMP_* settings set)")
    for why in unchecked:
        print(why)
    if unread:
        print(f"not read by the library: {', '.join(f'{k}={os.environ[k]}' for k in unread)} "
              f"(not settings of docs/env.md: a build's or a test's variable, or a misspelling)")
    return ok


def main(argv=None):
    # No arguments: --help says what it prints, and anything else is refused (exit 2) rather
    # than ignored, as a misspelt option would be.
    argparse.ArgumentParser(
        prog="python -m gradcomp.info",
        description="Prints the libgradcomp.so this process loads (GRADCOMP_LIBRARY, else the "
        "package's lib/, a source checkout's builds, the loader's path), the GRADCOMP_* "
        "settings set and whether the library takes them, NCCL, the GPUs and torch. Exit 0; "
        "1 when the library cannot be loaded or refuses the settings (or would use a default in "
        "place of GRADCOMP_DEBUG's, GRADCOMP_GROUP's or GRADCOMP_NCCL_LIBRARY's value); 2 for an "
        "argument (it takes none).").parse_args(argv)
    import gradcomp

    ok = True
    try:
        path = gradcomp.library_path()
        major, minor, patch = gradcomp.version()
        yes = lambda name: "yes" if gradcomp.has(name) else "no"  # noqa: E731
        # The FSDP2 reduce-scatter needs the keyed entry point (fsdp.py).
        print(f"libgradcomp: {path} (version {major}.{minor}.{patch}); reduce-scatter (FSDP2): "
              f"{yes('gradcompReduceScatterKeyed')}; CPU backend over TCP (backend='cpu'): "
              f"{yes('gradcompCommCreateSocket')}")
    except gradcomp.GradcompError as e:
        ok = False
        print(f"libgradcomp: {e}")
    if ok:
        ok = settings_line(gradcomp)
    nccl = nccl_library()
    if nccl:
        print(f"NCCL: {nccl} (version {nccl_version(nccl) or 'unknown'})")
    else:
        print("NCCL: not found (pip install nvidia-nccl-cu13, or install libnccl2)")
    g = gpus()
    if g is None:
        print("GPU: unknown (neither torch nor libcudart.so is importable)")
    else:
        print(f"GPU: {', '.join(g) if g else 'none visible'}")
    try:
        import torch

        print(f"torch: {torch.__version__} (CUDA {torch.version.cuda}, NCCL "
              f"{'.'.join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else 'n/a'})")
    except ImportError:
        print("torch: not installed (gradcomp.torch needs it)")
    except Exception as e:  # noqa: BLE001 - only informative
        print(f"torch: {e}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left early (python -m gradcomp.info | head -1): no traceback, and none
        # at exit either (Python flushes stdout again there).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)
