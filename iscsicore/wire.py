"""The wire layout of every Basic Header Segment (RFC 7143 section 11), declared with construct.

This module is THE single declaration of the 18 BHS layouts; ``fastpath`` re-implements the
hot five with ``struct`` and is property-tested equal to these declarations.

Conventions of the declarations:

* Byte 0 is ``.|I| opcode``; byte 1 holds the opcode-specific flag bits. Both are
  ``BitStruct``s, named ``byte0`` and ``byte1``; their named bits are dataclass fields.
* Reserved fields are ``Padding``: zero on encode, ignored on decode (RFC 7143 section 11.2:
  "any compliant receiver MUST ignore any bit not defined and all reserved fields").
* Bits and fields the RFC fixes to a value (the 1 in byte 1 of most PDUs, the I bit of a
  Login Request, the 0xffffffff ITT of an Async Message) are unnamed ``Default``s: encoded
  with their value, ignored on decode like reserved fields.
* Fields that are reserved only in some cases ("StatSN or Reserved") are decoded as sent;
  the consumer looks at them only when they are meaningful.

Receiving a reserved value in a defined field (a Login stage of 2, a task attribute above
ACA, both O and U set) raises :class:`~iscsicore.errors.MalformedPdu`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, NamedTuple

from construct import (
    BitsInteger,
    BitStruct,
    Bytes,
    BytesInteger,
    Const,
    Construct,
    ConstructError,
    Container,
    Default,
    Flag,
    Int8ub,
    Int16ub,
    Int24ub,
    Int32ub,
    Int64ub,
    Padding,
    Struct,
)

from .errors import MalformedPdu, PduEncodeError, TruncatedAhs, UnknownOpcode
from .pdu import (
    BHS_LENGTH,
    PDU_CLASSES,
    R2T,
    RESERVED_TAG,
    Ahs,
    AhsType,
    AsyncMessage,
    DataIn,
    DataOut,
    LoginRequest,
    LoginResponse,
    LogoutReason,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Opcode,
    Pdu,
    Reject,
    ScsiCommand,
    ScsiResponse,
    SnackRequest,
    SnackType,
    TaskAttribute,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TextResponse,
)

CDB_IN_BHS = 16
OPCODE_MASK = 0x3F
IMMEDIATE_BIT = 0x40

_ONE = Default(Flag, True)  # a bit the RFC fixes to 1: written as 1, ignored on receipt
_ITT_RESERVED = Default(Int32ub, RESERVED_TAG)


class IBit(Enum):
    """What bit 6 of byte 0 is for an opcode."""

    FIELD = "field"  # the I (immediate delivery) flag
    RESERVED = "reserved"
    ONE = "one"  # Login Request: always 1


_I_FIELD, _I_RESERVED, _I_ONE = IBit.FIELD, IBit.RESERVED, IBit.ONE


@dataclass(frozen=True, slots=True)
class BhsLayout:
    """One opcode's BHS declaration and the mapping to its dataclass."""

    pdu_class: type[Pdu]
    declaration: Construct  # the Struct as declared, 48 bytes
    struct: Construct  # the same, compiled (several times faster)
    bit_groups: dict[str, tuple[str, ...]]  # "byte0"/"byte1" -> the dataclass fields in it
    field_names: tuple[str, ...]  # the dataclass fields, in declaration order


def _named(subcons: Iterable[Construct]) -> tuple[str, ...]:
    return tuple(sc.name for sc in subcons if sc.name is not None)


