"""What a stargate records for failover forensics: logins and session ends, faults fired,
and per-vDisk I/O activity spans (sampled from the counters, so the transport pays nothing).
Events are kept in memory and, given a path, appended to a JSON-lines file that
`stargate timeline` merges with the other CVMs' files and the redirectors' logs.

    {"t": 1795481587.39, "node": 1, "event": "login", "vdisk": "vd1", "isid": "0x...", ...}
    {"t": ..., "node": 1, "event": "io", "vdisk": "vd1", "start": ..., "end": ..., "ios": 812}
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import trio

from faults.auditor import InitiatorAuditor
from faults.injector import FaultEvent


class _Target(Protocol):
    @property
    def vdisk_id(self) -> str: ...


class _Session(Protocol):
    """What the recorder reads of a target's session (stargate.session.Session)."""

    initiator_name: str
    isid: int
    tsih: int

    @property
    def target(self) -> _Target | None: ...


class _Connection(Protocol):
    """What it reads of the session's connection when the session ends."""

    @property
    def cmd_sn_out_of_window(self) -> int: ...

    @property
    def logout_requested_at(self) -> float | None: ...


class _Counters(Protocol):
    reads: int
    writes: int
    other_commands: int


class _CountedVDisk(Protocol):
    @property
    def vdisk_id(self) -> str: ...

    @property
    def stats(self) -> _Counters: ...


class _Server(Protocol):
    """What the I/O sampler reads of a server (stargate.server.StargateServer)."""

    @property
    def registry(self) -> Iterable[_CountedVDisk]: ...


log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 0.02  # resolution of the I/O gaps measured
SPAN_IDLE = 0.25  # no completion for this long ends an activity span
SPAN_PIECE = 0.5  # an activity span is written at least this often
MAX_EVENTS = 20_000


class Forensics:
    def __init__(self, node: int | str = 0, path: Path | None = None) -> None:
        self.node = node
        self.path = path
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.auditor = InitiatorAuditor()
        self._spans: dict[str, list[float | int]] = {}  # vdisk: [start, end, ios]
        self._completed: dict[str, int] = {}

    def emit(self, event: str, **fields: Any) -> None:
        record = {"t": time.time(), "node": self.node, "event": event, **fields}
        self.events.append(record)
        if self.path is not None:
            try:
                with self.path.open("a") as out:
                    out.write(json.dumps(record) + "\n")
            except OSError as error:
                log.warning("cannot write forensics to %s: %s", self.path, error)

    # -- hooks: a `FaultInjector` listener and a server's session observer --------------

    def fault_fired(self, event: FaultEvent) -> None:
        self.emit("fault", vdisk=event.vdisk, fault_id=event.fault_id, kind=event.kind,
                  detail=event.detail)  # fmt: skip

    def session_started(self, session: _Session, connection: _Connection) -> None:
        if session.target is None:
            return
        self.auditor.login(session.initiator_name, session.target.vdisk_id, session.isid)
        self.emit("login", vdisk=session.target.vdisk_id, initiator=session.initiator_name,
                  isid=f"{session.isid:#014x}", tsih=session.tsih)  # fmt: skip

    def session_ended(self, session: _Session, connection: _Connection, reason: str) -> None:
        if session.target is None:
            return
        vdisk_id = session.target.vdisk_id
        self.auditor.session_ended(
            session.initiator_name,
            vdisk_id,
            session.isid,
            reason,
            out_of_window=connection.cmd_sn_out_of_window,
        )
        self.emit("session_end", vdisk=vdisk_id, initiator=session.initiator_name,
                  isid=f"{session.isid:#014x}", reason=reason,
                  logout_requested_at=connection.logout_requested_at)  # fmt: skip

    # -- I/O activity ------------------------------------------------------------------

    async def sample_io(self, server: _Server) -> None:
        """Turn the per-vDisk completion counters into activity spans."""
        while True:
            await trio.sleep(SAMPLE_INTERVAL)
            self.sample_once(server, time.time())

    def sample_once(self, server: _Server, now: float) -> None:
        for target in server.registry:
            stats = target.stats
            completed = stats.reads + stats.writes + stats.other_commands
            before = self._completed.get(target.vdisk_id)
            self._completed[target.vdisk_id] = completed
            if before is None or completed == before:
                continue
            span = self._spans.get(target.vdisk_id)
            if span is None:
                self._spans[target.vdisk_id] = [now, now, completed - before]
            else:
                span[1] = now
                span[2] = int(span[2]) + completed - before
        for vdisk_id, span in list(self._spans.items()):
            # Long spans are written in pieces: a SIGKILL loses at most the last piece.
            if now - float(span[1]) >= SPAN_IDLE or now - float(span[0]) >= SPAN_PIECE:
                self._close_span(vdisk_id)

    def _close_span(self, vdisk_id: str) -> None:
        start, end, ios = self._spans.pop(vdisk_id)
        self.emit("io", vdisk=vdisk_id, start=start, end=end, ios=ios)

    def flush(self) -> None:
        for vdisk_id in list(self._spans):
            self._close_span(vdisk_id)

    def document(self) -> dict[str, Any]:
        return {"node": self.node, "events": list(self.events)}
