"""The six standard workloads through each client, stargate and tgtd measured in turn (A B,
then B A: linear drift of the shared machine's load cancels), target CPU from /proc."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from benchmarks.clients import ClientError, ClientKind
from benchmarks.cpu import CpuMeter
from benchmarks.settings import Settings
from benchmarks.targets import (
    BenchTarget,
    StargateServer,
    TargetKind,
    TgtdServer,
    fill_backing_file,
)
from benchmarks.workloads import STANDARD_WORKLOADS, Measurement, Workload

T = TypeVar("T")


class Client(Protocol):
    @property
    def kind(self) -> ClientKind: ...

    def measure(self, url: str, workload: Workload, seconds: float) -> Measurement | None: ...


def median_or_none(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def summarize(measurements: Sequence[Measurement]) -> dict[str, float | None]:
    """Median of each figure over the runs (each figure on its own)."""
    return {
        "iops": median_or_none([m.iops for m in measurements]),
        "mb_per_s": median_or_none([m.mb_per_s for m in measurements]),
        "p99_latency_us": median_or_none([m.p99_latency_us for m in measurements]),
        "target_cpu_us_per_io": median_or_none([m.target_cpu_us_per_io for m in measurements]),
    }


RATIO_FIGURES = ("iops", "mb_per_s", "p99_latency_us", "target_cpu_us_per_io")


def paired_ratio_spread(
    stargate: Sequence[Measurement], tgtd: Sequence[Measurement], figure: str
) -> dict[str, float] | None:
    """stargate / tgtd of each run pair (run i of each, measured back to back), as
    min / median / max: the spread a single lucky run would hide."""
    ratios = [
        value
        for ours, theirs in zip(stargate, tgtd, strict=False)
        if (value := ratio(getattr(ours, figure), getattr(theirs, figure))) is not None
    ]
    if not ratios:
        return None
    return {
        "min": min(ratios),
        "median": statistics.median(ratios),
        "max": max(ratios),
        "pairs": len(ratios),
    }


@dataclass
class Comparison:
    """One client x workload: every run of each target, then medians and stargate/tgtd."""

    client: ClientKind
    workload: Workload
    runs: dict[TargetKind, list[Measurement]] = field(
        default_factory=lambda: {kind: [] for kind in TargetKind}
    )
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        medians = {kind.value: summarize(self.runs[kind]) for kind in TargetKind}
        stargate, tgtd = medians[TargetKind.STARGATE], medians[TargetKind.TGTD]
        return {
            "client": self.client.value,
            "workload": self.workload.name,
            "label": self.workload.label,
            "runs": {kind.value: [m.as_dict() for m in self.runs[kind]] for kind in TargetKind},
            "median": medians,
            "ratio": {
                "iops": ratio(stargate["iops"], tgtd["iops"]),
                "mb_per_s": ratio(stargate["mb_per_s"], tgtd["mb_per_s"]),
                "p99_latency_us": ratio(stargate["p99_latency_us"], tgtd["p99_latency_us"]),
                "target_cpu_us_per_io": ratio(
                    stargate["target_cpu_us_per_io"], tgtd["target_cpu_us_per_io"]
                ),
            },
            "ratio_spread": {
                figure: paired_ratio_spread(
                    self.runs[TargetKind.STARGATE], self.runs[TargetKind.TGTD], figure
                )
                for figure in RATIO_FIGURES
            },
            "errors": self.errors,
        }


def alternating(targets: Sequence[T], run: int) -> list[T]:
    """A B on even runs, B A on odd ones."""
    return list(targets) if run % 2 == 0 else list(reversed(targets))


def measure_with_cpu(
    client: Client, target: BenchTarget, workload: Workload, seconds: float
) -> Measurement | None:
    meter = CpuMeter(target.pid)
    meter.start()
    measured = client.measure(target.url(0), workload, seconds)
    cpu_spent = meter.stop()
    return None if measured is None else measured.with_target_cpu(cpu_spent)


def run_standard(
    settings: Settings,
    clients: Sequence[Client],
    workloads: Sequence[Workload] = STANDARD_WORKLOADS,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> list[dict[str, Any]]:
    comparisons: list[Comparison] = []
    with (
        TgtdServer(1, settings.disk_size) as tgtd,
        StargateServer(1, settings.disk_size) as stargate,
    ):
        targets: list[BenchTarget] = [stargate, tgtd]
        for target in targets:
            fill_backing_file(target.backing_file(0))
        for workload in workloads:
            for client in clients:
                comparison = Comparison(client.kind, workload)
                for run in range(settings.runs):
                    for target in alternating(targets, run):
                        try:
                            measured = measure_with_cpu(client, target, workload, settings.seconds)
                        except ClientError as error:
                            comparison.errors.append(f"{target.kind}: {error}"[:2000])
                            log(f"  {client.kind} {workload.name} {target.kind}: FAILED {error}")
                            continue
                        if measured is None:
                            break
                        comparison.runs[target.kind].append(measured)
                        log(
                            f"  {client.kind:9} {workload.name:18} {target.kind:8} "
                            f"{measured.iops:9.0f} IOPS {measured.mb_per_s:8.1f} MB/s "
                            f"cpu/io {measured.target_cpu_us_per_io or 0:6.1f} us"
                        )
                    else:
                        continue
                    break  # the client does not do this workload
                if any(comparison.runs.values()) or comparison.errors:
                    comparisons.append(comparison)
    return [comparison.as_dict() for comparison in comparisons]
