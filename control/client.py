"""Reading the cluster's state from its stargates' HTTP pages, all of them at once.

A stargate that does not answer (down, stopped) is reported as such instead of stalling
the caller: every request is bounded by ``timeout``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from control.http import HttpError, http_json
from topology.coordination import open_coordinator
from topology.spec import ClusterPaths, ClusterSpec, list_vdisks
from topology.volume_group import VolumeGroupError, VolumeGroupStore

FETCH_TIMEOUT = 1.0


@dataclass(frozen=True)
class PageAnswer:
    node_id: int
    document: Any  # None when the stargate did not answer
    error: str = ""

    @property
    def answered(self) -> bool:
        return self.document is not None


async def fetch_all(
    spec: ClusterSpec, path: str, timeout: float = FETCH_TIMEOUT
) -> list[PageAnswer]:
    """GET ``path`` from every stargate concurrently, in node order."""
    answers: dict[int, PageAnswer] = {}

    async def fetch(node_id: int, url: str) -> None:
        try:
            status, document = await http_json("GET", url, timeout=timeout)
        except HttpError as error:
            answers[node_id] = PageAnswer(node_id, None, str(error))
            return
        if status != 200:
            answers[node_id] = PageAnswer(node_id, None, f"HTTP {status}")
        else:
            answers[node_id] = PageAnswer(node_id, document)

    async with trio.open_nursery() as nursery:
        for node in spec.nodes:
            nursery.start_soon(fetch, node.node_id, f"{node.http_url}{path}")
    return [answers[node.node_id] for node in spec.nodes]


async def vdisk_table(spec: ClusterSpec, paths: ClusterPaths) -> list[dict[str, Any]]:
    """Every vDisk with the CVM serving it now (as that stargate says) and its connections.

    ``serving_node`` is None when no answering stargate serves it; ``owner_node`` is the
    ownership record (the last stargate that took it, which may be down now).
    """
    answers = await fetch_all(spec, "/vdisks")
    serving: dict[str, tuple[int, int]] = {}  # vdisk -> (node, serving epoch)
    connections: dict[str, int] = {}
    for answer in answers:
        if not answer.answered:
            continue
        for entry in answer.document:
            vdisk_id = entry["id"]
            connections[vdisk_id] = connections.get(vdisk_id, 0) + int(entry["connections"])
            if entry.get("serving"):
                # Pages are read at slightly different moments: across a move, the older
                # page may still say serving; the higher epoch is the current owner.
                epoch = int(entry.get("serving_epoch") or 0)
                if vdisk_id not in serving or epoch > serving[vdisk_id][1]:
                    serving[vdisk_id] = (answer.node_id, epoch)
    table = []
    infos = list_vdisks(paths.root)
    groups = VolumeGroupStore(paths.root)
    # A volume group's disk is owned with its virtual target (its unit).
    units = {info.vdisk_id: _unit_of(groups, info.vdisk_id) for info in infos}
    async with open_coordinator(paths.coordinator(), paths.root) as coordinator:
        records = {unit: await coordinator.read_ownership(unit) for unit in set(units.values())}
    for info in infos:
        record = records[units[info.vdisk_id]]
        served = serving.get(info.vdisk_id)
        table.append(
            {
                **info.to_json(spec),
                "serving_node": served[0] if served else None,
                "serving_portal": spec.node(served[0]).cvm_portal if served else None,
                "connections": connections.get(info.vdisk_id, 0),
                "owner_node": record.node_id if record and record.claimed else None,
                "epoch": record.epoch if record else 0,
            }
        )
    return table


def _unit_of(groups: VolumeGroupStore, vdisk_id: str) -> str:
    try:
        return groups.unit_of(vdisk_id)
    except VolumeGroupError:
        return vdisk_id
