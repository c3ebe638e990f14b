"""Is each stargate of the cluster alive? Feeds the placement policy and the AHV log.

Per stargate, an `initiator.monitor.PortalMonitor` keeps a discovery session open and
pings it with NOP-Outs (cluster.json's health-check knobs): a refused or reset connection
means down at once, unanswered NOP-Outs (a hung, e.g. SIGSTOPped, stargate) after the
given number of misses, a new successful session means up. At redirect time the local
stargate gets one more quick look (a TCP connect): a crashed local stargate refuses it at
once, so a vDisk's re-login never waits for the next ping to learn that (a remote stargate
about to be chosen gets the same look).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from initiator.login_flow import LoginOptions
from initiator.monitor import PortalMonitor
from iscsicore.portal import Portal
from redirector.config import RedirectorConfig
from redirector.log import log_portal_down, log_portal_up
from redirector.policy import PlacementPolicy
from topology.settings import HealthChecks

QUICK_CHECK_TIMEOUT = 0.25
HEALTH_INITIATOR_NAME = "iqn.2010-06.com.nutanix:redirector-health"


@dataclass
class NodeHealthState:
    """What the checker knows of one stargate, beyond the policy's up/down."""

    key: str
    portal: Portal
    ever_up: bool = False
    reported: bool | None = None  # the last verdict passed on (None: none yet)
    reason: str = ""
    first_verdict: trio.Event = field(default_factory=trio.Event)


class HealthChecker:
    """One monitor per stargate; transitions go to the policy and the log."""

    def __init__(
        self,
        config: RedirectorConfig,
        policy: PlacementPolicy,
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.config = config
        self.policy = policy
        self.logger = logger
        self.clock = clock
        self.started_at: float | None = None
        # The knobs in effect: cluster.json's at start, then whatever `apply` was given.
        self.knobs: HealthChecks = config.health
        self.monitors: dict[str, PortalMonitor] = {}
        self.nodes: dict[str, NodeHealthState] = {}
        for node in config.spec.nodes:
            key = config.node_key(node.node_id)
            # The cluster's own address of the CVM: health is checked from inside the cluster.
            self.nodes[key] = NodeHealthState(key, Portal(node.cvm_address, node.cvm_port))

    @property
    def local_key(self) -> str:
        return self.config.node_key(self.config.node_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.started_at = self.clock()
        async with trio.open_nursery() as nursery:
            for state in self.nodes.values():
                monitor = PortalMonitor(
                    state.portal,
                    on_change=self._callback(state),
                    login=LoginOptions(initiator_name=HEALTH_INITIATOR_NAME),
                )
                self.monitors[state.key] = monitor
                self._set_timers(monitor)
                nursery.start_soon(monitor.run)
            nursery.start_soon(self._startup_deadline)
            task_status.started()

    def apply(self, knobs: HealthChecks) -> None:
        """New health-check knobs, live: each monitor reads its timers at every ping, so
        the next interval, timeout and miss count are the new ones."""
        self.knobs = knobs
        for monitor in self.monitors.values():
            self._set_timers(monitor)

    def _set_timers(self, monitor: PortalMonitor) -> None:
        knobs = self.knobs
        monitor.interval = knobs.nop_interval
        monitor.timeout = knobs.nop_timeout
        monitor.misses = knobs.misses
        monitor.connect_timeout = knobs.connect_timeout

    def _callback(self, state: NodeHealthState) -> Callable[[bool, str], None]:
        def on_change(healthy: bool, reason: str) -> None:
            self.report(state.key, healthy, reason)

        return on_change

    async def _startup_deadline(self) -> None:
        """Stargates never seen up by the end of the startup grace are declared down."""
        await trio.sleep(self.config.timers.startup_grace)
        for state in self.nodes.values():
            if not state.ever_up and state.reported is None:
                self.report(state.key, False, state.reason or "no answer since startup")

    # -- verdicts -------------------------------------------------------------------------

    def report(self, key: str, healthy: bool, reason: str) -> None:
        """A verdict on stargate ``key``: passed on to the policy and the log when it is news."""
        state = self.nodes[key]
        state.reason = reason
        if not healthy and not state.ever_up and not self._startup_over():
            return  # still starting, probably: not worth a stable window (see config)
        if healthy:
            state.ever_up = True
        now = self.clock()
        changed = self.policy.mark_up(key, now) if healthy else self.policy.mark_down(key, now)
        if changed or state.reported is None:
            host, port = state.portal.host, state.portal.port
            if healthy:
                log_portal_up(self.logger, host, port)
            else:
                log_portal_down(self.logger, host, port)
        state.reported = healthy
        state.first_verdict.set()

    def _startup_over(self) -> bool:
        return self.started_at is not None and (
            self.clock() - self.started_at >= self.config.timers.startup_grace
        )

    async def wait_first_verdicts(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until every stargate has a verdict: a login arriving
        right after startup should not be refused only because no ping has finished yet."""
        with trio.move_on_after(timeout):
            for state in self.nodes.values():
                await state.first_verdict.wait()

    async def wait_local_verdict(self) -> None:
        """During the startup grace, wait for the local stargate's first verdict: a login
        right after `cluster up` belongs to it, not to whichever remote answered first."""
        if self.started_at is None:
            return
        remaining = self.config.timers.startup_grace - (self.clock() - self.started_at)
        with trio.move_on_after(max(0.0, remaining)):
            await self.nodes[self.local_key].first_verdict.wait()

    async def recheck(self, key: str) -> bool:
        """Connect to stargate ``key`` once; a refusal marks it down at once. Returns
        whether it may still be used (a connection accepted, or a slow answer: the NOP
        checks judge those)."""
        state = self.nodes[key]
        if await _connection_refused(state.portal, QUICK_CHECK_TIMEOUT):
            self.report(key, False, "connection refused at redirect time")
            return False
        return True

    async def recheck_local(self) -> bool:
        return await self.recheck(self.local_key)


async def _connection_refused(portal: Portal, timeout: float) -> bool:
    """True only when ``portal`` actively refuses (nothing listens): a timeout is not proof."""
    sock = trio.socket.socket(socket.AF_INET6 if ":" in portal.host else socket.AF_INET)
    with sock:
        with trio.move_on_after(timeout):
            try:
                await sock.connect((portal.host, portal.port))
            except OSError as error:
                return error.errno in (errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH)
    return False
