"""Where a volume group's virtual targets are served: stable, on a healthy CVM, on the
preferred node while it is healthy, spread over every CVM when load-balanced."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from redirector.policy import PlacementPolicy
from redirector.vg_placement import home_node, place
from redirector.vg_policy import VolumeGroupPlacement
from topology.volume_group import VolumeGroup

NODES = [1, 2, 3]


def group(name: str = "data", disks: int = 6, **options: object) -> VolumeGroup:
    return VolumeGroup(name, VolumeGroup.disk_ids(name, disks), **options)  # type: ignore[arg-type]


def test_load_balanced_six_disks_spread_over_all_three_cvms_evenly() -> None:
    balanced = group(load_balance=True)
    homes = [home_node(balanced, target, NODES) for target in balanced.targets()]
    assert sorted(homes) == [1, 1, 2, 2, 3, 3]


def test_preferred_node_takes_every_target_while_healthy() -> None:
    preferring = group(preferred_node=2, load_balance=True)
    assert {place(preferring, t, NODES, {1, 2, 3}) for t in preferring.targets()} == {2}
    # Node 2 down: each target goes to the next healthy node after it.
    assert {place(preferring, t, NODES, {1, 3}) for t in preferring.targets()} == {3}


def test_nothing_healthy_places_nowhere() -> None:
    assert place(group(), group().targets()[0], NODES, set()) is None


@given(
    name=st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
    disks=st.integers(1, 40),
    healthy=st.sets(st.sampled_from(NODES), min_size=1),
    balanced=st.booleans(),
)
def test_placement_is_a_healthy_node_and_the_home_one_when_it_is_healthy(
    name: str, disks: int, healthy: set[int], balanced: bool
) -> None:
    candidate = group(name, disks, load_balance=balanced)
    for target in candidate.targets():
        chosen = place(candidate, target, NODES, healthy)
        assert chosen in healthy
        home = home_node(candidate, target, NODES)
        assert (chosen == home) == (home in healthy)
        # The same answer whatever order the nodes come in: every leader agrees.
        assert place(candidate, target, list(reversed(NODES)), healthy) == chosen


def _health(now: float, up: set[int]) -> PlacementPolicy:
    policy = PlacementPolicy(nodes=[str(n) for n in NODES], local="1")
    for node in NODES:
        if node in up:
            policy.mark_up(str(node), now)
        else:
            policy.mark_down(str(node), now)
    return policy


def test_a_target_fails_over_stays_away_and_fails_back_after_the_window() -> None:
    preferring = group(disks=1, preferred_node=1, stable_window=120.0)
    (target,) = preferring.targets()
    health = _health(0.0, {2, 3})
    placement = VolumeGroupPlacement(health, NODES)
    assert placement.choose(preferring, target, 1.0) == 2  # the next healthy after home
    health.mark_up("1", 10.0)
    assert placement.choose(preferring, target, 11.0) == 2  # home back, inside its window
    assert placement.failback_due([preferring], 129.0) == {}
    assert placement.failback_due([preferring], 130.0) == {target.iqn: 2}
    assert placement.choose(preferring, target, 130.0) == 1
    assert placement.away() == {}


def test_a_target_away_follows_its_cvm_down_and_home_may_serve_inside_its_window() -> None:
    preferring = group(disks=1, preferred_node=1)
    (target,) = preferring.targets()
    health = _health(0.0, {2, 3})
    placement = VolumeGroupPlacement(health, NODES)
    assert placement.choose(preferring, target, 1.0) == 2
    health.mark_down("2", 2.0)
    assert placement.choose(preferring, target, 3.0) == 3
    health.mark_down("3", 4.0)
    health.mark_up("1", 5.0)
    assert placement.choose(preferring, target, 6.0) == 1  # better than nothing
    health.mark_down("1", 7.0)
    assert placement.choose(preferring, target, 8.0) is None