def _declare(
    pdu_class: type[Pdu],
    *,
    i_bit: IBit,
    byte1: Sequence[Construct],
    bytes2_3: Sequence[Construct],
    bytes8_47: Sequence[Construct],
) -> BhsLayout:
    opcode = pdu_class.OPCODE
    i_subcon = {_I_FIELD: "immediate" / Flag, _I_RESERVED: Padding(1), _I_ONE: _ONE}[i_bit]
    byte0 = (Padding(1), i_subcon, "opcode" / Const(int(opcode), BitsInteger(6)))
    layout = Struct(
        "byte0" / BitStruct(*byte0),
        "byte1" / BitStruct(*byte1),
        *bytes2_3,
        "total_ahs_length" / Int8ub,
        "data_segment_length" / Int24ub,
        *bytes8_47,
    )
    if layout.sizeof() != BHS_LENGTH:
        raise AssertionError(f"{pdu_class.__name__} BHS declares {layout.sizeof()} bytes")
    field_names = tuple(f.name for f in fields(pdu_class) if f.name not in ("ahs", "data"))
    bit_groups = {
        "byte0": tuple(n for n in _named(byte0) if n != "opcode"),
        "byte1": _named(byte1),
    }
    declared = set(_named(bytes2_3)) | set(_named(bytes8_47))
    declared.update(*bit_groups.values())
    if declared != set(field_names):
        raise AssertionError(f"{pdu_class.__name__}: {declared ^ set(field_names)} mismatch")
    return BhsLayout(pdu_class, layout, layout.compile(), bit_groups, field_names)


# ---------------------------------------------------------------------------------------
# The 18 layouts, in RFC 7143 section 11 order. Byte offsets are in the comments.

