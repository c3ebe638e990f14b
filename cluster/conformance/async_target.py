"""The target side of the async-event suite: an Asynchronous Message at the first command.

A portal whose script carries an `AsyncScript` holds its first session's first SCSI
command (read and recorded, kept in the framer for the stargate) and sends the event
instead of an answer, as a target that wants the initiator gone would (a failback, a
shutdown):

- 1 (logout request) and 4 (negotiation request): the target keeps reading until the
  initiator logs out (or, for 4, sends a Text Request) or the time it gave runs out
  (plus `GRACE`, so that a late answer is seen); an answer hands the connection, the held
  command first, to the stargate; no answer to 1 drops the connection, as RFC 7143 11.9.1
  tells the target to.
- 2 (drop this connection) and 3 (drop all connections): the target closes at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from cluster.conformance.evidence import ConnectionLog, RecordingStream
from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.login import TargetLogin
from iscsicore.pdu import AsyncEvent, AsyncMessage, LogoutRequest, ScsiCommand, TextRequest
from iscsicore.seqnum import sn_add

COMMAND_TIMEOUT = 10.0  # for the initiator's first command after its login
GRACE = 1.0  # beyond the time given: an answer this late is still seen (and judged late)
RECEIVE_SIZE = 65536


@dataclass(frozen=True, slots=True)
class AsyncScript:
    event: AsyncEvent
    parameter2: int = 0  # Time2Wait for events 2 and 3
    parameter3: int = 0  # seconds to log out for 1; Time2Retain for 2 and 3
    # How long the target waits for the answer to events 1 and 4.
    answer_within: float = 0.0


def _answers(event: AsyncEvent) -> tuple[type, ...]:
    if event is AsyncEvent.NEGOTIATION_REQUEST:
        return (TextRequest, LogoutRequest)
    return (LogoutRequest,)


async def _read_until(
    stream: RecordingStream, framer: PduFramer, log: ConnectionLog, wanted: tuple[type, ...]
) -> bool:
    """Read (recording, and keeping the bytes in ``framer``) until the initiator has sent a
    PDU of a ``wanted`` type; False if it closed first."""
    while not any(isinstance(seen.pdu, wanted) for seen in log.received()):
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            return False
        framer.feed(data)
    return True


async def send_async_event(
    stream: RecordingStream,
    framer: PduFramer,
    login: TargetLogin,
    script: AsyncScript,
) -> bool:
    """Play ``script`` on a logged-in connection. True: hand the connection to the
    stargate (the held command and what followed are in ``framer``); False: it is over."""
    log = stream.log
    with trio.move_on_after(COMMAND_TIMEOUT):
        if not await _read_until(stream, framer, log, (ScsiCommand,)):
            return False
    message = AsyncMessage(
        stat_sn=login.stat_sn,
        exp_cmd_sn=login.cmd_sn,  # the held command is not acknowledged
        max_cmd_sn=login.max_cmd_sn,
        async_event=script.event,
        parameter1=0,
        parameter2=script.parameter2,
        parameter3=script.parameter3,
    )
    login.stat_sn = sn_add(login.stat_sn, 1)  # Asynchronous Messages take a StatSN
    params = login.params
    await stream.send_all(
        encode_pdu(message, header_digest=params.header_digest, data_digest=params.data_digest)
    )
    if script.event in (AsyncEvent.DROP_CONNECTION, AsyncEvent.DROP_ALL_CONNECTIONS):
        return False
    answered = False
    with trio.move_on_after(script.answer_within + GRACE):
        answered = await _read_until(stream, framer, log, _answers(AsyncEvent(script.event)))
    return answered or script.event is AsyncEvent.NEGOTIATION_REQUEST
