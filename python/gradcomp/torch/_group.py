"""The process group gradcomp.torch serves, and gradcomp's CPU comm made from it.

backend "nccl" (the default): an NCCL group and CUDA tensors; gradcomp makes its own NCCL
communicator (_nccl.make_comm). backend "cpu", asked for explicitly: a gloo group and CPU
tensors; gradcomp's CPU reference backend with its ranks connected by TCP
(gradcompCommCreateSocket), the same algorithm code and codecs as on the GPU.
"""
import collections
import itertools
import os
import threading
import weakref

import torch.distributed as dist

from .._ports import reserve_port
from ..comm import Comm

BACKENDS = ("nccl", "cpu")

# The store keys' sequence numbers, one counter per process group (its name and ranks): the
# n-th comm made for a group has the same number on every member, whatever comms of other
# groups (overlapping or not) each member made before. A process-wide counter would make a
# rank that first made a comm for group B publish group A's key under another number than
# A's other members wait for: a hang at comm creation.
_seqs = collections.defaultdict(itertools.count)
_seqs_lock = threading.Lock()
# The default process group the counters number the comms of (a weak reference). A new one
# (destroy_process_group, then init_process_group: an in-process restart) starts them from 0:
# its groups are new, named from "0" again, and its members need not have made as many comms
# in the last one (a rank that failed before a comm's creation there, a replacement process),
# which numbered on would make them wait for different keys: a hang at the first comm. A
# restart may keep the store (torch.distributed takes the same store again), so rank 0 deletes
# each key once its comm is made (forget_key): the new world's keys find none of the last one's.
# A creation that failed on rank 0 leaves a failure mark instead (fail_key): a peer still to
# read the key raises at once, where without a key it would wait out the store's timeout (30
# minutes by default).
_seqs_world = None


def _group_name(pg):
    name = getattr(pg, "group_name", None)
    if name is None:
        try:
            name = dist.distributed_c10d._get_process_group_name(pg)
        except Exception:  # noqa: BLE001 - a group torch does not name: its ranks alone
            name = ""
    return str(name)


def store_key(kind, pg, ranks):
    """gradcomp/<kind>/<ranks>/<group name>/<n>: the store key of the n-th comm this process
    makes for the group pg (ranks: its global ranks) since the default process group was made.
    Collective contract: each group's comms are made in the same order on all of its members."""
    global _seqs_world
    ident = ("-".join(map(str, ranks)), _group_name(pg))
    world = dist.distributed_c10d._get_default_group()
    with _seqs_lock:
        if _seqs_world is None or _seqs_world() is not world:
            _seqs.clear()
            _seqs_world = weakref.ref(world)
        n = next(_seqs[(kind,) + ident])
    return f"gradcomp/{kind}/{ident[0]}/{ident[1]}/{n}"


def forget_key(store, key):
    """Deletes a comm's store key (rank 0, once its comm is made: every rank has read the key),
    so that a new world on the same store, numbering its keys from 0 again, finds no stale one.
    A store without delete_key keeps it."""
    try:
        store.delete_key(key)
    except Exception:  # noqa: BLE001 - a store that cannot delete (or is gone): nothing to do
        pass


_FAILED = b"gradcomp: failed: "


def fail_key(store, key, err):
    """Rank 0's comm creation failed: its key says so (a peer still to read it raises at once,
    naming rank 0's error, instead of waiting out the store's timeout)."""
    try:
        store.set(key, _FAILED + str(err).encode("utf-8", "replace")[:500])
    except Exception:  # noqa: BLE001 - the store is gone too: the peers fail on it
        pass


def check_key_value(value, key):
    """A peer's read of rank 0's key: raises where rank 0 marked its creation failed."""
    if value.startswith(_FAILED):
        said = value[len(_FAILED):].decode("utf-8", "replace")
        raise RuntimeError(f"gradcomp: rank 0 of the group could not make the comm of {key} "
                           f"({said}); every rank of the group fails its creation alike")
    return value


