"""The redirector's HTTP page, on the port a CVM's page uses, at the redirector's address
(``http://<redirector address>:<http_port>``): its login faults and its counters.

GET    /faults, POST /faults, DELETE /faults[/<id>]   as on a stargate (control.faults_api)
GET    /stats.json                                    redirects, refusals, sessions

POST and DELETE need the cluster's control token (control.control_token).
"""

from __future__ import annotations

import dataclasses

from control.control_token import check_control, cluster_token, cluster_token_file
from control.faults_api import handle_fault_request
from control.http import HttpRequest, HttpResponse
from redirector.faults import redirector_fault_error
from redirector.server import RedirectorServer


class RedirectorPage:
    def __init__(self, server: RedirectorServer) -> None:
        self.server = server
        self.token_file = cluster_token_file(server.config.directory)
        self.token = cluster_token(server.config.directory)

    async def handle(self, request: HttpRequest) -> HttpResponse:
        denied = check_control(request, self.token, where=str(self.token_file))
        if denied is not None:
            return denied
        answer = await handle_fault_request(
            self.server.faults.injector, request, refuse=redirector_fault_error
        )
        if answer is not None:
            return answer
        if request.path == "/stats.json" and request.method == "GET":
            stats = dataclasses.asdict(self.server.stats)
            return HttpResponse.json({"node": self.server.config.node_id, **stats})
        return HttpResponse.json({"error": f"no page {request.path}"}, 404)
