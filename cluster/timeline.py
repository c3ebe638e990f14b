"""The per-vDisk failover timeline of a cluster directory, from what its processes left:
the stargates' forensics files (DIR/forensics/stargate-<n>.jsonl: logins, session ends,
faults fired, I/O activity spans), the redirectors' (DIR/forensics/redirector-<n>.jsonl:
login faults fired, "node": "redirector-<n>"), the scenario's own events
(DIR/forensics/scenario.jsonl) and the redirectors' logs (DIR/logs/redirector-<n>.log:
"Redirecting target T to H:P").

For each vDisk: which CVM served it when, redirects (which redirector sent it to which CVM),
failovers and failbacks, faults fired, and for each disruption the gap between the last I/O
completed before it and the first after it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redirector.vg_placement import home_node
from topology.naming import TARGET_NAME_PREFIX
from topology.spec import ClusterSpec, list_vdisks
from topology.volume_group import VolumeGroup, VolumeGroupError, VolumeGroupStore

_REDIRECT_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) - \w+ - Redirecting target (\S+) to (\S+)$"
)
MERGE_DISRUPTIONS = 1.0  # disruptions closer than this are one
DISRUPTING_FAULTS = frozenset(
    {
        "drop_connection",
        "drop_mid_data_in",
        "hang",
        "delay",
        "async_logout",
        "async_drop_connection",
        "async_drop_session",
        "network_pause",
        "freeze_window",
        "withhold_r2t",
    }
)


@dataclass
class VDiskTimeline:
    vdisk: str
    home: int | None
    serving: list[dict[str, Any]] = field(default_factory=list)  # node, from, to
    logins: list[dict[str, Any]] = field(default_factory=list)
    session_ends: list[dict[str, Any]] = field(default_factory=list)
    redirects: list[dict[str, Any]] = field(default_factory=list)
    failovers: list[dict[str, Any]] = field(default_factory=list)
    failbacks: list[dict[str, Any]] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    io_spans: list[dict[str, Any]] = field(default_factory=list)
    disruptions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill
    return records


def read_redirects(logs: Path, portal_nodes: dict[str, int]) -> list[dict[str, Any]]:
    redirects = []
    for path in sorted(logs.glob("redirector-*.log")):
        redirector = int(path.stem.rsplit("-", 1)[1])
        for line in path.read_text(errors="replace").splitlines():
            match = _REDIRECT_RE.match(line.strip())
            if match is None:
                continue
            stamp, millis, target, portal = match.groups()
            moment = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
            redirects.append(
                {
                    "t": moment,
                    "vdisk": target.removeprefix(TARGET_NAME_PREFIX),
                    "redirector": redirector,
                    "to_node": portal_nodes.get(portal.split(",")[0]),
                    "to": portal,
                }
            )
    return redirects


def build_timeline(directory: Path) -> dict[str, Any]:
    """The timeline document of a cluster directory (see the module docstring)."""

    spec = ClusterSpec.load(directory)
    portal_nodes = {node.cvm_portal: node.node_id for node in spec.nodes}
    homes = {info.vdisk_id: info.home_node for info in list_vdisks(directory)}
    # A volume group's virtual target logs in as its LUN 0's vDisk: a login or a session's
    # end is every LUN's; each LUN's home is its target's.
    luns_of: dict[str, tuple[str, ...]] = {}
    for group in _volume_groups(directory):
        for target in group.targets():
            luns_of[target.vdisk_ids[0]] = target.vdisk_ids
            for disk in target.vdisk_ids:
                homes[disk] = home_node(group, target, spec.node_ids)
    forensics = directory / "forensics"
    records: list[dict[str, Any]] = []
    for pattern in ("stargate-*.jsonl", "redirector-*.jsonl"):  # redirectors: faults fired
        for path in sorted(forensics.glob(pattern)):
            records += read_jsonl(path)
    scenario = (
        read_jsonl(forensics / "scenario.jsonl") if (forensics / "scenario.jsonl").exists() else []
    )
    records.sort(key=lambda record: record["t"])
    redirects = read_redirects(directory / "logs", portal_nodes)
    vdisks = {vdisk: VDiskTimeline(vdisk, home) for vdisk, home in homes.items()}
    for record in records:
        vdisk_id = record.get("vdisk")
        if vdisk_id is None:
            continue
        timeline = vdisks.setdefault(vdisk_id, VDiskTimeline(vdisk_id, None))
        kind = record["event"]
        if kind in ("login", "session_end"):
            for lun_vdisk in luns_of.get(vdisk_id, (vdisk_id,)):
                lane = vdisks.setdefault(lun_vdisk, VDiskTimeline(lun_vdisk, None))
                (lane.logins if kind == "login" else lane.session_ends).append(record)
        elif kind == "fault":
            timeline.faults.append(record)
        elif kind == "io":
            timeline.io_spans.append(record)
    for redirect in redirects:
        if redirect["vdisk"] in vdisks:
            vdisks[redirect["vdisk"]].redirects.append(redirect)
    cluster_events = [e for e in scenario if e.get("event") == "step"]
    for timeline in vdisks.values():
        _serving_and_moves(timeline)
        _disruptions(timeline, cluster_events)
    starts = [r["t"] for r in records] + [e["t"] for e in scenario]
    return {
        "t0": min(starts) if starts else None,
        "nodes": [node.node_id for node in spec.nodes],
        "scenario": scenario,
        "vdisks": {vdisk: timeline.to_dict() for vdisk, timeline in sorted(vdisks.items())},
    }


def _volume_groups(directory: Path) -> list[VolumeGroup]:
    try:
        return VolumeGroupStore(directory).all()
    except VolumeGroupError:
        return []  # unreadable records: their disks get lanes without homes


def _serving_and_moves(timeline: VDiskTimeline) -> None:
    """Serving segments from the logins; a login away from home after one at home is a
    failover, one back home after one away a failback."""
    previous: dict[str, Any] | None = None
    for login in timeline.logins:
        node = login["node"]
        if previous is not None and previous["node"] != node:
            timeline.serving[-1]["to"] = login["t"]
            move = {"t": login["t"], "from_node": previous["node"], "to_node": node}
            if node == timeline.home:
                timeline.failbacks.append(move)
            elif previous["node"] == timeline.home or timeline.home is None:
                timeline.failovers.append(move)
            else:
                timeline.failovers.append({**move, "between_remotes": True})
        if previous is None or previous["node"] != node:
            timeline.serving.append({"node": node, "from": login["t"], "to": None})
        previous = login
    last_io = max((span["end"] for span in timeline.io_spans), default=None)
    if timeline.serving and last_io is not None:
        timeline.serving[-1]["to"] = max(last_io, timeline.serving[-1]["from"])


def _disruptions(timeline: VDiskTimeline, cluster_events: list[dict[str, Any]]) -> None:
    causes: list[tuple[float, str]] = []
    for end in timeline.session_ends:
        if end.get("reason") not in ("logged out", "connection closed by the initiator"):
            causes.append((end["t"], f"session ended on node {end['node']}: {end['reason']}"))
    for move in timeline.failovers + timeline.failbacks:
        causes.append((move["t"], f"moved from node {move['from_node']} to {move['to_node']}"))
    for fault in timeline.faults:
        if fault.get("kind") in DISRUPTING_FAULTS:
            causes.append((fault["t"], f"fault {fault['kind']} on node {fault['node']}"))
    for event in cluster_events:
        if event.get("vdisk") in (None, timeline.vdisk):
            causes.append((event["t"], str(event.get("what", "scenario step"))))
    causes.sort()
    merged: list[tuple[float, list[str]]] = []
    for moment, cause in causes:
        if merged and moment - merged[-1][0] <= MERGE_DISRUPTIONS:
            merged[-1][1].append(cause)
        else:
            merged.append((moment, [cause]))
    spans = sorted(timeline.io_spans, key=lambda span: span["start"])
    for moment, reasons in merged:
        before = [span["end"] for span in spans if span["start"] <= moment]
        after = [span["start"] for span in spans if span["start"] > moment]
        last_before = max(before) if before else None
        first_after = min(after) if after else None
        gap = (
            first_after - last_before
            if last_before is not None and first_after is not None
            else None
        )
        timeline.disruptions.append(
            {
                "t": moment,
                "causes": reasons,
                "last_io_before": last_before,
                "first_io_after": first_after,
                "gap_s": gap,
            }
        )


def write_timeline(directory: Path, document: dict[str, Any]) -> Path:
    path = directory / "forensics" / "timeline.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    return path