_OPT_IN = ("for CPU tensors on a gloo group, make the state with backend='cpu' (gradcomp's CPU "
           "backend over TCP)")


def check_group(process_group, backend="nccl"):
    """The group gradcomp can serve with `backend`: NCCL for "nccl", gloo for "cpu", more than
    one rank. Returns (group, rank, size)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {'|'.join(BACKENDS)}")
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized: call "
                           "dist.init_process_group('nccl') (or 'gloo' with backend='cpu') before "
                           "making a GradcompState")
    pg = process_group if process_group is not None else dist.group.WORLD
    if type(pg).__name__ == "DeviceMesh":
        raise ValueError(f"process_group={pg!r} is a DeviceMesh, not a process group: pass the "
                         "group of the mesh dimension the collective runs over "
                         "(mesh['replicate'].get_group(), mesh['shard'].get_group(); a 1-D "
                         "mesh: mesh.get_group())")
    if isinstance(pg, int) and pg == dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError(f"this rank (global rank {dist.get_rank()}) is not a member of the "
                         "process group given: dist.new_group and dist.split_group return "
                         "GroupMember.NON_GROUP_MEMBER to the ranks outside the group; make the "
                         "GradcompState, and register its hook, on the group's members only")
    if not isinstance(pg, dist.ProcessGroup):
        # The model given first (GradcompState(model)): torch's own refusal prints the model
        # and says "not initialized in the world group map", naming no argument.
        model = (": the model goes in module= (GradcompState(module=model, ...))"
                 if hasattr(pg, "named_parameters") else "")
        raise ValueError(f"process_group is a {type(pg).__name__}, not a torch.distributed "
                         "process group: pass the group the model's gradients are reduced over "
                         f"(dist.new_group(...)), or None for the default group{model}")
    have = str(dist.get_backend(pg)).lower()
    if backend == "nccl" and "nccl" not in have:
        raise ValueError(f"gradcomp's hooks need an NCCL process group, and this one is "
                         f"'{have}': init_process_group('nccl') (or pass an NCCL group) and keep "
                         f"the model's gradients on CUDA devices; or, {_OPT_IN}")
    if backend == "cpu" and "gloo" not in have:
        raise ValueError(f"backend='cpu' needs a gloo process group (the hook's full-precision "
                         f"part is a torch.distributed all_reduce of CPU tensors), and this one "
                         f"is '{have}': init_process_group('gloo'), or leave backend='nccl' for "
                         "CUDA tensors")
    size = dist.get_world_size(pg)
    if size < 2:
        raise ValueError(f"the process group has {size} rank: there is nothing to reduce, so "
                         "gradcomp would only add work; register no comm hook when "
                         "world_size == 1")
    return pg, dist.get_rank(pg), size


def _root_host(store):
    """Where rank 0 listens: MASTER_ADDR (env://), else the TCP store's host; where that is
    another host's (the group's rank 0 is not on the store's host: a subgroup, a split group),
    this host's own address on the way there (_own_address). A store of no host (file://'s
    FileStore) gives nothing to go by: then the address the group's other machines can reach
    (_reachable_address), not loopback."""
    host = os.environ.get("MASTER_ADDR")
    while host is None and store is not None:
        host = getattr(store, "host", None)
        store = getattr(store, "underlying_store", None)
    host = _own_address(host) if host else _reachable_address()
    # An IPv6 literal goes in brackets: gradcomp reads "[::1]:port" unambiguously.
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _own_address(host):
    """host where it is one of this machine's addresses (gradcomp's root listens on the address
    it is given), else the address this machine reaches host from (the route's source: the
    peers reach this machine there as they reach the store's host); host itself where neither
    can be told (then the root's listen fails, naming the address)."""
    import socket

    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):  # a name that does not resolve, or cannot be encoded
        return host
    # The first IPv4 or IPv6 address, as gradcomp resolves the root's host.
    family, _, _, _, addr = next((i for i in infos if i[0] in (socket.AF_INET, socket.AF_INET6)),
                                 (None,) * 5)
    if family is None:
        return host
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((addr[0], 0) + tuple(addr[2:]))
            return host  # this machine's
        except OSError:
            pass
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((addr[0], 9) + tuple(addr[2:]))  # sends nothing: picks the route
            return s.getsockname()[0]
        except OSError:
            return host


def _reachable_address():
    """This machine's address for peers on other machines, where no host was given (file://):
    as gloo picks its own (the group is a gloo group, whose ranks reach each other so), the
    first interface of GLOO_SOCKET_IFNAME; else the host name's address where it is this
    machine's and not loopback; else the address of the default route's interface; else
    loopback (a machine with no network: its ranks are all on it). Loopback would leave a
    group spanning machines connecting to their own."""
    import ipaddress
    import socket

    ifname = os.environ.get("GLOO_SOCKET_IFNAME")
    if ifname:
        name = ifname.split(",")[0].strip()
        addr = _interface_address(name)
        if addr is None:
            raise ValueError(f"GLOO_SOCKET_IFNAME={ifname!r}: interface {name!r} has no IPv4 or "
                             "global IPv6 address here (ip addr lists this machine's): name an "
                             "interface the group's machines reach each other on")
        return addr
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        infos = []
    for family, _, _, _, sa in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(sa[0].split("%")[0])
        if ip.is_loopback or ip.is_link_local:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((sa[0], 0) + tuple(sa[2:]))
                return sa[0]
            except OSError:
                pass
    name = _default_route_interface()
    addr = _interface_address(name) if name else None
    return addr or "127.0.0.1"


def _default_route_interface():
    """The interface of the IPv4 default route (/proc/net/route), or None."""
    try:
        with open("/proc/net/route") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if len(cols) > 7 and cols[1] == "00000000" and cols[7] == "00000000":
                    return cols[0]
    except OSError:
        pass
    return None


def _interface_address(name):
    """The IPv4 address of interface `name`, else its first global IPv6 address, or None."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            got = fcntl.ioctl(s.fileno(), 0x8915,  # SIOCGIFADDR
                              struct.pack("256s", name.encode("utf-8", "replace")[:15]))
            return socket.inet_ntoa(got[20:24])
        except OSError:
            pass
    try:
        with open("/proc/net/if_inet6") as f:  # address, index, prefix, scope, flags, name
            for line in f:
                cols = line.split()
                if len(cols) == 6 and cols[5] == name and cols[3] == "00":  # global scope
                    return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(cols[0]))
    except OSError:
        pass
    return None


def make_socket_comm(process_group, config):
    """gradcompCommCreateSocket for every rank of the group, rank 0's address through the
    group's store. Collective over the group (the hooks call it at their first compressed
    call, which every rank reaches together)."""
    pg, rank, size = check_group(process_group, "cpu")
    ranks = dist.get_process_group_ranks(pg)
    key = store_key("socket_root", pg, ranks)
    store = dist.distributed_c10d._get_default_store()
    if rank != 0:
        # Waits (up to the store's timeout) for rank 0.
        root = check_key_value(store.get(key), key).decode()
        return Comm.socket(size, rank, root, config)
    # Free, outside the ephemeral range and held (gradcomp._ports) until rank 0 listens there:
    # no concurrent port choice of another job can take it meanwhile.
    with reserve_port() as held:
        try:
            root = f"{_root_host(store)}:{held.port}"
        except Exception as e:  # a bad GLOO_SOCKET_IFNAME: the peers fail with it, not waiting
            fail_key(store, key, e)
            raise
        store.set(key, root)
        try:
            comm = Comm.socket(size, rank, root, config)  # returns once every rank reached it
        except Exception as e:
            fail_key(store, key, e)
            raise
        forget_key(store, key)
        return comm
