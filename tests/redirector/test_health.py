"""Health checks against real cluster-mode stargate processes: a killed stargate is down
at once (refused/reset connection), a SIGSTOPped one after the NOP timeout, a revived one up
again; the local stargate's crash is seen at redirect time without waiting for a ping; the
transitions are logged in AHV's format."""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trio

from redirector.config import RedirectorConfig, Timers
from redirector.health import HealthChecker
from redirector.log import redirector_logger
from redirector.policy import PlacementPolicy
from tests.helpers.procs import ProcessReaper
from tests.redirector.cluster import PORT, TestCluster
from topology.settings import HEALTH_KNOBS, HealthChecks
from topology.spec import ClusterSpec

INTERVAL = 0.5
NOP_TIMEOUT = 2.0
HEALTH = HealthChecks(nop_interval=INTERVAL, nop_timeout=NOP_TIMEOUT, connect_timeout=NOP_TIMEOUT)
TIMERS = Timers(health=HEALTH, startup_grace=1.0)
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


@pytest.fixture
def cluster(tmp_path: Path, process_reaper: ProcessReaper) -> TestCluster:
    return TestCluster.create(tmp_path / "cluster", process_reaper, nodes=2)


@dataclass
class Checker:
    health: HealthChecker
    policy: PlacementPolicy
    log_file: Path

    async def wait(self, node: str, healthy: bool, timeout: float) -> float:
        """Seconds until ``node`` has the given health; fails after ``timeout``."""
        started = trio.current_time()
        with trio.fail_after(timeout):
            while self.policy.is_healthy(node) != healthy:
                await trio.sleep(0.01)
        return trio.current_time() - started


@asynccontextmanager
async def checking(cluster: TestCluster, timers: Timers = TIMERS) -> AsyncIterator[Checker]:
    spec = ClusterSpec.load(cluster.directory)
    config = RedirectorConfig(cluster.directory, spec, 1, timers)
    policy = PlacementPolicy(nodes=["1", "2"], local="1", stable_window=spec.stable_window)
    log_file = cluster.redirector_log(1)
    health = HealthChecker(config, policy, redirector_logger(log_file))
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        yield Checker(health, policy, log_file)
        nursery.cancel_scope.cancel()


def log_lines(checker: Checker) -> list[str]:
    return checker.log_file.read_text().splitlines()


async def test_killed_stargate_is_down_at_once_and_up_when_back(cluster: TestCluster) -> None:
    cluster.start_stargates()
    remote = cluster.node(2).cvm_address
    async with checking(cluster) as checker:
        await checker.wait("1", True, 10)
        await checker.wait("2", True, 10)
        cluster.kill_stargate(2)
        # The reset session or the refused reconnect: within one ping interval.
        assert await checker.wait("2", False, 5) < INTERVAL + 0.5
        assert checker.policy.is_healthy("1")
        cluster.start_stargate(2)
        await checker.wait("2", True, 10)
    lines = log_lines(checker)
    assert any(
        re.fullmatch(rf"{STAMP} - WARNING - Portal {remote}:{PORT} is down", line) for line in lines
    )
    ups = [
        line
        for line in lines
        if re.fullmatch(rf"{STAMP} - INFO - Portal {remote}:{PORT} is up", line)
    ]
    assert len(ups) == 2  # at startup and once back


async def test_hung_stargate_is_down_after_the_nop_timeout(cluster: TestCluster) -> None:
    cluster.start_stargates()
    remote = cluster.node(2).cvm_address
    async with checking(cluster) as checker:
        await checker.wait("2", True, 10)
        cluster.signal_stargate(2, signal.SIGSTOP)
        try:
            # A stopped process still accepts connections (the kernel's backlog) and its
            # socket stays open: only the unanswered NOP-Out tells.
            elapsed = await checker.wait("2", False, INTERVAL + NOP_TIMEOUT + 3)
            assert elapsed >= NOP_TIMEOUT - 0.1
        finally:
            cluster.signal_stargate(2, signal.SIGCONT)
        await checker.wait("2", True, NOP_TIMEOUT + INTERVAL + 5)
    text = checker.log_file.read_text()
    down = text.index(f"Portal {remote}:{PORT} is down")
    assert f"Portal {remote}:{PORT} is up" in text[down:]


