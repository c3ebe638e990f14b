"""Admission at a cluster stargate: the parking gate of the command queue, the fenced
logical unit and store."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cluster.admission import (
    AcquireCallback,
    Claim,
    ClaimState,
    FencedLogicalUnit,
    FencedStore,
    LostCallback,
    OwnershipGate,
    StaleOwnerError,
)
from faults.model import Fault, FaultKind
from iscsicore.scsi.opcodes import ScsiStatus
from iscsicore.scsi.sense import Asc
from stargate.fault_actions import ServerActions
from stargate.queue import Admission, CommandQueue, Tenant
from stargate.scsi.command import Nexus, ScsiResult
from stargate.scsi.lu import LogicalUnit, SimpleUnitAttentions
from stargate.scsi.reserve import vdisk_reservations
from stargate.server import ServerConfig, StargateServer
from stargate.stores.base import BlockStore
from stargate.stores.memory import MemoryStore
from stargate.target import TargetRegistry, VDiskTarget
from topology.ownership import Fence, OwnershipFile, OwnershipRecord
from topology.vdisk import VDiskMeta

NAME = "iqn.2010-06.com.nutanix:vmdisk-vd"


def owned_by(claim: Claim, node_id: int) -> OwnershipRecord:
    """Give the claim's record file to ``node_id`` (set-up: unconditional)."""
    assert isinstance(claim.file, OwnershipFile)
    return claim.file.claim(node_id)


@dataclass
class FakeCommand:
    label: str
    log: list[str]
    cancelled: bool = False
    buffer_bytes: int = 0
    tenant: Tenant | None = None

    def dispatch(self) -> None:
        self.log.append(self.label)


@dataclass
class Events:
    lost: list[Claim] = field(default_factory=list)
    unclaimed: list[Claim] = field(default_factory=list)


