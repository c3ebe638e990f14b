"""A whole cluster coordinated by a real ZooKeeper: `stargate cluster up --coordinator
zk://...`, the project's initiator verifying writes through node 1's redirector, node 1's
stargate killed: its vDisks move to the other nodes (the take-overs are version-conditional
znode writes), nothing acknowledged is lost, and when it comes back they fail back."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from cluster.coordinated import record_coordinator
from cluster.cvm import ClusterStargate
from cluster.provision import create_vm
from cluster.supervisor import Supervisor
from control.client import vdisk_table
from initiator.device import BlockDevice
from initiator.session import SessionConfig
from initiator.verify import Verifier, VerifyReport
from initiator.vm import VM
from iscsicore.portal import Portal
from tests.cluster.conftest import run_cli, unique_cluster_base
from tests.conftest import start_zookeeper
from tests.peers.zookeeper import ZooKeeperServer
from topology.coordination import CoordinatorUrl, open_coordinator
from topology.ownership import OwnershipRecord
from topology.spec import ClusterPaths, ClusterSpec

pytestmark = pytest.mark.zookeeper

STABLE_WINDOW = 4.0
SESSION_TIMEOUT = 2.0
INITIATOR = SessionConfig(nop_interval=1.0, nop_timeout=3.0, replacement_timeout=60.0)
VDISKS = ["db-0", "db-1"]
FAILOVER_TIMEOUT = 20.0
FAILBACK_TIMEOUT = STABLE_WINDOW + 25.0


@dataclass
class Workload:
    devices: dict[str, BlockDevice] = field(default_factory=dict)
    verifiers: dict[str, Verifier] = field(default_factory=dict)
    reports: dict[str, VerifyReport] = field(default_factory=dict)

    def ios(self) -> dict[str, int]:
        return {vdisk: device.stats.ios for vdisk, device in self.devices.items()}

    async def wait_progress(self, timeout: float) -> float:
        """Seconds until every disk completed more I/O than now."""
        before, start = self.ios(), trio.current_time()
        with trio.fail_after(timeout):
            while any(self.ios()[v] <= before[v] for v in before):
                await trio.sleep(0.02)
        return trio.current_time() - start


@asynccontextmanager
async def verify_workload(portal: Portal) -> AsyncIterator[Workload]:
    workload = Workload()

    async def verify(vdisk: str, verifier: Verifier) -> None:
        workload.reports[vdisk] = await verifier.run(0, queue_depth=4)

    async with VM(portal, config=INITIATOR) as vm, trio.open_nursery() as nursery:
        for vdisk in VDISKS:
            device = await vm.attach(vdisk)
            workload.devices[vdisk] = device
            workload.verifiers[vdisk] = Verifier(device, region_blocks=4096, seed=len(vdisk))
        for vdisk, verifier in workload.verifiers.items():
            nursery.start_soon(verify, vdisk, verifier)
        try:
            yield workload
        finally:
            for verifier in workload.verifiers.values():
                verifier.stop()


async def serving(directory: Path) -> dict[str, int | None]:
    spec, paths = ClusterSpec.load(directory), ClusterPaths(directory)
    return {row["id"]: row["serving_node"] for row in await vdisk_table(spec, paths)}


async def wait_serving(directory: Path, wanted: dict[str, set[int]], timeout: float) -> None:
    now: dict[str, int | None] = {}
    with trio.move_on_after(timeout):
        while True:
            now = await serving(directory)
            if all(now.get(vdisk) in nodes for vdisk, nodes in wanted.items()):
                return
            await trio.sleep(0.2)
    pytest.fail(f"not served as {wanted} within {timeout} s: {now}")


async def test_a_zookeeper_cluster_fails_over_and_back(
    zookeeper_server: ZooKeeperServer, cluster_dir: Path
) -> None:
    url = zookeeper_server.url(session_timeout=SESSION_TIMEOUT)
    up = json.loads(
        run_cli(
            "cluster", "up", "--nodes", "3", "--dir", str(cluster_dir),
            "--base-address", unique_cluster_base(), "--coordinator", url,
            "--stable-window", str(STABLE_WINDOW), "--nop-interval", "0.5",
            "--nop-timeout", "2", "--detach",
        ).stdout
    )  # fmt: skip
    assert up["coordinator"] == url
    run_cli("vm", "create", "db", "--dir", str(cluster_dir), "--node", "1", "--disks", "2",
            "--size", "16M")  # fmt: skip
    supervisor = Supervisor(cluster_dir)
    node1 = supervisor.spec.node(1)

    async with open_coordinator(url, cluster_dir) as zookeeper:
        # The cluster's description and its members are in ZooKeeper.
        assert await zookeeper.load_spec() == supervisor.spec
        assert [vm.name for vm in await zookeeper.load_vms()] == ["db"]
        members = await zookeeper.members()
        assert {f"{kind}-{n}" for kind in ("stargate", "redirector") for n in (1, 2, 3)} <= set(
            members
        )

        async with verify_workload(Portal(node1.redirector_address, 3261)) as workload:
            await workload.wait_progress(10)
            await wait_serving(cluster_dir, {vdisk: {1} for vdisk in VDISKS}, 10)
            for vdisk in VDISKS:
                assert await zookeeper.read_ownership(vdisk) == OwnershipRecord(1, 1)
            assert not (cluster_dir / "ownership").exists() or not any(
                (cluster_dir / "ownership").iterdir()
            )  # no record in the directory: ZooKeeper holds them

            killed_at = time.monotonic()
            supervisor.kill(supervisor.stargate(1))
            with trio.fail_after(FAILOVER_TIMEOUT):  # every disk logged in elsewhere
                while any(device.stats.reconnects < 1 for device in workload.devices.values()):
                    await trio.sleep(0.01)
            await workload.wait_progress(FAILOVER_TIMEOUT)
            pause = time.monotonic() - killed_at
            await wait_serving(cluster_dir, {vdisk: {2, 3} for vdisk in VDISKS}, FAILOVER_TIMEOUT)
            print(f"failover: I/O resumed on every disk {pause:.2f} s after the kill")
            for vdisk in VDISKS:
                record = await zookeeper.read_ownership(vdisk)
                assert record is not None and record.node_id in (2, 3) and record.epoch == 2
            # The killed stargate's entry goes with its session.
            while "stargate-1" in await zookeeper.members():
                assert time.monotonic() - killed_at < SESSION_TIMEOUT * 3 + 5
                await trio.sleep(0.1)

            supervisor.start(supervisor.stargate(1))
            assert await supervisor.wait_ready([supervisor.stargate(1)]) == []
            await wait_serving(cluster_dir, {vdisk: {1} for vdisk in VDISKS}, FAILBACK_TIMEOUT)
            await workload.wait_progress(FAILOVER_TIMEOUT)
            for vdisk in VDISKS:
                record = await zookeeper.read_ownership(vdisk)
                assert record is not None and record.node_id == 1 and record.epoch == 3
                assert workload.devices[vdisk].stats.reconnects >= 2  # away and back
            assert "stargate-1" in await zookeeper.members()

    for vdisk, report in workload.reports.items():
        assert report.mismatch_count == 0, (vdisk, [str(m) for m in report.mismatches[:5]])
        assert report.errors == 0, (vdisk, report.last_error)
        assert report.blocks_verified > 0, vdisk
    listing = json.loads(run_cli("vdisk", "list", "--dir", str(cluster_dir), "--json").stdout)
    assert {row["id"]: (row["owner_node"], row["epoch"]) for row in listing} == {
        vdisk: (1, 3) for vdisk in VDISKS
    }
    run_cli("cluster", "down", "--dir", str(cluster_dir))


async def test_a_stargate_whose_session_is_interrupted_stops_serving(tmp_path: Path) -> None:
    """Its ZooKeeper frozen, a serving stargate can no longer prove it owns the vDisk: it
    drops it at once; once the session is back, a new login takes it again (next epoch)."""
    server = start_zookeeper(tmp_path / "zookeeper")
    try:
        directory = tmp_path / "cluster"
        ClusterSpec.create(directory, 1, base_address=unique_cluster_base())
        create_vm(directory, "vm", home_node=1, disks=1, size="8M")
        url = server.url(session_timeout=1.0)
        record_coordinator(ClusterPaths(directory), CoordinatorUrl.parse(url))
        cvm = ClusterStargate(directory, 1)
        target = f"iscsi://{cvm.node.cvm_portal}/iqn.2010-06.com.nutanix:vmdisk-vm-0/0"
        async with trio.open_nursery() as nursery:
            await nursery.start(cvm.run)
            async with BlockDevice.open(target, SessionConfig(replacement_timeout=5)) as disk:
                await disk.write(0, b"\x11" * 4096)
                assert [claim.serving() for claim in cvm.claims.values()] == [True]
                server.freeze()
                try:
                    frozen_at = trio.current_time()
                    with trio.fail_after(5):
                        while cvm.claims:
                            await trio.sleep(0.02)
                    print(f"dropped {trio.current_time() - frozen_at:.2f} s after the freeze")
                finally:
                    server.freeze(False)
            with trio.fail_after(15):  # reconnected: served again, at the next epoch
                async with BlockDevice.open(target, SessionConfig(replacement_timeout=10)) as disk:
                    assert await disk.read(0, 8) == b"\x11" * 4096
                    (claim,) = cvm.claims.values()
                    assert claim.serving() and claim.fence is not None
                    assert claim.fence.record == OwnershipRecord(1, 2)
            await cvm.shutdown()
            nursery.cancel_scope.cancel()
    finally:
        server.stop()
