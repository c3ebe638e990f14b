"""`stargate soak` (and `python -m cluster.jepsen`): Jepsen-style schedules against a real
local cluster, until the budget (--minutes) or the count (--schedules) is used up."""

from __future__ import annotations

import argparse
import random
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from cluster.jepsen.report import SoakReport
from cluster.jepsen.runner import SoakOptions, run_soak
from cluster.supervisor import Supervisor
from topology.spec import (
    DEFAULT_BASE_ADDRESS,
    MAX_SESSIONS_PER_DISK,
    ClusterSpec,
    ClusterSpecError,
)


def register(subparsers: Any) -> None:
    soak = subparsers.add_parser(
        "soak",
        help="Jepsen-style schedules (kill/stop/blackhole CVMs) under checked client I/O",
        description="Start a local cluster, then run seeded random fault schedules while the "
        "project's initiator and qemu-io write unique values through the redirectors; check "
        "every read against the acknowledged writes and the stargates' write evidence. "
        "Schedule i uses seed SEED+i: --seed SEED+i --schedules 1 replays it.",
    )
    soak.add_argument("--minutes", type=float, help="time budget (default: 5 unless --schedules)")
    soak.add_argument("--schedules", type=int, help="at most this many schedules")
    soak.add_argument("--seed", type=int, help="the first schedule's seed (default: random)")
    soak.add_argument("--dir", type=Path, help="a fresh cluster directory (default: temporary)")
    soak.add_argument("--report", type=Path, help="report directory (default: ./soak-reports/…)")
    soak.add_argument("--nodes", type=int, default=3)
    soak.add_argument("--base-address", default=DEFAULT_BASE_ADDRESS)
    soak.add_argument("--schedule-seconds", type=float, default=30.0)
    soak.add_argument(
        "--stable-window",
        type=float,
        default=DEFAULT_SOAK_STABLE_WINDOW,
        metavar="SECONDS",
        help="failback after a CVM is healthy this long (short: failbacks happen under load)",
    )
    soak.add_argument("--initiators", type=int, default=2, help="initiator clients")
    soak.add_argument("--qemu", type=int, default=1, help="qemu-io clients")
    soak.add_argument("--blocks", type=int, default=128, help="blocks per vDisk")
    soak.add_argument(
        "--sessions-per-disk",
        type=int,
        default=1,
        metavar="N",
        help="the initiator clients' sessions per vDisk (AHV Turbo: 2)",
    )
    soak.add_argument(
        "--keep-histories", action="store_true", help="keep every history (else: failing ones)"
    )
    soak.set_defaults(handler=soak_command)


DEFAULT_SOAK_STABLE_WINDOW = 5.0


def _usage_error(message: str) -> int:
    print(f"stargate soak: {message}", file=sys.stderr)
    return 2


def soak_command(args: argparse.Namespace) -> int:
    if args.nodes < 2:
        return _usage_error("--nodes must be at least 2 (the nemesis keeps one CVM healthy)")
    if args.initiators < 0 or args.qemu < 0 or args.initiators + args.qemu == 0:
        return _usage_error("at least one client (--initiators, --qemu)")
    if args.qemu and shutil.which("qemu-io") is None:
        return _usage_error("qemu-io is not installed (apt-get install qemu-utils, or --qemu 0)")
    if args.schedule_seconds <= 0 or args.blocks < 1:
        return _usage_error("--schedule-seconds and --blocks must be positive")
    if not 1 <= args.sessions_per_disk <= MAX_SESSIONS_PER_DISK:
        return _usage_error(f"--sessions-per-disk must be 1..{MAX_SESSIONS_PER_DISK}")
    if (args.minutes is not None and args.minutes <= 0) or (
        args.schedules is not None and args.schedules < 1
    ):
        return _usage_error("--minutes and --schedules must be positive")
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    minutes = args.minutes if args.minutes is not None or args.schedules else 5.0
    options = SoakOptions(
        seed=seed,
        schedules=args.schedules,
        minutes=minutes,
        schedule_seconds=args.schedule_seconds,
        initiator_clients=args.initiators,
        qemu_clients=args.qemu,
        blocks=args.blocks,
        sessions_per_disk=args.sessions_per_disk,
        keep_histories=args.keep_histories,
    )
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = (args.report or Path("soak-reports") / f"{stamp}-seed{seed}").resolve()
    temporary = args.dir is None
    directory = Path(tempfile.mkdtemp(prefix="stargate-soak-")) if temporary else args.dir
    try:
        try:
            if (directory / "cluster.json").exists():
                return _usage_error(f"{directory} holds a cluster already: give a fresh --dir")
            ClusterSpec.create(directory, args.nodes, base_address=args.base_address,
                               stable_window=args.stable_window)  # fmt: skip
        except (ClusterSpecError, OSError) as error:
            return _usage_error(str(error))
        supervisor = Supervisor(directory, redirectors=True)
        supervisor.remember_mode(redirectors=True)
        return run(supervisor, options, out, base_command=_base_command(args))
    finally:
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)


