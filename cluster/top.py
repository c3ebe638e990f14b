"""`stargate top --dir DIR`: the whole cluster, live.

Every interval each stargate's /stats.json is fetched (concurrently, bounded); rates are the
differences between two consecutive snapshots of the same stargate. Shown: per CVM its
process state and health, connections and shared-queue use; per vDisk the CVM serving it,
IOPS, MB/s, latency (mean and p99 over the interval), connections and queue depth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import trio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cluster.supervisor import Supervisor
from control.client import PageAnswer, fetch_all
from control.fault_summary import top_line
from initiator.console import output_console
from stargate.stats import LATENCY_BUCKET_BOUNDS_US
from topology.spec import ClusterSpec, list_vdisks


@dataclass(frozen=True)
class VDiskRates:
    vdisk_id: str
    node_id: int
    iops: float
    read_mbps: float
    write_mbps: float
    mean_latency_us: float | None
    p99_latency_us: int | None
    connections: int
    queue_depth: int
    state: str


def _samples(counters: dict[str, Any]) -> tuple[list[int], float]:
    latency = counters.get("latency") or {}
    counts = list(latency.get("counts") or [])
    total_us = (latency.get("mean_us") or 0.0) * sum(counts)
    return counts, total_us


def _p99(counts: list[int]) -> int | None:
    total = sum(counts)
    if total <= 0:
        return None
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= 0.99 * total:
            if index < len(LATENCY_BUCKET_BOUNDS_US):
                return LATENCY_BUCKET_BOUNDS_US[index]
            return LATENCY_BUCKET_BOUNDS_US[-1] * 2
    return None


def vdisk_rates(
    node_id: int, before: dict[str, Any] | None, after: dict[str, Any], seconds: float
) -> VDiskRates:
    """Rates of one vDisk at one stargate between two /stats.json snapshots of it.

    Counters restart when a vDisk moves away and back: a negative difference counts from 0.
    """
    previous = before or {}

    def delta(key: str) -> int:
        now, then = int(after.get(key, 0)), int(previous.get(key, 0))
        return now - then if now >= then else now

    ios = delta("reads") + delta("writes") + delta("other_commands")
    counts_after, total_after = _samples(after)
    counts_before, total_before = _samples(previous)
    if len(counts_before) != len(counts_after) or sum(counts_before) > sum(counts_after):
        counts_before, total_before = [0] * len(counts_after), 0.0
    interval_counts = [a - b for a, b in zip(counts_after, counts_before, strict=True)]
    samples = sum(interval_counts)
    span = max(seconds, 1e-6)
    return VDiskRates(
        vdisk_id=str(after.get("vdisk_id")),
        node_id=node_id,
        iops=ios / span,
        read_mbps=delta("bytes_read") / span / 1e6,
        write_mbps=delta("bytes_written") / span / 1e6,
        mean_latency_us=(total_after - total_before) / samples if samples else None,
        p99_latency_us=_p99(interval_counts),
        connections=int(after.get("connections", 0)),
        queue_depth=int(after.get("queue_depth", 0)),
        state=str(after.get("state", "")),
    )


@dataclass
class TopModel:
    """The last two snapshots of every stargate; what the view is computed from."""

    spec: ClusterSpec
    previous: dict[int, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    latest: dict[int, tuple[float, PageAnswer]] = field(default_factory=dict)

    def update(self, answers: list[PageAnswer], now: float) -> None:
        for answer in answers:
            last = self.latest.get(answer.node_id)
            if last is not None and last[1].answered:
                self.previous[answer.node_id] = (last[0], last[1].document)
            self.latest[answer.node_id] = (now, answer)

    def rates(self) -> list[VDiskRates]:
        rows = []
        for node_id, (now, answer) in sorted(self.latest.items()):
            if not answer.answered:
                continue
            # The first frame has no earlier snapshot: rates since the stargate started.
            uptime = float(answer.document.get("uptime_s") or 0.0)
            then, before_doc = self.previous.get(node_id, (now - uptime, {"vdisks": {}}))
            before_vdisks = before_doc.get("vdisks", {})
            for vdisk_id, counters in sorted(answer.document.get("vdisks", {}).items()):
                rows.append(vdisk_rates(node_id, before_vdisks.get(vdisk_id), counters, now - then))
        return rows


def _fmt_us(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} ms" if value >= 1000 else f"{value:.0f} µs"


def _process_state(supervisor: Supervisor, name: str) -> str:
    try:
        process = supervisor.process(name)
    except ValueError:
        return "-"  # not started by this cluster (stargates-only mode)
    pid, state = supervisor.state(process)
    return f"{state} ({pid})" if pid else state


def render(model: TopModel, supervisor: Supervisor | None, *, fill_width: bool = True) -> Group:
    """The view; ``fill_width``: tables as wide as the terminal (not when piped)."""
    spec = model.spec
    cvms = Table(title="CVMs (stargates)", expand=fill_width)
    columns = ("node", "address", "process", "health", "conns", "queue", "IOPS", "MB/s")
    for column in (*columns, "redirector"):
        cvms.add_column(column, justify="right" if column in ("IOPS", "MB/s") else "left")
    rates = model.rates()
    for node in spec.nodes:
        _, answer = model.latest.get(node.node_id, (0.0, PageAnswer(node.node_id, None)))
        state = redirector_state = "?"
        if supervisor is not None:
            state = _process_state(supervisor, node.stargate_name)
            redirector_state = _process_state(supervisor, node.redirector_name)
        node_rates = [r for r in rates if r.node_id == node.node_id]
        if answer.answered:
            queue = answer.document.get("queue", {})
            health = Text("up", style="green")
            conns = str(queue.get("connections", 0))
            queue_text = f"{queue.get('in_flight', 0)}/{queue.get('depth', 0)}"
        else:
            health = Text("no answer", style="red")
            conns = queue_text = "-"
        cvms.add_row(
            str(node.node_id),
            node.cvm_portal,
            state,
            health,
            conns,
            queue_text,
            f"{sum(r.iops for r in node_rates):.0f}",
            f"{sum(r.read_mbps + r.write_mbps for r in node_rates):.1f}",
            redirector_state,
        )
    vdisks = Table(title="vDisks", expand=fill_width)
    vdisk_columns = ("vDisk", "VM", "home", "served by", "IOPS", "read MB/s", "write MB/s")
    for column in (*vdisk_columns, "lat mean", "lat p99", "conns", "qd"):
        vdisks.add_column(column)
    by_vdisk = {r.vdisk_id: r for r in rates if r.state == "owned"}
    for info in list_vdisks(supervisor.directory if supervisor else "."):
        row = by_vdisk.get(info.vdisk_id)
        home = str(info.home_node) if info.home_node is not None else "-"
        if row is None:
            vdisks.add_row(info.vdisk_id, info.vm or "-", home, "-", *["-"] * 7)
            continue
        served = Text(str(row.node_id), style="green" if home == str(row.node_id) else "yellow")
        vdisks.add_row(
            info.vdisk_id,
            info.vm or "-",
            home,
            served,
            f"{row.iops:.0f}",
            f"{row.read_mbps:.2f}",
            f"{row.write_mbps:.2f}",
            _fmt_us(row.mean_latency_us),
            _fmt_us(row.p99_latency_us),
            str(row.connections),
            str(row.queue_depth),
        )
    documents = [answer.document for _, answer in model.latest.values()]
    faults = Text(top_line(documents))  # faults: armed faults, initiator auditor
    clock = Text(time.strftime("%H:%M:%S  (Ctrl-C to quit)"), style="dim")
    return Group(cvms, vdisks, faults, clock)


async def run_top(
    supervisor: Supervisor,
    *,
    interval: float = 1.0,
    iterations: int | None = None,
    console: Console | None = None,
) -> None:
    """Refresh the view every ``interval`` seconds (``iterations`` times, or until Ctrl-C)."""
    model = TopModel(supervisor.spec)
    done = 0
    console = console or output_console()
    with Live(console=console, auto_refresh=False, screen=False) as live:
        while iterations is None or done < iterations:
            answers = await fetch_all(supervisor.spec, "/stats.json")
            model.update(answers, time.monotonic())
            live.update(render(model, supervisor, fill_width=console.is_terminal), refresh=True)
            done += 1
            if iterations is None or done < iterations:
                await trio.sleep(interval)
