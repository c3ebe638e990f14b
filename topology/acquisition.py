"""Taking a vDisk over, as a sans-IO step machine driven by cvm.py (and by tests, step by step).

    step = acquisition.begin(await cell.fetch(), now)
    while step is AskOwner / RetryLater / TryClaim:  # ask that node to release it / wait
        ...                                           # (answered, timed out or refused: all
        result = await cell.compare_and_claim(step.seen, node_id)   # the same) / nothing
        step = acquisition.finish(result, now)
    # Claimed(record): the fence to serve under; GaveUp(reason): drop the vDisk's sessions

Each round reads the record, asks the owner it names to release the vDisk, then writes
(this node, epoch + 1) only if the record is still exactly what was read (the cell's
compare-and-swap: the directory's locked file, ZooKeeper's version-conditional set). When it
moved meanwhile (another stargate took the vDisk while this one waited, or was paused), the
round starts over against the new owner: a claimer never bumps the epoch of an owner it has
not asked. An owner that does not answer in time is taken over all the same, but only from
the record the claimer asked about; its fence then stops it. Rounds are bounded in number
and time. `begin_sync` and `finish_sync` drive it against a directory record file (tests).
"""

from __future__ import annotations

from dataclasses import dataclass

from topology.ownership import ClaimOutcome, ClaimResult, OwnershipFile, OwnershipRecord

MAX_ROUNDS = 4  # owners asked in one acquisition before giving up
LOCK_RETRY_DELAY = 0.01  # seconds before trying a lock another claimer holds


@dataclass(frozen=True, slots=True)
class AskOwner:
    """Ask ``owner_id`` to release the vDisk (it holds ``seen``), then claim from ``seen``."""

    owner_id: int
    seen: OwnershipRecord


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Another claimer holds the record's lock, or the coordinator did not answer: claim
    from ``seen`` again after ``delay`` seconds."""

    delay: float
    seen: OwnershipRecord


@dataclass(frozen=True, slots=True)
class TryClaim:
    """Nobody to ask (unclaimed, or ours from an earlier life): claim from ``seen`` now."""

    seen: OwnershipRecord


@dataclass(frozen=True, slots=True)
class Claimed:
    """The vDisk is this node's: serve it while the record is ``record`` (the fence)."""

    record: OwnershipRecord


@dataclass(frozen=True, slots=True)
class GaveUp:
    reason: str


Step = AskOwner | RetryLater | TryClaim | Claimed | GaveUp
Pending = AskOwner | RetryLater | TryClaim  # each is followed by a claim from its `seen`


class Acquisition:
    """One attempt of ``node_id`` at a vDisk."""

    def __init__(
        self,
        node_id: int,
        *,
        now: float,
        time_limit: float,
        max_rounds: int = MAX_ROUNDS,
    ) -> None:
        self.node_id = node_id
        self.deadline = now + time_limit
        self.max_rounds = max_rounds
        self.rounds = 0
        self.asked: list[int] = []  # owners asked, in order (logs, tests)
        self._seen: OwnershipRecord | None = None

    @property
    def seen(self) -> OwnershipRecord:
        """The record the pending claim is conditional on."""
        if self._seen is None:
            raise RuntimeError("no round begun")
        return self._seen

    def begin(self, record: OwnershipRecord, now: float) -> Step:
        """Start from the record as just read."""
        return self._round(record, now)

    def finish(self, result: ClaimResult, now: float) -> Step:
        """The claim from the last step's ``seen`` was tried (after the owner answered or
        did not in time, or the lock was busy): claimed, or start over against whoever
        holds the record now."""
        if self._seen is None:
            raise RuntimeError("finish() before begin()")
        if result.outcome is ClaimOutcome.CLAIMED:
            return Claimed(result.record)
        if now >= self.deadline:
            return GaveUp(f"not acquired within the time limit (record {result.record})")
        if result.outcome in (ClaimOutcome.LOCKED, ClaimOutcome.UNAVAILABLE):
            return RetryLater(LOCK_RETRY_DELAY, self._seen)
        return self._round(result.record, now)

    def _round(self, record: OwnershipRecord, now: float) -> Step:
        if self.rounds >= self.max_rounds or now >= self.deadline:
            return GaveUp(f"the record kept moving ({self.rounds} rounds, now {record})")
        self.rounds += 1
        self._seen = record
        if record.claimed and record.node_id != self.node_id:
            self.asked.append(record.node_id)
            return AskOwner(record.node_id, record)
        return TryClaim(record)


def begin_sync(acquisition: Acquisition, file: OwnershipFile, now: float) -> Step:
    """`begin` against a directory record file, the claim with nobody to ask done at once
    (the tests' way of driving the machine step by step)."""
    return _claim_if_nobody_to_ask(acquisition, file, acquisition.begin(file.read(), now), now)


def finish_sync(acquisition: Acquisition, file: OwnershipFile, now: float) -> Step:
    """The claim after an AskOwner or RetryLater, against a directory record file."""
    step = acquisition.finish(file.compare_and_claim(acquisition.seen, acquisition.node_id), now)
    return _claim_if_nobody_to_ask(acquisition, file, step, now)


def _claim_if_nobody_to_ask(
    acquisition: Acquisition, file: OwnershipFile, step: Step, now: float
) -> Step:
    while isinstance(step, TryClaim):
        step = acquisition.finish(file.compare_and_claim(step.seen, acquisition.node_id), now)
    return step
