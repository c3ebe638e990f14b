"""Which CVM serves which vDisk: the redirector's placement decisions, free of I/O.

The redirector of a node sends every vDisk login to the node's own (local) stargate while
that one is healthy. When it is down, each vDisk's next login goes to a healthy remote
stargate, picked per vDisk (round-robin or random), so that one VM's disks spread over the
remote CVMs; a vDisk stays where it was placed until that CVM goes down too. Once the local
stargate has been healthy for the stable window, the vDisks placed remotely are due to fail
back: the remote stargates end their sessions and the re-logins land locally.

A VM may ask for a load-balanced attachment: its vDisks each get a home CVM in turn over
the whole cluster (`spread_node`), and are placed and failed back as if that CVM were
their local one.

Time is passed in by the caller (seconds, monotonic), which keeps this module testable.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

DEFAULT_STABLE_WINDOW = 300.0


def stable_hash(text: str) -> int:
    """A hash that is the same in every process and every run (unlike ``hash``)."""
    return zlib.crc32(text.encode())


def spread_node(name: str, index: int, nodes: Sequence[int]) -> int:
    """The ``index``-th of ``name``'s disks (or targets) goes to the CVMs in turn, from a
    point ``name`` fixes: k consecutive indexes land on min(k, len(nodes)) CVMs."""
    ring = sorted(nodes)
    return ring[(stable_hash(name) + index) % len(ring)]


class PlacementMode(Enum):
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"


@dataclass
class _NodeHealth:
    healthy: bool = False
    healthy_since: float | None = None  # when it last turned healthy
    ever_down: bool = False  # has it been seen down since the redirector started?


@dataclass
class PlacementPolicy:
    """Placement state of one node's redirector.

    ``nodes`` are the ids of every CVM in the cluster, ``local`` the id of this node's own.
    """

    nodes: list[str]
    local: str
    mode: PlacementMode = PlacementMode.ROUND_ROBIN
    stable_window: float = DEFAULT_STABLE_WINDOW
    rng: random.Random = field(default_factory=random.Random)
    _health: dict[str, _NodeHealth] = field(init=False)
    _remote_placement: dict[str, str] = field(init=False, default_factory=dict)
    _homes: dict[str, str] = field(init=False, default_factory=dict)  # not local ones
    _next_index: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.local not in self.nodes:
            raise ValueError(f"local node {self.local!r} is not one of the nodes {self.nodes}")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"node ids must be unique: {self.nodes}")
        if self.stable_window < 0:
            raise ValueError("the stable window cannot be negative")
        self._health = {node: _NodeHealth() for node in self.nodes}

    # -- health input -------------------------------------------------------------------

    def mark_up(self, node: str, now: float) -> bool:
        """Record that ``node`` answers. Returns True when this is a change."""
        health = self._health[node]
        if health.healthy:
            return False
        health.healthy = True
        health.healthy_since = now
        return True

    def mark_down(self, node: str, now: float) -> bool:
        """Record that ``node`` does not answer. Returns True when this is a change."""
        health = self._health[node]
        changed = health.healthy or not health.ever_down
        health.healthy = False
        health.healthy_since = None
        health.ever_down = True
        # vDisks placed on a node that died must be placed again at their next login.
        for vdisk, placed_on in list(self._remote_placement.items()):
            if placed_on == node:
                del self._remote_placement[vdisk]
                self._homes.pop(vdisk, None)
        return changed

    def is_healthy(self, node: str) -> bool:
        return self._health[node].healthy

    def healthy_nodes(self) -> list[str]:
        return [node for node in self.nodes if self._health[node].healthy]

    # -- decisions ------------------------------------------------------------------------

    def local_is_stable(self, now: float) -> bool:
        """The local stargate may take vDisks (back): healthy, and either never seen down
        or healthy for the whole stable window since it came back."""
        return self.is_stable(self.local, now, self.stable_window)

    def is_stable(self, node: str, now: float, window: float) -> bool:
        """``node`` is healthy, and either never seen down or healthy for ``window``
        seconds since it came back."""
        health = self._health[node]
        if not health.healthy or health.healthy_since is None:
            return False
        if not health.ever_down:
            return True
        return now - health.healthy_since >= window

    def choose(self, vdisk: str, now: float, home: str | None = None) -> str | None:
        """The CVM to redirect ``vdisk``'s login to, or None when no CVM is healthy.
        ``home``: the vDisk's home CVM when it is not the local one (load balancing)."""
        home = self.local if home is None else home
        if self.is_stable(home, now, self.stable_window):
            self._remote_placement.pop(vdisk, None)
            self._homes.pop(vdisk, None)
            return home
        placed_on = self._remote_placement.get(vdisk)
        if placed_on is not None and self._health[placed_on].healthy:
            return placed_on
        remotes = [node for node in self.healthy_nodes() if node != home]
        if not remotes:
            # Better a home stargate inside its stable window than no stargate at all.
            return home if self._health[home].healthy else None
        chosen = self._pick(remotes)
        self._remote_placement[vdisk] = chosen
        if home != self.local:
            self._homes[vdisk] = home
        return chosen

    def _pick(self, candidates: list[str]) -> str:
        if self.mode is PlacementMode.RANDOM:
            return self.rng.choice(candidates)
        # Round-robin over the cluster's node order, skipping the unhealthy, so that the
        # vDisks of one VM land on different CVMs in turn.
        for _ in range(len(self.nodes)):
            node = self.nodes[self._next_index % len(self.nodes)]
            self._next_index += 1
            if node in candidates:
                return node
        raise AssertionError("unreachable: candidates is a non-empty subset of nodes")

    def remote_placements(self) -> dict[str, str]:
        """vDisk -> the remote CVM it was redirected to (those that have not failed back)."""
        return dict(self._remote_placement)

    def failback_due(self, now: float) -> dict[str, str]:
        """vDisks whose sessions on a remote CVM should now be ended so that they come home:
        every placement away from home, once its home stargate is stable."""
        return {
            vdisk: node
            for vdisk, node in self._remote_placement.items()
            if self.is_stable(self._homes.get(vdisk, self.local), now, self.stable_window)
        }

    def forget(self, vdisk: str) -> None:
        """The vDisk's remote sessions were ended (or it was deleted)."""
        self._remote_placement.pop(vdisk, None)
        self._homes.pop(vdisk, None)
