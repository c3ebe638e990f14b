"""The kit's target side: scriptable login listeners on loopback, a real stargate behind.

Each conformance test describes its portals (`PortalSpec`): the first is where the driver
is sent, the others are where redirects lead. Every portal runs the project's sans-IO
login machine (`TargetLogin` under `TargetLoginPhase`) with the stargate's own policy, bent
by the portal's `LoginScript` (hold the T bit back, pick the first StatSN, refuse,
redirect, require CHAP, corrupt a CHAP answer). A login that completes is handed to an
in-process `StargateServer` over a memory vDisk for the full feature phase. Every PDU, both
ways, lands in the test's `Evidence` (see evidence.py).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, replace

import trio

from cluster.conformance.async_target import AsyncScript, send_async_event
from cluster.conformance.evidence import ConnectionLog, Evidence, RecordingStream
from iscsicore.chap import ChapSecrets, encode_binary
from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.keys import SessionType, decode_text, encode_text
from iscsicore.login import Accept, Redirect, Refuse, Resolution, TargetLogin
from iscsicore.login_phase import LoginPhaseState, TargetLoginPhase
from iscsicore.pdu import (
    RESERVED_TAG,
    LoginRequest,
    LoginResponse,
    LoginStage,
    LoginStatus,
    NopIn,
    ScsiCommand,
)
from iscsicore.portal import Portal
from iscsicore.seqnum import SERIAL_MASK
from stargate.scsi.lu import LogicalUnit
from stargate.scsi.reserve import vdisk_reservations
from stargate.server import ServerConfig, StargateServer
from stargate.stores.memory import MemoryStore
from stargate.target import TargetRegistry, VDiskTarget
from topology.naming import target_name_for
from topology.vdisk import VDiskMeta

VDISK_ID = "conformance"
TARGET_NAME = target_name_for(VDISK_ID)
VDISK_BYTES = 8 << 20
LOGIN_TIMEOUT = 10.0
RECEIVE_SIZE = 65536
# Binding another loopback address on the entry portal's port: attempts before giving up.
PORT_ATTEMPTS = 8
PING_TTT = 0x6B697401  # the Target Transfer Tag of the kit's NOP-In ping

Resolver = Callable[[str, str | None, SessionType], Resolution]


@dataclass(frozen=True, slots=True)
class LoginScript:
    """How one portal's login departs from a plain stargate's."""

    hold_transit_rounds: int = 0  # answer this many T=1 requests with T=0 first
    initial_stat_sn: int | None = None  # None: random, as stargate does
    max_recv_data_segment_length: int | None = None  # what the target declares
    refuse: LoginStatus | None = None
    redirect_to: str | None = None  # another portal's name
    permanent: bool = False  # 0x0102 instead of 0x0101
    chap: ChapSecrets | None = None
    mutual: ChapSecrets | None = None
    corrupt_mutual_response: bool = False  # the target's CHAP_R is wrong
    challenge: bytes | None = None  # sent as CHAP_C instead of the real challenge
    answer_twice: str | None = None  # a key the target's answer carries twice
    require_header_digest: bool = False  # HeaderDigest=CRC32C or no login
    # ImmediateData=No and InitialR2T=Yes: every byte of a write waits for an R2T.
    solicited_data_only: bool = False
    # The portal's first session is dropped when its first command comes, unanswered.
    drop_first_session: bool = False
    # After the login: a NOP-In ping with PING_TTT before the stargate takes over.
    ping_after_login: bool = False
    # The login ends with the command window closed (MaxCmdSN = ExpCmdSN - 1); a NOP-In
    # opens it this many seconds later.
    closed_window_seconds: float = 0.0
    # The first session's first command is held and answered by an Asynchronous Message.
    async_event: AsyncScript | None = None
    # Every session is dropped when its first command comes, unanswered (no event).
    drop_every_session: bool = False


@dataclass(frozen=True, slots=True)
class PortalSpec:
    name: str
    script: LoginScript = LoginScript()
    other_address: bool = False  # listen on the kit's second loopback address
    same_port_as_entry: bool = False  # ... on the port number of the entry portal


@dataclass(frozen=True, slots=True)
class KitAddresses:
    host: str = "127.0.0.1"
    other_host: str = "127.0.0.2"


def memory_server() -> StargateServer:
    """A stargate that is never started as a listener: its sessions serve the kit's
    completed logins over one memory vDisk."""
    meta = VDiskMeta(VDISK_ID, VDISK_BYTES)
    reservations, unit_attentions = vdisk_reservations(None, VDISK_ID)
    lu = LogicalUnit(
        MemoryStore(meta), meta, reservations=reservations, unit_attentions=unit_attentions
    )
    registry = TargetRegistry()
    registry.add(VDiskTarget(VDISK_ID, lu, block_size=512))
    return StargateServer(registry, ServerConfig(host="127.0.0.1", port=0))


class KitTarget:
    """The listeners of one test; `start` binds them all, `portals[name]` says where."""

    def __init__(
        self,
        portals: tuple[PortalSpec, ...],
        evidence: Evidence,
        addresses: KitAddresses,
        server: StargateServer,
    ) -> None:
        self.specs = portals
        self.evidence = evidence
        self.addresses = addresses
        self.server = server
        self.portals: dict[str, Portal] = {}
        # What redirects name: the portals themselves, unless the initiator reaches them
        # through relays (a VM's network) and must be sent to its side of them.
        self.advertised: dict[str, Portal] = self.portals

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await self._bind()
        for spec in self.specs:
            listener = listeners[spec.name]

            async def handle(stream: trio.SocketStream, spec: PortalSpec = spec) -> None:
                await self._handle(stream, spec)

            nursery.start_soon(trio.serve_listeners, handle, [listener])

    @property
    def entry(self) -> Portal:
        return self.portals[self.specs[0].name]

    async def _bind(self) -> dict[str, trio.SocketListener]:
        for attempt in range(PORT_ATTEMPTS):
            bound: dict[str, trio.SocketListener] = {}
            try:
                for spec in self.specs:
                    host = self.addresses.other_host if spec.other_address else self.addresses.host
                    port = self.entry.port if spec.same_port_as_entry else 0
                    (listener,) = await trio.open_tcp_listeners(port, host=host)
                    bound[spec.name] = listener
                    tag = len(bound)
                    self.portals[spec.name] = Portal(host, listener.socket.getsockname()[1], tag)
                return bound
            except OSError as error:
                for listener in bound.values():
                    await listener.aclose()
                if error.errno != errno.EADDRINUSE or attempt == PORT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _handle(self, stream: trio.SocketStream, spec: PortalSpec) -> None:
        log = self.evidence.open(spec.name)
        recording = RecordingStream(stream, log, self.evidence)
        try:
            login, framer = await self._login(recording, spec)
            if login is None or not login.complete:
                return
            if spec.script.closed_window_seconds > 0:
                if not await _read_while_closed(recording, framer, spec.script):
                    return
                await _send_nop_in(recording, login, RESERVED_TAG)  # the window opens
            if spec.script.ping_after_login:
                await _send_nop_in(recording, login, PING_TTT)
            script = spec.script
            if script.drop_every_session or (
                script.drop_first_session and self._first_session(spec, log)
            ):
                await _until_command(recording, log)
                return
            if (
                script.async_event is not None
                and self._first_session(spec, log)
                and not await send_async_event(recording, framer, login, script.async_event)
            ):
                return
            await self.server.serve_logged_in(recording, framer, login)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(recording)

    def _first_session(self, spec: PortalSpec, log: ConnectionLog) -> bool:
        sessions = [conn for conn in self.evidence.on(spec.name) if conn.logged_in]
        return sessions[:1] == [log]

    async def _login(
        self, stream: RecordingStream, spec: PortalSpec
    ) -> tuple[TargetLogin | None, PduFramer]:
        script = spec.script
        config = self.server.policy.login_config(cmd_window=64)
        config.portal_group_tag = self.portals[spec.name].tpgt or 1
        if script.initial_stat_sn is not None:
            first = script.initial_stat_sn
            config.initial_stat_sn = lambda: first
        if script.max_recv_data_segment_length is not None:
            config.max_recv_data_segment_length = script.max_recv_data_segment_length
        config.resolve = self._resolver(script, config.resolve)
        if script.require_header_digest:
            config.header_digests = ("CRC32C",)
        if script.solicited_data_only:
            config.immediate_data, config.initial_r2t = False, True
        login = TargetLogin(config)
        framer = PduFramer(receiving_from="initiator")
        phase = TargetLoginPhase(login, framer)
        held = 0
        with trio.move_on_after(LOGIN_TIMEOUT):
            while True:
                event = phase.next_event()
                if event is LoginPhaseState.NEED_DATA:
                    phase.receive_data(await stream.receive_some(RECEIVE_SIZE))
                    continue
                if not isinstance(event, LoginRequest):
                    break
                request = event
                if request.transit and held < script.hold_transit_rounds:
                    held += 1
                    request = replace(request, transit=False)
                response = _rewrite(login.receive(request), script)
                await stream.send_all(encode_pdu(response))
                stream.login_answered(
                    complete=login.complete,
                    header_digest=login.params.header_digest,
                    data_digest=login.params.data_digest,
                )
            return login, framer
        return None, framer

    def _resolver(self, script: LoginScript, plain: Resolver) -> Resolver:
        def resolve(
            initiator_name: str, target_name: str | None, session_type: SessionType
        ) -> Resolution:
            if script.refuse is not None:
                return Refuse(script.refuse)
            if script.redirect_to is not None and session_type is SessionType.NORMAL:
                there = self.advertised[script.redirect_to]
                return Redirect.to(
                    there.host, there.port, there.tpgt or 1, permanent=script.permanent
                )
            if script.chap is not None:
                return Accept(chap=script.chap, mutual=script.mutual)
            return plain(initiator_name, target_name, session_type)

        return resolve


async def _read_while_closed(
    stream: RecordingStream, framer: PduFramer, script: LoginScript
) -> bool:
    """Keep reading (and recording) while the window is closed: what the initiator sends
    waits in ``framer`` for the stargate. False if the initiator closed meanwhile."""
    with trio.move_on_after(script.closed_window_seconds):
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return False
            framer.feed(data)
    return True


async def _until_command(stream: RecordingStream, log: ConnectionLog) -> None:
    """Read (and record) until the initiator's first SCSI command, or its close."""
    with trio.move_on_after(LOGIN_TIMEOUT):
        while not any(isinstance(seen.pdu, ScsiCommand) for seen in log.received()):
            if not await stream.receive_some(RECEIVE_SIZE):
                return


