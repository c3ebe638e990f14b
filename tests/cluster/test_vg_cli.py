"""`stargate vg`: volume groups made, attached, listed and deleted from the command line;
every bad request refused with exit status 2 and a message naming the problem."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from cluster.config import cluster_config, saved_config
from cluster.timeline import build_timeline
from cluster.volume_groups import provision_volume_groups
from tests.cluster.conftest import run_cli
from topology.config_file import ConfigDocument, ConfigError
from topology.spec import ClusterPaths, ClusterSpec
from topology.volume_group import VolumeGroupError, VolumeGroupStore

HOST = "iqn.2026-12.org.example:host1"
OTHER = "iqn.2026-12.org.example:host2"


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    ClusterSpec.create(tmp_path, 3, base_address="127.88.0.0")
    return tmp_path


def test_create_prints_the_dsip_each_virtual_target_and_its_luns(directory: Path) -> None:
    created = json.loads(
        run_cli(
            "vg", "create", "data", "--dir", str(directory), "--disks", "5", "--size", "8M",
            "--virtual-targets", "2", "--attach", HOST, "--chap", "user:secret-12345",
            "--load-balance",
        ).stdout
    )  # fmt: skip
    assert created["dsip"] == "127.88.0.3:3260"
    assert created["iqn"] == "iqn.2010-06.com.nutanix:vg-data"
    assert created["chap"] is True and "secret-12345" not in json.dumps(created)
    targets = created["targets"]
    assert [t["iqn"] for t in targets] == [
        "iqn.2010-06.com.nutanix:vg-data-tgt0",
        "iqn.2010-06.com.nutanix:vg-data-tgt1",
    ]
    assert [[lun["vdisk"] for lun in t["luns"]] for t in targets] == [
        ["vg-data-0", "vg-data-2", "vg-data-4"],
        ["vg-data-1", "vg-data-3"],
    ]
    assert {lun["size"] for t in targets for lun in t["luns"]} == {8 << 20}
    assert [lun["lun"] for lun in targets[0]["luns"]] == [0, 1, 2]
    for vdisk in ("vg-data-0", "vg-data-4"):
        assert (ClusterPaths(directory).vdisks / f"{vdisk}.img").stat().st_size == 8 << 20


def test_attach_detach_list_and_delete(directory: Path) -> None:
    run_cli("vg", "create", "logs", "--dir", str(directory), "--disks", "2", "--size", "4M",
            "--preferred-node", "2")  # fmt: skip
    attached = json.loads(run_cli("vg", "attach", "logs", HOST, "--dir", str(directory)).stdout)
    assert attached["attachments"] == [HOST]
    run_cli("vg", "attach", "logs", OTHER, "--dir", str(directory))
    run_cli("vg", "detach", "logs", HOST, "--dir", str(directory))
    (listed,) = json.loads(run_cli("vg", "list", "--dir", str(directory), "--json").stdout)
    assert listed["attachments"] == [OTHER]
    assert [t["home_node"] for t in listed["targets"]] == [2, 2]
    assert [t["serving_node"] for t in listed["targets"]] == [None, None]  # nothing running
    table = run_cli("vg", "list", "--dir", str(directory)).stdout
    assert "iqn.2010-06.com.nutanix:vg-logs-tgt1" in table and OTHER in table

    refused = run_cli("vg", "delete", "logs", "--dir", str(directory), check=False)
    assert refused.returncode == 2 and "detach them first" in refused.stderr
    run_cli("vg", "delete", "logs", "--dir", str(directory), "--force")
    assert VolumeGroupStore(directory).all() == []
    assert not list(ClusterPaths(directory).vdisks.glob("vg-logs-*"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--disks", "0", "--size", "1M"], "at least one disk"),
        (["--disks", "1", "--size", "1M", "--attach", "host1"], "not an iSCSI initiator name"),
        (["--disks", "1", "--size", "1M", "--chap", "nosecret"], "USER:SECRET"),
        (["--disks", "1", "--size", "1M", "--preferred-node", "9"], "no node 9"),
        (["--disks", "1", "--size", "1M", "--virtual-targets", "40"], "1..32, not 40"),
        (["--disks", "1", "--size", "lots"], "size"),
        (["--disks", "1", "--size", "1M", "--mutual-chap", "t:secret-67890"], "needs CHAP"),
    ],
)
def test_bad_requests_are_refused_with_status_2(
    directory: Path, argv: list[str], message: str
) -> None:
    completed = run_cli("vg", "create", "bad", "--dir", str(directory), *argv, check=False)
    assert completed.returncode == 2, completed
    assert message in completed.stderr and "Traceback" not in completed.stderr
    assert VolumeGroupStore(directory).all() == []
    assert not list(ClusterPaths(directory).vdisks.glob("vg-bad-*"))


def test_unknown_groups_and_duplicates_are_refused(directory: Path) -> None:
    for argv in (["attach", "nope", HOST], ["detach", "nope", HOST], ["delete", "nope"]):
        completed = run_cli("vg", *argv, "--dir", str(directory), check=False)
        assert completed.returncode == 2 and "no volume group 'nope'" in completed.stderr
    run_cli("vg", "create", "twice", "--dir", str(directory), "--disks", "1", "--size", "1M")
    again = run_cli(
        "vg", "create", "twice", "--dir", str(directory), "--disks", "1", "--size", "1M",
        check=False,
    )  # fmt: skip
    assert again.returncode == 2 and "exists already" in again.stderr
    vm = run_cli("vm", "create", "vg-x", "--dir", str(directory), "--node", "1", "--disks",
                 "1", "--size", "1M", check=False)  # fmt: skip
    assert vm.returncode == 2 and "kept for volume groups" in vm.stderr


GROUPS_CONFIG = """nodes = 3

