"""The coordination contract, run against both implementations: the shared directory and a
real ZooKeeper (Debian's, started once per session by the `zookeeper_server` fixture).

Every node of a test is a coordinator of its own (its own ZooKeeper session, its own file
descriptors), as each process of a cluster has one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from topology.coordination import (
    CoordinationError,
    Coordinator,
    CoordinatorUrl,
    CoordinatorUrlError,
    open_coordinator,
)
from topology.ownership import ClaimOutcome, OwnershipRecord
from topology.spec import ClusterSpec, VmRecord
from topology.vdisk import VDiskMeta

BACKENDS = [
    pytest.param("dir", id="directory"),
    pytest.param("zk", id="zookeeper", marks=pytest.mark.zookeeper),
]
SESSION_TIMEOUT = 1.0  # seconds: the shortest the test server allows (2 ticks of 500 ms)
BOUND = 10.0  # seconds any awaited change may take before the test fails


@pytest.fixture(params=BACKENDS)
def coordinator_url(request: pytest.FixtureRequest) -> str:
    if request.param == "dir":
        return "dir"
    server = request.getfixturevalue("zookeeper_server")
    url: str = server.url(session_timeout=SESSION_TIMEOUT)
    return url


@pytest.fixture
async def nodes(coordinator_url: str, tmp_path: Path) -> AsyncIterator[list[Coordinator]]:
    """Four nodes' coordinators on one backend, closed after the test."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(open_coordinator(coordinator_url, tmp_path))
            for _ in range(4)
        ]


async def eventually(predicate: Callable[[], bool], what: str, bound: float = BOUND) -> float:
    """Seconds until ``predicate`` held; fails the test after ``bound``."""
    start = trio.current_time()
    with trio.move_on_after(bound):
        while not predicate():
            await trio.sleep(0.01)
        return trio.current_time() - start
    pytest.fail(f"not within {bound} s: {what}")


# -- ownership ----------------------------------------------------------------------------


async def test_a_take_over_is_conditional_on_the_record_read(nodes: list[Coordinator]) -> None:
    first, second = nodes[:2]
    owner, claimer = first.ownership("vd-1"), second.ownership("vd-1")
    unclaimed = await owner.fetch()
    assert unclaimed == OwnershipRecord(0, 0)
    claimed = await owner.compare_and_claim(unclaimed, 1)
    assert claimed.outcome is ClaimOutcome.CLAIMED and claimed.record == OwnershipRecord(1, 1)
    assert owner.matches(OwnershipRecord(1, 1))  # the fence holds

    seen = await claimer.fetch()
    assert seen == OwnershipRecord(1, 1)
    taken = await claimer.compare_and_claim(seen, 2)
    assert taken.outcome is ClaimOutcome.CLAIMED and taken.record == OwnershipRecord(2, 2)
    assert claimer.matches(OwnershipRecord(2, 2))
    # The old owner's fence fails without it asking (ZooKeeper: once the watch arrives).
    await eventually(lambda: not owner.matches(OwnershipRecord(1, 1)), "old fence fails")
    assert owner.read() == OwnershipRecord(2, 2)
    assert await first.read_ownership("vd-1") == OwnershipRecord(2, 2)
    assert await first.read_ownership("never-claimed") is None


async def test_a_stale_epoch_is_refused(nodes: list[Coordinator]) -> None:
    first, second = nodes[:2]
    owner, late = first.ownership("vd-2"), second.ownership("vd-2")
    assert (await owner.compare_and_claim(await owner.fetch(), 1)).record == OwnershipRecord(1, 1)
    refused = await late.compare_and_claim(OwnershipRecord(0, 0), 2)  # read before the claim
    assert refused.outcome is ClaimOutcome.MOVED and refused.record == OwnershipRecord(1, 1)
    again = await owner.compare_and_claim(OwnershipRecord(1, 1), 1)  # the owner, a later life
    assert again.record == OwnershipRecord(1, 2)
    stale = await late.compare_and_claim(OwnershipRecord(1, 1), 2)
    assert stale.outcome is ClaimOutcome.MOVED and stale.record == OwnershipRecord(1, 2)
    assert await second.read_ownership("vd-2") == OwnershipRecord(1, 2)  # nothing written
    assert owner.matches(OwnershipRecord(1, 2)) and not late.matches(OwnershipRecord(2, 2))


async def test_claims_racing_from_the_same_record_let_exactly_one_win(
    nodes: list[Coordinator],
) -> None:
    cells = [node.ownership("vd-3") for node in nodes]
    await nodes[0].set_ownership("vd-3", 9)
    seen = [await cell.fetch() for cell in cells]
    assert set(seen) == {OwnershipRecord(9, 1)}
    outcomes: dict[int, ClaimOutcome] = {}

    async def claim(index: int) -> None:
        result = await cells[index].compare_and_claim(seen[index], index + 1)
        outcomes[index] = result.outcome

    async with trio.open_nursery() as nursery:
        for index in range(len(cells)):
            nursery.start_soon(claim, index)
    winners = [i for i, outcome in outcomes.items() if outcome is ClaimOutcome.CLAIMED]
    assert len(winners) == 1, outcomes
    assert all(
        outcome in (ClaimOutcome.MOVED, ClaimOutcome.LOCKED)
        for i, outcome in outcomes.items()
        if i != winners[0]
    )
    assert await nodes[0].read_ownership("vd-3") == OwnershipRecord(winners[0] + 1, 2)


# -- liveness -----------------------------------------------------------------------------


