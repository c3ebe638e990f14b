"""A stargate's 2009-style support pages, as Nutanix's support scripts read them:

GET  /h/gflags                    every tunable of this stargate (HTML; ?format=json)
POST /h/gflags?flag=value&...     set those that can change live (the control token)
GET  /h/vars?regex=RE             counters as ``name value`` lines, names matching RE
GET  /h/traces?vdisk=ID&n=N       the last operations of each vDisk with their phases

Served by both `stargate target --http` and a cluster's CVM page (port 2009).
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from control.flags import (
    Flag,
    FlagSet,
    bad_format,
    gflags_page,
    html_page,
    int_in,
    seconds_in,
    vars_page,
    wants_json,
)
from control.http import HttpRequest, HttpResponse
from faults.injector import ACTION_POLL, MAX_EVENTS
from stargate.server import StargateServer
from stargate.stats import VDiskStats
from stargate.traces import MAX_TRACE_DEPTH, TRACE_SETTINGS, entry_json, resized
from stargate.transport.config import SOLE_TURN_BUDGET, TURN_BUDGET

MAX_TIMER_SECONDS = 3600.0
MAX_BUSY_POLL_US = 10_000.0
MAX_LOG_LINES_PER_SECOND = 10_000

StatsSource = Callable[[], Mapping[str, VDiskStats]]  # every vDisk this process served


def stargate_flags(
    server: StargateServer, stats: StatsSource, extra: Iterable[Flag] = ()
) -> FlagSet:
    config = server.config
    throttle = server.policy.throttle
    timers = config.timers

    def new_connections(name: str, help_text: str) -> Flag:
        """A connection timer: connections take the server's timers when they open."""

        def apply(value: float) -> None:
            changes: dict[str, Any] = {name: value}
            config.timers = dataclasses.replace(config.timers, **changes)

        return Flag(
            name,
            f"{help_text} (new connections take it; open ones keep theirs)",
            lambda: getattr(config.timers, name),
            seconds_in(0.0, MAX_TIMER_SECONDS),
            apply,
        )

    def attribute(target: object, attr: str) -> Callable[[Any], None]:
        return lambda value: setattr(target, attr, value)

    def set_trace_depth(depth: int) -> None:
        TRACE_SETTINGS.depth = depth
        for vdisk_stats in stats().values():
            vdisk_stats.traces = resized(vdisk_stats.traces, depth)

    return FlagSet(
        [
            Flag(
                "queue_depth",
                "slots of the command queue shared by every session",
                lambda: server.queue.depth,
                fixed_because="the queue and each session's share are sized at start",
            ),
            Flag(
                "max_buffered_bytes",
                "Data-Out buffer bytes of all commands together",
                lambda: config.max_buffered_bytes,
                fixed_because="the queue's buffer budget is sized at start",
            ),
            Flag(
                "turn_budget",
                "PDUs a connection handles per turn while other sessions are served",
                lambda: TURN_BUDGET,
                fixed_because="a constant of the transport's hot path",
            ),
            Flag(
                "sole_turn_budget",
                "PDUs per turn of a connection whose session is alone",
                lambda: SOLE_TURN_BUDGET,
                fixed_because="a constant of the transport's hot path",
            ),
            Flag(
                "eager_send_every",
                "send after this many responses within a turn (0: once per wake-up)",
                lambda: config.eager_send_every,
                fixed_because="each connection takes it when it opens",
            ),
            Flag(
                "busy_poll_us",
                "microseconds the reader hub polls for the next command before it sleeps",
                lambda: server.hub.spin_seconds * 1e6,
                seconds_in(0.0, MAX_BUSY_POLL_US, low_open=False),
                lambda value: setattr(server.hub, "spin_seconds", value / 1e6),
            ),
            Flag(
                "login_timeout",
                "seconds a login may take (new logins take it)",
                lambda: config.login_timeout,
                seconds_in(0.0, MAX_TIMER_SECONDS),
                attribute(config, "login_timeout"),
            ),
            new_connections("nop_interval", "seconds of silence before a NOP-In ping"),
            new_connections("nop_timeout", "seconds without a byte after a ping: dead"),
            new_connections("data_out_timeout", "seconds a command with a slot waits for data"),
            new_connections("pdu_timeout", "seconds for a started PDU to be complete"),
            Flag(
                "control_pdu_rate",
                "NOP-Outs, Text Requests and SNACKs per second and connection",
                lambda: timers.control_pdu_rate,
                fixed_because="each connection's token bucket is filled at start",
            ),
            Flag(
                "login_throttle_first_delay",
                "seconds before the first failed login of a name or address is answered",
                lambda: throttle.first_delay,
                seconds_in(0.0, MAX_TIMER_SECONDS, low_open=False),
                attribute(throttle, "first_delay"),
            ),
            Flag(
                "login_throttle_max_delay",
                "the most one failed login adds to the next answer",
                lambda: throttle.max_delay,
                seconds_in(0.0, MAX_TIMER_SECONDS, low_open=False),
                attribute(throttle, "max_delay"),
            ),
            Flag(
                "login_throttle_half_life",
                "seconds of quiet after which a name's failures count half",
                lambda: throttle.half_life,
                seconds_in(0.0, MAX_TIMER_SECONDS),
                attribute(throttle, "half_life"),
            ),
            Flag(
                "login_throttle_max_name_hold",
                "the longest a failing name's login is held",
                lambda: throttle.max_name_hold,
                seconds_in(0.0, MAX_TIMER_SECONDS, low_open=False),
                attribute(throttle, "max_name_hold"),
            ),
            Flag(
                "drop_log_per_second",
                "log lines a second per address about connections dropped for errors",
                lambda: server.drop_log.per_second,
                int_in(0, MAX_LOG_LINES_PER_SECOND),
                attribute(server.drop_log, "per_second"),
            ),
            Flag(
                "fault_events_kept",
                "fault events (fired, expired) kept for /faults and the timeline",
                lambda: MAX_EVENTS,
                fixed_because="the injector's event ring is sized at start",
            ),
            Flag(
                "fault_action_poll",
                "seconds between checks of timed fault actions (async logout at T...)",
                lambda: ACTION_POLL,
                fixed_because="a constant of the fault injector",
            ),
            Flag(
                "trace_depth",
                "operations each vDisk keeps for /h/traces (0: none)",
                lambda: TRACE_SETTINGS.depth,
                int_in(0, MAX_TRACE_DEPTH),
                set_trace_depth,
            ),
            *extra,
        ]
    )


