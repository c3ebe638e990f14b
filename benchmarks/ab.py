"""``python -m benchmarks ab``: one tree's stargate against another's, alternated in one run
on this machine, to tell whether a change (issue 14's refactoring) slowed the hot path.

    python -m benchmarks ab --baseline REV [--candidate REV | --candidate-tree PATH]
                            [--runs 3] [--seconds 5] [--warmup 1] [--disks 64]
                            [--client auto|fio|initiator] [--out DIR] [--nice N]

The baseline revision (and a ``--candidate`` revision) is checked out into a temporary git
worktree; the default candidate is the tree this code runs from, uncommitted changes
included. Each arm is ``python -m stargate target`` with its tree as PYTHONPATH, under this
interpreter. Run i of the baseline and run i of the candidate form a pair: both arms'
targets are started for it (side by side, idle but for the one measured) and one client
measures them in turn, A B then B A for the next pair (linear drift of the shared machine's
load cancels). Each pair gives a candidate/baseline ratio. Workloads: 4 KiB randread QD32
on one vDisk (a filled 1 GiB file, as the standard section), and 4 KiB randread QD1 on each
of 64 vDisks at once (256 MiB sparse files, as the scale section), aggregate IOPS. Results:
``ab.json`` and ``ab.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from benchmarks.ab_report import within_tolerance, write_ab_reports
from benchmarks.clients import ClientError, ClientKind, FioClient, InitiatorClient
from benchmarks.cpu import CpuMeter
from benchmarks.machine import machine_description
from benchmarks.runner import RESULTS_DIR, raise_open_file_limit
from benchmarks.standard import alternating, median_or_none, ratio
from benchmarks.targets import GiB, MiB, StargateServer, fill_backing_file
from benchmarks.trees import (
    THIS_TREE,
    SourceTree,
    TreeError,
    check_imports_from,
    checked_out,
    existing_tree,
)
from benchmarks.workloads import RANDREAD_QD1, RANDREAD_QD32, Measurement, Workload
from tests.peers.fio import FioError

Log = Callable[[str], None]
#: issue 14: the refactored hot path within 3% of the commit before it
TOLERANCE = 0.03


class Arm(StrEnum):
    BASELINE = "baseline"
    CANDIDATE = "candidate"


class AbClient(Protocol):
    @property
    def kind(self) -> ClientKind: ...

    def measure_disks(
        self, urls: Sequence[str], workload: Workload, seconds: float
    ) -> Measurement: ...


@dataclass(frozen=True)
class AbWorkload:
    name: str
    label: str
    workload: Workload  # on each vDisk
    disks: int
    disk_size: int
    fill: bool  # write a pattern over the backing files first (reads then copy real data)


@dataclass(frozen=True)
class AbSettings:
    runs: int = 3
    seconds: float = 5.0
    warmup_seconds: float = 1.0  # unmeasured load on each target right before its run
    disk_size: int = GiB
    many_disks: int = 64
    many_disk_size: int = 256 * MiB

    def workloads(self) -> tuple[AbWorkload, ...]:
        qd32, qd1 = RANDREAD_QD32, RANDREAD_QD1
        return (
            AbWorkload(qd32.name, f"{qd32.label}, 1 vDisk", qd32, 1, self.disk_size, True),
            AbWorkload(
                f"{self.many_disks}-vdisks-{qd1.name}",
                f"{qd1.label} on each of {self.many_disks} vDisks (aggregate)",
                qd1,
                self.many_disks,
                self.many_disk_size,
                False,
            ),
        )


@dataclass(frozen=True)
class Spread:
    minimum: float
    median: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        if not values:
            return None
        return cls(min(values), statistics.median(values), max(values))


@dataclass(frozen=True)
class PairedRun:
    """Run i of both arms, measured one after the other in ``order``."""

    order: tuple[Arm, ...]
    measured: Mapping[Arm, Measurement | None]
    load_average: float  # the machine's 1-minute load when the pair started

    def ratio(self, figure: Callable[[Measurement], float | None]) -> float | None:
        baseline, candidate = self.measured[Arm.BASELINE], self.measured[Arm.CANDIDATE]
        if baseline is None or candidate is None:
            return None
        return ratio(figure(candidate), figure(baseline))

    def as_dict(self) -> dict[str, Any]:
        runs = {arm.value: m.as_dict() if m else None for arm, m in self.measured.items()}
        return {
            "order": [arm.value for arm in self.order],
            "load_average": self.load_average,
            **runs,
        }


FIGURES: dict[str, Callable[[Measurement], float | None]] = {
    "iops": lambda m: m.iops,
    "target_cpu_us_per_io": lambda m: m.target_cpu_us_per_io,
    "p99_latency_us": lambda m: m.p99_latency_us,
}


def workload_summary(
    workload: AbWorkload, pairs: Sequence[PairedRun], errors: Sequence[str]
) -> dict[str, Any]:
    """Every run, each arm's medians, and the spread of the per-pair candidate/baseline
    ratios; within tolerance when the median IOPS ratio is within 3% of 1."""
    medians = {
        arm.value: {
            name: median_or_none([figure(m) for p in pairs if (m := p.measured[arm])])
            for name, figure in FIGURES.items()
        }
        for arm in Arm
    }
    ratios = {
        name: [r for pair in pairs if (r := pair.ratio(figure)) is not None]
        for name, figure in FIGURES.items()
    }
    spreads = {name: Spread.of(values) for name, values in ratios.items()}
    iops = spreads["iops"]
    return {
        "name": workload.name,
        "label": workload.label,
        "disks": workload.disks,
        "queue_depth_per_disk": workload.workload.queue_depth,
        "disk_size": workload.disk_size,
        "filled": workload.fill,
        "runs": [pair.as_dict() for pair in pairs],
        "median": medians,
        "ratio": {name: asdict(spread) if spread else None for name, spread in spreads.items()},
        "within_tolerance": None if iops is None else abs(iops.median - 1) <= TOLERANCE,
        "pairs_outside_tolerance": sum(abs(r - 1) > TOLERANCE for r in ratios["iops"]),
        "errors": list(errors),
    }


def measure_arm(
    client: AbClient, server: StargateServer, workload: AbWorkload, seconds: float
) -> Measurement:
    urls = [server.url(disk) for disk in range(workload.disks)]
    meter = CpuMeter(server.pid)
    meter.start()
    measured = client.measure_disks(urls, workload.workload, seconds)
    return measured.with_target_cpu(meter.stop())


@contextmanager
def arm_servers(
    trees: Mapping[Arm, SourceTree], workload: AbWorkload, order: Sequence[Arm]
) -> Iterator[dict[Arm, StargateServer]]:
    """Each arm's target, started (and its backing files filled) in ``order``."""
    with ExitStack() as stack:
        servers: dict[Arm, StargateServer] = {}
        for arm in order:
            server = StargateServer(workload.disks, workload.disk_size, source_tree=trees[arm].path)
            servers[arm] = stack.enter_context(server)
            for disk in range(workload.disks if workload.fill else 0):
                fill_backing_file(server.backing_file(disk))
        yield servers


