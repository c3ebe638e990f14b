"""``struct`` codecs for the hot PDUs: SCSI Command, SCSI Response, Data-In, Data-Out, R2T,
and NOP-Out/NOP-In (a NOP flood must not cost ~60 µs of construct per ping).

``wire`` declares every layout once with construct; the formats here restate the seven hot
ones for speed and are property-tested (tests/iscsicore/test_fastpath.py) to encode and decode
exactly as the construct declarations do, errors included. Bytes 4-7 (TotalAHSLength and
the 24-bit DataSegmentLength) are read as one 32-bit word.

``encode_bhs``/``decode_bhs`` here are drop-in replacements for ``wire``'s: other opcodes
fall through to the construct codec.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from . import wire
from .errors import MalformedPdu, PduEncodeError, TruncatedAhs
from .pdu import (
    BHS_LENGTH,
    R2T,
    DataIn,
    DataOut,
    NopIn,
    NopOut,
    Opcode,
    Pdu,
    ScsiCommand,
    ScsiResponse,
    TaskAttribute,
)

# byte0 byte1 [2-3] lengths-word then the opcode-specific fields, see wire's declarations
SCSI_COMMAND = struct.Struct(">BBxxIQIIII16s")
SCSI_RESPONSE = struct.Struct(">BBBBI8xIIIIIIII")
DATA_IN = struct.Struct(">BBxBIQIIIIIIII")
DATA_OUT = struct.Struct(">BBxxIQII4xI4xII4x")
R2T_FORMAT = struct.Struct(">BBxxIQIIIIIIII")
NOP_OUT = struct.Struct(">BBxxIQIIII16x")
NOP_IN = struct.Struct(">BBxxIQIIIII12x")

_MAX_DATA_SEGMENT = 0xFFFFFF
_FIXED_ONE = 0x80  # byte 1 bit 7 of SCSI Response and R2T
_IMMEDIATE = 0x40
_ATTR_MASK = 0x07
# Plain ints: reading an enum member costs more than the rest of a field.
_MAX_TASK_ATTRIBUTE = int(TaskAttribute.ACA)
_SCSI_COMMAND = int(Opcode.SCSI_COMMAND)
_SCSI_RESPONSE = int(Opcode.SCSI_RESPONSE)
_DATA_IN = int(Opcode.DATA_IN)
_DATA_OUT = int(Opcode.DATA_OUT)
_R2T = int(Opcode.R2T)
_NOP_OUT = int(Opcode.NOP_OUT)
_NOP_IN = int(Opcode.NOP_IN)

_Buffer = bytes | bytearray | memoryview


def _lengths_word(pdu: Pdu, ahs_length: int) -> int:
    data_length = len(pdu.data)
    if (
        data_length > _MAX_DATA_SEGMENT
        or not 0 <= ahs_length <= wire.MAX_TOTAL_AHS_LENGTH
        or ahs_length & 3
    ):
        raise PduEncodeError(f"data segment {data_length} / AHS {ahs_length} bytes too long")
    return (ahs_length // 4) << 24 | data_length


# ---------------------------------------------------------------------------------------
# Encoders


def scsi_command_bhs(
    opcode_byte: int,
    flags: int,
    lengths_word: int,
    lun: int,
    itt: int,
    expected_data_transfer_length: int,
    cmd_sn: int,
    exp_stat_sn: int,
    cdb: bytes,
) -> bytes:
    """A SCSI Command BHS from its fields, for senders that skip the `ScsiCommand` object.

    ``opcode_byte`` is byte 0 (0x01, | 0x40 for an immediate command); ``flags`` byte 1
    (F R W: 0x80 0x40 0x20, | the task attribute); ``cdb`` exactly 16 bytes;
    ``lengths_word`` as for `scsi_response_bhs`. `encode_bhs` encodes every `ScsiCommand`
    through here, so the property tests that hold it equal to ``wire`` hold this too.
    """
    return SCSI_COMMAND.pack(
        opcode_byte,
        flags,
        lengths_word,
        lun,
        itt,
        expected_data_transfer_length,
        cmd_sn,
        exp_stat_sn,
        cdb,
    )


def _encode_scsi_command(pdu: ScsiCommand, ahs_length: int) -> bytes:
    if pdu.attr >> 3 or pdu.attr < 0 or len(pdu.cdb) != wire.CDB_IN_BHS:
        raise PduEncodeError(f"attr {pdu.attr} / CDB of {len(pdu.cdb)} bytes")
    return scsi_command_bhs(
        _SCSI_COMMAND | (_IMMEDIATE if pdu.immediate else 0),
        (0x80 if pdu.final else 0)
        | (0x40 if pdu.read else 0)
        | (0x20 if pdu.write else 0)
        | pdu.attr,
        _lengths_word(pdu, ahs_length),
        pdu.lun,
        pdu.itt,
        pdu.expected_data_transfer_length,
        pdu.cmd_sn,
        pdu.exp_stat_sn,
        pdu.cdb,
    )


def scsi_response_bhs(
    flags: int,
    response: int,
    status: int,
    lengths_word: int,
    itt: int,
    snack_tag: int,
    stat_sn: int,
    exp_cmd_sn: int,
    max_cmd_sn: int,
    exp_data_sn: int,
    bidi_residual_count: int,
    residual_count: int,
) -> bytes:
    """A SCSI Response BHS from its fields, for senders that skip the `ScsiResponse` object.

    ``flags`` is byte 1 without its fixed bit (o u O U: 0x10 0x08 0x04 0x02);
    ``lengths_word`` is bytes 4-7 (TotalAHSLength/4 << 24 | DataSegmentLength).
    `encode_bhs` encodes every `ScsiResponse` through here, so the property tests that
    hold it equal to ``wire`` hold this too.
    """
    return SCSI_RESPONSE.pack(
        _SCSI_RESPONSE,
        _FIXED_ONE | flags,
        response,
        status,
        lengths_word,
        itt,
        snack_tag,
        stat_sn,
        exp_cmd_sn,
        max_cmd_sn,
        exp_data_sn,
        bidi_residual_count,
        residual_count,
    )


def data_in_bhs(
    flags: int,
    status: int,
    lengths_word: int,
    lun: int,
    itt: int,
    ttt: int,
    stat_sn: int,
    exp_cmd_sn: int,
    max_cmd_sn: int,
    data_sn: int,
    buffer_offset: int,
    residual_count: int,
) -> bytes:
    """A Data-In BHS from its fields, for senders that skip the `DataIn` object.

    ``flags`` is byte 1 (F A 0 0 0 O U S: 0x80 0x40 0x04 0x02 0x01); ``lengths_word`` as
    for `scsi_response_bhs`. `encode_bhs` encodes every `DataIn` through here.
    """
    return DATA_IN.pack(
        _DATA_IN,
        flags,
        status,
        lengths_word,
        lun,
        itt,
        ttt,
        stat_sn,
        exp_cmd_sn,
        max_cmd_sn,
        data_sn,
        buffer_offset,
        residual_count,
    )


def _encode_scsi_response(pdu: ScsiResponse, ahs_length: int) -> bytes:
    return scsi_response_bhs(
        (0x10 if pdu.bidi_overflow else 0)
        | (0x08 if pdu.bidi_underflow else 0)
        | (0x04 if pdu.overflow else 0)
        | (0x02 if pdu.underflow else 0),
        pdu.response,
        pdu.status,
        _lengths_word(pdu, ahs_length),
        pdu.itt,
        pdu.snack_tag,
        pdu.stat_sn,
        pdu.exp_cmd_sn,
        pdu.max_cmd_sn,
        pdu.exp_data_sn,
        pdu.bidi_residual_count,
        pdu.residual_count,
    )


def _encode_data_in(pdu: DataIn, ahs_length: int) -> bytes:
    return data_in_bhs(
        (0x80 if pdu.final else 0)
        | (0x40 if pdu.acknowledge else 0)
        | (0x04 if pdu.overflow else 0)
        | (0x02 if pdu.underflow else 0)
        | (0x01 if pdu.status_present else 0),
        pdu.status,
        _lengths_word(pdu, ahs_length),
        pdu.lun,
        pdu.itt,
        pdu.ttt,
        pdu.stat_sn,
        pdu.exp_cmd_sn,
        pdu.max_cmd_sn,
        pdu.data_sn,
        pdu.buffer_offset,
        pdu.residual_count,
    )


def _encode_data_out(pdu: DataOut, ahs_length: int) -> bytes:
    return DATA_OUT.pack(
        _DATA_OUT,
        0x80 if pdu.final else 0,
        _lengths_word(pdu, ahs_length),
        pdu.lun,
        pdu.itt,
        pdu.ttt,
        pdu.exp_stat_sn,
        pdu.data_sn,
        pdu.buffer_offset,
    )


def _encode_r2t(pdu: R2T, ahs_length: int) -> bytes:
    return R2T_FORMAT.pack(
        _R2T,
        _FIXED_ONE,
        _lengths_word(pdu, ahs_length),
        pdu.lun,
        pdu.itt,
        pdu.ttt,
        pdu.stat_sn,
        pdu.exp_cmd_sn,
        pdu.max_cmd_sn,
        pdu.r2t_sn,
        pdu.buffer_offset,
        pdu.desired_data_transfer_length,
    )


def _encode_nop_out(pdu: NopOut, ahs_length: int) -> bytes:
    return NOP_OUT.pack(
        _NOP_OUT | (_IMMEDIATE if pdu.immediate else 0),
        _FIXED_ONE,
        _lengths_word(pdu, ahs_length),
        pdu.lun,
        pdu.itt,
        pdu.ttt,
        pdu.cmd_sn,
        pdu.exp_stat_sn,
    )


def _encode_nop_in(pdu: NopIn, ahs_length: int) -> bytes:
    return NOP_IN.pack(
        _NOP_IN,
        _FIXED_ONE,
        _lengths_word(pdu, ahs_length),
        pdu.lun,
        pdu.itt,
        pdu.ttt,
        pdu.stat_sn,
        pdu.exp_cmd_sn,
        pdu.max_cmd_sn,
    )


# Keyed by exact class: each encoder takes the class it is listed under.
_ENCODERS: dict[type[Pdu], Callable[[Any, int], bytes]] = {
    ScsiCommand: _encode_scsi_command,
    ScsiResponse: _encode_scsi_response,
    DataIn: _encode_data_in,
    DataOut: _encode_data_out,
    R2T: _encode_r2t,
    NopOut: _encode_nop_out,
    NopIn: _encode_nop_in,
}


def encode_bhs(pdu: Pdu, ahs_length: int | None = None) -> bytes:
    """The 48-byte BHS of ``pdu``, like ``wire.encode_bhs`` but faster for the hot PDUs."""
    encoder = _ENCODERS.get(type(pdu))
    if encoder is None:
        return wire.encode_bhs(pdu, ahs_length)
    if ahs_length is None:
        ahs_length = len(wire.encode_ahs(pdu.ahs)) if pdu.ahs else 0
    try:
        return encoder(pdu, ahs_length)
    except (struct.error, TypeError) as exc:
        raise PduEncodeError(f"cannot encode {pdu!r}: {exc}") from exc


# ---------------------------------------------------------------------------------------
# Decoders: header -> PDU, with the same field checks as wire.check_fields. The AHS is set
# by the caller when there is one: passing ``ahs=`` costs more than its default factory.


def _malformed(name: str, why: str, header: bytes) -> MalformedPdu:
    return MalformedPdu(f"{name}: {why}", header=header)


def _scsi_command(fields: tuple[Any, ...]) -> ScsiCommand | None:
    """The command in unpacked `SCSI_COMMAND` fields; None for a reserved task attribute."""
    b0, b1, _lengths, lun, itt, edtl, cmd_sn, exp_stat_sn, cdb = fields
    attr = b1 & _ATTR_MASK
    if attr > _MAX_TASK_ATTRIBUTE:
        return None
    return ScsiCommand(
        bool(b0 & _IMMEDIATE),
        bool(b1 & 0x80),
        bool(b1 & 0x40),
        bool(b1 & 0x20),
        attr,
        lun,
        itt,
        edtl,
        cmd_sn,
        exp_stat_sn,
        cdb,
    )


def _decode_scsi_command(header: bytes) -> Pdu:
    pdu = _scsi_command(SCSI_COMMAND.unpack(header))
    if pdu is None:
        raise _malformed("ScsiCommand", f"reserved task attribute {header[1] & 7}", header)
    return pdu


def scsi_command_at(buffer: _Buffer, offset: int) -> tuple[ScsiCommand, int] | None:
    """(command, DataSegmentLength) of the SCSI Command BHS at ``buffer[offset:]``, read
    in place with one unpack: the receive path's shortcut for the commonest PDU.

    None when the general decoder must look (not a SCSI Command, an AHS, or a header it
    rejects): it then decodes or raises exactly as before. Data is left to the caller.
    """
    fields = SCSI_COMMAND.unpack_from(buffer, offset)
    lengths = fields[2]
    if fields[0] & wire.OPCODE_MASK != _SCSI_COMMAND or lengths >> 24:
        return None
    pdu = _scsi_command(fields)
    if pdu is None:
        return None
    return pdu, lengths


def _decode_scsi_response(header: bytes) -> Pdu:
    fields = SCSI_RESPONSE.unpack(header)
    b1 = header[1]
    if b1 & 0x06 == 0x06 or b1 & 0x18 == 0x18:
        raise _malformed("ScsiResponse", "overflow and underflow both set", header)
    # response, status; then itt .. residual_count after the lengths word
    return ScsiResponse(
        bool(b1 & 0x10),
        bool(b1 & 0x08),
        bool(b1 & 0x04),
        bool(b1 & 0x02),
        *fields[2:4],
        *fields[5:],
    )


def _decode_data_in(header: bytes) -> Pdu:
    fields = DATA_IN.unpack(header)
    b1 = header[1]
    if b1 & 0x01:  # S bit: needs F, and O/U are exclusive
        if not b1 & 0x80:
            raise _malformed("DataIn", "S bit without F bit", header)
        if b1 & 0x06 == 0x06:
            raise _malformed("DataIn", "overflow and underflow both set", header)
    # status; then lun .. residual_count after the lengths word
    return DataIn(
        bool(b1 & 0x80),
        bool(b1 & 0x40),
        bool(b1 & 0x04),
        bool(b1 & 0x02),
        bool(b1 & 0x01),
        fields[2],
        *fields[4:],
    )


def data_in_at(buffer: _Buffer, offset: int) -> tuple[DataIn, int] | None:
    """(Data-In, DataSegmentLength) of the Data-In BHS at ``buffer[offset:]``, read in place
    with one unpack: the initiator's receive shortcut, as `scsi_command_at` is the target's.

    None when the general decoder must look (not a Data-In, an AHS, or a header it rejects):
    it then decodes or raises exactly as before. Data is left to the caller.
    """
    fields = DATA_IN.unpack_from(buffer, offset)
    b0, b1, status, lengths = fields[:4]
    if b0 & wire.OPCODE_MASK != _DATA_IN or lengths >> 24:
        return None
    if b1 & 0x01 and (not b1 & 0x80 or b1 & 0x06 == 0x06):
        return None  # S without F, or O and U together: malformed
    pdu = DataIn(
        bool(b1 & 0x80),
        bool(b1 & 0x40),
        bool(b1 & 0x04),
        bool(b1 & 0x02),
        bool(b1 & 0x01),
        status,
        *fields[4:],
    )
    return pdu, lengths


def scsi_response_at(buffer: _Buffer, offset: int) -> tuple[ScsiResponse, int] | None:
    """(SCSI Response, DataSegmentLength) of the SCSI Response BHS at ``buffer[offset:]``,
    read in place as `data_in_at` reads a Data-In; None where the general decoder must look."""
    fields = SCSI_RESPONSE.unpack_from(buffer, offset)
    b0, b1 = fields[:2]
    lengths = fields[4]
    if b0 & wire.OPCODE_MASK != _SCSI_RESPONSE or lengths >> 24:
        return None
    if b1 & 0x06 == 0x06 or b1 & 0x18 == 0x18:
        return None  # overflow and underflow both set: malformed
    pdu = ScsiResponse(
        bool(b1 & 0x10),
        bool(b1 & 0x08),
        bool(b1 & 0x04),
        bool(b1 & 0x02),
        *fields[2:4],
        *fields[5:],
    )
    return pdu, lengths


def _decode_data_out(header: bytes) -> Pdu:
    return DataOut(bool(header[1] & 0x80), *DATA_OUT.unpack(header)[3:])


def _decode_r2t(header: bytes) -> Pdu:
    return R2T(*R2T_FORMAT.unpack(header)[3:])


def _decode_nop_out(header: bytes) -> Pdu:
    return NopOut(bool(header[0] & _IMMEDIATE), *NOP_OUT.unpack(header)[3:])


def _decode_nop_in(header: bytes) -> Pdu:
    return NopIn(*NOP_IN.unpack(header)[3:])


_DECODERS: dict[int, Callable[[bytes], Pdu]] = {
    _SCSI_COMMAND: _decode_scsi_command,
    _SCSI_RESPONSE: _decode_scsi_response,
    _DATA_IN: _decode_data_in,
    _DATA_OUT: _decode_data_out,
    _R2T: _decode_r2t,
    _NOP_OUT: _decode_nop_out,
    _NOP_IN: _decode_nop_in,
}


def decode_bhs(bhs: _Buffer, ahs: _Buffer = b"") -> Pdu:
    """The PDU in a 48-byte BHS, like ``wire.decode_bhs`` but faster for the hot PDUs."""
    decoder = _DECODERS.get(bhs[0] & wire.OPCODE_MASK) if len(bhs) == BHS_LENGTH else None
    if decoder is None:
        return wire.decode_bhs(bhs, ahs)
    header = bhs if type(bhs) is bytes else bytes(bhs)
    if not ahs and not header[4]:
        return decoder(header)
    if header[4] * 4 != len(ahs):
        raise TruncatedAhs(
            f"TotalAHSLength says {header[4] * 4} bytes, {len(ahs)} given", header=header
        )
    segments = wire.decode_ahs(ahs, header)
    pdu = decoder(header)
    pdu.ahs = segments
    return pdu
