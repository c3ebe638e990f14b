"""The stargate server: trio listener, one task per connection, graceful shutdown, and the
control API the cluster uses (async logout / drop for a vDisk's sessions, statistics).

    server = StargateServer(registry, ServerConfig(host="127.0.0.1", port=3261))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)        # listening once this returns
        server.request_logout("vd1", seconds=5)  # AsyncEvent 1 to vd1's sessions
        server.drop_connections("vd1")           # AsyncEvent 3, then close
        server.stats()                           # {vdisk_id: counters}
        await server.shutdown()                  # drop every session, stop listening

The cluster and fault injection reach it only through the `stargate.hooks.ServerHooks` given
at construction: the command queue's admission gate, the login policy, a session observer,
the fault injector.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from faults.channel import blackhole_stream
from faults.login import faulted_login, hold_swallowed_login
from iscsicore.framing import PduFramer
from iscsicore.keys import SessionType
from iscsicore.login import LoginStatus, TargetLogin
from iscsicore.portal import Portal
from stargate.discovery import SendTargetsResponder
from stargate.fault_actions import ServerActions
from stargate.hooks import ServerHooks
from stargate.login_phase import DEFAULT_LOGIN_TIMEOUT, peer_host, run_login
from stargate.login_throttle import LogLimiter
from stargate.queue import DEFAULT_MAX_BUFFERED_BYTES, CommandQueue, ShareLimits
from stargate.reader_hub import DEFAULT_BUSY_POLL_SECONDS, ReaderHub
from stargate.scsi.command import Nexus
from stargate.session import Session, SessionTable
from stargate.target import TargetRegistry, VDiskTarget
from stargate.transport.config import ConnectionTimers
from stargate.transport.interfaces import ByteChannel
from stargate.transport.runner import FullFeatureConnection

log = logging.getLogger(__name__)

DEFAULT_QUEUE_DEPTH = 128
SHUTDOWN_GRACE = 2.0


class DirectSocket:
    """Socket I/O for a `trio.SocketStream` without trio's per-call checkpoints.

    trio's ``receive_some``/``send_all`` each yield to the scheduler even when the socket is
    ready: several scheduler passes per request, which dominates at low queue depth. Here a
    ready socket costs one system call; only a socket that is not ready waits (and that
    wait is the checkpoint). The stdlib socket shares trio's descriptor and is detached,
    never closed: the stream still owns it.
    """

    # Yield to the scheduler at least this often while the peer keeps us busy.
    CHECKPOINT_EVERY = 16

    def __init__(self, stream: trio.SocketStream) -> None:
        self._raw = socket.socket(fileno=stream.socket.fileno())
        self._raw.setblocking(False)
        self._busy_rounds = 0

    def fileno(self) -> int:
        return self._raw.fileno()

    async def receive_some(self, max_bytes: int) -> bytes:
        self._busy_rounds += 1
        if self._busy_rounds >= self.CHECKPOINT_EVERY:
            self._busy_rounds = 0
            await trio.lowlevel.checkpoint()
        while True:
            data = self.receive_now(max_bytes)
            if data is not None:
                return data
            self._busy_rounds = 0
            await trio.lowlevel.wait_readable(self._raw)

    def receive_now(self, max_bytes: int) -> bytes | None:
        """What the socket holds (b"" at EOF), or None if nothing has come."""
        try:
            return self._raw.recv(max_bytes)
        except BlockingIOError:
            return None
        except OSError as error:
            raise trio.BrokenResourceError(str(error)) from error

    async def send_all(self, data: bytes | bytearray) -> None:
        with memoryview(data) as view:
            sent = 0
            total = len(view)
            while sent < total:
                try:
                    sent += self._raw.send(view[sent:])
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._raw)
                except OSError as error:
                    raise trio.BrokenResourceError(str(error)) from error

    def try_send(self, data: bytearray) -> None:
        """Send what the socket takes right now, never waiting; drop that from ``data``."""
        try:
            sent = self._raw.send(data)
        except OSError:
            return  # would block, or broken: the next awaited send deals with it
        del data[:sent]

    def reset_on_close(self) -> None:
        """Make the stream's coming close send RST instead of FIN (SO_LINGER 0)."""
        self._raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def detach(self) -> None:
        self._raw.detach()


