"""The target side of a connection's login phase, sans-IO: bytes in, Login Requests out,
and the rules every target applies around `TargetLogin` (the stargate's and the
redirector's, which drive it from their own trio loops):

- only Login Requests may arrive before the login is finished; anything else, or bytes
  that do not frame, ends the connection (a protocol error, RFC 7143 section 6.1);
- a close before the login is finished ends it;
- once complete, the framer switches to the negotiated digests and to the segment length
  the target declared; bytes the initiator sent after its last Login Request stay in it.

    phase = TargetLoginPhase(login, framer)
    while True:
        event = phase.next_event()
        if event is LoginPhaseState.NEED_DATA:
            phase.receive_data(await stream.receive_some(size))
        elif isinstance(event, LoginRequest):
            await stream.send_all(encode_pdu(login.receive(event)))
        else:
            break  # FINISHED, or LoginEnded(reason, protocol_error, pdu)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from iscsicore.errors import IscsiProtocolError
from iscsicore.framing import PduFramer
from iscsicore.login import TargetLogin
from iscsicore.pdu import LoginRequest, Pdu


class LoginPhaseState(Enum):
    NEED_DATA = "need data"  # call `receive_data` with what the stream gives next
    FINISHED = "finished"  # complete, failed or redirected: see the `TargetLogin`


@dataclass(frozen=True, slots=True)
class LoginEnded:
    """The connection ends before the login finished."""

    reason: str
    # Bytes that are no login: a framing error, or a PDU other than a Login Request
    # (``pdu``, which the caller may Reject before closing).
    protocol_error: bool = False
    pdu: Pdu | None = None


LoginPhaseEvent = LoginRequest | LoginPhaseState | LoginEnded


class TargetLoginPhase:
    def __init__(self, login: TargetLogin, framer: PduFramer) -> None:
        self.login = login
        self.framer = framer
        self._closed = False

    def receive_data(self, data: bytes | bytearray) -> None:
        """What the stream gave; ``b""`` when the initiator closed."""
        if data:
            self.framer.feed(data)
        else:
            self._closed = True

    def next_event(self) -> LoginPhaseEvent:
        """The next Login Request to answer (with ``login.receive``), or what to do."""
        if self.login.finished:
            self._settle()
            return LoginPhaseState.FINISHED
        try:
            pdu = self.framer.next_pdu()
        except IscsiProtocolError as error:
            return LoginEnded(f"protocol error during login: {error}", protocol_error=True)
        if pdu is None:
            if self._closed:
                return LoginEnded("closed during login")
            return LoginPhaseState.NEED_DATA
        if not isinstance(pdu, LoginRequest):
            return LoginEnded(f"{type(pdu).__name__} during login", protocol_error=True, pdu=pdu)
        return pdu

    def _settle(self) -> None:
        if self.login.complete:
            params = self.login.params
            self.framer.header_digest = params.header_digest
            self.framer.data_digest = params.data_digest
            self.framer.max_recv_data_segment_length = (
                self.login.config.max_recv_data_segment_length
            )
