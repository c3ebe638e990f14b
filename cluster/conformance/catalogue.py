"""The conformance tests: what each sets up at the target and how it judges the initiator.

A test names its portals (the first, "entry", is where the driver is sent), whether the
driver must bring CHAP secrets, whether it watches a whole window (storms, loops) instead
of ending with the driver, and its judge over the evidence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from cluster.conformance import async_checks as async_
from cluster.conformance import chap_checks as chap
from cluster.conformance import full_feature_checks as full_feature
from cluster.conformance import login_checks as login
from cluster.conformance import redirect_checks as redirect
from cluster.conformance.async_target import AsyncScript
from cluster.conformance.evidence import Evidence
from cluster.conformance.failover import CvmFailure
from cluster.conformance.target import PING_TTT, LoginScript, PortalSpec
from cluster.conformance.verdict import Outcome
from iscsicore.chap import ChapSecrets
from iscsicore.pdu import AsyncEvent, LoginStatus

SUITES = ("login", "full-feature", "redirect", "chap", "async", "failover")
HELD_ROUNDS = 3
CLOSED_WINDOW_SECONDS = 0.5
SMALL_SEGMENT = 4096
TWICE_KEY = "MaxBurstLength"  # the MaxRecvDataSegmentLength declared by the segment-length test
SHORT_CHALLENGE = b"\x07"
CHAP_USER = "conformance-initiator"
CHAP_SECRET = ChapSecrets(CHAP_USER, "kit-secret-0123456789")
MUTUAL_SECRET = ChapSecrets("conformance-target", "kit-target-secret-987654")
LOGOUT_WITHIN = 3  # Parameter3 of the logout request, seconds
TIME2WAIT = 2  # Parameter2 of the drops, seconds
TIME2RETAIN = 10  # Parameter3 of the drops, seconds
NEGOTIATION_WITHIN = 2.0  # "as early as possible", seconds, on loopback


class Chap(Enum):
    NONE = "none"
    ONE_WAY = "one-way"
    MUTUAL = "mutual"


@dataclass(frozen=True, slots=True)
class RunContext:
    """What a judge may know besides the evidence."""

    window: float  # seconds the test watched
    mutual_given: bool  # the driver was given mutual CHAP secrets


Judge = Callable[[Evidence, RunContext], Outcome]


@dataclass(frozen=True, slots=True)
class ConformanceTest:
    name: str
    suite: str
    rfc: str  # RFC 7143 sections
    checks: str
    portals: tuple[PortalSpec, ...]
    judge: Judge | None  # None for the failover tests, judged on the cluster's records
    secrets: Chap = Chap.NONE
    watch_window: bool = False  # observe the whole window even if the driver ends first
    windows: int = 1  # how many windows it watches: more for slow behaviours
    failover: CvmFailure | None = None  # played on a local cluster (failover.py)


def _entry(script: LoginScript | None = None) -> tuple[PortalSpec, ...]:
    return (PortalSpec("entry", script or LoginScript()),)


def _redirect(target: PortalSpec, *, permanent: bool = False) -> tuple[PortalSpec, ...]:
    entry = PortalSpec("entry", LoginScript(redirect_to="target", permanent=permanent))
    return (entry, target)


def _drop(event: AsyncEvent) -> tuple[PortalSpec, ...]:
    return _entry(LoginScript(async_event=AsyncScript(event, TIME2WAIT, TIME2RETAIN)))


_CHAP = LoginScript(chap=CHAP_SECRET)
_MUTUAL = LoginScript(chap=CHAP_SECRET, mutual=MUTUAL_SECRET)

TESTS: tuple[ConformanceTest, ...] = (
    ConformanceTest(
        "login.isid-tsih",
        "login",
        "11.12.5, 11.12.6",
        "a new session's login has TSIH 0; ISID and TSIH constant; ISID type not reserved",
        _entry(),
        lambda evidence, ctx: login.isid_tsih(evidence),
    ),
    ConformanceTest(
        "login.negotiate-once",
        "login",
        "6.2",
        "no key is sent twice in one login",
        _entry(),
        lambda evidence, ctx: login.negotiate_once(evidence),
    ),
    ConformanceTest(
        "login.t-bit-held",
        "login",
        "6.3, 11.13.3",
        f"the target answers T=0 to {HELD_ROUNDS} T=1 requests: the initiator stays in its "
        "stage, asks again and logs in",
        _entry(LoginScript(hold_transit_rounds=HELD_ROUNDS)),
        lambda evidence, ctx: login.transit_held(evidence),
    ),
    ConformanceTest(
        "login.statsn-zero",
        "login",
        "11.12.8, 4.2.2.2",
        "StatSN starts at 0: each ExpStatSN of the login and the first command is StatSN + 1",
        _entry(LoginScript(initial_stat_sn=0)),
        lambda evidence, ctx: login.stat_sn_followed(evidence),
    ),
    ConformanceTest(
        "login.statsn-wrap",
        "login",
        "11.12.8, 4.2.2.2",
        "StatSN starts at 2**32 - 2 and wraps during the login: ExpStatSN follows it",
        _entry(LoginScript(initial_stat_sn=0xFFFFFFFE)),
        lambda evidence, ctx: login.stat_sn_followed(evidence),
    ),
    ConformanceTest(
        "login.mrdsl-honoured",
        "login",
        "13.12",
        f"the target declares MaxRecvDataSegmentLength={SMALL_SEGMENT}: no longer data "
        "segment follows (n/a if the initiator writes nothing)",
        _entry(LoginScript(max_recv_data_segment_length=SMALL_SEGMENT)),
        lambda evidence, ctx: login.segment_length_honoured(evidence, SMALL_SEGMENT),
    ),
    ConformanceTest(
        "login.duplicate-answer",
        "login",
        "6.2",
        f"the target answers {TWICE_KEY} twice: the initiator drops the connection",
        _entry(LoginScript(answer_twice=TWICE_KEY)),
        lambda evidence, ctx: login.duplicate_answer_refused(evidence, TWICE_KEY),
    ),
    ConformanceTest(
        "login.header-digest",
        "login",
        "13.1, 11.1",
        "the target takes only HeaderDigest=CRC32C: offered, then right on every PDU "
        "(n/a if the initiator never offers it)",
        _entry(LoginScript(require_header_digest=True)),
        lambda evidence, ctx: login.header_digest_used(evidence),
    ),
    ConformanceTest(
        "login.solicited-data-only",
        "login",
        "13.10, 13.11",
        "the target answers ImmediateData=No, InitialR2T=Yes: write data only in answer to "
        "R2Ts (n/a if the initiator writes nothing)",
        _entry(LoginScript(solicited_data_only=True)),
        lambda evidence, ctx: login.solicited_data_only(evidence),
    ),
    ConformanceTest(
        "login.refused-0x02",
        "login",
        "11.13.5",
        "login refused with 0x0202 (authorization failure): no retry storm in the window",
        _entry(LoginScript(refuse=LoginStatus.AUTHORIZATION_FAILURE)),
        lambda evidence, ctx: login.refused_without_storm(evidence, ctx.window, 2),
        watch_window=True,
    ),
    ConformanceTest(
        "login.refused-0x03",
        "login",
        "11.13.5",
        "login refused with 0x0301 (service unavailable): retries, if any, are no storm",
        _entry(LoginScript(refuse=LoginStatus.SERVICE_UNAVAILABLE)),
        lambda evidence, ctx: login.refused_without_storm(evidence, ctx.window, 3),
        watch_window=True,
    ),
    ConformanceTest(
        "full-feature.nop-in-answered",
        "full-feature",
        "11.18, 11.19",
        "a NOP-In ping right after login: a NOP-Out with its TTT, ITT 0xffffffff, I bit set",
        _entry(LoginScript(ping_after_login=True)),
        lambda evidence, ctx: full_feature.ping_answered(evidence, PING_TTT),
    ),
    ConformanceTest(
        "full-feature.window-closed",
        "full-feature",
        "4.2.2.1",
        f"the login ends with MaxCmdSN = ExpCmdSN - 1, a NOP-In opens the window "
        f"{CLOSED_WINDOW_SECONDS:g} s later: no command before",
        _entry(LoginScript(closed_window_seconds=CLOSED_WINDOW_SECONDS)),
        lambda evidence, ctx: full_feature.closed_window_honoured(evidence),
    ),
    ConformanceTest(
        "redirect.new-address",
        "redirect",
        "11.13.5, 13.8",
        "0x0101 to another address, same port: the initiator logs in there with TSIH 0",
        _redirect(PortalSpec("target", other_address=True, same_port_as_entry=True)),
        lambda evidence, ctx: redirect.redirect_followed(evidence),
    ),
    ConformanceTest(
        "redirect.new-address-port",
        "redirect",
        "11.13.5, 13.8",
        "0x0101 to another address and port: the initiator logs in there",
        _redirect(PortalSpec("target", other_address=True)),
        lambda evidence, ctx: redirect.redirect_followed(evidence),
    ),
    ConformanceTest(
        "redirect.same-address-new-port",
        "redirect",
        "11.13.5, 13.8",
        "0x0101 to the same address, another port: the initiator logs in there",
        _redirect(PortalSpec("target")),
        lambda evidence, ctx: redirect.redirect_followed(evidence),
    ),
    ConformanceTest(
        "redirect.permanent",
        "redirect",
        "11.13.5, 13.8",
        "0x0102 (moved permanently) to another address and port: the initiator logs in there",
        _redirect(PortalSpec("target", other_address=True), permanent=True),
        lambda evidence, ctx: redirect.redirect_followed(evidence),
    ),
    ConformanceTest(
        "redirect.then-chap",
        "redirect",
        "11.13.5, 12.1.3",
        "0x0101 to a portal that requires CHAP: the initiator authenticates there "
        "(open-iscsi #117)",
        _redirect(PortalSpec("target", _CHAP)),
        lambda evidence, ctx: redirect.redirect_then_chap(evidence),
        secrets=Chap.ONE_WAY,
    ),
    ConformanceTest(
        "redirect.reconnect-origin",
        "redirect",
        "11.13.5",
        "after 0x0101 the new portal drops the session at its first command: the initiator "
        "logs in again at the original portal (info if at the redirected one)",
        _redirect(PortalSpec("target", LoginScript(drop_first_session=True))),
        lambda evidence, ctx: redirect.reconnect_origin(evidence),
    ),
    ConformanceTest(
        "redirect.loop-bounded",
        "redirect",
        "11.13.5",
        "two portals redirect to each other: the initiator stops following",
        (
            PortalSpec("entry", LoginScript(redirect_to="loop")),
            PortalSpec("loop", LoginScript(redirect_to="entry"), other_address=True),
        ),
        lambda evidence, ctx: redirect.redirect_loop_bounded(evidence, ctx.window),
        watch_window=True,
    ),
    ConformanceTest(
        "chap.algorithm",
        "chap",
        "12.1.3",
        "the initiator's CHAP_A list includes MD5 (5)",
        _entry(_CHAP),
        lambda evidence, ctx: chap.chap_algorithm(evidence),
        secrets=Chap.ONE_WAY,
    ),
    ConformanceTest(
        "chap.name-response",
        "chap",
        "12.1.3",
        "CHAP_N is the configured name, CHAP_R a 16-byte answer the target accepts",
        _entry(_CHAP),
        lambda evidence, ctx: chap.chap_name_response(evidence, CHAP_USER),
        secrets=Chap.ONE_WAY,
    ),
    ConformanceTest(
        "chap.mutual",
        "chap",
        "12.1.3",
        "mutual CHAP: CHAP_I and an own CHAP_C of 16 bytes or more, not the target's "
        "reflected; the login completes",
        _entry(_MUTUAL),
        lambda evidence, ctx: chap.mutual_chap(evidence, ctx.mutual_given),
        secrets=Chap.MUTUAL,
    ),
    ConformanceTest(
        "chap.mutual-bad-proof",
        "chap",
        "12.1.3",
        "mutual CHAP with a wrong target CHAP_R: the initiator sends nothing more",
        _entry(LoginScript(chap=CHAP_SECRET, mutual=MUTUAL_SECRET, corrupt_mutual_response=True)),
        lambda evidence, ctx: chap.bad_target_proof_refused(evidence, ctx.mutual_given),
        secrets=Chap.MUTUAL,
    ),
    ConformanceTest(
        "chap.short-challenge",
        "chap",
        "12.1.3",
        f"a {len(SHORT_CHALLENGE)}-byte CHAP_C: answered or refused (informative)",
        _entry(LoginScript(chap=CHAP_SECRET, challenge=SHORT_CHALLENGE)),
        lambda evidence, ctx: chap.short_challenge(evidence, len(SHORT_CHALLENGE)),
        secrets=Chap.ONE_WAY,
    ),
    ConformanceTest(
        "async.logout-request",
        "async",
        "11.9.1",
        f"the first command is answered by AsyncEvent 1 (Parameter3 = {LOGOUT_WITHIN} s): "
        "a Logout Request (close session or connection) within that time",
        _entry(
            LoginScript(
                async_event=AsyncScript(
                    AsyncEvent.LOGOUT_REQUEST,
                    parameter3=LOGOUT_WITHIN,
                    answer_within=LOGOUT_WITHIN,
                )
            )
        ),
        lambda evidence, ctx: async_.logout_requested(evidence),
    ),
    ConformanceTest(
        "async.drop-connection",
        "async",
        "11.9.1, 6.1.1",
        f"AsyncEvent 2 at the first command (Time2Wait {TIME2WAIT} s, Time2Retain "
        f"{TIME2RETAIN} s), then the connection closes: no reconnect before Time2Wait",
        _drop(AsyncEvent.DROP_CONNECTION),
        lambda evidence, ctx: async_.time2wait_honoured(evidence),
    ),
    ConformanceTest(
        "async.drop-session",
        "async",
        "11.9.1, 6.1.1",
        f"AsyncEvent 3 (drop all connections; Time2Wait {TIME2WAIT} s, Time2Retain "
        f"{TIME2RETAIN} s): no reconnect before Time2Wait",
        _drop(AsyncEvent.DROP_ALL_CONNECTIONS),
        lambda evidence, ctx: async_.time2wait_honoured(evidence),
    ),
    ConformanceTest(
        "async.reconnect-backoff",
        "async",
        "6.1.1",
        "every session is dropped at its first command, without an event: reconnects back "
        "off, no storm in the window (libiscsi #428)",
        _entry(LoginScript(drop_every_session=True)),
        lambda evidence, ctx: async_.reconnect_backoff(evidence, ctx.window),
        watch_window=True,
        # Each cycle is a whole login: a storm must have time to show on a loaded machine.
        windows=2,
    ),
    ConformanceTest(
        "async.negotiation-request",
        "async",
        "11.9.1",
        f"AsyncEvent 4 at the first command: a Text Request or a Logout within "
        f"{NEGOTIATION_WITHIN:g} s (n/a if neither: the initiator does not support it)",
        _entry(
            LoginScript(
                async_event=AsyncScript(
                    AsyncEvent.NEGOTIATION_REQUEST, answer_within=NEGOTIATION_WITHIN
                )
            )
        ),
        lambda evidence, ctx: async_.negotiation_requested(evidence, NEGOTIATION_WITHIN),
    ),
    ConformanceTest(
        "failover.kill",
        "failover",
        "6.1.1, 11.13.5",
        "through node 1's redirector, writing and reading back; node 1's CVM is SIGKILLed, "
        "then restarted: re-logins via the redirector to a remote CVM and home again "
        "(failback after the stable window), every chunk written is on the vDisk",
        (),
        None,
        failover=CvmFailure.KILL,
    ),
    ConformanceTest(
        "failover.stop",
        "failover",
        "6.1.1, 11.13.5",
        "the same with node 1's CVM SIGSTOPped (found out only by timeouts), then SIGCONT",
        (),
        None,
        failover=CvmFailure.STOP,
    ),
)


def select(suites: str) -> tuple[ConformanceTest, ...]:
    """The tests of a comma-separated suite list ("all": every test)."""
    wanted = set(SUITES) if suites == "all" else {name.strip() for name in suites.split(",")}
    unknown = wanted - set(SUITES)
    if unknown or not wanted:
        raise ValueError(
            f"unknown suite {', '.join(sorted(unknown)) or '(none)'} "
            f"(choose from {', '.join(SUITES)}, all)"
        )
    return tuple(test for test in TESTS if test.suite in wanted)
