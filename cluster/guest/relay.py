"""One guest connection relayed to a host portal: QEMU's ``guestfwd=...-cmd:`` runs this per
connection, with the guest's connection as stdin and stdout.

    python -I -S relay.py ROUTE_FILE

ROUTE_FILE holds ``HOST PORT [PATIENCE]``, read at each connection attempt (so the harness
can re-point a portal while the guest runs). While the host portal refuses, the relay keeps
the guest's connection open and silent, retrying every 50 to 250 ms for up to PATIENCE
seconds (default 60) and buffering what the guest sends: to the guest a target that is down
looks like a host that drops packets (its login timeout decides), and a target back within
the patience looks like a slow connect. It never writes anything but the target's bytes.

PATIENCE 0 closes the guest's connection as soon as the host refuses. Beware: slirp accepted
that connection already, and an initiator reconnecting to it may see it closed between its
connect and its bind; open-iscsi 2.1.8 on Linux 6.1 then failed every later reconnect with
"can't bind conn ... -107" until its replacement timeout.

Standard library only, no site: it starts in ~20 ms.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import time

BUFFER = 256 * 1024
DEFAULT_PATIENCE = 60.0


def read_route(path: str) -> tuple[str, int, float]:
    with open(path) as handle:
        fields = handle.read().split()
    patience = float(fields[2]) if len(fields) > 2 else DEFAULT_PATIENCE
    return fields[0], int(fields[1]), patience


def connect(route_file: str, guest: socket.socket, pending: bytearray) -> socket.socket | None:
    """Connect to the routed portal, retrying while it refuses; None when the guest hung up
    or the patience ran out. Bytes the guest sends meanwhile go to ``pending``."""
    started = time.monotonic()
    delay = 0.05
    while True:
        host, port, patience = read_route(route_file)
        try:
            target = socket.create_connection((host, port), timeout=5.0)
        except OSError:
            pass
        else:
            target.settimeout(None)
            target.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return target
        if time.monotonic() - started >= patience:
            return None
        readable, _, _ = select.select([guest], [], [], delay)
        if readable:
            data = guest.recv(BUFFER)
            if not data:
                return None
            pending += data
        delay = min(delay * 2, 0.25)


def pump(guest: socket.socket, target: socket.socket) -> tuple[int, int, str]:
    """Copy both ways until both directions ended; a reset ends both.

    Returns (bytes guest->target, bytes target->guest, how it ended)."""
    peers = {guest: target, target: guest}
    sent = {guest: 0, target: 0}
    ended = "closed"
    while peers:
        readable, _, _ = select.select(list(peers), [], [])
        for source in readable:
            destination = peers[source]
            try:
                data = source.recv(BUFFER)
            except OSError as error:
                ended = f"{'guest' if source is guest else 'target'} {error.strerror}"
                return sent[guest], sent[target], ended
            if not data:
                with contextlib.suppress(OSError):
                    destination.shutdown(socket.SHUT_WR)
                del peers[source]
                continue
            try:
                destination.sendall(data)
            except OSError as error:
                ended = f"{'target' if source is guest else 'guest'} {error.strerror}"
                return sent[guest], sent[target], ended
            sent[source] += len(data)
    return sent[guest], sent[target], ended


def log_line(route_file: str, message: str) -> None:
    """One line per connection in ROUTE_FILE.log (best effort)."""
    with contextlib.suppress(OSError), open(route_file + ".log", "a") as log:
        log.write(f"{time.strftime('%H:%M:%S')} pid {os.getpid()} {message}\n")


def main(argv: list[str]) -> int:
    # stderr is the guest's connection too: nothing but target bytes may reach it.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    route_file = argv[1]
    guest = socket.socket(fileno=0)
    pending = bytearray()
    started = time.monotonic()
    target = connect(route_file, guest, pending)
    waited = time.monotonic() - started
    if target is None:
        log_line(route_file, f"gave up after {waited:.1f} s ({len(pending)} bytes pending)")
        return 1
    host, port = target.getpeername()[:2]
    peer = f"{host}:{port}"
    with target:
        if pending:
            target.sendall(pending)
        up, down, ended = pump(guest, target)
    log_line(
        route_file,
        f"to {peer} after {waited:.1f} s: {up + len(pending)} bytes up, {down} down, "
        f"{time.monotonic() - started:.1f} s, {ended}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