[[volume_group]]
name = "data"
disks = 3
size = "4M"
attach = ["iqn.2026-12.org.example:host1"]
chap = "user:secret-12345"
virtual_targets = 2
preferred_node = 2
"""


def test_volume_groups_in_the_config_file_are_made_and_saved(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(GROUPS_CONFIG)
    config = cluster_config(ConfigDocument.load(path), {}, None)
    directory = tmp_path / "cluster"
    config.spec().save(directory)
    provision_volume_groups(directory, config.volume_groups)
    group = VolumeGroupStore(directory).load("data")
    assert (group.attachments, group.virtual_targets, group.preferred_node) == ((HOST,), 2, 2)
    assert group.chap is not None and group.chap.username == "user"
    provision_volume_groups(directory, config.volume_groups)  # again: nothing to do
    saved, notes = saved_config(directory, redirectors=True)
    assert saved.volume_groups == config.volume_groups and notes == []
    again = tmp_path / "again.toml"
    again.write_text(saved.to_toml())
    assert cluster_config(ConfigDocument.load(again), {}, None).volume_groups == saved.volume_groups
    changed = replace(config.volume_groups[0], disks=4)
    with pytest.raises(VolumeGroupError, match=r"exists .* with other settings"):
        provision_volume_groups(directory, (changed,))


@pytest.mark.parametrize(
    ("line", "replacement", "message"),
    [
        ("preferred_node = 2", "preferred_node = 7", "no node 7"),
        ("virtual_targets = 2", "virtual_targets = 50", "virtual targets must be 1..32"),
        ('chap = "user:secret-12345"', 'chap = "nosecret"', "USER:SECRET"),
        ('attach = ["iqn.2026-12.org.example:host1"]', 'attach = ["host1"]', "initiator name"),
        ('size = "4M"', "", "size"),
    ],
)
def test_bad_volume_groups_in_the_file_name_the_key(
    tmp_path: Path, line: str, replacement: str, message: str
) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(GROUPS_CONFIG.replace(line, replacement))
    with pytest.raises(ConfigError, match=message) as caught:
        cluster_config(ConfigDocument.load(path), {}, None)
    assert "cluster.toml:" in str(caught.value)


def test_vdisk_list_names_the_group_of_its_disks(directory: Path) -> None:
    run_cli("vg", "create", "g1", "--dir", str(directory), "--disks", "2", "--size", "1M")
    rows = json.loads(run_cli("vdisk", "list", "--dir", str(directory), "--json").stdout)
    assert {(row["id"], row["volume_group"], row["iqn"]) for row in rows} == {
        ("vg-g1-0", "g1", None),
        ("vg-g1-1", "g1", None),
    }
    table = run_cli("vdisk", "list", "--dir", str(directory)).stdout
    assert "vg g1" in table and "vg-g1-1" in table


def test_the_timeline_gives_every_lun_of_a_virtual_target_its_logins(directory: Path) -> None:
    """A virtual target logs in as its LUN 0's vDisk; its other LUNs' lanes show it too."""
    run_cli("vg", "create", "t", "--dir", str(directory), "--disks", "2", "--size", "1M",
            "--virtual-targets", "1", "--preferred-node", "2")  # fmt: skip
    forensics = directory / "forensics"
    forensics.mkdir()
    login = {"t": 1.0, "event": "login", "vdisk": "vg-t-0", "node": 2, "session": "s1"}
    (forensics / "stargate-2.jsonl").write_text(json.dumps(login) + "\n")
    document = build_timeline(directory)
    for vdisk in ("vg-t-0", "vg-t-1"):
        lane = document["vdisks"][vdisk]
        assert lane["home"] == 2 and [s["node"] for s in lane["serving"]] == [2], (vdisk, lane)
