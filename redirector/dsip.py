"""The Data Services IP: the cluster-wide portal of volume groups (Nutanix Volumes).

External initiators discover and log in here, and come back here after any loss. Discovery
(SendTargets) lists only the virtual targets of the groups the initiator is attached to,
each at the DSIP itself. A login to a virtual target is redirected (0x0101) to the CVM
`VolumeGroupPlacement` picks; an initiator the group does not list is refused with 0x0202
(authorization failure), an unknown target with 0x0203, and no healthy CVM gives 0x0301.
CHAP is the CVM's business, after the redirect. One redirector at a time serves the DSIP:
the one its node's election made leader (redirector/app.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import trio

from faults.injector import FaultInjector
from iscsicore.fullfeature.text import TargetRecord
from iscsicore.keys import SessionType
from iscsicore.login import Accept, Redirect, Refuse, Resolution
from iscsicore.pdu import LoginStatus
from iscsicore.portal import Portal
from redirector.config import RedirectorConfig
from redirector.faults import FaultedLogin
from redirector.health import HealthChecker
from redirector.log import log_redirect
from redirector.policy import PlacementPolicy
from redirector.server import RedirectorServer
from redirector.vg_policy import VolumeGroupPlacement
from topology.volume_group import VirtualTarget, VolumeGroup, VolumeGroupError, VolumeGroupStore

log = logging.getLogger(__name__)


def dsip_portal(config: RedirectorConfig) -> Portal:
    return Portal.parse(config.spec.dsip_portal, what="DSIP")


class DsipServer(RedirectorServer):
    """The DSIP's iSCSI portal; a `RedirectorServer` whose targets are volume groups'."""

    def __init__(
        self,
        config: RedirectorConfig,
        policy: PlacementPolicy,
        health: HealthChecker,
        logger: logging.Logger,
        placement: VolumeGroupPlacement,
        *,
        clock: Callable[[], float] = trio.current_time,
        injector: FaultInjector | None = None,
    ) -> None:
        super().__init__(config, policy, health, logger, clock=clock, injector=injector)
        self.placement = placement
        self.groups = VolumeGroupStore(config.directory)
        self.refused_unattached = 0

    def listen_portal(self) -> Portal:
        return dsip_portal(self.config)

    async def prepare(self, target_name: str) -> None:
        """Fresh health before the choice: a crashed CVM is learnt now, not at its next ping."""
        await self.health.wait_first_verdicts(self.config.health.nop_timeout)
        found = self._find(target_name)
        if found is None:
            return
        group, target = found

        def choose() -> str | None:
            chosen = self.placement.choose(group, target, self.clock())
            return None if chosen is None else str(chosen)

        await self.confirm_choice(choose)

    def _find(self, target_name: str) -> tuple[VolumeGroup, VirtualTarget] | None:
        try:
            return self.groups.find_target(target_name)
        except VolumeGroupError as error:
            log.warning("volume groups unreadable: %s", error)
            return None

    def resolve(
        self,
        initiator_name: str,
        target_name: str | None,
        session_type: SessionType,
        on_fault: Callable[[FaultedLogin], None] | None = None,
    ) -> Resolution:
        if session_type is SessionType.DISCOVERY:
            self.stats.discovery_sessions += 1
            return self._discovery_login(initiator_name)
        found = self._find(target_name or "")
        if found is None:
            return Refuse(LoginStatus.NOT_FOUND)
        group, target = found
        if not group.is_attached(initiator_name):
            self.refused_unattached += 1
            self.logger.warning(
                "Initiator %s is not attached to volume group %s", initiator_name, group.name
            )
            return Refuse(LoginStatus.AUTHORIZATION_FAILURE)
        chosen = self.placement.choose(group, target, self.clock())
        if chosen is None:
            self.stats.refused += 1
            self.logger.warning("No healthy portal for target %s", target.iqn)
            return Refuse(LoginStatus.SERVICE_UNAVAILABLE)
        node = self.config.spec.node(chosen)
        log_redirect(self.logger, target.iqn, node.cvm_advertised_address, node.cvm_advertised_port)
        key = str(chosen)
        self.stats.redirects[key] = self.stats.redirects.get(key, 0) + 1
        return Redirect.to(
            node.cvm_advertised_address, node.cvm_advertised_port, self.config.portal_group_tag
        )

    def _discovery_login(self, initiator_name: str) -> Accept:
        """Discovery is authenticated as the initiator's volume groups are: with the CHAP
        (and mutual CHAP) of the first attached group, by name, that has CHAP; without
        when none has. A client that logs in to a group with CHAP (libiscsi's tools, an
        open-iscsi configured for it) authenticates its discovery the same way."""
        try:
            groups = self.groups.all()
        except VolumeGroupError as error:
            log.warning("volume groups unreadable: %s", error)
            return Accept()
        for group in groups:
            if group.chap is not None and group.is_attached(initiator_name):
                return Accept(chap=group.chap, mutual=group.mutual_chap)
        return Accept()

    def discovery_targets(self, initiator_name: str) -> list[TargetRecord]:
        """The attached groups' virtual targets, each at the DSIP: initiators keep the DSIP
        as their portal and come back through it."""
        advertised = Portal.parse(self.config.spec.dsip_advertised_portal, what="DSIP")
        address = replace(advertised, tpgt=self.config.portal_group_tag).format()
        try:
            groups = self.groups.all()
        except VolumeGroupError as error:
            log.warning("volume groups unreadable: %s", error)
            return []
        return [
            TargetRecord(target.iqn, (address,))
            for group in groups
            if group.is_attached(initiator_name)
            for target in group.targets()
        ]
