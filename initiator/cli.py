"""`initiator`: the command line over the client library.

    initiator ls PORTAL
    initiator inq URL
    initiator read URL LBA COUNT [-o FILE]
    initiator write URL LBA --file F
    initiator bench URL --rw randread --bs 4k --qd 32 --seconds 10 [--json]
    initiator verify URL --seconds N [--json]
    initiator vm PORTAL VDISK... [--workload verify|randrw|...] --seconds N
                 [--sessions-per-disk N] [--json]

Errors print one line on stderr and exit 1 (2 for usage); no tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from topology.spec import MAX_SESSIONS_PER_DISK

from .bench import BenchReport, Pattern, parse_size, run_bench
from .console import output_console
from .device import BlockDevice
from .discovery import list_luns, send_targets
from .errors import InitiatorError
from .login_flow import DEFAULT_INITIATOR_NAME, LoginOptions
from .session import SessionConfig
from .url import parse_portal, parse_url
from .verify import Verifier, VerifyReport
from .vm_workload import DiskRun, run_vm_workload

EXIT_ERROR = 1
EXIT_MISMATCH = 3  # verify found lost or corrupt data
EXIT_INTERNAL = 4


def _sessions_per_disk(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_SESSIONS_PER_DISK:
        raise argparse.ArgumentTypeError(
            f"sessions per disk must be 1..{MAX_SESSIONS_PER_DISK}, not {text!r}"
        )
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="initiator", description="iSCSI initiator (trio)")
    parser.add_argument("--initiator-name", default=DEFAULT_INITIATOR_NAME)
    parser.add_argument("--header-digest", action="store_true", help="offer CRC32C")
    parser.add_argument("--data-digest", action="store_true", help="offer CRC32C")
    parser.add_argument(
        "--replacement-timeout",
        type=float,
        default=120.0,
        help="seconds a target may stay unreachable before commands fail (default 120)",
    )
    parser.add_argument("--nop-interval", type=float, default=5.0)
    parser.add_argument("--nop-timeout", type=float, default=5.0)
    parser.add_argument("-v", "--verbose", action="store_true", help="log session events")
    commands = parser.add_subparsers(dest="command", required=True)

    ls = commands.add_parser("ls", help="list targets, LUNs and sizes behind a portal")
    ls.add_argument("portal", help="host[:port] or iscsi://host[:port]")
    ls.add_argument("--json", action="store_true")

    inq = commands.add_parser("inq", help="INQUIRY and capacity of a LUN")
    inq.add_argument("url")
    inq.add_argument("--json", action="store_true")

    read = commands.add_parser("read", help="read blocks (raw bytes)")
    read.add_argument("url")
    read.add_argument("lba", type=int)
    read.add_argument("count", type=int, help="number of blocks")
    read.add_argument("-o", "--output", type=Path, help="file to write (default stdout)")

    write = commands.add_parser("write", help="write a file's bytes at an LBA")
    write.add_argument("url")
    write.add_argument("lba", type=int)
    write.add_argument("--file", type=Path, required=True)
    write.add_argument("--fua", action="store_true")

    bench = commands.add_parser("bench", help="load test: IOPS, MB/s, latency percentiles")
    bench.add_argument("url")
    bench.add_argument("--rw", choices=[p.value for p in Pattern], default="randread")
    bench.add_argument("--bs", default="4k")
    bench.add_argument(
        "--rwmixread", type=int, default=50, help="randrw: percent of reads (default 50)"
    )
    bench.add_argument("--qd", type=int, default=32)
    bench.add_argument("--seconds", type=float, default=10.0, help="0: until SIGINT/SIGTERM")
    bench.add_argument("--size", help="confine I/O to the first SIZE bytes")
    bench.add_argument("--json", action="store_true")

    verify = commands.add_parser("verify", help="write checksummed blocks, read back, compare")
    verify.add_argument("url")
    verify.add_argument(
        "--seconds", type=float, default=10.0, help="0: until SIGINT/SIGTERM, then report"
    )
    verify.add_argument("--qd", type=int, default=16)
    verify.add_argument("--chunk-blocks", type=int, default=8)
    verify.add_argument("--size", default="64m", help="region to exercise (default 64m)")
    verify.add_argument("--json", action="store_true")

    vm = commands.add_parser(
        "vm", help="a VM: many vDisks through one portal, a workload on each, live stats"
    )
    vm.add_argument("portal", help="the node's redirector, host[:port]")
    vm.add_argument("vdisks", nargs="+", help="vDisk ids (or full target IQNs)")
    vm.add_argument("--workload", default="verify", choices=["verify", *[p.value for p in Pattern]])
    vm.add_argument("--seconds", type=float, default=10.0)
    vm.add_argument("--qd", type=int, default=4, help="per vDisk")
    vm.add_argument("--bs", default="4k")
    vm.add_argument("--size", default="64m", help="region of each vDisk to exercise")
    vm.add_argument("--name", default="vm")
    vm.add_argument(
        "--sessions-per-disk",
        type=_sessions_per_disk,
        default=1,
        metavar="N",
        help="sessions per vDisk (AHV Turbo: 2 for a VM with 2+ vCPUs)",
    )
    vm.add_argument("--json", action="store_true")
    return parser


def _config(args: argparse.Namespace) -> SessionConfig:
    return SessionConfig(
        login=LoginOptions(
            initiator_name=args.initiator_name,
            header_digest=args.header_digest,
            data_digest=args.data_digest,
        ),
        replacement_timeout=args.replacement_timeout,
        nop_interval=args.nop_interval,
        nop_timeout=args.nop_timeout,
    )


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


async def cmd_ls(args: argparse.Namespace, console: Console) -> int:
    text = args.portal.removeprefix("iscsi://").rstrip("/")
    credentials, at, hostport = text.rpartition("@")
    portal = parse_portal(hostport if at else text)
    config = _config(args)
    if at:
        chap = parse_url(f"iscsi://{credentials}@{hostport}/x/0").chap
        config = replace(config, login=replace(config.login, chap=chap))
    targets = await send_targets(portal, config.login)
    listing: list[dict[str, Any]] = []
    for target in targets:
        served_by, luns = await list_luns(portal, target.name, config)
        listing.append(
            {
                "target": target.name,
                "portals": target.portals,
                "served_by": served_by,
                "luns": [
                    {
                        "lun": lun.lun,
                        "size_bytes": lun.size_bytes,
                        "block_size": lun.block_size,
                        "vendor": lun.vendor,
                        "product": lun.product,
                        **({"error": lun.error} if lun.error else {}),
                    }
                    for lun in luns
                ],
            }
        )
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    table = Table(title=f"Targets at {portal}")
    for column in ("Target", "Served by", "LUN", "Size", "Block", "Product"):
        table.add_column(column)
    for entry in listing:
        portals = entry["served_by"]
        if not entry["luns"]:
            table.add_row(entry["target"], portals, "-", "", "", "")
        for lun in entry["luns"]:
            table.add_row(
                entry["target"],
                portals,
                str(lun["lun"]),
                _human(lun["size_bytes"]) if lun["size_bytes"] else lun.get("error", ""),
                str(lun["block_size"] or ""),
                f"{lun['vendor']} {lun['product']}".strip(),
            )
    console.print(table)
    return 0


async def cmd_inq(args: argparse.Namespace, console: Console) -> int:
    async with BlockDevice.open(args.url, _config(args)) as device:
        inquiry = await device.inquiry()
        info = {
            "target": device.url.target,
            "lun": device.lun,
            "portal": str(device.session.portal),
            "vendor": inquiry.vendor,
            "product": inquiry.product,
            "revision": inquiry.revision,
            "peripheral_type": inquiry.peripheral_type,
            "block_size": device.block_size,
            "blocks": device.blocks,
            "size_bytes": device.capacity.size_bytes,
        }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            console.print(f"[bold]{key:16}[/bold] {value}")
    return 0


async def cmd_read(args: argparse.Namespace, console: Console) -> int:
    if args.count < 1 or args.lba < 0:
        raise ValueError("LBA must be >= 0 and COUNT >= 1")
    async with BlockDevice.open(args.url, _config(args)) as device:
        chunk = max(1, (1 << 20) // device.block_size)
        sink = args.output.open("wb") if args.output else sys.stdout.buffer
        hexdump = not args.output and sys.stdout.isatty()  # raw bytes would garble a terminal
        try:
            for lba in range(args.lba, args.lba + args.count, chunk):
                blocks = min(chunk, args.lba + args.count - lba)
                data = await device.read(lba, blocks)
                if hexdump:
                    sink.write(_hexdump(data, lba * device.block_size).encode())
                else:
                    sink.write(data)
        finally:
            if args.output:
                sink.close()
            else:
                sink.flush()
    return 0


def _hexdump(data: bytes | bytearray, base: int) -> str:
    lines = []
    for offset in range(0, len(data), 16):
        row = data[offset : offset + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{base + offset:010x}  {row.hex(' '):<47}  {text}\n")
    return "".join(lines)


async def cmd_write(args: argparse.Namespace, console: Console) -> int:
    data = args.file.read_bytes()
    if not data:
        raise ValueError(f"{args.file} is empty")
    async with BlockDevice.open(args.url, _config(args)) as device:
        size = device.block_size
        if len(data) % size:
            data += bytes(size - len(data) % size)  # pad the last block with zeros
        chunk = max(size, (1 << 20) // size * size)
        for offset in range(0, len(data), chunk):
            await device.write(
                args.lba + offset // size, data[offset : offset + chunk], fua=args.fua
            )
        await device.flush()
        blocks = len(data) // size
    console.print(f"wrote {blocks} blocks ({len(data)} bytes) at LBA {args.lba}", highlight=False)
    return 0


async def _stop_on_signal(stop: Callable[[], None]) -> None:
    """SIGINT or SIGTERM ends the workload early; the report is still printed."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop()
            return


