"""The fault control endpoints of a stargate's HTTP page (cluster CVM or `stargate target
--http`). Applying or clearing a fault never restarts anything or drops a session by itself.

GET    /faults                  armed faults, recent firings, network state (JSON)
POST   /faults                  arm one fault (a JSON object) or several (a JSON list)
DELETE /faults[?vdisk=ID]       clear all faults (of one vDisk)
DELETE /faults/<id>             clear one fault
GET    /auditor                 the initiator auditor's findings
GET    /forensics               this stargate's forensics events (logins, faults, I/O spans)

The page serving these checks the control token first (control.control_token);
every field of a fault is range-checked (Fault.validate): a bad one is a 400 naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from control.http import HttpRequest, HttpResponse
from faults.auditor import InitiatorAuditor
from faults.forensics import Forensics
from faults.injector import FaultInjector
from faults.model import Fault

_ONE_FAULT_RE = re.compile(r"^/faults/(\d+)$")
RECENT_EVENTS = 200


def faults_document(injector: FaultInjector) -> dict[str, Any]:
    return {
        "faults": [fault.redacted() for fault in injector.list()],
        "events": [event.to_dict() for event in list(injector.events)[-RECENT_EVENTS:]],
        "network_paused": injector.network_paused,
    }


def stargate_fault_error(fault: Fault) -> str | None:
    """Why a stargate cannot apply ``fault``; None when it can."""
    if fault.portal == "self":
        return "portal self (a redirect loop) is for a redirector; give a stargate HOST:PORT"
    return None


async def handle_fault_request(
    injector: FaultInjector,
    request: HttpRequest,
    forensics: Forensics | None = None,
    *,
    refuse: Callable[[Fault], str | None] | None = None,
) -> HttpResponse | None:
    """Answer a /faults, /auditor or /forensics request; None for any other path.
    ``refuse`` says why a fault cannot be armed here (a redirector takes login faults)."""
    path = request.path
    if path == "/auditor" and request.method == "GET":
        auditor = forensics.auditor if forensics is not None else InitiatorAuditor()
        return HttpResponse.json(auditor.document())
    if path == "/forensics" and request.method == "GET":
        events = forensics.document() if forensics is not None else {"events": []}
        return HttpResponse.json(events)
    if path != "/faults" and _ONE_FAULT_RE.match(path) is None:
        return None
    if request.method == "GET":
        return HttpResponse.json(faults_document(injector))
    if request.method == "POST" and path == "/faults":
        try:
            document = json.loads(request.body or b"null")
            items = document if isinstance(document, list) else [document]
            faults = [Fault.from_dict(item) for item in items]
        except (ValueError, TypeError, AttributeError, RecursionError) as error:
            return HttpResponse.json({"error": f"bad fault: {error}"}, 400)
        for fault in faults:
            reason = (refuse or stargate_fault_error)(fault)
            if reason is not None:
                return HttpResponse.json({"error": reason}, 400)
        added = injector.add_all(faults)
        return HttpResponse.json({"added": [fault.redacted() for fault in added]})
    if request.method == "DELETE":
        match = _ONE_FAULT_RE.match(path)
        if match is not None:
            removed = injector.remove(int(match.group(1)))
            return HttpResponse.json({"removed": int(removed)}, 200 if removed else 404)
        return HttpResponse.json({"removed": injector.clear(request.query_value("vdisk"))})
    return HttpResponse.json({"error": f"method {request.method} not allowed"}, 405)
