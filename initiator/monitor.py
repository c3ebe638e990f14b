"""Keep a discovery session open to a portal and ping it with NOP-Outs: is it alive?

What the redirector's health checks need (stargate answers NOP-Out on a discovery
session; tgtd drops the connection instead): a portal is down after a refused or timed-out
connection or login (``connect_timeout``), a dropped connection, or ``misses`` NOP-Outs in a
row unanswered within ``timeout``; it is up again after the next successful login.
Transitions are reported through a callback; ``healthy``, ``rtt`` and ``error`` always hold
the latest view.

    monitor = PortalMonitor(parse_portal("127.77.1.2:3261"), on_change=print)
    nursery.start_soon(monitor.run)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from iscsicore.fullfeature.exchanges import (
    is_ping_answer,
    logout_request,
    nop_out_echo,
    nop_out_ping,
)
from iscsicore.fullfeature.numbering import InitiatorNumbering
from iscsicore.pdu import AsyncMessage, NopIn, Reject
from iscsicore.portal import Portal

from .errors import InitiatorError, TargetProtocolError
from .login_flow import Established, LoginOptions, establish

_PING_TAG_START = 0x1000


class _Unanswered(TargetProtocolError):
    """A NOP-Out got no answer in time (one miss; a closed connection is not a miss)."""


@dataclass
class PortalMonitor:
    portal: Portal
    interval: float = 1.0  # between pings, and between reconnect attempts
    timeout: float = 1.0  # for a ping answer
    misses: int = 1  # unanswered pings in a row that mean down
    connect_timeout: float | None = None  # for a connection, a login (None: ``timeout``)
    on_change: Callable[[bool, str], None] | None = None  # (healthy, reason)
    login: LoginOptions = field(default_factory=LoginOptions)
    healthy: bool | None = None  # None until the first verdict
    rtt: float | None = None  # last NOP round trip, seconds
    error: str = ""
    checks: int = 0

    async def run(self) -> None:
        """Forever: log in, ping until something fails, report, wait, try again. The
        timers are read at each use, so a caller may change them while it runs."""
        while True:
            try:
                established = await establish(self.portal, None, self._options())
            except InitiatorError as error:
                self._verdict(False, f"login failed: {error}")
                await trio.sleep(self.interval)
                continue
            try:
                await self._ping_loop(established)
            except InitiatorError as error:
                self._verdict(False, str(error))
            finally:
                await established.connection.aclose()
            await trio.sleep(self.interval)

    async def check_once(self) -> bool:
        """One login + ping + logout; updates the verdict and returns it."""
        options = self._options()
        try:
            established = await establish(self.portal, None, options)
        except InitiatorError as error:
            self._verdict(False, f"login failed: {error}")
            return False
        try:
            numbering = _numbering(established)
            await self._ping(established, numbering, _PING_TAG_START)
            await self._logout(established, numbering)
        except InitiatorError as error:
            self._verdict(False, str(error))
        finally:
            await established.connection.aclose()
        return bool(self.healthy)

    def _options(self) -> LoginOptions:
        return LoginOptions(
            initiator_name=self.login.initiator_name,
            chap=self.login.chap,
            max_redirects=0,  # a health check is about this portal, not where it points
            connect_timeout=self.connect_timeout or self.timeout,
            login_timeout=self.connect_timeout or self.timeout,
        )

    async def _ping_loop(self, established: Established) -> None:
        numbering = _numbering(established)
        tag = _PING_TAG_START
        missed = 0
        while True:
            try:
                await self._ping(established, numbering, tag)
                missed = 0
            except _Unanswered:
                missed += 1
                if missed >= self.misses:
                    raise
            tag = tag + 1 if tag < 0xFFFF_0000 else _PING_TAG_START
            await trio.sleep(self.interval)

    async def _ping(self, established: Established, sn: InitiatorNumbering, tag: int) -> None:
        connection = established.connection
        started = trio.current_time()
        await connection.send([nop_out_ping(tag, cmd_sn=sn.cmd_sn, exp_stat_sn=sn.exp_stat_sn)])
        with trio.move_on_after(self.timeout) as scope:
            while True:
                pdu = await connection.receive()
                if isinstance(pdu, NopIn):
                    sn.update_window(pdu.exp_cmd_sn, pdu.max_cmd_sn)
                    if is_ping_answer(pdu):
                        sn.status_seen(pdu.stat_sn)
                    echo = nop_out_echo(pdu, cmd_sn=sn.cmd_sn, exp_stat_sn=sn.exp_stat_sn)
                    if echo is not None:  # the target pings us too
                        await connection.send([echo])
                    if pdu.itt == tag:
                        break
                elif isinstance(pdu, AsyncMessage):
                    raise TargetProtocolError(f"portal sent AsyncEvent {pdu.async_event}")
                elif isinstance(pdu, Reject):
                    raise TargetProtocolError(f"portal rejected the NOP-Out ({pdu.reason:#x})")
        if scope.cancelled_caught:
            raise _Unanswered(f"NOP-Out unanswered for {self.timeout:g} s")
        self.rtt = trio.current_time() - started
        self.checks += 1
        self._verdict(True, "")

    async def _logout(self, established: Established, sn: InitiatorNumbering) -> None:
        logout = logout_request(1, cmd_sn=sn.cmd_sn, exp_stat_sn=sn.exp_stat_sn)
        await established.connection.send([logout])
        with trio.move_on_after(self.timeout):
            await established.connection.receive()

    def _verdict(self, healthy: bool, reason: str) -> None:
        self.error = reason
        if healthy != self.healthy:
            self.healthy = healthy
            if self.on_change is not None:
                self.on_change(healthy, reason)


def _numbering(established: Established) -> InitiatorNumbering:
    return InitiatorNumbering(established.exp_cmd_sn, established.max_cmd_sn, established.stat_sn)