@contextlib.contextmanager
def byte_channel(stream: trio.abc.Stream) -> Iterator[trio.abc.Stream | DirectSocket]:
    """The fastest channel for a stream: direct socket I/O for TCP, else the stream."""
    if not isinstance(stream, trio.SocketStream):
        yield stream
        return
    direct = DirectSocket(stream)
    try:
        yield direct
    finally:
        direct.detach()


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 3261  # 0: any free port (see `StargateServer.port`)
    advertised_address: str | None = None  # "host:port" for SendTargets; default: bound
    queue_depth: int = DEFAULT_QUEUE_DEPTH
    # Data-Out buffer bytes of all commands together, and what one session / one vDisk
    # (all its sessions) may hold of the queue (None: `ShareLimits.fair`).
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES
    session_limits: ShareLimits | None = None
    vdisk_limits: ShareLimits | None = None
    login_timeout: float = DEFAULT_LOGIN_TIMEOUT
    timers: ConnectionTimers = field(default_factory=ConnectionTimers)
    eager_send_every: int = 0  # see FullFeatureConnection: 0 sends once per wake-up
    # The reader hub polls this long for the next command before it sleeps: at low queue
    # depth that beats a sleep and a wake-up.
    busy_poll_us: float = DEFAULT_BUSY_POLL_SECONDS * 1e6


