"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.24): the logical unit as a
copy manager for block-to-block copies between vDisks it can identify.

Supported descriptors: identification target descriptors (0xE4) naming a logical unit by
its NAA or T10 vendor designator, and block-to-block segment descriptors (0x02). The copy
runs to completion inside the command, so COPY STATUS always reports a finished copy.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from iscsicore.scsi.cdb import allocation_length
from iscsicore.scsi.opcodes import ScsiOp
from iscsicore.scsi.sense import (
    Asc,
    CheckCondition,
    FieldPointer,
    SenseKey,
    illegal_request,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
)
from stargate.scsi import vpd
from stargate.scsi.command import GOOD, Command, CommandSpec, Nexus, ScsiResult, data_in

if TYPE_CHECKING:
    from stargate.scsi.lu import LogicalUnit

HEADER_LENGTH = 16
IDENTIFICATION_TARGET_DESCRIPTOR = 0xE4
TARGET_DESCRIPTOR_LENGTH = 32
LONG_TARGET_DESCRIPTORS = frozenset({0xEA, 0xEB})  # IPv6 and IP copy service: 64 bytes
BLOCK_TO_BLOCK_SEGMENT = 0x02
BLOCK_TO_BLOCK_LENGTH = 28
_COPY_CHUNK = 1 << 20


class CopyResultsAction(IntEnum):
    COPY_STATUS = 0x00
    RECEIVE_DATA = 0x01
    OPERATING_PARAMETERS = 0x03


class ListIdUsage(IntEnum):
    """LIST ID USAGE (SPC-4 table 110)."""

    HOLD = 0b00  # keep the status for RECEIVE COPY RESULTS
    RESERVED = 0b01
    NO_HOLD = 0b10
    NO_LIST_ID = 0b11


class CopyManagerStatus(IntEnum):
    COMPLETED = 0x01
    COMPLETED_WITH_ERRORS = 0x02


@dataclass(frozen=True, slots=True)
class CopyLimits:
    max_target_descriptors: int = 2
    max_segment_descriptors: int = 4
    max_descriptor_list_length: int = 1024
    max_segment_bytes: int = 32 * 1024 * 1024


LIMITS = CopyLimits()


@dataclass(frozen=True, slots=True)
class CopyStatus:
    status: CopyManagerStatus
    segments_processed: int
    bytes_transferred: int


class CopyResults:
    """Held COPY STATUS per (nexus, list identifier), newest kept when the table fills."""

    MAX_HELD = 64

    def __init__(self) -> None:
        self._held: OrderedDict[tuple[Nexus, int], CopyStatus] = OrderedDict()

    def hold(self, nexus: Nexus, list_id: int, status: CopyStatus) -> None:
        self._held[(nexus, list_id)] = status
        self._held.move_to_end((nexus, list_id))
        while len(self._held) > self.MAX_HELD:
            self._held.popitem(last=False)

    def get(self, nexus: Nexus, list_id: int) -> CopyStatus | None:
        return self._held.get((nexus, list_id))


# A resolver the target can give a logical unit so copies may reach its sibling vDisks:
# designator bytes (NAA or T10 vendor id) -> the logical unit, or None.
CopyTargetResolver = Callable[[bytes], "LogicalUnit | None"]


@dataclass(frozen=True, slots=True)
class Segment:
    source: int
    destination: int
    blocks: int
    source_lba: int
    destination_lba: int


def _copy_aborted(code: Asc, segment: int) -> CheckCondition:
    """COPY ABORTED; COMMAND-SPECIFIC INFORMATION names the segment (SPC-4 6.4.5)."""
    return CheckCondition(SenseKey.COPY_ABORTED, code, command_specific=segment)


def _parameter_error(code: Asc, byte: int) -> CheckCondition:
    return CheckCondition(
        SenseKey.ILLEGAL_REQUEST, code, field_pointer=FieldPointer(in_cdb=False, byte=byte)
    )


def _split_targets(data: bytes, end: int) -> list[int]:
    """Offsets of the target descriptors in [HEADER_LENGTH, end)."""
    offsets, position = [], HEADER_LENGTH
    while position < end:
        offsets.append(position)
        size = 64 if data[position] in LONG_TARGET_DESCRIPTORS else TARGET_DESCRIPTOR_LENGTH
        position += size
    if position != end:
        raise illegal_request(Asc.PARAMETER_LIST_LENGTH_ERROR)
    return offsets


