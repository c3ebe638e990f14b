"""How long and how often to measure: the full run and ``--quick``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from benchmarks.targets import GiB, MiB


class Section(StrEnum):
    STANDARD = "standard"  # the six workloads x three clients, stargate vs tgtd
    SCALE = "scale"  # 1..64 vDisks at once, one connection each
    FAIRNESS = "fairness"  # QD 1 vDisk beside a QD 128 one
    ISOLATION = "isolation"  # QD 1 vDisk beside a hostile session (slot hog, garbage, ...)
    FAILOVER = "failover"  # client I/O pause when the local stargate dies, and at failback
    MEMORY = "memory"  # RSS with 1, 100, 1000 vDisks and 1000 idle connections
    PROFILE = "profile"  # py-spy on stargate under 4 KiB randread QD32


@dataclass(frozen=True)
class Settings:
    runs: int = 3
    seconds: float = 5.0
    disk_size: int = GiB
    scale_disk_size: int = 256 * MiB
    scale_counts: tuple[int, ...] = (1, 8, 32, 64)
    #: every scale step keeps this many I/Os outstanding in all, spread over its vDisks
    scale_total_queue_depth: int = 64
    failover_repeats: int = 10
    memory_disk_counts: tuple[int, ...] = (1, 100, 1000)
    idle_connections: int = 1000
    quick: bool = False

    @classmethod
    def quick_settings(cls) -> Settings:
        return cls(
            runs=1,
            seconds=1.5,
            disk_size=256 * MiB,
            scale_disk_size=64 * MiB,
            scale_counts=(1, 8),
            failover_repeats=1,
            memory_disk_counts=(1, 10),
            idle_connections=10,
            quick=True,
        )