async def _send_nop_in(stream: RecordingStream, login: TargetLogin, ttt: int) -> None:
    """A NOP-In with the session's numbers: a ping with ``ttt``, or (reserved TTT) just
    news of the window. StatSN is not advanced by either (RFC 7143 11.19)."""
    nop = NopIn(
        ttt=ttt,
        stat_sn=login.stat_sn,
        exp_cmd_sn=login.cmd_sn,
        max_cmd_sn=login.max_cmd_sn,
    )
    params = login.params
    await stream.send_all(
        encode_pdu(nop, header_digest=params.header_digest, data_digest=params.data_digest)
    )


def _rewrite(response: LoginResponse, script: LoginScript) -> LoginResponse:
    """The scripted changes to a login answer: the command window closed at the end,
    another CHAP challenge, a wrong CHAP proof, a key answered twice."""
    if (
        script.closed_window_seconds > 0
        and response.transit
        and response.nsg == LoginStage.FULL_FEATURE
    ):
        return replace(response, max_cmd_sn=(response.exp_cmd_sn - 1) & SERIAL_MASK)
    if script.challenge is None and not script.corrupt_mutual_response and not script.answer_twice:
        return response
    pairs = decode_text(bytes(response.data), terminated=False) if response.data else []
    changed = []
    for key, value in pairs:
        if key == "CHAP_C" and script.challenge is not None:
            value = encode_binary(script.challenge)
        elif key == "CHAP_R" and script.corrupt_mutual_response:
            value = "0x" + "00" * 16
        elif key == script.answer_twice:
            changed.append((key, value))
        changed.append((key, value))
    if changed == pairs:
        return response
    return replace(response, data=encode_text(changed))
