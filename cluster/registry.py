"""How logins find vDisks at a cluster stargate, and how a login starts taking one over.

`ClusterRegistry` opens any vDisk of DIR/vdisks the first time a login (or a discovery
session) names it, and a volume group's virtual target the first time a login names it
(those are discovered at the DSIP, not here); `OwnershipLoginPolicy` tells the CVM when a
normal login for a target is accepted, which starts the claim (cvm.py). The server calls
both through its ordinary registry and login-policy hooks.
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
from topology.volume_group import (
    VG_TARGET_PREFIX,
    VirtualTarget,
    VolumeGroup,
    VolumeGroupError,
    VolumeGroupStore,
    volume_group_of,
)


class ClusterRegistry(TargetRegistry):
    """The registry of a cluster stargate: any vDisk of DIR/vdisks is opened on first use."""

    def __init__(
        self,
        opener: Callable[[str], VDiskTarget | None],
        paths: ClusterPaths,
        virtual_opener: Callable[[VolumeGroup, VirtualTarget], VDiskTarget | None],
    ) -> None:
        super().__init__(PortalGroup())
        self._opener = opener
        self._virtual_opener = virtual_opener
        self._paths = paths
        self._groups = VolumeGroupStore(paths.root)

    def get(self, name: str) -> VDiskTarget | None:
        target = super().get(name)
        if target is not None:
            return target
        if name.startswith(VG_TARGET_PREFIX):
            return self._open_virtual(name)
        if not name.startswith(TARGET_NAME_PREFIX):
            return None
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

    def _open_virtual(self, name: str) -> VDiskTarget | None:
        try:
            found = self._groups.find_target(name)
        except VolumeGroupError:
            return None
        if found is None:
            return None
        target = self._virtual_opener(*found)
        if target is not None:
            self.add(target)
        return target

    def visible_to(self, initiator_name: str) -> list[VDiskTarget]:
        # Discovery lists every vDisk of the cluster, not only those opened so far; volume
        # groups' targets are the DSIP's to list.
        for info in list_vdisks(self._paths.root):
            if info.volume_group is None:
                self.get(f"{TARGET_NAME_PREFIX}{info.vdisk_id}")
        return [
            target
            for target in super().visible_to(initiator_name)
            if not target.name.startswith(VG_TARGET_PREFIX)
        ]


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
