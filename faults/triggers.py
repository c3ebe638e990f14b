"""What a command or PDU is, for matching faults: the LBA range and I/O class of a CDB, and
whether a fault's trigger (time window, skip, probability, count) lets it fire now."""

from __future__ import annotations

import random
import time

from faults.model import Fault, IoClass
from iscsicore.scsi.cdb import BLOCK_CDBS
from iscsicore.scsi.opcodes import ScsiOp

# The commands a fault's LBA range can match (their layouts: `BLOCK_CDBS`).
_EXTENT_OPCODES = frozenset(
    int(op)
    for op in (
        ScsiOp.READ_6,
        ScsiOp.WRITE_6,
        ScsiOp.READ_10,
        ScsiOp.WRITE_10,
        ScsiOp.READ_12,
        ScsiOp.WRITE_12,
        ScsiOp.READ_16,
        ScsiOp.WRITE_16,
        ScsiOp.WRITE_AND_VERIFY_10,
        ScsiOp.WRITE_AND_VERIFY_16,
        ScsiOp.SYNCHRONIZE_CACHE_10,
        ScsiOp.SYNCHRONIZE_CACHE_16,
    )
)
_READS = frozenset(
    int(op) for op in (ScsiOp.READ_6, ScsiOp.READ_10, ScsiOp.READ_12, ScsiOp.READ_16)
)
_WRITES = frozenset(
    int(op)
    for op in (
        ScsiOp.WRITE_6,
        ScsiOp.WRITE_10,
        ScsiOp.WRITE_12,
        ScsiOp.WRITE_16,
        ScsiOp.WRITE_AND_VERIFY_10,
        ScsiOp.WRITE_AND_VERIFY_16,
    )
)
_FLUSHES = frozenset(int(op) for op in (ScsiOp.SYNCHRONIZE_CACHE_10, ScsiOp.SYNCHRONIZE_CACHE_16))


def io_class(cdb: bytes) -> IoClass:
    opcode = cdb[0]
    if opcode in _READS:
        return IoClass.READ
    if opcode in _WRITES:
        return IoClass.WRITE
    if opcode in _FLUSHES:
        return IoClass.FLUSH
    return IoClass.OTHER


def lba_extent(cdb: bytes) -> tuple[int, int] | None:
    """(first LBA, block count) the CDB addresses; None for commands without one."""
    opcode = cdb[0]
    if opcode not in _EXTENT_OPCODES:
        return None
    layout = BLOCK_CDBS[opcode]
    if len(cdb) < layout.length:
        return None
    _, lba, blocks, _ = layout.unpack(cdb)
    return lba, blocks


def cdb_matches(fault: Fault, cdb: bytes) -> bool:
    if fault.opcodes and cdb[0] not in fault.opcodes:
        return False
    if fault.io is not None and io_class(cdb) is not fault.io:
        return False
    if fault.lba is not None:
        extent = lba_extent(cdb)
        if extent is None:
            return False
        first, blocks = extent
        last = first + max(blocks, 1) - 1
        low, high = fault.lba
        if last < low or first > high:  # no overlap with the injected range
            return False
    return True


def window_open(fault: Fault, now: float) -> tuple[bool, bool]:
    """(may fire now, expired for good)."""
    start = fault.added_at
    if fault.at is not None:
        start = fault.at
    elif fault.after_seconds is not None:
        start = fault.added_at + fault.after_seconds
    if now < start:
        return False, False
    if fault.duration is not None and now >= start + fault.duration:
        return False, True
    return True, False


def take_shot(fault: Fault, rng: random.Random) -> bool:
    """Count one match; True if the fault fires on it (skip, probability)."""
    fault.seen += 1
    if fault.seen <= fault.skip:
        return False
    if fault.probability < 1.0 and rng.random() >= fault.probability:
        return False
    fault.fired += 1
    return True


def now() -> float:
    return time.time()