def _split_segments(data: bytes, start: int, end: int) -> list[int]:
    offsets, position = [], start
    while position < end:
        if position + 4 > end:
            raise illegal_request(Asc.PARAMETER_LIST_LENGTH_ERROR)
        offsets.append(position)
        position += 4 + struct.unpack_from(">H", data, position + 2)[0]
    if position != end:
        raise illegal_request(Asc.PARAMETER_LIST_LENGTH_ERROR)
    return offsets


def _resolve_target(lu: LogicalUnit, data: bytes, offset: int) -> LogicalUnit | None:
    """The logical unit an identification target descriptor names, if reachable."""
    if data[offset + 1] & 0x1F:  # PERIPHERAL DEVICE TYPE: only block devices
        raise invalid_field_in_parameter_list(offset + 1, 4)
    designator_type = data[offset + 5] & 0x0F
    length = min(data[offset + 7], 20)
    designator = data[offset + 8 : offset + 8 + length]
    if designator in vpd.lu_designators(lu, designator_type):
        target: LogicalUnit | None = lu
    elif lu.copy_target_resolver is not None:
        target = lu.copy_target_resolver(designator)
    else:
        target = None
    if target is not None:
        block_length = int.from_bytes(data[offset + 29 : offset + 32], "big")
        if block_length != target.block_size:
            raise invalid_field_in_parameter_list(offset + 29)
    return target


def _parse_segment(data: bytes, offset: int) -> Segment:
    if data[offset] != BLOCK_TO_BLOCK_SEGMENT:
        raise _parameter_error(Asc.UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE, offset)
    if struct.unpack_from(">H", data, offset + 2)[0] != BLOCK_TO_BLOCK_LENGTH - 4:
        raise invalid_field_in_parameter_list(offset + 2)
    source, destination = struct.unpack_from(">HH", data, offset + 4)
    blocks, source_lba, destination_lba = struct.unpack_from(">HQQ", data, offset + 10)
    return Segment(source, destination, blocks, source_lba, destination_lba)


def extended_copy(lu: LogicalUnit, command: Command) -> ScsiResult:
    cdb = command.cdb
    if command.service_action != 0x00:  # only EXTENDED COPY(LID1)
        raise invalid_field_in_cdb(1, 4)
    length = allocation_length(cdb, 10, 4)
    if length == 0:
        return GOOD
    data = bytes(command.data_out[:length])
    if len(data) < length or length < HEADER_LENGTH:
        raise illegal_request(Asc.PARAMETER_LIST_LENGTH_ERROR)
    list_id = data[0]
    usage = ListIdUsage((data[1] >> 3) & 0x03)
    if usage is ListIdUsage.RESERVED:
        raise invalid_field_in_parameter_list(1, 4)
    (target_length,) = struct.unpack_from(">H", data, 2)
    segment_length, inline_length = struct.unpack_from(">II", data, 8)
    if target_length + segment_length > LIMITS.max_descriptor_list_length:
        raise illegal_request(Asc.PARAMETER_LIST_LENGTH_ERROR)
    if HEADER_LENGTH + target_length + segment_length + inline_length > length:
        raise illegal_request(Asc.PARAMETER_LIST_LENGTH_ERROR)
    if inline_length:  # MAXIMUM INLINE DATA LENGTH is 0
        raise invalid_field_in_parameter_list(12)

    target_end = HEADER_LENGTH + target_length
    target_offsets = _split_targets(data, target_end)
    segment_offsets = _split_segments(data, target_end, target_end + segment_length)
    if len(target_offsets) > LIMITS.max_target_descriptors:
        raise _parameter_error(Asc.TOO_MANY_TARGET_DESCRIPTORS, 2)
    if len(segment_offsets) > LIMITS.max_segment_descriptors:
        raise _parameter_error(Asc.TOO_MANY_SEGMENT_DESCRIPTORS, 8)
    for offset in target_offsets:
        if data[offset] != IDENTIFICATION_TARGET_DESCRIPTOR:
            raise _parameter_error(Asc.UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE, offset)
    segments = [_parse_segment(data, offset) for offset in segment_offsets]
    targets = [_resolve_target(lu, data, offset) for offset in target_offsets]

    processed = transferred = 0
    try:
        for index, segment in enumerate(segments):
            transferred += _copy_segment(lu, targets, segment, index)
            processed += 1
    except CheckCondition:
        if usage is ListIdUsage.HOLD:
            lu.copy_results.hold(
                command.nexus,
                list_id,
                CopyStatus(CopyManagerStatus.COMPLETED_WITH_ERRORS, processed, transferred),
            )
        raise
    if usage is ListIdUsage.HOLD:
        lu.copy_results.hold(
            command.nexus, list_id, CopyStatus(CopyManagerStatus.COMPLETED, processed, transferred)
        )
    return ScsiResult(GOOD.status, needs_sync=not lu.modes.write_cache_enabled)


