"""``python -m benchmarks``: stargate against tgtd on this machine, results as ratios.

python -m benchmarks [--quick] [--only standard,scale,...] [--runs 3] [--out DIR]

``python -m benchmarks ab --baseline REV ...`` compares two trees' stargate instead
(benchmarks/ab.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.clients import FioClient, InitiatorClient, QemuImgClient
from benchmarks.machine import machine_description
from benchmarks.report import write_reports
from benchmarks.settings import Section, Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: 1000 vDisks and 1000 idle connections need far more descriptors than the default 1024.
WANTED_OPEN_FILES = 16384


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(WANTED_OPEN_FILES, hard) if hard != resource.RLIM_INFINITY else WANTED_OPEN_FILES
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def section_runners(
    settings: Settings, out_dir: Path, client_names: list[str]
) -> dict[Section, Callable[[], Any]]:
    from benchmarks.failover import run_failover
    from benchmarks.isolation import run_isolation
    from benchmarks.memory import run_memory
    from benchmarks.profile import run_profile
    from benchmarks.scale import run_fairness, run_scale
    from benchmarks.standard import Client, run_standard

    fio = FioClient()
    every_client: list[Client] = [fio, QemuImgClient(settings.disk_size), InitiatorClient()]
    clients = [client for client in every_client if client.kind.value in client_names]
    return {
        Section.STANDARD: lambda: run_standard(settings, clients, log=log),
        Section.SCALE: lambda: run_scale(settings, fio, log=log),
        Section.FAIRNESS: lambda: run_fairness(settings, fio, log=log),
        Section.ISOLATION: lambda: run_isolation(settings, fio, log=log),
        Section.FAILOVER: lambda: run_failover(settings, log=log),
        Section.MEMORY: lambda: run_memory(settings, log=log),
        Section.PROFILE: lambda: run_profile(settings, fio, out_dir, log=log),
    }


def merge_previous(results: dict[str, Any], previous_path: Path) -> None:
    """Start from a previous run's sections (and their dates and errors)."""
    if not previous_path.exists():
        return
    previous = json.loads(previous_path.read_text())
    date = previous.get("machine", {}).get("date", "?")
    results["sections"].update(previous.get("sections", {}))
    results["errors"].update(previous.get("errors", {}))
    dates = previous.get("section_dates") or dict.fromkeys(previous.get("sections", {}), date)
    results["section_dates"].update(dates)
    results["previous_machine"] = previous.get("machine")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 run, short durations")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated sections: " + ",".join(section.value for section in Section),
    )
    parser.add_argument(
        "--clients",
        default="fio,qemu-img,initiator",
        help="clients of the standard section (comma-separated)",
    )
    parser.add_argument("--runs", type=int, help="runs per figure (median; default 3)")
    parser.add_argument("--seconds", type=float, help="seconds per measurement")
    parser.add_argument(
        "--failover-repeats",
        type=int,
        help="kill/failback cycles per client in the failover section (default 10)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where results go")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for the runner and all it starts (negative needs root): on a shared "
        "machine it gives both targets a fairer share of the CPU than the other load",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other sections of an existing results.json (re-run some sections only)",
    )
    args = parser.parse_args(argv)
    if args.failover_repeats is not None and args.failover_repeats < 1:
        parser.error("--failover-repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.quick_settings() if args.quick else Settings()
    if args.runs is not None:
        settings = replace(settings, runs=args.runs)
    if args.seconds is not None:
        settings = replace(settings, seconds=args.seconds)
    if args.failover_repeats is not None:
        settings = replace(settings, failover_repeats=args.failover_repeats)
    sections = [Section(name) for name in args.only.split(",") if name] or list(Section)
    raise_open_file_limit()
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # children inherit it
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    results: dict[str, Any] = {
        "machine": machine_description(),
        "settings": {
            **settings.__dict__,
            "sections": [section.value for section in sections],
            "nice": args.nice,
        },
        "sections": {},
        "errors": {},
        "section_dates": {},
    }
    if args.merge:
        merge_previous(results, args.out / "results.json")
    runners = section_runners(settings, args.out, args.clients.split(","))
    started = time.monotonic()
    for section in sections:
        log(f"== {section.value}")
        try:
            results["sections"][section.value] = runners[section]()
            results["errors"].pop(section.value, None)
            results["section_dates"][section.value] = results["machine"]["date"]
        except Exception as error:  # one broken section must not cost the others' results
            log(traceback.format_exc())
            results["errors"][section.value] = f"{type(error).__name__}: {error}"[:4000]
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["machine"]["wall_seconds"] = round(time.monotonic() - started, 1)
    paths = write_reports(results, args.out)
    log("wrote " + ", ".join(str(path) for path in paths))
    print(json.dumps(results.get("goals", []), indent=2))
    return 0 if not results["errors"] else 1
