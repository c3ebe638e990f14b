"""SCSI CDB builders and response parsers for the block commands the initiator issues.

16-byte forms throughout (READ(16), WRITE(16)...): every target we meet supports them and
they address any LBA without a second code path.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from iscsicore.scsi.opcodes import ScsiOp, ServiceActionIn16

_FUA = 0x08
_RW16 = struct.Struct(">BBQIBB")


def read16(lba: int, blocks: int) -> bytes:
    return _RW16.pack(ScsiOp.READ_16, 0, lba, blocks, 0, 0)


def write16(lba: int, blocks: int, *, fua: bool = False) -> bytes:
    return _RW16.pack(ScsiOp.WRITE_16, _FUA if fua else 0, lba, blocks, 0, 0)


def write_same16(lba: int, blocks: int, *, unmap: bool = False) -> bytes:
    return _RW16.pack(ScsiOp.WRITE_SAME_16, 0x08 if unmap else 0, lba, blocks, 0, 0)


def compare_and_write(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQ3xBBB", ScsiOp.COMPARE_AND_WRITE, 0, lba, blocks, 0, 0)


def synchronize_cache16(lba: int = 0, blocks: int = 0) -> bytes:
    return _RW16.pack(ScsiOp.SYNCHRONIZE_CACHE_16, 0, lba, blocks, 0, 0)


def unmap(parameter_list_length: int) -> bytes:
    return struct.pack(">BB4xBHB", ScsiOp.UNMAP, 0, 0, parameter_list_length, 0)


def unmap_parameters(extents: list[tuple[int, int]]) -> bytes:
    """UNMAP parameter list: header, then one 16-byte descriptor per (lba, blocks)."""
    descriptors = b"".join(struct.pack(">QI4x", lba, blocks) for lba, blocks in extents)
    return struct.pack(">HH4x", 6 + len(descriptors), len(descriptors)) + descriptors


def test_unit_ready() -> bytes:
    return bytes(6)


def inquiry(allocation_length: int = 255, *, evpd: bool = False, page: int = 0) -> bytes:
    return struct.pack(">BBBHB", ScsiOp.INQUIRY, 1 if evpd else 0, page, allocation_length, 0)


def read_capacity16(allocation_length: int = 32) -> bytes:
    return struct.pack(
        ">BBQIBB",
        ScsiOp.SERVICE_ACTION_IN_16,
        ServiceActionIn16.READ_CAPACITY_16,
        0,
        allocation_length,
        0,
        0,
    )


def read_capacity10() -> bytes:
    return bytes([ScsiOp.READ_CAPACITY_10]) + bytes(9)


def report_luns(allocation_length: int = 4096) -> bytes:
    return struct.pack(">BB4xIBB", ScsiOp.REPORT_LUNS, 0, allocation_length, 0, 0)


@dataclass(frozen=True, slots=True)
class Capacity:
    block_size: int
    blocks: int  # number of logical blocks (last LBA + 1)
    thin_provisioned: bool = False

    @property
    def size_bytes(self) -> int:
        return self.block_size * self.blocks


def parse_read_capacity16(data: bytes) -> Capacity:
    if len(data) < 12:
        raise ValueError(f"READ CAPACITY(16) data too short: {len(data)} bytes")
    last_lba, block_size = struct.unpack_from(">QI", data)
    thin = len(data) > 14 and bool(data[14] & 0x80)
    return Capacity(block_size, last_lba + 1, thin)


def parse_read_capacity10(data: bytes) -> Capacity:
    if len(data) < 8:
        raise ValueError(f"READ CAPACITY(10) data too short: {len(data)} bytes")
    last_lba, block_size = struct.unpack_from(">II", data)
    return Capacity(block_size, last_lba + 1)


@dataclass(frozen=True, slots=True)
class Inquiry:
    peripheral_type: int
    vendor: str
    product: str
    revision: str
    raw: bytes


def parse_inquiry(data: bytes) -> Inquiry:
    if len(data) < 36:
        data = data.ljust(36, b" ")

    def text(start: int, end: int) -> str:
        return data[start:end].decode("ascii", "replace").strip()

    return Inquiry(data[0] & 0x1F, text(8, 16), text(16, 32), text(32, 36), bytes(data))


def parse_report_luns(data: bytes) -> list[int]:
    """LUN numbers (peripheral or flat addressing) listed in REPORT LUNS data."""
    if len(data) < 8:
        return []
    (length,) = struct.unpack_from(">I", data)
    count = min(length, len(data) - 8) // 8
    return [(struct.unpack_from(">Q", data, 8 + 8 * i)[0] >> 48) & 0x3FFF for i in range(count)]