async def test_local_crash_is_seen_at_redirect_time(cluster: TestCluster) -> None:
    """Pings too rare to notice in time: the redirect-time check alone marks it down."""
    cluster.start_stargates()
    slow = Timers(health=replace(HEALTH, nop_interval=60.0), startup_grace=1.0)
    async with checking(cluster, slow) as checker:
        await checker.wait("1", True, 10)
        assert await checker.health.recheck_local()  # alive: nothing changes
        assert checker.policy.is_healthy("1")
        cluster.kill_stargate(1)
        with trio.fail_after(1):
            assert not await checker.health.recheck_local()
        assert not checker.policy.is_healthy("1")
    assert f"Portal {cluster.node(1).cvm_address}:{PORT} is down" in checker.log_file.read_text()


async def test_a_stargate_starting_late_is_not_held_to_the_stable_window(
    cluster: TestCluster,
) -> None:
    """At `cluster up` the redirector may be checking before the stargates listen: within
    the startup grace that is not "down", so the local stargate gets its vDisks at once."""
    timers = Timers(health=HEALTH, startup_grace=20.0)
    async with checking(cluster, timers) as checker:
        await trio.sleep(1.0)  # refused connections meanwhile
        cluster.start_stargates()
        await checker.wait("1", True, 15)
        assert checker.policy.local_is_stable(trio.current_time())
        assert checker.policy.choose("vd", trio.current_time()) == "1"
    assert "is down" not in checker.log_file.read_text()


async def test_never_seen_stargates_are_down_after_the_startup_grace(
    cluster: TestCluster,
) -> None:
    async with checking(cluster) as checker:
        with trio.fail_after(TIMERS.startup_grace + 3):
            while "is down" not in checker.log_file.read_text():
                await trio.sleep(0.05)
        assert checker.policy.healthy_nodes() == []
    downs = [line for line in log_lines(checker) if line.endswith(" is down")]
    assert len(downs) == 2


async def wait_logged(log_file: Path, line: str, timeout: float) -> float | None:
    """Seconds until ``line`` appears in ``log_file``; None if it did not within ``timeout``."""
    started = trio.current_time()
    with trio.move_on_after(timeout):
        while not (log_file.exists() and line in log_file.read_text()):
            await trio.sleep(0.02)
        return trio.current_time() - started
    return None


async def test_cluster_json_knobs_change_how_soon_a_hung_stargate_is_down(
    tmp_path: Path, process_reaper: ProcessReaper
) -> None:
    """Two real redirectors watch the same stargates: redirector 1 with cluster.json's
    knobs (short NOP timeout, one miss), redirector 2 told the defaults on its command line.
    A SIGSTOPped stargate is down for the first within its bound, not yet for the second,
    whose own (longer) bound is met later."""
    fast = HealthChecks(nop_interval=0.2, nop_timeout=0.5, misses=1, connect_timeout=1.0)
    cluster = TestCluster.create(tmp_path / "cluster", process_reaper, nodes=2, health=fast)
    cluster.start_stargates()
    default = HealthChecks()
    defaults = [f"--{name.replace('_', '-')}={getattr(default, name)}" for name in HEALTH_KNOBS]
    cluster.start_redirector(1, "--startup-grace", "1")
    cluster.start_redirector(2, "--startup-grace", "1", *defaults)
    hung = cluster.node(2).cvm_address
    up, down = f"Portal {hung}:{PORT} is up", f"Portal {hung}:{PORT} is down"
    for node_id in (1, 2):
        assert await wait_logged(cluster.redirector_log(node_id), up, 20) is not None
    await trio.sleep(default.nop_interval)  # both have had an answer to a NOP-Out
    cluster.signal_stargate(2, signal.SIGSTOP)
    try:
        slack = 1.5  # two cores shared by parallel tests
        elapsed = await wait_logged(cluster.redirector_log(1), down, fast.detection_bound + slack)
        assert elapsed is not None, f"not down within {fast.detection_bound + slack} s"
        # The defaults cannot have decided yet (a whole NOP timeout has not passed).
        assert down not in cluster.redirector_log(2).read_text()
        later = await wait_logged(cluster.redirector_log(2), down, default.detection_bound + slack)
        assert later is not None and elapsed + later >= default.nop_timeout - 0.1
    finally:
        cluster.signal_stargate(2, signal.SIGCONT)
