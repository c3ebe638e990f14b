"""Per-device I/O statistics: counts, bytes, latency percentiles and the longest I/O pause.

The longest pause is the longest gap between I/O completions while I/O was outstanding:
what a guest experiences as a stall during failover. Reconnects and the portal that serves
the device now are recorded by the session and reported alongside.
"""

from __future__ import annotations

import math
import random
from array import array
from dataclasses import dataclass, field
from time import monotonic

_MAX_SAMPLES = 1_000_000  # latency samples kept; beyond this, reservoir sampling


@dataclass(slots=True)
class LatencyRecorder:
    samples: array = field(default_factory=lambda: array("d"))
    seen: int = 0
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def add(self, seconds: float) -> None:
        self.seen += 1
        if len(self.samples) < _MAX_SAMPLES:
            self.samples.append(seconds)
        else:
            slot = self._rng.randrange(self.seen)
            if slot < _MAX_SAMPLES:
                self.samples[slot] = seconds

    def percentiles(self, points: tuple[float, ...] = (50, 90, 99, 99.9)) -> dict[str, float]:
        """Latency in microseconds at each percentile point, plus max and mean."""
        if not self.samples:
            return {}
        ordered = sorted(self.samples)
        count = len(ordered)
        # Nearest rank: the smallest sample with at least p% of the samples at or below it.
        result = {
            f"p{p:g}": ordered[max(0, min(count, math.ceil(p / 100 * count)) - 1)] * 1e6
            for p in points
        }
        result["max"] = ordered[-1] * 1e6
        result["mean"] = sum(ordered) / len(ordered) * 1e6
        return result


@dataclass(slots=True)
class PauseTracker:
    """Longest gap between completions while at least one I/O was in flight."""

    outstanding: int = 0
    last_progress: float = 0.0
    longest: float = 0.0

    def started(self, now: float) -> None:
        if self.outstanding == 0:
            self.last_progress = now
        self.outstanding += 1

    def finished(self, now: float) -> None:
        self.longest = max(self.longest, now - self.last_progress)
        self.last_progress = now
        self.outstanding -= 1

    def longest_so_far(self, now: float) -> float:
        if self.outstanding:
            return max(self.longest, now - self.last_progress)
        return self.longest


@dataclass(slots=True)
class IoStats:
    reads: int = 0
    writes: int = 0
    other: int = 0
    errors: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    reconnects: int = 0
    retried_commands: int = 0
    unit_attentions: int = 0  # retried, as QEMU does
    portal: str = ""  # the portal serving the device now ("" while disconnected)
    started_at: float = field(default_factory=monotonic)
    latency: LatencyRecorder = field(default_factory=LatencyRecorder)
    pauses: PauseTracker = field(default_factory=PauseTracker)

    @property
    def ios(self) -> int:
        return self.reads + self.writes + self.other

    def snapshot(self) -> dict[str, object]:
        """A JSON-ready summary."""
        now = monotonic()
        elapsed = max(now - self.started_at, 1e-9)
        return {
            "ios": self.ios,
            "reads": self.reads,
            "writes": self.writes,
            "other": self.other,
            "errors": self.errors,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "iops": self.ios / elapsed,
            "mb_per_s": (self.bytes_read + self.bytes_written) / elapsed / 1e6,
            "latency_us": self.latency.percentiles(),
            "reconnects": self.reconnects,
            "retried_commands": self.retried_commands,
            "unit_attentions": self.unit_attentions,
            "portal": self.portal,
            "longest_pause_s": self.pauses.longest_so_far(now),
            "elapsed_s": elapsed,
        }
