"""A volume group attached to Linux open-iscsi in the QEMU guest, through the Data Services IP.

A 3-node cluster advertising guest-side addresses (see cluster_fixture.py) and its DSIP as
``10.0.2.120:3260`` (``cluster up --dsip-advertise``), relayed to the DSIP's loopback portal:
discovery there names every virtual target at that address, so the node records open-iscsi
makes are the DSIP itself and every reconnect comes back through it. The group has 4 disks
over 2 virtual targets (2 LUNs each), CHAP, the guest's initiator name attached, and a
stable window of 3 s; the scenario (cluster/guest/scenarios/vg_dsip.sh) configures
discovery and session CHAP in iscsid.conf, logs in to both targets, makes ext4 on one LUN
and runs fio rounds verifying crc32c on the others while the host kills the CVM serving
the first virtual target, starts it again, then kills the DSIP leader's redirector.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from cluster.guest.harness import Guest, GuestImage, format_steps
from cluster.supervisor import Supervisor
from control.http import HttpError, http_json
from tests.guest.cluster_fixture import (
    GuestCluster,
    stargate_guest_portal,
)
from topology.spec import ClusterSpec

pytestmark = pytest.mark.slow

DSIP_GUEST = "10.0.2.120:3260"
# _guestlib.sh's start_iscsid writes it to /etc/iscsi/initiatorname.iscsi; the guest reports
# what it read there and the test checks it.
GUEST_INITIATOR = "iqn.2026-11.test.stargate-emu:guest"
USER, SECRET = "vgguest", "guest-secret-1234"
GROUP = "guestdata"
LUNS_PER_TARGET = 2
# A redirect to a stargate that just died is held by the relay this long before it closes
# (see relay.py and test_guest_cluster.py).
CONNECT_PATIENCE = 5.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[GuestCluster]:
    with GuestCluster.up(
        tmp_path / "cluster",
        nodes=3,
        stable_window=10.0,
        extra_arguments=("--dsip-advertise", DSIP_GUEST),
    ) as cluster:
        yield cluster


def guest_portals(cluster: GuestCluster) -> dict[str, int | tuple[str, int]]:
    """Every CVM and redirector, and the DSIP (bound on the host at base + 3:3260)."""
    host, port = ClusterSpec.load(cluster.directory).dsip_portal.rsplit(":", 1)
    return {**cluster.portals, DSIP_GUEST: (host, int(port))}


def group_targets(cluster: GuestCluster) -> dict[str, dict[str, Any]]:
    """``vg list --json`` of the group: each virtual target's record (serving_node, the
    connections the CVMs' /vdisks pages count, home_node)."""
    listing = json.loads(cluster.cli("vg", "list", "--dir", str(cluster.directory), "--json"))
    (document,) = [entry for entry in listing if entry["name"] == GROUP]
    return {target["iqn"]: target for target in document["targets"]}


def serving(cluster: GuestCluster) -> dict[str, int | None]:
    return {iqn: target["serving_node"] for iqn, target in group_targets(cluster).items()}


def dsip_leader(spec: ClusterSpec) -> int | None:
    """The node whose redirector says it leads the DSIP (its /stats.json "dsip")."""

    async def ask() -> int | None:
        for node in spec.nodes:
            url = f"http://{node.redirector_address}:{node.http_port}/stats.json"
            try:
                _, document = await http_json("GET", url, timeout=2.0)
            except HttpError:
                continue
            if isinstance(document, dict) and document.get("dsip", {}).get("leading"):
                return node.node_id
        return None

    return trio.run(ask)


