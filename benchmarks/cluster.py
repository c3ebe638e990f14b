"""A local cluster for the benchmarks, through the `stargate` CLI: up, a VM, fault injection,
down. Processes are the cluster's own; `cluster down` stops them by the pids it recorded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from benchmarks.targets import scratch_dir, stargate_executable

CLI_TIMEOUT_SECONDS = 120.0
BASE_ATTEMPTS = 5


class ClusterError(RuntimeError):
    """A `stargate` cluster command failed; the message carries its output."""


def candidate_base(attempt: int) -> str:
    """127.A.B.0 bases of our own: A in 200..249 (from the pid), B stepping per attempt."""
    pid = os.getpid()
    return f"127.{200 + pid % 50}.{(pid // 50 + attempt * 16) % 240}.0"


@dataclass
class BenchCluster:
    nodes: int = 3
    stable_window: float = 3.0
    redirectors: bool = True
    directory: Path | None = field(default=None, init=False)
    document: dict[str, Any] = field(default_factory=dict, init=False)

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT_SECONDS) -> str:
        assert self.directory is not None
        argv = [stargate_executable(), *args]
        if "--dir" not in args:
            argv += ["--dir", str(self.directory)]
        try:
            completed = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise ClusterError(f"{' '.join(argv)} timed out") from error
        if completed.returncode != 0:
            raise ClusterError(
                f"{' '.join(argv)} exited with {completed.returncode}: "
                f"{completed.stderr.strip()[-2000:]}"
            )
        return completed.stdout

    def __enter__(self) -> Self:
        self.directory = scratch_dir("bench-cluster-")
        failures = []
        for attempt in range(BASE_ATTEMPTS):
            argv = ["cluster", "up", "--nodes", str(self.nodes), "--detach"]
            argv += ["--base-address", candidate_base(attempt)]
            argv += ["--stable-window", str(self.stable_window)]
            if not self.redirectors:
                argv.append("--no-redirectors")
            try:
                self.document = json.loads(self.cli(*argv))
                return self
            except ClusterError as error:
                failures.append(str(error))
                self._down()
        self._remove_directory()
        raise ClusterError("cluster up failed:\n" + "\n".join(failures))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._down()
        self._remove_directory()

    def create_vm(self, name: str, node: int, disks: int, size: str) -> dict[str, Any]:
        argv = ["vm", "create", name, "--node", str(node), "--disks", str(disks), "--size", size]
        created: dict[str, Any] = json.loads(self.cli(*argv))
        return created

    def vm_urls(self, created: dict[str, Any]) -> list[str]:
        """URLs through the VM's home redirector (what QEMU would be given)."""
        return [f"iscsi://{created['portal']}/{disk['iqn']}/0" for disk in created["vdisks"]]

    def _node(self, node: int) -> dict[str, Any]:
        for entry in self.document["nodes"]:
            if entry.get("node") == node:
                found: dict[str, Any] = entry
                return found
        raise ClusterError(f"no node {node} in {self.document}")

    def stargate_address(self, node: int) -> str:
        """``host:port`` of node's stargate itself (no redirector in between)."""
        return str(self._node(node)["stargate"]["address"])

    def stargate_pids(self) -> list[int]:
        return [int(entry["stargate"]["pid"]) for entry in self.document["nodes"]]

    def direct_urls(self, created: dict[str, Any]) -> list[str]:
        """URLs that spread a VM's vDisks over every stargate, round robin, directly."""
        return [
            f"iscsi://{self.stargate_address(index % self.nodes + 1)}/{disk['iqn']}/0"
            for index, disk in enumerate(created["vdisks"])
        ]

    def serving_node(self) -> list[int | None]:
        """Which node serves each vDisk now (``stargate vdisk list``)."""
        listing = json.loads(self.cli("vdisk", "list", "--json"))
        return [entry.get("serving_node") for entry in listing]

    def cvm(self, action: str, node: int) -> None:
        self.cli("cvm", action, str(node))

    def _down(self) -> None:
        if self.directory is not None and (self.directory / "cluster.json").exists():
            with contextlib.suppress(ClusterError):
                self.cli("cluster", "down")

    def _remove_directory(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
