"""Cluster fixtures: a unique base address per test, the `stargate` CLI, clean-up by pid.

Every cluster a test starts lives on its own 127.A.B.0 base (node i on 127.A.(B+i).x), so
parallel tests never share an address; whatever the test leaves running is stopped by the
pids recorded in DIR/run, whether the test passed or not.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster.supervisor import Supervisor
from topology.spec import ClusterSpec, node_addresses

CLI_TIMEOUT = 60.0
_rng = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "big"))


def _addresses_free(base: str, nodes: int) -> bool:
    for node_id in range(1, nodes + 1):
        for address in node_addresses(base, node_id):
            with socket.socket() as probe:
                try:
                    probe.bind((address, 3261))
                except OSError:
                    return False
    return True


def unique_cluster_base(nodes: int = 4) -> str:
    """127.A.B.0 with A outside 0, 1 and 77 (hand-picked and the default base) and room
    for ``nodes`` third octets after B; its node addresses are checked free on port 3261."""
    for _ in range(200):
        second = _rng.choice([octet for octet in range(100, 255) if octet != 77])
        third = _rng.randrange(0, 256 - nodes - 1, 8)
        base = f"127.{second}.{third}.0"
        if _addresses_free(base, nodes):
            return base
    raise RuntimeError("no free loopback base address found")


def run_cli(
    *args: str, check: bool = True, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run `python -m stargate ARGS` and return its completed process (text, piped as a
    script would read it: tables must come whole, whatever the terminal's width)."""
    result = subprocess.run(
        [sys.executable, "-m", "stargate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"stargate {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


@dataclass
class RunningCluster:
    directory: Path
    spec: ClusterSpec
    up_document: dict[str, Any]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--dir", str(self.directory), check=check)

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args).stdout)

    def stargate_url(self, node_id: int, vdisk_id: str, lun: int = 0) -> str:
        node = self.spec.node(node_id)
        return f"iscsi://{node.cvm_portal}/iqn.2010-06.com.nutanix:vmdisk-{vdisk_id}/{lun}"

    def supervisor(self) -> Supervisor:
        return Supervisor(self.directory, redirectors=True)


def stop_everything(directory: Path) -> None:
    """Stop, by recorded pid, every process a cluster in ``directory`` started."""
    if not (directory / "cluster.json").exists():
        return
    supervisor = Supervisor(directory, redirectors=True)
    for process in supervisor.processes:
        supervisor.stop(process, grace=3.0)


@pytest.fixture
def cluster_dir(tmp_data_dir: Path) -> Iterator[Path]:
    directory = tmp_data_dir / "cluster"
    try:
        yield directory
    finally:
        stop_everything(directory)


@pytest.fixture
def stargate_cluster(cluster_dir: Path) -> Iterator[RunningCluster]:
    """A detached 2-node cluster of stargates (no redirectors: they are tested apart)."""
    base = unique_cluster_base()
    result = run_cli(
        "cluster", "up", "--nodes", "2", "--dir", str(cluster_dir), "--base-address", base,
        "--detach", "--no-redirectors",
    )  # fmt: skip
    yield RunningCluster(cluster_dir, ClusterSpec.load(cluster_dir), json.loads(result.stdout))
