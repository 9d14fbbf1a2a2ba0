"""TCP ports to listen on, chosen where the kernel's own choices cannot take them, and kept from
every other chooser of this kind until the listener that needs them is up."""
import random
import socket


def _ephemeral_start():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host, port):
    s = socket.socket()
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _hold(port):
    """A socket bound to port on every address, or None where something holds the port.

    The bind is exclusive (no SO_REUSEADDR yet): of two choosers that drew the same port, one
    gets it. SO_REUSEADDR set afterwards lets the listener that needs the port (the torch
    store, gradcomp's root: both set it) bind and listen there while this socket stays bound;
    a chooser's test bind (without it) still fails. Never listening, it takes no connection.
    """
    s = socket.socket()
    try:
        s.bind(("", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return s
    except OSError:
        s.close()
        return None


class Reservation:
    """Ports port .. port+span-1, held until release() (or the end of a with block)."""

    def __init__(self, port, socks):
        self.port = port
        self._socks = socks

    def release(self):
        for s in self._socks:
            s.close()
        self._socks = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def reserve_port(host="", span=1):
    """A Reservation of p .. p+span-1: free now, below the kernel's ephemeral range, and held.

    The caller's listener (often in another process: a rank the caller launches) binds it
    moments or seconds later. A port from bind(0) is an ephemeral one, which any socket that
    connects or binds to port 0 meanwhile can be given (gloo's pairs, a store's clients,
    another test's listeners). Below the range only another explicit choice can take it, and
    every choice here (and the C++ tests' freePort, tests/common/loopback.h) first binds the
    port without SO_REUSEADDR, which fails while the reservation holds it: two tests of a
    parallel run never get the same port, whatever their timing. Keep the reservation until
    the listener is up (a launch's end is fine), then release it.
    """
    start = _ephemeral_start()
    lo, hi = (10000, start) if start > 11000 else (start + 1000, 65535)
    rng = random.SystemRandom()
    for _ in range(200):
        p = rng.randrange(lo, hi - span)
        socks = []
        for q in range(p, p + span):
            s = _hold(q) if _bindable(host, q) else None
            if s is None:
                break
            socks.append(s)
        if len(socks) == span:
            return Reservation(p, socks)
        for s in socks:
            s.close()
    s = socket.socket()
    s.bind((host, 0))
    p = s.getsockname()[1]
    s.close()
    return Reservation(p, [])


def unused_port(host="", span=1):
    """A port p such that p .. p+span-1 are free now, below the kernel's ephemeral range, not
    held: reserve_port keeps it from a concurrent chooser until the listener is up."""
    with reserve_port(host, span) as r:
        return r.port
