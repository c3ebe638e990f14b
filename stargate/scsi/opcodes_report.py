"""REPORT SUPPORTED OPERATION CODES and REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS
(SPC-4 6.35, 6.36): generated from the dispatch table so they never disagree with it."""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import TYPE_CHECKING

from iscsicore.scsi.cdb import allocation_length
from iscsicore.scsi.opcodes import PrInAction, PrOutAction, ScsiOp
from iscsicore.scsi.sense import invalid_field_in_cdb
from stargate.scsi.command import Command, CommandSpec, ScsiResult, data_in

if TYPE_CHECKING:
    from stargate.scsi.lu import LogicalUnit

NOMINAL_TIMEOUT_SECONDS = 0  # "not specified"
RECOMMENDED_TIMEOUT_SECONDS = 30


class ReportingOptions(IntEnum):
    ALL = 0b000
    ONE_OPCODE = 0b001
    ONE_OPCODE_SERVICE_ACTION = 0b010
    ONE_OPCODE_MAYBE_SERVICE_ACTION = 0b011


class Support(IntEnum):
    """SUPPORT field of the one-command parameter data."""

    NOT_AVAILABLE = 0b000
    NOT_SUPPORTED = 0b001
    SUPPORTED = 0b011


# Usage data of the reservation commands, listed when a ReservationChecker emulates them.
_RESERVATION_USAGE: dict[int, bytes] = {
    ScsiOp.RESERVE_6: bytes([0x16, 0, 0, 0, 0, 0x00]),
    ScsiOp.RELEASE_6: bytes([0x17, 0, 0, 0, 0, 0x00]),
    ScsiOp.RESERVE_10: bytes([0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0x00]),
    ScsiOp.RELEASE_10: bytes([0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0x00]),
}
_PR_IN_USAGE: dict[int, bytes] = {
    action: bytes([0x5E, action, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x00]) for action in PrInAction
}
_PR_OUT_USAGE: dict[int, bytes] = {
    action: bytes([0x5F, action, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x00])
    for action in PrOutAction
    if action != PrOutAction.REPLACE_LOST_RESERVATION
}


def _usage_for(opcode: int, spec: CommandSpec) -> tuple[bytes, dict[int, bytes]]:
    """(usage, per-service-action usage) for one entry of the unit's command table."""
    if opcode == ScsiOp.PERSISTENT_RESERVE_IN:
        return b"", dict(_PR_IN_USAGE)
    if opcode == ScsiOp.PERSISTENT_RESERVE_OUT:
        return b"", dict(_PR_OUT_USAGE)
    if opcode in _RESERVATION_USAGE:
        return _RESERVATION_USAGE[opcode], {}
    return spec.usage, dict(spec.service_actions)


def _timeouts_descriptor() -> bytes:
    return struct.pack(">HBBII", 0x0A, 0, 0, NOMINAL_TIMEOUT_SECONDS, RECOMMENDED_TIMEOUT_SECONDS)


def _all_commands(lu: LogicalUnit, rctd: bool) -> bytes:
    descriptors = bytearray()
    for opcode, spec in sorted(lu.supported_commands().items()):
        usage, actions = _usage_for(opcode, spec)
        entries = (
            [(action, actions[action], True) for action in sorted(actions)]
            if actions
            else [(0, usage, False)]
        )
        for action, cdb_usage, has_action in entries:
            flags = (0x02 if rctd else 0) | (0x01 if has_action else 0)
            descriptors += struct.pack(
                ">BBHBBH", opcode, 0, action, 0, flags, len(cdb_usage) or spec.cdb_length
            )
            if rctd:
                descriptors += _timeouts_descriptor()
    return struct.pack(">I", len(descriptors)) + bytes(descriptors)


def _one_command(lu: LogicalUnit, cdb: bytes, options: ReportingOptions, rctd: bool) -> bytes:
    opcode = cdb[3]
    requested_action = struct.unpack_from(">H", cdb, 4)[0]
    spec = lu.supported_commands().get(opcode)
    usage = b""
    if spec is not None:
        plain_usage, actions = _usage_for(opcode, spec)
        if options is ReportingOptions.ONE_OPCODE:
            if actions:  # the opcode needs a service action to identify a command
                raise invalid_field_in_cdb(2, 2)
            usage = plain_usage
        elif options is ReportingOptions.ONE_OPCODE_SERVICE_ACTION:
            if not actions:
                raise invalid_field_in_cdb(2, 2)
            usage = actions.get(requested_action, b"")
        else:
            usage = actions.get(requested_action, b"") if actions else plain_usage
    if not usage:
        return bytes([0, Support.NOT_SUPPORTED, 0, 0])
    header = bytes([0, (0x80 if rctd else 0) | Support.SUPPORTED]) + struct.pack(">H", len(usage))
    return header + usage + (_timeouts_descriptor() if rctd else b"")


def report_supported_operation_codes(lu: LogicalUnit, command: Command) -> ScsiResult:
    cdb = command.cdb
    length = allocation_length(cdb, 6, 4)
    rctd = bool(cdb[2] & 0x80)
    try:
        options = ReportingOptions(cdb[2] & 0x07)
    except ValueError:
        raise invalid_field_in_cdb(2, 2) from None
    if options is ReportingOptions.ALL:
        return data_in(_all_commands(lu, rctd), length)
    return data_in(_one_command(lu, cdb, options, rctd), length)


class TmfSupport(IntEnum):
    """Bits of byte 0 of the REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS data."""

    ABORT_TASK = 0x80
    ABORT_TASK_SET = 0x40
    CLEAR_ACA = 0x20
    CLEAR_TASK_SET = 0x10
    LOGICAL_UNIT_RESET = 0x08
    QUERY_TASK = 0x04
    TARGET_RESET = 0x02
    WAKEUP = 0x01


# What the stargate iSCSI layer implements (RFC 7143 11.5.1 functions 1-6).
SUPPORTED_TMFS = (
    TmfSupport.ABORT_TASK
    | TmfSupport.ABORT_TASK_SET
    | TmfSupport.CLEAR_TASK_SET
    | TmfSupport.LOGICAL_UNIT_RESET
    | TmfSupport.TARGET_RESET
)


def report_supported_task_management_functions(lu: LogicalUnit, command: Command) -> ScsiResult:
    cdb = command.cdb
    length = allocation_length(cdb, 6, 4)
    extended = bool(cdb[2] & 0x80)  # REPD: the 16-byte form with an additional length
    payload = bytearray(16 if extended else 4)
    payload[0] = SUPPORTED_TMFS
    if extended:
        payload[3] = 0x0C  # ADDITIONAL DATA LENGTH
    return data_in(payload, length)
