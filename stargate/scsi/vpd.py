"""INQUIRY data: the standard page and the vital product data pages (SPC-4 7.8, SBC-3 6.6)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from stargate.scsi.command import Nexus

if TYPE_CHECKING:
    from stargate.scsi.lu import LogicalUnit

VENDOR = b"NUTANIX "
PRODUCT = b"VDISK".ljust(16)
REVISION = b"0001"
DIRECT_ACCESS_BLOCK_DEVICE = 0x00
VERSION_SPC4 = 0x06

# Version descriptors (SPC-4 table 149): SAM-5, iSCSI (no version claimed), SPC-4, SBC-3.
VERSION_DESCRIPTORS = (0x00A0, 0x0960, 0x0460, 0x04C0)


@dataclass(frozen=True, slots=True)
class BlockLimits:
    """What the Block Limits VPD page advertises, in logical blocks."""

    max_transfer_blocks: int = 0x4000  # 8 MiB at 512-byte blocks
    optimal_transfer_blocks: int = 0x800
    max_compare_and_write_blocks: int = 0xFF
    max_unmap_lba_count: int = 0x100000  # 512 MiB per UNMAP at 512-byte blocks
    max_unmap_descriptors: int = 256
    max_write_same_blocks: int = 0xFFFF  # as LIO: a 2-byte count, 32 MiB at 512 bytes
    # Every command runs to completion before the next starts, so any write up to the
    # transfer limit is atomic with respect to other commands: no alignment or
    # granularity constraints.
    max_atomic_transfer_blocks: int = 0x4000


BLOCK_LIMITS = BlockLimits()


class VpdPage(IntEnum):
    SUPPORTED_PAGES = 0x00
    UNIT_SERIAL_NUMBER = 0x80
    DEVICE_IDENTIFICATION = 0x83
    BLOCK_LIMITS = 0xB0
    BLOCK_DEVICE_CHARACTERISTICS = 0xB1
    LOGICAL_BLOCK_PROVISIONING = 0xB2


def standard_inquiry() -> bytes:
    """96 bytes: SPC-4, HiSup, response data format 2, CmdQue, 3PC; no TPGS or PROTECT."""
    data = bytearray(96)
    data[0] = DIRECT_ACCESS_BLOCK_DEVICE  # peripheral qualifier 0: connected
    data[1] = 0x00  # RMB 0: not removable
    data[2] = VERSION_SPC4
    data[3] = 0x10 | 0x02  # HISUP, RESPONSE DATA FORMAT 2
    data[4] = len(data) - 5
    data[5] = 0x08  # 3PC (EXTENDED COPY); TPGS 0, PROTECT 0
    data[6] = 0x00
    data[7] = 0x02  # CMDQUE
    data[8:16] = VENDOR
    data[16:32] = PRODUCT
    data[32:36] = REVISION
    for index, descriptor in enumerate(VERSION_DESCRIPTORS):
        struct.pack_into(">H", data, 58 + 2 * index, descriptor)
    return bytes(data)


def _page(code: int, body: bytes) -> bytes:
    return struct.pack(">BBH", DIRECT_ACCESS_BLOCK_DEVICE, code, len(body)) + body


def _designator(
    code_set: int,
    association: int,
    kind: int,
    value: bytes,
    *,
    piv: bool = False,
    protocol: int = 0,
) -> bytes:
    first = (protocol << 4) | code_set
    second = (0x80 if piv else 0) | (association << 4) | kind
    return bytes([first, second, 0, len(value)]) + value


def _supported_pages(lu: LogicalUnit, nexus: Nexus) -> bytes:
    return _page(VpdPage.SUPPORTED_PAGES, bytes(sorted(PAGE_BUILDERS)))


def _unit_serial_number(lu: LogicalUnit, nexus: Nexus) -> bytes:
    serial = lu.meta.serial.encode("ascii", "replace")[:250]
    return _page(VpdPage.UNIT_SERIAL_NUMBER, serial)


_CODE_SET_BINARY, _CODE_SET_ASCII, _CODE_SET_UTF8 = 1, 2, 3
_ASSOC_LU, _ASSOC_TARGET_PORT = 0, 1
_TYPE_T10_VENDOR, _TYPE_NAA, _TYPE_RELATIVE_PORT, _TYPE_SCSI_NAME = 1, 3, 4, 8
_PROTOCOL_ISCSI = 5


def _t10_vendor_id(lu: LogicalUnit) -> bytes:
    return VENDOR + lu.meta.vdisk_id.encode("ascii", "replace")[:200]


def lu_designators(lu: LogicalUnit, designator_type: int) -> set[bytes]:
    """The logical unit's own designators of one type (EXTENDED COPY matches on them)."""
    if designator_type == _TYPE_NAA:
        return {lu.meta.naa}
    if designator_type == _TYPE_T10_VENDOR:
        return {_t10_vendor_id(lu)}
    return set()


