"""What the demo's guest sees, per vDisk: which CVM serves it, IOPS, latency, I/O pauses
and events. Sampled from the initiator's own statistics, not from the stargates: the point
is what a VM experiences while its CVM fails and comes back.

A pause is a gap between I/O completions while I/O was outstanding, as the initiator's
`PauseTracker` measures it. A phase's pause (failover, failback) is the longest gap that was
under way or ended while the phase lasted: the tracker's ongoing gap is sampled every
`SAMPLE_INTERVAL`, and a new record of its longest gap set between two samples is exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from initiator.device import BlockDevice
from initiator.verify import Verifier
from iscsicore.portal import Portal
from topology.spec import ClusterSpec

SAMPLE_INTERVAL = 0.02
RATE_WINDOW = 1.0  # IOPS and latency are averaged over about this long


class Phase(Enum):
    STARTING = "starting"
    STEADY = "steady"
    FAILOVER = "failover"
    FAILED_OVER = "failed over"
    FAILBACK = "failback"
    BACK_HOME = "back home"
    FINISHING = "verifying"


# The phases whose longest pause the summary reports.
PAUSE_PHASES = (Phase.FAILOVER, Phase.FAILBACK)


@dataclass
class DiskWatch:
    vdisk: str
    device: BlockDevice
    verifier: Verifier
    serving_node: int | None = None
    iops: float = 0.0
    mean_latency_ms: float | None = None
    events: list[str] = field(default_factory=list)
    pauses: dict[Phase, float] = field(default_factory=dict)
    _seen_longest: float = 0.0
    _window_start: tuple[float, int, int] | None = None  # (time, ios, latency samples)

    @property
    def current_pause(self) -> float:
        """How long the disk's outstanding I/O has gone without a completion (0: none)."""
        pauses = self.device.stats.pauses
        return time.monotonic() - pauses.last_progress if pauses.outstanding else 0.0

    def sample(self, now: float, phase: Phase, node_of: Callable[[str], int | None]) -> str | None:
        """Update from the device's statistics; returns an event line when the serving CVM
        changed."""
        stats = self.device.stats
        tracker = stats.pauses
        if phase in PAUSE_PHASES:
            ongoing = now - tracker.last_progress if tracker.outstanding else 0.0
            new_record = tracker.longest if tracker.longest > self._seen_longest else 0.0
            self.pauses[phase] = max(self.pauses.get(phase, 0.0), ongoing, new_record)
        self._seen_longest = tracker.longest
        self._update_rates(now)
        node = node_of(stats.portal) if stats.portal else None
        if node is not None and node != self.serving_node:
            previous = self.serving_node
            self.serving_node = node
            if previous is None and not self.events:
                event = f"served by CVM {node}"
            else:
                event = f"moved to CVM {node} (from CVM {previous})"
            self.events.append(f"{time.strftime('%H:%M:%S')} {event}")
            return event
        return None

    def _update_rates(self, now: float) -> None:
        stats = self.device.stats
        samples = stats.latency.samples
        if self._window_start is None:
            self._window_start = (now, stats.ios, len(samples))
            return
        started, ios, first_sample = self._window_start
        if now - started < RATE_WINDOW:
            return
        self.iops = (stats.ios - ios) / (now - started)
        fresh = samples[first_sample:]
        self.mean_latency_ms = sum(fresh) / len(fresh) * 1e3 if fresh else None
        self._window_start = (now, stats.ios, len(samples))

    def pause_in(self, phase: Phase) -> float | None:
        return self.pauses.get(phase)


def portal_to_node(spec: ClusterSpec) -> Callable[[str], int | None]:
    """Maps a portal as the initiator reports it (``host:port,tpgt``) to the CVM's node."""
    by_address = {
        (node.cvm_advertised_address, node.cvm_advertised_port): node.node_id for node in spec.nodes
    }

    def node_of(portal: str) -> int | None:
        try:
            parsed = Portal.parse(portal)
        except ValueError:
            return None
        return by_address.get((parsed.host, parsed.port))

    return node_of