def _base_command(args: argparse.Namespace) -> str:
    """The command line of this soak without its seed and budget."""
    words = ["stargate", "soak", "--nodes", str(args.nodes), "--schedule-seconds",
             f"{args.schedule_seconds:g}", "--initiators", str(args.initiators),
             "--qemu", str(args.qemu), "--blocks", str(args.blocks),
             "--stable-window", f"{args.stable_window:g}",
             "--sessions-per-disk", str(args.sessions_per_disk)]  # fmt: skip
    return shlex.join(words)


def run(supervisor: Supervisor, options: SoakOptions, out: Path, *, base_command: str) -> int:
    """Run the soak, write the report (its paths printed); 0 when nothing was found."""

    def log(line: str) -> None:
        print(line, flush=True)

    log(f"soak: seed {options.seed}, cluster in {supervisor.directory}, report in {out}")
    budget = f"--minutes {options.minutes:g}" if options.minutes else ""
    if options.schedules:
        budget += f" --schedules {options.schedules}"
    report = SoakReport(
        options.seed, f"{base_command} --seed {options.seed} {budget.strip()}", base_command
    )
    status = 0
    try:
        if trio.run(_interruptible, supervisor, options, report, out, log):
            log("interrupted: the report covers the schedules that finished")
            status = 130
    except RuntimeError as error:
        log(f"soak failed: {error}")
        status = 1
    finally:
        supervisor.stop_many(supervisor.processes)  # whatever ended the run
        json_path, markdown_path = report.write(out)
    totals = report.totals()
    log(f"{totals['schedules']} schedules, {totals['operations_checked']} operations checked, "
        f"{totals['anomalies']} anomalies, longest client-seen pause "
        f"{totals['longest_pause_s']} s")  # fmt: skip
    for seed in totals["failed_schedules"]:
        log(f"FAILED: seed {seed}; replay: {base_command} --seed {seed} --schedules 1")
    log(f"report: {markdown_path} and {json_path}")
    return status or (0 if report.ok and report.schedules else 1)


async def _interruptible(
    supervisor: Supervisor, options: SoakOptions, report: SoakReport, out: Path, log: Any
) -> bool:
    """The soak, ended early by SIGINT or SIGTERM (then True): the cluster's processes run
    in their own sessions, so they are stopped here rather than by the terminal."""
    interrupted = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def soak() -> None:
                await run_soak(supervisor, options, report, out, log)
                nursery.cancel_scope.cancel()

            nursery.start_soon(soak)
            async for signum in signals:
                log(f"{signal.Signals(signum).name}: stopping the soak")
                interrupted = True
                nursery.cancel_scope.cancel()
                break
    return interrupted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.jepsen")
    subparsers = parser.add_subparsers(dest="command", required=True)
    register(subparsers)
    args = parser.parse_args(["soak", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.handler(args)
    return result