def run_pair(
    settings: AbSettings,
    client: AbClient,
    trees: Mapping[Arm, SourceTree],
    workload: AbWorkload,
    run: int,
    log: Log,
) -> tuple[PairedRun, list[str]]:
    """Run ``run`` of both arms, on targets started for this pair: a process's luck (address
    layout, hash seed, where its pages landed) then varies from pair to pair instead of
    favouring one arm for the whole run. Each arm gets its warm-up right before its run."""
    order = tuple(alternating(list(Arm), run))
    load = os.getloadavg()[0]
    measured: dict[Arm, Measurement | None] = {}
    errors: list[str] = []
    with arm_servers(trees, workload, order) as servers:
        for arm in order:
            measured[arm] = None
            try:
                if settings.warmup_seconds > 0:
                    measure_arm(client, servers[arm], workload, settings.warmup_seconds)
                result = measure_arm(client, servers[arm], workload, settings.seconds)
            except ClientError as error:
                errors.append(f"run {run + 1} {arm}: {error}"[:2000])
                log(f"  {workload.name} run {run + 1} {arm}: FAILED {error}")
                continue
            measured[arm] = result
            log(
                f"  {workload.name:26} run {run + 1} {arm:9} {result.iops:9.0f} IOPS "
                f"cpu/io {result.target_cpu_us_per_io or 0:6.1f} us (load {load:.1f})"
            )
    return PairedRun(order, measured, load), errors