_LAYOUTS: tuple[BhsLayout, ...] = (
    _declare(  # 11.18 NOP-Out
        NopOut,
        i_bit=_I_FIELD,
        byte1=(_ONE, Padding(7)),
        bytes2_3=(Padding(2),),
        bytes8_47=(
            "lun" / Int64ub,  # 8
            "itt" / Int32ub,  # 16
            "ttt" / Int32ub,  # 20
            "cmd_sn" / Int32ub,  # 24
            "exp_stat_sn" / Int32ub,  # 28
            Padding(16),  # 32
        ),
    ),
    _declare(  # 11.3 SCSI Command
        ScsiCommand,
        i_bit=_I_FIELD,
        byte1=("final" / Flag, "read" / Flag, "write" / Flag, Padding(2), "attr" / BitsInteger(3)),
        bytes2_3=(Padding(2),),
        bytes8_47=(
            "lun" / Int64ub,  # 8
            "itt" / Int32ub,  # 16
            "expected_data_transfer_length" / Int32ub,  # 20
            "cmd_sn" / Int32ub,  # 24
            "exp_stat_sn" / Int32ub,  # 28
            "cdb" / Bytes(CDB_IN_BHS),  # 32
        ),
    ),
    _declare(  # 11.5 Task Management Function Request
        TaskMgmtRequest,
        i_bit=_I_FIELD,
        byte1=(_ONE, "function" / BitsInteger(7)),
        bytes2_3=(Padding(2),),
        bytes8_47=(
            "lun" / Int64ub,  # 8
            "itt" / Int32ub,  # 16
            "referenced_task_tag" / Int32ub,  # 20
            "cmd_sn" / Int32ub,  # 24
            "exp_stat_sn" / Int32ub,  # 28
            "ref_cmd_sn" / Int32ub,  # 32
            "exp_data_sn" / Int32ub,  # 36
            Padding(8),  # 40
        ),
    ),
    _declare(  # 11.12 Login Request
        LoginRequest,
        i_bit=_I_ONE,
        byte1=(
            "transit" / Flag,
            "cont" / Flag,
            Padding(2),
            "csg" / BitsInteger(2),
            "nsg" / BitsInteger(2),
        ),
        bytes2_3=("version_max" / Int8ub, "version_min" / Int8ub),
        bytes8_47=(
            "isid" / BytesInteger(6),  # 8
            "tsih" / Int16ub,  # 14
            "itt" / Int32ub,  # 16
            "cid" / Int16ub,  # 20
            Padding(2),  # 22
            "cmd_sn" / Int32ub,  # 24
            "exp_stat_sn" / Int32ub,  # 28
            Padding(16),  # 32
        ),
    ),
    _declare(  # 11.10 Text Request
        TextRequest,
        i_bit=_I_FIELD,
        byte1=("final" / Flag, "cont" / Flag, Padding(6)),
        bytes2_3=(Padding(2),),
        bytes8_47=(
            "lun" / Int64ub,  # 8
            "itt" / Int32ub,  # 16
            "ttt" / Int32ub,  # 20
            "cmd_sn" / Int32ub,  # 24
            "exp_stat_sn" / Int32ub,  # 28
            Padding(16),  # 32
        ),
    ),
    _declare(  # 11.7 SCSI Data-Out
        DataOut,
        i_bit=_I_RESERVED,
        byte1=("final" / Flag, Padding(7)),
        bytes2_3=(Padding(2),),
        bytes8_47=(
            "lun" / Int64ub,  # 8
            "itt" / Int32ub,  # 16
            "ttt" / Int32ub,  # 20
            Padding(4),  # 24
            "exp_stat_sn" / Int32ub,  # 28
            Padding(4),  # 32
            "data_sn" / Int32ub,  # 36
            "buffer_offset" / Int32ub,  # 40
            Padding(4),  # 44
        ),
    ),
    _declare(  # 11.14 Logout Request
        LogoutRequest,
        i_bit=_I_FIELD,
        byte1=(_ONE, "reason" / BitsInteger(7)),
        bytes2_3=(Padding(2),),
        bytes8_47=(
            Padding(8),  # 8
            "itt" / Int32ub,  # 16
            "cid" / Int16ub,  # 20
            Padding(2),  # 22
            "cmd_sn" / Int32ub,  # 24
            "exp_stat_sn" / Int32ub,  # 28
            Padding(16),  # 32
        ),
    ),
    _declare(  # 11.16 SNACK Request
        SnackRequest,
        i_bit=_I_RESERVED,
        byte1=(_ONE, Padding(3), "snack_type" / BitsInteger(4)),
        bytes2_3=(Padding(2),),
        bytes8_47=(
            "lun" / Int64ub,  # 8
            "itt" / Int32ub,  # 16
            "ttt" / Int32ub,  # 20: Target Transfer Tag or SNACK Tag
            Padding(4),  # 24
            "exp_stat_sn" / Int32ub,  # 28
            Padding(8),  # 32
            "beg_run" / Int32ub,  # 40
            "run_length" / Int32ub,  # 44
        ),
    ),
    _declare(  # 11.19 NOP-In
        NopIn,
        i_bit=_I_RESERVED,
        byte1=(_ONE, Padding(7)),
        bytes2_3=(Padding(2),),
        bytes8_47=(
            "lun" / Int64ub,  # 8
            "itt" / Int32ub,  # 16
            "ttt" / Int32ub,  # 20
            "stat_sn" / Int32ub,  # 24
            "exp_cmd_sn" / Int32ub,  # 28
            "max_cmd_sn" / Int32ub,  # 32
            Padding(12),  # 36
        ),
    ),
    _declare(  # 11.4 SCSI Response
        ScsiResponse,
        i_bit=_I_RESERVED,
        byte1=(
            _ONE,
            Padding(2),
            "bidi_overflow" / Flag,
            "bidi_underflow" / Flag,
            "overflow" / Flag,
            "underflow" / Flag,
            Padding(1),
        ),
        bytes2_3=("response" / Int8ub, "status" / Int8ub),
        bytes8_47=(
            Padding(8),  # 8
            "itt" / Int32ub,  # 16
            "snack_tag" / Int32ub,  # 20
            "stat_sn" / Int32ub,  # 24
            "exp_cmd_sn" / Int32ub,  # 28
            "max_cmd_sn" / Int32ub,  # 32
            "exp_data_sn" / Int32ub,  # 36
            "bidi_residual_count" / Int32ub,  # 40
            "residual_count" / Int32ub,  # 44
        ),
    ),
    _declare(  # 11.6 Task Management Function Response
        TaskMgmtResponse,
        i_bit=_I_RESERVED,
        byte1=(_ONE, Padding(7)),
        bytes2_3=("response" / Int8ub, Padding(1)),
        bytes8_47=(
            Padding(8),  # 8
            "itt" / Int32ub,  # 16
            Padding(4),  # 20
            "stat_sn" / Int32ub,  # 24
            "exp_cmd_sn" / Int32ub,  # 28
            "max_cmd_sn" / Int32ub,  # 32
            Padding(12),  # 36
        ),
    ),
    _declare(  # 11.13 Login Response
        LoginResponse,
        i_bit=_I_RESERVED,
        byte1=(
            "transit" / Flag,
            "cont" / Flag,
            Padding(2),
            "csg" / BitsInteger(2),
            "nsg" / BitsInteger(2),
        ),
        bytes2_3=("version_max" / Int8ub, "version_active" / Int8ub),
        bytes8_47=(
            "isid" / BytesInteger(6),  # 8
            "tsih" / Int16ub,  # 14
            "itt" / Int32ub,  # 16
            Padding(4),  # 20
            "stat_sn" / Int32ub,  # 24
            "exp_cmd_sn" / Int32ub,  # 28
            "max_cmd_sn" / Int32ub,  # 32
            "status_class" / Int8ub,  # 36
            "status_detail" / Int8ub,  # 37
            Padding(10),  # 38
        ),
    ),
    _declare(  # 11.11 Text Response
        TextResponse,
        i_bit=_I_RESERVED,
        byte1=("final" / Flag, "cont" / Flag, Padding(6)),
        bytes2_3=(Padding(2),),
        bytes8_47=(
            "lun" / Int64ub,  # 8
            "itt" / Int32ub,  # 16
            "ttt" / Int32ub,  # 20
            "stat_sn" / Int32ub,  # 24
            "exp_cmd_sn" / Int32ub,  # 28
            "max_cmd_sn" / Int32ub,  # 32
            Padding(12),  # 36
        ),
    ),
    _declare(  # 11.7 SCSI Data-In
        DataIn,
        i_bit=_I_RESERVED,
        byte1=(
            "final" / Flag,
            "acknowledge" / Flag,
            Padding(3),
            "overflow" / Flag,
            "underflow" / Flag,
            "status_present" / Flag,
        ),
        bytes2_3=(Padding(1), "status" / Int8ub),
        bytes8_47=(
            "lun" / Int64ub,  # 8
            "itt" / Int32ub,  # 16
            "ttt" / Int32ub,  # 20
            "stat_sn" / Int32ub,  # 24
            "exp_cmd_sn" / Int32ub,  # 28
            "max_cmd_sn" / Int32ub,  # 32
            "data_sn" / Int32ub,  # 36
            "buffer_offset" / Int32ub,  # 40
            "residual_count" / Int32ub,  # 44
        ),
    ),
    _declare(  # 11.15 Logout Response
        LogoutResponse,
        i_bit=_I_RESERVED,
        byte1=(_ONE, Padding(7)),
        bytes2_3=("response" / Int8ub, Padding(1)),
        bytes8_47=(
            Padding(8),  # 8
            "itt" / Int32ub,  # 16
            Padding(4),  # 20
            "stat_sn" / Int32ub,  # 24
            "exp_cmd_sn" / Int32ub,  # 28
            "max_cmd_sn" / Int32ub,  # 32
            Padding(4),  # 36
            "time2wait" / Int16ub,  # 40
            "time2retain" / Int16ub,  # 42
            Padding(4),  # 44
        ),
    ),
    _declare(  # 11.8 Ready To Transfer
        R2T,
        i_bit=_I_RESERVED,
        byte1=(_ONE, Padding(7)),
        bytes2_3=(Padding(2),),
        bytes8_47=(
            "lun" / Int64ub,  # 8
            "itt" / Int32ub,  # 16
            "ttt" / Int32ub,  # 20
            "stat_sn" / Int32ub,  # 24
            "exp_cmd_sn" / Int32ub,  # 28
            "max_cmd_sn" / Int32ub,  # 32
            "r2t_sn" / Int32ub,  # 36
            "buffer_offset" / Int32ub,  # 40
            "desired_data_transfer_length" / Int32ub,  # 44
        ),
    ),
    _declare(  # 11.9 Asynchronous Message
        AsyncMessage,
        i_bit=_I_RESERVED,
        byte1=(_ONE, Padding(7)),
        bytes2_3=(Padding(2),),
        bytes8_47=(
            "lun" / Int64ub,  # 8
            _ITT_RESERVED,  # 16
            Padding(4),  # 20
            "stat_sn" / Int32ub,  # 24
            "exp_cmd_sn" / Int32ub,  # 28
            "max_cmd_sn" / Int32ub,  # 32
            "async_event" / Int8ub,  # 36
            "async_vcode" / Int8ub,  # 37
            "parameter1" / Int16ub,  # 38
            "parameter2" / Int16ub,  # 40
            "parameter3" / Int16ub,  # 42
            Padding(4),  # 44
        ),
    ),
    _declare(  # 11.17 Reject
        Reject,
        i_bit=_I_RESERVED,
        byte1=(_ONE, Padding(7)),
        bytes2_3=("reason" / Int8ub, Padding(1)),
        bytes8_47=(
            Padding(8),  # 8
            _ITT_RESERVED,  # 16
            Padding(4),  # 20
            "stat_sn" / Int32ub,  # 24
            "exp_cmd_sn" / Int32ub,  # 28
            "max_cmd_sn" / Int32ub,  # 32
            "data_sn_or_r2t_sn" / Int32ub,  # 36
            Padding(8),  # 40
        ),
    ),
)