def _progress(console: Console, enabled: bool, total: float) -> Progress | None:
    if not enabled:
        return None
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,
    )


async def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    block_size = parse_size(args.bs)
    if args.qd < 1 or args.seconds < 0 or not 0 <= args.rwmixread <= 100:
        raise ValueError("--qd must be >= 1, --seconds >= 0, --rwmixread 0..100")
    live = console.is_terminal and not args.json
    async with BlockDevice.open(args.url, _config(args)) as device:
        progress = _progress(console, live, args.seconds)
        callback: Callable[[BenchReport, float], None] | None = None
        if progress is not None:
            task = progress.add_task(f"{args.rw} {args.bs} QD{args.qd}", total=1.0, status="")

            def callback(report: BenchReport, fraction: float) -> None:
                status = f"{report.iops:,.0f} IOPS {report.mb_per_s:,.1f} MB/s"
                progress.update(task, completed=fraction, status=status)

            progress.start()
        stop = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, stop.set)
                report = await run_bench(
                    device,
                    Pattern(args.rw),
                    block_size=block_size,
                    queue_depth=args.qd,
                    seconds=args.seconds,
                    region_bytes=parse_size(args.size) if args.size else None,
                    progress=callback,
                    stop=stop,
                    read_fraction=args.rwmixread / 100,
                )
                nursery.cancel_scope.cancel()
        finally:
            if progress is not None:
                progress.stop()
    summary = report.as_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        latency = summary["latency_us"]
        assert isinstance(latency, dict)
        console.print(
            f"{args.rw} bs={block_size} qd={args.qd}: [bold]{report.iops:,.0f} IOPS[/bold], "
            f"{report.mb_per_s:,.1f} MB/s in {report.seconds:.1f} s "
            f"({report.ios} I/Os, {report.errors} errors, {report.reconnects} reconnects)",
            highlight=False,
        )
        console.print(f"CPU {summary['cpu_us_per_io']:,.1f} µs per I/O", highlight=False)
        if latency:
            console.print(
                "latency µs: " + ", ".join(f"{key} {value:,.0f}" for key, value in latency.items()),
                highlight=False,
            )
    return 0 if report.errors == 0 else EXIT_ERROR


