"""The login phase of one connection: drive `iscsicore.login.TargetLogin` over a stream.

`LoginPolicy` answers the state machine's two questions from the vDisk registry and the
session table: may this initiator log in to this target (and with which CHAP secrets), and
which TSIH does the new session get (reinstating an older session of the same initiator
port). `run_login` moves the PDUs, bounded in time: a client that connects and sends
nothing, or dribbles, is dropped after the login timeout without affecting anyone else.
Failed logins are answered later and later (login_throttle.py), per initiator name and
source address. With discovery CHAP set, SendTargets sessions must authenticate too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import trio

from iscsicore.chap import ChapSecrets
from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.keys import SessionType
from iscsicore.login import (
    Accept,
    Refuse,
    Resolution,
    SessionRequest,
    TargetLogin,
    TargetLoginConfig,
)
from iscsicore.login_phase import LoginEnded, LoginPhaseState, TargetLoginPhase
from iscsicore.pdu import LoginRequest, LoginStatus
from stargate.login_throttle import LoginThrottle
from stargate.session import SessionTable
from stargate.target import ChapCredentials, TargetRegistry

log = logging.getLogger(__name__)

LOGIN_RECEIVE_SIZE = 16384
DEFAULT_LOGIN_TIMEOUT = 15.0
# The most Data-Out bytes per PDU we accept: what we declare as MaxRecvDataSegmentLength.
TARGET_MAX_RECV_DATA_SEGMENT_LENGTH = 262144


def _secrets(credentials: ChapCredentials | None) -> ChapSecrets | None:
    if credentials is None:
        return None
    return ChapSecrets(credentials.user, credentials.secret)


class LoginPolicy:
    """Who may log in to what, and TSIH allocation with session reinstatement."""

    def __init__(
        self,
        registry: TargetRegistry,
        sessions: SessionTable,
        *,
        discovery_chap: ChapCredentials | None = None,
        discovery_mutual_chap: ChapCredentials | None = None,
    ) -> None:
        self.registry = registry
        self.sessions = sessions
        self.throttle = LoginThrottle()
        # Discovery CHAP (tgt's and LIO's discovery_auth): None leaves SendTargets open.
        self.discovery_chap = discovery_chap
        self.discovery_mutual_chap = discovery_mutual_chap

    def resolve(
        self, initiator_name: str, target_name: str | None, session_type: SessionType
    ) -> Resolution:
        if session_type is SessionType.DISCOVERY:
            return Accept(
                chap=_secrets(self.discovery_chap), mutual=_secrets(self.discovery_mutual_chap)
            )
        target = self.registry.get(target_name or "")
        if target is None:
            return Refuse(LoginStatus.NOT_FOUND)
        if not target.admits(initiator_name):
            target.stats.login_failures += 1
            return Refuse(LoginStatus.AUTHORIZATION_FAILURE)
        return Accept(chap=_secrets(target.chap), mutual=_secrets(target.mutual_chap))

    def allocate_tsih(self, request: SessionRequest) -> int | Refuse:
        if request.tsih != 0:
            # Adding a connection to a session: MaxConnections is 1 here.
            existing = self.sessions.get(request.tsih)
            if existing is None:
                return Refuse(LoginStatus.SESSION_DOES_NOT_EXIST)
            return Refuse(LoginStatus.TOO_MANY_CONNECTIONS)
        if request.session_type is SessionType.NORMAL and (
            request.target_name is None or self.registry.get(request.target_name) is None
        ):
            return Refuse(LoginStatus.TARGET_REMOVED)  # removed while logging in
        old = self.sessions.find(request.initiator_name, request.isid, request.target_name)
        if old is not None:
            # Session reinstatement (RFC 7143 6.3.5): same initiator port, TSIH 0.
            log.info("reinstating session %#x of %s", old.tsih, request.initiator_name)
            self.sessions.remove(old)
            old.close("reinstated by a new login of the same initiator port")
        return self.sessions.allocate_tsih()

    def login_config(self, *, cmd_window: int | None = None) -> TargetLoginConfig:
        """The login machine's config; ``cmd_window``: the window granted at login (None:
        the machine's default)."""
        config = TargetLoginConfig(
            portal_group_tag=self.registry.portal_group.tag,
            resolve=self.resolve,
            allocate_tsih=self.allocate_tsih,
            max_recv_data_segment_length=TARGET_MAX_RECV_DATA_SEGMENT_LENGTH,
        )
        return config if cmd_window is None else replace(config, cmd_window=cmd_window)


@dataclass(slots=True)
class LoginOutcome:
    login: TargetLogin
    reason: str = ""
    # Ended by bytes that are no login: a framing error, or another PDU than a Login Request.
    protocol_error: bool = False

    @property
    def complete(self) -> bool:
        return self.login.complete


def peer_host(stream: trio.abc.Stream) -> str:
    """The initiator's address ("" when the stream is not a socket)."""
    if not isinstance(stream, trio.SocketStream):
        return ""
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return ""
    return str(peer[0]) if isinstance(peer, tuple) else ""


async def run_login(
    stream: trio.abc.Stream,
    framer: PduFramer,
    login: TargetLogin,
    *,
    timeout: float = DEFAULT_LOGIN_TIMEOUT,
    throttle: LoginThrottle | None = None,
    peer: str = "",
) -> LoginOutcome:
    """Answer Login Requests until the login completes, fails or times out.

    On success the framer is switched to the negotiated digests and segment length; bytes
    the initiator already sent after the last login PDU stay buffered in it. With
    ``throttle``, answers to an initiator name or ``peer`` address that failed recently wait.
    """
    outcome = LoginOutcome(login)
    phase = TargetLoginPhase(login, framer)
    with trio.move_on_after(timeout) as scope:
        while True:
            event = phase.next_event()
            if event is LoginPhaseState.NEED_DATA:
                phase.receive_data(await stream.receive_some(LOGIN_RECEIVE_SIZE))
            elif isinstance(event, LoginRequest):
                response = login.receive(event)
                if throttle is not None:
                    await throttle.hold(login.chap_failed, login.initiator_name, peer)
                await stream.send_all(encode_pdu(response))
            elif isinstance(event, LoginEnded):
                outcome.reason = event.reason
                outcome.protocol_error = event.protocol_error
                return outcome
            else:
                break
    if scope.cancelled_caught:
        outcome.reason = f"login not finished within {timeout:g} s"
        return outcome
    if login.complete:
        if throttle is not None:
            throttle.succeeded(login.initiator_name)
    elif login.failed:
        outcome.reason = f"login failed ({login.failure_status}): {login.failure_message}"
    else:
        outcome.reason = "redirected"
    return outcome
