"""Unit attention queues: first contact, precedence, dedupe, which commands report them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsicore.scsi.opcodes import ScsiOp, ScsiStatus
from iscsicore.scsi.sense import Asc, SenseKey, parse_sense
from stargate.scsi.lu import LogicalUnit, Nexus
from stargate.scsi.ua import MAX_PENDING_PER_NEXUS, UnitAttention, UnitAttentionQueues
from stargate.stores import MemoryStore
from tests.stargate.scsi import sense_of
from topology.vdisk import VDiskMeta

TARGET = "iqn.2010-06.com.nutanix:vmdisk-vd1,t,0x0001"
A = Nexus("iqn.2026-11.test:a,i,0x400000000001", TARGET)
B = Nexus("iqn.2026-11.test:b,i,0x400000000002", TARGET)
C = Nexus("iqn.2026-11.test:c,i,0x400000000003", TARGET)

TUR = bytes(6)
INQUIRY = bytes([0x12, 0, 0, 0, 0x60, 0])
REPORT_LUNS = bytes([0xA0]) + bytes(5) + (64).to_bytes(4, "big") + bytes(2)
REQUEST_SENSE = bytes([0x03, 0, 0, 0, 18, 0])


def drained(queues: UnitAttentionQueues, nexus: Nexus) -> list[Asc]:
    """Consume everything, in reporting order, as named codes."""
    codes = []
    while (ua := queues.consume(nexus)) is not None:
        named = Asc.lookup(*ua)
        assert named is not None
        codes.append(named)
    return codes


def test_first_contact_is_power_on_then_nothing() -> None:
    queues = UnitAttentionQueues()
    assert queues.pending(A) == Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET.value
    assert drained(queues, A) == [Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET]
    assert queues.pending(A) is None


def test_return_after_nexus_loss_is_i_t_nexus_loss() -> None:
    queues = UnitAttentionQueues()
    drained(queues, A)
    queues.establish_for(A, Asc.CAPACITY_DATA_HAS_CHANGED)
    queues.nexus_lost(A)
    assert drained(queues, A) == [Asc.I_T_NEXUS_LOSS_OCCURRED, Asc.CAPACITY_DATA_HAS_CHANGED]


def test_establish_for_all_known_except_one() -> None:
    queues = UnitAttentionQueues()
    for nexus in (A, B):
        drained(queues, nexus)
    queues.establish(Asc.BUS_DEVICE_RESET.value, exclude=A)
    assert drained(queues, A) == []
    assert drained(queues, B) == [Asc.BUS_DEVICE_RESET]
    # A nexus never seen hears POWER ON at first contact, not the older event.
    assert drained(queues, C) == [Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET]
    queues.establish(Asc.CAPACITY_DATA_HAS_CHANGED, nexus=C)
    assert drained(queues, C) == [Asc.CAPACITY_DATA_HAS_CHANGED]


def test_precedence_resets_first_then_oldest_first() -> None:
    queues = UnitAttentionQueues()
    drained(queues, A)
    queues.establish_for(A, Asc.REGISTRATIONS_PREEMPTED)
    queues.establish_for(A, Asc.CAPACITY_DATA_HAS_CHANGED)
    queues.establish_for(A, Asc.BUS_DEVICE_RESET)
    queues.establish_for(A, Asc.REPORTED_LUNS_DATA_HAS_CHANGED)
    assert drained(queues, A) == [
        Asc.BUS_DEVICE_RESET,
        Asc.REGISTRATIONS_PREEMPTED,
        Asc.CAPACITY_DATA_HAS_CHANGED,
        Asc.REPORTED_LUNS_DATA_HAS_CHANGED,
    ]


def test_duplicates_are_queued_once() -> None:
    queues = UnitAttentionQueues()
    drained(queues, A)
    for _ in range(3):
        queues.establish_for(A, Asc.RESERVATIONS_RELEASED)
    assert drained(queues, A) == [Asc.RESERVATIONS_RELEASED]


@pytest.mark.parametrize(
    ("first", "second", "reported"),
    [
        (Asc.BUS_DEVICE_RESET, Asc.POWER_ON_OCCURRED, Asc.POWER_ON_OCCURRED),
        (Asc.POWER_ON_OCCURRED, Asc.BUS_DEVICE_RESET, Asc.POWER_ON_OCCURRED),
        (Asc.I_T_NEXUS_LOSS_OCCURRED, Asc.SCSI_BUS_RESET_OCCURRED, Asc.SCSI_BUS_RESET_OCCURRED),
        (Asc.SCSI_BUS_RESET_OCCURRED, Asc.BUS_DEVICE_RESET, Asc.SCSI_BUS_RESET_OCCURRED),
    ],
)
def test_a_wider_reset_makes_narrower_ones_redundant(
    first: Asc, second: Asc, reported: Asc
) -> None:
    queues = UnitAttentionQueues()
    drained(queues, A)
    queues.establish_for(A, first)
    queues.establish_for(A, Asc.RESERVATIONS_PREEMPTED)
    queues.establish_for(A, second)
    assert drained(queues, A) == [reported, Asc.RESERVATIONS_PREEMPTED]


def test_queue_is_bounded_and_keeps_the_important_conditions() -> None:
    queues = UnitAttentionQueues()
    drained(queues, A)
    for ascq in range(MAX_PENDING_PER_NEXUS + 10):
        queues.establish_for(A, (0x3F, 0x80 + ascq))  # distinct ordinary conditions
    queues.establish_for(A, Asc.BUS_DEVICE_RESET)
    pending = queues.all_pending(A)
    assert len(pending) == MAX_PENDING_PER_NEXUS
    assert pending[0] == Asc.BUS_DEVICE_RESET.value


@given(
    codes=st.lists(
        st.sampled_from(
            [
                Asc.POWER_ON_OCCURRED,
                Asc.BUS_DEVICE_RESET,
                Asc.I_T_NEXUS_LOSS_OCCURRED,
                Asc.RESERVATIONS_PREEMPTED,
                Asc.RESERVATIONS_RELEASED,
                Asc.REGISTRATIONS_PREEMPTED,
                Asc.CAPACITY_DATA_HAS_CHANGED,
                Asc.REPORTED_LUNS_DATA_HAS_CHANGED,
                Asc.COMMANDS_CLEARED_BY_ANOTHER_INITIATOR,
            ]
        ),
        max_size=40,
    )
)
def test_reporting_order_invariants(codes: list[Asc]) -> None:
    queues = UnitAttentionQueues()
    drained(queues, A)
    for code in codes:
        queues.establish_for(A, code)
    reported = drained(queues, A)
    assert len(reported) == len(set(reported)), "each condition once"
    ranks = [UnitAttention.of(code).precedence for code in reported]
    assert ranks == sorted(ranks), "never a lower-precedence condition before a higher one"
    assert sum(1 for code in reported if code.asc == 0x29) <= 1, "one reset notice at most"
    ordinary = [code for code in codes if code.asc != 0x29]
    first_seen = list(dict.fromkeys(ordinary))
    assert [code for code in reported if code.asc != 0x29] == first_seen, "FIFO otherwise"


def test_report_for_command_spares_inquiry_report_luns_and_request_sense() -> None:
    queues = UnitAttentionQueues()
    for cdb in (INQUIRY, REPORT_LUNS, REQUEST_SENSE):
        assert queues.report_for_command(A, cdb) is None
    condition = queues.report_for_command(A, TUR)
    assert condition is not None and condition.key == SenseKey.UNIT_ATTENTION
    assert condition.code == Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET.value
    assert queues.report_for_command(A, TUR) is None


def test_report_luns_clears_reported_luns_data_has_changed_only() -> None:
    queues = UnitAttentionQueues()
    drained(queues, A)
    queues.establish_for(A, Asc.REPORTED_LUNS_DATA_HAS_CHANGED)
    queues.establish_for(A, Asc.CAPACITY_DATA_HAS_CHANGED)
    assert queues.report_for_command(A, REPORT_LUNS) is None
    assert drained(queues, A) == [Asc.CAPACITY_DATA_HAS_CHANGED]


def test_clear_drops_one_condition() -> None:
    queues = UnitAttentionQueues()
    queues.clear(A, Asc.POWER_ON_RESET.value)  # nothing queued yet: fine
    queues.establish_for(B, Asc.RESERVATIONS_RELEASED)
    queues.establish_for(B, Asc.RESERVATIONS_PREEMPTED)
    queues.clear(B, Asc.RESERVATIONS_RELEASED)
    assert Asc.RESERVATIONS_RELEASED not in drained(queues, B)


def test_power_on_forgets_everything_and_reports_power_on_occurred() -> None:
    queues = UnitAttentionQueues()
    for nexus in (A, B):
        drained(queues, nexus)
    queues.establish_for(A, Asc.RESERVATIONS_PREEMPTED)
    queues.nexus_lost(B)
    queues.power_on()
    assert queues.known_nexuses() == set()
    assert drained(queues, A) == [Asc.POWER_ON_OCCURRED]
    assert drained(queues, B) == [Asc.POWER_ON_OCCURRED]


# ---- plugged into the logical unit ---------------------------------------------------------
def make_unit() -> tuple[LogicalUnit, UnitAttentionQueues]:
    meta = VDiskMeta("vd1", 1 << 20)
    queues = UnitAttentionQueues()
    return LogicalUnit(MemoryStore(meta), meta, unit_attentions=queues), queues


def test_through_the_unit_a_command_reports_the_ua_instead_of_running() -> None:
    unit, _queues = make_unit()
    assert unit.execute(INQUIRY, b"", A).status == ScsiStatus.GOOD
    sense = sense_of(unit.execute(TUR, b"", A))
    assert sense.key == SenseKey.UNIT_ATTENTION and sense.code is Asc.POWER_ON_RESET
    assert unit.execute(TUR, b"", A).status == ScsiStatus.GOOD


def test_through_the_unit_request_sense_returns_the_ua_with_good_status() -> None:
    unit, _queues = make_unit()
    result = unit.execute(REQUEST_SENSE, b"", A)
    assert result.status == ScsiStatus.GOOD
    sense = parse_sense(bytes(result.data))
    assert sense.key == SenseKey.UNIT_ATTENTION and sense.code is Asc.POWER_ON_RESET
    assert unit.execute(TUR, b"", A).status == ScsiStatus.GOOD


def test_through_the_unit_a_lun_reset_tells_every_nexus_the_requester_too() -> None:
    # SAM-5 6.4: "a unit attention condition for all I_T nexuses"; libiscsi's
    # MultipathIO.Reset expects it on the session that sent the reset as well.
    unit, _queues = make_unit()
    for nexus in (A, B):
        unit.execute(TUR, b"", nexus)
    unit.logical_unit_reset(A)
    for nexus in (A, B):
        sense = sense_of(unit.execute(bytes([ScsiOp.READ_CAPACITY_10]) + bytes(9), b"", nexus))
        assert sense.code is Asc.BUS_DEVICE_RESET
        assert unit.execute(TUR, b"", nexus).status == ScsiStatus.GOOD


def test_through_the_unit_a_resize_tells_everyone() -> None:
    unit, _queues = make_unit()
    for nexus in (A, B):
        unit.execute(TUR, b"", nexus)
    unit.resize(2 << 20)
    for nexus in (A, B):
        assert sense_of(unit.execute(TUR, b"", nexus)).code is Asc.CAPACITY_DATA_HAS_CHANGED
