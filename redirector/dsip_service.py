"""The Data Services IP as a service of the cluster's redirectors: every redirector is a
candidate in the coordinator's "dsip" election, and the leader serves the DSIP portal and
the volume groups' failback. When the leader's node dies its candidacy goes with it (the
directory's lock with the process, ZooKeeper's ephemeral node with the session) and the
next candidate takes the DSIP over; initiators come back to it through their retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from redirector.config import RedirectorConfig
from redirector.dsip import DsipServer
from redirector.dsip_failback import DsipFailback
from redirector.failback import Failback
from redirector.health import HealthChecker
from redirector.policy import PlacementPolicy
from redirector.vg_policy import VolumeGroupPlacement
from topology.coordination import CoordinationError, Coordinator

ELECTION = "dsip"
LEADERSHIP_CHECK = 0.1  # seconds between looks at whether this candidate still leads
BIND_RETRY = 1.0  # seconds between tries to listen on the DSIP while leading


class DataServicesIp:
    def __init__(
        self,
        config: RedirectorConfig,
        policy: PlacementPolicy,
        health: HealthChecker,
        node_failback: Failback,
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.config = config
        self.logger = logger
        self.placement = VolumeGroupPlacement(policy, config.spec.node_ids)
        self.server = DsipServer(config, policy, health, logger, self.placement, clock=clock)
        self.failback = DsipFailback(config, self.placement, node_failback, logger, clock=clock)
        self.leading = False
        self.terms = 0  # how many times this redirector took the DSIP

    @property
    def candidate(self) -> str:
        return f"redirector-{self.config.node_id}"

    async def run(self, coordinator: Coordinator) -> None:
        while True:
            try:
                leadership = await coordinator.campaign(ELECTION, self.candidate)
                await leadership.wait_leading()
            except CoordinationError as error:
                self.logger.warning("DSIP election: %s; standing again", error)
                await trio.sleep(BIND_RETRY)
                continue
            self.terms += 1
            self.logger.info("Leading the DSIP %s", self.config.spec.dsip_portal)
            try:
                await self._lead(leadership.holds, coordinator)
            finally:
                self.leading = False
                await leadership.resign()
            self.logger.warning("No longer leading the DSIP %s", self.config.spec.dsip_portal)

    async def _lead(self, holds: Callable[[], bool], coordinator: Coordinator) -> None:
        """Serve while ``holds()``; the portal's address may not be free at once (another
        process still closing it): try again, bounded by the leadership itself."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_portal, holds)
            nursery.start_soon(self.failback.run, coordinator)
            while holds():
                await trio.sleep(LEADERSHIP_CHECK)
            nursery.cancel_scope.cancel()

    async def _serve_portal(self, holds: Callable[[], bool]) -> None:
        while holds():
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.server.serve)
                    self.leading = True
            except OSError as error:
                self.logger.warning("Cannot listen on the DSIP (%s): trying again", error)
                await trio.sleep(BIND_RETRY)
