"""A connection's life: construction after login, its tasks (reader, writer, keepalive,
watchdog), its turns with the server's reader hub, and its end.

The hot path is one trio task: one large ``receive_some``, every complete PDU in the
buffer handled synchronously (reads and writes run inline through the logical unit), every
response appended to one bytearray, and ONE ``send_all`` per wake-up. Only fdatasync goes to
a worker thread. Responses produced outside a wake-up (a sync finished, a queued command got
its slot, an async message) wake a small writer task instead.

Error recovery level 0: a broken Data-Out sequence fails its command, a PDU the framer
cannot trust drops the connection after a Reject.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from iscsicore.framing import PduFramer
from iscsicore.fullfeature.numbering import StatSN
from iscsicore.keys import SessionParams
from stargate.queue import CommandQueue
from stargate.reader_hub import ReaderHub, Turn
from stargate.scsi.command import Nexus
from stargate.session import Session
from stargate.transport.config import CONTROL_RESUME_SECONDS, RECEIVE_SIZE, ConnectionTimers
from stargate.transport.faulted_pdus import FaultedPdus
from stargate.transport.interfaces import (
    NO_FAULTS,
    ByteChannel,
    FaultStrategy,
    ReadySocket,
    TaskDirectory,
    TextResponder,
)
from stargate.transport.lun_routes import LunRoutes
from stargate.transport.state import ConnectionClosed


class FullFeatureConnection(FaultedPdus):
    """One logged-in connection. Construct after login, then ``await run()``."""

    def __init__(
        self,
        channel: ByteChannel,
        framer: PduFramer,
        session: Session,
        params: SessionParams,
        queue: CommandQueue,
        *,
        nexus: Nexus,
        cid: int,
        stat_sn: int,
        timers: ConnectionTimers | None = None,
        text_responder: TextResponder | None = None,
        directory: TaskDirectory | None = None,
        on_close: Callable[[FullFeatureConnection], None] | None = None,
        eager_send_every: int = 0,
        faults: FaultStrategy = NO_FAULTS,
        hub: ReaderHub | None = None,
        log_gate: Callable[[], tuple[bool, int]] | None = None,
    ) -> None:
        self._io = channel
        self.faults = faults
        self._hub = self._hub_socket = None
        if hub is not None and isinstance(channel, ReadySocket):
            self._hub, self._hub_socket = hub, channel
        self.framer = framer
        self.session = session
        self.params = params
        self.queue = queue
        self.nexus = nexus
        self.cid = cid
        self.timers = timers or ConnectionTimers()
        self.text_responder = text_responder
        self.directory = directory
        self.on_close = on_close
        self.eager_send_every = eager_send_every
        self.log_gate = log_gate

        self.target = session.target
        self.routes = LunRoutes(self.target, queue) if self.target is not None else None
        first = self.routes.routes[0] if self.routes is not None else None
        self.lu = first.lu if first is not None else None
        self.block_size = self.target.block_size if self.target is not None else 512
        self.vdisk_key = first.queue_key if first is not None else ""
        self.vdisk_id = first.vdisk_id if first is not None else ""
        self.stats = first.stats if first is not None else None
        self.tenant = first.tenant if first is not None else None

        self._stat_sn = StatSN(stat_sn)
        self._cmd_sn_window = session.window
        self._held_data = {}
        self._tasks = {}
        self._next_ttt = 1
        self.cmd_sn_out_of_window = 0

        self._out = bytearray()
        self._sending = False
        self._send_finished = None
        self._unsent = 0
        self._in_batch = False
        self._writer_wakeup = trio.Event()
        self._header_digest = params.header_digest
        self._data_digest = params.data_digest
        self._max_send_segment = params.initiator_max_recv_data_segment_length

        self._control_rate = max(0.0, self.timers.control_pdu_rate)
        self._control_burst = float(max(1, self.timers.control_pdu_burst))
        self._control_tokens = self._control_burst
        self._control_stamp = trio.current_time()
        self._control_quantum = min(
            self._control_burst, max(1.0, self._control_rate * CONTROL_RESUME_SECONDS)
        )
        self._control_resume = None
        self.control_pauses = 0

        self._last_receive = trio.current_time()
        self._partial_since = None
        self._keepalive_scope = None
        self._watchdog_scope = None
        self._closing_reason = None
        self._cancel_scope = None
        self._nursery = None
        self._pending_logout_deadline = None
        self.logout_requested_at = None
        self.protocol_error_drop = False

        self._execution_faults = {}
        self._frozen_max_cmd_sn = None
        self._freezes = 0
        self._r2ts_withheld = False
        self._digest_tamper = None

        self._handler_table = self._handlers()
        self._faulted_table = self._faulted_handlers()

    # -- lifecycle --------------------------------------------------------------------

    async def run(self) -> str:
        """Serve until logout, a drop or a dead peer; return why the connection ended."""
        reason = "closed"
        # Discovery sessions send no SCSI commands: no share of the queue, and they do not
        # make a vDisk session less alone (its turn budget).
        counted = self.lu is not None
        if counted:
            self.queue.session_opened()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._cancel_scope = nursery.cancel_scope
                nursery.start_soon(self._closing_on_error, self._writer)
                nursery.start_soon(self._closing_on_error, self._keepalive)
                nursery.start_soon(self._watchdog)
                try:
                    await self._reader()
                    reason = self._closing_reason or "connection closed by the initiator"
                except ConnectionClosed as closed:
                    reason = str(closed)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                    reason = f"connection lost: {error}"
                nursery.cancel_scope.cancel()
        finally:
            if self._closing_reason is not None and reason == "closed":
                reason = self._closing_reason
            self._abort_all_tasks()
            self._cmd_sn_window.drop_held()  # never delivered: nothing to answer
            self._held_data.clear()
            self.queue.session_closed(self, counted=counted)
            if self.on_close is not None:
                self.on_close(self)
        return self._closing_reason or reason

    async def _closing_on_error(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run a helper task; a broken socket there ends the connection like one in the
        reader does, instead of surfacing as an error of the whole nursery."""
        try:
            await task()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self.close(f"connection lost: {error}")

    # -- receiving ----------------------------------------------------------------------

    async def _reader(self) -> None:
        await self._serve_buffered()  # what came with the login PDUs
        while True:
            if self._hub is not None and self._io is self._hub_socket:
                turn = await self._hub.park(self)
                # Turn.TASK: output to wait for, a close, a new channel; at Turn.EOF what
                # is still buffered is handled and answered first, as it would have been
                # before the EOF was read.
                await self._serve_buffered()
                if turn is Turn.EOF:
                    return
                continue
            data = await self._io.receive_some(RECEIVE_SIZE)
            if not data:
                return
            self._last_receive = trio.current_time()
            self.framer.feed(data)
            await self._serve_buffered()

    async def _serve_buffered(self) -> None:
        """Send what is queued and stop if the connection is closing (a hub turn may have
        left either); then handle the PDUs buffered, a turn at a time, sending after each."""
        await self._send_or_close()
        while True:
            if self._control_resume is not None:
                # Out of control-PDU allowance: read nothing more (the rest stays in the
                # socket) until it refills.
                await trio.sleep_until(self._control_resume)
                self._control_resume = None
            if self._handle_turn():
                await self._send_or_close()
                await trio.lowlevel.checkpoint()  # the other connections' turn
                continue
            await self._send_or_close()
            if self._control_resume is None:
                return

    async def _send_or_close(self) -> None:
        # Sending is also the backpressure: an initiator that does not read its responses
        # stops us reading its commands.
        await self._flush()
        if self._closing_reason is not None:
            raise ConnectionClosed(self._closing_reason)

    def _handle_turn(self) -> bool:
        self._in_batch = True
        try:
            return self._handle_buffered_pdus(
                self._faulted_table if self.faults.armed else self._handler_table
            )
        finally:
            self._in_batch = False

    # -- served by the reader hub ---------------------------------------------------------

    def fileno(self) -> int:
        assert self._hub_socket is not None
        return self._hub_socket.fileno()

    def serve_turn(self, receive: bool) -> Turn:
        """One turn, called by the hub: receive what is there, handle up to a turn's budget
        of PDUs, send what the socket takes. Never waits."""
        hub_socket = self._hub_socket
        if self._io is not hub_socket or self._sending:
            # A fault replaced the channel, or another task's send is waiting for the
            # socket: our task waits for it (reading on would lose the backpressure).
            return Turn.TASK
        assert hub_socket is not None
        if receive:
            data = hub_socket.receive_now(RECEIVE_SIZE)
            if data is None:
                return Turn.IDLE  # nothing after all
            if not data:
                return Turn.EOF
            self._last_receive = trio.current_time()
            self.framer.feed(data)
        more_buffered = self._handle_turn()
        if self._closing_reason is not None or self._io is not hub_socket:
            return Turn.TASK  # the task flushes through the channel, then closes
        out = self._out
        if out:
            hub_socket.try_send(out)
            if out:
                return Turn.TASK  # the socket is full: wait for it in our own task
        if self._control_resume is not None:
            return Turn.TASK  # out of control-PDU allowance: the task waits for it
        return Turn.MORE if more_buffered else Turn.IDLE