def _device_identification(lu: LogicalUnit, nexus: Nexus) -> bytes:
    designators = [
        _designator(_CODE_SET_BINARY, _ASSOC_LU, _TYPE_NAA, lu.meta.naa),
        _designator(_CODE_SET_ASCII, _ASSOC_LU, _TYPE_T10_VENDOR, _t10_vendor_id(lu)),
        _designator(
            _CODE_SET_BINARY,
            _ASSOC_TARGET_PORT,
            _TYPE_RELATIVE_PORT,
            struct.pack(">HH", 0, lu.relative_port_id),
            piv=True,
            protocol=_PROTOCOL_ISCSI,
        ),
    ]
    if nexus.target_port:
        # SCSI name string: null terminated, padded to a multiple of 4 (SPC-4 7.8.6.11).
        name = nexus.target_port.encode("utf-8")[:251] + b"\x00"
        name += bytes(-len(name) % 4)
        designators.append(
            _designator(
                _CODE_SET_UTF8,
                _ASSOC_TARGET_PORT,
                _TYPE_SCSI_NAME,
                name,
                piv=True,
                protocol=_PROTOCOL_ISCSI,
            )
        )
    return _page(VpdPage.DEVICE_IDENTIFICATION, b"".join(designators))


def _block_limits(lu: LogicalUnit, nexus: Nexus) -> bytes:
    limits = BLOCK_LIMITS
    body = bytearray(0x3C)
    # WSNZ: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 ("to the end") is refused. SBC-3
    # allows either; with WSNZ 0 a vDisk larger than MAXIMUM WRITE SAME LENGTH must refuse
    # it anyway, so libiscsi's ZeroBlocks tests would skip all the same, on any real size.
    body[0] = 0x01
    body[1] = limits.max_compare_and_write_blocks
    # Granularities in logical blocks: one physical block (4 KiB, page cache and holes).
    physical = lu.blocks_per_physical_block
    struct.pack_into(">H", body, 2, physical)  # OPTIMAL TRANSFER LENGTH GRANULARITY
    struct.pack_into(">I", body, 4, limits.max_transfer_blocks)
    struct.pack_into(">I", body, 8, limits.optimal_transfer_blocks)
    struct.pack_into(">I", body, 12, limits.max_transfer_blocks)  # MAX PREFETCH LENGTH
    struct.pack_into(">I", body, 16, limits.max_unmap_lba_count)
    struct.pack_into(">I", body, 20, limits.max_unmap_descriptors)
    struct.pack_into(">I", body, 24, physical)  # OPTIMAL UNMAP GRANULARITY
    struct.pack_into(">I", body, 28, 0x80000000)  # UGAVALID, alignment 0
    struct.pack_into(">Q", body, 32, limits.max_write_same_blocks)
    struct.pack_into(">I", body, 40, limits.max_atomic_transfer_blocks)
    # ATOMIC ALIGNMENT and ATOMIC TRANSFER LENGTH GRANULARITY stay 0: unconstrained.
    return _page(VpdPage.BLOCK_LIMITS, bytes(body))


def _block_device_characteristics(lu: LogicalUnit, nexus: Nexus) -> bytes:
    body = bytearray(0x3C)
    struct.pack_into(">H", body, 0, 0x0001)  # MEDIUM ROTATION RATE 1: non-rotating
    # WABEREQ 01b: after a SANITIZE BLOCK ERASE, reads succeed (and return zeros: LBPRZ).
    body[3] = 0x40
    return _page(VpdPage.BLOCK_DEVICE_CHARACTERISTICS, bytes(body))


PROVISIONING_TYPE_THIN = 0x02


def _logical_block_provisioning(lu: LogicalUnit, nexus: Nexus) -> bytes:
    body = bytearray(4)
    body[0] = 0  # THRESHOLD EXPONENT: no thresholds
    body[1] = 0x80 | 0x40 | 0x20 | 0x04  # LBPU, LBPWS, LBPWS10, LBPRZ
    body[2] = PROVISIONING_TYPE_THIN
    return _page(VpdPage.LOGICAL_BLOCK_PROVISIONING, bytes(body))


PAGE_BUILDERS: dict[int, Callable[[LogicalUnit, Nexus], bytes]] = {
    VpdPage.SUPPORTED_PAGES: _supported_pages,
    VpdPage.UNIT_SERIAL_NUMBER: _unit_serial_number,
    VpdPage.DEVICE_IDENTIFICATION: _device_identification,
    VpdPage.BLOCK_LIMITS: _block_limits,
    VpdPage.BLOCK_DEVICE_CHARACTERISTICS: _block_device_characteristics,
    VpdPage.LOGICAL_BLOCK_PROVISIONING: _logical_block_provisioning,
}
