"""`--coordinator` values that cannot be used are refused in one line, before anything
starts (no ZooKeeper needed: these are the refusals)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cluster.config import saved_config
from cluster.coordinated import record_coordinator
from tests.cluster.conftest import run_cli, unique_cluster_base
from tests.helpers.net import free_port
from topology.coordination import CoordinatorUrl
from topology.spec import ClusterPaths, ClusterSpec


def up(directory: Path, coordinator: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "cluster", "up", "--nodes", "1", "--dir", str(directory), "--base-address",
        unique_cluster_base(1), "--coordinator", coordinator, "--detach", check=False,
    )  # fmt: skip


def nothing_started(directory: Path) -> bool:
    return not list((directory / "run").glob("*.pid")) if (directory / "run").exists() else True


def test_a_malformed_coordinator_is_refused(cluster_dir: Path) -> None:
    result = up(cluster_dir, "zk://127.0.0.1:2181")
    assert result.returncode == 2, result
    assert "give the cluster its own path" in result.stderr
    assert "Traceback" not in result.stderr and nothing_started(cluster_dir)


def test_an_unreachable_zookeeper_is_named_and_the_directory_keeps_its_choice(
    cluster_dir: Path,
) -> None:
    port = free_port()
    url = f"zk://127.0.0.1:{port}/stargate?session_timeout=1"
    result = up(cluster_dir, url)
    assert result.returncode == 2, result
    assert f"cannot reach ZooKeeper at 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr and nothing_started(cluster_dir)
    # The directory was set up for that ZooKeeper: not silently restarted on another one.
    other = up(cluster_dir, "dir")
    assert other.returncode == 2 and f"runs with coordinator {url}" in other.stderr


def test_a_cvm_names_a_bad_coordinator(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cluster.cvm", "--dir", str(tmp_path), "--node", "1",
         "--coordinator", "etcd://127.0.0.1/x"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "not a coordinator: 'etcd://127.0.0.1/x'" in result.stderr


def test_a_config_files_coordinator_is_checked_and_saved(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text('nodes = 1\ncoordinator = "etcd://127.0.0.1/x"\n')
    result = run_cli(
        "cluster", "up", "--config", str(config), "--dir", str(tmp_path / "c"), check=False
    )
    assert result.returncode == 2
    assert "cluster.toml:2" in result.stderr and "not a coordinator" in result.stderr

    directory = tmp_path / "saved"
    ClusterSpec.create(directory, 1, base_address=unique_cluster_base(1))
    url = "zk://127.0.0.1:2181/stargate"
    record_coordinator(ClusterPaths(directory), CoordinatorUrl.parse(url))
    saved, _notes = saved_config(directory, redirectors=True)
    assert saved.coordinator == url
    assert f'coordinator = "{url}"' in saved.to_toml()
