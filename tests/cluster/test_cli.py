"""The cluster as real processes, through the `stargate` CLI: up/status/down, vm create,
vdisk list, cvm kill/stop/cont/start/restart, and real initiators (libiscsi, qemu-io)
talking to one of the cluster's stargates directly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from control.http import http_json, http_request
from initiator.discovery import send_targets
from iscsicore.portal import Portal
from tests.cluster.conftest import RunningCluster, run_cli, unique_cluster_base
from tests.conftest import require_tool
from tests.helpers.net import tcp_port_answers
from tests.peers.tools import iscsi_inq, qemu_io
from topology.spec import ClusterSpec


def statuses(cluster: RunningCluster) -> dict[str, dict[str, object]]:
    status = cluster.cli_json("cluster", "status", "--json")
    return {entry["name"]: entry for entry in status["processes"]}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] != "Z"


def test_up_detach_status_down(stargate_cluster: RunningCluster) -> None:
    cluster = stargate_cluster
    document = cluster.up_document
    assert [node["node"] for node in document["nodes"]] == [1, 2]
    pids = []
    for node in document["nodes"]:
        spec = cluster.spec.node(node["node"])
        stargate = node["stargate"]
        assert stargate["health"] == "up" and stargate["state"] == "running"
        assert stargate["address"] == f"{spec.cvm_address}:3261"
        assert stargate["http"] == f"http://{spec.cvm_address}:2009"
        assert node["redirector"]["portal"] == f"{spec.redirector_address}:3261"
        assert pid_alive(stargate["pid"])
        assert tcp_port_answers(spec.cvm_address, 3261)
        pids.append(stargate["pid"])
    table = statuses(cluster)
    assert {name: entry["health"] for name, entry in table.items()} == {
        "stargate-1": "up",
        "stargate-2": "up",
    }
    assert Path(str(table["stargate-1"]["log"])).read_text().count("iSCSI") >= 1
    again = cluster.cli("cluster", "up", "--nodes", "2", "--detach", "--no-redirectors")
    assert [node["stargate"]["pid"] for node in json.loads(again.stdout)["nodes"]] == pids
    other_size = cluster.cli("cluster", "up", "--nodes", "3", "--detach", check=False)
    assert other_size.returncode == 2 and "has 2 nodes, not 3" in other_size.stderr
    other_window = cluster.cli("cluster", "up", "--nodes", "2", "--stable-window", "9", check=False)
    assert other_window.returncode == 2 and "another cluster" in other_window.stderr
    human = cluster.cli("cluster", "status").stdout
    assert "stargate-1" in human and "up" in human
    down = cluster.cli("cluster", "down").stdout
    assert "stargate-1" in down and "stargate-2" in down
    assert not any(pid_alive(pid) for pid in pids)
    assert {entry["health"] for entry in statuses(cluster).values()} == {"down"}
    assert "nothing was running" in cluster.cli("cluster", "down").stdout


def test_up_writes_the_spec_with_advertised_addresses(cluster_dir: Path) -> None:
    base = unique_cluster_base()
    run_cli(
        "cluster", "up", "--nodes", "1", "--dir", str(cluster_dir), "--base-address", base,
        "--detach", "--no-redirectors", "--stable-window", "7", "--policy", "random",
        "--release-timeout", "3",
        "--advertise", "1=10.0.2.100:3262", "--advertise", "redirector:1=10.0.2.101",
    )  # fmt: skip
    spec = ClusterSpec.load(cluster_dir)
    assert spec.stable_window == 7 and spec.placement == "random"
    assert spec.release_timeout == 3
    assert spec.node(1).cvm_portal == "10.0.2.100:3262"
    assert spec.node(1).redirector_portal == "10.0.2.101:3261"
    status = json.loads(run_cli("cluster", "status", "--dir", str(cluster_dir), "--json").stdout)
    assert (
        status["processes"][0]["health"] == "up"
    )  # it binds its own address, advertises the other
    run_cli("vm", "create", "web", "--dir", str(cluster_dir), "--node", "1", "--size", "1M")
    portal = Portal.parse(f"{spec.node(1).cvm_address}:3261")
    listed = trio.run(send_targets, portal)  # discovery at the stargate itself
    assert [(target.name, target.portals) for target in listed] == [
        ("iqn.2010-06.com.nutanix:vmdisk-web-0", ["10.0.2.100:3262,1"])
    ]


def test_up_refuses_a_busy_address_and_says_why(cluster_dir: Path, tmp_data_dir: Path) -> None:
    base = unique_cluster_base()
    first = tmp_data_dir / "first"
    try:
        run_cli("cluster", "up", "--nodes", "1", "--dir", str(first), "--base-address", base,
                "--detach", "--no-redirectors")  # fmt: skip
        result = run_cli(
            "cluster", "up", "--nodes", "1", "--dir", str(cluster_dir), "--base-address", base,
            "--detach", "--no-redirectors", "--timeout", "10", check=False,
        )  # fmt: skip
        assert result.returncode == 1
        assert "stargate-1" in result.stderr and "cannot listen" in result.stderr
    finally:
        run_cli("cluster", "down", "--dir", str(first))


def test_vm_create_and_vdisk_list(stargate_cluster: RunningCluster) -> None:
    require_tool("iscsi-inq")
    cluster = stargate_cluster
    created = cluster.cli_json(
        "vm", "create", "web", "--node", "2", "--disks", "3", "--size", "16M"
    )
    assert created["vm"] == "web" and created["home_node"] == 2
    assert created["portal"] == cluster.spec.node(2).redirector_portal
    assert [vdisk["id"] for vdisk in created["vdisks"]] == ["web-0", "web-1", "web-2"]
    for vdisk in created["vdisks"]:
        assert vdisk["iqn"] == f"iqn.2010-06.com.nutanix:vmdisk-{vdisk['id']}"
        assert vdisk["size"] == 16 << 20 and vdisk["home_node"] == 2
    again = cluster.cli("vm", "create", "web", "--node", "1", check=False)
    assert again.returncode == 2 and "exists already" in again.stderr

    listing = {row["id"]: row for row in cluster.cli_json("vdisk", "list", "--json")}
    assert set(listing) == {"web-0", "web-1", "web-2"}
    assert all(row["serving_node"] is None for row in listing.values())
    iscsi_inq(cluster.stargate_url(1, "web-1"))  # opens web-1 on stargate 1
    listing = {row["id"]: row for row in cluster.cli_json("vdisk", "list", "--json")}
    assert listing["web-1"]["serving_node"] == 1 and listing["web-1"]["owner_node"] == 1
    assert listing["web-1"]["connections"] == 0  # iscsi-inq logged out
    # Piped to a script, the table is never cut to 80 columns, however long the names.
    cluster.cli_json("vm", "create", "analytics-warehouse-primary", "--node", "1")
    table = cluster.cli("vdisk", "list").stdout
    long_iqn = "iqn.2010-06.com.nutanix:vmdisk-analytics-warehouse-primary-0"
    assert [line for line in table.splitlines() if long_iqn in line], table


def test_libiscsi_and_qemu_io_through_a_cluster_stargate(stargate_cluster: RunningCluster) -> None:
    require_tool("iscsi-inq")
    require_tool("qemu-io")
    cluster = stargate_cluster
    cluster.cli("vm", "create", "db", "--node", "1", "--disks", "1", "--size", "32M")
    inquiry = iscsi_inq(cluster.stargate_url(1, "db-0"))
    assert inquiry.fields["Peripheral Device Type"] == "DIRECT_ACCESS"
    qemu_io(cluster.stargate_url(1, "db-0"), ["write -P 0x5a 0 256k", "read -P 0x5a 0 256k"])
    # The vDisk moves to stargate 2 at its login there; the data came along.
    qemu_io(cluster.stargate_url(2, "db-0"), ["read -P 0x5a 0 256k", "write -P 0x6b 64k 4k"])
    qemu_io(cluster.stargate_url(1, "db-0"), ["read -P 0x6b 64k 4k", "read -P 0x5a 0 64k"])
    listing = {row["id"]: row for row in cluster.cli_json("vdisk", "list", "--json")}
    assert listing["db-0"]["serving_node"] == 1 and listing["db-0"]["epoch"] == 3
    metrics = trio.run(http_request, "GET", f"{cluster.spec.node(2).http_url}/metrics")
    labels = '{node="2",vdisk="db-0"}'
    assert f"stargate_vdisk_reads_total{labels} " in metrics.body.decode()
    assert f"stargate_vdisk_owned{labels} 0" in metrics.body.decode()  # it moved back to 1
    _, stats = trio.run(http_json, "GET", f"{cluster.spec.node(2).http_url}/stats.json")
    assert stats["vdisks"]["db-0"]["writes"] >= 1 and stats["vdisks"]["db-0"]["owner_node"] == 1


@pytest.mark.parametrize("action", ["kill", "stop", "restart"])
def test_cvm_fault_injection_changes_status(stargate_cluster: RunningCluster, action: str) -> None:
    cluster = stargate_cluster
    before = statuses(cluster)["stargate-1"]
    output = cluster.cli("cvm", action, "1").stdout
    assert f"stargate-1: {action}" in output
    after = statuses(cluster)
    assert after["stargate-2"]["health"] == "up"
    if action == "kill":
        assert (after["stargate-1"]["health"], after["stargate-1"]["state"]) == ("down", "exited")
        assert not pid_alive(int(before["pid"]))  # type: ignore[call-overload]
        cluster.cli("cvm", "start", "1")
    elif action == "stop":
        assert (after["stargate-1"]["health"], after["stargate-1"]["state"]) == (
            "stopped",
            "stopped",
        )
        cluster.cli("cvm", "cont", "1")
    else:
        assert after["stargate-1"]["pid"] != before["pid"]
    final = statuses(cluster)["stargate-1"]
    assert (final["health"], final["state"]) == ("up", "running")
    refused = cluster.cli("cvm", "cont", "9", check=False)
    assert refused.returncode == 2 and "no node 9" in refused.stderr


def test_top_shows_the_cluster_live(stargate_cluster: RunningCluster) -> None:
    require_tool("qemu-io")
    cluster = stargate_cluster
    cluster.cli("vm", "create", "web", "--node", "1", "--disks", "1", "--size", "8M")
    qemu_io(cluster.stargate_url(1, "web-0"), ["write -P 0x33 0 64k"])
    output = cluster.cli("top", "--iterations", "2", "--interval", "0.2").stdout
    assert "CVMs" in output and "vDisks" in output
    assert cluster.spec.node(1).cvm_portal in output and cluster.spec.node(2).cvm_portal in output
    row = next(line for line in output.splitlines() if "web-0" in line)
    assert [cell.strip() for cell in row.split("│")][1:5] == ["web-0", "web", "1", "1"]


def test_full_cluster_with_redirectors(cluster_dir: Path) -> None:
    require_tool("qemu-io")
    base = unique_cluster_base()
    up = json.loads(
        run_cli(
            "cluster",
            "up",
            "--nodes",
            "2",
            "--dir",
            str(cluster_dir),
            "--base-address",
            base,
            "--detach",
        ).stdout
    )
    for node in up["nodes"]:
        assert node["redirector"]["health"] == "up" and node["stargate"]["health"] == "up"
    status = json.loads(run_cli("cluster", "status", "--dir", str(cluster_dir), "--json").stdout)
    assert sorted(entry["name"] for entry in status["processes"]) == [
        "redirector-1", "redirector-2", "stargate-1", "stargate-2",
    ]  # fmt: skip
    assert all(Path(entry["log"]).exists() for entry in status["processes"])
    created = json.loads(
        run_cli(
            "vm", "create", "app", "--dir", str(cluster_dir), "--node", "2", "--size", "8M"
        ).stdout
    )
    portal = created["portal"]  # node 2's redirector: it sends the login to stargate 2
    url = f"iscsi://{portal}/{created['vdisks'][0]['iqn']}/0"
    qemu_io(url, ["write -P 0x42 0 64k", "read -P 0x42 0 64k"])
    listing = json.loads(run_cli("vdisk", "list", "--dir", str(cluster_dir), "--json").stdout)
    assert listing[0]["serving_node"] == 2
    redirector_pids = [node["redirector"]["pid"] for node in up["nodes"]]
    run_cli("cluster", "down", "--dir", str(cluster_dir))
    assert not any(pid_alive(pid) for pid in redirector_pids)


def test_foreground_up_takes_the_cluster_down_on_ctrl_c(cluster_dir: Path) -> None:
    base = unique_cluster_base()
    argv = ["cluster", "up", "--nodes", "1", "--dir", str(cluster_dir), "--base-address", base]
    with subprocess.Popen(
        [sys.executable, "-m", "stargate", *argv, "--no-redirectors"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as foreground:
        try:
            assert foreground.stdout is not None
            first_line = foreground.stdout.readline().decode()  # printed once all answer
            assert "Ctrl-C takes it down" in first_line
            pid = json.loads(
                run_cli("cluster", "status", "--dir", str(cluster_dir), "--json").stdout
            )["processes"][0]["pid"]
            assert pid_alive(pid)
            foreground.send_signal(signal.SIGINT)
            assert foreground.wait(timeout=30) == 0
        finally:
            if foreground.poll() is None:
                foreground.kill()
    assert not pid_alive(pid)
    assert not list((cluster_dir / "run").glob("*.pid"))
