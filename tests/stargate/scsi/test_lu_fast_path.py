"""The plain READ/WRITE(10/16) fast path of `LogicalUnit.execute` answers exactly as the
general path (`_execute`) does, whatever the CDB and whatever state the unit is in."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iscsicore.scsi.opcodes import ScsiOp
from stargate.scsi import lu as lu_module
from stargate.scsi.lu import LogicalUnit, ScsiResult
from stargate.scsi.reserve import vdisk_reservations
from stargate.stores import MemoryStore
from tests.stargate.scsi import BLOCK, NEXUS, OTHER_NEXUS
from topology.vdisk import VDiskMeta

BLOCKS = 64
FAST_OPCODES = (ScsiOp.READ_10, ScsiOp.WRITE_10, ScsiOp.READ_16, ScsiOp.WRITE_16)
STATES = (
    "plain",
    "fresh nexus",
    "write protect",
    "read only",
    "write through",
    "reserved by other",
    "sanitize failed",
)


@contextmanager
def general_path_only() -> Iterator[None]:
    saved = dict(lu_module._FAST_READ_WRITE)
    lu_module._FAST_READ_WRITE.clear()
    try:
        yield
    finally:
        lu_module._FAST_READ_WRITE.update(saved)


def unit_in(state: str) -> LogicalUnit:
    meta = VDiskMeta("vd1", BLOCKS * BLOCK, block_size=BLOCK)
    reservations, unit_attentions = vdisk_reservations(None, "vd1")
    unit = LogicalUnit(
        MemoryStore(meta),
        meta,
        reservations=reservations,
        unit_attentions=unit_attentions,
        read_only=state == "read only",
    )
    unit.store.write(0, bytes(range(256)) * (BLOCKS * BLOCK // 256))
    if state != "fresh nexus":
        unit.execute(bytes(6), b"", NEXUS)  # the power-on unit attention, reported
    if state == "write protect":
        unit.modes.software_write_protect = True
    elif state == "write through":
        unit.modes.write_cache_enabled = False
    elif state == "reserved by other":
        unit.execute(bytes(6), b"", OTHER_NEXUS)
        assert unit.execute(bytes([ScsiOp.RESERVE_6, 0, 0, 0, 0, 0]), b"", OTHER_NEXUS).status == 0
    elif state == "sanitize failed":
        unit.sanitizer.failed = True
    return unit


def cdb_for(opcode: int, flags: int, lba: int, blocks: int, control: int) -> bytes:
    if opcode in (ScsiOp.READ_10, ScsiOp.WRITE_10):
        return struct.pack(">BBIBHB", opcode, flags, lba, 0, blocks, control) + bytes(6)
    return struct.pack(">BBQIBB", opcode, flags, lba, blocks, 0, control)


def outcome(result: ScsiResult) -> tuple[int, bytes, bytes, bool]:
    return int(result.status), bytes(result.data), bytes(result.sense), result.needs_sync


@settings(deadline=None, max_examples=300)
@given(
    state=st.sampled_from(STATES),
    opcode=st.sampled_from(FAST_OPCODES),
    flags=st.sampled_from([0, 0, 0x08, 0x10, 0x20, 0xE0, 0x02]) | st.integers(0, 255),
    lba=st.sampled_from([0, 1, BLOCKS - 8, BLOCKS - 1, BLOCKS, 2**32 - 1]) | st.integers(0, BLOCKS),
    blocks=st.sampled_from([0, 1, 8, BLOCKS, 0x4000, 0x4001]) | st.integers(0, 16),
    control=st.sampled_from([0, 0, 0x04, 0x80]),
    short_data=st.booleans(),
    data_type=st.sampled_from([bytes, bytearray]),
)
def test_fast_path_answers_as_the_general_path(
    state: str,
    opcode: int,
    flags: int,
    lba: int,
    blocks: int,
    control: int,
    short_data: bool,
    data_type: type,
) -> None:
    cdb = cdb_for(opcode, flags, lba, blocks, control)
    length = min(blocks, BLOCKS) * BLOCK
    data_out = data_type(b"\xa5" * (length - (BLOCK if short_data and length else 0)))
    if opcode in (ScsiOp.READ_10, ScsiOp.READ_16):
        data_out = data_type()
    fast_unit, general_unit = unit_in(state), unit_in(state)
    fast = outcome(fast_unit.execute(cdb, data_out, NEXUS))
    with general_path_only():
        general = outcome(general_unit.execute(cdb, data_out, NEXUS))
        # ... and the unit attention state it leaves behind:
        after_general = outcome(general_unit.execute(bytes(6), b"", NEXUS))
        after_fast = outcome(fast_unit.execute(bytes(6), b"", NEXUS))
    assert fast == general
    assert after_fast == after_general
    assert fast_unit.store.read(0, BLOCKS * BLOCK) == general_unit.store.read(0, BLOCKS * BLOCK)


@pytest.mark.parametrize("opcode", FAST_OPCODES, ids=lambda op: ScsiOp(op).name)
def test_short_cdb_takes_the_general_path(opcode: int) -> None:
    cdb = cdb_for(opcode, 0, 0, 1, 0)[:9]
    fast = outcome(unit_in("plain").execute(cdb, b"\x00" * BLOCK, NEXUS))
    with general_path_only():
        general = outcome(unit_in("plain").execute(cdb, b"\x00" * BLOCK, NEXUS))
    assert fast == general


@pytest.mark.parametrize("opcode", FAST_OPCODES, ids=lambda op: ScsiOp(op).name)
def test_plain_command_never_reaches_the_general_path(
    opcode: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    unit = unit_in("plain")

    def general(*args: object) -> ScsiResult:
        raise AssertionError("the general path ran")

    monkeypatch.setattr(unit, "_execute", general)
    result = unit.execute(cdb_for(opcode, 0, 8, 8, 0), b"\x5a" * 8 * BLOCK, NEXUS)
    assert result.status == 0
    if opcode in (ScsiOp.READ_10, ScsiOp.READ_16):
        assert result.data == unit.store.read(8 * BLOCK, 8 * BLOCK)
    else:
        assert unit.store.read(8 * BLOCK, 8 * BLOCK) == b"\x5a" * 8 * BLOCK