async def test_liveness_ends_with_the_session(coordinator_url: str, tmp_path: Path) -> None:
    async with open_coordinator(coordinator_url, tmp_path) as observer:
        async with open_coordinator(coordinator_url, tmp_path) as member:
            await member.register("stargate-1", {"pid": os.getpid(), "address": "127.0.0.1"})
            assert (await observer.members())["stargate-1"]["pid"] == os.getpid()
            with pytest.raises(CoordinationError, match="alive already"):
                await observer.register("stargate-1", {})
        # Closed: gone at once (ZooKeeper deletes it, or drops it with the session).
        assert "stargate-1" not in await observer.members()
        await observer.register("stargate-1", {"pid": 2})  # free for its successor
        assert (await observer.members())["stargate-1"] == {"pid": 2}


_MEMBER_PROCESS = """
import sys, trio
from pathlib import Path
from topology.coordination import open_coordinator

async def main():
    async with open_coordinator(sys.argv[1], Path(sys.argv[2])) as coordinator:
        await coordinator.register("redirector-7", {"pid": 7})
        print("registered", flush=True)
        await trio.sleep(60)

trio.run(main)
"""


async def test_liveness_ends_when_the_process_dies(coordinator_url: str, tmp_path: Path) -> None:
    member = subprocess.Popen(
        [sys.executable, "-c", _MEMBER_PROCESS, coordinator_url, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        start_new_session=True,
    )
    try:
        assert member.stdout is not None
        line = await trio.to_thread.run_sync(member.stdout.readline)
        assert line == "registered\n"
        async with open_coordinator(coordinator_url, tmp_path) as observer:
            assert "redirector-7" in await observer.members()
            os.kill(member.pid, signal.SIGKILL)
            start = time.monotonic()
            while "redirector-7" in await observer.members():
                assert time.monotonic() - start < BOUND, "the dead member is still listed"
                await trio.sleep(0.05)
            # ZooKeeper drops it when the session expires, the directory when the lock goes.
            assert time.monotonic() - start < SESSION_TIMEOUT * 3 + 1
    finally:
        member.kill()
        member.wait(timeout=10)


# -- leader election ----------------------------------------------------------------------


async def test_election_picks_one_leader_and_a_new_one_when_it_dies(
    coordinator_url: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        first, second, third = [
            await stack.enter_async_context(open_coordinator(coordinator_url, tmp_path))
            for _ in range(3)
        ]
        leading = await first.campaign("floating-portal", "node-1")
        with trio.fail_after(BOUND):
            await leading.wait_leading()
        others = [
            await second.campaign("floating-portal", "node-2"),
            await third.campaign("floating-portal", "node-3"),
        ]
        elected: list[str] = []

        async def wait(candidate_index: int) -> None:
            await others[candidate_index].wait_leading()
            elected.append(f"node-{candidate_index + 2}")

        async with trio.open_nursery() as nursery:
            for index in range(2):
                nursery.start_soon(wait, index)
            await trio.sleep(0.3)
            assert elected == [] and leading.holds()
            assert not any(candidate.holds() for candidate in others)
            assert await second.leader("floating-portal") == "node-1"
            await leading.resign()  # the leader goes: exactly one successor
            await eventually(lambda: len(elected) == 1, "a new leader")
            await trio.sleep(0.3)
            assert len(elected) == 1
            assert sum(candidate.holds() for candidate in others) == 1
            assert await third.leader("floating-portal") == elected[0]
            nursery.cancel_scope.cancel()


# -- the cluster's description --------------------------------------------------------------


async def test_spec_vms_and_vdisks_round_trip(nodes: list[Coordinator]) -> None:
    writer, reader = nodes[:2]
    spec = ClusterSpec.build(3, stable_window=30.0, release_timeout=2.0)
    await writer.save_spec(spec)
    assert await reader.load_spec() == spec
    vm = VmRecord("db-1", 2, ["db-1-d0", "db-1-d1"], 2)
    await writer.save_vm(vm)
    await writer.save_vm(VmRecord("web", 1, ["web-d0"]))
    assert await reader.load_vms() == [vm, VmRecord("web", 1, ["web-d0"])]
    metas = [VDiskMeta(f"db-1-d{i}", 1 << 20, serial=f"s{i}", created=1.0) for i in range(2)]
    for meta in metas:
        await writer.save_vdisk(meta)
    assert await reader.load_vdisks() == metas


# -- the --coordinator value --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hosts", "timeout"),
    [
        ("zk://127.0.0.1:2181/stargate", "127.0.0.1:2181/stargate", 4.0),
        ("zk://zk.example/c/one?session_timeout=2", "zk.example:2181/c/one", 2.0),
    ],
)
def test_coordinator_urls(text: str, hosts: str, timeout: float) -> None:
    url = CoordinatorUrl.parse(text)
    assert (url.hosts, url.session_timeout) == (hosts, timeout)
    assert CoordinatorUrl.parse(str(url)) == url
    assert CoordinatorUrl.parse("dir").is_directory


@pytest.mark.parametrize(
    "text",
    [
        "zk://127.0.0.1:2181",  # no path: the cluster would own the whole tree
        "zk://127.0.0.1:2181/",
        "zk://127.0.0.1:99999/x",
        "zk://127.0.0.1/a/../b",
        "zk://127.0.0.1/x?session_timeout=0.1",
        "zk://127.0.0.1/x?retries=3",
        "etcd://127.0.0.1/x",
        "",
    ],
)
def test_bad_coordinator_urls_name_the_problem(text: str) -> None:
    with pytest.raises(CoordinatorUrlError, match=r"coordinator|path|port|session_timeout|option"):
        CoordinatorUrl.parse(text)
