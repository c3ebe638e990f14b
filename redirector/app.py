"""One node's redirector, assembled: placement policy, health checks, portal, failback,
and a candidacy for the cluster's Data Services IP.

redirector = Redirector(RedirectorConfig.load(directory, node_id), logger)
async with trio.open_nursery() as nursery:
    port = await nursery.start(redirector.run)   # listening once this returns
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import trio

from control.http import serve_http
from faults.forensics import Forensics
from faults.injector import FaultInjector
from redirector.config import RedirectorConfig
from redirector.dsip_service import DataServicesIp
from redirector.failback import Failback
from redirector.health import HealthChecker
from redirector.membership import Membership
from redirector.page import RedirectorPage
from redirector.policy import PlacementPolicy
from redirector.server import RedirectorServer


class Redirector:
    def __init__(
        self,
        config: RedirectorConfig,
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = trio.current_time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.logger = logger
        self.policy = PlacementPolicy(
            nodes=[config.node_key(node.node_id) for node in config.spec.nodes],
            local=config.node_key(config.node_id),
            mode=config.placement_mode,
            stable_window=config.stable_window,
            rng=rng or random.Random(),
        )
        self.health = HealthChecker(config, self.policy, logger, clock=clock)
        forensics = self._forensics()
        injector = FaultInjector(listeners=[forensics.fault_fired] if forensics else [])
        self.server = RedirectorServer(
            config, self.policy, self.health, logger, clock=clock, injector=injector
        )
        self.failback = Failback(config, self.policy, logger, clock=clock)
        self.membership = Membership(config, self.health)
        self.dsip = DataServicesIp(
            config, self.policy, self.health, self.failback, logger, clock=clock
        )

    def _forensics(self) -> Forensics | None:
        """Faults fired here go to DIR/forensics/redirector-N.jsonl, which `stargate timeline`
        merges with the stargates' records (a slow or refused login shows in the vDisk's lane)."""
        directory = self.config.directory / "forensics"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self.logger.warning("No forensics (the timeline misses this redirector): %s", error)
            return None
        name = f"redirector-{self.config.node_id}"
        return Forensics(name, directory / f"{name}.jsonl")

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Health checks first (their first verdicts arrive while the portal opens), then
        the portal; failback and the HTTP page run alongside. Reports the bound port."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.health.run)
            coordinator = await nursery.start(self.membership.run)  # liveness, records
            port = await nursery.start(self.server.serve)
            nursery.start_soon(self.failback.run, coordinator)
            nursery.start_soon(self.dsip.run, coordinator)  # serves it while leading
            await self._start_page(nursery)
            task_status.started(port)

    async def _start_page(self, nursery: trio.Nursery) -> None:
        """The fault control page; a redirector without it still redirects."""
        node = self.config.node
        try:
            await nursery.start(
                serve_http, RedirectorPage(self).handle, node.redirector_address,
                node.http_port,
            )  # fmt: skip
        except* OSError as group:
            self.logger.warning("No HTTP page (faults cannot be armed): %s", group.exceptions[0])
