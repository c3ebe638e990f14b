"""Full-feature phase of one connection: SCSI commands and their data, task management,
NOP pings, text, logout and asynchronous messages.

The hot path is one trio task: one large ``receive_some``, every complete PDU in the
buffer handled synchronously (reads and writes run inline through the logical unit), every
response appended to one bytearray, and ONE ``send_all`` per wake-up. Only fdatasync goes to
a worker thread. Responses produced outside a wake-up (a sync finished, a queued command got
its slot, an async message) wake a small writer task instead.

Error recovery level 0: a broken Data-Out sequence fails its command, a PDU the framer
cannot trust drops the connection after a Reject.
"""

from __future__ import annotations

import functools
import logging
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import trio

from faults.channel import BlackholeChannel
from faults.injector import FaultInjector
from faults.model import DropMode, Fault, FaultKind
from iscsicore import fastpath
from iscsicore.cmdsn import Arrival
from iscsicore.digest import digest_bytes, digest_of_parts
from iscsicore.errors import DataDigestError, IscsiProtocolError
from iscsicore.fastpath import data_in_bhs, scsi_response_bhs
from iscsicore.framing import PduFramer
from iscsicore.keys import SessionParams
from iscsicore.pdu import (
    R2T,
    RESERVED_TAG,
    AsyncEvent,
    AsyncMessage,
    DataIn,
    DataOut,
    LogoutReason,
    LogoutRequest,
    LogoutResponse,
    LogoutResponseCode,
    NopIn,
    NopOut,
    Opcode,
    Pdu,
    Reject,
    RejectReason,
    ScsiCommand,
    SnackRequest,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TextResponse,
    TmfFunction,
    TmfResponse,
    lun_number,
)
from iscsicore.scsi.cdb import BLOCK_CDBS
from iscsicore.scsi.opcodes import ScsiOp, ScsiStatus
from iscsicore.scsi.sense import Asc, SenseKey, build_fixed
from iscsicore.seqnum import SERIAL_MASK
from iscsicore.wire import full_cdb
from stargate.queue import Admission, CommandQueue
from stargate.reader_hub import ReaderHub, Turn
from stargate.scsi import tmf
from stargate.scsi.ua import UnitAttentionQueues
from stargate.session import Session
from stargate.stats import IoKind
from stargate.tasks import (
    DataSequence,
    ScsiTask,
    TaskPhase,
    implied_write_blocks,
    with_write_blocks,
)

if TYPE_CHECKING:
    from stargate.target import VDiskTarget

log = logging.getLogger(__name__)

RECEIVE_SIZE = 256 * 1024
# Responses queued before they must go out: bounds memory when an initiator sends many
# large reads at once (and stops reading).
OUTPUT_HIGH_WATER = 4 * 1024 * 1024
# PDUs one connection handles before it sends and lets the other connections run: a vDisk
# with 128 commands in flight must not make a neighbour's single command wait for all of
# them (the one queue is fair only if every connection gets to put its commands in).
# fio, QD 1 p99 beside a QD 128 vDisk: 8 -> ~265 µs, 4 -> ~200 µs, 2 -> ~150 µs; 8 vDisks at
# QD 8 in all: 4 costs ~10-15% of the aggregate against 8 (a send per turn).
TURN_BUDGET = 4
# ... and when it is the only session (no neighbour to wait for it): fewer sends and
# scheduler passes per command.
SOLE_TURN_BUDGET = 64
RESIDUAL_MAX = 0xFFFFFFFF  # the 32-bit Residual Count of a SCSI Response / Data-In
# Largest write a single command may ask for: bounds the buffer one command can pin.
MAX_TRANSFER_BYTES = 16 * 1024 * 1024  # twice the Block Limits maximum the LU reports
INVALID_FIELD_IN_INFORMATION_UNIT = (0x0E, 0x03)
DEFAULT_DATA_OUT_TIMEOUT = 30.0
DEFAULT_PDU_TIMEOUT = 10.0
DEFAULT_CONTROL_PDU_RATE = 2000.0  # per second, per connection (ConnectionTimers)
DEFAULT_CONTROL_PDU_BURST = 256
# A connection out of control-PDU tokens is read again once this share of a second's
# tokens has refilled (at least one): a few wake-ups a second, not one per PDU.
CONTROL_RESUME_SECONDS = 0.01
_PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")

_GOOD = int(ScsiStatus.GOOD)
_COMPLETED = 0  # SCSI Response: command completed at target
# Byte 1 flags of SCSI Response and Data-In (see fastpath.scsi_response_bhs/data_in_bhs)
_OVERFLOW = 0x04
_UNDERFLOW = 0x02
_FINAL_WITH_STATUS = 0x81  # Data-In F and S bits


@dataclass(frozen=True, slots=True)
class ConnectionTimers:
    nop_interval: float = 5.0  # seconds of silence from the initiator before a NOP-In ping
    nop_timeout: float = 10.0  # no byte for this long after a ping: the connection is dead
    # A command holding a queue slot gets this long for the Data-Out it waits for (from the
    # slot or its latest R2T); past it the connection is dropped (ErrorRecoveryLevel 0),
    # which ends its tasks and gives back their slots and buffers.
    data_out_timeout: float = DEFAULT_DATA_OUT_TIMEOUT
    # A PDU whose first bytes came must be complete this long after (a PDU trickled in byte
    # by byte would otherwise hold the connection and its buffer forever): else dropped.
    pdu_timeout: float = DEFAULT_PDU_TIMEOUT
    # PDUs that carry no SCSI work (NOP-Outs, Text Requests, SNACKs) a connection may send:
    # a token bucket of this rate per second and this burst. Past it the connection is not
    # read until tokens refill: its bytes wait in the socket (TCP pushes back on a flooder),
    # none is dropped or reordered, and the other connections are not slowed. 0: unlimited.
    control_pdu_rate: float = DEFAULT_CONTROL_PDU_RATE
    control_pdu_burst: int = DEFAULT_CONTROL_PDU_BURST

    @property
    def watchdog_tick(self) -> float:
        """How often the deadlines are looked at: a quarter of the shorter, within bounds."""
        return max(0.05, min(1.0, self.data_out_timeout / 4, self.pdu_timeout / 4))


class TextResponder(Protocol):
    """Answers Text Requests (SendTargets); fills everything but the sequence numbers."""

    def respond(self, request: TextRequest) -> TextResponse | RejectReason: ...


class TaskDirectory(Protocol):
    """The other connections of this stargate, for resets that reach beyond one session."""

    def connections_of(self, target_name: str) -> list[FullFeatureConnection]: ...


class ByteChannel(Protocol):
    """Where the connection's bytes go: a trio stream, or the server's direct socket."""

    async def receive_some(self, max_bytes: int) -> bytes | bytearray: ...

    async def send_all(self, data: bytes | bytearray) -> None: ...


@runtime_checkable
class ReadySocket(Protocol):
    """A channel with a socket underneath (the server's direct socket): it can be served by
    the server's `ReaderHub`, which needs its descriptor and calls that never wait."""

    def fileno(self) -> int: ...

    def receive_now(self, max_bytes: int) -> bytes | None: ...

    def try_send(self, data: bytearray) -> None: ...


class ConnectionClosed(Exception):
    """Raised inside the connection to end it (logout done, drop requested, fatal error)."""


# Task management functions that end every task the requester sent before them.
_TASK_SET_FUNCTIONS = frozenset(
    {
        TmfFunction.ABORT_TASK_SET,
        TmfFunction.CLEAR_TASK_SET,
        TmfFunction.LOGICAL_UNIT_RESET,
        TmfFunction.TARGET_WARM_RESET,
    }
)
_ANY_LUN_OPCODES = frozenset({ScsiOp.REPORT_LUNS, ScsiOp.INQUIRY, ScsiOp.REQUEST_SENSE})
# The commands `_run_plain` may take: READ/WRITE(10/16); for writes, where the CDB says
# how many blocks (to compare with the EDTL).
_PLAIN_READS = frozenset({int(ScsiOp.READ_10), int(ScsiOp.READ_16)})
_PLAIN_WRITE_BLOCKS = {
    int(op): BLOCK_CDBS[op].blocks_field for op in (ScsiOp.WRITE_10, ScsiOp.WRITE_16)
}


# ---------------------------------------------------------------------------------------
# The connection


