"""The kazoo-into-trio bridge and the session as a fence sees it, against real ZooKeeper
servers: calls complete into trio without worker threads, watches run in trio's thread,
every call has a deadline, a suspended session fails every fence at once, a lost one is
surfaced and the node's registrations come back with the new session."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.conftest import start_zookeeper
from tests.peers.zookeeper import ZooKeeperServer
from topology.coordination import CoordinationTimeout, SessionState, open_coordinator
from topology.ownership import ClaimOutcome, OwnershipRecord
from topology.spec import VmRecord
from topology.zookeeper.coordinator import ZooKeeperCoordinator

pytestmark = pytest.mark.zookeeper

BOUND = 10.0


@pytest.fixture
def own_zookeeper(tmp_path: Path) -> Iterator[ZooKeeperServer]:
    """A server of this test's own: it is frozen and replaced."""
    server = start_zookeeper(tmp_path / "zookeeper")
    try:
        yield server
    finally:
        server.stop()


async def test_calls_complete_into_trio_without_a_thread_each(
    zookeeper_server: ZooKeeperServer, tmp_path: Path
) -> None:
    async with open_coordinator(zookeeper_server.url(), tmp_path) as coordinator:
        assert isinstance(coordinator, ZooKeeperCoordinator)
        await coordinator.set_ownership("vd", 1)
        threads = threading.active_count()
        found: list[OwnershipRecord | None] = []

        async def read() -> None:
            found.append(await coordinator.read_ownership("vd"))

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(read)
        elapsed = time.perf_counter() - start
        assert found == [OwnershipRecord(1, 1)] * 200
        assert threading.active_count() == threads  # kazoo's own threads only
        print(f"200 concurrent gets: {elapsed * 1000:.0f} ms")


async def test_watches_run_in_trio_and_stop_with_the_run(
    zookeeper_server: ZooKeeperServer, tmp_path: Path
) -> None:
    url = zookeeper_server.url()
    trio_thread = threading.get_ident()
    seen: list[tuple[str, int]] = []
    changed = trio.Event()
    async with (
        open_coordinator(url, tmp_path) as watcher,
        open_coordinator(url, tmp_path) as writer,
    ):
        assert isinstance(watcher, ZooKeeperCoordinator)
        bridge = watcher.bridge
        path = watcher.node_path("watched")
        await writer.set_ownership("watched-vd", 1)  # makes the path's parent exist
        await bridge.call(lambda: bridge.client.create_async(path, b"0"))

        def on_change(event: object) -> None:
            seen.append((type(event).__name__, threading.get_ident()))
            changed.set()

        watch = bridge.forward(on_change)
        await bridge.call(lambda: bridge.client.get_async(path, watch=watch))
        assert isinstance(writer, ZooKeeperCoordinator)
        await writer.bridge.call(lambda: writer.bridge.client.set_async(path, b"1"))
        with trio.fail_after(BOUND):
            await changed.wait()
        assert seen == [("WatchedEvent", trio_thread)]
        listeners = bridge.client.state_listeners
        assert listeners  # the session's, while open
        # A watch left armed when the coordinator closes must not reach a finished run.
        await bridge.call(lambda: bridge.client.get_async(path, watch=watch))
    assert not listeners  # removed before the run ended
    assert len(seen) == 1


async def test_every_call_has_a_deadline(own_zookeeper: ZooKeeperServer, tmp_path: Path) -> None:
    # A long session: kazoo notices the dead connection only after the deadlines (about a
    # third of it), so what ends the calls here is their own deadline.
    url = own_zookeeper.url(session_timeout=10)
    async with open_coordinator(url, tmp_path, call_timeout=0.5) as coordinator:
        assert isinstance(coordinator, ZooKeeperCoordinator)
        cell = coordinator.ownership("vd")
        seen = await cell.fetch()
        own_zookeeper.freeze()
        try:
            start = trio.current_time()
            with pytest.raises(CoordinationTimeout):
                await coordinator.bridge.call(
                    lambda: coordinator.bridge.client.get_async("/"), timeout=0.3
                )
            assert 0.3 <= trio.current_time() - start < 2.0  # a loaded machine is slow
            start = trio.current_time()
            result = await cell.compare_and_claim(seen, 1)  # the claim's outcome is unknown
            assert result.outcome is ClaimOutcome.UNAVAILABLE
            assert trio.current_time() - start < 2.5
        finally:
            own_zookeeper.freeze(False)


