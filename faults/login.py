"""Login faults at a stargate: fail with a chosen status, redirect (temporarily or for
good, to anywhere: to itself for a redirect loop), answer slowly, or never (a
``drop_connection`` blackhole swallows new logins of its scope while it is on); refuse
every login, discovery too, as a target not configured yet (``login_not_ready``); demand
CHAP where the target has none (``require_chap``: behind a redirect, open-iscsi #117).

The login machine's ``resolve`` is wrapped (only while a fault is armed), so the fault
decides once the initiator has said which target it wants.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import trio

from faults.channel import hold_unanswered
from faults.injector import FaultInjector
from faults.model import Fault, FaultKind
from iscsicore.chap import ChapSecrets
from iscsicore.keys import SessionType
from iscsicore.login import Accept, Redirect, Refuse, Resolution, TargetLoginConfig
from iscsicore.pdu import LoginStatus
from topology.naming import TARGET_NAME_PREFIX

PERMANENT_REDIRECT = 0x0102
REFUSING_KINDS = frozenset({FaultKind.LOGIN_FAIL, FaultKind.LOGIN_NOT_READY})


@dataclass
class _Decision:
    fault: Fault | None = None
    blackhole: Fault | None = None  # the login is never answered while this is on


class SlowLoginStream(trio.abc.Stream):
    """The login's stream, each response held back by the slow-login fault's delay."""

    def __init__(self, inner: trio.abc.Stream, decision: _Decision, faults: FaultInjector) -> None:
        self._inner = inner
        self._decision = decision
        self._faults = faults

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._decision.blackhole is not None:
            return  # nothing goes out: see `hold_swallowed_login`
        fault = self._decision.fault
        if fault is not None and fault.kind is FaultKind.LOGIN_DELAY:
            await trio.sleep(fault.delay.draw(_rng))
        await self._inner.send_all(data)

    async def hold_if_swallowed(self) -> bool:
        blackhole = self._decision.blackhole
        if blackhole is None:
            return False
        await hold_unanswered(self._inner, lambda: self._faults.still_on(blackhole))
        return True

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._inner.aclose()


def faulted_login(
    config: TargetLoginConfig, stream: trio.abc.Stream, faults: FaultInjector
) -> tuple[TargetLoginConfig, trio.abc.Stream]:
    """The login config and stream to use while faults are armed."""
    decision = _Decision()
    plain_resolve = config.resolve

    def resolve(
        initiator_name: str, target_name: str | None, session_type: SessionType
    ) -> Resolution:
        vdisk_id = (target_name or "").removeprefix(TARGET_NAME_PREFIX)
        decision.blackhole = faults.login_drop(vdisk_id)
        if decision.blackhole is not None:
            # Never sent; a refusal keeps the target from acting on the login (a cluster
            # CVM would start taking the vDisk over on an Accept).
            return Refuse(LoginStatus.SERVICE_UNAVAILABLE)
        normal = session_type is SessionType.NORMAL
        fault = faults.login_fault(vdisk_id if normal else None)
        decision.fault = fault
        if fault is not None and fault.kind in REFUSING_KINDS:
            return Refuse(login_status(fault.status))
        if fault is not None and fault.kind is FaultKind.LOGIN_REDIRECT:
            return Redirect(with_tpgt(fault.portal), permanent=fault.status == PERMANENT_REDIRECT)
        resolution = plain_resolve(initiator_name, target_name, session_type)
        if fault is not None and fault.kind is FaultKind.REQUIRE_CHAP:
            return with_chap(resolution, fault)
        return resolution

    return replace(config, resolve=resolve), SlowLoginStream(stream, decision, faults)


def with_chap(resolution: Resolution, fault: Fault) -> Resolution:
    """An accepted login made to authenticate with the fault's CHAP secrets (any mutual
    secrets the target has stay as they are); refusals and redirects unchanged."""
    if not isinstance(resolution, Accept):
        return resolution
    return replace(resolution, chap=ChapSecrets(fault.chap_user, fault.chap_secret))


def login_status(raw: int) -> LoginStatus:
    try:
        return LoginStatus(raw)
    except ValueError:
        return LoginStatus.NOT_FOUND if raw >> 8 == 2 else LoginStatus.SERVICE_UNAVAILABLE


def with_tpgt(portal: str) -> str:
    return portal if "," in portal else f"{portal},1"


async def hold_swallowed_login(stream: trio.abc.Stream) -> bool:
    """After the login phase: when a blackhole swallowed this login (``stream`` is the one
    `faulted_login` returned), hold the connection unanswered until the fault is cleared
    or expires, or the initiator gives up; True then (the caller closes the connection).
    Outside the login phase's deadline, as a dead path has no timeout of its own."""
    if not isinstance(stream, SlowLoginStream):
        return False
    return await stream.hold_if_swallowed()


_rng = random.Random()