# vars name -> VDiskStats attribute, for every vDisk and summed as stargate/vdisk/total/...
_VDISK_COUNTERS = {
    "read_ops": "reads",
    "write_ops": "writes",
    "other_ops": "other_commands",
    "read_bytes": "bytes_read",
    "write_bytes": "bytes_written",
    "errors": "errors",
    "task_set_full": "task_set_full",
    "queue_depth": "queue_depth",
    "queued_waiting": "queued_waiting",
    "connections": "connections",
    "sessions": "sessions",
    "logins": "logins",
    "login_failures": "login_failures",
}


def stargate_vars(
    server: StargateServer, stats: Mapping[str, VDiskStats]
) -> dict[str, int | float]:
    counters: dict[str, int | float] = {}
    totals = dict.fromkeys(_VDISK_COUNTERS, 0)
    for vdisk_id, vdisk in stats.items():
        prefix = f"stargate/vdisk/{vdisk_id}/"
        for name, attr in _VDISK_COUNTERS.items():
            value = getattr(vdisk, attr)
            counters[prefix + name] = value
            totals[name] += value
        counters[prefix + "max_queue_depth"] = vdisk.max_queue_depth
        latency = vdisk.latency
        if latency.samples:
            counters[prefix + "latency_mean_us"] = latency.total_us / latency.samples
            counters[prefix + "latency_p99_us"] = latency.percentile_us(0.99) or 0
    for name, value in totals.items():
        counters[f"stargate/vdisk/total/{name}"] = value
    for name, value in server.queue_stats().items():
        counters[f"stargate/queue/{name}"] = value
    counters["stargate/hub/passes"] = server.hub.passes
    counters["stargate/hub/spin_hits"] = server.hub.spin_hits
    counters["stargate/faults/armed"] = len(server.faults.faults)
    return counters


