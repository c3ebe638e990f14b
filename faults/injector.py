"""The armed faults of one stargate, and the decisions the transport asks of them.

The transport looks at `FaultInjector.armed` once per batch of PDUs; only when it is set
does it ask per PDU (`pdu_fault`), per command (`scsi_fault`) or per login (`login_fault`).
Every fault that fires is recorded (`events`) and passed to the listeners (the timeline).

    faults = server.faults
    fault = faults.add(Fault(FaultKind.BUSY, vdisk="vd1", count=3))
    faults.remove(fault.fault_id); faults.clear()
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from faults.model import (
    ACTION_KINDS,
    LOGIN_KINDS,
    PDU_KINDS,
    SCSI_KINDS,
    DropMode,
    Fault,
    FaultKind,
)
from faults.triggers import cdb_matches, now, take_shot, window_open

# PDU faults that only make sense for one kind of PDU received.
IMPLIED_PDU_OPCODES: dict[FaultKind, tuple[int, ...]] = {
    FaultKind.SWALLOW_NOP_OUT: (0x00,),
    FaultKind.SWALLOW_TMF: (0x02,),
    FaultKind.ABORT_TASK_UNSUPPORTED: (0x02,),
    FaultKind.DELAY_R2T: (0x01,),
    FaultKind.WITHHOLD_R2T: (0x01,),
}
R2T_KINDS = frozenset({FaultKind.DELAY_R2T, FaultKind.WITHHOLD_R2T})
_DROP_KINDS = frozenset({FaultKind.DROP_CONNECTION})
_NOT_READY = frozenset({FaultKind.LOGIN_NOT_READY})
LOGIN_REQUEST_OPCODE = 0x03
BLACKHOLE_ONLY = frozenset({DropMode.BLACKHOLE})
ABORT_TASK_FUNCTION = 1  # RFC 7143 11.5.1

log = logging.getLogger(__name__)

# Performs an immediate action (async logout, drops, unit attentions, network pause) at the
# server and says what it did.
ActionPerformer = Callable[[Fault], str]

MAX_EVENTS = 10_000
ACTION_POLL = 0.05  # how often timed actions (async logout at T...) are checked


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One firing of a fault."""

    time: float
    fault_id: int
    kind: str
    vdisk: str | None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "fault_id": self.fault_id,
            "kind": self.kind,
            "vdisk": self.vdisk,
            "detail": self.detail,
        }


