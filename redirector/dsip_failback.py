"""Volume-group failback, run by the DSIP leader: a virtual target served away from its
home CVM comes home once that CVM has been healthy for the group's stable window (120 s by
default). The CVM serving it ends the sessions of each of its LUNs' vDisks as cluster.json's
failback mode says; the initiator logs in again through the DSIP, which now sends it home.

A new leader knows nothing of where its predecessor sent targets: it reads the ownership
records of the groups' vDisks and remembers those served away from home.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from control.http import HttpError
from redirector.config import RedirectorConfig
from redirector.failback import CHECK_INTERVAL, MAX_ATTEMPTS, end_sessions
from redirector.vg_placement import home_node
from redirector.vg_policy import VolumeGroupPlacement
from topology.ownership import read_record
from topology.settings import FailbackMode
from topology.spec import ClusterSpec, ClusterSpecError
from topology.volume_group import VolumeGroup, VolumeGroupError, VolumeGroupStore


@dataclass
class DsipFailback:
    config: RedirectorConfig
    placement: VolumeGroupPlacement
    logger: logging.Logger
    clock: Callable[[], float] = trio.current_time
    requested: int = 0  # targets whose sessions a CVM was asked to end
    _failures: dict[str, int] = field(default_factory=dict)  # target IQN -> failed attempts

    async def run(self) -> None:
        self.adopt_strays(self._groups())
        while True:
            await self.step()
            await trio.sleep(CHECK_INTERVAL)

    def _groups(self) -> list[VolumeGroup]:
        try:
            return VolumeGroupStore(self.config.directory).all()
        except VolumeGroupError as error:
            self.logger.warning("Volume groups unreadable: %s", error)
            return []

    def adopt_strays(self, groups: list[VolumeGroup]) -> None:
        """Targets whose vDisks a CVM other than their home owns, by the records."""
        for group in groups:
            for target in group.targets():
                home = home_node(group, target, self.config.spec.node_ids)
                for vdisk in target.vdisk_ids:
                    record = read_record(self.config.paths.ownership_file(vdisk))
                    if record is not None and record.node_id != home:
                        self.placement.remember(target.iqn, record.node_id)

    async def step(self) -> None:
        groups = self._groups()
        due = self.placement.failback_due(groups, self.clock())
        targets = {target.iqn: target for group in groups for target in group.targets()}
        async with trio.open_nursery() as nursery:
            for iqn, node_id in due.items():
                if iqn in targets:
                    nursery.start_soon(self._fail_back, iqn, targets[iqn].vdisk_ids, node_id)
                else:
                    self.placement.forget(iqn)  # the group went

    async def _fail_back(self, iqn: str, vdisk_ids: tuple[str, ...], node_id: int) -> None:
        node = self.config.spec.node(node_id)
        mode = self._mode()
        try:
            for vdisk in vdisk_ids:
                await end_sessions(self.config, node, vdisk, mode)
        except HttpError as error:
            failures = self._failures[iqn] = self._failures.get(iqn, 0) + 1
            if failures < MAX_ATTEMPTS:
                return
            self.logger.warning(
                "Failback of %s from %s abandoned after %d attempts: %s",
                iqn, node.cvm_portal, failures, error,
            )  # fmt: skip
        else:
            self.requested += 1
            self.logger.info(
                "Failing back target %s from %s (%s)", iqn, node.cvm_portal, mode.value
            )
        self._failures.pop(iqn, None)
        self.placement.forget(iqn)

    def _mode(self) -> FailbackMode:
        try:
            return ClusterSpec.load(self.config.directory).failback
        except ClusterSpecError:
            return self.config.spec.failback