async def cmd_verify(args: argparse.Namespace, console: Console) -> int:
    live = console.is_terminal and not args.json
    async with BlockDevice.open(args.url, _config(args)) as device:
        region = parse_size(args.size) // device.block_size
        verifier = Verifier(device, chunk_blocks=args.chunk_blocks, region_blocks=region)
        progress = _progress(console, live, args.seconds)
        callback: Callable[[VerifyReport], None] | None = None
        if progress is not None:
            task = progress.add_task("verify", total=args.seconds, status="")
            started = trio.current_time()

            def callback(report: VerifyReport) -> None:
                status = (
                    f"{report.writes} writes {report.reads} reads, "
                    f"{report.mismatch_count} mismatches, {report.reconnects} reconnects"
                )
                progress.update(task, completed=trio.current_time() - started, status=status)

            progress.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, verifier.stop)
                report = await verifier.run(args.seconds, queue_depth=args.qd, progress=callback)
                nursery.cancel_scope.cancel()
        finally:
            if progress is not None:
                progress.stop()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        verdict = "[green]OK[/green]" if report.ok else "[red]FAILED[/red]"
        console.print(
            f"verify {verdict}: {report.writes} writes, {report.reads} reads, "
            f"{report.blocks_verified} blocks checked, {report.mismatch_count} mismatches, "
            f"{report.errors} errors, {report.reconnects} reconnects, "
            f"longest pause {report.longest_pause_s:.2f} s, now via {report.portal or '-'}",
            highlight=False,
        )
        for mismatch in report.mismatches:
            console.print(f"  {mismatch}", highlight=False)
        if report.last_error:
            console.print(f"  last error: {report.last_error}", highlight=False)
    if report.mismatch_count:
        return EXIT_MISMATCH
    return 0 if report.errors == 0 else EXIT_ERROR


