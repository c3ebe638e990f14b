"""The vDisk registry: target name -> logical units, ACLs, CHAP credentials, portal group.

A target is named after its first vDisk, ``iqn.2010-06.com.nutanix:vmdisk-<vdisk id>``, which
is its LUN 0; a target may serve more vDisks as LUN 1..K-1 (a volume group's disks). LUN
numbers are positions: contiguous from 0, never a gap. Each LUN is its own logical unit with
its own store, identity, unit attentions and reservations. The registry is what login (who
may log in to what), discovery (what to show to whom) and the full-feature phase (which
logical unit runs a command) consult.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import InitVar, dataclass, field
from typing import Protocol

from iscsicore.pdu import MAX_LUN
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


LUN_KEY_SEPARATOR = ";lun="  # a LUN's queue key: <target name>;lun=<n> (LUN 0: the name)


def target_of_queue_key(key: str) -> str:
    """The target name a command queue key belongs to."""
    return key.partition(LUN_KEY_SEPARATOR)[0]


@dataclass(frozen=True, slots=True)
class ExtraLun:
    """A vDisk served as a further LUN of a target (after the target's own, LUN 0)."""

    vdisk_id: str
    lu: LogicalUnitLike
    counters: VDiskStats | None = None  # to keep counting in (as VDiskTarget's); None: new


@dataclass(frozen=True, slots=True, eq=False)
class TargetLun:
    """One logical unit of a target: its number, vDisk, counters, and the key of its
    sub-queue in the command queue (LUN 0's is the target name, as before LUNs existed)."""

    number: int
    vdisk_id: str
    lu: LogicalUnitLike
    stats: VDiskStats
    queue_key: str


@dataclass(slots=True)
class VDiskTarget:
    """One iSCSI target: its vDisk as LUN 0, and ``extra_luns`` as LUN 1, 2, ..."""

    vdisk_id: str
    lu: LogicalUnitLike
    block_size: int = 512  # every LUN's
    # None: any initiator may log in; otherwise only these initiator names.
    allowed_initiators: frozenset[str] | None = None
    chap: ChapCredentials | None = None  # the initiator must authenticate with these
    mutual_chap: ChapCredentials | None = None  # the target authenticates itself with these
    extra_luns: tuple[ExtraLun, ...] = ()
    iqn: str | None = None  # the target's name if not its vDisk's (a volume group's target)
    # LUN 0's counters to keep counting in (the cluster's, which outlive the vDisk's moves
    # away and back); None: new ones.
    counters: InitVar[VDiskStats | None] = None
    stats: VDiskStats = field(init=False)  # LUN 0's, and the target's logins and sessions
    luns: tuple[TargetLun, ...] = field(init=False)  # by number: luns[n] is LUN n

    def __post_init__(self, counters: VDiskStats | None) -> None:
        self.stats = counters if counters is not None else VDiskStats(self.vdisk_id)
        if len(self.extra_luns) > MAX_LUN:
            raise ValueError(f"target {self.vdisk_id}: more than 16383 LUNs")
        first = TargetLun(0, self.vdisk_id, self.lu, self.stats, self.name)
        self.luns = (
            first,
            *(
                TargetLun(
                    number,
                    extra.vdisk_id,
                    extra.lu,
                    extra.counters if extra.counters is not None else VDiskStats(extra.vdisk_id),
                    f"{self.name}{LUN_KEY_SEPARATOR}{number}",
                )
                for number, extra in enumerate(self.extra_luns, start=1)
            ),
        )
        ids = [lun.vdisk_id for lun in self.luns]
        if len(set(ids)) != len(ids):
            raise ValueError(f"target {self.vdisk_id}: a vDisk is served as two LUNs")

    def lun(self, number: int) -> TargetLun | None:
        """LUN ``number``; None when the target has no such LUN."""
        return self.luns[number] if 0 <= number < len(self.luns) else None

    @property
    def name(self) -> str:
        return self.iqn if self.iqn is not None else target_name_for(self.vdisk_id)

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
        """The target whose LUN 0 is ``vdisk_id``."""
        return self._targets.get(target_name_for(vdisk_id))

    def serving(self, vdisk_id: str) -> tuple[VDiskTarget, TargetLun] | None:
        """The target that serves ``vdisk_id``, as whichever of its LUNs, and that LUN."""
        for target in self._targets.values():
            for lun in target.luns:
                if lun.vdisk_id == vdisk_id:
                    return target, lun
        return None

    def visible_to(self, initiator_name: str) -> list[VDiskTarget]:
        """The targets discovery shows this initiator: only those whose ACL admits it."""
        return [target for target in self._targets.values() if target.admits(initiator_name)]

    def __iter__(self) -> Iterator[VDiskTarget]:
        return iter(list(self._targets.values()))

    def __len__(self) -> int:
        return len(self._targets)
