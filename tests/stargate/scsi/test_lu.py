"""The dispatcher: unit attentions, reservation plug-in, error mapping, robustness."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iscsicore.scsi.opcodes import ScsiOp, ScsiStatus
from iscsicore.scsi.sense import Asc, SenseKey
from stargate.scsi.lu import LogicalUnit, Nexus, ScsiResult
from stargate.scsi.pr_store import MemoryPrStore
from stargate.scsi.reserve import Reservations
from stargate.scsi.ua import UnitAttentionQueues
from stargate.stores import MemoryStore
from tests.stargate.scsi import BLOCK, BLOCKS, NEXUS, OTHER_NEXUS, make_unit, run, rw10, sense_of
from topology.vdisk import VDiskMeta

TUR = bytes(6)
INQUIRY = bytes([ScsiOp.INQUIRY, 0, 0, 0, 36, 0])
REPORT_LUNS = struct.pack(">BBB3xIBB", ScsiOp.REPORT_LUNS, 0, 0, 16, 0, 0)


def test_first_command_of_a_nexus_reports_power_on_once() -> None:
    unit = make_unit()
    sense = sense_of(run(unit, TUR, nexus=OTHER_NEXUS))
    assert sense.key == SenseKey.UNIT_ATTENTION
    assert sense.code is Asc.POWER_ON_RESET
    assert run(unit, TUR, nexus=OTHER_NEXUS).status == ScsiStatus.GOOD


def test_inquiry_and_report_luns_do_not_report_or_clear() -> None:
    unit = make_unit()
    assert run(unit, INQUIRY, nexus=OTHER_NEXUS).status == ScsiStatus.GOOD
    assert run(unit, REPORT_LUNS, nexus=OTHER_NEXUS).status == ScsiStatus.GOOD
    assert sense_of(run(unit, TUR, nexus=OTHER_NEXUS)).key == SenseKey.UNIT_ATTENTION


def test_unit_attention_preempts_the_command() -> None:
    unit = make_unit()
    data = b"\x11" * BLOCK
    result = run(unit, rw10(ScsiOp.WRITE_10, 0, 1), data, nexus=OTHER_NEXUS)
    assert result.status == ScsiStatus.CHECK_CONDITION
    assert run(unit, rw10(ScsiOp.READ_10, 0, 1)).data == bytes(BLOCK)


def test_logical_unit_reset_tells_every_nexus() -> None:
    unit = make_unit()
    run(unit, TUR)
    run(unit, TUR, nexus=OTHER_NEXUS)
    unit.logical_unit_reset(by=NEXUS)
    assert sense_of(run(unit, TUR)).code is Asc.BUS_DEVICE_RESET  # the requester too
    assert run(unit, TUR).status == ScsiStatus.GOOD
    assert sense_of(run(unit, TUR, nexus=OTHER_NEXUS)).code is Asc.BUS_DEVICE_RESET
    assert run(unit, TUR, nexus=OTHER_NEXUS).status == ScsiStatus.GOOD


def test_nexus_loss_then_return_reports_nexus_loss() -> None:
    unit = make_unit()
    unit.nexus_lost(NEXUS)
    assert sense_of(run(unit, TUR)).code is Asc.I_T_NEXUS_LOSS_OCCURRED
    assert run(unit, TUR).status == ScsiStatus.GOOD


def test_resize_reports_capacity_change() -> None:
    unit = make_unit()
    unit.resize(BLOCKS * 2 * BLOCK)
    assert sense_of(run(unit, TUR)).code is Asc.CAPACITY_DATA_HAS_CHANGED
    capacity = run(unit, bytes([ScsiOp.READ_CAPACITY_10]) + bytes(9)).data
    assert struct.unpack(">II", capacity) == (2 * BLOCKS - 1, BLOCK)


def test_unknown_opcode_and_empty_cdb() -> None:
    unit = make_unit()
    for cdb in (bytes([0xC5]) + bytes(15), b""):
        sense = sense_of(run(unit, cdb))
        assert sense.key == SenseKey.ILLEGAL_REQUEST
        assert sense.code is Asc.INVALID_COMMAND_OPERATION_CODE


def test_cdb_shorter_than_its_opcode() -> None:
    sense = sense_of(run(make_unit(), bytes([ScsiOp.READ_16, 0, 0, 0])))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB


def test_reservation_commands_unsupported_without_an_engine() -> None:
    sense = sense_of(run(make_unit(), bytes([ScsiOp.PERSISTENT_RESERVE_IN]) + bytes(9)))
    assert sense.code is Asc.INVALID_COMMAND_OPERATION_CODE


@dataclass
class _FakeReservations:
    """Reserves the unit for one nexus; everybody else conflicts on writes."""

    holder: Nexus | None = None
    handled_opcodes: frozenset[int] = frozenset({ScsiOp.RESERVE_6, ScsiOp.RELEASE_6})
    lost: list[Nexus] = field(default_factory=list)
    resets: int = 0

    def check(self, nexus: Nexus, cdb: bytes) -> bool:
        return self.holder is not None and nexus != self.holder and cdb[0] == ScsiOp.WRITE_10

    def execute(
        self, cdb: bytes, data_out: bytes | bytearray | memoryview, nexus: Nexus
    ) -> ScsiResult:
        self.holder = nexus if cdb[0] == ScsiOp.RESERVE_6 else None
        return ScsiResult(ScsiStatus.GOOD)

    def nexus_lost(self, nexus: Nexus) -> None:
        self.lost.append(nexus)

    def logical_unit_reset(self, by: Nexus | None) -> None:
        self.resets += 1
        self.holder = None


def test_reservation_checker_plugs_in() -> None:
    meta = VDiskMeta("vd1", BLOCKS * BLOCK)
    reservations = _FakeReservations()
    unit = LogicalUnit(MemoryStore(meta), meta, reservations=reservations)
    for nexus in (NEXUS, OTHER_NEXUS):
        run(unit, TUR, nexus=nexus)  # clear power-on attention
    assert run(unit, bytes([ScsiOp.RESERVE_6]) + bytes(5)).status == ScsiStatus.GOOD
    write = rw10(ScsiOp.WRITE_10, 0, 1)
    conflict = run(unit, write, bytes(BLOCK), nexus=OTHER_NEXUS)
    assert conflict.status == ScsiStatus.RESERVATION_CONFLICT
    assert run(unit, write, bytes(BLOCK)).status == ScsiStatus.GOOD
    listed = run(unit, struct.pack(">BBBBHIBB", 0xA3, 0x0C, 1, ScsiOp.RESERVE_6, 0, 64, 0, 0))
    assert listed.data[1] & 0x07 == 3
    unit.nexus_lost(OTHER_NEXUS)
    unit.logical_unit_reset(NEXUS)
    assert reservations.lost == [OTHER_NEXUS] and reservations.resets == 1


class _BrokenStore(MemoryStore):
    def read(self, offset: int, length: int) -> bytes:
        raise OSError(5, "EIO")

    def allocated_extents(self, offset: int, length: int):
        raise RuntimeError("bug")


def test_io_error_is_medium_error_and_bug_is_hardware_error() -> None:
    meta = VDiskMeta("vd1", BLOCKS * BLOCK)
    unit = LogicalUnit(_BrokenStore(meta), meta)
    run(unit, TUR)
    sense = sense_of(run(unit, rw10(ScsiOp.READ_10, 0, 1)))
    assert sense.key == SenseKey.MEDIUM_ERROR and sense.code is Asc.UNRECOVERED_READ_ERROR
    status = run(unit, struct.pack(">BBQIBB", 0x9E, 0x12, 0, 64, 0, 0))
    sense = sense_of(status)
    assert sense.key == SenseKey.HARDWARE_ERROR


_UNIT = make_unit(blocks=256)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cdb=st.one_of(
        st.binary(max_size=32),
        st.builds(
            lambda opcode, rest: bytes([opcode]) + rest,
            st.sampled_from([int(op) for op in ScsiOp]),
            st.binary(max_size=20),
        ),
    ),
    data_out=st.binary(max_size=2048),
)
def test_random_cdbs_never_raise(cdb: bytes, data_out: bytes) -> None:
    result = _UNIT.execute(cdb, data_out, NEXUS)
    assert isinstance(result, ScsiResult)
    if result.status == ScsiStatus.CHECK_CONDITION:
        assert result.sense
        assert sense_of(result).key != SenseKey.HARDWARE_ERROR  # no emulation bug hit


def test_naca_is_refused() -> None:
    sense = sense_of(run(make_unit(), bytes([0, 0, 0, 0, 0, 0x04])))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB
    assert sense.field_pointer is not None
    assert (sense.field_pointer.byte, sense.field_pointer.bit) == (5, 2)


def _unit_with_reservations() -> LogicalUnit:
    """The unit as stargate wires it: the real reservation engine and UA queues."""
    queues = UnitAttentionQueues()
    meta = VDiskMeta("vd1", 256 * BLOCK)
    return LogicalUnit(
        MemoryStore(meta),
        meta,
        reservations=Reservations.with_store(MemoryPrStore(), queues),
        unit_attentions=queues,
    )


_WIRED = _unit_with_reservations()
_RESERVATION_OPS = [0x5E, 0x5F, 0x16, 0x17, 0x56, 0x57]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cdb=st.builds(
        lambda opcode, rest: bytes([opcode]) + rest,
        st.sampled_from([*_RESERVATION_OPS, ScsiOp.READ_10, ScsiOp.WRITE_10, ScsiOp.INQUIRY]),
        st.binary(min_size=5, max_size=15),
    ),
    data_out=st.binary(max_size=64),
    initiator=st.sampled_from([NEXUS, OTHER_NEXUS]),
)
def test_random_cdbs_through_the_wired_unit_never_raise(
    cdb: bytes, data_out: bytes, initiator: Nexus
) -> None:
    result = _WIRED.execute(cdb, data_out, initiator)
    assert isinstance(result, ScsiResult)
    if result.status == ScsiStatus.CHECK_CONDITION:
        assert sense_of(result).key != SenseKey.HARDWARE_ERROR


def test_a_reservation_engine_cannot_take_over_other_commands() -> None:
    meta = VDiskMeta("vd1", BLOCKS * BLOCK)
    greedy = _FakeReservations(handled_opcodes=frozenset({ScsiOp.RESERVE_6, ScsiOp.READ_10}))
    with pytest.raises(ValueError, match="other opcodes"):
        LogicalUnit(MemoryStore(meta), meta, reservations=greedy)
