"""Persistent reservations: every service action, the conflict table, persistence."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from iscsicore.scsi.opcodes import PrInAction, PrOutAction, PrType, ScsiOp, ScsiStatus
from iscsicore.scsi.sense import Asc, CheckCondition, FieldPointer, SenseKey
from stargate.scsi.command import Nexus, ScsiResult
from stargate.scsi.lu import LogicalUnit
from stargate.scsi.pr import (
    Access,
    PersistentReservations,
    command_access,
    iscsi_transport_id,
    parse_iscsi_transport_id,
)
from stargate.scsi.pr_store import MemoryPrStore, PrFile, PrState, PrStoreError
from stargate.scsi.reserve import Reservations
from stargate.scsi.ua import UnitAttentionQueues
from stargate.server import ServerConfig, StargateServer
from stargate.stores import MemoryStore
from stargate.target import PortalGroup, TargetRegistry, VDiskTarget
from tests.stargate.scsi import rw10, sense_of
from topology.naming import target_name_for
from topology.vdisk import VDiskMeta

TARGET_PORT = "iqn.2010-06.com.nutanix:vmdisk-vd1,t,0x0001"
OTHER_TARGET_PORT = "iqn.2010-06.com.nutanix:vmdisk-vd1,t,0x0002"


def node(number: int, target_port: str = TARGET_PORT) -> Nexus:
    return Nexus(f"iqn.1991-05.com.microsoft:node{number},i,0x4000013700{number:02x}", target_port)


A, B, C = node(1), node(2), node(3)
KEY_A, KEY_B, KEY_C = 0xAAAA_0000_0000_0001, 0xBBBB_0000_0000_0002, 0xCCCC_0000_0000_0003

GOOD = "GOOD"
CONFLICT = "RESERVATION CONFLICT"
Outcome = str | CheckCondition

ALL_TYPES = list(PrType)
SINGLE_HOLDER_TYPES = [
    PrType.WRITE_EXCLUSIVE,
    PrType.EXCLUSIVE_ACCESS,
    PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
    PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
]
ALL_REGISTRANTS = [PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS]
REGISTRANTS_ONLY = [
    PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
    PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
]


# ---- CDB and parameter list builders --------------------------------------------------------
def prout_cdb(action: int, *, scope: int = 0, pr_type: int = 0, length: int = 24) -> bytes:
    return struct.pack(">BBBHIB", 0x5F, action, (scope << 4) | pr_type, 0, length, 0)


def prout_params(
    rk: int = 0,
    sark: int = 0,
    *,
    spec_i_pt: bool = False,
    all_tg_pt: bool = False,
    aptpl: bool = False,
) -> bytes:
    flags = (0x08 if spec_i_pt else 0) | (0x04 if all_tg_pt else 0) | (0x01 if aptpl else 0)
    return struct.pack(">QQIBBH", rk, sark, 0, flags, 0, 0)


def move_params(
    rk: int, sark: int, transport_id: bytes, *, rtpi: int = 1, unreg: bool = False
) -> bytes:
    flags = 0x02 if unreg else 0
    return struct.pack(">QQBBHI", rk, sark, 0, flags, rtpi, len(transport_id)) + transport_id


def prin_cdb(action: int, allocation_length: int = 8192) -> bytes:
    return struct.pack(">BB5sHB", 0x5E, action, bytes(5), allocation_length, 0)


@dataclass
class Bench:
    """One logical unit's reservations with a UA queue, driven like the LU would."""

    store: MemoryPrStore = field(default_factory=MemoryPrStore)
    ua: UnitAttentionQueues = field(default_factory=UnitAttentionQueues)
    aborted: list[frozenset[Nexus]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.res = Reservations.with_store(self.store, self.ua)
        self.res.on_preempt_and_abort = self.aborted.append

    @property
    def pr(self) -> PersistentReservations:
        return self.res.persistent

    def execute(self, nexus: Nexus, cdb: bytes, data: bytes = b"") -> Outcome | ScsiResult:
        if self.res.check(nexus, cdb):
            return CONFLICT
        try:
            result = self.res.execute(cdb, data, nexus)
        except CheckCondition as condition:
            return condition
        if result.status == ScsiStatus.RESERVATION_CONFLICT:
            return CONFLICT
        assert result.status == ScsiStatus.GOOD
        return result

    def out(
        self,
        nexus: Nexus,
        action: PrOutAction,
        rk: int = 0,
        sark: int = 0,
        *,
        pr_type: int = 0,
        scope: int = 0,
        length: int | None = None,
        data: bytes | None = None,
        **flags: bool,
    ) -> Outcome:
        data = prout_params(rk, sark, **flags) if data is None else data
        cdb = prout_cdb(
            action, scope=scope, pr_type=pr_type, length=len(data) if length is None else length
        )
        result = self.execute(nexus, cdb, data)
        return GOOD if isinstance(result, ScsiResult) else result

    def register(self, nexus: Nexus, key: int, **flags: bool) -> None:
        assert (
            self.out(
                nexus, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, 0, key, data=None, **flags
            )
            == GOOD
        )

    def reserve(self, nexus: Nexus, key: int, pr_type: PrType) -> Outcome:
        return self.out(nexus, PrOutAction.RESERVE, key, pr_type=pr_type)

    def inn(self, nexus: Nexus, action: int, allocation_length: int = 8192) -> bytes:
        result = self.execute(nexus, prin_cdb(action, allocation_length))
        assert isinstance(result, ScsiResult), result
        return bytes(result.data)

    def keys(self) -> tuple[int, list[int]]:
        data = self.inn(A, PrInAction.READ_KEYS)
        generation, length = struct.unpack_from(">II", data)
        return generation, [struct.unpack_from(">Q", data, 8 + i)[0] for i in range(0, length, 8)]

    def reservation(self) -> tuple[int, int] | None:
        """(key, type) of READ RESERVATION, or None."""
        data = self.inn(A, PrInAction.READ_RESERVATION)
        if struct.unpack_from(">I", data, 4)[0] == 0:
            return None
        return struct.unpack_from(">Q", data, 8)[0], data[21] & 0x0F

    def uas(self, nexus: Nexus) -> list[Asc | tuple[int, int]]:
        return [Asc.lookup(*ua) or (ua[0], ua[1]) for ua in self.ua.all_pending(nexus)]


def assert_check(outcome: Outcome, code: Asc, key: SenseKey = SenseKey.ILLEGAL_REQUEST) -> None:
    assert isinstance(outcome, CheckCondition), outcome
    assert outcome.key == key
    assert outcome.code == code.value


# ---- PERSISTENT RESERVE IN ----------------------------------------------------------------
@pytest.mark.parametrize("action", range(4))
def test_prin_defined_service_actions_succeed(action: int) -> None:
    bench = Bench()
    bench.inn(A, action)


@pytest.mark.parametrize("action", range(4, 0x20))
def test_prin_undefined_service_actions_are_invalid_field_in_cdb(action: int) -> None:
    outcome = Bench().execute(A, prin_cdb(action))
    assert_check(outcome, Asc.INVALID_FIELD_IN_CDB)  # type: ignore[arg-type]
    assert isinstance(outcome, CheckCondition)
    assert isinstance(outcome.field_pointer, FieldPointer) and outcome.field_pointer.byte == 1


def test_read_keys_lists_every_registration_and_generation_counts_changes() -> None:
    bench = Bench()
    assert bench.keys() == (0, [])
    bench.register(A, KEY_A)
    bench.register(B, KEY_B)
    assert bench.keys() == (2, [KEY_A, KEY_B])
    # RESERVE and RELEASE do not bump PRGENERATION; registration changes do.
    assert bench.reserve(A, KEY_A, PrType.WRITE_EXCLUSIVE) == GOOD
    assert bench.out(A, PrOutAction.RELEASE, KEY_A, pr_type=PrType.WRITE_EXCLUSIVE) == GOOD
    assert bench.keys() == (2, [KEY_A, KEY_B])
    assert bench.out(B, PrOutAction.REGISTER, KEY_B, 0) == GOOD
    assert bench.keys() == (3, [KEY_A])


@given(allocation_length=st.integers(min_value=0, max_value=64), action=st.integers(0, 3))
def test_prin_truncates_to_allocation_length(allocation_length: int, action: int) -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    bench.register(B, KEY_B)
    assert bench.reserve(A, KEY_A, PrType.EXCLUSIVE_ACCESS) == GOOD
    full = bench.inn(A, action)
    assert bench.inn(A, action, allocation_length) == full[:allocation_length]


def test_read_reservation_reports_holder_key_type_and_zero_key_for_all_registrants() -> None:
    bench = Bench()
    assert bench.reservation() is None
    bench.register(A, KEY_A)
    bench.register(B, KEY_B)
    bench.reserve(A, KEY_A, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    assert bench.reservation() == (KEY_A, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    data = bench.inn(B, PrInAction.READ_RESERVATION)
    assert struct.unpack_from(">I", data, 4)[0] == 16 and len(data) == 24
    bench.out(A, PrOutAction.RELEASE, KEY_A, pr_type=PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    bench.reserve(B, KEY_B, PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)
    assert bench.reservation() == (0, PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)


def test_report_capabilities() -> None:
    bench = Bench()
    data = bench.inn(A, PrInAction.REPORT_CAPABILITIES)
    length, capabilities, type_info, type_mask = struct.unpack_from(">HBBH", data)
    assert length == 8 and len(data) == 8
    assert capabilities & 0x10, "CRH: SPC-2 RESERVE/RELEASE follow SPC-4's exceptions"
    assert not capabilities & 0x08, "SIP_C: SPEC_I_PT is not supported"
    assert capabilities & 0x04, "ATP_C"
    assert capabilities & 0x01, "PTPL_C"
    assert not capabilities & 0x80, "RLR_C"
    assert type_info & 0x80, "TMV"
    assert (type_info >> 4) & 0x07 == 0b011, "ALLOW COMMANDS"
    assert not type_info & 0x01, "PTPL_A before any APTPL registration"
    assert type_mask == 0b1110_1010_0000_0001  # the six types, nothing else
    bench.register(A, KEY_A, aptpl=True)
    assert bench.inn(A, PrInAction.REPORT_CAPABILITIES)[3] & 0x01, "PTPL_A"


def test_read_full_status_descriptors_and_iscsi_transport_ids() -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    bench.register(B, KEY_B, all_tg_pt=True)
    bench.reserve(A, KEY_A, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY)
    data = bench.inn(C, PrInAction.READ_FULL_STATUS)
    generation, length = struct.unpack_from(">II", data)
    assert generation == 2 and length == len(data) - 8
    offset, seen = 8, []
    while offset < len(data):
        key, _, flags, scope_type, _, rtpi, tid_length = struct.unpack_from(
            ">QIBBIHI", data, offset
        )
        transport_id = data[offset + 24 : offset + 24 + tid_length]
        assert transport_id[0] == 0x45, "format 01b, protocol iSCSI"
        assert len(transport_id) % 4 == 0 and len(transport_id) >= 24
        port, used = parse_iscsi_transport_id(transport_id)
        assert used == tid_length
        seen.append((key, port, bool(flags & 0x01), bool(flags & 0x02), scope_type, rtpi))
        offset += 24 + tid_length
    assert seen == [
        (KEY_A, A.initiator_port, True, False, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY, 1),
        (KEY_B, B.initiator_port, False, True, 0, 1),
    ]
    assert b"iqn.1991-05.com.microsoft:node1,i,0x400001370001\x00" in data


def test_read_full_status_all_registrants_are_all_holders() -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    bench.register(B, KEY_B)
    bench.reserve(B, KEY_B, PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS)
    data = bench.inn(A, PrInAction.READ_FULL_STATUS)
    first_tid = struct.unpack_from(">I", data, 8 + 20)[0]
    second = 8 + 24 + first_tid
    for offset in (8, second):
        assert data[offset + 12] & 0x01
        assert data[offset + 13] == PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS


# ---- TransportIDs -------------------------------------------------------------------------
_NAME = st.from_regex(r"iqn\.20[0-9]{2}-[01][0-9]\.[a-z]{2,8}\.[a-z0-9.:-]{1,60}", fullmatch=True)


@given(name=_NAME, isid=st.integers(min_value=0, max_value=(1 << 48) - 1))
def test_transport_id_round_trip(name: str, isid: int) -> None:
    port = f"{name},i,0x{isid:012x}"
    encoded = iscsi_transport_id(port)
    assert encoded[0] == 0x45 and len(encoded) % 4 == 0
    assert parse_iscsi_transport_id(encoded + b"trailing") == (port, len(encoded))
    assert parse_iscsi_transport_id(iscsi_transport_id(name)) == (
        name,
        len(iscsi_transport_id(name)),
    )


def test_transport_id_isid_is_normalised_to_lower_case() -> None:
    encoded = iscsi_transport_id("iqn.2026-11.test:x,I,0x23D000000001")
    assert parse_iscsi_transport_id(encoded)[0] == "iqn.2026-11.test:x,i,0x23d000000001"


@pytest.mark.parametrize(
    "raw",
    [
        b"\x45\x00",  # short header
        b"\x41\x00\x00\x08" + b"iqn.x\x00\x00\x00",  # protocol 1 (SPI), not iSCSI
        b"\x45\x00\x00\x07" + b"iqn.x,i\x00",  # length not a multiple of four
        b"\x45\x00\x00\x40" + b"iqn.x,i,0x1\x00",  # length beyond the data
        b"\x45\x00\x00\x08" + b"iqn.xyz\x00",  # format 01b without ISID
        b"\x85\x00\x00\x08" + b"iqn.xyz\x00",  # format 10b
        b"\x45\x00\x00\x0c" + b"iqn.x,i,0xzz\x00\x00\x00\x00"[:12],  # ISID not hex
    ],
)
def test_bad_transport_ids_are_rejected(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_iscsi_transport_id(raw)


# ---- REGISTER / REGISTER AND IGNORE EXISTING KEY -------------------------------------------
def test_register_rules() -> None:
    bench = Bench()
    # Unregistered nexus: a non-zero reservation key conflicts; zero keys do nothing.
    assert bench.out(A, PrOutAction.REGISTER, KEY_B, KEY_A) == CONFLICT
    assert bench.out(A, PrOutAction.REGISTER, 0, 0) == GOOD
    assert bench.keys() == (0, [])
    assert bench.out(A, PrOutAction.REGISTER, 0, KEY_A) == GOOD
    # Registered: the reservation key must be the registered one.
    assert bench.out(A, PrOutAction.REGISTER, 0, KEY_B) == CONFLICT
    assert bench.out(A, PrOutAction.REGISTER, KEY_C, KEY_B) == CONFLICT
    assert bench.out(A, PrOutAction.REGISTER, KEY_A, KEY_B) == GOOD  # change of key
    assert bench.keys() == (2, [KEY_B])
    assert bench.out(A, PrOutAction.REGISTER, KEY_B, 0) == GOOD  # unregister
    assert bench.keys() == (3, [])


def test_register_and_ignore_existing_key_ignores_the_reservation_key() -> None:
    bench = Bench()
    assert bench.out(A, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, KEY_C, KEY_A) == GOOD
    assert bench.out(A, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, KEY_C, KEY_B) == GOOD
    assert bench.keys() == (2, [KEY_B])
    assert bench.out(A, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, 12345, 0) == GOOD
    assert bench.keys() == (3, [])


def test_same_key_from_two_nexuses_is_two_registrations() -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    bench.register(B, KEY_A)
    assert bench.keys()[1] == [KEY_A, KEY_A]


def test_all_tg_pt_registration_covers_every_target_port() -> None:
    bench = Bench()
    bench.register(A, KEY_A, all_tg_pt=True)
    through_other_port = node(1, OTHER_TARGET_PORT)
    assert bench.pr.is_registered(through_other_port)
    assert not bench.pr.is_registered(node(2, OTHER_TARGET_PORT))
    assert bench.reserve(through_other_port, KEY_A, PrType.EXCLUSIVE_ACCESS) == GOOD
    assert bench.pr.is_holder(A)
    # Without ALL_TG_PT the registration is only the one I_T nexus.
    bench.register(B, KEY_B)
    assert not bench.pr.is_registered(node(2, OTHER_TARGET_PORT))


@pytest.mark.parametrize(
    "action", [PrOutAction.REGISTER, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY]
)
def test_spec_i_pt_is_not_supported(action: PrOutAction) -> None:
    tid = iscsi_transport_id(B.initiator_port)
    data = prout_params(0, KEY_A, spec_i_pt=True) + struct.pack(">I", len(tid)) + tid
    outcome = Bench().out(A, action, data=data)
    assert_check(outcome, Asc.INVALID_FIELD_IN_PARAMETER_LIST)
    assert isinstance(outcome, CheckCondition)
    assert isinstance(outcome.field_pointer, FieldPointer)
    assert (outcome.field_pointer.byte, outcome.field_pointer.bit) == (20, 3)


# ---- parameter list and CDB errors -----------------------------------------------------------
@pytest.mark.parametrize(
    "action", [a for a in PrOutAction if a != PrOutAction.REPLACE_LOST_RESERVATION]
)
@pytest.mark.parametrize("length", [0, 8, 23, 25, 32])
def test_parameter_list_length_errors(action: PrOutAction, length: int) -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    data = prout_params(KEY_A, KEY_B).ljust(max(length, 24), b"\x00")[:length]
    outcome = bench.out(A, action, data=data, length=length)
    if action == PrOutAction.REGISTER_AND_MOVE and length > 24:
        # Longer lists are legal for REGISTER AND MOVE; this one has no TransportID.
        assert outcome != GOOD
        return
    assert_check(outcome, Asc.PARAMETER_LIST_LENGTH_ERROR)


def test_data_shorter_than_declared_parameter_list_is_a_length_error() -> None:
    outcome = Bench().out(A, PrOutAction.REGISTER, data=prout_params(0, KEY_A)[:20], length=24)
    assert_check(outcome, Asc.PARAMETER_LIST_LENGTH_ERROR)


@pytest.mark.parametrize("action", [8, 9, 0x10, 0x1F])
def test_undefined_prout_service_actions(action: int) -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    outcome = bench.execute(A, prout_cdb(action), prout_params(KEY_A))
    assert_check(outcome, Asc.INVALID_FIELD_IN_CDB)  # type: ignore[arg-type]


# ---- RESERVE / RELEASE -------------------------------------------------------------------
@pytest.mark.parametrize("pr_type", ALL_TYPES)
def test_reserve_and_release_each_type(pr_type: PrType) -> None:
    bench = Bench()
    assert bench.reserve(A, KEY_A, pr_type) == CONFLICT  # not registered
    bench.register(A, KEY_A)
    bench.register(B, KEY_B)
    assert bench.reserve(A, KEY_B, pr_type) == CONFLICT  # wrong key
    assert bench.reserve(A, KEY_A, pr_type) == GOOD
    assert bench.reserve(A, KEY_A, pr_type) == GOOD  # same again: no change
    expected_key = 0 if pr_type in ALL_REGISTRANTS else KEY_A
    assert bench.reservation() == (expected_key, pr_type)
    # Another registrant: a holder too for all-registrants types, else a conflict.
    assert bench.reserve(B, KEY_B, pr_type) == (GOOD if pr_type in ALL_REGISTRANTS else CONFLICT)
    other_type = (
        PrType.EXCLUSIVE_ACCESS if pr_type != PrType.EXCLUSIVE_ACCESS else PrType.WRITE_EXCLUSIVE
    )
    assert bench.reserve(A, KEY_A, other_type) == CONFLICT
    for nexus in (A, B):  # drop what is queued so far (power-on)
        while bench.ua.consume(nexus):
            pass
    assert bench.out(A, PrOutAction.RELEASE, KEY_A, pr_type=pr_type) == GOOD
    assert bench.reservation() is None
    released_ua = pr_type in REGISTRANTS_ONLY or pr_type in ALL_REGISTRANTS
    assert bench.uas(B) == ([Asc.RESERVATIONS_RELEASED] if released_ua else [])
    assert bench.uas(A) == []


@pytest.mark.parametrize(
    ("scope", "pr_type", "byte"), [(1, 1, 2), (0, 0, 2), (0, 2, 2), (0, 9, 2), (0, 0xF, 2)]
)
def test_reserve_with_invalid_scope_or_type(scope: int, pr_type: int, byte: int) -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    outcome = bench.out(A, PrOutAction.RESERVE, KEY_A, scope=scope, pr_type=pr_type)
    assert_check(outcome, Asc.INVALID_FIELD_IN_CDB)
    assert isinstance(outcome, CheckCondition)
    assert isinstance(outcome.field_pointer, FieldPointer)
    assert outcome.field_pointer.byte == byte


def test_release_by_non_holder_is_a_no_op_and_bad_type_by_holder_is_invalid_release() -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    bench.register(B, KEY_B)
    assert bench.out(B, PrOutAction.RELEASE, KEY_B, pr_type=PrType.WRITE_EXCLUSIVE) == GOOD
    bench.reserve(A, KEY_A, PrType.WRITE_EXCLUSIVE)
    assert bench.out(B, PrOutAction.RELEASE, KEY_B, pr_type=PrType.WRITE_EXCLUSIVE) == GOOD
    assert bench.reservation() == (KEY_A, PrType.WRITE_EXCLUSIVE)
    assert bench.out(B, PrOutAction.RELEASE, KEY_A, pr_type=PrType.WRITE_EXCLUSIVE) == CONFLICT
    assert bench.out(C, PrOutAction.RELEASE, 0, pr_type=PrType.WRITE_EXCLUSIVE) == CONFLICT
    outcome = bench.out(A, PrOutAction.RELEASE, KEY_A, pr_type=PrType.EXCLUSIVE_ACCESS)
    assert_check(outcome, Asc.INVALID_RELEASE_OF_PERSISTENT_RESERVATION)
    assert bench.reservation() == (KEY_A, PrType.WRITE_EXCLUSIVE)


@pytest.mark.parametrize("pr_type", ALL_TYPES)
def test_holder_unregistering(pr_type: PrType) -> None:
    """libiscsi ProutReserve.Ownership*: the reservation goes with its single holder's
    registration, and lives on while any registrant of an all-registrants type remains."""
    bench = Bench()
    bench.register(A, KEY_A)
    bench.register(B, KEY_B)
    bench.reserve(A, KEY_A, pr_type)
    assert bench.out(A, PrOutAction.REGISTER, KEY_A, 0) == GOOD
    if pr_type in ALL_REGISTRANTS:
        assert bench.reservation() == (0, pr_type)
        assert bench.out(B, PrOutAction.RELEASE, KEY_B, pr_type=pr_type) == GOOD
        assert bench.reservation() is None
    else:
        assert bench.reservation() is None
        expected = [Asc.RESERVATIONS_RELEASED] if pr_type in REGISTRANTS_ONLY else []
        assert [ua for ua in bench.uas(B) if ua == Asc.RESERVATIONS_RELEASED] == expected


def test_last_all_registrants_registrant_leaving_ends_the_reservation() -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    bench.register(B, KEY_B)
    bench.reserve(A, KEY_A, PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)
    bench.out(A, PrOutAction.REGISTER, KEY_A, 0)
    assert bench.reservation() is not None
    bench.out(B, PrOutAction.REGISTER, KEY_B, 0)
    assert bench.reservation() is None


# ---- CLEAR --------------------------------------------------------------------------------
def test_clear_removes_everything_and_tells_the_others() -> None:
    bench = Bench()
    for nexus, key in ((A, KEY_A), (B, KEY_B), (C, KEY_C)):
        bench.register(nexus, key)
    bench.reserve(B, KEY_B, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    assert bench.out(C, PrOutAction.CLEAR, KEY_A) == CONFLICT  # wrong key
    assert bench.out(node(9), PrOutAction.CLEAR, 0) == CONFLICT  # not registered
    assert bench.out(C, PrOutAction.CLEAR, KEY_C) == GOOD
    assert bench.keys() == (4, [])
    assert bench.reservation() is None
    assert Asc.RESERVATIONS_PREEMPTED in bench.uas(A)
    assert Asc.RESERVATIONS_PREEMPTED in bench.uas(B)
    assert Asc.RESERVATIONS_PREEMPTED not in bench.uas(C)


# ---- PREEMPT / PREEMPT AND ABORT ---------------------------------------------------------
def _cluster(pr_type: PrType = PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY) -> Bench:
    """A holds ``pr_type``; B and C registered (a Windows failover cluster)."""
    bench = Bench()
    for nexus, key in ((A, KEY_A), (B, KEY_B), (C, KEY_C)):
        bench.register(nexus, key)
    assert bench.reserve(A, KEY_A, pr_type) == GOOD
    return bench


def test_preempt_the_holder_takes_over_the_reservation() -> None:
    bench = _cluster()
    generation = bench.keys()[0]
    wero = PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY
    assert bench.out(B, PrOutAction.PREEMPT, KEY_B, KEY_A, pr_type=wero) == GOOD
    assert bench.reservation() == (KEY_B, wero)
    assert bench.keys() == (generation + 1, [KEY_B, KEY_C])
    assert Asc.REGISTRATIONS_PREEMPTED in bench.uas(A)
    # Same type and scope: nobody hears RESERVATIONS RELEASED.
    assert Asc.RESERVATIONS_RELEASED not in bench.uas(C)
    assert bench.aborted == []


def test_preempt_with_a_new_type_tells_the_remaining_registrants() -> None:
    bench = _cluster()
    assert bench.out(B, PrOutAction.PREEMPT, KEY_B, KEY_A, pr_type=PrType.EXCLUSIVE_ACCESS) == GOOD
    assert bench.reservation() == (KEY_B, PrType.EXCLUSIVE_ACCESS)
    assert Asc.RESERVATIONS_RELEASED in bench.uas(C)
    assert Asc.RESERVATIONS_RELEASED not in bench.uas(B)


def test_preempt_a_non_holder_removes_only_its_registration() -> None:
    bench = _cluster()
    assert bench.out(B, PrOutAction.PREEMPT, KEY_B, KEY_C, pr_type=1) == GOOD
    assert bench.reservation() == (KEY_A, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    assert bench.keys()[1] == [KEY_A, KEY_B]
    assert Asc.REGISTRATIONS_PREEMPTED in bench.uas(C)
    assert Asc.REGISTRATIONS_PREEMPTED not in bench.uas(A)


def test_preempt_errors() -> None:
    bench = _cluster()
    assert bench.out(B, PrOutAction.PREEMPT, KEY_A, KEY_A, pr_type=5) == CONFLICT  # B's key is B's
    assert bench.out(node(9), PrOutAction.PREEMPT, 0, KEY_A, pr_type=5) == CONFLICT
    assert bench.out(B, PrOutAction.PREEMPT, KEY_B, 0x1234, pr_type=5) == CONFLICT  # no such key
    outcome = bench.out(B, PrOutAction.PREEMPT, KEY_B, 0, pr_type=5)
    assert_check(outcome, Asc.INVALID_FIELD_IN_PARAMETER_LIST)
    assert_check(
        bench.out(B, PrOutAction.PREEMPT, KEY_B, KEY_A, pr_type=2), Asc.INVALID_FIELD_IN_CDB
    )
    assert bench.reservation() == (KEY_A, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)


def test_preempt_without_reservation_removes_registrations() -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    bench.register(B, KEY_B)
    bench.register(C, KEY_B)
    # Scope and type are not looked at when there is no reservation.
    assert bench.out(A, PrOutAction.PREEMPT, KEY_A, KEY_B, scope=3, pr_type=0) == GOOD
    assert bench.keys()[1] == [KEY_A]
    assert bench.reservation() is None
    assert Asc.REGISTRATIONS_PREEMPTED in bench.uas(B)
    assert Asc.REGISTRATIONS_PREEMPTED in bench.uas(C)


def test_holder_preempting_itself_changes_the_type_and_keeps_its_registration() -> None:
    bench = _cluster()
    bench.register(node(4), KEY_A)  # another nexus of the same node, same key
    assert bench.out(A, PrOutAction.PREEMPT, KEY_A, KEY_A, pr_type=PrType.EXCLUSIVE_ACCESS) == GOOD
    assert bench.reservation() == (KEY_A, PrType.EXCLUSIVE_ACCESS)
    assert bench.pr.is_registered(A) and not bench.pr.is_registered(node(4))


@pytest.mark.parametrize("pr_type", ALL_REGISTRANTS)
def test_preempt_all_registrants_with_zero_key(pr_type: PrType) -> None:
    bench = _cluster(pr_type)
    assert bench.out(C, PrOutAction.PREEMPT, KEY_C, 0, pr_type=PrType.WRITE_EXCLUSIVE) == GOOD
    assert bench.keys()[1] == [KEY_C]
    assert bench.reservation() == (KEY_C, PrType.WRITE_EXCLUSIVE)
    for loser in (A, B):
        assert Asc.REGISTRATIONS_PREEMPTED in bench.uas(loser)


@pytest.mark.parametrize("pr_type", ALL_REGISTRANTS)
def test_preempt_all_registrants_with_a_key_removes_that_registrant_only(pr_type: PrType) -> None:
    bench = _cluster(pr_type)
    assert bench.out(C, PrOutAction.PREEMPT, KEY_C, KEY_B, pr_type=pr_type) == GOOD
    assert bench.keys()[1] == [KEY_A, KEY_C]
    assert bench.reservation() == (0, pr_type)


def test_preempt_and_abort_reports_the_nexuses_to_abort() -> None:
    bench = _cluster()
    bench.register(node(4), KEY_A)
    wero = PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY
    assert bench.out(B, PrOutAction.PREEMPT_AND_ABORT, KEY_B, KEY_A, pr_type=wero) == GOOD
    assert bench.aborted == [frozenset({A, node(4)})]
    assert bench.reservation() == (KEY_B, wero)


def test_preempt_and_abort_that_fails_aborts_nothing() -> None:
    bench = _cluster()
    assert bench.out(B, PrOutAction.PREEMPT_AND_ABORT, KEY_B, 0x999, pr_type=5) == CONFLICT
    assert bench.aborted == []


# ---- REGISTER AND MOVE ------------------------------------------------------------------------
def _move(
    bench: Bench, nexus: Nexus, rk: int, sark: int, dest: str, **kwargs: int | bool
) -> Outcome:
    data = move_params(rk, sark, iscsi_transport_id(dest), **kwargs)  # type: ignore[arg-type]
    return bench.out(nexus, PrOutAction.REGISTER_AND_MOVE, data=data)


def test_register_and_move_hands_the_reservation_over() -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    bench.reserve(A, KEY_A, PrType.EXCLUSIVE_ACCESS)
    generation = bench.keys()[0]
    assert _move(bench, A, KEY_A, KEY_B, B.initiator_port) == GOOD
    assert bench.reservation() == (KEY_B, PrType.EXCLUSIVE_ACCESS)
    assert bench.pr.is_holder(B) and bench.pr.is_registered(A)
    assert bench.keys() == (generation + 1, [KEY_A, KEY_B])


def test_register_and_move_with_unreg_and_an_already_registered_destination() -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    bench.register(B, KEY_B)
    bench.reserve(A, KEY_A, PrType.WRITE_EXCLUSIVE)
    assert _move(bench, A, KEY_A, KEY_C, B.initiator_port, unreg=True) == GOOD
    assert bench.keys()[1] == [KEY_B]  # B keeps its key; A is gone
    assert bench.reservation() == (KEY_B, PrType.WRITE_EXCLUSIVE)


def test_register_and_move_errors() -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    bench.register(B, KEY_B)
    dest = C.initiator_port
    assert _move(bench, A, KEY_A, KEY_C, dest) == CONFLICT  # no reservation
    bench.reserve(A, KEY_A, PrType.EXCLUSIVE_ACCESS)
    assert _move(bench, B, KEY_B, KEY_C, dest) == CONFLICT  # not the holder
    assert _move(bench, A, KEY_B, KEY_C, dest) == CONFLICT  # wrong key
    assert _move(bench, node(9), 0, KEY_C, dest) == CONFLICT  # not registered
    assert_check(_move(bench, A, KEY_A, 0, dest), Asc.INVALID_FIELD_IN_PARAMETER_LIST)
    assert_check(_move(bench, A, KEY_A, KEY_C, dest, rtpi=7), Asc.INVALID_FIELD_IN_PARAMETER_LIST)
    assert_check(
        _move(bench, A, KEY_A, KEY_C, A.initiator_port), Asc.INVALID_FIELD_IN_PARAMETER_LIST
    )
    name_only = dest.split(",")[0]
    assert_check(_move(bench, A, KEY_A, KEY_C, name_only), Asc.INVALID_FIELD_IN_PARAMETER_LIST)
    truncated = move_params(KEY_A, KEY_C, iscsi_transport_id(dest))[:-4]
    outcome = bench.out(A, PrOutAction.REGISTER_AND_MOVE, data=truncated)
    assert_check(outcome, Asc.PARAMETER_LIST_LENGTH_ERROR)
    assert bench.reservation() == (KEY_A, PrType.EXCLUSIVE_ACCESS)


@pytest.mark.parametrize("pr_type", ALL_REGISTRANTS)
def test_all_registrants_reservations_cannot_be_moved(pr_type: PrType) -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    bench.reserve(A, KEY_A, pr_type)
    assert _move(bench, A, KEY_A, KEY_C, C.initiator_port) == CONFLICT


# ---- the conflict table -----------------------------------------------------------------------
# SPC-4 "SPC commands that are allowed in the presence of various reservations" and SBC-3's
# table for block commands, as groups of sample CDBs.
ALWAYS_CDBS = {
    "TEST UNIT READY": bytes(6),
    "INQUIRY": bytes([0x12, 0, 0, 0, 0x60, 0]),
    "REPORT LUNS": bytes([0xA0]) + bytes(5) + struct.pack(">I", 64) + bytes(2),
    "REQUEST SENSE": bytes([0x03, 0, 0, 0, 18, 0]),
    "READ CAPACITY(10)": bytes([0x25]) + bytes(9),
    "READ CAPACITY(16)": bytes([0x9E, 0x10]) + bytes(8) + struct.pack(">I", 32) + bytes(2),
    "LOG SENSE": bytes([0x4D, 0, 0, 0, 0, 0, 0, 0, 64, 0]),
    "PERSISTENT RESERVE IN": prin_cdb(0),
    "REPORT TARGET PORT GROUPS": bytes([0xA3, 0x0A]) + bytes(10),
    "PREVENT ALLOW (allow)": bytes([0x1E, 0, 0, 0, 0, 0]),
    "START STOP UNIT (start)": bytes([0x1B, 0, 0, 0, 0x01, 0]),
}
READ_CDBS = {
    "READ(10)": rw10(ScsiOp.READ_10, 1, 1),
    "READ(16)": bytes([0x88]) + bytes(9) + b"\x00\x00\x00\x01" + bytes(2),
    "VERIFY(10)": rw10(ScsiOp.VERIFY_10, 1, 1),
    "PRE-FETCH(10)": rw10(ScsiOp.PRE_FETCH_10, 1, 1),
    "MODE SENSE(6)": bytes([0x1A, 0, 0x3F, 0, 0xFF, 0]),
    "MODE SENSE(10)": bytes([0x5A, 0, 0x3F, 0, 0, 0, 0, 0, 0xFF, 0]),
    "GET LBA STATUS": bytes([0x9E, 0x12]) + bytes(8) + struct.pack(">I", 32) + bytes(2),
    "READ BUFFER": bytes([0x3C]) + bytes(9),
    "REPORT SUPPORTED OPERATION CODES": bytes([0xA3, 0x0C]) + bytes(10),
    "READ(32)": bytes([0x7F, 0, 0, 0, 0, 0, 0, 0x18, 0x00, 0x09]) + bytes(22),
}
WRITE_CDBS = {
    "WRITE(10)": rw10(ScsiOp.WRITE_10, 1, 1),
    "WRITE(16)": bytes([0x8A]) + bytes(9) + b"\x00\x00\x00\x01" + bytes(2),
    "WRITE SAME(16)": bytes([0x93]) + bytes(9) + b"\x00\x00\x00\x01" + bytes(2),
    "UNMAP": bytes([0x42]) + bytes(9),
    "SYNCHRONIZE CACHE(10)": bytes([0x35]) + bytes(9),
    "COMPARE AND WRITE": bytes([0x89]) + bytes(15),
    "MODE SELECT(6)": bytes([0x15, 0x10, 0, 0, 0, 0]),
    "FORMAT UNIT": bytes([0x04]) + bytes(5),
    "WRITE BUFFER": bytes([0x3B]) + bytes(9),
    "SEND DIAGNOSTIC": bytes([0x1D]) + bytes(5),
    "PREVENT ALLOW (prevent)": bytes([0x1E, 0, 0, 0, 1, 0]),
    "START STOP UNIT (stop)": bytes([0x1B, 0, 0, 0, 0, 0]),
    "WRITE(32)": bytes([0x7F, 0, 0, 0, 0, 0, 0, 0x18, 0x00, 0x0B]) + bytes(22),
    "unknown opcode 0xC0": bytes([0xC0]) + bytes(15),
}
GROUPS = {"always": ALWAYS_CDBS, "read": READ_CDBS, "write": WRITE_CDBS}

# Which groups get through, by reservation type and the role of the commanding nexus.
EVERYTHING = {"always", "read", "write"}
ALLOWED_GROUPS: dict[tuple[PrType, str], set[str]] = {}
for _type in ALL_TYPES:
    ALLOWED_GROUPS[_type, "holder"] = EVERYTHING
    write_exclusive = _type in (
        PrType.WRITE_EXCLUSIVE,
        PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
        PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
    )
    outsider = {"always", "read"} if write_exclusive else {"always"}
    ALLOWED_GROUPS[_type, "unregistered"] = outsider
    # A registrant of an RO/AR reservation may do anything; of WE/EA, what anyone may.
    single = _type in (PrType.WRITE_EXCLUSIVE, PrType.EXCLUSIVE_ACCESS)
    ALLOWED_GROUPS[_type, "registered"] = outsider if single else EVERYTHING

MATRIX = [
    (pr_type, role, group, name)
    for pr_type in ALL_TYPES
    for role in ("holder", "registered", "unregistered")
    for group, cdbs in GROUPS.items()
    for name in cdbs
]


@pytest.mark.parametrize(("pr_type", "role", "group", "name"), MATRIX)
def test_conflict_matrix(pr_type: PrType, role: str, group: str, name: str) -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    bench.register(B, KEY_B)
    bench.reserve(A, KEY_A, pr_type)
    nexus = {"holder": A, "registered": B, "unregistered": C}[role]
    conflict = bench.res.check(nexus, GROUPS[group][name])
    assert conflict == (group not in ALLOWED_GROUPS[pr_type, role])


@pytest.mark.parametrize(("group", "name"), [(g, n) for g, cdbs in GROUPS.items() for n in cdbs])
def test_nothing_conflicts_without_a_reservation(group: str, name: str) -> None:
    bench = Bench()
    bench.register(A, KEY_A)
    assert not bench.res.check(C, GROUPS[group][name])
    assert not bench.res.check(A, GROUPS[group][name])


def test_command_access_classes() -> None:
    assert command_access(READ_CDBS["READ(10)"]) is Access.READ
    assert command_access(WRITE_CDBS["WRITE(10)"]) is Access.WRITE
    assert command_access(ALWAYS_CDBS["INQUIRY"]) is Access.ALLOWED


# ---- through the logical unit, as libiscsi drives it -------------------------------------------
def make_pr_unit(store: MemoryPrStore | None = None) -> tuple[LogicalUnit, UnitAttentionQueues]:
    meta = VDiskMeta("vd1", 1 << 20)
    ua = UnitAttentionQueues()
    reservations = Reservations.with_store(store or MemoryPrStore(), ua)
    return LogicalUnit(MemoryStore(meta), meta, reservations=reservations, unit_attentions=ua), ua


def clear_ua(unit: LogicalUnit, nexus: Nexus) -> None:
    """libiscsi's testunitready_clear_ua: TUR until no unit attention is left."""
    for _ in range(40):
        if unit.execute(bytes(6), b"", nexus).status == ScsiStatus.GOOD:
            return
    raise AssertionError("unit attentions never cleared")


def lu_out(
    unit: LogicalUnit, nexus: Nexus, action: int, rk: int, sark: int, pr_type: int = 0
) -> ScsiStatus:
    return unit.execute(prout_cdb(action, pr_type=pr_type), prout_params(rk, sark), nexus).status


def lu_reserved_as(unit: LogicalUnit, nexus: Nexus) -> tuple[int, int] | None:
    result = unit.execute(prin_cdb(PrInAction.READ_RESERVATION), b"", nexus)
    assert result.status == ScsiStatus.GOOD
    data = bytes(result.data)
    if struct.unpack_from(">I", data, 4)[0] == 0:
        return None
    return struct.unpack_from(">Q", data, 8)[0], data[21] & 0x0F


@pytest.mark.parametrize("pr_type", ALL_TYPES)
def test_libiscsi_prout_reserve_ownership(pr_type: PrType) -> None:
    """ProutReserve.Ownership{EA,WE,EARO,WERO,EAAR,WEAR}: tgtd fails four of these."""
    unit, _ua = make_pr_unit()
    clear_ua(unit, A)
    clear_ua(unit, B)
    assert (
        lu_out(unit, A, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, 0, KEY_A) == ScsiStatus.GOOD
    )
    assert (
        lu_out(unit, B, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, 0, KEY_B) == ScsiStatus.GOOD
    )
    assert lu_out(unit, A, PrOutAction.RESERVE, KEY_A, 0, pr_type) == ScsiStatus.GOOD
    shared = pr_type in ALL_REGISTRANTS
    assert lu_reserved_as(unit, A) == (0 if shared else KEY_A, pr_type)
    assert lu_out(unit, A, PrOutAction.REGISTER, KEY_A, 0) == ScsiStatus.GOOD  # unregister
    if shared:
        assert lu_reserved_as(unit, A) == (0, pr_type)
        assert lu_out(unit, B, PrOutAction.RELEASE, KEY_B, 0, pr_type) == ScsiStatus.GOOD
    else:
        assert lu_reserved_as(unit, A) is None
        clear_ua(unit, B)
    assert lu_out(unit, B, PrOutAction.REGISTER, KEY_B, 0) == ScsiStatus.GOOD


# (registered can read, registered can write, unregistered can read, unregistered can write)
ACCESS = {
    PrType.EXCLUSIVE_ACCESS: (False, False, False, False),
    PrType.WRITE_EXCLUSIVE: (True, False, True, False),
    PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: (True, True, False, False),
    PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY: (True, True, True, False),
    PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS: (True, True, False, False),
    PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS: (True, True, True, False),
}


@pytest.mark.parametrize("pr_type", ALL_TYPES)
def test_libiscsi_prout_reserve_access(pr_type: PrType) -> None:
    """ProutReserve.Access*: READ(10)/WRITE(10) of block 1 from the holder and from a second
    initiator, registered and then unregistered."""
    unit, _ua = make_pr_unit()
    clear_ua(unit, A)
    clear_ua(unit, B)
    lu_out(unit, A, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, 0, KEY_A)
    lu_out(unit, B, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, 0, KEY_B)
    assert lu_out(unit, A, PrOutAction.RESERVE, KEY_A, 0, pr_type) == ScsiStatus.GOOD
    block = bytes(range(256)) * 2
    read, write = rw10(ScsiOp.READ_10, 1, 1), rw10(ScsiOp.WRITE_10, 1, 1)

    def works(nexus: Nexus, cdb: bytes, data: bytes = b"") -> bool:
        status = unit.execute(cdb, data, nexus).status
        assert status in (ScsiStatus.GOOD, ScsiStatus.RESERVATION_CONFLICT)
        return status == ScsiStatus.GOOD

    assert works(A, read) and works(A, write, block)
    reg_read, reg_write, unreg_read, unreg_write = ACCESS[pr_type]
    assert works(B, read) == reg_read
    assert works(B, write, block) == reg_write
    assert lu_out(unit, B, PrOutAction.REGISTER, KEY_B, 0) == ScsiStatus.GOOD
    assert works(B, read) == unreg_read
    assert works(B, write, block) == unreg_write
    assert lu_out(unit, A, PrOutAction.RELEASE, KEY_A, 0, pr_type) == ScsiStatus.GOOD
    assert lu_out(unit, A, PrOutAction.REGISTER, KEY_A, 0) == ScsiStatus.GOOD


def test_preempted_node_hears_it_as_a_unit_attention_through_the_unit() -> None:
    unit, _ua = make_pr_unit()
    for nexus, key in ((A, KEY_A), (B, KEY_B)):
        clear_ua(unit, nexus)
        lu_out(unit, nexus, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, 0, key)
    wero = PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY
    lu_out(unit, A, PrOutAction.RESERVE, KEY_A, 0, wero)
    assert lu_out(unit, B, PrOutAction.PREEMPT, KEY_B, KEY_A, wero) == ScsiStatus.GOOD
    sense = sense_of(unit.execute(rw10(ScsiOp.READ_10, 0, 1), b"", A))
    assert sense.key == SenseKey.UNIT_ATTENTION and sense.code is Asc.REGISTRATIONS_PREEMPTED
    # Then the fenced node's writes conflict: it is no longer registered.
    result = unit.execute(rw10(ScsiOp.WRITE_10, 0, 1), bytes(512), A)
    assert result.status == ScsiStatus.RESERVATION_CONFLICT


# ---- persistence ------------------------------------------------------------------------------
def test_state_survives_a_stargate_restart(tmp_path: Path) -> None:
    """Registrations and the reservation live in DIR/<id>.pr.json, whatever APTPL says."""
    first = Reservations.for_vdisk(tmp_path, "vd1")
    bench = Bench()
    bench.res = first
    bench.register(A, KEY_A)
    bench.register(B, KEY_B, all_tg_pt=True)
    bench.reserve(A, KEY_A, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    bench.out(
        B, PrOutAction.PREEMPT, KEY_B, KEY_A, pr_type=PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY
    )
    before = bench.inn(C, PrInAction.READ_FULL_STATUS)

    path = tmp_path / "vd1.pr.json"
    document = json.loads(path.read_text())
    assert document["version"] == 1
    assert [reg["key"] for reg in document["registrations"]] == [f"{KEY_B:#018x}"]
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file was renamed over"

    # Another stargate (or this one restarted) opens the same vDisk.
    second = Reservations.for_vdisk(tmp_path, "vd1")
    after = Bench()
    after.res = second
    assert after.inn(C, PrInAction.READ_FULL_STATUS) == before
    assert second.persistent.is_holder(node(2, OTHER_TARGET_PORT))  # ALL_TG_PT kept
    assert second.check(C, rw10(ScsiOp.READ_10, 0, 1))  # EA-RO still fences C


def test_reload_picks_up_another_stargates_changes(tmp_path: Path) -> None:
    here = Reservations.for_vdisk(tmp_path, "vd1")
    there = Reservations.for_vdisk(tmp_path, "vd1")
    bench = Bench()
    bench.res = there
    bench.register(A, KEY_A)
    assert not here.persistent.is_registered(A)
    here.reload()
    assert here.persistent.is_registered(A)


def test_every_change_is_saved_and_no_op_commands_are_not() -> None:
    store = MemoryPrStore()
    bench = Bench(store=store)
    bench.register(A, KEY_A)
    assert store.saves == 1
    bench.out(B, PrOutAction.REGISTER, 0, 0)  # no change
    bench.out(B, PrOutAction.RELEASE, 0, pr_type=1)  # conflict: not registered
    bench.inn(A, PrInAction.READ_KEYS)
    assert store.saves == 1
    bench.reserve(A, KEY_A, PrType.EXCLUSIVE_ACCESS)
    bench.reserve(A, KEY_A, PrType.EXCLUSIVE_ACCESS)  # already held: no change
    assert store.saves == 2
    assert PrState.from_json(store.saved or "").reservation is not None


class FailingStore(MemoryPrStore):
    def save(self, state: PrState) -> None:
        raise OSError(28, "No space left on device")


def test_a_failed_save_changes_nothing_and_says_so() -> None:
    bench = Bench(store=FailingStore())
    outcome = bench.out(A, PrOutAction.REGISTER, 0, KEY_A)
    assert_check(outcome, Asc.INSUFFICIENT_REGISTRATION_RESOURCES)
    assert bench.keys() == (0, [])


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"version": 2, "generation": 0, "registrations": []}',
        '{"version": 1, "generation": 0}',
        '{"version": 1, "generation": 0, "registrations": [{"initiator_port": "x"}]}',
        '{"version": 1, "generation": 0, "registrations": [], "reservation": {"type": 2}}',
    ],
)
def test_a_damaged_file_is_an_error_not_an_empty_state(tmp_path: Path, text: str) -> None:
    path = tmp_path / "vd1.pr.json"
    path.write_text(text)
    with pytest.raises(PrStoreError, match=r"vd1\.pr\.json"):
        PrFile(path).load()


def test_missing_file_is_a_fresh_state(tmp_path: Path) -> None:
    assert PrFile.for_vdisk(tmp_path, "vd9").load() == PrState()


# ---- libiscsi's reservation suites against a real stargate -------------------------------------
LIBISCSI_RESERVATION_SUITES = ",".join(
    f"ALL.{suite}"
    for suite in (
        "PrinReadKeys",
        "PrinServiceactionRange",
        "PrinReportCapabilities",
        "ProutRegister",
        "ProutReserve",
        "ProutClear",
        "ProutPreempt",
        "Reserve6",
    )
)


@pytest.mark.slow  # ~14 s: libiscsi waits 3 s to reconnect in each Reserve6 reset test
async def test_libiscsi_reservation_suites_pass(
    require_tool: Callable[..., str], tmp_path: Path
) -> None:
    """Every PR and RESERVE(6) test of iscsi-test-cu -- tgtd fails six of them -- through the
    transport, against a unit whose reservations persist in ``tmp_path``."""
    tool = require_tool("iscsi-test-cu", why="libiscsi conformance tests")
    meta = VDiskMeta("vd1", 64 << 20)
    ua = UnitAttentionQueues()
    reservations = Reservations.for_vdisk(tmp_path, "vd1", ua)
    unit = LogicalUnit(MemoryStore(meta), meta, reservations=reservations, unit_attentions=ua)
    registry = TargetRegistry(PortalGroup())
    registry.add(VDiskTarget("vd1", unit))
    server = StargateServer(registry, ServerConfig(host="127.0.0.1", port=0))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        url = f"iscsi://127.0.0.1:{port}/{target_name_for('vd1')}/0"
        with trio.fail_after(120):
            result = await trio.run_process(
                [tool, "--dataloss", "-t", LIBISCSI_RESERVATION_SUITES, url],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        await server.shutdown(grace=1)
        nursery.cancel_scope.cancel()
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    assert "[SKIPPED]" not in output, output[-4000:]
    assert result.returncode == 0, output[-4000:]
    assert re.search(r"tests\s+27\s+27\s+27\s+0", output), output[-4000:]
    assert json.loads((tmp_path / "vd1.pr.json").read_text())["generation"] > 0


# ---- random command sequences keep the state consistent -------------------------------------
class PersistentReservationMachine(RuleBasedStateMachine):
    """Any sequence of PERSISTENT RESERVE OUT commands from a few nexuses keeps the state
    coherent, saved, and its generation honest."""

    nexuses = st.sampled_from([A, B, C, node(1, OTHER_TARGET_PORT)])
    keys = st.sampled_from([0, KEY_A, KEY_B, KEY_C])

    def __init__(self) -> None:
        super().__init__()
        self.bench = Bench()

    def _snapshot(self) -> PrState:
        state = self.bench.pr.state
        return PrState(state.generation, state.aptpl, list(state.registrations), state.reservation)

    def _check_transition(self, before: PrState, action: PrOutAction, outcome: Outcome) -> None:
        after = self.bench.pr.state
        delta = (after.generation - before.generation) & 0xFFFFFFFF
        if outcome != GOOD:
            assert after == before, "a failed command changes nothing"
            return
        assert delta in (0, 1)
        if after.registrations != before.registrations:
            assert delta == 1, "every registration change bumps PRGENERATION"
        if action in (PrOutAction.RESERVE, PrOutAction.RELEASE):
            assert delta == 0, "RESERVE and RELEASE leave PRGENERATION alone"
            assert after.registrations == before.registrations

    def _own_key(self, nexus: Nexus) -> int:
        registration = self.bench.pr.registration_of(nexus)
        return registration.key if registration else 0

    def _run(self, nexus: Nexus, action: PrOutAction, rk: int, sark: int, **kw: Any) -> Outcome:
        before = self._snapshot()
        outcome = self.bench.out(nexus, action, rk, sark, **kw)
        self._check_transition(before, action, outcome)
        return outcome

    @rule(
        nexus=nexuses,
        action=st.sampled_from(list(PrOutAction)),
        rk=keys,
        sark=keys,
        pr_type=st.integers(0, 9),
        all_tg_pt=st.booleans(),
        aptpl=st.booleans(),
    )
    def any_prout(
        self,
        nexus: Nexus,
        action: PrOutAction,
        rk: int,
        sark: int,
        pr_type: int,
        all_tg_pt: bool,
        aptpl: bool,
    ) -> None:
        """Whatever an initiator might send, keys right or wrong."""
        self._run(nexus, action, rk, sark, pr_type=pr_type, all_tg_pt=all_tg_pt, aptpl=aptpl)

    @rule(nexus=nexuses, key=keys.filter(bool), all_tg_pt=st.booleans())
    def register(self, nexus: Nexus, key: int, all_tg_pt: bool) -> None:
        action = PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY
        assert self._run(nexus, action, 0, key, all_tg_pt=all_tg_pt) == GOOD
        assert self._own_key(nexus) == key

    @rule(nexus=nexuses)
    def unregister(self, nexus: Nexus) -> None:
        outcome = self._run(nexus, PrOutAction.REGISTER, self._own_key(nexus), 0)
        assert outcome == GOOD and not self.bench.pr.is_registered(nexus)

    @rule(nexus=nexuses, pr_type=st.sampled_from(ALL_TYPES))
    def reserve(self, nexus: Nexus, pr_type: PrType) -> None:
        had = self.bench.pr.reservation
        outcome = self._run(nexus, PrOutAction.RESERVE, self._own_key(nexus), 0, pr_type=pr_type)
        if outcome == GOOD:
            assert self.bench.pr.is_holder(nexus)
        elif self.bench.pr.is_registered(nexus):
            assert had is not None, "a registrant may reserve an unreserved unit"

    @rule(nexus=nexuses, pr_type=st.sampled_from(ALL_TYPES))
    def release(self, nexus: Nexus, pr_type: PrType) -> None:
        current = self.bench.pr.reservation
        holder = self.bench.pr.is_holder(nexus)
        outcome = self._run(nexus, PrOutAction.RELEASE, self._own_key(nexus), 0, pr_type=pr_type)
        if outcome == GOOD and holder and current is not None and current.type == pr_type:
            assert self.bench.pr.reservation is None

    @rule(nexus=nexuses, victim=keys, pr_type=st.sampled_from(ALL_TYPES), abort=st.booleans())
    def preempt(self, nexus: Nexus, victim: int, pr_type: PrType, abort: bool) -> None:
        action = PrOutAction.PREEMPT_AND_ABORT if abort else PrOutAction.PREEMPT
        outcome = self._run(nexus, action, self._own_key(nexus), victim, pr_type=pr_type)
        if outcome == GOOD:
            assert self.bench.pr.is_registered(nexus), "the preempter keeps its registration"
            others = [r for r in self.bench.pr.registrations if not r.covers(nexus)]
            if victim:
                assert all(r.key != victim for r in others), "every holder of the key is gone"

    @rule(nexus=nexuses)
    def clear(self, nexus: Nexus) -> None:
        if self._run(nexus, PrOutAction.CLEAR, self._own_key(nexus), 0) == GOOD:
            assert self.bench.pr.registrations == [] and self.bench.pr.reservation is None

    @rule(nexus=nexuses, sark=keys, dest=nexuses, unreg=st.booleans())
    def register_and_move(self, nexus: Nexus, sark: int, dest: Nexus, unreg: bool) -> None:
        before = self._snapshot()
        rk = self._own_key(nexus)
        outcome = _move(self.bench, nexus, rk, sark, dest.initiator_port, unreg=unreg)
        self._check_transition(before, PrOutAction.REGISTER_AND_MOVE, outcome)
        if outcome == GOOD:
            assert self.bench.pr.is_holder(Nexus(dest.initiator_port, nexus.target_port))

    @invariant()
    def reservation_has_a_registered_holder(self) -> None:
        pr = self.bench.pr
        reservation = pr.reservation
        if reservation is None:
            return
        assert pr.registrations, "no reservation without registrations"
        if reservation.holder is not None:
            assert pr.registration_of(reservation.holder) is not None
            assert reservation.type not in ALL_REGISTRANTS

    @invariant()
    def one_registration_per_nexus(self) -> None:
        registrations = self.bench.pr.registrations
        assert len({(r.initiator_port, r.target_port) for r in registrations}) == len(registrations)
        assert all(r.key != 0 for r in registrations)

    @invariant()
    def saved_state_is_the_live_state(self) -> None:
        saved = self.bench.store.saved
        live = self.bench.pr.state
        assert (PrState.from_json(saved) if saved else PrState()) == live

    @invariant()
    def holders_never_conflict(self) -> None:
        for nexus in (A, B, C):
            if self.bench.pr.is_holder(nexus):
                assert not self.bench.res.check(nexus, rw10(ScsiOp.WRITE_10, 0, 1))


PersistentReservationMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=30, deadline=None
)
test_persistent_reservation_state_machine = PersistentReservationMachine.TestCase


def test_all_tg_pt_registration_replaces_the_ports_other_registrations() -> None:
    """One key per I_T nexus: registering an initiator port through every target port
    supersedes what it registered through another one."""
    bench = Bench()
    through_other_port = node(1, OTHER_TARGET_PORT)
    bench.register(through_other_port, KEY_B)
    bench.register(A, KEY_A, all_tg_pt=True)
    assert bench.keys()[1] == [KEY_A]
    registration = bench.pr.registration_of(through_other_port)
    assert registration is not None and registration.key == KEY_A


def test_pr_commands_never_work_from_a_stale_state(tmp_path: Path) -> None:
    """The vDisk moved away and back: the old stargate's next PR command sees what the other
    one did instead of writing its stale state over it."""
    old, new = Bench(), Bench()
    old.res = Reservations.for_vdisk(tmp_path, "vd1")
    new.res = Reservations.for_vdisk(tmp_path, "vd1")
    old.register(A, KEY_A)
    new.register(B, KEY_B)  # new loaded before A registered: it refreshes first
    assert new.keys()[1] == [KEY_A, KEY_B]
    assert old.keys()[1] == [KEY_A, KEY_B]
    old.register(C, KEY_C)
    assert json.loads((tmp_path / "vd1.pr.json").read_text())["generation"] == 3


def test_pr_file_knows_when_someone_else_saved(tmp_path: Path) -> None:
    mine, theirs = PrFile(tmp_path / "x.pr.json"), PrFile(tmp_path / "x.pr.json")
    assert not mine.changed_since_load()  # neither exists nor was loaded
    mine.save(PrState(generation=1))
    assert not mine.changed_since_load()
    assert theirs.changed_since_load()
    assert theirs.load().generation == 1 and not theirs.changed_since_load()
    theirs.save(PrState(generation=2))
    assert mine.changed_since_load()
    (tmp_path / "x.pr.json").unlink()
    assert theirs.changed_since_load()
