"""Judges of the async-event suite (RFC 7143 11.9.1): what the initiator did after the
target's Asynchronous Message, timed at the target."""

from __future__ import annotations

from itertools import pairwise

from cluster.conformance.evidence import ConnectionLog, Evidence, Seen
from cluster.conformance.login_checks import never_logged_in, quote, storm_limit
from cluster.conformance.verdict import Outcome, failed, not_applicable, passed
from iscsicore.pdu import AsyncMessage, LogoutReason, LogoutRequest, ScsiCommand, TextRequest

# Logout reasons that end the connection or the session (RFC 7143 11.9.1, event 1).
CLOSING_REASONS = (LogoutReason.CLOSE_SESSION, LogoutReason.CLOSE_CONNECTION)
# Reconnects all sooner than this after their drop are no backoff at all.
BACKOFF_FLOOR = 0.1


def _event(evidence: Evidence) -> tuple[ConnectionLog, Seen] | None:
    """The connection the target sent its Asynchronous Message on, and the message."""
    for conn in evidence.on("entry"):
        for seen in conn.sent():
            if isinstance(seen.pdu, AsyncMessage):
                return conn, seen
    return None


def _no_event(evidence: Evidence) -> Outcome:
    if not any(conn.login_requests() for conn in evidence.on("entry")):
        return never_logged_in()
    if not any(conn.logged_in for conn in evidence.on("entry")):
        return failed("the login did not complete", *quote(evidence.on("entry")[0].pdus))
    return not_applicable("the initiator sent no command, so the target never sent the event")


def _after(conn: ConnectionLog, event: Seen) -> list[Seen]:
    return [seen for seen in conn.received() if seen.at >= event.at]


def _commands(seen: list[Seen]) -> int:
    return sum(1 for item in seen if isinstance(item.pdu, ScsiCommand))


def logout_requested(evidence: Evidence) -> Outcome:
    """AsyncEvent 1: the initiator MUST log out (closing the connection or the session) as
    early as possible and no later than Parameter3 seconds; it SHOULD NOT issue new
    commands on that connection meanwhile."""
    found = _event(evidence)
    if found is None:
        return _no_event(evidence)
    conn, event = found
    assert isinstance(event.pdu, AsyncMessage)
    within = event.pdu.parameter3
    after = _after(conn, event)
    logout = next((seen for seen in after if isinstance(seen.pdu, LogoutRequest)), None)
    commands = _commands(after[: after.index(logout)] if logout else after)
    quoted = quote([event, *after])
    if logout is None:
        return failed(
            f"no Logout Request within Parameter3 = {within} s (+ grace): the target dropped "
            f"the connection; {commands} new command(s) meanwhile",
            *quoted,
        )
    assert isinstance(logout.pdu, LogoutRequest)
    delay = logout.at - event.at
    timing: dict[str, object] = {"logout_after_s": round(delay, 3), "parameter3_s": within}
    if delay > within:
        return failed(f"logged out {delay:.2f} s after the request, later than {within} s", timing)
    if logout.pdu.reason not in CLOSING_REASONS:
        return failed(
            f"Logout reason {logout.pdu.reason}: not 'close the session' or 'close the connection'",
            timing,
            logout.summary(),
        )
    extra = f"; {commands} new command(s) first (SHOULD NOT)" if commands else ""
    return passed(
        f"logged out {delay * 1000:.0f} ms after the request (Parameter3 = {within} s){extra}",
        timing,
        event.summary(),
        logout.summary(),
    )


def time2wait_honoured(evidence: Evidence) -> Outcome:
    """AsyncEvents 2 and 3: the target drops the connection (or the session); Parameter2
    (Time2Wait) is the least time before the initiator reconnects, Parameter3 (Time2Retain)
    how long after that the target keeps the session's state."""
    found = _event(evidence)
    if found is None:
        return _no_event(evidence)
    _, event = found
    assert isinstance(event.pdu, AsyncMessage)
    time2wait, time2retain = event.pdu.parameter2, event.pdu.parameter3
    later = [
        conn for conn in evidence.connections if conn.opened_at > event.at and conn.login_requests()
    ]
    if not later:
        return not_applicable("the initiator did not reconnect after the drop")
    again = later[0]
    gap = again.opened_at - event.at
    timing: dict[str, object] = {
        "reconnect_after_s": round(gap, 3),
        "time2wait_s": time2wait,
        "time2retain_s": time2retain,
        "portal": again.listener,
    }
    if gap < time2wait:
        return failed(
            f"reconnected {gap:.2f} s after the event, before Time2Wait = {time2wait} s",
            timing,
            event.summary(),
            *quote(again.pdus, 1),
        )
    retained = "within" if gap <= time2wait + time2retain else "after"
    return passed(
        f"reconnected {gap:.2f} s after the event (Time2Wait {time2wait} s), {retained} "
        f"Time2Wait + Time2Retain",
        timing,
        event.summary(),
        *quote(again.pdus, 1),
    )


def reconnect_backoff(evidence: Evidence, window: float) -> Outcome:
    """libiscsi #428: a target that drops every session at its first command gets
    reconnects that back off, never a storm: not more logins than the login storm tests
    allow, and not every reconnect right after its drop (a first one at once is fine)."""
    conns = [conn for conn in evidence.on("entry") if conn.login_requests()]
    if not conns:
        return never_logged_in()
    opened = [conn.opened_at for conn in conns]
    gaps = [round(later - earlier, 3) for earlier, later in pairwise(opened)]
    # From the target's drop to the next connection: the initiator's own wait.
    waits = [
        round(later.opened_at - earlier.closed_at, 3)
        for earlier, later in pairwise(conns)
        if earlier.closed_at is not None
    ]
    timing: dict[str, object] = {
        "logins": len(conns),
        "window_s": window,
        "gaps_s": gaps,
        "waits_after_drop_s": waits,
    }
    limit = storm_limit(window)
    if len(conns) > limit:
        return failed(
            f"{len(conns)} logins in {window:g} s while every session was dropped", timing
        )
    if len(waits) >= 2 and max(waits) < BACKOFF_FLOOR:
        return failed(
            f"reconnected {len(waits)} times, each within {max(waits) * 1000:.0f} ms of the "
            "drop: no backoff",
            timing,
        )
    growing = len(gaps) >= 2 and all(b >= a for a, b in pairwise(gaps))
    shape = ", gaps growing" if growing else ""
    return passed(f"{len(conns)} login(s) in {window:g} s{shape}", timing)


def negotiation_requested(evidence: Evidence, within: float) -> Outcome:
    """AsyncEvent 4: the initiator MUST answer with a Text Request (empty or not) on the
    same connection as early as possible, or log out. Not answering at all is taken as not
    supporting the event (n/a); answering later than ``within`` fails."""
    found = _event(evidence)
    if found is None:
        return _no_event(evidence)
    conn, event = found
    after = _after(conn, event)
    answer = next(
        (seen for seen in after if isinstance(seen.pdu, TextRequest | LogoutRequest)), None
    )
    if answer is None:
        return not_applicable(
            "no Text Request or Logout after the negotiation request (RFC 7143 11.9.1 makes "
            "it a MUST for initiators that support it)",
            *quote([event, *after], 4),
        )
    delay = answer.at - event.at
    timing: dict[str, object] = {"answer_after_s": round(delay, 3), "within_s": within}
    if delay > within:
        return failed(f"answered with {answer.name} only after {delay:.2f} s", timing)
    return passed(
        f"answered with {answer.name} {delay * 1000:.0f} ms after the request",
        timing,
        event.summary(),
        answer.summary(),
    )