LAYOUTS: dict[Opcode, BhsLayout] = {layout.pdu_class.OPCODE: layout for layout in _LAYOUTS}
if set(LAYOUTS) != set(PDU_CLASSES):
    raise AssertionError("every opcode in pdu.PDU_CLASSES needs exactly one layout")

_OPCODES_BY_VALUE: dict[int, Opcode] = {int(op): op for op in Opcode}

# ---------------------------------------------------------------------------------------
# Header lengths, read cheaply without construct

_LENGTHS = struct.Struct(">4xI")


class HeaderLengths(NamedTuple):
    ahs_length: int  # TotalAHSLength in bytes (the field counts 4-byte words)
    data_segment_length: int  # without padding


def _require_header(bhs: bytes | bytearray | memoryview) -> None:
    if len(bhs) < BHS_LENGTH:
        raise MalformedPdu(f"a BHS is {BHS_LENGTH} bytes, not {len(bhs)}", header=bytes(bhs))


def bhs_lengths(bhs: bytes | bytearray | memoryview) -> HeaderLengths:
    """TotalAHSLength (in bytes) and DataSegmentLength of a 48-byte header."""
    _require_header(bhs)
    (word,) = _LENGTHS.unpack_from(bhs)
    return HeaderLengths((word >> 24) * 4, word & 0xFFFFFF)


