"""Fault injection and forensics wired into a cluster CVM (`cluster.cvm`): the
forensics file DIR/forensics/stargate-<node>.jsonl, and "failed over" meaning the vDisk's
VM has its home on another node."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from faults.forensics import Forensics
from topology.spec import list_vdisks

if TYPE_CHECKING:
    from cluster.cvm import ClusterStargate

HOME_REFRESH = 2.0  # seconds between re-reads of the VM catalog


class HomeNodes:
    """vDisk id -> home node, re-read now and then (VMs are created while running)."""

    def __init__(self, cvm: ClusterStargate) -> None:
        self.cvm = cvm
        self._homes: dict[str, int | None] = {}
        self._read_at = 0.0

    def is_failed_over(self, vdisk_id: str) -> bool:
        now = time.monotonic()
        if vdisk_id not in self._homes or now - self._read_at > HOME_REFRESH:
            self._read_at = now
            with contextlib.suppress(OSError, ValueError):
                self._homes = {
                    info.vdisk_id: info.home_node for info in list_vdisks(self.cvm.paths.root)
                }
        home = self._homes.get(vdisk_id)
        return home is not None and home != self.cvm.node_id


def attach_forensics(cvm: ClusterStargate) -> Forensics:
    directory = cvm.paths.root / "forensics"
    directory.mkdir(parents=True, exist_ok=True)
    forensics = Forensics(cvm.node_id, directory / f"stargate-{cvm.node_id}.jsonl")
    forensics.attach(cvm.server)
    cvm.server.faults.is_failed_over = HomeNodes(cvm).is_failed_over
    return forensics