def traces_page(stats: Mapping[str, VDiskStats], request: HttpRequest) -> HttpResponse:
    """The newest operations first, per vDisk (``?vdisk=ID`` one, ``?n=N`` at most N)."""
    if request.method != "GET":
        return HttpResponse.json({"error": f"method {request.method} not allowed"}, 405)
    refused = bad_format(request)
    if refused is not None:
        return refused
    wanted = request.query_value("vdisk")
    if wanted is not None and wanted not in stats:
        return HttpResponse.json({"error": f"no vDisk {wanted!r} served here"}, 404)
    limit_text = request.query_value("n")
    try:
        limit = MAX_TRACE_DEPTH if limit_text is None else int_in(1, MAX_TRACE_DEPTH)(limit_text)
    except ValueError as error:
        return HttpResponse.json({"error": f"n: {error}"}, 400)
    chosen = {wanted: stats[wanted]} if wanted is not None else stats
    document = {
        vdisk_id: [entry_json(entry) for entry in reversed(vdisk.traces or ())][:limit]
        for vdisk_id, vdisk in sorted(chosen.items())
    }
    if wants_json(request):
        return HttpResponse.json({"depth": TRACE_SETTINGS.depth, "vdisks": document})
    sections = []
    columns = TRACE_COLUMNS
    head = "".join(f"<th>{name}</th>" for name in columns)
    for vdisk_id, entries in document.items():
        rows = "".join(
            "<tr>" + "".join(f"<td>{_cell(name, entry[name])}</td>" for name in columns) + "</tr>"
            for entry in entries
        )
        sections.append(f"<h2>{html.escape(vdisk_id)}</h2><table><tr>{head}</tr>{rows}</table>")
    note = (
        f"<p>Last {TRACE_SETTINGS.depth} operations per vDisk, newest first; phases in µs "
        "from the previous one: queued (a slot of the command queue), executed (the logical "
        "unit's result), status (handed to the send buffer).</p>"
    )
    return html_page("stargate: traces", note + "".join(sections))


TRACE_COLUMNS = (
    *("received", "itt", "opcode", "bytes", "status"),
    *("queued_us", "executed_us", "status_us", "latency_us"),
)


def _cell(name: str, value: Any) -> str:
    if name == "opcode":
        return f"0x{value:02x}"
    if name == "itt":
        return f"0x{value:08x}"
    if isinstance(value, float):
        return f"{value:.6f}" if name == "received" else f"{value:.1f}"
    return html.escape(str(value))


class SupportPages:
    """Routes /h/gflags, /h/vars, /h/traces for one stargate process."""

    def __init__(
        self,
        server: StargateServer,
        stats: StatsSource,
        title: str,
        extra_flags: Iterable[Flag] = (),
    ) -> None:
        self.server = server
        self.stats = stats
        self.title = title
        self.flags = stargate_flags(server, stats, extra_flags)

    def handle(self, request: HttpRequest) -> HttpResponse | None:
        """The page's answer, or None for a path that is not one of these pages."""
        if request.path == "/h/gflags":
            return gflags_page(self.flags, request, self.title)
        if request.path == "/h/vars":
            return vars_page(stargate_vars(self.server, self.stats()), request)
        if request.path == "/h/traces":
            return traces_page(self.stats(), request)
        return None