class StargateServer:
    def __init__(
        self,
        registry: TargetRegistry,
        config: ServerConfig | None = None,
        hooks: ServerHooks | None = None,
    ) -> None:
        self.registry = registry
        self.config = config or ServerConfig()
        hooks = hooks or ServerHooks()
        self.queue = CommandQueue(
            self.config.queue_depth,
            max_buffered_bytes=self.config.max_buffered_bytes,
            session_limits=self.config.session_limits,
            vdisk_limits=self.config.vdisk_limits,
            gate=hooks.gate,
        )
        self.sessions = SessionTable()
        self.policy = hooks.login_policy(registry, self.sessions)
        # Log lines of connections dropped for protocol errors, per source address: a
        # reconnect storm logs a few a second and a count (stargate.login_throttle).
        self.drop_log = LogLimiter()
        self.port: int | None = None
        self._connections: set[FullFeatureConnection] = set()
        # One reader for every connection (see stargate.reader_hub).
        self.hub = ReaderHub(spin_seconds=self.config.busy_poll_us / 1e6)
        self._cancel_scope: trio.CancelScope | None = None
        self._closing = False
        # Fault injection (faults): costs the transport one check per batch.
        self.faults = hooks.faults
        self.observer = hooks.observer

    # -- serving ------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until `shutdown()` or cancellation; reports the bound port."""
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        self.port = listeners[0].socket.getsockname()[1]
        if self.config.advertised_address is not None:
            self.registry.portal_group.advertised_addresses = [self.config.advertised_address]
        elif not self.registry.portal_group.advertised_addresses:
            self.registry.portal_group.advertised_addresses = [
                Portal(self.config.host, self.port).host_port
            ]
        log.info("stargate listening on %s", Portal(self.config.host, self.port).host_port)
        with trio.CancelScope() as scope:
            self._cancel_scope = scope
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.faults.run_actions, ServerActions(self))
                await nursery.start(self.hub.run)
                task_status.started(self.port)
                await trio.serve_listeners(
                    self._handle_connection, listeners, handler_nursery=nursery
                )

    async def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Tell every session to go (AsyncEvent 3), give them ``grace`` seconds, stop."""
        self._closing = True
        for connection in list(self._connections):
            connection.drop(all_connections=True, time2wait=2, time2retain=0)
        with trio.move_on_after(grace):
            while self._connections:
                await trio.sleep(0.05)
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one already-connected stream (a socket, or an in-memory pair in tests)."""
        await self._handle_connection(stream)

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        try:
            await self._serve_connection(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # a bug must cost one connection, never the server
            log.exception("connection handler failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        if self._closing:
            return
        if isinstance(stream, trio.SocketStream):
            # trio sets it already; say so explicitly: latency of small responses matters.
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.faults.network_paused:
            await blackhole_stream(stream, self.faults)
            return
        peer = peer_host(stream)
        throttle = self.policy.throttle
        if peer:
            # An address whose connections were dropped for protocol errors: its next
            # connection waits before it is read (a garbage storm before login too).
            wait = throttle.held_until("", peer) - throttle.clock()
            if wait > 0:
                await trio.sleep(min(wait, throttle.max_protocol_hold))
        framer = PduFramer(receiving_from="initiator")
        login_config = self.policy.login_config(cmd_window=min(64, self.queue.depth))
        login_stream = stream
        if self.faults.armed:
            login_config, login_stream = faulted_login(login_config, stream, self.faults)
        login = TargetLogin(login_config)
        outcome = await run_login(
            login_stream,
            framer,
            login,
            timeout=self.config.login_timeout,
            throttle=throttle,  # failed logins are answered later and later
            peer=peer,
        )
        if await hold_swallowed_login(login_stream):
            return
        if not outcome.complete:
            garbage = outcome.protocol_error or (
                login.failed and login.failure_status == LoginStatus.INITIATOR_ERROR
            )
            if garbage:
                throttle.protocol_error(peer)
            self._log_ended(
                garbage,
                peer,
                "login from %s ended: %s",
                login.initiator_name or "?",
                outcome.reason,
            )
            return
        await self.serve_logged_in(stream, framer, login, peer)

    async def serve_logged_in(
        self, stream: trio.abc.Stream, framer: PduFramer, login: TargetLogin, peer: str = ""
    ) -> None:
        """The full feature phase of a connection whose login is complete: ``framer`` holds
        what the initiator sent after its last Login Request. The conformance kit runs its
        own scripted logins and hands the connections over here."""
        target = self.registry.get(login.target_name or "") if login.target_name else None
        session_type = login.params.session_type
        if session_type is SessionType.NORMAL and target is None:
            return  # removed between login and now
        with byte_channel(stream) as channel:
            await self._run_session(channel, framer, login, target, session_type, peer)

    async def _run_session(
        self,
        channel: ByteChannel,
        framer: PduFramer,
        login: TargetLogin,
        target: VDiskTarget | None,
        session_type: SessionType,
        peer: str = "",
    ) -> None:
        params = login.params
        session = Session(
            initiator_name=login.initiator_name,
            isid=login.isid,
            tsih=login.tsih,
            session_type=session_type,
            target=target,
            exp_cmd_sn=login.cmd_sn,
        )
        session.max_cmd_sn = login.max_cmd_sn
        nexus = Nexus(
            f"{login.initiator_name},i,0x{login.isid:012x}",
            f"{login.target_name or ''},t,0x{self.registry.portal_group.tag:04x}",
        )
        responder = SendTargetsResponder(
            self.registry,
            login.initiator_name,
            params.initiator_max_recv_data_segment_length,
            current_target=target.name if target is not None else None,
        )
        connection = FullFeatureConnection(
            channel,
            framer,
            session,
            params,
            self.queue,
            nexus=nexus,
            cid=login.cid,
            stat_sn=login.stat_sn,
            timers=self.config.timers,
            text_responder=responder,
            directory=self,
            eager_send_every=self.config.eager_send_every,
            faults=self.faults,
            hub=self.hub if self.hub.running else None,  # serve_stream works without
            log_gate=lambda: self.drop_log.allow(peer),
        )
        session.closer = connection.close
        self.sessions.add(session)
        self._connections.add(connection)
        if target is not None:
            target.stats.logins += 1
            target.stats.sessions += 1
            target.stats.connections += 1
        if self._closing:  # logged in while the server shuts down: told to go at once
            connection.drop(all_connections=True)
        if self.observer is not None:
            self.observer.session_started(session, connection)
        reason = "connection handler failed"
        try:
            reason = await connection.run()
            if connection.protocol_error_drop:
                self.policy.throttle.protocol_error(peer)
            self._log_ended(
                connection.protocol_error_drop,
                peer,
                "session %#x of %s ended: %s",
                session.tsih,
                session.initiator_name,
                reason,
            )
        finally:
            if self.observer is not None:
                self.observer.session_ended(session, connection, reason)
            session.closed = True
            self._connections.discard(connection)
            self.sessions.remove(session)
            if target is not None:
                target.stats.sessions -= 1
                target.stats.connections -= 1
                for lun in target.luns:
                    lun.lu.nexus_lost(nexus)

    # -- the cluster's control API ------------------------------------------------------

    def _log_ended(self, limited: bool, peer: str, message: str, *args: object) -> None:
        """Log a connection's end; ``limited`` (dropped for a protocol error, which a peer
        can repeat at will): at most a few a second per address, with a count of the rest."""
        if not limited:
            log.info(message, *args)
            return
        allowed, left_out = self.drop_log.allow(peer)
        if allowed:
            more = f" ({left_out} more like it not logged)" if left_out else ""
            log.info(message + "%s", *args, more)

    def all_connections(self) -> list[FullFeatureConnection]:
        return list(self._connections)

    def connections_of(self, target_name: str) -> list[FullFeatureConnection]:
        return [c for c in self._connections if c.session.target_name == target_name]

    def _connections_of_vdisk(self, vdisk_id: str) -> list[FullFeatureConnection]:
        """The connections of the target serving ``vdisk_id`` as any of its LUNs (a session
        is with a whole target)."""
        served = self.registry.serving(vdisk_id)
        return [] if served is None else self.connections_of(served[0].name)

    def request_logout(self, vdisk_id: str, seconds: int = 5) -> int:
        """AsyncEvent 1 (Parameter3 = ``seconds``) to every session of the vDisk; those
        still logged in after ``seconds`` are dropped. Returns how many were asked."""
        connections = self._connections_of_vdisk(vdisk_id)
        for connection in connections:
            connection.request_logout(seconds)
        return len(connections)

    def drop_connections(
        self, vdisk_id: str, *, time2wait: int = 2, time2retain: int = 0, whole_session: bool = True
    ) -> int:
        """AsyncEvent 3 (or 2) to every session of the vDisk, then close them."""
        connections = self._connections_of_vdisk(vdisk_id)
        for connection in connections:
            connection.drop(
                all_connections=whole_session, time2wait=time2wait, time2retain=time2retain
            )
        return len(connections)

    def add_vdisk(self, target: VDiskTarget) -> None:
        self.registry.add(target)

    def remove_vdisk(self, vdisk_id: str) -> VDiskTarget | None:
        """Stop serving a vDisk: its sessions are dropped (AsyncEvent 3)."""
        self.drop_connections(vdisk_id)
        target = self.registry.by_vdisk_id(vdisk_id)
        return self.registry.remove(target.name) if target is not None else None

    def stats(self) -> dict[str, dict[str, object]]:
        """Per-vDisk counters for the stats page (every LUN's vDisk), plus the shared
        queue's state."""
        snapshot: dict[str, dict[str, object]] = {}
        for target in self.registry:
            for lun in target.luns:
                counters = snapshot[lun.vdisk_id] = lun.stats.snapshot()
                counters["queued_waiting_now"] = self.queue.waiting_for(lun.queue_key)
                if target.extra_luns:
                    counters["target"] = target.name
                    counters["lun"] = lun.number
        return snapshot

    def queue_stats(self) -> dict[str, int]:
        return {
            "depth": self.queue.depth,
            "in_flight": self.queue.in_flight,
            "waiting": self.queue.waiting,
            "task_set_full": self.queue.task_set_full_count,
            "connections": len(self._connections),
            "sessions": len(self.sessions),
        }
