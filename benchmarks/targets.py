"""The two targets under test, started the same way: one process, N vDisks/LUNs of one size,
each a sparse file in a fresh /dev/shm directory, on 127.0.0.1 and a free port.

    with StargateServer(disk_count=1, disk_size=GiB) as stargate, TgtdServer(...) as tgtd:
        stargate.url(0), tgtd.url(0), stargate.pid
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from benchmarks.trees import python_environment
from tests.helpers.net import free_port
from tests.helpers.procs import ManagedProcess, spawn
from tests.peers.tgtd import TgtdTarget

GiB = 1 << 30
MiB = 1 << 20
SHM = Path("/dev/shm")
STARGATE_IQN_PREFIX = "iqn.2010-06.com.nutanix:vmdisk-"
START_TIMEOUT_SECONDS = 60.0


class TargetKind(StrEnum):
    STARGATE = "stargate"
    TGTD = "tgtd"


class BenchTarget(Protocol):
    kind: TargetKind

    @property
    def pid(self) -> int: ...

    def url(self, disk: int = 0) -> str: ...

    def backing_file(self, disk: int = 0) -> Path: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SHM if SHM.is_dir() else None))


def stargate_executable() -> str:
    """The ``stargate`` script of the interpreter running us (the project's venv)."""
    beside_python = Path(sys.executable).with_name("stargate")
    return str(beside_python) if beside_python.exists() else "stargate"


@dataclass
class StargateServer:
    """``stargate target`` serving ``disk_count`` vDisks (ids d0, d1, ...) from /dev/shm files."""

    disk_count: int = 1
    disk_size: int = GiB
    extra_args: tuple[str, ...] = ()
    #: serve this tree's code: ``python -m stargate`` with the tree as PYTHONPATH and working
    #: directory (the A/B benchmark), instead of the venv's ``stargate`` script
    source_tree: Path | None = None
    kind: TargetKind = field(default=TargetKind.STARGATE, init=False)
    host: str = field(default="127.0.0.1", init=False)
    port: int = field(default=0, init=False)
    data_dir: Path | None = field(default=None, init=False)
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @staticmethod
    def disk_id(disk: int) -> str:
        return f"d{disk}"

    def url(self, disk: int = 0) -> str:
        return f"iscsi://{self.host}:{self.port}/{STARGATE_IQN_PREFIX}{self.disk_id(disk)}/0"

    def backing_file(self, disk: int = 0) -> Path:
        assert self.data_dir is not None, "not started"
        return self.data_dir / f"{self.disk_id(disk)}.img"

    def argv(self) -> list[str]:
        assert self.data_dir is not None
        size_mib = self.disk_size // MiB
        program = [stargate_executable()]
        if self.source_tree is not None:
            program = [sys.executable, "-m", "stargate"]
        argv = [*program, "target", "--portal", f"{self.host}:{self.port}"]
        argv += ["--data-dir", str(self.data_dir), "--log-level", "WARNING"]
        for disk in range(self.disk_count):
            argv += ["--vdisk", f"{self.disk_id(disk)}:{size_mib}M"]
        return [*argv, *self.extra_args]

    def __enter__(self) -> Self:
        self.data_dir = scratch_dir("bench-stargate-")
        self.port = free_port(self.host)
        tree = self.source_tree
        self.process = spawn(
            self.argv(),
            log_dir=self.data_dir,
            name="stargate",
            env=None if tree is None else python_environment(tree),
            cwd=tree,
        )
        try:
            self.process.wait_for_port(self.host, self.port, timeout=START_TIMEOUT_SECONDS)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.process.stop(grace=5.0)
            self.process = None
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None


@dataclass
class TgtdServer:
    """tgtd (rdwr backing store) serving ``disk_count`` LUNs (1..N) of one target."""

    disk_count: int = 1
    disk_size: int = GiB
    kind: TargetKind = field(default=TargetKind.TGTD, init=False)
    tgtd: TgtdTarget | None = field(default=None, init=False)

    @property
    def pid(self) -> int:
        assert self.tgtd is not None and self.tgtd.process is not None, "not started"
        return self.tgtd.process.pid

    def url(self, disk: int = 0) -> str:
        assert self.tgtd is not None, "not started"
        return self.tgtd.url(lun=disk + 1)

    def backing_file(self, disk: int = 0) -> Path:
        assert self.tgtd is not None, "not started"
        return self.tgtd.lun_paths[disk]

    def __enter__(self) -> Self:
        self.tgtd = TgtdTarget(
            iqn="iqn.2026-11.bench.tgtd:target1",
            lun_sizes=[self.disk_size] * self.disk_count,
            start_timeout=START_TIMEOUT_SECONDS,
        )
        self.tgtd.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.tgtd is not None:
            self.tgtd.stop()
            self.tgtd = None


FILL_CHUNK = 4 * MiB


def fill_backing_file(path: Path) -> None:
    """Write a non-zero pattern over the whole (sparse) backing file, in place.

    Both targets then read real data, and no client can skip reads of unmapped blocks:
    QEMU's iscsi driver answers reads of blocks GET LBA STATUS calls unmapped with zeros,
    without asking the target, which flatters a thin-provisioned target such as stargate.
    """
    size = path.stat().st_size
    chunk = bytes(range(256)) * (FILL_CHUNK // 256)
    with path.open("r+b") as backing:
        for offset in range(0, size, FILL_CHUNK):
            backing.write(chunk[: min(FILL_CHUNK, size - offset)])


def tgtd_version() -> str:
    try:
        completed = subprocess.run(
            ["tgtd", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (completed.stdout or completed.stderr).strip() or "unknown"
