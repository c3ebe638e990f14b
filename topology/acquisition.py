"""Taking a vDisk over, as a sans-IO step machine driven by cvm.py (and by tests, step by step).

    step = acquisition.begin(now)
    while step is AskOwner / RetryLater:  # ask that node to release it / wait a moment
        ...                               # (answered, timed out or refused: all the same)
        step = acquisition.finish(now)
    # Claimed(record): the fence to serve under; GaveUp(reason): drop the vDisk's sessions

Each round reads the record, asks the owner it names to release the vDisk, then writes
(this node, epoch + 1) only if the record is still exactly what was read
(`OwnershipFile.compare_and_claim`). When it moved meanwhile (another stargate took the vDisk
while this one waited, or was paused), the round starts over against the new owner: a
claimer never bumps the epoch of an owner it has not asked. An owner that does not answer
in time is taken over all the same, but only from the record the claimer asked about; its
fence then stops it. Rounds are bounded in number and time.
"""

from __future__ import annotations

from dataclasses import dataclass

from topology.ownership import ClaimOutcome, OwnershipFile, OwnershipRecord

MAX_ROUNDS = 4  # owners asked in one acquisition before giving up
LOCK_RETRY_DELAY = 0.01  # seconds before trying a lock another claimer holds


@dataclass(frozen=True, slots=True)
class AskOwner:
    """Ask ``owner_id`` to release the vDisk (it holds ``seen``), then call `finish`."""

    owner_id: int
    seen: OwnershipRecord


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Another claimer holds the record's lock: call `finish` after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class Claimed:
    """The vDisk is this node's: serve it while the record is ``record`` (the fence)."""

    record: OwnershipRecord


@dataclass(frozen=True, slots=True)
class GaveUp:
    reason: str


Step = AskOwner | RetryLater | Claimed | GaveUp


class Acquisition:
    """One attempt of ``node_id`` at the vDisk whose record is ``file``."""

    def __init__(
        self,
        file: OwnershipFile,
        node_id: int,
        *,
        now: float,
        time_limit: float,
        max_rounds: int = MAX_ROUNDS,
    ) -> None:
        self.file = file
        self.node_id = node_id
        self.deadline = now + time_limit
        self.max_rounds = max_rounds
        self.rounds = 0
        self.asked: list[int] = []  # owners asked, in order (logs, tests)
        self._seen: OwnershipRecord | None = None

    def begin(self, now: float) -> Step:
        return self._round(self.file.read(), now)

    def finish(self, now: float) -> Step:
        """The owner asked answered (or did not in time), or the lock was busy: claim if the
        record is still what was read, else start over against whoever holds it now."""
        if self._seen is None:
            raise RuntimeError("finish() before begin()")
        result = self.file.compare_and_claim(self._seen, self.node_id)
        if result.outcome is ClaimOutcome.CLAIMED:
            return Claimed(result.record)
        if now >= self.deadline:
            return GaveUp(f"not acquired within the time limit (record {result.record})")
        if result.outcome is ClaimOutcome.LOCKED:
            return RetryLater(LOCK_RETRY_DELAY)
        return self._round(result.record, now)

    def _round(self, record: OwnershipRecord, now: float) -> Step:
        if self.rounds >= self.max_rounds or now >= self.deadline:
            return GaveUp(f"the record kept moving ({self.rounds} rounds, now {record})")
        self.rounds += 1
        self._seen = record
        if record.claimed and record.node_id != self.node_id:
            self.asked.append(record.node_id)
            return AskOwner(record.node_id, record)
        # Unclaimed, or ours from an earlier life of this node: nobody to ask.
        return self.finish(now)
