"""gradcomp: compressed gradient allreduce over NCCL (ctypes binding of libgradcomp.so).

The library is found through GRADCOMP_LIBRARY (a path to libgradcomp.so), the
package's own lib/ (pip install), a source checkout's build/, or the loader's
path. PyTorch comm hooks live in gradcomp.torch; `python -m gradcomp.info`
says what was found.
"""
from ._lib import (GradcompError, InvalidArgumentError, LibraryNotFoundError, candidate_paths,
                   has, library_path, lib)
from .comm import Comm, CpuWorld, buffer_info
from .config import Config, settings

__all__ = ["Comm", "Config", "CpuWorld", "GradcompError", "InvalidArgumentError",
           "LibraryNotFoundError", "buffer_info", "candidate_paths", "has", "lib", "library_path",
           "settings", "version"]


def version():
    """The library's version as (major, minor, patch)."""
    v = lib().gradcompGetVersion()
    return v // 10000, v // 100 % 100, v % 100
