"""gradcomp's own NCCL communicator, made from a torch.distributed process group."""
import ctypes

import torch
import torch.distributed as dist

from .. import _types as T
from ..comm import Comm
from ..info import nccl_library
from ._group import check_group, check_key_value, fail_key, forget_key, store_key


class _Nccl:
    """The few NCCL entry points gradcomp needs from the libnccl torch loaded."""

    def __init__(self):
        path = nccl_library()
        if path is None:
            raise RuntimeError("no libnccl found in this process: gradcomp.torch needs a PyTorch "
                               "built with NCCL (torch.cuda.nccl.version() should work)")
        self.path = path
        self.lib = ctypes.CDLL(path)
        L = self.lib
        L.ncclGetUniqueId.argtypes = [ctypes.POINTER(T.NcclUniqueId)]
        L.ncclCommInitRank.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int,
                                       T.NcclUniqueId, ctypes.c_int]
        L.ncclCommDestroy.argtypes = [ctypes.c_void_p]
        L.ncclCommAbort.argtypes = [ctypes.c_void_p]
        L.ncclGetErrorString.restype = ctypes.c_char_p
        L.ncclGetErrorString.argtypes = [ctypes.c_int]

    def check(self, res, what):
        if res != 0:
            msg = (self.lib.ncclGetErrorString(res) or b"").decode()
            raise RuntimeError(f"{what} failed: NCCL error {res} ({msg}) with {self.path}")


_nccl = None


def nccl():
    global _nccl
    if _nccl is None:
        _nccl = _Nccl()
    return _nccl


def share_unique_id(store, key, rank):
    """ncclGetUniqueId on rank 0, the same 128 bytes on every rank through the store."""
    uid = T.NcclUniqueId()
    if rank == 0:
        lib = nccl()
        lib.check(lib.lib.ncclGetUniqueId(ctypes.byref(uid)), "ncclGetUniqueId")
        # The field reads as bytes cut at the first NUL: copy the raw 128 bytes.
        store.set(key, ctypes.string_at(ctypes.addressof(uid), ctypes.sizeof(uid)))
    else:
        got = check_key_value(store.get(key), key)  # waits (up to the store's timeout)
        if len(got) != ctypes.sizeof(uid):
            raise RuntimeError(f"the store holds {len(got)} bytes under {key}, not an NCCL "
                               f"unique id ({ctypes.sizeof(uid)} bytes)")
        ctypes.memmove(ctypes.addressof(uid), got, len(got))
    return uid


def make_comm(process_group, device, config):
    """ncclGetUniqueId on group rank 0, the id through the store, ncclCommInitRank, gradcompCommCreate.

    Collective over the group: every rank must call it (the hooks call it at
    their first compressed call, which every rank reaches together).
    Returns (Comm, ncclComm address).
    """
    pg, rank, size = check_group(process_group)
    lib = nccl()
    ranks = dist.get_process_group_ranks(pg)
    key = store_key("nccl_id", pg, ranks)
    store = dist.distributed_c10d._get_default_store()
    uid = share_unique_id(store, key, rank)
    handle = ctypes.c_void_p()
    try:
        with torch.cuda.device(device):
            lib.check(lib.lib.ncclCommInitRank(ctypes.byref(handle), size, uid, rank),
                      f"ncclCommInitRank (rank {rank} of {size})")
            try:
                comm = Comm.create(handle.value, config)
            except Exception:
                # Aborted, not destroyed: a peer may still be inside the creation's collectives
                # (gradcompCommCreate's set-up exchange, its splits), which a destroy could
                # wait on.
                lib.lib.ncclCommAbort(handle)
                raise
    except Exception as e:
        if rank == 0:  # a peer still to read the id raises at once, not at the store's timeout
            fail_key(store, key, e)
        raise
    if rank == 0:  # every rank has read the id: its comm is made
        forget_key(store, key)
    return comm, handle.value


def destroy_nccl(handle):
    if handle:
        nccl().lib.ncclCommDestroy(ctypes.c_void_p(handle))


def abort_nccl(handle, inside=None):
    """ncclCommAbort through the libnccl the communicator was made with: its kernels stop, and
    nothing waits on a peer. `inside()` (gradcomp's Comm.stop, which aborts the comm's own
    sub-communicators) runs in the same NCCL group, which NCCL 2.22 and later abort together:
    separate aborts can each wait for kernels the other's communicator holds, stuck on the dead
    peer (docs/reliability.md). It runs first: a non-blocking communicator (NCCL_COMM_BLOCKING=0)
    may be polled by a gradcomp call on another thread, which must end before NCCL's abort joins
    the same work (include/gradcomp.h, gradcompCommStop)."""
    if not handle:
        if inside is not None:
            inside()
        return
    lib = nccl()
    lib.lib.ncclGroupStart()
    res = None
    try:
        try:
            if inside is not None:
                inside()
        finally:  # NCCL's abort whatever the stop did
            res = lib.lib.ncclCommAbort(ctypes.c_void_p(handle))
    finally:
        end = lib.lib.ncclGroupEnd()  # where NCCL 2.22 and later run the grouped aborts
    lib.check(res, "ncclCommAbort")
    lib.check(end, "ncclGroupEnd (ending the abort's group)")