def opcode_of(bhs: bytes | bytearray | memoryview) -> Opcode:
    """The opcode in byte 0; reserved opcode values raise UnknownOpcode."""
    _require_header(bhs)
    value = bhs[0] & OPCODE_MASK
    opcode = _OPCODES_BY_VALUE.get(value)
    if opcode is None:
        raise UnknownOpcode(f"reserved opcode 0x{value:02x}", header=bytes(bhs[:BHS_LENGTH]))
    return opcode


def padded_length(length: int) -> int:
    """``length`` rounded up to a multiple of 4 (data segments and AHSs are padded)."""
    return (length + 3) & ~3


# ---------------------------------------------------------------------------------------
# AHS codec

_AHS_HEADER = struct.Struct(">HB")
_AHS_HEADER_LENGTH = _AHS_HEADER.size
MAX_TOTAL_AHS_LENGTH = 255 * 4


def encode_ahs(segments: Sequence[Ahs]) -> bytes:
    """AHSLength (2 bytes), AHSType (1 byte), the payload, zero padding to 4 bytes; each."""
    parts: list[bytes] = []
    for segment in segments:
        payload = bytes(segment.payload)
        if not 0 <= segment.ahs_type <= 0xFF or len(payload) > 0xFFFF:
            raise PduEncodeError(f"AHS type {segment.ahs_type} / length {len(payload)} invalid")
        parts.append(_AHS_HEADER.pack(len(payload), segment.ahs_type))
        parts.append(payload)
        parts.append(bytes(-(_AHS_HEADER_LENGTH + len(payload)) % 4))
    encoded = b"".join(parts)
    if len(encoded) > MAX_TOTAL_AHS_LENGTH:
        raise PduEncodeError(f"{len(encoded)} bytes of AHS exceed TotalAHSLength's reach")
    return encoded


