"""Run the project's initiator bench on one URL, or on several at once, and print its report
as JSON (one process).

``initiator bench`` has no read/write mix option; this driver calls the same `run_bench`
with ``read_fraction``, so the 70/30 mix runs through the very same code path:

    python -m benchmarks.initiator_driver URL --rw randrw --bs 4096 --qd 32 --seconds 5 \
        --read-percent 70

With several URLs every device logs in first, then all run together (``--qd`` each) and
the report is their aggregate (see `combined`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import trio

from initiator.bench import Pattern, run_bench
from initiator.device import BlockDevice


def combined(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several devices' reports as one, as fio's group does: counts summed over the longest
    run time; latency, pause and per-I/O CPU are the worst device's (fio pools latencies)."""
    if len(reports) == 1:
        return dict(reports[0])
    total: dict[str, Any] = dict(reports[0])
    for key in ("ios", "reads", "writes", "bytes", "errors", "reconnects"):
        total[key] = sum(int(report[key]) for report in reports)
    for key in ("seconds", "longest_pause_s", "cpu_us_per_io"):
        total[key] = max(float(report[key]) for report in reports)
    total["iops"] = total["ios"] / total["seconds"] if total["seconds"] else 0.0
    total["mb_per_s"] = total["bytes"] / total["seconds"] / 1e6 if total["seconds"] else 0.0
    worst = [report["latency_us"] for report in reports if report["latency_us"]]
    total["latency_us"] = {
        point: max(latency[point] for latency in worst) for point in (worst[0] if worst else {})
    }
    total["last_error"] = next((r["last_error"] for r in reports if r["last_error"]), "")
    total["devices"] = len(reports)
    return total


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    reports: list[dict[str, Any]] = []

    async def run_one(device: BlockDevice) -> None:
        report = await run_bench(
            device,
            Pattern(args.rw),
            block_size=args.bs,
            queue_depth=args.qd,
            seconds=args.seconds,
            read_fraction=args.read_percent / 100,
        )
        reports.append(report.as_dict())

    async with AsyncExitStack() as stack:
        devices = [await stack.enter_async_context(BlockDevice.open(url)) for url in args.urls]
        async with trio.open_nursery() as nursery:
            for device in devices:
                nursery.start_soon(run_one, device)
    return combined(reports)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("urls", nargs="+", metavar="url")
    parser.add_argument("--rw", choices=[pattern.value for pattern in Pattern], required=True)
    parser.add_argument("--bs", type=int, default=4096)
    parser.add_argument("--qd", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--read-percent", type=int, default=70)
    args = parser.parse_args(argv)
    json.dump(trio.run(bench, args), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
