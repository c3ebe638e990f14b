"""Nemesis schedules: reproducible from the seed, and always sensible."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.jepsen.nemesis import Action, generate


def test_the_same_seed_gives_the_same_schedule() -> None:
    assert generate(42, 3, 60) == generate(42, 3, 60)
    assert generate(42, 3, 60) != generate(43, 3, 60)
    assert generate(42, 3, 60).describe()[0].startswith("t+")


def test_a_long_schedule_uses_every_kind_of_fault() -> None:
    actions = {step.action for step in generate(7, 3, 600).steps}
    assert actions == set(Action)


def test_a_nemesis_needs_a_node_to_spare() -> None:
    with pytest.raises(ValueError):
        generate(1, 1, 10)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 5), st.floats(1, 120))
def test_schedules_keep_a_healthy_cvm_and_undo_only_what_was_done(
    seed: int, nodes: int, seconds: float
) -> None:
    schedule = generate(seed, nodes, seconds)
    down: dict[int, Action] = {}
    dark_until: dict[int, float] = {}
    previous = 0.0
    for step in schedule.steps:
        assert previous <= step.at < seconds
        assert 1 <= step.node <= nodes
        previous = step.at
        if step.action is Action.START:
            assert down.pop(step.node) is Action.KILL
        elif step.action is Action.CONT:
            assert down.pop(step.node) is Action.STOP
        else:
            assert step.node not in down
            assert dark_until.get(step.node, 0.0) <= step.at
            if step.action is Action.BLACKHOLE:
                assert step.duration > 0
                dark_until[step.node] = step.at + step.duration
            else:
                down[step.node] = step.action
        impaired = set(down) | {n for n, until in dark_until.items() if until > step.at}
        assert len(impaired) <= nodes - 1


def test_half_the_schedules_hunt_stale_parked_writes() -> None:
    """The stop-pair pattern: stop a CVM, stop the one its sessions moved to while that one
    still waits for the release, continue the second, then the first."""
    hunting = 0
    for seed in range(40):
        schedule = generate(seed, 3, 30)
        if schedule.pattern != "stop-pair":
            continue
        hunting += 1
        first, second, third, fourth = schedule.steps[:4]
        assert (first.action, second.action) == (Action.STOP, Action.STOP)
        assert first.node != second.node
        assert 4.5 <= second.at - first.at <= 7.5
        assert (third.action, third.node) == (Action.CONT, second.node)
        assert (fourth.action, fourth.node) == (Action.CONT, first.node)
    assert 10 <= hunting <= 30
