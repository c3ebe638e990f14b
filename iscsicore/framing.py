"""PDU framing on a byte stream: ``encode_pdu``/``append_segments`` for sending (one
serializer), ``PduFramer`` for receiving.

A PDU on the wire (RFC 7143 section 11.1) is the 48-byte BHS, the AHSs, an optional header
digest over both, the data segment padded to a multiple of 4, and an optional data digest
over the padded data (present only when the data segment is not empty).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from . import fastpath, wire
from .digest import DIGEST_LENGTH, digest_bytes, digest_of_parts
from .errors import (
    DataDigestError,
    DataSegmentTooLong,
    HeaderDigestError,
    IscsiProtocolError,
    WrongDirection,
)
from .pdu import BHS_LENGTH, Opcode, Pdu

Peer = Literal["initiator", "target"]

# A Login Request or Response carries at most 8192 data bytes (RFC 7143), whatever
# MaxRecvDataSegmentLength says: the declared value applies from the full feature phase.
LOGIN_DATA_SEGMENT_LIMIT = 8192
DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH = 8192
_LOGIN_OPCODES = frozenset({int(Opcode.LOGIN_REQUEST), int(Opcode.LOGIN_RESPONSE)})
_PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")  # indexed by length % 4
# The commonest PDUs of each direction, decoded in place while no digests are on: SCSI
# Commands from an initiator; Data-In and SCSI Responses from a target.
_PlainDecoder = Callable[[bytearray, int], tuple[Pdu, int] | None]
_PLAIN_DECODERS: dict[Peer, dict[int, _PlainDecoder]] = {
    "initiator": {int(Opcode.SCSI_COMMAND): fastpath.scsi_command_at},
    "target": {
        int(Opcode.DATA_IN): fastpath.data_in_at,
        int(Opcode.SCSI_RESPONSE): fastpath.scsi_response_at,
    },
}


def encode_pdu(pdu: Pdu, *, header_digest: bool = False, data_digest: bool = False) -> bytes:
    """The complete wire form of ``pdu``: BHS, AHS, header digest, data, pad, data digest."""
    out = bytearray()
    append_pdu(out, pdu, header_digest, data_digest)
    return bytes(out)


def append_pdu(out: bytearray, pdu: Pdu, header_digest: bool, data_digest: bool) -> None:
    """Append the wire form of ``pdu`` to ``out`` (see `append_segments`)."""
    ahs = wire.encode_ahs(pdu.ahs) if pdu.ahs else b""
    append_segments(
        out, fastpath.encode_bhs(pdu, len(ahs)), ahs, pdu.data, header_digest, data_digest
    )


def append_segments(
    out: bytearray,
    bhs: bytes,
    ahs: bytes,
    data: bytes | bytearray | memoryview,
    header_digest: bool,
    data_digest: bool,
) -> None:
    """The one PDU serializer: append an encoded BHS, its AHS, the header digest, the data
    segment, its padding and the data digest to ``out``.

    A sender's hot path builds the BHS with the struct codecs (`fastpath.scsi_response_bhs`,
    `fastpath.data_in_bhs`) and calls this directly: no PDU object, one buffer for a whole
    batch of responses, positional arguments only.
    """
    out += bhs
    if ahs:
        out += ahs
        if header_digest:
            out += digest_of_parts(bhs, ahs)
    elif header_digest:
        out += digest_bytes(bhs)
    length = len(data)
    if length:
        out += data
        padding = _PADDING[length & 3]
        if padding:
            out += padding
        if data_digest:
            out += digest_of_parts(data, padding)


class PduFramer:
    """Incremental bytes -> PDUs for one direction of one connection (sans-IO).

    ``feed`` the bytes as they arrive, then call ``next_pdu`` until it returns None. It
    raises only ``IscsiProtocolError`` subclasses; after a fatal one the stream cannot be
    resynchronised and every later call raises it again. A ``DataDigestError`` is not
    fatal: the PDU has been consumed and the next call continues with the next one.

    ``header_digest``, ``data_digest`` and ``max_recv_data_segment_length`` may change
    between PDUs (after login); a PDU whose header was already parsed is then re-parsed.
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
        self._accepted = {
            int(op): op for op in Opcode if op.from_initiator == (receiving_from == "initiator")
        }
        self._max_recv_data_segment_length = max_recv_data_segment_length
        self._header_digest = header_digest
        self._data_digest = data_digest
        self._buffer = bytearray()
        self._offset = 0  # the first unconsumed byte in _buffer
        self._failure: IscsiProtocolError | None = None
        # The header of the PDU being received, once parsed (offsets from the PDU's start):
        self._bhs: bytes | None = None
        self._ahs_length = 0
        self._data_start = 0
        self._data_length = 0
        self._total_length = 0
        self._has_data_digest = False
        self._plain_decoders = _PLAIN_DECODERS[receiving_from]
        self._plain = False
        self._update_plain()

    # -- settings that login changes -------------------------------------------------------

    @property
    def header_digest(self) -> bool:
        return self._header_digest

    @header_digest.setter
    def header_digest(self, enabled: bool) -> None:
        self._header_digest = enabled
        self._bhs = None
        self._update_plain()

    @property
    def data_digest(self) -> bool:
        return self._data_digest

    @data_digest.setter
    def data_digest(self, enabled: bool) -> None:
        self._data_digest = enabled
        self._bhs = None
        self._update_plain()

    @property
    def max_recv_data_segment_length(self) -> int:
        return self._max_recv_data_segment_length

    @max_recv_data_segment_length.setter
    def max_recv_data_segment_length(self, length: int) -> None:
        self._max_recv_data_segment_length = length
        self._bhs = None

    def _update_plain(self) -> None:
        # The in-place shortcut of `next_pdu` skips digests: only without them.
        self._plain = not self._header_digest and not self._data_digest

    # -- state -----------------------------------------------------------------------------

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
        if self._plain and self._bhs is None:
            pdu = self._next_plain()
            if pdu is not None:
                return pdu
        try:
            if self._bhs is None and not self._read_header():
                return None
            if len(self._buffer) - self._offset < self._total_length:
                return None
            return self._take_pdu()
        except IscsiProtocolError as error:
            if error.fatal:
                self._failure = error
            raise

    # -------------------------------------------------------------------------------------

    def _next_plain(self) -> Pdu | None:
        """A complete SCSI Command (from an initiator), Data-In or SCSI Response (from a
        target) without AHS, decoded in place with one unpack (no digests are negotiated);
        None: anything else, left to the general path, which decodes it or raises as it
        always does (that includes a data segment over the limit)."""
        buffer = self._buffer
        start = self._offset
        available = len(buffer) - start
        if available < BHS_LENGTH:
            return None
        decode_at = self._plain_decoders.get(buffer[start] & wire.OPCODE_MASK)
        if decode_at is None:
            return None
        decoded = decode_at(buffer, start)
        if decoded is None:
            return None
        pdu, data_length = decoded  # no AHS: the lengths word is the data length
        if data_length > self._max_recv_data_segment_length:
            return None
        end = BHS_LENGTH + ((data_length + 3) & ~3)
        if available < end:
            return None
        if data_length:
            with memoryview(buffer) as view:
                pdu.data = bytes(view[start + BHS_LENGTH : start + BHS_LENGTH + data_length])
        self._offset = start + end
        if self._offset == len(buffer):
            buffer.clear()
            self._offset = 0
        return pdu

    def _read_header(self) -> bool:
        """Parse and check the next header once it is complete (digest included)."""
        start = self._offset
        available = len(self._buffer) - start
        if available < BHS_LENGTH:
            return False
        bhs = bytes(self._buffer[start : start + BHS_LENGTH])
        if not self._header_digest:
            self._check_opcode(bhs)
        ahs_length = bhs[4] * 4
        data_length = int.from_bytes(bhs[5:8], "big")
        header_end = BHS_LENGTH + ahs_length
        if self._header_digest:
            if available < header_end + DIGEST_LENGTH:
                return False
            with memoryview(self._buffer) as view:
                expected = digest_of_parts(view[start : start + header_end])
                received = view[start + header_end : start + header_end + DIGEST_LENGTH]
                matches = expected == received
            if not matches:
                raise HeaderDigestError("header digest mismatch", header=bhs)
            header_end += DIGEST_LENGTH
            self._check_opcode(bhs)
        if data_length > self._data_limit(bhs):
            raise DataSegmentTooLong(
                f"data segment of {data_length} bytes exceeds {self._data_limit(bhs)}",
                header=bhs,
            )
        has_data_digest = self._data_digest and data_length > 0
        self._bhs = bhs
        self._ahs_length = ahs_length
        self._data_start = header_end
        self._data_length = data_length
        self._has_data_digest = has_data_digest
        self._total_length = (
            header_end + ((data_length + 3) & ~3) + (DIGEST_LENGTH if has_data_digest else 0)
        )
        return True

    def _data_limit(self, bhs: bytes) -> int:
        if bhs[0] & wire.OPCODE_MASK in _LOGIN_OPCODES:
            return LOGIN_DATA_SEGMENT_LIMIT
        return self._max_recv_data_segment_length

    def _check_opcode(self, bhs: bytes) -> None:
        if bhs[0] & wire.OPCODE_MASK not in self._accepted:
            opcode = wire.opcode_of(bhs)  # UnknownOpcode for a reserved one
            raise WrongDirection(
                f"{opcode.name} is not sent by an {self.receiving_from}", header=bhs
            )

    def _take_pdu(self) -> Pdu:
        bhs = self._bhs
        assert bhs is not None
        start = self._offset
        ahs = b""
        if self._ahs_length:
            ahs = bytes(self._buffer[start + BHS_LENGTH : start + BHS_LENGTH + self._ahs_length])
        pdu = fastpath.decode_bhs(bhs, ahs)
        digest_ok = True
        if self._data_length:
            data_start = start + self._data_start
            data_end = data_start + self._data_length
            with memoryview(self._buffer) as view:
                pdu.data = bytes(view[data_start:data_end])
                if self._has_data_digest:
                    padded_end = data_start + ((self._data_length + 3) & ~3)
                    expected = digest_of_parts(view[data_start:padded_end])
                    digest_ok = expected == view[padded_end : padded_end + DIGEST_LENGTH]
        self._consume()
        if not digest_ok:
            raise DataDigestError("data digest mismatch", header=bhs)
        return pdu

    def _consume(self) -> None:
        self._offset += self._total_length
        self._bhs = None
        if self._offset == len(self._buffer):
            self._buffer.clear()
            self._offset = 0
