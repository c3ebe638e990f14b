"""The placement policy under random sequences of CVMs going down and up."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from redirector.policy import PlacementMode, PlacementPolicy

NODES = ["cvm1", "cvm2", "cvm3", "cvm4"]
WINDOW = 30.0


def all_up(policy: PlacementPolicy, now: float = 0.0) -> None:
    for node in policy.nodes:
        policy.mark_up(node, now)


def test_local_first_while_healthy() -> None:
    policy = PlacementPolicy(NODES, "cvm1", stable_window=WINDOW)
    all_up(policy)
    assert {policy.choose(f"vd{i}", 1.0) for i in range(10)} == {"cvm1"}


def test_failover_spreads_one_vms_disks_round_robin() -> None:
    policy = PlacementPolicy(NODES, "cvm1", stable_window=WINDOW)
    all_up(policy)
    policy.mark_down("cvm1", 5.0)
    chosen = [policy.choose(f"vd{i}", 6.0) for i in range(6)]
    assert chosen == ["cvm2", "cvm3", "cvm4", "cvm2", "cvm3", "cvm4"]
    # Placement is sticky: the same vDisk logging in again stays where it went.
    assert policy.choose("vd0", 7.0) == "cvm2"


def test_random_mode_only_picks_healthy_remotes() -> None:
    policy = PlacementPolicy(NODES, "cvm1", PlacementMode.RANDOM, WINDOW, random.Random(7))
    all_up(policy)
    policy.mark_down("cvm1", 1.0)
    policy.mark_down("cvm3", 1.0)
    picks = Counter(policy.choose(f"vd{i}", 2.0) for i in range(200))
    assert set(picks) == {"cvm2", "cvm4"}
    assert min(picks.values()) > 50


def test_second_failure_moves_the_vdisk_to_another_remote() -> None:
    policy = PlacementPolicy(NODES, "cvm1", stable_window=WINDOW)
    all_up(policy)
    policy.mark_down("cvm1", 1.0)
    first = policy.choose("vd0", 2.0)
    assert first == "cvm2"
    policy.mark_down("cvm2", 3.0)
    second = policy.choose("vd0", 4.0)
    assert second in {"cvm3", "cvm4"}


def test_failback_only_after_the_stable_window() -> None:
    policy = PlacementPolicy(NODES, "cvm1", stable_window=WINDOW)
    all_up(policy)
    policy.mark_down("cvm1", 10.0)
    assert policy.choose("vd0", 11.0) == "cvm2"
    policy.mark_up("cvm1", 20.0)
    assert policy.failback_due(20.0 + WINDOW - 0.1) == {}
    assert policy.choose("vd0", 20.0 + WINDOW - 0.1) == "cvm2"
    assert policy.failback_due(20.0 + WINDOW) == {"vd0": "cvm2"}
    assert policy.choose("vd0", 20.0 + WINDOW) == "cvm1"
    assert policy.failback_due(20.0 + WINDOW) == {}


def test_flapping_local_restarts_the_window() -> None:
    policy = PlacementPolicy(NODES, "cvm1", stable_window=WINDOW)
    all_up(policy)
    policy.mark_down("cvm1", 0.0)
    policy.choose("vd0", 0.0)
    policy.mark_up("cvm1", 10.0)
    policy.mark_down("cvm1", 20.0)
    policy.mark_up("cvm1", 25.0)
    assert not policy.local_is_stable(10.0 + WINDOW)
    assert policy.local_is_stable(25.0 + WINDOW)


def test_nothing_healthy_means_no_target() -> None:
    policy = PlacementPolicy(NODES, "cvm1", stable_window=WINDOW)
    assert policy.choose("vd0", 0.0) is None


def test_recovering_local_preferred_over_nothing() -> None:
    policy = PlacementPolicy(["a", "b"], "a", stable_window=WINDOW)
    all_up(policy)
    policy.mark_down("a", 1.0)
    policy.mark_down("b", 1.0)
    policy.mark_up("a", 2.0)
    assert policy.choose("vd0", 3.0) == "a"


@pytest.mark.parametrize(
    ("nodes", "local", "window"),
    [(["a"], "b", 1.0), (["a", "a"], "a", 1.0), (["a"], "a", -1.0)],
)
def test_bad_configuration_is_refused(nodes: list[str], local: str, window: float) -> None:
    with pytest.raises(ValueError):
        PlacementPolicy(nodes, local, stable_window=window)


class PlacementMachine(RuleBasedStateMachine):
    """Random health changes, clock ticks and logins; checks the policy's promises."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = PlacementPolicy(NODES, "cvm1", stable_window=WINDOW)
        self.now = 0.0
        self.local_up_since: float | None = None
        self.local_ever_down = False
        self.placements: dict[str, str] = {}

    @rule(node=st.sampled_from(NODES))
    def node_up(self, node: str) -> None:
        if self.policy.mark_up(node, self.now) and node == "cvm1":
            self.local_up_since = self.now

    @rule(node=st.sampled_from(NODES))
    def node_down(self, node: str) -> None:
        self.policy.mark_down(node, self.now)
        # vDisks placed there are free to move: forget where the model saw them.
        self.placements = {vd: on for vd, on in self.placements.items() if on != node}
        if node == "cvm1":
            self.local_up_since = None
            self.local_ever_down = True

    @rule(seconds=st.floats(min_value=0.0, max_value=40.0))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule(vdisk=st.sampled_from([f"vd{i}" for i in range(6)]))
    def login(self, vdisk: str) -> None:
        chosen = self.policy.choose(vdisk, self.now)
        healthy = self.policy.healthy_nodes()
        if chosen is None:
            assert healthy == []
            return
        # Never a redirect to an unhealthy CVM.
        assert chosen in healthy
        if chosen == "cvm1" and self.local_ever_down:
            remotes_up = [node for node in healthy if node != "cvm1"]
            # Back home only after the stable window (or when nothing else is up).
            assert self.local_up_since is not None
            assert self.now - self.local_up_since >= WINDOW or not remotes_up
        previous = self.placements.get(vdisk)
        if previous is not None and previous != "cvm1" and chosen not in (previous, "cvm1"):
            raise AssertionError(f"{vdisk} moved from {previous} to {chosen} while it was up")
        self.placements[vdisk] = chosen

    @invariant()
    def remote_placements_are_remote_and_healthy(self) -> None:
        for placed_on in self.policy.remote_placements().values():
            assert placed_on != "cvm1" or not self.policy.local_is_stable(self.now)
            assert self.policy.is_healthy(placed_on)

    @invariant()
    def failback_only_when_stable(self) -> None:
        if self.policy.failback_due(self.now):
            assert self.policy.local_is_stable(self.now)


PlacementMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
TestPlacementMachine = PlacementMachine.TestCase


def test_a_load_balanced_vdisk_has_its_own_home_and_fails_back_to_it() -> None:
    policy = PlacementPolicy(nodes=["1", "2", "3"], local="1", stable_window=10.0)
    for node in ("1", "2", "3"):
        policy.mark_up(node, 0.0)
    assert policy.choose("lb-1", 1.0, home="2") == "2"  # although the local CVM is healthy
    policy.mark_down("2", 2.0)
    away = policy.choose("lb-1", 3.0, home="2")
    assert away in ("1", "3")
    policy.mark_up("2", 4.0)
    assert policy.choose("lb-1", 5.0, home="2") == away  # home back, inside its window
    assert policy.failback_due(13.9) == {}
    assert policy.failback_due(14.0) == {"lb-1": away}
    assert policy.choose("lb-1", 14.0, home="2") == "2"
    assert policy.failback_due(15.0) == {}
