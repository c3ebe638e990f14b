"""A byte channel that has gone dark: the socket stays open, nothing is answered.

What an initiator sees when a path dies without a reset (a pulled cable, a paused VM, a
firewall dropping packets): its commands and pings go unanswered; only its own timeouts
(NOP-Out, command, replacement) can end the connection.
"""

from __future__ import annotations

from typing import Protocol

import trio

RECEIVE_SIZE = 65536


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


async def blackhole_stream(stream: trio.abc.ReceiveStream, still_paused: object) -> None:
    """Hold a connection accepted while the network is paused: read and discard until the
    peer goes (its login timeout), or the pause ends (then it is closed: a late SYN-ACK
    would not revive a real TCP connection either)."""
    paused = getattr(still_paused, "network_paused", False)
    while paused:
        with trio.move_on_after(0.25):
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
        paused = getattr(still_paused, "network_paused", False)
