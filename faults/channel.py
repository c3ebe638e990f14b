"""A byte channel that has gone dark: the socket stays open, nothing is answered.

What an initiator sees when a path dies without a reset (a pulled cable, a paused VM, a
firewall dropping packets): its commands and pings go unanswered; only its own timeouts
(NOP-Out, command, replacement) can end the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio

RECEIVE_SIZE = 65536
HOLD_POLL = 0.25  # how often a held connection looks whether its fault is still on


class _Channel(Protocol):
    async def receive_some(self, max_bytes: int) -> bytes | bytearray: ...

    async def send_all(self, data: bytes | bytearray) -> None: ...


class BlackholeChannel:
    """Swallows everything both ways; ``receive_some`` returns only at the peer's EOF (or a
    broken socket), so the connection ends when the initiator gives up, not before."""

    def __init__(self, inner: _Channel) -> None:
        self._inner = inner
        self.swallowed = 0

    async def receive_some(self, max_bytes: int) -> bytes:
        while True:
            data = await self._inner.receive_some(RECEIVE_SIZE)
            if not data:
                return b""
            self.swallowed += len(data)

    async def send_all(self, data: bytes | bytearray) -> None:
        await trio.lowlevel.checkpoint()


class _Pausable(Protocol):
    @property
    def network_paused(self) -> bool: ...


async def blackhole_stream(stream: trio.abc.ReceiveStream, faults: _Pausable) -> None:
    """Hold a connection accepted while the network is paused: read and discard until the
    peer goes (its login timeout), or the pause ends (then it is closed: a late SYN-ACK
    would not revive a real TCP connection either)."""
    await hold_unanswered(stream, lambda: faults.network_paused)


async def hold_unanswered(stream: trio.abc.ReceiveStream, still_on: Callable[[], bool]) -> None:
    """Read and discard what the peer sends, answering nothing, while ``still_on()``; return
    when the peer closes (or breaks) the connection or ``still_on()`` turns false (checked
    every HOLD_POLL seconds). The caller closes the connection."""
    while still_on():
        with trio.move_on_after(HOLD_POLL):
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
