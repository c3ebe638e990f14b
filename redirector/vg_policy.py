"""Where the DSIP sends each volume-group target's logins, and when they come home.

A target's logins go to its home CVM (vg_placement) while that one is stable; when it is
down they go to the next healthy CVM, and stay there while that one is healthy. Once the
home CVM has been healthy for the group's stable window (120 s by default) the target is
due to fail back: the CVM serving it ends its sessions and the re-logins, which come back
through the DSIP, land at home. Pure: time and health come from the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from redirector.policy import PlacementPolicy
from redirector.vg_placement import home_node
from topology.volume_group import VirtualTarget, VolumeGroup


@dataclass
class VolumeGroupPlacement:
    """The DSIP leader's memory of where it sent each target away from home."""

    health: PlacementPolicy  # the redirector's view of every CVM (keys: str(node id))
    node_ids: list[int]
    _away: dict[str, int] = field(default_factory=dict)  # target IQN -> node serving it

    def choose(self, group: VolumeGroup, target: VirtualTarget, now: float) -> int | None:
        """The CVM to redirect a login to ``target`` to; None: no CVM is healthy."""
        home = home_node(group, target, self.node_ids)
        if self.health.is_stable(str(home), now, group.stable_window):
            self._away.pop(target.iqn, None)
            return home
        away = self._away.get(target.iqn)
        if away is not None and self.health.is_healthy(str(away)):
            return away
        ring = sorted(self.node_ids)
        start = ring.index(home)
        for step in range(1, len(ring)):
            node = ring[(start + step) % len(ring)]
            if self.health.is_healthy(str(node)):
                self._away[target.iqn] = node
                return node
        # Better a home CVM inside its stable window than nothing at all.
        return home if self.health.is_healthy(str(home)) else None

    def remember(self, target_iqn: str, node: int) -> None:
        """A target found served away from home (a new leader reads the owners)."""
        self._away[target_iqn] = node

    def failback_due(self, groups: list[VolumeGroup], now: float) -> dict[str, int]:
        """Target IQN -> the CVM that should end its sessions now: every target away from a
        home that has been stable for its group's window."""
        due = {}
        for group in groups:
            for target in group.targets():
                away = self._away.get(target.iqn)
                if away is None:
                    continue
                home = home_node(group, target, self.node_ids)
                if away != home and self.health.is_stable(str(home), now, group.stable_window):
                    due[target.iqn] = away
        return due

    def forget(self, target_iqn: str) -> None:
        self._away.pop(target_iqn, None)

    def away(self) -> dict[str, int]:
        return dict(self._away)
