"""One TCP connection to a target: where the initiator's bytes touch a socket.

Thin trio shell over the sans-IO codec: ``send`` encodes PDUs and writes them in one
``send_all`` (callers batch), ``receive`` feeds the framer until a whole PDU is there.
Every failure comes out as ``ConnectionLost`` (the session may recover) or
``TargetProtocolError`` (the target sent garbage; the session drops the connection).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import trio

from iscsicore.errors import DataDigestError, IscsiProtocolError
from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.pdu import Pdu
from iscsicore.portal import Portal

from .errors import ConnectError, ConnectionLost, TargetProtocolError

_RECEIVE_CHUNK = 256 * 1024


class Connection:
    def __init__(self, stream: trio.SocketStream, portal: Portal) -> None:
        self.stream = stream
        self.portal = portal
        self.framer = PduFramer(receiving_from="target")
        self.header_digest = False
        self.data_digest = False
        self._send_lock = trio.Lock()
        self.closed = False

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

    async def send(self, pdus: Iterable[Pdu]) -> None:
        await self.send_bytes(b"".join(self.encode(pdu) for pdu in pdus))

    async def send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                raise ConnectionLost(f"send to {self.portal} failed: {error}") from None

    async def receive(self) -> Pdu:
        while True:
            try:
                pdu = self.framer.next_pdu()
            except DataDigestError as error:
                # Error recovery level 0: a corrupted data segment costs the connection.
                raise ConnectionLost(f"data digest error from {self.portal}: {error}") from None
            except IscsiProtocolError as error:
                raise TargetProtocolError(f"{self.portal}: {error}") from None
            if pdu is not None:
                return pdu
            try:
                chunk = await self.stream.receive_some(_RECEIVE_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                raise ConnectionLost(f"receive from {self.portal} failed: {error}") from None
            if not chunk:
                raise ConnectionLost(f"{self.portal} closed the connection")
            self.framer.feed(chunk)

    async def aclose(self) -> None:
        self.closed = True
        with trio.CancelScope(shield=True):
            await self.stream.aclose()

    def abort(self) -> None:
        """Close the socket now, without waiting (used from synchronous code)."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.stream.socket.close()
