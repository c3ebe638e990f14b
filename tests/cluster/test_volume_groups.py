"""Volume groups behind the Data Services IP, with real clients against a running 3-node
cluster: libiscsi's iscsi-ls and iscsi-inq, QEMU's iscsi driver (qemu-img), and the
project's initiator verifying its writes through a CVM's death and return.

What is checked: discovery at the DSIP shows an initiator exactly its groups' virtual
targets and their LUNs; an initiator not attached is refused (0x0202), a wrong CHAP secret
too (0x0201); data goes to the LUN named; a group's disk is no vmdisk target of its own;
placement (load-balanced spread, preferred node); failover and failback of a virtual target
through the DSIP; another redirector takes the DSIP over when its leader dies.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from control.http import HttpError, http_json
from initiator.device import BlockDevice
from initiator.login_flow import LoginOptions
from initiator.session import SessionConfig
from initiator.url import ChapCredentials, IscsiUrl
from initiator.verify import Verifier
from iscsicore.portal import Portal
from tests.cluster.conftest import RunningCluster, run_cli, stop_everything, unique_cluster_base
from tests.conftest import require_tool
from tests.peers.tools import (
    PeerToolError,
    iscsi_inq,
    iscsi_ls,
    qemu_img_convert,
    run_tool,
)
from topology.spec import ClusterSpec

HOST = "iqn.2026-12.org.example:host1"
STRANGER = "iqn.2026-12.org.example:stranger"
USER, SECRET = "vguser", "secret-12345"
VG_PREFIX = "iqn.2010-06.com.nutanix:vg-"
MiB = 1 << 20


@pytest.fixture
def cluster(tmp_data_dir: Path) -> Iterator[RunningCluster]:
    """3 nodes with redirectors (one of them leads the DSIP), stopped by pid at the end."""
    directory = tmp_data_dir / "cluster"
    try:
        result = run_cli(
            "cluster", "up", "--nodes", "3", "--dir", str(directory),
            "--base-address", unique_cluster_base(), "--detach",
            "--nop-interval", "0.5", "--nop-timeout", "2",
        )  # fmt: skip
        yield RunningCluster(directory, ClusterSpec.load(directory), json.loads(result.stdout))
    finally:
        stop_everything(directory)


def dsip_url(cluster: RunningCluster, target: str | None = None, lun: int = 0, *,
             secret: str | None = SECRET) -> str:  # fmt: skip
    credentials = f"{USER}%{secret}@" if secret is not None else ""
    path = f"/{target}/{lun}" if target is not None else ""
    return f"iscsi://{credentials}{cluster.spec.dsip_portal}{path}"


def iscsi_options(cluster: RunningCluster, target: str, lun: int) -> dict[str, Any]:
    """QEMU's iscsi driver at the DSIP with an initiator name and CHAP."""
    return {
        "driver": "iscsi", "transport": "tcp", "portal": cluster.spec.dsip_portal,
        "target": target, "lun": lun, "initiator-name": HOST, "user": USER, "password": SECRET,
    }  # fmt: skip


def qemu_lun(cluster: RunningCluster, target: str, lun: int) -> str:
    """A json: filename for qemu-img (a raw image over the iscsi driver)."""
    return "json:" + json.dumps({"driver": "raw", "file": iscsi_options(cluster, target, lun)})


def served_by(cluster: RunningCluster, group: str) -> dict[str, int | None]:
    listing = cluster.cli_json("vg", "list", "--json")
    (document,) = [entry for entry in listing if entry["name"] == group]
    return {target["iqn"]: target["serving_node"] for target in document["targets"]}