def decode_ahs(data: bytes | bytearray | memoryview, header: bytes | None = None) -> list[Ahs]:
    """Split the AHS area after a BHS into segments; lengths must tile it exactly."""
    segments: list[Ahs] = []
    offset = 0
    end = len(data)
    while offset < end:
        if end - offset < _AHS_HEADER_LENGTH:
            raise TruncatedAhs(f"{end - offset} stray AHS bytes", header=header)
        length, ahs_type = _AHS_HEADER.unpack_from(data, offset)
        payload_start = offset + _AHS_HEADER_LENGTH
        payload_end = payload_start + length
        if payload_end > end:
            raise TruncatedAhs(
                f"AHS of {length} bytes overruns TotalAHSLength ({end} bytes)", header=header
            )
        segments.append(Ahs(ahs_type, bytes(data[payload_start:payload_end])))
        offset = padded_length(payload_end)
    return segments


# ---------------------------------------------------------------------------------------
# BHS encode/decode through the construct declarations

_BUILD_ERRORS = (ConstructError, struct.error, KeyError, TypeError, ValueError, OverflowError)


def encode_bhs(pdu: Pdu, ahs_length: int | None = None) -> bytes:
    """The 48-byte BHS of ``pdu``; TotalAHSLength and DataSegmentLength come from
    ``pdu.ahs`` and ``pdu.data`` (``ahs_length`` in bytes, when the caller encoded the AHS)."""
    layout = LAYOUTS[pdu.OPCODE]
    if ahs_length is None:
        ahs_length = len(encode_ahs(pdu.ahs)) if pdu.ahs else 0
    elif ahs_length % 4:
        raise PduEncodeError(f"AHS length {ahs_length} is not a whole number of words")
    values: dict[str, Any] = {name: getattr(pdu, name) for name in layout.field_names}
    container: dict[str, Any] = {
        group: {name: values.pop(name) for name in members}
        for group, members in layout.bit_groups.items()
    }
    container.update(values)
    container["total_ahs_length"] = ahs_length // 4
    container["data_segment_length"] = len(pdu.data)
    try:
        encoded: bytes = layout.struct.build(container)
    except _BUILD_ERRORS as exc:
        raise PduEncodeError(f"cannot encode {pdu!r}: {exc}") from exc
    if len(encoded) != BHS_LENGTH:  # compiled Bytes(n) does not check the length it is given
        raise PduEncodeError(f"cannot encode {pdu!r}: fixed-size field of the wrong size")
    return encoded


def decode_bhs(
    bhs: bytes | bytearray | memoryview, ahs: bytes | bytearray | memoryview = b""
) -> Pdu:
    """The PDU in a 48-byte BHS (and the AHS bytes that followed it); ``data`` is left empty.

    Raises UnknownOpcode, TruncatedAhs or MalformedPdu.
    """
    if len(bhs) != BHS_LENGTH:
        raise MalformedPdu(f"a BHS is {BHS_LENGTH} bytes, not {len(bhs)}", header=bytes(bhs))
    header = bytes(bhs)
    layout = LAYOUTS[opcode_of(header)]
    ahs_length, _ = bhs_lengths(header)
    if ahs_length != len(ahs):
        raise TruncatedAhs(
            f"TotalAHSLength says {ahs_length} bytes, {len(ahs)} given", header=header
        )
    parsed: Container = layout.struct.parse(header)
    values = {name: parsed[name] for name in layout.field_names if name in parsed}
    for group in layout.bit_groups:
        bits = parsed[group]
        values.update((name, bits[name]) for name in layout.bit_groups[group])
    pdu = layout.pdu_class(**values, ahs=decode_ahs(ahs, header) if ahs else [])
    check_fields(pdu, header)
    return pdu


# ---------------------------------------------------------------------------------------
# Reserved values in defined fields (shared with fastpath)


def _reject(pdu: Pdu, header: bytes, why: str) -> MalformedPdu:
    return MalformedPdu(f"{type(pdu).__name__}: {why}", header=header)


