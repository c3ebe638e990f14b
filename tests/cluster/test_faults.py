"""Fault injection on real cluster processes: a SIGSTOPped owner is taken over and, once
resumed, executes nothing more for the vDisk; a SIGKILLed owner is taken over at once.
No acknowledged write is lost either way."""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from control.http import http_json
from initiator.device import BlockDevice
from initiator.session import SessionConfig
from tests.cluster.conftest import RunningCluster
from topology.ownership import read_record
from topology.spec import ClusterPaths

BLOCK = 512
CONFIG = SessionConfig(replacement_timeout=60)
OLD, STALE, NEW = b"\xa1" * 4096, b"\x5e" * 4096, b"\xc3" * 4096


async def serving_here(cluster: RunningCluster, node_id: int, vdisk_id: str) -> bool:
    status, document = await http_json("GET", f"{cluster.spec.node(node_id).http_url}/vdisks")
    assert status == 200
    return any(entry["id"] == vdisk_id and entry["serving"] for entry in document)


def on_disk(cluster: RunningCluster, vdisk_id: str, offset: int, length: int) -> bytes:
    with (cluster.directory / "vdisks" / f"{vdisk_id}.img").open("rb") as image:
        image.seek(offset)
        return image.read(length)


async def test_resumed_stopped_owner_does_not_execute_stale_commands(
    stargate_cluster: RunningCluster,
) -> None:
    cluster = stargate_cluster
    cluster.cli("vm", "create", "app", "--node", "1", "--disks", "1", "--size", "8M")
    supervisor = cluster.supervisor()
    first = supervisor.stargate(1)

    # 1 serves the vDisk and acknowledges OLD. Then it hangs (SIGSTOP) while a write of
    # STALE is on its way: the command sits, unread, in 1's socket buffer.
    async with BlockDevice.open(cluster.stargate_url(1, "app-0"), CONFIG) as on_first:
        await on_first.write(0, OLD)
        supervisor.send(first, signal.SIGSTOP)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_first.write, 0, STALE)
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()  # the initiator gives up on 1 and on this write
    # (leaving the block closes the session's socket: 1 will still read what was sent)

    # 2 takes the vDisk over (1 does not answer its release request) and writes NEW.
    with trio.fail_after(30):
        async with BlockDevice.open(cluster.stargate_url(2, "app-0"), CONFIG) as on_second:
            assert await on_second.read(0, 8) == OLD  # acknowledged by 1, readable via 2
            await on_second.write(0, NEW, fua=True)
            record = read_record(ClusterPaths(cluster.directory).ownership_file("app-0"))
            assert record is not None and (record.node_id, record.epoch) == (2, 2)

            # 1 runs again: it reads the stale write, sees the epoch moved, drops it.
            supervisor.send(first, signal.SIGCONT)
            # Long enough for 1 to read its socket and for a wrong implementation to write.
            await trio.sleep(1.5)
            assert on_disk(cluster, "app-0", 0, 4096) == NEW
            log = (cluster.directory / "logs" / "stargate-1.log").read_text()
            assert "app-0: taken over by node 2" in log
            assert not await serving_here(cluster, 1, "app-0")
            assert await serving_here(cluster, 2, "app-0")
            assert await on_second.read(0, 8) == NEW


async def test_killed_owner_is_taken_over_at_once(stargate_cluster: RunningCluster) -> None:
    cluster = stargate_cluster
    cluster.cli("vm", "create", "app", "--node", "1", "--disks", "1", "--size", "8M")
    supervisor = cluster.supervisor()
    async with BlockDevice.open(cluster.stargate_url(1, "app-0"), CONFIG) as on_first:
        await on_first.write(8, OLD)  # no FUA: acknowledged once in the shared file
        supervisor.kill(supervisor.stargate(1))
    with trio.fail_after(10):  # no release timeout to sit out: the connection is refused
        async with BlockDevice.open(cluster.stargate_url(2, "app-0"), CONFIG) as on_second:
            assert await on_second.read(8, 8) == OLD
    status = cluster.cli_json("cluster", "status", "--json")
    statuses = {entry["name"]: entry["health"] for entry in status["processes"]}
    assert statuses == {"stargate-1": "down", "stargate-2": "up"}


def test_ownership_file_is_eight_bytes(stargate_cluster: RunningCluster, tmp_path: Path) -> None:
    from tests.peers.tools import iscsi_inq

    cluster = stargate_cluster
    cluster.cli("vm", "create", "tiny", "--node", "2", "--disks", "1", "--size", "1M")
    iscsi_inq(cluster.stargate_url(2, "tiny-0"))
    path = ClusterPaths(cluster.directory).ownership_file("tiny-0")
    assert path.stat().st_size == 8
    assert read_record(path) is not None and read_record(path).node_id == 2  # type: ignore[union-attr]
