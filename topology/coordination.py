"""What the cluster's processes agree on, and the two places they can agree on it.

    async with open_coordinator(url, directory) as coordinator:   # "dir" or zk://HOST:PORT/PATH
        cell = coordinator.ownership(vdisk_id)      # one vDisk's owner + fencing epoch
        record = await cell.fetch()
        result = await cell.compare_and_claim(record, node_id)   # the conditional take-over
        registration = await coordinator.register("stargate-1", {"pid": ...})  # liveness
        leadership = await coordinator.campaign("floating-portal", "node-1")

Two implementations: `DirectoryCoordinator` (the shared cluster directory, the embedded
default: mmap'd records, flock'd liveness and leader files) and `ZooKeeperCoordinator`
(topology/zookeeper/: versioned znodes, ephemeral znodes, an election recipe). Both keep the
hot-path fence check (`OwnershipCell.matches`) free of I/O: the directory compares the
mapped bytes, ZooKeeper the record its watch last delivered, and only while its session is
connected, so a node whose session is suspended or lost stops serving at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import trio

from topology.ownership import ClaimResult, OwnershipRecord
from topology.spec import ClusterSpec, VmRecord
from topology.vdisk import VDiskMeta

DIRECTORY_COORDINATOR = "dir"
DEFAULT_ZK_PORT = 2181
DEFAULT_SESSION_TIMEOUT = 4.0  # seconds; ZooKeeper clamps it to 2-20 of its ticks
DEFAULT_CALL_TIMEOUT = 2.0  # seconds any one ZooKeeper call may take

# Member and election names become file and znode names.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class CoordinationError(Exception):
    """The coordination service could not answer (unreachable, session gone)."""


class CoordinationTimeout(CoordinationError):
    """A call did not complete within its deadline."""


class CoordinatorUrlError(ValueError):
    """A --coordinator value that names no coordinator."""


class SessionState(Enum):
    CONNECTED = "connected"  # what this node holds is provable
    SUSPENDED = "suspended"  # connection lost, the session may still live: prove nothing
    LOST = "lost"  # the session expired: its ephemeral nodes are gone
    CLOSED = "closed"  # closed by this node


@dataclass(frozen=True, slots=True)
class CoordinatorUrl:
    """`dir` (the cluster directory) or `zk://HOST[:PORT]/PATH[?session_timeout=S]`."""

    scheme: str  # "dir" or "zk"
    host: str = ""
    port: int = DEFAULT_ZK_PORT
    path: str = ""
    session_timeout: float = DEFAULT_SESSION_TIMEOUT

    @property
    def is_directory(self) -> bool:
        return self.scheme == DIRECTORY_COORDINATOR

    @property
    def hosts(self) -> str:
        """kazoo's host string, with the chroot."""
        return f"{self.host}:{self.port}{self.path}"

    def __str__(self) -> str:
        if self.is_directory:
            return DIRECTORY_COORDINATOR
        query = ""
        if self.session_timeout != DEFAULT_SESSION_TIMEOUT:
            query = f"?session_timeout={self.session_timeout:g}"
        return f"zk://{self.host}:{self.port}{self.path}{query}"

    @classmethod
    def parse(cls, text: str) -> CoordinatorUrl:
        if text == DIRECTORY_COORDINATOR:
            return cls(DIRECTORY_COORDINATOR)
        match = _ZK_URL_RE.match(text)
        if match is None:
            raise CoordinatorUrlError(
                f"not a coordinator: {text!r} (expected 'dir' or zk://HOST:PORT/PATH)"
            )
        port = int(match["port"]) if match["port"] else DEFAULT_ZK_PORT
        if not 0 < port < 65536:
            raise CoordinatorUrlError(f"{text!r}: port {port} is out of range")
        path = match["path"].rstrip("/")
        if not path or "//" in path or any(part in (".", "..") for part in path.split("/")):
            raise CoordinatorUrlError(f"{text!r}: give the cluster its own path, e.g. /stargate")
        session_timeout = DEFAULT_SESSION_TIMEOUT
        if match["query"]:
            key, _, value = match["query"].partition("=")
            if key != "session_timeout":
                raise CoordinatorUrlError(f"{text!r}: unknown option {key!r}")
            try:
                session_timeout = float(value)
            except ValueError:
                raise CoordinatorUrlError(f"{text!r}: session_timeout {value!r}") from None
            if not 0.5 <= session_timeout <= 60:
                raise CoordinatorUrlError(f"{text!r}: session_timeout must be in [0.5, 60] s")
        return cls("zk", match["host"], port, path, session_timeout)


_ZK_URL_RE = re.compile(
    r"^zk://(?P<host>[A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])(?::(?P<port>\d{1,5}))?"
    r"(?P<path>(?:/[A-Za-z0-9._/-]*)?)(?:\?(?P<query>[a-z_]+=[^&]*))?$"
)


