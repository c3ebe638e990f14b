"""A stargate's HTTP page (port 2009, like AHV's): statistics and the cluster's controls.

GET  /stats.json                    this CVM, its queue, per-vDisk counters (JSON)
GET  /metrics                       the same counters as Prometheus text
GET  /vdisks                        every vDisk of the cluster: owner record, served here?
POST /control/vdisks/<id>/release   stop serving it: drain, drop connections, close
POST /control/vdisks/<id>/logout    AsyncEvent 1 to its sessions (?seconds=N, 0..65535,
                                    default 5), dropped after that time (the redirector's
                                    failback)

Every POST/PUT/DELETE needs the cluster's control token (control_token.py); an unknown
vDisk is 404, a parameter out of range 400, naming the problem.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any

from control.control_token import check_control, cluster_token, cluster_token_file
from control.fault_summary import stats_section
from control.faults_api import handle_fault_request
from control.http import HttpRequest, HttpResponse
from stargate.stats import LATENCY_BUCKET_BOUNDS_US
from topology.ownership import read_record
from topology.spec import list_vdisks

if TYPE_CHECKING:
    from cluster.cvm import ClusterStargate

_CONTROL_RE = re.compile(r"^/control/vdisks/([^/]+)/(release|logout)$")
DEFAULT_LOGOUT_SECONDS = 5
MAX_LOGOUT_SECONDS = 0xFFFF  # AsyncEvent 1 carries the time in Parameter3, 16 bits
MAX_BY_LENGTH = 64
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StatsPage:
    def __init__(self, cvm: ClusterStargate) -> None:
        self.cvm = cvm
        self.token_file = cluster_token_file(cvm.paths.root)
        self.token = cluster_token(cvm.paths.root)

    async def handle(self, request: HttpRequest) -> HttpResponse:
        denied = check_control(request, self.token, where=str(self.token_file))
        if denied is not None:
            return denied
        # /faults, /auditor, /forensics: faults' endpoints.
        faulted = await handle_fault_request(self.cvm.server.faults, request, self.cvm.forensics)
        if faulted is not None:
            return faulted
        if request.method == "GET":
            if request.path in ("/stats.json", "/"):
                return HttpResponse.json(self.stats_document())
            if request.path == "/metrics":
                return HttpResponse.text(
                    prometheus_text(self.stats_document()), content_type=PROMETHEUS_CONTENT_TYPE
                )
            if request.path == "/vdisks":
                return HttpResponse.json(self.vdisks_document())
            return HttpResponse.json({"error": f"no page {request.path}"}, 404)
        if request.method == "POST":
            match = _CONTROL_RE.match(request.path)
            if match is None:
                return HttpResponse.json({"error": f"no control {request.path}"}, 404)
            return await self.control(request, *match.groups())
        return HttpResponse.json({"error": f"method {request.method} not allowed"}, 405)

    async def control(self, request: HttpRequest, vdisk_id: str, action: str) -> HttpResponse:
        if not self.cvm.paths.vdisk_meta_file(vdisk_id).is_file():
            return HttpResponse.json({"error": f"no vDisk {vdisk_id!r} in this cluster"}, 404)
        if action == "release":
            by = request.query_value("by", "?") or "?"
            if len(by) > MAX_BY_LENGTH or not by.isprintable():
                return HttpResponse.json(
                    {"error": f"by must be at most {MAX_BY_LENGTH} printable characters"}, 400
                )
            return HttpResponse.json(await self.cvm.release(vdisk_id, by=by))
        text = request.query_value("seconds")
        seconds = DEFAULT_LOGOUT_SECONDS if text is None else _int_or_none(text)
        if seconds is None or not 0 <= seconds <= MAX_LOGOUT_SECONDS:
            return HttpResponse.json(
                {"error": f"seconds must be an integer 0..{MAX_LOGOUT_SECONDS}, got {text!r}"},
                400,
            )
        asked = self.cvm.request_logout(vdisk_id, seconds)
        return HttpResponse.json({"vdisk": vdisk_id, "sessions_asked": asked})

    # -- documents --------------------------------------------------------------------------

    def stats_document(self) -> dict[str, Any]:
        cvm = self.cvm
        # Every vDisk this stargate served since it started; "released" once it moved away.
        per_vdisk: dict[str, dict[str, object]] = {
            vdisk_id: {
                **stats.snapshot(),
                "state": "released",
                "serving": False,
                "epoch": None,
                "queued_waiting_now": 0,
            }
            for vdisk_id, stats in cvm.vdisk_stats.items()
        }
        for vdisk_id, live in cvm.server.stats().items():
            per_vdisk.setdefault(vdisk_id, {}).update(live)
        for claim in list(cvm.claims.values()):
            entry = per_vdisk.setdefault(claim.vdisk_id, {"vdisk_id": claim.vdisk_id})
            entry["state"] = claim.state.value
            entry["epoch"] = claim.fence.record.epoch if claim.fence else None
            # Read from the record now: a stargate that was stopped never claims to serve
            # a vDisk taken over meanwhile, even before its watcher has noticed.
            entry["serving"] = claim.may_execute()
        for vdisk_id, entry in per_vdisk.items():  # who serves it now, as the record says
            record = read_record(cvm.paths.ownership_file(vdisk_id))
            entry["owner_node"] = record.node_id if record and record.claimed else None
            entry["owner_epoch"] = record.epoch if record else 0
        return {
            "node": cvm.node_id,
            "pid": os.getpid(),
            "address": cvm.node.cvm_address,
            "port": cvm.server.port,
            "advertised_portal": cvm.node.cvm_portal,
            "uptime_s": time.time() - cvm.started,
            "time": time.time(),
            "queue": cvm.server.queue_stats(),
            **stats_section(cvm.server.faults, cvm.forensics),  # faults
            "vdisks": per_vdisk,
        }

    def vdisks_document(self) -> list[dict[str, Any]]:
        cvm = self.cvm
        stats = cvm.server.stats()
        document = []
        for info in list_vdisks(cvm.paths.root):
            record = read_record(cvm.paths.ownership_file(info.vdisk_id))
            claim = cvm.claims.get(info.iqn)
            fence = claim.fence if claim is not None and claim.may_execute() else None
            counters = stats.get(info.vdisk_id, {})
            document.append(
                {
                    **info.to_json(),
                    "owner_node": record.node_id if record and record.claimed else None,
                    "epoch": record.epoch if record else 0,
                    "state": claim.state.value if claim else None,
                    # The fence, compared with the record at this moment (not the state).
                    "serving": fence is not None,
                    "serving_epoch": fence.record.epoch if fence is not None else None,
                    "connections": counters.get("connections", 0),
                }
            )
        return document


def _int_or_none(text: str) -> int | None:
    text = text.strip()
    if not text.isascii() or not text.lstrip("-").isdigit() or len(text) > 12:
        return None
    return int(text)


# -- Prometheus text -------------------------------------------------------------------------

_COUNTERS = {
    "reads": "SCSI read commands completed",
    "writes": "SCSI write commands completed",
    "other_commands": "other SCSI commands completed",
    "bytes_read": "bytes read",
    "bytes_written": "bytes written",
    "errors": "commands ended with a status other than GOOD",
    "task_set_full": "commands refused with TASK SET FULL",
    "logins": "logins",
    "login_failures": "refused logins",
}
_GAUGES = {
    "queue_depth": "commands holding a queue slot now",
    "queued_waiting_now": "commands waiting for a queue slot now",
    "connections": "connections now",
    "sessions": "sessions now",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(document: dict[str, Any]) -> str:
    """The stats document in the Prometheus text exposition format (version 0.0.4)."""
    node = document["node"]
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP stargate_{name} {help_text}")
        lines.append(f"# TYPE stargate_{name} {kind}")

    vdisks: dict[str, dict[str, Any]] = document["vdisks"]
    for key, help_text in _COUNTERS.items():
        family(f"vdisk_{key}_total", "counter", help_text)
        for vdisk_id, counters in sorted(vdisks.items()):
            if key in counters:
                labels = f'node="{node}",vdisk="{_escape(vdisk_id)}"'
                lines.append(f"stargate_vdisk_{key}_total{{{labels}}} {counters[key]}")
    for key, help_text in _GAUGES.items():
        family(f"vdisk_{key}", "gauge", help_text)
        for vdisk_id, counters in sorted(vdisks.items()):
            if key in counters:
                labels = f'node="{node}",vdisk="{_escape(vdisk_id)}"'
                lines.append(f"stargate_vdisk_{key}{{{labels}}} {counters[key]}")
    family("vdisk_owned", "gauge", "1 while this stargate serves the vDisk")
    for vdisk_id, counters in sorted(vdisks.items()):
        labels = f'node="{node}",vdisk="{_escape(vdisk_id)}"'
        owned = 1 if counters.get("state") == "owned" and counters.get("serving") else 0
        lines.append(f"stargate_vdisk_owned{{{labels}}} {owned}")
    family("vdisk_latency_seconds", "histogram", "command latency, arrival to status")
    for vdisk_id, counters in sorted(vdisks.items()):
        latency = counters.get("latency")
        if not isinstance(latency, dict):
            continue
        labels = f'node="{node}",vdisk="{_escape(vdisk_id)}"'
        cumulative = 0
        for bound_us, count in zip(
            [*LATENCY_BUCKET_BOUNDS_US, None], latency["counts"], strict=True
        ):
            cumulative += count
            le = "+Inf" if bound_us is None else f"{bound_us / 1e6:g}"
            lines.append(
                f'stargate_vdisk_latency_seconds_bucket{{{labels},le="{le}"}} {cumulative}'
            )
        mean_us = latency.get("mean_us") or 0.0
        lines.append(f"stargate_vdisk_latency_seconds_sum{{{labels}}} {mean_us * cumulative / 1e6}")
        lines.append(f"stargate_vdisk_latency_seconds_count{{{labels}}} {cumulative}")
    queue = document["queue"]
    family("queue_in_flight", "gauge", "commands holding a slot of the shared queue")
    lines.append(f'stargate_queue_in_flight{{node="{node}"}} {queue["in_flight"]}')
    family("queue_depth_limit", "gauge", "slots of the shared command queue")
    lines.append(f'stargate_queue_depth_limit{{node="{node}"}} {queue["depth"]}')
    family("connections", "gauge", "iSCSI connections now")
    lines.append(f'stargate_connections{{node="{node}"}} {queue["connections"]}')
    family("uptime_seconds", "gauge", "seconds since the stargate started")
    lines.append(f'stargate_uptime_seconds{{node="{node}"}} {document["uptime_s"]:.3f}')
    return "\n".join(lines) + "\n"
