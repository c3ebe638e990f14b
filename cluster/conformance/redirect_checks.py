"""Judges of the redirect suite."""

from __future__ import annotations

from cluster.conformance.evidence import Evidence
from cluster.conformance.login_checks import first_connection, never_logged_in, quote
from cluster.conformance.verdict import (
    Outcome,
    Verdict,
    failed,
    informative,
    not_applicable,
    passed,
)

# Logins through a redirect loop beyond which following it is unbounded.
LOOP_LIMIT = 16


def redirect_followed(evidence: Evidence) -> Outcome:
    """RFC 7143 11.13.5 (status 0x0101/0x0102) and 13.8 (TargetAddress): after the redirect
    the initiator logs in, with TSIH 0 and the same TargetName, at the address given."""
    entry = first_connection(evidence, "entry")
    if entry is None:
        return never_logged_in()
    redirected = [resp for resp in entry.login_responses() if resp.status_class == 1]
    if not redirected:
        return failed("the entry portal did not get to redirect", *quote(entry.pdus))
    target = first_connection(evidence, "target")
    if target is None:
        return failed("no login at the redirect's TargetAddress", *quote(entry.pdus))
    first = target.login_requests()[0]
    delay = target.opened_at - entry.pdus[-1].at
    timing: dict[str, object] = {"redirect_to_login_s": round(delay, 3)}
    if first.tsih != 0:
        return failed(f"login after the redirect has TSIH {first.tsih}", *quote(target.pdus, 2))
    if not target.logged_in:
        return failed("the login at the new portal did not complete", *quote(target.pdus))
    return passed(
        f"logged in at the new portal {delay * 1000:.1f} ms after the redirect",
        timing,
        *quote(entry.pdus, 2),
        *quote(target.pdus, 2),
    )


def redirect_loop_bounded(evidence: Evidence, window: float) -> Outcome:
    """RFC 7143 11.13.5: nothing bounds redirects on the wire; an initiator that follows a
    loop for ever keeps reconnecting. Pass if it stops within the window and LOOP_LIMIT."""
    conns = [conn for conn in evidence.connections if conn.login_requests()]
    if not conns:
        return never_logged_in()
    last = max(conn.opened_at for conn in conns)
    timing: dict[str, object] = {
        "logins": len(conns),
        "window_s": window,
        "last_at": round(last, 3),
    }
    if len(conns) > LOOP_LIMIT:
        return failed(f"followed the loop {len(conns)} times in {window:g} s", timing)
    if last > window * 0.75 and len(conns) > 2:
        return failed(f"still following the loop at {last:.2f} s ({len(conns)} logins)", timing)
    return passed(f"stopped after {len(conns)} login(s)", timing)


def redirect_then_chap(evidence: Evidence) -> Outcome:
    """open-iscsi #117: the portal a redirect leads to requires CHAP; the initiator
    authenticates there (CHAP_N/CHAP_R on the new connection) and logs in."""
    followed = redirect_followed(evidence)
    target = first_connection(evidence, "target")
    if followed.verdict is not Verdict.PASS or target is None:
        return followed
    answered = any("CHAP_R" in dict(seen.text()) for seen in target.received())
    if not answered:
        return failed("logged in at the new portal without CHAP", *quote(target.pdus))
    return passed("authenticated with CHAP at the new portal and logged in", *followed.evidence)


def reconnect_origin(evidence: Evidence) -> Outcome:
    """After a temporary redirect (0x0101) and a later connection loss, the initiator logs in
    again at the original portal, which may send it elsewhere now (the redirector's
    failover). Going straight back to the redirected address is recorded, not failed:
    RFC 7143 11.13.5 does not say how long a temporary address stays good."""
    followed = redirect_followed(evidence)
    target = first_connection(evidence, "target")
    if followed.verdict is not Verdict.PASS or target is None:
        return followed
    dropped_at = target.closed_at
    later = [
        conn
        for conn in evidence.connections
        if dropped_at is not None and conn.opened_at >= dropped_at and conn.login_requests()
    ]
    if not later:
        return not_applicable("the initiator did not log in again after the connection loss")
    again = later[0]
    timing: dict[str, object] = {
        "dropped_at": dropped_at,
        "next_login_at": round(again.opened_at, 4),
        "portal": again.listener,
    }
    if again.listener == "entry":
        return passed("logged in again at the original portal", timing)
    return informative("went straight back to the redirected portal", timing)
