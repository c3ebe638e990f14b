"""The hostile client of the isolation benchmark against a real `stargate target`: each kind
does what it claims, seen from the target's side (its /stats.json) as well as the client's."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from benchmarks.hostile import (
    GarbageMode,
    HostileKind,
    HostileReport,
    HostileTarget,
    run_hostile,
)
from benchmarks.isolation import HostileError, HostileProcess
from benchmarks.targets import MiB, StargateServer
from tests.helpers.net import free_port

ATTACK_SECONDS = 1.0
POLL_SECONDS = 5.0


class Stargate:
    """A running `stargate target` with vDisks d0 and d1 and its HTTP statistics."""

    def __init__(self, server: StargateServer, http_port: int) -> None:
        self.server = server
        self.http_port = http_port

    def stats(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.http_port}/stats.json"
        with urllib.request.urlopen(url, timeout=5) as response:
            stats: dict[str, Any] = json.load(response)
            return stats

    def wait_for(self, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first statistics for which ``condition`` holds, polled for POLL_SECONDS."""
        deadline = time.monotonic() + POLL_SECONDS
        while True:
            stats = self.stats()
            if condition(stats) or time.monotonic() > deadline:
                return stats
            time.sleep(0.05)

    def wait_for_steady(self, figure: Callable[[dict[str, Any]], int]) -> dict[str, Any]:
        """The first statistics whose ``figure`` is above 0 and the same as at the three
        polls before (0.15 s), polled for POLL_SECONDS."""
        seen: list[int] = []

        def steady(stats: dict[str, Any]) -> bool:
            seen.append(figure(stats))
            return len(seen) >= 4 and seen[-1] > 0 and len(set(seen[-4:])) == 1

        return self.wait_for(steady)


@pytest.fixture
def stargate() -> Iterator[Stargate]:
    http_port = free_port()
    server = StargateServer(2, 16 * MiB, extra_args=("--http", f"127.0.0.1:{http_port}"))
    with server:
        yield Stargate(server, http_port)


def attack(stargate: Stargate, kind: HostileKind, **options: Any) -> HostileReport:
    target = HostileTarget.from_url(stargate.server.url(0))
    return trio.run(lambda: run_hostile(kind, target, ATTACK_SECONDS, **options))


def test_slot_hog_holds_the_slots_its_window_gives_until_it_leaves(stargate: Stargate) -> None:
    url = stargate.server.url(0)
    with HostileProcess(HostileKind.SLOT_HOG, url, max_seconds=30.0) as hog:
        hog.go()
        holding = stargate.wait_for_steady(lambda s: s["vdisks"]["d0"]["queue_depth"])
        report = hog.finish()
    # Every write the target gave an R2T holds a slot of its queue, waiting for Data-Out;
    # the vDisk's depth counts those and the ones waiting behind its share of the queue.
    held = holding["vdisks"]["d0"]["queue_depth"]
    in_flight = holding["queue"]["in_flight"]
    assert 1 <= in_flight <= held
    # (the target may end held writes later, by a deadline: then more R2Ts come)
    assert report["r2ts"] >= in_flight
    assert report["held_max"] >= in_flight
    assert report["statuses"].get("GOOD") == 1  # READ CAPACITY; no write ever succeeds
    # Its slots came back when it left.
    released = stargate.wait_for(lambda s: s["queue"]["in_flight"] == 0)
    assert released["queue"]["in_flight"] == 0


def test_trickle_never_completes_its_write(stargate: Stargate) -> None:
    report = attack(stargate, HostileKind.TRICKLE, trickle_interval=0.001)
    assert report.trickled_bytes > 50
    assert report.statuses["GOOD"] == 1  # READ CAPACITY only: the write never got a status
    assert stargate.stats()["vdisks"]["d0"]["writes"] == 0


def test_nop_flood_gets_pings_answered(stargate: Stargate) -> None:
    report = attack(stargate, HostileKind.NOP_FLOOD)
    assert report.nop_outs_sent >= 1000
    assert report.received["NopIn"] > 0


def test_garbage_gets_rejects_and_drops_and_reconnects(stargate: Stargate) -> None:
    report = attack(stargate, HostileKind.GARBAGE)
    assert report.connections >= len(GarbageMode) * 2
    assert set(report.garbage) == {mode.value for mode in GarbageMode}
    # every kind of garbage gets a protocol answer (a Reject, a dropped connection or both);
    # later tries may find the target still holding back this address after its drops
    # (the protocol-error throttle), which the client sees as no answer yet
    for mode, outcomes in report.garbage.items():
        answered = sum(count for outcome, count in outcomes.items() if outcome != "no answer")
        assert answered > 0, (mode, outcomes)
    assert report.garbage[GarbageMode.BYTES_BEFORE_LOGIN.value]["dropped"] > 0
    undefined = report.garbage[GarbageMode.UNDEFINED_OPCODE.value]
    assert undefined.get("rejected, dropped", 0) + undefined.get("rejected, kept open", 0) > 0
    assert report.rejects["COMMAND_NOT_SUPPORTED"] > 0
    # the client saw the drops and came back each time
    assert report.drops >= len(GarbageMode) and report.logins >= len(GarbageMode)
    # Every session it opened is gone once the target has read the last close.
    stats = stargate.wait_for(lambda s: s["vdisks"]["d0"]["sessions"] == 0)
    assert stats["vdisks"]["d0"]["sessions"] == 0


def test_a_client_that_never_gets_in_is_an_error_not_a_hang() -> None:
    url = f"iscsi://127.0.0.1:{free_port()}/iqn.2010-06.com.nutanix:vmdisk-d0/0"
    with (
        HostileProcess(HostileKind.SLOT_HOG, url, max_seconds=0.5) as hostile,
        pytest.raises(HostileError, match=r'"connect_failures": [1-9]'),
    ):
        hostile.go()
