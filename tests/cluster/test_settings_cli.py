"""The cluster's behaviour settings on the command line: `cluster up --failback` and the
redirectors' health-check knobs land in cluster.json, `cluster status` shows them (table
caption and --json), `cluster set --failback` changes a running cluster's mode; bad values
are refused with exit status 2 and a message naming the flag, before anything is made."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from cluster.config import cluster_config, saved_config
from cluster.provision import provision_vms
from tests.cluster.conftest import run_cli, unique_cluster_base
from topology.config_file import ConfigDocument, ConfigError
from topology.settings import FailbackMode, HealthChecks
from topology.spec import ClusterPaths, ClusterSpec, VmRecord


def test_up_records_the_settings_status_shows_them_and_set_changes_the_mode(
    cluster_dir: Path,
) -> None:
    up = json.loads(
        run_cli(
            "cluster", "up", "--nodes", "1", "--dir", str(cluster_dir),
            "--base-address", unique_cluster_base(), "--detach", "--no-redirectors",
            "--failback", "logout", "--nop-interval", "0.5", "--nop-timeout", "1.5",
            "--misses", "2", "--connect-timeout", "4",
        ).stdout
    )  # fmt: skip
    health = HealthChecks(nop_interval=0.5, nop_timeout=1.5, misses=2, connect_timeout=4.0)
    spec = ClusterSpec.load(cluster_dir)
    assert (spec.failback, spec.health) == (FailbackMode.LOGOUT, health)
    assert (up["failback"], up["health"]) == ("logout", health.to_json())

    status = json.loads(run_cli("cluster", "status", "--dir", str(cluster_dir), "--json").stdout)
    assert (status["failback"], status["health"]) == ("logout", health.to_json())
    assert [entry["name"] for entry in status["processes"]] == ["stargate-1"]
    human = run_cli("cluster", "status", "--dir", str(cluster_dir)).stdout
    assert "failback: logout" in human and "down after 2 miss(es)" in human, human

    changed = json.loads(
        run_cli("cluster", "set", "--dir", str(cluster_dir), "--failback", "kill").stdout
    )
    assert changed["failback"] == "kill"
    assert ClusterSpec.load(cluster_dir) == ClusterSpec(
        spec.nodes, spec.stable_window, spec.placement, spec.base_address,
        spec.release_timeout, FailbackMode.KILL, health,
    )  # fmt: skip
    status = json.loads(run_cli("cluster", "status", "--dir", str(cluster_dir), "--json").stdout)
    assert status["failback"] == "kill"
    assert status["processes"][0]["health"] == "up"  # changed live: nothing restarted

    # `up` of the directory again with other knobs describes another cluster: refused.
    again = run_cli(
        "cluster", "up", "--nodes", "1", "--dir", str(cluster_dir), "--misses", "3",
        "--detach", "--no-redirectors", check=False,
    )  # fmt: skip
    assert again.returncode == 2 and "another cluster" in again.stderr, again.stderr


def test_defaults_are_kill_and_the_documented_knobs(tmp_path: Path) -> None:
    spec = ClusterSpec.build(1)
    assert spec.failback is FailbackMode.KILL
    assert spec.health == HealthChecks(
        nop_interval=1.0, nop_timeout=3.0, misses=1, connect_timeout=3.0
    )
    raw = spec.to_json()
    del raw["failback"], raw["health"]  # a cluster.json written before they existed
    assert ClusterSpec.from_json(raw) == spec


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--failback", "drain"], "failback mode must be one of kill, logout, not 'drain'"),
        (["--misses", "0"], "argument --misses: not a whole number of at least 1: '0'"),
        (["--nop-timeout", "-1"], "argument --nop-timeout: must be more than 0 seconds"),
        (["--nop-interval", "soon"], "argument --nop-interval: not a number of seconds"),
        (["--connect-timeout", "inf"], "connect_timeout must be in (0, 3600] seconds"),
        (["--misses", "101"], "misses must be in 1..100, not 101"),
    ],
)
def test_bad_values_are_refused_with_exit_2(tmp_path: Path, flags: list[str], message: str) -> None:
    directory = tmp_path / "cluster"
    result = run_cli(
        "cluster", "up", "--nodes", "1", "--dir", str(directory), "--detach", *flags, check=False
    )
    assert result.returncode == 2, result
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (directory / "cluster.json").exists()


def test_set_needs_a_setting_and_an_existing_cluster(tmp_path: Path) -> None:
    nothing = run_cli("cluster", "set", "--dir", str(tmp_path), check=False)
    assert nothing.returncode == 2 and "nothing to set" in nothing.stderr
    missing = run_cli("cluster", "set", "--dir", str(tmp_path), "--failback", "kill", check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad = run_cli("cluster", "set", "--dir", str(tmp_path), "--failback", "x", check=False)
    assert bad.returncode == 2 and "failback mode must be one of" in bad.stderr


def test_vm_create_records_the_sessions_per_disk(tmp_path: Path) -> None:
    ClusterSpec.create(tmp_path, 1)
    created = json.loads(
        run_cli(
            "vm", "create", "turbo", "--dir", str(tmp_path), "--node", "1", "--size", "1M",
            "--sessions-per-disk", "2",
        ).stdout
    )  # fmt: skip
    assert created["sessions_per_disk"] == 2
    assert VmRecord.load(ClusterPaths(tmp_path).vm_file("turbo")).sessions_per_disk == 2
    plain = json.loads(
        run_cli(
            "vm", "create", "plain", "--dir", str(tmp_path), "--node", "1", "--size", "1M"
        ).stdout
    )
    assert plain["sessions_per_disk"] == 1 and plain["load_balance"] is False
    balanced = run_cli(
        "vm", "create", "lb", "--dir", str(tmp_path), "--node", "1", "--size", "1M",
        "--load-balance",
    )  # fmt: skip
    assert json.loads(balanced.stdout)["load_balance"] is True
    assert VmRecord.load(ClusterPaths(tmp_path).vm_file("lb")).load_balance
    for bad in ("0", "9"):
        refused = run_cli(
            "vm", "create", f"bad{bad}", "--dir", str(tmp_path), "--node", "1", "--size", "1M",
            "--sessions-per-disk", bad, check=False,
        )  # fmt: skip
        assert refused.returncode == 2, refused
        assert f"sessions per disk must be 1..8, not {bad}" in refused.stderr
        assert not ClusterPaths(tmp_path).vm_file(f"bad{bad}").exists()


CONFIG = """nodes = 2
failback = "logout"
dsip = "127.0.0.9"