class FullFeatureConnection:
    """One logged-in connection. Construct after login, then ``await run()``."""

    def __init__(
        self,
        channel: ByteChannel,
        framer: PduFramer,
        session: Session,
        params: SessionParams,
        queue: CommandQueue,
        *,
        nexus: Any,
        cid: int,
        stat_sn: int,
        timers: ConnectionTimers | None = None,
        text_responder: TextResponder | None = None,
        directory: TaskDirectory | None = None,
        on_close: Callable[[FullFeatureConnection], None] | None = None,
        eager_send_every: int = 0,
        faults: FaultInjector | None = None,
        hub: ReaderHub | None = None,
        log_gate: Callable[[], tuple[bool, int]] | None = None,
    ) -> None:
        self._io: ByteChannel = channel
        # Fault injection: the reader looks at `faults.armed` once per batch; only then do
        # PDUs go through `_on_pdu_with_faults`.
        self.faults = faults if faults is not None else FaultInjector()
        self._fault_handlers: dict[type, Callable[[Any], None]] | None = None
        self._execution_faults: dict[int, Fault] = {}  # by ITT: faults `_execute` applies
        self._keepalive_scope: trio.CancelScope | None = None
        # 0: one send per wake-up. N: also a non-blocking send after every N PDUs handled,
        # so that on a box with spare cores initiator and target overlap instead of taking
        # turns (a tuning knob for benchmarks; A/B runs on a loaded 2-core box were a wash).
        self.eager_send_every = eager_send_every
        # The server's one reader for all connections; serves this one while its channel
        # is a socket (not after a fault replaced it).
        self._hub: ReaderHub | None = None
        self._hub_socket: ReadySocket | None = None
        if hub is not None and isinstance(channel, ReadySocket):
            self._hub, self._hub_socket = hub, channel
        self.framer = framer
        self.session = session
        self.params = params
        self.queue = queue
        self.nexus = nexus
        self.cid = cid
        self.timers = timers or ConnectionTimers()
        # The control-PDU allowance (ConnectionTimers.control_pdu_rate): tokens, when they
        # were counted, and while out of them, when reading resumes (None: not paused).
        self._control_rate = max(0.0, self.timers.control_pdu_rate)
        self._control_burst = float(max(1, self.timers.control_pdu_burst))
        self._control_tokens = self._control_burst
        self._control_stamp = trio.current_time()
        self._control_quantum = min(
            self._control_burst, max(1.0, self._control_rate * CONTROL_RESUME_SECONDS)
        )
        self._control_resume: float | None = None
        self.control_pauses = 0  # times the allowance stopped reading (statistics)
        # Dropped for a protocol error (the server slows the address's next logins).
        self.protocol_error_drop = False
        # From the server: whether to log a protocol error of this peer now (and how many
        # were left out before it); None: always.
        self.log_gate = log_gate
        self._handler_table = self._handlers()
        self.text_responder = text_responder
        self.directory = directory
        self.on_close = on_close
        self.target: VDiskTarget | None = session.target
        self.lu = self.target.lu if self.target is not None else None
        self.block_size = self.target.block_size if self.target is not None else 512
        self.vdisk_key = self.target.name if self.target is not None else ""
        self.vdisk_id = self.target.vdisk_id if self.target is not None else ""
        self.stats = self.target.stats if self.target is not None else None
        # Whom this connection's commands are charged to in the shared queue.
        self.tenant = queue.tenant(self.vdisk_key) if self.lu is not None else None
        self._stat_sn = stat_sn & SERIAL_MASK
        self._tasks: dict[int, ScsiTask] = {}
        self._out = bytearray()
        self._sending = False
        self._send_finished: trio.Event | None = None  # set when a waited-for send ends
        self._unsent = 0
        self._in_batch = False
        self._writer_wakeup = trio.Event()
        self._next_ttt = 1
        self._last_receive = trio.current_time()
        # When the incomplete PDU at the head of the framer began to arrive (None: none).
        self._partial_since: float | None = None
        self._watchdog_scope: trio.CancelScope | None = None
        self._closing_reason: str | None = None  # set: close once the output is flushed
        self._cancel_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._header_digest = params.header_digest
        self._data_digest = params.data_digest
        self._max_send_segment = params.initiator_max_recv_data_segment_length
        self._pending_logout_deadline: float | None = None
        self.logout_requested_at: float | None = None  # wall clock, for the auditor
        self.cmd_sn_out_of_window = 0
        # Session-wide in the RFC; one connection per session, so this connection drives it.
        self._cmd_sn_window = session.window
        self._releasing: Pdu | None = None  # a held PDU being handled in its CmdSN turn
        # Unsolicited Data-Out of held write commands, by ITT, replayed when they are
        # delivered (bool: it failed its data digest). At most FirstBurstLength each.
        self._held_data: dict[int, list[tuple[DataOut, bool]]] = {}

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

    def close(self, reason: str) -> None:
        """End the connection from outside (reinstatement, shutdown, async drop)."""
        if self._closing_reason is None:
            self._closing_reason = reason
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

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
        handlers = self._handler_table
        self._in_batch = True
        try:
            return self._handle_buffered_pdus(
                self._faulted_handlers(handlers) if self.faults.armed else handlers
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

    def _handle_buffered_pdus(self, handlers: dict[type, Callable[[Any], None]]) -> bool:
        """Handle the complete PDUs received; True if it stopped early, its output at
        `OUTPUT_HIGH_WATER` or its turn of `TURN_BUDGET` PDUs used (then send, let the other
        connections run, and come back for the rest)."""
        framer = self.framer
        eager_every = self.eager_send_every
        try_send = getattr(self._io, "try_send", None) if eager_every else None
        handled = 0
        budget = TURN_BUDGET if self.queue.sessions > 1 else SOLE_TURN_BUDGET
        held = self._cmd_sn_window.held
        try:
            while len(self._out) < OUTPUT_HIGH_WATER and handled < budget:
                try:
                    pdu = framer.next_pdu()
                except IscsiProtocolError as error:
                    self._protocol_error(error)
                    continue
                if pdu is None:
                    if not framer.buffered:
                        self._partial_since = None
                    elif handled or self._partial_since is None:
                        self._partial_since = self._last_receive  # a new PDU begins
                    return False
                handler = handlers.get(type(pdu))
                if handler is None:
                    self._reject(pdu, RejectReason.PROTOCOL_ERROR)
                else:
                    handler(pdu)
                if held:
                    self._release_held()
                handled += 1
                if try_send is not None and handled % eager_every == 0 and not self._sending:
                    # Let the initiator start on these responses while we do the rest.
                    try_send(self._out)
        except _StopBatch:
            return False
        self._partial_since = None  # what is buffered next is looked at next turn
        return True

    def _handlers(self) -> dict[type, Callable[[Any], None]]:
        control = self._control_allowance if self._control_rate else lambda handler: handler
        return {
            ScsiCommand: self._on_scsi_command,
            DataOut: self._on_data_out,
            NopOut: control(self._on_nop_out),
            TaskMgmtRequest: self._on_task_management,
            TextRequest: control(self._on_text),
            LogoutRequest: self._on_logout,
            SnackRequest: control(self._on_snack),
        }

    def _control_allowance(self, handler: Callable[[Any], None]) -> Callable[[Any], None]:
        """``handler`` (of a PDU that carries no SCSI work), charged to the connection's
        control-PDU allowance; SCSI commands and Data-Out never pass here."""

        def charged(pdu: Any) -> None:
            handler(pdu)
            self._spend_control_token()

        return charged

    def _spend_control_token(self) -> None:
        """Count one control PDU (already handled: none is dropped); out of tokens, stop
        the batch and note when reading may resume (`_serve_buffered`, `serve_turn`)."""
        now = trio.current_time()
        rate = self._control_rate
        tokens = self._control_tokens + (now - self._control_stamp) * rate
        tokens = min(self._control_burst, tokens) - 1.0
        self._control_stamp = now
        self._control_tokens = tokens
        if tokens >= 1.0:
            return
        self.control_pauses += 1
        self._control_resume = now + (self._control_quantum - tokens) / rate
        if self._cmd_sn_window.held:
            self._release_held()  # what this PDU's CmdSN let through goes now, in order
        raise _StopBatch

    def _protocol_error(self, error: IscsiProtocolError) -> None:
        allowed, left_out = self.log_gate() if self.log_gate is not None else (True, 0)
        if allowed:  # a peer can repeat these at will: the server may rate-limit them
            more = f" ({left_out} more like it not logged)" if left_out else ""
            log.info("protocol error from %s: %s%s", self.session.initiator_name, error, more)
        if error.header is not None:
            self._queue_reject(error.header, error.reject_reason)
        if error.fatal:
            # The byte stream cannot be trusted any more: say why, then drop.
            self._closing_reason = f"protocol error: {error}"
            self.protocol_error_drop = True
            raise _StopBatch
        if isinstance(error, DataDigestError) and error.header is not None:
            self._data_digest_error(error.header)

    # -- sending --------------------------------------------------------------------------

    def _append(self, pdu: Pdu) -> None:
        """Encode ``pdu`` into the output buffer (BHS, digests, data, padding)."""
        self._append_bhs(fastpath.encode_bhs(pdu, 0), pdu.data)

    def _append_bhs(self, bhs: bytes, data: bytes | bytearray | memoryview) -> None:
        """Queue an encoded BHS (no AHS) and its data segment, with digests and padding."""
        out = self._out
        out += bhs
        if self._header_digest:
            out += digest_bytes(bhs)
        length = len(data)
        if length:
            out += data
            padding = _PADDING[length & 3]
            if padding:
                out += padding
            if self._data_digest:
                out += digest_of_parts(data, padding)

    def _wake_writer(self) -> None:
        if not self._in_batch:
            self._writer_wakeup.set()

    async def _flush(self) -> None:
        """Send the output; if another task is sending, wait until it has sent everything
        (it drains whatever is appended meanwhile)."""
        while self._sending:
            if self._send_finished is None:
                self._send_finished = trio.Event()
            await self._send_finished.wait()
        self._sending = True
        try:
            while self._out:
                chunk = self._out
                self._out = bytearray()
                self._unsent = len(chunk)
                await self._io.send_all(chunk)
        finally:
            self._sending = False
            self._unsent = 0
            if self._send_finished is not None:
                self._send_finished.set()
                self._send_finished = None

    @property
    def buffered_output(self) -> int:
        """Response bytes held in memory: queued, or handed to a send not yet finished."""
        return len(self._out) + self._unsent

    async def _writer(self) -> None:
        while True:
            await self._writer_wakeup.wait()
            self._writer_wakeup = trio.Event()
            await self._flush()
            if self._closing_reason is not None:
                self.close(self._closing_reason)
                return

    def _next_stat_sn(self) -> int:
        stat_sn = self._stat_sn
        self._stat_sn = (stat_sn + 1) & SERIAL_MASK
        return stat_sn

    def _window(self) -> tuple[int, int]:
        """(ExpCmdSN, MaxCmdSN) to put in the next PDU."""
        queue = self.queue
        if queue.waiting == 0 and queue.in_flight < queue.depth // 2:
            # Plenty of room: the share formula without the calls (hot path).
            sessions = queue.sessions
            share = (queue.depth - queue.in_flight) // (sessions if sessions > 1 else 1) or 1
        else:
            share = queue.window_share(self)
        window = self._cmd_sn_window
        return window.exp_cmd_sn, window.advertise(share)

    def window_opened(self) -> None:
        """Queue slots are free again: tell the initiator with a NOP-In (no reply wanted)."""
        exp_cmd_sn, max_cmd_sn = self._window()
        self._append(NopIn(stat_sn=self._stat_sn, exp_cmd_sn=exp_cmd_sn, max_cmd_sn=max_cmd_sn))
        self._wake_writer()

    def _queue_reject(self, header: bytes, reason: int) -> None:
        exp_cmd_sn, max_cmd_sn = self._window()
        self._append(
            Reject(
                reason=reason,
                stat_sn=self._next_stat_sn(),
                exp_cmd_sn=exp_cmd_sn,
                max_cmd_sn=max_cmd_sn,
                data_sn_or_r2t_sn=0,
                data=header[:48],
            )
        )

    def _reject(self, pdu: Pdu, reason: int) -> None:
        self._queue_reject(fastpath.encode_bhs(pdu), reason)

    # -- command ordering -----------------------------------------------------------------

    def _in_order(self, pdu: Any, handler: Callable[[Any], None]) -> bool:
        """Whether to handle ``pdu`` (a PDU with a CmdSN) now. If not, it is held until the
        CmdSNs before it arrive (then ``handler(pdu)`` runs in its turn), or it is outside
        the window and silently ignored (RFC 7143 section 3.2.2.1)."""
        if pdu is self._releasing:
            return True  # its turn came: the window already counted it
        arrival = self._cmd_sn_window.arrive(
            pdu.cmd_sn, immediate=pdu.immediate, item=(handler, pdu)
        )
        if arrival is Arrival.DROPPED:
            self.cmd_sn_out_of_window += 1  # for the initiator auditor
        elif arrival is Arrival.HELD and isinstance(pdu, ScsiCommand) and not pdu.final:
            self._held_data[pdu.itt] = []  # its unsolicited Data-Out follows it
        return arrival is Arrival.DELIVER

    def _release_held(self) -> None:
        """Handle the held PDUs whose CmdSN gap has filled, in CmdSN order (a write with
        the unsolicited data that came while it was held)."""
        window = self._cmd_sn_window
        while (ready := window.pop_ready()) is not None:
            handler, pdu = ready
            self._releasing = pdu
            try:
                handler(pdu)
            finally:
                self._releasing = None
            if not isinstance(pdu, ScsiCommand) or not self._held_data:
                continue
            for data_out, digest_failed in self._held_data.pop(pdu.itt, ()):
                if digest_failed:
                    self._digest_failed_data_out(data_out)
                else:
                    self._on_data_out(data_out)

    def _forget_held(self, items: list[tuple[Callable[[Any], None], Pdu]]) -> None:
        """Held PDUs that will never be delivered (aborted): forget their data too."""
        for _, pdu in items:
            if isinstance(pdu, ScsiCommand):
                self._held_data.pop(pdu.itt, None)

    def _hold_data_out(self, pdu: DataOut, *, digest_failed: bool = False) -> None:
        """Keep an unsolicited Data-Out of a held command for its delivery (any other
        Data-Out without a task is dropped)."""
        held = self._held_data.get(pdu.itt) if self._held_data else None
        if held is None or pdu.ttt != RESERVED_TAG:
            return
        if sum(len(d.data) for d, _ in held) + len(pdu.data) <= self.params.first_burst_length:
            held.append((pdu, digest_failed))
        # Else more than an unsolicited burst may carry: dropped; the sequence check fails
        # the command when it runs.

    # -- SCSI commands ------------------------------------------------------------------

    def _on_scsi_command(self, command: ScsiCommand) -> None:
        if self.lu is None:  # discovery session: text and logout only
            self._reject(command, RejectReason.PROTOCOL_ERROR)
            return
        window = self._cmd_sn_window
        cmd_sn = command.cmd_sn
        if (
            not command.immediate
            and cmd_sn == window.exp_cmd_sn
            and (cmd_sn != (window.max_cmd_sn + 1) & SERIAL_MASK)
        ):
            window.exp_cmd_sn = (cmd_sn + 1) & SERIAL_MASK  # the common case, inline
        elif not self._in_order(command, self._on_scsi_command):
            # Held for its turn, or silently ignored (its Data-Out, if any, finds no task
            # and is dropped too).
            return
        if command.itt in self._tasks:
            self._reject(command, RejectReason.TASK_IN_PROGRESS)
            return
        if not command.ahs and not command.lun and not self._execution_faults:
            cdb = command.cdb
            opcode = cdb[0]
            if opcode in _PLAIN_READS:
                if (
                    command.read
                    and not command.write
                    and self.queue.admit_now(self.vdisk_key, 0, self.tenant)
                ):
                    self._run_plain(command, cdb, b"", IoKind.READ, 0)
                    return
            elif opcode in _PLAIN_WRITE_BLOCKS:
                edtl = command.expected_data_transfer_length
                if (
                    command.write
                    and command.final
                    and not command.read
                    and 0 < edtl <= MAX_TRANSFER_BYTES
                    and len(command.data) == edtl
                    and _PLAIN_WRITE_BLOCKS[opcode].unpack_from(cdb)[0] * self.block_size == edtl
                    and self.queue.admit_now(self.vdisk_key, edtl, self.tenant)
                ):
                    self._run_plain(command, cdb, command.data, IoKind.WRITE, edtl)
                    return
        cdb = full_cdb(command) if command.ahs else command.cdb
        task = ScsiTask(self, command, cdb)
        if self.stats is not None:
            self.stats.command_started()
        if command.lun and lun_number(command.lun) != 0 and cdb[0] not in _ANY_LUN_OPCODES:
            self._finish(task, ScsiStatus.CHECK_CONDITION, sense=self._sense_lun_unsupported())
            return
        if (command.write or task.kind is IoKind.WRITE) and not self._plan_data_out(task):
            return
        if task.needed or task.unsolicited is not None:
            self._accept_immediate_data(task, command.data)
        admission = self.queue.admit(self.vdisk_key, task)
        if admission is Admission.RUN:
            task.has_slot = True
            if task.data_complete:
                # Uncontended and no data to wait for: run inline, never registered (nothing
                # can refer to it before it completes, unless it goes on to sync).
                task.phase = TaskPhase.RECEIVING
                self._allocate_buffer(task)
                self._execute(task)
                return
            self._tasks[task.itt] = task
            self._slot_granted(task)
            return
        self._tasks[task.itt] = task
        if admission is Admission.FULL:
            if self.stats is not None:
                self.stats.task_set_full += 1
            self._finish(task, ScsiStatus.TASK_SET_FULL)
        elif self.stats is not None:
            self.stats.queued_waiting += 1

    def _run_plain(
        self,
        command: ScsiCommand,
        cdb: bytes,
        data_out: bytes | bytearray | memoryview,
        kind: IoKind,
        buffer_bytes: int,
    ) -> None:
        """A READ/WRITE(10/16) on LUN 0 that already holds its queue slot (``admit_now``)
        and all its data (a write's EDTL is exactly its CDB's length, all immediate): run
        at once, without a task object. Never registered, as the general path's inline
        commands: nothing can refer to it before its status. Answered exactly as `_finish`
        would answer the same command (a sync, when needed, takes the general route)."""
        started_ns = time.perf_counter_ns()
        assert self.lu is not None
        result = self.lu.execute(cdb, data_out, self.nexus)
        status = result.status
        stats = self.stats
        if result.needs_sync and status == _GOOD:
            if stats is not None:
                stats.command_started()
            task = ScsiTask(self, command, cdb)
            task.started_ns = started_ns
            task.has_slot = True
            task.needed = task.received = buffer_bytes
            self._start_sync(task, result)
            return
        self.queue.release(buffer_bytes, self.tenant)
        data = result.data
        edtl = command.expected_data_transfer_length
        if status == _GOOD and kind is IoKind.WRITE:
            # All of the EDTL written, nothing to report but GOOD (as `_send_status_of`).
            exp_cmd_sn, max_cmd_sn = self._window()
            self._append_bhs(
                scsi_response_bhs(
                    0,
                    _COMPLETED,
                    _GOOD,
                    0,
                    command.itt,
                    0,
                    self._next_stat_sn(),
                    exp_cmd_sn,
                    max_cmd_sn,
                    0,
                    0,
                    0,
                ),
                b"",
            )
        elif (
            status == _GOOD
            and 0 < edtl == len(data)
            and edtl <= self._max_send_segment
            and edtl <= self.params.max_burst_length
        ):
            # Exactly the EDTL read, in one Data-In carrying the status (as `_send_data_in`).
            exp_cmd_sn, max_cmd_sn = self._window()
            self._append_bhs(
                data_in_bhs(
                    _FINAL_WITH_STATUS,
                    _GOOD,
                    edtl,
                    command.lun,
                    command.itt,
                    RESERVED_TAG,
                    self._next_stat_sn(),
                    exp_cmd_sn,
                    max_cmd_sn,
                    0,
                    0,
                    0,
                ),
                data,
            )
        else:
            self._send_status_of(
                command.itt, command.lun, edtl, command.read, None, status, data, result.sense
            )
        if stats is not None:
            stats.command_completed(
                kind,
                buffer_bytes if kind is IoKind.WRITE else len(data),
                time.perf_counter_ns() - started_ns,
                status == _GOOD,
            )

    def _plan_data_out(self, task: ScsiTask) -> bool:
        """Work out how much Data-Out to collect and the write residual; False if failed."""
        command = task.command
        edtl = task.edtl if command.write else 0
        blocks = (
            implied_write_blocks(task.cdb) if command.write or task.kind is IoKind.WRITE else None
        )
        if blocks is None:
            needed = edtl
        else:
            implied = blocks * self.block_size
            needed = min(edtl, implied)
            if task.cdb[0] == ScsiOp.COMPARE_AND_WRITE and edtl != implied:
                # Atomic: half a compare-and-write means nothing. The CDB (whose NUMBER OF
                # LOGICAL BLOCKS is what disagrees with the data) is at fault.
                task.residual = (edtl < implied, abs(implied - edtl))
                self._finish(
                    task,
                    ScsiStatus.CHECK_CONDITION,
                    sense=build_fixed(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB),
                )
                return False
            if edtl < implied:
                # A CDB may imply up to 2**41 bytes: the Residual Count field saturates.
                task.residual = (True, min(implied - edtl, RESIDUAL_MAX))
                patched = with_write_blocks(task.cdb, edtl // self.block_size)
                if edtl % self.block_size or patched is None:
                    self._finish(
                        task,
                        ScsiStatus.CHECK_CONDITION,
                        sense=build_fixed(
                            SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_INFORMATION_UNIT
                        ),
                    )
                    return False
                task.cdb = patched
            elif edtl > implied:
                task.residual = (False, edtl - implied)
        if needed > MAX_TRANSFER_BYTES:
            self._finish(
                task,
                ScsiStatus.CHECK_CONDITION,
                sense=build_fixed(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB),
            )
            return False
        task.needed = needed
        if not command.write:
            return True
        immediate_length = len(command.data)
        # Unsolicited data beyond the immediate data: a Data-Out burst with TTT 0xffffffff.
        if not command.final:
            burst_end = min(task.edtl, self.params.first_burst_length)
            task.unsolicited = DataSequence(
                ttt=RESERVED_TAG, end=burst_end, next_offset=immediate_length
            )
            task.next_r2t_offset = burst_end
        else:
            task.next_r2t_offset = immediate_length
        return True

    def _accept_immediate_data(self, task: ScsiTask, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._store_data(task, 0, data)

    def _store_data(
        self, task: ScsiTask, offset: int, data: bytes | bytearray | memoryview
    ) -> None:
        if offset >= task.needed:
            return  # data the CDB does not use (EDTL > transfer length): discarded
        length = len(data)
        end = min(offset + length, task.needed)
        buffer = task.buffer
        if buffer is None:
            # Held as received when all of it is used (the common case): no view to make.
            task.early_data.append(
                (offset, data if end - offset == length else memoryview(data)[: end - offset])
            )
        else:
            if not isinstance(buffer, bytearray):  # the received data itself, in use as is
                buffer = task.buffer = bytearray(buffer)
            _put(buffer, offset, memoryview(data)[: end - offset])
        task.received += end - offset

    @staticmethod
    def _allocate_buffer(task: ScsiTask) -> None:
        """The write buffer, started only with a slot (and its bytes) held, with the data
        received so far: it grows as the rest arrives (`_store_data`), so a command whose
        data never comes holds no memory for it."""
        if task.needed and task.buffer is None:
            early_data = task.early_data
            if len(early_data) == 1 and task.data_complete:
                offset, chunk = early_data[0]
                if offset == 0 and len(chunk) == task.needed and type(chunk) is not memoryview:
                    # All the data came in one piece (immediate data): use it as it is,
                    # nothing will be written into the buffer any more.
                    task.buffer = chunk
                    early_data.clear()
                    return
            buffer = task.buffer = bytearray()
            for offset, chunk in early_data:
                _put(buffer, offset, chunk)
            early_data.clear()

    def _slot_granted(self, task: ScsiTask) -> None:
        """The task holds a queue slot: collect its data or run it."""
        if task.aborted:
            self.queue.release(task.needed, self.tenant)
            task.has_slot = False
            return
        task.phase = TaskPhase.RECEIVING
        if task.data_digest_failed:
            return  # ends when the rest of its unsolicited data has come (and is discarded)
        self._allocate_buffer(task)
        if task.data_complete:
            self._execute(task)
        else:
            task.data_since = trio.current_time()  # the Data-Out deadline starts
            self._send_r2ts(task)
        # Granted from another connection's wake-up (a slot freed there): our writer sends.
        self._wake_writer()

    def _send_r2ts(self, task: ScsiTask) -> None:
        if not task.has_slot or task.data_digest_failed:
            return
        params = self.params
        while task.next_r2t_offset < task.needed and len(task.r2ts) < params.max_outstanding_r2t:
            offset = task.next_r2t_offset
            length = min(params.max_burst_length, task.needed - offset)
            ttt = self._new_ttt()
            task.r2ts[ttt] = DataSequence(ttt=ttt, end=offset + length, next_offset=offset)
            task.next_r2t_offset = offset + length
            exp_cmd_sn, max_cmd_sn = self._window()
            self._append(
                R2T(
                    lun=task.command.lun,
                    itt=task.itt,
                    ttt=ttt,
                    stat_sn=self._stat_sn,
                    exp_cmd_sn=exp_cmd_sn,
                    max_cmd_sn=max_cmd_sn,
                    r2t_sn=task.r2t_sn,
                    buffer_offset=offset,
                    desired_data_transfer_length=length,
                )
            )
            task.r2t_sn += 1
            task.data_since = trio.current_time()  # each burst asked for gets the full time

    def _new_ttt(self) -> int:
        ttt = self._next_ttt
        self._next_ttt = ttt + 1 if ttt < 0xFFFFFFFE else 1
        return ttt

    # -- Data-Out -------------------------------------------------------------------------

    def _on_data_out(self, pdu: DataOut) -> None:
        task = self._tasks.get(pdu.itt)
        if task is None or task.phase is TaskPhase.SYNCING or task.phase is TaskPhase.DONE:
            # For a command already answered (failed, aborted, ignored): dropped. For one
            # held behind a CmdSN gap: kept for its turn.
            if task is None:
                self._hold_data_out(pdu)
            return
        if task.data_digest_failed:
            self._discard_data_out(task, pdu)
            return
        sequence = task.unsolicited if pdu.ttt == RESERVED_TAG else task.r2ts.get(pdu.ttt)
        length = len(pdu.data)
        if (
            sequence is None
            or pdu.data_sn != sequence.next_data_sn
            or pdu.buffer_offset != sequence.next_offset
            or pdu.buffer_offset + length > sequence.end
            or (pdu.final and pdu.buffer_offset + length != sequence.end)
        ):
            self._data_sequence_error(task, pdu)
            return
        sequence.next_data_sn += 1
        sequence.next_offset += length
        self._store_data(task, pdu.buffer_offset, pdu.data)
        if not pdu.final:
            return
        if sequence.ttt == RESERVED_TAG:
            task.unsolicited = None
        else:
            del task.r2ts[sequence.ttt]
        if not task.has_slot:
            return
        if task.data_complete and not task.r2ts:
            self._execute(task)
        else:
            self._send_r2ts(task)

    def _data_sequence_error(self, task: ScsiTask, pdu: DataOut) -> None:
        """A Data-Out out of sequence (DataSN, offset, length): Reject it and fail the
        command; with ErrorRecoveryLevel 0 there is no recovery of the sequence."""
        self._reject(pdu, RejectReason.PROTOCOL_ERROR)
        self._finish(
            task,
            ScsiStatus.CHECK_CONDITION,
            sense=build_fixed(SenseKey.ABORTED_COMMAND, Asc.DATA_PHASE_ERROR),
        )

    def _data_digest_error(self, header: bytes) -> None:
        """A PDU failed its data digest (already Rejected, RFC 7143 section 7.8). A SCSI
        Command or NOP-Out needs nothing more: the initiator retries it. A Data-Out fails
        its task, which ends with CHECK CONDITION, PROTOCOL SERVICE CRC ERROR once the
        initiator has sent the rest of the data it was asked for (ErrorRecoveryLevel 0: no
        recovery R2T)."""
        if header[0] & 0x3F != Opcode.DATA_OUT:
            return
        pdu = fastpath.decode_bhs(header, b"")
        assert isinstance(pdu, DataOut)
        self._digest_failed_data_out(pdu)

    def _digest_failed_data_out(self, pdu: DataOut) -> None:
        """The header of a Data-Out whose data failed its digest: its task is failed."""
        task = self._tasks.get(pdu.itt)
        if task is None:
            self._hold_data_out(pdu, digest_failed=True)  # its command is held
            return
        if task.phase is TaskPhase.SYNCING or task.phase is TaskPhase.DONE:
            return
        task.data_digest_failed = True
        self._discard_data_out(task, pdu)

    def _discard_data_out(self, task: ScsiTask, pdu: DataOut) -> None:
        """A Data-Out of a task whose data failed its digest: only its F bit counts, which
        ends a sequence; when none is left, the task ends."""
        if pdu.final:
            if pdu.ttt == RESERVED_TAG:
                task.unsolicited = None
            else:
                task.r2ts.pop(pdu.ttt, None)
        if task.unsolicited is None and not task.r2ts:
            self._finish(
                task,
                ScsiStatus.CHECK_CONDITION,
                sense=build_fixed(SenseKey.ABORTED_COMMAND, Asc.PROTOCOL_SERVICE_CRC_ERROR),
            )
            self.queue.forget_cancelled()  # if it was still waiting for a slot
            self._wake_writer()

    # -- execution and status -------------------------------------------------------------

    def _execute(self, task: ScsiTask) -> None:
        assert self.lu is not None
        if self._execution_faults:
            fault = self._execution_faults.pop(task.itt, None)
            if fault is not None:
                self._execute_faulted(task, fault)
                return
        data_out: bytes | bytearray | memoryview = task.buffer if task.buffer is not None else b""
        if task.command.lun and lun_number(task.command.lun) != 0 and task.cdb[0] == ScsiOp.INQUIRY:
            result_status, result_data, result_sense = _GOOD, _no_lun_inquiry(task.cdb), b""
            self._finish(task, result_status, result_data, result_sense)
            return
        result = self.lu.execute(task.cdb, data_out, self.nexus)
        if result.needs_sync and result.status == _GOOD:
            self._start_sync(task, result)
            return
        self._finish(task, result.status, result.data, result.sense)

    def _start_sync(self, task: ScsiTask, result: Any) -> None:
        task.phase = TaskPhase.SYNCING
        self._tasks[task.itt] = task  # abortable (its status suppressed) while syncing
        assert self._nursery is not None
        self._nursery.start_soon(self._sync_then_finish, task, result)

    async def _sync_then_finish(self, task: ScsiTask, result: Any) -> None:
        assert self.lu is not None
        store = self.lu.store
        try:
            # Shielded: a write the initiator may already count on is synced and answered
            # (if the connection still stands) even while the connection shuts down.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(store.sync)
        except OSError as error:
            log.error("fdatasync failed on %s: %s", self.vdisk_key, error)
            self._finish(
                task,
                ScsiStatus.CHECK_CONDITION,
                sense=build_fixed(SenseKey.MEDIUM_ERROR, Asc.WRITE_ERROR),
            )
        else:
            self._finish(task, result.status, result.data, result.sense)
        self._wake_writer()

    def _finish(
        self,
        task: ScsiTask,
        status: int,
        data: bytes | bytearray | memoryview = b"",
        sense: bytes = b"",
    ) -> None:
        """Queue the task's Data-In and status, give back its slot, count it."""
        if task.phase is TaskPhase.DONE:
            return
        task.phase = TaskPhase.DONE
        if self._tasks.get(task.itt) is task:
            del self._tasks[task.itt]
        if task.has_slot:
            task.has_slot = False
            self.queue.release(task.needed, self.tenant)
        if not task.aborted:
            self._send_status(task, status, data, sense)
        if self.stats is not None:
            moved = task.needed if task.kind is IoKind.WRITE else len(data)
            self.stats.command_finished(
                task.kind, moved, time.perf_counter_ns() - task.started_ns, good=status == _GOOD
            )

    def _send_status(
        self, task: ScsiTask, status: int, data: bytes | bytearray | memoryview, sense: bytes
    ) -> None:
        self._send_status_of(
            task.itt,
            task.command.lun,
            task.edtl,
            task.command.read,
            task.residual,
            status,
            data,
            sense,
        )

    def _send_status_of(
        self,
        itt: int,
        lun: int,
        edtl: int,
        read: bool,
        write_residual: tuple[bool, int] | None,
        status: int,
        data: bytes | bytearray | memoryview,
        sense: bytes,
    ) -> None:
        """Queue a command's Data-In and status (``write_residual``: fixed at arrival)."""
        sent = 0
        if write_residual is not None:
            overflow, residual = write_residual
        elif read:
            available = len(data)
            sent = min(available, edtl)
            if available > edtl:
                overflow, residual = True, available - edtl
            else:
                overflow, residual = False, edtl - sent
        else:
            # A write moved all of its EDTL (mismatches with the CDB set task.residual);
            # reporting the EDTL as residual makes Linux retry the write forever.
            overflow, residual = False, 0
        underflow = residual > 0 and not overflow
        overflow = residual > 0 and overflow
        collapse = status == _GOOD and not sense
        exp_cmd_sn, max_cmd_sn = self._window()
        data_in_count = 0
        if sent:
            data_in_count = self._send_data_in(
                itt, lun, data, sent, collapse, status, overflow, underflow, residual, max_cmd_sn
            )
            if collapse:
                return
        sense_data = struct.pack(">H", len(sense)) + sense if sense else b""
        self._append_bhs(
            scsi_response_bhs(
                (_OVERFLOW if overflow else 0) | (_UNDERFLOW if underflow else 0),
                _COMPLETED,
                status,
                len(sense_data),
                itt,
                0,
                self._next_stat_sn(),
                exp_cmd_sn,
                max_cmd_sn,
                data_in_count,
                0,
                residual,
            ),
            sense_data,
        )

    def _send_data_in(
        self,
        itt: int,
        lun: int,
        data: bytes | bytearray | memoryview,
        total: int,
        collapse: bool,
        status: int,
        overflow: bool,
        underflow: bool,
        residual: int,
        max_cmd_sn: int,
    ) -> int:
        """Queue Data-In PDUs for ``data[:total]``; the status rides on the last one when
        ``collapse``. Returns how many PDUs were queued."""
        segment = self._max_send_segment
        burst = self.params.max_burst_length
        exp_cmd_sn = self._cmd_sn_window.exp_cmd_sn
        if total <= segment and total <= burst and collapse:
            # One PDU carries data and status: the 4 KiB read case, without the loop and
            # without a DataIn object.
            self._append_bhs(
                data_in_bhs(
                    _FINAL_WITH_STATUS
                    | (_OVERFLOW if overflow else 0)
                    | (_UNDERFLOW if underflow else 0),
                    status,
                    total,
                    lun,
                    itt,
                    RESERVED_TAG,
                    self._next_stat_sn(),
                    exp_cmd_sn,
                    max_cmd_sn,
                    0,
                    0,
                    residual,
                ),
                data if total == len(data) else memoryview(data)[:total],
            )
            return 1
        view = memoryview(data)
        offset = 0
        data_sn = 0
        while offset < total:
            burst_left = burst - offset % burst
            length = min(segment, total - offset, burst_left)
            end = offset + length
            last = end >= total
            pdu = DataIn(
                final=last or length == burst_left,
                lun=lun,
                itt=itt,
                stat_sn=0,
                exp_cmd_sn=exp_cmd_sn,
                max_cmd_sn=max_cmd_sn,
                data_sn=data_sn,
                buffer_offset=offset,
                data=view[offset:end],
            )
            if last and collapse:
                pdu.status_present = True
                pdu.status = status
                pdu.overflow = overflow
                pdu.underflow = underflow
                pdu.residual_count = residual
                pdu.stat_sn = self._next_stat_sn()
            self._append(pdu)
            offset = end
            data_sn += 1
        return data_sn

    def _sense_lun_unsupported(self) -> bytes:
        return build_fixed(SenseKey.ILLEGAL_REQUEST, Asc.LOGICAL_UNIT_NOT_SUPPORTED)

    # -- NOP ------------------------------------------------------------------------------

    def _on_nop_out(self, pdu: NopOut) -> None:
        if pdu.itt == RESERVED_TAG:
            return  # the answer to our ping (any byte already proved the peer alive)
        if not self._in_order(pdu, self._on_nop_out):
            return
        exp_cmd_sn, max_cmd_sn = self._window()
        echo = pdu.data[: self._max_send_segment]
        self._append(
            NopIn(
                lun=pdu.lun,
                itt=pdu.itt,
                ttt=RESERVED_TAG,
                stat_sn=self._next_stat_sn(),
                exp_cmd_sn=exp_cmd_sn,
                max_cmd_sn=max_cmd_sn,
                data=echo,
            )
        )

    async def _keepalive(self) -> None:
        """Ping an idle initiator; drop the connection when it stays silent."""
        with trio.CancelScope() as self._keepalive_scope:
            await self._keepalive_loop()

    async def _keepalive_loop(self) -> None:
        interval = self.timers.nop_interval
        while True:
            await trio.sleep(interval)
            if self._pending_logout_deadline is not None and (
                trio.current_time() >= self._pending_logout_deadline
            ):
                self.close("the initiator did not log out when asked to")
                return
            if trio.current_time() - self._last_receive < interval:
                continue
            pinged_at = trio.current_time()
            exp_cmd_sn, max_cmd_sn = self._window()
            self._append(
                NopIn(
                    lun=0,
                    itt=RESERVED_TAG,
                    ttt=self._new_ttt(),
                    stat_sn=self._stat_sn,
                    exp_cmd_sn=exp_cmd_sn,
                    max_cmd_sn=max_cmd_sn,
                )
            )
            await self._flush()
            deadline = pinged_at + self.timers.nop_timeout
            while self._last_receive < pinged_at:
                now = trio.current_time()
                if now >= deadline:
                    self.close("no answer to NOP-In: connection presumed dead")
                    return
                await trio.sleep(min(0.5, deadline - now))

    async def _watchdog(self) -> None:
        """Drop the connection when a PDU stays incomplete, or a command holding a slot
        gets no Data-Out, past its deadline (`ConnectionTimers`): at ErrorRecoveryLevel 0
        that is the answer, and it gives back the slots and buffers the peer held."""
        timers = self.timers
        with trio.CancelScope() as self._watchdog_scope:
            while True:
                await trio.sleep(timers.watchdog_tick)
                now = trio.current_time()
                partial_since = self._partial_since
                if partial_since is not None and now - partial_since > timers.pdu_timeout:
                    self._drop_overdue(
                        f"a PDU stayed incomplete for {timers.pdu_timeout:g} s "
                        f"({self.framer.buffered} bytes)"
                    )
                    return
                for task in self._tasks.values():
                    if (
                        task.has_slot
                        and task.phase is TaskPhase.RECEIVING
                        # data asked for (R2Ts withheld by a fault are our own doing)
                        and (task.r2ts or task.unsolicited is not None)
                        and now - task.data_since > timers.data_out_timeout
                    ):
                        self._drop_overdue(
                            f"no Data-Out for ITT {task.itt:#x} within "
                            f"{timers.data_out_timeout:g} s ({task.received} of "
                            f"{task.needed} bytes)"
                        )
                        return

    def _drop_overdue(self, reason: str) -> None:
        log.warning("dropping a connection of %s: %s", self.session.initiator_name, reason)
        self.close(reason)

    # -- text, logout, SNACK ----------------------------------------------------------------

    def _on_text(self, pdu: TextRequest) -> None:
        if not self._in_order(pdu, self._on_text):
            return
        if self.text_responder is None:
            self._reject(pdu, RejectReason.COMMAND_NOT_SUPPORTED)
            return
        answer = self.text_responder.respond(pdu)
        if isinstance(answer, RejectReason):
            self._reject(pdu, answer)
            return
        exp_cmd_sn, max_cmd_sn = self._window()
        answer.stat_sn = self._next_stat_sn()
        answer.exp_cmd_sn = exp_cmd_sn
        answer.max_cmd_sn = max_cmd_sn
        self._append(answer)

    def _on_logout(self, pdu: LogoutRequest) -> None:
        if not self._in_order(pdu, self._on_logout):
            return
        if pdu.reason == LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY:
            response = LogoutResponseCode.RECOVERY_NOT_SUPPORTED
        elif pdu.reason == LogoutReason.CLOSE_CONNECTION and pdu.cid != self.cid:
            response = LogoutResponseCode.CID_NOT_FOUND
        else:
            response = LogoutResponseCode.SUCCESS
        if response is LogoutResponseCode.SUCCESS and self.lu is not None:
            # The I_T nexus ends here (one connection per session): its SPC-2 reservation
            # and the like must be gone before the initiator reads the response and sends
            # its next command on another session (libiscsi's Sanitize.Reset does). The
            # server's own call when the connection ends is then a no-op.
            self.lu.nexus_lost(self.nexus)
        exp_cmd_sn, max_cmd_sn = self._window()
        self._append(
            LogoutResponse(
                response=response,
                itt=pdu.itt,
                stat_sn=self._next_stat_sn(),
                exp_cmd_sn=exp_cmd_sn,
                max_cmd_sn=max_cmd_sn,
                time2wait=0,
                time2retain=0,
            )
        )
        if response is LogoutResponseCode.SUCCESS:
            self._closing_reason = "logged out"
            raise _StopBatch

    def _on_snack(self, pdu: SnackRequest) -> None:
        # ErrorRecoveryLevel 0: there is nothing to retransmit from.
        self._reject(pdu, RejectReason.PROTOCOL_ERROR)

    # -- task management ------------------------------------------------------------------

    def _on_task_management(self, pdu: TaskMgmtRequest) -> None:
        if not self._in_order(pdu, self._on_task_management):
            return
        if self.lu is None or self.target is None:
            response = TmfResponse.REJECTED  # discovery session: no tasks, no LUs
            outcome = None
        else:
            outcome = self._decide_task_management(pdu)
            response = outcome.response
        exp_cmd_sn, max_cmd_sn = self._window()
        self._append(
            TaskMgmtResponse(
                response=response,
                itt=pdu.itt,
                stat_sn=self._next_stat_sn(),
                exp_cmd_sn=exp_cmd_sn,
                max_cmd_sn=max_cmd_sn,
            )
        )
        if outcome is not None and outcome.close_all_connections:
            self._closing_reason = "target cold reset"
            raise _StopBatch

    def _decide_task_management(self, pdu: TaskMgmtRequest) -> tmf.TmfOutcome:
        """Decide with `stargate.scsi.tmf` over the task set of the whole target (every
        session of this vDisk), then apply the outcome: end tasks, unit attentions, resets."""
        assert self.lu is not None and self.target is not None
        connections = [self]
        if self.directory is not None:
            connections += [
                c for c in self.directory.connections_of(self.target.name) if c is not self
            ]
        by_nexus = {connection.nexus: connection for connection in connections}
        session = self.session
        request = tmf.TmfRequest(
            function=pdu.function,
            nexus=self.nexus,
            lun=lun_number(pdu.lun),
            cmd_sn=pdu.cmd_sn,
            referenced_task_tag=pdu.referenced_task_tag,
            ref_cmd_sn=pdu.ref_cmd_sn,
            exp_cmd_sn=session.exp_cmd_sn,
            max_cmd_sn=session.max_cmd_sn,
        )
        task_set = [task for c in connections for task in c.task_set_entries()]
        outcome = tmf.decide(request, task_set, target_nexuses=by_nexus)
        if outcome.consider_received_cmd_sn is not None:
            # A command lost on the way, or still held behind a gap: it will never run.
            displaced = self._cmd_sn_window.consider_received(outcome.consider_received_cmd_sn)
            if displaced is not None:
                self._forget_held([displaced])
        elif (
            pdu.immediate
            and pdu.function in _TASK_SET_FUNCTIONS
            and outcome.response == TmfResponse.COMPLETE
        ):
            # Commands sent before it but held behind a gap are aborted with the rest.
            self._forget_held(self._cmd_sn_window.consider_received_before(pdu.cmd_sn))
        for nexus, tasks in outcome.aborted_by_nexus.items():
            owner = by_nexus.get(nexus)
            if owner is not None:
                owner.abort_tasks({task.itt for task in tasks})
        lu = self.lu
        if outcome.reset_logical_unit_state or outcome.release_spc2_reservation:
            # Mode pages to defaults, SPC-2 reservation released, BUS DEVICE RESET for the
            # other nexuses (the logical unit's own rules).
            reset = getattr(lu, "logical_unit_reset", None)
            if reset is not None:
                reset(self.nexus)
        queues = getattr(lu, "unit_attentions", None)
        if isinstance(queues, UnitAttentionQueues):
            outcome.apply_unit_attentions(queues)
        if outcome.close_all_connections:
            for other in connections[1:]:
                other.close("target cold reset")
        return outcome

    def task_set_entries(self) -> list[tmf.Task]:
        """This connection's unfinished tasks, as `stargate.scsi.tmf` sees them."""
        states = {
            TaskPhase.WAITING_FOR_SLOT: tmf.TaskState.PENDING,
            TaskPhase.RECEIVING: tmf.TaskState.WAITING_FOR_DATA,
            TaskPhase.SYNCING: tmf.TaskState.RUNNING,
            TaskPhase.HELD: tmf.TaskState.RUNNING,
        }
        return [
            tmf.Task(
                task.itt,
                self.nexus,
                lun_number(task.command.lun),
                task.command.cmd_sn,
                states.get(task.phase, tmf.TaskState.COMPLETED),
            )
            for task in self._tasks.values()
        ]

    def abort_tasks(self, itts: set[int]) -> None:
        """End these tasks without a status (aborted by a task management function)."""
        tasks = [self._tasks.get(itt) for itt in itts]
        aborted = [task for task in tasks if task is not None and task.phase is not TaskPhase.DONE]
        # All marked first: a slot freed by one must not go to another waiting one, to run.
        for task in aborted:
            task.aborted = True
        for task in aborted:
            self._abort(task)
        self._wake_writer()

    def _abort(self, task: ScsiTask) -> None:
        task.aborted = True
        if task.phase is TaskPhase.SYNCING:
            return  # the thread finishes the sync; `_finish` then sends nothing
        self._finish(task, ScsiStatus.TASK_ABORTED)
        self.queue.forget_cancelled()

    def _abort_all_tasks(self) -> None:
        tasks = list(self._tasks.values())
        # All aborted before any slot is given back: a freed slot must not go to one of our
        # own waiting tasks (it would run, maybe start a sync in the closed nursery).
        for task in tasks:
            task.aborted = True
        for task in tasks:
            if task.phase is not TaskPhase.SYNCING:
                self._finish(task, ScsiStatus.TASK_ABORTED)
        self.queue.forget_cancelled()

    # -- asynchronous messages ------------------------------------------------------------

    def send_async_event(
        self,
        event: AsyncEvent,
        *,
        parameter1: int = 0,
        parameter2: int = 0,
        parameter3: int = 0,
    ) -> None:
        exp_cmd_sn, max_cmd_sn = self._window()
        self._append(
            AsyncMessage(
                lun=0,
                stat_sn=self._next_stat_sn(),
                exp_cmd_sn=exp_cmd_sn,
                max_cmd_sn=max_cmd_sn,
                async_event=event,
                parameter1=parameter1,
                parameter2=parameter2,
                parameter3=parameter3,
            )
        )
        self._wake_writer()

    def request_logout(self, seconds: int) -> None:
        """AsyncEvent 1: ask the initiator to log out within ``seconds``; drop it if not."""
        self.send_async_event(AsyncEvent.LOGOUT_REQUEST, parameter3=seconds)
        self.logout_requested_at = time.time()
        self._pending_logout_deadline = trio.current_time() + seconds

    def drop(self, *, all_connections: bool, time2wait: int = 2, time2retain: int = 0) -> None:
        """AsyncEvent 2 (this connection) or 3 (the whole session), then close."""
        event = AsyncEvent.DROP_ALL_CONNECTIONS if all_connections else AsyncEvent.DROP_CONNECTION
        self.send_async_event(
            event,
            parameter1=self.cid if not all_connections else 0,
            parameter2=time2wait,
            parameter3=time2retain,
        )
        self._closing_reason = "dropped by the target"
        self._writer_wakeup.set()

    @property
    def outstanding_tasks(self) -> int:
        return len(self._tasks)

    # -- fault injection (only reached while a fault is armed) ------------------------------

    def _faulted_handlers(
        self, handlers: dict[type, Callable[[Any], None]]
    ) -> dict[type, Callable[[Any], None]]:
        if self._fault_handlers is None:
            self._fault_handlers = {
                pdu_type: functools.partial(self._on_pdu_with_faults, handler)
                for pdu_type, handler in handlers.items()
            }
        return self._fault_handlers

    def _on_pdu_with_faults(self, handler: Callable[[Any], None], pdu: Pdu) -> None:
        faults = self.faults
        command = pdu if isinstance(pdu, ScsiCommand) else None
        cdb = None
        if command is not None:
            cdb = full_cdb(command) if command.ahs else command.cdb
        fault = faults.pdu_fault(
            self.vdisk_id,
            int(pdu.OPCODE),
            write_command=command is not None and command.write,
            cdb=cdb,
        )
        if fault is not None and self._apply_pdu_fault(fault, handler, pdu):
            return
        if command is not None and cdb is not None and self.lu is not None and faults.armed:
            scsi_fault = faults.scsi_fault(self.vdisk_id, cdb)
            if scsi_fault is not None:
                self._on_faulted_command(command, cdb, scsi_fault)
                return
        handler(pdu)

    def _apply_pdu_fault(self, fault: Fault, handler: Callable[[Any], None], pdu: Pdu) -> bool:
        """Apply a PDU/connection fault; True if it consumed the PDU."""
        kind = fault.kind
        if kind is FaultKind.DROP_CONNECTION:
            self.drop_by_fault(fault.mode)
            return True
        if kind in (FaultKind.SWALLOW_NOP_OUT, FaultKind.SWALLOW_TMF):
            return True
        if kind is FaultKind.REJECT:
            # Its CmdSN is used up, its turn or not.
            if (
                isinstance(pdu, ScsiCommand | NopOut | TextRequest | TaskMgmtRequest)
                and not pdu.immediate
            ):
                displaced = self._cmd_sn_window.consider_received(pdu.cmd_sn)
                if displaced is not None:
                    self._forget_held([displaced])
            self._reject(pdu, fault.reason)
            return True
        if kind is FaultKind.STAT_SN_JUMP:
            self._stat_sn = (self._stat_sn + fault.amount) & SERIAL_MASK
            return False
        if kind is FaultKind.FREEZE_WINDOW:
            self._freeze_window(fault.duration or 10.0)
            return False
        if kind in (FaultKind.CORRUPT_HEADER_DIGEST, FaultKind.CORRUPT_DATA_DIGEST):
            start = len(self._out)
            handler(pdu)
            self._corrupt_digest(start, header=kind is FaultKind.CORRUPT_HEADER_DIGEST)
            return True
        if kind in (FaultKind.DELAY_R2T, FaultKind.WITHHOLD_R2T) and isinstance(pdu, ScsiCommand):
            self._hold_r2ts(fault, handler, pdu)
            return True
        return False

    def drop_by_fault(self, mode: DropMode) -> None:
        """End the connection as a fault says: reset, orderly close, or blackhole."""
        if mode is DropMode.BLACKHOLE:
            self.blackhole()
            return
        if mode is DropMode.RESET:
            self._out.clear()  # a reset loses what was not sent
            raw = getattr(self._io, "_raw", None) or getattr(self._io, "socket", None)
            if raw is not None:
                # Linger 0: the close that follows sends RST instead of FIN.
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._closing_reason = f"fault: connection {mode.value}"
        if self._in_batch:
            raise _StopBatch
        self.close(self._closing_reason)

    def blackhole(self) -> None:
        """Stop answering but keep the socket open: only the initiator's NOP timeout (or
        its command timeout) finds out. Our own pings stop too."""
        if isinstance(self._io, BlackholeChannel):
            return
        log.info("blackholing a connection of %s (fault)", self.session.initiator_name)
        self._out.clear()
        self._io = BlackholeChannel(self._io)
        self._pending_logout_deadline = None
        if self._keepalive_scope is not None:
            self._keepalive_scope.cancel()
        if self._watchdog_scope is not None:
            self._watchdog_scope.cancel()

    def _freeze_window(self, seconds: float) -> None:
        """MaxCmdSN stops advancing: the initiator's queue stalls (instance attribute over
        the method, so the unfaulted path pays nothing)."""
        frozen_max = self.session.max_cmd_sn
        session = self.session

        def frozen() -> tuple[int, int]:
            return session.exp_cmd_sn, frozen_max

        self._window = frozen  # type: ignore[method-assign]

        async def thaw() -> None:
            await trio.sleep(seconds)
            if self.__dict__.get("_window") is frozen:
                del self._window
            self.window_opened()

        if self._nursery is not None:
            self._nursery.start_soon(thaw)

    def _corrupt_digest(self, start: int, *, header: bool) -> None:
        """Flip a bit of the first response PDU's header or data digest (if negotiated)."""
        out = self._out
        if len(out) < start + 48:
            return
        ahs = out[start + 4] * 4
        if header:
            if self._header_digest:
                out[start + 48 + ahs] ^= 0x01
            return
        length = int.from_bytes(out[start + 5 : start + 8], "big")
        if self._data_digest and length:
            position = start + 48 + ahs + (4 if self._header_digest else 0) + length
            position += len(_PADDING[length & 3])
            if position < len(out):
                out[position] ^= 0x01

    def _hold_r2ts(self, fault: Fault, handler: Callable[[Any], None], pdu: ScsiCommand) -> None:
        """Handle a write command without sending its R2Ts; send them after the delay, or
        never (the initiator's command timeout finds it)."""
        self._send_r2ts = _no_r2ts  # type: ignore[method-assign]
        try:
            handler(pdu)
        finally:
            del self._send_r2ts
        task = self._tasks.get(pdu.itt)
        if task is None or fault.kind is FaultKind.WITHHOLD_R2T or self._nursery is None:
            return

        async def release_later(seconds: float) -> None:
            await trio.sleep(seconds)
            if task.phase is TaskPhase.RECEIVING:
                self._send_r2ts(task)
                self._wake_writer()

        self._nursery.start_soon(release_later, fault.delay.draw(_rng))

    def _on_faulted_command(self, command: ScsiCommand, cdb: bytes, fault: Fault) -> None:
        kind = fault.kind
        status = _FAULT_STATUS.get(kind)
        if status is None:
            # Applied when it executes (delay, hang, short transfer, drop mid Data-In).
            self._execution_faults[command.itt] = fault
            self._on_scsi_command(command)
            if command.itt not in self._tasks:
                self._execution_faults.pop(command.itt, None)  # never reached execution
            return
        if not self._in_order(command, functools.partial(self._finish_faulted, cdb, fault)):
            return
        self._finish_faulted(cdb, fault, command)

    def _finish_faulted(self, cdb: bytes, fault: Fault, command: ScsiCommand) -> None:
        """Answer a command with the status a fault says, without running it."""
        kind = fault.kind
        status = _FAULT_STATUS[kind]
        task = ScsiTask(self, command, cdb)
        if self.stats is not None:
            self.stats.command_started()
        sense = b""
        if kind is FaultKind.CHECK_CONDITION:
            sense = build_fixed(SenseKey(fault.sense_key & 0x0F), (fault.asc, fault.ascq))
        # Its Data-Out (if any) finds no task and is dropped, as for any failed command.
        self._finish(task, status, sense=sense)

    def _execute_faulted(self, task: ScsiTask, fault: Fault) -> None:
        assert self.lu is not None
        data_out: bytes | bytearray | memoryview = task.buffer if task.buffer is not None else b""
        result = self.lu.execute(task.cdb, data_out, self.nexus)
        kind = fault.kind
        if kind is FaultKind.SHORT_TRANSFER:
            data = result.data
            keep = int(len(data) * fault.fraction) // self.block_size * self.block_size
            self._finish(task, result.status, memoryview(data)[:keep], result.sense)
            return
        task.phase = TaskPhase.HELD
        self._tasks[task.itt] = task  # abortable; ended with the connection
        if kind is FaultKind.DROP_MID_DATA_IN:
            data = result.data
            half = min(len(data), task.edtl) // 2
            if half:
                _, max_cmd_sn = self._window()
                self._send_data_in(
                    task.itt,
                    task.command.lun,
                    data,
                    half,
                    False,
                    _GOOD,
                    False,
                    False,
                    0,
                    max_cmd_sn,
                )
            # An orderly close: a reset would make the peer's kernel drop the half sent.
            self.drop_by_fault(DropMode.CLOSE)
            return
        if kind is FaultKind.HANG or self._nursery is None:
            return
        self._nursery.start_soon(self._finish_later, task, result, fault.delay.draw(_rng))

    async def _finish_later(self, task: ScsiTask, result: Any, seconds: float) -> None:
        await trio.sleep(seconds)  # only this command waits; the event loop goes on
        if task.phase is not TaskPhase.HELD:
            return  # aborted meanwhile
        if result.needs_sync and result.status == _GOOD:
            task.phase = TaskPhase.SYNCING
            await self._sync_then_finish(task, result)
            return
        self._finish(task, result.status, result.data, result.sense)
        self._wake_writer()


_FAULT_STATUS: dict[FaultKind, int] = {
    FaultKind.CHECK_CONDITION: int(ScsiStatus.CHECK_CONDITION),
    FaultKind.BUSY: int(ScsiStatus.BUSY),
    FaultKind.TASK_SET_FULL: int(ScsiStatus.TASK_SET_FULL),
    FaultKind.RESERVATION_CONFLICT: int(ScsiStatus.RESERVATION_CONFLICT),
}
_rng = random.Random()


def _put(buffer: bytearray, offset: int, chunk: bytes | bytearray | memoryview) -> None:
    """Write ``chunk`` at ``offset``, growing the buffer when it goes past the end: a write
    buffer holds the data received, never more (a hole only when a later Data-Out sequence
    came first, DataSequenceInOrder=No)."""
    filled = len(buffer)
    if offset > filled:
        buffer[filled:] = bytes(offset - filled)
    buffer[offset : offset + len(chunk)] = chunk


def _no_r2ts(task: ScsiTask) -> None:
    """Stands in for `_send_r2ts` while a fault holds a command's R2Ts back."""


class _StopBatch(Exception):
    """Stop handling the PDUs of this wake-up: flush what is queued, then close."""


def _no_lun_inquiry(cdb: bytes) -> bytes:
    """Standard INQUIRY data for a LUN that does not exist: peripheral qualifier 3."""
    allocation = int.from_bytes(cdb[3:5], "big")
    data = bytearray(36)
    data[0] = 0x7F
    data[2] = 0x06
    data[3] = 0x02
    data[4] = 31
    return bytes(data[:allocation])
