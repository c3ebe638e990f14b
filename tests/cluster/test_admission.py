"""Admission at a cluster stargate: the parking queue, the fenced logical unit and store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cluster.admission import (
    Claim,
    ClaimState,
    FencedLogicalUnit,
    FencedStore,
    OwnershipQueue,
    StaleOwnerError,
)
from iscsicore.scsi.opcodes import ScsiStatus
from stargate.queue import Admission, Tenant
from stargate.scsi.command import ScsiResult
from stargate.stores.memory import MemoryStore
from topology.ownership import Fence, OwnershipFile
from topology.vdisk import VDiskMeta

NAME = "iqn.2010-06.com.nutanix:vmdisk-vd"


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
    queue = OwnershipQueue(
        4, {NAME: claim}, on_lost=events.lost.append, on_unclaimed=events.unclaimed.append
    )
    ran: list[str] = []
    commands = [FakeCommand(label, ran) for label in "abc"]
    assert [queue.admit(NAME, command) for command in commands] == [Admission.QUEUED] * 3
    assert events.unclaimed == [claim, claim, claim] and queue.in_flight == 0
    commands[1].cancelled = True  # aborted while parked (its connection went)
    queue.forget_cancelled()
    claim.state, claim.fence = ClaimState.OWNED, Fence(claim.file, claim.file.claim(1))
    queue.resume(claim)
    assert ran == ["a", "c"] and queue.in_flight == 2 and claim.parked == []
    assert queue.admit(NAME, FakeCommand("d", ran)) is Admission.RUN
    assert queue.admit("another-target", FakeCommand("e", ran)) is Admission.RUN


def test_queue_parks_and_reports_a_lost_claim(tmp_path: Path) -> None:
    claim = owned_claim(tmp_path)
    events = Events()
    queue = OwnershipQueue(
        4, {NAME: claim}, on_lost=events.lost.append, on_unclaimed=events.unclaimed.append
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
    queue = OwnershipQueue(
        1, {NAME: claim}, on_lost=events.lost.append, on_unclaimed=events.unclaimed.append
    )
    assert not queue.admit_now(NAME)  # IDLE: not ours yet
    claim.state, claim.fence = ClaimState.OWNED, Fence(claim.file, claim.file.claim(1))
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


class InnerUnit:
    """A logical unit stand-in; optionally breaks the fence while 'executing'."""

    def __init__(self, during: Any = None) -> None:
        self.store = object()
        self.executed = 0
        self.during = during

    def execute(self, cdb: bytes, data_out: Any, nexus: Any) -> ScsiResult:
        self.executed += 1
        if self.during is not None:
            self.during()
        return ScsiResult(ScsiStatus.GOOD)

    def nexus_lost(self, nexus: Any) -> str:
        return f"lost {nexus}"


def test_fenced_unit_runs_only_while_the_claim_holds(tmp_path: Path) -> None:
    claim = owned_claim(tmp_path)
    lost: list[Claim] = []
    inner = InnerUnit()
    unit = FencedLogicalUnit(inner, claim, lost.append)
    assert unit.execute(b"\x00" * 6, b"", None).status == ScsiStatus.GOOD
    assert unit.nexus_lost("n") == "lost n" and unit.store is inner.store
    take_over(tmp_path)
    assert unit.execute(b"\x00" * 6, b"", None).status == ScsiStatus.BUSY
    assert inner.executed == 1 and lost == [claim]


def test_a_command_during_which_the_fence_broke_is_answered_busy(tmp_path: Path) -> None:
    claim = owned_claim(tmp_path)
    lost: list[Claim] = []
    inner = InnerUnit(during=lambda: take_over(tmp_path))
    unit = FencedLogicalUnit(inner, claim, lost.append)
    assert unit.execute(b"\x2a" + bytes(9), b"", None).status == ScsiStatus.BUSY
    assert inner.executed == 1 and lost == [claim]


def test_resume_beyond_the_depth_accounts_like_admit(tmp_path: Path) -> None:
    claim = Claim("vd", NAME, OwnershipFile(tmp_path / "vd"), ClaimState.ACQUIRING)
    queue = OwnershipQueue(1, {NAME: claim}, on_lost=lambda _: None, on_unclaimed=lambda _: None)
    queue.max_waiting = 0
    ran: list[str] = []
    parked = [FakeCommand(label, ran, buffer_bytes=4096) for label in "ab"]
    for command in parked:
        assert queue.admit(NAME, command) is Admission.QUEUED
    claim.state, claim.fence = ClaimState.OWNED, Fence(claim.file, claim.file.claim(1))
    queue.resume(claim)  # a: RUN; b: FULL (no room to wait) but nobody was refused yet
    assert ran == ["a", "b"]
    assert (queue.in_flight, queue.buffered_bytes) == (2, 8192)
    queue.release(4096)
    queue.release(4096)
    assert (queue.in_flight, queue.buffered_bytes) == (0, 0)


def test_nothing_parked_outlives_its_bound(tmp_path: Path) -> None:
    claim = Claim("vd", NAME, OwnershipFile(tmp_path / "vd"))
    now = [0.0]
    queue = OwnershipQueue(
        4,
        {NAME: claim},
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
    queue.expire_parked(claim)  # the watcher, while the claim is still being acquired
    assert [entry.command for entry in claim.parked] == [commands["recent"], commands["new"]]
    assert queue.refused_stale == 1 and ran == []
    now[0] = 12.1
    claim.state, claim.fence = ClaimState.OWNED, Fence(claim.file, claim.file.claim(1))
    queue.resume(claim)
    assert ran == ["new"] and queue.refused_stale == 2 and queue.in_flight == 1


def test_a_claim_given_up_refuses_all_its_parked_commands(tmp_path: Path) -> None:
    claim = Claim("vd", NAME, OwnershipFile(tmp_path / "vd"))
    queue = OwnershipQueue(4, {NAME: claim}, on_lost=print, on_unclaimed=lambda claim: None)
    ran: list[str] = []
    for label in "ab":
        queue.admit(NAME, FakeCommand(label, ran))
    queue.refuse_parked(claim)
    assert claim.parked == [] and ran == [] and queue.refused_stale == 2
