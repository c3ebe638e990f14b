"""LoginThrottle's arithmetic on a fake clock: doubling, cap, decay, clearing, bounded
memory. (Real logins against a real target: test_login_security.py.)"""

from __future__ import annotations

import pytest

from stargate import login_throttle
from stargate.login_throttle import LoginThrottle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _throttle(clock: FakeClock) -> LoginThrottle:
    return LoginThrottle(first_delay=0.1, max_delay=2.0, half_life=30.0, clock=clock)


def test_delays_double_up_to_the_cap_and_queue_behind_each_other() -> None:
    clock = FakeClock()
    throttle = _throttle(clock)
    releases = [throttle.failed("iqn.x", "10.0.0.1") - clock.now for _ in range(9)]
    # All at the same instant (parallel guesses): each waits behind the previous ones.
    assert releases == pytest.approx([0.1, 0.3, 0.7, 1.5, 3.1, 5.1, 7.1, 9.1, 11.1])


def test_a_flood_under_a_name_does_not_lock_that_name_out() -> None:
    clock = FakeClock()
    throttle = _throttle(clock)
    for _ in range(50):  # parallel guesses under the victim's name, from the attacker
        throttle.failed("iqn.victim", "10.6.6.6")
    assert throttle.held_until("iqn.attacker", "10.6.6.6") - clock.now > 60  # its address
    # The victim, from its own address, waits at most the name's hold: it still logs in.
    assert throttle.held_until("iqn.victim", "10.0.0.7") - clock.now <= 10.0


def test_sequential_failures_wait_one_delay_each() -> None:
    clock = FakeClock()
    throttle = _throttle(clock)
    waits = []
    for _ in range(6):
        release = throttle.failed("iqn.x", "10.0.0.1")
        waits.append(release - clock.now)
        clock.now = release  # the answer went out; the next guess comes at once
    # Doubling, a little less as the earlier failures decay meanwhile; then the cap.
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0], rel=0.1)
    assert waits[-1] == pytest.approx(2.0)


def test_failures_decay_with_quiet() -> None:
    clock = FakeClock()
    throttle = _throttle(clock)
    for _ in range(5):
        clock.now = throttle.failed("iqn.x", "10.0.0.1")
    clock.now += 10 * 30.0  # ten half-lives
    assert throttle.failed("iqn.x", "10.0.0.1") - clock.now == pytest.approx(0.1, rel=0.01)


def test_other_names_and_addresses_are_not_held() -> None:
    clock = FakeClock()
    throttle = _throttle(clock)
    for _ in range(5):
        throttle.failed("iqn.guesser", "10.0.0.1")
    assert throttle.held_until("iqn.guesser", "10.0.0.9") > clock.now  # its name
    assert throttle.held_until("iqn.other", "10.0.0.1") > clock.now  # its address
    assert throttle.held_until("iqn.other", "10.0.0.9") <= clock.now


def test_success_clears_the_name_not_the_address() -> None:
    clock = FakeClock()
    throttle = _throttle(clock)
    for _ in range(3):
        throttle.failed("iqn.typo", "10.0.0.1")
    throttle.succeeded("iqn.typo")
    assert throttle.held_until("iqn.typo", "10.0.0.2") <= clock.now
    assert throttle.held_until("iqn.typo", "10.0.0.1") > clock.now


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(login_throttle, "MAX_KEYS", 64)
    clock = FakeClock()
    throttle = _throttle(clock)
    for index in range(1000):
        throttle.failed(f"iqn.name-{index}", f"10.0.{index // 250}.{index % 250}")
    assert len(throttle._records) <= 64
