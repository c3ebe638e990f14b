"""The NOP and Logout exchanges of the full feature phase (RFC 7143 sections 11.14, 11.15,
11.18, 11.19), for both sides. Text exchanges, with their continuations, are
``iscsicore.fullfeature.text``.

NOP: a NOP-Out with an Initiator Task Tag is a ping that the target answers with a NOP-In
of the same tag, echoing the data and taking a StatSN; a NOP-In with a Target Transfer Tag
is the target's ping, which the initiator echoes with an immediate NOP-Out of that tag
(ITT 0xffffffff), left unanswered. Logout: the target answers a close of the session or
of this connection; recovery is not supported (error recovery level 0).
"""

from __future__ import annotations

from iscsicore.pdu import (
    RESERVED_TAG,
    LogoutReason,
    LogoutRequest,
    LogoutResponse,
    LogoutResponseCode,
    NopIn,
    NopOut,
)

# ---------------------------------------------------------------------------------------
# NOP


def nop_out_ping(itt: int, *, cmd_sn: int, exp_stat_sn: int) -> NopOut:
    """The initiator's ping; the target answers it with a NOP-In of tag ``itt``."""
    return NopOut(immediate=True, itt=itt, ttt=RESERVED_TAG, cmd_sn=cmd_sn, exp_stat_sn=exp_stat_sn)


def nop_out_echo(ping: NopIn, *, cmd_sn: int, exp_stat_sn: int) -> NopOut | None:
    """The answer to a target's NOP-In: an echo of its tag, or None when it asks none."""
    if ping.ttt == RESERVED_TAG:
        return None
    return NopOut(
        immediate=True,
        lun=ping.lun,
        itt=RESERVED_TAG,
        ttt=ping.ttt,
        cmd_sn=cmd_sn,
        exp_stat_sn=exp_stat_sn,
    )


def answers_target_ping(nop: NopOut) -> bool:
    """Whether a NOP-Out is the echo of a target's ping: nothing to answer (and, being
    immediate with no tag of its own, nothing to count in the CmdSN window)."""
    return nop.itt == RESERVED_TAG


def nop_in_reply(
    ping: NopOut, *, stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int, max_data: int
) -> NopIn:
    """The target's answer to an initiator's ping: its tag and as much of its data as
    the initiator may receive (``max_data``, its MaxRecvDataSegmentLength)."""
    return NopIn(
        lun=ping.lun,
        itt=ping.itt,
        ttt=RESERVED_TAG,
        stat_sn=stat_sn,
        exp_cmd_sn=exp_cmd_sn,
        max_cmd_sn=max_cmd_sn,
        data=ping.data[:max_data],
    )


def is_ping_answer(nop: NopIn) -> bool:
    """Whether a NOP-In answers one of the initiator's pings (then it carries a status:
    its StatSN counts)."""
    return nop.itt != RESERVED_TAG


# ---------------------------------------------------------------------------------------
# Logout


def logout_request(
    itt: int,
    *,
    cmd_sn: int,
    exp_stat_sn: int,
    reason: LogoutReason = LogoutReason.CLOSE_SESSION,
    cid: int = 0,
) -> LogoutRequest:
    """The initiator's Logout Request, immediate so that no command window holds it up."""
    return LogoutRequest(
        immediate=True, reason=reason, itt=itt, cid=cid, cmd_sn=cmd_sn, exp_stat_sn=exp_stat_sn
    )


def logout_outcome(request: LogoutRequest, cid: int) -> LogoutResponseCode:
    """The target's answer on connection ``cid``, at error recovery level 0."""
    if request.reason == LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY:
        return LogoutResponseCode.RECOVERY_NOT_SUPPORTED
    if request.reason == LogoutReason.CLOSE_CONNECTION and request.cid != cid:
        return LogoutResponseCode.CID_NOT_FOUND
    return LogoutResponseCode.SUCCESS


def logout_response(
    request: LogoutRequest,
    response: LogoutResponseCode,
    *,
    stat_sn: int,
    exp_cmd_sn: int,
    max_cmd_sn: int,
) -> LogoutResponse:
    """The Logout Response: Time2Wait and Time2Retain 0 (nothing is kept to recover)."""
    return LogoutResponse(
        response=response,
        itt=request.itt,
        stat_sn=stat_sn,
        exp_cmd_sn=exp_cmd_sn,
        max_cmd_sn=max_cmd_sn,
        time2wait=0,
        time2retain=0,
    )
