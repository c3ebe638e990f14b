"""A stargate's HTTP page (port 2009, like AHV's): statistics and the cluster's controls.

GET  /stats.json                    this CVM, its queue, per-vDisk counters (JSON)
GET  /metrics                       the same counters as Prometheus text
GET  /vdisks                        every vDisk of the cluster: owner record, served here?
GET  /h/gflags, /h/vars, /h/traces  the support pages (stargate.support_page); flags are
                                    set with POST /h/gflags?flag=value
POST /control/vdisks/<id>/release   stop serving it: drain, drop connections, close
POST /control/vdisks/<id>/logout    AsyncEvent 1 to its sessions (?seconds=N, 0..65535,
                                    default 5), dropped after that time (the redirector's
                                    failback, mode "logout")
POST /control/vdisks/<id>/kill      quiesce then kill: hold new commands, let in-flight
                                    ones finish (bounded), close the connections without
                                    an async event (failback, mode "kill")

Every POST/PUT/DELETE needs the cluster's control token (control_token.py); an unknown
vDisk is 404, a parameter out of range 400, naming the problem.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any

from cluster.metrics import CONTENT_TYPE, prometheus_text
from control.control_token import check_control, cluster_token, cluster_token_file
from control.fault_summary import stats_section
from control.faults_api import handle_fault_request
from control.flags import Flag
from control.http import HttpRequest, HttpResponse
from stargate.support_page import SupportPages
from topology.spec import list_vdisks
from topology.volume_group import VolumeGroupError, unit_target_name

if TYPE_CHECKING:
    from cluster.cvm import ClusterStargate

_CONTROL_RE = re.compile(r"^/control/vdisks/([^/]+)/(release|logout|kill)$")
DEFAULT_LOGOUT_SECONDS = 5
MAX_LOGOUT_SECONDS = 0xFFFF  # AsyncEvent 1 carries the time in Parameter3, 16 bits
MAX_BY_LENGTH = 64


class StatsPage:
    def __init__(self, cvm: ClusterStargate) -> None:
        self.cvm = cvm
        self.token_file = cluster_token_file(cvm.paths.root)
        self.token = cluster_token(cvm.paths.root)
        self.support = SupportPages(
            cvm.server, lambda: cvm.vdisk_stats, f"stargate {cvm.node_id}", cvm_flags(cvm)
        )

    async def handle(self, request: HttpRequest) -> HttpResponse:
        denied = check_control(request, self.token, where=str(self.token_file))
        if denied is not None:
            return denied
        # /faults, /auditor, /forensics: faults' endpoints.
        faulted = await handle_fault_request(self.cvm.server.faults, request, self.cvm.forensics)
        if faulted is not None:
            return faulted
        supported = self.support.handle(request)
        if supported is not None:
            return supported
        if request.method == "GET":
            if request.path in ("/stats.json", "/"):
                return HttpResponse.json(await self.stats_document())
            if request.path == "/metrics":
                document = await self.stats_document()
                return HttpResponse(200, prometheus_text(document), CONTENT_TYPE)
            if request.path == "/vdisks":
                return HttpResponse.json(await self.vdisks_document())
            return HttpResponse.json({"error": f"no page {request.path}"}, 404)
        if request.method == "POST":
            match = _CONTROL_RE.match(request.path)
            if match is None:
                return HttpResponse.json({"error": f"no control {request.path}"}, 404)
            return await self.control(request, *match.groups())
        return HttpResponse.json({"error": f"method {request.method} not allowed"}, 405)

    async def control(self, request: HttpRequest, vdisk_id: str, action: str) -> HttpResponse:
        """``vdisk_id``: a vDisk, or a volume group's virtual target by its unit id."""
        if not self.cvm.paths.vdisk_meta_file(vdisk_id).is_file() and not self._is_unit(vdisk_id):
            return HttpResponse.json({"error": f"no vDisk {vdisk_id!r} in this cluster"}, 404)
        if action == "release":
            by = request.query_value("by", "?") or "?"
            if len(by) > MAX_BY_LENGTH or not by.isprintable():
                return HttpResponse.json(
                    {"error": f"by must be at most {MAX_BY_LENGTH} printable characters"}, 400
                )
            return HttpResponse.json(await self.cvm.release(vdisk_id, by=by))
        if action == "kill":
            return HttpResponse.json(await self.cvm.release(vdisk_id, by="failback", notify=False))
        text = request.query_value("seconds")
        seconds = DEFAULT_LOGOUT_SECONDS if text is None else _int_or_none(text)
        if seconds is None or not 0 <= seconds <= MAX_LOGOUT_SECONDS:
            return HttpResponse.json(
                {"error": f"seconds must be an integer 0..{MAX_LOGOUT_SECONDS}, got {text!r}"},
                400,
            )
        asked = self.cvm.request_logout(vdisk_id, seconds)
        return HttpResponse.json({"vdisk": vdisk_id, "sessions_asked": asked})

    def _is_unit(self, unit_id: str) -> bool:
        try:
            return self.cvm.groups.target_of_unit(unit_id) is not None
        except VolumeGroupError:
            return False

    # -- documents --------------------------------------------------------------------------

    async def stats_document(self) -> dict[str, Any]:
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
            # A volume group's virtual target: each of its LUNs' vDisks is in this state.
            for vdisk_id in cvm.vdisks_of(claim):
                entry = per_vdisk.setdefault(vdisk_id, {"vdisk_id": vdisk_id})
                entry["state"] = claim.state.value
                entry["epoch"] = claim.fence.record.epoch if claim.fence else None
                # Read from the record now: a stargate that was stopped never claims to
                # serve a vDisk taken over meanwhile, even before its watcher has noticed.
                entry["serving"] = claim.may_execute()
        units = {vdisk_id: cvm.unit_of(vdisk_id) for vdisk_id in per_vdisk}
        records = await cvm.ownership_records(sorted(set(units.values())))
        for vdisk_id, entry in per_vdisk.items():  # who serves it now, as the record says
            record = records.get(units[vdisk_id])
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

    async def vdisks_document(self) -> list[dict[str, Any]]:
        cvm = self.cvm
        stats = cvm.server.stats()
        document = []
        infos = list_vdisks(cvm.paths.root)
        # A volume group's disk is owned and served with its virtual target.
        units = {info.vdisk_id: cvm.unit_of(info.vdisk_id) for info in infos}
        records = await cvm.ownership_records(sorted(set(units.values())))
        for info in infos:
            unit = units[info.vdisk_id]
            record = records.get(unit)
            claim = cvm.claims.get(unit_target_name(unit))
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


def cvm_flags(cvm: ClusterStargate) -> list[Flag]:
    """The ownership protocol's timers: fixed, since every CVM must agree on them (the
    release timeout bounds how long a take-over waits for the previous owner)."""
    agreed = "the cluster's CVMs must agree on it (cluster.json, at start)"
    return [
        Flag(
            "release_timeout",
            "seconds a previous owner gets to release a vDisk before a take-over",
            lambda: cvm.release_timeout,
            fixed_because=agreed,
        ),
        Flag(
            "drain_timeout",
            "seconds a releasing owner lets in-flight commands finish",
            lambda: cvm.drain_timeout,
            fixed_because="set at start",
        ),
        Flag(
            "park_limit",
            "seconds a command of a vDisk being acquired may wait before it is answered BUSY",
            lambda: cvm.gate.park_limit,
            fixed_because="follows the release timeout",
        ),
        Flag(
            "acquire_time_limit",
            "seconds an acquisition tries before it gives up",
            lambda: cvm.acquire_time_limit,
            fixed_because=agreed,
        ),
    ]


def _int_or_none(text: str) -> int | None:
    text = text.strip()
    if not text.isascii() or not text.lstrip("-").isdigit() or len(text) > 12:
        return None
    return int(text)