[health]
nop_timeout = 1.5
misses = 2

[[vm]]
name = "turbo"
node = 1
size = "1M"
sessions_per_disk = 2
load_balance = true
"""


def test_the_config_file_carries_the_settings_and_save_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(CONFIG)
    config = cluster_config(ConfigDocument.load(path), {}, None)
    spec = config.spec()
    assert spec.failback is FailbackMode.LOGOUT
    assert spec.health == HealthChecks(nop_timeout=1.5, misses=2)  # the rest: defaults
    assert config.vms[0].sessions_per_disk == 2 and config.vms[0].load_balance
    assert spec.dsip_portal == "127.0.0.9:3260"
    # Flags override knob by knob, over the file's [health].
    flagged = cluster_config(
        ConfigDocument.load(path), {"health": {"misses": 4}, "failback": FailbackMode.KILL}, None
    )
    assert flagged.health == HealthChecks(nop_timeout=1.5, misses=4)
    assert flagged.failback is FailbackMode.KILL
    directory = tmp_path / "cluster"
    spec.save(directory)
    provision_vms(directory, config.vms)
    saved, _ = saved_config(directory, redirectors=True)
    assert saved.vms == config.vms and saved.spec() == spec
    text = saved.to_toml()
    assert 'failback = "logout"' in text and "sessions_per_disk = 2" in text, text
    assert "load_balance = true" in text and 'dsip = "127.0.0.9:3260"' in text, text
    again = tmp_path / "again.toml"
    again.write_text(text)
    assert cluster_config(ConfigDocument.load(again), {}, None) == saved


@pytest.mark.parametrize(
    ("replace_line", "line", "message"),
    [
        ('failback = "logout"', 2, "failback mode must be one of kill, logout"),
        ("misses = 2", 7, "misses must be in 1..100, not 0"),
        ("nop_timeout = 1.5", 6, r"nop_timeout must be in (0, 3600] seconds"),
        ("sessions_per_disk = 2", 13, "must be 1..8, not 9"),
        ('dsip = "127.0.0.9"', 3, "DSIP"),
        ("load_balance = true", 14, "must be true or false"),
    ],
)
def test_bad_settings_in_the_file_name_the_key_and_line(
    tmp_path: Path, replace_line: str, line: int, message: str
) -> None:
    key = replace_line.split(" = ")[0]
    bad = {"failback": '"drain"', "misses": "0", "nop_timeout": "-1", "sessions_per_disk": "9",
           "dsip": '"host.example"', "load_balance": '"yes"'}  # fmt: skip
    path = tmp_path / "cluster.toml"
    path.write_text(CONFIG.replace(replace_line, f"{key} = {bad[key]}"))
    with pytest.raises(ConfigError) as caught:
        cluster_config(ConfigDocument.load(path), {}, None)
    assert f"cluster.toml:{line}: " in str(caught.value) and key in str(caught.value), caught.value
    assert message in str(caught.value), caught.value


def test_the_dsip_advertised_address_is_kept_in_the_file_and_cluster_json(tmp_path: Path) -> None:
    """`dsip_advertise` (`cluster up --dsip-advertise`): what discovery at the DSIP names,
    for initiators behind NAT or in a QEMU guest; the DSIP binds the other."""
    path = tmp_path / "cluster.toml"
    path.write_text('nodes = 2\ndsip = "127.0.0.9"\ndsip_advertise = "10.0.2.120"\n')
    config = cluster_config(ConfigDocument.load(path), {}, None)
    spec = config.spec()
    assert spec.dsip_portal == "127.0.0.9:3260"
    assert spec.dsip_advertised_portal == "10.0.2.120:3260"
    directory = tmp_path / "cluster"
    spec.save(directory)
    assert ClusterSpec.load(directory).dsip_advertised_portal == "10.0.2.120:3260"
    saved, _ = saved_config(directory, redirectors=True)
    assert 'dsip_advertise = "10.0.2.120:3260"' in saved.to_toml()
    # Without it, discovery names the DSIP itself.
    assert replace(spec, dsip_advertise=None).dsip_advertised_portal == "127.0.0.9:3260"
    path.write_text('nodes = 2\ndsip_advertise = "guest.example"\n')
    with pytest.raises(ConfigError, match=r"cluster\.toml:2: .*dsip_advertise.*DSIP"):
        cluster_config(ConfigDocument.load(path), {}, None)
