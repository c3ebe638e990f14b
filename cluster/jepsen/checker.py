"""The checker: a history (and the stargates' write evidence) in, anomalies out. Pure.

Each block is a register whose writes carry unique values, so every read names the one
write it saw. With ``s``/``e`` an operation's invocation/completion time (``e`` unknown for
a write whose outcome is unknown; the initial value is a write at minus infinity), a read
``r`` that returned the value of write ``w`` is an anomaly when:

- the sector was torn, garbage, written for another block, or holds a value no client
  wrote there (or whose write certainly failed);
- ``s(w) > e(r)``: it saw a write from the future;
- an acknowledged write ``w'`` began after ``w`` completed and completed before ``r``
  began (``e(w) < s(w')``, ``e(w') < s(r)``): ``w'`` was lost, an older value won;
- an earlier read ``r1`` (``e(r1) < s(r)``) returned another value although it began after
  ``w`` completed (``e(w) < s(r1)``): the older value reappeared after a newer was read.

These are necessary conditions of linearizability for a register with unique values (a
full linearizability search is not needed to catch lost, stale or resurrected writes). The
write evidence (cluster/evidence.py) must show one node per
(vDisk, epoch), and no write that passed its fence check after a newer epoch was claimed.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from cluster.evidence import EpochEvidence
from cluster.jepsen.blocks import INITIAL, Decoded, Value
from cluster.jepsen.history import EventType, Function, Key, Operation


class AnomalyKind(Enum):
    CORRUPT = "corrupt-read"
    MISDIRECTED = "misdirected-read"
    UNKNOWN_VALUE = "unknown-value"
    FAILED_WRITE_READ = "read-of-failed-write"
    DUPLICATE_WRITE = "duplicate-write-value"
    FUTURE_READ = "future-read"
    LOST_WRITE = "lost-write"
    REAPPEARED = "older-value-reappeared"
    SPLIT_EPOCH = "two-writers-in-one-epoch"
    STALE_EPOCH_WRITE = "write-after-newer-epoch"


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: AnomalyKind
    where: str  # the block (vDisk/LBA) or the vDisk
    message: str

    def __str__(self) -> str:
        return f"{self.kind.value} at {self.where}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind.value, "where": self.where, "message": self.message}


_INITIAL_WRITE = Operation(-1, "initial", Function.WRITE, None, INITIAL, EventType.OK,
                           -math.inf, -math.inf)  # fmt: skip


def check(operations: Iterable[Operation], evidence: Sequence[EpochEvidence] = ()) -> list[Anomaly]:
    by_key: dict[Key, list[Operation]] = defaultdict(list)
    for operation in operations:
        if operation.key is not None and operation.f is not Function.NEMESIS:
            by_key[operation.key].append(operation)
    anomalies: list[Anomaly] = []
    for key in sorted(by_key):
        anomalies += check_register(key, by_key[key])
    return anomalies + check_evidence(evidence)


def _end(operation: Operation) -> float:
    return math.inf if operation.completed is None else operation.completed


def check_register(key: Key, ops: Sequence[Operation]) -> list[Anomaly]:
    """The anomalies of one block's operations."""
    where = str(key)
    anomalies: list[Anomaly] = []
    writes: dict[Value, Operation] = {INITIAL: _INITIAL_WRITE}
    for op in ops:
        if op.f is Function.WRITE and op.value is not None:
            if op.value in writes:
                message = f"{op.value} written twice: the history is not one of unique writes"
                anomalies.append(Anomaly(AnomalyKind.DUPLICATE_WRITE, where, message))
            writes[op.value] = op
    # Acknowledged writes by completion time, with the latest invocation among them so far.
    acked = sorted((w for w in writes.values() if w.outcome is EventType.OK), key=_end)
    acked_ends = [_end(w) for w in acked]
    latest_start: list[Operation] = []
    for w in acked:
        best = latest_start[-1] if latest_start else None
        latest_start.append(w if best is None or w.invoked > best.invoked else best)
    reads = sorted(
        (op for op in ops if op.f is Function.READ and op.outcome is EventType.OK), key=_end
    )
    seen = _SeenBefore([r for r in reads if _attribute(r, writes) is None])
    for read in reads:
        problem = _attribute(read, writes)
        if problem is not None:
            anomalies.append(Anomaly(problem[0], where, problem[1]))
            continue
        assert read.value is not None
        write = writes[read.value]
        if write.invoked > _end(read):
            message = f"{read} saw {write}, invoked after the read completed"
            anomalies.append(Anomaly(AnomalyKind.FUTURE_READ, where, message))
        written_by = _end(write)
        done_before = bisect.bisect_left(acked_ends, read.invoked)
        if done_before and latest_start[done_before - 1].invoked > written_by:
            newer = latest_start[done_before - 1]
            message = f"{read} returned {write}, but {newer} was acknowledged after it"
            anomalies.append(Anomaly(AnomalyKind.LOST_WRITE, where, message))
            continue
        earlier = seen.latest_other(read.invoked, read.value)
        if earlier is not None and earlier.invoked > written_by:
            message = f"{read} returned {write} after {earlier} had seen a newer value"
            anomalies.append(Anomaly(AnomalyKind.REAPPEARED, where, message))
    return anomalies


