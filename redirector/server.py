"""The redirector's iSCSI portal: every login is answered, none is served.

A Normal session login for a vDisk gets status 0x0101 (target moved temporarily) with
``TargetAddress=<advertised CVM address>:<port>,<tpgt>`` of the stargate the placement policy
picks; 0x0301 (service unavailable) when no stargate is healthy; 0x0203 for a vDisk the
cluster does not have. A Discovery session is answered here: SendTargets lists every vDisk
with the redirector's own advertised portal, so that initiators keep logging in through it.

A client that sends garbage gets a login failure or a Reject and is dropped; one that sends
nothing is dropped after the login timeout; neither holds up anybody else's login.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from faults.channel import hold_unanswered
from faults.injector import FaultInjector
from faults.model import DropMode
from iscsicore.cmdsn import Arrival, CmdSNWindow
from iscsicore.errors import IscsiProtocolError
from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.fullfeature.exchanges import (
    answers_target_ping,
    logout_outcome,
    logout_response,
    nop_in_reply,
)
from iscsicore.fullfeature.numbering import StatSN
from iscsicore.fullfeature.text import TargetRecord, TextResponder
from iscsicore.keys import SessionType, TextError, decode_text
from iscsicore.login import (
    Accept,
    Redirect,
    Refuse,
    Resolution,
    SessionRequest,
    TargetLogin,
    TargetLoginConfig,
)
from iscsicore.login_phase import LoginEnded, LoginPhaseState, TargetLoginPhase
from iscsicore.pdu import (
    LoginRequest,
    LoginStatus,
    LogoutRequest,
    LogoutResponseCode,
    NopOut,
    Pdu,
    Reject,
    RejectReason,
    TextRequest,
)
from iscsicore.portal import Portal
from iscsicore.wire import encode_bhs
from redirector.config import RedirectorConfig
from redirector.faults import FaultedLogin, RedirectorFaults
from redirector.health import HealthChecker
from redirector.log import log_redirect
from redirector.policy import PlacementPolicy

log = logging.getLogger(__name__)

RECEIVE_SIZE = 16384
MAX_RECV_DATA_SEGMENT_LENGTH = 8192  # discovery answers are small
DISCOVERY_IDLE_TIMEOUT = 60.0  # a discovery session with nothing to say is dropped
LINGER_TIMEOUT = 5.0  # after a redirect or refusal, for the initiator to hang up
_TSIH_LIMIT = 0xFFFF


@dataclass
class RedirectorStats:
    redirects: dict[str, int] = field(default_factory=dict)  # node key -> count
    refused: int = 0
    discovery_sessions: int = 0
    bad_clients: int = 0


class RedirectorServer:
    def __init__(
        self,
        config: RedirectorConfig,
        policy: PlacementPolicy,
        health: HealthChecker,
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = trio.current_time,
        injector: FaultInjector | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.health = health
        self.logger = logger
        self.clock = clock
        self.stats = RedirectorStats()
        self.faults = RedirectorFaults(config.node.redirector_portal, injector)  # login faults
        self.port: int | None = None
        self._next_tsih = 0

    def listen_portal(self) -> Portal:
        """Where this portal listens (its own address, not an advertised one)."""
        node = self.config.node
        return Portal(node.redirector_address, node.redirector_port)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        portal = self.listen_portal()
        listeners = await trio.open_tcp_listeners(portal.port, host=portal.host)
        self.port = listeners[0].socket.getsockname()[1]
        log.info("%s listening on %s:%s", type(self).__name__, portal.host, self.port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self.handle_connection, listeners)
            task_status.started(self.port)

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        try:
            await _Connection(self, stream).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away: nothing to tell anyone
        finally:
            await trio.aclose_forcefully(stream)

    # -- decisions ------------------------------------------------------------------------

    async def prepare(self, target_name: str) -> None:
        """Before the (synchronous) login state machine asks where ``target_name`` goes:
        make the health view fresh enough that the answer is a stargate that listens."""
        await self.health.wait_local_verdict()
        if self.health.started_at is not None and not self.policy.healthy_nodes():
            await self.health.wait_first_verdicts(self.config.health.nop_timeout)
        vdisk_id = self.config.vdisk_targets().get(target_name)
        if vdisk_id is None:
            return
        home = self.config.home_of(vdisk_id)
        await self.confirm_choice(lambda: self.policy.choose(vdisk_id, self.clock(), home))

    async def confirm_choice(self, choose: Callable[[], str | None]) -> None:
        """A crashed stargate refuses connections: learn it now rather than at the next
        ping, choosing again until the choice answers (the choice is remembered by the
        policy, so `resolve` makes the same one)."""
        for _ in self.config.spec.nodes:
            chosen = choose()
            if chosen is None or await self.health.recheck(chosen):
                return

    def resolve(
        self,
        initiator_name: str,
        target_name: str | None,
        session_type: SessionType,
        on_fault: Callable[[FaultedLogin], None] | None = None,
    ) -> Resolution:
        """Where a login goes; a fault that fires on it is passed to ``on_fault`` (the
        connection applies its delay or drop)."""
        if session_type is SessionType.DISCOVERY:
            faulted = self.faults.decide(None)
            if faulted is not None and on_fault is not None:
                on_fault(faulted)
                return faulted.resolution or Accept()
            self.stats.discovery_sessions += 1
            return Accept()
        vdisk_id = self.config.vdisk_targets().get(target_name or "")
        if vdisk_id is None:
            return Refuse(LoginStatus.NOT_FOUND)
        faulted = self.faults.decide(vdisk_id)
        if faulted is not None and on_fault is not None:
            on_fault(faulted)
            if faulted.resolution is not None:
                return faulted.resolution
        chosen = self.policy.choose(vdisk_id, self.clock(), self.config.home_of(vdisk_id))
        if chosen is None:
            self.stats.refused += 1
            self.logger.warning("No healthy portal for target %s", target_name)
            return Refuse(LoginStatus.SERVICE_UNAVAILABLE)
        node = self.config.node_of(chosen)
        assert target_name is not None
        log_redirect(
            self.logger, target_name, node.cvm_advertised_address, node.cvm_advertised_port
        )
        self.stats.redirects[chosen] = self.stats.redirects.get(chosen, 0) + 1
        return Redirect.to(
            node.cvm_advertised_address, node.cvm_advertised_port, self.config.portal_group_tag
        )

    def allocate_tsih(self, request: SessionRequest) -> int | Refuse:
        # Only discovery sessions complete here; TSIHs need to be unique among live ones.
        if request.tsih != 0:
            return Refuse(LoginStatus.SESSION_DOES_NOT_EXIST)
        self._next_tsih = self._next_tsih % _TSIH_LIMIT + 1
        return self._next_tsih

    def discovery_targets(self, initiator_name: str) -> list[TargetRecord]:
        """What SendTargets lists to ``initiator_name``: here every vDisk, at this portal."""
        node = self.config.node
        address = Portal(
            node.redirector_advertised_address,
            node.redirector_advertised_port,
            self.config.portal_group_tag,
        ).format()
        return [TargetRecord(name, (address,)) for name in sorted(self.config.vdisk_targets())]

    def login_config(
        self, on_fault: Callable[[FaultedLogin], None] | None = None
    ) -> TargetLoginConfig:
        def resolve(
            initiator_name: str, target_name: str | None, session_type: SessionType
        ) -> Resolution:
            return self.resolve(initiator_name, target_name, session_type, on_fault)

        return TargetLoginConfig(
            portal_group_tag=self.config.portal_group_tag,
            resolve=resolve,
            allocate_tsih=self.allocate_tsih,
            max_recv_data_segment_length=MAX_RECV_DATA_SEGMENT_LENGTH,
        )


def _normal_login_target(pdu: LoginRequest) -> str | None:
    """The TargetName of a Normal session's first login PDU, when it says so in full."""
    if pdu.cont:
        return None
    try:
        pairs = dict(decode_text(bytes(pdu.data)))
    except (TextError, ValueError):
        return None
    if pairs.get("SessionType", "Normal") != "Normal":
        return None
    return pairs.get("TargetName")


