"""Login faults at a redirector: fail a login with a chosen status, redirect somewhere else
(for good or not), or to the redirector itself (a redirect loop).

A redirector has no HTTP page; its faults live in DIR/faults/redirector-<node>.json (a JSON
list of faults in `stargate.faults.model` shape), written by `stargate fault add
--redirector N`, re-read whenever the file changes (one stat per login).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from iscsicore.login import Redirect, Refuse, Resolution
from stargate.faults.injector import FaultInjector
from stargate.faults.login import PERMANENT_REDIRECT, login_status, with_tpgt
from stargate.faults.model import Fault, FaultKind

log = logging.getLogger(__name__)


def redirector_faults_file(directory: Path, node_id: int) -> Path:
    return directory / "faults" / f"redirector-{node_id}.json"


class RedirectorFaults:
    def __init__(self, directory: Path, node_id: int) -> None:
        self.path = redirector_faults_file(directory, node_id)
        self.injector = FaultInjector()
        self._stamp: int | None = None
        self._spent: set[int] = set()
        self._known: set[int] = set()

    def _reload(self) -> None:
        try:
            stamp = self.path.stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            text = self.path.read_text() if stamp is not None else "[]"
            wanted = [Fault.from_dict(document) for document in json.loads(text or "[]")]
        except (OSError, ValueError, TypeError) as error:
            log.warning("ignoring redirector faults in %s: %s", self.path, error)
            return
        # Faults already armed keep their counters (a count=1 fault that fired stays spent);
        # those gone from the file are disarmed, new ones armed.
        ids = {fault.fault_id for fault in wanted}
        self._spent = {i for i in self._spent if i in ids}
        for fault_id in [i for i in self.injector.faults if i not in ids]:
            self.injector.remove(fault_id)
        for fault in wanted:
            if fault.fault_id not in self.injector.faults and fault.fault_id not in self._spent:
                self.injector.add(fault)

    def _note_spent(self) -> None:
        """Remember faults that used up their count (the injector forgets them)."""
        self._spent |= self._known - set(self.injector.faults)
        self._known = set(self.injector.faults) | self._spent

    def resolve(self, vdisk_id: str) -> Resolution | None:
        """The faulted answer to a login for ``vdisk_id``; None to decide as usual."""
        self._reload()
        self._known |= set(self.injector.faults)
        if not self.injector.armed:
            return None
        fault = self.injector.login_fault(vdisk_id)
        self._note_spent()
        if fault is None:
            return None
        if fault.kind is FaultKind.LOGIN_REDIRECT:
            return Redirect(with_tpgt(fault.portal), permanent=fault.status == PERMANENT_REDIRECT)
        if fault.kind is FaultKind.LOGIN_FAIL:
            return Refuse(login_status(fault.status))
        return None
