"""CPU µs per I/O of the project's initiator (``initiator bench``) against one ``stargate
target``: the figure to A/B an initiator change with on a shared, noisy machine, where
wall-clock IOPS swing with the neighbours' load and CPU per I/O much less.

    python -m benchmarks.initiator_cpu --runs 5 --seconds 3
    python -m benchmarks.initiator_cpu --baseline-tree /path/to/old/checkout

Each run is a fresh ``initiator bench --json`` process (this tree's code, or the baseline
tree's, alternated run by run so that drift of the machine's load falls on both); the target
is this tree's stargate serving a /dev/shm file filled with data first. It prints min,
median and max of CPU µs per I/O and of IOPS per workload and initiator tree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.targets import StargateServer, fill_backing_file
from benchmarks.trees import python_environment

MiB = 1 << 20
_RUN_TIMEOUT_EXTRA_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Workload:
    rw: str
    queue_depth: int

    @property
    def name(self) -> str:
        return f"4k {self.rw} QD{self.queue_depth}"


WORKLOADS = (
    Workload("randread", 1),
    Workload("randread", 32),
    Workload("randwrite", 1),
    Workload("randwrite", 32),
)


def bench_once(tree: Path, url: str, workload: Workload, seconds: float) -> dict[str, float]:
    """One ``initiator bench`` process of ``tree``'s code; its JSON report."""
    argv = [
        sys.executable,
        "-c",
        "from initiator.cli import main; main()",
        "bench",
        url,
        "--rw",
        workload.rw,
        "--bs",
        "4k",
        "--qd",
        str(workload.queue_depth),
        "--seconds",
        str(seconds),
        "--json",
    ]
    completed = subprocess.run(
        argv,
        env=python_environment(tree),
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=seconds + _RUN_TIMEOUT_EXTRA_SECONDS,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"initiator bench failed ({completed.returncode}): {completed.stderr}")
    report: dict[str, float] = json.loads(completed.stdout)
    if report["errors"]:
        raise RuntimeError(f"initiator bench saw errors: {report['last_error']}")
    return report


def spread(values: Sequence[float]) -> str:
    return f"{min(values):,.1f} / {statistics.median(values):,.1f} / {max(values):,.1f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.initiator_cpu", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--host", default="127.15.0.1", help="the target's address")
    parser.add_argument(
        "--baseline-tree", type=Path, help="also run this checkout's initiator, alternated"
    )
    parser.add_argument("--only", help="comma-separated workload names, e.g. 'randread QD1'")
    parser.add_argument("--json", type=Path, help="write every run's report here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.seconds <= 0:
        parser.error("--runs must be >= 1 and --seconds > 0")
    here = Path(__file__).resolve().parent.parent
    trees = {"this tree": here}
    if args.baseline_tree is not None:
        if not (args.baseline_tree / "initiator").is_dir():
            parser.error(f"--baseline-tree {args.baseline_tree}: no initiator package there")
        trees = {"baseline": args.baseline_tree.resolve(), **trees}
    workloads = [
        w for w in WORKLOADS if args.only is None or any(o in w.name for o in args.only.split(","))
    ]
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    server = StargateServer(disk_size=256 * MiB)
    server.host = args.host
    with server:
        fill_backing_file(server.backing_file())
        for workload in workloads:
            for run in range(args.runs):
                names = list(trees) if run % 2 == 0 else list(reversed(trees))
                for name in names:
                    report = bench_once(trees[name], server.url(), workload, args.seconds)
                    results.setdefault(workload.name, {}).setdefault(name, []).append(report)
    print(
        f"{'workload':<18} {'initiator':<10} {'CPU µs/IO min/med/max':>26} {'IOPS min/med/max':>30}"
    )
    for workload_name, by_tree in results.items():
        for name, reports in by_tree.items():
            cpu = [r["cpu_us_per_io"] for r in reports]
            iops = [r["iops"] for r in reports]
            print(f"{workload_name:<18} {name:<10} {spread(cpu):>26} {spread(iops):>30}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
