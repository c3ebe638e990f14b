"""`stargate cluster up --config FILE.toml` and `stargate cluster save`: the example file
builds a cluster that serves its VMs' vDisks; what `save` prints builds an equivalent one
elsewhere, which saves to the same text; bad files are refused by key and line."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

from cluster.config import ClusterConfig, VmConfig, cluster_config, saved_config
from tests.cluster.conftest import run_cli, stop_everything, unique_cluster_base
from tests.conftest import require_tool
from tests.peers.tools import iscsi_inq
from topology.config_file import ConfigDocument
from topology.naming import target_name_for
from topology.spec import Advertisement, ClusterPaths, ClusterSpec, ClusterSpecError, VmRecord

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "cluster.toml"
EXAMPLE_VMS = (VmConfig("web", 1, 2, 64 << 20), VmConfig("db", 2, 1, 128 << 20))


def _comparable(saved: str) -> str:
    """A saved file without what differs between two copies: comments and the base."""
    lines = saved.splitlines()
    return "\n".join(line for line in lines if not line.startswith(("#", "base_address =")))


def test_the_example_file_describes_a_cluster() -> None:
    config = cluster_config(ConfigDocument.load(EXAMPLE), {}, None)
    assert config == ClusterConfig(
        nodes=3,
        base_address="127.77.0.0",
        stable_window=300,
        placement="round-robin",
        release_timeout=5,
        redirectors=True,
        vms=EXAMPLE_VMS,
    )
    overridden = cluster_config(
        ConfigDocument.load(EXAMPLE), {"nodes": 2, "placement": "random"}, None
    )
    assert (overridden.nodes, overridden.placement, overridden.vms) == (2, "random", EXAMPLE_VMS)


def test_every_setting_of_cluster_json_is_one_of_the_config() -> None:
    """A setting of cluster.json the config left out could not be saved nor given."""
    spec_settings = {field.name for field in dataclasses.fields(ClusterSpec)} - {"nodes"}
    assert spec_settings <= {field.name for field in dataclasses.fields(ClusterConfig)}


def test_up_config_serves_its_vms_and_save_recreates_it(cluster_dir: Path) -> None:
    require_tool("iscsi-inq")
    base = unique_cluster_base()
    up = ["cluster", "up", "--config", str(EXAMPLE), "--dir", str(cluster_dir), "--detach"]
    document = json.loads(run_cli(*up, "--nodes", "2", "--base-address", base).stdout)
    pids = [node["stargate"]["pid"] for node in document["nodes"]]
    spec = ClusterSpec.load(cluster_dir)
    assert (document["base_address"], document["release_timeout"]) == (base, 5)
    listing = json.loads(run_cli("vdisk", "list", "--json", "--dir", str(cluster_dir)).stdout)
    assert {(row["id"], row["vm"], row["home_node"], row["size"]) for row in listing} == {
        ("web-0", "web", 1, 64 << 20),
        ("web-1", "web", 1, 64 << 20),
        ("db-0", "db", 2, 128 << 20),
    }
    # Through node 2's redirector (redirected to its CVM), as the VM would reach it.
    redirector = spec.node(2).redirector_portal
    inquiry = iscsi_inq(f"iscsi://{redirector}/{target_name_for('db-0')}/0")
    assert inquiry.device_type == "DIRECT_ACCESS"
    listing = json.loads(run_cli("vdisk", "list", "--json", "--dir", str(cluster_dir)).stdout)
    assert {row["id"]: row["serving_node"] for row in listing}["db-0"] == 2

    # Up again with the same file: the same cluster, nothing restarted or re-created.
    again = json.loads(run_cli(*up, "--nodes", "2", "--base-address", base).stdout)
    assert [node["stargate"]["pid"] for node in again["nodes"]] == pids
    other = cluster_dir.parent / "other.toml"
    other.write_text(EXAMPLE.read_text().replace('size = "64M"', 'size = "32M"'))
    refused = run_cli(
        "cluster", "up", "--config", str(other), "--dir", str(cluster_dir),
        "--nodes", "2", "--base-address", base, "--detach", check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and "VM web exists" in refused.stderr

    saved = run_cli("cluster", "save", "--dir", str(cluster_dir)).stdout
    assert "data is not copied" in saved
    parsed = tomllib.loads(saved)
    assert (parsed["nodes"], parsed["base_address"], parsed["redirectors"]) == (2, base, True)
    assert [vm["name"] for vm in parsed["vm"]] == ["db", "web"]
    run_cli("cluster", "down", "--dir", str(cluster_dir))
    # Stopped, it saves the same.
    assert run_cli("cluster", "save", "--dir", str(cluster_dir)).stdout == saved

    saved_file = cluster_dir.parent / "saved.toml"
    saved_file.write_text(saved)
    second_dir = cluster_dir.parent / "second"
    second_base = unique_cluster_base()
    try:
        second = run_cli(
            "cluster", "up", "--config", str(saved_file), "--dir", str(second_dir),
            "--base-address", second_base, "--detach", "--no-redirectors",
        )  # fmt: skip
        assert [node["node"] for node in json.loads(second.stdout)["nodes"]] == [1, 2]
        resaved = run_cli("cluster", "save", "--dir", str(second_dir)).stdout
        assert f'base_address = "{second_base}"' in resaved
        assert "redirectors = false" in resaved  # the flag given won over the file
        assert _comparable(resaved) == _comparable(saved).replace(
            "redirectors = true", "redirectors = false"
        )
        cvm = ClusterSpec.load(second_dir).node(1).cvm_portal
        inquiry = iscsi_inq(f"iscsi://{cvm}/{target_name_for('web-1')}/0")
        assert inquiry.device_type == "DIRECT_ACCESS"
    finally:
        stop_everything(second_dir)


def _up(config: Path, directory: Path) -> tuple[int, str]:
    completed = run_cli(
        "cluster", "up", "--config", str(config), "--dir", str(directory), "--detach",
        check=False,
    )  # fmt: skip
    return completed.returncode, completed.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nodes = 2\nplacement = round-robin\n", ":2: TOML syntax error"),
        ("nodes = 2\nstable_windw = 3\n", ":2: stable_windw: unknown key"),
        ('nodes = 2\nplacement = "nearest"\n', ":2: placement: 'nearest' is not one of"),
        ("nodes = 0\n", ":1: nodes: must be at least 1"),
        ("nodes = 2\nrelease_timeout = 0\n", ":2: release_timeout: must be in (0, 600]"),
        ('nodes = 2\nbase_address = "10.0.0.0"\n', ":2: base_address: node 1 of base"),
        ('nodes = 2\nadvertise = ["cvm:1"]\n', ":2: advertise: --advertise 'cvm:1'"),
        ('nodes = 2\n\n[[vm]]\nname = "a"\nnode = 3\n', ":5: vm[0].node: no node 3"),
        ("nodes = 2\n[[vm]]\nnode = 1\n", ":2: vm[0].name: is required"),
        (
            'nodes = 2\n[[vm]]\nname = "a"\nnode = 1\n[[vm]]\nname = "a"\nnode = 2\n',
            ":6: vm[1].name: VM a given twice",
        ),
        ('nodes = 2\n[[vm]]\nname = "A b"\nnode = 1\n', ":3: vm[0].name: 'A b': use"),
        ('nodes = 2\n[[vm]]\nname = "a"\nnode = 1\nsize = "lots"\n', ":5: vm[0].size:"),
        ('nodes = 2\n[[vm]]\nname = "a"\nnode = 1\ncpus = 4\n', ":5: vm[0].cpus: unknown key"),
        ("stable_window = 3\n", "give --nodes N, or nodes = N"),
    ],
)
def test_a_bad_cluster_file_is_refused_naming_the_key_and_its_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    status, stderr = _up(config, tmp_path / "cluster")
    assert status == 2, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert expected in stderr
    assert expected.startswith("give") or f"bad.toml{expected}" in stderr
    assert not (tmp_path / "cluster").exists()  # nothing made for a refused file


def test_save_says_what_it_cannot_recreate(tmp_path: Path) -> None:
    from stargate.stores.file import FileStore
    from topology.vdisk import VDiskMeta

    directory = tmp_path / "cluster"
    advertise = [Advertisement("cvm", 1, "192.0.2.10", 3260)]
    ClusterSpec.create(directory, 2, advertise=advertise, release_timeout=2)
    paths = ClusterPaths(directory)
    for vdisk_id in ("a-0", "a-1", "loose"):
        FileStore.open_or_create(paths.vdisks, VDiskMeta(vdisk_id, 1 << 20)).close()
    VmRecord("a", 2, ["a-0", "a-1"]).save(paths)
    config, notes = saved_config(directory, redirectors=True)
    assert config.advertise == tuple(advertise) and config.release_timeout == 2
    assert config.vms == (VmConfig("a", 2, 2, 1 << 20),)
    assert notes == ["vDisk loose belongs to no VM: not saved"]
    # The file it makes describes the same cluster.json.
    saved = tmp_path / "saved.toml"
    saved.write_text(config.to_toml())
    assert cluster_config(ConfigDocument.load(saved), {}, None).spec() == ClusterSpec.load(
        directory
    )
    VmRecord("b", 1, ["loose"]).save(paths)  # not a vDisk `vm create` would name
    with pytest.raises(ClusterSpecError, match="VM b: its vDisks are not those"):
        saved_config(directory, redirectors=True)
