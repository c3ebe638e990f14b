"""Persistent reservation state and where it lives: ``DIR/<vdisk id>.pr.json``.

Registrations and the reservation belong to the vDisk, not to the stargate serving it: a
Windows failover cluster or Oracle RAC node must find its key still registered after the
stargate restarts or the vDisk moves to another CVM, or it would lose the disk (split
brain protection turns into an outage). So the state is written, atomically, on every change
whatever APTPL says, beside the vDisk's data file in the shared directory, and a stargate
loads it when it starts serving the vDisk.

The JSON document::

    {"version": 1, "generation": 7, "aptpl": true,
     "registrations": [{"initiator_port": "iqn.1991-05.com.microsoft:node1,i,0x400001370000",
                        "target_port": "iqn.2010-06.com.nutanix:vmdisk-7,t,0x1",
                        "key": "0x0123456789abcdef", "all_tg_pt": false}],
     "reservation": {"holder": ["<initiator port>", "<target port>"] | null,
                     "type": 5, "scope": 0}}

Keys are hex strings: JSON numbers above 2**53 do not survive every reader.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from iscsicore.scsi.opcodes import PrType
from stargate.scsi.command import Nexus
from topology.vdisk import atomic_write

FORMAT_VERSION = 1
PR_SUFFIX = ".pr.json"


class PrStoreError(Exception):
    """The reservation file exists but cannot be used. Never silently treated as empty:
    forgetting registrations would hand a clustered disk to whoever asks next."""


@dataclass(frozen=True, slots=True)
class Registration:
    """A registered I_T nexus and its reservation key. With ``all_tg_pt`` the registration
    covers the initiator port through every target port (SPC-4)."""

    initiator_port: str
    target_port: str
    key: int
    all_tg_pt: bool = False

    @property
    def nexus(self) -> Nexus:
        return Nexus(self.initiator_port, self.target_port)

    def covers(self, nexus: Nexus) -> bool:
        return self.initiator_port == nexus.initiator_port and (
            self.all_tg_pt or self.target_port == nexus.target_port
        )


@dataclass(frozen=True, slots=True)
class Reservation:
    """The persistent reservation. ``holder`` is None for the all-registrants types, whose
    holders are every registered I_T nexus."""

    type: PrType
    holder: Nexus | None
    scope: int = 0  # LU_SCOPE, the only scope SPC-4 keeps


@dataclass(slots=True)
class PrState:
    generation: int = 0
    aptpl: bool = False
    registrations: list[Registration] = field(default_factory=list)
    reservation: Reservation | None = None

    def to_json(self) -> str:
        document: dict[str, object] = {
            "version": FORMAT_VERSION,
            "generation": self.generation,
            "aptpl": self.aptpl,
            "registrations": [
                {
                    "initiator_port": reg.initiator_port,
                    "target_port": reg.target_port,
                    "key": f"{reg.key:#018x}",
                    "all_tg_pt": reg.all_tg_pt,
                }
                for reg in self.registrations
            ],
            "reservation": None
            if self.reservation is None
            else {
                "holder": None
                if self.reservation.holder is None
                else [self.reservation.holder.initiator_port, self.reservation.holder.target_port],
                "type": int(self.reservation.type),
                "scope": self.reservation.scope,
            },
        }
        return json.dumps(document, indent=2)

    @classmethod
    def from_json(cls, text: str) -> PrState:
        try:
            raw = json.loads(text)
            if raw.get("version") != FORMAT_VERSION:
                raise PrStoreError(f"unsupported reservation file version {raw.get('version')!r}")
            registrations = [
                Registration(
                    initiator_port=str(item["initiator_port"]),
                    target_port=str(item["target_port"]),
                    key=int(str(item["key"]), 16),
                    all_tg_pt=bool(item.get("all_tg_pt", False)),
                )
                for item in raw["registrations"]
            ]
            reservation = None
            if raw.get("reservation") is not None:
                res = raw["reservation"]
                holder = res.get("holder")
                reservation = Reservation(
                    type=PrType(int(res["type"])),
                    holder=Nexus(str(holder[0]), str(holder[1])) if holder else None,
                    scope=int(res.get("scope", 0)),
                )
            return cls(
                generation=int(raw["generation"]) & 0xFFFFFFFF,
                aptpl=bool(raw.get("aptpl", False)),
                registrations=registrations,
                reservation=reservation,
            )
        except PrStoreError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            raise PrStoreError(f"malformed reservation state: {error!r}") from error


class PrPersistence(Protocol):
    """Where a logical unit's reservation state is kept."""

    def load(self) -> PrState: ...

    def save(self, state: PrState) -> None: ...

    def changed_since_load(self) -> bool:
        """Whether someone else (the stargate that served the vDisk before) saved a state
        since this object last loaded or saved one."""
        ...


# What identifies one version of the file: a rename over it makes a new inode (numbers can
# be reused, but not within the same mtime tick and size: a hand-over takes far longer).
_FileVersion = tuple[int, int, int] | None


def _version(stat: os.stat_result) -> _FileVersion:
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


class PrFile:
    """``DIR/<vdisk id>.pr.json``, replaced atomically (temporary file, fsync, rename, fsync
    of the directory) so a crash leaves the old or the new state, never a torn one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known: _FileVersion = None  # the version last loaded or saved here

    @classmethod
    def for_vdisk(cls, data_dir: Path, vdisk_id: str) -> PrFile:
        return cls(Path(data_dir) / f"{vdisk_id}{PR_SUFFIX}")

    def load(self) -> PrState:
        """The saved state; a fresh one when the vDisk never had registrations."""
        try:
            # One open file for both: the version recorded is the version read.
            with self.path.open("rb") as file:
                version = _version(os.fstat(file.fileno()))
                text = file.read().decode()
        except FileNotFoundError:
            self._known = None
            return PrState()
        except (OSError, UnicodeDecodeError) as error:
            raise PrStoreError(f"cannot read {self.path}: {error}") from error
        try:
            state = PrState.from_json(text)
        except PrStoreError as error:
            raise PrStoreError(f"{self.path}: {error}") from error
        self._known = version
        return state

    def save(self, state: PrState) -> None:
        atomic_write(self.path, state.to_json().encode())
        self._known = _version(os.stat(self.path))

    def changed_since_load(self) -> bool:
        try:
            current: _FileVersion = _version(os.stat(self.path))
        except FileNotFoundError:
            current = None
        return current != self._known


class MemoryPrStore:
    """Keeps the last saved state as JSON in memory (memory-backed vDisks and tests); going
    through JSON keeps it honest about what a real reload would see."""

    def __init__(self) -> None:
        self.saved: str | None = None
        self.saves = 0

    def load(self) -> PrState:
        return PrState() if self.saved is None else PrState.from_json(self.saved)

    def save(self, state: PrState) -> None:
        self.saved = state.to_json()
        self.saves += 1

    def changed_since_load(self) -> bool:
        return False  # nobody else can write it
