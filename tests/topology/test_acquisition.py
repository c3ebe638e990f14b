"""The acquisition step machine and the record's compare-and-swap, on real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from topology.acquisition import (
    Acquisition,
    AskOwner,
    Claimed,
    GaveUp,
    RetryLater,
    begin_sync,
    finish_sync,
)
from topology.ownership import ClaimOutcome, OwnershipFile, OwnershipRecord


def test_an_unclaimed_vdisk_is_claimed_at_once(tmp_path: Path) -> None:
    file = OwnershipFile(tmp_path / "vd")
    acquisition = Acquisition(2, now=0.0, time_limit=15.0)
    assert begin_sync(acquisition, file, 0.0) == Claimed(OwnershipRecord(2, 1))
    assert acquisition.asked == []


def test_the_owner_is_asked_then_the_epoch_bumped(tmp_path: Path) -> None:
    OwnershipFile(tmp_path / "vd").claim(1)
    file = OwnershipFile(tmp_path / "vd")
    acquisition = Acquisition(2, now=0.0, time_limit=15.0)
    assert begin_sync(acquisition, file, 0.0) == AskOwner(1, OwnershipRecord(1, 1))
    assert finish_sync(acquisition, file, 5.0) == Claimed(OwnershipRecord(2, 2))  # answered or not


def test_a_record_that_moved_meanwhile_is_never_bumped_blindly(tmp_path: Path) -> None:
    """The reported sequence: node 3 asks node 1, node 2 takes the vDisk meanwhile; node 3
    must ask node 2 before it writes epoch 3."""
    OwnershipFile(tmp_path / "vd").claim(1)
    third_file, second_file = OwnershipFile(tmp_path / "vd"), OwnershipFile(tmp_path / "vd")
    third = Acquisition(3, now=0.0, time_limit=15.0)
    assert begin_sync(third, third_file, 0.0) == AskOwner(1, OwnershipRecord(1, 1))
    second = Acquisition(2, now=1.0, time_limit=15.0)
    assert begin_sync(second, second_file, 1.0) == AskOwner(1, OwnershipRecord(1, 1))
    assert finish_sync(second, second_file, 1.1) == Claimed(OwnershipRecord(2, 2))
    # start over: ask node 2
    assert finish_sync(third, third_file, 6.0) == AskOwner(2, OwnershipRecord(2, 2))
    assert OwnershipFile(tmp_path / "vd").read() == OwnershipRecord(2, 2)
    assert finish_sync(third, third_file, 6.5) == Claimed(OwnershipRecord(3, 3))
    assert third.asked == [1, 2]


def test_a_record_that_keeps_moving_gives_up_after_bounded_rounds(tmp_path: Path) -> None:
    file = OwnershipFile(tmp_path / "vd")
    file.claim(1)
    acquisition = Acquisition(9, now=0.0, time_limit=100.0, max_rounds=3)
    step = begin_sync(acquisition, file, 0.0)
    for owner in (2, 3):
        assert isinstance(step, AskOwner)
        file.claim(owner)  # someone else takes it each time we ask
        step = finish_sync(acquisition, file, 1.0)
        assert step == AskOwner(owner, file.read())
    file.claim(4)
    assert isinstance(finish_sync(acquisition, file, 2.0), GaveUp)
    assert file.read() == OwnershipRecord(4, 4)  # nothing written by the loser


def test_past_its_time_limit_it_claims_only_an_unchanged_record(tmp_path: Path) -> None:
    file = OwnershipFile(tmp_path / "vd")
    file.claim(1)
    stopped = Acquisition(3, now=0.0, time_limit=15.0)
    assert isinstance(begin_sync(stopped, file, 0.0), AskOwner)
    # Resumed after 20 s, the owner it asked never answered and nothing moved: take over.
    assert finish_sync(stopped, file, 20.0) == Claimed(OwnershipRecord(3, 2))
    late = Acquisition(2, now=0.0, time_limit=15.0)
    assert isinstance(begin_sync(late, file, 0.0), AskOwner)
    file.claim(1)
    step = finish_sync(late, file, 20.0)  # moved while it was stopped, past its limit: give up
    assert isinstance(step, GaveUp) and file.read() == OwnershipRecord(1, 3)


def test_a_lock_held_by_another_process_is_never_waited_for(tmp_path: Path) -> None:
    """A claimer stopped while holding the lock must not freeze another's event loop."""
    path = tmp_path / "vd"
    file = OwnershipFile(path)  # mapped before the other process takes the lock
    file.claim(1)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THE_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        result = file.compare_and_claim(OwnershipRecord(1, 1), 2)
        assert result.outcome is ClaimOutcome.LOCKED
        acquisition = Acquisition(2, now=0.0, time_limit=15.0)
        assert isinstance(begin_sync(acquisition, file, 0.0), AskOwner)
        assert isinstance(finish_sync(acquisition, file, 1.0), RetryLater)
        # still held at its time limit
        assert isinstance(finish_sync(acquisition, file, 16.0), GaveUp)
        assert OwnershipFile(path).read() == OwnershipRecord(1, 1)  # opening does not wait
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # the holder exits, its lock with it
        holder.wait(timeout=10)
    retry = Acquisition(2, now=20.0, time_limit=15.0)
    assert isinstance(begin_sync(retry, file, 20.0), AskOwner)
    assert finish_sync(retry, file, 21.0) == Claimed(OwnershipRecord(2, 2))


_HOLD_THE_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""
