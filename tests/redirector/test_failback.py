"""Failback: once the local stargate is stable, each remote stargate serving one of the
node's vDisks is asked (HTTP) to log its sessions out; failures are retried, boundedly.

The remote stargates' HTTP pages are stand-ins here (the real ones are exercised by
test_failover.py); the clock is the test's, so the stable window costs no time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from cluster.provision import create_vm
from control.http import HttpRequest, HttpResponse, serve_http
from redirector.config import RedirectorConfig, Timers
from redirector.failback import MAX_ATTEMPTS, Failback
from redirector.log import redirector_logger
from redirector.policy import PlacementPolicy
from tests.redirector.cluster import make_spec
from topology.directory_coordination import DirectoryCoordinator
from topology.ownership import OwnershipFile
from topology.settings import FailbackMode
from topology.spec import ClusterPaths, ClusterSpec

STABLE_WINDOW = 5.0


@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakePage:
    """A stargate's HTTP page that records control requests; fails the first ``failures``."""

    failures: int = 0
    requests: list[HttpRequest] = field(default_factory=list)

    async def handle(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        if len(self.requests) <= self.failures:
            return HttpResponse.json({"error": "busy"}, 503)
        vdisk = request.path.split("/")[3]
        if request.path.endswith("/kill"):
            return HttpResponse.json({"vdisk": vdisk, "connections_closed": 2})
        return HttpResponse.json({"vdisk": vdisk, "sessions_asked": 1})


@dataclass
class Setup:
    failback: Failback
    policy: PlacementPolicy
    clock: FakeClock
    pages: dict[int, FakePage]
    log_file: Path
    records: DirectoryCoordinator


@asynccontextmanager
async def failback_setup(
    tmp_path: Path, failures: int = 0, mode: FailbackMode = FailbackMode.LOGOUT
) -> AsyncIterator[Setup]:
    spec = make_spec(tmp_path, 3, stable_window=STABLE_WINDOW, failback=mode)
    config = RedirectorConfig(tmp_path, spec, 1, Timers(failback_logout_seconds=7))
    clock = FakeClock()
    policy = PlacementPolicy(nodes=["1", "2", "3"], local="1", stable_window=STABLE_WINDOW)
    log_file = tmp_path / "redirector.log"
    logger: logging.Logger = redirector_logger(log_file)
    failback = Failback(config, policy, logger, clock=clock)
    pages = {node.node_id: FakePage(failures) for node in spec.nodes}
    async with trio.open_nursery() as nursery:
        for node in spec.nodes:
            await nursery.start(serve_http, pages[node.node_id].handle, node.cvm_address, 2009)
        yield Setup(failback, policy, clock, pages, log_file, DirectoryCoordinator(tmp_path))
        nursery.cancel_scope.cancel()


def fail_over(setup: Setup) -> dict[str, str | None]:
    """Node 1 goes down at t=1: vDisks a and b are placed on the remotes; it is back at t=2."""
    policy, clock = setup.policy, setup.clock
    for node in ("1", "2", "3"):
        policy.mark_up(node, 0.0)
    clock.now = 1.0
    policy.mark_down("1", clock.now)
    placed = {vdisk: policy.choose(vdisk, clock.now) for vdisk in ("a", "b")}
    clock.now = 2.0
    policy.mark_up("1", clock.now)
    return placed


async def test_logout_asked_of_each_remote_once_stable(tmp_path: Path) -> None:
    async with failback_setup(tmp_path) as setup:
        placed = fail_over(setup)
        assert placed == {"a": "2", "b": "3"}
        setup.clock.now = 2.0 + STABLE_WINDOW - 0.1  # not yet stable
        await setup.failback.step(setup.records)
        assert all(not page.requests for page in setup.pages.values())

        setup.clock.now = 2.0 + STABLE_WINDOW
        await setup.failback.step(setup.records)
        (to_2,) = setup.pages[2].requests
        (to_3,) = setup.pages[3].requests
        assert (to_2.method, to_2.path, to_2.query) == (
            "POST",
            "/control/vdisks/a/logout",
            {"seconds": ["7"]},
        )
        assert to_3.path == "/control/vdisks/b/logout"
        assert not setup.pages[1].requests  # never the local stargate
        assert setup.policy.remote_placements() == {}
        assert setup.failback.stats.requested == 2

        await setup.failback.step(setup.records)  # forgotten: asked once only
        assert len(setup.pages[2].requests) == 1
    log = setup.log_file.read_text()
    assert "Failing back target iqn.2010-06.com.nutanix:vmdisk-a: " in log


async def test_failed_requests_are_retried_with_backoff(tmp_path: Path) -> None:
    async with failback_setup(tmp_path, failures=2) as setup:
        fail_over(setup)
        setup.clock.now = 10.0
        await setup.failback.step(setup.records)
        assert len(setup.pages[2].requests) == 1
        await setup.failback.step(setup.records)  # within the backoff: not asked again yet
        assert len(setup.pages[2].requests) == 1
        for _ in range(4):
            setup.clock.now += 5.0
            await setup.failback.step(setup.records)
        assert len(setup.pages[2].requests) == 3  # two failures, then success
        assert "a" not in setup.policy.remote_placements()


async def test_retries_are_bounded(tmp_path: Path) -> None:
    async with failback_setup(tmp_path, failures=100) as setup:
        fail_over(setup)
        for step in range(MAX_ATTEMPTS + 5):
            setup.clock.now = 10.0 + 10.0 * step
            await setup.failback.step(setup.records)
        assert len(setup.pages[2].requests) == MAX_ATTEMPTS
        assert setup.policy.remote_placements() == {}
        assert setup.failback.stats.abandoned == 2
    assert "abandoned after" in setup.log_file.read_text()


async def test_unreachable_remote_is_retried_then_abandoned(tmp_path: Path) -> None:
    """A remote stargate whose page does not answer at all (nothing listens)."""
    spec = make_spec(tmp_path, 2, stable_window=STABLE_WINDOW)
    config = RedirectorConfig(tmp_path, spec, 1)
    clock = FakeClock()
    policy = PlacementPolicy(nodes=["1", "2"], local="1", stable_window=STABLE_WINDOW)
    failback = Failback(config, policy, redirector_logger(tmp_path / "r.log"), clock=clock)
    policy.mark_up("2", 0.0)
    policy.mark_down("1", 0.0)
    assert policy.choose("a", 0.0) == "2"
    policy.mark_up("1", 1.0)
    for step in range(MAX_ATTEMPTS):
        clock.now = 10.0 + 10.0 * step
        await failback.step(DirectoryCoordinator(tmp_path))
    assert policy.remote_placements() == {}
    assert failback.stats.abandoned == 1


async def test_a_remote_that_died_is_not_asked(tmp_path: Path) -> None:
    async with failback_setup(tmp_path) as setup:
        fail_over(setup)
        setup.policy.mark_down("2", setup.clock.now)  # its vDisk must be placed anew
        setup.clock.now = 100.0
        await setup.failback.step(setup.records)
        assert not setup.pages[2].requests
        assert len(setup.pages[3].requests) == 1


async def test_a_restarted_redirector_fails_back_what_remotes_own(tmp_path: Path) -> None:
    """No placements in memory (the redirector restarted): the ownership records of the
    node's VMs' vDisks tell which remote stargates to ask, once the local one is stable."""
    async with failback_setup(tmp_path) as setup:
        create_vm(tmp_path, "home", home_node=1, disks=3, size="1M")
        create_vm(tmp_path, "elsewhere", home_node=2, disks=1, size="1M")
        paths = ClusterPaths(tmp_path)
        OwnershipFile(paths.ownership_file("home-0")).claim(2)
        OwnershipFile(paths.ownership_file("home-1")).claim(1)  # at home already
        OwnershipFile(paths.ownership_file("home-2")).claim(3)
        OwnershipFile(paths.ownership_file("elsewhere-0")).claim(3)  # not this node's VM
        policy = setup.policy
        policy.mark_up("1", 0.0)
        policy.mark_up("2", 0.0)  # node 3 not seen yet
        await setup.failback.step(setup.records)
        assert [r.path for r in setup.pages[2].requests] == ["/control/vdisks/home-0/logout"]
        assert not setup.pages[3].requests and not setup.pages[1].requests

        policy.mark_up("3", 1.0)
        setup.clock.now = 1.0
        await setup.failback.step(setup.records)
        assert [r.path for r in setup.pages[3].requests] == ["/control/vdisks/home-2/logout"]
        for _ in range(3):  # each asked once
            await setup.failback.step(setup.records)
        assert len(setup.pages[2].requests) == len(setup.pages[3].requests) == 1


async def test_kill_mode_asks_for_quiesce_then_kill_and_follows_a_live_change(
    tmp_path: Path,
) -> None:
    """Mode kill: POST .../kill (no seconds). cluster.json is read at each failback: a mode
    changed on the running cluster (`stargate cluster set --failback`) applies to the next."""
    async with failback_setup(tmp_path, mode=FailbackMode.KILL) as setup:
        fail_over(setup)
        setup.clock.now = 2.0 + STABLE_WINDOW
        await setup.failback.step(setup.records)
        (to_2,) = setup.pages[2].requests
        assert (to_2.method, to_2.path, to_2.query) == ("POST", "/control/vdisks/a/kill", {})
        assert setup.failback.stats.connections_killed == 4  # 2 each from pages 2 and 3
        assert setup.failback.stats.sessions_asked == 0

        spec = ClusterSpec.load(tmp_path)
        replace(spec, failback=FailbackMode.LOGOUT).save(tmp_path)
        fail_over(setup)
        setup.clock.now = 2.0 + STABLE_WINDOW
        await setup.failback.step(setup.records)
        paths = [request.path for page in setup.pages.values() for request in page.requests]
        assert sorted(path for path in paths if path.endswith("/logout")) == [
            "/control/vdisks/a/logout",
            "/control/vdisks/b/logout",
        ]
        assert len(paths) == 4  # each vDisk once per failback
        assert setup.failback.stats.sessions_asked == 2
    log = setup.log_file.read_text()
    assert "quiesced and killed 2 connection(s)" in log
