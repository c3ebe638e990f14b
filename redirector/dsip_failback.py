"""Volume-group failback, run by the DSIP leader: a virtual target served away from its
home CVM comes home once that CVM has been healthy for the group's stable window (120 s by
default). The CVM serving it ends the target's sessions as the redirector's failback mode
says (kill or logout, live from /h/gflags); the initiator logs in again through the DSIP,
which now sends it home.

A new leader knows nothing of where its predecessor sent targets: it reads the targets'
ownership records (through the coordinator) and remembers those served away from home.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from control.http import HttpError
from redirector.config import RedirectorConfig
from redirector.failback import CHECK_INTERVAL, MAX_ATTEMPTS, Failback, end_sessions
from redirector.vg_placement import home_node
from redirector.vg_policy import VolumeGroupPlacement
from topology.coordination import CoordinationError, OwnershipRecords
from topology.volume_group import VirtualTarget, VolumeGroup, VolumeGroupError, VolumeGroupStore


@dataclass
class DsipFailback:
    config: RedirectorConfig
    placement: VolumeGroupPlacement
    node_failback: Failback  # the node's own: its mode and logout time, set live or not
    logger: logging.Logger
    clock: Callable[[], float] = trio.current_time
    requested: int = 0  # targets whose sessions a CVM was asked to end
    _failures: dict[str, int] = field(default_factory=dict)  # target IQN -> failed attempts

    async def run(self, records: OwnershipRecords) -> None:
        adopted = False
        while True:
            if not adopted:
                adopted = await self.adopt_strays(records, self.groups())
            await self.step()
            await trio.sleep(CHECK_INTERVAL)

    def groups(self) -> list[VolumeGroup]:
        try:
            return VolumeGroupStore(self.config.directory).all()
        except VolumeGroupError as error:
            self.logger.warning("Volume groups unreadable: %s", error)
            return []

    async def adopt_strays(self, records: OwnershipRecords, groups: list[VolumeGroup]) -> bool:
        """Remember the targets a CVM other than their home owns, by their records; False
        when the records could not be read (try again)."""
        try:
            for group in groups:
                for target in group.targets():
                    home = home_node(group, target, self.config.spec.node_ids)
                    record = await records.read_ownership(target.unit_id)
                    if record is not None and record.claimed and record.node_id != home:
                        self.placement.remember(target.iqn, record.node_id)
        except CoordinationError as error:
            self.logger.warning("Ownership records unreadable, looking again: %s", error)
            return False
        return True

    async def step(self) -> None:
        groups = self.groups()
        due = self.placement.failback_due(groups, self.clock())
        targets = {target.iqn: target for group in groups for target in group.targets()}
        async with trio.open_nursery() as nursery:
            for iqn, node_id in due.items():
                if iqn in targets:
                    nursery.start_soon(self._fail_back, targets[iqn], node_id)
                else:
                    self.placement.forget(iqn)  # the group went

    async def _fail_back(self, target: VirtualTarget, node_id: int) -> None:
        node = self.config.spec.node(node_id)
        mode = self.node_failback.mode()
        try:
            await end_sessions(
                self.config, node, target.unit_id, mode,
                logout_seconds=self.node_failback.failback_logout_seconds,
            )  # fmt: skip
        except HttpError as error:
            failures = self._failures[target.iqn] = self._failures.get(target.iqn, 0) + 1
            if failures < MAX_ATTEMPTS:
                return
            self.logger.warning(
                "Failback of %s from %s abandoned after %d attempts: %s",
                target.iqn, node.cvm_portal, failures, error,
            )  # fmt: skip
        else:
            self.requested += 1
            self.logger.info(
                "Failing back target %s from %s (%s)", target.iqn, node.cvm_portal, mode.value
            )
        self._failures.pop(target.iqn, None)
        self.placement.forget(target.iqn)