async def test_an_interrupted_session_proves_nothing_and_a_lost_one_is_surfaced(
    own_zookeeper: ZooKeeperServer, tmp_path: Path
) -> None:
    url = own_zookeeper.url(session_timeout=1.0)
    async with open_coordinator(url, tmp_path) as coordinator:
        assert isinstance(coordinator, ZooKeeperCoordinator)
        cell = coordinator.ownership("vd")
        claimed = await cell.compare_and_claim(await cell.fetch(), 1)
        assert claimed.outcome is ClaimOutcome.CLAIMED
        await coordinator.register("stargate-1", {"pid": 1})
        assert coordinator.session is SessionState.CONNECTED and cell.matches(claimed.record)

        # Frozen server: the connection goes quiet, the session is suspended, the fence
        # fails at once (from kazoo's thread) and the node hears of it.
        own_zookeeper.freeze()
        frozen_at = trio.current_time()
        try:
            with trio.fail_after(BOUND):
                state = await coordinator.wait_session_change(SessionState.CONNECTED)
            assert state in (SessionState.SUSPENDED, SessionState.LOST)
            assert not cell.matches(claimed.record)
            print(f"suspended {trio.current_time() - frozen_at:.2f} s after the freeze")
        finally:
            own_zookeeper.freeze(False)

        # Replaced by a server that never knew the session: expired, then a new one. (It
        # refuses clients that have seen a later transaction than its own last one: another
        # client's writes bring it past ours first.)
        own_zookeeper.stop()
        replacement = ZooKeeperServer(tmp_path / "replacement", port=own_zookeeper.port)
        replacement.start()
        try:
            async with open_coordinator(replacement.url(), tmp_path) as other:
                for index in range(50):
                    await other.save_vm(VmRecord(f"filler-{index}", 1))
            with trio.fail_after(BOUND * 2):
                while coordinator.sessions_lost == 0 or (
                    coordinator.session is not SessionState.CONNECTED
                ):
                    await coordinator.wait_session_change(coordinator.session)
            # The registration is made again in the new session.
            with trio.fail_after(BOUND):
                while "stargate-1" not in await coordinator.members():
                    await trio.sleep(0.05)
            # The record is re-read in the new session: it is not ours (that server never
            # had it), so the old fence never holds again.
            with trio.fail_after(BOUND):
                while cell.read() != OwnershipRecord(0, 0):
                    await trio.sleep(0.05)
            assert not cell.matches(claimed.record)
        finally:
            replacement.stop()


async def test_candidates_are_what_kazoos_election_recipe_sees(
    zookeeper_server: ZooKeeperServer, tmp_path: Path
) -> None:
    """The election's znodes are named as kazoo's Lock/Election recipes name theirs: a
    process using kazoo's recipe on the same path sees the same order of contenders."""
    url = zookeeper_server.url()
    async with (
        open_coordinator(url, tmp_path) as first,
        open_coordinator(url, tmp_path) as second,
    ):
        assert isinstance(first, ZooKeeperCoordinator)
        leading = await first.campaign("portal", "node-1")
        await second.campaign("portal", "node-2")
        with trio.fail_after(BOUND):
            await leading.wait_leading()
        election = first.bridge.client.Election(first.node_path("elections", "portal"))
        contenders = await trio.to_thread.run_sync(election.contenders)
        assert contenders == ["node-1", "node-2"]
