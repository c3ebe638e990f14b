"""Volume groups (Nutanix Volumes): disks for external initiators, behind the cluster's Data
Services IP.

A volume group ``NAME`` is the target ``iqn.2010-06.com.nutanix:vg-NAME`` presented as up to
``virtual_targets`` virtual targets ``...:vg-NAME-tgt0`` .. ``-tgtN-1``. Disk ``i`` is on
virtual target ``i mod N`` as LUN ``i div N``: with no more disks than virtual targets each
disk has a session (and a TCP connection) of its own, and with one virtual target the group
is one target whose disks are LUNs 0..K-1. Only the initiators named in ``attachments`` see
the group in discovery or may log in to it. Each group is a file, DIR/volume-groups/NAME.json;
its disks are ordinary vDisks (``vg-NAME-<i>``) in the shared store directory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from iscsicore.chap import ChapSecrets
from topology.naming import target_name_for
from topology.vdisk import atomic_write

IQN_AUTHORITY = "iqn.2010-06.com.nutanix:"
VG_TARGET_PREFIX = f"{IQN_AUTHORITY}vg-"
VG_VDISK_PREFIX = "vg-"  # a group's disks are vg-NAME-0, vg-NAME-1, ...
VG_DIRECTORY = "volume-groups"
DEFAULT_VIRTUAL_TARGETS = 32
MAX_VIRTUAL_TARGETS = 32
DEFAULT_VG_STABLE_WINDOW = 120.0  # Volumes fail back after 120 s, not AHV's 300 s
VG_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
VG_UNIT_RE = re.compile(r"^vg-[a-z0-9][a-z0-9.-]{0,62}-tgt[0-9]+$")  # a virtual target's
# RFC 3720 3.2.6: iqn.yyyy-mm.reversed-domain[:anything]; EUI and NAA names accepted too.
INITIATOR_NAME_RE = re.compile(
    r"^(iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*(:[^\s]+)?|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$"
)


class VolumeGroupError(ValueError):
    """A volume group request that cannot be honoured (the message says why)."""


@dataclass(frozen=True)
class VirtualTarget:
    """One of a volume group's targets: its IQN and its LUNs' vDisks, LUN 0 first.

    A virtual target is the unit of ownership: one CVM serves all its LUNs, under one
    ownership record named by ``unit_id`` (``vg-NAME-tgtI``, the IQN's last part)."""

    group: str
    index: int
    iqn: str
    vdisk_ids: tuple[str, ...]

    @property
    def unit_id(self) -> str:
        return self.iqn.removeprefix(IQN_AUTHORITY)


@dataclass(frozen=True)
class VolumeGroup:
    """A volume group as recorded in DIR/volume-groups/NAME.json."""

    name: str
    vdisk_ids: tuple[str, ...]  # disk order: disk i is vdisk_ids[i]
    attachments: tuple[str, ...] = ()  # initiator names allowed to see and use the group
    virtual_targets: int = DEFAULT_VIRTUAL_TARGETS  # at most this many; fewer with fewer disks
    chap: ChapSecrets | None = None  # the initiator authenticates with these
    mutual_chap: ChapSecrets | None = None  # the target authenticates itself with these
    preferred_node: int | None = None
    load_balance: bool = False  # spread the virtual targets over every CVM
    stable_window: float = DEFAULT_VG_STABLE_WINDOW

    def __post_init__(self) -> None:
        if not VG_NAME_RE.match(self.name):
            raise VolumeGroupError(
                f"volume group name {self.name!r}: use lowercase letters, digits, '-' and '.' "
                "(it goes into IQNs)"
            )
        if not self.vdisk_ids:
            raise VolumeGroupError("a volume group has at least one disk")
        if not 1 <= self.virtual_targets <= MAX_VIRTUAL_TARGETS:
            raise VolumeGroupError(
                f"virtual targets must be 1..{MAX_VIRTUAL_TARGETS}, not {self.virtual_targets}"
            )
        for initiator in self.attachments:
            check_initiator_name(initiator)
        if len(set(self.attachments)) != len(self.attachments):
            raise VolumeGroupError("an initiator is attached once")
        if self.mutual_chap is not None and self.chap is None:
            raise VolumeGroupError("mutual CHAP needs CHAP: give --chap too")
        if self.stable_window < 0:
            raise VolumeGroupError("the stable window cannot be negative")

    @property
    def iqn(self) -> str:
        return f"{VG_TARGET_PREFIX}{self.name}"

    @staticmethod
    def disk_ids(name: str, disks: int) -> tuple[str, ...]:
        return tuple(f"{VG_VDISK_PREFIX}{name}-{index}" for index in range(disks))

    @property
    def target_count(self) -> int:
        """How many virtual targets the group really has: no more than its disks."""
        return min(self.virtual_targets, len(self.vdisk_ids))

    def targets(self) -> list[VirtualTarget]:
        count = self.target_count
        return [
            VirtualTarget(self.name, index, f"{self.iqn}-tgt{index}", self.vdisk_ids[index::count])
            for index in range(count)
        ]

    def target(self, iqn: str) -> VirtualTarget | None:
        return next((target for target in self.targets() if target.iqn == iqn), None)

    def is_attached(self, initiator: str) -> bool:
        # Initiator names compare case-insensitively (RFC 3722 stringprep folds case).
        return initiator.lower() in {name.lower() for name in self.attachments}

    def attach(self, initiator: str) -> VolumeGroup:
        check_initiator_name(initiator)
        if self.is_attached(initiator):
            raise VolumeGroupError(f"{initiator} is attached to {self.name} already")
        return replace(self, attachments=(*self.attachments, initiator))

    def detach(self, initiator: str) -> VolumeGroup:
        if not self.is_attached(initiator):
            raise VolumeGroupError(f"{initiator} is not attached to {self.name}")
        kept = tuple(name for name in self.attachments if name.lower() != initiator.lower())
        return replace(self, attachments=kept)

    # -- the file -----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vdisk_ids": list(self.vdisk_ids),
            "attachments": list(self.attachments),
            "virtual_targets": self.virtual_targets,
            "chap": _chap_json(self.chap),
            "mutual_chap": _chap_json(self.mutual_chap),
            "preferred_node": self.preferred_node,
            "load_balance": self.load_balance,
            "stable_window": self.stable_window,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> VolumeGroup:
        try:
            preferred = raw.get("preferred_node")
            return cls(
                name=str(raw["name"]),
                vdisk_ids=tuple(str(vdisk) for vdisk in raw["vdisk_ids"]),
                attachments=tuple(str(name) for name in raw.get("attachments", [])),
                virtual_targets=int(raw.get("virtual_targets", DEFAULT_VIRTUAL_TARGETS)),
                chap=_chap_from_json(raw.get("chap")),
                mutual_chap=_chap_from_json(raw.get("mutual_chap")),
                preferred_node=None if preferred is None else int(preferred),
                load_balance=bool(raw.get("load_balance", False)),
                stable_window=float(raw.get("stable_window", DEFAULT_VG_STABLE_WINDOW)),
            )
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, VolumeGroupError):
                raise
            raise VolumeGroupError(f"volume group record: {error!r}") from None


