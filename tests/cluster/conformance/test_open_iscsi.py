"""The conformance kit against Linux's open-iscsi in the QEMU guest (cluster/guest).

The routing (which guest portal stands for which of a test's listeners) is checked without a
guest; the whole catalogue runs against one booted guest (slow: about 5 minutes under TCG).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import trio

from cluster.conformance.catalogue import TESTS
from cluster.conformance.guest_driver import OpenIscsiDriver, guest_portal_for
from cluster.conformance.runner import RunOptions, run_tests
from cluster.conformance.target import KitAddresses
from cluster.conformance.verdict import Verdict
from cluster.guest.harness import GuestImage
from iscsicore.portal import Portal
from tests.helpers.net import unique_loopback_address

ENTRY = Portal("127.0.0.1", 40000, 1)

# open-iscsi 2.1.8 on Linux 6.1 (Debian 12 in the guest), measured 2026-12-08; what it did
# is in the README's conformance matrix.
OPEN_ISCSI_EXPECTED = {
    # Logs in and sends commands although the target answered MaxBurstLength twice.
    "login.duplicate-answer": Verdict.FAIL,
    # The kernel reports a header digest mismatch on a NOP-In that follows the final login
    # response at once, drops the connection, and never answers the ping.
    "full-feature.nop-in-answered": Verdict.FAIL,
    # Sends INQUIRY although the login's MaxCmdSN closed the window.
    "full-feature.window-closed": Verdict.FAIL,
    # Follows two portals that redirect to each other without end (dozens of times in 3 s).
    "redirect.loop-bounded": Verdict.FAIL,
    # A 1-byte CHAP_C: informative whatever it does (RFC 7143 leaves the length open).
    "chap.short-challenge": Verdict.INFORMATIVE,
    # Ignores an AsyncEvent 4 (negotiation request): a MUST only for those that support it.
    "async.negotiation-request": Verdict.NOT_APPLICABLE,
    # The guest runs no kit workload (its failover is tests/guest/test_guest_cluster.py).
    "failover.kill": Verdict.NOT_APPLICABLE,
    "failover.stop": Verdict.NOT_APPLICABLE,
}


@pytest.mark.parametrize(
    ("portal", "guest_side"),
    [
        (ENTRY, ("10.0.2.100", 3260)),
        (Portal("127.0.0.1", 40001, 2), ("10.0.2.100", 3261)),  # same address, new port
        (Portal("127.0.0.2", 40000, 2), ("10.0.2.101", 3260)),  # new address, same port
        (Portal("127.0.0.2", 40002, 2), ("10.0.2.101", 3261)),  # new address and port
    ],
)
def test_each_listener_has_the_guest_portal_that_says_what_changed(
    portal: Portal, guest_side: tuple[str, int]
) -> None:
    assert guest_portal_for(portal, ENTRY) == guest_side


def test_route_names_the_guest_side_and_refuses_two_listeners_on_one_guest_portal() -> None:
    driver = OpenIscsiDriver()
    advertised = driver.route({"entry": ENTRY, "target": Portal("127.0.0.2", 40009, 2)})
    assert advertised == {
        "entry": Portal("10.0.2.100", 3260, 1),
        "target": Portal("10.0.2.101", 3261, 2),
    }
    with pytest.raises(ValueError, match=r"share the guest's 10\.0\.2\.100:3261"):
        driver.route(
            {
                "entry": ENTRY,
                "a": Portal("127.0.0.1", 40001, 2),
                "b": Portal("127.0.0.1", 40002, 3),
            }
        )


@pytest.fixture
def quiet_stargate() -> Iterator[None]:
    logger = logging.getLogger("stargate")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_open_iscsi_gives_the_measured_verdicts(
    guest_image: GuestImage, quiet_stargate: None
) -> None:
    driver = OpenIscsiDriver()
    assert driver.unavailable() is None
    options = RunOptions(addresses=KitAddresses("127.0.0.1", unique_loopback_address()))
    results = trio.run(run_tests, TESTS, driver, options)
    verdicts = {r.test.name: r.verdict for r in results if r.verdict is not Verdict.PASS}
    assert verdicts == OPEN_ISCSI_EXPECTED, {
        r.test.name: r.outcome for r in results if r.verdict is not Verdict.PASS
    }
    # One guest for the run, but for redirect.loop-bounded: iscsid keeps following the loop
    # and refuses to log the session out ("invalid state for logout"), so the driver boots
    # a fresh guest for the tests after it.
    assert driver.boots == 2
    loop = next(r for r in results if r.test.name == "redirect.loop-bounded")
    assert loop.driver_run is not None and "a session outlived the job" in loop.driver_run.output
    # The redirects led the guest to the kit's second address: the routing works.
    redirect = next(r for r in results if r.test.name == "redirect.new-address-port")
    assert [conn["listener"] for conn in redirect.connections][:2] == ["entry", "target"]