def _copy_segment(
    lu: LogicalUnit, targets: list[LogicalUnit | None], segment: Segment, index: int
) -> int:
    """Copy one block-to-block segment; returns the bytes copied."""
    if segment.source >= len(targets) or segment.destination >= len(targets):
        raise _copy_aborted(Asc.UNREACHABLE_COPY_TARGET, index)
    source, destination = targets[segment.source], targets[segment.destination]
    if source is None or destination is None:
        raise _copy_aborted(Asc.UNREACHABLE_COPY_TARGET, index)
    length = segment.blocks * source.block_size
    if length > LIMITS.max_segment_bytes:
        raise invalid_field_in_parameter_list(HEADER_LENGTH)
    if destination.write_protected:
        raise _copy_aborted(Asc.WRITE_PROTECTED, index)
    for unit, lba in ((source, segment.source_lba), (destination, segment.destination_lba)):
        if lba + segment.blocks > unit.block_count:
            raise _copy_aborted(Asc.NO_ADDITIONAL_SENSE, index)
    if length == 0:
        return 0
    # Read the whole segment before writing so overlapping ranges copy correctly.
    payload = source.store.read(segment.source_lba * source.block_size, length)
    start = segment.destination_lba * destination.block_size
    for offset in range(0, length, _COPY_CHUNK):
        destination.store.write(start + offset, memoryview(payload)[offset : offset + _COPY_CHUNK])
    return length


def receive_copy_results(lu: LogicalUnit, command: Command) -> ScsiResult:
    cdb = command.cdb
    length = allocation_length(cdb, 10, 4)
    action = command.service_action
    if action == CopyResultsAction.OPERATING_PARAMETERS:
        return data_in(_operating_parameters(), length)
    if action not in (CopyResultsAction.COPY_STATUS, CopyResultsAction.RECEIVE_DATA):
        raise invalid_field_in_cdb(1, 4)
    held = lu.copy_results.get(command.nexus, cdb[2])
    if held is None:
        raise invalid_field_in_cdb(2)
    if action == CopyResultsAction.RECEIVE_DATA:
        return data_in(bytes(4), length)  # nothing is ever held beyond the status
    if held.bytes_transferred <= 0xFFFFFFFF:
        units, count = 0x00, held.bytes_transferred  # bytes
    else:
        units, count = 0x01, held.bytes_transferred >> 10  # kibibytes
    payload = struct.pack(">IBHBI", 8, held.status, held.segments_processed, units, count)
    return data_in(payload, length)


def _operating_parameters() -> bytes:
    implemented = bytes([BLOCK_TO_BLOCK_SEGMENT, IDENTIFICATION_TARGET_DESCRIPTOR])
    body = bytearray(44)
    body[4] = 0x01  # SNLID: list identifiers are supported
    struct.pack_into(
        ">HHIIIII",
        body,
        8,
        LIMITS.max_target_descriptors,
        LIMITS.max_segment_descriptors,
        LIMITS.max_descriptor_list_length,
        LIMITS.max_segment_bytes,
        0,  # MAXIMUM INLINE DATA LENGTH
        0,  # HELD DATA LIMIT
        0,  # MAXIMUM STREAM DEVICE TRANSFER SIZE
    )
    struct.pack_into(">H", body, 34, 1)  # TOTAL CONCURRENT COPIES
    body[36] = 1  # MAXIMUM CONCURRENT COPIES
    body[37] = 9  # DATA SEGMENT GRANULARITY: 2^9 bytes
    body[43] = len(implemented)
    payload = body + implemented
    struct.pack_into(">I", payload, 0, len(payload) - 4)
    return bytes(payload)


COMMANDS: dict[int, CommandSpec] = {
    ScsiOp.EXTENDED_COPY: CommandSpec(
        "EXTENDED COPY",
        extended_copy,
        16,
        service_actions={0x00: bytes([0x83, 0x00, *[0] * 8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x00])},
    ),
    ScsiOp.RECEIVE_COPY_RESULTS: CommandSpec(
        "RECEIVE COPY RESULTS",
        receive_copy_results,
        16,
        service_actions={
            action: bytes([0x84, action, 0xFF, *[0] * 7, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x00])
            for action in CopyResultsAction
        },
    ),
}
