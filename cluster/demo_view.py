"""The demo's output: a rich live view on a terminal, plain lines otherwise (CI, pipes), and
the closing summary table in both cases."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cluster.demo_watch import DiskWatch, Phase

PLAIN_STATUS_INTERVAL = 2.0


@dataclass(frozen=True)
class DiskSummary:
    vdisk: str
    failover_pause_s: float | None
    failback_pause_s: float | None
    longest_pause_s: float  # over the whole run, as the initiator measured it
    bytes_verified: int
    bytes_written: int
    mismatches: int
    errors: int
    final_node: int | None

    @property
    def ok(self) -> bool:
        return self.mismatches == 0 and self.errors == 0


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _latency(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


class DemoView:
    """Either a live table (``live=True``) or one line per event plus a periodic status."""

    def __init__(self, console: Console, *, live: bool) -> None:
        self.console = console
        self.live_mode = live
        self.phase = Phase.STARTING
        self.headline = ""
        self.cluster_events: list[str] = []
        self.cvm_states: dict[int, str] = {}  # node -> process state (running, exited, ...)
        self._live: Live | None = None
        self._last_status = 0.0

    def __enter__(self) -> DemoView:
        if self.live_mode:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    # -- events -------------------------------------------------------------------------

    def announce(self, phase: Phase, headline: str) -> None:
        self.phase = phase
        self.headline = headline
        self.event(headline)

    def event(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        self.cluster_events.append(line)
        if self._live is None:
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def disk_event(self, disk: DiskWatch, text: str) -> None:
        if self._live is None:
            self.console.print(
                f"{time.strftime('%H:%M:%S')} {disk.vdisk}: {text}", highlight=False, markup=False
            )

    def refresh(self, disks: list[DiskWatch]) -> None:
        if self._live is not None:
            self._live.update(self._render(disks))
            return
        now = time.monotonic()
        if now - self._last_status >= PLAIN_STATUS_INTERVAL:
            self._last_status = now
            parts = [
                f"{d.vdisk}@CVM{d.serving_node or '?'} {d.iops:.0f} IOPS "
                f"{_latency(d.mean_latency_ms)}"
                for d in disks
            ]
            self.console.print(
                f"  [{self.phase.value}] " + " | ".join(parts),
                highlight=False,
                markup=False,
                soft_wrap=True,
            )

    def _render(self, disks: list[DiskWatch]) -> Group:
        title = Text(f"[{self.phase.value}] {self.headline}")  # Text: brackets are not markup
        table = Table(title=title, expand=True)
        for column in ("vDisk", "CVM", "IOPS", "latency", "pause now", "reconnects", "events"):
            table.add_column(column)
        for disk in disks:
            pause = disk.current_pause
            table.add_row(
                disk.vdisk,
                str(disk.serving_node or "-"),
                f"{disk.iops:.0f}",
                _latency(disk.mean_latency_ms),
                Text(f"{pause:.2f} s", style="bold red" if pause > 0.25 else ""),
                str(disk.device.stats.reconnects),
                "\n".join(disk.events[-3:]),
            )
        cvms = Text("  ".join(f"CVM {node}: {state}" for node, state in self.cvm_states.items()))
        log = Text("\n".join(self.cluster_events[-6:]), style="dim")
        return Group(cvms, table, log)

    # -- summary --------------------------------------------------------------------------

    def summary(self, rows: list[DiskSummary]) -> None:
        table = Table(title="Summary")
        for column in (
            "vDisk",
            "failover pause",
            "failback pause",
            "longest pause",
            "verified",
            "written",
            "mismatches",
            "errors",
            "ends on",
        ):
            table.add_column(column, justify="right" if column != "vDisk" else "left")
        for row in rows:
            table.add_row(
                row.vdisk,
                _seconds(row.failover_pause_s),
                _seconds(row.failback_pause_s),
                _seconds(row.longest_pause_s),
                f"{row.bytes_verified / 1e6:.1f} MB",
                f"{row.bytes_written / 1e6:.1f} MB",
                str(row.mismatches),
                str(row.errors),
                f"CVM {row.final_node}" if row.final_node else "-",
                style="" if row.ok else "bold red",
            )
        self.console.print(table)
        for row in rows:  # one machine-readable line each (CI logs, the demo's test)
            self.console.print(
                f"SUMMARY vdisk={row.vdisk} failover_pause_s={_plain(row.failover_pause_s)} "
                f"failback_pause_s={_plain(row.failback_pause_s)} "
                f"longest_pause_s={row.longest_pause_s:.3f} "
                f"bytes_verified={row.bytes_verified} mismatches={row.mismatches} "
                f"errors={row.errors} final_cvm={row.final_node or 0}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )


def _plain(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"
