"""NOP and Logout exchanges (iscsicore.fullfeature.exchanges), both sides, and their PDUs
through the codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.fullfeature.exchanges import (
    answers_target_ping,
    is_ping_answer,
    logout_outcome,
    logout_request,
    logout_response,
    nop_in_reply,
    nop_out_echo,
    nop_out_ping,
)
from iscsicore.pdu import (
    RESERVED_TAG,
    LogoutReason,
    LogoutRequest,
    LogoutResponseCode,
    NopIn,
    NopOut,
    lun_from_number,
)

tags = st.integers(0, RESERVED_TAG - 1)
serials = st.integers(0, 0xFFFFFFFF)


@given(tags, serials, serials, st.binary(max_size=64), st.integers(0, 64))
def test_ping_and_its_answer(
    itt: int, cmd_sn: int, stat_sn: int, payload: bytes, max_data: int
) -> None:
    ping = nop_out_ping(itt, cmd_sn=cmd_sn, exp_stat_sn=stat_sn)
    assert (ping.immediate, ping.itt, ping.ttt, ping.cmd_sn) == (True, itt, RESERVED_TAG, cmd_sn)
    assert not answers_target_ping(ping)
    ping.data = payload
    reply = nop_in_reply(
        ping, stat_sn=stat_sn, exp_cmd_sn=cmd_sn, max_cmd_sn=cmd_sn, max_data=max_data
    )
    assert (reply.itt, reply.ttt, reply.stat_sn) == (itt, RESERVED_TAG, stat_sn)
    assert bytes(reply.data) == payload[:max_data]  # the echo, cut to what the peer takes
    assert is_ping_answer(reply)
    framer = PduFramer(receiving_from="target")
    framer.feed(encode_pdu(reply))
    decoded = framer.next_pdu()
    assert isinstance(decoded, NopIn)
    assert (decoded.itt, decoded.ttt, decoded.stat_sn) == (itt, RESERVED_TAG, stat_sn)
    assert bytes(decoded.data) == payload[:max_data]


def test_the_target_ping_is_echoed_with_its_tag() -> None:
    target_ping = NopIn(lun=lun_from_number(3), itt=RESERVED_TAG, ttt=0x1234, stat_sn=9)
    assert not is_ping_answer(target_ping)  # no status: its StatSN is not acknowledged
    echo = nop_out_echo(target_ping, cmd_sn=5, exp_stat_sn=9)
    assert echo == NopOut(
        immediate=True,
        lun=lun_from_number(3),
        itt=RESERVED_TAG,
        ttt=0x1234,
        cmd_sn=5,
        exp_stat_sn=9,
    )
    assert answers_target_ping(echo)


def test_a_nop_in_that_asks_nothing_gets_no_echo() -> None:
    # The answer to our own ping, or a NOP-In that only opens the window.
    assert nop_out_echo(NopIn(itt=7, ttt=RESERVED_TAG), cmd_sn=0, exp_stat_sn=0) is None
    assert nop_out_echo(NopIn(itt=RESERVED_TAG, ttt=RESERVED_TAG), cmd_sn=0, exp_stat_sn=0) is None


def test_logout_request_is_immediate() -> None:
    request = logout_request(3, cmd_sn=10, exp_stat_sn=20)
    assert request == LogoutRequest(
        immediate=True, reason=LogoutReason.CLOSE_SESSION, itt=3, cid=0, cmd_sn=10, exp_stat_sn=20
    )


@pytest.mark.parametrize(
    ("reason", "cid", "expected"),
    [
        (LogoutReason.CLOSE_SESSION, 9, LogoutResponseCode.SUCCESS),
        (LogoutReason.CLOSE_CONNECTION, 1, LogoutResponseCode.SUCCESS),
        (LogoutReason.CLOSE_CONNECTION, 2, LogoutResponseCode.CID_NOT_FOUND),
        (LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY, 1, LogoutResponseCode.RECOVERY_NOT_SUPPORTED),
    ],
)
def test_logout_outcome_at_error_recovery_level_0(
    reason: LogoutReason, cid: int, expected: LogoutResponseCode
) -> None:
    request = logout_request(4, cmd_sn=0, exp_stat_sn=0, reason=reason, cid=cid)
    assert logout_outcome(request, cid=1) is expected
    response = logout_response(request, expected, stat_sn=5, exp_cmd_sn=6, max_cmd_sn=7)
    assert (response.response, response.itt, response.stat_sn) == (expected, 4, 5)
    assert (response.exp_cmd_sn, response.max_cmd_sn) == (6, 7)
    assert (response.time2wait, response.time2retain) == (0, 0)
