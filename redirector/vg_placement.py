"""Where a volume group's virtual target is served: pure, the same answer on every node.

Each virtual target has a home CVM: the group's preferred node when one is set; with load
balancing, the CVMs in turn from a point fixed by the group's name (so a group's targets
spread evenly over every CVM); otherwise a stable hash of the target's own name. While the
home CVM is down the target goes to the next healthy CVM after it, in node order, so every
DSIP leader, old or new, sends a target's logins to the same place.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from redirector.policy import spread_node, stable_hash
from topology.volume_group import VirtualTarget, VolumeGroup


def home_node(group: VolumeGroup, target: VirtualTarget, nodes: Sequence[int]) -> int:
    """The CVM that serves ``target`` while it is healthy."""
    ring = sorted(nodes)
    if not ring:
        raise ValueError("a cluster has at least one node")
    if group.preferred_node is not None and group.preferred_node in ring:
        return group.preferred_node
    if group.load_balance:
        return spread_node(group.iqn, target.index, ring)
    return ring[stable_hash(target.iqn) % len(ring)]


def place(
    group: VolumeGroup, target: VirtualTarget, nodes: Sequence[int], healthy: Collection[int]
) -> int | None:
    """The CVM a login to ``target`` goes to now: its home if healthy, else the next healthy
    one in node order after it; None when no CVM is healthy."""
    ring = sorted(nodes)
    home = home_node(group, target, ring)
    start = ring.index(home)
    for step in range(len(ring)):
        node = ring[(start + step) % len(ring)]
        if node in healthy:
            return node
    return None
