"""The HTTP page of a plain `stargate target --http HOST:PORT`: statistics, the fault
control endpoints and the support pages /h/gflags, /h/vars, /h/traces (the cluster's CVMs
serve the same endpoints on their own page).
Mutating requests need the control token of ``--control-token-file``."""

from __future__ import annotations

from pathlib import Path

from control.control_token import check_control
from control.faults_api import handle_fault_request
from control.http import HttpRequest, HttpResponse
from faults.forensics import Forensics
from stargate.server import StargateServer
from stargate.stats import VDiskStats
from stargate.support_page import SupportPages


class TargetPage:
    def __init__(
        self,
        server: StargateServer,
        token: str,
        token_file: Path,
        forensics: Forensics | None = None,
    ) -> None:
        self.server = server
        self.token = token
        self.token_file = token_file
        self.forensics = forensics
        self.support = SupportPages(server, self.vdisk_stats, f"stargate {server.config.host}")

    def vdisk_stats(self) -> dict[str, VDiskStats]:
        """Every LUN's vDisk's counters (its traces too)."""
        return {lun.vdisk_id: lun.stats for target in self.server.registry for lun in target.luns}

    async def handle(self, request: HttpRequest) -> HttpResponse:
        denied = check_control(request, self.token, where=str(self.token_file))
        if denied is not None:
            return denied
        answer = await handle_fault_request(self.server.faults, request, self.forensics)
        if answer is not None:
            return answer
        supported = self.support.handle(request)
        if supported is not None:
            return supported
        if request.method == "GET" and request.path in ("/", "/stats.json"):
            return HttpResponse.json(
                {"vdisks": self.server.stats(), "queue": self.server.queue_stats()}
            )
        return HttpResponse.json({"error": f"no page {request.path}"}, 404)
