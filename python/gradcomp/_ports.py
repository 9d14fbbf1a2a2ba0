"""A TCP port to listen on, chosen where the kernel's own choices cannot take it."""
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


def unused_port(host="", span=1):
    """A port p such that p .. p+span-1 are free now, below the kernel's ephemeral range.

    The caller binds it moments later (often in another process). A port from bind(0) is an
    ephemeral one, which any socket that connects or binds to port 0 meanwhile can be given
    (gloo's pairs, a store's clients, another test's listeners); below the range only another
    explicit choice like this one can collide, and that one is random.
    """
    start = _ephemeral_start()
    lo, hi = (10000, start) if start > 11000 else (start + 1000, 65535)
    rng = random.SystemRandom()
    for _ in range(200):
        p = rng.randrange(lo, hi - span)
        if all(_bindable(host, q) for q in range(p, p + span)):
            return p
    s = socket.socket()
    s.bind((host, 0))
    p = s.getsockname()[1]
    s.close()
    return p