def unit_target_name(unit_id: str) -> str:
    """The target an ownership unit is served as: a virtual target's IQN, else the vDisk's."""
    if VG_UNIT_RE.match(unit_id):
        return f"{IQN_AUTHORITY}{unit_id}"
    return target_name_for(unit_id)


def volume_group_of(vdisk_id: str) -> str | None:
    """``vg-NAME-<i>`` -> NAME: the group a vDisk is a disk of (VM names never start
    ``vg-``); None for a VM's vDisk."""
    if not vdisk_id.startswith(VG_VDISK_PREFIX):
        return None
    name, _, index = vdisk_id.removeprefix(VG_VDISK_PREFIX).rpartition("-")
    return name if name and index.isdigit() else None


def check_initiator_name(name: str) -> None:
    if not INITIATOR_NAME_RE.match(name):
        raise VolumeGroupError(
            f"{name!r} is not an iSCSI initiator name (iqn.YYYY-MM.domain[:id], eui. or naa.)"
        )


def _chap_json(secrets: ChapSecrets | None) -> dict[str, str] | None:
    if secrets is None:
        return None
    return {"user": secrets.username, "secret": secrets.secret.decode()}


def _chap_from_json(raw: Any) -> ChapSecrets | None:
    if raw is None:
        return None
    return ChapSecrets(str(raw["user"]), str(raw["secret"]))


@dataclass(frozen=True)
class VolumeGroupStore:
    """DIR/volume-groups: one JSON file a group, written atomically."""

    root: Path
    _directory: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_directory", self.root / VG_DIRECTORY)

    def path(self, name: str) -> Path:
        return self._directory / f"{name}.json"

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def save(self, group: VolumeGroup) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path(group.name), (json.dumps(group.to_json(), indent=2) + "\n").encode())

    def load(self, name: str) -> VolumeGroup:
        try:
            raw = json.loads(self.path(name).read_text())
        except FileNotFoundError:
            raise VolumeGroupError(f"no volume group {name!r}") from None
        except (OSError, json.JSONDecodeError) as error:
            raise VolumeGroupError(f"volume group {name!r}: {error}") from None
        return VolumeGroup.from_json(raw)

    def delete(self, name: str) -> None:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            raise VolumeGroupError(f"no volume group {name!r}") from None

    def all(self) -> list[VolumeGroup]:
        if not self._directory.is_dir():
            return []
        return [self.load(path.stem) for path in sorted(self._directory.glob("*.json"))]

    def unit_of(self, vdisk_id: str) -> str:
        """The ownership unit of a vDisk: itself, or for a volume group's disk the virtual
        target that serves it (``vg-NAME-tgtI``)."""
        name = volume_group_of(vdisk_id)
        if name is None or not self.exists(name):
            return vdisk_id
        for target in self.load(name).targets():
            if vdisk_id in target.vdisk_ids:
                return target.unit_id
        return vdisk_id

    def target_of_unit(self, unit_id: str) -> tuple[VolumeGroup, VirtualTarget] | None:
        """The group and virtual target whose ownership unit is ``unit_id``, if any."""
        if VG_UNIT_RE.match(unit_id) is None:
            return None
        return self.find_target(f"{IQN_AUTHORITY}{unit_id}")

    def find_target(self, iqn: str) -> tuple[VolumeGroup, VirtualTarget] | None:
        """The group and virtual target named ``iqn``, if any."""
        if not iqn.startswith(VG_TARGET_PREFIX):
            return None
        for group in self.all():
            target = group.target(iqn)
            if target is not None:
                return group, target
        return None
