"""Judges of the full feature suite."""

from __future__ import annotations

from cluster.conformance.evidence import Evidence
from cluster.conformance.login_checks import first_connection, never_logged_in, quote
from cluster.conformance.verdict import Outcome, failed, not_applicable, passed
from iscsicore.pdu import RESERVED_TAG, NopIn, NopOut, ScsiCommand


def ping_answered(evidence: Evidence, ttt: int) -> Outcome:
    """RFC 7143 11.18-11.19: a NOP-In with a valid TTT is answered by a NOP-Out with that
    TTT, ITT 0xffffffff and the I bit set (its CmdSN not advanced)."""
    conn = first_connection(evidence)
    if conn is None:
        return never_logged_in()
    after = conn.full_feature()
    if not after:
        return not_applicable("the initiator sent nothing after its login")
    answers = [seen for seen in after if isinstance(seen.pdu, NopOut) and seen.pdu.ttt == ttt]
    if not answers:
        others = [seen for seen in after if isinstance(seen.pdu, NopOut)]
        return failed(
            f"no NOP-Out with TTT 0x{ttt:08x} among {len(after)} PDUs after the ping",
            *quote(others or after, 4),
        )
    answer = answers[0]
    pdu = answer.pdu
    assert isinstance(pdu, NopOut)
    if pdu.itt != RESERVED_TAG or not pdu.immediate:
        return failed(
            f"answered with ITT 0x{pdu.itt:08x}, I bit {int(pdu.immediate)}", answer.summary()
        )
    ping = next(seen for seen in conn.sent() if isinstance(seen.pdu, NopIn))
    delay = answer.at - ping.at
    return passed(f"answered the ping in {delay * 1000:.1f} ms", ping.summary(), answer.summary())


def closed_window_honoured(evidence: Evidence) -> Outcome:
    """RFC 7143 4.2.2.1: with MaxCmdSN = ExpCmdSN - 1 the window is closed; no command
    (other than immediate ones) goes out until a NOP-In opens it."""
    conn = first_connection(evidence)
    if conn is None:
        return never_logged_in()
    opened = next((seen for seen in conn.sent() if isinstance(seen.pdu, NopIn)), None)
    commands = [
        seen
        for seen in conn.full_feature()
        if isinstance(seen.pdu, ScsiCommand) and not seen.pdu.immediate
    ]
    if not commands:
        return not_applicable("the initiator sent no command after its login")
    first = commands[0]
    if opened is None or first.at < opened.at:
        return failed(
            "sent a command while the window was closed",
            *quote([seen for seen in conn.pdus if seen in commands[:1] or seen is opened]),
        )
    waited = (first.at - opened.at) * 1000
    return passed(
        f"waited for the window: first command {waited:.1f} ms after it opened",
        opened.summary(),
        first.summary(),
    )