def test_discovery_attachments_chap_and_data_through_the_dsip(
    cluster: RunningCluster, tmp_path: Path
) -> None:
    for tool in ("iscsi-ls", "iscsi-inq", "qemu-img"):
        require_tool(tool)
    created = cluster.cli_json(
        "vg", "create", "data", "--disks", "4", "--size", "16M", "--virtual-targets", "2",
        "--attach", HOST, "--chap", f"{USER}:{SECRET}",
    )  # fmt: skip
    cluster.cli("vg", "create", "other", "--disks", "1", "--size", "8M", "--attach", STRANGER)
    assert created["dsip"] == cluster.spec.dsip_portal
    targets = [target["iqn"] for target in created["targets"]]

    # Discovery: exactly the attached groups' targets, each at the DSIP, LUNs by REPORT LUNS.
    listed = iscsi_ls(dsip_url(cluster), initiator=HOST)
    assert sorted(target.name for target in listed) == sorted(targets)
    for target in listed:
        assert target.portal.startswith(cluster.spec.dsip_portal), target
        assert [lun.lun for lun in target.luns] == [0, 1], target
    stranger_sees = iscsi_ls(dsip_url(cluster, secret=None), initiator=STRANGER)
    assert [target.name for target in stranger_sees] == [f"{VG_PREFIX}other-tgt0"]

    # Logins: unattached refused with the authorization status, a wrong secret with the
    # authentication one; the right ones reach the LUN named.
    with pytest.raises(PeerToolError, match=r"Authorization failure\(514\)"):
        iscsi_inq(dsip_url(cluster, targets[0], secret=None), initiator=STRANGER)
    with pytest.raises(PeerToolError, match=r"Authentication failure\(513\)"):
        iscsi_inq(dsip_url(cluster, targets[0], 1, secret="wrong-secret"), initiator=HOST)
    inquiry = iscsi_inq(dsip_url(cluster, targets[1], 1), initiator=HOST)
    assert inquiry.device_type == "DIRECT_ACCESS"

    # Every LUN round trips its own bytes (qemu-img through the DSIP's redirect).
    for index, target in enumerate(targets):
        for lun in (0, 1):
            source = tmp_path / f"{index}-{lun}.img"
            source.write_bytes(os.urandom(2 * MiB))
            qemu_img_convert(source, qemu_lun(cluster, target, lun), create_destination=False)
    for index, target in enumerate(targets):
        for lun in (0, 1):
            back = tmp_path / f"{index}-{lun}.back"
            qemu_img_convert(qemu_lun(cluster, target, lun), back)
            written = (tmp_path / f"{index}-{lun}.img").read_bytes()
            assert back.read_bytes()[: len(written)] == written, (target, lun)

    # A group's disk is not a vmdisk target of its own, not even at a CVM directly.
    cvm = cluster.spec.node(1).cvm_portal
    with pytest.raises(PeerToolError, match=r"Not found|\(515\)"):
        iscsi_inq(f"iscsi://{cvm}/iqn.2010-06.com.nutanix:vmdisk-vg-data-0/0", initiator=HOST)
    serving = served_by(cluster, "data")
    homes = {target["iqn"]: target["home_node"] for target in created["targets"]}
    assert serving == homes, (serving, homes)


def test_load_balanced_groups_spread_and_preferred_ones_stay_on_their_node(
    cluster: RunningCluster,
) -> None:
    require_tool("iscsi-inq")
    spread = cluster.cli_json(
        "vg", "create", "spread", "--disks", "6", "--size", "4M", "--attach", HOST,
        "--load-balance",
    )  # fmt: skip
    preferring = cluster.cli_json(
        "vg", "create", "pinned", "--disks", "3", "--size", "4M", "--attach", HOST,
        "--preferred-node", "2",
    )  # fmt: skip
    for document in (spread, preferring):
        for target in document["targets"]:
            iscsi_inq(dsip_url(cluster, target["iqn"], secret=None), initiator=HOST)
    spread_over = [node or 0 for node in served_by(cluster, "spread").values()]
    assert sorted(spread_over) == [1, 1, 2, 2, 3, 3]
    assert set(served_by(cluster, "pinned").values()) == {2}


# -- failover and the DSIP's leader -----------------------------------------------------------


SESSION = SessionConfig(
    nop_interval=1.0,
    nop_timeout=3.0,
    replacement_timeout=90.0,
    login=LoginOptions(initiator_name=HOST),
)


async def _verify_through(url: IscsiUrl, stop: trio.Event, reports: list[Any], seed: int) -> None:
    async with BlockDevice.open(url, SESSION) as device:
        verifier = Verifier(device, region_blocks=2048, seed=seed)
        async with trio.open_nursery() as nursery:

            async def stop_when_told() -> None:
                await stop.wait()
                verifier.stop()

            nursery.start_soon(stop_when_told)
            reports.append((url.lun, await verifier.run(0, queue_depth=4), device))
            nursery.cancel_scope.cancel()


async def _wait_served(
    cluster: RunningCluster, group: str, wanted: Any, timeout: float
) -> dict[str, int | None]:
    serving: dict[str, int | None] = {}
    with trio.move_on_after(timeout):
        while True:
            serving = await trio.to_thread.run_sync(served_by, cluster, group)
            if wanted(set(serving.values())):
                return serving
            await trio.sleep(0.3)
    raise AssertionError(f"{group} never served as wanted: {serving}")


