"""`stargate target --rbd` against a real Ceph (1 mon, 1 memstore OSD), driven by real
clients (qemu-io, iscsi-readcapacity16) and the project's initiator; the fence seen from the
client: after a take-over the old target's writes get CHECK CONDITION, never GOOD."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest
import trio

from iscsicore.login import LoginDone
from iscsicore.scsi.sense import Asc, SenseKey, parse_sense
from stargate.stores.rbd import RbdLocation, RbdStore
from tests.helpers.net import free_port
from tests.helpers.procs import ManagedProcess, ProcessReaper
from tests.peers.ceph import POOL, CephCluster
from tests.peers.tools import PeerToolError, iscsi_readcapacity16, iscsi_url, qemu_io
from tests.stargate.client import TestInitiator, clear_unit_attention, write10
from topology.naming import target_name_for
from topology.vdisk import VDiskMeta

pytestmark = pytest.mark.ceph

HOST = "127.0.0.1"
MiB = 1 << 20
CHECK_CONDITION = 0x02

Launch = Callable[..., tuple[ManagedProcess, int]]


@pytest.fixture
def location() -> RbdLocation:
    return RbdLocation(POOL, f"t{uuid.uuid4().hex[:8]}-")


@pytest.fixture
def launch(
    process_reaper: ProcessReaper, ceph_cluster: CephCluster, location: RbdLocation
) -> Iterator[Launch]:
    """Start `stargate target --rbd` on this test's image prefix; stopped by the reaper."""

    def start(*vdisks: str, extra: tuple[str, ...] = ()) -> tuple[ManagedProcess, int]:
        port = free_port(HOST)
        argv = [sys.executable, "-m", "stargate", "target", "--portal", f"{HOST}:{port}"]
        argv += ["--rbd", str(location), "--ceph-conf", str(ceph_cluster.conf_path), *extra]
        for vdisk in vdisks:
            argv += ["--vdisk", vdisk]
        process = process_reaper.spawn(argv, name="stargate-rbd")
        process.wait_for_port(HOST, port, timeout=30)
        return process, port

    yield start


def url(port: int, vdisk_id: str) -> str:
    return iscsi_url(HOST, port, target_name_for(vdisk_id), 0)


def test_qemu_round_trip_and_restart_on_the_existing_image(
    require_tool: Callable[..., str],
    launch: Launch,
    ceph_cluster: CephCluster,
    location: RbdLocation,
) -> None:
    require_tool("qemu-io")
    require_tool("iscsi-readcapacity16")
    process, port = launch("rv1:32M")
    assert iscsi_readcapacity16(url(port, "rv1")).total_size == 32 * MiB
    qemu_io(url(port, "rv1"), ["write -P 0x5a 1M 1M", "write -P 0xa5 31M 64k", "flush"])
    qemu_io(url(port, "rv1"), ["read -P 0x5a 1M 1M", "read -P 0xa5 31M 64k", "read -P 0 0 1M"])
    process.stop()
    # The bytes are in Ceph, not in the target: another librbd client reads them.
    with RbdStore.open_or_create(
        ceph_cluster.conf_path, location, VDiskMeta("rv1", MiB), create=False
    ) as store:
        assert store.size == 32 * MiB
        assert store.read(MiB, MiB) == b"\x5a" * MiB
    # Restarted without a size: the existing image, its stored size, its data.
    _, port = launch("rv1")
    assert iscsi_readcapacity16(url(port, "rv1")).total_size == 32 * MiB
    qemu_io(url(port, "rv1"), ["read -P 0x5a 1M 1M", "read -P 0xa5 31M 64k"])


def test_missing_image_without_size_and_locked_image_are_clear_errors(
    launch: Launch, ceph_cluster: CephCluster, location: RbdLocation
) -> None:
    argv = [sys.executable, "-m", "stargate", "target", "--portal", f"{HOST}:{free_port()}"]
    argv += ["--rbd", str(location), "--ceph-conf", str(ceph_cluster.conf_path)]
    missing = _run_failing([*argv, "--vdisk", "nothere"])
    assert "cannot open vDisk nothere" in missing and "does not exist" in missing
    launch("held:8M")
    locked = _run_failing([*argv, "--vdisk", "held:8M"])
    assert "cannot open vDisk held" in locked and "is locked by" in locked


