"""Which stargate serves a vDisk: DIR/ownership/<id>, node id + epoch, shared by mmap.

Every stargate maps the record of each vDisk it serves. Taking a vDisk over is a
compare-and-swap (`compare_and_claim`): under an exclusive lock, (new node, epoch + 1) is
written only if the record is still exactly the one the claimer read before asking its owner
to release it, so two claims never reuse an epoch and a claimer that was paused cannot take
the vDisk from an owner it never asked (acquisition.py drives the retries). The
serving stargate remembers the record it wrote (`Fence`) and compares it with the mapped
bytes before each command: the page is shared through the page cache, so a take-over by
another process is visible to the very next check, with no system call on the hot path.

A stargate that was stopped (SIGSTOP) while another took its vDisk over therefore finds the
record moved before it executes anything more for it, and drops the vDisk's sessions.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

# node id (uint32), epoch (uint32), little-endian: the 8 bytes of DESIGN.md.
_RECORD = struct.Struct("<II")
NO_NODE = 0  # a record nobody has claimed yet


@dataclass(frozen=True, slots=True)
class OwnershipRecord:
    node_id: int
    epoch: int

    @property
    def claimed(self) -> bool:
        return self.node_id != NO_NODE


class ClaimOutcome(Enum):
    CLAIMED = "claimed"  # written: the record returned is ours
    MOVED = "moved"  # the record is no longer what was read: the one found is returned
    LOCKED = "locked"  # another claimer holds the lock right now: try again shortly
    UNAVAILABLE = "unavailable"  # the coordinator did not answer: outcome unknown, retry


@dataclass(frozen=True, slots=True)
class ClaimResult:
    outcome: ClaimOutcome
    record: OwnershipRecord


class OwnershipFile:
    """The mapped record of one vDisk (created, unclaimed, when absent)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Grow a new (or short) file under the lock so a concurrent claim isn't truncated;
            # an existing record is mapped without waiting for a lock another process may
            # hold while stopped.
            if os.fstat(self._fd).st_size < _RECORD.size:
                fcntl.lockf(self._fd, fcntl.LOCK_EX)
                try:
                    if os.fstat(self._fd).st_size < _RECORD.size:
                        os.ftruncate(self._fd, _RECORD.size)
                finally:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(self._fd, _RECORD.size)
        except BaseException:
            os.close(self._fd)
            raise

    def read(self) -> OwnershipRecord:
        # An 8-byte aligned store is not torn on the platforms we run on, but a claim is two
        # fields: read until two reads agree, so a concurrent claim is never seen half-done.
        first = _RECORD.unpack_from(self._map, 0)
        while True:
            second = _RECORD.unpack_from(self._map, 0)
            if second == first:
                return OwnershipRecord(*second)
            first = second

    def matches(self, expected: OwnershipRecord) -> bool:
        """The hot-path check: one unpack and a comparison."""
        try:
            node_id, epoch = _RECORD.unpack_from(self._map, 0)
        except ValueError:  # closed: the vDisk was let go (a worker thread may still ask)
            return False
        return node_id == expected.node_id and epoch == expected.epoch

    def claim(self, node_id: int) -> OwnershipRecord:
        """Make ``node_id`` the owner with a fresh epoch, whoever owns it now; returns the
        record written. Unconditional: for setting records up (tests, tools); a stargate
        takes a vDisk over with `compare_and_claim` only."""
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            return self._write_next(node_id)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def compare_and_claim(self, expected: OwnershipRecord, node_id: int) -> ClaimResult:
        """Write (``node_id``, epoch + 1) if the record is still ``expected``.

        The lock is only tried, never waited for: a claimer stopped (SIGSTOP) while holding
        it must not freeze the event loop of every other stargate; LOCKED says try again.
        """
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EAGAIN / EACCES: another claimer holds it
            return ClaimResult(ClaimOutcome.LOCKED, expected)
        try:
            current = OwnershipRecord(*_RECORD.unpack_from(self._map, 0))
            if current != expected:
                return ClaimResult(ClaimOutcome.MOVED, current)
            return ClaimResult(ClaimOutcome.CLAIMED, self._write_next(node_id))
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _write_next(self, node_id: int) -> OwnershipRecord:
        # Caller holds the lock. 2**32 take-overs are out of reach: no wrap-around handling.
        _, epoch = _RECORD.unpack_from(self._map, 0)
        record = OwnershipRecord(node_id, epoch + 1)
        _RECORD.pack_into(self._map, 0, record.node_id, record.epoch)
        return record

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


def read_record(path: Path) -> OwnershipRecord | None:
    """The record as the CLI sees it (no mapping kept); None if never created."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < _RECORD.size:
        return OwnershipRecord(NO_NODE, 0)
    return OwnershipRecord(*_RECORD.unpack_from(data, 0))


class RecordMatcher(Protocol):
    def matches(self, expected: OwnershipRecord) -> bool: ...


class RecordView(RecordMatcher, Protocol):
    """What a claim keeps of its vDisk's record: an OwnershipFile, or an OwnershipCell."""

    def read(self) -> OwnershipRecord: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class Fence:
    """What a serving stargate wrote when it took the vDisk: valid while the record is so."""

    file: RecordMatcher  # an OwnershipFile, or any coordination.OwnershipCell
    record: OwnershipRecord

    def holds(self) -> bool:
        return self.file.matches(self.record)
