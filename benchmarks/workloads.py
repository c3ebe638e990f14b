"""The workloads every client runs against both targets, and what a measurement holds."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

KiB = 1024


class Pattern(StrEnum):
    """fio's ``rw`` names; the project's initiator uses the same ones."""

    RANDREAD = "randread"
    RANDWRITE = "randwrite"
    RANDRW = "randrw"
    READ = "read"
    WRITE = "write"

    @property
    def sequential(self) -> bool:
        return self in (Pattern.READ, Pattern.WRITE)

    @property
    def writes(self) -> bool:
        return self in (Pattern.RANDWRITE, Pattern.WRITE)


@dataclass(frozen=True)
class Workload:
    name: str
    pattern: Pattern
    block_size: int
    queue_depth: int
    read_percent: int = 100  # only for RANDRW

    @property
    def label(self) -> str:
        size = f"{self.block_size // KiB} KiB"
        mix = f" {self.read_percent}/{100 - self.read_percent}" if self.is_mixed else ""
        return f"{size} {self.pattern.value}{mix} QD{self.queue_depth}"

    @property
    def is_mixed(self) -> bool:
        return self.pattern is Pattern.RANDRW


RANDREAD_QD1 = Workload("randread-4k-qd1", Pattern.RANDREAD, 4 * KiB, 1)
RANDREAD_QD32 = Workload("randread-4k-qd32", Pattern.RANDREAD, 4 * KiB, 32)
RANDWRITE_QD32 = Workload("randwrite-4k-qd32", Pattern.RANDWRITE, 4 * KiB, 32)
RANDRW_QD32 = Workload("randrw70-4k-qd32", Pattern.RANDRW, 4 * KiB, 32, read_percent=70)
SEQREAD_QD8 = Workload("seqread-128k-qd8", Pattern.READ, 128 * KiB, 8)
SEQWRITE_QD8 = Workload("seqwrite-128k-qd8", Pattern.WRITE, 128 * KiB, 8)

STANDARD_WORKLOADS: tuple[Workload, ...] = (
    RANDREAD_QD1,
    RANDREAD_QD32,
    RANDWRITE_QD32,
    RANDRW_QD32,
    SEQREAD_QD8,
    SEQWRITE_QD8,
)


@dataclass(frozen=True)
class Measurement:
    """One client run against one target: what the client saw and what the target spent."""

    ios: int
    bytes: int
    seconds: float
    p99_latency_us: float | None = None
    target_cpu_seconds: float | None = None
    longest_pause_s: float | None = None
    client_cpu_seconds: float | None = None  # the client's own CPU (where it was measured)
    max_latency_us: float | None = None  # the slowest I/O (fio only)

    @property
    def iops(self) -> float:
        return self.ios / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def target_cpu_us_per_io(self) -> float | None:
        if self.target_cpu_seconds is None or self.ios == 0:
            return None
        return self.target_cpu_seconds / self.ios * 1e6

    @property
    def client_cpu_us_per_io(self) -> float | None:
        if self.client_cpu_seconds is None or self.ios == 0:
            return None
        return self.client_cpu_seconds / self.ios * 1e6

    def with_target_cpu(self, cpu_seconds: float) -> Measurement:
        return replace(self, target_cpu_seconds=cpu_seconds)

    def with_client_cpu(self, cpu_seconds: float) -> Measurement:
        return replace(self, client_cpu_seconds=cpu_seconds)

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "ios": self.ios,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "iops": self.iops,
            "mb_per_s": self.mb_per_s,
            "p99_latency_us": self.p99_latency_us,
            "target_cpu_us_per_io": self.target_cpu_us_per_io,
            "client_cpu_us_per_io": self.client_cpu_us_per_io,
            "longest_pause_s": self.longest_pause_s,
            "max_latency_us": self.max_latency_us,
        }