def _run_failing(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def test_take_over_fences_the_old_target(
    require_tool: Callable[..., str],
    launch: Launch,
    ceph_cluster: CephCluster,
    location: RbdLocation,
) -> None:
    require_tool("qemu-io")
    _, port = launch("fv1:16M")
    qemu_io(url(port, "fv1"), ["write -P 0x11 0 64k"])
    with RbdStore.open_or_create(
        ceph_cluster.conf_path, location, VDiskMeta("fv1", MiB), take_over=True
    ) as new_owner:
        new_owner.write(0, b"\x22" * 4096)
        # The old target still runs and still has its session; its writes must now fail.
        status, sense = trio.run(_write_through_target, port)
        assert status == CHECK_CONDITION
        decoded = parse_sense(sense)
        assert (decoded.key, (decoded.asc, decoded.ascq)) == (
            SenseKey.MEDIUM_ERROR,
            Asc.WRITE_ERROR.value,
        )
        with pytest.raises(PeerToolError):
            qemu_io(url(port, "fv1"), ["write -P 0x33 0 4k"])
        # The data is the new owner's: nothing of the old target's late writes landed.
        assert new_owner.read(0, 8192) == b"\x22" * 4096 + b"\x11" * 4096


async def _write_through_target(port: int) -> tuple[int | None, bytes]:
    initiator = await TestInitiator.connect(port)
    try:
        assert isinstance(await initiator.login(target_name_for("fv1")), LoginDone)
        await clear_unit_attention(initiator)
        result = await initiator.scsi(write10(0, 8), write_data=b"\x44" * 4096)
        return result.status, bytes(result.sense)
    finally:
        await initiator.close()


def test_a_frozen_target_wakes_up_fenced(
    launch: Launch, ceph_cluster: CephCluster, location: RbdLocation
) -> None:
    """SIGSTOP the owner with a write on its socket, take over, SIGCONT it: Ceph refuses the
    pending write (the initiator gets CHECK CONDITION) and the data is the new owner's."""
    process, port = launch("zv1:16M")
    new_owner: list[RbdStore] = []

    async def scenario() -> tuple[int | None, bytes]:
        initiator = await TestInitiator.connect(port)
        try:
            assert isinstance(await initiator.login(target_name_for("zv1")), LoginDone)
            await clear_unit_attention(initiator)
            first = await initiator.scsi(write10(0, 8), write_data=b"\x11" * 4096)
            assert first.status == 0
            os.kill(process.pid, signal.SIGSTOP)
            try:
                async with trio.open_nursery() as nursery:
                    outcome: list[tuple[int | None, bytes]] = []

                    async def late_write() -> None:
                        result = await initiator.scsi(
                            write10(0, 8), write_data=b"\x44" * 4096, timeout=60
                        )
                        outcome.append((result.status, bytes(result.sense)))

                    nursery.start_soon(late_write)
                    await trio.sleep(0.3)  # the write sits in the frozen target's socket
                    # (a new Ceph client's connect takes ~10 s while another is frozen: the
                    # late write's answer waits for that, hence its long timeout)
                    new_owner.append(
                        await trio.to_thread.run_sync(
                            lambda: RbdStore.open_or_create(
                                ceph_cluster.conf_path,
                                location,
                                VDiskMeta("zv1", MiB),
                                take_over=True,
                            )
                        )
                    )
                    new_owner[0].write(4096, b"\x22" * 4096)
                    os.kill(process.pid, signal.SIGCONT)
            finally:
                os.kill(process.pid, signal.SIGCONT)
            return outcome[0]
        finally:
            await initiator.close()

    try:
        status, sense = trio.run(scenario)
        assert status == CHECK_CONDITION
        assert parse_sense(sense).key == SenseKey.MEDIUM_ERROR
        assert new_owner[0].read(0, 8192) == b"\x11" * 4096 + b"\x22" * 4096
    finally:
        for store in new_owner:
            store.close()
