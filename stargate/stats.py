"""Per-vDisk counters: I/Os, bytes, latency histogram, queue depth, connections.

The transport updates them on the hot path, so each update is a few integer additions; the
cluster's HTTP stats page reads `VDiskStats.snapshot()` (plain JSON-able dicts).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from stargate.traces import TraceEntry, new_ring

# Latency buckets: upper bounds in microseconds, powers of two from 16 µs to ~8.4 s. The last
# bucket counts everything slower.
LATENCY_BUCKET_BOUNDS_US: tuple[int, ...] = tuple(1 << shift for shift in range(4, 24))
_LAST_BUCKET = len(LATENCY_BUCKET_BOUNDS_US)  # index of the "slower than all" bucket


class IoKind(Enum):
    READ = "read"
    WRITE = "write"
    OTHER = "other"


@dataclass(slots=True)
class LatencyHistogram:
    """Counts per power-of-two bucket; cheap to update, enough for percentiles on a page."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKET_BOUNDS_US) + 1))
    total_us: int = 0
    samples: int = 0

    def record(self, latency_ns: int) -> None:
        micros = latency_ns // 1000
        # bit_length picks the power-of-two bucket without a search: 16 µs -> index 0.
        index = micros.bit_length() - 4
        if index < 0:
            index = 0
        elif index > _LAST_BUCKET:
            index = _LAST_BUCKET
        self.counts[index] += 1
        self.total_us += micros
        self.samples += 1

    def percentile_us(self, fraction: float) -> int | None:
        """The upper bound of the bucket holding the given fraction of samples."""
        if self.samples == 0:
            return None
        wanted = fraction * self.samples
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= wanted:
                if index < len(LATENCY_BUCKET_BOUNDS_US):
                    return LATENCY_BUCKET_BOUNDS_US[index]
                return LATENCY_BUCKET_BOUNDS_US[-1] * 2
        return LATENCY_BUCKET_BOUNDS_US[-1] * 2

    def snapshot(self) -> dict[str, object]:
        return {
            "bucket_upper_bounds_us": [*list(LATENCY_BUCKET_BOUNDS_US), None],
            "counts": list(self.counts),
            "mean_us": self.total_us / self.samples if self.samples else None,
            "p50_us": self.percentile_us(0.50),
            "p99_us": self.percentile_us(0.99),
        }


@dataclass(slots=True)
class VDiskStats:
    """Counters for one vDisk (one iSCSI target)."""

    vdisk_id: str
    reads: int = 0
    writes: int = 0
    other_commands: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    errors: int = 0  # commands that ended with a status other than GOOD
    task_set_full: int = 0
    queue_depth: int = 0  # commands of this vDisk holding a slot of the command queue now
    max_queue_depth: int = 0
    queued_waiting: int = 0  # commands waiting for a slot (the queue was full)
    connections: int = 0
    sessions: int = 0
    logins: int = 0
    login_failures: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    started_at: float = field(default_factory=time.time)
    # The last operations with their phases (stargate.traces); None: tracing off.
    traces: deque[TraceEntry] | None = field(default_factory=new_ring)

    def command_started(self) -> None:
        self.queue_depth += 1
        if self.queue_depth > self.max_queue_depth:
            self.max_queue_depth = self.queue_depth

    def command_finished(
        self, kind: IoKind, byte_count: int, latency_ns: int, good: bool = True
    ) -> None:
        self.queue_depth -= 1
        if kind is IoKind.READ:
            self.reads += 1
            self.bytes_read += byte_count
        elif kind is IoKind.WRITE:
            self.writes += 1
            self.bytes_written += byte_count
        else:
            self.other_commands += 1
        if not good:
            self.errors += 1
        self.latency.record(latency_ns)

    def command_completed(
        self, kind: IoKind, byte_count: int, latency_ns: int, good: bool = True
    ) -> None:
        """`command_started` and `command_finished` at once, for a command that ran to
        completion within one call (nothing could look at the counters in between)."""
        if self.queue_depth >= self.max_queue_depth:
            self.max_queue_depth = self.queue_depth + 1
        if kind is IoKind.READ:
            self.reads += 1
            self.bytes_read += byte_count
        elif kind is IoKind.WRITE:
            self.writes += 1
            self.bytes_written += byte_count
        else:
            self.other_commands += 1
        if not good:
            self.errors += 1
        self.latency.record(latency_ns)

    def snapshot(self) -> dict[str, object]:
        return {
            "vdisk_id": self.vdisk_id,
            "reads": self.reads,
            "writes": self.writes,
            "other_commands": self.other_commands,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "errors": self.errors,
            "task_set_full": self.task_set_full,
            "queue_depth": self.queue_depth,
            "max_queue_depth": self.max_queue_depth,
            "queued_waiting": self.queued_waiting,
            "connections": self.connections,
            "sessions": self.sessions,
            "logins": self.logins,
            "login_failures": self.login_failures,
            "uptime_s": time.time() - self.started_at,
            "latency": self.latency.snapshot(),
        }
