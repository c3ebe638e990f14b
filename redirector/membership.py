"""The redirector's side of the coordinator: it registers as the live member
`redirector-<i>`, and a stargate whose member entry goes away (its process died, or its
ZooKeeper session expired: a stopped or partitioned CVM) is reported down to the health
checker at once, without waiting for its NOP-Outs to go unanswered. When the entry comes
back, the stargate is reported up again if it accepts a connection (its NOP monitor,
which may have seen it answer all along, would not report a change)."""

from __future__ import annotations

import logging
import os

import trio

from redirector.config import RedirectorConfig
from redirector.health import HealthChecker
from topology.coordination import (
    CoordinationError,
    Coordinator,
    open_coordinator,
    register_when_free,
)

log = logging.getLogger("redirector.membership")

POLL_INTERVAL = 0.5  # seconds between looks at the live members


class Membership:
    def __init__(self, config: RedirectorConfig, health: HealthChecker) -> None:
        self.config = config
        self.health = health
        self.members: set[str] = set()  # the stargates last seen alive
        self.reported_down: set[str] = set()  # by us, for a missing entry

    async def run(
        self, *, task_status: trio.TaskStatus[Coordinator] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the cluster's coordinator and report it (failback reads ownership records
        through it), register, then watch the stargates' entries."""
        paths = self.config.paths
        async with open_coordinator(paths.coordinator(), paths.root) as coordinator:
            task_status.started(coordinator)
            async with trio.open_nursery() as nursery:
                node = self.config.node
                info = {"pid": os.getpid(), "address": node.redirector_address}
                nursery.start_soon(self._register, coordinator, node.redirector_name, info)
                while True:
                    await self.look(coordinator)
                    await trio.sleep(POLL_INTERVAL)

    async def _register(self, coordinator: Coordinator, name: str, info: dict[str, object]) -> None:
        await register_when_free(coordinator, name, info, log=log)

    async def look(self, coordinator: Coordinator) -> None:
        try:
            alive = set(await coordinator.members())
        except CoordinationError as error:
            log.warning("live members unknown: %s", error)
            return
        for node in self.config.spec.nodes:
            name, key = node.stargate_name, self.config.node_key(node.node_id)
            if name in self.members and name not in alive:
                self.health.report(key, False, "no longer alive in the coordinator")
                self.reported_down.add(name)
            elif name in self.reported_down and name in alive:
                self.reported_down.discard(name)
                if await self.health.recheck(key):  # a refusal reports it down itself
                    self.health.report(key, True, "alive again in the coordinator")
        self.members = {name for name in alive if name.startswith("stargate-")}
