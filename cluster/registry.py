"""How logins find vDisks at a cluster stargate, and how a login starts taking one over.

`ClusterRegistry` opens any vDisk of DIR/vdisks the first time a login (or a discovery
session) names it; `OwnershipLoginPolicy` tells the CVM when a normal login for a vDisk is
accepted, which starts the claim (cvm.py). The server calls both through its ordinary
registry and login-policy hooks.
"""

from __future__ import annotations

from collections.abc import Callable

from iscsicore.keys import SessionType
from iscsicore.login import Accept, Resolution
from stargate.login_phase import LoginPolicy
from stargate.session import SessionTable
from stargate.target import PortalGroup, TargetRegistry, VDiskTarget
from topology.naming import TARGET_NAME_PREFIX
from topology.spec import ClusterPaths, list_vdisks
from topology.volume_group import volume_group_of


class ClusterRegistry(TargetRegistry):
    """The registry of a cluster stargate: any vDisk of DIR/vdisks is opened on first use."""

    def __init__(self, opener: Callable[[str], VDiskTarget | None], paths: ClusterPaths) -> None:
        super().__init__(PortalGroup())
        self._opener = opener
        self._paths = paths

    def get(self, name: str) -> VDiskTarget | None:
        target = super().get(name)
        if target is not None or not name.startswith(TARGET_NAME_PREFIX):
            return target
        vdisk_id = name.removeprefix(TARGET_NAME_PREFIX)
        if not vdisk_id or "/" in vdisk_id or vdisk_id.startswith("."):
            return None
        if volume_group_of(vdisk_id) is not None:
            return None  # a volume group's disk: only its virtual target serves it
        if not self._paths.vdisk_meta_file(vdisk_id).exists():
            return None
        target = self._opener(vdisk_id)
        if target is not None:
            self.add(target)
        return target

    def visible_to(self, initiator_name: str) -> list[VDiskTarget]:
        # Discovery lists every vDisk of the cluster, not only those opened so far.
        for info in list_vdisks(self._paths.root):
            if info.volume_group is None:
                self.get(f"{TARGET_NAME_PREFIX}{info.vdisk_id}")
        return super().visible_to(initiator_name)


class OwnershipLoginPolicy(LoginPolicy):
    """Accepting a normal login for a vDisk starts taking the vDisk over."""

    def __init__(
        self, registry: TargetRegistry, sessions: SessionTable, on_login: Callable[[str], None]
    ) -> None:
        super().__init__(registry, sessions)
        self._on_login = on_login

    def resolve(
        self, initiator_name: str, target_name: str | None, session_type: SessionType
    ) -> Resolution:
        resolution = super().resolve(initiator_name, target_name, session_type)
        if isinstance(resolution, Accept) and session_type is SessionType.NORMAL and target_name:
            self._on_login(target_name)
        return resolution
