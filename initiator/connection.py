"""One TCP connection to a target: where the initiator's bytes touch a socket.

Thin trio shell over the sans-IO codec: ``send`` encodes PDUs and writes them in one
system call where the socket takes them (callers batch), ``receive`` feeds the framer until a
whole PDU is there. Every failure comes out as ``ConnectionLost`` (the session may recover)
or ``TargetProtocolError`` (the target sent garbage; the session drops the connection).

The socket is driven directly, as the target's ``DirectSocket`` does: trio's
``receive_some``/``send_all`` yield to the scheduler on every call even when the socket is
ready, several scheduler passes per command, which at queue depth 1 cost more than the
rest of the I/O. Here a ready socket costs one system call; only a socket that is not ready
waits (and that wait is the checkpoint).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable

import trio

from iscsicore.errors import DataDigestError, IscsiProtocolError
from iscsicore.framing import PduFramer, append_pdu, encode_pdu
from iscsicore.pdu import Pdu
from iscsicore.portal import Portal

from .errors import ConnectError, ConnectionLost, TargetProtocolError

_RECEIVE_CHUNK = 256 * 1024
# Yield to the scheduler at least this often while the target keeps the socket readable.
_CHECKPOINT_EVERY = 16
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class Connection:
    def __init__(self, stream: trio.SocketStream, portal: Portal) -> None:
        self.stream = stream
        self.portal = portal
        self.framer = PduFramer(receiving_from="target")
        self.header_digest = False
        self.data_digest = False
        self._send_lock = trio.Lock()
        self.closed = False
        # The stream's descriptor as a plain non-blocking socket: detached, never closed
        # (the stream owns it).
        self._raw = socket.socket(fileno=stream.socket.fileno())
        self._raw.setblocking(False)
        self._receive_buffer = bytearray(_RECEIVE_CHUNK)
        self._receive_view = memoryview(self._receive_buffer)
        self._busy_rounds = 0

    @classmethod
    async def open(cls, portal: Portal, *, timeout: float = 5.0) -> Connection:
        try:
            with trio.fail_after(timeout):
                stream = await trio.open_tcp_stream(portal.connect_host, portal.port)
        except trio.TooSlowError:
            raise ConnectError(f"connecting to {portal} timed out after {timeout:g} s") from None
        except OSError as error:
            raise ConnectError(f"cannot connect to {portal}: {error.strerror or error}") from None
        stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
        return cls(stream, portal)

    def enable_full_feature(
        self, *, header_digest: bool, data_digest: bool, max_recv_data_segment_length: int
    ) -> None:
        """Switch to the negotiated digests and receive limit once login completes."""
        self.header_digest = header_digest
        self.data_digest = data_digest
        self.framer.header_digest = header_digest
        self.framer.data_digest = data_digest
        self.framer.max_recv_data_segment_length = max_recv_data_segment_length

    def encode(self, pdu: Pdu) -> bytes:
        return encode_pdu(pdu, header_digest=self.header_digest, data_digest=self.data_digest)

    def append(self, out: bytearray, pdu: Pdu) -> None:
        """Serialize ``pdu`` onto ``out`` with the connection's digests."""
        append_pdu(out, pdu, self.header_digest, self.data_digest)

    async def send(self, pdus: Iterable[Pdu]) -> None:
        out = bytearray()
        for pdu in pdus:
            self.append(out, pdu)
        await self.send_bytes(out)

    async def send_bytes(self, data: bytes | bytearray) -> None:
        async with self._send_lock:
            with memoryview(data) as view:
                sent = 0
                while sent < len(view):
                    sent += self.send_now(view[sent:])
                    if sent < len(view):
                        await self._wait_writable()

    def send_now(self, data: bytes | bytearray | memoryview) -> int:
        """Send what the socket takes right now, never waiting: the bytes sent (0 when
        the socket is full). Only for a caller that owns the send side (no ``send`` running)."""
        if self.closed:
            raise ConnectionLost(f"send to {self.portal} failed: connection closed")
        try:
            return self._raw.send(data)
        except BlockingIOError:
            return 0
        except OSError as error:
            raise ConnectionLost(f"send to {self.portal} failed: {error}") from None

    async def _wait_writable(self) -> None:
        try:
            await trio.lowlevel.wait_writable(self._raw)
        except _BROKEN as error:
            raise ConnectionLost(f"send to {self.portal} failed: {error}") from None

    async def receive(self) -> Pdu:
        while True:
            pdu = self.next_buffered()
            if pdu is not None:
                return pdu
            await self.receive_more()

    def next_buffered(self) -> Pdu | None:
        """The next PDU among the bytes received so far, or None: the full-feature reader
        takes every PDU of one receive this way, without a coroutine per PDU."""
        try:
            return self.framer.next_pdu()
        except DataDigestError as error:
            # Error recovery level 0: a corrupted data segment costs the connection.
            raise ConnectionLost(f"data digest error from {self.portal}: {error}") from None
        except IscsiProtocolError as error:
            raise TargetProtocolError(f"{self.portal}: {error}") from None

    async def receive_more(self) -> None:
        """Feed the framer whatever the socket holds, waiting only when it holds nothing."""
        self._busy_rounds += 1
        if self._busy_rounds >= _CHECKPOINT_EVERY:
            self._busy_rounds = 0
            await trio.lowlevel.checkpoint()
        while True:
            if self.closed:
                raise ConnectionLost(f"receive from {self.portal} failed: connection closed")
            try:
                received = self._raw.recv_into(self._receive_buffer)
            except BlockingIOError:
                self._busy_rounds = 0
                try:
                    await trio.lowlevel.wait_readable(self._raw)
                except _BROKEN as error:
                    raise ConnectionLost(f"receive from {self.portal} failed: {error}") from None
                continue
            except OSError as error:
                raise ConnectionLost(f"receive from {self.portal} failed: {error}") from None
            if not received:
                raise ConnectionLost(f"{self.portal} closed the connection")
            self.framer.feed(self._receive_view[:received])
            return

    async def aclose(self) -> None:
        self._detach()
        with trio.CancelScope(shield=True):
            await self.stream.aclose()

    def abort(self) -> None:
        """Close the socket now, without waiting (used from synchronous code)."""
        self._detach()
        with contextlib.suppress(OSError):
            self.stream.socket.close()

    def _detach(self) -> None:
        if not self.closed:
            self.closed = True
            self._raw.detach()