class _Connection:
    """One client connection: login (redirect, refuse or discovery), then discovery PDUs."""

    def __init__(self, server: RedirectorServer, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        self.framer = PduFramer(receiving_from="initiator")
        self.fault: FaultedLogin | None = None  # the fault that fired on this login
        self.login = TargetLogin(server.login_config(self._on_fault))
        self._prepared = False
        self._login_scope = trio.CancelScope()

    def _on_fault(self, faulted: FaultedLogin) -> None:
        self.fault = faulted

    async def run(self) -> None:
        timeout = self.server.config.timers.login_timeout
        with trio.move_on_after(timeout) as self._login_scope:
            if not await self._login():
                return
        if self.login.redirected or self.login.failed:
            await self._linger()
        elif self.login.complete:
            await self._discovery_session()

    async def _linger(self) -> None:
        """Let the initiator close after a redirect or a refusal, as tgtd does: libiscsi
        takes a close that races its reading of the answer for a lost connection."""
        with trio.move_on_after(LINGER_TIMEOUT):
            while await self.stream.receive_some(RECEIVE_SIZE):
                pass

    async def _login(self) -> bool:
        """Answer Login Requests; False when the connection is to be dropped now."""
        phase = TargetLoginPhase(self.login, self.framer)
        while True:
            event = phase.next_event()
            if event is LoginPhaseState.NEED_DATA:
                phase.receive_data(await self.stream.receive_some(RECEIVE_SIZE))
            elif isinstance(event, LoginRequest):
                if not self._prepared:
                    target = _normal_login_target(event)
                    if target is not None:
                        self._prepared = True
                        await self.server.prepare(target)
                response = self.login.receive(event)
                if self.fault is not None and not await self._apply_fault(self.fault):
                    return False
                await self.stream.send_all(encode_pdu(response))
            elif isinstance(event, LoginEnded):
                if event.protocol_error:
                    self.server.stats.bad_clients += 1
                    log.info("dropping a client: %s", event.reason)
                if event.pdu is not None:
                    await self._reject(event.pdu, RejectReason.PROTOCOL_ERROR)
                return False
            else:
                return True

    async def _apply_fault(self, faulted: FaultedLogin) -> bool:
        """Hold the response back (slow login) or drop the connection; False: dropped.
        Neither counts against the login timeout, which is for silent initiators."""
        self.fault = None  # once per login
        faults = self.server.faults.injector
        if faulted.drop is DropMode.BLACKHOLE:
            self._login_scope.deadline = math.inf
            await hold_unanswered(self.stream, lambda: faults.still_on(faulted.fault))
            return False
        if faulted.drop is DropMode.RESET and isinstance(self.stream, trio.SocketStream):
            # Linger 0: the close that follows sends RST instead of FIN.
            self.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if faulted.drop is not None:
            return False
        if faulted.delay > 0:
            self._login_scope.deadline += faulted.delay
            await trio.sleep(faulted.delay)
        return True

    async def _reject(self, pdu: Pdu, reason: RejectReason) -> None:
        await self.stream.send_all(
            encode_pdu(Reject(reason=reason, stat_sn=self.login.stat_sn, data=encode_bhs(pdu)))
        )

    async def _discovery_session(self) -> None:
        session = _DiscoverySession(self.server, self.login)
        while True:
            # PDUs first: some may have come in with the last login PDU.
            while True:
                try:
                    pdu = self.framer.next_pdu()
                except IscsiProtocolError as error:
                    if error.fatal:
                        return
                    await self.stream.send_all(self._encode(session.reject_header(error)))
                    continue
                if pdu is None:
                    break
                replies, done = session.receive(pdu)
                if replies:
                    await self.stream.send_all(b"".join(self._encode(reply) for reply in replies))
                if done:
                    return
            with trio.move_on_after(DISCOVERY_IDLE_TIMEOUT) as idle:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            if idle.cancelled_caught or not data:
                return
            self.framer.feed(data)

    def _encode(self, pdu: Pdu) -> bytes:
        params = self.login.params
        return encode_pdu(pdu, header_digest=params.header_digest, data_digest=params.data_digest)


class _DiscoverySession:
    """Full feature phase of a discovery session, sans-IO, on the rules the target and
    the initiator share (``iscsicore.fullfeature``, ``iscsicore.cmdsn``): Text
    (SendTargets), NOP-Out and Logout are answered in CmdSN order; anything else is
    rejected."""

    def __init__(self, server: RedirectorServer, login: TargetLogin) -> None:
        self.stat_sn = StatSN(login.stat_sn)
        self.window: CmdSNWindow[NopOut | TextRequest | LogoutRequest] = CmdSNWindow(
            login.cmd_sn, login.max_cmd_sn
        )
        self.share = login.config.cmd_window  # a fixed share: nothing else competes here
        self.cid = login.cid
        self.max_send_length = login.params.initiator_max_recv_data_segment_length
        self.responder = TextResponder(
            session_type=SessionType.DISCOVERY,
            targets=lambda: server.discovery_targets(login.initiator_name),
            max_send_length=self.max_send_length,
        )

    def receive(self, pdu: Pdu) -> tuple[list[Pdu], bool]:
        """The PDUs to send back and whether the connection ends after them."""
        if isinstance(pdu, NopOut) and answers_target_ping(pdu):
            return [], False  # an answer to a ping we never send; harmless
        if not isinstance(pdu, NopOut | TextRequest | LogoutRequest):
            return [self._reject(pdu, RejectReason.PROTOCOL_ERROR)], False
        arrival = self.window.arrive(pdu.cmd_sn, immediate=pdu.immediate, item=pdu)
        if arrival is not Arrival.DELIVER:
            return [], False  # held for its turn, or outside the window: ignored
        replies: list[Pdu] = []
        ready: NopOut | TextRequest | LogoutRequest | None = pdu
        while ready is not None:
            reply, done = self._answer(ready)
            replies.append(reply)
            if done:
                return replies, True
            ready = self.window.pop_ready()
        return replies, False

    def _answer(self, pdu: NopOut | TextRequest | LogoutRequest) -> tuple[Pdu, bool]:
        exp_cmd_sn, max_cmd_sn = self.window.exp_cmd_sn, self.window.advertise(self.share)
        if isinstance(pdu, NopOut):
            reply = nop_in_reply(
                pdu,
                stat_sn=self.stat_sn.take(),
                exp_cmd_sn=exp_cmd_sn,
                max_cmd_sn=max_cmd_sn,
                max_data=self.max_send_length,
            )
            return reply, False
        if isinstance(pdu, TextRequest):
            try:
                response = self.responder.receive(
                    pdu, stat_sn=self.stat_sn.next, exp_cmd_sn=exp_cmd_sn, max_cmd_sn=max_cmd_sn
                )
            except TextError:
                return self._reject(pdu, RejectReason.PROTOCOL_ERROR), False
            self.stat_sn.take()
            return response, False
        outcome = logout_outcome(pdu, self.cid)
        logout = logout_response(
            pdu, outcome, stat_sn=self.stat_sn.take(), exp_cmd_sn=exp_cmd_sn, max_cmd_sn=max_cmd_sn
        )
        return logout, outcome is LogoutResponseCode.SUCCESS

    def _reject(self, pdu: Pdu, reason: RejectReason) -> Reject:
        return self._reject_header(encode_bhs(pdu), reason)

    def reject_header(self, error: IscsiProtocolError) -> Reject:
        """A Reject for a PDU the framer refused without losing the stream (data digest)."""
        return self._reject_header(error.header or b"", error.reject_reason)

    def _reject_header(self, header: bytes, reason: int) -> Reject:
        return Reject(
            reason=reason,
            stat_sn=self.stat_sn.take(),
            exp_cmd_sn=self.window.exp_cmd_sn,
            max_cmd_sn=self.window.advertise(self.share),
            data=header,
        )
