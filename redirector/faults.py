"""Login faults at a redirector (a portal): fail a login with a chosen status, redirect it
somewhere else (for good or not) or back to the redirector itself (a redirect loop), answer
it slowly, or never (a ``drop_connection`` blackhole; ``reset``/``close`` end it instead).

The faults live in the redirector's memory, in the same `FaultInjector` a stargate uses, so
they have the same triggers (vDisk scope, count, probability, skip, time window) and are
armed, listed and cleared live through the redirector's HTTP page (`redirector.page`), by
`stargate fault add|list|clear --redirector N` or a scenario step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from faults.injector import FaultInjector
from faults.login import PERMANENT_REDIRECT, REFUSING_KINDS, login_status, with_tpgt
from faults.model import LOGIN_KINDS, DropMode, Fault, FaultKind
from iscsicore.login import Redirect, Refuse, Resolution
from iscsicore.pdu import LoginStatus

SELF_PORTAL = "self"  # login_redirect portal = the redirector's own: a redirect loop
REDIRECTOR_KINDS = LOGIN_KINDS | {FaultKind.DROP_CONNECTION}


def redirector_fault_error(fault: Fault) -> str | None:
    """Why a redirector cannot apply ``fault``; None when it can."""
    if fault.kind is FaultKind.REQUIRE_CHAP:
        return (
            "require_chap is for a stargate (a redirector authenticates no one): arm it on "
            "the CVM the redirector sends the login to (--node N)"
        )
    if fault.kind not in REDIRECTOR_KINDS:
        return (
            f"a redirector only answers logins: it takes login_fail, login_redirect, "
            f"login_delay and drop_connection faults, not {fault.kind.value}"
        )
    if fault.opcodes or fault.lba is not None or fault.io is not None or fault.pdu_opcodes:
        return "a redirector sees no SCSI command: --opcode, --lba, --io, --pdu-opcode do not apply"
    if fault.only_failed_over:
        return "--only-failed-over is for CVM faults (a redirector serves no vDisk)"
    return None


@dataclass(frozen=True)
class FaultedLogin:
    """What a fault does to one login at the redirector."""

    fault: Fault
    resolution: Resolution | None = None  # None: the redirector decides as usual
    delay: float = 0.0  # seconds before the login response goes out
    drop: DropMode | None = None  # the connection ends (reset, close) or goes dark


class RedirectorFaults:
    def __init__(self, own_portal: str, injector: FaultInjector | None = None) -> None:
        self.own_portal = own_portal  # host:port the initiators reach this redirector at
        self.injector = injector or FaultInjector()

    def decide(self, vdisk_id: str | None) -> FaultedLogin | None:
        """The fault that fires on a login for ``vdisk_id`` (None: a discovery login, which
        only an unscoped drop_connection or login_not_ready touches); None to answer as
        usual."""
        injector = self.injector
        if not injector.armed:
            return None
        dropped = self._drop(vdisk_id)
        if dropped is not None:
            return dropped
        fault = injector.login_fault(vdisk_id)
        if fault is None:
            return None
        if fault.kind in REFUSING_KINDS:
            return FaultedLogin(fault, Refuse(login_status(fault.status)))
        if fault.kind is FaultKind.LOGIN_REDIRECT:
            portal = self.own_portal if fault.portal == SELF_PORTAL else fault.portal
            redirect = Redirect(with_tpgt(portal), permanent=fault.status == PERMANENT_REDIRECT)
            return FaultedLogin(fault, redirect)
        return FaultedLogin(fault, delay=fault.delay.draw(_rng))

    def _drop(self, vdisk_id: str | None) -> FaultedLogin | None:
        fault = self.injector.login_drop(vdisk_id, frozenset(DropMode))
        if fault is None:
            return None
        # Never sent: a drop_connection login gets no answer.
        return FaultedLogin(fault, Refuse(LoginStatus.SERVICE_UNAVAILABLE), drop=fault.mode)


_rng = random.Random()