def check_name(kind: str, name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"{kind} {name!r}: letters, digits, '.', '_' and '-' only")
    return name


# -- the protocols --------------------------------------------------------------------------


class OwnershipCell(Protocol):
    """One vDisk's ownership record as one node sees it: who serves it, at which epoch."""

    def read(self) -> OwnershipRecord:
        """The last record this node knows (no I/O)."""
        ...

    def matches(self, expected: OwnershipRecord) -> bool:
        """The fence, checked before each command: the record is provably still
        ``expected``. No I/O."""
        ...

    async def fetch(self) -> OwnershipRecord:
        """The record as the coordinator has it now."""
        ...

    async def compare_and_claim(self, expected: OwnershipRecord, node_id: int) -> ClaimResult:
        """Write (``node_id``, epoch + 1) only if the record is still ``expected``: CLAIMED,
        MOVED (the record found), LOCKED (another claimer is at it: try again shortly) or
        UNAVAILABLE (the coordinator did not answer: the write may or may not be done)."""
        ...

    def close(self) -> None: ...


class OwnershipRecords(Protocol):
    async def read_ownership(self, vdisk_id: str) -> OwnershipRecord | None:
        """The record, None if nobody ever claimed or created it."""
        ...


class Registration(Protocol):
    """A live member: it disappears when this node closes it or dies."""

    name: str

    async def close(self) -> None: ...


class Leadership(Protocol):
    """A candidacy in one election; the leader is whoever `holds()`."""

    def holds(self) -> bool:
        """This candidate leads now, provably (no I/O)."""
        ...

    async def wait_leading(self) -> None:
        """Return once this candidate leads."""
        ...

    async def resign(self) -> None: ...


class Coordinator(Protocol):
    url: CoordinatorUrl

    async def aclose(self) -> None:
        """Withdraw this node's registrations and candidacies, end the session."""
        ...

    @property
    def session(self) -> SessionState: ...

    async def wait_session_change(self, seen: SessionState) -> SessionState:
        """Return the session state once it differs from ``seen``."""
        ...

    # ownership
    def ownership(self, vdisk_id: str) -> OwnershipCell: ...

    async def read_ownership(self, vdisk_id: str) -> OwnershipRecord | None:
        """The record, None if nobody ever claimed or created it."""
        ...

    async def set_ownership(self, vdisk_id: str, node_id: int) -> OwnershipRecord:
        """Unconditionally give the vDisk to ``node_id`` at a new epoch (set-up, tools)."""
        ...

    # liveness
    async def register(self, name: str, info: dict[str, Any]) -> Registration: ...

    async def members(self) -> dict[str, dict[str, Any]]:
        """Every live member and the information it registered with."""
        ...

    # leader election
    async def campaign(self, election: str, candidate: str) -> Leadership: ...

    async def leader(self, election: str) -> str | None:
        """The candidate leading ``election`` now, if any."""
        ...

    # the cluster's description
    async def save_spec(self, spec: ClusterSpec) -> None: ...

    async def load_spec(self) -> ClusterSpec: ...

    async def save_vm(self, vm: VmRecord) -> None: ...

    async def load_vms(self) -> list[VmRecord]: ...

    async def save_vdisk(self, meta: VDiskMeta) -> None: ...

    async def load_vdisks(self) -> list[VDiskMeta]: ...


REGISTER_RETRY = 0.5  # seconds between tries while a dead predecessor's entry lives on


async def register_when_free(
    coordinator: Coordinator, name: str, info: dict[str, Any], *, log: logging.Logger
) -> Registration:
    """Register ``name``, trying again until it is free: a killed predecessor's ZooKeeper
    entry outlives it by up to a session timeout. Bounded by the caller's cancellation."""
    warned = False
    while True:
        try:
            return await coordinator.register(name, info)
        except CoordinationError as error:
            if not warned:
                log.warning("not registered as %s yet: %s", name, error)
                warned = True
        await trio.sleep(REGISTER_RETRY)


@asynccontextmanager
async def open_coordinator(
    url: CoordinatorUrl | str, directory: Path, *, call_timeout: float = DEFAULT_CALL_TIMEOUT
) -> AsyncIterator[Coordinator]:
    """The coordinator ``url`` names, for the cluster whose directory is ``directory``,
    closed (registrations and candidacies withdrawn) on exit."""
    if isinstance(url, str):
        url = CoordinatorUrl.parse(url)
    if url.is_directory:
        from topology.directory_coordination import DirectoryCoordinator

        directory_coordinator = DirectoryCoordinator(directory)
        try:
            yield directory_coordinator
        finally:
            await directory_coordinator.aclose()
        return
    from topology.zookeeper.coordinator import open_zookeeper

    async with open_zookeeper(url, call_timeout=call_timeout) as zookeeper:
        yield zookeeper
