"""The vDisk registry: target name -> logical unit, ACLs, CHAP credentials, portal group.

Every vDisk is its own iSCSI target, ``iqn.2010-06.com.nutanix:vmdisk-<vdisk id>``, with one
LUN, LUN 0. The registry is what login (who may log in to what), discovery (what to show to
whom) and the full-feature phase (which logical unit runs a command) consult.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from stargate.scsi.command import Nexus
from stargate.scsi.lu import UnitAttentions
from stargate.stats import VDiskStats
from topology.naming import DEFAULT_PORTAL_GROUP_TAG, target_name_for


class BlockStoreLike(Protocol):
    def sync(self) -> None: ...


class ScsiResultLike(Protocol):
    @property
    def status(self) -> int: ...
    @property
    def data(self) -> bytes | bytearray | memoryview: ...
    @property
    def sense(self) -> bytes: ...
    @property
    def needs_sync(self) -> bool: ...


class LogicalUnitLike(Protocol):
    """What the target needs of `stargate.scsi.lu.LogicalUnit` (or of a wrapper around
    one, as the cluster's fence: cluster/admission.py)."""

    @property
    def store(self) -> BlockStoreLike:
        """The store to sync before a ``needs_sync`` status (read again every time)."""

    @property
    def unit_attentions(self) -> UnitAttentions: ...

    def execute(
        self, cdb: bytes, data_out: bytes | bytearray | memoryview, nexus: Nexus
    ) -> ScsiResultLike: ...

    def nexus_lost(self, nexus: Nexus) -> None:
        """The I_T nexus ended (logout, connection gone): its SPC-2 reservation goes."""

    def logical_unit_reset(self, by: Nexus | None = None) -> None:
        """LOGICAL UNIT RESET, TARGET RESET, TARGET COLD RESET."""


@dataclass(frozen=True, slots=True)
class ChapCredentials:
    user: str
    secret: str


@dataclass(slots=True)
class VDiskTarget:
    """One vDisk as an iSCSI target."""

    vdisk_id: str
    lu: LogicalUnitLike
    block_size: int = 512
    # None: any initiator may log in; otherwise only these initiator names.
    allowed_initiators: frozenset[str] | None = None
    chap: ChapCredentials | None = None  # the initiator must authenticate with these
    mutual_chap: ChapCredentials | None = None  # the target authenticates itself with these
    stats: VDiskStats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = VDiskStats(self.vdisk_id)

    @property
    def name(self) -> str:
        return target_name_for(self.vdisk_id)

    def admits(self, initiator_name: str) -> bool:
        return self.allowed_initiators is None or initiator_name in self.allowed_initiators


@dataclass(slots=True)
class PortalGroup:
    """The portal group of this stargate: where it listens and what it tells initiators."""

    tag: int = DEFAULT_PORTAL_GROUP_TAG
    # "host:port" pairs that SendTargets reports; the cluster sets the advertised address.
    advertised_addresses: list[str] = field(default_factory=list)

    def target_address_values(self) -> list[str]:
        return [f"{address},{self.tag}" for address in self.advertised_addresses]


class TargetRegistry:
    """The vDisks this stargate serves, by target name."""

    def __init__(self, portal_group: PortalGroup | None = None) -> None:
        self.portal_group = portal_group or PortalGroup()
        self._targets: dict[str, VDiskTarget] = {}

    def add(self, target: VDiskTarget) -> None:
        if target.name in self._targets:
            raise ValueError(f"vDisk {target.vdisk_id} is already served")
        self._targets[target.name] = target

    def remove(self, name: str) -> VDiskTarget | None:
        return self._targets.pop(name, None)

    def get(self, name: str) -> VDiskTarget | None:
        return self._targets.get(name)

    def by_vdisk_id(self, vdisk_id: str) -> VDiskTarget | None:
        return self._targets.get(target_name_for(vdisk_id))

    def visible_to(self, initiator_name: str) -> list[VDiskTarget]:
        """The targets discovery shows this initiator: only those whose ACL admits it."""
        return [target for target in self._targets.values() if target.admits(initiator_name)]

    def __iter__(self) -> Iterator[VDiskTarget]:
        return iter(list(self._targets.values()))

    def __len__(self) -> int:
        return len(self._targets)
