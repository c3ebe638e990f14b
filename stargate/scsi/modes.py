"""Mode parameters (SPC-4 7.5, SBC-3 6.4): the pages, MODE SENSE and MODE SELECT.

Pages: caching (0x08, WCE changeable), control (0x0A, D_SENSE and SWP changeable),
informational exceptions (0x1C). Saved pages are not supported: the state lives as long
as the process.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from iscsicore.scsi.cdb import allocation_length
from iscsicore.scsi.opcodes import ScsiOp
from iscsicore.scsi.sense import (
    Asc,
    CheckCondition,
    SenseKey,
    illegal_request,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
)
from stargate.scsi.command import GOOD, Command, ScsiResult, data_in

if TYPE_CHECKING:
    from stargate.scsi.lu import LogicalUnit

ALL_PAGES = 0x3F
ALL_SUBPAGES = 0xFF

# Device-specific parameter of the mode parameter header (SBC-3 6.4.1).
DEVICE_SPECIFIC_WP = 0x80
DEVICE_SPECIFIC_DPOFUA = 0x10


class PageControl(IntEnum):
    CURRENT = 0
    CHANGEABLE = 1
    DEFAULT = 2
    SAVED = 3


class ModePage(IntEnum):
    CACHING = 0x08
    CONTROL = 0x0A
    INFORMATIONAL_EXCEPTIONS = 0x1C


@dataclass(slots=True)
class ModeState:
    """The changeable mode parameters of one logical unit."""

    write_cache_enabled: bool = True  # WCE: writes land in page cache until a flush
    descriptor_sense: bool = False  # D_SENSE: sense data format for CHECK CONDITION
    software_write_protect: bool = False  # SWP: the medium is read-only while set


def _caching(state: ModeState | None) -> bytes:
    """Caching page, 20 bytes. ``None``: the changeable-bits mask."""
    page = bytearray(20)
    page[0], page[1] = ModePage.CACHING, 18
    if state is None:
        page[2] = 0x04  # WCE
    elif state.write_cache_enabled:
        page[2] = 0x04
    return bytes(page)


def _control(state: ModeState | None) -> bytes:
    """Control page, 12 bytes: QUEUE ALGORITHM MODIFIER 1 (unrestricted reordering),
    TAS set (aborted commands of other nexuses end in TASK ABORTED)."""
    page = bytearray(12)
    page[0], page[1] = ModePage.CONTROL, 10
    if state is None:
        page[2] = 0x04  # D_SENSE
        page[4] = 0x08  # SWP
        return bytes(page)
    page[2] = 0x04 if state.descriptor_sense else 0x00
    page[4] = 0x08 if state.software_write_protect else 0x00
    page[3] = 0x10  # QUEUE ALGORITHM MODIFIER = 1
    page[5] = 0x40  # TAS
    struct.pack_into(">H", page, 8, 0xFFFF)  # BUSY TIMEOUT PERIOD: unlimited
    return bytes(page)


def _informational_exceptions(state: ModeState | None) -> bytes:
    page = bytearray(12)
    page[0], page[1] = ModePage.INFORMATIONAL_EXCEPTIONS, 10
    if state is not None:
        page[2] = 0x08  # DEXCPT: informational exception reporting disabled
    return bytes(page)


_PAGES: dict[int, Callable[[ModeState | None], bytes]] = {
    ModePage.CACHING: _caching,
    ModePage.CONTROL: _control,
    ModePage.INFORMATIONAL_EXCEPTIONS: _informational_exceptions,
}


def _page_bytes(code: int, control: PageControl, state: ModeState) -> bytes:
    builder = _PAGES[code]
    if control is PageControl.CHANGEABLE:
        return builder(None)
    if control is PageControl.DEFAULT:
        return builder(ModeState())
    return builder(state)


def _select_pages(cdb: bytes, control: PageControl, state: ModeState) -> bytes:
    page_code, subpage = cdb[2] & 0x3F, cdb[3]
    if page_code == ALL_PAGES:
        if subpage not in (0, ALL_SUBPAGES):
            raise invalid_field_in_cdb(3)
        return b"".join(_page_bytes(code, control, state) for code in sorted(_PAGES))
    if page_code not in _PAGES:
        raise invalid_field_in_cdb(2, 5)
    if subpage not in (0, ALL_SUBPAGES):
        raise invalid_field_in_cdb(3)
    return _page_bytes(page_code, control, state)


def _block_descriptor(lu: LogicalUnit, *, long_lba: bool) -> bytes:
    if long_lba:
        return struct.pack(">QII", lu.block_count, 0, lu.block_size)
    blocks = min(lu.block_count, 0xFFFFFFFF)
    return struct.pack(">II", blocks, lu.block_size & 0xFFFFFF)


def _page_control(cdb: bytes) -> PageControl:
    control = PageControl(cdb[2] >> 6)
    if control is PageControl.SAVED:
        raise illegal_request(Asc.SAVING_PARAMETERS_NOT_SUPPORTED)
    return control


def _device_specific(lu: LogicalUnit) -> int:
    # DPOFUA: DPO and FUA are honoured (FUA forces a flush before status); WP: read-only.
    return DEVICE_SPECIFIC_DPOFUA | (DEVICE_SPECIFIC_WP if lu.write_protected else 0)


def mode_sense_6(lu: LogicalUnit, command: Command) -> ScsiResult:
    cdb = command.cdb
    control = _page_control(cdb)
    pages = _select_pages(cdb, control, lu.modes)
    disable_block_descriptors = bool(cdb[1] & 0x08)
    descriptor = b"" if disable_block_descriptors else _block_descriptor(lu, long_lba=False)
    body = pages
    header = bytes([0, 0, _device_specific(lu), len(descriptor)])
    payload = bytearray(header + descriptor + body)
    payload[0] = min(len(payload) - 1, 0xFF)
    return data_in(payload, allocation_length(cdb, 4, 1))


def mode_sense_10(lu: LogicalUnit, command: Command) -> ScsiResult:
    cdb = command.cdb
    control = _page_control(cdb)
    pages = _select_pages(cdb, control, lu.modes)
    long_lba = bool(cdb[1] & 0x10)
    disable_block_descriptors = bool(cdb[1] & 0x08)
    descriptor = b"" if disable_block_descriptors else _block_descriptor(lu, long_lba=long_lba)
    header = bytearray(8)
    header[3] = _device_specific(lu)
    header[4] = 0x01 if long_lba and descriptor else 0x00  # LONGLBA
    struct.pack_into(">H", header, 6, len(descriptor))
    payload = bytearray(header + descriptor + pages)
    struct.pack_into(">H", payload, 0, len(payload) - 2)
    return data_in(payload, allocation_length(cdb, 7, 2))


def mode_select_6(lu: LogicalUnit, command: Command) -> ScsiResult:
    return _mode_select(lu, command, header_length=4, length=allocation_length(command.cdb, 4, 1))


def mode_select_10(lu: LogicalUnit, command: Command) -> ScsiResult:
    return _mode_select(lu, command, header_length=8, length=allocation_length(command.cdb, 7, 2))


def _mode_select(
    lu: LogicalUnit, command: Command, *, header_length: int, length: int
) -> ScsiResult:
    cdb = command.cdb
    if cdb[1] & 0x01:  # SP: we cannot save pages (SPC-4 6.11)
        raise invalid_field_in_cdb(1, 0)
    if length == 0:
        return GOOD
    data = bytes(command.data_out[:length])
    if len(data) < length:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
    if len(data) < header_length:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
    short_header = header_length == 4
    descriptor_length = data[3] if short_header else struct.unpack_from(">H", data, 6)[0]
    position = header_length
    if position + descriptor_length > len(data):
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
    _check_block_descriptors(lu, data, position, descriptor_length, header_length)
    position += descriptor_length
    new_state = dataclasses.replace(lu.modes)
    while position < len(data):
        position = _apply_page(data, position, new_state)
    if new_state != lu.modes:
        # Mode pages are shared by all initiators: the others must hear of it (SPC-4 7.5).
        lu.unit_attentions.establish(Asc.MODE_PARAMETERS_CHANGED.value, exclude=command.nexus)
    lu.modes = new_state
    return GOOD


def _check_block_descriptors(
    lu: LogicalUnit, data: bytes, start: int, length: int, header_length: int
) -> None:
    """Block descriptors may restate the geometry but cannot change it."""
    long_lba = header_length == 8 and bool(data[4] & 0x01)
    size = 16 if long_lba else 8
    if length % size:
        raise invalid_field_in_parameter_list(header_length - 1)
    for offset in range(start, start + length, size):
        block_length = (
            struct.unpack_from(">I", data, offset + 12)[0]
            if long_lba
            else int.from_bytes(data[offset + 5 : offset + 8], "big")
        )
        if block_length not in (0, lu.block_size):
            raise invalid_field_in_parameter_list(offset + (12 if long_lba else 5))


def _apply_page(data: bytes, position: int, state: ModeState) -> int:
    """Validate one page against current values and the changeable mask; apply it."""
    if position + 2 > len(data):
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
    code = data[position] & 0x3F
    if data[position] & 0x40:  # SPF: no subpages here
        raise invalid_field_in_parameter_list(position, 6)
    if code not in _PAGES:
        raise invalid_field_in_parameter_list(position, 5)
    current = _PAGES[code](state)
    mask = _PAGES[code](None)
    page_length = data[position + 1]
    if page_length != current[1]:
        raise invalid_field_in_parameter_list(position + 1)
    end = position + 2 + page_length
    if end > len(data):
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
    page = data[position:end]
    for index in range(2, len(page)):
        if (page[index] ^ current[index]) & ~mask[index] & 0xFF:
            raise invalid_field_in_parameter_list(position + index)
    if code == ModePage.CACHING:
        state.write_cache_enabled = bool(page[2] & 0x04)
    elif code == ModePage.CONTROL:
        state.descriptor_sense = bool(page[2] & 0x04)
        state.software_write_protect = bool(page[4] & 0x08)
    return end


COMMANDS_BY_OPCODE = {
    ScsiOp.MODE_SENSE_6: mode_sense_6,
    ScsiOp.MODE_SENSE_10: mode_sense_10,
    ScsiOp.MODE_SELECT_6: mode_select_6,
    ScsiOp.MODE_SELECT_10: mode_select_10,
}
