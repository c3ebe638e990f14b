"""Sense data (SPC-4 4.5): sense keys, named ASC/ASCQ pairs, builders and a parser.

Both formats are built: fixed (response code 0x70, 18 bytes) and descriptor (0x72) with the
information, command-specific and sense-key-specific descriptors. The parser accepts either
so the initiator can decode whatever a target sends.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum, IntEnum

FIXED_CURRENT = 0x70
FIXED_DEFERRED = 0x71
DESCRIPTOR_CURRENT = 0x72
DESCRIPTOR_DEFERRED = 0x73
FIXED_SENSE_LENGTH = 18

_INFORMATION_DESCRIPTOR = 0x00
_COMMAND_SPECIFIC_DESCRIPTOR = 0x01
_SENSE_KEY_SPECIFIC_DESCRIPTOR = 0x02


class SenseKey(IntEnum):
    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    VENDOR_SPECIFIC = 0x9
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    VOLUME_OVERFLOW = 0xD
    MISCOMPARE = 0xE
    COMPLETED = 0xF


class Asc(Enum):
    """Additional sense code and qualifier pairs, value = (asc, ascq)."""

    NO_ADDITIONAL_SENSE = (0x00, 0x00)
    LOGICAL_UNIT_NOT_READY_CAUSE_NOT_REPORTABLE = (0x04, 0x00)
    LOGICAL_UNIT_NOT_READY_BECOMING_READY = (0x04, 0x01)
    LOGICAL_UNIT_NOT_READY_INITIALIZING_COMMAND_REQUIRED = (0x04, 0x02)
    LOGICAL_UNIT_NOT_READY_MANUAL_INTERVENTION_REQUIRED = (0x04, 0x03)
    LOGICAL_UNIT_NOT_READY_TARGET_PORT_IN_TRANSITION = (0x04, 0x0A)
    LOGICAL_UNIT_NOT_READY_TARGET_PORT_IN_STANDBY = (0x04, 0x0B)
    LOGICAL_UNIT_NOT_READY_SANITIZE_IN_PROGRESS = (0x04, 0x1B)
    LOGICAL_UNIT_COMMUNICATION_FAILURE = (0x08, 0x00)
    UNREACHABLE_COPY_TARGET = (0x08, 0x04)
    COPY_TARGET_DEVICE_NOT_REACHABLE = (0x0D, 0x02)
    INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT = (0x0E, 0x03)
    WRITE_ERROR = (0x0C, 0x00)
    UNRECOVERED_READ_ERROR = (0x11, 0x00)
    MISCOMPARE_DURING_VERIFY = (0x1D, 0x00)
    PARAMETER_LIST_LENGTH_ERROR = (0x1A, 0x00)
    INVALID_COMMAND_OPERATION_CODE = (0x20, 0x00)
    LBA_OUT_OF_RANGE = (0x21, 0x00)
    INVALID_FIELD_IN_CDB = (0x24, 0x00)
    LOGICAL_UNIT_NOT_SUPPORTED = (0x25, 0x00)
    INVALID_FIELD_IN_PARAMETER_LIST = (0x26, 0x00)
    PARAMETER_NOT_SUPPORTED = (0x26, 0x01)
    PARAMETER_VALUE_INVALID = (0x26, 0x02)
    INVALID_RELEASE_OF_PERSISTENT_RESERVATION = (0x26, 0x04)
    TOO_MANY_TARGET_DESCRIPTORS = (0x26, 0x06)
    UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE = (0x26, 0x07)
    TOO_MANY_SEGMENT_DESCRIPTORS = (0x26, 0x08)
    UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE = (0x26, 0x09)
    WRITE_PROTECTED = (0x27, 0x00)
    POWER_ON_RESET_OR_BUS_DEVICE_RESET = (0x29, 0x00)
    POWER_ON_OCCURRED = (0x29, 0x01)
    SCSI_BUS_RESET_OCCURRED = (0x29, 0x02)
    BUS_DEVICE_RESET = (0x29, 0x03)
    DEVICE_INTERNAL_RESET = (0x29, 0x04)
    I_T_NEXUS_LOSS_OCCURRED = (0x29, 0x07)
    PARAMETERS_CHANGED = (0x2A, 0x00)
    MODE_PARAMETERS_CHANGED = (0x2A, 0x01)
    RESERVATIONS_PREEMPTED = (0x2A, 0x03)
    RESERVATIONS_RELEASED = (0x2A, 0x04)
    REGISTRATIONS_PREEMPTED = (0x2A, 0x05)
    CAPACITY_DATA_HAS_CHANGED = (0x2A, 0x09)
    COMMANDS_CLEARED_BY_ANOTHER_INITIATOR = (0x2F, 0x00)
    SAVING_PARAMETERS_NOT_SUPPORTED = (0x39, 0x00)
    MEDIUM_NOT_PRESENT = (0x3A, 0x00)
    REPORTED_LUNS_DATA_HAS_CHANGED = (0x3F, 0x0E)
    INQUIRY_DATA_HAS_CHANGED = (0x3F, 0x03)
    INTERNAL_TARGET_FAILURE = (0x44, 0x00)
    PROTOCOL_SERVICE_CRC_ERROR = (0x47, 0x05)  # iSCSI data digest error (RFC 7143 11.4.7.2)
    INVALID_MESSAGE_ERROR = (0x49, 0x00)
    COMMAND_PHASE_ERROR = (0x4A, 0x00)
    DATA_PHASE_ERROR = (0x4B, 0x00)
    OVERLAPPED_COMMANDS_ATTEMPTED = (0x4E, 0x00)
    MEDIUM_REMOVAL_PREVENTED = (0x53, 0x02)
    INSUFFICIENT_REGISTRATION_RESOURCES = (0x55, 0x04)

    # Aliases kept for readability at call sites.
    POWER_ON_RESET = (0x29, 0x00)
    MEDIUM_ERROR = (0x11, 0x00)

    @property
    def asc(self) -> int:
        return self.value[0]

    @property
    def ascq(self) -> int:
        return self.value[1]

    @classmethod
    def lookup(cls, asc: int, ascq: int) -> Asc | None:
        """The named pair for (asc, ascq), or None if it has no name here."""
        try:
            return cls((asc, ascq))
        except ValueError:
            return None


AscLike = Asc | tuple[int, int]


def _pair(code: AscLike) -> tuple[int, int]:
    return code.value if isinstance(code, Asc) else code


@dataclass(frozen=True, slots=True)
class FieldPointer:
    """Sense-key-specific field pointer (SPC-4 4.5.2.4.2) for ILLEGAL REQUEST.

    ``in_cdb`` is the C/D bit (True: the error is in the CDB, False: in the parameter data);
    ``byte`` is the offset of the offending field; ``bit`` (0-7) when a bit is to blame.
    """

    in_cdb: bool
    byte: int
    bit: int | None = None

    def encode(self) -> bytes:
        first = 0x80 | (0x40 if self.in_cdb else 0)
        if self.bit is not None:
            first |= 0x08 | (self.bit & 0x07)
        return bytes([first]) + struct.pack(">H", self.byte & 0xFFFF)

    @classmethod
    def decode(cls, sks: bytes) -> FieldPointer | None:
        if len(sks) < 3 or not sks[0] & 0x80:
            return None
        bit = sks[0] & 0x07 if sks[0] & 0x08 else None
        return cls(in_cdb=bool(sks[0] & 0x40), byte=struct.unpack_from(">H", sks, 1)[0], bit=bit)


@dataclass(frozen=True, slots=True)
class ProgressIndication:
    """Sense-key-specific progress indication (SPC-4 4.5.2.4.4) for NOT READY while an
    operation such as SANITIZE runs: ``fraction`` done, 0.0 to 1.0, sent as x/65536."""

    fraction: float

    def encode(self) -> bytes:
        done = min(0xFFFF, max(0, int(self.fraction * 0x10000)))
        return bytes([0x80]) + struct.pack(">H", done)


SenseKeySpecific = FieldPointer | ProgressIndication


@dataclass(frozen=True, slots=True)
class SenseData:
    key: SenseKey | int
    asc: int
    ascq: int
    information: int | None = None
    command_specific: int | None = None
    field_pointer: FieldPointer | None = None
    sense_key_specific: bytes | None = None  # raw 3 bytes when SKSV is set
    descriptor_format: bool = False
    deferred: bool = False

    @property
    def code(self) -> Asc | None:
        return Asc.lookup(self.asc, self.ascq)


def build_fixed(
    key: SenseKey,
    code: AscLike,
    *,
    information: int | None = None,
    command_specific: int | None = None,
    field_pointer: SenseKeySpecific | None = None,
    deferred: bool = False,
) -> bytes:
    """Fixed-format sense data (18 bytes). An information value wider than 32 bits cannot be
    represented here, so VALID stays clear and the field zero (SPC-4 4.5.3)."""
    asc, ascq = _pair(code)
    sense = bytearray(FIXED_SENSE_LENGTH)
    sense[0] = FIXED_DEFERRED if deferred else FIXED_CURRENT
    if information is not None and 0 <= information <= 0xFFFFFFFF:
        sense[0] |= 0x80
        struct.pack_into(">I", sense, 3, information)
    sense[2] = int(key) & 0x0F
    sense[7] = FIXED_SENSE_LENGTH - 8
    if command_specific is not None:
        struct.pack_into(">I", sense, 8, command_specific & 0xFFFFFFFF)
    sense[12] = asc
    sense[13] = ascq
    if field_pointer is not None:
        sense[15:18] = field_pointer.encode()
    return bytes(sense)


def build_descriptor(
    key: SenseKey,
    code: AscLike,
    *,
    information: int | None = None,
    command_specific: int | None = None,
    field_pointer: SenseKeySpecific | None = None,
    deferred: bool = False,
) -> bytes:
    """Descriptor-format sense data (SPC-4 4.5.2) with only the descriptors that apply."""
    asc, ascq = _pair(code)
    descriptors = bytearray()
    if information is not None:
        descriptors += bytes([_INFORMATION_DESCRIPTOR, 0x0A, 0x80, 0x00])
        descriptors += struct.pack(">Q", information & 0xFFFFFFFFFFFFFFFF)
    if command_specific is not None:
        descriptors += bytes([_COMMAND_SPECIFIC_DESCRIPTOR, 0x0A, 0x00, 0x00])
        descriptors += struct.pack(">Q", command_specific & 0xFFFFFFFFFFFFFFFF)
    if field_pointer is not None:
        descriptors += bytes([_SENSE_KEY_SPECIFIC_DESCRIPTOR, 0x06, 0x00, 0x00])
        descriptors += field_pointer.encode() + b"\x00"
    header = bytes(
        [
            DESCRIPTOR_DEFERRED if deferred else DESCRIPTOR_CURRENT,
            int(key) & 0x0F,
            asc,
            ascq,
            0,
            0,
            0,
            len(descriptors),
        ]
    )
    return header + bytes(descriptors)


def build_sense(
    key: SenseKey,
    code: AscLike,
    *,
    descriptor_format: bool = False,
    information: int | None = None,
    command_specific: int | None = None,
    field_pointer: SenseKeySpecific | None = None,
) -> bytes:
    """Either format, as chosen by the D_SENSE bit of the control mode page or a DESC bit."""
    builder = build_descriptor if descriptor_format else build_fixed
    return builder(
        key,
        code,
        information=information,
        command_specific=command_specific,
        field_pointer=field_pointer,
    )


class SenseParseError(ValueError):
    """The bytes are not sense data this parser understands."""


def parse_sense(sense: bytes | bytearray | memoryview) -> SenseData:
    """Decode fixed (0x70/0x71) or descriptor (0x72/0x73) sense data.

    Truncated sense (the target may cut it to the allocation length) is accepted as long as
    the sense key is present; absent fields decode as zero / None.
    """
    raw = bytes(sense)
    if not raw:
        raise SenseParseError("empty sense data")
    response_code = raw[0] & 0x7F
    if response_code in (FIXED_CURRENT, FIXED_DEFERRED):
        return _parse_fixed(raw, deferred=response_code == FIXED_DEFERRED)
    if response_code in (DESCRIPTOR_CURRENT, DESCRIPTOR_DEFERRED):
        return _parse_descriptor(raw, deferred=response_code == DESCRIPTOR_DEFERRED)
    raise SenseParseError(f"unknown sense response code {response_code:#04x}")


def _sense_key(value: int) -> SenseKey | int:
    try:
        return SenseKey(value & 0x0F)
    except ValueError:
        return value & 0x0F


def _parse_fixed(raw: bytes, *, deferred: bool) -> SenseData:
    if len(raw) < 3:
        raise SenseParseError("fixed sense data shorter than 3 bytes")
    padded = raw.ljust(FIXED_SENSE_LENGTH, b"\x00")
    information = struct.unpack_from(">I", padded, 3)[0] if raw[0] & 0x80 else None
    command_specific = struct.unpack_from(">I", padded, 8)[0] if len(raw) >= 12 else None
    sks = padded[15:18]
    has_sks = bool(sks[0] & 0x80)
    key = _sense_key(raw[2])
    return SenseData(
        key=key,
        asc=padded[12],
        ascq=padded[13],
        information=information,
        command_specific=command_specific,
        field_pointer=FieldPointer.decode(sks) if has_sks and key == 5 else None,
        sense_key_specific=sks if has_sks else None,
        descriptor_format=False,
        deferred=deferred,
    )


def _parse_descriptor(raw: bytes, *, deferred: bool) -> SenseData:
    if len(raw) < 4:
        raise SenseParseError("descriptor sense data shorter than 4 bytes")
    key = _sense_key(raw[1])
    information = command_specific = None
    sks: bytes | None = None
    end = min(len(raw), 8 + (raw[7] if len(raw) > 7 else 0))
    pos = 8
    while pos + 2 <= end:
        kind, length = raw[pos], raw[pos + 1]
        body = raw[pos + 2 : pos + 2 + length]
        if kind == _INFORMATION_DESCRIPTOR and len(body) >= 10 and body[0] & 0x80:
            information = struct.unpack_from(">Q", body, 2)[0]
        elif kind == _COMMAND_SPECIFIC_DESCRIPTOR and len(body) >= 10:
            command_specific = struct.unpack_from(">Q", body, 2)[0]
        elif kind == _SENSE_KEY_SPECIFIC_DESCRIPTOR and len(body) >= 5 and body[2] & 0x80:
            sks = body[2:5]
        pos += 2 + length
    return SenseData(
        key=key,
        asc=raw[2],
        ascq=raw[3],
        information=information,
        command_specific=command_specific,
        field_pointer=FieldPointer.decode(sks) if sks is not None and key == 5 else None,
        sense_key_specific=sks,
        descriptor_format=True,
        deferred=deferred,
    )


class CheckCondition(Exception):
    """Raised by command emulation; the logical unit turns it into CHECK CONDITION + sense."""

    def __init__(
        self,
        key: SenseKey,
        code: AscLike,
        *,
        information: int | None = None,
        command_specific: int | None = None,
        field_pointer: SenseKeySpecific | None = None,
    ) -> None:
        asc, ascq = _pair(code)
        super().__init__(f"{key.name} asc={asc:#04x} ascq={ascq:#04x}")
        self.key = key
        self.code: tuple[int, int] = (asc, ascq)
        self.information = information
        self.command_specific = command_specific
        self.field_pointer = field_pointer

    def sense(self, *, descriptor_format: bool = False) -> bytes:
        return build_sense(
            self.key,
            self.code,
            descriptor_format=descriptor_format,
            information=self.information,
            command_specific=self.command_specific,
            field_pointer=self.field_pointer,
        )


def invalid_field_in_cdb(byte: int, bit: int | None = None) -> CheckCondition:
    """ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at ``byte`` (and ``bit``)."""
    return CheckCondition(
        SenseKey.ILLEGAL_REQUEST,
        Asc.INVALID_FIELD_IN_CDB,
        field_pointer=FieldPointer(in_cdb=True, byte=byte, bit=bit),
    )


def invalid_field_in_parameter_list(byte: int, bit: int | None = None) -> CheckCondition:
    """ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST pointing into the data-out buffer."""
    return CheckCondition(
        SenseKey.ILLEGAL_REQUEST,
        Asc.INVALID_FIELD_IN_PARAMETER_LIST,
        field_pointer=FieldPointer(in_cdb=False, byte=byte, bit=bit),
    )


def illegal_request(code: AscLike, *, information: int | None = None) -> CheckCondition:
    return CheckCondition(SenseKey.ILLEGAL_REQUEST, code, information=information)