def _check_login_stages(pdu: LoginRequest | LoginResponse, header: bytes) -> None:
    if pdu.transit and pdu.cont:
        raise _reject(pdu, header, "T and C bits both set")
    if pdu.csg == 2 or (pdu.transit and pdu.nsg == 2):
        raise _reject(pdu, header, "reserved login stage 2")


def check_fields(pdu: Pdu, header: bytes) -> None:
    """Raise MalformedPdu when a defined field holds a reserved or contradictory value."""
    match pdu:
        case ScsiCommand(attr=attr) if attr > TaskAttribute.ACA:
            raise _reject(pdu, header, f"reserved task attribute {attr}")
        case ScsiResponse() if (pdu.overflow and pdu.underflow) or (
            pdu.bidi_overflow and pdu.bidi_underflow
        ):
            raise _reject(pdu, header, "overflow and underflow both set")
        case DataIn(status_present=True, final=False):
            raise _reject(pdu, header, "S bit without F bit")
        case DataIn(status_present=True, overflow=True, underflow=True):
            raise _reject(pdu, header, "overflow and underflow both set")
        case LoginRequest() | LoginResponse():
            _check_login_stages(pdu, header)
        case TextRequest(final=True, cont=True) | TextResponse(final=True, cont=True):
            raise _reject(pdu, header, "F and C bits both set")
        case LogoutRequest(reason=reason) if reason > LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY:
            raise _reject(pdu, header, f"reserved logout reason {reason}")
        case SnackRequest(snack_type=snack_type) if snack_type > SnackType.R_DATA:
            raise _reject(pdu, header, f"reserved SNACK type {snack_type}")
        case _:
            pass


# ---------------------------------------------------------------------------------------
# SCSI Command helpers: CDBs longer than 16 bytes, bidirectional read length

_BIDI_READ_LENGTH = struct.Struct(">xI")


def full_cdb(command: ScsiCommand) -> bytes:
    """The whole CDB: the 16 bytes of the BHS, continued by an Extended CDB AHS if any."""
    for segment in command.ahs:
        if segment.ahs_type == AhsType.EXTENDED_CDB:
            return command.cdb + segment.payload[1:]  # the payload opens with a reserved byte
    return command.cdb


def bidi_read_length(command: ScsiCommand) -> int | None:
    """The Bidirectional Read Expected Data Transfer Length AHS, if present."""
    for segment in command.ahs:
        if segment.ahs_type == AhsType.BIDI_READ_LENGTH:
            if len(segment.payload) != _BIDI_READ_LENGTH.size:
                raise MalformedPdu(f"bidi read length AHS of {len(segment.payload)} bytes")
            (length,) = _BIDI_READ_LENGTH.unpack(segment.payload)
            return int(length)
    return None


def bidi_read_length_ahs(length: int) -> Ahs:
    return Ahs(AhsType.BIDI_READ_LENGTH, _BIDI_READ_LENGTH.pack(length))


def scsi_command_for_cdb(
    cdb: bytes, *, bidi_read_length: int | None = None, **fields: Any
) -> ScsiCommand:
    """A ScsiCommand carrying ``cdb`` of any length: zero-padded to 16 bytes in the BHS,
    the bytes past 16 in an Extended CDB AHS (RFC 7143 section 11.3.5)."""
    if not cdb:
        raise PduEncodeError("empty CDB")
    ahs: list[Ahs] = []
    if len(cdb) > CDB_IN_BHS:
        ahs.append(Ahs(AhsType.EXTENDED_CDB, b"\x00" + cdb[CDB_IN_BHS:]))
    if bidi_read_length is not None:
        ahs.append(bidi_read_length_ahs(bidi_read_length))
    head = cdb[:CDB_IN_BHS].ljust(CDB_IN_BHS, b"\x00")
    return ScsiCommand(cdb=head, ahs=ahs, **fields)


__all__ = [
    "LAYOUTS",
    "BhsLayout",
    "HeaderLengths",
    "bhs_lengths",
    "bidi_read_length",
    "bidi_read_length_ahs",
    "check_fields",
    "decode_ahs",
    "decode_bhs",
    "encode_ahs",
    "encode_bhs",
    "full_cdb",
    "opcode_of",
    "padded_length",
    "scsi_command_for_cdb",
]