def gated_queue(
    depth: int,
    claim: Claim,
    *,
    on_lost: LostCallback,
    on_unclaimed: AcquireCallback,
    park_limit: float = 7.0,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[CommandQueue, OwnershipGate]:
    """A queue behind the ownership gate of one claim, as a CVM's server has it."""
    gate = OwnershipGate(
        {NAME: claim},
        on_lost=on_lost,
        on_unclaimed=on_unclaimed,
        park_limit=park_limit,
        clock=clock,
    )
    return CommandQueue(depth, gate=gate), gate


def owned_claim(tmp_path: Path) -> Claim:
    file = OwnershipFile(tmp_path / "vd")
    claim = Claim("vd", NAME, file, ClaimState.OWNED)
    claim.fence = Fence(file, file.claim(1))
    return claim


def take_over(tmp_path: Path) -> None:
    OwnershipFile(tmp_path / "vd").claim(2)


def test_queue_parks_until_owned_then_runs_in_order(tmp_path: Path) -> None:
    claim = Claim("vd", NAME, OwnershipFile(tmp_path / "vd"))
    events = Events()
    queue, gate = gated_queue(
        4, claim, on_lost=events.lost.append, on_unclaimed=events.unclaimed.append
    )
    ran: list[str] = []
    commands = [FakeCommand(label, ran) for label in "abc"]
    assert [queue.admit(NAME, command) for command in commands] == [Admission.QUEUED] * 3
    assert events.unclaimed == [claim, claim, claim] and queue.in_flight == 0
    commands[1].cancelled = True  # aborted while parked (its connection went)
    queue.forget_cancelled()
    claim.state, claim.fence = ClaimState.OWNED, Fence(claim.file, owned_by(claim, 1))
    gate.resume(claim, queue)
    assert ran == ["a", "c"] and queue.in_flight == 2 and claim.parked == []
    assert queue.admit(NAME, FakeCommand("d", ran)) is Admission.RUN
    assert queue.admit("another-target", FakeCommand("e", ran)) is Admission.RUN


def test_queue_parks_and_reports_a_lost_claim(tmp_path: Path) -> None:
    claim = owned_claim(tmp_path)
    events = Events()
    queue, _ = gated_queue(
        4, claim, on_lost=events.lost.append, on_unclaimed=events.unclaimed.append
    )
    take_over(tmp_path)
    assert queue.admit(NAME, FakeCommand("x", [])) is Admission.QUEUED
    assert events.lost == [claim] and queue.in_flight == 0
    claim.state = ClaimState.RELEASING
    assert queue.admit(NAME, FakeCommand("y", [])) is Admission.QUEUED  # no new work
    assert claim.live_parked() == 2


def test_inline_admission_only_while_owned_and_fenced(tmp_path: Path) -> None:
    """`admit_now` (the plain READ/WRITE path) takes a slot only when `admit` would say
    RUN without side effects; otherwise the command goes through `admit`, which parks it."""
    claim = Claim("vd", NAME, OwnershipFile(tmp_path / "vd"))
    events = Events()
    queue, _ = gated_queue(
        1, claim, on_lost=events.lost.append, on_unclaimed=events.unclaimed.append
    )
    assert not queue.admit_now(NAME)  # IDLE: not ours yet
    claim.state, claim.fence = ClaimState.OWNED, Fence(claim.file, owned_by(claim, 1))
    assert queue.admit_now(NAME, 4096) and (queue.in_flight, queue.buffered_bytes) == (1, 4096)
    assert not queue.admit_now(NAME)  # depth 1: full
    queue.release(4096)
    assert queue.admit_now("another-target")  # not a cluster vDisk: the plain rules
    queue.release()
    take_over(tmp_path)
    assert not queue.admit_now(NAME)  # the record moved: `admit` reports the loss
    claim.state = ClaimState.RELEASING
    assert not queue.admit_now(NAME)
    assert queue.in_flight == 0 and events.lost == [] and events.unclaimed == []


def test_fenced_store_refuses_changes_once_the_record_moved(tmp_path: Path) -> None:
    claim = owned_claim(tmp_path)
    store = FencedStore(MemoryStore(VDiskMeta("vd", 1 << 20)), claim)
    store.write(0, b"\x01" * 512)
    assert (store.size, store.block_size) == (1 << 20, 512)
    take_over(tmp_path)
    with pytest.raises(StaleOwnerError):
        store.write(0, b"\x02" * 512)
    with pytest.raises(StaleOwnerError):
        store.punch_hole(0, 4096)
    with pytest.raises(StaleOwnerError):
        store.resize(2 << 20)
    assert bytes(store.read(0, 512)) == b"\x01" * 512  # reads harm nobody: allowed


NEXUS = Nexus("iqn.i,i,0x1", "iqn.t,t,0x1")


class InnerUnit:
    """A logical unit stand-in; optionally breaks the fence while 'executing'."""

    def __init__(self, during: Callable[[], None] | None = None) -> None:
        self.store = MemoryStore(VDiskMeta("vd", 1 << 20))
        self.unit_attentions = SimpleUnitAttentions()
        self.executed = 0
        self.during = during
        self.calls: list[str] = []

    def execute(
        self, cdb: bytes, data_out: bytes | bytearray | memoryview, nexus: Nexus
    ) -> ScsiResult:
        self.executed += 1
        if self.during is not None:
            self.during()
        return ScsiResult(ScsiStatus.GOOD)

    def nexus_lost(self, nexus: Nexus) -> None:
        self.calls.append(f"lost {nexus.initiator_port}")

    def logical_unit_reset(self, by: Nexus | None = None) -> None:
        self.calls.append("reset")


def test_fenced_unit_runs_only_while_the_claim_holds(tmp_path: Path) -> None:
    claim = owned_claim(tmp_path)
    lost: list[Claim] = []
    inner = InnerUnit()
    unit = FencedLogicalUnit(inner, claim, lost.append)
    assert unit.execute(b"\x00" * 6, b"", NEXUS).status == ScsiStatus.GOOD
    unit.nexus_lost(NEXUS)
    assert inner.calls == ["lost iqn.i,i,0x1"] and unit.store is inner.store
    take_over(tmp_path)
    assert unit.execute(b"\x00" * 6, b"", NEXUS).status == ScsiStatus.BUSY
    assert inner.executed == 1 and lost == [claim]


def test_a_command_during_which_the_fence_broke_is_answered_busy(tmp_path: Path) -> None:
    claim = owned_claim(tmp_path)
    lost: list[Claim] = []
    inner = InnerUnit(during=lambda: take_over(tmp_path))
    unit = FencedLogicalUnit(inner, claim, lost.append)
    assert unit.execute(b"\x2a" + bytes(9), b"", NEXUS).status == ScsiStatus.BUSY
    assert inner.executed == 1 and lost == [claim]


def test_resume_beyond_the_depth_accounts_like_admit(tmp_path: Path) -> None:
    claim = Claim("vd", NAME, OwnershipFile(tmp_path / "vd"), ClaimState.ACQUIRING)
    queue, gate = gated_queue(1, claim, on_lost=lambda _: None, on_unclaimed=lambda _: None)
    queue.max_waiting = 0
    ran: list[str] = []
    parked = [FakeCommand(label, ran, buffer_bytes=4096) for label in "ab"]
    for command in parked:
        assert queue.admit(NAME, command) is Admission.QUEUED
    claim.state, claim.fence = ClaimState.OWNED, Fence(claim.file, owned_by(claim, 1))
    gate.resume(claim, queue)  # a: RUN; b: FULL (no room to wait) but nobody was refused yet
    assert ran == ["a", "b"]
    assert (queue.in_flight, queue.buffered_bytes) == (2, 8192)
    queue.release(4096)
    queue.release(4096)
    assert (queue.in_flight, queue.buffered_bytes) == (0, 0)


def test_nothing_parked_outlives_its_bound(tmp_path: Path) -> None:
    claim = Claim("vd", NAME, OwnershipFile(tmp_path / "vd"))
    now = [0.0]
    queue, gate = gated_queue(
        4,
        claim,
        on_lost=lambda claim: None,
        on_unclaimed=lambda claim: None,
        park_limit=7.0,
        clock=lambda: now[0],
    )
    ran: list[str] = []
    commands = {}
    for label, at in (("old", 0.0), ("older-but-gone", 0.5), ("recent", 5.0), ("new", 6.5)):
        now[0] = at
        commands[label] = FakeCommand(label, ran)
        assert queue.admit(NAME, commands[label]) is Admission.QUEUED
    commands["older-but-gone"].cancelled = True
    now[0] = 7.2
    gate.expire_parked(claim)  # the watcher, while the claim is still being acquired
    assert [entry.command for entry in claim.parked] == [commands["recent"], commands["new"]]
    assert gate.refused_stale == 1 and ran == []
    now[0] = 12.1
    claim.state, claim.fence = ClaimState.OWNED, Fence(claim.file, owned_by(claim, 1))
    gate.resume(claim, queue)
    assert ran == ["new"] and gate.refused_stale == 2 and queue.in_flight == 1


def test_a_claim_given_up_refuses_all_its_parked_commands(tmp_path: Path) -> None:
    claim = Claim("vd", NAME, OwnershipFile(tmp_path / "vd"))
    queue, gate = gated_queue(4, claim, on_lost=print, on_unclaimed=lambda claim: None)
    ran: list[str] = []
    for label in "ab":
        queue.admit(NAME, FakeCommand(label, ran))
    gate.refuse_parked(claim)
    assert claim.parked == [] and ran == [] and gate.refused_stale == 2


def _fenced_target(tmp_path: Path) -> tuple[VDiskTarget, LogicalUnit, FencedStore, Claim]:
    """A vDisk as a CVM serves it: a real unit over a fenced store, behind the fence."""
    claim = owned_claim(tmp_path)
    meta = VDiskMeta("vd", 1 << 20)
    store = FencedStore(MemoryStore(meta), claim)
    reservations, unit_attentions = vdisk_reservations(None, "vd")
    real = LogicalUnit(store, meta, reservations=reservations, unit_attentions=unit_attentions)
    target = VDiskTarget("vd", FencedLogicalUnit(real, claim, lambda claim: None))
    return target, real, store, claim


def test_the_fence_wrappers_are_the_unit_and_store_the_target_sees(tmp_path: Path) -> None:
    """No proxy: the wrappers implement the store and unit surfaces the target uses, and
    each reaches the real unit's own state."""
    target, real, store, _ = _fenced_target(tmp_path)
    assert isinstance(store, BlockStore)
    unit = target.lu
    assert unit.store is store and unit.unit_attentions is real.unit_attentions
    ready = bytes(6)  # TEST UNIT READY
    first = unit.execute(ready, b"", NEXUS)  # a new nexus hears of the power-on first
    assert first.status == ScsiStatus.CHECK_CONDITION
    assert unit.execute(ready, b"", NEXUS).status == ScsiStatus.GOOD
    unit.logical_unit_reset(NEXUS)
    reset = real.unit_attentions.consume(NEXUS)
    assert reset is not None and reset == Asc.BUS_DEVICE_RESET.value
    assert unit.execute(ready, b"", NEXUS).status == ScsiStatus.GOOD
    unit.nexus_lost(NEXUS)
    lost = unit.execute(ready, b"", NEXUS)  # the nexus comes back: I_T NEXUS LOSS
    assert lost.status == ScsiStatus.CHECK_CONDITION
    assert lost.sense[12:14] == bytes(Asc.I_T_NEXUS_LOSS_OCCURRED.value)


def test_a_unit_attention_fault_reaches_a_fenced_unit(tmp_path: Path) -> None:
    """The fault action establishes the unit attention through the fence's typed surface."""
    target, real, _, _ = _fenced_target(tmp_path)
    registry = TargetRegistry()
    registry.add(target)
    server = StargateServer(registry, ServerConfig(port=0))
    assert target.lu.execute(bytes(6), b"", NEXUS).status == ScsiStatus.CHECK_CONDITION
    fault = Fault(FaultKind.UNIT_ATTENTION, vdisk="vd", asc=0x2A, ascq=0x09)
    assert ServerActions(server)(fault) == "unit attention 0x2a/0x09 on 1 vDisk(s)"
    pending = real.unit_attentions.consume(NEXUS)
    assert pending is not None and pending == (0x2A, 0x09)
