"""cluster.json, the directory layout, VM records and vDisk listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.cvm import ClusterStargate, parse_args
from cluster.provision import create_vm
from topology.settings import FailbackMode, HealthChecks
from topology.spec import (
    Advertisement,
    ClusterPaths,
    ClusterSpec,
    ClusterSpecError,
    NodeSpec,
    list_vdisks,
    load_vms,
    node_addresses,
)


def test_default_addresses_follow_the_design() -> None:
    assert node_addresses("127.77.0.0", 1) == ("127.77.1.1", "127.77.1.2")
    assert node_addresses("127.77.0.0", 3) == ("127.77.3.1", "127.77.3.2")
    assert node_addresses("127.20.16.0", 2) == ("127.20.18.1", "127.20.18.2")
    with pytest.raises(ClusterSpecError):
        node_addresses("127.255.255.0", 1)  # would leave 127.0.0.0/8


def test_create_lays_out_the_directory_and_round_trips(tmp_path: Path) -> None:
    spec = ClusterSpec.create(tmp_path / "c", 3, stable_window=12.5, placement="random")
    paths = ClusterPaths(tmp_path / "c")
    for directory in (paths.vdisks, paths.vms, paths.ownership, paths.run, paths.logs):
        assert directory.is_dir()
    assert ClusterSpec.load(tmp_path / "c") == spec
    node = spec.node(2)
    assert (node.cvm_address, node.cvm_port, node.http_port) == ("127.77.2.2", 3261, 2009)
    assert node.cvm_portal == "127.77.2.2:3261" and node.redirector_portal == "127.77.2.1:3261"
    assert node.http_url == "http://127.77.2.2:2009"
    assert (node.stargate_name, node.redirector_name) == ("stargate-2", "redirector-2")
    raw = json.loads(paths.spec_file.read_text())
    assert raw["placement"] == "random" and raw["stable_window"] == 12.5
    with pytest.raises(ClusterSpecError, match="no node 4"):
        spec.node(4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2=10.0.2.5", Advertisement("cvm", 2, "10.0.2.5", None)),
        ("cvm:1=10.0.2.5:3270", Advertisement("cvm", 1, "10.0.2.5", 3270)),
        ("redirector:3=host.example", Advertisement("redirector", 3, "host.example", None)),
        ("1=[fd00::5]:3261", Advertisement("cvm", 1, "fd00::5", 3261)),
    ],
)
def test_advertisement_parsing(text: str, expected: Advertisement) -> None:
    assert Advertisement.parse(text) == expected


@pytest.mark.parametrize("text", ["", "2", "=1.2.3.4", "x=1.2.3.4", "disk:1=1.2.3.4"])
def test_advertisement_rejects(text: str) -> None:
    with pytest.raises(ClusterSpecError):
        Advertisement.parse(text)


def test_advertised_addresses_replace_only_what_initiators_are_told(tmp_path: Path) -> None:
    spec = ClusterSpec.create(
        tmp_path,
        2,
        advertise=[Advertisement.parse("2=10.0.2.100:3262"), Advertisement.parse("redirector:1=h")],
    )
    assert spec.node(2).cvm_address == "127.77.2.2"
    assert spec.node(2).cvm_portal == "10.0.2.100:3262"
    assert spec.node(1).redirector_portal == "h:3261" and spec.node(1).cvm_portal.startswith("127.")
    with pytest.raises(ClusterSpecError, match="no such node"):
        ClusterSpec.create(tmp_path / "x", 2, advertise=[Advertisement.parse("3=h")])


@given(
    nodes=st.integers(1, 8),
    window=st.floats(0, 1e6, allow_nan=False),
    placement=st.sampled_from(["round-robin", "random"]),
    ports=st.tuples(st.integers(1, 65535), st.integers(1, 65535), st.integers(1, 65535)),
)
def test_spec_json_round_trip(
    nodes: int, window: float, placement: str, ports: tuple[int, int, int]
) -> None:
    spec = ClusterSpec(
        [
            NodeSpec(
                node_id=i,
                cvm_address=f"127.9.{i}.2",
                cvm_port=ports[0],
                redirector_address=f"127.9.{i}.1",
                redirector_port=ports[1],
                http_port=ports[2],
                cvm_advertised_address="10.0.0.1" if i % 2 else "",
            )
            for i in range(1, nodes + 1)
        ],
        stable_window=window,
        placement=placement,  # type: ignore[arg-type]
    )
    assert ClusterSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_invalid_specs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ClusterSpecError, match="does not exist"):
        ClusterSpec.load(tmp_path)
    (tmp_path / "cluster.json").write_text("{")
    with pytest.raises(ClusterSpecError):
        ClusterSpec.load(tmp_path)
    node = {"node_id": 1, "cvm_address": "a", "redirector_address": "b"}
    with pytest.raises(ClusterSpecError, match="placement"):
        ClusterSpec.from_json({"nodes": [node], "placement": "x"})
    with pytest.raises(ClusterSpecError, match="at least one node"):
        ClusterSpec.from_json({"nodes": []})
    with pytest.raises(ClusterSpecError, match="unique"):
        ClusterSpec.from_json({"nodes": [node, node]})
    with pytest.raises(ClusterSpecError, match="unknown node fields"):
        ClusterSpec.from_json({"nodes": [{**node, "colour": "red"}]})


def test_vm_records_and_vdisk_listing(tmp_path: Path) -> None:
    spec = ClusterSpec.create(tmp_path, 2)
    record, infos = create_vm(tmp_path, "web", home_node=2, disks=2, size="4M")
    assert record.vdisk_ids == ["web-0", "web-1"]
    assert [info.iqn for info in infos] == [
        "iqn.2010-06.com.nutanix:vmdisk-web-0",
        "iqn.2010-06.com.nutanix:vmdisk-web-1",
    ]
    create_vm(tmp_path, "db", home_node=1, disks=1, size=1 << 20)
    assert [vm.name for vm in load_vms(tmp_path)] == ["db", "web"]
    listing = list_vdisks(tmp_path)
    assert [(v.vdisk_id, v.vm, v.home_node, v.size) for v in listing] == [
        ("db-0", "db", 1, 1 << 20),
        ("web-0", "web", 2, 4 << 20),
        ("web-1", "web", 2, 4 << 20),
    ]
    assert listing[1].to_json(spec)["portal"] == "127.77.2.1:3261"
    assert (tmp_path / "vdisks" / "web-1.img").stat().st_size == 4 << 20
    with pytest.raises(ClusterSpecError, match="exists already"):
        create_vm(tmp_path, "web", home_node=1, disks=1, size="1M")
    with pytest.raises(ClusterSpecError, match="VM name"):
        create_vm(tmp_path, "Web VM", home_node=1, disks=1, size="1M")
    with pytest.raises(ClusterSpecError, match="no node 5"):
        create_vm(tmp_path, "x", home_node=5, disks=1, size="1M")
    assert len(list_vdisks(tmp_path)) == 3  # refused requests created nothing


def test_release_timeout_from_cluster_json_and_its_bounds(tmp_path: Path) -> None:
    node = {"node_id": 1, "cvm_address": "127.0.0.1", "redirector_address": "127.0.0.2"}
    spec = ClusterSpec.from_json({"nodes": [node], "release_timeout": 1.5})
    assert spec.release_timeout == 1.5
    assert ClusterSpec.from_json(spec.to_json()) == spec
    assert "release_timeout" not in ClusterSpec.from_json({"nodes": [node]}).to_json()
    for bad in (0, -1, 601, "5", True):
        with pytest.raises(ClusterSpecError, match=r"release.timeout"):
            ClusterSpec.from_json({"nodes": [node], "release_timeout": bad})
    spec.save(tmp_path)
    # The CVM takes it from cluster.json unless told otherwise on its command line.
    assert ClusterStargate(tmp_path, 1).release_timeout == 1.5
    assert ClusterStargate(tmp_path, 1, release_timeout=3.0).release_timeout == 3.0


@pytest.mark.parametrize("value", ["0", "-2", "soon"])
def test_cvm_refuses_a_bad_release_timeout_flag(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--dir", ".", "--node", "1", "--release-timeout", value])
    assert exited.value.code == 2
    assert "--release-timeout" in capsys.readouterr().err


def test_failback_and_health_in_cluster_json_and_their_bounds() -> None:
    node = {"node_id": 1, "cvm_address": "127.0.0.1", "redirector_address": "127.0.0.2"}
    raw = {
        "nodes": [node],
        "failback": "logout",
        "health": {"nop_interval": 0.5, "nop_timeout": 2, "misses": 3, "connect_timeout": 1},
    }
    spec = ClusterSpec.from_json(raw)
    assert spec.failback is FailbackMode.LOGOUT
    assert spec.health == HealthChecks(0.5, 2.0, 3, 1.0)
    assert spec.health.detection_bound == 3 * (0.5 + 2.0)
    assert ClusterSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    bad_values: list[tuple[dict[str, object], str]] = [
        ({"failback": "drain"}, "failback mode must be one of kill, logout"),
        ({"health": {"misses": 0}}, "misses must be in 1..100"),
        ({"health": {"misses": 1.5}}, "misses must be an integer"),
        ({"health": {"nop_timeout": 0}}, r"nop_timeout must be in \(0, 3600\]"),
        ({"health": {"nop_interval": "1"}}, "nop_interval must be a number"),
        ({"health": {"connect_timeout": float("nan")}}, "connect_timeout must be in"),
        ({"health": {"colour": 1}}, r"unknown health fields \['colour'\]"),
        ({"health": []}, "health must be an object"),
    ]
    for extra, message in bad_values:
        with pytest.raises(ClusterSpecError, match=message):
            ClusterSpec.from_json({"nodes": [node], **extra})
