"""Run the project's initiator bench on one URL and print its report as JSON (one process).

``initiator bench`` has no read/write mix option; this driver calls the same `run_bench`
with ``read_fraction``, so the 70/30 mix runs through the very same code path:

    python -m benchmarks.initiator_driver URL --rw randrw --bs 4096 --qd 32 --seconds 5 \
        --read-percent 70
"""

from __future__ import annotations

import argparse
import json
import sys

import trio

from initiator.bench import Pattern, run_bench
from initiator.device import BlockDevice


async def bench(args: argparse.Namespace) -> dict[str, object]:
    async with BlockDevice.open(args.url) as device:
        report = await run_bench(
            device,
            Pattern(args.rw),
            block_size=args.bs,
            queue_depth=args.qd,
            seconds=args.seconds,
            read_fraction=args.read_percent / 100,
        )
    return report.as_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
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