class _SeenBefore:
    """Over reads sorted by completion: among those completed before a time, the one that
    began last with a value other than a given one (the two latest with distinct values
    are kept per prefix, so each question is a bisection)."""

    def __init__(self, reads: list[Operation]) -> None:
        self.ends = [_end(read) for read in reads]
        self.best: list[tuple[Operation | None, Operation | None]] = []
        first: Operation | None = None
        second: Operation | None = None  # the latest-starting one whose value is not first's
        for read in reads:
            if first is None or read.invoked > first.invoked:
                if first is not None and first.value != read.value:
                    second = first
                first = read
            elif read.value != first.value and (second is None or read.invoked > second.invoked):
                second = read
            self.best.append((first, second))

    def latest_other(self, before: float, value: Value | None) -> Operation | None:
        count = bisect.bisect_left(self.ends, before)
        if not count:
            return None
        first, second = self.best[count - 1]
        return first if first is not None and first.value != value else second


def _attribute(read: Operation, writes: dict[Value, Operation]) -> tuple[AnomalyKind, str] | None:
    """Why the read cannot be attributed to a write of this block (None: it can)."""
    if read.decoded is Decoded.CORRUPT:
        return AnomalyKind.CORRUPT, f"{read}: {read.detail}"
    if read.decoded is Decoded.MISDIRECTED:
        return AnomalyKind.MISDIRECTED, f"{read}: {read.detail}"
    if read.value is None or read.value not in writes:
        return AnomalyKind.UNKNOWN_VALUE, f"{read}: no client wrote {read.value} here"
    if writes[read.value].outcome is EventType.FAIL:
        return AnomalyKind.FAILED_WRITE_READ, f"{read} saw {writes[read.value]}"
    return None


def check_evidence(evidence: Sequence[EpochEvidence]) -> list[Anomaly]:
    """One writer per (vDisk, epoch); no write past its fence after a newer claim."""
    anomalies: list[Anomaly] = []
    by_vdisk: dict[str, list[EpochEvidence]] = defaultdict(list)
    for slot in evidence:
        by_vdisk[slot.vdisk].append(slot)
    for vdisk in sorted(by_vdisk):
        slots = by_vdisk[vdisk]
        writers: dict[int, set[int]] = defaultdict(set)
        for slot in slots:
            if slot.writes:
                writers[slot.epoch].add(slot.node)
        for epoch, nodes in sorted(writers.items()):
            if len(nodes) > 1:
                message = f"epoch {epoch}: nodes {sorted(nodes)} all executed writes"
                anomalies.append(Anomaly(AnomalyKind.SPLIT_EPOCH, vdisk, message))
        for slot in slots:
            if not slot.writes:
                continue
            for newer in slots:
                if newer.epoch > slot.epoch and newer.claimed_at < slot.last_write_at:
                    message = (
                        f"node {slot.node} executed a write under epoch {slot.epoch} at "
                        f"{slot.last_write_at:.6f}, after node {newer.node} claimed epoch "
                        f"{newer.epoch} at {newer.claimed_at:.6f}"
                    )
                    anomalies.append(Anomaly(AnomalyKind.STALE_EPOCH_WRITE, vdisk, message))
                    break
    return anomalies
