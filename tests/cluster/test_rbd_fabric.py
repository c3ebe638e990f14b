"""A cluster whose vDisks live on Ceph RBD (`cluster up --fabric rbd:POOL/PREFIX`): `vm
create` makes one image per vDisk, the CVMs serve them through librbd, and a take-over breaks
the previous owner's image lock (blocklisting its Ceph client) before serving. The project's
initiator verifies writes through node 1's redirector while node 1's stargate is killed:
nothing acknowledged is lost, and the new owners hold the images' locks."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import trio

from cluster.supervisor import Supervisor
from iscsicore.portal import Portal
from stargate.stores.rbd import RbdLocation, RbdStore
from tests.cluster.conftest import run_cli, unique_cluster_base
from tests.cluster.test_zookeeper_cluster import VDISKS, verify_workload, wait_serving
from tests.peers.ceph import POOL, CephCluster
from topology.vdisk import VDiskMeta

pytestmark = pytest.mark.ceph

FAILOVER_TIMEOUT = 20.0
MiB = 1 << 20


async def test_an_rbd_cluster_fails_over_with_the_lock_broken(
    ceph_cluster: CephCluster, cluster_dir: Path
) -> None:
    prefix = f"c{uuid.uuid4().hex[:8]}-"
    fabric = f"rbd:{POOL}/{prefix}"
    up = json.loads(
        run_cli(
            "cluster", "up", "--nodes", "3", "--dir", str(cluster_dir),
            "--base-address", unique_cluster_base(), "--fabric", fabric,
            "--ceph-conf", str(ceph_cluster.conf_path), "--stable-window", "4",
            "--nop-interval", "0.5", "--nop-timeout", "2", "--detach",
        ).stdout
    )  # fmt: skip
    assert up["fabric"] == fabric
    run_cli("vm", "create", "db", "--dir", str(cluster_dir), "--node", "1", "--disks", "2",
            "--size", "16M")  # fmt: skip
    location = RbdLocation(POOL, prefix)
    for vdisk in VDISKS:  # the images exist, no sparse file was made for them
        assert not (cluster_dir / "vdisks" / f"{vdisk}.img").exists()
        with RbdStore.open_or_create(
            ceph_cluster.conf_path, location, VDiskMeta(vdisk, MiB), create=False, lock=False
        ) as image:
            assert image.size == 16 * MiB
    supervisor = Supervisor(cluster_dir)
    node1 = supervisor.spec.node(1)
    blocklisted_before = set(ceph_cluster.blocklist())

    async with verify_workload(Portal(node1.redirector_address, 3261)) as workload:
        await workload.wait_progress(10)
        await wait_serving(cluster_dir, {vdisk: {1} for vdisk in VDISKS}, 10)
        killed_at = time.monotonic()
        supervisor.kill(supervisor.stargate(1))
        with trio.fail_after(FAILOVER_TIMEOUT):
            while any(device.stats.reconnects < 1 for device in workload.devices.values()):
                await trio.sleep(0.01)
        await workload.wait_progress(FAILOVER_TIMEOUT)
        pause = time.monotonic() - killed_at
        await wait_serving(cluster_dir, {vdisk: {2, 3} for vdisk in VDISKS}, FAILOVER_TIMEOUT)
        print(f"rbd failover: I/O resumed on every disk {pause:.2f} s after the kill")

    for vdisk, report in workload.reports.items():
        assert report.mismatch_count == 0, (vdisk, [str(m) for m in report.mismatches[:5]])
        assert report.errors == 0, (vdisk, report.last_error)
        assert report.blocks_verified > 0, vdisk
    # The take-overs broke node 1's locks: its Ceph client is blocklisted.
    assert set(ceph_cluster.blocklist()) - blocklisted_before
    run_cli("cluster", "down", "--dir", str(cluster_dir))


def test_fabric_flags_are_checked(cluster_dir: Path, tmp_path: Path) -> None:
    base = unique_cluster_base()
    for flags, message in (
        (["--fabric", "nfs:x"], "is not dir or rbd:POOL"),
        (["--fabric", "rbd:a/b/c"], "POOL or POOL/IMAGE-PREFIX"),
        (["--ceph-conf", str(tmp_path / "ceph.conf")], "--ceph-conf goes with --fabric"),
    ):
        result = run_cli(
            "cluster", "up", "--nodes", "1", "--dir", str(cluster_dir), "--base-address", base,
            "--detach", *flags, check=False,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
