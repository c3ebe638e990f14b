"""Free TCP ports and loopback addresses, so parallel tests never collide on the network."""

from __future__ import annotations

import itertools
import os
import socket

_LOOPBACK_COUNTER = itertools.count()
#: Second octets handed out: not 0 or 1 (127.0.0.1 and hand-picked addresses), not 77 (the
#: cluster's default base, 127.77.0.0/16), not 255.
_SECOND_OCTETS = [octet for octet in range(2, 255) if octet != 77]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def unique_loopback_address() -> str:
    """A 127.x.y.z address no other test in any running process is likely to pick.

    Linux routes all of 127.0.0.0/8 to the loopback interface, so every address in it can be
    bound without configuration. The second and third octets come from the process id, the
    last one from a per-process counter (254 addresses before one repeats). 127.0.x.x,
    127.1.x.x (picked by hand) and 127.77.x.x (the cluster's default base) are never returned.
    """
    pid = os.getpid()
    serial = next(_LOOPBACK_COUNTER)
    second = _SECOND_OCTETS[(pid >> 8) % len(_SECOND_OCTETS)]
    third = pid % 256
    fourth = 1 + serial % 254
    return f"127.{second}.{third}.{fourth}"


def tcp_port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
