"""The conformance kit judged by initiators whose behaviour is known.

The rogue initiator breaks one behaviour at a time: the kit must fail that behaviour and
pass the others. The project's initiator must pass everything; libiscsi's tools give the
verdicts measured for them (its findings, with what it did, are in the kit's README).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import trio

from cluster.conformance.catalogue import TESTS
from cluster.conformance.drivers import Driver, LibiscsiDriver, ProjectDriver
from cluster.conformance.runner import ConformanceResult, RunOptions, run_tests
from cluster.conformance.target import KitAddresses
from cluster.conformance.verdict import Verdict
from tests.cluster.conformance.rogue import Flaw, RogueDriver
from tests.conftest import require_tool
from tests.helpers.net import unique_loopback_address

WINDOW = 1.0
FLAWS_AT_ONCE = 10
# The failover suite runs on a local cluster: tests/cluster/conformance/test_failover.py.
KIT_TESTS = tuple(test for test in TESTS if test.failover is None)
INFO = Verdict.INFORMATIVE
FAIL = Verdict.FAIL
NA = Verdict.NOT_APPLICABLE
# Every driver here answers the 1-byte challenge: informative, whatever the flaw.
ANSWERS_SHORT_CHALLENGE = {"chap.short-challenge": INFO}
# Verdicts other than pass, per flaw: the behaviour each breaks.
EXPECTED: dict[Flaw, dict[str, Verdict]] = {
    Flaw.NONE: {},
    Flaw.RESERVED_ISID: {"login.isid-tsih": FAIL},
    Flaw.STAGE_JUMP: {"login.t-bit-held": FAIL},
    Flaw.RENEGOTIATE: {"login.t-bit-held": FAIL},
    Flaw.STALE_EXP_STAT_SN: {"login.statsn-zero": FAIL, "login.statsn-wrap": FAIL},
    Flaw.OVERSIZED_SEGMENT: {"login.mrdsl-honoured": FAIL},
    Flaw.RETRY_STORM: {"login.refused-0x02": FAIL, "login.refused-0x03": FAIL},
    Flaw.MISSES_DUPLICATE: {"login.duplicate-answer": FAIL},
    Flaw.WRONG_DIGEST: {"login.header-digest": FAIL},
    Flaw.IMMEDIATE_DATA_ANYWAY: {"login.solicited-data-only": FAIL},
    Flaw.IGNORE_NOP_IN: {"full-feature.nop-in-answered": FAIL},
    Flaw.IGNORE_WINDOW: {"full-feature.window-closed": FAIL},
    Flaw.FOLLOW_FOREVER: {"redirect.loop-bounded": FAIL},
    Flaw.IGNORE_PERMANENT: {"redirect.permanent": FAIL},
    # A wrong name fails the authentication, so mutual CHAP never gets to the proof.
    Flaw.RECONNECT_TO_REDIRECTED: {"redirect.reconnect-origin": INFO},
    Flaw.NO_CHAP_AFTER_REDIRECT: {"redirect.then-chap": FAIL},
    Flaw.WRONG_CHAP_NAME: {
        "redirect.then-chap": FAIL,
        "chap.name-response": FAIL,
        "chap.mutual": FAIL,
        "chap.mutual-bad-proof": NA,
    },
    Flaw.ACCEPT_BAD_PROOF: {"chap.mutual-bad-proof": FAIL},
    Flaw.IGNORE_LOGOUT_REQUEST: {"async.logout-request": FAIL},
    Flaw.IGNORE_TIME2WAIT: {"async.drop-connection": FAIL, "async.drop-session": FAIL},
    Flaw.RECONNECT_STORM: {"async.reconnect-backoff": FAIL},
    Flaw.LATE_NEGOTIATION: {"async.negotiation-request": FAIL},
    # The target refuses a login with a key twice (RFC 7143 6.2), so every test that needs
    # a completed login fails with it; those that judge only the requests still pass.
    Flaw.DUPLICATE_KEY: {
        "login.negotiate-once": FAIL,
        "login.t-bit-held": FAIL,
        "login.mrdsl-honoured": NA,
        "login.duplicate-answer": NA,
        "login.header-digest": FAIL,
        "login.solicited-data-only": NA,
        "full-feature.nop-in-answered": NA,
        "full-feature.window-closed": NA,
        "redirect.new-address": FAIL,
        "redirect.new-address-port": FAIL,
        "redirect.same-address-new-port": FAIL,
        "redirect.permanent": FAIL,
        "redirect.then-chap": FAIL,
        "redirect.reconnect-origin": FAIL,
        "chap.name-response": FAIL,
        "chap.mutual": FAIL,
        "async.logout-request": FAIL,
        "async.drop-connection": FAIL,
        "async.drop-session": FAIL,
        "async.negotiation-request": FAIL,
    },
}
# libiscsi 1.19 (libiscsi-bin; QEMU's driver shares it), measured 2026-12-07.
LIBISCSI_EXPECTED = {
    # Re-sends every operational key after a T=0 answer; the target refuses (0x0200).
    "login.t-bit-held": FAIL,
    # Ignores a login StatSN that is "below" 0 in serial arithmetic: ExpStatSN stays 1.
    "login.statsn-wrap": FAIL,
    # The tools only read.
    "login.mrdsl-honoured": NA,
    "login.solicited-data-only": NA,
    # Logs in and sends commands although the target answered MaxBurstLength twice.
    "login.duplicate-answer": FAIL,
    # Sends its first command at once although the login's MaxCmdSN closed the window.
    "full-feature.window-closed": FAIL,
    # Fails the login with "Target moved permanently" instead of following it.
    "redirect.permanent": FAIL,
    # next_reconnect = time(NULL) + Time2Wait: whole seconds, so it reconnects up to 1 s early.
    "async.drop-connection": FAIL,
    "async.drop-session": FAIL,
}


@pytest.fixture(autouse=True)
def quiet_stargate() -> Iterator[None]:
    """The stargate behind the portals logs each connection the tests drop on purpose."""
    logger = logging.getLogger("stargate")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def _options() -> RunOptions:
    return RunOptions(window=WINDOW, addresses=KitAddresses("127.0.0.1", unique_loopback_address()))


def _verdicts(results: list[ConformanceResult]) -> dict[str, Verdict]:
    """The verdicts that are not a pass, by test name."""
    return {r.test.name: r.verdict for r in results if r.verdict is not Verdict.PASS}


def _run(driver: Driver) -> list[ConformanceResult]:
    return trio.run(run_tests, KIT_TESTS, driver, _options())


def _expected(flaw: Flaw, test: str) -> Verdict:
    return (EXPECTED[flaw] | ANSWERS_SHORT_CHALLENGE).get(test, Verdict.PASS)


def test_each_flaw_fails_the_behaviour_it_breaks_and_passes_the_others() -> None:
    results: dict[Flaw, list[ConformanceResult]] = {}

    # The storm and loop judges count logins in a window: too many rogues at once on 2
    # cores and none gets to storm.
    limiter = trio.CapacityLimiter(FLAWS_AT_ONCE)

    async def one(flaw: Flaw) -> None:
        async with limiter:
            results[flaw] = await run_tests(KIT_TESTS, RogueDriver(flaw), _options())

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for flaw in Flaw:
                nursery.start_soon(one, flaw)

    trio.run(main)
    wrong = {
        (flaw.name, result.test.name): (result.verdict.value, result.outcome.message)
        for flaw in Flaw
        for result in results[flaw]
        if result.verdict is not _expected(flaw, result.test.name)
    }
    assert not wrong


def test_every_verdict_rests_on_the_pdus_the_target_received() -> None:
    names = ("login.mrdsl-honoured", "login.refused-0x03", "redirect.new-address")
    tests = tuple(test for test in KIT_TESTS if test.name in names)
    results = trio.run(run_tests, tests, RogueDriver(Flaw.OVERSIZED_SEGMENT), _options())
    by_name = {result.test.name: result for result in results}
    oversized = by_name["login.mrdsl-honoured"]
    # The rogue's driver run "succeeded" in its own eyes; the target saw the long segment.
    assert oversized.driver_run is not None and oversized.driver_run.exit_status == 0
    (evidence,) = oversized.outcome.evidence
    assert evidence["pdu"] == "ScsiCommand" and evidence["data_length"] == 8192
    for result in results:
        assert result.connections, result.test.name  # every test saw the initiator
    redirect = by_name["redirect.new-address"]
    listeners = [conn["listener"] for conn in redirect.connections]
    assert listeners == ["entry", "target"]


def test_async_verdicts_rest_on_the_event_and_the_answer_timed_at_the_target() -> None:
    names = ("async.logout-request", "async.drop-session")
    tests = tuple(test for test in KIT_TESTS if test.name in names)

    async def both() -> dict[Flaw, list[ConformanceResult]]:
        found: dict[Flaw, list[ConformanceResult]] = {}

        async def one(flaw: Flaw) -> None:
            found[flaw] = await run_tests(tests, RogueDriver(flaw), _options())

        async with trio.open_nursery() as nursery:
            for flaw in (Flaw.NONE, Flaw.IGNORE_TIME2WAIT):
                nursery.start_soon(one, flaw)
        return found

    results = trio.run(both)
    good = {result.test.name: result.outcome for result in results[Flaw.NONE]}
    timing, event, logout = good["async.logout-request"].evidence
    assert event["pdu"] == "AsyncMessage" and event["async_event"] == 1
    assert logout["pdu"] == "LogoutRequest" and logout["dir"] == "in"
    assert 0 <= float(str(timing["logout_after_s"])) <= 3
    hasty = {result.test.name: result for result in results[Flaw.IGNORE_TIME2WAIT]}
    dropped = hasty["async.drop-session"]
    # The rogue's own run "succeeded"; the target saw it come back too soon.
    assert dropped.driver_run is not None and dropped.driver_run.exit_status == 0
    assert dropped.verdict is FAIL
    assert float(str(dropped.outcome.evidence[0]["reconnect_after_s"])) < 2


def test_project_initiator_passes_every_test() -> None:
    assert _verdicts(_run(ProjectDriver())) == ANSWERS_SHORT_CHALLENGE


def test_libiscsi_gives_the_measured_verdicts() -> None:
    require_tool("iscsi-inq")
    require_tool("iscsi-readcapacity16")
    assert _verdicts(_run(LibiscsiDriver())) == LIBISCSI_EXPECTED | ANSWERS_SHORT_CHALLENGE
