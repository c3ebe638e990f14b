"""A 3-node cluster for the guest: started with the ``stargate`` CLI, advertising guest-side
addresses, and the portals map that relays each of them to its process on the host.

Node ``i`` binds its redirector at ``base + i*256 + 1`` and its stargate at ``base + i*256 + 2``
(port 3261, the cluster's layout) and advertises them as ``10.0.2.10i:3261`` and
``10.0.2.11i:3261``: the redirector's TargetAddress and its SendTargets answers name those,
and the guest reaches each through a guestfwd relay to the bound address::

    with GuestCluster.up(tmp_path / "cluster", stable_window=10) as cluster:
        iqns = cluster.create_vm("vm1", disks=3, size="64M")
        with Guest(image, cluster.portals, "cluster_login", env=...) as guest: ...
        cluster.cvm("kill", 1)

Every process the cluster started is ended on exit: ``cluster down``, then SIGKILL by PID for
any survivor whose command line names this cluster's directory.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PORT = 3261
REDIRECTOR_GUEST_PREFIX = "10.0.2.10"  # + node id: node 1's redirector is 10.0.2.101
STARGATE_GUEST_PREFIX = "10.0.2.11"  # + node id: node 1's stargate is 10.0.2.111
CLI_TIMEOUT = 90.0  # the CLI waits for every process to answer; the box is loaded
UP_TIMEOUT = 60.0

_BASE_COUNTER = itertools.count()


def unique_base_address() -> str:
    """A cluster base ``127.S.T.0`` no other running test process is likely to use.

    S comes from 180-239 (unique_loopback_address() picks second octets from the whole
    range, but a collision needs the same S and T as well), T steps by 4 per cluster: the
    nodes use T+1..T+3.
    """
    pid = os.getpid()
    serial = next(_BASE_COUNTER)
    second = 180 + pid % 60
    third = ((pid // 60) * 4 + serial * 4) % 252
    return f"127.{second}.{third}.0"


def redirector_guest_portal(node_id: int) -> str:
    return f"{REDIRECTOR_GUEST_PREFIX}{node_id}:{PORT}"


def stargate_guest_portal(node_id: int) -> str:
    return f"{STARGATE_GUEST_PREFIX}{node_id}:{PORT}"


class ClusterCommandError(RuntimeError):
    """A ``stargate`` CLI command failed."""


@dataclass
class GuestCluster:
    directory: Path
    base_address: str
    node_ids: list[int]
    document: dict[str, Any]
    started_pids: set[int] = field(default_factory=set)

    # -- the CLI ----------------------------------------------------------------------------

    @staticmethod
    def cli(*arguments: str, timeout: float = CLI_TIMEOUT) -> str:
        """Run ``python -m stargate ARGUMENTS``; its stdout, or ClusterCommandError."""
        completed = subprocess.run(
            [sys.executable, "-m", "stargate", *arguments],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if completed.returncode != 0:
            raise ClusterCommandError(
                f"stargate {' '.join(arguments)}: rc {completed.returncode}\n"
                f"{completed.stdout}{completed.stderr}"
            )
        return completed.stdout

    @classmethod
    @contextmanager
    def up(
        cls,
        directory: Path,
        *,
        nodes: int = 3,
        stable_window: float = 10.0,
        extra_arguments: tuple[str, ...] = (),
    ) -> Iterator[GuestCluster]:
        """``cluster up`` with the guest-side advertisements, plus ``extra_arguments``."""
        base_address = unique_base_address()
        advertised: list[str] = []
        for node_id in range(1, nodes + 1):
            advertised += [
                "--advertise",
                f"redirector:{node_id}={redirector_guest_portal(node_id)}",
            ]
            advertised += ["--advertise", f"cvm:{node_id}={stargate_guest_portal(node_id)}"]
        cluster = cls(directory, base_address, list(range(1, nodes + 1)), {})
        try:
            output = cls.cli(
                "cluster", "up",
                "--nodes", str(nodes),
                "--dir", str(directory),
                "--detach",
                "--stable-window", str(stable_window),
                "--base-address", base_address,
                "--timeout", str(UP_TIMEOUT),
                *advertised,
                *extra_arguments,
            )  # fmt: skip
            cluster.document = json.loads(output)
            for node in cluster.document["nodes"]:
                for role in ("stargate", "redirector"):
                    if node[role].get("pid"):
                        cluster.started_pids.add(int(node[role]["pid"]))
            yield cluster
        finally:
            cluster.down()

    def down(self) -> None:
        """``cluster down``, then SIGKILL by PID whatever of ours still runs."""
        try:
            self.cli("cluster", "down", "--dir", str(self.directory), timeout=60)
        except (ClusterCommandError, subprocess.TimeoutExpired) as error:
            print(f"cluster down failed: {error}")
        self.started_pids |= self._recorded_pids()
        for pid in sorted(self.started_pids):
            if self._runs_in_this_cluster(pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _recorded_pids(self) -> set[int]:
        pids: set[int] = set()
        for pid_file in (self.directory / "run").glob("*.pid"):
            try:
                pids.add(int(json.loads(pid_file.read_text())["pid"]))
            except (OSError, ValueError, KeyError):
                continue
        return pids

    def _runs_in_this_cluster(self, pid: int) -> bool:
        try:
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(self.directory).encode() in command_line

    # -- the cluster's shape ------------------------------------------------------------------

    def host_address(self, node_id: int, role: str) -> str:
        """The bound address of node ``node_id``'s ``role`` (stargate or redirector)."""
        for node in self.document["nodes"]:
            if node["node"] == node_id:
                address: str = node[role]["address"]
                return address.rpartition(":")[0]
        raise KeyError(node_id)

    @property
    def portals(self) -> dict[str, int | tuple[str, int]]:
        """Guest portal -> host (address, port), for every redirector and stargate."""
        mapping: dict[str, int | tuple[str, int]] = {}
        for node_id in self.node_ids:
            mapping[redirector_guest_portal(node_id)] = (
                self.host_address(node_id, "redirector"),
                PORT,
            )
            mapping[stargate_guest_portal(node_id)] = (self.host_address(node_id, "stargate"), PORT)
        return mapping

    def remote_stargate_portals(self, home: int) -> list[str]:
        return [stargate_guest_portal(node_id) for node_id in self.node_ids if node_id != home]

    # -- VMs and CVMs -----------------------------------------------------------------------

    def create_vm(self, name: str, *, disks: int, size: str, home: int = 1) -> list[str]:
        """Create the VM; returns its vDisks' IQNs in order."""
        output = self.cli(
            "vm", "create", name, "--dir", str(self.directory),
            "--node", str(home), "--disks", str(disks), "--size", size,
        )  # fmt: skip
        record = json.loads(output)
        return [vdisk["iqn"] for vdisk in record["vdisks"]]

    def vdisks(self) -> list[dict[str, Any]]:
        table: list[dict[str, Any]] = json.loads(
            self.cli("vdisk", "list", "--dir", str(self.directory), "--json")
        )
        return table

    def cvm(self, action: str, node_id: int) -> float:
        """``stargate cvm ACTION NODE`` (kill, start, ...); returns the seconds it took."""
        started = time.monotonic()
        output = self.cli("cvm", action, str(node_id), "--dir", str(self.directory))
        self.started_pids |= self._recorded_pids()
        print(output.strip())
        return time.monotonic() - started

    def logs_tail(self, lines: int = 30) -> str:
        """The end of every process's log (for a failing test's report)."""
        parts = []
        for log in sorted((self.directory / "logs").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)
