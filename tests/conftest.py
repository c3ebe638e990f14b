"""Fixtures shared by every test: ports, loopback addresses, data dirs, spawned processes.

`require_tool(name)` is the rule for real peers (tgtd, libiscsi tools, QEMU, fio): a missing
tool FAILS the test in CI (CI=true), where `./run tests` installs everything, and skips it
with a clear reason on a developer's machine.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.guest.build import GuestBuildError
from cluster.guest.harness import GuestImage
from tests.helpers.net import free_port as _free_port
from tests.helpers.net import unique_loopback_address
from tests.helpers.procs import ProcessReaper
from tests.peers.ceph import CephCluster, missing_binaries
from tests.peers.tgtd import TgtdTarget
from tests.peers.zookeeper import ZooKeeperServer, missing_jars

SHARED_MEMORY = Path("/dev/shm")


def running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str, *, why: str = "") -> str:
    """Return the path of executable ``name``; fail in CI, skip elsewhere, when missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is not None:
        return path
    reason = f"{name} is not installed{f' ({why})' if why else ''}; `./run tests` installs it"
    if running_in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the logs of the processes a failed test spawned to its report."""
    report = yield
    reaper = getattr(item, "funcargs", {}).get("process_reaper")
    if report.failed and isinstance(reaper, ProcessReaper) and reaper.processes:
        report.sections.append((f"spawned processes ({report.when})", reaper.report()))
    return report


@pytest.fixture(scope="module")
def guest_image() -> GuestImage:
    """The cached open-iscsi guest image (cluster/guest; built on first use, ~15 s; installs
    QEMU etc. if missing). Where it cannot be built: a failure in CI, a skip elsewhere."""
    try:
        return GuestImage.ensure()
    except GuestBuildError as error:
        if running_in_ci():
            pytest.fail(f"guest image: {error}", pytrace=False)
        pytest.skip(f"guest image cannot be built here: {error}")


@pytest.fixture
def free_port() -> int:
    """A TCP port free on 127.0.0.1 (and, in practice, on every loopback address)."""
    return _free_port()


@pytest.fixture
def loopback_address() -> str:
    """A 127.x.y.z address unique to this test, so tests on fixed ports don't collide."""
    return unique_loopback_address()


@pytest.fixture
def tmp_data_dir() -> Iterator[Path]:
    """A fresh directory for vDisk stores: in /dev/shm when it exists (fast, no disk wear)."""
    base = SHARED_MEMORY if SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="stargate-emu-test-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def process_reaper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessReaper]:
    """Spawn processes through this; all are stopped (by PID) when the test ends, and their
    logs are attached to the report of a failed test."""
    reaper = ProcessReaper(log_dir=tmp_path_factory.mktemp("process-logs"))
    try:
        yield reaper
    finally:
        reaper.reap_all()


@pytest.fixture(name="require_tool")
def require_tool_fixture() -> Callable[..., str]:
    """The `require_tool` function, for tests that prefer a fixture to an import."""
    return require_tool


@pytest.fixture
def tgtd_factory(
    process_reaper: ProcessReaper, tmp_data_dir: Path
) -> Iterator[Callable[..., TgtdTarget]]:
    """Start tgtd instances: ``tgtd_factory(lun_sizes=[64 * MiB], chap=..., redirect=...)``
    takes `TgtdTarget`'s arguments and returns it running; all are stopped after the test."""
    require_tool("tgtd", why="the reference target")
    require_tool("tgtadm", why="the reference target")
    started: list[TgtdTarget] = []

    def start(**options: Any) -> TgtdTarget:
        options.setdefault("data_dir", tmp_data_dir / f"tgtd{len(started)}")
        options.setdefault("log_dir", process_reaper.log_dir)
        target = TgtdTarget(**options)
        started.append(target)
        target.__enter__()
        if target.process is not None:
            process_reaper.track(target.process)  # its log shows up in a failed test's report
        return target

    try:
        yield start
    finally:
        for target in reversed(started):
            target.stop()


def start_zookeeper(directory: Path) -> ZooKeeperServer:
    """A ZooKeeper server of the test's own; not installed fails (never skips): the tests
    marked `zookeeper` are deselected with -m 'not zookeeper', not skipped."""
    missing = missing_jars()
    if missing:
        pytest.fail(
            f"ZooKeeper is not installed ({', '.join(map(str, missing))} missing); "
            "`./run tests` installs it, or deselect with -m 'not zookeeper'",
            pytrace=False,
        )
    server = ZooKeeperServer(directory)
    server.start()
    return server


@pytest.fixture(scope="session")
def zookeeper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """One ZooKeeper for the session (each test uses its own path in it), stopped by PID."""
    server = start_zookeeper(tmp_path_factory.mktemp("zookeeper"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    """One Ceph cluster (1 mon, 1 memstore OSD, pool `rbd`) for the session, each test using
    images of its own; stopped by PID, the OSD first. Not installed fails, never skips: the
    tests marked `ceph` are deselected with -m 'not ceph'."""
    missing = missing_binaries()
    if missing:
        pytest.fail(
            f"Ceph is not installed ({', '.join(missing)} missing); "
            "`./run tests` installs it, or deselect with -m 'not ceph'",
            pytrace=False,
        )
    cluster = CephCluster(tmp_path_factory.mktemp("ceph"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
