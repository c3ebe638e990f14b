"""Fault injection and forensics of a cluster CVM (`cluster.cvm`): the forensics file
DIR/forensics/stargate-<node>.jsonl, and "failed over" meaning the vDisk's VM has its home
on another node. The CVM gives both to its server at construction (`ServerHooks`)."""

from __future__ import annotations

import contextlib
import time

from faults.forensics import Forensics
from faults.injector import FaultInjector
from topology.spec import ClusterPaths, list_vdisks

HOME_REFRESH = 2.0  # seconds between re-reads of the VM catalog


class HomeNodes:
    """vDisk id -> home node, re-read now and then (VMs are created while running)."""

    def __init__(self, paths: ClusterPaths, node_id: int) -> None:
        self.paths = paths
        self.node_id = node_id
        self._homes: dict[str, int | None] = {}
        self._read_at = 0.0

    def is_failed_over(self, vdisk_id: str) -> bool:
        now = time.monotonic()
        if vdisk_id not in self._homes or now - self._read_at > HOME_REFRESH:
            self._read_at = now
            with contextlib.suppress(OSError, ValueError):
                self._homes = {
                    info.vdisk_id: info.home_node for info in list_vdisks(self.paths.root)
                }
        home = self._homes.get(vdisk_id)
        return home is not None and home != self.node_id


def cvm_forensics(paths: ClusterPaths, node_id: int) -> Forensics:
    directory = paths.root / "forensics"
    directory.mkdir(parents=True, exist_ok=True)
    return Forensics(node_id, directory / f"stargate-{node_id}.jsonl")


def cvm_faults(paths: ClusterPaths, node_id: int, forensics: Forensics) -> FaultInjector:
    """The CVM's fault injector: fired faults go to its forensics; "failed over" is judged
    by the home nodes of the VMs."""
    return FaultInjector(
        is_failed_over=HomeNodes(paths, node_id).is_failed_over,
        listeners=[forensics.fault_fired],
    )
