"""The embedded coordinator: the shared cluster directory, one machine.

- ownership: DIR/ownership/<id>, the mmap'd record with its locked compare-and-swap
  (ownership.py), unchanged;
- liveness: DIR/live/<member>, a file its member holds an flock on for as long as it lives:
  the kernel drops the lock when the process dies, so the entry is as ephemeral as a
  ZooKeeper one; the file holds the member's JSON information;
- leader election: DIR/elections/<name>, the candidate holding its flock leads (candidates
  try it without waiting, so no event loop blocks on a stopped leader);
- the cluster's description: cluster.json, vms/, vdisks/ (spec.py, vdisk.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

import trio

from topology.coordination import (
    DIRECTORY_COORDINATOR,
    CoordinationError,
    CoordinatorUrl,
    SessionState,
    check_name,
)
from topology.ownership import (
    ClaimResult,
    OwnershipFile,
    OwnershipRecord,
    read_record,
)
from topology.spec import ClusterPaths, ClusterSpec, VmRecord, load_vms
from topology.vdisk import VDiskMeta, atomic_write

CAMPAIGN_POLL = 0.05  # seconds between a waiting candidate's tries of the leader lock


class DirectoryOwnershipCell:
    """An `OwnershipCell` over the vDisk's mapped record file."""

    def __init__(self, file: OwnershipFile) -> None:
        self.file = file
        self.read = file.read
        self.matches = file.matches  # the hot path: one unpack, no call in between

    async def fetch(self) -> OwnershipRecord:
        return self.file.read()

    async def compare_and_claim(self, expected: OwnershipRecord, node_id: int) -> ClaimResult:
        return self.file.compare_and_claim(expected, node_id)  # never waits (LOCK_NB)

    def close(self) -> None:
        self.file.close()


def _try_flock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class DirectoryRegistration:
    def __init__(self, name: str, path: Path, fd: int) -> None:
        self.name = name
        self._path = path
        self._fd: int | None = fd

    async def close(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        os.close(self._fd)  # drops the lock
        self._fd = None


class DirectoryLeadership:
    def __init__(self, path: Path, candidate: str) -> None:
        self._path = path
        self._candidate = candidate
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._leading = False

    def holds(self) -> bool:
        return self._leading

    async def wait_leading(self) -> None:
        while not self._leading:
            if self._fd is None:
                raise CoordinationError(f"{self._candidate} resigned from {self._path.name}")
            if _try_flock(self._fd, fcntl.LOCK_EX):
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, self._candidate.encode(), 0)
                self._leading = True
                return
            await trio.sleep(CAMPAIGN_POLL)

    async def resign(self) -> None:
        if self._fd is None:
            return
        if self._leading:
            os.ftruncate(self._fd, 0)
        self._leading = False
        os.close(self._fd)
        self._fd = None


class DirectoryCoordinator:
    def __init__(self, directory: Path) -> None:
        self.url = CoordinatorUrl(DIRECTORY_COORDINATOR)
        self.paths = ClusterPaths(Path(directory))
        self._session = SessionState.CONNECTED
        self._closed = trio.Event()
        self._registrations: list[DirectoryRegistration] = []
        self._candidacies: list[DirectoryLeadership] = []

    @property
    def live(self) -> Path:
        return self.paths.root / "live"

    @property
    def elections(self) -> Path:
        return self.paths.root / "elections"

    @property
    def session(self) -> SessionState:
        return self._session

    async def wait_session_change(self, seen: SessionState) -> SessionState:
        if self._session is seen:  # a directory never disconnects: only closing changes it
            await self._closed.wait()
        return self._session

    async def aclose(self) -> None:
        for registration in self._registrations:
            await registration.close()
        for leadership in self._candidacies:
            await leadership.resign()
        self._session = SessionState.CLOSED
        self._closed.set()

    # -- ownership ----------------------------------------------------------------------

    def ownership(self, vdisk_id: str) -> DirectoryOwnershipCell:
        return DirectoryOwnershipCell(OwnershipFile(self.paths.ownership_file(vdisk_id)))

    async def read_ownership(self, vdisk_id: str) -> OwnershipRecord | None:
        return read_record(self.paths.ownership_file(vdisk_id))

    async def set_ownership(self, vdisk_id: str, node_id: int) -> OwnershipRecord:
        file = OwnershipFile(self.paths.ownership_file(vdisk_id))
        try:
            return file.claim(node_id)
        finally:
            file.close()

    # -- liveness -----------------------------------------------------------------------

    async def register(self, name: str, info: dict[str, Any]) -> DirectoryRegistration:
        check_name("member", name)
        self.live.mkdir(parents=True, exist_ok=True)
        path = self.live / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_flock(fd, fcntl.LOCK_EX):
            os.close(fd)
            raise CoordinationError(f"member {name} is registered and alive already")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        registration = DirectoryRegistration(name, path, fd)
        self._registrations.append(registration)
        return registration

    async def members(self) -> dict[str, dict[str, Any]]:
        members: dict[str, dict[str, Any]] = {}
        if not self.live.is_dir():
            return members
        for path in sorted(self.live.iterdir()):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # unregistered meanwhile
            try:
                if _try_flock(fd, fcntl.LOCK_SH):
                    continue  # nobody holds it: its member died without unregistering
                with contextlib.suppress(ValueError):
                    members[path.name] = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
            finally:
                os.close(fd)
        return members

    # -- leader election ----------------------------------------------------------------

    async def campaign(self, election: str, candidate: str) -> DirectoryLeadership:
        check_name("election", election)
        self.elections.mkdir(parents=True, exist_ok=True)
        leadership = DirectoryLeadership(self.elections / election, candidate)
        self._candidacies.append(leadership)
        return leadership

    async def leader(self, election: str) -> str | None:
        check_name("election", election)
        try:
            fd = os.open(self.elections / election, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if _try_flock(fd, fcntl.LOCK_SH):
                return None
            return os.pread(fd, 4096, 0).decode() or None
        finally:
            os.close(fd)

    # -- the cluster's description ------------------------------------------------------

    async def save_spec(self, spec: ClusterSpec) -> None:
        spec.save(self.paths.root)

    async def load_spec(self) -> ClusterSpec:
        return ClusterSpec.load(self.paths.root)

    async def save_vm(self, vm: VmRecord) -> None:
        self.paths.vms.mkdir(parents=True, exist_ok=True)
        vm.save(self.paths)

    async def load_vms(self) -> list[VmRecord]:
        return load_vms(self.paths.root)

    async def save_vdisk(self, meta: VDiskMeta) -> None:
        self.paths.vdisks.mkdir(parents=True, exist_ok=True)
        atomic_write(self.paths.vdisk_meta_file(meta.vdisk_id), meta.to_json().encode())

    async def load_vdisks(self) -> list[VDiskMeta]:
        if not self.paths.vdisks.is_dir():
            return []
        return [
            VDiskMeta.load(path)
            for path in sorted(self.paths.vdisks.glob("*.json"))
            if not path.name.endswith(".pr.json") and not path.name.startswith(".")
        ]
