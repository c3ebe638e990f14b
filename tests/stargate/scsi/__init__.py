"""Tests of the SCSI emulation; shared helpers to build a unit and run CDBs on it."""

from __future__ import annotations

import struct

from iscsicore.scsi.opcodes import ScsiStatus
from iscsicore.scsi.sense import SenseData, parse_sense
from stargate.scsi.lu import LogicalUnit, Nexus, ScsiResult
from stargate.stores import MemoryStore
from topology.vdisk import VDiskMeta

NEXUS = Nexus(
    "iqn.2026-11.test:initiator,i,0x400000000001", "iqn.2010-06.com.nutanix:vmdisk-vd1,t,0x1"
)
OTHER_NEXUS = Nexus("iqn.2026-11.test:other,i,0x400000000002", NEXUS.target_port)
BLOCK = 512
BLOCKS = 2048  # 1 MiB


def make_unit(blocks: int = BLOCKS, block_size: int = BLOCK) -> LogicalUnit:
    """A unit whose power-on unit attention for NEXUS has already been reported."""
    meta = VDiskMeta("vd1", blocks * block_size, block_size=block_size)
    unit = LogicalUnit(MemoryStore(meta), meta)
    unit.execute(bytes(6), b"", NEXUS)
    return unit


def run(unit: LogicalUnit, cdb: bytes, data_out: bytes = b"", nexus: Nexus = NEXUS) -> ScsiResult:
    return unit.execute(cdb, data_out, nexus)


def sense_of(result: ScsiResult) -> SenseData:
    assert result.status == ScsiStatus.CHECK_CONDITION, result
    return parse_sense(result.sense)


def rw10(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", opcode, flags, lba, 0, blocks, 0)


def rw16(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", opcode, flags, lba, blocks, 0, 0)


def rw12(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIIBB", opcode, flags, lba, blocks, 0, 0)