@dataclass
class FaultInjector:
    armed: bool = False  # the transport's one check: any fault present at all
    faults: dict[int, Fault] = field(default_factory=dict)
    events: deque[FaultEvent] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    listeners: list[Callable[[FaultEvent], None]] = field(default_factory=list)
    # Given by the cluster: is this vDisk served away from its home CVM right now?
    is_failed_over: Callable[[str], bool] = field(default=lambda vdisk_id: False)
    network_paused: bool = False
    _rngs: dict[int, random.Random] = field(default_factory=dict)
    _wakeup: trio.Event = field(default_factory=trio.Event)

    # -- the API ------------------------------------------------------------------------

    def add(self, fault: Fault) -> Fault:
        fault.added_at = now()
        self.faults[fault.fault_id] = fault
        self._rngs[fault.fault_id] = random.Random(fault.seed)
        self.armed = True
        self._wakeup.set()
        log.info("fault armed: %s", fault.describe())
        return fault

    def add_all(self, faults: Iterable[Fault]) -> list[Fault]:
        return [self.add(fault) for fault in faults]

    def remove(self, fault_id: int) -> bool:
        removed = self.faults.pop(fault_id, None)
        self._rngs.pop(fault_id, None)
        self.armed = bool(self.faults)
        if removed is not None and removed.kind is FaultKind.NETWORK_PAUSE:
            self.network_paused = any(
                f.kind is FaultKind.NETWORK_PAUSE and f.fired for f in self.faults.values()
            )
        return removed is not None

    def clear(self, vdisk: str | None = None) -> int:
        doomed = [f.fault_id for f in self.faults.values() if vdisk is None or f.vdisk == vdisk]
        for fault_id in doomed:
            self.remove(fault_id)
        if vdisk is None:
            self.network_paused = False
        return len(doomed)

    def list(self) -> list[Fault]:
        return list(self.faults.values())

    # -- decisions (only called while armed) --------------------------------------------

    def scsi_fault(
        self, vdisk_id: str, cdb: bytes, *, logout_pending: bool = False
    ) -> Fault | None:
        """A SCSI fault for a command; ``logout_pending``: its connection has been asked to
        log out (AsyncEvent 1) and has not yet (only then does logout_pending_fail fire)."""

        def matches(fault: Fault) -> bool:
            if fault.kind is FaultKind.LOGOUT_PENDING_FAIL and not logout_pending:
                return False
            return cdb_matches(fault, cdb)

        return self._first(SCSI_KINDS, vdisk_id, matches, f"cdb {cdb[:1].hex()}")

    def pdu_fault(
        self,
        vdisk_id: str,
        opcode: int,
        *,
        write_command: bool,
        cdb: bytes | None = None,
        tmf_function: int | None = None,
    ) -> Fault | None:
        """A PDU fault for a PDU received; a fault naming CDB opcodes, an LBA range or an
        I/O class matches only SCSI commands (``cdb``) that fit them; abort_task_unsupported
        only Task Management Requests of ``tmf_function`` ABORT TASK."""

        def matches(fault: Fault) -> bool:
            implied = IMPLIED_PDU_OPCODES.get(fault.kind)
            if implied is not None and opcode not in implied:
                return False
            if (
                fault.kind is FaultKind.ABORT_TASK_UNSUPPORTED
                and tmf_function != ABORT_TASK_FUNCTION
            ):
                return False
            if fault.kind in R2T_KINDS and not write_command:
                return False
            wants_cdb = bool(fault.opcodes) or fault.lba is not None or fault.io is not None
            if wants_cdb and (cdb is None or not cdb_matches(fault, cdb)):
                return False
            return not fault.pdu_opcodes or opcode in fault.pdu_opcodes

        return self._first(PDU_KINDS, vdisk_id, matches, f"pdu opcode {opcode:#04x}")

    def login_fault(self, vdisk_id: str | None) -> Fault | None:
        """The login fault for a Normal login to ``vdisk_id``; None or "": a discovery
        login, which only an unscoped login_not_ready refuses (no target is named)."""
        if not vdisk_id:
            return self._first(_NOT_READY, "", lambda fault: True, "discovery login")
        return self._first(LOGIN_KINDS, vdisk_id, lambda fault: True, "login")

    def login_drop(
        self, vdisk_id: str | None, modes: frozenset[DropMode] = BLACKHOLE_ONLY
    ) -> Fault | None:
        """A ``drop_connection`` fault (of one of ``modes``) that fires on this new login:
        the Login Request is a PDU received, so it counts as one match. ``vdisk_id`` None
        or "" is a discovery login: only a fault scoped to every vDisk takes it."""

        def matches(fault: Fault) -> bool:
            if fault.mode not in modes:
                return False
            if fault.opcodes or fault.lba is not None or fault.io is not None:
                return False  # waits for a SCSI command that fits
            return not fault.pdu_opcodes or LOGIN_REQUEST_OPCODE in fault.pdu_opcodes

        return self._first(_DROP_KINDS, vdisk_id or "", matches, "at login")

    def still_on(self, fault: Fault) -> bool:
        """Is ``fault`` still armed (not cleared, not expired)? A fault whose count is
        used up counts as on: what it did (a blackholed login) stays done."""
        if fault.count is not None and fault.fired >= fault.count:
            return True
        if fault.fault_id not in self.faults:
            return False
        return not window_open(fault, now())[1]

    def _first(
        self,
        kinds: frozenset[FaultKind],
        vdisk_id: str,
        matches: Callable[[Fault], bool],
        detail: str,
    ) -> Fault | None:
        moment = now()
        for fault in list(self.faults.values()):
            if fault.kind not in kinds or (fault.vdisk is not None and fault.vdisk != vdisk_id):
                continue
            open_now, expired = window_open(fault, moment)
            if expired:
                self.remove(fault.fault_id)
                continue
            if not open_now or not matches(fault):
                continue
            if fault.only_failed_over and not self.is_failed_over(vdisk_id):
                continue
            if take_shot(fault, self._rngs[fault.fault_id]):
                self.record(fault, vdisk_id or fault.vdisk, detail)
                return fault
        return None

    def record(self, fault: Fault, vdisk_id: str | None, detail: str = "") -> None:
        event = FaultEvent(now(), fault.fault_id, fault.kind.value, vdisk_id, detail)
        self.events.append(event)
        if fault.count is not None and fault.fired >= fault.count:
            self.remove(fault.fault_id)
        for listener in self.listeners:
            listener(event)

    # -- immediate actions ----------------------------------------------------------------

    async def run_actions(self, perform: ActionPerformer) -> None:
        """Fire action faults once their time comes, by ``perform`` (the server's actions,
        a task of its nursery)."""
        while True:
            with trio.move_on_after(ACTION_POLL):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            self.fire_due_actions(perform)

    def fire_due_actions(self, perform: ActionPerformer) -> None:
        moment = now()
        for fault in list(self.faults.values()):
            if fault.kind not in ACTION_KINDS:
                continue
            open_now, expired = window_open(fault, moment)
            if fault.kind is FaultKind.NETWORK_PAUSE and fault.fired:
                if expired:  # the pause lasted `duration`: the network comes back
                    self.network_paused = False
                    self.remove(fault.fault_id)
                continue
            if expired:
                self.remove(fault.fault_id)
                continue
            if not open_now:
                continue
            if fault.only_failed_over and not (
                fault.vdisk is not None and self.is_failed_over(fault.vdisk)
            ):
                continue
            fault.fired += 1
            if fault.kind is not FaultKind.NETWORK_PAUSE:
                fault.count = fault.fired  # actions fire once
            detail = perform(fault)
            self.record(fault, fault.vdisk, detail)
