"""SPC-2 RESERVE/RELEASE (6)/(10), alone and next to persistent reservations (CRH = 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from iscsicore.scsi.opcodes import PrInAction, PrOutAction, PrType, ScsiOp, ScsiStatus
from iscsicore.scsi.sense import Asc
from stargate.scsi.lu import LogicalUnit, Nexus
from stargate.scsi.pr import ReservationConflict
from stargate.scsi.pr_store import MemoryPrStore
from stargate.scsi.reserve import Reservations, Spc2Reservation, vdisk_reservations
from tests.stargate.scsi import rw10, sense_of
from tests.stargate.scsi.test_pr import (
    KEY_A,
    KEY_B,
    A,
    B,
    C,
    clear_ua,
    lu_out,
    make_pr_unit,
    prin_cdb,
    prout_cdb,
    prout_params,
)

RESERVE6 = bytes([ScsiOp.RESERVE_6, 0, 0, 0, 0, 0])
RELEASE6 = bytes([ScsiOp.RELEASE_6, 0, 0, 0, 0, 0])
RESERVE10 = bytes([ScsiOp.RESERVE_10]) + bytes(9)
RELEASE10 = bytes([ScsiOp.RELEASE_10]) + bytes(9)
MODE_SENSE6 = bytes([0x1A, 0, 0x3F, 0, 0xFF, 0])
READ10 = rw10(ScsiOp.READ_10, 0, 1)
WRITE10 = rw10(ScsiOp.WRITE_10, 0, 1)


def status(unit: LogicalUnit, nexus: Nexus, cdb: bytes, data: bytes = b"") -> ScsiStatus:
    return unit.execute(cdb, data, nexus).status


def two_initiators() -> LogicalUnit:
    unit, _ua = make_pr_unit()
    clear_ua(unit, A)
    clear_ua(unit, B)
    return unit


@pytest.mark.parametrize(("reserve", "release"), [(RESERVE6, RELEASE6), (RESERVE10, RELEASE10)])
def test_libiscsi_reserve6_two_initiators(reserve: bytes, release: bytes) -> None:
    """Reserve6.2Initiators, which tgtd fails, step by step."""
    unit = two_initiators()
    assert status(unit, A, reserve) == ScsiStatus.GOOD
    assert status(unit, A, reserve) == ScsiStatus.GOOD, "the holder may reserve again"
    assert status(unit, B, reserve) == ScsiStatus.RESERVATION_CONFLICT
    assert status(unit, B, release) == ScsiStatus.GOOD, "release by a non-holder: no-op"
    assert status(unit, A, MODE_SENSE6) == ScsiStatus.GOOD
    assert status(unit, B, MODE_SENSE6) == ScsiStatus.RESERVATION_CONFLICT
    assert status(unit, B, reserve) == ScsiStatus.RESERVATION_CONFLICT
    assert status(unit, A, release) == ScsiStatus.GOOD
    assert status(unit, B, reserve) == ScsiStatus.GOOD
    assert status(unit, A, MODE_SENSE6) == ScsiStatus.RESERVATION_CONFLICT
    assert status(unit, B, release) == ScsiStatus.GOOD
    assert status(unit, A, MODE_SENSE6) == ScsiStatus.GOOD


@pytest.mark.parametrize(
    ("name", "cdb", "allowed"),
    [
        ("INQUIRY", bytes([0x12, 0, 0, 0, 0x60, 0]), True),
        ("REPORT LUNS", bytes([0xA0]) + bytes(5) + (64).to_bytes(4, "big") + bytes(2), True),
        ("REQUEST SENSE", bytes([0x03, 0, 0, 0, 18, 0]), True),
        ("TEST UNIT READY", bytes(6), True),
        ("READ CAPACITY(10)", bytes([0x25]) + bytes(9), True),
        (
            "READ CAPACITY(16)",
            bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + bytes(2),
            True,
        ),
        ("LOG SENSE", bytes([0x4D, 0, 0, 0, 0, 0, 0, 0, 64, 0]), True),
        ("RELEASE(6)", RELEASE6, True),
        ("READ(10)", READ10, False),
        ("WRITE(10)", WRITE10, False),
        ("MODE SENSE(6)", MODE_SENSE6, False),
        (
            "GET LBA STATUS",
            bytes([0x9E, 0x12]) + bytes(8) + (32).to_bytes(4, "big") + bytes(2),
            False,
        ),
        ("SYNCHRONIZE CACHE(10)", bytes([0x35]) + bytes(9), False),
        ("PERSISTENT RESERVE IN", prin_cdb(PrInAction.READ_KEYS), False),
        ("PERSISTENT RESERVE OUT", prout_cdb(PrOutAction.REGISTER), False),
        ("RESERVE(6)", RESERVE6, False),
    ],
)
def test_what_another_nexus_may_do_while_reserved(name: str, cdb: bytes, allowed: bool) -> None:
    reservations = Reservations.with_store(MemoryPrStore())
    reservations.spc2.reserve(A)
    assert reservations.check(B, cdb) is not allowed, name
    assert not reservations.check(A, cdb), f"the holder may always {name}"


def test_data_commands_of_the_holder_work_and_others_conflict() -> None:
    unit = two_initiators()
    assert status(unit, A, RESERVE6) == ScsiStatus.GOOD
    assert status(unit, A, WRITE10, bytes(512)) == ScsiStatus.GOOD
    assert status(unit, A, READ10) == ScsiStatus.GOOD
    assert status(unit, B, READ10) == ScsiStatus.RESERVATION_CONFLICT
    assert status(unit, B, WRITE10, bytes(512)) == ScsiStatus.RESERVATION_CONFLICT


def test_logical_unit_reset_releases_the_reservation() -> None:
    unit = two_initiators()
    status(unit, A, RESERVE6)
    unit.logical_unit_reset(A)
    clear_ua(unit, B)  # BUS DEVICE RESET FUNCTION OCCURRED
    assert status(unit, B, READ10) == ScsiStatus.GOOD
    assert status(unit, B, RESERVE6) == ScsiStatus.GOOD


def test_losing_the_holders_nexus_releases_the_reservation() -> None:
    unit = two_initiators()
    status(unit, A, RESERVE6)
    unit.nexus_lost(B)  # someone else's loss changes nothing
    clear_ua(unit, B)  # I_T NEXUS LOSS OCCURRED on its return
    assert status(unit, B, READ10) == ScsiStatus.RESERVATION_CONFLICT
    unit.nexus_lost(A)
    assert status(unit, B, READ10) == ScsiStatus.GOOD


def test_persistent_registrations_survive_a_logical_unit_reset() -> None:
    unit = two_initiators()
    lu_out(unit, A, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, 0, KEY_A)
    lu_out(unit, A, PrOutAction.RESERVE, KEY_A, 0, PrType.EXCLUSIVE_ACCESS)
    unit.logical_unit_reset(B)
    for nexus in (A, B):  # BUS DEVICE RESET for every nexus, the requester B's included
        clear_ua(unit, nexus)
    assert status(unit, B, READ10) == ScsiStatus.RESERVATION_CONFLICT
    assert status(unit, A, READ10) == ScsiStatus.GOOD


@pytest.mark.parametrize(
    "cdb",
    [
        bytes([ScsiOp.RESERVE_6, 0x10, 0, 0, 0, 0]),  # 3RDPTY
        bytes([ScsiOp.RESERVE_6, 0x01, 0, 0, 0, 0]),  # EXTENT
        bytes([ScsiOp.RESERVE_10, 0x10]) + bytes(8),  # 3RDPTY
        bytes([ScsiOp.RESERVE_10, 0x02]) + bytes(8),  # LONGID
        bytes([ScsiOp.RELEASE_10, 0x10]) + bytes(8),
    ],
)
def test_third_party_extent_and_long_id_reservations_are_invalid(cdb: bytes) -> None:
    unit = two_initiators()
    sense = sense_of(unit.execute(cdb, b"", A))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB
    assert status(unit, B, RESERVE6) == ScsiStatus.GOOD, "nothing was reserved"


# ---- next to persistent reservations (SPC-4 exceptions to SPC-2, CRH = 1) -----------------
def test_reserve_conflicts_while_registrations_exist_unless_exempt() -> None:
    unit = two_initiators()
    lu_out(unit, A, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, 0, KEY_A)
    # Registrations but no reservation: nobody is exempt.
    assert status(unit, A, RESERVE6) == ScsiStatus.RESERVATION_CONFLICT
    assert status(unit, B, RESERVE6) == ScsiStatus.RESERVATION_CONFLICT
    assert status(unit, B, RELEASE6) == ScsiStatus.RESERVATION_CONFLICT
    lu_out(unit, A, PrOutAction.RESERVE, KEY_A, 0, PrType.WRITE_EXCLUSIVE)
    # The holder: GOOD, and no SPC-2 reservation is made.
    assert status(unit, A, RESERVE6) == ScsiStatus.GOOD
    assert status(unit, A, RELEASE10) == ScsiStatus.GOOD
    assert status(unit, B, READ10) == ScsiStatus.GOOD, "WE lets B read; no SPC-2 hold"
    lu_out(unit, B, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, 0, KEY_B)
    # A registrant that is not the holder of a WE reservation: conflict.
    assert status(unit, B, RESERVE6) == ScsiStatus.RESERVATION_CONFLICT


@pytest.mark.parametrize(
    "pr_type",
    [
        PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
        PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
        PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
        PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
    ],
)
def test_registrants_of_ro_and_ar_reservations_are_exempt(pr_type: PrType) -> None:
    unit = two_initiators()
    clear_ua(unit, C)
    lu_out(unit, A, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, 0, KEY_A)
    lu_out(unit, B, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, 0, KEY_B)
    lu_out(unit, A, PrOutAction.RESERVE, KEY_A, 0, pr_type)
    assert status(unit, B, RESERVE6) == ScsiStatus.GOOD
    assert status(unit, B, RELEASE6) == ScsiStatus.GOOD
    assert status(unit, C, RESERVE6) == ScsiStatus.RESERVATION_CONFLICT


def test_persistent_reserve_out_conflicts_under_another_nexus_spc2_reservation() -> None:
    unit = two_initiators()
    assert status(unit, A, RESERVE6) == ScsiStatus.GOOD
    register = prout_cdb(PrOutAction.REGISTER)
    result = unit.execute(register, prout_params(0, KEY_B), B)
    assert result.status == ScsiStatus.RESERVATION_CONFLICT
    assert unit.execute(register, prout_params(0, KEY_A), A).status == ScsiStatus.GOOD


def test_spc2_reservation_object() -> None:
    spc2 = Spc2Reservation()
    spc2.release(A)  # nothing held: fine
    spc2.reserve(A)
    spc2.release(B)
    assert spc2.holder == A
    with pytest.raises(ReservationConflict):
        spc2.reserve(B)
    spc2.reset()
    assert spc2.holder is None


def test_vdisk_reservations_are_wired_and_persist(tmp_path: Path) -> None:
    reservations, unit_attentions = vdisk_reservations(tmp_path, "vd7")
    for nexus in (A, B):
        unit_attentions.consume(nexus)
    register = prout_cdb(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY)
    reservations.execute(register, prout_params(0, KEY_A), A)
    reservations.execute(register, prout_params(0, KEY_B), B)
    reservations.execute(prout_cdb(PrOutAction.CLEAR), prout_params(KEY_A), A)
    assert unit_attentions.pending(B) == Asc.RESERVATIONS_PREEMPTED.value
    assert (tmp_path / "vd7.pr.json").exists()
    in_memory, _ = vdisk_reservations(None, "vd7")
    assert not in_memory.persistent.has_registrations()
