"""PDU framing on a byte stream: ``encode_pdu`` for sending, ``PduFramer`` for receiving.

A PDU on the wire (RFC 7143 section 11.1) is the 48-byte BHS, the AHSs, an optional header
digest over both, the data segment padded to a multiple of 4, and an optional data digest
over the padded data (present only when the data segment is not empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import fastpath, wire
from .digest import DIGEST_LENGTH, digest_of_parts
from .errors import (
    DataDigestError,
    DataSegmentTooLong,
    HeaderDigestError,
    IscsiProtocolError,
    WrongDirection,
)
from .pdu import BHS_LENGTH, Opcode, Pdu

Peer = Literal["initiator", "target"]

# RFC 7143 section 6.1: a Login Request or Response carries at most 8192 data bytes,
# whatever MaxRecvDataSegmentLength says.
LOGIN_DATA_SEGMENT_LIMIT = 8192
DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH = 8192
_LOGIN_OPCODES = (Opcode.LOGIN_REQUEST, Opcode.LOGIN_RESPONSE)
_PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")  # indexed by length % 4


def encode_pdu(pdu: Pdu, *, header_digest: bool = False, data_digest: bool = False) -> bytes:
    """The complete wire form of ``pdu``: BHS, AHS, header digest, data, pad, data digest."""
    ahs = wire.encode_ahs(pdu.ahs) if pdu.ahs else b""
    bhs = fastpath.encode_bhs(pdu, len(ahs))
    parts: list[bytes | bytearray | memoryview] = [bhs, ahs]
    if header_digest:
        parts.append(digest_of_parts(bhs, ahs))
    data = pdu.data
    if data:
        padding = _PADDING[len(data) % 4]
        parts += (data, padding)
        if data_digest:
            parts.append(digest_of_parts(data, padding))
    return b"".join(parts)


@dataclass(slots=True, frozen=True)
class _Header:
    """A received header whose PDU is not complete yet."""

    bhs: bytes
    opcode: Opcode
    ahs_length: int
    data_length: int
    data_start: int  # offsets from the start of the PDU
    total_length: int
    data_digest: bool


class PduFramer:
    """Incremental bytes -> PDUs for one direction of one connection (sans-IO).

    ``feed`` the bytes as they arrive, then call ``next_pdu`` until it returns None. It
    raises only ``IscsiProtocolError`` subclasses; after a fatal one the stream cannot be
    resynchronised and every later call raises it again. A ``DataDigestError`` is not
    fatal: the PDU has been consumed and the next call continues with the next one.
    """

    def __init__(
        self,
        *,
        receiving_from: Peer,
        max_recv_data_segment_length: int = DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
        header_digest: bool = False,
        data_digest: bool = False,
    ) -> None:
        if receiving_from not in ("initiator", "target"):
            raise ValueError(f"receiving_from must be 'initiator' or 'target': {receiving_from}")
        self.receiving_from: Peer = receiving_from
        self.max_recv_data_segment_length = max_recv_data_segment_length
        self.header_digest = header_digest
        self.data_digest = data_digest
        self._buffer = bytearray()
        self._offset = 0  # start of the first unconsumed byte in _buffer
        self._pending: _Header | None = None
        self._failure: IscsiProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as PDUs."""
        return len(self._buffer) - self._offset

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._failure is not None:
            return
        if self._offset and self._offset * 2 >= len(self._buffer):
            # Compact once at least half of the buffer is consumed: amortised linear.
            del self._buffer[: self._offset]
            self._offset = 0
        self._buffer += data

    def next_pdu(self) -> Pdu | None:
        """The next complete PDU, or None when more bytes are needed."""
        if self._failure is not None:
            raise self._failure
        try:
            return self._next_pdu()
        except IscsiProtocolError as error:
            if error.fatal:
                self._failure = error
            raise

    # -----------------------------------------------------------------------------------

    def _next_pdu(self) -> Pdu | None:
        header = self._pending or self._read_header()
        if header is None:
            return None
        self._pending = header
        start = self._offset
        if len(self._buffer) - start < header.total_length:
            return None
        ahs_start = start + BHS_LENGTH
        ahs = bytes(self._buffer[ahs_start : ahs_start + header.ahs_length])
        pdu = fastpath.decode_bhs(header.bhs, ahs)
        data_start = start + header.data_start
        with memoryview(self._buffer) as view:
            pdu.data = bytes(view[data_start : data_start + header.data_length])
            digest_ok = not header.data_digest or self._data_digest_matches(
                view, data_start, header.data_length
            )
        self._consume(header.total_length)
        if not digest_ok:
            raise DataDigestError(
                f"data digest mismatch in {header.opcode.name}", header=header.bhs
            )
        return pdu

    def _read_header(self) -> _Header | None:
        start = self._offset
        available = len(self._buffer) - start
        if available < BHS_LENGTH:
            return None
        bhs = bytes(self._buffer[start : start + BHS_LENGTH])
        if not self.header_digest:
            opcode = self._check_opcode(bhs)
        ahs_length, data_length = wire.bhs_lengths(bhs)
        header_end = BHS_LENGTH + ahs_length
        if self.header_digest:
            if available < header_end + DIGEST_LENGTH:
                return None
            with memoryview(self._buffer) as view:
                expected = digest_of_parts(view[start : start + header_end])
                received = bytes(view[start + header_end : start + header_end + DIGEST_LENGTH])
            if expected != received:
                raise HeaderDigestError("header digest mismatch", header=bhs)
            header_end += DIGEST_LENGTH
            opcode = self._check_opcode(bhs)
        limit = (
            LOGIN_DATA_SEGMENT_LIMIT
            if opcode in _LOGIN_OPCODES
            else self.max_recv_data_segment_length
        )
        if data_length > limit:
            raise DataSegmentTooLong(
                f"{opcode.name} data segment of {data_length} bytes exceeds {limit}", header=bhs
            )
        has_data_digest = bool(data_length) and self.data_digest
        total_length = header_end + wire.padded_length(data_length)
        if has_data_digest:
            total_length += DIGEST_LENGTH
        return _Header(
            bhs, opcode, ahs_length, data_length, header_end, total_length, has_data_digest
        )

    def _check_opcode(self, bhs: bytes) -> Opcode:
        opcode = wire.opcode_of(bhs)
        if opcode.from_initiator != (self.receiving_from == "initiator"):
            raise WrongDirection(
                f"{opcode.name} is not sent by an {self.receiving_from}", header=bhs
            )
        return opcode

    @staticmethod
    def _data_digest_matches(view: memoryview, data_start: int, data_length: int) -> bool:
        padded_end = data_start + wire.padded_length(data_length)
        expected = digest_of_parts(view[data_start:padded_end])
        return expected == view[padded_end : padded_end + DIGEST_LENGTH]

    def _consume(self, length: int) -> None:
        self._pending = None
        self._offset += length
        if self._offset == len(self._buffer):
            self._buffer.clear()
            self._offset = 0