def wait_leader(spec: ClusterSpec, excluded: int | None, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        leader = dsip_leader(spec)
        if (leader is not None and leader != excluded) or time.monotonic() > deadline:
            return leader
        time.sleep(0.2)


@pytest.mark.timeout(900)
def test_open_iscsi_uses_a_volume_group_through_the_dsip_across_failover_and_failback(
    guest_image: GuestImage, cluster: GuestCluster, request: pytest.FixtureRequest
) -> None:
    created = json.loads(
        cluster.cli(
            "vg", "create", GROUP, "--dir", str(cluster.directory),
            "--disks", "4", "--size", "32M", "--virtual-targets", "2",
            "--attach", GUEST_INITIATOR, "--chap", f"{USER}:{SECRET}",
            "--stable-window", "3", "--load-balance",
        )
    )  # fmt: skip
    targets = [target["iqn"] for target in created["targets"]]
    homes = {target["iqn"]: target["home_node"] for target in created["targets"]}
    assert [len(target["luns"]) for target in created["targets"]] == [LUNS_PER_TARGET] * 2
    victim = targets[0]
    victim_node = homes[victim]
    spec = ClusterSpec.load(cluster.directory)
    supervisor = Supervisor(cluster.directory, redirectors=True)

    with Guest(
        guest_image,
        guest_portals(cluster),
        "vg_dsip",
        env={
            "DSIP": DSIP_GUEST,
            "TARGETS": " ".join(targets),
            "LUNS_PER_TARGET": str(LUNS_PER_TARGET),
            "CHAP_USER": USER,
            "CHAP_SECRET": SECRET,
            "VICTIM_TARGET": victim,
            "VICTIM_PORTAL": stargate_guest_portal(victim_node),
            "FIO_SIZE": "4m",
            "DSIP_TAKEOVER": "1",
        },
        timeout=780,
        name=request.node.name,
        connect_patience=CONNECT_PATIENCE,
    ) as guest:
        guest.wait_for("kill-cvm", timeout=400)
        before = group_targets(cluster)
        print(f"kill took {cluster.cvm('kill', victim_node):.1f} s")
        guest.signal("kill-cvm")

        guest.wait_for("start-cvm", timeout=300)
        after_failover = serving(cluster)
        print(f"start took {cluster.cvm('start', victim_node):.1f} s")
        guest.signal("start-cvm")

        guest.wait_for("kill-leader", timeout=300)
        after_failback = group_targets(cluster)
        leader = wait_leader(spec, None, 20.0)
        assert leader is not None, "no redirector leads the DSIP"
        supervisor.kill(supervisor.process(spec.node(leader).redirector_name))
        killed = time.monotonic()
        guest.signal("kill-leader")
        new_leader = wait_leader(spec, leader, 20.0)
        print(f"DSIP leader {leader} -> {new_leader} {time.monotonic() - killed:.2f} s")
        result = guest.wait_done()
        print(f"\n{format_steps(guest.steps)}\nvalues: {guest.values}\nlogs: {guest.workdir}")
        print(f"cluster logs: {cluster.directory / 'logs'}")
        # Figures only, never asserted (TCG speed on a shared machine).
        values = result.values
        print(
            f"open-iscsi: back on another CVM {values.get('failover-seconds')} s after the "
            f"kill, home {values.get('failback-seconds')} s after the start; longest fio I/O "
            f"{values.get('fio-longest-io')} s over {values.get('fio-rounds')} rounds; "
            f"rediscovery {values.get('rediscovery-after')}"
        )

    result.assert_passed(
        "discovery",
        "login-tgt0",
        "login-tgt1",
        "all-luns-are-disks",
        "mkfs",
        "fsck",
        "fio-running",
        "victim-at-home",
        "failed-over",
        "fio-after-failover",
        "failed-back",
        "fio-after-failback",
        "fio-clean",
        "no-io-errors",
        "fsck-after",
        "ext4-data",
        "rediscovery",
        "logout-tgt0",
        "logout-tgt1",
    )
    assert result.values["initiator-name"] == GUEST_INITIATOR
    # Discovery at the DSIP: exactly the group's two virtual targets, both at the DSIP.
    assert sorted(result.values["discovered"].strip(";").split(";")) == sorted(
        f"{DSIP_GUEST},1 {iqn}" for iqn in targets
    )
    assert len(set(result.values["disks"].split())) == 2 * LUNS_PER_TARGET
    assert sorted(result.values["sys-block"].split()) == sorted(
        disk.removeprefix("/dev/") for disk in result.values["disks"].split()
    )
    sizes = [value for key, value in result.values.items() if key.startswith("size-")]
    assert sizes == [str(32 << 20)] * 4

    # The target side: before the kill each virtual target was served at home, with the
    # guest's connection counted by its CVM; open-iscsi was connected to that same CVM.
    assert {iqn: target["serving_node"] for iqn, target in before.items()} == homes
    assert all(target["connections"] >= 1 for target in before.values()), before
    for index, iqn in enumerate(targets):
        assert result.values[f"tgt{index}-current-portal"] == (
            f"{stargate_guest_portal(homes[iqn])},1"
        )
        assert result.values[f"tgt{index}-persistent-portal"] == f"{DSIP_GUEST},1"

    # Failover: the victim target's sessions came back through the DSIP on another CVM, the
    # one the cluster says serves it; the other target did not move.
    moved_to = after_failover[victim]
    assert moved_to is not None and moved_to != victim_node, after_failover
    assert result.values["failover-tgt0-current-portal"] == f"{stargate_guest_portal(moved_to)},1"
    assert result.values["failover-tgt0-persistent-portal"] == f"{DSIP_GUEST},1"
    assert after_failover[targets[1]] == homes[targets[1]]

    # Failback: home again after the group's stable window, on both sides.
    assert after_failback[victim]["serving_node"] == victim_node, after_failback
    assert after_failback[victim]["connections"] >= 1, after_failback
    assert result.values["failback-tgt0-current-portal"] == (
        f"{stargate_guest_portal(victim_node)},1"
    )

    # The DSIP moved to another redirector, and open-iscsi's new discovery found it there.
    assert new_leader is not None and new_leader != leader
