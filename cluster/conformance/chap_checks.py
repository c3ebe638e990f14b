"""Judges of the CHAP suite."""

from __future__ import annotations

from cluster.conformance.evidence import Evidence
from cluster.conformance.login_checks import first_connection, never_logged_in, quote
from cluster.conformance.verdict import Outcome, failed, informative, not_applicable, passed
from iscsicore.chap import MIN_MUTUAL_CHALLENGE_LENGTH, decode_binary
from iscsicore.keys import TextError
from iscsicore.pdu import LoginRequest, LoginResponse


def _chap_requests(evidence: Evidence) -> list[tuple[LoginRequest, dict[str, str]]]:
    conn = first_connection(evidence)
    if conn is None:
        return []
    return [
        (seen.pdu, dict(seen.text()))
        for seen in conn.received()
        if isinstance(seen.pdu, LoginRequest)
    ]


def chap_algorithm(evidence: Evidence) -> Outcome:
    """RFC 7143 12.1.3: the initiator offers CHAP_A with MD5 (5) among its choices."""
    conn = first_connection(evidence)
    if conn is None:
        return never_logged_in()
    offered = [keys["CHAP_A"] for _, keys in _chap_requests(evidence) if "CHAP_A" in keys]
    if not offered:
        return failed("no CHAP_A offered to a target requiring CHAP", *quote(conn.pdus))
    if "5" not in offered[0].split(","):
        return failed(f"CHAP_A={offered[0]} does not include MD5 (5)", *quote(conn.pdus))
    return passed(f"CHAP_A={offered[0]}", *quote(conn.pdus))


def chap_name_response(evidence: Evidence, user: str) -> Outcome:
    """RFC 7143 12.1.3, RFC 1994: CHAP_N is the configured name, CHAP_R the 16-byte MD5
    answer the target verified (the login completed)."""
    conn = first_connection(evidence)
    if conn is None:
        return never_logged_in()
    answers = [keys for _, keys in _chap_requests(evidence) if "CHAP_R" in keys]
    if not answers:
        return failed("no CHAP_N/CHAP_R after the target's challenge", *quote(conn.pdus))
    answer = answers[0]
    if answer.get("CHAP_N") != user:
        return failed(f"CHAP_N={answer.get('CHAP_N')!r}, configured {user!r}", *quote(conn.pdus))
    try:
        length = len(decode_binary(answer["CHAP_R"]))
    except TextError:
        return failed(f"CHAP_R={answer['CHAP_R'][:40]!r} is no binary value", *quote(conn.pdus))
    if length != 16 or not conn.logged_in:
        return failed(f"CHAP_R of {length} bytes was not accepted", *quote(conn.pdus))
    return passed(f"CHAP_N={user}, a 16-byte CHAP_R the target accepted", *quote(conn.pdus))


def mutual_chap(evidence: Evidence, mutual_asked: bool) -> Outcome:
    """RFC 7143 12.1.3: for mutual CHAP the initiator sends CHAP_I and a CHAP_C of its own
    (not the target's challenge reflected, at least 16 bytes) and logs in."""
    if not mutual_asked:
        return not_applicable("the driver takes no mutual CHAP secrets")
    conn = first_connection(evidence)
    if conn is None:
        return never_logged_in()
    challenges = [keys for _, keys in _chap_requests(evidence) if "CHAP_C" in keys]
    if not challenges:
        return failed("no CHAP_I/CHAP_C of the initiator's", *quote(conn.pdus))
    ours = [
        dict(seen.text()).get("CHAP_C")
        for seen in conn.sent()
        if isinstance(seen.pdu, LoginResponse)
    ]
    theirs = challenges[0]["CHAP_C"]
    try:
        length = len(decode_binary(theirs))
    except TextError:
        return failed(f"CHAP_C={theirs[:40]!r} is no binary value", *quote(conn.pdus))
    if theirs in ours:
        return failed("the initiator reflected the target's own challenge", *quote(conn.pdus))
    if length < MIN_MUTUAL_CHALLENGE_LENGTH:
        return failed(f"a {length}-byte challenge (RFC 7143 12.1.3)", *quote(conn.pdus))
    if not conn.logged_in:
        return failed("mutual CHAP login did not complete", *quote(conn.pdus))
    return passed(
        f"CHAP_I={challenges[0].get('CHAP_I')}, a {length}-byte CHAP_C", *quote(conn.pdus)
    )


def bad_target_proof_refused(evidence: Evidence, mutual_asked: bool) -> Outcome:
    """RFC 7143 12.1.3: when the target's CHAP_R is wrong, the initiator ends the login:
    nothing more on that connection."""
    if not mutual_asked:
        return not_applicable("the driver takes no mutual CHAP secrets")
    conn = first_connection(evidence)
    if conn is None:
        return never_logged_in()
    proof_at = next(
        (
            index
            for index, seen in enumerate(conn.pdus)
            if seen.direction == "out" and "CHAP_R" in dict(seen.text())
        ),
        None,
    )
    if proof_at is None:
        return not_applicable("the initiator never asked the target to prove itself")
    after = [seen for seen in conn.pdus[proof_at + 1 :] if seen.direction == "in"]
    if after:
        return failed(
            f"went on after a wrong target CHAP_R: {after[0].name}", *quote(conn.pdus[proof_at:])
        )
    return passed("closed the connection after a wrong target CHAP_R", *quote(conn.pdus[proof_at:]))


def short_challenge(evidence: Evidence, length: int) -> Outcome:
    """RFC 7143 12.1.3 (challenges as long as the secret): whether the initiator answers a
    ``length``-byte challenge is recorded, not judged."""
    conn = first_connection(evidence)
    if conn is None:
        return never_logged_in()
    answered = any("CHAP_R" in keys for _, keys in _chap_requests(evidence))
    if answered:
        return informative(f"answered a {length}-byte CHAP_C", *quote(conn.pdus))
    return informative(f"refused a {length}-byte CHAP_C (sent no CHAP_R)", *quote(conn.pdus))
