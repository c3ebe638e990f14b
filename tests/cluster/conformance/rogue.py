"""A deliberately misbehaving initiator for testing the conformance kit's judges.

It speaks raw PDUs (iscsicore's `InitiatorLogin` and encoders) and breaks exactly one
behaviour, its `Flaw`; with `Flaw.NONE` it behaves. It is a kit driver, so the kit runs
it like any other initiator and must fail the behaviour it breaks.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from enum import Enum
from functools import partial

import trio

from cluster.conformance.drivers import DriverJob, DriverRun
from iscsicore.chap import ChapSecrets
from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.keys import decode_text, encode_text
from iscsicore.login import InitiatorLogin, LoginDone, LoginFailed, LoginProposals, LoginRedirect
from iscsicore.pdu import (
    R2T,
    RESERVED_TAG,
    AsyncEvent,
    AsyncMessage,
    DataOut,
    LoginRequest,
    LoginResponse,
    LoginStage,
    LoginStatus,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Pdu,
    ScsiCommand,
    TextRequest,
    TextResponse,
)
from iscsicore.portal import Portal
from iscsicore.seqnum import SERIAL_MASK, sn_add, sn_gt

INITIATOR_NAME = "iqn.2026-12.test:rogue"
RANDOM_ISID = (0b10 << 46) | 0x1234_5678  # type 10b: random
RESERVED_ISID = (0b11 << 46) | 0x1234_5678
MAX_HOPS = 4  # redirects a well-behaved rogue follows
STORM_PAUSE = 0.01  # between the attempts of a flawed rogue that never gives up
MAX_ATTEMPTS = 500
LATE_ANSWER = 2.5  # seconds: later than the kit's NEGOTIATION_WITHIN
RECEIVE_TIMEOUT = 5.0
BLOCK = 512
# Digests offered as libiscsi does: None first, so CRC32C only where the target insists.
OFFERS = LoginProposals(header_digest=("None", "CRC32C"), data_digest=("None", "CRC32C"))


class Flaw(Enum):
    NONE = "none"
    RESERVED_ISID = "reserved ISID type"
    STAGE_JUMP = "changes stage after a T=0 answer"
    RENEGOTIATE = "sends its keys again after a T=0 answer"
    IMMEDIATE_DATA_ANYWAY = "sends immediate data although ImmediateData=No"
    IGNORE_NOP_IN = "leaves NOP-In pings unanswered"
    IGNORE_WINDOW = "sends commands whatever MaxCmdSN says"
    MISSES_DUPLICATE = "takes a key the target answered twice"
    WRONG_DIGEST = "sends no header digest although CRC32C was agreed"
    DUPLICATE_KEY = "offers MaxBurstLength twice in its operational keys"
    STALE_EXP_STAT_SN = "ExpStatSN stuck at 1"
    OVERSIZED_SEGMENT = "8 KiB of immediate data whatever the target declared"
    RETRY_STORM = "retries a refused login at once, again and again"
    FOLLOW_FOREVER = "follows every redirect"
    IGNORE_PERMANENT = "does not follow 0x0102"
    RECONNECT_TO_REDIRECTED = "reconnects to the redirected portal, not the original"
    NO_CHAP_AFTER_REDIRECT = "leaves its CHAP secrets behind at a redirect"
    WRONG_CHAP_NAME = "CHAP_N is not the configured name"
    ACCEPT_BAD_PROOF = "goes on after a wrong target CHAP_R"
    IGNORE_LOGOUT_REQUEST = "ignores a logout request (AsyncEvent 1)"
    IGNORE_TIME2WAIT = "reconnects at once after a drop (AsyncEvent 2, 3)"
    RECONNECT_STORM = "reconnects at once whenever its session is lost"
    LATE_NEGOTIATION = "answers a negotiation request (AsyncEvent 4) after 2.5 s"


class _Closed(Exception):
    pass


class Lost(Enum):
    SESSION = "the connection closed after the login"


def _write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0).ljust(16, b"\0")


@dataclass(frozen=True, slots=True)
class RogueDriver:
    flaw: Flaw
    name: str = "rogue"
    chap: bool = True
    mutual_chap: bool = True

    def unavailable(self) -> str | None:
        return None

    async def run(self, job: DriverJob, deadline: float) -> DriverRun:
        started = time.monotonic()
        status: int | None = None
        with trio.move_on_at(deadline):
            status = await self._run(job)
        return DriverRun(status, self.flaw.value, time.monotonic() - started)

    async def _run(self, job: DriverJob) -> int:
        portal, hops, reconnected = job.portal, 0, False
        for _ in range(MAX_ATTEMPTS):
            outcome = await self._connection(portal, job)
            if outcome is Lost.SESSION and self.flaw is Flaw.RECONNECT_STORM:
                portal = job.portal
            elif outcome is Lost.SESSION and not reconnected:
                # Once, from the original portal (the redirector), as a session would.
                reconnected = True
                if self.flaw is not Flaw.RECONNECT_TO_REDIRECTED:
                    portal = job.portal
            elif isinstance(outcome, LoginRedirect):
                if outcome.permanent and self.flaw is Flaw.IGNORE_PERMANENT:
                    return 1
                hops += 1
                if hops > MAX_HOPS and self.flaw is not Flaw.FOLLOW_FOREVER:
                    return 1
                portal = outcome.address
                if self.flaw is Flaw.NO_CHAP_AFTER_REDIRECT:
                    job = replace(job, chap=None, mutual=None)
                await trio.sleep(STORM_PAUSE if self.flaw is Flaw.FOLLOW_FOREVER else 0)
            elif (
                isinstance(outcome, LoginFailed)
                and outcome.raw_status
                and self.flaw is Flaw.RETRY_STORM
            ):
                await trio.sleep(STORM_PAUSE)
            else:
                return 0 if isinstance(outcome, LoginDone) else 1
        return 1

    async def _connection(
        self, portal: Portal, job: DriverJob
    ) -> LoginDone | LoginRedirect | LoginFailed | Lost | None:
        stream = await trio.open_tcp_stream(portal.connect_host, portal.port)
        framer = PduFramer(receiving_from="target", max_recv_data_segment_length=1 << 24)
        outcome: LoginDone | LoginRedirect | LoginFailed | Lost | None = None
        try:
            outcome = await self._login(stream, framer, job)
            if isinstance(outcome, LoginDone):
                await self._io(stream, framer, outcome)
        except (_Closed, trio.BrokenResourceError, trio.TooSlowError):
            outcome = Lost.SESSION if isinstance(outcome, LoginDone) else None
        finally:
            await trio.aclose_forcefully(stream)
        return outcome

    async def _login(
        self, stream: trio.SocketStream, framer: PduFramer, job: DriverJob
    ) -> LoginDone | LoginRedirect | LoginFailed:
        chap = job.chap
        if chap is not None and self.flaw is Flaw.WRONG_CHAP_NAME:
            chap = ChapSecrets("not-" + chap.username, chap.secret)
        isid = RESERVED_ISID if self.flaw is Flaw.RESERVED_ISID else RANDOM_ISID
        login = InitiatorLogin(
            INITIATOR_NAME, job.target, isid, chap=chap, mutual_chap=job.mutual, proposals=OFFERS
        )
        request = login.start()
        first_text: dict[int, bytes] = {}
        last: LoginResponse | None = None
        while True:
            first_text.setdefault(request.csg, bytes(request.data))
            request = self._tweak(request, last, first_text, chap is not None)
            await stream.send_all(encode_pdu(request))
            response = await _receive(stream, framer)
            if not isinstance(response, LoginResponse):
                raise _Closed
            last = response
            if self.flaw is Flaw.MISSES_DUPLICATE and response.data:
                pairs = decode_text(bytes(response.data), terminated=False)
                response = replace(response, data=encode_text(dict(pairs).items()))
            outcome = login.receive(response)
            if isinstance(outcome, LoginRequest):
                request = outcome
                continue
            if (
                isinstance(outcome, LoginFailed)
                and self.flaw is Flaw.ACCEPT_BAD_PROOF
                and outcome.status is LoginStatus.AUTHENTICATION_FAILURE
                and not outcome.raw_status
            ):
                # Detected the wrong proof, and asks to go on anyway.
                await stream.send_all(encode_pdu(replace(request, data=b"")))
            return outcome

    def _tweak(
        self,
        request: LoginRequest,
        last: LoginResponse | None,
        first_text: dict[int, bytes],
        chap: bool,
    ) -> LoginRequest:
        held = last is not None and not last.transit and last.status_class == 0
        if self.flaw is Flaw.STALE_EXP_STAT_SN:
            return replace(request, exp_stat_sn=1)
        if self.flaw is Flaw.STAGE_JUMP and held and not chap:
            return replace(
                request, csg=LoginStage.OPERATIONAL, nsg=LoginStage.FULL_FEATURE, transit=True
            )
        if (
            self.flaw is Flaw.DUPLICATE_KEY
            and request.csg == LoginStage.OPERATIONAL
            and request.data == first_text[request.csg]
            and b"MaxBurstLength=" in request.data
        ):
            return replace(request, data=bytes(request.data) + b"MaxBurstLength=262144\0")
        if self.flaw is Flaw.RENEGOTIATE and held and not request.data:
            return replace(request, data=first_text[request.csg])
        return request

    async def _io(self, stream: trio.SocketStream, framer: PduFramer, done: LoginDone) -> None:
        """One WRITE(10), once the command window is open (NOP-In pings answered meanwhile):
        its data as immediate data, or in answer to R2Ts with ImmediateData=No."""
        params = done.params
        send = partial(
            _send,
            stream,
            header_digest=params.header_digest and self.flaw is not Flaw.WRONG_DIGEST,
            data_digest=params.data_digest,
        )
        exp_stat_sn = (done.stat_sn + 1) & SERIAL_MASK
        max_cmd_sn = done.max_cmd_sn
        while sn_gt(done.exp_cmd_sn, max_cmd_sn) and self.flaw is not Flaw.IGNORE_WINDOW:
            pdu = await _receive(stream, framer)
            if isinstance(pdu, NopIn):
                max_cmd_sn = pdu.max_cmd_sn
                await self._answer_ping(send, pdu, done.exp_cmd_sn, exp_stat_sn)
        limit = done.params.target_max_recv_data_segment_length
        blocks = 16 if self.flaw is Flaw.OVERSIZED_SEGMENT else max(1, min(8, limit // BLOCK))
        data = bytes(blocks * BLOCK)
        immediate = params.immediate_data or self.flaw is Flaw.IMMEDIATE_DATA_ANYWAY
        command = ScsiCommand(
            write=True,
            itt=1,
            expected_data_transfer_length=len(data),
            cmd_sn=done.exp_cmd_sn,
            exp_stat_sn=1 if self.flaw is Flaw.STALE_EXP_STAT_SN else exp_stat_sn,
            cdb=_write10(0, blocks),
            data=data if immediate else b"",
        )
        await send(command)
        # Until the command's response (and the Logout Response if the target asked for a
        # logout): R2Ts, pings and Asynchronous Messages answered on the way.
        next_cmd_sn = sn_add(done.exp_cmd_sn, 1)
        logging_out = False
        while True:
            pdu = await _receive(stream, framer)
            if isinstance(pdu, R2T):
                end = pdu.buffer_offset + pdu.desired_data_transfer_length
                await send(
                    DataOut(
                        final=True,
                        itt=command.itt,
                        ttt=pdu.ttt,
                        exp_stat_sn=exp_stat_sn,
                        buffer_offset=pdu.buffer_offset,
                        data=data[pdu.buffer_offset : end],
                    )
                )
            elif isinstance(pdu, NopIn):
                await self._answer_ping(send, pdu, next_cmd_sn, exp_stat_sn)
            elif isinstance(pdu, AsyncMessage):
                exp_stat_sn = sn_add(pdu.stat_sn, 1)
                logging_out |= await self._answer_async(send, pdu, next_cmd_sn, exp_stat_sn)
            elif isinstance(pdu, LogoutResponse):
                raise _Closed
            elif not isinstance(pdu, TextResponse) and not logging_out:
                return

    async def _answer_async(
        self,
        send: Callable[[Pdu], Awaitable[None]],
        message: AsyncMessage,
        cmd_sn: int,
        exp_stat_sn: int,
    ) -> bool:
        """Logs out (event 1), asks again with an empty Text Request (4), or waits Time2Wait
        for the drop (2, 3). True if it logged out."""
        event = message.async_event
        if event == AsyncEvent.LOGOUT_REQUEST and self.flaw is not Flaw.IGNORE_LOGOUT_REQUEST:
            await send(LogoutRequest(immediate=True, itt=2, cmd_sn=cmd_sn, exp_stat_sn=exp_stat_sn))
            return True
        if event == AsyncEvent.NEGOTIATION_REQUEST:
            if self.flaw is Flaw.LATE_NEGOTIATION:
                await trio.sleep(LATE_ANSWER)
            await send(TextRequest(immediate=True, itt=3, cmd_sn=cmd_sn, exp_stat_sn=exp_stat_sn))
        elif event in (AsyncEvent.DROP_CONNECTION, AsyncEvent.DROP_ALL_CONNECTIONS):
            if self.flaw is not Flaw.IGNORE_TIME2WAIT:
                await trio.sleep(message.parameter2)
            raise _Closed
        return False

    async def _answer_ping(
        self, send: Callable[[Pdu], Awaitable[None]], ping: NopIn, cmd_sn: int, exp_stat_sn: int
    ) -> None:
        if ping.ttt == RESERVED_TAG or self.flaw is Flaw.IGNORE_NOP_IN:
            return
        answer = NopOut(
            immediate=True, lun=ping.lun, ttt=ping.ttt, cmd_sn=cmd_sn, exp_stat_sn=exp_stat_sn
        )
        await send(answer)


async def _send(
    stream: trio.SocketStream, pdu: Pdu, *, header_digest: bool, data_digest: bool
) -> None:
    await stream.send_all(encode_pdu(pdu, header_digest=header_digest, data_digest=data_digest))


async def _receive(stream: trio.SocketStream, framer: PduFramer) -> object:
    with trio.fail_after(RECEIVE_TIMEOUT):
        while True:
            pdu = framer.next_pdu()
            if pdu is not None:
                return pdu
            data = await stream.receive_some(65536)
            if not data:
                raise _Closed
            framer.feed(data)