def _vm_table(runs: list[DiskRun], title: str) -> Table:
    table = Table(title=title)
    for column in ("vDisk", "portal", "IOPS", "MB/s", "p50 µs", "p99 µs", "reconnects",
                   "longest pause", "mismatches", "errors"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("vDisk", "portal") else "right")
    for run in runs:
        snap = run.snapshot()
        latency = snap.get("latency_us") or {}
        assert isinstance(latency, dict)
        mismatches = run.verify.mismatch_count if run.verify is not None else "-"
        table.add_row(
            run.vdisk,
            str(snap.get("portal") or "-"),
            f"{snap.get('iops', 0):,.0f}",
            f"{snap.get('mb_per_s', 0):,.1f}",
            f"{latency.get('p50', 0):,.0f}",
            f"{latency.get('p99', 0):,.0f}",
            str(snap.get("reconnects", 0)),
            f"{snap.get('longest_pause_s', 0):.2f} s",
            str(mismatches),
            run.error or str(snap.get("errors", 0)),
        )
    return table


async def cmd_vm(args: argparse.Namespace, console: Console) -> int:
    title = f"VM {args.name} via {args.portal}: {args.workload}"
    live = (
        Live(console=console, auto_refresh=False) if console.is_terminal and not args.json else None
    )

    def tick(runs: list[DiskRun]) -> None:
        if live is not None:
            live.update(_vm_table(runs, title), refresh=True)

    if live is not None:
        live.start()
    try:
        runs = await run_vm_workload(
            parse_portal(args.portal),
            args.vdisks,
            seconds=args.seconds,
            workload=args.workload,
            queue_depth=args.qd,
            block_size=parse_size(args.bs),
            region_bytes=parse_size(args.size),
            config=_config(args),
            on_tick=tick,
            vm_name=args.name,
            sessions_per_disk=args.sessions_per_disk,
        )
    finally:
        if live is not None:
            live.stop()
    if args.json:
        print(json.dumps([run.snapshot() for run in runs], indent=2))
    elif live is None:
        console.print(_vm_table(runs, title))
    lost = any(run.verify is not None and run.verify.mismatch_count for run in runs)
    failed = any(run.error or (run.verify is not None and not run.verify.ok) for run in runs)
    return EXIT_MISMATCH if lost else EXIT_ERROR if failed else 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Console], Awaitable[int]]] = {
    "ls": cmd_ls,
    "inq": cmd_inq,
    "read": cmd_read,
    "write": cmd_write,
    "bench": cmd_bench,
    "verify": cmd_verify,
    "vm": cmd_vm,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    console = output_console(stderr=args.command == "read")  # read writes data to stdout
    try:
        return trio.run(COMMANDS[args.command], args, console)
    except KeyboardInterrupt:
        print("initiator: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        expected = _first_expected(error)
        if expected is not None:
            print(f"initiator: error: {expected}", file=sys.stderr)
            return EXIT_ERROR
        if args.verbose:
            logging.exception("internal error")
        print(f"initiator: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_INTERNAL


def _first_expected(error: BaseException) -> BaseException | None:
    """The user-facing error in ``error``, looking inside trio's exception groups."""
    if isinstance(error, InitiatorError | ValueError | OSError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            if (found := _first_expected(inner)) is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
