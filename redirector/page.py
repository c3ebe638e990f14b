"""The redirector's HTTP page, on the port a CVM's page uses, at the redirector's address
(``http://<redirector address>:<http_port>``): its login faults, its counters, its flags.

GET    /faults, POST /faults, DELETE /faults[/<id>]   as on a stargate (control.faults_api)
GET    /stats.json                                    redirects, refusals, sessions
GET    /h/gflags, POST /h/gflags?flag=value           its tunables; set live (redirector.flags)
GET    /h/vars?regex=RE                               its counters as ``name value`` lines

POST and DELETE need the cluster's control token (control.control_token).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from control.control_token import check_control, cluster_token, cluster_token_file
from control.faults_api import handle_fault_request
from control.flags import gflags_page, vars_page
from control.http import HttpRequest, HttpResponse
from redirector.faults import redirector_fault_error
from redirector.flags import redirector_flags, redirector_vars

if TYPE_CHECKING:
    from redirector.app import Redirector


class RedirectorPage:
    def __init__(self, redirector: Redirector) -> None:
        self.redirector = redirector
        self.server = redirector.server
        self.flags = redirector_flags(redirector)
        self.token_file = cluster_token_file(self.server.config.directory)
        self.token = cluster_token(self.server.config.directory)

    async def handle(self, request: HttpRequest) -> HttpResponse:
        denied = check_control(request, self.token, where=str(self.token_file))
        if denied is not None:
            return denied
        answer = await handle_fault_request(
            self.server.faults.injector, request, refuse=redirector_fault_error
        )
        if answer is not None:
            return answer
        title = f"redirector {self.server.config.node_id}"
        if request.path == "/h/gflags":
            return gflags_page(self.flags, request, title)
        if request.path == "/h/vars":
            return vars_page(redirector_vars(self.redirector), request)
        if request.path == "/stats.json" and request.method == "GET":
            stats = dataclasses.asdict(self.server.stats)
            dsip = self.redirector.dsip
            stats["dsip"] = {
                "portal": self.server.config.spec.dsip_portal,
                "leading": dsip.leading,
                "away": dsip.placement.away(),  # virtual targets served away from home
                **dataclasses.asdict(dsip.server.stats),
                "refused_unattached": dsip.server.refused_unattached,
            }
            return HttpResponse.json({"node": self.server.config.node_id, **stats})
        return HttpResponse.json({"error": f"no page {request.path}"}, 404)
