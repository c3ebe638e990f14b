"""Primary commands (SPC-4) every logical unit answers: TEST UNIT READY, INQUIRY,
REQUEST SENSE, REPORT LUNS, MODE SENSE/SELECT, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL,
and the MAINTENANCE IN reports (supported operation codes / task management functions)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from iscsicore.pdu import encode_lun
from iscsicore.scsi.cdb import allocation_length
from iscsicore.scsi.opcodes import MaintenanceIn, ScsiOp
from iscsicore.scsi.sense import (
    Asc,
    CheckCondition,
    SenseKey,
    build_sense,
    invalid_field_in_cdb,
)
from stargate.scsi import modes, opcodes_report, vpd
from stargate.scsi.command import GOOD, Command, CommandSpec, ScsiResult, data_in
from stargate.scsi.sanitize import request_sense_while_sanitizing

if TYPE_CHECKING:
    from stargate.scsi.lu import LogicalUnit


def test_unit_ready(lu: LogicalUnit, command: Command) -> ScsiResult:
    return GOOD


def inquiry(lu: LogicalUnit, command: Command) -> ScsiResult:
    cdb = command.cdb
    length = allocation_length(cdb, 3, 2)
    if cdb[1] & 0x02:  # CMDDT is obsolete (SPC-3): refuse it
        raise invalid_field_in_cdb(1, 1)
    page_code = cdb[2]
    if not cdb[1] & 0x01:  # EVPD clear: standard data, PAGE CODE must be zero
        if page_code:
            raise invalid_field_in_cdb(2)
        return data_in(vpd.standard_inquiry(), length)
    builder = vpd.PAGE_BUILDERS.get(page_code)
    if builder is None:
        raise invalid_field_in_cdb(2)
    return data_in(builder(lu, command.nexus), length)


def request_sense(lu: LogicalUnit, command: Command) -> ScsiResult:
    """Report (and clear) a pending unit attention, else the progress of a running
    sanitize, else NO SENSE (SPC-4 6.39). Autosense returns every other error with its
    CHECK CONDITION, so nothing else is ever pending here."""
    cdb = command.cdb
    descriptor_format = bool(cdb[1] & 0x01)
    code = lu.unit_attentions.consume(command.nexus)
    sanitizing = request_sense_while_sanitizing(lu)
    if code is not None:
        sense = build_sense(SenseKey.UNIT_ATTENTION, code, descriptor_format=descriptor_format)
    elif sanitizing is not None:
        sense = sanitizing.sense(descriptor_format=descriptor_format)
    else:
        sense = build_sense(
            SenseKey.NO_SENSE, Asc.NO_ADDITIONAL_SENSE, descriptor_format=descriptor_format
        )
    return data_in(sense, allocation_length(cdb, 4, 1))


_SELECT_REPORT_ALL = (0x00, 0x02)
_SELECT_REPORT_WELL_KNOWN = 0x01
_SELECT_REPORT_ADMIN = (0x10, 0x11, 0x12)  # SPC-5: administrative / subsidiary LUNs


def report_luns(lu: LogicalUnit, command: Command) -> ScsiResult:
    """The LUNs of this unit's target, 0 .. target_luns - 1, in peripheral device
    addressing below 256 and flat space addressing above (SAM-5 4.7)."""
    cdb = command.cdb
    length = allocation_length(cdb, 6, 4)
    if length < 16:  # SPC-4 6.33: the list header plus one LUN must fit
        raise invalid_field_in_cdb(6)
    select = cdb[2]
    if select in _SELECT_REPORT_ALL or select == 0x10:
        luns = [encode_lun(number) for number in range(lu.target_luns)]
    elif select == _SELECT_REPORT_WELL_KNOWN or select in (0x11, 0x12):
        luns = []  # no well-known LUNs, no subsidiary LUNs under LUN 0
    else:
        raise invalid_field_in_cdb(2)
    # This command re-reads the inventory, so that change is no longer news (SPC-4 6.33).
    lu.unit_attentions.clear(command.nexus, Asc.REPORTED_LUNS_DATA_HAS_CHANGED.value)
    payload = struct.pack(">II", 8 * len(luns), 0) + b"".join(
        struct.pack(">Q", lun) for lun in luns
    )
    return data_in(payload, length)


def start_stop_unit(lu: LogicalUnit, command: Command) -> ScsiResult:
    """The medium is always spun up and cannot be ejected (RMB=0): accept any state
    change request; LOEJ with START=0 on fixed media is refused (SBC-3 5.25)."""
    cdb = command.cdb
    power_condition = cdb[4] >> 4
    loej, start = bool(cdb[4] & 0x02), bool(cdb[4] & 0x01)
    if power_condition == 0 and loej and not start:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.MEDIUM_REMOVAL_PREVENTED)
    return GOOD


def prevent_allow_medium_removal(lu: LogicalUnit, command: Command) -> ScsiResult:
    """Not removable: prevention has nothing to prevent, and both values are accepted."""
    return GOOD


def maintenance_in(lu: LogicalUnit, command: Command) -> ScsiResult:
    action = command.service_action
    if action == MaintenanceIn.REPORT_SUPPORTED_OPERATION_CODES:
        return opcodes_report.report_supported_operation_codes(lu, command)
    if action == MaintenanceIn.REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS:
        return opcodes_report.report_supported_task_management_functions(lu, command)
    raise invalid_field_in_cdb(1, 4)


def reservation_cdb_length(opcode: int) -> int:
    return 6 if opcode in (ScsiOp.RESERVE_6, ScsiOp.RELEASE_6) else 10


COMMANDS: dict[int, CommandSpec] = {
    ScsiOp.TEST_UNIT_READY: CommandSpec(
        "TEST UNIT READY", test_unit_ready, 6, usage=bytes([0x00, 0, 0, 0, 0, 0])
    ),
    ScsiOp.INQUIRY: CommandSpec(
        "INQUIRY",
        inquiry,
        6,
        reports_unit_attention=False,
        usage=bytes([0x12, 0x01, 0xFF, 0xFF, 0xFF, 0x00]),
    ),
    ScsiOp.REQUEST_SENSE: CommandSpec(
        "REQUEST SENSE",
        request_sense,
        6,
        reports_unit_attention=False,
        usage=bytes([0x03, 0x01, 0, 0, 0xFF, 0x00]),
    ),
    ScsiOp.REPORT_LUNS: CommandSpec(
        "REPORT LUNS",
        report_luns,
        12,
        reports_unit_attention=False,
        usage=bytes([0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x00]),
    ),
    ScsiOp.MODE_SENSE_6: CommandSpec(
        "MODE SENSE(6)",
        modes.mode_sense_6,
        6,
        usage=bytes([0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0x00]),
    ),
    ScsiOp.MODE_SENSE_10: CommandSpec(
        "MODE SENSE(10)",
        modes.mode_sense_10,
        10,
        usage=bytes([0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0x00]),
    ),
    ScsiOp.MODE_SELECT_6: CommandSpec(
        "MODE SELECT(6)",
        modes.mode_select_6,
        6,
        usage=bytes([0x15, 0x11, 0, 0, 0xFF, 0x00]),
    ),
    ScsiOp.MODE_SELECT_10: CommandSpec(
        "MODE SELECT(10)",
        modes.mode_select_10,
        10,
        usage=bytes([0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x00]),
    ),
    ScsiOp.START_STOP_UNIT: CommandSpec(
        "START STOP UNIT",
        start_stop_unit,
        6,
        usage=bytes([0x1B, 0x01, 0, 0x0F, 0xF7, 0x00]),
    ),
    ScsiOp.PREVENT_ALLOW_MEDIUM_REMOVAL: CommandSpec(
        "PREVENT ALLOW MEDIUM REMOVAL",
        prevent_allow_medium_removal,
        6,
        usage=bytes([0x1E, 0, 0, 0, 0x03, 0x00]),
    ),
    ScsiOp.MAINTENANCE_IN: CommandSpec(
        "MAINTENANCE IN",
        maintenance_in,
        12,
        service_actions={
            MaintenanceIn.REPORT_SUPPORTED_OPERATION_CODES: bytes(
                [0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x00]
            ),
            MaintenanceIn.REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS: bytes(
                [0xA3, 0x0D, 0x80, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x00]
            ),
        },
    ),
}