@pytest.mark.slow
def test_a_virtual_target_fails_over_and_back_through_the_dsip(cluster: RunningCluster) -> None:
    """Both LUNs of a virtual target verified by the project's initiator, logged in at the
    DSIP: its CVM killed, it comes back on another CVM; the CVM restarted, it comes home
    after the group's stable window. Nothing acknowledged is lost."""
    created = cluster.cli_json(
        "vg", "create", "moving", "--disks", "2", "--size", "16M", "--virtual-targets", "1",
        "--attach", HOST, "--chap", f"{USER}:{SECRET}", "--preferred-node", "1",
        "--stable-window", "3",
    )  # fmt: skip
    (target,) = created["targets"]
    portal = Portal.parse(cluster.spec.dsip_portal)
    chap = ChapCredentials(USER, SECRET)
    supervisor = cluster.supervisor()

    async def scenario() -> list[Any]:
        stop = trio.Event()
        reports: list[Any] = []
        async with trio.open_nursery() as nursery:
            for lun in (0, 1):
                url = IscsiUrl(portal, target["iqn"], lun, chap)
                nursery.start_soon(_verify_through, url, stop, reports, lun + 1)
            await _wait_served(cluster, "moving", lambda nodes: nodes == {1}, 30)
            await trio.sleep(1.0)
            supervisor.kill(supervisor.stargate(1))
            await _wait_served(cluster, "moving", lambda nodes: nodes in ({2}, {3}), 40)
            await trio.sleep(1.0)
            supervisor.start(supervisor.stargate(1))
            await _wait_served(cluster, "moving", lambda nodes: nodes == {1}, 60)
            await trio.sleep(1.0)
            stop.set()
        return reports

    reports = trio.run(scenario)
    assert sorted(lun for lun, _, _ in reports) == [0, 1]
    for lun, report, device in reports:
        assert report.mismatch_count == 0 and report.errors == 0, (lun, report.last_error)
        assert report.writes > 0 and report.blocks_verified > 0, lun
        assert device.stats.reconnects >= 2, lun  # away, and home again


@pytest.mark.slow
def test_another_redirector_takes_the_dsip_when_its_leader_dies(cluster: RunningCluster) -> None:
    require_tool("iscsi-ls")
    cluster.cli("vg", "create", "kept", "--disks", "1", "--size", "4M", "--attach", HOST)
    supervisor = cluster.supervisor()

    async def leader() -> int | None:
        for node in cluster.spec.nodes:
            url = f"http://{node.redirector_address}:{node.http_port}/stats.json"
            try:
                _, document = await http_json("GET", url, timeout=2.0)
            except HttpError:
                continue
            if isinstance(document, dict) and document.get("dsip", {}).get("leading"):
                return node.node_id
        return None

    async def wait_leader(excluded: int | None, timeout: float) -> int:
        with trio.fail_after(timeout):
            while (found := await leader()) is None or found == excluded:
                await trio.sleep(0.2)
        return found

    first = trio.run(wait_leader, None, 20.0)
    assert [t.name for t in iscsi_ls(dsip_url(cluster, secret=None), initiator=HOST)] == [
        f"{VG_PREFIX}kept-tgt0"
    ]
    supervisor.kill(supervisor.process(cluster.spec.node(first).redirector_name))
    killed = time.monotonic()
    second = trio.run(wait_leader, first, 15.0)
    assert second != first
    print(f"DSIP taken over by node {second} {time.monotonic() - killed:.2f} s after the kill")
    listed = iscsi_ls(dsip_url(cluster, secret=None), initiator=HOST, timeout=30)
    assert [target.name for target in listed] == [f"{VG_PREFIX}kept-tgt0"]


def test_faults_and_the_pages_know_a_groups_disks(cluster: RunningCluster) -> None:
    """A fault armed on a group's disk fires on that LUN only (qemu-io through the DSIP);
    `vdisk list` and the CVM's page show who serves each LUN's vDisk."""
    require_tool("qemu-io")
    created = cluster.cli_json(
        "vg", "create", "faulty", "--disks", "2", "--size", "4M", "--virtual-targets", "1",
        "--attach", HOST, "--chap", f"{USER}:{SECRET}", "--preferred-node", "1",
    )  # fmt: skip
    (target,) = created["targets"]
    cluster.cli(
        "fault", "add", "check_condition", "--node", "1", "--vdisk", "vg-faulty-1",
        "--sense", "3/0x11/0", "--io", "read", "--count", "1",
    )  # fmt: skip
    lun0 = run_tool(["qemu-io", "-c", "read 0 4k", qemu_lun(cluster, target["iqn"], 0)])
    assert "read 4096/4096" in lun0.stdout, lun0
    lun1 = run_tool(
        ["qemu-io", "-c", "read 0 4k", qemu_lun(cluster, target["iqn"], 1)], check=False
    )
    assert "read 4096/4096" not in lun1.stdout, lun1  # the fault's MEDIUM ERROR, 11/00
    assert re.search(r"0x1100|Input/output error", lun1.stdout + lun1.stderr), lun1
    rows = {row["id"]: row for row in cluster.cli_json("vdisk", "list", "--json")}
    for vdisk in ("vg-faulty-0", "vg-faulty-1"):
        assert rows[vdisk]["volume_group"] == "faulty"
        assert rows[vdisk]["serving_node"] == 1 and rows[vdisk]["owner_node"] == 1, rows[vdisk]