def run_workload(
    settings: AbSettings,
    client: AbClient,
    trees: Mapping[Arm, SourceTree],
    workload: AbWorkload,
    log: Log,
) -> dict[str, Any]:
    pairs: list[PairedRun] = []
    errors: list[str] = []
    for run in range(settings.runs):
        pair, pair_errors = run_pair(settings, client, trees, workload, run, log)
        pairs.append(pair)
        errors += pair_errors
    return workload_summary(workload, pairs, errors)


def choose_client(name: str) -> tuple[AbClient, str]:
    """fio with its libiscsi engine; the project's initiator only when fio cannot be had
    (``auto``) or when asked for."""
    if name == ClientKind.INITIATOR:
        return InitiatorClient(), "the project's initiator (--client initiator)"
    fio = FioClient()
    try:
        fio.ensure()
    except (FioError, OSError) as error:
        if name == ClientKind.FIO:
            raise
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return InitiatorClient(), f"the project's initiator (no fio libiscsi engine: {reason})"
    return fio, "fio (libiscsi engine)"


def run_ab(
    settings: AbSettings,
    client: AbClient,
    client_note: str,
    trees: Mapping[Arm, SourceTree],
    log: Log,
) -> dict[str, Any]:
    arms: dict[str, dict[str, Any]] = {}
    for arm in Arm:
        imported = check_imports_from(trees[arm])
        imports = {name: str(path) for name, path in imported.items()}
        arms[arm.value] = {**trees[arm].as_dict(), "imports": imports}
    results: dict[str, Any] = {
        "machine": machine_description(),
        "settings": {
            **asdict(settings),
            "tolerance": TOLERANCE,
            "order": "B C, then C B",
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
        },
        "client": client.kind.value,
        "client_note": client_note,
        "arms": arms,
        "workloads": [],
        "errors": {},
    }
    for workload in settings.workloads():
        log(f"== {workload.label}")
        try:
            results["workloads"].append(run_workload(settings, client, trees, workload, log))
        except Exception as error:  # one broken workload must not cost the other's figures
            log(f"  {workload.name}: FAILED {type(error).__name__}: {error}")
            results["errors"][workload.name] = f"{type(error).__name__}: {error}"[:4000]
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    return results


@contextmanager
def candidate_tree(args: argparse.Namespace) -> Iterator[SourceTree]:
    if args.candidate is not None:
        with checked_out(args.candidate) as tree:
            yield tree
    else:
        yield existing_tree(args.candidate_tree)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--baseline", required=True, help="revision to compare against")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--candidate", help="a revision (default: --candidate-tree)")
    which.add_argument(
        "--candidate-tree", type=Path, default=THIS_TREE, help="a tree as it is (default: this)"
    )
    parser.add_argument("--runs", type=int, default=AbSettings.runs, help="pairs per workload")
    parser.add_argument(
        "--seconds", type=float, default=AbSettings.seconds, help="seconds per measured run"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=AbSettings.warmup_seconds,
        help="seconds of unmeasured load on each target right before its measured run",
    )
    parser.add_argument(
        "--disks", type=int, default=AbSettings.many_disks, help="vDisks of the QD 1 workload"
    )
    parser.add_argument(
        "--client",
        choices=["auto", ClientKind.FIO, ClientKind.INITIATOR],
        default="auto",
        help="auto: fio with its libiscsi engine, the project's initiator if fio cannot be had",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where ab.md/json go")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for the runner and all it starts, both arms alike (negative needs root)",
    )
    return parser.parse_args(argv)


def log_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = AbSettings(args.runs, args.seconds, args.warmup, many_disks=args.disks)
    raise_open_file_limit()
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # the targets and clients inherit it
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    client, client_note = choose_client(args.client)
    log_line(f"client: {client_note}")
    try:
        with checked_out(args.baseline) as baseline, candidate_tree(args) as candidate:
            trees = {Arm.BASELINE: baseline, Arm.CANDIDATE: candidate}
            results = run_ab(settings, client, client_note, trees, log_line)
    except TreeError as error:
        log_line(f"cannot compare: {error}")
        return 2
    paths = write_ab_reports(results, args.out)
    log_line("wrote " + ", ".join(str(path) for path in paths))
    summary = {w["name"]: w["ratio"]["iops"] for w in results["workloads"]}
    print(json.dumps({**summary, "within_tolerance": within_tolerance(results)}, indent=2))
    failed = results["errors"] or any(w["errors"] for w in results["workloads"])
    return 1 if failed else 0
